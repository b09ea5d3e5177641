//! The layout the inventory and the sweep need to go from an object's address to its slab and
//! owner record: `struct page`, `struct slab`, `struct slabobj_ext`, `struct obj_cgroup` and
//! friends from BTF; the memory map's bases and size from /proc. A kernel without one of them
//! (no `obj_exts`: before 6.10, or without CONFIG_MEMCG) gets no inventory and no sweep, with
//! the reason in the status; tracing works as before.
use btf_rs::{Btf, Type};
use kmemcg_common::{SheafLayout, SlabLayout};

use super::btf::enum_value;

/// Bases of the 4-level x86_64 memory map without randomization (Documentation/arch/x86/
/// x86_64/mm.rst); randomized kernels have variables holding them, found in /proc/kallsyms.
const DEFAULT_VMEMMAP_BASE: u64 = 0xffff_ea00_0000_0000;
const DEFAULT_PAGE_OFFSET_BASE: u64 = 0xffff_8880_0000_0000;

/// Reads the layout from the running kernel (its BTF given), or says why it cannot.
pub fn from_running_kernel(btf: &Btf) -> Result<SlabLayout, String> {
    if !cfg!(target_arch = "x86_64") {
        return Err("the slab walk knows only the x86_64 memory map".into());
    }
    let mut layout = from_btf(btf)?;
    let symbols = super::kallsyms::read();
    let (vmemmap_symbol, page_offset_symbol) = (
        super::kallsyms::address(&symbols, "vmemmap_base"),
        super::kallsyms::address(&symbols, "page_offset_base"),
    );
    match (vmemmap_symbol, page_offset_symbol) {
        (Some(0), _) | (_, Some(0)) => {
            return Err(
                "this kernel randomizes its memory map and /proc/kallsyms hides the \
                        addresses of vmemmap_base and page_offset_base (give kmemcg \
                        CAP_SYSLOG or run it as root)"
                    .into(),
            );
        }
        (vmemmap, page_offset) => {
            layout.vmemmap_base_symbol = vmemmap.unwrap_or(0);
            layout.page_offset_base_symbol = page_offset.unwrap_or(0);
        }
    }
    layout.vmemmap_base = DEFAULT_VMEMMAP_BASE;
    layout.page_offset_base = DEFAULT_PAGE_OFFSET_BASE;
    let zoneinfo = std::fs::read_to_string("/proc/zoneinfo")
        .map_err(|e| format!("cannot read /proc/zoneinfo: {e}"))?;
    layout.max_pfn = pfn_ranges(&zoneinfo)
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
    let cpu = cpu_freelist_layout(btf).unwrap_or_else(|why| {
        tracing::info!(why, "CPU freelists will not be checked by the sweep");
        [0; 9]
    });
    let owner = owner_records(btf, &slab)?;
    let slab_test = slab_page_test(btf, &page, &slab)?;
    let sheaves = sheaf_layout(btf).unwrap_or_else(|why| {
        tracing::info!(why, "slab sheaves will not be checked by the sweep");
        SheafLayout::default()
    });
    Ok(SlabLayout {
        sheaves,
        slab_frozen_shift: cpu[0],
        kmem_cache_cpu_slab_offset: cpu[1],
        kmem_cache_cpu_freelist_offset: cpu[2],
        kmem_cache_cpu_slab_field_offset: cpu[3],
        task_se_offset: cpu[4],
        se_cfs_rq_offset: cpu[5],
        cfs_rq_rq_offset: cpu[6],
        runqueues_offset: cpu[7],
        this_cpu_off_offset: cpu[8],
        obj_exts_flags_mask: u64::from(flags_count.next_power_of_two() - 1),
        struct_page_size: page.size() as u32,
        page_compound_head_offset: bytes(&page, "page", "compound_head")?,
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
        // SLAB_KMALLOC arrived in 6.8: before, kmalloc objects the inventory finds are named
        // by their cache (kmalloc-cg-192), not by their bucket as the kmalloc hook names them.
        slab_kmalloc: enum_value(btf, "_SLAB_KMALLOC").map_or(0, |bit| 1 << bit),
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
            objcg_offset: member_bytes(btf, &ext, "slabobj_ext", "objcg")?,
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

/// What the sweep needs to look at CPU freelists, all zero when this kernel lacks a piece
/// (e.g. no `struct kmem_cache_cpu` on kernels without CPU slabs, no `sched_entity::cfs_rq`
/// without CONFIG_FAIR_GROUP_SCHED).
fn cpu_freelist_layout(btf: &Btf) -> Result<[u32; 9], String> {
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
    let node = cache
        .members
        .iter()
        .find(|m| btf.resolve_name(*m).is_ok_and(|n| n == "node"))
        .ok_or("struct kmem_cache has no field `node`")?;
    let node_entries = match btf.resolve_chained_type(node) {
        Ok(Type::Array(array)) => array.len() as u32,
        _ => return Err("kmem_cache::node is not an array".into()),
    };
    Ok(SheafLayout {
        kmem_cache_cpu_sheaves_offset: cpu_sheaves,
        kmem_cache_sheaf_capacity_offset: offset("kmem_cache", "sheaf_capacity")?,
        kmem_cache_node_offset: node.bit_offset() / 8,
        kmem_cache_node_entries: node_entries,
        pcs_main_offset: offset("slub_percpu_sheaves", "main")?,
        pcs_spare_offset: offset("slub_percpu_sheaves", "spare")?,
        pcs_rcu_free_offset: offset("slub_percpu_sheaves", "rcu_free")?,
        kmem_cache_node_barn_offset: offset("kmem_cache_node", "barn")?,
        barn_sheaves_full_offset: offset("node_barn", "sheaves_full")?,
        sheaf_barn_list_offset: offset("slab_sheaf", "barn_list")?,
        sheaf_cache_offset: offset("slab_sheaf", "cache")?,
        sheaf_size_offset: offset("slab_sheaf", "size")?,
        sheaf_objects_offset: offset("slab_sheaf", "objects")?,
        _pad: 0,
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
        if layout.this_cpu_off_offset != 0 {
            assert_eq!(layout.slab_frozen_shift, 31);
            assert!(layout.runqueues_offset != layout.this_cpu_off_offset);
        }
        let sheaves = layout.sheaves;
        if sheaves.kmem_cache_cpu_sheaves_offset != 0 {
            // Pointers of one struct, in declaration order; objects after the header.
            assert_eq!(sheaves.pcs_spare_offset, sheaves.pcs_main_offset + 8);
            assert_eq!(sheaves.pcs_rcu_free_offset, sheaves.pcs_spare_offset + 8);
            assert!(sheaves.sheaf_objects_offset > sheaves.sheaf_size_offset);
            assert!(sheaves.sheaf_size_offset > sheaves.sheaf_cache_offset);
            assert!(sheaves.kmem_cache_node_entries >= 1);
            assert!(sheaves.kmem_cache_node_offset > sheaves.kmem_cache_cpu_sheaves_offset);
        } else {
            assert!(sheaf_layout(&btf).is_err());
        }
    }
}
