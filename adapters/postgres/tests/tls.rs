//! TLS with [`RustlsConnect`] on a real PostgreSQL server started with `ssl = on` and a
//! certificate the test made (the testkit's `PgServer::start_with_tls`): an encrypted session
//! as the server sees it, a graceful close through TLS, a wrong CA and a wrong host name
//! refused with an error that says so, no plaintext when TLS is required, and channel binding
//! that the server accepts. Each test starts its own server (or prints one SKIPPED line).
//!
//! The crate's dev-dependency on itself turns the `rustls` feature on for its tests, so a plain
//! `cargo test --workspace` runs these.
#![cfg(feature = "rustls")]

mod common;

use std::time::{Duration, Instant};

use common::{tokio_rt, PgServer};
use gracepool_postgres::rustls::CertificateError;
use gracepool_postgres::tokio_postgres::Config;
use gracepool_postgres::{Manager, Pool, RustlsConnect, TlsError, Verify};
use gracepool_testkit::assert_accounted;
use gracepool_testkit::postgres::{PASSWORD, PASSWORD_USER, TLS_USER, USER};
use gracepool_tokio::TokioRuntime;

/// How long a `get` that must fail may take: fail-fast hands the first failure over at once.
const FAIL_WITHIN: Duration = Duration::from_secs(5);

const SSL_OF_THIS_SESSION: &str =
    "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

/// A connection string for `user` on `pg` with `host` as the name to verify (the socket always
/// goes to 127.0.0.1, `hostaddr`), and `extra` settings.
fn conn_str(pg: &PgServer, host: &str, user: &str, app: &str, extra: &str) -> Config {
    format!(
        "host={host} hostaddr=127.0.0.1 port={} user={user} dbname=postgres \
         application_name={app} {extra}",
        pg.port()
    )
    .parse()
    .expect("a valid connection string")
}

/// A fail-fast pool on the current runtime: a creation failure reaches `get` at once.
fn tls_pool(config: Config, tls: RustlsConnect, size: usize) -> Pool<RustlsConnect> {
    Pool::builder(Manager::with_tls(config, tls))
        .max_size(size)
        .fail_fast(true)
        .wait_timeout(FAIL_WITHIN)
        .runtime(TokioRuntime::current())
        .build()
        .expect("a valid configuration")
}

fn connector(verify: Verify, root: &std::path::Path) -> RustlsConnect {
    RustlsConnect::from_root_cert_file(verify, root).expect("the testkit's CA file loads")
}

/// Every message of an error's source chain, outermost first.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut all = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        all.push_str("\n  caused by: ");
        all.push_str(&cause.to_string());
        next = cause.source();
    }
    all
}

/// The [`TlsError`] in an error's source chain.
fn tls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a TlsError> {
    let mut next = Some(e);
    while let Some(cause) = next {
        if let Some(tls) = cause.downcast_ref::<TlsError>() {
            return Some(tls);
        }
        next = cause.source();
    }
    None
}

/// What `pool.get()` fails with, within [`FAIL_WITHIN`]; asserts the pool made nothing.
async fn get_fails(pool: &Pool<RustlsConnect>) -> gracepool_postgres::PoolError {
    let start = Instant::now();
    let err = match pool.get().await {
        Ok(conn) => {
            let ssl = conn.query_one(SSL_OF_THIS_SESSION, &[]).await;
            panic!("connected, but must not have: {ssl:?}")
        }
        Err(e) => e,
    };
    assert!(start.elapsed() < FAIL_WITHIN, "{:?}", start.elapsed());
    // Backend with fail-fast; Permanent when the manager judges the failure permanent.
    assert!(
        matches!(
            err,
            gracepool::Error::Backend(_) | gracepool::Error::Permanent(_)
        ),
        "{err:?}"
    );
    err
}

/// No session of `app` began on the server: a session that began (also a plaintext one) logs
/// its end under the application name it gave in its startup message.
fn assert_no_session(pg: &PgServer, app: &str) {
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(pg.disconnections(Some(app)), 0, "{}", pg.log_tail(20));
    assert_eq!(pg.client_backends_of(app), 0);
}

#[test]
fn verify_full_encrypts_and_every_connection_says_goodbye() {
    let Some((pg, files)) =
        PgServer::start_with_tls("tls::verify_full_encrypts_and_every_connection_says_goodbye")
    else {
        return;
    };
    let app = "tls_full";
    let rt = tokio_rt();
    let report = rt.block_on(async {
        let config = conn_str(&pg, "127.0.0.1", USER, app, "sslmode=require");
        let pool = tls_pool(config, connector(Verify::Full, &files.ca_cert), 3);
        let conns = [
            pool.get().await.expect("a TLS connection"),
            pool.get().await.expect("a TLS connection"),
            pool.get().await.expect("a TLS connection"),
        ];
        for conn in &conns {
            // The server's own view of the session.
            let row = conn.query_one(SSL_OF_THIS_SESSION, &[]).await.unwrap();
            assert!(
                row.get::<_, bool>(0),
                "the server sees an encrypted session"
            );
            assert_eq!(row.get::<_, &str>(1), "TLSv1.3");
            let stmt = conn.prepare_cached("SELECT $1::int * 2").await.unwrap();
            assert_eq!(
                conn.query_one(&stmt, &[&21])
                    .await
                    .unwrap()
                    .get::<_, i32>(0),
                42
            );
        }
        assert_eq!(pg.client_backends_of(app), 3);
        drop(conns);
        pool.close().await
    });
    assert!(report.is_complete(), "{report:?}");
    assert_accounted(&report.counters);
    assert_eq!(report.counters.created, 3);
    assert_eq!(report.counters.closed_graceful, report.counters.created);
    // The server saw each session end with the client's Terminate, over TLS.
    assert_eq!(pg.assert_goodbyes(app, 3, 0, 0), 0);

    // The user the server admits over TLS only (hostssl): the pool reaches it.
    let app = "tls_only_user";
    let report = rt.block_on(async {
        let config = conn_str(&pg, "localhost", TLS_USER, app, "sslmode=require");
        let pool = tls_pool(config, connector(Verify::Full, &files.ca_cert), 1);
        let conn = pool.get().await.expect("the TLS-only user over TLS");
        let row = conn.query_one(SSL_OF_THIS_SESSION, &[]).await.unwrap();
        assert!(row.get::<_, bool>(0));
        drop(conn);
        pool.close().await
    });
    assert_eq!(report.counters.created, 1);
    assert_eq!(report.counters.closed_graceful, 1);
    assert_eq!(pg.assert_goodbyes(app, 1, 0, 0), 0);
}

#[test]
fn a_wrong_ca_is_refused_and_says_so() {
    let Some((pg, files)) = PgServer::start_with_tls("tls::a_wrong_ca_is_refused_and_says_so")
    else {
        return;
    };
    let rt = tokio_rt();
    rt.block_on(async {
        for verify in [Verify::Full, Verify::Ca] {
            let app = format!("wrong_ca_{verify:?}");
            let config = conn_str(&pg, "127.0.0.1", USER, &app, "sslmode=require");
            let pool = tls_pool(config, connector(verify, &files.other_ca_cert), 1);
            let err = get_fails(&pool).await;
            let said = chain(&err);
            assert!(said.contains("error performing TLS handshake"), "{said}");
            assert!(
                said.contains("not signed by any of the root certificates given"),
                "{said}"
            );
            assert!(said.contains("UnknownIssuer"), "rustls' own word: {said}");
            let tls = tls_error(&err).expect("a TlsError in the chain");
            assert!(
                matches!(
                    tls.certificate_error(),
                    Some(CertificateError::UnknownIssuer)
                ),
                "{tls:?}"
            );
            let report = pool.close().await;
            assert_eq!(report.counters.created, 0, "{report:?}");
            assert_no_session(&pg, &app);
        }

        // Verify::None does not look at the certificate: the same wrong CA, encrypted anyway.
        let app = "wrong_ca_none";
        let config = conn_str(&pg, "127.0.0.1", USER, app, "sslmode=require");
        let pool = tls_pool(config, connector(Verify::None, &files.other_ca_cert), 1);
        let conn = pool.get().await.expect("no verification, no refusal");
        let row = conn.query_one(SSL_OF_THIS_SESSION, &[]).await.unwrap();
        assert!(row.get::<_, bool>(0));
        drop(conn);
        assert_eq!(pool.close().await.counters.closed_graceful, 1);
    });
}

#[test]
fn verify_full_checks_the_host_name_and_verify_ca_does_not() {
    // The certificate names 127.0.0.1 only; the socket goes to 127.0.0.1 either way.
    let Some((pg, files)) = PgServer::start_with_tls_for(
        "tls::verify_full_checks_the_host_name_and_verify_ca_does_not",
        &["127.0.0.1"],
    ) else {
        return;
    };
    let rt = tokio_rt();
    rt.block_on(async {
        // By the IP address the certificate lists (an IP SAN, checked as an IP address).
        let app = "host_ip";
        let config = conn_str(&pg, "127.0.0.1", USER, app, "sslmode=require");
        let pool = tls_pool(config, connector(Verify::Full, &files.ca_cert), 1);
        drop(pool.get().await.expect("the listed IP address passes"));
        assert_eq!(pool.close().await.counters.closed_graceful, 1);

        // By a name it does not list: refused, and the error says which check failed.
        let app = "host_wrong";
        let config = conn_str(&pg, "localhost", USER, app, "sslmode=require");
        let pool = tls_pool(config, connector(Verify::Full, &files.ca_cert), 1);
        let err = get_fails(&pool).await;
        let said = chain(&err);
        assert!(said.contains("not valid for this host name"), "{said}");
        assert!(said.contains("localhost"), "{said}");
        let tls = tls_error(&err).expect("a TlsError in the chain");
        assert!(
            matches!(
                tls.certificate_error(),
                Some(
                    CertificateError::NotValidForName
                        | CertificateError::NotValidForNameContext { .. }
                )
            ),
            "{tls:?}"
        );
        assert_eq!(pool.close().await.counters.created, 0);
        assert_no_session(&pg, app);

        // verify-ca checks the chain only: the same name passes.
        let app = "host_ca";
        let config = conn_str(&pg, "localhost", USER, app, "sslmode=require");
        let pool = tls_pool(config, connector(Verify::Ca, &files.ca_cert), 1);
        let conn = pool.get().await.expect("verify-ca ignores the name");
        assert!(conn
            .query_one(SSL_OF_THIS_SESSION, &[])
            .await
            .unwrap()
            .get::<_, bool>(0));
        drop(conn);
        assert_eq!(pool.close().await.counters.closed_graceful, 1);
    });
}

#[test]
fn tls_required_never_falls_back_to_plaintext() {
    // A server without TLS (`ssl = off`, the testkit's default).
    let Some(pg) = PgServer::start("tls::tls_required_never_falls_back_to_plaintext") else {
        return;
    };
    let root = tempfile_with_a_ca(&pg);
    let rt = tokio_rt();
    rt.block_on(async {
        for verify in [Verify::None, Verify::Ca, Verify::Full] {
            let app = format!("no_tls_{verify:?}");
            let config = conn_str(&pg, "127.0.0.1", USER, &app, "sslmode=require");
            let pool = tls_pool(config, connector(verify, &root), 1);
            let err = get_fails(&pool).await;
            let said = chain(&err);
            assert!(said.contains("server does not support TLS"), "{said}");
            let report = pool.close().await;
            assert_eq!(report.counters.created, 0, "{report:?}");
            assert_no_session(&pg, &app);
        }
    });
}

/// A CA file for a server that has none: the connector needs roots to be built, and the
/// server never gets as far as showing a certificate.
fn tempfile_with_a_ca(pg: &PgServer) -> std::path::PathBuf {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let path = pg.log_path().with_file_name("unused-ca.crt");
    std::fs::write(&path, cert.pem()).unwrap();
    path
}

#[test]
fn scram_over_tls_binds_the_channel() {
    let Some((pg, files)) = PgServer::start_with_tls("tls::scram_over_tls_binds_the_channel")
    else {
        return;
    };
    let rt = tokio_rt();
    rt.block_on(async {
        // `channel_binding=require`: only SCRAM-SHA-256-PLUS will do, with the hash of the
        // server's certificate; the server refuses the login if the hash is not its own.
        let app = "channel_binding";
        let config = conn_str(
            &pg,
            "127.0.0.1",
            PASSWORD_USER,
            app,
            &format!("password={PASSWORD} sslmode=require channel_binding=require"),
        );
        let pool = tls_pool(config, connector(Verify::Full, &files.ca_cert), 1);
        let conn = pool
            .get()
            .await
            .unwrap_or_else(|e| panic!("channel binding accepted: {}", chain(&e)));
        let row = conn.query_one(SSL_OF_THIS_SESSION, &[]).await.unwrap();
        assert!(row.get::<_, bool>(0));
        drop(conn);
        assert_eq!(pool.close().await.counters.closed_graceful, 1);
    });
}

#[test]
fn sslmode_from_a_connection_string_chooses_the_checks() {
    use gracepool_postgres::ConnectOptions;
    let Some((pg, files)) =
        PgServer::start_with_tls("tls::sslmode_from_a_connection_string_chooses_the_checks")
    else {
        return;
    };
    let rt = tokio_rt();
    let url = |host: &str, mode: &str, root: &std::path::Path, app: &str| {
        format!(
            "postgresql://{USER}@{host}:{}/postgres?sslmode={mode}&sslrootcert={}&application_name={app}",
            pg.port(),
            root.display()
        )
    };
    rt.block_on(async {
        // verify-full and verify-ca with the right root: encrypted sessions.
        for (mode, app) in [("verify-full", "cs_full"), ("verify-ca", "cs_ca")] {
            let manager = ConnectOptions::parse(&url("127.0.0.1", mode, &files.ca_cert, app))
                .unwrap()
                .manager_rustls()
                .unwrap();
            let pool = Pool::builder(manager)
                .fail_fast(true)
                .runtime(TokioRuntime::current())
                .build()
                .unwrap();
            let conn = pool.get().await.expect("a TLS connection");
            let row = conn.query_one(SSL_OF_THIS_SESSION, &[]).await.unwrap();
            assert!(row.get::<_, bool>(0), "{mode}: encrypted");
            drop(conn);
            let report = pool.close().await;
            assert_eq!(report.counters.closed_graceful, 1, "{mode}");
        }
        // The wrong root: refused, and permanent (every waiter told at once, not retried).
        let manager = ConnectOptions::parse(&url(
            "127.0.0.1",
            "verify-full",
            &files.other_ca_cert,
            "cs_wrong",
        ))
        .unwrap()
        .manager_rustls()
        .unwrap();
        let pool = Pool::builder(manager)
            .wait_timeout(Duration::from_secs(20))
            .runtime(TokioRuntime::current())
            .build()
            .unwrap();
        let started = Instant::now();
        let err = get_fails(&pool).await;
        assert!(
            matches!(err, gracepool::Error::Permanent(_)),
            "a certificate that does not verify is permanent: {err:?}"
        );
        assert!(started.elapsed() < FAIL_WITHIN);
        assert!(chain(&err).contains("not signed by"), "{}", chain(&err));
        pool.close().await;
        // A manager without TLS refuses the string outright.
        let refused = ConnectOptions::parse(&url("127.0.0.1", "require", &files.ca_cert, "x"))
            .unwrap()
            .manager()
            .unwrap_err();
        assert!(refused.to_string().contains("needs TLS"), "{refused}");
    });
    assert_no_session(&pg, "cs_wrong");
}
