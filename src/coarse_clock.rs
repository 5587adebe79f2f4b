//! [`Tick`]: the data-loss ledger's clock. Monotonic, as coarse as the kernel's scheduler tick,
//! and about ten times cheaper to read than [`Instant`](std::time::Instant).
//!
//! Every recorded write reads a clock twice: when it is sent and when it is acknowledged. On
//! the 2-vCPU VM the benchmarks ran on, `Instant::now` costs about 20 ns a read, which made
//! the two reads half of the ledger's cost per write. Linux's `CLOCK_MONOTONIC_COARSE` reads
//! the time the kernel noted at its last tick, from memory shared with the process: about
//! 2 ns. Its steps are 1–10 ms (the tick), far below the replication window the ledger
//! reasons about (minutes by default), and the ledger allows [`SLACK`] (five ticks) each way so a coarse
//! reading can only make it keep and report a write longer, never shorter.
//!
//! Elsewhere than Linux it falls back to `Instant`.

use std::time::Duration;

/// How far a reading may be taken to trail the real time. One scheduler tick is at most 10 ms
/// (a kernel built with `HZ=100`); on a busy VM a tick can come late, so this allows five.
/// Against a replication window of minutes the widening is nothing.
pub(crate) const SLACK: Duration = Duration::from_millis(50);

/// A reading of the coarse monotonic clock: nanoseconds since an unspecified start. A plain
/// count rather than a `Duration`, so comparing two readings is one instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Tick(pub(crate) u64);

impl Tick {
    /// The clock now.
    pub(crate) fn now() -> Tick {
        Tick(read())
    }

    /// How long after `earlier` this reading is; zero if it is not after it.
    pub(crate) fn saturating_since(self, earlier: Tick) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

#[cfg(target_os = "linux")]
fn read() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    // The monotonic clock counts from boot: never negative, nanoseconds below a second. A u64
    // of nanoseconds lasts 584 years of uptime.
    let seconds = u64::try_from(now.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(now.tv_nsec).unwrap_or(0);
    seconds.saturating_mul(1_000_000_000).saturating_add(nanos)
}

#[cfg(not(target_os = "linux"))]
fn read() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let elapsed = START.get_or_init(std::time::Instant::now).elapsed();
    u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_follow_real_time_within_the_slack() {
        let (start, clock) = (std::time::Instant::now(), Tick::now());
        std::thread::sleep(Duration::from_millis(30));
        let (real, coarse) = (start.elapsed(), Tick::now().saturating_since(clock));
        assert!(coarse + SLACK >= real, "coarse {coarse:?} real {real:?}");
        assert!(coarse <= real + SLACK, "coarse {coarse:?} real {real:?}");
        assert!(Tick::now() >= clock);
    }
}
