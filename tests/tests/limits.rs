//! Enforcement against the real kernel: real cgroups, real processes crossing a limit, and the
//! agent freezing, signalling or killing them (only them), or refusing to.
use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use kmemcg_agent::limits::{LimitRule, audit::AuditRecord};
use kmemcg_tests::{
    AgentProcess, OTHER_UID, TestCgroup, Tmpfs, as_other_user, get_json, kmemcg, require_root,
    scratch,
};

const WAIT: Duration = Duration::from_secs(30);
const MIB: u64 = 1 << 20;
/// Files per second: about 10 MiB of dentries and inodes per second.
const RATE: &str = "10000";

/// An agent whose runtime rules and audit records go to files of its own.
struct Limited {
    agent: AgentProcess,
    state: PathBuf,
    audit: PathBuf,
    /// The files are the test's scratch files (removed when dropped), not a state directory's.
    scratch_files: bool,
}

impl Limited {
    fn start() -> Self {
        Self::start_with(scratch("limits.json"), scratch("audit.jsonl"))
    }

    /// Sampling at the default interval (1 s), as deployed, not the tests' short one.
    fn at_default_interval() -> Self {
        Self::start_sampling(scratch("limits.json"), scratch("audit.jsonl"), Some("1"))
    }

    fn start_with(state: PathBuf, audit: PathBuf) -> Self {
        Self::start_sampling(state, audit, None)
    }

    /// With `interval` (seconds), else the tests' short one.
    fn start_sampling(state: PathBuf, audit: PathBuf, interval: Option<&str>) -> Self {
        let files = [
            "--limits-file",
            state.to_str().expect("utf-8 path"),
            "--audit-file",
            audit.to_str().expect("utf-8 path"),
        ];
        let agent = match interval {
            Some(interval) => {
                let mut args = vec!["--interval", interval];
                args.extend_from_slice(&files);
                AgentProcess::start_with(&args)
            }
            None => AgentProcess::start(&files),
        };
        Self {
            agent,
            state,
            audit,
            scratch_files: true,
        }
    }

    /// On the state directory `dir` (its rules, audit records and what it froze), which stays
    /// when the agent stops: a second agent started on it is a restart.
    fn on_state(dir: &Path) -> Self {
        let agent =
            AgentProcess::try_start_on_state(dir, &[]).unwrap_or_else(|log| panic!("{log}"));
        Self {
            agent,
            state: dir.join("limits.json"),
            audit: dir.join("enforcement.jsonl"),
            scratch_files: false,
        }
    }

    fn addr(&self) -> String {
        self.agent.addr().to_string()
    }

    /// `kmemcg limit <args> --addr <agent> --socket <its socket>`: (success, stdout +
    /// stderr).
    fn limit(&self, args: &[&str]) -> (bool, String) {
        let addr = self.addr();
        let socket = self.agent.socket().display().to_string();
        let mut all = vec!["limit"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--addr", &addr, "--socket", &socket]);
        let out = kmemcg(&all);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn set(&self, args: &[&str]) {
        let mut all = vec!["set"];
        all.extend_from_slice(args);
        let (ok, text) = self.limit(&all);
        assert!(ok, "kmemcg limit {all:?} failed: {text}");
    }

    fn records(&self) -> Vec<AuditRecord> {
        get_json(self.agent.addr(), "/api/v1/enforcement").expect("GET /api/v1/enforcement")
    }

    fn rules(&self) -> Vec<LimitRule> {
        get_json(self.agent.addr(), "/api/v1/limits").expect("GET /api/v1/limits")
    }

    /// The first enforcement decision (not a rule change) that passes `check`.
    fn wait_record(&self, what: &str, check: impl Fn(&AuditRecord) -> bool) -> AuditRecord {
        let deadline = Instant::now() + WAIT;
        loop {
            let decisions = self.records().into_iter();
            if let Some(r) = decisions
                .filter(|r| !r.action.starts_with("limit-"))
                .find(|r| check(r))
            {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "no audit record for {what} within {WAIT:?}: {:#?}\n{}",
                self.records(),
                self.agent.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Limited {
    fn drop(&mut self) {
        if self.scratch_files {
            let _ = std::fs::remove_file(&self.state);
            let _ = std::fs::remove_file(&self.audit);
        }
    }
}

/// A state directory of the test's own, removed when dropped.
struct StateDir(PathBuf);

impl StateDir {
    fn new() -> Self {
        Self(scratch("state"))
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Thaws a test cgroup and kills its processes when dropped, so that its workload can be
/// waited for, even while an agent freezes it again.
struct ThawOnDrop(PathBuf);

impl Drop for ThawOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("cgroup.freeze"), "0");
        let _ = std::fs::write(self.0.join("cgroup.kill"), "1");
    }
}

fn frozen(cgroup: &TestCgroup) -> bool {
    std::fs::read_to_string(cgroup.v2_dir().join("cgroup.events"))
        .unwrap_or_default()
        .lines()
        .any(|l| l == "frozen 1")
}

fn procs(cgroup: &TestCgroup) -> usize {
    std::fs::read_to_string(cgroup.v2_dir().join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .count()
}

fn wait_until(what: &str, check: impl Fn() -> bool) -> Duration {
    let (start, wait) = (Instant::now(), kmemcg_tests::patience(WAIT));
    while !check() {
        assert!(start.elapsed() < wait, "{what}: not within {wait:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

fn ctime(path: &Path) -> Option<f64> {
    let m = std::fs::metadata(path).ok()?;
    Some(m.ctime() as f64 + m.ctime_nsec() as f64 / 1e9)
}

/// From crossing the limit to the freeze: the file whose creation crossed it is found from the
/// bytes per file at the decision; its ctime is when the limit was crossed.
fn reaction(dir: &Path, record: &AuditRecord) -> Option<f64> {
    let mut created = 0u64;
    while ctime(&dir.join(format!("f{created}"))).is_some_and(|t| t <= record.time) {
        created += 1;
    }
    let per_file = record.usage_bytes as f64 / created.max(1) as f64;
    let crossing = (record.limit_bytes as f64 / per_file).ceil() as u64;
    Some(record.time - ctime(&dir.join(format!("f{}", crossing.saturating_sub(1))))?)
}

/// At the default interval (1 s): the programs wake the agent when the cgroup crosses its
/// limit, so the freeze comes within milliseconds, not at the next sample.
#[test]
fn a_cgroup_past_its_limit_is_frozen_and_thawed_below_the_watermark() {
    require_root();
    let agent = Limited::at_default_interval();
    let cgroup = TestCgroup::new("freeze");
    let tmpfs = Tmpfs::new();
    let dir = tmpfs.sub("files");
    agent.set(&[
        cgroup.path(),
        "--max",
        "8M",
        "--action",
        "freeze",
        "--thaw-below",
        "4M",
        "--grace",
        "1s",
    ]);
    let workload = cgroup.hold(&["file-loop", &dir, RATE]);
    let _thaw = ThawOnDrop(cgroup.v2_dir().to_path_buf());

    wait_until("cgroup.events shows frozen 1", || frozen(&cgroup));
    let record = agent.wait_record("the freeze", |r| r.action == "freeze");
    assert_eq!(record.cgroup, cgroup.path());
    assert_eq!(record.limit_bytes, 8 * MIB);
    assert_eq!(record.outcome, "done");
    assert!(!record.dry_run);
    // Frozen before it got much further: at 10 MiB/s, 2 MiB past the limit is 200 ms, and
    // waiting for the next sample would take up to a second.
    assert!(
        record.usage_bytes < 10 * MIB,
        "frozen only at {} bytes",
        record.usage_bytes
    );
    if let Some(seconds) = reaction(Path::new(&dir), &record) {
        eprintln!(
            "reaction: {:.0} ms from crossing 8 MiB to the freeze (usage {:.1} MiB at the decision)",
            seconds * 1000.0,
            record.usage_bytes as f64 / MIB as f64
        );
    }
    // Still frozen: nothing more is created.
    let files = std::fs::read_dir(&dir).expect("files").count();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(std::fs::read_dir(&dir).expect("files").count(), files);
    assert!(frozen(&cgroup));

    // Freeing what it holds (removing its files, from outside) takes it below the watermark:
    // thawed.
    for entry in std::fs::read_dir(&dir).expect("files").flatten() {
        let _ = std::fs::remove_file(entry.path());
    }
    wait_until("cgroup.events shows frozen 0", || !frozen(&cgroup));
    let thaw = agent.wait_record("the thaw", |r| r.action == "thaw");
    assert_eq!((thaw.outcome.as_str(), thaw.limit_bytes), ("done", 4 * MIB));
    agent.limit(&["rm", cgroup.path()]);
    let _ = std::fs::write(cgroup.v2_dir().join("cgroup.freeze"), "0");
    drop(workload);

    // The audit file has the same records, and the metric counts them.
    let lines = std::fs::read_to_string(&agent.audit).expect("audit file");
    assert!(lines.lines().count() >= 2, "{lines}");
    let metrics = reqwest::blocking::get(format!("http://{}/metrics", agent.addr()))
        .and_then(|r| r.text())
        .expect("GET /metrics");
    assert!(
        metrics.contains(
            "kmemcg_enforcement_actions_total{action=\"freeze\",outcome=\"done\",dry_run=\"false\"} 1"
        ),
        "{metrics}"
    );
}

/// A rule set on a cgroup already past it is acted on at once, not at the next sample (1 s),
/// and the cgroup is watched by the programs from then on.
#[test]
fn a_rule_set_past_the_usage_acts_at_once() {
    require_root();
    let agent = Limited::at_default_interval();
    let cgroup = TestCgroup::new("late-rule");
    let tmpfs = Tmpfs::new();
    let dir = tmpfs.sub("files");
    let workload = cgroup.hold(&["file-loop", &dir, "2000"]);
    let _thaw = ThawOnDrop(cgroup.v2_dir().to_path_buf());
    wait_until("4 MiB charged to the cgroup", || {
        agent
            .agent
            .cgroup(cgroup.path())
            .is_some_and(|c| c.total_slab_bytes > 4 * MIB)
    });
    let set_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    agent.set(&[cgroup.path(), "--max", "2M", "--action", "freeze"]);
    let record = agent.wait_record("the freeze", |r| r.action == "freeze");
    let after = record.time - set_at;
    eprintln!("frozen {:.0} ms after the rule was set", after * 1000.0);
    let status = agent.agent.status();
    assert!(
        after < 0.5,
        "frozen {after:.3} s after the rule was set (samples: last {:.1} ms, slowest {:.1} ms)",
        status.last_sample_ms,
        status.max_sample_ms
    );
    wait_until("cgroup.events shows frozen 1", || frozen(&cgroup));
    wait_until("the cgroup watched by the programs", || {
        agent.agent.status().watched_cgroups >= 1
    });
    let metrics = reqwest::blocking::get(format!("http://{}/metrics", agent.addr()))
        .and_then(|r| r.text())
        .expect("GET /metrics");
    assert!(
        metrics.contains("\nkmemcg_watched_cgroups 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("\nkmemcg_samples_total "), "{metrics}");
    agent.limit(&["rm", cgroup.path()]);
    wait_until("thawed when its rule is removed", || !frozen(&cgroup));
    drop(workload);
}

#[test]
fn kill_and_signal_end_the_limited_cgroup_only() {
    require_root();
    let agent = Limited::start();
    let tmpfs = Tmpfs::new();
    let bystander = TestCgroup::new("bystander");
    let _idle = bystander.hold(&["idle"]);
    for (name, action) in [
        ("kill", &["--action", "kill"][..]),
        ("signal", &["--action", "signal", "--signal", "SIGTERM"][..]),
    ] {
        let cgroup = TestCgroup::new(name);
        let mut args = vec![cgroup.path(), "--max", "8M"];
        args.extend_from_slice(action);
        agent.set(&args);
        let dir = tmpfs.sub(name);
        let workload = cgroup.hold(&["file-loop", &dir, RATE]);
        wait_until(&format!("{name}: the cgroup has no process left"), || {
            procs(&cgroup) == 0
        });
        let record = agent.wait_record(name, |r| r.cgroup == cgroup.path());
        assert_eq!(record.action, name);
        assert!(record.outcome.starts_with("done"), "{record:?}");
        if name == "signal" {
            assert_eq!(record.signal.as_deref(), Some("SIGTERM"));
        }
        drop(workload);
        assert_eq!(procs(&bystander), 1, "{name} reached another cgroup");
        agent.limit(&["rm", cgroup.path()]);
    }
}

#[test]
fn a_glob_rule_signals_then_escalates_once_after_grace() {
    require_root();
    let agent = Limited::start();
    let tmpfs = Tmpfs::new();
    let cgroup = TestCgroup::new("escalate");
    // Every cgroup of this name from this test process: the glob matches this one.
    let glob = format!(
        "{}*",
        cgroup.path().trim_end_matches(|c: char| c.is_ascii_digit())
    );
    agent.set(&[&glob, "--max", "8M", "--action", "signal", "--grace", "1s"]);
    let workload = cgroup.hold(&["file-loop", &tmpfs.sub("files"), RATE, "--ignore-sigterm"]);
    let term = agent.wait_record("SIGTERM", |r| r.cgroup == cgroup.path());
    assert_eq!(
        (term.rule.as_str(), term.signal.as_deref()),
        (glob.as_str(), Some("SIGTERM"))
    );
    assert!(!term.escalation);
    // SIGTERM is ignored: the process lives on until the grace period ends.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(procs(&cgroup), 1);
    let kill = agent.wait_record("the escalation", |r| r.escalation);
    assert_eq!(kill.signal.as_deref(), Some("SIGKILL"));
    assert!(kill.time - term.time >= 1.0, "{term:?} {kill:?}");
    wait_until("the escalation killed the workload", || procs(&cgroup) == 0);
    drop(workload);
    std::thread::sleep(Duration::from_millis(1500));
    let escalations = agent.records().iter().filter(|r| r.escalation).count();
    assert_eq!(escalations, 1, "{:#?}", agent.records());
}

#[test]
fn dry_run_touches_nothing_but_records_the_decision() {
    require_root();
    let agent = Limited::start();
    let cgroup = TestCgroup::new("dryrun");
    let tmpfs = Tmpfs::new();
    agent.set(&[
        cgroup.path(),
        "--max",
        "8M",
        "--action",
        "kill",
        "--dry-run",
    ]);
    let workload = cgroup.hold(&["file-loop", &tmpfs.sub("files"), RATE]);
    let record = agent.wait_record("the dry run", |r| r.cgroup == cgroup.path());
    assert!(record.dry_run);
    assert_eq!(
        (record.action.as_str(), record.outcome.as_str()),
        ("kill", "dry-run")
    );
    assert!(record.usage_bytes > 8 * MIB);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(procs(&cgroup), 1, "a dry run killed the workload");
    assert!(!frozen(&cgroup));
    let metrics = reqwest::blocking::get(format!("http://{}/metrics", agent.addr()))
        .and_then(|r| r.text())
        .expect("GET /metrics");
    assert!(
        metrics.contains(
            "kmemcg_enforcement_actions_total{action=\"kill\",outcome=\"dry-run\",dry_run=\"true\"} 1"
        ),
        "{metrics}"
    );
    let gauge = format!(
        "kmemcg_limit_bytes{{rule=\"{}\",cgroup=\"{}\"}} 8388608",
        cgroup.path(),
        cgroup.path()
    );
    assert!(metrics.contains(&gauge), "{gauge} missing: {metrics}");
    drop(workload);
}

#[test]
fn protected_and_malformed_rules_are_refused() {
    require_root();
    // The agent runs in a cgroup of the test's own (on a test host it may be the root).
    let home = TestCgroup::new("agent-home");
    let agent = Limited::start();
    std::fs::write(
        home.v2_dir().join("cgroup.procs"),
        agent.agent.pid().to_string(),
    )
    .expect("moving the agent into its test cgroup");
    // notify only: even if a refusal failed, nothing would be touched.
    let (ok, text) = agent.limit(&["set", "/", "--max", "8M", "--action", "notify"]);
    assert!(!ok && text.contains("root cgroup"), "{text}");
    let own = std::fs::read_to_string(format!("/proc/{}/cgroup", agent.agent.pid()))
        .expect("the agent's cgroup");
    let own = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 line")
        .to_string();
    assert_eq!(own, home.path());
    let (ok, text) = agent.limit(&["set", &own, "--max", "8M", "--action", "notify"]);
    assert!(!ok && text.contains("kmemcg agent"), "{own}: {text}");
    let (ok, text) = agent.limit(&["set", "/system.slice", "--max", "8M", "--action", "notify"]);
    assert!(!ok && text.contains("protected"), "{text}");

    let (ok, text) = agent.limit(&["set", "/kmemcg-test-x", "--max", "8X", "--action", "kill"]);
    assert!(
        !ok && text.contains("not a size") && text.contains("8M"),
        "{text}"
    );
    let (ok, text) = agent.limit(&[
        "set",
        "/kmemcg-test-x",
        "--max",
        "8M",
        "--action",
        "explode",
    ]);
    assert!(
        !ok && text.contains("notify, signal, freeze, kill"),
        "{text}"
    );
    let (ok, text) = agent.limit(&[
        "set",
        "kmemcg-test-x",
        "--max",
        "8M",
        "--action",
        "kill",
        "--signal",
        "SIGTERM",
    ]);
    assert!(!ok && text.contains("signal action"), "{text}");
    assert!(agent.rules().is_empty(), "{:?}", agent.rules());
    assert!(agent.records().is_empty());

    // A config file rule on the root stops the agent before it starts.
    let config = scratch("limits.toml");
    std::fs::write(
        &config,
        "[[limits.rule]]\npath = \"/\"\nmax = \"8M\"\naction = \"notify\"\n",
    )
    .expect("config file");
    let out = kmemcg(&[
        "agent",
        "--check-config",
        "--config",
        config.to_str().expect("utf-8"),
    ]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && text.contains("root cgroup"),
        "{text}"
    );
    let out = kmemcg(&[
        "agent",
        "--config",
        config.to_str().expect("utf-8"),
        "--limits-file",
        "/nonexistent/x",
        "--listen",
        "127.0.0.1:1",
    ]);
    let _ = std::fs::remove_file(&config);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && text.contains("root cgroup"),
        "{text}"
    );
    let config = scratch("limits.toml");
    std::fs::write(
        &config,
        "[[limits.rule]]\npath = \"/a\"\nmax = \"8X\"\naction = \"freeze\"\n",
    )
    .expect("config file");
    let out = kmemcg(&[
        "agent",
        "--check-config",
        "--config",
        config.to_str().expect("utf-8"),
    ]);
    let _ = std::fs::remove_file(&config);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && text.contains("limits.rule") && text.contains("not a size"),
        "{text}"
    );
}

#[test]
fn runtime_rules_survive_a_restart() {
    require_root();
    let state = scratch("limits.json");
    let audit = scratch("audit.jsonl");
    let agent = Limited::start_with(state.clone(), audit.clone());
    agent.set(&["/kmemcg-test-persist", "--max", "1G", "--action", "notify"]);
    agent.set(&[
        "/kmemcg-test-glob-*",
        "--max",
        "64M",
        "--action",
        "signal",
        "--grace",
        "5s",
    ]);
    let before = agent.rules();
    // SAFETY: kill(2) on our own child, the agent.
    unsafe { libc::kill(agent.agent.pid() as i32, libc::SIGTERM) };
    wait_until("the first agent exits", || {
        !Path::new(&format!("/proc/{}", agent.agent.pid())).exists()
            || std::fs::read_to_string(format!("/proc/{}/stat", agent.agent.pid()))
                .is_ok_and(|s| s.contains(") Z "))
    });
    let restarted = Limited::start_with(state, audit);
    let agent = restarted;
    assert_eq!(agent.rules(), before);
    let (ok, text) = agent.limit(&["list"]);
    assert!(
        ok && text.contains("/kmemcg-test-glob-*") && text.contains("runtime"),
        "{text}"
    );
    let (ok, text) = agent.limit(&["rm", "/kmemcg-test-persist"]);
    assert!(ok, "{text}");
    let (ok, text) = agent.limit(&["rm", "/kmemcg-test-persist"]);
    assert!(!ok && text.contains("no limit"), "{text}");
    assert_eq!(agent.rules().len(), 1);
}

/// What the agent counts for the cgroup now (recursive slab + percpu), bytes.
fn usage(agent: &AgentProcess, cgroup: &TestCgroup) -> u64 {
    agent
        .cgroup(cgroup.path())
        .map_or(0, |c| c.total_slab_bytes + c.total_percpu_bytes)
}

/// Past this, a cgroup under an 8 MiB limit was not stopped in time.
const TOO_FAR: u64 = 18 * MIB;

/// Waits until the cgroup is frozen, or failing that until it grew past [`TOO_FAR`].
fn wait_frozen_or_too_far(agent: &AgentProcess, cgroup: &TestCgroup, what: &str) {
    wait_until(what, || frozen(cgroup) || usage(agent, cgroup) > TOO_FAR);
    assert!(
        frozen(cgroup),
        "{what}: {} not frozen, grew to {:.1} MiB past an 8 MiB limit",
        cgroup.path(),
        usage(agent, cgroup) as f64 / MIB as f64
    );
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

/// A service restart: the frozen cgroup is killed, removed and created again at the same path
/// within milliseconds. The new cgroup is another one, judged afresh: frozen when it crosses
/// its limit, whatever was decided for the old one.
#[test]
fn a_re_created_cgroup_is_judged_afresh_and_frozen() {
    require_root();
    let agent = Limited::at_default_interval();
    let cgroup = TestCgroup::new("recreated");
    let tmpfs = Tmpfs::new();
    agent.set(&[cgroup.path(), "--max", "8M", "--action", "freeze"]);
    let first = cgroup.hold(&["file-loop", &tmpfs.sub("first"), RATE]);
    wait_frozen_or_too_far(&agent.agent, &cgroup, "the first cgroup frozen");
    let old_id = cgroup.id();
    let cgroup = cgroup.recreate();
    drop(first);
    assert_ne!(
        cgroup.id(),
        old_id,
        "the kernel gave the new cgroup a new id"
    );
    let second = cgroup.hold(&["file-loop", &tmpfs.sub("second"), RATE]);
    let _thaw = ThawOnDrop(cgroup.v2_dir().to_path_buf());
    wait_frozen_or_too_far(&agent.agent, &cgroup, "the re-created cgroup frozen");
    let freezes: Vec<AuditRecord> = agent
        .records()
        .into_iter()
        .filter(|r| r.action == "freeze" && r.outcome == "done")
        .collect();
    assert_eq!(freezes.len(), 2, "{freezes:#?}");
    assert_eq!(
        (freezes[0].cgroup_id, freezes[1].cgroup_id),
        (Some(old_id), Some(cgroup.id()))
    );
    eprintln!(
        "re-created: frozen at {:.1} MiB (decision), {:.1} MiB counted once frozen",
        mib(freezes[1].usage_bytes),
        mib(usage(&agent.agent, &cgroup))
    );
    assert!(freezes[1].usage_bytes < TOO_FAR, "{:?}", freezes[1]);
    agent.limit(&["rm", cgroup.path()]);
    wait_until("thawed when its rule is removed", || !frozen(&cgroup));
    drop(second);
}

/// Two freeze rules match one cgroup (`/x` and `/x*`): removing one leaves it frozen by the
/// other; removing the other thaws it.
#[test]
fn overlapping_freeze_rules_thaw_only_when_none_holds_the_cgroup() {
    require_root();
    let agent = Limited::at_default_interval();
    let cgroup = TestCgroup::new("overlap");
    let tmpfs = Tmpfs::new();
    let glob = format!("{}*", cgroup.path());
    agent.set(&[cgroup.path(), "--max", "8M", "--action", "freeze"]);
    agent.set(&[&glob, "--max", "8M", "--action", "freeze"]);
    let workload = cgroup.hold(&["file-loop", &tmpfs.sub("files"), RATE]);
    let _thaw = ThawOnDrop(cgroup.v2_dir().to_path_buf());
    wait_frozen_or_too_far(&agent.agent, &cgroup, "frozen by both rules");
    let (ok, text) = agent.limit(&["rm", cgroup.path()]);
    assert!(ok, "{text}");
    // Samples at 1 s: two of them, and the budget's wake-ups, had their chance.
    std::thread::sleep(Duration::from_millis(2500));
    let now = usage(&agent.agent, &cgroup);
    eprintln!(
        "overlapping: {:.1} MiB after one of the two rules was removed",
        mib(now)
    );
    assert!(
        frozen(&cgroup) && now < TOO_FAR,
        "the remaining rule {glob} no longer holds it: frozen {}, {:.1} MiB; {:#?}",
        frozen(&cgroup),
        mib(now),
        agent.records()
    );
    let (ok, text) = agent.limit(&["rm", &glob]);
    assert!(ok, "{text}");
    wait_until("thawed once no rule holds it", || !frozen(&cgroup));
    drop(workload);
}

/// What kmemcg froze stays frozen while the agent is stopped, and a restarted agent knows it:
/// it thaws what fell below the watermark meanwhile, freezes again what was thawed meanwhile
/// while over its limit, and `limit rm` thaws what the removed rule froze.
#[test]
fn what_kmemcg_froze_survives_a_restart() {
    require_root();
    let state = StateDir::new();
    let tmpfs = Tmpfs::new();
    let watermark = TestCgroup::new("restart-watermark");
    let removed = TestCgroup::new("restart-rm");
    let agent = Limited::on_state(&state.0);
    agent.set(&[
        watermark.path(),
        "--max",
        "8M",
        "--action",
        "freeze",
        "--thaw-below",
        "4M",
        "--grace",
        "1s",
    ]);
    agent.set(&[removed.path(), "--max", "8M", "--action", "freeze"]);
    let dir = tmpfs.sub("watermark");
    let held_a = watermark.hold(&["file-loop", &dir, RATE]);
    let _thaw_a = ThawOnDrop(watermark.v2_dir().to_path_buf());
    let held_b = removed.hold(&["file-loop", &tmpfs.sub("rm"), RATE]);
    let _thaw_b = ThawOnDrop(removed.v2_dir().to_path_buf());
    wait_frozen_or_too_far(&agent.agent, &watermark, "frozen before the restart");
    wait_frozen_or_too_far(&agent.agent, &removed, "frozen before the restart");
    for r in agent.records().iter().filter(|r| r.action == "freeze") {
        eprintln!(
            "restart: {} frozen at {:.1} MiB",
            r.cgroup,
            mib(r.usage_bytes)
        );
        assert!(r.usage_bytes < TOO_FAR, "{r:?}");
    }
    // Stopped with SIGTERM, as systemd or the kubelet stop it.
    drop(agent);
    // Stopped: what it froze stays frozen.
    std::thread::sleep(Duration::from_millis(300));
    assert!(frozen(&watermark) && frozen(&removed), "thawed by a stop");
    // Below the watermark while the agent is down.
    for entry in std::fs::read_dir(&dir).expect("files").flatten() {
        let _ = std::fs::remove_file(entry.path());
    }
    // Thawed by someone else while the agent is down, and still over its limit.
    std::fs::write(removed.v2_dir().join("cgroup.freeze"), "0").expect("thawing");
    let agent = Limited::on_state(&state.0);
    let refrozen = agent.wait_record("frozen again at start", |r| {
        r.cgroup == removed.path() && r.outcome.contains("re-frozen")
    });
    eprintln!(
        "restart: thawed while the agent was down, frozen again at start at {:.1} MiB",
        mib(refrozen.usage_bytes)
    );
    wait_until("frozen again", || frozen(&removed));
    wait_until(
        "the restarted agent thaws what fell below the watermark",
        || !frozen(&watermark),
    );
    let thaw = agent.wait_record("the thaw", |r| r.action == "thaw");
    assert_eq!(
        (thaw.cgroup.as_str(), thaw.cgroup_id),
        (watermark.path(), Some(watermark.id()))
    );
    assert!(frozen(&removed), "still over its limit: stays frozen");
    let (ok, text) = agent.limit(&["rm", removed.path()]);
    assert!(ok, "{text}");
    wait_until(
        "`limit rm` after the restart thaws what the rule froze",
        || !frozen(&removed),
    );
    agent.limit(&["rm", watermark.path()]);
    drop(held_a);
    drop(held_b);
}

/// A delegated cgroup's owner (here uid 65534, who owns its cgroup.freeze) thaws it while it
/// is over its limit: frozen again at once, audited; thawed again, frozen again only after a
/// back-off, so that the agent and the owner do not fight in a tight loop.
#[test]
fn a_cgroup_thawed_by_its_owner_while_over_is_frozen_again_with_back_off() {
    require_root();
    let agent = Limited::at_default_interval();
    let cgroup = TestCgroup::new("delegated");
    for file in [
        "",
        "cgroup.freeze",
        "cgroup.procs",
        "cgroup.subtree_control",
    ] {
        let path = cgroup.v2_dir().join(file);
        std::os::unix::fs::chown(&path, Some(OTHER_UID), Some(OTHER_UID))
            .unwrap_or_else(|e| panic!("delegating {}: {e}", path.display()));
    }
    let tmpfs = Tmpfs::new();
    agent.set(&[cgroup.path(), "--max", "8M", "--action", "freeze"]);
    let workload = cgroup.hold(&["file-loop", &tmpfs.sub("files"), RATE]);
    let _thaw = ThawOnDrop(cgroup.v2_dir().to_path_buf());
    wait_frozen_or_too_far(&agent.agent, &cgroup, "frozen by its rule");
    let owner_thaws = || {
        let freeze = cgroup.v2_dir().join("cgroup.freeze");
        let script = format!("echo 0 > {}", freeze.display());
        let out = as_other_user(Path::new("/bin/sh"), &["-c", &script])
            .output()
            .expect("running sh as the delegated owner");
        assert!(
            out.status.success(),
            "the owner could not thaw: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let refrozen = |after: f64| {
        agent
            .records()
            .into_iter()
            .filter(|r| r.action == "freeze" && r.outcome.contains("re-frozen") && r.time > after)
            .collect::<Vec<_>>()
    };
    owner_thaws();
    wait_until("frozen again or too far", || {
        !refrozen(0.0).is_empty() || usage(&agent.agent, &cgroup) > TOO_FAR
    });
    let first = refrozen(0.0).into_iter().next().unwrap_or_else(|| {
        panic!(
            "not frozen again: {:.1} MiB; {:#?}",
            mib(usage(&agent.agent, &cgroup)),
            agent.records()
        )
    });
    wait_until("frozen again", || frozen(&cgroup));
    eprintln!(
        "delegated: frozen again at {:.1} MiB (decision), {:.1} MiB counted once frozen",
        mib(first.usage_bytes),
        mib(usage(&agent.agent, &cgroup))
    );
    assert!(first.usage_bytes < TOO_FAR, "{first:?}");
    // Thawed again at once: frozen again, but not before the back-off.
    owner_thaws();
    wait_until("frozen again a second time", || {
        !refrozen(first.time).is_empty()
    });
    let second = refrozen(first.time).remove(0);
    eprintln!(
        "delegated: second re-freeze {:.2} s after the first, at {:.1} MiB",
        second.time - first.time,
        mib(second.usage_bytes)
    );
    assert!(second.time - first.time >= 0.9, "{first:?} {second:?}");
    wait_until("frozen again", || frozen(&cgroup));
    agent.limit(&["rm", cgroup.path()]);
    wait_until("thawed when its rule is removed", || !frozen(&cgroup));
    drop(workload);
}
