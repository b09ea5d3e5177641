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
    // Families without samples are left out of the exposition.
    for f in families(&s, &MetricsConfig::default())
        .into_iter()
        .filter(|f| !f.get_metric().is_empty())
    {
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
        text.contains("kmemcg_cgroup_slab_bytes{cgroup=\"/system.slice/sshd.service\"} 1048576")
    );
    assert!(
        text.contains("kmemcg_cgroup_allocations_total{cgroup=\"/system.slice/sshd.service\"} 100")
    );
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
    gone.status.kernel_dying_memcgs = 20;
    gone.status.kernel_dying_memcg_bytes = 20 << 20;
    let text = render(&gone, &MetricsConfig::default());
    assert!(text.contains("kmemcg_kernel_dying_memcgs 20"));
    assert!(text.contains("kmemcg_kernel_dying_memcg_bytes 20971520"));

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
fn cgroups_with_dropped_allocations_are_flagged() {
    let mut short = cgroup(5, "/a", true, vec![cache("dentry", 4096)]);
    short.unreliable = true;
    let complete = cgroup(6, "/b", true, vec![cache("dentry", 4096)]);
    let text = render(&snapshot(vec![short, complete]), &MetricsConfig::default());
    assert!(
        text.contains("kmemcg_cgroup_figures_unreliable{cgroup=\"/a\"} 1"),
        "{text}"
    );
    assert!(
        !text.contains("kmemcg_cgroup_figures_unreliable{cgroup=\"/b\"}"),
        "{text}"
    );
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

#[test]
fn kernel_figures_are_exported_only_where_the_kernel_keeps_them() {
    let mut with = cgroup(5, "/kmemcg-test-k", true, vec![cache("dentry", 1 << 20)]);
    with.kernel = Some(Box::new(crate::api::KernelMemory {
        source: "memory.kmem.usage_in_bytes".into(),
        kernel_bytes: Some(3 << 20),
        sock_bytes: Some(4096),
        drift_bytes: Some(-(2 << 20)),
        ..Default::default()
    }));
    let without = cgroup(6, "/kmemcg-test-none", true, vec![cache("dentry", 1 << 20)]);
    let text = render(&snapshot(vec![with, without]), &MetricsConfig::default());
    assert!(
        text.contains("kmemcg_kernel_kernel_bytes{cgroup=\"/kmemcg-test-k\"")
            && text.contains("} 3145728"),
        "{text}"
    );
    assert!(
        text.contains("kmemcg_kernel_drift_bytes{cgroup=\"/kmemcg-test-k\""),
        "{text}"
    );
    assert!(text.contains("} -2097152"), "{text}");
    assert!(
        !text.contains("kmemcg_kernel_slab_bytes"),
        "no v1 slab figure: {text}"
    );
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("kmemcg_kernel") && l.contains("kmemcg-test-none")),
        "{text}"
    );
}
