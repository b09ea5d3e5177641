//! The VM's root file system: one newc cpio (uncompressed: QEMU loads it faster than the
//! guest would gunzip it under emulation) holding busybox, the release binaries, the test
//! executables, the shared libraries they load at the paths `ldd` names, and an /init that
//! sets up a pure cgroup v2 host and runs the tests.
use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, bail};

use super::TestRun;

/// Where the binaries are inside (KMEMCG_BIN_DIR) and the test executables.
pub const BIN_DIR: &str = "/kmemcg/bin";
pub const TESTS_DIR: &str = "/kmemcg/tests";
/// Lines of the console protocol between /init and the harness.
pub const BOOTED: &str = "KMEMCG-VM-BOOTED:";
pub const RESULT: &str = "KMEMCG-VM-RESULT:";
pub const HANG: &str = "KMEMCG-VM-HANG:";

/// The workspace's binaries the tests run (`kmemcg_tests::binary`).
const BINARIES: &[&str] = &["kmemcg", "kmemcg-workload"];
/// Host busybox (Debian's busybox-static): the shell of /init, `mount` and `umount` for the
/// tests, `ip` for loopback.
const BUSYBOX: &str = "/bin/busybox";

/// The test targets of kmemcg-tests (name -> executable), built if needed.
pub fn test_executables() -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(&cargo)
        .args([
            "test",
            "--release",
            "-p",
            "kmemcg-tests",
            "--no-run",
            "--message-format=json",
        ])
        .env("PATH", crate::setup::path_with_cargo_bin())
        .current_dir(crate::setup::workspace_root())
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cargo test --no-run for the test executables")?;
    if !out.status.success() {
        bail!(
            "building kmemcg-tests' test executables failed ({})",
            out.status
        );
    }
    let found = parse_test_executables(&String::from_utf8_lossy(&out.stdout));
    if found.is_empty() {
        bail!("cargo test --no-run listed no test executables of kmemcg-tests");
    }
    Ok(found)
}

/// The `executable` of each `test` target in cargo's JSON messages.
fn parse_test_executables(json_lines: &str) -> BTreeMap<String, PathBuf> {
    json_lines
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter(|m| {
            m["target"]["kind"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|k| k == "test"))
        })
        .filter_map(|m| {
            let name = m["target"]["name"].as_str()?.to_string();
            let exe = m["executable"].as_str()?;
            Some((name, PathBuf::from(exe)))
        })
        .collect()
}

/// Writes the initramfs for these test runs to `out`.
pub fn build(
    runs: &[TestRun],
    hang_dump_after: Duration,
    executables: &BTreeMap<String, PathBuf>,
    out: &Path,
) -> anyhow::Result<()> {
    let release = crate::setup::workspace_root().join("target/release");
    let mut cpio = Cpio::default();
    let mut elves = Vec::new();
    for name in BINARIES {
        let host = release.join(name);
        if !host.exists() {
            bail!(
                "{} is not built: run `cargo build --release --bins`",
                host.display()
            );
        }
        elves.push((host, format!("{BIN_DIR}/{name}")));
    }
    for run in runs {
        let host = executables
            .get(&run.binary)
            .with_context(|| format!("no test executable {}", run.binary))?;
        elves.push((host.clone(), format!("{TESTS_DIR}/{}", run.binary)));
    }
    elves.push((PathBuf::from(BUSYBOX), "/bin/busybox".into()));
    let mut libraries = std::collections::BTreeSet::new();
    for (host, inside) in elves {
        libraries.extend(shared_libraries(&host)?);
        cpio.file(&inside, Source::Host(host), 0o755);
    }
    for library in libraries {
        let inside = library.display().to_string();
        cpio.file(&inside, Source::Host(library), 0o755);
    }
    for applet in busybox_applets()? {
        if applet != "busybox" {
            cpio.symlink(&format!("/bin/{applet}"), "busybox");
        }
    }
    for dir in ["/proc", "/sys", "/dev", "/tmp", "/root", "/run"] {
        cpio.dir(dir);
    }
    // The kernel opens /dev/console for /init before anything is mounted.
    cpio.char_device("/dev/console", 5, 1);
    cpio.file(
        "/etc/hosts",
        Source::Bytes(b"127.0.0.1 localhost\n::1 localhost\n".to_vec()),
        0o644,
    );
    cpio.file(
        "/init",
        Source::Bytes(init_script(runs, hang_dump_after).into_bytes()),
        0o755,
    );
    // The tests read deploy/ files as env!("CARGO_MANIFEST_DIR")/../deploy: both directories
    // at their host paths.
    let root = crate::setup::workspace_root();
    cpio.dir(&root.join("tests").display().to_string());
    add_tree(&mut cpio, &root.join("deploy"))?;
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut writer = std::io::BufWriter::new(file);
    cpio.write(&mut writer)
        .and_then(|()| writer.flush())
        .with_context(|| format!("writing {}", out.display()))
}

/// A host directory's files, at the same paths inside.
fn add_tree(cpio: &mut Cpio, dir: &Path) -> anyhow::Result<()> {
    cpio.dir(&dir.display().to_string());
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            add_tree(cpio, &path)?;
        } else {
            cpio.file(
                &path.display().to_string(),
                Source::Host(path.clone()),
                0o644,
            );
        }
    }
    Ok(())
}

/// The shared objects an executable loads (none when it is static).
fn shared_libraries(executable: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(executable)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    if text.contains("statically linked") || err.contains("not a dynamic executable") {
        return Ok(Vec::new());
    }
    crate::image::libraries(&text).with_context(|| format!("libraries of {}", executable.display()))
}

fn busybox_applets() -> anyhow::Result<Vec<String>> {
    let out = Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .with_context(|| {
            format!("running {BUSYBOX} (cargo xtask setup installs busybox-static)")
        })?;
    if !out.status.success() {
        bail!("{BUSYBOX} --list failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}

/// /init: mounts, a pure cgroup v2 host with the memory controller on, loopback, then each
/// test binary one test at a time; one result line; power off. Any setup step that fails
/// ends the run with a FAIL line naming it. If the tests still run `hang_dump_after` the
/// boot, it lists the processes and every task's kernel stack, for the log of a timeout.
pub fn init_script(runs: &[TestRun], hang_dump_after: Duration) -> String {
    let dump_after = hang_dump_after.as_secs().max(1);
    let mut script = format!(
        r#"#!/bin/sh
# kmemcg's VM init (written by cargo xtask vm).
# Emulated CPUs run about ten times slower than the host: the tests wait that much longer.
export PATH=/bin HOME=/root TMPDIR=/tmp RUST_BACKTRACE=1 KMEMCG_BIN_DIR={BIN_DIR} KMEMCG_TEST_TIME_SCALE=10
fail() {{ echo "{RESULT} FAIL (setup: $*)"; sync; poweroff -f; exit 1; }}
mount -t proc proc /proc || fail "mount proc"
mount -t sysfs sysfs /sys || fail "mount sysfs"
mount -t devtmpfs devtmpfs /dev || fail "mount devtmpfs"
mount -t tmpfs tmpfs /tmp || fail "mount tmpfs on /tmp"
mount -t cgroup2 cgroup2 /sys/fs/cgroup || fail "mount cgroup2"
echo +memory > /sys/fs/cgroup/cgroup.subtree_control || fail "enable the memory controller"
for c in cpu pids; do echo +$c > /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null; done
mount -t tracefs tracefs /sys/kernel/tracing || fail "mount tracefs"
mount -t bpf bpf /sys/fs/bpf || fail "mount bpffs"
ip link set lo up || fail "bring up loopback"
paging=4-level
grep -qw la57 /proc/cpuinfo && paging=5-level
echo "{BOOTED} $(uname -r) $paging paging, $(nproc) CPUs"
# Every two minutes, the last lines of the newest agent log: a test that hangs says where.
(while sleep 120; do
    log=$(ls -t /tmp/kmemcg-test-agent-*.log 2>/dev/null | head -n 1)
    [ -n "$log" ] && tail -n 2 "$log" | sed "s|^|agent log: |"
done) &
(
    sleep {dump_after}
    echo "{HANG} the tests still run after {dump_after}s: processes, then every task's stack"
    ps
    dmesg -n 8
    echo t > /proc/sysrq-trigger
) &
# Tests of features this kernel does not get: `kmemcg_skip=a,b` on the command line.
skips=$(sed -n 's/.*kmemcg_skip=\([^ ]*\).*/\1/p' /proc/cmdline | tr ',' ' ')
failed=""
run() {{
    name=$1
    shift
    for s in $skips; do set -- "$@" --skip "$s"; done
    echo "KMEMCG-VM-RUN: $name $*"
    # Whole lines only: libtest's "test x ... " waits for its result, and a kernel message
    # printed meanwhile would split it.
    {{ {TESTS_DIR}/$name --test-threads=1 "$@"; echo $? > /run/rc; }} 2>&1 |
        while IFS= read -r line || [ -n "$line" ]; do printf '%s\n' "$line"; done
    rc=$(cat /run/rc)
    [ "$rc" = 0 ] || failed="$failed $name=$rc"
}}
"#
    );
    for run in runs {
        let args: Vec<String> = std::iter::once(&run.binary)
            .chain(&run.args)
            .map(|a| shell_quote(a))
            .collect();
        script.push_str(&format!("run {}\n", args.join(" ")));
    }
    script.push_str(&format!(
        r#"if [ -z "$failed" ]; then
    echo "{RESULT} PASS"
else
    echo "{RESULT} FAIL (exit codes:$failed)"
fi
sync
poweroff -f
"#
    ));
    script
}

/// `'...'` with embedded quotes closed, escaped and reopened.
fn shell_quote(arg: &str) -> String {
    format!("'{}'", arg.replace('\'', r"'\''"))
}

/// What an entry holds.
enum Node {
    Dir,
    File { source: Source, mode: u32 },
    Symlink(String),
    CharDevice(u32, u32),
}

pub enum Source {
    /// A host file, copied (symlinks followed).
    Host(PathBuf),
    Bytes(Vec<u8>),
}

/// The entries of a newc archive, by path; parents are added as directories.
#[derive(Default)]
pub struct Cpio {
    entries: BTreeMap<String, Node>,
}

impl Cpio {
    pub fn dir(&mut self, path: &str) {
        let path = path.trim_matches('/');
        if path.is_empty() {
            return;
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.entries.entry(path.to_string()).or_insert(Node::Dir);
    }

    fn add(&mut self, path: &str, node: Node) {
        let path = path.trim_matches('/');
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.entries.insert(path.to_string(), node);
    }

    pub fn file(&mut self, path: &str, source: Source, mode: u32) {
        self.add(path, Node::File { source, mode });
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.add(path, Node::Symlink(target.to_string()));
    }

    pub fn char_device(&mut self, path: &str, major: u32, minor: u32) {
        self.add(path, Node::CharDevice(major, minor));
    }

    /// Writes the archive. Sorted paths put each directory before what it holds.
    pub fn write(&self, out: &mut impl Write) -> std::io::Result<()> {
        use cpio::newc::Builder;
        for (index, (path, node)) in self.entries.iter().enumerate() {
            let ino = u32::try_from(index + 1).unwrap_or(u32::MAX);
            let entry = Builder::new(path).ino(ino);
            match node {
                Node::Dir => entry
                    .mode(0o040_755)
                    .nlink(2)
                    .write(&mut *out, 0)
                    .finish()?,
                Node::Symlink(target) => {
                    let mut w = entry.mode(0o120_777).write(&mut *out, len(target.len())?);
                    w.write_all(target.as_bytes())?;
                    w.finish()?
                }
                Node::CharDevice(major, minor) => entry
                    .mode(0o020_600)
                    .rdev_major(*major)
                    .rdev_minor(*minor)
                    .write(&mut *out, 0)
                    .finish()?,
                Node::File { source, mode } => {
                    let entry = entry.mode(0o100_000 | mode);
                    match source {
                        Source::Bytes(bytes) => {
                            let mut w = entry.write(&mut *out, len(bytes.len())?);
                            w.write_all(bytes)?;
                            w.finish()?
                        }
                        Source::Host(host) => {
                            let mut file = std::fs::File::open(host).map_err(|e| {
                                std::io::Error::new(e.kind(), format!("{}: {e}", host.display()))
                            })?;
                            let size = file.metadata()?.len();
                            let size = u32::try_from(size).map_err(|_| {
                                std::io::Error::other(format!("{} is over 4 GiB", host.display()))
                            })?;
                            let mut w = entry.write(&mut *out, size);
                            std::io::copy(&mut file, &mut w)?;
                            w.finish()?
                        }
                    }
                }
            };
        }
        cpio::newc::trailer(out)?;
        Ok(())
    }
}

fn len(n: usize) -> std::io::Result<u32> {
    u32::try_from(n).map_err(|_| std::io::Error::other("entry over 4 GiB"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_newc_archive_the_reader_reads_back() {
        let mut cpio = Cpio::default();
        cpio.file("/init", Source::Bytes(b"#!/bin/sh\n".to_vec()), 0o755);
        cpio.file("/lib64/ld.so", Source::Bytes(vec![7; 5]), 0o755);
        cpio.symlink("/bin/sh", "busybox");
        cpio.char_device("/dev/console", 5, 1);
        let mut bytes = Vec::new();
        cpio.write(&mut bytes).expect("writing");
        assert_eq!(bytes.len() % 4, 0);

        let mut entries = Vec::new();
        let mut reader = std::io::Cursor::new(bytes);
        loop {
            let mut entry = cpio::NewcReader::new(reader).expect("an entry");
            if entry.entry().is_trailer() {
                break;
            }
            let (name, mode) = (entry.entry().name().to_string(), entry.entry().mode());
            let rdev = (entry.entry().rdev_major(), entry.entry().rdev_minor());
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).expect("data");
            entries.push((name, mode, data, rdev));
            reader = entry.finish().expect("next entry");
        }
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/sh",
                "dev",
                "dev/console",
                "init",
                "lib64",
                "lib64/ld.so"
            ]
        );
        assert_eq!(entries[0].1, 0o040_755);
        assert_eq!(
            (entries[1].1, entries[1].2.as_slice()),
            (0o120_777, &b"busybox"[..])
        );
        assert_eq!((entries[3].1, entries[3].3), (0o020_600, (5, 1)));
        assert_eq!(
            (entries[4].1, entries[4].2.as_slice()),
            (0o100_755, &b"#!/bin/sh\n"[..])
        );
        assert_eq!(entries[6].2, [7; 5]);
    }

    #[test]
    fn init_runs_each_binary_with_quoted_filters_and_reports_one_result() {
        let runs = [
            TestRun {
                binary: "core".into(),
                args: vec![],
            },
            TestRun {
                binary: "truth".into(),
                args: vec!["it's".into(), "--exact".into()],
            },
        ];
        let script = init_script(&runs, Duration::from_secs(1140));
        assert!(script.contains("\nrun 'core'\n"), "{script}");
        assert!(
            script.contains(r"run 'truth' 'it'\''s' '--exact'"),
            "{script}"
        );
        assert!(script.contains("KMEMCG_BIN_DIR=/kmemcg/bin"));
        assert!(script.contains("echo +memory > /sys/fs/cgroup/cgroup.subtree_control"));
        assert_eq!(script.matches("KMEMCG-VM-RESULT: PASS").count(), 1);
        assert!(script.contains("sleep 1140\n"), "{script}");
        assert!(script.trim_end().ends_with("poweroff -f"));
    }

    #[test]
    fn finds_the_test_executables_in_cargo_messages() {
        let json = r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"kmemcg_tests"},"executable":null}
{"reason":"compiler-artifact","target":{"kind":["test"],"name":"core"},"executable":"/w/target/release/deps/core-1"}
{"reason":"compiler-artifact","target":{"kind":["bin"],"name":"kmemcg-workload"},"executable":"/w/target/release/kmemcg-workload"}
{"reason":"compiler-artifact","target":{"kind":["test"],"name":"truth"},"executable":"/w/target/release/deps/truth-2"}
{"reason":"build-finished","success":true}"#;
        let found = parse_test_executables(json);
        assert_eq!(
            found.into_iter().collect::<Vec<_>>(),
            [
                (
                    "core".into(),
                    PathBuf::from("/w/target/release/deps/core-1")
                ),
                (
                    "truth".into(),
                    PathBuf::from("/w/target/release/deps/truth-2")
                ),
            ]
        );
    }
}
