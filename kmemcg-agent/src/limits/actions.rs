//! Acting on a cgroup v2 directory: cgroup.freeze, cgroup.kill, and signals to every process
//! of the subtree, on the cgroup decided on (its id), not whatever has its path now. A cgroup that disappears, or a process that exits, meanwhile is not an
//! error: it is reported as [`Outcome::Gone`] or simply skipped.
use std::{
    ffi::CString,
    fs::File,
    io::{ErrorKind, Read as _, Write as _},
    os::{
        fd::{AsRawFd as _, FromRawFd as _},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
};

/// The inode of /proc/self/ns/pid in the initial PID namespace (`PROC_PID_INIT_INO`,
/// include/linux/proc_ns.h): fixed by the kernel.
const INIT_PID_NS_INODE: u64 = 0xEFFF_FFFC;

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

/// A cgroup's directory, opened and checked to be the cgroup decided on: what is written
/// through it reaches that cgroup, never one created later at the same path.
#[derive(Debug)]
pub struct Cgroup {
    dir: File,
    path: PathBuf,
}

/// Opens the cgroup v2 directory `dir` if it still is the cgroup `id` (the inode number of its
/// directory); [`Outcome::Gone`] when it was removed, or replaced by a new cgroup of the same
/// name.
pub fn open(dir: &Path, id: u64) -> Result<Cgroup, Outcome> {
    let file = match File::open(dir) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Err(Outcome::Gone),
        Err(e) => {
            return Err(Outcome::Failed(format!("opening {}: {e}", dir.display())));
        }
    };
    match file.metadata() {
        Ok(m) if m.is_dir() && m.ino() == id => Ok(Cgroup {
            dir: file,
            path: dir.to_path_buf(),
        }),
        Ok(_) => Err(Outcome::Gone),
        Err(e) => Err(Outcome::Failed(format!(
            "inspecting {}: {e}",
            dir.display()
        ))),
    }
}

impl Cgroup {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One of its interface files, opened relative to the directory held open.
    fn file(&self, name: &str, write: bool) -> Result<File, Outcome> {
        let c_name = CString::new(name).expect("interface file names have no NUL");
        let flags = libc::O_CLOEXEC
            | if write {
                libc::O_WRONLY
            } else {
                libc::O_RDONLY
            };
        // SAFETY: openat(2) on a directory descriptor we hold and a NUL-terminated name; the
        // descriptor returned is owned by the File made from it.
        let fd = unsafe { libc::openat(self.dir.as_raw_fd(), c_name.as_ptr(), flags) };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::ENODEV) if !self.path.exists() => Outcome::Gone,
                Some(libc::ENOENT) => {
                    Outcome::Failed(format!("{name} is missing in {}", self.path.display()))
                }
                _ => Outcome::Failed(format!("opening {}: {e}", self.path.join(name).display())),
            });
        }
        // SAFETY: fd was just opened and is owned by nothing else.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    fn write(&self, name: &str, value: &str) -> Result<(), Outcome> {
        self.file(name, true)?
            .write_all(value.as_bytes())
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENODEV) | Some(libc::ENOENT) => Outcome::Gone,
                _ => Outcome::Failed(format!(
                    "writing {value} to {}: {e}",
                    self.path.join(name).display()
                )),
            })
    }

    /// What its `cgroup.freeze` says: whether it is to be frozen (None: unreadable).
    pub fn freeze_set(&self) -> Option<bool> {
        let mut text = String::new();
        self.file("cgroup.freeze", false)
            .ok()?
            .read_to_string(&mut text)
            .ok()?;
        match text.trim() {
            "1" => Some(true),
            "0" => Some(false),
            _ => None,
        }
    }
}

/// Freezes (`true`) or thaws (`false`) the cgroup and its descendants.
pub fn freeze(cgroup: &Cgroup, frozen: bool) -> Outcome {
    match cgroup.write("cgroup.freeze", if frozen { "1" } else { "0" }) {
        Ok(()) => Outcome::Done(String::new()),
        Err(o) => o,
    }
}

/// Kills every process of the subtree: cgroup.kill (Linux 5.14+), else SIGKILL to each.
pub fn kill(cgroup: &Cgroup) -> Outcome {
    if cgroup.path.join("cgroup.kill").exists() {
        return match cgroup.write("cgroup.kill", "1") {
            Ok(()) => Outcome::Done("cgroup.kill".into()),
            Err(o) => o,
        };
    }
    signal(&cgroup.path, libc::SIGKILL)
}

/// Why signals cannot reach the processes of other cgroups from this agent, if they cannot.
///
/// In a PID namespace of its own (a pod without `hostPID`), cgroup.procs lists every process
/// outside that namespace as pid 0, and kill(0) would signal the agent's own process group.
pub fn signal_unavailable() -> Option<String> {
    let ns = std::fs::metadata("/proc/self/ns/pid").ok()?;
    pid_namespace_reason(ns.ino())
}

fn pid_namespace_reason(pid_ns_inode: u64) -> Option<String> {
    (pid_ns_inode != INIT_PID_NS_INODE).then(|| {
        "the agent runs in a PID namespace of its own, where the processes of other \
         containers are listed as pid 0 and cannot be signalled: run it in the host's PID \
         namespace (Kubernetes: hostPID: true and the KILL capability), or use the freeze or \
         kill action, which work through cgroup.freeze and cgroup.kill"
            .into()
    })
}

/// Sends `sig` to every process of the cgroup and its descendants.
///
/// A pid that is not positive (0: a process outside the agent's PID namespace) never reaches
/// kill(2), where it would mean the agent's own process group or every process.
pub fn signal(dir: &Path, sig: i32) -> Outcome {
    if !dir.exists() {
        return Outcome::Gone;
    }
    let mut sent = 0u32;
    let mut invisible = 0u32;
    let mut failed = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        // A descendant removed meanwhile has no processes left to signal.
        let Ok(procs) = std::fs::read_to_string(d.join("cgroup.procs")) else {
            continue;
        };
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            if pid <= 0 {
                invisible += 1;
                continue;
            }
            // SAFETY: kill(2) has no memory preconditions; the pid is positive and was read
            // from the cgroup's own cgroup.procs.
            if unsafe { libc::kill(pid, sig) } == 0 {
                sent += 1;
            } else {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    // The process exited meanwhile: nothing to do.
                    Some(libc::ESRCH) => {}
                    Some(libc::EPERM) => failed.push(format!(
                        "pid {pid}: {e} (signalling processes of other users needs CAP_KILL)"
                    )),
                    _ => failed.push(format!("pid {pid}: {e}")),
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
    if invisible > 0 {
        let reason = signal_unavailable().unwrap_or_else(|| {
            "cgroup.procs lists them as pid 0 (outside the agent's PID namespace)".into()
        });
        failed.insert(
            0,
            format!(
                "{invisible} processes of {} not signalled ({sent} were): {reason}",
                dir.display()
            ),
        );
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
        assert_eq!(open(dir, 1).expect_err("missing"), Outcome::Gone);
        assert_eq!(signal(dir, libc::SIGTERM), Outcome::Gone);
        assert_eq!(Outcome::Gone.kind(), "gone");
        assert_eq!(Outcome::Failed("x".into()).text(), "failed: x");
    }

    #[test]
    fn a_directory_of_another_id_is_gone() {
        let dir = std::env::temp_dir().join(format!("kmemcg-open-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        let ino = std::fs::metadata(&dir).expect("stat").ino();
        let opened = open(&dir, ino).map(|c| c.path().to_path_buf());
        let other = open(&dir, ino + 1).map(|c| c.path().to_path_buf());
        let _ = std::fs::remove_dir(&dir);
        assert_eq!(opened, Ok(dir));
        assert_eq!(other, Err(Outcome::Gone), "another cgroup at the same path");
    }

    /// cgroup.procs of a cgroup outside the agent's PID namespace lists pid 0; kill(0, sig)
    /// would reach the caller's own process group (here: SIGCONT, harmless, to see it).
    #[test]
    fn pids_that_are_not_positive_are_never_signalled() {
        let dir = std::env::temp_dir().join(format!("kmemcg-actions-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        std::fs::write(dir.join("cgroup.procs"), "0\n0\n").expect("cgroup.procs");
        let outcome = signal(&dir, libc::SIGCONT);
        let _ = std::fs::remove_dir_all(&dir);
        match outcome {
            Outcome::Failed(text) => {
                assert!(text.contains("2 processes"), "{text}");
                assert!(text.contains("not signalled (0 were)"), "{text}");
            }
            other => panic!("pid 0 was treated as signalled: {other:?}"),
        }
    }

    #[test]
    fn a_private_pid_namespace_makes_signals_unavailable() {
        assert_eq!(pid_namespace_reason(INIT_PID_NS_INODE), None);
        let reason = pid_namespace_reason(4026532400).expect("a private namespace");
        assert!(
            reason.contains("hostPID") && reason.contains("freeze"),
            "{reason}"
        );
    }
}
