//! Webhooks (SPEC section 10): endpoints managed by their organization,
//! deliveries signed as Standard Webhooks says (checked with its official
//! verifier), in order per connection, retried, disabled, recovered.

use std::time::Duration;

use connections::{
    config::WebhookOptions,
    domain::webhook::RetrySchedule,
    proto::{
        ConnectionEventType, CreateWebhookEndpointRequest, CreateWebhookEndpointResponse,
        DeleteWebhookEndpointRequest, GetWebhookEndpointRequest, ListConnectionEventsRequest,
        ListWebhookDeliveriesRequest, ListWebhookEndpointsRequest, RecoverWebhookDeliveriesRequest,
        RotateWebhookSecretRequest, UpdateWebhookEndpointRequest, WatchConnectionEventsRequest,
        WebhookDelivery, WebhookDeliveryOutcome, WebhookEndpoint,
    },
};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use tonic::Code;

use crate::support::{
    AppOptions, TestApp, TestOrg, assert_error, metric_sample,
    receiver::{Answer, Delivery, Receiver},
    require_postgres, spawn_app, spawn_app_with, unknown_id, violated_fields,
};

/// Creates an endpoint of `org` at `url` taking `types` (none: all).
async fn endpoint(
    app: &TestApp,
    org: &TestOrg,
    url: &str,
    types: &[ConnectionEventType],
) -> CreateWebhookEndpointResponse {
    app.webhooks(org)
        .create_webhook_endpoint(CreateWebhookEndpointRequest {
            url: url.to_owned(),
            description: "test receiver".to_owned(),
            event_types: types.iter().map(|&t| t as i32).collect(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// The delivery attempts recorded for an endpoint of `org`, newest first,
/// once there are at least `count` (at most 10 s): the receiver sees an
/// answer a moment before the server records it.
async fn attempts(
    app: &TestApp,
    org: &TestOrg,
    endpoint_id: &str,
    failed_only: bool,
    count: usize,
) -> Vec<WebhookDelivery> {
    let mut client = app.webhooks(org);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let attempts = client
            .list_webhook_deliveries(ListWebhookDeliveriesRequest {
                endpoint_id: endpoint_id.to_owned(),
                failed_only,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .deliveries;
        if attempts.len() >= count || tokio::time::Instant::now() > deadline {
            return attempts;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn types(deliveries: &[Delivery]) -> Vec<String> {
    deliveries.iter().map(Delivery::event_type).collect()
}

/// The server with webhook options changed by `change`.
async fn app_with(change: impl FnOnce(&mut WebhookOptions)) -> TestApp {
    let mut options = AppOptions::default();
    change(&mut options.webhooks);
    spawn_app_with(options).await
}

#[tokio::test]
async fn each_party_s_endpoint_receives_every_event_signed_in_order_with_the_event_as_body() {
    let app = spawn_app().await;
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let (to_source, to_destination) = (Receiver::start().await, Receiver::start().await);
    let source_secret = endpoint(&app, &source, &to_source.url("/hooks"), &[])
        .await
        .secret;
    let destination_secret = endpoint(&app, &destination, &to_destination.url("/"), &[])
        .await
        .secret;
    assert!(source_secret.starts_with("whsec_"), "{source_secret}");

    let id = app.connect(&source, &destination).await.id;
    app.activate(&destination, &id, "").await.unwrap();
    app.deactivate(&source, &id, "").await.unwrap();
    let last = app.reactivate(&source, &id, "").await.unwrap();

    let expected = [
        "connection.created",
        "connection.activated",
        "connection.deactivated",
        "connection.reactivated",
    ];
    let history = app
        .connections(&source)
        .list_connection_events(ListConnectionEventsRequest {
            connection_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    for (receiver, secret) in [
        (&to_source, &source_secret),
        (&to_destination, &destination_secret),
    ] {
        let delivered = receiver.wait_for_delivered(4).await;
        assert_eq!(types(&delivered), expected);
        for (delivery, event) in delivered.iter().zip(&history) {
            assert!(delivery.verifies_with(secret), "{delivery:?}");
            assert_eq!(delivery.id(), event.id, "webhook-id is the event's ID");
            assert_eq!(delivery.header("content-type"), "application/json");
            assert!(delivery.header("user-agent").starts_with("connections/"));
            let body = delivery.json();
            assert_eq!(body["data"]["event"]["id"], event.id.as_str());
            assert_eq!(body["data"]["event"]["connectionId"], id.as_str());
            assert_eq!(body["data"]["connection"]["id"], id.as_str());
            assert!(body["timestamp"].as_str().unwrap().ends_with('Z'), "{body}");
            assert!(
                body["data"]["change_token"]
                    .as_str()
                    .is_some_and(|t| !t.is_empty())
            );
        }
        assert!(
            !delivered[0].verifies_with(if secret == &source_secret {
                &destination_secret
            } else {
                &source_secret
            }),
            "another endpoint's secret does not verify"
        );
        let body = delivered[3].json();
        assert_eq!(
            body["data"]["event"]["type"],
            "CONNECTION_EVENT_TYPE_REACTIVATED"
        );
        assert_eq!(
            body["data"]["event"]["fromState"],
            "CONNECTION_STATE_INACTIVE"
        );
        assert_eq!(
            body["data"]["connection"]["state"],
            "CONNECTION_STATE_PENDING"
        );
        assert_eq!(body["data"]["connection"]["etag"], last.etag.as_str());
        assert_eq!(
            body["data"]["connection"]["deactivatedBy"],
            "CONNECTION_ROLE_SOURCE"
        );
    }
    assert!(to_source.requests().iter().all(|d| d.path == "/hooks"));
}

#[tokio::test]
async fn a_delivery_s_change_token_resumes_a_watch_just_after_its_event() {
    let app = spawn_app().await;
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let receiver = Receiver::start().await;
    endpoint(&app, &source, &receiver.url("/"), &[]).await;
    let id = app.connect(&source, &destination).await.id;
    app.activate(&destination, &id, "").await.unwrap();
    let delivered = receiver.wait_for_delivered(2).await;

    let token = delivered[0].json()["data"]["change_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut watch = app
        .connections(&source)
        .watch_connection_events(WatchConnectionEventsRequest {
            after_change_token: token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let next = loop {
        let message = watch.message().await.unwrap().unwrap();
        if let Some(event) = message.event {
            break event;
        }
    };
    assert_eq!(
        next.id,
        delivered[1].id(),
        "the watch goes on with the next event"
    );
}

#[tokio::test]
async fn an_endpoint_gets_only_its_types_only_its_organization_s_connections_and_only_later_events()
{
    let app = spawn_app().await;
    let (a, b, c) = (
        app.new_org("A").await,
        app.new_org("B").await,
        app.new_org("C").await,
    );
    let before = app.connect(&a, &b).await.id;
    let receiver = Receiver::start().await;
    endpoint(
        &app,
        &a,
        &receiver.url("/"),
        &[
            ConnectionEventType::Activated,
            ConnectionEventType::Activated,
        ],
    )
    .await;
    let others = app.connect(&b, &c).await.id;
    app.activate(&c, &others, "").await.unwrap();
    let after = app.connect(&c, &a).await.id;
    app.activate(&a, &after, "").await.unwrap();
    app.activate(&b, &before, "").await.unwrap();

    let delivered = receiver.wait_for_delivered(2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let delivered_ids: Vec<String> = receiver
        .requests()
        .iter()
        .map(Delivery::connection_id)
        .collect();
    assert_eq!(delivered_ids, [after, before], "{:?}", types(&delivered));
    assert_eq!(types(&delivered), ["connection.activated"; 2]);
}

#[tokio::test]
async fn endpoints_are_created_read_listed_changed_and_deleted_by_their_organization_only() {
    let app = spawn_app().await;
    let (owner, other) = (app.new_org("Owner").await, app.new_org("Other").await);
    let created = endpoint(&app, &owner, "http://127.0.0.1:9/first", &[]).await;
    let first = created.endpoint.unwrap();
    assert_eq!(first.organization_id, owner.id);
    assert_eq!(first.url, "http://127.0.0.1:9/first");
    assert!(!first.disabled);
    let second = endpoint(
        &app,
        &owner,
        "http://127.0.0.1:9/second",
        &[ConnectionEventType::Created],
    )
    .await
    .endpoint
    .unwrap();

    let mut client = app.webhooks(&owner);
    let got = client
        .get_webhook_endpoint(GetWebhookEndpointRequest {
            endpoint_id: first.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .endpoint
        .unwrap();
    assert_eq!(got, first);

    let page = client
        .list_webhook_endpoints(ListWebhookEndpointsRequest {
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.endpoints, std::slice::from_ref(&first));
    let rest = client
        .list_webhook_endpoints(ListWebhookEndpointsRequest {
            page_size: 1,
            page_token: page.next_page_token,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.endpoints, std::slice::from_ref(&second));
    assert!(rest.next_page_token.is_empty());

    let changed = client
        .update_webhook_endpoint(UpdateWebhookEndpointRequest {
            endpoint: Some(WebhookEndpoint {
                id: first.id.clone(),
                url: "http://127.0.0.1:9/moved".to_owned(),
                description: "ignored: not in the mask".to_owned(),
                disabled: true,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["url".to_owned(), "disabled".to_owned()],
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .endpoint
        .unwrap();
    assert_eq!(changed.url, "http://127.0.0.1:9/moved");
    assert!(changed.disabled);
    assert_eq!(changed.description, first.description);
    assert_ne!(changed.update_time, first.update_time);

    for mask in [vec![], vec!["secret".to_owned()]] {
        let refused = client
            .update_webhook_endpoint(UpdateWebhookEndpointRequest {
                endpoint: Some(WebhookEndpoint {
                    id: first.id.clone(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask { paths: mask }),
            })
            .await
            .unwrap_err();
        assert_error(&refused, Code::InvalidArgument, "INVALID_ARGUMENT");
        assert_eq!(violated_fields(&refused), ["update_mask"]);
    }

    // Another organization: as if it did not exist.
    let mut stranger = app.webhooks(&other);
    let not_found = stranger
        .get_webhook_endpoint(GetWebhookEndpointRequest {
            endpoint_id: first.id.clone(),
        })
        .await
        .unwrap_err();
    assert_error(&not_found, Code::NotFound, "WEBHOOK_ENDPOINT_NOT_FOUND");
    let not_found = stranger
        .delete_webhook_endpoint(DeleteWebhookEndpointRequest {
            endpoint_id: first.id.clone(),
        })
        .await
        .unwrap_err();
    assert_error(&not_found, Code::NotFound, "WEBHOOK_ENDPOINT_NOT_FOUND");
    let not_found = stranger
        .rotate_webhook_secret(RotateWebhookSecretRequest {
            endpoint_id: first.id.clone(),
        })
        .await
        .unwrap_err();
    assert_error(&not_found, Code::NotFound, "WEBHOOK_ENDPOINT_NOT_FOUND");
    assert!(
        stranger
            .list_webhook_endpoints(ListWebhookEndpointsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .endpoints
            .is_empty()
    );

    client
        .delete_webhook_endpoint(DeleteWebhookEndpointRequest {
            endpoint_id: first.id.clone(),
        })
        .await
        .unwrap();
    let gone = client
        .delete_webhook_endpoint(DeleteWebhookEndpointRequest {
            endpoint_id: first.id,
        })
        .await
        .unwrap_err();
    assert_error(&gone, Code::NotFound, "WEBHOOK_ENDPOINT_NOT_FOUND");
    let unknown = client
        .get_webhook_endpoint(GetWebhookEndpointRequest {
            endpoint_id: unknown_id(),
        })
        .await
        .unwrap_err();
    assert_error(&unknown, Code::NotFound, "WEBHOOK_ENDPOINT_NOT_FOUND");
}

#[tokio::test]
async fn a_retried_create_returns_the_same_endpoint_and_secret_and_the_limit_is_kept() {
    let app = app_with(|webhooks| webhooks.endpoints_per_organization = 2).await;
    let owner = app.new_org("Owner").await;
    let mut client = app.webhooks(&owner);
    let request = CreateWebhookEndpointRequest {
        url: "http://127.0.0.1:9/".to_owned(),
        request_id: "create-once".to_owned(),
        ..Default::default()
    };
    let first = client
        .create_webhook_endpoint(request.clone())
        .await
        .unwrap()
        .into_inner();
    let again = client
        .create_webhook_endpoint(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, first);
    let reused = client
        .create_webhook_endpoint(CreateWebhookEndpointRequest {
            url: "http://127.0.0.1:9/other".to_owned(),
            ..request
        })
        .await
        .unwrap_err();
    assert_error(&reused, Code::InvalidArgument, "REQUEST_ID_REUSED");

    endpoint(&app, &owner, "http://127.0.0.1:9/second", &[]).await;
    let over = client
        .create_webhook_endpoint(CreateWebhookEndpointRequest {
            url: "http://127.0.0.1:9/third".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_error(
        &over,
        Code::ResourceExhausted,
        "WEBHOOK_ENDPOINT_LIMIT_EXCEEDED",
    );
    let listed = client
        .list_webhook_endpoints(ListWebhookEndpointsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .endpoints;
    assert_eq!(listed.len(), 2, "nothing half-made is stored");
}

#[tokio::test]
async fn urls_into_the_server_s_own_network_are_refused_unless_allowed() {
    let app = app_with(|webhooks| webhooks.allow_private_addresses = false).await;
    let owner = app.new_org("Owner").await;
    let mut client = app.webhooks(&owner);
    let create = |url: &str| CreateWebhookEndpointRequest {
        url: url.to_owned(),
        ..Default::default()
    };
    for url in [
        "http://example.com/",
        "https://127.0.0.1/",
        "https://10.1.2.3/",
        "https://172.16.0.1/",
        "https://192.168.1.1/",
        "https://169.254.169.254/latest/meta-data",
        "https://100.64.0.1/",
        "https://0.0.0.0/",
        "https://224.0.0.1/",
        "https://[::1]/",
        "https://[fd00::1]/",
        "https://[fe80::1]/",
        "https://[::ffff:127.0.0.1]/",
        "https://localhost/",
        "https://api.localhost/",
    ] {
        let refused = client
            .create_webhook_endpoint(create(url))
            .await
            .unwrap_err();
        assert_error(&refused, Code::InvalidArgument, "WEBHOOK_URL_NOT_ALLOWED");
        assert_eq!(violated_fields(&refused), ["url"], "{url}");
    }
    for url in [
        "not a url",
        "https://user:pass@example.com/",
        "https://example.com/#fragment",
        "",
    ] {
        let refused = client
            .create_webhook_endpoint(create(url))
            .await
            .unwrap_err();
        assert_error(&refused, Code::InvalidArgument, "INVALID_ARGUMENT");
        assert_eq!(violated_fields(&refused), ["url"], "{url}");
    }
    let long = format!("https://example.com/{}", "a".repeat(2048));
    let refused = client
        .create_webhook_endpoint(create(&long))
        .await
        .unwrap_err();
    assert_error(&refused, Code::InvalidArgument, "INVALID_ARGUMENT");

    // The allow flag lets http and loopback through.
    let allowed = spawn_app().await;
    let owner = allowed.new_org("Owner").await;
    endpoint(&allowed, &owner, "http://127.0.0.1:9/", &[]).await;
}

#[tokio::test]
async fn a_failing_receiver_gets_the_connection_s_events_in_order_once_it_recovers() {
    let app = spawn_app().await;
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let receiver = Receiver::start().await;
    receiver.answer_with(|count, _| {
        if count < 3 {
            Answer::Status(500, Vec::new())
        } else {
            Answer::Status(204, Vec::new())
        }
    });
    let created = endpoint(&app, &source, &receiver.url("/"), &[]).await;
    let id = app.connect(&source, &destination).await.id;
    app.activate(&destination, &id, "").await.unwrap();

    let delivered = receiver.wait_for_delivered(2).await;
    assert_eq!(
        types(&delivered),
        ["connection.created", "connection.activated"]
    );
    let requests = receiver.requests();
    assert_eq!(
        requests.iter().map(Delivery::sequence).collect::<Vec<_>>(),
        [1, 1, 1, 1, 2],
        "the activation waits until the creation is delivered"
    );
    assert!(
        requests
            .windows(2)
            .all(|w| w[0].id() == w[1].id() || w[1].sequence() == 2)
    );
    assert!(
        requests[..4].windows(2).all(|w| w[0].body == w[1].body),
        "every attempt sends the same body"
    );

    let endpoint_id = created.endpoint.unwrap().id;
    let all = attempts(&app, &source, &endpoint_id, false, 5).await;
    assert_eq!(all.len(), 5, "{all:?}");
    // Newest first.
    assert_eq!(
        all.iter()
            .map(|d| (d.attempt, d.http_status, d.outcome()))
            .collect::<Vec<_>>(),
        [
            (1, 204, WebhookDeliveryOutcome::Succeeded),
            (4, 204, WebhookDeliveryOutcome::Succeeded),
            (3, 500, WebhookDeliveryOutcome::WillRetry),
            (2, 500, WebhookDeliveryOutcome::WillRetry),
            (1, 500, WebhookDeliveryOutcome::WillRetry),
        ]
    );
    assert!(all[2].next_attempt_time.is_some() && all[0].next_attempt_time.is_none());
    assert_eq!(all[2].error, "answer from the receiver");
    assert_eq!(all[4].event_id, requests[0].id());
    assert!(!all[4].change_token.is_empty());
    let failed = attempts(&app, &source, &endpoint_id, true, 3).await;
    assert_eq!(failed, all[2..]);
}

#[tokio::test]
async fn an_event_is_given_up_after_the_last_retry_and_the_connection_s_next_event_goes_on() {
    let app = spawn_app_with(AppOptions {
        metrics: true,
        ..AppOptions::default()
    })
    .await;
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let receiver = Receiver::start().await;
    // The creation fails every attempt (1 + 3 retries); the rest succeed.
    receiver.answer_with(|_, delivery| match delivery.sequence() {
        1 => Answer::Status(503, Vec::new()),
        _ => Answer::Status(200, Vec::new()),
    });
    let created = endpoint(&app, &source, &receiver.url("/"), &[]).await;
    let id = app.connect(&source, &destination).await.id;
    app.activate(&destination, &id, "").await.unwrap();
    let delivered = receiver.wait_for_delivered(1).await;
    assert_eq!(types(&delivered), ["connection.activated"]);
    assert_eq!(receiver.requests().len(), 5);
    let endpoint_id = created.endpoint.unwrap().id;
    attempts(&app, &source, &endpoint_id, false, 5).await;
    let failed = attempts(&app, &source, &endpoint_id, true, 4).await;
    assert_eq!(failed[0].attempt, 4);
    assert_eq!(failed[0].outcome(), WebhookDeliveryOutcome::GaveUp);
    let text = app.metrics_text().await;
    let attempts = |outcome: &str| {
        metric_sample(
            &text,
            &format!("webhook_delivery_attempts_total{{outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(attempts("will_retry"), Some(3.0), "{text}");
    assert_eq!(attempts("gave_up"), Some(1.0));
    assert_eq!(attempts("succeeded"), Some(1.0));
    assert_eq!(
        metric_sample(&text, "webhook_deliveries_in_flight"),
        Some(0.0)
    );
}

#[tokio::test]
async fn retry_after_on_429_is_honoured() {
    let app = spawn_app().await;
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let receiver = Receiver::start().await;
    receiver.answer_with(|count, _| match count {
        0 => Answer::Status(429, vec![("retry-after", "2".to_owned())]),
        _ => Answer::Status(200, Vec::new()),
    });
    endpoint(&app, &source, &receiver.url("/"), &[]).await;
    app.connect(&source, &destination).await;
    receiver.wait_for_delivered(1).await;
    let requests = receiver.requests();
    let waited = requests[1].at - requests[0].at;
    assert!(waited >= Duration::from_secs(2), "retried after {waited:?}");
}

#[tokio::test]
async fn gone_disables_the_endpoint_and_enabling_it_delivers_what_was_queued() {
    let app = spawn_app().await;
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let receiver = Receiver::start().await;
    receiver.answer_with(|count, _| match count {
        0 => Answer::Status(410, Vec::new()),
        _ => Answer::Status(200, Vec::new()),
    });
    let created = endpoint(&app, &source, &receiver.url("/"), &[]).await;
    let endpoint_id = created.endpoint.unwrap().id;
    let id = app.connect(&source, &destination).await.id;
    receiver
        .wait_until(Duration::from_secs(10), "the 410", |r| !r.is_empty())
        .await;
    let mut client = app.webhooks(&source);
    let disabled = loop {
        let endpoint = client
            .get_webhook_endpoint(GetWebhookEndpointRequest {
                endpoint_id: endpoint_id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .endpoint
            .unwrap();
        if endpoint.disabled {
            break endpoint;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(disabled.disabled_reason.contains("410"), "{disabled:?}");
    // Events keep being queued while it is disabled.
    app.activate(&destination, &id, "").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        receiver.requests().len(),
        1,
        "nothing is sent while disabled"
    );

    client
        .update_webhook_endpoint(UpdateWebhookEndpointRequest {
            endpoint: Some(WebhookEndpoint {
                id: endpoint_id,
                disabled: false,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["disabled".to_owned()],
            }),
        })
        .await
        .unwrap();
    let delivered = receiver.wait_for_delivered(2).await;
    assert_eq!(
        types(&delivered),
        ["connection.created", "connection.activated"]
    );
}

/// A server that gives up on an attempt after 500 ms and retries every
/// 100 ms.
async fn impatient_app() -> TestApp {
    app_with(|webhooks| {
        webhooks.timeout = Duration::from_millis(500);
        webhooks.retry_schedule = RetrySchedule::parse("100ms,100ms,100ms,100ms").unwrap();
    })
    .await
}

/// The attempts of `org`'s endpoint `created`, oldest first, once there
/// are `count`: each one's HTTP status, error class and outcome.
async fn outcomes(
    app: &TestApp,
    org: &TestOrg,
    created: &CreateWebhookEndpointResponse,
    count: usize,
) -> Vec<(i32, String, WebhookDeliveryOutcome)> {
    let id = &created.endpoint.as_ref().unwrap().id;
    let mut seen = attempts(app, org, id, false, count).await;
    seen.reverse();
    seen.iter()
        .map(|d| (d.http_status, d.error.clone(), d.outcome()))
        .collect()
}

#[tokio::test]
async fn a_redirect_is_a_failed_attempt_and_is_never_followed() {
    let app = impatient_app().await;
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let receiver = Receiver::start().await;
    let target = receiver.url("/elsewhere");
    receiver.answer_with(
        move |count, delivery| match (delivery.path.as_str(), count) {
            ("/elsewhere", _) => Answer::Status(200, Vec::new()),
            (_, 0) => Answer::Status(307, vec![("location", target.clone())]),
            _ => Answer::Status(200, Vec::new()),
        },
    );
    let created = endpoint(&app, &source, &receiver.url("/"), &[]).await;
    app.connect(&source, &destination).await;

    let delivered = receiver.wait_for_delivered(1).await;
    assert_eq!(delivered.len(), 1);
    assert!(
        receiver.requests().iter().all(|d| d.path == "/"),
        "the redirect was followed: {:?}",
        receiver.requests()
    );
    assert_eq!(
        outcomes(&app, &source, &created, 2).await,
        [
            (
                307,
                "answer from the receiver".to_owned(),
                WebhookDeliveryOutcome::WillRetry
            ),
            (200, String::new(), WebhookDeliveryOutcome::Succeeded),
        ]
    );
}

#[tokio::test]
async fn a_receiver_that_hangs_past_the_timeout_is_a_failed_attempt() {
    let app = impatient_app().await;
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let receiver = Receiver::start().await;
    receiver.answer_with(|count, _| match count {
        0 => Answer::Hang(Duration::from_secs(3)),
        _ => Answer::Status(200, Vec::new()),
    });
    let created = endpoint(&app, &source, &receiver.url("/"), &[]).await;
    app.connect(&source, &destination).await;

    let delivered = receiver.wait_for_delivered(1).await;
    assert_eq!(types(&delivered), ["connection.created"]);
    let seen = outcomes(&app, &source, &created, 2).await;
    assert_eq!(
        seen,
        [
            (0, "timeout".to_owned(), WebhookDeliveryOutcome::WillRetry),
            (200, String::new(), WebhookDeliveryOutcome::Succeeded),
        ]
    );
    // The second attempt went out after the timeout, not after the hang.
    let requests = receiver.requests();
    let waited = requests[1].at - requests[0].at;
    assert!(
        waited < Duration::from_secs(3),
        "the retry waited for the hang: {waited:?}"
    );
}

#[tokio::test]
async fn a_refused_connection_is_a_failed_attempt() {
    let app = impatient_app().await;
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let refused = endpoint(&app, &source, &format!("http://{closed}/"), &[]).await;
    app.connect(&source, &destination).await;

    let seen = outcomes(&app, &source, &refused, 2).await;
    assert!(seen.len() >= 2, "{seen:?}");
    for attempt in &seen {
        assert_eq!(
            attempt,
            &(0, "connect".to_owned(), WebhookDeliveryOutcome::WillRetry)
        );
    }
}

#[tokio::test]
async fn a_slow_body_does_not_hold_up_the_status_that_came_before_it() {
    let app = impatient_app().await;
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let receiver = Receiver::start().await;
    // 200 at once, then a body that takes four times the timeout.
    receiver.answer_with(|_, _| Answer::SlowBody(Duration::from_secs(2)));
    let created = endpoint(&app, &source, &receiver.url("/"), &[]).await;
    let id = app.connect(&source, &destination).await.id;
    app.activate(&destination, &id, "").await.unwrap();

    let delivered = receiver.wait_for_delivered(2).await;
    assert_eq!(
        types(&delivered),
        ["connection.created", "connection.activated"]
    );
    assert_eq!(
        outcomes(&app, &source, &created, 2).await,
        [
            (200, String::new(), WebhookDeliveryOutcome::Succeeded),
            (200, String::new(), WebhookDeliveryOutcome::Succeeded),
        ],
        "each delivered at its first attempt"
    );
}

#[tokio::test]
async fn after_a_rotation_both_secrets_verify_until_the_overlap_ends() {
    let app = app_with(|webhooks| webhooks.secret_overlap = Duration::from_secs(2)).await;
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let receiver = Receiver::start().await;
    let created = endpoint(&app, &source, &receiver.url("/"), &[]).await;
    let (old, endpoint_id) = (created.secret, created.endpoint.unwrap().id);
    let rotated = app
        .webhooks(&source)
        .rotate_webhook_secret(RotateWebhookSecretRequest {
            endpoint_id: endpoint_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(rotated.secret, old);
    assert!(rotated.previous_secret_expire_time.is_some());
    // The deliverer reads the endpoint again within a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let id = app.connect(&source, &destination).await.id;
    let during = receiver.wait_for_delivered(1).await;
    assert!(
        during[0].verifies_with(&old),
        "the previous secret still signs"
    );
    assert!(
        during[0].verifies_with(&rotated.secret),
        "the new one signs"
    );
    assert_eq!(during[0].header("webhook-signature").split(' ').count(), 2);

    tokio::time::sleep(Duration::from_secs(2)).await;
    app.activate(&destination, &id, "").await.unwrap();
    let after = receiver.wait_for_delivered(2).await;
    assert!(
        !after[1].verifies_with(&old),
        "the previous secret no longer signs"
    );
    assert!(after[1].verifies_with(&rotated.secret));
}

#[tokio::test]
async fn recovering_after_a_change_token_sends_every_later_event_again_with_the_same_id() {
    let app = spawn_app().await;
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let receiver = Receiver::start().await;
    let created = endpoint(&app, &source, &receiver.url("/"), &[]).await;
    let id = app.connect(&source, &destination).await.id;
    app.activate(&destination, &id, "").await.unwrap();
    app.deactivate(&destination, &id, "").await.unwrap();
    let first = receiver.wait_for_delivered(3).await;
    let endpoint_id = created.endpoint.unwrap().id;
    // Recorded too: an event still queued is not queued twice.
    attempts(&app, &source, &endpoint_id, false, 3).await;

    let after_creation = first[0].json()["data"]["change_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let recovered = app
        .webhooks(&source)
        .recover_webhook_deliveries(RecoverWebhookDeliveriesRequest {
            endpoint_id,
            after_change_token: after_creation,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(recovered.events_queued, 2);
    let all = receiver.wait_for_delivered(5).await;
    assert_eq!(all[3].id(), first[1].id());
    assert_eq!(all[4].id(), first[2].id());
    for (again, before) in all[3..].iter().zip(&first[1..]) {
        let (mut again, mut before) = (again.json(), before.json());
        // The change token may differ; everything else is the same.
        again["data"]["change_token"] = serde_json::Value::Null;
        before["data"]["change_token"] = serde_json::Value::Null;
        assert_eq!(again, before);
    }

    let invalid = app
        .webhooks(&source)
        .recover_webhook_deliveries(RecoverWebhookDeliveriesRequest {
            endpoint_id: unknown_id(),
            after_change_token: "not a token".to_owned(),
        })
        .await
        .unwrap_err();
    assert_error(&invalid, Code::InvalidArgument, "INVALID_CHANGE_TOKEN");
}

#[tokio::test]
async fn a_connection_whose_events_fail_does_not_hold_back_another_s() {
    let app = app_with(|webhooks| {
        webhooks.retry_schedule = RetrySchedule::parse(&["300ms"; 20].join(",")).unwrap();
    })
    .await;
    let (source, stuck, flowing) = (
        app.new_org("S").await,
        app.new_org("Stuck").await,
        app.new_org("Flowing").await,
    );
    let stuck_id = app.connect(&source, &stuck).await.id;
    let receiver = Receiver::start().await;
    let failing = stuck_id.clone();
    receiver.answer_with(move |_, delivery| {
        if delivery.connection_id() == failing {
            Answer::Status(500, Vec::new())
        } else {
            Answer::Status(200, Vec::new())
        }
    });
    endpoint(&app, &source, &receiver.url("/"), &[]).await;
    app.activate(&stuck, &stuck_id, "").await.unwrap();
    receiver
        .wait_until(
            Duration::from_secs(10),
            "the stuck connection's first attempt",
            |r| !r.is_empty(),
        )
        .await;
    let flowing_id = app.connect(&source, &flowing).await.id;
    app.activate(&flowing, &flowing_id, "").await.unwrap();
    let delivered = receiver.wait_for_delivered(2).await;
    assert!(delivered.iter().all(|d| d.connection_id() == flowing_id));
    assert_eq!(
        types(&delivered),
        ["connection.created", "connection.activated"]
    );
    assert!(
        receiver
            .requests()
            .iter()
            .filter(|d| d.connection_id() == stuck_id)
            .all(|d| d.sequence() == 2),
        "the stuck connection's event is retried meanwhile, nothing after it"
    );
}

#[tokio::test]
async fn an_endpoint_failing_every_attempt_for_long_enough_is_disabled_keeping_its_queue() {
    let app = app_with(|webhooks| {
        webhooks.retry_schedule = RetrySchedule::parse(&["100ms"; 20].join(",")).unwrap();
        webhooks.disable_after = Duration::from_millis(700);
    })
    .await;
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let receiver = Receiver::start().await;
    receiver.answer_with(|_, _| Answer::Status(502, Vec::new()));
    let endpoint_id = endpoint(&app, &source, &receiver.url("/"), &[])
        .await
        .endpoint
        .unwrap()
        .id;
    app.connect(&source, &destination).await;
    let mut client = app.webhooks(&source);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let disabled = loop {
        let endpoint = client
            .get_webhook_endpoint(GetWebhookEndpointRequest {
                endpoint_id: endpoint_id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .endpoint
            .unwrap();
        if endpoint.disabled || tokio::time::Instant::now() > deadline {
            break endpoint;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(disabled.disabled, "still enabled after 10 s");
    assert!(
        disabled
            .disabled_reason
            .contains("every delivery attempt failed since"),
        "{disabled:?}"
    );
    let attempts_then = receiver.requests().len();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        receiver.requests().len(),
        attempts_then,
        "no attempt while disabled"
    );

    receiver.answer_with(|_, _| Answer::Status(200, Vec::new()));
    client
        .update_webhook_endpoint(UpdateWebhookEndpointRequest {
            endpoint: Some(WebhookEndpoint {
                id: endpoint_id,
                disabled: false,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["disabled".to_owned()],
            }),
        })
        .await
        .unwrap();
    let delivered = receiver.wait_for_delivered(1).await;
    assert_eq!(types(&delivered), ["connection.created"]);
}

#[tokio::test]
async fn a_new_endpoint_s_first_event_is_sent_at_once() {
    let app = spawn_app().await;
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let receiver = Receiver::start().await;
    endpoint(&app, &source, &receiver.url("/"), &[]).await;
    let written = std::time::Instant::now();
    app.connect(&source, &destination).await;
    let delivered = receiver.wait_for_delivered(1).await;
    let took = delivered[0].at - written;
    assert!(took < Duration::from_millis(500), "took {took:?}");
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set TEST_DATABASE_URL and pass --include-ignored"]
async fn a_postgres_server_without_a_key_file_refuses_to_make_secrets_and_says_how_to_fix_it() {
    let (server, _) = require_postgres();
    let mut options = AppOptions {
        postgres_server: Some(server),
        ..AppOptions::default()
    };
    options.webhooks.key_file = None;
    let app = spawn_app_with(options).await;
    let owner = app.new_org("Owner").await;
    let mut client = app.webhooks(&owner);
    let refused = client
        .create_webhook_endpoint(CreateWebhookEndpointRequest {
            url: "http://127.0.0.1:9/".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_error(
        &refused,
        Code::FailedPrecondition,
        "WEBHOOKS_NOT_CONFIGURED",
    );
    assert!(
        refused.message().contains("--webhook-key-file"),
        "{}",
        refused.message()
    );
    // Nothing was stored; reading works as ever.
    let listed = client
        .list_webhook_endpoints(ListWebhookEndpointsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.endpoints.is_empty());
    // No secret of the server's own was kept in the database either.
    let kept = app
        .server_db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT count(*) AS n FROM server_secrets WHERE name LIKE 'webhook%'",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get::<i64>("", "n")
        .unwrap();
    assert_eq!(kept, 0);
}
