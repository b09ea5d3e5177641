//! Turns summed map entries into per-cgroup usage: cache names, slab/percpu split, accounted
//! part. Pure, so that it is tested without a kernel.
use std::collections::{BTreeMap, HashMap};

use kmemcg_common::{CacheKind, CacheStats, StatsKey};

use crate::api::{CacheUsage, CgroupUsage};

/// Name of a cache id: the slab cache's own name, the kmalloc bucket the kernel would use, or
/// `percpu`.
pub fn cache_name(cache_id: u64, names: &HashMap<u64, String>) -> String {
    match CacheKind::of(cache_id) {
        CacheKind::Slab(addr) => names
            .get(&addr)
            .cloned()
            .unwrap_or_else(|| format!("<cache {addr:#x}>")),
        CacheKind::Kmalloc { bytes, accounted } => kmalloc_name(bytes, accounted),
        CacheKind::Percpu => "percpu".into(),
        CacheKind::Unknown(id) => format!("<unknown {id}>"),
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

/// Builds one [`CgroupUsage`] per cgroup id in `stats`. `paths` gives each id's path and
/// whether the cgroup is alive.
pub fn build(
    stats: &[(StatsKey, CacheStats)],
    cache_names: &HashMap<u64, String>,
    paths: &HashMap<u64, (String, bool)>,
) -> Vec<CgroupUsage> {
    let mut by_cgroup: BTreeMap<u64, BTreeMap<String, CacheUsage>> = BTreeMap::new();
    for (key, s) in stats {
        let name = cache_name(key.cache_id, cache_names);
        let cache = by_cgroup
            .entry(key.cgroup_id)
            .or_default()
            .entry(name.clone())
            .or_insert_with(|| CacheUsage {
                name,
                ..Default::default()
            });
        // Per-CPU sums are never negative in total; clamp a torn read to zero.
        cache.bytes += s.live_bytes.max(0) as u64;
        cache.objects += s.live_objects.max(0) as u64;
        cache.accounted_bytes += s.accounted_bytes.max(0) as u64;
        cache.allocs += s.allocs;
        cache.frees += s.frees;
    }
    by_cgroup
        .into_iter()
        .map(|(id, caches)| {
            let (path, alive) = paths
                .get(&id)
                .cloned()
                .unwrap_or_else(|| (format!("<unknown cgroup {id}>"), false));
            usage(id, path, alive, caches.into_values().collect())
        })
        .collect()
}

fn usage(id: u64, path: String, alive: bool, mut caches: Vec<CacheUsage>) -> CgroupUsage {
    let mut u = CgroupUsage {
        id,
        path,
        alive,
        ..Default::default()
    };
    for c in &caches {
        if c.name == "percpu" {
            u.percpu_bytes += c.bytes;
            u.percpu_objects += c.objects;
        } else {
            u.slab_bytes += c.bytes;
            u.slab_objects += c.objects;
        }
        u.accounted_bytes += c.accounted_bytes;
        u.allocs += c.allocs;
        u.frees += c.frees;
    }
    u.unaccounted_bytes = u.total_bytes().saturating_sub(u.accounted_bytes);
    caches.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.name.cmp(&b.name)));
    u.caches = caches;
    u
}

#[cfg(test)]
mod tests {
    use kmemcg_common::{CACHE_ID_PERCPU, kmalloc_cache_id};

    use super::*;

    const DENTRY: u64 = 0xffff_8880_0000_1000;

    fn stats(live_bytes: i64, live_objects: i64, accounted_bytes: i64) -> CacheStats {
        CacheStats {
            live_bytes,
            live_objects,
            accounted_bytes,
            accounted_objects: live_objects,
            allocs: live_objects as u64 + 1,
            frees: 1,
        }
    }

    #[test]
    fn names_kmalloc_buckets_like_the_kernel() {
        let names = HashMap::new();
        assert_eq!(
            cache_name(kmalloc_cache_id(64, false), &names),
            "kmalloc-64"
        );
        assert_eq!(
            cache_name(kmalloc_cache_id(192, true), &names),
            "kmalloc-cg-192"
        );
        assert_eq!(
            cache_name(kmalloc_cache_id(1024, false), &names),
            "kmalloc-1k"
        );
        assert_eq!(
            cache_name(kmalloc_cache_id(8192, true), &names),
            "kmalloc-cg-8k"
        );
        assert_eq!(
            cache_name(kmalloc_cache_id(16384, false), &names),
            "kmalloc-large"
        );
        assert_eq!(cache_name(CACHE_ID_PERCPU, &names), "percpu");
        assert_eq!(cache_name(DENTRY, &names), format!("<cache {DENTRY:#x}>"));
    }

    #[test]
    fn splits_slab_percpu_and_accounted() {
        let names = HashMap::from([(DENTRY, "dentry".to_string())]);
        let key = |cache_id| StatsKey {
            cgroup_id: 42,
            cache_id,
        };
        let entries = vec![
            (key(DENTRY), stats(1920, 10, 1920)),
            (key(kmalloc_cache_id(64, false)), stats(640, 10, 0)),
            (key(CACHE_ID_PERCPU), stats(4096, 2, 4096)),
        ];
        let paths = HashMap::from([(42, ("/kmemcg-test".to_string(), true))]);
        let report = build(&entries, &names, &paths);
        assert_eq!(report.len(), 1);
        let u = &report[0];
        assert_eq!((u.id, u.path.as_str(), u.alive), (42, "/kmemcg-test", true));
        assert_eq!((u.slab_bytes, u.slab_objects), (2560, 20));
        assert_eq!((u.percpu_bytes, u.percpu_objects), (4096, 2));
        assert_eq!(u.accounted_bytes, 1920 + 4096);
        assert_eq!(u.unaccounted_bytes, 640);
        assert_eq!((u.allocs, u.frees), (11 + 11 + 3, 3));
        let names: Vec<&str> = u.caches.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["percpu", "dentry", "kmalloc-64"]);
    }

    #[test]
    fn merges_ids_with_one_name_and_clamps_torn_reads() {
        let other_dentry = DENTRY + 0x100;
        let names = HashMap::from([
            (DENTRY, "dentry".to_string()),
            (other_dentry, "dentry".to_string()),
        ]);
        let key = |cache_id| StatsKey {
            cgroup_id: 7,
            cache_id,
        };
        let entries = vec![
            (key(DENTRY), stats(192, 1, 0)),
            (key(other_dentry), stats(-192, -1, 0)),
        ];
        let report = build(&entries, &names, &HashMap::new());
        assert_eq!(report[0].caches.len(), 1);
        assert_eq!(report[0].slab_bytes, 192);
        assert!(!report[0].alive);
        assert!(report[0].path.contains("unknown"));
    }
}
