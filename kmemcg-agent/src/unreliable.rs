//! Which cgroups' figures miss allocations: a cgroup that allocated during a sample in which
//! allocations were dropped (a full map) may be charged less than it holds, and so may its
//! ancestors, whose totals include it. Once marked, a cgroup stays marked while the agent
//! lists it: its untracked objects may live on.
use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use crate::api::CgroupUsage;

/// Drops are logged at most this often: a full map drops on every sample.
const WARN_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub struct Unreliable {
    dropped: u64,
    allocs: HashMap<u64, u64>,
    marked: HashSet<u64>,
    /// When drops were last logged, and the host's drops then.
    warned: Option<(Instant, u64)>,
}

impl Unreliable {
    /// Marks the cgroups that allocated since the last sample if `dropped` (the host's drops
    /// so far) grew, and their ancestors; sets `unreliable` on every marked cgroup.
    pub fn annotate(&mut self, cgroups: &mut [CgroupUsage], dropped: u64) {
        if dropped > self.dropped {
            for c in cgroups.iter() {
                if c.allocs > self.allocs.get(&c.id).copied().unwrap_or(0) {
                    self.marked.insert(c.id);
                }
            }
        }
        self.dropped = dropped;
        self.allocs = cgroups.iter().map(|c| (c.id, c.allocs)).collect();
        let parents: HashMap<u64, Option<u64>> = cgroups.iter().map(|c| (c.id, c.parent)).collect();
        self.marked.retain(|id| parents.contains_key(id));
        let mut with_ancestors = HashSet::new();
        for id in &self.marked {
            let mut current = Some(*id);
            // Bounded: deeper than this is a loop.
            for _ in 0..4096 {
                let Some(c) = current else { break };
                if !with_ancestors.insert(c) {
                    break;
                }
                current = parents.get(&c).copied().flatten();
            }
        }
        for c in cgroups.iter_mut() {
            c.unreliable = with_ancestors.contains(&c.id);
        }
        self.warn(dropped, with_ancestors.len());
    }

    /// Says in the log that figures are short, when drops start and then once a minute while
    /// they go on.
    fn warn(&mut self, dropped: u64, marked: usize) {
        let before = self.warned.map_or(0, |(_, d)| d);
        let due = self.warned.is_none_or(|(at, _)| at.elapsed() >= WARN_EVERY);
        if dropped > before && due {
            tracing::warn!(
                dropped = dropped - before,
                dropped_total = dropped,
                cgroups = marked,
                "allocations were dropped because a map is full: the figures of the cgroups \
                 that allocated meanwhile (and their ancestors) may be short, marked unreliable \
                 (raise --max-objects or --max-stats)"
            );
            self.warned = Some((Instant::now(), dropped));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(id: u64, parent: Option<u64>, allocs: u64) -> CgroupUsage {
        CgroupUsage {
            id,
            parent,
            allocs,
            ..Default::default()
        }
    }

    #[test]
    fn cgroups_allocating_while_allocations_drop_are_marked_with_their_ancestors() {
        let mut u = Unreliable::default();
        let mut cgroups = vec![
            usage(1, None, 0),
            usage(2, Some(1), 10),
            usage(3, Some(2), 10),
            usage(4, Some(1), 10),
        ];
        u.annotate(&mut cgroups, 0);
        assert!(cgroups.iter().all(|c| !c.unreliable));
        cgroups[2].allocs = 20;
        u.annotate(&mut cgroups, 5);
        let marked: Vec<u64> = cgroups
            .iter()
            .filter(|c| c.unreliable)
            .map(|c| c.id)
            .collect();
        assert_eq!(marked, [1, 2, 3], "the allocating cgroup and its ancestors");
        // No new drops: stays marked, nothing else is.
        cgroups[3].allocs = 50;
        u.annotate(&mut cgroups, 5);
        assert!(cgroups[2].unreliable && !cgroups[3].unreliable);
        // Gone from the listing: forgotten.
        cgroups.remove(2);
        u.annotate(&mut cgroups, 5);
        assert!(cgroups.iter().all(|c| !c.unreliable));
    }
}
