//! Files the agent writes (runtime rules, audit records) and reads (its configuration): never
//! through a symlink, with fixed modes (0600 files, 0700 directories created for them), and
//! never more than a bounded size read.
use std::{
    fs::{File, OpenOptions},
    io::{self, Read as _, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::Path,
};

const FILE_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o700;

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
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| symlink_refused(path, e))?;
    regular(path, &file)?;
    let mut text = String::new();
    file.take(max + 1).read_to_string(&mut text)?;
    if text.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is larger than {max} bytes", path.display()),
        ));
    }
    Ok(text)
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
    use std::os::unix::fs::PermissionsExt as _;

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
