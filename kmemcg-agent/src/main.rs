use clap::Parser as _;
use kmemcg_agent::cli::{self, Cli};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Few malloc arenas: the HTTP workers and the sampler would otherwise each grow their own,
    // and resident memory would follow the sum of their bursts.
    // SAFETY: mallopt has no preconditions.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("KMEMCG_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kmemcg: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
