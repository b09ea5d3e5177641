//! Kernel addresses from /proc/kallsyms. The kernel shows them only to processes with
//! CAP_SYSLOG (with `kernel.kptr_restrict` at 0 or 1; at 2 to none); to others every address
//! reads as 0, while the names stay visible.
use std::ops::Range;

/// Functions that allocate the slab owner-record vectors (`slab->obj_exts`; before Linux 6.10
/// `memcg_alloc_slab_cgroups`).
const OWNER_VECTOR_ALLOCATORS: [&str; 2] = ["alloc_slab_obj_exts", "memcg_alloc_slab_cgroups"];

/// The kernel addresses kmemcg's corrections need, each with the reason when it is unknown.
/// [`read_with_addresses`] is the one place they come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelAddresses {
    /// The code of the function that allocates slab owner-record vectors: allocations made
    /// from it are the slab's, not the cgroup's whose allocation needed a new slab.
    pub owner_vector_allocator: Result<Range<u64>, String>,
    /// Where the variables holding the memory map's bases are (the inventory and the sweep
    /// go from an object's address to its slab with them).
    pub memory_map_bases: Result<BaseSymbols, String>,
}

/// Addresses of the kernel variables `vmemmap_base` and `page_offset_base`; 0 for one the
/// kernel does not have (no memory map randomization: the base is fixed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BaseSymbols {
    pub vmemmap_base: u64,
    pub page_offset_base: u64,
}

/// The text of /proc/kallsyms (empty when it cannot be read).
pub fn read() -> String {
    std::fs::read_to_string("/proc/kallsyms").unwrap_or_default()
}

/// Reads /proc/kallsyms once: its text (empty when it cannot be read) and every address
/// kmemcg needs.
pub fn read_with_addresses() -> (String, KernelAddresses) {
    match std::fs::read_to_string("/proc/kallsyms") {
        Ok(text) => {
            let kptr_restrict = std::fs::read_to_string("/proc/sys/kernel/kptr_restrict")
                .ok()
                .and_then(|v| v.trim().parse().ok());
            let addresses = addresses_in(&text, kptr_restrict);
            (text, addresses)
        }
        Err(e) => {
            let why = format!("cannot read /proc/kallsyms: {e}");
            let addresses = KernelAddresses {
                owner_vector_allocator: Err(why.clone()),
                memory_map_bases: Err(why),
            };
            (String::new(), addresses)
        }
    }
}

/// [`read_with_addresses`] from the text of /proc/kallsyms and the `kernel.kptr_restrict` setting.
pub fn addresses_in(kallsyms: &str, kptr_restrict: Option<u32>) -> KernelAddresses {
    let hidden = hidden_reason(kallsyms, kptr_restrict);
    let owner_vector_allocator = match OWNER_VECTOR_ALLOCATORS
        .into_iter()
        .find(|name| address(kallsyms, name).is_some())
    {
        None => Err(format!(
            "this kernel has no {} symbol",
            OWNER_VECTOR_ALLOCATORS.join(" or ")
        )),
        Some(_) if hidden.is_some() => Err(hidden.clone().unwrap_or_default()),
        Some(name) => function_range(kallsyms, name)
            .ok_or_else(|| format!("no symbol follows {name} in /proc/kallsyms")),
    };
    let bases = (
        address(kallsyms, "vmemmap_base"),
        address(kallsyms, "page_offset_base"),
    );
    let memory_map_bases = match (bases, hidden) {
        ((None, None), _) => Ok(BaseSymbols::default()),
        (_, Some(why)) => Err(format!("this kernel randomizes its memory map, and {why}")),
        ((vmemmap, page_offset), None) => Ok(BaseSymbols {
            vmemmap_base: vmemmap.unwrap_or(0),
            page_offset_base: page_offset.unwrap_or(0),
        }),
    };
    KernelAddresses {
        owner_vector_allocator,
        memory_map_bases,
    }
}

/// Why the addresses read as 0, when they do.
fn hidden_reason(kallsyms: &str, kptr_restrict: Option<u32>) -> Option<String> {
    if symbols(kallsyms).any(|(address, _)| address != 0) {
        return None;
    }
    Some(match kptr_restrict {
        Some(2) => "kernel.kptr_restrict = 2 hides kernel addresses from every process: set \
                    it to 1 (sysctl kernel.kptr_restrict=1) and give kmemcg CAP_SYSLOG"
            .into(),
        _ => "/proc/kallsyms hides kernel addresses from this process: give kmemcg \
              CAP_SYSLOG (the shipped systemd unit and DaemonSet do, docs/capabilities.md)"
            .into(),
    })
}

/// The address of a symbol (0 when hidden), None when absent.
pub fn address(kallsyms: &str, name: &str) -> Option<u64> {
    symbols(kallsyms).find_map(|(address, symbol)| (symbol == name).then_some(address))
}

/// Where a kernel function's code lies: from its address to the next symbol's. None when
/// absent or hidden.
pub fn function_range(kallsyms: &str, name: &str) -> Option<Range<u64>> {
    let start = address(kallsyms, name).filter(|&a| a != 0)?;
    let end = symbols(kallsyms)
        .map(|(address, _)| address)
        .filter(|&a| a > start)
        .min()?;
    Some(start..end)
}

/// Every address of symbols named `name` (static functions may share a name).
pub fn named<'a>(kallsyms: &'a str, name: &'a str) -> impl Iterator<Item = u64> + 'a {
    symbols(kallsyms).filter_map(move |(address, symbol)| (symbol == name).then_some(address))
}

fn symbols(kallsyms: &str) -> impl Iterator<Item = (u64, &str)> {
    kallsyms.lines().filter_map(|line| {
        let mut fields = line.split_whitespace();
        let address = fields.next()?;
        let _kind = fields.next()?;
        Some((
            u64::from_str_radix(address, 16).unwrap_or(0),
            fields.next()?,
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "ffffffff81000000 T _text\nffffffff82a1b2c0 D page_offset_base\n\
                        ffffffff82a1b2c8 D vmemmap_base\nffffffff8162e9a0 T __pfx_alloc_slab_obj_exts\n\
                        ffffffff8162e9b0 T alloc_slab_obj_exts\nffffffff8162eac0 t free_slab_obj_exts\n\
                        ffffffffc0001000 t helper [some_module]\n";

    /// TEXT as a process without CAP_SYSLOG reads it.
    fn hidden() -> String {
        TEXT.lines()
            .map(|l| format!("0000000000000000{}\n", &l[16..]))
            .collect()
    }

    #[test]
    fn addresses() {
        assert_eq!(
            address(TEXT, "page_offset_base"),
            Some(0xffff_ffff_82a1_b2c0)
        );
        assert_eq!(address(&hidden(), "vmemmap_base"), Some(0));
        assert_eq!(address(TEXT, "max_pfn"), None);
    }

    #[test]
    fn a_function_ends_where_the_next_symbol_starts() {
        assert_eq!(
            function_range(TEXT, "alloc_slab_obj_exts"),
            Some(0xffff_ffff_8162_e9b0..0xffff_ffff_8162_eac0)
        );
        assert_eq!(function_range(&hidden(), "alloc_slab_obj_exts"), None);
        assert_eq!(function_range(TEXT, "absent"), None);
    }

    #[test]
    fn visible_addresses_give_every_correction() {
        let found = addresses_in(TEXT, Some(1));
        assert_eq!(
            found.owner_vector_allocator,
            Ok(0xffff_ffff_8162_e9b0..0xffff_ffff_8162_eac0)
        );
        assert_eq!(
            found.memory_map_bases,
            Ok(BaseSymbols {
                vmemmap_base: 0xffff_ffff_82a1_b2c8,
                page_offset_base: 0xffff_ffff_82a1_b2c0,
            })
        );
    }

    #[test]
    fn hidden_addresses_say_which_privilege_is_missing() {
        let found = addresses_in(&hidden(), Some(1));
        let why = found.owner_vector_allocator.unwrap_err();
        assert!(why.contains("CAP_SYSLOG"), "{why}");
        let why = found.memory_map_bases.unwrap_err();
        assert!(
            why.contains("randomizes") && why.contains("CAP_SYSLOG"),
            "{why}"
        );
        let why = addresses_in(&hidden(), Some(2))
            .owner_vector_allocator
            .unwrap_err();
        assert!(why.contains("kptr_restrict = 2"), "{why}");
    }

    /// Fixed bases need no address: a kernel without the variables does not randomize.
    #[test]
    fn a_kernel_without_base_variables_has_fixed_bases() {
        let fixed: String = hidden()
            .lines()
            .filter(|l| !l.ends_with("_base"))
            .map(|l| format!("{l}\n"))
            .collect();
        let found = addresses_in(&fixed, Some(0));
        assert_eq!(found.memory_map_bases, Ok(BaseSymbols::default()));
        assert!(found.owner_vector_allocator.is_err());
        let old = "ffffffff8162e9b0 T memcg_alloc_slab_cgroups\nffffffff8162eac0 t next\n";
        assert_eq!(
            addresses_in(old, None).owner_vector_allocator,
            Ok(0xffff_ffff_8162_e9b0..0xffff_ffff_8162_eac0)
        );
        let why = addresses_in("ffffffff81000000 T _text\n", None)
            .owner_vector_allocator
            .unwrap_err();
        assert!(why.contains("no alloc_slab_obj_exts"), "{why}");
    }
}
