//! Leak recording against the real kernel: a workload with known objects, started after the
//! recording, in a test cgroup, beside another cgroup doing the same that is not recorded.
use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use kmemcg_agent::api::{LeakSite, LeakView};
use kmemcg_tests::{AgentProcess, TestCgroup, Tmpfs, kmemcg, kmemcg_bin, patience, require_root};

/// Seconds between the workload's phases.
const PAUSE: f64 = 2.0;

/// `kmemcg leaks PATH --json` through the agent's socket, once it says it is recording.
struct Recording {
    child: Child,
}

impl Recording {
    fn start(agent: &AgentProcess, path: &str, seconds: u32) -> Self {
        let mut child = Command::new(kmemcg_bin())
            .args(["leaks", path, "--json", "--for", &format!("{seconds}s")])
            .arg("--socket")
            .arg(agent.socket())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting kmemcg leaks");
        let mut stderr = BufReader::new(child.stderr.take().expect("piped stderr"));
        let mut line = String::new();
        stderr.read_line(&mut line).expect("reading kmemcg leaks");
        assert!(
            line.starts_with("recording"),
            "kmemcg leaks did not start recording: {line}"
        );
        Self { child }
    }

    /// Waits for the end and parses the JSON.
    fn finish(self) -> LeakView {
        let output = self
            .child
            .wait_with_output()
            .expect("waiting for kmemcg leaks");
        assert!(output.status.success(), "kmemcg leaks failed");
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "kmemcg leaks --json printed no view ({e}): {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }
}

/// The largest site of `cache` (any, when None: merged caches take another's name, UNIX
/// sockets `signal_cache`'s here) whose function starts with one of `functions`.
fn site<'a>(view: &'a LeakView, cache: Option<&str>, functions: &[&str]) -> &'a LeakSite {
    view.sites
        .iter()
        .filter(|s| {
            cache.is_none_or(|c| s.cache == c)
                && functions
                    .iter()
                    .any(|f| s.function.starts_with(&format!("{f}+")))
        })
        .max_by_key(|s| s.objects)
        .unwrap_or_else(|| {
            panic!(
                "no {cache:?} site in {functions:?} among {:#?}",
                view.sites
                    .iter()
                    .filter(|s| s.objects >= 100)
                    .collect::<Vec<_>>()
            )
        })
}

fn assert_within_2_percent(site: &LeakSite, expected: u64) {
    let tolerance = expected as f64 * 0.02;
    assert!(
        (site.objects as f64 - expected as f64).abs() <= tolerance,
        "{} at {}: {} objects, expected {expected} ± 2%",
        site.cache,
        site.function,
        site.objects
    );
}

#[test]
fn leaks_name_a_workloads_call_sites_with_counts_and_ages() {
    require_root();
    let agent = AgentProcess::start(&[]);
    let cgroup = TestCgroup::new("leaks");
    let other = TestCgroup::new("leaks-other");
    let tmpfs = Tmpfs::new();
    for dir in ["recorded", "other"] {
        std::fs::create_dir(tmpfs.path().join(dir)).expect("creating a tmpfs directory");
    }
    let recording = Recording::start(&agent, cgroup.path(), 16);
    let pause = PAUSE.to_string();
    let phases = |dir: &str, files: &str, tmpfs_files: &str, pairs: &str| {
        let dir = tmpfs.sub(dir);
        let args = [
            "leak-phases",
            &dir,
            files,
            tmpfs_files,
            pairs,
            "--pause",
            &pause,
        ];
        args.map(str::to_string)
    };
    // Not recorded: what it allocates must not show.
    let other_args = phases("other", "1000", "700", "300");
    let started = Instant::now();
    let other_work = other.hold(&other_args.each_ref().map(String::as_str));
    let recorded_args = phases("recorded", "3000", "2000", "500");
    let work = cgroup.hold(&recorded_args.each_ref().map(String::as_str));
    eprintln!(
        "workloads ready after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let view = recording.finish();
    eprintln!(
        "{}",
        serde_json::to_string_pretty(&view).unwrap_or_default()
    );
    let text = kmemcg_agent::cli::leaks_text(&view);
    eprintln!("{text}");
    drop(work);
    drop(other_work);

    assert_eq!(view.cgroup, cgroup.path());
    assert_eq!(view.state, "done");
    assert_eq!(view.ended.as_deref(), Some("duration"));
    assert_eq!(view.dropped_objects, 0);
    // 3,000 open files and the 500 of the sockets still open; 2,000 tmpfs dentries and the
    // sockets' 500; 2,000 shmem inodes; 500 socket inodes and sockets of 1,000 opened.
    let files = site(&view, Some("filp"), &["alloc_empty_file"]);
    assert_within_2_percent(files, 3500);
    let dentries = site(&view, Some("dentry"), &["__d_alloc", "d_alloc"]);
    assert_within_2_percent(dentries, 2500);
    let inodes = site(&view, Some("shmem_inode_cache"), &["shmem_alloc_inode"]);
    assert_within_2_percent(inodes, 2000);
    let socket_inodes = site(&view, Some("sock_inode_cache"), &["sock_alloc_inode"]);
    assert_within_2_percent(socket_inodes, 500);
    let sockets = site(&view, None, &["sk_prot_alloc"]);
    assert_within_2_percent(sockets, 500);
    for s in [files, dentries, inodes, socket_inodes, sockets] {
        assert!(s.module.is_none(), "{s:?} is not from a module");
        assert!(s.oldest_seconds <= view.recorded_seconds, "{s:?}");
    }
    // The phases ran PAUSE seconds apart: the files first, the tmpfs files, the sockets.
    let apart = |older: f64, newer: f64, what: &str| {
        let gap = older - newer;
        assert!(
            (PAUSE - 0.5..=PAUSE + 1.5).contains(&gap),
            "{what}: {gap:.2} s apart, expected about {PAUSE} s"
        );
    };
    apart(
        files.oldest_seconds,
        inodes.median_age_seconds,
        "open files, then tmpfs files",
    );
    apart(
        inodes.median_age_seconds,
        socket_inodes.median_age_seconds,
        "tmpfs files, then sockets",
    );
    // The open files are the oldest of their site, the sockets' files the newest.
    assert!(files.median_age_seconds > socket_inodes.oldest_seconds);
}

#[test]
fn a_leak_recording_ends_when_its_cgroup_is_removed_and_refuses_what_it_cannot_do() {
    require_root();
    let agent = AgentProcess::start(&[]);
    let tmpfs = Tmpfs::new();
    let socket = agent.socket().display().to_string();
    let missing = kmemcg(&[
        "leaks",
        "/kmemcg-test-no-such-cgroup",
        "--for",
        "5s",
        "--socket",
        &socket,
    ]);
    let said = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success());
    assert!(
        said.contains("no cgroup /kmemcg-test-no-such-cgroup"),
        "{said}"
    );
    let cgroup = TestCgroup::new("leaks-removed");
    let child = TestCgroup::under(&cgroup, "child");
    let recording = Recording::start(&agent, cgroup.path(), 120);
    // Recordings beyond the cap are refused, saying why.
    let others: Vec<TestCgroup> = (0..7)
        .map(|i| TestCgroup::new(&format!("leaks-cap{i}")))
        .collect();
    let running: Vec<Recording> = others
        .iter()
        .map(|c| Recording::start(&agent, c.path(), 120))
        .collect();
    let ninth = TestCgroup::new("leaks-cap-refused");
    let refused = kmemcg(&["leaks", ninth.path(), "--for", "5s", "--socket", &socket]);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(said.contains("8 recordings are running"), "{said}");
    // A grandchild made while recording is recorded too.
    let grandchild = TestCgroup::under(&child, "new");
    // The agent follows cgroup creation every 50 ms: a cgroup is recorded from then on.
    std::thread::sleep(Duration::from_millis(500));
    let dir = tmpfs.sub("files");
    grandchild.run(&["create-files", &dir, "300"]);
    let started = Instant::now();
    grandchild.remove();
    child.remove();
    cgroup.remove();
    let view = recording.finish();
    assert!(
        started.elapsed() < patience(Duration::from_secs(10)),
        "the recording did not end with its cgroup"
    );
    assert_eq!(view.ended.as_deref(), Some("cgroup removed"));
    let inodes = site(&view, Some("shmem_inode_cache"), &["shmem_alloc_inode"]);
    assert_within_2_percent(inodes, 300);
    assert_eq!(
        view.cgroups, 3,
        "the cgroup, its child and the grandchild made meanwhile"
    );
    for (cgroup, recording) in others.into_iter().zip(running) {
        drop(cgroup);
        assert_eq!(recording.finish().ended.as_deref(), Some("cgroup removed"));
    }
}
