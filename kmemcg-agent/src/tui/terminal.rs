//! The terminal while `kmemcg top` runs: raw mode and the alternate screen, restored by a
//! guard's `Drop` and by a panic hook, so any exit (q, Ctrl-C, an error, a panic) gives the
//! shell back its screen. Log lines written to stderr meanwhile would scribble over the
//! screen, so stderr is pointed at /dev/null until the guard is dropped.
use std::{
    io::{self, Stdout},
    os::fd::AsRawFd as _,
    sync::{
        Once,
        atomic::{AtomicI32, Ordering},
    },
};

use anyhow::Context as _;
use crossterm::{
    cursor,
    terminal::{self, EnterAlternateScreen, LeaveAlternateScreen},
};
use ratatui::{Terminal, backend::CrosstermBackend};

/// The saved stderr while it points at /dev/null; -1 when not redirected.
static SAVED_STDERR: AtomicI32 = AtomicI32::new(-1);
static PANIC_HOOK: Once = Once::new();

pub(crate) struct TerminalGuard {
    pub(crate) terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl TerminalGuard {
    pub(crate) fn enter() -> anyhow::Result<Self> {
        PANIC_HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore();
                previous(info);
            }));
        });
        terminal::enable_raw_mode().context("switching the terminal to raw mode")?;
        // From here on, a failure must undo what was done: the guard's Drop does.
        let mut guard_stdout = io::stdout();
        if let Err(e) = crossterm::execute!(guard_stdout, EnterAlternateScreen, cursor::Hide) {
            restore();
            return Err(e).context("entering the alternate screen");
        }
        silence_stderr();
        match Terminal::new(CrosstermBackend::new(io::stdout())) {
            Ok(terminal) => Ok(Self { terminal }),
            Err(e) => {
                restore();
                Err(e).context("setting up the terminal")
            }
        }
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore();
    }
}

/// Leaves raw mode and the alternate screen and gives stderr back. Safe to call twice.
fn restore() {
    let _ = terminal::disable_raw_mode();
    let _ = crossterm::execute!(io::stdout(), LeaveAlternateScreen, cursor::Show);
    let saved = SAVED_STDERR.swap(-1, Ordering::SeqCst);
    if saved >= 0 {
        // SAFETY: `saved` is a descriptor this module duplicated and still owns.
        unsafe {
            libc::dup2(saved, libc::STDERR_FILENO);
            libc::close(saved);
        }
    }
}

fn silence_stderr() {
    let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") else {
        return;
    };
    // SAFETY: plain descriptor calls on stderr and a file we hold open.
    unsafe {
        let saved = libc::dup(libc::STDERR_FILENO);
        if saved < 0 {
            return;
        }
        if libc::dup2(null.as_raw_fd(), libc::STDERR_FILENO) < 0 {
            libc::close(saved);
            return;
        }
        SAVED_STDERR.store(saved, Ordering::SeqCst);
    }
}
