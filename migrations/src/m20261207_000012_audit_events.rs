//! The audit log: an append-only record of operator actions (organizations
//! created, API keys created and revoked), each with the credential that did
//! it, the target, and where the request came from.
//!
//! Entries are never changed or deleted: triggers refuse every UPDATE and
//! DELETE (and TRUNCATE on PostgreSQL) on the table, and on SQLite an INSERT
//! that would replace an entry (`INSERT OR REPLACE` deletes without firing
//! DELETE triggers). They hold for every user of the database but the
//! table's owner, who may disable or drop them: where that matters, migrate
//! as an owner role and serve as a role granted only SELECT and INSERT on
//! `audit_events` (README, "Audit log").
//!
//! Expand only: a new table; the previous release neither reads nor writes
//! it.
//!
//! Down: the table (and with it the trigger) is dropped.

use sea_orm_migration::{prelude::*, schema::*, sea_orm::DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// What a refused change says.
const REFUSAL: &str = "audit_events is append-only: entries are never changed or deleted";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(AuditEvents::Table)
                    // UUIDv7: in the order the entries were made.
                    .col(uuid(AuditEvents::Id).primary_key())
                    .col(timestamp_with_time_zone(AuditEvents::OccurTime))
                    // e.g. "api_key.revoked".
                    .col(string_len(AuditEvents::Action, 64))
                    // "admin_token", "cli" or "api_key".
                    .col(string_len(AuditEvents::CredentialKind, 32))
                    // The admin token's fingerprint, or the API key's ID; none
                    // for the command line.
                    .col(string_len_null(AuditEvents::CredentialId, 64))
                    .col(string_len(AuditEvents::TargetType, 32))
                    .col(uuid(AuditEvents::TargetId))
                    // The organization the target is or belongs to.
                    .col(uuid(AuditEvents::OrganizationId))
                    // The target's display name as it was.
                    .col(string_len(AuditEvents::TargetDisplayName, 200))
                    .col(string_len_null(AuditEvents::Peer, 64))
                    .col(string_len_null(AuditEvents::RequestId, 128))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("audit_events_by_target")
                    .table(AuditEvents::Table)
                    .col(AuditEvents::TargetId)
                    .col(AuditEvents::Id)
                    .to_owned(),
            )
            .await?;
        let db = manager.get_connection();
        match manager.get_database_backend() {
            DbBackend::Postgres => {
                db.execute_unprepared(&format!(
                    "CREATE FUNCTION connections_audit_events_append_only() RETURNS trigger \
                     LANGUAGE plpgsql AS $$ \
                     BEGIN \
                         RAISE EXCEPTION '{REFUSAL}' USING ERRCODE = 'insufficient_privilege'; \
                     END $$"
                ))
                .await?;
                db.execute_unprepared(
                    "CREATE TRIGGER audit_events_append_only \
                     BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_events \
                     FOR EACH STATEMENT EXECUTE FUNCTION connections_audit_events_append_only()",
                )
                .await?;
            }
            _ => {
                for (name, operation) in [
                    ("audit_events_no_update", "UPDATE ON audit_events"),
                    ("audit_events_no_delete", "DELETE ON audit_events"),
                    (
                        "audit_events_no_replace",
                        "INSERT ON audit_events \
                         WHEN EXISTS (SELECT 1 FROM audit_events WHERE id = NEW.id)",
                    ),
                ] {
                    db.execute_unprepared(&format!(
                        "CREATE TRIGGER {name} BEFORE {operation} \
                         BEGIN SELECT RAISE(ABORT, '{REFUSAL}'); END"
                    ))
                    .await?;
                }
            }
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(AuditEvents::Table).to_owned())
            .await?;
        if manager.get_database_backend() == DbBackend::Postgres {
            manager
                .get_connection()
                .execute_unprepared("DROP FUNCTION connections_audit_events_append_only()")
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum AuditEvents {
    Table,
    Id,
    OccurTime,
    Action,
    CredentialKind,
    CredentialId,
    TargetType,
    TargetId,
    OrganizationId,
    TargetDisplayName,
    Peer,
    RequestId,
}
