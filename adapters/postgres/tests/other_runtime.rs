//! A pool of gracepool-postgres on a runtime that is not tokio (smol): `get()` fails at once
//! with a typed error, `NoTokioRuntime`, and nothing panics or prints. In a child process, whose
//! exit status and stderr are checked.

use std::sync::Arc;

use gracepool_postgres::{Manager, NoTokioRuntime, Pool};
use gracepool_smol::SmolRuntime;
use gracepool_testkit::child::run_child;
use gracepool_testkit::postgres::PgServer;

const CONN: &str = "GRACEPOOL_OTHER_RUNTIME_CONN";

#[test]
fn on_smol_get_fails_with_a_typed_error_and_no_panic() {
    let Some(pg) = PgServer::start("other_runtime::on_smol_get_fails_with_a_typed_error") else {
        return;
    };
    let report = run_child("on_smol", &[(CONN, pg.conn_str("on_smol"))]);
    assert_eq!(report.field("typed"), 1, "{}", report.stdout);
    assert_eq!(report.field("created"), 0, "{}", report.stdout);
    assert_eq!(report.field("complete"), 1, "{}", report.stdout);
}

/// The child: a pool on an executor of smol's, with no tokio runtime anywhere in the process.
#[test]
fn child() {
    let Ok(conn) = std::env::var(CONN) else {
        return;
    };
    let ex = Arc::new(async_executor::Executor::new());
    let pool: Pool = Pool::builder(Manager::from_conn_str(&conn).expect("a connection string"))
        .max_size(2)
        .runtime(SmolRuntime::from_executor(&ex))
        .build()
        .expect("a valid configuration");
    async_io::block_on(ex.run(async {
        let error = pool
            .get()
            .await
            .map(drop)
            .expect_err("no connection outside tokio");
        let typed =
            matches!(&error, gracepool::Error::Permanent(_)) && NoTokioRuntime::found_in(&error);
        let report = pool.close().await;
        println!(
            "created={} typed={} complete={} error={error}",
            report.counters.created,
            u8::from(typed),
            u8::from(report.is_complete())
        );
    }));
}
