//! The actor's jobs, each a future that counts its connection exactly once even when it is
//! dropped half-way (the close deadline, a runtime teardown): a creation (`create`), a goodbye
//! (`shut_down`, `farewells`) and the after-return hook (`recycle`).

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;

use futures_lite::FutureExt;

use crate::error::CreateFailure;
use crate::ledger::Ending;
use crate::manager::{Goodbye, Manager};
use crate::runtime::timed;
use crate::shared::{Idle, Msg, Shared};

/// Holds a connection on its way to its end. Until the manager's `shutdown` has taken it, the
/// holder owns it, and a future dropped before that (a runtime teardown) closes it with the
/// synchronous `close`. Once `shutdown` has it, the manager ends it; a future dropped then
/// drops the connection inside it, and the holder counts that end. Either way the connection is
/// counted exactly once.
struct Closing<M: Manager> {
    shared: Arc<Shared<M>>,
    conn: Option<M::Connection>,
    counted: bool,
}

impl<M: Manager> Closing<M> {
    fn finish(mut self, ending: Ending) {
        self.counted = true;
        self.shared.ledger.record_end(ending);
    }
}

impl<M: Manager> Drop for Closing<M> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.shared.close_sync(conn);
        } else if !self.counted {
            // `shutdown` had the connection and was dropped half-way (the close deadline, a
            // runtime teardown): the connection was dropped with it, its goodbye unconfirmed.
            self.shared.ledger.record_unconfirmed();
            self.shared.ledger.record_end(Ending::Sync);
        }
    }
}

/// Says goodbye and ends a connection through the manager's `shutdown`. The `Closing` holder
/// is made before the future, so even a future dropped before its first poll ends its
/// connection.
pub(crate) fn shut_down<M: Manager>(
    shared: Arc<Shared<M>>,
    conn: M::Connection,
) -> impl Future<Output = ()> + Send {
    let mut closing = Closing {
        shared,
        conn: Some(conn),
        counted: false,
    };
    async move {
        let shared = closing.shared.clone();
        let conn = closing.conn.take().expect("set just above");
        // The call itself may panic (a default `shutdown` runs `close` right there).
        let farewell = std::panic::catch_unwind(AssertUnwindSafe(|| shared.manager.shutdown(conn)));
        let said = match farewell {
            Ok(farewell) => {
                let farewell = AssertUnwindSafe(farewell).catch_unwind();
                timed(&*shared.runtime, shared.config.shutdown_timeout, farewell).await
            }
            Err(payload) => Some(Err(payload)),
        };
        if unconfirmed(&said) {
            shared.ledger.record_unconfirmed();
        }
        closing.finish(ending_of(said));
    }
}

/// Whether a farewell was started and never confirmed: it ran out of time, or the manager
/// said so.
fn unconfirmed<E>(said: &Option<Result<Goodbye<E>, Box<dyn std::any::Any + Send>>>) -> bool {
    matches!(said, None | Some(Ok(Goodbye::Unconfirmed)))
}

/// How a farewell ended (`None`: it timed out, and its future, with the connection inside,
/// was dropped).
fn ending_of<E: std::fmt::Display>(
    said: Option<Result<Goodbye<E>, Box<dyn std::any::Any + Send>>>,
) -> Ending {
    match said {
        Some(Ok(Goodbye::Said)) => Ending::Graceful,
        Some(Ok(Goodbye::Unsaid | Goodbye::Unconfirmed)) => Ending::Sync,
        Some(Ok(Goodbye::Failed(_error))) => {
            event!(warn, error = %_error, "the manager's shutdown failed");
            Ending::Failed
        }
        Some(Err(payload)) => {
            event!(warn, "the manager's shutdown panicked");
            let _ = std::panic::catch_unwind(AssertUnwindSafe(move || drop(payload)));
            Ending::Failed
        }
        None => Ending::Sync,
    }
}

/// Goodbyes said one after another, for a close: the idle connections it takes. Owns the
/// connections not yet started and counts every end once, when it is dropped (done, or cut
/// short by a runtime teardown or the close deadline): the ones not started are closed
/// synchronously then, and one whose farewell was under way counts as `closed_sync`, its
/// connection dropped inside the farewell.
struct Batch<M: Manager> {
    shared: Arc<Shared<M>>,
    conns: VecDeque<Idle<M::Connection>>,
    in_flight: bool,
    ends: [usize; 3],
}

impl<M: Manager> Batch<M> {
    fn count(&mut self, ending: Ending) {
        let at = match ending {
            Ending::Graceful => 0,
            Ending::Sync | Ending::Detached => 1,
            Ending::Failed => 2,
        };
        self.ends[at] += 1;
    }
}

impl<M: Manager> Drop for Batch<M> {
    fn drop(&mut self) {
        if std::mem::take(&mut self.in_flight) {
            // A goodbye cut short: unconfirmed.
            self.shared.ledger.record_unconfirmed();
            self.count(Ending::Sync);
        }
        let shared = self.shared.clone();
        while let Some(entry) = self.conns.pop_front() {
            let ending = shared.close_uncounted(entry.conn);
            self.count(ending);
        }
        let ledger = &shared.ledger;
        ledger.record_ends(Ending::Graceful, self.ends[0]);
        ledger.record_ends(Ending::Sync, self.ends[1]);
        ledger.record_ends(Ending::Failed, self.ends[2]);
    }
}

/// Says goodbye to each connection of `conns` in turn. Most farewells finish on their first
/// poll (the default `shutdown` has nothing to say) and cost no allocation and no atomic here;
/// when one does not, the connections after it go back to the actor as a new batch, so that a
/// slow goodbye holds up no other.
pub(crate) fn farewells<M: Manager>(
    shared: Arc<Shared<M>>,
    conns: VecDeque<Idle<M::Connection>>,
) -> impl Future<Output = ()> + Send {
    let mut batch = Batch {
        shared,
        conns,
        in_flight: false,
        ends: [0; 3],
    };
    async move {
        let shared = batch.shared.clone();
        while let Some(entry) = batch.conns.pop_front() {
            batch.in_flight = true;
            // The call itself may panic (a default `shutdown` runs `close` right there).
            let farewell =
                std::panic::catch_unwind(AssertUnwindSafe(|| shared.manager.shutdown(entry.conn)));
            let said = match farewell {
                Ok(farewell) => {
                    let mut farewell = pin!(AssertUnwindSafe(farewell).catch_unwind());
                    match poll_fn(|cx| Poll::Ready(farewell.as_mut().poll(cx))).await {
                        Poll::Ready(out) => Some(out),
                        Poll::Pending => {
                            if !batch.conns.is_empty() {
                                let rest = std::mem::take(&mut batch.conns);
                                // A closed mailbox means a drain is under way: the rest stays
                                // here and is closed synchronously when the batch is dropped.
                                if let Err(e) = shared.mailbox_tx.try_send(Msg::Farewells(rest)) {
                                    if let Msg::Farewells(rest) = e.into_inner() {
                                        batch.conns = rest;
                                    }
                                }
                            }
                            timed(&*shared.runtime, shared.config.shutdown_timeout, farewell).await
                        }
                    }
                }
                Err(payload) => Some(Err(payload)),
            };
            batch.in_flight = false;
            if unconfirmed(&said) {
                shared.ledger.record_unconfirmed();
            }
            batch.count(ending_of(said));
        }
    }
}

/// One creation by the actor (with the after-create hook), bounded by the create timeout,
/// its panic contained.
pub(crate) async fn create<M: Manager>(
    shared: Arc<Shared<M>>,
) -> Result<M::Connection, CreateFailure<M::Error>> {
    match timed(
        &*shared.runtime,
        shared.config.create_timeout,
        shared.make(),
    )
    .await
    {
        Some(made) => made,
        None => Err(CreateFailure::Timeout(
            shared
                .config
                .create_timeout
                .expect("only a set timeout can expire"),
        )),
    }
}

/// Holds a returned connection while the after-return hook runs on it. Dropped before the hook
/// is done (the close deadline, a runtime teardown), it closes the connection synchronously;
/// it counts as checked out until then.
struct Returning<M: Manager> {
    shared: Arc<Shared<M>>,
    entry: Option<Idle<M::Connection>>,
}

impl<M: Manager> Drop for Returning<M> {
    fn drop(&mut self) {
        if let Some(entry) = self.entry.take() {
            self.shared.ledger.check_in();
            self.shared.close_sync(entry.conn);
        }
    }
}

/// Runs the after-return hook on a connection a guard gave back, bounded by the check
/// timeout, its panic contained; then puts it back in the idle queue, or retires it as broken
/// when the hook failed (or the pool closed meanwhile).
pub(crate) fn recycle<M: Manager>(
    shared: Arc<Shared<M>>,
    entry: Idle<M::Connection>,
) -> impl Future<Output = ()> + Send {
    let mut holder = Returning {
        shared,
        entry: Some(entry),
    };
    async move {
        let shared = holder.shared.clone();
        if !shared.ledger.is_running() {
            // Closing: no hook for a connection that is about to end.
            let entry = holder.entry.take().expect("set just above");
            shared.retire(entry.conn, entry.home, true);
            return;
        }
        let outcome = {
            let entry = holder.entry.as_mut().expect("set just above");
            let metrics = shared.metrics_of(entry);
            let hook = shared
                .hooks
                .after_return
                .as_ref()
                .expect("only sent when the hook is set");
            timed(
                &*shared.runtime,
                shared.config.check_timeout,
                crate::hooks::run(hook, &mut entry.conn, &metrics),
            )
            .await
        };
        let entry = holder.entry.take().expect("taken only here");
        if !matches!(outcome, Some(Ok(()))) {
            shared.ledger.record_hook_failed();
            shared.ledger.record_reason(crate::ledger::Reason::Broken);
            event!(
                warn,
                "the after-return hook failed or timed out; closing the connection"
            );
            shared.retire(entry.conn, entry.home, true);
            return;
        }
        if let Err(entry) = shared.put_returned(entry) {
            shared.retire(entry.conn, entry.home, true);
        }
    }
}
