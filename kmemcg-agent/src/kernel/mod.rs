//! Facts about the running kernel that kmemcg checks before loading anything: privileges,
//! BTF layout, the cgroup mounts; [`HostFacts`] reads the host's once at start.
pub mod btf;
pub mod caps;
pub mod cgroupfs;
mod host;
pub mod kallsyms;
pub mod memcg_layout;
pub mod percpu_layout;
pub mod slab_layout;
pub mod vmalloc_layout;

pub use host::HostFacts;

/// The kernel release (`uname -r`).
pub fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Number of possible CPUs: what percpu allocations are multiplied by.
pub fn possible_cpus() -> usize {
    aya::util::nr_cpus().unwrap_or(1)
}
