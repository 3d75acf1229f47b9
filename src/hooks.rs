//! Hooks: the application's own steps around a connection's life in the pool — after it is
//! created, before it is checked out, after it is returned. Plain data and small helpers; the
//! creation path, the checkout path and the actor run them.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;

use futures_lite::FutureExt;

use crate::status::Metrics;

/// What a hook fails with: any error (`?` converts the manager's own error, an I/O error or a
/// message). The pool never looks inside it; it reaches the caller in
/// [`Error::Hook`](crate::Error::Hook) or a `tracing` event.
pub type HookError = Box<dyn std::error::Error + Send + Sync>;

/// The future a hook returns: it may borrow the connection and its metrics.
pub type HookFuture<'a> = Pin<Box<dyn Future<Output = Result<(), HookError>> + Send + 'a>>;

/// A hook as the builder stores it.
pub(crate) type Hook<C> =
    Box<dyn for<'a> Fn(&'a mut C, &'a Metrics) -> HookFuture<'a> + Send + Sync + 'static>;

/// The hooks a pool was built with; each is optional, and a pool without any pays one branch
/// per step.
pub(crate) struct Hooks<C> {
    pub(crate) after_create: Option<Hook<C>>,
    pub(crate) before_checkout: Option<Hook<C>>,
    pub(crate) after_return: Option<Hook<C>>,
}

impl<C> Default for Hooks<C> {
    fn default() -> Self {
        Hooks {
            after_create: None,
            before_checkout: None,
            after_return: None,
        }
    }
}

impl<C> Hooks<C> {
    /// Which hooks are set, for `Debug`.
    pub(crate) fn names(&self) -> Vec<&'static str> {
        [
            ("after_create", self.after_create.is_some()),
            ("before_checkout", self.before_checkout.is_some()),
            ("after_return", self.after_return.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }
}

/// Runs `hook` on `conn`, its panic contained and turned into an error (the panic's message
/// when it has one). Not bounded here: the caller's timeout bounds it.
pub(crate) async fn run<C>(
    hook: &Hook<C>,
    conn: &mut C,
    metrics: &Metrics,
) -> Result<(), HookError> {
    // Taken out of an `Option`, the connection is lent for its own lifetime, not the
    // closure's.
    let mut lent = Some(conn);
    let started = std::panic::catch_unwind(AssertUnwindSafe(|| {
        hook(lent.take().expect("called once"), metrics)
    }));
    let outcome = match started {
        Ok(future) => AssertUnwindSafe(future).catch_unwind().await,
        Err(payload) => Err(payload),
    };
    match outcome {
        Ok(result) => result,
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned());
            // Dropping a panic payload can itself panic; keep it from unwinding out of here.
            let _ = std::panic::catch_unwind(AssertUnwindSafe(move || drop(payload)));
            Err(match message {
                Some(message) => format!("the hook panicked: {message}").into(),
                None => "the hook panicked".into(),
            })
        }
    }
}
