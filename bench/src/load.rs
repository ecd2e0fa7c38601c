//! The load generator: closed loop (a fixed number of callers, each sending
//! its next call when the previous one returns) for peak throughput, and open
//! loop (calls sent on a fixed schedule, whatever the server does) for latency
//! at a given rate. Open-loop latency is measured from when a call was due, not
//! from when it was sent, so a stalled server cannot hide its queueing delay.

use std::{
    collections::BTreeMap,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use hdrhistogram::Histogram;
use tokio::time::Instant;

/// What one call returns: `Ok` or the reason it failed ("UNAVAILABLE",
/// "bad response: ...").
pub type CallResult = Result<(), String>;

/// One call, given its sequence number.
pub type Call = Arc<dyn Fn(u64) -> Pin<Box<dyn Future<Output = CallResult> + Send>> + Send + Sync>;

/// Wraps an async closure as a [`Call`].
pub fn call<F, Fut>(f: F) -> Call
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = CallResult> + Send + 'static,
{
    Arc::new(move |i| Box::pin(f(i)))
}

/// The failure reason of a gRPC status: its code name, then the reason of its
/// `google.rpc.ErrorInfo` if it carries one ("Unavailable/ERROR_REASON_...").
pub fn code_of(status: &tonic::Status) -> String {
    match error_reason(status) {
        Some(reason) => format!("{:?}/{reason}", status.code()),
        None => format!("{:?}", status.code()),
    }
}

/// The `reason` of the first `google.rpc.ErrorInfo` among a status's details.
pub fn error_reason(status: &tonic::Status) -> Option<String> {
    use prost::Message;

    /// `google.rpc.Status`, as far as needed here.
    #[derive(Clone, PartialEq, prost::Message)]
    struct RpcStatus {
        #[prost(message, repeated, tag = "3")]
        details: Vec<Any>,
    }
    /// `google.protobuf.Any`.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Any {
        #[prost(string, tag = "1")]
        type_url: String,
        #[prost(bytes = "vec", tag = "2")]
        value: Vec<u8>,
    }
    /// `google.rpc.ErrorInfo`, as far as needed here.
    #[derive(Clone, PartialEq, prost::Message)]
    struct ErrorInfo {
        #[prost(string, tag = "1")]
        reason: String,
    }

    let details = RpcStatus::decode(status.details()).ok()?.details;
    let info = details
        .iter()
        .find(|any| any.type_url.ends_with("/google.rpc.ErrorInfo"))?;
    Some(ErrorInfo::decode(info.value.as_slice()).ok()?.reason).filter(|r| !r.is_empty())
}

/// How long to load, and for how long before measuring.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Calls completing in this period are not counted.
    pub warmup: Duration,
    /// The measured period.
    pub duration: Duration,
}

/// What a run measured.
#[derive(Clone)]
pub struct Outcome {
    /// Successful calls completed in the measured window.
    pub ok: u64,
    /// Successful calls due in the measured window that finished after it
    /// (open loop only): their latency is recorded, but they are not in `ok`.
    pub late: u64,
    /// Failed calls by reason (in the window or not: any failure fails the run).
    pub errors: BTreeMap<String, u64>,
    /// Latency of successful calls, in microseconds.
    pub latency: Histogram<u64>,
    /// The measured window.
    pub elapsed: Duration,
    /// Open loop: each measured call's due time (from the window's start)
    /// and latency, in microseconds.
    pub calls: Vec<(u32, u32)>,
}

/// The counts and a few quantiles, not the whole histogram.
impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outcome")
            .field("ok", &self.ok)
            .field("late", &self.late)
            .field("errors", &self.errors)
            .field("p50_ms", &self.latency_ms(0.5))
            .field("p99_ms", &self.latency_ms(0.99))
            .field("elapsed", &self.elapsed)
            .finish()
    }
}

impl Outcome {
    fn new(elapsed: Duration) -> Self {
        Self {
            ok: 0,
            late: 0,
            errors: BTreeMap::new(),
            latency: new_histogram(),
            elapsed,
            calls: Vec::new(),
        }
    }

    /// Open loop: of the calls at or over the 99th percentile latency, the
    /// share that was due within the busiest `stretch`. Near 1, the tail is
    /// one stall of the whole machine rather than calls slow here and there.
    pub fn tail_in_one_stretch(&self, stretch: Duration) -> Option<f64> {
        share_in_busiest_stretch(&self.calls, micros(stretch))
    }

    fn merge(&mut self, other: Outcome) {
        self.ok += other.ok;
        self.late += other.late;
        for (reason, n) in other.errors {
            *self.errors.entry(reason).or_default() += n;
        }
        self.latency.add(&other.latency).expect("same bounds");
        self.calls.extend(other.calls);
    }

    /// Successful calls measured: those completed in the window, and in open
    /// loop those due in it that finished after it. Zero means the line
    /// measured nothing.
    pub fn measured(&self) -> u64 {
        self.ok + self.late
    }

    /// Successful calls per second.
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// Latency at quantile `q` (0..=1), in milliseconds.
    pub fn latency_ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs to 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// Of `calls` (due time, latency), those with a latency at or over the 99th
/// percentile: the largest share of them due within `stretch` of each other.
fn share_in_busiest_stretch(calls: &[(u32, u32)], stretch: u64) -> Option<f64> {
    let mut latencies: Vec<u32> = calls.iter().map(|&(_, latency)| latency).collect();
    latencies.sort_unstable();
    let p99 = *latencies.get((latencies.len() * 99).div_ceil(100).checked_sub(1)?)?;
    let mut slow: Vec<u64> = calls
        .iter()
        .filter(|&&(_, latency)| latency >= p99)
        .map(|&(due, _)| u64::from(due))
        .collect();
    slow.sort_unstable();
    let (mut first, mut most) = (0, 0);
    for (last, &due) in slow.iter().enumerate() {
        while due - slow[first] >= stretch {
            first += 1;
        }
        most = most.max(last + 1 - first);
    }
    Some(most as f64 / slow.len() as f64)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Runs `concurrency` callers back to back for the window; returns what
/// completed inside the measured part.
pub async fn closed_loop(call: Call, concurrency: usize, window: Window) -> Outcome {
    let start = Instant::now() + window.warmup;
    let end = start + window.duration;
    let next = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let call = call.clone();
            let next = next.clone();
            tokio::spawn(async move {
                let mut outcome = Outcome::new(window.duration);
                loop {
                    let sent = Instant::now();
                    if sent >= end {
                        break;
                    }
                    let result = call(next.fetch_add(1, Ordering::Relaxed)).await;
                    let done = Instant::now();
                    match result {
                        Ok(()) if sent >= start && done <= end => {
                            outcome.ok += 1;
                            outcome.latency.saturating_record(micros(done - sent));
                        }
                        Ok(()) => {}
                        Err(reason) => *outcome.errors.entry(reason).or_default() += 1,
                    }
                }
                outcome
            })
        })
        .collect();
    let mut total = Outcome::new(window.duration);
    for worker in workers {
        total.merge(worker.await.expect("load worker panicked"));
    }
    total
}

/// Most calls allowed in flight in open loop; more means the server has
/// fallen behind the schedule for good, and the excess counts as failed.
const MAX_IN_FLIGHT: usize = 20_000;

/// Sends `rate` calls per second on a fixed schedule for the window.
///
/// Call `i` (numbered from 0, warm-up included) is due `i / rate` seconds
/// after the start and is never sent before it is due; every call due before
/// the window ends is sent, however late the generator is, and each one due
/// in the window is counted in [`Outcome::ok`] or [`Outcome::late`].
pub async fn open_loop(call: Call, rate: f64, window: Window) -> Outcome {
    let begin = Instant::now();
    let start = begin + window.warmup;
    let end = start + window.duration;
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let shared = Arc::new(Mutex::new(Outcome::new(window.duration)));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let mut k: u32 = 0;
    loop {
        let due = begin + interval * k;
        if due >= end {
            break;
        }
        if due > Instant::now() {
            tokio::time::sleep_until(due).await;
        }
        let sequence = u64::from(k);
        k += 1;
        if in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
            *shared
                .lock()
                .unwrap()
                .errors
                .entry("fell behind schedule".to_owned())
                .or_default() += 1;
            continue;
        }
        in_flight.fetch_add(1, Ordering::Relaxed);
        let (call, shared, in_flight) = (call.clone(), shared.clone(), in_flight.clone());
        tasks.spawn(async move {
            let result = call(sequence).await;
            let done = Instant::now();
            in_flight.fetch_sub(1, Ordering::Relaxed);
            let mut outcome = shared.lock().unwrap();
            match result {
                Ok(()) if due >= start => {
                    // Due in the window but finished after it: still
                    // counted, since leaving it out would hide the slowest.
                    if done <= end {
                        outcome.ok += 1;
                    } else {
                        outcome.late += 1;
                    }
                    let latency = micros(done - due);
                    outcome.latency.saturating_record(latency);
                    let at = (due - start).as_micros();
                    outcome.calls.push((
                        u32::try_from(at).unwrap_or(u32::MAX),
                        u32::try_from(latency).unwrap_or(u32::MAX),
                    ));
                }
                Ok(()) => {}
                Err(reason) => *outcome.errors.entry(reason).or_default() += 1,
            }
        });
        // Reap finished tasks so the set stays small.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    Arc::try_unwrap(shared)
        .expect("all calls finished")
        .into_inner()
        .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(ms: u64) -> Window {
        Window {
            warmup: Duration::from_millis(20),
            duration: Duration::from_millis(ms),
        }
    }

    /// One call as the test saw it.
    #[derive(Debug, Clone, Copy)]
    struct Made {
        number: u64,
        sent: Instant,
        done: Instant,
        ok: bool,
    }

    /// On tokio's paused clock, which moves only when every task waits: a
    /// loaded machine makes the test slower, but cannot change what it counts.
    #[tokio::test(start_paused = true)]
    async fn closed_loop_counts_successes_and_failures_by_reason() {
        let made = Arc::new(Mutex::new(Vec::new()));
        let begin = Instant::now();
        let outcome = closed_loop(
            call({
                let made = made.clone();
                move |i| {
                    let made = made.clone();
                    async move {
                        let sent = Instant::now();
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        let ok = i % 10 != 0;
                        made.lock().unwrap().push(Made {
                            number: i,
                            sent,
                            done: Instant::now(),
                            ok,
                        });
                        if ok {
                            Ok(())
                        } else {
                            Err("NotFound".to_owned())
                        }
                    }
                }
            }),
            4,
            window(200),
        )
        .await;
        assert!(outcome.ok > 100, "{outcome:?}");
        assert!(outcome.errors["NotFound"] > 10, "{outcome:?}");
        assert!(outcome.latency_ms(0.5) >= 1.0);

        let mut made = made.lock().unwrap().clone();
        made.sort_by_key(|m| m.number);
        let numbers: Vec<u64> = made.iter().map(|m| m.number).collect();
        assert_eq!(numbers, (0..made.len() as u64).collect::<Vec<_>>());
        // Every failure counts, in the window or not; a success counts only
        // when it was sent and finished inside the window.
        let failed = made.iter().filter(|m| !m.ok).count() as u64;
        assert_eq!(
            outcome.errors,
            BTreeMap::from([("NotFound".to_owned(), failed)])
        );
        let (start, end) = (
            begin + Duration::from_millis(20),
            begin + Duration::from_millis(220),
        );
        let in_window = made
            .iter()
            .filter(|m| m.ok && m.sent >= start && m.done <= end)
            .count() as u64;
        assert_eq!(outcome.ok, in_window, "{outcome:?}");
        assert!(
            made.iter().any(|m| m.ok && m.sent < start),
            "some successes fall in the warm-up and are left out"
        );
        assert_eq!(outcome.latency.len(), outcome.ok);
        assert_eq!(outcome.late, 0, "closed loop has no late calls");
    }

    /// An open loop of instant calls at 1000/s for 300 ms (after 20 ms of
    /// warm-up): when it started, its outcome, and when each call was sent.
    async fn record_open_loop() -> (Instant, Outcome, Vec<(u64, Instant)>) {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let before = Instant::now();
        let outcome = open_loop(
            call({
                let sent = sent.clone();
                move |i| {
                    sent.lock().unwrap().push((i, Instant::now()));
                    async { Ok(()) }
                }
            }),
            1000.0,
            window(300),
        )
        .await;
        let sent = sent.lock().unwrap().clone();
        (before, outcome, sent)
    }

    #[tokio::test]
    async fn open_loop_keeps_to_the_schedule() {
        // Every call records when it was sent; the calls themselves are
        // instant. How late a loaded machine runs the generator changes when
        // calls go out, not which calls go out, so the counts are exact.
        let (before, outcome, sent) = record_open_loop().await;
        // 1 ms apart: 20 calls due in the warm-up, then 300 due in the
        // window, each either on time or late.
        assert_eq!(outcome.ok + outcome.late, 300, "{outcome:?}");
        assert_eq!(outcome.measured(), 300, "{outcome:?}");
        assert!(outcome.ok <= 300, "{outcome:?}");
        assert!(outcome.errors.is_empty(), "{outcome:?}");
        let mut sent = sent;
        sent.sort_by_key(|&(i, _)| i);
        let numbers: Vec<u64> = sent.iter().map(|&(i, _)| i).collect();
        assert_eq!(numbers, (0..320).collect::<Vec<_>>(), "each call once");
        // No call leaves before it is due (due times count from when
        // open_loop started, which is no earlier than `before`).
        let interval = Duration::from_secs_f64(1.0 / 1000.0);
        for &(i, at) in &sent {
            let due = interval * u32::try_from(i).unwrap();
            assert!(
                at.duration_since(before) >= due,
                "call {i} sent {:?} after the start, before it was due at {due:?}",
                at.duration_since(before)
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_sends_each_call_when_it_is_due() {
        // On tokio's paused clock time moves only when every task waits, so
        // an on-time generator sends call i exactly i intervals after it
        // starts: a burst, a stall or a drift shows as a wrong send time.
        let (before, outcome, sent) = record_open_loop().await;
        assert_eq!((outcome.ok, outcome.late), (300, 0), "{outcome:?}");
        assert_eq!(sent.len(), 320);
        let interval = Duration::from_millis(1);
        for (i, at) in sent {
            assert_eq!(
                at.duration_since(before),
                interval * u32::try_from(i).unwrap(),
                "call {i}"
            );
        }
    }

    #[tokio::test]
    async fn open_loop_latency_includes_time_spent_behind_schedule() {
        // A server that handles one call at a time, 5 ms each, offered 400/s:
        // calls queue up, and the latency must show it.
        let gate = Arc::new(tokio::sync::Mutex::new(()));
        let outcome = open_loop(
            call(move |_| {
                let gate = gate.clone();
                async move {
                    let _one_at_a_time = gate.lock().await;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    Ok(())
                }
            }),
            400.0,
            window(300),
        )
        .await;
        assert!(outcome.latency_ms(0.99) > 50.0, "{outcome:?}");
    }

    /// 1,000 calls due 1 ms apart, 1 ms each, but for `slow` (20 ms).
    fn calls_slow_at(slow: &[u32]) -> Vec<(u32, u32)> {
        (0..1000)
            .map(|i| (i * 1000, if slow.contains(&i) { 20_000 } else { 1000 }))
            .collect()
    }

    #[test]
    fn a_tail_from_one_stall_is_all_in_one_stretch() {
        let stalled: Vec<u32> = (500..520).collect();
        let calls = calls_slow_at(&stalled);
        assert_eq!(
            share_in_busiest_stretch(&calls, 100_000),
            Some(1.0),
            "20 slow calls due within 20 ms"
        );
    }

    #[test]
    fn a_tail_spread_over_the_window_is_not() {
        let spread: Vec<u32> = (0..20).map(|i| i * 50).collect();
        let calls = calls_slow_at(&spread);
        // Due 50 ms apart: at most two in any 100 ms.
        assert_eq!(share_in_busiest_stretch(&calls, 100_000), Some(0.1));
        assert_eq!(share_in_busiest_stretch(&[], 100_000), None);
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_records_each_measured_call_when_it_was_due() {
        let (_, outcome, _) = record_open_loop().await;
        assert_eq!(outcome.calls.len() as u64, outcome.measured());
        let mut dues: Vec<u32> = outcome.calls.iter().map(|&(due, _)| due).collect();
        dues.sort_unstable();
        let expected: Vec<u32> = (0..300).map(|k| k * 1000).collect();
        assert_eq!(dues, expected, "one call due every 1 ms of the window");
    }
}
