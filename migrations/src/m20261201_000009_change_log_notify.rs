//! PostgreSQL: a notification for every event appended to the change log, so
//! that replicas read the log as soon as an event commits instead of at
//! their next poll.
//!
//! A trigger on `connection_events` sends `pg_notify('connections_change_log',
//! <position>)` for each new row. PostgreSQL delivers it when the writing
//! transaction commits (never if it rolls back), to every session that
//! listens on the channel. It costs the write no round trip. SQLite has no
//! notifications: there nothing is done, and replicas poll.
//!
//! Down: the trigger and its function are dropped.

use sea_orm_migration::{prelude::*, sea_orm::DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        let db = manager.get_connection();
        db.execute_unprepared(
            "CREATE FUNCTION connections_change_log_notify() RETURNS trigger \
             LANGUAGE plpgsql AS $$ \
             BEGIN \
                 PERFORM pg_notify('connections_change_log', NEW.position::text); \
                 RETURN NULL; \
             END $$",
        )
        .await?;
        db.execute_unprepared(
            "CREATE TRIGGER connection_events_notify AFTER INSERT ON connection_events \
             FOR EACH ROW EXECUTE FUNCTION connections_change_log_notify()",
        )
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        let db = manager.get_connection();
        db.execute_unprepared("DROP TRIGGER connection_events_notify ON connection_events")
            .await?;
        db.execute_unprepared("DROP FUNCTION connections_change_log_notify()")
            .await?;
        Ok(())
    }
}
