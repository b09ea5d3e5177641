//! Turns summed map entries into per-cgroup usage: cache names, the slab/percpu split, the
//! accounted part, reparenting of removed cgroups' charges to their nearest live ancestor,
//! dying cgroups, and recursive totals. Pure, so that it is tested without a kernel.
use std::{
    collections::{BTreeMap, HashMap},
    time::UNIX_EPOCH,
};

use kmemcg_common::{CacheKind, CacheStats, StatsKey};

use crate::{
    api::{CacheUsage, CgroupUsage, DyingCgroup, MemoryKind},
    cgroups::{Node, Nodes},
};

/// Largest caches listed per dying cgroup.
const DYING_TOP_CACHES: usize = 5;

/// Name of a cache id: the slab cache's own name, the kmalloc bucket the kernel would use, or
/// `percpu`.
pub fn cache_name(cache_id: u64, names: &HashMap<u64, String>) -> (String, MemoryKind) {
    match CacheKind::of(cache_id) {
        CacheKind::Slab(addr) => (
            names
                .get(&addr)
                .cloned()
                .unwrap_or_else(|| format!("<cache {addr:#x}>")),
            MemoryKind::Slab,
        ),
        CacheKind::Kmalloc { bytes, accounted } => {
            (kmalloc_name(bytes, accounted), MemoryKind::Kmalloc)
        }
        CacheKind::Percpu => ("percpu".into(), MemoryKind::Percpu),
        CacheKind::Unknown(id) => (format!("<unknown {id}>"), MemoryKind::Slab),
    }
}

/// The kernel's kmalloc cache names: kmalloc-64, kmalloc-cg-1k, ...; allocations larger than
/// the largest bucket come from the page allocator.
fn kmalloc_name(bytes: u64, accounted: bool) -> String {
    const KMALLOC_MAX_CACHE_SIZE: u64 = 8192;
    let cg = if accounted { "cg-" } else { "" };
    if bytes > KMALLOC_MAX_CACHE_SIZE {
        format!("kmalloc-{cg}large")
    } else if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("kmalloc-{cg}{}k", bytes / 1024)
    } else {
        format!("kmalloc-{cg}{bytes}")
    }
}

/// What the API serves, built from one reading of the maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Live cgroups with figures of their own or below them, by path.
    pub cgroups: Vec<CgroupUsage>,
    /// Removed cgroups still holding objects, largest first.
    pub dying: Vec<DyingCgroup>,
}

/// Per-cache figures of one cgroup id, as read from the maps, one row per cache name.
type Caches = Vec<CacheUsage>;

/// Builds the report. `nodes` is the cgroup tree; ids missing from it are taken as removed
/// unseen, charged to `root_id`.
pub fn build(
    stats: &[(StatsKey, CacheStats)],
    cache_names: &HashMap<u64, String>,
    nodes: &Nodes,
    root_id: u64,
) -> Report {
    let raw = by_cgroup(stats, cache_names);
    let mut own: BTreeMap<u64, CgroupUsage> = BTreeMap::new();
    let mut dying = Vec::new();
    for (id, caches) in raw {
        let node = nodes.get(&id);
        if node.is_some_and(|n| n.alive) {
            let usage = own.entry(id).or_insert_with(|| empty_usage(id, nodes));
            merge(usage, caches, true);
            continue;
        }
        // Removed: what it holds is charged to the nearest live ancestor, as the kernel's
        // obj_cgroup reparenting does; its allocation counters stay its own.
        let ancestor = nearest_live_ancestor(id, nodes, root_id);
        let usage = own
            .entry(ancestor)
            .or_insert_with(|| empty_usage(ancestor, nodes));
        let before = usage.total_bytes();
        merge(usage, caches.iter().cloned(), false);
        usage.reparented_bytes += usage.total_bytes() - before;
        if let Some(d) = dying_cgroup(id, node, &caches, ancestor, nodes) {
            dying.push(d);
        }
    }
    let cgroups = with_ancestors_and_totals(own, nodes);
    dying.sort_by(|a, b| {
        b.residual_bytes
            .cmp(&a.residual_bytes)
            .then(a.id.cmp(&b.id))
    });
    Report { cgroups, dying }
}

fn by_cgroup(
    stats: &[(StatsKey, CacheStats)],
    cache_names: &HashMap<u64, String>,
) -> BTreeMap<u64, Caches> {
    let mut by_cgroup: BTreeMap<u64, Caches> = BTreeMap::new();
    // A few hundred caches among thousands of entries: each name is made once.
    let mut names: HashMap<u64, (String, MemoryKind)> = HashMap::new();
    for (key, s) in stats {
        let (name, kind) = names
            .entry(key.cache_id)
            .or_insert_with(|| cache_name(key.cache_id, cache_names));
        let caches = by_cgroup.entry(key.cgroup_id).or_default();
        let cache = match caches.iter().position(|c| c.name == *name) {
            Some(i) => &mut caches[i],
            None => {
                caches.push(CacheUsage {
                    name: name.clone(),
                    kind: *kind,
                    ..Default::default()
                });
                caches.last_mut().expect("just pushed")
            }
        };
        // Sums over CPUs are never negative; clamp a torn read to zero.
        cache.bytes += s.live_bytes.max(0) as u64;
        cache.objects += s.live_objects.max(0) as u64;
        cache.accounted_bytes += s.accounted_bytes.max(0) as u64;
        cache.allocs += s.allocs;
        cache.frees += s.frees;
    }
    by_cgroup
}

fn nearest_live_ancestor(id: u64, nodes: &Nodes, root_id: u64) -> u64 {
    let mut current = nodes.get(&id).and_then(|n| n.parent);
    // Bounded: a tree deeper than this is a loop.
    for _ in 0..4096 {
        match current.and_then(|p| nodes.get(&p)) {
            Some(n) if n.alive => return n.id,
            Some(n) => current = n.parent,
            None => return root_id,
        }
    }
    root_id
}

fn empty_usage(id: u64, nodes: &Nodes) -> CgroupUsage {
    let node = nodes.get(&id);
    CgroupUsage {
        id,
        path: node.map_or_else(|| format!("<unknown cgroup {id}>"), |n| n.path.clone()),
        alive: true,
        parent: node.and_then(|n| n.parent),
        ..Default::default()
    }
}

/// Adds `caches` (one row per name) to `usage`; with `counters`, the allocation counters too.
fn merge(usage: &mut CgroupUsage, caches: impl IntoIterator<Item = CacheUsage>, counters: bool) {
    let fresh = usage.caches.is_empty();
    for c in caches {
        if c.kind.is_percpu() {
            usage.percpu_bytes += c.bytes;
            usage.percpu_objects += c.objects;
        } else {
            usage.slab_bytes += c.bytes;
            usage.slab_objects += c.objects;
        }
        usage.accounted_bytes += c.accounted_bytes;
        // Into a cgroup's own, empty usage, its caches go in as they are (names are unique).
        let existing = if fresh {
            None
        } else {
            usage.caches.iter_mut().position(|m| m.name == c.name)
        };
        let (bytes, objects, accounted_bytes, allocs, frees) =
            (c.bytes, c.objects, c.accounted_bytes, c.allocs, c.frees);
        let mine = match existing.map(|i| &mut usage.caches[i]) {
            Some(m) => m,
            None => {
                usage.caches.push(CacheUsage {
                    name: c.name,
                    kind: c.kind,
                    ..Default::default()
                });
                usage.caches.last_mut().expect("just pushed")
            }
        };
        mine.bytes += bytes;
        mine.objects += objects;
        mine.accounted_bytes += accounted_bytes;
        if counters {
            usage.allocs += allocs;
            usage.frees += frees;
            mine.allocs += allocs;
            mine.frees += frees;
        }
    }
    usage.unaccounted_bytes = usage.total_bytes().saturating_sub(usage.accounted_bytes);
    usage.caches.retain(|c| c.bytes > 0 || c.allocs > 0);
    usage
        .caches
        .sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.name.cmp(&b.name)));
}

fn dying_cgroup(
    id: u64,
    node: Option<&Node>,
    caches: &Caches,
    ancestor: u64,
    nodes: &Nodes,
) -> Option<DyingCgroup> {
    let mut held: Vec<CacheUsage> = caches
        .iter()
        .filter(|c| c.bytes > 0 || c.objects > 0)
        .cloned()
        .collect();
    if held.is_empty() {
        return None;
    }
    held.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.name.cmp(&b.name)));
    let residual_bytes = held.iter().map(|c| c.bytes).sum();
    let residual_objects = held.iter().map(|c| c.objects).sum();
    held.truncate(DYING_TOP_CACHES);
    Some(DyingCgroup {
        id,
        path: node.map_or_else(|| format!("<unknown cgroup {id}>"), |n| n.path.clone()),
        residual_bytes,
        residual_objects,
        caches: held,
        removed_at: node
            .and_then(|n| n.removed_at)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs()),
        charged_ancestor_id: ancestor,
        charged_ancestor_path: nodes
            .get(&ancestor)
            .map_or_else(|| "/".to_string(), |n| n.path.clone()),
        kernel_memcg: None,
    })
}

/// Adds the live ancestors of every cgroup with figures, then sums recursive totals bottom up.
fn with_ancestors_and_totals(
    mut own: BTreeMap<u64, CgroupUsage>,
    nodes: &Nodes,
) -> Vec<CgroupUsage> {
    let ids: Vec<u64> = own.keys().copied().collect();
    for id in ids {
        let mut parent = own.get(&id).and_then(|u| u.parent);
        while let Some(p) = parent {
            if own.contains_key(&p) || !nodes.get(&p).is_some_and(|n| n.alive) {
                break;
            }
            own.insert(p, empty_usage(p, nodes));
            parent = own.get(&p).and_then(|u| u.parent);
        }
    }
    for usage in own.values_mut() {
        usage.total_slab_bytes = usage.slab_bytes;
        usage.total_percpu_bytes = usage.percpu_bytes;
        usage.total_objects = usage.slab_objects + usage.percpu_objects;
        usage.total_accounted_bytes = usage.accounted_bytes;
        usage.total_unaccounted_bytes = usage.unaccounted_bytes;
    }
    // Deepest first, so that each child is complete before it is added to its parent.
    let mut order: Vec<(usize, u64)> = own
        .values()
        .map(|u| (u.path.matches('/').count(), u.id))
        .collect();
    order.sort_by(|a, b| b.cmp(a));
    for (_, id) in order {
        let Some(child) = own.get(&id) else { continue };
        let (parent, slab, percpu, objects, accounted, unaccounted) = (
            child.parent,
            child.total_slab_bytes,
            child.total_percpu_bytes,
            child.total_objects,
            child.total_accounted_bytes,
            child.total_unaccounted_bytes,
        );
        if let Some(p) = parent.filter(|p| *p != id).and_then(|p| own.get_mut(&p)) {
            p.total_slab_bytes += slab;
            p.total_percpu_bytes += percpu;
            p.total_objects += objects;
            p.total_accounted_bytes += accounted;
            p.total_unaccounted_bytes += unaccounted;
        }
    }
    let mut cgroups: Vec<CgroupUsage> = own.into_values().collect();
    cgroups.sort_by(|a, b| a.path.cmp(&b.path));
    cgroups
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use kmemcg_common::{CACHE_ID_PERCPU, kmalloc_cache_id};

    use super::*;

    const DENTRY: u64 = 0xffff_8880_0000_1000;
    const ROOT: u64 = 1;

    fn stats(live_bytes: i64, live_objects: i64, accounted_bytes: i64) -> CacheStats {
        CacheStats {
            live_bytes,
            live_objects,
            accounted_bytes,
            accounted_objects: live_objects,
            allocs: live_objects.max(0) as u64 + 1,
            frees: 1,
            budgets: 0,
            shadow_objects: 0,
            shadow_bytes: 0,
        }
    }

    fn key(cgroup_id: u64, cache_id: u64) -> StatsKey {
        StatsKey {
            owner: cgroup_id,
            cache_id,
            cgroup_id,
        }
    }

    fn node(id: u64, path: &str, parent: Option<u64>, alive: bool) -> (u64, Node) {
        let removed_at = (!alive).then(|| SystemTime::UNIX_EPOCH + Duration::from_secs(1000));
        (
            id,
            Node {
                id,
                path: path.into(),
                parent,
                alive,
                removed_at,
            },
        )
    }

    /// / -> a -> b -> c, with `dead` removed.
    fn tree(dead: &[u64]) -> Nodes {
        [
            node(ROOT, "/", None, true),
            node(10, "/a", Some(ROOT), !dead.contains(&10)),
            node(11, "/a/b", Some(10), !dead.contains(&11)),
            node(12, "/a/b/c", Some(11), !dead.contains(&12)),
        ]
        .into_iter()
        .collect()
    }

    fn names() -> HashMap<u64, String> {
        HashMap::from([(DENTRY, "dentry".to_string())])
    }

    fn find<'a>(report: &'a Report, path: &str) -> &'a CgroupUsage {
        report
            .cgroups
            .iter()
            .find(|c| c.path == path)
            .unwrap_or_else(|| panic!("{path} not in {report:#?}"))
    }

    #[test]
    fn names_kmalloc_buckets_like_the_kernel() {
        let names = HashMap::new();
        let name = |id| cache_name(id, &names).0;
        assert_eq!(name(kmalloc_cache_id(64, false)), "kmalloc-64");
        assert_eq!(name(kmalloc_cache_id(192, true)), "kmalloc-cg-192");
        assert_eq!(name(kmalloc_cache_id(1024, false)), "kmalloc-1k");
        assert_eq!(name(kmalloc_cache_id(8192, true)), "kmalloc-cg-8k");
        assert_eq!(name(kmalloc_cache_id(16384, false)), "kmalloc-large");
        assert_eq!(name(CACHE_ID_PERCPU), "percpu");
        assert_eq!(cache_name(CACHE_ID_PERCPU, &names).1, MemoryKind::Percpu);
        assert_eq!(
            cache_name(kmalloc_cache_id(64, false), &names).1,
            MemoryKind::Kmalloc
        );
        assert_eq!(name(DENTRY), format!("<cache {DENTRY:#x}>"));
    }

    #[test]
    fn splits_slab_percpu_and_accounted() {
        let entries = vec![
            (key(10, DENTRY), stats(1920, 10, 1920)),
            (key(10, kmalloc_cache_id(64, false)), stats(640, 10, 0)),
            (key(10, CACHE_ID_PERCPU), stats(4096, 2, 4096)),
        ];
        let report = build(&entries, &names(), &tree(&[]), ROOT);
        let u = find(&report, "/a");
        assert_eq!((u.id, u.alive, u.parent), (10, true, Some(ROOT)));
        assert_eq!((u.slab_bytes, u.slab_objects), (2560, 20));
        assert_eq!((u.percpu_bytes, u.percpu_objects), (4096, 2));
        assert_eq!(u.accounted_bytes, 1920 + 4096);
        assert_eq!(u.unaccounted_bytes, 640);
        assert_eq!((u.allocs, u.frees), (11 + 11 + 3, 3));
        let names: Vec<&str> = u.caches.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["percpu", "dentry", "kmalloc-64"]);
        assert!(report.dying.is_empty());
    }

    #[test]
    fn own_and_recursive_totals_of_a_nested_tree() {
        let entries = vec![
            (key(10, DENTRY), stats(100, 1, 0)),
            (key(11, DENTRY), stats(200, 2, 0)),
            (key(12, DENTRY), stats(400, 4, 0)),
            (key(12, CACHE_ID_PERCPU), stats(800, 1, 0)),
        ];
        let report = build(&entries, &names(), &tree(&[]), ROOT);
        let (a, b, c) = (
            find(&report, "/a"),
            find(&report, "/a/b"),
            find(&report, "/a/b/c"),
        );
        assert_eq!(
            (a.slab_bytes, a.total_slab_bytes, a.total_percpu_bytes),
            (100, 700, 800)
        );
        assert_eq!(
            (b.slab_bytes, b.total_slab_bytes, b.total_objects),
            (200, 600, 7)
        );
        assert_eq!(
            (c.slab_bytes, c.percpu_bytes, c.total_objects),
            (400, 800, 5)
        );
        // The root is listed as the ancestor holding everything.
        let root = find(&report, "/");
        assert_eq!((root.slab_bytes, root.total_slab_bytes), (0, 700));
    }

    #[test]
    fn a_removed_cgroup_is_charged_to_its_parent_and_totals_do_not_change() {
        let entries = vec![
            (key(11, DENTRY), stats(200, 2, 0)),
            (key(12, DENTRY), stats(400, 4, 0)),
        ];
        let before = build(&entries, &names(), &tree(&[]), ROOT);
        let after = build(&entries, &names(), &tree(&[12]), ROOT);
        let b = find(&after, "/a/b");
        assert_eq!(b.slab_bytes, 600);
        assert_eq!(b.reparented_bytes, 400);
        assert_eq!(b.total_slab_bytes, find(&before, "/a/b").total_slab_bytes);
        assert_eq!(
            find(&after, "/a").total_slab_bytes,
            find(&before, "/a").total_slab_bytes
        );
        // Allocation counters stay with the removed cgroup.
        assert_eq!(b.allocs, 3);
        assert!(after.cgroups.iter().all(|c| c.path != "/a/b/c"));
        let dying = &after.dying[0];
        assert_eq!((dying.id, dying.path.as_str()), (12, "/a/b/c"));
        assert_eq!((dying.residual_bytes, dying.residual_objects), (400, 4));
        assert_eq!(
            (
                dying.charged_ancestor_id,
                dying.charged_ancestor_path.as_str()
            ),
            (11, "/a/b")
        );
        assert_eq!(dying.removed_at, Some(1000));
        assert_eq!(dying.caches[0].name, "dentry");
    }

    #[test]
    fn a_chain_of_removals_ends_at_the_nearest_survivor() {
        let entries = vec![
            (key(11, DENTRY), stats(200, 2, 0)),
            (key(12, DENTRY), stats(400, 4, 0)),
        ];
        let report = build(&entries, &names(), &tree(&[12, 11]), ROOT);
        let a = find(&report, "/a");
        assert_eq!(
            (a.slab_bytes, a.reparented_bytes, a.total_slab_bytes),
            (600, 600, 600)
        );
        assert_eq!(report.dying.len(), 2);
        assert!(report.dying.iter().all(|d| d.charged_ancestor_id == 10));
    }

    #[test]
    fn a_removed_cgroup_holding_nothing_is_not_dying() {
        let entries = vec![(key(12, DENTRY), stats(0, 0, 0))];
        let report = build(&entries, &names(), &tree(&[12]), ROOT);
        assert!(report.dying.is_empty());
        assert_eq!(find(&report, "/a/b").slab_bytes, 0);
    }

    #[test]
    fn unknown_ids_are_charged_to_the_root_and_torn_reads_clamped() {
        let other = DENTRY + 0x100;
        let names = HashMap::from([
            (DENTRY, "dentry".to_string()),
            (other, "dentry".to_string()),
        ]);
        let entries = vec![
            (key(99, DENTRY), stats(192, 1, 0)),
            (key(99, other), stats(-192, -1, 0)),
        ];
        let report = build(&entries, &names, &tree(&[]), ROOT);
        let root = find(&report, "/");
        assert_eq!((root.slab_bytes, root.reparented_bytes), (192, 192));
        assert_eq!(root.caches.len(), 1);
        assert_eq!(report.dying[0].path, "<unknown cgroup 99>");
        assert_eq!(report.dying[0].removed_at, None);
    }
}
