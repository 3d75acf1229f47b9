//! Runtimes coming and going under one pool on `Ambient`, at random moments: three threads,
//! each starting 12 short-lived runtimes in turn (current_thread and multi-thread), whose tasks
//! check connections out and in with random holding times while the other threads' runtimes
//! end. Run in a child process (exit status, empty stderr, its counts read from outside).
//!
//! Checks: every `get` is served; a connection handed out was born on a runtime that was still
//! alive when the `get` began, or began to end less than a scheduling margin before (the pool
//! learns of the end when the runtime drops the actor's task, in the same teardown); the pool
//! moved at least once per runtime that held its actor; and once closed, every connection
//! created was closed exactly once, each counted under one reason.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gracepool::Pool;
use gracepool_testkit::{assert_accounted, child::run_child, set_birthplace, Counting, Rng};
use gracepool_tokio::Ambient;

const SCENARIO: &str = "CHURN_CHILD";
const THREADS: u64 = 3;
const RUNTIMES_PER_THREAD: u64 = 12;
/// See the module docs: how long after a runtime began to end a connection born there may
/// still be handed out. Generous, for a loaded machine.
const MARGIN: Duration = Duration::from_millis(250);

/// When a runtime began to end, or when its drop returned.
type Span = (Option<Instant>, Option<Instant>);

#[test]
fn runtimes_come_and_go_under_one_pool() {
    let report = run_child("churn", &[(SCENARIO, "1".to_owned())]);
    assert_eq!(report.field("created"), report.field("closed"));
    assert_eq!(report.field("leaked"), 0);
    assert_eq!(report.field("double"), 0);
    assert!(report.field("created") > 0);
    assert!(report.field("rehomed") >= 1, "{}", report.line);
}

#[test]
fn child() {
    if std::env::var_os(SCENARIO).is_none() {
        return;
    }
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.subsec_nanos() as u64)
        | 1;
    let m = Counting::new();
    let pool = Pool::builder(m.clone())
        .max_size(3)
        .wait_timeout(Duration::from_secs(5))
        .runtime(Ambient::new())
        .build()
        .unwrap();
    // By birthplace: when each runtime began to end (its tasks done, its drop to come), then
    // when its drop returned.
    let ended: Arc<Mutex<HashMap<u64, Span>>> = Arc::default();
    let next_place = Arc::new(AtomicU64::new(1));
    let served = Arc::new(AtomicU64::new(0));
    let caught_ending = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (pool, ended, next_place) = (pool.clone(), ended.clone(), next_place.clone());
            let (served, caught_ending) = (served.clone(), caught_ending.clone());
            std::thread::spawn(move || {
                let mut rng = Rng::new(seed.wrapping_mul(t + 1));
                for r in 0..RUNTIMES_PER_THREAD {
                    let place = next_place.fetch_add(1, SeqCst);
                    let rt = if (r + t) % 2 == 0 {
                        tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                    } else {
                        tokio::runtime::Builder::new_multi_thread()
                            .worker_threads(2)
                            .enable_all()
                            .on_thread_start(move || set_birthplace(place))
                            .build()
                    }
                    .expect("a runtime");
                    set_birthplace(place);
                    let tasks = 1 + rng.below(3);
                    let holds: Vec<u64> = (0..tasks).map(|_| rng.below(400)).collect();
                    let rounds = 5 + rng.below(20);
                    rt.block_on(async {
                        let mut handles = Vec::new();
                        for hold in holds {
                            let (pool, ended) = (pool.clone(), ended.clone());
                            let (served, caught_ending) = (served.clone(), caught_ending.clone());
                            handles.push(tokio::spawn(async move {
                                for _ in 0..rounds {
                                    let asked = Instant::now();
                                    let c = pool.get().await.expect("every get is served");
                                    served.fetch_add(1, SeqCst);
                                    let (end, gone) = ended
                                        .lock()
                                        .unwrap()
                                        .get(&c.born)
                                        .copied()
                                        .unwrap_or((None, None));
                                    if let Some(gone) = gone {
                                        // Its drop had returned, the actor's with it.
                                        assert!(
                                            asked < gone,
                                            "handed a connection of a runtime dropped {:?} \
                                             before the get",
                                            asked - gone
                                        );
                                    }
                                    if let Some(end) = end {
                                        assert!(
                                            end + MARGIN > asked,
                                            "handed a connection of a runtime that began to \
                                             end {:?} before the get",
                                            asked - end
                                        );
                                        caught_ending.fetch_add(1, SeqCst);
                                    }
                                    tokio::time::sleep(Duration::from_micros(hold)).await;
                                }
                            }));
                        }
                        for h in handles {
                            h.await.expect("a task ends without panicking");
                        }
                    });
                    set_birthplace(0);
                    ended
                        .lock()
                        .unwrap()
                        .insert(place, (Some(Instant::now()), None));
                    drop(rt);
                    ended.lock().unwrap().entry(place).or_default().1 = Some(Instant::now());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a runtime thread ends cleanly");
    }
    let last = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let report = last.block_on(pool.close());
    assert!(report.is_complete(), "{report:?}");
    let c = report.counters;
    assert_accounted(&c);
    assert_eq!(c.created, m.created());
    drop(last);
    drop(pool);
    m.assert_balanced();
    println!(
        "{} rehomed={} closed_moved={} served={} caught_ending={} seed={seed}",
        m.summary(),
        c.rehomed,
        c.closed_moved,
        served.load(SeqCst),
        caught_ending.load(SeqCst),
    );
}
