//! The health monitor: the health service reports SERVING while the database
//! answers and the CheckAccess index is built, and NOT_SERVING otherwise.

use std::time::Duration;

use sea_orm::DatabaseConnection;
use tokio::sync::watch;
use tonic_health::{ServingStatus, server::HealthReporter};

use super::Task;
use crate::grpc::server::HEALTH_SERVICES;

/// Reports `status` for every served service and the whole server.
pub async fn set_all(reporter: &HealthReporter, status: ServingStatus) {
    for service in HEALTH_SERVICES {
        reporter.set_service_status(service, status).await;
    }
}

/// Probes the database once and reports the result with `index_built`, so
/// the health service tells the truth before the first call can ask it.
pub async fn report_now(
    db: &DatabaseConnection,
    reporter: &HealthReporter,
    interval: Duration,
    index_built: bool,
) {
    let reachable = probe(db, interval).await;
    set_all(reporter, serving_status(reachable, index_built)).await;
}

/// Starts probing `db` every `interval`, and following `index_built`,
/// reporting each change of the status through `reporter`.
pub fn start(
    db: DatabaseConnection,
    reporter: HealthReporter,
    interval: Duration,
    mut index_built: watch::Receiver<bool>,
) -> Task {
    Task::start(|stop| async move {
        let mut reported = None;
        loop {
            let reachable = probe(&db, interval).await;
            let built = *index_built.borrow_and_update();
            if reported != Some((reachable, built)) {
                match (reachable, built) {
                    (true, true) => {
                        tracing::info!("database reachable, access index built: serving")
                    }
                    (true, false) => tracing::info!("building the access index: not serving yet"),
                    (false, _) => tracing::warn!("database unreachable: not serving"),
                }
                set_all(&reporter, serving_status(reachable, built)).await;
                reported = Some((reachable, built));
            }
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                // Built: report it now, not at the next probe.
                Ok(()) = index_built.changed() => {}
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

/// SERVING when the database is reachable and the index built, else
/// NOT_SERVING.
fn serving_status(reachable: bool, index_built: bool) -> ServingStatus {
    if reachable && index_built {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

#[cfg(test)]
mod tests {
    use tonic_health::pb::{HealthCheckRequest, health_server::Health};

    use super::*;
    use crate::config::DatabaseSettings;

    async fn status(health: &impl Health) -> i32 {
        health
            .check(tonic::Request::new(HealthCheckRequest {
                service: String::new(),
            }))
            .await
            .unwrap()
            .into_inner()
            .status
    }

    #[tokio::test]
    async fn not_serving_until_the_index_is_built_then_serving_at_once() {
        let db = crate::db::connect(&DatabaseSettings::new("sqlite::memory:"))
            .await
            .unwrap();
        let reporter = HealthReporter::new();
        let health = tonic_health::server::HealthService::from_health_reporter(reporter.clone());
        let (built, index_built) = watch::channel(false);
        // Probes far apart: only the index being built can change the status.
        let task = start(db, reporter, Duration::from_secs(3600), index_built);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while status(&health).await != ServingStatus::NotServing as i32 {
            assert!(tokio::time::Instant::now() < deadline, "never NOT_SERVING");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        built.send_replace(true);
        while status(&health).await != ServingStatus::Serving as i32 {
            assert!(tokio::time::Instant::now() < deadline, "never SERVING");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        task.stop().await;
    }
}
