use std::io::IsTerminal as _;

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
    if !cli.is_daemon() {
        // A command whose output pipe is closed (`kmemcg stat | head`) ends quietly, as Unix
        // tools do, instead of panicking on the write.
        // SAFETY: restoring the default disposition of SIGPIPE has no preconditions.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    init_logs();
    match cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kmemcg: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, filtered by `KMEMCG_LOG` (default `info`); `KMEMCG_LOG_FORMAT=json` for one
/// JSON object per line.
fn init_logs() {
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("KMEMCG_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr);
    if std::env::var("KMEMCG_LOG_FORMAT").is_ok_and(|f| f == "json") {
        logs.json().flatten_event(true).init();
    } else {
        // journald and kubectl logs show escape codes verbatim.
        logs.with_ansi(std::io::stderr().is_terminal()).init();
    }
}
