//! Where the kernel keeps a memory cgroup's tree links, page counter, statistics and LRU
//! lists, from BTF (and `mem_cgroup_stats_index` from /proc/kallsyms), for the walk of the
//! memcgs the kernel keeps ([`kmemcg_common::zombies`]); and what one memcg's own structures
//! weigh.
use std::collections::HashMap;

use btf_rs::{Btf, Type};
use fallible_iterator::FallibleIterator;
use kmemcg_common::zombies::{MEMCG_STAT_ITEMS, MemcgLayout};

use super::slab_layout::{find_member, find_struct, member_bytes};

/// The kernel's enumerators read, `STAT_*` items first (in their order).
const STAT_ENUMERATORS: [&str; MEMCG_STAT_ITEMS] = [
    "NR_FILE_PAGES",
    "NR_ANON_MAPPED",
    "NR_SHMEM",
    "NR_SLAB_RECLAIMABLE_B",
    "NR_SLAB_UNRECLAIMABLE_B",
    "MEMCG_PERCPU_B",
    "MEMCG_KMEM",
];
const OTHER_ENUMERATORS: [&str; 6] = [
    "MEMCG_NR_STAT",
    "memory_cgrp_id",
    "PG_head",
    "PG_swapbacked",
    "CSS_ONLINE",
    "CSS_DYING",
];

/// The layout, and the css flags that tell a memcg's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemcgFacts {
    pub layout: MemcgLayout,
    pub css_online: u32,
    pub css_dying: u32,
    /// Why `state[]` cannot be read on this kernel (None: it can).
    pub stats_unavailable: Option<&'static str>,
    /// Entries of `mem_cgroup::nodeinfo` (possible NUMA nodes).
    pub nodes: u64,
    /// [`own_bytes_estimate`] for this host's CPUs and nodes.
    pub own_bytes: Option<u64>,
    /// The kernel moves a removed memcg's LRU pages to its parent (`lru_reparent_memcg`,
    /// Linux 7.x): page cache and tmpfs files no longer keep it.
    pub lru_reparented: bool,
}

pub fn from_btf(btf: &Btf, kallsyms: &str, cpus: u64, nodes: u64) -> Result<MemcgFacts, String> {
    let enums = enumerators(
        btf,
        &[&STAT_ENUMERATORS[..], &OTHER_ENUMERATORS[..]].concat(),
    );
    let value = |name: &str| {
        enums
            .get(name)
            .copied()
            .ok_or_else(|| format!("enumerator {name} is not in the kernel's BTF"))
    };
    let st = |name: &str| find_struct(btf, name);
    let bytes = |s: &btf_rs::Struct, name: &str, field: &str| member_bytes(btf, s, name, field);
    let (memcg, css, cgroup, kn) = (
        st("mem_cgroup")?,
        st("cgroup_subsys_state")?,
        st("cgroup")?,
        st("kernfs_node")?,
    );
    let (vmstats, pn, lruvec, folio) = (
        st("memcg_vmstats")?,
        st("mem_cgroup_per_node")?,
        st("lruvec")?,
        st("folio")?,
    );
    let (mapping, inode, sb, dentry) = (
        st("address_space")?,
        st("inode")?,
        st("super_block")?,
        st("dentry")?,
    );
    let state_len = array_elements(btf, &vmstats, "state")
        .ok_or("struct memcg_vmstats has no state[] array")?;
    let nr_stat = value("MEMCG_NR_STAT")?;
    let stats_index_symbol = super::kallsyms::address(kallsyms, "mem_cgroup_stats_index")
        .filter(|&a| a != 0)
        .unwrap_or(0);
    let stats_direct = state_len == nr_stat;
    let stats_unavailable = (!stats_direct && stats_index_symbol == 0).then_some(
        "the statistics' index (mem_cgroup_stats_index) is not in /proc/kallsyms \
         (a kernel without CONFIG_KALLSYMS_ALL): slab, percpu and kernel bytes are unknown; \
         file, anon and shmem come from the LRU lists",
    );
    let mut stat_items = [u32::MAX; MEMCG_STAT_ITEMS];
    for (item, name) in stat_items.iter_mut().zip(STAT_ENUMERATORS) {
        *item = enums.get(name).copied().unwrap_or(u32::MAX);
    }
    let lruvec_at = bytes(&pn, "mem_cgroup_per_node", "lruvec")?;
    let (pn_lrugen_offset, pn_lrugen_lists) = match find_member(btf, &lruvec, "lrugen") {
        Some((bits, _)) => {
            let lrugen = match member_type(btf, &lruvec, "lrugen") {
                Some(Type::Struct(s)) => s,
                _ => return Err("struct lruvec's lrugen is not a struct".into()),
            };
            (
                lruvec_at + bits / 8 + bytes(&lrugen, "lru_gen_folio", "folios")?,
                array_elements(btf, &lrugen, "folios").unwrap_or(0),
            )
        }
        None => (0, 0),
    };
    let folio_order_offset =
        bytes(&folio, "folio", "_folio_order").or_else(|_| bytes(&folio, "folio", "_flags_1"))?;
    let dentry_alias_offset = bytes(&dentry, "dentry", "d_alias").or_else(|_| {
        let union = match member_type(btf, &dentry, "d_u") {
            Some(Type::Union(u)) => u,
            _ => return Err("struct dentry has no d_alias".to_string()),
        };
        Ok(bytes(&dentry, "dentry", "d_u")? + bytes(&union, "dentry::d_u", "d_alias")?)
    })?;
    let qstr = st("qstr")?;
    let page_counter = st("page_counter")?;
    let css_set = st("css_set")?;
    let task = st("task_struct")?;
    let layout = MemcgLayout {
        stats_index_symbol,
        present: 1,
        stats_direct: stats_direct as u32,
        state_len,
        stat_items,
        task_cgroups_offset: bytes(&task, "task_struct", "cgroups")?,
        css_set_subsys_offset: bytes(&css_set, "css_set", "subsys")?,
        memory_cgrp_id: value("memory_cgrp_id")?,
        css_cgroup_offset: bytes(&css, "cgroup_subsys_state", "cgroup")?,
        css_children_offset: bytes(&css, "cgroup_subsys_state", "children")?,
        css_sibling_offset: bytes(&css, "cgroup_subsys_state", "sibling")?,
        css_parent_offset: bytes(&css, "cgroup_subsys_state", "parent")?,
        css_flags_offset: bytes(&css, "cgroup_subsys_state", "flags")?,
        css_id_offset: bytes(&css, "cgroup_subsys_state", "id")?,
        cgroup_kn_offset: bytes(&cgroup, "cgroup", "kn")?,
        kn_name_offset: bytes(&kn, "kernfs_node", "name")?,
        kn_id_offset: bytes(&kn, "kernfs_node", "id")?,
        memcg_css_offset: bytes(&memcg, "mem_cgroup", "css")?,
        memcg_usage_offset: bytes(&memcg, "mem_cgroup", "memory")?
            + bytes(&page_counter, "page_counter", "usage")?,
        memcg_vmstats_offset: bytes(&memcg, "mem_cgroup", "vmstats")?,
        memcg_nodeinfo_offset: bytes(&memcg, "mem_cgroup", "nodeinfo")?,
        vmstats_state_offset: bytes(&vmstats, "memcg_vmstats", "state")?,
        pn_lists_offset: lruvec_at + bytes(&lruvec, "lruvec", "lists")?,
        pn_lists: array_elements(btf, &lruvec, "lists").ok_or("struct lruvec has no lists[]")?,
        pn_lrugen_offset,
        pn_lrugen_lists,
        folio_lru_offset: bytes(&folio, "folio", "lru")?,
        folio_flags_offset: bytes(&folio, "folio", "flags")?,
        folio_mapping_offset: bytes(&folio, "folio", "mapping")?,
        folio_order_offset,
        pg_head_bit: value("PG_head")?,
        pg_swapbacked_bit: value("PG_swapbacked")?,
        mapping_host_offset: bytes(&mapping, "address_space", "host")?,
        inode_ino_offset: bytes(&inode, "inode", "i_ino")?,
        inode_sb_offset: bytes(&inode, "inode", "i_sb")?,
        inode_dentry_offset: bytes(&inode, "inode", "i_dentry")?,
        sb_dev_offset: bytes(&sb, "super_block", "s_dev")?,
        dentry_alias_offset,
        dentry_name_offset: bytes(&dentry, "dentry", "d_name")? + bytes(&qstr, "qstr", "name")?,
        dentry_parent_offset: bytes(&dentry, "dentry", "d_parent")?,
        _pad: 0,
    };
    Ok(MemcgFacts {
        layout,
        css_online: value("CSS_ONLINE")?,
        css_dying: value("CSS_DYING")?,
        stats_unavailable,
        nodes,
        own_bytes: own_bytes_estimate(btf, cpus, nodes),
        lru_reparented: super::kallsyms::address(kallsyms, "lru_reparent_memcg").is_some(),
    })
}

/// What one memcg's own structures weigh on this kernel: `struct mem_cgroup` and its
/// `memcg_vmstats`, one `mem_cgroup_per_node` (with `lruvec_stats`) per node, and per possible
/// CPU one `memcg_vmstats_percpu` plus one `lruvec_stats_percpu` per node. Struct sizes from
/// BTF; allocator rounding and the cgroup's own structures are left out.
pub fn own_bytes_estimate(btf: &Btf, cpus: u64, nodes: u64) -> Option<u64> {
    let size = |name: &str| super::btf::struct_named(btf, name).map(|s| s.size() as u64);
    let fixed = size("mem_cgroup")? + size("memcg_vmstats")?;
    let per_node = size("mem_cgroup_per_node")? + size("lruvec_stats").unwrap_or(0);
    let per_cpu = size("memcg_vmstats_percpu")? + nodes * size("lruvec_stats_percpu").unwrap_or(0);
    Some(fixed + nodes * per_node + cpus * per_cpu)
}

/// Values of the named enumerators, in one pass over the kernel's types.
fn enumerators(btf: &Btf, names: &[&str]) -> HashMap<String, u32> {
    let mut found = HashMap::new();
    let mut types = btf.type_iter();
    while let Ok(Some(ty)) = types.next() {
        if let Type::Enum(e) = ty {
            for member in &e.members {
                if let Ok(name) = btf.resolve_name(member)
                    && names.contains(&name.as_str())
                {
                    found.entry(name).or_insert(member.val());
                }
            }
        }
    }
    found
}

/// The type of a member (looking into anonymous structs and unions).
fn member_type(btf: &Btf, st: &btf_rs::Struct, field: &str) -> Option<Type> {
    for member in &st.members {
        let name = btf.resolve_name(member).unwrap_or_default();
        let ty = btf.resolve_chained_type(member).ok()?;
        if name == field {
            return Some(ty);
        }
        if name.is_empty()
            && let Type::Struct(inner) | Type::Union(inner) = &ty
            && let Some(found) = member_type(btf, inner, field)
        {
            return Some(found);
        }
    }
    None
}

/// Elements of an array member, all dimensions multiplied.
fn array_elements(btf: &Btf, st: &btf_rs::Struct, field: &str) -> Option<u32> {
    let mut ty = member_type(btf, st, field)?;
    let mut elements = 1u32;
    let mut arrays = 0;
    while let Type::Array(array) = ty {
        elements = elements.checked_mul(array.len() as u32)?;
        ty = btf.resolve_chained_type(&array).ok()?;
        arrays += 1;
    }
    (arrays > 0).then_some(elements)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn reads_the_running_kernels_memcg_layout() {
        let path = Path::new(super::super::btf::VMLINUX_BTF);
        if !path.exists() {
            return;
        }
        let btf = Btf::from_file(path).unwrap();
        let facts = from_btf(&btf, "", 2, 1).expect("a kernel with memory cgroups");
        let layout = facts.layout;
        assert_eq!(layout.pn_lists, 5, "LRU_INACTIVE_ANON .. LRU_UNEVICTABLE");
        assert!(layout.state_len >= 7);
        assert_eq!(facts.css_online, 2);
        assert!(layout.css_sibling_offset != layout.css_children_offset);
        assert!(layout.stat_items.iter().all(|&i| i != u32::MAX));
        let own = facts.own_bytes.unwrap();
        assert!(own > 1024, "{own}");
    }
}

/// Possible NUMA nodes (`nr_node_ids`): one more than the highest in
/// /sys/devices/system/node/possible, 1 when the file is absent (no NUMA).
pub fn possible_nodes() -> u64 {
    std::fs::read_to_string("/sys/devices/system/node/possible")
        .ok()
        .and_then(|text| highest_in_list(&text))
        .map_or(1, |highest| highest + 1)
}

/// The highest number of a kernel list such as `0-3,8`.
fn highest_in_list(text: &str) -> Option<u64> {
    text.trim()
        .split(',')
        .filter_map(|part| part.rsplit('-').next()?.trim().parse().ok())
        .max()
}

#[cfg(test)]
mod list_tests {
    #[test]
    fn highest_node_of_a_list() {
        assert_eq!(super::highest_in_list("0\n"), Some(0));
        assert_eq!(super::highest_in_list("0-3,8\n"), Some(8));
        assert_eq!(super::highest_in_list(""), None);
    }
}
