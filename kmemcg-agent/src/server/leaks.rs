//! `/api/v1/leaks`: start (POST), list (GET), read (GET `/{id}`) and stop (DELETE `/{id}`) leak
//! recordings. Starting and stopping are changes (the unix socket, or the write token).
use std::{sync::Arc, time::Duration};

use axum::{
    Json,
    extract::{Path, Query, State, rejection::JsonRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
};

use super::{AppState, json};
use crate::{
    api::LeakRequest,
    leaks::{self, DEFAULT_OLDER_THAN, Leaks},
};

fn error(e: &leaks::Error) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    let kind = match e.http_status() {
        404 => "not-found",
        409 => "too-many",
        503 => "unavailable",
        _ => "invalid",
    };
    (status, Json(json!({"error": e.to_string(), "kind": kind}))).into_response()
}

fn recorder(state: &AppState) -> Result<Arc<Leaks>, leaks::Error> {
    state.leaks.clone().ok_or_else(|| {
        leaks::Error::Unavailable("this process does not record (only the agent does)".into())
    })
}

/// Runs `f` on the recorder off the async workers (it reads eBPF maps).
async fn with_recorder<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&Leaks) -> Result<T, leaks::Error> + Send + 'static,
) -> Result<T, leaks::Error> {
    let leaks = recorder(state)?;
    tokio::task::spawn_blocking(move || f(&leaks))
        .await
        .unwrap_or_else(|e| {
            Err(leaks::Error::Unavailable(format!(
                "the request failed: {e}"
            )))
        })
}

pub(super) async fn start(
    State(state): State<AppState>,
    body: Result<Json<LeakRequest>, JsonRejection>,
) -> Response {
    let request = match body {
        Ok(Json(request)) => request,
        Err(e) => {
            return error(&leaks::Error::Invalid(format!(
                "not a leak recording request ({{\"path\": ..., \"for_seconds\": ...}}): {}",
                e.body_text()
            )));
        }
    };
    let Ok(duration) = Duration::try_from_secs_f64(request.for_seconds) else {
        return error(&leaks::Error::Invalid(format!(
            "for_seconds must be a positive number, not {}",
            request.for_seconds
        )));
    };
    let path = request.path.clone();
    match with_recorder(&state, move |l| l.start(&request.path, duration)).await {
        Ok(id) => (
            StatusCode::CREATED,
            Json(json!({"id": id, "cgroup": path, "for_seconds": duration.as_secs_f64()})),
        )
            .into_response(),
        Err(e) => error(&e),
    }
}

pub(super) async fn list(State(state): State<AppState>) -> Response {
    match recorder(&state) {
        Ok(leaks) => json(&leaks.list()),
        Err(e) => error(&e),
    }
}

#[derive(serde::Deserialize)]
pub(super) struct ViewQuery {
    /// Seconds; objects older than this are counted apart in each site.
    older_than: Option<f64>,
}

pub(super) async fn view(
    State(state): State<AppState>,
    Path(id): Path<u64>,
    Query(q): Query<ViewQuery>,
) -> Response {
    let older_than = match q.older_than {
        None => DEFAULT_OLDER_THAN,
        Some(s) => match Duration::try_from_secs_f64(s) {
            Ok(d) => d,
            Err(_) => {
                return error(&leaks::Error::Invalid(format!(
                    "older_than must be seconds, not {s}"
                )));
            }
        },
    };
    let snapshot = state.snapshot();
    match with_recorder(&state, move |l| l.view(id, &snapshot.cgroups, older_than)).await {
        Ok(view) => json(&view),
        Err(e) => error(&e),
    }
}

pub(super) async fn stop(State(state): State<AppState>, Path(id): Path<u64>) -> Response {
    match with_recorder(&state, move |l| l.stop(id)).await {
        Ok(()) => json(&json!({"stopped": id})),
        Err(e) => error(&e),
    }
}
