//! Audit records: one per decision, kept in memory for `GET /api/v1/enforcement` and appended
//! as JSON lines to a file.
use std::{
    collections::VecDeque,
    io::Write as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// Records served by the API (the file keeps them all).
pub const KEPT_RECORDS: usize = 1000;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Seconds since the Unix epoch, with milliseconds.
    pub time: f64,
    pub cgroup: String,
    /// The cgroup's id (cgroup v2: its directory's inode number), for decisions on a cgroup:
    /// a cgroup re-created under the same path has another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
    /// The rule's path (or glob).
    pub rule: String,
    /// The usage that crossed the limit (for a thaw: the usage below the watermark).
    pub usage_bytes: u64,
    /// The limit crossed (for a thaw: the watermark).
    pub limit_bytes: u64,
    /// `notify`, `signal`, `freeze`, `thaw`, `kill`.
    pub action: String,
    /// For signals: the signal sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// SIGKILL after the grace period.
    #[serde(default)]
    pub escalation: bool,
    pub dry_run: bool,
    /// `done[: detail]`, `dry-run`, `gone` (the cgroup was removed meanwhile), `failed: why`.
    pub outcome: String,
    /// Who asked, for what was done on request (a rule set or removed, a thaw on removal):
    /// `uid 0 pid 1234 (unix socket)`, `token from 10.0.0.5:4321`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// The cgroup's figures missed dropped allocations when this was decided.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unreliable: bool,
}

#[derive(Debug, Default)]
pub struct AuditLog {
    records: VecDeque<AuditRecord>,
    file: Option<PathBuf>,
    file_failed: bool,
}

impl AuditLog {
    pub fn new(file: Option<PathBuf>) -> Self {
        Self {
            records: VecDeque::new(),
            file,
            file_failed: false,
        }
    }

    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    pub fn push(&mut self, record: AuditRecord) {
        if let Some(path) = &self.file {
            match append(path, &record) {
                Ok(()) => self.file_failed = false,
                Err(e) => {
                    // Once per failure streak, not once per record.
                    if !self.file_failed {
                        tracing::error!(file = %path.display(), error = %e, "cannot append to the enforcement audit file");
                    }
                    self.file_failed = true;
                }
            }
        }
        if self.records.len() == KEPT_RECORDS {
            self.records.pop_front();
        }
        self.records.push_back(record);
    }

    pub fn records(&self) -> Vec<AuditRecord> {
        self.records.iter().cloned().collect()
    }
}

fn append(path: &Path, record: &AuditRecord) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    line.push(b'\n');
    crate::files::open_append(path)?.write_all(&line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_appended_as_json_lines() {
        let path =
            std::env::temp_dir().join(format!("kmemcg-audit-test-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut log = AuditLog::new(Some(path.clone()));
        let record = AuditRecord {
            time: 1.5,
            cgroup: "/a".into(),
            cgroup_id: Some(7),
            rule: "/a".into(),
            usage_bytes: 2,
            limit_bytes: 1,
            action: "freeze".into(),
            signal: None,
            escalation: false,
            dry_run: true,
            outcome: "dry-run".into(),
            by: None,
            unreliable: false,
        };
        log.push(record.clone());
        log.push(record.clone());
        let text = std::fs::read_to_string(&path).expect("audit file");
        let _ = std::fs::remove_file(&path);
        let lines: Vec<AuditRecord> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        assert_eq!(lines, vec![record.clone(), record]);
        assert_eq!(log.records().len(), 2);
    }
}
