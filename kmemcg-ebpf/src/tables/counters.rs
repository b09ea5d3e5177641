//! Counter slots: one per (owner, cache) key, claimed on first use, with each CPU's counters
//! at the same slot of its block; the agent reads both in place.
use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_NOEXIST, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_smp_processor_id, bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes},
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use kmemcg_common::{
    CacheName, CacheStats, GlobalCounters, LiveObject, STATS_PROBES, StatsKey, stats_probe_offset,
    stats_slot_hash,
};

use super::{atomic_add, budgets::spend, compare_and_swap};
use crate::{
    KMEM_CACHE_NAME_OFFSET, ROOT_CGROUP_ID, STATS_SLOT_MASK, current_cgroup, global, truth,
};

// (cgroup, cache) keys and, at the same slot of each CPU's block, their counters. Sized by the
// agent, which reads both in place (mmap).
#[map]
pub(crate) static STATS_KEYS: Array<StatsKey> = Array::with_max_entries(1 << 16, BPF_F_MMAPABLE);

#[map]
pub(crate) static CGROUP_CACHE_STATS: Array<CacheStats> =
    Array::with_max_entries(1 << 17, BPF_F_MMAPABLE);

#[map]
pub(crate) static STATS_SLOT_EVENTS: RingBuf = RingBuf::with_byte_size(256 << 10, 0);

#[map]
pub(crate) static CACHE_NAMES: HashMap<u64, CacheName> = HashMap::with_max_entries(4096, 0);

#[map]
pub(crate) static GLOBAL_COUNTERS: PerCpuArray<GlobalCounters> =
    PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub(crate) fn with_global_counters(update: impl FnOnce(&mut GlobalCounters)) {
    if let Some(counters) = GLOBAL_COUNTERS.get_ptr_mut(0) {
        // SAFETY: per-CPU value, and these programs do not nest on one CPU.
        update(unsafe { &mut *counters });
    }
}

#[inline(always)]
pub(crate) fn charge_object(stats: &mut CacheStats, object: &LiveObject, sign: i64) {
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
pub(crate) fn charge(stats: &mut CacheStats, size: u64, accounted: bool, objects: i64) {
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

/// This CPU's counters of a slot.
#[inline(always)]
pub(crate) fn cpu_counters(slot: u32) -> Option<*mut CacheStats> {
    let slots = global(&STATS_SLOT_MASK) + 1;
    // SAFETY: a helper without preconditions (inlined by the kernel).
    let cpu = unsafe { bpf_get_smp_processor_id() };
    CGROUP_CACHE_STATS.get_ptr_mut(cpu * slots + (slot & (slots - 1)))
}

/// The cgroup a new counter slot's counts belong to.
#[derive(Clone, Copy)]
pub(crate) enum SlotCgroup {
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
pub(crate) fn stats_slot(
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
pub(crate) fn record_cache_name(cache_id: u64) {
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
