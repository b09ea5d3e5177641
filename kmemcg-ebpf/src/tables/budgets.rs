//! Limit budgets: what each watched cgroup may still allocate before its limit, spent by the
//! counters it has slots in (see the agent's `watch`).
use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_RB_FORCE_WAKEUP},
    macros::map,
    maps::{Array, RingBuf},
};
use kmemcg_common::{BUDGETS_PER_SLOT, CacheStats, MAX_WATCHED};

use super::atomic_add;

#[map]
pub(crate) static LIMIT_BUDGETS: Array<i64> = Array::with_max_entries(MAX_WATCHED, BPF_F_MMAPABLE);

#[map]
pub(crate) static LIMIT_EVENTS: RingBuf = RingBuf::with_byte_size(4 << 10, 0);

/// Takes `bytes` (given back when negative) from the budgets of the watched cgroups this
/// slot counts for, and wakes the agent when one goes below zero: a cgroup crossing a limit
/// is acted on at once, not at the next sample.
#[inline(always)]
pub(crate) fn spend(budgets: u64, bytes: i64) {
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
