//! The kernel's own statistics of eBPF programs (BPF_ENABLE_STATS): all of a mode's programs
//! summed, and each memory hook's, whether the bench loaded the programs itself or a separate
//! agent process did.
use std::collections::{BTreeMap, HashSet};

use anyhow::{Context as _, bail};
use kmemcg_common::{HOOKS, HookKind};

/// The kernel keeps the first 15 bytes of a program's name (BPF_OBJ_NAME_LEN - 1).
const KERNEL_NAME_LEN: usize = 15;

/// Rows of the per-program table: the memory hooks, in groups, each group followed by its sum.
pub const GROUPS: [(&str, &[&str]); 3] = [
    ("alloc", &["kmem_cache_alloc", "kmalloc"]),
    ("free", &["kmem_cache_free", "kfree"]),
    ("percpu", &["percpu_alloc_percpu", "percpu_free_percpu"]),
];

/// Run time and runs of a program, or of several summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Runs {
    pub ns: u64,
    pub count: u64,
}

impl Runs {
    pub fn add(self, other: Runs) -> Runs {
        Runs {
            ns: self.ns + other.ns,
            count: self.count + other.count,
        }
    }

    fn since(self, before: Runs) -> Runs {
        Runs {
            ns: self.ns.saturating_sub(before.ns),
            count: self.count.saturating_sub(before.count),
        }
    }
}

/// A mode's programs at one moment, or over runs: all of them summed, and each memory hook.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProgramStats {
    pub total: Runs,
    pub hooks: BTreeMap<&'static str, Runs>,
}

impl ProgramStats {
    /// From (name, run time in ns, runs) of each program; names as the object spells them or
    /// as the kernel keeps them.
    pub fn from_named(programs: impl IntoIterator<Item = (String, u64, u64)>) -> Self {
        let mut stats = Self::default();
        for (name, ns, count) in programs {
            let runs = Runs { ns, count };
            stats.total = stats.total.add(runs);
            if let Some(hook) = memory_hook(&name) {
                let entry = stats.hooks.entry(hook).or_default();
                *entry = entry.add(runs);
            }
        }
        stats
    }

    /// What ran between `before` and now (`self`).
    pub fn since(&self, before: &Self) -> Self {
        let hooks = self
            .hooks
            .iter()
            .map(|(&hook, &runs)| {
                let earlier = before.hooks.get(hook).copied().unwrap_or_default();
                (hook, runs.since(earlier))
            })
            .collect();
        Self {
            total: self.total.since(before.total),
            hooks,
        }
    }

    pub fn add(&mut self, other: &Self) {
        self.total = self.total.add(other.total);
        for (&hook, &runs) in &other.hooks {
            let entry = self.hooks.entry(hook).or_default();
            *entry = entry.add(runs);
        }
    }

    /// The hooks of `names`, summed.
    pub fn sum_of(&self, names: &[&str]) -> Runs {
        names
            .iter()
            .filter_map(|n| self.hooks.get(n))
            .fold(Runs::default(), |sum, &runs| sum.add(runs))
    }
}

fn memory_hooks() -> impl Iterator<Item = &'static str> {
    HOOKS
        .iter()
        .filter(|h| h.kind == HookKind::Memory)
        .map(|h| h.name)
}

/// The memory hook a program is for, from its name in the object or in the kernel (its plain
/// raw tracepoint twin's too).
pub fn memory_hook(name: &str) -> Option<&'static str> {
    HOOKS
        .iter()
        .filter(|h| h.kind == HookKind::Memory)
        .find(|h| {
            std::iter::once(h.name)
                .chain(h.raw_fallback)
                .any(|program| program == name || kernel_name(program) == name)
        })
        .map(|h| h.name)
}

fn kernel_name(name: &str) -> &str {
    &name[..name.len().min(KERNEL_NAME_LEN)]
}

/// Ids of the programs loaded in the kernel now.
pub fn loaded_ids() -> HashSet<u32> {
    // Errors are programs unloaded while listing: not there any more.
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.id())
        .collect()
}

/// The programs of an agent running as a separate process.
pub struct AgentPrograms {
    ids: HashSet<u32>,
}

impl AgentPrograms {
    /// The programs loaded since `before` (ids) that use one of the maps `maps` (ids of the
    /// agent's pinned maps): the agent's own, not those of another process that loaded
    /// programs meanwhile. Every memory hook must be among them.
    pub fn find(before: &HashSet<u32>, maps: &HashSet<u32>) -> anyhow::Result<Self> {
        let mut ids = HashSet::new();
        let mut hooks = HashSet::new();
        for program in aya::programs::loaded_programs().filter_map(Result::ok) {
            if before.contains(&program.id()) {
                continue;
            }
            let uses = program
                .map_ids()
                .with_context(|| format!("reading the map ids of program {}", program.id()))?
                .unwrap_or_default();
            if uses.iter().any(|id| maps.contains(id)) {
                ids.insert(program.id());
                hooks.extend(program.name_as_str().and_then(memory_hook));
            }
        }
        let missing: Vec<_> = memory_hooks().filter(|h| !hooks.contains(h)).collect();
        if !missing.is_empty() {
            bail!(
                "the agent's programs for {missing:?} were not found among the programs loaded \
                 since it started that use its pinned maps ({} found)",
                ids.len()
            );
        }
        Ok(Self { ids })
    }

    /// Their statistics now.
    pub fn stats(&self) -> anyhow::Result<ProgramStats> {
        let mut seen = 0;
        let mut named = Vec::new();
        for program in aya::programs::loaded_programs().filter_map(Result::ok) {
            if self.ids.contains(&program.id()) {
                seen += 1;
                let name = program.name_as_str().unwrap_or_default().to_string();
                let ns = program.run_time().as_nanos() as u64;
                named.push((name, ns, program.run_count()));
            }
        }
        if seen != self.ids.len() {
            bail!(
                "{} of the agent's {} programs are no longer loaded: did the agent exit?",
                self.ids.len() - seen,
                self.ids.len()
            );
        }
        Ok(ProgramStats::from_named(named))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_memory_hook_is_in_one_group_and_nothing_else_is() {
        let grouped: Vec<&str> = GROUPS.iter().flat_map(|(_, m)| m.iter().copied()).collect();
        let mut hooks: Vec<&str> = memory_hooks().collect();
        let mut sorted = grouped.clone();
        sorted.sort();
        hooks.sort();
        assert_eq!(sorted, hooks);
    }

    #[test]
    fn kernel_names_are_cut_to_15_bytes_and_stay_distinct() {
        assert_eq!(memory_hook("percpu_alloc_pe"), Some("percpu_alloc_percpu"));
        assert_eq!(memory_hook("percpu_free_per"), Some("percpu_free_percpu"));
        assert_eq!(memory_hook("kmem_cache_allo"), Some("kmem_cache_alloc"));
        assert_eq!(memory_hook("kmem_cache_alloc"), Some("kmem_cache_alloc"));
        assert_eq!(memory_hook("kfree"), Some("kfree"));
        assert_eq!(memory_hook("cgroup_mkdir"), None);
        assert_eq!(memory_hook("kmem"), None);
        let cut: HashSet<&str> = memory_hooks().map(kernel_name).collect();
        assert_eq!(cut.len(), memory_hooks().count());
    }

    #[test]
    fn stats_sum_every_program_and_keep_memory_hooks_apart() {
        let named = |v: &[(&str, u64, u64)]| {
            ProgramStats::from_named(v.iter().map(|&(n, ns, c)| (n.to_string(), ns, c)))
        };
        let before = named(&[("kmalloc", 100, 2), ("cgroup_mkdir", 5, 1)]);
        let after = named(&[
            ("kmalloc", 400, 5),
            ("kmem_cache_alloc", 300, 10),
            ("percpu_alloc_pe", 70, 1),
            ("cgroup_mkdir", 5, 1),
            ("sweep", 1000, 1),
        ]);
        let run = after.since(&before);
        assert_eq!(
            run.total,
            Runs {
                ns: 1670,
                count: 15
            }
        );
        assert_eq!(run.hooks["kmalloc"], Runs { ns: 300, count: 3 });
        assert_eq!(run.sum_of(GROUPS[0].1), Runs { ns: 600, count: 13 });
        assert_eq!(run.sum_of(GROUPS[1].1), Runs::default());
        let mut twice = run.clone();
        twice.add(&run);
        assert_eq!(
            twice.hooks["percpu_alloc_percpu"],
            Runs { ns: 140, count: 2 }
        );
        assert_eq!(twice.total.count, 30);
    }
}
