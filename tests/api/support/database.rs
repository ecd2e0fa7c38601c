//! A database of its own for each test: a SQLite file, or a database on the
//! PostgreSQL server `TEST_DATABASE_URL` names, removed after the test.

use std::{net::SocketAddr, path::PathBuf};

use sea_orm::{ConnectionTrait, Database};
use url::Url;
use uuid::Uuid;

/// A database made for one test and removed after it.
pub enum TestDatabase {
    Sqlite(PathBuf),
    Postgres { admin_url: String, name: String },
}

/// The PostgreSQL server to test against, if `TEST_DATABASE_URL` names one.
pub fn postgres_url() -> Option<String> {
    std::env::var("TEST_DATABASE_URL")
        .ok()
        .filter(|url| !url.is_empty())
}

impl TestDatabase {
    /// A fresh database: PostgreSQL when `TEST_DATABASE_URL` is set (unless
    /// `sqlite` is asked for), else a SQLite file.
    pub async fn create(sqlite: bool) -> (Self, String) {
        match postgres_url().filter(|_| !sqlite) {
            Some(admin_url) => Self::create_on(&admin_url).await,
            None => {
                let path =
                    std::env::temp_dir().join(format!("connections-test-{}.db", Uuid::now_v7()));
                let url = format!("sqlite://{}?mode=rwc", path.display());
                (Self::Sqlite(path), url)
            }
        }
    }
}

impl TestDatabase {
    /// A fresh database on the PostgreSQL server whose `admin_url` is given.
    pub async fn create_on(admin_url: &str) -> (Self, String) {
        let name = format!("connections_test_{}", Uuid::now_v7().simple());
        let admin = Database::connect(admin_url)
            .await
            .expect("the PostgreSQL server is reachable");
        admin
            .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("create test database");
        admin.close().await.ok();
        let url = with_database_name(admin_url, &name);
        let admin_url = admin_url.to_owned();
        (Self::Postgres { admin_url, name }, url)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        match self {
            Self::Sqlite(path) => {
                for suffix in ["", "-wal", "-shm", ".webhook-key"] {
                    let mut file = path.clone().into_os_string();
                    file.push(suffix);
                    let _ = std::fs::remove_file(file);
                }
            }
            Self::Postgres { admin_url, name } => {
                let (admin_url, name) = (admin_url.clone(), name.clone());
                // Drop runs inside the test's runtime: use a thread with its own.
                let _ = std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime");
                    runtime.block_on(async {
                        if let Ok(admin) = Database::connect(&admin_url).await {
                            let _ = admin
                                .execute_unprepared(&format!(
                                    "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                                ))
                                .await;
                            let _ = admin.close().await;
                        }
                    });
                })
                .join();
            }
        }
    }
}

/// The `TEST_DATABASE_URL` server, for a PostgreSQL-only test (marked
/// `#[ignore = ...]`, run with `--include-ignored` on the PostgreSQL pass):
/// its URL and address. Panics, failing the test, when there is none to use.
#[track_caller]
pub fn require_postgres() -> (String, SocketAddr) {
    let url = postgres_url().expect("this test needs PostgreSQL: set TEST_DATABASE_URL");
    let address = postgres_address(&url)
        .unwrap_or_else(|err| panic!("cannot resolve the host of TEST_DATABASE_URL: {err}"));
    (url, address)
}

/// The host and port of the PostgreSQL server `url` names (the driver's
/// defaults fill in what the URL leaves out).
pub fn postgres_address(url: &str) -> Result<SocketAddr, String> {
    use sea_orm::sqlx::postgres::PgConnectOptions;
    use std::{net::ToSocketAddrs, str::FromStr};
    let options = PgConnectOptions::from_str(url).map_err(|err| err.to_string())?;
    (options.get_host(), options.get_port())
        .to_socket_addrs()
        .map_err(|err| err.to_string())?
        .next()
        .ok_or_else(|| format!("{} has no address", options.get_host()))
}

fn parse(url: &str) -> Url {
    Url::parse(url).unwrap_or_else(|err| panic!("not a database URL ({err}): {url}"))
}

/// `url` with its host and port replaced by `address`.
pub fn with_address(url: &str, address: SocketAddr) -> String {
    let mut url = parse(url);
    url.set_ip_host(address.ip())
        .and_then(|()| url.set_port(Some(address.port())))
        .unwrap_or_else(|()| panic!("{url} has no host to replace"));
    url.into()
}

/// `url` naming the database `name` on the same server.
pub fn with_database_name(url: &str, name: &str) -> String {
    let mut url = parse(url);
    url.set_path(name);
    url.into()
}

#[test]
fn database_name_and_address_are_replaced_in_urls() {
    assert_eq!(
        with_database_name("postgres://u@h:5432/postgres", "x"),
        "postgres://u@h:5432/x"
    );
    assert_eq!(
        with_database_name("postgres://u@h/postgres?sslmode=disable", "x"),
        "postgres://u@h/x?sslmode=disable"
    );
    assert_eq!(
        with_database_name("postgres://u@h", "x"),
        "postgres://u@h/x"
    );
    assert_eq!(
        with_database_name("postgres://u:p%40ss@h/postgres#", "x"),
        "postgres://u:p%40ss@h/x#"
    );
    assert_eq!(
        with_address("postgres://u@h:5432/db?x=y", "127.0.0.1:7".parse().unwrap()),
        "postgres://u@127.0.0.1:7/db?x=y"
    );
    assert_eq!(
        with_address("postgres://h/db", "127.0.0.1:7".parse().unwrap()),
        "postgres://127.0.0.1:7/db"
    );
    assert_eq!(
        with_address("postgres://u@h/db", "[::1]:7".parse().unwrap()),
        "postgres://u@[::1]:7/db"
    );
}
