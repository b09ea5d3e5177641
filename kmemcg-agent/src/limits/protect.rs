//! Protected cgroups: never acted on. A cgroup is protected when it is a protected path or an
//! ancestor of one (freezing or killing an ancestor reaches its descendants): the root, the
//! agent's own cgroup and its ancestors, `/init.scope`, `/system.slice` and the configured list,
//! whose entries may be globs matched as the rules' are (`/kubepods.slice/*/critical-*`).

use std::path::Path;

use globset::GlobMatcher;

use super::rules::{glob_matcher, is_glob};

/// Protected by default, besides the root and the agent's own cgroup.
pub const DEFAULT_PROTECTED: &[&str] = &["/init.scope", "/system.slice"];

#[derive(Clone, Debug, Default)]
pub struct Protected {
    paths: Vec<String>,
    globs: Vec<ProtectedGlob>,
    agent: Option<String>,
}

impl PartialEq for Protected {
    fn eq(&self, other: &Self) -> bool {
        self.list() == other.list()
    }
}

/// A glob of `limits.protected`: what it matches is protected, and so are the ancestors of
/// what it may match (their components match its leading ones).
#[derive(Clone, Debug)]
struct ProtectedGlob {
    pattern: String,
    whole: GlobMatcher,
    /// One matcher per component of the pattern; None for `**` (any depth from there).
    components: Vec<Option<GlobMatcher>>,
}

impl ProtectedGlob {
    fn new(pattern: &str) -> Result<Self, String> {
        let whole = glob_matcher(pattern)?;
        let components = pattern
            .split('/')
            .filter(|c| !c.is_empty())
            .map(|c| {
                if c == "**" {
                    return Ok(None);
                }
                glob_matcher(c).map(Some).map_err(|_| {
                    format!(
                        "`{pattern}`: each component of a protected glob must be a glob of its \
                         own (no `/` inside `{{...}}` or `[...]`)"
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            pattern: pattern.to_string(),
            whole,
            components,
        })
    }

    fn matches(&self, path: &str) -> bool {
        self.whole.is_match(path)
    }

    /// `path` (not the root) is an ancestor of a cgroup this glob may match.
    fn may_contain_a_match(&self, path: &str) -> bool {
        let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        for (i, part) in parts.iter().enumerate() {
            match self.components.get(i) {
                None => return false,
                Some(None) => return true,
                Some(Some(m)) if !m.is_match(part) => return false,
                Some(Some(_)) => {}
            }
        }
        parts.len() < self.components.len()
    }
}

/// Checks the configured list: each glob must compile.
pub fn check_list(extra: &[String]) -> Result<(), String> {
    for p in extra.iter().filter(|p| is_glob(p)) {
        ProtectedGlob::new(p)?;
    }
    Ok(())
}

impl Protected {
    /// `extra`: the configured list (normalised paths or globs, checked by [`check_list`]; a
    /// glob that does not compile is skipped with an error logged); `agent`: the agent's own
    /// cgroup.
    pub fn new(extra: &[String], agent: Option<&str>) -> Self {
        let mut paths: Vec<String> = DEFAULT_PROTECTED.iter().map(|p| p.to_string()).collect();
        let mut globs = Vec::new();
        for p in extra {
            if is_glob(p) {
                match ProtectedGlob::new(p) {
                    Ok(g) => globs.push(g),
                    Err(e) => tracing::error!(glob = %p, error = %e, "protected glob ignored"),
                }
            } else {
                paths.push(p.clone());
            }
        }
        Self {
            paths,
            globs,
            agent: agent.map(str::to_string),
        }
    }

    /// Follows the agent if it was moved to another cgroup since (`root`: the cgroup v2
    /// mount).
    pub fn refresh_agent(&mut self, root: &Path) {
        let pid = std::process::id();
        if let Some(agent) = &self.agent
            && lists_pid(root, agent, pid)
        {
            return;
        }
        if let Some(now) = Self::own_cgroup(Some(root)) {
            self.agent = Some(now);
        }
    }

    /// The agent's own cgroup, as a path from the root of the cgroup v2 mount it sees.
    ///
    /// /proc/self/cgroup (the `0::` line) names it relative to the agent's cgroup namespace:
    /// in a private one (a container's default) it says `/` while the mounted hierarchy is the
    /// host's. So the path is checked against the mount (its cgroup.procs must list this
    /// process) and, where it does not match, found by walking the mount for the cgroup that
    /// does: cgroup.procs shows pids as seen from the reader's PID namespace, so only this
    /// process's cgroup lists its own pid.
    /// `root`: the cgroup v2 mount, when there is one.
    pub fn own_cgroup(root: Option<&Path>) -> Option<String> {
        let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let hint = text
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .map(|p| p.trim().to_string());
        let Some(root) = root else {
            return hint;
        };
        let pid = std::process::id();
        if let Some(hint) = &hint
            && lists_pid(root, hint, pid)
        {
            return Some(hint.clone());
        }
        find_cgroup_of(root, pid).or(hint)
    }

    /// Why `path` must not be acted on, if it must not.
    pub fn reason(&self, path: &str) -> Option<String> {
        if path == "/" {
            return Some("it is the root cgroup, which holds every process of the host".into());
        }
        let under = |p: &str| p == path || p.starts_with(&format!("{path}/"));
        if let Some(agent) = &self.agent
            && under(agent)
        {
            return Some(format!(
                "it holds the kmemcg agent itself (the agent runs in {agent})"
            ));
        }
        if let Some(p) = self.paths.iter().find(|p| under(p)) {
            return Some(if p == path {
                format!("it is a protected cgroup ({p})")
            } else {
                format!("it contains the protected cgroup {p}")
            });
        }
        if let Some(g) = self.globs.iter().find(|g| g.matches(path)) {
            return Some(format!("it is protected by the glob {}", g.pattern));
        }
        self.globs
            .iter()
            .find(|g| g.may_contain_a_match(path))
            .map(|g| format!("it may contain cgroups protected by the glob {}", g.pattern))
    }

    /// Refuses a literal rule on a protected cgroup. A glob may also match unprotected
    /// cgroups: its protected matches are skipped when it is evaluated.
    pub fn check_rule(&self, rule: &super::Rule) -> Result<(), super::Error> {
        if rule.is_glob() {
            return Ok(());
        }
        match self.reason(&rule.spec.path) {
            Some(reason) => Err(super::Error::Protected {
                path: rule.spec.path.clone(),
                reason,
            }),
            None => Ok(()),
        }
    }

    pub fn covers(&self, path: &str) -> bool {
        self.reason(path).is_some()
    }

    pub fn list(&self) -> Vec<String> {
        let mut all = vec!["/".to_string()];
        all.extend(self.paths.iter().cloned());
        all.extend(self.globs.iter().map(|g| g.pattern.clone()));
        all.extend(self.agent.clone());
        all
    }
}

/// Whether the cgroup at `path` (from `root`) lists `pid` in its cgroup.procs.
fn lists_pid(root: &Path, path: &str, pid: u32) -> bool {
    let dir = root.join(path.trim_start_matches('/'));
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .is_ok_and(|procs| procs.lines().any(|l| l.trim().parse() == Ok(pid)))
}

/// The path (from `root`) of the cgroup whose cgroup.procs lists `pid`.
fn find_cgroup_of(root: &Path, pid: u32) -> Option<String> {
    let mut stack = vec![String::new()];
    while let Some(path) = stack.pop() {
        let shown = if path.is_empty() { "/" } else { path.as_str() };
        if lists_pid(root, shown, pid) {
            return Some(shown.to_string());
        }
        let Ok(entries) = std::fs::read_dir(root.join(path.trim_start_matches('/'))) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(format!("{path}/{}", entry.file_name().to_string_lossy()));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_agent_ancestors_and_defaults_are_protected() {
        let p = Protected::new(
            &["/critical".into()],
            Some("/user.slice/user-0.slice/session-1.scope"),
        );
        assert!(p.reason("/").expect("root").contains("root cgroup"));
        assert!(p.reason("/user.slice").expect("ancestor").contains("agent"));
        assert!(p.covers("/user.slice/user-0.slice/session-1.scope"));
        assert!(p.covers("/system.slice"));
        assert!(p.covers("/init.scope"));
        assert!(p.covers("/critical"));
        assert!(!p.covers("/system.slice/foo.service"));
        assert!(!p.covers("/user.slice/user-0.slice/session-2.scope"));
        assert!(!p.covers("/kmemcg-test-a"));
    }

    #[test]
    fn protected_globs_protect_their_matches_and_ancestors() {
        let p = Protected::new(
            &["/kubepods.slice/*/critical-*".into(), "/db/**".into()],
            None,
        );
        assert!(
            p.reason("/kubepods.slice/pod1/critical-a")
                .expect("a match")
                .contains("glob /kubepods.slice/*/critical-*")
        );
        assert!(p.covers("/kubepods.slice/pod1"), "an ancestor of a match");
        assert!(p.covers("/kubepods.slice"), "an ancestor of a match");
        assert!(!p.covers("/kubepods.slice/pod1/web"));
        assert!(
            !p.covers("/kubepods.slice/pod1/critical-a/sub"),
            "below a match"
        );
        assert!(!p.covers("/other.slice"));
        assert!(p.covers("/db") && p.covers("/db/a/b/c"));
        assert!(!p.covers("/dbx"));
        assert!(check_list(&["/a/{b,c}".into(), "/x/*".into()]).is_ok());
        let e = check_list(&["/a/{b/c,d}".into()]).expect_err("a / inside braces");
        assert!(e.contains("component"), "{e}");
        assert!(check_list(&["/a/[b".into()]).is_err());
    }

    /// A hierarchy as a private cgroup namespace hides it: the agent's cgroup is found by the
    /// pid its cgroup.procs lists, whatever /proc/self/cgroup says.
    #[test]
    fn the_agents_cgroup_is_found_by_its_pid() {
        let root = std::env::temp_dir().join(format!("kmemcg-protect-{}", std::process::id()));
        let pod = root.join("kubepods/pod1/c1");
        let other = root.join("kubepods/pod2/c2");
        for dir in [&root, &pod, &other] {
            std::fs::create_dir_all(dir).expect("scratch hierarchy");
        }
        std::fs::write(root.join("cgroup.procs"), "1\n").expect("cgroup.procs");
        std::fs::write(other.join("cgroup.procs"), "0\n0\n").expect("cgroup.procs");
        std::fs::write(pod.join("cgroup.procs"), "0\n4242\n").expect("cgroup.procs");
        let found = find_cgroup_of(&root, 4242);
        let hinted = lists_pid(&root, "/", 4242);
        let _ = std::fs::remove_dir_all(&root);
        assert_eq!(found.as_deref(), Some("/kubepods/pod1/c1"));
        assert!(!hinted, "the namespace's `/` is not the agent's cgroup");
    }
}
