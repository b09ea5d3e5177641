//! kmemcg's agent library: the data path from the kernel to the user, one module per step.
//!
//! kernel (facts; the host's read once at start) -> tracer (load, attach) -> truth (the walks:
//! inventory of what was there before, sweep to uncharge what was freed unseen, the ledger's
//! recount) -> collector (read the counters in use, in place) ->
//! cgroups (id -> path) -> report (per-cgroup usage) -> sampler (snapshots) -> limits (decide,
//! act) and watch (limit budgets in the programs, for an early sample) -> server (HTTP API,
//! metrics) -> cli. Beside it, leaks: per-call-site recording of opted-in cgroups' objects.
//! Daemon concerns beside the path: config (file, env, flags), pin (bpffs), metadata (pod and
//! container from a cgroup path), metrics (Prometheus exposition).
mod access;
mod agent;
pub mod api;
pub mod baseline;
mod cgroup_path;
mod cgroups;
pub mod cli;
mod client;
mod collector;
mod config;
mod error;
mod files;
pub mod history;
pub mod kernel;
mod kernel_figures;
mod kernel_memcgs;
pub mod leaks;
pub mod limits;
mod listener;
mod mapped;
mod metadata;
mod metrics;
mod pin;
mod report;
pub mod sampler;
mod server;
mod slab_names;
mod test_run;
mod timefmt;
pub mod tracer;
pub mod truth;
mod tui;
mod units;
mod unreliable;
mod wake;
mod watch;
