//! Leak recording (see `kmemcg_common::leaks`): for opted-in cgroups, each new object's call
//! site, time, cache and size, by address, until it is freed. The hooks call [`on_alloc`],
//! [`on_kmalloc`] and [`on_free`]; with nothing opted in each costs one array load and a
//! branch.
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    helpers::{bpf_get_current_cgroup_id, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use kmemcg_common::{
    kmalloc_cache_id,
    leaks::{DEFAULT_MAX_LEAK_OBJECTS, LeakCounters, LeakRecord, LeakSwitch, MAX_LEAK_CGROUPS},
};

use crate::{GFP_ACCOUNT, OBJ_EXTS_ALLOCATOR_SIZE, OBJ_EXTS_ALLOCATOR_START, global};

#[map]
static LEAK_SWITCH: Array<LeakSwitch> = Array::with_max_entries(1, 0);
#[map]
static LEAK_CGROUPS: HashMap<u64, u32> = HashMap::with_max_entries(MAX_LEAK_CGROUPS, 0);
// Not preallocated: the table takes memory only while something is recorded. The agent
// sets the capacity.
#[map]
static LEAK_OBJECTS: HashMap<u64, LeakRecord> =
    HashMap::with_max_entries(DEFAULT_MAX_LEAK_OBJECTS, BPF_F_NO_PREALLOC);
#[map]
static LEAK_COUNTERS: PerCpuArray<LeakCounters> = PerCpuArray::with_max_entries(1, 0);

/// kmalloc(0) returns ZERO_SIZE_PTR, never a real object.
const ZERO_SIZE_PTR: u64 = 16;

/// Whether any cgroup is opted in: the whole cost of this module while none is.
#[inline(always)]
fn armed() -> bool {
    match LEAK_SWITCH.get_ptr(0) {
        // SAFETY: the map's only element; the agent writes it, volatile so it is read.
        Some(switch) => unsafe { core::ptr::read_volatile(&raw const (*switch).armed) != 0 },
        None => false,
    }
}

/// A new slab object or percpu allocation.
#[inline(always)]
pub fn on_alloc(call_site: u64, ptr: u64, cache_id: u64, bytes: u64) {
    if armed() {
        record(call_site, ptr, cache_id, bytes);
    }
}

/// A kmalloc() allocation, as the kmalloc tracepoint gives it.
#[inline(always)]
pub fn on_kmalloc(call_site: u64, ptr: u64, bytes_alloc: u64, gfp: u64) {
    if !armed() {
        return;
    }
    // A new slab's owner-record vector is the slab's, not the cgroup's (as in the counters).
    if call_site.wrapping_sub(global(&OBJ_EXTS_ALLOCATOR_START)) < global(&OBJ_EXTS_ALLOCATOR_SIZE)
    {
        return;
    }
    let accounted = gfp & global(&GFP_ACCOUNT) != 0;
    record(
        call_site,
        ptr,
        kmalloc_cache_id(bytes_alloc, accounted),
        bytes_alloc,
    );
}

/// Any free: a recorded object is forgotten.
#[inline(always)]
pub fn on_free(ptr: u64) {
    if armed() {
        forget(ptr);
    }
}

#[inline(never)]
fn record(call_site: u64, ptr: u64, cache_id: u64, bytes: u64) {
    if ptr <= ZERO_SIZE_PTR {
        return;
    }
    let Some(switch) = LEAK_SWITCH.get_ptr(0) else {
        return;
    };
    // SAFETY: the map's only element.
    let (start, size) = unsafe { ((*switch).ignored_start, (*switch).ignored_size) };
    if call_site.wrapping_sub(start) < size {
        return;
    }
    // SAFETY: a helper without preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if LEAK_CGROUPS.get_ptr(cgroup_id).is_none() {
        return;
    }
    let record = LeakRecord {
        call_site,
        // SAFETY: a helper without preconditions.
        allocated_ns: unsafe { bpf_ktime_get_ns() },
        cache_id,
        cgroup_id,
        bytes,
    };
    // In place of an entry left at the same address by an object freed unseen (bulk frees).
    let recorded = LEAK_OBJECTS.insert(ptr, record, 0).is_ok();
    if let Some(counters) = LEAK_COUNTERS.get_ptr_mut(0) {
        // SAFETY: this CPU's value; a count lost to a nested program does not matter.
        let counters = unsafe { &mut *counters };
        if recorded {
            counters.recorded += 1;
        } else {
            counters.dropped_full += 1;
        }
    }
}

#[inline(never)]
fn forget(ptr: u64) {
    // A lookup first: deleting takes the bucket's lock even for an address never recorded.
    if LEAK_OBJECTS.get_ptr(ptr).is_some() {
        let _ = LEAK_OBJECTS.remove(ptr);
    }
}
