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
    /// The kernel's side: whether its memory cgroup is still kept and what charges it (null
    /// when kmemcg cannot look, see the status's `kernel_memcgs`).
    #[serde(default)]
    pub kernel_memcg: Option<KernelMemcgState>,
}

/// A removed cgroup's memory cgroup as the kernel keeps it (offline, not freed). Bytes are
/// null where this kernel does not let kmemcg read them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelMemcgState {
    /// False once the kernel has freed it.
    pub alive_in_kernel: bool,
    /// Its page counter (`memory.usage`), descendants included.
    pub charged_bytes: u64,
    /// File page cache, anonymous and shmem/tmpfs pages on its LRU lists.
    pub file_bytes: Option<u64>,
    pub anon_bytes: Option<u64>,
    pub shmem_bytes: Option<u64>,
    /// Its statistics' slab, percpu and kernel (all kernel memory) bytes.
    pub slab_bytes: Option<u64>,
    pub percpu_bytes: Option<u64>,
    #[serde(default)]
    pub kernel_bytes: Option<u64>,
    /// What the memcg's own structures weigh (mostly per-CPU statistics), estimated from
    /// struct sizes (see the status's `kernel_memcgs.own_bytes_basis`).
    #[serde(default)]
    pub own_bytes_estimate: Option<u64>,
    /// When kmemcg saw the cgroup removed, seconds since the Unix epoch; null when it was
    /// removed before kmemcg started (`removed_before_start`).
    pub removed_at: Option<u64>,
    #[serde(default)]
    pub removed_before_start: bool,
    /// Why the kernel keeps it, in words a user can act on.
    pub reason: String,
    /// The files whose pages still charge it, largest first.
    #[serde(default)]
    pub files: Vec<ChargedFile>,
    /// Its cgroup's id in the memory controller's hierarchy (the v1 one on hybrid hosts).
    #[serde(default)]
    pub memcg_cgroup_id: u64,
}

/// A file whose pages charge a dying memory cgroup.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargedFile {
    /// Full path where kmemcg can see the filesystem mounted, else `dev <major:minor>:` and
    /// the path inside the filesystem.
    pub path: String,
    pub inode: u64,
    pub bytes: u64,
    /// tmpfs/shmem (true) or page cache of a disk file.
    pub shmem: bool,
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
    /// True when accounted slab objects are counted from the kernel's own owner records (the
    /// ledger: no live-object entry each, recounted by the inventory), false where the
    /// inventory cannot run and every object takes a live-object entry.
    #[serde(default)]
    pub ledger: bool,
    /// The ledger's recounts (absent when the ledger is off).
    #[serde(default)]
    pub recount: Option<crate::truth::recount::RecountStatus>,
    /// One unaccounted slab object in this many is tracked, chosen by address, and stands for
    /// this many (1: every one). Sampled where the ledger is on: `unaccounted_bytes` and the
    /// objects of caches without `SLAB_ACCOUNT` are then estimates, with a standard deviation
    /// of `sqrt(n * (one_in - 1))` objects for `n` objects; accounted figures stay exact.
    #[serde(default)]
    pub unaccounted_sample_one_in: u64,
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
    /// Memory cgroups the kernel keeps after their removal, and the bytes charged to them
    /// (nested ones counted once).
    #[serde(default)]
    pub kernel_dying_memcgs: u64,
    #[serde(default)]
    pub kernel_dying_memcg_bytes: u64,
    #[serde(default)]
    pub kernel_memcgs: KernelMemcgsStatus,
    /// Which of kmemcg's corrections are in force, and why not where one is off.
    #[serde(default)]
    pub corrections: Corrections,
}

impl Status {
    /// What people reading the figures should know of the sampling of unaccounted objects,
    /// where it is in force: lines of at most 80 columns.
    pub fn sampling_note(&self) -> Option<String> {
        let n = self.unaccounted_sample_one_in;
        (n > 1).then(|| {
            format!(
                "~ 1 in {n} slab objects of caches without SLAB_ACCOUNT is tracked, chosen by\n  \
                 address, and stands for {n}: UNACCOUNTED and those caches' figures are\n  \
                 estimates (standard deviation sqrt({}n) objects for n). Caches with\n  \
                 SLAB_ACCOUNT, percpu and large kmallocs are exact.",
                n - 1
            )
        })
    }
}

/// The corrections that make kmemcg's figures match the kernel's, each in force or not (a
/// kernel without what one needs, or privileges that hide kernel addresses).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Corrections {
    /// Slab owner-record vectors (allocated by `alloc_slab_obj_exts`) are not charged to the
    /// cgroup whose allocation needed a new slab.
    pub owner_vectors_excluded: Correction,
    /// The memory map's bases are known (fixed, or read from the kernel's variables): what
    /// the inventory and the sweep go from an object's address to its slab with.
    pub memory_map_bases: Correction,
    /// Objects live before the start are found ([`InventoryStatus`]).
    pub inventory: Correction,
    /// Objects freed without a free tracepoint are uncharged ([`SweepStatus`]).
    pub sweep: Correction,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Correction {
    pub in_force: bool,
    /// Why it is not in force, and what would put it in force.
    pub reason: Option<String>,
}

impl<T> From<&Result<T, String>> for Correction {
    fn from(result: &Result<T, String>) -> Self {
        Self {
            in_force: result.is_ok(),
            reason: result.as_ref().err().cloned(),
        }
    }
}

/// The walk of the kernel's memory cgroups (for the dying ones it keeps).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KernelMemcgsStatus {
    pub available: bool,
    /// Why not, when not.
    pub reason: Option<String>,
    /// Why the slab, percpu and kernel split is unknown on this kernel, if it is.
    #[serde(default)]
    pub stats_reason: Option<String>,
    /// This kernel moves a removed cgroup's LRU pages (page cache, tmpfs) to its parent
    /// (Linux 7.x): such pages no longer keep its memory cgroup.
    #[serde(default)]
    pub lru_pages_reparented: bool,
    /// Memory cgroups seen by the last walk, all states.
    pub memcgs: u64,
    /// What the dying ones' own structures weigh in all (estimated), and on what basis.
    pub own_bytes_estimate: u64,
    pub own_bytes_basis: String,
    pub last_ms: f64,
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

/// `POST /api/v1/leaks`: record the outstanding objects of a cgroup and its descendants.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LeakRequest {
    /// cgroup path from the root, e.g. `/kubepods.slice/pod-x`.
    pub path: String,
    /// How long to record (the recording stops by itself then).
    pub for_seconds: f64,
}

/// A leak recording and what it found so far: `GET /api/v1/leaks/{id}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LeakView {
    pub id: u64,
    /// The recorded cgroup's path.
    pub cgroup: String,
    /// When recording started, RFC 3339 (UTC).
    pub since: String,
    /// Seconds recorded so far (until the end, once ended).
    pub recorded_seconds: f64,
    /// Seconds the recording was asked to last.
    pub for_seconds: f64,
    /// `recording` or `done`.
    pub state: String,
    /// Why it ended: `duration` (its time was up), `stopped` (asked to), `cgroup removed`.
    pub ended: Option<String>,
    /// cgroups recorded (the cgroup and its descendants, those created meanwhile included).
    pub cgroups: u64,
    /// Outstanding objects allocated since the start, grouped by (cache, call site), most
    /// bytes first. Ages are taken at the end of the recording (now, while it runs).
    pub sites: Vec<LeakSite>,
    /// Objects the cgroup holds that were allocated before the recording (found by the
    /// inventory, or allocated earlier), per cache: never mixed into the ages.
    pub before_recording: Vec<LeakCache>,
    /// Sites whose objects are older than this are counted in `older_objects`.
    pub older_than_seconds: f64,
    /// Allocations of recorded cgroups that could not be recorded (the object table was
    /// full), since the start.
    pub dropped_objects: u64,
    /// What makes the figures incomplete or the names missing, said plainly.
    pub warnings: Vec<String>,
}

/// Outstanding objects of one (cache, call site).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LeakSite {
    /// `function+0xoffset` from /proc/kallsyms, or the address in hex when it is hidden.
    pub function: String,
    /// The kernel module, None for the kernel itself.
    pub module: Option<String>,
    /// The call site's address in hex.
    pub address: String,
    /// Cache name (`dentry`, `kmalloc-64`, `percpu`, ...).
    pub cache: String,
    pub objects: u64,
    pub bytes: u64,
    /// Outstanding objects per minute of recording.
    pub growth_per_minute: f64,
    pub median_age_seconds: f64,
    pub p90_age_seconds: f64,
    pub oldest_seconds: f64,
    /// Objects older than `older_than_seconds`.
    pub older_objects: u64,
}

/// Objects of one cache.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LeakCache {
    pub cache: String,
    pub objects: u64,
    pub bytes: u64,
}
