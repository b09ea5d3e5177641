//! The deploy mode: the real `kmemcg agent` configured as deploy/ configures it (the systemd
//! unit's agent.toml, maps pinned in bpffs, limit rules in force), in places of the bench's
//! own: a bpffs, a socket, limits and audit files in a scratch directory, a loopback port.
//! The rules match the bench's cgroup far above what it reaches, and --dry-run besides, so
//! that they are evaluated at every sample and can never act.
use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use kmemcg_agent::limits::{Action, RuleSpec, Size};
use kmemcg_tests::{AgentProcess, Bpffs, kmemcg_bin, prometheus::http_get, scratch_dir};

use crate::programs::{AgentPrograms, ProgramStats, loaded_ids};

/// What the systemd unit (and, but for `listen` and the socket, the DaemonSet) runs with.
const DEPLOY_CONFIG: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/systemd/agent.toml"
));
const DEPLOY_CONFIG_PATH: &str = "deploy/systemd/agent.toml";

/// Far above what the workload's cgroup reaches in a run (tens of MiB).
const HIGH: u64 = 64 << 30;

/// The places and configuration of the deploy mode, for the whole bench; removed when dropped.
pub struct DeploySetup {
    dir: PathBuf,
    bpffs: Bpffs,
    rules: Vec<RuleSpec>,
    args: Vec<String>,
}

impl DeploySetup {
    /// `cgroup`: the bench cgroup's path; `interval`: seconds between the agent's samples.
    pub fn new(cgroup: &str, interval: f64) -> anyhow::Result<Self> {
        let dir = scratch_dir("bench-deploy");
        let bpffs = Bpffs::new();
        let rules = rules(cgroup);
        let config = dir.join("agent.toml");
        std::fs::write(&config, config_text(&rules)?)
            .with_context(|| format!("writing {}", config.display()))?;
        let path = |name: &str| dir.join(name).display().to_string();
        let args = vec![
            "--config".into(),
            config.display().to_string(),
            "--interval".into(),
            interval.to_string(),
            "--socket".into(),
            path("run/kmemcg.sock"),
            "--pin-dir".into(),
            bpffs.pin_dir(),
            "--limits-file".into(),
            path("limits.json"),
            "--audit-file".into(),
            path("enforcement.jsonl"),
            "--dry-run".into(),
        ];
        Ok(Self {
            dir,
            bpffs,
            rules,
            args,
        })
    }

    /// What the mode runs, for the bench's header.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = vec![
            format!(
                "kmemcg agent --listen 127.0.0.1:<free port> {}",
                self.args.join(" ")
            ),
            format!(
                "  config: {DEPLOY_CONFIG_PATH} as built in, with these limit rules (--interval \
                 and the places above override its keys):"
            ),
        ];
        lines.extend(
            self.rules
                .iter()
                .map(|r| format!("    {}", describe_rule(r))),
        );
        lines
    }

    /// Starts the agent, waits until it serves, and finds its programs.
    pub fn start(&self) -> anyhow::Result<DeployRun<'_>> {
        let before = loaded_ids();
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let mut run = DeployRun {
            setup: self,
            agent: Some(AgentProcess::start_with(&args)),
            programs: None,
        };
        let maps = pinned_map_ids(Path::new(&self.bpffs.pin_dir()))?;
        run.programs = Some(AgentPrograms::find(&before, &maps)?);
        Ok(run)
    }

    fn bench_rule(&self) -> &str {
        &self.rules[0].path
    }

    /// Removes what a run of the agent leaves: its pinned maps, its limits and audit files.
    fn clean_up_run(&self) -> anyhow::Result<()> {
        for file in ["limits.json", "enforcement.jsonl"] {
            match std::fs::remove_file(self.dir.join(file)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing {file}"));
                }
                _ => {}
            }
        }
        let pin_dir = self.bpffs.pin_dir();
        let output = Command::new(kmemcg_bin())
            .args(["agent", "--unpin", "--pin-dir", &pin_dir])
            .output()
            .context("running kmemcg agent --unpin")?;
        if !output.status.success() {
            bail!(
                "kmemcg agent --unpin --pin-dir {pin_dir} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for DeploySetup {
    fn drop(&mut self) {
        // The bpffs is unmounted after this, when the field drops.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One run of the agent: stopped and its pins removed when finished or dropped.
pub struct DeployRun<'a> {
    setup: &'a DeploySetup,
    agent: Option<AgentProcess>,
    programs: Option<AgentPrograms>,
}

impl DeployRun<'_> {
    pub fn stats(&self) -> anyhow::Result<ProgramStats> {
        self.programs
            .as_ref()
            .context("the agent's programs were not found")?
            .stats()
    }

    /// Checks that the rule on the bench cgroup was in force, stops the agent (which must
    /// exit cleanly) and removes its pins.
    pub fn finish(mut self) -> anyhow::Result<()> {
        let agent = self.agent.take().context("the agent was stopped already")?;
        let rule = self.setup.bench_rule();
        let evaluated = http_get(&format!("http://{}/metrics", agent.addr()))
            .map(|text| rule_evaluated(&text, rule))
            .context("reading the agent's /metrics");
        let log = agent.log_text();
        let status = agent.stop();
        self.setup.clean_up_run()?;
        if !status.success() {
            bail!("the deploy agent exited with {status}: {log}");
        }
        if !evaluated? {
            bail!("the agent's /metrics show no kmemcg_limit_usage_bytes for the rule on {rule}");
        }
        Ok(())
    }
}

impl Drop for DeployRun<'_> {
    fn drop(&mut self) {
        if let Some(agent) = self.agent.take() {
            agent.stop();
            if let Err(e) = self.setup.clean_up_run() {
                eprintln!("warning: {e:#}");
            }
        }
    }
}

/// A rule on the bench cgroup that never acts, and rules on cgroups that do not exist, as a
/// host with limits has them.
fn rules(cgroup: &str) -> Vec<RuleSpec> {
    let absent = format!("{cgroup}-absent");
    let mut on_bench = RuleSpec::new(cgroup, HIGH, Action::Freeze);
    on_bench.max_kernel = Some(Size(HIGH));
    on_bench.thaw_below = Some(Size(HIGH / 2));
    let mut pods = RuleSpec::new(format!("{absent}-pods/*/*"), 256 << 20, Action::Signal);
    pods.signal = Some("SIGTERM".into());
    let mut batch = RuleSpec::new(format!("{absent}-batch/*"), 1 << 30, Action::Kill);
    batch.slab = Some(Size(900 << 20));
    let notify = RuleSpec::new(format!("{absent}-notify"), 8 << 20, Action::Notify);
    let mut all = vec![on_bench, pods, batch, notify];
    for rule in &mut all {
        rule.dry_run = true;
    }
    all
}

/// deploy/systemd/agent.toml with `rules` added under [limits].
fn config_text(rules: &[RuleSpec]) -> anyhow::Result<String> {
    let mut config: toml::Table = DEPLOY_CONFIG
        .parse()
        .with_context(|| format!("parsing {DEPLOY_CONFIG_PATH}"))?;
    let limits = config
        .entry("limits")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .with_context(|| format!("`limits` in {DEPLOY_CONFIG_PATH} is not a table"))?;
    limits.insert("rule".into(), toml::Value::try_from(rules)?);
    Ok(toml::to_string(&config)?)
}

fn describe_rule(rule: &RuleSpec) -> String {
    let mut text = rule.path.clone();
    for (name, size) in [
        ("max", rule.max),
        ("max_kernel", rule.max_kernel),
        ("slab", rule.slab),
        ("percpu", rule.percpu),
    ] {
        if let Some(Size(bytes)) = size {
            text.push_str(&format!(" {name} {}", size_text(bytes)));
        }
    }
    text.push_str(&format!(" {}", rule.action.as_str()));
    if rule.dry_run {
        text.push_str(" (dry run)");
    }
    text
}

/// A size as `kmemcg limit set` takes it: `64G`, `900M`.
fn size_text(bytes: u64) -> String {
    match bytes {
        b if b % (1 << 30) == 0 => format!("{}G", b >> 30),
        b if b % (1 << 20) == 0 => format!("{}M", b >> 20),
        b => b.to_string(),
    }
}

/// Ids of the maps pinned under `pin_dir` (in its layout directories).
fn pinned_map_ids(pin_dir: &Path) -> anyhow::Result<HashSet<u32>> {
    let mut ids = HashSet::new();
    let read =
        |dir: &Path| std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()));
    for layout in read(pin_dir)? {
        let layout = layout?.path();
        if !layout.is_dir() {
            continue;
        }
        for pin in read(&layout)? {
            let pin = pin?.path();
            let info = aya::maps::MapInfo::from_pin(&pin)
                .with_context(|| format!("opening pinned map {}", pin.display()))?;
            ids.insert(info.id());
        }
    }
    if ids.is_empty() {
        bail!("the agent pinned no maps in {}", pin_dir.display());
    }
    Ok(ids)
}

/// Whether `metrics` show the usage of a rule on `path` for that cgroup.
fn rule_evaluated(metrics: &str, path: &str) -> bool {
    let rule = format!("rule=\"{path}\"");
    let cgroup = format!("cgroup=\"{path}\"");
    metrics.lines().any(|l| {
        l.starts_with("kmemcg_limit_usage_bytes{") && l.contains(&rule) && l.contains(&cgroup)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_is_deploys_with_the_rules_added() {
        let rules = rules("/kmemcg-test-bench-1-0");
        let text = config_text(&rules).unwrap();
        let parsed: toml::Table = text.parse().unwrap();
        let deploy: toml::Table = DEPLOY_CONFIG.parse().unwrap();
        let without_rules = |t: &toml::Table| {
            let mut t = t.clone();
            if let Some(limits) = t.get_mut("limits").and_then(|l| l.as_table_mut()) {
                limits.remove("rule");
                if limits.is_empty() {
                    t.remove("limits");
                }
            }
            t
        };
        assert_eq!(without_rules(&parsed), without_rules(&deploy));
        let written = parsed["limits"]["rule"].as_array().unwrap();
        assert_eq!(written.len(), rules.len());
        let back: Vec<RuleSpec> = written
            .iter()
            .map(|r| r.clone().try_into().unwrap())
            .collect();
        assert_eq!(back, rules);
        assert_eq!(back[0].path, "/kmemcg-test-bench-1-0");
        assert!(back.iter().all(|r| r.dry_run));
    }

    #[test]
    fn a_rule_counts_as_evaluated_only_with_its_own_cgroup() {
        let metrics = "# TYPE kmemcg_limit_usage_bytes gauge\n\
            kmemcg_limit_usage_bytes{rule=\"/a\",cgroup=\"/a\"} 4096\n\
            kmemcg_limit_bytes{rule=\"/b\",cgroup=\"/b\"} 1\n";
        assert!(rule_evaluated(metrics, "/a"));
        assert!(!rule_evaluated(metrics, "/b"));
        assert!(!rule_evaluated(metrics, "/c"));
    }
}
