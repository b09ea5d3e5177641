//! Memory cgroups the kernel keeps after their removal, against real cgroups: cgroups whose
//! tmpfs files outlive them stay in the kernel, charged with those files' pages, until the
//! files go.
use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use kmemcg_agent::api::KernelMemcgState;
use kmemcg_tests::{
    AgentProcess, DyingCgroup, TestCgroup, Tmpfs, patience, require_root, workload_bin,
};

const CGROUPS: usize = 20;
const FILE_BYTES: u64 = 1 << 20;
const WAIT: Duration = Duration::from_secs(30);

/// The kernel side of the rows under `parent`, by path.
fn kept_under(agent: &AgentProcess, parent: &str) -> Vec<(String, KernelMemcgState)> {
    agent
        .dying()
        .into_iter()
        .filter(|d: &DyingCgroup| d.path.starts_with(&format!("{parent}/")))
        .filter_map(|d| Some((d.path, d.kernel_memcg.filter(|k| k.alive_in_kernel)?)))
        .collect()
}

/// `nr_dying_descendants` of a cgroup v2 directory, where the memory controller is on v2
/// (on a hybrid host the v2 tree's dying cgroups are not the memory cgroups).
fn nr_dying_descendants(cgroup: &TestCgroup) -> Option<u64> {
    if cgroup.memory_dir().is_some() {
        return None;
    }
    let text = std::fs::read_to_string(cgroup.v2_dir().join("cgroup.stat")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("nr_dying_descendants "))?
        .trim()
        .parse()
        .ok()
}

#[test]
fn removed_cgroups_kept_by_their_tmpfs_files_are_listed_until_the_files_go() {
    require_root();
    let agent = AgentProcess::start(&[]);
    let status = agent.status();
    assert!(
        status.kernel_memcgs.available,
        "the walk of the kernel's memcgs is unavailable: {:?}",
        status.kernel_memcgs.reason
    );
    let tmpfs = Tmpfs::new();
    // Fault in the workload's own pages outside the test cgroups, so that none but the files'
    // pages are charged to them.
    let warm = Command::new(workload_bin())
        .args(["write-file", &tmpfs.sub("warm-up"), "4096"])
        .status()
        .expect("running kmemcg-workload");
    assert!(warm.success());
    let parent = TestCgroup::new("zombies");
    let mut files = Vec::new();
    let mut paths = Vec::new();
    for i in 0..CGROUPS {
        let child = TestCgroup::under(&parent, &format!("z{i}"));
        let file = tmpfs.sub(&format!("file-{i}"));
        child.run(&["write-file", &file, &FILE_BYTES.to_string()]);
        paths.push(child.path().to_string());
        files.push(file);
        child.remove();
    }

    if status.kernel_memcgs.lru_pages_reparented {
        // This kernel hands a removed memcg's pages to its parent: the files keep nothing,
        // and kmemcg must list none of them, as the kernel counts none.
        agent.settle();
        agent.settle();
        let kept = kept_under(&agent, parent.path());
        assert!(kept.is_empty(), "listed as kept: {kept:#?}");
        if let Some(kernel) = nr_dying_descendants(&parent) {
            assert_eq!(kernel, 0, "the kernel keeps some: kmemcg lists none");
        }
        return;
    }

    // All 20 kept, each charged its file's megabyte of shmem, the file named as the reason.
    let deadline = Instant::now() + patience(WAIT);
    let kept = loop {
        let kept = kept_under(&agent, parent.path());
        let described = paths.iter().all(|p| {
            kept.iter()
                .any(|(path, k)| path == p && k.shmem_bytes.is_some_and(|b| b >= FILE_BYTES))
        });
        if described || Instant::now() > deadline {
            break kept;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    for (path, file) in paths.iter().zip(&files) {
        let (_, k) = kept
            .iter()
            .find(|(p, _)| p == path)
            .unwrap_or_else(|| panic!("{path} is not listed as kept by the kernel: {kept:#?}"));
        let shmem = k.shmem_bytes.unwrap_or(0);
        assert!(
            (FILE_BYTES..FILE_BYTES + FILE_BYTES / 8).contains(&shmem),
            "{path}: {shmem} bytes of shmem, expected about {FILE_BYTES}: {k:#?}"
        );
        assert!(k.charged_bytes >= FILE_BYTES, "{path}: {k:#?}");
        assert!(
            k.reason.contains(file.as_str()),
            "{path}: the reason does not name {file}: {:?}",
            k.reason
        );
        assert!(k.removed_at.is_some(), "{path}: removal not seen: {k:#?}");
    }
    let status = agent.status();
    assert!(status.kernel_dying_memcgs >= CGROUPS as u64, "{status:#?}");
    assert!(
        status.kernel_dying_memcg_bytes >= CGROUPS as u64 * FILE_BYTES,
        "{status:#?}"
    );
    if let Some(kernel) = nr_dying_descendants(&parent) {
        // Read the kernel's count between two of kmemcg's listings that agree.
        let count = loop {
            let before = kept_under(&agent, parent.path()).len() as u64;
            let kernel = nr_dying_descendants(&parent).unwrap_or(kernel);
            agent.settle();
            if kept_under(&agent, parent.path()).len() as u64 == before {
                break (before, kernel);
            }
        };
        assert_eq!(count.0, count.1, "kmemcg's count vs nr_dying_descendants");
    }

    // The files deleted, the kernel frees the memcgs, and they leave the listing.
    for file in &files {
        std::fs::remove_file(file).unwrap_or_else(|e| panic!("removing {file}: {e}"));
    }
    let deadline = Instant::now() + patience(WAIT);
    loop {
        let kept = kept_under(&agent, parent.path());
        if kept.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still listed {:?} after the files were deleted: {kept:#?}",
            patience(WAIT)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    if let Some(kernel) = nr_dying_descendants(&parent) {
        assert_eq!(kernel, 0, "the kernel still keeps some");
    }
    assert!(Path::new(tmpfs.path()).exists());
}
