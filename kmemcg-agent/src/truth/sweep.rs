//! The sweep: some frees pass no tracepoint (`kfree_rcu()` batches, slab sheaves,
//! `kmem_cache_free_bulk()`), so an object kmemcg tracks may already be gone. Periodically the
//! agent runs the `sweep` program over the whole live-object table, a slice at a time; it
//! uncharges an object when the slab says it is free: its owner record, seen set before, is
//! cleared (accounted objects); its page is no longer a slab of its cache; or it is on its
//! slab's freelist (objects without an owner record). Then, on kernels with slab sheaves,
//! it uncharges the tracked objects found in the sheaves of each cache ([`sheaves`]).
use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::programs::ProgramFd;
use kmemcg_common::{
    CPU_OFFSET_PROGRAM, MAX_CPUS, PERCPU_AREAS, PERCPU_OFFSETS, SWEEP_PROGRAM,
    SWEEP_SHEAVES_PROGRAM, SWEEP_SLOTS_PER_RUN, TruthCounters,
};

use super::Truth;
use crate::{api::SweepStatus, test_run};

mod sheaves;

use sheaves::SheafSweep;

/// Time from the start of one sweep to the start of the next, at least.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(2);
/// A long sweep is followed by this many times its duration (capped at
/// [`SWEEP_INTERVAL_MAX`]), so that sweeping takes at most 2% of a core: a 0.3 s sweep of
/// 830,000 objects runs every 15 s.
const SWEEP_WAIT_FACTOR: u32 = 50;
const SWEEP_INTERVAL_MAX: Duration = Duration::from_secs(60);

#[derive(Default)]
struct SweepState {
    sweeps: u64,
    last_ms: f64,
    max_ms: f64,
    error: Option<String>,
    /// Caches whose sheaves the last pass looked at.
    sheaf_caches: usize,
}

/// Sweeps in a thread of its own, so that a large table (0.3 s for 800,000 objects on the
/// test VM) never delays a sample; stopped when dropped.
#[derive(Default)]
pub struct Sweeper {
    state: Arc<Mutex<SweepState>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Ids of the caches kmemcg has charged (see [`Self::learn_caches`]).
    caches: Arc<Mutex<Vec<u64>>>,
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Sweeper {
    /// Starts sweeping the live-object table every [`SWEEP_INTERVAL`], unless this kernel
    /// allows no slab walk.
    pub(super) fn start(truth: &Truth) -> Self {
        let mut sweeper = Self::default();
        if truth.slab_walk_unavailable().is_some() {
            return sweeper;
        }
        let fd = match truth.program_fd(SWEEP_PROGRAM) {
            Ok(fd) => fd,
            Err(e) => {
                sweeper.state.lock().expect("sweep state").error = Some(e.to_string());
                return sweeper;
            }
        };
        let sheaves = truth
            .sheaves()
            .ok()
            .and_then(|()| truth.program_fd(SWEEP_SHEAVES_PROGRAM).ok())
            .map(|fd| {
                let possible = std::fs::read_to_string("/sys/devices/system/node/possible").ok();
                SheafSweep::new(fd, sheaves::node_count(possible.as_deref()))
            });
        let slots = truth.live_slots;
        let (state, stop, caches) = (
            sweeper.state.clone(),
            sweeper.stop.clone(),
            sweeper.caches.clone(),
        );
        let thread = std::thread::Builder::new()
            .name("kmemcg-sweep".into())
            .spawn(move || sweep_loop(&fd, slots, &state, &stop, &caches, sheaves));
        match thread {
            Ok(thread) => sweeper.thread = Some(thread),
            Err(e) => {
                sweeper.state.lock().expect("sweep state").error =
                    Some(format!("cannot start the sweep thread: {e}"))
            }
        }
        sweeper
    }

    /// Tells the sweep which caches kmemcg has charged (the collector's cache ids), whose
    /// sheaves it looks at.
    pub(super) fn learn_caches<'a>(&self, ids: impl ExactSizeIterator<Item = &'a u64>) {
        let mut caches = self.caches.lock().expect("sweep caches");
        if caches.len() != ids.len() {
            *caches = ids.copied().collect();
        }
    }

    pub(super) fn status(&self, truth: &Truth, counters: &TruthCounters) -> SweepStatus {
        let state = self.state.lock().expect("sweep state");
        let reason = truth
            .slab_walk_unavailable()
            .map(str::to_string)
            .or_else(|| state.error.clone());
        SweepStatus {
            available: truth.slab_walk_unavailable().is_none(),
            reason,
            sweeps: state.sweeps,
            last_ms: state.last_ms,
            max_ms: state.max_ms,
            checked: counters.swept_checked,
            swept_objects: counters.swept_objects,
            swept_bytes: counters.swept_bytes,
            by_owner_record: counters.swept_by_owner,
            by_page: counters.swept_by_page,
            by_freelist: counters.swept_by_freelist,
            by_vmalloc: counters.swept_by_vmalloc,
            cpu_freelists: truth.cpu_freelists().is_ok(),
            cpu_freelists_reason: truth.cpu_freelists().err().map(str::to_string),
            by_sheaf: counters.swept_by_sheaf,
            sheaves: truth.sheaves().is_ok(),
            sheaves_reason: truth.sheaves().err().map(str::to_string),
            sheaf_caches: state.sheaf_caches as u64,
        }
    }
}

/// Finds each CPU's percpu offset (run on each online CPU) so that the sweep can look at CPU
/// freelists, and checks them: every CPU's percpu area less its offset must be the same
/// address (the percpu section's start). Returns how many CPUs; on failure the sweep looks at
/// slab freelists only.
pub(super) fn find_cpu_offsets(truth: &mut Truth) -> Result<usize, String> {
    let layout = truth.slab_layout().ok_or("no slab walk on this kernel")?;
    if layout.this_cpu_off_offset == 0 {
        return Err(
            "this kernel's BTF lacks what locates percpu data (see the agent's log)".into(),
        );
    }
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .map_err(|e| format!("cannot read the online CPUs: {e}"))?;
    let cpus = parse_cpu_list(text.trim());
    for &cpu in &cpus {
        let ret = truth
            .run_on(CPU_OFFSET_PROGRAM, &[0], Some(cpu))
            .map_err(|e| format!("finding CPU {cpu}'s percpu offset: {e}"))?;
        if ret != 0 {
            return Err(format!("CPU {cpu}'s percpu offset not found"));
        }
    }
    let read = |name| truth.read_u64_array(name).map_err(|e| e.to_string());
    let (offsets, areas) = (read(PERCPU_OFFSETS)?, read(PERCPU_AREAS)?);
    let consistent = check_offsets(&cpus, &offsets, &areas);
    if let Err(why) = &consistent {
        let zeros = vec![0; offsets.len()];
        let _ = truth.write_u64_array(PERCPU_OFFSETS, &zeros);
        tracing::warn!(why, "CPU freelists will not be checked by the sweep");
    }
    consistent.map(|()| cpus.len())
}

fn check_offsets(cpus: &[u32], offsets: &[u64], areas: &[u64]) -> Result<(), String> {
    let mut base = None;
    for &cpu in cpus {
        let (offset, area) = (offsets[cpu as usize], areas[cpu as usize]);
        if offset == 0 {
            return Err(format!("no percpu offset for CPU {cpu}"));
        }
        let this = area.wrapping_sub(offset);
        if *base.get_or_insert(this) != this {
            return Err(format!("CPU {cpu}'s percpu area disagrees with its offset"));
        }
    }
    let mut distinct: Vec<u64> = cpus.iter().map(|&c| offsets[c as usize]).collect();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() != cpus.len() {
        return Err("two CPUs with one percpu offset".into());
    }
    Ok(())
}

/// `0-3,8,10-11` -> [0, 1, 2, 3, 8, 10, 11], within [`MAX_CPUS`].
fn parse_cpu_list(text: &str) -> Vec<u32> {
    text.split(',')
        .filter_map(|part| {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            Some(a.trim().parse::<u32>().ok()?..=b.trim().parse::<u32>().ok()?)
        })
        .flatten()
        .filter(|&cpu| cpu < MAX_CPUS)
        .collect()
}

fn sweep_loop(
    fd: &ProgramFd,
    slots: u32,
    state: &Mutex<SweepState>,
    stop: &AtomicBool,
    caches: &Mutex<Vec<u64>>,
    mut sheaves: Option<SheafSweep>,
) {
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let result = sweep(fd, slots, stop).and_then(|()| match sheaves.as_mut() {
            Some(sheaves) => {
                let ids = caches.lock().expect("sweep caches").clone();
                sheaves.pass(&ids).map(|()| sheaves.with)
            }
            None => Ok(0),
        });
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        {
            let mut state = state.lock().expect("sweep state");
            if let Ok(caches) = &result {
                state.sheaf_caches = *caches;
            }
            state.sweeps += 1;
            state.last_ms = elapsed_ms;
            state.max_ms = state.max_ms.max(elapsed_ms);
            state.error = result.err().map(|e| {
                tracing::warn!(error = %e, "sweep failed");
                format!("the last sweep failed: {e}")
            });
        }
        let interval =
            (started.elapsed() * SWEEP_WAIT_FACTOR).clamp(SWEEP_INTERVAL, SWEEP_INTERVAL_MAX);
        while started.elapsed() < interval && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One pass over the table, a slice per call (a call holds its CPU for at most a few ms).
fn sweep(fd: &ProgramFd, slots: u32, stop: &AtomicBool) -> std::io::Result<()> {
    let mut start = 0;
    while start < slots && !stop.load(Ordering::Relaxed) {
        let count = SWEEP_SLOTS_PER_RUN.min(slots - start);
        test_run::run_raw_tracepoint(fd.as_fd().as_raw_fd(), &[start.into(), count.into()], None)?;
        start += count;
        std::thread::yield_now();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,8,10-11"), vec![0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(parse_cpu_list("0"), vec![0]);
        assert_eq!(parse_cpu_list(""), Vec::<u32>::new());
    }

    #[test]
    fn offsets_must_agree() {
        let cpus = [0, 1];
        let mut offsets = vec![0u64; 4];
        let mut areas = vec![0u64; 4];
        offsets[..2].copy_from_slice(&[0x1000_0000, 0x1004_0000]);
        areas[..2].copy_from_slice(&[0x1000_0000, 0x1004_0000]);
        assert!(check_offsets(&cpus, &offsets, &areas).is_ok());
        areas[1] += 8;
        assert!(check_offsets(&cpus, &offsets, &areas).is_err());
        offsets[1] = 0;
        assert!(check_offsets(&cpus, &offsets, &areas).is_err());
    }
}
