//! One face for every async pool under test, and the two floors.
//!
//! Each pool is taken with its defaults, except the size, and given the same [`Trivial`]
//! manager. A floor is the least a pool of already-made connections can do: a bounded
//! `async-channel` (try_recv + try_send), or a semaphore in front of a mutex-guarded `Vec`.

use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

use crate::manager::{Conn, Trivial};

/// What the scenarios need from a pool.
pub trait BenchPool: Sized + Send + Sync + 'static {
    /// The name printed in the report.
    const NAME: &'static str;

    /// A checked-out connection; dropping it gives the connection back.
    type Guard<'a>: Deref<Target = Conn> + Send
    where
        Self: 'a;

    /// Builds a pool of at most `max_size` connections. Runs inside a tokio runtime.
    fn build(manager: Trivial, max_size: usize) -> impl Future<Output = Self> + Send;

    /// Checks a connection out, waiting as long as it takes.
    fn checkout(&self) -> impl Future<Output = Self::Guard<'_>> + Send;

    /// Idle connections in the pool now.
    fn idle(&self) -> impl Future<Output = usize> + Send;

    /// Closes the pool the pool's own way: its close if it has one, else dropping it.
    fn close(self) -> impl Future<Output = ()> + Send;
}

/// gracepool, on the tokio adapter.
pub struct Grace(pub gracepool::Pool<Trivial>);

impl BenchPool for Grace {
    const NAME: &'static str = "gracepool";
    type Guard<'a> = gracepool::Pooled<Trivial>;

    async fn build(manager: Trivial, max_size: usize) -> Self {
        let pool = gracepool::Pool::builder(manager)
            .max_size(max_size)
            .runtime(gracepool_tokio::TokioRuntime::current())
            .build()
            .expect("a valid configuration");
        Grace(pool)
    }

    async fn checkout(&self) -> Self::Guard<'_> {
        self.0.get().await.expect("the trivial manager never fails")
    }

    async fn idle(&self) -> usize {
        self.0.status().idle
    }

    async fn close(self) {
        let report = self.0.close().await;
        debug_assert!(report.is_complete());
    }
}

/// gracepool with no wait timeout, as deadpool is by default: a waiter arms no timer.
pub struct GraceUntimed(pub gracepool::Pool<Trivial>);

impl BenchPool for GraceUntimed {
    const NAME: &'static str = "gracepool-no-timeout";
    type Guard<'a> = gracepool::Pooled<Trivial>;

    async fn build(manager: Trivial, max_size: usize) -> Self {
        let pool = gracepool::Pool::builder(manager)
            .max_size(max_size)
            .wait_timeout(None)
            .runtime(gracepool_tokio::TokioRuntime::current())
            .build()
            .expect("a valid configuration");
        GraceUntimed(pool)
    }

    async fn checkout(&self) -> Self::Guard<'_> {
        self.0.get().await.expect("the trivial manager never fails")
    }

    async fn idle(&self) -> usize {
        self.0.status().idle
    }

    async fn close(self) {
        self.0.close().await;
    }
}

/// deadpool's managed pool.
pub struct Dead(pub deadpool::managed::Pool<Trivial>);

impl BenchPool for Dead {
    const NAME: &'static str = "deadpool";
    type Guard<'a> = deadpool::managed::Object<Trivial>;

    async fn build(manager: Trivial, max_size: usize) -> Self {
        let pool = deadpool::managed::Pool::builder(manager)
            .max_size(max_size)
            .build()
            .expect("a valid configuration");
        Dead(pool)
    }

    async fn checkout(&self) -> Self::Guard<'_> {
        match self.0.get().await {
            Ok(obj) => obj,
            Err(e) => panic!("deadpool get failed: {e:?}"),
        }
    }

    async fn idle(&self) -> usize {
        self.0.status().available
    }

    async fn close(self) {
        self.0.close();
    }
}

/// deadpool given gracepool's default wait timeout (30 s), so that both pools pay for
/// bounding a wait; deadpool needs its tokio runtime feature for that.
pub struct DeadTimed(pub deadpool::managed::Pool<Trivial>);

/// gracepool's default wait timeout, which [`DeadTimed`] gets too.
pub const GRACE_DEFAULT_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

impl BenchPool for DeadTimed {
    const NAME: &'static str = "deadpool-timeout";
    type Guard<'a> = deadpool::managed::Object<Trivial>;

    async fn build(manager: Trivial, max_size: usize) -> Self {
        let pool = deadpool::managed::Pool::builder(manager)
            .max_size(max_size)
            .wait_timeout(Some(GRACE_DEFAULT_WAIT))
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .expect("a valid configuration");
        DeadTimed(pool)
    }

    async fn checkout(&self) -> Self::Guard<'_> {
        match self.0.get().await {
            Ok(obj) => obj,
            Err(e) => panic!("deadpool get failed: {e:?}"),
        }
    }

    async fn idle(&self) -> usize {
        self.0.status().available
    }

    async fn close(self) {
        self.0.close();
    }
}

/// bb8.
pub struct Bb8(pub bb8::Pool<Trivial>);

impl BenchPool for Bb8 {
    const NAME: &'static str = "bb8";
    type Guard<'a> = bb8::PooledConnection<'a, Trivial>;

    async fn build(manager: Trivial, max_size: usize) -> Self {
        let max = u32::try_from(max_size).expect("a bench size fits u32");
        Bb8(bb8::Pool::builder().max_size(max).build_unchecked(manager))
    }

    async fn checkout(&self) -> Self::Guard<'_> {
        match self.0.get().await {
            Ok(conn) => conn,
            Err(e) => panic!("bb8 get failed: {e:?}"),
        }
    }

    async fn idle(&self) -> usize {
        self.0.state().idle_connections as usize
    }

    async fn close(self) {
        // bb8 has no close: dropping the last handle drops the idle connections.
        drop(self);
    }
}

/// mobc.
pub struct Mobc(pub mobc::Pool<Trivial>);

impl BenchPool for Mobc {
    const NAME: &'static str = "mobc";
    type Guard<'a> = mobc::Connection<Trivial>;

    async fn build(manager: Trivial, max_size: usize) -> Self {
        let max = max_size as u64;
        // mobc keeps only `max_idle` connections when they come back (2 by default): as many
        // as it may open, so that it pools like the others.
        Mobc(
            mobc::Pool::builder()
                .max_open(max)
                .max_idle(max)
                .build(manager),
        )
    }

    async fn checkout(&self) -> Self::Guard<'_> {
        match self.0.get().await {
            Ok(conn) => conn,
            Err(e) => panic!("mobc get failed: {e:?}"),
        }
    }

    async fn idle(&self) -> usize {
        self.0.state().await.idle as usize
    }

    async fn close(self) {
        // mobc has no close: dropping the last handle lets its tasks wind down.
        drop(self);
    }
}

/// The floor: connections made up front in a bounded `async-channel`; a checkout is a
/// `try_recv` (a `recv` when empty), a return a `try_send`.
pub struct ChannelFloor {
    tx: async_channel::Sender<Conn>,
    rx: async_channel::Receiver<Conn>,
}

/// A connection taken from a [`ChannelFloor`].
pub struct ChannelGuard<'a> {
    conn: Option<Conn>,
    floor: &'a ChannelFloor,
}

impl Deref for ChannelGuard<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn.as_ref().expect("held until drop")
    }
}

impl DerefMut for ChannelGuard<'_> {
    fn deref_mut(&mut self) -> &mut Conn {
        self.conn.as_mut().expect("held until drop")
    }
}

impl Drop for ChannelGuard<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            // The channel holds as many slots as connections exist: never full. Closed only
            // when the floor is dropped, which a borrowed guard outlives never.
            let _ = self.floor.tx.try_send(conn);
        }
    }
}

impl BenchPool for ChannelFloor {
    const NAME: &'static str = "floor-channel";
    type Guard<'a> = ChannelGuard<'a>;

    async fn build(manager: Trivial, max_size: usize) -> Self {
        let (tx, rx) = async_channel::bounded(max_size);
        for _ in 0..max_size {
            tx.try_send(manager.make())
                .expect("the channel has a slot for each");
        }
        ChannelFloor { tx, rx }
    }

    async fn checkout(&self) -> Self::Guard<'_> {
        let conn = match self.rx.try_recv() {
            Ok(conn) => conn,
            Err(_) => self.rx.recv().await.expect("the floor is never closed"),
        };
        ChannelGuard {
            conn: Some(conn),
            floor: self,
        }
    }

    async fn idle(&self) -> usize {
        self.rx.len()
    }

    async fn close(self) {
        self.tx.close();
        while let Ok(conn) = self.rx.try_recv() {
            drop(conn);
        }
    }
}

/// The other floor: a (fair, FIFO) tokio semaphore in front of a mutex-guarded `Vec` of
/// connections made up front.
pub struct MutexFloor {
    permits: tokio::sync::Semaphore,
    idle: Mutex<Vec<Conn>>,
}

/// A connection taken from a [`MutexFloor`].
pub struct MutexGuard<'a> {
    conn: Option<Conn>,
    floor: &'a MutexFloor,
}

impl Deref for MutexGuard<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn.as_ref().expect("held until drop")
    }
}

impl Drop for MutexGuard<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.floor
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(conn);
            self.floor.permits.add_permits(1);
        }
    }
}

impl BenchPool for MutexFloor {
    const NAME: &'static str = "floor-mutex";
    type Guard<'a> = MutexGuard<'a>;

    async fn build(manager: Trivial, max_size: usize) -> Self {
        let idle = (0..max_size).map(|_| manager.make()).collect();
        MutexFloor {
            permits: tokio::sync::Semaphore::new(max_size),
            idle: Mutex::new(idle),
        }
    }

    async fn checkout(&self) -> Self::Guard<'_> {
        self.permits
            .acquire()
            .await
            .expect("the semaphore is never closed")
            .forget();
        let conn = self
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .expect("a permit stands for an idle connection");
        MutexGuard {
            conn: Some(conn),
            floor: self,
        }
    }

    async fn idle(&self) -> usize {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    async fn close(self) {
        drop(self);
    }
}
