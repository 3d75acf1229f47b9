//! Shutdown tests run in a child process, so that a panic, an abort or a stray print is seen
//! from outside. The child is the same test binary, started again to run only its test named
//! `child` with some environment set; it does its scenario and prints one line of
//! `key=value` counts. The parent asserts exit status 0 and empty stderr, and reads the counts.

use std::process::Command;

/// What a child printed, once it has exited with status 0 and written nothing to stderr.
#[derive(Debug)]
pub struct ChildReport {
    /// The scenario's name, for messages.
    pub scenario: String,
    /// The line of counts: from the first `created=` to the end of its line.
    pub line: String,
    /// Everything the child printed on stdout.
    pub stdout: String,
}

impl ChildReport {
    /// The count printed as `key=N`; panics, naming the scenario, when there is none.
    pub fn field(&self, key: &str) -> u64 {
        self.line
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
            .unwrap_or_else(|| panic!("{}: no {key} in {}", self.scenario, self.line))
    }
}

/// Starts this test binary again, running only its test named `child`, with `env` set (the
/// scenario's name among it), and asserts that it exits with status 0 and writes nothing to
/// stderr. Returns its line of counts.
pub fn run_child(scenario: &str, env: &[(&str, String)]) -> ChildReport {
    let out = Command::new(std::env::current_exe().expect("the test binary's path"))
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("the test binary can be started again");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{scenario}: exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert!(stderr.is_empty(), "{scenario}: wrote to stderr:\n{stderr}");
    let line = stdout
        .lines()
        .find_map(|l| l.find("created=").map(|at| l[at..].to_owned()))
        .unwrap_or_else(|| panic!("{scenario}: no counts printed:\n{stdout}"));
    ChildReport {
        scenario: scenario.to_owned(),
        line,
        stdout,
    }
}
