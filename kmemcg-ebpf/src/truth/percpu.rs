//! The percpu part of the inventory. Every percpu chunk but the first (which has no owner
//! vector, so nothing in it is accounted) lives in pages that hold the chunk's address
//! (`page->private`; `page->index` before Linux 6.15), and the chunk keeps one owner record
//! per 4-byte unit (`chunk->obj_exts[off / 4].cgroup`, set for an accounted allocation at its
//! first unit, cleared when it is freed). The page walk notes the chunks; `inventory_percpu`
//! reads a chunk's owner vector and takes each owned allocation, sized by the chunk's
//! boundary bitmap, into the live-object table under the pointer the percpu hooks see.
use core::ffi::c_void;

use aya_ebpf::{
    helpers::bpf_probe_read_kernel_buf,
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use kmemcg_common::{
    CACHE_ID_PERCPU, KERNEL_ADDRESS_MIN, MAX_PERCPU_CHUNKS, PERCPU_MIN_ALLOC_SIZE, PercpuLayout,
};

use super::{PfnWalk, bump, cgroup_of_objcg, read, run_loop, take_object};
use crate::{POSSIBLE_CPUS, global, tables::live_objects::uncharge};

#[unsafe(no_mangle)]
static PERCPU_LAYOUT: PercpuLayout = unsafe { core::mem::zeroed() };

#[map]
static PERCPU_CHUNKS: HashMap<u64, u64> = HashMap::with_max_entries(MAX_PERCPU_CHUNKS, 0);
#[map]
static PERCPU_POINTER_DELTA: Array<u64> = Array::with_max_entries(2, 0);
/// One 4 KiB read of an owner vector per CPU.
#[map]
static OWNER_BLOCK: PerCpuArray<[u64; BLOCK_WORDS]> = PerCpuArray::with_max_entries(1, 0);

const BLOCK_WORDS: usize = 512;
/// Longest allocation, in bitmap words: the allocator refuses more than 32 KiB
/// (`PCPU_MIN_UNIT_SIZE`), 8,192 units.
const MAX_ALLOCATION_WORDS: u64 = 8192 / 64 + 2;

macro_rules! layout {
    ($field:ident) => {
        // SAFETY: a field of a static of the program.
        unsafe { core::ptr::read_volatile(&raw const PERCPU_LAYOUT.$field) }
    };
}

/// Called by the percpu allocation hook: a percpu pointer less its address in the chunk is
/// the same for every allocation, and the inventory needs it to name what it finds. Written
/// once: later allocations only read that it is known.
#[inline(always)]
pub(crate) fn record_pointer_delta(ptr: u64, chunk_address: u64) {
    if let (Some(delta), Some(known)) = (
        PERCPU_POINTER_DELTA.get_ptr_mut(0),
        PERCPU_POINTER_DELTA.get_ptr_mut(1),
    ) {
        // SAFETY: values of an array map; every writer writes the same value, the delta
        // before the flag that says it is there.
        unsafe {
            if core::ptr::read_volatile(known) == 0 {
                core::ptr::write_volatile(delta, ptr.wrapping_sub(chunk_address));
                core::ptr::write_volatile(known, 1);
            }
        }
    }
}

/// The pointer fields of `struct page` that may hold a percpu chunk's address.
#[repr(C)]
struct PageWords {
    mapping: u64,
    index: u64,
    private: u64,
}

/// Notes the percpu chunk that the page at `page` belongs to, if it is a chunk's page.
#[inline(always)]
pub(super) fn note_chunk(walk: &PfnWalk, page: u64, page_type: u32) {
    // A chunk's pages have no type, no user mapping (so no mapcount) and no file mapping.
    if layout!(chunk_obj_exts_offset) == 0 || page_type != u32::MAX {
        return;
    }
    let Some(words) = read::<PageWords>(page + layout!(page_mapping_offset) as u64) else {
        return;
    };
    if words.mapping != 0 {
        return;
    }
    for candidate in [words.private, words.index] {
        if candidate >= walk.page_offset && candidate < walk.end && candidate % 8 == 0 {
            note_candidate(candidate);
        }
    }
}

#[inline(always)]
fn note_candidate(chunk: u64) {
    if PERCPU_CHUNKS.get_ptr(chunk).is_some() {
        return;
    }
    if let Some(entries) = chunk_entries(chunk) {
        if PERCPU_CHUNKS.insert(chunk, entries, 0).is_ok() {
            bump(1, |c| &mut c.percpu_chunks);
        }
    }
}

/// Owner-vector entries of the `struct pcpu_chunk` at `chunk`, if it is one: its list links
/// agree with their neighbours, its size is plausible and its vector and bitmap are kernel
/// pointers (an untyped page's `private` can be anything).
#[inline(always)]
fn chunk_entries(chunk: u64) -> Option<u64> {
    let list = chunk + layout!(chunk_list_offset) as u64;
    let next: u64 = read(list)?;
    let prev: u64 = read(list + 8)?;
    if read::<u64>(next + 8)? != list || read::<u64>(prev)? != list {
        return None;
    }
    let nr_pages = read::<i32>(chunk + layout!(chunk_nr_pages_offset) as u64)?;
    if !(1..=1 << 16).contains(&nr_pages) {
        return None;
    }
    for offset in [
        layout!(chunk_obj_exts_offset),
        layout!(chunk_bound_map_offset),
        layout!(chunk_base_addr_offset),
    ] {
        if read::<u64>(chunk + offset as u64)? < KERNEL_ADDRESS_MIN {
            return None;
        }
    }
    // SAFETY: a field of a static of the program.
    let page_shift = unsafe { core::ptr::read_volatile(&raw const super::SLAB_LAYOUT.page_shift) };
    Some(((nr_pages as u64) << page_shift) / PERCPU_MIN_ALLOC_SIZE)
}

#[repr(C)]
struct ChunkWalk {
    first: u64,
    budget: u64,
    base_addr: u64,
    bound_map: u64,
    obj_exts: u64,
    /// Percpu pointer less chunk address.
    delta: u64,
    /// Entries in the chunk, and per 4 KiB block of the vector.
    entries: u64,
    per_block: u64,
    /// The current block could not be read.
    unreadable: bool,
    last_objcg: u64,
    last_cgroup: u64,
}

/// Written out rather than with `#[raw_tracepoint]` (see `cpu_offset`): 1 when the chunk
/// was not read (freed since the page walk, or no percpu pointer seen yet).
#[unsafe(no_mangle)]
#[unsafe(link_section = "raw_tracepoint/kmemcg_inventory_percpu")]
pub fn inventory_percpu(ctx: *mut c_void) -> u32 {
    let args = ctx as *const u64;
    // SAFETY: the four u64 arguments the agent passes.
    let (chunk, first, count, budget) =
        unsafe { (*args, *args.add(1), *args.add(2), *args.add(3)) };
    match walk_chunk(chunk, first, count, budget) {
        Some(()) => 0,
        None => 1,
    }
}

#[inline(always)]
fn walk_chunk(chunk: u64, first: u64, count: u64, budget: u64) -> Option<()> {
    if PERCPU_POINTER_DELTA.get(1).copied() != Some(1) {
        return None;
    }
    // SAFETY: a plain value of a hash map, copied out at once.
    let entries = unsafe { PERCPU_CHUNKS.get(&chunk) }.copied()?;
    let ext_size = layout!(obj_ext_size) as u64;
    let per_block = (BLOCK_WORDS as u64 * 8).checked_div(ext_size)?;
    // Blocks are read whole: they must start on a block boundary.
    if first.checked_rem(per_block)? != 0 || first >= entries {
        return None;
    }
    let mut walk = ChunkWalk {
        first,
        budget,
        base_addr: read(chunk + layout!(chunk_base_addr_offset) as u64)?,
        bound_map: read(chunk + layout!(chunk_bound_map_offset) as u64)?,
        obj_exts: read(chunk + layout!(chunk_obj_exts_offset) as u64)?,
        delta: PERCPU_POINTER_DELTA.get(0).copied()?,
        entries,
        per_block,
        unreadable: false,
        last_objcg: 0,
        last_cgroup: 0,
    };
    run_loop(count.min(entries - first), owner_entry, &mut walk);
    Some(())
}

#[inline(never)]
extern "C" fn owner_entry(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: the caller's ChunkWalk.
    let walk = unsafe { &mut *(ctx as *mut ChunkWalk) };
    let Some(block) = OWNER_BLOCK.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's scratch value; the program does not nest.
    let block = unsafe { &mut *block };
    let entry = walk.first + index;
    let ext_size = layout!(obj_ext_size) as u64;
    let Some(in_block) = index.checked_rem(walk.per_block) else {
        return 1;
    };
    if in_block == 0 {
        let source = walk.obj_exts + entry * ext_size;
        // SAFETY: the fault-safe helper, into a map value of the same size.
        let bytes = unsafe {
            core::slice::from_raw_parts_mut(block.as_mut_ptr() as *mut u8, BLOCK_WORDS * 8)
        };
        // SAFETY: as above.
        walk.unreadable = unsafe { bpf_probe_read_kernel_buf(source as *const u8, bytes) }.is_err();
    }
    if walk.unreadable {
        return 0;
    }
    let word = (in_block * ext_size + layout!(obj_ext_objcg_offset) as u64) / 8;
    let objcg = block[word as usize & (BLOCK_WORDS - 1)];
    if objcg != 0 {
        let _ = take_allocation(walk, entry, objcg);
    }
    0
}

#[inline(never)]
fn take_allocation(walk: &mut ChunkWalk, entry: u64, objcg: u64) -> Option<()> {
    let units = allocation_units(walk, entry)?;
    if objcg != walk.last_objcg {
        walk.last_cgroup = cgroup_of_objcg(objcg).unwrap_or(0);
        walk.last_objcg = objcg;
    }
    let bytes = units * PERCPU_MIN_ALLOC_SIZE * global(&POSSIBLE_CPUS);
    let ptr = (walk.base_addr + entry * PERCPU_MIN_ALLOC_SIZE).wrapping_add(walk.delta);
    bump(1, |c| &mut c.percpu_objects);
    bump(bytes, |c| &mut c.percpu_bytes);
    if take_object(walk.budget, walk.last_cgroup, CACHE_ID_PERCPU, ptr, bytes) {
        // Freed since its record was read: its free hook found nothing to uncharge, so this
        // does (percpu memory is not swept).
        let record = walk.obj_exts
            + entry * layout!(obj_ext_size) as u64
            + layout!(obj_ext_objcg_offset) as u64;
        if read::<u64>(record) == Some(0) {
            uncharge(ptr);
        }
    }
    Some(())
}

#[repr(C)]
struct BoundWalk {
    bound_map: u64,
    /// Next bit to look at, and the first bit past the chunk.
    bit: u64,
    end: u64,
    found: u64,
}

/// Units of the allocation starting at `entry`: the boundary bitmap has a bit set at the
/// start of every allocation and at the end of the last one.
#[inline(always)]
fn allocation_units(walk: &ChunkWalk, entry: u64) -> Option<u64> {
    let mut bounds = BoundWalk {
        bound_map: walk.bound_map,
        bit: entry + 1,
        end: walk.entries + 1,
        found: 0,
    };
    run_loop(MAX_ALLOCATION_WORDS, bound_word, &mut bounds);
    (bounds.found > entry).then(|| bounds.found - entry)
}

#[inline(never)]
extern "C" fn bound_word(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: the caller's BoundWalk.
    let bounds = unsafe { &mut *(ctx as *mut BoundWalk) };
    if bounds.bit >= bounds.end {
        return 1;
    }
    let word_index = bounds.bit / 64;
    let Some(word) = read::<u64>(bounds.bound_map + word_index * 8) else {
        return 1;
    };
    let rest = word >> (bounds.bit % 64);
    if rest != 0 {
        bounds.found = bounds.bit + rest.trailing_zeros() as u64;
        return 1;
    }
    bounds.bit = (word_index + 1) * 64;
    0
}
