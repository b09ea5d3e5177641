//! Protected cgroups: never acted on. A cgroup is protected when it is a protected path or an
//! ancestor of one (freezing or killing an ancestor reaches its descendants): the root, the
//! agent's own cgroup and its ancestors, `/init.scope`, `/system.slice` and the configured list.

use std::path::Path;

use crate::kernel::cgroupfs;

/// Protected by default, besides the root and the agent's own cgroup.
pub const DEFAULT_PROTECTED: &[&str] = &["/init.scope", "/system.slice"];

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Protected {
    paths: Vec<String>,
    agent: Option<String>,
}

impl Protected {
    /// `extra`: the configured list (normalised paths); `agent`: the agent's own cgroup.
    pub fn new(extra: &[String], agent: Option<&str>) -> Self {
        let mut paths: Vec<String> = DEFAULT_PROTECTED.iter().map(|p| p.to_string()).collect();
        paths.extend(extra.iter().cloned());
        Self {
            paths,
            agent: agent.map(str::to_string),
        }
    }

    /// Follows the agent if it was moved to another cgroup since.
    pub fn refresh_agent(&mut self) {
        let pid = std::process::id();
        if let (Some(agent), Ok(root)) = (&self.agent, cgroupfs::find_cgroup2_mount())
            && lists_pid(&root, agent, pid)
        {
            return;
        }
        if let Some(now) = Self::own_cgroup() {
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
    pub fn own_cgroup() -> Option<String> {
        let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let hint = text
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .map(|p| p.trim().to_string());
        let Ok(root) = cgroupfs::find_cgroup2_mount() else {
            return hint;
        };
        let pid = std::process::id();
        if let Some(hint) = &hint
            && lists_pid(&root, hint, pid)
        {
            return Some(hint.clone());
        }
        find_cgroup_of(&root, pid).or(hint)
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
        self.paths.iter().find(|p| under(p)).map(|p| {
            if p == path {
                format!("it is a protected cgroup ({p})")
            } else {
                format!("it contains the protected cgroup {p}")
            }
        })
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
