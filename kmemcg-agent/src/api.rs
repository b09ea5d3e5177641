//! The JSON API's types: what `GET /api/v1/cgroups` and `GET /api/v1/status` return, and what
//! `kmemcg stat` reads back.
use serde::{Deserialize, Serialize};

/// Default address of the agent's HTTP server.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9847";

/// One cgroup's kernel memory, as charged by allocations made by its tasks since kmemcg started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupUsage {
    /// cgroup v2 id (the inode number of its directory).
    pub id: u64,
    /// Path from the cgroup root, e.g. `/system.slice/foo.service`; `/` is the root cgroup.
    pub path: String,
    /// False once the cgroup has been removed (its objects may still be alive).
    pub alive: bool,
    pub slab_bytes: u64,
    pub slab_objects: u64,
    pub percpu_bytes: u64,
    pub percpu_objects: u64,
    /// Slab and percpu bytes that the kernel's memcg also charges (`__GFP_ACCOUNT`,
    /// `SLAB_ACCOUNT`).
    pub accounted_bytes: u64,
    /// Slab and percpu bytes the kernel's memcg does not charge to anyone.
    pub unaccounted_bytes: u64,
    /// Allocations since kmemcg started.
    pub allocs: u64,
    /// Frees of objects allocated since kmemcg started.
    pub frees: u64,
    /// Per cache, largest first; percpu memory is the cache `percpu`.
    pub caches: Vec<CacheUsage>,
}

impl CgroupUsage {
    /// Slab plus percpu bytes.
    pub fn total_bytes(&self) -> u64 {
        self.slab_bytes + self.percpu_bytes
    }

    /// The cache holding the most bytes.
    pub fn top_cache(&self) -> Option<&CacheUsage> {
        self.caches.first()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheUsage {
    /// Slab cache name (`dentry`, `kmalloc-64`, `kmalloc-cg-192`, ...) or `percpu`.
    pub name: String,
    pub bytes: u64,
    pub objects: u64,
    pub accounted_bytes: u64,
    pub allocs: u64,
    pub frees: u64,
}

/// The agent's own state: `GET /api/v1/status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub kernel_version: String,
    pub uptime_seconds: u64,
    /// Objects whose owner is remembered now.
    pub tracked_objects: u64,
    /// Capacity of the live-object map.
    pub map_capacity: u64,
    /// Allocations not tracked because a map was full (`dropped_live_map_full` +
    /// `dropped_stats_map_full`).
    pub dropped: u64,
    pub dropped_live_map_full: u64,
    pub dropped_stats_map_full: u64,
    /// Frees of objects kmemcg never saw allocated.
    pub untracked_frees: u64,
    /// Objects whose free no tracepoint reported (bulk frees), uncharged when their address
    /// was reused.
    pub stale_objects: u64,
    /// (cgroup, cache) counter entries in use, and their capacity.
    pub stats_entries: u64,
    pub stats_capacity: u64,
    pub attached_hooks: Vec<String>,
    /// `ignore`, `count` or `track`.
    pub root_cgroup_mode: String,
    pub cgroup2_mount: String,
    pub cgroups: u64,
    /// When the data was read, seconds since the Unix epoch.
    pub updated_at: u64,
}
