//! The contract of leak recording: for the cgroups an operator opted in (and their
//! descendants), each new slab and percpu object's call site, time, cache and size, kept by
//! address until it is freed. Off (one load and a branch per hook) while nothing is opted in.

/// Array map of one [`LeakSwitch`]: whether any cgroup is opted in (the only thing the hooks
/// look at when none is), and which allocations are never recorded.
pub const LEAK_SWITCH: &str = "LEAK_SWITCH";
/// Hash map, cgroup v2 id -> u32 (1): the cgroups whose new objects are recorded (an opted-in
/// cgroup and each of its descendants, kept up to date by the agent as cgroups are created).
pub const LEAK_CGROUPS: &str = "LEAK_CGROUPS";
/// Hash map (not preallocated: memory only while recording), object address (slab) or
/// `__percpu` pointer (percpu) -> [`LeakRecord`].
pub const LEAK_OBJECTS: &str = "LEAK_OBJECTS";
/// One per-CPU [`LeakCounters`] entry.
pub const LEAK_COUNTERS: &str = "LEAK_COUNTERS";

/// Most cgroups (opted-in ones and their descendants together) recorded at once.
pub const MAX_LEAK_CGROUPS: u32 = 4096;
/// Default capacity of [`LEAK_OBJECTS`].
pub const DEFAULT_MAX_LEAK_OBJECTS: u32 = 1 << 17;

/// Leak recording's switch, written by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeakSwitch {
    /// Non-zero while any cgroup is opted in.
    pub armed: u32,
    pub _pad: u32,
    /// Call sites from `ignored_start` for `ignored_size` bytes are not recorded: the BPF
    /// memory allocator's refills of [`LEAK_OBJECTS`] itself, which run in the context of
    /// whichever task was interrupted and would otherwise record themselves until the table
    /// is full.
    pub ignored_start: u64,
    pub ignored_size: u64,
}

/// One outstanding object of a recorded cgroup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeakRecord {
    /// The allocation's return address in the kernel (the tracepoint's `call_site`).
    pub call_site: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) at allocation.
    pub allocated_ns: u64,
    /// As in [`crate::StatsKey::cache_id`].
    pub cache_id: u64,
    /// The allocating task's cgroup v2 id.
    pub cgroup_id: u64,
    pub bytes: u64,
}

/// Per-CPU counters of the recording.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeakCounters {
    /// Objects of recorded cgroups put in [`LEAK_OBJECTS`].
    pub recorded: u64,
    /// Objects of recorded cgroups not recorded: [`LEAK_OBJECTS`] was full.
    pub dropped_full: u64,
}

const _: () = assert!(core::mem::size_of::<LeakRecord>() == 40);
const _: () = assert!(core::mem::size_of::<LeakCounters>() == 16);
const _: () = assert!(core::mem::size_of::<LeakSwitch>() == 24);

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain #[repr(C)] integers without padding (sizes asserted above).
    unsafe impl aya::Pod for super::LeakRecord {}
    unsafe impl aya::Pod for super::LeakCounters {}
    unsafe impl aya::Pod for super::LeakSwitch {}
}
