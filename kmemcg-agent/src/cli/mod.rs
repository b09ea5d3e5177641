//! The `kmemcg` command line: one module per subcommand.
mod agent;
mod leaks;
mod limit;
mod stat;
mod top;

use clap::{Parser, Subcommand};
pub use leaks::text as leaks_text;

/// kmemcg: per-cgroup kernel memory (slab and percpu), traced with eBPF.
#[derive(Debug, Parser)]
#[command(name = "kmemcg", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: load the eBPF programs and serve the JSON API (needs root or CAP_BPF
    /// and CAP_PERFMON).
    Agent(agent::AgentArgs),
    /// Show per-cgroup kernel memory from a running agent.
    Stat(stat::StatArgs),
    /// Live per-cgroup slab and percpu usage in the terminal, like top (or snapshots for
    /// scripts with --once, --iterations, --json).
    Top(top::TopArgs),
    /// Kernel-memory limits: notify, signal, freeze or kill a cgroup past a size.
    Limit(limit::LimitArgs),
    /// Which kernel code holds a cgroup's new kernel memory, and since when: record its (and
    /// its descendants') slab and percpu objects by call site and age for a while.
    Leaks(leaks::LeaksArgs),
}

impl Cli {
    /// The long-running agent (not `--check-config` or `--unpin`).
    pub fn is_daemon(&self) -> bool {
        matches!(&self.command, Command::Agent(a) if a.is_daemon())
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Agent(args) => agent::run(args).await,
        Command::Stat(args) => stat::run(args).await,
        Command::Top(args) => top::run(args).await,
        Command::Limit(args) => limit::run(args).await,
        Command::Leaks(args) => leaks::run(args).await,
    }
}
