//! `kmemcg_kernel_*`: the kernel's own figures for each cgroup, beside kmemcg's, and the drift
//! between them. A cgroup without a kernel figure has no series (never a 0).
use std::collections::HashSet;

use prometheus::proto::MetricFamily;

use super::{CgroupLabels, Family, MetricsConfig};
use crate::api::{KernelMemory, Snapshot};

/// (name, help, field): one gauge per figure the kernel keeps.
type Figure = (&'static str, &'static str, fn(&KernelMemory) -> Option<u64>);

const FIGURES: &[Figure] = &[
    (
        "kmemcg_kernel_kernel_bytes",
        "All kernel memory the kernel's memcg charges the cgroup (v2 memory.stat kernel, v1 \
         memory.kmem.usage_in_bytes), recursive.",
        |k| k.kernel_bytes,
    ),
    (
        "kmemcg_kernel_slab_bytes",
        "Slab memory the kernel's memcg charges the cgroup (memory.stat slab).",
        |k| k.slab_bytes,
    ),
    (
        "kmemcg_kernel_percpu_bytes",
        "Percpu memory the kernel's memcg charges the cgroup (memory.stat percpu).",
        |k| k.percpu_bytes,
    ),
    (
        "kmemcg_kernel_stack_bytes",
        "Kernel stacks the kernel's memcg charges the cgroup (memory.stat kernel_stack).",
        |k| k.kernel_stack_bytes,
    ),
    (
        "kmemcg_kernel_pagetables_bytes",
        "Page tables the kernel's memcg charges the cgroup (memory.stat pagetables).",
        |k| k.pagetables_bytes,
    ),
    (
        "kmemcg_kernel_vmalloc_bytes",
        "vmalloc memory the kernel's memcg charges the cgroup (memory.stat vmalloc).",
        |k| k.vmalloc_bytes,
    ),
    (
        "kmemcg_kernel_sock_bytes",
        "Socket buffers the kernel's memcg charges the cgroup (v2 memory.stat sock, v1 \
         memory.kmem.tcp.usage_in_bytes).",
        |k| k.sock_bytes,
    ),
];

pub(super) fn families(snapshot: &Snapshot, config: &MetricsConfig) -> Vec<MetricFamily> {
    let mut figures: Vec<Family> = FIGURES
        .iter()
        .map(|(name, help, _)| Family::gauge(name, help))
        .collect();
    let mut drift = Family::gauge(
        "kmemcg_kernel_drift_bytes",
        "kmemcg's recursive accounted bytes minus what the kernel's memcg charges for the same \
         (slab + percpu; v1: its whole kmem counter, which also counts stacks and page tables).",
    );
    let mut seen = HashSet::new();
    for usage in &snapshot.cgroups {
        let Some(kernel) = &usage.kernel else {
            continue;
        };
        if !seen.insert(usage.path.as_str()) {
            continue;
        }
        let labels = CgroupLabels::of(usage, config);
        let l = labels.pairs();
        for (family, (_, _, field)) in figures.iter_mut().zip(FIGURES) {
            if let Some(v) = field(kernel) {
                family.add(&l, v as f64);
            }
        }
        if let Some(d) = kernel.drift_bytes {
            drift.add(&l, d as f64);
        }
    }
    figures.push(drift);
    figures.into_iter().map(Family::finish).collect()
}
