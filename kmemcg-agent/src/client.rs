//! A client of the agent's API, for `kmemcg stat` and `kmemcg top`.
use anyhow::{Context as _, anyhow};
use serde::de::DeserializeOwned;

use crate::api::{CgroupUsage, DyingCgroup, Status};

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

    async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.base);
        let response = self.http.get(&url).send().await.map_err(|e| {
            if e.is_connect() || e.is_timeout() {
                anyhow!(
                    "no kmemcg agent answers at {}: start one with `kmemcg agent` (as root), \
                     or point --addr at a running one",
                    self.base
                )
            } else {
                anyhow!("requesting {url} failed: {e}")
            }
        })?;
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
