//! Limit rules: what they say (path or glob, sizes, action) and which cgroups they match.
//! Pure.
use std::{fmt, time::Duration};

use globset::{GlobBuilder, GlobMatcher};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use super::signals;
use crate::{
    cgroup_path,
    units::{format_duration, parse_duration, parse_size},
};

/// What to do with a cgroup over its limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Log, metric and audit record only.
    Notify,
    /// A signal to every process of the subtree (SIGKILL after the grace period, if given).
    Signal,
    /// cgroup.freeze (thawed below `thaw_below`, if given).
    Freeze,
    /// cgroup.kill (SIGKILL to every process where cgroup.kill is missing).
    Kill,
}

impl Action {
    pub const NAMES: &'static str = "notify, signal, freeze, kill";

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Notify => "notify",
            Action::Signal => "signal",
            Action::Freeze => "freeze",
            Action::Kill => "kill",
        }
    }
}

impl std::str::FromStr for Action {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "notify" => Ok(Action::Notify),
            "signal" => Ok(Action::Signal),
            "freeze" => Ok(Action::Freeze),
            "kill" => Ok(Action::Kill),
            _ => Err(format!(
                "`{s}` is not an action: use one of {}",
                Action::NAMES
            )),
        }
    }
}

/// A byte count written `8388608`, `8M`, `8MiB`, `512K`, `1G` (powers of 1024).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size: bytes, or a string like \"8M\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v)
                    .map(Size)
                    .map_err(|_| E::custom(format!("{v} is negative: a size cannot be")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                parse_size(v).map(Size).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

mod duration_text {
    use super::*;
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&format_duration(*d)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| parse_duration(&t).map_err(de::Error::custom))
            .transpose()
    }
}

/// One rule, as written in the config file, sent to the API and persisted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// A cgroup path from the cgroup v2 root (`/kubepods.slice/foo`) or a glob whose `*`
    /// matches within one path component (`/kubepods.slice/*/*`).
    pub path: String,
    /// Limit on the recursive slab + percpu bytes (what kmemcg traces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Size>,
    /// Limit on all of the cgroup's kernel memory: what the kernel's memcg charges it
    /// (slab, percpu, kernel stacks, page tables, vmalloc; recursive) plus kmemcg's
    /// unaccounted bytes, which no memcg is charged for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_kernel: Option<Size>,
    /// Limit on the recursive slab bytes alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slab: Option<Size>,
    /// Limit on the recursive percpu bytes alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percpu: Option<Size>,
    pub action: Action,
    /// For `signal`: the signal sent (default SIGTERM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// For `signal`: SIGKILL if still over the limit this long after the signal. Also the
    /// shortest time between two actions on one cgroup.
    #[serde(
        default,
        with = "duration_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub grace: Option<Duration>,
    /// For `freeze`: thaw once usage falls below this low watermark.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thaw_below: Option<Size>,
    /// Decide, log and audit, but touch nothing.
    #[serde(default)]
    pub dry_run: bool,
}

impl RuleSpec {
    /// A rule on `path` with only a total limit: no slab or percpu limit, the action's
    /// defaults, not a dry run.
    pub fn new(path: impl Into<String>, max: u64, action: Action) -> Self {
        Self {
            path: path.into(),
            max: Some(Size(max)),
            max_kernel: None,
            slab: None,
            percpu: None,
            action,
            signal: None,
            grace: None,
            thaw_below: None,
            dry_run: false,
        }
    }
}

/// A checked rule.
#[derive(Clone, Debug)]
pub struct Rule {
    pub spec: RuleSpec,
    pub signal: i32,
    /// For a glob: its matcher, which runs in time linear in the path (no backtracking).
    glob: Option<GlobMatcher>,
}

impl PartialEq for Rule {
    fn eq(&self, other: &Self) -> bool {
        self.spec == other.spec
    }
}

/// Below this fraction of a limit a cgroup counts as back under it (hysteresis).
pub const REARM_FRACTION: f64 = 0.9;
/// Shortest time between two actions on one cgroup when the rule gives no grace.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

impl Rule {
    /// Checks a spec: a normalised absolute path, sane sizes, a known signal.
    pub fn new(mut spec: RuleSpec) -> Result<Rule, String> {
        spec.path = cgroup_path::normalize(&spec.path)?;
        if spec.max.is_none() && spec.max_kernel.is_none() {
            return Err(
                "a limit needs --max (slab + percpu) or --max-kernel (all kernel memory)".into(),
            );
        }
        if [spec.max, spec.max_kernel, spec.slab, spec.percpu].contains(&Some(Size(0))) {
            return Err("a limit must be more than 0 bytes".into());
        }
        if let Some(low) = spec.thaw_below {
            if spec.action != Action::Freeze {
                return Err(
                    "a thaw watermark (thaw_below) only applies to the freeze action".into(),
                );
            }
            let limit = spec.max.or(spec.max_kernel).unwrap_or(Size(0));
            if low >= limit {
                return Err(format!(
                    "the thaw watermark ({} bytes) must be below the limit ({} bytes)",
                    low.0, limit.0
                ));
            }
        }
        let signal = match (&spec.signal, spec.action) {
            (Some(s), Action::Signal) => signals::parse(s)?,
            (Some(_), a) => {
                return Err(format!(
                    "a signal only applies to the signal action, not {}",
                    a.as_str()
                ));
            }
            (None, _) => libc::SIGTERM,
        };
        let glob = if is_glob(&spec.path) {
            Some(glob_matcher(&spec.path)?)
        } else {
            None
        };
        Ok(Rule { spec, signal, glob })
    }

    pub fn is_glob(&self) -> bool {
        self.glob.is_some()
    }

    pub fn matches(&self, path: &str) -> bool {
        match &self.glob {
            Some(glob) => glob.is_match(path),
            None => self.spec.path == path,
        }
    }

    /// The limit shown beside the rule: `max`, else `max_kernel`.
    pub fn limit(&self) -> u64 {
        self.spec.max.or(self.spec.max_kernel).map_or(0, |s| s.0)
    }

    /// What [`Rule::limit`] is compared with: slab + percpu, else all kernel memory (`whole`,
    /// None where the kernel keeps no figure).
    pub fn measure(&self, slab: u64, percpu: u64, whole: Option<u64>) -> u64 {
        match self.spec.max {
            Some(_) => slab + percpu,
            None => whole.unwrap_or(0),
        }
    }

    /// The usage is over one of the limits: (usage, limit) of the one crossed, else None.
    /// `whole` is all the cgroup's kernel memory, for `max_kernel`.
    pub fn over(&self, slab: u64, percpu: u64, whole: Option<u64>) -> Option<(u64, u64)> {
        let total = slab + percpu;
        if let Some(l) = self.spec.max
            && total > l.0
        {
            return Some((total, l.0));
        }
        if let (Some(l), Some(whole)) = (self.spec.max_kernel, whole)
            && whole > l.0
        {
            return Some((whole, l.0));
        }
        if let Some(l) = self.spec.slab
            && slab > l.0
        {
            return Some((slab, l.0));
        }
        if let Some(l) = self.spec.percpu
            && percpu > l.0
        {
            return Some((percpu, l.0));
        }
        None
    }

    /// What may still be allocated before the first of the limits is crossed (negative: over
    /// one). Limits on `whole` count when the kernel keeps that figure.
    pub fn headroom(&self, slab: u64, percpu: u64, whole: Option<u64>) -> i64 {
        let left = |limit: Option<Size>, usage: Option<u64>| match (limit, usage) {
            (Some(l), Some(u)) => l.0 as i64 - u as i64,
            _ => i64::MAX,
        };
        left(self.spec.max, Some(slab + percpu))
            .min(left(self.spec.max_kernel, whole))
            .min(left(self.spec.slab, Some(slab)))
            .min(left(self.spec.percpu, Some(percpu)))
    }

    /// Back under the limits with a margin: a new crossing is a new event.
    pub fn rearmed(&self, slab: u64, percpu: u64, whole: Option<u64>) -> bool {
        let under = |usage: u64, limit: u64| (usage as f64) < limit as f64 * REARM_FRACTION;
        self.spec.max.is_none_or(|l| under(slab + percpu, l.0))
            && self
                .spec
                .max_kernel
                .is_none_or(|l| under(whole.unwrap_or(0), l.0))
            && self.spec.slab.is_none_or(|l| under(slab, l.0))
            && self.spec.percpu.is_none_or(|l| under(percpu, l.0))
    }

    pub fn grace(&self) -> Duration {
        self.spec.grace.unwrap_or(DEFAULT_GRACE)
    }
}

/// Whether a path is a glob (`*`, `?`, `[...]`, `{a,b}`), for rules and `limits.protected`.
pub(crate) fn is_glob(path: &str) -> bool {
    path.contains(['*', '?', '[', '{'])
}

/// `*`, `?` and `[...]` never cross a `/`, so `/kubepods/*` matches children, not grandchildren.
pub(crate) fn glob_matcher(pattern: &str) -> Result<GlobMatcher, String> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| format!("`{pattern}` is not a valid glob: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn spec(path: &str, max: u64, action: Action) -> RuleSpec {
        RuleSpec::new(path, max, action)
    }

    #[test]
    fn actions_parse_with_a_clear_error() {
        assert_eq!("freeze".parse::<Action>(), Ok(Action::Freeze));
        let e = "explode".parse::<Action>().expect_err("unknown");
        assert!(e.contains("notify, signal, freeze, kill"), "{e}");
    }

    fn glob_match(pattern: &str, path: &str) -> bool {
        Rule::new(spec(pattern, 1, Action::Notify))
            .expect("a valid glob")
            .matches(path)
    }

    #[test]
    fn globs_stay_within_a_component() {
        assert!(glob_match("/kubepods.slice/*/*", "/kubepods.slice/a/b"));
        assert!(!glob_match("/kubepods.slice/*/*", "/kubepods.slice/a"));
        assert!(!glob_match("/kubepods.slice/*/*", "/kubepods.slice/a/b/c"));
        assert!(glob_match("/k*-test-?", "/kmemcg-test-1"));
        assert!(!glob_match("/a*", "/b"));
    }

    #[test]
    fn pathological_globs_match_in_linear_time() {
        // A backtracking matcher takes exponential time on this pattern.
        let pattern = format!("/cg/{}x", "*".repeat(60));
        let path = format!("/cg/{}", "a".repeat(4000));
        let started = std::time::Instant::now();
        for _ in 0..100 {
            assert!(!glob_match(&pattern, &path));
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn bad_globs_are_refused() {
        let e = Rule::new(spec("/a/[b", 1, Action::Notify)).expect_err("unclosed class");
        assert!(e.contains("not a valid glob"), "{e}");
    }

    #[test]
    fn rules_are_checked() {
        let r = Rule::new(spec("kmemcg-x/", 10, Action::Freeze)).expect("from the root");
        assert_eq!(r.spec.path, "/kmemcg-x");
        let r = Rule::new(spec(" ", 10, Action::Freeze)).expect_err("empty");
        assert!(r.contains("cgroup root"), "{r}");
        let r = Rule::new(spec("/a/../b", 10, Action::Freeze)).expect_err("dots");
        assert!(r.contains(".."), "{r}");
        let mut s = spec("/a//b/", 10, Action::Kill);
        s.signal = Some("SIGTERM".into());
        assert!(Rule::new(s.clone()).is_err());
        s.action = Action::Signal;
        let r = Rule::new(s).expect("valid");
        assert_eq!(r.spec.path, "/a/b");
        assert!(!r.is_glob() && r.matches("/a/b") && !r.matches("/a/b/c"));
        let mut s = spec("/a", 10, Action::Freeze);
        s.thaw_below = Some(Size(20));
        assert!(Rule::new(s).is_err());
    }

    #[test]
    fn over_and_rearm() {
        let mut s = spec("/a", 100, Action::Notify);
        s.slab = Some(Size(50));
        let r = Rule::new(s).expect("valid");
        assert_eq!(r.over(60, 50, None), Some((110, 100)));
        assert_eq!(r.over(51, 0, None), Some((51, 50)));
        assert_eq!(r.over(40, 40, None), None);
        assert!(!r.rearmed(46, 40, None));
        assert!(r.rearmed(40, 40, None));
    }

    #[test]
    fn headroom_is_the_distance_to_the_nearest_limit() {
        let mut s = spec("/a", 100, Action::Freeze);
        s.slab = Some(Size(50));
        let r = Rule::new(s.clone()).expect("valid");
        assert_eq!(r.headroom(10, 20, None), 40, "slab 40 below its 50");
        assert_eq!(r.headroom(10, 85, None), 5, "slab + percpu 5 below 100");
        assert_eq!(r.headroom(60, 50, None), -10);
        s.max = None;
        s.slab = None;
        s.max_kernel = Some(Size(1000));
        let r = Rule::new(s).expect("valid");
        assert_eq!(r.headroom(0, 0, Some(900)), 100);
        assert_eq!(r.headroom(0, 0, None), i64::MAX, "no kernel figure");
    }

    #[test]
    fn kernel_limits_count_all_kernel_memory() {
        let mut s = spec("/a", 100, Action::Freeze);
        s.max = None;
        s.max_kernel = Some(Size(1000));
        let r = Rule::new(s.clone()).expect("valid");
        assert_eq!(r.over(500, 0, Some(900)), None);
        assert_eq!(r.over(500, 0, Some(1001)), Some((1001, 1000)));
        assert_eq!(
            r.over(5000, 0, None),
            None,
            "no kernel figure: nothing to compare"
        );
        assert_eq!((r.limit(), r.measure(1, 2, Some(700))), (1000, 700));
        assert!(r.rearmed(0, 0, Some(800)) && !r.rearmed(0, 0, Some(950)));
        s.max_kernel = None;
        assert!(Rule::new(s).expect_err("no limit").contains("--max-kernel"));
    }

    #[test]
    fn specs_read_sizes_and_durations_as_text() {
        let s: RuleSpec = toml::from_str(
            "path = \"/a\"\nmax = \"8M\"\naction = \"signal\"\nsignal = \"SIGINT\"\ngrace = \"5s\"\n",
        )
        .expect("valid");
        assert_eq!(s.max, Some(Size(8 << 20)));
        assert_eq!(s.grace, Some(Duration::from_secs(5)));
        let json = serde_json::to_string(&s).expect("serializes");
        let back: RuleSpec = serde_json::from_str(&json).expect("reads back");
        assert_eq!(back, s);
        let e = toml::from_str::<RuleSpec>("path = \"/a\"\nmax = \"8X\"\naction = \"kill\"\n")
            .expect_err("bad size")
            .to_string();
        assert!(e.contains("not a size"), "{e}");
    }
}
