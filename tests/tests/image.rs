//! The OCI image, run as the DaemonSet runs it: built by `cargo xtask image`, started by podman
//! (runc) with the privileges, mounts and namespaces that deploy/kubernetes (and the
//! enforcement overlay) give the pod, translated flag by flag from the manifests. Checks
//! /healthz, /readyz and /metrics over loopback, the corrections in force, the state directory
//! under a read-only root, what the read-only and the enforcing variants can do to a cgroup,
//! the agent's protection of its own container in a private cgroup namespace, the hint under a
//! seccomp profile that refuses bpf(), and the image's documented size.
//!
//! Substitutions, so that a test touches only what it made: the hostPaths that hold state
//! (/sys/fs/bpf, /run/kmemcg, /var/lib/kmemcg) become a private bpffs and scratch directories;
//! the container's cgroup is created under a test cgroup (`--cgroup-parent`); the pod network
//! is podman's bridge with the port published on 127.0.0.1.
#[path = "image/pod.rs"]
mod pod;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use kmemcg_tests::{TestCgroup, Tmpfs, binary, require_root};
use pod::{Pod, manifests, run};

/// Builds the image with `cargo xtask image` from the release binary the tests use (once per
/// run); returns its tag, the one the manifests name.
fn build_image() -> String {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(build).clone()
}

fn build() -> String {
    let started = Instant::now();
    let out = run(Command::new(binary("xtask")).args(["image", "--no-build"]));
    let tag = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .expect("the tag")
        .trim()
        .to_string();
    eprintln!("image {tag} built in {:?}", started.elapsed());
    assert_eq!(
        tag,
        format!("ghcr.io/kmemcg/kmemcg:{}", env!("CARGO_PKG_VERSION"))
    );
    check_documented_size(&tag);
    tag
}

/// The size docs/daemon.md gives ("No shell, no package manager; N MB.") is the image's, within
/// 10% (what podman reports, in MB of 10^6 bytes).
fn check_documented_size(tag: &str) {
    let out = run(Command::new("podman").args(["image", "inspect", "--format", "{{.Size}}", tag]));
    let bytes: f64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("the image's size");
    let docs = std::fs::read_to_string(pod::repo("docs/daemon.md")).expect("docs/daemon.md");
    let documented: f64 = docs
        .split("No shell, no package manager; ")
        .nth(1)
        .and_then(|rest| rest.split(" MB").next())
        .and_then(|n| n.parse().ok())
        .expect("the image's size in docs/daemon.md");
    let measured = bytes / 1e6;
    eprintln!("image size: {measured:.1} MB (documented: {documented} MB)");
    assert!(
        (measured - documented).abs() <= documented * 0.1,
        "docs/daemon.md says {documented} MB, the image is {measured:.1} MB"
    );
}

fn frozen(cgroup: &TestCgroup) -> bool {
    std::fs::read_to_string(cgroup.v2_dir().join("cgroup.events"))
        .unwrap_or_default()
        .lines()
        .any(|l| l == "frozen 1")
}

/// Kills the processes of a test cgroup when dropped: a frozen workload (which the agent would
/// freeze again after a thaw) cannot be told to exit.
struct KillOnDrop<'a>(&'a TestCgroup);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.v2_dir().join("cgroup.kill"), "1");
    }
}

fn wait_until(what: &str, pod: &Pod, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within 30 s\n{}",
            pod.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn limit_rule(path: &str, action: &str) -> String {
    format!("[[limits.rule]]\npath = \"{path}\"\nmax = \"1K\"\naction = \"{action}\"\n")
}

/// The observing DaemonSet: serves /healthz, /readyz and /metrics (the host's cgroups, seen
/// from a private cgroup namespace), keeps audit records in its state directory under a
/// read-only root, cannot freeze through its recursively read-only cgroup mount, and never
/// selects its own container.
#[test]
fn the_image_runs_with_the_daemonsets_privileges_and_mounts() {
    require_root();
    let started = Instant::now();
    let image = build_image();
    let docs = manifests(false);
    let parent = TestCgroup::new("pods");
    let victim = TestCgroup::under(&parent, "victim");
    let pods_glob = format!("{}/*", parent.path());
    let config = format!(
        "{}{}",
        limit_rule(victim.path(), "freeze"),
        limit_rule(&pods_glob, "notify")
    );
    let pod = Pod::create(&docs, &image, &parent, &config, false);
    let own = format!("{}/libpod-{}", parent.path(), pod.id());
    pod.start();
    pod.wait_ready();
    assert_eq!(pod.text("/healthz").trim(), "ok");
    // The DaemonSet's capabilities are enough for every correction.
    let status: serde_json::Value =
        serde_json::from_str(&pod.text("/api/v1/status")).expect("status JSON");
    for correction in [
        "owner_vectors_excluded",
        "memory_map_bases",
        "inventory",
        "sweep",
    ] {
        let state = &status["corrections"][correction];
        assert_eq!(state["in_force"], true, "{correction}: {state}");
    }

    let tmpfs = Tmpfs::new();
    let _held = victim.hold(&["idle"]);
    let _kill = KillOnDrop(&victim);
    victim.run(&["create-files", &tmpfs.sub("files"), "500"]);
    let series = format!("kmemcg_cgroup_slab_bytes{{cgroup=\"{}\"", victim.path());
    wait_until("the victim's series in /metrics", &pod, || {
        pod.text("/metrics").contains(&series)
    });
    let metrics = pod.text("/metrics");
    assert!(metrics.contains("kmemcg_build_info{"), "{metrics}");

    // The freeze is decided, and fails on the read-only mount (also its unified submount).
    wait_until("a failed freeze of the victim", &pod, || {
        pod.records().iter().any(|r| {
            r["cgroup"] == victim.path()
                && r["action"] == "freeze"
                && r["outcome"]
                    .as_str()
                    .is_some_and(|o| o.contains("Read-only"))
        })
    });
    assert!(!frozen(&victim), "the read-only variant froze a cgroup");
    // The glob notified the victim in the same pass, never the agent's own container.
    let records = pod.records();
    assert!(
        records
            .iter()
            .any(|r| r["cgroup"] == victim.path() && r["action"] == "notify"),
        "{records:?}"
    );
    assert!(
        !records.iter().any(|r| r["cgroup"] == own.as_str()),
        "the agent selected its own container {own}: {records:?}"
    );
    // Audit records reach the state directory despite the read-only root.
    let audit = std::fs::read_to_string(pod.state_dir.0.join("enforcement.jsonl"))
        .unwrap_or_else(|e| panic!("the audit file in the state directory: {e}"));
    assert!(audit.contains(victim.path()), "{audit}");
    // `kubectl exec ds/kmemcg -- kmemcg stat`: the CLI in the image reads the agent.
    let out = run(Command::new("podman").args(["exec", &pod.name, "kmemcg", "stat"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("TOTAL"));

    // SIGTERM (podman stop, as the kubelet does): a clean exit.
    run(Command::new("podman").args(["stop", "--time", "15", &pod.name]));
    assert_eq!(pod.wait(), 0, "{}", pod.logs());
    eprintln!("observing DaemonSet checked in {:?}", started.elapsed());
}

/// The enforcement overlay: freezes through the writable cgroup mount, signals a process of
/// another cgroup (host PID namespace), and still never selects its own container.
#[test]
fn the_enforcing_variant_freezes_and_signals_but_never_its_own_container() {
    require_root();
    let started = Instant::now();
    let image = build_image();
    let docs = manifests(true);
    let parent = TestCgroup::new("pods");
    let frozen_victim = TestCgroup::under(&parent, "freeze");
    let signalled = TestCgroup::under(&parent, "signal");
    let config = format!(
        "{}{}{}",
        limit_rule(frozen_victim.path(), "freeze"),
        limit_rule(signalled.path(), "signal"),
        limit_rule(&format!("{}/*", parent.path()), "notify"),
    );
    let pod = Pod::create(&docs, &image, &parent, &config, false);
    let own = format!("{}/libpod-{}", parent.path(), pod.id());
    pod.start();
    pod.wait_ready();

    let tmpfs = Tmpfs::new();
    let _held = frozen_victim.hold(&["idle"]);
    let _kill = KillOnDrop(&frozen_victim);
    let _target = signalled.hold(&["idle"]);
    frozen_victim.run(&["create-files", &tmpfs.sub("a"), "500"]);
    // The signal may end the allocating workload too: it is in the cgroup past its limit.
    signalled.run_until_signalled(&["create-files", &tmpfs.sub("b"), "500"]);
    wait_until("cgroup.events shows frozen 1", &pod, || {
        frozen(&frozen_victim)
    });
    let procs = signalled.v2_dir().join("cgroup.procs");
    wait_until("the signalled workload gone", &pod, || {
        std::fs::read_to_string(&procs).is_ok_and(|p| p.trim().is_empty())
    });
    let records = pod.records();
    assert!(
        records.iter().any(|r| r["cgroup"] == signalled.path()
            && r["action"] == "signal"
            && r["outcome"] == "done: 1 processes signalled"),
        "{records:?}"
    );
    assert!(
        !records.iter().any(|r| r["cgroup"] == own.as_str()),
        "the agent selected its own container {own}: {records:?}"
    );
    assert!(pod.running(), "{}", pod.logs());
    eprintln!("enforcing DaemonSet checked in {:?}", started.elapsed());
}

/// A rule naming the agent's own container (known only from outside: its cgroup namespace
/// shows it as `/`) stops it at start.
#[test]
fn a_rule_on_the_agents_own_container_is_refused_at_start() {
    require_root();
    let image = build_image();
    let docs = manifests(true);
    let parent = TestCgroup::new("pods");
    // The container's cgroup is /<parent>/libpod-<id>: the id is known once it is created,
    // and the config is read when it starts.
    let pod = Pod::create(&docs, &image, &parent, "", false);
    let own = format!("{}/libpod-{}", parent.path(), pod.id());
    let config = pod.config_dir.0.join("agent.toml");
    let text = std::fs::read_to_string(&config).expect("agent.toml");
    std::fs::write(&config, format!("{text}\n{}", limit_rule(&own, "kill"))).expect("rule");
    pod.start();
    assert_eq!(pod.wait(), 1, "{}", pod.logs());
    let logs = pod.logs();
    assert!(
        logs.contains(&format!("refusing a limit on {own}")) && logs.contains("agent itself"),
        "{logs}"
    );
}

/// Runtimes that allow bpf() only with CAP_SYS_ADMIN (podman's default profile, containerd
/// before 1.7): the agent says that seccomp refused bpf() and what to change.
#[test]
fn a_seccomp_profile_refusing_bpf_is_named_with_the_fix() {
    require_root();
    let image = build_image();
    let docs = manifests(false);
    let parent = TestCgroup::new("pods");
    let pod = Pod::create(&docs, &image, &parent, "", true);
    pod.start();
    assert_eq!(pod.wait(), 1, "{}", pod.logs());
    let logs = pod.logs();
    for part in ["bpf() system call was refused", "seccomp", "Unconfined"] {
        assert!(logs.contains(part), "`{part}` missing: {logs}");
    }
    assert!(!pod.run_dir.0.join("kmemcg.sock").exists());
}

/// Writes through `kubectl exec` (root in the container, the unix socket in /run/kmemcg);
/// the TCP port Prometheus reaches refuses them.
#[test]
fn writes_go_through_the_socket_and_tcp_refuses_them() {
    require_root();
    let image = build_image();
    let docs = manifests(false);
    let parent = TestCgroup::new("pods");
    let victim = TestCgroup::under(&parent, "victim");
    let pod = Pod::create(&docs, &image, &parent, "", false);
    pod.start();
    pod.wait_ready();
    assert!(pod.run_dir.0.join("kmemcg.sock").exists());
    let set = run(Command::new("podman").args([
        "exec",
        &pod.name,
        "kmemcg",
        "limit",
        "set",
        victim.path(),
        "--max",
        "64M",
        "--action",
        "notify",
    ]));
    assert!(set.status.success());
    let refused = reqwest::blocking::Client::new()
        .post(format!("http://127.0.0.1:{}/api/v1/limits", pod.port))
        .json(&serde_json::json!({"path": victim.path(), "max": "1M", "action": "kill"}))
        .send()
        .expect("POST /api/v1/limits");
    assert_eq!(refused.status().as_u16(), 403);
    let saved = std::fs::read_to_string(pod.state_dir.0.join("limits.json")).expect("limits.json");
    assert!(saved.contains(victim.path()), "{saved}");
}
