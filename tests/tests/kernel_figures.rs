//! The kernel's own figures beside kmemcg's: each cgroup's `kernel` object against the v1
//! memory cgroup's kmem counter, and limits on all of a cgroup's kernel memory.
use std::time::Duration;

use kmemcg_agent::{api::CgroupUsage, limits::audit::AuditRecord};
use kmemcg_tests::{AgentProcess, TestCgroup, Tmpfs, get_json, kmemcg, require_root};

/// The agent's figures for `cgroup` once `check` holds.
fn wait_for(
    agent: &AgentProcess,
    cgroup: &TestCgroup,
    what: &str,
    check: impl Fn(&CgroupUsage) -> bool,
) -> CgroupUsage {
    agent
        .wait_for(cgroup.path(), Duration::from_secs(20), what, |u| {
            u.is_some_and(&check)
        })
        .expect("checked")
}

#[test]
fn the_kernel_object_matches_the_v1_kmem_counter() {
    require_root();
    let agent = AgentProcess::start(&[]);
    let cgroup = TestCgroup::new("kernel-figures");
    let Some(_) = cgroup.kmem_usage() else {
        eprintln!("no v1 memory cgroup here: the v2 reading is unit-tested from fixtures");
        return;
    };
    let tmpfs = Tmpfs::new();
    cgroup.run(&["create-files", &tmpfs.sub("files"), "10000"]);
    // The files are all there: the counter no longer moves. A figure read while they were
    // being created is refreshed within 5 s.
    let truth = cgroup.kmem_usage().expect("kmem counter") as f64;
    assert!(truth > (5 << 20) as f64, "the kmem counter says {truth}");
    let usage = wait_for(
        &agent,
        &cgroup,
        "a kernel figure within 5% of the counter",
        |u| {
            u.kernel
                .as_ref()
                .and_then(|k| k.kernel_bytes)
                .is_some_and(|b| (b as f64 / truth - 1.0).abs() < 0.05)
        },
    );
    let kernel = usage.kernel.as_ref().expect("a kernel object");
    assert_eq!(kernel.source, "memory.kmem.usage_in_bytes");
    // kmemcg's accounted bytes are the slab and percpu part of the same charge.
    let drift = kernel.drift_bytes.expect("drift") as f64;
    assert!(
        (drift / truth).abs() < 0.15,
        "drift {drift} of {truth}: {usage:#?}"
    );
    let status = agent.status();
    assert_eq!(
        status.kernel_figures_source.as_deref(),
        Some("memory.kmem.usage_in_bytes")
    );
    assert!(status.kernel_drift_bytes.is_some());
    let out = kmemcg(&["stat", "--addr", &agent.addr().to_string(), "--json"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"drift_bytes\""));
}

#[test]
fn a_kernel_limit_fires_on_thread_stacks_that_slab_and_percpu_do_not_see() {
    require_root();
    let state = std::env::temp_dir().join(format!(
        "kmemcg-test-kernel-limits-{}.json",
        std::process::id()
    ));
    let audit = state.with_extension("jsonl");
    let agent = AgentProcess::start(&[
        "--limits-file",
        state.to_str().expect("utf-8"),
        "--audit-file",
        audit.to_str().expect("utf-8"),
    ]);
    let cgroup = TestCgroup::new("stacks");
    if cgroup.kmem_usage().is_none() {
        eprintln!("no v1 memory cgroup here: nothing to compare with");
        return;
    }
    let _threads = cgroup.hold(&["threads", "400"]);
    // Each thread holds a 16 KiB kernel stack the slab and percpu hooks never see.
    let usage = wait_for(&agent, &cgroup, "the threads' task structs", |u| {
        u.total_slab_bytes > 1 << 20
    });
    let traced = usage.total_slab_bytes + usage.total_percpu_bytes;
    let kernel = cgroup.kmem_usage().expect("kmem counter");
    // Most of the stacks' 6.4 MB is beyond what the hooks trace.
    assert!(
        kernel > traced + (4 << 20),
        "kernel {kernel} vs traced {traced}"
    );
    let limit = (traced + kernel) / 2;
    let socket = agent.socket().display().to_string();
    let addr = agent.addr().to_string();
    let out = kmemcg(&[
        "limit",
        "set",
        cgroup.path(),
        "--max-kernel",
        &limit.to_string(),
        "--action",
        "notify",
        "--addr",
        &addr,
        "--socket",
        &socket,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let record = loop {
        let records: Vec<AuditRecord> =
            get_json(agent.addr(), "/api/v1/enforcement").expect("audit");
        if let Some(r) = records.into_iter().find(|r| r.action == "notify") {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "no notify record");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(record.limit_bytes, limit);
    assert!(record.usage_bytes > limit, "{record:?}");
    assert!(
        traced < limit,
        "slab + percpu alone ({traced}) would not have passed it"
    );
    let out = kmemcg(&[
        "limit",
        "rm",
        cgroup.path(),
        "--addr",
        &addr,
        "--socket",
        &socket,
    ]);
    assert!(out.status.success());
    let _ = std::fs::remove_file(state);
    let _ = std::fs::remove_file(audit);
}
