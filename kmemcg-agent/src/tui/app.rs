//! The live view's state: the [`Model`] of the latest reading, the [`ViewState`] the user
//! chose, and the table's lines, which follow both. Readings come in through
//! [`App::update`], keys through [`App::handle_key`]; nothing else changes it.
use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind};

use super::{
    keys::{self, Action},
    leaks::{LeakPanel, Reading},
    model::{Model, Row},
    view::{Detail, Layout, Line, Mode, Shape, ViewState, lines},
};
use crate::api::{CgroupHistory, Snapshot};

/// What the event loop does after a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Continue,
    Quit,
}

/// Where the data comes from and how often; fixed for a run.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// For the header: `agent 127.0.0.1:9847`, `standalone`.
    pub(crate) source: String,
    /// A standing notice, e.g. that standalone mode only sees allocations since it started.
    pub(crate) notice: Option<String>,
    pub(crate) delay: Duration,
    /// Keep the model when the agent serves the same reading again (see [`Model::next`]).
    pub(crate) skip_same_reading: bool,
}

pub(crate) struct App {
    settings: Settings,
    model: Model,
    view: ViewState,
    /// The table's lines for `model` under `shape`.
    lines: Vec<Line>,
    /// The shape `lines` were made for.
    shape: Shape,
    /// The last failure to read data; cleared by the next reading.
    error: Option<String>,
    /// The drilled-in cgroup's history (path, history or why there is none).
    history: Option<(String, Result<CgroupHistory, String>)>,
    leaks: LeakPanel,
}

impl App {
    pub(crate) fn new(settings: Settings, view: ViewState) -> Self {
        let shape = view.shape.clone();
        Self {
            settings,
            model: Model::default(),
            view,
            lines: Vec::new(),
            shape,
            error: None,
            history: None,
            leaks: LeakPanel::default(),
        }
    }

    /// The path whose history the drill-in shows, if it is open.
    pub(crate) fn history_wanted(&self) -> Option<String> {
        (self.view.mode == Mode::Detail || self.view.help_back == Mode::Detail)
            .then(|| self.view.detail.as_ref().map(|d| d.path.clone()))
            .flatten()
    }

    pub(crate) fn set_history(&mut self, path: String, history: Result<CgroupHistory, String>) {
        self.history = Some((path, history));
    }

    /// The history read for the drilled-in cgroup; none until it was read.
    pub(crate) fn history(&self) -> Option<&Result<CgroupHistory, String>> {
        let (path, history) = self.history.as_ref()?;
        (self.view.detail.as_ref()).and_then(|d| (d.path == *path).then_some(history))
    }

    pub(crate) fn leak_panel(&self) -> &LeakPanel {
        &self.leaks
    }

    /// The cgroup the user asked to record, once.
    pub(crate) fn take_leak_request(&mut self) -> Option<String> {
        self.leaks.take_request()
    }

    pub(crate) fn set_leak_reading(&mut self, reading: Reading) {
        self.leaks.update(reading);
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.settings
    }

    pub(crate) fn model(&self) -> &Model {
        &self.model
    }

    pub(crate) fn view(&self) -> &ViewState {
        &self.view
    }

    pub(crate) fn lines(&self) -> &[Line] {
        &self.lines
    }

    pub(crate) fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    pub(crate) fn row(&self, line: &Line) -> Option<&Row> {
        self.model.rows().get(line.row)
    }

    fn selected_row(&self) -> Option<&Row> {
        (self.lines.get(self.view.cursor.selected)).and_then(|l| self.row(l))
    }

    /// The drilled-in cgroup, if it is still reported.
    pub(crate) fn detail_row(&self) -> Option<&Row> {
        (self.view.detail.as_ref()).and_then(|d| self.model.row_by_id(d.id))
    }

    /// Takes a new reading (ignored while paused).
    pub(crate) fn update(&mut self, snapshot: Snapshot, now: Instant) {
        self.error = None;
        if self.view.paused {
            return;
        }
        let selected = self.selected_row().map(|r| r.cgroup.id());
        let before = self.model.readings();
        let model = std::mem::take(&mut self.model);
        self.model = model.next(snapshot, now, self.settings.skip_same_reading);
        if self.model.readings() != before {
            self.relayout(selected);
        }
    }

    /// Records a failure to read data; the last reading stays on screen.
    pub(crate) fn set_error(&mut self, message: String) {
        self.error = Some(message);
    }

    pub(crate) fn handle_key(&mut self, key: KeyEvent) -> Outcome {
        if key.kind == KeyEventKind::Release {
            return Outcome::Continue;
        }
        let Some(action) = keys::lookup(self.view.mode, &key) else {
            return Outcome::Continue;
        };
        let typed = match key.code {
            KeyCode::Char(c) => Some(c),
            _ => None,
        };
        self.apply(action, typed)
    }

    /// Carries out `action`; `typed` is the character of the key, for the filter.
    pub(crate) fn apply(&mut self, action: Action, typed: Option<char>) -> Outcome {
        let selected = self.selected_row().map(|r| r.cgroup.id());
        let page = self.view.page.max(1) as isize;
        let v = &mut self.view;
        let shape = &mut v.shape;
        match action {
            Action::Quit => return Outcome::Quit,
            Action::Help if v.mode != Mode::Help => {
                v.help_back = v.mode;
                v.mode = Mode::Help;
            }
            Action::Help => {}
            Action::Back if v.mode == Mode::Help => v.mode = v.help_back,
            Action::Back => {
                v.detail = None;
                v.mode = Mode::Table;
            }
            Action::Up => self.move_cursor(-1),
            Action::Down => self.move_cursor(1),
            Action::PageUp => self.move_cursor(-page),
            Action::PageDown => self.move_cursor(page),
            Action::First => self.move_cursor(isize::MIN),
            Action::Last => self.move_cursor(isize::MAX),
            Action::SortLeft | Action::SortRight => {
                let by = if action == Action::SortLeft { -1 } else { 1 };
                if v.mode == Mode::Detail {
                    v.cache_sort = v.cache_sort.shift(by);
                } else {
                    shape.sort_shift(by);
                }
            }
            Action::SortBy(key) => shape.sort_by(key),
            Action::Reverse => shape.descending = !shape.descending,
            Action::StartFilter => v.mode = Mode::Filter,
            Action::ClearFilter if v.mode == Mode::Filter || !shape.filter.is_empty() => {
                shape.filter.clear();
                v.mode = Mode::Table;
            }
            Action::ClearFilter => shape.dying_only = false,
            Action::ApplyFilter => {
                shape.filter = shape.filter.trim().to_string();
                v.mode = Mode::Table;
            }
            Action::FilterBackspace => {
                shape.filter.pop();
            }
            Action::FilterErase => shape.filter.clear(),
            Action::FilterType => shape.filter.extend(typed.filter(|c| !c.is_control())),
            Action::DrillIn => self.drill_in(),
            Action::ToggleLayout => {
                shape.layout = match shape.layout {
                    Layout::Tree => Layout::Flat,
                    Layout::Flat => Layout::Tree,
                }
            }
            Action::Collapse => self.set_collapsed(Some(true)),
            Action::Expand => self.set_collapsed(Some(false)),
            Action::ToggleCollapse => self.set_collapsed(None),
            Action::ToggleDyingOnly => shape.dying_only = !shape.dying_only,
            Action::ToggleBytes => v.exact = !v.exact,
            Action::TogglePause => v.paused = !v.paused,
            Action::RecordLeaks => {
                if let Some(d) = &v.detail {
                    self.leaks.request(d.path.clone());
                }
            }
        }
        if self.view.shape != self.shape {
            self.relayout(selected);
        }
        Outcome::Continue
    }

    /// Recomputes the table's lines, keeping `selected` selected; a changed filter selects
    /// its first match instead.
    fn relayout(&mut self, selected: Option<u64>) {
        let filter_changed = self.view.shape.filter != self.shape.filter;
        self.shape = self.view.shape.clone();
        self.lines = lines(&self.model, &self.shape);
        let rows = self.model.rows();
        let position = |want: &dyn Fn(&Row) -> bool| {
            (self.lines.iter()).position(|l| rows.get(l.row).is_some_and(want))
        };
        let found = if filter_changed && !self.shape.filter.is_empty() {
            // The first line that matches the filter itself, not an ancestor shown for context.
            position(&|r| self.shape.matches(r))
        } else {
            selected.and_then(|id| position(&|r| r.cgroup.id() == id))
        };
        let cursor = &mut self.view.cursor;
        cursor.selected = found.unwrap_or(cursor.selected);
        cursor.step(0, self.lines.len());
    }

    fn move_cursor(&mut self, delta: isize) {
        match (self.view.mode, &mut self.view.detail) {
            (Mode::Detail, Some(d)) => {
                let len = self
                    .model
                    .row_by_id(d.id)
                    .map_or(0, |r| r.cgroup.caches().len());
                d.cursor.step(delta, len);
            }
            _ => self.view.cursor.step(delta, self.lines.len()),
        }
    }

    fn drill_in(&mut self) {
        if let Some(row) = self.selected_row() {
            let detail = Detail {
                id: row.cgroup.id(),
                path: row.cgroup.path().to_string(),
                cursor: Default::default(),
            };
            self.view.detail = Some(detail);
            self.view.mode = Mode::Detail;
        }
    }

    /// Collapses (`Some(true)`), expands (`Some(false)`) or toggles (`None`) the selected
    /// cgroup's subtree in the tree layout.
    fn set_collapsed(&mut self, collapse: Option<bool>) {
        if self.view.shape.layout != Layout::Tree {
            return;
        }
        let Some(line) = self.lines.get(self.view.cursor.selected) else {
            return;
        };
        let Some(id) = self.row(line).map(|r| r.cgroup.id()) else {
            return;
        };
        let collapsed = &mut self.view.shape.collapsed;
        let collapse = collapse.unwrap_or(!collapsed.contains(&id));
        if collapse && line.has_children {
            collapsed.insert(id);
        } else {
            collapsed.remove(&id);
        }
    }

    /// Keeps the selected line of the list on screen within `height` lines; called by
    /// drawing, which knows the height.
    pub(crate) fn fit(&mut self, height: usize) {
        let v = &mut self.view;
        v.page = height.max(1);
        match (v.mode, &mut v.detail) {
            (Mode::Detail, Some(d)) => {
                let len = self
                    .model
                    .row_by_id(d.id)
                    .map_or(0, |r| r.cgroup.caches().len());
                d.cursor.fit(len, v.page);
            }
            _ => v.cursor.fit(self.lines.len(), v.page),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::{
        testdata::{act, app_of, app_with, cg, dying, sample, settings, snapshot},
        view::{CacheSort, SortKey},
    };

    fn paths(app: &App) -> Vec<&str> {
        (app.lines().iter())
            .filter_map(|l| app.row(l))
            .map(|r| r.cgroup.path())
            .collect()
    }

    fn selected_path(app: &App) -> Option<&str> {
        app.selected_row().map(|r| r.cgroup.path())
    }

    fn type_text(app: &mut App, text: &str) {
        for c in text.chars() {
            app.apply(Action::FilterType, Some(c));
        }
    }

    #[test]
    fn lines_follow_the_view_without_being_asked() {
        let mut app = app_with(sample());
        assert_eq!(paths(&app).len(), 5);
        act(&mut app, &[Action::ToggleLayout]);
        assert_eq!(paths(&app)[0], "/system.slice/foo.service");
        act(&mut app, &[Action::SortBy(SortKey::Percpu)]);
        assert_eq!(paths(&app)[0], "/system.slice/bar.service");
        act(&mut app, &[Action::Reverse]);
        assert_eq!(paths(&app)[4], "/system.slice/bar.service");
        act(&mut app, &[Action::SortLeft]);
        assert_eq!(app.view().shape.sort, SortKey::Slab);
        assert_eq!(paths(&app)[0], "/system.slice/foo.service");
    }

    #[test]
    fn filter_selects_the_first_match_and_keeps_ancestors_in_the_tree() {
        let mut app = app_with(sample());
        act(&mut app, &[Action::StartFilter]);
        assert_eq!(app.view().mode, Mode::Filter);
        type_text(&mut app, "FOO");
        // Filtering is live while typing.
        assert_eq!(
            paths(&app),
            ["/", "/system.slice", "/system.slice/foo.service"]
        );
        assert_eq!(app.view().cursor.selected, 2);
        act(&mut app, &[Action::ApplyFilter]);
        assert_eq!(
            (app.view().mode, app.view().shape.filter.as_str()),
            (Mode::Table, "FOO")
        );
        assert_eq!(app.view().cursor.selected, 2);
        act(&mut app, &[Action::ToggleLayout]);
        assert_eq!(paths(&app), ["/system.slice/foo.service"]);
        // Typing again goes on from the applied filter; Esc clears it.
        act(
            &mut app,
            &[
                Action::StartFilter,
                Action::FilterBackspace,
                Action::ClearFilter,
            ],
        );
        assert_eq!(
            (app.view().mode, app.view().shape.filter.as_str()),
            (Mode::Table, "")
        );
        assert_eq!(paths(&app).len(), 5);
    }

    #[test]
    fn selection_follows_the_cgroup_across_readings_and_sorts() {
        let mut app = app_with(sample());
        act(&mut app, &[Action::ToggleLayout, Action::Down]);
        let before = selected_path(&app).map(String::from);
        act(&mut app, &[Action::SortBy(SortKey::Path)]);
        assert_eq!(selected_path(&app).map(String::from), before);
        app.update(snapshot(sample(), 101), Instant::now());
        assert_eq!(selected_path(&app).map(String::from), before);
        act(&mut app, &[Action::Last]);
        assert_eq!(app.view().cursor.selected, 4);
        act(&mut app, &[Action::Down]);
        assert_eq!(app.view().cursor.selected, 4);
        act(&mut app, &[Action::First, Action::Up]);
        assert_eq!(app.view().cursor.selected, 0);
    }

    #[test]
    fn drill_in_sort_caches_help_and_back() {
        let mut app = app_with(sample());
        act(
            &mut app,
            &[Action::ToggleLayout, Action::First, Action::DrillIn],
        );
        assert_eq!(app.view().mode, Mode::Detail);
        let detail = app.view().detail.as_ref().map(|d| d.path.as_str());
        assert_eq!(detail, Some("/system.slice/foo.service"));
        // In the caches, < and > sort the caches, not the table.
        act(&mut app, &[Action::SortLeft, Action::SortLeft]);
        assert_eq!(app.view().cache_sort, CacheSort::Name);
        assert_eq!(app.view().shape.sort, SortKey::Total);
        act(&mut app, &[Action::Last]);
        assert_eq!(
            app.view().detail.as_ref().map(|d| d.cursor.selected),
            Some(1)
        );
        act(&mut app, &[Action::Help]);
        assert_eq!(app.view().mode, Mode::Help);
        act(&mut app, &[Action::Back]);
        assert_eq!(app.view().mode, Mode::Detail);
        act(&mut app, &[Action::Back]);
        assert_eq!(app.view().mode, Mode::Table);
        assert!(app.view().detail.is_none());
    }

    #[test]
    fn pause_ignores_readings() {
        let mut app = app_with(sample());
        act(&mut app, &[Action::TogglePause]);
        app.update(snapshot(vec![cg(9, "/x", 1, 0, 0)], 200), Instant::now());
        assert_eq!(app.model().rows().len(), 5);
        act(&mut app, &[Action::TogglePause]);
        app.update(snapshot(vec![cg(9, "/x", 1, 0, 0)], 200), Instant::now());
        assert_eq!(paths(&app), ["/x"]);
    }

    #[test]
    fn collapse_expand_and_toggle() {
        let mut app = app_with(sample());
        act(&mut app, &[Action::Down, Action::Collapse]);
        assert_eq!(paths(&app), ["/", "/system.slice", "/user.slice"]);
        assert!(app.lines()[1].collapsed);
        act(&mut app, &[Action::ToggleCollapse]);
        assert_eq!(paths(&app).len(), 5);
        act(&mut app, &[Action::Collapse, Action::Expand]);
        assert_eq!(paths(&app).len(), 5);
        // A leaf does not fold.
        act(&mut app, &[Action::Down, Action::Collapse]);
        assert!(!app.lines()[2].collapsed);
    }

    #[test]
    fn dying_only_then_esc_lists_all_again() {
        let mut snap = snapshot(sample(), 1);
        snap.dying.push(dying(9, "/system.slice/gone", 4096, 0, 2));
        let mut app = app_of(snap);
        act(&mut app, &[Action::ToggleLayout, Action::ToggleDyingOnly]);
        assert_eq!(paths(&app), ["/system.slice/gone"]);
        act(&mut app, &[Action::ClearFilter]);
        assert_eq!(paths(&app).len(), 6);
    }

    #[test]
    fn keys_reach_actions() {
        let mut app = App::new(settings(), ViewState::default());
        app.update(snapshot(sample(), 1), Instant::now());
        let press = |app: &mut App, code| {
            app.handle_key(KeyEvent::new(code, crossterm::event::KeyModifiers::NONE))
        };
        press(&mut app, KeyCode::Char('G'));
        assert_eq!(app.view().cursor.selected, 4);
        press(&mut app, KeyCode::Char('/'));
        for c in "bar".chars() {
            press(&mut app, KeyCode::Char(c));
        }
        assert_eq!(app.view().shape.filter, "bar");
        press(&mut app, KeyCode::Enter);
        assert_eq!(press(&mut app, KeyCode::Char('q')), Outcome::Quit);
    }

    #[test]
    fn scrolling_keeps_the_selection_visible() {
        let cgroups = (0..50).map(|i| cg(i + 10, &format!("/c{i:02}"), i * 100, 0, 0));
        let mut app = app_with(cgroups.collect());
        app.fit(10);
        act(&mut app, &[Action::PageDown, Action::PageDown]);
        app.fit(10);
        assert_eq!(app.view().cursor.selected, 20);
        assert_eq!(app.view().cursor.offset, 11);
        act(&mut app, &[Action::First]);
        app.fit(10);
        assert_eq!(app.view().cursor.offset, 0);
    }
}
