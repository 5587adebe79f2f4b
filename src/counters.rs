//! Counters of what the layer did, readable from the handle without any metrics dependency.

use std::sync::atomic::{AtomicU64, Ordering};

/// One counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counter {
    FailoverResends,
    ThrottleRetries,
    Switches,
    Throttled,
    RefusedByBudget,
    PossiblyApplied,
    DeadlineExceeded,
}

const COUNTERS: usize = 7;

/// The live counters. Only failures and re-sends touch them, so the success path pays nothing;
/// the call count lives in the budget's call counter.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    values: [AtomicU64; COUNTERS],
}

impl Counters {
    pub(crate) fn add(&self, counter: Counter) {
        self.values[counter as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self, counter: Counter) -> u64 {
        self.values[counter as usize].load(Ordering::Relaxed)
    }

    pub(crate) fn snapshot(&self, calls: u64) -> CountersSnapshot {
        CountersSnapshot {
            calls,
            failover_resends: self.get(Counter::FailoverResends),
            throttle_retries: self.get(Counter::ThrottleRetries),
            switches: self.get(Counter::Switches),
            throttled: self.get(Counter::Throttled),
            refused_by_budget: self.get(Counter::RefusedByBudget),
            possibly_applied: self.get(Counter::PossiblyApplied),
            deadline_exceeded: self.get(Counter::DeadlineExceeded),
        }
    }
}

/// The counters at one moment, from [`FailoverHandle::counters`](crate::FailoverHandle::counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CountersSnapshot {
    /// Calls routed through failover (requests naming either endpoint).
    pub calls: u64,
    /// Calls re-sent on the other endpoint after an outage.
    pub failover_resends: u64,
    /// Throttling retries made on the same endpoint.
    pub throttle_retries: u64,
    /// Switches made (automatic and manual).
    pub switches: u64,
    /// Throttling answers seen (429, 503 with `Retry-After`, service-protection codes).
    pub throttled: u64,
    /// Re-sends refused because the retry budget was spent.
    pub refused_by_budget: u64,
    /// Calls that failed and may have been applied anyway.
    pub possibly_applied: u64,
    /// Calls stopped by their deadline.
    pub deadline_exceeded: u64,
}
