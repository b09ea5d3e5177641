//! One cgroup's caches: a `slabtop` for the cgroup drilled into.
use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Cell, Paragraph, Row as TableRow, Table},
};

use super::{heading_style, history, label, right};
use crate::tui::{
    app::App,
    columns::{CacheColumn, dying_mark},
    fmt,
    model::Cgroup,
};

pub(super) fn render(frame: &mut Frame, area: Rect, app: &mut App) {
    // Below the heading: the leak panel while there is one, the chart where there is room
    // for it, and the caches.
    let panel = (app.view().detail.as_ref()).and_then(|d| app.leak_panel().lines(&d.path));
    let panel_height = panel.as_ref().map_or(0, |l| l.len() as u16 + 1);
    let chart_height = if area.height.saturating_sub(panel_height) >= history::HEIGHT + 6 {
        history::HEIGHT
    } else {
        0
    };
    let [info, leaks_area, chart_area, table_area] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Length(panel_height),
        Constraint::Length(chart_height),
        Constraint::Min(1),
    ])
    .areas(area);
    if let Some(lines) = panel {
        let text: Vec<Line> = lines.into_iter().map(Line::from).collect();
        frame.render_widget(Paragraph::new(text), leaks_area);
    }
    let height = table_area.height.saturating_sub(1) as usize;
    app.fit(height);
    let (view, model) = (app.view(), app.model());
    let exact = view.exact;
    let Some(detail) = &view.detail else {
        return;
    };
    let Some(row) = app.detail_row() else {
        let text = vec![
            Line::from(Span::styled(detail.path.clone(), Style::new().bold())),
            Line::from("This cgroup is no longer reported (Esc goes back)."),
        ];
        frame.render_widget(Paragraph::new(text), area);
        return;
    };
    let c = &row.cgroup;
    let mut title = vec![Span::styled(c.path().to_string(), Style::new().bold())];
    if c.is_dying() {
        title.push(Span::styled(
            dying_mark(c.id()),
            Style::new().fg(Color::Red),
        ));
    }
    if c.unreliable() {
        title.push(Span::styled(
            "  figures may be short (allocations dropped)",
            Style::new().fg(Color::Red),
        ));
    }
    // The kernel's own charge beside kmemcg's figures, where it keeps one.
    if let Cgroup::Live(u) = c
        && let Some(k) = &u.kernel
        && let Some(kernel) = k.kernel_bytes
    {
        title.push(label("  kernel charges ".into()));
        title.push(Span::raw(fmt::size(kernel, exact)));
        if let Some(drift) = k.drift_bytes {
            title.push(label("  drift ".into()));
            let sign = if drift < 0 { "-" } else { "+" };
            title.push(Span::raw(format!(
                "{sign}{}",
                fmt::size(drift.unsigned_abs(), exact)
            )));
        }
    }
    let mut facts = vec![
        label("slab ".into()),
        Span::raw(format!(
            "{} ({} obj)",
            fmt::size(c.slab_bytes(), exact),
            c.slab_objects()
        )),
        label("  percpu ".into()),
        Span::raw(fmt::size(c.percpu_bytes(), exact)),
        label("  total ".into()),
        Span::raw(fmt::size(c.total_bytes(), exact)),
        label("  change ".into()),
        Span::raw(format!("{}/s", fmt::byte_rate(row.change, exact))),
    ];
    // What the tree shows for it, where descendants add to its own.
    if row.subtree.total() != c.total_bytes() {
        facts.splice(
            6..6,
            [
                label("  subtree ".into()),
                Span::raw(fmt::size(row.subtree.total(), exact)),
            ],
        );
    }
    match c {
        Cgroup::Live(u) => facts.extend([
            label("  allocs ".into()),
            Span::raw(format!("{}/s", fmt::count_rate(row.alloc_rate, exact))),
            label("  accounted ".into()),
            Span::raw(fmt::size(u.accounted_bytes, exact)),
            label("  unaccounted ".into()),
            Span::raw(fmt::size(u.unaccounted_bytes, exact)),
        ]),
        Cgroup::Dying(d) => {
            facts.extend([
                label("  charged to ".into()),
                Span::raw(d.charged_ancestor_path.clone()),
            ]);
            // What the kernel still keeps of it, and why.
            if let Some(k) = &d.kernel_memcg {
                let kept = if k.alive_in_kernel {
                    format!("kept, {} charged", fmt::size(k.charged_bytes, exact))
                } else {
                    "freed".into()
                };
                facts.extend([
                    label("  kernel memcg ".into()),
                    Span::raw(kept),
                    label("  why ".into()),
                    Span::raw(k.reason.clone()),
                ]);
            }
        }
    }
    frame.render_widget(
        Paragraph::new(vec![Line::from(title), Line::from(facts)]),
        info,
    );
    if chart_height > 0 {
        history::render(frame, chart_area, app);
    }

    let mut caches = model.cache_lines(detail.id);
    if caches.is_empty() {
        frame.render_widget(Paragraph::new("No caches."), table_area);
        return;
    }
    view.cache_sort.sort(&mut caches);
    let cursor = detail.cursor;
    let shown: Vec<Vec<String>> = caches
        .iter()
        .skip(cursor.offset)
        .take(height)
        .map(|line| {
            CacheColumn::ALL
                .iter()
                .map(|c| c.cell(line, exact))
                .collect()
        })
        .collect();
    let titles: Vec<String> = (CacheColumn::ALL.iter())
        .map(|c| c.heading(view.cache_sort))
        .collect();
    let widths: Vec<Constraint> = (0..titles.len())
        .map(|i| {
            let widest = shown
                .iter()
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0);
            let w = u16::try_from(widest.max(titles[i].chars().count())).unwrap_or(u16::MAX);
            // The name column (first) stays within 40.
            Constraint::Length(if i == 0 { w.min(40) } else { w })
        })
        .collect();
    let cells = |texts: &[String]| -> Vec<Cell<'static>> {
        (texts.iter().enumerate())
            .map(|(i, t)| {
                if i == 0 {
                    Cell::from(t.clone())
                } else {
                    right(t)
                }
            })
            .collect()
    };
    let header = TableRow::new(cells(&titles)).style(heading_style());
    let lines = shown.iter().enumerate().map(|(i, texts)| {
        let style = if cursor.offset + i == cursor.selected {
            Style::new().add_modifier(Modifier::REVERSED)
        } else {
            Style::new()
        };
        TableRow::new(cells(texts)).style(style)
    });
    let table = Table::new(lines, widths).header(header).column_spacing(2);
    frame.render_widget(table, table_area);
}

#[cfg(test)]
mod tests {
    use super::super::tests::{find, screen};
    use crate::tui::{
        keys::Action,
        testdata::{act, app_of, app_with, dying, sample, snapshot},
    };

    #[test]
    fn drill_in_shows_caches() {
        let mut app = app_with(sample());
        act(
            &mut app,
            &[Action::ToggleLayout, Action::First, Action::DrillIn],
        );
        let s = screen(&mut app, 80, 12);
        let text = s.join("\n");
        assert!(s[3].contains("/system.slice/foo.service"), "{text}");
        assert!(s[4].contains("slab 48.8 KiB"), "{text}");
        for title in ["CACHE", "OBJECTS", "BYTES▼", "SHARE", "CHANGE/s"] {
            assert!(s[5].contains(title), "{title}: {text}");
        }
        assert!(s[6].contains("dentry") && s[6].contains("99.6%"), "{text}");
        assert!(s[7].contains("percpu"), "{text}");
        assert!(s[11].contains("Esc") && s[11].contains("back"), "{text}");
        // `<` sorts the caches by objects, then by name.
        act(&mut app, &[Action::SortLeft]);
        let s = screen(&mut app, 80, 12);
        assert!(s[5].contains("OBJECTS▼"), "{}", s.join("\n"));
        act(&mut app, &[Action::SortLeft]);
        let s = screen(&mut app, 80, 12);
        assert!(s[5].contains("CACHE▲"), "{}", s.join("\n"));
        assert!(
            s[6].contains("dentry") && s[7].contains("percpu"),
            "{}",
            s.join("\n")
        );
    }

    #[test]
    fn drill_in_shows_the_kernels_own_charge() {
        let mut cgroups = sample();
        for c in &mut cgroups {
            c.kernel = Some(Box::new(crate::api::KernelMemory {
                source: "memory.stat".into(),
                kernel_bytes: Some(3 << 20),
                drift_bytes: Some(-(1 << 20)),
                ..Default::default()
            }));
        }
        let mut app = app_with(cgroups);
        act(
            &mut app,
            &[Action::ToggleLayout, Action::First, Action::DrillIn],
        );
        let s = screen(&mut app, 100, 12);
        let text = s.join("\n");
        assert!(
            s[3].contains("kernel charges 3.00 MiB") && s[3].contains("drift -1.00 MiB"),
            "{text}"
        );
    }

    #[test]
    fn a_dying_cgroup_says_where_its_memory_is_charged() {
        let mut snap = snapshot(sample(), 1);
        let mut gone = dying(9, "/system.slice/gone", 4096, 1024, 2);
        gone.charged_ancestor_path = "/system.slice".into();
        snap.dying.push(gone);
        let mut app = app_of(snap);
        act(
            &mut app,
            &[
                Action::ToggleLayout,
                Action::ToggleDyingOnly,
                Action::DrillIn,
            ],
        );
        let s = screen(&mut app, 100, 12);
        let text = s.join("\n");
        assert!(s[3].contains("/system.slice/gone (dying)"), "{text}");
        assert!(s[4].contains("slab 3.00 KiB (2 obj)"), "{text}");
        assert!(s[4].contains("charged to /system.slice"), "{text}");
        assert!(find(&s, "percpu").is_some(), "{text}");
    }

    #[test]
    fn drill_in_draws_the_history_and_the_caches_growth() {
        use crate::api::{CacheHistory, CgroupHistory, HistoryPoint};
        let mut app = app_with(sample());
        act(
            &mut app,
            &[Action::ToggleLayout, Action::First, Action::DrillIn],
        );
        let path = "/system.slice/foo.service".to_string();
        assert_eq!(app.history_wanted().as_deref(), Some(path.as_str()));
        let points = (0..300u64)
            .map(|i| HistoryPoint {
                at_ms: (1000 + i) * 1000,
                slab_bytes: 1000 + i * 100,
                percpu_bytes: 200,
                kernel_bytes: Some(2000 + i * 100),
            })
            .collect();
        let history = CgroupHistory {
            path: path.clone(),
            points,
            caches: vec![CacheHistory {
                name: "dentry".into(),
                growth_bytes: 29_900,
                points: vec![],
            }],
            ..Default::default()
        };
        app.set_history(path, Ok(history));
        let s = screen(&mut app, 100, 30);
        let text = s.join("\n");
        assert!(find(&s, "history, last 4m59s").is_some(), "{text}");
        let braille = text
            .chars()
            .filter(|c| ('\u{2801}'..='\u{28ff}').contains(c))
            .count();
        assert!(braille > 50, "{braille} braille dots: {text}");
        let growth = find(&s, "growth of the top caches").expect("growth");
        assert!(
            s[growth + 1].contains("dentry") && s[growth + 1].contains("+29.2 KiB"),
            "{text}"
        );
        // The caches table stays below the chart.
        assert!(find(&s, "BYTES▼").is_some_and(|l| l > growth), "{text}");
    }

    #[test]
    fn a_memcg_the_kernel_keeps_says_why() {
        let mut snap = snapshot(sample(), 1);
        let mut gone = dying(9, "/gone", 0, 0, 2);
        gone.caches.clear();
        gone.kernel_memcg = Some(crate::api::KernelMemcgState {
            alive_in_kernel: true,
            charged_bytes: 1 << 20,
            reason: "tmpfs/shmem files still charged: /t/f".into(),
            ..Default::default()
        });
        snap.dying.push(gone);
        let mut app = app_of(snap);
        act(
            &mut app,
            &[
                Action::ToggleLayout,
                Action::ToggleDyingOnly,
                Action::DrillIn,
            ],
        );
        let s = screen(&mut app, 200, 12);
        let text = s.join("\n");
        assert!(
            s[4].contains("kernel memcg kept, 1.00 MiB charged"),
            "{text}"
        );
        assert!(
            s[4].contains("why tmpfs/shmem files still charged: /t/f"),
            "{text}"
        );
    }

    #[test]
    fn a_cgroup_that_went_away() {
        let mut app = app_with(sample());
        act(&mut app, &[Action::DrillIn]);
        app.update(snapshot(vec![], 2), std::time::Instant::now());
        let s = screen(&mut app, 80, 12);
        assert!(find(&s, "no longer reported").is_some(), "{}", s.join("\n"));
    }
}
