//! `Ambient` where a caller cannot be served by a move: no runtime to start the actor on, or
//! the runtime holding it kept but no longer driven. Each ends in a clear error, never a hang.

use std::time::{Duration, Instant};

use gracepool::{Error, Pool};
use gracepool_testkit::{assert_accounted, Counting};
use gracepool_tokio::Ambient;

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

#[test]
fn a_waiter_outside_any_runtime_gets_a_spawn_error_when_the_runtime_dies() {
    let m = Counting::new();
    let pool = Pool::builder(m.clone())
        .max_size(1)
        .wait_timeout(Duration::from_secs(5))
        .runtime(Ambient::new())
        .build()
        .unwrap();
    let a = current_thread();
    let held = a.block_on(pool.get()).unwrap();
    // A caller on a plain thread, waiting for the one connection.
    let waiter = {
        let pool = pool.clone();
        std::thread::spawn(move || {
            let r = futures_lite::future::block_on(pool.get());
            (r.map(|c| c.id), Instant::now())
        })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while pool.status().waiters == 0 {
        assert!(Instant::now() < deadline, "the caller never waited");
        std::thread::sleep(Duration::from_millis(1));
    }
    let dropped = Instant::now();
    drop(a);
    let (result, at) = waiter.join().unwrap();
    match result {
        Err(e @ Error::Spawn(_)) => assert!(e.to_string().contains("no tokio runtime"), "{e}"),
        other => panic!("expected a spawn error, got {other:?}"),
    }
    assert!(
        at - dropped < Duration::from_secs(1),
        "woken by the move, not by its wait timeout: {:?}",
        at - dropped
    );
    drop(held);
    let c = pool.status().counters;
    assert_eq!((c.rehomed, c.closed_moved), (0, 1), "{c:?}");
    assert_accounted(&c);
    m.assert_balanced();
}

#[test]
fn a_runtime_kept_but_not_driven_holds_the_actor_and_callers_elsewhere_time_out() {
    let m = Counting::new();
    let pool = Pool::builder(m.clone())
        .max_size(1)
        .wait_timeout(Duration::from_millis(100))
        .runtime(Ambient::new())
        .build()
        .unwrap();
    let a = current_thread();
    let held = a.block_on(pool.get()).unwrap();
    // `a` is kept, but nothing drives it: the actor is alive there, unpolled.
    let b = current_thread();
    let waited = b.block_on(pool.get());
    assert!(matches!(waited, Err(Error::Timeout { .. })), "{waited:?}");
    assert_eq!(pool.status().counters.rehomed, 0, "no move while A exists");
    drop(held);
    drop(a);
    // Once A is dropped, B is served from B.
    let c = b.block_on(pool.get()).expect("served after the move");
    drop(c);
    assert_eq!(pool.status().counters.rehomed, 1);
    drop(b);
    drop(pool);
    m.assert_balanced();
}

/// Every connection that ended is counted under one reason, across a move: one given back
/// broken just before its runtime died is `closed_broken`, not also `closed_moved`.
#[test]
fn a_connection_retired_just_before_the_move_keeps_its_one_reason() {
    let m = Counting::new();
    let pool = Pool::builder(m.clone())
        .max_size(2)
        .runtime(Ambient::new())
        .build()
        .unwrap();
    let a = current_thread();
    let (broken, idle) =
        a.block_on(async { (pool.get().await.unwrap(), pool.get().await.unwrap()) });
    drop(idle);
    // Given back broken outside `block_on`: on its way to the actor, which nobody polls now.
    m.set_broken(true);
    drop(broken);
    m.set_broken(false);
    drop(a);
    let c = pool.status().counters;
    assert_eq!(m.closed(), 2, "{c:?}");
    assert_eq!(
        (c.closed_broken, c.closed_moved),
        (1, 1),
        "the broken one is broken, the idle one moved: {c:?}"
    );
    let ended = c.closed_graceful + c.closed_sync + c.close_failed;
    assert_eq!(ended, 2);
    assert_eq!(c.closed_by_close(), 0, "no close ended any: {c:?}");
    drop(pool);
    m.assert_balanced();
}
