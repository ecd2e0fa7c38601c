//! Following the change log: the feed's reader, and the CheckAccess index
//! (see `service::change_feed` and `service::access`).

use std::time::Duration;

use sea_orm::sqlx::postgres::PgConnectOptions;

use super::Task;
use crate::service::{Access, ChangeFeed};

/// Starts reading the change log into `feed`: at once after each commit of
/// this process, and at least every `poll`.
pub fn start(feed: ChangeFeed, poll: Duration) -> Task {
    Task::start(move |stop| async move { feed.follow(poll, stop).await })
}

/// Starts building the access index `access`, then applying every change
/// to it as soon as it commits: at once after each commit `feed` hears of,
/// and at least every `poll`.
pub fn start_index(access: Access, feed: ChangeFeed, poll: Duration) -> Task {
    Task::start(move |stop| async move { access.follow(feed, poll, stop).await })
}

/// Starts listening on PostgreSQL for the change log commits of every
/// replica, so that `feed` reads them at once.
pub fn listen(feed: ChangeFeed, options: PgConnectOptions) -> Task {
    Task::start(move |stop| async move { feed.listen(options, stop).await })
}
