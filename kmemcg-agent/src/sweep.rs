//! The sweep: some frees pass no tracepoint (`kfree_rcu()` batches, slab sheaves,
//! `kmem_cache_free_bulk()`), so an object kmemcg tracks may already be gone. Periodically the
//! agent runs the `sweep` program over the whole live-object table, a slice at a time; it
//! uncharges an object when the slab says it is free: its owner record, seen set before, is
//! cleared (accounted objects); its page is no longer a slab of its cache; or it is on its
//! slab's freelist (objects without an owner record).
use std::time::{Duration, Instant};

use kmemcg_common::{SWEEP_PROGRAM, SWEEP_SLOTS_PER_RUN, TruthCounters};

use crate::{api::SweepStatus, error::ReadError, tracer::Tracer};

/// Shortest time between two sweeps: samples may come every 250 ms while limits are in force.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Default)]
pub struct Sweeper {
    last: Option<Instant>,
    sweeps: u64,
    last_ms: f64,
    max_ms: f64,
    error: Option<String>,
}

impl Sweeper {
    /// Sweeps the live-object table when the last sweep is [`SWEEP_INTERVAL`] old.
    pub fn maybe_sweep(&mut self, tracer: &Tracer) {
        if tracer.slab_walk_unavailable().is_some()
            || self.last.is_some_and(|t| t.elapsed() < SWEEP_INTERVAL)
        {
            return;
        }
        let started = Instant::now();
        self.last = Some(started);
        match sweep(tracer) {
            Ok(()) => self.error = None,
            Err(e) => {
                tracing::warn!(error = %e, "sweep failed");
                self.error = Some(format!("the last sweep failed: {e}"));
            }
        }
        self.sweeps += 1;
        self.last_ms = started.elapsed().as_secs_f64() * 1000.0;
        self.max_ms = self.max_ms.max(self.last_ms);
    }

    pub fn status(&self, tracer: &Tracer, counters: &TruthCounters) -> SweepStatus {
        let reason = tracer
            .slab_walk_unavailable()
            .map(str::to_string)
            .or_else(|| self.error.clone());
        SweepStatus {
            available: tracer.slab_walk_unavailable().is_none(),
            reason,
            sweeps: self.sweeps,
            last_ms: self.last_ms,
            max_ms: self.max_ms,
            checked: counters.swept_checked,
            swept_objects: counters.swept_objects,
            swept_bytes: counters.swept_bytes,
            by_owner_record: counters.swept_by_owner,
            by_page: counters.swept_by_page,
            by_freelist: counters.swept_by_freelist,
        }
    }
}

fn sweep(tracer: &Tracer) -> Result<(), ReadError> {
    let slots = tracer.config().max_objects.next_power_of_two();
    let mut start = 0;
    while start < slots {
        let count = SWEEP_SLOTS_PER_RUN.min(slots - start);
        tracer.run_slab_walk(SWEEP_PROGRAM, &[start.into(), count.into()])?;
        start += count;
    }
    Ok(())
}
