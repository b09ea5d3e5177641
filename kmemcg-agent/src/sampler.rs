//! Reads the tracer's maps periodically and turns them into a [`Snapshot`]: per-cgroup usage
//! with the hierarchy applied, dying cgroups, and the agent's status. Also forgets what removed
//! cgroups no longer hold, so that memory stays bounded under cgroup churn.
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use crate::{
    api::{
        CgroupUsage, Correction, Corrections, DyingCgroup, InventoryStatus, Snapshot, Status,
        SweepStatus,
    },
    cgroups::CgroupTree,
    collector::RawSnapshot,
    error::ReadError,
    kernel,
    kernel_figures::{KernelFigures, KernelFiguresCache},
    kernel_memcgs::KernelMemcgs,
    leaks::Leaks,
    limits::Headroom,
    report::{self, Report},
    slab_names::SlabNames,
    tracer::Tracer,
    truth::Truth,
    unreliable::Unreliable,
    watch::Watch,
};
use kmemcg_common::StatsKey;

pub struct Sampler {
    tracer: Tracer,
    truth: Truth,
    tree: CgroupTree,
    started: Instant,
    kernel_version: String,
    /// Ids absent from the tree at the last sample: their entries are released at the next.
    unknown_last_time: HashSet<u64>,
    max_sample_ms: f64,
    lost_cgroup_events: u64,
    kernel_figures: KernelFiguresCache,
    unreliable: Unreliable,
    slab_names: SlabNames,
    watch: Watch,
    /// Counter slots in use at the last sample.
    slots: Vec<(u32, StatsKey)>,
    samples: u64,
    /// Told of cgroup events (recorded subtrees grow, end with their cgroup).
    leaks: Option<Arc<Leaks>>,
    kernel_memcgs: KernelMemcgs,
}

impl Sampler {
    pub fn new(tracer: Tracer, truth: Truth) -> Self {
        let cgroups = tracer.cgroups();
        let tree = CgroupTree::new(&cgroups.cgroup2, cgroups.root_id);
        let kernel_figures = KernelFiguresCache::new(KernelFigures::detect(cgroups));
        Self {
            kernel_figures,
            unreliable: Unreliable::default(),
            slab_names: SlabNames::default(),
            tracer,
            truth,
            tree,
            started: Instant::now(),
            kernel_version: kernel::release(),
            unknown_last_time: HashSet::new(),
            max_sample_ms: 0.0,
            lost_cgroup_events: 0,
            watch: Watch::default(),
            slots: Vec::new(),
            samples: 0,
            leaks: None,
            kernel_memcgs: KernelMemcgs::new(),
        }
    }

    /// Has the leak recordings follow the cgroup tree and end on time.
    pub fn set_leaks(&mut self, leaks: Arc<Leaks>) {
        self.leaks = Some(leaks);
    }

    pub fn tracer(&self) -> &Tracer {
        &self.tracer
    }

    /// Applies the cgroup tree changes reported since the last call, and gives new counter
    /// slots of watched cgroups their budgets. Called often (every 50 ms by the agent) so that
    /// the ring buffers never fill. True when a sample is due at once: a budget went below
    /// zero, or a cgroup that `limited` says a rule covers (path given) started allocating
    /// without being watched.
    pub fn poll_cgroup_events(&mut self, limited: impl Fn(&str) -> bool) -> bool {
        let events = self.tracer.take_cgroup_events();
        self.tree.apply(&events);
        if let Some(leaks) = &self.leaks {
            leaks.follow(&events, self.tracer.collector().cache_names());
        }
        self.kernel_memcgs.note_events(&events);
        let new = self.tracer.take_new_slots();
        let nodes = self.tree.nodes();
        let (crossed, unwatched) = self
            .watch
            .arm_new_slots(&new, nodes, self.tracer.collector());
        crossed
            || unwatched
                .iter()
                .filter_map(|id| nodes.get(id))
                .any(|node| limited(&node.path))
    }

    /// Has the programs watch these cgroups' budgets until the next call (see [`crate::watch`]).
    pub fn watch(&mut self, headroom: &[Headroom]) {
        let unwatched_before = self.watch.unwatched;
        self.watch.arm(
            headroom,
            &self.slots,
            self.tree.nodes(),
            self.tracer.collector(),
        );
        if self.watch.unwatched > 0 && unwatched_before == 0 {
            tracing::warn!(
                unwatched = self.watch.unwatched,
                "more cgroups match limit rules than the programs can watch: those are checked at each sample only"
            );
        }
    }

    /// Readable when an allocation took a watched cgroup below its budget.
    pub fn limit_events_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.tracer.limit_events_fd()
    }

    /// Whether a budget went below zero since the last call; clears the events.
    pub fn take_limit_events(&mut self) -> bool {
        self.tracer.take_limit_events() > 0
    }

    pub fn sample(&mut self) -> Result<Snapshot, ReadError> {
        let started = Instant::now();
        self.poll_cgroup_events(|_| false);
        self.truth.poll_recount(self.tracer.collector_mut());
        let raw = self.tracer.read()?;
        // What the sweep needs to know of the caches charged so far.
        self.truth.learn_caches(self.tracer.collector());
        if raw.counters.lost_cgroup_events > self.lost_cgroup_events {
            self.lost_cgroup_events = raw.counters.lost_cgroup_events;
            self.tree.rescan();
        }
        let Report {
            mut cgroups,
            mut dying,
        } = report::build(
            &raw.stats,
            self.tracer.collector().cache_names(),
            self.tree.nodes(),
            self.tree.root_id(),
        );
        self.slab_names.annotate(
            (cgroups.iter_mut().flat_map(|c| c.caches.iter_mut()))
                .chain(dying.iter_mut().flat_map(|d| d.caches.iter_mut())),
        );
        let c = &raw.counters;
        self.unreliable
            .annotate(&mut cgroups, c.dropped_live_full + c.dropped_stats_full);
        let kernel_drift = self
            .kernel_figures
            .annotate(&mut cgroups, self.tree.root_id());
        self.release_removed(&raw);
        let walk = KernelMemcgs::walk(&self.tracer);
        // The rmdir events of the memcgs the walk saw offline are in the ring by now.
        self.poll_cgroup_events(|_| false);
        let kernel_memcgs = self.kernel_memcgs.scan(&self.tracer, walk);
        // Hand the reading's transient buffers back to the OS, so that the agent's resident
        // memory follows the current state rather than its largest burst.
        // SAFETY: malloc_trim has no preconditions.
        unsafe { libc::malloc_trim(0) };
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        self.max_sample_ms = self.max_sample_ms.max(elapsed_ms);
        self.samples += 1;
        let mut status = self.status(&raw, &cgroups, &dying, elapsed_ms, kernel_drift);
        status.kernel_dying_memcgs = kernel_memcgs.dying.len() as u64;
        status.kernel_dying_memcg_bytes = kernel_memcgs.dying_bytes;
        kernel_memcgs.merge_into(&mut dying);
        status.kernel_memcgs = kernel_memcgs.status;
        Ok(Snapshot {
            cgroups,
            dying,
            status,
        })
    }

    /// Deletes the counter entries of removed cgroups whose objects are all freed, and forgets
    /// those cgroups.
    fn release_removed(&mut self, raw: &RawSnapshot) {
        let mut live: HashMap<u64, i64> = HashMap::new();
        for (key, s) in &raw.stats {
            *live.entry(key.cgroup_id).or_default() += s.live_objects;
        }
        let nodes = self.tree.nodes();
        let unknown: HashSet<u64> = live
            .keys()
            .filter(|id| !nodes.contains_key(id))
            .copied()
            .collect();
        let released: HashSet<u64> = live
            .iter()
            .filter(|(id, objects)| {
                **objects <= 0
                    && match nodes.get(id) {
                        Some(node) => !node.alive,
                        // Not seen created: give the events a sample's time to arrive.
                        None => self.unknown_last_time.contains(id),
                    }
            })
            .map(|(id, _)| *id)
            .collect();
        self.unknown_last_time = unknown;
        if !released.is_empty() {
            let slots: Vec<u32> = raw
                .stats_slots
                .iter()
                .filter(|(_, key)| released.contains(&key.cgroup_id))
                .map(|(slot, _)| *slot)
                .collect();
            self.tracer.clear_stats_slots(&slots);
            self.watch.forget_slots(&slots);
        }
        let holding: HashSet<u64> = live
            .iter()
            .filter(|(_, objects)| **objects > 0)
            .map(|(id, _)| *id)
            .collect();
        self.tree.forget_released(&holding);
        self.slots = raw
            .stats_slots
            .iter()
            .filter(|(_, key)| !released.contains(&key.cgroup_id))
            .copied()
            .collect();
    }

    fn status(
        &self,
        raw: &RawSnapshot,
        cgroups: &[CgroupUsage],
        dying: &[DyingCgroup],
        elapsed_ms: f64,
        kernel_drift_bytes: Option<i64>,
    ) -> Status {
        let config = self.tracer.config();
        let c = &raw.counters;
        let truth = self.truth.counters().unwrap_or_default();
        let inventory = self.truth.inventory().clone();
        let sweep = self.truth.sweep_status(&truth);
        Status {
            version: env!("CARGO_PKG_VERSION").into(),
            kernel_version: self.kernel_version.clone(),
            uptime_seconds: self.started.elapsed().as_secs(),
            tracked_objects: raw
                .stats
                .iter()
                .map(|(_, s)| s.live_objects.max(0) as u64)
                .sum(),
            map_capacity: config.max_objects.next_power_of_two().into(),
            dropped: c.dropped_live_full + c.dropped_stats_full,
            dropped_live_map_full: c.dropped_live_full,
            dropped_stats_map_full: c.dropped_stats_full,
            untracked_frees: c.untracked_frees,
            stale_objects: c.stale_objects,
            // After this sample released the slots of cgroups that hold nothing.
            stats_entries: self.slots.len() as u64,
            stats_capacity: config.max_stats.next_power_of_two().into(),
            attached_hooks: self.tracer.hooks().to_vec(),
            raw_tracepoint_hooks: self.tracer.raw_hooks().to_vec(),
            ledger: self.tracer.ledger(),
            recount: self.truth.recount_status().cloned(),
            unaccounted_sample_one_in: if self.tracer.ledger() {
                1 << kmemcg_common::SAMPLE_SHIFT
            } else {
                1
            },
            root_cgroup_mode: config.root_mode.as_str().into(),
            cgroup2_mount: self.tracer.cgroup2_mount().display().to_string(),
            cgroups: cgroups.len() as u64,
            dying_cgroups: dying.len() as u64,
            dying_bytes: dying.iter().map(|d| d.residual_bytes).sum(),
            known_cgroups: self.tree.nodes().len() as u64,
            lost_cgroup_events: c.lost_cgroup_events,
            cgroup_rescans: self.tree.rescans,
            last_sample_ms: elapsed_ms,
            max_sample_ms: self.max_sample_ms,
            samples: self.samples,
            watched_cgroups: self.watch.watched() as u64,
            kernel_figures_source: self.kernel_figures.source().map(Into::into),
            kernel_drift_bytes,
            updated_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            corrections: corrections(&self.tracer, &inventory, &sweep),
            inventory,
            sweep,
            // Filled by `sample` from the walk of the kernel's memcgs.
            kernel_dying_memcgs: 0,
            kernel_dying_memcg_bytes: 0,
            kernel_memcgs: Default::default(),
        }
    }
}

/// Which corrections are in force: the tracer's addresses, the inventory's and sweep's own.
fn corrections(tracer: &Tracer, inventory: &InventoryStatus, sweep: &SweepStatus) -> Corrections {
    let addresses = tracer.kernel_addresses();
    let own = |available: bool, reason: &Option<String>| Correction {
        in_force: available,
        reason: reason.clone(),
    };
    Corrections {
        owner_vectors_excluded: (&addresses.owner_vector_allocator).into(),
        memory_map_bases: (&addresses.memory_map_bases).into(),
        inventory: own(inventory.available, &inventory.reason),
        sweep: own(sweep.available, &sweep.reason),
    }
}
