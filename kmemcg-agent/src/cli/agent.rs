//! `kmemcg agent`.
use std::{net::SocketAddr, time::Duration};

use clap::{Args, ValueEnum};
use kmemcg_common::RootCgroupMode;

use crate::{
    agent::{self, AgentConfig},
    api::DEFAULT_LISTEN,
    tracer::{DEFAULT_MAX_OBJECTS, TracerConfig, default_max_stats},
};

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Address the HTTP API listens on.
    #[arg(long, default_value = DEFAULT_LISTEN, env = "KMEMCG_LISTEN")]
    pub listen: SocketAddr,
    /// Slots of the live-object table (objects whose owner is remembered), rounded up to a
    /// power of two; 32 bytes of kernel memory each. An allocation whose 8 candidate slots are
    /// all taken is counted as dropped.
    #[arg(long, default_value_t = DEFAULT_MAX_OBJECTS,
          value_parser = clap::value_parser!(u32).range(1024..=1 << 26))]
    pub max_objects: u32,
    /// Slots of the (cgroup, cache) counter table, rounded up to a power of two; 16 + 48 x
    /// CPUs bytes each [default: 16 MiB worth, at least 8192].
    #[arg(long, value_parser = clap::value_parser!(u32).range(64..=1 << 22))]
    pub max_stats: Option<u32>,
    /// What to do with allocations of tasks in the root cgroup (kernel threads and unconfined
    /// services): count them without tracking objects, track them like any cgroup (fills the
    /// map on busy hosts), or ignore them.
    #[arg(long, value_enum, default_value_t = RootMode::Count)]
    pub root_cgroup: RootMode,
    /// How often the maps are read, in seconds.
    #[arg(long, default_value_t = 1.0, value_parser = parse_interval)]
    pub interval: f64,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum RootMode {
    Ignore,
    Count,
    Track,
}

impl From<RootMode> for RootCgroupMode {
    fn from(mode: RootMode) -> Self {
        match mode {
            RootMode::Ignore => RootCgroupMode::Ignore,
            RootMode::Count => RootCgroupMode::Count,
            RootMode::Track => RootCgroupMode::Track,
        }
    }
}

fn parse_interval(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if (0.05..=3600.0).contains(&v) {
        Ok(v)
    } else {
        Err("the interval must be between 0.05 and 3600 seconds".into())
    }
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let config = AgentConfig {
        listen: args.listen,
        interval: Duration::from_secs_f64(args.interval),
        tracer: TracerConfig {
            max_objects: args.max_objects,
            max_stats: args.max_stats.unwrap_or_else(default_max_stats),
            root_mode: args.root_cgroup.into(),
        },
    };
    agent::run(config, agent::shutdown_signal()).await
}
