//! The database health monitor: the health service reports SERVING while the
//! database answers and NOT_SERVING while it does not.

use std::time::Duration;

use sea_orm::DatabaseConnection;
use tonic_health::{ServingStatus, server::HealthReporter};

use super::Task;
use crate::grpc::server::HEALTH_SERVICES;

/// Reports `status` for every served service and the whole server.
pub async fn set_all(reporter: &HealthReporter, status: ServingStatus) {
    for service in HEALTH_SERVICES {
        reporter.set_service_status(service, status).await;
    }
}

/// Probes the database once and reports the result, so the health service
/// tells the truth before the first call can ask it.
pub async fn report_now(db: &DatabaseConnection, reporter: &HealthReporter, interval: Duration) {
    set_all(reporter, serving_status(probe(db, interval).await)).await;
}

/// Starts probing `db` every `interval`, reporting each change of its
/// reachability through `reporter`.
pub fn start(db: DatabaseConnection, reporter: HealthReporter, interval: Duration) -> Task {
    Task::start(|stop| async move {
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
    })
}

/// Whether the database answers within `timeout` (at least a second).
async fn probe(db: &DatabaseConnection, timeout: Duration) -> bool {
    let timeout = timeout.max(Duration::from_secs(1));
    matches!(tokio::time::timeout(timeout, db.ping()).await, Ok(Ok(())))
}

/// SERVING when the database is reachable, else NOT_SERVING.
fn serving_status(reachable: bool) -> ServingStatus {
    if reachable {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}
