//! A wake-up another thread can wait for with `poll`, among file descriptors: the sampling
//! thread waits for the programs' limit events and for rule changes at once.
use std::{
    io::{ErrorKind, Read as _, Write as _},
    os::{
        fd::{AsFd, BorrowedFd},
        unix::net::UnixStream,
    },
};

#[derive(Debug)]
pub struct Wake {
    tx: UnixStream,
    rx: UnixStream,
}

impl Wake {
    pub fn new() -> std::io::Result<Self> {
        let (tx, rx) = UnixStream::pair()?;
        tx.set_nonblocking(true)?;
        rx.set_nonblocking(true)?;
        Ok(Self { tx, rx })
    }

    /// Makes [`Self::fd`] readable; wake-ups not yet taken merge into one.
    pub fn notify(&self) {
        // A full socket buffer already holds a pending wake-up.
        let _ = (&self.tx).write(&[1]);
    }

    /// Whether a wake-up was pending; clears it.
    pub fn take(&self) -> bool {
        let mut buf = [0u8; 64];
        let mut woken = false;
        loop {
            match (&self.rx).read(&mut buf) {
                Ok(0) => return woken,
                Ok(_) => woken = true,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return woken,
            }
        }
    }
}

/// Waits until one of `fds` is readable or `timeout` passes.
pub fn wait_readable(fds: &[BorrowedFd<'_>], timeout: std::time::Duration) {
    use std::os::fd::AsRawFd as _;
    let mut polled: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let millis = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: a valid array of pollfd for the length given; an error (EINTR) is a wake-up.
    unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, millis) };
}

impl AsFd for Wake {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.rx.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wake_ups_merge_and_are_taken_once() {
        let wake = Wake::new().expect("socket pair");
        assert!(!wake.take());
        wake.notify();
        wake.notify();
        assert!(wake.take());
        assert!(!wake.take());
    }
}
