//! The builder's settings as data: from a configuration file (any `serde` format) or from the
//! environment, checked exactly as the builder checks them.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use crate::builder::Builder;
use crate::manager::Manager;

/// Every knob of [`Builder`], each optional: a field left out keeps the builder's default.
///
/// Durations are written as a number of seconds (`30`, `0.25`), as a string with a unit
/// (`"250ms"`, `"30s"`, `"5m"`, `"1h"`), or as `"off"` (or `false`) to switch a limit off where
/// the builder takes `None`. Apply it with [`Builder::config`]; [`build`](Builder::build) then
/// checks it as it checks every builder call, with the same typed errors.
///
/// ```
/// # #[cfg(feature = "serde")] {
/// use gracepool::PoolConfig;
///
/// let config: PoolConfig = serde_json::from_str(
///     r#"{ "max_size": 16, "wait_timeout": "5s", "idle_timeout": "off" }"#,
/// ).unwrap();
/// assert_eq!(config.max_size, Some(16));
/// # }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PoolConfig {
    /// [`Builder::max_size`].
    pub max_size: Option<usize>,
    /// [`Builder::min_idle`].
    pub min_idle: Option<usize>,
    /// [`Builder::wait_timeout`].
    #[serde(with = "limit")]
    pub wait_timeout: Option<Limit>,
    /// [`Builder::create_timeout`].
    #[serde(with = "limit")]
    pub create_timeout: Option<Limit>,
    /// [`Builder::check_timeout`].
    #[serde(with = "limit")]
    pub check_timeout: Option<Limit>,
    /// [`Builder::shutdown_timeout`].
    #[serde(with = "limit")]
    pub shutdown_timeout: Option<Limit>,
    /// [`Builder::idle_timeout`].
    #[serde(with = "limit")]
    pub idle_timeout: Option<Limit>,
    /// [`Builder::max_lifetime`].
    #[serde(with = "limit")]
    pub max_lifetime: Option<Limit>,
    /// [`Builder::max_lifetime_jitter`] (`0` turns it off).
    #[serde(with = "duration", skip_serializing_if = "Option::is_none")]
    pub max_lifetime_jitter: Option<Duration>,
    /// [`Builder::close_deadline`].
    #[serde(with = "duration")]
    pub close_deadline: Option<Duration>,
    /// [`Builder::maintenance_interval`].
    #[serde(with = "duration")]
    pub maintenance_interval: Option<Duration>,
    /// [`Builder::check_on_checkout`].
    pub check_on_checkout: Option<bool>,
    /// The first pause of [`Builder::create_backoff`].
    #[serde(with = "duration")]
    pub backoff_first: Option<Duration>,
    /// The longest pause of [`Builder::create_backoff`].
    #[serde(with = "duration")]
    pub backoff_longest: Option<Duration>,
    /// [`Builder::fail_fast`].
    pub fail_fast: Option<bool>,
    /// [`Builder::queue_order`]: `"fifo"` or `"lifo"`.
    pub queue_order: Option<crate::config::QueueOrder>,
    /// [`Builder::max_creating`].
    pub max_creating: Option<usize>,
    /// [`Builder::prewarm_window`] (`0` makes `min_idle` all at once).
    #[serde(with = "duration", skip_serializing_if = "Option::is_none")]
    pub prewarm_window: Option<Duration>,
    /// [`Builder::server_full_backoff`].
    #[serde(with = "duration", skip_serializing_if = "Option::is_none")]
    pub server_full_backoff: Option<Duration>,
    /// [`Builder::surplus_window`] (`"off"`: `min_idle` is a floor).
    #[serde(with = "limit", skip_serializing_if = "Option::is_none")]
    pub surplus_window: Option<Limit>,
    /// [`Builder::name`]: the `pool` label of the figures the pool publishes with the
    /// `metrics` feature.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A limit that can be switched off: what the builder's `Option<Duration>` knobs take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// No limit (`None` on the builder).
    Off,
    /// This long.
    After(Duration),
}

impl From<Limit> for Option<Duration> {
    fn from(limit: Limit) -> Self {
        match limit {
            Limit::Off => None,
            Limit::After(d) => Some(d),
        }
    }
}

/// A setting that could not be read: which one, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigReadError {
    /// The setting (an environment variable's name).
    pub setting: String,
    /// What was wrong with its value.
    pub reason: String,
}

impl fmt::Display for ConfigReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.setting, self.reason)
    }
}

impl std::error::Error for ConfigReadError {}

impl PoolConfig {
    /// Reads the settings from environment variables named `PREFIX` + the field's name in
    /// capitals (`APP_POOL_` + `MAX_SIZE`, `APP_POOL_WAIT_TIMEOUT`, ...). Unset variables keep
    /// the builder's default; a value that cannot be read is an error naming the variable.
    pub fn from_env(prefix: &str) -> Result<PoolConfig, ConfigReadError> {
        Self::from_lookup(prefix, |name| std::env::var(name).ok())
    }

    /// [`from_env`](PoolConfig::from_env) over any lookup, for tests and other sources.
    pub fn from_lookup(
        prefix: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<PoolConfig, ConfigReadError> {
        let read = |field: &str| {
            let name = format!("{prefix}{}", field.to_ascii_uppercase());
            lookup(&name).map(|value| (name, value))
        };
        let mut c = PoolConfig::default();
        macro_rules! set {
            ($field:ident, $parse:expr) => {
                if let Some((name, value)) = read(stringify!($field)) {
                    c.$field = Some($parse(value.trim()).map_err(|reason| ConfigReadError {
                        setting: name,
                        reason,
                    })?);
                }
            };
        }
        set!(max_size, parse_count);
        set!(min_idle, parse_count);
        set!(wait_timeout, parse_limit);
        set!(create_timeout, parse_limit);
        set!(check_timeout, parse_limit);
        set!(shutdown_timeout, parse_limit);
        set!(idle_timeout, parse_limit);
        set!(max_lifetime, parse_limit);
        set!(max_lifetime_jitter, parse_duration);
        set!(close_deadline, parse_duration);
        set!(maintenance_interval, parse_duration);
        set!(check_on_checkout, parse_bool);
        set!(backoff_first, parse_duration);
        set!(backoff_longest, parse_duration);
        set!(fail_fast, parse_bool);
        set!(queue_order, parse_order);
        set!(max_creating, parse_count);
        set!(prewarm_window, parse_duration);
        set!(server_full_backoff, parse_duration);
        set!(surplus_window, parse_limit);
        set!(name, parse_name);
        Ok(c)
    }
}

impl<M: Manager> Builder<M> {
    /// Applies every setting `config` has; the rest keep their values. Checked by
    /// [`build`](Builder::build) like any other builder call.
    pub fn config(mut self, config: &PoolConfig) -> Self {
        let c = config;
        if let Some(n) = c.max_size {
            self = self.max_size(n);
        }
        if let Some(n) = c.min_idle {
            self = self.min_idle(n);
        }
        macro_rules! limit {
            ($field:ident) => {
                if let Some(limit) = c.$field {
                    self = self.$field(Option::<Duration>::from(limit));
                }
            };
        }
        limit!(wait_timeout);
        limit!(create_timeout);
        limit!(check_timeout);
        limit!(shutdown_timeout);
        limit!(idle_timeout);
        limit!(max_lifetime);
        limit!(surplus_window);
        if let Some(n) = c.max_creating {
            self = self.max_creating(n);
        }
        if let Some(d) = c.prewarm_window {
            self = self.prewarm_window(d);
        }
        if let Some(d) = c.server_full_backoff {
            self = self.server_full_backoff(d);
        }
        if let Some(d) = c.max_lifetime_jitter {
            self = self.max_lifetime_jitter(d);
        }
        if let Some(d) = c.close_deadline {
            self = self.close_deadline(d);
        }
        if let Some(d) = c.maintenance_interval {
            self = self.maintenance_interval(d);
        }
        if let Some(b) = c.check_on_checkout {
            self = self.check_on_checkout(b);
        }
        if c.backoff_first.is_some() || c.backoff_longest.is_some() {
            let (first, longest) = self.backoff();
            self = self.create_backoff(
                c.backoff_first.unwrap_or(first),
                c.backoff_longest.unwrap_or(longest),
            );
        }
        if let Some(b) = c.fail_fast {
            self = self.fail_fast(b);
        }
        if let Some(order) = c.queue_order {
            self = self.queue_order(order);
        }
        if let Some(name) = &c.name {
            self = self.name(name.clone());
        }
        self
    }
}

fn parse_order(s: &str) -> Result<crate::config::QueueOrder, String> {
    match s.to_ascii_lowercase().as_str() {
        "fifo" => Ok(crate::config::QueueOrder::Fifo),
        "lifo" => Ok(crate::config::QueueOrder::Lifo),
        _ => Err(format!("{s:?} is not fifo or lifo")),
    }
}

fn parse_name(s: &str) -> Result<String, String> {
    Ok(s.to_string())
}

fn parse_count(s: &str) -> Result<usize, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not a whole number"))
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("{s:?} is not true or false")),
    }
}

/// `"250ms"`, `"30s"`, `"5m"`, `"1h"`, or a plain number of seconds (`"0.5"`).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(at) => (s[..at].trim(), s[at..].trim()),
        None => (s, "s"),
    };
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("{s:?}: the unit must be ms, s, m or h")),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 250ms, 30s, 5m or 1h"))?;
    seconds(value * scale).ok_or_else(|| format!("{s:?} is not a duration a pool can use"))
}

fn parse_limit(s: &str) -> Result<Limit, String> {
    match s.to_ascii_lowercase().as_str() {
        "off" | "none" | "false" => Ok(Limit::Off),
        _ => parse_duration(s).map(Limit::After),
    }
}

fn seconds(value: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(value).ok()
}

/// A duration field: a number of seconds or a string with a unit.
mod duration {
    use super::*;

    pub(super) fn serialize<S: serde::Serializer>(
        value: &Option<Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        match d.deserialize_any(Setting)? {
            Read::Limit(Limit::After(d)) => Ok(Some(d)),
            Read::Limit(Limit::Off) => Err(de::Error::custom(
                "this duration cannot be switched off; give a positive duration",
            )),
        }
    }
}

/// A limit field: a duration, or `"off"` / `false`.
mod limit {
    use super::*;

    pub(super) fn serialize<S: serde::Serializer>(
        value: &Option<Limit>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(Limit::After(d)) => s.serialize_some(&d.as_secs_f64()),
            Some(Limit::Off) => s.serialize_some("off"),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Limit>, D::Error> {
        let Read::Limit(limit) = d.deserialize_any(Setting)?;
        Ok(Some(limit))
    }
}

enum Read {
    Limit(Limit),
}

struct Setting;

impl Visitor<'_> for Setting {
    type Value = Read;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration: seconds as a number, a string like \"250ms\", \"30s\", \"5m\", \"1h\", or \"off\"")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Read, E> {
        Ok(Read::Limit(Limit::After(Duration::from_secs(v))))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Read, E> {
        u64::try_from(v)
            .map(|v| Read::Limit(Limit::After(Duration::from_secs(v))))
            .map_err(|_| E::custom("a duration cannot be negative"))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Read, E> {
        seconds(v)
            .map(|d| Read::Limit(Limit::After(d)))
            .ok_or_else(|| E::custom(format!("{v} is not a duration a pool can use")))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Read, E> {
        if v {
            Err(E::custom("a limit is a duration or false (off), not true"))
        } else {
            Ok(Read::Limit(Limit::Off))
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Read, E> {
        parse_limit(v.trim()).map(Read::Limit).map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        let ok = [
            ("250ms", Duration::from_millis(250)),
            ("30s", Duration::from_secs(30)),
            ("30", Duration::from_secs(30)),
            ("0.5", Duration::from_millis(500)),
            ("5m", Duration::from_secs(300)),
            ("1h", Duration::from_secs(3600)),
            ("1.5 s", Duration::from_millis(1500)),
        ];
        for (text, want) in ok {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
        for bad in ["", "ten", "5d", "-1s", "1e400"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(parse_limit("off"), Ok(Limit::Off));
        assert_eq!(parse_limit("2s"), Ok(Limit::After(Duration::from_secs(2))));
    }
}
