//! Watches and token-bound CheckAccess while the benchmark's transitions run
//! on the server with the large data set: does the server's watch buffer
//! (`--watch-buffer`, 1,024 batches of the change log by default) hold at
//! that write rate, and does a check that names a write's change token stay
//! in milliseconds, never reaching the 1 s after which the server reads the
//! database instead?
//!
//! While the closed-loop transitions line runs, one watch per organization
//! of the write pool reads everything sent to it, and a few checkers each
//! make a transition of a connection of their own and then CheckAccess with
//! its change token, timing the check and checking that the answer shows
//! the transition.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use connections::proto::WatchConnectionEventsResponse;
use hdrhistogram::Histogram;
use tokio::{sync::watch, time::Instant};
use tonic::{Streaming, metadata::AsciiMetadataValue};

use crate::{
    freshness::{self, Measured},
    load::{self, Call, Outcome, Window},
    report::UnderWrites,
    workload::Target,
};

/// Checkers, each with a connection of its own.
const CHECKERS: usize = 4;

/// How the server's wait for a token ends when its index has not reached
/// it: it reads the database after this long (`service::access::TOKEN_WAIT`).
pub const TOKEN_FALLBACK: Duration = Duration::from_secs(1);

/// How a watch that was still open when the line ended is reported.
pub const STILL_OPEN: &str = "still open at the end";

/// Runs `cycles` in closed loop over `window` (as the transitions line
/// does) with a watch open for each of `watchers` and [`CHECKERS`]
/// token-bound checkers; returns the line and what the watches and checks
/// saw.
pub async fn run(
    target: &Target,
    cycles: Call,
    watchers: &[AsciiMetadataValue],
    concurrency: usize,
    window: Window,
    pid: Option<u32>,
) -> anyhow::Result<(Outcome, BTreeMap<String, f64>, UnderWrites)> {
    let checked = freshness::measured(target, CHECKERS).await?;
    let (stop, stopped) = watch::channel(false);
    let events = Arc::new(AtomicU64::new(0));
    let mut watches = tokio::task::JoinSet::new();
    for key in watchers {
        let stream = freshness::open_watch(target, key).await?;
        watches.spawn(follow(stream, stopped.clone(), events.clone()));
    }
    let mut checkers = tokio::task::JoinSet::new();
    for m in checked {
        checkers.spawn(check_until(target.clone(), m, stopped.clone()));
    }

    let (outcome, cpu) = crate::closed(cycles, concurrency, window, pid).await;

    stop.send_replace(true);
    let mut results = UnderWrites {
        watches: watchers.len(),
        ..UnderWrites::default()
    };
    while let Some(ended) = watches.join_next().await {
        *results.watches_ended.entry(ended?).or_default() += 1;
    }
    results.watch_events = events.load(Ordering::SeqCst);
    let mut latency = new_histogram();
    while let Some(checks) = checkers.join_next().await {
        let checks = checks?;
        latency.add(&checks.latency)?;
        results.stale += checks.stale;
        for (reason, n) in checks.errors {
            *results.errors.entry(reason).or_default() += n;
        }
    }
    results.checkers = CHECKERS;
    results.token_checks = latency.len();
    let ms = |micros: u64| micros as f64 / 1000.0;
    results.token_check_p50_ms = ms(latency.value_at_quantile(0.5));
    results.token_check_p99_ms = ms(latency.value_at_quantile(0.99));
    results.token_check_max_ms = ms(latency.max());
    results.token_checks_at_fallback =
        latency.count_between(u64::try_from(TOKEN_FALLBACK.as_micros())?, u64::MAX);
    results.judge();
    Ok((outcome, cpu, results))
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs to 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// Reads `stream` until `stop`; returns how it ended.
async fn follow(
    mut stream: Streaming<WatchConnectionEventsResponse>,
    mut stop: watch::Receiver<bool>,
    events: Arc<AtomicU64>,
) -> String {
    loop {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return STILL_OPEN.to_owned(),
            message = stream.message() => match message {
                Ok(Some(message)) => {
                    if message.event.is_some() {
                        events.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(None) => return "ended without an error".to_owned(),
                Err(status) => return load::code_of(&status),
            },
        }
    }
}

/// What one checker saw.
struct Checks {
    /// Latency of each check, µs.
    latency: Histogram<u64>,
    /// Answers that did not show the transition the token names.
    stale: u64,
    /// Failed transitions or checks, by reason.
    errors: BTreeMap<String, u64>,
}

/// Transitions `m` and checks it with the transition's change token, over
/// and over until `stop`. A failed transition ends the checker (the
/// connection's state is then unknown); a failed check is counted.
async fn check_until(target: Target, mut m: Measured, mut stop: watch::Receiver<bool>) -> Checks {
    let mut checks = Checks {
        latency: new_histogram(),
        stale: 0,
        errors: BTreeMap::new(),
    };
    while !*stop.borrow_and_update() {
        let (expected, token) = match freshness::transition(&target, &mut m).await {
            Ok(done) => done,
            Err(err) => {
                *checks
                    .errors
                    .entry(format!("transition: {err}"))
                    .or_default() += 1;
                break;
            }
        };
        let started = Instant::now();
        match freshness::check(&target, &m, &token).await {
            Ok(state) => {
                let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                checks.latency.saturating_record(micros.max(1));
                if state != expected {
                    checks.stale += 1;
                }
            }
            Err(err) => {
                *checks.errors.entry(format!("check: {err}")).or_default() += 1;
            }
        }
    }
    checks
}
