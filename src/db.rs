//! Database connections: SQLite (the embedded default) and PostgreSQL.

use std::{
    future::Future,
    sync::{Arc, LazyLock},
    time::Duration,
};

use sea_orm::{
    AccessMode, ConnAcquireErr, ConnectOptions, ConnectionTrait, Database, DatabaseConnection,
    DatabaseTransaction, DbBackend, DbErr, IsolationLevel, SqliteTransactionMode,
    TransactionOptions, TransactionTrait, sqlx,
};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::config::{DatabaseSettings, redact};

pub mod error;
mod reader;

pub use reader::{PgReadPool, Reader};

/// How long a SQLite writer waits for its turn in the process, and then for
/// the database's write lock (other processes), before giving up.
pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a call waits for a pooled connection before the database is
/// reported unavailable.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// A pooled connection idle this long is pinged before it is handed out.
pub const IDLE_BEFORE_PING: Duration = Duration::from_secs(10);

/// A pooled connection idle this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Opens a connection pool. SQLite connections use WAL with full fsync (a
/// committed write survives a power loss), a busy timeout and foreign keys; an in-memory SQLite database gets a single connection, since
/// each connection would otherwise see a database of its own.
pub async fn connect(settings: &DatabaseSettings) -> Result<DatabaseConnection, DbErr> {
    let mut options = ConnectOptions::new(settings.url.clone());
    let in_memory = settings.url.contains(":memory:") || settings.url.contains("mode=memory");
    if !in_memory {
        create_private_sqlite_file(&settings.url);
    }
    options
        .max_connections(if in_memory {
            1
        } else {
            settings.max_connections
        })
        .min_connections(0)
        .connect_timeout(ACQUIRE_TIMEOUT)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .idle_timeout(IDLE_TIMEOUT)
        // Ping a pooled connection before use only if it sat idle long enough
        // to have been dropped by the server or a proxy; pinging on every
        // acquire added a database round trip to every call. A connection
        // that broke anyway fails its call as UNAVAILABLE and is discarded.
        .test_before_acquire_if_idle_for(IDLE_BEFORE_PING)
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(|opts| {
            opts.journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
                .busy_timeout(SQLITE_BUSY_TIMEOUT)
                .foreign_keys(true)
        });
    // Opening a SQLite database that another pool or process is setting up
    // (switching it to WAL, or recovering its log) can fail at once with
    // SQLITE_BUSY, without waiting for the busy timeout: try again until the
    // timeout has passed.
    let deadline = tokio::time::Instant::now() + SQLITE_BUSY_TIMEOUT;
    let mut connected = Database::connect(options.clone()).await;
    while matches!(&connected, Err(err) if error::sqlite_busy(err))
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
        connected = Database::connect(options.clone()).await;
    }
    match connected {
        Ok(db) => Ok(db),
        Err(err) => Err(DbErr::Custom(why_not_connected(&settings.url, &err).await)),
    }
}

/// Why connecting to `url` failed with `err`, for people: where it tried and
/// the system's reason (connection refused, no such directory, permission
/// denied) rather than the pool's timeout. Never the password.
async fn why_not_connected(url: &str, err: &DbErr) -> String {
    use std::str::FromStr;
    let redacted = redact(url);
    // Driver errors may quote the whole URL, password included.
    let driver = err.to_string().replace(url, &redacted);
    if url.starts_with("sqlite:") {
        let Ok(options) = sqlx::sqlite::SqliteConnectOptions::from_str(url) else {
            return format!("{redacted} is not a SQLite URL: {driver}");
        };
        let path = options.get_filename();
        let reason = match path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            Some(dir) if !dir.is_dir() => {
                format!("its directory {} does not exist", dir.display())
            }
            _ => match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
            {
                Err(os) => os.to_string(),
                Ok(_) => driver,
            },
        };
        return format!(
            "cannot open the SQLite database {}: {reason}",
            path.display()
        );
    }
    if let Ok(options) = sqlx::postgres::PgConnectOptions::from_str(url) {
        if let Some(socket) = options.get_socket() {
            return format!(
                "cannot connect to PostgreSQL on the socket {}: {driver}",
                socket.display()
            );
        }
        // The pool reports only that it timed out: connecting once says why.
        let (host, port) = (options.get_host().to_owned(), options.get_port());
        let reached = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await;
        let at = format!("PostgreSQL at {host}:{port}");
        return match reached {
            Ok(Err(os)) if os.kind() == std::io::ErrorKind::ConnectionRefused => {
                format!("cannot connect to {at}: connection refused")
            }
            Ok(Err(os)) => format!("cannot connect to {at}: {os}"),
            Err(_) => format!("cannot connect to {at}: no answer within 2 s"),
            Ok(Ok(_)) => format!("cannot connect to {at}: {driver}"),
        };
    }
    format!("cannot connect to {redacted}: {driver}")
}

/// A database error as a sentence for people: without the "Custom Error"
/// wrapping of the messages this crate writes itself.
pub fn describe(err: &DbErr) -> String {
    match err {
        DbErr::Custom(message) => message.clone(),
        other => other.to_string(),
    }
}

/// The file of a SQLite `url` when it does not exist (`None` for other
/// databases, in-memory ones, and files that exist).
pub fn missing_sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    sqlite_file(url).filter(|path| !path.exists())
}

/// The file of a SQLite `url` (`None` for other databases and in-memory
/// ones).
pub fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    use std::str::FromStr;
    if !url.starts_with("sqlite:") || url.contains(":memory:") || url.contains("mode=memory") {
        return None;
    }
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url).ok()?;
    let path = options.get_filename();
    (!path.as_os_str().is_empty()).then(|| path.to_path_buf())
}

/// Creates the SQLite database file of `url`, if there is none yet, readable
/// and writable by its owner only: it holds every tenant's data and the key
/// that signs page tokens. (SQLite gives its journal files the database
/// file's permissions.) Anything but a SQLite file URL is left alone.
fn create_private_sqlite_file(url: &str) {
    use std::str::FromStr;
    if !url.starts_with("sqlite:") {
        return;
    }
    let Ok(options) = sqlx::sqlite::SqliteConnectOptions::from_str(url) else {
        // The driver reports the malformed URL when it connects.
        return;
    };
    let path = options.get_filename();
    if path.as_os_str().is_empty() || path.exists() {
        return;
    }
    let mut file = std::fs::OpenOptions::new();
    file.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut file, 0o600);
    // Fails if another process created it first (it keeps its own), or
    // for a reason the driver reports when it opens the file.
    let _ = file.open(path);
}

/// Write transactions of this process on SQLite take turns here. SQLite
/// allows one writer at a time; without the gate, waiting writers sleep in
/// SQLite's busy handler (in steps of up to 100 ms) and the lock sits idle
/// between them, which costs throughput and puts hundreds of milliseconds on
/// the slowest writes. Queued here, the next writer starts as soon as the last
/// commits. Other processes (the CLI, other replicas) are still kept out by
/// `BEGIN IMMEDIATE` and the busy timeout. One gate serves every SQLite
/// database of the process: a server uses one.
static SQLITE_WRITE_GATE: LazyLock<Arc<Mutex<()>>> = LazyLock::new(|| Arc::new(Mutex::new(())));

/// A transaction that will write (see [`begin_write`]). Dereferences to the
/// transaction; on SQLite it holds the process's write turn until it ends.
///
/// Dropped without [`commit`](Self::commit) or [`rollback`](Self::rollback)
/// (an error returned early, a cancelled call), it is rolled back
/// explicitly, and only then is the turn handed on: a dropped transaction
/// alone only queues its rollback, and the next writer would find the
/// database still locked and sleep in SQLite's busy handler.
pub struct WriteTransaction {
    txn: Option<DatabaseTransaction>,
    turn: Option<OwnedMutexGuard<()>>,
}

impl std::ops::Deref for WriteTransaction {
    type Target = DatabaseTransaction;

    fn deref(&self) -> &DatabaseTransaction {
        self.txn
            .as_ref()
            .expect("a transaction is present until it ends")
    }
}

impl WriteTransaction {
    /// Commits.
    pub async fn commit(self) -> Result<(), DbErr> {
        self.end(DatabaseTransaction::commit).await
    }

    /// Rolls back.
    pub async fn rollback(self) -> Result<(), DbErr> {
        self.end(DatabaseTransaction::rollback).await
    }

    /// Ends the transaction with `end` (`COMMIT` or `ROLLBACK`), in a task of
    /// its own that holds the write turn until the database has answered.
    /// Cancelled midway, the statement would still reach the database, and
    /// the driver, which counts it done only once answered, would follow it
    /// with a `ROLLBACK` of a transaction that has already ended.
    async fn end<F>(mut self, end: fn(DatabaseTransaction) -> F) -> Result<(), DbErr>
    where
        F: Future<Output = Result<(), DbErr>> + Send + 'static,
    {
        let txn = self
            .txn
            .take()
            .expect("a transaction is present until it ends");
        let turn = self.turn.take();
        run_to_end(async move {
            let ended = end(txn).await;
            drop(turn);
            ended
        })
        .await
    }
}

/// Runs `work` in a task of its own, so that it finishes even if the caller
/// stops waiting for it (a cancelled call).
async fn run_to_end<T: Send + 'static>(
    work: impl Future<Output = Result<T, DbErr>> + Send + 'static,
) -> Result<T, DbErr> {
    match tokio::spawn(work).await {
        Ok(done) => done,
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        Err(err) => Err(DbErr::Custom(format!("a database task stopped: {err}"))),
    }
}

impl Drop for WriteTransaction {
    fn drop(&mut self) {
        let (Some(txn), Some(turn)) = (self.txn.take(), self.turn.take()) else {
            // Ended, or no turn to hand on (PostgreSQL): the transaction's own
            // drop rolls it back.
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(err) = txn.rollback().await {
                        tracing::warn!(error = %err, "cannot roll back an abandoned transaction");
                    }
                    drop(turn);
                });
            }
            Err(_) => drop(txn),
        }
    }
}

/// Begins a transaction that will write. On SQLite it is `BEGIN IMMEDIATE`:
/// it takes the write lock up front (waiting up to the busy timeout), so a
/// read-then-write transaction never fails to upgrade its lock midway; and it
/// first waits for this process's write turn.
pub async fn begin_write(db: &DatabaseConnection) -> Result<WriteTransaction, DbErr> {
    let (sqlite_transaction_mode, turn, mut retries) = match db.get_database_backend() {
        DbBackend::Sqlite => {
            let turn =
                tokio::time::timeout(SQLITE_BUSY_TIMEOUT, SQLITE_WRITE_GATE.clone().lock_owned())
                    .await
                    // Like a pool timeout: the database is too busy, retry later.
                    .map_err(|_| DbErr::ConnectionAcquire(ConnAcquireErr::Timeout))?;
            (Some(SqliteTransactionMode::Immediate), Some(turn), 0)
        }
        DbBackend::Postgres => {
            let pool = db.get_postgres_connection_pool();
            (None, None, pool.options().get_max_connections())
        }
        _ => (None, None, 0),
    };
    // `BEGIN` runs in a task of its own. Cancelled midway, it would still
    // reach the database, but the driver counts a transaction only once
    // `BEGIN` has been answered: it would hand the connection back to the
    // pool inside a transaction nobody knows of, and its next user's
    // statements would run in it. Begun for a caller that has gone, the
    // transaction is dropped, and so rolled back, by the task.
    let db = db.clone();
    run_to_end(async move {
        // After a restart or failover of the database, pooled connections
        // are closed, and `BEGIN` is the first statement to find out.
        // Nothing has been written yet: begin again, on another connection.
        let txn = loop {
            let begun = db
                .begin_with_options(TransactionOptions {
                    sqlite_transaction_mode,
                    ..TransactionOptions::default()
                })
                .await;
            match begun {
                Err(err) if retries > 0 && error::closed_by_database(&err) => retries -= 1,
                begun => break begun?,
            }
        };
        Ok(WriteTransaction {
            txn: Some(txn),
            turn,
        })
    })
    .await
}

/// A transaction that only reads, every statement of it under one snapshot
/// of the database (see [`begin_read`]). Dereferences to the transaction.
/// Dropped without [`finish`](Self::finish) (an error returned early, a
/// cancelled call), it is rolled back when its connection goes back to the
/// pool.
pub struct ReadTransaction(DatabaseTransaction);

impl std::ops::Deref for ReadTransaction {
    type Target = DatabaseTransaction;

    fn deref(&self) -> &DatabaseTransaction {
        &self.0
    }
}

impl ReadTransaction {
    /// Ends the transaction, in a task of its own (see
    /// [`WriteTransaction`]'s `end`).
    pub async fn finish(self) -> Result<(), DbErr> {
        run_to_end(self.0.commit()).await
    }
}

/// Begins a transaction whose reads all see one snapshot: on PostgreSQL
/// `REPEATABLE READ` and `READ ONLY` (the snapshot is taken at its first
/// statement, and `pg_current_snapshot()` reports that one); on SQLite a
/// deferred transaction, which in WAL mode reads the database as it was at
/// its first read, and never holds off writers.
pub async fn begin_read(db: &DatabaseConnection) -> Result<ReadTransaction, DbErr> {
    let (options, mut retries) = match db.get_database_backend() {
        DbBackend::Postgres => (
            TransactionOptions {
                isolation_level: Some(IsolationLevel::RepeatableRead),
                access_mode: Some(AccessMode::ReadOnly),
                ..TransactionOptions::default()
            },
            db.get_postgres_connection_pool()
                .options()
                .get_max_connections(),
        ),
        _ => (TransactionOptions::default(), 0),
    };
    // `BEGIN` runs in a task of its own, as in `begin_write`, and is tried
    // again on another connection when the database closed this one.
    let db = db.clone();
    run_to_end(async move {
        loop {
            match db.begin_with_options(options).await {
                Err(err) if retries > 0 && error::closed_by_database(&err) => retries -= 1,
                begun => break begun.map(ReadTransaction),
            }
        }
    })
    .await
}

/// Connects to the database and applies pending migrations (see [`migrate`]).
pub async fn connect_and_migrate(
    settings: &DatabaseSettings,
) -> Result<(DatabaseConnection, Schema), DbErr> {
    let db = connect(settings).await?;
    let schema = migrate(&db).await?;
    Ok((db, schema))
}

/// The PostgreSQL advisory lock held while migrating ("cnx-migr" in ASCII).
pub const MIGRATION_LOCK: i64 = 0x636e_782d_6d69_6772;

/// The database's schema compared with this release's migrations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schema {
    /// This release's migrations that the database has not applied, in order.
    pub pending: Vec<String>,
    /// Migrations the database has applied that this release does not know,
    /// oldest first: a later release applied them.
    pub unknown: Vec<String>,
}

impl Schema {
    fn of(status: &migration::applied::Status) -> Self {
        Self {
            pending: status
                .pending
                .iter()
                .map(|migration| migration.name().to_owned())
                .collect(),
            unknown: status.unknown.clone(),
        }
    }

    /// Logs a warning if the schema is newer than this release. It still
    /// serves: migrations only add to the schema, and what it does not know
    /// of, it neither reads nor needs.
    pub fn warn_if_newer(&self) {
        if !self.unknown.is_empty() {
            tracing::warn!(
                unknown_migrations = %self.unknown.join(", "),
                "the database's schema is newer than this release: it has migrations this \
                 release does not know ({}), applied by a later release; going on, since \
                 migrations only add to the schema",
                self.unknown.join(", ")
            );
        }
    }
}

/// How the database's schema compares with this release's, read without
/// changing anything.
pub async fn schema(db: &DatabaseConnection) -> Result<Schema, DbErr> {
    Ok(Schema::of(&migration::applied::status(db).await?))
}

/// Applies pending migrations in one write transaction, so that replicas
/// started together take turns: on PostgreSQL the transaction first takes an
/// advisory lock (released when it ends, or when its session dies), on SQLite
/// it holds the write lock from the start. The first replica applies every
/// pending migration, or none if one fails; the others then find nothing left
/// to do. Migrations a later release applied are left alone (see
/// [`migration::applied`]). Returns the schema as it is then: nothing
/// pending, and what this release does not know.
pub async fn migrate(db: &DatabaseConnection) -> Result<Schema, DbErr> {
    let txn = begin_write(db).await?;
    if db.get_database_backend() == DbBackend::Postgres {
        txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
            .await?;
    }
    let status = migration::applied::status(&*txn).await?;
    if !status.pending.is_empty() && db.get_database_backend() == DbBackend::Postgres {
        lock_in_writers_order(&txn).await?;
    }
    for migration in &status.pending {
        migration::applied::apply(&*txn, migration.as_ref()).await?;
    }
    txn.commit().await?;
    for migration in &status.pending {
        tracing::info!(migration = migration.name(), "migration applied");
    }
    Ok(Schema {
        pending: Vec::new(),
        unknown: status.unknown,
    })
}

/// Takes the tables every change writes, in the order a change writes them
/// (`connections`, then `connection_events`), before any migration alters
/// either: migrations applied together may alter them in the other order
/// (an earlier migration the events, a later one the connections), and a
/// change of a replica still serving, holding the one and waiting for the
/// other, would then deadlock with the migration. Both are held until the
/// migrations commit, as an ALTER TABLE would hold them; a database that
/// has neither yet is left as it is.
async fn lock_in_writers_order(txn: &WriteTransaction) -> Result<(), DbErr> {
    let exists = txn
        .query_one_raw(sea_orm::Statement::from_string(
            DbBackend::Postgres,
            "SELECT to_regclass('connections') IS NOT NULL \
             AND to_regclass('connection_events') IS NOT NULL AS present",
        ))
        .await?
        .map(|row| row.try_get::<bool>("", "present"))
        .transpose()?
        .unwrap_or(false);
    if exists {
        txn.execute_unprepared(
            "LOCK TABLE connections, connection_events IN ACCESS EXCLUSIVE MODE",
        )
        .await?;
    }
    Ok(())
}

/// A short name of the backend, for logs (never the URL: it may hold a password).
pub fn backend_name(db: &DatabaseConnection) -> &'static str {
    match db.get_database_backend() {
        DbBackend::Sqlite => "sqlite",
        DbBackend::Postgres => "postgres",
        DbBackend::MySql => "mysql",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_sqlite_writer_that_never_gets_its_turn_reports_the_database_unavailable() {
        let db = connect(&DatabaseSettings::new("sqlite::memory:"))
            .await
            .unwrap();
        let _held = SQLITE_WRITE_GATE.clone().lock_owned().await;
        tokio::time::pause();
        let err = begin_write(&db).await.err().expect("no turn");
        assert_eq!(
            error::classify(&err),
            error::DbFailure::Unavailable,
            "{err}"
        );
    }

    /// A SQLite database in a new file; returns its URL and path.
    fn temporary_sqlite_url(name: &str) -> (String, std::path::PathBuf) {
        let path =
            std::env::temp_dir().join(format!("connections-{name}-{}.db", uuid::Uuid::now_v7()));
        (format!("sqlite://{}?mode=rwc", path.display()), path)
    }

    fn remove_sqlite_files(path: &std::path::Path) {
        for suffix in ["", "-wal", "-shm"] {
            let mut file = path.to_path_buf().into_os_string();
            file.push(suffix);
            let _ = std::fs::remove_file(file);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_abandoned_sqlite_write_is_rolled_back_before_its_turn_is_handed_on() {
        use sea_orm::sqlx::{ConnectOptions as _, sqlite::SqliteConnectOptions};
        use std::str::FromStr;
        let (url, path) = temporary_sqlite_url("abandoned");
        let db = connect(&DatabaseSettings::new(url.clone())).await.unwrap();
        db.execute_unprepared("CREATE TABLE t (x INTEGER)")
            .await
            .unwrap();
        // Another connection, which never waits for the database's lock.
        let mut probe = SqliteConnectOptions::from_str(&url)
            .unwrap()
            .busy_timeout(Duration::ZERO)
            .connect()
            .await
            .unwrap();
        for round in 0..100 {
            let txn = begin_write(&db).await.unwrap();
            txn.execute_unprepared("INSERT INTO t VALUES (1)")
                .await
                .unwrap();
            drop(txn);
            // The next writer's turn: the database must be unlocked by now.
            let turn = SQLITE_WRITE_GATE.clone().lock_owned().await;
            sqlx::query("BEGIN IMMEDIATE")
                .execute(&mut probe)
                .await
                .unwrap_or_else(|err| panic!("round {round}: still locked: {err}"));
            sqlx::query("ROLLBACK").execute(&mut probe).await.unwrap();
            drop(turn);
        }
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
            .fetch_one(&mut probe)
            .await
            .unwrap();
        assert_eq!(rows, 0, "abandoned writes were not rolled back");
        drop(probe);
        db.close().await.unwrap();
        remove_sqlite_files(&path);
    }

    /// Whether two statements on `db` run in one transaction: they do only
    /// if the connection was left inside one.
    async fn left_in_a_transaction(db: &DatabaseConnection) -> bool {
        let statement = || {
            sea_orm::Statement::from_string(
                DbBackend::Postgres,
                "SELECT pg_current_xact_id()::text AS xid",
            )
        };
        let mut ids = Vec::new();
        for _ in 0..2 {
            let row = db.query_one_raw(statement()).await.unwrap().unwrap();
            ids.push(row.try_get::<String>("", "xid").unwrap());
        }
        ids[0] == ids[1]
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_cancelled_at_any_point_leaves_no_transaction_behind() {
        let Ok(url) = std::env::var("TEST_DATABASE_URL") else {
            return; // PostgreSQL only.
        };
        // One connection, so the next statement gets the cancelled write's.
        let db = connect(&DatabaseSettings {
            max_connections: 1,
            ..DatabaseSettings::new(url)
        })
        .await
        .unwrap();
        let write = |db: DatabaseConnection| async move {
            let txn = begin_write(&db).await?;
            txn.execute_unprepared("SELECT 1").await?;
            txn.commit().await
        };
        // Cancelled after a number of polls (each a step of BEGIN, the
        // statement or COMMIT), then after a number of microseconds.
        for polls in 1..=8 {
            let mut pending = Box::pin(write(db.clone()));
            for _ in 0..polls {
                if futures::poll!(pending.as_mut()).is_ready() {
                    break;
                }
                tokio::task::yield_now().await;
            }
            drop(pending);
            assert!(
                !left_in_a_transaction(&db).await,
                "cancelled after {polls} polls"
            );
        }
        for micros in (0..3_000).step_by(20) {
            let _ = tokio::time::timeout(Duration::from_micros(micros), write(db.clone())).await;
            assert!(
                !left_in_a_transaction(&db).await,
                "cancelled after {micros} µs"
            );
        }
        db.close().await.unwrap();
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_new_sqlite_database_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let (url, path) = temporary_sqlite_url("mode");
        let db = connect(&DatabaseSettings::new(url)).await.unwrap();
        migrate(&db).await.unwrap();
        db.close().await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        remove_sqlite_files(&path);
        assert_eq!(mode, 0o600, "{mode:o}");
    }

    #[tokio::test]
    async fn connection_errors_do_not_quote_the_password() {
        let err = connect(&DatabaseSettings::new(
            "postgress://user:s3cret@127.0.0.1:1/db",
        ))
        .await
        .unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }
}
