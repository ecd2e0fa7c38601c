//! pgbench scripts holding the statements the service sends for a call, as
//! its PostgreSQL log shows them (`log_statement = all`), with the same
//! parameters bound. Bulk rows are named by number (see `seed`), so a script
//! picks a random row without a lookup; building the UUID from the number
//! costs PostgreSQL well under a microsecond.

use std::path::{Path, PathBuf};

use connections::{
    domain::{
        Action, ApiKeyId, Caller as Acting, Change, ConnectionId, ConnectionRecord, DataType,
        DataTypes, OrganizationId,
    },
    entity::{api_key::lookup_query, connection, connection_event},
};
use sea_orm::{DbBackend, QuerySelect, QueryTrait, Statement};

use crate::seed::{Caller, sql_connection_id};

/// `statement`, built for PostgreSQL, with its parameters `$1`, `$2`, ...
/// replaced by `values` (pgbench variables or SQL expressions), which must be
/// exactly as many: a statement that gains a column makes this fail instead
/// of leaving the script behind.
fn with_parameters(statement: Statement, values: &[&str]) -> anyhow::Result<String> {
    let count = statement.values.as_ref().map_or(0, |values| values.0.len());
    anyhow::ensure!(
        count == values.len(),
        "the statement takes {count} parameters, the script gives {}: {}",
        values.len(),
        statement.sql
    );
    let mut sql = statement.sql;
    // From the last, so that `$1` is not taken for the start of `$12`.
    for (i, value) in values.iter().enumerate().rev() {
        sql = sql.replace(&format!("${}", i + 1), value);
    }
    Ok(sql)
}

/// `secure_find`: a connection by ID (the SQL expression `id`), only if the
/// caller is a party to it; `LIMIT 1` as a single-row read adds it.
fn secure_find(id: &str) -> anyhow::Result<String> {
    let query = connection::secure_find_query(
        OrganizationId::from(uuid::Uuid::nil()),
        ConnectionId::from(uuid::Uuid::nil()),
    )
    .limit(1)
    .build(DbBackend::Postgres);
    with_parameters(query, &[id, ":caller", ":caller", ":one"])
}

/// Authentication: the organization of an unrevoked key, by its digest.
fn authenticate() -> anyhow::Result<String> {
    let query = lookup_query(&[0; 32]).limit(1).build(DbBackend::Postgres);
    Ok(with_parameters(query, &[":digest", ":one"])? + ";")
}

/// The guarded update and the event of an activation by the destination, of
/// the connection read into the `c_` variables (at version `:c_version`;
/// the new version is `:next`), made with the key `:key_id` named
/// `:key_name`.
fn activate() -> anyhow::Result<(String, String)> {
    let acting = |organization: uuid::Uuid| Acting {
        organization: OrganizationId::from(organization),
        api_key: ApiKeyId::from(organization),
        api_key_name: "benchmark".into(),
    };
    let (source, destination) = (acting(uuid::Uuid::nil()), acting(uuid::Uuid::max()));
    let data_types = DataTypes::new([DataType::Inquiry])?;
    let (pending, _) = ConnectionRecord::create(
        ConnectionId::from(uuid::Uuid::nil()),
        &source,
        destination.organization,
        data_types,
        sea_orm::prelude::DateTimeUtc::UNIX_EPOCH,
        connections::domain::Invitation::default(),
    );
    let (active, event) = pending
        .apply(Change {
            action: Action::Activate,
            caller: destination,
            etag: None,
            reason: None,
            message: None,
            data_types: None,
            pending_lifetime: None,
            at: sea_orm::prelude::DateTimeUtc::UNIX_EPOCH,
        })
        .map_err(|err| anyhow::anyhow!("{err:?}"))?;
    let update =
        connection::update_guarded_query(pending.version, &active).build(DbBackend::Postgres);
    let update = with_parameters(
        update,
        &[
            ":c_id",
            ":c_source_organization_id",
            ":c_destination_organization_id",
            "'ACTIVE'",
            ":c_data_types",
            ":next",
            ":c_create_time",
            "now()",
            "now()",
            "NULL",
            "NULL",
            "NULL",
            // The seeded connections have no invitation message; an
            // activation ends the expiry.
            "NULL",
            "NULL",
            "NULL",
            // Nor data types waiting for approval.
            "NULL",
            "NULL",
            ":c_id",
            ":c_version",
        ],
    )?;
    let insert = connection_event::append_statement(DbBackend::Postgres, uuid::Uuid::nil(), &event);
    let insert = with_parameters(
        insert,
        &[
            "gen_random_uuid()",
            ":c_id",
            ":next",
            "'ACTIVATED'",
            ":c_state",
            "'ACTIVE'",
            ":caller",
            "'DESTINATION'",
            ":key_id",
            ":key_name",
            "NULL",
            "now()",
            "NULL",
            // No change of the data types, not by policy.
            "NULL",
            "NULL",
            "NULL",
            "NULL",
            "NULL",
        ],
    )?;
    Ok((update, insert))
}

/// Variables every script needs, for pgbench's `--define`.
pub fn defines(caller: &Caller) -> Vec<(String, String)> {
    let digest: String = connections::service::api_keys::digest(&caller.secret)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    vec![
        ("caller".to_owned(), caller.id.clone()),
        ("key_id".to_owned(), caller.key_id.clone()),
        ("key_name".to_owned(), caller.key_name.clone()),
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
    let authenticate = if authenticate {
        self::authenticate()?
    } else {
        String::new()
    };
    let script = format!(
        "\\set one 1\n\\set n random(1, {rows})\n{authenticate}\n{};\n",
        secure_find(&id)?
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
    let authenticate = if authenticate {
        self::authenticate()?
    } else {
        String::new()
    };
    let (update, insert) = activate()?;
    let script = format!(
        r#"\set one 1
\set n {first} + :client_id * {per_client} + random(1, {per_client})
{authenticate}
BEGIN;
{find} \gset c_
\set next :c_version + 1
{update};
{insert};
COMMIT;
"#,
        find = secure_find(&id)?,
    );
    write(work, "transition.sql", &script)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_are_built_from_the_services_own_statements() {
        // Each statement takes exactly the parameters the script gives it; a
        // column added to a table fails here, not silently in a benchmark.
        let find = secure_find(":id").unwrap();
        assert!(find.starts_with(r#"SELECT "connections"."id","#), "{find}");
        assert!(find.ends_with(" LIMIT :one"), "{find}");
        assert!(!find.contains('$'), "{find}");
        let (update, insert) = activate().unwrap();
        assert!(
            update.starts_with(r#"UPDATE "connections" SET"#),
            "{update}"
        );
        assert!(
            update.ends_with(
                r#"WHERE "connections"."id" = :c_id AND "connections"."version" = :c_version"#
            ),
            "{update}"
        );
        assert!(
            insert.contains("VALUES (gen_random_uuid(), :c_id, :next, 'ACTIVATED'"),
            "{insert}"
        );
        assert!(
            insert.contains(":caller, 'DESTINATION', :key_id, :key_name, NULL, now()"),
            "the event names the acting key: {insert}"
        );
        assert!(authenticate().unwrap().contains(":digest"));
    }

    #[test]
    fn a_statement_with_more_parameters_than_the_script_gives_is_refused() {
        let statement = Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT $1, $2",
            [1.into(), 2.into()],
        );
        assert!(with_parameters(statement.clone(), &[":a"]).is_err());
        assert_eq!(
            with_parameters(statement, &[":a", ":b"]).unwrap(),
            "SELECT :a, :b"
        );
        let many = Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT $1, $12",
            (1..=12).map(sea_orm::Value::from),
        );
        let values: Vec<String> = (1..=12).map(|i| format!(":v{i}")).collect();
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        assert_eq!(with_parameters(many, &values).unwrap(), "SELECT :v1, :v12");
    }
}
