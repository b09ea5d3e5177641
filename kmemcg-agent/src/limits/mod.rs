//! Enforcement: per-cgroup kernel-memory limits that notify, signal, freeze or kill.
//!
//! rules (parse, match) -> engine (decide, with hysteresis and retries) -> actions (cgroup v2
//! files, signals) -> audit (records, JSON lines). [`Enforcer`] ties them together; state keeps
//! runtime rules across restarts, frozen what kmemcg froze.
pub(crate) mod actions;
pub mod audit;
mod enforcer;
mod engine;
mod error;
mod frozen;
pub(crate) mod protect;
pub mod rules;
mod signals;
pub mod state;

use std::{collections::BTreeMap, path::PathBuf};

use serde::{Deserialize, Serialize};

pub use enforcer::{Enforcer, Headroom, check};
pub use error::Error;
pub use protect::check_list as check_protected;
pub use rules::{Action, Rule, RuleSpec, Size};
pub use signals::parse as parse_signal;

/// Most rules in force at once (config and runtime together).
pub const MAX_RULES: usize = 1000;

/// The agent's state directory by default: its runtime rules, audit records and lock.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/kmemcg";
/// The runtime rules' file (`kmemcg limit set`) in the state directory.
pub const STATE_FILE_NAME: &str = "limits.json";
/// The audit records' file in the state directory.
pub const AUDIT_FILE_NAME: &str = "enforcement.jsonl";
/// What kmemcg froze (cgroup ids, paths, rules), in the state directory.
pub const FROZEN_FILE_NAME: &str = "frozen.json";

/// The `[limits]` configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct LimitsConfig {
    /// Decide and audit, touch nothing, whatever the rules say.
    pub dry_run: bool,
    /// The directory one agent at a time holds (locked), where the two files below are by
    /// default (None: no lock, only for embedders and tests).
    pub state_dir: Option<PathBuf>,
    /// Runtime rules are kept here (None: not kept across restarts).
    pub state_file: Option<PathBuf>,
    /// Audit records are appended here (None: only served by the API).
    pub audit_file: Option<PathBuf>,
    /// Protected besides the built-in ones.
    pub protected: Vec<String>,
    /// Rules of the config file.
    pub rules: Vec<Rule>,
    /// What a rule compares with where kmemcg's figures miss dropped allocations.
    pub on_unreliable: OnUnreliable,
}

/// Where a cgroup's figures are unreliable (allocations dropped while it allocated). Spelled
/// by [`OnUnreliable::as_str`] everywhere: flags, the config file, the API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum OnUnreliable {
    /// The kernel's own charge where it is larger (memory.stat slab + percpu, or the v1 kmem
    /// counter, which also counts stacks and page tables): the limit is not evaded.
    #[default]
    Kernel,
    /// kmemcg's figures as they are (they may be low); the decision is marked unreliable.
    Kmemcg,
}

impl OnUnreliable {
    pub const ALL: [OnUnreliable; 2] = [Self::Kernel, Self::Kmemcg];

    pub const fn as_str(self) -> &'static str {
        match self {
            OnUnreliable::Kernel => "kernel",
            OnUnreliable::Kmemcg => "kmemcg",
        }
    }
}

impl From<OnUnreliable> for &'static str {
    fn from(value: OnUnreliable) -> Self {
        value.as_str()
    }
}

impl TryFrom<String> for OnUnreliable {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl std::str::FromStr for OnUnreliable {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| format!("`{s}` is not a fallback: use kernel or kmemcg"))
    }
}

impl LimitsConfig {
    /// Where what kmemcg froze is kept: in the state directory, when the agent keeps files
    /// there (and so holds it locked).
    pub fn frozen_file(&self) -> Option<PathBuf> {
        let keeps_files = self.state_file.is_some() || self.audit_file.is_some();
        self.state_dir
            .as_ref()
            .filter(|_| keeps_files)
            .map(|dir| dir.join(FROZEN_FILE_NAME))
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            dry_run: false,
            state_dir: Some(DEFAULT_STATE_DIR.into()),
            state_file: Some(PathBuf::from(DEFAULT_STATE_DIR).join(STATE_FILE_NAME)),
            audit_file: Some(PathBuf::from(DEFAULT_STATE_DIR).join(AUDIT_FILE_NAME)),
            protected: Vec::new(),
            rules: Vec::new(),
            on_unreliable: OnUnreliable::default(),
        }
    }
}

/// A rule as listed by `GET /api/v1/limits`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LimitRule {
    /// `config` (the file; change it there) or `runtime` (the API; persisted).
    pub source: String,
    pub rule: RuleSpec,
}

/// What /metrics shows of the enforcement.
#[derive(Clone, Debug, Default)]
pub struct EnforcementMetrics {
    /// (action, outcome kind, dry_run) -> count.
    pub actions: BTreeMap<(String, String, bool), u64>,
    /// Per (rule, cgroup) matched: usage and limit, bytes.
    pub usage: Vec<(String, String, u64, u64)>,
    /// (rule, cgroup) pairs whose cgroup's figures are unreliable.
    pub unreliable: Vec<(String, String)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{api::CgroupUsage, kernel::cgroupfs::CgroupMounts};

    fn spec(path: &str, action: Action) -> RuleSpec {
        RuleSpec::new(path, 1 << 20, action)
    }

    fn usage(path: &str, bytes: u64) -> CgroupUsage {
        CgroupUsage {
            path: path.into(),
            alive: true,
            total_slab_bytes: bytes,
            ..Default::default()
        }
    }

    /// Cgroup mounts where nothing is mounted.
    fn nowhere() -> CgroupMounts {
        CgroupMounts::new("/nonexistent".into(), Vec::new())
    }

    fn in_memory(dry_run: bool) -> Enforcer {
        let config = LimitsConfig {
            dry_run,
            state_file: None,
            audit_file: None,
            ..Default::default()
        };
        Enforcer::new(&config, &nowhere()).expect("valid")
    }

    #[test]
    fn runtime_rules_persist_and_protected_ones_are_refused() {
        let file =
            std::env::temp_dir().join(format!("kmemcg-limits-test-{}.json", std::process::id()));
        let _ = std::fs::remove_file(&file);
        let config = LimitsConfig {
            state_dir: None,
            state_file: Some(file.clone()),
            audit_file: None,
            ..Default::default()
        };
        let e = Enforcer::new(&config, &nowhere()).expect("no rules");
        let refused = e.set(spec("/", Action::Kill), "test").expect_err("root");
        assert!(matches!(refused, Error::Protected { .. }), "{refused}");
        assert!(refused.to_string().contains("root cgroup"), "{refused}");
        assert_eq!(refused.http_status(), 403);
        let refused = e
            .set(spec("/system.slice", Action::Kill), "test")
            .expect_err("protected");
        assert!(refused.to_string().contains("protected"), "{refused}");
        e.set(spec("/kmemcg-test-a", Action::Notify), "test")
            .expect("allowed");
        e.set(spec("/kmemcg-test-*", Action::Freeze), "test")
            .expect("a glob");
        let again = Enforcer::new(&config, &nowhere()).expect("no rules");
        assert_eq!(again.rules().len(), 2);
        again.remove("/kmemcg-test-a", "test").expect("removed");
        let gone = again.remove("/kmemcg-test-a", "test").expect_err("gone");
        assert!(matches!(gone, Error::NotFound { .. }), "{gone}");
        assert_eq!(gone.http_status(), 404);
        let _ = std::fs::remove_file(&file);
    }

    #[test]
    fn rules_cover_their_cgroups_descendants_and_say_so_on_change() {
        let e = in_memory(true);
        assert!(!e.covers("/kmemcg-test-a/b"), "no rules");
        let wake = e.changes().expect("a wake-up");
        assert!(!wake.take());
        e.set(spec("/kmemcg-test-a", Action::Freeze), "test")
            .expect("allowed");
        assert!(wake.take(), "a rule change wakes the sampling thread");
        assert!(e.covers("/kmemcg-test-a"));
        assert!(e.covers("/kmemcg-test-a/b/c"));
        assert!(!e.covers("/kmemcg-test-ab"));
        assert!(!e.covers("/"));
        let headroom = e.evaluate(&[
            CgroupUsage {
                id: 7,
                ..usage("/kmemcg-test-a", 300 << 10)
            },
            CgroupUsage {
                id: 8,
                ..usage("/kmemcg-test-b", 300 << 10)
            },
        ]);
        assert_eq!(
            headroom,
            [Headroom {
                cgroup_id: 7,
                bytes: (1 << 20) - (300 << 10)
            }]
        );
        e.remove("/kmemcg-test-a", "test").expect("removed");
        assert!(wake.take());
    }

    #[test]
    fn a_rule_that_cannot_be_saved_is_not_applied() {
        // A directory where the state file should be: saving fails.
        let dir = std::env::temp_dir().join(format!("kmemcg-unsaved-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("limits.json")).expect("dir");
        let config = LimitsConfig {
            state_dir: None,
            state_file: Some(dir.join("limits.json")),
            audit_file: None,
            ..Default::default()
        };
        let e = Enforcer::new(&config, &nowhere()).expect("valid");
        let err = e
            .set(spec("/kmemcg-test-a", Action::Kill), "test")
            .expect_err("not saved");
        assert!(
            matches!(err, Error::NotSaved { applied: false, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("was not applied"), "{err}");
        assert!(e.rules().is_empty(), "rolled back");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn config_rules_are_changed_in_the_config_and_counted() {
        let mut config = LimitsConfig {
            state_file: None,
            audit_file: None,
            ..Default::default()
        };
        config.rules = vec![Rule::new(spec("/kmemcg-test-c", Action::Notify)).expect("valid")];
        let e = Enforcer::new(&config, &nowhere()).expect("valid");
        let err = e
            .set(spec("/kmemcg-test-c", Action::Kill), "test")
            .expect_err("config");
        assert_eq!((err.kind(), err.http_status()), ("from-config", 409));
        let err = e.remove("/kmemcg-test-c", "test").expect_err("config");
        assert!(matches!(err, Error::FromConfig { .. }));
        config.rules.push(config.rules[0].clone());
        let err = check(&config, None).expect_err("twice");
        assert!(err.to_string().contains("two rules"), "{err}");
    }

    #[test]
    fn rules_are_bounded() {
        let e = in_memory(false);
        for i in 0..MAX_RULES {
            e.set(spec(&format!("/kmemcg-test-{i}"), Action::Notify), "test")
                .expect("room");
        }
        let err = e
            .set(spec("/kmemcg-test-one-more", Action::Notify), "test")
            .expect_err("full");
        assert!(matches!(err, Error::TooMany { .. }), "{err}");
        e.set(spec("/kmemcg-test-7", Action::Kill), "test")
            .expect("replacing takes no room");
    }

    #[test]
    fn dry_run_records_without_touching_and_changes_say_who() {
        let e = in_memory(true);
        e.set(spec("/kmemcg-test-b", Action::Kill), "uid 0")
            .expect("allowed");
        e.evaluate(&[usage("/kmemcg-test-b", 2 << 20)]);
        let records = e.records();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].action, "limit-set");
        assert_eq!(records[0].by.as_deref(), Some("uid 0"));
        assert!(records[1].dry_run);
        assert_eq!(records[1].outcome, "dry-run");
        assert_eq!(records[1].action, "kill");
        let m = e.metrics();
        assert_eq!(m.actions[&("kill".into(), "dry-run".into(), true)], 1);
        assert_eq!(m.usage[0].2, 2 << 20);
    }

    #[test]
    fn a_vanished_cgroup_is_gone_not_failed() {
        let e = in_memory(false);
        e.set(spec("/kmemcg-test-c", Action::Freeze), "test")
            .expect("allowed");
        e.evaluate(&[usage("/kmemcg-test-c", 2 << 20)]);
        assert_eq!(e.records()[1].outcome, "gone");
    }
}
