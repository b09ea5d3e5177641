//! kmemcg's agent library: the data path from the kernel to the user, one module per step.
//!
//! kernel (facts) -> tracer (load, attach; inventory of what was there before) -> sweep
//! (uncharge what was freed unseen) -> collector (read, sum maps) -> cgroups (id ->
//! path) -> report (per-cgroup usage) -> sampler (snapshots) -> server (HTTP API, metrics) -> cli.
//! Daemon concerns beside the path: config (file, env, flags), pin (bpffs), metadata (pod and
//! container from a cgroup path), metrics (Prometheus exposition).
mod access;
mod agent;
pub mod api;
pub mod baseline;
mod bpf_batch;
mod cgroup_path;
mod cgroups;
pub mod cli;
mod client;
mod collector;
mod config;
mod error;
mod files;
mod inventory;
pub mod kernel;
mod kernel_figures;
pub mod limits;
mod listener;
mod metadata;
mod metrics;
mod pin;
mod report;
pub mod sampler;
mod server;
mod sweep;
mod timefmt;
pub mod tracer;
mod tui;
mod units;
mod unreliable;
