//! `kmemcg top`: a live terminal view of per-cgroup slab and percpu usage, and its batch mode.
//!
//! [`model`] is what a reading shows (rows, rates, totals, tree), [`view`] what the user
//! chose to see and the table's lines, [`app`] joins them for the live view, [`keys`] is the
//! one table of keys, [`columns`] what is shown, [`render`] draws (generic over the ratatui
//! backend), [`terminal`] owns and restores the terminal, [`source`] reads an agent or
//! standalone eBPF programs, [`once`] prints readings for scripts, [`leaks`] records a
//! drilled-in cgroup's call sites through the agent.
pub(crate) mod app;
mod columns;
mod fmt;
mod keys;
mod leaks;
mod model;
pub(crate) mod once;
mod render;
pub(crate) mod source;
mod terminal;
#[cfg(test)]
mod testdata;
pub(crate) mod view;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use crossterm::event::{self, Event, KeyEventKind};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use self::{
    app::{App, Outcome},
    source::Source,
    terminal::TerminalGuard,
};

/// Runs the live view until the user quits (q, Ctrl-C) or the process is told to stop
/// (SIGTERM, SIGHUP); the terminal is restored in every case.
pub(crate) async fn run_live(mut source: Source, mut app: App) -> anyhow::Result<()> {
    let delay = app.settings().delay;
    let paused = Arc::new(AtomicBool::new(false));

    // Readings on their own task, so a slow agent never blocks the keys; with them, the
    // history of the cgroup drilled into.
    let (data_tx, mut data_rx) = mpsc::channel::<anyhow::Result<_>>(1);
    let (history_tx, mut history_rx) = mpsc::channel(1);
    let wanted: Arc<Mutex<Option<String>>> = Arc::default();
    let fetch_wanted = wanted.clone();
    let fetch_paused = paused.clone();
    // With a first snapshot already on screen, the next reading is one delay away, so that
    // rates are not taken over a few milliseconds.
    let seeded = app.model().received();
    let leak_endpoints = source.agent_addr().map(leaks::endpoints);
    let (leak_tx, mut leak_rx) = mpsc::channel::<leaks::Reading>(4);
    let fetcher = tokio::spawn(async move {
        if seeded {
            tokio::time::sleep(delay).await;
        }
        loop {
            if !fetch_paused.load(Ordering::Relaxed) {
                let reading = source.fetch().await;
                if data_tx.send(reading).await.is_err() {
                    break;
                }
                let path = fetch_wanted.lock().ok().and_then(|w| w.clone());
                if let Some(path) = path {
                    let history = source.history(&path).await;
                    if history_tx.send((path, history)).await.is_err() {
                        break;
                    }
                }
            }
            tokio::time::sleep(delay).await;
        }
    });

    let mut term = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut hangup = signal(SignalKind::hangup()).context("installing a SIGHUP handler")?;
    let mut guard = TerminalGuard::enter()?;

    // crossterm's reads block: they run on a thread that checks for the end every 100 ms.
    let (key_tx, mut key_rx) = mpsc::unbounded_channel();
    let stop = Arc::new(AtomicBool::new(false));
    let input_stop = stop.clone();
    let input = std::thread::spawn(move || {
        while !input_stop.load(Ordering::Relaxed) {
            let event = match event::poll(Duration::from_millis(100)) {
                Ok(true) => event::read(),
                Ok(false) => continue,
                Err(e) => Err(e),
            };
            let failed = event.is_err();
            if key_tx.send(event).is_err() || failed {
                break;
            }
        }
    });

    let result = async {
        render::draw(&mut guard.terminal, &mut app).context("drawing the screen")?;
        loop {
            tokio::select! {
                event = key_rx.recv() => match event {
                    Some(Ok(Event::Key(key))) if key.kind != KeyEventKind::Release => {
                        if app.handle_key(key) == Outcome::Quit {
                            return Ok(());
                        }
                        if let Some(path) = app.take_leak_request() {
                            match &leak_endpoints {
                                Some(endpoints) => {
                                    tokio::spawn(leaks::record(endpoints.clone(), path, leak_tx.clone()));
                                }
                                None => app.set_leak_reading((path, Err("leak recording needs the agent (not --standalone)".into()))),
                            }
                        }
                    }
                    Some(Ok(Event::Resize(..))) => {}
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(e).context("reading the terminal"),
                    None => anyhow::bail!("the terminal input stopped"),
                },
                reading = data_rx.recv() => match reading {
                    Some(Ok(snapshot)) => app.update(snapshot, Instant::now()),
                    Some(Err(e)) => app.set_error(format!("{e:#}")),
                    None => anyhow::bail!("reading data stopped"),
                },
                Some((path, history)) = history_rx.recv() => app.set_history(path, history),
                Some(reading) = leak_rx.recv() => app.set_leak_reading(reading),
                _ = term.recv() => return Ok(()),
                _ = hangup.recv() => return Ok(()),
            }
            paused.store(app.view().paused, Ordering::Relaxed);
            if let Ok(mut w) = wanted.lock() {
                *w = app.history_wanted();
            }
            render::draw(&mut guard.terminal, &mut app).context("drawing the screen")?;
        }
    }
    .await;

    stop.store(true, Ordering::Relaxed);
    fetcher.abort();
    drop(guard);
    let _ = input.join();
    result
}
