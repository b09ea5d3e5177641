//! The shipped deployments, checked by the tools an operator would use: the manifests (and the
//! enforcement overlay as kustomize renders it) against the Kubernetes schemas, the systemd
//! unit and its enforcement drop-in with systemd-analyze; and the agent's refusals in the
//! namespaces a container gives it (a private PID namespace, a private cgroup namespace).
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use kmemcg_tests::{AgentProcess, TestCgroup, kmemcg_bin, require_root};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn run(cmd: &mut Command) -> Output {
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e} (cargo xtask setup installs it)"));
    assert!(output.status.success(), "{cmd:?} failed: {}", text(&output));
    output
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kmemcg-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

fn enforce_overlay() -> String {
    let out = run(Command::new("kubectl")
        .arg("kustomize")
        .arg(repo("deploy/kubernetes-enforce")));
    String::from_utf8(out.stdout).expect("UTF-8")
}

#[test]
fn manifests_validate_for_kubernetes_1_30_to_1_37() {
    let dir = scratch("manifests");
    let rendered = dir.join("kmemcg-enforce.yaml");
    std::fs::write(&rendered, enforce_overlay()).expect("writing the rendered overlay");
    let files = [
        repo("deploy/kubernetes/kmemcg.yaml"),
        repo("deploy/kubernetes/unpin.yaml"),
        rendered.clone(),
    ];
    for minor in 30..=37 {
        let out = run(Command::new("kubernetes-validate")
            .args(["--strict", "--no-warn", "-k", &format!("1.{minor}.0")])
            .args(&files));
        let report = text(&out);
        assert_eq!(
            report.matches(" passed for resource ").count(),
            11,
            "Kubernetes 1.{minor}: {report}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// What the variants must say, in the text an operator reads (kubectl would apply it as is).
#[test]
fn the_variants_grant_what_they_need_and_no_more() {
    let base = std::fs::read_to_string(repo("deploy/kubernetes/kmemcg.yaml")).expect("base");
    let tag = format!("image: ghcr.io/kmemcg/kmemcg:{}", env!("CARGO_PKG_VERSION"));
    let unpin = std::fs::read_to_string(repo("deploy/kubernetes/unpin.yaml")).expect("unpin");
    assert!(base.contains(&tag) && unpin.contains(&tag), "{tag}");
    for needed in [
        "recursiveReadOnly: Enabled",
        "path: /run/kmemcg, type: DirectoryOrCreate",
        "path: /var/lib/kmemcg, type: DirectoryOrCreate",
        "readOnlyRootFilesystem: true",
        "add: [\"BPF\", \"PERFMON\", \"SYSLOG\"]",
        "pod-security.kubernetes.io/enforce: privileged",
        "kind: ResourceQuota",
        "values: [\"system-node-critical\"]",
        "priorityClassName: system-node-critical",
    ] {
        assert!(base.contains(needed), "kmemcg.yaml lacks `{needed}`");
    }
    // No write token: the TCP port serves reads only.
    assert!(
        !base.contains("write_token"),
        "the DaemonSet must not accept writes over TCP"
    );
    assert!(!base.contains("hostPID"));

    let enforce = enforce_overlay();
    for needed in ["hostPID: true", "- SYSLOG", "- KILL", "readOnly: false"] {
        assert!(
            enforce.contains(needed),
            "the overlay lacks `{needed}`: {enforce}"
        );
    }
    assert!(!enforce.contains("recursiveReadOnly"), "{enforce}");
    assert!(!enforce.contains("privileged: true") && !enforce.contains("SYS_ADMIN"));

    let monitor = std::fs::read_to_string(repo("deploy/kubernetes/servicemonitor.yaml"))
        .expect("servicemonitor.yaml");
    assert_eq!(monitor.matches("release: kube-prometheus-stack").count(), 2);
    for referenced in [
        "deploy/prometheus/scrape-kubernetes.yaml",
        "deploy/prometheus/kmemcg-alerts.yaml",
    ] {
        assert!(
            monitor.contains(referenced) && repo(referenced).exists(),
            "{referenced}"
        );
    }
}

/// `to` as a path relative to `from` (kustomize refuses absolute resource paths).
fn relative_from(from: &Path, to: &Path) -> PathBuf {
    let (from, to) = (
        from.canonicalize().expect("from"),
        to.canonicalize().expect("to"),
    );
    let mut relative = PathBuf::new();
    for _ in from.components().skip(1) {
        relative.push("..");
    }
    relative.join(to.strip_prefix("/").expect("absolute"))
}

/// A private registry is one `images:` entry in an overlay of the operator's own: the image
/// of the DaemonSet changes, in both variants, and nothing else names the old one.
#[test]
fn an_overlay_points_both_variants_at_a_private_registry() {
    for variant in ["deploy/kubernetes", "deploy/kubernetes-enforce"] {
        let dir = scratch("registry-overlay");
        let overlay = format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  \
             - {}\nimages:\n  - name: ghcr.io/kmemcg/kmemcg\n    \
             newName: registry.example.com/infra/kmemcg\n    newTag: \"9.9.9\"\n",
            relative_from(&dir, &repo(variant)).display()
        );
        std::fs::write(dir.join("kustomization.yaml"), overlay).expect("overlay");
        let out = run(Command::new("kubectl").arg("kustomize").arg(&dir));
        let rendered = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            rendered
                .matches("image: registry.example.com/infra/kmemcg:9.9.9")
                .count(),
            1,
            "{variant}: {rendered}"
        );
        assert!(!rendered.contains("ghcr.io"), "{variant}: {rendered}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The unit with ExecStart pointing at the built binary (systemd-analyze verify checks that it
/// exists), alone and with the drop-in; the exposure score of each.
fn verify_unit(with_drop_in: bool) -> f64 {
    let dir = scratch(if with_drop_in { "unit-enforce" } else { "unit" });
    let unit = std::fs::read_to_string(repo("deploy/systemd/kmemcg.service")).expect("unit");
    let unit = unit.replace("/usr/local/bin/kmemcg", &kmemcg_bin().display().to_string());
    let path = dir.join("kmemcg.service");
    std::fs::write(&path, unit).expect("writing the unit");
    if with_drop_in {
        let drop_in = dir.join("kmemcg.service.d");
        std::fs::create_dir_all(&drop_in).expect("drop-in directory");
        std::fs::copy(
            repo("deploy/systemd/kmemcg.service.d/enforce.conf"),
            drop_in.join("enforce.conf"),
        )
        .expect("copying the drop-in");
    }
    let verify = run(Command::new("systemd-analyze").arg("verify").arg(&path));
    assert!(text(&verify).trim().is_empty(), "{}", text(&verify));
    let security = run(Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&path));
    let report = text(&security);
    let _ = std::fs::remove_dir_all(&dir);
    if with_drop_in {
        assert!(
            report.contains("ProtectControlGroups=") && report.contains("CAP_KILL"),
            "the drop-in was not read: {report}"
        );
    }
    report
        .lines()
        .find_map(|l| l.split("exposure level for kmemcg.service: ").nth(1))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {report}"))
}

#[test]
fn the_unit_and_its_enforcement_drop_in_verify() {
    let unit = std::fs::read_to_string(repo("deploy/systemd/kmemcg.service")).expect("unit");
    for needed in [
        "StateDirectory=kmemcg",
        "RuntimeDirectory=kmemcg",
        "ProtectControlGroups=yes",
    ] {
        assert!(unit.contains(needed), "the unit lacks {needed}");
    }
    let base = verify_unit(false);
    let enforcing = verify_unit(true);
    eprintln!("systemd-analyze security: {base} (observing), {enforcing} (enforcing)");
    assert!(base <= 2.2, "the observing unit's exposure is {base}");
    assert!(
        enforcing <= 2.5,
        "the enforcing unit's exposure is {enforcing}"
    );
}

fn config_with_rule(name: &str, path: &str, action: &str) -> PathBuf {
    let dir = scratch(name);
    let file = dir.join("agent.toml");
    std::fs::write(
        &file,
        format!("[[limits.rule]]\npath = \"{path}\"\nmax = \"1M\"\naction = \"{action}\"\n"),
    )
    .expect("writing a config");
    file
}

/// In a PID namespace of its own (a pod without hostPID) a signal would reach pid 0, the
/// agent's own process group: signal rules are refused with the reason; others are fine.
#[test]
fn in_a_private_pid_namespace_signal_rules_are_refused_with_the_reason() {
    require_root();
    let target = TestCgroup::new("pidns");
    let signal = config_with_rule("pidns-signal", target.path(), "signal");
    let freeze = config_with_rule("pidns-freeze", target.path(), "freeze");
    let check = |config: &Path, unshare: bool| {
        let mut cmd = if unshare {
            let mut c = Command::new("unshare");
            c.args(["--pid", "--fork", "--kill-child"])
                .arg(kmemcg_bin());
            c
        } else {
            Command::new(kmemcg_bin())
        };
        cmd.args(["agent", "--check-config", "--config"])
            .arg(config)
            .output()
            .expect("running kmemcg")
    };
    let refused = check(&signal, true);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    let err = text(&refused);
    assert!(
        err.contains("refusing the signal action") && err.contains("hostPID"),
        "{err}"
    );
    let accepted = check(&freeze, true);
    assert!(accepted.status.success(), "{}", text(&accepted));
    let host = check(&signal, false);
    assert!(host.status.success(), "{}", text(&host));
    for config in [signal, freeze] {
        let _ = std::fs::remove_dir_all(config.parent().expect("dir"));
    }
}

/// In a private cgroup namespace /proc/self/cgroup says `/`: the agent still finds (and
/// protects) its real cgroup in the host's hierarchy.
#[test]
fn in_a_private_cgroup_namespace_the_agent_protects_its_own_cgroup() {
    require_root();
    let home = TestCgroup::new("cgns");
    let config = config_with_rule("cgns", home.path(), "kill");
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec unshare --cgroup \"$0\" agent --check-config --config \"$1\"",
        home.v2_dir().display()
    );
    let output = Command::new("sh")
        .args(["-c", &script])
        .arg(kmemcg_bin())
        .arg(&config)
        .output()
        .expect("running kmemcg in a cgroup namespace");
    let err = text(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("refusing a limit on {}", home.path()))
            && err.contains("the agent runs in"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(config.parent().expect("dir"));
}

/// The capabilities the shipped deployments grant the agent (lower case, without `CAP_`): the
/// systemd unit's ambient set, which must be the DaemonSet's.
fn shipped_capabilities() -> Vec<String> {
    let unit = std::fs::read_to_string(repo("deploy/systemd/kmemcg.service")).expect("unit");
    let mut from_unit: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .expect("AmbientCapabilities= in the unit")
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_lowercase())
        .collect();
    let base = std::fs::read_to_string(repo("deploy/kubernetes/kmemcg.yaml")).expect("base");
    let mut from_daemonset: Vec<String> = base
        .lines()
        .find_map(|l| l.trim().strip_prefix("add: ["))
        .expect("capabilities to add in the DaemonSet")
        .trim_end_matches(']')
        .split(',')
        .map(|c| c.trim().trim_matches('"').to_lowercase())
        .collect();
    from_unit.sort();
    from_daemonset.sort();
    assert_eq!(
        from_unit, from_daemonset,
        "the unit and the DaemonSet differ"
    );
    from_unit
}

/// The agent as uid 0 with exactly `caps` (bounding set, nothing inheritable), as the unit
/// and the DaemonSet run it.
fn agent_with(caps: &[String]) -> AgentProcess {
    let bounding = format!(
        "--bounding-set=-all{}",
        caps.iter().map(|c| format!(",+{c}")).collect::<String>()
    );
    let agent =
        AgentProcess::try_start_wrapped(&["setpriv", &bounding, "--inh-caps=-all", "--"], &[])
            .unwrap_or_else(|log| panic!("the agent with {caps:?}: {log}"));
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).expect("status");
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .expect("CapEff");
    assert_eq!(
        effective.count_ones() as usize,
        caps.len(),
        "{caps:?}: CapEff {effective:x}"
    );
    agent
}

/// With the shipped capabilities every correction that depends on kernel addresses is in
/// force; without CAP_SYSLOG (the addresses read as 0) the status says which one is off and
/// what to grant.
#[test]
fn with_the_shipped_capabilities_the_corrections_are_in_force() {
    require_root();
    let shipped = shipped_capabilities();
    assert!(shipped.iter().any(|c| c == "syslog"), "{shipped:?}");
    let agent = agent_with(&shipped);
    let corrections = agent.status().corrections;
    let log = agent.log_text();
    drop(agent);
    for (name, correction) in [
        (
            "owner_vectors_excluded",
            &corrections.owner_vectors_excluded,
        ),
        ("memory_map_bases", &corrections.memory_map_bases),
        ("inventory", &corrections.inventory),
        ("sweep", &corrections.sweep),
    ] {
        assert!(correction.in_force, "{name}: {correction:?}\n{log}");
        assert_eq!(correction.reason, None, "{name}");
    }

    let without_syslog: Vec<String> = shipped.into_iter().filter(|c| c != "syslog").collect();
    let agent = agent_with(&without_syslog);
    let corrections = agent.status().corrections;
    let off = corrections.owner_vectors_excluded;
    assert!(!off.in_force, "{off:?}");
    let why = off.reason.unwrap_or_default();
    assert!(
        why.contains("/proc/kallsyms") && why.contains("CAP_SYSLOG"),
        "{why}"
    );
    assert!(agent.log_text().contains(&why), "the log does not say it");
}
