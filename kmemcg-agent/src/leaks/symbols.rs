//! Call sites as people read them: `function+0xoffset` and module, from /proc/kallsyms.
use std::{
    ops::Range,
    time::{Duration, Instant},
};

/// Kernel text symbols, sorted by address.
#[derive(Debug, Default)]
pub struct Symbols {
    /// (address, name, module).
    text: Vec<(u64, String, Option<String>)>,
    /// Every address read as zero: kallsyms hides them from this process.
    hidden: bool,
    read_at: Option<Instant>,
}

/// Modules come and go: the table is read again after this long.
const MAX_AGE: Duration = Duration::from_secs(60);

/// What a call site shows when kallsyms hides addresses.
pub const HIDDEN: &str = "/proc/kallsyms shows zero addresses to the agent (kptr_restrict): call \
                          sites are shown as addresses, not names; run the agent as root or \
                          with CAP_SYSLOG to name them";

impl Symbols {
    pub fn parse(kallsyms: &str) -> Self {
        let mut text = Vec::new();
        let mut any = false;
        for line in kallsyms.lines() {
            let mut fields = line.split_whitespace();
            let (Some(address), Some(kind), Some(name)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            if !matches!(kind, "t" | "T") {
                continue;
            }
            any = true;
            let Ok(address) = u64::from_str_radix(address, 16) else {
                continue;
            };
            if address == 0 {
                continue;
            }
            let module = fields
                .next()
                .map(|m| m.trim_start_matches('[').trim_end_matches(']').to_string());
            text.push((address, name.to_string(), module));
        }
        text.sort_by_key(|(address, ..)| *address);
        Self {
            hidden: any && text.is_empty(),
            text,
            read_at: Some(Instant::now()),
        }
    }

    /// Reads /proc/kallsyms again when the table is missing or old.
    pub fn refresh(&mut self) {
        if self.read_at.is_none_or(|at| at.elapsed() > MAX_AGE) {
            *self = Self::parse(&crate::kernel::kallsyms::read());
        }
    }

    pub fn hidden(&self) -> bool {
        self.hidden
    }

    /// `(function+0xoffset, module)`; the address in hex when no symbol covers it.
    pub fn name(&self, address: u64) -> (String, Option<String>) {
        let at = self.text.partition_point(|(a, ..)| *a <= address);
        match at.checked_sub(1).and_then(|i| self.text.get(i)) {
            Some((start, name, module)) => {
                (format!("{name}+{:#x}", address - start), module.clone())
            }
            None => (format!("{address:#x}"), None),
        }
    }
}

/// Where the BPF memory allocator refills its caches (`alloc_bulk` and the `__alloc` it
/// calls, when not inlined): kmalloc calls from there are the leak table's own elements.
pub fn bpf_allocator_refills(kallsyms: &str) -> Result<Range<u64>, String> {
    use crate::kernel::kallsyms::{function_range, named};
    let Some(bulk) = function_range(kallsyms, "alloc_bulk") else {
        return Err(
            if kallsyms
                .lines()
                .next()
                .is_some_and(|l| l.starts_with("0000000000000000"))
            {
                "/proc/kallsyms hides addresses from the agent: leak recording needs them to tell \
             the BPF allocator's own allocations apart (they would fill the object table) and \
             to name call sites; run the agent as root or with CAP_SYSLOG"
                    .into()
            } else {
                "this kernel has no BPF memory allocator (alloc_bulk in /proc/kallsyms), which \
             leak recording needs (Linux 6.1 or later)"
                    .into()
            },
        );
    };
    // `__alloc` is memalloc.c's when it sits just before alloc_bulk.
    let start = named(kallsyms, "__alloc")
        .filter(|&a| a < bulk.start && bulk.start - a < 0x4000)
        .min()
        .unwrap_or(bulk.start);
    Ok(start..bulk.end)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "ffffffff81000000 T _text\nffffffff82a1b2c0 D page_offset_base\n\
                        ffffffff8162e9b0 T alloc_empty_file\nffffffff8162eac0 t free_file\n\
                        ffffffffc0001000 t ext4_alloc_inode\t[ext4]\n";

    #[test]
    fn names_a_call_site_by_the_function_before_it() {
        let symbols = Symbols::parse(TEXT);
        assert!(!symbols.hidden());
        assert_eq!(
            symbols.name(0xffff_ffff_8162_e9f5),
            ("alloc_empty_file+0x45".into(), None)
        );
        assert_eq!(
            symbols.name(0xffff_ffff_c000_1010),
            ("ext4_alloc_inode+0x10".into(), Some("ext4".into()))
        );
        // Data symbols are not functions.
        assert_eq!(symbols.name(0xffff_ffff_82a1_b2c8).0, "free_file+0x13ec808");
        assert_eq!(symbols.name(0x1000), ("0x1000".into(), None));
    }

    #[test]
    fn the_bpf_allocators_refills_span_alloc_bulk_and_its_alloc() {
        let kallsyms = "ffffffff810093e0 t __alloc\nffffffff815593e0 t __alloc\n\
                        ffffffff81559490 t unit_alloc\nffffffff81559b40 t alloc_bulk\n\
                        ffffffff81559e20 t bpf_mem_refill\n";
        assert_eq!(
            bpf_allocator_refills(kallsyms),
            Ok(0xffff_ffff_8155_93e0..0xffff_ffff_8155_9e20)
        );
        assert!(bpf_allocator_refills("0000000000000000 t alloc_bulk\n").is_err());
    }

    #[test]
    fn zero_addresses_mean_hidden() {
        let symbols =
            Symbols::parse("0000000000000000 T _text\n0000000000000000 T alloc_empty_file\n");
        assert!(symbols.hidden());
        assert_eq!(symbols.name(0xffff_ffff_8162_e9f5).0, "0xffffffff8162e9f5");
    }
}
