//! Runtime rules kept across restarts: one JSON file, written atomically and privately, in the
//! agent's state directory, which one agent at a time holds ([`lock`]).
use std::{
    fs::File,
    io::{Read as _, Seek as _, Write as _},
    os::{
        fd::AsRawFd as _,
        unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    },
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::{
    LimitsConfig,
    rules::{Rule, RuleSpec},
};
use crate::files;

/// The lock file in the state directory: 0600, so only the agent's user can open (and lock) it.
pub const LOCK_FILE: &str = "agent.lock";

/// Why the state directory could not be taken.
#[derive(Debug, Error)]
pub enum StateError {
    #[error(
        "the state directory {dir} is in use by another kmemcg agent{holder}: two agents on the \
         same rules and audit files would overwrite each other's. Stop that agent, or give this \
         one a state directory of its own (--state-dir DIR, KMEMCG_STATE_DIR or [limits] \
         state_dir)"
    )]
    InUse { dir: PathBuf, holder: String },
    #[error(transparent)]
    Untrusted(#[from] files::Untrusted),
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The state directory, held by this agent while this lives.
#[derive(Debug)]
pub struct StateLock {
    dir: PathBuf,
    _file: File,
}

impl StateLock {
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Takes the state directory of `config` (created 0700 if missing; refused unless it is the
/// agent's user's or root's and no other user may write to it), then removes the temporary
/// files a killed agent left beside the state file. None when nothing is kept in files.
pub fn lock(config: &LimitsConfig) -> Result<Option<StateLock>, StateError> {
    let Some(dir) = &config.state_dir else {
        return Ok(None);
    };
    if config.state_file.is_none() && config.audit_file.is_none() {
        return Ok(None);
    }
    let held = lock_dir(dir)?;
    if let Some(file) = &config.state_file {
        for stale in files::remove_stale_temporaries(file) {
            tracing::info!(file = %stale.display(), "removed a temporary file a stopped agent left");
        }
    }
    Ok(Some(held))
}

fn lock_dir(dir: &Path) -> Result<StateLock, StateError> {
    let fix = format!(
        "Another user could replace the rules kept there: use a directory only the agent's \
         user can write to (the default is {}), or remove {} and let the agent create it",
        super::DEFAULT_STATE_DIR,
        dir.display()
    );
    files::private_dir(
        dir,
        "the state directory",
        files::Private::NotWritable,
        &fix,
    )
    .map_err(|e| match e {
        files::PrivateDirError::Untrusted(u) => StateError::Untrusted(u),
        files::PrivateDirError::Io {
            action,
            path,
            source,
        } => StateError::Io {
            action,
            path,
            source,
        },
    })?;
    let path = dir.join(LOCK_FILE);
    let io = |action: &'static str| {
        let path = path.clone();
        move |source| StateError::Io {
            action,
            path,
            source,
        }
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
        .map_err(io("open the lock file"))?;
    let meta = file.metadata().map_err(io("inspect the lock file"))?;
    if !meta.is_file() {
        return Err(StateError::Io {
            action: "use as a lock file (not a regular file)",
            path,
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        });
    }
    files::check_owner(
        &path,
        &meta,
        "the state directory's lock file",
        &[],
        files::Private::NotReadable,
        "Only the agent's user may open it: remove it and let the agent create it (mode 0600)",
    )?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(io("lock")(e));
        }
        let mut text = String::new();
        let _ = (&file).take(32).read_to_string(&mut text);
        let holder = match text.trim().parse::<u32>() {
            Ok(pid) => format!(" (pid {pid})"),
            Err(_) => String::new(),
        };
        return Err(StateError::InUse {
            dir: dir.to_path_buf(),
            holder,
        });
    }
    // Who holds it, for the message of the next one.
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = writeln!(file, "{}", std::process::id());
    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    Ok(StateLock {
        dir: dir.to_path_buf(),
        _file: file,
    })
}

/// A state file larger than this is not read: no real rule set comes near it.
const MAX_STATE_BYTES: u64 = 16 << 20;

#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    rules: Vec<RuleSpec>,
}

pub fn save(path: &Path, rules: &[Rule]) -> std::io::Result<()> {
    let state = StateFile {
        rules: rules.iter().map(|r| r.spec.clone()).collect(),
    };
    let text = serde_json::to_string_pretty(&state).map_err(std::io::Error::other)?;
    files::replace(path, (text + "\n").as_bytes())
}

/// The saved rule specs; a missing file is none, an unreadable or invalid one is logged and
/// taken as none.
pub fn load(path: &Path) -> Vec<RuleSpec> {
    let text = match files::read_limited(path, MAX_STATE_BYTES) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "cannot read the saved limits; starting without them");
            return Vec::new();
        }
    };
    match serde_json::from_str::<StateFile>(&text) {
        Ok(s) => s.rules,
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "the saved limits are not valid; starting without them");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> LimitsConfig {
        LimitsConfig {
            state_dir: Some(dir.to_path_buf()),
            state_file: Some(dir.join("limits.json")),
            audit_file: Some(dir.join("enforcement.jsonl")),
            ..Default::default()
        }
    }

    #[test]
    fn one_agent_at_a_time_holds_a_state_directory() {
        let dir = std::env::temp_dir().join(format!("kmemcg-state-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let held = lock(&config(&dir)).expect("free").expect("files are kept");
        assert_eq!(held.dir(), dir);
        let e = lock(&config(&dir)).expect_err("held").to_string();
        assert!(e.contains("in use by another kmemcg agent"), "{e}");
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        assert!(e.contains("--state-dir"), "{e}");
        drop(held);
        let again = lock(&config(&dir)).expect("free again");
        drop(again);
        let in_memory = LimitsConfig {
            state_file: None,
            audit_file: None,
            ..config(&dir)
        };
        assert!(lock(&in_memory).expect("nothing kept").is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_killed_saves_temporary_file_is_removed_at_start() {
        let dir = std::env::temp_dir().join(format!("kmemcg-state-tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let mut child = std::process::Command::new("true").spawn().expect("true");
        let dead = child.id();
        child.wait().expect("waited");
        let stale = dir.join(format!("limits.json.{dead}.tmp"));
        std::fs::write(&stale, "{\"rules\": [").expect("a half-written save");
        let held = lock(&config(&dir)).expect("free");
        assert!(!stale.exists() || dead == std::process::id(), "left behind");
        drop(held);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_state_directory_others_may_write_is_refused() {
        let dir = std::env::temp_dir().join(format!("kmemcg-state-open-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        let e = lock(&config(&dir)).expect_err("world-writable").to_string();
        assert!(e.contains("may be written by other users"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
