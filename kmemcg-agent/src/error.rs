//! Errors that callers branch on. Each message says what failed and what to do about it.
use std::net::SocketAddr;

use thiserror::Error;

/// Why the tracer or the agent could not start.
#[derive(Debug, Error)]
pub enum StartError {
    #[error(
        "kmemcg needs privileges to load eBPF tracing programs: run it as root, or give it \
         CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)"
    )]
    NotPrivileged,
    #[error(
        "kernel BTF not found at {path}: kmemcg needs a kernel built with CONFIG_DEBUG_INFO_BTF=y \
         (most distribution kernels since 5.8)"
    )]
    NoBtf { path: String },
    #[error("unexpected kernel BTF: {what}: {reason}; this kernel is not supported by this kmemcg")]
    BadBtf { what: String, reason: String },
    #[error(
        "tracepoint {hook} is missing on this kernel: kmemcg needs the kmem (kmem_cache_alloc, \
         kmalloc, kmem_cache_free, kfree) and percpu (percpu_alloc_percpu, percpu_free_percpu) \
         tracepoints, Linux 6.1 or later"
    )]
    HookMissing { hook: String },
    #[error(
        "no cgroup v2 hierarchy is mounted: kmemcg attributes allocations to cgroup v2 ids. On a \
         cgroup v1-only host, mount the unified hierarchy beside v1 \
         (mkdir -p /sys/fs/cgroup/unified && mount -t cgroup2 none /sys/fs/cgroup/unified); \
         processes are then attributed to their v2 cgroup (the root cgroup unless moved)"
    )]
    NoCgroup2,
    #[error(
        "this kmemcg binary was built without its eBPF programs (AYA_BUILD_SKIP was set): \
         rebuild it without AYA_BUILD_SKIP"
    )]
    NoProgramsEmbedded,
    #[error(transparent)]
    Pin(#[from] crate::pin::PinError),
    #[error("loading kmemcg's eBPF programs failed: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("loading the {hook} program failed (the verifier's log follows): {source}")]
    LoadProgram {
        hook: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("attaching to tracepoint {hook} failed: {source}")]
    Attach {
        hook: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error(
        "cannot listen on {addr}: the address is in use (another kmemcg agent?); choose another with --listen"
    )]
    AddressInUse { addr: SocketAddr },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Why a read of the eBPF maps failed.
#[derive(Debug, Error)]
pub enum ReadError {
    #[error("map {0} is missing from the loaded eBPF object")]
    MissingMap(&'static str),
    #[error("reading map {map} failed: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
}
