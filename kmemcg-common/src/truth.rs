//! The contract of the programs the agent runs itself (never on an event): the inventory,
//! which finds the accounted slab objects and percpu allocations that were live before kmemcg
//! started, and the sweep, which uncharges tracked objects that were freed without a free
//! tracepoint.

/// Program that walks a range of page frames and takes the accounted slab objects it finds
/// into [`crate::LIVE_OBJECTS`]. Run with `BPF_PROG_TEST_RUN`, arguments (first pfn, count).
pub const INVENTORY_PROGRAM: &str = "inventory";
/// Program that checks a range of [`crate::LIVE_OBJECTS`] slots against the slab and
/// uncharges objects that are no longer allocated. Arguments (first slot, count).
pub const SWEEP_PROGRAM: &str = "sweep";
/// Program that uncharges the tracked objects sitting in one slab cache's sheaves (the CPUs'
/// and the nodes' barns). Arguments (`struct kmem_cache` address, node count); returns
/// [`SHEAVES_CHECKED`], [`SHEAVES_NONE`] or [`SHEAVES_UNREADABLE`].
pub const SWEEP_SHEAVES_PROGRAM: &str = "sweep_sheaves";
/// [`SWEEP_SHEAVES_PROGRAM`]'s answers: the cache's sheaves were looked at; the cache has no
/// sheaves (or this kernel none at all); the cache could not be read.
pub const SHEAVES_CHECKED: u32 = 0;
pub const SHEAVES_UNREADABLE: u32 = 1;
pub const SHEAVES_NONE: u32 = 2;
/// Program that finds this CPU's percpu offset (`__per_cpu_offset[cpu]`), run once on each
/// CPU; results in [`PERCPU_OFFSETS`] and [`PERCPU_AREAS`].
pub const CPU_OFFSET_PROGRAM: &str = "cpu_offset";
/// Array map, by CPU: the percpu offset the sweep adds to `kmem_cache::cpu_slab` to reach a
/// CPU's `struct kmem_cache_cpu` (0: unknown, that CPU's freelist is not checked).
pub const PERCPU_OFFSETS: &str = "PERCPU_OFFSETS";
/// Array map, by CPU: where the CPU's percpu area starts, as found by [`CPU_OFFSET_PROGRAM`]
/// (for the agent's consistency check: area - offset is the same on every CPU).
pub const PERCPU_AREAS: &str = "PERCPU_AREAS";
/// Most CPUs whose freelists the sweep checks.
pub const MAX_CPUS: u32 = 1024;
/// Page frames one inventory run walks: a run keeps its CPU for about a millisecond on a paravirtualized guest.
pub const INVENTORY_PFNS_PER_RUN: u64 = 4 * 1024;
/// Live-object slots one sweep run checks.
pub const SWEEP_SLOTS_PER_RUN: u32 = 16 * 1024;

/// Program that takes the accounted allocations of one percpu chunk (found by the inventory's
/// page walk, in [`PERCPU_CHUNKS`]) into [`crate::LIVE_OBJECTS`]. Arguments (chunk address,
/// first owner-vector entry, entries, budget).
pub const PERCPU_INVENTORY_PROGRAM: &str = "inventory_percpu";
/// Hash map: address of a `struct pcpu_chunk` that the inventory's page walk found (from the
/// chunk pointer its pages hold) -> entries of the chunk's owner vector (`obj_exts`).
pub const PERCPU_CHUNKS: &str = "PERCPU_CHUNKS";
pub const MAX_PERCPU_CHUNKS: u32 = 4096;
/// Owner-vector entries one `inventory_percpu` run looks at (a multiple of a 4 KiB read).
pub const PERCPU_ENTRIES_PER_RUN: u64 = 64 * 1024;
/// Array map of two u64: a percpu pointer less its chunk address (`ptr - (base_addr + off)`
/// in the percpu tracepoints, the same for every allocation), and 1 once the percpu
/// allocation hook has recorded it.
pub const PERCPU_POINTER_DELTA: &str = "PERCPU_POINTER_DELTA";
/// The percpu allocator's unit: one owner-vector entry and one bitmap bit per 4 bytes
/// (`PCPU_MIN_ALLOC_SIZE`, a constant of mm/percpu-internal.h that BTF does not carry).
pub const PERCPU_MIN_ALLOC_SIZE: u64 = 4;
/// Name of the load-time global holding the [`PercpuLayout`].
pub const PERCPU_LAYOUT: &str = "PERCPU_LAYOUT";

/// LRU hash map: start address of each vmalloc range handed back to vmalloc
/// (`free_vmap_area_noflush`) and not taken again since (`alloc_vmap_area`). The range's
/// `struct vmap_area` then waits in vmalloc's lazy list or pools, unaccounted, to serve a later
/// range without an allocation tracepoint: it is no longer the cgroup's that allocated it.
pub const VMALLOC_FREED: &str = "VMALLOC_FREED";
pub const MAX_VMALLOC_FREED: u32 = 1 << 16;
/// Array map of one u64: the `struct kmem_cache` of `vmap_area` objects (0: not known yet),
/// written by the agent once the cache has a name.
pub const VMAP_AREA_CACHE: &str = "VMAP_AREA_CACHE";
/// The name of that cache.
pub const VMAP_AREA_CACHE_NAME: &str = "vmap_area";
/// Name of the load-time global holding the [`VmallocLayout`].
pub const VMALLOC_LAYOUT: &str = "VMALLOC_LAYOUT";

/// Hash map: cgroup id of a memory cgroup (the cgroup behind an `obj_cgroup`) -> the cgroup
/// v2 id kmemcg charges. Filled by the agent on hosts where the memory controller is on
/// cgroup v1 (by path); on cgroup v2 the memcg's cgroup is the v2 cgroup itself.
pub const MEMCG_CGROUP_IDS: &str = "MEMCG_CGROUP_IDS";
/// One [`TruthCounters`] (an array map of one entry, updated atomically).
pub const TRUTH_COUNTERS: &str = "TRUTH_COUNTERS";
/// Name of the load-time global holding the [`SlabLayout`].
pub const SLAB_LAYOUT: &str = "SLAB_LAYOUT";

/// How to go from an object's address to its slab and owner record on this kernel: the
/// memory map's bases and the `struct page`/`struct slab`/`struct kmem_cache` layout, all from
/// BTF and /proc at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlabLayout {
    /// Base of the `struct page` array and of the direct map, used when the kernel has no
    /// variables for them (no memory-layout randomization).
    pub vmemmap_base: u64,
    pub page_offset_base: u64,
    /// Addresses of the kernel's `vmemmap_base` and `page_offset_base` variables (randomized
    /// layouts), read at run time; 0 when absent.
    pub vmemmap_base_symbol: u64,
    pub page_offset_base_symbol: u64,
    /// One past the highest page frame number.
    pub max_pfn: u64,
    /// Mask of the flag bits in `slab->obj_exts` (`slab->memcg_data` before 6.10).
    pub obj_exts_flags_mask: u64,
    /// `1 << PG_slab` where slab pages are told by a page flag (before Linux 6.10); 0 where
    /// they are told by their page type ([`Self::pgty_slab`]).
    pub pg_slab_mask: u64,
    pub page_shift: u32,
    pub struct_page_size: u32,
    pub page_compound_head_offset: u32,
    pub slab_cache_offset: u32,
    pub slab_freelist_offset: u32,
    /// Offset of the word holding `inuse` and `objects`, and their bit positions and widths.
    pub slab_counters_offset: u32,
    pub slab_inuse_shift: u32,
    pub slab_inuse_bits: u32,
    pub slab_objects_shift: u32,
    pub slab_objects_bits: u32,
    pub slab_page_type_offset: u32,
    /// `struct slab::obj_exts` (`memcg_data` before Linux 6.10).
    pub slab_obj_exts_offset: u32,
    /// Page types (`page_type >> 24`) of slab pages and of large kmalloc pages (0 for none:
    /// a kernel without page types, or without a type for large kmalloc pages).
    pub pgty_slab: u32,
    pub pgty_large_kmalloc: u32,
    pub obj_ext_size: u32,
    pub obj_ext_objcg_offset: u32,
    pub objcg_memcg_offset: u32,
    /// `struct mem_cgroup::css` and `struct cgroup_subsys_state::cgroup`.
    pub memcg_css_offset: u32,
    pub css_cgroup_offset: u32,
    /// `struct kmem_cache`: where a free object keeps its next-free pointer, the freelist
    /// pointer key (hardened freelists) and the red zone before each object.
    pub kmem_cache_offset_offset: u32,
    pub kmem_cache_random_offset: u32,
    pub kmem_cache_red_left_pad_offset: u32,
    /// 1 when freelist pointers are obfuscated (`CONFIG_SLAB_FREELIST_HARDENED`).
    pub freelist_hardened: u32,
    /// `SLAB_KMALLOC` as a mask: such caches are named as kmalloc buckets.
    pub slab_kmalloc: u32,
    /// Bit of `frozen` in the counters word: the slab is a CPU's, whose free objects are on
    /// that CPU's freelist.
    pub slab_frozen_shift: u32,
    /// `struct kmem_cache::cpu_slab`, `struct kmem_cache_cpu::{freelist, slab}`.
    pub kmem_cache_cpu_slab_offset: u32,
    pub kmem_cache_cpu_freelist_offset: u32,
    pub kmem_cache_cpu_slab_field_offset: u32,
    /// To find a CPU's percpu area from the task running on it: `task_struct::se`,
    /// `sched_entity::cfs_rq`, `cfs_rq::rq`, and the offsets of the percpu variables
    /// `runqueues` and `this_cpu_off` in the percpu section.
    pub task_se_offset: u32,
    pub se_cfs_rq_offset: u32,
    pub cfs_rq_rq_offset: u32,
    pub runqueues_offset: u32,
    pub this_cpu_off_offset: u32,
    /// 1 where caches have CPU slabs (`kmem_cache::cpu_slab`; none from Linux 7.0).
    pub cpu_slabs: u32,
    /// Bit of `obj_exts_in_object` in the counters word (Linux 7.0+; 0: none). Where set, the
    /// slab keeps each object's owner record inside the object, so records are the cache's
    /// object size apart rather than [`Self::obj_ext_size`].
    pub slab_obj_exts_in_object_shift: u32,
    /// Bit of `obj_exts_needs_objcg` in the counters word (Linux 7.3+; 0: none). Where
    /// clear, the slab's records hold no `obj_cgroup`.
    pub slab_obj_exts_needs_objcg_shift: u32,
    /// `struct slab::stride` (Linux 7.2: bytes between two records; 0: no such field).
    pub slab_stride_offset: u32,
    pub sheaves: SheafLayout,
    /// `struct page::flags`, read where [`Self::pg_slab_mask`] is set.
    pub page_flags_offset: u32,
}

/// Where free objects of caches with sheaves (Linux 6.18+) wait: `struct kmem_cache::
/// {cpu_sheaves, sheaf_capacity, node or per_node}`, `struct slub_percpu_sheaves::{main, spare,
/// rcu_free}`, `struct kmem_cache_node::barn`, `struct node_barn::sheaves_full`, `struct
/// slab_sheaf::{barn_list, cache, size, objects}`. All zero on kernels without sheaves.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SheafLayout {
    pub kmem_cache_cpu_sheaves_offset: u32,
    pub kmem_cache_sheaf_capacity_offset: u32,
    pub kmem_cache_node_offset: u32,
    /// Entries of `kmem_cache::node` (MAX_NUMNODES).
    pub kmem_cache_node_entries: u32,
    pub pcs_main_offset: u32,
    pub pcs_spare_offset: u32,
    pub pcs_rcu_free_offset: u32,
    pub kmem_cache_node_barn_offset: u32,
    pub barn_sheaves_full_offset: u32,
    pub sheaf_barn_list_offset: u32,
    pub sheaf_cache_offset: u32,
    pub sheaf_size_offset: u32,
    pub sheaf_objects_offset: u32,
    /// Bytes between entries of `kmem_cache::node` (pointers) or `kmem_cache::per_node` (7.0+:
    /// `{barn, node}` pairs).
    pub kmem_cache_node_stride: u32,
    /// 1 where the barn pointer is in the entry itself (`per_node`), at
    /// `kmem_cache_node_barn_offset`; 0 where it is in the `struct kmem_cache_node` the entry
    /// points to.
    pub barn_in_node_entry: u32,
    /// 1 when this kernel has sheaves (`cpu_sheaves` is the first field of `kmem_cache` from
    /// Linux 7.0, so its offset says nothing).
    pub present: u32,
}

/// How to find percpu chunks and their owner records on this kernel, from BTF at load time.
/// All zero (`chunk_obj_exts_offset` 0) when the kernel lacks a piece: no percpu inventory.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PercpuLayout {
    /// `struct page::mapping`; `index` and `private` follow it (checked at load time): a
    /// percpu chunk's pages have no mapping and hold the chunk's address in `private`
    /// (`index` before Linux 6.15).
    pub page_mapping_offset: u32,
    /// `struct pcpu_chunk`: `list`, `base_addr`, `bound_map`, `obj_exts` (or `obj_cgroups`
    /// before 6.10), `nr_pages`.
    pub chunk_list_offset: u32,
    pub chunk_base_addr_offset: u32,
    pub chunk_bound_map_offset: u32,
    pub chunk_obj_exts_offset: u32,
    pub chunk_nr_pages_offset: u32,
    /// `struct pcpuobj_ext`: size and `cgroup` (8 and 0 for a plain `obj_cgroup *` vector).
    pub obj_ext_size: u32,
    pub obj_ext_objcg_offset: u32,
}

/// `struct vmap_area`: `va_start`, and the word that holds `vm` while the range is in use and
/// `subtree_max_size` (a size, not a pointer) while the object describes a free range. All
/// zero when the kernel's BTF lacks them: the sweep then leaves `vmap_area` objects alone.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmallocLayout {
    pub va_start_offset: u32,
    pub va_vm_offset: u32,
}

/// What the inventory and the sweep did, cumulative (value of [`TRUTH_COUNTERS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TruthCounters {
    /// Slab pages walked, and the objects and bytes the slab reports in use on them.
    pub slab_pages: u64,
    pub slab_objects_in_use: u64,
    pub slab_bytes_in_use: u64,
    /// Slab objects with an owner record (accounted to a memcg), and their bytes.
    pub accounted_objects: u64,
    pub accounted_bytes: u64,
    /// Of those and the percpu allocations found: taken into the live-object table, already
    /// tracked, owned by a memcg with no
    /// cgroup v2 counterpart (or the root cgroup when it is not tracked), or dropped because
    /// a table was full.
    pub added_objects: u64,
    pub added_bytes: u64,
    pub already_tracked: u64,
    pub unmapped_objects: u64,
    pub unmapped_bytes: u64,
    pub dropped: u64,
    /// Tracked objects the sweep checked, and those it found freed and uncharged.
    pub swept_checked: u64,
    pub swept_objects: u64,
    pub swept_bytes: u64,
    /// Of the swept: found by the owner record cleared, by the slab page gone or reused,
    /// by the object on its slab's freelist.
    pub swept_by_owner: u64,
    pub swept_by_page: u64,
    pub swept_by_freelist: u64,
    /// Percpu chunks the inventory found, and the accounted percpu allocations on them (their
    /// bytes counted for every possible CPU, as the hooks count them).
    pub percpu_chunks: u64,
    pub percpu_objects: u64,
    pub percpu_bytes: u64,
    /// Of the swept: `vmap_area` objects whose range was handed back to vmalloc.
    pub swept_by_vmalloc: u64,
    /// Of the swept: found in a slab sheaf (a CPU's or a node's barn).
    pub swept_by_sheaf: u64,
    /// Of the taken: in place of an entry at the same address for another owner or cache,
    /// left by an object freed while nothing traced it (between two agents sharing pinned
    /// maps).
    pub replaced_stale: u64,
}

impl TruthCounters {
    /// Number of u64 fields, for atomic updates by index.
    pub const FIELDS: usize = core::mem::size_of::<Self>() / 8;
}

const _: () = assert!(core::mem::size_of::<SheafLayout>() == 16 * 4);
const _: () = assert!(
    core::mem::size_of::<SlabLayout>() == 7 * 8 + 38 * 4 + core::mem::size_of::<SheafLayout>()
);
const _: () = assert!(core::mem::size_of::<TruthCounters>() == 23 * 8);
const _: () = assert!(core::mem::size_of::<VmallocLayout>() == 2 * 4);
const _: () = assert!(core::mem::size_of::<PercpuLayout>() == 8 * 4);
