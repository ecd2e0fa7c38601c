//! The traffic of an upgrade: rounds of calls that cover every RPC of the
//! previous release, each retry, next page and change token crossing from
//! one release to the other; and watchers that move between them.

use std::{
    collections::BTreeSet,
    sync::{Arc, LazyLock, Mutex, atomic::Ordering},
};

use connections::proto::{
    ActivateConnectionRequest, CheckAccessRequest, Connection, ConnectionEvent,
    ConnectionEventType, ConnectionRole, ConnectionState, CreateApiKeyRequest,
    CreateConnectionRequest, CreateConnectionResponse, CreateOrganizationRequest, DataType,
    GetConnectionRequest, GetOrganizationRequest, ListApiKeysRequest, ListConnectionEventsRequest,
    ListConnectionsRequest, ListOrganizationsRequest, RevokeApiKeyRequest,
    access_service_client::AccessServiceClient, admin_service_client::AdminServiceClient,
    connection_service_client::ConnectionServiceClient,
    organization_service_client::OrganizationServiceClient,
};
use prost::Message;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status, service::interceptor::InterceptedService, transport::Channel};
use tonic_types::StatusExt;

use super::{
    ACCESS_CHECK_TOKEN,
    fleet::{Fleet, Log, Release, Replica},
};
use crate::support::{
    ADMIN_TOKEN, Bearer, TestOrg,
    rpcs::{self, Encoded, Rpc},
    watching::{after, from_beginning},
};

type Authed = InterceptedService<Channel, Bearer>;

pub fn connections(on: &Replica, secret: &str) -> ConnectionServiceClient<Authed> {
    ConnectionServiceClient::with_interceptor(on.channel.clone(), Bearer::new(secret))
}

fn organizations(on: &Replica, secret: &str) -> OrganizationServiceClient<Authed> {
    OrganizationServiceClient::with_interceptor(on.channel.clone(), Bearer::new(secret))
}

fn admin(on: &Replica) -> AdminServiceClient<Authed> {
    AdminServiceClient::with_interceptor(on.channel.clone(), Bearer::new(ADMIN_TOKEN))
}

fn access(on: &Replica, secret: &str) -> AccessServiceClient<Authed> {
    AccessServiceClient::with_interceptor(on.channel.clone(), Bearer::new(secret))
}

/// A source organization and the connections its traffic made, oldest first.
pub struct Worker {
    pub source: TestOrg,
    pub connections: Mutex<Vec<String>>,
}

impl Worker {
    pub fn new(source: TestOrg) -> Self {
        Self {
            source,
            connections: Mutex::default(),
        }
    }
}

/// Passes `$result` (a call on `$on`) to `$log`; ends the round on failure.
macro_rules! ok {
    ($log:expr, $on:expr, $method:literal, $result:expr) => {
        match $log.ok(&$on, $method, $result) {
            Some(response) => response.into_inner(),
            None => return,
        }
    };
}

/// "previous to current", for [`Log::saw`].
pub fn route(from: &Replica, to: &Replica) -> String {
    format!("{} to {}", from.release.name(), to.release.name())
}

/// The RPC of the API named `method`.
fn rpc(method: &str) -> Rpc {
    static ALL: LazyLock<Vec<Rpc>> = LazyLock::new(rpcs::all);
    ALL.iter()
        .find(|rpc| rpc.method == method)
        .unwrap_or_else(|| panic!("no RPC {method}"))
        .clone()
}

/// A request of the transition `method` of the connection `id`: its etag
/// (none if empty), a new request_id, and a reason where it takes one.
fn transition(method: &str, id: &str, etag: &str) -> Encoded {
    let rpc = rpc(method);
    let request_id = format!("{method}-{}", uuid::Uuid::now_v7());
    let request = Encoded::default()
        .string(rpc.number("connection_id"), id)
        .string(rpc.number("etag"), etag)
        .string(rpc.number("request_id"), &request_id);
    match rpc.field("reason") {
        Some(reason) => request.string(reason, "upgrade traffic"),
        None => request,
    }
}

/// The write `request` (CreateConnection or a transition, with a
/// request_id) to `method` as `secret`, on `first`; then again, a retry,
/// on `retry`, which must answer the first call's response byte for byte.
/// Returns the connection and the change token it answered.
async fn written(
    log: &Log,
    (first, retry): (&Replica, &Replica),
    method: &'static str,
    request: Encoded,
    secret: &str,
) -> Option<(Connection, String)> {
    let rpc = rpc(method);
    let response = rpcs::call(&first.channel, &rpc, secret, request.clone()).await;
    let response = log.ok(first, method, response)?;
    let replayed = rpcs::call(&retry.channel, &rpc, secret, request).await;
    let replayed = log.ok(retry, method, replayed)?;
    let expected = match (first.release, retry.release) {
        (Release::Current, Release::Previous) => as_the_previous_release_knows_it(&response),
        _ => response.clone(),
    };
    log.check(replayed == expected, || {
        format!("{method} retried on {}: another response", retry.name)
    });
    log.saw(format!("request_id retry from {}", route(first, retry)));
    // Every write answers the connection (field 1) and its change token (2).
    let answer = CreateConnectionResponse::decode(response.as_slice()).unwrap();
    Some((answer.connection.unwrap_or_default(), answer.change_token))
}

/// A write's response as the previous release answers it on a retry: the
/// recorded response without the fields of Connection it does not know
/// (it decodes the record and encodes what it knows).
fn as_the_previous_release_knows_it(response: &[u8]) -> Vec<u8> {
    let mut answer = CreateConnectionResponse::decode(response).unwrap();
    if let Some(connection) = answer.connection.as_mut() {
        connection.invitation_message.clear();
        connection.expire_time = None;
    }
    answer.encode_to_vec()
}

/// Every item of a paged list, its pages read from `first` and `second` in
/// turn (so each page token goes to the other replica). `call` reads the
/// page at a token: its items and the next page's token.
pub async fn paged<T, F, Fut>(
    log: &Log,
    (first, second): (&Replica, &Replica),
    method: &'static str,
    call: F,
) -> Option<Vec<T>>
where
    F: Fn(&Replica, String) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, String), Status>>,
{
    let mut items = Vec::new();
    let mut page_token = String::new();
    for page in 0.. {
        let (on, from) = if page % 2 == 0 {
            (first, second)
        } else {
            (second, first)
        };
        let (page_items, next) = log.ok(on, method, call(on, page_token.clone()).await)?;
        if !page_token.is_empty() {
            log.saw(format!("page token from {}", route(from, on)));
        }
        items.extend(page_items);
        if next.is_empty() {
            break;
        }
        page_token = next;
    }
    Some(items)
}

/// One round of traffic for `worker`: a new destination organization, a
/// connection to it through its whole lifecycle, every read, and every
/// other RPC of the previous release; each retry, next page and change
/// token on a replica of the other release when both serve.
pub async fn round(fleet: &Fleet, worker: &Worker, n: usize) {
    let log = &fleet.log;
    let source = &worker.source;
    let x = fleet.pick();
    let y = fleet.pick_other(&x);
    let (x, y): (&Replica, &Replica) = (&x, &y);

    // AdminService: a destination organization and its key.
    let name = format!("destination {n} of {}", &source.id[..8]);
    let destination = ok!(
        log,
        x,
        "CreateOrganization",
        admin(x)
            .create_organization(CreateOrganizationRequest {
                display_name: name.clone(),
            })
            .await
    )
    .organization
    .unwrap();
    let key = ok!(
        log,
        y,
        "CreateApiKey",
        admin(y)
            .create_api_key(CreateApiKeyRequest {
                organization_id: destination.id.clone(),
                display_name: "traffic".to_owned(),
            })
            .await
    );
    let destination = TestOrg {
        id: destination.id,
        key_id: key.api_key.map(|k| k.id).unwrap_or_default(),
        key: key.secret,
    };

    // OrganizationService: the other party's, and its own.
    let found = ok!(
        log,
        x,
        "GetOrganization",
        organizations(x, &source.key)
            .get_organization(GetOrganizationRequest {
                organization_id: destination.id.clone(),
            })
            .await
    );
    log.check(
        found.organization.as_ref().map(|o| &o.display_name) == Some(&name),
        || format!("GetOrganization on {}: {found:?}", x.name),
    );
    let own = ok!(
        log,
        x,
        "GetOrganization",
        organizations(x, &destination.key)
            .get_organization(GetOrganizationRequest::default())
            .await
    );
    log.check(
        own.organization.map(|o| o.id) == Some(destination.id.clone()),
        || format!("GetOrganization of its own on {}", x.name),
    );
    log.saw(format!(
        "API key made on {} used on {}",
        y.release.name(),
        x.release.name()
    ));

    // The lifecycle, each write retried on the other replica.
    let create = Encoded::of(&CreateConnectionRequest {
        message: String::new(),
        destination_organization_id: destination.id.clone(),
        data_types: vec![DataType::Inquiry as i32, DataType::Account as i32],
        request_id: format!("create-{}", uuid::Uuid::now_v7()),
    });
    let Some((connection, created)) =
        written(log, (x, y), "CreateConnection", create, &source.key).await
    else {
        return;
    };
    worker
        .connections
        .lock()
        .unwrap()
        .push(connection.id.clone());

    let get = GetConnectionRequest {
        connection_id: connection.id.clone(),
    };
    let mut client = connections(y, &destination.key);
    let read = ok!(log, y, "GetConnection", client.get_connection(get).await)
        .connection
        .unwrap();
    log.check(
        read.etag == connection.etag && read.state == ConnectionState::Pending as i32,
        || {
            format!(
                "GetConnection on {}: {read:?}, written {connection:?}",
                y.name
            )
        },
    );

    // CheckAccess on `on` as `secret`, with the change token of a write
    // made on another replica (`after`), or without one: the answer may
    // then lag by the time the change takes to reach the replica's index,
    // so it must be consistent, not current.
    let check = async |on: &Replica, secret: &str, after: Option<(&Replica, &str)>, state| {
        let request = CheckAccessRequest {
            source_organization_id: source.id.clone(),
            destination_organization_id: destination.id.clone(),
            data_type: DataType::Inquiry as i32,
            at_least_change_token: after.map(|(_, token)| token.to_owned()).unwrap_or_default(),
        };
        let answered = access(on, secret).check_access(request).await;
        let Some(answer) = log.ok(on, "CheckAccess", answered) else {
            return;
        };
        let answer = answer.into_inner();
        // Without a token, the index may not hold the connection yet.
        let unknown = after.is_none() && answer.connection_id.is_empty();
        let consistent = answer.allowed == (answer.state == ConnectionState::Active as i32)
            && (answer.connection_id == connection.id || unknown);
        let current = after.is_none() || answer.state == state as i32;
        log.check(consistent && current, || {
            format!("CheckAccess on {} (after {state:?}): {answer:?}", on.name)
        });
        let credential = match secret {
            ADMIN_TOKEN => "the admin token",
            ACCESS_CHECK_TOKEN => "the access-check token",
            _ => "an API key",
        };
        let release = on.release.name();
        match after {
            Some((written_on, _)) => {
                log.saw(format!(
                    "change token from a write, used by CheckAccess, {}",
                    route(written_on, on)
                ));
                log.saw(format!(
                    "CheckAccess with a change token and {credential} on {release}"
                ));
            }
            None => log.saw(format!(
                "CheckAccess without a token and {credential} on {release}"
            )),
        }
    };
    let pending = ConnectionState::Pending;
    check(y, &destination.key, Some((x, &created)), pending).await;

    let activate = transition("ActivateConnection", &connection.id, &connection.etag);
    let written_by_destination = written(
        log,
        (y, x),
        "ActivateConnection",
        activate,
        &destination.key,
    )
    .await;
    let Some((_, activated)) = written_by_destination else {
        return;
    };
    let active = ConnectionState::Active;
    check(x, ACCESS_CHECK_TOKEN, Some((y, &activated)), active).await;
    check(y, ADMIN_TOKEN, None, active).await;

    let deactivate = transition("DeactivateConnection", &connection.id, "");
    let Some((deactivated, deactivated_at)) =
        written(log, (x, y), "DeactivateConnection", deactivate, &source.key).await
    else {
        return;
    };
    let inactive = ConnectionState::Inactive;
    check(y, &source.key, Some((x, &deactivated_at)), inactive).await;

    let reactivate = transition("ReactivateConnection", &connection.id, &deactivated.etag);
    let reactivated = written(log, (y, x), "ReactivateConnection", reactivate, &source.key).await;
    if reactivated.is_none() {
        return;
    }
    let again = ActivateConnectionRequest {
        connection_id: connection.id.clone(),
        ..Default::default()
    };
    let mut client = connections(x, &destination.key);
    ok!(
        log,
        x,
        "ActivateConnection",
        client.activate_connection(again).await
    );
    check(x, ACCESS_CHECK_TOKEN, None, active).await;

    // The history, two events a page.
    let list_events = |on: &Replica, page_token| {
        let mut client = connections(on, &destination.key);
        let request = ListConnectionEventsRequest {
            connection_id: connection.id.clone(),
            page_size: 2,
            page_token,
        };
        async move {
            let page = client.list_connection_events(request).await?.into_inner();
            Ok((page.events, page.next_page_token))
        }
    };
    let Some(events) = paged(log, (x, y), "ListConnectionEvents", list_events).await else {
        return;
    };
    let types: Vec<i32> = events.iter().map(|e| e.r#type).collect();
    let expected = [
        ConnectionEventType::Created,
        ConnectionEventType::Activated,
        ConnectionEventType::Deactivated,
        ConnectionEventType::Reactivated,
        ConnectionEventType::Activated,
    ]
    .map(|t| t as i32);
    log.check(types == expected, || {
        format!("the history of {}: {types:?}", connection.id)
    });

    // The source's connections, three a page: each of them once, newest first.
    let list_connections = |on: &Replica, page_token| {
        let mut client = connections(on, &source.key);
        let request = ListConnectionsRequest {
            role: ConnectionRole::Source as i32,
            page_size: 3,
            page_token,
            ..Default::default()
        };
        async move {
            let page = client.list_connections(request).await?.into_inner();
            Ok((page.connections, page.next_page_token))
        }
    };
    let Some(listed) = paged(log, (y, x), "ListConnections", list_connections).await else {
        return;
    };
    let listed: Vec<String> = listed.into_iter().map(|c| c.id).collect();
    let mut made = worker.connections.lock().unwrap().clone();
    made.reverse();
    log.check(listed == made, || {
        format!(
            "ListConnections of {}: {listed:?}, made {made:?}",
            source.id
        )
    });

    // The rest of the AdminService.
    let keys = ok!(
        log,
        y,
        "ListApiKeys",
        admin(y)
            .list_api_keys(ListApiKeysRequest {
                organization_id: destination.id.clone(),
            })
            .await
    );
    log.check(keys.api_keys.len() == 1, || {
        format!("ListApiKeys: {keys:?}")
    });
    if n.is_multiple_of(3) {
        let extra = ok!(
            log,
            x,
            "CreateApiKey",
            admin(x)
                .create_api_key(CreateApiKeyRequest {
                    organization_id: destination.id.clone(),
                    display_name: "to revoke".to_owned(),
                })
                .await
        );
        ok!(
            log,
            y,
            "RevokeApiKey",
            admin(y)
                .revoke_api_key(RevokeApiKeyRequest {
                    api_key_id: extra.api_key.unwrap().id,
                })
                .await
        );
        // Refused at once by the replica that revoked it.
        log.refused(
            y,
            "GetOrganization",
            organizations(y, &extra.secret)
                .get_organization(GetOrganizationRequest::default())
                .await,
            Code::Unauthenticated,
            "ERROR_REASON_API_KEY_INVALID",
        );
    }
    if n.is_multiple_of(4) {
        let list_organizations = |on: &Replica, page_token| {
            let mut client = admin(on);
            let request = ListOrganizationsRequest {
                page_size: 100,
                page_token,
            };
            async move {
                let page = client.list_organizations(request).await?.into_inner();
                Ok((page.organizations, page.next_page_token))
            }
        };
        let Some(organizations) = paged(log, (x, y), "ListOrganizations", list_organizations).await
        else {
            return;
        };
        let ids: BTreeSet<&str> = organizations.iter().map(|o| o.id.as_str()).collect();
        log.check(ids.len() == organizations.len(), || {
            "ListOrganizations listed an organization twice".to_owned()
        });
        log.check(ids.contains(destination.id.as_str()), || {
            "ListOrganizations missed a new organization".to_owned()
        });
    }
}

/// How a watcher moves between replicas.
#[derive(Debug, Clone, Copy)]
pub enum Plan {
    /// Stays on its replica until that one stops, then resumes on another.
    Stay,
    /// After this many events, resumes on a replica of the other release
    /// (if one serves) with its last token; and so on.
    Alternate(usize),
}

/// A watch of a source organization's events, from the beginning.
pub struct Watcher {
    pub name: String,
    pub org: TestOrg,
    pub plan: Plan,
    pub events: Mutex<Vec<ConnectionEvent>>,
}

impl Watcher {
    pub fn new(name: String, org: &TestOrg, plan: Plan) -> Self {
        Self {
            name,
            org: org.clone(),
            plan,
            events: Mutex::default(),
        }
    }
}

/// How a watch stream ended.
enum Ended {
    /// The watcher moves on to this replica.
    Moved(Arc<Replica>),
    /// With this status.
    Status(Status),
}

/// Follows `watcher`'s plan, from `first`, until `done`.
pub async fn watch(
    fleet: Arc<Fleet>,
    watcher: Arc<Watcher>,
    first: Arc<Replica>,
    done: CancellationToken,
) {
    let log = &fleet.log;
    let mut token: Option<String> = None;
    let mut on = first;
    loop {
        let request = match &token {
            None => from_beginning(),
            Some(token) => after(token),
        };
        let mut client = connections(&on, &watcher.org.key);
        let opened = tokio::select! {
            () = done.cancelled() => return,
            opened = client.watch_connection_events(request) => opened,
        };
        let mut stream = match opened {
            // Routed to a replica that stopped before the stream opened.
            Err(status) if on.stopping.load(Ordering::SeqCst) => {
                log.saw(format!(
                    "watch opened on a stopping replica, opened again: {:?}",
                    status.code()
                ));
                on = fleet.pick().0.clone();
                continue;
            }
            opened => match log.ok(&on, "WatchConnectionEvents", opened) {
                Some(stream) => stream.into_inner(),
                None => return,
            },
        };
        let mut leg = 0;
        let ended = loop {
            let message = tokio::select! {
                () = done.cancelled() => return,
                message = stream.message() => message,
            };
            match message {
                Ok(Some(message)) => {
                    token = Some(message.change_token);
                    if let Some(event) = message.event {
                        watcher.events.lock().unwrap().push(event);
                        leg += 1;
                    }
                    if let Plan::Alternate(events) = watcher.plan
                        && leg >= events
                    {
                        let other = fleet.pick_other(&on);
                        if other.release != on.release {
                            break Ended::Moved(other.0.clone());
                        }
                    }
                }
                Ok(None) => break Ended::Status(Status::ok("the stream ended with OK")),
                Err(status) => break Ended::Status(status),
            }
        };
        match ended {
            Ended::Moved(next) => {
                log.saw(format!(
                    "watch resumed with its last token, {}",
                    route(&on, &next)
                ));
                on = next;
            }
            Ended::Status(status)
                if on.stopping.load(Ordering::SeqCst)
                    && status.code() == Code::Unavailable
                    && status
                        .get_details_error_info()
                        .map(|info| info.reason)
                        .as_deref()
                        == Some("ERROR_REASON_SERVER_STOPPING") =>
            {
                let next = fleet.pick().0.clone();
                log.saw(format!(
                    "watch ended by the stop of {}, resumed with its last token on {}",
                    on.release.name(),
                    next.release.name()
                ));
                on = next;
            }
            Ended::Status(status) => {
                log.fail(format!("{} on {}: {status:?}", watcher.name, on.name));
                return;
            }
        }
    }
}

/// `(connection, sequence, event id)` of an event.
pub type Key = (String, i64, String);

/// The [`Key`] of each event.
pub fn keys(events: &[ConnectionEvent]) -> Vec<Key> {
    events
        .iter()
        .map(|e| (e.connection_id.clone(), e.sequence, e.id.clone()))
        .collect()
}
