//! A client of the agent's API, for `kmemcg stat`, `kmemcg top` and `kmemcg limit`. Reads go
//! over TCP; changes go over the agent's unix socket (root), or over TCP with a token.
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow};
use serde::de::DeserializeOwned;

use crate::{
    api::{CgroupUsage, DyingCgroup, Status},
    limits::{LimitRule, RuleSpec, audit::AuditRecord},
};

pub struct Client {
    base: String,
    http: reqwest::Client,
    /// Where changes are sent.
    writes: Writes,
}

/// How long a change may take over the unix socket (as over TCP).
const SOCKET_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How changes reach the agent.
enum Writes {
    Socket(PathBuf),
    Tcp { token: Option<String> },
}

/// What a change request got back: its status and JSON body.
struct Answer {
    status: u16,
    body: serde_json::Value,
}

impl Client {
    /// `addr` as `host:port` or a URL.
    pub fn new(addr: &str) -> Self {
        let base = if addr.contains("://") {
            addr.trim_end_matches('/').to_string()
        } else {
            format!("http://{addr}")
        };
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        Self {
            base,
            http,
            writes: Writes::Tcp { token: None },
        }
    }

    /// Changes go to the unix socket at `socket` when it exists, else over TCP with `token`.
    pub fn with_writes(mut self, socket: Option<&Path>, token: Option<String>) -> Self {
        self.writes = match socket {
            Some(path) if token.is_none() && path.exists() => Writes::Socket(path.to_path_buf()),
            _ => Writes::Tcp { token },
        };
        self
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

    /// A change: an error answer's `error` is the message, said as what happened.
    async fn change(
        &self,
        method: &str,
        path_and_query: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let answer = match &self.writes {
            Writes::Socket(socket) => tokio::time::timeout(
                SOCKET_TIMEOUT,
                over_socket(socket, method, path_and_query, body),
            )
            .await
            .map_err(|_| {
                anyhow!(
                    "the agent did not answer on {} within {SOCKET_TIMEOUT:?}",
                    socket.display()
                )
            })??,
            Writes::Tcp { token } => {
                let method = reqwest::Method::from_bytes(method.as_bytes())?;
                let mut request = self
                    .http
                    .request(method, format!("{}{path_and_query}", self.base));
                if let Some(token) = token {
                    request = request.bearer_auth(token);
                }
                if let Some(body) = body {
                    request = request.json(&body);
                }
                let response = request.send().await.map_err(|e| self.unreachable(e))?;
                let status = response.status().as_u16();
                let body = response.json().await.unwrap_or_default();
                Answer { status, body }
            }
        };
        if (200..300).contains(&answer.status) {
            return Ok(answer.body);
        }
        let error = answer.body.get("error").and_then(|e| e.as_str());
        let kind = answer.body.get("kind").and_then(|e| e.as_str());
        match (error, kind) {
            (Some(e), Some("not-saved")) => Err(anyhow!("{e}")),
            (Some(e), _) if answer.status >= 500 => Err(anyhow!("the agent failed: {e}")),
            (Some(e), _) => Err(anyhow!("the agent refused: {e}")),
            (None, _) => Err(anyhow!(
                "the agent answered {}: is it a kmemcg agent recent enough to enforce limits?",
                answer.status
            )),
        }
    }

    fn unreachable(&self, e: reqwest::Error) -> anyhow::Error {
        if e.is_connect() || e.is_timeout() {
            anyhow!(
                "no kmemcg agent answers at {}: start one with `kmemcg agent` (as root), \
                 or point --addr at a running one",
                self.base
            )
        } else {
            anyhow!("requesting {} failed: {e}", self.base)
        }
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.base);
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(anyhow!("{url} answered {status}: is this a kmemcg agent?"));
        }
        response
            .json()
            .await
            .with_context(|| format!("{url} did not answer kmemcg's JSON: is this a kmemcg agent?"))
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
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .with_context(|| {
            format!(
                "cannot reach the agent's socket {}: is the agent running, and are you root?",
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
