//! axum-service's `/metrics` against a real PostgreSQL server: after a few requests, the
//! Prometheus text format shows the pool's gauges, counters and histograms labelled with its
//! name, with the figures of what the requests did; then SIGTERM still closes the pool cleanly.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use gracepool_testkit::postgres::PgServer;

/// One HTTP/1.1 GET; returns the status code and the body.
fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("the service accepts");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("an answer");
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of the sample line `series` (name and labels exactly as rendered).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

/// Kills the service if the test fails before its SIGTERM.
struct KillOnPanic(u32);

impl Drop for KillOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .status();
        }
    }
}

#[test]
fn axum_serves_the_pools_figures_in_prometheus_text_format() {
    let Some(pg) =
        PgServer::start("metrics::axum_serves_the_pools_figures_in_prometheus_text_format")
    else {
        return;
    };
    let app = "metrics";
    let mut service = Command::new(env!("CARGO_BIN_EXE_axum-service"))
        .env("DATABASE_URL", pg.conn_str(app))
        .env("BIND", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _reaper = KillOnPanic(service.id());
    let mut stdout = BufReader::new(service.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("the service did not start: {line:?}"))
        .to_string();

    // Before any request: the pool is there, empty, with its size limit.
    let (status, text) = http_get(&addr, "/metrics");
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        sample(&text, r#"gracepool_max_connections{pool="postgres"}"#),
        8.0
    );
    assert_eq!(
        sample(&text, r#"gracepool_connections{pool="postgres"}"#),
        0.0
    );

    // Ten requests, one after another: one connection, made once, checked out ten times.
    for n in 0..10 {
        assert_eq!(
            http_get(&addr, &format!("/add?n={n}")),
            (200, (n + 1).to_string())
        );
    }
    let (status, text) = http_get(&addr, "/metrics");
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        sample(&text, r#"gracepool_connections{pool="postgres"}"#),
        1.0
    );
    assert_eq!(
        sample(&text, r#"gracepool_idle_connections{pool="postgres"}"#),
        1.0
    );
    assert_eq!(
        sample(&text, r#"gracepool_in_use_connections{pool="postgres"}"#),
        0.0
    );
    assert_eq!(
        sample(&text, r#"gracepool_waiting_callers{pool="postgres"}"#),
        0.0
    );
    assert_eq!(
        sample(
            &text,
            r#"gracepool_connections_created_total{pool="postgres"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(&text, r#"gracepool_gets_total{pool="postgres"}"#),
        10.0
    );
    assert_eq!(
        sample(&text, r#"gracepool_get_timeouts_total{pool="postgres"}"#),
        0.0
    );
    // Histograms with buckets: ten uses, one creation.
    assert_eq!(
        sample(&text, r#"gracepool_use_seconds_count{pool="postgres"}"#),
        10.0
    );
    assert_eq!(
        sample(&text, r#"gracepool_create_seconds_count{pool="postgres"}"#),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            r#"gracepool_use_seconds_bucket{pool="postgres",le="+Inf"}"#
        ),
        10.0
    );
    assert!(
        text.contains("# TYPE gracepool_use_seconds histogram"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE gracepool_gets_total counter"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE gracepool_connections gauge"),
        "{text}"
    );

    Command::new("kill")
        .args(["-TERM", &service.id().to_string()])
        .status()
        .unwrap();
    let out = service.wait_with_output().unwrap();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit: {}\n{rest}\n{stderr}",
        out.status
    );
    assert!(stderr.is_empty(), "stderr: {stderr}");
    assert!(
        rest.contains("created=1 graceful=1"),
        "the one connection said goodbye: {rest}"
    );
}
