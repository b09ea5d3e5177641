//! Places of a test's own: scratch paths in the temporary directory and a bpffs mount.
use std::{path::PathBuf, process::Command};

use crate::unique;

/// A path in the temporary directory that nothing else uses (not created).
pub fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(unique(name))
}

/// A scratch directory, created.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = scratch(name);
    std::fs::create_dir_all(&dir).expect("creating a scratch directory");
    dir
}

/// A bpffs of the test's own, unmounted when dropped.
pub struct Bpffs {
    dir: PathBuf,
}

impl Bpffs {
    pub fn new() -> Self {
        let dir = scratch_dir("bpffs");
        let status = Command::new("mount")
            .args(["-t", "bpf", "kmemcg-test"])
            .arg(&dir)
            .status()
            .expect("running mount");
        assert!(status.success(), "mounting bpffs at {}", dir.display());
        Self { dir }
    }

    /// Where an agent pins its maps in it.
    pub fn pin_dir(&self) -> String {
        self.dir.join("kmemcg").display().to_string()
    }
}

impl Default for Bpffs {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}
