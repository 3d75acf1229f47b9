//! The `metrics` feature: what a pool publishes through the `metrics` facade, read back from a
//! recording recorder bound to the pool as it is built (`with_local_recorder`), so that each
//! test sees its own pool's figures only.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_lite::future::poll_once;
use gracepool::{Error, Pool, Pooled};
use gracepool_testkit::{until_status, Counting, ExecRuntime, Fault};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::MetricKind;

/// A pool named `name` whose handles are registered with a recorder of its own.
fn recorded_pool(
    name: &str,
    configure: impl FnOnce(gracepool::Builder<Counting>) -> gracepool::Builder<Counting>,
    m: &Counting,
    rt: &ExecRuntime,
) -> (Pool<Counting>, Snapshotter) {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let pool = metrics::with_local_recorder(&recorder, || {
        configure(Pool::builder(m.clone()).name(name).runtime(rt.handle()))
            .build()
            .unwrap()
    });
    (pool, snapshotter)
}

/// What the recorder holds, by `name{label=value,…}` (labels sorted). Reading empties it, as
/// the debugging recorder's snapshots do: counters and gauges read 0 until published again.
fn figures(snapshotter: &Snapshotter) -> BTreeMap<String, DebugValue> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let (kind, key) = key.into_parts();
            let mut labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            let name = format!("{}{{{}}}", key.name(), labels.join(","));
            let kind_ok = match &value {
                DebugValue::Counter(_) => kind == MetricKind::Counter,
                DebugValue::Gauge(_) => kind == MetricKind::Gauge,
                DebugValue::Histogram(_) => kind == MetricKind::Histogram,
            };
            assert!(kind_ok, "{name}: {kind:?} holds {value:?}");
            (name, value)
        })
        .collect()
}

fn gauge(f: &BTreeMap<String, DebugValue>, key: &str) -> f64 {
    match f.get(key) {
        Some(DebugValue::Gauge(v)) => v.into_inner(),
        other => panic!("{key}: {other:?} in {f:#?}"),
    }
}

fn counter(f: &BTreeMap<String, DebugValue>, key: &str) -> u64 {
    match f.get(key) {
        Some(DebugValue::Counter(v)) => *v,
        other => panic!("{key}: {other:?} in {f:#?}"),
    }
}

fn samples(f: &BTreeMap<String, DebugValue>, key: &str) -> Vec<f64> {
    match f.get(key) {
        Some(DebugValue::Histogram(v)) => v.iter().map(|x| x.into_inner()).collect(),
        other => panic!("{key}: {other:?} in {f:#?}"),
    }
}

#[test]
fn gauges_show_the_pool_as_it_is_with_its_name() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let (pool, snap) = recorded_pool("orders", |b| b.max_size(3), &m, &rt);
    rt.block_on(async {
        let a = pool.get().await.unwrap();
        let b = pool.get().await.unwrap();
        let c = pool.get().await.unwrap();
        drop(c);
        let s = pool.status(); // publishes
        assert_eq!((s.size, s.idle, s.in_use, s.waiters), (3, 1, 2, 0));
        let f = figures(&snap);
        assert_eq!(gauge(&f, "gracepool_connections{pool=orders}"), 3.0);
        assert_eq!(gauge(&f, "gracepool_idle_connections{pool=orders}"), 1.0);
        assert_eq!(gauge(&f, "gracepool_in_use_connections{pool=orders}"), 2.0);
        assert_eq!(gauge(&f, "gracepool_max_connections{pool=orders}"), 3.0);
        assert_eq!(gauge(&f, "gracepool_waiting_callers{pool=orders}"), 0.0);

        // Every connection out and one caller waiting.
        let c = pool.get().await.unwrap();
        let mut waiting = Box::pin(pool.get());
        assert!(poll_once(&mut waiting).await.is_none());
        pool.status();
        let f = figures(&snap);
        assert_eq!(gauge(&f, "gracepool_idle_connections{pool=orders}"), 0.0);
        assert_eq!(gauge(&f, "gracepool_in_use_connections{pool=orders}"), 3.0);
        assert_eq!(gauge(&f, "gracepool_waiting_callers{pool=orders}"), 1.0);
        drop(waiting);
        drop((a, b, c));
        pool.close().await;
        // The close publishes the last figures itself.
        let f = figures(&snap);
        assert_eq!(gauge(&f, "gracepool_connections{pool=orders}"), 0.0);
        assert_eq!(gauge(&f, "gracepool_max_connections{pool=orders}"), 3.0);
        assert_eq!(
            counter(&f, "gracepool_goodbyes_total{outcome=said,pool=orders}"),
            3
        );
        assert_eq!(
            counter(
                &f,
                "gracepool_connections_closed_total{pool=orders,reason=pool_closed}"
            ),
            3
        );
    });
    m.assert_balanced();
}

#[test]
fn counters_count_closes_by_reason_timeouts_and_create_errors() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let (pool, snap) = recorded_pool(
        "events",
        |b| {
            b.max_size(2)
                .create_backoff(Duration::from_millis(5), Duration::from_millis(5))
        },
        &m,
        &rt,
    );
    rt.block_on(async {
        // Broken, from the guard.
        Pooled::close(pool.get().await.unwrap());
        until_status(&pool, "closed", |s| s.counters.closed_broken == 1).await;
        // A failed check: the idle one fails, another is made.
        drop(pool.get().await.unwrap());
        m.set_check(Fault::Fail);
        drop(pool.get().await.unwrap());
        m.set_check(Fault::None);
        // Detached.
        let conn = Pooled::detach(pool.get().await.unwrap());
        // A refresh retires the idle one.
        drop(pool.get().await.unwrap());
        assert_eq!(pool.refresh(), 1);
        until_status(&pool, "refreshed", |s| s.counters.closed_refreshed == 1).await;
        // Creations fail: a caller times out, and each failed attempt is a create error.
        let held = pool.get().await.unwrap();
        let other = pool.get().await.unwrap();
        drop(other);
        gracepool::Pooled::close(pool.get().await.unwrap()); // room for one more creation
        until_status(&pool, "room", |s| s.size == 1).await;
        m.set_create(Fault::Fail);
        let r = pool.get_timeout(Duration::from_millis(60)).await.map(drop);
        assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
        m.set_create(Fault::None);
        drop(held);

        // Every goodbye said (the actor says them as it is told of each).
        until_status(&pool, "goodbyes", |s| s.counters.closed_graceful == 4).await;
        let s = pool.status(); // publishes
        let c = s.counters;
        let f = figures(&snap);
        let closed = |reason: &str| {
            counter(
                &f,
                &format!("gracepool_connections_closed_total{{pool=events,reason={reason}}}"),
            )
        };
        assert_eq!(closed("broken"), 2);
        assert_eq!(closed("check_failed"), 1);
        assert_eq!(closed("refreshed"), 1);
        assert_eq!(closed("idle_timeout"), 0);
        assert_eq!(closed("pool_closed"), 0);
        assert_eq!(
            counter(&f, "gracepool_connections_detached_total{pool=events}"),
            1
        );
        assert_eq!(counter(&f, "gracepool_get_timeouts_total{pool=events}"), 1);
        assert_eq!(counter(&f, "gracepool_checks_failed_total{pool=events}"), 1);
        assert_eq!(counter(&f, "gracepool_refreshes_total{pool=events}"), 1);
        let errors = counter(&f, "gracepool_create_errors_total{pool=events}");
        assert!(errors >= 1, "{f:#?}");
        // Each counter is the pool's own running total: between the one it published above
        // and the one it has now (the actor's tick may publish a newer one meanwhile: a
        // creation that was failing as the fault was lifted ends after the snapshot).
        let after = pool.status().counters;
        let between = |published: u64, then: u64, now: u64| {
            assert!(
                (then..=now).contains(&published),
                "{published} outside {then}..={now}"
            )
        };
        between(errors, c.create_failed, after.create_failed);
        between(
            counter(&f, "gracepool_connections_created_total{pool=events}"),
            c.created,
            after.created,
        );
        between(
            counter(&f, "gracepool_gets_total{pool=events}"),
            c.gets,
            after.gets,
        );
        between(
            counter(&f, "gracepool_gets_waited_total{pool=events}"),
            c.gets_waited,
            after.gets_waited,
        );
        let said = counter(&f, "gracepool_goodbyes_total{outcome=said,pool=events}");
        assert_eq!(said, c.closed_graceful);
        // Closed so far: two broken, one failed check, one refreshed; each said goodbye.
        assert_eq!(said, 4, "{c:?}");
        drop(conn);
        pool.close().await;
    });
}

#[test]
fn histograms_get_a_sample_per_wait_creation_and_use() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    m.set_create_delay(Duration::from_millis(20));
    let (pool, snap) = recorded_pool("timed", |b| b.max_size(1), &m, &rt);
    rt.block_on(async {
        // Waits for its connection, made in 20 ms; holds it 30 ms.
        let conn = pool.get().await.unwrap();
        async_io::Timer::after(Duration::from_millis(30)).await;
        drop(conn);
        // Taken idle, given back at once: a use, no wait, no creation.
        drop(pool.get().await.unwrap());
        let f = figures(&snap);
        let waits = samples(&f, "gracepool_wait_seconds{pool=timed}");
        let creates = samples(&f, "gracepool_create_seconds{pool=timed}");
        let uses = samples(&f, "gracepool_use_seconds{pool=timed}");
        assert_eq!(waits.len(), 1, "{f:#?}");
        assert!(waits[0] >= 0.019, "{waits:?}");
        assert_eq!(creates.len(), 1, "{f:#?}");
        assert!(creates[0] >= 0.019, "{creates:?}");
        assert_eq!(uses.len(), 2, "{f:#?}");
        assert!(uses[0] >= 0.029, "{uses:?}");
        assert!(uses[1] < uses[0], "{uses:?}");
        pool.close().await;
    });
    m.assert_balanced();
}

#[test]
fn two_pools_publish_apart_and_an_unnamed_one_is_default() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let (a, b) = metrics::with_local_recorder(&recorder, || {
        let a = Pool::builder(m.clone())
            .name("primary")
            .max_size(4)
            .runtime(rt.handle())
            .build()
            .unwrap();
        let b = Pool::builder(m.clone())
            .max_size(2)
            .runtime(rt.handle())
            .build()
            .unwrap();
        (a, b)
    });
    rt.block_on(async {
        let held = (a.get().await.unwrap(), a.get().await.unwrap());
        a.status();
        b.status();
        let f = figures(&snap);
        assert_eq!(gauge(&f, "gracepool_in_use_connections{pool=primary}"), 2.0);
        assert_eq!(gauge(&f, "gracepool_max_connections{pool=primary}"), 4.0);
        assert_eq!(gauge(&f, "gracepool_in_use_connections{pool=default}"), 0.0);
        assert_eq!(gauge(&f, "gracepool_max_connections{pool=default}"), 2.0);
        drop(held);
        a.close().await;
        b.close().await;
    });
    m.assert_balanced();
}

#[test]
fn idle_connections_given_back_count_as_surplus() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let (pool, snap) = recorded_pool(
        "spare",
        |b| {
            b.max_size(2)
                .surplus_window(Duration::from_millis(40))
                .maintenance_interval(Duration::from_millis(10))
        },
        &m,
        &rt,
    );
    rt.block_on(async {
        // Two connections made together, then nobody needs them.
        drop((pool.get().await.unwrap(), pool.get().await.unwrap()));
        until_status(&pool, "given back", |s| s.counters.closed_surplus == 2).await;
        let c = pool.status().counters;
        let f = figures(&snap);
        let closed = |reason: &str| {
            counter(
                &f,
                &format!("gracepool_connections_closed_total{{pool=spare,reason={reason}}}"),
            )
        };
        assert_eq!(closed("surplus"), 2, "{c:?}");
        assert_eq!(closed("idle_timeout"), 0);
        assert_eq!(closed("broken"), 0);
        pool.close().await;
    });
    m.assert_balanced();
}
