//! Each service (axum, actix-web) against a real PostgreSQL server: it serves requests, takes
//! SIGTERM with requests in flight, answers them, closes its pool, and exits 0 with nothing on
//! stderr; the server saw every connection say goodbye. And actix-web with its connections
//! made on the HTTP workers' arbiters (`CONNECTIONS_ON=workers`): spread over them, and each
//! still closed exactly once when SIGTERM stops the workers first.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gracepool_testkit::postgres::PgServer;

mod common;
use common::runtimes_holding_pg_sockets;

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

#[test]
fn axum_answers_in_flight_requests_on_sigterm_then_every_connection_says_goodbye() {
    sigterm_scenario(
        "sigterm::axum_answers_in_flight_requests_on_sigterm_then_every_connection_says_goodbye",
        env!("CARGO_BIN_EXE_axum-service"),
        "axum",
    );
}

#[test]
fn actix_web_answers_in_flight_requests_on_sigterm_then_every_connection_says_goodbye() {
    sigterm_scenario(
        "sigterm::actix_web_answers_in_flight_requests_on_sigterm_then_every_connection_says_goodbye",
        env!("CARGO_BIN_EXE_actix-service"),
        "actix_web",
    );
}

fn sigterm_scenario(test: &str, service: &str, app: &str) {
    let Some(pg) = PgServer::start(test) else {
        return;
    };
    let mut service = Command::new(service)
        .env("DATABASE_URL", pg.conn_str(app))
        .env("BIND", "127.0.0.1:0")
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

    // Requests from 8 clients at once, so that the pool opens several connections.
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                for n in 0..25 {
                    let (status, body) = http_get(&addr, &format!("/add?n={}", i * 100 + n));
                    assert_eq!((status, body), (200, (i * 100 + n + 1).to_string()));
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("every request answered");
    }

    // Four requests in flight, each holding a connection for 400 ms, when SIGTERM arrives.
    let slow: Vec<_> = (0..4)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || http_get(&addr, "/sleep?ms=400"))
        })
        .collect();
    let sleeping = || -> usize {
        pg.psql(&format!(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE application_name = '{app}' AND wait_event = 'PgSleep'"
        ))
        .parse()
        .unwrap()
    };
    let until = Instant::now() + Duration::from_secs(5);
    while sleeping() < 4 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(sleeping(), 4, "four requests in flight");
    let signalled = Instant::now();
    Command::new("kill")
        .args(["-TERM", &service.id().to_string()])
        .status()
        .unwrap();
    for s in slow {
        assert_eq!(
            s.join().unwrap(),
            (200, "slept".to_string()),
            "in flight at SIGTERM, answered"
        );
    }
    let out = service.wait_with_output().unwrap();
    let took = signalled.elapsed();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit: {}\n{rest}\n{stderr}",
        out.status
    );
    assert!(stderr.is_empty(), "stderr: {stderr}");
    assert!(took < Duration::from_secs(5), "shut down in {took:?}");

    // The pool's report: every connection closed with a goodbye.
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
    let created = field("created");
    assert!(created >= 4, "{report}");
    assert_eq!(field("graceful"), created, "{report}");
    assert_eq!(field("still_open"), 0, "{report}");

    // The server's side: every session ended, each connection made with Terminate (a
    // creation under way as the close began is abandoned, its client vanishing; the service's
    // pool has 8 slots).
    pg.assert_goodbyes(app, created, 0, 8 - created);
    assert_eq!(
        pg.wait_for_backends_of(app, 0, std::time::Duration::from_secs(2)),
        0
    );
}

#[test]
fn actix_web_with_connections_on_its_workers_spreads_them_and_closes_each_once_on_sigterm() {
    let test = "sigterm::actix_web_with_connections_on_its_workers_spreads_them_and_closes_each_once_on_sigterm";
    let Some(pg) = PgServer::start(test) else {
        return;
    };
    let app = "actix_workers";
    let mut service = Command::new(env!("CARGO_BIN_EXE_actix-service"))
        .env("DATABASE_URL", pg.conn_str(app))
        .env("BIND", "127.0.0.1:0")
        .env("CONNECTIONS_ON", "workers")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A failed assertion before the SIGTERM must not leave the service running.
    let _reaper = KillOnPanic(service.id());
    let mut stdout = BufReader::new(service.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("the service did not start: {line:?}"))
        .to_string();

    // 8 clients at once (one TCP connection per request: actix-web hands them to its 2 workers
    // in turn), so that both workers need connections of their own.
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                for n in 0..25 {
                    let (status, body) = http_get(&addr, &format!("/add?n={}", i * 100 + n));
                    assert_eq!((status, body), (200, (i * 100 + n + 1).to_string()));
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("every request answered");
    }

    // Where the connections' driver tasks live: the runtimes whose epoll holds their sockets.
    let (runtimes, sockets) = runtimes_holding_pg_sockets(service.id(), pg.port());
    assert!(sockets >= 2, "{sockets} connections to PostgreSQL");
    assert!(
        runtimes >= 2,
        "the {sockets} connections' drivers run on {runtimes} runtime(s): made on the workers' \
         arbiters, they are on more than one"
    );

    // SIGTERM with no request in flight: actix-web stops its workers, and with them the driver
    // tasks of the connections they made, before the pool closes. (A request in flight then
    // could be using a connection of the other worker and lose it; see the guide.)
    let signalled = Instant::now();
    Command::new("kill")
        .args(["-TERM", &service.id().to_string()])
        .status()
        .unwrap();
    let out = service.wait_with_output().unwrap();
    let took = signalled.elapsed();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit: {}\n{rest}\n{stderr}",
        out.status
    );
    assert!(stderr.is_empty(), "stderr: {stderr}");
    assert!(took < Duration::from_secs(5), "shut down in {took:?}");

    // Every connection closed exactly once, whether its goodbye could still be said or its
    // worker had already taken its driver away.
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
    let created = field("created");
    assert!(created >= sockets, "{report}");
    assert_eq!(
        field("graceful") + field("sync") + field("failed"),
        created,
        "{report}"
    );
    assert_eq!(field("still_open"), 0, "{report}");

    // The server's side: every session ended, no backend left; at least the goodbyes the
    // pool counted were said (a driver can get its Terminate out as its worker stops, after
    // the pool had counted the connection as closed without one).
    assert_eq!(pg.wait_for_backends_of(app, 0, Duration::from_secs(2)), 0);
    assert!(
        pg.disconnections(Some(app)) >= created,
        "{}",
        pg.log_tail(20)
    );
    assert!(pg.goodbyes(app) >= field("graceful"), "{}", pg.log_tail(20));
}

/// Kills the process `.0` (SIGKILL) when dropped during a panic.
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
