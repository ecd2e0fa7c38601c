//! The expiry sweep: deactivates PENDING connections whose destination did
//! not activate them before their expire time (EXPIRED events). Every
//! replica sweeps; each expiry is a guarded change, so two replicas never
//! expire one connection twice, and an activation that commits first wins.

use std::time::Duration;

use super::Task;
use crate::service::Connections;

/// Connections expired per transaction batch read.
const BATCH: u64 = 100;

/// Starts expiring the connections that are due, every `interval`.
pub fn start(connections: Connections, interval: Duration) -> Task {
    Task::start(|stop| async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = stop.cancelled() => return,
            }
            loop {
                match connections.expire_due(BATCH).await {
                    Ok(expired) if expired as u64 == BATCH && !stop.is_cancelled() => continue,
                    Ok(_) => break,
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot expire pending connections");
                        break;
                    }
                }
            }
        }
    })
}
