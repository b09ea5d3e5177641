//! The daemon: loads the tracer, samples it every interval and serves the API until told to
//! stop.
use std::{
    future::IntoFuture as _,
    net::SocketAddr,
    os::fd::AsFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::{net::TcpListener, sync::watch};

use crate::{
    access::{ApiConfig, WriteAccess},
    api::Snapshot,
    error::StartError,
    history::History,
    kernel::HostFacts,
    leaks::Leaks,
    limits::{self, Enforcer, LimitsConfig},
    listener::{self, Bounded, Peer},
    metrics::MetricsConfig,
    sampler::Sampler,
    server::{self, AppState, Settings},
    tracer::{Tracer, TracerConfig},
    truth::Truth,
    wake::{self, Wake},
};

#[derive(Clone, Debug, PartialEq)]
pub struct AgentConfig {
    pub listen: SocketAddr,
    /// The unix socket and the write token.
    pub api: ApiConfig,
    /// How often the maps are read.
    pub interval: Duration,
    pub tracer: TracerConfig,
    pub metrics: MetricsConfig,
    pub limits: LimitsConfig,
}

/// Reads the configuration again (on SIGHUP).
pub type Reload = Box<dyn Fn() -> anyhow::Result<AgentConfig> + Send + Sync>;

/// Binds the API's address, with a clear error when it is taken.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            StartError::AddressInUse { addr }
        } else {
            StartError::Bind { addr, source }
        }
    })
}

/// Runs the agent until `shutdown` completes; on SIGHUP, `reload` (if any) is called and what
/// can change without a restart (metrics settings, interval, limits) is applied.
pub async fn run_with_reload(
    config: AgentConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    reload: Option<Reload>,
) -> anyhow::Result<()> {
    raise_fd_limit();
    // Before loading (which takes a while): a SIGHUP must not kill a starting agent.
    let hup = match reload {
        Some(reload) => Some((sighup().context("handling SIGHUP")?, reload)),
        None => None,
    };
    // The limits (rules on protected cgroups are refused) and the listeners come first: a bad
    // rule or a taken port is reported before anything is loaded into the kernel.
    let host = HostFacts::read()?;
    let cgroup_root = host.cgroups.cgroup2.clone();
    limits::check(&config.limits, Some(&cgroup_root)).context("config file, [[limits.rule]]")?;
    // Held until the agent ends: no second agent reads or writes these rules meanwhile.
    let _state = limits::state::lock(&config.limits)?;
    let enforcer = Arc::new(
        Enforcer::new(&config.limits, &host.cgroups).context("config file, [[limits.rule]]")?,
    );
    let tcp = bind(config.listen).await?;
    let socket = match &config.api.socket {
        Some(path) => Some(listener::bind_unix(path).with_context(|| {
            format!(
                "cannot serve the unix socket {} (set api.socket, --socket, or --no-socket)",
                path.display()
            )
        })?),
        None => None,
    };
    // Removed however the agent ends, a failed start included.
    let _socket_file = config.api.socket.clone().map(RemovedOnDrop);
    let token = match &config.api.write_token_file {
        Some(path) => Some(crate::access::read_token(path).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let mut tracer = Tracer::start(config.tracer.clone(), &host)?;
    let truth = Truth::start(&mut tracer, &host);
    let leaks = Arc::new(Leaks::new(
        &mut |name| tracer.take_map(name),
        cgroup_root.clone(),
        &host.kallsyms,
    ));
    let mut sampler = Sampler::new(tracer, truth);
    // Its copy of /proc/kallsyms is large and of no use from here on.
    drop(host);
    sampler.set_leaks(leaks.clone());
    let first = sampler.sample().context("reading the eBPF maps")?;
    let (tx, rx) = watch::channel(Arc::new(first));
    let stop = Arc::new(AtomicBool::new(false));
    let settings = Arc::new(Settings::new(config.metrics.clone(), config.interval));
    let history = Arc::new(History::default());
    let sampling = spawn_sampling(
        sampler,
        tx,
        settings.clone(),
        enforcer.clone(),
        history.clone(),
        stop.clone(),
    );
    let reloading = hup.map(|(hup, reload)| {
        tokio::spawn(reload_on_sighup(
            hup,
            config.clone(),
            reload,
            settings.clone(),
            enforcer.clone(),
        ))
    });

    let state = AppState::new(rx, settings, enforcer)
        .with_history(history)
        .with_leaks(leaks);
    let (closing, closed) = watch::channel(false);
    let stopped = move || {
        let mut closed = closed.clone();
        async move {
            let _ = closed.wait_for(|c| *c).await;
        }
    };
    let unix = socket.map(|socket| {
        let app = server::router(state.clone(), WriteAccess::Socket)
            .into_make_service_with_connect_info::<Peer>();
        tokio::spawn(
            axum::serve(Bounded::new(socket), app)
                .with_graceful_shutdown(stopped())
                .into_future(),
        )
    });
    let app = server::router(state, WriteAccess::Tcp { token })
        .into_make_service_with_connect_info::<Peer>();
    let socket =
        (config.api.socket.as_ref()).map_or_else(|| "none".into(), |p| p.display().to_string());
    tracing::info!(listen = %config.listen, socket = %socket, "kmemcg agent serving");
    let served = axum::serve(Bounded::new(tcp), app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = closing.send(true);
        })
        .await
        .context("serving the HTTP API");
    if let Some(task) = reloading {
        task.abort();
    }
    if let Some(unix) = unix {
        let _ = unix.await;
    }
    stop.store(true, Ordering::Relaxed);
    // Dropping the sampler detaches the programs.
    let _ = tokio::task::spawn_blocking(move || sampling.join()).await;
    served?;
    tracing::info!("kmemcg agent stopped");
    Ok(())
}

/// Applies a new configuration on every SIGHUP, all of it or, when any part is bad, none of
/// it (the running one is kept and the reason logged).
async fn reload_on_sighup(
    mut hup: tokio::signal::unix::Signal,
    mut current: AgentConfig,
    reload: Reload,
    settings: Arc<Settings>,
    enforcer: Arc<Enforcer>,
) {
    while hup.recv().await.is_some() {
        let checked = reload().and_then(|new| {
            let protected = limits::check(&new.limits, Some(enforcer.cgroup_root()))
                .context("config file, [[limits.rule]]")?;
            Ok((new, protected))
        });
        let (new, protected) = match checked {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "configuration reload failed; keeping the running configuration");
                continue;
            }
        };
        let restart_only = restart_only_changes(&current, &new);
        if !restart_only.is_empty() {
            tracing::warn!(keys = %restart_only.join(", "), "these settings take effect only at the next start");
        }
        settings.set_metrics_config(new.metrics.clone());
        settings.set_interval(new.interval);
        enforcer.reconfigure(&new.limits, protected);
        tracing::info!(
            interval_seconds = new.interval.as_secs_f64(),
            top_caches = new.metrics.top_caches,
            cache_min_bytes = %crate::units::iec(new.metrics.cache_min_bytes),
            container_labels = new.metrics.container_labels,
            "configuration reloaded"
        );
        current = AgentConfig {
            listen: current.listen,
            api: current.api.clone(),
            tracer: current.tracer.clone(),
            ..new
        };
    }
}

/// A file the agent created and removes when it ends.
struct RemovedOnDrop(std::path::PathBuf);

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Room for the connection cap, the maps and the audit file whatever the caller's soft
/// limit (often 1024): the soft limit is raised to the hard one.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointers to an rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn sighup() -> std::io::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
}

/// Keys whose change needs a restart: the listening address and everything loaded into the
/// kernel (see [`crate::config::settings`]).
pub fn restart_only_changes(running: &AgentConfig, new: &AgentConfig) -> Vec<&'static str> {
    crate::config::settings::restart_only_changes(running, new)
}

/// cgroup tree events are followed this often between samples, so that their ring buffer
/// never fills.
const CGROUP_EVENTS_INTERVAL: Duration = Duration::from_millis(50);
/// Early samples are at least four samples' time apart, so that a cgroup hovering at its
/// limit cannot keep the agent sampling more than a fifth of the time, but within these
/// bounds: a slow sample (a busy host, the first ones) must not delay a reaction by seconds.
const MIN_EARLY_GAP: Duration = Duration::from_millis(5);
const MAX_EARLY_GAP: Duration = Duration::from_millis(50);

/// Why the sampling thread stopped waiting.
#[derive(Debug, PartialEq, Eq)]
enum Woken {
    /// The interval is over.
    Schedule,
    /// A watched cgroup crossed its budget, or the rules changed: sample now.
    Early,
    Stop,
}

/// Map reads run on their own thread, not on the async runtime, on a fixed schedule (a sample
/// every interval from the last scheduled one's start) that HTTP load cannot stretch, plus an
/// early sample whenever the programs see a watched cgroup cross its budget or the rules
/// change: limits are acted on within milliseconds without sampling more often.
fn spawn_sampling(
    mut sampler: Sampler,
    tx: watch::Sender<Arc<Snapshot>>,
    settings: Arc<Settings>,
    enforcer: Arc<Enforcer>,
    history: Arc<History>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut next = Instant::now() + settings.interval();
        let mut last = Instant::now();
        let mut took = Duration::ZERO;
        loop {
            let earliest = last + (took * 4).clamp(MIN_EARLY_GAP, MAX_EARLY_GAP);
            match wait(next, earliest, &stop, &mut sampler, &enforcer) {
                Woken::Stop => return,
                // A sample late by more than an interval starts the schedule again from now.
                Woken::Schedule => next = (next + settings.interval()).max(Instant::now()),
                Woken::Early => {}
            }
            last = Instant::now();
            match sampler.sample() {
                Ok(snapshot) => {
                    let headroom = enforcer.evaluate(&snapshot.cgroups);
                    sampler.watch(&headroom);
                    history.record(&snapshot, settings.interval(), History::now(), |path| {
                        enforcer.covers(path)
                    });
                    tx.send_replace(Arc::new(snapshot));
                }
                Err(e) => tracing::warn!(error = %e, "reading the eBPF maps failed"),
            }
            took = last.elapsed();
        }
    })
}

/// Waits until `deadline` or an early wake-up (not before `earliest`), following cgroup
/// events meanwhile.
fn wait(
    deadline: Instant,
    earliest: Instant,
    stop: &AtomicBool,
    sampler: &mut Sampler,
    enforcer: &Enforcer,
) -> Woken {
    loop {
        if stop.load(Ordering::Relaxed) {
            return Woken::Stop;
        }
        let now = Instant::now();
        if now >= deadline {
            return Woken::Schedule;
        }
        let mut fds = vec![sampler.limit_events_fd()];
        fds.extend(enforcer.changes().map(AsFd::as_fd));
        wake::wait_readable(&fds, CGROUP_EVENTS_INTERVAL.min(deadline - now));
        let due = sampler.poll_cgroup_events(|path| enforcer.covers(path));
        let crossed = sampler.take_limit_events() || due;
        let changed = enforcer.changes().is_some_and(Wake::take);
        if crossed || changed {
            std::thread::sleep(earliest.saturating_duration_since(Instant::now()));
            return Woken::Early;
        }
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_kernel_and_listen_settings_need_a_restart() {
        let running =
            crate::config::resolve(None, &Default::default()).expect("defaults are valid");
        let mut new = running.clone();
        new.interval = Duration::from_secs(9);
        new.metrics.top_caches = 1;
        assert!(restart_only_changes(&running, &new).is_empty());
        new.tracer.max_objects *= 2;
        new.tracer.pin_dir = Some("/sys/fs/bpf/x".into());
        assert_eq!(
            restart_only_changes(&running, &new),
            ["max_objects", "pin_dir"]
        );
    }
}
