//! What a database error means for the caller: the PostgreSQL SQLSTATE and
//! SQLite result codes sorted into "retry later", "retry now" and "a bug".
//! Depends on nothing above the database layer.

use sea_orm::{DbErr, RuntimeErr, sqlx};

/// How a database error should be reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbFailure {
    /// The database cannot be reached or refuses work for now: retry later.
    Unavailable,
    /// A serialization failure or deadlock: the caller should retry now.
    Conflict,
    /// Anything else: a bug, or data the service cannot read.
    Other,
}

/// Sorts a database error into what the caller can do about it.
pub fn classify(err: &DbErr) -> DbFailure {
    match err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => DbFailure::Unavailable,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
            classify_sqlx(e)
        }
        _ => DbFailure::Other,
    }
}

fn classify_sqlx(err: &sqlx::Error) -> DbFailure {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => DbFailure::Unavailable,
        sqlx::Error::Database(db) if is_sqlite(db.as_ref()) => db
            .code()
            .map_or(DbFailure::Other, |code| classify_sqlite_code(&code)),
        sqlx::Error::Database(db) => db
            .code()
            .map_or(DbFailure::Other, |code| classify_postgres_code(&code)),
        _ => DbFailure::Other,
    }
}

/// PostgreSQL reports SQLSTATE codes.
fn classify_postgres_code(code: &str) -> DbFailure {
    match code {
        // serialization_failure, deadlock_detected, lock_not_available
        "40001" | "40P01" | "55P03" => DbFailure::Conflict,
        // query_canceled (statement timeout, cancelled backend) and
        // read_only_sql_transaction (a standby after a failover)
        "57014" | "25006" => DbFailure::Unavailable,
        // connection exceptions, insufficient resources (e.g. too many
        // connections), operator intervention (shutdown, cannot connect now),
        // system errors (I/O)
        _ if code.starts_with("08")
            || code.starts_with("53")
            || code.starts_with("57P")
            || code.starts_with("58") =>
        {
            DbFailure::Unavailable
        }
        _ => DbFailure::Other,
    }
}

const SQLITE_BUSY: i64 = 5;
const SQLITE_LOCKED: i64 = 6;
const SQLITE_READONLY: i64 = 8;
const SQLITE_IOERR: i64 = 10;
const SQLITE_FULL: i64 = 13;
const SQLITE_CANTOPEN: i64 = 14;

fn is_sqlite(err: &dyn sqlx::error::DatabaseError) -> bool {
    err.try_downcast_ref::<sqlx::sqlite::SqliteError>()
        .is_some()
}

/// SQLite reports (extended) result codes as decimal strings; the primary
/// code is the low byte.
fn sqlite_primary_code(code: &str) -> Option<i64> {
    code.parse::<i64>().ok().map(|extended| extended & 0xff)
}

fn classify_sqlite_code(code: &str) -> DbFailure {
    match sqlite_primary_code(code) {
        Some(
            SQLITE_BUSY | SQLITE_LOCKED | SQLITE_READONLY | SQLITE_IOERR | SQLITE_FULL
            | SQLITE_CANTOPEN,
        ) => DbFailure::Unavailable,
        _ => DbFailure::Other,
    }
}

/// The driver's error inside `err`, if it has one.
fn sqlx_error(err: &DbErr) -> Option<&sqlx::Error> {
    match err {
        DbErr::Conn(RuntimeErr::SqlxError(err))
        | DbErr::Exec(RuntimeErr::SqlxError(err))
        | DbErr::Query(RuntimeErr::SqlxError(err)) => Some(err),
        _ => None,
    }
}

/// Whether SQLite answered "busy" or "locked": another connection holds the
/// lock it needed.
pub fn sqlite_busy(err: &DbErr) -> bool {
    let Some(sqlx::Error::Database(db)) = sqlx_error(err) else {
        return false;
    };
    is_sqlite(db.as_ref())
        && db
            .code()
            .and_then(|code| sqlite_primary_code(&code))
            .is_some_and(|code| matches!(code, SQLITE_BUSY | SQLITE_LOCKED))
}

/// Whether the connection was closed under a statement (a database restart, a
/// failover, an administrator): I/O errors, and PostgreSQL's admin_shutdown,
/// crash_shutdown and connection exceptions. Whether the statement ran is
/// then unknown: only one that cannot have written (a query, a `BEGIN`) is
/// safe to run again.
pub fn connection_closed(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_) => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code == "57P01" || code == "57P02" || code.starts_with("08")),
        _ => false,
    }
}

/// [`connection_closed`], for an error SeaORM returned.
pub fn closed_by_database(err: &DbErr) -> bool {
    sqlx_error(err).is_some_and(connection_closed)
}

/// Whether `err` is a unique-constraint violation (a concurrent insert of the
/// same key committed first).
pub fn unique_violation(err: &DbErr) -> bool {
    matches!(
        err.sql_err(),
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_codes_map_to_what_the_caller_can_do() {
        for (code, expected) in [
            ("40001", DbFailure::Conflict),
            ("40P01", DbFailure::Conflict),
            ("55P03", DbFailure::Conflict),
            ("08006", DbFailure::Unavailable),
            ("53300", DbFailure::Unavailable),
            ("57P01", DbFailure::Unavailable),
            ("57014", DbFailure::Unavailable),
            ("25006", DbFailure::Unavailable),
            ("58030", DbFailure::Unavailable),
            ("23505", DbFailure::Other),
            ("42P01", DbFailure::Other),
        ] {
            assert_eq!(classify_postgres_code(code), expected, "{code}");
        }
    }

    #[test]
    fn lost_connections_are_unavailable() {
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        let err = DbErr::Exec(RuntimeErr::SqlxError(std::sync::Arc::new(io)));
        assert_eq!(classify(&err), DbFailure::Unavailable);
        assert!(closed_by_database(&err));
        assert_eq!(
            classify(&DbErr::Conn(RuntimeErr::Internal("gone".into()))),
            DbFailure::Unavailable
        );
    }

    #[test]
    fn sqlite_busy_and_locked_codes_are_unavailable() {
        assert_eq!(classify_sqlite_code("5"), DbFailure::Unavailable);
        assert_eq!(classify_sqlite_code("517"), DbFailure::Unavailable); // BUSY_SNAPSHOT
        assert_eq!(classify_sqlite_code("6"), DbFailure::Unavailable);
        assert_eq!(classify_sqlite_code("2067"), DbFailure::Other); // CONSTRAINT_UNIQUE
        assert_eq!(classify_sqlite_code("778"), DbFailure::Unavailable); // IOERR_WRITE
        assert_eq!(classify_sqlite_code("13"), DbFailure::Unavailable); // FULL
    }
}
