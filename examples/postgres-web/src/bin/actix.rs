//! An actix-web service on gracepool-postgres that shuts down cleanly on SIGTERM: actix-web
//! (which handles SIGTERM itself) stops accepting and finishes the requests in flight, then the
//! pool closes, and every PostgreSQL connection says goodbye (Terminate) before the process
//! exits.
//!
//! ```sh
//! DATABASE_URL="host=127.0.0.1 user=app dbname=app" cargo run -p gracepool-postgres-web --bin actix-service
//! curl 'http://127.0.0.1:3000/add?n=41'      # 42
//! curl 'http://127.0.0.1:3000/sleep?ms=300'  # holds a connection for 300 ms
//! kill -TERM <pid>
//! ```
//!
//! The pool is built in `main`, on the System's arbiter (its actor, and the connections' driver
//! tasks, run there), and cloned into every HTTP worker. `BIND` chooses the address (default
//! `127.0.0.1:3000`; port 0 picks a free one). The service prints `listening on ADDR` when it
//! serves, and the pool's close report when it is done; errors go to stderr with exit status 1.
//!
//! `CONNECTIONS_ON=workers` (the default is `system`) builds the pool with
//! `ActixRuntime::with_caller_arbiters`: each HTTP worker then makes the connections its
//! requests need on its own arbiter, where their driver tasks run. actix-web stops the workers
//! before `server.run().await` returns, so those connections end there, without their
//! goodbye (and a request still in flight on one worker can lose the connection it uses to
//! the other worker's stop); the pool's close still ends each of them exactly once. The
//! PostgreSQL chapter of the guide compares the two, measured.

use std::process::ExitCode;

use actix_web::{web, App, HttpResponse, HttpServer};
use gracepool_actix::ActixRuntime;
use gracepool_postgres::{Manager, Pool};
use serde::Deserialize;

#[derive(Deserialize)]
struct Add {
    n: i32,
}

#[derive(Deserialize)]
struct Sleep {
    ms: u32,
}

fn unavailable(e: impl std::fmt::Display) -> HttpResponse {
    HttpResponse::ServiceUnavailable().body(e.to_string())
}

/// `n + 1`, computed by PostgreSQL with a statement prepared once per connection.
async fn add(pool: web::Data<Pool>, q: web::Query<Add>) -> HttpResponse {
    let conn = match pool.get().await {
        Ok(conn) => conn,
        Err(e) => return unavailable(e),
    };
    let answer = match conn.prepare_cached("SELECT $1::int + 1").await {
        Ok(stmt) => conn.query_one(&stmt, &[&q.n]).await,
        Err(e) => Err(e),
    };
    match answer {
        Ok(row) => HttpResponse::Ok().body(row.get::<_, i32>(0).to_string()),
        Err(e) => unavailable(e),
    }
}

/// Holds a connection for `ms` milliseconds (`pg_sleep` on the server): a request in flight.
async fn sleep(pool: web::Data<Pool>, q: web::Query<Sleep>) -> HttpResponse {
    let conn = match pool.get().await {
        Ok(conn) => conn,
        Err(e) => return unavailable(e),
    };
    let seconds = f64::from(q.ms) / 1000.0;
    match conn.execute("SELECT pg_sleep($1)", &[&seconds]).await {
        Ok(_) => HttpResponse::Ok().body("slept"),
        Err(e) => unavailable(e),
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let url = std::env::var("DATABASE_URL")
        .map_err(|_| "set DATABASE_URL to a PostgreSQL connection string")?;
    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:3000".to_string());
    let runtime = match std::env::var("CONNECTIONS_ON").as_deref() {
        Err(_) | Ok("system") => ActixRuntime::current(),
        Ok("workers") => ActixRuntime::current().with_caller_arbiters(),
        Ok(other) => return Err(format!("CONNECTIONS_ON={other}: say system or workers").into()),
    };
    // ANCHOR: serve_then_close
    // `runtime` is `ActixRuntime::current()`: the System's arbiter (with CONNECTIONS_ON=workers,
    // `ActixRuntime::current().with_caller_arbiters()`).
    let pool: Pool = gracepool::Pool::builder(Manager::from_conn_str(&url)?)
        .max_size(8)
        .runtime(runtime)
        .build()?;
    let data = web::Data::new(pool.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/add", web::get().to(add))
            .route("/sleep", web::get().to(sleep))
    })
    .workers(2)
    .bind(&bind)?;
    for addr in server.addrs() {
        println!("listening on {addr}");
    }
    // Returns once SIGTERM (or Ctrl-C) has stopped the server and its in-flight requests were
    // answered.
    server.run().await?;
    // Now every connection says goodbye.
    let report = pool.close().await;
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

fn main() -> ExitCode {
    match actix_rt::System::new().block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
