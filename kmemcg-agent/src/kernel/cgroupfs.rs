//! Where the cgroup v2 (unified) hierarchy is mounted: /sys/fs/cgroup on v2-only hosts,
//! /sys/fs/cgroup/unified on hybrid ones.
use std::path::PathBuf;

use crate::error::StartError;

/// Mount point of cgroup2, from /proc/self/mountinfo.
pub fn find_cgroup2_mount() -> Result<PathBuf, StartError> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    parse_cgroup2_mount(&mountinfo).ok_or(StartError::NoCgroup2)
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
