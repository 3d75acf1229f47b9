//! The synchronisation the pool's protocol rests on: std's mutexes and atomics, or loom's when
//! the crate is built with `--cfg loom`. The model checks (the `gracepool-loom` crate) build it
//! so, and then explore every interleaving of the real close, drain, return and hand-off code
//! with the mailbox's channel (concurrent-queue) and the close event (event-listener) in their
//! own loom modes.
//!
//! Not swapped: `Arc` and `Weak`, which stay std's either way. loom's `Arc` has no `Weak` and
//! cannot hold a `dyn Runtime`, and the pool's `Arc` only shares ownership: the models join
//! their threads before the last handle drops, so loom sees every ordering the protocol itself
//! relies on. Nor the deadline thread (`deadline`): a process-wide thread with a condvar and a
//! clock, which the models leave out by giving no wait timeout (its `expire` step is the
//! waitlist's, and that is modelled code).

#[cfg(not(loom))]
pub(crate) use std::sync::{atomic, Mutex, MutexGuard};

#[cfg(loom)]
pub(crate) use loom::sync::{atomic, Mutex, MutexGuard};

/// Deliberate bugs, each planted on purpose by one model check to prove that the model catches
/// it. Without `--cfg loom` none can be planted and `planted` is always false.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// The fallback drains the idle queue and the mailbox before closing them, so a connection
    /// put back in between is never drained.
    DrainBeforeClose,
    /// A caller joining the waitlist looks for an idle connection and queues in two critical
    /// sections, so a connection put back in between goes idle while the caller waits.
    SplitJoin,
    /// A close tells the actor before it closes the waitlist, so a connection put back in
    /// between goes idle after the actor took what was idle.
    TellBeforeClose,
    /// Every finishing closer writes its report, the later one over the earlier.
    ReportTwice,
    /// A waiter that gives up drops a connection handed to it meanwhile.
    CancelDrops,
    /// A refresh takes the idle connections, then marks the connections made until now as
    /// stale, so one given back in between goes idle unmarked.
    RefreshReapBeforeMark,
}

/// Whether `bug` is planted, on this thread (always false without `--cfg loom`).
#[cfg(not(loom))]
#[inline(always)]
pub(crate) fn planted(_bug: Bug) -> bool {
    false
}

#[cfg(loom)]
std::thread_local! {
    // Per thread, not per process: loom runs a model's threads on the thread that called
    // `loom::model`, and the test harness runs other models on other threads meanwhile.
    static PLANTED: std::cell::Cell<Option<Bug>> = const { std::cell::Cell::new(None) };
}

/// Whether `bug` is planted, on this thread.
#[cfg(loom)]
pub(crate) fn planted(bug: Bug) -> bool {
    PLANTED.with(|p| p.get()) == Some(bug)
}

/// Plants `bug` (or none) for every model run on this thread from now on. For the model
/// checks only; exists only with `--cfg loom`.
#[cfg(loom)]
pub fn plant(bug: Option<Bug>) {
    PLANTED.with(|p| p.set(bug));
}
