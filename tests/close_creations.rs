//! A close lets the creations under way finish, up to its deadline: each connection made in
//! time says its goodbye (a server sees a Terminate, not a client gone half-way through its
//! handshake); a creation still under way at the deadline is abandoned.

use std::time::{Duration, Instant};

use gracepool::{BoxFuture, Error, Pool, Runtime, SpawnError};
use gracepool_testkit::{assert_accounted, until_status, Counting, ExecHandle, ExecRuntime};

/// The test executor, saying that every caller runs on it: a `get` that finds nothing idle
/// makes its connection itself.
#[derive(Clone)]
struct Here(ExecHandle);

impl Runtime for Here {
    fn spawn(&self, task: BoxFuture) -> Result<(), SpawnError> {
        self.0.spawn(task)
    }

    fn sleep(&self, duration: Duration) -> BoxFuture {
        self.0.sleep(duration)
    }

    fn is_current(&self) -> bool {
        true
    }
}

#[test]
fn the_actors_creations_under_way_finish_and_say_goodbye() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    m.set_create_delay(Duration::from_millis(100));
    let pool = Pool::builder(m.clone())
        .max_size(4)
        .runtime(rt.handle())
        .build()
        .unwrap();
    rt.block_on(async {
        // A fresh pool makes its first connection alone; held, the next three are made at once.
        let first = pool.get().await.unwrap();
        let gets: Vec<_> = (0..3)
            .map(|_| {
                let pool = pool.clone();
                rt.executor.spawn(async move { pool.get().await.map(drop) })
            })
            .collect();
        until_status(&pool, "three creations under way", |s| s.size == 4).await;
        assert_eq!(m.created(), 1);
        drop(first);
        let report = pool.close().await;
        for get in gets {
            assert!(matches!(get.await, Err(Error::Closed)));
        }
        assert!(report.is_complete() && !report.fallback, "{report:?}");
        assert_eq!(m.created(), 4, "the creations under way were abandoned");
        assert_eq!(report.counters.created, 4, "{report:?}");
        assert_eq!(report.counters.closed_graceful, 4, "{report:?}");
        assert_accounted(&report.counters);
    });
    m.assert_balanced();
}

#[test]
fn a_callers_own_creation_under_way_finishes_and_says_goodbye() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    m.set_create_delay(Duration::from_millis(100));
    let pool = Pool::builder(m.clone())
        .max_size(4)
        .runtime(Here(rt.handle()))
        .build()
        .unwrap();
    rt.block_on(async {
        let get = {
            let pool = pool.clone();
            rt.executor.spawn(async move { pool.get().await.map(drop) })
        };
        until_status(&pool, "a creation under way", |s| s.size == 1).await;
        let report = pool.close().await;
        assert!(matches!(get.await, Err(Error::Closed)));
        assert!(report.is_complete() && !report.fallback, "{report:?}");
        assert_eq!(m.created(), 1, "the caller's creation was abandoned");
        assert_eq!(report.counters.closed_graceful, 1, "{report:?}");
        assert_accounted(&report.counters);
    });
    m.assert_balanced();
}

/// A creation slower than the close deadline is abandoned at the deadline: the close does not
/// wait for it (the creation takes a minute; the outer limit is half of that).
#[test]
fn a_creation_slower_than_the_close_deadline_is_abandoned_at_the_deadline() {
    for here in [false, true] {
        let (m, rt) = (Counting::new(), ExecRuntime::new());
        m.set_create_delay(Duration::from_secs(60));
        let builder = Pool::builder(m.clone())
            .max_size(2)
            .close_deadline(Duration::from_millis(50));
        let pool = if here {
            builder.runtime(Here(rt.handle())).build().unwrap()
        } else {
            builder.runtime(rt.handle()).build().unwrap()
        };
        rt.block_on(async {
            let get = {
                let pool = pool.clone();
                rt.executor.spawn(async move { pool.get().await.map(drop) })
            };
            until_status(&pool, "a creation under way", |s| s.size == 1).await;
            let started = Instant::now();
            let report = pool.close().await;
            assert!(matches!(get.await, Err(Error::Closed)));
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "here {here}: the close waited {:?}",
                started.elapsed()
            );
            assert!(!report.fallback, "here {here}: {report:?}");
            assert_eq!(report.counters.created, 0, "here {here}: {report:?}");
        });
        until_status_blocking(&pool);
        assert_eq!(m.created(), 0);
        m.assert_balanced();
    }
}

/// Waits (up to 10 s) until no slot is held: an abandoned caller's creation gives its slot back
/// as its future is dropped, which may follow the close's report.
fn until_status_blocking(pool: &Pool<Counting>) {
    let until = Instant::now() + Duration::from_secs(10);
    while pool.status().size > 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(pool.status().size, 0, "{:?}", pool.status());
}
