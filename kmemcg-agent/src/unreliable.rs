//! Which cgroups' figures miss allocations: a cgroup that allocated during a sample in which
//! allocations were dropped (a full map) may be charged less than it holds, and so may its
//! ancestors, whose totals include it. Once marked, a cgroup stays marked while the agent
//! lists it: its untracked objects may live on.
use std::collections::{HashMap, HashSet};

use crate::api::CgroupUsage;

#[derive(Debug, Default)]
pub struct Unreliable {
    dropped: u64,
    allocs: HashMap<u64, u64>,
    marked: HashSet<u64>,
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
