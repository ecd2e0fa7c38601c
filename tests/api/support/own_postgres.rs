//! A PostgreSQL server of the test's own: a new cluster (initdb) on a free
//! port, with the settings the test needs, stopped and removed when dropped.
//! For what the shared server may not allow (prepared transactions) and for
//! what only a new cluster has (a transaction counter that starts low).

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use uuid::Uuid;

/// A running cluster of the test's own.
pub struct OwnPostgres {
    bin: PathBuf,
    dir: PathBuf,
    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub url: String,
}

impl OwnPostgres {
    /// Starts a new cluster with `settings` (`name=value` server options),
    /// or says why it cannot: no PostgreSQL server binaries here, or they
    /// would not run.
    pub fn start(settings: &[&str]) -> Result<Self, String> {
        let bin = bin_dir()?;
        let dir = std::env::temp_dir().join(format!("connections-pg-{}", Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).map_err(|err| format!("{}: {err}", dir.display()))?;
        // PostgreSQL will not run as root: run it as the `postgres` user then.
        let as_root = run_output(Command::new("id").arg("-u"))?.trim() == "0";
        if as_root {
            run(Command::new("chown").args(["postgres:", &dir.display().to_string()]))?;
        }
        let tool = |name: &str| {
            let mut command = if as_root {
                let mut command = Command::new("runuser");
                command.args(["-u", "postgres", "--"]).arg(bin.join(name));
                command
            } else {
                Command::new(bin.join(name))
            };
            command.stdout(Stdio::null()).stderr(Stdio::piped());
            command
        };
        let data = dir.join("data");
        run(tool("initdb")
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data))?;
        let port = free_port()?;
        let mut options = format!(
            "-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} \
             -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            dir.display()
        );
        for setting in settings {
            options.push_str(&format!(" -c {setting}"));
        }
        let started = Self {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            dir: dir.clone(),
            bin: bin.clone(),
        };
        run(tool("pg_ctl")
            .args(["-w", "-t", "30", "-o", &options, "-l"])
            .arg(dir.join("log"))
            .arg("-D")
            .arg(&data)
            .arg("start"))?;
        Ok(started)
    }

    /// Runs a client program of the same version (`pg_dump`, `pg_restore`,
    /// ...) with `args`; returns its standard output.
    pub fn client(&self, name: &str, args: &[&str]) -> Result<String, String> {
        run_output(Command::new(self.bin.join(name)).args(args))
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let as_root = run_output(Command::new("id").arg("-u")).is_ok_and(|id| id.trim() == "0");
        let mut stop = if as_root {
            let mut command = Command::new("runuser");
            command
                .args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"));
            command
        } else {
            Command::new(self.bin.join("pg_ctl"))
        };
        let _ = stop
            .args(["-m", "immediate", "-D"])
            .arg(&data)
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where the server binaries are: `pg_config --bindir`.
fn bin_dir() -> Result<PathBuf, String> {
    let dir = PathBuf::from(run_output(Command::new("pg_config").arg("--bindir"))?.trim());
    for tool in ["initdb", "pg_ctl", "postgres"] {
        if !Path::new(&dir).join(tool).exists() {
            return Err(format!("no {tool} in {}", dir.display()));
        }
    }
    Ok(dir)
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|err| err.to_string())?;
    Ok(listener.local_addr().map_err(|err| err.to_string())?.port())
}

fn run(command: &mut Command) -> Result<(), String> {
    run_output(command).map(drop)
}

fn run_output(command: &mut Command) -> Result<String, String> {
    let output = command
        .output()
        .map_err(|err| format!("{command:?}: {err}"))?;
    if !output.status.success() {
        return Err(format!(
            "{command:?}: {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
