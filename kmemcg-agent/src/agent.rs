//! The daemon: loads the tracer, samples it every interval and serves the API until told to
//! stop.
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use tokio::{net::TcpListener, sync::watch};

use crate::{
    api::Snapshot,
    error::StartError,
    limits::{Enforcer, LimitsConfig},
    metrics::MetricsConfig,
    sampler::Sampler,
    server::{self, Shared},
    tracer::{Tracer, TracerConfig},
};

#[derive(Clone, Debug, PartialEq)]
pub struct AgentConfig {
    pub listen: SocketAddr,
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

/// Runs the agent until `shutdown` completes.
pub async fn run(
    config: AgentConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_with_reload(config, shutdown, None).await
}

/// Runs the agent until `shutdown` completes; on SIGHUP, `reload` (if any) is called and what
/// can change without a restart (metrics settings, interval) is applied.
pub async fn run_with_reload(
    config: AgentConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    reload: Option<Reload>,
) -> anyhow::Result<()> {
    // Before loading (which takes a while): a SIGHUP must not kill a starting agent.
    let hup = match reload {
        Some(reload) => Some((sighup().context("handling SIGHUP")?, reload)),
        None => None,
    };
    // Rules on protected cgroups are refused before anything is bound or loaded.
    crate::limits::check(&config.limits).map_err(|e| anyhow::anyhow!("{e}"))?;
    // Bind first: a taken port is reported before anything is loaded into the kernel.
    let listener = bind(config.listen).await?;
    let tracer = Tracer::start(config.tracer.clone())?;
    let mut sampler = Sampler::new(tracer);
    let first = sampler.sample().context("reading the eBPF maps")?;
    let (tx, rx) = watch::channel(Arc::new(first));
    let stop = Arc::new(AtomicBool::new(false));
    let enforcer = Enforcer::new(
        &config.limits,
        sampler.tracer().cgroup2_mount().to_path_buf(),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let shared = Arc::new(Shared::with_enforcer(
        config.metrics.clone(),
        config.interval,
        Arc::new(enforcer),
    ));
    let sampling = spawn_sampling(sampler, tx, shared.clone(), stop.clone());
    let reloading = hup.map(|(hup, reload)| {
        tokio::spawn(reload_on_sighup(
            hup,
            config.clone(),
            reload,
            shared.clone(),
        ))
    });

    tracing::info!(listen = %config.listen, "kmemcg agent serving");
    let served = axum::serve(listener, server::router_with(rx, shared))
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving the HTTP API");
    if let Some(task) = reloading {
        task.abort();
    }
    stop.store(true, Ordering::Relaxed);
    // Dropping the sampler detaches the programs.
    let _ = tokio::task::spawn_blocking(move || sampling.join()).await;
    served?;
    tracing::info!("kmemcg agent stopped");
    Ok(())
}

/// Applies a new configuration on every SIGHUP; a bad one is reported and the running one kept.
async fn reload_on_sighup(
    mut hup: tokio::signal::unix::Signal,
    mut current: AgentConfig,
    reload: Reload,
    shared: Arc<Shared>,
) {
    while hup.recv().await.is_some() {
        let new = match reload() {
            Ok(new) => new,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "configuration reload failed; keeping the running configuration");
                continue;
            }
        };
        let restart_only = restart_only_changes(&current, &new);
        if !restart_only.is_empty() {
            tracing::warn!(keys = ?restart_only, "these settings take effect only at the next start");
        }
        shared.set_metrics_config(new.metrics.clone());
        shared.set_interval(new.interval);
        if let Err(e) = shared.enforcer().reconfigure(&new.limits) {
            tracing::error!(error = %e, "limits not reloaded; keeping the running ones");
        }
        tracing::info!(interval = ?new.interval, metrics = ?new.metrics, "configuration reloaded");
        current = AgentConfig {
            listen: current.listen,
            tracer: current.tracer.clone(),
            ..new
        };
    }
}

fn sighup() -> std::io::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
}

/// Keys whose change needs a restart: the listening address and everything loaded into the
/// kernel.
pub fn restart_only_changes(running: &AgentConfig, new: &AgentConfig) -> Vec<&'static str> {
    let (a, b) = (&running.tracer, &new.tracer);
    [
        ("listen", running.listen != new.listen),
        ("max_objects", a.max_objects != b.max_objects),
        ("max_stats", a.max_stats != b.max_stats),
        ("root_cgroup", a.root_mode != b.root_mode),
        ("pin_dir", a.pin_dir != b.pin_dir),
    ]
    .into_iter()
    .filter_map(|(key, changed)| changed.then_some(key))
    .collect()
}

/// While limits are in force the maps are read at least this often, so that a cgroup crossing
/// its limit is acted on well within a second.
const ENFORCEMENT_INTERVAL: Duration = Duration::from_millis(250);

/// Map reads are syscalls: they run on their own thread, not on the async runtime.
fn spawn_sampling(
    mut sampler: Sampler,
    tx: watch::Sender<Arc<Snapshot>>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let interval = if shared.enforcer().has_rules() {
                shared.interval().min(ENFORCEMENT_INTERVAL)
            } else {
                shared.interval()
            };
            sleep_unless_stopped(interval, &stop, &mut sampler);
            match sampler.sample() {
                Ok(snapshot) => {
                    // Right after the sample: the reaction time is at most one interval.
                    shared.enforcer().evaluate(&snapshot.cgroups);
                    tx.send_replace(Arc::new(snapshot));
                }
                Err(e) => tracing::warn!(error = %e, "reading the eBPF maps failed"),
            }
        }
    })
}

/// Sleeps for `interval`, following cgroup events every 50 ms meanwhile.
fn sleep_unless_stopped(interval: Duration, stop: &AtomicBool, sampler: &mut Sampler) {
    let step = Duration::from_millis(50);
    let mut slept = Duration::ZERO;
    while slept < interval && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(step.min(interval - slept));
        slept += step;
        sampler.poll_cgroup_events();
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
