//! Enforcement: per-cgroup kernel-memory limits that notify, signal, freeze or kill.
//!
//! rules (parse, match) -> engine (decide, with hysteresis) -> actions (cgroup v2 files,
//! signals) -> audit (records, JSON lines). [`Enforcer`] ties them together: the sampling thread
//! calls [`Enforcer::evaluate`] after each sample; the API reads and changes the rules.
pub mod actions;
pub mod audit;
pub mod engine;
pub mod protect;
pub mod rules;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::api::CgroupUsage;
use actions::Outcome;
use audit::{AuditLog, AuditRecord};
use engine::{Decision, Engine, Step, Usage};
use protect::Protected;
use rules::{Action, Rule, RuleSpec};

/// Where runtime rules (`kmemcg limit set`) are kept across restarts by default.
pub const DEFAULT_STATE_FILE: &str = "/var/lib/kmemcg/limits.json";
/// Where audit records are appended by default.
pub const DEFAULT_AUDIT_FILE: &str = "/var/lib/kmemcg/enforcement.jsonl";

/// The `[limits]` configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct LimitsConfig {
    /// Decide and audit, touch nothing, whatever the rules say.
    pub dry_run: bool,
    /// Runtime rules are kept here (None: not kept across restarts).
    pub state_file: Option<PathBuf>,
    /// Audit records are appended here (None: only served by the API).
    pub audit_file: Option<PathBuf>,
    /// Protected besides the built-in ones.
    pub protected: Vec<String>,
    /// Rules of the config file.
    pub rules: Vec<Rule>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            dry_run: false,
            state_file: Some(DEFAULT_STATE_FILE.into()),
            audit_file: Some(DEFAULT_AUDIT_FILE.into()),
            protected: Vec::new(),
            rules: Vec::new(),
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
}

#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    rules: Vec<RuleSpec>,
}

struct Inner {
    config_rules: Vec<Rule>,
    runtime_rules: Vec<Rule>,
    protected: Protected,
    dry_run: bool,
    state_file: Option<PathBuf>,
    engine: Engine,
    audit: AuditLog,
    metrics: EnforcementMetrics,
}

pub struct Enforcer {
    inner: Mutex<Inner>,
    cgroup_root: PathBuf,
    started: Instant,
}

fn refusal(protected: &Protected, rule: &Rule) -> Result<(), String> {
    if rule.spec.action == Action::Signal
        && let Some(reason) = actions::signal_unavailable()
    {
        return Err(format!(
            "refusing the signal action on {}: {reason}",
            rule.spec.path
        ));
    }
    if rule.glob {
        // A glob may match unprotected cgroups: protected matches are skipped when evaluated.
        return Ok(());
    }
    match protected.reason(&rule.spec.path) {
        Some(reason) => Err(format!(
            "refusing a limit on {}: {reason}. kmemcg never acts on protected cgroups (the root, \
             the agent's own cgroup and its ancestors, /init.scope, /system.slice and the \
             [limits] protected list)",
            rule.spec.path
        )),
        None => Ok(()),
    }
}

/// Refuses config rules on protected cgroups: what a start checks before loading anything.
pub fn check(config: &LimitsConfig) -> Result<(), String> {
    let protected = Protected::new(&config.protected, Protected::own_cgroup().as_deref());
    config
        .rules
        .iter()
        .try_for_each(|rule| refusal(&protected, rule))
        .map_err(|e| format!("config file, [[limits.rule]]: {e}"))
}

impl Enforcer {
    /// Checks the config rules against the protected cgroups and loads the persisted runtime
    /// rules. `cgroup_root` is the cgroup v2 mount the rules' paths are relative to.
    pub fn new(config: &LimitsConfig, cgroup_root: PathBuf) -> Result<Self, String> {
        let own = Protected::own_cgroup();
        let protected = Protected::new(&config.protected, own.as_deref());
        for rule in &config.rules {
            refusal(&protected, rule).map_err(|e| format!("config file, [[limits.rule]]: {e}"))?;
        }
        let runtime_rules = match &config.state_file {
            Some(path) => load_state(path, &protected, &config.rules),
            None => Vec::new(),
        };
        if config.dry_run {
            tracing::warn!(
                "enforcement is in dry-run mode: decisions are audited, nothing is touched"
            );
        }
        Ok(Self {
            inner: Mutex::new(Inner {
                config_rules: config.rules.clone(),
                runtime_rules,
                protected,
                dry_run: config.dry_run,
                state_file: config.state_file.clone(),
                engine: Engine::default(),
                audit: AuditLog::new(config.audit_file.clone()),
                metrics: EnforcementMetrics::default(),
            }),
            cgroup_root,
            started: Instant::now(),
        })
    }

    /// No rules, no files: for tests and embedders.
    pub fn disabled() -> Self {
        let config = LimitsConfig {
            state_file: None,
            audit_file: None,
            ..Default::default()
        };
        Self::new(&config, PathBuf::from("/sys/fs/cgroup")).expect("no rules to refuse")
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies a reloaded configuration (SIGHUP): config rules, dry-run, protected list.
    pub fn reconfigure(&self, config: &LimitsConfig) -> Result<(), String> {
        let protected = Protected::new(&config.protected, Protected::own_cgroup().as_deref());
        for rule in &config.rules {
            refusal(&protected, rule).map_err(|e| format!("config file, [[limits.rule]]: {e}"))?;
        }
        let mut inner = self.lock();
        inner.config_rules = config.rules.clone();
        inner.protected = protected;
        inner.dry_run = config.dry_run;
        Ok(())
    }

    pub fn rules(&self) -> Vec<LimitRule> {
        let inner = self.lock();
        let list = |rules: &[Rule], source: &str| {
            rules
                .iter()
                .map(|r| LimitRule {
                    source: source.into(),
                    rule: r.spec.clone(),
                })
                .collect::<Vec<_>>()
        };
        let mut out = list(&inner.config_rules, "config");
        out.extend(list(&inner.runtime_rules, "runtime"));
        out
    }

    /// Adds or replaces a runtime rule, refusing protected cgroups; persists the rules.
    pub fn set(&self, spec: RuleSpec) -> Result<LimitRule, String> {
        let rule = Rule::new(spec)?;
        let mut inner = self.lock();
        inner.protected.refresh_agent();
        refusal(&inner.protected, &rule)?;
        if inner
            .config_rules
            .iter()
            .any(|r| r.spec.path == rule.spec.path)
        {
            return Err(format!(
                "{} has a rule in the config file: change it there (and reload with SIGHUP)",
                rule.spec.path
            ));
        }
        let path = rule.spec.path.clone();
        inner.engine.forget_rule(&path);
        inner.runtime_rules.retain(|r| r.spec.path != path);
        inner.runtime_rules.push(rule.clone());
        inner.persist()?;
        tracing::info!(path = %path, max = rule.spec.max.0, action = rule.spec.action.as_str(), dry_run = rule.spec.dry_run, "limit set");
        Ok(LimitRule {
            source: "runtime".into(),
            rule: rule.spec,
        })
    }

    /// Removes a runtime rule; persists the rules.
    pub fn remove(&self, path: &str) -> Result<(), String> {
        let path = rules::normalize(path)?;
        let mut inner = self.lock();
        let before = inner.runtime_rules.len();
        inner.runtime_rules.retain(|r| r.spec.path != path);
        if inner.runtime_rules.len() == before {
            return Err(if inner.config_rules.iter().any(|r| r.spec.path == path) {
                format!(
                    "the limit on {path} comes from the config file: remove it there (and reload with SIGHUP)"
                )
            } else {
                format!("no limit on {path}; `kmemcg limit list` shows them")
            });
        }
        inner.engine.forget_rule(&path);
        inner.persist()?;
        tracing::info!(path = %path, "limit removed");
        Ok(())
    }

    pub fn records(&self) -> Vec<AuditRecord> {
        self.lock().audit.records()
    }

    pub fn metrics(&self) -> EnforcementMetrics {
        self.lock().metrics.clone()
    }

    /// Whether any rule is in force (from the config or set at runtime).
    pub fn has_rules(&self) -> bool {
        let inner = self.lock();
        !(inner.config_rules.is_empty() && inner.runtime_rules.is_empty())
    }

    /// Decides and acts on the latest sample.
    pub fn evaluate(&self, cgroups: &[CgroupUsage]) {
        let mut inner = self.lock();
        if inner.config_rules.is_empty() && inner.runtime_rules.is_empty() {
            inner.metrics.usage.clear();
            return;
        }
        let usages: Vec<Usage> = cgroups
            .iter()
            .filter(|c| c.alive)
            .map(|c| Usage {
                path: &c.path,
                slab: c.total_slab_bytes,
                percpu: c.total_percpu_bytes,
            })
            .collect();
        let all: Vec<Rule> = inner
            .config_rules
            .iter()
            .chain(&inner.runtime_rules)
            .cloned()
            .collect();
        let now = self.started.elapsed();
        let dry_run = inner.dry_run;
        inner.protected.refresh_agent();
        let Inner {
            engine, protected, ..
        } = &mut *inner;
        let decisions = engine.evaluate(&all, &usages, protected, now, dry_run);
        inner.metrics.usage = all
            .iter()
            .flat_map(|r| {
                usages.iter().filter(|u| r.matches(u.path)).map(|u| {
                    (
                        r.spec.path.clone(),
                        u.path.to_string(),
                        u.slab + u.percpu,
                        r.spec.max.0,
                    )
                })
            })
            .collect();
        for d in decisions {
            let outcome = if d.dry_run {
                Outcome::DryRun
            } else {
                self.act(&d)
            };
            inner.record(&d, outcome);
        }
    }

    fn act(&self, d: &Decision) -> Outcome {
        let dir = self.cgroup_root.join(d.cgroup.trim_start_matches('/'));
        match (d.step, d.action) {
            (Step::Thaw, _) => actions::freeze(&dir, false),
            (Step::Escalate, _) => actions::kill(&dir),
            (Step::Act, Action::Notify) => Outcome::Done(String::new()),
            (Step::Act, Action::Signal) => actions::signal(&dir, d.signal),
            (Step::Act, Action::Freeze) => actions::freeze(&dir, true),
            (Step::Act, Action::Kill) => actions::kill(&dir),
        }
    }
}

impl Inner {
    fn persist(&self) -> Result<(), String> {
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        let state = StateFile {
            rules: self.runtime_rules.iter().map(|r| r.spec.clone()).collect(),
        };
        write_atomically(path, &state).map_err(|e| {
            format!(
                "the rule is applied but could not be saved to {} (it will be lost at restart): {e}",
                path.display()
            )
        })
    }

    fn record(&mut self, d: &Decision, outcome: Outcome) {
        let action = match d.step {
            Step::Thaw => "thaw",
            Step::Escalate => "signal",
            Step::Act => d.action.as_str(),
        };
        let signal = (d.step == Step::Escalate
            || (d.step == Step::Act && d.action == Action::Signal))
            .then(|| actions::signal_name(d.signal));
        match &outcome {
            Outcome::Failed(e) => {
                tracing::error!(cgroup = %d.cgroup, rule = %d.rule, action, error = %e, "enforcement action failed")
            }
            _ => {
                tracing::warn!(cgroup = %d.cgroup, rule = %d.rule, action, usage = d.usage, limit = d.limit, dry_run = d.dry_run, outcome = %outcome.text(), "kernel-memory limit enforced")
            }
        }
        *self
            .metrics
            .actions
            .entry((action.to_string(), outcome.kind().to_string(), d.dry_run))
            .or_default() += 1;
        self.audit.push(AuditRecord {
            time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |t| (t.as_millis() as f64) / 1000.0),
            cgroup: d.cgroup.clone(),
            rule: d.rule.clone(),
            usage_bytes: d.usage,
            limit_bytes: d.limit,
            action: action.into(),
            signal,
            escalation: d.step == Step::Escalate,
            dry_run: d.dry_run,
            outcome: outcome.text(),
        });
    }
}

fn write_atomically(path: &Path, state: &StateFile) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let text = serde_json::to_string_pretty(state).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, text + "\n")?;
    std::fs::rename(&tmp, path)
}

/// The persisted runtime rules; bad or refused ones are logged and skipped.
fn load_state(path: &Path, protected: &Protected, config_rules: &[Rule]) -> Vec<Rule> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "cannot read the saved limits; starting without them");
            return Vec::new();
        }
    };
    let state: StateFile = match serde_json::from_str(&text) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "the saved limits are not valid; starting without them");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for spec in state.rules {
        let rule = Rule::new(spec.clone()).and_then(|r| refusal(protected, &r).map(|()| r));
        match rule {
            Ok(r) if config_rules.iter().any(|c| c.spec.path == r.spec.path) => {
                tracing::warn!(path = %r.spec.path, "saved limit ignored: the config file has a rule for this path");
            }
            Ok(r) => out.push(r),
            Err(e) => {
                tracing::error!(file = %path.display(), path = %spec.path, error = %e, "saved limit ignored")
            }
        }
    }
    if !out.is_empty() {
        tracing::info!(file = %path.display(), rules = out.len(), "saved limits restored");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn runtime_rules_persist_and_protected_ones_are_refused() {
        let file =
            std::env::temp_dir().join(format!("kmemcg-limits-test-{}.json", std::process::id()));
        let _ = std::fs::remove_file(&file);
        let config = LimitsConfig {
            state_file: Some(file.clone()),
            audit_file: None,
            ..Default::default()
        };
        let e = Enforcer::new(&config, "/nonexistent".into()).expect("no rules");
        let refused = e.set(spec("/", Action::Kill)).expect_err("root");
        assert!(refused.contains("root cgroup"), "{refused}");
        let refused = e
            .set(spec("/system.slice", Action::Kill))
            .expect_err("protected");
        assert!(refused.contains("protected"), "{refused}");
        e.set(spec("/kmemcg-test-a", Action::Notify))
            .expect("allowed");
        e.set(spec("/kmemcg-test-*", Action::Freeze))
            .expect("a glob");
        let again = Enforcer::new(&config, "/nonexistent".into()).expect("no rules");
        assert_eq!(again.rules().len(), 2);
        again.remove("/kmemcg-test-a").expect("removed");
        assert!(
            again
                .remove("/kmemcg-test-a")
                .expect_err("gone")
                .contains("no limit")
        );
        let _ = std::fs::remove_file(&file);
    }

    #[test]
    fn dry_run_records_without_touching() {
        let config = LimitsConfig {
            dry_run: true,
            state_file: None,
            audit_file: None,
            ..Default::default()
        };
        let e = Enforcer::new(&config, "/nonexistent".into()).expect("valid");
        e.set(spec("/kmemcg-test-b", Action::Kill))
            .expect("allowed");
        e.evaluate(&[usage("/kmemcg-test-b", 2 << 20)]);
        let records = e.records();
        assert_eq!(records.len(), 1);
        assert!(records[0].dry_run);
        assert_eq!(records[0].outcome, "dry-run");
        assert_eq!(records[0].action, "kill");
        let m = e.metrics();
        assert_eq!(m.actions[&("kill".into(), "dry-run".into(), true)], 1);
        assert_eq!(m.usage[0].2, 2 << 20);
    }

    #[test]
    fn a_vanished_cgroup_is_gone_not_failed() {
        let e = Enforcer::new(
            &LimitsConfig {
                state_file: None,
                audit_file: None,
                ..Default::default()
            },
            "/nonexistent".into(),
        )
        .expect("valid");
        e.set(spec("/kmemcg-test-c", Action::Freeze))
            .expect("allowed");
        e.evaluate(&[usage("/kmemcg-test-c", 2 << 20)]);
        assert_eq!(e.records()[0].outcome, "gone");
    }
}
