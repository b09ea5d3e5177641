//! The agent as a privileged daemon: no input hangs it, no unprivileged user changes what it
//! enforces, idle clients cannot exhaust it, and what it freezes it also thaws.
use std::{
    io::Read as _,
    os::{fd::FromRawFd as _, unix::process::CommandExt as _},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use kmemcg_agent::{api::Status, limits::LimitRule, limits::audit::AuditRecord};
use kmemcg_tests::{
    AgentProcess, Bpffs, TestCgroup, Tmpfs, get_json, kmemcg, kmemcg_bin, require_root, scratch,
};

/// An agent keeping its rules and audit records in files of its own.
fn agent_with_files(extra: &[&str]) -> (AgentProcess, PathBuf, PathBuf) {
    let state = scratch("limits.json");
    let audit = scratch("audit.jsonl");
    let mut args = vec![
        "--limits-file".to_string(),
        state.display().to_string(),
        "--audit-file".to_string(),
        audit.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (AgentProcess::start(&args), state, audit)
}

/// `kmemcg limit ...` against `agent`, as root through its socket: (success, output).
fn limit(agent: &AgentProcess, args: &[&str]) -> (bool, String) {
    let addr = agent.addr().to_string();
    let socket = agent.socket().display().to_string();
    let mut all = vec!["limit"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--addr", &addr, "--socket", &socket]);
    let out = kmemcg(&all);
    (out.status.success(), output_text(&out))
}

fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn healthz_within(agent: &AgentProcess, timeout: Duration) -> bool {
    reqwest::blocking::Client::builder()
        .timeout(timeout)
        .build()
        .expect("client")
        .get(format!("http://{}/healthz", agent.addr()))
        .send()
        .is_ok_and(|r| r.status().is_success())
}

fn frozen(cgroup: &TestCgroup) -> bool {
    std::fs::read_to_string(cgroup.v2_dir().join("cgroup.events"))
        .is_ok_and(|t| t.lines().any(|l| l == "frozen 1"))
}

fn wait_until(what: &str, timeout: Duration, check: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_pathological_glob_neither_hangs_the_agent_nor_its_restart() {
    require_root();
    let (agent, state, audit) = agent_with_files(&[]);
    let parent = TestCgroup::new("glob");
    let _child = TestCgroup::under(&parent, &"a".repeat(200));
    // A backtracking matcher needs about 2^40 steps for this pattern against that child.
    let glob = format!("{}/{}x", parent.path(), "*".repeat(40));
    let (ok, text) = limit(&agent, &["set", &glob, "--max", "1G", "--action", "notify"]);
    assert!(ok, "{text}");
    let before: Status = agent.status();
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        healthz_within(&agent, Duration::from_secs(2)),
        "the agent hangs"
    );
    let after: Status = agent.status();
    assert!(
        after.updated_at >= before.updated_at && after.last_sample_ms < 500.0,
        "sampling stalled: {after:?}"
    );
    drop(agent);
    // The saved rule is matched at the next start too.
    let again = AgentProcess::start(&[
        "--limits-file",
        state.to_str().expect("utf-8"),
        "--audit-file",
        audit.to_str().expect("utf-8"),
    ]);
    let rules: Vec<LimitRule> = get_json(again.addr(), "/api/v1/limits").expect("rules");
    assert_eq!(rules.len(), 1);
    assert!(healthz_within(&again, Duration::from_secs(2)));
    let _ = std::fs::remove_file(state);
    let _ = std::fs::remove_file(audit);
}

#[test]
fn only_root_or_a_token_holder_changes_limits() {
    require_root();
    let token_file = scratch("token");
    std::fs::write(&token_file, "0123456789abcdef0123456789abcdef\n").expect("token");
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("mode");
    let (agent, state, audit) = agent_with_files(&[]);
    let victim = TestCgroup::new("victim");
    let addr = agent.addr().to_string();
    let socket = agent.socket().display().to_string();
    // As nobody: the socket is root's, and the TCP listener takes no changes.
    let out = Command::new(kmemcg_bin())
        .args([
            "limit",
            "set",
            victim.path(),
            "--max",
            "1",
            "--action",
            "kill",
        ])
        .args(["--addr", &addr, "--socket", &socket])
        .uid(65534)
        .gid(65534)
        .output()
        .expect("kmemcg as nobody");
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("refused") && text.contains("TCP"), "{text}");
    let posted = reqwest::blocking::Client::new()
        .post(format!("http://{addr}/api/v1/limits"))
        .json(&serde_json::json!({"path": victim.path(), "max": 1, "action": "kill"}))
        .send()
        .expect("an answer");
    assert_eq!(posted.status(), 403);
    let rules: Vec<LimitRule> = get_json(agent.addr(), "/api/v1/limits").expect("rules");
    assert!(rules.is_empty(), "{rules:?}");
    // As root through the socket: allowed, and the audit says who.
    let (ok, text) = limit(
        &agent,
        &["set", victim.path(), "--max", "1G", "--action", "notify"],
    );
    assert!(ok, "{text}");
    let records: Vec<AuditRecord> = get_json(agent.addr(), "/api/v1/enforcement").expect("audit");
    let by = records[0].by.clone().unwrap_or_default();
    assert!(
        by.starts_with("uid 0 pid ") && by.ends_with("(unix socket)"),
        "{by}"
    );
    drop(agent);

    // With a token: writes over TCP need it, and are audited as the token's.
    let (agent, state2, audit2) =
        agent_with_files(&["--write-token-file", token_file.to_str().expect("utf-8")]);
    let addr = agent.addr().to_string();
    let no_socket = scratch("no-socket").display().to_string();
    let wrong = scratch("wrong-token");
    std::fs::write(&wrong, "ffffffffffffffffffffffffffffffff\n").expect("token");
    std::fs::set_permissions(&wrong, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("mode");
    let set = |token: &PathBuf| {
        kmemcg(&[
            "limit",
            "set",
            victim.path(),
            "--max",
            "1G",
            "--action",
            "notify",
            "--addr",
            &addr,
            "--socket",
            &no_socket,
            "--token-file",
            token.to_str().expect("utf-8"),
        ])
    };
    let out = set(&wrong);
    assert!(!out.status.success() && output_text(&out).contains("wrong token"));
    let out = set(&token_file);
    assert!(out.status.success(), "{}", output_text(&out));
    let records: Vec<AuditRecord> = get_json(agent.addr(), "/api/v1/enforcement").expect("audit");
    let by = records[0].by.clone().unwrap_or_default();
    assert!(by.starts_with("token from 127.0.0.1:"), "{by}");
    for f in [token_file, wrong, state, audit, state2, audit2] {
        let _ = std::fs::remove_file(f);
    }
}

/// Open descriptors of a process.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[test]
fn idle_connections_are_capped_and_closed() {
    require_root();
    let agent = AgentProcess::start(&[]);
    let before = open_fds(agent.pid());
    // Enough descriptors for the clients.
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid pointer to an rlimit.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    limit.rlim_cur = limit.rlim_max.min(8192);
    // SAFETY: a valid pointer to an rlimit.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    let clients = 1500.min(limit.rlim_cur as usize - 100);
    let idle: Vec<std::net::TcpStream> = (0..clients)
        .filter_map(|_| std::net::TcpStream::connect(agent.addr()).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let during = open_fds(agent.pid());
    assert!(
        during < before + 600,
        "{} idle clients took {} descriptors (from {before})",
        idle.len(),
        during
    );
    // An idle client is closed by the agent within its idle timeout.
    let mut first = idle[0].try_clone().expect("clone");
    first
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    let started = Instant::now();
    let mut buf = [0u8; 16];
    assert_eq!(first.read(&mut buf).expect("EOF, not a timeout"), 0);
    assert!(started.elapsed() < Duration::from_secs(12));
    // Everyone is served again once the idle clients are gone.
    wait_until("/healthz answers", Duration::from_secs(30), || {
        healthz_within(&agent, Duration::from_secs(2))
    });
    drop(idle);
}

#[test]
fn removing_a_freeze_rule_thaws_what_it_froze() {
    require_root();
    let (agent, state, audit) = agent_with_files(&[]);
    let cgroup = TestCgroup::new("unfreeze");
    let tmpfs = Tmpfs::new();
    let dir = tmpfs.sub("files");
    let (ok, text) = limit(
        &agent,
        &["set", cgroup.path(), "--max", "2M", "--action", "freeze"],
    );
    assert!(ok, "{text}");
    let workload = cgroup.hold(&["file-loop", &dir, "10000"]);
    wait_until("frozen", Duration::from_secs(30), || frozen(&cgroup));
    let (ok, text) = limit(&agent, &["rm", cgroup.path()]);
    assert!(ok, "{text}");
    wait_until("thawed", Duration::from_secs(5), || !frozen(&cgroup));
    let records: Vec<AuditRecord> = get_json(agent.addr(), "/api/v1/enforcement").expect("audit");
    let thaw = records
        .iter()
        .find(|r| r.action == "thaw")
        .unwrap_or_else(|| panic!("no thaw record: {records:#?}"));
    assert_eq!(thaw.outcome, "done");
    assert!(
        thaw.by
            .as_deref()
            .is_some_and(|b| b.contains("unix socket")),
        "{thaw:?}"
    );
    drop(workload);
    let _ = std::fs::remove_file(state);
    let _ = std::fs::remove_file(audit);
}

#[test]
fn bad_config_files_and_closed_outputs_are_handled() {
    let started = Instant::now();
    let out = kmemcg(&["agent", "--check-config", "--config", "/dev/zero"]);
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("not a regular file"),
        "{}",
        output_text(&out)
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let config = scratch("twice.toml");
    std::fs::write(
        &config,
        "[[limits.rule]]\npath = \"/kmemcg-test-a\"\nmax = \"8M\"\naction = \"notify\"\n\
         [[limits.rule]]\npath = \"/kmemcg-test-a\"\nmax = \"9M\"\naction = \"kill\"\n",
    )
    .expect("config");
    let out = kmemcg(&[
        "agent",
        "--check-config",
        "--config",
        config.to_str().expect("utf-8"),
    ]);
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("two rules"),
        "{}",
        output_text(&out)
    );
    let _ = std::fs::remove_file(config);
    // stdout a pipe nobody reads: no panic (exit 101).
    let mut fds = [0; 2];
    // SAFETY: a valid array of two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: our own descriptors; the write end is handed to the child.
    let status = unsafe {
        libc::close(fds[0]);
        Command::new(kmemcg_bin())
            .args(["agent", "--check-config"])
            .stdout(std::process::Stdio::from(
                std::os::fd::OwnedFd::from_raw_fd(fds[1]),
            ))
            .stderr(std::process::Stdio::null())
            .status()
            .expect("kmemcg")
    };
    assert_ne!(status.code(), Some(101), "panicked on a closed stdout");
}

#[test]
fn pinning_leaves_other_tools_pins_alone() {
    require_root();
    let bpffs = Bpffs::new();
    let pin_dir = bpffs.pin_dir();
    let foreign = std::path::Path::new(&pin_dir).join("other-tool");
    std::fs::create_dir_all(&foreign).expect("another tool's directory in the pin dir");
    let agent = AgentProcess::start(&["--pin-dir", &pin_dir]);
    assert_eq!(agent.stop().code(), Some(0));
    let out = kmemcg(&["agent", "--unpin", "--pin-dir", &pin_dir]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(foreign.is_dir(), "--unpin removed another tool's directory");
    let left: Vec<String> = std::fs::read_dir(&pin_dir)
        .expect("the pin dir stays: it is not empty")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["other-tool"]);
    std::fs::remove_dir(&foreign).expect("cleaning up");
}

#[test]
fn a_full_map_does_not_let_a_cgroup_evade_its_limit() {
    require_root();
    let (agent, state, audit) = agent_with_files(&["--max-objects", "1024"]);
    let cgroup = TestCgroup::new("evade");
    if cgroup.kmem_usage().is_none() {
        eprintln!("no v1 memory cgroup here: no kernel figure to fall back on");
        return;
    }
    let tmpfs = Tmpfs::new();
    let (ok, text) = limit(
        &agent,
        &["set", cgroup.path(), "--max", "8M", "--action", "freeze"],
    );
    assert!(ok, "{text}");
    let workload = cgroup.hold(&["file-loop", &tmpfs.sub("files"), "10000"]);
    wait_until(
        "frozen on the kernel's figure",
        Duration::from_secs(30),
        || frozen(&cgroup),
    );
    let records: Vec<AuditRecord> = get_json(agent.addr(), "/api/v1/enforcement").expect("audit");
    let freeze = records
        .iter()
        .find(|r| r.action == "freeze")
        .unwrap_or_else(|| panic!("no freeze record: {records:#?}"));
    assert!(freeze.unreliable, "{freeze:?}");
    let usage = agent.cgroup(cgroup.path()).expect("listed");
    assert!(usage.unreliable, "{usage:#?}");
    assert!(
        usage.total_slab_bytes < 8 << 20,
        "kmemcg's own figure ({}) stays under the limit: the fallback acted",
        usage.total_slab_bytes
    );
    let metrics = reqwest::blocking::get(format!("http://{}/metrics", agent.addr()))
        .and_then(|r| r.text())
        .expect("metrics");
    assert!(
        metrics.contains("kmemcg_limit_figures_unreliable{"),
        "{metrics}"
    );
    let (ok, text) = limit(&agent, &["rm", cgroup.path()]);
    assert!(ok, "{text}");
    wait_until("thawed", Duration::from_secs(5), || !frozen(&cgroup));
    drop(workload);
    let _ = std::fs::remove_file(state);
    let _ = std::fs::remove_file(audit);
}
