//! `kmemcg stat`: a table or JSON of per-cgroup kernel memory from a running agent.
use std::io::IsTerminal as _;

use anyhow::bail;
use clap::Args;
use comfy_table::{Cell, CellAlignment, Table, presets::NOTHING};

mod dying;

use crate::{
    api::{CgroupUsage, DEFAULT_LISTEN},
    client::Client,
    units::iec,
};

#[derive(Debug, Args)]
pub struct StatArgs {
    /// Print JSON (the API's fields) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Only this cgroup (path from the cgroup root, e.g. /system.slice/foo.service), with its
    /// per-cache breakdown.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<String>,
    /// Full cgroup paths: no shortened container ids, no fitting to the terminal's width.
    #[arg(long)]
    pub full: bool,
    /// Removed cgroups instead: those whose objects kmemcg still tracks and those whose
    /// memory cgroup the kernel still keeps, with what charges it and why.
    #[arg(long, conflicts_with = "cgroup")]
    pub dying: bool,
    /// Address of the agent.
    #[arg(long, default_value = DEFAULT_LISTEN, env = "KMEMCG_ADDR")]
    pub addr: String,
}

pub async fn run(args: StatArgs) -> anyhow::Result<()> {
    if args.dying {
        return dying::run(&args).await;
    }
    let client = Client::new(&args.addr);
    let mut cgroups = client.cgroups().await?;
    if let Some(path) = &args.cgroup {
        let path = crate::cgroup_path::normalize(path).map_err(anyhow::Error::msg)?;
        cgroups.retain(|c| c.path == path);
        if cgroups.is_empty() {
            bail!(
                "the agent has no data for cgroup {path}: no task in it has allocated kernel \
                 memory since the agent started, or no such cgroup exists"
            );
        }
    }
    cgroups.sort_by_key(|c| std::cmp::Reverse(c.total_bytes()));
    if args.json {
        let out = if args.cgroup.is_some() {
            serde_json::to_string_pretty(&cgroups[0])?
        } else {
            serde_json::to_string_pretty(&cgroups)?
        };
        println!("{out}");
    } else {
        let width = (!args.full && std::io::stdout().is_terminal())
            .then(|| crossterm::terminal::size().ok())
            .flatten()
            .map(|(columns, _)| usize::from(columns));
        println!("{}", fitted_cgroups_table(&cgroups, !args.full, width));
        if let Some(note) = short_note(&cgroups) {
            println!("{note}");
        }
        // The table stands without it: an agent that cannot say leaves the note out.
        if let Some(note) = client.status().await.ok().and_then(|s| s.sampling_note()) {
            println!("{note}");
        }
        if args.cgroup.is_some() {
            println!();
            println!("{}", caches_table(&cgroups[0]));
            println!();
            println!("{}", kernel_line(&cgroups[0]));
        }
    }
    Ok(())
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(NOTHING).set_header(header.to_vec());
    for i in 1..header.len() {
        if let Some(col) = t.column_mut(i) {
            col.set_cell_alignment(CellAlignment::Right);
        }
    }
    t
}

/// Container ids (64 hex digits in Kubernetes and Docker paths) to their first 12, as
/// `docker ps` and `crictl ps` show them.
fn shorten_ids(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= 32 {
            out.push_str(&run[..12]);
            out.push('…');
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in path.chars() {
        if c.is_ascii_hexdigit() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

/// `path` in at most `max` characters, the middle replaced by `…` (as systemd-cgtop does): the
/// top of the hierarchy and the leaf stay readable.
fn ellipsize(path: &str, max: usize) -> String {
    let chars: Vec<char> = path.chars().collect();
    if chars.len() <= max || max < 5 {
        return path.to_string();
    }
    let head = (max - 1) / 3;
    let tail = max - 1 - head;
    let mut out: String = chars[..head].iter().collect();
    out.push('…');
    out.extend(&chars[chars.len() - tail..]);
    out
}

/// A column of the cgroups table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StatColumn {
    Cgroup,
    Slab,
    Objects,
    Percpu,
    Accounted,
    Unaccounted,
    Allocs,
    Frees,
    TopCache,
}

impl StatColumn {
    const ALL: [StatColumn; 9] = [
        StatColumn::Cgroup,
        StatColumn::Slab,
        StatColumn::Objects,
        StatColumn::Percpu,
        StatColumn::Accounted,
        StatColumn::Unaccounted,
        StatColumn::Allocs,
        StatColumn::Frees,
        StatColumn::TopCache,
    ];

    /// Left out first when the terminal is narrow (`--full` or `--json` give them all).
    const DROP_ORDER: [StatColumn; 6] = [
        StatColumn::Frees,
        StatColumn::Allocs,
        StatColumn::Unaccounted,
        StatColumn::Objects,
        StatColumn::Accounted,
        StatColumn::TopCache,
    ];

    fn title(self) -> &'static str {
        match self {
            StatColumn::Cgroup => "CGROUP",
            StatColumn::Slab => "SLAB",
            StatColumn::Objects => "OBJECTS",
            StatColumn::Percpu => "PERCPU",
            StatColumn::Accounted => "ACCOUNTED",
            StatColumn::Unaccounted => "UNACCOUNTED",
            StatColumn::Allocs => "ALLOCS",
            StatColumn::Frees => "FREES",
            StatColumn::TopCache => "TOP CACHE",
        }
    }

    /// The cell of `c`; byte figures that may be short are marked.
    fn cell(self, c: &CgroupUsage) -> String {
        let bytes = |b: u64| {
            let mark = if c.unreliable { SHORT_MARK } else { "" };
            format!("{mark}{}", iec(b))
        };
        match self {
            StatColumn::Cgroup => c.path.clone(),
            StatColumn::Slab => bytes(c.slab_bytes),
            StatColumn::Objects => c.slab_objects.to_string(),
            StatColumn::Percpu => bytes(c.percpu_bytes),
            StatColumn::Accounted => bytes(c.accounted_bytes),
            StatColumn::Unaccounted => bytes(c.unaccounted_bytes),
            StatColumn::Allocs => c.allocs.to_string(),
            StatColumn::Frees => c.frees.to_string(),
            StatColumn::TopCache => c.top_cache().map_or("-".into(), |t| t.display_name()),
        }
    }

    /// The total row's cell: the sum of the rows.
    fn total(self, cgroups: &[CgroupUsage]) -> String {
        let sum = |f: fn(&CgroupUsage) -> u64| cgroups.iter().map(f).sum::<u64>();
        match self {
            StatColumn::Cgroup => format!("TOTAL ({} cgroups)", cgroups.len()),
            StatColumn::Slab => iec(sum(|c| c.slab_bytes)),
            StatColumn::Objects => sum(|c| c.slab_objects).to_string(),
            StatColumn::Percpu => iec(sum(|c| c.percpu_bytes)),
            StatColumn::Accounted => iec(sum(|c| c.accounted_bytes)),
            StatColumn::Unaccounted => iec(sum(|c| c.unaccounted_bytes)),
            StatColumn::Allocs => sum(|c| c.allocs).to_string(),
            StatColumn::Frees => sum(|c| c.frees).to_string(),
            StatColumn::TopCache => String::new(),
        }
    }
}

/// Put before byte figures that allocations dropped (a full map) may leave short.
const SHORT_MARK: &str = "≥";

/// The paths give up characters down to this before columns are left out.
const MIN_PATH: usize = 24;

/// The cgroups table with container ids shortened (`shorten`), fitted to `width` columns when
/// given: paths ellipsized down to [`MIN_PATH`] characters, then the least needed columns left
/// out.
pub fn fitted_cgroups_table(cgroups: &[CgroupUsage], shorten: bool, width: Option<usize>) -> Table {
    let mut rows = cgroups.to_vec();
    if shorten {
        for c in &mut rows {
            c.path = shorten_ids(&c.path);
        }
    }
    let mut columns = StatColumn::ALL.to_vec();
    let table = cgroups_table_of(&rows, &columns);
    let Some(width) = width else {
        return table;
    };
    let widest = |t: &Table| t.lines().map(|l| l.chars().count()).max().unwrap_or(0);
    if widest(&table) <= width {
        return table;
    }
    let longest = (rows.iter().map(|c| c.path.chars().count()))
        .max()
        .unwrap_or(0);
    let mut drop = StatColumn::DROP_ORDER.iter();
    loop {
        let table = cgroups_table_of(&rows, &columns);
        let over = widest(&table).saturating_sub(width);
        let max = longest.saturating_sub(over).max(MIN_PATH);
        let fitted: Vec<CgroupUsage> = (rows.iter())
            .map(|c| CgroupUsage {
                path: ellipsize(&c.path, max),
                ..c.clone()
            })
            .collect();
        let table = cgroups_table_of(&fitted, &columns);
        match drop.next() {
            Some(column) if widest(&table) > width => columns.retain(|c| c != column),
            _ => return table,
        }
    }
}

#[cfg(test)]
fn cgroups_table(cgroups: &[CgroupUsage]) -> Table {
    cgroups_table_of(cgroups, &StatColumn::ALL)
}

/// One row per cgroup and, for more than one, a total: the own figures of different cgroups
/// never overlap, so their sum is what the listed cgroups hold.
fn cgroups_table_of(cgroups: &[CgroupUsage], columns: &[StatColumn]) -> Table {
    let titles: Vec<&str> = columns.iter().map(|c| c.title()).collect();
    let mut t = table(&titles);
    if let Some(i) = columns.iter().position(|c| *c == StatColumn::TopCache)
        && let Some(col) = t.column_mut(i)
    {
        col.set_cell_alignment(CellAlignment::Left);
    }
    for c in cgroups {
        t.add_row(columns.iter().map(|col| Cell::new(col.cell(c))));
    }
    if cgroups.len() > 1 {
        t.add_row(columns.iter().map(|col| Cell::new(col.total(cgroups))));
    }
    t
}

/// Says what the mark on short figures means, when a listed cgroup has them.
fn short_note(cgroups: &[CgroupUsage]) -> Option<String> {
    let short = cgroups.iter().filter(|c| c.unreliable).count();
    (short > 0).then(|| {
        format!(
            "{SHORT_MARK} {short} of {} cgroups may hold more than shown: allocations were \
             dropped (a full map) while they or their descendants allocated",
            cgroups.len()
        )
    })
}

/// The caches holding something now; those with no live object (only past allocations) are
/// counted in a last line instead of listed as 0 B.
/// What the kernel's memcg charges the cgroup, beside kmemcg's accounted bytes.
fn kernel_line(c: &CgroupUsage) -> String {
    let Some(k) = &c.kernel else {
        return "kernel: no figure (no memory cgroup at this path)".into();
    };
    let charged = k.kernel_bytes.map_or("-".into(), iec);
    let drift = k.drift_bytes.map_or("-".into(), |d| {
        let sign = if d < 0 { "-" } else { "+" };
        format!("{sign}{}", iec(d.unsigned_abs()))
    });
    format!(
        "kernel ({}): {charged} charged; kmemcg's accounted {} (recursive), drift {drift}",
        k.source,
        iec(c.total_accounted_bytes)
    )
}

pub fn caches_table(cgroup: &CgroupUsage) -> Table {
    let mut t = table(&[
        "CACHE",
        "BYTES",
        "OBJECTS",
        "OBJ SIZE",
        "ACCOUNTED",
        "ALLOCS",
        "FREES",
    ]);
    let empty = cgroup.caches.iter().filter(|c| c.bytes == 0).count();
    for c in cgroup.caches.iter().filter(|c| c.bytes > 0) {
        t.add_row(vec![
            Cell::new(c.display_name()),
            Cell::new(iec(c.bytes)),
            Cell::new(c.objects),
            Cell::new(c.object_size.map_or("-".into(), iec)),
            Cell::new(iec(c.accounted_bytes)),
            Cell::new(c.allocs),
            Cell::new(c.frees),
        ]);
    }
    if empty > 0 {
        let noun = if empty == 1 { "cache" } else { "caches" };
        t.add_row(vec![format!("({empty} {noun} with nothing live)")]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::CacheUsage;

    #[test]
    fn the_kernel_line_says_where_there_is_no_figure() {
        let mut c = CgroupUsage {
            total_accounted_bytes: 2 << 20,
            ..Default::default()
        };
        assert!(kernel_line(&c).contains("no figure"));
        c.kernel = Some(Box::new(crate::api::KernelMemory {
            source: "memory.kmem.usage_in_bytes".into(),
            kernel_bytes: Some(3 << 20),
            drift_bytes: Some(-(1 << 20)),
            ..Default::default()
        }));
        let line = kernel_line(&c);
        assert!(
            line.contains("3 MiB charged") && line.contains("drift -1 MiB"),
            "{line}"
        );
    }

    #[test]
    fn tables_show_iec_sizes() {
        let c = CgroupUsage {
            id: 5,
            path: "/a".into(),
            alive: true,
            slab_bytes: 3 << 20,
            slab_objects: 10,
            caches: vec![CacheUsage {
                name: "dentry".into(),
                bytes: 3 << 20,
                objects: 10,
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = cgroups_table(std::slice::from_ref(&c)).to_string();
        assert!(text.contains("/a"), "{text}");
        assert!(text.contains("3 MiB"), "{text}");
        assert!(text.contains("dentry"), "{text}");
        let text = caches_table(&c).to_string();
        assert!(text.contains("dentry") && text.contains("10"), "{text}");
    }

    const POD: &str = "/kubepods.slice/kubepods-burstable.slice/\
        kubepods-burstable-pod0f9c6f5e_2b7d_4c1e_9a3b_8d2e1f0a4b6c.slice/\
        cri-containerd-4f8a1c2b3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f.scope";

    fn usage(path: &str, slab: u64) -> CgroupUsage {
        CgroupUsage {
            path: path.into(),
            alive: true,
            slab_bytes: slab,
            slab_objects: 1,
            allocs: 2,
            ..Default::default()
        }
    }

    #[test]
    fn kubernetes_paths_fit_the_terminal_and_a_total_sums_the_rows() {
        let rows = [
            usage(POD, 2 << 20),
            usage("/system.slice/foo.service", 1 << 20),
        ];
        let full = fitted_cgroups_table(&rows, false, None).to_string();
        assert!(full.contains(POD), "{full}");
        let short = fitted_cgroups_table(&rows, true, None).to_string();
        assert!(
            short.contains("cri-containerd-4f8a1c2b3d4e….scope"),
            "{short}"
        );
        // The pod uid (with underscores) is not a container id: kept.
        assert!(short.contains("pod0f9c6f5e_2b7d"), "{short}");
        let fitted = fitted_cgroups_table(&rows, true, Some(120)).to_string();
        for line in fitted.lines() {
            assert!(
                line.chars().count() <= 120,
                "{} columns: {line}",
                line.len()
            );
        }
        assert!(
            fitted.contains("/kubepods.slic") && fitted.contains("4e….scope"),
            "{fitted}"
        );
        assert!(
            fitted.contains("TOTAL (2 cgroups)") && fitted.contains("3 MiB"),
            "{fitted}"
        );
        let one = fitted_cgroups_table(&rows[..1], true, None).to_string();
        assert!(!one.contains("TOTAL"), "{one}");
    }

    #[test]
    fn eighty_columns_leave_out_columns_rather_than_wrap() {
        let mut rows = vec![
            usage(POD, 2 << 30),
            usage("/system.slice/systemd-journald.service", 123_456_789),
        ];
        rows[0].caches = vec![CacheUsage {
            name: "kmalloc-cg-1k".into(),
            bytes: 2 << 30,
            ..Default::default()
        }];
        rows[0].allocs = 123_456_789_012;
        rows[0].frees = 123_456_789_000;
        rows[0].unreliable = true;
        let text = fitted_cgroups_table(&rows, true, Some(80)).to_string();
        for line in text.lines() {
            assert!(line.chars().count() <= 80, "{line}\n{text}");
        }
        let head = text.lines().next().expect("header");
        for kept in ["CGROUP", "SLAB", "PERCPU", "TOP CACHE"] {
            assert!(head.contains(kept), "{kept}: {text}");
        }
        assert!(!head.contains("FREES"), "{text}");
        assert!(
            text.contains("≥2 GiB") && text.contains("kmalloc-cg-1k"),
            "{text}"
        );
        let note = short_note(&rows).expect("a note");
        assert!(note.starts_with("≥ 1 of 2 cgroups"), "{note}");
        assert!(short_note(&rows[1..]).is_none());
        // Wide enough: everything.
        let wide = fitted_cgroups_table(&rows, true, Some(300)).to_string();
        assert!(
            wide.contains("FREES") && wide.contains("UNACCOUNTED"),
            "{wide}"
        );
    }

    #[test]
    fn caches_with_nothing_live_are_counted_not_listed() {
        let mut c = usage("/a", 4096);
        c.caches = vec![
            CacheUsage {
                name: "dentry".into(),
                bytes: 4096,
                objects: 21,
                ..Default::default()
            },
            CacheUsage {
                name: "kmalloc-64".into(),
                bytes: 0,
                allocs: 7,
                ..Default::default()
            },
        ];
        let text = caches_table(&c).to_string();
        assert!(text.contains("dentry"), "{text}");
        assert!(!text.contains("kmalloc-64"), "{text}");
        assert!(text.contains("(1 cache with nothing live)"), "{text}");
    }
}
