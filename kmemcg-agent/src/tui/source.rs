//! Where `kmemcg top` gets its data: a running agent's API, or, standalone, eBPF programs
//! loaded by `kmemcg top` itself (which only sees allocations made since it started).
use anyhow::{Context as _, anyhow};

use crate::{
    api::Snapshot,
    client::Client,
    sampler::Sampler,
    tracer::{Tracer, TracerConfig},
};

/// Said wherever standalone data is shown.
pub(crate) const STANDALONE_NOTICE: &str = "standalone: only allocations since kmemcg top started";

pub(crate) enum Source {
    Agent {
        client: Client,
        addr: String,
    },
    /// `None` only while a reading runs on the blocking pool.
    Standalone(Option<Box<Sampler>>),
}

impl Source {
    pub(crate) fn agent(addr: &str) -> Self {
        Self::Agent {
            client: Client::new(addr),
            addr: addr.to_string(),
        }
    }

    /// Loads and attaches the eBPF programs in this process (needs root).
    pub(crate) fn standalone() -> anyhow::Result<Self> {
        let tracer = Tracer::start(TracerConfig::default())
            .context("loading the eBPF programs for kmemcg top --standalone")?;
        Ok(Self::Standalone(Some(Box::new(Sampler::new(tracer)))))
    }

    /// The agent's address, when reading one.
    pub(crate) fn agent_addr(&self) -> Option<&str> {
        match self {
            Self::Agent { addr, .. } => Some(addr),
            Self::Standalone(_) => None,
        }
    }

    pub(crate) fn is_standalone(&self) -> bool {
        matches!(self, Self::Standalone(_))
    }

    /// For the header: `agent 127.0.0.1:9847` or `standalone`.
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Agent { addr, .. } => format!("agent {addr}"),
            Self::Standalone(_) => "standalone".into(),
        }
    }

    /// One reading.
    pub(crate) async fn fetch(&mut self) -> anyhow::Result<Snapshot> {
        match self {
            Self::Agent { client, .. } => {
                let (cgroups, dying, status) =
                    tokio::join!(client.cgroups(), client.dying(), client.status());
                Ok(Snapshot {
                    cgroups: cgroups?,
                    dying: dying?,
                    status: status?,
                })
            }
            Self::Standalone(slot) => {
                let mut sampler = slot
                    .take()
                    .ok_or_else(|| anyhow!("a reading of the eBPF maps is already running"))?;
                let (sampler, result) = tokio::task::spawn_blocking(move || {
                    let result = sampler.sample();
                    (sampler, result)
                })
                .await
                .context("reading the eBPF maps")?;
                *slot = Some(sampler);
                result.context("reading the eBPF maps")
            }
        }
    }
}
