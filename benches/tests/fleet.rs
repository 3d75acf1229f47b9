//! A fleet of 8 gracepool-postgres processes on one PostgreSQL whose `max_connections` is
//! their pools' sum plus 5, rolled one by one (SIGTERM → the process closes its pool → it
//! exits → its replacement starts), under a steady load: what the callers and the server see.
//! The processes are the `fleet` binary's child role (`gracepool_bench::fleet`). No figure of
//! speed is asserted here; the benchmark (`cargo run --release -p gracepool-bench --bin
//! fleet`) measures those beside the peers.

use std::path::Path;
use std::time::Duration;

use gracepool_bench::fleet::{self, Lib, Settings};

#[test]
fn a_rolling_restart_costs_callers_and_the_server_nothing() {
    let s = Settings {
        processes: 8,
        max_size: 8,
        headroom: 5,
        tasks: 4,
        query_ms: 20,
        caller_timeout: Duration::from_secs(10),
        warm: Duration::from_secs(2),
        steady: Duration::from_secs(2),
        step: Duration::from_millis(1500),
        scale_hold: Duration::ZERO,
        after_scale: Duration::ZERO,
    };
    let exe = Path::new(env!("CARGO_BIN_EXE_fleet"));
    let Some(run) = fleet::run(exe, Lib::Grace, &s, "gracepool-bench fleet test") else {
        return;
    };
    let shown = format!(
        "{}\n{}",
        fleet::details(&run),
        fleet::table(std::slice::from_ref(&run))
    );
    // Every process exited with success and wrote nothing to stderr.
    assert!(run.child_failures.is_empty(), "{shown}");
    // The 8 first processes and their 8 replacements each closed its pool, and every
    // connection a pool made it ended.
    assert_eq!(run.closes.len(), 2 * s.processes, "{shown}");
    for close in &run.closes {
        let field = |name: &str| -> u64 {
            close
                .split_once(&format!(" {name} "))
                .and_then(|(_, rest)| rest.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no `{name}` in {close:?}"))
        };
        assert_eq!(field("created"), field("ended"), "{close}\n{shown}");
    }
    // The callers saw no error, through the start and the whole roll.
    let (get, query) = run.errors(0.0, run.phases.end + 60.0);
    assert_eq!((get, query), (0, 0), "{shown}");
    let done: u64 = run.reports.iter().map(|r| r.ok).sum();
    assert!(done > 0, "the fleet did no work\n{shown}");
    // The server: nothing refused, never more than the pools' sum, and every session ended
    // with the client's Terminate (none abandoned half-way either).
    let (attempts, refused, no_terminate, abandoned) = run.server_counts(0.0, f64::MAX);
    assert!(
        attempts >= s.processes * s.max_size,
        "{attempts} attempts\n{shown}"
    );
    assert_eq!(refused, 0, "{shown}");
    assert!(
        run.peak_connections(0.0, f64::MAX) <= s.processes * s.max_size,
        "{shown}"
    );
    assert_eq!((no_terminate, abandoned), (0, 0), "{shown}");
}
