//! Reads the programs' maps and sums the per-CPU values.
use std::{
    collections::HashMap,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray},
};
use kmemcg_common::{
    CACHE_NAMES, CGROUP_CACHE_STATS, CacheName, CacheStats, GLOBAL_COUNTERS, GlobalCounters,
    StatsKey,
};

use crate::{batch, error::ReadError, kernel};

/// The maps' content at one moment, summed over CPUs.
#[derive(Clone, Debug, Default)]
pub struct RawSnapshot {
    pub stats: Vec<(StatsKey, CacheStats)>,
    pub counters: GlobalCounters,
    /// `struct kmem_cache` address -> name.
    pub cache_names: HashMap<u64, String>,
}

pub fn read(ebpf: &Ebpf) -> Result<RawSnapshot, ReadError> {
    Ok(RawSnapshot {
        stats: read_stats(ebpf)?,
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

fn read_stats(ebpf: &Ebpf) -> Result<Vec<(StatsKey, CacheStats)>, ReadError> {
    let aya::maps::Map::PerCpuHashMap(data) = map(ebpf, CGROUP_CACHE_STATS)? else {
        return Err(ReadError::MissingMap(CGROUP_CACHE_STATS));
    };
    let fd = data.fd().as_fd().as_raw_fd();
    batch::lookup_all_per_cpu::<StatsKey, CacheStats>(fd, kernel::possible_cpus(), CacheStats::add)
        .map_err(|e| ReadError::Map {
            map: CGROUP_CACHE_STATS,
            source: Box::new(aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_lookup_batch",
                io_error: e,
            })),
        })
}

/// Deletes counter entries (of removed cgroups that hold nothing any more).
pub fn remove_stats(ebpf: &Ebpf, keys: &[StatsKey]) -> Result<(), ReadError> {
    let aya::maps::Map::PerCpuHashMap(data) = map(ebpf, CGROUP_CACHE_STATS)? else {
        return Err(ReadError::MissingMap(CGROUP_CACHE_STATS));
    };
    batch::delete_all(data.fd().as_fd().as_raw_fd(), keys).map_err(|e| ReadError::Map {
        map: CGROUP_CACHE_STATS,
        source: Box::new(aya::maps::MapError::SyscallError(aya::sys::SyscallError {
            call: "bpf_map_delete_batch",
            io_error: e,
        })),
    })
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
