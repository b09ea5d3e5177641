//! Leak recordings: an operator opts a cgroup (and its descendants) in for a while, and the
//! programs record each new slab and percpu object's call site, time, cache and size until
//! it is freed (`kmemcg_common::leaks`). This module owns the opt-in maps and the recordings:
//! it starts them, follows cgroup creation (new descendants are recorded too) and removal
//! (the recording ends), ends them on time, and groups what they found by call site.
mod symbols;
mod view;

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, SystemTime},
};

use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData, PerCpuArray};
use kmemcg_common::{
    CGROUP_EVENT_MKDIR, CGROUP_EVENT_RMDIR, CgroupEvent,
    leaks::{
        DEFAULT_MAX_LEAK_OBJECTS, LEAK_CGROUPS, LEAK_COUNTERS, LEAK_OBJECTS, LEAK_SWITCH,
        LeakCounters, LeakRecord, LeakSwitch, MAX_LEAK_CGROUPS,
    },
};

use crate::{
    api::{CgroupUsage, LeakView},
    cgroup_path, report,
};
use symbols::Symbols;

/// Recordings running at once, at most.
pub const MAX_RECORDINGS: usize = 8;
/// Longest recording.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
/// Ended recordings kept for reading, the latest ones.
const KEPT_ENDED: usize = 16;
/// Objects older than this are counted apart in each site, unless asked otherwise.
pub const DEFAULT_OLDER_THAN: Duration = Duration::from_secs(300);

/// Why a recording could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Invalid(String),
    #[error("no cgroup {path} under {root}: check the path (it is written from the cgroup root)")]
    NoSuchCgroup { path: String, root: String },
    #[error(
        "{MAX_RECORDINGS} recordings are running, the most at once: wait for one to end (GET \
         /api/v1/leaks), stop one (DELETE /api/v1/leaks/ID), or record a common ancestor"
    )]
    TooManyRecordings,
    #[error(
        "{path} and its descendants with the cgroups recorded already make {cgroups} cgroups, \
         more than the {MAX_LEAK_CGROUPS} that can be recorded at once: record a smaller subtree"
    )]
    TooManyCgroups { path: String, cgroups: usize },
    #[error("no leak recording {0} (it ended long ago, or never was)")]
    NoSuchRecording(u64),
    #[error("leak recording is not available: {0}")]
    Unavailable(String),
    #[error("updating the eBPF map {map}: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
}

impl Error {
    pub fn http_status(&self) -> u16 {
        match self {
            Error::Invalid(_) => 400,
            Error::NoSuchCgroup { .. } | Error::NoSuchRecording(_) => 404,
            Error::TooManyRecordings | Error::TooManyCgroups { .. } => 409,
            Error::Unavailable(_) | Error::Map { .. } => 503,
        }
    }
}

/// The programs' maps of leak recording.
struct Maps {
    switch: Array<MapData, LeakSwitch>,
    /// The BPF memory allocator's refill code, whose allocations are never recorded (see
    /// [`LeakSwitch::ignored_start`]), or why it is unknown.
    ignored: Result<std::ops::Range<u64>, String>,
    cgroups: BpfHashMap<MapData, u64, u32>,
    objects: BpfHashMap<MapData, u64, LeakRecord>,
    counters: PerCpuArray<MapData, LeakCounters>,
}

impl Maps {
    fn take(
        take: &mut dyn FnMut(&'static str) -> Option<Map>,
        kallsyms: &str,
    ) -> Result<Self, String> {
        let mut map = |name: &'static str| {
            take(name).ok_or_else(|| format!("the eBPF object has no map {name}"))
        };
        let bad = |name: &str, e: aya::maps::MapError| format!("the map {name}: {e}");
        Ok(Self {
            switch: Array::try_from(map(LEAK_SWITCH)?).map_err(|e| bad(LEAK_SWITCH, e))?,
            ignored: symbols::bpf_allocator_refills(kallsyms),
            cgroups: BpfHashMap::try_from(map(LEAK_CGROUPS)?).map_err(|e| bad(LEAK_CGROUPS, e))?,
            objects: BpfHashMap::try_from(map(LEAK_OBJECTS)?).map_err(|e| bad(LEAK_OBJECTS, e))?,
            counters: PerCpuArray::try_from(map(LEAK_COUNTERS)?)
                .map_err(|e| bad(LEAK_COUNTERS, e))?,
        })
    }

    /// Turns recording on or off in the programs.
    fn arm(&mut self, on: bool) -> Result<(), Error> {
        let ignored = self.ignored.clone().map_err(Error::Unavailable)?;
        let switch = LeakSwitch {
            armed: on.into(),
            _pad: 0,
            ignored_start: ignored.start,
            ignored_size: ignored.end - ignored.start,
        };
        self.switch.set(0, switch, 0).map_err(|source| Error::Map {
            map: LEAK_SWITCH,
            source,
        })
    }

    fn dropped(&self) -> u64 {
        self.counters
            .get(&0, 0)
            .map(|per_cpu| per_cpu.iter().map(|c| c.dropped_full).sum())
            .unwrap_or(0)
    }

    /// Every recorded object. The table changes while it is read (an address freed between
    /// two steps makes the kernel start over): entries are taken once, and the walk is
    /// bounded.
    fn objects(&self) -> HashMap<u64, LeakRecord> {
        let mut found = HashMap::new();
        let bound = 4 * DEFAULT_MAX_LEAK_OBJECTS as usize;
        for (steps, entry) in self.objects.iter().enumerate() {
            if steps > bound {
                break;
            }
            if let Ok((address, record)) = entry {
                found.insert(address, record);
            }
        }
        found
    }
}

/// Monotonic nanoseconds, the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

struct Recording {
    id: u64,
    path: String,
    cgroup_id: u64,
    /// The cgroup and its descendants.
    cgroups: HashSet<u64>,
    started_ns: u64,
    started_at: SystemTime,
    for_duration: Duration,
    dropped_at_start: u64,
    /// Descendants created meanwhile that could not be recorded (too many cgroups).
    missed_cgroups: u64,
    end: Option<Ended>,
}

/// A recording's outcome, kept after its objects leave the table.
struct Ended {
    at_ns: u64,
    reason: &'static str,
    objects: Vec<LeakRecord>,
    dropped: u64,
    /// What the cgroups held beyond the recorded objects, taken at the first read after the
    /// end (the cgroup may be gone later).
    held: Option<HashMap<String, (u64, u64)>>,
}

impl Recording {
    fn active(&self) -> bool {
        self.end.is_none()
    }

    fn deadline_ns(&self) -> u64 {
        self.started_ns + self.for_duration.as_nanos() as u64
    }
}

struct State {
    maps: Result<Maps, String>,
    cgroup_root: PathBuf,
    recordings: Vec<Recording>,
    next_id: u64,
    cache_names: HashMap<u64, String>,
    symbols: Symbols,
}

/// Leak recordings, shared by the API (start, stop, read) and the sampling thread (cgroup
/// events, ends on time).
pub struct Leaks {
    state: Mutex<State>,
}

impl Leaks {
    /// Takes the leak maps from the loaded programs (`take` is `Ebpf::take_map`); without them
    /// every request says why.
    /// `kallsyms`: the text of /proc/kallsyms.
    pub fn new(
        take: &mut dyn FnMut(&'static str) -> Option<Map>,
        cgroup_root: PathBuf,
        kallsyms: &str,
    ) -> Self {
        let maps = Maps::take(take, kallsyms);
        if let Err(why) = &maps {
            tracing::warn!(why, "leak recording is not available");
        }
        Self {
            state: Mutex::new(State {
                maps,
                cgroup_root,
                recordings: Vec::new(),
                next_id: 1,
                cache_names: HashMap::new(),
                symbols: Symbols::default(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts recording `path` and its descendants for `for_duration`; the recording's id.
    pub fn start(&self, path: &str, for_duration: Duration) -> Result<u64, Error> {
        let path = cgroup_path::normalize(path).map_err(Error::Invalid)?;
        if for_duration.is_zero() || for_duration > MAX_DURATION {
            return Err(Error::Invalid(format!(
                "a recording lasts more than 0 s and at most {} h, not {:.1} s",
                MAX_DURATION.as_secs() / 3600,
                for_duration.as_secs_f64()
            )));
        }
        let mut state = self.lock();
        let state = &mut *state;
        let maps = state
            .maps
            .as_mut()
            .map_err(|why| Error::Unavailable(why.clone()))?;
        if state.recordings.iter().filter(|r| r.active()).count() >= MAX_RECORDINGS {
            return Err(Error::TooManyRecordings);
        }
        let dir = state.cgroup_root.join(path.trim_start_matches('/'));
        let subtree = subtree_ids(&dir).map_err(|_| Error::NoSuchCgroup {
            path: path.clone(),
            root: state.cgroup_root.display().to_string(),
        })?;
        let recorded: HashSet<u64> = state
            .recordings
            .iter()
            .filter(|r| r.active())
            .flat_map(|r| r.cgroups.iter().copied())
            .collect();
        let total = recorded.union(&subtree).count();
        if total > MAX_LEAK_CGROUPS as usize {
            return Err(Error::TooManyCgroups {
                path,
                cgroups: total,
            });
        }
        if let Err(why) = &maps.ignored {
            return Err(Error::Unavailable(why.clone()));
        }
        let cgroup_id = std::fs::metadata(&dir).map(|m| m.ino()).unwrap_or(0);
        let started_ns = monotonic_ns();
        for id in &subtree {
            maps.cgroups.insert(id, 1, 0).map_err(|source| Error::Map {
                map: LEAK_CGROUPS,
                source,
            })?;
        }
        maps.arm(true)?;
        let id = state.next_id;
        state.next_id += 1;
        tracing::info!(
            id,
            path,
            cgroups = subtree.len(),
            seconds = for_duration.as_secs_f64(),
            "leak recording started"
        );
        state.recordings.push(Recording {
            id,
            path,
            cgroup_id,
            cgroups: subtree,
            started_ns,
            started_at: SystemTime::now(),
            for_duration,
            dropped_at_start: maps.dropped(),
            missed_cgroups: 0,
            end: None,
        });
        Ok(id)
    }

    /// Ends a recording now (it stays readable).
    pub fn stop(&self, id: u64) -> Result<(), Error> {
        let mut state = self.lock();
        let index = state
            .recordings
            .iter()
            .position(|r| r.id == id)
            .ok_or(Error::NoSuchRecording(id))?;
        if state.recordings[index].active() {
            end(&mut state, index, "stopped");
        }
        Ok(())
    }

    /// Follows the cgroup tree (new descendants are recorded, a recorded cgroup's removal
    /// ends its recording), learns cache names, and ends recordings whose time is up. Called
    /// by the sampling thread with each batch of cgroup events.
    pub fn follow(&self, events: &[CgroupEvent], cache_names: &HashMap<u64, String>) {
        let mut state = self.lock();
        let state = &mut *state;
        if state.recordings.iter().all(|r| !r.active()) {
            return;
        }
        if cache_names.len() != state.cache_names.len() {
            state.cache_names.clone_from(cache_names);
        }
        for event in events {
            let path = event
                .path()
                .map(|p| String::from_utf8_lossy(p).into_owned());
            match (event.kind, path) {
                (CGROUP_EVENT_MKDIR, Some(path)) => add_descendant(state, event.id, &path),
                (CGROUP_EVENT_RMDIR, _) => {
                    while let Some(index) = state
                        .recordings
                        .iter()
                        .position(|r| r.active() && r.cgroup_id == event.id)
                    {
                        end(state, index, "cgroup removed");
                    }
                }
                _ => {}
            }
        }
        let now = monotonic_ns();
        while let Some(index) = state
            .recordings
            .iter()
            .position(|r| r.active() && now >= r.deadline_ns())
        {
            end(state, index, "duration");
        }
    }

    /// Every recording, latest first, as views without sites (a summary).
    pub fn list(&self) -> Vec<LeakView> {
        let state = self.lock();
        let mut views: Vec<LeakView> = state
            .recordings
            .iter()
            .rev()
            .map(|r| LeakView {
                id: r.id,
                cgroup: r.path.clone(),
                since: rfc3339(r.started_at),
                recorded_seconds: recorded_seconds(r),
                for_seconds: r.for_duration.as_secs_f64(),
                state: state_name(r).into(),
                ended: r.end.as_ref().map(|e| e.reason.into()),
                cgroups: r.cgroups.len() as u64,
                ..Default::default()
            })
            .collect();
        views.truncate(MAX_RECORDINGS + KEPT_ENDED);
        views
    }

    /// A recording's outstanding objects by call site. `cgroups` (the latest sample) gives
    /// what the recorded cgroups hold in all, for the objects from before the recording.
    pub fn view(
        &self,
        id: u64,
        cgroups: &[CgroupUsage],
        older_than: Duration,
    ) -> Result<LeakView, Error> {
        let mut state = self.lock();
        let state = &mut *state;
        let index = state
            .recordings
            .iter()
            .position(|r| r.id == id)
            .ok_or(Error::NoSuchRecording(id))?;
        state.symbols.refresh();
        let held_now = || held(cgroups, &state.recordings[index].path);
        let (records, now_ns, dropped, held) = match &state.recordings[index].end {
            Some(ended) => {
                let held = ended.held.clone().unwrap_or_else(held_now);
                (ended.objects.clone(), ended.at_ns, ended.dropped, held)
            }
            None => {
                let maps = state
                    .maps
                    .as_ref()
                    .map_err(|why| Error::Unavailable(why.clone()))?;
                let r = &state.recordings[index];
                let dropped = maps.dropped().saturating_sub(r.dropped_at_start);
                (
                    own_objects(r, &maps.objects()),
                    monotonic_ns(),
                    dropped,
                    held_now(),
                )
            }
        };
        if let Some(ended) = &mut state.recordings[index].end {
            ended.held.get_or_insert_with(|| held.clone());
        }
        let r = &state.recordings[index];
        let names = &state.cache_names;
        let seconds = recorded_seconds(r);
        let sites = view::sites(
            &records,
            now_ns,
            seconds,
            older_than.as_secs_f64(),
            |cache_id| report::cache_name(cache_id, names).0,
            &state.symbols,
        );
        let mut warnings = Vec::new();
        if state.symbols.hidden() {
            warnings.push(symbols::HIDDEN.to_string());
        }
        if dropped > 0 {
            warnings.push(format!(
                "the object table ({DEFAULT_MAX_LEAK_OBJECTS} objects, shared by all \
                 recordings) was full: {dropped} allocations of recorded cgroups were not \
                 recorded, so the figures are low; record fewer or smaller cgroups, or for less \
                 time"
            ));
        }
        if r.missed_cgroups > 0 {
            warnings.push(format!(
                "{} descendants created while recording were not recorded: more than \
                 {MAX_LEAK_CGROUPS} cgroups were recorded at once",
                r.missed_cgroups
            ));
        }
        Ok(LeakView {
            id,
            cgroup: r.path.clone(),
            since: rfc3339(r.started_at),
            recorded_seconds: round(seconds),
            for_seconds: r.for_duration.as_secs_f64(),
            state: state_name(r).into(),
            ended: r.end.as_ref().map(|e| e.reason.into()),
            cgroups: r.cgroups.len() as u64,
            before_recording: view::before_recording(&held, &sites),
            sites,
            older_than_seconds: older_than.as_secs_f64(),
            dropped_objects: dropped,
            warnings,
        })
    }
}

fn state_name(r: &Recording) -> &'static str {
    if r.active() { "recording" } else { "done" }
}

fn recorded_seconds(r: &Recording) -> f64 {
    let until = r.end.as_ref().map_or_else(monotonic_ns, |e| e.at_ns);
    until.saturating_sub(r.started_ns) as f64 / 1e9
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn rfc3339(at: SystemTime) -> String {
    jiff::Timestamp::try_from(at)
        .map(|t| t.round(jiff::Unit::Second).unwrap_or(t).to_string())
        .unwrap_or_default()
}

/// The recording's objects among all recorded ones: of its cgroups, allocated since it
/// started (an overlapping recording may have started earlier).
fn own_objects(r: &Recording, all: &HashMap<u64, LeakRecord>) -> Vec<LeakRecord> {
    all.values()
        .filter(|o| r.cgroups.contains(&o.cgroup_id) && o.allocated_ns >= r.started_ns)
        .copied()
        .collect()
}

/// Objects and bytes per cache that `path` and its descendants hold (from a sample).
fn held(cgroups: &[CgroupUsage], path: &str) -> HashMap<String, (u64, u64)> {
    let mut held: HashMap<String, (u64, u64)> = HashMap::new();
    for cgroup in cgroups
        .iter()
        .filter(|c| c.path == path || is_under(&c.path, path))
    {
        for cache in &cgroup.caches {
            let h = held.entry(cache.name.clone()).or_default();
            h.0 += cache.objects;
            h.1 += cache.bytes;
        }
    }
    held
}

/// Whether `path` is a descendant of `ancestor` (both normalized).
fn is_under(path: &str, ancestor: &str) -> bool {
    ancestor == "/" && path != "/"
        || path
            .strip_prefix(ancestor)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The ids (directory inode numbers) of the cgroup at `dir` and every cgroup below it.
fn subtree_ids(dir: &Path) -> std::io::Result<HashSet<u64>> {
    let mut ids = HashSet::from([std::fs::metadata(dir)?.ino()]);
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if let Ok(meta) = entry.metadata()
                && meta.is_dir()
            {
                ids.insert(meta.ino());
                pending.push(entry.path());
            }
        }
    }
    Ok(ids)
}

/// A cgroup created under a recorded one is recorded too.
fn add_descendant(state: &mut State, id: u64, path: &str) {
    let Ok(maps) = state.maps.as_mut() else {
        return;
    };
    let recorded = state
        .recordings
        .iter()
        .filter(|r| r.active())
        .flat_map(|r| r.cgroups.iter())
        .collect::<HashSet<_>>()
        .len();
    for r in state
        .recordings
        .iter_mut()
        .filter(|r| r.active() && is_under(path, &r.path))
    {
        if recorded >= MAX_LEAK_CGROUPS as usize || maps.cgroups.insert(id, 1, 0).is_err() {
            r.missed_cgroups += 1;
            continue;
        }
        r.cgroups.insert(id);
    }
}

/// Ends recording `index`: its objects are kept with it, and the programs stop recording
/// cgroups no other recording needs (all, when none runs).
fn end(state: &mut State, index: usize, reason: &'static str) {
    let at_ns = monotonic_ns();
    let Ok(maps) = state.maps.as_mut() else {
        return;
    };
    let all = maps.objects();
    let r = &state.recordings[index];
    let objects = own_objects(r, &all);
    let dropped = maps.dropped().saturating_sub(r.dropped_at_start);
    tracing::info!(
        id = r.id,
        path = r.path,
        reason,
        objects = objects.len(),
        "leak recording ended"
    );
    state.recordings[index].end = Some(Ended {
        at_ns,
        reason,
        objects,
        dropped,
        held: None,
    });
    let still: HashSet<u64> = state
        .recordings
        .iter()
        .filter(|r| r.active())
        .flat_map(|r| r.cgroups.iter().copied())
        .collect();
    if still.is_empty() {
        // Off first, so that the hooks stop adding while the table is emptied.
        let _ = maps.arm(false);
    }
    for id in &state.recordings[index].cgroups {
        if !still.contains(id) {
            let _ = maps.cgroups.remove(id);
        }
    }
    for (address, record) in &all {
        if !still.contains(&record.cgroup_id) {
            let _ = maps.objects.remove(address);
        }
    }
    // Keep the latest ended recordings only.
    let ended: Vec<u64> = state
        .recordings
        .iter()
        .filter(|r| !r.active())
        .map(|r| r.id)
        .collect();
    if ended.len() > KEPT_ENDED {
        let forget: HashSet<u64> = ended[..ended.len() - KEPT_ENDED].iter().copied().collect();
        state.recordings.retain(|r| !forget.contains(&r.id));
    }
}
