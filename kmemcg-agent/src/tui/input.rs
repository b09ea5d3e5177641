//! Keys of `kmemcg top`, per mode. The help screen and the footer list the same keys.
use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::app::{App, Mode, SortKey};

/// What the event loop does after a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Continue,
    Quit,
}

/// Key reference: (keys, what they do), shown by `?`.
pub const HELP: &[(&str, &str)] = &[
    ("Up/Down j/k", "move the selection"),
    (
        "PgUp/PgDn Home/End",
        "move by a page, to the first or last line",
    ),
    (
        "< >",
        "sort by the column to the left or right (also in the caches)",
    ),
    (
        "P S C M G A",
        "sort by path, slab, percpu, total, change/s, allocs/s",
    ),
    ("r", "reverse the sort order (or press a column key again)"),
    ("/", "filter by path: type, Enter applies, Esc clears"),
    ("Esc", "clear the filter"),
    ("Enter", "drill into the selected cgroup's caches"),
    ("Esc/Backspace", "back from the caches to the table"),
    ("t", "tree or flat view"),
    (
        "Left/Right Space",
        "collapse, expand or toggle a subtree (tree view)",
    ),
    ("d", "list only dying (removed) cgroups, or all again"),
    ("b", "exact byte counts or IEC sizes"),
    ("p", "pause or resume updates"),
    ("?", "this help; any key closes it"),
    ("q Ctrl-C", "quit"),
];

/// Applies one key to the app.
pub fn handle_key(app: &mut App, key: KeyEvent) -> Outcome {
    if key.kind == KeyEventKind::Release {
        return Outcome::Continue;
    }
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    if ctrl && matches!(key.code, KeyCode::Char('c') | KeyCode::Char('d')) {
        return Outcome::Quit;
    }
    match app.mode {
        Mode::Help => app.back(),
        Mode::Filter => match key.code {
            KeyCode::Enter => app.apply_filter(),
            KeyCode::Esc => app.clear_filter(),
            KeyCode::Backspace => app.filter_pop(),
            KeyCode::Char('u') if ctrl => {
                app.filter_input.clear();
                app.rebuild();
            }
            KeyCode::Char(c) if !ctrl => app.filter_push(c),
            _ => {}
        },
        Mode::Detail => match key.code {
            KeyCode::Char('q') => return Outcome::Quit,
            KeyCode::Esc | KeyCode::Backspace | KeyCode::Left | KeyCode::Char('h') => app.back(),
            KeyCode::Char('?') | KeyCode::F(1) => app.show_help(),
            KeyCode::Char('p') => app.toggle_pause(),
            KeyCode::Char('b') => app.toggle_exact(),
            KeyCode::Char('<') | KeyCode::Char(',') => app.cache_sort_shift(-1),
            KeyCode::Char('>') | KeyCode::Char('.') => app.cache_sort_shift(1),
            _ => navigate(app, key.code),
        },
        Mode::Table => match key.code {
            KeyCode::Char('q') => return Outcome::Quit,
            KeyCode::Char('?') | KeyCode::F(1) => app.show_help(),
            KeyCode::Enter => app.drill_in(),
            KeyCode::Char('/') => app.start_filter(),
            KeyCode::Esc => {
                if !app.filter.is_empty() {
                    app.clear_filter();
                } else if app.dying_only {
                    app.toggle_dying_only();
                }
            }
            KeyCode::Char('<') | KeyCode::Char(',') => app.sort_prev(),
            KeyCode::Char('>') | KeyCode::Char('.') => app.sort_next(),
            KeyCode::Char('r') | KeyCode::Char('I') => app.reverse(),
            KeyCode::Char('P') => app.sort_by(SortKey::Path),
            KeyCode::Char('S') => app.sort_by(SortKey::Slab),
            KeyCode::Char('C') => app.sort_by(SortKey::Percpu),
            KeyCode::Char('M') | KeyCode::Char('T') => app.sort_by(SortKey::Total),
            KeyCode::Char('G') => app.sort_by(SortKey::Change),
            KeyCode::Char('A') => app.sort_by(SortKey::Allocs),
            KeyCode::Char('t') => app.toggle_view(),
            KeyCode::Char('p') => app.toggle_pause(),
            KeyCode::Char('b') => app.toggle_exact(),
            KeyCode::Char('d') | KeyCode::Char('D') => app.toggle_dying_only(),
            KeyCode::Left | KeyCode::Char('-') => app.set_collapsed(Some(true)),
            KeyCode::Right | KeyCode::Char('+') => app.set_collapsed(Some(false)),
            KeyCode::Char(' ') => app.set_collapsed(None),
            code => navigate(app, code),
        },
    }
    Outcome::Continue
}

fn navigate(app: &mut App, code: KeyCode) {
    match code {
        KeyCode::Up | KeyCode::Char('k') => app.move_selection(-1),
        KeyCode::Down | KeyCode::Char('j') => app.move_selection(1),
        KeyCode::PageUp => app.page_up(),
        KeyCode::PageDown => app.page_down(),
        KeyCode::Home | KeyCode::Char('g') => app.select_first(),
        KeyCode::End | KeyCode::Char('G') => app.select_last(),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::app::{View, tests::*};

    fn press(app: &mut App, code: KeyCode) -> Outcome {
        handle_key(app, KeyEvent::new(code, KeyModifiers::NONE))
    }

    fn type_str(app: &mut App, s: &str) {
        for c in s.chars() {
            press(app, KeyCode::Char(c));
        }
    }

    #[test]
    fn filter_drill_in_back_and_quit() {
        let mut app = app_with(sample());
        press(&mut app, KeyCode::Char('t'));
        assert_eq!(app.view, View::Flat);
        press(&mut app, KeyCode::Char('/'));
        // Keys that mean something in the table are text while filtering.
        type_str(&mut app, "bar");
        assert_eq!(app.mode, Mode::Filter);
        assert_eq!(app.view, View::Flat);
        press(&mut app, KeyCode::Enter);
        assert_eq!(app.filter, "bar");
        assert_eq!(app.rows().len(), 1);
        press(&mut app, KeyCode::Enter);
        assert_eq!(app.mode, Mode::Detail);
        press(&mut app, KeyCode::Backspace);
        assert_eq!(app.mode, Mode::Table);
        press(&mut app, KeyCode::Esc);
        assert_eq!(app.filter, "");
        assert_eq!(press(&mut app, KeyCode::Char('q')), Outcome::Quit);
    }

    #[test]
    fn esc_while_filtering_clears() {
        let mut app = app_with(sample());
        press(&mut app, KeyCode::Char('/'));
        type_str(&mut app, "user");
        press(&mut app, KeyCode::Esc);
        assert_eq!(app.mode, Mode::Table);
        assert_eq!(app.filter, "");
        assert_eq!(app.rows().len(), 5);
    }

    #[test]
    fn ctrl_c_quits_in_every_mode() {
        for setup in ["", "/", "?", "\n"] {
            let mut app = app_with(sample());
            for c in setup.chars() {
                let code = if c == '\n' {
                    KeyCode::Enter
                } else {
                    KeyCode::Char(c)
                };
                press(&mut app, code);
            }
            let key = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
            assert_eq!(handle_key(&mut app, key), Outcome::Quit, "{setup:?}");
        }
    }

    #[test]
    fn sort_keys_and_help() {
        let mut app = app_with(sample());
        press(&mut app, KeyCode::Char('S'));
        assert_eq!(app.sort, SortKey::Slab);
        press(&mut app, KeyCode::Char('>'));
        assert_eq!(app.sort, SortKey::Percpu);
        press(&mut app, KeyCode::Char('<'));
        press(&mut app, KeyCode::Char('<'));
        assert_eq!(app.sort, SortKey::Path);
        press(&mut app, KeyCode::Char('?'));
        assert_eq!(app.mode, Mode::Help);
        // Any key closes the help, q included, without quitting.
        assert_eq!(press(&mut app, KeyCode::Char('q')), Outcome::Continue);
        assert_eq!(app.mode, Mode::Table);
        press(&mut app, KeyCode::Char('p'));
        assert!(app.paused);
    }
}
