//! The agent's HTTP API: the JSON API, Prometheus metrics and health probes.
use std::{
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    Extension, Json, Router,
    extract::{Query, State},
    http::{StatusCode, header},
    middleware,
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;
use tokio::sync::watch;
use tower_http::compression::CompressionLayer;

use crate::{
    access::{Caller, WriteAccess, guard_writes},
    api::{Snapshot, Status},
    limits::{self, Enforcer, RuleSpec},
    metrics::{self, Exporter, MetricsConfig},
};

pub type Snapshots = watch::Receiver<Arc<Snapshot>>;

/// Settings the handlers read and SIGHUP may change; the sampling loop reads the interval.
pub struct Settings {
    metrics: RwLock<MetricsConfig>,
    interval_ms: AtomicU64,
}

impl Settings {
    pub fn new(metrics: MetricsConfig, interval: Duration) -> Self {
        Self {
            metrics: RwLock::new(metrics),
            interval_ms: AtomicU64::new(interval.as_millis() as u64),
        }
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

/// What the handlers share: the latest snapshot, the settings, the limits and the exporter.
#[derive(Clone)]
pub struct AppState {
    snapshots: Snapshots,
    settings: Arc<Settings>,
    enforcer: Arc<Enforcer>,
    exporter: Arc<Exporter>,
}

impl AppState {
    pub fn new(snapshots: Snapshots, settings: Arc<Settings>, enforcer: Arc<Enforcer>) -> Self {
        Self {
            snapshots,
            settings,
            enforcer,
            exporter: Arc::new(Exporter::default()),
        }
    }
}

/// The API for one listener, with that listener's write access rule. Serve it with
/// `into_make_service_with_connect_info::<Peer>()` over a [`crate::listener::Bounded`]
/// listener.
pub fn router(state: AppState, access: WriteAccess) -> Router {
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
        .layer(middleware::from_fn_with_state(access, guard_writes))
        .with_state(state)
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
    json(&state.enforcer.rules())
}

/// Adds or replaces a runtime rule; a refusal's status and `kind` say why (see
/// [`limits::Error`]).
async fn set_limit(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<RuleSpec>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let spec = match body {
        Ok(Json(spec)) => spec,
        Err(e) => {
            let e = limits::Error::Invalid(format!("not a limit rule: {}", e.body_text()));
            return limits_error(&e);
        }
    };
    match state.enforcer.set(spec, &caller.0) {
        Ok(rule) => json(&rule),
        Err(e) => limits_error(&e),
    }
}

#[derive(serde::Deserialize)]
struct PathQuery {
    path: String,
}

/// `DELETE /api/v1/limits?path=/foo`. A removal whose save failed is done: 200 with a
/// `warning`.
async fn remove_limit(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<PathQuery>,
) -> Response {
    match state.enforcer.remove(&q.path, &caller.0) {
        Ok(()) => json(&json!({"removed": q.path})),
        Err(e @ limits::Error::NotSaved { applied: true, .. }) => {
            json(&json!({"removed": q.path, "warning": e.to_string()}))
        }
        Err(e) => limits_error(&e),
    }
}

async fn enforcement(State(state): State<AppState>) -> Response {
    json(&state.enforcer.records())
}

fn limits_error(e: &limits::Error) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    (
        status,
        Json(json!({"error": e.to_string(), "kind": e.kind()})),
    )
        .into_response()
}

async fn status(State(state): State<AppState>) -> Json<Status> {
    let snapshot = state.snapshots.borrow().clone();
    Json(snapshot.status.clone())
}

async fn prometheus(State(state): State<AppState>) -> Response {
    let snapshot = state.snapshots.borrow().clone();
    // Thousands of cgroups take a few hundred milliseconds: off the async workers.
    let rendered = tokio::task::spawn_blocking(move || {
        let extra = metrics::enforcement(&state.enforcer.metrics());
        state
            .exporter
            .render_with(&snapshot, &state.settings.metrics_config(), extra)
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
    let limit = (state.settings.interval() * 3).as_secs() + 5;
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
    use crate::listener::{Bounded, Peer};

    async fn serve(snapshot: Snapshot) -> std::net::SocketAddr {
        let (_tx, rx) = watch::channel(Arc::new(snapshot));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let addr = listener.local_addr().expect("its address");
        let state = AppState::new(
            rx,
            Arc::new(Settings::new(
                MetricsConfig::default(),
                Duration::from_secs(1),
            )),
            Arc::new(Enforcer::disabled()),
        );
        let app = router(state, WriteAccess::Tcp { token: None })
            .into_make_service_with_connect_info::<Peer>();
        // `_tx` lives in the router's receiver; the server runs until the test ends.
        tokio::spawn(async move { axum::serve(Bounded::new(listener), app).await });
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
    async fn tcp_writes_are_refused_without_a_token() {
        let addr = serve(Snapshot::default()).await;
        let response = reqwest::Client::new()
            .post(format!("http://{addr}/api/v1/limits"))
            .json(&serde_json::json!({"path": "/victim", "max": 1, "action": "kill"}))
            .send()
            .await
            .expect("answer");
        assert_eq!(response.status(), 403);
        let body = response.text().await.expect("body");
        assert!(body.contains("unix socket"), "{body}");
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
