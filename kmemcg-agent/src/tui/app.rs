//! The state of `kmemcg top`: the latest snapshot with rates derived from the previous one, and
//! what the user chose to see (mode, sort, filter, tree or flat, selection). Rendering reads it;
//! [`super::input`] changes it.
use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use crate::api::{CacheUsage, CgroupUsage, Snapshot, Status};

/// What the screen shows and what keys do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The cgroup table.
    Table,
    /// Typing a path filter.
    Filter,
    /// One cgroup's per-cache breakdown.
    Detail,
    /// The key reference.
    Help,
}

/// Columns the cgroup table can be sorted by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SortKey {
    Path,
    Slab,
    Percpu,
    Total,
    /// Change of slab plus percpu bytes per second.
    Change,
    /// Allocations per second.
    Allocs,
}

impl SortKey {
    pub const ALL: [SortKey; 6] = [
        SortKey::Path,
        SortKey::Slab,
        SortKey::Percpu,
        SortKey::Total,
        SortKey::Change,
        SortKey::Allocs,
    ];

    fn position(self) -> usize {
        Self::ALL.iter().position(|k| *k == self).unwrap_or(0)
    }

    /// The next column to the right (wraps).
    pub fn next(self) -> Self {
        Self::ALL[(self.position() + 1) % Self::ALL.len()]
    }

    /// The next column to the left (wraps).
    pub fn prev(self) -> Self {
        Self::ALL[(self.position() + Self::ALL.len() - 1) % Self::ALL.len()]
    }

    /// Paths sort A to Z, numbers largest first.
    pub fn default_descending(self) -> bool {
        self != SortKey::Path
    }

    pub fn name(self) -> &'static str {
        match self {
            SortKey::Path => "path",
            SortKey::Slab => "slab",
            SortKey::Percpu => "percpu",
            SortKey::Total => "total",
            SortKey::Change => "change",
            SortKey::Allocs => "allocs",
        }
    }
}

/// Columns of the per-cache view, in screen order; bytes (and so share) largest first by
/// default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheSort {
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

    fn shift(self, by: isize) -> Self {
        let n = Self::ALL.len() as isize;
        let i = Self::ALL.iter().position(|k| *k == self).unwrap_or(0) as isize;
        Self::ALL[(i + by).rem_euclid(n) as usize]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// Children indented under their parent, collapsible.
    Tree,
    /// One row per cgroup, full paths.
    Flat,
}

/// Adds the snapshot's removed cgroups as rows of their own (`alive: false`), under the
/// ancestor now charged with what they hold, so that they can be marked and listed.
fn with_dying_rows(mut snapshot: Snapshot) -> Snapshot {
    for d in std::mem::take(&mut snapshot.dying) {
        let percpu = d.caches.iter().filter(|c| c.name == "percpu");
        let (percpu_bytes, percpu_objects) =
            percpu.fold((0, 0), |(b, o), c| (b + c.bytes, o + c.objects));
        let slab_bytes = d.residual_bytes.saturating_sub(percpu_bytes);
        let slab_objects = d.residual_objects.saturating_sub(percpu_objects);
        snapshot.cgroups.push(CgroupUsage {
            id: d.id,
            path: d.path,
            alive: false,
            parent: Some(d.charged_ancestor_id),
            slab_bytes,
            slab_objects,
            percpu_bytes,
            percpu_objects,
            total_slab_bytes: slab_bytes,
            total_percpu_bytes: percpu_bytes,
            total_objects: d.residual_objects,
            caches: d.caches,
            ..Default::default()
        });
    }
    snapshot
}

/// One cgroup of the latest snapshot, with rates against the previous one.
#[derive(Clone, Debug)]
pub struct Entry {
    pub usage: CgroupUsage,
    /// Change of slab plus percpu bytes per second; `None` until two snapshots were seen.
    pub change: Option<f64>,
    /// Allocations per second; `None` until two snapshots were seen.
    pub alloc_rate: Option<f64>,
}

impl Entry {
    pub fn dying(&self) -> bool {
        !self.usage.alive
    }

    /// The value a numeric sort compares (0 for the path and for unknown rates).
    fn sort_value(&self, key: SortKey) -> f64 {
        match key {
            SortKey::Path => 0.0,
            SortKey::Slab => self.usage.slab_bytes as f64,
            SortKey::Percpu => self.usage.percpu_bytes as f64,
            SortKey::Total => self.usage.total_bytes() as f64,
            SortKey::Change => self.change.unwrap_or(0.0),
            SortKey::Allocs => self.alloc_rate.unwrap_or(0.0),
        }
    }
}

/// One line of the cgroup table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// Index into [`App::entries`].
    pub entry: usize,
    /// Indentation level in the tree view (0 in the flat view).
    pub depth: usize,
    pub has_children: bool,
    pub collapsed: bool,
    /// Byte offset in the path where the shown name starts: past the parent's path in the tree
    /// view, 0 in the flat view.
    pub label_start: usize,
}

/// Host-wide figures for the header.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Totals {
    pub slab: u64,
    pub percpu: u64,
    pub change: Option<f64>,
    pub alloc_rate: Option<f64>,
    pub dying: u64,
    pub dying_bytes: u64,
}

/// The per-cache view of one cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Detail {
    pub id: u64,
    pub path: String,
    pub selected: usize,
    pub offset: usize,
}

/// One cache of the detail view.
#[derive(Clone, Debug)]
pub struct CacheRow<'a> {
    pub cache: &'a CacheUsage,
    /// Share of the cgroup's slab plus percpu bytes, 0 to 1.
    pub share: f64,
    /// Bytes per second; `None` until two snapshots were seen.
    pub change: Option<f64>,
}

/// The previous snapshot, for rates.
#[derive(Debug, Default)]
struct Previous {
    cgroups: Vec<CgroupUsage>,
    index: HashMap<u64, usize>,
    /// Seconds between it and the current snapshot.
    dt: f64,
}

pub struct App {
    pub mode: Mode,
    pub sort: SortKey,
    pub descending: bool,
    pub view: View,
    /// Updates are ignored while paused.
    pub paused: bool,
    /// Exact byte counts instead of IEC sizes.
    pub exact: bool,
    /// Only removed (dying) cgroups.
    pub dying_only: bool,
    /// The applied path filter (case-insensitive substring); empty shows all.
    pub filter: String,
    /// What is being typed in [`Mode::Filter`].
    pub filter_input: String,
    /// Selected line of the cgroup table.
    pub selected: usize,
    /// First line shown.
    pub offset: usize,
    /// Lines the table had at the last draw (for PgUp/PgDn).
    pub page: usize,
    pub detail: Option<Detail>,
    /// Sort of the per-cache view.
    pub cache_sort: CacheSort,
    /// Where the data comes from, for the header (`agent 127.0.0.1:9847`, `standalone`).
    pub source: String,
    /// A standing notice, e.g. that standalone mode only sees allocations since it started.
    pub notice: Option<String>,
    /// The last failure to read data; cleared by the next success.
    pub error: Option<String>,
    pub delay: Duration,
    /// A snapshot with the same `updated_at` (seconds) and the same data as the current one is
    /// the same reading (the agent serves its latest sample until the next one); skip it rather
    /// than show zero rates.
    pub dedupe_by_timestamp: bool,
    /// Where [`Mode::Help`] returns to.
    help_back: Mode,
    entries: Vec<Entry>,
    index: HashMap<u64, usize>,
    status: Status,
    previous: Option<Previous>,
    received: bool,
    last_update: Option<Instant>,
    rows: Vec<Row>,
    collapsed: HashSet<u64>,
    totals: Totals,
}

impl Default for App {
    fn default() -> Self {
        Self::new(String::new(), Duration::from_secs(1))
    }
}

impl App {
    pub fn new(source: String, delay: Duration) -> Self {
        Self {
            mode: Mode::Table,
            sort: SortKey::Total,
            descending: true,
            view: View::Tree,
            paused: false,
            exact: false,
            dying_only: false,
            filter: String::new(),
            filter_input: String::new(),
            selected: 0,
            offset: 0,
            page: 10,
            detail: None,
            cache_sort: CacheSort::Bytes,
            source,
            notice: None,
            error: None,
            delay,
            dedupe_by_timestamp: true,
            help_back: Mode::Table,
            entries: Vec::new(),
            index: HashMap::new(),
            status: Status::default(),
            previous: None,
            received: false,
            last_update: None,
            rows: Vec::new(),
            collapsed: HashSet::new(),
            totals: Totals::default(),
        }
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    pub fn status(&self) -> &Status {
        &self.status
    }

    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// True once a snapshot arrived.
    pub fn received(&self) -> bool {
        self.received
    }

    pub fn entry(&self, row: &Row) -> Option<&Entry> {
        self.entries.get(row.entry)
    }

    pub fn entry_by_id(&self, id: u64) -> Option<&Entry> {
        self.index.get(&id).and_then(|i| self.entries.get(*i))
    }

    pub fn selected_entry(&self) -> Option<&Entry> {
        self.rows.get(self.selected).and_then(|r| self.entry(r))
    }

    /// Takes a new snapshot (ignored while paused).
    pub fn update(&mut self, snapshot: Snapshot, now: Instant) {
        let snapshot = with_dying_rows(snapshot);
        self.error = None;
        if self.paused {
            return;
        }
        if self.dedupe_by_timestamp
            && self.received
            && snapshot.status.updated_at != 0
            && snapshot.status.updated_at == self.status.updated_at
            && snapshot.cgroups.len() == self.entries.len()
            && snapshot
                .cgroups
                .iter()
                .zip(&self.entries)
                .all(|(new, old)| *new == old.usage)
        {
            // The same reading again: keep the rates computed from the last change.
            self.status = snapshot.status;
            return;
        }
        let selected_id = self.selected_entry().map(|e| e.usage.id);
        let old: Vec<CgroupUsage> = self.entries.drain(..).map(|e| e.usage).collect();
        let previous = match (self.received, self.last_update) {
            (true, Some(at)) => {
                let dt = now.saturating_duration_since(at).as_secs_f64();
                let index = old.iter().enumerate().map(|(i, c)| (c.id, i)).collect();
                (dt > 0.0).then_some(Previous {
                    cgroups: old,
                    index,
                    dt,
                })
            }
            _ => None,
        };
        self.entries = snapshot
            .cgroups
            .into_iter()
            .map(|usage| {
                let (change, alloc_rate) = match &previous {
                    Some(p) => {
                        let before = p.index.get(&usage.id).and_then(|i| p.cgroups.get(*i));
                        let (total, allocs) =
                            before.map_or((0, 0), |b| (b.total_bytes(), b.allocs));
                        (
                            Some((usage.total_bytes() as f64 - total as f64) / p.dt),
                            Some(usage.allocs.saturating_sub(allocs) as f64 / p.dt),
                        )
                    }
                    None => (None, None),
                };
                Entry {
                    usage,
                    change,
                    alloc_rate,
                }
            })
            .collect();
        self.index = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.usage.id, i))
            .collect();
        self.status = snapshot.status;
        self.totals = self.compute_totals(previous.as_ref());
        self.previous = previous;
        self.received = true;
        self.last_update = Some(now);
        self.rebuild_keeping(selected_id);
    }

    /// Records a failure to read data; the last snapshot stays on screen.
    pub fn set_error(&mut self, message: String) {
        self.error = Some(message);
    }

    fn compute_totals(&self, previous: Option<&Previous>) -> Totals {
        let mut t = Totals::default();
        for e in &self.entries {
            if e.dying() {
                // What a removed cgroup holds is already in its live ancestor's own figures.
                t.dying += 1;
                t.dying_bytes += e.usage.total_bytes();
            } else {
                t.slab += e.usage.slab_bytes;
                t.percpu += e.usage.percpu_bytes;
            }
        }
        if let Some(p) = previous {
            let before: u64 = p
                .cgroups
                .iter()
                .filter(|c| c.alive)
                .map(CgroupUsage::total_bytes)
                .sum();
            t.change = Some(((t.slab + t.percpu) as f64 - before as f64) / p.dt);
            t.alloc_rate = Some(self.entries.iter().filter_map(|e| e.alloc_rate).sum());
        }
        t
    }

    /// Recomputes the visible rows (filter, sort, tree) and keeps the selected cgroup
    /// selected.
    pub fn rebuild(&mut self) {
        let selected_id = self.selected_entry().map(|e| e.usage.id);
        self.rebuild_keeping(selected_id);
    }

    fn rebuild_keeping(&mut self, selected_id: Option<u64>) {
        self.rows = match self.view {
            View::Flat => self.flat_rows(),
            View::Tree => self.tree_rows(),
        };
        let found = selected_id.and_then(|id| {
            self.rows
                .iter()
                .position(|r| self.entries.get(r.entry).is_some_and(|e| e.usage.id == id))
        });
        self.selected = found.unwrap_or(self.selected);
        self.clamp_selection();
    }

    fn matches(&self, e: &Entry, needle: &str) -> bool {
        (!self.dying_only || e.dying())
            && (needle.is_empty() || e.usage.path.to_lowercase().contains(needle))
    }

    /// The filter in effect: what is being typed while filtering, else the applied one.
    fn active_filter(&self) -> String {
        if self.mode == Mode::Filter {
            self.filter_input.to_lowercase()
        } else {
            self.filter.to_lowercase()
        }
    }

    fn compare(&self, a: usize, b: usize, values: Option<&[f64]>) -> std::cmp::Ordering {
        let (ea, eb) = (&self.entries[a], &self.entries[b]);
        let by_path = ea.usage.path.cmp(&eb.usage.path);
        let ord = match self.sort {
            SortKey::Path => by_path,
            key => {
                let (va, vb) = match values {
                    Some(v) => (v[a], v[b]),
                    None => (ea.sort_value(key), eb.sort_value(key)),
                };
                va.total_cmp(&vb).then_with(|| by_path.reverse())
            }
        };
        if self.descending { ord.reverse() } else { ord }
    }

    fn flat_rows(&self) -> Vec<Row> {
        let needle = self.active_filter();
        let mut idx: Vec<usize> = (0..self.entries.len())
            .filter(|i| self.matches(&self.entries[*i], &needle))
            .collect();
        idx.sort_by(|a, b| self.compare(*a, *b, None));
        idx.into_iter()
            .map(|entry| Row {
                entry,
                depth: 0,
                has_children: false,
                collapsed: false,
                label_start: 0,
            })
            .collect()
    }

    /// The parent shown in the tree: the nearest ancestor path the data has.
    fn parents(&self) -> Vec<Option<usize>> {
        let by_path: HashMap<&str, usize> = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.usage.path.as_str(), i))
            .collect();
        self.entries
            .iter()
            .map(|e| {
                let mut path = e.usage.path.as_str();
                while path != "/" && !path.is_empty() {
                    path = match path.rfind('/') {
                        Some(0) => "/",
                        Some(i) => &path[..i],
                        None => return None,
                    };
                    if let Some(i) = by_path.get(path) {
                        return Some(*i);
                    }
                }
                None
            })
            .collect()
    }

    fn tree_rows(&self) -> Vec<Row> {
        let n = self.entries.len();
        let parents = self.parents();
        let mut children: Vec<Vec<usize>> = vec![Vec::new(); n];
        let mut roots = Vec::new();
        for (i, p) in parents.iter().enumerate() {
            match p {
                Some(p) => children[*p].push(i),
                None => roots.push(i),
            }
        }
        // A parent ranks by its whole subtree, so a heavy child pulls its parent up.
        let mut values: Vec<f64> = self
            .entries
            .iter()
            .map(|e| e.sort_value(self.sort))
            .collect();
        for i in post_order(&roots, &children) {
            if let Some(p) = parents[i] {
                values[p] += values[i];
            }
        }
        // With a filter, matches and their ancestors are shown.
        let needle = self.active_filter();
        let filtering = !needle.is_empty() || self.dying_only;
        let mut shown = vec![!filtering; n];
        if filtering {
            for i in 0..n {
                if self.matches(&self.entries[i], &needle) {
                    let mut at = Some(i);
                    while let Some(j) = at {
                        if shown[j] {
                            break;
                        }
                        shown[j] = true;
                        at = parents[j];
                    }
                }
            }
        }
        let sort = |list: &mut Vec<usize>| list.sort_by(|a, b| self.compare(*a, *b, Some(&values)));
        for list in children.iter_mut() {
            sort(list);
        }
        sort(&mut roots);

        let mut rows = Vec::new();
        let mut stack: Vec<(usize, usize)> = roots.iter().rev().map(|r| (*r, 0)).collect();
        while let Some((i, depth)) = stack.pop() {
            if !shown[i] {
                continue;
            }
            let e = &self.entries[i];
            let collapsed = self.collapsed.contains(&e.usage.id);
            let has_children = children[i].iter().any(|c| shown[*c]);
            let label_start = parents[i]
                .and_then(|p| self.entries.get(p))
                .map_or(0, |p| {
                    let len = p.usage.path.len();
                    if p.usage.path == "/" { 1 } else { len + 1 }
                })
                .min(e.usage.path.len());
            rows.push(Row {
                entry: i,
                depth,
                has_children,
                collapsed,
                label_start,
            });
            if !collapsed {
                stack.extend(children[i].iter().rev().map(|c| (*c, depth + 1)));
            }
        }
        rows
    }

    fn clamp_selection(&mut self) {
        if self.rows.is_empty() {
            self.selected = 0;
        } else if self.selected >= self.rows.len() {
            self.selected = self.rows.len() - 1;
        }
    }

    /// Moves the selection by `delta` lines, staying in the table.
    pub fn move_selection(&mut self, delta: isize) {
        match (self.mode, &mut self.detail) {
            (Mode::Detail, Some(d)) => {
                let len = self
                    .index
                    .get(&d.id)
                    .and_then(|i| self.entries.get(*i))
                    .map_or(0, |e| e.usage.caches.len());
                d.selected = step(d.selected, delta, len);
            }
            _ => self.selected = step(self.selected, delta, self.rows.len()),
        }
    }

    pub fn select_first(&mut self) {
        self.move_selection(isize::MIN);
    }

    pub fn select_last(&mut self) {
        self.move_selection(isize::MAX);
    }

    pub fn page_down(&mut self) {
        self.move_selection(self.page.max(1) as isize);
    }

    pub fn page_up(&mut self) {
        self.move_selection(-(self.page.max(1) as isize));
    }

    /// Sorts by `key`; the same key again reverses the order.
    pub fn sort_by(&mut self, key: SortKey) {
        if self.sort == key {
            self.descending = !self.descending;
        } else {
            self.sort = key;
            self.descending = key.default_descending();
        }
        self.rebuild();
    }

    pub fn sort_next(&mut self) {
        self.sort = self.sort.next();
        self.descending = self.sort.default_descending();
        self.rebuild();
    }

    pub fn sort_prev(&mut self) {
        self.sort = self.sort.prev();
        self.descending = self.sort.default_descending();
        self.rebuild();
    }

    pub fn reverse(&mut self) {
        self.descending = !self.descending;
        self.rebuild();
    }

    pub fn toggle_view(&mut self) {
        self.view = match self.view {
            View::Tree => View::Flat,
            View::Flat => View::Tree,
        };
        self.rebuild();
    }

    pub fn toggle_pause(&mut self) {
        self.paused = !self.paused;
    }

    pub fn toggle_exact(&mut self) {
        self.exact = !self.exact;
    }

    pub fn toggle_dying_only(&mut self) {
        self.dying_only = !self.dying_only;
        self.rebuild();
    }

    /// Collapses (`Some(true)`), expands (`Some(false)`) or toggles (`None`) the selected
    /// cgroup's subtree in the tree view.
    pub fn set_collapsed(&mut self, collapse: Option<bool>) {
        if self.view != View::Tree {
            return;
        }
        let Some(row) = self.rows.get(self.selected) else {
            return;
        };
        let Some(id) = self.entries.get(row.entry).map(|e| e.usage.id) else {
            return;
        };
        let collapse = collapse.unwrap_or(!self.collapsed.contains(&id));
        if collapse && row.has_children {
            self.collapsed.insert(id);
        } else {
            self.collapsed.remove(&id);
        }
        self.rebuild();
    }

    pub fn start_filter(&mut self) {
        self.filter_input = self.filter.clone();
        self.mode = Mode::Filter;
    }

    pub fn filter_push(&mut self, c: char) {
        if !c.is_control() {
            self.filter_input.push(c);
            self.rebuild();
            self.select_first_match();
        }
    }

    pub fn filter_pop(&mut self) {
        self.filter_input.pop();
        self.rebuild();
        self.select_first_match();
    }

    pub fn apply_filter(&mut self) {
        self.filter = self.filter_input.trim().to_string();
        self.filter_input.clear();
        self.mode = Mode::Table;
        self.rebuild();
        self.select_first_match();
    }

    /// Selects the first line that matches the filter itself, not an ancestor shown for
    /// context in the tree view.
    fn select_first_match(&mut self) {
        let needle = self.active_filter();
        if needle.is_empty() {
            return;
        }
        if let Some(i) = self.rows.iter().position(|r| {
            self.entries
                .get(r.entry)
                .is_some_and(|e| self.matches(e, &needle))
        }) {
            self.selected = i;
        }
    }

    pub fn clear_filter(&mut self) {
        self.filter.clear();
        self.filter_input.clear();
        self.mode = Mode::Table;
        self.rebuild();
    }

    /// Opens the per-cache view of the selected cgroup.
    pub fn drill_in(&mut self) {
        if let Some(e) = self.selected_entry() {
            self.detail = Some(Detail {
                id: e.usage.id,
                path: e.usage.path.clone(),
                selected: 0,
                offset: 0,
            });
            self.mode = Mode::Detail;
        }
    }

    /// Back from the per-cache view (or the help) to the table.
    pub fn back(&mut self) {
        match self.mode {
            Mode::Help => self.mode = self.help_back,
            _ => {
                self.detail = None;
                self.mode = Mode::Table;
            }
        }
    }

    pub fn show_help(&mut self) {
        if self.mode != Mode::Help {
            self.help_back = self.mode;
            self.mode = Mode::Help;
        }
    }

    /// The drilled-in cgroup, if it is still reported.
    pub fn detail_entry(&self) -> Option<&Entry> {
        self.detail.as_ref().and_then(|d| self.entry_by_id(d.id))
    }

    /// The caches of the drilled-in cgroup, largest first, with share and change.
    pub fn detail_rows(&self) -> Vec<CacheRow<'_>> {
        let Some(e) = self.detail_entry() else {
            return Vec::new();
        };
        let total = e.usage.total_bytes().max(1) as f64;
        let before = self.previous.as_ref().map(|p| {
            (
                p.index.get(&e.usage.id).and_then(|i| p.cgroups.get(*i)),
                p.dt,
            )
        });
        let mut rows: Vec<CacheRow<'_>> = e
            .usage
            .caches
            .iter()
            .map(|cache| {
                let change = before.map(|(b, dt)| {
                    let old = b
                        .and_then(|b| b.caches.iter().find(|c| c.name == cache.name))
                        .map_or(0, |c| c.bytes);
                    (cache.bytes as f64 - old as f64) / dt
                });
                CacheRow {
                    cache,
                    share: cache.bytes as f64 / total,
                    change,
                }
            })
            .collect();
        let by_name = |a: &CacheRow<'_>, b: &CacheRow<'_>| a.cache.name.cmp(&b.cache.name);
        match self.cache_sort {
            CacheSort::Name => rows.sort_by(by_name),
            CacheSort::Objects => rows.sort_by(|a, b| {
                (b.cache.objects.cmp(&a.cache.objects)).then_with(|| by_name(a, b))
            }),
            CacheSort::Bytes => {
                rows.sort_by(|a, b| (b.cache.bytes.cmp(&a.cache.bytes)).then_with(|| by_name(a, b)))
            }
            CacheSort::Change => rows.sort_by(|a, b| {
                let (x, y) = (a.change.unwrap_or(0.0), b.change.unwrap_or(0.0));
                y.total_cmp(&x).then_with(|| by_name(a, b))
            }),
        }
        rows
    }

    /// Sorts the per-cache view by the next column to the right (`by` 1) or left (-1).
    pub fn cache_sort_shift(&mut self, by: isize) {
        self.cache_sort = self.cache_sort.shift(by);
    }

    /// Keeps the selected line within `height` lines from `offset`.
    pub fn scroll_into_view(&mut self, height: usize) {
        self.page = height.max(1);
        let (selected, offset, len) = match (self.mode, &mut self.detail) {
            (Mode::Detail, Some(d)) | (Mode::Help, Some(d)) => {
                let len = self
                    .index
                    .get(&d.id)
                    .and_then(|i| self.entries.get(*i))
                    .map_or(0, |e| e.usage.caches.len());
                (&mut d.selected, &mut d.offset, len)
            }
            _ => (&mut self.selected, &mut self.offset, self.rows.len()),
        };
        if len == 0 {
            *selected = 0;
            *offset = 0;
            return;
        }
        *selected = (*selected).min(len - 1);
        if *selected < *offset {
            *offset = *selected;
        } else if *selected >= *offset + self.page {
            *offset = *selected + 1 - self.page;
        }
        // No empty space below the last line when the list shrank.
        *offset = (*offset).min(len.saturating_sub(self.page));
    }
}

fn step(current: usize, delta: isize, len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    let target = if delta < 0 {
        current.saturating_sub(delta.unsigned_abs())
    } else {
        current.saturating_add(delta.unsigned_abs())
    };
    target.min(len - 1)
}

/// Nodes children first, without recursion (trees can be deep).
fn post_order(roots: &[usize], children: &[Vec<usize>]) -> Vec<usize> {
    let mut out = Vec::with_capacity(children.len());
    let mut stack: Vec<(usize, bool)> = roots.iter().map(|r| (*r, false)).collect();
    while let Some((i, expanded)) = stack.pop() {
        if expanded {
            out.push(i);
        } else {
            stack.push((i, true));
            stack.extend(children[i].iter().map(|c| (*c, false)));
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn cg(id: u64, path: &str, slab: u64, percpu: u64, allocs: u64) -> CgroupUsage {
        CgroupUsage {
            id,
            path: path.into(),
            alive: true,
            slab_bytes: slab,
            slab_objects: slab / 64,
            percpu_bytes: percpu,
            allocs,
            caches: vec![
                CacheUsage {
                    name: "dentry".into(),
                    bytes: slab,
                    objects: slab / 192,
                    ..Default::default()
                },
                CacheUsage {
                    name: "percpu".into(),
                    bytes: percpu,
                    objects: 1,
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    pub fn snapshot(cgroups: Vec<CgroupUsage>, updated_at: u64) -> Snapshot {
        Snapshot {
            dying: Vec::new(),
            status: Status {
                updated_at,
                uptime_seconds: 3725,
                tracked_objects: 1234,
                cgroups: cgroups.len() as u64,
                ..Default::default()
            },
            cgroups,
        }
    }

    pub fn sample() -> Vec<CgroupUsage> {
        vec![
            cg(1, "/", 1000, 0, 10),
            cg(2, "/system.slice", 4000, 100, 20),
            cg(3, "/system.slice/foo.service", 50_000, 200, 30),
            cg(4, "/system.slice/bar.service", 9000, 8000, 40),
            cg(5, "/user.slice", 20_000, 0, 50),
        ]
    }

    pub fn app_with(cgroups: Vec<CgroupUsage>) -> App {
        let mut app = App::default();
        app.update(snapshot(cgroups, 100), Instant::now());
        app
    }

    fn paths(app: &App) -> Vec<&str> {
        app.rows()
            .iter()
            .map(|r| app.entries()[r.entry].usage.path.as_str())
            .collect()
    }

    #[test]
    fn tree_puts_children_under_parents_sorted_by_subtree() {
        let app = app_with(sample());
        assert_eq!(
            paths(&app),
            [
                "/",
                "/system.slice",
                "/system.slice/foo.service",
                "/system.slice/bar.service",
                "/user.slice",
            ]
        );
        let depths: Vec<usize> = app.rows().iter().map(|r| r.depth).collect();
        assert_eq!(depths, [0, 1, 2, 2, 1]);
        let r = &app.rows()[2];
        assert_eq!(
            &app.entries()[r.entry].usage.path[r.label_start..],
            "foo.service"
        );
    }

    #[test]
    fn flat_sorts_and_reverses() {
        let mut app = app_with(sample());
        app.toggle_view();
        assert_eq!(app.view, View::Flat);
        assert_eq!(paths(&app)[0], "/system.slice/foo.service");
        app.sort_by(SortKey::Percpu);
        assert_eq!(paths(&app)[0], "/system.slice/bar.service");
        app.sort_by(SortKey::Percpu);
        assert!(!app.descending);
        assert_eq!(paths(&app)[4], "/system.slice/bar.service");
        app.sort_by(SortKey::Path);
        assert!(!app.descending);
        assert_eq!(paths(&app)[0], "/");
        app.sort_next();
        assert_eq!(app.sort, SortKey::Slab);
        app.sort_prev();
        app.sort_prev();
        assert_eq!(app.sort, SortKey::Allocs);
    }

    #[test]
    fn filter_keeps_ancestors_in_tree_and_only_matches_in_flat() {
        let mut app = app_with(sample());
        app.start_filter();
        assert_eq!(app.mode, Mode::Filter);
        for c in "FOO".chars() {
            app.filter_push(c);
        }
        // Filtering is live while typing.
        assert_eq!(
            paths(&app),
            ["/", "/system.slice", "/system.slice/foo.service"]
        );
        assert_eq!(app.selected, 2);
        app.apply_filter();
        assert_eq!(app.mode, Mode::Table);
        assert_eq!(app.filter, "FOO");
        assert_eq!(app.selected, 2);
        app.toggle_view();
        assert_eq!(paths(&app), ["/system.slice/foo.service"]);
        app.start_filter();
        assert_eq!(app.filter_input, "FOO");
        app.clear_filter();
        assert_eq!(app.filter, "");
        assert_eq!(app.rows().len(), 5);
    }

    #[test]
    fn selection_follows_the_cgroup_across_updates_and_sorts() {
        let mut app = app_with(sample());
        app.toggle_view();
        app.move_selection(1);
        let id = app.selected_entry().map(|e| e.usage.id);
        app.sort_by(SortKey::Path);
        assert_eq!(app.selected_entry().map(|e| e.usage.id), id);
        app.update(snapshot(sample(), 101), Instant::now());
        assert_eq!(app.selected_entry().map(|e| e.usage.id), id);
        app.select_last();
        assert_eq!(app.selected, 4);
        app.move_selection(10);
        assert_eq!(app.selected, 4);
        app.select_first();
        assert_eq!(app.selected, 0);
        app.move_selection(-3);
        assert_eq!(app.selected, 0);
    }

    #[test]
    fn drill_in_and_back() {
        let mut app = app_with(sample());
        app.toggle_view();
        app.select_first();
        app.drill_in();
        assert_eq!(app.mode, Mode::Detail);
        assert_eq!(
            app.detail.as_ref().map(|d| d.path.as_str()),
            Some("/system.slice/foo.service")
        );
        let rows = app.detail_rows();
        assert_eq!(rows[0].cache.name, "dentry");
        assert!((rows[0].share - 50_000.0 / 50_200.0).abs() < 1e-9);
        app.cache_sort_shift(-2);
        assert_eq!(app.cache_sort, CacheSort::Name);
        assert_eq!(app.detail_rows()[1].cache.name, "percpu");
        app.cache_sort_shift(-1);
        assert_eq!(app.cache_sort, CacheSort::Change);
        app.show_help();
        assert_eq!(app.mode, Mode::Help);
        app.back();
        assert_eq!(app.mode, Mode::Detail);
        app.back();
        assert_eq!(app.mode, Mode::Table);
        assert!(app.detail.is_none());
    }

    #[test]
    fn rates_come_from_the_previous_snapshot() {
        let mut app = App::default();
        let t0 = Instant::now();
        app.update(snapshot(vec![cg(7, "/a", 1000, 0, 10)], 100), t0);
        assert_eq!(app.entries()[0].change, None);
        // The same reading again changes nothing.
        app.update(
            snapshot(vec![cg(7, "/a", 1000, 0, 10)], 100),
            t0 + Duration::from_secs(1),
        );
        assert_eq!(app.entries()[0].change, None);
        app.update(
            snapshot(vec![cg(7, "/a", 5000, 0, 30)], 102),
            t0 + Duration::from_secs(2),
        );
        assert_eq!(app.entries()[0].change, Some(2000.0));
        assert_eq!(app.entries()[0].alloc_rate, Some(10.0));
        assert_eq!(app.totals().change, Some(2000.0));
        // Within the same second, new data is a new reading (agents sampling faster than 1 s).
        app.update(
            snapshot(vec![cg(7, "/a", 6000, 0, 40)], 102),
            t0 + Duration::from_millis(2500),
        );
        assert_eq!(app.entries()[0].change, Some(2000.0));
        app.drill_in();
        assert_eq!(app.detail_rows()[0].change, Some(2000.0));
    }

    #[test]
    fn pause_ignores_updates() {
        let mut app = app_with(sample());
        app.toggle_pause();
        app.update(snapshot(vec![cg(9, "/x", 1, 0, 0)], 200), Instant::now());
        assert_eq!(app.entries().len(), 5);
        app.toggle_pause();
        app.update(snapshot(vec![cg(9, "/x", 1, 0, 0)], 200), Instant::now());
        assert_eq!(app.entries().len(), 1);
    }

    #[test]
    fn collapse_hides_descendants() {
        let mut app = app_with(sample());
        app.move_selection(1); // /system.slice
        app.set_collapsed(Some(true));
        assert_eq!(paths(&app), ["/", "/system.slice", "/user.slice"]);
        assert!(app.rows()[1].collapsed);
        app.set_collapsed(None);
        assert_eq!(app.rows().len(), 5);
    }

    #[test]
    fn dying_cgroups_are_counted_and_listed() {
        let mut cgroups = sample();
        cgroups[3].alive = false;
        let mut app = app_with(cgroups);
        assert_eq!(app.totals().dying, 1);
        assert_eq!(app.totals().dying_bytes, 17_000);
        app.toggle_view();
        app.toggle_dying_only();
        assert_eq!(paths(&app), ["/system.slice/bar.service"]);
    }

    #[test]
    fn the_agents_dying_list_becomes_marked_rows_not_counted_twice() {
        let mut snap = snapshot(sample(), 1);
        let live_total: u64 = snap.cgroups.iter().map(|c| c.total_bytes()).sum();
        snap.dying.push(crate::api::DyingCgroup {
            id: 999,
            path: "/system.slice/gone.service".into(),
            residual_bytes: 4096,
            residual_objects: 3,
            caches: vec![CacheUsage {
                name: "percpu".into(),
                bytes: 1024,
                objects: 1,
                ..Default::default()
            }],
            removed_at: Some(1),
            charged_ancestor_id: 2,
            charged_ancestor_path: "/system.slice".into(),
        });
        let mut app = App::default();
        app.update(snap, Instant::now());
        let t = app.totals();
        assert_eq!((t.dying, t.dying_bytes), (1, 4096));
        assert_eq!(t.slab + t.percpu, live_total);
        let gone = app.entry_by_id(999).expect("dying row");
        assert!(gone.dying());
        assert_eq!(
            (gone.usage.slab_bytes, gone.usage.percpu_bytes),
            (3072, 1024)
        );
    }

    #[test]
    fn scrolling_keeps_the_selection_visible() {
        let cgroups = (0..50).map(|i| cg(i + 10, &format!("/c{i:02}"), i * 100, 0, 0));
        let mut app = app_with(cgroups.collect());
        app.scroll_into_view(10);
        app.page_down();
        app.page_down();
        app.scroll_into_view(10);
        assert_eq!(app.selected, 20);
        assert_eq!(app.offset, 11);
        app.select_first();
        app.scroll_into_view(10);
        assert_eq!(app.offset, 0);
    }
}
