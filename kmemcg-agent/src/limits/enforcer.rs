//! [`Enforcer`]: the rules in force, what was done about them, and the one lock around both.
//! The sampling thread calls [`Enforcer::evaluate`] after each sample; the API reads and changes
//! the rules.
use std::{
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use super::{
    EnforcementMetrics, Error, LimitRule, LimitsConfig, MAX_RULES, OnUnreliable,
    actions::{self, Outcome},
    audit::{AuditLog, AuditRecord},
    engine::{Decision, Engine, Step, Usage},
    frozen::Freezes,
    protect::Protected,
    rules::{Action, Rule, RuleSpec},
    signals, state,
};
use crate::{
    api::CgroupUsage,
    cgroup_path,
    kernel::cgroupfs::CgroupMounts,
    kernel_figures::{KernelFigures, charged_slab_percpu},
    wake::Wake,
};

/// What one cgroup a rule matches may still allocate before its tightest limit (negative:
/// over it), for the programs to watch until the next sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Headroom {
    pub cgroup_id: u64,
    pub bytes: i64,
}

struct Inner {
    config_rules: Vec<Rule>,
    runtime_rules: Vec<Rule>,
    protected: Protected,
    dry_run: bool,
    state_file: Option<PathBuf>,
    on_unreliable: OnUnreliable,
    engine: Engine,
    /// What kmemcg froze, and by which rules.
    freezes: Freezes,
    audit: AuditLog,
    metrics: EnforcementMetrics,
}

pub struct Enforcer {
    inner: Mutex<Inner>,
    cgroup_root: PathBuf,
    /// For `max_kernel` rules: the kernel's own figures.
    kernel_figures: KernelFigures,
    started: Instant,
    /// Notified when the rules change, so that the sampling thread samples at once.
    changes: Option<Wake>,
}

fn changes_wake() -> Option<Wake> {
    Wake::new()
        .map_err(|e| tracing::warn!(error = %e, "rule changes will wait for the next sample"))
        .ok()
}

/// Checks a configuration's rules: each valid, none on a protected cgroup, no path twice
/// (`cgroup_root`: the cgroup v2 mount, where the agent's own cgroup is looked for).
pub fn check(config: &LimitsConfig, cgroup_root: Option<&Path>) -> Result<Protected, Error> {
    let own = Protected::own_cgroup(cgroup_root);
    let protected = Protected::new(&config.protected, own.as_deref());
    if config.rules.len() > MAX_RULES {
        return Err(Error::TooMany {
            count: config.rules.len(),
        });
    }
    for (i, rule) in config.rules.iter().enumerate() {
        protected.check_rule(rule)?;
        workable(rule)?;
        if config.rules[..i]
            .iter()
            .any(|r| r.spec.path == rule.spec.path)
        {
            return Err(Error::Invalid(format!(
                "two rules in the config file are on {}: keep one",
                rule.spec.path
            )));
        }
    }
    Ok(protected)
}

impl Enforcer {
    /// Checks the config rules (see [`check`]) and loads the persisted runtime rules.
    /// The rules' paths are relative to the cgroup v2 mount of `cgroups`.
    pub fn new(config: &LimitsConfig, cgroups: &CgroupMounts) -> Result<Self, Error> {
        let cgroup_root = cgroups.cgroup2.clone();
        let protected = check(config, Some(&cgroup_root))?;
        let runtime_rules = match &config.state_file {
            Some(path) => restore(path, &protected, &config.rules),
            None => Vec::new(),
        };
        if config.dry_run {
            tracing::warn!(
                "enforcement is in dry-run mode: decisions are audited, nothing is touched"
            );
        }
        let enforcer = Self {
            inner: Mutex::new(Inner {
                config_rules: config.rules.clone(),
                runtime_rules,
                protected,
                dry_run: config.dry_run,
                state_file: config.state_file.clone(),
                on_unreliable: config.on_unreliable,
                engine: Engine::default(),
                freezes: Freezes::load(config.frozen_file(), Duration::ZERO),
                audit: AuditLog::new(config.audit_file.clone()),
                metrics: EnforcementMetrics::default(),
            }),
            kernel_figures: KernelFigures::detect(cgroups),
            cgroup_root,
            started: Instant::now(),
            changes: changes_wake(),
        };
        enforcer.reconcile_frozen();
        Ok(enforcer)
    }

    /// At start, what an earlier agent froze: a cgroup that is gone (or another one at its
    /// path) is forgotten; rules no longer in force let go of it, and one no freeze rule holds
    /// any more is thawed. The rest stays frozen, judged at each sample as if frozen now.
    fn reconcile_frozen(&self) {
        let mut inner = self.lock();
        let held: Vec<(u64, String, Vec<String>)> = inner
            .freezes
            .iter()
            .map(|(id, h)| (id, h.path.clone(), h.rules.keys().cloned().collect()))
            .collect();
        for (id, path, rules) in held {
            let cgroup = match actions::open(&self.dir(&path), id) {
                Ok(c) => c,
                Err(outcome) => {
                    tracing::info!(cgroup = %path, id, outcome = %outcome.text(), "a cgroup kmemcg froze before this start is gone");
                    inner.freezes.forget(id);
                    continue;
                }
            };
            let gone: Vec<&String> = rules
                .iter()
                .filter(|rule| {
                    !inner.all_rules().any(|r| {
                        &r.spec.path == *rule && r.spec.action == Action::Freeze && r.matches(&path)
                    })
                })
                .collect();
            for rule in gone {
                inner.freezes.release(id, rule);
            }
            if let Some(held) = inner.freezes.get(id) {
                tracing::info!(cgroup = %path, id, rules = ?held.rules.keys().collect::<Vec<_>>(), "still held frozen by kmemcg since before this start");
                continue;
            }
            let outcome = actions::freeze(&cgroup, false);
            tracing::info!(cgroup = %path, outcome = %outcome.text(), "thawed at start: no freeze rule in force holds it any more");
            let d = Decision {
                rule: rules.join(", "),
                cgroup_id: id,
                cgroup: path,
                step: Step::Thaw,
                action: Action::Freeze,
                signal: 0,
                usage: 0,
                limit: 0,
                dry_run: false,
                unreliable: false,
            };
            inner.record_by(
                &d,
                outcome,
                Some("agent start: no freeze rule in force holds it"),
            );
        }
    }

    /// No rules, no files: for tests and embedders.
    pub fn disabled() -> Self {
        Self {
            inner: Mutex::new(Inner {
                config_rules: Vec::new(),
                runtime_rules: Vec::new(),
                protected: Protected::new(&[], None),
                dry_run: false,
                state_file: None,
                on_unreliable: OnUnreliable::default(),
                engine: Engine::default(),
                freezes: Freezes::default(),
                audit: AuditLog::new(None),
                metrics: EnforcementMetrics::default(),
            }),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            kernel_figures: KernelFigures::None,
            started: Instant::now(),
            changes: changes_wake(),
        }
    }

    /// Readable when the rules changed since the sampling thread last looked.
    pub fn changes(&self) -> Option<&Wake> {
        self.changes.as_ref()
    }

    fn changed(&self) {
        if let Some(wake) = &self.changes {
            wake.notify();
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies a reloaded configuration (SIGHUP): config rules, dry-run, protected list. The
    /// caller checks it first with [`check`], so that a reload applies all or nothing.
    pub fn reconfigure(&self, config: &LimitsConfig, protected: Protected) {
        let mut inner = self.lock();
        let old = std::mem::replace(&mut inner.config_rules, config.rules.clone());
        inner.protected = protected;
        inner.dry_run = config.dry_run;
        inner.on_unreliable = config.on_unreliable;
        for rule in old {
            let kept = config.rules.iter().find(|r| r.spec.path == rule.spec.path);
            self.rule_gone(&mut inner, &rule, kept, "configuration reload");
        }
        self.changed();
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

    /// Adds or replaces a runtime rule and saves the runtime rules; `by` says who asked (for
    /// the audit). When the save fails the change is rolled back.
    pub fn set(&self, spec: RuleSpec, by: &str) -> Result<LimitRule, Error> {
        let rule = Rule::new(spec).map_err(Error::Invalid)?;
        let mut inner = self.lock();
        inner.protected.refresh_agent(&self.cgroup_root);
        inner.protected.check_rule(&rule)?;
        workable(&rule)?;
        let path = rule.spec.path.clone();
        if inner.config_rules.iter().any(|r| r.spec.path == path) {
            return Err(Error::FromConfig { path });
        }
        let old = inner.runtime_rules.iter().position(|r| r.spec.path == path);
        if old.is_none() && inner.config_rules.len() + inner.runtime_rules.len() >= MAX_RULES {
            return Err(Error::TooMany { count: MAX_RULES });
        }
        let previous = inner.runtime_rules.clone();
        match old {
            Some(i) => inner.runtime_rules[i] = rule.clone(),
            None => inner.runtime_rules.push(rule.clone()),
        }
        if let Err(reason) = inner.save() {
            inner.runtime_rules = previous;
            return Err(Error::NotSaved {
                path,
                file: inner.state_file_name(),
                applied: false,
                reason,
            });
        }
        if let Some(i) = old {
            let replaced = previous[i].clone();
            self.rule_gone(&mut inner, &replaced, Some(&rule), by);
        }
        if !self.exists(&path) && !rule.is_glob() {
            tracing::warn!(path = %path, "limit set on a cgroup that does not exist (yet): it applies once the cgroup is created");
        }
        inner.audit_change(&rule.spec, "limit-set", by);
        self.changed();
        tracing::info!(path = %path, max = %crate::units::iec(rule.limit()), measures = %if rule.spec.max.is_some() { "slab+percpu" } else { "kernel" }, action = rule.spec.action.as_str(), dry_run = rule.spec.dry_run, by, "limit set");
        Ok(LimitRule {
            source: "runtime".into(),
            rule: rule.spec,
        })
    }

    /// Removes a runtime rule (thawing what it froze) and saves the runtime rules. A failed
    /// save leaves the removal done and says it comes back at restart.
    pub fn remove(&self, path: &str, by: &str) -> Result<(), Error> {
        let path = cgroup_path::normalize(path).map_err(Error::Invalid)?;
        let mut inner = self.lock();
        let Some(i) = inner.runtime_rules.iter().position(|r| r.spec.path == path) else {
            return Err(if inner.config_rules.iter().any(|r| r.spec.path == path) {
                Error::FromConfig { path }
            } else {
                Error::NotFound { path }
            });
        };
        let rule = inner.runtime_rules.remove(i);
        self.rule_gone(&mut inner, &rule, None, by);
        inner.audit_change(&rule.spec, "limit-removed", by);
        self.changed();
        tracing::info!(path = %path, by, "limit removed");
        inner.save().map_err(|reason| Error::NotSaved {
            path,
            file: inner.state_file_name(),
            applied: true,
            reason,
        })
    }

    pub fn records(&self) -> Vec<AuditRecord> {
        self.lock().audit.records()
    }

    pub fn metrics(&self) -> EnforcementMetrics {
        self.lock().metrics.clone()
    }

    /// Whether a rule matches the cgroup at `path` or one of its ancestors (whose limits count
    /// its memory too).
    pub fn covers(&self, path: &str) -> bool {
        let inner = self.lock();
        cgroup_path::self_and_ancestors(path).any(|p| inner.all_rules().any(|r| r.matches(p)))
    }

    /// Decides and acts on the latest sample (live cgroups only, as the API lists them).
    /// Returns what each cgroup a rule matches may still allocate.
    pub fn evaluate(&self, cgroups: &[CgroupUsage]) -> Vec<Headroom> {
        let mut inner = self.lock();
        let all: Vec<Rule> = inner.all_rules().cloned().collect();
        if all.is_empty() {
            inner.metrics.usage.clear();
            return Vec::new();
        }
        let on_unreliable = inner.on_unreliable;
        let usages: Vec<Usage> = cgroups
            .iter()
            .map(|c| Usage {
                id: c.id,
                path: &c.path,
                slab: self.slab_or_kernel(c, on_unreliable),
                percpu: c.total_percpu_bytes,
                unreliable: c.unreliable,
                whole: all
                    .iter()
                    .any(|r| r.spec.max_kernel.is_some() && r.matches(&c.path))
                    .then(|| self.whole(c))
                    .flatten(),
            })
            .collect();
        let now = self.started.elapsed();
        let dry_run = inner.dry_run;
        inner.protected.refresh_agent(&self.cgroup_root);
        self.look_at_frozen(&mut inner, cgroups);
        let Inner {
            engine,
            protected,
            freezes,
            ..
        } = &mut *inner;
        let decisions = engine.evaluate(&all, &usages, freezes, protected, now, dry_run);
        inner.metrics.usage = all
            .iter()
            .flat_map(|r| {
                usages.iter().filter(|u| r.matches(u.path)).map(|u| {
                    (
                        r.spec.path.clone(),
                        u.path.to_string(),
                        r.measure(u.slab, u.percpu, u.whole),
                        r.limit(),
                    )
                })
            })
            .collect();
        inner.metrics.unreliable = all
            .iter()
            .flat_map(|r| {
                usages
                    .iter()
                    .filter(|u| u.unreliable && r.matches(u.path))
                    .map(|u| (r.spec.path.clone(), u.path.to_string()))
            })
            .collect();
        for d in decisions {
            self.apply(&mut inner, &d, now);
        }
        // After the decisions: a cgroup kmemcg holds frozen is watched with no budget left
        // (not below zero), so that its first allocation after someone else thaws it wakes
        // the agent at once.
        usages
            .iter()
            .filter(|u| !inner.protected.covers(u.path))
            .filter_map(|u| {
                let bytes = all
                    .iter()
                    .filter(|r| r.matches(u.path))
                    .map(|r| r.headroom(u.slab, u.percpu, u.whole))
                    .min()?;
                let held = inner.freezes.get(u.id).is_some_and(|h| !h.thawed);
                Some(Headroom {
                    cgroup_id: u.id,
                    bytes: if held { bytes.max(0) } else { bytes },
                })
            })
            .collect()
    }

    /// What became of the cgroups kmemcg holds frozen: gone ones are forgotten, and each one's
    /// `cgroup.freeze` says whether someone else thawed it.
    fn look_at_frozen(&self, inner: &mut Inner, cgroups: &[CgroupUsage]) {
        let held: Vec<(u64, String)> = inner
            .freezes
            .iter()
            .map(|(id, h)| {
                let path = cgroups
                    .iter()
                    .find(|c| c.id == id)
                    .map_or(&h.path, |c| &c.path);
                (id, path.clone())
            })
            .collect();
        for (id, path) in held {
            match actions::open(&self.dir(&path), id) {
                Ok(cgroup) => {
                    if let Some(set) = cgroup.freeze_set() {
                        inner.freezes.observe(id, set);
                    }
                }
                Err(Outcome::Gone) => {
                    tracing::info!(cgroup = %path, id, "a cgroup kmemcg froze was removed");
                    inner.freezes.forget(id);
                }
                Err(_) => {}
            }
        }
    }

    /// Carries out one decision, tells [`Freezes`] what came of it, and audits it.
    fn apply(&self, inner: &mut Inner, d: &Decision, now: Duration) {
        if d.dry_run {
            if d.step == Step::Refreeze {
                inner.freezes.refreeze_tried(d.cgroup_id, false, now);
            }
            inner.engine.record_outcome(d, false, now);
            inner.record(d, Outcome::DryRun);
            return;
        }
        match d.step {
            Step::Thaw => {
                let left = inner.freezes.release(d.cgroup_id, &d.rule);
                if !left.is_empty() {
                    tracing::info!(cgroup = %d.cgroup, rule = %d.rule, held_by = ?left, "below the watermark of one rule; stays frozen: other rules hold it");
                    return;
                }
            }
            Step::Release => {
                inner.freezes.forget(d.cgroup_id);
                tracing::info!(cgroup = %d.cgroup, usage = d.usage, "thawed by someone else while under its limits: kmemcg no longer holds it frozen, and judges it afresh");
                return;
            }
            _ => {}
        }
        let mut outcome = self.act(d);
        let done = matches!(outcome, Outcome::Done(_));
        match (d.step, d.action) {
            // Held by the rule once frozen; and again when its thaw failed, to be retried.
            (Step::Act, Action::Freeze) if done => {
                inner
                    .freezes
                    .hold(d.cgroup_id, &d.cgroup, &d.rule, now, now_seconds());
            }
            (Step::Thaw, _) if matches!(outcome, Outcome::Failed(_)) => {
                inner
                    .freezes
                    .hold(d.cgroup_id, &d.cgroup, &d.rule, now, now_seconds());
            }
            (Step::Refreeze, _) => {
                if outcome == Outcome::Gone {
                    inner.freezes.forget(d.cgroup_id);
                } else {
                    let n = inner.freezes.refreeze_tried(d.cgroup_id, done, now);
                    let wait = inner
                        .freezes
                        .get(d.cgroup_id)
                        .map_or(Duration::ZERO, |h| h.refreeze_at.saturating_sub(now));
                    let what = format!(
                        "re-frozen: thawed by someone else while over its limit (time {n}); \
                         not again before {} s",
                        wait.as_secs()
                    );
                    outcome = match outcome {
                        Outcome::Done(_) => Outcome::Done(what),
                        Outcome::Failed(e) => Outcome::Failed(format!("{e} ({what})")),
                        other => other,
                    };
                }
            }
            _ => {}
        }
        let failed = matches!(outcome, Outcome::Failed(_));
        inner.engine.record_outcome(d, failed, now);
        inner.record(d, outcome);
    }

    fn act(&self, d: &Decision) -> Outcome {
        let dir = self.dir(&d.cgroup);
        let cgroup = match actions::open(&dir, d.cgroup_id) {
            Ok(c) => c,
            Err(outcome) => return outcome,
        };
        match (d.step, d.action) {
            (Step::Thaw, _) => actions::freeze(&cgroup, false),
            (Step::Refreeze, _) => actions::freeze(&cgroup, true),
            (Step::Release, _) => Outcome::Done(String::new()),
            (Step::Escalate, _) => actions::kill(&cgroup),
            (Step::Act, Action::Notify) => Outcome::Done(String::new()),
            (Step::Act, Action::Signal) => actions::signal(cgroup.path(), d.signal),
            (Step::Act, Action::Freeze) => actions::freeze(&cgroup, true),
            (Step::Act, Action::Kill) => actions::kill(&cgroup),
        }
    }

    /// The slab bytes a rule compares: kmemcg's, or where they miss dropped allocations and
    /// the fallback says so, the kernel's own charge less the percpu part when it is larger.
    fn slab_or_kernel(&self, c: &CgroupUsage, on_unreliable: OnUnreliable) -> u64 {
        if !c.unreliable || on_unreliable != OnUnreliable::Kernel {
            return c.total_slab_bytes;
        }
        let kernel = self
            .kernel_figures
            .read(&c.path)
            .and_then(|k| charged_slab_percpu(&k));
        let charged = kernel.unwrap_or(0).saturating_sub(c.total_percpu_bytes);
        c.total_slab_bytes.max(charged)
    }

    /// All of a cgroup's kernel memory, read fresh: the kernel's charge (slab, percpu,
    /// stacks, page tables, ...) plus what kmemcg sees that no memcg is charged for.
    fn whole(&self, c: &CgroupUsage) -> Option<u64> {
        let kernel = self.kernel_figures.read(&c.path)?.kernel_bytes?;
        Some(kernel + c.total_unaccounted_bytes)
    }

    /// The cgroup v2 mount the rules' paths are relative to.
    pub fn cgroup_root(&self) -> &Path {
        &self.cgroup_root
    }

    fn dir(&self, cgroup: &str) -> PathBuf {
        self.cgroup_root.join(cgroup.trim_start_matches('/'))
    }

    fn exists(&self, cgroup: &str) -> bool {
        self.dir(cgroup).is_dir()
    }

    /// A rule removed or replaced: it lets go of what it held frozen (unless the rule that
    /// takes its place freezes too), and what no other rule holds is thawed (and audited).
    fn rule_gone(&self, inner: &mut Inner, rule: &Rule, replacement: Option<&Rule>, by: &str) {
        if replacement.is_some_and(|r| r.spec.action == Action::Freeze) {
            return;
        }
        inner.engine.forget_rule(&rule.spec.path);
        for (id, cgroup) in inner.freezes.release_rule(&rule.spec.path) {
            let outcome = match actions::open(&self.dir(&cgroup), id) {
                Ok(c) => actions::freeze(&c, false),
                Err(o) => o,
            };
            tracing::info!(cgroup = %cgroup, rule = %rule.spec.path, outcome = %outcome.text(), "thawed: its freeze rule was removed");
            let d = Decision {
                rule: rule.spec.path.clone(),
                cgroup_id: id,
                cgroup,
                step: Step::Thaw,
                action: Action::Freeze,
                signal: 0,
                usage: 0,
                limit: rule.limit(),
                dry_run: false,
                unreliable: false,
            };
            inner.record_by(&d, outcome, Some(by));
        }
    }
}

/// Refuses a rule whose action cannot work where the agent runs (signals from a PID namespace
/// of its own).
fn workable(rule: &Rule) -> Result<(), Error> {
    match actions::signal_unavailable() {
        Some(reason) if rule.spec.action == Action::Signal => Err(Error::Invalid(format!(
            "refusing the signal action on {}: {reason}",
            rule.spec.path
        ))),
        _ => Ok(()),
    }
}

/// The persisted runtime rules; bad or refused ones are logged and skipped.
fn restore(path: &std::path::Path, protected: &Protected, config_rules: &[Rule]) -> Vec<Rule> {
    let mut out: Vec<Rule> = Vec::new();
    for spec in state::load(path) {
        let rule = Rule::new(spec.clone())
            .map_err(Error::Invalid)
            .and_then(|r| protected.check_rule(&r).and(workable(&r)).map(|()| r));
        match rule {
            Ok(r) if config_rules.iter().any(|c| c.spec.path == r.spec.path) => {
                tracing::warn!(path = %r.spec.path, "saved limit ignored: the config file has a rule for this path");
            }
            Ok(_) if out.len() + config_rules.len() >= MAX_RULES => {
                tracing::error!(path = %spec.path, "saved limit ignored: too many rules");
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

impl Inner {
    /// The rules in force: from the config file, then set at runtime.
    fn all_rules(&self) -> impl Iterator<Item = &Rule> {
        self.config_rules.iter().chain(&self.runtime_rules)
    }

    fn save(&self) -> Result<(), String> {
        match &self.state_file {
            Some(path) => state::save(path, &self.runtime_rules).map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }

    fn state_file_name(&self) -> String {
        self.state_file
            .as_ref()
            .map_or_else(String::new, |p| p.display().to_string())
    }

    /// A rule set or removed through the API: audited with who did it.
    fn audit_change(&mut self, spec: &RuleSpec, action: &str, by: &str) {
        self.audit.push(AuditRecord {
            time: now_seconds(),
            cgroup: spec.path.clone(),
            cgroup_id: None,
            rule: spec.path.clone(),
            usage_bytes: 0,
            limit_bytes: spec.max.or(spec.max_kernel).map_or(0, |s| s.0),
            action: action.into(),
            signal: None,
            escalation: false,
            dry_run: spec.dry_run,
            outcome: format!("{} ({})", spec.action.as_str(), "rule change"),
            by: Some(by.to_string()),
            unreliable: false,
        });
    }

    fn record(&mut self, d: &Decision, outcome: Outcome) {
        self.record_by(d, outcome, None);
    }

    fn record_by(&mut self, d: &Decision, outcome: Outcome, by: Option<&str>) {
        let action = match d.step {
            Step::Thaw | Step::Release => "thaw",
            Step::Escalate => "signal",
            Step::Refreeze => "freeze",
            Step::Act => d.action.as_str(),
        };
        let signal = (d.step == Step::Escalate
            || (d.step == Step::Act && d.action == Action::Signal))
            .then(|| signals::name(d.signal));
        match &outcome {
            Outcome::Failed(e) => {
                tracing::error!(cgroup = %d.cgroup, rule = %d.rule, action, error = %e, "enforcement action failed; retrying while the cgroup stays over its limit")
            }
            _ => {
                tracing::warn!(cgroup = %d.cgroup, rule = %d.rule, action, usage = %crate::units::iec(d.usage), limit = %crate::units::iec(d.limit), dry_run = d.dry_run, outcome = %outcome.text(), "kernel-memory limit enforced")
            }
        }
        *self
            .metrics
            .actions
            .entry((action.to_string(), outcome.kind().to_string(), d.dry_run))
            .or_default() += 1;
        self.audit.push(AuditRecord {
            time: now_seconds(),
            cgroup: d.cgroup.clone(),
            cgroup_id: Some(d.cgroup_id),
            rule: d.rule.clone(),
            usage_bytes: d.usage,
            limit_bytes: d.limit,
            action: action.into(),
            signal,
            escalation: d.step == Step::Escalate,
            dry_run: d.dry_run,
            outcome: outcome.text(),
            by: by.map(str::to_string),
            unreliable: d.unreliable,
        });
    }
}

fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |t| (t.as_millis() as f64) / 1000.0)
}
