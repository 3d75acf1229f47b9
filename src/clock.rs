//! The clock of waits: the system's coarse monotonic clock where it has one.
//!
//! Every caller that waits reads a clock twice, as its wait starts (the wait deadline, and the
//! wait statistics) and as it ends (the statistics). `Instant::now()` cost 23 ns a read on the
//! 2-core KVM machine the benchmarks run on, about 7 % of a waited checkout with one
//! connection shared by 32 tasks (P3 in `benches/RESULTS.md`). Linux's
//! `CLOCK_MONOTONIC_COARSE` cost 3.4 ns there: it returns the time of the kernel's last tick
//! (every 4 ms on that machine, [`resolution`]) without reading the hardware counter.
//!
//! What the coarse clock is good for, and what it is not:
//! - **Wait statistics** (`wait_total`, `wait_max`, the `metrics` feature's wait histogram):
//!   a wait is the difference of two readings, a whole number of ticks. Each is within one
//!   tick of the true wait, and the sum is right on average: a wait of length `d` crosses
//!   `d / tick` tick boundaries on average, whatever its length.
//! - **Wait deadlines**: a deadline taken from it is pushed two ticks later
//!   ([`deadline_start`]), so that it does not fall before the true one while the clock lags
//!   by less than two ticks (one, normally; the second covers a tick the kernel took late);
//!   it falls at most three ticks after it. Only wait timeouts of at least
//!   [`COARSE_DEADLINES_FROM`] take their start from it (12 ms late at most on a 30 s timeout
//!   with 4 ms ticks); shorter ones read `Instant::now()`.
//! - **Creation stamps**: a connection a caller made is stamped with [`not_before_now`], so
//!   its lifetime counts from at most three ticks after its creation, not before it. This
//!   took a cold start of 100 connections (P4) from 30.9 ms to 26.3 ms for 2,000 starts: one
//!   `Instant::now()` a connection.
//!
//! Where there is no coarse clock (macOS, Windows, the BSDs), or its tick is over 10 ms, all
//! of these read `Instant` and are exact. Under the model checks (`--cfg loom`) there is no
//! coarse clock, and the wait statistics' clock stands still.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Wait timeouts from this long on start from the coarse clock.
pub(crate) const COARSE_DEADLINES_FROM: Duration = Duration::from_secs(1);

/// How many ticks the coarse clock may lag behind the true time before a deadline or a stamp
/// taken from it could come early: the kernel advances it at each tick, one behind the true
/// time at most, and one more tick covers a tick taken late (a virtual machine's vCPU
/// descheduled at its tick, say).
#[cfg_attr(
    any(loom, not(any(target_os = "linux", target_os = "android"))),
    allow(dead_code)
)]
const MARGIN_TICKS: u32 = 2;

/// A reading of the wait clock: the time since an arbitrary, fixed point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Reading(Duration);

impl Reading {
    /// From this reading to `later`, zero if `later` is not later.
    pub(crate) fn until(self, later: Reading) -> Duration {
        later.0.saturating_sub(self.0)
    }
}

/// Reads the wait clock: the coarse clock where there is one, else `Instant`. Under the model
/// checks (`--cfg loom`) a clock that stands still: a model must run the same way each time it
/// is explored, and a reading decides whether a wait is the longest yet.
pub(crate) fn now() -> Reading {
    if cfg!(loom) {
        return Reading(Duration::ZERO);
    }
    match coarse() {
        Some(_) => Reading(read_coarse()),
        None => Reading(exact_since_epoch()),
    }
}

/// The start of a wait whose deadline is `timeout` away, as an `Instant` that is not before
/// the true now: `Instant::now()` for a short timeout or where there is no coarse clock, else
/// the wait clock's reading `now` (just read) mapped to an instant and pushed
/// [`MARGIN_TICKS`] ticks later.
pub(crate) fn deadline_start(timeout: Option<Duration>, now: Reading) -> Instant {
    match (timeout, coarse()) {
        (Some(t), Some(c)) if t >= COARSE_DEADLINES_FROM => c.base + now.0,
        _ => Instant::now(),
    }
}

/// An instant not before the true now, and at most [`MARGIN_TICKS`] + 1 ticks after it: from
/// the coarse clock where there is one (a few nanoseconds), else `Instant::now()`. What a
/// connection's creation is stamped with: its lifetime then never ends early.
pub(crate) fn not_before_now() -> Instant {
    match coarse() {
        Some(c) => c.base + read_coarse(),
        None => Instant::now(),
    }
}

/// The coarse clock's tick (zero where there is none).
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn resolution() -> Duration {
    coarse().map_or(Duration::ZERO, |c| c.resolution)
}

#[cfg_attr(
    any(loom, not(any(target_os = "linux", target_os = "android"))),
    allow(dead_code)
)]
struct Coarse {
    /// The instant of the coarse clock's zero, [`MARGIN_TICKS`] ticks later.
    base: Instant,
    resolution: Duration,
}

/// Where there is no coarse clock: `Instant`, from the first reading on.
fn exact_since_epoch() -> Duration {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed()
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn read_coarse() -> Duration {
    use rustix::time::{clock_gettime, ClockId};
    to_duration(clock_gettime(ClockId::MonotonicCoarse))
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn to_duration(ts: rustix::time::Timespec) -> Duration {
    // A monotonic clock counts from boot: never negative.
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// Under the model checks (`--cfg loom`), no coarse clock: what the models run reads
/// `Instant` as it did before there was one.
#[cfg(all(not(loom), any(target_os = "linux", target_os = "android")))]
fn coarse() -> Option<&'static Coarse> {
    static COARSE: OnceLock<Option<Coarse>> = OnceLock::new();
    COARSE
        .get_or_init(|| {
            use rustix::time::{clock_getres, ClockId};
            let resolution = to_duration(clock_getres(ClockId::MonotonicCoarse));
            // A tick longer than 10 ms (a kernel built with a low tick rate) would make the
            // statistics too coarse to read: the exact clock then.
            if resolution.is_zero() || resolution > Duration::from_millis(10) {
                return None;
            }
            // The anchor: an instant read between two equal coarse readings, so that no tick
            // came between the reading and the instant. The reading's tick is then before the
            // instant by less than the clock's lag (a tick, normally): mapped through the
            // anchor, a later reading is before its true time by no more than that lag, and
            // `base` adds `MARGIN_TICKS` ticks to cover it.
            for _ in 0..1_000 {
                let before = read_coarse();
                let anchor = Instant::now();
                if read_coarse() == before {
                    return Some(Coarse {
                        base: anchor.checked_sub(before)? + resolution * MARGIN_TICKS,
                        resolution,
                    });
                }
            }
            None
        })
        .as_ref()
}

#[cfg(any(loom, not(any(target_os = "linux", target_os = "android"))))]
fn coarse() -> Option<&'static Coarse> {
    None
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn read_coarse() -> Duration {
    exact_since_epoch()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_start_is_never_before_now_nor_more_than_three_ticks_after() {
        let tick = resolution();
        for timeout in [
            None,
            Some(Duration::from_millis(10)),
            Some(Duration::from_secs(30)),
        ] {
            for _ in 0..2_000 {
                let before = Instant::now();
                let start = deadline_start(timeout, now());
                let after = Instant::now();
                assert!(start >= before, "{timeout:?}: {start:?} before {before:?}");
                assert!(
                    start <= after + tick * (MARGIN_TICKS + 1),
                    "{timeout:?}: {start:?} more than three ticks ({tick:?}) after {after:?}"
                );
            }
        }
    }

    #[test]
    fn a_wait_read_on_the_wait_clock_is_within_one_tick() {
        let tick = resolution();
        for wait in [
            Duration::ZERO,
            Duration::from_millis(3),
            Duration::from_millis(25),
        ] {
            let (start, fine) = (now(), Instant::now());
            std::thread::sleep(wait);
            let (read, exact) = (start.until(now()), fine.elapsed());
            // A millisecond more either way: the two clocks are read one after the other.
            let slack = tick + Duration::from_millis(1);
            assert!(
                read + slack >= exact && read <= exact + slack,
                "read {read:?}, exact {exact:?}, tick {tick:?}"
            );
        }
    }

    #[test]
    fn a_creation_stamp_is_never_before_now_nor_more_than_three_ticks_after() {
        let tick = resolution();
        for _ in 0..2_000 {
            let before = Instant::now();
            let stamp = not_before_now();
            let after = Instant::now();
            assert!(
                stamp >= before && stamp <= after + tick * (MARGIN_TICKS + 1),
                "{stamp:?} not in [{before:?}, {after:?} + 3 × {tick:?}]"
            );
        }
    }

    #[test]
    fn short_timeouts_read_the_exact_clock() {
        let before = Instant::now();
        let start = deadline_start(Some(COARSE_DEADLINES_FROM - Duration::from_nanos(1)), now());
        assert!(start >= before && start <= Instant::now());
    }
}
