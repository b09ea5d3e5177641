//! A bounded in-memory history of the cgroups that matter (those under limit rules, then the
//! largest): their slab, percpu and the kernel's charge at each sample over the last hour,
//! and their largest caches a minute apart (and at the latest sample). Served by `GET /api/v1/history` and drawn in
//! `kmemcg top`'s drill-in.
//!
//! Memory: a point is 32 bytes; at most [`MAX_POINTS`] per cgroup and [`MAX_CGROUPS`]
//! cgroups make at most 3.7 MB (an hour at the default 1 s interval), plus a cache point a
//! minute per cgroup (60 of at most [`TOP_CACHES`] caches: under 8 KB each).
use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use crate::api::{CacheHistory, CachePoint, CgroupHistory, CgroupUsage, HistoryPoint, Snapshot};

/// Cgroups with a history.
pub const MAX_CGROUPS: usize = 32;
/// The span kept.
pub const WINDOW: Duration = Duration::from_secs(3600);
/// Points per cgroup: an hour at a 1 s interval; faster intervals keep a shorter span.
pub const MAX_POINTS: usize = 3600;
/// Caches kept per cgroup, and how often.
pub const TOP_CACHES: usize = 5;
/// Milliseconds between two points of the caches.
const CACHE_STEP_MS: u64 = 60_000;

/// 32 bytes: the kernel's figure is `u64::MAX` where there is none.
#[derive(Clone, Copy, Debug)]
struct Point {
    at: u64,
    slab: u64,
    percpu: u64,
    kernel: u64,
}

#[derive(Debug)]
struct CachesPoint {
    at: u64,
    /// (interned name, bytes), largest first.
    caches: Vec<(u32, u64)>,
}

#[derive(Debug)]
struct Series {
    path: String,
    points: VecDeque<Point>,
    caches: VecDeque<CachesPoint>,
}

#[derive(Debug, Default)]
struct Inner {
    series: HashMap<u64, Series>,
    /// Cache names, interned: a few hundred at most (the kernel's caches).
    names: Vec<String>,
    name_ids: HashMap<String, u32>,
    last: Option<Instant>,
    interval: Duration,
}

#[derive(Debug, Default)]
pub struct History {
    inner: Mutex<Inner>,
}

impl History {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a point for the cgroups that matter, at most one per `interval` (early samples
    /// taken for limits are skipped), dated `at_ms` (since the Unix epoch). `limited` says
    /// whether a rule covers a path.
    pub fn record(
        &self,
        snapshot: &Snapshot,
        interval: Duration,
        (now, at_ms): (Instant, u64),
        limited: impl Fn(&str) -> bool,
    ) {
        let mut inner = self.lock();
        if inner
            .last
            .is_some_and(|last| now.saturating_duration_since(last) < interval.mul_f64(0.9))
        {
            return;
        }
        inner.last = Some(now);
        inner.interval = interval;
        let at = at_ms;
        let chosen = choose(&snapshot.cgroups, limited);
        let keep = (WINDOW.as_secs_f64() / interval.as_secs_f64().max(0.001)).ceil() as usize;
        let keep = keep.clamp(2, MAX_POINTS);
        for usage in &chosen {
            let caches = (usage.caches.iter())
                .filter(|c| c.bytes > 0)
                .take(TOP_CACHES)
                .map(|c| (inner.intern(&c.name), c.bytes))
                .collect();
            let series = inner.series.entry(usage.id).or_insert_with(|| Series {
                path: usage.path.clone(),
                points: VecDeque::new(),
                caches: VecDeque::new(),
            });
            series.path.clone_from(&usage.path);
            series.points.push_back(Point {
                at,
                slab: usage.total_slab_bytes,
                percpu: usage.total_percpu_bytes,
                kernel: (usage.kernel.as_ref())
                    .and_then(|k| k.kernel_bytes)
                    .unwrap_or(u64::MAX),
            });
            while series.points.len() > keep {
                series.points.pop_front();
            }
            // The last point is the latest reading; those before it a minute apart at least.
            let n = series.caches.len();
            let point = CachesPoint { at, caches };
            if n >= 2 && series.caches[n - 1].at < series.caches[n - 2].at + CACHE_STEP_MS {
                series.caches[n - 1] = point;
            } else {
                series.caches.push_back(point);
            }
            let oldest = series.points.front().map_or(at, |p| p.at);
            while series.caches.len() > 1 && series.caches[1].at <= oldest {
                series.caches.pop_front();
            }
        }
        // Removed cgroups go; then, beyond the bound, those not chosen this time that were
        // recorded longest ago.
        let live: std::collections::HashSet<u64> = snapshot.cgroups.iter().map(|c| c.id).collect();
        inner.series.retain(|id, _| live.contains(id));
        if inner.series.len() > MAX_CGROUPS {
            let chosen: std::collections::HashSet<u64> = chosen.iter().map(|c| c.id).collect();
            let mut others: Vec<(u64, u64)> = (inner.series.iter())
                .filter(|(id, _)| !chosen.contains(id))
                .map(|(id, s)| (s.points.back().map_or(0, |p| p.at), *id))
                .collect();
            others.sort_unstable();
            let excess = inner.series.len() - MAX_CGROUPS;
            for (_, id) in others.into_iter().take(excess) {
                inner.series.remove(&id);
            }
        }
    }

    /// The history of the cgroup at `path`, if one is kept.
    pub fn of(&self, path: &str) -> Option<CgroupHistory> {
        let inner = self.lock();
        let (id, series) = inner.series.iter().find(|(_, s)| s.path == path)?;
        let points: Vec<HistoryPoint> = (series.points.iter())
            .map(|p| HistoryPoint {
                at_ms: p.at,
                slab_bytes: p.slab,
                percpu_bytes: p.percpu,
                kernel_bytes: (p.kernel != u64::MAX).then_some(p.kernel),
            })
            .collect();
        let latest = series.caches.back();
        let caches = latest
            .map(|last| {
                (last.caches.iter())
                    .map(|(name, _)| cache_history(&inner.names, *name, &series.caches))
                    .collect()
            })
            .unwrap_or_default();
        Some(CgroupHistory {
            id: *id,
            path: series.path.clone(),
            interval_ms: inner.interval.as_millis() as u64,
            window_seconds: WINDOW.as_secs(),
            points,
            caches,
        })
    }

    /// Now, for [`History::record`].
    pub fn now() -> (Instant, u64) {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH);
        (Instant::now(), wall.map_or(0, |d| d.as_millis() as u64))
    }

    /// How many cgroups have a history.
    pub fn cgroups(&self) -> usize {
        self.lock().series.len()
    }
}

impl Inner {
    fn intern(&mut self, name: &str) -> u32 {
        if let Some(id) = self.name_ids.get(name) {
            return *id;
        }
        let id = self.names.len() as u32;
        self.names.push(name.to_string());
        self.name_ids.insert(name.to_string(), id);
        id
    }
}

/// Cgroups under rules first, then the largest (recursive slab + percpu), at most
/// [`MAX_CGROUPS`].
fn choose(cgroups: &[CgroupUsage], limited: impl Fn(&str) -> bool) -> Vec<&CgroupUsage> {
    let mut ranked: Vec<(bool, u64, &CgroupUsage)> = (cgroups.iter())
        .map(|c| (limited(&c.path), c.total_recursive_bytes(), c))
        .collect();
    ranked.sort_by_key(|c| std::cmp::Reverse((c.0, c.1)));
    ranked
        .into_iter()
        .take(MAX_CGROUPS)
        .map(|(_, _, c)| c)
        .collect()
}

fn cache_history(names: &[String], name: u32, points: &VecDeque<CachesPoint>) -> CacheHistory {
    let points: Vec<CachePoint> = (points.iter())
        .map(|p| CachePoint {
            at_ms: p.at,
            bytes: (p.caches.iter())
                .find(|(n, _)| *n == name)
                .map_or(0, |(_, b)| *b),
        })
        .collect();
    let growth = match (points.first(), points.last()) {
        (Some(first), Some(last)) => last.bytes as i64 - first.bytes as i64,
        _ => 0,
    };
    CacheHistory {
        name: names.get(name as usize).cloned().unwrap_or_default(),
        growth_bytes: growth,
        points,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{CacheUsage, Status};

    fn usage(id: u64, path: &str, slab: u64) -> CgroupUsage {
        CgroupUsage {
            id,
            path: path.into(),
            alive: true,
            total_slab_bytes: slab,
            total_percpu_bytes: 8,
            caches: vec![CacheUsage {
                name: "dentry".into(),
                bytes: slab,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn snapshot(cgroups: Vec<CgroupUsage>) -> Snapshot {
        Snapshot {
            cgroups,
            dying: vec![],
            status: Status::default(),
        }
    }

    #[test]
    fn points_are_kept_for_an_hour_and_caches_a_minute_apart() {
        let h = History::default();
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        for i in 0..4000u64 {
            let s = snapshot(vec![usage(7, "/a", 1000 + i)]);
            let at = (t0 + second * i as u32, (1000 + i) * 1000);
            h.record(&s, second, at, |_| false);
        }
        let a = h.of("/a").expect("kept");
        assert_eq!(a.points.len(), MAX_POINTS);
        assert_eq!(a.points[0].at_ms, 1_400_000);
        assert_eq!(a.points.last().map(|p| p.slab_bytes), Some(4999));
        assert_eq!(a.points[0].kernel_bytes, None);
        assert_eq!(a.interval_ms, 1000);
        let dentry = &a.caches[0];
        assert_eq!(dentry.name, "dentry");
        assert!(
            (60..=62).contains(&dentry.points.len()),
            "{}",
            dentry.points.len()
        );
        // Up to the latest sample.
        assert_eq!(dentry.points.last().map(|p| p.bytes), Some(4999));
        assert!(dentry.growth_bytes >= 3500, "{}", dentry.growth_bytes);
        // An early sample within the interval adds nothing.
        let s = snapshot(vec![usage(7, "/a", 1)]);
        h.record(&s, second, (t0 + second * 3999, 9_999_000), |_| false);
        assert_eq!(h.of("/a").expect("kept").points.len(), MAX_POINTS);
        assert!(h.of("/b").is_none());
    }

    #[test]
    fn at_most_max_cgroups_ruled_ones_first_and_removed_ones_go() {
        let h = History::default();
        let t0 = Instant::now();
        let many: Vec<CgroupUsage> = (0..100)
            .map(|i| usage(i + 10, &format!("/c{i}"), 1000 + i))
            .collect();
        h.record(
            &snapshot(many.clone()),
            Duration::from_secs(1),
            (t0, 1000),
            |p| p == "/c0",
        );
        assert_eq!(h.cgroups(), MAX_CGROUPS);
        assert!(h.of("/c0").is_some(), "under a rule");
        assert!(
            h.of("/c99").is_some() && h.of("/c1").is_none(),
            "the largest"
        );
        h.record(
            &snapshot(many[..50].to_vec()),
            Duration::from_secs(1),
            (t0 + Duration::from_secs(1), 2000),
            |_| false,
        );
        assert!(h.of("/c99").is_none(), "removed");
        assert!(h.cgroups() <= MAX_CGROUPS);
    }
}
