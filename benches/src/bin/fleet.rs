//! A fleet of service processes on one PostgreSQL, for gracepool-postgres, deadpool-postgres
//! 0.14 and bb8-postgres 0.9 (see `gracepool_bench::fleet` for the scenario and what is
//! measured). Each library runs on a server of its own, one library after another.
//!
//! ```sh
//! cargo run --release -p gracepool-bench --bin fleet        # the full run, ~5 min
//! GRACEPOOL_FLEET_LIBS=grace GRACEPOOL_FLEET_SCALE_HOLD_MS=0 \
//!   cargo run --release -p gracepool-bench --bin fleet      # gracepool's roll alone
//! ```
//!
//! Settings (`GRACEPOOL_FLEET_*`): `PROCESSES` (8), `MAX_SIZE` (8), `HEADROOM` (5:
//! `max_connections` = processes × max size + headroom), `TASKS` (4 busy tasks a process),
//! `QUERY_MS` (20: each call's `pg_sleep`), `CALLER_TIMEOUT_MS` (5000), `WARM_MS` (3000),
//! `STEADY_MS` (5000), `STEP_MS` (2000: one roll step), `MIN_IDLE` (each pool's `min_idle`
//! where the library has it: `MAX_SIZE` by default), `SCALE_HOLD_MS` (45000; 0 skips the
//! scale-up), `AFTER_SCALE_MS` (6000), `LIBS` (`grace,dead,bb8`), `SVG` (where the chart
//! goes; `target/fleet.svg` by default). Nothing here asserts a figure.

use std::path::PathBuf;

use gracepool_bench::fleet::{self, Lib, Settings};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("child") {
        fleet::child_main(&args[2..]);
        return;
    }
    let s = Settings::from_env();
    let libs: Vec<Lib> = std::env::var("GRACEPOOL_FLEET_LIBS")
        .unwrap_or_else(|_| "grace,dead,bb8".into())
        .split(',')
        .filter(|l| !l.trim().is_empty())
        .map(|l| Lib::parse(l.trim()).unwrap_or_else(|| panic!("unknown library {l:?}")))
        .collect();
    let svg = std::env::var_os("GRACEPOOL_FLEET_SVG")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
                .join("fleet.svg")
        });
    let exe = std::env::current_exe().expect("the running binary's path");
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("date: {date}");
    println!("machine: {cores} cores, {cpu}; load {}", fleet::loadavg());
    println!(
        "{} processes × {} busy tasks, pool max {} (min_idle {} where the library has it), \
         SELECT pg_sleep({} ms) a call, caller timeout {:?}; max_connections {}; target {:.0} calls/s at N",
        s.processes,
        s.tasks,
        s.max_size,
        s.max_size,
        s.query_ms,
        s.caller_timeout,
        s.max_connections(),
        s.target_rate(s.processes)
    );
    let mut runs = Vec::new();
    for lib in libs {
        let name = format!("gracepool-bench fleet {}", lib.short());
        let Some(run) = fleet::run(&exe, lib, &s, &name) else {
            return;
        };
        print!("{}", fleet::details(&run));
        runs.push(run);
    }
    println!("\n{}", fleet::table(&runs));
    let caption = format!(
        "{date}; {cores}-core {cpu}, shared (load {} at the start); PostgreSQL 15, max_connections {}; {} busy tasks a process, pg_sleep {} ms a call",
        runs.first().map_or(String::new(), |r| r.load.clone()),
        s.max_connections(),
        s.tasks,
        s.query_ms
    );
    if let Some(dir) = svg.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&svg, fleet::chart::svg(&runs, &caption)).expect("the chart can be written");
    println!("chart: {}", svg.display());
    println!("load after: {}", fleet::loadavg());
}
