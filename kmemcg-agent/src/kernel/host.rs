//! Facts of the host read once at start and handed to who needs them: the cgroup mounts
//! (one reading of /proc/self/mountinfo), the page frame ranges of the memory zones
//! (/proc/zoneinfo) and the kernel's symbols (/proc/kallsyms).
use std::ops::Range;

use super::{
    cgroupfs::CgroupMounts,
    kallsyms::{self, KernelAddresses},
    slab_layout,
};
use crate::error::StartError;

pub struct HostFacts {
    pub cgroups: CgroupMounts,
    /// Page frame ranges of the memory zones that span any, or why they are unknown.
    pub pfn_ranges: Result<Vec<Range<u64>>, String>,
    /// The text of /proc/kallsyms (empty when it cannot be read): large, so the agent drops
    /// it once started.
    pub kallsyms: String,
    /// The kernel addresses kmemcg's corrections need, from [`Self::kallsyms`].
    pub addresses: KernelAddresses,
}

impl HostFacts {
    /// Reads the facts; fails only without a cgroup v2 mount.
    pub fn read() -> Result<Self, StartError> {
        let cgroups = CgroupMounts::read()?;
        let pfn_ranges = std::fs::read_to_string("/proc/zoneinfo")
            .map(|zoneinfo| slab_layout::pfn_ranges(&zoneinfo))
            .map_err(|e| format!("cannot read /proc/zoneinfo: {e}"));
        let (kallsyms, addresses) = kallsyms::read_with_addresses();
        Ok(Self {
            cgroups,
            pfn_ranges,
            kallsyms,
            addresses,
        })
    }
}
