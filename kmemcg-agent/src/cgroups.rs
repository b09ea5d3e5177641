//! cgroup v2 id -> path, by walking the unified hierarchy (a cgroup's id is its directory's
//! inode number). Paths of removed cgroups are remembered, so that what they still hold keeps
//! a name.
use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// Do not rescan more often than this when ids are unknown.
const MIN_RESCAN_INTERVAL: Duration = Duration::from_millis(500);

pub struct CgroupPaths {
    mount: PathBuf,
    paths: HashMap<u64, Known>,
    last_scan: Option<Instant>,
}

struct Known {
    path: String,
    alive: bool,
}

impl CgroupPaths {
    pub fn new(mount: impl Into<PathBuf>) -> Self {
        Self {
            mount: mount.into(),
            paths: HashMap::new(),
            last_scan: None,
        }
    }

    /// Path (from the cgroup root, "/" for the root) and liveness of each id, rescanning the
    /// hierarchy if any id is unknown.
    pub fn resolve_all(
        &mut self,
        ids: impl IntoIterator<Item = u64>,
    ) -> HashMap<u64, (String, bool)> {
        let ids: Vec<u64> = ids.into_iter().collect();
        let due = self
            .last_scan
            .is_none_or(|t| t.elapsed() >= MIN_RESCAN_INTERVAL);
        if due
            && ids
                .iter()
                .any(|id| !self.paths.get(id).is_some_and(|k| k.alive))
        {
            self.rescan();
        }
        ids.into_iter()
            .map(|id| {
                let resolved = match self.paths.get(&id) {
                    Some(k) => (k.path.clone(), k.alive),
                    None => (format!("<unknown cgroup {id}>"), false),
                };
                (id, resolved)
            })
            .collect()
    }

    /// Walks the hierarchy; cgroups no longer found are kept as not alive.
    pub fn rescan(&mut self) {
        self.last_scan = Some(Instant::now());
        let mut found = HashMap::new();
        walk(&self.mount, "/", &mut found);
        for known in self.paths.values_mut() {
            known.alive = false;
        }
        for (id, path) in found {
            self.paths.insert(id, Known { path, alive: true });
        }
    }

    /// Forgets ids that are neither alive nor in `keep`.
    pub fn retain_dead(&mut self, keep: impl Fn(u64) -> bool) {
        self.paths.retain(|id, k| k.alive || keep(*id));
    }
}

fn walk(dir: &Path, path: &str, found: &mut HashMap<u64, String>) {
    let Ok(meta) = std::fs::metadata(dir) else {
        return;
    };
    found.insert(meta.ino(), path.to_string());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let child = if path == "/" {
                format!("/{name}")
            } else {
                format!("{path}/{name}")
            };
            walk(&entry.path(), &child, found);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_directories_by_inode_and_remembers_removed_ones() {
        let root = std::env::temp_dir().join(format!("kmemcg-paths-{}", std::process::id()));
        std::fs::create_dir_all(root.join("a/b")).expect("mkdir");
        let ino = |p: &Path| std::fs::metadata(p).expect("stat").ino();
        let (root_id, b_id) = (ino(&root), ino(&root.join("a/b")));

        let mut paths = CgroupPaths::new(&root);
        let resolved = paths.resolve_all([root_id, b_id]);
        assert_eq!(resolved[&root_id], ("/".to_string(), true));
        assert_eq!(resolved[&b_id], ("/a/b".to_string(), true));

        std::fs::remove_dir(root.join("a/b")).expect("rmdir");
        paths.rescan();
        let resolved = paths.resolve_all([b_id, 12345678]);
        assert_eq!(resolved[&b_id], ("/a/b".to_string(), false));
        assert!(!resolved[&12345678].1);

        paths.retain_dead(|_| false);
        assert!(paths.resolve_all([b_id])[&b_id].0.starts_with("<unknown"));
        std::fs::remove_dir_all(&root).expect("cleanup");
    }
}
