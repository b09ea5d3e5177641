//! Loads kmemcg's eBPF programs with this kernel's layout and attaches them to the hooks
//! ([`kmemcg_common::HOOKS`]).
use std::{collections::HashMap, os::fd::AsFd as _, path::PathBuf};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, MapData, RingBuf},
    programs::{BtfTracePoint, ProgramFd, RawTracePoint},
};
use kmemcg_common::{
    CGROUP_CACHE_STATS, CGROUP_EVENTS, CPU_OFFSET_PROGRAM, CgroupEvent, HOOKS, Hook, HookKind,
    INVENTORY_PROGRAM, LEDGER_STATE, LIMIT_EVENTS, LIVE_OBJECTS, LedgerState,
    PERCPU_INVENTORY_PROGRAM, PERCPU_LAYOUT, RootCgroupMode, SLAB_LAYOUT, STATS_KEYS,
    SWEEP_PROGRAM, SWEEP_SHEAVES_PROGRAM, SlabLayout, StatsKey, VMALLOC_LAYOUT, VmallocLayout,
    globals,
    zombies::{KERNEL_MEMCGS_PROGRAM, MEMCG_LAYOUT, MEMCG_LRU_PROGRAM},
};

use crate::{
    collector::{Collector, RawSnapshot, map_error},
    error::{ReadError, StartError},
    kernel::{
        self, HostFacts,
        btf::KernelLayout,
        caps,
        cgroupfs::CgroupMounts,
        kallsyms::KernelAddresses,
        memcg_layout::{self, MemcgFacts},
        percpu_layout, slab_layout, vmalloc_layout,
    },
    pin::{self, PinnedMaps},
};

/// The eBPF object, built by build.rs and embedded so that one binary is all there is to ship.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/kmemcg-ebpf"));

/// Default capacity of the live-object table: 2^20 slots of 16 bytes (a [`kmemcg_common::LiveObject`]
/// each: 16 MiB of kernel memory).
/// An object takes one of the 8 slots its address hashes to, so the table holds about 80% of
/// its slots before allocations start being dropped.
pub const DEFAULT_MAX_OBJECTS: u32 = 1 << 20;
/// Kernel memory the (cgroup, cache) counter table gets by default. A slot costs 16 + 56 x
/// CPUs bytes (key and per-CPU counters); a cgroup uses one slot per cache it allocates from
/// (typically 10 to 40).
pub const STATS_MEMORY_BUDGET: usize = 16 << 20;

/// Default slots of the counter table on this machine: the largest power of two within
/// [`STATS_MEMORY_BUDGET`], between 8,192 and 262,144 (131,072 with 2 CPUs, 8,192 with 64).
pub fn default_max_stats() -> u32 {
    let per_slot = size_of::<kmemcg_common::StatsKey>()
        + size_of::<kmemcg_common::CacheStats>() * kernel::possible_cpus();
    let fits = (STATS_MEMORY_BUDGET / per_slot).max(1);
    let power_of_two = 1usize << (usize::BITS - 1 - fits.leading_zeros());
    power_of_two.clamp(8192, 1 << 18) as u32
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TracerConfig {
    /// Slots of the live-object table (rounded up to a power of two).
    pub max_objects: u32,
    /// Capacity of the (cgroup, cache) counter map.
    pub max_stats: u32,
    pub root_mode: RootCgroupMode,
    /// Pin the live-object and counter maps under this bpffs directory and reuse what a
    /// previous agent pinned there (see [`crate::pin`]); `None`: maps die with the agent.
    pub pin_dir: Option<PathBuf>,
    /// Count accounted slab objects from the kernel's owner records (see
    /// [`kmemcg_common::LEDGER_STATE`]) where the kernel allows it, rather than one live-object
    /// entry each.
    pub ledger: bool,
}

impl Default for TracerConfig {
    fn default() -> Self {
        Self {
            max_objects: DEFAULT_MAX_OBJECTS,
            max_stats: default_max_stats(),
            root_mode: RootCgroupMode::Count,
            pin_dir: None,
            ledger: true,
        }
    }
}

/// What loading the walk programs (inventory, sweep, sheaves, CPU offsets; see
/// [`crate::truth`]) gave: they load with the hooks, since the ledger is on only if the
/// inventory program loaded, and their own owner runs them once the hooks are attached.
pub struct LoadedWalks {
    /// The slab layout the inventory and the sweep run with, or why they cannot run here.
    pub slab_walk: Result<SlabLayout, String>,
    /// Whether the inventory can read percpu chunks' owner records here, or why not.
    pub percpu_walk: Result<(), String>,
    /// Whether the sweep can look at slab sheaves, or why not.
    pub sheaves: Result<(), String>,
}

/// Loaded and attached programs; detached when dropped.
pub struct Tracer {
    ebpf: Ebpf,
    config: TracerConfig,
    /// Accounted slab objects are counted in the ledger.
    ledger: bool,
    hooks: Vec<String>,
    /// Hooks attached as plain raw tracepoints (see [`attach_hooks`]).
    raw_hooks: Vec<String>,
    /// The cgroup mounts, whose v2 ids the programs record.
    cgroups: CgroupMounts,
    cgroup_events: RingBuf<MapData>,
    /// Budgets taken below zero (see [`crate::watch`]).
    limit_events: RingBuf<MapData>,
    collector: Collector,
    /// The walk programs' load results, until handed over (see [`Self::take_walks`]).
    walks: Option<LoadedWalks>,
    /// The kernel addresses the programs were loaded with, or why one is unknown.
    addresses: KernelAddresses,
    /// The layout the walk of the kernel's memory cgroups runs with, or why it cannot run.
    kernel_memcgs: Result<MemcgFacts, String>,
    /// Dropped after `ebpf` (field order): the lock outlives the attached programs.
    pinned: Option<PinnedMaps>,
}

impl Tracer {
    /// Checks privileges and the kernel, then loads and attaches every program.
    pub fn start(config: TracerConfig, host: &HostFacts) -> Result<Self, StartError> {
        caps::check_can_trace()?;
        let vmlinux = kernel::btf::running_kernel()?;
        let layout = KernelLayout::from_btf(&vmlinux)?;
        let cgroups = host.cgroups.clone();
        let root_cgroup_id = cgroups.root_id;
        if EBPF_OBJECT.is_empty() {
            return Err(StartError::NoProgramsEmbedded);
        }
        let started = std::time::Instant::now();
        tracing::info!("loading the eBPF programs (the kernel verifies them: a few seconds)");
        let live_slots = config.max_objects.next_power_of_two();
        let live_slot_mask = live_slots - 1;
        let stats_slots = config.max_stats.next_power_of_two();
        let stats_slot_mask = stats_slots - 1;
        let possible_cpus = kernel::possible_cpus() as u64;
        let pinned = match &config.pin_dir {
            Some(dir) => Some(pin::open(
                dir,
                pin::Capacities {
                    live_slots,
                    stats_slots,
                    cpus: possible_cpus as u32,
                },
            )?),
            None => None,
        };
        let root_mode = config.root_mode as u32;
        let addresses = host.addresses.clone();
        let obj_exts_allocator = addresses
            .owner_vector_allocator
            .clone()
            .unwrap_or_else(|why| {
                tracing::warn!(
                    why,
                    "slab owner-record vectors are charged to the cgroup whose allocation needed \
                 a new slab"
                );
                0..0
            });
        let slab_walk = slab_layout::from_running_kernel(
            &vmlinux,
            &addresses.memory_map_bases,
            &host.pfn_ranges,
        );
        let slab_layout_global = slab_walk.clone().unwrap_or_default();
        let percpu_walk = slab_walk
            .clone()
            .and_then(|_| percpu_layout::from_btf(&vmlinux));
        let percpu_layout_global = percpu_walk.clone().unwrap_or_default();
        let vmalloc_layout = vmalloc_layout::from_btf(&vmlinux).unwrap_or_else(|why| {
            tracing::info!(why, "the sweep will not look at vmap_area objects");
            VmallocLayout::default()
        });
        let kernel_memcgs = memcg_layout::from_btf(
            &vmlinux,
            &host.kallsyms,
            possible_cpus,
            memcg_layout::possible_nodes(),
        );
        let memcg_layout_global = kernel_memcgs
            .as_ref()
            .map(|facts| facts.layout)
            .unwrap_or_default();
        let kmalloc_cg_unpadded = u32::from(crate::slab_names::kmalloc_cg_without_red_zones());
        let mut loader = EbpfLoader::new();
        if let Some(pinned) = &pinned {
            for map in pin::PINNED_MAPS {
                loader.map_pin_path(map.name, pinned.map_path(map.name));
            }
        }
        let mut ebpf = loader
            .override_global(globals::ROOT_CGROUP_MODE, &root_mode, true)
            .override_global(globals::ROOT_CGROUP_ID, &root_cgroup_id, true)
            .override_global(globals::GFP_ACCOUNT, &layout.gfp_account, true)
            .override_global(globals::SLAB_ACCOUNT, &layout.slab_account, true)
            .override_global(
                globals::KMEM_CACHE_FLAGS_OFFSET,
                &layout.kmem_cache_flags_offset,
                true,
            )
            .override_global(
                globals::KMEM_CACHE_SIZE_OFFSET,
                &layout.kmem_cache_size_offset,
                true,
            )
            .override_global(globals::KMALLOC_CG_UNPADDED, &kmalloc_cg_unpadded, true)
            .override_global(
                globals::KMEM_CACHE_NAME_OFFSET,
                &layout.kmem_cache_name_offset,
                true,
            )
            .override_global(globals::POSSIBLE_CPUS, &possible_cpus, true)
            .override_global(
                globals::OBJ_EXTS_ALLOCATOR_START,
                &obj_exts_allocator.start,
                true,
            )
            .override_global(
                globals::OBJ_EXTS_ALLOCATOR_SIZE,
                &(obj_exts_allocator.end - obj_exts_allocator.start),
                true,
            )
            .override_global(globals::CGROUP_KN_OFFSET, &layout.cgroup_kn_offset, true)
            .override_global(
                globals::CGROUP_ROOT_OFFSET,
                &layout.cgroup_root_offset,
                true,
            )
            .override_global(
                globals::KERNFS_NODE_ID_OFFSET,
                &layout.kernfs_node_id_offset,
                true,
            )
            .override_global(
                globals::CGROUP_ROOT_HIERARCHY_ID_OFFSET,
                &layout.cgroup_root_hierarchy_id_offset,
                true,
            )
            .override_global(SLAB_LAYOUT, &slab_layout_global, true)
            .override_global(PERCPU_LAYOUT, &percpu_layout_global, true)
            .override_global(VMALLOC_LAYOUT, &vmalloc_layout, true)
            .override_global(MEMCG_LAYOUT, &memcg_layout_global, true)
            .override_global(globals::LIVE_SLOT_MASK, &live_slot_mask, true)
            .override_global(globals::STATS_SLOT_MASK, &stats_slot_mask, true)
            .map_max_entries(STATS_KEYS, stats_slots)
            .map_max_entries(LIVE_OBJECTS, live_slots)
            .map_max_entries(CGROUP_CACHE_STATS, stats_slots * possible_cpus as u32)
            .load(EBPF_OBJECT)
            .map_err(StartError::from_load)?;
        let unavailable: Vec<&str> = HOOKS
            .iter()
            .filter(|h| {
                h.kind == HookKind::Vmalloc && !kernel::btf::hook_available(&vmlinux, h.name)
            })
            .map(|h| h.name)
            .collect();
        drop(vmlinux);
        let with_sheaves = slab_walk
            .as_ref()
            .is_ok_and(|layout| layout.sheaves.present != 0);
        let mut loaded = match &slab_walk {
            Ok(_) => load_walk_programs(&mut ebpf, with_sheaves),
            Err(_) => HashMap::new(),
        };
        // The ledger needs its recount; it is on from the hooks' first event or not at all,
        // so that an object's allocation and its free are counted the same way.
        let ledger = config.ledger && matches!(loaded.get(INVENTORY_PROGRAM), Some(Ok(())));
        set_ledger_state(&mut ebpf, ledger)?;
        let AttachedHooks {
            tracepoints: hooks,
            raw: raw_hooks,
        } = attach_hooks(&mut ebpf, &unavailable)?;
        let mut take = |name: &str| {
            loaded
                .remove(name)
                .unwrap_or_else(|| Err(format!("the {name} program was not loaded")))
        };
        let slab_walk = slab_walk.and_then(|layout| {
            for name in [
                INVENTORY_PROGRAM,
                PERCPU_INVENTORY_PROGRAM,
                SWEEP_PROGRAM,
                CPU_OFFSET_PROGRAM,
            ] {
                take(name)?;
            }
            Ok(layout)
        });
        // The percpu step runs with the slab walk's programs, or not at all.
        let percpu_walk = match (&slab_walk, percpu_walk) {
            (Err(why), _) => Err(why.clone()),
            (Ok(_), percpu) => percpu.map(|_| ()),
        };
        let sheaves = match &slab_walk {
            Ok(_) if with_sheaves => take(SWEEP_SHEAVES_PROGRAM),
            Ok(_) => Err(
                "this kernel has no slab sheaves, or its BTF lacks their layout (see \
                          the agent's log)"
                    .into(),
            ),
            Err(why) => Err(why.clone()),
        };
        let kernel_memcgs = kernel_memcgs.and_then(|facts| {
            for name in [KERNEL_MEMCGS_PROGRAM, MEMCG_LRU_PROGRAM] {
                let program = ebpf
                    .program_mut(name)
                    .ok_or_else(|| format!("the {name} program is not in the object"))?;
                load_program(name, program)?;
            }
            Ok(facts)
        });
        let cgroup_events = take_ring(&mut ebpf, CGROUP_EVENTS)?;
        let limit_events = take_ring(&mut ebpf, LIMIT_EVENTS)?;
        let collector = Collector::new(&mut ebpf, stats_slots as usize, possible_cpus as usize)?;
        tracing::info!(
            seconds = %format!("{:.1}", started.elapsed().as_secs_f64()),
            hooks = hooks.len(),
            root_mode = %config.root_mode.as_str(),
            "eBPF programs verified and attached"
        );
        if let Some(p) = &pinned {
            tracing::info!(dir = %p.dir().display(), reused = %p.reused().join(","), "maps pinned");
        }
        Ok(Self {
            ebpf,
            config,
            hooks,
            raw_hooks,
            cgroups,
            cgroup_events,
            limit_events,
            collector,
            walks: Some(LoadedWalks {
                slab_walk,
                percpu_walk,
                sheaves,
            }),
            ledger,
            addresses,
            kernel_memcgs,
            pinned,
        })
    }

    /// Hands over the walk programs' load results (once; later calls say they were taken).
    pub fn take_walks(&mut self) -> LoadedWalks {
        self.walks.take().unwrap_or_else(|| {
            let taken = "the walk programs were handed over already".to_string();
            LoadedWalks {
                slab_walk: Err(taken.clone()),
                percpu_walk: Err(taken.clone()),
                sheaves: Err(taken),
            }
        })
    }

    /// True when accounted slab objects are counted from the kernel's owner records.
    pub fn ledger(&self) -> bool {
        self.ledger
    }

    pub fn collector_mut(&mut self) -> &mut Collector {
        &mut self.collector
    }

    /// The kernel addresses the programs were loaded with, or why one is unknown.
    pub fn kernel_addresses(&self) -> &KernelAddresses {
        &self.addresses
    }

    /// Takes a map of the programs for a module that owns it from then on (leak recording).
    pub fn take_map(&mut self, name: &str) -> Option<aya::maps::Map> {
        self.ebpf.take_map(name)
    }

    /// The layout the walk of the kernel's memory cgroups runs with, or why it cannot run.
    pub fn kernel_memcgs(&self) -> Result<&MemcgFacts, &str> {
        self.kernel_memcgs.as_ref().map_err(String::as_str)
    }

    /// The first `count` values of an array map.
    pub fn read_array<T: aya::Pod>(
        &self,
        name: &'static str,
        count: u32,
    ) -> Result<Vec<T>, ReadError> {
        let map = self.ebpf.map(name).ok_or(ReadError::MissingMap(name))?;
        let array: Array<&MapData, T> = Array::try_from(map).map_err(map_error(name))?;
        (0..count.min(array.len()))
            .map(|index| array.get(&index, 0).map_err(map_error(name)))
            .collect()
    }

    /// Runs a loaded, unattached raw tracepoint program once with these arguments.
    pub fn run_program(&self, program: &'static str, args: &[u64]) -> Result<u32, ReadError> {
        let fd = self
            .raw_program(program)?
            .fd()
            .map_err(|e| ReadError::ProgramFd {
                program,
                reason: e.to_string(),
            })?;
        crate::test_run::run_program(program, fd.as_fd(), args, None)
    }

    /// A loaded (not attached) raw tracepoint program.
    fn raw_program(&self, program: &'static str) -> Result<&RawTracePoint, ReadError> {
        self.ebpf
            .program(program)
            .ok_or(ReadError::MissingProgram(program))?
            .try_into()
            .map_err(|_| ReadError::MissingProgram(program))
    }

    /// A file descriptor of a loaded program, for an owner of its own.
    pub fn program_fd(&self, program: &'static str) -> Result<ProgramFd, ReadError> {
        self.raw_program(program)?
            .fd()
            .and_then(|fd| fd.try_clone().map_err(Into::into))
            .map_err(|e| ReadError::ProgramFd {
                program,
                reason: e.to_string(),
            })
    }

    /// Kernel BPF statistics of the programs: (run time in ns, runs).
    pub fn program_stats(&self) -> (u64, u64) {
        program_stats(&self.ebpf)
    }

    /// Kernel BPF statistics of each program: (name, run time in ns, runs).
    pub fn program_stats_by_name(&self) -> Vec<(String, u64, u64)> {
        program_stats_by_name(&self.ebpf)
    }

    /// cgroup tree changes reported since the last call, in order.
    pub fn take_cgroup_events(&mut self) -> Vec<CgroupEvent> {
        let mut events = Vec::new();
        while let Some(item) = self.cgroup_events.next() {
            if item.len() >= std::mem::size_of::<CgroupEvent>() {
                // SAFETY: the programs submit whole CgroupEvents; read unaligned from the ring.
                events
                    .push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<CgroupEvent>()) });
            }
        }
        events
    }

    /// Reads and sums the counters in use.
    pub fn read(&mut self) -> Result<RawSnapshot, ReadError> {
        self.collector.read(&self.ebpf)
    }

    /// Counter slots claimed since the last call, with their keys.
    pub fn take_new_slots(&mut self) -> Vec<(u32, StatsKey)> {
        let slots = self.collector.take_new_slots();
        slots
            .into_iter()
            .filter_map(|slot| Some((slot, self.collector.key(slot)?)))
            .collect()
    }

    /// Frees the counter slots of removed cgroups that hold nothing.
    pub fn clear_stats_slots(&mut self, slots: &[u32]) {
        self.collector.clear_slots(slots)
    }

    pub fn collector(&self) -> &Collector {
        &self.collector
    }

    /// The ring buffer the programs write to when a limit budget goes below zero: readable
    /// means "sample now".
    pub fn limit_events_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd as _;
        self.limit_events.as_fd()
    }

    /// Empties [`Self::limit_events_fd`]: how many budgets went below zero since the last call.
    pub fn take_limit_events(&mut self) -> usize {
        let mut count = 0;
        while self.limit_events.next().is_some() {
            count += 1;
        }
        count
    }

    pub fn config(&self) -> &TracerConfig {
        &self.config
    }

    /// Tracepoints the programs are attached to.
    pub fn hooks(&self) -> &[String] {
        &self.hooks
    }

    /// The hooks attached as plain raw tracepoints.
    pub fn raw_hooks(&self) -> &[String] {
        &self.raw_hooks
    }

    /// The pinned maps' directory, when pinning.
    pub fn pinned(&self) -> Option<&PinnedMaps> {
        self.pinned.as_ref()
    }

    /// Where the cgroup v2 hierarchy whose ids the programs record is mounted.
    pub fn cgroup2_mount(&self) -> &std::path::Path {
        &self.cgroups.cgroup2
    }

    /// The cgroup mounts the programs were loaded for.
    pub fn cgroups(&self) -> &CgroupMounts {
        &self.cgroups
    }
}

/// Loads (without attaching: the agent runs them) the inventory and sweep programs, and the
/// sheaves program if asked (2.6 s of verification one after the other on the test VM, the
/// inventory's and the sweep's most).
fn load_walk_programs(
    ebpf: &mut Ebpf,
    with_sheaves: bool,
) -> HashMap<&'static str, Result<(), String>> {
    let mut names = vec![
        INVENTORY_PROGRAM,
        PERCPU_INVENTORY_PROGRAM,
        SWEEP_PROGRAM,
        CPU_OFFSET_PROGRAM,
    ];
    if with_sheaves {
        names.push(SWEEP_SHEAVES_PROGRAM);
    }
    verify_in_parallel(ebpf, &names, load_program, |name| {
        format!("loading the {name} program panicked")
    })
}

/// Runs `load` on each named program of the object, each in a thread of its own: the
/// kernel's verifier is most of the start.
fn verify_in_parallel<E: Send>(
    ebpf: &mut Ebpf,
    names: &[&'static str],
    load: impl Fn(&'static str, &mut aya::programs::Program) -> Result<(), E> + Sync,
    panicked: impl Fn(&'static str) -> E,
) -> HashMap<&'static str, Result<(), E>> {
    let programs: Vec<_> = ebpf
        .programs_mut()
        .filter_map(|(name, program)| Some((*names.iter().find(|n| **n == name)?, program)))
        .collect();
    let load = &load;
    std::thread::scope(|scope| {
        let loads: Vec<_> = programs
            .into_iter()
            .map(|(name, program)| (name, scope.spawn(move || load(name, program))))
            .collect();
        loads
            .into_iter()
            .map(|(name, load)| (name, load.join().unwrap_or_else(|_| Err(panicked(name)))))
            .collect()
    })
}

fn load_program(name: &'static str, program: &mut aya::programs::Program) -> Result<(), String> {
    let program: &mut RawTracePoint = program.try_into().map_err(|e| format!("{name}: {e}"))?;
    program.load().map_err(|e| {
        tracing::warn!(program = name, error = %e, "the kernel refused a program");
        format!("the kernel refused the {name} program: {e}")
    })
}

/// The hooks attached, by tracepoint name, and those attached through their plain raw
/// tracepoint program because the verifier refused the BTF-typed one.
pub(crate) struct AttachedHooks {
    pub tracepoints: Vec<String>,
    pub raw: Vec<String>,
}

/// Attaches the programs named in [`HOOKS`] to their tracepoints, frees first: an object
/// allocated while the alloc hooks attach must not miss its free. Programs the object does not
/// have (the benchmark's empty programs have only the memory hooks), and vmalloc hooks whose
/// tracepoint this kernel lacks, are skipped. A BTF-typed program the verifier refuses is
/// replaced by its plain raw tracepoint twin where it has one.
pub(crate) fn attach_hooks(
    ebpf: &mut Ebpf,
    unavailable: &[&str],
) -> Result<AttachedHooks, StartError> {
    let btf = Btf::from_sys_fs().map_err(|e| StartError::BadBtf {
        what: "aya's BTF parser".into(),
        reason: e.to_string(),
    })?;
    let memory = HOOKS.iter().filter(|h| h.kind == HookKind::Memory).rev();
    let others = HOOKS.iter().filter(|h| h.kind != HookKind::Memory);
    let mut hooks: Vec<&'static Hook> = Vec::new();
    for hook in memory.chain(others) {
        if hook.kind != HookKind::Memory && ebpf.program(hook.name).is_none() {
            continue;
        }
        if hook.kind == HookKind::Vmalloc && unavailable.contains(&hook.name) {
            tracing::info!(
                hook = hook.name,
                "no such tracepoint here: the sweep will not look at vmap_area objects"
            );
            continue;
        }
        hooks.push(hook);
    }
    let names: Vec<&'static str> = hooks.iter().map(|h| h.name).collect();
    let mut verified = verify_hooks(ebpf, &names, &btf);
    let fallbacks: Vec<&'static str> = hooks
        .iter()
        .filter(|h| matches!(verified.get(h.name), Some(Err(_))))
        .filter_map(|h| h.raw_fallback)
        .filter(|raw| ebpf.program(raw).is_some())
        .collect();
    let mut fallbacks_verified = verify_in_parallel(ebpf, &fallbacks, load_program, |name| {
        format!("loading the {name} program panicked")
    });
    let mut attached = AttachedHooks {
        tracepoints: Vec::new(),
        raw: Vec::new(),
    };
    for hook in hooks {
        let refused = match verified.remove(hook.name) {
            Some(Ok(())) => {
                attach(ebpf, hook.name)?;
                attached.tracepoints.push(hook.name.into());
                continue;
            }
            Some(Err(refused)) => refused,
            None => StartError::HookMissing {
                hook: hook.name.into(),
            },
        };
        let Some(raw) = hook.raw_fallback else {
            return Err(refused);
        };
        match fallbacks_verified.remove(raw) {
            Some(Ok(())) => {
                tracing::debug!(hook = hook.name, error = %refused, "BTF-typed program refused");
                attach_raw(ebpf, raw, hook.name)?;
                attached.tracepoints.push(hook.name.into());
                attached.raw.push(hook.name.into());
            }
            // The BTF-typed program's refusal says more than its twin's.
            _ => return Err(refused),
        }
    }
    attached.tracepoints.sort();
    attached.raw.sort();
    if !attached.raw.is_empty() {
        tracing::info!(
            hooks = attached.raw.join(", "),
            "this kernel's verifier refuses BTF-typed programs that read `const void *` \
             arguments (before Linux 6.16): attached as plain raw tracepoints"
        );
    }
    Ok(attached)
}

/// Loads the hooks' programs (0.6 s of verification one after the other on the test VM).
fn verify_hooks(
    ebpf: &mut Ebpf,
    hooks: &[&'static str],
    btf: &Btf,
) -> HashMap<&'static str, Result<(), StartError>> {
    let load = |hook: &'static str, program: &mut aya::programs::Program| {
        let error = |e| StartError::LoadProgram {
            hook: hook.into(),
            source: Box::new(e),
        };
        let program: &mut BtfTracePoint = program.try_into().map_err(error)?;
        program.load(hook, btf).map_err(error)
    };
    verify_in_parallel(ebpf, hooks, load, |hook| StartError::BadBtf {
        what: format!("tracepoint {hook}"),
        reason: "verifying its program failed".into(),
    })
}

/// Turns the ledger on or off for the hooks about to attach, with a recount not running.
fn set_ledger_state(ebpf: &mut Ebpf, enabled: bool) -> Result<(), StartError> {
    let map = ebpf
        .map_mut(LEDGER_STATE)
        .ok_or(StartError::MissingMap(LEDGER_STATE))?;
    let mut state: Array<&mut MapData, LedgerState> = Array::try_from(map)
        .map_err(|e| StartError::Load(Box::new(aya::EbpfError::MapError(e))))?;
    let value = LedgerState {
        enabled: enabled as u64,
        ..LedgerState::default()
    };
    state
        .set(0, value, 0)
        .map_err(|e| StartError::Load(Box::new(aya::EbpfError::MapError(e))))
}

fn take_ring(ebpf: &mut Ebpf, name: &'static str) -> Result<RingBuf<MapData>, StartError> {
    let map = ebpf.take_map(name).ok_or(StartError::MissingMap(name))?;
    RingBuf::try_from(map).map_err(|e| StartError::Load(Box::new(aya::EbpfError::MapError(e))))
}

/// Kernel BPF statistics of the attached programs, summed: (run time in ns, runs). They only
/// count while BPF_ENABLE_STATS is on.
pub fn program_stats(ebpf: &Ebpf) -> (u64, u64) {
    program_stats_by_name(ebpf)
        .into_iter()
        .fold((0, 0), |(ns, runs), (_, n, r)| (ns + n, runs + r))
}

/// Kernel BPF statistics of each loaded program, by its name in the object: (name, run time
/// in ns, runs). They only count while BPF_ENABLE_STATS is on.
pub fn program_stats_by_name(ebpf: &Ebpf) -> Vec<(String, u64, u64)> {
    ebpf.programs()
        .filter_map(|(name, p)| {
            let info = p.info().ok()?;
            Some((
                name.to_string(),
                info.run_time().as_nanos() as u64,
                info.run_count(),
            ))
        })
        .collect()
}

/// Attaches the plain raw tracepoint program `program` to the tracepoint `hook`.
fn attach_raw(ebpf: &mut Ebpf, program: &str, hook: &str) -> Result<(), StartError> {
    let missing = || StartError::HookMissing { hook: hook.into() };
    let prog: &mut RawTracePoint = ebpf
        .program_mut(program)
        .ok_or_else(missing)?
        .try_into()
        .map_err(|_| missing())?;
    prog.attach(hook).map_err(|e| StartError::Attach {
        hook: hook.into(),
        source: Box::new(e),
    })?;
    Ok(())
}

fn attach(ebpf: &mut Ebpf, hook: &str) -> Result<(), StartError> {
    let missing = || StartError::HookMissing { hook: hook.into() };
    let prog: &mut BtfTracePoint = ebpf
        .program_mut(hook)
        .ok_or_else(missing)?
        .try_into()
        .map_err(|_| missing())?;
    prog.attach().map_err(|e| StartError::Attach {
        hook: hook.into(),
        source: Box::new(e),
    })?;
    Ok(())
}
