//! Drawing `kmemcg top`: a header, the cgroup table (or one cgroup's caches, or the help) and
//! a footer with the keys of the current mode. Generic over the ratatui backend, so tests
//! draw into a `TestBackend`. Only the lines on screen are formatted, whatever the number of
//! cgroups.
mod detail;
mod history;
mod table;

use ratatui::{
    Frame, Terminal,
    backend::Backend,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Cell, Paragraph, Wrap},
};

use super::{
    app::App,
    columns::figures,
    fmt, keys,
    view::{Layout as TableLayout, Mode},
};

/// Draws one frame.
pub(crate) fn draw<B: Backend>(terminal: &mut Terminal<B>, app: &mut App) -> Result<(), B::Error> {
    terminal.draw(|frame| render(frame, app))?;
    Ok(())
}

fn render(frame: &mut Frame, app: &mut App) {
    let [header, body, footer] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Min(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    match app.view().mode {
        // The help takes the header's room too: it is long.
        Mode::Help => render_help(frame, header.union(body)),
        Mode::Detail => {
            render_header(frame, header, app);
            detail::render(frame, body, app);
        }
        Mode::Table | Mode::Filter => {
            render_header(frame, header, app);
            table::render(frame, body, app);
        }
    }
    render_footer(frame, footer, app);
}

fn label(text: String) -> Span<'static> {
    Span::styled(text, Style::new().fg(Color::Cyan))
}

/// Reversed and bold, for table headings.
fn heading_style() -> Style {
    Style::new().add_modifier(Modifier::BOLD | Modifier::REVERSED)
}

fn right(text: &str) -> Cell<'static> {
    Cell::from(Line::from(text.to_string()).right_aligned())
}

fn render_header(frame: &mut Frame, area: Rect, app: &App) {
    let (settings, view, model) = (app.settings(), app.view(), app.model());
    let mut first = vec![
        Span::styled("kmemcg top", Style::new().bold()),
        Span::raw(format!(
            " · {} · up {} · every {} · {} cgroups",
            settings.source,
            fmt::duration(model.status().uptime_seconds),
            fmt::delay(settings.delay),
            model.rows().len(),
        )),
    ];
    if view.paused {
        first.push(Span::raw(" "));
        first.push(Span::styled(
            " PAUSED ",
            Style::new().reversed().fg(Color::Yellow),
        ));
    }
    let [slab, percpu, objects, growth, allocs, dropped, dying] = figures(model, view.exact);
    let mut second = Vec::new();
    for (i, f) in [slab, percpu, objects, growth, allocs]
        .into_iter()
        .enumerate()
    {
        let gap = if i == 0 { "" } else { "  " };
        second.push(label(format!("{gap}{} ", f.label)));
        second.push(Span::raw(f.value));
    }
    let third = if let Some(error) = app.error() {
        vec![Span::styled(
            error.to_string(),
            Style::new().fg(Color::Red).bold(),
        )]
    } else {
        let shape = &view.shape;
        let dropped_style = if dropped.alarming {
            Style::new().fg(Color::Red)
        } else {
            Style::new()
        };
        let mut v = vec![
            label(format!("{} ", dropped.label)),
            Span::styled(dropped.value, dropped_style),
            label(format!("  {} ", dying.label)),
            Span::raw(dying.value),
            label("  sort ".into()),
            Span::raw(format!(
                "{}{}",
                shape.sort.name(),
                if shape.descending { "▼" } else { "▲" }
            )),
            Span::raw(match shape.layout {
                TableLayout::Tree => "  tree",
                TableLayout::Flat => "  flat",
            }),
        ];
        // While it is typed, the filter is in the footer.
        if !shape.filter.is_empty() && view.mode != Mode::Filter {
            v.push(label("  filter ".into()));
            v.push(Span::raw(format!("\"{}\"", shape.filter)));
        }
        if shape.dying_only {
            v.push(Span::styled("  dying only", Style::new().fg(Color::Yellow)));
        }
        if let Some(notice) = &settings.notice {
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

fn render_help(frame: &mut Frame, area: Rect) {
    let help = keys::help_lines();
    let key_width = help
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let mut lines = vec![Line::from(Span::styled(
        "kmemcg top: keys",
        Style::new().bold(),
    ))];
    lines.extend(help.into_iter().map(|(keys, what)| {
        Line::from(vec![
            Span::styled(
                format!("  {keys:<key_width$}  "),
                Style::new().fg(Color::Cyan),
            ),
            Span::raw(what),
        ])
    }));
    lines.push(Line::from(
        "Sizes are slab and percpu bytes charged to each cgroup; in the tree a parent's \
         figures include its descendants' (its own are in its drill-in). ≥ marks figures that \
         may be short: allocations were dropped. Where the header says \"unaccounted ~\", one \
         unaccounted slab object in that many is tracked and stands for that many: figures of \
         caches without SLAB_ACCOUNT are estimates, the others exact. CHANGE/s and \
         ALLOCS/s compare the last two readings.",
    ));
    frame.render_widget(Paragraph::new(lines).wrap(Wrap { trim: false }), area);
}

fn render_footer(frame: &mut Frame, area: Rect, app: &App) {
    let view = app.view();
    let mut spans = Vec::new();
    if view.mode == Mode::Filter {
        spans.push(Span::styled("filter: ", Style::new().fg(Color::Cyan)));
        spans.push(Span::raw(view.shape.filter.clone()));
        spans.push(Span::styled("█ ", Style::new().fg(Color::Cyan)));
    }
    for (keys, word) in keys::footer(view.mode) {
        spans.push(Span::styled(keys, Style::new().reversed()));
        spans.push(Span::raw(format!(" {word} ")));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use ratatui::{Terminal, backend::TestBackend, buffer::Buffer};

    use super::*;
    use crate::tui::{
        app::App,
        keys::{Action, help_lines},
        testdata::{act, app_with, sample, settings, snapshot},
        view::ViewState,
    };

    pub(super) fn screen(app: &mut App, width: u16, height: u16) -> Vec<String> {
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

    pub(super) fn find(screen: &[String], needle: &str) -> Option<usize> {
        screen.iter().position(|l| l.contains(needle))
    }

    #[test]
    fn header_and_footer() {
        let mut app = app_with(sample());
        let s = screen(&mut app, 120, 20);
        let text = s.join("\n");
        assert!(s[0].starts_with("kmemcg top · agent test"), "{text}");
        assert!(
            s[0].contains("up 1h02m") && s[0].contains("5 cgroups"),
            "{text}"
        );
        assert!(
            s[1].starts_with("slab 82.0 KiB  percpu 8.11 KiB  objects 1234"),
            "{text}"
        );
        assert!(
            s[2].contains("dropped 0") && s[2].contains("dying 0") && s[2].contains("sort total▼"),
            "{text}"
        );
        assert!(
            s[19].starts_with("q quit ? help <> sort / filter"),
            "{text}"
        );
        act(&mut app, &[Action::TogglePause]);
        app.set_error("no agent".into());
        let s = screen(&mut app, 120, 20);
        assert!(
            s[0].contains("PAUSED") && s[2].contains("no agent"),
            "{}",
            s.join("\n")
        );
    }

    #[test]
    fn the_help_lists_every_line_of_the_key_table() {
        let mut app = app_with(sample());
        act(&mut app, &[Action::Help]);
        // The whole help fits an 80 by 24 terminal.
        let s = screen(&mut app, 80, 24);
        let text = s.join("\n");
        for (keys, what) in help_lines() {
            let shown = s.iter().any(|l| {
                l.starts_with(&format!("  {keys} ")) && l.trim_end().ends_with(&format!("  {what}"))
            });
            assert!(shown, "{keys}: {text}");
        }
        assert!(s[23].contains("any key back"), "{text}");
    }

    #[test]
    fn filtering_shows_the_prompt_and_matches() {
        let mut app = app_with(sample());
        act(&mut app, &[Action::ToggleLayout, Action::StartFilter]);
        for c in "user".chars() {
            app.apply(Action::FilterType, Some(c));
        }
        let s = screen(&mut app, 80, 10);
        let text = s.join("\n");
        assert!(
            s[9].contains("filter: user") && s[9].contains("Enter apply"),
            "{text}"
        );
        assert!(s[4].contains("/user.slice"), "{text}");
        assert!(find(&s, "foo.service").is_none(), "{text}");
        act(&mut app, &[Action::ApplyFilter]);
        let s = screen(&mut app, 80, 10);
        assert!(s[2].contains("filter \"user\""), "{}", s.join("\n"));
        act(&mut app, &[Action::StartFilter, Action::FilterErase]);
        for c in "nothing-like-this".chars() {
            app.apply(Action::FilterType, Some(c));
        }
        act(&mut app, &[Action::ApplyFilter]);
        let s = screen(&mut app, 80, 10);
        assert!(find(&s, "No cgroup matches").is_some(), "{}", s.join("\n"));
    }

    #[test]
    fn tiny_terminals_do_not_panic() {
        let mut app = app_with(sample());
        for (w, h) in [(1, 1), (10, 3), (20, 5), (0, 0)] {
            let _ = screen(&mut app, w, h);
            act(&mut app, &[Action::Help]);
            let _ = screen(&mut app, w, h);
            act(&mut app, &[Action::Back, Action::DrillIn]);
            let _ = screen(&mut app, w, h);
            act(&mut app, &[Action::Back]);
        }
    }

    #[test]
    fn waiting_and_empty() {
        let mut app = App::new(settings(), ViewState::default());
        assert!(find(&screen(&mut app, 80, 8), "Waiting").is_some());
        app.update(snapshot(sample(), 1), Instant::now());
        assert!(find(&screen(&mut app, 80, 8), "foo.service").is_some());
        let mut empty = app_with(vec![]);
        let s = screen(&mut empty, 80, 8);
        assert!(find(&s, "No cgroup has allocated").is_some());
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
        api::{CacheUsage, CgroupUsage, DyingCgroup},
        tui::{
            keys::Action,
            testdata::{settings, snapshot},
            view::ViewState,
        },
    };

    /// Pods of 100 cgroups under one slice; every 97th removed.
    fn snapshot_of(n: u64, round: u64) -> (Vec<CgroupUsage>, Vec<DyingCgroup>) {
        let (mut live, mut dying) = (Vec::new(), Vec::new());
        for i in 0..n {
            let (path, parent) = if i % 100 == 0 {
                (format!("/kubepods.slice/pod{:03}.slice", i / 100), None)
            } else {
                let pod = i / 100 * 100 + 2;
                let path = format!(
                    "/kubepods.slice/pod{:03}.slice/cri-{:04}.scope",
                    i / 100,
                    i % 100
                );
                (path, Some(pod))
            };
            let caches: Vec<CacheUsage> = (0..5)
                .map(|c| CacheUsage {
                    name: format!("kmalloc-{}", 8 << c),
                    bytes: (i * 7919 + c * 104_729 + round * 64) % (1 << 22),
                    objects: i + c,
                    ..Default::default()
                })
                .collect();
            let bytes = caches.iter().map(|c| c.bytes).sum();
            if i % 97 == 0 && i % 100 != 0 {
                dying.push(DyingCgroup {
                    id: i + 2,
                    path,
                    residual_bytes: bytes,
                    caches,
                    charged_ancestor_id: parent.unwrap_or(2),
                    ..Default::default()
                });
            } else {
                live.push(CgroupUsage {
                    id: i + 2,
                    path,
                    alive: true,
                    parent,
                    slab_bytes: bytes,
                    allocs: i * round,
                    caches,
                    ..Default::default()
                });
            }
        }
        (live, dying)
    }

    #[test]
    #[ignore = "a measurement to run by hand, in release"]
    fn ten_thousand_cgroups() {
        let mut terminal = Terminal::new(TestBackend::new(120, 40)).expect("terminal");
        let mut app = App::new(settings(), ViewState::default());
        let rounds = 20u64;
        let (mut parse, mut update, mut draw_time) =
            (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        let start = Instant::now();
        for round in 0..rounds {
            let (live, dying) = snapshot_of(10_000, round);
            let json = serde_json::to_vec(&live).expect("json");
            let t = Instant::now();
            let list: Vec<CgroupUsage> = serde_json::from_slice(&json).expect("parse");
            parse += t.elapsed();
            let mut snap = snapshot(list, round + 1);
            snap.dying = dying;
            let t = Instant::now();
            app.update(snap, start + Duration::from_secs(round + 1));
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
            app.apply(Action::SortRight, None);
        }
        println!("re-sort: {:.1} ms", per(t.elapsed()));
    }
}
