//! Organizations.

use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};
use tracing::instrument;

use super::{Page, PageTokens, ServiceError, time_of};
use crate::{
    db::Reader,
    domain::{DisplayName, Organization, OrganizationId, PageSize},
    entity::organization,
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
        organization::Entity::find_by_id(id.uuid())
            .one(&self.reader)
            .await?
            .map(organization_from)
            .ok_or(ServiceError::OrganizationNotFound)
    }

    /// Creates an organization.
    #[instrument(skip(self))]
    pub async fn create(&self, display_name: DisplayName) -> Result<Organization, ServiceError> {
        let id = OrganizationId::generate();
        let org = Organization {
            id,
            display_name: display_name.as_str().to_owned(),
            create_time: time_of(id.uuid()),
        };
        organization::Entity::insert(organization::ActiveModel {
            id: Set(org.id.uuid()),
            display_name: Set(org.display_name.clone()),
            create_time: Set(org.create_time),
        })
        .exec_without_returning(&self.db)
        .await?;
        tracing::info!(organization_id = %org.id, "organization created");
        Ok(org)
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
        let mut query = organization::Entity::find();
        if let Some(after) = after {
            query = query.filter(organization::Column::Id.gt(after));
        }
        let rows = query
            .order_by_asc(organization::Column::Id)
            .limit(page_size.fetch())
            .all(&self.reader)
            .await?;
        let items = rows.into_iter().map(organization_from).collect();
        Ok(self.tokens.page(SCOPE, page_size, items, |last: &Organization| {
            last.id.uuid().as_bytes().to_vec()
        }))
    }
}

fn organization_from(model: organization::Model) -> Organization {
    Organization {
        id: model.id.into(),
        display_name: model.display_name,
        create_time: model.create_time,
    }
}
