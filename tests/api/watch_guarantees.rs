//! The change feed's guarantees with replicas in processes of their own, on
//! one database: writers racing through two replicas, a watcher that moves
//! from one to the other with its last token, a replica killed (SIGKILL),
//! one stopped (SIGTERM) and, on PostgreSQL, a database outage. Through it
//! all the watcher sees every event once, each connection's in sequence
//! order: exactly what ListConnectionEvents returns. Watchers on different
//! replicas see one global order.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use connections::proto::{
    ConnectionEvent, CreateConnectionRequest, DataType, WatchConnectionEventsRequest,
};
use tokio::{sync::Notify, task::JoinSet};
use tonic::{Code, transport::Channel};

use crate::{
    crash::{CYCLE, step},
    support::{
        TestDatabase, TestOrg,
        clients::connections_on,
        database::{postgres_address, with_address},
        process::{Server, new_org},
        proxy::Proxy,
    },
};

/// Connections written to; each has two writers, one on each replica.
const CONNECTIONS: usize = 4;

/// The replicas' channels by slot: `None` while a slot's replica is down.
#[derive(Default)]
struct Slots(Mutex<[Option<Channel>; 2]>);

impl Slots {
    fn set(&self, slot: usize, channel: Option<Channel>) {
        self.0.lock().unwrap()[slot] = channel;
    }

    /// The channel of `slot`, or else of the other slot, if either is up.
    fn prefer(&self, slot: usize) -> Option<Channel> {
        let slots = self.0.lock().unwrap();
        slots[slot].clone().or_else(|| slots[1 - slot].clone())
    }
}

/// What the watcher has seen.
#[derive(Default)]
struct Watched {
    events: Vec<ConnectionEvent>,
    token: String,
    /// How each stream it opened ended (or failed to open).
    ends: Vec<Code>,
}

/// Watches `org`'s connections from the beginning, on the replica of slot
/// `at` (or the other, when that one is down), until `stop`. When a stream
/// ends or `moved` is notified, it watches again after its last token.
async fn watcher(
    slots: Arc<Slots>,
    org: TestOrg,
    at: Arc<AtomicUsize>,
    moved: Arc<Notify>,
    stop: Arc<Notify>,
    watched: Arc<Mutex<Watched>>,
) {
    loop {
        let Some(channel) = slots.prefer(at.load(Ordering::SeqCst)) else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let token = watched.lock().unwrap().token.clone();
        let request = WatchConnectionEventsRequest {
            from_beginning: token.is_empty(),
            after_change_token: token,
            ..Default::default()
        };
        let mut stream = match connections_on(&channel, &org)
            .watch_connection_events(request)
            .await
        {
            Ok(stream) => stream.into_inner(),
            Err(status) => {
                watched.lock().unwrap().ends.push(status.code());
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        loop {
            tokio::select! {
                () = stop.notified() => return,
                () = moved.notified() => break,
                message = stream.message() => match message {
                    Ok(Some(message)) => {
                        let mut watched = watched.lock().unwrap();
                        watched.token = message.change_token;
                        watched.events.extend(message.event);
                    }
                    Ok(None) => {
                        watched.lock().unwrap().ends.push(Code::Ok);
                        break;
                    }
                    Err(status) => {
                        watched.lock().unwrap().ends.push(status.code());
                        break;
                    }
                },
            }
        }
    }
}

/// Cycles connection `id` through deactivate, reactivate, activate on the
/// replica of slot `slot` (or the other, when that one is down) until `stop`;
/// another writer races it through the other replica. Returns the codes of
/// its calls.
async fn writer(
    slots: Arc<Slots>,
    slot: usize,
    source: TestOrg,
    destination: TestOrg,
    id: String,
    stop: Arc<AtomicBool>,
) -> HashMap<Code, usize> {
    let mut codes = HashMap::new();
    let mut next = 0;
    while !stop.load(Ordering::SeqCst) {
        let Some(channel) = slots.prefer(slot) else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let call = step(&channel, &source, &destination, CYCLE[next], &id, "");
        let code = match tokio::time::timeout(Duration::from_secs(3), call).await {
            Ok(Ok(_)) => Code::Ok,
            Ok(Err(status)) => status.code(),
            Err(_) => Code::DeadlineExceeded,
        };
        *codes.entry(code).or_default() += 1;
        match code {
            // Done, by this writer or (a conflict) by the other one: on to
            // the next step.
            Code::Ok | Code::FailedPrecondition | Code::Aborted => next = (next + 1) % CYCLE.len(),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    codes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn through_races_kills_stops_and_outages_a_watcher_sees_every_event_once_in_one_order() {
    let (_database, url) = TestDatabase::create(false).await;
    // On PostgreSQL the replicas reach the database through a proxy that
    // can cut it off.
    let proxy = if url.starts_with("postgres") {
        Some(Proxy::start(postgres_address(&url).unwrap()).await)
    } else {
        None
    };
    let served_url = match &proxy {
        Some(proxy) => with_address(&url, proxy.address),
        None => url.clone(),
    };
    let source = new_org(&url, "Source");
    let destinations: Vec<TestOrg> = (0..CONNECTIONS)
        .map(|i| new_org(&url, &format!("Destination {i}")))
        .collect();

    let mut servers = [
        Some(Server::start(&served_url).await),
        Some(Server::start(&served_url).await),
    ];
    let slots = Arc::new(Slots::default());
    for (slot, server) in servers.iter().enumerate() {
        slots.set(slot, server.as_ref().map(|s| s.channel.clone()));
    }
    let mut ids = Vec::new();
    for destination in &destinations {
        let created = servers[0]
            .as_ref()
            .unwrap()
            .client(&source)
            .create_connection(CreateConnectionRequest {
                message: String::new(),
                destination_organization_id: destination.id.clone(),
                data_types: vec![DataType::Inquiry.into()],
                request_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .connection
            .unwrap();
        ids.push(created.id);
    }

    let watched = Arc::new(Mutex::new(Watched::default()));
    let (at, moved, stop_watching) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(Notify::new()),
        Arc::new(Notify::new()),
    );
    let watching = tokio::spawn(watcher(
        slots.clone(),
        source.clone(),
        at.clone(),
        moved.clone(),
        stop_watching.clone(),
        watched.clone(),
    ));
    let stop_writing = Arc::new(AtomicBool::new(false));
    let mut writers = JoinSet::new();
    for (id, destination) in ids.iter().zip(&destinations) {
        for slot in 0..2 {
            writers.spawn(writer(
                slots.clone(),
                slot,
                source.clone(),
                destination.clone(),
                id.clone(),
                stop_writing.clone(),
            ));
        }
    }
    let pause = || tokio::time::sleep(Duration::from_millis(800));
    let move_watcher_to = |slot: usize| {
        at.store(slot, Ordering::SeqCst);
        moved.notify_one();
    };

    pause().await;
    // The watcher moves to the other replica with its last token.
    move_watcher_to(1);
    pause().await;
    // Its replica is killed: it goes back to the first.
    slots.set(1, None);
    let killed = servers[1].take().unwrap();
    killed.signal("-KILL");
    killed.wait().await;
    pause().await;
    let restarted = Server::start(&served_url).await;
    slots.set(1, Some(restarted.channel.clone()));
    servers[1] = Some(restarted);
    pause().await;
    // Its replica is stopped: it moves to the restarted one.
    slots.set(0, None);
    let stopped = servers[0].take().unwrap();
    stopped.signal("-TERM");
    assert!(stopped.wait().await.success(), "a stop exits 0");
    pause().await;
    let restarted = Server::start(&served_url).await;
    slots.set(0, Some(restarted.channel.clone()));
    servers[0] = Some(restarted);
    move_watcher_to(0);
    pause().await;
    if let Some(proxy) = &proxy {
        // The database is out for two seconds.
        proxy.down();
        tokio::time::sleep(Duration::from_secs(2)).await;
        proxy.up();
        pause().await;
        pause().await;
    }
    stop_writing.store(true, Ordering::SeqCst);
    let mut codes: HashMap<Code, usize> = HashMap::new();
    for writer in writers.join_all().await {
        for (code, n) in writer {
            *codes.entry(code).or_default() += n;
        }
    }
    for code in codes.keys() {
        assert!(
            matches!(
                code,
                Code::Ok
                    | Code::FailedPrecondition
                    | Code::Aborted
                    | Code::Unavailable
                    | Code::Unknown
                    | Code::Cancelled
                    | Code::DeadlineExceeded
            ),
            "writers saw {code:?}: {codes:?}"
        );
    }
    assert!(
        codes.get(&Code::Ok).copied().unwrap_or_default() >= 20,
        "too few writes to show anything: {codes:?}"
    );

    // The watcher catches up with every connection's history.
    let server = servers[0].as_ref().unwrap();
    let mut histories = HashMap::new();
    for id in &ids {
        histories.insert(id.clone(), server.events(&source, id).await);
    }
    let total: usize = histories.values().map(Vec::len).sum();
    let caught_up = tokio::time::timeout(Duration::from_secs(20), async {
        while watched.lock().unwrap().events.len() < total {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    // A little longer, for anything extra (a duplicate) to arrive.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_watching.notify_one();
    watching.await.unwrap();
    let watched = std::mem::take(&mut *watched.lock().unwrap());
    assert!(
        caught_up.is_ok(),
        "the watcher saw {} of {total} events; its streams ended with {:?}",
        watched.events.len(),
        watched.ends
    );
    for (id, history) in &histories {
        let seen: Vec<ConnectionEvent> = watched
            .events
            .iter()
            .filter(|e| e.connection_id == *id)
            .cloned()
            .collect();
        assert_eq!(&seen, history, "connection {id}");
    }
    assert_eq!(watched.events.len(), total);

    // Every replica has one global order: two new watchers, one on each,
    // see the same events in the same order, with the same tokens.
    let mut orders = Vec::new();
    for server in servers.iter().flatten() {
        let mut stream = server
            .client(&source)
            .watch_connection_events(WatchConnectionEventsRequest {
                from_beginning: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut order = Vec::new();
        while order.len() < total {
            let message = tokio::time::timeout(Duration::from_secs(10), stream.message())
                .await
                .expect("the history arrives")
                .unwrap()
                .unwrap();
            if let Some(event) = message.event {
                order.push((event.connection_id, event.sequence, message.change_token));
            }
        }
        orders.push(order);
    }
    assert_eq!(orders[0], orders[1], "the replicas disagree on the order");
    println!(
        "watch guarantees: {total} events over {} connections; writers {codes:?}; the watcher's streams ended {:?}",
        ids.len(),
        watched.ends
    );
}
