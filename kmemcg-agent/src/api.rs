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
    /// Always true here: removed cgroups are listed by `GET /api/v1/dying`, and what they
    /// still hold is charged to their nearest live ancestor.
    pub alive: bool,
    /// Id of the parent cgroup; None for the root.
    #[serde(default)]
    pub parent: Option<u64>,
    /// Own figures: charged to this cgroup directly, including what was reparented to it from
    /// removed descendants.
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
    /// The part of the own bytes that removed descendants still hold.
    #[serde(default)]
    pub reparented_bytes: u64,
    /// Recursive totals: this cgroup and all its descendants.
    #[serde(default)]
    pub total_slab_bytes: u64,
    #[serde(default)]
    pub total_percpu_bytes: u64,
    /// Slab and percpu objects.
    #[serde(default)]
    pub total_objects: u64,
    /// Recursive accounted and unaccounted bytes.
    #[serde(default)]
    pub total_accounted_bytes: u64,
    #[serde(default)]
    pub total_unaccounted_bytes: u64,
    /// Allocations were dropped (a full map) while this cgroup or a descendant allocated:
    /// its figures may be below what it holds.
    #[serde(default)]
    pub unreliable: bool,
    /// What the kernel's memcg charges this cgroup (and its descendants) for kernel memory;
    /// null where the kernel keeps no figure for it (no memory controller on it).
    #[serde(default)]
    pub kernel: Option<Box<KernelMemory>>,
}

/// The kernel's own figures for a cgroup's kernel memory, recursive as the kernel keeps them.
/// A field is null where this kernel or hierarchy has no such figure.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelMemory {
    /// Where they come from: `memory.stat` (cgroup v2) or `memory.kmem.usage_in_bytes`
    /// (cgroup v1, the memory cgroup at the same path).
    pub source: String,
    /// All kernel memory charged: v2 `kernel`, v1 `memory.kmem.usage_in_bytes`.
    pub kernel_bytes: Option<u64>,
    pub slab_bytes: Option<u64>,
    pub percpu_bytes: Option<u64>,
    pub kernel_stack_bytes: Option<u64>,
    pub pagetables_bytes: Option<u64>,
    pub vmalloc_bytes: Option<u64>,
    /// Socket buffers: v2 `sock`, v1 `memory.kmem.tcp.usage_in_bytes`.
    pub sock_bytes: Option<u64>,
    /// kmemcg's recursive accounted bytes minus the kernel's slab + percpu (v2), or minus its
    /// kmem counter (v1, which also counts stacks and page tables).
    pub drift_bytes: Option<i64>,
}

impl CgroupUsage {
    /// Slab plus percpu bytes.
    pub fn total_bytes(&self) -> u64 {
        self.slab_bytes + self.percpu_bytes
    }

    /// Recursive slab plus percpu bytes.
    pub fn total_recursive_bytes(&self) -> u64 {
        self.total_slab_bytes + self.total_percpu_bytes
    }

    /// The cache holding the most bytes.
    pub fn top_cache(&self) -> Option<&CacheUsage> {
        self.caches.first()
    }
}

/// What kind of memory a cache row is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemoryKind {
    /// A named slab cache (`dentry`, `sock_inode_cache`, ...).
    #[default]
    Slab,
    /// A kmalloc bucket (`kmalloc-64`, `kmalloc-cg-192`, `kmalloc-large`).
    Kmalloc,
    /// Per-CPU memory (`percpu`).
    Percpu,
}

impl MemoryKind {
    /// Slab caches and kmalloc buckets are both slab memory.
    pub fn is_percpu(self) -> bool {
        self == MemoryKind::Percpu
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheUsage {
    /// Slab cache name (`dentry`, `kmalloc-64`, `kmalloc-cg-192`, ...) or `percpu`.
    pub name: String,
    /// `slab`, `kmalloc` or `percpu`.
    #[serde(default)]
    pub kind: MemoryKind,
    pub bytes: u64,
    pub objects: u64,
    pub accounted_bytes: u64,
    pub allocs: u64,
    pub frees: u64,
    /// Other caches the kernel merged into this one (`/sys/kernel/slab/<name>` links to the
    /// same cache): their objects are counted here, e.g. `UNIX` in `signal_cache`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merged: Vec<String>,
    /// Size of one object, as `slabtop` shows it (`/sys/kernel/slab/<name>/object_size`);
    /// null for percpu memory, `kmalloc-large` or where sysfs does not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_size: Option<u64>,
}

impl CacheUsage {
    /// The name with the caches merged into it, as people look for them:
    /// `signal_cache (UNIX, UNIX-STREAM)`.
    pub fn display_name(&self) -> String {
        if self.merged.is_empty() {
            self.name.clone()
        } else {
            format!("{} ({})", self.name, self.merged.join(", "))
        }
    }
}

/// How a cgroup got where it is: `GET /api/v1/history?cgroup=PATH`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupHistory {
    pub id: u64,
    pub path: String,
    /// Milliseconds between points (the sampling interval), and the span kept, in seconds.
    pub interval_ms: u64,
    pub window_seconds: u64,
    /// Oldest first.
    pub points: Vec<HistoryPoint>,
    /// The cgroup's largest caches at the last point, largest first, with their bytes a
    /// minute apart (and at the latest sample) and how much they grew over the points kept.
    pub caches: Vec<CacheHistory>,
}

/// One sample of a cgroup's history; figures recursive (it and its descendants), as the
/// kernel's are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPoint {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub slab_bytes: u64,
    pub percpu_bytes: u64,
    /// What the kernel's memcg charged (`kernel` of `KernelMemory`); null without a figure.
    pub kernel_bytes: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheHistory {
    pub name: String,
    /// Bytes at the last point minus bytes at the first point that has the cache (0 bytes
    /// where it was not among the cgroup's largest then).
    pub growth_bytes: i64,
    /// Oldest first.
    pub points: Vec<CachePoint>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachePoint {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub bytes: u64,
}

/// A removed cgroup whose objects are still alive: `GET /api/v1/dying`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DyingCgroup {
    pub id: u64,
    pub path: String,
    /// Slab and percpu bytes its objects still hold.
    pub residual_bytes: u64,
    pub residual_objects: u64,
    /// Its largest caches (at most five).
    pub caches: Vec<CacheUsage>,
    /// When kmemcg saw it removed, seconds since the Unix epoch (None if it was removed
    /// unseen, e.g. before the agent started).
    pub removed_at: Option<u64>,
    /// The nearest live ancestor, now charged with what it holds.
    pub charged_ancestor_id: u64,
    pub charged_ancestor_path: String,
}

/// One reading of the maps: everything the agent serves.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Live cgroups (`GET /api/v1/cgroups`).
    pub cgroups: Vec<CgroupUsage>,
    /// Removed cgroups still holding objects (`GET /api/v1/dying`).
    pub dying: Vec<DyingCgroup>,
    pub status: Status,
}

/// The agent's own state: `GET /api/v1/status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
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
    /// The part of `attached_hooks` attached as plain raw tracepoints, where this kernel's
    /// verifier refuses the BTF-typed programs (before Linux 6.16): same figures, one
    /// `bpf_probe_read_kernel` more per slab allocation.
    #[serde(default)]
    pub raw_tracepoint_hooks: Vec<String>,
    /// `ignore`, `count` or `track`.
    pub root_cgroup_mode: String,
    pub cgroup2_mount: String,
    /// Cgroups listed by /api/v1/cgroups.
    pub cgroups: u64,
    /// Removed cgroups still holding objects, and the bytes they hold.
    #[serde(default)]
    pub dying_cgroups: u64,
    #[serde(default)]
    pub dying_bytes: u64,
    /// cgroup tree events lost because their ring buffer was full (the tree was rescanned).
    #[serde(default)]
    pub lost_cgroup_events: u64,
    /// Times the cgroup tree was rebuilt from a scan of the hierarchy.
    #[serde(default)]
    pub cgroup_rescans: u64,
    /// Cgroups the agent's tree knows (live, and removed ones still holding objects).
    #[serde(default)]
    pub known_cgroups: u64,
    /// How long the last and the slowest reading of the maps took, in milliseconds.
    #[serde(default)]
    pub last_sample_ms: f64,
    #[serde(default)]
    pub max_sample_ms: f64,
    /// Samples taken since start: at the interval, and early ones when a watched cgroup
    /// crossed its budget or the rules changed.
    #[serde(default)]
    pub samples: u64,
    /// Cgroups that limit rules match, whose budgets the eBPF programs watch between samples.
    #[serde(default)]
    pub watched_cgroups: u64,
    /// When the data was read, seconds since the Unix epoch.
    pub updated_at: u64,
    /// Where the kernel's own figures come from (`memory.stat`, `memory.kmem.usage_in_bytes`),
    /// or null when this host has no memory controller to read them from.
    #[serde(default)]
    pub kernel_figures_source: Option<String>,
    /// Sum of the drift of the top-level cgroups with a kernel figure (no double counting of
    /// nested ones): how far kmemcg's accounted bytes are from the kernel's, host-wide.
    #[serde(default)]
    pub kernel_drift_bytes: Option<i64>,
    /// The inventory of objects that were live before kmemcg started.
    #[serde(default)]
    pub inventory: InventoryStatus,
    /// The sweep that uncharges objects freed without a free tracepoint.
    #[serde(default)]
    pub sweep: SweepStatus,
}

/// The inventory at start: live accounted slab objects found in the kernel's owner records
/// (`slab->obj_exts`) and taken into tracking.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct InventoryStatus {
    /// Whether this kernel allowed it; when not, `reason` says why.
    pub available: bool,
    pub reason: Option<String>,
    /// When it started (seconds since the Unix epoch) and how long it took.
    pub started_at: u64,
    pub duration_ms: f64,
    /// Page frames walked and slab pages among them.
    pub pages_walked: u64,
    pub slab_pages: u64,
    /// Slab objects and percpu allocations with an owner record (accounted to a memcg), and
    /// their bytes.
    pub objects_found: u64,
    pub bytes_found: u64,
    /// Of those, taken into tracking (charged to their cgroup and cache) and found tracked
    /// already (allocated since the hooks attached, or kept in pinned maps).
    pub objects_added: u64,
    pub bytes_added: u64,
    pub already_tracked: u64,
    /// Of those taken: in place of an entry at the same address for another owner or cache,
    /// left by an object freed while no agent traced (pinned maps across a restart).
    #[serde(default)]
    pub replaced_stale: u64,
    /// Owned by a memory cgroup with no cgroup v2 counterpart of the same path, or by the
    /// root cgroup while it is not tracked: found but not attributed.
    pub unmapped_objects: u64,
    pub unmapped_bytes: u64,
    /// Not taken because a table was full, or because the inventory takes at most half of
    /// the live-object table.
    pub dropped: u64,
    /// Host-wide: slab bytes in use when it ran, and the part no memcg owns (unaccounted,
    /// allocated before start): kmemcg cannot attribute it. Slabs held by a CPU count as in
    /// use, so this is an upper bound.
    pub host_slab_bytes: u64,
    pub unattributable_slab_bytes: u64,
    /// Host-wide percpu memory (/proc/meminfo), and the part no memcg owns (static percpu
    /// variables, unaccounted allocations, free space in populated chunks): an upper bound of
    /// what kmemcg cannot attribute.
    pub host_percpu_bytes: u64,
    #[serde(default)]
    pub unattributable_percpu_bytes: u64,
    /// Whether percpu allocations were looked for (else `percpu_reason` says why), how long
    /// reading the chunks took (part of `duration_ms`), the percpu chunks found, and the accounted allocations on them (bytes for every possible
    /// CPU, as kmemcg counts percpu memory); included in `objects_found` and `bytes_found`.
    #[serde(default)]
    pub percpu_available: bool,
    #[serde(default)]
    pub percpu_reason: Option<String>,
    #[serde(default)]
    pub percpu_duration_ms: f64,
    #[serde(default)]
    pub percpu_chunks: u64,
    #[serde(default)]
    pub percpu_objects_found: u64,
    #[serde(default)]
    pub percpu_bytes_found: u64,
}

/// The sweep: tracked objects checked against the slab, and those found freed without a free
/// tracepoint (kfree_rcu batches, slab sheaves, kmem_cache_free_bulk), uncharged.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SweepStatus {
    pub available: bool,
    pub reason: Option<String>,
    /// Sweeps done, and how long the last and the slowest took.
    pub sweeps: u64,
    pub last_ms: f64,
    pub max_ms: f64,
    /// Cumulative: tracked objects checked, and found freed (objects and bytes).
    pub checked: u64,
    pub swept_objects: u64,
    pub swept_bytes: u64,
    /// How the swept were found freed: owner record cleared, slab page freed or reused, on
    /// the slab's freelist.
    pub by_owner_record: u64,
    pub by_page: u64,
    pub by_freelist: u64,
    /// `vmap_area` objects whose range was handed back to vmalloc (they wait in its lazy
    /// list, pools or free tree, no longer the allocating cgroup's).
    #[serde(default)]
    pub by_vmalloc: u64,
    /// Whether CPU freelists are looked at too (else only slab freelists), and why not.
    #[serde(default)]
    pub cpu_freelists: bool,
    #[serde(default)]
    pub cpu_freelists_reason: Option<String>,
    /// Swept because they sat in a slab sheaf (a CPU's, or a node's barn), cumulative.
    #[serde(default)]
    pub by_sheaf: u64,
    /// Whether slab sheaves are looked at (kernels with sheaves, 6.18+), and why not; how
    /// many caches had sheaves at the last sweep.
    #[serde(default)]
    pub sheaves: bool,
    #[serde(default)]
    pub sheaves_reason: Option<String>,
    #[serde(default)]
    pub sheaf_caches: u64,
}
