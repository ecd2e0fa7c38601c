//! The service layer under test: `connections::service`, called directly, on
//! the database of the pass, set up as the server sets it up.

use connections::{
    config::DatabaseSettings,
    db::{Reader, connect},
    domain::{
        Action, Actor, Caller, ConnectionId, ConnectionRecord, DataType, DataTypes, DisplayName,
        OrganizationId, PageSize, Role,
    },
    grpc::convert::{self, encode_connection},
    proto,
    service::{
        ApiKeys, Connections, ListFilter, NewConnection, Organizations, PageTokens, ServiceError,
        TransitionRequest, Written, idempotency::Outcome,
    },
};
use proptest::test_runner::TestCaseError;
use prost::Message;
use sea_orm::DatabaseConnection;

use super::{
    harness::{Filter, Layer, Page, Seen, SeenEvent},
    reference::{EventTypes, Failure, Refusal, requested},
};
use crate::database::TestDatabase;

/// The service layer on a database made for one test.
pub struct ServiceLayer {
    connections: Connections,
    organizations: Organizations,
    api_keys: ApiKeys,
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
        let settings = DatabaseSettings {
            url,
            max_connections: 4,
        };
        let db = connect(&settings).await.expect("test database");
        connections::db::migrate(&db).await.expect("migrations");
        let reader = Reader::new(&db, &settings).expect("read pool");
        let tokens = PageTokens::new([7; 32]);
        Self {
            connections: Connections::new(
                db.clone(),
                reader.clone(),
                tokens.clone(),
                encode_connection,
            ),
            organizations: Organizations::new(db.clone(), reader.clone(), tokens),
            api_keys: ApiKeys::new(db.clone(), reader.clone()),
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
        ServiceError::NoPendingDataTypes => Refusal::NoPendingDataTypes,
        ServiceError::NoDataTypesLeft => Refusal::NoDataTypesLeft,
        ServiceError::DataTypesUnchanged => Refusal::DataTypesUnchanged,
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

/// A connection as the service layer returns it: the record of a call that
/// ran, or the response recorded by an earlier call with the same request_id.
/// Two are equal when they encode to the same response.
#[derive(Debug, Clone)]
pub enum Returned {
    /// The call ran.
    Record(ConnectionRecord),
    /// A replay: the response the first call recorded.
    Replayed(Vec<u8>),
}

impl Returned {
    fn encoded(&self) -> Vec<u8> {
        match self {
            Self::Record(record) => encode_connection(record),
            Self::Replayed(encoded) => encoded.clone(),
        }
    }
}

impl PartialEq for Returned {
    fn eq(&self, other: &Self) -> bool {
        self.encoded() == other.encoded()
    }
}

impl From<Outcome<Written>> for Returned {
    fn from(outcome: Outcome<Written>) -> Self {
        match outcome {
            Outcome::Fresh(written) => Self::Record(written.record),
            Outcome::Replayed(recorded) => Self::Replayed(recorded.response),
        }
    }
}

/// The set a request carries, or the failure the model does not predict.
fn data_types(types: &[DataType]) -> Result<DataTypes, Failure> {
    DataTypes::new(types.iter().copied()).map_err(|err| Failure::Unexpected(err.to_string()))
}

/// A set as the model lists them: sorted, empty for none.
fn listed(types: Option<&DataTypes>) -> Vec<DataType> {
    types.map_or_else(Vec::new, |types| types.as_slice().to_vec())
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
    type Record = Returned;
    type Caller = Caller;

    async fn organization(&self, name: &str) -> (String, Caller) {
        let org = self
            .organizations
            .create(&Actor::command_line(), DisplayName::parse(name).unwrap())
            .await
            .expect("create organization");
        let (_, secret) = self
            .api_keys
            .create(&Actor::command_line(), org.id, format!("{name}'s key"))
            .await
            .expect("create API key");
        let caller = self
            .api_keys
            .authenticate(&secret)
            .await
            .expect("the new key");
        (org.id.to_string(), caller)
    }

    async fn create(
        &self,
        caller: &Caller,
        destination: &str,
        data_types: &[DataType],
        request_id: Option<&str>,
    ) -> Result<Returned, Failure> {
        let new = NewConnection {
            destination: parse(destination, OrganizationId::parse)?,
            data_types: self::data_types(data_types)?,
            request_id: request_id.map(str::to_owned),
            message: None,
        };
        self.connections
            .create(caller, new)
            .await
            .map(Returned::from)
            .map_err(|err| failure(err, None))
    }

    async fn transition(
        &self,
        caller: &Caller,
        action: Action,
        id: &str,
        etag: Option<&str>,
        reason: Option<&str>,
        data_types: Option<&[DataType]>,
        request_id: Option<&str>,
    ) -> Result<Returned, Failure> {
        // The API has one request for both parties' updates: the service
        // is asked for the update, and tells a narrowing apart itself.
        let action = requested(action);
        let request = TransitionRequest {
            id: parse(id, ConnectionId::parse)?,
            action,
            etag: etag.map(str::to_owned),
            reason: reason.map(str::to_owned),
            message: None,
            data_types: data_types.map(self::data_types).transpose()?,
            request_id: request_id.map(str::to_owned),
        };
        self.connections
            .transition(caller, request)
            .await
            .map(Returned::from)
            .map_err(|err| failure(err, Some(action)))
    }

    async fn get(&self, caller: &Caller, id: &str) -> Result<Returned, Failure> {
        let id = parse(id, ConnectionId::parse)?;
        self.connections
            .get(caller.organization, id)
            .await
            .map(Returned::Record)
            .map_err(|err| failure(err, None))
    }

    async fn list(
        &self,
        caller: &Caller,
        filter: &Filter,
        page_size_: i32,
        page_token: Option<&str>,
    ) -> Result<Page<Returned>, Failure> {
        let filter = ListFilter {
            data_type: filter.data_type,
            role: filter.role,
            state: filter.state,
            counterparty: match &filter.counterparty {
                Some(id) => Some(parse(id, OrganizationId::parse)?),
                None => None,
            },
        };
        let page = self
            .connections
            .list(
                caller.organization,
                filter,
                page_size(page_size_)?,
                page_token,
            )
            .await
            .map_err(|err| failure(err, None))?;
        Ok(Page {
            items: page.items.into_iter().map(Returned::Record).collect(),
            next_page_token: page.next_page_token,
        })
    }

    async fn list_events(
        &self,
        caller: &Caller,
        id: &str,
        page_size_: i32,
        page_token: Option<&str>,
    ) -> Result<Page<SeenEvent>, Failure> {
        let id = parse(id, ConnectionId::parse)?;
        let page = self
            .connections
            .list_events(caller.organization, id, page_size(page_size_)?, page_token)
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
                    // The model makes no expiries: every change is a party's.
                    actor: e
                        .actor
                        .organization()
                        .map(|org| org.to_string())
                        .unwrap_or_default(),
                    actor_role: e.actor.role().unwrap_or(Role::Source),
                    reason: e.reason,
                    types: e
                        .data_types
                        .map(|change| EventTypes {
                            previous: listed(Some(&change.previous)),
                            previous_pending: listed(change.previous_pending.as_ref()),
                            current: listed(Some(&change.current)),
                            pending: listed(change.pending.as_ref()),
                        })
                        .unwrap_or_default(),
                })
                .collect(),
            next_page_token: page.next_page_token,
        })
    }

    fn seen(&self, returned: &Returned) -> Result<Seen, TestCaseError> {
        let r = match returned {
            Returned::Record(record) => record,
            Returned::Replayed(encoded) => return seen_response(encoded),
        };
        Ok(Seen {
            id: r.id.to_string(),
            source: r.parties.source.to_string(),
            destination: r.parties.destination.to_string(),
            state: r.state,
            version: Some(r.version),
            etag: r.etag(),
            data_types: r.data_types.as_slice().to_vec(),
            pending_data_types: listed(r.pending_data_types.as_ref()),
            ever_activated: r.activate_time.is_some(),
            ever_deactivated: r.deactivate_time.is_some(),
            deactivated_by: r.deactivated_by,
            deactivation_reason: r.deactivation_reason.clone(),
        })
    }
}

/// What a replayed response shows: the message the first call returned, as
/// the API encoded it (a replay shows no version).
fn seen_response(encoded: &[u8]) -> Result<Seen, TestCaseError> {
    let fail = |what: &str| TestCaseError::fail(format!("replayed response: {what}"));
    let c = proto::Connection::decode(encoded).map_err(|err| fail(&err.to_string()))?;
    let state = proto::ConnectionState::try_from(c.state)
        .ok()
        .and_then(convert::state)
        .ok_or_else(|| fail("state"))?;
    let data_types = |values: &[i32]| {
        values
            .iter()
            .map(|&t| {
                proto::DataType::try_from(t)
                    .ok()
                    .and_then(convert::data_type)
                    .ok_or_else(|| fail("data type"))
            })
            .collect::<Result<_, _>>()
    };
    let deactivated_by = proto::ConnectionRole::try_from(c.deactivated_by)
        .map(convert::role)
        .map_err(|_| fail("role"))?;
    Ok(Seen {
        id: c.id,
        source: c.source_organization_id,
        destination: c.destination_organization_id,
        state,
        version: None,
        etag: c.etag,
        data_types: data_types(&c.data_types)?,
        pending_data_types: data_types(&c.pending_data_types)?,
        ever_activated: c.activate_time.is_some(),
        ever_deactivated: c.deactivate_time.is_some(),
        deactivated_by,
        deactivation_reason: (!c.deactivation_reason.is_empty()).then_some(c.deactivation_reason),
    })
}
