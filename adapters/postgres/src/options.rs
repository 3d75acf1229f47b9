//! Connection settings in libpq's terms: a connection string (key-value or URL) with libpq's
//! `sslmode` values and `sslrootcert`, which tokio-postgres does not read itself; the
//! environment (`DATABASE_URL` and the `PG*` variables); and the network defaults this crate
//! sets where the user set nothing.

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::Config;

/// libpq's `sslmode`: whether the connection is encrypted, and what is verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "kebab-case"))]
#[non_exhaustive]
pub enum SslMode {
    /// Never encrypted.
    Disable,
    /// Encrypted when the server offers it (libpq's `allow` and `prefer`). Without a TLS
    /// connector this crate connects without TLS, and says so: see [`Manager::from_conn_str`].
    ///
    /// [`Manager::from_conn_str`]: crate::Manager::from_conn_str
    #[default]
    Prefer,
    /// Always encrypted; the certificate is not verified unless `sslrootcert` is given (then
    /// as `VerifyCa`), as libpq does.
    Require,
    /// Encrypted, and the server's certificate chain verified against `sslrootcert`.
    VerifyCa,
    /// Encrypted, the chain verified, and the host name checked against the certificate.
    VerifyFull,
}

impl SslMode {
    /// Whether this mode refuses a connection without TLS.
    pub fn requires_tls(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }

    fn parse(value: &str) -> Option<SslMode> {
        Some(match value {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        })
    }
}

/// What is wrong with connection settings.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConfigError {
    /// tokio-postgres could not read the connection string.
    Parse(tokio_postgres::Error),
    /// A setting's value is not one this crate understands.
    BadValue {
        /// The setting (`sslmode`, or an environment variable's name).
        setting: String,
        /// The value given.
        value: String,
        /// What would be accepted.
        expected: &'static str,
    },
    /// The settings ask for TLS (`sslmode` `require`, `verify-ca` or `verify-full`) and the
    /// manager has no TLS connector: it refuses rather than connect in plaintext.
    TlsRequired(SslMode),
    /// TLS could not be set up (a root certificate file that cannot be read, say).
    #[cfg(feature = "rustls")]
    Tls(crate::TlsError),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Parse(e) => write!(f, "invalid connection string: {e}"),
            ConfigError::BadValue {
                setting,
                value,
                expected,
            } => write!(f, "{setting}: {value:?} is not {expected}"),
            ConfigError::TlsRequired(mode) => write!(
                f,
                "sslmode={mode} needs TLS, and this manager has none: enable gracepool-postgres' \
                 `rustls` feature and build it with `ConnectOptions::manager_rustls`, or give \
                 your own connector to `Manager::with_tls` (it never falls back to plaintext)"
            ),
            #[cfg(feature = "rustls")]
            ConfigError::Tls(e) => write!(f, "TLS: {e}"),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Parse(e) => Some(e),
            #[cfg(feature = "rustls")]
            ConfigError::Tls(e) => Some(e),
            _ => None,
        }
    }
}

/// The network defaults this crate sets on a connection string or the environment wherever
/// the setting was not given: a connect timeout, TCP keepalives within seconds rather than
/// tokio-postgres' two hours, and (on Linux) a TCP user timeout. Each bounds how long a dead
/// peer — a partition that drops packets, a host gone without a FIN — can hold a connection
/// attempt or a query; each is overridden by `connect_timeout`, `keepalives_idle`,
/// `keepalives_interval`, `keepalives_retries` and `tcp_user_timeout` in the string.
pub mod defaults {
    use std::time::Duration;

    /// `connect_timeout`: a TCP connect (each host's; tokio-postgres bounds the TCP connect
    /// only, not TLS or authentication, which the pool's create timeout bounds) into a silent network
    /// gives up after this long (tokio-postgres' own default: none).
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
    /// `keepalives_idle`: an idle connection is probed after this long (tokio-postgres: 2 h).
    pub const KEEPALIVES_IDLE: Duration = Duration::from_secs(30);
    /// `keepalives_interval`: between probes.
    pub const KEEPALIVES_INTERVAL: Duration = Duration::from_secs(10);
    /// `keepalives_retries`: probes unanswered before the kernel ends the connection.
    pub const KEEPALIVES_RETRIES: u32 = 3;
    /// `tcp_user_timeout` (Linux): data sent and unacknowledged this long ends the
    /// connection, where keepalives cannot help (they probe only an idle connection).
    pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(60);
}

/// Connection settings as libpq reads them: a [`tokio_postgres::Config`], and the TLS settings
/// tokio-postgres does not read (`sslmode` `verify-ca`/`verify-full`, `sslrootcert`).
///
/// ```
/// use gracepool_postgres::{ConnectOptions, SslMode};
///
/// let opts = ConnectOptions::parse(
///     "postgresql://app@db.internal:5432/app?sslmode=verify-full&sslrootcert=/etc/ca.pem",
/// )
/// .unwrap();
/// assert_eq!(opts.ssl_mode(), SslMode::VerifyFull);
/// assert_eq!(opts.config().get_dbname(), Some("app"));
/// // Where the string said nothing, the network defaults apply.
/// assert_eq!(
///     opts.config().get_connect_timeout(),
///     Some(&gracepool_postgres::defaults::CONNECT_TIMEOUT)
/// );
/// ```
#[derive(Clone)]
pub struct ConnectOptions {
    config: Config,
    ssl_mode: SslMode,
    root_cert: Option<PathBuf>,
}

impl fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Config's Debug leaves the password out.
        f.debug_struct("ConnectOptions")
            .field("config", &self.config)
            .field("ssl_mode", &self.ssl_mode)
            .field("root_cert", &self.root_cert)
            .finish()
    }
}

/// The settings this crate reads itself and takes out of a string before tokio-postgres reads
/// the rest: libpq's TLS settings, and `tcp_user_timeout`, which libpq reads in milliseconds
/// and tokio-postgres in seconds (libpq's meaning is kept: a string written for libpq means
/// the same here).
const OURS: [&str; 3] = ["sslmode", "sslrootcert", "tcp_user_timeout"];

impl ConnectOptions {
    /// Reads a connection string: key-value (`host=db user=app sslmode=require`) or a URL
    /// (`postgresql://app@db/app?sslmode=verify-full`). The network [`defaults`] fill in what
    /// it does not say.
    pub fn parse(s: &str) -> Result<ConnectOptions, ConfigError> {
        let trimmed = s.trim_start();
        let (rest, ours, given) =
            if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
                split_url(trimmed)
            } else {
                split_key_value(trimmed)
            };
        let config = Config::from_str(&rest).map_err(ConfigError::Parse)?;
        let mut opts = ConnectOptions {
            config,
            ssl_mode: SslMode::default(),
            root_cert: None,
        };
        for (key, value) in ours {
            opts.set_ours(&key, &value, &key)?;
        }
        opts.apply_defaults(&given);
        Ok(opts)
    }

    /// Reads the environment as libpq does: `DATABASE_URL` if set, then the `PG*` variables
    /// for whatever it does not say — `PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`,
    /// `PGDATABASE`, `PGSSLMODE`, `PGSSLROOTCERT`, `PGCONNECT_TIMEOUT` (seconds),
    /// `PGAPPNAME`. Without a host, `localhost`; without a user, `USER`; the network
    /// [`defaults`] for the rest.
    pub fn from_env() -> Result<ConnectOptions, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`from_env`](ConnectOptions::from_env) over any lookup, for tests and other sources.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<ConnectOptions, ConfigError> {
        let mut opts = match lookup("DATABASE_URL").filter(|url| !url.trim().is_empty()) {
            Some(url) => ConnectOptions::parse(&url).map_err(|e| match e {
                ConfigError::Parse(e) => ConfigError::BadValue {
                    setting: "DATABASE_URL".into(),
                    value: e.to_string(),
                    expected: "a PostgreSQL connection string",
                },
                e => e,
            })?,
            None => ConnectOptions::parse("")?,
        };
        opts.fill_from(&lookup)?;
        Ok(opts)
    }

    /// Fills every setting not given yet from `PG*`-named values.
    pub(crate) fn fill_from(
        &mut self,
        lookup: &impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        let var = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let c = &mut self.config;
        if c.get_hosts().is_empty() {
            match var("PGHOST") {
                Some(hosts) => {
                    for host in hosts.split(',') {
                        c.host(host.trim());
                    }
                }
                None => {
                    c.host("localhost");
                }
            }
        }
        if c.get_ports().is_empty() {
            if let Some(port) = var("PGPORT") {
                let port = port.trim().parse().map_err(|_| ConfigError::BadValue {
                    setting: "PGPORT".into(),
                    value: port.clone(),
                    expected: "a port number",
                })?;
                c.port(port);
            }
        }
        if c.get_user().is_none() {
            if let Some(user) = var("PGUSER").or_else(|| var("USER")) {
                c.user(user);
            }
        }
        if c.get_password().is_none() {
            if let Some(password) = var("PGPASSWORD") {
                c.password(password);
            }
        }
        if c.get_dbname().is_none() {
            if let Some(db) = var("PGDATABASE") {
                c.dbname(db);
            }
        }
        if c.get_application_name().is_none() {
            if let Some(app) = var("PGAPPNAME") {
                c.application_name(app);
            }
        }
        if let Some(secs) = var("PGCONNECT_TIMEOUT") {
            if self.config.get_connect_timeout() == Some(&defaults::CONNECT_TIMEOUT) {
                let n: u64 = secs.trim().parse().map_err(|_| ConfigError::BadValue {
                    setting: "PGCONNECT_TIMEOUT".into(),
                    value: secs.clone(),
                    expected: "a whole number of seconds",
                })?;
                // libpq: 0 (or less) waits forever.
                if n > 0 {
                    self.config.connect_timeout(Duration::from_secs(n.max(2)));
                }
            }
        }
        if self.ssl_mode == SslMode::default() {
            if let Some(mode) = var("PGSSLMODE") {
                self.set_ours("sslmode", &mode, "PGSSLMODE")?;
            }
        }
        if self.root_cert.is_none() {
            if let Some(path) = var("PGSSLROOTCERT") {
                self.root_cert = Some(PathBuf::from(path));
            }
        }
        Ok(())
    }

    fn set_ours(&mut self, key: &str, value: &str, setting: &str) -> Result<(), ConfigError> {
        match key {
            "tcp_user_timeout" => {
                let ms: i64 = value.trim().parse().map_err(|_| ConfigError::BadValue {
                    setting: setting.to_owned(),
                    value: value.to_owned(),
                    expected: "a whole number of milliseconds (libpq's unit)",
                })?;
                // libpq: 0 (or less) leaves the system's default.
                if ms > 0 {
                    self.config
                        .tcp_user_timeout(Duration::from_millis(ms.unsigned_abs()));
                }
            }
            "sslmode" => {
                self.ssl_mode = SslMode::parse(value).ok_or_else(|| ConfigError::BadValue {
                    setting: setting.to_owned(),
                    value: value.to_owned(),
                    expected: "one of disable, allow, prefer, require, verify-ca, verify-full",
                })?;
            }
            _ => self.root_cert = Some(PathBuf::from(value)),
        }
        Ok(())
    }

    fn apply_defaults(&mut self, given: &HashSet<String>) {
        let c = &mut self.config;
        if !given.contains("connect_timeout") {
            c.connect_timeout(defaults::CONNECT_TIMEOUT);
        }
        if !given.contains("keepalives_idle") {
            c.keepalives_idle(defaults::KEEPALIVES_IDLE);
        }
        if !given.contains("keepalives_interval") {
            c.keepalives_interval(defaults::KEEPALIVES_INTERVAL);
        }
        if !given.contains("keepalives_retries") {
            c.keepalives_retries(defaults::KEEPALIVES_RETRIES);
        }
        if !given.contains("tcp_user_timeout") {
            c.tcp_user_timeout(defaults::TCP_USER_TIMEOUT);
        }
    }

    /// The tokio-postgres configuration (without the TLS settings it cannot read).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The tokio-postgres configuration, to change.
    pub fn config_mut(&mut self) -> &mut Config {
        &mut self.config
    }

    /// The `sslmode` asked for.
    pub fn ssl_mode(&self) -> SslMode {
        self.ssl_mode
    }

    /// Sets the `sslmode`.
    pub fn set_ssl_mode(&mut self, mode: SslMode) -> &mut Self {
        self.ssl_mode = mode;
        self
    }

    /// The root certificate file (`sslrootcert`), if given.
    pub fn root_cert(&self) -> Option<&std::path::Path> {
        self.root_cert.as_deref()
    }

    /// Sets the root certificate file.
    pub fn set_root_cert(&mut self, path: impl Into<PathBuf>) -> &mut Self {
        self.root_cert = Some(path.into());
        self
    }

    /// A manager without TLS. Refuses settings that ask for TLS
    /// ([`ConfigError::TlsRequired`]) rather than connect in plaintext; `prefer` (libpq's
    /// default) connects in plaintext, since this manager has no TLS to offer.
    pub fn manager(&self) -> Result<crate::Manager, ConfigError> {
        if self.ssl_mode.requires_tls() {
            return Err(ConfigError::TlsRequired(self.ssl_mode));
        }
        let mut config = self.config.clone();
        config.ssl_mode(tokio_postgres::config::SslMode::Disable);
        Ok(crate::Manager::new(config))
    }

    /// A manager with TLS on rustls, as `sslmode` and `sslrootcert` say (libpq's rules):
    /// `disable` never encrypts; `prefer` encrypts when the server offers it, unverified;
    /// `require` always encrypts, verified as `verify-ca` when a root certificate is given;
    /// `verify-ca` and `verify-full` need `sslrootcert`.
    #[cfg(feature = "rustls")]
    pub fn manager_rustls(&self) -> Result<crate::Manager<crate::RustlsConnect>, ConfigError> {
        use crate::{RustlsConnect, Verify};
        use tokio_postgres::config::SslMode as Wire;
        let (wire, verify) = match (self.ssl_mode, self.root_cert.is_some()) {
            (SslMode::Disable, _) => (Wire::Disable, Verify::None),
            (SslMode::Prefer, _) => (Wire::Prefer, Verify::None),
            (SslMode::Require, false) => (Wire::Require, Verify::None),
            (SslMode::Require, true) | (SslMode::VerifyCa, _) => (Wire::Require, Verify::Ca),
            (SslMode::VerifyFull, _) => (Wire::Require, Verify::Full),
        };
        let connector = match (&self.root_cert, verify) {
            (Some(path), _) => {
                RustlsConnect::from_root_cert_file(verify, path).map_err(ConfigError::Tls)?
            }
            (None, Verify::None) => {
                RustlsConnect::new(Verify::None, crate::rustls::RootCertStore::empty())
            }
            (None, _) => {
                return Err(ConfigError::BadValue {
                    setting: "sslrootcert".into(),
                    value: String::new(),
                    expected:
                        "a root certificate file (sslmode verify-ca and verify-full need one)",
                })
            }
        };
        let mut config = self.config.clone();
        config.ssl_mode(wire);
        Ok(crate::Manager::with_tls(config, connector))
    }
}

impl FromStr for ConnectOptions {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ConnectOptions::parse(s)
    }
}

type Split = (String, Vec<(String, String)>, HashSet<String>);

/// Takes this crate's settings out of a key-value string; returns the rest (re-quoted for
/// tokio-postgres), ours, and every key given.
fn split_key_value(s: &str) -> Split {
    let mut rest = String::new();
    let mut ours = Vec::new();
    let mut given = HashSet::new();
    for (key, value) in key_value_pairs(s) {
        given.insert(key.clone());
        if OURS.contains(&key.as_str()) {
            ours.push((key, value));
            continue;
        }
        if !rest.is_empty() {
            rest.push(' ');
        }
        rest.push_str(&key);
        rest.push_str("='");
        for ch in value.chars() {
            if ch == '\'' || ch == '\\' {
                rest.push('\\');
            }
            rest.push(ch);
        }
        rest.push('\'');
    }
    // A string that is not key-value pairs at all is left for tokio-postgres to refuse.
    if rest.is_empty() && ours.is_empty() && !s.trim().is_empty() {
        return (s.to_owned(), ours, given);
    }
    (rest, ours, given)
}

/// libpq's key-value syntax: `key = value` pairs separated by white space; a value may be
/// single-quoted, with `\'` and `\\` inside. Malformed input ends the pairs: tokio-postgres
/// then refuses what it gets.
fn key_value_pairs(s: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() {
            break;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            // Not a pair: hand the whole string to tokio-postgres for its error.
            return vec![(key, String::new())];
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => {
                        if let Some(c) = chars.next() {
                            value.push(c);
                        }
                    }
                    Some('\'') | None => break,
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        pairs.push((key, value));
    }
    pairs
}

/// Takes this crate's settings out of a URL's query; returns the URL without them, ours
/// (percent-decoded), and every query key given.
fn split_url(s: &str) -> Split {
    let Some((base, query)) = s.split_once('?') else {
        return (s.to_owned(), Vec::new(), HashSet::new());
    };
    let mut kept = Vec::new();
    let mut ours = Vec::new();
    let mut given = HashSet::new();
    for param in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = param.split_once('=').unwrap_or((param, ""));
        let key_decoded = percent_decode(key);
        given.insert(key_decoded.clone());
        if OURS.contains(&key_decoded.as_str()) {
            ours.push((key_decoded, percent_decode(value)));
        } else {
            kept.push(param);
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (rest, ours, given)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn libpq_sslmodes_are_read_from_both_forms_and_the_rest_goes_to_tokio_postgres() {
        let kv = ConnectOptions::parse(
            "host=db.internal user=app password='it\\'s' sslmode=verify-full sslrootcert='/etc/my ca.pem' dbname=app",
        )
        .unwrap();
        assert_eq!(kv.ssl_mode(), SslMode::VerifyFull);
        assert_eq!(kv.root_cert(), Some(std::path::Path::new("/etc/my ca.pem")));
        assert_eq!(kv.config().get_password(), Some(&b"it's"[..]));
        assert_eq!(kv.config().get_dbname(), Some("app"));

        let url = ConnectOptions::parse(
            "postgresql://app:pw@db.internal:6432/app?sslmode=verify-ca&application_name=web&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(url.ssl_mode(), SslMode::VerifyCa);
        assert_eq!(url.root_cert(), Some(std::path::Path::new("/etc/ca.pem")));
        assert_eq!(url.config().get_application_name(), Some("web"));
        assert_eq!(url.config().get_ports(), &[6432]);

        let bad = ConnectOptions::parse("host=db sslmode=sometimes").unwrap_err();
        assert!(bad.to_string().contains("verify-full"), "{bad}");
        assert!(ConnectOptions::parse("host=db port=notaport").is_err());
        assert!(ConnectOptions::parse("not a connection string").is_err());
    }

    #[test]
    fn network_defaults_fill_in_only_what_was_not_given() {
        let d = ConnectOptions::parse("host=db user=app").unwrap();
        let c = d.config();
        assert_eq!(c.get_connect_timeout(), Some(&defaults::CONNECT_TIMEOUT));
        assert_eq!(c.get_keepalives_idle(), defaults::KEEPALIVES_IDLE);
        assert_eq!(c.get_tcp_user_timeout(), Some(&defaults::TCP_USER_TIMEOUT));
        let given = ConnectOptions::parse(
            "host=db user=app connect_timeout=3 keepalives_idle=7 tcp_user_timeout=9000",
        )
        .unwrap();
        let c = given.config();
        assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(3)));
        assert_eq!(c.get_keepalives_idle(), Duration::from_secs(7));
        assert_eq!(c.get_tcp_user_timeout(), Some(&Duration::from_secs(9)));
    }

    #[test]
    fn the_environment_is_read_as_libpq_reads_it() {
        let o = ConnectOptions::from_lookup(lookup(&[
            ("PGHOST", "a.internal,b.internal"),
            ("PGPORT", "5433"),
            ("PGUSER", "svc"),
            ("PGPASSWORD", "secret"),
            ("PGDATABASE", "orders"),
            ("PGSSLMODE", "require"),
            ("PGCONNECT_TIMEOUT", "4"),
            ("PGAPPNAME", "billing"),
        ]))
        .unwrap();
        let c = o.config();
        assert_eq!(c.get_hosts().len(), 2);
        assert_eq!(c.get_ports(), &[5433]);
        assert_eq!(c.get_user(), Some("svc"));
        assert_eq!(c.get_password(), Some(&b"secret"[..]));
        assert_eq!(c.get_dbname(), Some("orders"));
        assert_eq!(c.get_application_name(), Some("billing"));
        assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(4)));
        assert_eq!(o.ssl_mode(), SslMode::Require);
        // Asked for TLS, a manager without it refuses.
        assert!(matches!(
            o.manager().unwrap_err(),
            ConfigError::TlsRequired(SslMode::Require)
        ));

        // DATABASE_URL first; PG* only for what it leaves out.
        let o = ConnectOptions::from_lookup(lookup(&[
            ("DATABASE_URL", "postgres://web@db:6543/shop"),
            ("PGHOST", "ignored"),
            ("PGPASSWORD", "from-env"),
        ]))
        .unwrap();
        let c = o.config();
        assert_eq!(c.get_user(), Some("web"));
        assert_eq!(c.get_ports(), &[6543]);
        assert_eq!(c.get_dbname(), Some("shop"));
        assert_eq!(c.get_password(), Some(&b"from-env"[..]));
        assert!(format!("{:?}", c.get_hosts()).contains("db"));

        let bad = ConnectOptions::from_lookup(lookup(&[("PGPORT", "five")])).unwrap_err();
        assert!(bad.to_string().starts_with("PGPORT"), "{bad}");
        // Nothing at all: localhost, the defaults.
        let o = ConnectOptions::from_lookup(lookup(&[])).unwrap();
        assert!(format!("{:?}", o.config().get_hosts()).contains("localhost"));
    }
}
