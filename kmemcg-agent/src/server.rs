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
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;
use tokio::sync::watch;
use tower_http::compression::CompressionLayer;

use crate::{
    api::{CgroupUsage, Status},
    metrics::{self, Exporter, MetricsConfig},
    sampler::Snapshot,
};

pub type Snapshots = watch::Receiver<Arc<Snapshot>>;

/// Settings the handlers read and SIGHUP may change.
pub struct Shared {
    metrics: RwLock<MetricsConfig>,
    interval_ms: AtomicU64,
    exporter: Exporter,
}

impl Shared {
    pub fn new(metrics: MetricsConfig, interval: Duration) -> Self {
        Self {
            metrics: RwLock::new(metrics),
            interval_ms: AtomicU64::new(interval.as_millis() as u64),
            exporter: Exporter::default(),
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

async fn cgroups(State(state): State<AppState>) -> Json<Vec<CgroupUsage>> {
    let snapshot = state.snapshots.borrow().clone();
    Json(snapshot.cgroups.clone())
}

async fn status(State(state): State<AppState>) -> Json<Status> {
    let snapshot = state.snapshots.borrow().clone();
    Json(snapshot.status.clone())
}

async fn prometheus(State(state): State<AppState>) -> Response {
    let snapshot = state.snapshots.borrow().clone();
    let config = state.shared.metrics_config();
    let body = state.shared.exporter.render(&snapshot, &config);
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], body).into_response()
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

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": "no such endpoint; see /api/v1/cgroups, /api/v1/status, /metrics, /healthz and /readyz"})),
    )
        .into_response()
}
