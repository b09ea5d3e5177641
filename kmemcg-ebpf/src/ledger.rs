//! The ledger: accounted slab objects counted per (`obj_cgroup`, cache) from the owner record
//! the kernel keeps for each (`slab->obj_exts[i].objcg`, `slab->memcg_data` before 6.10). The
//! record is set before the allocation tracepoints fire and still set when the free ones fire,
//! and the allocator has just touched it, so both hooks find the owner in a few cached reads
//! and no object needs an entry of its own. When a cgroup is removed the kernel moves its
//! `obj_cgroup` to the parent; the agent does the same with the counts.
//!
//! A recount (the truth walk, `recount_slab`) finds the objects made before the hooks attached
//! and corrects what was freed without a free tracepoint: it counts every record into the
//! slots' shadow counters, page frame by page frame, while the hooks add what they see on
//! slabs already counted (below the cursor) to the shadow counters too. Once it is done the
//! shadow is exact, and the agent keeps (shadow - live) as the slot's correction.
use aya_ebpf::{macros::map, maps::Array};
use kmemcg_common::{LedgerState, StatsKey};

use crate::{
    global,
    tables::{
        atomic_add,
        counters::{SlotCgroup, charge, stats_slot, with_global_counters},
    },
    truth::{SLAB_LAYOUT, Stride, record_stride},
};

#[map]
static LEDGER_STATE: Array<LedgerState> = Array::with_max_entries(1, 0);

/// A field of the load-time slab layout.
macro_rules! layout {
    ($field:ident) => {
        // SAFETY: a field of a static of the program.
        unsafe { core::ptr::read_volatile(&raw const SLAB_LAYOUT.$field) }
    };
}

#[inline(always)]
fn read<T>(addr: u64) -> Option<T> {
    // SAFETY: the fault-safe helper; a failed read yields None.
    unsafe { aya_ebpf::helpers::bpf_probe_read_kernel(addr as *const T) }.ok()
}

/// What an allocation or free hook knows of the object's cache, a `SLAB_ACCOUNT` one.
pub struct CacheInfo {
    /// `struct kmem_cache` address; 0 when the hook does not know it (kmalloc, kfree): the
    /// cache is then read from the slab, and its flags checked.
    pub cache: u64,
    pub size: u32,
    pub red_left_pad: u32,
}

/// [`CacheInfo::cache`] of an accounted kmalloc's: whichever cache its slab names.
const ANY_KMALLOC_CG: u64 = u64::MAX;

impl CacheInfo {
    pub const UNKNOWN: Self = Self {
        cache: 0,
        size: 0,
        red_left_pad: 0,
    };

    /// An accounted kmalloc of `bytes_alloc` bytes, from a `kmalloc-cg-*` cache without red
    /// zones.
    #[inline(always)]
    pub fn kmalloc_cg(bytes_alloc: u64) -> Self {
        Self {
            cache: ANY_KMALLOC_CG,
            size: bytes_alloc as u32,
            red_left_pad: 0,
        }
    }
}

/// An accounted slab object: its owner and cache, and where its slab is.
struct Owned {
    objcg: u64,
    cache: u64,
    size: u64,
    slab_pfn: u64,
}

/// The state, when the ledger is on.
#[inline(always)]
fn state() -> Option<*mut LedgerState> {
    let state = LEDGER_STATE.get_ptr_mut(0)?;
    // SAFETY: the map's only value.
    (unsafe { core::ptr::read_volatile(&raw const (*state).enabled) } != 0).then_some(state)
}

/// Where the `struct page` array and the direct map start: read from the kernel's variables
/// (randomized layouts) by the first hook that needs them, then kept.
#[inline(always)]
fn bases(state: *mut LedgerState) -> Option<(u64, u64)> {
    // SAFETY: the map's only value; every CPU writes the same numbers.
    unsafe {
        let vmemmap = core::ptr::read_volatile(&raw const (*state).vmemmap);
        if vmemmap != 0 {
            return Some((
                vmemmap,
                core::ptr::read_volatile(&raw const (*state).page_offset),
            ));
        }
        let (vmemmap, page_offset) = learn_bases()?;
        core::ptr::write_volatile(&raw mut (*state).page_offset, page_offset);
        core::ptr::write_volatile(&raw mut (*state).vmemmap, vmemmap);
        Some((vmemmap, page_offset))
    }
}

#[inline(never)]
fn learn_bases() -> Option<(u64, u64)> {
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
    (vmemmap != 0).then_some((vmemmap, page_offset))
}

/// A cache's flags and what a hook needs to find an object's owner record. Three small reads:
/// one read of the 96 bytes that hold them measured 30 ns slower per run.
#[inline(always)]
pub fn read_cache(cache: u64) -> Option<(u32, CacheInfo)> {
    let at = |offset: u32| read::<u32>(cache + offset as u64);
    Some((
        at(global(&crate::KMEM_CACHE_FLAGS_OFFSET))?,
        CacheInfo {
            cache,
            size: at(global(&crate::KMEM_CACHE_SIZE_OFFSET))?,
            red_left_pad: at(layout!(kmem_cache_red_left_pad_offset))?,
        },
    ))
}

/// Copies 64 bytes of kernel memory into `block` in place: a copy returned by value takes
/// another 72 bytes of the stack, of which Linux 6.1 to 6.15 allow the hooks 512 in all.
#[inline(always)]
fn read_block(addr: u64, block: &mut [u64; 8]) -> Option<()> {
    // SAFETY: the block's 64 bytes, viewed as bytes.
    let bytes = unsafe { core::slice::from_raw_parts_mut(block.as_mut_ptr().cast::<u8>(), 64) };
    // SAFETY: the fault-safe helper; a failed read yields None.
    unsafe { aya_ebpf::helpers::bpf_probe_read_kernel_buf(addr as *const u8, bytes) }.ok()
}

/// A little-endian field of `size` bytes at `offset` in a copy of a `struct slab`.
#[inline(always)]
fn field(block: &[u64; 8], offset: u32, size: u32) -> Option<u64> {
    let word = *block.get((offset / 8) as usize)?;
    let shift = (offset % 8) * 8;
    let value = word >> shift;
    Some(if size >= 8 {
        value
    } else {
        value & ((1u64 << (size * 8)) - 1)
    })
}

/// Why the ledger did not count an object.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum NotCounted {
    /// A slab object of a cache without `SLAB_ACCOUNT` (known only when the hook did not know
    /// the cache): the table tracks it only if its address is sampled.
    UnaccountedCache,
    /// Anything else (ledger off, not a slab object, no owner named): the table's, if anyone's.
    Other,
}

/// The owner record of the object at `ptr`, if it lies in a slab whose records name an
/// `obj_cgroup` for it.
#[inline(always)]
fn owned(state: *mut LedgerState, ptr: u64, known: &CacheInfo) -> Result<Owned, NotCounted> {
    use NotCounted::Other;
    let (vmemmap, page_offset) = bases(state).ok_or(Other)?;
    let shift = layout!(page_shift);
    let pfn = ptr.checked_sub(page_offset).ok_or(Other)? >> shift;
    if pfn >= layout!(max_pfn) {
        return Err(Other);
    }
    let page_size = layout!(struct_page_size) as u64;
    // One read for the object's page; a second for its head page when it is a tail.
    let mut block = [0u64; 8];
    read_block(vmemmap + pfn * page_size, &mut block).ok_or(Other)?;
    let info = field(&block, layout!(page_compound_head_offset), 8).ok_or(Other)?;
    let mut slab_pfn = pfn;
    if info & 1 != 0 {
        let high = info & !1;
        let is_mask = high != 0 && high | high.wrapping_sub(1) == u64::MAX;
        let page = vmemmap + pfn * page_size;
        let head = if is_mask { page & info } else { info - 1 };
        slab_pfn = head
            .checked_sub(vmemmap)
            .and_then(|offset| offset.checked_div(page_size))
            .ok_or(Other)?;
        read_block(head, &mut block).ok_or(Other)?;
    }
    let pg_slab = layout!(pg_slab_mask);
    let is_slab = if pg_slab != 0 {
        field(&block, layout!(page_flags_offset), 8).ok_or(Other)? & pg_slab != 0
    } else {
        field(&block, layout!(slab_page_type_offset), 4).ok_or(Other)? >> 24
            == layout!(pgty_slab) as u64
    };
    if !is_slab {
        return Err(Other);
    }
    let cache = field(&block, layout!(slab_cache_offset), 8).ok_or(Other)?;
    let exts = field(&block, layout!(slab_obj_exts_offset), 8).ok_or(Other)?
        & !layout!(obj_exts_flags_mask);
    let stride = record_stride(|offset, bytes| field(&block, offset, bytes)).ok_or(Other)?;
    let read_info;
    let known = if known.cache == 0 {
        // The ledger counts `SLAB_ACCOUNT` caches only (see `on_cache_alloc`); the cache's
        // flags also tell a free whether the table samples the object.
        let (flags, info) = read_cache(cache).ok_or(Other)?;
        if flags & global(&crate::SLAB_ACCOUNT) == 0 {
            return Err(NotCounted::UnaccountedCache);
        }
        read_info = info;
        &read_info
    } else if known.cache != cache && known.cache != ANY_KMALLOC_CG {
        return Err(Other);
    } else {
        known
    };
    if exts == 0 {
        return Err(Other);
    }
    let (size, red_left_pad) = (known.size as u64, known.red_left_pad as u64);
    let first = page_offset + (slab_pfn << shift) + red_left_pad;
    let index = ptr
        .checked_sub(first)
        .and_then(|offset| offset.checked_div(size))
        .ok_or(Other)?;
    let stride = match stride {
        Stride::Bytes(0) => return Err(Other),
        Stride::Bytes(bytes) => bytes,
        Stride::ObjectSize => size,
    };
    let objcg: u64 =
        read(exts + index * stride + layout!(obj_ext_objcg_offset) as u64).ok_or(Other)?;
    if objcg == 0 {
        return Err(Other);
    }
    Ok(Owned {
        objcg,
        cache,
        size,
        slab_pfn,
    })
}

/// Counts an allocation (`sign` 1) or a free (-1) of `ptr` in the ledger when the kernel's
/// owner record names an `obj_cgroup` for it; says why not when it does not (the object is
/// then the live-object table's).
#[inline(always)]
pub fn count(ptr: u64, known: &CacheInfo, sign: i64) -> Result<(), NotCounted> {
    let state = state().ok_or(NotCounted::Other)?;
    let owned = owned(state, ptr, known)?;
    let key = StatsKey {
        owner: owned.objcg,
        cache_id: owned.cache,
        cgroup_id: 0,
    };
    let cgroup = SlotCgroup::OfObjcg {
        objcg: owned.objcg,
        current_task: sign > 0,
    };
    let Some((_, stats)) = stats_slot(&key, true, cgroup) else {
        with_global_counters(|c| c.dropped_stats_full += 1);
        // Taken all the same: the table does not know the object either.
        return Ok(());
    };
    // SAFETY: this CPU's counters.
    let stats = unsafe { &mut *stats };
    if sign > 0 {
        stats.allocs += 1;
    } else {
        stats.frees += 1;
    }
    // Live figures only: every object of a ledger slot is accounted, the agent knows.
    charge(stats, owned.size, false, sign);
    // SAFETY: the map's only value.
    let cursor = unsafe { core::ptr::read_volatile(&raw const (*state).recount_cursor) };
    if owned.slab_pfn < cursor {
        atomic_add(&mut stats.shadow_objects, sign);
        atomic_add(&mut stats.shadow_bytes, sign * owned.size as i64);
    }
    Ok(())
}

/// The recount's part for one owner record found set: counted into its slot's shadow.
#[inline(always)]
pub fn recount_object(objcg: u64, cache: u64, size: u64) -> bool {
    let key = StatsKey {
        owner: objcg,
        cache_id: cache,
        cgroup_id: 0,
    };
    let cgroup = SlotCgroup::OfObjcg {
        objcg,
        current_task: false,
    };
    // The cache's name is recorded once per slab by the walk (`truth::inventory_slab`).
    let Some((_, stats)) = stats_slot(&key, false, cgroup) else {
        return false;
    };
    // SAFETY: this CPU's counters.
    let stats = unsafe { &mut *stats };
    atomic_add(&mut stats.shadow_objects, 1);
    atomic_add(&mut stats.shadow_bytes, size as i64);
    true
}

/// Marks the page frames below `pfn` recounted.
#[inline(always)]
pub fn advance_cursor(pfn: u64) {
    if let Some(state) = LEDGER_STATE.get_ptr_mut(0) {
        // SAFETY: the map's only value; written by the recount only (one at a time).
        unsafe { core::ptr::write_volatile(&raw mut (*state).recount_cursor, pfn) };
    }
}

/// True when the ledger is on (the recount counts into it rather than into the table, and
/// the table samples unaccounted objects).
#[inline(always)]
pub fn enabled() -> bool {
    state().is_some()
}

/// How the live-object table takes an unaccounted slab object.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum TableEntry {
    /// Not tracked: where the ledger is on, only one address in `1 << SAMPLE_SHIFT` is.
    None,
    /// Tracked for itself (the ledger is off).
    Exact,
    /// Tracked for `1 << SAMPLE_SHIFT` objects.
    Sampled,
}

impl TableEntry {
    /// Whether the table may hold the object, so that its free must look it up.
    #[inline(always)]
    pub fn may_hold(self) -> bool {
        self != Self::None
    }
}

/// How the table takes the unaccounted slab object at `ptr`: every one where the ledger is
/// off, one address in `1 << SAMPLE_SHIFT` where it is on. The same address always gets the
/// same answer, so that a free looks up only what its allocation may have taken.
#[inline(always)]
pub fn table_entry(ptr: u64) -> TableEntry {
    if !enabled() {
        TableEntry::Exact
    } else if kmemcg_common::is_sampled_address(ptr) {
        TableEntry::Sampled
    } else {
        TableEntry::None
    }
}
