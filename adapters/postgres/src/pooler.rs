//! What sits between the pool and PostgreSQL: nothing (or a pooler that keeps one server
//! connection per client), or a pooler that hands out a server connection per transaction,
//! where named prepared statements do not survive from one transaction to the next.

/// What is between this pool's connections and PostgreSQL, as far as statements go.
///
/// Set it with [`Manager::pooler`](crate::Manager::pooler), or `"pooler": "transaction"` in a
/// `PgConfig`. See the crate docs, "Behind PgBouncer".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
#[non_exhaustive]
pub enum Pooler {
    /// PostgreSQL itself, or a pooler that keeps a server connection for each client's whole
    /// session (PgBouncer's `pool_mode = session`): a named statement prepared on a connection
    /// stays there, and the statement cache works. The default.
    #[default]
    Session,
    /// A pooler that hands each transaction the server connection it likes (PgBouncer's
    /// `pool_mode = transaction`, before 1.21): a named statement prepared outside a
    /// transaction may be missing on the server connection that runs the next statement
    /// (`prepared statement "s3" does not exist`), or be in another client's way there
    /// (`already exists`). In this mode the statement cache is off, and a connection's calls
    /// that would prepare a named statement outside a transaction are refused (SQLSTATE
    /// `0A000`) without preparing anything; the unnamed forms work.
    Transaction,
}

/// What a refused call sends: the server raises the refusal, so that the caller gets the
/// error type these calls always return (`tokio_postgres::Error` has no public constructor),
/// with SQLSTATE `0A000` (feature not supported) and a message that says what to use instead.
/// Only a refused call pays its round trip.
pub(crate) const REFUSAL: &str = "DO $gracepool$ BEGIN RAISE EXCEPTION USING \
     ERRCODE = 'feature_not_supported', \
     MESSAGE = 'gracepool-postgres: named prepared statements are off behind a transaction \
pooler (Pooler::Transaction): a statement prepared outside a transaction may be missing on \
the server connection the next statement runs on', \
     HINT = 'use query_typed, execute_typed, simple_query or batch_execute; or prepare \
inside conn.transaction(), and use the statement there'; END $gracepool$";
