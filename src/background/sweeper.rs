//! The request_id sweeper: deletes request_id records once they are older
//! than their retention (SPEC section 4: at least 24 hours).

use std::{sync::Arc, time::Duration};

use sea_orm::DatabaseConnection;

use super::{Activity, Task};
use crate::service::idempotency;

/// Starts deleting request_id records older than `retention`, every
/// `interval`; counts its rounds in `activity`.
pub fn start(
    db: DatabaseConnection,
    retention: Duration,
    interval: Duration,
    activity: Arc<Activity>,
) -> Task {
    Task::start(|stop| async move {
        let _running = activity.start();
        let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
        loop {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = stop.cancelled() => return,
            }
            // A retention longer than the calendar allows deletes nothing.
            let Some(cutoff) = chrono::Utc::now().checked_sub_signed(retention) else {
                activity.round_done();
                continue;
            };
            match idempotency::delete_expired(&db, cutoff).await {
                Ok(0) => {}
                Ok(deleted) => tracing::info!(deleted, "expired request_id records deleted"),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot delete expired request_id records");
                }
            }
            activity.round_done();
        }
    })
}
