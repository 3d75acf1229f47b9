//! The per-connection statement cache: bounded (least recently used goes first) or off, keyed
//! by SQL text and parameter types, and cleared pool-wide by one counter every cache reads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio_postgres::types::Type;
use tokio_postgres::Statement;

/// How many prepared statements each connection keeps.
///
/// A prepared statement lives on the connection that prepared it (one round trip to prepare,
/// then none). A cache that only grows holds one server-side statement per distinct query
/// text for the life of the connection; a bounded one lets the least recently used go
/// (tokio-postgres deallocates it on the server once no copy is in use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
#[non_exhaustive]
pub enum StatementCache {
    /// At most this many statements per connection; the least recently used goes first.
    Bounded(usize),
    /// No cache: `prepare_cached` prepares every time (a round trip per call), and nothing
    /// named stays on the server. Behind PgBouncer's transaction pooling, set
    /// `Pooler::Transaction` on the manager: it turns the cache off, and refuses the calls that
    /// would still prepare a named statement outside a transaction; see the crate docs.
    Disabled,
}

impl StatementCache {
    /// The default: 100 statements per connection.
    pub const DEFAULT_CAPACITY: usize = 100;

    /// `Bounded(n)`, or `Disabled` for 0.
    pub fn with_capacity(n: usize) -> Self {
        if n == 0 {
            StatementCache::Disabled
        } else {
            StatementCache::Bounded(n)
        }
    }

    pub(crate) fn capacity(self) -> usize {
        match self {
            StatementCache::Bounded(n) => n,
            StatementCache::Disabled => 0,
        }
    }
}

impl Default for StatementCache {
    fn default() -> Self {
        StatementCache::Bounded(Self::DEFAULT_CAPACITY)
    }
}

/// A key: the SQL text and the parameter types given (empty for an untyped `prepare`).
type Key = (String, Vec<Type>);

/// One connection's cache.
pub(crate) struct Cache {
    capacity: usize,
    /// The manager's clear counter: a cache that has seen an older value empties itself first.
    generation: Arc<AtomicU64>,
    inner: Mutex<Entries>,
}

struct Entries {
    map: HashMap<Key, (Statement, u64)>,
    /// A use counter: the entry with the lowest stamp is the least recently used.
    clock: u64,
    generation: u64,
}

impl Cache {
    pub(crate) fn new(mode: StatementCache, generation: Arc<AtomicU64>) -> Self {
        let seen = generation.load(Ordering::Acquire);
        Cache {
            capacity: mode.capacity(),
            generation,
            inner: Mutex::new(Entries {
                map: HashMap::new(),
                clock: 0,
                generation: seen,
            }),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.capacity > 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        let mut entries = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = self.generation.load(Ordering::Acquire);
        if entries.generation != now {
            entries.map.clear();
            entries.generation = now;
        }
        entries
    }

    pub(crate) fn get(&self, sql: &str, types: &[Type]) -> Option<Statement> {
        if !self.enabled() {
            return None;
        }
        let mut entries = self.lock();
        entries.clock += 1;
        let clock = entries.clock;
        // A lookup by a borrowed key would need the key's parts as one borrowed type; the
        // clone of a short string is cheap beside a round trip.
        let key = (sql.to_owned(), types.to_vec());
        let (stmt, used) = entries.map.get_mut(&key)?;
        *used = clock;
        Some(stmt.clone())
    }

    pub(crate) fn insert(&self, sql: &str, types: &[Type], stmt: Statement) {
        if !self.enabled() {
            return;
        }
        let mut entries = self.lock();
        entries.clock += 1;
        let clock = entries.clock;
        let key = (sql.to_owned(), types.to_vec());
        if !entries.map.contains_key(&key) && entries.map.len() >= self.capacity {
            // Linear in the capacity, on a miss only: a miss costs a round trip anyway.
            let oldest = entries
                .map
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(key, _)| key.clone());
            if let Some(oldest) = oldest {
                entries.map.remove(&oldest);
            }
        }
        entries.map.insert(key, (stmt, clock));
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub(crate) fn clear(&self) {
        self.lock().map.clear();
    }
}
