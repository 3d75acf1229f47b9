//! The builder's settings from a configuration file or the environment (feature `serde`, on in
//! the test kit): read, applied, and checked exactly as the builder checks them.

use std::collections::HashMap;
use std::time::Duration;

use gracepool::{ConfigError, Error, Limit, Pool, PoolConfig};
use gracepool_testkit::{Counting, ExecRuntime};

#[test]
fn a_file_sets_every_knob_and_the_pool_uses_it() {
    let text = r#"{
        "max_size": 3,
        "min_idle": 1,
        "wait_timeout": "150ms",
        "create_timeout": 2,
        "check_timeout": 0.5,
        "shutdown_timeout": "1s",
        "idle_timeout": "off",
        "max_lifetime": false,
        "close_deadline": "2s",
        "maintenance_interval": "50ms",
        "check_on_checkout": false,
        "backoff_first": "5ms",
        "backoff_longest": "200ms",
        "fail_fast": true,
        "max_creating": 2,
        "prewarm_window": "0s",
        "server_full_backoff": "3s",
        "surplus_window": "off",
        "name": "primary"
    }"#;
    let config: PoolConfig = serde_json::from_str(text).unwrap();
    assert_eq!(config.max_size, Some(3));
    assert_eq!(config.idle_timeout, Some(Limit::Off));
    assert_eq!(config.max_creating, Some(2));
    assert_eq!(config.prewarm_window, Some(Duration::ZERO));
    assert_eq!(config.server_full_backoff, Some(Duration::from_secs(3)));
    assert_eq!(config.surplus_window, Some(Limit::Off));
    assert_eq!(config.name.as_deref(), Some("primary"));
    // The name reaches the builder (the `pool` label of what the pool publishes).
    let builder = Pool::builder(Counting::new()).config(&config);
    assert!(
        format!("{builder:?}").contains(r#"name: Some("primary")"#),
        "{builder:?}"
    );
    assert_eq!(
        config.check_timeout,
        Some(Limit::After(Duration::from_millis(500)))
    );
    // Written out and read back, it is the same.
    let again: PoolConfig = serde_json::from_str(&serde_json::to_string(&config).unwrap()).unwrap();
    assert_eq!(again, config);

    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let pool = Pool::builder(m.clone())
        .config(&config)
        .runtime(rt.handle())
        .build()
        .unwrap();
    rt.block_on(async {
        let held: Vec<_> = futures_lite::future::zip(
            futures_lite::future::zip(pool.get(), pool.get()),
            pool.get(),
        )
        .await
        .into_flat();
        assert_eq!(pool.status().max_size, 3);
        // max_size 3 and a 150 ms wait timeout, from the file.
        let started = std::time::Instant::now();
        assert!(matches!(
            pool.get().await.map(drop),
            Err(Error::Timeout { .. })
        ));
        // The file's 150 ms, not the default 30 s.
        assert!(started.elapsed() < Duration::from_secs(10));
        drop(held);
        pool.close().await;
    });
    m.assert_balanced();
}

trait Flat {
    fn into_flat(self) -> Vec<gracepool::Pooled<Counting>>;
}

impl<E: std::fmt::Debug> Flat
    for (
        (
            Result<gracepool::Pooled<Counting>, E>,
            Result<gracepool::Pooled<Counting>, E>,
        ),
        Result<gracepool::Pooled<Counting>, E>,
    )
{
    fn into_flat(self) -> Vec<gracepool::Pooled<Counting>> {
        let ((a, b), c) = self;
        vec![a.unwrap(), b.unwrap(), c.unwrap()]
    }
}

#[test]
fn bad_settings_are_typed_errors_not_panics() {
    // Unknown fields and unreadable values: errors from the format.
    assert!(serde_json::from_str::<PoolConfig>(r#"{ "max_sise": 3 }"#).is_err());
    for bad in [r#""10 days""#, r#""fast""#, "-1", "true"] {
        let text = format!(r#"{{ "wait_timeout": {bad} }}"#);
        assert!(
            serde_json::from_str::<PoolConfig>(&text).is_err(),
            "{text} was accepted"
        );
    }
    assert!(serde_json::from_str::<PoolConfig>(r#"{ "close_deadline": "off" }"#).is_err());
    // Readable but invalid: the builder's own typed errors, at build.
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let config: PoolConfig = serde_json::from_str(r#"{ "max_size": 2, "min_idle": 3 }"#).unwrap();
    let err = Pool::builder(m.clone())
        .config(&config)
        .runtime(rt.handle())
        .build()
        .unwrap_err();
    assert!(matches!(
        err,
        Error::Config(ConfigError::MinIdleAboveMax {
            min_idle: 3,
            max_size: 2
        })
    ));
    let config: PoolConfig =
        serde_json::from_str(r#"{ "backoff_first": "2s", "backoff_longest": "1s" }"#).unwrap();
    let err = Pool::builder(m)
        .config(&config)
        .runtime(rt.handle())
        .build()
        .unwrap_err();
    assert!(matches!(
        err,
        Error::Config(ConfigError::BackoffFirstAboveMax { .. })
    ));
}

#[test]
fn the_environment_sets_knobs_by_name() {
    let env: HashMap<&str, &str> = [
        ("APP_POOL_MAX_SIZE", "7"),
        ("APP_POOL_WAIT_TIMEOUT", "2s"),
        ("APP_POOL_IDLE_TIMEOUT", "off"),
        ("APP_POOL_FAIL_FAST", "yes"),
        ("APP_POOL_SURPLUS_WINDOW", "10s"),
        ("APP_POOL_MAX_CREATING", "4"),
        ("APP_POOL_NAME", "orders"),
        ("OTHER_MAX_SIZE", "99"),
    ]
    .into_iter()
    .collect();
    let lookup = |name: &str| env.get(name).map(|v| v.to_string());
    let config = PoolConfig::from_lookup("APP_POOL_", lookup).unwrap();
    assert_eq!(config.max_size, Some(7));
    assert_eq!(
        config.wait_timeout,
        Some(Limit::After(Duration::from_secs(2)))
    );
    assert_eq!(config.idle_timeout, Some(Limit::Off));
    assert_eq!(config.fail_fast, Some(true));
    assert_eq!(
        config.surplus_window,
        Some(Limit::After(Duration::from_secs(10)))
    );
    assert_eq!(config.max_creating, Some(4));
    assert_eq!(config.name.as_deref(), Some("orders"));
    assert_eq!(config.min_idle, None, "unset keeps the builder's default");
    let bad = |name: &str| (name == "APP_POOL_MAX_SIZE").then(|| "lots".to_string());
    let err = PoolConfig::from_lookup("APP_POOL_", bad).unwrap_err();
    assert_eq!(err.setting, "APP_POOL_MAX_SIZE");
    assert!(err.to_string().contains("not a whole number"), "{err}");
}
