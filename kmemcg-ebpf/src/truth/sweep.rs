//! The sweep: checks a range of live-object slots against the slab and uncharges the objects
//! that are free (see the parent module).
use core::ffi::c_void;

use aya_ebpf::{EbpfContext as _, macros::raw_tracepoint, programs::RawTracePointContext};
use kmemcg_common::{
    KERNEL_ADDRESS_MIN, KMALLOC_MAX_CACHE_SIZE, LiveObject, MAX_CPUS, OBJECT_OWNER_SEEN,
};

use super::{
    PERCPU_OFFSETS, PageKind, SLAB_LAYOUT, bases, bump, owner_record_stride, page_kind, read,
    run_loop, slab_counts,
};

use crate::{
    KMEM_CACHE_SIZE_OFFSET, LIVE_SLOT_MASK, POSSIBLE_CPUS, global,
    tables::{
        compare_and_swap,
        counters::STATS_KEYS,
        live_objects::{LIVE_OBJECTS, uncharge_owner},
    },
};

#[repr(C)]
struct SweepWalk {
    start: u64,
    vmemmap: u64,
    page_offset: u64,
    end: u64,
}

pub(super) enum Verdict {
    Live,
    /// Live, and its owner record is set: from now on its clearing means freed.
    OwnerSet,
    FreedOwner,
    FreedPage,
    FreedFreelist,
    /// A `vmap_area` whose range was handed back to vmalloc.
    HandedBack,
    /// In a slab sheaf (found by `sweep_sheaves`).
    InSheaf,
}

#[raw_tracepoint(tracepoint = "kmemcg_sweep")]
pub fn sweep(ctx: RawTracePointContext) -> i32 {
    let args = ctx.as_ptr() as *const u64;
    // SAFETY: the two u64 arguments the agent passes.
    let (start, count) = unsafe { (*args, *args.add(1)) };
    let Some(bases) = bases() else {
        return 1;
    };
    let mut walk = SweepWalk {
        start,
        vmemmap: bases.vmemmap,
        page_offset: bases.page_offset,
        end: bases.end,
    };
    run_loop(count.div_ceil(SWEEP_CHUNK), sweep_chunk, &mut walk);
    0
}

/// Slots one loop iteration looks at: most are free, and a loop callback costs more than
/// looking at a free slot. The verifier checks `sweep_slot` once for each slot of a chunk:
/// with 64, the sweep took 560k of its 1M instructions on Linux 6.18 and more than 1M on 7.3,
/// which refused it.
const SWEEP_CHUNK: u64 = 8;

#[inline(never)]
extern "C" fn sweep_chunk(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: the caller's SweepWalk.
    let walk = unsafe { &*(ctx as *const SweepWalk) };
    let first = walk.start + index * SWEEP_CHUNK;
    for i in 0..SWEEP_CHUNK {
        let Some(slot) = LIVE_OBJECTS.get_ptr_mut((first + i) as u32 & global(&LIVE_SLOT_MASK))
        else {
            return 1;
        };
        // SAFETY: a slot of the array map.
        if unsafe { core::ptr::read_volatile(&raw const (*slot).ptr) } != 0 {
            sweep_slot(walk, slot);
        }
    }
    0
}

#[inline(never)]
fn sweep_slot(walk: &SweepWalk, slot: *mut LiveObject) {
    // SAFETY: a slot of the array map; hooks may rewrite it meanwhile, which the
    // compare-and-swap below detects for the address.
    let object = unsafe { core::ptr::read_volatile(slot) };
    if object.ptr == 0 {
        return;
    }
    bump(1, |c| &mut c.swept_checked);
    let verdict = match check_object(walk, &object) {
        Some(Verdict::OwnerSet) => {
            use core::intrinsics::{AtomicOrdering::Relaxed, atomic_or};
            // The 64-bit word holding stats_slot (low half, little endian) and size_and_flags:
            // the BPF target has no 32-bit atomic OR.
            // SAFETY: an aligned 8 bytes of the slot.
            unsafe {
                atomic_or::<u64, u64, { Relaxed }>(
                    &raw mut (*slot).stats_slot as *mut u64,
                    (OBJECT_OWNER_SEEN as u64) << 32,
                );
            }
            return;
        }
        Some(Verdict::Live) | None => return,
        Some(freed) => freed,
    };
    release(slot, &object, verdict);
}

/// Uncharges `object`, found free, if `slot` still holds what was checked (an allocation at
/// the same address since would have rewritten its owner); whoever swaps the address out
/// owns the release, so an object is never uncharged twice. `verdict` says how it was found.
#[inline(always)]
pub(super) fn release(slot: *mut LiveObject, object: &LiveObject, verdict: Verdict) {
    // SAFETY: a slot of the array map, read and swapped atomically.
    if unsafe { core::ptr::read_volatile(slot) } != *object {
        return;
    }
    // SAFETY: as above.
    if unsafe { compare_and_swap(&raw mut (*slot).ptr, object.ptr, 0) } {
        uncharge_owner(object);
        // A match of constant fields: the BPF target has no indirect calls.
        match verdict {
            Verdict::FreedOwner => bump(1, |c| &mut c.swept_by_owner),
            Verdict::FreedPage => bump(1, |c| &mut c.swept_by_page),
            Verdict::HandedBack => bump(1, |c| &mut c.swept_by_vmalloc),
            Verdict::InSheaf => bump(1, |c| &mut c.swept_by_sheaf),
            _ => bump(1, |c| &mut c.swept_by_freelist),
        }
        bump(object.weight() as u64, |c| &mut c.swept_objects);
        bump(object.bytes() as u64 * object.weight() as u64, |c| {
            &mut c.swept_bytes
        });
    }
}

#[inline(always)]
fn check_object(walk: &SweepWalk, object: &LiveObject) -> Option<Verdict> {
    let ptr = object.ptr;
    // Percpu pointers and anything outside the direct map are not slab objects.
    if ptr < walk.page_offset || ptr >= walk.end {
        return Some(Verdict::Live);
    }
    let page_size = layout!(struct_page_size) as u64;
    let page = walk.vmemmap + ((ptr - walk.page_offset) >> layout!(page_shift)) * page_size;
    let head = head_page(page)?;
    match page_kind(head)? {
        PageKind::Slab => {}
        PageKind::LargeKmalloc => return Some(Verdict::Live),
        // Where large kmalloc pages have no type of their own, an object bigger than the
        // largest kmalloc cache may be one: no evidence that it was freed.
        PageKind::Other { .. }
            if layout!(pgty_large_kmalloc) == 0 && object.bytes() > KMALLOC_MAX_CACHE_SIZE =>
        {
            return Some(Verdict::Live);
        }
        PageKind::Other { .. } => return Some(Verdict::FreedPage),
    }
    let cache: u64 = read(head + layout!(slab_cache_offset) as u64)?;
    if let Some(key) = STATS_KEYS.get(object.stats_slot) {
        if key.cache_id >= KERNEL_ADDRESS_MIN && key.cache_id != cache {
            return Some(Verdict::FreedPage);
        }
    }
    let size = read::<u32>(cache + global(&KMEM_CACHE_SIZE_OFFSET) as u64)? as u64;
    if size == 0 || size != object.bytes() as u64 {
        return Some(Verdict::FreedPage);
    }
    let red_left_pad = read::<u32>(cache + layout!(kmem_cache_red_left_pad_offset) as u64)? as u64;
    // Checked divisions: the verifier refuses the panic path of a plain one.
    let head_pfn = (head - walk.vmemmap).checked_div(page_size)?;
    let slab_address = walk.page_offset + (head_pfn << layout!(page_shift));
    let offset = ptr.wrapping_sub(slab_address);
    if offset < red_left_pad || (offset - red_left_pad).checked_rem(size)? != 0 {
        return Some(Verdict::FreedPage);
    }
    let index = (offset - red_left_pad).checked_div(size)?;
    let (inuse, objects) = slab_counts(head)?;
    if index >= objects {
        return Some(Verdict::FreedPage);
    }
    let owner_seen = object.size_and_flags & OBJECT_OWNER_SEEN != 0;
    if object.accounted() {
        let exts = read::<u64>(head + layout!(slab_obj_exts_offset) as u64)?
            & !layout!(obj_exts_flags_mask);
        let stride = owner_record_stride(head, size)?;
        if exts != 0 && stride != 0 {
            let record = exts + index * stride + layout!(obj_ext_objcg_offset) as u64;
            let objcg: u64 = read(record)?;
            if objcg != 0 {
                return Some(if owner_seen {
                    Verdict::Live
                } else {
                    Verdict::OwnerSet
                });
            }
            if owner_seen {
                return Some(Verdict::FreedOwner);
            }
        } else if owner_seen {
            // The slab that held its record was freed; this one is another.
            return Some(Verdict::FreedPage);
        }
    }
    if super::vmalloc::handed_back(cache, ptr) {
        return Some(Verdict::HandedBack);
    }
    // Never had an owner record (unaccounted, or charged to no memcg): free if it is on its
    // slab's freelist or, for a CPU's slab (frozen), on that CPU's freelist.
    let frozen = layout!(cpu_slabs) != 0 && slab_frozen(head)?;
    if !frozen && inuse >= objects {
        // A full slab that no CPU holds has no free object.
        return Some(Verdict::Live);
    }
    let mut walk = freelist_walk(cache, ptr)?;
    walk.next = read(head + layout!(slab_freelist_offset) as u64)?;
    run_loop(objects.min(MAX_FREELIST_STEPS), freelist_step, &mut walk);
    if walk.found == 0 && frozen {
        let mut cpus = CpuFreelists {
            cpu_slab: read(cache + layout!(kmem_cache_cpu_slab_offset) as u64)?,
            slab: head,
            objects,
            walk,
        };
        run_loop(
            global(&POSSIBLE_CPUS).min(MAX_CPUS as u64),
            cpu_freelist,
            &mut cpus,
        );
        walk = cpus.walk;
    }
    Some(if walk.found != 0 {
        Verdict::FreedFreelist
    } else {
        Verdict::Live
    })
}

/// The head page of the compound page `page` belongs to (`page` itself if none). Tail pages
/// hold the head's address + 1 (`compound_head`, and `compound_info` from 7.0), or from 7.0,
/// with `struct page` a power of two in size, a mask that turns a tail's address into its
/// head's (high bits all set, then zeros, then bit 0): no `struct page` address has that form.
#[inline(always)]
fn head_page(page: u64) -> Option<u64> {
    let info: u64 = read(page + layout!(page_compound_head_offset) as u64)?;
    if info & 1 == 0 {
        return Some(page);
    }
    let high = info & !1;
    let is_mask = high != 0 && high | high.wrapping_sub(1) == u64::MAX;
    Some(if is_mask { page & info } else { info - 1 })
}

#[inline(always)]
fn slab_frozen(slab: u64) -> Option<bool> {
    let word: u64 = read(slab + layout!(slab_counters_offset) as u64)?;
    Some((word >> layout!(slab_frozen_shift)) & 1 != 0)
}

#[repr(C)]
struct CpuFreelists {
    cpu_slab: u64,
    slab: u64,
    objects: u64,
    walk: FreelistWalk,
}

#[inline(never)]
extern "C" fn cpu_freelist(cpu: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: the caller's CpuFreelists.
    let cpus = unsafe { &mut *(ctx as *mut CpuFreelists) };
    let offset = PERCPU_OFFSETS.get(cpu as u32).copied().unwrap_or(0);
    if offset == 0 {
        return 0;
    }
    let kmem_cache_cpu = cpus.cpu_slab.wrapping_add(offset);
    let slab = read::<u64>(kmem_cache_cpu + layout!(kmem_cache_cpu_slab_field_offset) as u64);
    if slab != Some(cpus.slab) {
        return 0;
    }
    let Some(first) = read::<u64>(kmem_cache_cpu + layout!(kmem_cache_cpu_freelist_offset) as u64)
    else {
        return 1;
    };
    cpus.walk.next = first;
    run_loop(
        cpus.objects.min(MAX_FREELIST_STEPS),
        freelist_step,
        &mut cpus.walk,
    );
    // A slab is the CPU slab of one CPU only.
    1
}

/// Longest freelist stretch followed for one object: bounds a sweep's cost on slabs of many
/// small objects (an object further down is found at a later sweep or at address reuse).
const MAX_FREELIST_STEPS: u64 = 128;

#[repr(C)]
struct FreelistWalk {
    next: u64,
    target: u64,
    offset: u64,
    random: u64,
    hardened: u64,
    found: u64,
}

/// A walk for `ptr` along freelists of `cache`, to be given its first object.
#[inline(always)]
fn freelist_walk(cache: u64, ptr: u64) -> Option<FreelistWalk> {
    let hardened = layout!(freelist_hardened) as u64;
    Some(FreelistWalk {
        next: 0,
        target: ptr,
        offset: read::<u32>(cache + layout!(kmem_cache_offset_offset) as u64)? as u64,
        random: if hardened != 0 {
            read(cache + layout!(kmem_cache_random_offset) as u64)?
        } else {
            0
        },
        hardened,
        found: 0,
    })
}

#[inline(never)]
extern "C" fn freelist_step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: the caller's FreelistWalk.
    let walk = unsafe { &mut *(ctx as *mut FreelistWalk) };
    if walk.next == 0 {
        return 1;
    }
    if walk.next == walk.target {
        walk.found = 1;
        return 1;
    }
    let at = walk.next + walk.offset;
    let Some(stored) = read::<u64>(at) else {
        return 1;
    };
    // Hardened freelists store next ^ cache key ^ byte-swapped address of the pointer.
    walk.next = if walk.hardened != 0 {
        stored ^ walk.random ^ at.swap_bytes()
    } else {
        stored
    };
    0
}
