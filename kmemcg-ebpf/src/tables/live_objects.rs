//! Live objects by address: the owner of each object the ledger does not count (unaccounted
//! slab objects, sampled where the ledger is on; percpu allocations; large kmallocs), so that
//! its free uncharges whoever allocated it.
use aya_ebpf::{macros::map, maps::Array};
use kmemcg_common::{LIVE_PROBES, LiveObject, live_slot_hash};

use super::{
    compare_and_swap,
    counters::{charge_object, cpu_counters},
};
use crate::{LIVE_SLOT_MASK, global};

// Sizes here are defaults; the agent sets the capacities it is configured with.
#[map]
pub(crate) static LIVE_OBJECTS: Array<LiveObject> = Array::with_max_entries(1 << 20, 0);

/// Slot `probe` of `ptr`'s probe sequence.
#[inline(always)]
pub(crate) fn live_slot(ptr: u64, probe: u32) -> Option<*mut LiveObject> {
    let index = live_slot_hash(ptr).wrapping_add(probe) & global(&LIVE_SLOT_MASK);
    LIVE_OBJECTS.get_ptr_mut(index)
}

pub(crate) enum Remembered {
    New,
    /// The address was still held by a tracked object whose free no hook saw (bulk frees):
    /// that object is gone, and its owner must be uncharged.
    Replaced(LiveObject),
    Full,
}

/// Puts `object` in its address's probe sequence: in place of a stale entry for the same
/// address, else in the first free slot, claimed atomically so that two CPUs never share one.
#[inline(always)]
pub(crate) fn remember(object: &LiveObject) -> Remembered {
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
pub(crate) enum Inventoried {
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
pub(crate) fn remember_new(object: &LiveObject) -> Inventoried {
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
pub(crate) unsafe fn write_owner(slot: *mut LiveObject, object: &LiveObject) {
    // SAFETY: the caller owns the slot.
    unsafe {
        (*slot).stats_slot = object.stats_slot;
        (*slot).size_and_flags = object.size_and_flags;
    }
}

/// Releases the slot of the object at `ptr` and uncharges its owner; false if untracked.
#[inline(always)]
pub(crate) fn uncharge(ptr: u64) -> bool {
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
pub(crate) fn uncharge_owner(object: &LiveObject) {
    if let Some(stats) = cpu_counters(object.stats_slot) {
        // SAFETY: this CPU's counters.
        let stats = unsafe { &mut *stats };
        stats.frees += object.weight() as u64;
        charge_object(stats, object, -1);
    }
}
