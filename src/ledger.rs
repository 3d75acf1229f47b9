//! The pool's bookkeeping: counts, limits and who may create. Plain data with methods, no
//! runtime, so it can be tested on its own; the actor and the handles call into it.

use std::time::Instant;

use crate::status::{Counters, PoolState};
use crate::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering::*};

const RUNNING: u8 = 0;
const CLOSING: u8 = 1;
const CLOSED: u8 = 2;

/// Why a connection was closed, when not by the pool's close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// `is_broken`, a guard dropped while panicking, `Pooled::close`, or stale after failed
    /// checks.
    Broken,
    IdleTimeout,
    MaxLifetime,
    Retained,
    Resized,
    /// Idle through a whole surplus window: nobody needed it.
    Surplus,
    /// The runtime its actor ran on went away; the pool moved on to another.
    Moved,
    /// Made before a refresh of the pool (`Pool::refresh`, or a manager that saw the server
    /// change role).
    Refreshed,
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    Graceful,
    Sync,
    Failed,
    Detached,
}

/// Shared counts. Every field is an atomic: handles, guards, the actor and the fallback all
/// touch it, from any thread, with no lock.
#[derive(Debug)]
pub(crate) struct Ledger {
    state: AtomicU8,
    actor_alive: AtomicBool,
    /// Connections alive or being created: the figure `max_size` bounds.
    slots: AtomicUsize,
    /// Callers may create (see `callers_may_create`).
    callers_create: AtomicBool,
    /// A caller's creation failed and the actor has not paused for it yet.
    pause_asked: AtomicBool,
    /// Creations in flight, the actor's and callers' together (bounded by `max_creating`).
    creations: AtomicUsize,
    /// The last creation failed because the server is full (`Manager::is_server_full`);
    /// cleared by the next success.
    server_full: AtomicBool,
    /// Checkouts and the ends of guards, beside those the waitlist counts under its lock
    /// (see [`Flow`]): checkouts of connections a caller created itself, and guards that
    /// ended other than by going back to the waitlist (retired, detached, refused at close).
    /// `untaken`: entries the waitlist counted as taken that were refused before a guard was
    /// made (expired, closed). Only grow; connections in use are what they add up to.
    checkouts: AtomicU64,
    checkins: AtomicU64,
    untaken: AtomicU64,
    handles: AtomicUsize,
    created: AtomicU64,
    closed_graceful: AtomicU64,
    closed_sync: AtomicU64,
    close_failed: AtomicU64,
    detached: AtomicU64,
    create_failed: AtomicU64,
    check_failed: AtomicU64,
    hook_failed: AtomicU64,
    closed_unconfirmed: AtomicU64,
    closed_refreshed: AtomicU64,
    refreshes: AtomicU64,
    /// Connections stamped before this (milliseconds since `epoch`) were made before the last
    /// refresh; 0: never refreshed.
    refresh_mark: AtomicU64,
    gets_waited: AtomicU64,
    gets_timed_out: AtomicU64,
    wait_ns_total: AtomicU64,
    wait_ns_max: AtomicU64,
    closed_broken: AtomicU64,
    closed_idle_timeout: AtomicU64,
    closed_max_lifetime: AtomicU64,
    closed_retained: AtomicU64,
    closed_resized: AtomicU64,
    closed_surplus: AtomicU64,
    closed_moved: AtomicU64,
    /// Actors started on a runtime of a caller's (a pool whose runtime follows the caller).
    homes: AtomicU64,
    /// The limits in force: the builder's, until `Pool::resize`.
    max_size: AtomicUsize,
    min_idle: AtomicUsize,
    /// Connections still to close, as they come back, to reach a smaller size.
    surplus: AtomicUsize,
    /// A coarse clock (milliseconds since `epoch`), advanced by the actor, so the hot path
    /// never reads the system clock.
    clock_ms: AtomicU64,
    epoch: Instant,
    /// xorshift state for the lifetime jitter's draws (creation only).
    rng: AtomicU64,
    /// Where the counts are published, with the `metrics` feature (`src/metrics.rs`).
    #[cfg(feature = "metrics")]
    pub(crate) metrics: crate::metrics::Publisher,
}

impl Ledger {
    pub(crate) fn new() -> Self {
        Ledger {
            state: AtomicU8::new(RUNNING),
            actor_alive: AtomicBool::new(false),
            slots: AtomicUsize::new(0),
            callers_create: AtomicBool::new(true),
            pause_asked: AtomicBool::new(false),
            creations: AtomicUsize::new(0),
            server_full: AtomicBool::new(false),
            checkouts: AtomicU64::new(0),
            checkins: AtomicU64::new(0),
            untaken: AtomicU64::new(0),
            handles: AtomicUsize::new(1),
            created: AtomicU64::new(0),
            closed_graceful: AtomicU64::new(0),
            closed_sync: AtomicU64::new(0),
            close_failed: AtomicU64::new(0),
            detached: AtomicU64::new(0),
            create_failed: AtomicU64::new(0),
            check_failed: AtomicU64::new(0),
            hook_failed: AtomicU64::new(0),
            closed_unconfirmed: AtomicU64::new(0),
            closed_refreshed: AtomicU64::new(0),
            refreshes: AtomicU64::new(0),
            refresh_mark: AtomicU64::new(0),
            gets_waited: AtomicU64::new(0),
            gets_timed_out: AtomicU64::new(0),
            wait_ns_total: AtomicU64::new(0),
            wait_ns_max: AtomicU64::new(0),
            closed_broken: AtomicU64::new(0),
            closed_idle_timeout: AtomicU64::new(0),
            closed_max_lifetime: AtomicU64::new(0),
            closed_retained: AtomicU64::new(0),
            closed_resized: AtomicU64::new(0),
            closed_surplus: AtomicU64::new(0),
            closed_moved: AtomicU64::new(0),
            homes: AtomicU64::new(0),
            max_size: AtomicUsize::new(usize::MAX),
            min_idle: AtomicUsize::new(0),
            surplus: AtomicUsize::new(0),
            clock_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            rng: AtomicU64::new(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0x9E37_79B9_7F4A_7C15, |d| d.as_nanos() as u64)
                    | 1,
            ),
            #[cfg(feature = "metrics")]
            metrics: Default::default(),
        }
    }

    // --- state -------------------------------------------------------------------------

    pub(crate) fn state(&self) -> PoolState {
        match self.state.load(Acquire) {
            RUNNING => PoolState::Running,
            CLOSING => PoolState::Closing,
            _ => PoolState::Closed,
        }
    }

    pub(crate) fn is_running(&self) -> bool {
        self.state.load(Acquire) == RUNNING
    }

    /// `Running → Closing`. True for the one caller that made the move.
    pub(crate) fn start_closing(&self) -> bool {
        self.state
            .compare_exchange(RUNNING, CLOSING, AcqRel, Acquire)
            .is_ok()
    }

    pub(crate) fn set_closed(&self) {
        self.state.store(CLOSED, Release);
    }

    pub(crate) fn actor_alive(&self) -> bool {
        self.actor_alive.load(Acquire)
    }

    pub(crate) fn set_actor_alive(&self, alive: bool) {
        self.actor_alive.store(alive, Release);
    }

    // --- handles -----------------------------------------------------------------------

    pub(crate) fn add_handle(&self) {
        self.handles.fetch_add(1, Relaxed);
    }

    /// True when the last handle went.
    pub(crate) fn drop_handle(&self) -> bool {
        self.handles.fetch_sub(1, AcqRel) == 1
    }

    /// Adds a handle unless the last one already went (a weak handle upgrading).
    pub(crate) fn try_add_handle(&self) -> bool {
        self.handles
            .fetch_update(AcqRel, Acquire, |n| (n > 0).then_some(n + 1))
            .is_ok()
    }

    // --- sizes -------------------------------------------------------------------------

    pub(crate) fn slots(&self) -> usize {
        self.slots.load(SeqCst)
    }

    /// A creation starts, if the pool has room: false at `max_size`. The actor and callers
    /// that create (see `Runtime::is_current`) both reserve here, so the two never exceed it.
    pub(crate) fn try_reserve_slot(&self) -> bool {
        let max = self.max_size();
        self.slots
            .fetch_update(SeqCst, SeqCst, |n| (n < max).then_some(n + 1))
            .is_ok()
    }

    /// Whether a caller may create a connection itself: no creation failed since the last
    /// one that succeeded in the actor. A failure closes it until the actor, past its backoff
    /// pause, has made a connection again.
    #[inline]
    pub(crate) fn callers_may_create(&self) -> bool {
        self.callers_create.load(Relaxed)
    }

    pub(crate) fn set_callers_may_create(&self, open: bool) {
        self.callers_create.store(open, Relaxed);
    }

    /// Takes one of `cap` places for a creation in flight; false when all are taken.
    pub(crate) fn begin_creation(&self, cap: usize) -> bool {
        self.creations
            .fetch_update(SeqCst, Relaxed, |n| (n < cap).then_some(n + 1))
            .is_ok()
    }

    /// A creation in flight ended (made, failed, or abandoned).
    pub(crate) fn end_creation(&self) {
        self.creations.fetch_sub(1, SeqCst);
    }

    /// Whether the server said it is full at the last creation (see `Manager::is_server_full`).
    pub(crate) fn server_full(&self) -> bool {
        self.server_full.load(Relaxed)
    }

    pub(crate) fn set_server_full(&self, full: bool) {
        self.server_full.store(full, Relaxed);
    }

    /// A caller's creation failed: the actor is to pause creation, as after its own failure.
    pub(crate) fn ask_pause(&self) {
        self.pause_asked.store(true, SeqCst);
    }

    /// Whether a caller asked for a pause since the last time this was asked.
    pub(crate) fn take_pause_request(&self) -> bool {
        self.pause_asked.load(Relaxed) && self.pause_asked.swap(false, SeqCst)
    }

    /// A creation failed: its slot is free again.
    pub(crate) fn release_slot(&self) {
        self.slots.fetch_sub(1, SeqCst);
        self.create_failed.fetch_add(1, Relaxed);
    }

    /// A creation was abandoned (close, teardown): its slot is free, nothing failed.
    pub(crate) fn abandon_slot(&self) {
        self.slots.fetch_sub(1, SeqCst);
    }

    /// Whether the pool has made a connection yet.
    pub(crate) fn made_one(&self) -> bool {
        self.created.load(Relaxed) > 0
    }

    pub(crate) fn record_created(&self) {
        self.created.fetch_add(1, Relaxed);
    }

    /// A connection reached its end: count it and free its slot.
    pub(crate) fn record_end(&self, ending: Ending) {
        let counter = match ending {
            Ending::Graceful => &self.closed_graceful,
            Ending::Sync => &self.closed_sync,
            Ending::Failed => &self.close_failed,
            Ending::Detached => &self.detached,
        };
        counter.fetch_add(1, Relaxed);
        self.slots.fetch_sub(1, SeqCst);
    }

    /// `n` connections ended the same way.
    pub(crate) fn record_ends(&self, ending: Ending, n: usize) {
        if n == 0 {
            return;
        }
        let counter = match ending {
            Ending::Graceful => &self.closed_graceful,
            Ending::Sync => &self.closed_sync,
            Ending::Failed => &self.close_failed,
            Ending::Detached => &self.detached,
        };
        counter.fetch_add(n as u64, Relaxed);
        self.slots.fetch_sub(n, SeqCst);
    }

    pub(crate) fn record_check_failed(&self) {
        self.check_failed.fetch_add(1, Relaxed);
    }

    /// A goodbye was started and not confirmed (the connection is counted `closed_sync`).
    pub(crate) fn record_unconfirmed(&self) {
        self.closed_unconfirmed.fetch_add(1, Relaxed);
    }

    /// A hook failed, timed out or panicked (its connection is closed, and counted under the
    /// reason that step closes with).
    pub(crate) fn record_hook_failed(&self) {
        self.hook_failed.fetch_add(1, Relaxed);
    }

    /// Connections checked out now, with what the waitlist counted.
    pub(crate) fn in_use(&self, flow: Flow) -> usize {
        let ended = self.checkins.load(SeqCst) + self.untaken.load(SeqCst) + flow.returned;
        let out = self.checkouts.load(SeqCst) + flow.taken;
        out.saturating_sub(ended) as usize
    }

    /// An entry the waitlist counted as taken was refused before it was checked out.
    pub(crate) fn untake(&self) {
        self.untaken.fetch_add(1, Relaxed);
    }

    pub(crate) fn max_size(&self) -> usize {
        self.max_size.load(Acquire)
    }

    pub(crate) fn min_idle(&self) -> usize {
        self.min_idle.load(Acquire)
    }

    pub(crate) fn set_limits(&self, max_size: usize, min_idle: usize) {
        self.max_size.store(max_size, Release);
        self.min_idle.store(min_idle, Release);
    }

    pub(crate) fn set_surplus(&self, surplus: usize) {
        self.surplus.store(surplus, Release);
    }

    /// True for a returning connection that must be closed to reach a smaller size (takes one
    /// from the surplus). One load while there is none.
    #[inline]
    pub(crate) fn take_surplus(&self) -> bool {
        if self.surplus.load(Relaxed) == 0 {
            return false;
        }
        self.surplus
            .fetch_update(AcqRel, Acquire, |n| n.checked_sub(1))
            .is_ok()
    }

    /// A checkout the waitlist did not count (a connection the caller created itself, or
    /// one a waiter took back from the list as it gave up).
    pub(crate) fn check_out(&self) {
        self.checkouts.fetch_add(1, Relaxed);
    }

    /// A caller that had to wait stopped waiting (served, failed, timed out or gone) after
    /// `waited`.
    pub(crate) fn record_wait(&self, waited: std::time::Duration) {
        #[cfg(feature = "metrics")]
        self.metrics.waited(waited);
        let ns = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
        self.gets_waited.fetch_add(1, Relaxed);
        self.wait_ns_total.fetch_add(ns, Relaxed);
        // Read first: a new longest wait is rare, and a read does not take the line away
        // from the other threads as a write does.
        if ns > self.wait_ns_max.load(Relaxed) {
            self.wait_ns_max.fetch_max(ns, Relaxed);
        }
    }

    pub(crate) fn record_timeout(&self) {
        self.gets_timed_out.fetch_add(1, Relaxed);
    }

    /// Why a connection is being closed, when it is not the pool's close (which is counted as
    /// what is left: see `Counters::closed_by_close`).
    pub(crate) fn record_reason(&self, reason: Reason) {
        let counter = match reason {
            Reason::Broken => &self.closed_broken,
            Reason::IdleTimeout => &self.closed_idle_timeout,
            Reason::MaxLifetime => &self.closed_max_lifetime,
            Reason::Retained => &self.closed_retained,
            Reason::Resized => &self.closed_resized,
            Reason::Surplus => &self.closed_surplus,
            Reason::Moved => &self.closed_moved,
            Reason::Refreshed => &self.closed_refreshed,
        };
        counter.fetch_add(1, Relaxed);
    }

    /// A random number (xorshift64), for the lifetime jitter's draws: cheap, and good enough
    /// to spread expiries.
    pub(crate) fn random(&self) -> u64 {
        let mut x = self.rng.load(Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.store(x, Relaxed);
        x >> 16
    }

    /// A refresh: every connection stamped before now is stale. Returns the mark.
    pub(crate) fn mark_refresh(&self) -> u64 {
        let mark = self.real_now_ms() + 1;
        self.refresh_mark.fetch_max(mark, SeqCst);
        self.refreshes.fetch_add(1, Relaxed);
        mark
    }

    /// Connections stamped before this were made before the last refresh.
    #[inline]
    pub(crate) fn refresh_mark(&self) -> u64 {
        self.refresh_mark.load(Relaxed)
    }

    /// The same, read in the one order with a refresh's mark (see `Shared::refresh`).
    #[inline]
    pub(crate) fn refresh_mark_ordered(&self) -> u64 {
        self.refresh_mark.load(SeqCst)
    }

    /// `n` connections closed for the same reason.
    pub(crate) fn record_reasons(&self, reason: Reason, n: usize) {
        if n > 0 && reason == Reason::Moved {
            self.closed_moved.fetch_add(n as u64, Relaxed);
        } else {
            (0..n).for_each(|_| self.record_reason(reason));
        }
    }

    /// An actor was started on a caller's runtime.
    pub(crate) fn record_home(&self) {
        self.homes.fetch_add(1, Relaxed);
    }

    pub(crate) fn check_in(&self) {
        self.checkins.fetch_add(1, SeqCst);
    }

    // --- clock -------------------------------------------------------------------------

    pub(crate) fn now_ms(&self) -> u64 {
        self.clock_ms.load(Relaxed)
    }

    /// The instant the pool's millisecond stamps count from.
    pub(crate) fn epoch(&self) -> Instant {
        self.epoch
    }

    /// Milliseconds since `epoch`, read from the system clock now, rounded up: not before the
    /// true now, and at most three ticks of the coarse clock after it (see
    /// `clock::not_before_now`).
    pub(crate) fn real_now_ms(&self) -> u64 {
        let since = crate::clock::not_before_now().saturating_duration_since(self.epoch);
        u64::try_from(since.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
    }

    pub(crate) fn tick_clock(&self) -> u64 {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.clock_ms.fetch_max(now, Relaxed);
        now
    }

    pub(crate) fn counters(&self, flow: Flow) -> Counters {
        Counters {
            created: self.created.load(Acquire),
            closed_graceful: self.closed_graceful.load(Acquire),
            closed_sync: self.closed_sync.load(Acquire),
            close_failed: self.close_failed.load(Acquire),
            detached: self.detached.load(Acquire),
            create_failed: self.create_failed.load(Relaxed),
            check_failed: self.check_failed.load(Relaxed),
            hook_failed: self.hook_failed.load(Relaxed),
            gets: (self.checkouts.load(Relaxed) + flow.taken)
                .saturating_sub(self.untaken.load(Relaxed)),
            gets_waited: self.gets_waited.load(Relaxed),
            gets_timed_out: self.gets_timed_out.load(Relaxed),
            wait_total: std::time::Duration::from_nanos(self.wait_ns_total.load(Relaxed)),
            wait_max: std::time::Duration::from_nanos(self.wait_ns_max.load(Relaxed)),
            closed_broken: self.closed_broken.load(Relaxed),
            closed_idle_timeout: self.closed_idle_timeout.load(Relaxed),
            closed_max_lifetime: self.closed_max_lifetime.load(Relaxed),
            closed_retained: self.closed_retained.load(Relaxed),
            closed_resized: self.closed_resized.load(Relaxed),
            closed_surplus: self.closed_surplus.load(Relaxed),
            closed_moved: self.closed_moved.load(Relaxed),
            closed_unconfirmed: self.closed_unconfirmed.load(Relaxed),
            closed_refreshed: self.closed_refreshed.load(Relaxed),
            refreshes: self.refreshes.load(Relaxed),
            rehomed: self.homes.load(Relaxed).saturating_sub(1),
        }
    }
}

/// Checkouts and returns the waitlist counts under its lock: entries handed out to callers
/// (taken idle, or handed to a waiter: counted as they are handed over, and counted back if
/// the waiter gives up before taking its entry), and entries callers gave back.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Flow {
    pub(crate) taken: u64,
    pub(crate) returned: u64,
}

/// How many connections the actor should start creating now, and how many of those are for
/// callers that are waiting (the rest keep `min_idle` warm).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Growth {
    pub for_waiters: usize,
    pub for_min_idle: usize,
}

/// The growth rule. `creating` is how many creations are already under way; they count
/// toward both the waiters' demand and `min_idle`. Never grows past `max_size`.
pub(crate) fn plan_growth(
    waiters: usize,
    idle: usize,
    creating: usize,
    slots: usize,
    max_size: usize,
    min_idle: usize,
) -> Growth {
    let room = max_size.saturating_sub(slots);
    let supply = idle.saturating_add(creating);
    let for_waiters = waiters.saturating_sub(supply).min(room);
    let room = room - for_waiters;
    // What stays idle once every waiter is served: connections made for waiters do not.
    let spare = supply.saturating_add(for_waiters).saturating_sub(waiters);
    let for_min_idle = min_idle.saturating_sub(spare).min(room);
    Growth {
        for_waiters,
        for_min_idle,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The growth rule on (waiters, idle, creating, slots, max_size, min_idle), as
    /// (for_waiters, for_min_idle).
    #[test]
    fn growth_rule() {
        let cases = [
            // Waiters are served within max_size.
            ((5, 0, 0, 0, 3, 0), (3, 0)),
            ((5, 0, 2, 2, 3, 0), (1, 0)),
            ((5, 0, 0, 3, 3, 0), (0, 0)),
            // Idle connections and creations under way count against demand.
            ((2, 2, 0, 2, 10, 0), (0, 0)),
            ((3, 1, 1, 4, 10, 0), (1, 0)),
            // min_idle is kept warm.
            ((0, 0, 0, 0, 10, 4), (0, 4)),
            ((0, 1, 1, 5, 10, 4), (0, 2)),
            // Demand first, min_idle from what room is left.
            ((2, 0, 0, 7, 10, 4), (2, 1)),
            // A connection made for a waiter does not stay idle: min_idle is made beside it.
            ((1, 0, 0, 0, 5, 2), (1, 2)),
            ((1, 0, 1, 3, 5, 2), (0, 2)),
            ((3, 1, 0, 2, 5, 2), (2, 1)),
        ];
        for ((waiters, idle, creating, slots, max, min_idle), want) in cases {
            let g = plan_growth(waiters, idle, creating, slots, max, min_idle);
            assert_eq!(
                (g.for_waiters, g.for_min_idle),
                want,
                "waiters {waiters}, idle {idle}, creating {creating}, slots {slots}, max {max}, min_idle {min_idle}"
            );
        }
    }

    #[test]
    fn state_moves_once() {
        let l = Ledger::new();
        assert_eq!(l.state(), PoolState::Running);
        assert!(l.start_closing());
        assert!(!l.start_closing());
        assert_eq!(l.state(), PoolState::Closing);
        l.set_closed();
        assert_eq!(l.state(), PoolState::Closed);
        assert!(!l.start_closing());
    }

    #[test]
    fn endings_free_slots_and_balance() {
        let l = Ledger::new();
        l.set_limits(5, 0);
        for _ in 0..4 {
            assert!(l.try_reserve_slot());
            l.record_created();
        }
        assert!(l.try_reserve_slot());
        assert!(!l.try_reserve_slot(), "max_size reached");
        l.release_slot();
        l.record_end(Ending::Graceful);
        l.record_end(Ending::Sync);
        l.record_end(Ending::Failed);
        assert_eq!(l.slots(), 1);
        assert_eq!(l.counters(Flow::default()).open(), 1);
        l.record_end(Ending::Detached);
        let c = l.counters(Flow::default());
        assert_eq!(c.open(), 0);
        assert_eq!(c.created_failed_check(), (4, 1));
    }

    #[test]
    fn last_handle_is_seen_once() {
        let l = Ledger::new();
        l.add_handle();
        assert!(!l.drop_handle());
        assert!(l.drop_handle());
    }

    impl Counters {
        fn created_failed_check(&self) -> (u64, u64) {
            (self.created, self.create_failed)
        }
    }
}
