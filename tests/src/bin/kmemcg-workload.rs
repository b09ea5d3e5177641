//! Allocates known kernel objects from inside given cgroups, for kmemcg's tests and benchmark.
//!
//! `--join DIR` (repeatable) moves this process into each cgroup directory before it starts
//! (a v2 cgroup for attribution, a v1 memory cgroup of the same name as ground truth).
//! Workloads that hold objects print `ready` once allocated and keep them until standard input
//! closes.
use std::{
    io::{BufRead as _, Write as _},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::maps::{MapData, PerCpuArray};
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Args {
    /// cgroup directories to join first.
    #[arg(long)]
    join: Vec<PathBuf>,
    #[command(subcommand)]
    work: Work,
}

#[derive(Subcommand)]
enum Work {
    /// Create COUNT empty files in DIR (a dentry and an inode each), then exit.
    CreateFiles { dir: PathBuf, count: u32 },
    /// Remove every file in DIR, then exit.
    DeleteFiles { dir: PathBuf },
    /// Write BYTES bytes to the file PATH (its pages are charged to this process's memory
    /// cgroup, and stay charged to it after the process exits), then exit.
    WriteFile { path: PathBuf, bytes: usize },
    /// Create directories d0..d(COUNT-1) in DIR, then exit. In a cgroup v1 memory directory
    /// each is a memory cgroup whose percpu statistics the kernel charges to this process's
    /// memory cgroup.
    MakeDirs { dir: PathBuf, count: u32 },
    /// Create COUNT percpu array maps of ENTRIES values of VALUE_SIZE bytes (one percpu
    /// allocation per value), print `ready`, hold them until stdin closes.
    PercpuMaps {
        count: u32,
        entries: u32,
        #[arg(value_parser = ["8", "64", "512", "4096"])]
        value_size: String,
    },
    /// Print `ready` and wait until stdin closes, allocating nothing.
    Idle,
    /// Print `ready`; for each line read on stdin, create COUNT more files in DIR and print
    /// `done`. For moving a process between cgroups between two steps.
    FileSteps { dir: PathBuf, count: u32 },
    /// Print `ready`, then create files f0, f1, ... in DIR, RATE per second, until killed (or
    /// until stdin closes). For enforcement tests: usage that keeps growing.
    FileLoop {
        dir: PathBuf,
        rate: u32,
        /// Ignore SIGTERM (to test escalation to SIGKILL).
        #[arg(long)]
        ignore_sigterm: bool,
    },
    /// For each of COUNT child cgroups of PARENT (a cgroup v2 directory this process is in):
    /// create it, move in, create a file in DIR (kernel objects that outlive the cgroup), move
    /// back, remove it. Prints the time taken.
    Churn {
        parent: PathBuf,
        dir: PathBuf,
        count: u32,
    },
    /// Start COUNT threads that sleep (a kernel stack each), print `ready`, hold them until
    /// stdin closes.
    Threads { count: u32 },
    /// Create COUNT Unix socketpairs, print `ready`, hold them until stdin closes.
    Socketpairs { count: u32 },
    /// Queue COUNT 100-byte messages, unread, on Unix stream socketpairs (an skb each, whose
    /// head comes from `skbuff_head_cache`, a cache without `SLAB_ACCOUNT`), print `ready`,
    /// hold them until stdin closes.
    QueuedMessages { count: u32 },
    /// Map COUNT one-page anonymous regions that cannot merge (a `vm_area_struct` each, and
    /// maple tree nodes), print `ready`, hold them until stdin closes.
    Mappings { count: u32 },
    /// For SECONDS: create a batch of files in DIR, socketpairs and a forked child that exits,
    /// then delete and close them all; nothing is left when it returns.
    ChurnMix { dir: PathBuf, seconds: f64 },
    /// For each of COUNT child cgroups of the cgroup directories PARENTS (comma separated:
    /// v2 and v1 memory of the same path, this process being in them): create them, move in,
    /// create a file in DIR, a socketpair and a child that exits, move back, remove them.
    ChurnUse {
        parents: String,
        dir: PathBuf,
        count: u32,
    },
    /// In phases PAUSE seconds apart: keep FILES files open (/dev/null: a `struct file`
    /// each), create TMPFS_FILES files in DIR (a dentry and an inode each), open SOCKETPAIRS
    /// Unix socketpairs and close half of them; then print `ready` and hold what is left until
    /// stdin closes. For leak recording tests.
    LeakPhases {
        dir: PathBuf,
        files: u32,
        tmpfs_files: u32,
        socketpairs: u32,
        #[arg(long, default_value_t = 2.0)]
        pause: f64,
    },
    /// Allocation-heavy mix for the benchmark for SECONDS: open/close, create/unlink,
    /// sockets, pipes and percpu maps in DIR. Prints operations per second.
    Mix { dir: PathBuf, seconds: f64 },
    /// hackbench's pattern (`perf bench sched messaging`) for SECONDS: pairs of threads
    /// passing 100-byte messages over unix stream sockets, each message an skb and its data
    /// (unaccounted slab objects) allocated by one thread and freed by the other. Prints
    /// messages per second.
    Messaging { seconds: f64 },
    /// hackbench itself (`perf bench sched messaging -g GROUPS`, process mode) for SECONDS:
    /// GROUPS groups of 20 sender and 20 receiver processes; each sender writes 100-byte
    /// messages to every receiver of its group over unix stream sockets. Prints messages per
    /// second.
    Hackbench {
        seconds: f64,
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=50))]
        groups: u32,
    },
    /// fork + exec of `/bin/true` and a wait, over and over for SECONDS (a task, its mm, its
    /// files and credentials each time). Prints execs per second.
    ForkExec { seconds: f64 },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    for cgroup in &args.join {
        join(cgroup)?;
    }
    match args.work {
        Work::CreateFiles { dir, count } => create_files(&dir, count),
        Work::DeleteFiles { dir } => delete_files(&dir),
        Work::WriteFile { path, bytes } => std::fs::write(&path, vec![0x5a; bytes])
            .with_context(|| format!("writing {bytes} bytes to {}", path.display())),
        Work::MakeDirs { dir, count } => (0..count).try_for_each(|i| {
            let path = dir.join(format!("d{i}"));
            std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))
        }),
        Work::PercpuMaps {
            count,
            entries,
            value_size,
        } => percpu_maps(count, entries, &value_size),
        Work::Idle => hold(|| Ok(())),
        Work::Threads { count } => threads(count),
        Work::FileSteps { dir, count } => file_steps(&dir, count),
        Work::FileLoop {
            dir,
            rate,
            ignore_sigterm,
        } => {
            if ignore_sigterm {
                // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
                unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
            }
            file_loop(&dir, rate)
        }
        Work::Churn { parent, dir, count } => churn(&parent, &dir, count),
        Work::QueuedMessages { count } => queued_messages(count),
        Work::Socketpairs { count } => {
            let pairs = (0..count)
                .map(|_| std::os::unix::net::UnixStream::pair())
                .collect::<Result<Vec<_>, _>>()
                .context("creating socketpairs")?;
            hold(|| Ok(()))?;
            drop(pairs);
            Ok(())
        }
        Work::Mappings { count } => {
            mappings(count)?;
            hold(|| Ok(()))
        }
        Work::LeakPhases {
            dir,
            files,
            tmpfs_files,
            socketpairs,
            pause,
        } => leak_phases(
            &dir,
            files,
            tmpfs_files,
            socketpairs,
            Duration::from_secs_f64(pause),
        ),
        Work::ChurnMix { dir, seconds } => churn_mix(&dir, Duration::from_secs_f64(seconds)),
        Work::ChurnUse {
            parents,
            dir,
            count,
        } => churn_use(&parents, &dir, count),
        Work::Mix { dir, seconds } => mix(&dir, Duration::from_secs_f64(seconds)),
        Work::Messaging { seconds } => messaging(Duration::from_secs_f64(seconds)),
        Work::Hackbench { seconds, groups } => hackbench(groups, Duration::from_secs_f64(seconds)),
        Work::ForkExec { seconds } => fork_exec(Duration::from_secs_f64(seconds)),
    }
}

fn join(cgroup: &Path) -> anyhow::Result<()> {
    let procs = cgroup.join("cgroup.procs");
    std::fs::write(&procs, std::process::id().to_string())
        .with_context(|| format!("joining cgroup {}", cgroup.display()))
}

fn create_files(dir: &Path, count: u32) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for i in 0..count {
        let path = dir.join(format!("f{i}"));
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    }
    Ok(())
}

fn leak_phases(
    dir: &Path,
    files: u32,
    tmpfs_files: u32,
    socketpairs: u32,
    pause: Duration,
) -> anyhow::Result<()> {
    let descriptors = (files + 2 * socketpairs + 64) as u64;
    let limit = libc::rlimit {
        rlim_cur: descriptors,
        rlim_max: descriptors,
    };
    // SAFETY: a valid rlimit; raising the hard limit needs root, which the tests have.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        bail!(
            "raising the open file limit to {descriptors}: {}",
            std::io::Error::last_os_error()
        );
    }
    let open = (0..files)
        .map(|_| std::fs::File::open("/dev/null"))
        .collect::<Result<Vec<_>, _>>()
        .context("opening /dev/null")?;
    std::thread::sleep(pause);
    create_files(dir, tmpfs_files)?;
    std::thread::sleep(pause);
    let mut pairs = (0..socketpairs)
        .map(|_| std::os::unix::net::UnixStream::pair())
        .collect::<Result<Vec<_>, _>>()
        .context("creating socketpairs")?;
    pairs.truncate((socketpairs - socketpairs / 2) as usize);
    hold(|| Ok(()))?;
    drop((open, pairs));
    Ok(())
}

fn file_steps(dir: &Path, count: u32) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    println!("ready");
    std::io::stdout().flush()?;
    for (step, line) in std::io::stdin().lock().lines().enumerate() {
        line?;
        for i in 0..count {
            std::fs::File::create(dir.join(format!("s{step}-{i}")))?;
        }
        println!("done");
        std::io::stdout().flush()?;
    }
    Ok(())
}

fn file_loop(dir: &Path, rate: u32) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    // Ends the loop when the test drops the workload (closes stdin).
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            if line.is_err() {
                break;
            }
        }
        let _ = tx.send(());
    });
    println!("ready");
    std::io::stdout().flush()?;
    let start = Instant::now();
    let mut i: u64 = 0;
    loop {
        if rx.try_recv().is_ok() {
            return Ok(());
        }
        // Ten files per batch, paced to RATE per second.
        for _ in 0..10 {
            match std::fs::File::create(dir.join(format!("f{i}"))) {
                Ok(_) => i += 1,
                // The test unmounted its tmpfs: done.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
        let due = Duration::from_secs_f64(i as f64 / f64::from(rate.max(1)));
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
}

fn delete_files(dir: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        std::fs::remove_file(entry?.path())?;
    }
    Ok(())
}

fn percpu_maps(count: u32, entries: u32, value_size: &str) -> anyhow::Result<()> {
    fn create<const N: usize>(
        count: u32,
        entries: u32,
    ) -> anyhow::Result<Vec<PerCpuArray<MapData, [u8; N]>>> {
        (0..count)
            .map(|_| PerCpuArray::create(entries, 0).context("creating a percpu array map"))
            .collect()
    }
    match value_size {
        "8" => hold_maps(create::<8>(count, entries)?),
        "64" => hold_maps(create::<64>(count, entries)?),
        "512" => hold_maps(create::<512>(count, entries)?),
        "4096" => hold_maps(create::<4096>(count, entries)?),
        other => bail!("unsupported value size {other}"),
    }
}

fn hold_maps<T>(maps: Vec<T>) -> anyhow::Result<()> {
    hold(|| Ok(()))?;
    drop(maps);
    Ok(())
}

/// Regions stay mapped until the process exits.
fn mappings(count: u32) -> anyhow::Result<()> {
    for i in 0..count {
        // Neighbours differ in protection, so that the kernel cannot merge them.
        let prot = if i % 2 == 0 {
            libc::PROT_READ
        } else {
            libc::PROT_NONE
        };
        // SAFETY: a new private anonymous mapping; nothing else is touched.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if address == libc::MAP_FAILED {
            bail!("mapping region {i}: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Prints `ready`, then waits for stdin to close.
fn threads(count: u32) -> anyhow::Result<()> {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let stopped = std::sync::Arc::new(std::sync::Mutex::new(stopped));
    let handles = (0..count)
        .map(|_| {
            let stopped = stopped.clone();
            std::thread::Builder::new()
                .stack_size(64 << 10)
                .spawn(move || {
                    // Every thread waits on the lock or the channel until the end.
                    let _ = stopped.lock().map(|rx| rx.recv());
                })
        })
        .collect::<Result<Vec<_>, _>>()
        .context("starting threads")?;
    hold(|| Ok(()))?;
    drop(stop);
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

fn hold(prepare: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    prepare()?;
    println!("ready");
    std::io::stdout().flush()?;
    for line in std::io::stdin().lock().lines() {
        line?;
    }
    Ok(())
}

fn churn(parent: &Path, dir: &Path, count: u32) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let start = Instant::now();
    for i in 0..count {
        let cgroup = parent.join(format!("churn-{i}"));
        std::fs::create_dir(&cgroup).with_context(|| format!("creating {}", cgroup.display()))?;
        join(&cgroup)?;
        std::fs::File::create(dir.join(format!("c{i}")))?;
        join(parent)?;
        std::fs::remove_dir(&cgroup).with_context(|| format!("removing {}", cgroup.display()))?;
    }
    println!("{count} cgroups in {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}

/// Forks a child that exits at once, and reaps it.
fn fork_exit() -> anyhow::Result<()> {
    // SAFETY: the child only calls _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: in the child.
        unsafe { libc::_exit(0) };
    }
    anyhow::ensure!(pid > 0, "fork failed");
    let mut status = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    Ok(())
}

fn churn_mix(dir: &Path, duration: Duration) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let start = Instant::now();
    let mut rounds = 0u64;
    while start.elapsed() < duration {
        let mut files = Vec::new();
        for i in 0..100 {
            let path = dir.join(format!("c{i}"));
            files.push(std::fs::File::create(&path)?);
        }
        let pairs = (0..20)
            .map(|_| std::os::unix::net::UnixStream::pair())
            .collect::<Result<Vec<_>, _>>()?;
        fork_exit()?;
        drop(pairs);
        drop(files);
        for i in 0..100 {
            std::fs::remove_file(dir.join(format!("c{i}")))?;
        }
        rounds += 1;
    }
    println!("{rounds} rounds");
    Ok(())
}

fn churn_use(parents: &str, dir: &Path, count: u32) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let parents: Vec<PathBuf> = parents.split(',').map(PathBuf::from).collect();
    let start = Instant::now();
    for i in 0..count {
        let children: Vec<PathBuf> = parents.iter().map(|p| p.join(format!("use-{i}"))).collect();
        for child in &children {
            std::fs::create_dir(child).with_context(|| format!("creating {}", child.display()))?;
            join(child)?;
        }
        std::fs::File::create(dir.join(format!("u{i}")))?;
        drop(std::os::unix::net::UnixStream::pair()?);
        fork_exit()?;
        for (parent, child) in parents.iter().zip(&children) {
            join(parent)?;
            std::fs::remove_dir(child).with_context(|| format!("removing {}", child.display()))?;
        }
    }
    println!("{count} cgroups in {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}

fn mix(dir: &Path, duration: Duration) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let start = Instant::now();
    let mut ops: u64 = 0;
    let mut round: u64 = 0;
    while start.elapsed() < duration {
        for i in 0..64 {
            // create + unlink: dentry, inode, filp
            let path = dir.join(format!("m{i}"));
            std::fs::File::create(&path)?;
            std::fs::remove_file(&path)?;
            // open + close of an existing file
            drop(std::fs::File::open(dir)?);
            // a socket and a pipe
            drop(std::net::UdpSocket::bind("127.0.0.1:0")?);
            let mut fds = [0i32; 2];
            // SAFETY: pipe(2) fills two fds, closed right away.
            unsafe {
                if libc::pipe(fds.as_mut_ptr()) == 0 {
                    libc::close(fds[0]);
                    libc::close(fds[1]);
                }
            }
            ops += 4;
        }
        // a percpu allocation (and its free) every round
        drop(PerCpuArray::<MapData, u64>::create(1, 0)?);
        ops += 1;
        round += 1;
    }
    let rate = ops as f64 / start.elapsed().as_secs_f64();
    println!("{rate:.0} ops/s ({round} rounds)");
    Ok(())
}

fn messaging(duration: Duration) -> anyhow::Result<()> {
    use std::{
        io::{Read as _, Write as _},
        os::unix::net::UnixStream,
        sync::{
            Arc,
            atomic::{AtomicBool, Ordering::Relaxed},
        },
    };
    const PAIRS: usize = 8;
    const MESSAGE: usize = 100;
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut readers = Vec::new();
    for _ in 0..PAIRS {
        let (mut tx, mut rx) = UnixStream::pair().context("socketpair")?;
        let stop = stop.clone();
        // The writer closes its end when told to stop; its reader then reads to the end.
        std::thread::spawn(move || {
            let message = [0u8; MESSAGE];
            while !stop.load(Relaxed) && tx.write_all(&message).is_ok() {}
        });
        readers.push(std::thread::spawn(move || {
            let mut message = [0u8; MESSAGE];
            let mut received = 0u64;
            while rx.read_exact(&mut message).is_ok() {
                received += 1;
            }
            received
        }));
    }
    std::thread::sleep(duration);
    stop.store(true, Relaxed);
    let mut messages = 0;
    for reader in readers {
        messages += reader
            .join()
            .map_err(|_| anyhow::anyhow!("a reader panicked"))?;
    }
    let rate = messages as f64 / start.elapsed().as_secs_f64();
    println!("{rate:.0} messages/s ({PAIRS} socket pairs)");
    Ok(())
}

/// Processes per side of a hackbench group, as `perf bench sched messaging` has them.
const HACKBENCH_FDS: usize = 20;

fn hackbench(groups: u32, duration: Duration) -> anyhow::Result<()> {
    use std::os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::net::UnixStream,
    };
    const MESSAGE: usize = 100;
    let deadline = Instant::now() + duration;
    let start = Instant::now();
    // Receivers report how many messages they read, 8 bytes each, through one pipe.
    let (results_rx, results_tx) = std::io::pipe().context("pipe")?;
    let mut children = Vec::new();
    for _ in 0..groups {
        let pairs = (0..HACKBENCH_FDS)
            .map(|_| UnixStream::pair())
            .collect::<Result<Vec<_>, _>>()
            .context("socketpair")?;
        let (ins, outs): (Vec<OwnedFd>, Vec<OwnedFd>) =
            pairs.into_iter().map(|(a, b)| (a.into(), b.into())).unzip();
        for receiver in &outs {
            let fd = receiver.as_raw_fd();
            let ins_fds: Vec<i32> = ins.iter().map(|f| f.as_raw_fd()).collect();
            let report = results_tx.as_raw_fd();
            children.push(fork_child(move || {
                // Without this end, the socket reads end of file once every sender has exited.
                for fd in ins_fds {
                    // SAFETY: the child's copies of the senders' ends.
                    unsafe { libc::close(fd) };
                }
                let mut message = [0u8; MESSAGE];
                let mut received = 0u64;
                let (mut socket, mut report) = (shared_fd(fd), shared_fd(report));
                while std::io::Read::read_exact(&mut *socket, &mut message).is_ok() {
                    received += 1;
                }
                let _ = report.write_all(&received.to_ne_bytes());
            })?);
        }
        for _ in 0..HACKBENCH_FDS {
            let targets: Vec<i32> = ins.iter().map(|f| f.as_raw_fd()).collect();
            children.push(fork_child(move || {
                let message = [0u8; MESSAGE];
                'send: while Instant::now() < deadline {
                    for &fd in &targets {
                        if shared_fd(fd).write_all(&message).is_err() {
                            break 'send;
                        }
                    }
                }
            })?);
        }
    }
    drop(results_tx);
    let mut messages = 0u64;
    let mut results = std::io::BufReader::new(results_rx);
    let mut count = [0u8; 8];
    while std::io::Read::read_exact(&mut results, &mut count).is_ok() {
        messages += u64::from_ne_bytes(count);
    }
    for pid in children {
        let mut status = 0;
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
    }
    let rate = messages as f64 / start.elapsed().as_secs_f64();
    println!("{rate:.0} messages/s ({groups} groups of {HACKBENCH_FDS} senders and receivers)");
    Ok(())
}

/// Forks a child that runs `work` and exits; returns its pid.
fn fork_child(work: impl FnOnce()) -> anyhow::Result<i32> {
    // SAFETY: the child runs `work`, which only reads, writes and closes file descriptors,
    // and exits without unwinding.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        work();
        // SAFETY: in the child.
        unsafe { libc::_exit(0) };
    }
    anyhow::ensure!(pid > 0, "fork failed: {}", std::io::Error::last_os_error());
    Ok(pid)
}

/// A file descriptor this process shares with others, as a `File` that does not close it.
fn shared_fd(fd: i32) -> std::mem::ManuallyDrop<std::fs::File> {
    use std::os::fd::FromRawFd as _;
    // SAFETY: `fd` is open for the whole process; ManuallyDrop never closes it.
    std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) })
}

fn fork_exec(duration: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut execs = 0u64;
    while start.elapsed() < duration {
        let status = std::process::Command::new("/bin/true")
            .status()
            .context("running /bin/true")?;
        anyhow::ensure!(status.success(), "/bin/true failed: {status}");
        execs += 1;
    }
    let rate = execs as f64 / start.elapsed().as_secs_f64();
    println!("{rate:.0} execs/s");
    Ok(())
}

fn queued_messages(count: u32) -> anyhow::Result<()> {
    use std::{io::Write as _, os::unix::net::UnixStream};
    let mut pairs: Vec<(UnixStream, UnixStream)> = Vec::new();
    let mut queued = 0;
    while queued < count {
        let (mut tx, rx) = UnixStream::pair().context("socketpair")?;
        tx.set_nonblocking(true)?;
        // Until the socket's send buffer is full: one skb per write.
        while queued < count {
            match tx.write(&[0u8; 100]) {
                Ok(100) => queued += 1,
                Ok(n) => bail!("a short write of {n} bytes"),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e).context("queueing a message"),
            }
        }
        pairs.push((tx, rx));
    }
    hold(|| Ok(()))?;
    drop(pairs);
    Ok(())
}
