//! The sweep's look at slab sheaves (Linux 6.18+): a cache with sheaves frees objects into
//! arrays of free objects, each CPU's (`main`, `spare`, and `rcu_free` for `kfree_rcu()`) and
//! each node's barn of full ones. An object there is free but neither on a freelist nor, when
//! unaccounted, ever had an owner record: the slot-by-slot sweep cannot tell it is free, so
//! this program walks one cache's sheaves and uncharges the tracked objects it finds there.
use core::ffi::c_void;

use kmemcg_common::{
    KERNEL_ADDRESS_MIN, LIVE_PROBES, LiveObject, MAX_CPUS, SHEAVES_CHECKED, SHEAVES_NONE,
    SHEAVES_UNREADABLE,
};

use super::{PERCPU_OFFSETS, SLAB_LAYOUT, read, run_loop};
use crate::{KMEM_CACHE_SIZE_OFFSET, POSSIBLE_CPUS, global, tables::live_objects::live_slot};

/// A field of the load-time sheaf layout.
macro_rules! sheaf {
    ($field:ident) => {
        // SAFETY: a field of a static of the program.
        unsafe { core::ptr::read_volatile(&raw const SLAB_LAYOUT.sheaves.$field) } as u64
    };
}

/// Most sheaves followed on one barn's list of full ones (the kernel keeps at most 10).
const MAX_BARN_SHEAVES: u64 = 64;
/// Most objects looked at in one sheaf, whatever its capacity says.
const MAX_SHEAF_OBJECTS: u64 = 1024;

#[repr(C)]
struct SheafWalk {
    cache: u64,
    /// Object size of the cache: a tracked object of another size is not this cache's.
    size: u64,
    capacity: u64,
    cpu_sheaves: u64,
    /// The sheaf being looked at, and a barn's list head and cursor.
    sheaf: u64,
    head: u64,
    next: u64,
}

/// A raw tracepoint program written out rather than with `#[raw_tracepoint]`, whose wrapper
/// returns 0 whatever the function returns: the agent needs the answer.
#[unsafe(no_mangle)]
#[unsafe(link_section = "raw_tracepoint/kmemcg_sweep_sheaves")]
pub fn sweep_sheaves(ctx: *mut c_void) -> u32 {
    let args = ctx as *const u64;
    // SAFETY: the two u64 arguments the agent passes.
    let (cache, nodes) = unsafe { (*args, *args.add(1)) };
    walk_cache(cache, nodes).unwrap_or(SHEAVES_UNREADABLE)
}

#[inline(always)]
fn walk_cache(cache: u64, nodes: u64) -> Option<u32> {
    if sheaf!(present) == 0 || cache < KERNEL_ADDRESS_MIN {
        return Some(SHEAVES_NONE);
    }
    let cpu_sheaves: u64 = read(cache + sheaf!(kmem_cache_cpu_sheaves_offset))?;
    let capacity: u32 = read(cache + sheaf!(kmem_cache_sheaf_capacity_offset))?;
    if cpu_sheaves == 0 || capacity == 0 {
        return Some(SHEAVES_NONE);
    }
    let size: u32 = read(cache + global(&KMEM_CACHE_SIZE_OFFSET) as u64)?;
    let mut walk = SheafWalk {
        cache,
        size: size as u64,
        capacity: (capacity as u64).min(MAX_SHEAF_OBJECTS),
        cpu_sheaves,
        sheaf: 0,
        head: 0,
        next: 0,
    };
    run_loop(
        global(&POSSIBLE_CPUS).min(MAX_CPUS as u64),
        cpu_sheaves_step,
        &mut walk,
    );
    run_loop(
        nodes.min(sheaf!(kmem_cache_node_entries)),
        barn_step,
        &mut walk,
    );
    Some(SHEAVES_CHECKED)
}

/// One CPU's `struct slub_percpu_sheaves` (its percpu offset unknown: skipped).
#[inline(never)]
extern "C" fn cpu_sheaves_step(cpu: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: the caller's SheafWalk.
    let walk = unsafe { &mut *(ctx as *mut SheafWalk) };
    let offset = PERCPU_OFFSETS.get(cpu as u32).copied().unwrap_or(0);
    if offset == 0 {
        return 0;
    }
    let pcs = walk.cpu_sheaves.wrapping_add(offset);
    for field in [
        sheaf!(pcs_main_offset),
        sheaf!(pcs_spare_offset),
        sheaf!(pcs_rcu_free_offset),
    ] {
        if let Some(sheaf) = read::<u64>(pcs + field)
            && sheaf != 0
        {
            sweep_sheaf(walk, sheaf);
        }
    }
    0
}

/// One node's barn: its list of full sheaves.
#[inline(never)]
extern "C" fn barn_step(node: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: the caller's SheafWalk.
    let walk = unsafe { &mut *(ctx as *mut SheafWalk) };
    let entry = walk.cache + sheaf!(kmem_cache_node_offset) + node * sheaf!(kmem_cache_node_stride);
    // The barn is in the entry (7.0+), or in the `struct kmem_cache_node` it points to.
    let holder = if sheaf!(barn_in_node_entry) != 0 {
        entry
    } else {
        match read::<u64>(entry) {
            Some(kmem_cache_node) if kmem_cache_node != 0 => kmem_cache_node,
            _ => return 0,
        }
    };
    let Some(barn) = read::<u64>(holder + sheaf!(kmem_cache_node_barn_offset)) else {
        return 0;
    };
    if barn == 0 {
        return 0;
    }
    walk.head = barn + sheaf!(barn_sheaves_full_offset);
    // `list_head::next` is its first field.
    let Some(first) = read::<u64>(walk.head) else {
        return 0;
    };
    walk.next = first;
    run_loop(MAX_BARN_SHEAVES, barn_sheaf_step, walk);
    0
}

#[inline(never)]
extern "C" fn barn_sheaf_step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: the caller's SheafWalk.
    let walk = unsafe { &mut *(ctx as *mut SheafWalk) };
    let entry = walk.next;
    if entry == 0 || entry == walk.head {
        return 1;
    }
    // The next one first: the list may change while this sheaf is looked at (then the walk
    // ends early or strays into a sheaf whose cache check fails).
    let Some(next) = read::<u64>(entry) else {
        return 1;
    };
    sweep_sheaf(walk, entry.wrapping_sub(sheaf!(sheaf_barn_list_offset)));
    walk.next = next;
    0
}

#[inline(always)]
fn sweep_sheaf(walk: &mut SheafWalk, sheaf: u64) {
    if read::<u64>(sheaf + sheaf!(sheaf_cache_offset)) != Some(walk.cache) {
        return;
    }
    let Some(size) = read::<u32>(sheaf + sheaf!(sheaf_size_offset)) else {
        return;
    };
    walk.sheaf = sheaf;
    run_loop((size as u64).min(walk.capacity), sheaf_object, walk);
}

#[inline(never)]
extern "C" fn sheaf_object(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: the caller's SheafWalk.
    let walk = unsafe { &*(ctx as *const SheafWalk) };
    let Some(ptr) = object_at(walk, index) else {
        return 0;
    };
    if ptr < KERNEL_ADDRESS_MIN {
        return 0;
    }
    for probe in 0..LIVE_PROBES {
        let Some(slot) = live_slot(ptr, probe) else {
            break;
        };
        // SAFETY: a slot of the array map.
        if unsafe { core::ptr::read_volatile(&raw const (*slot).ptr) } == ptr {
            release(walk, slot, ptr, index);
        }
    }
    0
}

/// Entry `index` of the current sheaf's objects.
#[inline(always)]
fn object_at(walk: &SheafWalk, index: u64) -> Option<u64> {
    read(walk.sheaf + sheaf!(sheaf_objects_offset) + index * 8)
}

/// Uncharges the object in `slot` if it is still in the sheaf after the slot was read, with
/// `sweep_slot`'s discipline: the slot must still hold what was read, and whoever swaps the
/// address out owns the release.
#[inline(never)]
fn release(walk: &SheafWalk, slot: *mut LiveObject, ptr: u64, index: u64) {
    // SAFETY: a slot of the array map; hooks may rewrite it meanwhile (checked below).
    let object = unsafe { core::ptr::read_volatile(slot) };
    if object.ptr != ptr || object.bytes() as u64 != walk.size {
        return;
    }
    // Still in the sheaf (the sheaf still the cache's, the entry below its size): free at a
    // moment after the slot was read. An object taken from a sheaf leaves its entry behind,
    // so the size is read before the entry.
    if read::<u64>(walk.sheaf + sheaf!(sheaf_cache_offset)) != Some(walk.cache) {
        return;
    }
    match read::<u32>(walk.sheaf + sheaf!(sheaf_size_offset)) {
        Some(size) if index < size as u64 => {}
        _ => return,
    }
    if object_at(walk, index) != Some(ptr) {
        return;
    }
    super::sweep::release(slot, &object, super::sweep::Verdict::InSheaf);
}
