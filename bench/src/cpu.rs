//! Where a line's CPU time went: the load generator (this process), the
//! server, PostgreSQL and pgbench, read from `/proc` (Linux) before and after
//! the line. Divided by the calls made, it shows what each call costs each
//! party, so two lines can be compared by more than their throughput.

use std::{collections::BTreeMap, time::Instant};

/// Clock ticks per second of `/proc/*/stat` times (`getconf CLK_TCK`; 100 on
/// every Linux this runs on).
const TICKS_PER_SECOND: f64 = 100.0;

/// Cumulative CPU seconds per party at one moment.
#[derive(Debug, Clone)]
pub struct Sample {
    seconds: BTreeMap<&'static str, f64>,
    at: Instant,
}

/// Times from `/proc/<pid>/stat`: (command, own user+system, reaped children's user+system).
fn stat(pid: &str) -> Option<(String, f64, f64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let command = text[open + 1..close].to_owned();
    // Fields after the command: state is field 3, utime 14, stime 15,
    // cutime 16, cstime 17.
    let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<f64>().ok();
    let own = field(14)? + field(15)?;
    let children = field(16)? + field(17)?;
    Some((command, own / TICKS_PER_SECOND, children / TICKS_PER_SECOND))
}

/// CPU seconds so far of this process, the server `server_pid`, every
/// PostgreSQL process (with the exited backends its postmaster reaped) and
/// this process's exited children (pgbench).
pub fn sample(server_pid: Option<u32>) -> Sample {
    let me = std::process::id().to_string();
    let server = server_pid.map(|pid| pid.to_string());
    let mut seconds = BTreeMap::new();
    let entries = std::fs::read_dir("/proc").into_iter().flatten().flatten();
    for entry in entries {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Some((command, own, children)) = stat(pid) else {
            continue;
        };
        if pid == me {
            *seconds.entry("load generator").or_default() += own;
            *seconds.entry("pgbench").or_default() += children;
        } else if server.as_deref() == Some(pid) {
            *seconds.entry("server").or_default() += own;
        } else if command == "postgres" {
            *seconds.entry("postgres").or_default() += own + children;
        }
    }
    Sample {
        seconds,
        at: Instant::now(),
    }
}

/// CPU microseconds per call of each party between `before` and `after`,
/// for `calls` calls.
pub fn per_call(before: &Sample, after: &Sample, calls: f64) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    if calls <= 0.0 {
        return out;
    }
    for (party, end) in &after.seconds {
        let start = before.seconds.get(party).copied().unwrap_or(0.0);
        let used = (end - start).max(0.0);
        if used > 0.0 {
            out.insert((*party).to_owned(), used / calls * 1e6);
        }
    }
    out
}

/// Seconds between two samples.
pub fn elapsed(before: &Sample, after: &Sample) -> f64 {
    (after.at - before.at).as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_the_load_generator_and_its_time_grows() {
        let before = sample(None);
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed().as_millis() < 100 {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        let after = sample(None);
        let used = per_call(&before, &after, 1.0);
        assert!(x > 0);
        assert!(
            used.get("load generator").copied().unwrap_or(0.0) >= 50_000.0,
            "{used:?}"
        );
        assert!(elapsed(&before, &after) >= 0.1);
    }
}
