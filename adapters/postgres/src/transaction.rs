//! Transactions on a pooled connection, with the connection's statement cache.

use std::ops::{Deref, DerefMut};

use tokio_postgres::types::Type;
use tokio_postgres::{IsolationLevel, Statement};

use crate::statements::Cache;

/// A transaction on a pooled connection: derefs to [`tokio_postgres::Transaction`] for every
/// query method, and adds the connection's statement cache
/// ([`prepare_cached`](Transaction::prepare_cached)).
///
/// Dropped without [`commit`](Transaction::commit) — a `?` that returned early, or a request
/// cancelled half-way, its future dropped — it rolls back: tokio-postgres queues a `ROLLBACK`
/// on the connection as the transaction drops, before the connection can go back to the
/// pool, so the next caller's first statement runs after it, outside any transaction. The
/// same holds for a `transaction()` call cancelled between its `BEGIN` and its answer.
pub struct Transaction<'a> {
    txn: tokio_postgres::Transaction<'a>,
    statements: &'a Cache,
}

impl<'a> Transaction<'a> {
    pub(crate) fn new(txn: tokio_postgres::Transaction<'a>, statements: &'a Cache) -> Self {
        Transaction { txn, statements }
    }

    /// The statement for `sql`, from the connection's cache, or prepared (in this
    /// transaction) and cached for every later checkout of this connection. A prepared
    /// statement outlives the transaction that prepared it, whether it commits or not.
    pub async fn prepare_cached(&self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        self.prepare_typed_cached(sql, &[]).await
    }

    /// Like [`prepare_cached`](Transaction::prepare_cached), with the parameter types given.
    pub async fn prepare_typed_cached(
        &self,
        sql: &str,
        types: &[Type],
    ) -> Result<Statement, tokio_postgres::Error> {
        if let Some(stmt) = self.statements.get(sql, types) {
            return Ok(stmt);
        }
        let stmt = self.txn.prepare_typed(sql, types).await?;
        self.statements.insert(sql, types, stmt.clone());
        Ok(stmt)
    }

    /// Commits the transaction.
    pub async fn commit(self) -> Result<(), tokio_postgres::Error> {
        self.txn.commit().await
    }

    /// Rolls the transaction back (dropping it does too, without waiting for the answer).
    pub async fn rollback(self) -> Result<(), tokio_postgres::Error> {
        self.txn.rollback().await
    }

    /// A nested transaction: a savepoint, released on commit, rolled back to on drop.
    pub async fn transaction(&mut self) -> Result<Transaction<'_>, tokio_postgres::Error> {
        let txn = self.txn.transaction().await?;
        Ok(Transaction::new(txn, self.statements))
    }

    /// A nested transaction with a savepoint of this name.
    pub async fn savepoint<I: Into<String>>(
        &mut self,
        name: I,
    ) -> Result<Transaction<'_>, tokio_postgres::Error> {
        let txn = self.txn.savepoint(name).await?;
        Ok(Transaction::new(txn, self.statements))
    }
}

impl<'a> Deref for Transaction<'a> {
    type Target = tokio_postgres::Transaction<'a>;

    fn deref(&self) -> &Self::Target {
        &self.txn
    }
}

impl DerefMut for Transaction<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.txn
    }
}

impl std::fmt::Debug for Transaction<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction").finish_non_exhaustive()
    }
}

/// Starts a transaction with options: [`PgConnection::build_transaction`]'s answer, as
/// [`tokio_postgres::TransactionBuilder`] with the statement cache carried over.
///
/// [`PgConnection::build_transaction`]: crate::PgConnection::build_transaction
pub struct TransactionBuilder<'a> {
    builder: tokio_postgres::TransactionBuilder<'a>,
    statements: &'a Cache,
}

impl<'a> TransactionBuilder<'a> {
    pub(crate) fn new(
        builder: tokio_postgres::TransactionBuilder<'a>,
        statements: &'a Cache,
    ) -> Self {
        TransactionBuilder {
            builder,
            statements,
        }
    }

    /// The isolation level.
    pub fn isolation_level(self, level: IsolationLevel) -> Self {
        TransactionBuilder {
            builder: self.builder.isolation_level(level),
            ..self
        }
    }

    /// Read-only or read-write.
    pub fn read_only(self, read_only: bool) -> Self {
        TransactionBuilder {
            builder: self.builder.read_only(read_only),
            ..self
        }
    }

    /// Deferrable (only with serializable, read-only).
    pub fn deferrable(self, deferrable: bool) -> Self {
        TransactionBuilder {
            builder: self.builder.deferrable(deferrable),
            ..self
        }
    }

    /// Begins the transaction.
    pub async fn start(self) -> Result<Transaction<'a>, tokio_postgres::Error> {
        let txn = self.builder.start().await?;
        Ok(Transaction::new(txn, self.statements))
    }
}

impl std::fmt::Debug for TransactionBuilder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionBuilder").finish_non_exhaustive()
    }
}
