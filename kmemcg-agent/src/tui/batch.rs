//! Batch mode (`--once`, `--iterations N`, `--json`): snapshots printed for scripts, like
//! `top -b` and `systemd-cgtop --batch`. Uses the same [`App`] as the live view for rates,
//! sorting and filtering, in the flat view.
use std::{io::Write, time::Instant};

use comfy_table::{Cell, CellAlignment, Table, presets::NOTHING};
use serde::Serialize;

use super::{app::App, fmt, source::Source};
use crate::api::CgroupUsage;

pub struct BatchOptions {
    /// `None` runs until interrupted.
    pub iterations: Option<u64>,
    pub json: bool,
    pub limit: Option<usize>,
}

/// A cgroup as JSON: the API's fields, plus rates once two readings were seen.
#[derive(Serialize)]
pub struct JsonCgroup<'a> {
    #[serde(flatten)]
    pub usage: &'a CgroupUsage,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change_bytes_per_second: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocs_per_second: Option<f64>,
}

/// Prints `iterations` snapshots, `app.delay` apart.
pub async fn run(
    source: &mut Source,
    mut app: App,
    options: &BatchOptions,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    if source.is_standalone() {
        // Freshly loaded programs have seen nothing yet: give them one interval.
        tokio::time::sleep(app.delay).await;
    }
    let mut done = 0u64;
    loop {
        let snapshot = source.fetch().await?;
        app.update(snapshot, Instant::now());
        let text = if options.json {
            let pretty = options.iterations == Some(1);
            json(&app, options.limit, pretty)?
        } else {
            table(&app, options.limit)
        };
        // Tables are separated by a blank line, like `top -b`.
        let gap = if done > 0 && !options.json { "\n" } else { "" };
        match writeln!(out, "{gap}{text}").and_then(|()| out.flush()) {
            Ok(()) => {}
            // `kmemcg top --once | head` is not an error.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        done += 1;
        if options.iterations.is_some_and(|n| done >= n) {
            return Ok(());
        }
        tokio::time::sleep(app.delay).await;
    }
}

fn selected(app: &App, limit: Option<usize>) -> impl Iterator<Item = &super::app::Entry> {
    app.rows()
        .iter()
        .filter_map(|r| app.entry(r))
        .take(limit.unwrap_or(usize::MAX))
}

/// The cgroups as a JSON array (pretty, or one line for JSON Lines).
pub fn json(app: &App, limit: Option<usize>, pretty: bool) -> serde_json::Result<String> {
    let list: Vec<JsonCgroup<'_>> = selected(app, limit)
        .map(|e| JsonCgroup {
            usage: &e.usage,
            change_bytes_per_second: e.change,
            allocs_per_second: e.alloc_rate,
        })
        .collect();
    if pretty {
        serde_json::to_string_pretty(&list)
    } else {
        serde_json::to_string(&list)
    }
}

/// A summary line and a table, like one screen of the live view.
pub fn table(app: &App, limit: Option<usize>) -> String {
    let exact = app.exact;
    let s = app.status();
    let t = app.totals();
    let summary = format!(
        "kmemcg top · {} · up {} · {} cgroups · slab {} · percpu {} · objects {} · growth {}/s \
         · allocs {}/s · dropped {} · dying {} ({})",
        app.source,
        fmt::duration(s.uptime_seconds),
        app.entries().len(),
        fmt::size(t.slab, exact),
        fmt::size(t.percpu, exact),
        s.tracked_objects,
        fmt::byte_rate(t.change, exact),
        fmt::count_rate(t.alloc_rate, exact),
        s.dropped,
        t.dying,
        fmt::size(t.dying_bytes, exact),
    );
    let mut table = Table::new();
    table.load_preset(NOTHING).set_header(vec![
        "CGROUP",
        "SLAB",
        "PERCPU",
        "TOTAL",
        "CHANGE/s",
        "ALLOCS/s",
        "TOP CACHE",
    ]);
    for i in 1..6 {
        if let Some(col) = table.column_mut(i) {
            col.set_cell_alignment(CellAlignment::Right);
        }
    }
    for e in selected(app, limit) {
        let u = &e.usage;
        let path = if e.dying() {
            format!("{} (dying)", u.path)
        } else {
            u.path.clone()
        };
        table.add_row(vec![
            Cell::new(path),
            Cell::new(fmt::size(u.slab_bytes, exact)),
            Cell::new(fmt::size(u.percpu_bytes, exact)),
            Cell::new(fmt::size(u.total_bytes(), exact)),
            Cell::new(fmt::byte_rate(e.change, exact)),
            Cell::new(fmt::count_rate(e.alloc_rate, exact)),
            Cell::new(super::render::top_cache(u)).set_alignment(CellAlignment::Left),
        ]);
    }
    format!("{summary}\n{table}")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::tui::app::{SortKey, View, tests::*};

    fn batch_app() -> App {
        let mut app = App::new("agent test".into(), Duration::from_secs(1));
        app.view = View::Flat;
        app
    }

    #[test]
    fn table_sorts_filters_and_limits() {
        let mut app = batch_app();
        app.sort = SortKey::Slab;
        app.filter = "slice".into();
        app.update(snapshot(sample(), 1), Instant::now());
        let text = table(&app, Some(2));
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("kmemcg top · agent test · up 1h02m · 5 cgroups"),
            "{text}"
        );
        assert!(
            lines[1].contains("CGROUP") && lines[1].contains("TOP CACHE"),
            "{text}"
        );
        assert!(lines[2].contains("/system.slice/foo.service"), "{text}");
        assert!(
            lines[2].contains("48.8 KiB") && lines[2].contains("dentry"),
            "{text}"
        );
        assert!(lines[3].contains("/user.slice"), "{text}");
        assert_eq!(lines.len(), 4, "{text}");
    }

    #[test]
    fn exact_bytes() {
        let mut app = batch_app();
        app.exact = true;
        app.update(snapshot(sample(), 1), Instant::now());
        let text = table(&app, Some(1));
        assert!(text.contains("50200"), "{text}");
    }

    #[test]
    fn json_has_the_api_fields_and_rates() {
        let mut app = batch_app();
        let t0 = Instant::now();
        app.update(snapshot(sample(), 1), t0);
        let text = json(&app, None, true).expect("json");
        let v: serde_json::Value = serde_json::from_str(&text).expect("parses");
        let list = v.as_array().expect("array");
        assert_eq!(list.len(), 5);
        assert_eq!(list[0]["path"], "/system.slice/foo.service");
        assert_eq!(list[0]["slab_bytes"], 50_000);
        assert_eq!(list[0]["caches"][0]["name"], "dentry");
        assert!(list[0].get("change_bytes_per_second").is_none());
        // It reads back as the API's type.
        let back: Vec<CgroupUsage> = serde_json::from_str(&text).expect("api type");
        assert_eq!(back[0].id, 3);

        let mut more = sample();
        more[2].slab_bytes += 1000;
        app.update(snapshot(more, 2), t0 + Duration::from_secs(1));
        let line = json(&app, Some(1), false).expect("json");
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).expect("parses");
        assert_eq!(v[0]["change_bytes_per_second"], 1000.0);
        assert_eq!(v[0]["allocs_per_second"], 0.0);
    }
}
