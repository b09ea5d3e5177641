//! The cgroup table: a tree or flat list, columns dropped on narrow terminals.
use ratatui::{
    Frame,
    layout::{Constraint, Rect},
    style::{Color, Modifier, Style},
    widgets::{Cell, Paragraph, Row as TableRow, Table},
};

use super::{heading_style, right};
use crate::tui::{
    app::App,
    columns::{Column, dying_mark},
    fmt,
    view::Layout,
};

/// The path column gets at least this much before other columns are dropped.
const MIN_PATH: u16 = 20;

pub(super) fn render(frame: &mut Frame, area: Rect, app: &mut App) {
    let height = area.height.saturating_sub(1) as usize;
    app.fit(height);
    let (view, model) = (app.view(), app.model());
    if app.lines().is_empty() {
        let text = if !model.received() {
            "Waiting for data…"
        } else if model.rows().is_empty() {
            "No cgroup has allocated tracked kernel memory since kmemcg started."
        } else {
            "No cgroup matches the filter (Esc clears it)."
        };
        frame.render_widget(Paragraph::new(text), area);
        return;
    }
    let exact = view.exact;
    let subtree = view.shape.layout == Layout::Tree;
    let offset = view.cursor.offset;
    let visible = &app.lines()[offset..(offset + height).min(app.lines().len())];
    // Cells of the other columns, formatted once for both widths and drawing.
    let cells: Vec<Vec<String>> = visible
        .iter()
        .filter_map(|l| app.row(l))
        .map(|row| {
            Column::ALL
                .iter()
                .map(|c| match c {
                    Column::Path => String::new(),
                    c => c.cell(row, exact, subtree),
                })
                .collect()
        })
        .collect();
    let width_of = |col: Column| -> u16 {
        if col == Column::Path {
            return 0;
        }
        let i = Column::ALL.iter().position(|c| *c == col).unwrap_or(0);
        let widest = cells
            .iter()
            .map(|r| r[i].chars().count())
            .max()
            .unwrap_or(0);
        let w = widest
            .max(col.title().chars().count() + 1)
            .min(col.max_width());
        u16::try_from(w).unwrap_or(u16::MAX)
    };
    let path_width = |cols: &[Column]| -> i32 {
        let fixed: i32 = cols.iter().map(|c| i32::from(width_of(*c))).sum();
        i32::from(area.width) - fixed - (cols.len() as i32 - 1)
    };
    let mut cols = Column::ALL.to_vec();
    for drop in Column::DROP_ORDER {
        if path_width(&cols) >= i32::from(MIN_PATH) {
            break;
        }
        cols.retain(|c| *c != drop);
    }
    let path_w = path_width(&cols).max(1) as usize;

    let shape = &view.shape;
    let header = TableRow::new(cols.iter().map(|c| {
        let title = c.heading(shape.sort, shape.descending);
        if c.numeric() {
            right(&title)
        } else {
            Cell::from(title)
        }
    }))
    .style(heading_style());

    let rows = visible
        .iter()
        .zip(&cells)
        .enumerate()
        .filter_map(|(i, (line, texts))| {
            let row = app.row(line)?;
            let mut name = String::new();
            let label = match shape.layout {
                Layout::Tree => {
                    // Deep trees on narrow terminals: keep some room for the name.
                    let depth = line.depth.min(path_w.saturating_sub(8) / 2);
                    name.push_str(&"  ".repeat(depth));
                    name.push_str(match (line.has_children, line.collapsed) {
                        (true, true) => "▸ ",
                        (true, false) => "▾ ",
                        _ => "  ",
                    });
                    model.tree_label(line.row)
                }
                Layout::Flat => row.cgroup.path(),
            };
            let dying = row.cgroup.is_dying();
            let suffix = if dying {
                dying_mark(row.cgroup.id())
            } else {
                String::new()
            };
            let room = path_w.saturating_sub(name.chars().count() + suffix.chars().count());
            name.push_str(&fmt::keep_end(label, room));
            name.push_str(&suffix);
            let drawn = cols.iter().map(|c| {
                let at = Column::ALL.iter().position(|x| x == c).unwrap_or(0);
                match c {
                    Column::Path => Cell::from(name.clone()),
                    c if c.numeric() => right(&texts[at]),
                    _ => Cell::from(texts[at].clone()),
                }
            });
            let mut style = Style::new();
            if dying {
                style = style.fg(Color::Red);
            }
            if offset + i == view.cursor.selected {
                style = style.add_modifier(Modifier::REVERSED);
            }
            Some(TableRow::new(drawn).style(style))
        });
    let widths: Vec<Constraint> = cols
        .iter()
        .map(|c| match c {
            Column::Path => Constraint::Fill(1),
            c => Constraint::Length(width_of(*c)),
        })
        .collect();
    let table = Table::new(rows, widths).header(header).column_spacing(1);
    frame.render_widget(table, area);
}

#[cfg(test)]
mod tests {
    use super::super::tests::{find, screen};
    use crate::tui::{
        keys::Action,
        testdata::{act, app_of, app_with, cg, dying, sample, snapshot},
        view::SortKey,
    };

    #[test]
    fn layout_at_120_columns() {
        let mut app = app_with(sample());
        let s = screen(&mut app, 120, 20);
        let text = s.join("\n");
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
    }

    #[test]
    fn sorting_and_flat_view() {
        let mut app = app_with(sample());
        act(
            &mut app,
            &[Action::ToggleLayout, Action::SortBy(SortKey::Percpu)],
        );
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
    fn narrow_terminals_drop_columns_but_keep_path_and_total() {
        let mut cgroups = sample();
        let mut long = cg(
            9,
            "/system.slice/a-rather-long-unit-name-for-testing.service",
            1 << 20,
            0,
            1,
        );
        long.parent = Some(2);
        cgroups.push(long);
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
    fn dying_paused_and_scrolled() {
        let cgroups: Vec<_> = (0..40)
            .map(|i| cg(i + 10, &format!("/c{i:02}"), (i + 1) * 1000, 0, 0))
            .collect();
        let mut snap = snapshot(cgroups, 100);
        snap.dying.push(dying(9, "/gone", 500, 0, 10));
        let mut app = app_of(snap);
        act(
            &mut app,
            &[Action::ToggleLayout, Action::TogglePause, Action::Last],
        );
        let s = screen(&mut app, 80, 12);
        let text = s.join("\n");
        assert!(s[0].contains("PAUSED"), "{text}");
        assert!(s[2].contains("dying 1 (500 B)"), "{text}");
        assert!(s[10].contains("/gone (dying)"), "{text}");
        // In the tree, under the ancestor it is charged to, by the name below it.
        act(
            &mut app,
            &[Action::ToggleLayout, Action::SortBy(SortKey::Path)],
        );
        let s = screen(&mut app, 80, 60);
        let gone = find(&s, "gone (dying)").expect("dying line");
        assert!(s[gone - 1].contains("▾ /c00"), "{}", s.join("\n"));
        assert!(s[gone].contains("    /gone (dying)"), "{}", s.join("\n"));
    }
}
