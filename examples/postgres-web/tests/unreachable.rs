//! The axum service sent SIGTERM while its requests hang on a database that stopped
//! answering (a proxy between them drops everything, as a partition does): it still exits
//! within its shutdown budget (the drain budget, then the close budget), with status 0,
//! nothing on stderr, and a close report that accounts for every connection and claims no
//! goodbye that could not have arrived.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gracepool_testkit::fault::{FaultProxy, Mode};
use gracepool_testkit::postgres::{PgServer, USER};

/// One HTTP/1.1 GET, its answer read for at most `patience`; the status code, if any came.
fn http_get(addr: &str, path: &str, patience: Duration) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(patience)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
}

#[test]
fn sigterm_while_requests_hang_on_an_unreachable_database_exits_within_the_budget() {
    let Some(pg) = PgServer::start(
        "unreachable::sigterm_while_requests_hang_on_an_unreachable_database_exits_within_the_budget",
    ) else {
        return;
    };
    let proxy = FaultProxy::start(pg.port()).expect("a proxy on 127.0.0.1");
    let (drain, close) = (Duration::from_millis(1500), Duration::from_millis(1500));
    let mut service = Command::new(env!("CARGO_BIN_EXE_axum-service"))
        .env(
            "DATABASE_URL",
            format!(
                "host=127.0.0.1 port={} user={USER} dbname=postgres application_name=unreachable",
                proxy.port()
            ),
        )
        .env("BIND", "127.0.0.1:0")
        .env("DRAIN_MS", drain.as_millis().to_string())
        .env("CLOSE_MS", close.as_millis().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(service.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("the service did not start: {line:?}"))
        .to_string();
    // It serves, with four connections open: four requests that each hold a connection at
    // the same time (quick ones could all be served by fewer, the pool making a fresh pool's
    // first connection alone).
    let warm: Vec<_> = (0..4)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || http_get(&addr, "/sleep?ms=500", Duration::from_secs(10)))
        })
        .collect();
    for w in warm {
        assert_eq!(w.join().unwrap(), Some(200));
    }
    // The database stops answering; four requests hang on it.
    proxy.set_mode(Mode::Blackhole);
    let hung: Vec<_> = (0..4)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || http_get(&addr, "/add?n=1", Duration::from_secs(30)))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let signalled = Instant::now();
    Command::new("kill")
        .args(["-TERM", &service.id().to_string()])
        .status()
        .unwrap();
    let out = service.wait_with_output().unwrap();
    let took = signalled.elapsed();
    for h in hung {
        // Dropped past the drain budget: no answer, or an error status; never a hang.
        assert_ne!(h.join().unwrap(), Some(200));
    }
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit: {}\n{rest}\n{stderr}",
        out.status
    );
    assert!(stderr.is_empty(), "stderr: {stderr}");
    // Within the budget (drain + close), with slack for a loaded machine.
    assert!(
        took < drain + close + Duration::from_secs(3),
        "shut down in {took:?}\n{rest}"
    );
    assert!(rest.contains("drain budget"), "{rest}");
    let report = rest
        .lines()
        .find(|l| l.starts_with("pool closed"))
        .unwrap_or_else(|| panic!("no close report in {rest:?}"));
    let field = |name: &str| -> usize {
        report
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in `{report}`"))
    };
    // Nothing reached the server: no goodbye is claimed, every connection is accounted for.
    assert_eq!(field("graceful"), 0, "{report}");
    assert_eq!(
        field("created"),
        field("graceful") + field("sync") + field("failed") + field("still_open"),
        "{report}"
    );
    // The four requests hung past both budgets still hold their connections when the report
    // is written (axum runs each HTTP connection in a task of its own, which the drain budget
    // does not cancel); the runtime's teardown at exit drops them, and the pool closes those
    // connections synchronously then, with nothing printed (the empty stderr above).
    assert_eq!(field("still_open"), 4, "{report}");
    drop(proxy);
}
