//! The agent's listeners, bounded: at most [`MAX_CONNECTIONS`] connections at once (further
//! clients wait in the kernel's backlog), each closed after [`IDLE_TIMEOUT`] without progress
//! (idle keep-alives, stalled requests) and after [`MAX_LIFETIME`] in any case. Each connection
//! says who its peer is ([`Peer`]), which the write access rule reads.
use std::{
    io,
    path::Path,
    pin::Pin,
    sync::Arc,
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
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{Instant, Sleep},
};

pub const MAX_CONNECTIONS: usize = 512;
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
pub const MAX_LIFETIME: Duration = Duration::from_secs(120);

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

/// A TCP or unix listener with the bounds above.
pub struct Bounded<L> {
    inner: L,
    slots: Arc<Semaphore>,
}

impl<L> Bounded<L> {
    pub fn new(inner: L) -> Self {
        Self {
            inner,
            slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        }
    }
}

impl Listener for Bounded<TcpListener> {
    type Io = Guarded<tokio::net::TcpStream>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let permit = acquire(&self.slots).await;
        let (io, addr) = Listener::accept(&mut self.inner).await;
        (Guarded::new(io, permit), Peer::Tcp(addr))
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
            let permit = acquire(&self.slots).await;
            let (io, _) = Listener::accept(&mut self.inner).await;
            // Without credentials the peer cannot be told apart from anyone: drop it.
            if let Ok(cred) = io.peer_cred() {
                let peer = Peer::Unix {
                    uid: cred.uid(),
                    pid: cred.pid(),
                };
                return (Guarded::new(io, permit), peer);
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(Peer::Unix { uid: 0, pid: None })
    }
}

async fn acquire(slots: &Arc<Semaphore>) -> OwnedSemaphorePermit {
    slots
        .clone()
        .acquire_owned()
        .await
        .expect("the connection semaphore is never closed")
}

impl<L> Connected<IncomingStream<'_, Bounded<L>>> for Peer
where
    Bounded<L>: Listener<Addr = Peer>,
{
    fn connect_info(stream: IncomingStream<'_, Bounded<L>>) -> Self {
        stream.remote_addr().clone()
    }
}

/// A connection holding its slot, closed when idle too long or open too long.
pub struct Guarded<T> {
    io: T,
    _slot: OwnedSemaphorePermit,
    idle: Pin<Box<Sleep>>,
    closes_at: Instant,
}

impl<T> Guarded<T> {
    fn new(io: T, slot: OwnedSemaphorePermit) -> Self {
        Self {
            io,
            _slot: slot,
            idle: Box::pin(tokio::time::sleep(IDLE_TIMEOUT)),
            closes_at: Instant::now() + MAX_LIFETIME,
        }
    }

    /// Progress: the idle clock starts again (never past the lifetime).
    fn progressed(&mut self) {
        let next = (Instant::now() + IDLE_TIMEOUT).min(self.closes_at);
        self.idle.as_mut().reset(next);
    }

    /// Pending I/O: an error once the idle clock has run out (registers the wake-up).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.idle.as_mut().poll(cx).is_ready()
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "connection idle or open too long")
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.progressed();
                Poll::Ready(r)
            }
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(timed_out())),
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
                this.progressed();
                Poll::Ready(r)
            }
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
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
