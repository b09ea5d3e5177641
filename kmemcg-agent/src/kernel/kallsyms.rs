//! Kernel symbols from /proc/kallsyms, whose addresses read as 0 to a process without
//! CAP_SYSLOG (kptr_restrict).
use std::ops::Range;

/// The text of /proc/kallsyms (empty when it cannot be read).
pub fn read() -> String {
    std::fs::read_to_string("/proc/kallsyms").unwrap_or_default()
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
                        0000000000000000 D vmemmap_base\nffffffff8162e9a0 T __pfx_alloc_slab_obj_exts\n\
                        ffffffff8162e9b0 T alloc_slab_obj_exts\nffffffff8162eac0 t free_slab_obj_exts\n\
                        ffffffffc0001000 t helper [some_module]\n";

    #[test]
    fn addresses() {
        assert_eq!(
            address(TEXT, "page_offset_base"),
            Some(0xffff_ffff_82a1_b2c0)
        );
        assert_eq!(address(TEXT, "vmemmap_base"), Some(0));
        assert_eq!(address(TEXT, "max_pfn"), None);
    }

    #[test]
    fn a_function_ends_where_the_next_symbol_starts() {
        assert_eq!(
            function_range(TEXT, "alloc_slab_obj_exts"),
            Some(0xffff_ffff_8162_e9b0..0xffff_ffff_8162_eac0)
        );
        assert_eq!(function_range(TEXT, "vmemmap_base"), None);
        assert_eq!(function_range(TEXT, "absent"), None);
    }
}
