//! gracepool's benchmarks, side by side with deadpool, bb8, mobc and r2d2 (a synchronous
//! reference), each given the same trivial manager, measured in the same run.
//!
//! `bash benches/run.sh` runs them all and prints a Markdown table of each figure with its
//! ratio to the best peer and to the floor. The scenarios:
//!
//! - **P1** uncontended get + return, one task, tokio current_thread: ns per pair.
//! - **P2** 64 tasks, pool max 8, 2 worker threads, `yield_now` while holding: pairs per
//!   second, p50/p99 wait for a checkout.
//! - **P3** 32 tasks, pool max 1: pairs per second, fairness (most / fewest pairs by a task).
//! - **P4** cold start: build a pool and take its first 100 connections.
//! - **P5** close 10,000 idle connections.
//! - **P6** heap bytes held per idle connection beyond the connection itself.
//! - **Floors**: a bounded `async-channel` (try_recv + try_send), a semaphore + mutex, and
//!   for P5 a plain drop loop.
//!
//! The scenario code lives here so that the tests can run every pool's loops a few times and
//! check the counts.
//!
//! ```
//! use gracepool_bench::{manager::Trivial, pools::{BenchPool, Grace}, scenarios};
//!
//! let rt = scenarios::current_thread();
//! let manager = Trivial::new();
//! let stats = manager.stats().clone();
//! rt.block_on(async {
//!     let pool = Grace::build(manager, 8).await;
//!     scenarios::pairs(&pool, 100).await;
//!     pool.close().await;
//! });
//! assert_eq!(stats.created(), 1);
//! assert_eq!(stats.open(), 0);
//! ```
#![deny(missing_docs)]

pub mod fleet;
pub mod manager;
pub mod pools;
pub mod scenarios;

use std::path::PathBuf;

/// Where criterion writes its results, found as criterion finds it: `$CRITERION_HOME`, else
/// `$CARGO_TARGET_DIR/criterion`, else the workspace's `target/criterion`.
pub fn criterion_home() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(target).join("criterion");
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join("criterion")
}

/// Where the figures that are not criterion timings go (P2, P3, P6): one JSON file each.
pub fn extra_path(name: &str) -> PathBuf {
    criterion_home()
        .join("gracepool-extra")
        .join(format!("{name}.json"))
}

/// Writes one of the extra figures' files.
pub fn write_extra(name: &str, value: &serde_json::Value) -> std::io::Result<()> {
    let path = extra_path(name);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    std::fs::write(path, text)
}

/// The run options the bench binaries share with criterion's command line: `--test` runs
/// everything once, quickly; free-standing words filter scenarios by name.
#[derive(Debug, Clone, Default)]
pub struct Args {
    /// `--test` was given: check that everything runs, measure nothing seriously.
    pub test: bool,
    /// Words that a scenario's name must contain (any of them), if any were given.
    pub filters: Vec<String>,
}

impl Args {
    /// Reads the process's arguments, skipping criterion's options and their values.
    pub fn from_env() -> Self {
        const WITH_VALUE: &[&str] = &[
            "--warm-up-time",
            "--measurement-time",
            "--sample-size",
            "--save-baseline",
            "--baseline",
            "--baseline-lenient",
            "--load-baseline",
            "--noise-threshold",
            "--confidence-level",
            "--significance-level",
            "--nresamples",
            "--profile-time",
            "--output-format",
            "--format",
            "--color",
            "--plotting-backend",
        ];
        let mut args = Args::default();
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            if arg == "--test" {
                args.test = true;
            } else if WITH_VALUE.contains(&arg.as_str()) {
                it.next();
            } else if !arg.starts_with('-') {
                args.filters.push(arg);
            }
        }
        args
    }

    /// Whether the scenario named `name` is to run.
    pub fn wants(&self, name: &str) -> bool {
        self.filters.is_empty() || self.filters.iter().any(|f| name.contains(f.as_str()))
    }
}
