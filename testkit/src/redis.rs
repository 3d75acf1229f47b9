//! A throwaway `redis-server` for tests: on 127.0.0.1, on a free port, in a temporary
//! directory, with nothing persisted, run as a child process whose pid the test owns.
//!
//! Everything here is synchronous std code (a small RESP client over a `TcpStream`), so a test
//! can ask the server what it saw from anywhere: inside a runtime, after its runtime is gone, or
//! in a child process that never had one.
//!
//! The server logs at `verbose` level to `redis.log` in its directory, which records how each
//! client left: `Client closed connection ...` when it closed its socket, `Reading from client:
//! Connection reset by peer` when it reset it, and nothing at all when it sent `QUIT` (the server
//! then closes the connection itself). The connections this module makes to ask questions call
//! themselves [`PROBE_NAME`], so their own log lines can be told apart.
//!
//! For failover tests, two servers switch roles: [`RedisServer::replicate`] makes one a replica
//! of the other (`REPLICAOF`), [`RedisServer::promote`] makes it a primary again
//! (`REPLICAOF NO ONE`); clients stay connected through both.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::server::{free_port, require_binary, ServerProcess, TempDir};

/// The client name of the connections this module opens to query the server.
pub const PROBE_NAME: &str = "gracepool-testkit-probe";

/// Server options for replication tests ([`RedisServer::start_with_args`]): a primary starts
/// a replica's full copy at once, instead of waiting 5 s (`repl-diskless-sync-delay`'s default)
/// for more replicas to share it.
pub const FAST_SYNC: &[&str] = &["--repl-diskless-sync-delay", "0"];

/// How long a server may take to start answering.
const START_PATIENCE: Duration = Duration::from_secs(15);

/// A reply in the Redis protocol (RESP2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Status(String),
    /// `-ERR ...`
    Error(String),
    /// `:42`
    Int(i64),
    /// `$n ...`, or `None` for the null bulk string.
    Bulk(Option<Vec<u8>>),
    /// `*n ...`, or `None` for the null array.
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The reply as text: a status, an error, an integer or a bulk string.
    pub fn text(&self) -> String {
        match self {
            Reply::Status(s) | Reply::Error(s) => s.clone(),
            Reply::Int(n) => n.to_string(),
            Reply::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            Reply::Bulk(None) | Reply::Array(None) => String::new(),
            Reply::Array(Some(items)) => {
                items.iter().map(Reply::text).collect::<Vec<_>>().join("\n")
            }
        }
    }
}

/// A connection to a Redis server speaking RESP2 with blocking std I/O. Needs no runtime.
pub struct Probe {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Probe {
    /// Connects to `127.0.0.1:port`, authenticates with `password` if given, and names itself
    /// [`PROBE_NAME`].
    pub fn connect(port: u16, password: Option<&str>) -> std::io::Result<Probe> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_nodelay(true)?;
        let mut probe = Probe {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        };
        if let Some(password) = password {
            probe.expect_ok(&["AUTH", password])?;
        }
        probe.expect_ok(&["CLIENT", "SETNAME", PROBE_NAME])?;
        Ok(probe)
    }

    /// Sends one command and reads its reply. An error reply is `Ok(Reply::Error(..))`.
    pub fn call(&mut self, args: &[&str]) -> std::io::Result<Reply> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        self.writer.write_all(&out)?;
        read_reply(&mut self.reader)
    }

    fn expect_ok(&mut self, args: &[&str]) -> std::io::Result<()> {
        match self.call(args)? {
            Reply::Status(s) if s == "OK" => Ok(()),
            other => Err(std::io::Error::other(format!(
                "{:?} answered {other:?}",
                args.first()
            ))),
        }
    }
}

fn invalid(what: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.into())
}

fn read_reply(r: &mut impl BufRead) -> std::io::Result<Reply> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let line = line.trim_end_matches("\r\n");
    let (kind, rest) = line.split_at(line.len().min(1));
    let number = || {
        rest.parse::<i64>()
            .map_err(|_| invalid(format!("bad length in {line:?}")))
    };
    Ok(match kind {
        "+" => Reply::Status(rest.to_owned()),
        "-" => Reply::Error(rest.to_owned()),
        ":" => Reply::Int(number()?),
        "$" => {
            let n = number()?;
            if n < 0 {
                Reply::Bulk(None)
            } else {
                let mut buf = vec![0; n as usize + 2];
                r.read_exact(&mut buf)?;
                buf.truncate(n as usize);
                Reply::Bulk(Some(buf))
            }
        }
        "*" => {
            let n = number()?;
            if n < 0 {
                Reply::Array(None)
            } else {
                let items = (0..n).map(|_| read_reply(r)).collect::<Result<_, _>>()?;
                Reply::Array(Some(items))
            }
        }
        _ => return Err(invalid(format!("not a RESP2 reply: {line:?}"))),
    })
}

/// `CLIENT LIST` lines of every client of the server on `127.0.0.1:port` but the asking probe.
/// For a process that did not start the server (a child process of a test).
pub fn client_list_at(port: u16, password: Option<&str>) -> std::io::Result<Vec<String>> {
    let mut probe = Probe::connect(port, password)?;
    let me = match probe.call(&["CLIENT", "ID"])? {
        Reply::Int(id) => id,
        other => return Err(invalid(format!("CLIENT ID answered {other:?}"))),
    };
    let list = probe.call(&["CLIENT", "LIST"])?;
    let me = format!("id={me} ");
    Ok(list
        .text()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with(&me))
        .map(str::to_owned)
        .collect())
}

/// A `redis-server` child process on 127.0.0.1, stopped by its pid when dropped (also while a
/// failing test unwinds).
pub struct RedisServer {
    binary: PathBuf,
    port: u16,
    password: Option<String>,
    extra_args: Vec<String>,
    // Declared before `dir`: the process stops before its directory is removed.
    process: Option<ServerProcess>,
    dir: TempDir,
}

impl RedisServer {
    /// Starts a server for `test`, or returns `None` after printing one `SKIPPED` line when
    /// `redis-server` is not installed (a failure under `CI=true`). Panics if the server does
    /// not start answering within 15 s. The binary is looked for in `$GRACEPOOL_REDIS_BIN_DIR`
    /// (`/usr/bin` when unset), then on `PATH`.
    pub fn start(test: &str) -> Option<RedisServer> {
        Self::start_inner(test, None, &[])
    }

    /// Like [`start`](Self::start), with `requirepass password`: clients must authenticate.
    pub fn start_with_password(test: &str, password: &str) -> Option<RedisServer> {
        Self::start_inner(test, Some(password.to_owned()), &[])
    }

    /// Like [`start`](Self::start), with more command-line options for the server (kept
    /// across restarts), such as `["--rename-command", "QUIT", ""]`.
    pub fn start_with_args(test: &str, args: &[&str]) -> Option<RedisServer> {
        Self::start_inner(test, None, args)
    }

    fn start_inner(test: &str, password: Option<String>, args: &[&str]) -> Option<RedisServer> {
        // GRACEPOOL_REDIS_BIN_DIR: another build of the server (a newer Redis, Valkey's
        // compatible binary), looked for there instead of /usr/bin.
        let dir = std::env::var("GRACEPOOL_REDIS_BIN_DIR").unwrap_or_else(|_| "/usr/bin".into());
        let binary = require_binary("redis-server", &[&dir], "redis-server", test)?;
        let mut server = RedisServer {
            binary,
            port: free_port(),
            password,
            extra_args: args.iter().map(|a| a.to_string()).collect(),
            process: None,
            dir: TempDir::new("gracepool-redis"),
        };
        server.launch();
        Some(server)
    }

    /// Starts the process on `self.port` and waits until it answers `PING`.
    fn launch(&mut self) {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--save", "", "--appendonly", "no"])
            .args(["--loglevel", "verbose"])
            .arg("--logfile")
            .arg(self.log_path())
            .args(["--daemonize", "no"]);
        if let Some(password) = &self.password {
            cmd.args(["--requirepass", password]);
        }
        cmd.args(&self.extra_args);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display()));
        let mut process = ServerProcess::new(child, "redis-server");
        let until = Instant::now() + START_PATIENCE;
        loop {
            if let Ok(mut probe) = Probe::connect(self.port, self.password.as_deref()) {
                if probe.call(&["PING"]).ok() == Some(Reply::Status("PONG".into())) {
                    break;
                }
            }
            if process.exited() || Instant::now() > until {
                process.stop();
                panic!(
                    "redis-server on port {} did not start answering; its log:\n{}",
                    self.port,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.process = Some(process);
    }

    /// The port it listens on (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ServerProcess::pid)
    }

    /// A URL for clients: `redis://127.0.0.1:PORT/`, with the password if there is one.
    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/", self.port),
            None => format!("redis://127.0.0.1:{}/", self.port),
        }
    }

    /// Where the server logs (kept across restarts: a restart appends).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Log lines containing `needle` and not written about one of this module's probes.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        let probe = format!("name={PROBE_NAME} ");
        self.log()
            .lines()
            .filter(|l| l.contains(needle) && !l.contains(&probe))
            .map(str::to_owned)
            .collect()
    }

    /// Its temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the server by its pid (`SIGTERM`, then `SIGKILL` after 10 s) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop();
        }
    }

    /// Stops the server by its pid and starts it again on the same port; returns how long it
    /// was not answering (from the stop until it answers `PING` again). Nothing survives a
    /// restart: the server persists nothing.
    pub fn restart(&mut self) -> Duration {
        let started = Instant::now();
        self.stop();
        self.launch();
        started.elapsed()
    }

    /// A fresh probe connection (panics if the server does not accept one).
    pub fn probe(&self) -> Probe {
        Probe::connect(self.port, self.password.as_deref())
            .unwrap_or_else(|e| panic!("cannot connect to redis-server on {}: {e}", self.port))
    }

    /// Sends one command on a fresh probe connection and returns the reply.
    pub fn call(&self, args: &[&str]) -> Reply {
        self.probe()
            .call(args)
            .unwrap_or_else(|e| panic!("{args:?} to redis-server on {}: {e}", self.port))
    }

    /// `CLIENT LIST` lines of every client but the asking probe.
    pub fn client_list(&self) -> Vec<String> {
        client_list_at(self.port, self.password.as_deref())
            .unwrap_or_else(|e| panic!("CLIENT LIST on redis-server {}: {e}", self.port))
    }

    /// How many clients are connected, the asking probe excluded.
    pub fn clients(&self) -> usize {
        self.client_list().len()
    }

    /// `CLIENT KILL`s every connected client but the asking probe; returns how many.
    pub fn kill_clients(&self) -> usize {
        match self.call(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]) {
            Reply::Int(n) => n as usize,
            other => panic!("CLIENT KILL answered {other:?}"),
        }
    }

    /// One field of `INFO section` (`connected_clients` of `clients`, ...).
    pub fn info(&self, section: &str, field: &str) -> Option<String> {
        let text = self.call(&["INFO", section]).text();
        let prefix = format!("{field}:");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix).map(|v| v.trim().to_owned()))
    }

    /// Makes this server a replica of `primary` (`REPLICAOF 127.0.0.1 <port>`, with
    /// `masterauth` when `primary` has a password). From then on it refuses writes with
    /// `READONLY` (`replica-read-only yes`, the default), its connected clients included (none
    /// is closed), and it re-syncs its data from `primary` in the background (see
    /// [`wait_for_sync`](Self::wait_for_sync); a primary started without [`FAST_SYNC`] waits
    /// 5 s before it sends a full copy).
    pub fn replicate(&self, primary: &RedisServer) {
        if let Some(password) = &primary.password {
            let set = self.call(&["CONFIG", "SET", "masterauth", password]);
            assert_eq!(set, Reply::Status("OK".into()), "CONFIG SET masterauth");
        }
        let port = primary.port.to_string();
        let said = self.call(&["REPLICAOF", "127.0.0.1", &port]);
        assert!(
            matches!(&said, Reply::Status(s) if s.starts_with("OK")),
            "REPLICAOF 127.0.0.1 {port} answered {said:?}"
        );
    }

    /// Makes this server a primary (`REPLICAOF NO ONE`): it takes writes at once, keeping the
    /// data it has; its clients stay connected.
    pub fn promote(&self) {
        let said = self.call(&["REPLICAOF", "NO", "ONE"]);
        assert!(
            matches!(&said, Reply::Status(s) if s.starts_with("OK")),
            "REPLICAOF NO ONE answered {said:?}"
        );
    }

    /// The server's role, from `INFO replication`: `master` or `slave`.
    pub fn role(&self) -> String {
        self.info("replication", "role").unwrap_or_default()
    }

    /// Waits until this replica is in sync with its primary (`master_link_status:up`: the
    /// initial copy is loaded and the link streams); returns how long that took. Panics after
    /// 15 s.
    pub fn wait_for_sync(&self) -> Duration {
        let started = Instant::now();
        while self.info("replication", "master_link_status").as_deref() != Some("up") {
            assert!(
                started.elapsed() < START_PATIENCE,
                "redis-server on {} not in sync with its primary after {START_PATIENCE:?}; its log:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        started.elapsed()
    }

    /// How many times a command (lower case: `quit`, `ping`, `set`, ...) was called since the
    /// server started, from `INFO commandstats`.
    pub fn command_calls(&self, command: &str) -> u64 {
        let Some(stats) = self.info("commandstats", &format!("cmdstat_{command}")) else {
            return 0;
        };
        stats
            .split(',')
            .find_map(|kv| kv.strip_prefix("calls="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A replica follows its primary and refuses writes; promoted, it takes them; the old
    /// primary, made a replica of it, refuses writes on a connection opened before the switch.
    #[test]
    fn servers_switch_roles() {
        let test = "testkit::redis::servers_switch_roles";
        let (Some(a), Some(b)) = (
            RedisServer::start_with_args(test, FAST_SYNC),
            RedisServer::start_with_args(test, FAST_SYNC),
        ) else {
            return;
        };
        let mut on_a = a.probe();
        assert_eq!(a.role(), "master");
        b.replicate(&a);
        on_a.call(&["SET", "k", "1"]).unwrap();
        b.wait_for_sync();
        assert_eq!(b.role(), "slave");
        assert!(matches!(b.call(&["SET", "k", "2"]), Reply::Error(e) if e.starts_with("READONLY")));

        b.promote();
        a.replicate(&b);
        assert_eq!(b.call(&["SET", "k", "3"]), Reply::Status("OK".into()));
        let refused = on_a.call(&["SET", "k", "4"]).unwrap();
        assert!(
            matches!(&refused, Reply::Error(e) if e.starts_with("READONLY")),
            "{refused:?}"
        );
        a.wait_for_sync();
        assert_eq!(on_a.call(&["GET", "k"]).unwrap().text(), "3");
        a.promote();
        assert_eq!(
            on_a.call(&["SET", "k", "5"]).unwrap(),
            Reply::Status("OK".into())
        );
    }
}
