//! The agent's HTTP API: the JSON API, Prometheus metrics and health probes.
use std::{
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    Json, Router,
    extract::{Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;
use tokio::sync::watch;
use tower_http::compression::CompressionLayer;

use crate::{
    api::{Snapshot, Status},
    limits::{Enforcer, rules::RuleSpec},
    metrics::{self, Exporter, MetricsConfig},
};

pub type Snapshots = watch::Receiver<Arc<Snapshot>>;

/// Settings the handlers read and SIGHUP may change.
pub struct Shared {
    metrics: RwLock<MetricsConfig>,
    interval_ms: AtomicU64,
    exporter: Exporter,
    enforcer: Arc<Enforcer>,
}

impl Shared {
    /// Without limits.
    pub fn new(metrics: MetricsConfig, interval: Duration) -> Self {
        Self::with_enforcer(metrics, interval, Arc::new(Enforcer::disabled()))
    }

    pub fn with_enforcer(
        metrics: MetricsConfig,
        interval: Duration,
        enforcer: Arc<Enforcer>,
    ) -> Self {
        Self {
            metrics: RwLock::new(metrics),
            interval_ms: AtomicU64::new(interval.as_millis() as u64),
            exporter: Exporter::default(),
            enforcer,
        }
    }

    pub fn enforcer(&self) -> &Enforcer {
        &self.enforcer
    }

    pub fn metrics_config(&self) -> MetricsConfig {
        self.metrics
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    pub fn set_metrics_config(&self, config: MetricsConfig) {
        match self.metrics.write() {
            Ok(mut c) => *c = config,
            Err(poisoned) => *poisoned.into_inner() = config,
        }
    }

    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms.load(Ordering::Relaxed))
    }

    pub fn set_interval(&self, interval: Duration) {
        self.interval_ms
            .store(interval.as_millis() as u64, Ordering::Relaxed);
    }
}

#[derive(Clone)]
struct AppState {
    snapshots: Snapshots,
    shared: Arc<Shared>,
}

/// The router with default metrics settings (what tests and embedders use).
pub fn router(snapshots: Snapshots) -> Router {
    router_with(
        snapshots,
        Arc::new(Shared::new(
            MetricsConfig::default(),
            Duration::from_secs(1),
        )),
    )
}

pub fn router_with(snapshots: Snapshots, shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/api/v1/cgroups", get(cgroups))
        .route("/api/v1/status", get(status))
        .route("/api/v1/dying", get(dying))
        .route(
            "/api/v1/limits",
            get(limits).post(set_limit).delete(remove_limit),
        )
        .route("/api/v1/enforcement", get(enforcement))
        .route(
            "/metrics",
            // Prometheus asks for gzip; big expositions shrink about tenfold.
            get(prometheus).layer(CompressionLayer::new().gzip(true)),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .with_state(AppState { snapshots, shared })
}

async fn cgroups(State(state): State<AppState>) -> Response {
    let snapshot = state.snapshots.borrow().clone();
    json(&snapshot.cgroups)
}

async fn dying(State(state): State<AppState>) -> Response {
    let snapshot = state.snapshots.borrow().clone();
    json(&snapshot.dying)
}

async fn limits(State(state): State<AppState>) -> Response {
    json(&state.shared.enforcer.rules())
}

/// Adds or replaces a runtime rule: 400 with the reason when it is malformed or refused.
async fn set_limit(
    State(state): State<AppState>,
    body: Result<Json<RuleSpec>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let spec = match body {
        Ok(Json(spec)) => spec,
        Err(e) => return bad_request(format!("not a limit rule: {}", e.body_text())),
    };
    match state.shared.enforcer.set(spec) {
        Ok(rule) => json(&rule),
        Err(e) => bad_request(e),
    }
}

#[derive(serde::Deserialize)]
struct PathQuery {
    path: String,
}

/// `DELETE /api/v1/limits?path=/foo`.
async fn remove_limit(State(state): State<AppState>, Query(q): Query<PathQuery>) -> Response {
    match state.shared.enforcer.remove(&q.path) {
        Ok(()) => json(&json!({"removed": q.path})),
        Err(e) => (StatusCode::NOT_FOUND, Json(json!({"error": e}))).into_response(),
    }
}

async fn enforcement(State(state): State<AppState>) -> Response {
    json(&state.shared.enforcer.records())
}

fn bad_request(error: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": error}))).into_response()
}

async fn status(State(state): State<AppState>) -> Json<Status> {
    let snapshot = state.snapshots.borrow().clone();
    Json(snapshot.status.clone())
}

async fn prometheus(State(state): State<AppState>) -> Response {
    let snapshot = state.snapshots.borrow().clone();
    let shared = state.shared.clone();
    // Thousands of cgroups take a few hundred milliseconds: off the async workers.
    let rendered = tokio::task::spawn_blocking(move || {
        let extra = metrics::enforcement(&shared.enforcer.metrics());
        shared
            .exporter
            .render_with(&snapshot, &shared.metrics_config(), extra)
    })
    .await;
    match rendered {
        Ok(body) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], body).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("rendering metrics failed: {e}\n"),
        )
            .into_response(),
    }
}

/// Liveness: the server answers.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the maps were read recently (within three intervals and a few seconds).
async fn readyz(State(state): State<AppState>) -> Response {
    let updated_at = state.snapshots.borrow().status.updated_at;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let limit = (state.shared.interval() * 3).as_secs() + 5;
    let age = now.saturating_sub(updated_at);
    if updated_at > 0 && age <= limit {
        (StatusCode::OK, "ready\n".to_string()).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: the eBPF maps were last read {age} s ago (limit {limit} s)\n"),
        )
            .into_response()
    }
}

/// Serializes straight from the shared snapshot, without copying it.
fn json<T: serde::Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": "no such endpoint; see /api/v1/cgroups, /api/v1/dying, /api/v1/status, /api/v1/limits, /api/v1/enforcement, /metrics, /healthz and /readyz"})),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn serve(snapshot: Snapshot) -> std::net::SocketAddr {
        let (_tx, rx) = watch::channel(Arc::new(snapshot));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let addr = listener.local_addr().expect("its address");
        // `_tx` lives in the router's receiver; the server runs until the test ends.
        tokio::spawn(async move { axum::serve(listener, router(rx)).await });
        addr
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    #[tokio::test]
    async fn probes_and_metrics_answer() {
        let mut fresh = Snapshot::default();
        fresh.status.updated_at = now();
        let addr = serve(fresh).await;
        let client = reqwest::Client::new();
        let get = |path: &str| client.get(format!("http://{addr}{path}")).send();
        assert_eq!(get("/healthz").await.expect("healthz").status(), 200);
        assert_eq!(get("/readyz").await.expect("readyz").status(), 200);
        let metrics = get("/metrics").await.expect("metrics");
        assert_eq!(metrics.status(), 200);
        assert_eq!(
            metrics.headers()[header::CONTENT_TYPE],
            metrics::CONTENT_TYPE
        );
        assert!(
            metrics
                .text()
                .await
                .expect("body")
                .contains("kmemcg_build_info")
        );
        let gzipped = client
            .get(format!("http://{addr}/metrics"))
            .header(header::ACCEPT_ENCODING, "gzip")
            .send()
            .await
            .expect("metrics");
        assert_eq!(gzipped.headers()[header::CONTENT_ENCODING], "gzip");
    }

    #[tokio::test]
    async fn stale_data_is_not_ready() {
        let mut stale = Snapshot::default();
        stale.status.updated_at = now() - 600;
        let addr = serve(stale).await;
        let response = reqwest::get(format!("http://{addr}/readyz"))
            .await
            .expect("readyz");
        assert_eq!(response.status(), 503);
        assert!(response.text().await.expect("body").contains("last read"));
    }
}
