//! Everyday use against a real redis-server: SET/GET through the pool, reuse, a graceful
//! close that the server sees as one QUIT per connection, on tokio and on an executor of the
//! test's own with gracepool-smol; and the errors a bad URL or bad credentials give.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gracepool_redis::redis::{self, AsyncCommands};
use gracepool_redis::{Manager, Pool};
use gracepool_smol::SmolRuntime;
use gracepool_testkit::redis::RedisServer;
use gracepool_tokio::TokioRuntime;

/// Waits (blocking) until the server counts `n` clients besides the asker, up to 2 s.
fn await_clients(server: &RedisServer, n: usize) -> usize {
    let until = Instant::now() + Duration::from_secs(2);
    loop {
        let now = server.clients();
        if now == n || Instant::now() > until {
            return now;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The everyday round trip, whatever the runtime: two connections, SET/GET on each, reuse,
/// then a graceful close.
async fn set_get_close(pool: &Pool, server: &RedisServer) {
    let mut a = pool.get().await.expect("a connection");
    let mut b = pool.get().await.expect("a second connection");
    let () = a.set("greeting", "hello").await.expect("SET");
    let got: String = b.get("greeting").await.expect("GET");
    assert_eq!(got, "hello");
    let got: Option<String> = redis::cmd("GET")
        .arg("missing")
        .query_async(&mut *a)
        .await
        .expect("GET through query_async");
    assert_eq!(got, None);
    drop((a, b));
    assert_eq!(
        server.clients(),
        2,
        "the server sees the pool's two connections"
    );

    // Reused, not remade: the check on checkout is one PING each.
    let pings = server.command_calls("ping");
    for _ in 0..3 {
        let mut c = pool.get().await.expect("an idle connection");
        let n: i64 = c.incr("counter", 1).await.expect("INCR");
        assert!(n >= 1);
    }
    assert_eq!(server.command_calls("ping"), pings + 3);
    assert_eq!(pool.status().counters.created, 2);

    let report = pool.close().await;
    assert!(report.is_complete(), "{report:?}");
    assert!(!report.fallback);
    assert_eq!(report.counters.created, 2);
    assert_eq!(report.counters.closed_graceful, 2, "{report:?}");
    assert_eq!(
        server.command_calls("quit"),
        2,
        "the server got one QUIT per connection"
    );
    assert_eq!(
        await_clients(server, 0),
        0,
        "no connection left on the server"
    );
    assert!(
        server.log_lines("Client closed connection").is_empty()
            && server.log_lines("Reading from client").is_empty(),
        "every connection left by QUIT, none by closing or resetting its socket:\n{}",
        server.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_set_get_close() {
    let Some(server) = RedisServer::start("tokio_set_get_close") else {
        return;
    };
    let pool: Pool = Pool::builder(Manager::new(server.url()).expect("a valid URL"))
        .max_size(2)
        .runtime(TokioRuntime::current())
        .build()
        .expect("a valid configuration");
    set_get_close(&pool, &server).await;
}

#[tokio::test(flavor = "current_thread")]
async fn tokio_current_thread_set_get_close() {
    let Some(server) = RedisServer::start("tokio_current_thread_set_get_close") else {
        return;
    };
    let pool: Pool = Pool::builder(Manager::new(server.url()).expect("a valid URL"))
        .max_size(2)
        .runtime(TokioRuntime::current())
        .build()
        .expect("a valid configuration");
    set_get_close(&pool, &server).await;
}

#[test]
fn smol_own_executor_set_get_close() {
    let Some(server) = RedisServer::start("smol_own_executor_set_get_close") else {
        return;
    };
    let ex = Arc::new(async_executor::Executor::new());
    let pool: Pool = Pool::builder(Manager::new(server.url()).expect("a valid URL"))
        .max_size(2)
        .runtime(SmolRuntime::from_executor(&ex))
        .build()
        .expect("a valid configuration");
    async_io::block_on(ex.run(set_get_close(&pool, &server)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_the_server_lacks_is_permanent_and_a_stopped_server_is_ridden_out() {
    let test = "a_database_the_server_lacks_is_permanent_and_a_stopped_server_is_ridden_out";
    let Some(mut server) = RedisServer::start(test) else {
        return;
    };
    // Database 99 of a server with 16: permanent.
    let url = format!("redis://127.0.0.1:{}/99", server.port());
    let pool: Pool = Pool::builder(Manager::new(url).expect("a valid URL"))
        .wait_timeout(Duration::from_secs(20))
        .runtime(TokioRuntime::current())
        .build()
        .expect("a valid configuration");
    let started = std::time::Instant::now();
    let err = pool.get().await.map(drop).expect_err("no such database");
    assert!(matches!(err, gracepool::Error::Permanent(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    pool.close().await;

    // The server stopped: connections refused, transient. The caller rides it out and is
    // served once the server is back.
    let pool: Pool = Pool::builder(Manager::new(server.url()).expect("a valid URL"))
        .wait_timeout(Duration::from_millis(300))
        .runtime(TokioRuntime::current())
        .build()
        .expect("a valid configuration");
    server.stop();
    let err = pool.get().await.map(drop).expect_err("the server is down");
    assert!(
        matches!(
            err,
            gracepool::Error::Timeout {
                last_error: Some(_),
                ..
            }
        ),
        "{err:?}"
    );
    server.restart();
    let served = pool.get_timeout(Duration::from_secs(20)).await.map(drop);
    assert!(served.is_ok(), "{served:?}");
    pool.close().await;
}

#[test]
fn a_bad_url_is_an_error_at_once() {
    let err = Manager::new("http://127.0.0.1:6379/").expect_err("not a redis URL");
    assert!(err.to_string().contains("URL"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_fail_get_with_the_reason() {
    let test = "bad_credentials_fail_get_with_the_reason";
    let Some(server) = RedisServer::start_with_password(test, "s3cret") else {
        return;
    };
    let url = server.url().replace("s3cret", "wrong");
    let pool: Pool = Pool::builder(Manager::new(url).expect("a valid URL"))
        .max_size(2)
        .wait_timeout(Duration::from_secs(20))
        .runtime(TokioRuntime::current())
        .build()
        .expect("a valid configuration");
    // Retrying cannot fix a wrong password: every waiting caller is told at once, not at its
    // wait timeout.
    let started = std::time::Instant::now();
    let waiters: Vec<_> = (0..6)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.get().await.map(drop) })
        })
        .collect();
    for waiter in waiters {
        let err = waiter.await.expect("a task").expect_err("refused");
        assert!(matches!(err, gracepool::Error::Permanent(_)), "{err:?}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let err = match pool.get().await {
        Ok(_) => panic!("a wrong password must not give a connection"),
        Err(e) => e,
    };
    assert!(matches!(err, gracepool::Error::Permanent(_)), "{err:?}");
    // The reason (the server refused the password) reaches the caller, as the error or in
    // its sources.
    let mut chain = format!("{err} / {err:?}");
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        chain.push_str(&format!(" / {s}"));
        source = s.source();
    }
    assert!(
        chain.to_lowercase().contains("authentication failed"),
        "{chain}"
    );
    assert_eq!(pool.status().counters.created, 0);
    pool.close().await;
    assert_eq!(await_clients(&server, 0), 0);
}
