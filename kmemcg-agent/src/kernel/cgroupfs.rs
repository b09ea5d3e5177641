//! Where the cgroup hierarchies are mounted: cgroup v2 (unified) at /sys/fs/cgroup on v2-only
//! hosts, /sys/fs/cgroup/unified on hybrid ones, where the memory controller is on cgroup v1.
use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use crate::error::StartError;

/// The cgroup hierarchies kmemcg reads, from one reading of /proc/self/mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupMounts {
    /// Where cgroup v2 is mounted.
    pub cgroup2: PathBuf,
    /// The root cgroup's id: on cgroup v2 a cgroup's id is the inode number of its directory.
    pub root_id: u64,
    /// Mounts of cgroup v1 hierarchies with the memory controller, in mountinfo order: the
    /// hierarchy's directory shown there (`/`: its root) and the mount point.
    memcg_v1: Vec<(String, PathBuf)>,
}

impl CgroupMounts {
    /// Reads /proc/self/mountinfo; fails without a cgroup v2 mount.
    pub fn read() -> Result<Self, StartError> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let cgroup2 = parse_cgroup2_mount(&mountinfo).ok_or(StartError::NoCgroup2)?;
        Ok(Self::new(cgroup2, parse_memcg_v1_mounts(&mountinfo)))
    }

    /// These mounts, the root cgroup's id read from `cgroup2`.
    pub fn new(cgroup2: PathBuf, memcg_v1: Vec<(String, PathBuf)>) -> Self {
        let root_id = std::fs::metadata(&cgroup2).map_or(1, |m| m.ino());
        Self {
            cgroup2,
            root_id,
            memcg_v1,
        }
    }

    /// Where the whole cgroup v1 memory hierarchy is mounted, on hybrid hosts.
    pub fn memcg_v1(&self) -> Option<&Path> {
        self.memcg_v1
            .iter()
            .find(|(root, _)| root == "/")
            .map(|(_, mount)| mount.as_path())
    }

    /// The first mount of a cgroup v1 memory hierarchy, of its root or of a cgroup in it.
    pub fn first_memcg_v1(&self) -> Option<&Path> {
        self.memcg_v1.first().map(|(_, mount)| mount.as_path())
    }
}

/// The first cgroup2 mount in mountinfo text, preferring /sys/fs/cgroup.
pub(crate) fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    let mut mounts: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| {
            // "36 25 0:31 / /sys/fs/cgroup/unified rw,... shared:10 - cgroup2 cgroup2 rw"
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            let mount_point = left.split_whitespace().nth(4)?;
            (fstype == "cgroup2").then(|| PathBuf::from(unescape(mount_point)))
        })
        .collect();
    mounts.sort_by_key(|p| (p != &PathBuf::from("/sys/fs/cgroup"), p.as_os_str().len()));
    mounts.into_iter().next()
}

/// The cgroup v1 mounts with the memory controller in mountinfo text: (the hierarchy's
/// directory shown at the mount, mount point).
fn parse_memcg_v1_mounts(mountinfo: &str) -> Vec<(String, PathBuf)> {
    mountinfo
        .lines()
        .filter_map(|line| {
            // "35 25 0:30 / /sys/fs/cgroup/memory rw,... shared:9 - cgroup cgroup rw,memory"
            let (left, right) = line.split_once(" - ")?;
            let mut fields = left.split_whitespace();
            let root = fields.nth(3)?;
            let mount_point = fields.next()?;
            let mut right = right.split_whitespace();
            let (fstype, _source, options) = (right.next()?, right.next()?, right.next()?);
            (fstype == "cgroup" && options.split(',').any(|o| o == "memory"))
                .then(|| (root.to_string(), PathBuf::from(mount_point)))
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mounts(mountinfo: &str) -> CgroupMounts {
        CgroupMounts::new("/nonexistent".into(), parse_memcg_v1_mounts(mountinfo))
    }

    #[test]
    fn finds_the_v1_memory_mount() {
        let mountinfo = "35 24 0:30 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n\
                         36 24 0:31 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu,cpuacct\n\
                         37 24 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        let memory = Some(Path::new("/sys/fs/cgroup/memory"));
        assert_eq!(mounts(mountinfo).memcg_v1(), memory);
        assert_eq!(mounts(mountinfo).first_memcg_v1(), memory);
        assert_eq!(mounts(&mountinfo[..100]).memcg_v1(), None);
        let v2_only = mounts("1 2 0:1 / /x rw - cgroup2 cgroup2 rw\n");
        assert_eq!((v2_only.memcg_v1(), v2_only.first_memcg_v1()), (None, None));
    }

    #[test]
    fn a_mount_of_a_memory_cgroup_is_not_the_hierarchy() {
        let mountinfo = "37 24 0:32 /kubepods /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(mounts(mountinfo).memcg_v1(), None);
        let first = Some(Path::new("/sys/fs/cgroup/memory"));
        assert_eq!(mounts(mountinfo).first_memcg_v1(), first);
    }

    #[test]
    fn finds_hybrid_unified_mount() {
        let info = "25 1 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                    26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n\
                    27 25 0:25 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(
            parse_cgroup2_mount(info),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn prefers_sys_fs_cgroup() {
        let info = "40 1 0:40 / /mnt/other rw - cgroup2 cgroup2 rw\n\
                    26 1 0:24 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_cgroup2_mount(info),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
    }

    #[test]
    fn none_on_v1_only_hosts() {
        let info = "27 25 0:25 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(parse_cgroup2_mount(info), None);
    }
}
