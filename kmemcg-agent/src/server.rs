//! The agent's HTTP API.
use std::sync::Arc;

use axum::{
    Json, Router,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;
use tokio::sync::watch;

use crate::{
    api::{CgroupUsage, Status},
    sampler::Snapshot,
};

pub type Snapshots = watch::Receiver<Arc<Snapshot>>;

pub fn router(snapshots: Snapshots) -> Router {
    Router::new()
        .route("/api/v1/cgroups", get(cgroups))
        .route("/api/v1/status", get(status))
        .fallback(not_found)
        .with_state(snapshots)
}

async fn cgroups(State(snapshots): State<Snapshots>) -> Json<Vec<CgroupUsage>> {
    let snapshot = snapshots.borrow().clone();
    Json(snapshot.cgroups.clone())
}

async fn status(State(snapshots): State<Snapshots>) -> Json<Status> {
    let snapshot = snapshots.borrow().clone();
    Json(snapshot.status.clone())
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": "no such endpoint; see /api/v1/cgroups and /api/v1/status"})),
    )
        .into_response()
}
