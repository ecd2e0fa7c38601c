use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use connections::{
    proto::{
        GetConnectionRequest, GetOrganizationRequest, ListApiKeysRequest, ListConnectionsRequest,
        RevokeApiKeyRequest, WatchConnectionEventsRequest,
        organization_service_client::OrganizationServiceClient,
    },
    service::api_keys::{NEW_KEY_LOOKUPS_PER_SECOND, VERIFIED_KEY_TTL},
};
use tonic::{Code, Request};
use tonic_types::StatusExt;

use crate::support::{Bearer, assert_error, rng::TestRng, spawn_app};

#[tokio::test]
async fn a_call_without_credentials_is_unauthenticated_api_key_missing() {
    let app = spawn_app().await;
    let status = app
        .connections_with(Bearer::none())
        .list_connections(ListConnectionsRequest::default())
        .await
        .unwrap_err();
    assert_error(&status, Code::Unauthenticated, "API_KEY_MISSING");
}

#[tokio::test]
async fn unknown_or_malformed_keys_are_unauthenticated_api_key_invalid() {
    let app = spawn_app().await;
    let org = app.new_org("A").await;
    let mut tampered = org.key.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    for secret in [
        "cnx_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned(),
        tampered,
        "not-even-our-format".to_owned(),
        format!("cnx_{}", "A".repeat(100_000 / 8)),
    ] {
        let status = app
            .connections_with(Bearer::new(&secret))
            .list_connections(ListConnectionsRequest::default())
            .await
            .unwrap_err();
        assert_error(&status, Code::Unauthenticated, "API_KEY_INVALID");
    }

    // Not a bearer credential at all.
    let mut request = Request::new(ListConnectionsRequest::default());
    request.metadata_mut().insert(
        "authorization",
        format!("Basic {}", org.key).parse().unwrap(),
    );
    let status = app
        .connections_with(Bearer::none())
        .list_connections(request)
        .await
        .unwrap_err();
    assert_error(&status, Code::Unauthenticated, "API_KEY_INVALID");
}

/// Each credential mistake says what is wrong, and ends with its reason.
#[tokio::test]
async fn each_credential_mistake_has_a_message_of_its_own() {
    let app = spawn_app().await;
    let org = app.new_org("A").await;
    let revoked = app.new_key(&org, "old").await;
    app.admin()
        .revoke_api_key(RevokeApiKeyRequest {
            api_key_id: revoked.key_id.clone(),
        })
        .await
        .unwrap();
    let with_authorization = |value: String| {
        let mut request = Request::new(ListConnectionsRequest::default());
        request
            .metadata_mut()
            .insert("authorization", value.parse().unwrap());
        request
    };
    let cases = [
        (
            None,
            "API_KEY_MISSING",
            "missing credentials: send the metadata \"authorization: Bearer <API key>\"",
        ),
        (
            Some(org.key.clone()),
            "API_KEY_INVALID",
            "the authorization metadata must be \"Bearer <API key>\"",
        ),
        (
            Some(format!("Bearer {}", &org.key[..20])),
            "API_KEY_INVALID",
            "the API key is malformed",
        ),
        (
            Some(format!("Bearer cnx_{}", "A".repeat(43))),
            "API_KEY_INVALID",
            "the API key is not valid: it is unknown or revoked",
        ),
        (
            Some(format!("Bearer {}", revoked.key)),
            "API_KEY_INVALID",
            "the API key is not valid: it is unknown or revoked",
        ),
        (
            Some(format!("Bearer {}", crate::support::ADMIN_TOKEN)),
            "API_KEY_INVALID",
            "this is the admin token, which only AdminService takes",
        ),
    ];
    for (authorization, reason, message) in cases {
        let request = match authorization {
            Some(value) => with_authorization(value),
            None => Request::new(ListConnectionsRequest::default()),
        };
        let status = app
            .connections_with(Bearer::none())
            .list_connections(request)
            .await
            .unwrap_err();
        assert_error(&status, Code::Unauthenticated, reason);
        assert!(
            status.message().starts_with(message),
            "{:?} does not start with {message:?}",
            status.message()
        );
        assert!(
            status
                .message()
                .ends_with(&format!("(ERROR_REASON_{reason})")),
            "{:?}",
            status.message()
        );
    }

    // AdminService: an organization's key, another token, no token.
    for (bearer, message) in [
        (
            Bearer::new(&org.key),
            "this is an organization's API key; AdminService takes the admin token",
        ),
        (
            Bearer::new("some-other-token-of-enough-length-0123"),
            "the admin token is not valid",
        ),
        (
            Bearer::none(),
            "missing credentials: send the metadata \"authorization: Bearer <admin token>\"",
        ),
    ] {
        let status = app
            .admin_with(bearer)
            .list_api_keys(ListApiKeysRequest {
                organization_id: org.id.clone(),
            })
            .await
            .unwrap_err();
        assert_error(&status, Code::Unauthenticated, "ADMIN_TOKEN_INVALID");
        assert!(
            status.message().starts_with(message),
            "{:?}",
            status.message()
        );
    }
    let without_admin = crate::support::spawn_app_with(crate::support::AppOptions {
        admin_token: None,
        ..Default::default()
    })
    .await;
    let status = without_admin
        .admin()
        .list_api_keys(ListApiKeysRequest {
            organization_id: org.id.clone(),
        })
        .await
        .unwrap_err();
    assert_error(&status, Code::Unauthenticated, "ADMIN_TOKEN_INVALID");
    assert!(
        status
            .message()
            .starts_with("this server has no admin token configured, so AdminService is disabled"),
        "{:?}",
        status.message()
    );
}

#[tokio::test]
async fn unauthenticated_callers_learn_nothing_about_their_request() {
    let app = spawn_app().await;
    // A malformed request without credentials: authentication is checked first.
    let status = app
        .connections_with(Bearer::none())
        .list_connections(ListConnectionsRequest {
            page_size: -5,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_error(&status, Code::Unauthenticated, "API_KEY_MISSING");
}

#[tokio::test]
async fn a_revoked_key_stops_working_at_once() {
    let app = spawn_app().await;
    let org = app.new_org("A").await;
    let mut client = app.connections(&org);
    client
        .list_connections(ListConnectionsRequest::default())
        .await
        .expect("key works before revocation");

    let mut admin = app.admin();
    let keys = admin
        .list_api_keys(ListApiKeysRequest {
            organization_id: org.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .api_keys;
    assert_eq!(keys.len(), 1);
    assert!(org.key.starts_with(&keys[0].prefix));
    admin
        .revoke_api_key(RevokeApiKeyRequest {
            api_key_id: keys[0].id.clone(),
        })
        .await
        .unwrap();

    let status = client
        .list_connections(ListConnectionsRequest::default())
        .await
        .unwrap_err();
    assert_error(&status, Code::Unauthenticated, "API_KEY_INVALID");
    let status = app
        .organizations(&org)
        .get_organization(GetOrganizationRequest::default())
        .await
        .unwrap_err();
    assert_error(&status, Code::Unauthenticated, "API_KEY_INVALID");
}

#[tokio::test]
async fn api_keys_are_long_random_and_prefixed() {
    let app = spawn_app().await;
    let a = app.new_org("A").await;
    let b = app.new_org("B").await;
    for key in [&a.key, &b.key] {
        assert!(key.starts_with("cnx_"));
        // 32 random bytes in base64url: 43 characters, 256 bits.
        assert_eq!(key.len(), 4 + 43);
    }
    assert_ne!(a.key, b.key);
}

#[tokio::test]
async fn a_flood_of_random_keys_costs_a_bounded_number_of_lookups_and_locks_out_no_known_caller() {
    let app = spawn_app().await;
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let connection = app.connect(&source, &destination).await;
    let lookups_before = app.api_keys.lookups();
    let started = Instant::now();

    // 200 concurrent callers, each presenting a new well-formed random key
    // per call, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let rng = TestRng::new();
    let flood: Vec<_> = (0..200)
        .map(|i| {
            let (channel, stop, mut rng) = (app.channel.clone(), stop.clone(), rng.fork(i));
            tokio::spawn(async move {
                let (mut invalid, mut throttled) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("cnx_{}", URL_SAFE_NO_PAD.encode(rng.bytes(32)));
                    let status = OrganizationServiceClient::with_interceptor(
                        channel.clone(),
                        Bearer::new(&key),
                    )
                    .get_organization(GetOrganizationRequest::default())
                    .await
                    .expect_err("a random key is refused");
                    let reason = status
                        .get_details_error_info()
                        .map(|info| info.reason)
                        .unwrap_or_default();
                    match (status.code(), reason.as_str()) {
                        (Code::Unauthenticated, "ERROR_REASON_API_KEY_INVALID") => invalid += 1,
                        (Code::Unavailable, "ERROR_REASON_AUTHENTICATION_THROTTLED") => {
                            throttled += 1
                        }
                        _ => panic!("unexpected refusal: {status:?}"),
                    }
                }
                (invalid, throttled)
            })
        })
        .collect();

    // Meanwhile a known caller keeps working, also after its verification
    // expired and its key had to be looked up again.
    let mut client = app.connections(&source);
    let mut calls = 0;
    while started.elapsed() < VERIFIED_KEY_TTL * 2 + Duration::from_millis(500) {
        client
            .get_connection(GetConnectionRequest {
                connection_id: connection.id.clone(),
            })
            .await
            .expect("a known caller is served during the flood");
        calls += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (mut invalid, mut throttled) = (0, 0);
    for task in flood {
        let (i, t) = task.await.unwrap();
        invalid += i;
        throttled += t;
    }
    let elapsed = started.elapsed();

    let lookups = app.api_keys.lookups() - lookups_before;
    // The limit's burst and rate over the flood's lifetime, and one lookup
    // of the known key per verification period.
    let bound = u64::from(NEW_KEY_LOOKUPS_PER_SECOND) * (elapsed.as_secs() + 2)
        + elapsed.as_secs() / VERIFIED_KEY_TTL.as_secs()
        + 2;
    assert!(
        lookups <= bound,
        "{lookups} lookups for {invalid} invalid and {throttled} throttled calls in {elapsed:?}"
    );
    assert!(throttled > 0, "the flood never reached the limit");
    println!(
        "{lookups} lookups for {invalid} invalid and {throttled} throttled calls in {elapsed:?}; {calls} known calls"
    );
    assert!(calls > 10, "{calls}");
}

#[tokio::test]
async fn open_watches_of_one_key_cost_at_most_one_lookup_per_verification_period() {
    let app = spawn_app().await;
    let org = app.new_org("A").await;
    // As many watches as one organization may open: each checks its key
    // every second while it is open.
    let mut watches = Vec::new();
    for _ in 0..16 {
        let mut watch = app
            .connections(&org)
            .watch_connection_events(WatchConnectionEventsRequest::default())
            .await
            .unwrap()
            .into_inner();
        // The first heartbeat: the watch has started.
        watch.message().await.unwrap().expect("a heartbeat");
        watches.push(watch);
    }
    let (started, lookups_before) = (Instant::now(), app.api_keys.lookups());
    tokio::time::sleep(VERIFIED_KEY_TTL * 2 + Duration::from_millis(500)).await;
    let elapsed = started.elapsed();
    let lookups = app.api_keys.lookups() - lookups_before;
    let bound = elapsed.as_millis() / VERIFIED_KEY_TTL.as_millis() + 1;
    assert!(
        lookups <= bound as u64,
        "{lookups} lookups for {} open watches in {elapsed:?}",
        watches.len()
    );
}
