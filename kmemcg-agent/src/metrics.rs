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
    pub fn render(&self, snapshot: &Snapshot, config: &MetricsConfig) -> String {
        self.render_with(snapshot, config, Vec::new())
    }

    /// Also with `extra` families (the enforcement's).
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
    vec![actions.finish(), usage.finish(), limit.finish()]
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{CacheUsage, Status};

    const UID_: &str = "6f3c2b1a_0d4e_4c8b_9a7f_1e2d3c4b5a69";

    fn cache(name: &str, bytes: u64) -> CacheUsage {
        CacheUsage {
            name: name.into(),
            bytes,
            objects: bytes / 64,
            accounted_bytes: bytes,
            allocs: 10,
            frees: 2,
            ..Default::default()
        }
    }

    fn cgroup(id: u64, path: &str, alive: bool, caches: Vec<CacheUsage>) -> CgroupUsage {
        let slab_bytes = caches.iter().map(|c| c.bytes).sum();
        CgroupUsage {
            id,
            path: path.into(),
            alive,
            slab_bytes,
            slab_objects: slab_bytes / 64,
            accounted_bytes: slab_bytes,
            allocs: 100,
            frees: 40,
            caches,
            ..Default::default()
        }
    }

    fn snapshot(cgroups: Vec<CgroupUsage>) -> Snapshot {
        Snapshot {
            cgroups,
            dying: vec![],
            status: Status {
                version: "0.1.0".into(),
                kernel_version: "6.18.0".into(),
                tracked_objects: 12,
                map_capacity: 1024,
                stats_capacity: 64,
                stats_entries: 3,
                dropped_live_map_full: 5,
                root_cgroup_mode: "count".into(),
                ..Default::default()
            },
        }
    }

    fn render(s: &Snapshot, config: &MetricsConfig) -> String {
        encode(families(s, config))
    }

    #[test]
    fn every_family_has_help_and_type_and_conventional_names() {
        let s = snapshot(vec![cgroup(5, "/a", true, vec![cache("dentry", 1 << 20)])]);
        let text = render(&s, &MetricsConfig::default());
        for f in families(&s, &MetricsConfig::default()) {
            let name = f.name();
            assert!(name.starts_with("kmemcg_"), "{name}");
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
            let kind = if f.get_field_type() == MetricType::COUNTER {
                assert!(name.ends_with("_total"), "{name}");
                "counter"
            } else {
                assert!(!name.ends_with("_total"), "{name}");
                "gauge"
            };
            assert!(text.contains(&format!("# TYPE {name} {kind}")), "{name}");
        }
        assert!(text.contains("kmemcg_map_capacity{map=\"LIVE_OBJECTS\"} 1024"));
        assert!(text.contains("kmemcg_dropped_allocations_total{map=\"LIVE_OBJECTS\"} 5"));
        assert!(text.contains("kmemcg_build_info{version=\"0.1.0\""));
    }

    #[test]
    fn per_cgroup_series_carry_container_labels() {
        let path = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/\
             cri-containerd-{}.scope",
            "ab".repeat(32)
        );
        let s = snapshot(vec![cgroup(9, &path, true, vec![cache("dentry", 1 << 20)])]);
        let text = render(&s, &MetricsConfig::default());
        let line = text
            .lines()
            .find(|l| l.starts_with("kmemcg_cgroup_slab_bytes{"))
            .expect("a slab series");
        assert!(
            line.contains("pod_uid=\"6f3c2b1a-0d4e-4c8b-9a7f-1e2d3c4b5a69\""),
            "{line}"
        );
        assert!(line.contains("qos_class=\"Burstable\""), "{line}");
        assert!(line.contains("container_runtime=\"containerd\""), "{line}");
        assert!(line.ends_with(" 1048576"), "{line}");
        let text = render(
            &s,
            &MetricsConfig {
                container_labels: false,
                ..Default::default()
            },
        );
        assert!(!text.contains("pod_uid"));
    }

    #[test]
    fn plain_cgroups_have_only_the_cgroup_label() {
        let s = snapshot(vec![cgroup(
            3,
            "/system.slice/sshd.service",
            true,
            vec![cache("dentry", 1 << 20)],
        )]);
        let text = render(&s, &MetricsConfig::default());
        assert!(
            text.contains(
                "kmemcg_cgroup_slab_bytes{cgroup=\"/system.slice/sshd.service\"} 1048576"
            )
        );
        assert!(text.contains(
            "kmemcg_cgroup_allocations_total{cgroup=\"/system.slice/sshd.service\"} 100"
        ));
    }

    #[test]
    fn per_cache_series_are_limited_to_top_n_above_threshold() {
        let caches: Vec<CacheUsage> = (0..200)
            .map(|i| cache(&format!("cache-{i:03}"), (200 - i) * 4096))
            .collect();
        let s = snapshot(vec![cgroup(5, "/big", true, caches)]);
        let config = MetricsConfig {
            top_caches: 3,
            cache_min_bytes: 0,
            container_labels: true,
        };
        let text = render(&s, &config);
        let count = |t: &str| {
            t.lines()
                .filter(|l| l.starts_with("kmemcg_cgroup_cache_bytes{"))
                .count()
        };
        assert_eq!(count(&text), 3);
        assert!(text.contains("cache=\"cache-000\""));
        assert!(!text.contains("cache=\"cache-003\""));
        assert!(text.contains("kmemcg_cgroup_cache_series_omitted 197"));

        // 200 caches of 4096..819200 bytes: 25 hold at least 720896 bytes.
        let config = MetricsConfig {
            top_caches: 1000,
            cache_min_bytes: 176 * 4096,
            container_labels: true,
        };
        assert_eq!(count(&render(&s, &config)), 25);
        let none = MetricsConfig {
            top_caches: 0,
            ..config
        };
        assert_eq!(count(&render(&s, &none)), 0);
    }

    /// A host with thousands of pods' cgroups and ~200 caches each stays a bounded scrape.
    #[test]
    fn cardinality_is_bounded_on_a_big_host() {
        let uid = "6f3c2b1a_0d4e_4c8b_9a7f_";
        let cgroups: Vec<CgroupUsage> = (0..3000u64)
            .map(|i| {
                let caches = (0..200u64)
                    .map(|c| cache(&format!("cache-{c}"), (c * 977 + i * 131) % 200 * 4096))
                    .collect();
                let path = format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}{i:012x}.slice/\
                     cri-containerd-{:064x}.scope",
                    i
                );
                cgroup(i + 10, &path, true, caches)
            })
            .collect();
        let s = snapshot(cgroups);
        let series = |t: &str| t.lines().filter(|l| !l.starts_with('#')).count();
        let started = std::time::Instant::now();
        let text = render(&s, &MetricsConfig::default());
        let elapsed = started.elapsed();
        // 11 per-cgroup series and at most 5 per-cache series per cgroup.
        assert!(series(&text) <= 3000 * (11 + 5) + 30, "{}", series(&text));
        let unlimited = render(
            &s,
            &MetricsConfig {
                top_caches: 1000,
                cache_min_bytes: 0,
                container_labels: true,
            },
        );
        eprintln!(
            "3000 cgroups x 200 caches: {} series, {} KiB, rendered in {elapsed:?}; \
             without limits {} series, {} KiB",
            series(&text),
            text.len() / 1024,
            series(&unlimited),
            unlimited.len() / 1024
        );
    }

    #[test]
    fn a_gone_cgroup_loses_its_series_and_dying_totals_are_exported() {
        let alive = cgroup(5, "/kmemcg-test-x", true, vec![cache("dentry", 1 << 20)]);
        let text = render(&snapshot(vec![alive.clone()]), &MetricsConfig::default());
        assert!(text.contains("cgroup=\"/kmemcg-test-x\""));
        assert!(text.contains("kmemcg_dying_cgroups 0"));

        // Removed: listed as dying, no longer among the cgroups.
        let mut gone = snapshot(vec![]);
        gone.status.dying_cgroups = 1;
        gone.status.dying_bytes = 1 << 20;
        let text = render(&gone, &MetricsConfig::default());
        assert!(!text.contains("cgroup=\"/kmemcg-test-x\""));
        assert!(text.contains("kmemcg_dying_cgroups 1"));
        assert!(text.contains("kmemcg_dying_cgroup_bytes 1048576"));

        // Two entries with one path (never both live, but a scrape must not fail): one series.
        let mut again = alive.clone();
        again.id = 6;
        let text = render(&snapshot(vec![alive, again]), &MetricsConfig::default());
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("kmemcg_cgroup_slab_bytes{cgroup=\"/kmemcg-test-x\"}"))
                .count(),
            1
        );
    }

    #[test]
    fn hierarchy_figures_are_exported() {
        let mut parent = cgroup(5, "/a", true, vec![cache("dentry", 4096)]);
        parent.reparented_bytes = 1024;
        parent.total_slab_bytes = 8192;
        parent.total_percpu_bytes = 512;
        let text = render(&snapshot(vec![parent]), &MetricsConfig::default());
        assert!(text.contains("kmemcg_cgroup_reparented_bytes{cgroup=\"/a\"} 1024"));
        assert!(text.contains("kmemcg_cgroup_recursive_slab_bytes{cgroup=\"/a\"} 8192"));
        assert!(text.contains("kmemcg_cgroup_recursive_percpu_bytes{cgroup=\"/a\"} 512"));
    }

    #[test]
    fn label_values_are_escaped() {
        let s = snapshot(vec![cgroup(5, "/odd\"name\\with\nnewline", true, vec![])]);
        let text = render(&s, &MetricsConfig::default());
        assert!(
            text.contains(r#"cgroup="/odd\"name\\with\nnewline""#),
            "{text}"
        );
    }

    #[test]
    fn process_metrics_are_included() {
        let text = Exporter::default().render(&snapshot(vec![]), &MetricsConfig::default());
        assert!(text.contains("# TYPE process_resident_memory_bytes gauge"));
        assert!(text.contains("process_open_fds"));
    }
}
