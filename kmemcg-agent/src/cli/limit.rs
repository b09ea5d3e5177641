//! `kmemcg limit set|list|rm|log`: kernel-memory limits of a running agent.
use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use comfy_table::{Table, presets::NOTHING};

use crate::{
    access::{DEFAULT_SOCKET, read_token},
    api::DEFAULT_LISTEN,
    cgroup_path,
    client::Client,
    limits::{self, Action, LimitRule, RuleSpec, Size},
    units::{format_duration, iec, parse_duration, parse_size},
};

#[derive(Debug, Args)]
pub struct LimitArgs {
    #[command(subcommand)]
    pub command: LimitCommand,
    /// Address of the agent (reads; changes too when its socket is not here).
    #[arg(long, default_value = DEFAULT_LISTEN, env = "KMEMCG_ADDR", global = true)]
    pub addr: String,
    /// The agent's unix socket, which `set` and `rm` use (as root) when it exists.
    #[arg(long, default_value = DEFAULT_SOCKET, env = "KMEMCG_SOCKET", global = true)]
    pub socket: PathBuf,
    /// File with the agent's write token, for changes over TCP (`api.write_token_file` of
    /// the agent); the socket is not used then.
    #[arg(long, env = "KMEMCG_TOKEN_FILE", global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum LimitCommand {
    /// Add or replace a limit on a cgroup (or a glob of cgroups) and what to do past it.
    Set(SetArgs),
    /// The limits, from the config file and set at runtime.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a limit set at runtime.
    Rm {
        /// The rule's path (or glob), as given to `set`.
        path: String,
    },
    /// The enforcement's audit records (decisions and what came of them).
    Log {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct SetArgs {
    /// cgroup path from the cgroup v2 root (/kubepods.slice/foo), or a glob whose * stays
    /// within one component (/kubepods.slice/*/*).
    pub path: String,
    /// Limit on the recursive slab + percpu bytes kmemcg traces, e.g. 8M, 512K, 1G (powers
    /// of 1024).
    #[arg(long, value_parser = size, required_unless_present = "max_kernel")]
    pub max: Option<u64>,
    /// Limit on all of the cgroup's kernel memory: what the kernel's memcg charges it (slab,
    /// percpu, kernel stacks, page tables, vmalloc) plus kmemcg's unaccounted bytes.
    #[arg(long, value_parser = size)]
    pub max_kernel: Option<u64>,
    /// Limit on the recursive slab bytes alone.
    #[arg(long, value_parser = size)]
    pub slab: Option<u64>,
    /// Limit on the recursive percpu bytes alone.
    #[arg(long, value_parser = size)]
    pub percpu: Option<u64>,
    /// What to do past the limit: notify (log, metric, audit), signal every process, freeze
    /// the cgroup, or kill its processes.
    #[arg(long, value_parser = action)]
    pub action: Action,
    /// For --action signal: the signal [default: SIGTERM].
    #[arg(long, value_parser = signal_arg)]
    pub signal: Option<String>,
    /// For --action signal: SIGKILL if still over the limit this long after the signal, e.g.
    /// 5s. Also the shortest time between two actions on a cgroup [default: 5s].
    #[arg(long, value_parser = parse_duration)]
    pub grace: Option<Duration>,
    /// For --action freeze: thaw once usage falls below this size.
    #[arg(long, value_parser = size)]
    pub thaw_below: Option<u64>,
    /// Decide, log and audit, but touch nothing.
    #[arg(long)]
    pub dry_run: bool,
}

fn size(s: &str) -> Result<u64, String> {
    parse_size(s)
}

fn action(s: &str) -> Result<Action, String> {
    s.parse()
}

fn signal_arg(s: &str) -> Result<String, String> {
    limits::parse_signal(s).map(|_| s.to_string())
}

pub async fn run(args: LimitArgs) -> anyhow::Result<()> {
    let token = match &args.token_file {
        Some(path) => Some(read_token(path).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let client = Client::new(&args.addr).with_writes(Some(&args.socket), token);
    match args.command {
        LimitCommand::Set(set) => {
            let spec = RuleSpec {
                path: set.path,
                max: set.max.map(Size),
                max_kernel: set.max_kernel.map(Size),
                slab: set.slab.map(Size),
                percpu: set.percpu.map(Size),
                action: set.action,
                signal: set.signal,
                grace: set.grace,
                thaw_below: set.thaw_below.map(Size),
                dry_run: set.dry_run,
            };
            // Checked here too, so that a malformed rule is reported without an agent.
            limits::Rule::new(spec.clone()).map_err(anyhow::Error::msg)?;
            let rule = client.set_limit(&spec).await?;
            println!("{}", rules_table(std::slice::from_ref(&rule)));
        }
        LimitCommand::List { json } => {
            let rules = client.limits().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rules)?);
            } else if rules.is_empty() {
                println!("no limits");
            } else {
                println!("{}", rules_table(&rules));
            }
        }
        LimitCommand::Rm { path } => {
            let path = cgroup_path::normalize(&path).map_err(anyhow::Error::msg)?;
            let warning = client
                .remove_limit(&path)
                .await
                .with_context(|| format!("removing the limit on {path}"))?;
            println!("limit on {path} removed");
            if let Some(w) = warning {
                eprintln!("warning: {w}");
            }
        }
        LimitCommand::Log { json } => {
            let records = client.enforcement().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&records)?);
            } else {
                let mut t = Table::new();
                t.load_preset(NOTHING).set_header(vec![
                    "TIME", "CGROUP", "RULE", "USAGE", "LIMIT", "ACTION", "DRY RUN", "OUTCOME",
                ]);
                for r in &records {
                    t.add_row(vec![
                        crate::timefmt::local_datetime(r.time),
                        r.cgroup.clone(),
                        r.rule.clone(),
                        iec(r.usage_bytes),
                        iec(r.limit_bytes),
                        match &r.signal {
                            Some(s) => format!("{} {s}", r.action),
                            None => r.action.clone(),
                        },
                        r.dry_run.to_string(),
                        r.outcome.clone(),
                    ]);
                }
                println!("{t}");
            }
        }
    }
    Ok(())
}

pub fn rules_table(rules: &[LimitRule]) -> Table {
    let mut t = Table::new();
    t.load_preset(NOTHING).set_header(vec![
        "PATH",
        "MAX",
        "MAX KERNEL",
        "SLAB",
        "PERCPU",
        "ACTION",
        "GRACE",
        "DRY RUN",
        "SOURCE",
    ]);
    let opt = |s: Option<Size>| s.map_or("-".to_string(), |s| iec(s.0));
    for LimitRule { source, rule } in rules {
        let action = match (rule.action, &rule.signal, rule.thaw_below) {
            (Action::Signal, Some(s), _) => format!("signal {s}"),
            (Action::Freeze, _, Some(low)) => format!("freeze (thaw below {})", iec(low.0)),
            (a, _, _) => a.as_str().to_string(),
        };
        t.add_row(vec![
            rule.path.clone(),
            opt(rule.max),
            opt(rule.max_kernel),
            opt(rule.slab),
            opt(rule.percpu),
            action,
            rule.grace.map_or("-".into(), format_duration),
            rule.dry_run.to_string(),
            source.clone(),
        ]);
    }
    t
}
