use std::collections::HashSet;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use connections::proto::{
    ActivateConnectionRequest, ConnectionRole, ConnectionState, DeactivateConnectionRequest,
    ListConnectionEventsRequest, ListConnectionsRequest, ListConnectionsResponse,
};
use tonic::Code;

use crate::support::{TestApp, TestOrg, assert_error, spawn_app, violated_fields};

/// `hub` has 7 outbound and 5 inbound connections, created alternately.
async fn hub_with_connections(app: &TestApp) -> (TestOrg, Vec<TestOrg>, Vec<String>) {
    let hub = app.new_org("Hub").await;
    let mut others = Vec::new();
    let mut ids = Vec::new();
    for i in 0..12 {
        let other = app.new_org(&format!("Partner {i}")).await;
        let connection = if i % 2 == 0 || i >= 10 {
            app.connect(&hub, &other).await
        } else {
            app.connect(&other, &hub).await
        };
        ids.push(connection.id);
        others.push(other);
    }
    (hub, others, ids)
}

async fn list_all(app: &TestApp, org: &TestOrg, request: ListConnectionsRequest) -> Vec<String> {
    let mut client = app.connections(org);
    let mut ids = Vec::new();
    let mut token = String::new();
    for _ in 0..100 {
        let page = client
            .list_connections(ListConnectionsRequest {
                page_token: token.clone(),
                ..request.clone()
            })
            .await
            .unwrap()
            .into_inner();
        let limit = if request.page_size == 0 {
            50
        } else {
            request.page_size
        };
        assert!(page.connections.len() <= usize::try_from(limit).unwrap());
        ids.extend(page.connections.into_iter().map(|c| c.id));
        if page.next_page_token.is_empty() {
            return ids;
        }
        token = page.next_page_token;
    }
    panic!("pagination did not end");
}

#[tokio::test]
async fn pages_are_newest_first_and_never_repeat_or_skip_a_connection() {
    let app = spawn_app().await;
    let (hub, _, created) = hub_with_connections(&app).await;
    let newest_first: Vec<String> = created.iter().rev().cloned().collect();
    for page_size in [1, 3, 5, 12, 50] {
        let listed = list_all(
            &app,
            &hub,
            ListConnectionsRequest {
                page_size,
                ..Default::default()
            },
        )
        .await;
        assert_eq!(listed, newest_first, "page_size {page_size}");
    }
}

#[tokio::test]
async fn role_state_and_counterparty_filters_combine() {
    let app = spawn_app().await;
    let (hub, others, created) = hub_with_connections(&app).await;
    let outbound: Vec<String> = created
        .iter()
        .enumerate()
        .rev()
        .filter(|(i, _)| i % 2 == 0 || *i >= 10)
        .map(|(_, id)| id.clone())
        .collect();
    let inbound: Vec<String> = created
        .iter()
        .enumerate()
        .rev()
        .filter(|(i, _)| !(i % 2 == 0 || *i >= 10))
        .map(|(_, id)| id.clone())
        .collect();
    assert_eq!((outbound.len(), inbound.len()), (7, 5));

    let by_role = |role: ConnectionRole| ListConnectionsRequest {
        role: role as i32,
        page_size: 2,
        ..Default::default()
    };
    assert_eq!(
        list_all(&app, &hub, by_role(ConnectionRole::Source)).await,
        outbound
    );
    assert_eq!(
        list_all(&app, &hub, by_role(ConnectionRole::Destination)).await,
        inbound
    );

    // Activate two inbound connections (hub is their destination) and deactivate one outbound.
    let mut as_hub = app.connections(&hub);
    for id in &inbound[..2] {
        as_hub
            .activate_connection(ActivateConnectionRequest {
                connection_id: id.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    as_hub
        .deactivate_connection(DeactivateConnectionRequest {
            connection_id: outbound[0].clone(),
            ..Default::default()
        })
        .await
        .unwrap();

    let by_state = |state: ConnectionState| ListConnectionsRequest {
        state: state as i32,
        ..Default::default()
    };
    assert_eq!(
        list_all(&app, &hub, by_state(ConnectionState::Active)).await,
        inbound[..2]
    );
    assert_eq!(
        list_all(&app, &hub, by_state(ConnectionState::Inactive)).await,
        outbound[..1]
    );
    assert_eq!(
        list_all(&app, &hub, by_state(ConnectionState::Pending))
            .await
            .len(),
        9
    );
    assert!(
        list_all(
            &app,
            &hub,
            ListConnectionsRequest {
                role: ConnectionRole::Source as i32,
                state: ConnectionState::Active as i32,
                ..Default::default()
            }
        )
        .await
        .is_empty()
    );

    // Counterparty: partner 1 is a source towards the hub.
    let partner = &others[1];
    let with_partner = ListConnectionsRequest {
        counterparty_organization_id: partner.id.clone(),
        ..Default::default()
    };
    assert_eq!(
        list_all(&app, &hub, with_partner.clone()).await,
        [created[1].clone()]
    );
    let outbound_to_partner = ListConnectionsRequest {
        role: ConnectionRole::Source as i32,
        ..with_partner
    };
    assert!(list_all(&app, &hub, outbound_to_partner).await.is_empty());

    // The partner sees only its own connection.
    assert_eq!(
        list_all(&app, partner, ListConnectionsRequest::default()).await,
        [created[1].clone()]
    );
}

#[tokio::test]
async fn filtered_pages_of_two_busy_organizations_never_mix_repeat_or_skip() {
    let app = spawn_app().await;
    let (hub, _, created) = hub_with_connections(&app).await;
    // A second hub with the same pattern of connections and states, so the
    // two hubs' rows sit side by side in every (party[, state], id) index.
    let (other_hub, _, other_created) = hub_with_connections(&app).await;
    for (owner, ids) in [(&hub, &created), (&other_hub, &other_created)] {
        for (i, id) in ids.iter().enumerate() {
            // Activate every third connection the owner is the destination of.
            let outbound = i % 2 == 0 || i >= 10;
            if !outbound && i % 3 == 0 {
                app.activate(owner, id, "").await.unwrap();
            }
        }
    }
    let active = |ids: &[String]| -> Vec<String> {
        ids.iter()
            .enumerate()
            .rev()
            .filter(|(i, _)| !(i % 2 == 0 || *i >= 10) && i % 3 == 0)
            .map(|(_, id)| id.clone())
            .collect()
    };
    let pending = |ids: &[String]| -> Vec<String> {
        ids.iter()
            .enumerate()
            .rev()
            .filter(|(i, _)| (i % 2 == 0 || *i >= 10) || i % 3 != 0)
            .map(|(_, id)| id.clone())
            .collect()
    };
    for (owner, ids) in [(&hub, &created), (&other_hub, &other_created)] {
        for page_size in [1, 2, 5] {
            let request = |state: ConnectionState| ListConnectionsRequest {
                state: state as i32,
                page_size,
                ..Default::default()
            };
            assert_eq!(
                list_all(&app, owner, request(ConnectionState::Active)).await,
                active(ids),
                "active, page_size {page_size}"
            );
            assert_eq!(
                list_all(&app, owner, request(ConnectionState::Pending)).await,
                pending(ids),
                "pending, page_size {page_size}"
            );
            let everything = ListConnectionsRequest {
                page_size,
                ..Default::default()
            };
            let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
            assert_eq!(list_all(&app, owner, everything).await, newest_first);
        }
    }
}

async fn first_page(
    app: &TestApp,
    org: &TestOrg,
    request: ListConnectionsRequest,
) -> ListConnectionsResponse {
    app.connections(org)
        .list_connections(request)
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn altered_or_foreign_page_tokens_are_invalid_page_token() {
    let app = spawn_app().await;
    let (hub, others, _) = hub_with_connections(&app).await;
    let request = ListConnectionsRequest {
        page_size: 2,
        ..Default::default()
    };
    let token = first_page(&app, &hub, request.clone())
        .await
        .next_page_token;
    assert!(!token.is_empty());

    let mut raw = URL_SAFE_NO_PAD.decode(&token).unwrap();
    raw[3] ^= 0x01;
    let flipped = URL_SAFE_NO_PAD.encode(&raw);
    let mut truncated = token.clone();
    truncated.pop();
    let cases = [
        ("altered", hub.clone(), request.clone(), flipped),
        ("truncated", hub.clone(), request.clone(), truncated),
        (
            "garbage",
            hub.clone(),
            request.clone(),
            "not a token".to_owned(),
        ),
        (
            "oversized",
            hub.clone(),
            request.clone(),
            "A".repeat(10_000),
        ),
        (
            "other role filter",
            hub.clone(),
            ListConnectionsRequest {
                role: ConnectionRole::Source as i32,
                ..request.clone()
            },
            token.clone(),
        ),
        (
            "other state filter",
            hub.clone(),
            ListConnectionsRequest {
                state: ConnectionState::Pending as i32,
                ..request.clone()
            },
            token.clone(),
        ),
        (
            "other counterparty",
            hub.clone(),
            ListConnectionsRequest {
                counterparty_organization_id: others[0].id.clone(),
                ..request.clone()
            },
            token.clone(),
        ),
        (
            "other caller",
            others[0].clone(),
            request.clone(),
            token.clone(),
        ),
    ];
    for (name, caller, request, page_token) in cases {
        let status = app
            .connections(&caller)
            .list_connections(ListConnectionsRequest {
                page_token,
                ..request
            })
            .await
            .expect_err(name);
        assert_error(&status, Code::InvalidArgument, "INVALID_PAGE_TOKEN");
        assert_eq!(violated_fields(&status), ["page_token"], "{name}");
    }

    // A different page size with the same filters is fine.
    let next = app
        .connections(&hub)
        .list_connections(ListConnectionsRequest {
            page_size: 5,
            page_token: token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.connections.len(), 5);
}

#[tokio::test]
async fn page_size_zero_is_the_default_and_negative_is_invalid() {
    let app = spawn_app().await;
    let (hub, _, _) = hub_with_connections(&app).await;
    let all = first_page(&app, &hub, ListConnectionsRequest::default()).await;
    assert_eq!(all.connections.len(), 12);
    assert!(all.next_page_token.is_empty());

    let status = app
        .connections(&hub)
        .list_connections(ListConnectionsRequest {
            page_size: -1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_error(&status, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert_eq!(violated_fields(&status), ["page_size"]);

    let huge = first_page(
        &app,
        &hub,
        ListConnectionsRequest {
            page_size: i32::MAX,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(huge.connections.len(), 12);
}

#[tokio::test]
async fn unknown_filter_values_are_invalid_argument() {
    let app = spawn_app().await;
    let hub = app.new_org("Hub").await;
    let status = app
        .connections(&hub)
        .list_connections(ListConnectionsRequest {
            role: 7,
            state: 9,
            counterparty_organization_id: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_error(&status, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert_eq!(
        violated_fields(&status),
        ["role", "state", "counterparty_organization_id"]
    );
}

#[tokio::test]
async fn events_page_oldest_first_and_tokens_are_bound_to_the_connection() {
    let app = spawn_app().await;
    let source = app.new_org("S").await;
    let destination = app.new_org("D").await;
    let id = app.connect(&source, &destination).await.id;
    let other = app.connect(&destination, &source).await.id;
    for _ in 0..3 {
        app.activate(&destination, &id, "").await.unwrap();
        app.deactivate(&source, &id, "").await.unwrap();
        app.reactivate(&source, &id, "").await.unwrap();
    }
    let (mut s, mut d) = (app.connections(&source), app.connections(&destination));
    // 1 creation + 9 transitions, read 4 at a time by the destination.
    let mut sequences = Vec::new();
    let mut token = String::new();
    let mut first_token = None;
    loop {
        let page = d
            .list_connection_events(ListConnectionEventsRequest {
                connection_id: id.clone(),
                page_size: 4,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        sequences.extend(page.events.iter().map(|e| e.sequence));
        if page.next_page_token.is_empty() {
            break;
        }
        first_token.get_or_insert(page.next_page_token.clone());
        token = page.next_page_token;
    }
    assert_eq!(sequences, (1..=10).collect::<Vec<i64>>());
    let unique: HashSet<_> = sequences.iter().collect();
    assert_eq!(unique.len(), 10);

    let first_token = first_token.unwrap();
    // Another connection, or another caller, cannot use the token.
    let status = d
        .list_connection_events(ListConnectionEventsRequest {
            connection_id: other,
            page_size: 4,
            page_token: first_token.clone(),
        })
        .await
        .unwrap_err();
    assert_error(&status, Code::InvalidArgument, "INVALID_PAGE_TOKEN");
    let status = s
        .list_connection_events(ListConnectionEventsRequest {
            connection_id: id,
            page_size: 4,
            page_token: first_token,
        })
        .await
        .unwrap_err();
    assert_error(&status, Code::InvalidArgument, "INVALID_PAGE_TOKEN");
}

#[tokio::test]
async fn a_page_that_ends_exactly_at_the_last_item_has_no_next_page_token() {
    let app = spawn_app().await;
    let (hub, _, ids) = hub_with_connections(&app).await;
    // 12 connections in pages of 6, and in one page of 12: the page that
    // holds the last one says there is no more.
    for (role, count) in [
        (ConnectionRole::Unspecified, 12),
        (ConnectionRole::Source, 7),
        (ConnectionRole::Destination, 5),
    ] {
        let whole = first_page(
            &app,
            &hub,
            ListConnectionsRequest {
                role: role as i32,
                page_size: count,
                ..Default::default()
            },
        )
        .await;
        assert_eq!(whole.connections.len(), count as usize, "{role:?}");
        assert!(
            whole.next_page_token.is_empty(),
            "{role:?}: a token past the end"
        );
    }
    let first = first_page(
        &app,
        &hub,
        ListConnectionsRequest {
            page_size: 6,
            ..Default::default()
        },
    )
    .await;
    assert!(!first.next_page_token.is_empty());
    let second = first_page(
        &app,
        &hub,
        ListConnectionsRequest {
            page_size: 6,
            page_token: first.next_page_token,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(second.connections.len(), 6);
    assert!(second.next_page_token.is_empty(), "a token past the end");

    // A history of one event (CREATED), in pages of one.
    let id = &ids[0];
    assert_eq!(app.events(&hub, id).await.len(), 1);
    let page = app
        .connections(&hub)
        .list_connection_events(ListConnectionEventsRequest {
            connection_id: id.clone(),
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.events.len(), 1);
    assert!(page.next_page_token.is_empty(), "a token past the end");
}

#[tokio::test]
async fn a_data_type_filter_lists_the_active_connections_a_type_may_flow_over() {
    use connections::proto::{CreateConnectionRequest, DataType};
    let app = spawn_app().await;
    let hub = app.new_org("Hub").await;
    let mut expected_out = Vec::new();
    let mut expected_in = Vec::new();
    // Outbound: accounts on even partners; inbound: accounts on every third.
    for i in 0..9 {
        let partner = app.new_org(&format!("Partner {i}")).await;
        let types = if i % 2 == 0 {
            vec![DataType::Inquiry as i32, DataType::Account as i32]
        } else {
            vec![DataType::Transaction as i32]
        };
        let (source, destination) = if i % 3 == 0 {
            (&partner, &hub)
        } else {
            (&hub, &partner)
        };
        let connection = app
            .connections(source)
            .create_connection(CreateConnectionRequest {
                destination_organization_id: destination.id.clone(),
                data_types: types,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .connection
            .unwrap();
        // All but the last are activated.
        if i < 8 {
            app.activate(destination, &connection.id, "").await.unwrap();
            if i % 2 == 0 {
                if i % 3 == 0 {
                    expected_in.push(connection.id.clone());
                } else {
                    expected_out.push(connection.id.clone());
                }
            }
        }
    }
    expected_out.reverse();
    expected_in.reverse();
    let listed = |role: ConnectionRole| {
        list_all(
            &app,
            &hub,
            ListConnectionsRequest {
                role: role as i32,
                state: ConnectionState::Active as i32,
                data_type: DataType::Account as i32,
                page_size: 1,
                ..Default::default()
            },
        )
    };
    assert_eq!(listed(ConnectionRole::Source).await, expected_out);
    assert_eq!(listed(ConnectionRole::Destination).await, expected_in);
    // Without a state, the pending one counts too.
    let any_state = list_all(
        &app,
        &hub,
        ListConnectionsRequest {
            data_type: DataType::Account as i32,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(any_state.len(), expected_out.len() + expected_in.len() + 1);
    // A page token is bound to its filter.
    let page = app
        .connections(&hub)
        .list_connections(ListConnectionsRequest {
            data_type: DataType::Account as i32,
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let refused = app
        .connections(&hub)
        .list_connections(ListConnectionsRequest {
            data_type: DataType::Inquiry as i32,
            page_size: 1,
            page_token: page.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_error(&refused, Code::InvalidArgument, "INVALID_PAGE_TOKEN");
    let unknown = app
        .connections(&hub)
        .list_connections(ListConnectionsRequest {
            data_type: 99,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&unknown), ["data_type"]);
}
