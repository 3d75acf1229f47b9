//! The shutdown matrix's table: which scenarios run on which runtimes, and why a cell does
//! not apply. Shared by the scenario binary (which runs one cell) and the matrix test (which
//! runs them all in child processes and checks what they print).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::time::Duration;

/// A column: the runtime the pool's actor runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// tokio, multi-thread runtime (2 workers).
    TokioMt,
    /// tokio, current_thread runtime.
    TokioCt,
    /// smol's global executor (its own threads, never dropped).
    SmolGlobal,
    /// An `async_executor::Executor` of the app's, driven only inside its `block_on`.
    SmolExec,
    /// An actix `System` (the pool actor on the System's arbiter).
    Actix,
    /// No runtime: nothing polls the pool's actor.
    None,
}

/// Every column, in table order.
pub const KINDS: [Kind; 6] = [
    Kind::TokioMt,
    Kind::TokioCt,
    Kind::SmolGlobal,
    Kind::SmolExec,
    Kind::Actix,
    Kind::None,
];

impl Kind {
    /// The column's name, also the scenario binary's argument.
    pub fn name(self) -> &'static str {
        match self {
            Kind::TokioMt => "tokio-mt",
            Kind::TokioCt => "tokio-ct",
            Kind::SmolGlobal => "smol-global",
            Kind::SmolExec => "smol-exec",
            Kind::Actix => "actix",
            Kind::None => "none",
        }
    }

    /// The column named `name`.
    pub fn parse(name: &str) -> Option<Kind> {
        KINDS.into_iter().find(|k| k.name() == name)
    }

    /// True for runtimes whose tasks run only while someone is inside their `block_on`.
    pub fn driven_only_in_block_on(self) -> bool {
        matches!(self, Kind::TokioCt | Kind::SmolExec | Kind::Actix)
    }
}

/// A row.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    /// Its id, also the scenario binary's argument.
    pub id: &'static str,
    /// What it does, for the table.
    pub what: &'static str,
    /// Whether the matrix test sends the child SIGTERM once it prints `ready`.
    pub sigterm: bool,
    /// How long the child may run before it is killed and the cell fails.
    pub limit: Duration,
}

const LIMIT: Duration = Duration::from_secs(20);

/// Every row, in table order.
pub const SCENARIOS: [Scenario; 21] = [
    row(
        "S1",
        "runtime dropped while idle, handles alive; last handle dropped outside any runtime",
    ),
    row(
        "S2",
        "runtime dropped while connections are out; guards dropped outside any runtime",
    ),
    row(
        "S3",
        "built on runtime A; A dropped; used (clear error) and closed from runtime B",
    ),
    row(
        "S4",
        "close while 32 tasks wait on a pool of max 2: all get Closed within 100 ms",
    ),
    row(
        "S5",
        "close while guards are out; guards dropped afterwards; the report counts them",
    ),
    row(
        "S6",
        "a guard dropped while its task panics: closed, not reused",
    ),
    row(
        "S7",
        "last handle dropped inside a Drop on a runtime worker thread",
    ),
    row(
        "S8",
        "current-thread: handles and guards dropped after block_on, then the runtime",
    ),
    row("S9a", "actix System stopped with the pool in use"),
    Scenario {
        sigterm: true,
        ..row(
            "S9b",
            "actix-web HttpServer, 2 workers, stopped by SIGTERM under load",
        )
    },
    row("S10a", "close_blocking from plain main, no runtime"),
    row(
        "S10b",
        "close_blocking inside a runtime worker: falls back at the deadline, no deadlock",
    ),
    row(
        "S11e",
        "manager close errors for some connections; the rest close, failures counted",
    ),
    row(
        "S11p",
        "manager close panics for some connections (silent panic hook in the child)",
    ),
    Scenario {
        sigterm: true,
        ..row("S12", "SIGTERM during load; the app sends Close on SIGTERM")
    },
    row(
        "S13",
        "20 rounds: the runtime dropped at a random moment under load",
    ),
    row(
        "S14",
        "a tokio runtime built without a time driver (async-io timers)",
    ),
    row(
        "S15",
        "re-homing: runtime A dies while runtime B's tasks wait; B's new actor serves them",
    ),
    row(
        "S16",
        "re-homing: A dies mid-creation (a slow create in flight); B's tasks served from B",
    ),
    row(
        "S17",
        "re-homing: a close racing a move to B, 20 rounds; the close is never undone",
    ),
    row(
        "S18",
        "re-homing: guards from the dead runtime dropped on the new one: closed, not reused",
    ),
];

/// Control cells, run on tokio current_thread: each breaks one pass condition on purpose, and
/// the matrix test checks that it is judged a failure for that reason.
pub const CONTROLS: [(Scenario, &str); 4] = [
    (
        row("C-stderr", "a clean run that then prints to stderr"),
        "stderr is not empty",
    ),
    (
        row("C-leak", "a connection dropped without close"),
        "created != closed",
    ),
    (row("C-exit", "a non-zero exit status"), "exit status"),
    (
        Scenario {
            limit: Duration::from_secs(1),
            ..row("C-hang", "a child that outlives its time limit")
        },
        "killed",
    ),
];

const fn row(id: &'static str, what: &'static str) -> Scenario {
    Scenario {
        id,
        what,
        sigterm: false,
        limit: LIMIT,
    }
}

const NEVER_DROPPED: &str = "smol's global executor is never dropped: it lives until exit";
const NO_ACTOR: &str =
    "no runtime runs the actor, which makes every connection for callers off the pool's runtime";
const ALWAYS_POLLED: &str = "worker threads keep polling after block_on returns";

/// `Ok` when scenario `id` runs on `kind`, else why it does not apply.
pub fn applies(id: &str, kind: Kind) -> Result<(), &'static str> {
    use Kind::*;
    match (id, kind) {
        ("S1" | "S2" | "S3", SmolGlobal) => Err(NEVER_DROPPED),
        ("S4" | "S10a", _) => Ok(()),
        ("S10b", None) => Err("no runtime worker to call it from"),
        ("S12", None) => Err("no runtime to run the app's load and signal handling"),
        (_, None) => Err(NO_ACTOR),
        ("S8", TokioMt | SmolGlobal) => Err(ALWAYS_POLLED),
        ("S9a" | "S9b", Actix) => Ok(()),
        ("S9a" | "S9b", _) => Err("actix only"),
        ("S13", SmolGlobal) => Err(NEVER_DROPPED),
        ("S14", TokioMt | TokioCt) => Ok(()),
        ("S14", _) => Err("only a tokio runtime can lack a time driver"),
        ("S15" | "S16" | "S17" | "S18", SmolGlobal) => {
            Err("smol's global executor is never dropped: nothing to move from")
        }
        _ => Ok(()),
    }
}

/// The last line a scenario prints: the test manager's own count of what it created and
/// closed.
pub fn parse_summary(stdout: &str) -> Option<Summary> {
    let line = stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("summary: "))?;
    let mut s = Summary::default();
    for part in line.split_whitespace() {
        let (key, value) = part.split_once('=')?;
        let value: u64 = value.parse().ok()?;
        match key {
            "created" => s.created = value,
            "closed" => s.closed = value,
            "leaked" => s.leaked = value,
            "double" => s.double = value,
            _ => return Option::None,
        }
    }
    Some(s)
}

/// What a scenario's `summary:` line says.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Connections the manager created.
    pub created: u64,
    /// `close` calls.
    pub closed: u64,
    /// Connections dropped without `close`.
    pub leaked: u64,
    /// Connections closed twice.
    pub double: u64,
}

impl Summary {
    /// Every created connection closed exactly once.
    pub fn balanced(&self) -> bool {
        self.created == self.closed && self.leaked == 0 && self.double == 0
    }
}
