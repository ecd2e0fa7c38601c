//! The real binary killed mid-burst (`kill -9`), and stopped with calls in
//! flight (SIGTERM).

use std::{
    collections::HashMap,
    net::TcpListener,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use connections::proto::{
    ActivateConnectionRequest, Connection, DeactivateConnectionRequest, ListConnectionsRequest,
    ReactivateConnectionRequest, connection_service_client::ConnectionServiceClient,
};
use serde_json::Value;
use tonic::{Status, transport::Channel};

use crate::helpers::{Bearer, TestDatabase, TestOrg};

const BIN: &str = env!("CARGO_BIN_EXE_connections");

fn admin(url: &str, args: &[&str]) -> Value {
    let output = Command::new(BIN)
        .args(["admin"])
        .args(args)
        .env("CONNECTIONS_DATABASE_URL", url)
        .env_remove("RUST_LOG")
        .output()
        .expect("run connections admin");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON")
}

fn new_org(url: &str, name: &str) -> TestOrg {
    let org = admin(url, &["create-org", "--name", name]);
    let id = org["id"].as_str().unwrap().to_owned();
    let key = admin(url, &["create-key", "--org", &id]);
    TestOrg {
        id,
        key: key["secret"].as_str().unwrap().to_owned(),
    }
}

type Client =
    ConnectionServiceClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

fn client(channel: &Channel, org: &TestOrg) -> Client {
    ConnectionServiceClient::with_interceptor(channel.clone(), Bearer::new(&org.key))
}

/// A `connections serve` process and a channel to it.
struct Server {
    child: Child,
    channel: Channel,
}

impl Server {
    async fn start(url: &str) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        #[allow(clippy::zombie_processes)] // waited for in `wait`
        let child = Command::new(BIN)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .env("CONNECTIONS_DATABASE_URL", url)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start server");
        for _ in 0..200 {
            if let Ok(channel) = Channel::from_shared(format!("http://127.0.0.1:{port}"))
                .unwrap()
                .connect()
                .await
            {
                return Self { child, channel };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("server did not start");
    }

    fn client(&self, org: &TestOrg) -> Client {
        client(&self.channel, org)
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    async fn wait(mut self) -> std::process::ExitStatus {
        tokio::task::spawn_blocking(move || self.child.wait().unwrap())
            .await
            .unwrap()
    }
}

#[derive(Debug, Clone, Copy)]
enum Step {
    Deactivate,
    Reactivate,
    Activate,
}

const CYCLE: [Step; 3] = [Step::Deactivate, Step::Reactivate, Step::Activate];

/// One transition with a request_id; the source deactivates and reactivates,
/// the destination activates.
async fn step(
    channel: &Channel,
    source: &TestOrg,
    destination: &TestOrg,
    step: Step,
    id: &str,
    request_id: &str,
) -> Result<Connection, Status> {
    let (connection_id, request_id) = (id.to_owned(), request_id.to_owned());
    let response = match step {
        Step::Deactivate => {
            client(channel, source)
                .deactivate_connection(DeactivateConnectionRequest {
                    connection_id,
                    request_id,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .connection
        }
        Step::Reactivate => {
            client(channel, source)
                .reactivate_connection(ReactivateConnectionRequest {
                    connection_id,
                    request_id,
                    etag: String::new(),
                })
                .await?
                .into_inner()
                .connection
        }
        Step::Activate => {
            client(channel, destination)
                .activate_connection(ActivateConnectionRequest {
                    connection_id,
                    request_id,
                    etag: String::new(),
                })
                .await?
                .into_inner()
                .connection
        }
    };
    Ok(response.unwrap())
}

/// A request sent before a crash: acknowledged with this response, or not.
struct Sent {
    connection: usize,
    step: Step,
    request_id: String,
    acknowledged: Option<Connection>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_kill_9_every_acknowledged_write_is_there_and_retries_execute_at_most_once() {
    const WRITERS: usize = 6;
    const ROUNDS: usize = 3;
    let (_database, url) = TestDatabase::create(false).await;
    let source = new_org(&url, "Source");
    let mut destinations = Vec::new();
    let mut connections = Vec::new();
    {
        let server = Server::start(&url).await;
        for i in 0..WRITERS {
            let destination = new_org(&url, &format!("Destination {i}"));
            let created = server
                .client(&source)
                .create_connection(connections::proto::CreateConnectionRequest {
                    destination_organization_id: destination.id.clone(),
                    data_types: vec![1],
                    request_id: String::new(),
                })
                .await
                .unwrap()
                .into_inner()
                .connection
                .unwrap();
            step(
                &server.channel,
                &source,
                &destination,
                Step::Activate,
                &created.id,
                "",
            )
            .await
            .unwrap();
            connections.push(created.id);
            destinations.push(destination);
        }
        server.signal("-KILL");
        server.wait().await;
    }

    let mut sent: Vec<Sent> = Vec::new();
    for round in 0..ROUNDS {
        let server = Server::start(&url).await;
        let crashed = Arc::new(AtomicBool::new(false));
        let writers = (0..WRITERS).map(|w| {
            let (channel, crashed) = (server.channel.clone(), crashed.clone());
            let (source, destination) = (source.clone(), destinations[w].clone());
            let id = connections[w].clone();
            tokio::spawn(async move {
                let mut log = Vec::new();
                // Each connection is ACTIVE at the start of a round (see below).
                for (n, s) in CYCLE.iter().cycle().take(300).enumerate() {
                    let request_id = format!("round{round}-writer{w}-{n}");
                    let result = step(&channel, &source, &destination, *s, &id, &request_id).await;
                    let acknowledged = result.as_ref().ok().cloned();
                    let stop = result.is_err();
                    log.push(Sent {
                        connection: w,
                        step: *s,
                        request_id,
                        acknowledged,
                    });
                    if stop {
                        assert!(
                            crashed.load(Ordering::SeqCst),
                            "failed before the crash: {result:?}"
                        );
                        break;
                    }
                }
                log
            })
        });
        let writers: Vec<_> = writers.collect();
        tokio::time::sleep(Duration::from_millis(300 + 100 * round as u64)).await;
        crashed.store(true, Ordering::SeqCst);
        server.signal("-KILL");
        for writer in writers {
            sent.extend(writer.await.unwrap());
        }
        server.wait().await;

        // Restart; finish each connection's interrupted cycle with the same
        // request_ids, so every connection is ACTIVE again for the next round.
        let server = Server::start(&url).await;
        for w in 0..WRITERS {
            let pending: Vec<&Sent> = sent
                .iter()
                .filter(|s| {
                    s.connection == w && s.request_id.starts_with(&format!("round{round}-"))
                })
                .collect();
            let last = pending.last().expect("each writer sent something");
            if last.acknowledged.is_none() {
                // Retry the unacknowledged request twice: it runs at most once.
                let first = step(
                    &server.channel,
                    &source,
                    &destinations[w],
                    last.step,
                    &connections[w],
                    &last.request_id,
                )
                .await
                .expect("the interrupted step is still allowed");
                let again = step(
                    &server.channel,
                    &source,
                    &destinations[w],
                    last.step,
                    &connections[w],
                    &last.request_id,
                )
                .await
                .unwrap();
                assert_eq!(first, again);
            }
            // Complete the cycle back to ACTIVE.
            let done = pending.len();
            for (n, s) in CYCLE
                .iter()
                .cycle()
                .enumerate()
                .skip(done)
                .take_while(|(n, _)| n % 3 != 0)
            {
                let request_id = format!("round{round}-writer{w}-{n}");
                step(
                    &server.channel,
                    &source,
                    &destinations[w],
                    *s,
                    &connections[w],
                    &request_id,
                )
                .await
                .unwrap();
            }
        }
        server.signal("-KILL");
        server.wait().await;
    }

    // Every acknowledged write is there: its retry replays it unchanged.
    let server = Server::start(&url).await;
    let mut acknowledged = 0;
    for s in &sent {
        if let Some(response) = &s.acknowledged {
            let replay = step(
                &server.channel,
                &source,
                &destinations[s.connection],
                s.step,
                &connections[s.connection],
                &s.request_id,
            )
            .await
            .expect("an acknowledged write is replayed after a crash");
            assert_eq!(&replay, response);
            acknowledged += 1;
        }
    }
    // And each connection's history is one creation, one activation, then
    // exactly three transitions per completed cycle: nothing ran twice.
    let mut per_connection: HashMap<usize, usize> = HashMap::new();
    for (w, id) in connections.iter().enumerate() {
        let events = server
            .client(&source)
            .list_connection_events(connections::proto::ListConnectionEventsRequest {
                connection_id: id.clone(),
                page_size: 500,
                page_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .events;
        for (n, event) in events.iter().enumerate() {
            assert_eq!(event.sequence, n as i64 + 1);
        }
        assert_eq!((events.len() - 2) % 3, 0, "an incomplete or doubled cycle");
        per_connection.insert(w, events.len());
    }
    let listed = server
        .client(&source)
        .list_connections(ListConnectionsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .connections;
    assert!(
        listed
            .iter()
            .all(|c| c.state() == connections::proto::ConnectionState::Active)
    );
    server.signal("-TERM");
    assert!(server.wait().await.success());
    println!(
        "crash: {ROUNDS} kill -9 rounds, {} requests sent, {acknowledged} acknowledged, events per connection {per_connection:?}",
        sent.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_lets_calls_in_flight_complete_and_exits_zero() {
    const WRITERS: usize = 8;
    let (_database, url) = TestDatabase::create(false).await;
    let source = new_org(&url, "Source");
    let server = Server::start(&url).await;
    let mut destinations = Vec::new();
    let mut ids = Vec::new();
    for i in 0..WRITERS {
        let destination = new_org(&url, &format!("Destination {i}"));
        let created = server
            .client(&source)
            .create_connection(connections::proto::CreateConnectionRequest {
                destination_organization_id: destination.id.clone(),
                data_types: vec![1],
                request_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .connection
            .unwrap();
        ids.push(created.id);
        destinations.push(destination);
    }

    // Writers drive their connections around the state machine until the
    // server goes away, counting the transitions acknowledged to them.
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (channel, source) = (server.channel.clone(), source.clone());
            let (destination, id) = (destinations[w].clone(), ids[w].clone());
            tokio::spawn(async move {
                let mut acknowledged = 0;
                for s in [Step::Activate, Step::Deactivate, Step::Reactivate]
                    .iter()
                    .cycle()
                    .take(3_000)
                {
                    match step(&channel, &source, &destination, *s, &id, "").await {
                        Ok(_) => acknowledged += 1,
                        Err(_) => break,
                    }
                }
                acknowledged
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    server.signal("-TERM");
    let status = server.wait().await;
    assert!(status.success(), "exit status {status:?}");

    // A call cut off mid-way would have changed the connection without its
    // caller hearing of it: every change must have been acknowledged.
    let server = Server::start(&url).await;
    let mut total = 0;
    for (w, writer) in writers.into_iter().enumerate() {
        let acknowledged = writer.await.unwrap();
        let events = server
            .client(&source)
            .list_connection_events(connections::proto::ListConnectionEventsRequest {
                connection_id: ids[w].clone(),
                page_size: 500,
                page_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .events;
        assert!(events.len() < 500, "raise the page size");
        assert_eq!(events.len() - 1, acknowledged, "connection {w}");
        total += acknowledged;
    }
    assert!(total > WRITERS, "too few calls before the signal: {total}");
    server.signal("-TERM");
    assert!(server.wait().await.success());
}
