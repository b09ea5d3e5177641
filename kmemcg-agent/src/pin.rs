//! Pinning the live-object and counter maps in bpffs, so that a restarted or upgraded agent
//! picks up where the previous one stopped: an object allocated before the restart is still
//! uncharged when it is freed after it.
//!
//! Layout: `<pin_dir>/layout-<id>/<MAP NAME>`, where `<id>` is a fingerprint of the maps' key and
//! value layouts. A directory of another layout means the maps were made by an incompatible
//! kmemcg; that is reported, never silently reused or deleted. Programs and their links are not
//! pinned: a stopped agent traces nothing.
//!
//! bpffs is usually mounted world-writable (mode 1777), so `<pin_dir>` and its layout directory
//! must be owned by the agent's user or by root and closed to every other user: one of the
//! agent's user that others may only read or enter (as older versions made them) is made 0700,
//! anything else open to others is refused. So no other user can open them to take the lock
//! (a flock on the layout directory), replace the layout directory or plant one beforehand.
use std::{
    fs::File,
    os::{fd::AsRawFd, unix::ffi::OsStrExt},
    path::{Path, PathBuf},
};

use aya::maps::MapType;
use kmemcg_common::{
    CACHE_NAMES, CGROUP_CACHE_STATS, CacheName, CacheStats, GLOBAL_COUNTERS, GlobalCounters,
    LIVE_OBJECTS, LiveObject, STATS_KEYS, StatsKey,
};
use thiserror::Error;

/// Where the systemd unit and the DaemonSet pin the maps.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/kmemcg";

/// Bump when the meaning of a pinned map's bytes changes without its size changing.
/// 3: bit 30 of a live object's size is the sweep's OBJECT_OWNER_SEEN flag.
/// 4: the counters are one block of slots per CPU in a plain array, with limit budgets.
/// 5: live objects are placed by a mixing hash of their address.
const LAYOUT_REVISION: u32 = 5;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// A pinned map as this kmemcg lays it out.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MapLayout {
    pub name: &'static str,
    pub map_type: MapType,
    pub key_size: u32,
    pub value_size: u32,
    /// Capacity set by the configuration (`max_objects`, `max_stats`) and checked against it;
    /// the others' capacity is the eBPF object's.
    pub configured_capacity: bool,
}

const fn size<T>() -> u32 {
    core::mem::size_of::<T>() as u32
}

/// The maps that are pinned, and their layouts.
pub const PINNED_MAPS: [MapLayout; 5] = [
    MapLayout {
        name: LIVE_OBJECTS,
        map_type: MapType::Array,
        key_size: size::<u32>(),
        value_size: size::<LiveObject>(),
        configured_capacity: true,
    },
    MapLayout {
        name: STATS_KEYS,
        map_type: MapType::Array,
        key_size: size::<u32>(),
        value_size: size::<StatsKey>(),
        configured_capacity: true,
    },
    MapLayout {
        name: CGROUP_CACHE_STATS,
        map_type: MapType::Array,
        key_size: size::<u32>(),
        value_size: size::<CacheStats>(),
        configured_capacity: true,
    },
    MapLayout {
        name: CACHE_NAMES,
        map_type: MapType::Hash,
        key_size: size::<u64>(),
        value_size: size::<CacheName>(),
        configured_capacity: false,
    },
    MapLayout {
        name: GLOBAL_COUNTERS,
        map_type: MapType::PerCpuArray,
        key_size: size::<u32>(),
        value_size: size::<GlobalCounters>(),
        configured_capacity: false,
    },
];

/// `layout-<8 hex digits>`: FNV-1a over the revision and every pinned map's name, type and
/// sizes.
fn is_layout_dir_name(name: &str) -> bool {
    name.strip_prefix("layout-")
        .is_some_and(|hex| hex.len() == 8 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

pub fn layout_dir_name() -> String {
    let mut text = format!("r{LAYOUT_REVISION}");
    for m in PINNED_MAPS {
        text.push_str(&format!(
            ";{}:{:?}:{}:{}",
            m.name, m.map_type, m.key_size, m.value_size
        ));
    }
    let mut hash: u32 = 0x811c_9dc5;
    for b in text.bytes() {
        hash = (hash ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    format!("layout-{hash:08x}")
}

#[derive(Debug, Error)]
pub enum PinError {
    #[error(
        "{dir} is not on a BPF filesystem, so kmemcg's maps cannot be pinned there: mount one \
         (mount -t bpf bpf /sys/fs/bpf), choose another pin_dir, or run without pinning \
         (--no-pin; a restart then loses the owners of live objects)"
    )]
    NotBpffs { dir: PathBuf },
    #[error(
        "{dir} holds maps pinned by a kmemcg with another map layout ({found}; this kmemcg uses \
         {expected}): they cannot be reused. Run `kmemcg agent --reset` to discard them and start \
         fresh (objects allocated before are then never uncharged), or run the kmemcg version \
         that pinned them"
    )]
    IncompatibleLayout {
        dir: PathBuf,
        found: String,
        expected: String,
    },
    #[error(
        "pinned map {path} has {what} {pinned}, this agent expects {expected}: {hint}, or run \
         `kmemcg agent --reset` to start fresh"
    )]
    MapMismatch {
        path: PathBuf,
        what: &'static str,
        pinned: u32,
        expected: u32,
        hint: &'static str,
    },
    #[error(
        "{dir} holds only part of kmemcg's pinned maps ({missing} missing), so live objects and \
         counters no longer match: run `kmemcg agent --reset` to start fresh"
    )]
    Partial { dir: PathBuf, missing: String },
    #[error(
        "the maps pinned in {dir} are in use by another kmemcg agent: stop it first (two agents \
         on the same maps would count every allocation twice)"
    )]
    InUse { dir: PathBuf },
    #[error(transparent)]
    Untrusted(#[from] crate::files::Untrusted),
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot open pinned map {path}: {reason} (pinned maps can only be opened by the user \
         that pinned them, usually root, or with CAP_DAC_OVERRIDE)"
    )]
    Inspect { path: PathBuf, reason: String },
    #[error(
        "pinned map {path} is a {pinned} map, this agent uses a {expected} map: it was made by \
         an incompatible kmemcg; run `kmemcg agent --reset` to start fresh"
    )]
    WrongType {
        path: PathBuf,
        pinned: String,
        expected: String,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PinError {
    let path = path.to_path_buf();
    move |source| PinError::Io {
        action,
        path,
        source,
    }
}

/// `error: source: source...`, since aya's syscall errors keep the errno in their source.
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// The pinned maps' directory, locked for this agent as long as it is held.
#[derive(Debug)]
pub struct PinnedMaps {
    dir: PathBuf,
    reused: Vec<&'static str>,
    _lock: File,
}

impl PinnedMaps {
    /// Where the map `name` is pinned.
    pub fn map_path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Maps that were already pinned (by a previous agent) and are reused.
    pub fn reused(&self) -> &[&'static str] {
        &self.reused
    }
}

/// Capacities the configuration asks for, checked against already pinned maps.
#[derive(Clone, Copy, Debug)]
pub struct Capacities {
    /// Slots of the live-object table (`max_objects` rounded up to a power of two).
    pub live_slots: u32,
    /// Slots of the counter table (`max_stats` rounded up to a power of two).
    pub stats_slots: u32,
    /// Possible CPUs: the counters have a block of `stats_slots` per CPU.
    pub cpus: u32,
}

/// Prepares `base` for pinning: checks it is on bpffs, that nothing incompatible is pinned
/// there, that already pinned maps have this kmemcg's layout and capacities, and locks it.
pub fn open(base: &Path, capacities: Capacities) -> Result<PinnedMaps, PinError> {
    check_bpffs(base)?;
    let expected = layout_dir_name();
    let dir = base.join(&expected);
    private_dir(base, base, "the pin directory")?;
    let others: Vec<String> = layout_dirs(base)?
        .into_iter()
        .filter(|name| name != &expected)
        .collect();
    if !others.is_empty() {
        return Err(PinError::IncompatibleLayout {
            dir: base.to_path_buf(),
            found: others.join(", "),
            expected,
        });
    }
    private_dir(&dir, base, "the pinned maps' directory")?;
    let lock = lock(&dir)?;
    let mut reused = Vec::new();
    for layout in PINNED_MAPS {
        let path = dir.join(layout.name);
        if !path.exists() {
            continue;
        }
        let want = layout.configured_capacity.then_some(match layout.name {
            LIVE_OBJECTS => capacities.live_slots,
            CGROUP_CACHE_STATS => capacities.stats_slots * capacities.cpus,
            _ => capacities.stats_slots,
        });
        check_map(&path, &layout, want)?;
        reused.push(layout.name);
    }
    // Owners without counters (or the reverse) would charge or uncharge the wrong figures.
    if !reused.is_empty() && reused.len() < PINNED_MAPS.len() {
        let missing: Vec<&str> = PINNED_MAPS
            .iter()
            .map(|m| m.name)
            .filter(|name| !reused.contains(name))
            .collect();
        return Err(PinError::Partial {
            dir,
            missing: missing.join(", "),
        });
    }
    Ok(PinnedMaps {
        dir,
        reused,
        _lock: lock,
    })
}

/// Creates `dir` 0700 if missing; refuses it unless it is the agent's user's (or root's) and
/// closed to other users.
fn private_dir(dir: &Path, base: &Path, what: &'static str) -> Result<(), PinError> {
    let fix = format!(
        "Another user could lock it or swap the pinned maps: remove it (`rm -r {dir}`; objects \
         allocated before are then never uncharged) and let the agent create it, or make it \
         the agent's user's (chown) and `chmod 700` it; the pin directory is {base}",
        base = base.display(),
        dir = dir.display(),
    );
    crate::files::private_dir(dir, what, crate::files::Private::NotReadable, &fix).map_err(|e| {
        match e {
            crate::files::PrivateDirError::Untrusted(u) => PinError::Untrusted(u),
            crate::files::PrivateDirError::Io {
                action,
                path,
                source,
            } => PinError::Io {
                action,
                path,
                source,
            },
        }
    })
}

fn check_bpffs(base: &Path) -> Result<(), PinError> {
    // The directory itself may not exist yet; its nearest existing ancestor decides.
    let existing = base
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    let c_path = std::ffi::CString::new(existing.as_os_str().as_bytes()).map_err(|_| {
        PinError::NotBpffs {
            dir: base.to_path_buf(),
        }
    })?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a statfs buffer of the right type.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(io("inspect", existing)(std::io::Error::last_os_error()));
    }
    if st.f_type as i64 != BPF_FS_MAGIC {
        return Err(PinError::NotBpffs {
            dir: base.to_path_buf(),
        });
    }
    Ok(())
}

/// Names of the `layout-*` directories (and anything else) found in `base`.
/// The directories of `base` that a kmemcg made (`layout-` and eight hex digits); anything
/// else there belongs to another tool and is left alone.
fn layout_dirs(base: &Path) -> Result<Vec<String>, PinError> {
    let entries = std::fs::read_dir(base).map_err(io("list", base))?;
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| is_layout_dir_name(name))
        .collect();
    names.sort();
    Ok(names)
}

fn lock(dir: &Path) -> Result<File, PinError> {
    let file = File::open(dir).map_err(io("open", dir))?;
    // SAFETY: flock on a file descriptor we own.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Err(PinError::InUse {
                dir: dir.to_path_buf(),
            })
        } else {
            Err(io("lock", dir)(e))
        };
    }
    Ok(file)
}

fn check_map(path: &Path, layout: &MapLayout, max_entries: Option<u32>) -> Result<(), PinError> {
    let info = aya::maps::MapInfo::from_pin(path).map_err(|e| PinError::Inspect {
        path: path.to_path_buf(),
        reason: with_sources(&e),
    })?;
    let mismatch = |what, pinned, expected, hint| PinError::MapMismatch {
        path: path.to_path_buf(),
        what,
        pinned,
        expected,
        hint,
    };
    let layout_hint = "it was made by an incompatible kmemcg";
    let map_type = info.map_type().map_err(|e| PinError::Inspect {
        path: path.to_path_buf(),
        reason: with_sources(&e),
    })?;
    if map_type != layout.map_type {
        return Err(PinError::WrongType {
            path: path.to_path_buf(),
            pinned: format!("{map_type:?}"),
            expected: format!("{:?}", layout.map_type),
        });
    }
    if info.key_size() != layout.key_size {
        return Err(mismatch(
            "key size",
            info.key_size(),
            layout.key_size,
            layout_hint,
        ));
    }
    if info.value_size() != layout.value_size {
        return Err(mismatch(
            "value size",
            info.value_size(),
            layout.value_size,
            layout_hint,
        ));
    }
    if let Some(max_entries) = max_entries
        && info.max_entries() != max_entries
    {
        let hint = if layout.name == LIVE_OBJECTS {
            "set max_objects back to the pinned number of slots"
        } else {
            "set max_stats back to the pinned capacity"
        };
        return Err(mismatch("capacity", info.max_entries(), max_entries, hint));
    }
    Ok(())
}

/// Removes everything kmemcg pinned under `base` (every layout), refusing while an agent uses
/// it. Returns the removed paths; nothing pinned is not an error.
pub fn remove_all(base: &Path) -> Result<Vec<PathBuf>, PinError> {
    if !base.exists() {
        return Ok(Vec::new());
    }
    let mut removed = Vec::new();
    for name in layout_dirs(base)? {
        let dir = base.join(&name);
        if !dir.is_dir() {
            return Err(PinError::Io {
                action: "remove (not a kmemcg pin directory)",
                path: dir,
                source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
            });
        }
        let _lock = lock(&dir)?;
        // Only the maps kmemcg pins: anything else someone put there stays.
        for m in PINNED_MAPS {
            let path = dir.join(m.name);
            if path.exists() {
                std::fs::remove_file(&path).map_err(io("unpin", &path))?;
                removed.push(path);
            }
        }
        if std::fs::remove_dir(&dir).is_ok() {
            removed.push(dir);
        }
    }
    // Removed only when empty: other tools' pins in it stay.
    if std::fs::remove_dir(base).is_ok() {
        removed.push(base.to_path_buf());
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_kmemcg_layout_directories_are_kmemcgs() {
        assert!(is_layout_dir_name(&layout_dir_name()));
        assert!(is_layout_dir_name("layout-0123abcd"));
        for other in [
            "cilium",
            "layout-",
            "layout-0123abcdx",
            "layout-xyz12345",
            "tc",
        ] {
            assert!(!is_layout_dir_name(other), "{other}");
        }
    }

    #[test]
    fn layout_name_is_stable_and_covers_every_pinned_map() {
        let name = layout_dir_name();
        assert!(name.starts_with("layout-") && name.len() == "layout-".len() + 8);
        assert_eq!(name, layout_dir_name());
        let names: Vec<&str> = PINNED_MAPS.iter().map(|m| m.name).collect();
        assert_eq!(
            names,
            [
                LIVE_OBJECTS,
                STATS_KEYS,
                CGROUP_CACHE_STATS,
                CACHE_NAMES,
                GLOBAL_COUNTERS
            ]
        );
    }

    #[test]
    fn a_directory_off_bpffs_is_refused_with_advice() {
        let dir = std::env::temp_dir().join("kmemcg-pin-test-not-bpffs");
        let e = open(
            &dir,
            Capacities {
                live_slots: 1024,
                stats_slots: 64,
                cpus: 2,
            },
        )
        .expect_err("tmp is not bpffs")
        .to_string();
        assert!(e.contains("mount -t bpf"), "{e}");
        assert!(!dir.exists());
    }

    #[test]
    fn removing_nothing_is_fine() {
        let dir = std::env::temp_dir().join("kmemcg-pin-test-absent");
        assert!(remove_all(&dir).expect("nothing to remove").is_empty());
    }
}
