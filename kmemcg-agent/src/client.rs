//! A client of the agent's API, for `kmemcg stat` and `kmemcg top`.
use anyhow::{Context as _, anyhow};
use serde::de::DeserializeOwned;

use crate::{
    api::{CgroupUsage, DyingCgroup, Status},
    limits::{LimitRule, audit::AuditRecord, rules::RuleSpec},
};

pub struct Client {
    base: String,
    http: reqwest::Client,
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
        Self { base, http }
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
        self.send(
            self.http
                .post(format!("{}/api/v1/limits", self.base))
                .json(spec),
        )
        .await
    }

    pub async fn remove_limit(&self, path: &str) -> anyhow::Result<()> {
        let _: serde_json::Value = self
            .send(
                self.http
                    .delete(format!("{}/api/v1/limits", self.base))
                    .query(&[("path", path)]),
            )
            .await?;
        Ok(())
    }

    /// A change: an error answer's `error` is the message.
    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<T> {
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        let status = response.status();
        if status.is_success() {
            return response
                .json()
                .await
                .context("the agent did not answer kmemcg's JSON: is this a kmemcg agent?");
        }
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        match body.get("error").and_then(|e| e.as_str()) {
            Some(e) => Err(anyhow!("the agent refused: {e}")),
            None => Err(anyhow!(
                "the agent answered {status}: is it a kmemcg agent recent enough to enforce limits?"
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
