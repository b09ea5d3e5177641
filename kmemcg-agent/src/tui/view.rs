//! What the user chose to see (mode, sort, filter, tree or flat, selection), apart from the
//! data, and the lines of the cgroup table that a [`Model`] gives under a [`Shape`].
use std::collections::{HashMap, HashSet};

use super::model::{CacheLine, Model, Row};

/// What the screen shows and what keys do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Mode {
    /// The cgroup table.
    #[default]
    Table,
    /// Typing a path filter.
    Filter,
    /// One cgroup's per-cache breakdown.
    Detail,
    /// The key reference.
    Help,
}

/// Columns the cgroup table can be sorted by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum SortKey {
    Path,
    Slab,
    Percpu,
    #[default]
    Total,
    /// Change of slab plus percpu bytes per second.
    Change,
    /// Allocations per second.
    Allocs,
}

impl SortKey {
    const ALL: [SortKey; 6] = [
        SortKey::Path,
        SortKey::Slab,
        SortKey::Percpu,
        SortKey::Total,
        SortKey::Change,
        SortKey::Allocs,
    ];

    /// The column `by` places to the right (negative: left), wrapping around.
    pub(crate) fn shift(self, by: isize) -> Self {
        shift(&Self::ALL, self, by)
    }

    /// Paths sort A to Z, numbers largest first.
    pub(crate) fn default_descending(self) -> bool {
        self != SortKey::Path
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            SortKey::Path => "path",
            SortKey::Slab => "slab",
            SortKey::Percpu => "percpu",
            SortKey::Total => "total",
            SortKey::Change => "change",
            SortKey::Allocs => "allocs",
        }
    }

    /// The value a numeric sort compares (0 for the path and for unknown rates): the figure
    /// shown, the subtree's in the tree.
    fn value(self, row: &Row, subtree: bool) -> f64 {
        let f = row.figures(subtree);
        match self {
            SortKey::Path => 0.0,
            SortKey::Slab => f.slab as f64,
            SortKey::Percpu => f.percpu as f64,
            SortKey::Total => f.total() as f64,
            SortKey::Change => f.change.unwrap_or(0.0),
            SortKey::Allocs => f.alloc_rate.unwrap_or(0.0),
        }
    }
}

/// Columns of the per-cache view, in screen order; bytes (and so share) largest first by
/// default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum CacheSort {
    Name,
    Objects,
    #[default]
    Bytes,
    Change,
}

impl CacheSort {
    const ALL: [CacheSort; 4] = [
        CacheSort::Name,
        CacheSort::Objects,
        CacheSort::Bytes,
        CacheSort::Change,
    ];

    pub(crate) fn shift(self, by: isize) -> Self {
        shift(&Self::ALL, self, by)
    }

    /// Names A to Z, numbers largest first; ties by name.
    pub(crate) fn sort(self, lines: &mut [CacheLine<'_>]) {
        let by_name = |a: &CacheLine<'_>, b: &CacheLine<'_>| a.cache.name.cmp(&b.cache.name);
        lines.sort_by(|a, b| {
            let ord = match self {
                CacheSort::Name => std::cmp::Ordering::Equal,
                CacheSort::Objects => b.cache.objects.cmp(&a.cache.objects),
                CacheSort::Bytes => b.cache.bytes.cmp(&a.cache.bytes),
                CacheSort::Change => (b.change.unwrap_or(0.0)).total_cmp(&a.change.unwrap_or(0.0)),
            };
            ord.then_with(|| by_name(a, b))
        });
    }
}

fn shift<T: Copy + PartialEq>(all: &[T], current: T, by: isize) -> T {
    let n = all.len() as isize;
    let i = all.iter().position(|k| *k == current).unwrap_or(0) as isize;
    all[(i + by).rem_euclid(n) as usize]
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Layout {
    /// Children indented under their parent, collapsible.
    #[default]
    Tree,
    /// One line per cgroup, full paths.
    Flat,
}

/// What decides which cgroups are listed and in which order. The table's lines are
/// recomputed whenever it changes (or the data does).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Shape {
    pub(crate) sort: SortKey,
    pub(crate) descending: bool,
    pub(crate) layout: Layout,
    /// Path filter, case-insensitive substring, in effect as it is typed; empty shows all.
    pub(crate) filter: String,
    /// Only removed (dying) cgroups.
    pub(crate) dying_only: bool,
    /// Ids whose subtree is folded in the tree layout.
    pub(crate) collapsed: HashSet<u64>,
}

impl Default for Shape {
    fn default() -> Self {
        Self {
            sort: SortKey::Total,
            descending: true,
            layout: Layout::Tree,
            filter: String::new(),
            dying_only: false,
            collapsed: HashSet::new(),
        }
    }
}

impl Shape {
    /// Sorts by `key`; the same key again reverses the order.
    pub(crate) fn sort_by(&mut self, key: SortKey) {
        if self.sort == key {
            self.descending = !self.descending;
        } else {
            self.sort = key;
            self.descending = key.default_descending();
        }
    }

    /// Sorts by a column `by` places to the right or left, in its default order.
    pub(crate) fn sort_shift(&mut self, by: isize) {
        self.sort = self.sort.shift(by);
        self.descending = self.sort.default_descending();
    }

    /// True when the row itself is asked for (not shown only as a matching row's ancestor).
    pub(crate) fn matches(&self, row: &Row) -> bool {
        let needle = self.filter.to_lowercase();
        self.matches_lowercase(row, &needle)
    }

    fn matches_lowercase(&self, row: &Row, needle: &str) -> bool {
        (!self.dying_only || row.cgroup.is_dying())
            && (needle.is_empty() || row.cgroup.path().to_lowercase().contains(needle))
    }

    fn compare(&self, model: &Model, values: &[f64], a: usize, b: usize) -> std::cmp::Ordering {
        let by_path = || {
            model.rows()[a]
                .cgroup
                .path()
                .cmp(model.rows()[b].cgroup.path())
        };
        let ord = match self.sort {
            SortKey::Path => by_path(),
            _ => values[a]
                .total_cmp(&values[b])
                .then_with(|| by_path().reverse()),
        };
        if self.descending { ord.reverse() } else { ord }
    }
}

/// One line of the cgroup table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Line {
    /// Index into [`Model::rows`].
    pub(crate) row: usize,
    /// Indentation level in the tree layout (0 when flat).
    pub(crate) depth: usize,
    pub(crate) has_children: bool,
    pub(crate) collapsed: bool,
}

/// The table's lines: filtered, sorted, as a tree or flat.
pub(crate) fn lines(model: &Model, shape: &Shape) -> Vec<Line> {
    match shape.layout {
        Layout::Flat => flat_lines(model, shape),
        Layout::Tree => tree_lines(model, shape),
    }
}

fn flat_lines(model: &Model, shape: &Shape) -> Vec<Line> {
    let needle = shape.filter.to_lowercase();
    let rows = model.rows();
    let values: Vec<f64> = rows.iter().map(|r| shape.sort.value(r, false)).collect();
    let mut idx: Vec<usize> = (0..rows.len())
        .filter(|i| shape.matches_lowercase(&rows[*i], &needle))
        .collect();
    idx.sort_by(|a, b| shape.compare(model, &values, *a, *b));
    idx.into_iter()
        .map(|row| Line {
            row,
            depth: 0,
            has_children: false,
            collapsed: false,
        })
        .collect()
}

fn tree_lines(model: &Model, shape: &Shape) -> Vec<Line> {
    let rows = model.rows();
    let n = rows.len();
    // A parent ranks by its whole subtree, the figure it shows.
    let values: Vec<f64> = rows.iter().map(|r| shape.sort.value(r, true)).collect();
    // With a filter, matches and their ancestors are shown.
    let needle = shape.filter.to_lowercase();
    let filtering = !needle.is_empty() || shape.dying_only;
    let mut shown = vec![!filtering; n];
    if filtering {
        for (i, row) in rows.iter().enumerate() {
            let mut at = shape.matches_lowercase(row, &needle).then_some(i);
            while let Some(j) = at.filter(|j| !shown[*j]) {
                shown[j] = true;
                at = model.parent(j);
            }
        }
    }
    let sorted = |list: &[usize]| {
        let mut list: Vec<usize> = list.iter().copied().filter(|i| shown[*i]).collect();
        list.sort_by(|a, b| shape.compare(model, &values, *a, *b));
        list
    };
    // Children are sorted as their parent is reached: folded subtrees cost nothing.
    let mut children: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut lines = Vec::new();
    let mut stack: Vec<(usize, usize)> = sorted(model.roots())
        .into_iter()
        .rev()
        .map(|r| (r, 0))
        .collect();
    while let Some((i, depth)) = stack.pop() {
        let collapsed = shape.collapsed.contains(&rows[i].cgroup.id());
        let kids = children
            .entry(i)
            .or_insert_with(|| sorted(model.children(i)));
        lines.push(Line {
            row: i,
            depth,
            has_children: !kids.is_empty(),
            collapsed,
        });
        if !collapsed {
            stack.extend(kids.iter().rev().map(|c| (*c, depth + 1)));
        }
    }
    lines
}

/// A selected line and the first line shown, in a list of some length.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub(crate) selected: usize,
    pub(crate) offset: usize,
}

impl Cursor {
    /// Moves the selection by `delta` lines, staying in the list.
    pub(crate) fn step(&mut self, delta: isize, len: usize) {
        let target = if delta < 0 {
            self.selected.saturating_sub(delta.unsigned_abs())
        } else {
            self.selected.saturating_add(delta.unsigned_abs())
        };
        self.selected = target.min(len.saturating_sub(1));
    }

    /// Keeps the selection within the list and within `page` lines from the offset.
    pub(crate) fn fit(&mut self, len: usize, page: usize) {
        if len == 0 {
            *self = Cursor::default();
            return;
        }
        self.selected = self.selected.min(len - 1);
        if self.selected < self.offset {
            self.offset = self.selected;
        } else if self.selected >= self.offset + page {
            self.offset = self.selected + 1 - page;
        }
        // No empty space below the last line when the list shrank.
        self.offset = self.offset.min(len.saturating_sub(page));
    }
}

/// The per-cache view of one cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Detail {
    pub(crate) id: u64,
    /// Kept to say which cgroup went away, should it stop being reported.
    pub(crate) path: String,
    pub(crate) cursor: Cursor,
}

/// Everything the user chose; the data is in the [`Model`].
#[derive(Clone, Debug)]
pub(crate) struct ViewState {
    pub(crate) mode: Mode,
    /// Where [`Mode::Help`] returns to.
    pub(crate) help_back: Mode,
    pub(crate) shape: Shape,
    /// Exact byte counts instead of IEC sizes.
    pub(crate) exact: bool,
    /// Readings are neither fetched nor shown while paused.
    pub(crate) paused: bool,
    pub(crate) cache_sort: CacheSort,
    /// In the cgroup table.
    pub(crate) cursor: Cursor,
    pub(crate) detail: Option<Detail>,
    /// Lines the list had at the last draw (for PgUp/PgDn).
    pub(crate) page: usize,
}

impl Default for ViewState {
    fn default() -> Self {
        Self {
            mode: Mode::Table,
            help_back: Mode::Table,
            shape: Shape::default(),
            exact: false,
            paused: false,
            cache_sort: CacheSort::default(),
            cursor: Cursor::default(),
            detail: None,
            page: 10,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::testdata::{dying, model_from, model_of, sample, snapshot};

    fn paths<'a>(model: &'a Model, lines: &[Line]) -> Vec<&'a str> {
        lines
            .iter()
            .map(|l| model.rows()[l.row].cgroup.path())
            .collect()
    }

    /// The paths listed under `shape`.
    fn listed<'a>(model: &'a Model, shape: &Shape) -> Vec<&'a str> {
        paths(model, &lines(model, shape))
    }

    fn flat() -> Shape {
        Shape {
            layout: Layout::Flat,
            ..Shape::default()
        }
    }

    #[test]
    fn tree_puts_children_under_parents_sorted_by_subtree() {
        let model = model_of(sample());
        let lines = lines(&model, &Shape::default());
        assert_eq!(
            paths(&model, &lines),
            [
                "/",
                "/system.slice",
                "/system.slice/foo.service",
                "/system.slice/bar.service",
                "/user.slice",
            ]
        );
        let depths: Vec<usize> = lines.iter().map(|l| l.depth).collect();
        assert_eq!(depths, [0, 1, 2, 2, 1]);
        assert!(lines[1].has_children && !lines[2].has_children);
    }

    #[test]
    fn flat_sorts_and_reverses() {
        let model = model_of(sample());
        let mut shape = flat();
        assert_eq!(listed(&model, &shape)[0], "/system.slice/foo.service");
        shape.sort_by(SortKey::Percpu);
        assert_eq!(listed(&model, &shape)[0], "/system.slice/bar.service");
        shape.sort_by(SortKey::Percpu);
        assert!(!shape.descending);
        assert_eq!(listed(&model, &shape)[4], "/system.slice/bar.service");
        shape.sort_by(SortKey::Path);
        assert!(!shape.descending);
        assert_eq!(listed(&model, &shape)[0], "/");
        shape.sort_shift(1);
        assert_eq!(shape.sort, SortKey::Slab);
        shape.sort_shift(-2);
        assert_eq!(shape.sort, SortKey::Allocs);
    }

    #[test]
    fn filters_keep_ancestors_in_the_tree_and_only_matches_when_flat() {
        let mut snap = snapshot(sample(), 1);
        snap.dying.push(dying(9, "/system.slice/gone", 4096, 0, 2));
        let model = model_from(snap);
        let by_path = Shape {
            filter: "FOO".into(),
            ..Shape::default()
        };
        let dying_only = Shape {
            dying_only: true,
            ..Shape::default()
        };
        for (mut shape, leaf) in [
            (by_path, "/system.slice/foo.service"),
            (dying_only, "/system.slice/gone"),
        ] {
            assert_eq!(listed(&model, &shape), ["/", "/system.slice", leaf]);
            shape.layout = Layout::Flat;
            assert_eq!(listed(&model, &shape), [leaf]);
        }
    }

    #[test]
    fn collapse_hides_descendants() {
        let model = model_of(sample());
        let mut shape = Shape::default();
        shape.collapsed.insert(2);
        let l = lines(&model, &shape);
        assert_eq!(paths(&model, &l), ["/", "/system.slice", "/user.slice"]);
        assert!(l[1].collapsed && l[1].has_children);
    }

    #[test]
    fn cursor_steps_and_fits() {
        let mut c = Cursor::default();
        c.step(isize::MAX, 50);
        assert_eq!(c.selected, 49);
        c.fit(50, 10);
        assert_eq!(c.offset, 40);
        c.step(-100, 50);
        c.fit(50, 10);
        assert_eq!((c.selected, c.offset), (0, 0));
        c.step(1, 0);
        c.fit(0, 10);
        assert_eq!(c, Cursor::default());
    }

    #[test]
    fn cache_sort_orders_and_wraps() {
        assert_eq!(CacheSort::Bytes.shift(-2), CacheSort::Name);
        assert_eq!(CacheSort::Name.shift(-1), CacheSort::Change);
        let model = model_of(sample());
        let mut caches = model.cache_lines(4);
        CacheSort::Bytes.sort(&mut caches);
        assert_eq!(caches[0].cache.name, "dentry");
        CacheSort::Name.sort(&mut caches);
        assert_eq!(caches[1].cache.name, "percpu");
        CacheSort::Objects.sort(&mut caches);
        assert_eq!(caches[0].cache.name, "dentry");
    }
}
