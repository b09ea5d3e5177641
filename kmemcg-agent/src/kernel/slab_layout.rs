//! The layout the inventory and the sweep need to go from an object's address to its slab and
//! owner record: `struct page`, `struct slab`, `struct slabobj_ext`, `struct obj_cgroup` and
//! friends from BTF; the memory map's bases and size from /proc. A kernel without one of them
//! (no `obj_exts`: before 6.10, or without CONFIG_MEMCG) gets no inventory and no sweep, with
//! the reason in the status; tracing works as before.
use btf_rs::{Btf, Type};
use kmemcg_common::{SheafLayout, SlabLayout};

use super::{btf::enum_value, kallsyms::BaseSymbols};

/// Bases of the 4-level x86_64 memory map without randomization (Documentation/arch/x86/
/// x86_64/mm.rst); randomized kernels have variables holding them (see [`BaseSymbols`]).
const DEFAULT_VMEMMAP_BASE: u64 = 0xffff_ea00_0000_0000;
const DEFAULT_PAGE_OFFSET_BASE: u64 = 0xffff_8880_0000_0000;

/// Reads the layout from the running kernel (its BTF, where its base variables are and its
/// memory zones' page frames, from [`super::HostFacts`]), or says why it cannot.
pub fn from_running_kernel(
    btf: &Btf,
    bases: &Result<BaseSymbols, String>,
    pfn_ranges: &Result<Vec<std::ops::Range<u64>>, String>,
) -> Result<SlabLayout, String> {
    if !cfg!(target_arch = "x86_64") {
        return Err("the slab walk knows only the x86_64 memory map".into());
    }
    let mut layout = from_btf(btf)?;
    let symbols = bases.clone()?;
    layout.vmemmap_base_symbol = symbols.vmemmap_base;
    layout.page_offset_base_symbol = symbols.page_offset_base;
    layout.vmemmap_base = DEFAULT_VMEMMAP_BASE;
    layout.page_offset_base = DEFAULT_PAGE_OFFSET_BASE;
    layout.max_pfn = pfn_ranges
        .as_ref()
        .map_err(Clone::clone)?
        .iter()
        .map(|r| r.end)
        .max()
        .ok_or("no memory zone in /proc/zoneinfo")?;
    // SAFETY: sysconf has no preconditions.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    layout.page_shift = page_size.trailing_zeros();
    Ok(layout)
}

/// Page frame ranges of the memory zones that span any.
pub fn pfn_ranges(zoneinfo: &str) -> Vec<std::ops::Range<u64>> {
    let mut ranges = Vec::new();
    let mut spanned = None;
    for line in zoneinfo.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("Node"), _) => spanned = None,
            (Some("spanned"), Some(n)) => spanned = n.parse::<u64>().ok(),
            (Some("start_pfn:"), Some(n)) => {
                if let (Some(len), Ok(start)) = (spanned.take(), n.parse::<u64>())
                    && len > 0
                {
                    ranges.push(start..start + len);
                }
            }
            _ => {}
        }
    }
    ranges
}

/// `SLAB_KMALLOC` where it is a `#define` (6.1 to 6.9), not an enumerator.
const SLAB_KMALLOC_BEFORE_6_10: u32 = 0x1000;

pub fn from_btf(btf: &Btf) -> Result<SlabLayout, String> {
    let page = find_struct(btf, "page")?;
    let slab = find_struct(btf, "slab")?;
    let cache = find_struct(btf, "kmem_cache")?;
    let bytes = |st: &btf_rs::Struct, name: &str, field: &str| member_bytes(btf, st, name, field);
    let counters = bytes(&slab, "slab", "counters")?;
    let bitfield = |field: &str| -> Result<(u32, u32), String> {
        match find_member(btf, &slab, field) {
            Some((bit, Some(width))) if width > 0 && bit >= counters * 8 => {
                Ok((bit - counters * 8, width))
            }
            _ => Err(format!("struct slab has no bit field `{field}`")),
        }
    };
    let (inuse_shift, inuse_bits) = bitfield("inuse")?;
    let (objects_shift, objects_bits) = bitfield("objects")?;
    let field = |name: &str, field: &str| bytes(&find_struct(btf, name)?, name, field);
    let flags_count = enum_value(btf, "__NR_OBJEXTS_FLAGS")
        .or_else(|| enum_value(btf, "__NR_MEMCG_DATA_FLAGS"))
        .ok_or("the kernel's BTF has no obj_exts flags (__NR_OBJEXTS_FLAGS)")?;
    let random = find_member(btf, &cache, "random");
    let cpu_slabs = cpu_slab_layout(btf);
    if let Err(why) = &cpu_slabs {
        tracing::info!(why, "CPU freelists will not be checked by the sweep");
    }
    let percpu = percpu_locator_layout(btf).unwrap_or_else(|why| {
        tracing::info!(
            why,
            "CPU freelists and CPU sheaves will not be checked by the sweep"
        );
        [0; 5]
    });
    let cpu = cpu_slabs.clone().unwrap_or([0; 4]);
    // 7.3+: bits of their own in the counters word; 7.2: a stride beside it.
    let in_object = bitfield("obj_exts_in_object").map_or(0, |(shift, _)| shift);
    let needs_objcg = bitfield("obj_exts_needs_objcg").map_or(0, |(shift, _)| shift);
    let stride = find_member(btf, &slab, "stride").map_or(0, |(bits, _)| bits / 8);
    let owner = owner_records(btf, &slab)?;
    let slab_test = slab_page_test(btf, &page, &slab)?;
    let sheaves = sheaf_layout(btf).unwrap_or_else(|why| {
        tracing::info!(why, "slab sheaves will not be checked by the sweep");
        SheafLayout::default()
    });
    Ok(SlabLayout {
        sheaves,
        cpu_slabs: u32::from(cpu_slabs.is_ok()),
        slab_frozen_shift: cpu[0],
        kmem_cache_cpu_slab_offset: cpu[1],
        kmem_cache_cpu_freelist_offset: cpu[2],
        kmem_cache_cpu_slab_field_offset: cpu[3],
        task_se_offset: percpu[0],
        se_cfs_rq_offset: percpu[1],
        cfs_rq_rq_offset: percpu[2],
        runqueues_offset: percpu[3],
        this_cpu_off_offset: percpu[4],
        slab_obj_exts_in_object_shift: in_object,
        slab_obj_exts_needs_objcg_shift: needs_objcg,
        slab_stride_offset: stride,
        obj_exts_flags_mask: u64::from(flags_count.next_power_of_two() - 1),
        struct_page_size: page.size() as u32,
        // `compound_info` from 7.0: the head's address + 1, or a mask (see the sweep).
        page_compound_head_offset: bytes(&page, "page", "compound_head")
            .or_else(|_| bytes(&page, "page", "compound_info"))?,
        slab_cache_offset: bytes(&slab, "slab", "slab_cache")?,
        slab_freelist_offset: bytes(&slab, "slab", "freelist")?,
        slab_counters_offset: counters,
        slab_inuse_shift: inuse_shift,
        slab_inuse_bits: inuse_bits,
        slab_objects_shift: objects_shift,
        slab_objects_bits: objects_bits,
        slab_page_type_offset: slab_test.page_type_offset,
        pgty_slab: slab_test.pgty_slab,
        pg_slab_mask: slab_test.pg_slab_mask,
        page_flags_offset: slab_test.page_flags_offset,
        // Absent before large kmalloc pages had a type; 0 then matches no typed page.
        pgty_large_kmalloc: enum_value(btf, "PGTY_large_kmalloc").unwrap_or(0),
        slab_obj_exts_offset: owner.slab_offset,
        obj_ext_size: owner.entry_size,
        obj_ext_objcg_offset: owner.objcg_offset,
        objcg_memcg_offset: field("obj_cgroup", "memcg")?,
        memcg_css_offset: field("mem_cgroup", "css")?,
        css_cgroup_offset: field("cgroup_subsys_state", "cgroup")?,
        kmem_cache_offset_offset: bytes(&cache, "kmem_cache", "offset")?,
        kmem_cache_random_offset: random.map_or(0, |(bits, _)| bits / 8),
        kmem_cache_red_left_pad_offset: bytes(&cache, "kmem_cache", "red_left_pad")?,
        freelist_hardened: u32::from(random.is_some()),
        slab_kmalloc: enum_value(btf, "_SLAB_KMALLOC")
            .map_or(SLAB_KMALLOC_BEFORE_6_10, |bit| 1 << bit),
        ..SlabLayout::default()
    })
}

/// Where a slab keeps its objects' owner records: the vector's offset in `struct slab`, and
/// each entry's size and `objcg` offset.
struct OwnerRecords {
    slab_offset: u32,
    entry_size: u32,
    objcg_offset: u32,
}

/// `slab->obj_exts`, a vector of `struct slabobj_ext` (6.10+), or `slab->memcg_data`, a vector
/// of `struct obj_cgroup *` (before).
fn owner_records(btf: &Btf, slab: &btf_rs::Struct) -> Result<OwnerRecords, String> {
    if let Some((bits, _)) = find_member(btf, slab, "obj_exts") {
        let ext = find_struct(btf, "slabobj_ext")?;
        return Ok(OwnerRecords {
            slab_offset: bits / 8,
            entry_size: ext.size() as u32,
            // `_objcg` from 7.0, in a union with the allocation-profiling tag.
            objcg_offset: member_bytes(btf, &ext, "slabobj_ext", "objcg")
                .or_else(|_| member_bytes(btf, &ext, "slabobj_ext", "_objcg"))?,
        });
    }
    let (bits, _) = find_member(btf, slab, "memcg_data")
        .ok_or("struct slab has neither obj_exts nor memcg_data (a kernel without CONFIG_MEMCG)")?;
    Ok(OwnerRecords {
        slab_offset: bits / 8,
        entry_size: 8,
        objcg_offset: 0,
    })
}

/// How a slab page is told from others.
struct SlabPageTest {
    page_type_offset: u32,
    pgty_slab: u32,
    page_flags_offset: u32,
    pg_slab_mask: u64,
}

/// By its page type (`PGTY_slab` in `slab->__page_type`, 6.12+), or by the `PG_slab` page flag
/// (before 6.10; 6.10 and 6.11 encode page types otherwise, and are not supported).
fn slab_page_test(
    btf: &Btf,
    page: &btf_rs::Struct,
    slab: &btf_rs::Struct,
) -> Result<SlabPageTest, String> {
    if let Some(pgty_slab) = enum_value(btf, "PGTY_slab") {
        return Ok(SlabPageTest {
            page_type_offset: member_bytes(btf, slab, "slab", "__page_type")?,
            pgty_slab,
            page_flags_offset: 0,
            pg_slab_mask: 0,
        });
    }
    let pg_slab = enum_value(btf, "PG_slab")
        .ok_or("the kernel's BTF has neither PGTY_slab nor PG_slab: unknown slab page layout")?;
    Ok(SlabPageTest {
        // Read for percpu chunk pages, which have no type (-1) on every kernel.
        page_type_offset: member_bytes(btf, page, "page", "page_type")?,
        pgty_slab: 0,
        page_flags_offset: member_bytes(btf, page, "page", "flags")?,
        pg_slab_mask: 1 << pg_slab,
    })
}

/// What the sweep needs to look at CPU freelists: the slab's `frozen` bit and `struct
/// kmem_cache::cpu_slab`, `struct kmem_cache_cpu::{freelist, slab}`. An error where caches
/// have no CPU slabs (Linux 7.0+).
fn cpu_slab_layout(btf: &Btf) -> Result<[u32; 4], String> {
    let offset = |name: &str, field: &str| -> Result<u32, String> {
        find_member(btf, &find_struct(btf, name)?, field)
            .map(|(bits, _)| bits / 8)
            .ok_or_else(|| format!("struct {name} has no field `{field}`"))
    };
    let slab = find_struct(btf, "slab")?;
    let counters = offset("slab", "counters")?;
    let frozen = match find_member(btf, &slab, "frozen") {
        Some((bit, Some(1))) if bit >= counters * 8 => bit - counters * 8,
        _ => return Err("struct slab has no `frozen` bit".into()),
    };
    Ok([
        frozen,
        offset("kmem_cache", "cpu_slab")?,
        offset("kmem_cache_cpu", "freelist")?,
        offset("kmem_cache_cpu", "slab")?,
    ])
}

/// What finds a CPU's percpu area from the task running on it (CPU freelists and sheaves are
/// percpu): `task_struct::se`, `sched_entity::cfs_rq`, `cfs_rq::rq`, and the percpu variables
/// `runqueues` and `this_cpu_off`. An error where one is missing (no `sched_entity::cfs_rq`
/// without CONFIG_FAIR_GROUP_SCHED).
fn percpu_locator_layout(btf: &Btf) -> Result<[u32; 5], String> {
    let offset = |name: &str, field: &str| -> Result<u32, String> {
        find_member(btf, &find_struct(btf, name)?, field)
            .map(|(bits, _)| bits / 8)
            .ok_or_else(|| format!("struct {name} has no field `{field}`"))
    };
    Ok([
        offset("task_struct", "se")?,
        offset("sched_entity", "cfs_rq")?,
        offset("cfs_rq", "rq")?,
        percpu_variable_offset(btf, "runqueues")?,
        percpu_variable_offset(btf, "this_cpu_off")?,
    ])
}

/// Where caches with sheaves keep their free objects (see [`SheafLayout`]); an error on
/// kernels without sheaves (before 6.18) or with a layout this kmemcg does not know.
pub fn sheaf_layout(btf: &Btf) -> Result<SheafLayout, String> {
    let cache = find_struct(btf, "kmem_cache")?;
    let offset = |name: &str, field: &str| -> Result<u32, String> {
        find_member(btf, &find_struct(btf, name)?, field)
            .map(|(bits, _)| bits / 8)
            .ok_or_else(|| format!("struct {name} has no field `{field}`"))
    };
    let cpu_sheaves = offset("kmem_cache", "cpu_sheaves")
        .map_err(|_| "this kernel has no slab sheaves (struct kmem_cache has no cpu_sheaves)")?;
    let array = |field: &str| {
        let member = cache
            .members
            .iter()
            .find(|m| btf.resolve_name(*m).is_ok_and(|n| n == field))?;
        match btf.resolve_chained_type(member) {
            Ok(Type::Array(array)) => Some((member.bit_offset() / 8, array.len() as u32)),
            _ => None,
        }
    };
    // Pointers to `struct kmem_cache_node`, which holds the barn (6.18), or `{barn, node}`
    // pairs (7.0+).
    let (node_offset, node_entries, node_stride, barn_offset, barn_in_entry) =
        if let Some((at, entries)) = array("node") {
            (at, entries, 8, offset("kmem_cache_node", "barn")?, 0)
        } else if let Some((at, entries)) = array("per_node") {
            let pair = find_struct(btf, "kmem_cache_per_node_ptrs")?;
            let barn = offset("kmem_cache_per_node_ptrs", "barn")?;
            (at, entries, pair.size() as u32, barn, 1)
        } else {
            return Err("struct kmem_cache has neither a `node` nor a `per_node` array".into());
        };
    Ok(SheafLayout {
        kmem_cache_cpu_sheaves_offset: cpu_sheaves,
        kmem_cache_sheaf_capacity_offset: offset("kmem_cache", "sheaf_capacity")?,
        kmem_cache_node_offset: node_offset,
        kmem_cache_node_entries: node_entries,
        kmem_cache_node_stride: node_stride,
        kmem_cache_node_barn_offset: barn_offset,
        barn_in_node_entry: barn_in_entry,
        pcs_main_offset: offset("slub_percpu_sheaves", "main")?,
        pcs_spare_offset: offset("slub_percpu_sheaves", "spare")?,
        pcs_rcu_free_offset: offset("slub_percpu_sheaves", "rcu_free")?,
        barn_sheaves_full_offset: offset("node_barn", "sheaves_full")?,
        sheaf_barn_list_offset: offset("slab_sheaf", "barn_list")?,
        sheaf_cache_offset: offset("slab_sheaf", "cache")?,
        sheaf_size_offset: offset("slab_sheaf", "size")?,
        sheaf_objects_offset: offset("slab_sheaf", "objects")?,
        present: 1,
    })
}

/// Offset of a percpu variable in the kernel's percpu section (`.data..percpu`).
fn percpu_variable_offset(btf: &Btf, name: &str) -> Result<u32, String> {
    let sections = btf
        .resolve_types_by_name(".data..percpu")
        .map_err(|_| "the kernel's BTF has no percpu section".to_string())?;
    for section in sections {
        let Type::Datasec(section) = section else {
            continue;
        };
        for variable in &section.variables {
            if let Ok(Type::Var(var)) = btf.resolve_chained_type(variable)
                && btf.resolve_name(&var).is_ok_and(|n| n == name)
            {
                return Ok(variable.offset());
            }
        }
    }
    Err(format!("no percpu variable {name} in the kernel's BTF"))
}

pub(super) fn find_struct(btf: &Btf, name: &str) -> Result<btf_rs::Struct, String> {
    super::btf::struct_named(btf, name)
        .ok_or_else(|| format!("struct {name} is not in the kernel's BTF"))
}

/// Byte offset of a member of `struct name`, or which one is missing.
pub(super) fn member_bytes(
    btf: &Btf,
    st: &btf_rs::Struct,
    name: &str,
    field: &str,
) -> Result<u32, String> {
    find_member(btf, st, field)
        .map(|(bits, _)| bits / 8)
        .ok_or_else(|| format!("struct {name} has no field `{field}`"))
}

/// (bit offset, bit-field width) of a member, looking into anonymous structs and unions.
pub(super) fn find_member(
    btf: &Btf,
    st: &btf_rs::Struct,
    field: &str,
) -> Option<(u32, Option<u32>)> {
    for member in &st.members {
        let name = btf.resolve_name(member).unwrap_or_default();
        if name == field {
            return Some((member.bit_offset(), member.bitfield_size()));
        }
        if name.is_empty() {
            let inner = match btf.resolve_chained_type(member) {
                Ok(Type::Struct(s)) | Ok(Type::Union(s)) => s,
                _ => continue,
            };
            if let Some((bits, width)) = find_member(btf, &inner, field) {
                return Some((member.bit_offset() + bits, width));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn zone_ranges_from_zoneinfo() {
        let zoneinfo = "Node 0, zone      DMA\n  pages free 1\n        spanned  4095\n  \
                        start_pfn:           1\nNode 0, zone    DMA32\n        spanned  1044480\n  \
                        start_pfn:           4096\nNode 0, zone  Movable\n        spanned  0\n";
        assert_eq!(pfn_ranges(zoneinfo), vec![1..4096, 4096..1_048_576]);
    }

    #[test]
    fn reads_the_running_kernels_slab_layout() {
        if !Path::new(super::super::btf::VMLINUX_BTF).exists() {
            return;
        }
        let btf = Btf::from_file(Path::new(super::super::btf::VMLINUX_BTF)).unwrap();
        let Ok(layout) = from_btf(&btf) else {
            return; // a kernel without obj_exts: nothing to check
        };
        assert!(layout.struct_page_size >= 64);
        assert_eq!(layout.slab_inuse_bits + layout.slab_objects_bits, 31);
        assert!(layout.obj_ext_size >= 8);
        assert!(layout.obj_exts_flags_mask.count_ones() >= 1);
        assert!(layout.slab_obj_exts_offset > layout.slab_cache_offset);
        if layout.cpu_slabs != 0 {
            assert_eq!(layout.slab_frozen_shift, 31);
        }
        if layout.this_cpu_off_offset != 0 {
            assert!(layout.runqueues_offset != layout.this_cpu_off_offset);
        }
        let sheaves = layout.sheaves;
        if sheaves.present != 0 {
            // Pointers of one struct, in declaration order; objects after the header.
            assert_eq!(sheaves.pcs_spare_offset, sheaves.pcs_main_offset + 8);
            assert_eq!(sheaves.pcs_rcu_free_offset, sheaves.pcs_spare_offset + 8);
            assert!(sheaves.sheaf_objects_offset > sheaves.sheaf_size_offset);
            assert!(sheaves.sheaf_size_offset > sheaves.sheaf_cache_offset);
            assert!(sheaves.kmem_cache_node_entries >= 1);
            assert!(sheaves.kmem_cache_node_offset > sheaves.kmem_cache_cpu_sheaves_offset);
            assert!(sheaves.kmem_cache_node_stride >= 8);
        } else {
            assert!(sheaf_layout(&btf).is_err());
        }
    }

    /// The layouts of other kernels, from their BTF files (`<version>.btf`) in
    /// `$KMEMCG_OTHER_BTF_DIR` (the kernel matrix's images carry theirs; skipped without it).
    #[test]
    fn reads_other_kernels_slab_layouts() {
        let Some(dir) = std::env::var_os("KMEMCG_OTHER_BTF_DIR") else {
            return;
        };
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "btf") {
                continue;
            }
            let btf = Btf::from_file(&path).unwrap();
            let layout = from_btf(&btf).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            eprintln!("{}: {layout:?}", path.display());
            assert!(layout.obj_ext_size >= 8, "{}", path.display());
            assert!(layout.pgty_slab != 0 || layout.pg_slab_mask != 0);
            let percpu = super::super::percpu_layout::from_btf(&btf);
            assert!(percpu.is_ok(), "{}: {percpu:?}", path.display());
            let kernel = super::super::btf::KernelLayout::from_btf(&btf);
            assert!(kernel.is_ok(), "{}: {kernel:?}", path.display());
        }
    }
}
