//! Reads the tracer's maps periodically and turns them into a [`Snapshot`]: per-cgroup usage
//! with paths, and the agent's status.
use std::{
    collections::HashSet,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use kmemcg_common::RootCgroupMode;

use crate::{
    api::{CgroupUsage, Status},
    cgroups::CgroupPaths,
    collector::RawSnapshot,
    error::ReadError,
    kernel, report,
    tracer::Tracer,
};

/// What the API serves: the latest reading.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub cgroups: Vec<CgroupUsage>,
    pub status: Status,
}

pub struct Sampler {
    tracer: Tracer,
    paths: CgroupPaths,
    started: Instant,
    kernel_version: String,
}

impl Sampler {
    pub fn new(tracer: Tracer) -> Self {
        let paths = CgroupPaths::new(tracer.cgroup2_mount());
        Self {
            tracer,
            paths,
            started: Instant::now(),
            kernel_version: kernel::release(),
        }
    }

    pub fn tracer(&self) -> &Tracer {
        &self.tracer
    }

    pub fn sample(&mut self) -> Result<Snapshot, ReadError> {
        let raw = self.tracer.read()?;
        let ids: HashSet<u64> = raw.stats.iter().map(|(k, _)| k.cgroup_id).collect();
        let paths = self.paths.resolve_all(ids.iter().copied());
        // Removed cgroups that no longer appear in the maps need no name any more.
        self.paths.retain_dead(|id| ids.contains(&id));
        let cgroups = report::build(&raw.stats, &raw.cache_names, &paths);
        let status = self.status(&raw, &cgroups);
        Ok(Snapshot { cgroups, status })
    }

    fn status(&self, raw: &RawSnapshot, cgroups: &[CgroupUsage]) -> Status {
        let config = self.tracer.config();
        let c = &raw.counters;
        Status {
            version: env!("CARGO_PKG_VERSION").into(),
            kernel_version: self.kernel_version.clone(),
            uptime_seconds: self.started.elapsed().as_secs(),
            tracked_objects: cgroups
                .iter()
                .map(|u| u.slab_objects + u.percpu_objects)
                .sum(),
            map_capacity: config.max_objects.into(),
            dropped: c.dropped_live_full + c.dropped_stats_full,
            dropped_live_map_full: c.dropped_live_full,
            dropped_stats_map_full: c.dropped_stats_full,
            untracked_frees: c.untracked_frees,
            stale_objects: c.stale_objects,
            stats_entries: raw.stats.len() as u64,
            stats_capacity: config.max_stats.into(),
            attached_hooks: self.tracer.hooks().to_vec(),
            root_cgroup_mode: root_mode_name(config.root_mode).into(),
            cgroup2_mount: self.tracer.cgroup2_mount().display().to_string(),
            cgroups: cgroups.len() as u64,
            updated_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }
}

pub fn root_mode_name(mode: RootCgroupMode) -> &'static str {
    match mode {
        RootCgroupMode::Ignore => "ignore",
        RootCgroupMode::Count => "count",
        RootCgroupMode::Track => "track",
    }
}
