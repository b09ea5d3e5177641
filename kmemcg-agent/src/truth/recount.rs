//! The ledger's periodic recount. Accounted slab objects are counted from the kernel's owner
//! records at allocation and free (see [`kmemcg_common::LEDGER_STATE`]), but some frees fire no
//! tracepoint (kfree_rcu batches, bulk frees into slab sheaves): their objects stay counted.
//! Every [`RECOUNT_INTERVAL`] or so, a thread walks every page frame with the inventory
//! program, which counts each owner record into its slot's shadow counters while the hooks add
//! what they see on slabs already walked; the sampler then makes (shadow - live) each slot's
//! correction. The inventory at start is the first recount.
use std::{
    ops::Range,
    os::fd::{AsFd as _, AsRawFd as _},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::programs::ProgramFd;
use kmemcg_common::{INVENTORY_PFNS_PER_RUN, INVENTORY_PROGRAM};
use serde::{Deserialize, Serialize};

use super::Truth;
use crate::{
    collector::{Collector, Correction},
    error::ReadError,
    test_run,
};

/// Shortest time between two recounts; a recount also waits [`RECOUNT_WAIT_FACTOR`] times
/// its own duration, so that it never takes more than a twentieth of one CPU (1.3 s every 26 s
/// on a 24 GiB host).
const RECOUNT_INTERVAL: Duration = Duration::from_secs(10);
const RECOUNT_WAIT_FACTOR: u32 = 20;

/// What the recounts did, for the status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RecountStatus {
    /// Recounts finished since the start (the inventory's included), how long the last took.
    pub recounts: u64,
    pub last_ms: f64,
    /// What the last recount corrected, summed over every slot: objects and bytes the hooks'
    /// counts were short of (negative: counted live, but freed without a tracepoint).
    pub last_correction_objects: i64,
    pub last_correction_bytes: i64,
    pub error: Option<String>,
}

pub struct Recount {
    fd: ProgramFd,
    ranges: Vec<Range<u64>>,
    walk: Option<(Instant, JoinHandle<std::io::Result<()>>)>,
    next_at: Instant,
    status: RecountStatus,
}

impl Recount {
    /// The recount of the ledger, or None when the ledger is off.
    pub(super) fn new(truth: &Truth) -> Option<Self> {
        if !truth.ledger {
            return None;
        }
        let fd = match truth.program_fd(INVENTORY_PROGRAM) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!(error = %e, "no recount of the ledger");
                return None;
            }
        };
        let inventory = truth.inventory();
        Some(Self {
            fd,
            ranges: truth.pfn_ranges.clone(),
            walk: None,
            next_at: Instant::now() + RECOUNT_INTERVAL,
            status: RecountStatus {
                recounts: u64::from(inventory.available),
                last_ms: inventory.duration_ms,
                ..RecountStatus::default()
            },
        })
    }

    pub fn status(&self) -> &RecountStatus {
        &self.status
    }

    /// Takes the result of a finished walk, or starts one when it is due.
    pub(super) fn poll(&mut self, truth: &mut Truth, collector: &mut Collector) {
        match self.walk.take() {
            Some((started, walk)) if walk.is_finished() => {
                let result = match walk.join() {
                    Ok(Ok(())) => finish(truth, collector).map_err(|e| e.to_string()),
                    Ok(Err(e)) => Err(format!("the recount's walk failed: {e}")),
                    Err(_) => Err("the recount's walk panicked".to_string()),
                };
                let _ = truth.set_recount_cursor(0);
                let elapsed = started.elapsed();
                self.status.last_ms = elapsed.as_secs_f64() * 1000.0;
                match result {
                    Ok(correction) => {
                        self.status.recounts += 1;
                        self.status.last_correction_objects = correction.objects;
                        self.status.last_correction_bytes = correction.bytes;
                        self.status.error = None;
                    }
                    Err(why) => {
                        tracing::warn!(why, "ledger recount failed");
                        self.status.error = Some(why);
                    }
                }
                self.next_at =
                    Instant::now() + (elapsed * RECOUNT_WAIT_FACTOR).max(RECOUNT_INTERVAL);
            }
            Some(walk) => self.walk = Some(walk),
            None if Instant::now() >= self.next_at => self.start(collector),
            None => {}
        }
    }

    fn start(&mut self, collector: &Collector) {
        let slots = collector.ledger_slots();
        collector.clear_shadows(&slots);
        let (fd, ranges) = match self.fd.try_clone() {
            Ok(fd) => (fd, self.ranges.clone()),
            Err(e) => {
                self.status.error = Some(format!("cannot start a recount: {e}"));
                self.next_at = Instant::now() + RECOUNT_INTERVAL;
                return;
            }
        };
        let walk = std::thread::Builder::new()
            .name("kmemcg-recount".into())
            .spawn(move || walk(&fd, &ranges));
        match walk {
            Ok(walk) => self.walk = Some((Instant::now(), walk)),
            Err(e) => {
                self.status.error = Some(format!("cannot start the recount thread: {e}"));
                self.next_at = Instant::now() + RECOUNT_INTERVAL;
            }
        }
    }
}

/// Walks every page frame with the inventory program, which advances the recount's cursor.
fn walk(fd: &ProgramFd, ranges: &[Range<u64>]) -> std::io::Result<()> {
    for range in ranges {
        let mut start = range.start;
        while start < range.end {
            let count = INVENTORY_PFNS_PER_RUN.min(range.end - start);
            // Budget 0: a recount takes nothing into the live-object table.
            test_run::run_raw_tracepoint(fd.as_fd().as_raw_fd(), &[start, count, 0], None)?;
            start += count;
            std::thread::yield_now();
        }
    }
    Ok(())
}

/// Ends a recount whose walk has counted every page: the hooks count into the shadows
/// everywhere for the moment it takes to read them, each ledger slot keeps (shadow - live) as
/// its correction, and the shadows are cleared for the next recount.
pub(super) fn finish(
    truth: &mut Truth,
    collector: &mut Collector,
) -> Result<Correction, ReadError> {
    truth.set_recount_cursor(u64::MAX)?;
    let correction = collector.take_recount();
    truth.set_recount_cursor(0)?;
    let slots = collector.ledger_slots();
    collector.clear_shadows(&slots);
    Ok(correction)
}
