//! [`RetryBudget`]: re-sends may not exceed a fraction of recent traffic plus a small floor,
//! so retries cannot multiply the load on a struggling service.
//!
//! A token bucket in milli-tokens. Every routed call adds to one shared call counter (the only
//! cost on the success path: one relaxed atomic add); the bucket turns new calls into tokens
//! lazily, when a re-send asks to withdraw, and adds the floor for the time since the last
//! withdrawal. The balance is capped at `floor + ratio * 1000 calls`, so a long calm spell does
//! not buy an unbounded storm later.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::error::ConfigError;

const MILLI: u64 = 1000;
/// How many recent calls the balance can remember.
const MEMORY_CALLS: u64 = 1000;

/// How many re-sends the layer may make, as a fraction of recent calls plus a floor per second.
///
/// Failover re-sends and throttling retries draw from two separate buckets of the same shape,
/// so a throttling storm cannot use up what failover needs.
///
/// ```
/// use tower_failover::{Endpoints, FailoverLayer, RetryBudget};
///
/// let layer = FailoverLayer::builder(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap())
///     .throttle_budget(RetryBudget::new(0.2).floor_per_second(5))
///     .build()
///     .unwrap();
/// # let _ = layer;
/// assert!(RetryBudget::new(1.5).validate().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    ratio: f64,
    floor_per_second: u32,
}

impl RetryBudget {
    /// Re-sends may be up to `ratio` of recent calls (0.2 = 20 %), plus a floor of 10 per
    /// second.
    pub const fn new(ratio: f64) -> Self {
        RetryBudget {
            ratio,
            floor_per_second: 10,
        }
    }

    /// Re-sends allowed per second whatever the traffic (also the burst available at start).
    pub const fn floor_per_second(mut self, floor: u32) -> Self {
        self.floor_per_second = floor;
        self
    }

    /// No limit: every re-send the policy allows is made.
    pub const fn unlimited() -> Self {
        RetryBudget {
            ratio: f64::INFINITY,
            floor_per_second: u32::MAX,
        }
    }

    /// Checks the numbers: the ratio must be between 0 and 1 (or the budget unlimited).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.ratio.is_infinite() && self.ratio > 0.0 {
            return Ok(());
        }
        if !(0.0..=1.0).contains(&self.ratio) {
            return Err(ConfigError::new(format!(
                "retry budget ratio {} must be between 0.0 and 1.0 (0.2 allows re-sends of 20 % of calls); use RetryBudget::unlimited() for no limit",
                self.ratio
            )));
        }
        Ok(())
    }

    fn is_unlimited(&self) -> bool {
        self.ratio.is_infinite()
    }
}

/// One bucket's live state.
#[derive(Debug)]
pub(crate) struct Bucket {
    budget: RetryBudget,
    inner: Mutex<BucketState>,
}

#[derive(Debug)]
struct BucketState {
    balance: u64,
    calls_seen: u64,
    refilled_at: Instant,
}

impl Bucket {
    pub(crate) fn new(budget: RetryBudget) -> Self {
        let floor = budget.floor_per_second as u64 * MILLI;
        Bucket {
            budget,
            inner: Mutex::new(BucketState {
                balance: floor,
                calls_seen: 0,
                refilled_at: Instant::now(),
            }),
        }
    }

    fn cap(&self) -> u64 {
        let floor = self.budget.floor_per_second as u64 * MILLI;
        floor.saturating_add((self.budget.ratio * (MEMORY_CALLS * MILLI) as f64) as u64)
    }

    /// Takes one re-send from the bucket; false when the budget is spent. Only re-sends call
    /// this, so its lock is off the success path.
    pub(crate) fn withdraw(&self, calls_total: u64) -> bool {
        if self.budget.is_unlimited() {
            return true;
        }
        let mut state = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        // `calls_total` is read before the lock is taken, so a caller may bring an older count
        // than one already seen: it earns nothing, and must not move the mark back (the calls
        // in between would be earned twice).
        let new_calls = calls_total.saturating_sub(state.calls_seen);
        state.calls_seen = state.calls_seen.max(calls_total);
        // Credited in whole milliseconds, and the mark moves by exactly what was credited: the
        // fraction carries over. Moving it to `now` would throw the fraction away, and re-sends
        // asked for less than a millisecond apart would then never earn the floor.
        let elapsed_ms = state.refilled_at.elapsed().as_millis() as u64;
        state.refilled_at += Duration::from_millis(elapsed_ms);
        // Saturating: a large floor earns u64::MAX within weeks of calm (it is capped below).
        let earned = ((new_calls as f64 * self.budget.ratio * MILLI as f64) as u64)
            .saturating_add(elapsed_ms.saturating_mul(self.budget.floor_per_second as u64));
        state.balance = state.balance.saturating_add(earned).min(self.cap());
        if state.balance >= MILLI {
            state.balance -= MILLI;
            true
        } else {
            false
        }
    }
}

impl Bucket {
    /// Returns a re-send taken with `withdraw` that never went out.
    pub(crate) fn give_back(&self) {
        if self.budget.is_unlimited() {
            return;
        }
        let mut state = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        state.balance = state.balance.saturating_add(MILLI).min(self.cap());
    }
}

/// How many slots the call counter is spread over.
const COUNTER_SLOTS: usize = 8;

/// The call counter every routed call adds to.
///
/// Spread over slots, each on its own cache line, with each thread adding to one slot: one
/// shared counter would be written by every core on every call, and on a multi-threaded
/// runtime that cache line would move between cores each time. It is read only when a
/// re-send asks the budget, which sums the slots.
#[derive(Debug, Default)]
pub(crate) struct CallCounter([Slot; COUNTER_SLOTS]);

/// One counter slot, alone on its cache line (128 bytes: adjacent-line prefetching pairs
/// 64-byte lines on x86).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Slot(AtomicU64);

/// Hands each thread its slot, round-robin, the first time it counts a call.
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static THIS_THREADS_SLOT: usize = NEXT_SLOT.fetch_add(1, Ordering::Relaxed) % COUNTER_SLOTS;
}

impl CallCounter {
    #[inline]
    pub(crate) fn add(&self) {
        // A thread being torn down has no slot left: count it in the first.
        let slot = THIS_THREADS_SLOT.try_with(|slot| *slot).unwrap_or(0);
        self.0[slot].0.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.iter().map(|slot| slot.0.load(Ordering::Relaxed)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_call_counter_sums_every_threads_calls() {
        let counter = CallCounter::default();
        std::thread::scope(|scope| {
            for _ in 0..(2 * COUNTER_SLOTS + 1) {
                scope.spawn(|| (0..1000).for_each(|_| counter.add()));
            }
        });
        assert_eq!(counter.get(), (2 * COUNTER_SLOTS as u64 + 1) * 1000);
    }

    #[test]
    fn the_floor_refills_while_re_sends_are_asked_for_more_often_than_each_millisecond() {
        let bucket = Bucket::new(RetryBudget::new(0.0).floor_per_second(20));
        while bucket.withdraw(0) {}
        let start = Instant::now();
        let mut allowed = 0;
        while start.elapsed() < Duration::from_secs(1) {
            if bucket.withdraw(0) {
                allowed += 1;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        // About 20 in that second; the floor was found to give none at all.
        assert!((10..=21).contains(&allowed), "{allowed}");
    }

    #[test]
    fn a_fifth_of_calls_plus_the_floor() {
        let bucket = Bucket::new(RetryBudget::new(0.2).floor_per_second(0));
        let mut allowed = 0;
        for call in 1..=1000u64 {
            if bucket.withdraw(call) {
                allowed += 1;
            }
        }
        assert!((195..=200).contains(&allowed), "{allowed}");

        let bucket = Bucket::new(RetryBudget::new(0.0).floor_per_second(3));
        let allowed = (0..100).filter(|_| bucket.withdraw(0)).count();
        assert_eq!(allowed, 3, "only the floor's burst");
        assert!(Bucket::new(RetryBudget::unlimited()).withdraw(0));
    }

    #[test]
    fn a_large_floor_after_a_long_calm_does_not_overflow() {
        // `floor_per_second(u32::MAX)` earns u64::MAX milli-tokens in under 50 days without a
        // re-send; the calls earned on top of that overflowed the sum (a panic in debug
        // builds; in release the wrapped sum lost the floor's whole credit).
        let bucket = Bucket::new(RetryBudget::new(1.0).floor_per_second(u32::MAX));
        {
            let mut state = bucket.inner.lock().unwrap();
            state.balance = 0;
            let Some(long_ago) = Instant::now().checked_sub(Duration::from_secs(60 * 24 * 3600)) else {
                return; // no instant that far back on this platform
            };
            state.refilled_at = long_ago;
        }
        assert!(bucket.withdraw(1_000));
        assert_eq!(bucket.inner.lock().unwrap().balance, bucket.cap() - MILLI);
    }

    #[test]
    fn a_stale_call_count_earns_nothing_twice() {
        // Callers read the call counter before taking the bucket's lock, so under concurrency
        // an older count can arrive after a newer one. 100 calls earn 20 re-sends, however
        // the counts interleave.
        let bucket = Bucket::new(RetryBudget::new(0.2).floor_per_second(0));
        let mut allowed = 0;
        for calls in [100, 50, 100, 60, 100, 70, 100, 80, 100] {
            if bucket.withdraw(calls) {
                allowed += 1;
            }
        }
        allowed += (0..100).filter(|_| bucket.withdraw(100)).count();
        assert_eq!(allowed, 20);
    }
}
