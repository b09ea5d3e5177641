//! The cgroup v2 tree: ids, paths and parent links, kept current from the kernel's cgroup
//! tracepoints (mkdir, rmdir, rename; see kmemcg-ebpf) rather than by rescanning every tick, so
//! that even a cgroup living for a few milliseconds has a path and a parent. A cgroup's id is
//! its directory's inode number. Removed cgroups stay in the tree, marked dead, while
//! what they allocated is still alive, so that it can be charged to their nearest live
//! ancestor.
use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::SystemTime,
};

use kmemcg_common::{CGROUP_EVENT_MKDIR, CGROUP_EVENT_RENAME, CGROUP_EVENT_RMDIR, CgroupEvent};

use crate::cgroup_path;

/// One cgroup as the tree knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub id: u64,
    /// Path from the cgroup root; `/` is the root.
    pub path: String,
    /// None for the root.
    pub parent: Option<u64>,
    pub alive: bool,
    /// When kmemcg saw the cgroup removed.
    pub removed_at: Option<SystemTime>,
}

/// The tree's nodes by id, what reports are built from.
pub type Nodes = HashMap<u64, Node>;

pub struct CgroupTree {
    mount: PathBuf,
    root_id: u64,
    nodes: Nodes,
    by_path: HashMap<String, u64>,
    /// Times the tree was rebuilt from a scan (start, lost or unusable events).
    pub rescans: u64,
}

impl CgroupTree {
    /// Scans the hierarchy at `mount`, whose root cgroup is `root_id`; events keep it current
    /// from then on.
    pub fn new(mount: impl Into<PathBuf>, root_id: u64) -> Self {
        let mount = mount.into();
        let mut tree = Self {
            mount,
            root_id,
            nodes: HashMap::new(),
            by_path: HashMap::new(),
            rescans: 0,
        };
        tree.rescan();
        tree
    }

    pub fn root_id(&self) -> u64 {
        self.root_id
    }

    pub fn nodes(&self) -> &Nodes {
        &self.nodes
    }

    /// Applies tree changes in the order the kernel made them. An event the tree cannot place
    /// (a path cut short, an unknown parent) makes it rescan instead.
    pub fn apply(&mut self, events: &[CgroupEvent]) {
        let mut rescan = false;
        for event in events {
            let Some(path) = event
                .path()
                .map(|p| String::from_utf8_lossy(p).into_owned())
            else {
                rescan = true;
                continue;
            };
            match event.kind {
                CGROUP_EVENT_MKDIR => match self.by_path.get(cgroup_path::parent(&path)).copied() {
                    Some(parent) => self.insert(event.id, path, Some(parent)),
                    None => rescan = true,
                },
                CGROUP_EVENT_RMDIR => self.mark_removed(event.id),
                CGROUP_EVENT_RENAME => self.rename(event.id, path),
                _ => {}
            }
        }
        if rescan {
            self.rescan();
        }
    }

    /// Rebuilds liveness and paths from a full scan (start-up, event queue overflow).
    pub fn rescan(&mut self) {
        self.rescans += 1;
        let mut found = Vec::new();
        scan(&self.mount, "/", None, &mut found);
        let alive: HashSet<u64> = found.iter().map(|(id, ..)| *id).collect();
        let gone: Vec<u64> = self
            .nodes
            .values()
            .filter(|n| n.alive && !alive.contains(&n.id))
            .map(|n| n.id)
            .collect();
        for id in gone {
            self.mark_removed(id);
        }
        for (id, path, parent) in found {
            if !self
                .nodes
                .get(&id)
                .is_some_and(|n| n.alive && n.path == path)
            {
                self.insert(id, path, parent);
            }
        }
    }

    /// Forgets removed cgroups that hold nothing (`holding` has the ids that still have live
    /// objects) and have no remembered descendants. Returns how many were forgotten.
    pub fn forget_released(&mut self, holding: &HashSet<u64>) -> usize {
        let mut forgotten = 0;
        loop {
            let parents: HashSet<u64> = self.nodes.values().filter_map(|n| n.parent).collect();
            let released: Vec<u64> = self
                .nodes
                .values()
                .filter(|n| !n.alive && !holding.contains(&n.id) && !parents.contains(&n.id))
                .map(|n| n.id)
                .collect();
            if released.is_empty() {
                return forgotten;
            }
            for id in released {
                if let Some(node) = self.nodes.remove(&id)
                    && self.by_path.get(&node.path) == Some(&id)
                {
                    self.by_path.remove(&node.path);
                }
                forgotten += 1;
            }
        }
    }

    fn insert(&mut self, id: u64, path: String, parent: Option<u64>) {
        if let Some(old) = self.by_path.insert(path.clone(), id)
            && old != id
        {
            self.mark_removed(old);
            self.by_path.insert(path.clone(), id);
        }
        self.nodes.insert(
            id,
            Node {
                id,
                path,
                parent: parent.or((id != self.root_id).then_some(self.root_id)),
                alive: true,
                removed_at: None,
            },
        );
    }

    fn mark_removed(&mut self, id: u64) {
        let Some(node) = self.nodes.get_mut(&id).filter(|n| n.alive) else {
            return;
        };
        node.alive = false;
        node.removed_at = Some(SystemTime::now());
        if self.by_path.get(&node.path) == Some(&id) {
            self.by_path.remove(&node.path);
        }
    }

    /// A renamed cgroup keeps its id; its live descendants' paths change with it.
    fn rename(&mut self, id: u64, new_path: String) {
        let Some(old_path) = self
            .nodes
            .get(&id)
            .filter(|n| n.alive)
            .map(|n| n.path.clone())
        else {
            return;
        };
        let old_prefix = format!("{old_path}/");
        let renamed: Vec<(u64, String)> = self
            .nodes
            .values()
            .filter(|n| n.alive && (n.id == id || n.path.starts_with(&old_prefix)))
            .map(|n| (n.id, format!("{new_path}{}", &n.path[old_path.len()..])))
            .collect();
        for (node_id, path) in renamed {
            if let Some(node) = self.nodes.get_mut(&node_id) {
                self.by_path.remove(&node.path);
                node.path = path.clone();
                self.by_path.insert(path, node_id);
            }
        }
    }
}

fn child_path(parent: &str, name: &str) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

/// (id, path, parent id) of `dir` and every cgroup below it.
fn scan(dir: &Path, path: &str, parent: Option<u64>, found: &mut Vec<(u64, String, Option<u64>)>) {
    let Ok(meta) = std::fs::metadata(dir) else {
        return;
    };
    let id = meta.ino();
    found.push((id, path.to_string(), parent));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            let name = entry.file_name().to_string_lossy().into_owned();
            scan(&entry.path(), &child_path(path, &name), Some(id), found);
        }
    }
}

#[cfg(test)]
mod tests {
    use kmemcg_common::CGROUP_PATH_LEN;

    use super::*;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("kmemcg-tree-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn ino(p: &Path) -> u64 {
        std::fs::metadata(p).unwrap().ino()
    }

    fn event(kind: u32, id: u64, path: &str) -> CgroupEvent {
        let mut e = CgroupEvent {
            kind,
            path_len: path.len() as u32 + 1,
            id,
            path: [0; CGROUP_PATH_LEN],
        };
        e.path[..path.len()].copy_from_slice(path.as_bytes());
        e
    }

    // An ordinary directory tree stands in for cgroupfs in the scans: same inode numbers.
    #[test]
    fn scans_then_follows_mkdir_rmdir_and_rename_events() {
        let root = TempDir::new("events");
        std::fs::create_dir_all(root.0.join("a/b")).unwrap();
        let mut tree = CgroupTree::new(&root.0, ino(&root.0));
        let (a, b) = (ino(&root.0.join("a")), ino(&root.0.join("a/b")));
        assert_eq!(tree.nodes()[&b].path, "/a/b");
        assert_eq!(tree.nodes()[&b].parent, Some(a));
        assert_eq!(tree.nodes()[&a].parent, Some(tree.root_id()));
        let rescans = tree.rescans;

        // c and d live and die between two samples: only the events know them.
        tree.apply(&[
            event(CGROUP_EVENT_MKDIR, 100, "/a/b/c"),
            event(CGROUP_EVENT_MKDIR, 101, "/a/b/c/d"),
            event(CGROUP_EVENT_RMDIR, 101, "/a/b/c/d"),
            event(CGROUP_EVENT_RMDIR, 100, "/a/b/c"),
            event(CGROUP_EVENT_RENAME, b, "/a/renamed"),
        ]);
        assert_eq!(tree.rescans, rescans, "events, not rescans");
        assert_eq!(tree.nodes()[&101].path, "/a/b/c/d");
        assert_eq!(tree.nodes()[&101].parent, Some(100));
        assert_eq!(tree.nodes()[&100].parent, Some(b));
        assert!(!tree.nodes()[&100].alive && tree.nodes()[&100].removed_at.is_some());
        assert_eq!(tree.nodes()[&b].path, "/a/renamed");
        assert!(tree.nodes()[&b].alive);

        // d holds nothing: forgotten; c is kept while it holds objects.
        assert_eq!(tree.forget_released(&HashSet::from([100])), 1);
        assert!(tree.nodes().contains_key(&100) && !tree.nodes().contains_key(&101));
        assert_eq!(tree.forget_released(&HashSet::new()), 1);
        assert!(!tree.nodes().contains_key(&100));
    }

    #[test]
    fn rename_moves_descendants_and_unplaceable_events_rescan() {
        let root = TempDir::new("rename");
        std::fs::create_dir_all(root.0.join("x/y")).unwrap();
        let mut tree = CgroupTree::new(&root.0, ino(&root.0));
        let (x, y) = (ino(&root.0.join("x")), ino(&root.0.join("x/y")));
        tree.apply(&[event(CGROUP_EVENT_RENAME, x, "/z")]);
        assert_eq!(tree.nodes()[&y].path, "/z/y");

        let rescans = tree.rescans;
        tree.apply(&[event(CGROUP_EVENT_MKDIR, 200, "/unknown-parent/child")]);
        assert_eq!(tree.rescans, rescans + 1);
        // The scan sees the real directories again.
        assert_eq!(tree.nodes()[&y].path, "/x/y");
    }

    #[test]
    fn rescan_marks_vanished_cgroups_dead() {
        let root = TempDir::new("rescan");
        std::fs::create_dir_all(root.0.join("x")).unwrap();
        let mut tree = CgroupTree::new(&root.0, ino(&root.0));
        let x = ino(&root.0.join("x"));
        std::fs::remove_dir(root.0.join("x")).unwrap();
        tree.rescan();
        assert!(!tree.nodes()[&x].alive);
        assert!(tree.nodes()[&tree.root_id()].alive);
    }
}
