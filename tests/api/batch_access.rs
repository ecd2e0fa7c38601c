//! AccessService.BatchCheckAccess: many CheckAccess questions in one call,
//! every answer from one state named by one change token, each question
//! refused on its own.

use std::sync::Arc;

use connections::{
    domain::{self, OrganizationId},
    grpc::{server::MAX_ACCESS_DECODING_MESSAGE_SIZE, validate::MAX_BATCH_CHECKS},
    proto::{
        ActivateConnectionRequest, BatchCheckAccessRequest, BatchCheckAccessResponse,
        CheckAccessRequest, CheckAccessResponse, ConnectionState, DataType,
        DeactivateConnectionRequest, ReactivateConnectionRequest,
        access_service_client::AccessServiceClient, check_access_result,
    },
    service::{Access, AccessPair, ChangeTokens, Checker, PageTokens, secrets},
};
use prost::Message;
use tonic::{Code, Status};

use crate::support::{
    ADMIN_TOKEN, AppOptions, Bearer, TestApp, TestOrg, assert_error, bounded, spawn_app,
    spawn_app_with, spawn_replicas, unknown_id, violated_fields,
    watching::{after, watch},
};

const ACCESS_CHECK_TOKEN: &str = "access-check-token-0123456789abcdef";

/// A question of CheckAccess, without a token.
fn ask(source: &str, destination: &str, data_type: DataType) -> CheckAccessRequest {
    CheckAccessRequest {
        source_organization_id: source.to_owned(),
        destination_organization_id: destination.to_owned(),
        data_type: data_type.into(),
        at_least_change_token: String::new(),
    }
}

/// A client of the AccessService on `app`, calling with `secret`.
fn access(
    app: &TestApp,
    secret: &str,
) -> AccessServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>,
> {
    AccessServiceClient::with_interceptor(app.channel.clone(), Bearer::new(secret))
}

/// BatchCheckAccess of `checks` with `secret` on `app`.
async fn batch(
    app: &TestApp,
    secret: &str,
    checks: Vec<CheckAccessRequest>,
    at_least: &str,
) -> Result<BatchCheckAccessResponse, Status> {
    access(app, secret)
        .batch_check_access(BatchCheckAccessRequest {
            checks,
            at_least_change_token: at_least.to_owned(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// CheckAccess of `check` with `secret` on `app`.
async fn single(
    app: &TestApp,
    secret: &str,
    check: CheckAccessRequest,
) -> Result<CheckAccessResponse, Status> {
    access(app, secret)
        .check_access(check)
        .await
        .map(tonic::Response::into_inner)
}

/// Each result of `response`: the answer, or the item's error as the
/// status a call failing with it would have returned.
fn results(response: &BatchCheckAccessResponse) -> Vec<Result<CheckAccessResponse, Status>> {
    response
        .results
        .iter()
        .map(|result| match result.result.clone() {
            Some(check_access_result::Result::Response(answer)) => Ok(answer),
            Some(check_access_result::Result::Error(error)) => Err(Status::with_details(
                Code::from_i32(error.code),
                error.message.clone(),
                error.encode_to_vec().into(),
            )),
            None => panic!("a result with neither an answer nor an error"),
        })
        .collect()
}

/// The answer of an item that must have one.
#[track_caller]
fn answered(result: &Result<CheckAccessResponse, Status>) -> &CheckAccessResponse {
    result
        .as_ref()
        .unwrap_or_else(|status| panic!("refused: {status:?}"))
}

/// A transition of connection `id` as `org`; returns its change token.
async fn transition(app: &TestApp, org: &TestOrg, id: &str, to: ConnectionState) -> String {
    let mut client = app.connections(org);
    let connection_id = id.to_owned();
    let token = match to {
        ConnectionState::Active => client
            .activate_connection(ActivateConnectionRequest {
                connection_id,
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().change_token),
        ConnectionState::Inactive => client
            .deactivate_connection(DeactivateConnectionRequest {
                connection_id,
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().change_token),
        _ => client
            .reactivate_connection(ReactivateConnectionRequest {
                connection_id,
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().change_token),
    };
    token.unwrap_or_else(|status| panic!("to {to:?}: {status:?}"))
}

#[tokio::test]
async fn answers_come_in_request_order_as_single_checks_give_them() {
    let app = spawn_app().await;
    let source = app.new_org("S").await;
    let (active, pending) = (app.new_org("A").await, app.new_org("P").await);
    let active_id = app.connect(&source, &active).await.id;
    let pending_id = app.connect(&source, &pending).await.id;
    let token = transition(&app, &active, &active_id, ConnectionState::Active).await;
    let checks = vec![
        ask(&source.id, &active.id, DataType::Inquiry),
        ask(&source.id, &pending.id, DataType::Inquiry),
        ask(&source.id, &active.id, DataType::Account),
        ask(&active.id, &source.id, DataType::Inquiry),
        ask(&source.id, &unknown_id(), DataType::Transaction),
        ask(&source.id, &active.id, DataType::Inquiry),
    ];

    let response = batch(&app, &source.key, checks.clone(), &token)
        .await
        .unwrap();
    assert!(!response.change_token.is_empty());
    let results = results(&response);
    assert_eq!(results.len(), checks.len());
    let summary: Vec<(bool, &str, ConnectionState)> = results
        .iter()
        .map(|result| {
            let answer = answered(result);
            (
                answer.allowed,
                answer.connection_id.as_str(),
                answer.state(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (true, active_id.as_str(), ConnectionState::Active),
            (false, pending_id.as_str(), ConnectionState::Pending),
            (false, active_id.as_str(), ConnectionState::Active),
            (false, "", ConnectionState::Unspecified),
            (false, "", ConnectionState::Unspecified),
            (true, active_id.as_str(), ConnectionState::Active),
        ]
    );
    // Each as CheckAccess answers it, with the batch's token.
    for (check, result) in checks.into_iter().zip(&results) {
        let answer = answered(result);
        assert_eq!(answer.change_token, response.change_token);
        let mut alone = check.clone();
        alone.at_least_change_token = response.change_token.clone();
        let single = single(&app, &source.key, alone).await.unwrap();
        assert_eq!(
            (single.allowed, &single.connection_id, single.state),
            (answer.allowed, &answer.connection_id, answer.state),
            "{check:?}"
        );
    }
}

#[tokio::test]
async fn a_pair_the_caller_is_not_party_to_is_refused_in_that_item_only() {
    let app = spawn_app().await;
    let (source, destination, other) = (
        app.new_org("S").await,
        app.new_org("D").await,
        app.new_org("O").await,
    );
    let id = app.connect(&source, &destination).await.id;
    let token = transition(&app, &destination, &id, ConnectionState::Active).await;
    let outsiders = ask(&other.id, &unknown_id(), DataType::Inquiry);
    let checks = vec![
        ask(&source.id, &destination.id, DataType::Inquiry),
        outsiders.clone(),
        ask(&unknown_id(), &unknown_id(), DataType::Inquiry),
        ask(&source.id, &other.id, DataType::Inquiry),
    ];

    for caller in [&source, &destination] {
        let response = batch(&app, &caller.key, checks.clone(), &token)
            .await
            .unwrap();
        let results = results(&response);
        assert!(answered(&results[0]).allowed);
        for refused in [&results[1], &results[2]] {
            let status = refused.as_ref().unwrap_err();
            assert_error(status, Code::PermissionDenied, "CALLER_NOT_PARTY");
        }
        // The item's status is the one CheckAccess fails with.
        let alone = single(&app, &caller.key, outsiders.clone())
            .await
            .unwrap_err();
        let status = results[1].as_ref().unwrap_err();
        assert_eq!(
            (status.code(), status.message(), status.details()),
            (alone.code(), alone.message(), alone.details())
        );
        // Whether the source is asked about the other organization depends
        // on the caller alone.
        if caller.id == source.id {
            assert_eq!(answered(&results[3]).connection_id, "");
        } else {
            assert_error(
                results[3].as_ref().unwrap_err(),
                Code::PermissionDenied,
                "CALLER_NOT_PARTY",
            );
        }
    }
}

#[tokio::test]
async fn a_malformed_item_is_invalid_argument_for_that_item_only() {
    let app = spawn_app().await;
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let id = app.connect(&source, &destination).await.id;
    let token = transition(&app, &destination, &id, ConnectionState::Active).await;
    let good = ask(&source.id, &destination.id, DataType::Inquiry);
    let mut with_own_token = good.clone();
    with_own_token.at_least_change_token = token.clone();
    let mut unknown_type = good.clone();
    unknown_type.data_type = 99;
    let checks = vec![
        ask("nope", &destination.id, DataType::Inquiry),
        good.clone(),
        ask(&source.id, &destination.id, DataType::Unspecified),
        with_own_token,
        ask(&format!("{}0", source.id), "", DataType::Unspecified),
        unknown_type,
        good,
    ];

    let response = batch(&app, &destination.key, checks, &token).await.unwrap();
    let results = results(&response);
    let expected: [&[&str]; 7] = [
        &["source_organization_id"],
        &[],
        &["data_type"],
        &["at_least_change_token"],
        &[
            "source_organization_id",
            "destination_organization_id",
            "data_type",
        ],
        &["data_type"],
        &[],
    ];
    for (i, (result, fields)) in results.iter().zip(expected).enumerate() {
        match result {
            Ok(answer) => {
                assert!(fields.is_empty(), "item {i} answered: {answer:?}");
                assert!(answer.allowed);
                assert_eq!(answer.change_token, response.change_token);
            }
            Err(status) => {
                assert_error(status, Code::InvalidArgument, "INVALID_ARGUMENT");
                assert_eq!(violated_fields(status), fields, "item {i}");
            }
        }
    }
    let own_token = results[3].as_ref().unwrap_err();
    assert!(
        own_token
            .message()
            .contains("batch's at_least_change_token"),
        "{own_token:?}"
    );
}

#[tokio::test]
async fn more_than_1000_checks_or_none_are_refused_as_a_whole() {
    assert_eq!(MAX_BATCH_CHECKS, 1_000);
    let app = spawn_app().await;
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let check = ask(&source.id, &destination.id, DataType::Inquiry);

    for count in [0, MAX_BATCH_CHECKS + 1] {
        let status = batch(&app, &source.key, vec![check.clone(); count], "")
            .await
            .unwrap_err();
        assert_error(&status, Code::InvalidArgument, "INVALID_ARGUMENT");
        assert_eq!(violated_fields(&status), ["checks"], "{count} checks");
    }
    // A batch token that this service did not issue fails the whole call too.
    let status = batch(&app, &source.key, vec![check.clone()], "forged")
        .await
        .unwrap_err();
    assert_error(&status, Code::InvalidArgument, "INVALID_CHANGE_TOKEN");
    assert_eq!(violated_fields(&status), ["at_least_change_token"]);
    // So does the credential.
    let status = AccessServiceClient::with_interceptor(app.channel.clone(), Bearer::none())
        .batch_check_access(BatchCheckAccessRequest {
            checks: vec![check.clone()],
            at_least_change_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_error(&status, Code::Unauthenticated, "API_KEY_MISSING");

    // Exactly 1,000: every one answered.
    let response = batch(&app, &source.key, vec![check; MAX_BATCH_CHECKS], "")
        .await
        .unwrap();
    assert_eq!(response.results.len(), MAX_BATCH_CHECKS);
    assert!(results(&response).iter().all(Result::is_ok));
}

#[tokio::test]
async fn the_largest_batch_fits_the_access_services_message_limit() {
    let app = spawn_app().await;
    let source = app.new_org("S").await;
    // 1,000 checks with every field at its longest valid value, and the
    // longest change token: under the limit, so they are read.
    let mut check = ask(&source.id, &unknown_id(), DataType::Transaction);
    let request = |checks: Vec<CheckAccessRequest>| BatchCheckAccessRequest {
        checks,
        at_least_change_token: "t".repeat(2_048),
    };
    let largest = request(vec![check.clone(); MAX_BATCH_CHECKS]);
    assert!(largest.encoded_len() < MAX_ACCESS_DECODING_MESSAGE_SIZE);
    let status = access(&app, &source.key)
        .batch_check_access(largest)
        .await
        .unwrap_err();
    // Read, and refused for its token only.
    assert_error(&status, Code::InvalidArgument, "INVALID_CHANGE_TOKEN");
    // Over the limit: refused by the transport, before it is read.
    check.at_least_change_token = "t".repeat(200);
    let oversized = request(vec![check; MAX_BATCH_CHECKS]);
    assert!(oversized.encoded_len() > MAX_ACCESS_DECODING_MESSAGE_SIZE);
    let status = access(&app, &source.key)
        .batch_check_access(oversized)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
}

#[tokio::test]
async fn operator_tokens_may_check_any_pair() {
    let app = spawn_app_with(AppOptions {
        access_check_token: Some(ACCESS_CHECK_TOKEN),
        ..AppOptions::default()
    })
    .await;
    let (a, b, c) = (
        app.new_org("A").await,
        app.new_org("B").await,
        app.new_org("C").await,
    );
    let ab = app.connect(&a, &b).await.id;
    let bc = app.connect(&b, &c).await.id;
    let token = transition(&app, &b, &ab, ConnectionState::Active).await;
    let checks = vec![
        ask(&a.id, &b.id, DataType::Inquiry),
        ask(&b.id, &c.id, DataType::Inquiry),
        ask(&c.id, &a.id, DataType::Inquiry),
        ask(&unknown_id(), &unknown_id(), DataType::Account),
    ];
    for secret in [ADMIN_TOKEN, ACCESS_CHECK_TOKEN] {
        let response = batch(&app, secret, checks.clone(), &token).await.unwrap();
        let summary: Vec<(bool, String)> = results(&response)
            .iter()
            .map(|result| {
                let answer = answered(result);
                (answer.allowed, answer.connection_id.clone())
            })
            .collect();
        assert_eq!(
            summary,
            [
                (true, ab.clone()),
                (false, bc.clone()),
                (false, String::new()),
                (false, String::new()),
            ]
        );
    }
    // An organization's key does not become an operator's for a batch.
    let response = batch(&app, &c.key, checks, &token).await.unwrap();
    let refused: Vec<bool> = results(&response).iter().map(Result::is_err).collect();
    assert_eq!(refused, [true, false, false, true]);
}

#[tokio::test]
async fn with_a_deactivations_token_every_item_reflects_it_on_another_replica() {
    let replicas = spawn_replicas(2, AppOptions::default()).await;
    let (writer, reader) = (&replicas[0], &replicas[1]);
    let source = writer.new_org("S").await;
    let mut pairs = Vec::new();
    for i in 0..3 {
        let destination = writer.new_org(&format!("D{i}")).await;
        let id = writer.connect(&source, &destination).await.id;
        transition(writer, &destination, &id, ConnectionState::Active).await;
        pairs.push((destination, id));
    }
    let checks: Vec<CheckAccessRequest> = pairs
        .iter()
        .map(|(destination, _)| ask(&source.id, &destination.id, DataType::Inquiry))
        .collect();

    for round in 0..10 {
        // Every connection deactivated, then activated again, on the writer;
        // the last write's token names every earlier one too.
        let mut token = String::new();
        for (destination, id) in &pairs {
            token = transition(writer, destination, id, ConnectionState::Inactive).await;
        }
        let response = batch(reader, ADMIN_TOKEN, checks.clone(), &token)
            .await
            .unwrap();
        for (result, (_, id)) in results(&response).iter().zip(&pairs) {
            let answer = answered(result);
            assert!(!answer.allowed, "round {round}: stale after deactivation");
            assert_eq!(answer.connection_id, *id);
            assert_eq!(answer.state(), ConnectionState::Inactive, "round {round}");
        }
        // The response's token holds the deactivations: a watch after it
        // starts with what follows them.
        let mut stream = watch(reader, &source, after(&response.change_token)).await;
        transition(writer, &source, &pairs[0].1, ConnectionState::Pending).await;
        let next = bounded("the next event", async {
            loop {
                let message = stream.message().await.unwrap().expect("the stream goes on");
                if let Some(event) = message.event {
                    break event;
                }
            }
        })
        .await;
        assert_eq!(next.connection_id, pairs[0].1, "round {round}");
        assert_eq!(next.to_state(), ConnectionState::Pending, "round {round}");
        transition(writer, &pairs[0].0, &pairs[0].1, ConnectionState::Active).await;
        for (destination, id) in &pairs[1..] {
            transition(writer, &source, id, ConnectionState::Pending).await;
            transition(writer, destination, id, ConnectionState::Active).await;
        }
    }
}

// Several threads: the server's index follows the writes while a batch is
// being read.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_item_answers_from_one_state_under_concurrent_writes() {
    let app = Arc::new(spawn_app().await);
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let id = app.connect(&source, &destination).await.id;
    // A writer turns the connection on and off as fast as it can.
    let writing = tokio_util::sync::CancellationToken::new();
    let writer = tokio::spawn({
        let (app, source, destination, id, writing) = (
            app.clone(),
            source.clone(),
            destination.clone(),
            id.clone(),
            writing.clone(),
        );
        async move {
            let mut flips = 0;
            while !writing.is_cancelled() {
                transition(&app, &destination, &id, ConnectionState::Active).await;
                transition(&app, &destination, &id, ConnectionState::Inactive).await;
                transition(&app, &source, &id, ConnectionState::Pending).await;
                flips += 1;
            }
            flips
        }
    });
    // The same question 500 times per batch: one state gives one answer.
    let checks = vec![ask(&source.id, &destination.id, DataType::Inquiry); 500];
    let mut states = std::collections::BTreeSet::new();
    let started = std::time::Instant::now();
    let mut batches = 0;
    while batches < 100 || (states.len() < 2 && started.elapsed().as_secs() < 30) {
        batches += 1;
        let response = batch(&app, &source.key, checks.clone(), "").await.unwrap();
        let results = results(&response);
        let first = answered(&results[0]);
        for result in &results {
            let answer = answered(result);
            assert_eq!(answer.change_token, response.change_token);
            assert_eq!(
                (answer.allowed, answer.state),
                (first.allowed, first.state),
                "two states in one batch"
            );
        }
        states.insert(first.state);
    }
    writing.cancel();
    let flips = writer.await.unwrap();
    assert!(flips > 0, "the writer made no change");
    assert!(
        states.len() > 1,
        "every batch saw one state ({states:?}): the writes did not overlap"
    );
}

// Several threads: the writer commits while a batch is being read.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn before_the_index_is_built_a_batch_reads_every_answer_from_one_database_snapshot() {
    let app = Arc::new(spawn_app().await);
    let (source, destination) = (app.new_org("S").await, app.new_org("D").await);
    let id = app.connect(&source, &destination).await.id;
    // The access layer of a server on the same database whose index is not
    // built yet (nothing follows the log here): it reads the database.
    let key = secrets::shared_key(&app.server_db, PageTokens::SECRET_NAME)
        .await
        .unwrap();
    let tokens = ChangeTokens::new(PageTokens::new(key));
    let unbuilt = Access::new(app.server_db.clone(), app.server_reader.clone(), tokens);
    assert!(!unbuilt.is_built());
    let writing = tokio_util::sync::CancellationToken::new();
    let writer = tokio::spawn({
        let (app, source, destination, id, writing) = (
            app.clone(),
            source.clone(),
            destination.clone(),
            id.clone(),
            writing.clone(),
        );
        async move {
            while !writing.is_cancelled() {
                transition(&app, &destination, &id, ConnectionState::Active).await;
                transition(&app, &destination, &id, ConnectionState::Inactive).await;
                transition(&app, &source, &id, ConnectionState::Pending).await;
            }
        }
    });
    // The same question 200 times per batch: one snapshot gives one answer.
    let questions = vec![
        AccessPair {
            source: OrganizationId::parse(&source.id).unwrap(),
            destination: OrganizationId::parse(&destination.id).unwrap(),
            data_type: domain::DataType::Inquiry,
        };
        200
    ];
    let mut seen = std::collections::BTreeSet::new();
    let mut token = String::new();
    let started = std::time::Instant::now();
    let mut batches = 0;
    while batches < 20 || (seen.len() < 2 && started.elapsed().as_secs() < 30) {
        batches += 1;
        let batch = unbuilt
            .check_batch(Checker::Operator, &questions, None)
            .await
            .unwrap();
        let answers: Vec<_> = batch.answers.iter().map(|a| a.as_ref().unwrap()).collect();
        for answer in &answers {
            assert_eq!(answer.change_token, batch.change_token);
            assert_eq!(
                (answer.allowed, answer.connection),
                (answers[0].allowed, answers[0].connection),
                "two states in one batch"
            );
        }
        seen.insert(format!("{:?}", answers[0].connection));
        token = batch.change_token;
    }
    writing.cancel();
    writer.await.unwrap();
    assert!(
        seen.len() > 1,
        "every batch saw one state ({seen:?}): the writes did not overlap"
    );
    // Its token is one the servers take.
    let response = batch(
        &app,
        ADMIN_TOKEN,
        vec![ask(&source.id, &destination.id, DataType::Inquiry)],
        &token,
    )
    .await
    .unwrap();
    answered(&results(&response)[0]);
}
