//! The `trusted_sources` table: the source organizations each organization
//! trusts as a destination (its policy), and the queries that read and
//! replace them.

use sea_orm::{ActiveValue::Set, QueryOrder, QuerySelect, entity::prelude::*};

use crate::domain::OrganizationId;

/// One source an organization trusts.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "trusted_sources")]
pub struct Model {
    /// The organization whose policy this is (the destination).
    #[sea_orm(primary_key, auto_increment = false)]
    pub organization_id: Uuid,
    /// The source it trusts.
    #[sea_orm(primary_key, auto_increment = false)]
    pub source_organization_id: Uuid,
    /// When the source was added to the policy.
    pub create_time: DateTimeUtc,
}

/// No relations are navigated through the ORM.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

/// The sources `organization` trusts, sorted by ID.
pub async fn list(
    conn: &impl ConnectionTrait,
    organization: OrganizationId,
) -> Result<Vec<OrganizationId>, DbErr> {
    let ids: Vec<Uuid> = Entity::find()
        .select_only()
        .column(Column::SourceOrganizationId)
        .filter(Column::OrganizationId.eq(organization.uuid()))
        .order_by_asc(Column::SourceOrganizationId)
        .into_tuple()
        .all(conn)
        .await?;
    Ok(ids.into_iter().map(Into::into).collect())
}

/// Whether `destination` trusts `source`.
pub async fn trusts(
    conn: &impl ConnectionTrait,
    destination: OrganizationId,
    source: OrganizationId,
) -> Result<bool, DbErr> {
    Ok(Entity::find_by_id((destination.uuid(), source.uuid()))
        .count(conn)
        .await?
        > 0)
}

/// Makes `sources` the whole list `organization` trusts, keeping the rows
/// (and their times) of the sources it already trusted.
pub async fn replace(
    conn: &impl ConnectionTrait,
    organization: OrganizationId,
    sources: &[OrganizationId],
    at: DateTimeUtc,
) -> Result<(), DbErr> {
    let current = list(conn, organization).await?;
    let gone: Vec<Uuid> = current
        .iter()
        .filter(|id| !sources.contains(id))
        .map(|id| id.uuid())
        .collect();
    if !gone.is_empty() {
        Entity::delete_many()
            .filter(Column::OrganizationId.eq(organization.uuid()))
            .filter(Column::SourceOrganizationId.is_in(gone))
            .exec(conn)
            .await?;
    }
    let new: Vec<ActiveModel> = sources
        .iter()
        .filter(|id| !current.contains(id))
        .map(|id| ActiveModel {
            organization_id: Set(organization.uuid()),
            source_organization_id: Set(id.uuid()),
            create_time: Set(at),
        })
        .collect();
    // Bounded by the policy's size (1,000), well under any statement limit.
    for chunk in new.chunks(100) {
        Entity::insert_many(chunk.to_vec())
            .exec_without_returning(conn)
            .await?;
    }
    Ok(())
}
