//! A client of the agent's API, for `kmemcg stat`, `kmemcg top` and `kmemcg limit`. Each
//! request goes to exactly the endpoint it was given: a TCP address (changes with a token) or
//! the agent's unix socket (changes as root), never one in place of the other.
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow};
use serde::de::DeserializeOwned;

use crate::{
    api::{CgroupHistory, CgroupUsage, DyingCgroup, LeakRequest, LeakView, Status},
    files::{self, Private},
    limits::{LimitRule, RuleSpec, audit::AuditRecord},
};

pub struct Client {
    http: reqwest::Client,
    /// Where reads go.
    reads: Endpoint,
    /// Where changes go.
    writes: Endpoint,
}

/// How long a request may take over the unix socket (as over TCP).
const SOCKET_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Where requests go.
#[derive(Clone, Debug, PartialEq)]
pub enum Endpoint {
    /// The TCP listener at this base URL, changes with this token.
    Tcp { base: String, token: Option<String> },
    /// The agent's unix socket; `owners` are the uids besides root and this user that may own
    /// it and its directory (the agent's, when it does not run as root).
    Socket { path: PathBuf, owners: Vec<u32> },
}

impl Endpoint {
    /// `addr` as `host:port` or a URL.
    pub fn tcp(addr: &str, token: Option<String>) -> Self {
        let base = if addr.contains("://") {
            addr.trim_end_matches('/').to_string()
        } else {
            format!("http://{addr}")
        };
        Endpoint::Tcp { base, token }
    }

    pub fn socket(path: &Path, owners: Vec<u32>) -> Self {
        Endpoint::Socket {
            path: path.to_path_buf(),
            owners,
        }
    }

    /// How messages name it.
    pub fn describe(&self) -> String {
        match self {
            Endpoint::Tcp { base, .. } => base.clone(),
            Endpoint::Socket { path, .. } => format!("unix socket {}", path.display()),
        }
    }
}

/// What a request got back: its status and JSON body.
struct Answer {
    status: u16,
    body: serde_json::Value,
}

impl Client {
    /// Reads and changes over TCP at `addr` (`host:port` or a URL), without a token.
    pub fn new(addr: &str) -> Self {
        let tcp = Endpoint::tcp(addr, None);
        Self::with_endpoints(tcp.clone(), tcp)
    }

    /// Reads go to `reads`, changes to `writes`.
    pub fn with_endpoints(reads: Endpoint, writes: Endpoint) -> Self {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        Self {
            http,
            reads,
            writes,
        }
    }

    pub async fn cgroups(&self) -> anyhow::Result<Vec<CgroupUsage>> {
        self.get("/api/v1/cgroups").await
    }

    pub async fn dying(&self) -> anyhow::Result<Vec<DyingCgroup>> {
        self.get("/api/v1/dying").await
    }

    pub async fn status(&self) -> anyhow::Result<Status> {
        self.get("/api/v1/status").await
    }

    pub async fn limits(&self) -> anyhow::Result<Vec<LimitRule>> {
        self.get("/api/v1/limits").await
    }

    /// The cgroup's history, if the agent keeps one.
    pub async fn history(&self, path: &str) -> anyhow::Result<CgroupHistory> {
        let query = percent_encoding::utf8_percent_encode(path, percent_encoding::NON_ALPHANUMERIC);
        self.get(&format!("/api/v1/history?cgroup={query}")).await
    }

    pub async fn enforcement(&self) -> anyhow::Result<Vec<AuditRecord>> {
        self.get("/api/v1/enforcement").await
    }

    /// Adds or replaces a runtime rule; the agent's refusal is the error.
    pub async fn set_limit(&self, spec: &RuleSpec) -> anyhow::Result<LimitRule> {
        let body = serde_json::to_value(spec)?;
        let answer = self.change("POST", "/api/v1/limits", Some(body)).await?;
        serde_json::from_value(answer)
            .context("the agent did not answer kmemcg's JSON: is this a kmemcg agent?")
    }

    /// Removes a runtime rule; returns the agent's warning, if any (e.g. removed but not saved).
    pub async fn remove_limit(&self, path: &str) -> anyhow::Result<Option<String>> {
        let query = percent_encoding::utf8_percent_encode(path, percent_encoding::NON_ALPHANUMERIC);
        let answer = self
            .change("DELETE", &format!("/api/v1/limits?path={query}"), None)
            .await?;
        Ok(answer
            .get("warning")
            .and_then(|w| w.as_str())
            .map(str::to_string))
    }

    /// Starts a leak recording of `path` for `duration`; its id.
    pub async fn start_leaks(
        &self,
        path: &str,
        duration: std::time::Duration,
    ) -> anyhow::Result<u64> {
        let body = serde_json::to_value(LeakRequest {
            path: path.to_string(),
            for_seconds: duration.as_secs_f64(),
        })?;
        let answer = self.change("POST", "/api/v1/leaks", Some(body)).await?;
        answer
            .get("id")
            .and_then(|id| id.as_u64())
            .ok_or_else(|| anyhow!("the agent did not say which recording it started: is it recent enough to record leaks?"))
    }

    /// Ends a leak recording early.
    pub async fn stop_leaks(&self, id: u64) -> anyhow::Result<()> {
        self.change("DELETE", &format!("/api/v1/leaks/{id}"), None)
            .await
            .map(|_| ())
    }

    /// A leak recording's outstanding objects by call site.
    pub async fn leaks(
        &self,
        id: u64,
        older_than: std::time::Duration,
    ) -> anyhow::Result<LeakView> {
        self.get(&format!(
            "/api/v1/leaks/{id}?older_than={}",
            older_than.as_secs_f64()
        ))
        .await
    }

    /// A change: an error answer's `error` is the message, said as what happened.
    async fn change(
        &self,
        method: &str,
        path_and_query: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let answer = self
            .request(&self.writes, method, path_and_query, body)
            .await?;
        if (200..300).contains(&answer.status) {
            return Ok(answer.body);
        }
        let error = answer.body.get("error").and_then(|e| e.as_str());
        let kind = answer.body.get("kind").and_then(|e| e.as_str());
        let at = self.writes.describe();
        match (error, kind) {
            (Some(e), Some("not-saved")) => Err(anyhow!("{e}")),
            (Some(e), _) if answer.status >= 500 => Err(anyhow!("the agent at {at} failed: {e}")),
            (Some(e), Some("forbidden" | "unauthorized"))
                if matches!(self.writes, Endpoint::Tcp { token: None, .. }) =>
            {
                Err(anyhow!(
                    "the agent at {at} refused: {e} (--addr sends changes over TCP; without \
                     --addr and --token-file, kmemcg limit uses the unix socket)"
                ))
            }
            (Some(e), _) => Err(anyhow!("the agent at {at} refused: {e}")),
            (None, _) => Err(anyhow!(
                "the agent at {at} answered {}: is it a kmemcg agent recent enough to enforce \
                 limits?",
                answer.status
            )),
        }
    }

    /// One request to `endpoint`; an unreachable endpoint is the error, named.
    async fn request(
        &self,
        endpoint: &Endpoint,
        method: &str,
        path_and_query: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<Answer> {
        match endpoint {
            Endpoint::Socket { path, owners } => {
                check_socket(path, owners)?;
                tokio::time::timeout(
                    SOCKET_TIMEOUT,
                    over_socket(path, method, path_and_query, body),
                )
                .await
                .map_err(|_| {
                    anyhow!(
                        "the agent did not answer on its socket {} within {SOCKET_TIMEOUT:?}",
                        path.display()
                    )
                })?
            }
            Endpoint::Tcp { base, token } => {
                let method = reqwest::Method::from_bytes(method.as_bytes())?;
                let mut request = self.http.request(method, format!("{base}{path_and_query}"));
                if let Some(token) = token {
                    request = request.bearer_auth(token);
                }
                if let Some(body) = body {
                    request = request.json(&body);
                }
                let response = request.send().await.map_err(|e| unreachable(base, e))?;
                let status = response.status().as_u16();
                let body = response.json().await.unwrap_or_default();
                Ok(Answer { status, body })
            }
        }
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let at = self.reads.describe();
        if let Endpoint::Tcp { base, .. } = &self.reads {
            // Read as the body comes, so that a non-JSON answer is told apart.
            let url = format!("{base}{path}");
            let response = self
                .http
                .get(&url)
                .send()
                .await
                .map_err(|e| unreachable(base, e))?;
            let status = response.status();
            if !status.is_success() {
                return Err(anyhow!("{url} answered {status}: is this a kmemcg agent?"));
            }
            return response.json().await.with_context(|| {
                format!("{url} did not answer kmemcg's JSON: is this a kmemcg agent?")
            });
        }
        let answer = self.request(&self.reads, "GET", path, None).await?;
        if !(200..300).contains(&answer.status) {
            return Err(anyhow!(
                "{path} on the agent's {at} answered {}: is this a kmemcg agent?",
                answer.status
            ));
        }
        serde_json::from_value(answer.body).with_context(|| {
            format!(
                "{path} on the agent's {at} did not answer kmemcg's JSON: is this a kmemcg agent?"
            )
        })
    }
}

fn unreachable(base: &str, e: reqwest::Error) -> anyhow::Error {
    if e.is_connect() || e.is_timeout() {
        anyhow!(
            "no kmemcg agent answers at {base}: start one with `kmemcg agent` (as root), or \
             point --addr at a running one"
        )
    } else {
        anyhow!("requesting {base} failed: {e}")
    }
}

/// Before anything is sent through a socket: it and its directory must be root's, this user's
/// or an allowed agent user's, and no other user may write to the directory. Otherwise another
/// user could have put their own socket there, to answer in the agent's place.
fn check_socket(path: &Path, owners: &[u32]) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt as _;
    let fix = "It may not be the agent's: another user could have made it to answer in the \
               agent's place. If the agent runs as that user, pass --socket-owner UID; otherwise \
               remove it and restart the agent";
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    match std::fs::metadata(dir) {
        Ok(meta) => files::check_owner(
            dir,
            &meta,
            "the agent's socket directory",
            owners,
            Private::NotWritable,
            fix,
        )?,
        // Not for this user to see: connecting fails and says so.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Ok(()),
        Err(e) => {
            return Err(anyhow!(
                "cannot use the agent's socket {}: its directory {}: {e}; is the agent \
                 running, and serving this socket (its --socket)?",
                path.display(),
                dir.display()
            ));
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            files::check_owner(
                path,
                &meta,
                "the agent's socket",
                owners,
                Private::NotWritable,
                fix,
            )?;
            Ok(())
        }
        Ok(_) => Err(anyhow!(
            "{} is not a socket: give the agent's socket with --socket (see its --socket)",
            path.display()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Ok(()),
        Err(e) => Err(anyhow!(
            "cannot use the agent's socket {}: {e}; is the agent running, and serving this \
             socket (its --socket)? Use --addr for an agent's TCP listener",
            path.display()
        )),
    }
}

/// One HTTP/1.1 request over the agent's unix socket.
async fn over_socket(
    socket: &Path,
    method: &str,
    path_and_query: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<Answer> {
    use http_body_util::{BodyExt as _, Full};
    let stream = tokio::net::UnixStream::connect(socket).await.map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::PermissionDenied => {
                "the socket is for root (and the agent's user): run kmemcg limit as root, or use \
                 --addr with --token-file"
            }
            std::io::ErrorKind::ConnectionRefused => {
                "no agent listens on it (left by a stopped agent?): start the agent"
            }
            _ => "is the agent running, and serving this socket (its --socket)?",
        };
        anyhow!(
            "cannot connect to the agent's socket {}: {e}; {hint}",
            socket.display()
        )
    })?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .context("talking HTTP to the agent's socket")?;
    tokio::spawn(connection);
    let body = match body {
        Some(b) => serde_json::to_vec(&b)?,
        None => Vec::new(),
    };
    let request = hyper::Request::builder()
        .method(method)
        .uri(path_and_query)
        .header(hyper::header::HOST, "localhost")
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(bytes_of(body)))?;
    let response = sender
        .send_request(request)
        .await
        .context("sending the request to the agent's socket")?;
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .context("reading the agent's answer")?
        .to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or_default();
    Ok(Answer { status, body })
}

fn bytes_of(body: Vec<u8>) -> hyper::body::Bytes {
    hyper::body::Bytes::from(body)
}
