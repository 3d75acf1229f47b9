//! The pool's knobs, and how they are checked.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::runtime::Runtime;

/// The pool's configuration. Built and checked by [`Builder`](crate::Builder).
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub max_size: usize,
    pub min_idle: usize,
    pub wait_timeout: Option<Duration>,
    pub create_timeout: Option<Duration>,
    pub check_timeout: Option<Duration>,
    pub shutdown_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub max_lifetime: Option<Duration>,
    /// Each connection's lifetime is shortened by a random part of this, so that
    /// connections made together do not expire together. `None`: 2.5 % of `max_lifetime`.
    pub lifetime_jitter: Option<Duration>,
    pub close_deadline: Duration,
    pub maintenance_interval: Duration,
    pub check_on_checkout: bool,
    /// The first pause after a failed creation; it doubles with each failure in a row.
    pub backoff_first: Duration,
    /// The longest pause between creation attempts.
    pub backoff_max: Duration,
    /// Hand a creation failure to the longest waiter at once, instead of retrying within the
    /// waiters' wait timeouts.
    pub fail_fast: bool,
    pub queue_order: QueueOrder,
    /// At most this many creations in flight at once, the actor's and callers' together.
    pub max_creating: usize,
    /// `min_idle` connections are made one at a time, spread evenly over this window, rather
    /// than all at once. Zero: all at once.
    pub prewarm_window: Duration,
    /// The longest pause between attempts while the server says it is full
    /// (`Manager::is_server_full`).
    pub full_backoff_max: Duration,
    /// Idle connections that no checkout needed during a whole window of this length are
    /// closed, `min_idle` included. `None`: `min_idle` is a floor that is always kept.
    pub surplus_window: Option<Duration>,
}

/// Which idle connection a checkout takes. Waiting callers are served first come, first
/// served either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum QueueOrder {
    /// The one idle longest: connections take turns and all stay warm (none is ever idle long
    /// enough for `idle_timeout` under steady load).
    #[default]
    Fifo,
    /// The one returned last: the same few connections do the work, the others stay idle and
    /// `idle_timeout` closes them, so the pool shrinks to what the load needs.
    Lifo,
}

/// Above this `max_size`, the idle queue grows as it fills instead of being allocated up front.
pub(crate) const PREALLOCATED_IDLE_LIMIT: usize = 4096;

impl Default for Config {
    fn default() -> Self {
        Config {
            max_size: 10,
            min_idle: 0,
            wait_timeout: Some(Duration::from_secs(30)),
            create_timeout: Some(Duration::from_secs(30)),
            check_timeout: Some(Duration::from_secs(5)),
            shutdown_timeout: Some(Duration::from_secs(5)),
            idle_timeout: Some(Duration::from_secs(600)),
            max_lifetime: Some(Duration::from_secs(1800)),
            lifetime_jitter: None,
            // Inside Kubernetes' default grace period (30 s) with room for the HTTP server's
            // own drain before it.
            close_deadline: Duration::from_secs(10),
            maintenance_interval: Duration::from_secs(1),
            check_on_checkout: true,
            backoff_first: Duration::from_millis(10),
            // Short enough that a caller is served within about a quarter of a second of a
            // refusing server accepting again; each pool makes about four attempts a second
            // while it is down (`create_backoff` to change it).
            backoff_max: Duration::from_millis(250),
            fail_fast: false,
            queue_order: QueueOrder::Fifo,
            max_creating: 16,
            prewarm_window: Duration::from_secs(1),
            full_backoff_max: Duration::from_secs(2),
            surplus_window: Some(Duration::from_secs(30)),
        }
    }
}

impl Config {
    /// The jitter in force, in milliseconds: the one set, else 2.5 % of the max lifetime
    /// (HikariCP's), 0 without a max lifetime.
    pub(crate) fn jitter_ms(&self) -> u64 {
        let Some(lifetime) = self.max_lifetime else {
            return 0;
        };
        let jitter = self.lifetime_jitter.unwrap_or(lifetime / 40);
        // Below 2^47 ms (4,400 years), so that a draw times it fits in 64 bits.
        u64::try_from(jitter.as_millis()).map_or(1 << 47, |ms| ms.min(1 << 47))
    }

    pub(crate) fn validate(&self, runtime: Option<&Arc<dyn Runtime>>) -> Result<(), ConfigError> {
        if self.max_size == 0 {
            return Err(ConfigError::MaxSizeZero);
        }
        if self.max_creating == 0 {
            return Err(ConfigError::MaxCreatingZero);
        }
        if self.min_idle > self.max_size {
            return Err(ConfigError::MinIdleAboveMax {
                min_idle: self.min_idle,
                max_size: self.max_size,
            });
        }
        let timeouts = [
            ("wait_timeout", self.wait_timeout),
            ("create_timeout", self.create_timeout),
            ("check_timeout", self.check_timeout),
            ("shutdown_timeout", self.shutdown_timeout),
            ("idle_timeout", self.idle_timeout),
            ("max_lifetime", self.max_lifetime),
            ("maintenance_interval", Some(self.maintenance_interval)),
            ("create_backoff", Some(self.backoff_first)),
            ("server_full_backoff", Some(self.full_backoff_max)),
            ("surplus_window", self.surplus_window),
        ];
        for (name, value) in timeouts {
            if value == Some(Duration::ZERO) {
                return Err(ConfigError::ZeroDuration(name));
            }
        }
        if let (Some(jitter), Some(lifetime)) = (self.lifetime_jitter, self.max_lifetime) {
            if jitter >= lifetime {
                return Err(ConfigError::JitterNotBelowLifetime { jitter, lifetime });
            }
        }
        if self.backoff_first > self.backoff_max {
            return Err(ConfigError::BackoffFirstAboveMax {
                first: self.backoff_first,
                max: self.backoff_max,
            });
        }
        if runtime.is_none() {
            return Err(ConfigError::NoRuntime);
        }
        Ok(())
    }
}

/// What is wrong with a pool's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// `max_size` is 0: the pool could never hand out a connection.
    MaxSizeZero,
    /// `max_creating` is 0: the pool could never make a connection.
    MaxCreatingZero,
    /// `min_idle` is larger than `max_size`.
    MinIdleAboveMax {
        /// The configured `min_idle`.
        min_idle: usize,
        /// The configured `max_size`.
        max_size: usize,
    },
    /// A duration that must be positive is zero (its builder method's name).
    ZeroDuration(&'static str),
    /// No runtime was given to spawn the pool actor on.
    NoRuntime,
    /// The max lifetime's jitter is not shorter than the max lifetime.
    JitterNotBelowLifetime {
        /// The configured jitter.
        jitter: Duration,
        /// The configured max lifetime.
        lifetime: Duration,
    },
    /// The first creation backoff is longer than the longest one.
    BackoffFirstAboveMax {
        /// The configured first pause.
        first: Duration,
        /// The configured longest pause.
        max: Duration,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::MaxSizeZero => f.write_str("max_size is 0; it must be at least 1"),
            ConfigError::MaxCreatingZero => {
                f.write_str("max_creating is 0; it must be at least 1")
            }
            ConfigError::MinIdleAboveMax { min_idle, max_size } => write!(
                f,
                "min_idle ({min_idle}) is larger than max_size ({max_size}); lower min_idle or raise max_size"
            ),
            ConfigError::ZeroDuration(name) => write!(
                f,
                "{name} is zero; give a positive duration, or None where the builder allows it"
            ),
            ConfigError::BackoffFirstAboveMax { first, max } => write!(
                f,
                "create_backoff: the first pause ({first:?}) is longer than the longest ({max:?}); lower the first or raise the longest"
            ),
            ConfigError::JitterNotBelowLifetime { jitter, lifetime } => write!(
                f,
                "max_lifetime_jitter ({jitter:?}) is not shorter than max_lifetime ({lifetime:?}); lower the jitter (a few percent of the lifetime is enough)"
            ),
            ConfigError::NoRuntime => f.write_str(
                "no runtime given: call Builder::runtime with an adapter (gracepool-tokio, gracepool-smol, gracepool-actix)",
            ),
        }
    }
}

impl std::error::Error for ConfigError {}
