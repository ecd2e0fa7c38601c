//! The replicas of an upgrade as a load balancer sees them, and the record
//! of every call the traffic makes on them.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tonic::{Code, Status, transport::Channel};
use tonic_types::StatusExt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Release {
    Previous,
    Current,
}

impl Release {
    pub fn name(self) -> &'static str {
        match self {
            Self::Previous => "previous",
            Self::Current => "current",
        }
    }
}

/// A serving replica, as the clients see it.
pub struct Replica {
    pub name: String,
    pub release: Release,
    pub channel: Channel,
    /// Unary calls sent to it and not yet answered.
    in_flight: AtomicUsize,
    /// Set before it is sent SIGTERM: its watches then end, and resume elsewhere.
    pub stopping: AtomicBool,
}

impl Replica {
    /// `name`, of `release`, reached through `channel`.
    pub fn new(name: &str, release: Release, channel: Channel) -> Self {
        Self {
            name: name.to_owned(),
            release,
            channel,
            in_flight: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
        }
    }
}

/// A unary call's hold on the replica it was routed to: the load balancer
/// drains a replica (waits for its calls in flight) before stopping it.
pub struct Lease(pub Arc<Replica>);

impl Lease {
    fn new(replica: &Arc<Replica>) -> Self {
        replica.in_flight.fetch_add(1, Ordering::SeqCst);
        Self(replica.clone())
    }
}

impl std::ops::Deref for Lease {
    type Target = Replica;

    fn deref(&self) -> &Replica {
        &self.0
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The replicas traffic is routed to (a load balancer), and the record of
/// every call.
#[derive(Default)]
pub struct Fleet {
    routed: RwLock<Vec<Arc<Replica>>>,
    next: AtomicUsize,
    pub log: Log,
}

impl Fleet {
    pub fn route_to(&self, replica: Arc<Replica>) {
        self.routed.write().unwrap().push(replica);
    }

    /// Stops routing calls to `replica` and waits (at most 10 s) for those in
    /// flight on it to finish.
    pub async fn drain(&self, replica: &Replica) {
        self.routed
            .write()
            .unwrap()
            .retain(|r| r.name != replica.name);
        let deadline = Instant::now() + Duration::from_secs(10);
        while replica.in_flight.load(Ordering::SeqCst) > 0 {
            assert!(Instant::now() < deadline, "{} did not drain", replica.name);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The next replica, in turn.
    pub fn pick(&self) -> Lease {
        let routed = self.routed.read().unwrap();
        assert!(!routed.is_empty(), "no replica to route to");
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        Lease::new(&routed[i % routed.len()])
    }

    /// A replica of the other release than `of` if one is routed, else the
    /// next one: a retry, a next page or a token goes from one release to
    /// the other whenever both serve.
    pub fn pick_other(&self, of: &Replica) -> Lease {
        let routed = self.routed.read().unwrap();
        let others: Vec<&Arc<Replica>> =
            routed.iter().filter(|r| r.release != of.release).collect();
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        if others.is_empty() {
            assert!(!routed.is_empty(), "no replica to route to");
            Lease::new(&routed[i % routed.len()])
        } else {
            Lease::new(others[i % others.len()])
        }
    }
}

/// Every call's outcome per release, what the traffic covered, and every
/// failure.
#[derive(Default)]
pub struct Log {
    /// (release, method, code) -> calls.
    pub calls: Mutex<BTreeMap<(Release, &'static str, i32), u64>>,
    /// What the traffic did, and how often (e.g. "request_id retry from
    /// previous to current").
    pub seen: Mutex<BTreeMap<String, u64>>,
    /// Every failed call and check, described.
    pub failures: Mutex<Vec<String>>,
}

impl Log {
    fn count(&self, release: Release, method: &'static str, code: Code) {
        *self
            .calls
            .lock()
            .unwrap()
            .entry((release, method, code as i32))
            .or_default() += 1;
    }

    /// Records a call expected to succeed: its value, or `None` (a failure).
    pub fn ok<T>(
        &self,
        on: &Replica,
        method: &'static str,
        result: Result<T, Status>,
    ) -> Option<T> {
        match result {
            Ok(value) => {
                self.count(on.release, method, Code::Ok);
                Some(value)
            }
            Err(status) => {
                self.count(on.release, method, status.code());
                self.fail(format!("{method} on {}: {}", on.name, described(&status)));
                None
            }
        }
    }

    /// Records a call expected to be refused with `code` and `reason`.
    pub fn refused<T>(
        &self,
        on: &Replica,
        method: &'static str,
        result: Result<T, Status>,
        code: Code,
        reason: &str,
    ) {
        match result {
            Ok(_) => {
                self.count(on.release, method, Code::Ok);
                self.fail(format!(
                    "{method} on {}: succeeded, expected {code:?}",
                    on.name
                ));
            }
            Err(status) => {
                self.count(on.release, method, status.code());
                let found = status.get_details_error_info().map(|info| info.reason);
                if status.code() != code || found.as_deref() != Some(reason) {
                    self.fail(format!(
                        "{method} on {}: {}, expected {code:?} {reason}",
                        on.name,
                        described(&status)
                    ));
                }
            }
        }
    }

    pub fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }

    /// Fails with `what` unless `holds`.
    pub fn check(&self, holds: bool, what: impl FnOnce() -> String) {
        if !holds {
            self.fail(what());
        }
    }

    pub fn saw(&self, what: String) {
        *self.seen.lock().unwrap().entry(what).or_default() += 1;
    }

    /// Calls per release and code, as a table.
    pub fn summary(&self) -> String {
        let calls = self.calls.lock().unwrap();
        let mut per_release: BTreeMap<(Release, i32), u64> = BTreeMap::new();
        let mut per_method: BTreeMap<(&'static str, Release), u64> = BTreeMap::new();
        for ((release, method, code), n) in calls.iter() {
            *per_release.entry((*release, *code)).or_default() += n;
            *per_method.entry((method, *release)).or_default() += n;
        }
        let mut text = String::new();
        for ((release, code), n) in &per_release {
            text += &format!("  {:<8} {:?}: {n}\n", release.name(), Code::from_i32(*code));
        }
        text += "  by method (previous / current):\n";
        let methods: BTreeSet<&'static str> = per_method.keys().map(|(m, _)| *m).collect();
        for method in methods {
            let of = |release| per_method.get(&(method, release)).copied().unwrap_or(0);
            text += &format!(
                "    {method:<22} {:>6} / {:>6}\n",
                of(Release::Previous),
                of(Release::Current)
            );
        }
        text
    }
}

/// A status's code, ErrorInfo reason and message, on one line.
pub fn described(status: &Status) -> String {
    let reason = status
        .get_details_error_info()
        .map(|info| info.reason)
        .unwrap_or_default();
    format!("{:?} {reason} {:?}", status.code(), status.message())
}
