//! Decisions: which cgroups to act on after a sample, with hysteresis and rate limits. Pure:
//! the clock is passed in, nothing is touched here.
use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use super::{
    protect::Protected,
    rules::{Action, Rule},
};

/// What to do to one cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The rule's action, on crossing the limit.
    Act,
    /// SIGKILL: a signalled cgroup still over its limit after the grace period.
    Escalate,
    /// Unfreeze: a frozen cgroup below its low watermark.
    Thaw,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The rule's path (its key).
    pub rule: String,
    pub cgroup: String,
    pub step: Step,
    pub action: Action,
    /// For signal actions: the signal to send.
    pub signal: i32,
    pub usage: u64,
    pub limit: u64,
    pub dry_run: bool,
    /// The cgroup's figures miss dropped allocations (see `CgroupUsage::unreliable`).
    pub unreliable: bool,
}

/// One cgroup's usage, recursive.
#[derive(Clone, Copy, Debug)]
pub struct Usage<'a> {
    pub path: &'a str,
    pub slab: u64,
    pub percpu: u64,
    /// All its kernel memory (the kernel's charge plus kmemcg's unaccounted bytes), where
    /// known and needed (a rule with `max_kernel` matches it).
    pub whole: Option<u64>,
    pub unreliable: bool,
}

/// A (rule, cgroup) pair acted on and not yet back under the limit.
#[derive(Clone, Debug)]
struct Track {
    acted_at: Duration,
    escalated: bool,
    /// Frozen by this rule: stays so until thawed by the watermark or the rule's removal.
    frozen: bool,
    /// The last action failed: retried at this time, while the breach lasts.
    retry: Option<Retry>,
}

#[derive(Clone, Copy, Debug)]
struct Retry {
    step: Step,
    at: Duration,
    failures: u32,
}

/// First retry of a failed action after this long, doubling up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(30);

impl Track {
    fn new(now: Duration) -> Self {
        Self {
            acted_at: now,
            escalated: false,
            frozen: false,
            retry: None,
        }
    }
}

#[derive(Debug, Default)]
pub struct Engine {
    tracks: HashMap<(String, String), Track>,
}

impl Engine {
    /// Decisions for this sample. `now` is any monotonic clock; `dry_run` is the global switch.
    pub fn evaluate(
        &mut self,
        rules: &[Rule],
        cgroups: &[Usage],
        protected: &Protected,
        now: Duration,
        dry_run: bool,
    ) -> Vec<Decision> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for rule in rules {
            for usage in cgroups.iter().filter(|u| rule.matches(u.path)) {
                // Globs skip protected cgroups; literal rules on them are refused earlier, and
                // skipped here too (the protected set can change, e.g. the agent moved).
                if protected.covers(usage.path) {
                    continue;
                }
                let key = (rule.spec.path.clone(), usage.path.to_string());
                seen.insert(key.clone());
                let decision = |step, signal, (u, l): (u64, u64)| Decision {
                    rule: rule.spec.path.clone(),
                    cgroup: usage.path.to_string(),
                    step,
                    action: rule.spec.action,
                    signal,
                    usage: u,
                    limit: l,
                    dry_run: dry_run || rule.spec.dry_run,
                    unreliable: usage.unreliable,
                };
                let total = rule.measure(usage.slab, usage.percpu, usage.whole);
                match (
                    rule.over(usage.slab, usage.percpu, usage.whole),
                    self.tracks.get_mut(&key),
                ) {
                    (Some(over), None) => {
                        out.push(decision(Step::Act, rule.signal, over));
                        self.tracks.insert(key, Track::new(now));
                    }
                    (Some(over), Some(track)) if track.retry.is_some_and(|r| now >= r.at) => {
                        let step = track.retry.map_or(Step::Act, |r| r.step);
                        let signal = if step == Step::Escalate {
                            libc::SIGKILL
                        } else {
                            rule.signal
                        };
                        out.push(decision(step, signal, over));
                    }
                    (Some(over), Some(track)) => {
                        // At most one escalation, after the grace period.
                        if rule.spec.action == Action::Signal
                            && rule.spec.grace.is_some()
                            && !track.escalated
                            && now.saturating_sub(track.acted_at) >= rule.grace()
                        {
                            track.escalated = true;
                            out.push(decision(Step::Escalate, libc::SIGKILL, over));
                        }
                    }
                    (None, Some(track)) => {
                        if let (Action::Freeze, Some(low)) =
                            (rule.spec.action, rule.spec.thaw_below)
                        {
                            // Thaw only well below the limit, and not before the grace period:
                            // no freeze/thaw flapping.
                            if total < low.0 && now.saturating_sub(track.acted_at) >= rule.grace() {
                                out.push(decision(Step::Thaw, 0, (total, low.0)));
                                self.tracks.remove(&key);
                            }
                        } else if !track.frozen
                            && rule.rearmed(usage.slab, usage.percpu, usage.whole)
                        {
                            self.tracks.remove(&key);
                        }
                    }
                    (None, None) => {}
                }
            }
        }
        // Forget removed cgroups and removed rules.
        self.tracks.retain(|key, _| seen.contains(key));
        out
    }

    /// Learns how an action went: a failure is retried with back-off while the breach lasts.
    pub fn record_outcome(&mut self, d: &Decision, failed: bool, now: Duration) {
        let Some(track) = self.tracks.get_mut(&(d.rule.clone(), d.cgroup.clone())) else {
            return;
        };
        if failed {
            let failures = track.retry.map_or(0, |r| r.failures) + 1;
            let delay = RETRY_FIRST
                .saturating_mul(1 << (failures - 1).min(16))
                .min(RETRY_MAX);
            track.retry = Some(Retry {
                step: d.step,
                at: now + delay,
                failures,
            });
        } else {
            track.retry = None;
            if d.step == Step::Act && d.action == Action::Freeze && !d.dry_run {
                track.frozen = true;
            }
        }
    }

    /// Forgets what a removed rule did; returns the cgroups it froze, to be thawed.
    pub fn forget_rule(&mut self, rule: &str) -> Vec<String> {
        let mut frozen = Vec::new();
        self.tracks.retain(|(r, cgroup), track| {
            if r == rule && track.frozen {
                frozen.push(cgroup.clone());
            }
            r != rule
        });
        frozen
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::rules::{RuleSpec, Size};

    const MIB: u64 = 1 << 20;

    fn rule(path: &str, action: Action, edit: impl FnOnce(&mut RuleSpec)) -> Rule {
        let mut spec = RuleSpec::new(path, 8 * MIB, action);
        edit(&mut spec);
        Rule::new(spec).expect("valid rule")
    }

    fn at(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    fn u(path: &str, mib: u64) -> Usage<'_> {
        Usage {
            path,
            slab: mib * MIB,
            percpu: 0,
            whole: None,
            unreliable: false,
        }
    }

    fn protected() -> Protected {
        Protected::new(&["/system.slice".into()], Some("/user.slice/agent"))
    }

    #[test]
    fn acts_once_per_crossing() {
        let rules = [rule("/a", Action::Notify, |_| {})];
        let mut e = Engine::default();
        let p = protected();
        assert!(
            e.evaluate(&rules, &[u("/a", 7)], &p, at(0.0), false)
                .is_empty()
        );
        let d = e.evaluate(&rules, &[u("/a", 9)], &p, at(1.0), false);
        assert_eq!(d.len(), 1);
        assert_eq!(
            (d[0].step, d[0].usage, d[0].limit),
            (Step::Act, 9 * MIB, 8 * MIB)
        );
        assert!(
            e.evaluate(&rules, &[u("/a", 10)], &p, at(2.0), false)
                .is_empty()
        );
        // Slightly under: not rearmed (hysteresis); well under: a new crossing acts again.
        let just_under = Usage {
            path: "/a",
            slab: 15 * MIB / 2,
            percpu: 0,
            whole: None,
            unreliable: false,
        };
        assert!(
            e.evaluate(&rules, &[just_under], &p, at(3.0), false)
                .is_empty()
        );
        assert!(
            e.evaluate(&rules, &[u("/a", 9)], &p, at(4.0), false)
                .is_empty()
        );
        assert!(
            e.evaluate(&rules, &[u("/a", 5)], &p, at(5.0), false)
                .is_empty()
        );
        assert_eq!(
            e.evaluate(&rules, &[u("/a", 9)], &p, at(6.0), false).len(),
            1
        );
    }

    #[test]
    fn escalates_once_after_grace() {
        let rules = [rule("/a", Action::Signal, |s| s.grace = Some(at(5.0)))];
        let mut e = Engine::default();
        let p = protected();
        let d = e.evaluate(&rules, &[u("/a", 9)], &p, at(0.0), false);
        assert_eq!((d[0].step, d[0].signal), (Step::Act, libc::SIGTERM));
        assert!(
            e.evaluate(&rules, &[u("/a", 9)], &p, at(4.9), false)
                .is_empty()
        );
        let d = e.evaluate(&rules, &[u("/a", 9)], &p, at(5.0), false);
        assert_eq!((d[0].step, d[0].signal), (Step::Escalate, libc::SIGKILL));
        assert!(
            e.evaluate(&rules, &[u("/a", 9)], &p, at(20.0), false)
                .is_empty()
        );
    }

    #[test]
    fn thaws_below_the_watermark_after_grace_only() {
        let rules = [rule("/a", Action::Freeze, |s| {
            s.thaw_below = Some(Size(4 * MIB));
            s.grace = Some(at(2.0));
        })];
        let mut e = Engine::default();
        let p = protected();
        assert_eq!(
            e.evaluate(&rules, &[u("/a", 9)], &p, at(0.0), false)[0].step,
            Step::Act
        );
        // Under the limit but above the watermark: stays frozen.
        assert!(
            e.evaluate(&rules, &[u("/a", 6)], &p, at(3.0), false)
                .is_empty()
        );
        let mut e2 = Engine::default();
        e2.evaluate(&rules, &[u("/a", 9)], &p, at(0.0), false);
        // Below the watermark but within the grace period: stays frozen.
        assert!(
            e2.evaluate(&rules, &[u("/a", 1)], &p, at(1.0), false)
                .is_empty()
        );
        let d = e2.evaluate(&rules, &[u("/a", 1)], &p, at(2.5), false);
        assert_eq!((d[0].step, d[0].limit), (Step::Thaw, 4 * MIB));
        assert_eq!(
            e2.evaluate(&rules, &[u("/a", 9)], &p, at(3.0), false)[0].step,
            Step::Act
        );
    }

    #[test]
    fn globs_skip_protected_cgroups_and_dry_run_is_marked() {
        let rules = [rule("/*", Action::Kill, |_| {})];
        let mut e = Engine::default();
        let p = protected();
        let cgroups = [
            u("/", 100),
            u("/system.slice", 100),
            u("/user.slice", 100),
            u("/b", 100),
        ];
        let d = e.evaluate(&rules, &cgroups, &p, at(0.0), true);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].cgroup, "/b");
        assert!(d[0].dry_run);
    }

    #[test]
    fn failed_actions_are_retried_with_back_off_while_over() {
        let rules = [rule("/a", Action::Freeze, |_| {})];
        let mut e = Engine::default();
        let p = protected();
        let d = e.evaluate(&rules, &[u("/a", 9)], &p, at(0.0), false);
        e.record_outcome(&d[0], true, at(0.0));
        assert!(
            e.evaluate(&rules, &[u("/a", 9)], &p, at(0.1), false)
                .is_empty()
        );
        let d = e.evaluate(&rules, &[u("/a", 9)], &p, at(0.3), false);
        assert_eq!(d[0].step, Step::Act, "retried after 250 ms");
        e.record_outcome(&d[0], true, at(0.3));
        // Second failure: 500 ms later.
        assert!(
            e.evaluate(&rules, &[u("/a", 9)], &p, at(0.6), false)
                .is_empty()
        );
        let d = e.evaluate(&rules, &[u("/a", 9)], &p, at(0.9), false);
        assert_eq!(d.len(), 1);
        e.record_outcome(&d[0], false, at(0.9));
        assert!(
            e.evaluate(&rules, &[u("/a", 9)], &p, at(60.0), false)
                .is_empty(),
            "done: no more retries"
        );
    }

    #[test]
    fn a_removed_freeze_rule_names_what_it_froze() {
        let rules = [rule("/a", Action::Freeze, |_| {})];
        let mut e = Engine::default();
        let p = protected();
        let d = e.evaluate(&rules, &[u("/a", 9)], &p, at(0.0), false);
        e.record_outcome(&d[0], false, at(0.0));
        // Well under the limit: still frozen (nothing thaws it but a watermark or removal).
        assert!(
            e.evaluate(&rules, &[u("/a", 1)], &p, at(1.0), false)
                .is_empty()
        );
        assert_eq!(e.forget_rule("/a"), ["/a"]);
        assert!(e.forget_rule("/a").is_empty());
    }

    #[test]
    fn removed_cgroups_are_forgotten() {
        let rules = [rule("/a", Action::Notify, |_| {})];
        let mut e = Engine::default();
        let p = protected();
        e.evaluate(&rules, &[u("/a", 9)], &p, at(0.0), false);
        e.evaluate(&rules, &[], &p, at(1.0), false);
        assert_eq!(
            e.evaluate(&rules, &[u("/a", 9)], &p, at(2.0), false).len(),
            1
        );
    }
}
