//! The database ceiling: `pgbench` running the statements the service runs,
//! as prepared statements (as the service's driver does), at the same
//! concurrency as the load generator.

use std::{path::Path, time::Duration};

use anyhow::{Context, bail};
use tokio::process::Command;

/// What a pgbench run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Run {
    /// Transactions per second, excluding connection setup.
    pub tps: f64,
    /// Mean transaction latency, in milliseconds.
    pub latency_ms: f64,
    /// Failed transactions.
    pub failed: u64,
    /// Transactions completed.
    pub transactions: u64,
}

/// Runs `script`, with `defines` as its variables, on `clients` connections
/// for `duration` against `url`.
pub async fn run(
    url: &str,
    script: &Path,
    defines: &[(String, String)],
    clients: usize,
    duration: Duration,
) -> anyhow::Result<Run> {
    let mut command = Command::new("pgbench");
    for (name, value) in defines {
        command.arg(format!("--define={name}={value}"));
    }
    let output = command
        .args(["--no-vacuum", "--protocol=prepared"])
        .arg(format!("--client={clients}"))
        .arg(format!("--jobs={}", clients.clamp(1, 2)))
        .arg(format!("--time={}", duration.as_secs().max(1)))
        .arg("--file")
        .arg(script)
        .arg(url)
        .output()
        .await
        .context("running pgbench (Debian package postgresql-client)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "pgbench failed ({}): {}{}",
            output.status,
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse(&stdout)
}

/// Reads tps, mean latency and failures from pgbench's report.
fn parse(report: &str) -> anyhow::Result<Run> {
    let number_after = |label: &str| -> Option<f64> {
        report
            .lines()
            .find_map(|line| line.trim().strip_prefix(label))
            .and_then(|rest| rest.split_whitespace().next())
            // "100000/100000" when pgbench runs a fixed number of transactions.
            .and_then(|n| n.split('/').next())
            .and_then(|n| n.parse().ok())
    };
    let tps = number_after("tps = ").context("no tps in pgbench's report")?;
    let latency_ms =
        number_after("latency average = ").context("no latency in pgbench's report")?;
    let failed = number_after("number of failed transactions: ").unwrap_or(0.0) as u64;
    let transactions = number_after("number of transactions actually processed: ")
        .context("no transaction count in pgbench's report")? as u64;
    Ok(Run {
        tps,
        latency_ms,
        failed,
        transactions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pgbench_15_report() {
        let report = "\
transaction type: get.sql
scaling factor: 1
query mode: prepared
number of clients: 32
number of threads: 2
maximum number of tries: 1
duration: 5 s
number of transactions actually processed: 100000
number of failed transactions: 3 (0.003%)
latency average = 1.600 ms
initial connection time = 35.811 ms
tps = 20000.123456 (without initial connection time)
";
        assert_eq!(
            parse(report).unwrap(),
            Run {
                tps: 20000.123456,
                latency_ms: 1.6,
                failed: 3,
                transactions: 100000,
            }
        );
        assert!(parse("nothing").is_err());
    }
}
