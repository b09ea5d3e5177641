//! vmalloc keeps the `struct vmap_area` of a freed range: lazily freed ranges wait in a list,
//! then in per-node pools or in the tree of free ranges, and serve later ranges without an
//! allocation tracepoint. The object is unaccounted and still allocated, but it is vmalloc's
//! from the moment the range is handed back, not the cgroup's that allocated it. Two hooks
//! keep the set of handed-back ranges; the sweep uncharges a tracked `vmap_area` whose range
//! is in the set, or which describes a free range.
use aya_ebpf::{
    macros::{btf_tracepoint, map},
    maps::{Array, LruHashMap},
    programs::BtfTracePointContext,
};
use kmemcg_common::{KERNEL_ADDRESS_MIN, MAX_VMALLOC_FREED, VmallocLayout};

use super::read;

#[unsafe(no_mangle)]
static VMALLOC_LAYOUT: VmallocLayout = unsafe { core::mem::zeroed() };

#[map]
static VMALLOC_FREED: LruHashMap<u64, u8> = LruHashMap::with_max_entries(MAX_VMALLOC_FREED, 0);
#[map]
static VMAP_AREA_CACHE: Array<u64> = Array::with_max_entries(1, 0);

macro_rules! layout {
    ($field:ident) => {
        // SAFETY: a field of a static of the program.
        unsafe { core::ptr::read_volatile(&raw const VMALLOC_LAYOUT.$field) }
    };
}

#[btf_tracepoint(function = "free_vmap_area_noflush")]
pub fn free_vmap_area_noflush(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(unsigned long va_start, unsigned long nr_lazy, unsigned long nr_lazy_max)
    let va_start: u64 = ctx.arg(0);
    let _ = VMALLOC_FREED.insert(&va_start, &1, 0);
    0
}

#[btf_tracepoint(function = "alloc_vmap_area")]
pub fn alloc_vmap_area(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(unsigned long addr, unsigned long size, unsigned long align,
    //          unsigned long vstart, unsigned long vend, int failed)
    let addr: u64 = ctx.arg(0);
    let failed: i32 = ctx.arg(5);
    if failed == 0 {
        let _ = VMALLOC_FREED.remove(&addr);
    }
    0
}

/// Whether the live object at `ptr`, of the slab cache `cache`, is a `vmap_area` that vmalloc
/// took back: its range was handed back, or it describes a free range (its `vm` word holds a
/// size).
#[inline(always)]
pub(super) fn handed_back(cache: u64, ptr: u64) -> bool {
    if layout!(va_vm_offset) == 0 || VMAP_AREA_CACHE.get(0).copied() != Some(cache) || cache == 0 {
        return false;
    }
    let (Some(va_start), Some(vm)) = (
        read::<u64>(ptr + layout!(va_start_offset) as u64),
        read::<u64>(ptr + layout!(va_vm_offset) as u64),
    ) else {
        return false;
    };
    (vm != 0 && vm < KERNEL_ADDRESS_MIN)
        // SAFETY: a plain value of a hash map, only tested for presence.
        || unsafe { VMALLOC_FREED.get(&va_start) }.is_some()
}
