//! kmemcg's agent library: the data path from the kernel to the user, one module per step.
//!
//! kernel (facts) -> tracer (load, attach; inventory of what was there before) -> sweep
//! (uncharge what was freed unseen) -> collector (read, sum maps) -> cgroups (id ->
//! path) -> report (per-cgroup usage) -> sampler (snapshots) -> server (HTTP API, metrics) -> cli.
//! Daemon concerns beside the path: config (file, env, flags), pin (bpffs), metadata (pod and
//! container from a cgroup path), metrics (Prometheus exposition).
pub mod access;
pub mod agent;
pub mod api;
pub mod baseline;
pub mod bpf_batch;
pub mod cgroup_path;
pub mod cgroups;
pub mod cli;
pub mod client;
pub mod collector;
pub mod config;
pub mod error;
pub mod files;
pub mod inventory;
pub mod kernel;
pub mod kernel_figures;
pub mod limits;
pub mod listener;
pub mod metadata;
pub mod metrics;
pub mod pin;
pub mod report;
pub mod sampler;
pub mod server;
pub mod sweep;
pub mod timefmt;
pub mod tracer;
pub mod tui;
pub mod units;
