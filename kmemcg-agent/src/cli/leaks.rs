//! `kmemcg leaks PATH`: which kernel code holds a cgroup's new kernel memory, and since when.
use std::{io::IsTerminal as _, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::Args;
use comfy_table::{Table, presets::NOTHING};

use crate::{api::LeakView, leaks::MAX_DURATION, units::iec};

#[derive(Debug, Args)]
pub struct LeaksArgs {
    /// cgroup path from the cgroup v2 root (/kubepods.slice/foo); its descendants are recorded
    /// too, those created meanwhile included.
    pub path: String,
    /// How long to record, e.g. 30s, 5m, 1h 30m (at most 24h).
    #[arg(long = "for", value_name = "DURATION", default_value = "60s", value_parser = duration)]
    pub for_duration: Duration,
    /// Print one JSON object when the recording ends, instead of tables while it runs.
    #[arg(long)]
    pub json: bool,
    /// Count the objects older than this apart in each call site.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = duration)]
    pub older_than: Duration,
    /// Seconds between two tables while recording (on a terminal).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub every: u64,
    /// The agent's TCP address (env KMEMCG_ADDR); see `kmemcg limit --help` for how --addr,
    /// --socket and --token-file choose where requests go (starting a recording is a change).
    #[arg(long)]
    pub addr: Option<String>,
    /// The agent's unix socket (env KMEMCG_SOCKET) [default for changes:
    /// /run/kmemcg/kmemcg.sock].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// File with the agent's write token, for a recording started over TCP.
    #[arg(long, env = "KMEMCG_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The uid the agent runs as, when not root.
    #[arg(long, env = "KMEMCG_SOCKET_OWNER", value_name = "UID")]
    pub socket_owner: Option<u32>,
}

/// `30s`, `5m`, `1h 30m`, `PT2M` (jiff's friendly and ISO 8601 formats).
fn duration(s: &str) -> Result<Duration, String> {
    let parsed: jiff::SignedDuration = s
        .trim()
        .parse()
        .map_err(|e| format!("`{s}` is not a duration (write e.g. 30s, 5m, 1h 30m): {e}"))?;
    let d = Duration::try_from(parsed).map_err(|_| format!("`{s}` is negative"))?;
    if d > MAX_DURATION {
        return Err(format!("`{s}` is longer than 24h"));
    }
    Ok(d)
}

pub async fn run(args: LeaksArgs) -> anyhow::Result<()> {
    if args.for_duration.is_zero() {
        anyhow::bail!("--for must be longer than 0 s");
    }
    let client = super::limit::write_client(
        args.addr,
        args.socket,
        args.token_file.as_deref(),
        args.socket_owner,
    )?;
    let id = client
        .start_leaks(&args.path, args.for_duration)
        .await
        .with_context(|| format!("starting a leak recording of {}", args.path))?;
    eprintln!(
        "recording {} for {:.0} s (recording {id}); Ctrl-C ends it early",
        args.path,
        args.for_duration.as_secs_f64()
    );
    let live = !args.json && std::io::stdout().is_terminal();
    let every = Duration::from_secs(args.every);
    let deadline = tokio::time::Instant::now() + args.for_duration;
    let mut next_table = tokio::time::Instant::now() + every;
    let view = loop {
        let wake = next_table.min(deadline + Duration::from_millis(200));
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = tokio::signal::ctrl_c() => {
                client.stop_leaks(id).await.context("ending the recording")?;
            }
        }
        let view = client
            .leaks(id, args.older_than)
            .await
            .with_context(|| format!("reading leak recording {id}"))?;
        if view.state != "recording" {
            break view;
        }
        if live && tokio::time::Instant::now() >= next_table {
            println!("{}", text(&view));
            next_table += every;
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        println!("{}", text(&view));
    }
    Ok(())
}

/// A view as people read it: a header, warnings, the sites, then what is older.
pub fn text(view: &LeakView) -> String {
    let mut out = format!(
        "{} since {}, {:.0} s recorded{} ({} cgroups)\n",
        view.cgroup,
        view.since,
        view.recorded_seconds,
        view.ended
            .as_ref()
            .map(|why| format!(", ended: {why}"))
            .unwrap_or_default(),
        view.cgroups
    );
    for warning in &view.warnings {
        out += &format!("warning: {warning}\n");
    }
    if view.sites.is_empty() {
        out += "no outstanding objects allocated since the start\n";
    } else {
        let mut table = Table::new();
        table.load_preset(NOTHING).set_header([
            "CACHE",
            "CALL SITE",
            "OBJECTS",
            "BYTES",
            "PER MIN",
            "MEDIAN AGE",
            "P90 AGE",
            "OLDEST",
            &format!("> {:.0}s", view.older_than_seconds),
        ]);
        for s in &view.sites {
            let site = match &s.module {
                Some(module) => format!("{} [{module}]", s.function),
                None => s.function.clone(),
            };
            table.add_row([
                s.cache.clone(),
                site,
                s.objects.to_string(),
                iec(s.bytes),
                format!("{:.1}", s.growth_per_minute),
                format!("{:.1}s", s.median_age_seconds),
                format!("{:.1}s", s.p90_age_seconds),
                format!("{:.1}s", s.oldest_seconds),
                s.older_objects.to_string(),
            ]);
        }
        out += &format!("{table}\n");
    }
    if !view.before_recording.is_empty() {
        let held: Vec<String> = view
            .before_recording
            .iter()
            .take(8)
            .map(|c| format!("{} {} ({})", c.cache, c.objects, iec(c.bytes)))
            .collect();
        out += &format!("before recording: {}\n", held.join(", "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_the_usual_forms() {
        assert_eq!(duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(duration("25h").is_err());
        assert!(duration("-5s").is_err());
        assert!(duration("soon").is_err());
    }
}
