//! Programs the agent runs itself with `BPF_PROG_TEST_RUN`, never on an event, so the
//! allocation and free hooks do not pay for them:
//!
//! - `inventory` walks a range of page frames; on each slab page with owner records
//!   (`slab->obj_exts`) it takes every object whose record names an `obj_cgroup` into the
//!   live-object table, charged to that memcg's cgroup, unless the object is tracked already.
//!   On the other pages it notes the percpu chunks they belong to, whose accounted
//!   allocations `inventory_percpu` then takes the same way (see `percpu`).
//! - `sweep` checks a range of live-object slots against the slab: an object whose page is no
//!   longer a slab of its cache, whose owner record was seen set and is now cleared, or which
//!   sits on its slab's freelist, was freed without a free tracepoint; it is uncharged, as is
//!   a `vmap_area` that vmalloc took back (see `vmalloc`).
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
    LiveObject, MAX_CPUS, OBJECT_ACCOUNTED, OBJECT_FLAGS, OBJECT_OWNER_SEEN, RootCgroupMode,
    SlabLayout, StatsKey, TruthCounters, kmalloc_cache_id,
};

use crate::{
    CGROUP_KN_OFFSET, CGROUP_ROOT_HIERARCHY_ID_OFFSET, CGROUP_ROOT_OFFSET, KERNFS_NODE_ID_OFFSET,
    KMEM_CACHE_FLAGS_OFFSET, KMEM_CACHE_SIZE_OFFSET, ROOT_CGROUP_ID, ROOT_CGROUP_MODE, global,
    tables::{
        counters::{SlotCgroup, charge_object, record_cache_name, stats_slot},
        live_objects::{Inventoried, remember_new},
    },
};

#[unsafe(no_mangle)]
pub(crate) static SLAB_LAYOUT: SlabLayout = unsafe { core::mem::zeroed() };

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

/// `kmem_cache::red_left_pad`'s offset.
#[inline(always)]
pub(crate) fn layout_red_left_pad_offset() -> u32 {
    layout!(kmem_cache_red_left_pad_offset)
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

/// What a head page is, as the walks need to know: a slab's, a large kmalloc's, or another
/// page (with its page type, which percpu chunk pages have none of).
#[derive(Clone, Copy, PartialEq, Eq)]
enum PageKind {
    Slab,
    LargeKmalloc,
    Other { page_type: u32 },
}

#[inline(always)]
fn page_kind(page: u64) -> Option<PageKind> {
    let page_type: u32 = read(page + layout!(slab_page_type_offset) as u64)?;
    let pg_slab = layout!(pg_slab_mask);
    if pg_slab != 0 {
        // Before page types: a page flag.
        let flags: u64 = read(page + layout!(page_flags_offset) as u64)?;
        if flags & pg_slab != 0 {
            return Some(PageKind::Slab);
        }
        return Some(PageKind::Other { page_type });
    }
    let kind = page_type >> 24;
    Some(if kind == layout!(pgty_slab) {
        PageKind::Slab
    } else if kind == layout!(pgty_large_kmalloc) {
        PageKind::LargeKmalloc
    } else {
        PageKind::Other { page_type }
    })
}

/// Bytes between two objects' owner records in the slab at `slab`: one record (a vector), the
/// cache's object `size` where the slab keeps each record inside its object (7.2+), or 0
/// where its records hold no owner (7.3+, a slab of a cache that is never accounted).
#[inline(always)]
fn owner_record_stride(slab: u64, size: u64) -> Option<u64> {
    let field = |offset: u32, bytes: u32| {
        if bytes == 4 {
            read::<u32>(slab + offset as u64).map(u64::from)
        } else {
            read::<u64>(slab + offset as u64)
        }
    };
    Some(match record_stride(field)? {
        Stride::Bytes(bytes) => bytes,
        Stride::ObjectSize => size,
    })
}

/// Bytes between two owner records.
pub(crate) enum Stride {
    /// 0: the slab keeps no `obj_cgroup` in its records.
    Bytes(u64),
    /// Records inside the objects: the cache's object size.
    ObjectSize,
}

/// The stride of a slab's owner records, from its fields (`field(offset, bytes)` of its
/// `struct slab`): the stride field (7.2+), else the counters word's in-object and
/// needs-objcg bits (7.x), else `sizeof(struct slabobj_ext)`.
#[inline(always)]
pub(crate) fn record_stride(field: impl Fn(u32, u32) -> Option<u64>) -> Option<Stride> {
    let stride_offset = layout!(slab_stride_offset);
    if stride_offset != 0 {
        return field(stride_offset, 4).map(Stride::Bytes);
    }
    let (in_object, needs_objcg) = (
        layout!(slab_obj_exts_in_object_shift),
        layout!(slab_obj_exts_needs_objcg_shift),
    );
    if in_object != 0 || needs_objcg != 0 {
        let word = field(layout!(slab_counters_offset), 8)?;
        if in_object != 0 && (word >> in_object) & 1 != 0 {
            return Some(Stride::ObjectSize);
        }
        if needs_objcg != 0 && (word >> needs_objcg) & 1 == 0 {
            return Some(Stride::Bytes(0));
        }
    }
    Some(Stride::Bytes(layout!(obj_ext_size) as u64))
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
/// Written out rather than with `#[raw_tracepoint]`, whose wrapper returns 0 whatever the
/// function returns: the agent needs to know when it failed.
#[unsafe(no_mangle)]
#[unsafe(link_section = "raw_tracepoint/kmemcg_cpu_offset")]
pub fn cpu_offset(_ctx: *mut c_void) -> u32 {
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
    /// End of the direct map.
    end: u64,
    /// Most objects the inventory may add in all (it leaves room for new allocations).
    budget: u64,
}

#[repr(C)]
struct SlabWalk {
    budget: u64,
    exts: u64,
    /// Bytes between two owner records.
    stride: u64,
    first_object: u64,
    size: u64,
    cache_id: u64,
    /// The `struct kmem_cache` (the ledger's cache id, also for kmalloc caches).
    cache: u64,
    /// 1: count owned objects in the ledger, not into the live-object table.
    ledger: u64,
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
        end: bases.end,
        budget,
    };
    run_loop(count, inventory_page, &mut walk);
    0
}

#[inline(never)]
extern "C" fn inventory_page(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: the caller's PfnWalk.
    let walk = unsafe { &*(ctx as *const PfnWalk) };
    let pfn = walk.start + index;
    let _ = inventory_slab(walk, pfn);
    if crate::ledger::enabled() {
        crate::ledger::advance_cursor(pfn + 1);
    }
    0
}

#[inline(always)]
fn inventory_slab(walk: &PfnWalk, pfn: u64) -> Option<()> {
    let page = walk.vmemmap + pfn * layout!(struct_page_size) as u64;
    match page_kind(page)? {
        PageKind::Slab => {}
        PageKind::LargeKmalloc => return None,
        PageKind::Other { page_type } => {
            percpu::note_chunk(walk, page, page_type);
            return None;
        }
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
    let stride = owner_record_stride(page, size as u64)?;
    if stride == 0 {
        return None;
    }
    // The ledger counts the `SLAB_ACCOUNT` caches; other owned objects (allocated with
    // `__GFP_ACCOUNT`) are the table's.
    let ledger = crate::ledger::enabled() && flags & global(&crate::SLAB_ACCOUNT) != 0;
    // Once per slab, here rather than when an object's slot is claimed five calls deeper,
    // where its stack frame would take the walk past the 512 bytes of stack that Linux 6.1's
    // verifier allows.
    record_cache_name(cache);
    let mut slab = SlabWalk {
        budget: walk.budget,
        exts,
        stride,
        first_object: walk.page_offset + (pfn << layout!(page_shift)) + red_left_pad as u64,
        size: size as u64,
        cache_id,
        cache,
        ledger: ledger as u64,
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
    let record = slab.exts + index * slab.stride + layout!(obj_ext_objcg_offset) as u64;
    let Some(objcg) = read::<u64>(record) else {
        return 0;
    };
    if objcg == 0 {
        return 0;
    }
    if slab.ledger != 0 {
        bump(1, |c| &mut c.accounted_objects);
        bump(slab.size, |c| &mut c.accounted_bytes);
        // Not among the added objects: those are the live-object table's (percpu ones).
        if !crate::ledger::recount_object(objcg, slab.cache, slab.size) {
            bump(1, |c| &mut c.dropped);
        }
        return 0;
    }
    if slab.budget == 0 {
        // A recount (see `ledger`): the table's objects are the sweep's.
        return 0;
    }
    // Neighbouring objects mostly share an owner.
    if objcg != slab.last_objcg {
        slab.last_cgroup = cgroup_of_objcg(objcg).unwrap_or(0);
        slab.last_objcg = objcg;
    }
    bump(1, |c| &mut c.accounted_objects);
    bump(slab.size, |c| &mut c.accounted_bytes);
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
pub(crate) fn cgroup_of_objcg(objcg: u64) -> Option<u64> {
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

/// Takes a live accounted object of `cgroup_id` into tracking unless it is tracked already;
/// true when taken.
#[inline(always)]
fn take_object(budget: u64, cgroup_id: u64, cache_id: u64, ptr: u64, size: u64) -> bool {
    let added = TRUTH_COUNTERS.get(0).map_or(0, |c| c.added_objects);
    if added >= budget {
        bump(1, |c| &mut c.dropped);
        return false;
    }
    let untracked_root = cgroup_id == global(&ROOT_CGROUP_ID)
        && RootCgroupMode::from_u32(global(&ROOT_CGROUP_MODE)) != Some(RootCgroupMode::Track);
    if cgroup_id == 0 || untracked_root {
        bump(1, |c| &mut c.unmapped_objects);
        bump(size, |c| &mut c.unmapped_bytes);
        return false;
    }
    let key = StatsKey::of_cgroup(cgroup_id, cache_id);
    // The slab's cache name is recorded by `inventory_slab`.
    let Some((slot, stats)) = stats_slot(&key, false, SlotCgroup::Is(cgroup_id)) else {
        bump(1, |c| &mut c.dropped);
        return false;
    };
    let object = LiveObject {
        ptr,
        stats_slot: slot,
        size_and_flags: size as u32 & !OBJECT_FLAGS | OBJECT_ACCOUNTED | OBJECT_OWNER_SEEN,
    };
    match remember_new(&object) {
        result @ (Inventoried::Taken | Inventoried::ReplacedStale) => {
            // SAFETY: this CPU's counters.
            charge_object(unsafe { &mut *stats }, &object, 1);
            bump(1, |c| &mut c.added_objects);
            bump(size, |c| &mut c.added_bytes);
            if matches!(result, Inventoried::ReplacedStale) {
                bump(1, |c| &mut c.replaced_stale);
            }
            true
        }
        Inventoried::Tracked => {
            bump(1, |c| &mut c.already_tracked);
            false
        }
        Inventoried::Full => {
            bump(1, |c| &mut c.dropped);
            false
        }
    }
}

pub(crate) mod percpu;
mod sheaves;
mod sweep;
mod vmalloc;
