//! Server processes under test: started, waited for, measured and stopped.

use std::{
    net::{SocketAddr, TcpListener},
    path::Path,
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// A free port on the loopback interface.
pub fn free_address() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// A memory field of `/proc/<pid>/status` ("VmRSS", "VmHWM"), in MiB
/// (Linux only).
pub fn status_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// File descriptors a process has open.
#[derive(Debug, Clone, Copy)]
pub struct OpenFds {
    /// All of them.
    pub total: usize,
    /// Those that are sockets.
    pub sockets: usize,
}

/// The file descriptors process `pid` has open (Linux only).
pub fn open_fds(pid: u32) -> Option<OpenFds> {
    let mut fds = OpenFds {
        total: 0,
        sockets: 0,
    };
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()? {
        let Ok(entry) = entry else { continue };
        fds.total += 1;
        if std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
        {
            fds.sockets += 1;
        }
    }
    Some(fds)
}

/// A running server process.
pub struct Server {
    /// Where it listens.
    pub address: SocketAddr,
    child: Child,
    name: String,
}

impl Server {
    /// Starts `command`, which must listen on `address`, writing its output to
    /// `log`, and waits until the port accepts connections.
    pub async fn start(
        name: &str,
        mut command: Command,
        address: SocketAddr,
        log: &Path,
    ) -> anyhow::Result<Self> {
        let out = std::fs::File::create(log).with_context(|| format!("creating {log:?}"))?;
        let err = out.try_clone()?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let mut server = Self {
            address,
            child,
            name: name.to_owned(),
        };
        for _ in 0..600 {
            if let Some(status) = server.child.try_wait()? {
                bail!("{name} exited during startup ({status}); see {log:?}");
            }
            if tokio::net::TcpStream::connect(address).await.is_ok() {
                return Ok(server);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("{name} did not listen on {address} within 30 s; see {log:?}")
    }

    /// Waits until the server's health service reports SERVING for the whole
    /// server, which it does once its CheckAccess index is built (until
    /// then checks read the database): nothing should be measured before.
    /// Fails if it has not within `timeout`, or if the server goes away.
    pub async fn serving(&self, timeout: Duration) -> anyhow::Result<()> {
        let name = &self.name;
        let deadline = tokio::time::Instant::now() + timeout;
        let channel = tonic::transport::Endpoint::from_shared(self.url())?
            .connect()
            .await
            .with_context(|| format!("connecting to {name}'s health service"))?;
        // The stream sends the status at once, then every change of it.
        let mut statuses = HealthClient::new(channel)
            .watch(HealthCheckRequest::default())
            .await
            .with_context(|| format!("watching {name}'s health"))?
            .into_inner();
        loop {
            match tokio::time::timeout_at(deadline, statuses.message()).await {
                Err(_) => bail!("{name} did not report SERVING within {timeout:?}"),
                Ok(Ok(Some(reply))) if reply.status == ServingStatus::Serving as i32 => {
                    return Ok(());
                }
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None)) => bail!("{name}'s health stream ended before SERVING"),
                Ok(Err(status)) => bail!("{name}'s health stream failed before SERVING: {status}"),
            }
        }
    }

    /// The process ID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// `http://address`, for clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Peak resident memory of the process so far, in MiB (Linux only).
    pub fn peak_rss_mib(&self) -> Option<f64> {
        status_mib(self.child.id()?, "VmHWM")
    }

    /// Asks the process to stop (SIGTERM) and waits for it; kills it if it
    /// has not stopped within 10 s.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .await;
        }
        match tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                if !status.success() {
                    eprintln!("note: {} exited with {status}", self.name);
                }
            }
            Err(_) => {
                eprintln!("note: {} did not stop on SIGTERM; killing it", self.name);
                self.child.kill().await?;
            }
        }
        Ok(())
    }
}
