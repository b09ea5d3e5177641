//! Runtime rules kept across restarts: one JSON file, written atomically and privately.
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::rules::{Rule, RuleSpec};
use crate::files;

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
