//! The contract of the programs that find the memory cgroups the kernel keeps after their
//! removal ("dying" or "zombie" memcgs): `kernel_memcgs` walks the memory controller's css
//! tree, where a removed memcg stays on its parent's children list until the kernel frees
//! it, and `memcg_lru` walks one memcg's LRU lists to say what still charges it (which files).

/// Program that walks every memory cgroup from the memory hierarchy's root into
/// [`KERNEL_MEMCGS`]. No arguments; returns the records written, or [`WALK_FAILED`].
pub const KERNEL_MEMCGS_PROGRAM: &str = "kernel_memcgs";
/// Program that walks the LRU lists of one memcg into [`MEMCG_LRU`]. Arguments (memcg
/// address, its css id as the walk read it, node count, most folios to look at); returns 0,
/// or [`LRU_GONE`] when the memcg is no longer the one asked for.
pub const MEMCG_LRU_PROGRAM: &str = "memcg_lru";
pub const WALK_FAILED: u32 = u32::MAX;
pub const LRU_GONE: u32 = 1;
/// Array map of [`KernelMemcg`], filled from index 0 by each walk.
pub const KERNEL_MEMCGS: &str = "KERNEL_MEMCGS";
pub const MAX_KERNEL_MEMCGS: u32 = 8192;
/// Array map of one [`MemcgLru`].
pub const MEMCG_LRU: &str = "MEMCG_LRU";
/// Name of the load-time global holding the [`MemcgLayout`].
pub const MEMCG_LAYOUT: &str = "MEMCG_LAYOUT";

/// The statistics read from `memcg->vmstats->state[]`, by position in
/// [`KernelMemcg::stats`] and [`MemcgLayout::stat_items`]: the kernel's `NR_FILE_PAGES`,
/// `NR_ANON_MAPPED`, `NR_SHMEM` (pages), `NR_SLAB_RECLAIMABLE_B`, `NR_SLAB_UNRECLAIMABLE_B`,
/// `MEMCG_PERCPU_B` (bytes) and `MEMCG_KMEM` (pages).
pub const MEMCG_STAT_ITEMS: usize = 7;
pub const STAT_FILE: usize = 0;
pub const STAT_ANON: usize = 1;
pub const STAT_SHMEM: usize = 2;
pub const STAT_SLAB_RECLAIMABLE: usize = 3;
pub const STAT_SLAB_UNRECLAIMABLE: usize = 4;
pub const STAT_PERCPU: usize = 5;
pub const STAT_KERNEL: usize = 6;
/// A statistic the walk could not read (no index for it on this kernel).
pub const STAT_UNKNOWN: i64 = i64::MIN;

pub const MEMCG_NAME_LEN: usize = 64;

/// One memory cgroup as the walk found it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelMemcg {
    /// Address of its `struct mem_cgroup`, and of its parent's (0 for the root).
    pub memcg: u64,
    pub parent: u64,
    /// Id of its cgroup (the kernfs node id: the directory's inode number).
    pub cgroup_id: u64,
    /// `memcg->memory.usage`: pages charged to it and its descendants.
    pub usage_pages: u64,
    pub stats: [i64; MEMCG_STAT_ITEMS],
    /// `css.flags` (`CSS_ONLINE`, `CSS_DYING`, ...) and `css.id`.
    pub css_flags: u32,
    pub css_id: u32,
    /// Its directory's name, NUL terminated.
    pub name: [u8; MEMCG_NAME_LEN],
}

impl Default for KernelMemcg {
    fn default() -> Self {
        Self {
            memcg: 0,
            parent: 0,
            cgroup_id: 0,
            usage_pages: 0,
            stats: [STAT_UNKNOWN; MEMCG_STAT_ITEMS],
            css_flags: 0,
            css_id: 0,
            name: [0; MEMCG_NAME_LEN],
        }
    }
}

/// Files whose pages [`MEMCG_LRU_PROGRAM`] names, at most.
pub const MAX_LRU_FILES: usize = 4;
/// Path components kept of each file, from the file up, and their length.
pub const MAX_PATH_DEPTH: usize = 16;
pub const PATH_COMPONENT_LEN: usize = 48;

/// A file with pages on a memcg's LRU lists.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LruFile {
    /// Address of its `struct inode` (0: slot unused).
    pub inode: u64,
    pub ino: u64,
    /// Pages of it seen.
    pub pages: u64,
    /// `sb->s_dev` (the kernel's encoding: major << 20 | minor).
    pub dev: u32,
    /// 1 when its pages are shmem/tmpfs (swap-backed).
    pub shmem: u32,
    /// Components of `names` filled (the file's name first), and 1 when the walk up reached
    /// the filesystem's root.
    pub depth: u32,
    pub complete: u32,
    pub names: [[u8; PATH_COMPONENT_LEN]; MAX_PATH_DEPTH],
}

/// What one memcg's LRU lists hold (value of [`MEMCG_LRU`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemcgLru {
    pub memcg: u64,
    /// Pages on its LRU lists: of files, anonymous, shmem/tmpfs, and of none of these
    /// (truncated, no mapping).
    pub file_pages: u64,
    pub anon_pages: u64,
    pub shmem_pages: u64,
    pub other_pages: u64,
    /// Folios looked at; 1 when the walk stopped at its budget before the lists' ends.
    pub folios: u64,
    pub truncated: u32,
    pub files_used: u32,
    /// Pages of files beyond the first [`MAX_LRU_FILES`].
    pub other_file_pages: u64,
    pub files: [LruFile; MAX_LRU_FILES],
}

/// Where things are in this kernel's memory cgroups, from BTF at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemcgLayout {
    /// Address of `mem_cgroup_stats_index` (0: absent or hidden): `state[]`'s index of each
    /// statistic, one byte per item (0xff: not kept), from Linux 6.8.
    pub stats_index_symbol: u64,
    /// 1 when the layout is usable.
    pub present: u32,
    /// 1 when `state[]` is indexed by the item itself (its length is `MEMCG_NR_STAT`).
    pub stats_direct: u32,
    /// Entries of `memcg_vmstats::state`.
    pub state_len: u32,
    /// The items' enum values, by `STAT_*` position.
    pub stat_items: [u32; MEMCG_STAT_ITEMS],
    /// `task_struct::cgroups`, `css_set::subsys`, `memory_cgrp_id`.
    pub task_cgroups_offset: u32,
    pub css_set_subsys_offset: u32,
    pub memory_cgrp_id: u32,
    /// `struct cgroup_subsys_state`: `cgroup`, `children`, `sibling`, `parent`, `flags`, `id`.
    pub css_cgroup_offset: u32,
    pub css_children_offset: u32,
    pub css_sibling_offset: u32,
    pub css_parent_offset: u32,
    pub css_flags_offset: u32,
    pub css_id_offset: u32,
    /// `cgroup::kn`, `kernfs_node::{name, id}`.
    pub cgroup_kn_offset: u32,
    pub kn_name_offset: u32,
    pub kn_id_offset: u32,
    /// `mem_cgroup::{css, memory.usage, vmstats, nodeinfo}`, `memcg_vmstats::state`.
    pub memcg_css_offset: u32,
    pub memcg_usage_offset: u32,
    pub memcg_vmstats_offset: u32,
    pub memcg_nodeinfo_offset: u32,
    pub vmstats_state_offset: u32,
    /// The LRU list heads of `mem_cgroup_per_node::lruvec`: `lists[]` and, with multi-gen
    /// LRU, `lrugen.folios[]`, as offsets in `mem_cgroup_per_node` and counts.
    pub pn_lists_offset: u32,
    pub pn_lists: u32,
    pub pn_lrugen_offset: u32,
    pub pn_lrugen_lists: u32,
    /// `struct folio`: `lru`, `flags`, `mapping`, and the byte holding a large folio's order.
    pub folio_lru_offset: u32,
    pub folio_flags_offset: u32,
    pub folio_mapping_offset: u32,
    pub folio_order_offset: u32,
    pub pg_head_bit: u32,
    pub pg_swapbacked_bit: u32,
    /// `address_space::host`, `inode::{i_ino, i_sb, i_dentry}`, `super_block::s_dev`,
    /// `dentry::{d_alias, d_name.name, d_parent}`.
    pub mapping_host_offset: u32,
    pub inode_ino_offset: u32,
    pub inode_sb_offset: u32,
    pub inode_dentry_offset: u32,
    pub sb_dev_offset: u32,
    pub dentry_alias_offset: u32,
    pub dentry_name_offset: u32,
    pub dentry_parent_offset: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<KernelMemcg>() == 4 * 8 + 7 * 8 + 8 + 64);
const _: () = assert!(core::mem::size_of::<LruFile>() == 3 * 8 + 4 * 4 + 16 * 48);
const _: () =
    assert!(core::mem::size_of::<MemcgLru>() == 6 * 8 + 8 + 8 + 4 * (3 * 8 + 16 + 16 * 48));
const _: () = assert!(core::mem::size_of::<MemcgLayout>() == 8 + 46 * 4);

#[cfg(feature = "user")]
mod user {
    use super::*;

    // SAFETY: plain #[repr(C)] integers and byte arrays without padding (sizes asserted above).
    unsafe impl aya::Pod for KernelMemcg {}
    unsafe impl aya::Pod for MemcgLru {}
    unsafe impl aya::Pod for MemcgLayout {}
}
