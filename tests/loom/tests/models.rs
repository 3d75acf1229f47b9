//! Loom models of the close protocol and the waitlist hand-off. Each runs the pool's real code
//! under every interleaving loom explores (up to the preemption bound), and asserts the counts
//! exactly. Each also has a twin that plants a bug in the pool (a test-only switch that exists
//! only with `--cfg loom`), runs the same model in a child process, and asserts that it fails
//! for the reason the model gives: a model that could not fail would prove nothing.
//!
//! Run with
//! `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p gracepool-loom --release`.
#![cfg(loom)]

use std::time::Duration;

use gracepool::{CloseCause, Error, PoolState};
use gracepool_loom::{at_once, check, one_idle, poll_once};
use loom::future::block_on;
use loom::thread;

// (a) A guard returns its connection while a caller starts the close and the runtime drops
// the actor's task: the actor's `Drop` (or the closer, finding the actor gone) falls back and
// drains. The connection is closed exactly once, whichever way it went (put back and drained,
// refused and closed by the guard, or sent to the mailbox and drained), without waiting for
// the last handle to drop.
#[test]
fn a_guard_returns_while_the_fallback_drains() {
    check(2, || {
        let (pool, tally, actor) = one_idle(Duration::from_secs(10));
        let guard = at_once(pool.get()).expect("the idle connection");
        let returner = thread::spawn(move || drop(guard));
        let teardown = thread::spawn(move || drop(actor));
        let closer = thread::spawn({
            let pool = pool.clone();
            move || pool.begin_close()
        });
        returner.join().unwrap();
        teardown.join().unwrap();
        closer.join().unwrap();

        assert_eq!(pool.state(), PoolState::Closed);
        let report = at_once(pool.close());
        assert!(report.fallback, "the fallback finished the close");
        assert!(matches!(
            report.cause,
            CloseCause::RuntimeGone | CloseCause::Requested
        ));
        let status = pool.status();
        assert_eq!(tally.created(), 1);
        assert_eq!(
            (
                status.counters.closed_sync,
                status.in_use,
                status.idle,
                status.size
            ),
            (1, 0, 0, 0),
            "the connection was not closed once the close and its guard were done: lost"
        );
        assert_eq!(tally.assert_each_closed_once(), (0, 1));
    });
}

// (b) A caller joins the waitlist while the only connection comes back. Either it finds the
// connection idle, or it queues and the connection is handed to it: no waiter is forgotten
// (loom reports a caller parked forever as a deadlock), no connection is lost or made anew.
#[test]
fn a_waiter_joins_while_a_connection_comes_back() {
    check(8, || {
        let (pool, tally, actor) = one_idle(Duration::from_secs(10));
        let guard = at_once(pool.get()).expect("the idle connection");
        let returner = thread::spawn(move || drop(guard));
        let waiter = thread::spawn({
            let pool = pool.clone();
            move || {
                block_on(pool.get())
                    .expect("the connection that came back")
                    .0
            }
        });
        returner.join().unwrap();
        assert_eq!(
            waiter.join().unwrap(),
            0,
            "the one connection, not a new one"
        );

        let status = pool.status();
        assert_eq!((status.in_use, status.idle, status.waiters), (0, 1, 0));
        assert_eq!(tally.created(), 1);
        // The runtime drops the actor: the fallback closes the idle connection.
        drop(actor);
        assert_eq!(pool.state(), PoolState::Closed);
        assert_eq!(tally.assert_each_closed_once(), (0, 1));
    });
}

// (c) Two closers race: the actor finishing a close it was asked for, and a closer whose
// patience runs out (a close deadline of zero: at once) and falls back. One report, the same
// for every caller; the connection is closed once, by one of them.
#[test]
fn the_actor_and_a_fallback_both_finish_a_close() {
    check(3, || {
        let (pool, tally, actor) = one_idle(Duration::ZERO);
        let actor = thread::spawn(move || block_on(actor));
        let closer = thread::spawn({
            let pool = pool.clone();
            move || block_on(pool.close())
        });
        let first = closer.join().unwrap();
        actor.join().unwrap();

        let last = at_once(pool.close());
        assert_eq!(
            (first.fallback, first.counters, first.checked_out),
            (last.fallback, last.counters, last.checked_out),
            "two reports: each closer must get the same one"
        );
        // Not asserted: that the report is complete. The fallback may write it while the actor
        // is still saying the goodbye of the connection it took: the report then counts that
        // connection as open, though it is neither checked out nor lost (it ends just after).
        assert_eq!(pool.state(), PoolState::Closed);
        let (graceful, sync) = tally.assert_each_closed_once();
        let counters = pool.status().counters;
        assert_eq!(counters.created, 1);
        assert_eq!(
            (counters.closed_graceful, counters.closed_sync),
            (graceful, sync)
        );
    });
}

// (d) A waiter gives up (its future dropped after one poll) while the only connection comes
// back and may be handed to it, and a caller closes the pool. The connection goes back to the
// pool or is closed, never lost: once the runtime drops the actor (the fallback drains what
// the close left), it has been closed exactly once.
#[test]
fn a_waiter_gives_up_while_it_is_served() {
    check(2, || {
        let (pool, tally, actor) = one_idle(Duration::from_secs(10));
        let guard = at_once(pool.get()).expect("the idle connection");
        let returner = thread::spawn(move || drop(guard));
        let quitter = thread::spawn({
            let pool = pool.clone();
            move || {
                let mut get = std::pin::pin!(pool.get());
                // Served at once (the connection was back), refused (closed), or queued:
                // either way it goes.
                drop(poll_once(get.as_mut()));
            }
        });
        let closer = thread::spawn({
            let pool = pool.clone();
            move || pool.begin_close()
        });
        returner.join().unwrap();
        quitter.join().unwrap();
        closer.join().unwrap();

        // The actor, never polled here, left the close (and any connection retired to its
        // mailbox) to the fallback its `Drop` runs.
        drop(actor);
        assert_eq!(pool.state(), PoolState::Closed);
        assert_eq!(tally.created(), 1);
        assert_eq!(tally.assert_each_closed_once(), (0, 1));
        let status = pool.status();
        assert_eq!(
            (status.in_use, status.idle, status.size, status.waiters),
            (0, 0, 0, 0)
        );
    });
}

// (e) A caller waits on a pool whose only connection is out while another closes the pool:
// it is woken with `Error::Closed`, whether it queued before the close or came after it;
// never left waiting (loom reports a caller parked forever as a deadlock).
#[test]
fn close_wakes_a_caller_that_is_joining() {
    check(8, || {
        let (pool, tally, actor) = one_idle(Duration::from_secs(10));
        let guard = at_once(pool.get()).expect("the idle connection");
        let waiter = thread::spawn({
            let pool = pool.clone();
            move || block_on(pool.get()).map(drop)
        });
        let closer = thread::spawn({
            let pool = pool.clone();
            move || pool.begin_close()
        });
        closer.join().unwrap();
        let got = waiter.join().unwrap();
        assert!(matches!(got, Err(Error::Closed)), "{got:?}");
        assert_eq!(pool.status().waiters, 0);

        drop(guard);
        drop(actor);
        assert_eq!(pool.state(), PoolState::Closed);
        assert_eq!(tally.created(), 1);
        assert_eq!(tally.assert_each_closed_once(), (0, 1));
    });
}

// (f) A guard returns its connection while a caller starts the close and the actor, running,
// closes the pool gracefully: it waits for the connection (the close deadline is long: never,
// here), which comes back idle before the close or retired to its mailbox after, and says its
// goodbye. The actor finishes the close itself, every connection ended gracefully, once.
#[test]
fn a_guard_returns_while_the_actor_closes() {
    check(2, || {
        let (pool, tally, actor) = one_idle(Duration::from_secs(10));
        let guard = at_once(pool.get()).expect("the idle connection");
        let actor = thread::spawn(move || block_on(actor));
        let returner = thread::spawn(move || drop(guard));
        let closer = thread::spawn({
            let pool = pool.clone();
            move || pool.begin_close()
        });
        returner.join().unwrap();
        closer.join().unwrap();
        // Parks for good (loom: a deadlock) if the connection never reaches the actor.
        actor.join().unwrap();

        assert_eq!(pool.state(), PoolState::Closed);
        let report = at_once(pool.close());
        assert!(!report.fallback, "the actor finished the close");
        assert_eq!(tally.created(), 1);
        assert_eq!(tally.assert_each_closed_once(), (1, 0));
        let status = pool.status();
        assert_eq!(
            (
                status.counters.closed_graceful,
                status.in_use,
                status.idle,
                status.size
            ),
            (1, 0, 0, 0)
        );
    });
}

// (g) A guard gives its connection back while a caller refreshes the pool: the connection,
// made before the refresh, is never idle afterwards — retired as it comes back (it saw the
// mark) or taken from the idle queue by the refresh (it went there first) — and it ends once,
// with its goodbye through the actor, as does the replacement the actor may make.
#[test]
fn a_guard_returns_while_the_pool_is_refreshed() {
    check(3, || {
        let (pool, tally, actor) = one_idle(Duration::from_secs(10));
        let guard = at_once(pool.get()).expect("the idle connection");
        // The race is between the guard and the refresh alone: the actor runs after them
        // (what they send it waits in its mailbox), which keeps the model small.
        let returner = thread::spawn(move || drop(guard));
        let refresher = thread::spawn({
            let pool = pool.clone();
            move || {
                pool.refresh();
            }
        });
        returner.join().unwrap();
        refresher.join().unwrap();
        let status = pool.status();
        // Retired (counted as it is taken), whichever way it went: nothing is idle.
        assert_eq!(
            (status.counters.closed_refreshed, status.idle),
            (1, 0),
            "a connection made before the refresh stayed idle: {status:?}"
        );
        pool.begin_close();
        block_on(actor);
        // Each connection ends once, with its goodbye through the actor (which may have made
        // the replacement the pool keeps idle before the close).
        let created = tally.created();
        assert!((1..=2).contains(&created), "{created}");
        assert_eq!(tally.assert_each_closed_once(), (created, 0));
    });
}

/// Runs `model` in a child process with `bug` planted, and asserts that it fails, saying
/// `expect`.
fn caught(model: &str, bug: &str, expect: &str) {
    let exe = std::env::current_exe().expect("the test binary");
    let out = std::process::Command::new(exe)
        .args([model, "--exact", "--test-threads=1", "--nocapture"])
        .env("GRACEPOOL_LOOM_BUG", bug)
        .output()
        .expect("the test binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "the model {model} passed with the bug {bug} planted:\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains(expect) || stdout.contains(expect),
        "the model {model} failed with {bug} planted, but not saying {expect:?}:\n{stdout}\n{stderr}"
    );
}

/// True in the child a `caught` test starts: the model there runs with its bug planted.
fn planted() -> bool {
    std::env::var_os("GRACEPOOL_LOOM_BUG").is_some()
}

#[test]
fn drain_before_close_is_caught() {
    if planted() {
        return;
    }
    caught(
        "a_guard_returns_while_the_fallback_drains",
        "DrainBeforeClose",
        "lost",
    );
}

#[test]
fn a_split_join_is_caught() {
    if planted() {
        return;
    }
    caught(
        "a_waiter_joins_while_a_connection_comes_back",
        "SplitJoin",
        "deadlock",
    );
}

#[test]
fn a_second_report_is_caught() {
    if planted() {
        return;
    }
    caught(
        "the_actor_and_a_fallback_both_finish_a_close",
        "ReportTwice",
        "two reports",
    );
}

#[test]
fn a_cancel_that_drops_its_connection_is_caught() {
    if planted() {
        return;
    }
    caught(
        "a_waiter_gives_up_while_it_is_served",
        "CancelDrops",
        "lost",
    );
}

#[test]
fn a_split_join_that_misses_the_close_is_caught() {
    if planted() {
        return;
    }
    caught(
        "close_wakes_a_caller_that_is_joining",
        "SplitJoin",
        "deadlock",
    );
}

#[test]
fn telling_the_actor_before_closing_is_caught() {
    if planted() {
        return;
    }
    caught(
        "a_guard_returns_while_the_actor_closes",
        "TellBeforeClose",
        "deadlock",
    );
}

#[test]
fn a_refresh_that_reaps_before_it_marks_is_caught() {
    if planted() {
        return;
    }
    caught(
        "a_guard_returns_while_the_pool_is_refreshed",
        "RefreshReapBeforeMark",
        "stayed idle",
    );
}
