//! Races across replicas and writers: many clients, two servers, one database.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use connections::{
    domain::{self, Action, Role, VariantArray},
    proto::{
        Connection, ConnectionEventType as Event, ConnectionRole, ConnectionState as State,
        CreateConnectionRequest, DataType, ListApiKeysRequest, ListConnectionsRequest,
        RevokeApiKeyRequest,
    },
};
use prost::Message;
use tonic::{Code, Status, transport::Channel};

use crate::support::{
    AppOptions, TestOrg, assert_error,
    clients::{Asked, connections_on, take},
    rng::TestRng,
    spawn_app_with, spawn_replicas,
};

/// Takes `action` on connection `id` as `org`. The data types of an update
/// are fixed, so that random updates, approvals and declines build on each
/// other: every connection is created sharing inquiries, an update by the
/// source (on an ACTIVE one, a proposal) adds accounts, and one by the
/// destination (a narrowing) keeps only inquiries.
async fn transition(
    channel: &Channel,
    org: &TestOrg,
    action: Action,
    id: &str,
    request_id: &str,
) -> Result<Connection, Status> {
    let data_types = match action {
        Action::UpdateDataTypes => vec![DataType::Inquiry, DataType::Account],
        _ => vec![DataType::Inquiry],
    };
    let asked = Asked {
        request_id: request_id.to_owned(),
        data_types,
        ..Asked::default()
    };
    let (connection, _) = take(&mut connections_on(channel, org), action, id, asked).await?;
    Ok(connection)
}

/// What one client saw.
#[derive(Default)]
struct Tally {
    calls: usize,
    /// Acknowledged transitions: (connection, request_id or a unique tag).
    acknowledged: HashSet<(String, String)>,
    codes: HashMap<Code, usize>,
    /// Attempts sent after an acknowledged attempt of the same request_id.
    replays_checked: usize,
}

/// Whether a history may hold this step: the creation, by the source, into
/// PENDING; or a transition the crate's own rules (`domain::transition`)
/// allow the actor's role, with the event of its action.
fn allowed(event: Event, from: State, to: State, role: ConnectionRole) -> bool {
    if event == Event::Created {
        return from == State::Unspecified
            && to == State::Pending
            && role == ConnectionRole::from(Role::Source);
    }
    Action::VARIANTS.iter().any(|&action| {
        let proposal = action == Action::UpdateDataTypes && event == Event::DataTypesProposed;
        (Event::from(action.event_type()) == event || proposal)
            && domain::ConnectionState::VARIANTS.iter().any(|&current| {
                State::from(current) == from
                    && Role::VARIANTS.iter().any(|&actor| {
                        ConnectionRole::from(actor) == role
                            && domain::transition(current, action, Some(actor), true)
                                .is_ok_and(|next| State::from(next) == to)
                    })
            })
    })
}

#[test]
fn allowed_steps_follow_the_domain_rules() {
    use ConnectionRole::{Destination, Source};
    use State::{Active, Inactive, Pending, Unspecified};
    #[rustfmt::skip]
    let steps = [
        (Event::Created, Unspecified, Pending, Source, true),
        (Event::Created, Unspecified, Pending, Destination, false),
        (Event::Activated, Pending, Active, Destination, true),
        (Event::Activated, Pending, Active, Source, false),
        (Event::Activated, Inactive, Active, Destination, false),
        (Event::Deactivated, Active, Inactive, Source, true),
        (Event::Deactivated, Active, Pending, Source, false),
        (Event::Reactivated, Inactive, Active, Source, false),
    ];
    for (event, from, to, role, expected) in steps {
        let step = (event, from, to, role);
        assert_eq!(allowed(event, from, to, role), expected, "{step:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_transitions_from_many_clients_on_two_replicas_keep_every_history_consistent() {
    const CLIENTS: usize = 16;
    const CALLS_PER_CLIENT: usize = 150;

    let replicas = spawn_replicas(
        2,
        AppOptions {
            max_connections: 12,
            ..AppOptions::default()
        },
    )
    .await;
    let orgs = [
        replicas[0].new_org("A").await,
        replicas[1].new_org("B").await,
        replicas[0].new_org("C").await,
    ];
    let pairs = [(0, 1), (1, 0), (0, 2), (2, 1), (1, 2)];
    let mut connections = Vec::new();
    for (source, destination) in pairs {
        let connection = replicas[source % 2]
            .connect(&orgs[source], &orgs[destination])
            .await;
        connections.push(connection.id);
    }

    let channels: Vec<Channel> = replicas.iter().map(|r| r.channel.clone()).collect();
    let rng = TestRng::new();
    let tasks = (0..CLIENTS).map(|client| {
        let channels = channels.clone();
        let orgs = orgs.clone();
        let connections = connections.clone();
        let mut rng = rng.fork(client as u64);
        tokio::spawn(async move {
            let mut tally = Tally::default();
            for call in 0..CALLS_PER_CLIENT {
                let id = &connections[rng.below(connections.len())];
                let org = &orgs[rng.below(orgs.len())];
                let action = Action::VARIANTS[rng.below(Action::VARIANTS.len())];
                // A third of the calls carry a request_id and are sent up to
                // three times, to either replica, as a client retrying would.
                let (request_id, attempts) = if rng.below(3) == 0 {
                    (format!("c{client}-{call}"), 1 + rng.below(3))
                } else {
                    (String::new(), 1)
                };
                // Once an attempt is acknowledged, every later attempt of the
                // same request_id must return that response byte for byte:
                // a failure, or another response, would be a fresh
                // evaluation. (Before that, a failed attempt changed nothing,
                // and the next one is evaluated afresh.)
                let mut acknowledged: Option<Vec<u8>> = None;
                for attempt in 0..attempts {
                    let channel = &channels[rng.below(channels.len())];
                    tally.calls += 1;
                    let mut result = transition(channel, org, action, id, &request_id).await;
                    // A database too busy to answer says so (UNAVAILABLE):
                    // send again, as a client would, until it answers.
                    for _ in 0..20 {
                        match &result {
                            Err(status) if status.code() == Code::Unavailable => {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                result = transition(channel, org, action, id, &request_id).await;
                            }
                            _ => break,
                        }
                    }
                    let code = result.as_ref().map_or_else(Status::code, |_| Code::Ok);
                    *tally.codes.entry(code).or_default() += 1;
                    assert!(
                        !matches!(code, Code::Internal | Code::Unknown),
                        "{result:?}"
                    );
                    if let Some(first) = &acknowledged {
                        match &result {
                            Ok(connection) => assert_eq!(
                                &connection.encode_to_vec(),
                                first,
                                "attempt {attempt} of {request_id}: replayed response differs"
                            ),
                            Err(status) => panic!(
                                "attempt {attempt} of {request_id}, after an acknowledged one, \
                                 was evaluated afresh: {status:?}"
                            ),
                        }
                    }
                    if let Ok(connection) = &result {
                        let tag = if request_id.is_empty() {
                            format!("untagged-{client}-{call}")
                        } else {
                            request_id.clone()
                        };
                        tally.acknowledged.insert((id.clone(), tag));
                        if acknowledged.is_none() {
                            acknowledged = Some(connection.encode_to_vec());
                            tally.replays_checked += attempts - 1 - attempt;
                        }
                    }
                }
            }
            tally
        })
    });
    let tallies = futures::future::join_all(tasks).await;

    let mut acknowledged: HashMap<String, usize> = HashMap::new();
    let mut codes: HashMap<Code, usize> = HashMap::new();
    let mut calls = 0;
    let mut replays_checked = 0;
    for tally in tallies {
        let tally = tally.expect("client task");
        calls += tally.calls;
        replays_checked += tally.replays_checked;
        for (id, _) in tally.acknowledged {
            *acknowledged.entry(id).or_default() += 1;
        }
        for (code, n) in tally.codes {
            *codes.entry(code).or_default() += n;
        }
    }
    assert!(calls >= CLIENTS * CALLS_PER_CLIENT);

    let mut events_checked = 0;
    for (i, id) in connections.iter().enumerate() {
        let (source, destination) = pairs[i];
        let app = &replicas[i % 2];
        let events = app.events(&orgs[source], id).await;
        events_checked += events.len();
        let mut state = State::Unspecified;
        // Every connection starts sharing inquiries; each change of the data
        // types starts where the one before it left them.
        let (mut data_types, mut pending) = (vec![DataType::Inquiry as i32], Vec::new());
        for (n, event) in events.iter().enumerate() {
            assert_eq!(event.sequence, n as i64 + 1, "gap in the history of {id}");
            if event.data_types.is_empty() {
                if event.r#type() == Event::Deactivated {
                    pending.clear();
                }
            } else {
                let before = (
                    &event.previous_data_types,
                    &event.previous_pending_data_types,
                );
                assert_eq!(
                    before,
                    (&data_types, &pending),
                    "{id} event {}",
                    event.sequence
                );
                data_types.clone_from(&event.data_types);
                pending.clone_from(&event.pending_data_types);
            }
            assert_eq!(event.from_state(), state, "{id} event {}", event.sequence);
            assert!(
                allowed(
                    event.r#type(),
                    event.from_state(),
                    event.to_state(),
                    event.actor_role()
                ),
                "{id}: disallowed step {event:?}"
            );
            let actor = if event.actor_role() == ConnectionRole::Source {
                &orgs[source]
            } else {
                &orgs[destination]
            };
            assert_eq!(event.actor_organization_id, actor.id);
            state = event.to_state();
        }
        let now = app.get(&orgs[destination], id).await;
        assert_eq!(now.state(), state);
        assert_eq!(
            (now.data_types, now.pending_data_types),
            (data_types, pending)
        );
        assert_eq!(
            events.len() - 1,
            acknowledged.get(id).copied().unwrap_or_default(),
            "transitions of {id} differ from acknowledged distinct requests"
        );
    }
    // Both kinds of outcome must have happened, or the test proved little.
    assert!(
        codes.get(&Code::Ok).copied().unwrap_or_default() > 100,
        "{codes:?}"
    );
    assert!(codes.len() > 2, "{codes:?}");
    assert!(
        replays_checked > 50,
        "only {replays_checked} retries of acknowledged calls"
    );
    println!(
        "race: {calls} calls, {replays_checked} retries of acknowledged calls, \
         {events_checked} events checked, outcomes {codes:?}"
    );
}

#[tokio::test]
async fn two_dozen_concurrent_creates_of_one_pair_across_replicas_give_one_connection() {
    let replicas = spawn_replicas(2, AppOptions::default()).await;
    let source = replicas[0].new_org("S").await;
    let destination = replicas[1].new_org("D").await;
    let calls = (0..24).map(|i| {
        let mut client = replicas[i % 2].connections(&source);
        let request = CreateConnectionRequest {
            message: String::new(),
            destination_organization_id: destination.id.clone(),
            data_types: vec![DataType::Transaction as i32],
            request_id: String::new(),
        };
        async move { client.create_connection(request).await }
    });
    let results = futures::future::join_all(calls).await;
    let created: Vec<_> = results.iter().filter(|r| r.is_ok()).collect();
    assert_eq!(created.len(), 1);
    for result in &results {
        if let Err(status) = result {
            assert_error(status, Code::AlreadyExists, "CONNECTION_ALREADY_EXISTS");
        }
    }
}

#[tokio::test]
async fn a_key_revoked_on_one_replica_stops_working_on_the_other_within_five_seconds() {
    let replicas = spawn_replicas(2, AppOptions::default()).await;
    let org = replicas[0].new_org("A").await;
    let mut on_other = replicas[1].connections(&org);
    on_other
        .list_connections(ListConnectionsRequest::default())
        .await
        .expect("the key works on both replicas");

    let mut admin = replicas[0].admin();
    let key = admin
        .list_api_keys(ListApiKeysRequest {
            organization_id: org.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .api_keys
        .remove(0);
    admin
        .revoke_api_key(RevokeApiKeyRequest { api_key_id: key.id })
        .await
        .unwrap();
    let revoked_at = tokio::time::Instant::now();

    loop {
        match on_other
            .list_connections(ListConnectionsRequest::default())
            .await
        {
            Err(status) => {
                assert_error(&status, Code::Unauthenticated, "API_KEY_INVALID");
                break;
            }
            Ok(_) => {
                assert!(
                    revoked_at.elapsed() < Duration::from_secs(5),
                    "revoked key still accepted after 5 s"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test]
async fn thirty_two_concurrent_writers_on_sqlite_never_see_busy_or_internal_errors() {
    const WRITERS: usize = 32;
    let app = spawn_app_with(AppOptions {
        sqlite: true,
        ..AppOptions::default()
    })
    .await;
    let hub = app.new_org("Hub").await;
    let mut partners = Vec::new();
    for i in 0..WRITERS {
        partners.push(app.new_org(&format!("Partner {i}")).await);
    }
    let writers = partners.iter().map(|partner| {
        let (app, hub) = (&app, &hub);
        async move {
            // Each writer creates its connection, then drives it around the
            // state machine: a dozen write transactions per writer.
            let id = app.connect(partner, hub).await.id;
            for _ in 0..3 {
                app.activate(hub, &id, "").await?;
                app.deactivate(partner, &id, "").await?;
                app.reactivate(partner, &id, "").await?;
            }
            app.activate(hub, &id, "").await?;
            Ok::<_, Status>(id)
        }
    });
    let results = futures::future::join_all(writers).await;
    for result in &results {
        if let Err(status) = result {
            panic!("a writer failed: {status:?}");
        }
    }
    for id in results.into_iter().map(Result::unwrap) {
        assert_eq!(app.get(&hub, &id).await.state(), State::Active);
        assert_eq!(app.events(&hub, &id).await.len(), 11);
    }
}
