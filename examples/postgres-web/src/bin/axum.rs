//! An axum service on gracepool-postgres that shuts down cleanly on SIGTERM: axum stops
//! accepting and finishes the requests in flight, then the pool closes, and every PostgreSQL
//! connection says goodbye (Terminate) before the process exits.
//!
//! ```sh
//! DATABASE_URL="host=127.0.0.1 user=app dbname=app" cargo run -p gracepool-postgres-web --bin axum-service
//! curl 'http://127.0.0.1:3000/add?n=41'      # 42
//! curl 'http://127.0.0.1:3000/sleep?ms=300'  # holds a connection for 300 ms
//! curl 'http://127.0.0.1:3000/metrics'       # the pool's figures, Prometheus text format
//! kill -TERM <pid>
//! ```
//!
//! `BIND` chooses the address (default `127.0.0.1:3000`; port 0 picks a free one). The
//! service prints `listening on ADDR` when it serves, and the pool's close report when it is
//! done; errors go to stderr with exit status 1.
//!
//! Its shutdown budget: after SIGTERM, up to `DRAIN_MS` (default 10 000) for the requests in
//! flight to finish — past it, the ones still running (hung on a database that stopped
//! answering, say) are dropped — then up to `CLOSE_MS` (default 10 000) for the pool's close.
//! Twenty seconds in all by default, inside Kubernetes' default grace period of 30 s.
//!
//! `/metrics` serves what the pool publishes with gracepool's `metrics` feature (its gauges,
//! counters and histograms, labelled `pool="postgres"`) in Prometheus' text format, through
//! `metrics-exporter-prometheus`'s recorder; the scrape refreshes the pool's gauges first.

use std::process::ExitCode;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use gracepool_postgres::{Manager, Pool};
use gracepool_tokio::TokioRuntime;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;

#[derive(Deserialize)]
struct Add {
    n: i32,
}

#[derive(Deserialize)]
struct Sleep {
    ms: u32,
}

type Failure = (StatusCode, String);

fn unavailable(e: impl std::fmt::Display) -> Failure {
    (StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

/// `n + 1`, computed by PostgreSQL with a statement prepared once per connection.
async fn add(State(pool): State<Pool>, Query(q): Query<Add>) -> Result<String, Failure> {
    let conn = pool.get().await.map_err(unavailable)?;
    let stmt = conn
        .prepare_cached("SELECT $1::int + 1")
        .await
        .map_err(unavailable)?;
    let row = conn.query_one(&stmt, &[&q.n]).await.map_err(unavailable)?;
    Ok(row.get::<_, i32>(0).to_string())
}

/// Holds a connection for `ms` milliseconds (`pg_sleep` on the server): a request in flight.
async fn sleep(State(pool): State<Pool>, Query(q): Query<Sleep>) -> Result<String, Failure> {
    let conn = pool.get().await.map_err(unavailable)?;
    let seconds = f64::from(q.ms) / 1000.0;
    conn.execute("SELECT pg_sleep($1)", &[&seconds])
        .await
        .map_err(unavailable)?;
    Ok("slept".to_string())
}

// ANCHOR: metrics
/// The Prometheus scrape: the pool's figures as of now (`status()` publishes them), then
/// everything the recorder holds, in the text format.
async fn metrics(State((pool, prometheus)): State<(Pool, PrometheusHandle)>) -> String {
    pool.status();
    prometheus.render()
}

/// The recorder every figure goes to, installed before the pool is built (the pool registers
/// its handles as it is built). The three `_seconds` figures become Prometheus histograms with
/// these buckets (a summary without them). Its upkeep (folding the samples gathered since the
/// last scrape) runs every 5 s, so that a service nobody scrapes does not pile them up.
fn install_prometheus() -> Result<PrometheusHandle, Box<dyn std::error::Error + Send + Sync>> {
    let buckets = [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_string()), &buckets)?
        .install_recorder()?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}
// ANCHOR_END: metrics

/// Resolves on SIGTERM (what a deploy or an orchestrator sends) or Ctrl-C.
async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// A duration in milliseconds from the environment, or the default.
fn millis(name: &str, default: u64) -> Result<Duration, String> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map(Duration::from_millis)
            .map_err(|_| format!("{name}={v:?} is not a number of milliseconds")),
        Err(_) => Ok(Duration::from_millis(default)),
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let url = std::env::var("DATABASE_URL")
        .map_err(|_| "set DATABASE_URL to a PostgreSQL connection string")?;
    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:3000".to_string());
    let drain = millis("DRAIN_MS", 10_000)?;
    let close = millis("CLOSE_MS", 10_000)?;
    let prometheus = install_prometheus()?;
    // ANCHOR: serve_then_close
    let pool: Pool = gracepool::Pool::builder(Manager::from_conn_str(&url)?)
        .name("postgres")
        .max_size(8)
        .runtime(TokioRuntime::current())
        .build()?;
    let app = Router::new()
        .route("/add", get(add))
        .route("/sleep", get(sleep))
        .with_state(pool.clone())
        .route(
            "/metrics",
            get(metrics).with_state((pool.clone(), prometheus)),
        );
    let listener = tokio::net::TcpListener::bind(&bind).await?;
    println!("listening on {}", listener.local_addr()?);
    let (signalled, on_signal) = tokio::sync::oneshot::channel::<()>();
    let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
        terminated().await;
        let _ = signalled.send(());
    });
    // The requests in flight get `drain` to finish after the signal; past it, the ones still
    // running (hung on a database that stopped answering) are dropped with the server.
    tokio::select! {
        served = std::future::IntoFuture::into_future(serve) => served?,
        _ = async {
            if on_signal.await.is_ok() {
                tokio::time::sleep(drain).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => println!("drain budget of {drain:?} ran out: requests still in flight were dropped"),
    }
    // Every request has been answered (or dropped): now every connection says goodbye,
    // within the close budget.
    let report = pool.close_within(close).await;
    // ANCHOR_END: serve_then_close
    let c = report.counters;
    println!(
        "pool closed in {:?}: created={} graceful={} sync={} failed={} still_open={}",
        report.elapsed,
        c.created,
        c.closed_graceful,
        c.closed_sync,
        c.close_failed,
        report.still_open()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
