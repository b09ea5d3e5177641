//! What `kmemcg top` shows, defined once for the live view and batch mode: the cgroup
//! table's columns, the per-cache columns and the host figures of the header.
use super::{
    fmt,
    model::{CacheLine, Model, Row},
    view::{CacheSort, SortKey},
};

/// Said after the path of a removed cgroup.
pub(crate) const DYING_MARK: &str = " (dying)";

/// Put before the byte figures of a cgroup whose allocations were dropped: at least this.
pub(crate) const SHORT_MARK: &str = "≥";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Column {
    Path,
    Slab,
    Percpu,
    Total,
    Change,
    Allocs,
    TopCache,
}

impl Column {
    pub(crate) const ALL: [Column; 7] = [
        Column::Path,
        Column::Slab,
        Column::Percpu,
        Column::Total,
        Column::Change,
        Column::Allocs,
        Column::TopCache,
    ];

    /// Dropped first when the terminal is narrow; the path and TOTAL always stay.
    pub(crate) const DROP_ORDER: [Column; 5] = [
        Column::TopCache,
        Column::Allocs,
        Column::Percpu,
        Column::Slab,
        Column::Change,
    ];

    pub(crate) fn title(self) -> &'static str {
        match self {
            Column::Path => "CGROUP",
            Column::Slab => "SLAB",
            Column::Percpu => "PERCPU",
            Column::Total => "TOTAL",
            Column::Change => "CHANGE/s",
            Column::Allocs => "ALLOCS/s",
            Column::TopCache => "TOP CACHE",
        }
    }

    pub(crate) fn sort_key(self) -> Option<SortKey> {
        match self {
            Column::Path => Some(SortKey::Path),
            Column::Slab => Some(SortKey::Slab),
            Column::Percpu => Some(SortKey::Percpu),
            Column::Total => Some(SortKey::Total),
            Column::Change => Some(SortKey::Change),
            Column::Allocs => Some(SortKey::Allocs),
            Column::TopCache => None,
        }
    }

    /// Numbers are right-aligned, names left.
    pub(crate) fn numeric(self) -> bool {
        !matches!(self, Column::Path | Column::TopCache)
    }

    /// The widest a cell is drawn (cache names can be long).
    pub(crate) fn max_width(self) -> usize {
        match self {
            Column::TopCache => 18,
            _ => usize::MAX,
        }
    }

    /// The cell for `row`: the path in full (marked when dying), or a number; `subtree`
    /// figures in the tree. Byte figures that may be short say so.
    pub(crate) fn cell(self, row: &Row, exact: bool, subtree: bool) -> String {
        let c = &row.cgroup;
        let f = row.figures(subtree);
        let short = if c.unreliable() { SHORT_MARK } else { "" };
        match self {
            Column::Path if c.is_dying() => format!("{}{}", c.path(), dying_mark(c.id())),
            Column::Path => c.path().to_string(),
            Column::Slab => format!("{short}{}", fmt::size(f.slab, exact)),
            Column::Percpu => format!("{short}{}", fmt::size(f.percpu, exact)),
            Column::Total => format!("{short}{}", fmt::size(f.total(), exact)),
            Column::Change => fmt::byte_rate(f.change, exact),
            Column::Allocs => fmt::count_rate(f.alloc_rate, exact),
            Column::TopCache => c.top_cache().map_or("-".into(), |t| t.display_name()),
        }
    }

    /// The title with the sort direction when the table is sorted by it.
    pub(crate) fn heading(self, sort: SortKey, descending: bool) -> String {
        let marked = self.sort_key() == Some(sort);
        format!(
            "{}{}",
            self.title(),
            if marked { arrow(descending) } else { "" }
        )
    }
}

/// After a removed cgroup's path: several removed cgroups can have one path (a unit
/// restarted), told apart by their ids.
pub(crate) fn dying_mark(id: u64) -> String {
    format!("{DYING_MARK} #{id}")
}

fn arrow(descending: bool) -> &'static str {
    if descending { "▼" } else { "▲" }
}

/// Columns of one cgroup's caches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CacheColumn {
    Name,
    Objects,
    ObjectSize,
    Bytes,
    Share,
    Change,
}

impl CacheColumn {
    pub(crate) const ALL: [CacheColumn; 6] = [
        CacheColumn::Name,
        CacheColumn::Objects,
        CacheColumn::ObjectSize,
        CacheColumn::Bytes,
        CacheColumn::Share,
        CacheColumn::Change,
    ];

    fn sort(self) -> Option<CacheSort> {
        match self {
            CacheColumn::Name => Some(CacheSort::Name),
            CacheColumn::ObjectSize => None,
            CacheColumn::Objects => Some(CacheSort::Objects),
            CacheColumn::Bytes => Some(CacheSort::Bytes),
            CacheColumn::Share => None,
            CacheColumn::Change => Some(CacheSort::Change),
        }
    }

    /// The title, marked when the caches are sorted by it (names A to Z, numbers largest
    /// first).
    pub(crate) fn heading(self, sort: CacheSort) -> String {
        let title = match self {
            CacheColumn::Name => "CACHE",
            CacheColumn::ObjectSize => "OBJ SIZE",
            CacheColumn::Objects => "OBJECTS",
            CacheColumn::Bytes => "BYTES",
            CacheColumn::Share => "SHARE",
            CacheColumn::Change => "CHANGE/s",
        };
        match self.sort() {
            Some(s) if s == sort => format!("{title}{}", arrow(s != CacheSort::Name)),
            _ => title.to_string(),
        }
    }

    pub(crate) fn cell(self, line: &CacheLine<'_>, exact: bool) -> String {
        match self {
            CacheColumn::Name => line.cache.display_name(),
            CacheColumn::ObjectSize => {
                (line.cache.object_size).map_or("-".into(), |b| fmt::size(b, exact))
            }
            CacheColumn::Objects => fmt::count(line.cache.objects as f64, exact),
            CacheColumn::Bytes => fmt::size(line.cache.bytes, exact),
            CacheColumn::Share => format!("{:.1}%", line.share * 100.0),
            CacheColumn::Change => fmt::byte_rate(line.change, exact),
        }
    }
}

/// A host figure of the header and of batch mode's summary line.
pub(crate) struct Figure {
    pub(crate) label: &'static str,
    pub(crate) value: String,
    /// Worth a colour: allocations were dropped.
    pub(crate) alarming: bool,
}

/// Host totals of the reading (the header's second line), then what went missing or is
/// left behind (its third).
pub(crate) fn figures(model: &Model, exact: bool) -> [Figure; 7] {
    let (s, t) = (model.status(), model.totals());
    let figure = |label, value| Figure {
        label,
        value,
        alarming: false,
    };
    [
        figure("slab", fmt::size(t.slab, exact)),
        figure("percpu", fmt::size(t.percpu, exact)),
        figure("objects", {
            let mut value = fmt::count(s.tracked_objects as f64, exact);
            if s.unaccounted_sample_one_in > 1 {
                value.push_str(&format!(
                    " (unaccounted ~: 1 in {} sampled)",
                    s.unaccounted_sample_one_in
                ));
            }
            value
        }),
        figure("growth", format!("{}/s", fmt::byte_rate(t.change, exact))),
        figure(
            "allocs",
            format!("{}/s", fmt::count_rate(t.alloc_rate, exact)),
        ),
        Figure {
            alarming: s.dropped > 0,
            ..figure("dropped", dropped(s.dropped, model))
        },
        figure("dying", {
            let mut value = format!("{} ({})", t.dying, fmt::size(t.dying_bytes, exact));
            // The memory cgroups the kernel keeps, where kmemcg can list them.
            if s.kernel_memcgs.available {
                value.push_str(&format!(
                    ", kernel keeps {} ({})",
                    s.kernel_dying_memcgs,
                    fmt::size(s.kernel_dying_memcg_bytes, exact)
                ));
            }
            value
        }),
    ]
}

/// The host's drops, and how many cgroups' figures they leave short.
fn dropped(dropped: u64, model: &Model) -> String {
    let short = (model.rows().iter())
        .filter(|r| r.cgroup.unreliable())
        .count();
    match short {
        0 => dropped.to_string(),
        1 => format!("{dropped} ({SHORT_MARK}: 1 cgroup's figures may be short)"),
        n => format!("{dropped} ({SHORT_MARK}: {n} cgroups' figures may be short)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::testdata::{model_of, sample};

    #[test]
    fn cells_and_headings() {
        let model = model_of(sample());
        let foo = &model.rows()[2];
        let cells: Vec<String> = (Column::ALL.iter())
            .map(|c| c.cell(foo, false, false))
            .collect();
        assert_eq!(
            cells,
            [
                "/system.slice/foo.service",
                "48.8 KiB",
                "200 B",
                "49.0 KiB",
                "-",
                "-",
                "dentry"
            ]
        );
        assert_eq!(Column::Total.heading(SortKey::Total, true), "TOTAL▼");
        assert_eq!(Column::Path.heading(SortKey::Path, false), "CGROUP▲");
        assert_eq!(Column::TopCache.heading(SortKey::Total, true), "TOP CACHE");
        assert_eq!(CacheColumn::Name.heading(CacheSort::Name), "CACHE▲");
        assert_eq!(CacheColumn::Bytes.heading(CacheSort::Bytes), "BYTES▼");
        assert_eq!(CacheColumn::Share.heading(CacheSort::Bytes), "SHARE");
        let f = figures(&model, true);
        assert_eq!((f[0].label, f[0].value.as_str()), ("slab", "84000"));
        assert_eq!(f[6].value, "0 (0)");
        // The tree shows /system.slice's subtree: its own 4.0 KiB plus its children's.
        let system = &model.rows()[1];
        assert_eq!(Column::Total.cell(system, true, false), "4100");
        assert_eq!(Column::Total.cell(system, true, true), "71300");
    }

    #[test]
    fn figures_that_may_be_short_say_so() {
        let mut cgroups = sample();
        cgroups[2].unreliable = true;
        let mut snap = crate::tui::testdata::snapshot(cgroups, 1);
        snap.status.dropped = 7;
        let model = crate::tui::testdata::model_from(snap);
        let foo = &model.rows()[2];
        assert_eq!(Column::Total.cell(foo, false, false), "≥49.0 KiB");
        assert_eq!(Column::Slab.cell(foo, false, false), "≥48.8 KiB");
        assert_eq!(
            Column::Total.cell(&model.rows()[3], false, false),
            "16.6 KiB"
        );
        let f = figures(&model, false);
        assert_eq!(f[5].value, "7 (≥: 1 cgroup's figures may be short)");
        assert!(f[5].alarming);
    }
}
