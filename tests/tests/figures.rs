//! What a running agent says about its figures, against real workloads: figures that dropped
//! allocations leave short are marked wherever they are shown (`stat`, `top --once`,
//! /metrics, the log), and a cgroup's history is served (`GET /api/v1/history`).
use std::time::Duration;

use kmemcg_agent::api::CgroupHistory;
use kmemcg_tests::{
    AgentProcess, TestCgroup, Tmpfs, cache_objects, get_json, kmemcg, require_root,
};

const WAIT: Duration = Duration::from_secs(20);

fn http_get(agent: &AgentProcess, path: &str) -> (u16, String) {
    let response = reqwest::blocking::Client::new()
        .get(format!("http://{}{path}", agent.addr()))
        .timeout(Duration::from_secs(10))
        .send()
        .expect("GET");
    (
        response.status().as_u16(),
        response.text().unwrap_or_default(),
    )
}

#[test]
fn dropped_allocations_mark_the_figures_they_leave_short() {
    require_root();
    let agent = AgentProcess::start(&["--max-objects", "1024", "--root-cgroup", "ignore"]);
    let cgroup = TestCgroup::new("short");
    // Unaccounted objects take table entries whether the ledger counts the accounted ones or
    // not: 20,000 skbs are 2,500 sampled entries at least, more than the 1,024 slots.
    let _messages = cgroup.hold(&["queued-messages", "20000"]);
    let usage = agent
        .wait_for(cgroup.path(), WAIT, "marked unreliable", |u| {
            u.is_some_and(|u| u.unreliable)
        })
        .expect("usage");
    assert!(agent.status().dropped > 0);
    let addr = agent.addr().to_string();

    // stat: its row's sizes say "at least", and a note says why.
    let output = kmemcg(&["stat", "--addr", &addr]);
    let text = String::from_utf8_lossy(&output.stdout);
    let row = text
        .lines()
        .find(|l| l.trim_start().starts_with(cgroup.path()))
        .unwrap_or_else(|| panic!("no row: {text}"));
    assert!(row.contains('≥'), "{text}");
    assert!(text.contains("may hold more than shown"), "{text}");

    // top --once: the same mark, and the header counts the cgroups concerned.
    let output = kmemcg(&["top", "--once", "--addr", &addr, "--filter", cgroup.path()]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("figures may be short"), "{text}");
    let row = text
        .lines()
        .find(|l| l.contains(cgroup.path()))
        .unwrap_or_else(|| panic!("no row: {text}"));
    assert!(row.contains('≥'), "{text}");
    // JSON keeps the flag.
    let output = kmemcg(&[
        "top",
        "--once",
        "--json",
        "--addr",
        &addr,
        "--filter",
        cgroup.path(),
    ]);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(json[0]["unreliable"], true, "{json}");

    // /metrics: a flag series for the cgroup.
    let (_, metrics) = http_get(&agent, "/metrics");
    let series = format!(
        "kmemcg_cgroup_figures_unreliable{{cgroup=\"{}\"}} 1",
        usage.path
    );
    assert!(metrics.contains(&series), "{series} missing");

    // The log warned once drops started.
    let log = agent.log_text();
    assert!(
        log.contains("allocations were dropped because a map is full"),
        "{log}"
    );
}

#[test]
fn the_history_of_a_cgroup_is_served() {
    require_root();
    let agent = AgentProcess::start(&[]);
    let tmpfs = Tmpfs::new();
    let cgroup = TestCgroup::new("history");
    let mut workload = cgroup.hold(&["file-steps", &tmpfs.sub("history"), "1000"]);
    workload.step();
    agent.wait_for(cgroup.path(), WAIT, "first step charged", |u| {
        u.is_some_and(|u| cache_objects(u, &["dentry"]) >= 1000)
    });
    std::thread::sleep(Duration::from_secs(1));
    workload.step();
    agent.wait_for(cgroup.path(), WAIT, "second step charged", |u| {
        u.is_some_and(|u| cache_objects(u, &["dentry"]) >= 2000)
    });
    agent.settle();

    let path = format!("/api/v1/history?cgroup={}", cgroup.path());
    let history: CgroupHistory = get_json(agent.addr(), &path).expect("history");
    assert_eq!(history.path, cgroup.path());
    assert_eq!(history.id, cgroup.id());
    assert_eq!(history.window_seconds, 3600);
    assert!(history.points.len() >= 5, "{} points", history.points.len());
    assert!(history.points.windows(2).all(|w| w[0].at_ms < w[1].at_ms));
    // From one step to two: the slab grew by about 1000 dentries and inodes.
    let (first, last) = (history.points[0], history.points[history.points.len() - 1]);
    assert!(
        last.slab_bytes >= first.slab_bytes + 1000 * 192,
        "{first:?} .. {last:?}"
    );
    if cgroup.kmem_usage().is_some() {
        assert!(last.kernel_bytes.is_some(), "{last:?}");
    }
    let dentry = history
        .caches
        .iter()
        .find(|c| c.name == "dentry")
        .expect("dentry among the top caches");
    // The dentries of the second step, at least half of them (one step may have been
    // charged before the cgroup's first point).
    assert!(dentry.growth_bytes >= 500 * 192, "{dentry:?}");
    workload.release();

    // A cgroup without a history, a missing parameter: said, not a crash.
    let (status, body) = http_get(&agent, "/api/v1/history?cgroup=/kmemcg-test-no-such");
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("no history is kept for cgroup /kmemcg-test-no-such"),
        "{body}"
    );
    let (status, body) = http_get(&agent, "/api/v1/history");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("say which cgroup"), "{body}");
}
