//! The one trivial manager every pool is given: create, check and close finish at once.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Counts shared by a [`Trivial`] manager and its connections.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections created.
    pub created: AtomicU64,
    /// Connections dropped (every pool closes a connection by dropping it).
    pub closed: AtomicU64,
}

impl Stats {
    /// Connections created.
    pub fn created(&self) -> u64 {
        self.created.load(Relaxed)
    }

    /// Connections closed.
    pub fn closed(&self) -> u64 {
        self.closed.load(Relaxed)
    }

    /// Connections created and not closed.
    pub fn open(&self) -> u64 {
        self.created().saturating_sub(self.closed())
    }
}

/// A trivial connection: an id, and a drop that is counted, so that closing one costs what a
/// real (if cheap) close costs and the benches can check that nothing leaks.
pub struct Conn {
    /// Its creation number, from 1.
    pub id: u64,
    stats: Arc<Stats>,
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn").field("id", &self.id).finish()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.stats.closed.fetch_add(1, Relaxed);
    }
}

/// The error the trivial manager never returns.
#[derive(Debug)]
pub struct Never;

impl fmt::Display for Never {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the trivial manager does not fail")
    }
}

impl std::error::Error for Never {}

/// The manager every pool gets: create, check and close are immediate. Cloning shares the
/// counts.
#[derive(Debug, Clone, Default)]
pub struct Trivial {
    stats: Arc<Stats>,
}

impl Trivial {
    /// A manager with fresh counts.
    pub fn new() -> Self {
        Self::default()
    }

    /// The shared counts.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Makes a connection, synchronously.
    pub fn make(&self) -> Conn {
        let id = self.stats.created.fetch_add(1, Relaxed) + 1;
        Conn {
            id,
            stats: self.stats.clone(),
        }
    }
}

impl gracepool::Manager for Trivial {
    type Connection = Conn;
    type Error = Never;

    async fn create(&self) -> Result<Conn, Never> {
        Ok(self.make())
    }

    async fn check(
        &self,
        _conn: &mut Conn,
        _metrics: &gracepool::Metrics,
    ) -> Result<(), gracepool::Unhealthy<Never>> {
        Ok(())
    }
}

impl deadpool::managed::Manager for Trivial {
    type Type = Conn;
    type Error = Never;

    async fn create(&self) -> Result<Conn, Never> {
        Ok(self.make())
    }

    async fn recycle(
        &self,
        _conn: &mut Conn,
        _metrics: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<Never> {
        Ok(())
    }
}

impl bb8::ManageConnection for Trivial {
    type Connection = Conn;
    type Error = Never;

    async fn connect(&self) -> Result<Conn, Never> {
        Ok(self.make())
    }

    async fn is_valid(&self, _conn: &mut Conn) -> Result<(), Never> {
        Ok(())
    }

    fn has_broken(&self, _conn: &mut Conn) -> bool {
        false
    }
}

#[async_trait::async_trait]
impl mobc::Manager for Trivial {
    type Connection = Conn;
    type Error = Never;

    async fn connect(&self) -> Result<Conn, Never> {
        Ok(self.make())
    }

    async fn check(&self, conn: Conn) -> Result<Conn, Never> {
        Ok(conn)
    }
}

impl r2d2::ManageConnection for Trivial {
    type Connection = Conn;
    type Error = Never;

    fn connect(&self) -> Result<Conn, Never> {
        Ok(self.make())
    }

    fn is_valid(&self, _conn: &mut Conn) -> Result<(), Never> {
        Ok(())
    }

    fn has_broken(&self, _conn: &mut Conn) -> bool {
        false
    }
}
