//! What every test against a real server shares: finding the server's binary (skipping
//! visibly, or failing under `CI=true`), a free port on 127.0.0.1, a temporary directory, and a
//! child process stopped by its pid when the test ends, also when it fails.
//!
//! Backend-specific starters (PostgreSQL, Redis) live beside this module and build on it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

/// Whether this run is CI's (`CI=true`), where a missing server is a failure, not a skip.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Finds `name` among `dirs` and then on `PATH`. When it is nowhere, prints one visible line
/// saying which test is skipped and which Debian package provides the binary, and returns
/// `None`; under `CI=true` it panics instead, so CI never skips a real-server test.
pub fn require_binary(name: &str, dirs: &[&str], package: &str, test: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let found = dirs
        .iter()
        .map(PathBuf::from)
        .chain(on_path)
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            !under_ci(),
            "{test}: `{name}` is not installed (Debian package `{package}`); CI=true, so this is a failure, not a skip"
        );
        // Straight to stdout, past the test harness's capture: a skip must be seen.
        use std::io::Write;
        let _ = writeln!(
            std::io::stdout(),
            "SKIPPED {test}: `{name}` not found (install the Debian package `{package}`)"
        );
    }
    found
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0 gives a free port")
}

/// A fresh, empty directory under the system's temporary directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Makes the directory, named after `prefix`, the process id and a counter.
    pub fn new(prefix: &str) -> TempDir {
        use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("the temporary directory is writable");
        TempDir(path)
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A server process the test owns: stopped by its pid when dropped (also while a failing
/// test unwinds), first with `SIGTERM`, then `SIGKILL` if it has not gone after 10 s.
pub struct ServerProcess {
    child: Child,
    name: &'static str,
}

impl ServerProcess {
    /// Takes ownership of a started server.
    pub fn new(child: Child, name: &'static str) -> ServerProcess {
        ServerProcess { child, name }
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (a name `kill` understands: `TERM`, `INT`, `KILL`, ...) to the server.
    pub fn signal(&self, signal: &str) {
        let _ = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status();
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops the server by its pid and waits for it to exit.
    pub fn stop(&mut self) {
        if self.exited() {
            return;
        }
        self.signal("TERM");
        let until = Instant::now() + Duration::from_secs(10);
        while !self.exited() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        if !self.exited() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// The name given at start, for messages.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until `127.0.0.1:port` accepts TCP connections, up to `patience`.
pub fn wait_for_port(port: u16, patience: Duration) -> bool {
    let until = Instant::now() + patience;
    while Instant::now() < until {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}
