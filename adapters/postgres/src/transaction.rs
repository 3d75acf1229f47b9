//! Transactions on a pooled connection, with the connection's statement cache.

use std::ops::{Deref, DerefMut};

use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{IsolationLevel, Row, SimpleQueryMessage, Statement, ToStatement};

use crate::calls::Calls;
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
    // `None` once commit or rollback took it.
    txn: Option<tokio_postgres::Transaction<'a>>,
    statements: &'a Cache,
    calls: &'a Calls,
    /// Committed or rolled back, and answered.
    done: bool,
}

impl<'a> Transaction<'a> {
    pub(crate) fn new(
        txn: tokio_postgres::Transaction<'a>,
        statements: &'a Cache,
        calls: &'a Calls,
    ) -> Self {
        Transaction {
            txn: Some(txn),
            statements,
            calls,
            done: false,
        }
    }

    fn txn(&self) -> &tokio_postgres::Transaction<'a> {
        self.txn
            .as_ref()
            .expect("present until commit or rollback, which take the transaction")
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
        let stmt = self.txn().prepare_typed(sql, types).await?;
        self.statements.insert(sql, types, stmt.clone());
        Ok(stmt)
    }

    /// [`tokio_postgres::Transaction::query`]; an error that says the connection or its
    /// server is done (a read-only server after a failover, say) marks the connection.
    pub async fn query<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, tokio_postgres::Error>
    where
        T: ?Sized + ToStatement,
    {
        let out = self.txn().query(statement, params).await;
        self.calls.saw(&out);
        out
    }

    /// [`tokio_postgres::Transaction::query_one`], its errors read as for `query`.
    pub async fn query_one<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, tokio_postgres::Error>
    where
        T: ?Sized + ToStatement,
    {
        let out = self.txn().query_one(statement, params).await;
        self.calls.saw(&out);
        out
    }

    /// [`tokio_postgres::Transaction::query_opt`], its errors read as for `query`.
    pub async fn query_opt<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, tokio_postgres::Error>
    where
        T: ?Sized + ToStatement,
    {
        let out = self.txn().query_opt(statement, params).await;
        self.calls.saw(&out);
        out
    }

    /// [`tokio_postgres::Transaction::query_typed`], its errors read as for `query`.
    pub async fn query_typed(
        &self,
        query: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        let out = self.txn().query_typed(query, params).await;
        self.calls.saw(&out);
        out
    }

    /// [`tokio_postgres::Transaction::execute`], its errors read as for `query`.
    pub async fn execute<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error>
    where
        T: ?Sized + ToStatement,
    {
        let out = self.txn().execute(statement, params).await;
        self.calls.saw(&out);
        out
    }

    /// [`tokio_postgres::Transaction::batch_execute`], its errors read as for `query`.
    pub async fn batch_execute(&self, query: &str) -> Result<(), tokio_postgres::Error> {
        let out = self.txn().batch_execute(query).await;
        self.calls.saw(&out);
        out
    }

    /// [`tokio_postgres::Transaction::simple_query`], its errors read as for `query`.
    pub async fn simple_query(
        &self,
        query: &str,
    ) -> Result<Vec<SimpleQueryMessage>, tokio_postgres::Error> {
        let out = self.txn().simple_query(query).await;
        self.calls.saw(&out);
        out
    }

    /// Commits the transaction.
    pub async fn commit(mut self) -> Result<(), tokio_postgres::Error> {
        let txn = self.txn.take().expect("taken only by commit or rollback");
        let out = txn.commit().await;
        self.done = true;
        self.calls.saw(&out);
        out
    }

    /// Rolls the transaction back (dropping it does too, without waiting for the answer).
    pub async fn rollback(mut self) -> Result<(), tokio_postgres::Error> {
        let txn = self.txn.take().expect("taken only by commit or rollback");
        let out = txn.rollback().await;
        self.done = true;
        out
    }

    /// A nested transaction: a savepoint, released on commit, rolled back to on drop.
    pub async fn transaction(&mut self) -> Result<Transaction<'_>, tokio_postgres::Error> {
        let (statements, calls) = (self.statements, self.calls);
        let txn = self
            .txn
            .as_mut()
            .expect("present until commit or rollback")
            .transaction()
            .await?;
        Ok(Transaction::new(txn, statements, calls))
    }

    /// A nested transaction with a savepoint of this name.
    pub async fn savepoint<I: Into<String>>(
        &mut self,
        name: I,
    ) -> Result<Transaction<'_>, tokio_postgres::Error> {
        let (statements, calls) = (self.statements, self.calls);
        let txn = self
            .txn
            .as_mut()
            .expect("present until commit or rollback")
            .savepoint(name)
            .await?;
        Ok(Transaction::new(txn, statements, calls))
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        // Dropped before its commit or rollback was answered (a `?`, a cancelled request):
        // tokio-postgres queues a ROLLBACK, and the connection carries an unanswered request
        // until it is answered; the next checkout makes sure of it.
        if !self.done {
            self.calls.mark_dirty();
        }
    }
}

impl<'a> Deref for Transaction<'a> {
    type Target = tokio_postgres::Transaction<'a>;

    fn deref(&self) -> &Self::Target {
        self.txn()
    }
}

impl DerefMut for Transaction<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.txn
            .as_mut()
            .expect("present until commit or rollback, which take the transaction")
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
    calls: &'a Calls,
}

impl<'a> TransactionBuilder<'a> {
    pub(crate) fn new(
        builder: tokio_postgres::TransactionBuilder<'a>,
        statements: &'a Cache,
        calls: &'a Calls,
    ) -> Self {
        TransactionBuilder {
            builder,
            statements,
            calls,
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
        let (statements, calls) = (self.statements, self.calls);
        let mut pending = Started { calls, done: false };
        let started = self.builder.start().await;
        pending.done = true;
        calls.saw(&started);
        let txn = started?;
        Ok(Transaction::new(txn, statements, calls))
    }
}

impl std::fmt::Debug for TransactionBuilder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionBuilder").finish_non_exhaustive()
    }
}

/// A transaction being begun: dropped before `BEGIN` was answered, it marks the connection as
/// carrying an unanswered request (tokio-postgres queues a ROLLBACK then).
struct Started<'a> {
    calls: &'a Calls,
    done: bool,
}

impl Drop for Started<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.calls.mark_dirty();
        }
    }
}
