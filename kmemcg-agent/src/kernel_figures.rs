//! The kernel's own accounting of a cgroup's kernel memory, read beside kmemcg's so that
//! either can be checked against the other: cgroup v2 `memory.stat` where the memory
//! controller is on v2, else the v1 memory cgroup at the same path
//! (`memory.kmem.usage_in_bytes`, `memory.kmem.tcp.usage_in_bytes`), as on hybrid hosts.
use std::{
    collections::HashMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use crate::{
    api::{CgroupUsage, KernelMemory},
    kernel::cgroupfs::CgroupMounts,
};

/// Where the figures are read from on this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelFigures {
    /// cgroup v2 with the memory controller: `<mount><path>/memory.stat`.
    V2(PathBuf),
    /// A v1 memory hierarchy: `<mount><path>/memory.kmem.*`.
    V1(PathBuf),
    /// No memory controller: no figures.
    None,
}

pub const SOURCE_V2: &str = "memory.stat";
pub const SOURCE_V1: &str = "memory.kmem.usage_in_bytes";

impl KernelFigures {
    /// Finds the memory controller: on the v2 hierarchy, else a v1 mount.
    pub fn detect(cgroups: &CgroupMounts) -> Self {
        let cgroup2 = &cgroups.cgroup2;
        let controllers = std::fs::read_to_string(cgroup2.join("cgroup.controllers"));
        if controllers.is_ok_and(|c| c.split_whitespace().any(|c| c == "memory")) {
            return KernelFigures::V2(cgroup2.to_path_buf());
        }
        match cgroups.first_memcg_v1() {
            Some(mount) => KernelFigures::V1(mount.to_path_buf()),
            None => KernelFigures::None,
        }
    }

    pub fn source(&self) -> Option<&'static str> {
        match self {
            KernelFigures::V2(_) => Some(SOURCE_V2),
            KernelFigures::V1(_) => Some(SOURCE_V1),
            KernelFigures::None => None,
        }
    }

    /// The kernel's figures for the cgroup at `path` (`/a/b`), without drift; None where the
    /// kernel keeps none (no such memory cgroup).
    pub fn read(&self, path: &str) -> Option<KernelMemory> {
        let rel = path.trim_start_matches('/');
        match self {
            KernelFigures::V2(mount) => {
                let text = std::fs::read_to_string(mount.join(rel).join("memory.stat")).ok()?;
                Some(parse_memory_stat(&text))
            }
            KernelFigures::V1(mount) => {
                let dir = mount.join(rel);
                let read = |file: &str| -> Option<u64> {
                    std::fs::read_to_string(dir.join(file))
                        .ok()?
                        .trim()
                        .parse()
                        .ok()
                };
                Some(KernelMemory {
                    source: SOURCE_V1.into(),
                    kernel_bytes: Some(read("memory.kmem.usage_in_bytes")?),
                    sock_bytes: read("memory.kmem.tcp.usage_in_bytes"),
                    ..Default::default()
                })
            }
            KernelFigures::None => None,
        }
    }
}

/// The kernel-memory lines of a v2 `memory.stat` (bytes); a line this kernel lacks stays null.
pub fn parse_memory_stat(text: &str) -> KernelMemory {
    let mut m = KernelMemory {
        source: SOURCE_V2.into(),
        ..Default::default()
    };
    for line in text.lines() {
        let Some((key, value)) = line.split_once(' ') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<u64>() else {
            continue;
        };
        let field = match key {
            "kernel" => &mut m.kernel_bytes,
            "slab" => &mut m.slab_bytes,
            "percpu" => &mut m.percpu_bytes,
            "kernel_stack" => &mut m.kernel_stack_bytes,
            "pagetables" => &mut m.pagetables_bytes,
            "vmalloc" => &mut m.vmalloc_bytes,
            "sock" => &mut m.sock_bytes,
            _ => continue,
        };
        *field = Some(value);
    }
    m
}

/// What the kernel charges for what kmemcg accounts: its slab and percpu (v2), else its whole
/// kmem counter (v1, which also counts stacks and page tables).
pub fn charged_slab_percpu(kernel: &KernelMemory) -> Option<u64> {
    match (kernel.slab_bytes, kernel.percpu_bytes) {
        (Some(slab), Some(percpu)) => Some(slab + percpu),
        (Some(slab), None) => Some(slab),
        _ => kernel.kernel_bytes,
    }
}

/// kmemcg's recursive accounted bytes minus [`charged_slab_percpu`].
pub fn drift(accounted: u64, kernel: &KernelMemory) -> Option<i64> {
    Some(accounted as i64 - charged_slab_percpu(kernel)? as i64)
}

/// Reading a figure costs a few file reads: each cgroup's is refreshed at most this often,
/// and at most [`REFRESH_BUDGET`] per sample, oldest first.
const MAX_AGE: Duration = Duration::from_secs(5);
const REFRESH_BUDGET: usize = 256;

/// Figures of the listed cgroups, refreshed a budget at a time.
pub struct KernelFiguresCache {
    figures: KernelFigures,
    read: HashMap<String, (Instant, Option<KernelMemory>)>,
}

impl KernelFiguresCache {
    pub fn new(figures: KernelFigures) -> Self {
        Self {
            figures,
            read: HashMap::new(),
        }
    }

    pub fn source(&self) -> Option<&'static str> {
        self.figures.source()
    }

    /// Sets each cgroup's `kernel` figure (with its drift); returns the host-wide drift (the
    /// top-level cgroups' sum).
    pub fn annotate(&mut self, cgroups: &mut [CgroupUsage], root_id: u64) -> Option<i64> {
        if self.figures == KernelFigures::None {
            return None;
        }
        let now = Instant::now();
        let mut stale: Vec<(Instant, usize)> = cgroups
            .iter()
            .enumerate()
            .filter_map(|(i, c)| match self.read.get(&c.path) {
                Some((at, _)) if now.duration_since(*at) < MAX_AGE => None,
                Some((at, _)) => Some((*at, i)),
                None => Some((now - MAX_AGE, i)),
            })
            .collect();
        stale.sort();
        for (_, i) in stale.into_iter().take(REFRESH_BUDGET) {
            let path = &cgroups[i].path;
            self.read
                .insert(path.clone(), (now, self.figures.read(path)));
        }
        self.read
            .retain(|path, _| cgroups.iter().any(|c| &c.path == path));
        let mut host_drift = None;
        for c in cgroups.iter_mut() {
            c.kernel = self
                .read
                .get(&c.path)
                .and_then(|(_, k)| k.clone())
                .map(|mut k| {
                    k.drift_bytes = drift(c.total_accounted_bytes, &k);
                    Box::new(k)
                });
            if c.parent == Some(root_id)
                && let Some(d) = c.kernel.as_ref().and_then(|k| k.drift_bytes)
            {
                *host_drift.get_or_insert(0) += d;
            }
        }
        host_drift
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cgroup v2 `memory.stat` of Linux 6.18 (abridged).
    const MEMORY_STAT: &str = "anon 1048576\nfile 4096\nkernel 3276800\nkernel_stack 65536\n\
        pagetables 131072\nsec_pagetables 0\npercpu 20480\nsock 8192\nvmalloc 0\nshmem 0\n\
        slab_reclaimable 2097152\nslab_unreclaimable 917504\nslab 3014656\n";

    #[test]
    fn reads_the_kernel_lines_of_memory_stat() {
        let m = parse_memory_stat(MEMORY_STAT);
        assert_eq!(m.source, "memory.stat");
        assert_eq!(m.kernel_bytes, Some(3_276_800));
        assert_eq!(m.slab_bytes, Some(3_014_656));
        assert_eq!(m.percpu_bytes, Some(20_480));
        assert_eq!(m.kernel_stack_bytes, Some(65_536));
        assert_eq!(m.pagetables_bytes, Some(131_072));
        assert_eq!(m.vmalloc_bytes, Some(0));
        assert_eq!(m.sock_bytes, Some(8192));
        assert_eq!(drift(3_000_000, &m), Some(3_000_000 - 3_035_136));
    }

    #[test]
    fn missing_lines_stay_null_never_zero() {
        // Before 5.x kernels had no percpu/vmalloc lines.
        let m = parse_memory_stat("anon 1\nslab 4096\nsock 0\n");
        assert_eq!(m.kernel_bytes, None);
        assert_eq!(m.percpu_bytes, None);
        assert_eq!(m.slab_bytes, Some(4096));
        assert_eq!(drift(5000, &m), Some(904));
        let v1 = KernelMemory {
            source: SOURCE_V1.into(),
            kernel_bytes: Some(10_000),
            ..Default::default()
        };
        assert_eq!(drift(9_000, &v1), Some(-1000));
        assert_eq!(drift(1, &KernelMemory::default()), None);
    }
}
