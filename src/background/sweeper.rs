//! The request_id sweeper: deletes request_id records once they are older
//! than their retention (SPEC section 4: at least 24 hours), in batches that
//! take turns with the other writers.

use std::{sync::Arc, time::Duration};

use sea_orm::{DatabaseConnection, DbErr};
use tokio_util::sync::CancellationToken;

use super::{Activity, Task};
use crate::service::idempotency::{self, SWEEP_BATCH};

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
            match sweep(&db, cutoff, &stop).await {
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

/// Deletes the records created before `cutoff` in batches of
/// [`SWEEP_BATCH`], each a write transaction of its own that waits for its
/// turn like any other writer; stops early once `stop` is cancelled. Returns
/// how many were deleted.
async fn sweep(
    db: &DatabaseConnection,
    cutoff: chrono::DateTime<chrono::Utc>,
    stop: &CancellationToken,
) -> Result<u64, DbErr> {
    let mut total = 0;
    loop {
        let deleted = idempotency::delete_expired_batch(db, cutoff, SWEEP_BATCH).await?;
        total += deleted;
        if deleted < SWEEP_BATCH || stop.is_cancelled() {
            return Ok(total);
        }
    }
}
