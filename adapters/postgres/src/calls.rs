//! Which calls a connection has outstanding: a call whose future was dropped before its answer
//! (a timeout, a cancelled request handler) leaves its request on the connection, and the
//! next caller's first query would wait behind it — forever, on a server that stopped
//! answering. Such a connection is retired as it comes back, never handed out again: its
//! goodbye asks the server to stop the abandoned call (PostgreSQL's cancel request), then ends
//! the session. Reusing it after a cancel is not safe: a cancel request travels on a connection
//! of its own and the server acts on it whenever it arrives, so a late one stops whatever that
//! session runs then — the next caller's query (`57014`). Nothing is sent from a `Drop`: the
//! abandoning future only sets flags.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gracepool::Unfit;
use tokio_postgres::error::SqlState;
use tokio_postgres::{CancelToken, Client, Error};

/// Connections a manager's callers found unfit, by what their error said. Each connection is
/// counted once, under the first reason seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Retirements {
    /// The connection failed under a call: closed by the server or the network (class 08, a
    /// closed client).
    pub connection_lost: u64,
    /// The server is shutting down or restarting (`57P01` admin shutdown, which also
    /// refreshes the pool, `57P02` crash shutdown, `57P03` cannot connect now).
    pub server_shutdown: u64,
    /// The server is read-only (`25006`): a primary demoted after a failover. The pool was
    /// refreshed.
    pub read_only: u64,
    /// A call's future was dropped before its answer (a timeout, a cancelled request): the
    /// request was left on the connection.
    pub abandoned: u64,
}

/// The counts behind [`Retirements`], shared by a manager and its connections.
#[derive(Debug, Default)]
pub(crate) struct RetirementCounts {
    connection_lost: AtomicU64,
    server_shutdown: AtomicU64,
    read_only: AtomicU64,
    abandoned: AtomicU64,
}

impl RetirementCounts {
    pub(crate) fn snapshot(&self) -> Retirements {
        Retirements {
            connection_lost: self.connection_lost.load(Ordering::Relaxed),
            server_shutdown: self.server_shutdown.load(Ordering::Relaxed),
            read_only: self.read_only.load(Ordering::Relaxed),
            abandoned: self.abandoned.load(Ordering::Relaxed),
        }
    }
}

const FIT: u8 = 0;
const UNFIT_CONNECTION: u8 = 1;
const UNFIT_SERVER: u8 = 2;

/// Which of a manager's retirement counts a reason goes to.
type Counter = fn(&RetirementCounts) -> &AtomicU64;

/// What an error seen by a caller says of the connection and its server.
pub(crate) fn verdict(error: &Error) -> Option<(Unfit, Counter)> {
    if let Some(code) = error.code() {
        if *code == SqlState::READ_ONLY_SQL_TRANSACTION {
            return Some((Unfit::Server, |c| &c.read_only));
        }
        // The server is shutting down (a switchover stops the old primary this way): every
        // connection to it is going, and the next ones may reach another server.
        if *code == SqlState::ADMIN_SHUTDOWN {
            return Some((Unfit::Server, |c| &c.server_shutdown));
        }
        if *code == SqlState::CRASH_SHUTDOWN || *code == SqlState::CANNOT_CONNECT_NOW {
            return Some((Unfit::Connection, |c| &c.server_shutdown));
        }
        if code.code().starts_with("08") {
            return Some((Unfit::Connection, |c| &c.connection_lost));
        }
        return None;
    }
    if error.is_closed() {
        return Some((Unfit::Connection, |c| &c.connection_lost));
    }
    None
}

/// Sends a cancel request for a call that was abandoned or ran out of time, spawned on the
/// caller's tokio runtime; the handle of that task, if one was spawned.
pub(crate) type Canceller =
    Arc<dyn Fn(CancelToken) -> Option<tokio::task::JoinHandle<()>> + Send + Sync>;

/// One connection's record of its calls.
pub(crate) struct Calls {
    /// A call may have left its request on the connection (its future was dropped before the
    /// answer): the next checkout makes a round trip first.
    dirty: AtomicBool,
    /// A call ran past the per-call timeout: the connection is retired when it comes back.
    broken: AtomicBool,
    timeout: Option<Duration>,
    cancel: Option<Canceller>,
    /// A call was abandoned: the next check asks the server to stop it (from its own task:
    /// a `Drop` sends nothing and spawns nothing).
    cancel_wanted: AtomicBool,
    /// What an error seen on this connection said of it (`FIT` until one did).
    unfit: AtomicU8,
    counts: Arc<RetirementCounts>,
    /// The cancel request sent for an abandoned call, until the next check has waited for it
    /// (so that it cannot land on the next caller's query).
    cancelling: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Calls {
    pub(crate) fn new(
        timeout: Option<Duration>,
        cancel: Option<Canceller>,
        counts: Arc<RetirementCounts>,
    ) -> Self {
        Calls {
            dirty: AtomicBool::new(false),
            broken: AtomicBool::new(false),
            timeout,
            cancel,
            cancel_wanted: AtomicBool::new(false),
            unfit: AtomicU8::new(FIT),
            counts,
            cancelling: Mutex::new(None),
        }
    }

    /// Whether a call was abandoned since the last check, which is to ask the server to stop
    /// it; reading it clears it.
    pub(crate) fn take_cancel_wanted(&self) -> bool {
        self.cancel_wanted.swap(false, Ordering::Relaxed)
    }

    /// The cancel request sent for a call past the per-call timeout, if one is under way: the
    /// check waits for it before its round trip.
    pub(crate) fn take_cancelling(&self) -> Option<tokio::task::JoinHandle<()>> {
        self.cancelling
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }

    /// Asks the server to stop the call under way on this connection.
    fn cancel(&self, client: &Client) {
        if let Some(cancel) = &self.cancel {
            if let Some(sent) = cancel(client.cancel_token()) {
                let mut cancelling = self
                    .cancelling
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                if let Some(earlier) = cancelling.replace(sent) {
                    // Still going: let it finish on its own.
                    drop(earlier);
                }
            }
        }
    }

    pub(crate) fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::Relaxed)
    }

    pub(crate) fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::Relaxed);
    }

    pub(crate) fn clear_dirty(&self) {
        self.dirty.store(false, Ordering::Relaxed);
    }

    pub(crate) fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }

    /// What the errors seen on this connection said of it, if anything.
    pub(crate) fn unfit(&self) -> Option<Unfit> {
        match self.unfit.load(Ordering::Relaxed) {
            UNFIT_SERVER => Some(Unfit::Server),
            UNFIT_CONNECTION => Some(Unfit::Connection),
            _ if self.is_broken() => Some(Unfit::Connection),
            _ => None,
        }
    }

    /// Reads an error a caller got: one that says the connection or its server is done marks
    /// the connection (counted once, under the first reason).
    pub(crate) fn saw<R>(&self, result: &Result<R, Error>) {
        let Err(error) = result else { return };
        let Some((unfit, counter)) = verdict(error) else {
            return;
        };
        let code = match unfit {
            Unfit::Server => UNFIT_SERVER,
            _ => UNFIT_CONNECTION,
        };
        if self
            .unfit
            .compare_exchange(FIT, code, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            counter(&self.counts).fetch_add(1, Ordering::Relaxed);
        } else if code == UNFIT_SERVER {
            // The server's change outranks a connection's failure.
            self.unfit.store(UNFIT_SERVER, Ordering::Relaxed);
        }
    }

    /// Runs one call: marks the connection dirty if the call's future is dropped before it
    /// finishes; with a per-call timeout, cancels it on the server when it runs out, and marks
    /// the connection broken.
    pub(crate) async fn track<R>(
        &self,
        client: &Client,
        call: impl Future<Output = Result<R, Error>>,
    ) -> Result<R, Error> {
        let mut pending = Pending {
            calls: self,
            done: false,
        };
        let out = match self.timeout {
            None => call.await,
            Some(limit) => match tokio::time::timeout(limit, call).await {
                Ok(out) => out,
                Err(_elapsed) => {
                    // The request is still on the connection, and the server may still be
                    // working on it: ask it to stop, and never hand this connection out again.
                    self.broken.store(true, Ordering::Relaxed);
                    self.cancel(client);
                    pending.done = true;
                    // tokio-postgres' own timeout error ("timeout waiting for server"), the one
                    // its blocking `postgres` crate returns for the same case.
                    return Err(Error::__private_api_timeout());
                }
            },
        };
        pending.done = true;
        self.saw(&out);
        out
    }
}

/// A call under way: dropped before it finished, it marks the connection unfit (retired as it
/// comes back) and asks its goodbye to have the server stop the call first.
struct Pending<'a> {
    calls: &'a Calls,
    done: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.done {
            // Only flags: the goodbye, in the actor's task, cancels the call and ends the session.
            self.calls.mark_dirty();
            self.calls.cancel_wanted.store(true, Ordering::Relaxed);
            if self
                .calls
                .unfit
                .compare_exchange(FIT, UNFIT_CONNECTION, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                self.calls.counts.abandoned.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
