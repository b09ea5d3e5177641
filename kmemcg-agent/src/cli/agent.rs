//! `kmemcg agent`: the daemon, and its configuration and pinned-map chores.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use clap::Args;
use kmemcg_common::RootCgroupMode;

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
    /// Address the HTTP API and /metrics listen on [default: 127.0.0.1:9847]. Reads only,
    /// unless --write-token-file is given.
    #[arg(long, env = "KMEMCG_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Unix socket serving the whole API, changes included, to root [default:
    /// /run/kmemcg/kmemcg.sock].
    #[arg(
        long,
        env = "KMEMCG_SOCKET",
        value_name = "PATH",
        conflicts_with = "no_socket"
    )]
    pub socket: Option<PathBuf>,
    /// Serve no unix socket: limits can then only be changed with the write token, or in the
    /// config file.
    #[arg(long)]
    pub no_socket: bool,
    /// File holding a bearer token (16+ characters, mode 0600) that allows changes over the
    /// TCP listener; without it the TCP listener refuses every change.
    #[arg(long, env = "KMEMCG_WRITE_TOKEN_FILE", value_name = "FILE")]
    pub write_token_file: Option<PathBuf>,
    /// Slots of the live-object table (objects whose owner is remembered), rounded up to a
    /// power of two; 16 bytes of kernel memory each. An allocation whose 8 candidate slots are
    /// all taken is counted as dropped [default: 1048576, 16 MiB].
    #[arg(long, env = "KMEMCG_MAX_OBJECTS",
          value_parser = clap::value_parser!(u32)
              .range(config::MAX_OBJECTS_RANGE.0..=config::MAX_OBJECTS_RANGE.1))]
    pub max_objects: Option<u32>,
    /// Slots of the (cgroup, cache) counter table, rounded up to a power of two; 16 + 56 x
    /// CPUs bytes each [default: 16 MiB worth, at least 8192].
    #[arg(long, env = "KMEMCG_MAX_STATS",
          value_parser = clap::value_parser!(u32)
              .range(config::MAX_STATS_RANGE.0..=config::MAX_STATS_RANGE.1))]
    pub max_stats: Option<u32>,
    /// What to do with allocations of tasks in the root cgroup (kernel threads and unconfined
    /// services): count them without tracking objects, track them like any cgroup (fills the
    /// map on busy hosts), or ignore them [default: count].
    #[arg(long, env = "KMEMCG_ROOT_CGROUP", value_parser = root_mode_parser())]
    pub root_cgroup: Option<RootCgroupMode>,
    /// How often the maps are read, in seconds [default: 1].
    #[arg(long, env = "KMEMCG_INTERVAL", value_parser = parse_interval)]
    pub interval: Option<f64>,
    /// Pin the live-object and counter maps in this bpffs directory, so that a restarted agent
    /// keeps charging objects allocated before the restart (e.g. /sys/fs/bpf/kmemcg).
    #[arg(
        long,
        env = "KMEMCG_PIN_DIR",
        value_name = "DIR",
        conflicts_with = "no_pin"
    )]
    pub pin_dir: Option<PathBuf>,
    /// Do not pin maps, even if the config file says so.
    #[arg(long)]
    pub no_pin: bool,
    /// Discard previously pinned maps before starting (after an incompatible upgrade).
    #[arg(long, conflicts_with_all = ["unpin", "check_config"])]
    pub reset: bool,
    /// Remove everything kmemcg pinned in bpffs and exit (uninstall). Refused while an agent runs.
    #[arg(long, conflicts_with = "check_config")]
    pub unpin: bool,
    /// Per-cache series for at most this many caches per cgroup [default: 5].
    #[arg(long, env = "KMEMCG_TOP_CACHES",
          value_parser = clap::value_parser!(u64).range(0..=config::TOP_CACHES_MAX as u64))]
    pub top_caches: Option<u64>,
    /// Per-cache series only for caches holding at least this many bytes [default: 65536].
    #[arg(long, env = "KMEMCG_CACHE_MIN_BYTES")]
    pub cache_min_bytes: Option<u64>,
    /// Where a cgroup's figures miss allocations dropped by a full map: compare limits with
    /// the kernel's own charge where it is larger (kernel), or with kmemcg's figures as they
    /// are (kmemcg) [default: kernel; config: limits.on_unreliable].
    #[arg(long, env = "KMEMCG_ON_UNRELIABLE", value_parser = ["kernel", "kmemcg"])]
    pub on_unreliable: Option<String>,
    /// Enforce no limit: decide, log and audit only [config: limits.dry_run].
    #[arg(long, env = "KMEMCG_DRY_RUN")]
    pub dry_run: bool,
    /// The agent's state directory: its runtime limits (limits.json), audit records
    /// (enforcement.jsonl) and lock; one agent at a time holds it, so a second agent on the
    /// host needs one of its own [default: /var/lib/kmemcg].
    #[arg(long, env = "KMEMCG_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Where limits set at runtime are kept across restarts [default:
    /// <state dir>/limits.json].
    #[arg(long, env = "KMEMCG_LIMITS_FILE", value_name = "FILE")]
    pub limits_file: Option<PathBuf>,
    /// Where enforcement audit records are appended as JSON lines [default:
    /// <state dir>/enforcement.jsonl].
    #[arg(long, env = "KMEMCG_AUDIT_FILE", value_name = "FILE")]
    pub audit_file: Option<PathBuf>,
}

/// `ignore`, `count`, `track`, as clap lists them in errors and `--help`.
fn root_mode_parser() -> impl clap::builder::TypedValueParser<Value = RootCgroupMode> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(RootCgroupMode::ALL.map(RootCgroupMode::as_str))
        .try_map(|s| s.parse::<RootCgroupMode>().map_err(|e| e.to_string()))
}

fn parse_interval(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    config::check_interval(v).map(|_| v)
}

impl AgentArgs {
    pub fn is_daemon(&self) -> bool {
        !(self.check_config || self.unpin)
    }

    fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen,
            interval_seconds: self.interval,
            max_objects: self.max_objects,
            max_stats: self.max_stats,
            root_cgroup: self.root_cgroup,
            pin_dir: self.pin_dir.clone(),
            no_pin: self.no_pin,
            top_caches: self.top_caches.map(|v| v as usize),
            cache_min_bytes: self.cache_min_bytes,
            dry_run: self.dry_run,
            state_dir: self.state_dir.clone(),
            limits_file: self.limits_file.clone(),
            audit_file: self.audit_file.clone(),
            on_unreliable: self.on_unreliable.as_deref().and_then(|s| s.parse().ok()),
            socket: self.socket.clone(),
            no_socket: self.no_socket,
            write_token_file: self.write_token_file.clone(),
        }
    }
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let overrides = args.overrides();
    let config = config::load(args.config.as_deref(), &overrides)?;
    if args.check_config {
        // Also refuses rules on protected cgroups, as a start would.
        crate::limits::check(&config.limits).context("config file, [[limits.rule]]")?;
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
    println!("listen = \"{}\"", c.listen);
    println!("interval_seconds = {}", c.interval.as_secs_f64());
    println!("max_objects = {}", c.tracer.max_objects);
    println!("max_stats = {}", c.tracer.max_stats);
    println!("root_cgroup = \"{}\"", c.tracer.root_mode);
    match &c.tracer.pin_dir {
        Some(dir) => println!("pin_dir = \"{}\"", dir.display()),
        None => println!("# pin_dir unset: maps are not pinned"),
    }
    println!("[api]");
    match &c.api.socket {
        Some(p) => println!("socket = \"{}\"", p.display()),
        None => println!("socket = \"\"  # no unix socket"),
    }
    match &c.api.write_token_file {
        Some(p) => println!("write_token_file = \"{}\"", p.display()),
        None => println!("# write_token_file unset: the TCP listener refuses changes"),
    }
    println!("[metrics]");
    println!("top_caches = {}", c.metrics.top_caches);
    println!("cache_min_bytes = {}", c.metrics.cache_min_bytes);
    println!("container_labels = {}", c.metrics.container_labels);
    let l = &c.limits;
    println!("[limits]");
    println!("dry_run = {}", l.dry_run);
    match &l.state_dir {
        Some(d) => println!("state_dir = \"{}\"", d.display()),
        None => println!("# state_dir unset: no state directory is locked"),
    }
    match &l.state_file {
        Some(f) => println!("state_file = \"{}\"", f.display()),
        None => println!("# state_file unset: runtime limits are not kept across restarts"),
    }
    match &l.audit_file {
        Some(f) => println!("audit_file = \"{}\"", f.display()),
        None => println!("# audit_file unset: audit records are only served by the API"),
    }
    println!("protected = {:?}", l.protected);
    println!("on_unreliable = \"{}\"", l.on_unreliable.as_str());
    println!("# {} rule(s) in the config file", l.rules.len());
}
