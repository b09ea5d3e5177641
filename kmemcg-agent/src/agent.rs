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
    error::StartError,
    sampler::{Sampler, Snapshot},
    server,
    tracer::{Tracer, TracerConfig},
};

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub listen: SocketAddr,
    /// How often the maps are read.
    pub interval: Duration,
    pub tracer: TracerConfig,
}

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
    // Bind first: a taken port is reported before anything is loaded into the kernel.
    let listener = bind(config.listen).await?;
    let tracer = Tracer::start(config.tracer.clone())?;
    let mut sampler = Sampler::new(tracer);
    let first = sampler.sample().context("reading the eBPF maps")?;
    let (tx, rx) = watch::channel(Arc::new(first));
    let stop = Arc::new(AtomicBool::new(false));
    let sampling = spawn_sampling(sampler, tx, config.interval, stop.clone());

    tracing::info!(listen = %config.listen, "kmemcg agent serving");
    axum::serve(listener, server::router(rx))
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving the HTTP API")?;
    stop.store(true, Ordering::Relaxed);
    // Dropping the sampler detaches the programs.
    let _ = tokio::task::spawn_blocking(move || sampling.join()).await;
    tracing::info!("kmemcg agent stopped");
    Ok(())
}

/// Map reads are syscalls: they run on their own thread, not on the async runtime.
fn spawn_sampling(
    mut sampler: Sampler,
    tx: watch::Sender<Arc<Snapshot>>,
    interval: Duration,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            sleep_unless_stopped(interval, &stop, &mut sampler);
            match sampler.sample() {
                Ok(snapshot) => {
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
