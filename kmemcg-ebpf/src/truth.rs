//! Two programs the agent runs itself with `BPF_PROG_TEST_RUN`, never on an event, so the
//! allocation and free hooks do not pay for them:
//!
//! - `inventory` walks a range of page frames; on each slab page with owner records
//!   (`slab->obj_exts`) it takes every object whose record names an `obj_cgroup` into the
//!   live-object table, charged to that memcg's cgroup, unless the object is tracked already.
//! - `sweep` checks a range of live-object slots against the slab: an object whose page is no
//!   longer a slab of its cache, whose owner record was seen set and is now cleared, or which
//!   sits on its slab's freelist, was freed without a free tracepoint; it is uncharged.
//!
//! Every read of kernel memory goes through `bpf_probe_read_kernel`: the pages walked change
//! under the programs, so a read may fail (a hole in the memory map) and then nothing is
//! concluded. An object is uncharged only on positive evidence that it is free.
use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_task, bpf_get_smp_processor_id, bpf_loop, bpf_probe_read_kernel},
    macros::{map, raw_tracepoint},
    maps::{Array, HashMap},
    programs::RawTracePointContext,
};
use kmemcg_common::{
    KERNEL_ADDRESS_MIN, LiveObject, MAX_CPUS, OBJECT_ACCOUNTED, OBJECT_FLAGS, OBJECT_OWNER_SEEN,
    RootCgroupMode, SlabLayout, StatsKey, TruthCounters, kmalloc_cache_id,
};

use crate::{
    CGROUP_KN_OFFSET, CGROUP_ROOT_HIERARCHY_ID_OFFSET, CGROUP_ROOT_OFFSET, KERNFS_NODE_ID_OFFSET,
    KMEM_CACHE_FLAGS_OFFSET, KMEM_CACHE_SIZE_OFFSET, LIVE_OBJECTS, LIVE_SLOT_MASK, POSSIBLE_CPUS,
    ROOT_CGROUP_ID, ROOT_CGROUP_MODE, STATS_KEYS, charge, compare_and_swap, global, remember_new,
    stats_slot, uncharge_owner,
};

#[unsafe(no_mangle)]
static SLAB_LAYOUT: SlabLayout = unsafe { core::mem::zeroed() };

#[map]
static MEMCG_CGROUP_IDS: HashMap<u64, u64> = HashMap::with_max_entries(1 << 16, 0);
#[map]
static TRUTH_COUNTERS: Array<TruthCounters> = Array::with_max_entries(1, 0);
#[map]
static PERCPU_OFFSETS: Array<u64> = Array::with_max_entries(MAX_CPUS, 0);
#[map]
static PERCPU_AREAS: Array<u64> = Array::with_max_entries(MAX_CPUS, 0);

/// A field of the load-time layout.
macro_rules! layout {
    ($field:ident) => {
        // SAFETY: a field of a static of the program.
        unsafe { core::ptr::read_volatile(&raw const SLAB_LAYOUT.$field) }
    };
}

#[inline(always)]
fn read<T>(addr: u64) -> Option<T> {
    // SAFETY: the fault-safe helper; a failed read yields None.
    unsafe { bpf_probe_read_kernel(addr as *const T) }.ok()
}

#[inline(always)]
fn bump(n: u64, field: impl FnOnce(&mut TruthCounters) -> &mut u64) {
    use core::intrinsics::{AtomicOrdering::Relaxed, atomic_xadd};
    if let Some(counters) = TRUTH_COUNTERS.get_ptr_mut(0) {
        // SAFETY: a field of the map's only value; updated atomically (both programs may run
        // on several CPUs at once).
        unsafe {
            atomic_xadd::<u64, u64, { Relaxed }>(field(&mut *counters), n);
        }
    }
}

/// Where the `struct page` array and the direct map start, and where the latter ends.
struct Bases {
    vmemmap: u64,
    page_offset: u64,
    end: u64,
}

#[inline(always)]
fn bases() -> Option<Bases> {
    let symbol = layout!(vmemmap_base_symbol);
    let vmemmap = if symbol != 0 {
        read::<u64>(symbol)?
    } else {
        layout!(vmemmap_base)
    };
    let symbol = layout!(page_offset_base_symbol);
    let page_offset = if symbol != 0 {
        read::<u64>(symbol)?
    } else {
        layout!(page_offset_base)
    };
    Some(Bases {
        vmemmap,
        page_offset,
        end: page_offset + (layout!(max_pfn) << layout!(page_shift)),
    })
}

/// (inuse, objects) of the slab whose `struct slab` (head page) is at `slab`.
#[inline(always)]
fn slab_counts(slab: u64) -> Option<(u64, u64)> {
    let word: u64 = read(slab + layout!(slab_counters_offset) as u64)?;
    let field = |shift: u32, bits: u32| (word >> shift) & ((1u64 << bits) - 1);
    Some((
        field(layout!(slab_inuse_shift), layout!(slab_inuse_bits)),
        field(layout!(slab_objects_shift), layout!(slab_objects_bits)),
    ))
}

#[inline(always)]
fn run_loop<C>(count: u64, callback: extern "C" fn(u64, *mut c_void) -> i64, ctx: &mut C) {
    // SAFETY: the callback takes the context this frame owns for the call.
    unsafe {
        bpf_loop(
            count as u32,
            callback as *const () as *mut c_void,
            ctx as *mut C as *mut c_void,
            0,
        );
    }
}

// ---- percpu offsets ----

/// Run on one CPU (BPF_F_TEST_RUN_ON_CPU): the task running here is on this CPU's run queue,
/// a percpu variable (`runqueues`), so the run queue's address less the variable's offset is
/// where this CPU's percpu area starts; the area's `this_cpu_off` holds the CPU's percpu
/// offset. The agent checks that area - offset agrees on every CPU before the sweep uses it.
#[raw_tracepoint(tracepoint = "kmemcg_cpu_offset")]
pub fn cpu_offset(_ctx: RawTracePointContext) -> i32 {
    match find_cpu_offset() {
        Some(()) => 0,
        None => 1,
    }
}

#[inline(always)]
fn find_cpu_offset() -> Option<()> {
    // SAFETY: helpers without preconditions.
    let (task, cpu) = unsafe { (bpf_get_current_task(), bpf_get_smp_processor_id()) };
    let cfs_rq: u64 =
        read(task + layout!(task_se_offset) as u64 + layout!(se_cfs_rq_offset) as u64)?;
    let rq: u64 = read(cfs_rq + layout!(cfs_rq_rq_offset) as u64)?;
    let area = rq.checked_sub(layout!(runqueues_offset) as u64)?;
    let offset: u64 = read(area + layout!(this_cpu_off_offset) as u64)?;
    let (Some(o), Some(a)) = (
        PERCPU_OFFSETS.get_ptr_mut(cpu),
        PERCPU_AREAS.get_ptr_mut(cpu),
    ) else {
        return None;
    };
    // SAFETY: values of array maps.
    unsafe {
        *o = offset;
        *a = area;
    }
    Some(())
}

// ---- inventory ----

#[repr(C)]
struct PfnWalk {
    start: u64,
    vmemmap: u64,
    page_offset: u64,
    /// Most objects the inventory may add in all (it leaves room for new allocations).
    budget: u64,
}

#[repr(C)]
struct SlabWalk {
    budget: u64,
    exts: u64,
    first_object: u64,
    size: u64,
    cache_id: u64,
    last_objcg: u64,
    last_cgroup: u64,
}

#[raw_tracepoint(tracepoint = "kmemcg_inventory")]
pub fn inventory(ctx: RawTracePointContext) -> i32 {
    let args = ctx.as_ptr() as *const u64;
    // SAFETY: the three u64 arguments the agent passes (ctx_in of BPF_PROG_TEST_RUN).
    let (start, count, budget) = unsafe { (*args, *args.add(1), *args.add(2)) };
    let Some(bases) = bases() else {
        return 1;
    };
    let mut walk = PfnWalk {
        start,
        vmemmap: bases.vmemmap,
        page_offset: bases.page_offset,
        budget,
    };
    run_loop(count, inventory_page, &mut walk);
    0
}

#[inline(never)]
extern "C" fn inventory_page(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: the caller's PfnWalk.
    let walk = unsafe { &*(ctx as *const PfnWalk) };
    let _ = inventory_slab(walk, walk.start + index);
    0
}

#[inline(always)]
fn inventory_slab(walk: &PfnWalk, pfn: u64) -> Option<()> {
    let page = walk.vmemmap + pfn * layout!(struct_page_size) as u64;
    let page_type: u32 = read(page + layout!(slab_page_type_offset) as u64)?;
    if page_type >> 24 != layout!(pgty_slab) {
        return None;
    }
    let cache: u64 = read(page + layout!(slab_cache_offset) as u64)?;
    let (inuse, objects) = slab_counts(page)?;
    let size: u32 = read(cache + global(&KMEM_CACHE_SIZE_OFFSET) as u64)?;
    let flags: u32 = read(cache + global(&KMEM_CACHE_FLAGS_OFFSET) as u64)?;
    bump(1, |c| &mut c.slab_pages);
    bump(inuse, |c| &mut c.slab_objects_in_use);
    bump(inuse * size as u64, |c| &mut c.slab_bytes_in_use);
    let exts =
        read::<u64>(page + layout!(slab_obj_exts_offset) as u64)? & !layout!(obj_exts_flags_mask);
    if exts == 0 {
        return None;
    }
    let red_left_pad: u32 = read(cache + layout!(kmem_cache_red_left_pad_offset) as u64)?;
    // kmalloc caches are named like the kmalloc hook names their objects.
    let cache_id = if flags & layout!(slab_kmalloc) != 0 {
        kmalloc_cache_id(size as u64, true)
    } else {
        cache
    };
    let mut slab = SlabWalk {
        budget: walk.budget,
        exts,
        first_object: walk.page_offset + (pfn << layout!(page_shift)) + red_left_pad as u64,
        size: size as u64,
        cache_id,
        last_objcg: 0,
        last_cgroup: 0,
    };
    run_loop(objects, inventory_object, &mut slab);
    Some(())
}

#[inline(never)]
extern "C" fn inventory_object(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: the caller's SlabWalk.
    let slab = unsafe { &mut *(ctx as *mut SlabWalk) };
    let record =
        slab.exts + index * layout!(obj_ext_size) as u64 + layout!(obj_ext_objcg_offset) as u64;
    let Some(objcg) = read::<u64>(record) else {
        return 0;
    };
    if objcg == 0 {
        return 0;
    }
    // Neighbouring objects mostly share an owner.
    if objcg != slab.last_objcg {
        slab.last_cgroup = cgroup_of_objcg(objcg).unwrap_or(0);
        slab.last_objcg = objcg;
    }
    take_object(
        slab.budget,
        slab.last_cgroup,
        slab.cache_id,
        slab.first_object + index * slab.size,
        slab.size,
    );
    0
}

/// The cgroup v2 id that kmemcg charges for the memcg behind `objcg` (0: none).
#[inline(always)]
fn cgroup_of_objcg(objcg: u64) -> Option<u64> {
    let memcg: u64 = read(objcg + layout!(objcg_memcg_offset) as u64)?;
    let cgroup: u64 =
        read(memcg + layout!(memcg_css_offset) as u64 + layout!(css_cgroup_offset) as u64)?;
    let kn: u64 = read(cgroup + global(&CGROUP_KN_OFFSET) as u64)?;
    let id: u64 = read(kn + global(&KERNFS_NODE_ID_OFFSET) as u64)?;
    let root: u64 = read(cgroup + global(&CGROUP_ROOT_OFFSET) as u64)?;
    let hierarchy: i32 = read(root + global(&CGROUP_ROOT_HIERARCHY_ID_OFFSET) as u64)?;
    if hierarchy == 0 {
        return Some(id);
    }
    // SAFETY: a plain value of a hash map, copied out at once.
    unsafe { MEMCG_CGROUP_IDS.get(&id) }.copied()
}

#[inline(always)]
fn take_object(budget: u64, cgroup_id: u64, cache_id: u64, ptr: u64, size: u64) {
    bump(1, |c| &mut c.accounted_objects);
    bump(size, |c| &mut c.accounted_bytes);
    let added = TRUTH_COUNTERS.get(0).map_or(0, |c| c.added_objects);
    if added >= budget {
        bump(1, |c| &mut c.dropped);
        return;
    }
    let untracked_root = cgroup_id == global(&ROOT_CGROUP_ID)
        && RootCgroupMode::from_u32(global(&ROOT_CGROUP_MODE)) != Some(RootCgroupMode::Track);
    if cgroup_id == 0 || untracked_root {
        bump(1, |c| &mut c.unmapped_objects);
        bump(size, |c| &mut c.unmapped_bytes);
        return;
    }
    let key = StatsKey {
        cgroup_id,
        cache_id,
    };
    let Some((slot, stats)) = stats_slot(&key, cache_id >= KERNEL_ADDRESS_MIN) else {
        bump(1, |c| &mut c.dropped);
        return;
    };
    let object = LiveObject {
        ptr,
        stats_slot: slot,
        size_and_flags: size as u32 & !OBJECT_FLAGS | OBJECT_ACCOUNTED | OBJECT_OWNER_SEEN,
    };
    match remember_new(&object) {
        Some(true) => {
            // SAFETY: this CPU's counters.
            charge(unsafe { &mut *stats }, &object, 1);
            bump(1, |c| &mut c.added_objects);
            bump(size, |c| &mut c.added_bytes);
        }
        Some(false) => bump(1, |c| &mut c.already_tracked),
        None => bump(1, |c| &mut c.dropped),
    }
}

// ---- sweep ----

#[repr(C)]
struct SweepWalk {
    start: u64,
    vmemmap: u64,
    page_offset: u64,
    end: u64,
}

enum Verdict {
    Live,
    /// Live, and its owner record is set: from now on its clearing means freed.
    OwnerSet,
    FreedOwner,
    FreedPage,
    FreedFreelist,
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
    run_loop(count, sweep_slot, &mut walk);
    0
}

#[inline(never)]
extern "C" fn sweep_slot(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: the caller's SweepWalk.
    let walk = unsafe { &*(ctx as *const SweepWalk) };
    let Some(slot) =
        LIVE_OBJECTS.get_ptr_mut((walk.start + index) as u32 & global(&LIVE_SLOT_MASK))
    else {
        return 1;
    };
    // SAFETY: a slot of the array map; hooks may rewrite it meanwhile, which the
    // compare-and-swap below detects for the address.
    let object = unsafe { core::ptr::read_volatile(slot) };
    if object.ptr == 0 {
        return 0;
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
            return 0;
        }
        Some(Verdict::Live) | None => return 0,
        Some(freed) => freed,
    };
    // The slot must still hold what was checked (an allocation at the same address since
    // would have rewritten its owner); whoever swaps the address out owns the release.
    // SAFETY: as above.
    if unsafe { core::ptr::read_volatile(slot) } != object {
        return 0;
    }
    // SAFETY: as above.
    if unsafe { compare_and_swap(&raw mut (*slot).ptr, object.ptr, 0) } {
        uncharge_owner(&object);
        match verdict {
            Verdict::FreedOwner => bump(1, |c| &mut c.swept_by_owner),
            Verdict::FreedPage => bump(1, |c| &mut c.swept_by_page),
            _ => bump(1, |c| &mut c.swept_by_freelist),
        }
        bump(1, |c| &mut c.swept_objects);
        bump(object.bytes() as u64, |c| &mut c.swept_bytes);
    }
    0
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
    let compound_head: u64 = read(page + layout!(page_compound_head_offset) as u64)?;
    let head = if compound_head & 1 != 0 {
        compound_head - 1
    } else {
        page
    };
    let page_type: u32 = read(head + layout!(slab_page_type_offset) as u64)?;
    let kind = page_type >> 24;
    if kind == layout!(pgty_large_kmalloc) {
        return Some(Verdict::Live);
    }
    if kind != layout!(pgty_slab) {
        return Some(Verdict::FreedPage);
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
        if exts != 0 {
            let record =
                exts + index * layout!(obj_ext_size) as u64 + layout!(obj_ext_objcg_offset) as u64;
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
    // Never had an owner record (unaccounted, or charged to no memcg): free if it is on its
    // slab's freelist or, for a CPU's slab (frozen), on that CPU's freelist.
    let frozen = slab_frozen(head)?;
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
