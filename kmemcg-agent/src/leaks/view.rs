//! Groups a recording's outstanding objects by (cache, call site), with their age
//! distribution.
use std::collections::HashMap;

use kmemcg_common::leaks::LeakRecord;

use super::symbols::Symbols;
use crate::api::{LeakCache, LeakSite};

/// Sites of `records` (all of the recording's cgroups, allocated since it started), most bytes
/// first. Ages are taken at `now_ns` (the monotonic clock of `allocated_ns`).
pub fn sites(
    records: &[LeakRecord],
    now_ns: u64,
    recorded_seconds: f64,
    older_than_seconds: f64,
    cache_name: impl Fn(u64) -> String,
    symbols: &Symbols,
) -> Vec<LeakSite> {
    let mut groups: HashMap<(u64, u64), Vec<&LeakRecord>> = HashMap::new();
    for record in records {
        groups
            .entry((record.cache_id, record.call_site))
            .or_default()
            .push(record);
    }
    let minutes = (recorded_seconds / 60.0).max(1.0 / 60.0);
    let mut sites: Vec<LeakSite> = groups
        .into_iter()
        .map(|((cache_id, call_site), objects)| {
            let mut ages: Vec<f64> = objects
                .iter()
                .map(|r| now_ns.saturating_sub(r.allocated_ns) as f64 / 1e9)
                .collect();
            ages.sort_by(f64::total_cmp);
            let (function, module) = symbols.name(call_site);
            LeakSite {
                function,
                module,
                address: format!("{call_site:#x}"),
                cache: cache_name(cache_id),
                objects: objects.len() as u64,
                bytes: objects.iter().map(|r| r.bytes).sum(),
                growth_per_minute: round(objects.len() as f64 / minutes),
                median_age_seconds: round(quantile(&ages, 0.5)),
                p90_age_seconds: round(quantile(&ages, 0.9)),
                oldest_seconds: round(ages.last().copied().unwrap_or(0.0)),
                older_objects: ages.iter().filter(|&&a| a > older_than_seconds).count() as u64,
            }
        })
        .collect();
    sites.sort_by(|a, b| (b.bytes, b.objects, &a.function).cmp(&(a.bytes, a.objects, &b.function)));
    sites
}

/// Per cache: what the cgroups hold now (`held`, objects and bytes by cache name) beyond the
/// recorded objects, i.e. what was allocated before the recording started.
pub fn before_recording(held: &HashMap<String, (u64, u64)>, sites: &[LeakSite]) -> Vec<LeakCache> {
    let mut recorded: HashMap<&str, (u64, u64)> = HashMap::new();
    for site in sites {
        let r = recorded.entry(&site.cache).or_default();
        r.0 += site.objects;
        r.1 += site.bytes;
    }
    let mut caches: Vec<LeakCache> = held
        .iter()
        .filter_map(|(cache, &(objects, bytes))| {
            let (r_objects, r_bytes) = recorded.get(cache.as_str()).copied().unwrap_or_default();
            let objects = objects.saturating_sub(r_objects);
            (objects > 0).then(|| LeakCache {
                cache: cache.clone(),
                objects,
                bytes: bytes.saturating_sub(r_bytes),
            })
        })
        .collect();
    caches.sort_by(|a, b| (b.bytes, &a.cache).cmp(&(a.bytes, &b.cache)));
    caches
}

/// The `q` quantile of sorted values (nearest rank).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Milliseconds are enough for ages and rates.
fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(call_site: u64, cache_id: u64, allocated_s: u64) -> LeakRecord {
        LeakRecord {
            call_site,
            allocated_ns: allocated_s * 1_000_000_000,
            cache_id,
            cgroup_id: 7,
            bytes: 100,
        }
    }

    #[test]
    fn groups_by_cache_and_call_site_with_ages() {
        let symbols = Symbols::parse("ffffffff81000000 T alloc_a\nffffffff81000100 T alloc_b\n");
        let mut records: Vec<LeakRecord> = (0..10)
            .map(|i| record(0xffff_ffff_8100_0010, 1, 100 + i))
            .collect();
        records.push(record(0xffff_ffff_8100_0110, 1, 105));
        records.push(record(0xffff_ffff_8100_0010, 2, 105));
        let sites = sites(
            &records,
            120_000_000_000,
            30.0,
            15.0,
            |id| format!("cache{id}"),
            &symbols,
        );
        assert_eq!(sites.len(), 3);
        let a = &sites[0];
        assert_eq!(
            (a.function.as_str(), a.cache.as_str()),
            ("alloc_a+0x10", "cache1")
        );
        assert_eq!((a.objects, a.bytes), (10, 1000));
        // Ages 11..=20 s: median (5th) 15 s, p90 (9th) 19 s, oldest 20 s.
        assert_eq!(a.median_age_seconds, 15.0);
        assert_eq!(a.p90_age_seconds, 19.0);
        assert_eq!(a.oldest_seconds, 20.0);
        assert_eq!(a.older_objects, 5);
        assert_eq!(a.growth_per_minute, 20.0);
        assert!(sites[1..].iter().all(|s| s.objects == 1));
    }

    #[test]
    fn before_recording_is_what_is_held_beyond_the_recorded() {
        let held = HashMap::from([
            ("dentry".to_string(), (120, 24_000)),
            ("filp".to_string(), (50, 12_800)),
        ]);
        let recorded = [LeakSite {
            cache: "dentry".into(),
            objects: 100,
            bytes: 20_000,
            ..Default::default()
        }];
        let before = before_recording(&held, &recorded);
        assert_eq!(
            before,
            [
                LeakCache {
                    cache: "filp".into(),
                    objects: 50,
                    bytes: 12_800
                },
                LeakCache {
                    cache: "dentry".into(),
                    objects: 20,
                    bytes: 4_000
                },
            ]
        );
    }
}
