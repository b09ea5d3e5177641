//! The agent's configuration: a TOML file, overridden by environment variables and flags
//! (flags > env > file > defaults). Unknown keys and bad values are rejected with the file, the
//! key and the reason.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use kmemcg_common::RootCgroupMode;
use serde::Deserialize;
use settings::{
    AUDIT_FILE, CACHE_MIN_BYTES, DRY_RUN, INTERVAL, LISTEN, MAX_OBJECTS, MAX_STATS, ON_UNRELIABLE,
    PIN_DIR, ROOT_CGROUP, SOCKET, STATE_DIR, STATE_FILE, TOP_CACHES, WRITE_TOKEN_FILE,
};
use thiserror::Error;

use crate::{
    access::ApiConfig,
    agent::AgentConfig,
    api::DEFAULT_LISTEN,
    cgroup_path,
    limits::{LimitsConfig, OnUnreliable, Rule, RuleSpec},
    metrics::MetricsConfig,
    tracer::{DEFAULT_MAX_OBJECTS, TracerConfig, default_max_stats},
};

/// Accepted ranges, shared by the flags and the file.
pub const MAX_OBJECTS_RANGE: (i64, i64) = (1024, 1 << 26);
pub const MAX_STATS_RANGE: (i64, i64) = (64, 1 << 22);
pub const INTERVAL_RANGE: (f64, f64) = (0.05, 3600.0);
pub const TOP_CACHES_MAX: i64 = 1000;
/// A config file larger than this is refused: a real one is a few KiB.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Why a configuration was rejected. Each message names the file (or variable) and the key.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path} (check the path and its permissions)")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}, line {line}: not valid TOML: {reason}")]
    Syntax {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("config file {path}, line {line}, key `{key}`: {reason}")]
    Key {
        path: PathBuf,
        line: usize,
        key: String,
        reason: String,
    },
    #[error("{source_name}, key `{key}`: {reason}")]
    Value {
        /// `config file <path>` or `--flag / KMEMCG_VAR`.
        source_name: String,
        key: String,
        reason: String,
    },
}

/// The file's content: every key optional, nothing else accepted.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub interval_seconds: Option<f64>,
    pub max_objects: Option<i64>,
    pub max_stats: Option<i64>,
    pub root_cgroup: Option<String>,
    pub pin_dir: Option<PathBuf>,
    pub metrics: Option<FileMetrics>,
    pub limits: Option<FileLimits>,
    pub api: Option<FileApi>,
}

/// `[api]`: who may change what.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileApi {
    /// Unix socket serving the whole API to root; "" turns it off.
    pub socket: Option<PathBuf>,
    /// File holding the bearer token that allows writes on the TCP listener.
    pub write_token_file: Option<PathBuf>,
}

/// `[limits]` and its `[[limits.rule]]` entries.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    pub dry_run: Option<bool>,
    pub on_unreliable: Option<OnUnreliable>,
    pub state_dir: Option<PathBuf>,
    pub state_file: Option<PathBuf>,
    pub audit_file: Option<PathBuf>,
    pub protected: Option<Vec<String>>,
    pub rule: Option<Vec<RuleSpec>>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileMetrics {
    pub top_caches: Option<i64>,
    pub cache_min_bytes: Option<i64>,
    pub container_labels: Option<bool>,
}

/// Values given on the command line or in the environment (clap merges the two, flags
/// first). Flags, variables and help come from [`settings`]; ranges from the constants above.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Overrides {
    #[arg(long = LISTEN.flag, env = LISTEN.env, help = LISTEN.flag_help())]
    pub listen: Option<SocketAddr>,
    #[arg(long = INTERVAL.flag, env = INTERVAL.env, help = INTERVAL.flag_help(),
          value_name = "SECONDS", value_parser = parse_interval)]
    pub interval_seconds: Option<f64>,
    #[arg(long = MAX_OBJECTS.flag, env = MAX_OBJECTS.env, help = MAX_OBJECTS.flag_help(),
          value_parser = clap::value_parser!(u32)
              .range(MAX_OBJECTS_RANGE.0..=MAX_OBJECTS_RANGE.1))]
    pub max_objects: Option<u32>,
    #[arg(long = MAX_STATS.flag, env = MAX_STATS.env, help = MAX_STATS.flag_help(),
          value_parser = clap::value_parser!(u32)
              .range(MAX_STATS_RANGE.0..=MAX_STATS_RANGE.1))]
    pub max_stats: Option<u32>,
    #[arg(long = ROOT_CGROUP.flag, env = ROOT_CGROUP.env, help = ROOT_CGROUP.flag_help(),
          value_parser = settings::names_parser(&RootCgroupMode::ALL, RootCgroupMode::as_str))]
    pub root_cgroup: Option<RootCgroupMode>,
    #[arg(long = PIN_DIR.flag, env = PIN_DIR.env, help = PIN_DIR.flag_help(),
          value_name = "DIR", conflicts_with = "no_pin")]
    pub pin_dir: Option<PathBuf>,
    /// Do not pin maps, even if the config file says so.
    #[arg(long)]
    pub no_pin: bool,
    #[arg(long = TOP_CACHES.flag, env = TOP_CACHES.env, help = TOP_CACHES.flag_help(),
          value_parser = clap::value_parser!(u64).range(0..=TOP_CACHES_MAX as u64))]
    pub top_caches: Option<u64>,
    #[arg(long = CACHE_MIN_BYTES.flag, env = CACHE_MIN_BYTES.env,
          help = CACHE_MIN_BYTES.flag_help())]
    pub cache_min_bytes: Option<u64>,
    // Enforcement in dry-run mode, whatever the config file says.
    #[arg(long = DRY_RUN.flag, env = DRY_RUN.env, help = DRY_RUN.flag_help())]
    pub dry_run: bool,
    #[arg(long = STATE_DIR.flag, env = STATE_DIR.env, help = STATE_DIR.flag_help(),
          value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    #[arg(long = STATE_FILE.flag, env = STATE_FILE.env, help = STATE_FILE.flag_help(),
          value_name = "FILE")]
    pub limits_file: Option<PathBuf>,
    #[arg(long = AUDIT_FILE.flag, env = AUDIT_FILE.env, help = AUDIT_FILE.flag_help(),
          value_name = "FILE")]
    pub audit_file: Option<PathBuf>,
    #[arg(long = ON_UNRELIABLE.flag, env = ON_UNRELIABLE.env, help = ON_UNRELIABLE.flag_help(),
          value_parser = settings::names_parser(&OnUnreliable::ALL, OnUnreliable::as_str))]
    pub on_unreliable: Option<OnUnreliable>,
    #[arg(long = SOCKET.flag, env = SOCKET.env, help = SOCKET.flag_help(),
          value_name = "PATH", conflicts_with = "no_socket")]
    pub socket: Option<PathBuf>,
    /// Serve no unix socket: limits can then only be changed with the write token, or in the
    /// config file.
    #[arg(long)]
    pub no_socket: bool,
    #[arg(long = WRITE_TOKEN_FILE.flag, env = WRITE_TOKEN_FILE.env,
          help = WRITE_TOKEN_FILE.flag_help(), value_name = "FILE")]
    pub write_token_file: Option<PathBuf>,
}

fn parse_interval(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    check_interval(v).map(|_| v)
}

/// Reads and parses a config file.
pub fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text =
        crate::files::read_limited(path, MAX_CONFIG_BYTES).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    parse(path, &text)
}

/// Parses config text; `path` is only used in messages.
pub fn parse(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
    let deserializer = toml::de::Deserializer::parse(text).map_err(|e| ConfigError::Syntax {
        path: path.to_path_buf(),
        line: line_of(text, e.span()),
        reason: e.message().to_string(),
    })?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.inner();
        if key == "." {
            ConfigError::Syntax {
                path: path.to_path_buf(),
                line: line_of(text, inner.span()),
                reason: inner.message().to_string(),
            }
        } else {
            ConfigError::Key {
                path: path.to_path_buf(),
                line: line_of(text, inner.span()),
                key,
                reason: reason(inner.message()),
            }
        }
    })
}

/// serde's wording, with a hint for the two common cases.
fn reason(message: &str) -> String {
    if message.starts_with("unknown field") {
        format!("{message}; remove it or check its spelling")
    } else {
        message
            .replace("expected i64", "expected an integer")
            .replace("expected f64", "expected a number")
    }
}

fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> usize {
    span.map_or(0, |s| {
        text.get(..s.start.min(text.len()))
            .map_or(0, |before| before.matches('\n').count() + 1)
    })
}

/// The sampling interval, in seconds, within [`INTERVAL_RANGE`].
pub fn check_interval(seconds: f64) -> Result<Duration, String> {
    let (min, max) = INTERVAL_RANGE;
    if (min..=max).contains(&seconds) {
        Ok(Duration::from_secs_f64(seconds))
    } else {
        Err(format!(
            "{} is out of range: the interval must be between {min} and {max} seconds",
            short_number(seconds)
        ))
    }
}

/// A number as written in a message: plain when short, else in scientific notation (`1e-300`
/// rather than three hundred zeros).
fn short_number(v: f64) -> String {
    let plain = v.to_string();
    if plain.len() <= 16 {
        plain
    } else {
        format!("{v:e}")
    }
}

/// Merges defaults, the file and the overrides into the agent's configuration, checking every
/// value. `file` is `(path, content)` when a file was given.
pub fn resolve(
    file: Option<(&Path, &FileConfig)>,
    over: &Overrides,
) -> Result<AgentConfig, ConfigError> {
    let empty = FileConfig::default();
    let (path, f) = file.map_or((None, &empty), |(p, f)| (Some(p), f));
    let metrics = f.metrics.clone().unwrap_or_default();
    let bad = |key: &str, reason: String| match path {
        Some(path) => ConfigError::Value {
            source_name: format!("config file {}", path.display()),
            key: key.into(),
            reason,
        },
        None => ConfigError::Value {
            source_name: "configuration".into(),
            key: key.into(),
            reason,
        },
    };

    let listen = match (over.listen, &f.listen) {
        (Some(addr), _) => addr,
        (None, Some(s)) => s.parse().map_err(|_| {
            bad(
                "listen",
                format!("`{s}` is not an address with a port, e.g. 127.0.0.1:9847"),
            )
        })?,
        (None, None) => DEFAULT_LISTEN
            .parse()
            .map_err(|_| bad("listen", "bad built-in default".into()))?,
    };
    let interval = check_interval(over.interval_seconds.or(f.interval_seconds).unwrap_or(1.0))
        .map_err(|r| bad("interval_seconds", r))?;
    let max_objects = pick_int(
        over.max_objects.map(i64::from),
        f.max_objects,
        DEFAULT_MAX_OBJECTS.into(),
        MAX_OBJECTS_RANGE,
    )
    .map_err(|r| bad("max_objects", r))?;
    let max_stats = pick_int(
        over.max_stats.map(i64::from),
        f.max_stats,
        default_max_stats().into(),
        MAX_STATS_RANGE,
    )
    .map_err(|r| bad("max_stats", r))?;
    let root_mode = match (over.root_cgroup, &f.root_cgroup) {
        (Some(mode), _) => mode,
        (None, Some(s)) => s
            .parse()
            .map_err(|e| bad("root_cgroup", format!("`{s}`: {e}")))?,
        (None, None) => RootCgroupMode::Count,
    };
    let pin_dir = if over.no_pin {
        None
    } else {
        over.pin_dir.clone().or_else(|| f.pin_dir.clone())
    };
    if let Some(dir) = &pin_dir
        && !dir.is_absolute()
    {
        return Err(bad(
            "pin_dir",
            format!("`{}` is not an absolute path", dir.display()),
        ));
    }
    let top_caches = pick_int(
        over.top_caches.map(|v| v as i64),
        metrics.top_caches,
        MetricsConfig::default().top_caches as i64,
        (0, TOP_CACHES_MAX),
    )
    .map_err(|r| bad("metrics.top_caches", r))?;
    let cache_min_bytes = pick_int(
        over.cache_min_bytes.map(|v| v as i64),
        metrics.cache_min_bytes,
        MetricsConfig::default().cache_min_bytes as i64,
        (0, i64::MAX),
    )
    .map_err(|r| bad("metrics.cache_min_bytes", r))?;

    let limits = resolve_limits(f.limits.as_ref(), over, &bad)?;
    let api = resolve_api(f.api.as_ref(), over, &bad)?;

    Ok(AgentConfig {
        listen,
        api,
        limits,
        interval,
        tracer: TracerConfig {
            max_objects: max_objects as u32,
            max_stats: max_stats as u32,
            root_mode,
            pin_dir,
            ledger: true,
        },
        metrics: MetricsConfig {
            top_caches: top_caches as usize,
            cache_min_bytes: cache_min_bytes as u64,
            container_labels: metrics
                .container_labels
                .unwrap_or(MetricsConfig::default().container_labels),
        },
    })
}

fn resolve_limits(
    file: Option<&FileLimits>,
    over: &Overrides,
    bad: &dyn Fn(&str, String) -> ConfigError,
) -> Result<LimitsConfig, ConfigError> {
    let empty = FileLimits::default();
    let f = file.unwrap_or(&empty);
    let defaults = LimitsConfig::default();
    let absolute = |key: &str, p: Option<PathBuf>| match p {
        Some(p) if !p.is_absolute() => Err(bad(
            key,
            format!("`{}` is not an absolute path", p.display()),
        )),
        p => Ok(p),
    };
    let state_dir = absolute(
        "limits.state_dir",
        over.state_dir
            .clone()
            .or_else(|| f.state_dir.clone())
            .or(defaults.state_dir),
    )?;
    let in_state_dir = |name: &str| state_dir.as_ref().map(|d| d.join(name));
    let state_file = absolute(
        "limits.state_file",
        over.limits_file
            .clone()
            .or_else(|| f.state_file.clone())
            .or_else(|| in_state_dir(crate::limits::STATE_FILE_NAME)),
    )?;
    let audit_file = absolute(
        "limits.audit_file",
        over.audit_file
            .clone()
            .or_else(|| f.audit_file.clone())
            .or_else(|| in_state_dir(crate::limits::AUDIT_FILE_NAME)),
    )?;
    let protected = f
        .protected
        .iter()
        .flatten()
        .map(|p| cgroup_path::normalize(p).map_err(|r| bad("limits.protected", r)))
        .collect::<Result<Vec<_>, _>>()?;
    crate::limits::check_protected(&protected).map_err(|r| bad("limits.protected", r))?;
    let rules = f
        .rule
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, spec)| {
            Rule::new(spec.clone())
                .map_err(|r| bad(&format!("limits.rule[{i}] (path {})", spec.path), r))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let on_unreliable = over.on_unreliable.or(f.on_unreliable).unwrap_or_default();
    Ok(LimitsConfig {
        dry_run: over.dry_run || f.dry_run.unwrap_or(false),
        state_dir,
        state_file,
        audit_file,
        protected,
        rules,
        on_unreliable,
    })
}

fn resolve_api(
    file: Option<&FileApi>,
    over: &Overrides,
    bad: &dyn Fn(&str, String) -> ConfigError,
) -> Result<ApiConfig, ConfigError> {
    let empty = FileApi::default();
    let f = file.unwrap_or(&empty);
    let socket = if over.no_socket {
        None
    } else {
        match over.socket.clone().or_else(|| f.socket.clone()) {
            Some(p) if p.as_os_str().is_empty() => None,
            Some(p) if !p.is_absolute() => {
                return Err(bad(
                    "api.socket",
                    format!("`{}` is not an absolute path", p.display()),
                ));
            }
            Some(p) => {
                check_socket_path(&p).map_err(|r| bad("api.socket", r))?;
                Some(p)
            }
            None => ApiConfig::default().socket,
        }
    };
    let write_token_file = over
        .write_token_file
        .clone()
        .or_else(|| f.write_token_file.clone());
    if let Some(p) = &write_token_file {
        crate::access::read_token(p).map_err(|e| bad("api.write_token_file", e))?;
    }
    Ok(ApiConfig {
        socket,
        write_token_file,
    })
}

/// A socket path names the socket itself: a directory, or anything but a socket already there,
/// is refused (the agent would fail to bind it).
fn check_socket_path(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt as _;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Err(format!(
            "`{}` is a directory: give the socket's own path, e.g. {}/kmemcg.sock",
            path.display(),
            path.display()
        )),
        Ok(m) if !m.file_type().is_socket() => Err(format!(
            "`{}` exists and is not a socket: give a path where the agent can create its socket",
            path.display()
        )),
        _ => Ok(()),
    }
}

/// The override, else the file's value, else the default; checked against `range`.
fn pick_int(
    over: Option<i64>,
    file: Option<i64>,
    default: i64,
    range: (i64, i64),
) -> Result<i64, String> {
    let v = over.or(file).unwrap_or(default);
    if v < 0 {
        Err(format!(
            "{v} is negative: it must be a count of at least {}",
            range.0
        ))
    } else if v < range.0 || v > range.1 {
        Err(format!(
            "{v} is out of range: it must be between {} and {}",
            range.0, range.1
        ))
    } else {
        Ok(v)
    }
}

/// Loads `path` (if any) and resolves it with `over`: what start-up and SIGHUP both do.
pub fn load(path: Option<&Path>, over: &Overrides) -> Result<AgentConfig, ConfigError> {
    match path {
        Some(path) => {
            let file = load_file(path)?;
            resolve(Some((path, &file)), over)
        }
        None => resolve(None, over),
    }
}

pub mod settings;
#[cfg(test)]
mod tests;
