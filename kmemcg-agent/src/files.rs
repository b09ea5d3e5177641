//! Files the agent writes (runtime rules, audit records) and reads (its configuration): never
//! through a symlink, with fixed modes (0600 files, 0700 directories created for them), and
//! never more than a bounded size read. Directories and files other users could have made or
//! could change (a pin directory on a world-writable bpffs, a socket directory, a token file)
//! are checked with [`check_owner`] before they are trusted.
use std::{
    fs::{File, Metadata, OpenOptions},
    io::{self, Read as _, Write as _},
    os::unix::fs::{
        DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
    },
    path::{Path, PathBuf},
};

use thiserror::Error;

const FILE_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o700;

/// The effective uid: the agent's (or the CLI's) user.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// Why a path another user may control is not trusted.
#[derive(Debug, Error)]
#[error("refusing {what} {path}: {problem}. {fix}")]
pub struct Untrusted {
    /// `the pin directory`, `the token file`, ...
    pub what: &'static str,
    pub path: PathBuf,
    /// What was found: the owner and mode, or the file type.
    pub problem: String,
    /// What to do about it.
    pub fix: String,
}

/// What [`check_owner`] requires besides the owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Private {
    /// No other user may write to it (group and other write bits clear).
    NotWritable,
    /// No other user may read or write it (no group or other bits at all).
    NotReadable,
}

/// Checks what `lstat` says of `path`: owned by the caller's user, root, or one of `also`, and
/// not writable (or not accessible, `private`) by other users. `fix` says what to do when it
/// is not.
pub fn check_owner(
    path: &Path,
    meta: &Metadata,
    what: &'static str,
    also: &[u32],
    private: Private,
    fix: &str,
) -> Result<(), Untrusted> {
    let (owner, mode) = (meta.uid(), meta.mode() & 0o7777);
    let me = euid();
    let refuse = |problem: String| Untrusted {
        what,
        path: path.to_path_buf(),
        problem,
        fix: fix.to_string(),
    };
    if meta.file_type().is_symlink() {
        return Err(refuse(
            "it is a symbolic link, which kmemcg does not follow here".into(),
        ));
    }
    if owner != me && owner != 0 && !also.contains(&owner) {
        return Err(refuse(format!(
            "it is owned by uid {owner} (mode {mode:04o}), not by this process's user (uid \
             {me}) or root, so that user could change or replace it"
        )));
    }
    let others = match private {
        Private::NotWritable => mode & 0o022,
        Private::NotReadable => mode & 0o077,
    };
    if others != 0 {
        let may = match private {
            Private::NotWritable => "written",
            Private::NotReadable => "opened",
        };
        return Err(refuse(format!(
            "it may be {may} by other users (owner uid {owner}, mode {mode:04o})"
        )));
    }
    Ok(())
}

/// Creates the directory `dir` (0700, and its missing parents) if it is missing, then checks
/// it with [`check_owner`]. With [`Private::NotReadable`], a directory of this user that others
/// may only read or enter (as older kmemcg versions made them) is made 0700.
pub fn private_dir(
    dir: &Path,
    what: &'static str,
    private: Private,
    fix: &str,
) -> Result<(), PrivateDirError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|source| PrivateDirError::Io {
            action: "create",
            path: dir.to_path_buf(),
            source,
        })?;
    let stat = || {
        std::fs::symlink_metadata(dir).map_err(|source| PrivateDirError::Io {
            action: "inspect",
            path: dir.to_path_buf(),
            source,
        })
    };
    let meta = stat()?;
    if !meta.file_type().is_symlink() && !meta.is_dir() {
        return Err(PrivateDirError::Untrusted(Untrusted {
            what,
            path: dir.to_path_buf(),
            problem: "it is not a directory".into(),
            fix: fix.to_string(),
        }));
    }
    let mode = meta.mode() & 0o7777;
    if private == Private::NotReadable
        && meta.uid() == euid()
        && meta.is_dir()
        && mode & 0o022 == 0
        && mode & 0o077 != 0
    {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE)).map_err(
            |source| PrivateDirError::Io {
                action: "make private (chmod 700)",
                path: dir.to_path_buf(),
                source,
            },
        )?;
        tracing::info!(dir = %dir.display(), old_mode = format!("{mode:04o}"), "made private (0700)");
        return check_owner(dir, &stat()?, what, &[], private, fix).map_err(Into::into);
    }
    check_owner(dir, &meta, what, &[], private, fix).map_err(Into::into)
}

/// Why [`private_dir`] failed.
#[derive(Debug, Error)]
pub enum PrivateDirError {
    #[error(transparent)]
    Untrusted(#[from] Untrusted),
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Creates `path`'s directory (0700) if it is missing; an existing one is left as it is.
fn ensure_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir),
        _ => Ok(()),
    }
}

/// Replaces `path` with `contents` atomically: written to a new temporary file beside it
/// (created exclusively, so a planted file or symlink there is refused), then renamed over
/// it (a rename replaces a symlink at `path` itself; it does not follow it).
pub fn replace(path: &Path, contents: &[u8]) -> io::Result<()> {
    ensure_parent(path)?;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(name);
    let _ = std::fs::remove_file(&tmp);
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(contents)?;
            f.sync_all()
        });
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}

/// Opens `path` for appending, creating it 0600; refuses a symlink or anything but a regular
/// file.
pub fn open_append(path: &Path) -> io::Result<File> {
    ensure_parent(path)?;
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| symlink_refused(path, e))?;
    regular(path, &file)?;
    Ok(file)
}

/// Reads a regular file of at most `max` bytes, without following a symlink at `path` and
/// without blocking on a FIFO or reading an endless device.
pub fn read_limited(path: &Path, max: u64) -> io::Result<String> {
    read_limited_with_metadata(path, max).map(|(text, _)| text)
}

/// [`read_limited`], with what fstat says of the file that was read (its owner and mode).
pub fn read_limited_with_metadata(path: &Path, max: u64) -> io::Result<(String, Metadata)> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| symlink_refused(path, e))?;
    regular(path, &file)?;
    let meta = file.metadata()?;
    let mut text = String::new();
    file.take(max + 1).read_to_string(&mut text)?;
    if text.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is larger than {max} bytes", path.display()),
        ));
    }
    Ok((text, meta))
}

/// Removes the temporary files [`replace`] leaves beside `path` when it is killed mid-write
/// (`<name>.<pid>.tmp`): those of processes that no longer run, and this process's own.
/// Returns the removed paths.
pub fn remove_stale_temporaries(path: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Vec::new();
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let prefix = format!("{}.", name.to_string_lossy());
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = file_name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".tmp"))
            .and_then(|pid| pid.parse::<i32>().ok())
            .filter(|pid| *pid > 0)
        else {
            continue;
        };
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        // SAFETY: signal 0 only checks that the process exists.
        let gone = unsafe { libc::kill(pid, 0) } != 0
            && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if (gone || pid as u32 == std::process::id()) && std::fs::remove_file(entry.path()).is_ok()
        {
            removed.push(entry.path());
        }
    }
    removed
}

fn regular(path: &Path, file: &File) -> io::Result<()> {
    if file.metadata()?.is_file() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ))
    }
}

/// O_NOFOLLOW fails with ELOOP on a symlink: say so.
fn symlink_refused(path: &Path, e: io::Error) -> io::Error {
    if e.raw_os_error() == Some(libc::ELOOP) {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is a symbolic link, which kmemcg does not follow",
                path.display()
            ),
        )
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("kmemcg-files-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .expect("exists")
            .permissions()
            .mode()
            & 0o777
    }

    #[test]
    fn replaced_files_are_private_and_do_not_follow_symlinks() {
        let dir = scratch("replace");
        let file = dir.join("state/limits.json");
        replace(&file, b"one").expect("written");
        assert_eq!(std::fs::read(&file).expect("read"), b"one");
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(file.parent().expect("dir")), 0o700);
        // A symlink at the destination is replaced, its target untouched.
        let target = dir.join("target");
        std::fs::write(&target, "precious").expect("target");
        std::fs::remove_file(&file).expect("removed");
        std::os::unix::fs::symlink(&target, &file).expect("symlink");
        replace(&file, b"two").expect("written");
        assert_eq!(
            std::fs::read_to_string(&target).expect("target"),
            "precious"
        );
        assert_eq!(std::fs::read(&file).expect("read"), b"two");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn appends_refuse_symlinks() {
        let dir = scratch("append");
        let file = dir.join("audit.jsonl");
        open_append(&file)
            .expect("created")
            .write_all(b"x\n")
            .expect("written");
        assert_eq!(mode(&file), 0o600);
        let target = dir.join("target");
        std::fs::write(&target, "precious").expect("target");
        let link = dir.join("link.jsonl");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let e = open_append(&link).expect_err("a symlink");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(
            std::fs::read_to_string(&target).expect("target"),
            "precious"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn temporaries_of_dead_writers_are_removed() {
        let dir = scratch("stale");
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("limits.json");
        // A process that has ended: its pid is free (until reused, which this test tolerates
        // by checking only the live ones below).
        let mut child = std::process::Command::new("true").spawn().expect("true");
        let dead = child.id();
        child.wait().expect("waited");
        let stale = dir.join(format!("limits.json.{dead}.tmp"));
        let live = dir.join("limits.json.1.tmp");
        let other = dir.join("other.json.99999999.tmp");
        for f in [&stale, &live, &other] {
            std::fs::write(f, "{").expect("written");
        }
        let removed = remove_stale_temporaries(&file);
        assert!(live.exists(), "pid 1 runs: its file stays");
        assert!(other.exists(), "another file's temporary stays");
        if removed.is_empty() {
            // The pid was reused at once: nothing to check.
            assert!(stale.exists());
        } else {
            assert_eq!(removed, std::slice::from_ref(&stale));
            assert!(!stale.exists());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn owners_and_modes_are_checked() {
        let dir = scratch("owner");
        private_dir(&dir, "the test directory", Private::NotReadable, "fix it")
            .expect("made private");
        assert_eq!(mode(&dir), 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        private_dir(&dir, "the test directory", Private::NotReadable, "fix it").expect("tightened");
        assert_eq!(
            mode(&dir),
            0o700,
            "an own directory others could read is made 0700"
        );
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let e = private_dir(&dir, "the test directory", Private::NotReadable, "fix it")
            .expect_err("writable by others")
            .to_string();
        assert!(e.contains("mode 0777") && e.contains("fix it"), "{e}");
        let file = dir.join("file");
        std::fs::write(&file, "x").expect("file");
        let meta = std::fs::symlink_metadata(&file).expect("meta");
        check_owner(&file, &meta, "the file", &[], Private::NotWritable, "").expect("ours");
        if euid() == 0 {
            std::os::unix::fs::chown(&file, Some(65534), None).expect("chown");
            let meta = std::fs::symlink_metadata(&file).expect("meta");
            let e = check_owner(&file, &meta, "the file", &[], Private::NotWritable, "")
                .expect_err("another user's")
                .to_string();
            assert!(e.contains("owned by uid 65534"), "{e}");
            check_owner(&file, &meta, "the file", &[65534], Private::NotWritable, "")
                .expect("allowed owner");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn reads_are_bounded_and_regular_only() {
        let e = read_limited(Path::new("/dev/zero"), 1024).expect_err("a device");
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let dir = scratch("read");
        std::fs::create_dir_all(&dir).expect("dir");
        let big = dir.join("big.toml");
        std::fs::write(&big, vec![b'#'; 2048]).expect("written");
        let e = read_limited(&big, 1024).expect_err("too large");
        assert!(e.to_string().contains("larger than"), "{e}");
        assert_eq!(read_limited(&big, 4096).expect("fits").len(), 2048);
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read_limited(&fifo, 1024).expect_err("a FIFO");
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
