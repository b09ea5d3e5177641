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
    #[error("map {0} is missing from kmemcg's eBPF object: this binary is broken, rebuild it")]
    MissingMap(&'static str),
    #[error(
        "mapping map {map} into memory failed: {source}; the kernel must allow mmap of BPF \
         arrays (Linux 5.5 or later)"
    )]
    Mmap {
        map: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("loading kmemcg's eBPF programs failed: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error(
        "the bpf() system call was refused (creating map {map}) although kmemcg has \
         CAP_BPF and CAP_PERFMON{seccomp}: a seccomp profile or the container runtime blocks \
         bpf(). Runtimes older than containerd 1.7 / CRI-O 1.26, and podman, allow bpf() in \
         their default seccomp profile only with CAP_SYS_ADMIN: give the container a profile \
         that allows bpf() and perf_event_open() (Kubernetes: seccompProfile type Unconfined \
         or a Localhost profile; podman: --security-opt seccomp=PROFILE), or update the \
         runtime; under systemd, keep bpf in SystemCallFilter="
    )]
    BpfRefused {
        map: String,
        /// ` (this process runs under a seccomp filter)` when /proc/self/status says so.
        seccomp: &'static str,
        #[source]
        source: std::io::Error,
    },
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

impl StartError {
    /// A failed load, with the reason named when the kernel refused bpf() itself (EPERM on
    /// the first map although the capabilities were checked): a seccomp filter or runtime.
    pub fn from_load(e: aya::EbpfError) -> Self {
        match e {
            aya::EbpfError::MapError(aya::maps::MapError::CreateError { name, io_error })
                if io_error.raw_os_error() == Some(libc::EPERM) =>
            {
                let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
                StartError::BpfRefused {
                    map: name,
                    seccomp: seccomp_note(&status),
                    source: io_error,
                }
            }
            e => StartError::Load(Box::new(e)),
        }
    }
}

/// Whether /proc/self/status says a seccomp filter is in force (`Seccomp: 2`).
fn seccomp_note(status: &str) -> &'static str {
    let filtered = status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .is_some_and(|v| v.trim() == "2");
    if filtered {
        " (this process runs under a seccomp filter)"
    } else {
        ""
    }
}

/// Why a read of the eBPF maps failed.
#[derive(Debug, Error)]
pub enum ReadError {
    #[error("map {0} is missing from the loaded eBPF object")]
    MissingMap(&'static str),
    #[error("program {0} is not loaded (or is not a raw tracepoint program)")]
    MissingProgram(&'static str),
    #[error("program {program}: no usable file descriptor: {reason}")]
    ProgramFd {
        program: &'static str,
        reason: String,
    },
    #[error("running program {program} (BPF_PROG_TEST_RUN) failed: {source}")]
    TestRun {
        program: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("reading map {map} failed: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_map_creation_names_seccomp_and_what_to_change() {
        let refused = aya::EbpfError::MapError(aya::maps::MapError::CreateError {
            name: "GLOBAL_COUNTERS".into(),
            io_error: std::io::Error::from_raw_os_error(libc::EPERM),
        });
        let text = StartError::from_load(refused).to_string();
        for part in ["GLOBAL_COUNTERS", "seccomp", "CAP_SYS_ADMIN", "Unconfined"] {
            assert!(text.contains(part), "`{part}` missing: {text}");
        }
        let other = aya::EbpfError::MapError(aya::maps::MapError::CreateError {
            name: "LIVE_OBJECTS".into(),
            io_error: std::io::Error::from_raw_os_error(libc::ENOMEM),
        });
        assert!(matches!(StartError::from_load(other), StartError::Load(_)));
        assert_eq!(seccomp_note("Name:\tkmemcg\nSeccomp:\t0\n"), "");
        assert!(seccomp_note("Seccomp:\t2\n").contains("seccomp filter"));
    }
}
