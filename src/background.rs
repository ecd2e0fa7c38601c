//! Work the server does besides answering calls: the database health
//! monitor and the request_id sweeper. Each runs until its cancellation token
//! is cancelled; the server waits for both before it closes its pools.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    grpc::{AdminApi, ConnectionApi, OrganizationApi},
    proto::{
        admin_service_server::AdminServiceServer,
        connection_service_server::ConnectionServiceServer,
        organization_service_server::OrganizationServiceServer,
    },
    service::idempotency,
};

/// What a background task has done, observable from outside it.
#[derive(Debug, Default)]
pub struct Activity {
    running: AtomicBool,
    rounds: AtomicU64,
}

impl Activity {
    /// Whether the task is running now (false until it first runs).
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// How many rounds of work the task has finished.
    pub fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::SeqCst)
    }

    /// Marks the task running until the returned guard is dropped.
    fn start(self: &Arc<Self>) -> Running {
        self.running.store(true, Ordering::SeqCst);
        Running(self.clone())
    }
}

/// Marks an [`Activity`] stopped when dropped, however the task ends.
struct Running(Arc<Activity>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::SeqCst);
    }
}

/// The services whose health is reported. The whole server ("") comes last,
/// so once it reports a status, every service reports the same.
const HEALTH_SERVICES: [&str; 4] = [
    <ConnectionServiceServer<ConnectionApi> as NamedService>::NAME,
    <OrganizationServiceServer<OrganizationApi> as NamedService>::NAME,
    <AdminServiceServer<AdminApi> as NamedService>::NAME,
    "",
];

/// Reports `status` for every served service and the whole server.
pub(crate) async fn set_all(reporter: &HealthReporter, status: ServingStatus) {
    for service in HEALTH_SERVICES {
        reporter.set_service_status(service, status).await;
    }
}

/// Whether the database answers within `timeout` (at least a second).
pub(crate) async fn probe(db: &DatabaseConnection, timeout: Duration) -> bool {
    let timeout = timeout.max(Duration::from_secs(1));
    matches!(tokio::time::timeout(timeout, db.ping()).await, Ok(Ok(())))
}

/// SERVING when the database is reachable, else NOT_SERVING.
pub(crate) fn serving_status(reachable: bool) -> ServingStatus {
    if reachable {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

/// Reports SERVING while the database answers and NOT_SERVING while it does not.
pub(crate) async fn monitor_database(
    db: DatabaseConnection,
    reporter: HealthReporter,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut serving = None;
    loop {
        let reachable = probe(&db, interval).await;
        if serving != Some(reachable) {
            if reachable {
                tracing::info!("database reachable: serving");
            } else {
                tracing::warn!("database unreachable: not serving");
            }
            set_all(&reporter, serving_status(reachable)).await;
            serving = Some(reachable);
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// Deletes request_id records older than `retention`, every `interval`,
/// until `stop` is cancelled; counts its rounds in `activity`.
pub(crate) async fn sweep_request_ids(
    db: DatabaseConnection,
    retention: Duration,
    interval: Duration,
    activity: Arc<Activity>,
    stop: CancellationToken,
) {
    let _running = activity.start();
    let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = stop.cancelled() => return,
        }
        let cutoff = chrono::Utc::now() - retention;
        match idempotency::delete_expired(&db, cutoff).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "expired request_id records deleted"),
            Err(err) => tracing::warn!(error = %err, "cannot delete expired request_id records"),
        }
        activity.rounds.fetch_add(1, Ordering::SeqCst);
    }
}
