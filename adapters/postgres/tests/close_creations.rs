//! A close while the pool is making many connections: each creation under way either finishes
//! within the close deadline and says its goodbye, or is abandoned at the deadline. With the
//! default deadline on a local server they all finish: the server's log shows no session of
//! the pool that ended without the client's Terminate.

mod common;

use std::time::{Duration, Instant};

use common::{manager, tokio_rt, PgServer};
use gracepool_postgres::Pool;
use gracepool_testkit::assert_accounted;
use gracepool_tokio::TokioRuntime;

const SIZE: usize = 32;
/// How long each get holds its connection: well within the close deadline.
const HOLD: Duration = Duration::from_millis(200);

/// Log lines of sessions whose client went away without a Terminate, whatever their stage
/// (before the startup packet the application name is not known yet, so every line of the
/// server counts: the test's pool is its only client besides the kit's psql, which ends
/// cleanly).
fn ended_without_goodbye(pg: &PgServer) -> Vec<String> {
    pg.log()
        .lines()
        .filter(|l| {
            l.contains("unexpected EOF on client connection")
                || l.contains("could not receive data from client")
                || l.contains("incomplete startup packet")
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_close_during_a_cold_start_leaves_no_half_made_session() {
    let Some(pg) = PgServer::start_with_settings(
        "close_creations::a_close_during_a_cold_start_leaves_no_half_made_session",
        &[("log_connections", "on")],
    ) else {
        return;
    };
    let app = "cold_close";
    let rt = tokio_rt();
    let (report, in_flight) = rt.block_on(async {
        let pool: Pool = Pool::builder(manager(&pg, app))
            .max_size(SIZE)
            .runtime(TokioRuntime::current())
            .build()
            .unwrap();
        // Many gets on an empty pool, each holding its connection a while: each makes a
        // connection in its own task, or waits for one the actor makes. Were the guards
        // dropped at once, a few connections could serve every get in turn and the pool
        // would never grow to the size awaited below.
        let gets: Vec<_> = (0..SIZE)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    let conn = pool.get().await?;
                    tokio::time::sleep(HOLD).await;
                    drop(conn);
                    Ok::<(), gracepool_postgres::PoolError>(())
                })
            })
            .collect();
        // Close as soon as creations are under way.
        let until = Instant::now() + Duration::from_secs(30);
        while pool.status().size < SIZE / 2 {
            assert!(
                Instant::now() < until,
                "the pool never grew to {}: {:?}",
                SIZE / 2,
                pool.status()
            );
            tokio::task::yield_now().await;
        }
        let in_flight = pool.status().size - pool.status().counters.created as usize;
        let report = pool.close().await;
        for get in gets {
            let _ = get.await;
        }
        (report, in_flight)
    });
    drop(rt);
    println!("{in_flight} creations under way as the close began; {report:?}");
    assert!(in_flight > 0, "no creation was under way at the close");
    assert!(report.is_complete() && !report.fallback, "{report:?}");
    assert_accounted(&report.counters);
    let created = report.counters.created as usize;
    assert_eq!(
        report.counters.closed_graceful as usize, created,
        "{report:?}"
    );
    assert_eq!(pg.wait_for_backends_of(app, 0, Duration::from_secs(10)), 0);
    let without = ended_without_goodbye(&pg);
    assert!(
        without.is_empty(),
        "{} sessions ended without the client's Terminate:\n{}\n\nlog tail:\n{}",
        without.len(),
        without.join("\n"),
        pg.log_tail(40)
    );
    // Every session the server saw begin was one the pool made and closed.
    assert_eq!(pg.goodbyes(app), created, "{}", pg.log_tail(40));
}
