//! `kmemcg top`: live per-cgroup slab and percpu usage in the terminal, or snapshots for
//! scripts (`--once`, `--iterations`, `--json`).
use std::{
    io::{BufRead as _, IsTerminal as _, Write as _},
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::{
    api::DEFAULT_LISTEN,
    tui::{
        self,
        app::{App, Settings},
        once,
        source::{STANDALONE_NOTICE, Source},
        view::{Layout, Shape, SortKey, ViewState},
    },
};

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Address of the agent to read.
    #[arg(long, default_value = DEFAULT_LISTEN, env = "KMEMCG_ADDR")]
    addr: String,
    /// Load the eBPF programs in this process instead of reading an agent (needs root). Objects
    /// allocated before it started are counted as far as its inventory finds them (accounted
    /// slab objects, on kernels that allow it).
    #[arg(long)]
    standalone: bool,
    /// Seconds between refreshes (0.1 to 3600).
    #[arg(short, long, default_value_t = 1.0, value_parser = parse_delay, value_name = "SECONDS")]
    delay: f64,
    /// Print one snapshot and exit (batch mode).
    #[arg(long, conflicts_with = "iterations")]
    once: bool,
    /// Print N snapshots, --delay apart, and exit (batch mode).
    #[arg(short = 'n', long, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    iterations: Option<u64>,
    /// Batch mode: print snapshots instead of the live view, until interrupted unless
    /// --iterations is given. Also chosen when standard output is not a terminal.
    #[arg(short, long)]
    batch: bool,
    /// Print JSON instead of a table (batch mode): an array of cgroups with the API's fields,
    /// plus `change_bytes_per_second` and `allocs_per_second` from the second snapshot on;
    /// one line per snapshot when there are several.
    #[arg(long)]
    json: bool,
    /// Column to sort by, largest first (path: A to Z).
    #[arg(short, long, value_enum, default_value_t = SortKey::Total)]
    sort: SortKey,
    /// Reverse the sort order.
    #[arg(short, long)]
    reverse: bool,
    /// Only cgroups whose path contains this text (case-insensitive).
    #[arg(short, long, value_name = "TEXT")]
    filter: Option<String>,
    /// At most N cgroups per snapshot (batch mode).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    limit: Option<u64>,
    /// Exact byte counts instead of IEC sizes.
    #[arg(long)]
    bytes: bool,
    /// Start the live view flat (full paths) instead of as a tree.
    #[arg(long)]
    flat: bool,
}

/// `1`, `0.5`, `500ms`, `2s` (see [`crate::units::parse_duration`]), 0.1 to 3600 seconds.
fn parse_delay(s: &str) -> Result<f64, String> {
    let v = crate::units::parse_duration(s)?.as_secs_f64();
    if (0.1..=3600.0).contains(&v) {
        Ok(v)
    } else {
        Err("the delay must be between 0.1 and 3600 seconds".into())
    }
}

impl TopArgs {
    fn batch_mode(&self) -> bool {
        self.once
            || self.iterations.is_some()
            || self.batch
            || self.json
            || !std::io::stdout().is_terminal()
    }

    fn iterations(&self) -> Option<u64> {
        if self.once {
            Some(1)
        } else if self.iterations.is_some() {
            self.iterations
        } else if self.batch {
            None
        } else {
            // --json alone, or output into a pipe: one snapshot.
            Some(1)
        }
    }

    /// Which cgroups are listed and how, at the start of the live view or in batch mode.
    fn shape(&self, batch: bool) -> Shape {
        Shape {
            sort: self.sort,
            descending: self.sort.default_descending() != self.reverse,
            layout: if batch || self.flat {
                Layout::Flat
            } else {
                Layout::Tree
            },
            filter: self.filter.clone().unwrap_or_default(),
            ..Shape::default()
        }
    }

    fn settings(&self, source: &Source) -> Settings {
        let standalone = source.is_standalone();
        Settings {
            source: source.describe(),
            notice: standalone.then(|| STANDALONE_NOTICE.to_string()),
            delay: Duration::from_secs_f64(self.delay),
            // Standalone readings are this process's own: each one is new.
            skip_same_reading: !standalone,
        }
    }
}

pub(crate) async fn run(args: TopArgs) -> anyhow::Result<()> {
    let batch = args.batch_mode();
    let mut first = None;
    let mut source = if args.standalone {
        Source::standalone(Duration::from_secs_f64(args.delay))?
    } else {
        let mut source = Source::agent(&args.addr);
        match source.fetch().await {
            Ok(snapshot) => first = Some(snapshot),
            Err(e) => source = no_agent(e, &args, batch)?,
        }
        source
    };
    let settings = args.settings(&source);
    if batch {
        if source.is_standalone() {
            eprintln!("kmemcg top: {STANDALONE_NOTICE}");
        }
        let options = once::Options {
            iterations: args.iterations(),
            json: args.json,
            limit: args.limit.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            exact: args.bytes,
            shape: args.shape(true),
        };
        once::run(
            &mut source,
            &settings,
            &options,
            &mut std::io::stdout().lock(),
        )
        .await
    } else {
        let view = ViewState {
            shape: args.shape(false),
            exact: args.bytes,
            ..ViewState::default()
        };
        let mut app = App::new(settings, view);
        // The screen starts with data rather than "waiting".
        if let Some(snapshot) = first {
            app.update(snapshot, std::time::Instant::now());
        }
        tui::run_live(source, app).await
    }
}

/// No agent answered: say so, and offer to load the eBPF programs here when a person can
/// answer.
fn no_agent(error: anyhow::Error, args: &TopArgs, batch: bool) -> anyhow::Result<Source> {
    let interactive = !batch && std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    if !interactive {
        return Err(error.context(
            "kmemcg top reads a running agent; use --standalone to load the eBPF programs in \
             this process instead (needs root; objects allocated before it started are counted \
             as far as its inventory finds them)",
        ));
    }
    eprintln!("kmemcg top: {error:#}");
    eprint!(
        "Load the eBPF programs in this process instead? This needs root, and objects \
         allocated before now are counted as far as its inventory finds them. [y/N] "
    );
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .context("reading the answer")?;
    if matches!(answer.trim(), "y" | "Y" | "yes" | "Yes") {
        Source::standalone(Duration::from_secs_f64(args.delay))
    } else {
        bail!(
            "no agent to read at {} (start one with `kmemcg agent`)",
            args.addr
        )
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<TopArgs, clap::Error> {
        let mut argv = vec!["kmemcg", "top"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).map(|cli| match cli.command {
            Command::Top(a) => a,
            other => panic!("parsed as {other:?}"),
        })
    }

    #[test]
    fn parses_batch_options() {
        let a = parse(&[
            "--once", "--json", "--sort", "slab", "--filter", "foo", "--limit", "3", "--bytes",
            "-d", "0.5",
        ])
        .expect("valid");
        assert!(a.once && a.json && a.bytes);
        assert_eq!(a.sort, SortKey::Slab);
        assert_eq!(a.limit, Some(3));
        assert_eq!(a.delay, 0.5);
        assert_eq!(a.iterations(), Some(1));
        let a = parse(&["-n", "4"]).expect("valid");
        assert_eq!(a.iterations(), Some(4));
        let a = parse(&["--batch"]).expect("valid");
        assert_eq!(a.iterations(), None);
    }

    #[test]
    fn rejects_bad_values() {
        assert!(parse(&["--delay", "0"]).is_err());
        assert!(parse(&["--delay", "abc"]).is_err());
        assert!(parse(&["--iterations", "0"]).is_err());
        assert!(parse(&["--limit", "0"]).is_err());
        assert!(parse(&["--sort", "size"]).is_err());
        assert!(parse(&["--once", "--iterations", "2"]).is_err());
    }

    #[test]
    fn reverse_flips_the_default_order() {
        let a = parse(&["--reverse", "--sort", "path"]).expect("valid");
        let shape = a.shape(true);
        assert!(shape.descending);
        assert_eq!(shape.layout, Layout::Flat);
        let shape = parse(&["--flat"]).expect("valid").shape(false);
        assert_eq!((shape.sort, shape.descending), (SortKey::Total, true));
        assert_eq!(shape.layout, Layout::Flat);
        let settings = a.settings(&Source::agent("127.0.0.1:1"));
        assert!(settings.skip_same_reading && settings.notice.is_none());
    }
}
