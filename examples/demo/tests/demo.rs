//! The demo, run as a user runs it: a child process, small numbers. The assertions are the
//! backend's counts, as the demo prints them, and the demo's exit status and stderr.

use std::process::{Command, Output};

const DEMO: &str = env!("CARGO_BIN_EXE_gracepool-demo");

fn demo(args: &[&str]) -> Output {
    Command::new(DEMO)
        .args(args)
        .output()
        .expect("the demo binary runs")
}

/// One row of the demo's table.
#[derive(Debug)]
struct Row {
    label: String,
    ending: String,
    opened: u64,
    goodbye: u64,
    abrupt: u64,
    held: u64,
    leaked: u64,
    created: u64,
    graceful: u64,
    sync: u64,
    stderr: String,
    panics: u64,
    exit: String,
}

fn numbers(part: &str) -> Vec<u64> {
    part.split_whitespace()
        .map(|n| n.parse().expect("a count"))
        .collect()
}

/// The restart rows and the total row of the table, in order.
fn rows(stdout: &str) -> Vec<Row> {
    stdout
        .lines()
        .filter(|l| {
            let first = l.split_whitespace().next().unwrap_or("");
            l.contains('|') && (first == "total" || first.parse::<u32>().is_ok())
        })
        .map(|l| {
            let parts: Vec<&str> = l.split('|').collect();
            assert_eq!(parts.len(), 4, "a table row: {l:?}");
            let mut head = parts[0].split_whitespace();
            let label = head.next().expect("a label").to_string();
            let ending = head.next().unwrap_or("").to_string();
            let b = numbers(parts[1]);
            let p = numbers(parts[2]);
            let w: Vec<&str> = parts[3].split_whitespace().collect();
            Row {
                label,
                ending,
                opened: b[0],
                goodbye: b[1],
                abrupt: b[2],
                held: b[3],
                leaked: b[4],
                created: p[0],
                graceful: p[1],
                sync: p[2],
                stderr: format!("{} {}", w[0], w[1]),
                panics: w[2].parse().expect("a count"),
                exit: w[3].to_string(),
            }
        })
        .collect()
}

fn run_ok(args: &[&str]) -> (String, Vec<Row>) {
    let out = demo(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo {args:?} exited with {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert!(stderr.is_empty(), "demo {args:?} wrote to stderr: {stderr}");
    let rows = rows(&stdout);
    (stdout, rows)
}

const SMALL: &[&str] = &[
    "--workers",
    "4",
    "--requests",
    "60",
    "--restarts",
    "3",
    "--size",
    "3",
];

fn gracepool_on(runtime: &str) {
    let mut args = vec!["--runtime", runtime];
    args.extend_from_slice(SMALL);
    let (stdout, rows) = run_ok(&args);
    assert_eq!(rows.len(), 4, "three restarts and a total:\n{stdout}");
    for r in &rows {
        // The backend's account: every connection it accepted ended, none is left open.
        assert!(r.opened > 0, "{r:?}");
        assert_eq!(r.opened, r.goodbye + r.abrupt, "{r:?}");
        assert_eq!((r.held, r.leaked), (0, 0), "{r:?}");
        // The pool's account agrees with the backend's.
        assert_eq!(
            (r.created, r.graceful, r.sync),
            (r.opened, r.goodbye, r.abrupt),
            "{r:?}"
        );
        // Nothing on the worker's stderr, no panic, a clean exit.
        assert_eq!((r.stderr.as_str(), r.panics), ("0 B", 0), "{r:?}");
        assert_eq!(r.exit, "0", "{r:?}");
    }
    let teardowns: Vec<&Row> = rows.iter().filter(|r| r.ending == "teardown").collect();
    assert_eq!(teardowns.len(), 2, "{stdout}");
    for r in teardowns {
        // The runtime went away with every connection in use: the sync fallback closed them.
        assert_eq!(r.abrupt, r.opened, "{r:?}");
    }
    let close = rows
        .iter()
        .find(|r| r.ending == "close")
        .expect("a close row");
    // A graceful close: every connection said goodbye.
    assert_eq!(
        (close.goodbye, close.abrupt),
        (close.opened, 0),
        "{close:?}"
    );
    assert_eq!(rows.last().map(|r| r.label.as_str()), Some("total"));
    assert!(stdout.contains("gracepool kept its promise"), "{stdout}");
}

#[test]
fn gracepool_on_tokio() {
    gracepool_on("tokio");
}

#[test]
fn gracepool_on_tokio_current_thread() {
    gracepool_on("tokio-current");
}

#[test]
fn gracepool_on_smol() {
    gracepool_on("smol");
}

#[test]
fn gracepool_on_actix() {
    gracepool_on("actix");
}

#[test]
fn peers_run_and_the_backend_accounts_for_every_connection() {
    for pool in ["deadpool", "bb8"] {
        let mut args = vec!["--pool", pool];
        args.extend_from_slice(SMALL);
        let (stdout, rows) = run_ok(&args);
        assert_eq!(rows.len(), 4, "{stdout}");
        for r in &rows {
            assert!(r.opened > 0, "{pool}: {r:?}");
            assert_eq!(r.opened, r.goodbye + r.abrupt + r.leaked, "{pool}: {r:?}");
            assert_eq!(r.created, r.opened, "{pool}: {r:?}");
        }
        assert!(
            stdout.contains(&format!("{pool}: the backend saw")),
            "{stdout}"
        );
    }
}

fn bad_input(args: &[&str], says: &str) {
    let out = demo(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(stderr.contains(says), "{args:?}: {stderr}");
    assert!(out.stdout.is_empty(), "{args:?}: nothing runs on bad input");
}

#[test]
fn bad_input_is_a_clear_message_and_status_2() {
    bad_input(&["--runtime", "nope"], "unknown runtime \"nope\"");
    bad_input(&["--size", "0"], "--size is 0");
    bad_input(&["--workers", "0"], "--workers is 0");
    bad_input(&["--pool", "r2d2"], "unknown pool");
    bad_input(
        &["--pool", "bb8", "--runtime", "smol"],
        "bb8 runs only on tokio",
    );
    bad_input(&["--bogus"], "unknown argument");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let port = taken.local_addr().expect("bound").port().to_string();
    bad_input(&["--port", &port], "is in use");
}

#[test]
fn help_lists_the_flags() {
    let out = demo(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--pool",
        "--runtime",
        "--workers",
        "--requests",
        "--restarts",
        "--size",
        "--port",
    ] {
        assert!(help.contains(flag), "{flag} in {help}");
    }
    assert!(
        help.contains("tokio, tokio-current, smol or actix"),
        "{help}"
    );
}
