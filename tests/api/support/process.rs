//! The real binary in processes of its own: `connections serve` and
//! `connections admin`, on a database the test made.

use std::{
    net::TcpListener,
    process::{Child, Command},
    time::Duration,
};

use connections::proto::{ConnectionEvent, ListConnectionEventsRequest};
use serde_json::Value;
use tonic::transport::Channel;

use super::clients::{Connections, TestOrg, connections_on};

/// The `connections` binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_connections");

/// Runs `connections admin ARGS` on the database at `url`; it must succeed.
/// Returns the JSON it printed.
pub fn admin(url: &str, args: &[&str]) -> Value {
    let lines = admin_lines(url, args);
    assert_eq!(lines.len(), 1, "{lines:?}");
    lines.into_iter().next().unwrap()
}

/// Runs `connections admin ARGS` on the database at `url`; it must succeed.
/// Returns each line it printed, as JSON.
pub fn admin_lines(url: &str, args: &[&str]) -> Vec<Value> {
    let output = Command::new(BIN)
        .args(["admin"])
        .args(args)
        .env("CONNECTIONS_DATABASE_URL", url)
        .env_remove("RUST_LOG")
        .output()
        .expect("run connections admin");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("UTF-8")
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

/// A new organization with one API key, made with `connections admin`.
pub fn new_org(url: &str, name: &str) -> TestOrg {
    let org = admin(url, &["create-org", "--name", name]);
    let id = org["id"].as_str().unwrap().to_owned();
    let key = admin(url, &["create-key", "--org", &id]);
    TestOrg {
        id,
        key: key["secret"].as_str().unwrap().to_owned(),
        key_id: key["id"].as_str().unwrap().to_owned(),
    }
}

/// A `connections serve` process and a channel to it. Dropped before it was
/// waited for (a failed test), the process is killed.
pub struct Server {
    child: Option<Child>,
    /// A channel to the server.
    pub channel: Channel,
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// Where its standard error (its log) goes.
    log: LogFile,
}

impl Server {
    /// Starts `connections serve` on a free port, on the database at `url`.
    pub async fn start(url: &str) -> Self {
        Self::start_with(url, &[], &[]).await
    }

    /// [`Server::start`], with more options and environment variables.
    pub async fn start_with(url: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_binary(BIN, url, args, env).await
    }

    /// [`Server::start_with`], running the binary at `bin` (e.g. a previous
    /// release's).
    pub async fn start_binary(bin: &str, url: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = LogFile::new();
        #[allow(clippy::zombie_processes)] // waited for in `wait` or on drop
        let mut child = Command::new(bin)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .envs(env.iter().copied())
            .env("CONNECTIONS_DATABASE_URL", url)
            .env_remove("RUST_LOG")
            // Its standard output (the access log, when on) and standard
            // error (its log) both go to the log file.
            .stdout(log.file())
            .stderr(log.file())
            .spawn()
            .unwrap_or_else(|err| panic!("start {bin}: {err}"));
        for _ in 0..400 {
            if let Ok(channel) = Channel::from_shared(format!("http://127.0.0.1:{port}"))
                .unwrap()
                .connect()
                .await
            {
                return Self {
                    child: Some(child),
                    channel,
                    addr: ([127, 0, 0, 1], port).into(),
                    log,
                };
            }
            if let Some(status) = child.try_wait().expect("poll the server") {
                panic!("the server exited at start: {status}\n{}", log.read());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("server did not start\n{}", log.read());
    }

    /// What the server has logged so far.
    pub fn log(&self) -> String {
        self.log.read()
    }

    /// A client calling as `org`.
    pub fn client(&self, org: &TestOrg) -> Connections {
        connections_on(&self.channel, org)
    }

    /// A connection's whole history, through every page, as `org`.
    pub async fn events(&self, org: &TestOrg, id: &str) -> Vec<ConnectionEvent> {
        let mut events = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self
                .client(org)
                .list_connection_events(ListConnectionEventsRequest {
                    connection_id: id.to_owned(),
                    page_size: 100,
                    page_token,
                })
                .await
                .expect("list events")
                .into_inner();
            events.extend(page.events);
            if page.next_page_token.is_empty() {
                return events;
            }
            page_token = page.next_page_token;
        }
    }

    /// Sends `signal` (e.g. `-TERM`) to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Waits for the process to exit; fails (killing it) after 30 s.
    pub async fn wait(mut self) -> std::process::ExitStatus {
        let pid = self.pid();
        let mut child = self.child.take().expect("running");
        let exited = tokio::task::spawn_blocking(move || child.wait().unwrap());
        match tokio::time::timeout(Duration::from_secs(30), exited).await {
            Ok(status) => status.unwrap(),
            Err(_) => {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
                panic!("the server did not exit within 30 s");
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A server's log: a file in the temporary directory, removed on drop.
struct LogFile(std::path::PathBuf);

impl LogFile {
    fn new() -> Self {
        Self(std::env::temp_dir().join(format!("connections-serve-{}.log", uuid::Uuid::now_v7())))
    }

    /// The file, opened to append: several handles write without
    /// overwriting each other.
    fn file(&self) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.0)
            .expect("a log file")
    }

    /// The text logged so far.
    fn read(&self) -> String {
        std::fs::read(&self.0)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for LogFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
