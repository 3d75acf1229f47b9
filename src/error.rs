//! The one error type of the pool's surface.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::config::ConfigError;
use crate::hooks::HookError;
use crate::runtime::SpawnError;

/// Which manager method a panic or timeout happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stage {
    /// [`Manager::create`](crate::Manager::create).
    Create,
    /// [`Manager::check`](crate::Manager::check). No error carries it today: a check that
    /// fails, times out or panics closes that connection and `get` goes on to another (see
    /// [`Counters::check_failed`](crate::Counters::check_failed)). Kept so a future error
    /// about a check has a name for it.
    Check,
    /// The after-create hook ([`Builder::after_create`](crate::Builder::after_create)).
    AfterCreate,
    /// The before-checkout hook
    /// ([`Builder::before_checkout`](crate::Builder::before_checkout)).
    BeforeCheckout,
    /// The after-return hook ([`Builder::after_return`](crate::Builder::after_return)).
    AfterReturn,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Create => "create",
            Stage::Check => "check",
            Stage::AfterCreate => "after-create hook",
            Stage::BeforeCheckout => "before-checkout hook",
            Stage::AfterReturn => "after-return hook",
        })
    }
}

/// What a pool looked like when a caller's wait timed out: the figures HikariCP's timeout
/// reports, so the message points the right way — every connection checked out (busy, or
/// stuck on a server that stopped answering) is not the same trouble as a pool that cannot
/// make one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Seen {
    /// Connections alive or being created.
    pub size: usize,
    /// The most the pool may have.
    pub max_size: usize,
    /// Checked out.
    pub in_use: usize,
    /// Idle.
    pub idle: usize,
    /// Callers waiting, this one included.
    pub waiters: usize,
}

impl Seen {
    /// The figures, in that order.
    pub fn new(size: usize, max_size: usize, in_use: usize, idle: usize, waiters: usize) -> Self {
        Seen {
            size,
            max_size,
            in_use,
            idle,
            waiters,
        }
    }
}

/// Everything a pool operation can fail with. `E` is the manager's error.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error<E> {
    /// The pool is closing or closed.
    Closed,
    /// The runtime the pool actor ran on has shut down; the pool closed itself. A pool whose
    /// runtime follows its callers ([`Runtime::ambient`](crate::Runtime::ambient)) moves to
    /// the next caller's runtime instead, and never reports it.
    RuntimeGone,
    /// No connection became available within the wait timeout.
    Timeout {
        /// How long the caller waited.
        waited: Duration,
        /// What the pool looked like as the wait ran out (the message says it), when known.
        seen: Option<Box<Seen>>,
        /// Why the pool could not make one, when its last attempt failed: the
        /// [`Backend`](Error::Backend), [`ManagerTimeout`](Error::ManagerTimeout) or
        /// [`ManagerPanicked`](Error::ManagerPanicked) error of that attempt. Also the
        /// timeout's [`source`](std::error::Error::source). `None` when the pool was simply
        /// busy.
        last_error: Option<Arc<Error<E>>>,
    },
    /// [`Pool::try_get`](crate::Pool::try_get) found no idle connection.
    Exhausted,
    /// The manager failed to create a connection.
    Backend(E),
    /// Creating a connection failed for a reason retrying cannot fix, as the manager judged
    /// it ([`Manager::is_permanent`](crate::Manager::is_permanent)): a wrong password, a
    /// database that does not exist, a certificate that does not verify. Every caller waiting
    /// for a connection at that moment gets it at once, each with the same error; the pool
    /// still retries with backoff for later callers (the password may be fixed).
    Permanent(Arc<E>),
    /// The after-create hook rejected a new connection (it was ended at once), or failed,
    /// timed out or panicked; with [`Builder::fail_fast`](crate::Builder::fail_fast) only, as
    /// for any creation failure. Otherwise it is the `last_error` of a
    /// [`Timeout`](Error::Timeout).
    Hook {
        /// The hook that failed.
        stage: Stage,
        /// What it failed with (a panic reads "the hook panicked: ...").
        error: HookError,
    },
    /// A manager method did not finish within its timeout.
    ManagerTimeout {
        /// The method that took too long.
        stage: Stage,
        /// The timeout it ran into.
        limit: Duration,
    },
    /// A manager method panicked. The panic was contained; the pool keeps working.
    ManagerPanicked {
        /// The method that panicked.
        stage: Stage,
    },
    /// The builder's configuration is invalid.
    Config(ConfigError),
    /// The runtime refused to start the pool actor: from `build`, or, on a pool whose runtime
    /// follows its callers, from a `get` that found no actor and could not start one where it
    /// was called (no runtime there, or one shutting down).
    Spawn(SpawnError),
}

impl<E: fmt::Display> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Closed => f.write_str(
                "pool is closed: get() after close() or after the last handle was dropped",
            ),
            Error::RuntimeGone => f.write_str(
                "pool is closed: the runtime its actor ran on has shut down; build a new pool on a live runtime",
            ),
            Error::Timeout {
                waited,
                seen,
                last_error: None,
            } => {
                write!(f, "no connection became available within {waited:?}")?;
                match seen.as_deref() {
                    Some(seen) if seen.in_use >= seen.max_size => write!(
                        f,
                        ": all {} connections were checked out and none came back ({} callers waiting). \
                         If they are stuck on a server that stopped answering, bound them (TCP \
                         keepalives and user timeout, a per-query timeout); if they are busy, raise \
                         max_size or the wait timeout, or hold connections for less time",
                        seen.in_use, seen.waiters
                    ),
                    Some(seen) => write!(
                        f,
                        ": {} of {} connections in use, {} idle, {} callers waiting; the pool could \
                         not make or check one in time: is the server slow to accept connections?",
                        seen.in_use, seen.max_size, seen.idle, seen.waiters
                    ),
                    None => f.write_str(
                        ": raise max_size or the wait timeout, or hold connections for less time",
                    ),
                }
            }
            Error::Timeout {
                waited,
                seen,
                last_error: Some(e),
            } => {
                write!(f, "no connection became available within {waited:?}, and the last attempt to create one failed ({e}); the pool keeps retrying with backoff")?;
                if let Some(seen) = seen.as_deref() {
                    write!(
                        f,
                        " ({} of {} connections in use, {} idle, {} callers waiting)",
                        seen.in_use, seen.max_size, seen.idle, seen.waiters
                    )?;
                }
                Ok(())
            }
            Error::Exhausted => f.write_str(
                "no idle connection right now: use get() to wait for one",
            ),
            Error::Backend(e) => write!(f, "the manager failed to create a connection: {e}"),
            Error::Permanent(e) => write!(
                f,
                "creating a connection failed, and retrying will not help until this is fixed: {e}"
            ),
            Error::Hook { stage, error } => {
                // A hook's error is often a driver's whose own text is terse ("db error"),
                // with the server's message in its sources: say them all.
                write!(f, "the {stage} failed: {error}")?;
                let mut source = error.source();
                while let Some(e) = source {
                    write!(f, ": {e}")?;
                    source = e.source();
                }
                Ok(())
            }
            Error::ManagerTimeout { stage, limit } => write!(
                f,
                "the manager's {stage} did not finish within {limit:?}: is the backend reachable? raise the {stage} timeout if it is slow"
            ),
            Error::ManagerPanicked { stage } => write!(
                f,
                "the manager's {stage} panicked; the panic was contained and the pool keeps working"
            ),
            Error::Config(e) => write!(f, "invalid pool configuration: {e}"),
            Error::Spawn(e) => e.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for Error<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Backend(e) => Some(e),
            Error::Permanent(e) => Some(&**e),
            Error::Hook { error, .. } => Some(&**error),
            Error::Timeout {
                last_error: Some(e),
                ..
            } => Some(&**e),
            Error::Config(e) => Some(e),
            Error::Spawn(e) => Some(e),
            _ => None,
        }
    }
}

/// Why a creation failed, as handed from the actor to a waiter.
pub(crate) enum CreateFailure<E> {
    Backend(E),
    Timeout(Duration),
    Panicked,
    /// The manager judged the error permanent: shared by every waiter it fails.
    Permanent(Arc<E>),
    /// The after-create hook failed (the connection was ended).
    Hook(HookError),
}

impl<E> From<CreateFailure<E>> for Error<E> {
    fn from(f: CreateFailure<E>) -> Self {
        match f {
            CreateFailure::Backend(e) => Error::Backend(e),
            CreateFailure::Timeout(limit) => Error::ManagerTimeout {
                stage: Stage::Create,
                limit,
            },
            CreateFailure::Panicked => Error::ManagerPanicked {
                stage: Stage::Create,
            },
            CreateFailure::Permanent(e) => Error::Permanent(e),
            CreateFailure::Hook(error) => Error::Hook {
                stage: Stage::AfterCreate,
                error,
            },
        }
    }
}
