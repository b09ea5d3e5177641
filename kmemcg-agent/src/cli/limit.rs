//! `kmemcg limit set|list|rm|log`: kernel-memory limits of a running agent.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use comfy_table::{Table, presets::NOTHING};

use crate::{
    access::{DEFAULT_SOCKET, read_token},
    api::DEFAULT_LISTEN,
    cgroup_path,
    client::{Client, Endpoint},
    limits::{self, Action, LimitRule, RuleSpec, Size},
    units::{format_duration, iec, parse_duration, parse_size},
};

#[derive(Debug, Args)]
pub struct LimitArgs {
    #[command(subcommand)]
    pub command: LimitCommand,
    /// The agent's TCP address (env KMEMCG_ADDR). Given alone, everything goes there: reads,
    /// and changes with --token-file. Without --addr and --socket, reads go to 127.0.0.1:9847
    /// and changes to the default socket.
    #[arg(long, global = true)]
    pub addr: Option<String>,
    /// The agent's unix socket (env KMEMCG_SOCKET). Given alone, everything goes there; with
    /// --addr, changes go there and reads to --addr. Never replaced by TCP when it fails.
    /// [default for changes: /run/kmemcg/kmemcg.sock]
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// File with the agent's write token, for changes over TCP to --addr
    /// (`api.write_token_file` of the agent); not with --socket.
    #[arg(long, env = "KMEMCG_TOKEN_FILE", global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The uid the agent runs as, when not root: its socket and the socket's directory may
    /// then be that user's (otherwise only root's or yours are trusted).
    #[arg(long, env = "KMEMCG_SOCKET_OWNER", global = true, value_name = "UID")]
    pub socket_owner: Option<u32>,
}

/// Where reads and changes go: exactly the endpoints given (see [`LimitArgs`]). Environment
/// variables count only when neither --addr nor --socket is on the command line.
pub(super) fn endpoints(
    addr: Option<String>,
    socket: Option<PathBuf>,
    env: impl Fn(&str) -> Option<String>,
    token: Option<String>,
    owners: Vec<u32>,
) -> anyhow::Result<(Endpoint, Endpoint)> {
    let (addr, socket) = match (addr, socket) {
        (None, None) => (env("KMEMCG_ADDR"), env("KMEMCG_SOCKET").map(PathBuf::from)),
        given => given,
    };
    let default_addr = || DEFAULT_LISTEN.to_string();
    Ok(match (addr, socket, token) {
        (_, Some(socket), Some(_)) => anyhow::bail!(
            "--token-file sends changes over TCP (to --addr), and --socket ({}) names the unix \
             socket: give one of them",
            socket.display()
        ),
        (addr, None, Some(token)) => {
            let tcp = Endpoint::tcp(&addr.unwrap_or_else(default_addr), Some(token));
            (tcp.clone(), tcp)
        }
        (Some(addr), None, None) => {
            let tcp = Endpoint::tcp(&addr, None);
            (tcp.clone(), tcp)
        }
        (None, Some(socket), None) => {
            let unix = Endpoint::socket(&socket, owners);
            (unix.clone(), unix)
        }
        (Some(addr), Some(socket), None) => (
            Endpoint::tcp(&addr, None),
            Endpoint::socket(&socket, owners),
        ),
        (None, None, None) => (
            Endpoint::tcp(&default_addr(), None),
            Endpoint::socket(Path::new(DEFAULT_SOCKET), owners),
        ),
    })
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
#[command(group(
    clap::ArgGroup::new("size").required(true).multiple(true).args(["max", "max_kernel"])
))]
pub struct SetArgs {
    /// cgroup path from the cgroup v2 root (/kubepods.slice/foo), or a glob whose * stays
    /// within one component (/kubepods.slice/*/*).
    pub path: String,
    /// Limit on the recursive slab + percpu bytes kmemcg traces, e.g. 8M, 512K, 1G (powers
    /// of 1024).
    #[arg(long, value_parser = size)]
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

/// The client of a command that changes the agent's state, through exactly the endpoint its
/// flags (or environment) name.
pub(super) fn write_client(
    addr: Option<String>,
    socket: Option<PathBuf>,
    token_file: Option<&std::path::Path>,
    socket_owner: Option<u32>,
) -> anyhow::Result<Client> {
    let token = match token_file {
        Some(path) => Some(read_token(path).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let (reads, writes) = endpoints(
        addr,
        socket,
        |name| std::env::var(name).ok().filter(|v| !v.is_empty()),
        token,
        socket_owner.into_iter().collect(),
    )?;
    Ok(Client::with_endpoints(reads, writes))
}

pub async fn run(args: LimitArgs) -> anyhow::Result<()> {
    let client = write_client(
        args.addr,
        args.socket,
        args.token_file.as_deref(),
        args.socket_owner,
    )?;
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
                    "BY",
                ]);
                for r in &records {
                    t.add_row(vec![
                        crate::timefmt::local_datetime(r.time),
                        r.cgroup.clone(),
                        r.rule.clone(),
                        usage_cell(r),
                        iec(r.limit_bytes),
                        match &r.signal {
                            Some(s) => format!("{} {s}", r.action),
                            None => r.action.clone(),
                        },
                        r.dry_run.to_string(),
                        r.outcome.clone(),
                        r.by.clone().unwrap_or_else(|| "-".into()),
                    ]);
                }
                println!("{t}");
            }
        }
    }
    Ok(())
}

/// A rule change measured nothing: no usage. A usage that dropped allocations may leave
/// short says so (`≥`).
fn usage_cell(r: &limits::audit::AuditRecord) -> String {
    if r.action.starts_with("limit-") {
        "-".into()
    } else if r.unreliable {
        format!("≥{}", iec(r.usage_bytes))
    } else {
        iec(r.usage_bytes)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(
        addr: Option<&str>,
        socket: Option<&str>,
        env: &[(&str, &str)],
        token: bool,
    ) -> anyhow::Result<(Endpoint, Endpoint)> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        endpoints(
            addr.map(str::to_string),
            socket.map(PathBuf::from),
            |name| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()),
            token.then(|| "t".repeat(20)),
            Vec::new(),
        )
    }

    fn tcp(addr: &str) -> Endpoint {
        Endpoint::tcp(addr, None)
    }

    fn unix(path: &str) -> Endpoint {
        Endpoint::socket(Path::new(path), Vec::new())
    }

    #[test]
    fn the_endpoints_given_are_the_ones_used() {
        let other_agent = [("KMEMCG_SOCKET", "/run/other/kmemcg.sock")];
        // --addr alone: TCP only, whatever socket the environment names.
        let (r, w) = resolve(Some("127.0.0.1:19847"), None, &other_agent, false).expect("ok");
        assert_eq!((r, w), (tcp("127.0.0.1:19847"), tcp("127.0.0.1:19847")));
        // --socket alone: that socket only, reads included.
        let (r, w) = resolve(None, Some("/missing.sock"), &[], false).expect("ok");
        assert_eq!((r, w), (unix("/missing.sock"), unix("/missing.sock")));
        // Both: reads over TCP, changes through the socket.
        let (r, w) = resolve(Some("127.0.0.1:1"), Some("/s.sock"), &[], false).expect("ok");
        assert_eq!((r, w), (tcp("127.0.0.1:1"), unix("/s.sock")));
        // Neither: the environment, else the defaults.
        let (r, w) = resolve(None, None, &other_agent, false).expect("ok");
        assert_eq!(w, unix("/run/other/kmemcg.sock"));
        assert_eq!(r, unix("/run/other/kmemcg.sock"));
        let (r, w) = resolve(None, None, &[], false).expect("ok");
        assert_eq!((r, w), (tcp(DEFAULT_LISTEN), unix(DEFAULT_SOCKET)));
        // A token: TCP, never with --socket.
        let (_, w) = resolve(Some("10.0.0.1:9847"), None, &other_agent, true).expect("ok");
        assert!(matches!(w, Endpoint::Tcp { token: Some(_), .. }), "{w:?}");
        let e = resolve(None, Some("/s.sock"), &[], true).expect_err("both");
        assert!(e.to_string().contains("give one of them"), "{e}");
    }
}
