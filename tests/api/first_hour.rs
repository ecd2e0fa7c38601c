//! What a newcomer meets first: README's quick start run as written, and
//! the errors of the command line and of start-up, each saying what is wrong
//! and where.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use connections::proto::{
    GetOrganizationRequest, organization_service_client::OrganizationServiceClient,
};
use serde_json::Value;
use tonic::transport::Channel;

use crate::{cli::free_port, support::Bearer};

const BIN: &str = env!("CARGO_BIN_EXE_connections");

/// A directory of its own, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("connections-first-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn sqlite_url(&self, file: &str) -> String {
        format!("sqlite://{}?mode=rwc", self.0.join(file).display())
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the binary with `args` in `dir`, without the environment's database URL.
fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("CONNECTIONS_DATABASE_URL")
        .env_remove("RUST_LOG")
        .output()
        .expect("run connections")
}

/// Waits for a server on `port` to accept a gRPC channel.
async fn channel(port: u16, server: &mut std::process::Child) -> Channel {
    for _ in 0..200 {
        if let Ok(channel) = Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await
        {
            return channel;
        }
        if let Some(status) = server.try_wait().unwrap() {
            panic!("the server exited: {status}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the server did not start");
}

/// The commands of README's quick start (its first `sh` block), in order.
fn quick_start_commands() -> Vec<String> {
    let readme = include_str!("../../README.md");
    let section = &readme[readme
        .find("## Quick start")
        .expect("a Quick start section")..];
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a sh block");
    block
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// README's quick start, as written (with the binary cargo built for the
/// tests in place of `cargo run --release --`, and a free port): the
/// quickstart's keys sign in to the page the server serves. In Chromium:
/// dashboard/test/dashboard.test.ts, "signs in with a key that README's
/// quick start printed, on the database it made".
#[tokio::test]
async fn the_readme_quick_start_ends_in_a_dashboard_its_keys_sign_in_to() {
    let commands = quick_start_commands();
    assert_eq!(
        commands,
        [
            "cargo run --release -- admin quickstart",
            "cargo run --release -- serve",
            "cargo test",
        ],
        "README's quick start changed: update this test with it"
    );
    let dir = Dir::new();
    let args = |command: &str| -> Vec<String> {
        command
            .strip_prefix("cargo run --release -- ")
            .expect("a command of the binary")
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };

    let quickstart = args(&commands[0]);
    let output = run(
        &dir.0,
        &quickstart.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(output.status.success(), "{output:?}");
    let organizations: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let names: Vec<&str> = organizations
        .iter()
        .map(|o| o["display_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Acme Bank", "Orbit Credit Union"]);
    assert!(
        dir.0.join("connections.db").exists(),
        "the embedded default"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("http://127.0.0.1:50051/"), "{stderr}");

    // Run again, it refuses: the database has organizations.
    let again = run(
        &dir.0,
        &quickstart.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("already has organizations"), "{stderr}");

    let port = free_port();
    let log = dir.0.join("serve.log");
    let mut server = Command::new(BIN)
        .args(args(&commands[1]))
        .current_dir(&dir.0)
        .env_remove("CONNECTIONS_DATABASE_URL")
        .env_remove("RUST_LOG")
        .env("CONNECTIONS_LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let channel = channel(port, &mut server).await;
    // Each printed key signs in: the page's first call is GetOrganization.
    for organization in &organizations {
        let secret = organization["api_key_secret"].as_str().unwrap();
        let found =
            OrganizationServiceClient::with_interceptor(channel.clone(), Bearer::new(secret))
                .get_organization(GetOrganizationRequest::default())
                .await
                .expect("the key signs in")
                .into_inner()
                .organization
                .unwrap();
        assert_eq!(found.id, organization["id"].as_str().unwrap());
    }
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let page = client
        .get(format!("http://127.0.0.1:{port}/").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    // The log names the address to open.
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains(&format!("http://127.0.0.1:{port}/")),
        "{logged}"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status();
    assert!(server.wait().unwrap().success());
}

#[test]
fn admin_commands_take_the_database_url_after_the_subcommand_and_list_keys() {
    let dir = Dir::new();
    let url = dir.sqlite_url("after.db");
    let output = run(
        &dir.0,
        &[
            "admin",
            "create-org",
            "--name",
            "Acme Bank",
            "--database-url",
            &url,
        ],
    );
    assert!(output.status.success(), "{output:?}");
    let org: Value = serde_json::from_slice(&output.stdout).unwrap();
    let org_id = org["id"].as_str().unwrap();
    for name in ["ci", "dashboard"] {
        let output = run(
            &dir.0,
            &[
                "admin",
                "create-key",
                "--org",
                org_id,
                "--name",
                name,
                "--database-url",
                &url,
            ],
        );
        assert!(output.status.success(), "{output:?}");
    }
    let output = run(
        &dir.0,
        &[
            "admin",
            "list-keys",
            "--org",
            org_id,
            "--database-url",
            &url,
        ],
    );
    assert!(output.status.success(), "{output:?}");
    let keys: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let names: Vec<&str> = keys
        .iter()
        .map(|k| k["display_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ci", "dashboard"]);
    assert!(keys.iter().all(|k| k.get("secret").is_none()), "no secrets");
    assert!(!dir.0.join("connections.db").exists(), "the URL was used");
}

#[test]
fn a_read_only_admin_command_creates_no_database_and_names_the_file_it_looked_for() {
    let dir = Dir::new();
    for args in [
        vec!["admin", "list-orgs"],
        vec![
            "admin",
            "list-keys",
            "--org",
            "01a250d1-b989-76f3-80b9-8b44d6fa553b",
        ],
        vec!["admin", "audit"],
    ] {
        let output = run(&dir.0, &args);
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("there is no database at") && stderr.contains("connections.db"),
            "{args:?}: {stderr}"
        );
        // Said once.
        assert_eq!(
            stderr.matches("there is no database").count(),
            1,
            "{stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            !dir.0.join("connections.db").exists(),
            "{args:?} created it"
        );
    }
}

#[tokio::test]
async fn a_read_only_admin_command_never_migrates_and_names_connections_migrate() {
    use sea_orm::{ConnectionTrait, Database, Statement};
    let dir = Dir::new();
    // A database file with no schema yet.
    std::fs::File::create(dir.0.join("empty.db")).unwrap();
    let url = dir.sqlite_url("empty.db");
    let output = run(&dir.0, &["admin", "list-orgs", "--database-url", &url]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("run `connections migrate`"), "{stderr}");
    let db = Database::connect(&url).await.unwrap();
    let tables = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT name FROM sqlite_master WHERE type = 'table'",
        ))
        .await
        .unwrap();
    assert!(tables.is_empty(), "list-orgs migrated the database");
    db.close().await.unwrap();
}

#[test]
fn serve_names_the_database_it_cannot_reach_and_why() {
    let dir = Dir::new();
    let closed = free_port();
    // A path SQLite cannot open as a file: the OS says why.
    std::fs::create_dir(dir.0.join("a-directory")).unwrap();
    let cases = [
        (
            format!("postgres://postgres@127.0.0.1:{closed}/postgres"),
            format!("cannot connect to PostgreSQL at 127.0.0.1:{closed}: connection refused"),
        ),
        (
            dir.sqlite_url("missing-directory/data.db"),
            format!(
                "cannot open the SQLite database {}: its directory {} does not exist",
                dir.0.join("missing-directory/data.db").display(),
                dir.0.join("missing-directory").display()
            ),
        ),
        (
            dir.sqlite_url("a-directory"),
            format!(
                "cannot open the SQLite database {}: Is a directory",
                dir.0.join("a-directory").display()
            ),
        ),
    ];
    for (url, expected) in cases {
        let output = run(
            &dir.0,
            &["serve", "--listen", "127.0.0.1:0", "--database-url", &url],
        );
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(&expected), "{stderr}");
        assert!(!stderr.contains("Custom Error"), "{stderr}");
        assert!(!stderr.contains("pool timed out"), "{stderr}");
    }
}

#[test]
fn serve_that_cannot_bind_its_port_fails_before_it_creates_a_database() {
    let dir = Dir::new();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let url = dir.sqlite_url("never.db");
    let output = run(
        &dir.0,
        &["serve", "--listen", &addr, "--database-url", &url],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
    assert!(!dir.0.join("never.db").exists(), "a database was created");
}

#[tokio::test]
async fn serve_listens_on_a_host_name_and_suggests_listen_for_port() {
    let dir = Dir::new();
    let output = run(&dir.0, &["serve", "--port", "50051"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("there is no --port option"), "{stderr}");
    assert!(stderr.contains("--listen 127.0.0.1:50051"), "{stderr}");

    let output = run(&dir.0, &["serve", "--listen", "50051"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("has no port"));

    let port = free_port();
    let mut server = Command::new(BIN)
        .args(["serve", "--listen", &format!("localhost:{port}")])
        .args(["--database-url", &dir.sqlite_url("host.db")])
        .current_dir(&dir.0)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let served = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            // localhost may be 127.0.0.1 or ::1.
            for host in ["127.0.0.1", "[::1]"] {
                if let Ok(channel) = Channel::from_shared(format!("http://{host}:{port}"))
                    .unwrap()
                    .connect()
                    .await
                {
                    return channel;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let _ = server.kill();
    let _ = server.wait();
    served.expect("a server on localhost");
}
