//! `kmemcg top` for scripts (`--once`, `--iterations N`, `--batch`, `--json`): readings
//! printed as tables or JSON, like `top -b` and `systemd-cgtop --batch`. The same [`Model`],
//! lines and columns as the live view, in the flat layout.
use std::{borrow::Cow, io::Write, time::Instant};

use comfy_table::{CellAlignment, Table, presets::NOTHING};
use serde::Serialize;

use super::{
    app::Settings,
    columns::{Column, figures},
    fmt,
    model::{Cgroup, Model, Row},
    source::Source,
    view::{Layout, Shape, lines},
};
use crate::api::CgroupUsage;

pub(crate) struct Options {
    /// `None` runs until interrupted.
    pub(crate) iterations: Option<u64>,
    pub(crate) json: bool,
    /// At most this many cgroups per reading.
    pub(crate) limit: Option<usize>,
    /// Exact byte counts instead of IEC sizes.
    pub(crate) exact: bool,
    /// Which cgroups, in which order.
    pub(crate) shape: Shape,
}

/// Prints `options.iterations` readings, `settings.delay` apart.
pub(crate) async fn run(
    source: &mut Source,
    settings: &Settings,
    options: &Options,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    if source.is_standalone() {
        // Freshly loaded programs have seen nothing yet: give them one interval.
        tokio::time::sleep(settings.delay).await;
    }
    let mut model = Model::default();
    let mut done = 0u64;
    loop {
        let snapshot = source.fetch().await?;
        model = model.next(snapshot, Instant::now(), settings.skip_same_reading);
        let text = if options.json {
            let pretty = options.iterations == Some(1);
            json(&model, options, pretty)?
        } else {
            table(&model, settings, options)
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
        tokio::time::sleep(settings.delay).await;
    }
}

/// The rows to print: filtered, sorted, limited.
fn rows<'a>(model: &'a Model, options: &Options) -> Vec<&'a Row> {
    let limit = options.limit.unwrap_or(usize::MAX);
    (lines(model, &options.shape).iter())
        .filter_map(|l| model.rows().get(l.row))
        .take(limit)
        .collect()
}

/// A cgroup as JSON: the API's fields, plus rates once two readings were seen.
#[derive(Serialize)]
struct JsonCgroup<'a> {
    #[serde(flatten)]
    usage: Cow<'a, CgroupUsage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    change_bytes_per_second: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    allocs_per_second: Option<f64>,
}

/// The fields a cgroup has always had in `kmemcg top --json`: a removed one is written
/// as `alive: false`, its parent the ancestor charged with what it holds.
fn as_usage(cgroup: &Cgroup) -> Cow<'_, CgroupUsage> {
    match cgroup {
        Cgroup::Live(u) => Cow::Borrowed(u),
        Cgroup::Dying(d) => {
            let (slab, percpu) = (cgroup.slab_bytes(), cgroup.percpu_bytes());
            let slab_objects = cgroup.slab_objects();
            Cow::Owned(CgroupUsage {
                id: d.id,
                path: d.path.clone(),
                alive: false,
                parent: Some(d.charged_ancestor_id),
                slab_bytes: slab,
                slab_objects,
                percpu_bytes: percpu,
                percpu_objects: d.residual_objects.saturating_sub(slab_objects),
                total_slab_bytes: slab,
                total_percpu_bytes: percpu,
                total_objects: d.residual_objects,
                caches: d.caches.clone(),
                ..Default::default()
            })
        }
    }
}

/// The cgroups as a JSON array (pretty, or one line for JSON Lines).
fn json(model: &Model, options: &Options, pretty: bool) -> serde_json::Result<String> {
    let list: Vec<JsonCgroup<'_>> = rows(model, options)
        .into_iter()
        .map(|r| JsonCgroup {
            usage: as_usage(&r.cgroup),
            change_bytes_per_second: r.change,
            allocs_per_second: r.alloc_rate,
        })
        .collect();
    if pretty {
        serde_json::to_string_pretty(&list)
    } else {
        serde_json::to_string(&list)
    }
}

/// A summary line with the header's figures, and the table.
fn table(model: &Model, settings: &Settings, options: &Options) -> String {
    let mut summary = format!(
        "kmemcg top · {} · up {} · {} cgroups",
        settings.source,
        fmt::duration(model.status().uptime_seconds),
        model.rows().len(),
    );
    for f in figures(model, options.exact) {
        summary.push_str(&format!(" · {} {}", f.label, f.value));
    }
    let mut table = Table::new();
    table
        .load_preset(NOTHING)
        .set_header(Column::ALL.iter().map(|c| c.title()));
    for (i, c) in Column::ALL.iter().enumerate() {
        if let Some(col) = table.column_mut(i).filter(|_| c.numeric()) {
            col.set_cell_alignment(CellAlignment::Right);
        }
    }
    let subtree = options.shape.layout == Layout::Tree;
    for row in rows(model, options) {
        table.add_row((Column::ALL.iter()).map(|c| c.cell(row, options.exact, subtree)));
    }
    format!("{summary}\n{table}")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::tui::{
        testdata::{dying, model_from, sample, settings, snapshot},
        view::SortKey,
    };

    fn options() -> Options {
        Options {
            iterations: Some(1),
            json: false,
            limit: None,
            exact: false,
            shape: Shape {
                layout: Layout::Flat,
                ..Shape::default()
            },
        }
    }

    #[test]
    fn table_sorts_filters_and_limits() {
        let mut o = options();
        o.shape.sort = SortKey::Slab;
        o.shape.filter = "slice".into();
        o.limit = Some(2);
        let text = table(&model_from(snapshot(sample(), 1)), &settings(), &o);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("kmemcg top · agent test · up 1h02m · 5 cgroups · slab 82.0 KiB"),
            "{text}"
        );
        assert!(lines[0].ends_with("· dropped 0 · dying 0 (0 B)"), "{text}");
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
    fn sampled_unaccounted_objects_are_said_in_the_header() {
        let mut snap = snapshot(sample(), 1);
        let text = table(&model_from(snap.clone()), &settings(), &options());
        assert!(!text.contains("sampled"), "{text}");
        snap.status.unaccounted_sample_one_in = 8;
        let text = table(&model_from(snap), &settings(), &options());
        assert!(
            text.lines()
                .next()
                .unwrap()
                .contains("(unaccounted ~: 1 in 8 sampled)"),
            "{text}"
        );
        let mut status = crate::api::Status::default();
        assert_eq!(status.sampling_note(), None);
        status.unaccounted_sample_one_in = 1;
        assert_eq!(status.sampling_note(), None);
        status.unaccounted_sample_one_in = 8;
        let note = status.sampling_note().expect("a note");
        assert!(
            note.contains("1 in 8") && note.contains("sqrt(7n)"),
            "{note}"
        );
    }

    #[test]
    fn exact_bytes_and_dying_rows() {
        let mut o = options();
        o.exact = true;
        let mut snap = snapshot(sample(), 1);
        snap.dying
            .push(dying(9, "/system.slice/gone", 4096, 1024, 2));
        let text = table(&model_from(snap), &settings(), &o);
        assert!(text.contains("50200"), "{text}");
        assert!(text.contains("/system.slice/gone (dying)"), "{text}");
        assert!(text.contains("dying 1 (4096)"), "{text}");
    }

    #[test]
    fn json_has_the_api_fields_and_rates() {
        let o = options();
        let t0 = Instant::now();
        let m = Model::default().next(snapshot(sample(), 1), t0, true);
        let text = json(&m, &o, true).expect("json");
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
        let m = m.next(snapshot(more, 2), t0 + Duration::from_secs(1), true);
        let o = Options {
            limit: Some(1),
            ..options()
        };
        let line = json(&m, &o, false).expect("json");
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).expect("parses");
        assert_eq!(v[0]["change_bytes_per_second"], 1000.0);
        assert_eq!(v[0]["allocs_per_second"], 0.0);
    }

    #[test]
    fn json_writes_a_removed_cgroup_with_the_fields_it_always_had() {
        let mut o = options();
        o.shape.dying_only = true;
        let mut snap = snapshot(sample(), 1);
        snap.dying
            .push(dying(9, "/system.slice/gone", 4096, 1024, 2));
        let text = json(&model_from(snap), &o, true).expect("json");
        let back: Vec<CgroupUsage> = serde_json::from_str(&text).expect("api type");
        let gone = &back[0];
        assert_eq!((gone.id, gone.alive, gone.parent), (9, false, Some(2)));
        assert_eq!((gone.slab_bytes, gone.percpu_bytes), (3072, 1024));
        assert_eq!((gone.slab_objects, gone.percpu_objects), (2, 1));
        assert_eq!(gone.total_recursive_bytes(), 4096);
    }
}
