//! Every key of `kmemcg top` in one table of (modes, keys, action, help, footer word): key
//! handling looks keys up in it, and the help screen and the footer are drawn from it, so the
//! three cannot drift apart.
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::view::{Mode, SortKey};

/// A key, or a class of keys, that a binding answers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Key {
    Code(KeyCode),
    Ctrl(char),
    /// Any printable character (typing the filter).
    Text,
    /// Any key at all.
    Any,
}

impl Key {
    fn matches(self, event: &KeyEvent) -> bool {
        let ctrl = event.modifiers.contains(KeyModifiers::CONTROL);
        match self {
            Key::Code(code) => !ctrl && event.code == code,
            Key::Ctrl(c) => ctrl && event.code == KeyCode::Char(c),
            Key::Text => !ctrl && matches!(event.code, KeyCode::Char(c) if !c.is_control()),
            Key::Any => true,
        }
    }

    /// How the help and the footer write it.
    pub(crate) fn label(self) -> String {
        match self {
            Key::Code(code) => match code {
                KeyCode::Up => "↑".into(),
                KeyCode::Down => "↓".into(),
                KeyCode::Left => "←".into(),
                KeyCode::Right => "→".into(),
                KeyCode::PageUp => "PgUp".into(),
                KeyCode::PageDown => "PgDn".into(),
                KeyCode::Char(' ') => "Space".into(),
                KeyCode::Char(c) => c.to_string(),
                other => other.to_string(),
            },
            Key::Ctrl(c) => format!("Ctrl-{}", c.to_ascii_uppercase()),
            Key::Text => "text".into(),
            Key::Any => "any key".into(),
        }
    }
}

/// What a key does; [`super::app::App::apply`] carries it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    Quit,
    Help,
    /// From the help to where it was opened, from the caches to the table.
    Back,
    Up,
    Down,
    PageUp,
    PageDown,
    First,
    Last,
    /// Sort the table (or the caches) by the column to the left or right.
    SortLeft,
    SortRight,
    SortBy(SortKey),
    Reverse,
    StartFilter,
    /// Clear the filter; in the table with none, leave the dying-only list.
    ClearFilter,
    ApplyFilter,
    FilterBackspace,
    FilterErase,
    /// Type the key's character into the filter.
    FilterType,
    DrillIn,
    ToggleLayout,
    Collapse,
    Expand,
    ToggleCollapse,
    ToggleDyingOnly,
    ToggleBytes,
    TogglePause,
    /// Record the drilled-in cgroup's new objects by call site (`kmemcg leaks`).
    RecordLeaks,
}

pub(crate) struct Binding {
    pub(crate) modes: &'static [Mode],
    pub(crate) keys: &'static [Key],
    pub(crate) action: Action,
    /// The help screen's text; consecutive bindings with the same text share a line.
    pub(crate) help: &'static str,
    /// A word for the footer, and the modes whose footer shows it; consecutive bindings
    /// with the same word share it (`<>` sort).
    pub(crate) footer: Option<(&'static str, &'static [Mode])>,
}

const fn bind(
    modes: &'static [Mode],
    keys: &'static [Key],
    action: Action,
    help: &'static str,
) -> Binding {
    Binding {
        modes,
        keys,
        action,
        help,
        footer: None,
    }
}

impl Binding {
    const fn footer(self, word: &'static str, modes: &'static [Mode]) -> Binding {
        Binding {
            footer: Some((word, modes)),
            ..self
        }
    }
}

const fn ch(c: char) -> Key {
    Key::Code(KeyCode::Char(c))
}

const UP: Key = Key::Code(KeyCode::Up);
const DOWN: Key = Key::Code(KeyCode::Down);
const LEFT: Key = Key::Code(KeyCode::Left);
const RIGHT: Key = Key::Code(KeyCode::Right);
const PAGE_UP: Key = Key::Code(KeyCode::PageUp);
const PAGE_DOWN: Key = Key::Code(KeyCode::PageDown);
const HOME: Key = Key::Code(KeyCode::Home);
const END: Key = Key::Code(KeyCode::End);
const ENTER: Key = Key::Code(KeyCode::Enter);
const ESC: Key = Key::Code(KeyCode::Esc);
const BACKSPACE: Key = Key::Code(KeyCode::Backspace);
const F1: Key = Key::Code(KeyCode::F(1));

const ALL: &[Mode] = &[Mode::Table, Mode::Filter, Mode::Detail, Mode::Help];
/// The cgroup table and one cgroup's caches.
const LISTS: &[Mode] = &[Mode::Table, Mode::Detail];
const TABLE: &[Mode] = &[Mode::Table];
const DETAIL: &[Mode] = &[Mode::Detail];
const FILTER: &[Mode] = &[Mode::Filter];
const HELP: &[Mode] = &[Mode::Help];

const SORT_BY: &str = "sort by path, slab, percpu, total, change, allocs";
const MOVE: &str = "move the selection";
const JUMP: &str = "move by a page, to the first or last line";
const SORT_SIDE: &str = "sort by the next column left or right (caches too)";
const FILTER_ERASE: &str = "while filtering: delete a character, or all typed";
const FOLD: &str = "collapse, expand or toggle a subtree (tree view)";

/// Looked up in order: the first binding of the mode that has the key wins. The help lists
/// the bindings in this order, and the footer its words.
#[rustfmt::skip]
pub(crate) const BINDINGS: &[Binding] = &[
    bind(LISTS, &[ch('q')], Action::Quit, "quit").footer("quit", LISTS),
    bind(ALL, &[Key::Ctrl('c'), Key::Ctrl('d')], Action::Quit, "quit"),
    bind(LISTS, &[ch('?'), F1], Action::Help, "this help").footer("help", LISTS),
    bind(HELP, &[Key::Any], Action::Back, "close this help").footer("back", HELP),
    bind(LISTS, &[UP, ch('k')], Action::Up, MOVE).footer("move", DETAIL),
    bind(LISTS, &[DOWN, ch('j')], Action::Down, MOVE).footer("move", DETAIL),
    bind(LISTS, &[PAGE_UP], Action::PageUp, JUMP),
    bind(LISTS, &[PAGE_DOWN], Action::PageDown, JUMP),
    bind(LISTS, &[HOME, ch('g')], Action::First, JUMP),
    bind(LISTS, &[END, ch('G')], Action::Last, JUMP),
    bind(LISTS, &[ch('<'), ch(',')], Action::SortLeft, SORT_SIDE).footer("sort", LISTS),
    bind(LISTS, &[ch('>'), ch('.')], Action::SortRight, SORT_SIDE).footer("sort", LISTS),
    bind(DETAIL, &[ESC, BACKSPACE, LEFT, ch('h')], Action::Back, "back from the caches to the table")
        .footer("back", DETAIL),
    bind(DETAIL, &[ch('l')], Action::RecordLeaks, "record the cgroup's call sites for 60 s (leaks)")
        .footer("leaks", DETAIL),
    bind(TABLE, &[ch('P')], Action::SortBy(SortKey::Path), SORT_BY),
    bind(TABLE, &[ch('S')], Action::SortBy(SortKey::Slab), SORT_BY),
    bind(TABLE, &[ch('C')], Action::SortBy(SortKey::Percpu), SORT_BY),
    bind(TABLE, &[ch('M'), ch('T')], Action::SortBy(SortKey::Total), SORT_BY),
    bind(TABLE, &[ch('W')], Action::SortBy(SortKey::Change), SORT_BY),
    bind(TABLE, &[ch('A')], Action::SortBy(SortKey::Allocs), SORT_BY),
    bind(TABLE, &[ch('r'), ch('I')], Action::Reverse, "reverse the sort order (or press a sort key again)"),
    bind(TABLE, &[ch('/')], Action::StartFilter, "filter by path (the table follows as you type)")
        .footer("filter", TABLE),
    bind(TABLE, &[ESC], Action::ClearFilter, "clear the filter, then the dying-only list"),
    bind(TABLE, &[ENTER], Action::DrillIn, "drill into the selected cgroup's caches").footer("caches", TABLE),
    bind(TABLE, &[ch('t')], Action::ToggleLayout, "tree or flat view").footer("tree", TABLE),
    bind(TABLE, &[LEFT, ch('-')], Action::Collapse, FOLD),
    bind(TABLE, &[RIGHT, ch('+')], Action::Expand, FOLD),
    bind(TABLE, &[ch(' ')], Action::ToggleCollapse, FOLD),
    bind(TABLE, &[ch('d'), ch('D')], Action::ToggleDyingOnly, "list only dying (removed) cgroups, or all again")
        .footer("dying", TABLE),
    bind(LISTS, &[ch('b')], Action::ToggleBytes, "exact byte counts or IEC sizes").footer("bytes", LISTS),
    bind(LISTS, &[ch('p')], Action::TogglePause, "pause or resume updates").footer("pause", LISTS),
    bind(FILTER, &[ENTER], Action::ApplyFilter, "while filtering: apply the filter").footer("apply", FILTER),
    bind(FILTER, &[ESC], Action::ClearFilter, "while filtering: clear the filter").footer("clear", FILTER),
    // One help line for both, so that the help fits 24 lines.
    bind(FILTER, &[BACKSPACE], Action::FilterBackspace, FILTER_ERASE),
    bind(FILTER, &[Key::Ctrl('u')], Action::FilterErase, FILTER_ERASE),
    bind(FILTER, &[Key::Text], Action::FilterType, "while filtering: typed into the filter"),
];

/// What `event` does in `mode`, if anything.
pub(crate) fn lookup(mode: Mode, event: &KeyEvent) -> Option<Action> {
    BINDINGS
        .iter()
        .find(|b| b.modes.contains(&mode) && b.keys.iter().any(|k| k.matches(event)))
        .map(|b| b.action)
}

/// The help screen's lines: (keys, what they do).
pub(crate) fn help_lines() -> Vec<(String, &'static str)> {
    let mut lines: Vec<(String, &'static str)> = Vec::new();
    for b in BINDINGS {
        let keys = b
            .keys
            .iter()
            .map(|k| k.label())
            .collect::<Vec<_>>()
            .join("/");
        match lines.last_mut() {
            Some((shown, help)) if *help == b.help => {
                shown.push(' ');
                shown.push_str(&keys);
            }
            _ => lines.push((keys, b.help)),
        }
    }
    lines
}

/// The footer of `mode`: (keys, word).
pub(crate) fn footer(mode: Mode) -> Vec<(String, &'static str)> {
    let mut items: Vec<(String, &'static str)> = Vec::new();
    for b in BINDINGS {
        let Some((word, _)) = b.footer.filter(|(_, modes)| modes.contains(&mode)) else {
            continue;
        };
        let key = b.keys.first().map(|k| k.label()).unwrap_or_default();
        match items.last_mut() {
            Some((keys, w)) if *w == word => keys.push_str(&key),
            _ => items.push((key, word)),
        }
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key event that `key` answers to.
    fn event(key: Key) -> KeyEvent {
        match key {
            Key::Code(code) => KeyEvent::new(code, KeyModifiers::NONE),
            Key::Ctrl(c) => KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL),
            Key::Text | Key::Any => KeyEvent::new(KeyCode::Char('x'), KeyModifiers::NONE),
        }
    }

    #[test]
    fn every_listed_key_does_what_its_line_says() {
        for b in BINDINGS {
            assert!(!b.modes.is_empty() && !b.keys.is_empty(), "{}", b.help);
            for mode in b.modes {
                for key in b.keys {
                    assert_eq!(
                        lookup(*mode, &event(*key)),
                        Some(b.action),
                        "{} in {mode:?} is taken by an earlier binding",
                        key.label()
                    );
                }
            }
        }
    }

    #[test]
    fn footer_words_are_shown_only_where_their_keys_work() {
        for b in BINDINGS {
            if let Some((word, modes)) = b.footer {
                assert!(modes.iter().all(|m| b.modes.contains(m)), "{word}");
            }
        }
    }

    #[test]
    fn every_handled_key_is_in_the_help() {
        let help = help_lines();
        let mut codes: Vec<KeyCode> = (' '..='~').map(KeyCode::Char).collect();
        codes.extend([
            KeyCode::Up,
            KeyCode::Down,
            KeyCode::Left,
            KeyCode::Right,
            KeyCode::PageUp,
            KeyCode::PageDown,
            KeyCode::Home,
            KeyCode::End,
            KeyCode::Enter,
            KeyCode::Esc,
            KeyCode::Backspace,
            KeyCode::Tab,
            KeyCode::Delete,
            KeyCode::F(1),
            KeyCode::F(2),
        ]);
        for mode in ALL {
            for code in &codes {
                for modifiers in [KeyModifiers::NONE, KeyModifiers::CONTROL] {
                    let e = KeyEvent::new(*code, modifiers);
                    if lookup(*mode, &e).is_none() {
                        continue;
                    }
                    let binding = BINDINGS
                        .iter()
                        .find(|b| b.modes.contains(mode) && b.keys.iter().any(|k| k.matches(&e)))
                        .expect("a binding");
                    let key = binding.keys.iter().find(|k| k.matches(&e)).expect("a key");
                    let line = help.iter().find(|(_, what)| *what == binding.help);
                    assert!(
                        line.is_some_and(|(keys, _)| keys.contains(&key.label())),
                        "{code:?} {modifiers:?} in {mode:?} is handled but not in the help: {help:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn capital_g_goes_to_the_last_line_and_w_sorts_by_change() {
        let shift = |c| KeyEvent::new(KeyCode::Char(c), KeyModifiers::SHIFT);
        for mode in LISTS {
            assert_eq!(lookup(*mode, &shift('G')), Some(Action::Last), "{mode:?}");
            assert_eq!(
                lookup(*mode, &event(ch('g'))),
                Some(Action::First),
                "{mode:?}"
            );
        }
        assert_eq!(
            lookup(Mode::Table, &shift('W')),
            Some(Action::SortBy(SortKey::Change))
        );
    }

    #[test]
    fn quitting_typing_and_closing_the_help() {
        let ctrl_c = event(Key::Ctrl('c'));
        for mode in ALL {
            assert_eq!(lookup(*mode, &ctrl_c), Some(Action::Quit), "{mode:?}");
        }
        // In the filter, keys that mean something in the table are text.
        for c in ['q', 't', '/', 'G', '?'] {
            assert_eq!(
                lookup(Mode::Filter, &event(ch(c))),
                Some(Action::FilterType),
                "{c}"
            );
        }
        // Any key closes the help, q included, without quitting.
        assert_eq!(lookup(Mode::Help, &event(ch('q'))), Some(Action::Back));
        assert_eq!(lookup(Mode::Table, &event(ch('x'))), None);
    }

    #[test]
    fn help_and_footer_come_from_the_table() {
        let help = help_lines();
        let line = |what: &str| {
            help.iter()
                .find(|(_, h)| *h == what)
                .map(|(k, _)| k.as_str())
        };
        assert_eq!(line("quit"), Some("q Ctrl-C/Ctrl-D"));
        assert_eq!(line(MOVE), Some("↑/k ↓/j"));
        assert_eq!(line(JUMP), Some("PgUp PgDn Home/g End/G"));
        assert_eq!(line(SORT_BY), Some("P S C M/T W A"));
        assert_eq!(line(SORT_SIDE), Some("</, >/."));
        let words = |mode| {
            footer(mode)
                .into_iter()
                .map(|(k, w)| format!("{k} {w}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(
            words(Mode::Table),
            "q quit ? help <> sort / filter Enter caches t tree d dying b bytes p pause"
        );
        assert_eq!(
            words(Mode::Detail),
            "q quit ? help ↑↓ move <> sort Esc back l leaks b bytes p pause"
        );
        assert_eq!(words(Mode::Help), "any key back");
        assert_eq!(words(Mode::Filter), "Enter apply Esc clear");
    }
}
