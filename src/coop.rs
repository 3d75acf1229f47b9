//! Cooperative yielding. Taking an idle connection completes without waiting, so a task that
//! loops on `get()` with no other await point would never give its thread back: on a
//! single-threaded runtime, no other task (the one that would stop the loop, or a runtime's
//! shutdown) would run again. tokio's own primitives avoid that with a per-task budget; the
//! pool, which knows no runtime, counts per thread instead: after [`BUDGET`] checkouts in a
//! row that did not wait, the next one yields once first.

use std::cell::Cell;

/// Checkouts in a row without waiting before one yields.
const BUDGET: u32 = 64;

#[cfg(not(loom))]
thread_local! {
    static STREAK: Cell<u32> = const { Cell::new(0) };
}

// Under the model checks, per model thread and per run: the same code takes the same path each
// time loom replays it.
#[cfg(loom)]
loom::thread_local! {
    static STREAK: Cell<u32> = Cell::new(0);
}

/// Counts a checkout on this thread; true when it should yield before going on.
#[inline]
pub(crate) fn spend() -> bool {
    STREAK.with(|streak| {
        let n = streak.get() + 1;
        if n >= BUDGET {
            streak.set(0);
            true
        } else {
            streak.set(n);
            false
        }
    })
}

/// This thread's task is about to wait: the streak starts over.
#[inline]
pub(crate) fn reset() {
    STREAK.with(|streak| streak.set(0));
}
