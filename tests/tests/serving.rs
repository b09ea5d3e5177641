//! The agent's HTTP serving under load: slow clients cannot starve the probes, and concurrent
//! readers share one serialized snapshot instead of costing memory each.
use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use kmemcg_tests::{AgentProcess, TestCgroup, Tmpfs, require_root};

/// Room for many client sockets in this process.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointers to an rlimit.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max.min(16384);
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
}

/// A TCP connection to `to` from the loopback address `from` (127.0.0.0/8 is all loopback),
/// with a receive buffer of `rcvbuf` bytes if given.
fn connect_from(from: Ipv4Addr, to: SocketAddr, rcvbuf: Option<i32>) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd as _;
    let SocketAddr::V4(to) = to else {
        panic!("the agent listens on IPv4 loopback")
    };
    let sockaddr = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor owned by the returned stream.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        // A connect that the agent's backlog holds up gives up soon: the client tries again
        // at its next line.
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&raw const timeout).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
        if let Some(size) = rcvbuf {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&raw const size).cast(),
                std::mem::size_of::<i32>() as libc::socklen_t,
            );
        }
        let src = sockaddr(from, 0);
        if libc::bind(fd, (&raw const src).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let dst = sockaddr(*to.ip(), to.port());
        if libc::connect(fd, (&raw const dst).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

/// A client sending its request's head one line at a time, a line every few seconds.
struct Trickler {
    from: Ipv4Addr,
    stream: Option<TcpStream>,
    opened: Instant,
}

impl Trickler {
    fn new(from: Ipv4Addr) -> Self {
        Self {
            from,
            stream: None,
            opened: Instant::now(),
        }
    }

    /// Whether the agent closed (or answered) the connection.
    fn closed(&mut self) -> bool {
        let Some(stream) = &mut self.stream else {
            return true;
        };
        let mut buf = [0u8; 64];
        !matches!(stream.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Sends the next header line, connecting again first if the agent closed the connection.
    fn trickle(&mut self, addr: SocketAddr) {
        if self.closed() {
            self.stream = None;
            if let Ok(stream) = connect_from(self.from, addr, None) {
                stream.set_nonblocking(true).expect("non-blocking");
                self.stream = Some(stream);
                self.opened = Instant::now();
                self.send(b"GET /healthz HTTP/1.1\r\n");
            }
        }
        self.send(b"X-Slow: 1\r\n");
    }

    fn send(&mut self, line: &[u8]) {
        if let Some(stream) = &mut self.stream {
            let _ = stream.write(line);
        }
    }
}

/// One request on a connection of its own, answered within `timeout`: the status and the body.
fn get(addr: SocketAddr, path: &str, headers: &str, timeout: Duration) -> Option<(u16, Vec<u8>)> {
    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&addr, timeout).ok()?;
    stream
        .set_read_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: kmemcg\r\n{headers}Connection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    if Instant::now() > deadline {
        return None;
    }
    let head_end = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    let status = std::str::from_utf8(&response[9..12]).ok()?.parse().ok()?;
    Some((status, response.split_off(head_end + 4)))
}

#[test]
fn slow_clients_leave_the_probes_answered() {
    require_root();
    raise_fd_limit();
    let agent = AgentProcess::start(&[]);
    let addr = agent.addr();
    // 520 clients, as many as the agent's connection bound and more: 260 from the probes' own
    // address (beyond the per-peer bound), 260 from four other loopback addresses.
    let sources: Vec<Ipv4Addr> = (0..520)
        .map(|i| {
            if i < 260 {
                Ipv4Addr::LOCALHOST
            } else {
                Ipv4Addr::new(127, 0, 0, 2 + (i % 4) as u8)
            }
        })
        .collect();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (answered, probes, metrics_answered, longest_trickle) = std::thread::scope(|s| {
        let slow = s.spawn(|| {
            let mut clients: Vec<Trickler> = sources.iter().map(|&ip| Trickler::new(ip)).collect();
            // How long the agent let a trickling client keep its connection.
            let mut longest = Duration::ZERO;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let round = Instant::now();
                for client in &mut clients {
                    if client.stream.is_some() && client.closed() {
                        longest = longest.max(client.opened.elapsed());
                    }
                    client.trickle(addr);
                }
                while round.elapsed() < Duration::from_secs(3)
                    && !stop.load(std::sync::atomic::Ordering::Relaxed)
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            longest
        });
        // Let them take every slot they can first.
        std::thread::sleep(Duration::from_secs(6));
        let (mut answered, mut metrics_answered, probes) = (0, 0, 12);
        for _ in 0..probes {
            let started = Instant::now();
            // The kubelet's default probe timeout is 1 s; 2 s leaves room for a busy machine.
            if get(addr, "/healthz", "", Duration::from_secs(2)).is_some_and(|(s, _)| s == 200) {
                answered += 1;
            }
            if get(
                addr,
                "/metrics",
                "Accept-Encoding: gzip\r\n",
                Duration::from_secs(5),
            )
            .is_some_and(|(s, _)| s == 200)
            {
                metrics_answered += 1;
            }
            std::thread::sleep(Duration::from_secs(3).saturating_sub(started.elapsed()));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let longest = slow.join().expect("slow clients");
        (answered, probes, metrics_answered, longest)
    });
    println!(
        "under 520 slow clients: /healthz answered {answered} of {probes}, /metrics \
         {metrics_answered} of {probes}; longest trickling connection {longest_trickle:?}"
    );
    assert_eq!(answered, probes, "/healthz probes answered");
    assert_eq!(metrics_answered, probes, "/metrics scrapes answered");
    // A request head must be complete within 10 s of the accept, however it trickles (a
    // client notices the close at its next line, up to 3 s later).
    assert!(
        longest_trickle < Duration::from_secs(14),
        "a trickling client kept its connection {longest_trickle:?}"
    );
}

/// A process's `key` (VmHWM: peak resident memory, VmRSS: now) in bytes.
fn vm(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("{key} in /proc/{pid}/status"))
        * 1024
}

fn vm_hwm(pid: u32) -> u64 {
    vm(pid, "VmHWM")
}

/// Runs `load` while watching the resident memory of `pid`: its result and the highest
/// VmRSS seen.
fn peak_rss_during<T>(pid: u32, load: impl FnOnce() -> T) -> (T, u64) {
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(vm(pid, "VmRSS"));
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        });
        let result = load();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (result, watcher.join().expect("memory watcher"))
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// How many cgroups the load test makes: 500, or `KMEMCG_SERVING_CGROUPS` (2000 for the
/// figures in docs/daemon.md).
fn cgroup_count() -> usize {
    std::env::var("KMEMCG_SERVING_CGROUPS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(500)
}

#[test]
fn concurrent_readers_share_one_serialized_snapshot() {
    require_root();
    raise_fd_limit();
    let count = cgroup_count();
    let tmpfs = Tmpfs::new();
    let parent = TestCgroup::new("readers");
    let children: Vec<TestCgroup> = (0..count)
        .map(|i| TestCgroup::under(&parent, &format!("c{i}")))
        .collect();
    // One process visits each cgroup and leaves a file there (a dentry and an inode each).
    let mut workload = parent.hold(&["file-steps", &tmpfs.sub("files"), "1"]);
    for child in &children {
        workload.move_to(child);
        workload.step();
    }
    workload.move_to(&parent);
    // The default interval: encodings are made once per sample.
    let agent = AgentProcess::start_with(&["--interval", "1"]);
    agent.wait_for(
        children[count - 1].path(),
        Duration::from_secs(30),
        "the last cgroup's file",
        |u| u.is_some_and(|u| u.slab_bytes > 0),
    );
    let addr = agent.addr();
    let (status, body) =
        get(addr, "/api/v1/cgroups", "", Duration::from_secs(10)).expect("cgroups");
    assert_eq!(status, 200);
    let json_bytes = body.len() as u64;
    let pid = agent.pid();
    let hwm_before = vm_hwm(pid);
    let rss_before = vm(pid, "VmRSS");

    // 100 readers reading back to back for 10 s, and 50 scrapers as Prometheus does (gzip).
    let readers = 100;
    let load = |clients: usize, path: &str, headers: &str| {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..clients)
                .map(|_| {
                    s.spawn(|| {
                        let mut own = Vec::new();
                        let started = Instant::now();
                        while started.elapsed() < Duration::from_secs(10) {
                            let t = Instant::now();
                            let answer = get(addr, path, headers, Duration::from_secs(20));
                            // Not answered (within 20 s): counted as 20 s.
                            own.push(match answer {
                                Some((200, _)) => t.elapsed(),
                                _ => Duration::from_secs(20),
                            });
                        }
                        own
                    })
                })
                .collect();
            let mut all: Vec<Duration> = handles
                .into_iter()
                .flat_map(|h| h.join().expect("client"))
                .collect();
            all.sort();
            all
        })
    };
    let (read_latencies, readers_peak) =
        peak_rss_during(pid, || load(readers, "/api/v1/cgroups", ""));
    println!(
        "{count} cgroups, /api/v1/cgroups {json_bytes} bytes; {readers} readers: {} reads, p50 \
         {:?}, p99 {:?}, VmRSS peak {} MiB, VmHWM {} MiB",
        read_latencies.len(),
        percentile(&read_latencies, 0.5),
        percentile(&read_latencies, 0.99),
        readers_peak >> 20,
        vm_hwm(pid) >> 20
    );
    let readers_growth = readers_peak.saturating_sub(rss_before);

    let clients = 50;
    let (latencies, scrapers_peak) = peak_rss_during(pid, || {
        load(clients, "/metrics", "Accept-Encoding: gzip\r\n")
    });
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    let hwm_after = vm_hwm(pid);
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "{count} cgroups, /api/v1/cgroups {json_bytes} bytes. VmRSS {:.1} MiB before, peak \
         {:.1} MiB under {readers} concurrent readers (+{:.1} MiB; {} reads, p50 {:?}, p99 \
         {:?}), peak {:.1} MiB under \
         {clients} /metrics clients ({} scrapes, p50 {p50:?}, p99 {p99:?}); VmHWM {:.1} MiB \
         before, {:.1} MiB after",
        mib(rss_before),
        mib(readers_peak),
        mib(readers_growth),
        read_latencies.len(),
        percentile(&read_latencies, 0.5),
        percentile(&read_latencies, 0.99),
        mib(scrapers_peak),
        latencies.len(),
        mib(hwm_before),
        mib(hwm_after),
    );
    // Shared bytes: the readers cost their connections, not a copy of the answer each
    // (each copy in flight would add `json_bytes`).
    assert!(
        readers_growth < 16 * 1024 * 1024 + 8 * json_bytes,
        "VmRSS grew by {:.1} MiB under {readers} readers of {json_bytes} bytes",
        mib(readers_growth)
    );
    // Neither do scrapes: the snapshot's text is rendered once per sample.
    assert!(
        hwm_after.saturating_sub(hwm_before) < 16 * 1024 * 1024 + 8 * json_bytes,
        "VmHWM grew from {:.1} to {:.1} MiB",
        mib(hwm_before),
        mib(hwm_after)
    );
    // Loose (a shared machine): the scrapes wait for no rendering of their own.
    assert!(p99 < Duration::from_secs(1), "/metrics p99 {p99:?}");
    drop(workload);
}
