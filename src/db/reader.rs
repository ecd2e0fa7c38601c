//! Reads outside transactions, and on PostgreSQL a pool of their own for them.

use std::{future::Future, pin::Pin, str::FromStr, sync::Arc, time::Duration};

use deadpool::managed::{
    self, Metrics, Pool, PoolError, RecycleError, RecycleResult, Timeouts, WeakPool,
};
use sea_orm::{
    ConnAcquireErr, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, ExecResult, QueryResult,
    RuntimeErr, Statement,
    sqlx::{
        self, ConnectOptions as _, Connection as _, Postgres,
        postgres::{PgConnectOptions, PgConnection},
        query::Query,
    },
};
use sea_query_sqlx::SqlxValues;

use super::error::connection_closed;
use super::{ACQUIRE_TIMEOUT, IDLE_BEFORE_PING, IDLE_TIMEOUT};
use crate::config::DatabaseSettings;

/// Where reads outside transactions go. It is a SeaORM connection like any
/// other ([`ConnectionTrait`]), so queries are built and run the same way.
#[derive(Debug, Clone)]
pub enum Reader {
    /// The pool that writes use too (SQLite).
    Shared(DatabaseConnection),
    /// PostgreSQL: a pool of its own, see [`PgReadPool`].
    Postgres(PgReadPool),
}

impl Reader {
    /// Reads for `db`: on PostgreSQL a [`PgReadPool`] of `settings`' size,
    /// otherwise `db` itself.
    pub fn new(db: &DatabaseConnection, settings: &DatabaseSettings) -> Result<Self, DbErr> {
        match db.get_database_backend() {
            DbBackend::Postgres => Ok(Self::Postgres(PgReadPool::new(settings)?)),
            _ => Ok(Self::Shared(db.clone())),
        }
    }

    /// `(open, idle)` connections of its own pool; none when it shares one.
    pub fn own_pool_usage(&self) -> (usize, usize) {
        match self {
            Self::Shared(_) => (0, 0),
            Self::Postgres(pool) => {
                let status = pool.pool.status();
                (status.size, status.available)
            }
        }
    }

    /// On PostgreSQL, how its connections connect.
    pub fn postgres_options(&self) -> Option<PgConnectOptions> {
        match self {
            Self::Shared(_) => None,
            Self::Postgres(pool) => Some(pool.pool.manager().options.clone()),
        }
    }

    /// Closes its own pool, if it has one.
    pub async fn close(&self) {
        if let Self::Postgres(pool) = self {
            pool.close().await;
        }
    }
}

impl From<DatabaseConnection> for Reader {
    fn from(db: DatabaseConnection) -> Self {
        Self::Shared(db)
    }
}

#[async_trait::async_trait]
impl ConnectionTrait for Reader {
    fn get_database_backend(&self) -> DbBackend {
        match self {
            Self::Shared(db) => db.get_database_backend(),
            Self::Postgres(_) => DbBackend::Postgres,
        }
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        match self {
            Self::Shared(db) => db.execute_raw(stmt).await,
            Self::Postgres(pool) => pool.execute(stmt).await,
        }
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        match self {
            Self::Shared(db) => db.execute_unprepared(sql).await,
            Self::Postgres(pool) => {
                pool.execute(Statement::from_string(DbBackend::Postgres, sql))
                    .await
            }
        }
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        match self {
            Self::Shared(db) => db.query_one_raw(stmt).await,
            Self::Postgres(pool) => pool.query_one(stmt).await,
        }
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        match self {
            Self::Shared(db) => db.query_all_raw(stmt).await,
            Self::Postgres(pool) => pool.query_all(stmt).await,
        }
    }
}

/// A pool of PostgreSQL connections for single statements.
///
/// sqlx's pool spends a database round trip on every connection handed back
/// to it, to find one left in the middle of a query by a cancelled call (see
/// BENCHMARKS.md: it was one of a GetConnection's two round trips). This pool
/// marks a connection while a statement runs instead: one handed back still
/// marked (its call was cancelled) is reused only once the database has been
/// seen to finish the statement, and is otherwise closed and replaced. A connection idle for
/// [`IDLE_BEFORE_PING`] is pinged before it is used, and closed after
/// [`IDLE_TIMEOUT`]. A query that finds its connection closed by the database
/// runs again on another.
#[derive(Clone)]
pub struct PgReadPool {
    pool: Pool<PgManager>,
    /// The most connections it holds.
    size: usize,
}

impl std::fmt::Debug for PgReadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgReadPool")
            .field("status", &self.pool.status())
            .finish_non_exhaustive()
    }
}

impl PgReadPool {
    /// A pool of up to `settings.max_connections` connections to
    /// `settings.url`; connections open on first use.
    pub fn new(settings: &DatabaseSettings) -> Result<Self, DbErr> {
        let options = PgConnectOptions::from_str(&settings.url)
            .map_err(|err| DbErr::Conn(RuntimeErr::SqlxError(Arc::new(err))))?
            .disable_statement_logging();
        let size = usize::try_from(settings.max_connections.max(1)).unwrap_or(usize::MAX);
        let pool = Pool::builder(PgManager { options })
            .max_size(size)
            .timeouts(Timeouts {
                wait: Some(ACQUIRE_TIMEOUT),
                create: Some(ACQUIRE_TIMEOUT),
                recycle: Some(ACQUIRE_TIMEOUT),
            })
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|err| DbErr::Custom(format!("read pool: {err}")))?;
        tokio::spawn(close_idle(pool.weak()));
        Ok(Self { pool, size })
    }

    async fn query_one(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        let row = self
            .run(stmt, self.size, |conn, stmt| {
                Box::pin(query(stmt).fetch_optional(conn))
            })
            .await?;
        Ok(row.map(QueryResult::from))
    }

    async fn query_all(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        let rows = self
            .run(stmt, self.size, |conn, stmt| {
                Box::pin(query(stmt).fetch_all(conn))
            })
            .await?;
        Ok(rows.into_iter().map(QueryResult::from).collect())
    }

    /// Never repeated: unlike a query, the statement may write, and a
    /// connection lost under it leaves unknown whether it did.
    async fn execute(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        let done = self
            .run(stmt, 0, |conn, stmt| Box::pin(query(stmt).execute(conn)))
            .await?;
        Ok(done.into())
    }

    /// Runs `stmt` on a pooled connection, marked while it runs. A connection
    /// that had been used before and turns out to have been closed by the
    /// database (a restart, a failover, an administrator) is dropped, and the
    /// statement runs again on another, up to `retries` times: for queries,
    /// which are safe to repeat. A new connection is not retried.
    async fn run<T>(
        &self,
        stmt: Statement,
        mut retries: usize,
        statement: impl for<'c> Fn(&'c mut PgConnection, Statement) -> Pending<'c, T>,
    ) -> Result<T, DbErr> {
        loop {
            let mut lent = Lent(Some(self.get().await?));
            let conn = lent.0.as_mut().expect("lent until dropped");
            conn.unfinished = true;
            match statement(&mut conn.conn, stmt.clone()).await {
                Ok(value) => {
                    conn.unfinished = false;
                    return Ok(value);
                }
                Err(err)
                    if retries > 0
                        && managed::Object::metrics(conn).recycle_count > 0
                        && connection_closed(&err) =>
                {
                    retries -= 1;
                    let conn = lent.0.take().expect("lent until dropped");
                    drop(managed::Object::take(conn));
                }
                Err(err) => {
                    // The database refused the statement and said so: it
                    // ended, and the connection is as good as before.
                    conn.unfinished = !refused_by_database(&err);
                    return Err(DbErr::Query(RuntimeErr::SqlxError(Arc::new(err))));
                }
            }
        }
    }

    async fn get(&self) -> Result<managed::Object<PgManager>, DbErr> {
        self.pool.get().await.map_err(|err| match err {
            PoolError::Timeout(_) => DbErr::ConnectionAcquire(ConnAcquireErr::Timeout),
            PoolError::Closed => DbErr::ConnectionAcquire(ConnAcquireErr::ConnectionClosed),
            PoolError::Backend(err) => DbErr::Conn(RuntimeErr::SqlxError(Arc::new(err))),
            PoolError::NoRuntimeSpecified | PoolError::PostCreateHook(_) => {
                DbErr::Custom(format!("read pool: {err}"))
            }
        })
    }

    /// Closes the idle connections politely (closing the pool would just drop
    /// them), then stops handing out connections.
    async fn close(&self) {
        for conn in self.pool.retain(|_, _| false).removed {
            let _ = conn.conn.close().await;
        }
        self.pool.close();
    }
}

/// How long a connection whose statement was abandoned (a cancelled call)
/// may take to finish it before it is closed instead of reused.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// A pooled connection lent to one statement. Dropped while the statement
/// may still be running (its call was cancelled), it goes back to the pool
/// only once a task has seen the database finish the statement (within
/// [`DRAIN_TIMEOUT`]); otherwise, or if that fails, the pool closes it.
struct Lent(Option<managed::Object<PgManager>>);

impl Drop for Lent {
    fn drop(&mut self) {
        let Some(mut conn) = self.0.take().filter(|conn| conn.unfinished) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            if let Ok(Ok(())) = tokio::time::timeout(DRAIN_TIMEOUT, conn.conn.ping()).await {
                conn.unfinished = false;
            }
        });
    }
}

/// Every minute, closes the connections idle for [`IDLE_TIMEOUT`]; ends with
/// the pool.
async fn close_idle(pool: WeakPool<PgManager>) {
    let mut tick = tokio::time::interval(IDLE_TIMEOUT / 5);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        if pool.is_closed() {
            return;
        }
        for conn in pool
            .retain(|_, metrics| metrics.last_used() < IDLE_TIMEOUT)
            .removed
        {
            let _ = conn.conn.close().await;
        }
    }
}

/// Whether `err` is the database's answer to a statement (a division by
/// zero, a statement timeout), on a connection that stays usable.
fn refused_by_database(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(_)) && !connection_closed(err)
}

/// A statement running on a borrowed connection.
type Pending<'c, T> = Pin<Box<dyn Future<Output = sqlx::Result<T>> + Send + 'c>>;

fn query(stmt: Statement) -> Query<'static, Postgres, SqlxValues> {
    let values = stmt.values.unwrap_or(sea_orm::Values(Vec::new()));
    sqlx::query_with(sqlx::AssertSqlSafe(stmt.sql), SqlxValues(values))
}

/// Opens and checks the pool's connections.
struct PgManager {
    options: PgConnectOptions,
}

/// A pooled connection, and whether a statement on it may not have finished.
struct PgReadConnection {
    conn: PgConnection,
    unfinished: bool,
}

impl managed::Manager for PgManager {
    type Type = PgReadConnection;
    type Error = sqlx::Error;

    async fn create(&self) -> Result<PgReadConnection, sqlx::Error> {
        Ok(PgReadConnection {
            conn: PgConnection::connect_with(&self.options).await?,
            unfinished: false,
        })
    }

    async fn recycle(
        &self,
        conn: &mut PgReadConnection,
        metrics: &Metrics,
    ) -> RecycleResult<sqlx::Error> {
        if conn.unfinished {
            return Err(RecycleError::message("a statement on it did not finish"));
        }
        if metrics.last_used() >= IDLE_BEFORE_PING {
            conn.conn.ping().await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server's backend process ID for the pool's next connection.
    async fn backend_pid(pool: &PgReadPool) -> i32 {
        let row = pool
            .query_one(Statement::from_string(
                DbBackend::Postgres,
                "SELECT pg_backend_pid() AS pid",
            ))
            .await
            .unwrap()
            .unwrap();
        row.try_get("", "pid").unwrap()
    }

    #[tokio::test]
    async fn a_cancelled_statement_keeps_its_connection_once_it_has_finished() {
        let Ok(url) = std::env::var("TEST_DATABASE_URL") else {
            return; // PostgreSQL only.
        };
        let pool = PgReadPool::new(&DatabaseSettings {
            max_connections: 1,
            ..DatabaseSettings::new(url)
        })
        .unwrap();
        let pid = backend_pid(&pool).await;
        let sleep = |seconds: f64| {
            pool.query_all(Statement::from_string(
                DbBackend::Postgres,
                format!("SELECT pg_sleep({seconds})"),
            ))
        };
        // Cancelled while the database runs it: the next statement waits for
        // it to finish, on the same connection.
        let cancelled = tokio::time::timeout(Duration::from_millis(50), sleep(0.3)).await;
        assert!(cancelled.is_err(), "the statement was not cancelled");
        assert_eq!(backend_pid(&pool).await, pid, "the connection was replaced");
        // Cancelled before it was sent, and cancelled on its first poll.
        for polls in 0..3 {
            let mut pending = Box::pin(sleep(0.01));
            for _ in 0..polls {
                let _ = futures::poll!(pending.as_mut());
            }
            drop(pending);
            assert_eq!(
                backend_pid(&pool).await,
                pid,
                "replaced after {polls} polls"
            );
        }
        // One that runs on past the drain deadline is closed, and the next
        // statement gets a new connection.
        let cancelled = tokio::time::timeout(Duration::from_millis(50), sleep(3.0)).await;
        assert!(cancelled.is_err(), "the statement was not cancelled");
        assert_ne!(
            backend_pid(&pool).await,
            pid,
            "a busy connection was reused"
        );
        pool.close().await;
    }

    #[tokio::test]
    async fn a_statement_the_database_refuses_keeps_its_connection() {
        let Ok(url) = std::env::var("TEST_DATABASE_URL") else {
            return; // PostgreSQL only.
        };
        let pool = PgReadPool::new(&DatabaseSettings {
            max_connections: 1,
            ..DatabaseSettings::new(url)
        })
        .unwrap();
        let pid = backend_pid(&pool).await;
        let err = pool
            .query_all(Statement::from_string(DbBackend::Postgres, "SELECT 1 / 0"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("division by zero"), "{err}");
        assert_eq!(backend_pid(&pool).await, pid, "the connection was replaced");
        pool.close().await;
    }
}
