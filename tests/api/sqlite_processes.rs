//! One SQLite file written by several processes at once, as the README's
//! bootstrap does (`connections admin ...` while `connections serve` runs) and
//! as two `serve` processes on one file would: writes wait their turn for the
//! file's lock (immediate transactions, busy timeout) and none is lost.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use connections::{
    proto::{
        ActivateConnectionRequest, CreateConnectionRequest, DataType, DeactivateConnectionRequest,
        GetOrganizationRequest, ReactivateConnectionRequest,
        organization_service_client::OrganizationServiceClient,
    },
    service::api_keys::VERIFIED_KEY_TTL,
};
use tonic::{Code, Status};

use crate::support::{
    Bearer, TestDatabase, TestOrg, assert_error,
    clients::Connections,
    process::{Server, admin, admin_lines, new_org},
};

/// How long the server waits for SQLite's lock (its busy timeout), less a
/// margin: a DATABASE_UNAVAILABLE that comes sooner did not wait.
const BUSY_WAIT: Duration = Duration::from_millis(4_500);

/// What a writer saw: when each transition was acknowledged, and the call
/// that failed (a failure ends the writer) with how long it took.
#[derive(Default)]
struct Writes {
    acknowledged: Vec<Instant>,
    failed: Vec<(Status, Duration)>,
}

/// The organization `secret` is a key of, as `server` says.
async fn whoami(server: &Server, secret: &str) -> Result<String, Status> {
    let response =
        OrganizationServiceClient::with_interceptor(server.channel.clone(), Bearer::new(secret))
            .get_organization(GetOrganizationRequest::default())
            .await?;
    Ok(response.into_inner().organization.unwrap().id)
}

/// Activate, deactivate, reactivate, around again, until `stop` or a failure.
async fn drive(
    source: Connections,
    destination: Connections,
    id: String,
    stop: Arc<AtomicBool>,
) -> Writes {
    let (mut source, mut destination) = (source, destination);
    let mut writes = Writes::default();
    let mut n = 0usize;
    while !stop.load(Ordering::SeqCst) && n < 100_000 {
        let started = Instant::now();
        let connection_id = id.clone();
        let result = match n % 3 {
            0 => destination
                .activate_connection(ActivateConnectionRequest {
                    connection_id,
                    ..Default::default()
                })
                .await
                .map(drop),
            1 => source
                .deactivate_connection(DeactivateConnectionRequest {
                    connection_id,
                    ..Default::default()
                })
                .await
                .map(drop),
            _ => source
                .reactivate_connection(ReactivateConnectionRequest {
                    connection_id,
                    ..Default::default()
                })
                .await
                .map(drop),
        };
        match result {
            Ok(()) => {
                writes.acknowledged.push(Instant::now());
                n += 1;
            }
            Err(status) => {
                writes.failed.push((status, started.elapsed()));
                break;
            }
        }
    }
    writes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_and_the_admin_cli_write_one_sqlite_file_without_errors_or_lost_writes() {
    const WRITERS: usize = 6;
    let (_database, url) = TestDatabase::create(true).await;
    let source = new_org(&url, "Source");
    let destinations: Vec<TestOrg> = (0..WRITERS)
        .map(|i| new_org(&url, &format!("Destination {i}")))
        .collect();
    let servers = [Server::start(&url).await, Server::start(&url).await];
    let mut ids = Vec::new();
    for (w, destination) in destinations.iter().enumerate() {
        let created = servers[w % 2]
            .client(&source)
            .create_connection(CreateConnectionRequest {
                message: String::new(),
                destination_organization_id: destination.id.clone(),
                data_types: vec![DataType::Account as i32],
                request_id: String::new(),
            })
            .await
            .expect("create")
            .into_inner()
            .connection
            .unwrap();
        ids.push(created.id);
    }

    // Writers on both servers, while the admin CLI writes from processes of
    // its own: organizations, keys, revocations.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let server = &servers[w % 2];
            tokio::spawn(drive(
                server.client(&source),
                server.client(&destinations[w]),
                ids[w].clone(),
                stop.clone(),
            ))
        })
        .collect();
    let cli_started = Instant::now();
    let made = tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            (0..6)
                .map(|i| {
                    let org = admin(&url, &["create-org", "--name", &format!("Bulk {i}")]);
                    let org_id = org["id"].as_str().unwrap().to_owned();
                    let key = admin(&url, &["create-key", "--org", &org_id]);
                    let key_id = key["id"].as_str().unwrap().to_owned();
                    (org_id, key_id, key["secret"].as_str().unwrap().to_owned())
                })
                .collect::<Vec<_>>()
        }
    })
    .await
    .expect("every admin command succeeded");
    // Each new key works on both servers (which now remember it) ...
    for (org_id, _, secret) in &made {
        for server in &servers {
            assert_eq!(&whoami(server, secret).await.unwrap(), org_id);
        }
    }
    // ... until the CLI revokes it.
    let revoked: Vec<bool> = (0..made.len()).map(|i| i % 2 == 1).collect();
    tokio::task::spawn_blocking({
        let (url, made, revoked) = (url.clone(), made.clone(), revoked.clone());
        move || {
            for ((_, key_id, _), revoked) in made.iter().zip(revoked) {
                if revoked {
                    admin(&url, &["revoke-key", "--key", key_id]);
                }
            }
        }
    })
    .await
    .expect("every admin command succeeded");
    let cli_ended = Instant::now();
    stop.store(true, Ordering::SeqCst);

    let mut acknowledged_total = 0;
    let mut during_cli = [0; 2];
    for (w, writer) in writers.into_iter().enumerate() {
        let writes = writer.await.unwrap();
        for (status, took) in &writes.failed {
            // The one retryable failure a waiting writer may see is running
            // out of its busy timeout; a sooner one means it did not wait.
            assert_error(status, Code::Unavailable, "DATABASE_UNAVAILABLE");
            assert!(
                *took >= BUSY_WAIT,
                "writer {w}: DATABASE_UNAVAILABLE after only {took:?}: {status:?}"
            );
        }
        // Every acknowledged transition is in the history, and no other.
        let events = servers[0].events(&source, &ids[w]).await;
        assert_eq!(
            events.len(),
            1 + writes.acknowledged.len(),
            "writer {w}: {} failed calls",
            writes.failed.len()
        );
        acknowledged_total += writes.acknowledged.len();
        during_cli[w % 2] += writes
            .acknowledged
            .iter()
            .filter(|&&at| (cli_started..cli_ended).contains(&at))
            .count();
    }
    // Both servers wrote while the CLI did, or the test proved nothing.
    assert!(
        during_cli.iter().all(|&n| n > 0),
        "transitions per server while the CLI wrote: {during_cli:?}"
    );

    // Every organization the CLI made is there; its key still works on both
    // servers, or, revoked, no longer does once the servers' memory of
    // verified keys has expired.
    let listed: HashSet<String> = admin_lines(&url, &["list-orgs"])
        .into_iter()
        .map(|org| org["id"].as_str().unwrap().to_owned())
        .collect();
    tokio::time::sleep(VERIFIED_KEY_TTL + Duration::from_millis(500)).await;
    for ((org_id, _, secret), revoked) in made.iter().zip(&revoked) {
        assert!(listed.contains(org_id), "organization {org_id} was lost");
        for server in &servers {
            match (revoked, whoami(server, secret).await) {
                (false, Ok(id)) => assert_eq!(&id, org_id),
                (true, Err(status)) => {
                    assert_error(&status, Code::Unauthenticated, "API_KEY_INVALID");
                }
                (revoked, result) => panic!("revoked: {revoked}, got {result:?}"),
            }
        }
    }
    println!(
        "sqlite processes: {acknowledged_total} transitions on two servers, {} organizations by the CLI",
        made.len()
    );
    for server in servers {
        server.signal("-TERM");
        assert!(server.wait().await.success());
    }
}
