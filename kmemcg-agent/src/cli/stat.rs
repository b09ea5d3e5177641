//! `kmemcg stat`: a table or JSON of per-cgroup kernel memory from a running agent.
use anyhow::bail;
use clap::Args;
use comfy_table::{Cell, CellAlignment, Table, presets::NOTHING};

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
    /// Address of the agent.
    #[arg(long, default_value = DEFAULT_LISTEN, env = "KMEMCG_ADDR")]
    pub addr: String,
}

pub async fn run(args: StatArgs) -> anyhow::Result<()> {
    let mut cgroups = Client::new(&args.addr).cgroups().await?;
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
        println!("{}", cgroups_table(&cgroups));
        if args.cgroup.is_some() {
            println!();
            println!("{}", caches_table(&cgroups[0]));
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

pub fn cgroups_table(cgroups: &[CgroupUsage]) -> Table {
    let mut t = table(&[
        "CGROUP",
        "SLAB",
        "OBJECTS",
        "PERCPU",
        "ACCOUNTED",
        "UNACCOUNTED",
        "ALLOCS",
        "FREES",
        "TOP CACHE",
    ]);
    for c in cgroups {
        t.add_row(vec![
            Cell::new(&c.path),
            Cell::new(iec(c.slab_bytes)),
            Cell::new(c.slab_objects),
            Cell::new(iec(c.percpu_bytes)),
            Cell::new(iec(c.accounted_bytes)),
            Cell::new(iec(c.unaccounted_bytes)),
            Cell::new(c.allocs),
            Cell::new(c.frees),
            Cell::new(c.top_cache().map_or("-", |t| t.name.as_str()))
                .set_alignment(CellAlignment::Left),
        ]);
    }
    t
}

pub fn caches_table(cgroup: &CgroupUsage) -> Table {
    let mut t = table(&["CACHE", "BYTES", "OBJECTS", "ACCOUNTED", "ALLOCS", "FREES"]);
    for c in &cgroup.caches {
        t.add_row(vec![
            Cell::new(&c.name),
            Cell::new(iec(c.bytes)),
            Cell::new(c.objects),
            Cell::new(iec(c.accounted_bytes)),
            Cell::new(c.allocs),
            Cell::new(c.frees),
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::CacheUsage;

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
}
