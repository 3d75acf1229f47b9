//! What `create` says when it runs outside a tokio runtime: a typed error, not a panic.
//!
//! A connection's socket and its driver task need tokio's reactor. On another runtime (smol,
//! a plain executor) tokio-postgres would panic as it connects; `create` looks first, and
//! fails with [`NoTokioRuntime`] in the error's source chain. The pool takes it as permanent:
//! `get()` fails at once with [`gracepool::Error::Permanent`] rather than retry.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::SslMode;
use tokio_postgres::{Config, NoTls};

/// `create` ran where no tokio runtime was current. It is the source of the
/// `tokio_postgres::Error` that `create` returns (behind an `io::Error`, the one way to carry
/// an error of one's own in that type, whose own message is only "error communicating with the
/// server"); [`NoTokioRuntime::found_in`] looks for it, and an error report that prints the
/// chain shows its message.
///
/// gracepool-postgres needs a tokio runtime: run the pool on `gracepool-tokio` or
/// `gracepool-actix`, or, on another runtime, enter a multi-thread tokio runtime's context
/// (`Handle::enter`) on the threads that make connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoTokioRuntime;

impl fmt::Display for NoTokioRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "gracepool-postgres needs a tokio runtime: a connection's socket and driver run on \
             tokio's reactor, and `create` ran outside any (run the pool on gracepool-tokio or \
             gracepool-actix)",
        )
    }
}

impl std::error::Error for NoTokioRuntime {}

impl NoTokioRuntime {
    /// Whether `error`, or an error in its source chain, is a [`NoTokioRuntime`]: true for
    /// what `create` returns outside a tokio runtime, and for the pool's error that carries
    /// it (`gracepool::Error::Permanent`).
    pub fn found_in(error: &(dyn std::error::Error + 'static)) -> bool {
        let mut next = Some(error);
        while let Some(e) = next {
            if e.is::<NoTokioRuntime>() {
                return true;
            }
            if let Some(inner) = e.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
                if inner.is::<NoTokioRuntime>() {
                    return true;
                }
            }
            next = e.source();
        }
        false
    }

    /// The error `create` returns. `tokio_postgres::Error` has no public constructor: a
    /// handshake over a stream that refuses every read and write with this error yields one
    /// that carries it. No socket, no reactor: the refusal comes on the first poll.
    pub(crate) async fn as_error(config: &Config) -> tokio_postgres::Error {
        let mut config = config.clone();
        config.ssl_mode(SslMode::Disable);
        match config.connect_raw(Refusing, NoTls).await {
            Err(e) => e,
            Ok(_) => unreachable!("a stream that refuses every write cannot connect"),
        }
    }
}

/// A stream that fails every read and write with [`NoTokioRuntime`].
struct Refusing;

fn refusal() -> io::Error {
    io::Error::other(NoTokioRuntime)
}

impl AsyncRead for Refusing {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Ready(Err(refusal()))
    }
}

impl AsyncWrite for Refusing {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(refusal()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Err(refusal()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::NoTokioRuntime;

    #[test]
    fn the_error_carries_the_refusal_and_says_what_to_do() {
        let config: tokio_postgres::Config = "host=127.0.0.1 user=nobody".parse().unwrap();
        let error = futures_lite::future::block_on(NoTokioRuntime::as_error(&config));
        assert!(NoTokioRuntime::found_in(&error), "{error:?}");
        // tokio-postgres shows its kind ("error communicating with the server"); the source
        // says what happened.
        let source = std::error::Error::source(&error).expect("the refusal is the source");
        assert!(
            source.to_string().contains("needs a tokio runtime"),
            "{source}"
        );
        assert!(!NoTokioRuntime::found_in(&std::io::Error::other("another")));
    }
}
