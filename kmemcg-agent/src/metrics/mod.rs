//! `GET /metrics`: the latest [`Snapshot`] in Prometheus' text format.
//!
//! Families are built afresh from each snapshot, so a cgroup's series disappear with it. Per-cache
//! series are limited to the largest caches of each cgroup (see [`MetricsConfig`]) so that a host
//! with thousands of cgroups and ~200 caches stays scrapeable.
use std::collections::HashSet;

use prometheus::{
    Encoder as _, TextEncoder,
    core::Collector as _,
    process_collector::ProcessCollector,
    proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType},
};

use crate::{
    api::{CgroupUsage, Snapshot},
    limits::EnforcementMetrics,
    metadata,
};

/// Content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What `/metrics` exports; reloadable with SIGHUP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Per-cache series for at most this many caches per cgroup, largest first (0: none).
    pub top_caches: usize,
    /// ... and only for caches holding at least this many bytes.
    pub cache_min_bytes: u64,
    /// Add `pod_uid`, `container_id`, `qos_class` and `container_runtime` labels parsed from
    /// the cgroup path.
    pub container_labels: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            top_caches: 5,
            cache_min_bytes: 64 * 1024,
            container_labels: true,
        }
    }
}

/// Renders metrics; owns the process collector, whose CPU counter is cumulative.
pub struct Exporter {
    process: ProcessCollector,
}

impl Default for Exporter {
    fn default() -> Self {
        Self {
            process: ProcessCollector::for_self(),
        }
    }
}

impl Exporter {
    /// The text exposition of `snapshot` plus the process's own metrics.
    #[cfg(test)]
    pub fn render(&self, snapshot: &Snapshot, config: &MetricsConfig) -> String {
        self.render_with(snapshot, config, Vec::new())
    }

    /// The part of the exposition that only `snapshot` and `config` decide: the same for
    /// every scrape of one sample, so rendered once and shared.
    pub fn render_snapshot(snapshot: &Snapshot, config: &MetricsConfig) -> String {
        encode(families(snapshot, config))
    }

    /// The part rendered afresh for each scrape, to follow [`Self::render_snapshot`]'s:
    /// `extra` families (the enforcement's) and the process's own.
    pub fn render_live(&self, extra: Vec<MetricFamily>) -> String {
        let mut families = extra;
        families.extend(self.process.collect());
        encode(families)
    }

    /// Also with `extra` families (the enforcement's).
    #[cfg(test)]
    pub fn render_with(
        &self,
        snapshot: &Snapshot,
        config: &MetricsConfig,
        extra: Vec<MetricFamily>,
    ) -> String {
        let mut families = families(snapshot, config);
        families.extend(extra);
        families.extend(self.process.collect());
        encode(families)
    }
}

/// Text format of `families`; they are built valid, so encoding cannot fail on them.
pub fn encode(families: Vec<MetricFamily>) -> String {
    // The encoder rejects families without samples (e.g. per-cgroup ones on an idle host).
    let families: Vec<MetricFamily> = families
        .into_iter()
        .filter(|f| !f.get_metric().is_empty())
        .collect();
    let mut buf = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
        tracing::warn!(error = %e, "encoding metrics failed");
    }
    String::from_utf8(buf).unwrap_or_default()
}

/// One metric family being filled.
struct Family {
    family: MetricFamily,
    metrics: Vec<Metric>,
}

impl Family {
    fn new(name: &str, help: &str, kind: MetricType) -> Self {
        let mut family = MetricFamily::default();
        family.set_name(name.into());
        family.set_help(help.into());
        family.set_field_type(kind);
        Self {
            family,
            metrics: Vec::new(),
        }
    }

    fn gauge(name: &str, help: &str) -> Self {
        Self::new(name, help, MetricType::GAUGE)
    }

    fn counter(name: &str, help: &str) -> Self {
        Self::new(name, help, MetricType::COUNTER)
    }

    fn add(&mut self, labels: &[(&str, &str)], value: f64) {
        let mut metric = Metric::from_label(
            labels
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| {
                    let mut pair = LabelPair::default();
                    pair.set_name((*k).into());
                    pair.set_value((*v).into());
                    pair
                })
                .collect(),
        );
        if self.family.get_field_type() == MetricType::COUNTER {
            let mut c = Counter::default();
            c.set_value(value);
            metric.set_counter(c);
        } else {
            let mut g = Gauge::default();
            g.set_value(value);
            metric.set_gauge(g);
        }
        self.metrics.push(metric);
    }

    fn finish(mut self) -> MetricFamily {
        self.family.set_metric(self.metrics);
        self.family
    }
}

/// The enforcement's families: actions taken and, per rule and matched cgroup, usage and limit.
pub fn enforcement(m: &EnforcementMetrics) -> Vec<MetricFamily> {
    let mut actions = Family::counter(
        "kmemcg_enforcement_actions_total",
        "Enforcement decisions by action (notify, signal, freeze, thaw, kill), outcome (done, \
         dry-run, gone, failed) and dry_run.",
    );
    for ((action, outcome, dry_run), count) in &m.actions {
        let dry = if *dry_run { "true" } else { "false" };
        actions.add(
            &[("action", action), ("outcome", outcome), ("dry_run", dry)],
            *count as f64,
        );
    }
    let mut usage = Family::gauge(
        "kmemcg_limit_usage_bytes",
        "Recursive slab and percpu bytes of each cgroup a limit rule matches.",
    );
    let mut limit = Family::gauge(
        "kmemcg_limit_bytes",
        "The limit (max) of each rule, per cgroup it matches.",
    );
    let mut seen = HashSet::new();
    for (rule, cgroup, used, max) in &m.usage {
        if !seen.insert((rule, cgroup)) {
            continue;
        }
        let labels = [("rule", rule.as_str()), ("cgroup", cgroup.as_str())];
        usage.add(&labels, *used as f64);
        limit.add(&labels, *max as f64);
    }
    let mut unreliable = Family::gauge(
        "kmemcg_limit_figures_unreliable",
        "1 for each (rule, cgroup) pair whose cgroup's figures miss allocations dropped because          a map was full (the limit then falls back as limits.on_unreliable says).",
    );
    for (rule, cgroup) in &m.unreliable {
        unreliable.add(&[("rule", rule.as_str()), ("cgroup", cgroup.as_str())], 1.0);
    }
    vec![
        actions.finish(),
        usage.finish(),
        limit.finish(),
        unreliable.finish(),
    ]
}

/// The cgroup's identifying labels: path and, when enabled, container metadata.
struct CgroupLabels {
    path: String,
    pod_uid: String,
    container_id: String,
    qos_class: &'static str,
    runtime: &'static str,
}

impl CgroupLabels {
    fn of(usage: &CgroupUsage, config: &MetricsConfig) -> Self {
        let meta = if config.container_labels {
            metadata::parse(&usage.path)
        } else {
            Default::default()
        };
        Self {
            path: usage.path.clone(),
            pod_uid: meta.pod_uid.unwrap_or_default(),
            container_id: meta.container_id.unwrap_or_default(),
            qos_class: meta.qos_class.map_or("", |q| q.as_str()),
            runtime: meta.runtime.map_or("", |r| r.as_str()),
        }
    }

    fn pairs(&self) -> [(&str, &str); 5] {
        [
            ("cgroup", &self.path),
            ("pod_uid", &self.pod_uid),
            ("container_id", &self.container_id),
            ("qos_class", self.qos_class),
            ("container_runtime", self.runtime),
        ]
    }
}

/// All kmemcg families for `snapshot` (without the process metrics).
pub fn families(snapshot: &Snapshot, config: &MetricsConfig) -> Vec<MetricFamily> {
    let mut out = per_cgroup(snapshot, config);
    out.extend(kernel::families(snapshot, config));
    out.extend(agent_families(snapshot));
    out
}

fn per_cgroup(snapshot: &Snapshot, config: &MetricsConfig) -> Vec<MetricFamily> {
    let mut slab_bytes = Family::gauge(
        "kmemcg_cgroup_slab_bytes",
        "Slab memory held by live objects allocated by the cgroup's tasks.",
    );
    let mut slab_objects = Family::gauge(
        "kmemcg_cgroup_slab_objects",
        "Live slab objects allocated by the cgroup's tasks.",
    );
    let mut percpu_bytes = Family::gauge(
        "kmemcg_cgroup_percpu_bytes",
        "Percpu memory (size times possible CPUs) held by live allocations of the cgroup's tasks.",
    );
    let mut percpu_objects = Family::gauge(
        "kmemcg_cgroup_percpu_objects",
        "Live percpu allocations of the cgroup's tasks.",
    );
    let mut accounted = Family::gauge(
        "kmemcg_cgroup_accounted_bytes",
        "Slab and percpu bytes of the cgroup that the kernel memory controller also charges \
         (__GFP_ACCOUNT, SLAB_ACCOUNT).",
    );
    let mut unaccounted = Family::gauge(
        "kmemcg_cgroup_unaccounted_bytes",
        "Slab and percpu bytes of the cgroup that the kernel memory controller charges to nobody.",
    );
    let mut allocs = Family::counter(
        "kmemcg_cgroup_allocations_total",
        "Slab and percpu allocations made by the cgroup's tasks.",
    );
    let mut frees = Family::counter(
        "kmemcg_cgroup_frees_total",
        "Frees of tracked objects allocated by the cgroup's tasks.",
    );
    let mut reparented = Family::gauge(
        "kmemcg_cgroup_reparented_bytes",
        "The part of the cgroup's slab and percpu bytes held by objects of its removed \
         descendants, charged to it as their nearest live ancestor.",
    );
    let mut recursive_slab = Family::gauge(
        "kmemcg_cgroup_recursive_slab_bytes",
        "Slab bytes of the cgroup and all its descendants.",
    );
    let mut recursive_percpu = Family::gauge(
        "kmemcg_cgroup_recursive_percpu_bytes",
        "Percpu bytes of the cgroup and all its descendants.",
    );
    let mut cache_bytes = Family::gauge(
        "kmemcg_cgroup_cache_bytes",
        "Bytes of the cgroup's live objects per slab cache (percpu: cache=\"percpu\"); only the \
         cgroup's largest caches are exported.",
    );
    let mut unreliable = Family::gauge(
        "kmemcg_cgroup_figures_unreliable",
        "1 for each cgroup whose figures may be short: allocations were dropped (a full map) \
         while it or a descendant allocated. Cgroups with complete figures have no series.",
    );
    let mut omitted = 0u64;
    let mut seen = HashSet::new();
    // snapshot.cgroups are live cgroups: what removed ones hold is charged to their nearest
    // live ancestor and summed in kmemcg_dying_cgroup_bytes. A cgroup recreated between two
    // samples has the same path, and two series with one label set would fail the whole scrape.
    for usage in &snapshot.cgroups {
        if !seen.insert(usage.path.as_str()) {
            continue;
        }
        let labels = CgroupLabels::of(usage, config);
        let l = labels.pairs();
        slab_bytes.add(&l, usage.slab_bytes as f64);
        slab_objects.add(&l, usage.slab_objects as f64);
        percpu_bytes.add(&l, usage.percpu_bytes as f64);
        percpu_objects.add(&l, usage.percpu_objects as f64);
        accounted.add(&l, usage.accounted_bytes as f64);
        unaccounted.add(&l, usage.unaccounted_bytes as f64);
        allocs.add(&l, usage.allocs as f64);
        frees.add(&l, usage.frees as f64);
        reparented.add(&l, usage.reparented_bytes as f64);
        recursive_slab.add(&l, usage.total_slab_bytes as f64);
        recursive_percpu.add(&l, usage.total_percpu_bytes as f64);
        if usage.unreliable {
            unreliable.add(&l, 1.0);
        }
        // `caches` is sorted largest first.
        let exported = usage
            .caches
            .iter()
            .take(config.top_caches)
            .take_while(|c| c.bytes >= config.cache_min_bytes.max(1));
        let mut n = 0;
        for cache in exported {
            let [c, p, id, q, r] = l;
            let with_cache = [c, p, id, q, r, ("cache", cache.name.as_str())];
            cache_bytes.add(&with_cache, cache.bytes as f64);
            n += 1;
        }
        omitted +=
            (usage.caches.iter().filter(|c| c.bytes > 0).count() as u64).saturating_sub(n as u64);
    }
    let mut omitted_family = Family::gauge(
        "kmemcg_cgroup_cache_series_omitted",
        "Non-empty (cgroup, cache) pairs left out of kmemcg_cgroup_cache_bytes by the top_caches \
         and cache_min_bytes limits.",
    );
    omitted_family.add(&[], omitted as f64);
    [
        slab_bytes,
        slab_objects,
        percpu_bytes,
        percpu_objects,
        accounted,
        unaccounted,
        allocs,
        frees,
        reparented,
        recursive_slab,
        recursive_percpu,
        unreliable,
        cache_bytes,
        omitted_family,
    ]
    .into_iter()
    .map(Family::finish)
    .collect()
}

fn single(family: Family, value: f64) -> MetricFamily {
    let mut family = family;
    family.add(&[], value);
    family.finish()
}

fn agent_families(snapshot: &Snapshot) -> Vec<MetricFamily> {
    let s = &snapshot.status;
    let mut out = vec![
        single(
            Family::gauge(
                "kmemcg_cgroups",
                "Live cgroups with kmemcg_cgroup_* series.",
            ),
            s.cgroups as f64,
        ),
        single(
            Family::gauge(
                "kmemcg_dying_cgroups",
                "Removed cgroups whose kernel memory is still allocated.",
            ),
            s.dying_cgroups as f64,
        ),
        single(
            Family::gauge(
                "kmemcg_dying_cgroup_bytes",
                "Slab and percpu bytes still held by removed cgroups (charged to their nearest \
                 live ancestors).",
            ),
            s.dying_bytes as f64,
        ),
        single(
            Family::gauge(
                "kmemcg_kernel_dying_memcgs",
                "Memory cgroups the kernel keeps after their removal (offline, not freed), as \
                 its memcg tree shows them (0 where kmemcg cannot walk it, see the status).",
            ),
            s.kernel_dying_memcgs as f64,
        ),
        single(
            Family::gauge(
                "kmemcg_kernel_dying_memcg_bytes",
                "Bytes still charged to the memory cgroups the kernel keeps after their removal \
                 (page cache, tmpfs, anonymous and kernel memory; nested ones counted once).",
            ),
            s.kernel_dying_memcg_bytes as f64,
        ),
        single(
            Family::gauge(
                "kmemcg_known_cgroups",
                "cgroups in the agent's tree: live ones, and removed ones still holding objects.",
            ),
            s.known_cgroups as f64,
        ),
        single(
            Family::counter(
                "kmemcg_lost_cgroup_events_total",
                "cgroup creation and removal events lost because their ring buffer was full \
                 (the tree was rescanned).",
            ),
            s.lost_cgroup_events as f64,
        ),
        single(
            Family::counter(
                "kmemcg_cgroup_rescans_total",
                "Times the cgroup tree was rebuilt from a scan of the hierarchy.",
            ),
            s.cgroup_rescans as f64,
        ),
        single(
            Family::gauge(
                "kmemcg_sample_duration_seconds",
                "How long the last reading of the eBPF maps took.",
            ),
            s.last_sample_ms / 1000.0,
        ),
        single(
            Family::counter(
                "kmemcg_samples_total",
                "Readings of the eBPF maps since start: one per interval, plus early ones when a \
                 cgroup under a limit crossed its budget or the rules changed.",
            ),
            s.samples as f64,
        ),
        single(
            Family::gauge(
                "kmemcg_watched_cgroups",
                "cgroups that limit rules match, whose budgets the eBPF programs watch between \
                 samples.",
            ),
            s.watched_cgroups as f64,
        ),
        single(
            Family::gauge(
                "kmemcg_tracked_objects",
                "Objects whose owning cgroup kmemcg remembers.",
            ),
            s.tracked_objects as f64,
        ),
        single(
            Family::counter(
                "kmemcg_untracked_frees_total",
                "Frees of objects kmemcg never saw allocated (before it started, ignored \
                 cgroups, or dropped).",
            ),
            s.untracked_frees as f64,
        ),
        single(
            Family::counter(
                "kmemcg_stale_objects_total",
                "Tracked objects whose free no tracepoint reported, uncharged when their address \
                 was reused.",
            ),
            s.stale_objects as f64,
        ),
        single(
            Family::gauge(
                "kmemcg_last_sample_timestamp_seconds",
                "When the eBPF maps were last read, seconds since the Unix epoch.",
            ),
            s.updated_at as f64,
        ),
        single(
            Family::gauge(
                "kmemcg_attached_hooks",
                "Tracepoints kmemcg's programs are attached to (all of its hooks: it does not start \
                 otherwise).",
            ),
            s.attached_hooks.len() as f64,
        ),
    ];
    let mut capacity = Family::gauge(
        "kmemcg_map_capacity",
        "Capacity of kmemcg's eBPF maps, in entries.",
    );
    capacity.add(
        &[("map", kmemcg_common::LIVE_OBJECTS)],
        s.map_capacity as f64,
    );
    capacity.add(
        &[("map", kmemcg_common::CGROUP_CACHE_STATS)],
        s.stats_capacity as f64,
    );
    let mut entries = Family::gauge(
        "kmemcg_map_entries",
        "Entries in use in kmemcg's eBPF maps.",
    );
    entries.add(
        &[("map", kmemcg_common::LIVE_OBJECTS)],
        s.tracked_objects as f64,
    );
    entries.add(
        &[("map", kmemcg_common::CGROUP_CACHE_STATS)],
        s.stats_entries as f64,
    );
    let mut dropped = Family::counter(
        "kmemcg_dropped_allocations_total",
        "Allocations not tracked because an eBPF map was full.",
    );
    dropped.add(
        &[("map", kmemcg_common::LIVE_OBJECTS)],
        s.dropped_live_map_full as f64,
    );
    dropped.add(
        &[("map", kmemcg_common::CGROUP_CACHE_STATS)],
        s.dropped_stats_map_full as f64,
    );
    let mut build = Family::gauge(
        "kmemcg_build_info",
        "kmemcg's version and the kernel it runs on; always 1.",
    );
    build.add(
        &[
            ("version", s.version.as_str()),
            ("kernel_version", s.kernel_version.as_str()),
            ("root_cgroup_mode", s.root_cgroup_mode.as_str()),
        ],
        1.0,
    );
    out.extend([capacity, entries, dropped, build].map(Family::finish));
    out
}

pub mod gzip;
mod kernel;
#[cfg(test)]
mod tests;
