//! What `kmemcg top` shows, defined once for the live view and batch mode: the cgroup
//! table's columns, the per-cache columns and the host figures of the header.
use super::{
    fmt,
    model::{CacheLine, Model, Row},
    view::{CacheSort, SortKey},
};

/// Said after the path of a removed cgroup.
pub(crate) const DYING_MARK: &str = " (dying)";

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

    /// The cell for `row`: the path in full (marked when dying), or a number.
    pub(crate) fn cell(self, row: &Row, exact: bool) -> String {
        let c = &row.cgroup;
        match self {
            Column::Path if c.is_dying() => format!("{}{DYING_MARK}", c.path()),
            Column::Path => c.path().to_string(),
            Column::Slab => fmt::size(c.slab_bytes(), exact),
            Column::Percpu => fmt::size(c.percpu_bytes(), exact),
            Column::Total => fmt::size(c.total_bytes(), exact),
            Column::Change => fmt::byte_rate(row.change, exact),
            Column::Allocs => fmt::count_rate(row.alloc_rate, exact),
            Column::TopCache => c.top_cache().map_or("-", |t| t.name.as_str()).to_string(),
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

fn arrow(descending: bool) -> &'static str {
    if descending { "▼" } else { "▲" }
}

/// Columns of one cgroup's caches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CacheColumn {
    Name,
    Objects,
    Bytes,
    Share,
    Change,
}

impl CacheColumn {
    pub(crate) const ALL: [CacheColumn; 5] = [
        CacheColumn::Name,
        CacheColumn::Objects,
        CacheColumn::Bytes,
        CacheColumn::Share,
        CacheColumn::Change,
    ];

    fn sort(self) -> Option<CacheSort> {
        match self {
            CacheColumn::Name => Some(CacheSort::Name),
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
            CacheColumn::Name => line.cache.name.clone(),
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
        figure("objects", fmt::count(s.tracked_objects as f64, exact)),
        figure("growth", format!("{}/s", fmt::byte_rate(t.change, exact))),
        figure(
            "allocs",
            format!("{}/s", fmt::count_rate(t.alloc_rate, exact)),
        ),
        Figure {
            alarming: s.dropped > 0,
            ..figure("dropped", s.dropped.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::testdata::{model_of, sample};

    #[test]
    fn cells_and_headings() {
        let model = model_of(sample());
        let foo = &model.rows()[2];
        let cells: Vec<String> = Column::ALL.iter().map(|c| c.cell(foo, false)).collect();
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
    }
}
