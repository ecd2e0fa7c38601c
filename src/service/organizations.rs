//! Organizations.

use sea_orm::DatabaseConnection;
use tracing::instrument;

use super::{FieldViolation, Page, PageTokens, ServiceError, audit, now, time_of};
use crate::{
    db::{self, Reader},
    domain::{Actor, AuditAction, DisplayName, Organization, OrganizationId, PageSize, Policy},
    entity::{organization, trusted_source},
};

/// The organizations business layer.
#[derive(Debug, Clone)]
pub struct Organizations {
    db: DatabaseConnection,
    /// Reads outside transactions.
    reader: Reader,
    tokens: PageTokens,
}

impl Organizations {
    /// The business layer over `db`, reading through `reader` and signing
    /// page tokens with `tokens`.
    pub fn new(db: DatabaseConnection, reader: Reader, tokens: PageTokens) -> Self {
        Self { db, reader, tokens }
    }

    /// One organization.
    #[instrument(skip(self))]
    pub async fn get(&self, id: OrganizationId) -> Result<Organization, ServiceError> {
        organization::find(&self.reader, id)
            .await?
            .ok_or(ServiceError::OrganizationNotFound)
    }

    /// Creates an organization, recording `actor` in the audit log.
    #[instrument(skip(self, actor))]
    pub async fn create(
        &self,
        actor: &Actor,
        display_name: DisplayName,
    ) -> Result<Organization, ServiceError> {
        let id = OrganizationId::generate();
        let org = Organization {
            id,
            display_name: display_name.as_str().to_owned(),
            create_time: time_of(id.uuid()),
        };
        let txn = db::begin_write(&self.db).await?;
        organization::insert(&*txn, &org).await?;
        audit::record(
            &*txn,
            actor,
            AuditAction::OrganizationCreated,
            id.uuid(),
            id,
            &org.display_name,
        )
        .await?;
        txn.commit().await?;
        tracing::info!(organization_id = %org.id, "organization created");
        Ok(org)
    }

    /// `organization`'s policy as a destination.
    #[instrument(skip(self))]
    pub async fn policy(&self, organization: OrganizationId) -> Result<Policy, ServiceError> {
        Ok(Policy {
            trusted_sources: trusted_source::list(&self.reader, organization).await?,
        })
    }

    /// Makes `organization` trust exactly `sources` (each an existing
    /// organization other than itself) as a destination, recording `actor`
    /// in the audit log. Existing connections are left as they are.
    #[instrument(skip(self, actor, sources))]
    pub async fn update_policy(
        &self,
        actor: &Actor,
        organization: OrganizationId,
        sources: Vec<OrganizationId>,
        field: &'static str,
    ) -> Result<Policy, ServiceError> {
        let policy = Policy::new(organization, sources).map_err(|problem| {
            ServiceError::InvalidArgument(vec![FieldViolation::new(field, problem.to_string())])
        })?;
        let txn = db::begin_write(&self.db).await?;
        // One update of a policy at a time: each replaces the whole list.
        let own = organization::find_for_update(&*txn, organization)
            .await?
            .ok_or(ServiceError::OrganizationNotFound)?;
        let existing = organization::count_existing(&*txn, &policy.trusted_sources).await?;
        if existing != policy.trusted_sources.len() as u64 {
            return Err(ServiceError::OrganizationNotFound);
        }
        trusted_source::replace(&*txn, organization, &policy.trusted_sources, now()).await?;
        audit::record(
            &*txn,
            actor,
            AuditAction::OrganizationPolicyUpdated,
            organization.uuid(),
            organization,
            &own.display_name,
        )
        .await?;
        txn.commit().await?;
        tracing::info!(trusted = policy.trusted_sources.len(), "policy updated");
        Ok(policy)
    }

    /// All organizations, oldest first.
    #[instrument(skip(self))]
    pub async fn list(
        &self,
        page_size: PageSize,
        page_token: Option<&str>,
    ) -> Result<Page<Organization>, ServiceError> {
        const SCOPE: &str = "ListOrganizations";
        let after = self.tokens.cursor(SCOPE, page_token, |cursor| {
            uuid::Uuid::from_slice(cursor).ok()
        })?;
        let items = organization::list(&self.reader, after, page_size.fetch()).await?;
        Ok(self.tokens.page(SCOPE, page_size, items, |last| {
            last.id.uuid().as_bytes().to_vec()
        }))
    }
}
