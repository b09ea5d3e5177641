//! What kmemcg froze: per cgroup, keyed by its id (a cgroup re-created at the same path is
//! another one), the freeze rules holding it frozen. The one owner of that fact: a cgroup is
//! thawed only when no rule holds it any more. Kept in the state directory, so that a restarted
//! agent knows what it froze.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::files;

/// A cgroup found thawed by someone else while over its limit is frozen again at once; each
/// further time no sooner than this after the last, doubling up to [`REFREEZE_MAX`].
const REFREEZE_FIRST: Duration = Duration::from_secs(1);
const REFREEZE_MAX: Duration = Duration::from_secs(60);

/// A file larger than this is not read: no real set of frozen cgroups comes near it.
const MAX_FILE_BYTES: u64 = 16 << 20;

/// One cgroup kmemcg holds frozen.
#[derive(Clone, Debug, PartialEq)]
pub struct Held {
    /// Where it was when frozen (ids are what count; the path is for acting and telling).
    pub path: String,
    /// The rules holding it frozen, and since when (the agent's monotonic clock).
    pub rules: BTreeMap<String, Duration>,
    /// Unix seconds when it was first frozen, for the file and for people.
    pub since: f64,
    /// Its `cgroup.freeze` said 0 at the last look: someone else thawed it.
    pub thawed: bool,
    /// Times frozen again after someone else thawed it.
    pub refreezes: u32,
    /// Not frozen again before this (the back-off).
    pub refreeze_at: Duration,
}

#[derive(Debug, Serialize, Deserialize)]
struct FrozenFile {
    cgroups: Vec<FrozenCgroup>,
}

#[derive(Debug, Serialize, Deserialize)]
struct FrozenCgroup {
    /// cgroup v2 id: the inode number of its directory.
    id: u64,
    path: String,
    rules: Vec<String>,
    since: f64,
}

#[derive(Debug, Default)]
pub struct Freezes {
    held: BTreeMap<u64, Held>,
    /// Where they are kept (None: in memory only).
    file: Option<PathBuf>,
    save_failed: bool,
}

impl Freezes {
    /// What the file says was frozen (a missing file: nothing; an unreadable one is logged and
    /// taken as nothing). `now`: when the restored rules count as holding it since.
    pub fn load(file: Option<PathBuf>, now: Duration) -> Self {
        let mut held = BTreeMap::new();
        if let Some(path) = &file {
            for c in read(path) {
                held.insert(
                    c.id,
                    Held {
                        path: c.path,
                        rules: c.rules.into_iter().map(|r| (r, now)).collect(),
                        since: c.since,
                        thawed: false,
                        refreezes: 0,
                        refreeze_at: Duration::ZERO,
                    },
                );
            }
        }
        Self {
            held,
            file,
            save_failed: false,
        }
    }

    pub fn get(&self, id: u64) -> Option<&Held> {
        self.held.get(&id)
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, &Held)> {
        self.held.iter().map(|(&id, h)| (id, h))
    }

    /// `rule` froze the cgroup (or found it frozen by kmemcg already).
    pub fn hold(&mut self, id: u64, path: &str, rule: &str, now: Duration, unix_now: f64) {
        let held = self.held.entry(id).or_insert_with(|| Held {
            path: path.to_string(),
            rules: BTreeMap::new(),
            since: unix_now,
            thawed: false,
            refreezes: 0,
            refreeze_at: Duration::ZERO,
        });
        held.rules.entry(rule.to_string()).or_insert(now);
        held.thawed = false;
        self.save();
    }

    /// What `cgroup.freeze` said at this look.
    pub fn observe(&mut self, id: u64, frozen: bool) {
        if let Some(held) = self.held.get_mut(&id) {
            held.thawed = !frozen;
        }
    }

    /// An attempt to freeze again a cgroup someone else thawed: the next one waits longer.
    /// Returns which attempt this was (1 for the first).
    pub fn refreeze_tried(&mut self, id: u64, done: bool, now: Duration) -> u32 {
        let Some(held) = self.held.get_mut(&id) else {
            return 0;
        };
        held.refreezes += 1;
        held.refreeze_at = now + refreeze_delay(held.refreezes);
        if done {
            held.thawed = false;
        }
        held.refreezes
    }

    /// `rule` no longer holds the cgroup. Returns the rules still holding it: none means it
    /// is to be thawed.
    pub fn release(&mut self, id: u64, rule: &str) -> Vec<String> {
        let Some(held) = self.held.get_mut(&id) else {
            return Vec::new();
        };
        held.rules.remove(rule);
        let left: Vec<String> = held.rules.keys().cloned().collect();
        if left.is_empty() {
            self.held.remove(&id);
        }
        self.save();
        left
    }

    /// A rule removed: the cgroups it held that no other rule holds, to be thawed.
    pub fn release_rule(&mut self, rule: &str) -> Vec<(u64, String)> {
        let ids: Vec<u64> = self
            .held
            .iter()
            .filter(|(_, h)| h.rules.contains_key(rule))
            .map(|(&id, _)| id)
            .collect();
        let mut thaw = Vec::new();
        for id in ids {
            let path = self.held[&id].path.clone();
            if self.release(id, rule).is_empty() {
                thaw.push((id, path));
            }
        }
        thaw
    }

    /// No rule holds the cgroup any more without a thaw (removed, or left thawed by its
    /// owner while under its limits).
    pub fn forget(&mut self, id: u64) -> Option<Held> {
        let held = self.held.remove(&id);
        if held.is_some() {
            self.save();
        }
        held
    }

    fn save(&mut self) {
        let Some(path) = &self.file else {
            return;
        };
        let file = FrozenFile {
            cgroups: self
                .held
                .iter()
                .map(|(&id, h)| FrozenCgroup {
                    id,
                    path: h.path.clone(),
                    rules: h.rules.keys().cloned().collect(),
                    since: h.since,
                })
                .collect(),
        };
        let written = serde_json::to_string_pretty(&file)
            .map_err(std::io::Error::other)
            .and_then(|text| files::replace(path, (text + "\n").as_bytes()));
        match written {
            Ok(()) => self.save_failed = false,
            Err(e) => {
                if !self.save_failed {
                    tracing::error!(file = %path.display(), error = %e, "cannot save which cgroups kmemcg froze: after a restart the agent will not know them (it will not thaw them by their rules)");
                }
                self.save_failed = true;
            }
        }
    }
}

fn refreeze_delay(refreezes: u32) -> Duration {
    REFREEZE_FIRST
        .saturating_mul(1 << refreezes.saturating_sub(1).min(16))
        .min(REFREEZE_MAX)
}

fn read(path: &Path) -> Vec<FrozenCgroup> {
    let text = match files::read_limited(path, MAX_FILE_BYTES) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "cannot read which cgroups kmemcg froze before this start: they stay as they are");
            return Vec::new();
        }
    };
    match serde_json::from_str::<FrozenFile>(&text) {
        Ok(f) => f.cgroups,
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "the record of which cgroups kmemcg froze is not valid: they stay as they are");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cgroup_is_thawed_only_when_no_rule_holds_it() {
        let mut f = Freezes::default();
        f.hold(7, "/x", "/x", Duration::ZERO, 1.0);
        f.hold(7, "/x", "/x*", Duration::ZERO, 1.0);
        let rules = |f: &Freezes| {
            f.get(7)
                .map(|h| h.rules.keys().cloned().collect::<Vec<_>>())
        };
        assert_eq!(rules(&f), Some(vec!["/x".to_string(), "/x*".to_string()]));
        assert_eq!(f.release(7, "/x"), ["/x*"]);
        assert!(f.get(7).is_some());
        assert_eq!(f.release_rule("/x*"), [(7, "/x".to_string())]);
        assert!(f.get(7).is_none());
        assert!(f.release_rule("/x*").is_empty());
    }

    #[test]
    fn refreezes_back_off() {
        let mut f = Freezes::default();
        f.hold(7, "/x", "/x", Duration::ZERO, 1.0);
        f.observe(7, false);
        assert!(f.get(7).is_some_and(|h| h.thawed));
        let at = |s| Duration::from_secs(s);
        assert_eq!(f.refreeze_tried(7, true, at(10)), 1);
        assert_eq!(
            f.get(7).map(|h| (h.thawed, h.refreeze_at)),
            Some((false, at(11)))
        );
        f.refreeze_tried(7, true, at(11));
        assert_eq!(f.get(7).map(|h| h.refreeze_at), Some(at(13)));
        for _ in 0..20 {
            f.refreeze_tried(7, false, at(100));
        }
        assert_eq!(f.get(7).map(|h| h.refreeze_at), Some(at(160)));
    }

    #[test]
    fn kept_in_a_file_across_restarts() {
        let dir = std::env::temp_dir().join(format!("kmemcg-frozen-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("frozen.json");
        let mut f = Freezes::load(Some(file.clone()), Duration::ZERO);
        f.hold(7, "/x", "/x", Duration::ZERO, 1.5);
        f.hold(9, "/y", "/y*", Duration::ZERO, 2.5);
        f.forget(9);
        let again = Freezes::load(Some(file.clone()), Duration::from_secs(3));
        let held = again.get(7).expect("kept");
        assert_eq!((held.path.as_str(), held.since), ("/x", 1.5));
        assert_eq!(held.rules.get("/x"), Some(&Duration::from_secs(3)));
        assert!(again.get(9).is_none());
        std::fs::write(&file, "not json").expect("write");
        assert!(Freezes::load(Some(file), Duration::ZERO).get(7).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
