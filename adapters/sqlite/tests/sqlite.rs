//! gracepool-sqlite on real database files in temporary directories, each scenario on tokio
//! and on smol: concurrent writers under `busy_timeout`, a graceful close that checkpoints the
//! write-ahead log, a close during a long call, a transaction left open, and the typed errors
//! of a missing directory and a read-only file.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gracepool::Runtime;
use gracepool_sqlite::{Config, Error, InteractError, Manager, ManagerError, Pool};
use gracepool_testkit::assert_accounted;
use rusqlite::TransactionBehavior;

use common::{on_both, temp_dir, wal_len, within_soon, SOON};

const WRITERS: usize = 8;
const WRITES: usize = 200;

fn pool(config: Config, rt: Arc<dyn Runtime>, size: usize) -> Pool {
    Pool::builder(Manager::new(config))
        .max_size(size)
        .runtime_arc(rt)
        .build()
        .expect("a valid configuration")
}

fn rows(db: &Path) -> i64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap()
}

/// The documented load: 8 writers on 8 connections, 200 writes each (half of them autocommit
/// inserts, half `BEGIN IMMEDIATE` transactions of two inserts), with readers alongside: no
/// error at all reaches a caller, `database is locked` least of all. Then a graceful close
/// leaves no `-wal` file (or an empty one): the log is checkpointed.
#[test]
fn concurrent_writers_wait_for_the_lock_and_close_checkpoints_the_wal() {
    on_both(|rt, name| async move {
        let dir = temp_dir();
        let db = dir.path().join("writers.db");
        let pool = pool(Config::new(&db), rt.clone(), WRITERS);
        let mut conn = pool.get().await.unwrap();
        conn.interact(|c: &mut rusqlite::Connection| {
            c.execute_batch("CREATE TABLE t (writer INTEGER, n INTEGER)")
        })
        .await
        .unwrap()
        .unwrap();
        let mode: String = conn
            .interact(|c: &mut rusqlite::Connection| {
                c.query_row("PRAGMA journal_mode", [], |r| r.get(0))
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(mode, "wal");
        drop(conn);

        let (done, results) = async_channel::unbounded::<Result<usize, String>>();
        for writer in 0..WRITERS {
            let (pool, done) = (pool.clone(), done.clone());
            rt.spawn(Box::pin(async move {
                let _ = done.send(write(&pool, writer).await).await;
            }))
            .unwrap();
        }
        for _ in 0..2 {
            let (pool, done) = (pool.clone(), done.clone());
            rt.spawn(Box::pin(async move {
                let _ = done.send(read(&pool).await).await;
            }))
            .unwrap();
        }
        drop(done);
        let mut written = 0;
        while let Ok(result) = within_soon(results.recv(), "the writers finish").await {
            written += result.unwrap_or_else(|e| panic!("{name}: a caller saw an error: {e}"));
        }
        assert_eq!(written, WRITERS * WRITES * 3 / 2);

        let threads = pool.manager().threads();
        let report = pool.close().await;
        assert_accounted(&report.counters);
        assert_eq!(
            report.counters.closed_graceful, report.counters.created,
            "{name}: {report:?}"
        );
        assert!(threads.wait_closed(SOON));
        let s = threads.stats();
        assert_eq!((s.opened, s.closed, s.closed_late), (s.opened, s.opened, 0));
        assert!(
            matches!(wal_len(&db), None | Some(0)),
            "{name}: the WAL is checkpointed: {:?}",
            wal_len(&db)
        );
        assert_eq!(rows(&db), written as i64);
    });
}

/// Half autocommit inserts, half two-insert `BEGIN IMMEDIATE` transactions; returns the rows
/// written, or the first error's message.
async fn write(pool: &Pool, writer: usize) -> Result<usize, String> {
    let mut written = 0;
    for n in 0..WRITES {
        let mut conn = pool.get().await.map_err(|e| e.to_string())?;
        let rows = conn
            .interact(move |c: &mut rusqlite::Connection| {
                if n % 2 == 0 {
                    c.execute("INSERT INTO t VALUES (?1, ?2)", (writer as i64, n as i64))
                } else {
                    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    tx.execute("INSERT INTO t VALUES (?1, ?2)", (writer as i64, n as i64))?;
                    tx.execute("INSERT INTO t VALUES (?1, ?2)", (writer as i64, n as i64))?;
                    tx.commit()?;
                    Ok(2)
                }
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        written += rows;
    }
    Ok(written)
}

async fn read(pool: &Pool) -> Result<usize, String> {
    for _ in 0..WRITES {
        let mut conn = pool.get().await.map_err(|e| e.to_string())?;
        conn.interact(|c: &mut rusqlite::Connection| {
            c.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    }
    Ok(0)
}

/// A call that runs long while the pool closes: the close returns by its deadline with the
/// connection still out; the caller gives up on the call; the call runs to its end on its
/// thread, which then closes the connection, counted as a late close. Nothing is lost.
#[test]
fn a_close_during_a_long_call_is_bounded_and_the_thread_closes_later() {
    on_both(|rt, name| async move {
        let dir = temp_dir();
        let db = dir.path().join("long.db");
        let pool = pool(Config::new(&db), rt, 2);
        let threads = pool.manager().threads();
        let mut conn = pool.get().await.unwrap();
        conn.interact(|c: &mut rusqlite::Connection| c.execute_batch("CREATE TABLE t (n)"))
            .await
            .unwrap()
            .unwrap();
        let (started_tx, started) = async_channel::bounded::<()>(1);
        let (release, hung) = std::sync::mpsc::channel::<()>();
        let long = conn.interact(move |c: &mut rusqlite::Connection| {
            let _ = started_tx.try_send(());
            // A long statement: it ends when the test says so; its caller will not wait.
            let _ = hung.recv();
            c.execute("INSERT INTO t VALUES (1)", [])
        });
        let closer = async {
            started.recv().await.unwrap();
            pool.close_within(Duration::from_millis(50)).await
        };
        let report = futures_lite::future::or(
            async {
                let _ = long.await;
                None
            },
            async { Some(closer.await) },
        )
        .await
        .expect("the close returned before the long call ended");
        assert_eq!(report.checked_out, 1, "{name}: {report:?}");
        assert!(conn.is_busy(), "{name}: the call is still running");
        // The caller's guard goes: the pool is closed, the thread is busy, so "close" waits
        // behind the call, which then ends.
        drop(conn);
        release.send(()).unwrap();
        assert!(threads.wait_closed(SOON), "{name}: {threads:?}");
        let s = threads.stats();
        assert_eq!(
            (s.opened, s.closed, s.closed_late),
            (1, 1, 1),
            "{name}: {s:?}"
        );
        assert_accounted(&pool.status().counters);
        assert_eq!(rows(&db), 1, "{name}: the call ran to its end");
        assert!(matches!(wal_len(&db), None | Some(0)), "{name}");
    });
}

/// A call that leaves a transaction open: the connection is closed as it comes back (which
/// rolls the transaction back), never handed to the next caller.
#[test]
fn a_transaction_left_open_retires_the_connection() {
    on_both(|rt, name| async move {
        let dir = temp_dir();
        let db = dir.path().join("tx.db");
        let pool = pool(Config::new(&db), rt, 1);
        let mut conn = pool.get().await.unwrap();
        conn.interact(|c: &mut rusqlite::Connection| {
            c.execute_batch("CREATE TABLE t (n); BEGIN; INSERT INTO t VALUES (1)")
        })
        .await
        .unwrap()
        .unwrap();
        assert!(!conn.is_fit(), "{name}");
        drop(conn);
        let mut conn = pool.get().await.unwrap();
        let (n, autocommit) = conn
            .interact(|c: &mut rusqlite::Connection| {
                let n: i64 = c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?;
                Ok::<_, rusqlite::Error>((n, c.is_autocommit()))
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (n, autocommit),
            (0, true),
            "{name}: rolled back, a fresh connection"
        );
        drop(conn);
        let report = pool.close().await;
        assert_eq!(report.counters.created, 2, "{name}: {report:?}");
        assert_eq!(report.counters.closed_broken, 1, "{name}: {report:?}");
    });
}

/// A panic inside a call is contained; the connection is retired.
#[test]
fn a_panicking_call_is_contained() {
    on_both(|rt, name| async move {
        let dir = temp_dir();
        let pool = pool(Config::new(dir.path().join("panic.db")), rt, 1);
        let mut conn = pool.get().await.unwrap();
        let err = conn
            .interact(|_: &mut rusqlite::Connection| -> i64 { panic!("planted panic") })
            .await
            .unwrap_err();
        assert!(matches!(err, InteractError::Panicked(_)), "{name}: {err}");
        drop(conn);
        let report = pool.close().await;
        assert_eq!(report.counters.closed_broken, 1, "{name}: {report:?}");
        assert_eq!(pool.manager().stats().panicked, 1);
    });
}

/// The error a `get` saw, down to this crate's [`Error`].
fn sqlite_error(e: &gracepool::Error<ManagerError>) -> &Error {
    let inner = match e {
        gracepool::Error::Permanent(inner) => &**inner,
        gracepool::Error::Backend(inner) => inner,
        other => panic!("not a manager error: {other:?}"),
    };
    match inner {
        gracepool_blocking::Error::Backend(e) => e,
        other => panic!("not SQLite's error: {other:?}"),
    }
}

#[test]
fn a_missing_directory_is_a_clear_permanent_error() {
    on_both(|rt, name| async move {
        let dir = temp_dir();
        let db = dir.path().join("no-such-dir").join("app.db");
        let pool = Pool::builder(Manager::new(Config::new(&db)))
            .max_size(2)
            .wait_timeout(SOON)
            .runtime_arc(rt)
            .build()
            .unwrap();
        let err = within_soon(pool.get(), "a permanent error comes at once")
            .await
            .unwrap_err();
        let sqlite = sqlite_error(&err);
        assert!(
            matches!(sqlite, Error::MissingDirectory { path } if path == &db),
            "{name}: {sqlite:?}"
        );
        assert!(sqlite.is_permanent());
        assert!(
            err.to_string().contains("directory does not exist"),
            "{name}: {err}"
        );
        pool.close().await;
    });
}

/// A database file this process can only read. As root, whom file modes do not stop, the
/// scenario runs in a child process as the unprivileged user `nobody` (65534).
#[test]
fn a_read_only_file_is_a_clear_permanent_error() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::process::CommandExt;
    let dir = temp_dir();
    let db = dir.path().join("ro.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        // A rollback journal: a reader needs no `-shm` file it could not create.
        .execute_batch("CREATE TABLE t (n)")
        .unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o444)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1)
        == 0;
    if !root {
        read_only_scenario(&db);
        return;
    }
    // A copy of this test binary in the temporary directory, which `nobody` can reach
    // wherever the checkout lies.
    let bin = dir.path().join("sqlite-test");
    std::fs::copy(std::env::current_exe().unwrap(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = std::process::Command::new(&bin)
        .args([
            "--exact",
            "read_only_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("GRACEPOOL_SQLITE_RO", &db)
        .uid(65534)
        .gid(65534)
        .output()
        .expect("the test binary runs as nobody");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stderr.is_empty(), "{stderr}");
    assert!(stdout.contains("read-only scenario passed"), "{stdout}");
}

/// The read-only scenario as `nobody`: does nothing unless started by the test above.
#[test]
fn read_only_child() {
    if let Some(db) = std::env::var_os("GRACEPOOL_SQLITE_RO") {
        read_only_scenario(Path::new(&db));
        println!("read-only scenario passed");
    }
}

fn read_only_scenario(db: &Path) {
    let db = db.to_owned();
    on_both(move |rt, name| {
        let db = db.clone();
        async move {
            let pool = Pool::builder(Manager::new(Config::new(&db)))
                .max_size(2)
                .wait_timeout(SOON)
                .runtime_arc(rt.clone())
                .build()
                .unwrap();
            let err = within_soon(pool.get(), "a permanent error comes at once")
                .await
                .unwrap_err();
            let sqlite = sqlite_error(&err);
            assert!(
                matches!(sqlite, Error::ReadOnly { path } if path == &db),
                "{name}: {sqlite:?}"
            );
            assert!(sqlite.is_permanent());
            assert!(
                err.to_string().contains("only for reading"),
                "{name}: {err}"
            );
            pool.close().await;

            // Asked to read only, the same file serves.
            let readers = Pool::builder(Manager::new(
                Config::new(&db).flags(rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY),
            ))
            .runtime_arc(rt)
            .build()
            .unwrap();
            let mut conn = readers.get().await.unwrap();
            let n: i64 = conn
                .interact(|c: &mut rusqlite::Connection| {
                    c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                })
                .await
                .unwrap()
                .unwrap();
            assert_eq!(n, 0);
            drop(conn);
            let report = readers.close().await;
            assert_eq!(
                report.counters.closed_graceful, report.counters.created,
                "{name}: {report:?}"
            );
        }
    });
}

/// On actix (an arbiter's tokio runtime): calls, goodbyes, and a checkpointed WAL at the end.
#[test]
fn works_on_actix() {
    let dir = temp_dir();
    let db = dir.path().join("actix.db");
    actix_rt::System::new().block_on(async {
        let pool = Pool::builder(Manager::new(Config::new(&db)))
            .max_size(2)
            .runtime(gracepool_actix::ActixRuntime::current())
            .build()
            .unwrap();
        let mut conn = pool.get().await.unwrap();
        let n: i64 = conn
            .interact(|c: &mut rusqlite::Connection| {
                c.execute_batch("CREATE TABLE t (n); INSERT INTO t VALUES (1), (2)")?;
                c.query_row("SELECT sum(n) FROM t", [], |r| r.get(0))
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 3);
        drop(conn);
        let report = pool.close().await;
        assert_eq!(report.counters.closed_graceful, report.counters.created);
        assert!(pool.manager().threads().wait_closed(SOON));
    });
    assert!(matches!(wal_len(&db), None | Some(0)));
    assert_eq!(rows(&db), 2);
}
