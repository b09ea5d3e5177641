//! The walks: what kmemcg learns from the kernel's own records rather than from its hooks.
//! Right after the hooks attach, the inventory takes what was allocated before the start
//! ([`inventory`]); then the ledger's recount corrects the ledger now and then ([`recount`]),
//! and the sweep uncharges what was freed without a tracepoint ([`sweep`]). Their programs load
//! with the hooks (see [`crate::tracer::LoadedWalks`]); [`Truth`] takes them, with the maps
//! only they use, from the tracer once it has attached, and owns what the walks found.
use std::{collections::HashMap, ops::Range, os::fd::AsFd as _};

use aya::{
    maps::{Array, HashMap as BpfHashMap, Map, MapData},
    programs::ProgramFd,
};
use kmemcg_common::{
    CPU_OFFSET_PROGRAM, INVENTORY_PROGRAM, LEDGER_STATE, LedgerState, MEMCG_CGROUP_IDS,
    PERCPU_AREAS, PERCPU_CHUNKS, PERCPU_INVENTORY_PROGRAM, PERCPU_OFFSETS, PERCPU_POINTER_DELTA,
    SWEEP_PROGRAM, SWEEP_SHEAVES_PROGRAM, SlabLayout, TRUTH_COUNTERS, TruthCounters,
    VMAP_AREA_CACHE, VMAP_AREA_CACHE_NAME,
};

use crate::{
    api::{InventoryStatus, SweepStatus},
    collector::{Collector, map_error},
    error::ReadError,
    kernel::HostFacts,
    tracer::{LoadedWalks, Tracer},
};

mod inventory;
pub mod recount;
mod sweep;

use recount::{Recount, RecountStatus};
use sweep::Sweeper;

/// The programs the walks run (loaded, never attached).
const PROGRAMS: [&str; 5] = [
    INVENTORY_PROGRAM,
    PERCPU_INVENTORY_PROGRAM,
    SWEEP_PROGRAM,
    CPU_OFFSET_PROGRAM,
    SWEEP_SHEAVES_PROGRAM,
];

/// The maps only the walks use, taken from the tracer's object.
const MAPS: [&str; 8] = [
    TRUTH_COUNTERS,
    PERCPU_CHUNKS,
    PERCPU_OFFSETS,
    PERCPU_AREAS,
    PERCPU_POINTER_DELTA,
    VMAP_AREA_CACHE,
    MEMCG_CGROUP_IDS,
    LEDGER_STATE,
];

/// The walks' programs, maps and findings: the inventory's result, the sweep's thread and the
/// ledger's recount.
pub struct Truth {
    programs: HashMap<&'static str, ProgramFd>,
    maps: HashMap<&'static str, Map>,
    /// The slab layout the inventory and the sweep run with, or why they cannot run here.
    slab_walk: Result<SlabLayout, String>,
    /// Whether the inventory can read percpu chunks' owner records here, or why not.
    percpu_walk: Result<(), String>,
    /// Whether the sweep can look at slab sheaves, or why not.
    sheaves: Result<(), String>,
    /// CPUs whose freelists the sweep looks at, or why none.
    cpu_freelists: Result<usize, String>,
    /// Whether the sweep was told which cache holds `vmap_area` objects.
    vmap_area_cache_known: bool,
    inventory: InventoryStatus,
    /// Accounted slab objects are counted in the ledger (see [`Tracer::ledger`]).
    ledger: bool,
    /// Slots of the live-object table.
    live_slots: u32,
    /// Page frame ranges of the memory zones, which the inventory and the recount walk.
    pfn_ranges: Vec<Range<u64>>,
    sweeper: Sweeper,
    /// The ledger's periodic recount (None when the ledger is off).
    recount: Option<Recount>,
}

impl Truth {
    /// Takes the walk programs and their maps from `tracer`, whose hooks are attached, finds
    /// the CPUs' percpu offsets, takes the inventory of what was allocated before the start,
    /// then starts the sweep and the ledger's recount.
    pub fn start(tracer: &mut Tracer, host: &HostFacts) -> Self {
        let LoadedWalks {
            slab_walk,
            percpu_walk,
            sheaves,
        } = tracer.take_walks();
        let programs = PROGRAMS
            .into_iter()
            .filter_map(|name| Some((name, tracer.program_fd(name).ok()?)))
            .collect();
        let maps = MAPS
            .into_iter()
            .filter_map(|name| Some((name, tracer.take_map(name)?)))
            .collect();
        let mut truth = Self {
            programs,
            maps,
            slab_walk,
            percpu_walk,
            sheaves,
            cpu_freelists: Err("not looked for yet".into()),
            vmap_area_cache_known: false,
            inventory: InventoryStatus::default(),
            ledger: tracer.ledger(),
            live_slots: tracer.config().max_objects.next_power_of_two(),
            pfn_ranges: host.pfn_ranges.clone().unwrap_or_default(),
            sweeper: Sweeper::default(),
            recount: None,
        };
        truth.cpu_freelists = sweep::find_cpu_offsets(&mut truth);
        tracing::info!("taking the inventory of objects allocated before start");
        truth.inventory = inventory::run(&mut truth, tracer.collector_mut(), &host.cgroups);
        truth.sweeper = Sweeper::start(&truth);
        truth.recount = Recount::new(&truth);
        truth
    }

    /// What the inventory at start found.
    pub fn inventory(&self) -> &InventoryStatus {
        &self.inventory
    }

    /// What the sweep did so far (`counters`: [`Self::counters`]).
    pub fn sweep_status(&self, counters: &TruthCounters) -> SweepStatus {
        self.sweeper.status(self, counters)
    }

    /// What the ledger's recounts did, when the ledger is on.
    pub fn recount_status(&self) -> Option<&RecountStatus> {
        self.recount.as_ref().map(Recount::status)
    }

    /// Takes the result of a finished recount, or starts one when it is due.
    pub fn poll_recount(&mut self, collector: &mut Collector) {
        if let Some(mut recount) = self.recount.take() {
            recount.poll(self, collector);
            self.recount = Some(recount);
        }
    }

    /// Tells the sweep of the caches charged so far (`collector`'s cache names).
    pub fn learn_caches(&mut self, collector: &Collector) {
        self.sweeper.learn_caches(collector.cache_names().keys());
        self.tell_vmap_area_cache(collector);
    }

    /// Tells the sweep which cache holds `vmap_area` objects once a cache of that name has
    /// been charged (see kmemcg-ebpf's `truth::vmalloc`); once told, does nothing.
    fn tell_vmap_area_cache(&mut self, collector: &Collector) {
        if self.vmap_area_cache_known {
            return;
        }
        let Some(&cache) = collector
            .cache_names()
            .iter()
            .find_map(|(id, name)| (name == VMAP_AREA_CACHE_NAME).then_some(id))
        else {
            return;
        };
        match self.write_u64_array(VMAP_AREA_CACHE, &[cache]) {
            Ok(()) => self.vmap_area_cache_known = true,
            Err(e) => tracing::warn!(error = %e, "the sweep will not look at vmap_area objects"),
        }
    }

    /// Why the inventory and the sweep cannot run on this kernel, if they cannot.
    fn slab_walk_unavailable(&self) -> Option<&str> {
        self.slab_walk.as_ref().err().map(String::as_str)
    }

    /// Why the inventory cannot read percpu owner records on this kernel, if it cannot.
    fn percpu_walk_unavailable(&self) -> Option<&str> {
        self.percpu_walk.as_ref().err().map(String::as_str)
    }

    fn slab_layout(&self) -> Option<&SlabLayout> {
        self.slab_walk.as_ref().ok()
    }

    /// How many CPUs' freelists the sweep looks at, or why none.
    fn cpu_freelists(&self) -> Result<usize, &str> {
        if self.slab_layout().is_some_and(|l| l.cpu_slabs == 0) {
            return Err(
                "this kernel's caches have no CPU slabs (Linux 7.0+): their free \
                        objects wait in sheaves, which the sweep looks at",
            );
        }
        self.cpu_freelists.as_ref().copied().map_err(String::as_str)
    }

    /// Whether the sweep can look at slab sheaves, or why not.
    fn sheaves(&self) -> Result<(), &str> {
        self.sheaves.as_ref().copied().map_err(String::as_str)
    }

    /// A file descriptor of a walk program, for a thread of its own.
    fn program_fd(&self, program: &'static str) -> Result<ProgramFd, ReadError> {
        self.programs
            .get(program)
            .ok_or(ReadError::MissingProgram(program))?
            .try_clone()
            .map_err(|e| ReadError::ProgramFd {
                program,
                reason: e.to_string(),
            })
    }

    /// Runs a walk program once with these arguments.
    fn run(&self, program: &'static str, args: &[u64]) -> Result<u32, ReadError> {
        self.run_on(program, args, None)
    }

    /// Runs a walk program once, on `cpu` if given.
    fn run_on(
        &self,
        program: &'static str,
        args: &[u64],
        cpu: Option<u32>,
    ) -> Result<u32, ReadError> {
        let fd = self
            .programs
            .get(program)
            .ok_or(ReadError::MissingProgram(program))?;
        crate::test_run::run_program(program, fd.as_fd(), args, cpu)
    }

    fn map(&self, name: &'static str) -> Result<&Map, ReadError> {
        self.maps.get(name).ok_or(ReadError::MissingMap(name))
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut Map, ReadError> {
        self.maps.get_mut(name).ok_or(ReadError::MissingMap(name))
    }

    /// What the inventory and the sweep did so far.
    pub fn counters(&self) -> Result<TruthCounters, ReadError> {
        let array: Array<&MapData, TruthCounters> =
            Array::try_from(self.map(TRUTH_COUNTERS)?).map_err(map_error(TRUTH_COUNTERS))?;
        array.get(&0, 0).map_err(map_error(TRUTH_COUNTERS))
    }

    /// The percpu chunks the inventory's page walk found: (address, owner-vector entries).
    fn percpu_chunks(&self) -> Result<Vec<(u64, u64)>, ReadError> {
        let chunks: BpfHashMap<&MapData, u64, u64> =
            BpfHashMap::try_from(self.map(PERCPU_CHUNKS)?).map_err(map_error(PERCPU_CHUNKS))?;
        chunks
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_error(PERCPU_CHUNKS))
    }

    /// An array map of u64 of the walk programs, as a vector by index.
    fn read_u64_array(&self, name: &'static str) -> Result<Vec<u64>, ReadError> {
        let array: Array<&MapData, u64> =
            Array::try_from(self.map(name)?).map_err(map_error(name))?;
        array
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_error(name))
    }

    /// Writes `values` at indexes 0.. of an array map of u64 of the walk programs.
    fn write_u64_array(&mut self, name: &'static str, values: &[u64]) -> Result<(), ReadError> {
        let mut array: Array<&mut MapData, u64> =
            Array::try_from(self.map_mut(name)?).map_err(map_error(name))?;
        for (index, value) in values.iter().enumerate() {
            array.set(index as u32, value, 0).map_err(map_error(name))?;
        }
        Ok(())
    }

    /// Tells the inventory which cgroup v2 id to charge for each memory cgroup (by the memory
    /// cgroup's id); needed where the memory controller is on cgroup v1.
    fn set_memcg_cgroup_ids(&mut self, pairs: &[(u64, u64)]) -> Result<(), ReadError> {
        let mut ids: BpfHashMap<&mut MapData, u64, u64> =
            BpfHashMap::try_from(self.map_mut(MEMCG_CGROUP_IDS)?)
                .map_err(map_error(MEMCG_CGROUP_IDS))?;
        for (memcg, cgroup) in pairs {
            ids.insert(memcg, cgroup, 0)
                .map_err(map_error(MEMCG_CGROUP_IDS))?;
        }
        Ok(())
    }

    /// Sets the page frame below which the ledger's recount has counted (0: no recount).
    fn set_recount_cursor(&mut self, cursor: u64) -> Result<(), ReadError> {
        let mut state: Array<&mut MapData, LedgerState> =
            Array::try_from(self.map_mut(LEDGER_STATE)?).map_err(map_error(LEDGER_STATE))?;
        let mut value = state.get(&0, 0).map_err(map_error(LEDGER_STATE))?;
        value.recount_cursor = cursor;
        state.set(0, value, 0).map_err(map_error(LEDGER_STATE))
    }
}
