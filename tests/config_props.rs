//! No input makes `build()` panic: every combination of the builder's knobs, extremes
//! included, gives a pool or a typed configuration error. A pool that builds then runs, serves
//! and closes without panicking.

use std::time::Duration;

use gracepool::{Error, Pool};
use gracepool_testkit::{Counting, ExecRuntime};
use proptest::prelude::*;

fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::MAX),
        Just(Duration::from_nanos(1)),
        (0u64..2_000).prop_map(Duration::from_millis),
        any::<u64>().prop_map(Duration::from_nanos),
    ]
}

fn maybe_duration() -> impl Strategy<Value = Option<Duration>> {
    prop_oneof![Just(None), duration().prop_map(Some)]
}

fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(0usize),
        Just(usize::MAX),
        Just(1usize << 24),
        Just(4096usize),
        Just(4097usize),
        0usize..64,
        any::<usize>(),
    ]
}

#[derive(Debug, Clone)]
struct Knobs {
    max_size: usize,
    min_idle: usize,
    wait_timeout: Option<Duration>,
    create_timeout: Option<Duration>,
    check_timeout: Option<Duration>,
    shutdown_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
    max_lifetime: Option<Duration>,
    close_deadline: Duration,
    maintenance_interval: Duration,
    check_on_checkout: bool,
    backoff: (Duration, Duration),
    fail_fast: bool,
}

fn knobs() -> impl Strategy<Value = Knobs> {
    (
        (size(), size()),
        (
            maybe_duration(),
            maybe_duration(),
            maybe_duration(),
            maybe_duration(),
            maybe_duration(),
            maybe_duration(),
        ),
        (duration(), duration(), (duration(), duration())),
        (any::<bool>(), any::<bool>()),
    )
        .prop_map(
            |((max_size, min_idle), t, (close, every, backoff), (check, fast))| Knobs {
                max_size,
                min_idle,
                wait_timeout: t.0,
                create_timeout: t.1,
                check_timeout: t.2,
                shutdown_timeout: t.3,
                idle_timeout: t.4,
                max_lifetime: t.5,
                close_deadline: close,
                maintenance_interval: every,
                check_on_checkout: check,
                backoff,
                fail_fast: fast,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn build_gives_a_pool_or_a_typed_error(k in knobs()) {
        let (m, rt) = (Counting::new(), ExecRuntime::new());
        let built = Pool::builder(m.clone())
            .max_size(k.max_size)
            .min_idle(k.min_idle)
            .wait_timeout(k.wait_timeout)
            .create_timeout(k.create_timeout)
            .check_timeout(k.check_timeout)
            .shutdown_timeout(k.shutdown_timeout)
            .idle_timeout(k.idle_timeout)
            .max_lifetime(k.max_lifetime)
            .close_deadline(k.close_deadline)
            .maintenance_interval(k.maintenance_interval)
            .check_on_checkout(k.check_on_checkout)
            .create_backoff(k.backoff.0, k.backoff.1)
            .fail_fast(k.fail_fast)
            .runtime(rt.handle())
            .build();
        let pool = match built {
            Ok(pool) => pool,
            Err(Error::Config(e)) => {
                prop_assert!(!e.to_string().is_empty());
                return Ok(());
            }
            Err(other) => return Err(TestCaseError::fail(format!("not a config error: {other}"))),
        };
        // It runs: a checkout (given up after 20 ms if it must wait), a return, a close.
        rt.block_on(async {
            let got = futures_lite::future::or(
                async { pool.get().await.ok() },
                async {
                    async_io::Timer::after(Duration::from_millis(20)).await;
                    None
                },
            )
            .await;
            drop(got);
        });
        let report = pool.close_blocking(Duration::from_millis(100));
        prop_assert_eq!(report.checked_out, 0);
        drop(pool);
        drop(rt);
        prop_assert_eq!(m.leaked(), 0);
    }
}

#[test]
fn a_huge_max_size_is_not_allocated_up_front() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    for max_size in [usize::MAX, 1 << 24] {
        let pool = Pool::builder(m.clone())
            .max_size(max_size)
            .runtime(rt.handle())
            .build()
            .expect("a large max_size is valid");
        assert_eq!(pool.status().max_size, max_size);
        rt.block_on(async { drop(pool.get().await.unwrap()) });
        pool.close_blocking(Duration::from_secs(1));
    }
    m.assert_balanced();
}
