//! Shutdown scenarios of the core, each run in a child process so that a panic, an abort or a
//! stray print is seen from outside. The child is this same test binary, started with
//! `GRACEPOOL_SCENARIO` set; it runs the scenario and prints the manager's own counts. The
//! parent asserts exit status 0, empty stderr, and created == closed with no leak and no
//! double close.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gracepool::{Pool, Pooled};
use gracepool_testkit::{Counting, ExecRuntime};

const SCENARIO: &str = "GRACEPOOL_SCENARIO";

fn run_child(name: &str) {
    let started = Instant::now();
    let child = gracepool_testkit::child::run_child(name, &[(SCENARIO, name.to_owned())]);
    let (field, line) = (|key| child.field(key), &child.line);
    assert!(
        field("created") > 0,
        "{name}: the scenario created nothing: {line}"
    );
    assert_eq!(field("created"), field("closed"), "{name}: {line}");
    assert_eq!(field("leaked"), 0, "{name}: {line}");
    assert_eq!(field("double"), 0, "{name}: {line}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{name}: too slow"
    );
}

/// The child's entry point: does nothing unless started by `run_child`.
#[test]
fn child() {
    let Ok(name) = std::env::var(SCENARIO) else {
        return;
    };
    let m = Counting::new();
    match name.as_str() {
        "teardown_then_drop_handles" => teardown_then_drop_handles(&m),
        "teardown_with_guards_out" => teardown_with_guards_out(&m),
        "close_blocking_unpolled" => close_blocking_unpolled(&m),
        "dropped_in_thread_local_destructor" => dropped_in_thread_local_destructor(&m),
        "teardown_with_waiters_and_creations" => teardown_with_waiters_and_creations(&m),
        other => panic!("unknown scenario {other}"),
    }
    println!("{}", m.summary());
}

fn build(m: &Counting, rt: &ExecRuntime, max: usize) -> Pool<Counting> {
    Pool::builder(m.clone())
        .runtime(rt.handle())
        .max_size(max)
        .build()
        .unwrap()
}

async fn check_out(pool: &Pool<Counting>, n: usize) -> Vec<Pooled<Counting>> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(pool.get().await.unwrap());
    }
    v
}

fn teardown_then_drop_handles(m: &Counting) {
    let rt = ExecRuntime::new();
    let pool = build(m, &rt, 4);
    let clones: Vec<_> = (0..3).map(|_| pool.clone()).collect();
    rt.block_on(async { drop(check_out(&pool, 4).await) });
    drop(rt);
    drop(clones);
    drop(pool);
}

fn teardown_with_guards_out(m: &Counting) {
    let rt = ExecRuntime::new();
    let pool = build(m, &rt, 4);
    let guards = rt.block_on(check_out(&pool, 3));
    drop(rt);
    // Guards go back on other threads, after the runtime is gone.
    let threads: Vec<_> = guards
        .into_iter()
        .map(|g| std::thread::spawn(move || drop(g)))
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(matches!(
        futures_lite::future::block_on(pool.get()),
        Err(gracepool::Error::RuntimeGone)
    ));
}

fn close_blocking_unpolled(m: &Counting) {
    let rt = ExecRuntime::new();
    let pool = build(m, &rt, 4);
    let guard = rt.block_on(async {
        let mut g = check_out(&pool, 3).await;
        let keep = g.pop().unwrap();
        drop(g);
        keep
    });
    let report = pool.close_blocking(Duration::from_millis(20));
    assert!(report.fallback);
    assert_eq!(report.checked_out, 1);
    drop(guard);
    drop(pool);
    drop(rt);
}

thread_local! {
    static PARKED: std::cell::RefCell<Option<(Pool<Counting>, Pooled<Counting>)>> =
        const { std::cell::RefCell::new(None) };
}

fn dropped_in_thread_local_destructor(m: &Counting) {
    static DONE: AtomicBool = AtomicBool::new(false);
    let rt = ExecRuntime::new();
    let pool = build(m, &rt, 2);
    let guard = rt.block_on(async { check_out(&pool, 1).await.pop().unwrap() });
    let runtime = rt.clone();
    // The last handle and a guard are dropped by a thread-local destructor, after the runtime
    // is gone, on a thread that is exiting.
    std::thread::spawn(move || {
        PARKED.with(|p| *p.borrow_mut() = Some((pool, guard)));
        drop(runtime);
        DONE.store(true, Ordering::SeqCst);
    })
    .join()
    .unwrap();
    assert!(DONE.load(Ordering::SeqCst));
    drop(rt);
}

fn teardown_with_waiters_and_creations(m: &Counting) {
    let rt = ExecRuntime::new();
    let pool = build(m, &rt, 3);
    let held = rt.block_on(check_out(&pool, 2));
    m.set_create_delay(Duration::from_secs(30));
    let waiters: Vec<_> = (0..8)
        .map(|_| {
            let p = pool.clone();
            rt.executor.spawn(async move { p.get().await.map(|_| ()) })
        })
        .collect();
    rt.block_on(async_io::Timer::after(Duration::from_millis(10)));
    // Dropping the executor drops the waiting tasks and the actor with its slow creation.
    drop(waiters);
    drop(rt);
    drop(held);
    drop(pool);
}

#[test]
fn runtime_torn_down_then_handles_dropped() {
    run_child("teardown_then_drop_handles");
}

#[test]
fn runtime_torn_down_with_guards_out() {
    run_child("teardown_with_guards_out");
}

#[test]
fn close_blocking_with_the_actor_never_polled() {
    run_child("close_blocking_unpolled");
}

#[test]
fn last_handle_dropped_in_a_thread_local_destructor() {
    run_child("dropped_in_thread_local_destructor");
}

#[test]
fn runtime_torn_down_with_waiters_and_a_creation_under_way() {
    run_child("teardown_with_waiters_and_creations");
}
