//! The results: a table on standard output, the same as JSON, and the ratios
//! that matter (ours / baseline), each with its target.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{load::Outcome, pgbench};

/// One measured line.
#[derive(Debug, Clone, Serialize)]
pub struct Line {
    /// What was called.
    pub name: String,
    /// "postgres", "sqlite" or "none".
    pub backend: String,
    /// "closed" (peak), "open" (fixed rate) or "pgbench".
    pub mode: &'static str,
    /// Calls in flight (closed loop, pgbench clients).
    pub concurrency: Option<usize>,
    /// Offered calls per second (open loop).
    pub offered_rate: Option<f64>,
    /// Successful calls (or pgbench transactions) per second.
    pub throughput: f64,
    /// Successful calls measured (open loop: also those due in the window
    /// that finished after it), or pgbench transactions. Zero fails the run.
    pub successful_calls: u64,
    /// Median latency, ms (pgbench: mean).
    pub p50_ms: f64,
    /// 99th percentile latency, ms (pgbench: not measured).
    pub p99_ms: Option<f64>,
    /// Failed calls by reason.
    pub errors: BTreeMap<String, u64>,
    /// CPU microseconds per call, by party (closed loop and pgbench lines).
    pub cpu_us_per_call: BTreeMap<String, f64>,
    /// Open loop: of the calls at or over p99, the share due within one
    /// 100 ms (near 1: the tail is one stall, not calls slow throughout).
    pub tail_in_100ms: Option<f64>,
}

/// The stretch over which an open-loop line's tail is looked for.
const TAIL_STRETCH: std::time::Duration = std::time::Duration::from_millis(100);

impl Line {
    fn from_outcome(
        name: &str,
        backend: &str,
        mode: &'static str,
        outcome: &Outcome,
        concurrency: Option<usize>,
        offered_rate: Option<f64>,
    ) -> Self {
        Self {
            name: name.to_owned(),
            backend: backend.to_owned(),
            mode,
            concurrency,
            offered_rate,
            throughput: outcome.throughput(),
            successful_calls: outcome.measured(),
            p50_ms: outcome.latency_ms(0.5),
            p99_ms: Some(outcome.latency_ms(0.99)),
            errors: outcome.errors.clone(),
            cpu_us_per_call: BTreeMap::new(),
            tail_in_100ms: outcome.tail_in_one_stretch(TAIL_STRETCH),
        }
    }

    /// The line with its CPU cost per call.
    pub fn with_cpu(mut self, cpu_us_per_call: BTreeMap<String, f64>) -> Self {
        self.cpu_us_per_call = cpu_us_per_call;
        self
    }

    /// A closed-loop (peak throughput) line.
    pub fn closed(name: &str, backend: &str, outcome: &Outcome, concurrency: usize) -> Self {
        Self::from_outcome(name, backend, "closed", outcome, Some(concurrency), None)
    }

    /// An open-loop (fixed rate) line.
    pub fn open(name: &str, backend: &str, outcome: &Outcome, rate: f64) -> Self {
        Self::from_outcome(name, backend, "open", outcome, None, Some(rate))
    }

    /// A pgbench line.
    pub fn pgbench(name: &str, run: pgbench::Run, clients: usize) -> Self {
        let mut errors = BTreeMap::new();
        if run.failed > 0 {
            errors.insert("failed transactions".to_owned(), run.failed);
        }
        Self {
            name: name.to_owned(),
            backend: "postgres".to_owned(),
            mode: "pgbench",
            concurrency: Some(clients),
            offered_rate: None,
            throughput: run.tps,
            successful_calls: run.transactions,
            p50_ms: run.latency_ms,
            p99_ms: None,
            errors,
            cpu_us_per_call: BTreeMap::new(),
            tail_in_100ms: None,
        }
    }

    fn key(&self) -> (&str, &str, &str) {
        (&self.name, &self.backend, self.mode)
    }
}

/// A ratio of two lines, with its target.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    /// What it compares.
    pub name: String,
    /// The value.
    pub value: f64,
    /// At least (`higher_is_better`) or at most this is the target.
    pub target: Option<f64>,
    /// Whether bigger is better.
    pub higher_is_better: bool,
    /// Whether the target is met.
    pub met: Option<bool>,
    /// What helps to read it.
    pub note: Option<String>,
}

/// The CheckAccess index, as a server built it at start: in the background
/// once it listens, its health service reporting SERVING when done.
#[derive(Debug, Clone, Serialize)]
pub struct IndexBuild {
    /// Connections in the database.
    pub connections: u64,
    /// From starting the process to its listening.
    pub seconds_to_listening: f64,
    /// From starting the process to its health service reporting SERVING:
    /// the index is built.
    pub seconds_to_serving: f64,
    /// RSS of a server of the same build on the same database before the
    /// connections were inserted, MiB.
    pub rss_before_mib: Option<f64>,
    /// RSS once it reports SERVING, MiB.
    pub rss_serving_mib: Option<f64>,
    /// Peak RSS (`VmHWM`) of the process up to SERVING: the most the build
    /// took, MiB.
    pub peak_rss_mib: Option<f64>,
    /// The targets, each with its verdict (judged only for a million
    /// connections or more: a smaller run only reports).
    pub targets: Vec<Judged>,
}

/// A measured value against the most it may be.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Judged {
    /// What it is.
    pub name: &'static str,
    /// The value.
    pub value: f64,
    /// The target: at most this.
    pub at_most: f64,
    /// Whether the target is met; `None` when not judged.
    pub met: Option<bool>,
}

/// The index at start: at most this long to build, for a million connections.
const INDEX_BUILD_SECONDS: f64 = 10.0;
/// The index at start: at most this much RSS, in MB, for a million connections.
const INDEX_RSS_MB: f64 = 150.0;
/// The index at start: the peak RSS during the build at most this many times
/// the RSS once built.
const INDEX_PEAK_FACTOR: f64 = 1.5;
/// Index builds of this many connections or more are judged.
const INDEX_JUDGED_FROM: u64 = 1_000_000;

/// The names of the index build's targets.
const TIME_TO_SERVING: &str = "time to SERVING, s";
const RSS_INCREASE: &str = "RSS increase at SERVING, MB";
const PEAK_OVER_SERVING: &str = "peak RSS during the build / RSS at SERVING";

impl IndexBuild {
    /// A build of `connections`, with its targets judged.
    pub fn new(
        connections: u64,
        seconds_to_listening: f64,
        seconds_to_serving: f64,
        rss_before_mib: Option<f64>,
        rss_serving_mib: Option<f64>,
        peak_rss_mib: Option<f64>,
    ) -> Self {
        let mut build = Self {
            connections,
            seconds_to_listening,
            seconds_to_serving,
            rss_before_mib,
            rss_serving_mib,
            peak_rss_mib,
            targets: Vec::new(),
        };
        let judged = connections >= INDEX_JUDGED_FROM;
        let judge = |name, value: Option<f64>, at_most| {
            value.map(|value| Judged {
                name,
                value,
                at_most,
                met: judged.then_some(value <= at_most),
            })
        };
        build.targets = [
            judge(
                TIME_TO_SERVING,
                Some(seconds_to_serving),
                INDEX_BUILD_SECONDS,
            ),
            judge(RSS_INCREASE, build.rss_increase_mb(), INDEX_RSS_MB),
            judge(
                PEAK_OVER_SERVING,
                build.peak_over_serving(),
                INDEX_PEAK_FACTOR,
            ),
        ]
        .into_iter()
        .flatten()
        .collect();
        build
    }

    /// The RSS the index added, in MB (10^6 bytes).
    fn rss_increase_mb(&self) -> Option<f64> {
        Some((self.rss_serving_mib? - self.rss_before_mib?) * 1_048_576.0 / 1e6)
    }

    /// The peak during the build over the RSS once built.
    fn peak_over_serving(&self) -> Option<f64> {
        Some(self.peak_rss_mib? / self.rss_serving_mib?)
    }

    fn target(&self, name: &str) -> Option<&Judged> {
        self.targets.iter().find(|t| t.name == name)
    }
}

/// Watches and token-bound CheckAccess while the transitions ran again on
/// the server with the large data set (see `under_writes`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct UnderWrites {
    /// Watches open, one per organization of the write pool, each reading
    /// everything sent to it.
    pub watches: usize,
    /// Events they received.
    pub watch_events: u64,
    /// How they ended, with how many ended so.
    pub watches_ended: BTreeMap<String, u64>,
    /// Tasks making a transition, then CheckAccess with its change token.
    pub checkers: usize,
    /// Checks with a change token made, and their latency, ms.
    pub token_checks: u64,
    pub token_check_p50_ms: f64,
    pub token_check_p99_ms: f64,
    pub token_check_max_ms: f64,
    /// Checks that took 1 s or more: the server gave up waiting for its
    /// index to reach the token and read the database.
    pub token_checks_at_fallback: u64,
    /// Answers that did not show the transition their token names.
    pub stale: u64,
    /// Failed transitions or checks of the checkers, by reason.
    pub errors: BTreeMap<String, u64>,
    /// The targets, each with its verdict.
    pub targets: Vec<Judged>,
}

/// The reason a watch ends with when it fell too far behind.
const TOO_SLOW: &str = "ERROR_REASON_WATCH_CONSUMER_TOO_SLOW";
const AT_FALLBACK: &str = "token-bound checks that waited 1 s (the fallback)";
const ENDED_TOO_SLOW: &str = "watches ended as too slow";

impl UnderWrites {
    /// Watches that ended as too slow.
    fn too_slow(&self) -> u64 {
        self.watches_ended
            .iter()
            .filter(|(how, _)| how.ends_with(TOO_SLOW))
            .map(|(_, n)| n)
            .sum()
    }

    /// Judges the targets: no check at the fallback, no watch too slow.
    pub fn judge(&mut self) {
        let judge = |name, value: u64| Judged {
            name,
            value: value as f64,
            at_most: 0.0,
            met: Some(value == 0),
        };
        self.targets = vec![
            judge(AT_FALLBACK, self.token_checks_at_fallback),
            judge(ENDED_TOO_SLOW, self.too_slow()),
        ];
    }

    /// What fails the run: a stale answer, a failed check or transition, a
    /// watch that ended otherwise than too slow or still open.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.stale > 0 {
            problems.push(format!("{} stale token-bound answers", self.stale));
        }
        if !self.errors.is_empty() {
            problems.push(format!("checkers failed: {}", by_reason(&self.errors)));
        }
        for (how, n) in &self.watches_ended {
            if how != crate::under_writes::STILL_OPEN && !how.ends_with(TOO_SLOW) {
                problems.push(format!("{n} watches ended: {how}"));
            }
        }
        problems
    }
}

/// The watches and checks under writes, with their targets.
fn under_writes_rows(backend: &str, results: &UnderWrites) -> Vec<String> {
    let verdict = |name: &str| {
        results
            .targets
            .iter()
            .find(|t| t.name == name)
            .map_or(String::new(), |t| {
                format!(
                    " (target {}: {})",
                    t.at_most,
                    if t.met == Some(true) {
                        "met"
                    } else {
                        "NOT MET"
                    }
                )
            })
    };
    vec![
        format!(
            "{backend:<9} {} watches received {} events; ended: {}; too slow: {}{}",
            results.watches,
            results.watch_events,
            by_reason(&results.watches_ended),
            results.too_slow(),
            verdict(ENDED_TOO_SLOW)
        ),
        format!(
            "  {} token-bound CheckAccess ({} checkers): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; \
             1 s or more (the fallback): {}{}; stale: {}",
            results.token_checks,
            results.checkers,
            results.token_check_p50_ms,
            results.token_check_p99_ms,
            results.token_check_max_ms,
            results.token_checks_at_fallback,
            verdict(AT_FALLBACK),
            results.stale
        ),
    ]
}

/// The name of the BatchCheckAccess line of `items` questions per call.
pub fn batch_line(items: usize) -> String {
    format!("BatchCheckAccess, {items} items")
}

/// Batches of access checks must answer at least this many times as many
/// questions per second as single CheckAccess calls at the same concurrency.
const BATCH_ITEMS_OVER_SINGLE: f64 = 10.0;
/// A batch's p99 at most this many times a single CheckAccess's p99, at the
/// same concurrency.
const BATCH_P99_OVER_SINGLE: f64 = 2.0;

/// BatchCheckAccess beside CheckAccess, both closed loop at the same
/// concurrency on the same server, with the two targets.
#[derive(Debug, Clone, Serialize)]
pub struct BatchChecks {
    /// Questions per BatchCheckAccess call.
    pub items_per_call: usize,
    /// Batches per second.
    pub calls_per_s: f64,
    /// Questions answered per second, in batches.
    pub items_per_s: f64,
    /// A batch's latency, ms.
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Single CheckAccess calls per second, and their p99, ms.
    pub single_calls_per_s: f64,
    pub single_p99_ms: f64,
    /// Items/s over single calls/s, and p99 over single p99, each judged.
    pub targets: Vec<Ratio>,
}

impl BatchChecks {
    /// The batch line of `items` per call beside the single-check line.
    pub fn new(items_per_call: usize, batch: &Line, single: &Line) -> Self {
        let items_per_s = batch.throughput * items_per_call as f64;
        let (p99, single_p99) = (
            batch.p99_ms.unwrap_or(f64::NAN),
            single.p99_ms.unwrap_or(f64::NAN),
        );
        let judged = |name: &str, value: f64, target: f64, higher_is_better: bool| Ratio {
            name: name.to_owned(),
            value,
            target: Some(target),
            higher_is_better,
            met: Some(if higher_is_better {
                value >= target
            } else {
                value <= target
            }),
            note: None,
        };
        Self {
            items_per_call,
            calls_per_s: batch.throughput,
            items_per_s,
            p50_ms: batch.p50_ms,
            p99_ms: p99,
            single_calls_per_s: single.throughput,
            single_p99_ms: single_p99,
            targets: vec![
                judged(
                    "items/s / single CheckAccess calls/s",
                    items_per_s / single.throughput,
                    BATCH_ITEMS_OVER_SINGLE,
                    true,
                ),
                judged(
                    "p99 / single CheckAccess p99",
                    p99 / single_p99,
                    BATCH_P99_OVER_SINGLE,
                    false,
                ),
            ],
        }
    }
}

/// The batch line with its items/s, then one row per target.
fn batch_rows(backend: &str, batch: &BatchChecks) -> Vec<String> {
    let mut rows = vec![format!(
        "{backend:<9} {}: {:.0} calls/s, p50 {:.2} ms, p99 {:.2} ms, {:.0} items/s \
         (CheckAccess: {:.0} calls/s, p99 {:.2} ms)",
        batch_line(batch.items_per_call),
        batch.calls_per_s,
        batch.p50_ms,
        batch.p99_ms,
        batch.items_per_s,
        batch.single_calls_per_s,
        batch.single_p99_ms,
    )];
    for target in &batch.targets {
        rows.push(format!(
            "  {} {:.2} (target {} {}: {})",
            target.name,
            target.value,
            if target.higher_is_better { ">=" } else { "<=" },
            target.target.unwrap_or(f64::NAN),
            if target.met == Some(true) {
                "met"
            } else {
                "not met"
            }
        ));
    }
    rows
}

/// Everything one run measured.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Closed-loop calls in flight.
    pub concurrency: usize,
    /// A smoke run: the numbers mean nothing.
    pub smoke: bool,
    /// CPU cores the machine has.
    pub cpus: usize,
    /// Every line, in the order run.
    pub lines: Vec<Line>,
    /// Peak resident memory of each server process, MiB.
    pub peak_rss_mib: BTreeMap<String, f64>,
    /// The CheckAccess index built at start, by backend.
    pub index_builds: BTreeMap<String, IndexBuild>,
    /// Watches and token-bound CheckAccess while the transitions ran, by
    /// backend.
    pub under_writes: BTreeMap<String, UnderWrites>,
    /// BatchCheckAccess beside CheckAccess, by backend.
    pub batch_checks: BTreeMap<String, BatchChecks>,
    /// Ours / baseline.
    pub ratios: Vec<Ratio>,
}

impl Report {
    /// An empty report.
    pub fn new(concurrency: &usize, smoke: bool) -> Self {
        Self {
            concurrency: *concurrency,
            smoke,
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            lines: Vec::new(),
            peak_rss_mib: BTreeMap::new(),
            index_builds: BTreeMap::new(),
            under_writes: BTreeMap::new(),
            batch_checks: BTreeMap::new(),
            ratios: Vec::new(),
        }
    }

    /// Adds a line and prints it at once (so a long run shows progress).
    pub fn add(&mut self, line: Line) {
        eprintln!("  {}", row(&line));
        self.lines.push(line);
    }

    /// Records a server's peak RSS.
    pub fn memory(&mut self, server: &str, mib: Option<f64>) {
        if let Some(mib) = mib {
            self.peak_rss_mib.insert(server.to_owned(), mib);
        }
    }

    /// Records the index a server built at start, and prints it.
    pub fn index_build(&mut self, backend: &str, build: IndexBuild) {
        for row in index_rows(backend, &build) {
            eprintln!("  {row}");
        }
        self.index_builds.insert(backend.to_owned(), build);
    }

    /// Records what the watches and token-bound checks saw under writes,
    /// and prints it.
    pub fn under_writes(&mut self, backend: &str, results: UnderWrites) {
        for row in under_writes_rows(backend, &results) {
            eprintln!("  {row}");
        }
        self.under_writes.insert(backend.to_owned(), results);
    }

    /// Sets the closed-loop BatchCheckAccess line of `items` per call beside
    /// the CheckAccess line of `backend`, judges the targets and prints them
    /// (nothing when either line is missing).
    pub fn batch_checks(&mut self, backend: &str, items: usize) {
        let (Some(batch), Some(single)) = (
            self.find(&batch_line(items), backend, "closed"),
            self.find("CheckAccess", backend, "closed"),
        ) else {
            return;
        };
        let batch = BatchChecks::new(items, batch, single);
        for row in batch_rows(backend, &batch) {
            eprintln!("  {row}");
        }
        self.batch_checks.insert(backend.to_owned(), batch);
    }

    fn find(&self, name: &str, backend: &str, mode: &str) -> Option<&Line> {
        self.lines.iter().find(|l| l.key() == (name, backend, mode))
    }

    /// What fails the run, one entry per line at fault: a line with failed
    /// calls, or with no successful call (it measured nothing). Empty when
    /// every line is sound.
    pub fn problems(&self) -> Vec<String> {
        let under_writes = self.under_writes.iter().flat_map(|(backend, results)| {
            results
                .problems()
                .into_iter()
                .map(move |problem| format!("under writes ({backend}): {problem}"))
        });
        self.lines
            .iter()
            .filter_map(|line| {
                let what = format!("{} ({}, {})", line.name, line.backend, line.mode);
                if !line.errors.is_empty() {
                    Some(format!("{what}: failed calls: {}", errors(line)))
                } else if line.successful_calls == 0 {
                    Some(format!("{what}: no successful call"))
                } else {
                    None
                }
            })
            .chain(under_writes)
            .collect()
    }

    /// Computes the ratios from the lines present (call before printing).
    pub fn compute_ratios(&mut self) {
        let mut ratios = Vec::new();
        let mut push = |name: String, value: Option<f64>, target: Option<f64>, higher: bool| {
            if let Some(value) = value.filter(|v| v.is_finite()) {
                ratios.push(Ratio {
                    name,
                    value,
                    target,
                    higher_is_better: higher,
                    met: target.map(|t| if higher { value >= t } else { value <= t }),
                    note: None,
                });
            }
        };
        // An open-loop line's p99 / p50, noting how much of its tail one
        // 100 ms stretch holds.
        let tail = |open: &Line| {
            let ratio = open.p99_ms.map(|p99| p99 / open.p50_ms)?;
            Some((ratio, open.tail_in_100ms))
        };
        let throughput = |name: &str, backend: &str, mode: &str| {
            self.find(name, backend, mode).map(|l| l.throughput)
        };
        let div = |a: Option<f64>, b: Option<f64>| Some(a? / b?);
        let hello = throughput("hello (bare tonic)", "none", "closed");
        for backend in ["postgres", "sqlite"] {
            let get = throughput("GetConnection", backend, "closed");
            push(
                format!("GetConnection ({backend}) / bare tonic"),
                div(get, hello),
                None,
                true,
            );
            let check = throughput("CheckAccess", backend, "closed");
            push(
                format!("CheckAccess ({backend}) / bare tonic"),
                div(check, hello),
                Some(0.6),
                true,
            );
        }
        push(
            "GetConnection (postgres) / pgbench on its SQL".to_owned(),
            div(
                throughput("GetConnection", "postgres", "closed"),
                throughput("pgbench: GetConnection's SQL", "postgres", "pgbench"),
            ),
            Some(0.5),
            true,
        );
        push(
            "transitions (postgres) / pgbench on their transaction".to_owned(),
            div(
                throughput("Activate/Deactivate/Reactivate", "postgres", "closed"),
                throughput("pgbench: a transition's transaction", "postgres", "pgbench"),
            ),
            Some(0.5),
            true,
        );
        let mut tails = Vec::new();
        if let Some(open) = self.find("hello (bare tonic)", "none", "open") {
            tails.push((
                "hello (bare tonic) p99 / p50 at the open-loop rate (the generator's own tail)"
                    .to_owned(),
                tail(open),
                None,
            ));
        }
        for backend in ["postgres", "sqlite"] {
            for (kind, what) in [
                ("ListConnections first page", "first page"),
                ("ListConnections page at row", "deep page"),
                ("ListConnections PENDING only", "PENDING-only page"),
            ] {
                let line = |label: &str| {
                    self.lines.iter().find(|l| {
                        l.backend == backend
                            && l.name.starts_with(kind)
                            && l.name.ends_with(&format!("({label})"))
                    })
                };
                if let (Some(small), Some(large)) = (line("small"), line("large")) {
                    push(
                        format!("ListConnections {what} latency, large / small ({backend})"),
                        Some(large.p50_ms / small.p50_ms),
                        Some(1.5),
                        false,
                    );
                }
            }
            for (name, most) in [
                ("GetConnection", 5.0),
                ("CheckAccess", 3.0),
                ("Activate/Deactivate/Reactivate", 5.0),
            ] {
                if let Some(open) = self.find(name, backend, "open") {
                    tails.push((
                        format!("{name} ({backend}) p99 / p50 at the open-loop rate"),
                        tail(open),
                        Some(most),
                    ));
                }
            }
        }
        for (name, tail, most) in tails {
            let Some((value, share)) = tail.filter(|(value, _)| value.is_finite()) else {
                continue;
            };
            ratios.push(Ratio {
                name,
                value,
                target: most,
                higher_is_better: false,
                met: most.map(|most| value <= most),
                note: share.map(|share| {
                    format!(
                        "{:.0}% of the calls over p99 were due within one 100 ms",
                        share * 100.0
                    )
                }),
            });
        }
        self.ratios = ratios;
    }

    /// Prints the table and the ratios.
    pub fn print(&self) {
        if self.smoke {
            println!("\nsmoke run: small data, short lines; the numbers mean nothing");
        }
        println!(
            "\n{:<58} {:<9} {:>10} {:>9} {:>9}  {:<24} errors",
            "line (closed: peak; open: fixed rate)",
            "backend",
            "calls/s",
            "p50 ms",
            "p99 ms",
            "CPU us/call gen/srv/db"
        );
        for line in &self.lines {
            println!("{}", row(line));
        }
        println!("\npeak RSS");
        for (server, mib) in &self.peak_rss_mib {
            println!("  {server:<30} {mib:>8.1} MiB");
        }
        println!("\nCheckAccess index built at start");
        for (backend, build) in &self.index_builds {
            for row in index_rows(backend, build) {
                println!("  {row}");
            }
        }
        if !self.under_writes.is_empty() {
            println!("\nwatches and token-bound CheckAccess while the transitions run");
            for (backend, results) in &self.under_writes {
                for row in under_writes_rows(backend, results) {
                    println!("  {row}");
                }
            }
        }
        if !self.batch_checks.is_empty() {
            println!("\nBatchCheckAccess beside CheckAccess, at the same concurrency");
            for (backend, batch) in &self.batch_checks {
                for row in batch_rows(backend, batch) {
                    println!("  {row}");
                }
            }
        }
        println!("\nratios (ours / baseline)");
        for ratio in &self.ratios {
            let target = match (ratio.target, ratio.met) {
                (Some(t), Some(met)) => format!(
                    "target {} {t}: {}",
                    if ratio.higher_is_better { ">=" } else { "<=" },
                    if met { "met" } else { "NOT MET" }
                ),
                _ => String::new(),
            };
            let note = ratio
                .note
                .as_ref()
                .map_or(String::new(), |note| format!(" ({note})"));
            println!("  {:<70} {:>7.2}  {target}{note}", ratio.name, ratio.value);
        }
    }

    /// The report as pretty JSON.
    pub fn json(&self) -> serde_json::Result<String> {
        serde_json::to_string_pretty(self)
    }
}

/// A line's failed calls, by reason.
fn errors(line: &Line) -> String {
    by_reason(&line.errors)
}

/// Counts by reason, as `reason: n, reason: n`.
pub fn by_reason(counts: &BTreeMap<String, u64>) -> String {
    counts
        .iter()
        .map(|(reason, n)| format!("{reason}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn row(line: &Line) -> String {
    let name = match (line.mode, line.offered_rate) {
        ("open", Some(rate)) => format!("{} @ {rate:.0}/s", line.name),
        _ => line.name.clone(),
    };
    let errors = if !line.errors.is_empty() {
        errors(line)
    } else if line.successful_calls == 0 {
        "0, and NO SUCCESSFUL CALL".to_owned()
    } else {
        "0".to_owned()
    };
    let p99 = line.p99_ms.map_or("-".to_owned(), |p| format!("{p:.2}"));
    let cpu = if line.cpu_us_per_call.is_empty() {
        "-".to_owned()
    } else {
        let party = |name: &str| {
            line.cpu_us_per_call
                .get(name)
                .map_or("-".to_owned(), |us| format!("{us:.0}"))
        };
        let generator = if line.mode == "pgbench" {
            party("pgbench")
        } else {
            party("load generator")
        };
        format!("{generator}/{}/{}", party("server"), party("postgres"))
    };
    format!(
        "{name:<58} {:<9} {:>10.0} {:>9.2} {p99:>9}  {cpu:<24} {errors}",
        line.backend, line.throughput, line.p50_ms
    )
}

/// One index build, with its targets: a line of what happened, then one
/// line per target (judged for a million connections or more; a smaller run
/// only reports).
fn index_rows(backend: &str, build: &IndexBuild) -> Vec<String> {
    let verdict = |judged: Option<&Judged>, unit: &str| {
        judged.map_or(String::new(), |j| {
            let met = match j.met {
                Some(true) => ": met",
                Some(false) => ": NOT MET",
                None => "",
            };
            format!("(target <= {}{unit}{met})", j.at_most)
        })
    };
    let mib = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1} MiB"));
    let mut rows = vec![format!(
        "{backend:<9} {} connections: listening after {:.2} s",
        build.connections, build.seconds_to_listening
    )];
    rows.push(format!(
        "  SERVING (index built) after {:.2} s {}",
        build.seconds_to_serving,
        verdict(build.target(TIME_TO_SERVING), " s")
    ));
    rows.push(match build.rss_increase_mb() {
        Some(mb) => format!(
            "  RSS at SERVING {}, +{mb:.1} MB over the server before the rows ({}) {}",
            mib(build.rss_serving_mib),
            mib(build.rss_before_mib),
            verdict(build.target(RSS_INCREASE), " MB")
        ),
        None => format!(
            "  RSS at SERVING {}, increase not measured",
            mib(build.rss_serving_mib)
        ),
    });
    rows.push(match build.peak_over_serving() {
        Some(factor) => format!(
            "  peak RSS during the build {}, {factor:.2} x RSS at SERVING {}",
            mib(build.peak_rss_mib),
            verdict(build.target(PEAK_OVER_SERVING), " x")
        ),
        None => "  peak RSS during the build not measured".to_owned(),
    });
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(name: &str, successful_calls: u64, errors: &[(&str, u64)]) -> Line {
        Line {
            name: name.to_owned(),
            backend: "sqlite".to_owned(),
            mode: "closed",
            concurrency: Some(4),
            offered_rate: None,
            throughput: successful_calls as f64,
            p50_ms: 1.0,
            p99_ms: Some(2.0),
            successful_calls,
            errors: errors.iter().map(|&(r, n)| (r.to_owned(), n)).collect(),
            cpu_us_per_call: BTreeMap::new(),
            tail_in_100ms: None,
        }
    }

    #[test]
    fn an_open_loop_tail_is_judged_and_says_how_much_of_it_one_stretch_holds() {
        let mut report = Report::new(&4, true);
        report.add(Line {
            mode: "open",
            backend: "postgres".to_owned(),
            offered_rate: Some(1000.0),
            p50_ms: 2.0,
            p99_ms: Some(14.0),
            tail_in_100ms: Some(0.77),
            ..line("CheckAccess", 5000, &[])
        });
        report.compute_ratios();
        let [ratio] = &report.ratios[..] else {
            panic!("one ratio: {:?}", report.ratios)
        };
        assert_eq!(
            ratio.name,
            "CheckAccess (postgres) p99 / p50 at the open-loop rate"
        );
        assert_eq!(
            (ratio.value, ratio.target, ratio.met),
            (7.0, Some(3.0), Some(false))
        );
        assert_eq!(
            ratio.note.as_deref(),
            Some("77% of the calls over p99 were due within one 100 ms")
        );
    }

    #[test]
    fn an_index_build_is_reported_from_start_to_serving_with_its_three_targets() {
        // 1,010,000 connections: judged. Built in time, within its memory,
        // but its peak is 1.71 times what it keeps.
        let build = IndexBuild::new(1_010_000, 0.13, 3.02, Some(28.8), Some(92.2), Some(157.8));
        let rows = index_rows("postgres", &build);
        assert_eq!(
            rows,
            [
                "postgres  1010000 connections: listening after 0.13 s",
                "  SERVING (index built) after 3.02 s (target <= 10 s: met)",
                "  RSS at SERVING 92.2 MiB, +66.5 MB over the server before the rows (28.8 MiB) (target <= 150 MB: met)",
                "  peak RSS during the build 157.8 MiB, 1.71 x RSS at SERVING (target <= 1.5 x: NOT MET)",
            ]
        );
        let verdicts: Vec<_> = build.targets.iter().map(|t| (t.name, t.met)).collect();
        assert_eq!(
            verdicts,
            [
                ("time to SERVING, s", Some(true)),
                ("RSS increase at SERVING, MB", Some(true)),
                ("peak RSS during the build / RSS at SERVING", Some(false)),
            ]
        );

        // The JSON holds the measures, and each target with its verdict.
        let mut report = Report::new(&4, false);
        report.index_build("postgres", build);
        let json: serde_json::Value = serde_json::from_str(&report.json().unwrap()).unwrap();
        let build = &json["index_builds"]["postgres"];
        assert_eq!(build["seconds_to_serving"], 3.02);
        assert_eq!(build["peak_rss_mib"], 157.8);
        assert_eq!(build["targets"][0]["at_most"], 10.0);
        assert_eq!(build["targets"][1]["met"], true);
        assert_eq!(
            build["targets"][2]["name"],
            "peak RSS during the build / RSS at SERVING"
        );
        assert_eq!(build["targets"][2]["met"], false);
    }

    #[test]
    fn a_small_index_build_is_reported_but_not_judged() {
        let build = IndexBuild::new(22_000, 0.05, 0.09, Some(20.0), Some(300.0), None);
        assert!(build.targets.iter().all(|t| t.met.is_none()));
        assert_eq!(
            index_rows("sqlite", &build)[1..],
            [
                "  SERVING (index built) after 0.09 s (target <= 10 s)",
                "  RSS at SERVING 300.0 MiB, +293.6 MB over the server before the rows (20.0 MiB) (target <= 150 MB)",
                "  peak RSS during the build not measured",
            ]
        );
    }

    #[test]
    fn watches_and_token_bound_checks_under_writes_are_judged_and_only_faults_fail_the_run() {
        let mut results = UnderWrites {
            watches: 96,
            watch_events: 20_000,
            watches_ended: [
                (crate::under_writes::STILL_OPEN.to_owned(), 95),
                (format!("Aborted/{TOO_SLOW}"), 1),
            ]
            .into(),
            checkers: 4,
            token_checks: 3_000,
            token_check_p50_ms: 1.5,
            token_check_p99_ms: 4.25,
            token_check_max_ms: 1_002.0,
            token_checks_at_fallback: 1,
            ..UnderWrites::default()
        };
        results.judge();
        assert_eq!(
            under_writes_rows("postgres", &results),
            [
                "postgres  96 watches received 20000 events; ended: Aborted/ERROR_REASON_WATCH_CONSUMER_TOO_SLOW: 1, \
                 still open at the end: 95; too slow: 1 (target 0: NOT MET)",
                "  3000 token-bound CheckAccess (4 checkers): p50 1.50 ms, p99 4.25 ms, max 1002.00 ms; \
                 1 s or more (the fallback): 1 (target 0: NOT MET); stale: 0",
            ]
        );
        // Missed targets are reported, not failures.
        let mut report = Report::new(&4, false);
        report.under_writes("postgres", results.clone());
        assert!(report.problems().is_empty(), "{:?}", report.problems());
        let json: serde_json::Value = serde_json::from_str(&report.json().unwrap()).unwrap();
        let targets = &json["under_writes"]["postgres"]["targets"];
        assert_eq!(targets[0]["met"], false);
        assert_eq!(targets[1]["name"], "watches ended as too slow");

        // A stale answer, a failed check and a watch that ended otherwise fail it.
        results.stale = 2;
        results.errors.insert("check: Unavailable".to_owned(), 1);
        results.watches_ended.insert("Internal".to_owned(), 1);
        let mut report = Report::new(&4, false);
        report.under_writes("sqlite", results);
        assert_eq!(
            report.problems(),
            [
                "under writes (sqlite): 2 stale token-bound answers",
                "under writes (sqlite): checkers failed: check: Unavailable: 1",
                "under writes (sqlite): 1 watches ended: Internal",
            ]
        );
    }

    #[test]
    fn a_batch_line_is_reported_in_items_and_judged_against_single_checks() {
        let mut report = Report::new(&32, false);
        report.add(Line {
            throughput: 50_000.0,
            p99_ms: Some(3.0),
            ..line("CheckAccess", 250_000, &[])
        });
        // Without its batch line, nothing is judged.
        report.batch_checks("sqlite", 100);
        assert!(report.batch_checks.is_empty());
        report.add(Line {
            throughput: 6_000.0,
            p50_ms: 4.0,
            p99_ms: Some(7.5),
            ..line(&batch_line(100), 30_000, &[])
        });
        report.batch_checks("sqlite", 100);
        let batch = &report.batch_checks["sqlite"];
        assert_eq!(batch.items_per_s, 600_000.0);
        assert_eq!(
            batch_rows("sqlite", batch),
            [
                "sqlite    BatchCheckAccess, 100 items: 6000 calls/s, p50 4.00 ms, p99 7.50 ms, \
                 600000 items/s (CheckAccess: 50000 calls/s, p99 3.00 ms)",
                "  items/s / single CheckAccess calls/s 12.00 (target >= 10: met)",
                "  p99 / single CheckAccess p99 2.50 (target <= 2: not met)",
            ]
        );
        let json: serde_json::Value = serde_json::from_str(&report.json().unwrap()).unwrap();
        let targets = &json["batch_checks"]["sqlite"]["targets"];
        assert_eq!(targets[0]["met"], true);
        assert_eq!(targets[1]["met"], false);
    }

    #[test]
    fn lines_with_failed_calls_or_no_successful_call_fail_the_run() {
        let mut report = Report::new(&4, true);
        report.add(line("GetConnection", 120, &[]));
        assert!(report.problems().is_empty());
        report.add(line("ListConnections", 0, &[]));
        report.add(line("CreateConnection", 50, &[("Unavailable", 2)]));
        report.add(line("Activate", 0, &[("Internal", 1)]));
        assert_eq!(
            report.problems(),
            [
                "ListConnections (sqlite, closed): no successful call",
                "CreateConnection (sqlite, closed): failed calls: Unavailable: 2",
                "Activate (sqlite, closed): failed calls: Internal: 1",
            ]
        );
        assert!(row(&report.lines[1]).ends_with("NO SUCCESSFUL CALL"));
    }
}
