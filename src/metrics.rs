//! Prometheus metrics, served in the text format on their own address.
//!
//! - `grpc_server_handled_total{method, code}`: calls by method and status code;
//! - `grpc_server_handling_seconds{method}`: latency histogram by method;
//! - `db_pool_connections{state="idle"|"in_use"}`: the database pool;
//! - `connections{state}`: connections by state, counted on the read pool at
//!   most once per interval (15 s by default) however many scrapes arrive;
//! - `request_id_replays_total{path="recorded"|"after_race"}`: calls answered
//!   with the recorded result of an earlier call with the same request_id,
//!   found at once or after waiting for a concurrent duplicate to commit;
//! - `watch_streams`, `watch_events_sent_total`: WatchConnectionEvents;
//! - `access_index_connections`, `access_index_lag`,
//!   `access_index_last_change_age_seconds`: the CheckAccess index, how far
//!   (in log positions) it is behind the change log this server has read,
//!   and how old the newest change it applied is.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, LazyLock, atomic::AtomicU64},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use sea_orm::{
    DatabaseConnection, DbBackend, EntityTrait, QuerySelect,
    sea_query::{Expr, ExprTrait},
};
use tokio_util::sync::CancellationToken;

use crate::{
    db::Reader,
    domain::{ConnectionState, Named, VariantArray},
    entity::connection,
    grpc::server::served_methods,
    service::{
        Access, ChangeFeed, Watches, idempotency::ReplayCounts, webhook_delivery::DeliveryMetrics,
    },
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

/// Connections by state name.
type StateCounts = Vec<(String, i64)>;

/// The service's metrics.
pub struct Metrics {
    registry: Registry,
    calls: Family<CallLabels, Counter>,
    latency: Family<MethodLabels, Histogram>,
    pool: Family<StateLabels, Gauge>,
    connections: Family<StateLabels, Gauge>,
    db: DatabaseConnection,
    reader: Reader,
    followers: Followers,
    watch_streams: Gauge,
    index_connections: Gauge,
    index_lag: Gauge,
    index_age: Gauge<f64, AtomicU64>,
    /// Connections by state as last counted, and when. Scrapes that arrive
    /// while it is being counted wait for that count.
    state_counts: tokio::sync::Mutex<Option<(Instant, StateCounts)>>,
    /// How long a count is reused.
    count_interval: Duration,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics { .. }")
    }
}

impl Metrics {
    /// Metrics for a server using `db`, and `reader` for reads, whose
    /// connections layer counts its replays in `replays`; connections are
    /// counted by state at most once per `count_interval`.
    pub fn new(
        db: DatabaseConnection,
        reader: Reader,
        replays: &ReplayCounts,
        followers: Followers,
        webhooks: &DeliveryMetrics,
        count_interval: Duration,
    ) -> Self {
        let mut registry = Registry::default();
        registry.register(
            "webhook_delivery_attempts",
            "Webhook delivery attempts made by this server, by outcome",
            webhooks.attempts.clone(),
        );
        registry.register(
            "webhook_deliveries_in_flight",
            "Webhook delivery attempts in flight on this server",
            webhooks.in_flight.clone(),
        );
        registry.register(
            "webhook_queued_events",
            "Events queued and not yet delivered for the webhook endpoints this server delivers to",
            webhooks.queued.clone(),
        );
        registry.register(
            "webhook_oldest_undelivered_event_age_seconds",
            "Age of the oldest undelivered event of the webhook endpoints this server delivers to",
            webhooks.oldest_undelivered_seconds.clone(),
        );
        let calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "grpc_server_handled",
            "gRPC calls completed, by method and status code",
            calls.clone(),
        );
        let latency = Family::<MethodLabels, Histogram>::new_with_constructor(|| {
            // 0.25 ms to ~16 s.
            Histogram::new(exponential_buckets(0.000_25, 2.0, 17))
        });
        registry.register(
            "grpc_server_handling_seconds",
            "Time to handle a gRPC call, by method",
            latency.clone(),
        );
        let pool = Family::<StateLabels, Gauge>::default();
        registry.register(
            "db_pool_connections",
            "Database pool connections, idle or in use",
            pool.clone(),
        );
        let connections = Family::<StateLabels, Gauge>::default();
        registry.register("connections", "Connections by state", connections.clone());
        registry.register(
            "request_id_replays",
            "Calls answered with the recorded result of an earlier call with the same request_id",
            replays.family(),
        );
        let watch_streams = Gauge::default();
        registry.register(
            "watch_streams",
            "Open WatchConnectionEvents streams",
            watch_streams.clone(),
        );
        registry.register(
            "watch_events_sent",
            "Events sent on WatchConnectionEvents streams",
            followers.watches.events_sent(),
        );
        let index_connections = Gauge::default();
        registry.register(
            "access_index_connections",
            "Connections in the CheckAccess index",
            index_connections.clone(),
        );
        let index_lag = Gauge::default();
        registry.register(
            "access_index_lag",
            "Change log positions the CheckAccess index is behind what this server has read",
            index_lag.clone(),
        );
        let index_age = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "access_index_last_change_age_seconds",
            "Age of the newest change the CheckAccess index has applied",
            index_age.clone(),
        );
        Self {
            followers,
            watch_streams,
            index_connections,
            index_lag,
            index_age,
            registry,
            calls,
            latency,
            pool,
            connections,
            db,
            reader,
            state_counts: tokio::sync::Mutex::new(None),
            count_interval,
        }
    }

    fn record(&self, method: &str, code: tonic::Code, elapsed: std::time::Duration) {
        self.calls
            .get_or_create(&CallLabels {
                method: method.to_owned(),
                code: format!("{code:?}"),
            })
            .inc();
        self.latency
            .get_or_create(&MethodLabels {
                method: method.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Refreshes the gauges from the database and renders every metric.
    pub async fn render(&self) -> Result<String, sea_orm::DbErr> {
        let (size, idle) = pool_usage(&self.db, &self.reader);
        self.pool.get_or_create(&state_label("idle")).set(idle);
        self.pool
            .get_or_create(&state_label("in_use"))
            .set(size.saturating_sub(idle));

        self.record_followers();
        let counts = self.connection_counts().await?;
        for state in ConnectionState::VARIANTS {
            let count = counts
                .iter()
                .find(|(name, _)| name == state.as_str())
                .map_or(0, |(_, count)| *count);
            self.connections
                .get_or_create(&state_label(state.as_str()))
                .set(count);
        }

        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        Ok(text)
    }
}

/// What follows the change log, for its metrics.
#[derive(Debug, Clone)]
pub struct Followers {
    /// The change feed.
    pub feed: ChangeFeed,
    /// The watches it feeds.
    pub watches: Watches,
    /// The CheckAccess index it feeds.
    pub access: Access,
}

impl Metrics {
    fn record_followers(&self) {
        let Followers {
            feed,
            watches,
            access,
        } = &self.followers;
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.watch_streams.set(count(watches.open_streams()));
        self.index_connections.set(count(access.len()));
        self.index_lag.set(Ord::max(
            feed.head().saturating_sub(access.seen().xmax()),
            0,
        ));
        let age = access.last_change().map_or(0.0, |at| {
            Ord::max((chrono::Utc::now() - at).num_milliseconds(), 0) as f64 / 1000.0
        });
        self.index_age.set(age);
    }

    /// Connections by state: the last count if it is recent enough, else a
    /// new one from the read pool.
    async fn connection_counts(&self) -> Result<StateCounts, sea_orm::DbErr> {
        let mut last = self.state_counts.lock().await;
        if let Some((at, counts)) = last.as_ref()
            && at.elapsed() < self.count_interval
        {
            return Ok(counts.clone());
        }
        let counts: StateCounts = connection::Entity::find()
            .select_only()
            .column(connection::Column::State)
            .column_as(Expr::col(connection::Column::Id).count(), "count")
            .group_by(connection::Column::State)
            .into_tuple()
            .all(&self.reader)
            .await?;
        *last = Some((Instant::now(), counts.clone()));
        Ok(counts)
    }
}

fn state_label(state: &str) -> StateLabels {
    StateLabels {
        state: state.to_owned(),
    }
}

/// (connections in the pools, idle ones): the main pool and the read pool.
fn pool_usage(db: &DatabaseConnection, reader: &Reader) -> (i64, i64) {
    let (size, idle) = match db.get_database_backend() {
        DbBackend::Postgres => {
            let pool = db.get_postgres_connection_pool();
            (pool.size() as usize, pool.num_idle())
        }
        DbBackend::Sqlite => {
            let pool = db.get_sqlite_connection_pool();
            (pool.size() as usize, pool.num_idle())
        }
        _ => (0, 0),
    };
    let (read_size, read_idle) = reader.own_pool_usage();
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    (
        count(size.saturating_add(read_size)),
        count(idle.saturating_add(read_idle)),
    )
}

/// Every method the server serves, then `unknown`. Only these become
/// `method` labels.
static METHODS: LazyLock<Vec<String>> = LazyLock::new(|| {
    let mut methods = served_methods();
    methods.push("unknown".to_owned());
    methods
});

/// The method label of a request path: a served method by name, anything
/// else `unknown`, so callers cannot grow the label set.
fn method_label(path: &str) -> &'static str {
    let methods = LazyLock::force(&METHODS);
    methods
        .iter()
        .find(|method| *method == path)
        .unwrap_or(&methods[methods.len() - 1])
}

/// A tower layer that records every call in [`Metrics`] (when enabled).
#[derive(Clone, Debug, Default)]
pub struct MetricsLayer {
    metrics: Option<Arc<Metrics>>,
}

impl MetricsLayer {
    /// Records into `metrics`; `None` records nothing.
    pub fn new(metrics: Option<Arc<Metrics>>) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// See [`MetricsLayer`].
#[derive(Clone, Debug)]
pub struct MetricsService<S> {
    inner: S,
    metrics: Option<Arc<Metrics>>,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for MetricsService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let Some(metrics) = self.metrics.clone() else {
            return Box::pin(self.inner.call(request));
        };
        let method = method_label(request.uri().path()).to_owned();
        let started = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            // Unary calls that fail carry grpc-status in the headers
            // (trailers-only); successful ones send it as 0 in the trailers.
            let code = match &response {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or(tonic::Code::Ok, tonic::Code::from_i32),
                Err(_) => tonic::Code::Unknown,
            };
            metrics.record(&method, code, started.elapsed());
            response
        })
    }
}

/// Serves `GET /metrics` on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    async fn scrape(
        axum::extract::State(metrics): axum::extract::State<Arc<Metrics>>,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        match metrics.render().await {
            Ok(text) => (
                [(
                    http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                text,
            )
                .into_response(),
            Err(err) => {
                tracing::warn!(error = %err, "cannot collect metrics");
                http::StatusCode::SERVICE_UNAVAILABLE.into_response()
            }
        }
    }
    let router = axum::Router::new()
        .route("/metrics", axum::routing::get(scrape))
        .with_state(metrics);
    axum::serve(listener, router)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_method_has_a_label() {
        let methods = served_methods();
        for served in [
            "/connections.v1.ConnectionService/ListConnectionEvents",
            "/connections.v1.OrganizationService/GetOrganization",
            "/connections.v1.AdminService/RevokeApiKey",
            "/grpc.health.v1.Health/Watch",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            assert!(
                methods.iter().any(|m| m == served),
                "{served} in {methods:#?}"
            );
        }
        let distinct: std::collections::HashSet<_> = methods.iter().collect();
        assert_eq!(distinct.len(), methods.len(), "{methods:#?}");
        for path in methods {
            assert_eq!(method_label(&path), path);
        }
    }

    #[test]
    fn only_known_methods_become_labels() {
        assert_eq!(
            method_label("/connections.v1.ConnectionService/GetConnection"),
            "/connections.v1.ConnectionService/GetConnection"
        );
        assert_eq!(
            method_label("/grpc.health.v1.Health/Check"),
            "/grpc.health.v1.Health/Check"
        );
        assert_eq!(method_label("/evil/../x"), "unknown");
        assert_eq!(
            method_label(&format!("/connections.v1.{}", "x".repeat(200))),
            "unknown"
        );
    }
}
