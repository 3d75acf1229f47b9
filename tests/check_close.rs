//! `close()` ends a `get()` stuck in a health check (a silent server): the check races the
//! pool's close as well as its timer, and the connection takes the normal close path,
//! counted once.

use std::time::{Duration, Instant};

use gracepool::{Error, Pool};
use gracepool_testkit::{assert_accounted, Counting, ExecRuntime, Fault};

#[test]
fn close_ends_a_get_stuck_in_a_check_and_a_before_checkout_hook() {
    for hooked in [false, true] {
        let (m, rt) = (Counting::new(), ExecRuntime::new());
        let mut builder = Pool::builder(m.clone())
            // No bound but the close: without it, the get would wait forever.
            .check_timeout(None)
            .wait_timeout(None)
            .close_deadline(Duration::from_secs(20));
        if hooked {
            builder = builder
                .check_on_checkout(false)
                .before_checkout(|_conn, _metrics| Box::pin(std::future::pending()));
        }
        let pool = builder.runtime(rt.handle()).build().unwrap();
        rt.block_on(async {
            drop(pool.get().await.unwrap());
            if !hooked {
                m.set_check(Fault::Stall);
            }
            let stuck = rt.executor.spawn({
                let pool = pool.clone();
                async move { pool.get().await.map(drop) }
            });
            gracepool_testkit::until_status(&pool, "the get is in its check", |s| s.in_use == 1)
                .await;
            let started = Instant::now();
            let report = pool.close().await;
            let closed_in = started.elapsed();
            let got = futures_lite::future::or(async { Some(stuck.await) }, async {
                async_io::Timer::after(Duration::from_secs(10)).await;
                None
            })
            .await
            .expect("the stuck get ends with the close, not never");
            assert!(
                matches!(got, Err(Error::Closed)),
                "hooked {hooked}: {got:?}"
            );
            assert!(
                closed_in < Duration::from_secs(10),
                "hooked {hooked}: close waited {closed_in:?} (its deadline is 20 s)"
            );
            assert_eq!(report.checked_out, 0, "hooked {hooked}: {report:?}");
            assert!(report.is_complete(), "hooked {hooked}: {report:?}");
            assert_accounted(&report.counters);
        });
        m.assert_balanced();
    }
}
