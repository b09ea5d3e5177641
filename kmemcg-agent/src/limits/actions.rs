//! Acting on a cgroup v2 directory: cgroup.freeze, cgroup.kill, and signals to every process
//! of the subtree. A cgroup that disappears, or a process that exits, meanwhile is not an
//! error: it is reported as [`Outcome::Gone`] or simply skipped.
use std::{io::ErrorKind, path::Path};

/// How an action went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done; the detail says what (e.g. `3 processes signalled`).
    Done(String),
    /// The cgroup was removed before or while acting: nothing left to act on.
    Gone,
    /// Nothing touched: dry run.
    DryRun,
    Failed(String),
}

impl Outcome {
    /// `done`, `gone`, `dry-run` or `failed`: the metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Done(_) => "done",
            Outcome::Gone => "gone",
            Outcome::DryRun => "dry-run",
            Outcome::Failed(_) => "failed",
        }
    }

    pub fn text(&self) -> String {
        match self {
            Outcome::Done(d) if d.is_empty() => "done".into(),
            Outcome::Done(d) => format!("done: {d}"),
            Outcome::Failed(e) => format!("failed: {e}"),
            other => other.kind().into(),
        }
    }
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), Outcome> {
    match std::fs::write(dir.join(file), value) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENODEV) => {
            if dir.exists() {
                Err(Outcome::Failed(format!(
                    "{file} is missing in {}",
                    dir.display()
                )))
            } else {
                Err(Outcome::Gone)
            }
        }
        Err(e) => Err(Outcome::Failed(format!(
            "writing {value} to {}: {e}",
            dir.join(file).display()
        ))),
    }
}

/// Freezes (`true`) or thaws (`false`) the cgroup and its descendants.
pub fn freeze(dir: &Path, frozen: bool) -> Outcome {
    match write(dir, "cgroup.freeze", if frozen { "1" } else { "0" }) {
        Ok(()) => Outcome::Done(String::new()),
        Err(o) => o,
    }
}

/// Kills every process of the subtree: cgroup.kill (Linux 5.14+), else SIGKILL to each.
pub fn kill(dir: &Path) -> Outcome {
    if !dir.exists() {
        return Outcome::Gone;
    }
    if dir.join("cgroup.kill").exists() {
        return match write(dir, "cgroup.kill", "1") {
            Ok(()) => Outcome::Done("cgroup.kill".into()),
            Err(o) => o,
        };
    }
    signal(dir, libc::SIGKILL)
}

/// Sends `sig` to every process of the cgroup and its descendants.
pub fn signal(dir: &Path, sig: i32) -> Outcome {
    if !dir.exists() {
        return Outcome::Gone;
    }
    let mut sent = 0u32;
    let mut failed = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        // A descendant removed meanwhile has no processes left to signal.
        let Ok(procs) = std::fs::read_to_string(d.join("cgroup.procs")) else {
            continue;
        };
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            // SAFETY: kill(2) has no memory preconditions; the pid was read from the cgroup's
            // own cgroup.procs.
            if unsafe { libc::kill(pid, sig) } == 0 {
                sent += 1;
            } else {
                let e = std::io::Error::last_os_error();
                // The process exited meanwhile: nothing to do.
                if e.raw_os_error() != Some(libc::ESRCH) {
                    failed.push(format!("pid {pid}: {e}"));
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(&d) {
            stack.extend(
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    if !failed.is_empty() {
        Outcome::Failed(failed.join("; "))
    } else if !dir.exists() {
        Outcome::Gone
    } else {
        Outcome::Done(format!("{sent} processes signalled"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_cgroups_are_gone_not_errors() {
        let dir = Path::new("/nonexistent/kmemcg-test-gone");
        assert_eq!(freeze(dir, true), Outcome::Gone);
        assert_eq!(kill(dir), Outcome::Gone);
        assert_eq!(signal(dir, libc::SIGTERM), Outcome::Gone);
        assert_eq!(Outcome::Gone.kind(), "gone");
        assert_eq!(Outcome::Failed("x".into()).text(), "failed: x");
    }
}
