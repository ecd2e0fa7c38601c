//! Following the change log: the feed's reader, and the CheckAccess index
//! that applies what it reads (see `service::change_feed` and
//! `service::access`).

use std::time::Duration;

use sea_orm::sqlx::postgres::PgConnectOptions;

use super::Task;
use crate::service::{Access, ChangeFeed, change_feed::Subscription};

/// Starts reading the change log into `feed`: at once after each commit of
/// this process, and at least every `poll`.
pub fn start(feed: ChangeFeed, poll: Duration) -> Task {
    Task::start(move |stop| async move { feed.follow(poll, stop).await })
}

/// Starts applying `feed`'s batches, from `subscription` on, to the access
/// index `access`.
pub fn start_index(access: Access, subscription: Subscription, feed: ChangeFeed) -> Task {
    Task::start(move |stop| async move { access.follow(subscription, feed, stop).await })
}

/// Starts listening on PostgreSQL for the change log commits of every
/// replica, so that `feed` reads them at once.
pub fn listen(feed: ChangeFeed, options: PgConnectOptions) -> Task {
    Task::start(move |stop| async move { feed.listen(options, stop).await })
}
