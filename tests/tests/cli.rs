//! The `kmemcg` command line: clear errors for bad input, `kmemcg stat` against a real agent.
use std::{net::TcpListener, time::Duration};

use kmemcg_tests::{
    AgentProcess, TestCgroup, Tmpfs, cache_objects, free_addr, kmemcg, require_root,
};

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn bad_flags_are_rejected_with_clear_errors() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["agent", "--listen", "not-an-address"],
            "invalid socket address",
        ),
        (&["agent", "--max-objects", "0"], "--max-objects"),
        (
            &["agent", "--root-cgroup", "sometimes"],
            "possible values: ignore, count, track",
        ),
        (&["agent", "--interval", "0"], "between 0.05 and 3600"),
        (
            &["agent", "--on-unreliable", "guess"],
            "possible values: kernel, kmemcg",
        ),
        (&["stat", "--bogus"], "unexpected argument '--bogus'"),
        (&["frobnicate"], "unrecognized subcommand"),
    ];
    for (args, expected) in cases {
        let output = kmemcg(args);
        assert_eq!(output.status.code(), Some(2), "kmemcg {args:?}");
        let err = stderr(&output);
        assert!(err.contains(expected), "kmemcg {args:?}: {err}");
        assert!(!err.contains("panicked"), "kmemcg {args:?}: {err}");
    }
}

#[test]
fn a_busy_port_is_a_clear_error() {
    require_root();
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let output = kmemcg(&["agent", "--listen", &addr]);
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.contains(&format!("cannot listen on {addr}: the address is in use")),
        "{err}"
    );
}

#[test]
fn stat_without_an_agent_says_so() {
    let addr = free_addr().to_string();
    let output = kmemcg(&["stat", "--addr", &addr]);
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.contains(&format!("no kmemcg agent answers at http://{addr}")),
        "{err}"
    );
}

#[test]
fn stat_shows_a_cgroup_as_table_and_json() {
    require_root();
    let agent = AgentProcess::start(&[]);
    let tmpfs = Tmpfs::new();
    let cgroup = TestCgroup::new("stat");
    cgroup.run(&["create-files", &tmpfs.sub("stat"), "1000"]);
    agent.wait_for(
        cgroup.path(),
        Duration::from_secs(20),
        "files charged",
        |u| u.is_some_and(|u| cache_objects(u, &["dentry"]) >= 1000),
    );
    let addr = agent.addr().to_string();

    let output = kmemcg(&["stat", "--addr", &addr]);
    assert!(output.status.success(), "{}", stderr(&output));
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        table.contains("CGROUP") && table.contains(cgroup.path()),
        "{table}"
    );

    let output = kmemcg(&["stat", "--addr", &addr, "--json", "--cgroup", cgroup.path()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(json["path"], cgroup.path());
    assert_eq!(json["id"], cgroup.id());
    for field in [
        "slab_bytes",
        "slab_objects",
        "percpu_bytes",
        "percpu_objects",
        "accounted_bytes",
        "unaccounted_bytes",
        "allocs",
        "frees",
    ] {
        assert!(json[field].is_u64(), "{field} in {json}");
    }
    let caches = json["caches"].as_array().expect("caches");
    let dentry = caches
        .iter()
        .find(|c| c["name"] == "dentry")
        .expect("dentry cache");
    assert!(dentry["objects"].as_u64().expect("objects") >= 1000);
    assert!(dentry["bytes"].as_u64().expect("bytes") >= 1000 * 192);

    let output = kmemcg(&["stat", "--addr", &addr, "--cgroup", cgroup.path()]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("dentry") && text.contains("KiB"), "{text}");

    let output = kmemcg(&[
        "stat",
        "--addr",
        &addr,
        "--cgroup",
        "/kmemcg-test-no-such-cgroup",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("no data for cgroup /kmemcg-test-no-such-cgroup"));
}

#[test]
fn a_limit_without_a_size_names_both_size_flags() {
    let output = kmemcg(&["limit", "set", "/kmemcg-test-x", "--action", "notify"]);
    assert_eq!(output.status.code(), Some(2));
    let err = stderr(&output);
    assert!(
        err.contains("--max <MAX>|--max-kernel <MAX_KERNEL>"),
        "{err}"
    );
    // Where to reach the agent is optional, and the usage line says so.
    let usage = err
        .lines()
        .find(|l| l.starts_with("Usage:"))
        .unwrap_or_default();
    assert!(
        !usage.contains("--addr") && !usage.contains("--socket"),
        "{err}"
    );
}

#[test]
fn help_is_wrapped() {
    for command in [
        &["agent", "--help"][..],
        &["limit", "set", "--help"],
        &["top", "--help"],
    ] {
        let output = kmemcg(command);
        assert!(output.status.success(), "{command:?}");
        let text = String::from_utf8_lossy(&output.stdout);
        // Not a terminal: clap wraps at 100 columns.
        let widest = text.lines().map(|l| l.chars().count()).max().unwrap_or(0);
        assert!(
            widest <= 100,
            "{command:?}: a line of {widest} characters:\n{text}"
        );
    }
}

#[test]
fn stat_names_the_caches_the_kernel_merged() {
    require_root();
    let Ok(target) = std::fs::read_link("/sys/kernel/slab/UNIX") else {
        eprintln!("UNIX is a cache of its own on this kernel: nothing merged to show");
        return;
    };
    let agent = AgentProcess::start(&[]);
    let cgroup = TestCgroup::new("merged");
    let sockets = cgroup.hold(&["socketpairs", "500"]);
    let is_unix = |c: &kmemcg_agent::api::CacheUsage| {
        c.name == "UNIX" || c.merged.iter().any(|m| m == "UNIX")
    };
    let usage = agent
        .wait_for(
            cgroup.path(),
            Duration::from_secs(20),
            "sockets charged",
            |u| u.is_some_and(|u| u.caches.iter().any(|c| is_unix(c) && c.objects >= 500)),
        )
        .expect("usage");
    let cache = usage
        .caches
        .iter()
        .find(|c| is_unix(c))
        .expect("the sockets' cache");
    let size: u64 = std::fs::read_to_string("/sys/kernel/slab/UNIX/object_size")
        .expect("object_size")
        .trim()
        .parse()
        .expect("a number");
    assert_eq!(cache.object_size, Some(size), "{cache:?}");
    // Every name linking to the same cache is listed, the cache's own name aside.
    for entry in std::fs::read_dir("/sys/kernel/slab").expect("sysfs") {
        let entry = entry.expect("entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        if std::fs::read_link(entry.path()).ok().as_ref() == Some(&target) && name != cache.name {
            assert!(cache.merged.contains(&name), "{name} missing: {cache:?}");
        }
    }
    let output = kmemcg(&[
        "stat",
        "--addr",
        &agent.addr().to_string(),
        "--cgroup",
        cgroup.path(),
    ]);
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with(&cache.name))
        .unwrap_or_else(|| panic!("no {} line: {text}", cache.name));
    if cache.name != "UNIX" {
        assert!(line.contains("UNIX"), "{text}");
    }
    sockets.release();
}
