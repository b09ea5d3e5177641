//! Empty programs on the same memory hooks, the baseline the benchmark measures kmemcg against.
use aya::{Ebpf, EbpfLoader};

use crate::{error::StartError, kernel::caps, tracer};

static EMPTY_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/kmemcg-ebpf-empty"));

/// Empty programs, attached; detached when dropped.
pub struct EmptyPrograms {
    ebpf: Ebpf,
}

impl EmptyPrograms {
    pub fn attach() -> Result<Self, StartError> {
        caps::check_can_trace()?;
        if EMPTY_OBJECT.is_empty() {
            return Err(StartError::NoProgramsEmbedded);
        }
        let mut ebpf = EbpfLoader::new()
            .load(EMPTY_OBJECT)
            .map_err(|e| StartError::Load(Box::new(e)))?;
        tracer::attach_hooks(&mut ebpf, &[])?;
        Ok(Self { ebpf })
    }

    /// Kernel BPF statistics: (run time in ns, runs).
    pub fn program_stats(&self) -> (u64, u64) {
        tracer::program_stats(&self.ebpf)
    }

    /// Kernel BPF statistics of each program: (name, run time in ns, runs).
    pub fn program_stats_by_name(&self) -> Vec<(String, u64, u64)> {
        tracer::program_stats_by_name(&self.ebpf)
    }
}
