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
///
/// Each counts from the layer's build; take two snapshots and subtract for a rate.
///
/// ```
/// use std::convert::Infallible;
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tower::{Service, ServiceBuilder, ServiceExt};
/// use tower_failover::{Endpoints, FailoverLayer, ReplayBody};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let layer = FailoverLayer::new(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap());
/// let handle = layer.handle();
/// // The primary answers 503, the alternate 200.
/// let client = tower::service_fn(|request: http::Request<ReplayBody<Full<Bytes>>>| async move {
///     let status = if request.uri().host() == Some("contoso.api.crm.dynamics.com") { 503 } else { 200 };
///     Ok::<_, Infallible>(http::Response::builder().status(status).body(Full::new(Bytes::new())).unwrap())
/// });
/// let mut service = ServiceBuilder::new().layer(layer).service(client);
/// let request = http::Request::get("https://contoso.api.crm.dynamics.com/api/data/v9.2/WhoAmI")
///     .body(Full::new(Bytes::new()))
///     .unwrap();
/// service.ready().await.unwrap().call(request).await.unwrap();
///
/// let counters = handle.counters();
/// assert_eq!(counters.calls, 1);
/// assert_eq!(counters.switches, 1);
/// assert_eq!(counters.failover_resends, 1);
/// assert_eq!(counters.possibly_applied, 0);
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CountersSnapshot {
    /// Calls routed through failover (requests naming either endpoint).
    pub calls: u64,
    /// Calls re-sent on the other endpoint after an outage, counted as each re-send goes out.
    pub failover_resends: u64,
    /// Throttling retries, counted as each goes out: on the endpoint that throttled the call,
    /// or where calls went during the wait.
    pub throttle_retries: u64,
    /// Switches made, whatever their cause (outage, manual, failback, maintenance, start-up).
    pub switches: u64,
    /// Throttled attempts seen (429, 503 with `Retry-After`, service-protection codes), retried
    /// or not.
    pub throttled: u64,
    /// Re-sends refused because the retry budget was spent.
    pub refused_by_budget: u64,
    /// Calls that failed and may have been applied anyway.
    pub possibly_applied: u64,
    /// Calls stopped by their deadline.
    pub deadline_exceeded: u64,
}
