//! The demo's report: what the backend saw, what the pool counted, what reached stderr.

use std::time::Duration;

use gracepool_demo::backend::BackendStats;

use crate::args::{Ending, PoolKind};

/// One restart, as measured.
#[derive(Debug, Default)]
pub struct Restart {
    pub index: u32,
    pub ending: Ending,
    pub in_flight: u64,
    /// What the backend saw during the restart.
    pub backend: BackendStats,
    /// Open on the server side once the runtime was gone, the pool handle still held.
    pub held_after_teardown: u64,
    /// Open on the server side once the worker had dropped its pool too, its process alive.
    pub leaked: u64,
    pub pool_created: u64,
    pub pool_graceful: u64,
    /// Closed without a goodbye: gracepool's sync fallback (and failed closes), or a peer
    /// dropping the connection.
    pub pool_sync: u64,
    pub close_time: Option<Duration>,
    pub stderr_bytes: usize,
    pub panics: usize,
    pub first_stderr_line: Option<String>,
    pub exit: String,
    pub errors: Vec<String>,
}

impl Restart {
    /// gracepool's promise, checked against the backend: every connection closed exactly once,
    /// gracefully when the pool was closed, nothing left open, nothing on stderr.
    fn kept(&self) -> bool {
        let b = &self.backend;
        self.errors.is_empty()
            && self.exit == "0"
            && self.stderr_bytes == 0
            && self.held_after_teardown == 0
            && self.leaked == 0
            && b.open() == 0
            // A creation abandoned half-way (its future dropped by the teardown after the
            // connect) was never the pool's: it ends abruptly when dropped, uncounted by the pool.
            && b.accepted >= self.pool_created
            && b.goodbye == self.pool_graceful
            && b.abrupt == self.pool_sync + (b.accepted - self.pool_created)
            && (self.ending == Ending::Teardown || b.abrupt == 0)
    }
}

#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Restart>,
}

impl Table {
    pub fn push(&mut self, r: Restart) {
        self.rows.push(r);
    }

    pub fn promise_kept(&self) -> bool {
        self.rows.iter().all(Restart::kept)
    }

    pub fn print(&self, pool: PoolKind) {
        println!("{:19}| {:<39}| {:<24}| worker", "", "backend", "pool");
        println!(
            "{:<8} {:<9} | {:>6} {:>7} {:>6} {:>9} {:>6} | {:>7} {:>8} {:>6} | {:>6} {:>6} {:>4} {:>10}",
            "restart",
            "ending",
            "opened",
            "goodbye",
            "abrupt",
            "held open",
            "leaked",
            "created",
            "graceful",
            "sync",
            "stderr",
            "panics",
            "exit",
            "close time"
        );
        let mut total = Restart::default();
        let mut close_total = Duration::ZERO;
        for r in &self.rows {
            self.row(&r.index.to_string(), r);
            total.backend.accepted += r.backend.accepted;
            total.backend.goodbye += r.backend.goodbye;
            total.backend.abrupt += r.backend.abrupt;
            total.held_after_teardown += r.held_after_teardown;
            total.leaked += r.leaked;
            total.pool_created += r.pool_created;
            total.pool_graceful += r.pool_graceful;
            total.pool_sync += r.pool_sync;
            total.stderr_bytes += r.stderr_bytes;
            total.panics += r.panics;
            close_total += r.close_time.unwrap_or_default();
        }
        total.close_time = Some(close_total);
        total.exit = if self.rows.iter().all(|r| r.exit == "0") {
            "0".into()
        } else {
            "!".into()
        };
        self.row("total", &total);
        println!();
        println!("  opened, goodbye, abrupt: connections the backend accepted, and how they ended");
        println!("  held open: still open on the backend once the runtime was gone, the pool handle still held");
        println!("  leaked: still open once the worker had dropped the pool too (its process still alive)");
        println!(
            "  created, graceful, sync: the pool's own count (sync: closed without a goodbye)"
        );
        println!("  stderr: bytes the worker process wrote to stderr; close time: teardown or close, then dropping the pool");
        println!();

        for r in &self.rows {
            for e in &r.errors {
                println!("restart {}: error: {e}", r.index);
            }
            if let Some(line) = &r.first_stderr_line {
                println!("restart {}: stderr: {line}", r.index);
            }
        }
        let b = &total.backend;
        match pool {
            PoolKind::Gracepool if self.promise_kept() => println!(
                "gracepool kept its promise: the backend saw all {} connections closed, {} with a goodbye \
                 (graceful close through the pool actor) and {} by the sync fallback after the runtime was gone; \
                 none left open, {} bytes on stderr.",
                b.accepted, b.goodbye, b.abrupt, total.stderr_bytes
            ),
            PoolKind::Gracepool => println!(
                "gracepool BROKE its promise in this run (see the rows and errors above): please report it."
            ),
            peer => println!(
                "{}: the backend saw {} connections: {} ended with a goodbye, {} abruptly; {} were still open \
                 after the runtime was gone (pool handle held), {} leaked after the pool was dropped; \
                 {} bytes on stderr, {} panics.",
                peer.name(),
                b.accepted,
                b.goodbye,
                b.abrupt,
                total.held_after_teardown,
                total.leaked,
                total.stderr_bytes,
                total.panics
            ),
        }
    }

    fn row(&self, label: &str, r: &Restart) {
        let ending = match r.ending {
            Ending::Teardown if label == "total" => "",
            Ending::Teardown => "teardown",
            Ending::Close => "close",
        };
        let close_time = r.close_time.map_or("-".to_string(), |d| {
            format!("{:.1} ms", d.as_secs_f64() * 1e3)
        });
        println!(
            "{:<8} {:<9} | {:>6} {:>7} {:>6} {:>9} {:>6} | {:>7} {:>8} {:>6} | {:>6} {:>6} {:>4} {:>10}",
            label,
            ending,
            r.backend.accepted,
            r.backend.goodbye,
            r.backend.abrupt,
            r.held_after_teardown,
            r.leaked,
            r.pool_created,
            r.pool_graceful,
            r.pool_sync,
            format!("{} B", r.stderr_bytes),
            r.panics,
            r.exit,
            close_time
        );
    }
}
