//! The calls each benchmark line makes, and the check of every response.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use connections::proto::{
    ActivateConnectionRequest, BatchCheckAccessRequest, CheckAccessRequest, Connection,
    ConnectionState, CreateConnectionRequest, DataType, DeactivateConnectionRequest,
    GetConnectionRequest, ListConnectionsRequest, ReactivateConnectionRequest,
    access_service_client::AccessServiceClient, check_access_result,
    connection_service_client::ConnectionServiceClient,
};
use tonic::{
    Request,
    metadata::AsciiMetadataValue,
    transport::{Channel, Endpoint},
};

use crate::{
    hello::proto::{SayHelloRequest, hello_service_client::HelloServiceClient},
    load::{Call, call, code_of},
};

/// Several HTTP/2 connections to one server; calls are spread over them.
#[derive(Clone)]
pub struct Target {
    channels: Arc<Vec<Channel>>,
}

impl Target {
    /// Opens `connections` HTTP/2 connections to `url`.
    pub async fn connect(url: &str, connections: usize) -> anyhow::Result<Self> {
        let mut channels = Vec::with_capacity(connections);
        for _ in 0..connections.max(1) {
            let channel = Endpoint::from_shared(url.to_owned())?
                .tcp_nodelay(true)
                .connect()
                .await?;
            channels.push(channel);
        }
        Ok(Self {
            channels: Arc::new(channels),
        })
    }

    /// The channel for call `i`.
    pub fn channel(&self, i: u64) -> Channel {
        self.channels[(i % self.channels.len() as u64) as usize].clone()
    }

    /// A ConnectionService client for call `i`.
    pub fn connections(&self, i: u64) -> ConnectionServiceClient<Channel> {
        ConnectionServiceClient::new(self.channel(i))
    }
}

/// `authorization: Bearer <secret>`.
pub fn bearer(secret: &str) -> AsciiMetadataValue {
    format!("Bearer {secret}")
        .parse()
        .expect("API keys are ASCII")
}

/// `message` with the caller's credential attached.
pub fn authorized<T>(message: T, key: &AsciiMetadataValue) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", key.clone());
    request
}

/// Spreads call numbers over `0..len` in a fixed pseudo-random order.
pub fn scatter(i: u64, len: usize) -> usize {
    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 17) as usize % len
}

fn bad(what: impl std::fmt::Display) -> String {
    format!("bad response: {what}")
}

/// SayHello on the baseline server (with the same credential metadata the
/// service's calls carry, so requests are the same size on the wire).
pub fn hello(target: Target, key: AsciiMetadataValue) -> Call {
    call(move |i| {
        let mut client = HelloServiceClient::new(target.channel(i));
        let key = key.clone();
        async move {
            let request = authorized(
                SayHelloRequest {
                    name: "bench".to_owned(),
                },
                &key,
            );
            let reply = client.say_hello(request).await.map_err(|s| code_of(&s))?;
            if reply.into_inner().message != "Hello, bench!" {
                return Err(bad("greeting"));
            }
            Ok(())
        }
    })
}

/// CheckAccess of INQUIRY from `source` to bulk organization `n`, a random
/// one of `1..=count` (the source has connection `n` to each, ACTIVE or
/// PENDING, with INQUIRY): checks the connection that comes back, and that
/// access is allowed exactly when it is ACTIVE.
pub fn check_access(target: Target, key: AsciiMetadataValue, source: String, count: u64) -> Call {
    call(move |i| {
        let mut client = AccessServiceClient::new(target.channel(i));
        let key = key.clone();
        let n = 1 + scatter(i, usize::try_from(count).unwrap_or(usize::MAX)) as u64;
        let request = authorized(
            CheckAccessRequest {
                source_organization_id: source.clone(),
                destination_organization_id: crate::seed::organization_id(n),
                data_type: DataType::Inquiry.into(),
                at_least_change_token: String::new(),
            },
            &key,
        );
        async move {
            let reply = client
                .check_access(request)
                .await
                .map_err(|s| code_of(&s))?
                .into_inner();
            if reply.connection_id != crate::seed::connection_id(n) {
                return Err(bad("connection"));
            }
            let active = reply.state == ConnectionState::Active as i32;
            if reply.allowed != active || reply.change_token.is_empty() {
                return Err(bad("answer"));
            }
            Ok(())
        }
    })
}

/// BatchCheckAccess of `items` questions like [`check_access`]'s (INQUIRY
/// from `source` to bulk organizations at random among `1..=count`): checks
/// that every item is answered, in order, as a single check would be, and
/// that every answer carries the batch's change token. The IDs are written
/// out once, not per question, so that the generator spends its time on
/// calls.
pub fn batch_check_access(
    target: Target,
    key: AsciiMetadataValue,
    source: String,
    count: u64,
    items: usize,
) -> Call {
    // (destination organization, connection) of bulk organization n + 1.
    let bulk: Arc<Vec<(String, String)>> = Arc::new(
        (1..=count)
            .map(|n| {
                (
                    crate::seed::organization_id(n),
                    crate::seed::connection_id(n),
                )
            })
            .collect(),
    );
    call(move |i| {
        let mut client = AccessServiceClient::new(target.channel(i));
        let key = key.clone();
        let bulk = bulk.clone();
        let asked: Vec<usize> = (0..items as u64)
            .map(|k| scatter(i.wrapping_mul(items as u64).wrapping_add(k), bulk.len()))
            .collect();
        let request = authorized(
            BatchCheckAccessRequest {
                checks: asked
                    .iter()
                    .map(|&n| CheckAccessRequest {
                        source_organization_id: source.clone(),
                        destination_organization_id: bulk[n].0.clone(),
                        data_type: DataType::Inquiry.into(),
                        at_least_change_token: String::new(),
                    })
                    .collect(),
                at_least_change_token: String::new(),
            },
            &key,
        );
        async move {
            let reply = client
                .batch_check_access(request)
                .await
                .map_err(|s| code_of(&s))?
                .into_inner();
            if reply.results.len() != asked.len() || reply.change_token.is_empty() {
                return Err(bad("results"));
            }
            for (n, result) in asked.into_iter().zip(reply.results) {
                let answer = match result.result {
                    Some(check_access_result::Result::Response(answer)) => answer,
                    Some(check_access_result::Result::Error(status)) => {
                        return Err(bad(format!("item refused: {}", status.message)));
                    }
                    None => return Err(bad("an empty result")),
                };
                if answer.connection_id != bulk[n].1 {
                    return Err(bad("connection"));
                }
                let active = answer.state == ConnectionState::Active as i32;
                if answer.allowed != active || answer.change_token != reply.change_token {
                    return Err(bad("answer"));
                }
            }
            Ok(())
        }
    })
}

/// GetConnection of a random one of `ids`, checking the ID that comes back.
pub fn get(target: Target, key: AsciiMetadataValue, ids: Arc<Vec<String>>) -> Call {
    call(move |i| {
        let mut client = target.connections(i);
        let key = key.clone();
        let id = ids[scatter(i, ids.len())].clone();
        async move {
            let request = authorized(
                GetConnectionRequest {
                    connection_id: id.clone(),
                },
                &key,
            );
            let reply = client
                .get_connection(request)
                .await
                .map_err(|s| code_of(&s))?;
            match reply.into_inner().connection {
                Some(connection) if connection.id == id => Ok(()),
                _ => Err(bad("another connection")),
            }
        }
    })
}

/// One ListConnections page of `page_size`, from `page_token` (empty: the
/// first page), checking it is full and newest first.
pub fn list(target: Target, key: AsciiMetadataValue, page_size: i32, page_token: String) -> Call {
    list_filtered(target, key, page_size, page_token, None)
}

/// One ListConnections page of `page_size` of the connections in `state`:
/// checks it holds exactly `count` connections, newest first, and that a next
/// page is offered only when more connections remain.
pub fn list_in_state(
    target: Target,
    key: AsciiMetadataValue,
    page_size: i32,
    state: ConnectionState,
    count: usize,
) -> Call {
    list_filtered(target, key, page_size, String::new(), Some((state, count)))
}

fn list_filtered(
    target: Target,
    key: AsciiMetadataValue,
    page_size: i32,
    page_token: String,
    state: Option<(ConnectionState, usize)>,
) -> Call {
    call(move |i| {
        let mut client = target.connections(i);
        let key = key.clone();
        let page_token = page_token.clone();
        async move {
            let request = authorized(
                ListConnectionsRequest {
                    page_size,
                    page_token,
                    state: state.map_or(0, |(state, _)| state as i32),
                    ..Default::default()
                },
                &key,
            );
            let page = client
                .list_connections(request)
                .await
                .map_err(|s| code_of(&s))?
                .into_inner();
            // Without a state, the organizations have many pages.
            let (expected, more) = match state {
                Some((_, count)) => (count.min(page_size as usize), count > page_size as usize),
                None => (page_size as usize, true),
            };
            if page.connections.len() != expected || page.next_page_token.is_empty() == more {
                return Err(bad(format!(
                    "{} connections, next page token {}",
                    page.connections.len(),
                    if page.next_page_token.is_empty() {
                        "absent"
                    } else {
                        "present"
                    }
                )));
            }
            if let Some((state, _)) = state
                && page.connections.iter().any(|c| c.state != state as i32)
            {
                return Err(bad("a connection in another state"));
            }
            if !page.connections.windows(2).all(|w| w[0].id > w[1].id) {
                return Err(bad("not newest first"));
            }
            Ok(())
        }
    })
}

/// A connection in the write pool and the parties' credentials.
#[derive(Debug, Clone)]
pub struct PoolEntry {
    /// The connection, PENDING when the pool is made.
    pub id: String,
    /// The source organization's credential.
    pub source: AsciiMetadataValue,
    /// The destination organization's credential.
    pub destination: AsciiMetadataValue,
}

/// Connections no call is working on, each with the step it takes next.
type Idle = Mutex<VecDeque<(PoolEntry, u8)>>;

/// Activate (by the destination), Deactivate (by the destination, with a
/// reason), Reactivate (by the source), round and round, over many
/// connections. Each call takes a connection nobody is changing, so the calls
/// never race each other; every response must show the expected new state.
pub fn cycles(target: Target, pool: Vec<PoolEntry>) -> Call {
    observed_cycles(target, pool, None)
}

/// Sees the connection each successful write returns, as soon as it returns.
pub type Observer = Arc<dyn Fn(&Connection) + Send + Sync>;

/// [`cycles`], showing each successful write's connection to `observer`.
pub fn observed_cycles(target: Target, pool: Vec<PoolEntry>, observer: Option<Observer>) -> Call {
    let idle: Arc<Idle> = Arc::new(Mutex::new(pool.into_iter().map(|e| (e, 0)).collect()));
    call(move |i| {
        let mut client = target.connections(i);
        let idle = idle.clone();
        let observer = observer.clone();
        async move {
            let Some((entry, step)) = idle.lock().unwrap().pop_front() else {
                return Err("write pool exhausted".to_owned());
            };
            let id = entry.id.clone();
            let result = match step {
                0 => client
                    .activate_connection(authorized(
                        ActivateConnectionRequest {
                            connection_id: id,
                            ..Default::default()
                        },
                        &entry.destination,
                    ))
                    .await
                    .map(|r| (r.into_inner().connection, ConnectionState::Active)),
                1 => client
                    .deactivate_connection(authorized(
                        DeactivateConnectionRequest {
                            connection_id: id,
                            reason: "paused by the benchmark".to_owned(),
                            ..Default::default()
                        },
                        &entry.destination,
                    ))
                    .await
                    .map(|r| (r.into_inner().connection, ConnectionState::Inactive)),
                _ => client
                    .reactivate_connection(authorized(
                        ReactivateConnectionRequest {
                            connection_id: id,
                            ..Default::default()
                        },
                        &entry.source,
                    ))
                    .await
                    .map(|r| (r.into_inner().connection, ConnectionState::Pending)),
            };
            let outcome = match result {
                Ok((Some(connection), expected)) if connection.state() == expected => {
                    if let Some(observer) = &observer {
                        observer(&connection);
                    }
                    Ok(())
                }
                Ok(_) => Err(bad("unexpected state")),
                Err(status) => Err(code_of(&status)),
            };
            let next = if outcome.is_ok() {
                (step + 1) % 3
            } else {
                step
            };
            idle.lock().unwrap().push_back((entry, next));
            outcome
        }
    })
}

/// CreateConnection from one organization to a new destination each call,
/// `destination(n)` for n = 0, 1, 2, ...
pub fn create(
    target: Target,
    key: AsciiMetadataValue,
    destinations: u64,
    destination: fn(u64) -> String,
) -> Call {
    let next = Arc::new(AtomicU64::new(0));
    call(move |i| {
        let mut client = target.connections(i);
        let key = key.clone();
        let n = next.fetch_add(1, Ordering::Relaxed);
        async move {
            if n >= destinations {
                return Err("ran out of destination organizations".to_owned());
            }
            let destination = destination(n);
            let request = authorized(
                CreateConnectionRequest {
                    message: String::new(),
                    destination_organization_id: destination.clone(),
                    data_types: vec![DataType::Inquiry.into(), DataType::Account.into()],
                    request_id: String::new(),
                },
                &key,
            );
            let created = client
                .create_connection(request)
                .await
                .map_err(|s| code_of(&s))?
                .into_inner()
                .connection;
            match created {
                Some(Connection {
                    destination_organization_id,
                    state,
                    ..
                }) if destination_organization_id == destination
                    && state == ConnectionState::Pending as i32 =>
                {
                    Ok(())
                }
                _ => Err(bad("unexpected connection")),
            }
        }
    })
}
