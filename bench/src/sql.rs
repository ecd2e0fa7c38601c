//! pgbench scripts holding the statements the service sends for a call, as
//! its PostgreSQL log shows them (`log_statement = all`), with the same
//! parameters bound. Bulk rows are named by number (see `seed`), so a script
//! picks a random row without a lookup; building the UUID from the number
//! costs PostgreSQL well under a microsecond.

use std::path::{Path, PathBuf};

use sea_orm::DbBackend;

use crate::seed::{Caller, sql_connection_id};

/// The columns every connection query selects, as the service writes them.
const CONNECTION_COLUMNS: &str = r#""connections"."id", "connections"."source_organization_id", "connections"."destination_organization_id", "connections"."state", "connections"."data_types", "connections"."version", "connections"."create_time", "connections"."update_time", "connections"."activate_time", "connections"."deactivate_time", "connections"."deactivated_by", "connections"."deactivation_reason""#;

/// `secure_find`: a connection by ID, only if the caller is a party to it.
fn secure_find(id: &str) -> String {
    format!(
        r#"SELECT {CONNECTION_COLUMNS} FROM "connections" WHERE "connections"."id" = {id} AND ("connections"."source_organization_id" = :caller OR "connections"."destination_organization_id" = :caller) LIMIT :one"#
    )
}

/// Authentication: the organization of an unrevoked key, by its digest.
const AUTHENTICATE: &str = r#"SELECT "api_keys"."organization_id", "api_keys"."secret_sha256" FROM "api_keys" WHERE "api_keys"."secret_sha256" = :digest AND "api_keys"."revoke_time" IS NULL LIMIT :one;"#;

/// Variables every script needs, for pgbench's `--define`.
pub fn defines(caller: &Caller) -> Vec<(String, String)> {
    let digest: String = connections::service::api_keys::digest(&caller.secret)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    vec![
        ("caller".to_owned(), caller.id.clone()),
        ("digest".to_owned(), format!("\\x{digest}")),
    ]
}

fn write(work: &Path, name: &str, script: &str) -> anyhow::Result<PathBuf> {
    let path = work.join(name);
    std::fs::write(&path, script)?;
    Ok(path)
}

/// GetConnection: authenticate, then one connection of the first `rows`.
pub fn get_script(work: &Path, authenticate: bool, rows: u64) -> anyhow::Result<PathBuf> {
    let id = sql_connection_id(DbBackend::Postgres, ":n::bigint");
    let authenticate = if authenticate { AUTHENTICATE } else { "" };
    let script = format!(
        "\\set one 1\n\\set n random(1, {rows})\n{authenticate}\n{};\n",
        secure_find(&id)
    );
    write(work, "get.sql", &script)
}

/// A transition (here, an activation by the destination): authenticate, then
/// in one transaction read the connection, write it guarded by its version,
/// and append the event. Each client works on a range of connections of its
/// own (as each of the load generator's callers works on a connection nobody
/// else is changing), so no update loses a race.
pub fn transition_script(
    work: &Path,
    authenticate: bool,
    first: u64,
    rows: u64,
    clients: usize,
) -> anyhow::Result<PathBuf> {
    let per_client = (rows / clients as u64).max(1);
    let id = sql_connection_id(DbBackend::Postgres, ":n::bigint");
    let authenticate = if authenticate { AUTHENTICATE } else { "" };
    let script = format!(
        r#"\set one 1
\set n {first} + :client_id * {per_client} + random(1, {per_client})
{authenticate}
BEGIN;
{find} \gset c_
\set next :c_version + 1
UPDATE "connections" SET "id" = :c_id, "source_organization_id" = :c_source_organization_id, "destination_organization_id" = :c_destination_organization_id, "state" = 'ACTIVE', "data_types" = :c_data_types, "version" = :next, "create_time" = :c_create_time, "update_time" = now(), "activate_time" = now(), "deactivate_time" = NULL, "deactivated_by" = NULL, "deactivation_reason" = NULL WHERE "connections"."id" = :c_id AND "connections"."version" = :c_version;
INSERT INTO "connection_events" ("id", "connection_id", "sequence", "event_type", "from_state", "to_state", "actor_organization_id", "actor_role", "reason", "create_time") VALUES (gen_random_uuid(), :c_id, :next, 'ACTIVATED', :c_state, 'ACTIVE', :caller, 'DESTINATION', NULL, now());
COMMIT;
"#,
        find = secure_find(&id),
    );
    write(work, "transition.sql", &script)
}
