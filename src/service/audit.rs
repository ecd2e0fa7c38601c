//! The audit log: operator actions, and organizations' changes to their
//! webhook endpoints, recorded in the transaction that makes them, and read
//! back a page at a time.

use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr};

use super::{Page, PageTokens, ServiceError, time_of};
use crate::{
    db::Reader,
    domain::{Actor, AuditAction, AuditEvent, AuditFilter, OrganizationId},
    entity::audit_event,
};

/// Appends the entry for `action` on `target_id` (of `organization`, named
/// `display_name`) by `actor`, in the caller's transaction `txn`, so that the
/// action and its entry commit together or not at all.
pub(crate) async fn record(
    txn: &impl ConnectionTrait,
    actor: &Actor,
    action: AuditAction,
    target_id: uuid::Uuid,
    organization: OrganizationId,
    display_name: &str,
) -> Result<AuditEvent, DbErr> {
    let id = uuid::Uuid::now_v7();
    let event = AuditEvent {
        id,
        occur_time: time_of(id),
        action,
        credential_kind: actor.credential.kind(),
        credential_id: actor.credential.id(),
        target_type: action.target_type(),
        target_id,
        organization_id: organization,
        target_display_name: display_name.to_owned(),
        peer: actor.peer.clone(),
        request_id: actor.request_id.clone(),
    };
    audit_event::insert(txn, &event).await?;
    tracing::info!(
        audit_action = %action,
        target_id = %target_id,
        credential = %actor.credential.kind(),
        "audited"
    );
    Ok(event)
}

/// Reads the audit log.
#[derive(Debug, Clone)]
pub struct AuditLog {
    reader: Reader,
    tokens: PageTokens,
}

impl AuditLog {
    /// Reads through `reader`, signing page tokens with `tokens`.
    pub fn new(reader: Reader, tokens: PageTokens) -> Self {
        Self { reader, tokens }
    }

    /// Reads the log of `db` directly (the command line).
    pub fn of(db: &DatabaseConnection, tokens: PageTokens) -> Self {
        Self::new(db.clone().into(), tokens)
    }

    /// Entries matching `filter`, oldest first. A page token is good only for
    /// the filter it was issued with.
    pub async fn list(
        &self,
        filter: &AuditFilter,
        page_size: crate::domain::PageSize,
        page_token: Option<&str>,
    ) -> Result<Page<AuditEvent>, ServiceError> {
        let scope = scope(filter);
        let after = self.tokens.cursor(&scope, page_token, |cursor| {
            uuid::Uuid::from_slice(cursor).ok()
        })?;
        let items = audit_event::list(&self.reader, filter, after, page_size.fetch()).await?;
        Ok(self
            .tokens
            .page(&scope, page_size, items, |last| last.id.as_bytes().to_vec()))
    }
}

/// The page token scope of a listing with `filter`.
fn scope(filter: &AuditFilter) -> String {
    let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map(|t| t.timestamp_micros().to_string())
            .unwrap_or_default()
    };
    format!(
        "ListAuditEvents/{}/{}/{}/{}",
        filter.action.map(<&str>::from).unwrap_or_default(),
        filter.target_id.map(|t| t.to_string()).unwrap_or_default(),
        time(filter.start_time),
        time(filter.end_time),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Credential;

    #[tokio::test]
    async fn entries_list_oldest_first_filtered_and_paged_and_tokens_keep_to_their_filter() {
        let (db, tokens, _, _) = crate::service::testing::two_organizations().await;
        let org = OrganizationId::generate();
        let actor = Actor {
            credential: Credential::AdminToken {
                fingerprint: "00aa".to_owned(),
            },
            peer: Some("127.0.0.1:1".to_owned()),
            request_id: Some("r-1".to_owned()),
        };
        let target = uuid::Uuid::now_v7();
        for action in [
            AuditAction::ApiKeyCreated,
            AuditAction::ApiKeyRevoked,
            AuditAction::ApiKeyCreated,
        ] {
            record(&db, &actor, action, target, org, "ci")
                .await
                .unwrap();
        }
        let log = AuditLog::of(&db, tokens);
        let created = AuditFilter {
            action: Some(AuditAction::ApiKeyCreated),
            target_id: Some(target),
            ..AuditFilter::default()
        };
        let one = crate::domain::PageSize::from_request(1).unwrap();
        let first = log.list(&created, one, None).await.unwrap();
        assert_eq!(first.items.len(), 1);
        let token = first.next_page_token.expect("a second page");
        let second = log.list(&created, one, Some(&token)).await.unwrap();
        assert_eq!(second.items.len(), 1);
        assert!(second.items[0].id > first.items[0].id, "oldest first");
        assert_eq!(second.items[0].action, AuditAction::ApiKeyCreated);
        assert_eq!(second.items[0].request_id.as_deref(), Some("r-1"));
        // The token of one filter is refused with another.
        let revoked = AuditFilter {
            action: Some(AuditAction::ApiKeyRevoked),
            ..created.clone()
        };
        assert!(matches!(
            log.list(&revoked, one, Some(&token)).await,
            Err(ServiceError::InvalidPageToken)
        ));
    }
}
