//! Server processes under test: started, waited for, measured and stopped.

use std::{
    net::{SocketAddr, TcpListener},
    path::Path,
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

/// A free port on the loopback interface.
pub fn free_address() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
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
        let pid = self.child.id()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib: f64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib / 1024.0)
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
