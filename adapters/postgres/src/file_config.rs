//! One configuration section for a PostgreSQL pool: the connection's settings and the pool's,
//! from any `serde` format.

use std::path::PathBuf;

use gracepool::PoolConfig;

use crate::{CheckMethod, ConfigError, ConnectOptions, Manager, Pooler, SslMode, StatementCache};

/// A PostgreSQL pool's settings in one section: where and how to connect (a `url`, or libpq's
/// settings one by one, or both — a setting given alone wins over the URL's), how connections
/// are checked and how many statements each keeps, and the pool's own knobs under `pool`
/// ([`gracepool::PoolConfig`], read as the core reads it). Unknown fields are errors, at every
/// level. What is not given comes from the environment, as libpq reads it (`PGHOST`,
/// `PGPASSWORD`, ...): [`PgConfig::options`].
///
/// ```
/// use gracepool_postgres::PgConfig;
///
/// let config: PgConfig = serde_json::from_str(r#"{
///     "url": "postgresql://app@db.internal/app",
///     "application_name": "billing",
///     "statement_cache": 0,
///     "check": "verified",
///     "pool": { "max_size": 16, "wait_timeout": "5s" }
/// }"#).unwrap();
/// let options = config.options_without_env().unwrap();
/// assert_eq!(options.config().get_application_name(), Some("billing"));
/// assert_eq!(config.pool.max_size, Some(16));
/// ```
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PgConfig {
    /// A connection string, key-value or URL (`DATABASE_URL`'s form).
    pub url: Option<String>,
    /// `host`: one, or several separated by commas.
    pub host: Option<String>,
    /// `port`.
    pub port: Option<u16>,
    /// `user`.
    pub user: Option<String>,
    /// `password`.
    pub password: Option<String>,
    /// `dbname`.
    pub dbname: Option<String>,
    /// `sslmode`: `disable`, `prefer`, `require`, `verify-ca`, `verify-full`.
    pub sslmode: Option<SslMode>,
    /// `sslrootcert`: a PEM file of the certificates to trust.
    pub sslrootcert: Option<PathBuf>,
    /// `connect_timeout`, in seconds.
    pub connect_timeout: Option<u64>,
    /// `application_name`, as the server shows it in `pg_stat_activity`.
    pub application_name: Option<String>,
    /// How connections are checked before they are handed out again: `fast` or `verified`.
    pub check: Option<CheckMethod>,
    /// Statements each connection keeps; 0 turns the cache off.
    pub statement_cache: Option<usize>,
    /// What is between the pool and PostgreSQL: `"session"` (the default: the server
    /// itself, or PgBouncer with `pool_mode = session`) or `"transaction"` (PgBouncer with
    /// `pool_mode = transaction`). With `"transaction"` the statement cache is off whatever
    /// `statement_cache` says, and calls that would prepare a named statement outside a
    /// transaction fail at once (SQLSTATE `0A000`): use `query_typed`, `execute_typed`,
    /// `simple_query`, `batch_execute`, or prepare inside a transaction. Session state set by
    /// hooks (`SET` in `after_create`) does not follow a connection from one transaction to
    /// the next there: give such settings to the role or the database instead
    /// (`ALTER ROLE ... SET`). See [`Pooler`] and the crate docs, "Behind PgBouncer".
    pub pooler: Option<Pooler>,
    /// The pool's knobs.
    pub pool: PoolConfig,
}

impl PgConfig {
    /// The connection settings: `url`, then each setting given here, then the environment
    /// (`DATABASE_URL` when there is no `url`, and the `PG*` variables) for the rest.
    pub fn options(&self) -> Result<ConnectOptions, ConfigError> {
        self.options_from(|name| std::env::var(name).ok())
    }

    /// The connection settings from this section alone (no environment), for tests and
    /// for services that keep everything in their file.
    pub fn options_without_env(&self) -> Result<ConnectOptions, ConfigError> {
        self.options_from(|_| None)
    }

    /// [`options`](PgConfig::options) over any lookup of environment variables.
    pub fn options_from(
        &self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<ConnectOptions, ConfigError> {
        let url = self.url.clone().or_else(|| lookup("DATABASE_URL"));
        let mut opts = ConnectOptions::parse(url.as_deref().unwrap_or(""))?;
        let c = opts.config_mut();
        if let Some(host) = &self.host {
            // Hosts given here replace the URL's rather than add to them.
            *c = rebuild_hosts(c.clone(), host);
        }
        if let Some(port) = self.port {
            *c = rebuild_ports(c.clone(), port);
        }
        if let Some(user) = &self.user {
            c.user(user);
        }
        if let Some(password) = &self.password {
            c.password(password);
        }
        if let Some(dbname) = &self.dbname {
            c.dbname(dbname);
        }
        if let Some(secs) = self.connect_timeout {
            if secs > 0 {
                c.connect_timeout(std::time::Duration::from_secs(secs));
            }
        }
        if let Some(app) = &self.application_name {
            c.application_name(app);
        }
        if let Some(mode) = self.sslmode {
            opts.set_ssl_mode(mode);
        }
        if let Some(path) = &self.sslrootcert {
            opts.set_root_cert(path);
        }
        opts.fill_from(&lookup)?;
        Ok(opts)
    }

    /// A manager without TLS, with this section's check and statement cache (refuses
    /// `sslmode` values that need TLS: [`ConfigError::TlsRequired`]).
    pub fn manager(&self) -> Result<Manager, ConfigError> {
        Ok(self.tune(self.options()?.manager()?))
    }

    /// A pool builder with this section's manager (without TLS) and pool settings; give it a
    /// runtime and build it.
    pub fn builder(&self) -> Result<gracepool::Builder<Manager>, ConfigError> {
        Ok(crate::Pool::builder(self.manager()?).config(&self.pool))
    }

    /// A manager with TLS on rustls, with this section's check and statement cache.
    #[cfg(feature = "rustls")]
    pub fn manager_rustls(&self) -> Result<Manager<crate::RustlsConnect>, ConfigError> {
        Ok(self.tune(self.options()?.manager_rustls()?))
    }

    /// Applies this section's check, statement cache and pooler to `manager`.
    pub fn tune<T>(&self, mut manager: Manager<T>) -> Manager<T> {
        if let Some(pooler) = self.pooler {
            manager = manager.pooler(pooler);
        }
        if let Some(check) = self.check {
            manager = manager.check_method(check);
        }
        if let Some(n) = self.statement_cache {
            manager = manager.statement_cache(StatementCache::with_capacity(n));
        }
        manager
    }
}

/// `config` with its hosts replaced by the comma-separated `hosts`.
fn rebuild_hosts(config: tokio_postgres::Config, hosts: &str) -> tokio_postgres::Config {
    let mut fresh = without_hosts_and_ports(&config, true, false);
    for host in hosts.split(',') {
        fresh.host(host.trim());
    }
    for port in config.get_ports() {
        fresh.port(*port);
    }
    fresh
}

/// `config` with its ports replaced by `port`.
fn rebuild_ports(config: tokio_postgres::Config, port: u16) -> tokio_postgres::Config {
    let mut fresh = without_hosts_and_ports(&config, false, true);
    fresh.port(port);
    fresh
}

/// A copy of `config` without its hosts and/or ports (tokio-postgres only adds to them).
fn without_hosts_and_ports(
    config: &tokio_postgres::Config,
    drop_hosts: bool,
    drop_ports: bool,
) -> tokio_postgres::Config {
    // tokio-postgres has no setter that removes hosts or ports: copy every other setting into
    // a fresh Config.
    let fresh = config;
    let mut out = tokio_postgres::Config::new();
    if let Some(user) = fresh.get_user() {
        out.user(user);
    }
    if let Some(password) = fresh.get_password() {
        out.password(password);
    }
    if let Some(dbname) = fresh.get_dbname() {
        out.dbname(dbname);
    }
    if let Some(options) = fresh.get_options() {
        out.options(options);
    }
    if let Some(app) = fresh.get_application_name() {
        out.application_name(app);
    }
    out.ssl_mode(fresh.get_ssl_mode());
    out.ssl_negotiation(fresh.get_ssl_negotiation());
    if !drop_hosts {
        for host in fresh.get_hosts() {
            match host {
                tokio_postgres::config::Host::Tcp(h) => {
                    out.host(h);
                }
                tokio_postgres::config::Host::Unix(p) => {
                    out.host_path(p);
                }
            }
        }
        for addr in fresh.get_hostaddrs() {
            out.hostaddr(*addr);
        }
    }
    if !drop_ports {
        for port in fresh.get_ports() {
            out.port(*port);
        }
    }
    if let Some(t) = fresh.get_connect_timeout() {
        out.connect_timeout(*t);
    }
    if let Some(t) = fresh.get_tcp_user_timeout() {
        out.tcp_user_timeout(*t);
    }
    out.keepalives(fresh.get_keepalives());
    out.keepalives_idle(fresh.get_keepalives_idle());
    if let Some(i) = fresh.get_keepalives_interval() {
        out.keepalives_interval(i);
    }
    if let Some(r) = fresh.get_keepalives_retries() {
        out.keepalives_retries(r);
    }
    out.target_session_attrs(fresh.get_target_session_attrs());
    out.channel_binding(fresh.get_channel_binding());
    out.load_balance_hosts(fresh.get_load_balance_hosts());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_section_holds_the_connection_and_the_pool_and_refuses_unknown_fields() {
        let config: PgConfig = serde_json::from_str(
            r#"{
                "url": "postgresql://app:pw@db-a:5432/app?application_name=from-url",
                "host": "db-b,db-c",
                "port": 6432,
                "sslmode": "verify-full",
                "sslrootcert": "/etc/ca.pem",
                "statement_cache": 0,
                "check": "verified",
                "pool": { "max_size": 12, "min_idle": 2, "wait_timeout": "2s" }
            }"#,
        )
        .unwrap();
        let o = config.options_without_env().unwrap();
        let hosts = format!("{:?}", o.config().get_hosts());
        assert!(
            hosts.contains("db-b") && hosts.contains("db-c") && !hosts.contains("db-a"),
            "{hosts}"
        );
        assert_eq!(o.config().get_ports(), &[6432]);
        assert_eq!(o.config().get_user(), Some("app"));
        assert_eq!(o.config().get_application_name(), Some("from-url"));
        assert_eq!(o.ssl_mode(), SslMode::VerifyFull);
        assert_eq!(config.pool.max_size, Some(12));
        let m = config.tune(Manager::new(o.config().clone()));
        assert!(format!("{m:?}").contains("Disabled"), "{m:?}");
        assert!(format!("{m:?}").contains("Verified"), "{m:?}");

        let unknown = serde_json::from_str::<PgConfig>(r#"{ "max_size": 3 }"#).unwrap_err();
        assert!(unknown.to_string().contains("unknown field"), "{unknown}");
        let unknown =
            serde_json::from_str::<PgConfig>(r#"{ "pool": { "maxsize": 3 } }"#).unwrap_err();
        assert!(unknown.to_string().contains("unknown field"), "{unknown}");
        let bad = serde_json::from_str::<PgConfig>(r#"{ "sslmode": "always" }"#).unwrap_err();
        assert!(bad.to_string().contains("verify-full"), "{bad}");
    }

    #[test]
    fn a_transaction_pooler_turns_the_statement_cache_off() {
        let config: PgConfig = serde_json::from_str(
            r#"{ "url": "postgresql://app@pgbouncer:6432/app", "pooler": "transaction", "statement_cache": 50 }"#,
        )
        .unwrap();
        assert_eq!(config.pooler, Some(Pooler::Transaction));
        let m = config.tune(Manager::new(
            config.options_without_env().unwrap().config().clone(),
        ));
        assert_eq!(m.get_pooler(), Pooler::Transaction);
        let shown = format!("{m:?}");
        assert!(shown.contains("statement_cache: Disabled"), "{shown}");
        let session: PgConfig = serde_json::from_str(r#"{ "pooler": "session" }"#).unwrap();
        let m = session.tune(Manager::new(tokio_postgres::Config::new()));
        assert!(format!("{m:?}").contains("Bounded(100)"), "{m:?}");
        let bad = serde_json::from_str::<PgConfig>(r#"{ "pooler": "statement" }"#).unwrap_err();
        assert!(bad.to_string().contains("transaction"), "{bad}");
    }

    #[test]
    fn what_the_section_leaves_out_comes_from_the_environment() {
        let config: PgConfig = serde_json::from_str(r#"{ "dbname": "orders" }"#).unwrap();
        let o = config
            .options_from(|name| match name {
                "DATABASE_URL" => Some("postgres://svc@db:5433/other".into()),
                "PGPASSWORD" => Some("from-env".into()),
                _ => None,
            })
            .unwrap();
        assert_eq!(o.config().get_dbname(), Some("orders"));
        assert_eq!(o.config().get_user(), Some("svc"));
        assert_eq!(o.config().get_password(), Some(&b"from-env"[..]));
    }
}
