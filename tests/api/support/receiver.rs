//! An HTTP receiver of webhook deliveries on 127.0.0.1: it records every
//! request and answers as the test scripts it (200 unless told otherwise).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::State,
    http::{HeaderMap, StatusCode},
    response::Response,
};
use tokio::sync::Notify;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The request path.
    pub path: String,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body.
    pub body: Bytes,
    /// When it arrived.
    pub at: Instant,
    /// The status it was answered with (0: no answer).
    pub status: u16,
}

impl Delivery {
    /// The `webhook-id` header.
    pub fn id(&self) -> &str {
        self.header("webhook-id")
    }

    /// A header's value ("" if absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a delivery's body is JSON")
    }

    /// The body's `type`.
    pub fn event_type(&self) -> String {
        self.json()["type"].as_str().unwrap_or_default().to_owned()
    }

    /// The body's event's connection.
    pub fn connection_id(&self) -> String {
        self.json()["data"]["event"]["connectionId"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The body's event's sequence number.
    pub fn sequence(&self) -> i64 {
        self.json()["data"]["event"]["sequence"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_default()
    }

    /// Whether the official Standard Webhooks verifier accepts it with
    /// `secret`.
    pub fn verifies_with(&self, secret: &str) -> bool {
        standardwebhooks::Webhook::new(secret)
            .expect("a well-formed secret")
            .verify(&self.body, &self.headers)
            .is_ok()
    }
}

/// How the receiver answers one request.
#[derive(Debug, Clone)]
pub enum Answer {
    /// This status, with these headers.
    Status(u16, Vec<(&'static str, String)>),
    /// No answer for this long (then 200).
    Hang(Duration),
    /// 200, then a body that trickles for this long.
    SlowBody(Duration),
}

type Script = dyn Fn(usize, &Delivery) -> Answer + Send + Sync;

struct Shared {
    received: Mutex<Vec<Delivery>>,
    script: Mutex<Arc<Script>>,
    arrived: Notify,
}

/// A running receiver; it stops when dropped.
pub struct Receiver {
    /// Its address.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Receiver {
    /// A receiver that answers 200 to everything.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            received: Mutex::default(),
            script: Mutex::new(Arc::new(|_, _| Answer::Status(200, Vec::new()))),
            arrived: Notify::new(),
        });
        let app = Router::new().fallback(receive).with_state(shared.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            addr,
            shared,
            server,
        }
    }

    /// The URL of `path` on this receiver.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answers each request as `script` says, given how many requests came
    /// before it and the request.
    pub fn answer_with(&self, script: impl Fn(usize, &Delivery) -> Answer + Send + Sync + 'static) {
        *self.shared.script.lock().unwrap() = Arc::new(script);
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Delivery> {
        self.shared.received.lock().unwrap().clone()
    }

    /// The requests answered 2xx so far.
    pub fn delivered(&self) -> Vec<Delivery> {
        self.requests()
            .into_iter()
            .filter(|d| (200..300).contains(&d.status))
            .collect()
    }

    /// Waits until `done` holds for the requests so far (at most `within`).
    pub async fn wait_until(
        &self,
        within: Duration,
        what: &str,
        done: impl Fn(&[Delivery]) -> bool,
    ) -> Vec<Delivery> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let arrived = self.shared.arrived.notified();
            let requests = self.requests();
            if done(&requests) {
                return requests;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                let requests = self.requests();
                assert!(
                    done(&requests),
                    "{what} within {within:?}; got {} requests: {:?}",
                    requests.len(),
                    requests
                        .iter()
                        .map(|d| (d.status, d.event_type()))
                        .collect::<Vec<_>>()
                );
                return requests;
            }
        }
    }

    /// Waits until `count` requests have been answered 2xx.
    pub async fn wait_for_delivered(&self, count: usize) -> Vec<Delivery> {
        self.wait_until(
            Duration::from_secs(20),
            &format!("{count} deliveries"),
            |r| r.iter().filter(|d| (200..300).contains(&d.status)).count() >= count,
        )
        .await;
        self.delivered()
    }
}

async fn receive(State(shared): State<Arc<Shared>>, request: axum::extract::Request) -> Response {
    let path = request.uri().path().to_owned();
    let headers = request.headers().clone();
    let body = axum::body::to_bytes(request.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let mut delivery = Delivery {
        path,
        headers,
        body,
        at: Instant::now(),
        status: 0,
    };
    let script = shared.script.lock().unwrap().clone();
    let count = shared.received.lock().unwrap().len();
    let answer = script(count, &delivery);
    let response = match answer {
        Answer::Status(status, headers) => {
            delivery.status = status;
            let mut response = Response::builder().status(StatusCode::from_u16(status).unwrap());
            for (name, value) in headers {
                response = response.header(name, value);
            }
            response
                .body(Body::from("answer from the receiver"))
                .unwrap()
        }
        Answer::Hang(wait) => {
            record(&shared, delivery.clone());
            tokio::time::sleep(wait).await;
            return Response::new(Body::from("late"));
        }
        Answer::SlowBody(length) => {
            delivery.status = 200;
            let chunks = async_stream(length);
            Response::new(Body::from_stream(chunks))
        }
    };
    record(&shared, delivery);
    response
}

fn record(shared: &Shared, delivery: Delivery) {
    shared.received.lock().unwrap().push(delivery);
    shared.arrived.notify_waiters();
}

/// A body that sends a byte every 100 ms for `length`.
fn async_stream(
    length: Duration,
) -> impl futures::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send {
    let chunks = (length.as_millis() / 100).max(1) as usize;
    futures::stream::iter(0..chunks).then(|_| async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(Bytes::from_static(b"."))
    })
}

use futures::StreamExt as _;
