//! Protected cgroups: never acted on. A cgroup is protected when it is a protected path or an
//! ancestor of one (freezing or killing an ancestor reaches its descendants): the root, the
//! agent's own cgroup and its ancestors, `/init.scope`, `/system.slice` and the configured list.

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
        let Some(now) = Self::own_cgroup() else {
            return;
        };
        self.agent = Some(now);
    }

    /// The agent's own cgroup, read from /proc/self/cgroup (the `0::` line).
    pub fn own_cgroup() -> Option<String> {
        let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("0::"))
            .map(|p| p.trim().to_string())
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
}
