//! The `connections` binary: admin commands, `serve`, and SIGTERM.

use std::{
    net::TcpListener,
    process::{Command, Stdio},
    time::Duration,
};

use connections::proto::{
    GetOrganizationRequest, organization_service_client::OrganizationServiceClient,
};
use serde_json::Value;
use tonic::transport::Channel;

use crate::support::Bearer;

const BIN: &str = env!("CARGO_BIN_EXE_connections");

/// A database URL for one test: a fresh SQLite file (the CLI is backend-agnostic).
fn database_url() -> (String, std::path::PathBuf) {
    let path = std::env::temp_dir().join(format!("connections-cli-{}.db", uuid::Uuid::now_v7()));
    (format!("sqlite://{}?mode=rwc", path.display()), path)
}

fn run(url: &str, args: &[&str]) -> Vec<Value> {
    let output = Command::new(BIN)
        .args(args)
        .env("CONNECTIONS_DATABASE_URL", url)
        .env_remove("RUST_LOG")
        .output()
        .expect("run connections");
    assert!(
        output.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect()
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn operators_bootstrap_with_admin_commands_then_serve_and_stop_on_sigterm() {
    let (url, path) = database_url();

    let org = &run(&url, &["admin", "create-org", "--name", "Acme Bank"])[0];
    assert_eq!(org["display_name"], "Acme Bank");
    let org_id = org["id"].as_str().unwrap().to_owned();
    run(&url, &["admin", "create-org", "--name", "Beta Lending"]);
    let orgs = run(&url, &["admin", "list-orgs"]);
    assert_eq!(orgs.len(), 2);
    assert_eq!(orgs[0]["id"], org_id.as_str());

    let key = &run(
        &url,
        &["admin", "create-key", "--org", &org_id, "--name", "ci"],
    )[0];
    assert_eq!(key["organization_id"], org_id.as_str());
    let secret = key["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("cnx_"));

    let port = free_port();
    let mut server = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--log-format",
            "json",
        ])
        .env("CONNECTIONS_DATABASE_URL", &url)
        .env(
            "CONNECTIONS_ADMIN_TOKEN",
            "cli-test-token-0123456789abcdef0123",
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start server");

    let mut channel = None;
    for _ in 0..100 {
        if let Ok(c) = Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await
        {
            channel = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let channel = channel.expect("server listens");
    let own = OrganizationServiceClient::with_interceptor(channel, Bearer::new(&secret))
        .get_organization(GetOrganizationRequest::default())
        .await
        .expect("call with the key made by the CLI")
        .into_inner()
        .organization
        .unwrap();
    assert_eq!(own.id, org_id);

    let revoked = &run(
        &url,
        &["admin", "revoke-key", "--key", key["id"].as_str().unwrap()],
    )[0];
    assert!(revoked["revoke_time"].is_string());

    let status = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = tokio::task::spawn_blocking(move || {
        let _ = server.wait();
        server.wait_with_output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(output.status.success(), "exit status {:?}", output.status);
    let logs = String::from_utf8_lossy(&output.stderr);
    assert!(
        logs.lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('{')),
        "JSON logs: {logs}"
    );
    assert!(
        !logs.contains("cli-test-token"),
        "the admin token was logged"
    );
    assert!(!logs.contains(&secret), "an API key was logged");

    for suffix in ["", "-wal", "-shm", ".webhook-key"] {
        let mut file = path.clone().into_os_string();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
}

#[test]
fn admin_commands_reject_malformed_input_with_a_message() {
    let (url, _path) = database_url();
    let output = Command::new(BIN)
        .args(["admin", "create-key", "--org", "not-a-uuid"])
        .env("CONNECTIONS_DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--org"));
}

/// Admin commands on the database directly are audited as the command line
/// (no peer, no request ID); `admin audit` prints the log as JSON lines,
/// filtered by action, target and time.
#[test]
fn admin_commands_are_audited_as_the_command_line_and_admin_audit_prints_the_log() {
    let (url, _path) = database_url();
    let org = &run(&url, &["admin", "create-org", "--name", "Acme Bank"])[0];
    let org_id = org["id"].as_str().unwrap().to_owned();
    let key = &run(
        &url,
        &["admin", "create-key", "--org", &org_id, "--name", "ci"],
    )[0];
    let key_id = key["id"].as_str().unwrap().to_owned();
    run(&url, &["admin", "revoke-key", "--key", &key_id]);

    let entries = run(&url, &["admin", "audit"]);
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["organization.created", "api_key.created", "api_key.revoked"]
    );
    for entry in &entries {
        assert_eq!(entry["credential_kind"], "cli");
        assert_eq!(entry["credential_id"], Value::Null);
        assert_eq!(entry["peer"], Value::Null);
        assert_eq!(entry["request_id"], Value::Null);
        assert_eq!(entry["organization_id"], org_id.as_str());
    }
    assert_eq!(entries[1]["target_id"], key_id.as_str());
    assert_eq!(entries[1]["target_display_name"], "ci");

    let revoked = run(&url, &["admin", "audit", "--action", "api_key.revoked"]);
    assert_eq!(revoked.len(), 1);
    let about_org = run(&url, &["admin", "audit", "--target", &org_id]);
    assert_eq!(about_org.len(), 1);
    assert_eq!(about_org[0]["action"], "organization.created");
    let since = entries[2]["occur_time"].as_str().unwrap();
    assert!(!run(&url, &["admin", "audit", "--since", since]).is_empty());
    assert!(run(&url, &["admin", "audit", "--until", "2000-01-01T00:00:00Z"]).is_empty());

    let output = Command::new(BIN)
        .args(["admin", "audit", "--action", "organization.deleted"])
        .env("CONNECTIONS_DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--action must be one of"), "{stderr}");
}

/// A CORS origin that would admit any site (`*`), sandboxed frames and local
/// files (`null`), or that is not an origin at all, stops `serve` before it
/// starts: a sentence and exit code 2, never a panic. A comma-separated list
/// in the environment is trimmed.
#[test]
fn serve_refuses_an_admin_token_under_32_characters_with_exit_code_2() {
    let (url, path) = database_url();
    // 31 characters, padded with whitespace that does not count.
    let short = format!("  {}  ", "x".repeat(31));
    for token in ["change-me", short.as_str()] {
        let output = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("CONNECTIONS_DATABASE_URL", &url)
            .env("CONNECTIONS_ADMIN_TOKEN", token)
            .env_remove("RUST_LOG")
            .output()
            .expect("run connections");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{token:?}: {stderr}");
        assert!(stderr.contains("at least 32 characters"), "{stderr}");
        assert!(
            !stderr.contains(token.trim()),
            "the token is echoed: {stderr}"
        );
    }
    let _ = std::fs::remove_file(path);
}

#[test]
fn serve_refuses_wildcard_null_and_malformed_cors_origins_with_exit_code_2() {
    let (url, path) = database_url();
    for (origin, says) in [
        ("*", "wildcard"),
        ("null", "null"),
        ("https://a.example/path", "not an origin"),
    ] {
        for from_env in [false, true] {
            let mut command = serve_command(&url);
            if from_env {
                command.env(
                    "CONNECTIONS_CORS_ALLOW_ORIGIN",
                    format!("https://ok.example, {origin}"),
                );
            } else {
                command.args(["--cors-allow-origin", origin]);
            }
            let output = command.output().expect("run connections");
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(2), "{origin}: {stderr}");
            assert!(stderr.contains(says), "{origin}: {stderr}");
            assert!(!stderr.contains("panicked"), "{origin}: {stderr}");
        }
    }
    let _ = std::fs::remove_file(path);
}

/// `connections serve` on `url`, on a free port, with `RUST_LOG` unset.
fn serve_command(url: &str) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("CONNECTIONS_DATABASE_URL", url)
        .env_remove("RUST_LOG");
    command
}

#[test]
fn serve_refuses_a_zero_watch_heartbeat_interval_with_exit_code_2() {
    let (url, path) = database_url();
    for from_env in [false, true] {
        let mut command = serve_command(&url);
        match from_env {
            false => command.args(["--watch-heartbeat-interval", "0s"]),
            true => command.env("CONNECTIONS_WATCH_HEARTBEAT_INTERVAL", "0"),
        };
        let output = exits_within_10_seconds(command);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("--watch-heartbeat-interval"), "{stderr}");
        assert!(stderr.contains("zero"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let _ = std::fs::remove_file(path);
}

/// The output of `command`, which must exit within 10 s (it is killed
/// otherwise: e.g. a server that started).
fn exits_within_10_seconds(mut command: Command) -> std::process::Output {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run connections");
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "still running after 10 s: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// `connections serve` on `url`, its stderr captured.
fn spawn_serve(url: &str) -> std::process::Child {
    spawn_serve_on(url, free_port())
}

fn spawn_serve_on(url: &str, port: u16) -> std::process::Child {
    Command::new(BIN)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("CONNECTIONS_DATABASE_URL", url)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start server")
}

/// Sends SIGTERM to `server` and returns how long it took to exit, its
/// status and its stderr (killing it after 10 s).
async fn terminate(server: std::process::Child) -> (Duration, std::process::Output) {
    let pid = server.id().to_string();
    let signalled = tokio::time::Instant::now();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let exited = tokio::task::spawn_blocking(move || server.wait_with_output());
    match tokio::time::timeout(Duration::from_secs(10), exited).await {
        Ok(output) => (signalled.elapsed(), output.unwrap().unwrap()),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
            panic!("the server did not exit within 10 s of SIGTERM");
        }
    }
}

fn assert_stopped_during_start_up(took: Duration, output: &std::process::Output) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{:?}: {stderr}", output.status);
    assert!(
        took < Duration::from_secs(2),
        "exited {took:?} after SIGTERM"
    );
    assert!(stderr.contains("stopped during start-up"), "{stderr}");
}

#[tokio::test]
async fn sigterm_while_serve_waits_for_the_database_stops_it_at_once() {
    // A "database" that accepts the connection and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "postgres://connections@{}/connections",
        silent.local_addr().unwrap()
    );
    let server = spawn_serve(&url);
    let (_held, _) = tokio::time::timeout(Duration::from_secs(10), silent.accept())
        .await
        .expect("the server connects to its database")
        .unwrap();
    let (took, output) = terminate(server).await;
    assert_stopped_during_start_up(took, &output);
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set TEST_DATABASE_URL and pass --include-ignored"]
async fn sigterm_while_serve_waits_for_the_migration_lock_stops_it_at_once() {
    use sea_orm::{ConnectionTrait, Database};
    crate::support::require_postgres();
    let (_database, url) = crate::support::TestDatabase::create(false).await;
    // Another replica migrating: it holds the lock.
    let replica = Database::connect(&url).await.unwrap();
    replica
        .execute_unprepared(&format!(
            "SELECT pg_advisory_lock({})",
            connections::db::MIGRATION_LOCK
        ))
        .await
        .unwrap();
    let port = free_port();
    let server = spawn_serve_on(&url, port);
    let waiting = "SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND NOT granted";
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let row = replica
                .query_one_raw(sea_orm::Statement::from_string(
                    replica.get_database_backend(),
                    waiting,
                ))
                .await
                .unwrap()
                .unwrap();
            if row.try_get::<i64>("", "n").unwrap() > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the server waits for the migration lock");
    // Its port is taken but not listened on yet: a client (or a TCP probe)
    // is refused at once rather than left waiting on a server that cannot
    // answer.
    let refused = tokio::net::TcpStream::connect(("127.0.0.1", port)).await;
    assert_eq!(
        refused.map(|_| ()).map_err(|err| err.kind()),
        Err(std::io::ErrorKind::ConnectionRefused),
        "a server still migrating accepts connections"
    );
    let (took, output) = terminate(server).await;
    assert_stopped_during_start_up(took, &output);
    replica.close().await.unwrap();
}

/// The tables of the SQLite database at `path`.
async fn tables(url: &str) -> Vec<String> {
    use sea_orm::{ConnectionTrait, Database, Statement};
    let db = Database::connect(url).await.unwrap();
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name",
        ))
        .await
        .unwrap();
    db.close().await.unwrap();
    rows.iter()
        .map(|row| row.try_get::<String>("", "name").unwrap())
        .collect()
}

fn remove_database(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm", ".webhook-key"] {
        let mut file = path.to_path_buf().into_os_string();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
}

/// What `connections migrate` on `url` did.
fn migrate(url: &str) -> std::process::Output {
    Command::new(BIN)
        .arg("migrate")
        .env("CONNECTIONS_DATABASE_URL", url)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

/// `serve --no-migrate` (or `CONNECTIONS_MIGRATE=false`) is for deployments
/// that run `connections migrate` as a step of their own: on a database that
/// still needs it, the server does not start, says what to run, exits with
/// code 3 and leaves the database as it was. Once migrated, it serves.
#[tokio::test]
async fn serve_without_migrating_refuses_a_database_that_needs_migrate_with_exit_code_3() {
    let (url, path) = database_url();
    for from_env in [false, true] {
        let mut command = serve_command(&url);
        match from_env {
            false => command.arg("--no-migrate"),
            true => command.env("CONNECTIONS_MIGRATE", "false"),
        };
        let output = exits_within_10_seconds(command);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(3), "{stderr}");
        assert!(stderr.contains("run `connections migrate`"), "{stderr}");
        assert!(
            stderr.contains("m20261128_000001_create_organizations"),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        let tables = tables(&url).await;
        assert!(tables.is_empty(), "serve --no-migrate made {tables:?}");
    }

    let output = migrate(&url);
    assert!(output.status.success(), "{output:?}");
    for (args, env) in [
        (&["--no-migrate"][..], &[][..]),
        (&[][..], &[("CONNECTIONS_MIGRATE", "false")][..]),
    ] {
        let server = crate::support::process::Server::start_with(&url, args, env).await;
        let org = crate::support::process::new_org(&url, "After migrate");
        server
            .client(&org)
            .get_connection(connections::proto::GetConnectionRequest {
                connection_id: crate::support::unknown_id(),
            })
            .await
            .expect_err("no such connection");
        server.signal("-TERM");
        assert!(server.wait().await.success());
    }
    remove_database(&path);
}

/// A database a later release has migrated (a migration this release does
/// not know) is served, with or without `--no-migrate`, and the log names
/// the migration; `connections migrate` succeeds on it too.
#[tokio::test]
async fn serve_on_a_schema_newer_than_the_release_serves_and_logs_the_unknown_migrations() {
    let (url, path) = database_url();
    let db = connections::db::connect(&connections::config::DatabaseSettings::new(&url))
        .await
        .unwrap();
    connections::db::migrate(&db).await.unwrap();
    let later = crate::migrations::apply_a_later_release_s_migration(&db).await;
    db.close().await.unwrap();

    for args in [&[][..], &["--no-migrate"][..]] {
        let server = crate::support::process::Server::start_with(&url, args, &[]).await;
        let org = crate::support::process::new_org(&url, "On a newer schema");
        let own = OrganizationServiceClient::with_interceptor(
            server.channel.clone(),
            Bearer::new(&org.key),
        )
        .get_organization(GetOrganizationRequest::default())
        .await
        .expect("serves")
        .into_inner();
        assert_eq!(own.organization.unwrap().id, org.id);
        let log = server.log();
        assert!(
            log.lines().any(|line| line.contains("WARN")
                && line.contains("newer")
                && line.contains(later)),
            "{args:?}: {log}"
        );
        server.signal("-TERM");
        assert!(server.wait().await.success());
    }

    let output = migrate(&url);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains(later), "{stderr}");
    remove_database(&path);
}
