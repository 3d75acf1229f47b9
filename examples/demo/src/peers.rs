//! Managers for the peer pools the demo compares with, on the very same connection type.
//!
//! Neither peer has a hook that runs when a connection leaves the pool for good, so there is
//! nowhere to say goodbye: a peer's connection ends when the pool drops it. The drop is counted
//! here, so that the demo can tell when a peer has let go of everything.

use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;

use gracepool_demo::tcp::TcpConn;

/// Connections a peer's manager opened, and how many of them were dropped since.
#[derive(Debug, Default)]
pub struct PeerStats {
    pub opened: AtomicU64,
    pub dropped: AtomicU64,
}

/// A connection handed to a peer pool: counts its own drop.
pub struct PeerConn {
    conn: Option<TcpConn>,
    stats: Arc<PeerStats>,
}

impl Deref for PeerConn {
    type Target = TcpConn;
    fn deref(&self) -> &TcpConn {
        self.conn.as_ref().expect("held until drop")
    }
}

impl DerefMut for PeerConn {
    fn deref_mut(&mut self) -> &mut TcpConn {
        self.conn.as_mut().expect("held until drop")
    }
}

impl Drop for PeerConn {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            // The same plain close gracepool's manager uses.
            let _ = conn.close();
        }
        self.stats.dropped.fetch_add(1, SeqCst);
    }
}

async fn open(addr: SocketAddr, stats: &Arc<PeerStats>) -> io::Result<PeerConn> {
    let conn = TcpConn::connect(addr).await?;
    stats.opened.fetch_add(1, SeqCst);
    Ok(PeerConn {
        conn: Some(conn),
        stats: stats.clone(),
    })
}

async fn ping(conn: &mut TcpConn) -> io::Result<()> {
    match conn.request("PING").await?.as_str() {
        "PONG" => Ok(()),
        other => Err(io::Error::new(
            ErrorKind::InvalidData,
            format!("expected PONG, got {other:?}"),
        )),
    }
}

/// deadpool's managed pool, on the demo's backend.
pub struct DeadManager {
    pub addr: SocketAddr,
    pub stats: Arc<PeerStats>,
}

impl deadpool::managed::Manager for DeadManager {
    type Type = PeerConn;
    type Error = io::Error;

    async fn create(&self) -> io::Result<PeerConn> {
        open(self.addr, &self.stats).await
    }

    async fn recycle(
        &self,
        conn: &mut PeerConn,
        _: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<io::Error> {
        ping(conn)
            .await
            .map_err(deadpool::managed::RecycleError::Backend)
    }
}

/// bb8, on the demo's backend.
pub struct Bb8Manager {
    pub addr: SocketAddr,
    pub stats: Arc<PeerStats>,
}

impl bb8::ManageConnection for Bb8Manager {
    type Connection = PeerConn;
    type Error = io::Error;

    async fn connect(&self) -> io::Result<PeerConn> {
        open(self.addr, &self.stats).await
    }

    async fn is_valid(&self, conn: &mut PeerConn) -> io::Result<()> {
        ping(conn).await
    }

    fn has_broken(&self, conn: &mut PeerConn) -> bool {
        !conn.is_in_sync()
    }
}
