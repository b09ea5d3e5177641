//! The agent's listeners, bounded so that no set of clients can keep the probes or Prometheus
//! from being answered:
//!
//! - at most [`MAX_CONNECTIONS`] connections at once, of which connections still waiting for
//!   their request may hold at most [`MAX_CONNECTIONS`] - [`RESERVED`]: the rest is kept for
//!   connections being answered;
//! - at most [`MAX_PER_PEER`] connections per source address (TCP);
//! - a new connection finding either bound reached closes the connection waiting longest for
//!   its request (of the same peer when the per-peer bound is reached): a client that trickles
//!   its request cannot hold a slot a new one needs, and a probe is served at once;
//! - a request must be complete and answered within [`REQUEST_TIMEOUT`] of the connection's
//!   accept (or of its previous answer, on a kept-alive connection), however it trickles;
//! - a connection is closed after [`IDLE_TIMEOUT`] without progress (idle keep-alives, stalled
//!   reads and writes) and after [`MAX_LIFETIME`] in any case.
//!
//! Each connection says who its peer is ([`Peer`]), which the write access rule reads.
use std::{
    collections::HashMap,
    future::Future as _,
    io,
    net::IpAddr,
    path::Path,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    extract::connect_info::Connected,
    serve::{IncomingStream, Listener},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, UnixListener},
    sync::{OwnedSemaphorePermit, Semaphore, oneshot},
    time::{Instant, Sleep},
};

pub const MAX_CONNECTIONS: usize = 512;
/// Slots that connections still waiting for their request cannot take.
pub const RESERVED: usize = 64;
/// Concurrent connections from one source address.
pub const MAX_PER_PEER: usize = 128;
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
pub const MAX_LIFETIME: Duration = Duration::from_secs(120);
/// How long a new connection waits for a slot freed by a closed one before it is refused.
const SLOT_WAIT: Duration = Duration::from_secs(1);

/// Who is at the other end of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    Tcp(std::net::SocketAddr),
    /// From the kernel (SO_PEERCRED): who connected to the unix socket.
    Unix {
        uid: u32,
        pid: Option<i32>,
    },
}

/// For logs: `tcp 127.0.0.1:40312`, `unix uid 0 pid 1234`.
impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Tcp(addr) => write!(f, "tcp {addr}"),
            Peer::Unix {
                uid,
                pid: Some(pid),
            } => write!(f, "unix uid {uid} pid {pid}"),
            Peer::Unix { uid, pid: None } => write!(f, "unix uid {uid}"),
        }
    }
}

/// A TCP or unix listener with the bounds above.
pub struct Bounded<L> {
    inner: L,
    slots: Arc<Semaphore>,
    connections: Arc<Connections>,
}

impl<L> Bounded<L> {
    pub fn new(inner: L) -> Self {
        Self {
            inner,
            slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            connections: Arc::new(Connections::new()),
        }
    }

    /// A slot for a new connection from `ip` (None: the unix socket), making room by closing
    /// the connection that waits longest for a request where a bound is reached. None: the new
    /// connection is refused (its peer's connections are all being answered, or no slot came
    /// free in time).
    async fn admit(&self, ip: Option<IpAddr>) -> Option<Slot> {
        self.connections.make_room(ip)?;
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                // Every slot is taken (some by connections closing): free one more.
                self.connections.lock().evict_oldest(None, None);
                tokio::time::timeout(SLOT_WAIT, self.slots.clone().acquire_owned())
                    .await
                    .ok()?
                    .expect("the connection semaphore is never closed")
            }
        };
        Some(self.connections.register(ip, permit))
    }
}

impl Listener for Bounded<TcpListener> {
    type Io = Guarded<tokio::net::TcpStream>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (io, addr) = Listener::accept(&mut self.inner).await;
            match self.admit(Some(addr.ip())).await {
                Some(slot) => return (Guarded::new(io, slot), Peer::Tcp(addr)),
                None => tracing::debug!(peer = %addr, "connection refused: every slot is busy"),
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr().map(Peer::Tcp)
    }
}

impl Listener for Bounded<UnixListener> {
    type Io = Guarded<tokio::net::UnixStream>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (io, _) = Listener::accept(&mut self.inner).await;
            // Without credentials the peer cannot be told apart from anyone: drop it.
            let Ok(cred) = io.peer_cred() else { continue };
            if let Some(slot) = self.admit(None).await {
                let peer = Peer::Unix {
                    uid: cred.uid(),
                    pid: cred.pid(),
                };
                return (Guarded::new(io, slot), peer);
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(Peer::Unix { uid: 0, pid: None })
    }
}

impl<L> Connected<IncomingStream<'_, Bounded<L>>> for Peer
where
    Bounded<L>: Listener<Addr = Peer>,
{
    fn connect_info(stream: IncomingStream<'_, Bounded<L>>) -> Self {
        stream.remote_addr().clone()
    }
}

/// The open connections of one listener: who they are from and since when each waits for a
/// request, to choose which one to close when a bound is reached.
struct Connections {
    epoch: Instant,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    next_id: u64,
    by_id: HashMap<u64, Entry>,
    /// Connections not told to close, in all and per source address.
    live: usize,
    per_peer: HashMap<IpAddr, usize>,
}

struct Entry {
    ip: Option<IpAddr>,
    waiting: Arc<Waiting>,
    /// None once told to close.
    close: Option<oneshot::Sender<()>>,
}

/// Since when a connection waits for a request to answer: its accept, then the last answer
/// it wrote. Milliseconds since the listener's epoch.
struct Waiting(AtomicU64);

impl Waiting {
    fn since(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Beyond [`MAX_CONNECTIONS`] - [`RESERVED`] connections, a new one closes the longest waiting
/// one if it has waited at least this long: clients that are answered at once are never
/// closed for room.
const STALLED_MS: u64 = 1000;

impl Connections {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            open: Mutex::new(Open::default()),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies the per-peer bound and the reserve before `ip` connects. None: the peer is at
    /// its bound and none of its connections can be closed.
    fn make_room(&self, ip: Option<IpAddr>) -> Option<()> {
        let mut open = self.lock();
        if let Some(ip) = ip
            && open.per_peer.get(&ip).copied().unwrap_or(0) >= MAX_PER_PEER
        {
            open.evict_oldest(Some(ip), None)?;
            tracing::debug!(peer = %ip, "per-peer connection bound reached: closed its longest waiting connection");
        } else if open.live >= MAX_CONNECTIONS - RESERVED {
            let stalled_since = self.now_ms().saturating_sub(STALLED_MS);
            if open.evict_oldest(None, Some(stalled_since)).is_some() {
                tracing::debug!(
                    "connection reserve reached: closed the longest waiting connection"
                );
            }
        }
        Some(())
    }

    fn register(self: &Arc<Self>, ip: Option<IpAddr>, permit: OwnedSemaphorePermit) -> Slot {
        let waiting = Arc::new(Waiting(AtomicU64::new(self.now_ms())));
        let (close, closed) = oneshot::channel();
        let mut open = self.lock();
        let id = open.next_id;
        open.next_id += 1;
        open.live += 1;
        if let Some(ip) = ip {
            *open.per_peer.entry(ip).or_default() += 1;
        }
        open.by_id.insert(
            id,
            Entry {
                ip,
                waiting: waiting.clone(),
                close: Some(close),
            },
        );
        Slot {
            id,
            connections: self.clone(),
            waiting,
            closed,
            evicted: false,
            _permit: permit,
        }
    }

    fn release(&self, id: u64) {
        let mut open = self.lock();
        if let Some(entry) = open.by_id.remove(&id)
            && entry.close.is_some()
        {
            open.forget(entry.ip);
        }
    }
}

impl Open {
    /// Tells the connection (of `ip`, or of anyone) that has waited longest for a request to
    /// close, if it has waited since `at_most` or earlier (any, for None).
    fn evict_oldest(&mut self, ip: Option<IpAddr>, at_most: Option<u64>) -> Option<()> {
        let (&id, _) = self
            .by_id
            .iter()
            .filter(|(_, e)| e.close.is_some() && (ip.is_none() || e.ip == ip))
            .filter(|(_, e)| at_most.is_none_or(|t| e.waiting.since() <= t))
            .min_by_key(|(_, e)| e.waiting.since())?;
        let entry = self.by_id.get_mut(&id)?;
        let close = entry.close.take()?;
        let ip = entry.ip;
        let _ = close.send(());
        self.forget(ip);
        Some(())
    }

    fn forget(&mut self, ip: Option<IpAddr>) {
        self.live -= 1;
        if let Some(ip) = ip
            && let Some(n) = self.per_peer.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                self.per_peer.remove(&ip);
            }
        }
    }
}

/// A connection's place among the open ones; given back when the connection closes.
pub struct Slot {
    id: u64,
    connections: Arc<Connections>,
    waiting: Arc<Waiting>,
    /// Completes when the listener closes this connection to make room.
    closed: oneshot::Receiver<()>,
    evicted: bool,
    _permit: OwnedSemaphorePermit,
}

impl Slot {
    /// An answer was written: the connection now waits for its next request.
    fn answered(&self) {
        self.waiting
            .0
            .store(self.connections.now_ms(), Ordering::Relaxed);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.connections.release(self.id);
    }
}

/// A connection holding its slot, closed when a deadline passes or the listener needs its slot.
pub struct Guarded<T> {
    io: T,
    slot: Slot,
    /// The earliest of the deadlines below.
    timer: Pin<Box<Sleep>>,
    idle_until: Instant,
    request_until: Instant,
    closes_at: Instant,
}

impl<T> Guarded<T> {
    fn new(io: T, slot: Slot) -> Self {
        let now = Instant::now();
        let idle_until = now + IDLE_TIMEOUT;
        Self {
            io,
            slot,
            timer: Box::pin(tokio::time::sleep_until(idle_until)),
            idle_until,
            request_until: now + REQUEST_TIMEOUT,
            closes_at: now + MAX_LIFETIME,
        }
    }

    fn rearm(&mut self) {
        let next = self.idle_until.min(self.request_until).min(self.closes_at);
        if next != self.timer.deadline() {
            self.timer.as_mut().reset(next);
        }
    }

    /// Bytes came in: the idle clock starts again (the request's does not).
    fn read_progressed(&mut self) {
        self.idle_until = Instant::now() + IDLE_TIMEOUT;
        self.rearm();
    }

    /// Bytes went out, an answer: both clocks start again, for the next request.
    fn wrote(&mut self) {
        let now = Instant::now();
        self.idle_until = now + IDLE_TIMEOUT;
        self.request_until = now + REQUEST_TIMEOUT;
        self.slot.answered();
        self.rearm();
    }

    /// Why the connection must close now, if it must (registers the wake-ups otherwise).
    fn ended(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        let slot = &mut self.slot;
        if slot.evicted || Pin::new(&mut slot.closed).poll(cx).is_ready() {
            slot.evicted = true;
            return Some(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection closed to make room for another",
            ));
        }
        if self.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            let why = if now >= self.closes_at {
                "connection open too long"
            } else if now >= self.request_until {
                "request not complete in time"
            } else {
                "connection idle too long"
            };
            return Some(io::Error::new(io::ErrorKind::TimedOut, why));
        }
        None
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        // Checked first: a client trickling bytes always has a read ready.
        if let Some(e) = this.ended(cx) {
            return Poll::Ready(Err(e));
        }
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.read_progressed();
                Poll::Ready(r)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_write(cx, data) {
            Poll::Ready(r) => {
                this.wrote();
                Poll::Ready(r)
            }
            Poll::Pending => match this.ended(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }

    /// Forwarded so that hyper writes a shared body straight from its buffer instead of
    /// copying it into one of its own per connection.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => {
                this.wrote();
                Poll::Ready(r)
            }
            Poll::Pending => match this.ended(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Binds the unix socket at `path`: its directory made 0700 (created if missing) and refused
/// unless it is the agent's user's (or root's) and no other user may write to it (another user
/// could replace the socket with one of their own), a stale socket file replaced, the socket
/// itself 0600. Only root (and the agent's user) reach it.
pub fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::files::private_dir(
            dir,
            "the socket directory",
            crate::files::Private::NotWritable,
            &format!(
                "Another user could replace the agent's socket with their own: use a directory \
                 only the agent's user can write to (e.g. /run/kmemcg), or remove {} and let \
                 the agent create it",
                dir.display()
            ),
        )
        .map_err(io::Error::other)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("another agent serves {}", path.display()),
                ));
            }
            std::fs::remove_file(path)?
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}
