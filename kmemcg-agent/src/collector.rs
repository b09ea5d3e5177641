//! Reads the programs' maps and sums the per-CPU values.
use std::{
    collections::HashMap,
    os::fd::{AsFd as _, AsRawFd as _, RawFd},
};

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray},
};
use kmemcg_common::{
    CACHE_NAMES, CGROUP_CACHE_STATS, CacheName, CacheStats, GLOBAL_COUNTERS, GlobalCounters,
    STATS_KEYS, StatsKey,
};

use crate::{bpf_batch, error::ReadError, kernel};

/// The maps' content at one moment, summed over CPUs.
#[derive(Clone, Debug, Default)]
pub struct RawSnapshot {
    /// Counters per (cgroup, cache), summed over CPUs.
    pub stats: Vec<(StatsKey, CacheStats)>,
    /// Used slots of the counter table.
    pub stats_slots: Vec<(u32, StatsKey)>,
    pub counters: GlobalCounters,
    /// `struct kmem_cache` address -> name.
    pub cache_names: HashMap<u64, String>,
}

pub fn read(ebpf: &Ebpf) -> Result<RawSnapshot, ReadError> {
    let (stats, stats_slots) = read_stats(ebpf)?;
    Ok(RawSnapshot {
        stats,
        stats_slots,
        counters: read_counters(ebpf)?,
        cache_names: read_cache_names(ebpf)?,
    })
}

fn map<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a aya::maps::Map, ReadError> {
    ebpf.map(name).ok_or(ReadError::MissingMap(name))
}

fn map_error(map: &'static str) -> impl Fn(aya::maps::MapError) -> ReadError {
    move |e| ReadError::Map {
        map,
        source: Box::new(e),
    }
}

fn map_fd(ebpf: &Ebpf, name: &'static str) -> Result<RawFd, ReadError> {
    let data = match map(ebpf, name)? {
        aya::maps::Map::Array(data) | aya::maps::Map::PerCpuArray(data) => data,
        _ => return Err(ReadError::MissingMap(name)),
    };
    Ok(data.fd().as_fd().as_raw_fd())
}

fn batch_error(map: &'static str, call: &'static str) -> impl Fn(std::io::Error) -> ReadError {
    move |io_error| ReadError::Map {
        map,
        source: Box::new(aya::maps::MapError::SyscallError(aya::sys::SyscallError {
            call,
            io_error,
        })),
    }
}

/// The used slots of the counter table, and the counters summed over CPUs and over the slots
/// of one key (two CPUs may claim two slots for one new key at once).
type Stats = (Vec<(StatsKey, CacheStats)>, Vec<(u32, StatsKey)>);

fn read_stats(ebpf: &Ebpf) -> Result<Stats, ReadError> {
    let slots: Vec<(u32, StatsKey)> = bpf_batch::lookup_all(
        map_fd(ebpf, STATS_KEYS)?,
        1,
        |_: &u32, key: &StatsKey| key.cgroup_id != 0 && key.cache_id != 0,
        |key: &mut StatsKey, value: &StatsKey| *key = *value,
    )
    .map_err(batch_error(STATS_KEYS, "bpf_map_lookup_batch"))?;
    // Both reads come in slot order: match them up without a lookup table.
    let counters = bpf_batch::lookup_all(
        map_fd(ebpf, CGROUP_CACHE_STATS)?,
        kernel::possible_cpus(),
        |index: &u32, _: &CacheStats| slots.binary_search_by_key(index, |(i, _)| *i).is_ok(),
        CacheStats::add,
    )
    .map_err(batch_error(CGROUP_CACHE_STATS, "bpf_map_lookup_batch"))?;
    let mut stats: Vec<(StatsKey, CacheStats)> = counters
        .into_iter()
        .filter_map(|(index, counters)| {
            let at = slots.binary_search_by_key(&index, |(i, _)| *i).ok()?;
            Some((slots[at].1, counters))
        })
        .collect();
    stats.sort_unstable_by_key(|(key, _)| *key);
    stats.dedup_by(|(key, later), (first_key, first)| {
        let same = key == first_key;
        if same {
            first.add(later);
        }
        same
    });
    Ok((stats, slots))
}

/// Frees counter slots (of removed cgroups that hold nothing any more): counters first, then
/// the key, so that a new key claiming the slot starts from zero.
pub fn clear_stats_slots(ebpf: &Ebpf, slots: &[u32]) -> Result<(), ReadError> {
    bpf_batch::update_all(
        map_fd(ebpf, CGROUP_CACHE_STATS)?,
        slots,
        &CacheStats::default(),
        kernel::possible_cpus(),
    )
    .map_err(batch_error(CGROUP_CACHE_STATS, "bpf_map_update_batch"))?;
    let free = StatsKey {
        cgroup_id: 0,
        cache_id: 0,
    };
    bpf_batch::update_all(map_fd(ebpf, STATS_KEYS)?, slots, &free, 1)
        .map_err(batch_error(STATS_KEYS, "bpf_map_update_batch"))
}

fn read_counters(ebpf: &Ebpf) -> Result<GlobalCounters, ReadError> {
    let counters: PerCpuArray<&MapData, GlobalCounters> =
        PerCpuArray::try_from(map(ebpf, GLOBAL_COUNTERS)?).map_err(map_error(GLOBAL_COUNTERS))?;
    let per_cpu = counters.get(&0, 0).map_err(map_error(GLOBAL_COUNTERS))?;
    let mut sum = GlobalCounters::default();
    per_cpu.iter().for_each(|cpu| sum.add(cpu));
    Ok(sum)
}

fn read_cache_names(ebpf: &Ebpf) -> Result<HashMap<u64, String>, ReadError> {
    let names: BpfHashMap<&MapData, u64, CacheName> =
        BpfHashMap::try_from(map(ebpf, CACHE_NAMES)?).map_err(map_error(CACHE_NAMES))?;
    Ok(names
        .iter()
        .filter_map(Result::ok)
        .map(|(id, name)| (id, String::from_utf8_lossy(name.as_bytes()).into_owned()))
        .collect())
}
