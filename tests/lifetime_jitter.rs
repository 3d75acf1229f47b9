//! Max lifetime with jitter: connections made together do not expire together. Eight
//! connections made at once, with a lifetime of 600 ms: with a 400 ms jitter their expiries
//! spread over a good part of it; with the jitter off (the control, which shows the check can
//! fail) they all go within a few ticks of each other.

use std::time::{Duration, Instant};

use gracepool::Pool;
use gracepool_testkit::{Counting, ExecRuntime};

/// When each of the first eight expiries was seen, relative to the first.
fn expiry_spread(jitter: Duration) -> Duration {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let pool = Pool::builder(m.clone())
        .max_size(8)
        .min_idle(8)
        .max_lifetime(Duration::from_millis(600))
        .max_lifetime_jitter(jitter)
        // Made in the same instant, as the test's premise: no pre-warm pacing.
        .prewarm_window(Duration::ZERO)
        .maintenance_interval(Duration::from_millis(5))
        .runtime(rt.handle())
        .build()
        .unwrap();
    rt.block_on(async {
        gracepool_testkit::until_status(&pool, "eight made together", |s| s.idle == 8).await;
        let mut seen: Vec<Instant> = Vec::new();
        let until = Instant::now() + Duration::from_secs(5);
        while seen.len() < 8 && Instant::now() < until {
            let expired = pool.status().counters.closed_max_lifetime as usize;
            while seen.len() < expired.min(8) {
                seen.push(Instant::now());
            }
            async_io::Timer::after(Duration::from_millis(2)).await;
        }
        assert_eq!(seen.len(), 8, "all eight expired: {:?}", pool.status());
        pool.close().await;
        seen[7] - seen[0]
    })
}

#[test]
fn connections_made_together_expire_spread_over_the_jitter() {
    let spread = expiry_spread(Duration::from_millis(400));
    assert!(spread >= Duration::from_millis(100), "spread {spread:?}");
    let control = expiry_spread(Duration::ZERO);
    assert!(
        control < Duration::from_millis(60),
        "without jitter: {control:?}"
    );
}

#[test]
fn a_jitter_not_below_the_lifetime_is_a_typed_error() {
    let err = Pool::builder(Counting::new())
        .max_lifetime(Duration::from_secs(1))
        .max_lifetime_jitter(Duration::from_secs(1))
        .runtime(ExecRuntime::new().handle())
        .build()
        .map(drop)
        .unwrap_err();
    assert!(err.to_string().contains("max_lifetime_jitter"), "{err}");
}
