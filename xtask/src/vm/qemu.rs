//! One VM: QEMU with the kernel, the initramfs and the serial console on a pipe, bounded by
//! a timeout. Every console line goes to the log file; the tests' progress and the kernel's
//! alarms are also printed, prefixed with the kernel's name.
use std::{
    io::{BufRead as _, BufReader, Read, Write as _},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::initramfs::{BOOTED, RESULT};

/// How long a guest may take to power off after its result line.
const POWEROFF_GRACE: Duration = Duration::from_secs(60);

/// KVM only with a real VMX/SVM module; otherwise (no KVM, or this kind of machine's
/// `kvm_pvm`, on which stock kernels hang at boot) single-threaded TCG: multi-threaded TCG
/// oopses 6.16 at boot.
pub fn accelerator() -> &'static str {
    let real_kvm = ["kvm_intel", "kvm_amd"]
        .iter()
        .any(|m| Path::new("/sys/module").join(m).exists());
    if real_kvm && Path::new("/dev/kvm").exists() {
        "kvm"
    } else {
        "tcg,thread=single"
    }
}

pub fn available() -> bool {
    Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// What a run saw.
pub struct Console {
    pub lines: Vec<String>,
    pub timed_out: bool,
    /// Since QEMU started: /init's first line, the first test binary's first line, the end.
    pub booted: Option<Duration>,
    pub first_test: Option<Duration>,
    pub total: Duration,
}

pub struct Vm<'a> {
    pub name: &'a str,
    pub vmlinuz: &'a Path,
    pub initramfs: &'a Path,
    pub cpu: &'a str,
    /// Tests this kernel skips (libtest `--skip` filters), handed to /init on the command line.
    pub skip: &'a [&'a str],
    pub timeout: Duration,
    pub log: &'a Path,
}

impl Vm<'_> {
    pub fn run(&self) -> anyhow::Result<Console> {
        let mut log = std::fs::File::create(self.log)
            .with_context(|| format!("creating {}", self.log.display()))?;
        let accel = accelerator();
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-accel", accel, "-m", "2G", "-smp", "2", "-cpu", self.cpu])
            .arg("-kernel")
            .arg(self.vmlinuz)
            .arg("-initrd")
            .arg(self.initramfs)
            // panic=-1 reboots at once, and -no-reboot turns that into QEMU's exit.
            // loglevel=5 keeps warnings and oopses on the console, not the boot chatter.
            .args([
                "-append",
                &format!(
                    "console=ttyS0 panic=-1 loglevel=5 kmemcg_skip={}",
                    self.skip.join(",")
                ),
            ])
            // No network but the guest's loopback, no display, the console on stdout.
            .args(["-nodefaults", "-nic", "none", "-display", "none"])
            .args(["-serial", "stdio", "-no-reboot"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        writeln!(log, "# {cmd:?}")?;
        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .context("starting qemu-system-x86_64 (cargo xtask setup installs qemu-system-x86)")?;
        let (tx, rx) = mpsc::channel();
        let readers = [
            forward(
                child.stdout.take().context("QEMU's stdout")?,
                "",
                tx.clone(),
            ),
            forward(child.stderr.take().context("QEMU's stderr")?, "qemu: ", tx),
        ];
        let mut console = Console {
            lines: Vec::new(),
            timed_out: false,
            booted: None,
            first_test: None,
            total: Duration::ZERO,
        };
        let mut deadline = start + self.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    writeln!(log, "{line}")?;
                    let at = start.elapsed();
                    if line.starts_with(BOOTED) {
                        console.booted.get_or_insert(at);
                    }
                    if line.starts_with("running ") {
                        console.first_test.get_or_insert(at);
                    }
                    if line.starts_with(RESULT) {
                        deadline = deadline.min(Instant::now() + POWEROFF_GRACE);
                    }
                    if worth_showing(&line) {
                        println!("[{} {:>4}s] {line}", self.name, at.as_secs());
                    }
                    console.lines.push(line);
                }
                // Both pipes closed: QEMU has exited.
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let seen_result = console.lines.iter().any(|l| l.starts_with(RESULT));
                    console.timed_out = !seen_result;
                    let why = if seen_result {
                        "did not power off after its result"
                    } else {
                        "timed out"
                    };
                    writeln!(log, "# xtask: killing QEMU: the VM {why}")?;
                    let _ = child.kill();
                    break;
                }
            }
        }
        let _ = child.wait();
        for reader in readers {
            let _ = reader.join();
        }
        console.total = start.elapsed();
        Ok(console)
    }
}

/// Sends each line of a pipe (`\r\n` or `\n`, not necessarily UTF-8) until it closes.
fn forward(
    pipe: impl Read + Send + 'static,
    prefix: &'static str,
    tx: mpsc::Sender<String>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
            let text = String::from_utf8_lossy(&buf);
            let line = format!("{prefix}{}", text.trim_end_matches(['\r', '\n']));
            if tx.send(line).is_err() {
                break;
            }
            buf.clear();
        }
    })
}

/// The tests' progress, /init's protocol and the kernel's alarms; the rest stays in the log.
fn worth_showing(line: &str) -> bool {
    let markers = ["KMEMCG-VM-", "running ", "test ", "qemu: "];
    let alarms = [
        "Kernel panic",
        "BUG: ",
        "Oops: ",
        "WARNING: ",
        "panicked at",
        "error: ",
    ];
    markers.iter().any(|m| line.starts_with(m)) || alarms.iter().any(|a| line.contains(a))
}
