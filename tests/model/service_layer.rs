//! The service layer under test: `connections::service`, called directly, on
//! the database of the pass, set up as the server sets it up.

use connections::{
    db::{DbSettings, Reader, connect},
    domain::{
        Action, ConnectionId, ConnectionRecord, DataType, DataTypes, DisplayName, OrganizationId,
        PageSize,
    },
    error::ServiceError,
    service::{
        Connections, ListFilter, NewConnection, Organizations, PageTokens, TransitionRequest,
    },
};
use migration::{Migrator, MigratorTrait};
use proptest::test_runner::TestCaseError;
use sea_orm::DatabaseConnection;

use super::{
    harness::{Filter, Layer, Page, Seen, SeenEvent},
    reference::{Failure, Refusal},
};
use crate::database::TestDatabase;

/// The service layer on a database made for one test.
pub struct ServiceLayer {
    connections: Connections,
    organizations: Organizations,
    db: DatabaseConnection,
    reader: Reader,
    /// Dropped last: removes the database.
    _database: TestDatabase,
}

impl ServiceLayer {
    /// A new database of the pass's backend, migrated, and the service
    /// layer over it with the server's pools.
    pub async fn new() -> Self {
        let (database, url) = TestDatabase::create(false).await;
        let settings = DbSettings {
            url,
            max_connections: 4,
        };
        let db = connect(&settings).await.expect("test database");
        Migrator::up(&db, None).await.expect("migrations");
        let reader = Reader::new(&db, &settings).expect("read pool");
        let tokens = PageTokens::new([7; 32]);
        Self {
            connections: Connections::new(db.clone(), reader.clone(), tokens.clone()),
            organizations: Organizations::new(db.clone(), reader.clone(), tokens),
            db,
            reader,
            _database: database,
        }
    }

    /// Closes the pools, so the database can be removed.
    pub async fn close(self) {
        self.reader.close().await;
        self.db.close().await.ok();
    }
}

/// A refusal as the model describes it. The service layer has no gRPC codes:
/// a refusal gets the code SPEC section 5 gives its reason.
fn failure(err: ServiceError, action: Option<Action>) -> Failure {
    let refusal = match err {
        ServiceError::ConnectionNotFound => Refusal::ConnectionNotFound,
        ServiceError::OrganizationNotFound => Refusal::OrganizationNotFound,
        ServiceError::CallerNotSource => Refusal::CallerNotSource,
        ServiceError::CallerNotDestination => Refusal::CallerNotDestination,
        ServiceError::InvalidStateTransition {
            action: refused,
            current,
        } if Some(refused) == action => Refusal::InvalidStateTransition { current },
        ServiceError::EtagMismatch => Refusal::EtagMismatch,
        ServiceError::ConnectionAlreadyExists { connection_id } => {
            Refusal::ConnectionAlreadyExists {
                existing: connection_id.to_string(),
            }
        }
        ServiceError::SelfConnection => Refusal::SelfConnection,
        ServiceError::RequestIdReused => Refusal::RequestIdReused,
        other => return Failure::Unexpected(format!("{other:?}")),
    };
    Failure::refused(refusal)
}

/// `id` parsed, or the failure the model does not predict.
fn parse<T>(
    id: &str,
    parse: fn(&str) -> Result<T, connections::domain::ids::InvalidId>,
) -> Result<T, Failure> {
    parse(id).map_err(|err| Failure::Unexpected(format!("{id:?}: {err}")))
}

fn page_size(value: i32) -> Result<PageSize, Failure> {
    PageSize::from_request(value).map_err(|err| Failure::Unexpected(err.to_string()))
}

impl Layer for ServiceLayer {
    type Record = ConnectionRecord;
    type Caller = OrganizationId;

    async fn organization(&self, name: &str) -> (String, OrganizationId) {
        let org = self
            .organizations
            .create(DisplayName::parse(name).unwrap())
            .await
            .expect("create organization");
        (org.id.to_string(), org.id)
    }

    async fn create(
        &self,
        caller: &OrganizationId,
        destination: &str,
        data_types: &[DataType],
        request_id: Option<&str>,
    ) -> Result<ConnectionRecord, Failure> {
        let new = NewConnection {
            destination: parse(destination, OrganizationId::parse)?,
            data_types: DataTypes::new(data_types.iter().copied())
                .map_err(|err| Failure::Unexpected(err.to_string()))?,
            request_id: request_id.map(str::to_owned),
        };
        self.connections
            .create(*caller, new)
            .await
            .map_err(|err| failure(err, None))
    }

    async fn transition(
        &self,
        caller: &OrganizationId,
        action: Action,
        id: &str,
        etag: Option<&str>,
        reason: Option<&str>,
        request_id: Option<&str>,
    ) -> Result<ConnectionRecord, Failure> {
        let request = TransitionRequest {
            id: parse(id, ConnectionId::parse)?,
            action,
            etag: etag.map(str::to_owned),
            reason: reason.map(str::to_owned),
            request_id: request_id.map(str::to_owned),
        };
        self.connections
            .transition(*caller, request)
            .await
            .map_err(|err| failure(err, Some(action)))
    }

    async fn get(&self, caller: &OrganizationId, id: &str) -> Result<ConnectionRecord, Failure> {
        let id = parse(id, ConnectionId::parse)?;
        self.connections
            .get(*caller, id)
            .await
            .map_err(|err| failure(err, None))
    }

    async fn list(
        &self,
        caller: &OrganizationId,
        filter: &Filter,
        page_size_: i32,
        page_token: Option<&str>,
    ) -> Result<Page<ConnectionRecord>, Failure> {
        let filter = ListFilter {
            role: filter.role,
            state: filter.state,
            counterparty: match &filter.counterparty {
                Some(id) => Some(parse(id, OrganizationId::parse)?),
                None => None,
            },
        };
        let page = self
            .connections
            .list(*caller, filter, page_size(page_size_)?, page_token)
            .await
            .map_err(|err| failure(err, None))?;
        Ok(Page {
            items: page.items,
            next_page_token: page.next_page_token,
        })
    }

    async fn list_events(
        &self,
        caller: &OrganizationId,
        id: &str,
        page_size_: i32,
        page_token: Option<&str>,
    ) -> Result<Page<SeenEvent>, Failure> {
        let id = parse(id, ConnectionId::parse)?;
        let page = self
            .connections
            .list_events(*caller, id, page_size(page_size_)?, page_token)
            .await
            .map_err(|err| failure(err, None))?;
        Ok(Page {
            items: page
                .items
                .into_iter()
                .map(|e| SeenEvent {
                    connection_id: e.connection_id.to_string(),
                    sequence: e.sequence,
                    event_type: e.event_type,
                    from: e.from_state,
                    to: e.to_state,
                    actor: e.actor_organization_id.to_string(),
                    actor_role: e.actor_role,
                    reason: e.reason,
                })
                .collect(),
            next_page_token: page.next_page_token,
        })
    }

    fn seen(&self, r: &ConnectionRecord) -> Result<Seen, TestCaseError> {
        Ok(Seen {
            id: r.id.to_string(),
            source: r.parties.source.to_string(),
            destination: r.parties.destination.to_string(),
            state: r.state,
            version: Some(r.version),
            etag: r.etag(),
            data_types: r.data_types.as_slice().to_vec(),
            ever_activated: r.activate_time.is_some(),
            ever_deactivated: r.deactivate_time.is_some(),
            deactivated_by: r.deactivated_by,
            deactivation_reason: r.deactivation_reason.clone(),
        })
    }
}
