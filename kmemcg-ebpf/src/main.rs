//! kmemcg's eBPF programs: BTF-typed raw tracepoints on the kmem/percpu and cgroup hooks
//! (`kmemcg_common::HOOKS`), and the inventory and sweep programs the agent runs.
//!
//! On allocation the allocating task's cgroup is charged in per-CPU counters, and the object's
//! owner is remembered by address; on free, whichever task or context frees it, the owner found
//! by address is uncharged. Names, paths, sums over CPUs and the hierarchy are the agent's job.
//!
//! This file holds the hooks; the tables they share with the walks are in [`tables`], the
//! ledger of accounted objects in [`ledger`], the walks in [`truth`].
#![no_std]
#![no_main]
// Atomic compare-and-swap and add on map values (BPF_ATOMIC): the bpf target's `core` has no
// atomic read-modify-write types.
#![feature(core_intrinsics)]
#![allow(internal_features)]

use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes},
    macros::{btf_tracepoint, map, raw_tracepoint},
    maps::{PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use kmemcg_common::{
    CACHE_ID_PERCPU, CGROUP_EVENT_MKDIR, CGROUP_EVENT_RENAME, CGROUP_EVENT_RMDIR, CgroupEvent,
    KMALLOC_MAX_CACHE_SIZE, LiveObject, OBJECT_ACCOUNTED, OBJECT_FLAGS, OBJECT_SAMPLED,
    RootCgroupMode, StatsKey, kmalloc_cache_id,
};

mod leaks;
mod ledger;
mod tables;
mod truth;
mod zombies;

use tables::{
    counters::{SlotCgroup, charge_object, stats_slot, with_global_counters},
    live_objects::{Remembered, remember, uncharge, uncharge_owner},
};

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

#[map]
static CGROUP_EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// kmalloc(0) returns ZERO_SIZE_PTR, never a real object.
const ZERO_SIZE_PTR: u64 = 16;

#[inline(always)]
fn global<T: Copy>(value: &T) -> T {
    // SAFETY: a static of the program; volatile so that the compiler does not fold the default.
    unsafe { core::ptr::read_volatile(value) }
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
    /// Tracked for `1 << SAMPLE_SHIFT` objects (see [`ledger::table_entry`]).
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
    let entry = if accounted_cache {
        if ledger::count(ptr, known, 1).is_ok() {
            return;
        }
        ledger::TableEntry::Exact
    } else {
        ledger::table_entry(ptr)
    };
    if !entry.may_hold() {
        return;
    }
    on_alloc(Allocation {
        ptr,
        cache_id: known.cache,
        bytes: known.size as u64,
        accounted,
        slab: true,
        sampled: entry == ledger::TableEntry::Sampled,
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
    let entry = if bytes <= KMALLOC_MAX_CACHE_SIZE as u64 {
        ledger::table_entry(ptr)
    } else {
        ledger::TableEntry::Exact
    };
    if !entry.may_hold() {
        return;
    }
    on_alloc(Allocation {
        ptr,
        cache_id: kmalloc_cache_id(bytes, accounted),
        bytes,
        accounted,
        slab: false,
        sampled: entry == ledger::TableEntry::Sampled,
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
        if ledger::table_entry(ptr).may_hold() {
            on_free(ptr);
        }
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
        Err(ledger::NotCounted::UnaccountedCache) => ledger::table_entry(ptr).may_hold(),
        Err(ledger::NotCounted::Other) => true,
    };
    if in_table {
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

#[inline(always)]
fn on_free(ptr: u64) {
    if ptr <= ZERO_SIZE_PTR {
        return;
    }
    if !uncharge(ptr) {
        with_global_counters(|c| c.untracked_frees += 1);
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
