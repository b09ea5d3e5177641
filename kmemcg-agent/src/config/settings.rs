//! Every agent setting once: its key in the config file, its flag and environment variable,
//! its help text, whether a change waits for a restart, and how its value is written. The
//! flags' help (with the default, from the resolved defaults), `--check-config` and the
//! reload's list of restart-only changes all come from [`SETTINGS`].
use std::sync::OnceLock;

use crate::agent::AgentConfig;

pub struct Setting {
    /// Key in the config file, with its table (`metrics.top_caches`).
    pub key: &'static str,
    /// The flag without `--`, and its environment variable; "" for keys only the file sets.
    pub flag: &'static str,
    pub env: &'static str,
    pub help: &'static str,
    /// Said after the default in the help (`16 MiB`).
    pub default_note: &'static str,
    /// Loaded into the kernel, bound, or locked at start: a reload cannot change it.
    pub restart_only: bool,
    /// The value as the config file would spell it; None when unset.
    pub value: fn(&AgentConfig) -> Option<String>,
    /// What an unset value means (`--check-config` says it).
    pub unset: &'static str,
}

impl Setting {
    /// The flag's help: the text and the default this build resolves to.
    pub fn flag_help(&self) -> String {
        // As clap shows values: without the file's quotes.
        let default = defaults()
            .and_then(|d| (self.value)(d))
            .map(|v| v.trim_matches('"').to_string());
        match (default, self.default_note) {
            (Some(v), "") => format!("{} [default: {v}]", self.help),
            (Some(v), note) => format!("{} [default: {v}, {note}]", self.help),
            (None, "") => self.help.to_string(),
            (None, note) => format!("{} [default: {note}]", self.help),
        }
    }

    /// The table the key is in (`metrics`), "" for top-level keys.
    pub fn table(&self) -> &'static str {
        self.key.rsplit_once('.').map_or("", |(table, _)| table)
    }

    /// The key within its table.
    pub fn name(&self) -> &'static str {
        self.key.rsplit_once('.').map_or(self.key, |(_, name)| name)
    }
}

/// The configuration with nothing given: what the help calls defaults.
fn defaults() -> Option<&'static AgentConfig> {
    static DEFAULTS: OnceLock<Option<AgentConfig>> = OnceLock::new();
    DEFAULTS
        .get_or_init(|| super::resolve(None, &super::Overrides::default()).ok())
        .as_ref()
}

fn quoted(s: impl std::fmt::Display) -> Option<String> {
    Some(format!("\"{s}\""))
}

fn path(p: &Option<std::path::PathBuf>) -> Option<String> {
    p.as_ref().and_then(|p| quoted(p.display()))
}

pub const LISTEN: Setting = Setting {
    key: "listen",
    flag: "listen",
    env: "KMEMCG_LISTEN",
    help: "Address the HTTP API and /metrics listen on. Reads only, unless --write-token-file \
           is given",
    default_note: "",
    restart_only: true,
    value: |c| quoted(c.listen),
    unset: "",
};

pub const INTERVAL: Setting = Setting {
    key: "interval_seconds",
    flag: "interval",
    env: "KMEMCG_INTERVAL",
    help: "How often the maps are read, in seconds",
    default_note: "",
    restart_only: false,
    value: |c| Some(c.interval.as_secs_f64().to_string()),
    unset: "",
};

pub const MAX_OBJECTS: Setting = Setting {
    key: "max_objects",
    flag: "max-objects",
    env: "KMEMCG_MAX_OBJECTS",
    help: "Slots of the live-object table (objects whose owner is remembered), rounded up to \
           a power of two; 16 bytes of kernel memory each. An allocation whose 8 candidate \
           slots are all taken is counted as dropped",
    default_note: "16 MiB",
    restart_only: true,
    value: |c| Some(c.tracer.max_objects.to_string()),
    unset: "",
};

pub const MAX_STATS: Setting = Setting {
    key: "max_stats",
    flag: "max-stats",
    env: "KMEMCG_MAX_STATS",
    help: "Slots of the (cgroup, cache) counter table, rounded up to a power of two; 16 + 56 \
           x CPUs bytes each",
    default_note: "16 MiB worth on this machine, at least 8192",
    restart_only: true,
    value: |c| Some(c.tracer.max_stats.to_string()),
    unset: "",
};

pub const ROOT_CGROUP: Setting = Setting {
    key: "root_cgroup",
    flag: "root-cgroup",
    env: "KMEMCG_ROOT_CGROUP",
    help: "What to do with allocations of tasks in the root cgroup (kernel threads and \
           unconfined services): count them without tracking objects, track them like any \
           cgroup (fills the map on busy hosts), or ignore them",
    default_note: "",
    restart_only: true,
    value: |c| quoted(c.tracer.root_mode),
    unset: "",
};

pub const PIN_DIR: Setting = Setting {
    key: "pin_dir",
    flag: "pin-dir",
    env: "KMEMCG_PIN_DIR",
    help: "Pin the live-object and counter maps in this bpffs directory, so that a restarted \
           agent keeps charging objects allocated before the restart (e.g. /sys/fs/bpf/kmemcg)",
    default_note: "",
    restart_only: true,
    value: |c| path(&c.tracer.pin_dir),
    unset: "maps are not pinned",
};

pub const SOCKET: Setting = Setting {
    key: "api.socket",
    flag: "socket",
    env: "KMEMCG_SOCKET",
    help: "Unix socket serving the whole API, changes included, to root",
    default_note: "",
    restart_only: true,
    value: |c| path(&c.api.socket).or_else(|| quoted("")),
    unset: "",
};

pub const WRITE_TOKEN_FILE: Setting = Setting {
    key: "api.write_token_file",
    flag: "write-token-file",
    env: "KMEMCG_WRITE_TOKEN_FILE",
    help: "File holding a bearer token (16+ characters, mode 0600) that allows changes over \
           the TCP listener; without it the TCP listener refuses every change",
    default_note: "",
    restart_only: true,
    value: |c| path(&c.api.write_token_file),
    unset: "the TCP listener refuses changes",
};

pub const TOP_CACHES: Setting = Setting {
    key: "metrics.top_caches",
    flag: "top-caches",
    env: "KMEMCG_TOP_CACHES",
    help: "Per-cache series for at most this many caches per cgroup",
    default_note: "",
    restart_only: false,
    value: |c| Some(c.metrics.top_caches.to_string()),
    unset: "",
};

pub const CACHE_MIN_BYTES: Setting = Setting {
    key: "metrics.cache_min_bytes",
    flag: "cache-min-bytes",
    env: "KMEMCG_CACHE_MIN_BYTES",
    help: "Per-cache series only for caches holding at least this many bytes",
    default_note: "",
    restart_only: false,
    value: |c| Some(c.metrics.cache_min_bytes.to_string()),
    unset: "",
};

pub const CONTAINER_LABELS: Setting = Setting {
    key: "metrics.container_labels",
    flag: "",
    env: "",
    help: "pod_uid, container_id, qos_class and container_runtime labels from cgroup paths",
    default_note: "",
    restart_only: false,
    value: |c| Some(c.metrics.container_labels.to_string()),
    unset: "",
};

pub const DRY_RUN: Setting = Setting {
    key: "limits.dry_run",
    flag: "dry-run",
    env: "KMEMCG_DRY_RUN",
    help: "Enforce no limit: decide, log and audit only",
    default_note: "",
    restart_only: false,
    value: |c| Some(c.limits.dry_run.to_string()),
    unset: "",
};

pub const ON_UNRELIABLE: Setting = Setting {
    key: "limits.on_unreliable",
    flag: "on-unreliable",
    env: "KMEMCG_ON_UNRELIABLE",
    help: "Where a cgroup's figures miss allocations dropped by a full map: compare limits \
           with the kernel's own charge where it is larger (kernel), or with kmemcg's figures \
           as they are (kmemcg)",
    default_note: "",
    restart_only: false,
    value: |c| quoted(c.limits.on_unreliable.as_str()),
    unset: "",
};

pub const STATE_DIR: Setting = Setting {
    key: "limits.state_dir",
    flag: "state-dir",
    env: "KMEMCG_STATE_DIR",
    help: "The agent's state directory: its runtime limits (limits.json), audit records \
           (enforcement.jsonl) and lock; one agent at a time holds it, so a second agent on \
           the host needs one of its own",
    default_note: "",
    restart_only: true,
    value: |c| path(&c.limits.state_dir),
    unset: "no state directory is locked",
};

pub const STATE_FILE: Setting = Setting {
    key: "limits.state_file",
    flag: "limits-file",
    env: "KMEMCG_LIMITS_FILE",
    help: "Where limits set at runtime are kept across restarts",
    default_note: "in the state directory",
    restart_only: true,
    value: |c| path(&c.limits.state_file),
    unset: "runtime limits are not kept across restarts",
};

pub const AUDIT_FILE: Setting = Setting {
    key: "limits.audit_file",
    flag: "audit-file",
    env: "KMEMCG_AUDIT_FILE",
    help: "Where enforcement audit records are appended as JSON lines",
    default_note: "in the state directory",
    restart_only: true,
    value: |c| path(&c.limits.audit_file),
    unset: "audit records are only served by the API",
};

pub const PROTECTED: Setting = Setting {
    key: "limits.protected",
    flag: "",
    env: "",
    help: "Cgroups (globs) no rule may act on, besides the built-in ones",
    default_note: "",
    restart_only: false,
    value: |c| Some(format!("{:?}", c.limits.protected)),
    unset: "",
};

/// Every setting, top-level keys first, then by table, as `--check-config` prints them.
pub const SETTINGS: [&Setting; 17] = [
    &LISTEN,
    &INTERVAL,
    &MAX_OBJECTS,
    &MAX_STATS,
    &ROOT_CGROUP,
    &PIN_DIR,
    &SOCKET,
    &WRITE_TOKEN_FILE,
    &TOP_CACHES,
    &CACHE_MIN_BYTES,
    &CONTAINER_LABELS,
    &DRY_RUN,
    &ON_UNRELIABLE,
    &STATE_DIR,
    &STATE_FILE,
    &AUDIT_FILE,
    &PROTECTED,
];

/// Keys whose change needs a restart, between the running and a reloaded configuration.
pub fn restart_only_changes(running: &AgentConfig, new: &AgentConfig) -> Vec<&'static str> {
    SETTINGS
        .iter()
        .filter(|s| s.restart_only && (s.value)(running) != (s.value)(new))
        .map(|s| s.key)
        .collect()
}

/// The configuration as a config file would say it (`--check-config`).
pub fn render(config: &AgentConfig) -> String {
    let mut out = String::new();
    let mut table = "";
    for setting in SETTINGS {
        if setting.table() != table {
            table = setting.table();
            out.push_str(&format!("[{table}]\n"));
        }
        match (setting.value)(config) {
            Some(value) => out.push_str(&format!("{} = {value}\n", setting.name())),
            None => out.push_str(&format!("# {} unset: {}\n", setting.name(), setting.unset)),
        }
    }
    out
}

/// A value parser for an enum spelled by a table of names (`ALL` and `as_str`): clap lists
/// the names in `--help` and in its error for any other value.
pub fn names_parser<T: Copy + Send + Sync + 'static>(
    all: &'static [T],
    name: fn(T) -> &'static str,
) -> impl clap::builder::TypedValueParser<Value = T> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(all.iter().map(|v| name(*v))).try_map(move |s| {
        all.iter()
            .copied()
            .find(|v| name(*v) == s)
            .ok_or_else(|| format!("`{s}` is not one of the names"))
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::config::{FileConfig, Overrides, parse, resolve};

    #[test]
    fn every_setting_is_spelled_once() {
        let unique = |items: Vec<&str>| {
            let items: Vec<&str> = items.into_iter().filter(|s| !s.is_empty()).collect();
            items.len() == items.iter().collect::<HashSet<_>>().len()
        };
        assert!(unique(SETTINGS.iter().map(|s| s.key).collect()));
        assert!(unique(SETTINGS.iter().map(|s| s.flag).collect()));
        assert!(unique(SETTINGS.iter().map(|s| s.env).collect()));
        for s in SETTINGS {
            assert_eq!(s.flag.is_empty(), s.env.is_empty(), "{}", s.key);
            assert!(
                s.env.is_empty() || s.env.starts_with("KMEMCG_"),
                "{}",
                s.key
            );
        }
    }

    /// What `--check-config` prints is a config file that gives the same configuration.
    #[test]
    fn the_rendered_configuration_reads_back_the_same() {
        let text = "listen = \"0.0.0.0:9000\"\nmax_objects = 4096\npin_dir = \"/sys/fs/bpf/k\"\n\
                    [metrics]\ntop_caches = 2\n[limits]\non_unreliable = \"kmemcg\"\n\
                    protected = [\"/batch.slice\"]\nstate_dir = \"/tmp/kmemcg-state\"\n";
        let path = std::path::Path::new("agent.toml");
        let first = resolve(
            Some((path, &parse(path, text).unwrap())),
            &Overrides::default(),
        )
        .expect("valid");
        let rendered = render(&first);
        let again: FileConfig =
            parse(path, &rendered).unwrap_or_else(|e| panic!("{e}\n{rendered}"));
        let second = resolve(Some((path, &again)), &Overrides::default()).expect("valid");
        assert_eq!(render(&second), rendered);
        assert!(
            rendered.contains("[limits]\ndry_run = false\n"),
            "{rendered}"
        );
        assert!(
            rendered.contains("on_unreliable = \"kmemcg\""),
            "{rendered}"
        );
        assert!(rendered.contains("# write_token_file unset"), "{rendered}");
    }

    #[test]
    fn restart_only_changes_come_from_the_table() {
        let running = resolve(None, &Overrides::default()).expect("defaults");
        let mut new = running.clone();
        new.metrics.top_caches += 1;
        new.limits.on_unreliable = crate::limits::OnUnreliable::Kmemcg;
        assert!(restart_only_changes(&running, &new).is_empty());
        new.listen = "127.0.0.1:1".parse().unwrap();
        new.limits.audit_file = None;
        assert_eq!(
            restart_only_changes(&running, &new),
            ["listen", "limits.audit_file"]
        );
    }

    /// docs/daemon.md's table of settings says what the table here says.
    #[test]
    fn the_documented_table_matches() {
        let docs = include_str!("../../../docs/daemon.md");
        for s in SETTINGS {
            let row = docs
                .lines()
                .find(|l| l.starts_with(&format!("| `{}` |", s.key)))
                .unwrap_or_else(|| panic!("docs/daemon.md has no row for {}", s.key));
            if !s.flag.is_empty() {
                let names = format!("`--{}` / `{}`", s.flag, s.env);
                assert!(row.contains(&names), "{row}: not {names}");
            }
            let reload = row.trim_end_matches('|').rsplit('|').next().unwrap_or("");
            assert_eq!(reload.contains("restart"), s.restart_only, "{row}");
        }
    }

    /// Defaults in the help are the resolved ones, so they cannot drift from the code.
    #[test]
    fn help_gives_the_resolved_defaults() {
        assert_eq!(
            MAX_OBJECTS.flag_help().rsplit("[default: ").next(),
            Some("1048576, 16 MiB]")
        );
        assert!(INTERVAL.flag_help().ends_with("[default: 1]"));
        assert!(ROOT_CGROUP.flag_help().ends_with("[default: count]"));
        // The slot size said is the real one.
        let slot = size_of::<kmemcg_common::LiveObject>();
        assert!(
            MAX_OBJECTS
                .help
                .contains(&format!("; {slot} bytes of kernel"))
        );
        let table = crate::tracer::DEFAULT_MAX_OBJECTS as usize * slot;
        assert_eq!(table, 16 << 20, "the note says 16 MiB");
        assert!(PIN_DIR.flag_help().ends_with("/sys/fs/bpf/kmemcg)"));
    }
}
