//! The production daemon against the real kernel and a real Prometheus: metrics scraped and
//! queried back, maps pinned across a restart, configuration errors and reloads, and the
//! deploy files checked by promtool.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use kmemcg_tests::{
    AgentProcess, Bpffs, TestCgroup, Tmpfs, cache_objects, free_addr, kmemcg,
    prometheus::{Prometheus, http_get, promtool},
    require_root, scratch_dir,
};

const WAIT: Duration = Duration::from_secs(20);
const FILES: u64 = 3000;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn metrics(agent: &AgentProcess) -> String {
    http_get(&format!("http://{}/metrics", agent.addr())).expect("GET /metrics")
}

/// The value of the sample of `name` whose labels include `cgroup="<path>"` and `extra`.
fn sample(text: &str, name: &str, path: &str, extra: &str) -> Option<f64> {
    let cgroup = format!("cgroup=\"{path}\"");
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| l.contains(&cgroup) && l.contains(extra))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn prometheus_scrapes_the_test_cgroups_series_with_the_right_values() {
    require_root();
    let agent = AgentProcess::start(&[]);
    let tmpfs = Tmpfs::new();
    let cgroup = TestCgroup::new("prometheus");
    let path = cgroup.path().to_string();
    cgroup.run(&["create-files", &tmpfs.sub("files"), &FILES.to_string()]);
    agent.wait_for(&path, WAIT, "the files' dentries", |u| {
        u.is_some_and(|u| cache_objects(u, &["dentry"]) >= FILES)
    });

    // The exposition passes promtool's linter, and names every kmemcg series the deploy
    // files use.
    let text = metrics(&agent);
    let lint = promtool(&["check", "metrics"], Some(&text));
    assert!(lint.trim().is_empty(), "promtool check metrics: {lint}");
    let exposed: BTreeSet<String> = metric_names(&text);
    for file in [
        "prometheus/kmemcg-alerts.yaml",
        "grafana/kmemcg-dashboard.json",
    ] {
        let content = std::fs::read_to_string(deploy(file)).expect("deploy file");
        // Limit and enforcement series exist only while rules do: checked, with rules, by
        // every_dashboard_and_rule_expression_returns_data.
        for name in metric_names(&content)
            .into_iter()
            .filter(|n| !n.starts_with("kmemcg_limit_") && !n.starts_with("kmemcg_enforcement_"))
        {
            assert!(
                exposed.contains(&name),
                "{file} uses {name}, which is not exported"
            );
        }
    }

    let prometheus = Prometheus::start(agent.addr());
    let selector = format!("{{cgroup=\"{path}\"}}");
    prometheus.wait_for("up{job=\"kmemcg\"}", "the agent scraped", |r| {
        r.first().is_some_and(|(_, v)| *v == 1.0)
    });
    // Files stay until the tmpfs goes: the agent's JSON and Prometheus agree exactly once a
    // scrape has happened after the last change.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let want = agent.cgroup(&path).expect("the test cgroup's usage");
        let got = prometheus.query(&format!("kmemcg_cgroup_slab_bytes{selector}"));
        if let [(labels, value)] = got.as_slice() {
            assert_eq!(labels["job"], "kmemcg");
            if *value == want.slab_bytes as f64 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus has {got:?}, the agent {} slab bytes for {path}",
            want.slab_bytes
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // A dentry is 192 bytes.
    let dentries = prometheus.query(&format!(
        "kmemcg_cgroup_cache_bytes{{cgroup=\"{path}\",cache=\"dentry\"}}"
    ));
    assert!(
        dentries
            .first()
            .is_some_and(|(_, v)| *v >= (FILES * 192) as f64),
        "{dentries:?}"
    );
    let build = prometheus.query("kmemcg_build_info");
    assert_eq!(build.len(), 1, "{build:?}");
    let process = prometheus.query("process_resident_memory_bytes{job=\"kmemcg\"}");
    assert!(process.first().is_some_and(|(_, v)| *v > 0.0));
}

#[test]
fn a_removed_cgroups_series_disappear_and_its_memory_counts_as_dying() {
    require_root();
    let agent = AgentProcess::start(&[]);
    let tmpfs = Tmpfs::new();
    let cgroup = TestCgroup::new("removed");
    let path = cgroup.path().to_string();
    cgroup.run(&["create-files", &tmpfs.sub("files"), &FILES.to_string()]);
    agent.wait_for(&path, WAIT, "the files' dentries", |u| {
        u.is_some_and(|u| cache_objects(u, &["dentry"]) >= FILES)
    });
    assert!(sample(&metrics(&agent), "kmemcg_cgroup_slab_bytes", &path, "").is_some());

    // Removed while its files still exist: its series go, the memory shows as dying.
    cgroup.remove();
    let deadline = Instant::now() + WAIT;
    loop {
        let text = metrics(&agent);
        let gone = sample(&text, "kmemcg_cgroup_slab_bytes", &path, "").is_none();
        let dying = text
            .lines()
            .find_map(|l| l.strip_prefix("kmemcg_dying_cgroup_bytes "))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        // ...charged to its nearest live ancestor, the root.
        let reparented = sample(&text, "kmemcg_cgroup_reparented_bytes", "/", "").unwrap_or(0.0);
        let held = (FILES * 192) as f64;
        if gone && dying >= held && reparented >= held {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "series of removed {path} still exported, or not dying and reparented: {}",
            text.lines()
                .filter(|l| l.starts_with("kmemcg_dying") || l.contains("cgroup=\"/\""))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(tmpfs);
}

/// `kmemcg_*` metric names in `text` (recording rules are `kmemcg:`, not matched).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("kmemcg_") {
        let start = i + pos;
        let boundary = start == 0
            || !(bytes[start - 1].is_ascii_alphanumeric()
                || bytes[start - 1] == b'_'
                || bytes[start - 1] == b':');
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(text.len(), |e| start + e);
        if boundary {
            names.insert(text[start..end].to_string());
        }
        i = end;
    }
    names
}

#[test]
fn objects_allocated_before_a_restart_are_uncharged_when_freed_after_it() {
    require_root();
    let bpffs = Bpffs::new();
    let pin_dir = bpffs.pin_dir();
    let tmpfs = Tmpfs::new();
    let owner = TestCgroup::new("restart");
    let deleter = TestCgroup::new("restart-deleter");
    let dir = tmpfs.sub("files");

    let first = AgentProcess::start(&["--pin-dir", &pin_dir]);
    owner.run(&["create-files", &dir, &FILES.to_string()]);
    first.wait_for(owner.path(), WAIT, "dentries before the restart", |u| {
        u.is_some_and(|u| cache_objects(u, &["dentry"]) >= FILES)
    });
    assert!(first.stop().success());

    let second = AgentProcess::start(&["--pin-dir", &pin_dir]);
    assert!(
        second.log_text().contains("reused") && second.log_text().contains("LIVE_OBJECTS"),
        "{}",
        second.log_text()
    );
    // The second agent knows the objects the first one saw...
    let before = second
        .cgroup(owner.path())
        .expect("the pinned counters carry the cgroup over");
    assert!(cache_objects(&before, &["dentry"]) >= FILES, "{before:#?}");
    // ...and uncharges them when they are freed.
    deleter.run(&["delete-files", &dir]);
    second.wait_for(
        owner.path(),
        WAIT,
        "dentries freed after the restart",
        |u| u.is_some_and(|u| cache_objects(u, &["dentry"]) < FILES / 20),
    );
    assert!(
        second
            .cgroup(owner.path())
            .is_some_and(|u| u.frees >= FILES)
    );

    // Stopping for good leaves nothing pinned.
    let refused = kmemcg(&["agent", "--unpin", "--pin-dir", &pin_dir]);
    assert!(!refused.status.success(), "unpinned under a running agent");
    assert!(stderr(&refused).contains("in use by another kmemcg agent"));
    assert!(second.stop().success());
    let unpinned = kmemcg(&["agent", "--unpin", "--pin-dir", &pin_dir]);
    assert!(unpinned.status.success(), "{}", stderr(&unpinned));
    assert!(!Path::new(&pin_dir).exists());
}

#[test]
fn an_incompatible_pinned_layout_is_reported_and_reset_starts_fresh() {
    require_root();
    let bpffs = Bpffs::new();
    let pin_dir = bpffs.pin_dir();
    let old = Path::new(&pin_dir).join("layout-00000000");
    std::fs::create_dir_all(&old).expect("an old layout's directory");

    let listen = free_addr().to_string();
    let output = kmemcg(&["agent", "--listen", &listen, "--pin-dir", &pin_dir]);
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.contains("layout-00000000") && err.contains("--reset"),
        "{err}"
    );
    assert!(
        old.exists(),
        "an incompatible layout must not be deleted silently"
    );

    let agent = AgentProcess::start(&["--pin-dir", &pin_dir, "--reset"]);
    assert!(!old.exists());
    assert!(agent.status().attached_hooks.len() >= 6);
    assert!(agent.stop().success());

    // Owners without their counters: refused too.
    let layout = std::fs::read_dir(&pin_dir)
        .expect("pin directory")
        .flatten()
        .next()
        .expect("the layout directory")
        .path();
    std::fs::remove_file(layout.join("CGROUP_CACHE_STATS")).expect("unpinning one map");
    let output = kmemcg(&["agent", "--listen", &listen, "--pin-dir", &pin_dir]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains("CGROUP_CACHE_STATS missing") && err.contains("--reset"),
        "{err}"
    );

    // Capacities cannot change under pinned maps.
    let fresh = AgentProcess::start(&["--pin-dir", &pin_dir, "--reset"]);
    assert!(fresh.stop().success());
    let output = kmemcg(&[
        "agent",
        "--listen",
        &listen,
        "--pin-dir",
        &pin_dir,
        "--max-objects",
        "4096",
    ]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains("capacity") && err.contains("max_objects"),
        "{err}"
    );
}

#[test]
fn bad_configs_are_rejected_with_file_key_and_reason() {
    let dir = scratch_dir("config");
    let cases = [
        (
            "unknown.toml",
            "listen = \"127.0.0.1:1\"\nmax_objets = 4096\n",
            &["line 2", "`max_objets`", "unknown field"][..],
        ),
        (
            "type.toml",
            "[metrics]\ntop_caches = \"five\"\n",
            &[
                "line 2",
                "`metrics.top_caches`",
                "invalid type",
                "expected an integer",
            ][..],
        ),
        (
            "negative.toml",
            "max_objects = -1\n",
            &["`max_objects`", "negative"][..],
        ),
        (
            "range.toml",
            "[metrics]\ncache_min_bytes = -4096\n",
            &["`metrics.cache_min_bytes`", "negative"][..],
        ),
        (
            "syntax.toml",
            "listen = \n",
            &["line 1", "not valid TOML"][..],
        ),
    ];
    for (name, content, expected) in cases {
        let path = dir.join(name);
        std::fs::write(&path, content).expect("writing a config");
        let path = path.display().to_string();
        for check in [true, false] {
            let mut args = vec!["agent", "--config", &path, "--listen", "127.0.0.1:1"];
            if check {
                args.push("--check-config");
            }
            let output = kmemcg(&args);
            let err = stderr(&output);
            assert_eq!(output.status.code(), Some(1), "{name}: {err}");
            assert!(err.contains(&path), "{name}: {err}");
            for e in expected {
                assert!(err.contains(e), "{name}: `{e}` missing in: {err}");
            }
            assert!(!err.contains("panicked"), "{err}");
        }
    }
    // Unreadable: missing, or a directory.
    for path in ["/nonexistent/kmemcg.toml", &dir.display().to_string()] {
        let output = kmemcg(&["agent", "--config", path, "--check-config"]);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!("cannot read config file {path}")),
            "{err}"
        );
    }
    // A good file is accepted, and flags beat environment beat file.
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        "max_objects = 4096\nmax_stats = 128\n[metrics]\ntop_caches = 2\n",
    )
    .expect("writing a config");
    let output = Command::new(kmemcg_agent_bin())
        .args(["agent", "--config"])
        .arg(&good)
        .args(["--check-config", "--max-objects", "8192"])
        .env("KMEMCG_MAX_OBJECTS", "2048")
        .env("KMEMCG_MAX_STATS", "256")
        .output()
        .expect("running kmemcg");
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(out.contains("max_objects = 8192"), "{out}");
    assert!(out.contains("max_stats = 256"), "{out}");
    assert!(out.contains("top_caches = 2"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn kmemcg_agent_bin() -> PathBuf {
    kmemcg_tests::kmemcg_bin()
}

#[test]
fn sighup_reloads_the_metrics_settings_and_keeps_a_good_config_over_a_bad_one() {
    require_root();
    let dir = scratch_dir("reload");
    let config = dir.join("agent.toml");
    let write = |top: &str| {
        std::fs::write(
            &config,
            format!("[metrics]\ntop_caches = {top}\ncache_min_bytes = 0\n"),
        )
        .expect("writing a config")
    };
    write("1");
    let agent = AgentProcess::start(&["--config", &config.display().to_string()]);
    let tmpfs = Tmpfs::new();
    let cgroup = TestCgroup::new("reload");
    cgroup.run(&["create-files", &tmpfs.sub("files"), "500"]);
    let cache_series = |agent: &AgentProcess| {
        let text = metrics(agent);
        text.lines()
            .filter(|l| l.starts_with("kmemcg_cgroup_cache_bytes{"))
            .filter(|l| l.contains(&format!("cgroup=\"{}\"", cgroup.path())))
            .count()
    };
    let wait_series = |n: usize| {
        let deadline = Instant::now() + WAIT;
        while cache_series(&agent) != n {
            assert!(
                Instant::now() < deadline,
                "not {n} cache series: {}",
                agent.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_series(1);
    let hup = || {
        // SAFETY: kill(2) on the agent this test started.
        unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) };
    };
    write("3");
    hup();
    wait_series(3);
    write("\"many\"");
    hup();
    let deadline = Instant::now() + WAIT;
    while !agent.log_text().contains("configuration reload failed") {
        assert!(Instant::now() < deadline, "{}", agent.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(agent.log_text().contains("`metrics.top_caches`"));
    assert_eq!(
        cache_series(&agent),
        3,
        "the running configuration was kept"
    );
    assert!(agent.stop().success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn deploy_files_pass_promtool_and_the_config_check() {
    let rules = deploy("prometheus/kmemcg-alerts.yaml")
        .display()
        .to_string();
    let out = promtool(&["check", "rules", &rules], None);
    assert!(out.contains("SUCCESS"), "{out}");
    let config = deploy("prometheus/prometheus.yml").display().to_string();
    promtool(&["check", "config", &config], None);

    // The PrometheusRule carries the same groups, verbatim.
    let rules_text = std::fs::read_to_string(&rules).expect("rules");
    let groups = &rules_text[rules_text.find("groups:\n").expect("groups") + 8..];
    let indented: String = groups
        .lines()
        .map(|l| {
            if l.is_empty() {
                "\n".to_string()
            } else {
                format!("  {l}\n")
            }
        })
        .collect();
    let operator = std::fs::read_to_string(deploy("kubernetes/servicemonitor.yaml"))
        .expect("servicemonitor.yaml");
    assert!(
        operator.contains(&indented),
        "PrometheusRule differs from kmemcg-alerts.yaml"
    );

    // The systemd unit's and the DaemonSet's configurations are valid.
    let systemd = deploy("systemd/agent.toml").display().to_string();
    let output = kmemcg(&["agent", "--config", &systemd, "--check-config"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let manifest = std::fs::read_to_string(deploy("kubernetes/kmemcg.yaml")).expect("kmemcg.yaml");
    let start = manifest
        .find("agent.toml: |\n")
        .expect("ConfigMap agent.toml")
        + 14;
    let toml: String = manifest[start..]
        .lines()
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.trim_start()))
        .collect();
    let dir = scratch_dir("configmap");
    let file = dir.join("agent.toml");
    std::fs::write(&file, toml).expect("writing the ConfigMap's config");
    let output = kmemcg(&[
        "agent",
        "--config",
        &file.display().to_string(),
        "--check-config",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("listen = \"0.0.0.0:9847\""));
    let _ = std::fs::remove_dir_all(&dir);

    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(deploy("grafana/kmemcg-dashboard.json")).expect("dashboard"),
    )
    .expect("the dashboard is JSON");
    assert!(dashboard["panels"].as_array().is_some_and(|p| p.len() >= 8));
}
