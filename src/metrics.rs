//! The pool's figures published through the [`metrics`](https://docs.rs/metrics) facade, with
//! the `metrics` feature: whatever exporter the application installed (Prometheus, StatsD,
//! OpenTelemetry…) receives them, each labelled `pool` with the pool's name
//! (`Builder::name`, `"default"` when none is set).
//!
//! | name | kind | what |
//! |---|---|---|
//! | `gracepool_connections` | gauge | connections alive or being created (`Status::size`) |
//! | `gracepool_idle_connections` | gauge | connections in the idle queue |
//! | `gracepool_in_use_connections` | gauge | connections checked out |
//! | `gracepool_max_connections` | gauge | the `max_size` in force |
//! | `gracepool_waiting_callers` | gauge | callers waiting for a connection |
//! | `gracepool_connections_created_total` | counter | connections made |
//! | `gracepool_connections_closed_total` | counter | connections closed, by `reason`: `broken`, `check_failed`, `idle_timeout`, `max_lifetime`, `retained`, `resized`, `surplus`, `moved`, `refreshed`, `pool_closed` |
//! | `gracepool_connections_detached_total` | counter | connections taken out with `Pooled::detach` |
//! | `gracepool_goodbyes_total` | counter | how closed connections ended, by `outcome`: `said` (the peer confirmed the goodbye), `unconfirmed` (started, not confirmed), `unsaid` (closed without one), `failed` (the close failed) |
//! | `gracepool_gets_total` | counter | checkouts that succeeded |
//! | `gracepool_gets_waited_total` | counter | calls to `get` that had to wait, however they ended |
//! | `gracepool_get_timeouts_total` | counter | calls to `get` that timed out |
//! | `gracepool_create_errors_total` | counter | creations that failed, timed out or panicked |
//! | `gracepool_checks_failed_total` | counter | health checks (and before-checkout hooks) that failed |
//! | `gracepool_hooks_failed_total` | counter | hooks that failed, all three kinds |
//! | `gracepool_refreshes_total` | counter | refreshes of the pool |
//! | `gracepool_moves_total` | counter | moves to another runtime (a pool whose runtime follows its callers) |
//! | `gracepool_wait_seconds` | histogram | how long each call to `get` that had to wait waited (on the coarse clock on Linux: whole ticks, see `Counters::wait_total`) |
//! | `gracepool_create_seconds` | histogram | how long each successful `Manager::create` took |
//! | `gracepool_use_seconds` | histogram | how long each connection was checked out, from its checkout (after its check) to its return |
//!
//! When: the histograms at each event; the gauges and counters (the figures of `Status`) at
//! every maintenance tick of the pool's actor, at every `Pool::status()`, and once more when
//! the close finishes, each counter as the running total the pool keeps (`absolute`), so no
//! event is lost between two publications. An uncontended checkout and return pay two reads
//! of the clock and one histogram sample (`gracepool_use_seconds`); without the feature, none
//! of this code exists.
//!
//! The handles are registered with the recorder in force when the pool is built: install the
//! exporter's recorder first (as for any library that uses `metrics`), or build the pool
//! inside `metrics::with_local_recorder`.

use std::fmt;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ::metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};

use crate::status::Status;

/// The label every figure carries.
pub(crate) const POOL_LABEL: &str = "pool";
/// The pool's name when the builder was given none.
pub(crate) const DEFAULT_NAME: &str = "default";

/// The reasons of `gracepool_connections_closed_total`, in the order of [`Handles::closed`].
const CLOSE_REASONS: [&str; 10] = [
    "broken",
    "check_failed",
    "idle_timeout",
    "max_lifetime",
    "retained",
    "resized",
    "surplus",
    "moved",
    "refreshed",
    "pool_closed",
];

/// The outcomes of `gracepool_goodbyes_total`, in the order of [`Handles::goodbyes`].
const OUTCOMES: [&str; 4] = ["said", "unconfirmed", "unsaid", "failed"];

/// Where the ledger publishes: empty until the builder registers the pool's handles.
#[derive(Default)]
pub(crate) struct Publisher(OnceLock<Box<Handles>>);

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Publisher")
            .field(&self.0.get().map(|h| &h.name))
            .finish()
    }
}

/// The pool's handles, each registered once.
struct Handles {
    name: String,
    size: Gauge,
    idle: Gauge,
    in_use: Gauge,
    max: Gauge,
    waiters: Gauge,
    created: Counter,
    closed: [Counter; CLOSE_REASONS.len()],
    detached: Counter,
    goodbyes: [Counter; OUTCOMES.len()],
    gets: Counter,
    gets_waited: Counter,
    timeouts: Counter,
    create_errors: Counter,
    checks_failed: Counter,
    hooks_failed: Counter,
    refreshes: Counter,
    moves: Counter,
    wait: Histogram,
    create: Histogram,
    used: Histogram,
}

impl Publisher {
    /// Registers the pool's handles, named `name`, with the recorder in force. Once.
    pub(crate) fn register(&self, name: Option<&str>) {
        let name = name.unwrap_or(DEFAULT_NAME).to_string();
        let _ = self.0.set(Box::new(Handles::new(name)));
    }

    /// Publishes the gauges and counters of `status`.
    pub(crate) fn publish(&self, status: &Status) {
        if let Some(h) = self.0.get() {
            h.publish(status);
        }
    }

    /// A call to `get` that had to wait stopped waiting after `waited`.
    pub(crate) fn waited(&self, waited: Duration) {
        if let Some(h) = self.0.get() {
            h.wait.record(waited);
        }
    }

    /// A creation that started at `since` ended; only the ones that succeeded are sampled.
    pub(crate) fn created(&self, since: Since, succeeded: bool) {
        if let (Some(h), Some(at), true) = (self.0.get(), since.0, succeeded) {
            h.create.record(at.elapsed());
        }
    }

    /// A connection checked out at `since` came back (or was retired, or detached).
    #[inline]
    pub(crate) fn used(&self, since: Since) {
        if let (Some(h), Some(at)) = (self.0.get(), since.0) {
            h.used.record(at.elapsed());
        }
    }
}

/// When something began, for a histogram; `Since::default()`: it did not (a guard whose
/// check did not pass was never in use).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Since(Option<Instant>);

impl Since {
    #[inline]
    pub(crate) fn now() -> Self {
        Since(Some(Instant::now()))
    }

    /// It begins now.
    #[inline]
    pub(crate) fn start(&mut self) {
        *self = Since::now();
    }
}

impl Handles {
    fn new(name: String) -> Self {
        let n = || name.clone();
        Handles {
            size: gauge!("gracepool_connections", POOL_LABEL => n()),
            idle: gauge!("gracepool_idle_connections", POOL_LABEL => n()),
            in_use: gauge!("gracepool_in_use_connections", POOL_LABEL => n()),
            max: gauge!("gracepool_max_connections", POOL_LABEL => n()),
            waiters: gauge!("gracepool_waiting_callers", POOL_LABEL => n()),
            created: counter!("gracepool_connections_created_total", POOL_LABEL => n()),
            closed: CLOSE_REASONS.map(|reason| {
                counter!("gracepool_connections_closed_total", POOL_LABEL => n(), "reason" => reason)
            }),
            detached: counter!("gracepool_connections_detached_total", POOL_LABEL => n()),
            goodbyes: OUTCOMES.map(|outcome| {
                counter!("gracepool_goodbyes_total", POOL_LABEL => n(), "outcome" => outcome)
            }),
            gets: counter!("gracepool_gets_total", POOL_LABEL => n()),
            gets_waited: counter!("gracepool_gets_waited_total", POOL_LABEL => n()),
            timeouts: counter!("gracepool_get_timeouts_total", POOL_LABEL => n()),
            create_errors: counter!("gracepool_create_errors_total", POOL_LABEL => n()),
            checks_failed: counter!("gracepool_checks_failed_total", POOL_LABEL => n()),
            hooks_failed: counter!("gracepool_hooks_failed_total", POOL_LABEL => n()),
            refreshes: counter!("gracepool_refreshes_total", POOL_LABEL => n()),
            moves: counter!("gracepool_moves_total", POOL_LABEL => n()),
            wait: histogram!("gracepool_wait_seconds", POOL_LABEL => n()),
            create: histogram!("gracepool_create_seconds", POOL_LABEL => n()),
            used: histogram!("gracepool_use_seconds", POOL_LABEL => n()),
            name,
        }
    }

    fn publish(&self, s: &Status) {
        self.size.set(s.size as f64);
        self.idle.set(s.idle as f64);
        self.in_use.set(s.in_use as f64);
        self.max.set(s.max_size as f64);
        self.waiters.set(s.waiters as f64);
        let c = &s.counters;
        self.created.absolute(c.created);
        let closed = [
            c.closed_broken,
            c.check_failed,
            c.closed_idle_timeout,
            c.closed_max_lifetime,
            c.closed_retained,
            c.closed_resized,
            c.closed_surplus,
            c.closed_moved,
            c.closed_refreshed,
            c.closed_by_close(),
        ];
        for (counter, value) in self.closed.iter().zip(closed) {
            counter.absolute(value);
        }
        self.detached.absolute(c.detached);
        let goodbyes = [
            c.closed_graceful,
            c.closed_unconfirmed,
            c.closed_sync.saturating_sub(c.closed_unconfirmed),
            c.close_failed,
        ];
        for (counter, value) in self.goodbyes.iter().zip(goodbyes) {
            counter.absolute(value);
        }
        self.gets.absolute(c.gets);
        self.gets_waited.absolute(c.gets_waited);
        self.timeouts.absolute(c.gets_timed_out);
        self.create_errors.absolute(c.create_failed);
        self.checks_failed.absolute(c.check_failed);
        self.hooks_failed.absolute(c.hook_failed);
        self.refreshes.absolute(c.refreshes);
        self.moves.absolute(c.rehomed);
    }
}
