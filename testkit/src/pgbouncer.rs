//! A throwaway PgBouncer in front of a test's [`PgServer`]: Debian's `pgbouncer` (1.18 on
//! Debian 12) on 127.0.0.1, on a free port, its configuration and log in a temporary
//! directory, run as a child process the test owns and stops by its pid.
//!
//! ```no_run
//! use gracepool_testkit::pgbouncer::{PgBouncer, PoolMode};
//! use gracepool_testkit::postgres::PgServer;
//!
//! let Some(pg) = PgServer::start("my_test") else { return };
//! let Some(bouncer) = PgBouncer::builder(&pg)
//!     .mode(PoolMode::Transaction)
//!     .default_pool_size(2)
//!     .start("my_test")
//! else {
//!     return; // one SKIPPED line: pgbouncer is not installed
//! };
//! let url = bouncer.conn_str("my_test");
//! // ... connect with `url`; meanwhile, from the admin console:
//! bouncer.admin("PAUSE");
//! bouncer.admin("RESUME");
//! ```
//!
//! What PgBouncer is told, and why:
//! - Trust authentication, as the server behind it gives [`USER`]: the users PgBouncer knows
//!   are listed in its `auth_file` (trust still needs the user there), with [`ADMIN_USER`],
//!   who may use the admin console (database `pgbouncer`: `PAUSE`, `RESUME`, `RECONNECT`,
//!   `SHUTDOWN`, `SHOW POOLS`, ...).
//! - One database, `postgres`, forwarded to the server as [`USER`]; every connection
//!   PgBouncer makes to the server is named [`SERVER_APP`] (its `application_name`), unless a
//!   client's own name is passed on, which PgBouncer does for its first connection only.
//! - `log_connections` and `log_disconnections`: its log (`pgbouncer.log` in its directory)
//!   records every login and every end, with the reason.
//!
//! PgBouncer refuses to run as root, as PostgreSQL does: under root it runs as the `postgres`
//! user (the one Debian's `postgresql` package creates), its directory handed to that user.
//! Helpers speak to its admin console with the server's `psql`, so they need no runtime.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::postgres::{PgServer, BIN_DIR, HELPER_APP, USER};
use crate::server::{free_port, require_binary, wait_for_port, ServerProcess, TempDir};

/// The user allowed on the admin console (database `pgbouncer`).
pub const ADMIN_USER: &str = "gracepool_admin";

/// The `application_name` PgBouncer's own connections to the server carry.
pub const SERVER_APP: &str = "pgbouncer";

/// Where Debian's package puts the binary.
const SBIN: &str = "/usr/sbin";

/// The start of every PgBouncer directory's name: `gracepool-pgbouncer-<test pid>-<n>`.
const DIR_PREFIX: &str = "gracepool-pgbouncer";

/// How long a start may take before the test fails.
const START_PATIENCE: Duration = Duration::from_secs(15);

/// PgBouncer's `pool_mode`: when a server connection goes back to PgBouncer's pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    /// When the client disconnects: a client keeps one server connection, session state and
    /// prepared statements included.
    Session,
    /// When a transaction ends: each transaction (each statement outside one) may run on
    /// another server connection. Before PgBouncer 1.21 a named prepared statement lives only
    /// on the server connection that prepared it.
    Transaction,
}

impl PoolMode {
    fn as_str(self) -> &'static str {
        match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
        }
    }
}

/// What a [`PgBouncer`] is started with.
#[derive(Debug, Clone)]
pub struct PgBouncerBuilder {
    server_port: u16,
    mode: PoolMode,
    default_pool_size: usize,
    max_client_conn: usize,
    settings: Vec<(String, String)>,
}

impl PgBouncerBuilder {
    /// The pooling mode ([`PoolMode::Transaction`] unless set).
    pub fn mode(mut self, mode: PoolMode) -> Self {
        self.mode = mode;
        self
    }

    /// Server connections per user and database (`default_pool_size`; 2 unless set, so that a
    /// test's clients outnumber them).
    pub fn default_pool_size(mut self, n: usize) -> Self {
        self.default_pool_size = n;
        self
    }

    /// Client connections PgBouncer accepts in all (`max_client_conn`; 100 unless set).
    pub fn max_client_conn(mut self, n: usize) -> Self {
        self.max_client_conn = n;
        self
    }

    /// Any other `[pgbouncer]` setting, written after the test kit's own (the later wins).
    pub fn setting(mut self, name: &str, value: &str) -> Self {
        self.settings.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Starts PgBouncer for `test`. Returns `None` after printing one `SKIPPED <test>: ...`
    /// line when `pgbouncer` (or `psql`) is not installed; panics instead under `CI=true`, and
    /// when PgBouncer cannot be started.
    pub fn start(self, test: &str) -> Option<PgBouncer> {
        let binary = require_binary("pgbouncer", &[SBIN], "pgbouncer", test)?;
        let psql = require_binary("psql", &[BIN_DIR], "postgresql", test)?;
        let owner = if running_as_root() {
            Some(postgres_user().unwrap_or_else(|| {
                panic!("{test}: running as root, and there is no `postgres` user to run PgBouncer as (the Debian package `postgresql` creates it)")
            }))
        } else {
            None
        };
        reap_orphans();
        let dir = TempDir::new(DIR_PREFIX);
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("root can hand the temporary directory to the postgres user");
        }
        let mut bouncer = PgBouncer {
            process: None,
            dir,
            binary,
            psql,
            port: 0,
            owner,
            config: self,
        };
        std::fs::write(
            bouncer.dir.path().join("userlist.txt"),
            format!("\"{USER}\" \"\"\n\"{ADMIN_USER}\" \"\"\n"),
        )
        .expect("the directory is writable");
        // A port found free may be taken before PgBouncer binds it: try a few.
        for attempt in 0..5 {
            bouncer.port = free_port();
            match bouncer.spawn() {
                Ok(()) => break,
                Err(log) if attempt < 4 && log.contains("bind") => continue,
                Err(log) => panic!("{test}: PgBouncer did not start; its log ends with:\n{log}"),
            }
        }
        Some(bouncer)
    }
}

/// A PgBouncer owned by the test. Dropping it stops PgBouncer (by pid) and removes its
/// directory.
pub struct PgBouncer {
    // Declared before `dir`: PgBouncer stops before its directory is removed.
    process: Option<ServerProcess>,
    dir: TempDir,
    binary: PathBuf,
    psql: PathBuf,
    port: u16,
    owner: Option<(u32, u32)>,
    config: PgBouncerBuilder,
}

impl PgBouncer {
    /// What to start in front of `server`: transaction pooling, 2 server connections,
    /// 100 clients, until told otherwise.
    pub fn builder(server: &PgServer) -> PgBouncerBuilder {
        PgBouncerBuilder {
            server_port: server.port(),
            mode: PoolMode::Transaction,
            default_pool_size: 2,
            max_client_conn: 100,
            settings: Vec::new(),
        }
    }

    /// The port PgBouncer listens on, on 127.0.0.1 (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The pooling mode it runs in.
    pub fn mode(&self) -> PoolMode {
        self.config.mode
    }

    /// PgBouncer's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ServerProcess::pid)
    }

    /// A key-value connection string through PgBouncer, as [`USER`] on database `postgres`,
    /// naming the client `app`.
    pub fn conn_str(&self, app: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={USER} dbname=postgres application_name={app}",
            self.port
        )
    }

    /// Sends `command` to the admin console (`PAUSE`, `RESUME`, `RECONNECT`, `SHUTDOWN`,
    /// `SHOW POOLS`, ...) and returns its output: unaligned rows, fields separated by `|`.
    /// `PAUSE` returns once every server connection is released. Panics when the console
    /// refuses the command (but `SHUTDOWN`, whose connection ends with PgBouncer).
    pub fn admin(&self, command: &str) -> String {
        self.console(command, true)
    }

    fn console(&self, command: &str, tuples_only: bool) -> String {
        let out = Command::new(&self.psql)
            .args(["-X", "-A", "-q", "-v", "ON_ERROR_STOP=1"])
            .args(if tuples_only { &["-t"][..] } else { &[][..] })
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", ADMIN_USER, "-d", "pgbouncer", "-c", command])
            .env("PGAPPNAME", HELPER_APP)
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .output()
            .expect("psql can be run");
        let shutdown = command.trim().eq_ignore_ascii_case("SHUTDOWN");
        assert!(
            out.status.success() || shutdown,
            "the admin console refused `{command}`: {}\nPgBouncer's log ends with:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_tail(20)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `SHOW POOLS` for database `postgres` (the columns tests read, found by name).
    pub fn pools(&self) -> Pools {
        let out = self.console("SHOW POOLS", false);
        let mut lines = out.lines();
        let header: Vec<&str> = lines.next().unwrap_or_default().split('|').collect();
        let row: Vec<&str> = lines
            .map(|l| l.split('|').collect::<Vec<_>>())
            .find(|fields| fields.first() == Some(&"postgres") && fields.get(1) == Some(&USER))
            .unwrap_or_default();
        let n = |name: &str| {
            header
                .iter()
                .position(|h| *h == name)
                .and_then(|i| row.get(i))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Pools {
            cl_active: n("cl_active"),
            cl_waiting: n("cl_waiting"),
            sv_active: n("sv_active"),
            sv_idle: n("sv_idle"),
            sv_used: n("sv_used"),
            sv_login: n("sv_login"),
        }
    }

    /// Kills PgBouncer with `SIGKILL` (no goodbye to anyone: every client's socket is reset
    /// by the kernel) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.signal("KILL");
            let until = Instant::now() + Duration::from_secs(10);
            while !process.exited() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }

    /// Starts PgBouncer again on the same port, with the same settings, after [`kill`],
    /// [`stop`] or `SHUTDOWN`; returns once it accepts connections. Panics if it does not
    /// within 15 s.
    ///
    /// [`kill`]: PgBouncer::kill
    /// [`stop`]: PgBouncer::stop
    pub fn restart(&mut self) {
        self.forget_exited();
        assert!(self.process.is_none(), "PgBouncer is still running");
        if let Err(log) = self.spawn() {
            panic!("PgBouncer did not come back on port {}: {log}", self.port);
        }
    }

    /// Stops PgBouncer by its pid (`SIGTERM`, then `SIGKILL` after 10 s) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop();
        }
    }

    /// Waits up to `patience` for PgBouncer to exit on its own (after `SHUTDOWN`); says
    /// whether it did.
    pub fn wait_exit(&mut self, patience: Duration) -> bool {
        let until = Instant::now() + patience;
        loop {
            self.forget_exited();
            if self.process.is_none() {
                return true;
            }
            if Instant::now() > until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// PgBouncer's log (all its runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The last `n` lines of the log, for a failure message.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("pgbouncer.log")
    }

    fn forget_exited(&mut self) {
        if self.process.as_mut().is_some_and(ServerProcess::exited) {
            self.process = None;
        }
    }

    fn write_config(&self) -> PathBuf {
        let c = &self.config;
        let dir = self.dir.path();
        let mut ini = format!(
            "[databases]\n\
             postgres = host=127.0.0.1 port={server} dbname=postgres user={USER} application_name={SERVER_APP}\n\
             \n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {auth}\n\
             admin_users = {ADMIN_USER}\n\
             pool_mode = {mode}\n\
             default_pool_size = {pool}\n\
             max_client_conn = {clients}\n\
             log_connections = 1\n\
             log_disconnections = 1\n\
             log_pooler_errors = 1\n\
             ignore_startup_parameters = extra_float_digits\n",
            server = c.server_port,
            port = self.port,
            auth = dir.join("userlist.txt").display(),
            mode = c.mode.as_str(),
            pool = c.default_pool_size,
            clients = c.max_client_conn,
        );
        for (name, value) in &c.settings {
            ini.push_str(&format!("{name} = {value}\n"));
        }
        let path = dir.join("pgbouncer.ini");
        std::fs::write(&path, ini).expect("the directory is writable");
        path
    }

    /// Starts `pgbouncer` on `self.port` and waits until it accepts connections. On failure,
    /// returns the log's tail.
    fn spawn(&mut self) -> Result<(), String> {
        use std::os::unix::process::CommandExt;
        let ini = self.write_config();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("the log file can be opened");
        let log_err = log.try_clone().expect("a log file handle can be cloned");
        let mut cmd = Command::new(&self.binary);
        cmd.arg(&ini)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
        let child = cmd.spawn().expect("pgbouncer can be run");
        let mut process = ServerProcess::new(child, "pgbouncer");
        std::fs::write(self.dir.path().join("owner.pid"), process.pid().to_string())
            .expect("the directory is writable");
        let until = Instant::now() + START_PATIENCE;
        loop {
            if process.exited() {
                return Err(self.log_tail(20));
            }
            if wait_for_port(self.port, Duration::from_millis(20)) {
                // Ours, and not another process's that took the port: still running.
                if process.exited() {
                    return Err(self.log_tail(20));
                }
                break;
            }
            if Instant::now() > until {
                return Err(format!(
                    "not listening after {START_PATIENCE:?}\n{}",
                    self.log_tail(20)
                ));
            }
        }
        self.process = Some(process);
        Ok(())
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for PgBouncer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgBouncer")
            .field("port", &self.port)
            .field("mode", &self.config.mode)
            .field("dir", &self.dir.path())
            .finish()
    }
}

/// A row of `SHOW POOLS` (the columns tests read).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pools {
    /// Clients linked to a server connection, or idle with nothing to run.
    pub cl_active: usize,
    /// Clients with a query waiting for a server connection.
    pub cl_waiting: usize,
    /// Server connections linked to a client.
    pub sv_active: usize,
    /// Server connections idle and ready.
    pub sv_idle: usize,
    /// Server connections idle, to be checked before reuse.
    pub sv_used: usize,
    /// Server connections logging in.
    pub sv_login: usize,
}

/// Stops the PgBouncers that test processes now gone left behind (a test killed before its
/// [`PgBouncer`] was dropped), and removes their directories. Every start runs it first.
/// A PgBouncer is signalled only if its pid (`owner.pid` in its directory) is a `pgbouncer`
/// process whose command line names that directory, so a reused pid is never signalled.
pub fn reap_orphans() -> usize {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return 0;
    };
    let mut stopped = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(owner) = name
            .to_str()
            .and_then(|n| n.strip_prefix(DIR_PREFIX))
            .and_then(|n| n.strip_prefix('-'))
            .and_then(|n| n.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if alive(owner) {
            continue;
        }
        let pid = std::fs::read_to_string(entry.path().join("owner.pid"))
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok());
        if let Some(pid) = pid.filter(|&pid| runs_in(pid, &entry.path())) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            stopped += 1;
        }
        let _ = std::fs::remove_dir_all(entry.path());
    }
    stopped
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after = &stat[stat.rfind(')')? + 1..];
            after.split_whitespace().next().map(|state| state != "Z")
        })
        .unwrap_or(false)
}

/// Whether `pid` is a pgbouncer whose command line names a file in `dir`.
fn runs_in(pid: u32, dir: &Path) -> bool {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    comm.trim() == "pgbouncer"
        && String::from_utf8_lossy(&cmdline).contains(&*dir.to_string_lossy())
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // The owner of a file this process just made is its effective uid.
    let probe = std::env::temp_dir().join(format!(
        "gracepool-pgbouncer-uid-probe-{}",
        std::process::id()
    ));
    let uid = std::fs::File::create(&probe)
        .and_then(|f| f.metadata())
        .map(|m| m.uid());
    let _ = std::fs::remove_file(&probe);
    uid.is_ok_and(|u| u == 0)
}

/// The uid and gid of the `postgres` user, from `/etc/passwd`.
fn postgres_user() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != "postgres" {
            return None;
        }
        let _password = fields.next()?;
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some((uid, gid))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both modes start, forward to the server and answer the admin console; a kill leaves
    /// the port closed, a restart opens it again on the same port, and `SHUTDOWN` ends it.
    #[test]
    fn a_pgbouncer_forwards_answers_the_console_and_restarts() {
        let test = "testkit::pgbouncer::a_pgbouncer_forwards_answers_the_console_and_restarts";
        let Some(pg) = PgServer::start(test) else {
            return;
        };
        for mode in [PoolMode::Session, PoolMode::Transaction] {
            let Some(mut bouncer) = PgBouncer::builder(&pg)
                .mode(mode)
                .default_pool_size(3)
                .start(test)
            else {
                return;
            };
            let (psql, url) = (bouncer.psql.clone(), bouncer.conn_str("through"));
            let through = |sql: &str| {
                let out = Command::new(&psql)
                    .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
                    .arg(&url)
                    .args(["-c", sql])
                    .env("PGCONNECT_TIMEOUT", "10")
                    .stdin(Stdio::null())
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).trim().to_string()
            };
            assert_eq!(through("SELECT 40 + 2"), "42", "{}", bouncer.log_tail(20));
            let pools = bouncer.admin("SHOW POOLS");
            assert!(pools.contains(mode.as_str()), "{pools}");
            let p = bouncer.pools();
            assert!(p.sv_idle + p.sv_used >= 1, "{p:?}");
            bouncer.admin("PAUSE");
            bouncer.admin("RESUME");
            bouncer.admin("RECONNECT");
            let (port, pid) = (bouncer.port(), bouncer.pid().unwrap());
            bouncer.kill();
            assert!(!alive(pid), "killed");
            assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
            bouncer.restart();
            assert_eq!(bouncer.port(), port);
            assert_ne!(bouncer.pid(), Some(pid));
            assert_eq!(through("SELECT 7"), "7", "{}", bouncer.log_tail(20));
            bouncer.admin("SHUTDOWN");
            assert!(
                bouncer.wait_exit(Duration::from_secs(10)),
                "SHUTDOWN ends it"
            );
            assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
        }
    }
}
