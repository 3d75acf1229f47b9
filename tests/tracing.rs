//! The `tracing` feature: the pool reports its close, the fallback and manager failures as
//! events to whatever subscriber the application installed (the workspace's test build turns
//! the feature on through the test kit).
#![cfg(feature = "tracing")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use gracepool::{Error, Pool};
use gracepool_testkit::{Counting, ExecRuntime, Fault};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Records (level, target, message) of every event.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<(Level, String, String)>>>);

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut message = Message(String::new());
        event.record(&mut message);
        let meta = event.metadata();
        self.0
            .lock()
            .unwrap()
            .push((*meta.level(), meta.target().to_string(), message.0));
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

impl Recorder {
    fn has(&self, level: Level, text: &str) -> bool {
        self.0
            .lock()
            .unwrap()
            .iter()
            .any(|(l, target, m)| *l == level && target == "gracepool" && m.contains(text))
    }
}

#[test]
fn close_and_failures_are_reported_as_events() {
    let rec = Recorder::default();
    tracing::subscriber::with_default(rec.clone(), || {
        let (m, rt) = (Counting::new(), ExecRuntime::new());
        let pool = Pool::builder(m.clone())
            .fail_fast(true)
            .runtime(rt.handle())
            .build()
            .unwrap();
        rt.block_on(async {
            m.set_create(Fault::Fail);
            assert!(matches!(pool.get().await, Err(Error::Backend(_))));
            m.set_create(Fault::None);
            drop(pool.get().await.unwrap());
            pool.close().await;
        });
    });
    assert!(rec.has(Level::DEBUG, "pool started"));
    assert!(rec.has(Level::WARN, "create failed"));
    assert!(rec.has(Level::DEBUG, "close requested"));
    assert!(rec.has(Level::DEBUG, "pool closed"));
    assert!(!rec.has(Level::DEBUG, "dropped while running"));
}

#[test]
fn a_runtime_teardown_is_reported() {
    let rec = Recorder::default();
    tracing::subscriber::with_default(rec.clone(), || {
        let (m, rt) = (Counting::new(), ExecRuntime::new());
        m.set_close_fails_every(1, false);
        let pool = Pool::builder(m.clone())
            .runtime(rt.handle())
            .build()
            .unwrap();
        rt.block_on(async { drop(pool.get().await.unwrap()) });
        drop(rt);
        let report = pool.close_blocking(Duration::from_millis(10));
        assert!(report.fallback);
        assert_eq!(report.counters.close_failed, 1);
    });
    assert!(rec.has(Level::DEBUG, "dropped while running"));
    assert!(rec.has(Level::WARN, "close failed"));
}

#[test]
fn a_pool_that_follows_its_callers_reports_a_move_not_a_teardown() {
    let rec = Recorder::default();
    tracing::subscriber::with_default(rec.clone(), || {
        let m = Counting::new();
        let pool = Pool::builder(m.clone())
            .runtime(gracepool_tokio::Ambient::new())
            .build()
            .unwrap();
        for _ in 0..2 {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async { drop(pool.get().await.unwrap()) });
        }
        assert_eq!(pool.status().counters.rehomed, 1);
        let report = pool.close_blocking(Duration::from_millis(10));
        assert_eq!(report.counters.closed_moved, 2);
    });
    assert!(rec.has(Level::DEBUG, "started on a caller's runtime"));
    assert!(rec.has(Level::DEBUG, "the pool moves to its next caller's"));
    assert!(!rec.has(Level::DEBUG, "dropped while running"));
}
