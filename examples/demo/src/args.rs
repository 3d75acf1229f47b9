//! Command-line flags, parsed by hand: a dozen flags do not need a parser crate, and parsing
//! them here keeps every message and the exit status (2 for bad input) in one readable place.

use std::fmt;
use std::str::FromStr;

pub const USAGE: &str = "\
gracepool-demo: a service that restarts cleanly, on a real TCP backend

Starts a small key-value server on 127.0.0.1, then runs a worker that uses a connection pool
on an async runtime and restarts it several times: load, then the runtime torn down while
requests are in flight; the last restart closes the pool gracefully instead. Each worker runs
in a child process so that what it writes to stderr (panics included) can be counted. The
backend counts how every connection ended: with a goodbye, abruptly, or not at all (leaked).

USAGE:
    gracepool-demo [OPTIONS]

OPTIONS:
    --pool <NAME>       gracepool, deadpool or bb8            [default: gracepool]
    --runtime <NAME>    tokio, tokio-current, smol or actix   [default: tokio]
    --workers <N>       concurrent tasks making requests      [default: 8]
    --requests <N>      requests per restart                  [default: 5000]
    --restarts <N>      worker restarts; with 2 or more, the
                        last one is a graceful close          [default: 4]
    --size <N>          the pool's maximum size               [default: 4]
    --min-idle <N>      connections kept ready (gracepool, bb8;
                        deadpool has no such knob)            [default: 0]
    --port <PORT>       the backend's port on 127.0.0.1, 0 for
                        a free one                            [default: 0]
    -h, --help          print this help

Exit status: 0 when the demo ran (whatever a peer pool did), 1 when gracepool broke its
promise or the demo could not run, 2 for bad input.
";

/// The pools the demo can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolKind {
    Gracepool,
    Deadpool,
    Bb8,
}

impl PoolKind {
    pub fn name(self) -> &'static str {
        match self {
            PoolKind::Gracepool => "gracepool",
            PoolKind::Deadpool => "deadpool",
            PoolKind::Bb8 => "bb8",
        }
    }
}

impl FromStr for PoolKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "gracepool" => Ok(PoolKind::Gracepool),
            "deadpool" => Ok(PoolKind::Deadpool),
            "bb8" => Ok(PoolKind::Bb8),
            _ => Err(format!(
                "unknown pool {s:?}: choose gracepool, deadpool or bb8"
            )),
        }
    }
}

/// The runtimes the demo can run its workers on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeKind {
    /// tokio's multi-thread runtime, two workers.
    Tokio,
    /// tokio's current_thread runtime (`#[tokio::test]`'s default).
    TokioCurrent,
    /// An async-executor `Executor` (smol's) run by two threads, async-io timers.
    Smol,
    /// An actix `System` (a current_thread tokio runtime under a `LocalSet`).
    Actix,
}

impl RuntimeKind {
    pub const ALL: &'static [RuntimeKind] = &[
        RuntimeKind::Tokio,
        RuntimeKind::TokioCurrent,
        RuntimeKind::Smol,
        RuntimeKind::Actix,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RuntimeKind::Tokio => "tokio",
            RuntimeKind::TokioCurrent => "tokio-current",
            RuntimeKind::Smol => "smol",
            RuntimeKind::Actix => "actix",
        }
    }

    fn names() -> String {
        RuntimeKind::ALL
            .iter()
            .map(|r| r.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl FromStr for RuntimeKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        RuntimeKind::ALL
            .iter()
            .copied()
            .find(|r| r.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown runtime {s:?}: choose one of {}",
                    RuntimeKind::names()
                )
            })
    }
}

/// How a restart ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ending {
    /// The runtime is dropped while requests are in flight.
    #[default]
    Teardown,
    /// The pool is closed gracefully while requests are in flight, then the runtime dropped.
    Close,
}

impl Ending {
    pub fn name(self) -> &'static str {
        match self {
            Ending::Teardown => "teardown",
            Ending::Close => "close",
        }
    }
}

impl FromStr for Ending {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "teardown" => Ok(Ending::Teardown),
            "close" => Ok(Ending::Close),
            _ => Err(format!("unknown ending {s:?}")),
        }
    }
}

/// What a run is asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    pub pool: PoolKind,
    pub runtime: RuntimeKind,
    pub workers: usize,
    pub requests: u64,
    pub restarts: u32,
    pub size: usize,
    pub min_idle: usize,
    pub port: u16,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            pool: PoolKind::Gracepool,
            runtime: RuntimeKind::Tokio,
            workers: 8,
            requests: 5000,
            restarts: 4,
            size: 4,
            min_idle: 0,
            port: 0,
        }
    }
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    Help,
    Run(Options),
    /// Internal: one restart, in a child process of the demo.
    Worker {
        options: Options,
        addr: std::net::SocketAddr,
        ending: Ending,
    },
}

/// Bad input, with a message for the user.
#[derive(Debug)]
pub struct BadInput(pub String);

impl fmt::Display for BadInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The flag the demo passes to its own child processes.
pub const WORKER_FLAG: &str = "--internal-worker";

pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, BadInput> {
    let mut options = Options::default();
    let mut worker = false;
    let mut addr = None;
    let mut ending = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<String, BadInput> {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| BadInput(format!("{name} needs a value")))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--pool" => options.pool = value("--pool")?.parse().map_err(BadInput)?,
            "--runtime" => options.runtime = value("--runtime")?.parse().map_err(BadInput)?,
            "--workers" => options.workers = count("--workers", &value("--workers")?)?,
            "--requests" => options.requests = count("--requests", &value("--requests")?)?,
            "--restarts" => options.restarts = count("--restarts", &value("--restarts")?)?,
            "--size" => options.size = count("--size", &value("--size")?)?,
            "--min-idle" => {
                let v = value("--min-idle")?;
                options.min_idle = v.parse().map_err(|_| {
                    BadInput(format!(
                        "--min-idle {v:?} is not a number; give a whole number"
                    ))
                })?;
            }
            "--port" => {
                let v = value("--port")?;
                options.port = v.parse().map_err(|_| {
                    BadInput(format!(
                        "--port {v:?} is not a port number: give 0 to 65535 (0 picks a free port)"
                    ))
                })?;
            }
            WORKER_FLAG => worker = true,
            "--addr" => {
                let v = value("--addr")?;
                addr = Some(
                    v.parse()
                        .map_err(|_| BadInput(format!("--addr {v:?} is not an address")))?,
                );
            }
            "--ending" => ending = Some(value("--ending")?.parse().map_err(BadInput)?),
            other => return Err(BadInput(format!("unknown argument {other:?}; see --help"))),
        }
    }
    if options.min_idle > options.size {
        return Err(BadInput(format!(
            "--min-idle {} is larger than --size {}; lower it or raise the size",
            options.min_idle, options.size
        )));
    }
    if options.pool == PoolKind::Bb8 && options.runtime == RuntimeKind::Smol {
        return Err(BadInput(
            "bb8 runs only on tokio (it calls tokio::spawn and tokio's timers): use --runtime tokio, tokio-current or actix, not smol"
                .to_string(),
        ));
    }
    if worker {
        let addr = addr.ok_or_else(|| BadInput(format!("{WORKER_FLAG} needs --addr")))?;
        let ending = ending.ok_or_else(|| BadInput(format!("{WORKER_FLAG} needs --ending")))?;
        return Ok(Command::Worker {
            options,
            addr,
            ending,
        });
    }
    Ok(Command::Run(options))
}

/// A positive whole number.
fn count<T: FromStr + PartialEq + Default>(name: &str, v: &str) -> Result<T, BadInput> {
    match v.parse::<T>() {
        Ok(n) if n != T::default() => Ok(n),
        Ok(_) => Err(BadInput(format!("{name} is 0; it must be at least 1"))),
        Err(_) => Err(BadInput(format!(
            "{name} {v:?} is not a number; give a whole number, at least 1"
        ))),
    }
}

/// The options as flags again, for a child process.
pub fn to_flags(o: &Options) -> Vec<String> {
    vec![
        "--pool".into(),
        o.pool.name().into(),
        "--runtime".into(),
        o.runtime.name().into(),
        "--workers".into(),
        o.workers.to_string(),
        "--requests".into(),
        o.requests.to_string(),
        "--restarts".into(),
        o.restarts.to_string(),
        "--size".into(),
        o.size.to_string(),
        "--min-idle".into(),
        o.min_idle.to_string(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Result<Command, BadInput> {
        parse(s.split_whitespace().map(String::from))
    }

    #[test]
    fn flags_and_defaults() {
        let Command::Run(o) = parse_str("--pool deadpool --workers=3 --size 2").unwrap() else {
            panic!("a run")
        };
        assert_eq!(o.pool, PoolKind::Deadpool);
        assert_eq!((o.workers, o.size, o.requests), (3, 2, 5000));
        assert!(matches!(parse_str("-h").unwrap(), Command::Help));
    }

    #[test]
    fn bad_input_says_what_is_wrong() {
        let msg = |s: &str| parse_str(s).unwrap_err().0;
        assert!(msg("--size 0").contains("--size is 0"));
        assert!(msg("--runtime nope").contains("unknown runtime \"nope\""));
        assert!(msg("--pool r2d2").contains("unknown pool"));
        assert!(msg("--workers many").contains("not a number"));
        assert!(msg("--port 70000").contains("not a port number"));
        assert!(msg("--frobnicate").contains("unknown argument"));
        assert!(msg("--size").contains("needs a value"));
        assert!(msg("--size 2 --min-idle 3").contains("larger than --size"));
    }

    #[test]
    fn help_names_every_runtime() {
        for r in RuntimeKind::ALL {
            assert!(USAGE.contains(r.name()), "{} in the help", r.name());
        }
    }

    #[test]
    fn worker_flags_round_trip() {
        let o = Options {
            pool: PoolKind::Bb8,
            workers: 5,
            ..Options::default()
        };
        let mut flags = to_flags(&o);
        flags.extend([
            WORKER_FLAG.into(),
            "--addr".into(),
            "127.0.0.1:9".into(),
            "--ending".into(),
            "close".into(),
        ]);
        let Command::Worker {
            options, ending, ..
        } = parse(flags).unwrap()
        else {
            panic!("a worker")
        };
        assert_eq!((options.pool, options.workers), (PoolKind::Bb8, 5));
        assert_eq!(ending, Ending::Close);
    }
}
