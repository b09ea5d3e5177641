//! kmemcg's eBPF programs: BTF-typed raw tracepoints on the kmem/percpu and cgroup hooks
//! (`kmemcg_common::HOOKS`), and the inventory and sweep programs the agent runs.
//!
//! On allocation the allocating task's cgroup is charged in per-CPU counters, and the object's
//! owner is remembered by address; on free, whichever task or context frees it, the owner found
//! by address is uncharged. Names, paths, sums over CPUs and the hierarchy are the agent's job.
//!
//! Both tables are lock-free open-addressing arrays with slots claimed by compare-and-swap:
//! live objects by address, and (cgroup, cache) keys whose counters sit at the same slot of
//! each CPU's block of the counter array. A live object remembers its counters' slot, so a
//! free needs no key lookup. Hash-map updates take a bucket lock with interrupts disabled and
//! a freelist lock, which cost several times the rest of the programs.
#![no_std]
#![no_main]
// Atomic compare-and-swap and add on map values (BPF_ATOMIC): the bpf target's `core` has no
// atomic read-modify-write types.
#![feature(core_intrinsics)]
#![allow(internal_features)]

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_NOEXIST, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_smp_processor_id, bpf_probe_read_kernel,
        bpf_probe_read_kernel_str_bytes,
    },
    macros::{btf_tracepoint, map, raw_tracepoint},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use kmemcg_common::{
    BUDGETS_PER_SLOT, CACHE_ID_PERCPU, CGROUP_EVENT_MKDIR, CGROUP_EVENT_RENAME, CGROUP_EVENT_RMDIR,
    CacheName, CacheStats, CgroupEvent, GlobalCounters, KMALLOC_MAX_CACHE_SIZE, LIVE_PROBES,
    LiveObject, MAX_WATCHED, OBJECT_ACCOUNTED, OBJECT_FLAGS, OBJECT_SAMPLED, RootCgroupMode,
    STATS_PROBES, StatsKey, kmalloc_cache_id, live_slot_hash, stats_probe_offset, stats_slot_hash,
};

mod leaks;
mod ledger;
mod truth;
mod zombies;

// Load-time configuration, written by the agent (EbpfLoader::set_global). Read-only and frozen,
// so the verifier treats them as constants.
#[unsafe(no_mangle)]
static ROOT_CGROUP_MODE: u32 = RootCgroupMode::Count as u32;
#[unsafe(no_mangle)]
static ROOT_CGROUP_ID: u64 = 1;
#[unsafe(no_mangle)]
static GFP_ACCOUNT: u64 = 0;
#[unsafe(no_mangle)]
static SLAB_ACCOUNT: u32 = 0;
#[unsafe(no_mangle)]
static OBJ_EXTS_ALLOCATOR_START: u64 = 0;
#[unsafe(no_mangle)]
static OBJ_EXTS_ALLOCATOR_SIZE: u64 = 0;
#[unsafe(no_mangle)]
static KMEM_CACHE_FLAGS_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static KMEM_CACHE_SIZE_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static KMEM_CACHE_NAME_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static KMALLOC_CG_UNPADDED: u32 = 0;
#[unsafe(no_mangle)]
static POSSIBLE_CPUS: u64 = 1;
/// Slots of LIVE_OBJECTS minus one (a power of two minus one).
#[unsafe(no_mangle)]
static LIVE_SLOT_MASK: u32 = (1 << 20) - 1;
/// Slots of STATS_KEYS (and of each CPU's block of CGROUP_CACHE_STATS) minus one.
#[unsafe(no_mangle)]
static STATS_SLOT_MASK: u32 = (1 << 16) - 1;
#[unsafe(no_mangle)]
static CGROUP_KN_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static CGROUP_ROOT_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static KERNFS_NODE_ID_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static CGROUP_ROOT_HIERARCHY_ID_OFFSET: u32 = 0;

// Sizes here are defaults; the agent sets the capacities it is configured with.
#[map]
static LIVE_OBJECTS: Array<LiveObject> = Array::with_max_entries(1 << 20, 0);
// (cgroup, cache) keys and, at the same slot of each CPU's block, their counters. Sized by the
// agent, which reads both in place (mmap).
#[map]
static STATS_KEYS: Array<StatsKey> = Array::with_max_entries(1 << 16, BPF_F_MMAPABLE);
#[map]
static CGROUP_CACHE_STATS: Array<CacheStats> = Array::with_max_entries(1 << 17, BPF_F_MMAPABLE);
#[map]
static STATS_SLOT_EVENTS: RingBuf = RingBuf::with_byte_size(256 << 10, 0);
#[map]
static LIMIT_BUDGETS: Array<i64> = Array::with_max_entries(MAX_WATCHED, BPF_F_MMAPABLE);
#[map]
static LIMIT_EVENTS: RingBuf = RingBuf::with_byte_size(4 << 10, 0);
#[map]
static CACHE_NAMES: HashMap<u64, CacheName> = HashMap::with_max_entries(4096, 0);
#[map]
static GLOBAL_COUNTERS: PerCpuArray<GlobalCounters> = PerCpuArray::with_max_entries(1, 0);
#[map]
static CGROUP_EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// kmalloc(0) returns ZERO_SIZE_PTR, never a real object.
const ZERO_SIZE_PTR: u64 = 16;

#[inline(always)]
fn global<T: Copy>(value: &T) -> T {
    // SAFETY: a static of the program; volatile so that the compiler does not fold the default.
    unsafe { core::ptr::read_volatile(value) }
}

#[inline(always)]
fn with_global_counters(update: impl FnOnce(&mut GlobalCounters)) {
    if let Some(counters) = GLOBAL_COUNTERS.get_ptr_mut(0) {
        // SAFETY: per-CPU value, and these programs do not nest on one CPU.
        update(unsafe { &mut *counters });
    }
}

// One u64 per CPU that a typed pointer goes through to come back as a plain number.
#[map]
static POINTER_SCRATCH: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// A BTF-typed pointer's address as a plain number (to hash and store): the verifier lets no
/// program do arithmetic on a typed pointer, but lets a program that may read kernel
/// addresses (CAP_PERFMON) store one in a map value, which reads back as a number. A store
/// and a load: `bpf_probe_read_kernel` of the tracepoint's argument, the alternative, is a
/// helper call and cost about 20 ns more per allocation on the benchmark.
#[inline(always)]
fn address_of(pointer: *const u8) -> Option<u64> {
    let scratch = POINTER_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's value; only kmem_cache_alloc uses it, and a program does not nest
    // on one CPU. Volatile, so that the number really comes from memory.
    let address = unsafe {
        core::ptr::write_volatile(scratch as *mut *const u8, pointer);
        core::ptr::read_volatile(scratch)
    };
    (address != 0).then_some(address)
}

/// An allocation as the hooks see it.
struct Allocation {
    ptr: u64,
    cache_id: u64,
    bytes: u64,
    accounted: bool,
    /// From a `struct kmem_cache`, whose name is recorded the first time it is charged.
    slab: bool,
    /// Tracked for `1 << SAMPLE_SHIFT` objects (see [`ledger::table_sample`]).
    sampled: bool,
}

#[btf_tracepoint(function = "kmem_cache_alloc")]
pub fn kmem_cache_alloc(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(unsigned long call_site, const void *ptr, struct kmem_cache *s, gfp_t gfp_flags, int node)
    let ptr: u64 = ctx.arg(1);
    let cache: *const u8 = ctx.arg(2);
    let gfp: u64 = ctx.arg(3);
    if ptr == 0 || cache.is_null() {
        return 0;
    }
    let (size, flags) = typed_size_and_flags(cache);
    let Some(cache_id) = address_of(cache) else {
        return 0;
    };
    let known = ledger::CacheInfo {
        cache: cache_id,
        size,
        red_left_pad: typed_red_left_pad(cache),
    };
    on_cache_alloc(ptr, &known, flags, gfp);
    leaks::on_alloc(ctx.arg(0), ptr, cache_id, size as u64);
    0
}

/// `kmem_cache::size` and `flags` through a BTF-typed cache pointer: the verifier checks each
/// offset (constants from BTF, in the frozen .rodata) against the struct's fields and turns
/// the loads into fault-safe ones, several times cheaper than bpf_probe_read_kernel.
#[inline(always)]
fn typed_size_and_flags(cache: *const u8) -> (u32, u32) {
    let field = |offset: u32| {
        // SAFETY: see above; the verifier rejects the program rather than letting a load fault.
        unsafe { core::ptr::read_volatile(cache.add(offset as usize) as *const u32) }
    };
    (
        field(global(&KMEM_CACHE_SIZE_OFFSET)),
        field(global(&KMEM_CACHE_FLAGS_OFFSET)),
    )
}

/// `kmem_cache::red_left_pad` through a BTF-typed cache pointer.
#[inline(always)]
fn typed_red_left_pad(cache: *const u8) -> u32 {
    let offset = truth::layout_red_left_pad_offset();
    // SAFETY: as for the cache's size in `kmem_cache_alloc`: the verifier checks the offset.
    unsafe { core::ptr::read_volatile(cache.add(offset as usize) as *const u32) }
}

#[inline(always)]
fn on_cache_alloc(ptr: u64, known: &ledger::CacheInfo, flags: u32, gfp: u64) {
    let accounted_cache = flags & global(&SLAB_ACCOUNT) != 0;
    let accounted = accounted_cache || gfp & global(&GFP_ACCOUNT) != 0;
    // The ledger counts the caches whose every object is accounted (kmalloc-cg-* among them):
    // a free knows such a cache by its flags, without reading the object's slab. The table
    // samples the objects of the others, as their frees do.
    let sampled = if accounted_cache {
        if ledger::count(ptr, known, 1).is_ok() {
            return;
        }
        false
    } else {
        let Some(sampled) = ledger::table_sample(ptr) else {
            return;
        };
        sampled
    };
    on_alloc(Allocation {
        ptr,
        cache_id: known.cache,
        bytes: known.size as u64,
        accounted,
        slab: true,
        sampled,
    });
}

#[inline(always)]
fn current_cgroup() -> u64 {
    // SAFETY: a helper without preconditions.
    unsafe { bpf_get_current_cgroup_id() }
}

#[btf_tracepoint(function = "kmalloc")]
pub fn kmalloc(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(unsigned long call_site, const void *ptr, size_t bytes_req, size_t bytes_alloc,
    //          gfp_t gfp_flags, int node)
    on_kmalloc(ctx.arg(0), ctx.arg(1), ctx.arg(3), ctx.arg(4));
    leaks::on_kmalloc(ctx.arg(0), ctx.arg(1), ctx.arg(3), ctx.arg(4));
    0
}

#[inline(always)]
fn on_kmalloc(call_site: u64, ptr: u64, bytes: u64, gfp: u64) {
    if ptr <= ZERO_SIZE_PTR {
        return;
    }
    // The owner-record vector of a new slab: it lives as long as the slab, whose objects
    // belong to any cgroup, and is no more the cgroup's whose allocation needed the slab.
    if call_site.wrapping_sub(global(&OBJ_EXTS_ALLOCATOR_START)) < global(&OBJ_EXTS_ALLOCATOR_SIZE)
    {
        return;
    }
    let accounted = gfp & global(&GFP_ACCOUNT) != 0;
    // An accounted kmalloc comes from a `kmalloc-cg-*` cache (`SLAB_ACCOUNT`) of object size
    // `bytes`: without red zones its record is found without reading the cache.
    let known = if global(&KMALLOC_CG_UNPADDED) != 0 {
        ledger::CacheInfo::kmalloc_cg(bytes)
    } else {
        ledger::CacheInfo::UNKNOWN
    };
    if accounted && ledger::count(ptr, &known, 1).is_ok() {
        return;
    }
    // A slab object (not a large kmalloc's pages) whose cache may lack `SLAB_ACCOUNT`: sampled
    // as its free would be (a free samples no object that was not sampled here).
    let sampled = if bytes <= KMALLOC_MAX_CACHE_SIZE as u64 {
        let Some(sampled) = ledger::table_sample(ptr) else {
            return;
        };
        sampled
    } else {
        false
    };
    on_alloc(Allocation {
        ptr,
        cache_id: kmalloc_cache_id(bytes, accounted),
        bytes,
        accounted,
        slab: false,
        sampled,
    });
}

#[btf_tracepoint(function = "percpu_alloc_percpu")]
pub fn percpu_alloc_percpu(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(unsigned long call_site, bool reserved, bool is_atomic, size_t size, size_t align,
    //          void *base_addr, int off, void __percpu *ptr, size_t bytes_alloc, gfp_t gfp_flags)
    let size: u64 = ctx.arg(3);
    let base_addr: u64 = ctx.arg(5);
    let off: i32 = ctx.arg(6);
    let ptr: u64 = ctx.arg(7);
    let gfp: u64 = ctx.arg(9);
    if ptr == 0 {
        return 0;
    }
    truth::percpu::record_pointer_delta(ptr, base_addr.wrapping_add(off as i64 as u64));
    // The memory taken in the percpu chunks. The tracepoint's bytes_alloc also counts memcg's
    // notional share of the chunk's obj_cgroup vector (8 bytes per 4-byte unit), which was
    // allocated with the chunk, not by this allocation.
    let bytes = size * global(&POSSIBLE_CPUS);
    on_alloc(Allocation {
        ptr,
        cache_id: CACHE_ID_PERCPU,
        bytes,
        accounted: gfp & global(&GFP_ACCOUNT) != 0,
        slab: false,
        sampled: false,
    });
    leaks::on_alloc(ctx.arg(0), ptr, CACHE_ID_PERCPU, bytes);
    0
}

#[btf_tracepoint(function = "kmem_cache_free")]
pub fn kmem_cache_free(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(unsigned long call_site, const void *ptr, const struct kmem_cache *s)
    let ptr: u64 = ctx.arg(1);
    let cache: *const u8 = ctx.arg(2);
    if ptr <= ZERO_SIZE_PTR || cache.is_null() {
        return 0;
    }
    let (size, flags) = typed_size_and_flags(cache);
    if flags & global(&SLAB_ACCOUNT) == 0 {
        // Not a cache the ledger counts: the object is the table's, if anyone's.
        on_unaccounted_free(ptr);
    } else {
        let known = ledger::CacheInfo {
            cache: address_of(cache).unwrap_or(0),
            size,
            red_left_pad: typed_red_left_pad(cache),
        };
        on_slab_free(ptr, &known);
    }
    leaks::on_free(ctx.arg(1));
    0
}

/// A slab object's free: the ledger's when the kernel's owner record names its owner, else
/// the live-object table's.
#[inline(always)]
fn on_slab_free(ptr: u64, known: &ledger::CacheInfo) {
    if ptr <= ZERO_SIZE_PTR {
        return;
    }
    // One call of `on_free` (the program's code stays small).
    let in_table = match ledger::count(ptr, known, -1) {
        Ok(()) => false,
        Err(ledger::NotCounted::UnaccountedCache) => ledger::table_sample(ptr).is_some(),
        Err(ledger::NotCounted::Other) => true,
    };
    if in_table {
        on_free(ptr);
    }
}

/// The free of an object of a cache without `SLAB_ACCOUNT`: looked up only where the table
/// may hold it (its address sampled, or no sampling).
#[inline(always)]
fn on_unaccounted_free(ptr: u64) {
    if ledger::table_sample(ptr).is_some() {
        on_free(ptr);
    }
}

#[btf_tracepoint(function = "kfree")]
pub fn kfree(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(unsigned long call_site, const void *ptr)
    on_slab_free(ctx.arg(1), &ledger::CacheInfo::UNKNOWN);
    leaks::on_free(ctx.arg(1));
    0
}

#[btf_tracepoint(function = "percpu_free_percpu")]
pub fn percpu_free_percpu(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(void *base_addr, int off, void __percpu *ptr)
    on_free(ctx.arg(2));
    leaks::on_free(ctx.arg(2));
    0
}

// Before Linux 6.16 the verifier refuses BTF-typed programs that read a `const void *`
// tracepoint argument ("arg1 type UNKNOWN is not a struct"), and the object's address is one in
// kmem_cache_alloc, kmalloc, kmem_cache_free and kfree. Plain raw tracepoints read the same
// arguments as numbers: the agent loads these where the kernel refuses the programs above.

/// The `n`th argument of a plain raw tracepoint (the same u64 array as a BTF-typed one).
#[inline(always)]
fn raw_arg(ctx: &RawTracePointContext, n: usize) -> u64 {
    use aya_ebpf::EbpfContext as _;
    // SAFETY: ctx points at the tracepoint's u64 arguments; n is below its arity, which the
    // agent checked in the kernel's BTF.
    unsafe { *(ctx.as_ptr() as *const u64).add(n) }
}

#[raw_tracepoint(tracepoint = "kmem_cache_alloc")]
pub fn kmem_cache_alloc_raw(ctx: RawTracePointContext) -> i32 {
    let (ptr, cache, gfp) = (raw_arg(&ctx, 1), raw_arg(&ctx, 2), raw_arg(&ctx, 3));
    if ptr == 0 || cache == 0 {
        return 0;
    }
    let Some((flags, known)) = ledger::read_cache(cache) else {
        return 0;
    };
    on_cache_alloc(ptr, &known, flags, gfp);
    leaks::on_alloc(raw_arg(&ctx, 0), ptr, cache, known.size as u64);
    0
}

#[raw_tracepoint(tracepoint = "kmalloc")]
pub fn kmalloc_raw(ctx: RawTracePointContext) -> i32 {
    on_kmalloc(
        raw_arg(&ctx, 0),
        raw_arg(&ctx, 1),
        raw_arg(&ctx, 3),
        raw_arg(&ctx, 4),
    );
    leaks::on_kmalloc(
        raw_arg(&ctx, 0),
        raw_arg(&ctx, 1),
        raw_arg(&ctx, 3),
        raw_arg(&ctx, 4),
    );
    0
}

#[raw_tracepoint(tracepoint = "kmem_cache_free")]
pub fn kmem_cache_free_raw(ctx: RawTracePointContext) -> i32 {
    on_slab_free(raw_arg(&ctx, 1), &ledger::CacheInfo::UNKNOWN);
    leaks::on_free(raw_arg(&ctx, 1));
    0
}

#[raw_tracepoint(tracepoint = "kfree")]
pub fn kfree_raw(ctx: RawTracePointContext) -> i32 {
    on_slab_free(raw_arg(&ctx, 1), &ledger::CacheInfo::UNKNOWN);
    leaks::on_free(raw_arg(&ctx, 1));
    0
}

// cgroup v2 tree changes, for the agent's cgroup model: a cgroup's id and path as it is
// created, removed or renamed, even when it lives for less than one sampling interval.

#[btf_tracepoint(function = "cgroup_mkdir")]
pub fn cgroup_mkdir(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(struct cgroup *cgrp, const char *path)
    cgroup_event(&ctx, CGROUP_EVENT_MKDIR);
    0
}

#[btf_tracepoint(function = "cgroup_rmdir")]
pub fn cgroup_rmdir(ctx: BtfTracePointContext) -> i32 {
    cgroup_event(&ctx, CGROUP_EVENT_RMDIR);
    0
}

#[btf_tracepoint(function = "cgroup_rename")]
pub fn cgroup_rename(ctx: BtfTracePointContext) -> i32 {
    cgroup_event(&ctx, CGROUP_EVENT_RENAME);
    0
}

/// The unified (v2) hierarchy's id: `0::` in /proc/<pid>/cgroup.
const CGROUP2_HIERARCHY_ID: i32 = 0;

#[inline(always)]
fn cgroup_event(ctx: &BtfTracePointContext, kind: u32) {
    let cgrp: *const u8 = ctx.arg(0);
    let path: *const u8 = ctx.arg(1);
    // SAFETY: reads of kernel memory through the fault-safe helpers.
    let (id, hierarchy_id) = unsafe {
        let kn =
            bpf_probe_read_kernel(cgrp.add(global(&CGROUP_KN_OFFSET) as usize) as *const *const u8);
        let root = bpf_probe_read_kernel(
            cgrp.add(global(&CGROUP_ROOT_OFFSET) as usize) as *const *const u8
        );
        let (Ok(kn), Ok(root)) = (kn, root) else {
            return;
        };
        let id =
            bpf_probe_read_kernel(kn.add(global(&KERNFS_NODE_ID_OFFSET) as usize) as *const u64);
        let hierarchy_id = bpf_probe_read_kernel(
            root.add(global(&CGROUP_ROOT_HIERARCHY_ID_OFFSET) as usize) as *const i32,
        );
        let (Ok(id), Ok(hierarchy_id)) = (id, hierarchy_id) else {
            return;
        };
        (id, hierarchy_id)
    };
    if hierarchy_id != CGROUP2_HIERARCHY_ID {
        return;
    }
    let Some(mut entry) = CGROUP_EVENTS.reserve::<CgroupEvent>(0) else {
        with_global_counters(|c| c.lost_cgroup_events += 1);
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: the reserved entry is ours until submitted; every field is written.
    unsafe {
        (*event).kind = kind;
        (*event).id = id;
        let len = match bpf_probe_read_kernel_str_bytes(path, &mut (*event).path) {
            Ok(bytes) => bytes.len() as u32,
            Err(_) => 0,
        };
        (*event).path_len = len;
    }
    entry.submit(0);
}

#[inline(always)]
fn on_alloc(alloc: Allocation) {
    // SAFETY: a helper without preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let count_only = if cgroup_id == global(&ROOT_CGROUP_ID) {
        match RootCgroupMode::from_u32(global(&ROOT_CGROUP_MODE)) {
            Some(RootCgroupMode::Track) => false,
            Some(RootCgroupMode::Count) => true,
            _ => return,
        }
    } else {
        false
    };
    if count_only {
        // The address may still be held by a tracked object whose free no hook saw (bulk
        // frees): that object is gone, so its owner is uncharged.
        if uncharge(alloc.ptr) {
            with_global_counters(|c| c.stale_objects += 1);
        }
    }
    let key = StatsKey::of_cgroup(cgroup_id, alloc.cache_id);
    let Some((slot, stats)) = stats_slot(&key, alloc.slab, SlotCgroup::Is(cgroup_id)) else {
        with_global_counters(|c| c.dropped_stats_full += 1);
        return;
    };
    let object = LiveObject {
        ptr: alloc.ptr,
        stats_slot: slot,
        size_and_flags: alloc.bytes as u32 & !OBJECT_FLAGS
            | if alloc.accounted { OBJECT_ACCOUNTED } else { 0 }
            | if alloc.sampled { OBJECT_SAMPLED } else { 0 },
    };
    // SAFETY: this CPU's counters.
    let stats = unsafe { &mut *stats };
    stats.allocs += object.weight() as u64;
    if count_only {
        return;
    }
    match remember(&object) {
        Remembered::New => charge_object(stats, &object, 1),
        Remembered::Replaced(stale) => {
            charge_object(stats, &object, 1);
            uncharge_owner(&stale);
            with_global_counters(|c| c.stale_objects += 1);
        }
        Remembered::Full => with_global_counters(|c| c.dropped_live_full += 1),
    }
}

enum Remembered {
    New,
    /// The address was still held by a tracked object whose free no hook saw (bulk frees):
    /// that object is gone, and its owner must be uncharged.
    Replaced(LiveObject),
    Full,
}

#[inline(always)]
fn on_free(ptr: u64) {
    if ptr <= ZERO_SIZE_PTR {
        return;
    }
    if !uncharge(ptr) {
        with_global_counters(|c| c.untracked_frees += 1);
    }
}

/// Slot `probe` of `ptr`'s probe sequence.
#[inline(always)]
fn live_slot(ptr: u64, probe: u32) -> Option<*mut LiveObject> {
    let index = live_slot_hash(ptr).wrapping_add(probe) & global(&LIVE_SLOT_MASK);
    LIVE_OBJECTS.get_ptr_mut(index)
}

/// Puts `object` in its address's probe sequence: in place of a stale entry for the same
/// address, else in the first free slot, claimed atomically so that two CPUs never share one.
#[inline(always)]
fn remember(object: &LiveObject) -> Remembered {
    let mut free = LIVE_PROBES;
    for probe in 0..LIVE_PROBES {
        let Some(slot) = live_slot(object.ptr, probe) else {
            return Remembered::Full;
        };
        // SAFETY: a slot of the array map.
        let held = unsafe { core::ptr::read_volatile(&raw const (*slot).ptr) };
        if held == object.ptr {
            // SAFETY: the stale object cannot be freed any more: the slot is ours to rewrite.
            unsafe {
                let stale = *slot;
                write_owner(slot, object);
                return Remembered::Replaced(stale);
            }
        }
        if held == 0 && free == LIVE_PROBES {
            free = probe;
        }
    }
    for probe in free..LIVE_PROBES {
        let Some(slot) = live_slot(object.ptr, probe) else {
            break;
        };
        // SAFETY: a slot of the array map, claimed atomically. The owner is written before the
        // object can be freed (its free comes after this allocation hook returns).
        unsafe {
            let claim = &raw mut (*slot).ptr;
            if core::ptr::read_volatile(claim) == 0 && compare_and_swap(claim, 0, object.ptr) {
                write_owner(slot, object);
                return Remembered::New;
            }
        }
    }
    Remembered::Full
}

/// What the inventory's insert did with an object.
enum Inventoried {
    Taken,
    /// Tracked already, with this owner and cache (allocated since the hooks attached, or
    /// kept in pinned maps).
    Tracked,
    /// Taken in place of an entry left by another object at the same address, freed while
    /// nothing traced it (between two agents sharing pinned maps): that owner is uncharged.
    ReplacedStale,
    Full,
}

/// Puts `object` (found live by the inventory) in a free slot unless its address is tracked
/// already for the same owner and cache.
#[inline(always)]
fn remember_new(object: &LiveObject) -> Inventoried {
    let mut replaced = false;
    for probe in 0..LIVE_PROBES {
        let Some(slot) = live_slot(object.ptr, probe) else {
            return Inventoried::Full;
        };
        // SAFETY: a slot of the array map; hooks may rewrite it meanwhile, which the
        // compare-and-swap below detects for the address.
        let held = unsafe { core::ptr::read_volatile(slot) };
        if held.ptr != object.ptr {
            continue;
        }
        if held.stats_slot == object.stats_slot {
            return Inventoried::Tracked;
        }
        // Whoever swaps the address out owns the release, as in `uncharge`.
        // SAFETY: as above.
        if unsafe { compare_and_swap(&raw mut (*slot).ptr, object.ptr, 0) } {
            uncharge_owner(&held);
            replaced = true;
        }
        break;
    }
    for probe in 0..LIVE_PROBES {
        let Some(slot) = live_slot(object.ptr, probe) else {
            break;
        };
        // SAFETY: as in `remember`.
        unsafe {
            let claim = &raw mut (*slot).ptr;
            if core::ptr::read_volatile(claim) == 0 && compare_and_swap(claim, 0, object.ptr) {
                write_owner(slot, object);
                return if replaced {
                    Inventoried::ReplacedStale
                } else {
                    Inventoried::Taken
                };
            }
        }
    }
    Inventoried::Full
}

/// Writes everything but the (already claimed) address.
#[inline(always)]
unsafe fn write_owner(slot: *mut LiveObject, object: &LiveObject) {
    // SAFETY: the caller owns the slot.
    unsafe {
        (*slot).stats_slot = object.stats_slot;
        (*slot).size_and_flags = object.size_and_flags;
    }
}

/// Releases the slot of the object at `ptr` and uncharges its owner; false if untracked.
#[inline(always)]
fn uncharge(ptr: u64) -> bool {
    for probe in 0..LIVE_PROBES {
        let Some(slot) = live_slot(ptr, probe) else {
            return false;
        };
        // SAFETY: a slot of the array map. Whoever swaps the address out owns the release, so
        // an object is never uncharged twice.
        let object = unsafe {
            let claim = &raw mut (*slot).ptr;
            if core::ptr::read_volatile(claim) != ptr {
                continue;
            }
            let object = *slot;
            if !compare_and_swap(claim, ptr, 0) {
                continue;
            }
            object
        };
        uncharge_owner(&object);
        return true;
    }
    false
}

#[inline(always)]
fn uncharge_owner(object: &LiveObject) {
    if let Some(stats) = cpu_counters(object.stats_slot) {
        // SAFETY: this CPU's counters.
        let stats = unsafe { &mut *stats };
        stats.frees += object.weight() as u64;
        charge_object(stats, object, -1);
    }
}

/// Atomically replaces `*target` with `new` if it is `current`.
#[inline(always)]
unsafe fn compare_and_swap(target: *mut u64, current: u64, new: u64) -> bool {
    use core::intrinsics::{AtomicOrdering::SeqCst, atomic_cxchg};
    // SAFETY: the caller passes a valid, aligned map value field.
    unsafe { atomic_cxchg::<u64, { SeqCst }, { SeqCst }>(target, current, new).1 }
}

/// Adds to a per-CPU counter atomically: a program hooked in an interrupt (a kfree there) can
/// run in the middle of another on the same CPU, and a plain read-modify-write would lose one
/// of the two updates.
#[inline(always)]
fn atomic_add(target: &mut i64, delta: i64) {
    use core::intrinsics::{AtomicOrdering::Relaxed, atomic_xadd};
    // SAFETY: an aligned field of a map value.
    unsafe {
        atomic_xadd::<i64, i64, { Relaxed }>(target, delta);
    }
}

#[inline(always)]
fn charge_object(stats: &mut CacheStats, object: &LiveObject, sign: i64) {
    charge(
        stats,
        object.bytes() as u64,
        object.accounted(),
        sign * object.weight(),
    );
}

/// Adds `objects` objects (taken away when negative) of `size` bytes to a slot's counters
/// (on this CPU) and spends them from the slot's limit budgets.
#[inline(always)]
fn charge(stats: &mut CacheStats, size: u64, accounted: bool, objects: i64) {
    let bytes = size as i64 * objects;
    atomic_add(&mut stats.live_bytes, bytes);
    atomic_add(&mut stats.live_objects, objects);
    if accounted {
        atomic_add(&mut stats.accounted_bytes, bytes);
        atomic_add(&mut stats.accounted_objects, objects);
    }
    // SAFETY: a field of this CPU's counters, written by the agent only.
    let budgets = unsafe { core::ptr::read_volatile(&raw const stats.budgets) };
    if budgets != 0 {
        spend(budgets, bytes);
    }
}

/// Takes `bytes` (given back when negative) from the budgets of the watched cgroups this
/// slot counts for, and wakes the agent when one goes below zero: a cgroup crossing a limit
/// is acted on at once, not at the next sample.
#[inline(always)]
fn spend(budgets: u64, bytes: i64) {
    for k in 0..BUDGETS_PER_SLOT {
        let index = CacheStats::budget_index(budgets, k);
        if index == 0 {
            break;
        }
        let Some(budget) = LIMIT_BUDGETS.get_ptr_mut(index) else {
            continue;
        };
        // SAFETY: an element of the array map, shared by all CPUs: updated atomically.
        let budget = unsafe { &mut *budget };
        atomic_add(budget, -bytes);
        // Read after the add (the BPF target's base instruction set has no fetching add): a
        // crossing that another CPU's update hides here is seen at the next sample.
        // SAFETY: as above.
        let after = unsafe { core::ptr::read_volatile(budget) };
        if bytes > 0 && after < 0 && after + bytes >= 0 {
            // Lost only when 256 wake-ups are pending (4 KiB of 16-byte records): the agent
            // samples anyway.
            let _ = LIMIT_EVENTS.output::<u32>(&index, BPF_RB_FORCE_WAKEUP as u64);
        }
    }
}

/// This CPU's counters of a slot.
#[inline(always)]
fn cpu_counters(slot: u32) -> Option<*mut CacheStats> {
    let slots = global(&STATS_SLOT_MASK) + 1;
    // SAFETY: a helper without preconditions (inlined by the kernel).
    let cpu = unsafe { bpf_get_smp_processor_id() };
    CGROUP_CACHE_STATS.get_ptr_mut(cpu * slots + (slot & (slots - 1)))
}

/// The cgroup a new counter slot's counts belong to.
#[derive(Clone, Copy)]
enum SlotCgroup {
    Is(u64),
    /// The memcg's of an `obj_cgroup`; where the programs know no cgroup v2 counterpart for
    /// it, the allocating task's cgroup (`current_task`) or the root cgroup.
    OfObjcg {
        objcg: u64,
        current_task: bool,
    },
}

impl SlotCgroup {
    #[inline(always)]
    fn resolve(self) -> u64 {
        match self {
            Self::Is(id) => id,
            Self::OfObjcg {
                objcg,
                current_task,
            } => match truth::cgroup_of_objcg(objcg) {
                Some(id) if id != 0 => id,
                _ if current_task => current_cgroup(),
                _ => global(&ROOT_CGROUP_ID),
            },
        }
    }
}

/// The slot of `key` (by owner and cache) and this CPU's counters there; the slot is claimed
/// when the key is new, with the cgroup `cgroup_of` names (and, for a slab cache seen for the
/// first time, its name recorded for the agent).
#[inline(always)]
fn stats_slot(
    key: &StatsKey,
    is_slab: bool,
    cgroup_of: SlotCgroup,
) -> Option<(u32, *mut CacheStats)> {
    let mask = global(&STATS_SLOT_MASK);
    let first = stats_slot_hash(key);
    for probe in 0..STATS_PROBES {
        let index = first.wrapping_add(stats_probe_offset(probe)) & mask;
        let slot = STATS_KEYS.get_ptr_mut(index)?;
        // SAFETY: a slot of the array map. A claim writes the owner first (atomically), the
        // cache next and the cgroup last; cache ids are never 0, so a half-written slot
        // matches nothing.
        let (owner, cache_id) = unsafe {
            (
                core::ptr::read_volatile(&raw const (*slot).owner),
                core::ptr::read_volatile(&raw const (*slot).cache_id),
            )
        };
        if owner == key.owner && cache_id == key.cache_id {
            return Some((index, cpu_counters(index)?));
        }
    }
    // New key: the first free candidate. Two CPUs may claim two slots for one key at once:
    // the agent sums them. From the first probe again rather than from the first free one
    // seen above: that index, a constant on each of the verifier's paths, made it verify
    // this loop once per start (Linux 7.3 refused the inventory past its 1M instructions).
    for probe in 0..STATS_PROBES {
        let index = first.wrapping_add(stats_probe_offset(probe)) & mask;
        let slot = STATS_KEYS.get_ptr_mut(index)?;
        // SAFETY: as above; the claim is atomic.
        unsafe {
            let claim = &raw mut (*slot).owner;
            if core::ptr::read_volatile(claim) == 0 && compare_and_swap(claim, 0, key.owner) {
                core::ptr::write_volatile(&raw mut (*slot).cache_id, key.cache_id);
                core::ptr::write_volatile(&raw mut (*slot).cgroup_id, cgroup_of.resolve());
                if is_slab {
                    record_cache_name(key.cache_id);
                }
                if STATS_SLOT_EVENTS
                    .output::<u32>(&index, BPF_RB_NO_WAKEUP as u64)
                    .is_err()
                {
                    with_global_counters(|c| c.lost_slot_events += 1);
                }
                return Some((index, cpu_counters(index)?));
            }
        }
    }
    None
}

#[inline(never)]
fn record_cache_name(cache_id: u64) {
    if CACHE_NAMES.get_ptr(cache_id).is_some() {
        return;
    }
    let mut name = CacheName {
        bytes: [0; kmemcg_common::CACHE_NAME_LEN],
    };
    let cache = cache_id as *const u8;
    // SAFETY: reads of kernel memory through the fault-safe helpers.
    unsafe {
        let Ok(name_ptr) = bpf_probe_read_kernel(
            cache.add(global(&KMEM_CACHE_NAME_OFFSET) as usize) as *const *const u8,
        ) else {
            return;
        };
        if bpf_probe_read_kernel_str_bytes(name_ptr, &mut name.bytes).is_err() {
            return;
        }
    }
    let _ = CACHE_NAMES.insert(cache_id, name, BPF_NOEXIST as u64);
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
