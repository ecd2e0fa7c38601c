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

use connections::proto::{
    ActivateConnectionRequest, CreateConnectionRequest, DataType, DeactivateConnectionRequest,
    GetOrganizationRequest, ReactivateConnectionRequest,
    organization_service_client::OrganizationServiceClient,
};
use tonic::{Code, Status};

use crate::{
    helpers::{Bearer, TestDatabase, TestOrg, assert_error},
    process::{Client, Server, admin, admin_lines, new_org},
};

/// How long the server waits for SQLite's lock (its busy timeout), less a
/// margin: a DATABASE_UNAVAILABLE that comes sooner did not wait.
const BUSY_WAIT: Duration = Duration::from_millis(4_500);

/// What a writer saw: acknowledged transitions, and the call that failed (a
/// failure ends the writer) with how long it took.
#[derive(Default)]
struct Writes {
    acknowledged: usize,
    failed: Vec<(Status, Duration)>,
}

/// Activate, deactivate, reactivate, around again, until `stop` or a failure.
async fn drive(source: Client, destination: Client, id: String, stop: Arc<AtomicBool>) -> Writes {
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
                writes.acknowledged += 1;
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
    let started = Instant::now();
    let cli = tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            let mut made = Vec::new();
            for i in 0..6 {
                let org = admin(&url, &["create-org", "--name", &format!("Bulk {i}")]);
                let org_id = org["id"].as_str().unwrap().to_owned();
                let key = admin(&url, &["create-key", "--org", &org_id]);
                let revoked = i % 2 == 1;
                if revoked {
                    admin(&url, &["revoke-key", "--key", key["id"].as_str().unwrap()]);
                }
                let secret = key["secret"].as_str().unwrap().to_owned();
                made.push((org_id, secret, revoked));
            }
            made
        }
    });
    let made = cli.await.expect("every admin command succeeded");
    // Keep the servers writing a while longer, if the CLI was quick.
    tokio::time::sleep(Duration::from_secs(1).saturating_sub(started.elapsed())).await;
    stop.store(true, Ordering::SeqCst);

    let mut acknowledged_total = 0;
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
        let events = servers[0]
            .client(&source)
            .list_connection_events(connections::proto::ListConnectionEventsRequest {
                connection_id: ids[w].clone(),
                page_size: 500,
                page_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(events.next_page_token.is_empty(), "raise the page size");
        assert_eq!(
            events.events.len(),
            1 + writes.acknowledged,
            "writer {w}: {} failed calls",
            writes.failed.len()
        );
        acknowledged_total += writes.acknowledged;
    }
    assert!(
        acknowledged_total >= 2 * WRITERS,
        "too few writes ran alongside the CLI: {acknowledged_total}"
    );

    // Every organization the CLI made is there; its keys work on both
    // servers unless revoked (revocation reaches them within 5 s).
    let listed: HashSet<String> = admin_lines(&url, &["list-orgs"])
        .into_iter()
        .map(|org| org["id"].as_str().unwrap().to_owned())
        .collect();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    for (org_id, secret, revoked) in &made {
        assert!(listed.contains(org_id), "organization {org_id} was lost");
        for server in &servers {
            let result = OrganizationServiceClient::with_interceptor(
                server.channel.clone(),
                Bearer::new(secret),
            )
            .get_organization(GetOrganizationRequest::default())
            .await;
            match (revoked, result) {
                (false, Ok(response)) => {
                    assert_eq!(&response.into_inner().organization.unwrap().id, org_id);
                }
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
