//! Business rules and persistence: ownership, transitions, transactions.

pub mod access;
pub mod api_keys;
pub mod audit;
pub mod change_feed;
pub mod change_token;
pub mod connections;
pub mod error;
pub mod idempotency;
pub mod organizations;
pub mod page_token;
pub mod secrets;
pub mod watch;
pub mod webhook_delivery;
pub mod webhooks;

pub use access::{Access, AccessAnswer, AccessPair, AccessQuestion, BatchAnswer, Checker};
pub use api_keys::ApiKeys;
pub use audit::AuditLog;
pub use change_feed::ChangeFeed;
pub use change_token::ChangeTokens;
pub use connections::{Connections, ListFilter, NewConnection, TransitionRequest, Written};
pub use error::{AdminTokenProblem, FieldViolation, KeyProblem, ServiceError};
pub use organizations::Organizations;
pub use page_token::PageTokens;
pub use watch::{WatchItem, WatchLimits, WatchStart, Watches};
pub use webhooks::{WebhookKey, WebhookSettings, Webhooks};

use chrono::{DateTime, SubsecRound, Utc};
use uuid::Uuid;

/// One page of a list call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The items, in the list's order.
    pub items: Vec<T>,
    /// Token for the next page; `None` on the last page.
    pub next_page_token: Option<String>,
}

/// The current time at the precision both databases store (microseconds), so
/// a value returned right after a write equals the value read back later.
pub(crate) fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// The creation time embedded in a UUIDv7 (millisecond precision). Records use
/// it as their `create_time`, so "newest first by ID" and "newest first by
/// creation time" are the same order.
pub(crate) fn time_of(id: Uuid) -> DateTime<Utc> {
    id.get_timestamp()
        .and_then(|ts| {
            let (secs, nanos) = ts.to_unix();
            DateTime::from_timestamp(i64::try_from(secs).ok()?, nanos)
        })
        .unwrap_or_else(now)
}

/// `N` bytes from the operating system's secure random source.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    bytes
}

#[cfg(test)]
pub(crate) mod testing {
    //! What the business layer's tests start from.

    use sea_orm::DatabaseConnection;

    use super::{ApiKeys, Organizations, PageTokens, connections::NewConnection};
    use crate::{
        config::DatabaseSettings,
        db::connect,
        domain::{Caller, DataType, DataTypes, DisplayName, OrganizationId},
    };

    /// A connection to `destination` sharing inquiries, with no request ID.
    pub fn inquiries_to(destination: OrganizationId) -> NewConnection {
        NewConnection {
            destination,
            data_types: DataTypes::new([DataType::Inquiry]).unwrap(),
            request_id: None,
            message: None,
        }
    }

    /// A new in-memory SQLite database, migrated, with two organizations,
    /// each calling with a key of its own: the database, the page tokens,
    /// and the two callers.
    pub async fn two_organizations() -> (DatabaseConnection, PageTokens, Caller, Caller) {
        let db = connect(&DatabaseSettings::new("sqlite::memory:"))
            .await
            .unwrap();
        crate::db::migrate(&db).await.unwrap();
        let tokens = PageTokens::new([1; 32]);
        let orgs = Organizations::new(db.clone(), db.clone().into(), tokens.clone());
        let keys = ApiKeys::new(db.clone(), db.clone().into());
        let mut callers = Vec::new();
        for name in ["S", "D"] {
            let org = orgs
                .create(
                    &crate::domain::Actor::command_line(),
                    DisplayName::parse(name).unwrap(),
                )
                .await
                .unwrap();
            let (_, secret) = keys
                .create(
                    &crate::domain::Actor::command_line(),
                    org.id,
                    format!("{name}'s key"),
                )
                .await
                .unwrap();
            callers.push(keys.authenticate(&secret).await.unwrap());
        }
        let [source, destination] = <[Caller; 2]>::try_from(callers).unwrap();
        (db, tokens, source, destination)
    }
}
