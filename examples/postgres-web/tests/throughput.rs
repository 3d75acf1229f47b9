//! The services side by side against a real PostgreSQL server: requests per second, latency,
//! and where each service's threads spend their time. A measurement, not a check: ignored by
//! default, run by hand in release:
//!
//! ```sh
//! cargo test --release -p gracepool-postgres-web --test throughput -- --ignored --nocapture
//! ```
//!
//! For each round and each service: start the service, warm it up, read every thread's CPU
//! time from `/proc/<pid>/task/*/stat`, run the load generator (`src/bin/load.rs`), read the
//! threads again and count the runtimes that hold the connections to PostgreSQL, then send
//! SIGTERM: the service must still exit 0, with nothing on stderr. The services are run in
//! turn within each round, so that a change in the machine's load falls on all of them.
//!
//! Knobs: `LOAD_CLIENTS` (32), `LOAD_REQUESTS` (40000), `LOAD_WARMUP` (2000), `LOAD_ROUNDS`
//! (5), and `LOAD_SERVICES` (`axum,actix,actix-workers`): `axum`, `actix` (the pool on the
//! System's arbiter), `actix-workers` (`CONNECTIONS_ON=workers`), or `label=/path/to/binary`
//! for an actix-service built from another tree (to compare before and after a change).

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStdout, Command, Stdio};

use gracepool_testkit::postgres::PgServer;

mod common;
use common::{runtimes_holding_pg_sockets, threads};

/// Milliseconds per clock tick of `/proc/*/stat` (`USER_HZ`, 100 on Linux).
const TICK_MS: u64 = 10;

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The machine's busy and total ticks, from `/proc/stat`.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = cpu.iter().sum();
    // idle and iowait are the 4th and 5th.
    let idle = cpu.get(3).copied().unwrap_or(0) + cpu.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// A service to run: its binary, the environment it gets, its application name.
struct Service {
    label: String,
    bin: String,
    env: Vec<(&'static str, &'static str)>,
    app: &'static str,
}

fn service(spec: &str) -> Service {
    let actix = env!("CARGO_BIN_EXE_actix-service").to_string();
    let (label, bin, env, app) = match spec {
        "axum" => (
            spec,
            env!("CARGO_BIN_EXE_axum-service").to_string(),
            vec![],
            "axum",
        ),
        "actix" => (spec, actix, vec![("CONNECTIONS_ON", "system")], "actix_web"),
        "actix-workers" => (
            spec,
            actix,
            vec![("CONNECTIONS_ON", "workers")],
            "actix_web",
        ),
        other => match other.split_once('=') {
            Some((label, path)) => (label, path.to_string(), vec![], "actix_web"),
            None => panic!("LOAD_SERVICES: unknown service {other}"),
        },
    };
    Service {
        label: label.to_string(),
        bin,
        env,
        app,
    }
}

fn start(s: &Service, pg: &PgServer) -> (Child, String, BufReader<ChildStdout>) {
    let mut child = Command::new(&s.bin)
        .envs(s.env.iter().copied())
        .env("DATABASE_URL", pg.conn_str(s.app))
        .env("BIND", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", s.bin));
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("the service did not start: {line:?}"))
        .to_string();
    (child, addr, stdout)
}

fn load(addr: &str, clients: usize, requests: usize) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_load"))
        .args(["--addr", addr, "--clients", &clients.to_string()])
        .args(["--requests", &requests.to_string(), "--max-secs", "120"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success(),
        "load: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn field(line: &str, name: &str) -> f64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// One run of one service: requests per second, p99 in µs, service CPU per request in µs,
/// the main thread's share of that CPU.
struct Run {
    rps: f64,
    p99_us: f64,
    cpu_us: f64,
    main_share: f64,
}

#[test]
#[ignore = "a measurement: run it by hand, in release (see the file's docs)"]
fn side_by_side() {
    let Some(pg) = PgServer::start("throughput::side_by_side") else {
        return;
    };
    if cfg!(debug_assertions) {
        println!("note: a debug build; run with --release for figures worth keeping");
    }
    let clients = knob("LOAD_CLIENTS", 32);
    let requests = knob("LOAD_REQUESTS", 40_000);
    let warmup = knob("LOAD_WARMUP", 2_000);
    let rounds = knob("LOAD_ROUNDS", 5);
    let specs =
        std::env::var("LOAD_SERVICES").unwrap_or_else(|_| "axum,actix,actix-workers".to_string());
    let services: Vec<Service> = specs.split(',').map(service).collect();
    println!(
        "{clients} clients, {requests} requests after {warmup} to warm up, {rounds} rounds; \
         pool max_size 8; loadavg {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let mut runs: Vec<Vec<Run>> = services.iter().map(|_| Vec::new()).collect();
    for round in 1..=rounds {
        for (s, runs) in services.iter().zip(&mut runs) {
            let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
            let (child, addr, mut stdout) = start(s, &pg);
            let pid = child.id();
            load(&addr, clients, warmup);
            let before = threads(pid);
            let machine_before = machine_ticks();
            let line = load(&addr, clients, requests);
            let machine_after = machine_ticks();
            let after = threads(pid);
            let (runtimes, sockets) = runtimes_holding_pg_sockets(pid, pg.port());
            Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .unwrap();
            let out = child.wait_with_output().unwrap();
            let mut rest = String::new();
            stdout.read_to_string(&mut rest).unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() && stderr.is_empty(),
                "{}: {}\n{stderr}",
                s.label,
                out.status
            );

            let busy = (machine_after.0 - machine_before.0) as f64
                / (machine_after.1 - machine_before.1).max(1) as f64
                * 2.0;
            let mut per_thread: Vec<(u32, String, u64)> = after
                .iter()
                .map(|(tid, a)| {
                    let b = before.get(tid).map_or(0, |b| b.ticks);
                    (*tid, a.name.clone(), (a.ticks - b) * TICK_MS)
                })
                .filter(|t| t.2 > 0)
                .collect();
            per_thread.sort_by_key(|t| std::cmp::Reverse(t.2));
            let total_ms: u64 = per_thread.iter().map(|t| t.2).sum();
            let main_ms: u64 = per_thread.iter().filter(|t| t.0 == pid).map(|t| t.2).sum();
            let answered = field(&line, "requests");
            let run = Run {
                rps: field(&line, "rps"),
                p99_us: field(&line, "p99_us"),
                cpu_us: total_ms as f64 * 1000.0 / answered,
                main_share: main_ms as f64 / total_ms.max(1) as f64,
            };
            println!(
                "round {round} {:14} {:>6.0} req/s  p50 {:>5.0} µs  p99 {:>5.0} µs  \
                 service cpu {:>5.1} µs/req  machine busy {busy:.2} of 2  loadavg {}",
                s.label,
                run.rps,
                field(&line, "p50_us"),
                run.p99_us,
                run.cpu_us,
                loadavg.split_whitespace().next().unwrap_or("?"),
            );
            for (tid, name, ms) in per_thread {
                let main = if tid == pid { "main" } else { "" };
                println!("    thread {tid:>7} {name:16} {main:4} cpu {ms:>5} ms");
            }
            println!("    {sockets} connections to PostgreSQL, on {runtimes} runtime(s)");
            if let Some(report) = rest.lines().find(|l| l.starts_with("pool closed")) {
                println!("    {report}");
            }
            runs.push(run);
        }
    }
    println!(
        "\nmedians of {rounds} rounds ({clients} clients, {requests} requests each):\n\n\
         | service | req/s | p99 µs | service CPU µs/req | main thread's share |\n\
         |---|---:|---:|---:|---:|"
    );
    for (s, runs) in services.iter().zip(runs) {
        println!(
            "| {} | {:.0} | {:.0} | {:.1} | {:.0} % |",
            s.label,
            median(runs.iter().map(|r| r.rps).collect()),
            median(runs.iter().map(|r| r.p99_us).collect()),
            median(runs.iter().map(|r| r.cpu_us).collect()),
            median(runs.iter().map(|r| r.main_share * 100.0).collect()),
        );
    }
}
