//! The inventory at start: kmemcg's hooks see only what is allocated after they attach, but
//! the kernel keeps an owner record (`slab->obj_exts[i].objcg`) for every live accounted slab
//! object. Right after attaching, the agent runs the `inventory` program over every page
//! frame, a slice at a time; it takes each owned object into the live-object table, charged to
//! its memcg's cgroup, so that it shows at once and its later free uncharges it. Objects
//! tracked already (allocated since the hooks attached, or kept in pinned maps across a
//! restart) are left as they are, so nothing is counted twice.
//!
//! Percpu memory has owner records too, one per 4-byte unit of each chunk: the page walk notes
//! the chunks it meets, and `inventory_percpu` then takes every owned allocation of each.
use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use aya::maps::{MapData, PerCpuArray};
use kmemcg_common::{
    INVENTORY_PFNS_PER_RUN, INVENTORY_PROGRAM, PERCPU_ENTRIES_PER_RUN, PERCPU_INVENTORY_PROGRAM,
    PERCPU_POINTER_DELTA, TruthCounters,
};

use super::Truth;
use crate::{api::InventoryStatus, collector::Collector, kernel::cgroupfs::CgroupMounts};

/// Most memory cgroups mapped to a cgroup v2 id (the map's capacity).
const MAX_MEMCG_PAIRS: usize = 1 << 16;

pub(super) fn run(
    truth: &mut Truth,
    collector: &mut Collector,
    cgroups: &CgroupMounts,
) -> InventoryStatus {
    let mut status = InventoryStatus {
        started_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        host_percpu_bytes: meminfo_bytes("Percpu").unwrap_or(0),
        ..InventoryStatus::default()
    };
    if let Some(reason) = truth.slab_walk_unavailable() {
        status.reason = Some(reason.to_string());
        tracing::warn!(reason, "no inventory of objects allocated before start");
        return status;
    }
    let started = Instant::now();
    let before = truth.counters().unwrap_or_default();
    if let Some(memory) = cgroups.memcg_v1() {
        let pairs = memcg_pairs(memory, &cgroups.cgroup2);
        if let Err(e) = truth.set_memcg_cgroup_ids(&pairs) {
            tracing::warn!(error = %e, "memory cgroups not mapped to cgroup v2 ids");
        }
    }
    // At most half the live-object table, so that new allocations still find room.
    let budget = before.added_objects + u64::from(truth.live_slots / 2);
    let ledger = truth.ledger;
    if ledger {
        let slots = collector.ledger_slots();
        collector.clear_shadows(&slots);
    }
    for range in truth.pfn_ranges.clone() {
        let mut start = range.start;
        while start < range.end {
            let count = INVENTORY_PFNS_PER_RUN.min(range.end - start);
            if let Err(e) = truth.run(INVENTORY_PROGRAM, &[start, count, budget]) {
                status.reason = Some(format!("the inventory stopped at page frame {start}: {e}"));
                tracing::warn!(error = %e, "inventory stopped");
                if ledger {
                    let _ = truth.set_recount_cursor(0);
                }
                return status;
            }
            status.pages_walked += count;
            start += count;
            // Each run holds its CPU for about a millisecond; let others in between.
            std::thread::yield_now();
        }
    }
    if ledger && let Err(e) = super::recount::finish(truth, collector) {
        status.reason = Some(format!("the ledger's recount could not finish: {e}"));
    }
    let percpu_started = Instant::now();
    let percpu = inventory_percpu(truth, budget);
    status.percpu_duration_ms = percpu_started.elapsed().as_secs_f64() * 1000.0;
    match percpu {
        Ok(()) => status.percpu_available = true,
        Err(why) => {
            tracing::warn!(why, "no inventory of percpu allocations made before start");
            status.percpu_reason = Some(why);
        }
    }
    status.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    match truth.counters() {
        Ok(after) => fill(&mut status, &difference(&after, &before), ledger),
        Err(e) => status.reason = Some(format!("cannot read the inventory's counters: {e}")),
    }
    status.available = status.reason.is_none();
    // What was found but not taken is said too: objects of memory cgroups with no cgroup v2
    // twin can be most of it.
    let iec = crate::units::iec;
    tracing::info!(
        seconds = %format!("{:.1}", status.duration_ms / 1000.0),
        found = %format!("{} objects, {}", status.objects_found, iec(status.bytes_found)),
        taken = %format!("{} objects, {}", status.objects_added, iec(status.bytes_added)),
        percpu = %iec(status.percpu_bytes_found),
        already_tracked = status.already_tracked,
        not_attributed = %format!(
            "{} objects, {} (no cgroup v2 twin, or the root while untracked)",
            status.unmapped_objects,
            iec(status.unmapped_bytes)
        ),
        dropped = status.dropped,
        "inventory of objects allocated before start done"
    );
    status
}

/// Takes the accounted allocations of every percpu chunk the page walk found.
fn inventory_percpu(truth: &Truth, budget: u64) -> Result<(), String> {
    if let Some(why) = truth.percpu_walk_unavailable() {
        return Err(why.to_string());
    }
    learn_pointer_delta(truth)?;
    let chunks = truth
        .percpu_chunks()
        .map_err(|e| format!("cannot read the percpu chunks found: {e}"))?;
    for (chunk, entries) in dynamic_chunks(chunks) {
        let mut first = 0;
        while first < entries {
            let count = PERCPU_ENTRIES_PER_RUN.min(entries - first);
            match truth.run(PERCPU_INVENTORY_PROGRAM, &[chunk, first, count, budget]) {
                Ok(0) => {}
                // Freed since the page walk, most likely.
                Ok(_) => tracing::debug!(chunk, first, "percpu chunk not read"),
                Err(e) => return Err(format!("the percpu inventory stopped: {e}")),
            }
            first += count;
            std::thread::yield_now();
        }
    }
    Ok(())
}

/// Makes sure the percpu allocation hook has seen one allocation, from which it learns how
/// percpu pointers relate to chunk addresses: creating a one-entry percpu map makes one.
fn learn_pointer_delta(truth: &Truth) -> Result<(), String> {
    let known = || {
        truth
            .read_u64_array(PERCPU_POINTER_DELTA)
            .is_ok_and(|v| v.get(1) == Some(&1))
    };
    if !known() {
        let map = PerCpuArray::<MapData, u64>::create(1, 0)
            .map_err(|e| format!("cannot create a percpu map to learn percpu pointers: {e}"))?;
        drop(map);
    }
    known()
        .then_some(())
        .ok_or_else(|| "the percpu hook saw no allocation to learn percpu pointers from".into())
}

/// The chunks whose size is the common one: every chunk after the first spans the same pages
/// (the first has no owner records), so one of another size is not a chunk.
fn dynamic_chunks(chunks: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    let mut sizes: HashMap<u64, usize> = HashMap::new();
    for (_, entries) in &chunks {
        *sizes.entry(*entries).or_default() += 1;
    }
    let Some(common) = sizes
        .into_iter()
        .max_by_key(|&(entries, n)| (n, entries))
        .map(|(entries, _)| entries)
    else {
        return Vec::new();
    };
    chunks.into_iter().filter(|&(_, e)| e == common).collect()
}

/// `ledger`: the slab objects found were counted in the ledger rather than added to the
/// live-object table (percpu allocations are added either way).
fn fill(status: &mut InventoryStatus, c: &TruthCounters, ledger: bool) {
    status.slab_pages = c.slab_pages;
    status.objects_found = c.accounted_objects + c.percpu_objects;
    status.bytes_found = c.accounted_bytes + c.percpu_bytes;
    status.percpu_chunks = c.percpu_chunks;
    status.percpu_objects_found = c.percpu_objects;
    status.percpu_bytes_found = c.percpu_bytes;
    status.unattributable_percpu_bytes = status.host_percpu_bytes.saturating_sub(c.percpu_bytes);
    status.objects_added = c.added_objects;
    status.bytes_added = c.added_bytes;
    if ledger {
        status.objects_added += c.accounted_objects.saturating_sub(c.dropped);
        status.bytes_added += c.accounted_bytes;
    }
    status.already_tracked = c.already_tracked;
    status.replaced_stale = c.replaced_stale;
    status.unmapped_objects = c.unmapped_objects;
    status.unmapped_bytes = c.unmapped_bytes;
    status.dropped = c.dropped;
    status.host_slab_bytes = c.slab_bytes_in_use;
    status.unattributable_slab_bytes = c.slab_bytes_in_use.saturating_sub(c.accounted_bytes);
}

fn difference(after: &TruthCounters, before: &TruthCounters) -> TruthCounters {
    let d = |a: u64, b: u64| a.saturating_sub(b);
    TruthCounters {
        slab_pages: d(after.slab_pages, before.slab_pages),
        slab_objects_in_use: d(after.slab_objects_in_use, before.slab_objects_in_use),
        slab_bytes_in_use: d(after.slab_bytes_in_use, before.slab_bytes_in_use),
        accounted_objects: d(after.accounted_objects, before.accounted_objects),
        accounted_bytes: d(after.accounted_bytes, before.accounted_bytes),
        added_objects: d(after.added_objects, before.added_objects),
        added_bytes: d(after.added_bytes, before.added_bytes),
        already_tracked: d(after.already_tracked, before.already_tracked),
        replaced_stale: d(after.replaced_stale, before.replaced_stale),
        unmapped_objects: d(after.unmapped_objects, before.unmapped_objects),
        unmapped_bytes: d(after.unmapped_bytes, before.unmapped_bytes),
        dropped: d(after.dropped, before.dropped),
        percpu_chunks: d(after.percpu_chunks, before.percpu_chunks),
        percpu_objects: d(after.percpu_objects, before.percpu_objects),
        percpu_bytes: d(after.percpu_bytes, before.percpu_bytes),
        ..TruthCounters::default()
    }
}

/// A /proc/meminfo figure in bytes.
fn meminfo_bytes(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo(&text, field)
}

fn parse_meminfo(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (name, rest) = line.split_once(':')?;
        (name == field).then(|| {
            let kib: u64 = rest.split_whitespace().next()?.parse().ok()?;
            Some(kib * 1024)
        })?
    })
}

/// (memory cgroup id, cgroup v2 id) of every v1 memory cgroup with a v2 cgroup at the same
/// path: the obj_cgroup's memcg is the v1 one, kmemcg charges the v2 one.
fn memcg_pairs(memory: &Path, cgroup2: &Path) -> Vec<(u64, u64)> {
    let mut pairs = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(relative) = stack.pop() {
        if pairs.len() >= MAX_MEMCG_PAIRS {
            tracing::warn!("more than {MAX_MEMCG_PAIRS} memory cgroups: the rest not mapped");
            break;
        }
        let dir = memory.join(&relative);
        let (Ok(v1), Ok(v2)) = (
            std::fs::metadata(&dir),
            std::fs::metadata(cgroup2.join(&relative)),
        ) else {
            continue;
        };
        pairs.push((v1.ino(), v2.ino()));
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(relative.join(entry.file_name()));
            }
        }
    }
    // A cgroup seen twice (a rename during the walk) keeps its last pairing.
    pairs
        .into_iter()
        .collect::<HashMap<u64, u64>>()
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_in_bytes() {
        let text = "MemTotal:       24684084 kB\nPercpu:             3648 kB\n";
        assert_eq!(parse_meminfo(text, "Percpu"), Some(3648 * 1024));
        assert_eq!(parse_meminfo(text, "Slab"), None);
    }

    #[test]
    fn chunks_of_the_common_size_only() {
        let chunks = vec![(0x10, 32768), (0x20, 32768), (0x30, 512), (0x40, 32768)];
        assert_eq!(
            dynamic_chunks(chunks),
            vec![(0x10, 32768), (0x20, 32768), (0x40, 32768)]
        );
        assert_eq!(dynamic_chunks(vec![(0x10, 64)]), vec![(0x10, 64)]);
        assert!(dynamic_chunks(Vec::new()).is_empty());
    }

    #[test]
    fn counters_since_a_start() {
        let before = TruthCounters {
            accounted_objects: 5,
            added_bytes: 100,
            ..TruthCounters::default()
        };
        let after = TruthCounters {
            accounted_objects: 12,
            added_bytes: 400,
            swept_objects: 3,
            ..TruthCounters::default()
        };
        let d = difference(&after, &before);
        assert_eq!((d.accounted_objects, d.added_bytes), (7, 300));
        assert_eq!(d.swept_objects, 0);
    }
}
