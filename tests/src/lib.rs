//! Test harness for kmemcg against the real kernel: throwaway cgroups, a tmpfs, the real
//! `kmemcg` agent binary and the `kmemcg-workload` helper. Every guard removes what it made
//! when dropped, also when a test panics.
//!
//! The tests need root, and run one at a time (`--test-threads=1`): they share the kernel.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpListener},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

pub mod prometheus;
mod scratch;

pub use scratch::{Bpffs, scratch, scratch_dir};

pub use kmemcg_agent::api::{CacheUsage, CgroupUsage, DyingCgroup, Status};

/// Every cgroup the tests make starts with this, so that leftovers are recognisable.
pub const CGROUP_PREFIX: &str = "kmemcg-test-";
const CGROUP2_ROOT: &str = "/sys/fs/cgroup/unified";
const CGROUP2_ROOT_PURE: &str = "/sys/fs/cgroup";
const MEMORY_V1_ROOT: &str = "/sys/fs/cgroup/memory";

static SEQUENCE: AtomicU32 = AtomicU32::new(0);

fn unique(name: &str) -> String {
    format!(
        "{CGROUP_PREFIX}{name}-{}-{}",
        std::process::id(),
        SEQUENCE.fetch_add(1, Ordering::Relaxed)
    )
}

/// `timeout` stretched by `$KMEMCG_TEST_TIME_SCALE` (default 1): emulated machines, such as
/// the kernel matrix's VMs, run about ten times slower than the host.
pub fn patience(timeout: Duration) -> Duration {
    let scale = std::env::var("KMEMCG_TEST_TIME_SCALE")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 1.0)
        .unwrap_or(1.0);
    timeout.mul_f64(scale)
}

/// Path of a built binary of the workspace: `$KMEMCG_BIN_DIR/name`, or next to the test
/// executable's profile directory (target/<profile>/name).
pub fn binary(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("KMEMCG_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let exe = std::env::current_exe().expect("executable path");
    // target/<profile>/deps/<test> or target/<profile>/<bin> -> target/<profile>/<name>
    let mut profile_dir = exe.parent().expect("target/<profile> directory");
    if profile_dir.ends_with("deps") {
        profile_dir = profile_dir.parent().expect("target/<profile> directory");
    }
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --bins` with this profile first \
         (cargo xtask test does)",
        path.display()
    );
    path
}

pub fn kmemcg_bin() -> PathBuf {
    binary("kmemcg")
}

pub fn workload_bin() -> PathBuf {
    binary("kmemcg-workload")
}

/// The cgroup v2 mount point.
pub fn cgroup2_root() -> PathBuf {
    if Path::new(CGROUP2_ROOT).join("cgroup.procs").exists() {
        PathBuf::from(CGROUP2_ROOT)
    } else {
        PathBuf::from(CGROUP2_ROOT_PURE)
    }
}

/// A throwaway cgroup: v2 for attribution and, where the v1 memory controller is mounted, a
/// v1 memory cgroup of the same name as ground truth. Dropping it kills its processes and
/// removes both.
pub struct TestCgroup {
    /// Path from the cgroup root, e.g. `/kmemcg-test-files-123-0`.
    path: String,
    v2_dir: PathBuf,
    memory_dir: Option<PathBuf>,
}

impl TestCgroup {
    pub fn new(name: &str) -> Self {
        Self::create(&format!("/{}", unique(name)))
    }

    fn create(path: &str) -> Self {
        let v2_dir = cgroup2_root().join(path.trim_start_matches('/'));
        std::fs::create_dir(&v2_dir)
            .unwrap_or_else(|e| panic!("creating cgroup {}: {e}", v2_dir.display()));
        let memory_dir = memory_v1_root().map(|root| {
            let dir = root.join(path.trim_start_matches('/'));
            std::fs::create_dir(&dir)
                .unwrap_or_else(|e| panic!("creating cgroup {}: {e}", dir.display()));
            dir
        });
        Self {
            path: path.to_string(),
            v2_dir,
            memory_dir,
        }
    }

    /// A child cgroup with a guard of its own. Declare it after its parent, so that it is
    /// dropped (removed) first.
    pub fn under(parent: &TestCgroup, name: &str) -> Self {
        // On cgroup v2 a child has the memory controller (and its figures) only where the
        // parent hands it down. Refused while the parent holds processes: then it has none.
        if parent.memory_dir.is_none() && parent.v2_dir.join("memory.stat").exists() {
            let _ = std::fs::write(parent.v2_dir.join("cgroup.subtree_control"), "+memory");
        }
        Self::create(&format!("{}/{name}", parent.path))
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// cgroup v2 id: the inode number of its directory.
    pub fn id(&self) -> u64 {
        std::fs::metadata(&self.v2_dir).expect("stat cgroup").ino()
    }

    pub fn v2_dir(&self) -> &Path {
        &self.v2_dir
    }

    /// The v1 memory cgroup of the same path, where the memory controller is on v1.
    pub fn memory_dir(&self) -> Option<&Path> {
        self.memory_dir.as_deref()
    }

    /// The directories a workload joins.
    pub fn join_dirs(&self) -> Vec<PathBuf> {
        std::iter::once(self.v2_dir.clone())
            .chain(self.memory_dir.clone())
            .collect()
    }

    /// The kernel's own kmem charge: the v1 memory cgroup's `memory.kmem.usage_in_bytes`
    /// where the memory controller is on v1, else the `slab` and `percpu` lines of the v2
    /// cgroup's `memory.stat`, byte counts of what kmemcg's accounted bytes measure (its
    /// `kernel` line, in pages, also counts stacks and page tables).
    pub fn kmem_usage(&self) -> Option<u64> {
        if let Some(dir) = &self.memory_dir {
            let text = std::fs::read_to_string(dir.join("memory.kmem.usage_in_bytes")).ok()?;
            return text.trim().parse().ok();
        }
        Some(self.memory_stat("slab")? + self.memory_stat("percpu")?)
    }

    /// A line of the v2 cgroup's `memory.stat`, where the memory controller is on v2.
    pub fn memory_stat(&self, key: &str) -> Option<u64> {
        let text = std::fs::read_to_string(self.v2_dir.join("memory.stat")).ok()?;
        text.lines().find_map(|line| {
            let (name, value) = line.split_once(' ')?;
            (name == key).then(|| value.trim().parse().ok())?
        })
    }

    /// Runs `kmemcg-workload` inside this cgroup to completion.
    pub fn run(&self, work: &[&str]) -> Output {
        let output = workload_command(self, work)
            .output()
            .expect("running kmemcg-workload");
        assert!(
            output.status.success(),
            "kmemcg-workload {work:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// Runs `kmemcg-workload` inside this cgroup until it ends or a limit's signal ends it
    /// (a rule on the cgroup may act before the work is done).
    pub fn run_until_signalled(&self, work: &[&str]) {
        use std::os::unix::process::ExitStatusExt as _;
        let output = workload_command(self, work)
            .output()
            .expect("running kmemcg-workload");
        assert!(
            output.status.success() || output.status.signal().is_some(),
            "kmemcg-workload {work:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Starts a holding workload inside this cgroup and waits for its `ready`.
    pub fn hold(&self, work: &[&str]) -> HeldWorkload {
        HeldWorkload::start(workload_command(self, work), work)
    }

    /// Kills its processes, removes it and creates it again at once under the same path, as
    /// a service restart does: a new cgroup (a new id) of the same name.
    pub fn recreate(mut self) -> Self {
        let path = self.path.clone();
        self.teardown();
        drop(self);
        Self::create(&path)
    }

    /// Removes the cgroup now, as `Drop` would.
    pub fn remove(mut self) {
        self.teardown();
    }

    fn teardown(&mut self) {
        kill_all(&self.v2_dir);
        remove_dir_retrying(&self.v2_dir);
        if let Some(dir) = self.memory_dir.take() {
            remove_dir_retrying(&dir);
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if self.v2_dir.exists() {
            self.teardown();
        }
    }
}

fn memory_v1_root() -> Option<PathBuf> {
    let root = PathBuf::from(MEMORY_V1_ROOT);
    root.join("memory.kmem.usage_in_bytes")
        .exists()
        .then_some(root)
}

fn workload_command(cgroup: &TestCgroup, work: &[&str]) -> Command {
    let mut cmd = Command::new(workload_bin());
    for dir in cgroup.join_dirs() {
        cmd.arg("--join").arg(dir);
    }
    cmd.args(work);
    cmd
}

/// Kills every process of a cgroup this harness made (cgroup.kill, else SIGKILL each).
fn kill_all(v2_dir: &Path) {
    let kill = v2_dir.join("cgroup.kill");
    if kill.exists() {
        let _ = std::fs::write(&kill, "1");
    } else if let Ok(procs) = std::fs::read_to_string(v2_dir.join("cgroup.procs")) {
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            // SAFETY: kill(2) on a pid of our own test cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

fn remove_dir_retrying(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            // Killed processes take a moment to leave the cgroup.
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                eprintln!(
                    "warning: could not remove test cgroup {}: {e}",
                    dir.display()
                );
                return;
            }
        }
    }
}

/// A workload holding its objects until dropped (its stdin closes).
pub struct HeldWorkload {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<std::process::ChildStdout>,
}

impl HeldWorkload {
    fn start(mut cmd: Command, work: &[&str]) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting kmemcg-workload");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .expect("reading from kmemcg-workload");
        assert_eq!(
            line.trim(),
            "ready",
            "kmemcg-workload {work:?} did not get ready"
        );
        let stdin = child.stdin.take();
        Self {
            child,
            stdin,
            stdout,
        }
    }

    /// Asks a stepping workload (`file-steps`) for its next step and waits until it is done.
    pub fn step(&mut self) {
        let stdin = self.stdin.as_mut().expect("workload stdin");
        stdin
            .write_all(b"next\n")
            .expect("writing to kmemcg-workload");
        stdin.flush().expect("flushing kmemcg-workload's stdin");
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("reading from kmemcg-workload");
        assert_eq!(line.trim(), "done", "kmemcg-workload step failed");
    }

    /// Moves the workload's process into another cgroup (v2 and v1 memory).
    pub fn move_to(&self, cgroup: &TestCgroup) {
        for dir in cgroup.join_dirs() {
            std::fs::write(dir.join("cgroup.procs"), self.pid().to_string())
                .unwrap_or_else(|e| panic!("moving the workload to {}: {e}", dir.display()));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets the workload free its objects and exit.
    pub fn release(mut self) {
        self.finish();
    }

    /// Closes its stdin and waits for it to exit; kills it after 20 s (a workload in a cgroup
    /// left frozen by a failed test never exits by itself, and a test must not hang).
    fn finish(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.flush();
        }
        let deadline = Instant::now() + patience(Duration::from_secs(20));
        while matches!(self.child.try_wait(), Ok(None)) {
            if Instant::now() > deadline {
                eprintln!(
                    "warning: kmemcg-workload {} did not exit: killed",
                    self.child.id()
                );
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.wait();
    }
}

impl Drop for HeldWorkload {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A tmpfs of its own, so that file counts start from a clean slate. Unmounted when dropped.
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(unique("tmpfs"));
        std::fs::create_dir_all(&dir).expect("creating tmpfs mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=512m", "kmemcg-test"])
            .arg(&dir)
            .status()
            .expect("running mount");
        assert!(status.success(), "mounting a tmpfs at {}", dir.display());
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn sub(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl Default for Tmpfs {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A `kmemcg agent` process on a free loopback port; SIGTERM, then SIGKILL, when dropped.
pub struct AgentProcess {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    /// Its unix socket (writes), in a directory of its own.
    socket: PathBuf,
    /// The state directory the harness gave it (KMEMCG_STATE_DIR, removed when dropped), used
    /// unless the test names one with --state-dir.
    state_dir: Option<PathBuf>,
}

impl AgentProcess {
    /// Starts `kmemcg agent` sampling every 100 ms (see [`sample_interval`]), with `extra`
    /// flags, and waits until its API answers.
    pub fn start(extra: &[&str]) -> Self {
        let interval = sample_interval();
        let mut args = vec!["--interval", interval.as_str()];
        args.extend_from_slice(extra);
        Self::start_with(&args)
    }

    /// Starts `kmemcg agent` with exactly `args` (its own configuration decides the interval),
    /// on a free loopback port and with a socket of its own unless `args` name one, and waits
    /// until its API answers.
    pub fn start_with(args: &[&str]) -> Self {
        Self::try_start_with(args).unwrap_or_else(|log| panic!("{log}"))
    }

    /// [`AgentProcess::start`], or the agent's log when it exits instead of serving.
    pub fn try_start(extra: &[&str]) -> Result<Self, String> {
        let interval = sample_interval();
        let mut args = vec!["--interval", interval.as_str()];
        args.extend_from_slice(extra);
        Self::try_start_with(&args)
    }

    /// [`AgentProcess::start_with`], or the agent's log when it exits instead of serving. A
    /// state directory of its own is given unless `args` name one with --state-dir (agents on
    /// the same state directory refuse to run together).
    pub fn try_start_with(args: &[&str]) -> Result<Self, String> {
        Self::spawn(&[], args, None)
    }

    /// [`AgentProcess::try_start`] with the binary run by `wrapper` (e.g. `setpriv ... --`),
    /// which must exec it so that the agent keeps the wrapper's pid.
    pub fn try_start_wrapped(wrapper: &[&str], extra: &[&str]) -> Result<Self, String> {
        let interval = sample_interval();
        let mut args = vec!["--interval", interval.as_str()];
        args.extend_from_slice(extra);
        Self::spawn(wrapper, &args, None)
    }

    /// [`AgentProcess::try_start`] on the state directory `dir` (KMEMCG_STATE_DIR), which
    /// stays when the agent is dropped.
    pub fn try_start_on_state(dir: &Path, extra: &[&str]) -> Result<Self, String> {
        let interval = sample_interval();
        let mut args = vec!["--interval", interval.as_str()];
        args.extend_from_slice(extra);
        Self::spawn(&[], &args, Some(dir))
    }

    fn spawn(wrapper: &[&str], args: &[&str], state: Option<&Path>) -> Result<Self, String> {
        let addr = free_addr();
        let log = std::env::temp_dir().join(format!("{}.log", unique("agent")));
        let log_file = std::fs::File::create(&log).expect("agent log file");
        let socket = std::env::temp_dir()
            .join(unique("agent-socket"))
            .join("kmemcg.sock");
        let mut own = vec![];
        if !args
            .iter()
            .any(|a| a.starts_with("--socket") || *a == "--no-socket")
        {
            own.extend(["--socket".to_string(), socket.display().to_string()]);
        }
        let mut command = match wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut c = Command::new(program);
                c.args(wrapper_args).arg(kmemcg_bin());
                c
            }
            None => Command::new(kmemcg_bin()),
        };
        // Through the environment, which a flag in `args` overrides.
        let own_state = state.is_none().then(|| scratch("state"));
        command.env(
            "KMEMCG_STATE_DIR",
            state.map_or_else(|| own_state.clone().unwrap_or_default(), Path::to_path_buf),
        );
        let child = command
            .args(["agent", "--listen", &addr.to_string()])
            .args(&own)
            .args(args)
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("starting kmemcg agent");
        let mut agent = Self {
            child,
            addr,
            log,
            socket,
            state_dir: own_state,
        };
        agent.wait_until_serving()?;
        Ok(agent)
    }

    fn wait_until_serving(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + patience(Duration::from_secs(60));
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "kmemcg agent exited ({status}): {}",
                    self.log_text()
                ));
            }
            if get_json::<Status>(self.addr, "/api/v1/status").is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "kmemcg agent did not answer within 60 s: {}",
            self.log_text()
        );
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The unix socket `kmemcg limit --socket` writes through.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Process id, to send the agent signals (SIGHUP).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn dying(&self) -> Vec<DyingCgroup> {
        get_json(self.addr, "/api/v1/dying").expect("GET /api/v1/dying")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn status(&self) -> Status {
        get_json(self.addr, "/api/v1/status").expect("GET /api/v1/status")
    }

    pub fn cgroups(&self) -> Vec<CgroupUsage> {
        get_json(self.addr, "/api/v1/cgroups").expect("GET /api/v1/cgroups")
    }

    pub fn cgroup(&self, path: &str) -> Option<CgroupUsage> {
        self.cgroups().into_iter().find(|c| c.path == path)
    }

    /// Waits until two samples after now, so that what happened before is visible.
    pub fn settle(&self) {
        std::thread::sleep(patience(Duration::from_millis(350)));
    }

    /// Polls the agent until `check` holds for `path` (None: no data for it), or panics with
    /// the last value after `timeout`.
    pub fn wait_for(
        &self,
        path: &str,
        timeout: Duration,
        what: &str,
        check: impl Fn(Option<&CgroupUsage>) -> bool,
    ) -> Option<CgroupUsage> {
        let timeout = patience(timeout);
        let deadline = Instant::now() + timeout;
        loop {
            let usage = self.cgroup(path);
            if check(usage.as_ref()) {
                return usage;
            }
            if Instant::now() > deadline {
                panic!("{what}: not reached for {path} within {timeout:?}; last: {usage:#?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the agent with SIGTERM and returns its exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.terminate()
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + patience(Duration::from_secs(10));
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        self.child.wait().expect("waiting for the agent")
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
        let _ = std::fs::remove_file(&self.log);
        if let Some(dir) = self.socket.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
        if let Some(dir) = &self.state_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The agents' sampling interval: 0.1 s, or `KMEMCG_TEST_INTERVAL` (to measure reaction times
/// at the default 1 s, for example).
fn sample_interval() -> String {
    std::env::var("KMEMCG_TEST_INTERVAL").unwrap_or_else(|_| "0.1".into())
}

/// A loopback address nobody listens on right now.
pub fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    listener.local_addr().expect("local address")
}

pub fn get_json<T: serde::de::DeserializeOwned>(addr: SocketAddr, path: &str) -> anyhow::Result<T> {
    let response = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?
        .get(format!("http://{addr}{path}"))
        .send()?
        .error_for_status()?;
    Ok(response.json()?)
}

/// The uid the tests use as another, unprivileged user: nobody.
pub const OTHER_UID: u32 = 65534;

/// `program args...` as [`OTHER_UID`] (uid and gid 65534, no supplementary groups).
pub fn as_other_user(program: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(program)
        .args(args);
    cmd
}

/// Runs the `kmemcg` binary with `args` and returns its output.
pub fn kmemcg(args: &[&str]) -> Output {
    Command::new(kmemcg_bin())
        .args(args)
        .output()
        .expect("running kmemcg")
}

/// Objects of caches whose name is one of `names`.
pub fn cache_objects(usage: &CgroupUsage, names: &[&str]) -> u64 {
    usage
        .caches
        .iter()
        .filter(|c| names.contains(&c.name.as_str()))
        .map(|c| c.objects)
        .sum()
}

/// Caches a tmpfs file's inode comes from.
pub const INODE_CACHES: &[&str] = &["shmem_inode_cache", "inode_cache"];

/// Number of possible CPUs, what percpu allocations are multiplied by.
pub fn possible_cpus() -> u64 {
    kmemcg_agent::kernel::possible_cpus() as u64
}

/// These tests load eBPF programs and create cgroups: without root they cannot run, and they
/// fail rather than pass silently.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "kmemcg's integration tests need root: run them with `cargo xtask test` as root"
    );
}
