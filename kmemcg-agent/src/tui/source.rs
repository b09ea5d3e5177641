//! Where `kmemcg top` gets its data: a running agent's API, or, standalone, eBPF programs
//! loaded by `kmemcg top` itself (which only sees allocations made since it started).
use std::time::Duration;

use anyhow::{Context as _, anyhow};

use crate::{
    api::{CgroupHistory, Snapshot},
    client::Client,
    history::History,
    kernel::HostFacts,
    sampler::Sampler,
    tracer::{Tracer, TracerConfig},
    truth::Truth,
};

/// Said wherever standalone data is shown.
pub(crate) const STANDALONE_NOTICE: &str = "standalone: since start, plus what the inventory found";

pub(crate) enum Source {
    Agent {
        client: Client,
        addr: String,
    },
    /// `None` only while a reading runs on the blocking pool; the history of this
    /// process's readings, `delay` apart.
    Standalone {
        sampler: Option<Box<Sampler>>,
        history: Box<History>,
        delay: Duration,
    },
}

impl Source {
    pub(crate) fn agent(addr: &str) -> Self {
        Self::Agent {
            client: Client::new(addr),
            addr: addr.to_string(),
        }
    }

    /// Loads and attaches the eBPF programs in this process (needs root); readings come
    /// `delay` apart.
    pub(crate) fn standalone(delay: Duration) -> anyhow::Result<Self> {
        let (host, mut tracer) = HostFacts::read()
            .and_then(|host| {
                let tracer = Tracer::start(TracerConfig::default(), &host)?;
                Ok((host, tracer))
            })
            .context("loading the eBPF programs for kmemcg top --standalone")?;
        let truth = Truth::start(&mut tracer, &host);
        Ok(Self::Standalone {
            sampler: Some(Box::new(Sampler::new(tracer, truth))),
            history: Box::default(),
            delay,
        })
    }

    /// The agent's address, when reading one.
    pub(crate) fn agent_addr(&self) -> Option<&str> {
        match self {
            Self::Agent { addr, .. } => Some(addr),
            Self::Standalone { .. } => None,
        }
    }

    pub(crate) fn is_standalone(&self) -> bool {
        matches!(self, Self::Standalone { .. })
    }

    /// The history of the cgroup at `path`, or why there is none.
    pub(crate) async fn history(&self, path: &str) -> Result<CgroupHistory, String> {
        match self {
            Self::Agent { client, .. } => client.history(path).await.map_err(|e| format!("{e:#}")),
            Self::Standalone { history, .. } => history
                .of(path)
                .ok_or_else(|| format!("no history kept for {path}")),
        }
    }

    /// For the header: `agent 127.0.0.1:9847` or `standalone`.
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Agent { addr, .. } => format!("agent {addr}"),
            Self::Standalone { .. } => "standalone".into(),
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
            Self::Standalone {
                sampler: slot,
                history,
                delay,
            } => {
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
                let snapshot = result.context("reading the eBPF maps")?;
                history.record(&snapshot, *delay, History::now(), |_| false);
                Ok(snapshot)
            }
        }
    }
}
