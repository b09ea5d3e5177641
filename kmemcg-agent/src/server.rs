//! The agent's HTTP API.
use std::sync::Arc;

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;
use tokio::sync::watch;

use crate::{api::Status, sampler::Snapshot};

pub type Snapshots = watch::Receiver<Arc<Snapshot>>;

pub fn router(snapshots: Snapshots) -> Router {
    Router::new()
        .route("/api/v1/cgroups", get(cgroups))
        .route("/api/v1/status", get(status))
        .route("/api/v1/dying", get(dying))
        .fallback(not_found)
        .with_state(snapshots)
}

async fn cgroups(State(snapshots): State<Snapshots>) -> Response {
    let snapshot = snapshots.borrow().clone();
    json(&snapshot.cgroups)
}

async fn dying(State(snapshots): State<Snapshots>) -> Response {
    let snapshot = snapshots.borrow().clone();
    json(&snapshot.dying)
}

async fn status(State(snapshots): State<Snapshots>) -> Json<Status> {
    let snapshot = snapshots.borrow().clone();
    Json(snapshot.status.clone())
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
        Json(json!({"error": "no such endpoint; see /api/v1/cgroups, /api/v1/dying and /api/v1/status"})),
    )
        .into_response()
}
