//! The memory cgroups the kernel keeps, removed or not, found by walking its memory
//! controller's css tree: a removed memcg goes offline at once but stays on its parent's
//! `children` list until its last reference goes, however long that takes. Two programs the
//! agent runs itself (`BPF_PROG_TEST_RUN`), never on an event:
//!
//! - `kernel_memcgs` starts from the memcg of the task running it (the agent), climbs to the
//!   root and walks the tree in pre-order through `children`/`sibling`/`parent`, without a
//!   stack; each memcg's page counter, statistics and name go to `KERNEL_MEMCGS`.
//! - `memcg_lru` walks one memcg's LRU lists (classic and multi-gen) and counts its file,
//!   anonymous and shmem pages, naming the files (inode, path) they belong to.
//!
//! The programs run under RCU, which keeps a released css readable; every read is
//! `bpf_probe_read_kernel`, so a list changing under the walk yields a wrong record at worst,
//! never a fault, and each walk is bounded.
use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_current_task, bpf_loop, bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes,
    },
    macros::map,
    maps::Array,
};
use kmemcg_common::zombies::{
    KernelMemcg, LRU_GONE, MAX_KERNEL_MEMCGS, MAX_LRU_FILES, MAX_PATH_DEPTH, MEMCG_STAT_ITEMS,
    MemcgLayout, MemcgLru, STAT_UNKNOWN, WALK_FAILED,
};

#[unsafe(no_mangle)]
static MEMCG_LAYOUT: MemcgLayout = unsafe { core::mem::zeroed() };

#[map]
static KERNEL_MEMCGS: Array<KernelMemcg> = Array::with_max_entries(MAX_KERNEL_MEMCGS, 0);
#[map]
static MEMCG_LRU: Array<MemcgLru> = Array::with_max_entries(1, 0);

/// A field of the load-time layout.
macro_rules! layout {
    ($field:ident) => {
        // SAFETY: a field of a static of the program.
        unsafe { core::ptr::read_volatile(&raw const MEMCG_LAYOUT.$field) }
    };
}

#[inline(always)]
fn read<T>(addr: u64) -> Option<T> {
    // SAFETY: the fault-safe helper; a failed read yields None.
    unsafe { bpf_probe_read_kernel(addr as *const T) }.ok()
}

#[inline(always)]
fn run_loop<C>(count: u32, callback: extern "C" fn(u64, *mut c_void) -> i64, ctx: &mut C) {
    // SAFETY: the callback takes the context this frame owns for the call.
    unsafe {
        bpf_loop(
            count,
            callback as *const () as *mut c_void,
            ctx as *mut C as *mut c_void,
            0,
        );
    }
}

// ---- the css tree ----

/// Steps of the walk: each visits a memcg or climbs one level, so twice the records suffice.
const TREE_STEPS: u32 = 4 * MAX_KERNEL_MEMCGS;

#[repr(C)]
struct TreeWalk {
    root: u64,
    /// The css the walk is at.
    pos: u64,
    /// 1 once `pos`'s subtree is done: go to its next sibling or up.
    climbing: u64,
    written: u32,
    failed: u32,
}

/// Written out rather than with `#[raw_tracepoint]`, whose wrapper returns 0 whatever the
/// function returns: the agent needs the count.
#[unsafe(no_mangle)]
#[unsafe(link_section = "raw_tracepoint/kmemcg_kernel_memcgs")]
pub fn kernel_memcgs(_ctx: *mut c_void) -> u32 {
    if layout!(present) == 0 {
        return WALK_FAILED;
    }
    let Some(root) = memory_root() else {
        return WALK_FAILED;
    };
    let mut walk = TreeWalk {
        root,
        pos: root,
        climbing: 0,
        written: 0,
        failed: 0,
    };
    run_loop(TREE_STEPS, tree_step, &mut walk);
    if walk.failed != 0 {
        return WALK_FAILED;
    }
    walk.written
}

/// The memory controller's root css, from the running task's memcg up.
#[inline(always)]
fn memory_root() -> Option<u64> {
    // SAFETY: a helper without preconditions.
    let task = unsafe { bpf_get_current_task() };
    let cset: u64 = read(task + layout!(task_cgroups_offset) as u64)?;
    let mut css: u64 =
        read(cset + layout!(css_set_subsys_offset) as u64 + 8 * layout!(memory_cgrp_id) as u64)?;
    // Cgroup trees are seldom more than a few levels deep; 64 is far beyond any real one.
    for _ in 0..64 {
        let parent: u64 = read(css + layout!(css_parent_offset) as u64)?;
        if parent == 0 {
            return Some(css);
        }
        css = parent;
    }
    None
}

#[inline(never)]
extern "C" fn tree_step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: the caller's TreeWalk.
    let walk = unsafe { &mut *(ctx as *mut TreeWalk) };
    match step(walk) {
        Some(true) => 0,
        Some(false) => 1,
        None => {
            walk.failed = 1;
            1
        }
    }
}

/// One move of the pre-order walk; false when it is over.
#[inline(always)]
fn step(walk: &mut TreeWalk) -> Option<bool> {
    let pos = walk.pos;
    if walk.climbing == 0 {
        if walk.written >= MAX_KERNEL_MEMCGS {
            return Some(false);
        }
        record(walk.written, pos, pos != walk.root);
        walk.written += 1;
        let children = pos + layout!(css_children_offset) as u64;
        let first: u64 = read(children)?;
        if first != children && first != 0 {
            walk.pos = first - layout!(css_sibling_offset) as u64;
            return Some(true);
        }
        walk.climbing = 1;
        return Some(true);
    }
    if pos == walk.root {
        return Some(false);
    }
    let parent: u64 = read(pos + layout!(css_parent_offset) as u64)?;
    let next: u64 = read(pos + layout!(css_sibling_offset) as u64)?;
    if next != parent + layout!(css_children_offset) as u64 && next != 0 {
        walk.pos = next - layout!(css_sibling_offset) as u64;
        walk.climbing = 0;
    } else {
        walk.pos = parent;
    }
    Some(true)
}

#[inline(always)]
fn record(index: u32, css: u64, has_parent: bool) {
    let Some(out) = KERNEL_MEMCGS.get_ptr_mut(index) else {
        return;
    };
    // SAFETY: a value of an array map, written by this run only.
    let out = unsafe { &mut *out };
    let memcg = css - layout!(memcg_css_offset) as u64;
    out.memcg = memcg;
    out.parent = 0;
    if has_parent
        && let Some(parent) = read::<u64>(css + layout!(css_parent_offset) as u64)
        && parent != 0
    {
        out.parent = parent - layout!(memcg_css_offset) as u64;
    }
    out.css_flags = read(css + layout!(css_flags_offset) as u64).unwrap_or(0);
    out.css_id = read(css + layout!(css_id_offset) as u64).unwrap_or(0);
    out.usage_pages = read(memcg + layout!(memcg_usage_offset) as u64).unwrap_or(0);
    out.cgroup_id = 0;
    out.name[0] = 0;
    if let Some(cgroup) = read::<u64>(css + layout!(css_cgroup_offset) as u64)
        && let Some(kn) = read::<u64>(cgroup + layout!(cgroup_kn_offset) as u64)
    {
        out.cgroup_id = read(kn + layout!(kn_id_offset) as u64).unwrap_or(0);
        if let Some(name) = read::<u64>(kn + layout!(kn_name_offset) as u64) {
            // SAFETY: the fault-safe helper, into the record's buffer.
            let _ = unsafe { bpf_probe_read_kernel_str_bytes(name as *const u8, &mut out.name) };
        }
    }
    let vmstats: u64 = read(memcg + layout!(memcg_vmstats_offset) as u64).unwrap_or(0);
    for i in 0..MEMCG_STAT_ITEMS {
        out.stats[i] = STAT_UNKNOWN;
        if vmstats == 0 {
            continue;
        }
        let Some(slot) = state_index(layout!(stat_items)[i]) else {
            continue;
        };
        let at = vmstats + layout!(vmstats_state_offset) as u64 + 8 * slot as u64;
        if let Some(value) = read::<i64>(at) {
            out.stats[i] = value;
        }
    }
}

/// Where `memcg_vmstats::state[]` keeps the statistic `item`.
#[inline(always)]
fn state_index(item: u32) -> Option<u32> {
    if item == u32::MAX {
        return None;
    }
    let slot = if layout!(stats_direct) != 0 {
        item
    } else {
        let symbol = layout!(stats_index_symbol);
        if symbol == 0 {
            return None;
        }
        read::<u8>(symbol + item as u64)? as u32
    };
    (slot < layout!(state_len)).then_some(slot)
}

// ---- one memcg's LRU lists ----

#[repr(C)]
struct LruWalk {
    memcg: u64,
    nodes: u64,
    /// The list head being walked and the entry the walk is at.
    head: u64,
    pos: u64,
    /// Lists started so far, over all nodes (node-major).
    list: u64,
}

/// Arguments (memcg address, css id, nodes, most folios).
#[unsafe(no_mangle)]
#[unsafe(link_section = "raw_tracepoint/kmemcg_memcg_lru")]
pub fn memcg_lru(ctx: *mut c_void) -> u32 {
    let args = ctx as *const u64;
    // SAFETY: the four u64 arguments the agent passes (ctx_in of BPF_PROG_TEST_RUN).
    let (memcg, css_id, nodes, budget) =
        unsafe { (*args, *args.add(1), *args.add(2), *args.add(3)) };
    let Some(out) = MEMCG_LRU.get_ptr_mut(0) else {
        return LRU_GONE;
    };
    // SAFETY: the map's only value, written by this run only (the agent runs it on one thread).
    let out = unsafe { &mut *out };
    *out = unsafe { core::mem::zeroed() };
    out.memcg = memcg;
    // Freed and reused since the tree walk: not the memcg asked about.
    let css = memcg + layout!(memcg_css_offset) as u64;
    if layout!(present) == 0
        || read::<u32>(css + layout!(css_id_offset) as u64) != Some(css_id as u32)
    {
        return LRU_GONE;
    }
    let mut walk = LruWalk {
        memcg,
        nodes,
        head: 0,
        pos: 0,
        list: 0,
    };
    run_loop(budget as u32, lru_step, &mut walk);
    if walk.head != 0 {
        out.truncated = 1;
    }
    0
}

#[inline(never)]
extern "C" fn lru_step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: the caller's LruWalk.
    let walk = unsafe { &mut *(ctx as *mut LruWalk) };
    let Some(out) = MEMCG_LRU.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: the map's only value.
    let out = unsafe { &mut *out };
    // Past a list's end (or before the first): the next list, one list per step.
    if walk.head == 0 || walk.pos == walk.head || walk.pos == 0 {
        let Some(head) = list_head(walk) else {
            walk.head = 0;
            return 1;
        };
        walk.list += 1;
        walk.head = head;
        walk.pos = read::<u64>(head).unwrap_or(0);
        return 0;
    }
    let folio = walk.pos - layout!(folio_lru_offset) as u64;
    walk.pos = read::<u64>(walk.pos).unwrap_or(0);
    out.folios += 1;
    count_folio(out, folio);
    0
}

/// The list head numbered `walk.list` (classic lists, then multi-gen ones, node after node).
#[inline(always)]
fn list_head(walk: &LruWalk) -> Option<u64> {
    let per_node = (layout!(pn_lists) + layout!(pn_lrugen_lists)) as u64;
    if per_node == 0 {
        return None;
    }
    let node = walk.list / per_node;
    if node >= walk.nodes {
        return None;
    }
    let within = walk.list % per_node;
    let pn: u64 = read(walk.memcg + layout!(memcg_nodeinfo_offset) as u64 + 8 * node)?;
    if pn == 0 {
        return None;
    }
    Some(if within < layout!(pn_lists) as u64 {
        pn + layout!(pn_lists_offset) as u64 + 16 * within
    } else {
        pn + layout!(pn_lrugen_offset) as u64 + 16 * (within - layout!(pn_lists) as u64)
    })
}

#[inline(always)]
fn count_folio(out: &mut MemcgLru, folio: u64) {
    let flags: u64 = read(folio + layout!(folio_flags_offset) as u64).unwrap_or(0);
    let pages = if (flags >> layout!(pg_head_bit)) & 1 != 0 {
        let order: u8 = read(folio + layout!(folio_order_offset) as u64).unwrap_or(0);
        1u64 << (order & 31)
    } else {
        1
    };
    let mapping: u64 = read(folio + layout!(folio_mapping_offset) as u64).unwrap_or(0);
    if mapping == 0 {
        out.other_pages += pages;
        return;
    }
    // PAGE_MAPPING_ANON (and KSM's bit above it).
    if mapping & 3 != 0 {
        out.anon_pages += pages;
        return;
    }
    let shmem = (flags >> layout!(pg_swapbacked_bit)) & 1 != 0;
    if shmem {
        out.shmem_pages += pages;
    } else {
        out.file_pages += pages;
    }
    let Some(inode) = read::<u64>(mapping + layout!(mapping_host_offset) as u64) else {
        return;
    };
    note_file(out, inode, pages, shmem);
}

#[inline(always)]
fn note_file(out: &mut MemcgLru, inode: u64, pages: u64, shmem: bool) {
    let mut slot = MAX_LRU_FILES;
    for i in 0..MAX_LRU_FILES {
        if out.files[i].inode == inode {
            out.files[i].pages += pages;
            return;
        }
        if out.files[i].inode == 0 && slot == MAX_LRU_FILES {
            slot = i;
        }
    }
    if slot >= MAX_LRU_FILES {
        out.other_file_pages += pages;
        return;
    }
    out.files_used += 1;
    let file = &mut out.files[slot];
    file.inode = inode;
    file.pages = pages;
    file.shmem = shmem as u32;
    file.ino = read(inode + layout!(inode_ino_offset) as u64).unwrap_or(0);
    if let Some(sb) = read::<u64>(inode + layout!(inode_sb_offset) as u64) {
        file.dev = read(sb + layout!(sb_dev_offset) as u64).unwrap_or(0);
    }
    // The inode's first dentry, then its parents up to the filesystem's root.
    let Some(alias) = read::<u64>(inode + layout!(inode_dentry_offset) as u64) else {
        return;
    };
    if alias == 0 {
        return;
    }
    let mut dentry = alias - layout!(dentry_alias_offset) as u64;
    for depth in 0..MAX_PATH_DEPTH {
        let Some(name) = read::<u64>(dentry + layout!(dentry_name_offset) as u64) else {
            return;
        };
        // SAFETY: the fault-safe helper, into the record's buffer.
        if unsafe { bpf_probe_read_kernel_str_bytes(name as *const u8, &mut file.names[depth]) }
            .is_err()
        {
            return;
        }
        file.depth = depth as u32 + 1;
        let Some(parent) = read::<u64>(dentry + layout!(dentry_parent_offset) as u64) else {
            return;
        };
        if parent == dentry {
            // The root's own name ("/") is not a component.
            file.depth = depth as u32;
            file.complete = 1;
            return;
        }
        dentry = parent;
    }
}
