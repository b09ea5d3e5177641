//! Drawing `kmemcg top`: header, cgroup table (or one cgroup's caches, or the help) and a
//! footer with the keys of the current mode. Generic over the ratatui backend, so tests draw
//! into a `TestBackend`. Only the rows on screen are formatted, whatever the number of cgroups.
use ratatui::{
    Frame, Terminal,
    backend::Backend,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Cell, Paragraph, Row as TableRow, Table},
};

use super::{
    app::{App, CacheSort, Mode, SortKey, View},
    fmt,
    input::HELP,
};

/// Draws one frame.
pub fn draw<B: Backend>(terminal: &mut Terminal<B>, app: &mut App) -> Result<(), B::Error> {
    terminal.draw(|frame| render(frame, app))?;
    Ok(())
}

pub fn render(frame: &mut Frame, app: &mut App) {
    let [header, body, footer] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Min(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    render_header(frame, header, app);
    match app.mode {
        Mode::Help => render_help(frame, body),
        Mode::Detail => render_detail(frame, body, app),
        Mode::Table | Mode::Filter => render_table(frame, body, app),
    }
    render_footer(frame, footer, app);
}

fn label(text: &str) -> Span<'_> {
    Span::styled(text, Style::new().fg(Color::Cyan))
}

fn render_header(frame: &mut Frame, area: Rect, app: &App) {
    let s = app.status();
    let t = app.totals();
    let mut first = vec![
        Span::styled("kmemcg top", Style::new().bold()),
        Span::raw(format!(
            " · {} · up {} · every {} · {} cgroups",
            app.source,
            fmt::duration(s.uptime_seconds),
            fmt::delay(app.delay),
            app.entries().len(),
        )),
    ];
    if app.paused {
        first.push(Span::raw(" "));
        first.push(Span::styled(
            " PAUSED ",
            Style::new().reversed().fg(Color::Yellow),
        ));
    }
    let exact = app.exact;
    let second = vec![
        label("slab "),
        Span::raw(fmt::size(t.slab, exact)),
        label("  percpu "),
        Span::raw(fmt::size(t.percpu, exact)),
        label("  objects "),
        Span::raw(fmt::count(s.tracked_objects as f64, exact)),
        label("  growth "),
        Span::raw(format!("{}/s", fmt::byte_rate(t.change, exact))),
        label("  allocs "),
        Span::raw(format!("{}/s", fmt::count_rate(t.alloc_rate, exact))),
    ];
    let third = if let Some(error) = &app.error {
        vec![Span::styled(
            error.clone(),
            Style::new().fg(Color::Red).bold(),
        )]
    } else {
        let mut v = vec![
            label("dropped "),
            if s.dropped > 0 {
                Span::styled(s.dropped.to_string(), Style::new().fg(Color::Red))
            } else {
                Span::raw("0")
            },
            label("  dying "),
            Span::raw(format!("{} ({})", t.dying, fmt::size(t.dying_bytes, exact))),
            label("  sort "),
            Span::raw(format!(
                "{}{}",
                app.sort.name(),
                if app.descending { "▼" } else { "▲" }
            )),
            Span::raw(match app.view {
                View::Tree => "  tree",
                View::Flat => "  flat",
            }),
        ];
        if !app.filter.is_empty() {
            v.push(label("  filter "));
            v.push(Span::raw(format!("\"{}\"", app.filter)));
        }
        if app.dying_only {
            v.push(Span::styled("  dying only", Style::new().fg(Color::Yellow)));
        }
        if let Some(notice) = &app.notice {
            v.push(Span::styled(
                format!("  {notice}"),
                Style::new().fg(Color::Yellow),
            ));
        }
        v
    };
    let lines = vec![Line::from(first), Line::from(second), Line::from(third)];
    frame.render_widget(Paragraph::new(lines), area);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Col {
    Path,
    Slab,
    Percpu,
    Total,
    Change,
    Allocs,
    TopCache,
}

impl Col {
    fn title(self) -> &'static str {
        match self {
            Col::Path => "CGROUP",
            Col::Slab => "SLAB",
            Col::Percpu => "PERCPU",
            Col::Total => "TOTAL",
            Col::Change => "CHANGE/s",
            Col::Allocs => "ALLOCS/s",
            Col::TopCache => "TOP CACHE",
        }
    }

    fn sort_key(self) -> Option<SortKey> {
        match self {
            Col::Path => Some(SortKey::Path),
            Col::Slab => Some(SortKey::Slab),
            Col::Percpu => Some(SortKey::Percpu),
            Col::Total => Some(SortKey::Total),
            Col::Change => Some(SortKey::Change),
            Col::Allocs => Some(SortKey::Allocs),
            Col::TopCache => None,
        }
    }
}

/// Dropped first when the terminal is narrow; the path and TOTAL always stay.
const DROP_ORDER: [Col; 5] = [
    Col::TopCache,
    Col::Allocs,
    Col::Percpu,
    Col::Slab,
    Col::Change,
];
/// The path column gets at least this much before other columns are dropped.
const MIN_PATH: u16 = 20;

fn render_table(frame: &mut Frame, area: Rect, app: &mut App) {
    let height = area.height.saturating_sub(1) as usize;
    app.scroll_into_view(height);
    if app.rows().is_empty() {
        let text = if !app.received() {
            "Waiting for data…".to_string()
        } else if app.entries().is_empty() {
            "No cgroup has allocated tracked kernel memory since kmemcg started.".to_string()
        } else {
            "No cgroup matches the filter (Esc clears it).".to_string()
        };
        frame.render_widget(Paragraph::new(text), area);
        return;
    }
    let exact = app.exact;
    let visible = &app.rows()[app.offset..(app.offset + height).min(app.rows().len())];
    // Cells of the numeric columns, formatted once for both widths and drawing.
    let numbers: Vec<[String; 6]> = visible
        .iter()
        .filter_map(|r| app.entry(r))
        .map(|e| {
            let u = &e.usage;
            [
                fmt::size(u.slab_bytes, exact),
                fmt::size(u.percpu_bytes, exact),
                fmt::size(u.total_bytes(), exact),
                fmt::byte_rate(e.change, exact),
                fmt::count_rate(e.alloc_rate, exact),
                top_cache(u).to_string(),
            ]
        })
        .collect();
    let mut cols = vec![
        Col::Path,
        Col::Slab,
        Col::Percpu,
        Col::Total,
        Col::Change,
        Col::Allocs,
        Col::TopCache,
    ];
    let width_of = |col: Col| -> u16 {
        let i = match col {
            Col::Path => return 0,
            Col::Slab => 0,
            Col::Percpu => 1,
            Col::Total => 2,
            Col::Change => 3,
            Col::Allocs => 4,
            Col::TopCache => 5,
        };
        let cells = numbers
            .iter()
            .map(|n| n[i].chars().count())
            .max()
            .unwrap_or(0);
        let w = cells.max(col.title().chars().count() + 1);
        let w = if col == Col::TopCache { w.min(18) } else { w };
        w as u16
    };
    let path_width = |cols: &[Col]| -> i32 {
        let fixed: i32 = cols.iter().map(|c| i32::from(width_of(*c))).sum();
        i32::from(area.width) - fixed - (cols.len() as i32 - 1)
    };
    for drop in DROP_ORDER {
        if path_width(&cols) >= i32::from(MIN_PATH) {
            break;
        }
        cols.retain(|c| *c != drop);
    }
    let path_w = path_width(&cols).max(1) as usize;

    let header = TableRow::new(cols.iter().map(|c| {
        let title = format!("{}{}", c.title(), sort_mark(app, *c));
        if *c == Col::Path || *c == Col::TopCache {
            Cell::from(title)
        } else {
            right(&title)
        }
    }))
    .style(Style::new().add_modifier(Modifier::BOLD | Modifier::REVERSED));

    let rows = visible
        .iter()
        .zip(&numbers)
        .enumerate()
        .filter_map(|(i, (row, n))| {
            let e = app.entry(row)?;
            let mut name = String::new();
            if app.view == View::Tree {
                // Deep trees on narrow terminals: keep some room for the name.
                let depth = row.depth.min(path_w.saturating_sub(8) / 2);
                name.push_str(&"  ".repeat(depth));
                name.push_str(match (row.has_children, row.collapsed) {
                    (true, true) => "▸ ",
                    (true, false) => "▾ ",
                    _ => "  ",
                });
            }
            let prefix_len = name.chars().count();
            let mut label = e
                .usage
                .path
                .get(row.label_start..)
                .unwrap_or_default()
                .to_string();
            if label.is_empty() {
                label = e.usage.path.clone();
            }
            let suffix = if e.dying() { " (dying)" } else { "" };
            let room = path_w.saturating_sub(prefix_len + suffix.len());
            name.push_str(&fmt::keep_end(&label, room));
            name.push_str(suffix);
            let cells = cols.iter().map(|c| match c {
                Col::Path => Cell::from(name.clone()),
                Col::Slab => right(&n[0]),
                Col::Percpu => right(&n[1]),
                Col::Total => right(&n[2]),
                Col::Change => right(&n[3]),
                Col::Allocs => right(&n[4]),
                Col::TopCache => Cell::from(n[5].clone()),
            });
            let mut style = Style::new();
            if e.dying() {
                style = style.fg(Color::Red);
            }
            if app.offset + i == app.selected {
                style = style.add_modifier(Modifier::REVERSED);
            }
            Some(TableRow::new(cells).style(style))
        });
    let widths: Vec<Constraint> = cols
        .iter()
        .map(|c| match c {
            Col::Path => Constraint::Fill(1),
            c => Constraint::Length(width_of(*c)),
        })
        .collect();
    let table = Table::new(rows, widths).header(header).column_spacing(1);
    frame.render_widget(table, area);
}

fn sort_mark(app: &App, col: Col) -> &'static str {
    match (col.sort_key() == Some(app.sort), app.descending) {
        (false, _) => "",
        (true, true) => "▼",
        (true, false) => "▲",
    }
}

/// The cache holding the most bytes, `-` when none holds any.
pub fn top_cache(usage: &crate::api::CgroupUsage) -> &str {
    usage
        .top_cache()
        .filter(|c| c.bytes > 0)
        .map_or("-", |c| c.name.as_str())
}

fn right(text: &str) -> Cell<'static> {
    Cell::from(Line::from(text.to_string()).right_aligned())
}

fn render_detail(frame: &mut Frame, area: Rect, app: &mut App) {
    let exact = app.exact;
    let [info, table_area] =
        Layout::vertical([Constraint::Length(2), Constraint::Min(1)]).areas(area);
    let path = app
        .detail
        .as_ref()
        .map(|d| d.path.clone())
        .unwrap_or_default();
    let Some(e) = app.detail_entry() else {
        let text = vec![
            Line::from(Span::styled(path, Style::new().bold())),
            Line::from("This cgroup is no longer reported (Esc goes back)."),
        ];
        frame.render_widget(Paragraph::new(text), area);
        return;
    };
    let u = &e.usage;
    let mut title = vec![Span::styled(u.path.clone(), Style::new().bold())];
    if e.dying() {
        title.push(Span::styled(" (dying)", Style::new().fg(Color::Red)));
    }
    let facts = Line::from(vec![
        label("slab "),
        Span::raw(format!(
            "{} ({} obj)",
            fmt::size(u.slab_bytes, exact),
            u.slab_objects
        )),
        label("  percpu "),
        Span::raw(fmt::size(u.percpu_bytes, exact)),
        label("  total "),
        Span::raw(fmt::size(u.total_bytes(), exact)),
        label("  change "),
        Span::raw(format!("{}/s", fmt::byte_rate(e.change, exact))),
        label("  allocs "),
        Span::raw(format!("{}/s", fmt::count_rate(e.alloc_rate, exact))),
        label("  accounted "),
        Span::raw(fmt::size(u.accounted_bytes, exact)),
        label("  unaccounted "),
        Span::raw(fmt::size(u.unaccounted_bytes, exact)),
    ]);
    frame.render_widget(Paragraph::new(vec![Line::from(title), facts]), info);

    let height = table_area.height.saturating_sub(1) as usize;
    app.scroll_into_view(height);
    let (selected, offset) = app
        .detail
        .as_ref()
        .map_or((0, 0), |d| (d.selected, d.offset));
    let rows = app.detail_rows();
    if rows.is_empty() {
        frame.render_widget(Paragraph::new("No caches."), table_area);
        return;
    }
    let shown: Vec<[String; 5]> = rows
        .iter()
        .skip(offset)
        .take(height)
        .map(|r| {
            [
                r.cache.name.clone(),
                fmt::count(r.cache.objects as f64, exact),
                fmt::size(r.cache.bytes, exact),
                format!("{:.1}%", r.share * 100.0),
                fmt::byte_rate(r.change, exact),
            ]
        })
        .collect();
    let mark = |sort: CacheSort, title: &str| {
        let ordered = app.cache_sort == sort;
        match (ordered, sort) {
            (false, _) => title.to_string(),
            (true, CacheSort::Name) => format!("{title}▲"),
            (true, _) => format!("{title}▼"),
        }
    };
    let titles = [
        mark(CacheSort::Name, "CACHE"),
        mark(CacheSort::Objects, "OBJECTS"),
        mark(CacheSort::Bytes, "BYTES"),
        "SHARE".to_string(),
        mark(CacheSort::Change, "CHANGE/s"),
    ];
    let widths: Vec<Constraint> = (0..5)
        .map(|i| {
            let w = shown
                .iter()
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
                .max(titles[i].chars().count()) as u16;
            if i == 0 {
                Constraint::Length(w.min(40))
            } else {
                Constraint::Length(w)
            }
        })
        .collect();
    let header = TableRow::new(titles.iter().enumerate().map(|(i, t)| {
        if i == 0 {
            Cell::from(t.clone())
        } else {
            right(t)
        }
    }))
    .style(Style::new().add_modifier(Modifier::BOLD | Modifier::REVERSED));
    let lines = shown.iter().enumerate().map(|(i, r)| {
        let style = if offset + i == selected {
            Style::new().add_modifier(Modifier::REVERSED)
        } else {
            Style::new()
        };
        TableRow::new([
            Cell::from(r[0].clone()),
            right(&r[1]),
            right(&r[2]),
            right(&r[3]),
            right(&r[4]),
        ])
        .style(style)
    });
    let table = Table::new(lines, widths).header(header).column_spacing(2);
    frame.render_widget(table, table_area);
}

fn render_help(frame: &mut Frame, area: Rect) {
    let key_width = HELP.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut lines = vec![
        Line::from(Span::styled("kmemcg top: keys", Style::new().bold())),
        Line::from(""),
    ];
    lines.extend(HELP.iter().map(|(keys, what)| {
        Line::from(vec![
            Span::styled(
                format!("  {keys:<key_width$}  "),
                Style::new().fg(Color::Cyan),
            ),
            Span::raw(*what),
        ])
    }));
    lines.push(Line::from(""));
    lines.push(Line::from(
        "Sizes are slab and percpu bytes charged to each cgroup since kmemcg started; \
         CHANGE/s and ALLOCS/s compare the last two readings.",
    ));
    frame.render_widget(
        Paragraph::new(lines).wrap(ratatui::widgets::Wrap { trim: false }),
        area,
    );
}

fn render_footer(frame: &mut Frame, area: Rect, app: &App) {
    let hints: &[(&str, &str)] = match app.mode {
        Mode::Table => &[
            ("q", "quit"),
            ("?", "help"),
            ("/", "filter"),
            ("Enter", "caches"),
            ("<>", "sort"),
            ("t", "tree"),
            ("p", "pause"),
            ("d", "dying"),
            ("b", "bytes"),
        ],
        Mode::Detail => &[
            ("Esc", "back"),
            ("↑↓", "move"),
            ("<>", "sort"),
            ("p", "pause"),
            ("b", "bytes"),
            ("?", "help"),
            ("q", "quit"),
        ],
        Mode::Help => &[("any key", "back")],
        Mode::Filter => &[],
    };
    let line = if app.mode == Mode::Filter {
        Line::from(vec![
            Span::styled("filter: ", Style::new().fg(Color::Cyan)),
            Span::raw(app.filter_input.clone()),
            Span::styled("█", Style::new().fg(Color::Cyan)),
            Span::raw("  Enter apply  Esc clear"),
        ])
    } else {
        let mut spans = Vec::new();
        for (key, what) in hints {
            spans.push(Span::styled(*key, Style::new().reversed()));
            spans.push(Span::raw(format!(" {what} ")));
        }
        Line::from(spans)
    };
    frame.render_widget(Paragraph::new(line), area);
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use ratatui::{Terminal, backend::TestBackend, buffer::Buffer};

    use super::*;
    use crate::tui::app::tests::{app_with, cg, sample, snapshot};

    fn screen(app: &mut App, width: u16, height: u16) -> Vec<String> {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("test terminal");
        draw(&mut terminal, app).expect("drawing");
        lines(terminal.backend().buffer())
    }

    fn lines(buffer: &Buffer) -> Vec<String> {
        let width = (buffer.area.width as usize).max(1);
        buffer
            .content()
            .chunks(width)
            .map(|row| row.iter().map(|c| c.symbol()).collect::<String>())
            .collect()
    }

    fn find(screen: &[String], needle: &str) -> Option<usize> {
        screen.iter().position(|l| l.contains(needle))
    }

    #[test]
    fn layout_at_120_columns() {
        let mut app = app_with(sample());
        let s = screen(&mut app, 120, 20);
        let text = s.join("\n");
        assert!(s[0].starts_with("kmemcg top"), "{text}");
        assert!(s[0].contains("up 1h02m"), "{text}");
        assert!(s[1].contains("slab") && s[1].contains("percpu"), "{text}");
        assert!(
            s[2].contains("dropped 0") && s[2].contains("dying 0"),
            "{text}"
        );
        for title in [
            "CGROUP",
            "SLAB",
            "PERCPU",
            "TOTAL▼",
            "CHANGE/s",
            "ALLOCS/s",
            "TOP CACHE",
        ] {
            assert!(s[3].contains(title), "{title}: {text}");
        }
        // Tree view: children indented under their parent, the largest subtree first.
        assert!(s[4].contains("▾ /"), "{text}");
        let foo = find(&s, "foo.service").expect("foo row");
        let user = find(&s, "user.slice").expect("user row");
        assert!(foo < user, "{text}");
        assert!(s[foo].contains("      foo.service"), "{text}");
        assert!(s[foo].contains("48.8 KiB"), "{text}");
        assert!(s[foo].contains("dentry"), "{text}");
        assert!(s[19].contains("quit") && s[19].contains("help"), "{text}");
    }

    #[test]
    fn sorting_and_flat_view() {
        let mut app = app_with(sample());
        app.toggle_view();
        app.sort_by(SortKey::Percpu);
        let s = screen(&mut app, 100, 12);
        let text = s.join("\n");
        assert!(s[3].contains("PERCPU▼"), "{text}");
        assert!(s[4].contains("/system.slice/bar.service"), "{text}");
        assert!(
            s[2].contains("sort percpu▼") && s[2].contains("flat"),
            "{text}"
        );
    }

    #[test]
    fn filtering_shows_the_prompt_and_matches() {
        let mut app = app_with(sample());
        app.toggle_view();
        app.start_filter();
        for c in "user".chars() {
            app.filter_push(c);
        }
        let s = screen(&mut app, 80, 10);
        let text = s.join("\n");
        assert!(s[9].contains("filter: user"), "{text}");
        assert!(s[4].contains("/user.slice"), "{text}");
        assert!(find(&s, "foo.service").is_none(), "{text}");
        app.apply_filter();
        let s = screen(&mut app, 80, 10);
        assert!(s[2].contains("filter \"user\""), "{}", s.join("\n"));
        app.start_filter();
        app.filter_input = "nothing-like-this".into();
        app.apply_filter();
        let s = screen(&mut app, 80, 10);
        assert!(find(&s, "No cgroup matches").is_some(), "{}", s.join("\n"));
    }

    #[test]
    fn drill_in_shows_caches() {
        let mut app = app_with(sample());
        app.toggle_view();
        app.select_first();
        app.drill_in();
        let s = screen(&mut app, 80, 12);
        let text = s.join("\n");
        assert!(s[3].contains("/system.slice/foo.service"), "{text}");
        assert!(s[4].contains("slab 48.8 KiB"), "{text}");
        for title in ["CACHE", "OBJECTS", "BYTES", "SHARE", "CHANGE/s"] {
            assert!(s[5].contains(title), "{title}: {text}");
        }
        assert!(s[6].contains("dentry") && s[6].contains("99.6%"), "{text}");
        assert!(s[7].contains("percpu"), "{text}");
        assert!(s[11].contains("Esc") && s[11].contains("back"), "{text}");
        // `<` sorts the caches by objects, then by name.
        app.cache_sort_shift(-1);
        let s = screen(&mut app, 80, 12);
        assert!(s[5].contains("OBJECTS▼"), "{}", s.join("\n"));
        app.cache_sort_shift(-1);
        let s = screen(&mut app, 80, 12);
        assert!(s[5].contains("CACHE▲"), "{}", s.join("\n"));
        assert!(
            s[6].contains("dentry") && s[7].contains("percpu"),
            "{}",
            s.join("\n")
        );
    }

    #[test]
    fn narrow_terminals_drop_columns_but_keep_path_and_total() {
        let mut cgroups = sample();
        cgroups.push(cg(
            9,
            "/system.slice/a-rather-long-unit-name-for-testing.service",
            1 << 20,
            0,
            1,
        ));
        let mut app = app_with(cgroups);
        for width in [80u16, 60, 40, 30] {
            let s = screen(&mut app, width, 14);
            let text = s.join("\n");
            assert!(
                s[3].contains("CGROUP") && s[3].contains("TOTAL"),
                "{width}: {text}"
            );
            assert!(find(&s, "esting.service").is_some(), "{width}: {text}");
            assert!(s.iter().all(|l| l.chars().count() == width as usize));
        }
        let s = screen(&mut app, 80, 14);
        assert!(s[3].contains("ALLOCS/s"), "{}", s.join("\n"));
        let s = screen(&mut app, 40, 14);
        assert!(!s[3].contains("TOP CACHE"), "{}", s.join("\n"));
    }

    #[test]
    fn tiny_terminals_do_not_panic() {
        let mut app = app_with(sample());
        for (w, h) in [(1, 1), (10, 3), (20, 5), (0, 0)] {
            for mode in [Mode::Table, Mode::Help] {
                app.mode = mode;
                let _ = screen(&mut app, w, h);
            }
            app.mode = Mode::Table;
            app.drill_in();
            let _ = screen(&mut app, w, h);
            app.back();
        }
    }

    #[test]
    fn help_lists_keys() {
        let mut app = app_with(sample());
        app.show_help();
        let text = screen(&mut app, 80, 30).join("\n");
        for key in ["Enter", "Esc/Backspace", "PgUp/PgDn", "q Ctrl-C", "/"] {
            assert!(text.contains(key), "{key}: {text}");
        }
    }

    #[test]
    fn dying_paused_and_scrolled() {
        let mut cgroups: Vec<_> = (0..40)
            .map(|i| cg(i + 10, &format!("/c{i:02}"), (i + 1) * 1000, 0, 0))
            .collect();
        cgroups[0].alive = false;
        let mut app = app_with(cgroups);
        app.toggle_view();
        app.toggle_pause();
        app.select_last();
        let s = screen(&mut app, 80, 12);
        let text = s.join("\n");
        assert!(s[0].contains("PAUSED"), "{text}");
        assert!(s[2].contains("dying 1"), "{text}");
        assert!(s[10].contains("/c00 (dying)"), "{text}");
        let mut app2 = app_with(vec![]);
        let s = screen(&mut app2, 80, 8);
        assert!(find(&s, "No cgroup has allocated").is_some());
        let mut app3 = App::default();
        assert!(find(&screen(&mut app3, 80, 8), "Waiting").is_some());
        app3.update(snapshot(sample(), 1), Instant::now());
        assert!(find(&screen(&mut app3, 80, 8), "foo.service").is_some());
    }
}

/// A measurement, not an assertion: `cargo test --release -p kmemcg-agent --lib -- --ignored
/// --nocapture ten_thousand` prints what one refresh with 10,000 cgroups costs.
#[cfg(test)]
mod measure {
    use std::time::{Duration, Instant};

    use ratatui::{Terminal, backend::TestBackend};

    use super::*;
    use crate::{
        api::{CacheUsage, CgroupUsage},
        tui::app::tests::snapshot,
    };

    fn cgroups(n: u64, round: u64) -> Vec<CgroupUsage> {
        (0..n)
            .map(|i| {
                let path = if i % 100 == 0 {
                    format!("/kubepods.slice/pod{:03}.slice", i / 100)
                } else {
                    format!(
                        "/kubepods.slice/pod{:03}.slice/cri-{:04}.scope",
                        i / 100,
                        i % 100
                    )
                };
                let caches: Vec<CacheUsage> = (0..5)
                    .map(|c| CacheUsage {
                        name: format!("kmalloc-{}", 8 << c),
                        bytes: (i * 7919 + c * 104_729 + round * 64) % (1 << 22),
                        objects: i + c,
                        ..Default::default()
                    })
                    .collect();
                CgroupUsage {
                    id: i + 2,
                    path,
                    alive: i % 97 != 0,
                    slab_bytes: caches.iter().map(|c| c.bytes).sum(),
                    allocs: i * round,
                    caches,
                    ..Default::default()
                }
            })
            .collect()
    }

    #[test]
    #[ignore = "a measurement to run by hand, in release"]
    fn ten_thousand_cgroups() {
        let mut terminal = Terminal::new(TestBackend::new(120, 40)).expect("terminal");
        let mut app = App::default();
        let rounds = 20u64;
        let (mut parse, mut update, mut draw_time) =
            (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        let start = Instant::now();
        for round in 0..rounds {
            let json = serde_json::to_vec(&cgroups(10_000, round)).expect("json");
            let t = Instant::now();
            let list: Vec<CgroupUsage> = serde_json::from_slice(&json).expect("parse");
            parse += t.elapsed();
            let t = Instant::now();
            app.update(
                snapshot(list, round + 1),
                start + Duration::from_secs(round + 1),
            );
            update += t.elapsed();
            let t = Instant::now();
            draw(&mut terminal, &mut app).expect("draw");
            draw_time += t.elapsed();
        }
        let per = |d: Duration| d.as_secs_f64() * 1000.0 / rounds as f64;
        println!(
            "10,000 cgroups, per refresh: JSON parse {:.1} ms, update {:.1} ms, draw {:.2} ms",
            per(parse),
            per(update),
            per(draw_time)
        );
        // Keys re-sort and re-filter without new data.
        let t = Instant::now();
        for _ in 0..rounds {
            app.sort_next();
        }
        println!("re-sort: {:.1} ms", per(t.elapsed()));
    }
}
