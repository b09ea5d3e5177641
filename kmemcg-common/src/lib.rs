//! The contract between kmemcg's eBPF programs and its agent: map names, map key and value
//! layouts, and the load-time configuration the agent writes into the programs.
//!
//! Every type is `#[repr(C)]`, `Copy`, without implicit padding, and its size is asserted at
//! compile time, because both sides read the same bytes.
#![no_std]

/// Live objects: an open-addressing table of [`LiveObject`] slots (an array map), found by
/// the object's address (slab) or `__percpu` pointer (percpu) through [`live_slot_hash`].
pub const LIVE_OBJECTS: &str = "LIVE_OBJECTS";

/// Slots an address may occupy, from its hash on: when all are taken, the object is dropped.
pub const LIVE_PROBES: u32 = 8;

/// First slot of an address in [`LIVE_OBJECTS`] (before masking to the table's size).
#[inline(always)]
pub const fn live_slot_hash(ptr: u64) -> u32 {
    address_hash(ptr) as u32
}

/// splitmix64's finalizer of an object's address: every address bit reaches every hash bit.
/// Multiplying alone (Fibonacci hashing, kept in the middle bits) put objects at a
/// power-of-two stride in consecutive pages on a few slot runs: 64- to 512-byte objects of
/// fresh slabs were dropped with the table 14% full.
#[inline(always)]
pub const fn address_hash(ptr: u64) -> u64 {
    let mut x = ptr;
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Where the ledger counts the accounted objects, the live-object table tracks one
/// unaccounted slab object in `1 << SAMPLE_SHIFT`, chosen by address, each standing for
/// `1 << SAMPLE_SHIFT` objects ([`OBJECT_SAMPLED`]). The same address is always chosen or
/// never, so a free knows without a lookup whether its object can be in the table. For `n`
/// objects the estimate's standard deviation is `sqrt(n * (2^SAMPLE_SHIFT - 1))` objects.
pub const SAMPLE_SHIFT: u32 = 3;

/// Whether the table tracks the unaccounted slab object at `ptr` when it samples. Uses the
/// hash's top bits, which the slot index (its low bits) does not.
#[inline(always)]
pub const fn is_sampled_address(ptr: u64) -> bool {
    address_hash(ptr) >> (64 - SAMPLE_SHIFT) == 0
}
/// (cgroup, cache) keys: an open-addressing table of [`StatsKey`] slots (an array map; a free
/// slot has cgroup id 0), found through [`stats_slot_hash`].
pub const STATS_KEYS: &str = "STATS_KEYS";
/// [`CacheStats`] per CPU of the key at the same slot of [`STATS_KEYS`]: an array of one
/// block of slots per CPU (slot `s` of CPU `c` at `c * slots + s`), so that each CPU updates
/// memory of its own and the agent reads the slots in use, in place, through `mmap`.
pub const CGROUP_CACHE_STATS: &str = "CGROUP_CACHE_STATS";
/// Ring buffer of u32 slot indexes of [`STATS_KEYS`]: a new (cgroup, cache) key took the slot.
/// The agent follows it to know the slots in use without scanning the table.
pub const STATS_SLOT_EVENTS: &str = "STATS_SLOT_EVENTS";

/// i64 bytes per watched cgroup (array, `mmap`ed by the agent; index 0 is never used): what
/// the cgroup may still allocate before its tightest limit, as the agent computed at its last
/// sample, less what the programs saw allocated since (plus what they saw freed).
pub const LIMIT_BUDGETS: &str = "LIMIT_BUDGETS";
/// Slots of [`LIMIT_BUDGETS`]: at most this many cgroups minus one are watched at once.
pub const MAX_WATCHED: u32 = 4096;
/// Ring buffer of u32 indexes of [`LIMIT_BUDGETS`] that an allocation took below zero: the
/// agent wakes up and samples at once instead of at its next interval.
pub const LIMIT_EVENTS: &str = "LIMIT_EVENTS";
/// Budgets one (cgroup, cache) slot spends from: the 16-bit indexes packed in
/// [`CacheStats::budgets`], of the nearest watched cgroups among the key's cgroup and its
/// ancestors.
pub const BUDGETS_PER_SLOT: u32 = 4;

/// Slots a key may occupy in [`STATS_KEYS`], from its hash on.
pub const STATS_PROBES: u32 = 32;

/// Offset from a key's first slot of its `probe`th candidate: triangular numbers (0, 1, 3, 6,
/// ...), which visit every slot of a power-of-two table and, unlike consecutive slots, do not
/// pile keys into long runs (measured: 4 keys of 60,000 dropped at half the capacity with
/// consecutive probing).
#[inline(always)]
pub const fn stats_probe_offset(probe: u32) -> u32 {
    probe * (probe + 1) / 2
}

/// First slot of a key in [`STATS_KEYS`] (before masking to the table's size).
#[inline(always)]
pub const fn stats_slot_hash(key: &StatsKey) -> u32 {
    // splitmix64's finalizer over both halves: cgroup ids are consecutive, cache ids are
    // addresses with common high bits.
    let mut x = key.owner ^ key.cache_id.rotate_left(32);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (x ^ (x >> 31)) as u32
}
/// `struct kmem_cache` address -> cache name, filled the first time a cache is seen.
pub const CACHE_NAMES: &str = "CACHE_NAMES";
/// One per-CPU [`GlobalCounters`] entry.
pub const GLOBAL_COUNTERS: &str = "GLOBAL_COUNTERS";
/// Ring buffer of [`CgroupEvent`]s.
pub const CGROUP_EVENTS: &str = "CGROUP_EVENTS";

/// Names of the load-time globals (`EbpfLoader::set_global`).
pub mod globals {
    /// [`super::RootCgroupMode`] as u32.
    pub const ROOT_CGROUP_MODE: &str = "ROOT_CGROUP_MODE";
    /// cgroup v2 id of the root cgroup (1 on every kernel seen, but read at load time).
    pub const ROOT_CGROUP_ID: &str = "ROOT_CGROUP_ID";
    /// `__GFP_ACCOUNT` as a mask, from BTF (`___GFP_ACCOUNT_BIT`).
    pub const GFP_ACCOUNT: &str = "GFP_ACCOUNT";
    /// `SLAB_ACCOUNT` as a mask, from BTF (`_SLAB_ACCOUNT`).
    pub const SLAB_ACCOUNT: &str = "SLAB_ACCOUNT";
    /// Where the kernel function that allocates a new slab's owner-record vector
    /// (`alloc_slab_obj_exts`) starts, and its length (u64; 0 when /proc/kallsyms hides it):
    /// kmalloc calls from there are the slab's metadata, not the allocating cgroup's.
    pub const OBJ_EXTS_ALLOCATOR_START: &str = "OBJ_EXTS_ALLOCATOR_START";
    pub const OBJ_EXTS_ALLOCATOR_SIZE: &str = "OBJ_EXTS_ALLOCATOR_SIZE";
    /// Byte offset of `struct kmem_cache::flags`, from BTF.
    pub const KMEM_CACHE_FLAGS_OFFSET: &str = "KMEM_CACHE_FLAGS_OFFSET";
    /// Byte offset of `struct kmem_cache::size`, from BTF.
    pub const KMEM_CACHE_SIZE_OFFSET: &str = "KMEM_CACHE_SIZE_OFFSET";
    /// Byte offset of `struct kmem_cache::name`, from BTF.
    pub const KMEM_CACHE_NAME_OFFSET: &str = "KMEM_CACHE_NAME_OFFSET";
    /// 1 when no `kmalloc-cg-*` cache has a red zone (u32): an accounted kmalloc's object
    /// size is then the tracepoint's `bytes_alloc`, and its first object is at the slab's
    /// start, with no read of the cache.
    pub const KMALLOC_CG_UNPADDED: &str = "KMALLOC_CG_UNPADDED";
    /// Number of possible CPUs (u64): a percpu allocation of `size` takes `size` on each.
    pub const POSSIBLE_CPUS: &str = "POSSIBLE_CPUS";
    /// Slots of LIVE_OBJECTS minus one (u32); the table's size is a power of two.
    pub const LIVE_SLOT_MASK: &str = "LIVE_SLOT_MASK";
    /// Slots of STATS_KEYS (and of each CPU's block of CGROUP_CACHE_STATS) minus one (u32).
    pub const STATS_SLOT_MASK: &str = "STATS_SLOT_MASK";
    /// Byte offsets of `struct cgroup::kn`, `struct cgroup::root`, `struct kernfs_node::id`
    /// and `struct cgroup_root::hierarchy_id`, from BTF.
    pub const CGROUP_KN_OFFSET: &str = "CGROUP_KN_OFFSET";
    pub const CGROUP_ROOT_OFFSET: &str = "CGROUP_ROOT_OFFSET";
    pub const KERNFS_NODE_ID_OFFSET: &str = "KERNFS_NODE_ID_OFFSET";
    pub const CGROUP_ROOT_HIERARCHY_ID_OFFSET: &str = "CGROUP_ROOT_HIERARCHY_ID_OFFSET";
}

/// A BTF tracepoint kmemcg attaches a program of the same name to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hook {
    /// The tracepoint, and the program's name in the object.
    pub name: &'static str,
    /// Arguments the program reads, counted as in the tracepoint's TP_PROTO (checked in the
    /// kernel's BTF before loading).
    pub arity: usize,
    pub kind: HookKind,
    /// A plain raw tracepoint program for the same tracepoint, loaded where the verifier
    /// refuses the BTF-typed one (before Linux 6.16 for `const void *` arguments).
    pub raw_fallback: Option<&'static str>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookKind {
    /// Slab and percpu allocations and frees; the benchmark's empty programs have these too.
    Memory,
    /// cgroup v2 tree changes.
    Cgroup,
    /// vmalloc ranges handed back to vmalloc and taken again, for the sweep (see
    /// [`truth::VMALLOC_FREED`]). Optional: attached where the kernel has the tracepoints.
    Vmalloc,
}

/// Every hook: the one table the loader, the BTF check, the benchmark and the status use.
pub const HOOKS: [Hook; 11] = [
    Hook::memory("kmem_cache_alloc", 5).or_raw("kmem_cache_alloc_raw"),
    Hook::memory("kmalloc", 6).or_raw("kmalloc_raw"),
    Hook::memory("kmem_cache_free", 3).or_raw("kmem_cache_free_raw"),
    Hook::memory("kfree", 2).or_raw("kfree_raw"),
    Hook::memory("percpu_alloc_percpu", 10),
    Hook::memory("percpu_free_percpu", 3),
    Hook::cgroup("cgroup_mkdir", 2),
    Hook::cgroup("cgroup_rmdir", 2),
    Hook::cgroup("cgroup_rename", 2),
    Hook::vmalloc("alloc_vmap_area", 6),
    Hook::vmalloc("free_vmap_area_noflush", 3),
];

impl Hook {
    const fn memory(name: &'static str, arity: usize) -> Self {
        Self {
            name,
            arity,
            kind: HookKind::Memory,
            raw_fallback: None,
        }
    }

    const fn cgroup(name: &'static str, arity: usize) -> Self {
        Self {
            name,
            arity,
            kind: HookKind::Cgroup,
            raw_fallback: None,
        }
    }

    const fn or_raw(self, program: &'static str) -> Self {
        Self {
            raw_fallback: Some(program),
            ..self
        }
    }

    const fn vmalloc(name: &'static str, arity: usize) -> Self {
        Self {
            name,
            arity,
            kind: HookKind::Vmalloc,
            raw_fallback: None,
        }
    }
}

/// What the programs do with allocations made by tasks in the root cgroup (kernel threads and,
/// on many hosts, most system services).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootCgroupMode {
    /// Not looked at: no counter, no map entry. Cheapest.
    Ignore = 0,
    /// Allocations counted (`allocs`), objects not remembered, so live figures stay zero and
    /// their frees count as untracked. Cannot fill the live-object map.
    Count = 1,
    /// Tracked like any other cgroup: uses live-object map entries for every root object.
    Track = 2,
}

impl RootCgroupMode {
    pub const fn from_u32(value: u32) -> Option<Self> {
        match value {
            0 => Some(Self::Ignore),
            1 => Some(Self::Count),
            2 => Some(Self::Track),
            _ => None,
        }
    }
}

/// Cache ids: a slab cache is named by its `struct kmem_cache` address (a kernel address, so the
/// top bits are set); kmalloc() and percpu allocations, which do not pass a cache to their
/// tracepoints, get ids below [`KERNEL_ADDRESS_MIN`].
///
/// The lowest kernel address of x86_64 with 5-level paging (57-bit addresses: the direct map
/// starts at 0xff11_0000_0000_0000 without randomization); with 4-level paging kernel
/// addresses start higher, at 0xffff_8000_0000_0000, so this bound holds for both.
pub const KERNEL_ADDRESS_MIN: u64 = 0xff00_0000_0000_0000;
/// All percpu allocations.
pub const CACHE_ID_PERCPU: u64 = 1;
/// kmalloc() allocations: `CACHE_ID_KMALLOC_BASE + 2 * bytes_alloc + accounted`.
pub const CACHE_ID_KMALLOC_BASE: u64 = 1 << 32;

/// Cache id of a kmalloc() of `bytes_alloc` bytes (the kmalloc-N bucket size); accounted
/// kmallocs come from the separate `kmalloc-cg-N` caches.
pub const fn kmalloc_cache_id(bytes_alloc: u64, accounted: bool) -> u64 {
    CACHE_ID_KMALLOC_BASE + 2 * bytes_alloc + accounted as u64
}

/// What a cache id stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheKind {
    /// A `struct kmem_cache` at this address; its name is in [`CACHE_NAMES`].
    Slab(u64),
    /// A kmalloc bucket.
    Kmalloc {
        bytes: u64,
        accounted: bool,
    },
    Percpu,
    Unknown(u64),
}

impl CacheKind {
    pub const fn of(cache_id: u64) -> Self {
        if cache_id >= KERNEL_ADDRESS_MIN {
            Self::Slab(cache_id)
        } else if cache_id == CACHE_ID_PERCPU {
            Self::Percpu
        } else if cache_id >= CACHE_ID_KMALLOC_BASE {
            let rest = cache_id - CACHE_ID_KMALLOC_BASE;
            Self::Kmalloc {
                bytes: rest / 2,
                accounted: rest % 2 == 1,
            }
        } else {
            Self::Unknown(cache_id)
        }
    }
}

/// Largest kmalloc served from a slab cache (`kmalloc-8k`, 4 KiB pages); larger ones take
/// whole pages.
pub const KMALLOC_MAX_CACHE_SIZE: u32 = 8192;

/// Top bit of [`LiveObject::size_and_flags`]: the kernel's memcg charges the object too.
pub const OBJECT_ACCOUNTED: u32 = 1 << 31;
/// Bit 30 of [`LiveObject::size_and_flags`]: the kernel's owner record of the object
/// (`slabobj_ext.objcg`) was seen set, so its clearing later means the object was freed.
pub const OBJECT_OWNER_SEEN: u32 = 1 << 30;
/// Bit 29 of [`LiveObject::size_and_flags`]: a sampled object, which stands for
/// `1 << SAMPLE_SHIFT` objects of its kind (see [`SAMPLE_SHIFT`]).
pub const OBJECT_SAMPLED: u32 = 1 << 29;
/// Bits of [`LiveObject::size_and_flags`] that are flags, not size.
pub const OBJECT_FLAGS: u32 = OBJECT_ACCOUNTED | OBJECT_OWNER_SEEN | OBJECT_SAMPLED;

/// A slot of [`STATS_KEYS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StatsKey {
    /// What the programs find the slot by, with the cache: the cgroup v2 id of the allocating
    /// task, or for the ledger's counts the `struct obj_cgroup` address that the kernel's owner
    /// records name (see [`LEDGER_STATE`]). 0: a free slot.
    pub owner: u64,
    /// See [`CacheKind`].
    pub cache_id: u64,
    /// The cgroup v2 id the counts belong to: the owner itself for a cgroup, the memcg's cgroup
    /// (when the slot was claimed) for an `obj_cgroup`; written after the owner and the cache.
    pub cgroup_id: u64,
}

impl StatsKey {
    /// A key whose owner is a cgroup.
    pub const fn of_cgroup(cgroup_id: u64, cache_id: u64) -> Self {
        Self {
            owner: cgroup_id,
            cache_id,
            cgroup_id,
        }
    }

    /// True when the slot's counts come from the kernel's owner records (the ledger).
    pub const fn is_ledger(&self) -> bool {
        self.owner >= KERNEL_ADDRESS_MIN
    }
}

/// One live object and its owner, a slot of [`LIVE_OBJECTS`] (free when `ptr` is 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveObject {
    /// The object's address; claimed and released with compare-and-swap.
    pub ptr: u64,
    /// Index of the owner's (cgroup, cache) counters in [`CGROUP_CACHE_STATS`].
    pub stats_slot: u32,
    /// Bytes the allocation takes (slab: the cache's object size; kmalloc: the bucket size;
    /// percpu: size x possible CPUs), with [`OBJECT_ACCOUNTED`] in the top bit.
    pub size_and_flags: u32,
}

impl LiveObject {
    #[inline(always)]
    pub const fn bytes(&self) -> u32 {
        self.size_and_flags & !OBJECT_FLAGS
    }

    #[inline(always)]
    pub const fn accounted(&self) -> bool {
        self.size_and_flags & OBJECT_ACCOUNTED != 0
    }

    /// How many objects the entry stands for.
    #[inline(always)]
    pub const fn weight(&self) -> i64 {
        if self.size_and_flags & OBJECT_SAMPLED != 0 {
            1 << SAMPLE_SHIFT
        } else {
            1
        }
    }
}

pub mod truth;
pub use truth::*;
pub mod leaks;
pub mod zombies;

/// Per-CPU counters of one (cgroup, cache). Live figures are signed: an object allocated on one
/// CPU and freed on another makes one CPU's value negative; the sum over CPUs is what counts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub live_bytes: i64,
    pub live_objects: i64,
    /// The part of the live figures that the kernel's memcg also charges (`__GFP_ACCOUNT` or
    /// `SLAB_ACCOUNT`).
    pub accounted_bytes: i64,
    pub accounted_objects: i64,
    /// Allocations seen (tracked or, for the root cgroup in `Count` mode, only counted).
    pub allocs: u64,
    /// Frees of tracked objects.
    pub frees: u64,
    /// Indexes of the [`LIMIT_BUDGETS`] this slot's allocations spend from (16 bits each, 0
    /// for none); written by the agent, the same on every CPU. Not a counter.
    pub budgets: u64,
    /// The ledger's recount (see [`LedgerState::recount_cursor`]): what it found live, plus
    /// what the hooks saw allocated and freed on slabs it had already counted.
    pub shadow_objects: i64,
    pub shadow_bytes: i64,
}

impl CacheStats {
    /// Adds another CPU's counters.
    pub fn add(&mut self, other: &Self) {
        self.live_bytes += other.live_bytes;
        self.live_objects += other.live_objects;
        self.accounted_bytes += other.accounted_bytes;
        self.accounted_objects += other.accounted_objects;
        self.allocs += other.allocs;
        self.frees += other.frees;
        self.shadow_objects += other.shadow_objects;
        self.shadow_bytes += other.shadow_bytes;
    }

    /// The `k`th budget index of a [`Self::budgets`] word (0: none, and none after it).
    #[inline(always)]
    pub const fn budget_index(budgets: u64, k: u32) -> u32 {
        (budgets >> (16 * k)) as u32 & 0xffff
    }

    /// `budgets` with `index` as its `k`th budget index (`index` below 2^16).
    pub const fn with_budget_index(budgets: u64, k: u32, index: u32) -> u64 {
        budgets | (index as u64) << (16 * k)
    }

    /// The budget indexes of [`Self::budgets`] in use.
    pub fn budget_indexes(budgets: u64) -> impl Iterator<Item = u32> {
        (0..BUDGETS_PER_SLOT)
            .map(move |k| Self::budget_index(budgets, k))
            .take_while(|&index| index != 0)
    }
}

/// Host-wide per-CPU counters, value of [`GLOBAL_COUNTERS`] at index 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GlobalCounters {
    /// Allocations not tracked because [`LIVE_OBJECTS`] was full.
    pub dropped_live_full: u64,
    /// Allocations not tracked because [`CGROUP_CACHE_STATS`] was full.
    pub dropped_stats_full: u64,
    /// Frees of objects kmemcg never saw allocated (allocated before it started, by an ignored
    /// cgroup, or dropped).
    pub untracked_frees: u64,
    /// Allocations at an address still held by a tracked object whose free was never traced
    /// (bulk frees have no tracepoint); the stale owner was uncharged.
    pub stale_objects: u64,
    /// cgroup events lost because the ring buffer was full (the agent then rescans).
    pub lost_cgroup_events: u64,
    /// [`STATS_SLOT_EVENTS`] lost because the ring buffer was full (the agent then scans the
    /// key table).
    pub lost_slot_events: u64,
}

impl GlobalCounters {
    pub fn add(&mut self, other: &Self) {
        self.dropped_live_full += other.dropped_live_full;
        self.dropped_stats_full += other.dropped_stats_full;
        self.untracked_frees += other.untracked_frees;
        self.stale_objects += other.stale_objects;
        self.lost_cgroup_events += other.lost_cgroup_events;
        self.lost_slot_events += other.lost_slot_events;
    }
}

pub const CGROUP_EVENT_MKDIR: u32 = 1;
pub const CGROUP_EVENT_RMDIR: u32 = 2;
pub const CGROUP_EVENT_RENAME: u32 = 3;
/// Longest cgroup path an event carries (Kubernetes container paths are about 150 bytes).
pub const CGROUP_PATH_LEN: usize = 240;

/// A cgroup v2 tree change, from the cgroup tracepoints.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CgroupEvent {
    /// `CGROUP_EVENT_*`.
    pub kind: u32,
    /// Bytes of `path` used, including its NUL; `CGROUP_PATH_LEN` when it was cut.
    pub path_len: u32,
    /// cgroup v2 id.
    pub id: u64,
    /// Path from the cgroup root, NUL terminated.
    pub path: [u8; CGROUP_PATH_LEN],
}

impl CgroupEvent {
    /// The path, or None when it was cut or unreadable.
    pub fn path(&self) -> Option<&[u8]> {
        let end = self.path.iter().position(|&b| b == 0)?;
        (end > 0).then(|| &self.path[..end])
    }
}

/// Length of a cache name in [`CACHE_NAMES`], NUL padded.
pub const CACHE_NAME_LEN: usize = 64;

/// Value of [`CACHE_NAMES`].
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CacheName {
    pub bytes: [u8; CACHE_NAME_LEN],
}

impl CacheName {
    /// The name up to its first NUL, lossily as UTF-8 is done by the caller.
    pub fn as_bytes(&self) -> &[u8] {
        let end = self
            .bytes
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(CACHE_NAME_LEN);
        &self.bytes[..end]
    }
}

/// The ledger's one [`LedgerState`] (an array map of one entry, not pinned).
///
/// The ledger counts accounted slab objects per (`obj_cgroup`, cache) from the owner record the
/// kernel keeps for each (`slab->obj_exts`, `memcg_data` before 6.10): read at allocation and
/// at free, it needs no entry per object. A recount of every slab's records (the truth walk)
/// finds the objects made before the start and corrects what was freed without a tracepoint.
pub const LEDGER_STATE: &str = "LEDGER_STATE";

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LedgerState {
    /// 1 when the hooks count accounted slab objects in the ledger (set by the agent before
    /// the hooks attach, and only where the recount can run).
    pub enabled: u64,
    /// Base of the `struct page` array and of the direct map, learnt by the first hook.
    pub vmemmap: u64,
    pub page_offset: u64,
    /// Page frames below this one have been recounted: the hooks add what they see on those
    /// slabs to the shadow counters too. 0 outside a recount; `u64::MAX` once it has walked
    /// every page, until the agent takes the difference (shadow - live) as its correction.
    pub recount_cursor: u64,
}

const _: () = assert!(core::mem::size_of::<LedgerState>() == 32);
const _: () = assert!(core::mem::size_of::<StatsKey>() == 24);
const _: () = assert!(core::mem::size_of::<LiveObject>() == 16);
// The sweep sets OBJECT_OWNER_SEEN with a 64-bit atomic OR on the word at stats_slot.
const _: () = assert!(core::mem::offset_of!(LiveObject, stats_slot) == 8);
const _: () = assert!(core::mem::offset_of!(LiveObject, size_and_flags) == 12);
const _: () = assert!(core::mem::size_of::<CacheStats>() == 72);
const _: () = assert!(core::mem::size_of::<GlobalCounters>() == 48);
const _: () = assert!(core::mem::size_of::<CgroupEvent>() == 16 + CGROUP_PATH_LEN);
const _: () = assert!(core::mem::size_of::<CacheName>() == CACHE_NAME_LEN);

#[cfg(feature = "user")]
mod user {
    use super::*;

    // SAFETY: plain #[repr(C)] integers without padding (sizes asserted above).
    unsafe impl aya::Pod for StatsKey {}
    unsafe impl aya::Pod for LedgerState {}
    unsafe impl aya::Pod for LiveObject {}
    unsafe impl aya::Pod for CacheStats {}
    unsafe impl aya::Pod for GlobalCounters {}
    unsafe impl aya::Pod for CacheName {}
    unsafe impl aya::Pod for CgroupEvent {}
    unsafe impl aya::Pod for SlabLayout {}
    unsafe impl aya::Pod for PercpuLayout {}
    unsafe impl aya::Pod for VmallocLayout {}
    unsafe impl aya::Pod for TruthCounters {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kmalloc_ids_round_trip() {
        for bytes in [8u64, 64, 192, 8192, 1 << 20] {
            for accounted in [false, true] {
                assert_eq!(
                    CacheKind::of(kmalloc_cache_id(bytes, accounted)),
                    CacheKind::Kmalloc { bytes, accounted }
                );
            }
        }
    }

    #[test]
    fn cache_kinds_do_not_overlap() {
        assert_eq!(CacheKind::of(CACHE_ID_PERCPU), CacheKind::Percpu);
        assert_eq!(
            CacheKind::of(0xffff_8880_0123_4500),
            CacheKind::Slab(0xffff_8880_0123_4500)
        );
        assert_eq!(CacheKind::of(7), CacheKind::Unknown(7));
    }

    /// `struct kmem_cache` addresses of both paging modes, and the largest kmalloc id.
    #[test]
    fn caches_are_slabs_with_4_and_5_level_paging() {
        for cache in [
            0xffff_8880_0123_4500,
            0xff11_0000_0123_4500,
            0xff45_1234_0000_0100,
        ] {
            assert_eq!(CacheKind::of(cache), CacheKind::Slab(cache));
        }
        let largest_kmalloc = kmalloc_cache_id(u32::MAX as u64, true);
        assert!(matches!(
            CacheKind::of(largest_kmalloc),
            CacheKind::Kmalloc { .. }
        ));
    }

    /// Objects of fresh slabs: consecutive pages, objects at power-of-two strides, placed in
    /// a 1 M-slot table as the eBPF programs place them, with 4- and 5-level direct maps. At
    /// 14% full at most one in 100,000 is dropped, as with a uniform hash and 8 linear probes
    /// (the old hash dropped up to 70,000 of 147,000 objects at 64- to 512-byte strides); at
    /// 25% about 1 in 10,000.
    #[test]
    fn live_table_drops_little_at_14_and_25_percent() {
        extern crate std;
        let mask = (1u32 << 20) - 1;
        let slots = mask as u64 + 1;
        for base in [0xffff_8880_1000_0000u64, 0xff11_0000_1000_0000] {
            for stride in [8u64, 64, 128, 192, 256, 512, 1024, 4096] {
                let mut taken = std::vec![false; slots as usize];
                let mut dropped_at = [0u64; 2];
                for i in 0..slots / 4 {
                    let first = live_slot_hash(base + i * stride);
                    let free = (0..LIVE_PROBES)
                        .map(|p| (first.wrapping_add(p) & mask) as usize)
                        .find(|s| !taken[*s]);
                    match free {
                        Some(s) => taken[s] = true,
                        None => dropped_at[usize::from(i >= slots * 14 / 100)] += 1,
                    }
                }
                assert!(
                    dropped_at[0] <= 1,
                    "stride {stride} from {base:#x}: {dropped_at:?}"
                );
                assert!(
                    dropped_at[1] < slots / 4 / 5000,
                    "stride {stride}: {dropped_at:?}"
                );
            }
        }
    }

    /// Objects of fresh slabs at each stride: one in `1 << SAMPLE_SHIFT` sampled, within 4
    /// standard deviations, and the sampled ones spread over the whole table (the choice uses
    /// other hash bits than the slot index).
    #[test]
    fn one_object_in_eight_is_sampled_at_every_stride_and_they_use_every_slot() {
        extern crate std;
        let n = 1u64 << 18;
        let expected = n >> SAMPLE_SHIFT;
        let sigma = ((n as f64) * (1.0 / 8.0) * (7.0 / 8.0)).sqrt();
        for base in [0xffff_8880_1000_0000u64, 0xff11_0000_1000_0000] {
            for stride in [8u64, 64, 192, 256, 1024, 4096] {
                let mut slots = std::collections::BTreeSet::new();
                let mut sampled = 0u64;
                for i in 0..n {
                    let ptr = base + i * stride;
                    if is_sampled_address(ptr) {
                        sampled += 1;
                        slots.insert(live_slot_hash(ptr) & 1023);
                    }
                }
                let off = (sampled as f64 - expected as f64).abs();
                assert!(
                    off <= 4.0 * sigma,
                    "stride {stride} from {base:#x}: {sampled} of {n} sampled"
                );
                assert_eq!(slots.len(), 1024, "stride {stride}: slots used");
            }
        }
    }

    #[test]
    fn live_slots_spread_neighbouring_objects() {
        let base = 0xffff_8880_1234_0000u64;
        let mut slots: [u32; 64] = [0; 64];
        for (i, slot) in slots.iter_mut().enumerate() {
            *slot = live_slot_hash(base + 64 * i as u64) & 1023;
        }
        slots.sort_unstable();
        let distinct = 1 + slots.windows(2).filter(|w| w[0] != w[1]).count();
        assert!(distinct >= 56, "{distinct} distinct slots of 64");
    }

    /// The agent's churn test at the default capacity on 2 CPUs: 5,000 cgroups of 12 caches
    /// each in 131,072 slots, placed as the eBPF programs place them.
    #[test]
    fn half_full_stats_table_drops_no_key() {
        extern crate std;
        let mask = (1u32 << 17) - 1;
        let mut taken = std::vec![false; (mask + 1) as usize];
        let mut dropped = 0;
        for cgroup in 0..5000u64 {
            for cache in 0..12u64 {
                let key = StatsKey {
                    owner: 10_000 + cgroup,
                    cache_id: 0xffff_8880_0100_0000 + 0x200 * cache,
                    cgroup_id: 10_000 + cgroup,
                };
                let first = stats_slot_hash(&key);
                let free = (0..STATS_PROBES)
                    .map(|p| (first.wrapping_add(stats_probe_offset(p)) & mask) as usize)
                    .find(|i| !taken[*i]);
                match free {
                    Some(i) => taken[i] = true,
                    None => dropped += 1,
                }
            }
        }
        assert_eq!(dropped, 0);
    }

    #[test]
    fn hook_names_are_unique() {
        for (i, a) in HOOKS.iter().enumerate() {
            assert!(
                HOOKS[i + 1..].iter().all(|b| b.name != a.name),
                "{}",
                a.name
            );
        }
    }

    #[test]
    fn stats_slots_spread_consecutive_cgroups() {
        let mut slots = [0u32; 256];
        for (i, slot) in slots.iter_mut().enumerate() {
            let key = StatsKey {
                owner: 5000 + i as u64 / 8,
                cache_id: 0xffff_8880_0100_0000 + 0x100 * (i as u64 % 8),
                cgroup_id: 5000 + i as u64 / 8,
            };
            *slot = stats_slot_hash(&key) & 4095;
        }
        slots.sort_unstable();
        let distinct = 1 + slots.windows(2).filter(|w| w[0] != w[1]).count();
        assert!(distinct >= 240, "{distinct} distinct slots of 256");
    }

    #[test]
    fn cache_name_stops_at_nul() {
        let mut name = CacheName {
            bytes: [0; CACHE_NAME_LEN],
        };
        name.bytes[..6].copy_from_slice(b"dentry");
        assert_eq!(name.as_bytes(), b"dentry");
    }

    #[test]
    fn stats_sum_over_cpus() {
        let mut total = CacheStats::default();
        total.add(&CacheStats {
            live_bytes: 192,
            live_objects: 1,
            allocs: 1,
            ..Default::default()
        });
        total.add(&CacheStats {
            live_bytes: -192,
            live_objects: -1,
            frees: 1,
            ..Default::default()
        });
        assert_eq!(total.live_bytes, 0);
        assert_eq!((total.allocs, total.frees), (1, 1));
    }
}

/// Names of [`RootCgroupMode`] as the CLI, the config file and the API spell them: the one
/// place that converts them.
#[cfg(feature = "user")]
impl RootCgroupMode {
    pub const ALL: [RootCgroupMode; 3] = [Self::Ignore, Self::Count, Self::Track];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ignore => "ignore",
            Self::Count => "count",
            Self::Track => "track",
        }
    }
}

#[cfg(feature = "user")]
impl core::str::FromStr for RootCgroupMode {
    type Err = UnknownRootMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or(UnknownRootMode)
    }
}

#[cfg(feature = "user")]
impl core::fmt::Display for RootCgroupMode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Not one of `ignore`, `count`, `track`.
#[cfg(feature = "user")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownRootMode;

#[cfg(feature = "user")]
impl core::fmt::Display for UnknownRootMode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("not a root cgroup mode: use ignore, count or track")
    }
}
