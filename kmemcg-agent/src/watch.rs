//! Limits watched by the programs: each cgroup a limit rule matches gets a budget, what it may
//! still allocate before its tightest limit, and each (cgroup, cache) counter slot of it or of
//! its descendants spends from it. An allocation that takes a budget below zero wakes the
//! agent at once (`LIMIT_EVENTS`), so a crossing is acted on within milliseconds, while the
//! agent otherwise samples at its interval. The budget is a trigger only: the agent decides
//! on its own figures.
use std::collections::HashMap;

use kmemcg_common::{BUDGETS_PER_SLOT, CacheStats, MAX_WATCHED, StatsKey};

use crate::{cgroups::Nodes, collector::Collector, limits::Headroom};

#[derive(Debug)]
pub struct Watch {
    /// Budget index of each watched cgroup.
    indexes: HashMap<u64, u32>,
    /// Budget indexes not in use.
    free: Vec<u32>,
    /// The budget word each slot has now (slots without budgets are absent).
    armed: HashMap<u32, u64>,
    /// Watched cgroups left out because every budget was taken.
    pub unwatched: usize,
}

impl Default for Watch {
    fn default() -> Self {
        Self {
            indexes: HashMap::new(),
            // Index 0 means "none" in a budget word.
            free: (1..MAX_WATCHED).rev().collect(),
            armed: HashMap::new(),
            unwatched: 0,
        }
    }
}

impl Watch {
    /// Watches exactly the cgroups of `headroom`, with these budgets, over the slots in use.
    pub fn arm(
        &mut self,
        headroom: &[Headroom],
        slots: &[(u32, StatsKey)],
        nodes: &Nodes,
        collector: &Collector,
    ) {
        if headroom.is_empty() && self.indexes.is_empty() {
            return;
        }
        let watched: HashMap<u64, i64> = headroom.iter().map(|h| (h.cgroup_id, h.bytes)).collect();
        let (free, indexes) = (&mut self.free, &mut self.indexes);
        indexes.retain(|id, index| {
            let keep = watched.contains_key(id);
            if !keep {
                free.push(*index);
            }
            keep
        });
        self.unwatched = 0;
        for (&id, &bytes) in &watched {
            let index = match self.indexes.get(&id) {
                Some(&index) => index,
                None => match self.free.pop() {
                    Some(index) => {
                        self.indexes.insert(id, index);
                        index
                    }
                    None => {
                        self.unwatched += 1;
                        continue;
                    }
                },
            };
            collector.set_budget(index, bytes);
        }
        let mut wanted: HashMap<u32, u64> = HashMap::new();
        if !self.indexes.is_empty() {
            for &(slot, key) in slots {
                let word = self.word(key.cgroup_id, nodes);
                if word != 0 {
                    wanted.insert(slot, word);
                }
            }
        }
        for (&slot, &word) in &wanted {
            if self.armed.get(&slot) != Some(&word) {
                collector.set_budgets(slot, word);
            }
        }
        for &slot in self.armed.keys() {
            if !wanted.contains_key(&slot) {
                collector.set_budgets(slot, 0);
            }
        }
        self.armed = wanted;
    }

    /// Gives slots claimed since the last [`Self::arm`] the budgets of their cgroup, and
    /// takes from those budgets what the slots hold already (allocated before they were
    /// armed). Returns whether a budget went below zero, and the cgroups of slots that spend
    /// from no budget (a rule may match them though they had no figures at the last sample).
    pub fn arm_new_slots(
        &mut self,
        new: &[(u32, StatsKey)],
        nodes: &Nodes,
        collector: &Collector,
    ) -> (bool, Vec<u64>) {
        let mut crossed = false;
        let mut unwatched = Vec::new();
        for &(slot, key) in new {
            let word = self.word(key.cgroup_id, nodes);
            if word == 0 {
                unwatched.push(key.cgroup_id);
                continue;
            }
            collector.set_budgets(slot, word);
            self.armed.insert(slot, word);
            let held = collector.slot_live_bytes(slot);
            for index in CacheStats::budget_indexes(word) {
                crossed |= collector.spend_budget(index, held);
            }
        }
        unwatched.sort_unstable();
        unwatched.dedup();
        (crossed, unwatched)
    }

    /// Forgets slots the collector cleared (their counters, budgets included, are zero).
    pub fn forget_slots(&mut self, slots: &[u32]) {
        for slot in slots {
            self.armed.remove(slot);
        }
    }

    pub fn watched(&self) -> usize {
        self.indexes.len()
    }

    /// The budget indexes of the nearest watched cgroups among `cgroup` and its ancestors.
    fn word(&self, cgroup: u64, nodes: &Nodes) -> u64 {
        let mut word = 0;
        let mut taken = 0;
        let mut id = Some(cgroup);
        // Bounded: a tree from events could, in theory, hold a cycle.
        for _ in 0..256 {
            let Some(current) = id else { break };
            if taken == BUDGETS_PER_SLOT {
                break;
            }
            if let Some(&index) = self.indexes.get(&current) {
                word = CacheStats::with_budget_index(word, taken, index);
                taken += 1;
            }
            id = nodes.get(&current).and_then(|n| n.parent);
        }
        word
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroups::Node;

    fn tree(edges: &[(u64, Option<u64>)]) -> Nodes {
        edges
            .iter()
            .map(|&(id, parent)| {
                (
                    id,
                    Node {
                        id,
                        path: format!("/{id}"),
                        parent,
                        alive: true,
                        removed_at: None,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn a_slot_spends_from_its_cgroup_and_watched_ancestors_nearest_first() {
        let nodes = tree(&[(1, None), (2, Some(1)), (3, Some(2)), (4, Some(3))]);
        let mut watch = Watch::default();
        watch.indexes.insert(2, 7);
        watch.indexes.insert(4, 9);
        assert_eq!(watch.word(4, &nodes), 9 | 7 << 16);
        assert_eq!(watch.word(3, &nodes), 7);
        assert_eq!(watch.word(1, &nodes), 0);
        let indexes: Vec<u32> = CacheStats::budget_indexes(watch.word(4, &nodes)).collect();
        assert_eq!(indexes, [9, 7]);
    }

    #[test]
    fn at_most_four_budgets_per_slot() {
        let edges: Vec<(u64, Option<u64>)> =
            (1..=8).map(|id| (id, (id > 1).then(|| id - 1))).collect();
        let nodes = tree(&edges);
        let mut watch = Watch::default();
        for id in 1..=8 {
            watch.indexes.insert(id, id as u32 * 10);
        }
        let word = watch.word(8, &nodes);
        let indexes: Vec<u32> = CacheStats::budget_indexes(word).collect();
        assert_eq!(indexes, [80, 70, 60, 50]);
    }

    #[test]
    fn a_cycle_in_the_tree_ends() {
        let nodes = tree(&[(1, Some(2)), (2, Some(1))]);
        let mut watch = Watch::default();
        watch.indexes.insert(1, 3);
        assert_eq!(watch.word(2, &nodes) & 0xffff, 3);
    }
}
