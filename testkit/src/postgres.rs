//! A throwaway PostgreSQL 15 server for tests: its own data directory in a temporary
//! directory, a free port on 127.0.0.1, a log file the test can read, and stopped by its pid
//! when the test ends (also when it fails).
//!
//! ```no_run
//! use gracepool_testkit::postgres::PgServer;
//!
//! let Some(pg) = PgServer::start("my_test") else { return }; // one SKIPPED line
//! let url = pg.conn_str("my_test");
//! // ... connect with `url`, then ask the server what it saw:
//! assert_eq!(pg.unexpected_eofs(Some("my_test")), 0);
//! ```
//!
//! The server is the `postgres` binary itself, started as a child of the test, so the test owns
//! its pid. `initdb` and `postgres` refuse to run as root: under root both run as the
//! unprivileged `postgres` user (the one Debian's package creates), and the temporary directory
//! is handed to that user.
//!
//! What the server is told, and why:
//! - `log_min_messages = debug1`: PostgreSQL then logs `unexpected EOF on client connection`
//!   for every client that went away without its Terminate message: the server's own witness
//!   of a connection that did not say goodbye.
//! - `log_disconnections = on` and a log line prefix carrying the application name: each
//!   connection's end is logged under the name its client gave, so a test counts its own.
//! - trust authentication for [`USER`], and a password for [`PASSWORD_USER`] (a test of bad
//!   credentials needs one that can be refused); replication connections for [`USER`] too, so
//!   that [`PgServer::start_standby`] can copy the server (`wal_level = replica` and
//!   `max_wal_senders = 10` are PostgreSQL 15's defaults).
//!
//! For failover tests, [`PgServer::start_standby`] starts a streaming standby of a running
//! server (`pg_basebackup -R` into its own directory, on its own port);
//! [`promote`](PgServer::promote) makes it a primary, [`set_read_only`](PgServer::set_read_only)
//! turns a primary read-only for every session, open ones included (a demoted primary, without
//! a restart), and [`stop`](PgServer::stop) ends one (fast shutdown, by pid).
//! [`multi_host_conn_str`] names several servers in one connection string, as an application
//! that follows its primary does.
//!
//! [`PgServer::start_with_tls`] starts one with `ssl = on`, its certificate made by the test
//! ([`TlsFiles`]: a test CA, the server's certificate that CA signed, and a second, unrelated
//! CA), and a role, [`TLS_USER`], that the server admits over TLS only (`hostssl`), so that a
//! client falling back to plaintext is refused by the server itself.
//!
//! Helpers speak to the server with `psql` (from the same package), so they work from any
//! thread and need no runtime: also after the test's runtime is gone.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::server::{free_port, require_binary, under_ci, ServerProcess, TempDir};

/// Where Debian's `postgresql-15` package puts the server's binaries.
pub const BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// The user every test connects as, with trust authentication.
pub const USER: &str = "gracepool";

/// A second user, who must give [`PASSWORD`].
pub const PASSWORD_USER: &str = "gracepool_pw";

/// [`PASSWORD_USER`]'s password.
pub const PASSWORD: &str = "right-password";

/// A user admitted over TLS only (`hostssl ... trust`, `hostnossl ... reject`), on servers
/// started with [`PgServer::start_with_tls`].
pub const TLS_USER: &str = "gracepool_tls";

/// The names the server certificate of [`PgServer::start_with_tls`] is valid for.
pub const TLS_NAMES: &[&str] = &["127.0.0.1", "localhost"];

/// The application name the helpers' own `psql` connections use (they end cleanly, and the
/// counts of [`PgServer::unexpected_eofs`] leave them out when asked about another name).
pub const HELPER_APP: &str = "gracepool-testkit";

/// The start of every server directory's name: `gracepool-pg-<test pid>-<n>`.
const DIR_PREFIX: &str = "gracepool-pg";

/// How long a start (or a restart) may take before the test fails.
const START_PATIENCE: Duration = Duration::from_secs(30);

/// A PostgreSQL server owned by the test. Dropping it stops the server (fast shutdown, by
/// pid) and removes its data directory.
pub struct PgServer {
    // Declared before `dir`: the server stops before its directory is removed.
    process: Option<ServerProcess>,
    dir: TempDir,
    bin: PathBuf,
    port: u16,
    owner: Option<(u32, u32)>,
    tls: Option<TlsFiles>,
    /// `-c` settings given after the test kit's own (the later of two wins).
    settings: Vec<String>,
}

/// The certificates of a server started with [`PgServer::start_with_tls`]: PEM files in the
/// server's temporary directory, gone with it.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The test CA's certificate: the root that verifies the server (libpq's `sslrootcert`).
    pub ca_cert: PathBuf,
    /// A second CA's certificate, which signed nothing the server holds: a client that trusts
    /// only this one must refuse the server.
    pub other_ca_cert: PathBuf,
    /// The server's certificate, signed by the test CA (`ssl_cert_file`).
    pub server_cert: PathBuf,
    /// The server's private key (`ssl_key_file`): mode 0600, owned by the server's user.
    pub server_key: PathBuf,
    /// The names the server's certificate is valid for (IP addresses as IP entries).
    pub names: Vec<String>,
}

impl PgServer {
    /// Starts a fresh server for `test`. Returns `None` after printing one
    /// `SKIPPED <test>: ...` line when PostgreSQL is not installed; panics instead under
    /// `CI=true`, and when the server cannot be started.
    pub fn start(test: &str) -> Option<PgServer> {
        PgServer::start_inner(test, None, &[]).map(|(server, _)| server)
    }

    /// [`start`](PgServer::start), with server settings of the test's own given after the
    /// test kit's (each `(name, value)` as `postgres -c name=value`; a later setting wins, so
    /// `("max_connections", "69")` replaces the test kit's 100). They hold across restarts,
    /// and a standby of this server is started with them too. Skips and fails as
    /// [`start`](PgServer::start) does.
    pub fn start_with_settings(test: &str, settings: &[(&str, &str)]) -> Option<PgServer> {
        PgServer::start_inner(test, None, settings).map(|(server, _)| server)
    }

    /// Starts a fresh server for `test` with TLS on (`ssl = on`), its certificate valid for
    /// [`TLS_NAMES`] and signed by a test CA made for it; see [`TlsFiles`]. Plaintext
    /// connections are still accepted, but for [`TLS_USER`]. Skips and fails as
    /// [`start`](PgServer::start) does.
    pub fn start_with_tls(test: &str) -> Option<(PgServer, TlsFiles)> {
        PgServer::start_with_tls_for(test, TLS_NAMES)
    }

    /// [`start_with_tls`](PgServer::start_with_tls), with a server certificate valid for
    /// `names` only (DNS names, or IP addresses such as `127.0.0.1`): for a test of a host name
    /// the certificate does not list.
    pub fn start_with_tls_for(test: &str, names: &[&str]) -> Option<(PgServer, TlsFiles)> {
        PgServer::start_inner(test, Some(names), &[])
            .map(|(server, tls)| (server, tls.expect("started with TLS")))
    }

    fn start_inner(
        test: &str,
        tls_names: Option<&[&str]>,
        settings: &[(&str, &str)],
    ) -> Option<(PgServer, Option<TlsFiles>)> {
        let postgres = require_binary("postgres", &[BIN_DIR], "postgresql", test)?;
        let bin = postgres
            .parent()
            .expect("a binary found in a directory has a parent")
            .to_path_buf();
        for tool in ["initdb", "psql"] {
            if !bin.join(tool).is_file() {
                assert!(
                    !under_ci(),
                    "{test}: `{tool}` is missing beside {}; CI=true, so this is a failure",
                    postgres.display()
                );
                // Straight to stdout, past the test harness's capture, as `require_binary`
                // does: a skip must be seen.
                use std::io::Write;
                let _ = writeln!(
                    std::io::stdout(),
                    "SKIPPED {test}: `{tool}` not found beside {} (install the Debian package `postgresql`)",
                    postgres.display()
                );
                return None;
            }
        }
        let owner = if running_as_root() {
            Some(postgres_user().unwrap_or_else(|| {
                panic!("{test}: running as root, and there is no `postgres` user to run PostgreSQL as (the Debian package `postgresql` creates it)")
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
        let tls = tls_names.map(|names| write_tls_files(dir.path(), names, owner));
        let mut server = PgServer {
            process: None,
            dir,
            bin,
            port: 0,
            owner,
            tls,
            settings: settings
                .iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect(),
        };
        server.initdb();
        // A port found free may be taken before the server binds it: try a few.
        for attempt in 0..5 {
            server.port = free_port();
            match server.spawn() {
                Ok(()) => break,
                Err(log) if attempt < 4 && log.contains("could not bind") => continue,
                Err(log) => panic!("{test}: PostgreSQL did not start; its log ends with:\n{log}"),
            }
        }
        server.psql_as_helper(&format!(
            "CREATE ROLE {PASSWORD_USER} LOGIN PASSWORD '{PASSWORD}'"
        ));
        if server.tls.is_some() {
            server.psql_as_helper(&format!("CREATE ROLE {TLS_USER} LOGIN"));
        }
        let tls = server.tls.clone();
        Some((server, tls))
    }

    /// The port the server listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's pid (the postmaster's).
    pub fn pid(&self) -> u32 {
        self.process
            .as_ref()
            .expect("the server is running between starts")
            .pid()
    }

    /// A key-value connection string for [`USER`] on database `postgres`, naming the client
    /// `app` (its connections are then counted under that name in the log).
    pub fn conn_str(&self, app: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={USER} dbname=postgres application_name={app}",
            self.port
        )
    }

    /// A key-value connection string for `user` (no password) on database `postgres`, naming
    /// the client `app`: for [`TLS_USER`], or [`USER`] with another host or `sslmode`.
    pub fn conn_str_for(&self, user: &str, app: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} dbname=postgres application_name={app}",
            self.port
        )
    }

    /// The certificates, on a server started with [`start_with_tls`](PgServer::start_with_tls).
    pub fn tls_files(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// A connection string for `user` with `password`, naming the client `app`.
    pub fn conn_str_as(&self, user: &str, password: &str, app: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname=postgres application_name={app}",
            self.port
        )
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The last `n` lines of the log, for a failure message.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Log lines `unexpected EOF on client connection` (a client that left without sending
    /// Terminate), of connections named `app`, or of all connections with `None`.
    pub fn unexpected_eofs(&self, app: Option<&str>) -> usize {
        self.count_lines("unexpected EOF on client connection", app)
    }

    /// Log lines `disconnection:` (every connection's end, whatever the cause), of connections
    /// named `app`, or of all connections with `None`.
    pub fn disconnections(&self, app: Option<&str>) -> usize {
        self.count_lines("disconnection: session time", app)
    }

    /// Sessions of `app` (or of all with `None`) that the server ended itself: terminated by
    /// `pg_terminate_backend` or a fast shutdown (`FATAL: terminating connection ...`).
    pub fn ended_by_server(&self, app: Option<&str>) -> usize {
        self.count_lines("FATAL:  terminating connection", app)
    }

    /// Ends of `app`'s connections that came with the client's Terminate message: every
    /// logged disconnection but those without Terminate (an unexpected EOF) and those the
    /// server ended itself.
    pub fn goodbyes(&self, app: &str) -> usize {
        self.disconnections(Some(app))
            .saturating_sub(self.unexpected_eofs(Some(app)))
            .saturating_sub(self.ended_by_server(Some(app)))
    }

    /// The server's side of a pool's graceful close, for the connections named `app`: once
    /// every session of `app` has ended (waits up to 5 s), each of the `made` connections the
    /// pool made ended with the client's Terminate, but the `killed` that the server ended
    /// itself; and every session beyond the `made` is a creation abandoned half-made (the
    /// server saw its client vanish, an unexpected EOF), at most `free` of them. A graceful
    /// close abandons none (creations under way finish and say goodbye, up to the close
    /// deadline): pass 0. Read from one snapshot of the log. Returns how many creations were abandoned;
    /// panics, with the log's tail, on anything else.
    pub fn assert_goodbyes(&self, app: &str, made: usize, killed: usize, free: usize) -> usize {
        self.wait_for_backends_of(app, 0, Duration::from_secs(5));
        let log = self.log();
        let tag = format!(" app={app} ");
        let count = |needle: &str| {
            log.lines()
                .filter(|l| l.contains(needle) && l.contains(tag.as_str()))
                .count()
        };
        let sessions = count("disconnection: session time");
        let eofs = count("unexpected EOF on client connection");
        let by_server = count("FATAL:  terminating connection");
        let tail = || {
            let lines: Vec<&str> = log.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        assert!(
            sessions >= made,
            "{sessions} sessions of {app} ended, for {made} connections made\n{}",
            tail()
        );
        let abandoned = sessions - made;
        assert!(
            abandoned <= free,
            "{abandoned} sessions of {app} beyond the {made} made, {free} slots free\n{}",
            tail()
        );
        assert_eq!(by_server, killed, "sessions the server ended\n{}", tail());
        // Every session without Terminate is an abandoned creation, none a made connection.
        assert_eq!(
            eofs,
            abandoned,
            "sessions of {app} without Terminate\n{}",
            tail()
        );
        abandoned
    }

    fn count_lines(&self, needle: &str, app: Option<&str>) -> usize {
        let tag = app.map(|a| format!(" app={a} "));
        self.log()
            .lines()
            .filter(|l| l.contains(needle))
            .filter(|l| tag.as_ref().is_none_or(|t| l.contains(t.as_str())))
            .count()
    }

    /// Client backends in `pg_stat_activity`, the helpers' own left out (also those of
    /// earlier helper calls that are still on their way out).
    pub fn client_backends(&self) -> usize {
        self.psql_as_helper(&format!(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE backend_type = 'client backend' AND application_name <> '{HELPER_APP}'"
        ))
        .parse()
        .expect("count(*) is a number")
    }

    /// Client backends of connections named `app`.
    pub fn client_backends_of(&self, app: &str) -> usize {
        self.psql_as_helper(&format!(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE backend_type = 'client backend' AND application_name = '{app}'"
        ))
        .parse()
        .expect("count(*) is a number")
    }

    /// Waits up to `patience` for `app`'s client backends to number `n` at most (a backend
    /// leaves `pg_stat_activity` a moment after its session's end is logged); returns how many
    /// there are.
    pub fn wait_for_backends_of(&self, app: &str, n: usize, patience: Duration) -> usize {
        let until = Instant::now() + patience;
        loop {
            let now = self.client_backends_of(app);
            if now <= n || Instant::now() > until {
                return now;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `pg_terminate_backend` on every client backend but the helpers'; returns how many
    /// were told to end.
    pub fn terminate_all_backends(&self) -> usize {
        self.psql_as_helper(&format!(
            "SELECT count(*) FROM ( \
               SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity \
               WHERE backend_type = 'client backend' AND application_name <> '{HELPER_APP}' \
             ) t WHERE ok"
        ))
        .parse()
        .expect("count(*) is a number")
    }

    /// Runs `sql` through `psql` as [`USER`] and returns its unaligned, tuples-only output.
    /// Panics (with the server's log tail) when `psql` fails.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_as_helper(sql)
    }

    /// Stops the server with a fast shutdown (`SIGINT` to its pid: clients are disconnected,
    /// a checkpoint is written), starts it again on the same port and data directory, and
    /// returns how long it did not accept connections: from the signal to ready again.
    pub fn restart_fast(&mut self) -> Duration {
        let down = Instant::now();
        self.stop_fast();
        if let Err(log) = self.spawn() {
            panic!("PostgreSQL did not come back after a fast restart; its log ends with:\n{log}");
        }
        down.elapsed()
    }

    fn stop_fast(&mut self) {
        if let Some(mut process) = self.process.take() {
            if !process.exited() {
                process.signal("INT");
                let until = Instant::now() + Duration::from_secs(15);
                while !process.exited() && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            // Dropping it escalates to SIGTERM and SIGKILL if it has not exited by now.
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, tool: &str) -> Command {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(self.bin.join(tool));
        cmd.current_dir(self.dir.path()).stdin(Stdio::null());
        if let Some((uid, gid)) = self.owner {
            // std drops root's supplementary groups when it sets the uid.
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    fn initdb(&self) {
        let out = self
            .command("initdb")
            .arg("-D")
            .arg(self.data_dir())
            .args([
                "-U",
                USER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ])
            .output()
            .expect("initdb can be run");
        assert!(
            out.status.success(),
            "initdb failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Trust for the test user and the helpers; a password for the second user; with TLS,
        // the TLS user over TLS only (the first matching line decides).
        let tls_only = if self.tls.is_some() {
            format!(
                "hostssl all {TLS_USER} 127.0.0.1/32 trust\n\
                 hostnossl all {TLS_USER} 127.0.0.1/32 reject\n"
            )
        } else {
            String::new()
        };
        let hba = format!(
            "local all all trust\n\
             {tls_only}\
             host all {USER} 127.0.0.1/32 trust\n\
             host all all 127.0.0.1/32 scram-sha-256\n\
             host replication {USER} 127.0.0.1/32 trust\n"
        );
        std::fs::write(self.data_dir().join("pg_hba.conf"), hba)
            .expect("pg_hba.conf is writable by its owner or root");
    }

    /// Starts `postgres` on `self.port` and waits until it accepts connections. On failure,
    /// returns the log's tail.
    fn spawn(&mut self) -> Result<(), String> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("the log file can be opened");
        let log_err = log.try_clone().expect("a log file handle can be cloned");
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-c", &format!("port={}", self.port)])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args([
                "-c",
                &format!("unix_socket_directories={}", self.dir.path().display()),
            ])
            .args(["-c", "log_min_messages=debug1"])
            .args(["-c", "log_disconnections=on"])
            .args(["-c", "log_line_prefix=%m [%p] app=%a "])
            .args(["-c", "logging_collector=off"])
            // A throwaway server: durability is not the point, speed of start and stop is.
            .args(["-c", "fsync=off"])
            .args(["-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off"])
            .args(["-c", "shared_buffers=16MB"])
            .args(["-c", "max_connections=100"])
            .args(self.tls_settings())
            .args(self.settings.iter().flat_map(|s| ["-c", s.as_str()]))
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .expect("postgres can be run");
        let mut process = ServerProcess::new(child, "postgres");
        let until = Instant::now() + START_PATIENCE;
        loop {
            if process.exited() {
                return Err(self.log_tail(30));
            }
            if self.ready(process.pid()) {
                break;
            }
            if Instant::now() > until {
                drop(process);
                return Err(format!(
                    "not ready after {START_PATIENCE:?}\n{}",
                    self.log_tail(30)
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        self.process = Some(process);
        Ok(())
    }

    /// `-c` settings turning TLS on, for a server started with TLS (`ssl = off` otherwise, the
    /// default).
    fn tls_settings(&self) -> Vec<String> {
        let Some(tls) = &self.tls else {
            return Vec::new();
        };
        [
            "ssl=on".to_owned(),
            format!("ssl_cert_file={}", tls.server_cert.display()),
            format!("ssl_key_file={}", tls.server_key.display()),
        ]
        .into_iter()
        .flat_map(|setting| ["-c".to_owned(), setting])
        .collect()
    }

    /// Whether the postmaster `pid` says it is ready: the status line of `postmaster.pid`
    /// (its 8th line) reads `ready` once the server accepts connections.
    fn ready(&self, pid: u32) -> bool {
        let Ok(text) = std::fs::read_to_string(self.data_dir().join("postmaster.pid")) else {
            return false;
        };
        let lines: Vec<&str> = text.lines().collect();
        lines.first().map(|l| l.trim()) == Some(pid.to_string().as_str())
            && lines.get(7).map(|l| l.trim()) == Some("ready")
    }

    fn psql_as_helper(&self, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", USER, "-d", "postgres", "-c", sql])
            .env("PGAPPNAME", HELPER_APP)
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .output()
            .expect("psql can be run");
        assert!(
            out.status.success(),
            "psql failed on `{sql}`: {}\nserver log ends with:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_tail(20)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

/// Streaming replication and the switches of a failover: a standby, its promotion, a primary
/// turned read-only, a primary stopped.
impl PgServer {
    /// Starts a streaming standby of this server for `test`: `pg_basebackup -R` (its
    /// `--write-recovery-conf`: `standby.signal`, and `primary_conninfo` pointing here) into a
    /// fresh temporary directory, then `postgres` on a free port of its own, with this server's
    /// settings (but TLS: a standby is started without it). Returns once the standby accepts
    /// connections (a hot standby, read-only) and streams from this server. Returns `None`
    /// after one `SKIPPED <test>: ...` line when `pg_basebackup` is missing (panics instead
    /// under `CI=true`); panics when the copy or the start fails.
    pub fn start_standby(&self, test: &str) -> Option<PgServer> {
        if !tool_beside(&self.bin, "pg_basebackup", test) {
            return None;
        }
        let dir = TempDir::new(DIR_PREFIX);
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("root can hand the temporary directory to the postgres user");
        }
        let mut standby = PgServer {
            process: None,
            dir,
            bin: self.bin.clone(),
            port: 0,
            owner: self.owner,
            tls: None,
            settings: self.settings.clone(),
        };
        let out = standby
            .command("pg_basebackup")
            .arg("-D")
            .arg(standby.data_dir())
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER])
            .args([
                "--write-recovery-conf",
                "--wal-method=stream",
                "--checkpoint=fast",
                "--no-sync",
            ])
            // Its connections, and the standby's walreceiver (whose `primary_conninfo` is copied
            // from them), are the helpers' in this server's log counts.
            .env("PGAPPNAME", HELPER_APP)
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .expect("pg_basebackup can be run");
        assert!(
            out.status.success(),
            "{test}: pg_basebackup failed ({}):\n{}{}\nthe primary's log ends with:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail(20)
        );
        for attempt in 0..5 {
            standby.port = free_port();
            match standby.spawn() {
                Ok(()) => break,
                Err(log) if attempt < 4 && log.contains("could not bind") => continue,
                Err(log) => {
                    panic!("{test}: the standby did not start; its log ends with:\n{log}")
                }
            }
        }
        let until = Instant::now() + START_PATIENCE;
        while standby.psql_as_helper("SELECT status FROM pg_stat_wal_receiver") != "streaming" {
            assert!(
                Instant::now() < until,
                "{test}: the standby does not stream after {START_PATIENCE:?}; its log ends with:\n{}",
                standby.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(standby)
    }

    /// Whether the server is a standby (`pg_is_in_recovery()`).
    pub fn is_in_recovery(&self) -> bool {
        self.psql_as_helper("SELECT pg_is_in_recovery()") == "t"
    }

    /// Promotes this standby to a primary (`pg_promote`, which waits until the promotion is
    /// done: the server then takes writes, from new sessions and open ones alike). Returns how
    /// long it took. Panics if the server is not a standby or does not finish within 30 s.
    pub fn promote(&self) -> Duration {
        let started = Instant::now();
        let promoted = self.psql_as_helper("SELECT pg_promote(true, 30)");
        assert_eq!(
            promoted,
            "t",
            "pg_promote did not finish; the log ends with:\n{}",
            self.log_tail(20)
        );
        started.elapsed()
    }

    /// Turns the server read-only, or back (`ALTER SYSTEM SET default_transaction_read_only`,
    /// then a reload), as a demoted primary that keeps running is: every transaction begun
    /// afterwards is read-only and a write fails with `25006`, in open sessions too (each
    /// picks the setting up at its next statement: nothing is closed), and a client asking for
    /// `target_session_attrs=read-write` skips the server. Returns once a new session sees the
    /// setting; open sessions follow within moments (each backend reloads when signalled).
    pub fn set_read_only(&self, on: bool) {
        let value = if on { "on" } else { "off" };
        // ALTER SYSTEM runs in a read-only transaction too, and outside any block.
        self.psql_as_helper(&format!(
            "ALTER SYSTEM SET default_transaction_read_only = {value}"
        ));
        self.psql_as_helper("SELECT pg_reload_conf()");
        let until = Instant::now() + Duration::from_secs(10);
        while self.psql_as_helper("SHOW default_transaction_read_only") != value {
            assert!(
                Instant::now() < until,
                "default_transaction_read_only is not {value} after a reload; the log ends with:\n{}",
                self.log_tail(20)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until this standby has replayed everything `primary` wrote until now (a
    /// `CHECKPOINT` there first, so that every commit, asynchronous ones included, is flushed
    /// and sent); returns how long that took. Panics after 10 s.
    pub fn wait_for_replay_of(&self, primary: &PgServer) -> Duration {
        let started = Instant::now();
        primary.psql_as_helper("CHECKPOINT");
        let lsn = primary.psql_as_helper("SELECT pg_current_wal_flush_lsn()");
        let until = started + Duration::from_secs(10);
        let caught_up = format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn");
        while self.psql_as_helper(&caught_up) != "t" {
            assert!(
                Instant::now() < until,
                "the standby has not replayed {lsn} after 10 s; its log ends with:\n{}",
                self.log_tail(20)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        started.elapsed()
    }

    /// Stops the server with a fast shutdown (`SIGINT` to its pid: sessions are ended with
    /// `57P01`, a standby streaming from it receives everything written first) and waits for
    /// it to exit; returns how long that took. The server stays down: the data directory is
    /// removed when the `PgServer` is dropped.
    pub fn stop(&mut self) -> Duration {
        let started = Instant::now();
        self.stop_fast();
        started.elapsed()
    }
}

/// A key-value connection string naming every server in `servers`, in order
/// (`host=127.0.0.1,127.0.0.1 port=P1,P2`), for [`USER`] on database `postgres`, the client
/// named `app`, with `target_session_attrs=read-write`: a client tries the servers in order
/// and keeps the first that takes writes (a primary that is not read-only), as libpq does.
pub fn multi_host_conn_str(servers: &[&PgServer], app: &str) -> String {
    let hosts = vec!["127.0.0.1"; servers.len()].join(",");
    let ports = servers
        .iter()
        .map(|s| s.port.to_string())
        .collect::<Vec<_>>()
        .join(",");
    format!(
        "host={hosts} port={ports} user={USER} dbname=postgres application_name={app} \
         target_session_attrs=read-write"
    )
}

/// Whether `tool` is beside the server's binaries in `bin`; if not, prints one
/// `SKIPPED <test>: ...` line (panics instead under `CI=true`).
fn tool_beside(bin: &Path, tool: &str, test: &str) -> bool {
    if bin.join(tool).is_file() {
        return true;
    }
    assert!(
        !under_ci(),
        "{test}: `{tool}` is missing in {}; CI=true, so this is a failure",
        bin.display()
    );
    // Straight to stdout, past the test harness's capture: a skip must be seen.
    use std::io::Write;
    let _ = writeln!(
        std::io::stdout(),
        "SKIPPED {test}: `{tool}` not found in {} (install the Debian package `postgresql`)",
        bin.display()
    );
    false
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // A fast shutdown: PostgreSQL's default (SIGTERM, "smart") would wait for clients.
        self.stop_fast();
    }
}

impl std::fmt::Debug for PgServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgServer")
            .field("port", &self.port)
            .field("dir", &self.dir.path())
            .finish()
    }
}

/// Makes a test CA, a server certificate for `names` signed by it, and an unrelated CA, and
/// writes them as PEM files into `dir`. The key is mode 0600 and, when the server runs as
/// another user (`owner`), owned by that user: PostgreSQL refuses a key file that others can
/// read, or that is owned by neither itself nor root.
fn write_tls_files(dir: &Path, names: &[&str], owner: Option<(u32, u32)>) -> TlsFiles {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    use std::os::unix::fs::PermissionsExt;

    let make_ca = |name: &str| {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names is valid");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("rcgen makes an ECDSA key");
        let cert = params
            .self_signed(&key)
            .expect("a self-signed CA certificate");
        (cert, Issuer::new(params, key))
    };
    let (ca_cert, ca) = make_ca("gracepool test CA");
    let (other_ca_cert, _) = make_ca("gracepool unrelated test CA");

    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names.clone()).expect("valid server names");
    params
        .distinguished_name
        .push(DnType::CommonName, "gracepool test server");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().expect("rcgen makes an ECDSA key");
    let server_cert = params
        .signed_by(&key, &ca)
        .expect("the CA signs the server certificate");

    let files = TlsFiles {
        ca_cert: dir.join("ca.crt"),
        other_ca_cert: dir.join("other-ca.crt"),
        server_cert: dir.join("server.crt"),
        server_key: dir.join("server.key"),
        names,
    };
    for (path, pem) in [
        (&files.ca_cert, ca_cert.pem()),
        (&files.other_ca_cert, other_ca_cert.pem()),
        (&files.server_cert, server_cert.pem()),
        (&files.server_key, key.serialize_pem()),
    ] {
        std::fs::write(path, pem).expect("the server's directory is writable");
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .expect("root can hand the files to the postgres user");
        }
    }
    std::fs::set_permissions(&files.server_key, std::fs::Permissions::from_mode(0o600))
        .expect("the key file's mode can be set");
    files
}

/// Stops the servers that test processes now gone left behind (a test killed before its
/// [`PgServer`] was dropped: a CI timeout, a `kill -9`), and removes their directories. Every
/// [`PgServer::start`] runs it first. Returns how many servers it stopped.
///
/// A directory is an orphan's when the process named in it (`gracepool-pg-<pid>-<n>`) is gone;
/// its server is stopped only if the pid in its `postmaster.pid` is a `postgres` process whose
/// command line names that very data directory, so a reused pid is never signalled.
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
        let data = entry.path().join("data");
        let postmaster = std::fs::read_to_string(data.join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<u32>().ok()));
        if let Some(pid) = postmaster.filter(|&pid| serves(pid, &data)) {
            let _ = Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status();
            let until = Instant::now() + Duration::from_secs(15);
            while alive(pid) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
            if alive(pid) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
            stopped += 1;
        }
        let _ = std::fs::remove_dir_all(entry.path());
    }
    stopped
}

/// Whether process `pid` exists and is not a zombie (an orphan's zombie may linger where
/// nothing reaps it).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The state follows the command name, which is in parentheses.
            let after = &stat[stat.rfind(')')? + 1..];
            after.split_whitespace().next().map(|state| state != "Z")
        })
        .unwrap_or(false)
}

/// Whether `pid` is a postgres process serving the data directory `data`.
fn serves(pid: u32, data: &std::path::Path) -> bool {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    comm.trim() == "postgres"
        && String::from_utf8_lossy(&cmdline).contains(&*data.to_string_lossy())
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // The owner of a file this process just made is its effective uid.
    let probe = std::env::temp_dir().join(format!("gracepool-uid-probe-{}", std::process::id()));
    let uid = File::create(&probe)
        .and_then(|f| f.metadata())
        .map(|m| m.uid());
    let _ = std::fs::remove_file(&probe);
    uid.is_ok_and(|u| u == 0)
}

/// The uid and gid of the `postgres` user, from `/etc/passwd`.
fn postgres_user() -> Option<(u32, u32)> {
    parse_passwd_entry(&std::fs::read_to_string("/etc/passwd").ok()?, "postgres")
}

fn parse_passwd_entry(passwd: &str, name: &str) -> Option<(u32, u32)> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
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
    use std::path::Path;

    #[test]
    fn passwd_entries_are_parsed() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\npostgres:x:101:104:PostgreSQL administrator,,,:/var/lib/postgresql:/bin/bash\n";
        assert_eq!(parse_passwd_entry(passwd, "postgres"), Some((101, 104)));
        assert_eq!(parse_passwd_entry(passwd, "root"), Some((0, 0)));
        assert_eq!(parse_passwd_entry(passwd, "nobody"), None);
    }

    const ORPHAN_CHILD: &str = "GRACEPOOL_TESTKIT_PG_ORPHAN_CHILD";

    /// A test process that dies without dropping its server leaves the server running; the
    /// next start stops it and removes its directory.
    #[test]
    fn servers_of_dead_test_processes_are_reaped() {
        if std::env::var_os(ORPHAN_CHILD).is_some() {
            let pg = PgServer::start("orphan child").expect("the parent checked the binary");
            println!("orphan {} {}", pg.pid(), pg.dir.path().display());
            std::process::exit(0); // no Drop: the server is left behind
        }
        if require_binary(
            "postgres",
            &[BIN_DIR],
            "postgresql",
            "testkit::postgres::servers_of_dead_test_processes_are_reaped",
        )
        .is_none()
        {
            return;
        }
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "postgres::tests::servers_of_dead_test_processes_are_reaped",
                "--nocapture",
            ])
            .env(ORPHAN_CHILD, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .find_map(|l| l.split_once("orphan ").map(|(_, rest)| rest.to_string()))
            .unwrap_or_else(|| {
                panic!(
                    "the child started no server:\n{stdout}{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        let (pid, dir) = line.split_once(' ').unwrap();
        let pid: u32 = pid.parse().unwrap();
        assert!(alive(pid), "the orphan server outlived its test process");
        assert!(reap_orphans() >= 1);
        assert!(!alive(pid), "the orphan server was stopped");
        assert!(!Path::new(dir).exists(), "its directory was removed");
    }

    /// libpq, an independent client, checks what `start_with_tls` made: `verify-full`
    /// against the test CA passes for 127.0.0.1, fails against the unrelated CA, and the TLS
    /// user is refused over plaintext. The server keeps TLS across a restart.
    #[test]
    fn a_tls_server_is_verified_by_libpq() {
        let Some((mut pg, tls)) =
            PgServer::start_with_tls("testkit::postgres::a_tls_server_is_verified_by_libpq")
        else {
            return;
        };
        let key_mode = std::fs::metadata(&tls.server_key).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&key_mode) & 0o777,
            0o600
        );
        // The port stays the same across a restart.
        let (bin, port) = (pg.bin.clone(), pg.port);
        let psql = |user: &str, sslmode: &str, root: &Path| {
            let out = Command::new(bin.join("psql"))
                .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
                .arg(format!(
                    "host=127.0.0.1 port={} user={user} dbname=postgres sslmode={sslmode} sslrootcert={}",
                    port,
                    root.display()
                ))
                .args(["-c", "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"])
                .env("PGAPPNAME", HELPER_APP)
                .env("PGCONNECT_TIMEOUT", "10")
                .stdin(Stdio::null())
                .output()
                .expect("psql can be run");
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).trim().to_string()
                    + &String::from_utf8_lossy(&out.stderr),
            )
        };
        assert_eq!(
            psql(USER, "verify-full", &tls.ca_cert),
            (true, "t".to_owned())
        );
        assert_eq!(
            psql(TLS_USER, "verify-full", &tls.ca_cert),
            (true, "t".to_owned())
        );
        let (ok, said) = psql(USER, "verify-ca", &tls.other_ca_cert);
        assert!(!ok && said.contains("certificate verify failed"), "{said}");
        let (ok, said) = psql(TLS_USER, "disable", &tls.ca_cert);
        assert!(!ok && said.contains("no encryption"), "{said}");
        // Plaintext is still open to the other users.
        assert_eq!(psql(USER, "disable", &tls.ca_cert), (true, "f".to_owned()));

        pg.restart_fast();
        assert_eq!(
            psql(USER, "verify-full", &tls.ca_cert),
            (true, "t".to_owned())
        );
        assert_eq!(
            pg.tls_files().map(|t| t.names.clone()),
            Some(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        );
    }

    /// A standby copies the primary and follows it; a primary turned read-only refuses
    /// writes (also on a session opened before) and is turned back; a promoted standby takes
    /// writes; a stopped server is gone.
    #[test]
    fn a_standby_follows_and_is_promoted() {
        let test = "testkit::postgres::a_standby_follows_and_is_promoted";
        let Some(mut primary) = PgServer::start(test) else {
            return;
        };
        let Some(standby) = primary.start_standby(test) else {
            return;
        };
        assert_ne!(standby.port(), primary.port());
        assert!(standby.is_in_recovery() && !primary.is_in_recovery());
        primary.psql("CREATE TABLE t (n int); INSERT INTO t VALUES (1)");
        standby.wait_for_replay_of(&primary);
        assert_eq!(standby.psql("SELECT sum(n) FROM t"), "1");

        // A session opened before the switch: it is read-only from its next statement on.
        let mut session = Command::new(primary.bin.join("psql"))
            .args(["-X", "-A", "-t", "-q", "-h", "127.0.0.1", "-p"])
            .arg(primary.port().to_string())
            .args(["-U", USER, "-d", "postgres"])
            .env("PGAPPNAME", "early-session")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = session.stdin.take().unwrap();
        use std::io::Write;
        writeln!(input, "SELECT pg_backend_pid();").unwrap();
        input.flush().unwrap();
        // The session is open before the switch.
        let until = Instant::now() + Duration::from_secs(5);
        while primary.client_backends_of("early-session") == 0 {
            assert!(Instant::now() < until, "the session did not open");
            std::thread::sleep(Duration::from_millis(5));
        }
        primary.set_read_only(true);
        std::thread::sleep(Duration::from_millis(50));
        writeln!(input, "INSERT INTO t VALUES (2);").unwrap();
        drop(input);
        let out = session.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("cannot execute INSERT in a read-only transaction"),
            "{stderr}"
        );

        let took = standby.promote();
        assert!(!standby.is_in_recovery(), "promoted in {took:?}");
        standby.psql("INSERT INTO t VALUES (3)");
        assert_eq!(standby.psql("SELECT sum(n) FROM t"), "4");
        primary.set_read_only(false);
        primary.psql("INSERT INTO t VALUES (5)");
        assert_eq!(primary.psql("SELECT sum(n) FROM t"), "6");

        assert_eq!(
            multi_host_conn_str(&[&primary, &standby], "app"),
            format!(
                "host=127.0.0.1,127.0.0.1 port={},{} user={USER} dbname=postgres \
                 application_name=app target_session_attrs=read-write",
                primary.port(),
                standby.port()
            )
        );
        let pid = primary.pid();
        primary.stop();
        assert!(!alive(pid), "the primary is stopped");
        assert_eq!(standby.psql("SELECT 1"), "1");
    }

    /// A test's own settings replace the test kit's, and hold across a restart.
    #[test]
    fn settings_of_the_test_replace_the_kits() {
        let Some(mut pg) = PgServer::start_with_settings(
            "testkit::postgres::settings_of_the_test_replace_the_kits",
            &[("max_connections", "23"), ("log_connections", "on")],
        ) else {
            return;
        };
        assert_eq!(pg.psql("SHOW max_connections"), "23");
        pg.restart_fast();
        assert_eq!(pg.psql("SHOW max_connections"), "23");
        assert_eq!(pg.psql("SHOW log_connections"), "on");
        assert!(pg.log().contains("connection received: host=127.0.0.1"));
    }

    #[test]
    fn a_server_starts_counts_and_stops() {
        let Some(mut pg) = PgServer::start("testkit::postgres::a_server_starts_counts_and_stops")
        else {
            return;
        };
        assert_eq!(pg.psql("SELECT 1"), "1");
        assert_eq!(pg.client_backends(), 0);
        assert_eq!(pg.terminate_all_backends(), 0);
        let pid = pg.pid();
        let down = pg.restart_fast();
        assert_ne!(pg.pid(), pid, "a restart starts a new postmaster");
        assert!(down < START_PATIENCE);
        assert_eq!(pg.psql("SELECT 2"), "2");
        // The helpers' own connections end with a goodbye.
        assert_eq!(pg.unexpected_eofs(None), 0, "{}", pg.log_tail(20));
        assert!(pg.disconnections(Some(HELPER_APP)) >= 4);
        let data = pg.data_dir();
        assert!(data.starts_with(pg.dir.path()));
        let pid = pg.pid();
        drop(pg);
        assert!(!data.exists(), "the data directory is removed");
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "the server is stopped"
        );
    }
}
