//! What `/sys/kernel/slab` says of a cache: the other caches the kernel merged into it (they
//! share its slabs, so their objects are counted under its name) and its object size. Read
//! again when a cache name is met that was not there before (caches are created at run time).
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use crate::api::CacheUsage;

const SLAB_SYSFS: &str = "/sys/kernel/slab";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct SlabInfo {
    merged: Vec<String>,
    object_size: Option<u64>,
}

#[derive(Debug)]
pub struct SlabNames {
    dir: PathBuf,
    known: HashMap<String, SlabInfo>,
    /// Names looked up and not found in the last reading, so that they do not cause a
    /// reading on every sample.
    missing: std::collections::HashSet<String>,
}

impl Default for SlabNames {
    fn default() -> Self {
        Self::at(Path::new(SLAB_SYSFS))
    }
}

impl SlabNames {
    fn at(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            known: HashMap::new(),
            missing: Default::default(),
        }
    }

    /// Fills `merged` and `object_size` of the slab caches among `caches`.
    pub fn annotate<'a>(&mut self, caches: impl IntoIterator<Item = &'a mut CacheUsage>) {
        let mut caches: Vec<&mut CacheUsage> =
            caches.into_iter().filter(|c| !c.kind.is_percpu()).collect();
        let unknown = caches
            .iter()
            .any(|c| !self.known.contains_key(&c.name) && !self.missing.contains(&c.name));
        if unknown {
            self.known = read(&self.dir);
            self.missing = (caches.iter())
                .filter(|c| !self.known.contains_key(&c.name))
                .map(|c| c.name.clone())
                .collect();
        }
        for cache in &mut caches {
            if let Some(info) = self.known.get(&cache.name) {
                cache.merged.clone_from(&info.merged);
                cache.object_size = info.object_size;
            }
        }
    }
}

/// Every cache name under `dir`: a directory is a cache of its own; names that link to one
/// directory (`:A-0001152`) are caches merged together.
fn read(dir: &Path) -> HashMap<String, SlabInfo> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return HashMap::new();
    };
    // Target directory -> names linking to it.
    let mut groups: HashMap<String, Vec<String>> = HashMap::new();
    let mut out = HashMap::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        match std::fs::read_link(entry.path()) {
            Ok(target) => {
                let target = target
                    .file_name()
                    .map_or_else(String::new, |t| t.to_string_lossy().into_owned());
                groups.entry(target).or_default().push(name);
            }
            // Unmerged caches, and the `:A-…` directories names link to.
            Err(_) if !name.starts_with(':') => {
                let info = SlabInfo {
                    merged: Vec::new(),
                    object_size: object_size(&entry.path()),
                };
                out.insert(name, info);
            }
            Err(_) => {}
        }
    }
    for (target, mut names) in groups {
        names.sort();
        let object_size = object_size(&dir.join(&target));
        for name in &names {
            let merged = names.iter().filter(|n| *n != name).cloned().collect();
            out.insert(
                name.clone(),
                SlabInfo {
                    merged,
                    object_size,
                },
            );
        }
    }
    out
}

fn object_size(cache_dir: &Path) -> Option<u64> {
    std::fs::read_to_string(cache_dir.join("object_size"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::MemoryKind;

    fn cache(name: &str) -> CacheUsage {
        CacheUsage {
            name: name.into(),
            kind: MemoryKind::Slab,
            ..Default::default()
        }
    }

    #[test]
    fn names_linking_to_one_cache_are_merged_and_sizes_are_read() {
        let d = &std::env::temp_dir().join(format!("kmemcg-slab-names-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(d);
        std::fs::create_dir(d).expect("mkdir");
        for (cache_dir, size) in [(":A-0001152", "1152\n"), ("dentry", "192\n")] {
            std::fs::create_dir(d.join(cache_dir)).expect("mkdir");
            std::fs::write(d.join(cache_dir).join("object_size"), size).expect("write");
        }
        for link in ["signal_cache", "UNIX", "UNIX-STREAM"] {
            std::os::unix::fs::symlink(":A-0001152", d.join(link)).expect("symlink");
        }
        let mut names = SlabNames::at(d);
        let mut caches = vec![cache("signal_cache"), cache("dentry"), cache("nosuch")];
        caches.push(CacheUsage {
            kind: MemoryKind::Percpu,
            ..cache("percpu")
        });
        names.annotate(caches.iter_mut());
        assert_eq!(caches[0].merged, ["UNIX", "UNIX-STREAM"]);
        assert_eq!(caches[0].object_size, Some(1152));
        assert_eq!(caches[0].display_name(), "signal_cache (UNIX, UNIX-STREAM)");
        assert!(caches[1].merged.is_empty());
        assert_eq!(caches[1].object_size, Some(192));
        assert_eq!(caches[2].object_size, None);
        assert_eq!(caches[3].object_size, None);
        // A name missing from sysfs is not looked for again at each sample.
        assert!(names.missing.contains("nosuch"));
        std::fs::remove_dir_all(d).expect("cleanup");
    }
}

/// Whether no `kmalloc-cg-*` cache keeps a red zone before its objects (`slub_debug=Z`): the
/// programs then find an accounted kmalloc's owner record from the size the tracepoint gives,
/// without reading the cache. False when sysfs does not say.
pub fn kmalloc_cg_without_red_zones() -> bool {
    kmalloc_cg_without_red_zones_in(Path::new(SLAB_SYSFS))
}

fn kmalloc_cg_without_red_zones_in(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    let mut seen = 0;
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with("kmalloc-cg-")
        {
            continue;
        }
        match std::fs::read_to_string(entry.path().join("red_zone")) {
            Ok(flag) if flag.trim() == "0" => seen += 1,
            _ => return false,
        }
    }
    seen > 0
}

#[cfg(test)]
mod red_zone_tests {
    use super::*;

    fn slab_dir(case: &str, caches: &[(&str, Option<&str>)]) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("kmemcg-red-zones-{case}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (name, red_zone) in caches {
            let cache = dir.join(name);
            std::fs::create_dir_all(&cache).expect("mkdir");
            if let Some(flag) = red_zone {
                std::fs::write(cache.join("red_zone"), flag).expect("write");
            }
        }
        dir
    }

    #[test]
    fn red_zones_are_ruled_out_only_when_every_kmalloc_cg_cache_says_so() {
        let cases = [
            (
                "clean",
                vec![("kmalloc-cg-64", Some("0\n")), ("dentry", Some("1\n"))],
                true,
            ),
            (
                "zoned",
                vec![
                    ("kmalloc-cg-64", Some("0\n")),
                    ("kmalloc-cg-8", Some("1\n")),
                ],
                false,
            ),
            ("unreadable", vec![("kmalloc-cg-64", None)], false),
            ("none", vec![("dentry", Some("0\n"))], false),
        ];
        for (case, caches, expected) in cases {
            let dir = slab_dir(case, &caches);
            assert_eq!(kmalloc_cg_without_red_zones_in(&dir), expected, "{case}");
            std::fs::remove_dir_all(&dir).expect("cleanup");
        }
        assert!(!kmalloc_cg_without_red_zones_in(Path::new(
            "/nonexistent/kmemcg"
        )));
    }
}
