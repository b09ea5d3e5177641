//! The agent's HTTP API: the JSON API, Prometheus metrics and health probes.
use std::{
    convert::Infallible,
    pin::Pin,
    sync::{
        Arc, OnceLock, RwLock, Weak,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    Extension, Json, Router,
    body::{Body, Bytes},
    extract::{Query, State},
    http::{HeaderMap, StatusCode, header},
    middleware,
    response::{IntoResponse, Response},
    routing::get,
};
use hyper::body::{Frame, SizeHint};
use serde_json::json;
use tokio::sync::watch;

use crate::{
    access::{Caller, WriteAccess, guard_writes},
    api::Snapshot,
    history::History,
    limits::{self, Enforcer, RuleSpec},
    metrics::{self, Exporter, MetricsConfig, gzip::GzipPrefix},
};

mod leaks;

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

/// What the handlers share: the latest snapshot, its encodings, the settings, the limits and
/// the exporter.
#[derive(Clone)]
pub struct AppState {
    snapshots: Snapshots,
    settings: Arc<Settings>,
    enforcer: Arc<Enforcer>,
    exporter: Arc<Exporter>,
    encoded: Arc<Encodings>,
    history: Arc<History>,
    /// Leak recordings (the agent's; None where nothing records).
    leaks: Option<Arc<crate::leaks::Leaks>>,
}

impl AppState {
    pub fn new(snapshots: Snapshots, settings: Arc<Settings>, enforcer: Arc<Enforcer>) -> Self {
        Self {
            snapshots,
            settings,
            enforcer,
            exporter: Arc::new(Exporter::default()),
            encoded: Arc::default(),
            history: Arc::default(),
            leaks: None,
        }
    }

    /// Serves the history the sampling loop records.
    pub fn with_history(self, history: Arc<History>) -> Self {
        Self { history, ..self }
    }

    /// Serves `/api/v1/leaks` with these recordings.
    pub fn with_leaks(mut self, leaks: Arc<crate::leaks::Leaks>) -> Self {
        self.leaks = Some(leaks);
        self
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshots.borrow().clone()
    }
}

/// The answers that only the snapshot decides, encoded once per sample and shared: a reader
/// costs a reference to them, not a copy of the model or of its encoding. The listener's
/// connections write them without copying (vectored writes).
#[derive(Default)]
struct Encodings {
    cgroups: Encoded<(), Encoding>,
    dying: Encoded<(), Encoding>,
    status: Encoded<(), Encoding>,
    metrics: Encoded<MetricsConfig, Arc<RenderedMetrics>>,
}

type Encoding = Result<Bytes, String>;

/// One encoding of one snapshot (with `K`, e.g. the metrics settings), made by the first
/// reader after a sample while the others wait for it. Only the latest is kept here; an older
/// one lives on only while answers still being sent hold it.
struct Encoded<K, V> {
    latest: tokio::sync::Mutex<Option<(Weak<Snapshot>, K, V)>>,
}

impl<K, V> Default for Encoded<K, V> {
    fn default() -> Self {
        Self {
            latest: tokio::sync::Mutex::new(None),
        }
    }
}

impl<K, V> Encoded<K, V>
where
    K: PartialEq + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    async fn get(
        &self,
        snapshot: &Arc<Snapshot>,
        key: K,
        encode: impl FnOnce(&Snapshot, &K) -> V + Send + 'static,
    ) -> Result<V, tokio::task::JoinError> {
        let mut latest = self.latest.lock().await;
        if let Some((of, k, v)) = latest.as_ref()
            && Weak::as_ptr(of) == Arc::as_ptr(snapshot)
            && *k == key
        {
            return Ok(v.clone());
        }
        *latest = None;
        let (of, k) = (snapshot.clone(), key.clone());
        // Thousands of cgroups take tens of milliseconds: off the async workers.
        let v = tokio::task::spawn_blocking(move || encode(&of, &k)).await?;
        *latest = Some((Arc::downgrade(snapshot), key, v.clone()));
        Ok(v)
    }
}

/// The snapshot's part of `/metrics`, as text and, once a scrape asks for it, gzipped.
struct RenderedMetrics {
    text: Bytes,
    gzip: OnceLock<GzipPrefix>,
}

/// A body of shared chunks, sent as they are.
struct Chunks(Vec<Bytes>);

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let next = (!self.0.is_empty()).then(|| Ok(Frame::data(self.0.remove(0))));
        Poll::Ready(next)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.0.iter().map(|b| b.len() as u64).sum())
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
        .route("/api/v1/history", get(history))
        .route("/api/v1/leaks", get(leaks::list).post(leaks::start))
        .route("/api/v1/leaks/{id}", get(leaks::view).delete(leaks::stop))
        .route("/metrics", get(prometheus))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(access, guard_writes))
        .with_state(state)
}

async fn cgroups(State(state): State<AppState>) -> Response {
    let snapshot = state.snapshot();
    let encoded = state
        .encoded
        .cgroups
        .get(&snapshot, (), |s, _| encode_json(&s.cgroups));
    shared_json(encoded.await)
}

async fn dying(State(state): State<AppState>) -> Response {
    let snapshot = state.snapshot();
    let encoded = state
        .encoded
        .dying
        .get(&snapshot, (), |s, _| encode_json(&s.dying));
    shared_json(encoded.await)
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

#[derive(serde::Deserialize)]
struct HistoryQuery {
    cgroup: String,
}

/// `GET /api/v1/history?cgroup=/foo`: 404 for a cgroup whose history is not kept.
async fn history(
    State(state): State<AppState>,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let error = |status: StatusCode, text: String| (status, Json(json!({"error": text})));
    let Ok(Query(q)) = query else {
        let text = "say which cgroup: /api/v1/history?cgroup=/path/from/the/cgroup/root";
        return error(StatusCode::BAD_REQUEST, text.into()).into_response();
    };
    let path = match crate::cgroup_path::normalize(&q.cgroup) {
        Ok(path) => path,
        Err(e) => return error(StatusCode::BAD_REQUEST, e).into_response(),
    };
    match state.history.of(&path) {
        Some(h) => json(&h),
        None => error(
            StatusCode::NOT_FOUND,
            format!(
                "no history is kept for cgroup {path}: the agent keeps one for the {} largest \
                 cgroups and those under limit rules, from when they became one of them",
                crate::history::MAX_CGROUPS
            ),
        )
        .into_response(),
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

async fn status(State(state): State<AppState>) -> Response {
    let snapshot = state.snapshot();
    let encoded = state
        .encoded
        .status
        .get(&snapshot, (), |s, _| encode_json(&s.status));
    shared_json(encoded.await)
}

/// The snapshot's families, rendered once per sample (and settings) and shared, followed by
/// the enforcement's and the process's, rendered for each scrape (they change between
/// samples). Gzipped when asked (Prometheus does; big expositions shrink about eightfold):
/// the shared part is compressed once too.
async fn prometheus(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let config = state.settings.metrics_config();
    let snapshot = state.snapshot();
    let rendered = state
        .encoded
        .metrics
        .get(&snapshot, config, |s, config| {
            Arc::new(RenderedMetrics {
                text: Exporter::render_snapshot(s, config).into(),
                gzip: OnceLock::new(),
            })
        })
        .await;
    let gzip = accepts_gzip(&headers);
    let body = match rendered {
        Ok(rendered) => {
            tokio::task::spawn_blocking(move || {
                let extra = metrics::enforcement(&state.enforcer.metrics());
                let live = state.exporter.render_live(extra);
                if gzip {
                    let prefix = rendered
                        .gzip
                        .get_or_init(|| GzipPrefix::new(&rendered.text));
                    vec![prefix.bytes.clone(), prefix.finish(live.as_bytes())]
                } else {
                    vec![rendered.text.clone(), live.into()]
                }
            })
            .await
        }
        Err(e) => Err(e),
    };
    match body {
        Ok(chunks) => {
            let mut response = Response::new(Body::new(Chunks(chunks)));
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(metrics::CONTENT_TYPE),
            );
            headers.insert(
                header::VARY,
                header::HeaderValue::from_static("accept-encoding"),
            );
            if gzip {
                headers.insert(
                    header::CONTENT_ENCODING,
                    header::HeaderValue::from_static("gzip"),
                );
            }
            response
        }
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("rendering metrics failed: {e}\n"),
        )
            .into_response(),
    }
}

/// Whether `Accept-Encoding` takes gzip (listed, or `*`, and not with `q=0`).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or_default();
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
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

fn encode_json<T: serde::Serialize>(value: &T) -> Encoding {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| e.to_string())
}

/// A shared encoding as the answer.
fn shared_json(encoded: Result<Encoding, tokio::task::JoinError>) -> Response {
    match encoded {
        Ok(Ok(body)) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Serializes a small answer for this request.
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
    async fn gzipped_metrics_are_the_same_text_and_json_answers_are_shared() {
        use std::io::Read as _;
        let mut snapshot = Snapshot::default();
        snapshot.status.updated_at = now();
        snapshot.cgroups = (0..200)
            .map(|i| crate::api::CgroupUsage {
                id: i,
                path: format!("/c{i}"),
                slab_bytes: 4096 * i,
                ..Default::default()
            })
            .collect();
        let expected_json = serde_json::to_vec(&snapshot.cgroups).expect("json");
        let addr = serve(snapshot).await;
        let client = reqwest::Client::new();
        let url = format!("http://{addr}/metrics");
        let plain = client.get(&url).send().await.expect("metrics");
        assert!(plain.headers().get(header::CONTENT_ENCODING).is_none());
        let plain = plain.text().await.expect("body");
        let gzipped = client
            .get(&url)
            .header(header::ACCEPT_ENCODING, "deflate, gzip;q=0.8")
            .send()
            .await
            .expect("metrics");
        assert_eq!(gzipped.headers()[header::CONTENT_ENCODING], "gzip");
        let mut text = String::new();
        flate2::read::GzDecoder::new(&gzipped.bytes().await.expect("body")[..])
            .read_to_string(&mut text)
            .expect("one valid gzip member");
        // The process's own figures change between two scrapes; the rest is the same text.
        let stable = |t: &str| {
            t.lines()
                .filter(|l| !l.contains("process_"))
                .map(String::from)
                .collect::<Vec<_>>()
        };
        assert_eq!(stable(&text), stable(&plain));
        assert!(text.contains("kmemcg_cgroup_slab_bytes{cgroup=\"/c199\"} 815104"));
        assert!(text.contains("process_resident_memory_bytes"));
        let refused = client
            .get(&url)
            .header(header::ACCEPT_ENCODING, "gzip;q=0")
            .send()
            .await
            .expect("metrics");
        assert!(refused.headers().get(header::CONTENT_ENCODING).is_none());
        for _ in 0..2 {
            let body = client
                .get(format!("http://{addr}/api/v1/cgroups"))
                .send()
                .await
                .expect("cgroups")
                .bytes()
                .await
                .expect("body");
            assert_eq!(body, expected_json);
        }
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
