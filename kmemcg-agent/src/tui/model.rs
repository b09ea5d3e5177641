//! What `kmemcg top` shows, built in one step from a snapshot and the model before it: one row
//! per cgroup (live, or removed but still holding objects), rates against the previous
//! reading, host totals and the cgroup tree. The live view and batch mode both read it.
use std::{collections::HashMap, time::Instant};

use crate::api::{CacheUsage, CgroupUsage, DyingCgroup, Snapshot, Status};

/// A cgroup as the agent reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Cgroup {
    Live(CgroupUsage),
    /// Removed; its objects are still alive and charged to a live ancestor.
    Dying(DyingCgroup),
}

impl Cgroup {
    pub(crate) fn id(&self) -> u64 {
        match self {
            Cgroup::Live(u) => u.id,
            Cgroup::Dying(d) => d.id,
        }
    }

    pub(crate) fn path(&self) -> &str {
        match self {
            Cgroup::Live(u) => &u.path,
            Cgroup::Dying(d) => &d.path,
        }
    }

    pub(crate) fn is_dying(&self) -> bool {
        matches!(self, Cgroup::Dying(_))
    }

    /// The cgroup it is shown under: its parent, or for a removed one the live ancestor now
    /// charged with what it holds.
    fn parent_id(&self) -> Option<u64> {
        match self {
            Cgroup::Live(u) => u.parent,
            Cgroup::Dying(d) => Some(d.charged_ancestor_id),
        }
    }

    /// Largest first; for a removed cgroup only its largest few.
    pub(crate) fn caches(&self) -> &[CacheUsage] {
        match self {
            Cgroup::Live(u) => &u.caches,
            Cgroup::Dying(d) => &d.caches,
        }
    }

    /// Bytes and objects of the percpu rows among the caches.
    fn percpu_in_caches(&self) -> (u64, u64) {
        self.caches()
            .iter()
            .filter(|c| c.kind.is_percpu())
            .fold((0, 0), |(b, o), c| (b + c.bytes, o + c.objects))
    }

    pub(crate) fn slab_bytes(&self) -> u64 {
        match self {
            Cgroup::Live(u) => u.slab_bytes,
            Cgroup::Dying(d) => d.residual_bytes.saturating_sub(self.percpu_in_caches().0),
        }
    }

    pub(crate) fn slab_objects(&self) -> u64 {
        match self {
            Cgroup::Live(u) => u.slab_objects,
            Cgroup::Dying(d) => d.residual_objects.saturating_sub(self.percpu_in_caches().1),
        }
    }

    /// For a removed cgroup, what its listed caches say (the agent lists its largest few).
    pub(crate) fn percpu_bytes(&self) -> u64 {
        match self {
            Cgroup::Live(u) => u.percpu_bytes,
            Cgroup::Dying(_) => self.percpu_in_caches().0,
        }
    }

    /// Slab plus percpu bytes charged to it (own, not recursive).
    pub(crate) fn total_bytes(&self) -> u64 {
        match self {
            Cgroup::Live(u) => u.total_bytes(),
            Cgroup::Dying(d) => d.residual_bytes,
        }
    }

    /// Allocations since kmemcg started; a removed cgroup has no tasks left to allocate.
    fn allocs(&self) -> u64 {
        match self {
            Cgroup::Live(u) => u.allocs,
            Cgroup::Dying(_) => 0,
        }
    }

    /// The cache holding the most bytes, if any holds some.
    pub(crate) fn top_cache(&self) -> Option<&CacheUsage> {
        self.caches().first().filter(|c| c.bytes > 0)
    }

    /// Allocations were dropped while it (or a descendant) allocated: its figures may be short.
    pub(crate) fn unreliable(&self) -> bool {
        matches!(self, Cgroup::Live(u) if u.unreliable)
    }
}

/// Bytes and rates of a row: its own, or its subtree's.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Figures {
    pub(crate) slab: u64,
    pub(crate) percpu: u64,
    pub(crate) change: Option<f64>,
    pub(crate) alloc_rate: Option<f64>,
}

impl Figures {
    pub(crate) fn total(&self) -> u64 {
        self.slab + self.percpu
    }

    fn add(&mut self, other: &Figures) {
        self.slab += other.slab;
        self.percpu += other.percpu;
        let sum = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
        };
        self.change = sum(self.change, other.change);
        self.alloc_rate = sum(self.alloc_rate, other.alloc_rate);
    }
}

/// One cgroup of the latest reading, with rates against the previous one.
#[derive(Clone, Debug)]
pub(crate) struct Row {
    pub(crate) cgroup: Cgroup,
    /// Change of slab plus percpu bytes per second; `None` until two readings were seen.
    pub(crate) change: Option<f64>,
    /// Allocations per second; `None` until two readings were seen.
    pub(crate) alloc_rate: Option<f64>,
    /// This cgroup and its descendants, as the tree shows a parent (like systemd-cgtop).
    pub(crate) subtree: Figures,
}

impl Row {
    /// Its own figures.
    pub(crate) fn own(&self) -> Figures {
        Figures {
            slab: self.cgroup.slab_bytes(),
            percpu: self.cgroup.percpu_bytes(),
            change: self.change,
            alloc_rate: self.alloc_rate,
        }
    }

    /// What a layout shows: the subtree's figures in the tree, its own when flat.
    pub(crate) fn figures(&self, subtree: bool) -> Figures {
        if subtree {
            self.subtree.clone()
        } else {
            self.own()
        }
    }
}

/// Host-wide figures.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Totals {
    /// Own bytes of the live cgroups (which include what removed ones still hold).
    pub(crate) slab: u64,
    pub(crate) percpu: u64,
    pub(crate) change: Option<f64>,
    pub(crate) alloc_rate: Option<f64>,
    /// Removed cgroups still holding objects, and what they hold.
    pub(crate) dying: u64,
    pub(crate) dying_bytes: u64,
}

/// One cache of a cgroup, with its share and change.
#[derive(Clone, Debug)]
pub(crate) struct CacheLine<'a> {
    pub(crate) cache: &'a CacheUsage,
    /// Share of the cgroup's slab plus percpu bytes, 0 to 1.
    pub(crate) share: f64,
    /// Bytes per second; `None` until two readings were seen.
    pub(crate) change: Option<f64>,
}

/// The cgroup hierarchy among the rows, from each row's parent id.
#[derive(Clone, Debug, Default)]
struct Tree {
    parent: Vec<Option<usize>>,
    children: Vec<Vec<usize>>,
    roots: Vec<usize>,
    /// Children before their parents.
    post_order: Vec<usize>,
    /// Byte offset in the path past the parent's path (`foo.service` under `/system.slice`).
    label_start: Vec<usize>,
}

/// The reading before, for the caches' rates.
#[derive(Debug, Default)]
struct Previous {
    rows: Vec<Row>,
    index: HashMap<u64, usize>,
    /// Seconds between it and this reading.
    dt: f64,
}

#[derive(Debug, Default)]
pub(crate) struct Model {
    /// Live cgroups first, then removed ones.
    rows: Vec<Row>,
    index: HashMap<u64, usize>,
    tree: Tree,
    totals: Totals,
    status: Status,
    previous: Option<Previous>,
    /// When the reading arrived; `None` before the first.
    taken_at: Option<Instant>,
    readings: u64,
}

impl Model {
    /// The model of `snapshot`, with rates against this one. With `skip_same`, a snapshot
    /// that is this reading again (the agent serves its latest sample until the next one)
    /// keeps this model and its rates, rather than showing zero rates.
    pub(crate) fn next(self, snapshot: Snapshot, now: Instant, skip_same: bool) -> Model {
        if skip_same && self.is_same_reading(&snapshot) {
            return Model {
                status: snapshot.status,
                ..self
            };
        }
        let dt = self
            .taken_at
            .map(|at| now.saturating_duration_since(at).as_secs_f64())
            .filter(|dt| *dt > 0.0);
        let cgroups = (snapshot.cgroups.into_iter().map(Cgroup::Live))
            .chain(snapshot.dying.into_iter().map(Cgroup::Dying));
        let rows: Vec<Row> = cgroups
            .map(|cgroup| {
                let (change, alloc_rate) = match dt {
                    Some(dt) => {
                        let before = self.row_by_id(cgroup.id()).map(|r| &r.cgroup);
                        let (total, allocs) =
                            before.map_or((0, 0), |b| (b.total_bytes(), b.allocs()));
                        (
                            Some((cgroup.total_bytes() as f64 - total as f64) / dt),
                            Some(cgroup.allocs().saturating_sub(allocs) as f64 / dt),
                        )
                    }
                    None => (None, None),
                };
                Row {
                    cgroup,
                    change,
                    alloc_rate,
                    subtree: Figures::default(),
                }
            })
            .collect();
        let mut index = HashMap::with_capacity(rows.len());
        for (i, r) in rows.iter().enumerate() {
            // A live cgroup wins over a removed one of the same id.
            index.entry(r.cgroup.id()).or_insert(i);
        }
        let live_before = self.totals.slab + self.totals.percpu;
        let totals = totals(&rows, dt.map(|dt| (live_before, dt)));
        let tree = Tree::build(&rows, &index);
        let mut rows = rows;
        add_up_subtrees(&mut rows, &tree);
        let previous = dt.map(|dt| Previous {
            rows: self.rows,
            index: self.index,
            dt,
        });
        Model {
            rows,
            index,
            tree,
            totals,
            status: snapshot.status,
            previous,
            taken_at: Some(now),
            readings: self.readings + 1,
        }
    }

    fn is_same_reading(&self, snapshot: &Snapshot) -> bool {
        let (live, dying) = self
            .rows
            .split_at(snapshot.cgroups.len().min(self.rows.len()));
        self.taken_at.is_some()
            && snapshot.status.updated_at != 0
            && snapshot.status.updated_at == self.status.updated_at
            && live.len() == snapshot.cgroups.len()
            && dying.len() == snapshot.dying.len()
            && (live.iter().zip(&snapshot.cgroups))
                .all(|(old, new)| matches!(&old.cgroup, Cgroup::Live(u) if u == new))
            && (dying.iter().zip(&snapshot.dying))
                .all(|(old, new)| matches!(&old.cgroup, Cgroup::Dying(d) if d == new))
    }

    /// True once a reading arrived.
    pub(crate) fn received(&self) -> bool {
        self.taken_at.is_some()
    }

    /// How many readings led to this model; a reading seen again does not count.
    pub(crate) fn readings(&self) -> u64 {
        self.readings
    }

    pub(crate) fn rows(&self) -> &[Row] {
        &self.rows
    }

    pub(crate) fn row_by_id(&self, id: u64) -> Option<&Row> {
        self.index.get(&id).and_then(|i| self.rows.get(*i))
    }

    pub(crate) fn totals(&self) -> &Totals {
        &self.totals
    }

    pub(crate) fn status(&self) -> &Status {
        &self.status
    }

    /// The row shown above row `i` in the tree.
    pub(crate) fn parent(&self, i: usize) -> Option<usize> {
        self.tree.parent.get(i).copied().flatten()
    }

    pub(crate) fn children(&self, i: usize) -> &[usize] {
        self.tree.children.get(i).map_or(&[], Vec::as_slice)
    }

    pub(crate) fn roots(&self) -> &[usize] {
        &self.tree.roots
    }

    /// Every row, children before their parents.
    #[cfg(test)]
    pub(crate) fn post_order(&self) -> &[usize] {
        &self.tree.post_order
    }

    /// Row `i`'s name under its tree parent: `foo.service` under `/system.slice`.
    pub(crate) fn tree_label(&self, i: usize) -> &str {
        let Some(row) = self.rows.get(i) else {
            return "";
        };
        let path = row.cgroup.path();
        let start = self.tree.label_start.get(i).copied().unwrap_or(0);
        match path.get(start..) {
            Some(label) if !label.is_empty() => label,
            _ => path,
        }
    }

    /// The caches of the cgroup `id`, in the agent's order, with share and change.
    pub(crate) fn cache_lines(&self, id: u64) -> Vec<CacheLine<'_>> {
        let Some(row) = self.row_by_id(id) else {
            return Vec::new();
        };
        let total = row.cgroup.total_bytes().max(1) as f64;
        let before = (self.previous.as_ref()).map(|p| {
            let row = p.index.get(&id).and_then(|i| p.rows.get(*i));
            (row.map(|r| r.cgroup.caches()), p.dt)
        });
        (row.cgroup.caches().iter())
            .map(|cache| {
                let change = before.map(|(b, dt)| {
                    let old = b
                        .and_then(|b| b.iter().find(|c| c.name == cache.name))
                        .map_or(0, |c| c.bytes);
                    (cache.bytes as f64 - old as f64) / dt
                });
                CacheLine {
                    cache,
                    share: cache.bytes as f64 / total,
                    change,
                }
            })
            .collect()
    }
}

/// Sets each row's subtree figures: its own plus its live descendants' subtrees. A removed
/// cgroup adds nothing to its ancestor, whose own bytes already hold what it holds.
fn add_up_subtrees(rows: &mut [Row], tree: &Tree) {
    let mut sums: Vec<Figures> = rows.iter().map(Row::own).collect();
    for &i in &tree.post_order {
        if rows[i].cgroup.is_dying() {
            continue;
        }
        if let Some(p) = tree.parent[i] {
            let child = sums[i].clone();
            sums[p].add(&child);
        }
    }
    for (row, sum) in rows.iter_mut().zip(sums) {
        row.subtree = sum;
    }
}

/// Host totals; `before` is the previous reading's live bytes and the seconds since.
fn totals(rows: &[Row], before: Option<(u64, f64)>) -> Totals {
    let mut t = Totals::default();
    for r in rows {
        if r.cgroup.is_dying() {
            // What a removed cgroup holds is already in its live ancestor's own figures.
            t.dying += 1;
            t.dying_bytes += r.cgroup.total_bytes();
        } else {
            t.slab += r.cgroup.slab_bytes();
            t.percpu += r.cgroup.percpu_bytes();
        }
    }
    if let Some((bytes, dt)) = before {
        t.change = Some(((t.slab + t.percpu) as f64 - bytes as f64) / dt);
        t.alloc_rate = Some(rows.iter().filter_map(|r| r.alloc_rate).sum());
    }
    t
}

impl Tree {
    fn build(rows: &[Row], index: &HashMap<u64, usize>) -> Tree {
        let n = rows.len();
        let mut parent: Vec<Option<usize>> = (rows.iter().enumerate())
            .map(|(i, r)| {
                let p = r.cgroup.parent_id().and_then(|id| index.get(&id).copied());
                p.filter(|p| *p != i)
            })
            .collect();
        break_cycles(&mut parent);
        let mut children = vec![Vec::new(); n];
        let mut roots = Vec::new();
        for (i, p) in parent.iter().enumerate() {
            match p {
                Some(p) => children[*p].push(i),
                None => roots.push(i),
            }
        }
        let post_order = post_order(&roots, &children);
        let label_start = (rows.iter().zip(&parent))
            .map(|(r, p)| label_start(r.cgroup.path(), p.map(|p| rows[p].cgroup.path())))
            .collect();
        Tree {
            parent,
            children,
            roots,
            post_order,
            label_start,
        }
    }
}

/// Parent links that loop (inconsistent data) would hide their rows from the tree: each
/// loop is cut, so that its first row met becomes a root.
fn break_cycles(parent: &mut [Option<usize>]) {
    #[derive(Clone, Copy, PartialEq)]
    enum Seen {
        No,
        OnPath,
        Done,
    }
    let mut seen = vec![Seen::No; parent.len()];
    let mut path = Vec::new();
    for start in 0..parent.len() {
        let mut at = start;
        loop {
            match seen[at] {
                Seen::Done => break,
                Seen::OnPath => {
                    parent[at] = None;
                    break;
                }
                Seen::No => {
                    seen[at] = Seen::OnPath;
                    path.push(at);
                    match parent[at] {
                        Some(p) => at = p,
                        None => break,
                    }
                }
            }
        }
        for i in path.drain(..) {
            seen[i] = Seen::Done;
        }
    }
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

/// Where the name under `parent` starts in `path`: past `parent/`, or 0 when `path` is not
/// below it by name.
fn label_start(path: &str, parent: Option<&str>) -> usize {
    match parent {
        Some("/") if path.len() > 1 && path.starts_with('/') => 1,
        Some(p) if path.starts_with(p) && path[p.len()..].starts_with('/') => p.len() + 1,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::tui::testdata::{cg, dying, model_from, model_of, sample, snapshot};

    fn labels(model: &Model) -> Vec<(&str, Option<&str>)> {
        (0..model.rows().len())
            .map(|i| {
                let parent = model.parent(i).map(|p| model.rows()[p].cgroup.path());
                (model.tree_label(i), parent)
            })
            .collect()
    }

    #[test]
    fn the_tree_follows_parent_ids_not_path_strings() {
        let mut cgroups = sample();
        // A path that does not say its parent: the id decides.
        cgroups[4].parent = Some(2);
        let model = model_of(cgroups);
        assert_eq!(
            labels(&model),
            [
                ("/", None),
                ("system.slice", Some("/")),
                ("foo.service", Some("/system.slice")),
                ("bar.service", Some("/system.slice")),
                ("/user.slice", Some("/system.slice")),
            ]
        );
        assert_eq!(model.roots(), [0]);
        assert_eq!(model.children(1), [2, 3, 4]);
        // Children first.
        let order = model.post_order();
        let at = |i: usize| order.iter().position(|x| *x == i);
        assert!(at(2) < at(1) && at(1) < at(0), "{order:?}");
    }

    #[test]
    fn dying_rows_are_native_under_the_charged_ancestor() {
        let mut snap = snapshot(sample(), 1);
        let live_total: u64 = snap.cgroups.iter().map(|c| c.total_bytes()).sum();
        snap.dying
            .push(dying(999, "/system.slice/a/gone.service", 4096, 1024, 2));
        let model = model_from(snap);
        let t = model.totals();
        assert_eq!((t.dying, t.dying_bytes), (1, 4096));
        // Not counted twice: the ancestor's own bytes already hold it.
        assert_eq!(t.slab + t.percpu, live_total);
        let gone = &model.row_by_id(999).expect("dying row").cgroup;
        assert!(gone.is_dying());
        assert!(matches!(gone, Cgroup::Dying(d) if d.removed_at == Some(1)));
        assert_eq!((gone.slab_bytes(), gone.percpu_bytes()), (3072, 1024));
        let i = model.rows().len() - 1;
        assert_eq!(model.parent(i), Some(1));
        assert_eq!(model.tree_label(i), "a/gone.service");
    }

    #[test]
    fn rates_come_from_the_previous_reading() {
        let t0 = Instant::now();
        let m = Model::default().next(snapshot(vec![cg(7, "/a", 1000, 0, 10)], 100), t0, true);
        assert!(m.received());
        assert_eq!(m.rows()[0].change, None);
        assert_eq!(m.totals().change, None);
        // The same reading again changes nothing.
        let m = m.next(
            snapshot(vec![cg(7, "/a", 1000, 0, 10)], 100),
            t0 + Duration::from_secs(1),
            true,
        );
        assert_eq!(m.rows()[0].change, None);
        assert_eq!(m.readings(), 1);
        let m = m.next(
            snapshot(vec![cg(7, "/a", 5000, 0, 30)], 102),
            t0 + Duration::from_secs(2),
            true,
        );
        assert_eq!(m.rows()[0].change, Some(2000.0));
        assert_eq!(m.rows()[0].alloc_rate, Some(10.0));
        assert_eq!(m.totals().change, Some(2000.0));
        assert_eq!(m.totals().alloc_rate, Some(10.0));
        assert_eq!(m.cache_lines(7)[0].change, Some(2000.0));
        // Within the same second, new data is a new reading (agents sampling faster than 1 s).
        let m = m.next(
            snapshot(vec![cg(7, "/a", 6000, 0, 40)], 102),
            t0 + Duration::from_millis(2500),
            true,
        );
        assert_eq!(m.rows()[0].change, Some(2000.0));
        // Without skipping, the same reading is a reading of no change.
        let m = m.next(
            snapshot(vec![cg(7, "/a", 6000, 0, 40)], 102),
            t0 + Duration::from_secs(3),
            false,
        );
        assert_eq!(m.rows()[0].change, Some(0.0));
    }

    #[test]
    fn a_parent_adds_up_its_live_subtree() {
        let mut snap = snapshot(sample(), 1);
        snap.dying.push(dying(9, "/system.slice/gone", 4096, 0, 2));
        let model = model_from(snap);
        let own: u64 = (model.rows().iter())
            .filter(|r| !r.cgroup.is_dying())
            .map(|r| r.cgroup.total_bytes())
            .sum();
        let root = model.row_by_id(1).expect("root");
        // Everything live, once: the removed cgroup's bytes are in /system.slice's own.
        assert_eq!(root.subtree.total(), own);
        let system = model.row_by_id(2).expect("system.slice");
        let kids: u64 = [3, 4]
            .iter()
            .map(|id| model.row_by_id(*id).expect("child").cgroup.total_bytes())
            .sum();
        assert_eq!(system.subtree.total(), system.cgroup.total_bytes() + kids);
        let gone = model.row_by_id(9).expect("dying");
        assert_eq!(gone.subtree.total(), 4096);
    }

    #[test]
    fn cache_lines_have_shares() {
        let model = model_of(sample());
        let lines = model.cache_lines(3);
        assert_eq!(lines[0].cache.name, "dentry");
        assert!((lines[0].share - 50_000.0 / 50_200.0).abs() < 1e-9);
        assert_eq!(lines[0].change, None);
        assert!(model.cache_lines(12345).is_empty());
    }

    #[test]
    fn looping_or_missing_parents_still_show_every_row() {
        let mut cgroups = sample();
        cgroups[1].parent = Some(3); // /system.slice under its own child
        cgroups[4].parent = Some(777); // not in the data
        let model = model_of(cgroups);
        assert_eq!(model.post_order().len(), 5);
        assert!(model.roots().contains(&4));
        assert!(model.roots().len() >= 3, "{:?}", model.roots());
    }
}
