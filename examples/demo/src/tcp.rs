//! A real TCP [`Manager`]: connections to the [backend](crate::backend).
//!
//! The socket is async-io's [`Async<TcpStream>`]: async-io runs its own reactor thread, so the
//! same connection type works on tokio, smol and actix, and its std socket is at hand for a
//! synchronous close that needs no runtime at all.

use std::fmt;
use std::io::{self, ErrorKind};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;

use async_io::Async;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use gracepool::{Goodbye, Manager, Unhealthy};

/// One connection to the backend: a socket and what is left of its last read.
pub struct TcpConn {
    stream: Async<TcpStream>,
    buf: Vec<u8>,
    /// A request was sent and its reply not read yet: after a cancellation (the future of
    /// [`request`](TcpConn::request) dropped half-way), the next reply on the wire is not the
    /// next caller's. Such a connection must not be reused.
    in_flight: bool,
}

impl fmt::Debug for TcpConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpConn")
            .field("peer", &self.stream.get_ref().peer_addr().ok())
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

impl TcpConn {
    /// Connects to the backend at `addr`.
    pub async fn connect(addr: SocketAddr) -> io::Result<TcpConn> {
        let stream = Async::<TcpStream>::connect(addr).await?;
        stream.get_ref().set_nodelay(true)?;
        Ok(TcpConn {
            stream,
            buf: Vec::with_capacity(64),
            in_flight: false,
        })
    }

    /// Sends one request line and reads its reply line (without the newline).
    ///
    /// Cancel-safe in the sense that matters to a pool: if this future is dropped before the
    /// reply is read, the connection remembers it ([`is_in_sync`](TcpConn::is_in_sync) turns
    /// false) and a health check refuses it.
    pub async fn request(&mut self, request: &str) -> io::Result<String> {
        if self.in_flight {
            return Err(io::Error::new(
                ErrorKind::InvalidData,
                "a reply to an earlier, abandoned request is still on the way",
            ));
        }
        self.in_flight = true;
        let mut line = Vec::with_capacity(request.len() + 1);
        line.extend_from_slice(request.as_bytes());
        line.push(b'\n');
        self.stream.write_all(&line).await?;
        let reply = self.read_line().await?;
        self.in_flight = false;
        Ok(reply)
    }

    /// Whether the connection can take a new request: no reply is pending from an abandoned one.
    pub fn is_in_sync(&self) -> bool {
        !self.in_flight
    }

    async fn read_line(&mut self) -> io::Result<String> {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                return String::from_utf8(line[..end].to_vec())
                    .map_err(|e| io::Error::new(ErrorKind::InvalidData, e));
            }
            let mut chunk = [0u8; 256];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Says goodbye: `QUIT`, and waits for `BYE`.
    pub async fn goodbye(&mut self) -> io::Result<()> {
        match self.request("QUIT").await?.as_str() {
            "BYE" => Ok(()),
            other => Err(io::Error::new(
                ErrorKind::InvalidData,
                format!("expected BYE, got {other:?}"),
            )),
        }
    }

    /// Ends the connection with plain std calls: shuts the socket down and drops it. Needs no
    /// runtime, never blocks. A socket the peer already closed is not an error.
    pub fn close(self) -> io::Result<()> {
        match self.stream.get_ref().shutdown(Shutdown::Both) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotConnected => Ok(()),
            Err(e) => Err(e),
        }
        // Dropping the `Async` deregisters the socket from async-io's reactor (a plain call on
        // a process-wide structure) and closes it.
    }
}

/// What a [`TcpManager`] did, counted by the manager itself.
#[derive(Debug, Default)]
pub struct TcpStats {
    /// Connections opened.
    pub opened: AtomicU64,
    /// Goodbyes said and answered.
    pub goodbyes: AtomicU64,
    /// Connections closed with [`Manager::close`].
    pub closed: AtomicU64,
}

/// A gracepool [`Manager`] for the backend: `create` connects, `check` pings, `shutdown` says
/// goodbye, `close` shuts the socket down with std calls.
#[derive(Debug, Clone)]
pub struct TcpManager {
    addr: SocketAddr,
    stats: Arc<TcpStats>,
}

impl TcpManager {
    /// A manager for the backend at `addr`.
    pub fn new(addr: SocketAddr) -> TcpManager {
        TcpManager {
            addr,
            stats: Arc::default(),
        }
    }

    /// The manager's own counts, shared with its clones.
    pub fn stats(&self) -> Arc<TcpStats> {
        self.stats.clone()
    }
}

impl Manager for TcpManager {
    type Connection = TcpConn;
    type Error = io::Error;

    async fn create(&self) -> io::Result<TcpConn> {
        let conn = TcpConn::connect(self.addr).await?;
        self.stats.opened.fetch_add(1, SeqCst);
        Ok(conn)
    }

    async fn check(
        &self,
        conn: &mut TcpConn,
        _metrics: &gracepool::Metrics,
    ) -> Result<(), Unhealthy<io::Error>> {
        match conn.request("PING").await?.as_str() {
            "PONG" => Ok(()),
            other => Err(io::Error::new(
                ErrorKind::InvalidData,
                format!("expected PONG, got {other:?}"),
            ))?,
        }
    }

    async fn shutdown(&self, conn: TcpConn) -> Goodbye<io::Error> {
        // Closed whichever way the goodbye ends, also when this future is dropped half-way.
        let mut ending = Ending {
            manager: self,
            conn: Some(conn),
        };
        let said = ending.conn().goodbye().await;
        if said.is_ok() {
            self.stats.goodbyes.fetch_add(1, SeqCst);
        }
        match ending.close() {
            Ok(()) if said.is_ok() => Goodbye::Said,
            // Out of sync, or the backend already gone: no goodbye went out.
            Ok(()) => Goodbye::Unsaid,
            Err(e) => Goodbye::Failed(e),
        }
    }

    fn close(&self, conn: TcpConn) -> io::Result<()> {
        self.stats.closed.fetch_add(1, SeqCst);
        conn.close()
    }
}

/// A connection inside [`TcpManager`]'s `shutdown`: closed with `close` when the goodbye is cut
/// short, so the manager's count stays exact.
struct Ending<'a> {
    manager: &'a TcpManager,
    conn: Option<TcpConn>,
}

impl Ending<'_> {
    fn conn(&mut self) -> &mut TcpConn {
        self.conn.as_mut().expect("held until closed")
    }

    fn close(&mut self) -> io::Result<()> {
        let conn = self.conn.take().expect("closed once");
        self.manager.close(conn)
    }
}

impl Drop for Ending<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            let _ = self.manager.close(conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use futures_lite::future::block_on;
    use std::time::Duration;

    const PATIENCE: Duration = Duration::from_secs(5);

    #[test]
    fn shutdown_says_goodbye_and_close_needs_no_runtime() {
        let backend = Backend::start(0).expect("a free port");
        let m = TcpManager::new(backend.addr());
        // async-io drives its own reactor: a plain block_on is enough, no runtime.
        let mut a = block_on(m.create()).expect("connects");
        let b = block_on(m.create()).expect("connects");
        block_on(m.check(
            &mut a,
            &gracepool::Metrics::new(std::time::Instant::now(), std::time::Instant::now(), 1),
        ))
        .expect("healthy");
        assert!(matches!(block_on(m.shutdown(a)), Goodbye::Said));
        // The other one is closed from a thread that never saw an async runtime.
        let m2 = m.clone();
        std::thread::spawn(move || m2.close(b))
            .join()
            .expect("close does not panic")
            .expect("closes");
        let seen = backend.settle(PATIENCE);
        assert_eq!((seen.accepted, seen.goodbye, seen.abrupt), (2, 1, 1));
        let s = m.stats();
        assert_eq!(
            (
                s.opened.load(SeqCst),
                s.goodbyes.load(SeqCst),
                s.closed.load(SeqCst)
            ),
            (2, 1, 2)
        );
    }

    #[test]
    fn an_abandoned_request_fails_the_health_check() {
        let backend = Backend::start(0).expect("a free port");
        let m = TcpManager::new(backend.addr());
        let mut conn = block_on(m.create()).expect("connects");
        // A request whose caller gave up (a timeout) before the reply came.
        let gave_up = block_on(futures_lite::future::or(
            async { conn.request("SLOW 60000").await.map(|_| false) },
            async {
                async_io::Timer::after(Duration::from_millis(20)).await;
                Ok(true)
            },
        ))
        .expect("no I/O error");
        assert!(gave_up);
        assert!(!conn.is_in_sync());
        // Its reply is still on the way: the next caller must not get it.
        assert!(block_on(m.check(
            &mut conn,
            &gracepool::Metrics::new(std::time::Instant::now(), std::time::Instant::now(), 1)
        ))
        .is_err());
        m.close(conn).expect("closes");
        let seen = backend.settle(PATIENCE);
        assert_eq!((seen.accepted, seen.abrupt, seen.open()), (1, 1, 0));
    }

    #[test]
    fn a_backend_that_is_gone_is_an_error_not_a_panic() {
        let addr = {
            let backend = Backend::start(0).expect("a free port");
            backend.addr()
        };
        // Nothing listens there any more (the port is very likely still free).
        let m = TcpManager::new(addr);
        assert!(block_on(m.create()).is_err());
    }
}
