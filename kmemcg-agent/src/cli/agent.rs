//! `kmemcg agent`: the daemon, and its configuration and pinned-map chores.
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;

use crate::{
    agent::{self, AgentConfig},
    config::{self, Overrides},
    pin::{self, DEFAULT_PIN_DIR},
};

/// Flags override environment variables, which override the config file.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// TOML configuration file (see docs/daemon.md); flags and KMEMCG_* variables override it.
    #[arg(long, env = "KMEMCG_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Check the configuration (file, environment, flags) and exit.
    #[arg(long)]
    pub check_config: bool,
    /// Discard previously pinned maps before starting (after an incompatible upgrade).
    #[arg(long, conflicts_with_all = ["unpin", "check_config"])]
    pub reset: bool,
    /// Remove everything kmemcg pinned in bpffs and exit (uninstall). Refused while an agent runs.
    #[arg(long, conflicts_with = "check_config")]
    pub unpin: bool,
    #[command(flatten)]
    pub settings: Overrides,
}

impl AgentArgs {
    pub fn is_daemon(&self) -> bool {
        !(self.check_config || self.unpin)
    }
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let overrides = args.settings.clone();
    let config = config::load(args.config.as_deref(), &overrides)?;
    if args.check_config {
        // Also refuses rules on protected cgroups, as a start would.
        let cgroups = crate::kernel::cgroupfs::CgroupMounts::read().ok();
        let cgroup_root = cgroups.as_ref().map(|c| c.cgroup2.as_path());
        crate::limits::check(&config.limits, cgroup_root)
            .context("config file, [[limits.rule]]")?;
        print_config(args.config.as_deref(), &config);
        return Ok(());
    }
    // Without a pin_dir, --unpin and --reset act on the default one.
    let pin_dir = config
        .tracer
        .pin_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_DIR));
    if args.unpin || args.reset {
        unpin(&pin_dir)?;
        if args.unpin {
            return Ok(());
        }
    }
    let reload: agent::Reload = {
        let path = args.config.clone();
        Box::new(move || config::load(path.as_deref(), &overrides).map_err(Into::into))
    };
    agent::run_with_reload(config, agent::shutdown_signal(), Some(reload)).await
}

fn unpin(dir: &Path) -> anyhow::Result<()> {
    let removed = pin::remove_all(dir)
        .with_context(|| format!("removing kmemcg's pinned maps from {}", dir.display()))?;
    if removed.is_empty() {
        tracing::info!(dir = %dir.display(), "nothing pinned");
    } else {
        tracing::info!(dir = %dir.display(), removed = removed.len(), "pinned maps removed");
    }
    Ok(())
}

fn print_config(path: Option<&Path>, c: &AgentConfig) {
    match path {
        Some(p) => println!("configuration OK ({})", p.display()),
        None => println!("configuration OK (no file; defaults, environment and flags)"),
    }
    print!("{}", config::settings::render(c));
    println!("# {} rule(s) in the config file", c.limits.rules.len());
}
