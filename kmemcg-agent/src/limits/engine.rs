//! Decisions: which cgroups to act on after a sample, with hysteresis and rate limits. Pure:
//! the clock is passed in, nothing is touched here. Cgroups are told apart by their id, so a
//! cgroup re-created at the same path is judged afresh; whether a cgroup is frozen by kmemcg,
//! and by which rules, is [`Freezes`]'s to say.
use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use super::{
    frozen::Freezes,
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
    /// The rule lets go of a cgroup it holds frozen (below its low watermark): thawed unless
    /// another rule holds it too.
    Thaw,
    /// Freeze again a cgroup kmemcg froze that someone else thawed while it is over its limit.
    Refreeze,
    /// No rule holds it frozen any more, without a thaw: someone else thawed it while it is
    /// under its limits.
    Release,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The rule's path (its key).
    pub rule: String,
    /// The cgroup's id and its path at this sample.
    pub cgroup_id: u64,
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
    /// cgroup v2 id.
    pub id: u64,
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
            retry: None,
        }
    }
}

/// (rule path, cgroup id).
type Key = (String, u64);

#[derive(Debug, Default)]
pub struct Engine {
    tracks: HashMap<Key, Track>,
}

impl Engine {
    /// Decisions for this sample. `now` is any monotonic clock; `dry_run` is the global switch.
    pub fn evaluate(
        &mut self,
        rules: &[Rule],
        cgroups: &[Usage],
        freezes: &Freezes,
        protected: &Protected,
        now: Duration,
        dry_run: bool,
    ) -> Vec<Decision> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        // Cgroups someone else thawed that a holding rule keeps: over its limit, or not yet
        // back under it (the hysteresis of a new crossing: no release for a dip of a few bytes).
        let mut kept = HashSet::new();
        for rule in rules {
            for usage in cgroups.iter().filter(|u| rule.matches(u.path)) {
                // Globs skip protected cgroups; literal rules on them are refused earlier, and
                // skipped here too (the protected set can change, e.g. the agent moved).
                if protected.covers(usage.path) {
                    continue;
                }
                let key = (rule.spec.path.clone(), usage.id);
                seen.insert(key.clone());
                let decision = |step, signal, (u, l): (u64, u64)| Decision {
                    rule: rule.spec.path.clone(),
                    cgroup_id: usage.id,
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
                let over = rule.over(usage.slab, usage.percpu, usage.whole);
                if let Some(held) = freezes
                    .get(usage.id)
                    .filter(|_| rule.spec.action == Action::Freeze)
                    && let Some(&since) = held.rules.get(&rule.spec.path)
                {
                    // Frozen by kmemcg, this rule among those holding it.
                    match (over, held.thawed) {
                        (Some(over), true) => {
                            if kept.insert(usage.id) && now >= held.refreeze_at {
                                out.push(decision(Step::Refreeze, 0, over));
                            }
                        }
                        (None, true) => {
                            if !rule.rearmed(usage.slab, usage.percpu, usage.whole) {
                                kept.insert(usage.id);
                            }
                        }
                        (_, false) => {
                            // Thaw only well below the limit, and not before the grace
                            // period: no freeze/thaw flapping.
                            if let Some(low) = rule.spec.thaw_below
                                && over.is_none()
                                && total < low.0
                                && now.saturating_sub(since) >= rule.grace()
                            {
                                out.push(decision(Step::Thaw, 0, (total, low.0)));
                                self.tracks.remove(&key);
                            }
                        }
                    }
                    continue;
                }
                match (over, self.tracks.get_mut(&key)) {
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
                    (None, Some(_)) => {
                        if rule.rearmed(usage.slab, usage.percpu, usage.whole) {
                            self.tracks.remove(&key);
                        }
                    }
                    (None, None) => {}
                }
            }
        }
        // Thawed by someone else and under every limit of the rules holding it: let go of it,
        // and judge it afresh from now on.
        for usage in cgroups {
            if let Some(held) = freezes.get(usage.id)
                && held.thawed
                && !kept.contains(&usage.id)
            {
                for rule in held.rules.keys() {
                    self.tracks.remove(&(rule.clone(), usage.id));
                }
                out.push(Decision {
                    rule: held.rules.keys().next().cloned().unwrap_or_default(),
                    cgroup_id: usage.id,
                    cgroup: usage.path.to_string(),
                    step: Step::Release,
                    action: Action::Freeze,
                    signal: 0,
                    usage: usage.slab + usage.percpu,
                    limit: 0,
                    dry_run: false,
                    unreliable: usage.unreliable,
                });
            }
        }
        // Forget removed cgroups and removed rules.
        self.tracks.retain(|key, _| seen.contains(key));
        out
    }

    /// Learns how an action went: a failure is retried with back-off while the breach lasts.
    pub fn record_outcome(&mut self, d: &Decision, failed: bool, now: Duration) {
        let Some(track) = self.tracks.get_mut(&(d.rule.clone(), d.cgroup_id)) else {
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
        }
    }

    /// Forgets what a removed rule decided.
    pub fn forget_rule(&mut self, rule: &str) {
        self.tracks.retain(|(r, _), _| r != rule);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::frozen::Freezes;
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
            id: id(path),
            path,
            slab: mib * MIB,
            percpu: 0,
            whole: None,
            unreliable: false,
        }
    }

    /// A cgroup id per path (a re-created cgroup gets another: see [`recreated`]).
    fn id(path: &str) -> u64 {
        path.bytes()
            .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
    }

    fn recreated(usage: Usage<'_>) -> Usage<'_> {
        Usage {
            id: usage.id + 1,
            ..usage
        }
    }

    /// What the enforcer tells [`Freezes`] after a decision carried out.
    fn done(f: &mut Freezes, d: &Decision, now: Duration) {
        match d.step {
            Step::Act if d.action == Action::Freeze => {
                f.hold(d.cgroup_id, &d.cgroup, &d.rule, now, 0.0)
            }
            Step::Thaw => {
                f.release(d.cgroup_id, &d.rule);
            }
            Step::Refreeze => {
                f.refreeze_tried(d.cgroup_id, true, now);
            }
            Step::Release => {
                f.forget(d.cgroup_id);
            }
            _ => {}
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
        let f = Freezes::default();
        assert!(
            e.evaluate(&rules, &[u("/a", 7)], &f, &p, at(0.0), false)
                .is_empty()
        );
        let d = e.evaluate(&rules, &[u("/a", 9)], &f, &p, at(1.0), false);
        assert_eq!(d.len(), 1);
        assert_eq!(
            (d[0].step, d[0].usage, d[0].limit),
            (Step::Act, 9 * MIB, 8 * MIB)
        );
        assert!(
            e.evaluate(&rules, &[u("/a", 10)], &f, &p, at(2.0), false)
                .is_empty()
        );
        // Slightly under: not rearmed (hysteresis); well under: a new crossing acts again.
        let just_under = Usage {
            id: id("/a"),
            path: "/a",
            slab: 15 * MIB / 2,
            percpu: 0,
            whole: None,
            unreliable: false,
        };
        assert!(
            e.evaluate(&rules, &[just_under], &f, &p, at(3.0), false)
                .is_empty()
        );
        assert!(
            e.evaluate(&rules, &[u("/a", 9)], &f, &p, at(4.0), false)
                .is_empty()
        );
        assert!(
            e.evaluate(&rules, &[u("/a", 5)], &f, &p, at(5.0), false)
                .is_empty()
        );
        assert_eq!(
            e.evaluate(&rules, &[u("/a", 9)], &f, &p, at(6.0), false)
                .len(),
            1
        );
    }

    #[test]
    fn escalates_once_after_grace() {
        let rules = [rule("/a", Action::Signal, |s| s.grace = Some(at(5.0)))];
        let mut e = Engine::default();
        let p = protected();
        let f = Freezes::default();
        let d = e.evaluate(&rules, &[u("/a", 9)], &f, &p, at(0.0), false);
        assert_eq!((d[0].step, d[0].signal), (Step::Act, libc::SIGTERM));
        assert!(
            e.evaluate(&rules, &[u("/a", 9)], &f, &p, at(4.9), false)
                .is_empty()
        );
        let d = e.evaluate(&rules, &[u("/a", 9)], &f, &p, at(5.0), false);
        assert_eq!((d[0].step, d[0].signal), (Step::Escalate, libc::SIGKILL));
        assert!(
            e.evaluate(&rules, &[u("/a", 9)], &f, &p, at(20.0), false)
                .is_empty()
        );
    }

    #[test]
    fn thaws_below_the_watermark_after_grace_only() {
        let rules = [rule("/a", Action::Freeze, |s| {
            s.thaw_below = Some(Size(4 * MIB));
            s.grace = Some(at(2.0));
        })];
        let p = protected();
        let run = |e: &mut Engine, f: &mut Freezes, mib, now| {
            let d = e.evaluate(&rules, &[u("/a", mib)], f, &p, at(now), false);
            for d in &d {
                done(f, d, at(now));
            }
            d
        };
        let (mut e, mut f) = (Engine::default(), Freezes::default());
        assert_eq!(run(&mut e, &mut f, 9, 0.0)[0].step, Step::Act);
        // Under the limit but above the watermark: stays frozen.
        assert!(run(&mut e, &mut f, 6, 3.0).is_empty());
        let (mut e, mut f) = (Engine::default(), Freezes::default());
        run(&mut e, &mut f, 9, 0.0);
        // Below the watermark but within the grace period: stays frozen.
        assert!(run(&mut e, &mut f, 1, 1.0).is_empty());
        let d = run(&mut e, &mut f, 1, 2.5);
        assert_eq!((d[0].step, d[0].limit), (Step::Thaw, 4 * MIB));
        assert!(f.get(id("/a")).is_none());
        assert_eq!(run(&mut e, &mut f, 9, 3.0)[0].step, Step::Act);
    }

    #[test]
    fn overlapping_freeze_rules_each_hold_the_cgroup() {
        let rules = [
            rule("/a", Action::Freeze, |s| s.thaw_below = Some(Size(4 * MIB))),
            rule("/a*", Action::Freeze, |_| {}),
        ];
        let (mut e, mut f, p) = (Engine::default(), Freezes::default(), protected());
        let d = e.evaluate(&rules, &[u("/a", 9)], &f, &p, at(0.0), false);
        assert_eq!(d.len(), 2, "{d:?}");
        for d in &d {
            done(&mut f, d, at(0.0));
        }
        // Only the first rule lets go below its watermark: the second still holds it.
        let d = e.evaluate(&rules, &[u("/a", 1)], &f, &p, at(10.0), false);
        assert_eq!((d.len(), d[0].rule.as_str()), (1, "/a"));
        done(&mut f, &d[0], at(10.0));
        let held = f.get(id("/a")).expect("still held");
        assert_eq!(held.rules.keys().collect::<Vec<_>>(), ["/a*"]);
        assert!(
            e.evaluate(&rules, &[u("/a", 1)], &f, &p, at(11.0), false)
                .is_empty()
        );
        assert!(
            f.get(id("/a")).is_some(),
            "held by /a* until that rule goes"
        );
    }

    #[test]
    fn a_re_created_cgroup_is_judged_afresh() {
        let rules = [rule("/a", Action::Freeze, |_| {})];
        let (mut e, mut f, p) = (Engine::default(), Freezes::default(), protected());
        let d = e.evaluate(&rules, &[u("/a", 9)], &f, &p, at(0.0), false);
        done(&mut f, &d[0], at(0.0));
        // Same path, another cgroup, and no sample in between.
        let d = e.evaluate(&rules, &[recreated(u("/a", 9))], &f, &p, at(1.0), false);
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].step, d[0].cgroup_id), (Step::Act, id("/a") + 1));
    }

    #[test]
    fn thawed_by_someone_else_over_the_limit_is_frozen_again_with_back_off() {
        let rules = [rule("/a", Action::Freeze, |_| {})];
        let (mut e, mut f, p) = (Engine::default(), Freezes::default(), protected());
        let d = e.evaluate(&rules, &[u("/a", 9)], &f, &p, at(0.0), false);
        done(&mut f, &d[0], at(0.0));
        let a = id("/a");
        f.observe(a, false);
        let d = e.evaluate(&rules, &[u("/a", 10)], &f, &p, at(5.0), false);
        assert_eq!(d[0].step, Step::Refreeze);
        done(&mut f, &d[0], at(5.0));
        // Thawed again at once: not frozen again before the back-off (1 s).
        f.observe(a, false);
        assert!(
            e.evaluate(&rules, &[u("/a", 11)], &f, &p, at(5.5), false)
                .is_empty()
        );
        let d = e.evaluate(&rules, &[u("/a", 12)], &f, &p, at(6.0), false);
        assert_eq!(d[0].step, Step::Refreeze);
        done(&mut f, &d[0], at(6.0));
        // Thawed just under its limit: still held, frozen again once over it.
        f.observe(a, false);
        let just_under = Usage {
            slab: 15 * MIB / 2,
            ..u("/a", 0)
        };
        assert!(
            e.evaluate(&rules, &[just_under], &f, &p, at(8.0), false)
                .is_empty()
        );
        // Thawed well under its limit: let go, and judged afresh.
        let d = e.evaluate(&rules, &[u("/a", 2)], &f, &p, at(9.0), false);
        assert_eq!(d[0].step, Step::Release);
        done(&mut f, &d[0], at(9.0));
        assert!(f.get(a).is_none());
        let d = e.evaluate(&rules, &[u("/a", 9)], &f, &p, at(10.0), false);
        assert_eq!(d[0].step, Step::Act);
    }

    #[test]
    fn globs_skip_protected_cgroups_and_dry_run_is_marked() {
        let rules = [rule("/*", Action::Kill, |_| {})];
        let mut e = Engine::default();
        let p = protected();
        let f = Freezes::default();
        let cgroups = [
            u("/", 100),
            u("/system.slice", 100),
            u("/user.slice", 100),
            u("/b", 100),
        ];
        let d = e.evaluate(&rules, &cgroups, &f, &p, at(0.0), true);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].cgroup, "/b");
        assert!(d[0].dry_run);
    }

    #[test]
    fn failed_actions_are_retried_with_back_off_while_over() {
        let rules = [rule("/a", Action::Freeze, |_| {})];
        let mut e = Engine::default();
        let p = protected();
        let f = Freezes::default();
        let d = e.evaluate(&rules, &[u("/a", 9)], &f, &p, at(0.0), false);
        e.record_outcome(&d[0], true, at(0.0));
        assert!(
            e.evaluate(&rules, &[u("/a", 9)], &f, &p, at(0.1), false)
                .is_empty()
        );
        let d = e.evaluate(&rules, &[u("/a", 9)], &f, &p, at(0.3), false);
        assert_eq!(d[0].step, Step::Act, "retried after 250 ms");
        e.record_outcome(&d[0], true, at(0.3));
        // Second failure: 500 ms later.
        assert!(
            e.evaluate(&rules, &[u("/a", 9)], &f, &p, at(0.6), false)
                .is_empty()
        );
        let d = e.evaluate(&rules, &[u("/a", 9)], &f, &p, at(0.9), false);
        assert_eq!(d.len(), 1);
        e.record_outcome(&d[0], false, at(0.9));
        assert!(
            e.evaluate(&rules, &[u("/a", 9)], &f, &p, at(60.0), false)
                .is_empty(),
            "done: no more retries"
        );
    }

    #[test]
    fn a_frozen_cgroup_stays_frozen_well_under_the_limit() {
        let rules = [rule("/a", Action::Freeze, |_| {})];
        let (mut e, mut f, p) = (Engine::default(), Freezes::default(), protected());
        let d = e.evaluate(&rules, &[u("/a", 9)], &f, &p, at(0.0), false);
        done(&mut f, &d[0], at(0.0));
        // Nothing thaws it but a watermark or the rule's removal.
        assert!(
            e.evaluate(&rules, &[u("/a", 1)], &f, &p, at(1.0), false)
                .is_empty()
        );
        assert_eq!(f.release_rule("/a"), [(id("/a"), "/a".to_string())]);
        e.forget_rule("/a");
        assert_eq!(
            e.evaluate(&rules, &[u("/a", 9)], &f, &p, at(2.0), false)
                .len(),
            1
        );
    }

    #[test]
    fn removed_cgroups_are_forgotten() {
        let rules = [rule("/a", Action::Notify, |_| {})];
        let mut e = Engine::default();
        let p = protected();
        let f = Freezes::default();
        e.evaluate(&rules, &[u("/a", 9)], &f, &p, at(0.0), false);
        e.evaluate(&rules, &[], &f, &p, at(1.0), false);
        assert_eq!(
            e.evaluate(&rules, &[u("/a", 9)], &f, &p, at(2.0), false)
                .len(),
            1
        );
    }
}
