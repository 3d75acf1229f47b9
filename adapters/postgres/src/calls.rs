//! Which calls a connection has outstanding: a call whose future was dropped before its answer
//! (a timeout, a cancelled request handler) leaves its request on the connection, and the
//! next caller's first query waits behind it — forever, on a server that stopped answering.
//! A connection that may carry one is checked for real (one round trip) before it is handed
//! out again; one whose call ran past the per-call timeout is retired.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::{CancelToken, Client, Error};

/// Sends a cancel request for a call that ran out of time (spawned on the pool's runtime).
pub(crate) type Canceller = Arc<dyn Fn(CancelToken) + Send + Sync>;

/// One connection's record of its calls.
pub(crate) struct Calls {
    /// A call may have left its request on the connection (its future was dropped before the
    /// answer): the next checkout makes a round trip first.
    dirty: AtomicBool,
    /// A call ran past the per-call timeout: the connection is retired when it comes back.
    broken: AtomicBool,
    timeout: Option<Duration>,
    cancel: Option<Canceller>,
}

impl Calls {
    pub(crate) fn new(timeout: Option<Duration>, cancel: Option<Canceller>) -> Self {
        Calls {
            dirty: AtomicBool::new(false),
            broken: AtomicBool::new(false),
            timeout,
            cancel,
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
                    if let Some(cancel) = &self.cancel {
                        cancel(client.cancel_token());
                    }
                    pending.done = true;
                    // tokio-postgres' own timeout error ("timeout waiting for server"), the one
                    // its blocking `postgres` crate returns for the same case.
                    return Err(Error::__private_api_timeout());
                }
            },
        };
        pending.done = true;
        out
    }
}

/// A call under way: dropped before it finished, it marks the connection dirty.
struct Pending<'a> {
    calls: &'a Calls,
    done: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.calls.mark_dirty();
        }
    }
}
