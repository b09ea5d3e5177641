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
    AgentProcess, Bpffs, OTHER_UID, TestCgroup, Tmpfs, as_other_user, get_json, kmemcg, kmemcg_bin,
    require_root, scratch, scratch_dir,
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
    assert!(
        text.contains(&socket) && text.contains("Permission denied"),
        "{text}"
    );
    // As nobody over TCP (--addr alone): the agent refuses.
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
        .args(["--addr", &addr])
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
    // Frozen near the limit by the kernel's figure: the full map let nothing past it. (Which
    // figure crossed first depends on how much the table dropped: the ledger counts the
    // files' accounted objects whatever the table's state.)
    let kernel = cgroup.kmem_usage().expect("kmem usage");
    assert!(
        kernel < 12 << 20,
        "the kernel charges {kernel} B against a limit of 8 MiB: {usage:#?}"
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

fn mode_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .mode()
        & 0o7777
}

fn chown_to_other(path: &std::path::Path) {
    std::os::unix::fs::chown(path, Some(OTHER_UID), Some(OTHER_UID))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

/// Issue case 7: bpffs is world-writable (1777). Another user can neither plant the pin
/// directory beforehand, nor lock the agent out, nor swap the pinned maps' directory.
#[test]
fn a_pin_dir_on_a_world_writable_bpffs_is_the_agents_alone() {
    require_root();
    let bpffs = Bpffs::new();
    let pin_dir = PathBuf::from(bpffs.pin_dir());
    let pin = pin_dir.to_str().expect("utf-8").to_string();
    assert_eq!(
        mode_of(pin_dir.parent().expect("mount")),
        0o1777,
        "bpffs is mounted world-writable, as on hosts"
    );
    // A pin directory another user made beforehand is refused, with what to do.
    let made = as_other_user(std::path::Path::new("mkdir"), &[&pin])
        .status()
        .expect("mkdir as nobody");
    assert!(made.success(), "nobody may mkdir on a 1777 bpffs");
    let refused = AgentProcess::try_start(&["--pin-dir", &pin])
        .err()
        .expect("an agent must refuse a pin directory another user made");
    assert!(
        refused.contains(&pin)
            && refused.contains("owned by uid 65534")
            && refused.contains("rm -r"),
        "{refused}"
    );
    std::fs::remove_dir(&pin_dir).expect("removing nobody's directory");

    // The agent's own: 0700, the layout directory too.
    let agent = AgentProcess::start(&["--pin-dir", &pin]);
    let layout = std::fs::read_dir(&pin_dir)
        .expect("pin dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("layout-"))
        })
        .expect("a layout directory");
    assert_eq!(mode_of(&pin_dir), 0o700);
    assert_eq!(mode_of(&layout), 0o700);
    assert_eq!(agent.stop().code(), Some(0));
    let layout_text = layout.to_str().expect("utf-8").to_string();

    // Another user cannot take the agent's lock (before: a flock on the directory, which
    // anyone could open, kept the next agent from starting)...
    let mut holder = as_other_user(
        std::path::Path::new("flock"),
        &["-n", &layout_text, "sleep", "30"],
    )
    .stderr(std::process::Stdio::null())
    .spawn()
    .expect("flock as nobody");
    std::thread::sleep(Duration::from_millis(300));
    // ...nor swap the layout directory for an empty one.
    let moved = as_other_user(
        std::path::Path::new("mv"),
        &[&layout_text, &format!("{layout_text}.old")],
    )
    .stderr(std::process::Stdio::null())
    .status()
    .expect("mv as nobody");
    assert!(!moved.success(), "nobody moved the pinned maps away");
    let again = AgentProcess::try_start(&["--pin-dir", &pin]);
    let _ = holder.kill();
    let _ = holder.wait();
    let again = again.unwrap_or_else(|log| panic!("another user locked the agent out: {log}"));
    let log = again.log_text();
    assert!(
        log.contains("reused") && log.contains("LIVE_OBJECTS"),
        "the restarted agent did not reuse its maps: {log}"
    );
    assert_eq!(again.stop().code(), Some(0));
    let out = kmemcg(&["agent", "--unpin", "--pin-dir", &pin]);
    assert!(out.status.success(), "{}", output_text(&out));
}

/// Issue case 8: whoever owns the token file can read the token; another user's is refused.
/// A token file of two lines is refused too, and a missing token is `unauthorized` (401).
#[test]
fn a_token_file_of_another_user_is_refused() {
    require_root();
    let token_file = scratch("token");
    std::fs::write(&token_file, "0123456789abcdef0123456789abcdef\n").expect("token");
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("mode");
    chown_to_other(&token_file);
    let token = token_file.to_str().expect("utf-8");
    let refused = AgentProcess::try_start(&["--write-token-file", token])
        .err()
        .expect("an agent must refuse another user's token file");
    assert!(
        refused.contains(token) && refused.contains("owned by uid 65534"),
        "{refused}"
    );
    std::os::unix::fs::chown(&token_file, Some(0), Some(0)).expect("chown");
    std::fs::write(
        &token_file,
        "0123456789abcdef0123456789abcdef\nffffffffffffffffffffffffffffffff\n",
    )
    .expect("two tokens");
    let refused = AgentProcess::try_start(&["--write-token-file", token])
        .err()
        .expect("an agent must refuse a token file of two lines");
    assert!(refused.contains("2 non-empty lines"), "{refused}");
    std::fs::write(&token_file, "0123456789abcdef0123456789abcdef\n").expect("token");
    let agent = AgentProcess::start(&["--write-token-file", token]);
    let posted = reqwest::blocking::Client::new()
        .post(format!("http://{}/api/v1/limits", agent.addr()))
        .json(&serde_json::json!({"path": "/kmemcg-test-none", "max": 1, "action": "notify"}))
        .send()
        .expect("an answer");
    assert_eq!(posted.status(), 401);
    let body: serde_json::Value = posted.json().expect("JSON");
    assert_eq!(body["kind"], "unauthorized", "{body}");
    let _ = std::fs::remove_file(&token_file);
}

/// A socket at `dir/kmemcg.sock` answering every request as if a rule had been set, made by
/// root then given to [`OTHER_UID`] with its directory: another user's impostor.
fn impostor_socket(dir: &std::path::Path) -> PathBuf {
    use std::io::Write as _;
    let path = dir.join("kmemcg.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    chown_to_other(&path);
    chown_to_other(dir);
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let Ok((mut stream, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_read_timeout(Some(Duration::from_millis(300)));
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let body = r#"{"source":"runtime","rule":{"path":"/kmemcg-test-victim","max":1,"action":"kill"}}"#;
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    path
}

/// Issue case 9: a socket directory another user made (or may write to) is refused by the
/// agent, and root's `kmemcg limit` refuses to talk to a socket another user owns.
#[test]
fn a_socket_directory_of_another_user_is_refused() {
    require_root();
    // The agent: refused in another user's directory, and in one everyone may write to.
    let theirs = scratch_dir("their-socket-dir");
    chown_to_other(&theirs);
    let socket = theirs.join("kmemcg.sock");
    let socket_text = socket.to_str().expect("utf-8").to_string();
    let refused = AgentProcess::try_start(&["--socket", &socket_text])
        .err()
        .expect("an agent must refuse a socket directory another user owns");
    assert!(
        refused.contains(theirs.to_str().expect("utf-8")) && refused.contains("owned by uid 65534"),
        "{refused}"
    );
    let open = scratch_dir("open-socket-dir");
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o1777))
        .expect("chmod");
    let open_socket = open.join("kmemcg.sock");
    let refused = AgentProcess::try_start(&["--socket", open_socket.to_str().expect("utf-8")])
        .err()
        .expect("an agent must refuse a world-writable socket directory");
    assert!(
        refused.contains("may be written by other users"),
        "{refused}"
    );
    std::fs::remove_dir_all(&open).expect("cleanup");

    // The CLI, as root: another user's socket is not the agent's, whatever it answers.
    let fake_dir = scratch_dir("impostor");
    let fake = impostor_socket(&fake_dir);
    let fake_text = fake.to_str().expect("utf-8");
    let out = kmemcg(&[
        "limit",
        "set",
        "/kmemcg-test-victim",
        "--max",
        "1",
        "--action",
        "kill",
        "--socket",
        fake_text,
    ]);
    let text = output_text(&out);
    assert!(
        !out.status.success(),
        "root's kmemcg limit believed an impostor: {text}"
    );
    assert!(
        text.contains("owned by uid 65534") && text.contains("--socket-owner"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&theirs);
    let _ = std::fs::remove_dir_all(&fake_dir);
}

/// Issue case 10: `--addr` means TCP and `--socket` that socket, never another agent's socket
/// or TCP in their place.
#[test]
fn the_cli_uses_the_endpoint_it_is_given() {
    require_root();
    let victim = TestCgroup::new("endpoint");
    let first = AgentProcess::start(&[]);
    let second = AgentProcess::start(&[]);
    let second_addr = second.addr().to_string();
    // --addr of the second, with the first's socket in the environment: TCP to the second
    // (which refuses changes without a token), nothing on the first.
    let out = Command::new(kmemcg_bin())
        .args([
            "limit",
            "set",
            victim.path(),
            "--max",
            "1G",
            "--action",
            "notify",
            "--addr",
            &second_addr,
        ])
        .env("KMEMCG_SOCKET", first.socket())
        .output()
        .expect("kmemcg");
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains(&second_addr) && text.contains("TCP"),
        "{text}"
    );
    for agent in [&first, &second] {
        let rules: Vec<LimitRule> = get_json(agent.addr(), "/api/v1/limits").expect("rules");
        assert!(
            rules.is_empty(),
            "a rule landed on an agent not asked: {rules:?}"
        );
    }
    // A missing socket is an error about that socket, not a change tried over TCP.
    let out = kmemcg(&[
        "limit",
        "set",
        victim.path(),
        "--max",
        "1G",
        "--action",
        "notify",
        "--addr",
        &second_addr,
        "--socket",
        "/missing.sock",
    ]);
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("/missing.sock") && !text.contains("not accepted over TCP"),
        "{text}"
    );
    // --socket alone: reads go there too.
    let socket = second.socket().to_str().expect("utf-8").to_string();
    let out = kmemcg(&["limit", "list", "--socket", &socket]);
    assert!(out.status.success(), "{}", output_text(&out));
    drop(first);
    drop(second);
}

/// Issue case 10, continued: two agents never share a state directory (before, every agent
/// used /var/lib/kmemcg's files, unlocked); a temporary file a killed save left there is
/// removed at start.
#[test]
fn two_agents_never_share_a_state_directory() {
    require_root();
    let state = scratch_dir("shared-state");
    let state_text = state.to_str().expect("utf-8").to_string();
    let mut gone = Command::new("true").spawn().expect("true");
    let dead = gone.id();
    gone.wait().expect("waited");
    let stale = state.join(format!("limits.json.{dead}.tmp"));
    std::fs::write(&stale, "{\"rules\": [").expect("a half-written save");
    let holder =
        AgentProcess::try_start_on_state(&state, &[]).unwrap_or_else(|log| panic!("{log}"));
    let second = AgentProcess::try_start_on_state(&state, &[]);
    let refused = second
        .err()
        .expect("a second agent on the same state directory must refuse to start");
    assert!(
        refused.contains(&state_text)
            && refused.contains("in use by another kmemcg agent")
            && refused.contains(&format!("pid {}", holder.pid()))
            && refused.contains("--state-dir"),
        "{refused}"
    );
    assert!(
        !stale.exists(),
        "the temporary file of a killed save is left"
    );
    drop(holder);
    let _ = std::fs::remove_dir_all(&state);
}

/// The smaller refusals, each through the real binary: a directory as the socket, an absurd
/// interval, a stopping signal, a bidi character in a path, and globs in limits.protected.
#[test]
fn small_refusals_are_clear() {
    let dir = scratch_dir("socket-is-a-dir");
    let out = kmemcg(&[
        "agent",
        "--check-config",
        "--socket",
        dir.to_str().expect("utf-8"),
    ]);
    let text = output_text(&out);
    assert!(
        !out.status.success() && text.contains("is a directory"),
        "{text}"
    );
    let _ = std::fs::remove_dir(&dir);

    let config = scratch("interval.toml");
    std::fs::write(&config, "interval_seconds = 1e-300\n").expect("config");
    let out = kmemcg(&[
        "agent",
        "--check-config",
        "--config",
        config.to_str().expect("utf-8"),
    ]);
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.len() < 250 && text.contains("between 0.05 and 3600"),
        "{} characters: {text}",
        text.len()
    );

    for signal in ["SIGSTOP", "SIGCONT", "SIGTSTP", "SIGTTIN", "SIGTTOU"] {
        let out = kmemcg(&[
            "limit",
            "set",
            "/kmemcg-test-sig",
            "--max",
            "1G",
            "--action",
            "signal",
            "--signal",
            signal,
            "--socket",
            "/missing.sock",
        ]);
        let text = output_text(&out);
        assert!(
            !out.status.success() && text.contains("stops or continues"),
            "{signal}: {text}"
        );
    }
    let out = kmemcg(&[
        "limit",
        "set",
        "/kmemcg-test-\u{202E}gpj.exe",
        "--max",
        "1G",
        "--action",
        "notify",
        "--socket",
        "/missing.sock",
    ]);
    let text = output_text(&out);
    assert!(!out.status.success() && text.contains("U+202E"), "{text}");

    std::fs::write(
        &config,
        "[limits]\nprotected = [\"/kmemcg-test-db-*\"]\n\
         [[limits.rule]]\npath = \"/kmemcg-test-db-1\"\nmax = \"8M\"\naction = \"kill\"\n",
    )
    .expect("config");
    let out = kmemcg(&[
        "agent",
        "--check-config",
        "--config",
        config.to_str().expect("utf-8"),
    ]);
    let text = output_text(&out);
    assert!(
        !out.status.success() && text.contains("protected by the glob /kmemcg-test-db-*"),
        "{text}"
    );
    let _ = std::fs::remove_file(&config);
}
