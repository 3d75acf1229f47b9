//! What the real-server tests share: a pool on a fresh server, and a load of tasks that run
//! prepared queries through it and record every outcome with its time.
#![allow(dead_code)] // each test file uses its own part of this module

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gracepool::Error;
use gracepool_postgres::{Manager, Pool};
use gracepool_tokio::TokioRuntime;

pub use gracepool_testkit::postgres::PgServer;

/// A multi-thread tokio runtime with both drivers, on two workers (the machine has two cores).
pub fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A manager for `pg`'s trust user, its connections named `app` on the server.
pub fn manager(pg: &PgServer, app: &str) -> Manager {
    Manager::from_conn_str(&pg.conn_str(app)).expect("the testkit's connection string parses")
}

/// A pool of at most `size` connections on the current tokio runtime, defaults otherwise.
pub fn pool(pg: &PgServer, app: &str, size: usize) -> Pool {
    Pool::builder(manager(pg, app))
        .max_size(size)
        .runtime(TokioRuntime::current())
        .build()
        .expect("a valid configuration")
}

/// What one attempt of a load task came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A connection was checked out and the query answered.
    Ok,
    /// `get()` itself failed (not counting the pool being closed).
    GetError(String),
    /// The connection was handed out with its client already closed.
    DeadHandout,
    /// The query failed on a connection that looked alive when handed out.
    QueryError(String),
}

/// Tasks running `SELECT 1` (prepared, cached per connection) through a pool in a loop until
/// stopped or the pool closes.
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<(Instant, Outcome)>>>,
}

impl Load {
    /// Starts `tasks` tasks on the current runtime.
    pub fn start(pool: &Pool, tasks: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..tasks)
            .map(|_| {
                let pool = pool.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    while !stop.load(SeqCst) {
                        let outcome = match pool.get().await {
                            Err(Error::Closed | Error::RuntimeGone) => break,
                            Err(e) => Outcome::GetError(e.to_string()),
                            Ok(conn) if conn.is_closed() => Outcome::DeadHandout,
                            Ok(conn) => {
                                let answer = match conn.prepare_cached("SELECT 1").await {
                                    Ok(stmt) => conn.query_one(&stmt, &[]).await,
                                    Err(e) => Err(e),
                                };
                                match answer {
                                    Ok(row) => {
                                        assert_eq!(row.get::<_, i32>(0), 1);
                                        Outcome::Ok
                                    }
                                    Err(e) => Outcome::QueryError(e.to_string()),
                                }
                            }
                        };
                        seen.push((Instant::now(), outcome));
                    }
                    seen
                })
            })
            .collect();
        Load { stop, tasks }
    }

    /// Stops the tasks (or waits for them to see the pool closed) and returns every outcome,
    /// in time order.
    pub async fn stop(self) -> Vec<(Instant, Outcome)> {
        self.stop.store(true, SeqCst);
        let mut all = Vec::new();
        for task in self.tasks {
            all.extend(task.await.expect("a load task does not panic"));
        }
        all.sort_by_key(|(t, _)| *t);
        all
    }
}

/// Counts outcomes of each kind: (ok, get errors, dead handouts, query errors).
pub fn tally(outcomes: &[(Instant, Outcome)]) -> (usize, usize, usize, usize) {
    let mut t = (0, 0, 0, 0);
    for (_, o) in outcomes {
        match o {
            Outcome::Ok => t.0 += 1,
            Outcome::GetError(_) => t.1 += 1,
            Outcome::DeadHandout => t.2 += 1,
            Outcome::QueryError(_) => t.3 += 1,
        }
    }
    t
}

/// Waits (up to 5 s) until the server has logged `n` disconnections of `app`'s connections:
/// a backend logs its end a moment after the client left.
pub fn wait_for_disconnections(pg: &PgServer, app: &str, n: usize) -> usize {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let seen = pg.disconnections(Some(app));
        if seen >= n || Instant::now() > until {
            return seen;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
