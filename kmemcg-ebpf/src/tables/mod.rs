//! The tables the hooks and the walks share: live objects by address ([`live_objects`]), the
//! (owner, cache) counter slots with their per-CPU counters ([`counters`]) and the limit
//! budgets the counters spend ([`budgets`]).
//!
//! Both tables are lock-free open-addressing arrays with slots claimed by compare-and-swap:
//! live objects by address, and (cgroup, cache) keys whose counters sit at the same slot of
//! each CPU's block of the counter array. A live object remembers its counters' slot, so a
//! free needs no key lookup. Hash-map updates take a bucket lock with interrupts disabled and
//! a freelist lock, which cost several times the rest of the programs.
pub(crate) mod budgets;
pub(crate) mod counters;
pub(crate) mod live_objects;

/// Atomically replaces `*target` with `new` if it is `current`.
#[inline(always)]
pub(crate) unsafe fn compare_and_swap(target: *mut u64, current: u64, new: u64) -> bool {
    use core::intrinsics::{AtomicOrdering::SeqCst, atomic_cxchg};
    // SAFETY: the caller passes a valid, aligned map value field.
    unsafe { atomic_cxchg::<u64, { SeqCst }, { SeqCst }>(target, current, new).1 }
}

/// Adds to a per-CPU counter atomically: a program hooked in an interrupt (a kfree there) can
/// run in the middle of another on the same CPU, and a plain read-modify-write would lose one
/// of the two updates.
#[inline(always)]
pub(crate) fn atomic_add(target: &mut i64, delta: i64) {
    use core::intrinsics::{AtomicOrdering::Relaxed, atomic_xadd};
    // SAFETY: an aligned field of a map value.
    unsafe {
        atomic_xadd::<i64, i64, { Relaxed }>(target, delta);
    }
}
