//! The sweep's second step on kernels with slab sheaves (6.18+): free objects of some caches
//! (`maple_node`, `vm_area_struct`) wait in per-CPU sheaves and per-node barns, where the
//! slot-by-slot check cannot see them free. Once per pass the agent runs the `sweep_sheaves`
//! program for each slab cache kmemcg has charged; the program says whether the cache has
//! sheaves, and caches without are not asked again for a while.
use std::{
    collections::HashSet,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::programs::ProgramFd;
use kmemcg_common::{KERNEL_ADDRESS_MIN, SHEAVES_CHECKED, SHEAVES_NONE};

use crate::test_run;

/// Passes after which the caches found without sheaves are asked again (a destroyed cache's
/// address may be taken by a new cache).
const RECHECK_PASSES: u64 = 32;

/// What the agent knows of the caches' sheaves between passes.
pub struct SheafSweep {
    fd: ProgramFd,
    /// Nodes whose barns are looked at (`kmem_cache::node` entries 0..nodes).
    nodes: u64,
    /// Caches found without sheaves, until the next recheck.
    without: HashSet<u64>,
    /// Caches whose sheaves the last pass looked at.
    pub with: usize,
    passes: u64,
}

impl SheafSweep {
    pub fn new(fd: ProgramFd, nodes: u64) -> Self {
        Self {
            fd,
            nodes,
            without: HashSet::new(),
            with: 0,
            passes: 0,
        }
    }

    /// Looks at the sheaves of each of `caches` (cache ids; slab caches are the ids that are
    /// `struct kmem_cache` addresses).
    pub fn pass(&mut self, caches: &[u64]) -> std::io::Result<()> {
        if self.passes.is_multiple_of(RECHECK_PASSES) {
            self.without.clear();
        }
        self.passes += 1;
        let mut with = 0;
        for cache in to_check(caches, &self.without) {
            let answer = test_run::run_raw_tracepoint(
                self.fd.as_fd().as_raw_fd(),
                &[cache, self.nodes],
                None,
            )?;
            match answer {
                SHEAVES_CHECKED => with += 1,
                SHEAVES_NONE => {
                    self.without.insert(cache);
                }
                // Unreadable now (a cache being destroyed): asked again at the next pass.
                _ => {}
            }
        }
        self.with = with;
        Ok(())
    }
}

/// The caches of `ids` that may have sheaves: slab caches not known to lack them.
fn to_check(ids: &[u64], without: &HashSet<u64>) -> Vec<u64> {
    ids.iter()
        .copied()
        .filter(|id| *id >= KERNEL_ADDRESS_MIN && !without.contains(id))
        .collect()
}

/// Nodes of the machine, from a node list such as `0-1` (/sys/devices/system/node/possible):
/// one past the highest; 1 when there is no list (no NUMA).
pub fn node_count(possible: Option<&str>) -> u64 {
    possible
        .map(|text| super::parse_cpu_list(text.trim()))
        .and_then(|nodes| nodes.into_iter().max())
        .map_or(1, |max| u64::from(max) + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_slab_caches_not_known_to_lack_sheaves() {
        let maple = 0xffff_8880_0410_2c00;
        let dentry = 0xffff_8880_0410_3000;
        let kmalloc_64 = kmemcg_common::kmalloc_cache_id(64, false);
        let percpu = kmemcg_common::CACHE_ID_PERCPU;
        let without = HashSet::from([dentry]);
        assert_eq!(
            to_check(&[percpu, maple, kmalloc_64, dentry], &without),
            vec![maple]
        );
        assert!(to_check(&[], &without).is_empty());
    }

    #[test]
    fn nodes_from_the_possible_list() {
        assert_eq!(node_count(Some("0\n")), 1);
        assert_eq!(node_count(Some("0-3")), 4);
        assert_eq!(node_count(Some("0,2")), 3);
        assert_eq!(node_count(Some("")), 1);
        assert_eq!(node_count(None), 1);
    }
}
