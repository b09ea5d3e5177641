//! Reads the programs' counters: the slots in use only, in place (`mmap`), summed over CPUs.
//! The programs report each slot they claim, so a sample costs what is in use, not what the
//! tables could hold.
use std::{
    collections::{BTreeSet, HashMap},
    mem::offset_of,
};

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
};
use kmemcg_common::{
    CACHE_NAMES, CGROUP_CACHE_STATS, CacheKind, CacheName, CacheStats, GLOBAL_COUNTERS,
    GlobalCounters, LIMIT_BUDGETS, STATS_KEYS, STATS_SLOT_EVENTS, StatsKey,
};

use crate::{
    error::{ReadError, StartError},
    mapped::MappedArray,
};

/// The maps' content at one moment, summed over CPUs.
#[derive(Clone, Debug, Default)]
pub struct RawSnapshot {
    /// Counters per (cgroup, cache), summed over CPUs.
    pub stats: Vec<(StatsKey, CacheStats)>,
    /// Used slots of the counter table.
    pub stats_slots: Vec<(u32, StatsKey)>,
    pub counters: GlobalCounters,
}

/// Counters per key, and the used slots with their keys.
type Stats = (Vec<(StatsKey, CacheStats)>, Vec<(u32, StatsKey)>);

/// The counter tables, mapped, and what the agent knows of their use.
pub struct Collector {
    keys: MappedArray<StatsKey>,
    /// One block of `slots` per CPU.
    counters: MappedArray<CacheStats>,
    budgets: MappedArray<i64>,
    slots: usize,
    cpus: usize,
    slot_events: RingBuf<MapData>,
    /// Slots of the key table in use, in slot order.
    used: BTreeSet<u32>,
    /// `lost_slot_events` when the key table was last scanned; None before the first scan.
    scanned_at: Option<u64>,
    /// `struct kmem_cache` address -> name, of the caches seen so far.
    cache_names: HashMap<u64, String>,
    /// The ledger's slots: what the last recount found less what the hooks had counted.
    corrections: HashMap<u32, Correction>,
}

/// Objects and bytes a ledger slot's counters are off by: objects made before the hooks
/// attached (found by the recount) and objects freed without a free tracepoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Correction {
    pub objects: i64,
    pub bytes: i64,
}

impl Correction {
    fn apply(&self, stats: &mut CacheStats) {
        stats.live_objects += self.objects;
        stats.live_bytes += self.bytes;
    }
}

fn mapped<T: aya::Pod>(
    ebpf: &Ebpf,
    name: &'static str,
    len: usize,
) -> Result<MappedArray<T>, StartError> {
    let Some(aya::maps::Map::Array(data)) = ebpf.map(name) else {
        return Err(StartError::MissingMap(name));
    };
    MappedArray::new(data.fd(), len).map_err(|source| StartError::Mmap { map: name, source })
}

impl Collector {
    /// Maps the tables of `ebpf`, made with `slots` key slots for `cpus` CPUs.
    pub fn new(ebpf: &mut Ebpf, slots: usize, cpus: usize) -> Result<Self, StartError> {
        let slot_events = ebpf
            .take_map(STATS_SLOT_EVENTS)
            .ok_or(StartError::MissingMap(STATS_SLOT_EVENTS))
            .and_then(|map| {
                RingBuf::try_from(map)
                    .map_err(|e| StartError::Load(Box::new(aya::EbpfError::MapError(e))))
            })?;
        Ok(Self {
            keys: mapped(ebpf, STATS_KEYS, slots)?,
            counters: mapped(ebpf, CGROUP_CACHE_STATS, slots * cpus)?,
            budgets: mapped(ebpf, LIMIT_BUDGETS, kmemcg_common::MAX_WATCHED as usize)?,
            slots,
            cpus,
            slot_events,
            used: BTreeSet::new(),
            scanned_at: None,
            cache_names: HashMap::new(),
            corrections: HashMap::new(),
        })
    }

    /// Slots claimed since the last call (also learnt by the next [`Self::read`]).
    pub fn take_new_slots(&mut self) -> Vec<u32> {
        let mut new = Vec::new();
        while let Some(item) = self.slot_events.next() {
            if let Ok(bytes) = <[u8; 4]>::try_from(&item[..item.len().min(4)]) {
                let slot = u32::from_ne_bytes(bytes);
                if (slot as usize) < self.slots && self.used.insert(slot) {
                    new.push(slot);
                }
            }
        }
        new
    }

    pub fn read(&mut self, ebpf: &Ebpf) -> Result<RawSnapshot, ReadError> {
        let counters = read_counters(ebpf)?;
        self.take_new_slots();
        if self.scanned_at != Some(counters.lost_slot_events) {
            self.scan(self.scanned_at.is_none());
            self.scanned_at = Some(counters.lost_slot_events);
        }
        let (stats, stats_slots) = self.read_stats();
        self.learn_cache_names(ebpf, &stats)?;
        Ok(RawSnapshot {
            stats,
            stats_slots,
            counters,
        })
    }

    /// Finds the slots in use by scanning the key table: at start (slots claimed before, by
    /// the inventory or a previous agent whose maps are pinned) and when slot events were lost.
    /// At start, budgets a previous agent left are cleared.
    fn scan(&mut self, first: bool) {
        for slot in 0..self.slots {
            if self.keys.get(slot).is_some_and(|k| k.owner != 0) {
                self.used.insert(slot as u32);
                if first {
                    self.set_budgets(slot as u32, 0);
                }
            }
        }
    }

    /// The used slots' keys, and their counters summed over CPUs and over the slots of one
    /// key (two CPUs may claim two slots for one new key at once).
    fn read_stats(&mut self) -> Stats {
        let mut slots = Vec::with_capacity(self.used.len());
        let mut freed = Vec::new();
        for &slot in &self.used {
            match self.keys.get(slot as usize) {
                // A claim writes the owner first, the cache next and the cgroup last.
                Some(key) if key.owner != 0 && key.cache_id != 0 && key.cgroup_id != 0 => {
                    slots.push((slot, key))
                }
                Some(key) if key.owner == 0 => freed.push(slot),
                _ => {}
            }
        }
        for slot in freed {
            self.used.remove(&slot);
        }
        let mut stats: Vec<(StatsKey, CacheStats)> = slots
            .iter()
            .map(|&(slot, key)| {
                let mut sum = self.slot_sum(slot);
                if let Some(correction) = self.corrections.get(&slot) {
                    correction.apply(&mut sum);
                }
                if key.is_ledger() {
                    // The programs count a ledger slot's live figures only: all accounted.
                    sum.accounted_bytes = sum.live_bytes;
                    sum.accounted_objects = sum.live_objects;
                }
                // The ledger's slots (by obj_cgroup) and the table's (by cgroup) of one cgroup
                // and cache are one figure.
                (StatsKey::of_cgroup(key.cgroup_id, key.cache_id), sum)
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
        (stats, slots)
    }

    /// Names of slab caches not seen before. A name never changes for a cache id.
    fn learn_cache_names(
        &mut self,
        ebpf: &Ebpf,
        stats: &[(StatsKey, CacheStats)],
    ) -> Result<(), ReadError> {
        let unknown: Vec<u64> = stats
            .iter()
            .map(|(key, _)| key.cache_id)
            .filter(|id| matches!(CacheKind::of(*id), CacheKind::Slab(_)))
            .filter(|id| !self.cache_names.contains_key(id))
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        let map = ebpf
            .map(CACHE_NAMES)
            .ok_or(ReadError::MissingMap(CACHE_NAMES))?;
        let names: BpfHashMap<&MapData, u64, CacheName> =
            BpfHashMap::try_from(map).map_err(map_error(CACHE_NAMES))?;
        for id in unknown {
            // Recorded by the programs right after the key; absent only for a moment.
            if let Ok(name) = names.get(&id, 0) {
                let name = String::from_utf8_lossy(name.as_bytes()).into_owned();
                self.cache_names.insert(id, name);
            }
        }
        Ok(())
    }

    /// A slot's counters summed over CPUs.
    fn slot_sum(&self, slot: u32) -> CacheStats {
        let mut sum = CacheStats::default();
        for cpu in 0..self.cpus {
            if let Some(c) = self.counters.get(cpu * self.slots + slot as usize) {
                sum.add(&c);
            }
        }
        sum
    }

    /// The ledger's slots in use (counted from the kernel's owner records).
    /// A scan of the key table: the slot events are the sampler's to follow.
    pub fn ledger_slots(&self) -> Vec<u32> {
        (0..self.slots as u32)
            .filter(|&slot| self.keys.get(slot as usize).is_some_and(|k| k.is_ledger()))
            .collect()
    }

    /// Zeroes the shadow counters of `slots` on every CPU (before a recount).
    pub fn clear_shadows(&self, slots: &[u32]) {
        for &slot in slots {
            for cpu in 0..self.cpus {
                let index = cpu * self.slots + slot as usize;
                self.counters
                    .set_u64_at(index, offset_of!(CacheStats, shadow_objects), 0);
                self.counters
                    .set_u64_at(index, offset_of!(CacheStats, shadow_bytes), 0);
            }
        }
    }

    /// After a recount has walked every page: each ledger slot's correction becomes what the
    /// recount found less what the hooks counted. Returns the slots' corrections' sum.
    pub fn take_recount(&mut self) -> Correction {
        let mut total = Correction::default();
        for slot in self.ledger_slots() {
            let sum = self.slot_sum(slot);
            let correction = Correction {
                objects: sum.shadow_objects - sum.live_objects,
                bytes: sum.shadow_bytes - sum.live_bytes,
            };
            total.objects += correction.objects;
            total.bytes += correction.bytes;
            self.corrections.insert(slot, correction);
        }
        total
    }

    /// Frees counter slots (of removed cgroups that hold nothing any more): counters first,
    /// then the key, so that a new key claiming the slot starts from zero.
    pub fn clear_slots(&mut self, slots: &[u32]) {
        for &slot in slots {
            self.corrections.remove(&slot);
            for cpu in 0..self.cpus {
                self.counters
                    .set(cpu * self.slots + slot as usize, CacheStats::default());
            }
        }
        for &slot in slots {
            self.keys.set(slot as usize, StatsKey::default());
            self.used.remove(&slot);
        }
    }

    /// `struct kmem_cache` address -> name, of the caches in the last reading (and before).
    pub fn cache_names(&self) -> &HashMap<u64, String> {
        &self.cache_names
    }

    /// The key in `slot`, if it is claimed.
    pub fn key(&self, slot: u32) -> Option<StatsKey> {
        self.keys
            .get(slot as usize)
            .filter(|k| k.owner != 0 && k.cache_id != 0 && k.cgroup_id != 0)
    }

    /// Sets the budget indexes a slot's allocations spend from, on every CPU.
    pub fn set_budgets(&self, slot: u32, budgets: u64) {
        for cpu in 0..self.cpus {
            self.counters.set_u64_at(
                cpu * self.slots + slot as usize,
                offset_of!(CacheStats, budgets),
                budgets,
            );
        }
    }

    /// Sets what a watched cgroup may still allocate.
    pub fn set_budget(&self, index: u32, bytes: i64) {
        self.budgets.set(index as usize, bytes);
    }

    /// Takes `bytes` from a watched cgroup's budget, as the programs do: true when that took
    /// it below zero.
    pub fn spend_budget(&self, index: u32, bytes: i64) -> bool {
        self.budgets
            .fetch_add(index as usize, -bytes)
            .is_some_and(|before| before >= 0 && before < bytes)
    }

    /// Live bytes of a slot, summed over CPUs.
    pub fn slot_live_bytes(&self, slot: u32) -> i64 {
        let correction = self.corrections.get(&slot).map_or(0, |c| c.bytes);
        self.slot_sum(slot).live_bytes + correction
    }
}

pub(crate) fn map_error(map: &'static str) -> impl Fn(aya::maps::MapError) -> ReadError {
    move |e| ReadError::Map {
        map,
        source: Box::new(e),
    }
}

fn read_counters(ebpf: &Ebpf) -> Result<GlobalCounters, ReadError> {
    let map = ebpf
        .map(GLOBAL_COUNTERS)
        .ok_or(ReadError::MissingMap(GLOBAL_COUNTERS))?;
    let counters: PerCpuArray<&MapData, GlobalCounters> =
        PerCpuArray::try_from(map).map_err(map_error(GLOBAL_COUNTERS))?;
    let per_cpu = counters.get(&0, 0).map_err(map_error(GLOBAL_COUNTERS))?;
    let mut sum = GlobalCounters::default();
    per_cpu.iter().for_each(|cpu| sum.add(cpu));
    Ok(sum)
}
