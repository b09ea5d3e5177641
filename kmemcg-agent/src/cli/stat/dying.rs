//! `kmemcg stat --dying`: removed cgroups, what kmemcg still tracks of them and what the
//! kernel still keeps.
use comfy_table::{Cell, Table};

use super::{StatArgs, table};
use crate::{
    api::{DyingCgroup, Status},
    client::Client,
    timefmt,
    units::iec,
};

pub async fn run(args: &StatArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.addr);
    let mut dying = client.dying().await?;
    dying.sort_by_key(|d| {
        std::cmp::Reverse(d.kernel_memcg.as_ref().map_or(0, |k| k.charged_bytes) + d.residual_bytes)
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&dying)?);
        return Ok(());
    }
    let status = client.status().await?;
    println!("{}", dying_table(&dying));
    println!();
    println!("{}", summary(&status));
    Ok(())
}

/// Characters of a reason the table shows (`--json` has it whole).
const REASON_CHARS: usize = 100;

fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

fn bytes(value: Option<u64>) -> String {
    value.map_or_else(|| "-".into(), iec)
}

pub(super) fn dying_table(dying: &[DyingCgroup]) -> Table {
    let mut t = table(&[
        "CGROUP", "TRACKED", "KERNEL", "CHARGED", "SHMEM", "FILE", "ANON", "REMOVED", "REASON",
    ]);
    for d in dying {
        let k = d.kernel_memcg.as_ref();
        let kept = match k {
            Some(k) if k.alive_in_kernel => "kept",
            Some(_) => "freed",
            None => "?",
        };
        let removed = d
            .kernel_memcg
            .as_ref()
            .and_then(|k| k.removed_at)
            .or(d.removed_at)
            .map_or_else(
                || "before start".into(),
                |t| timefmt::local_datetime(t as f64),
            );
        t.add_row(vec![
            Cell::new(&d.path),
            Cell::new(iec(d.residual_bytes)),
            Cell::new(kept),
            Cell::new(bytes(k.map(|k| k.charged_bytes))),
            Cell::new(bytes(k.and_then(|k| k.shmem_bytes))),
            Cell::new(bytes(k.and_then(|k| k.file_bytes))),
            Cell::new(bytes(k.and_then(|k| k.anon_bytes))),
            Cell::new(removed),
            Cell::new(k.map_or_else(String::new, |k| cut(&k.reason, REASON_CHARS))),
        ]);
    }
    t
}

fn summary(status: &Status) -> String {
    let k = &status.kernel_memcgs;
    if !k.available {
        return format!(
            "The kernel's memory cgroups cannot be listed on this host: {}",
            k.reason.as_deref().unwrap_or("unknown reason")
        );
    }
    let mut line = format!(
        "The kernel keeps {} memory cgroups of removed cgroups: {} charged, about {} of their \
         own structures.",
        status.kernel_dying_memcgs,
        iec(status.kernel_dying_memcg_bytes),
        iec(k.own_bytes_estimate)
    );
    if let Some(why) = &k.stats_reason {
        line.push_str(&format!(" Note: {why}."));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::KernelMemcgState;

    #[test]
    fn a_kept_memcg_shows_its_charge_and_reason() {
        let row = DyingCgroup {
            path: "/gone".into(),
            kernel_memcg: Some(KernelMemcgState {
                alive_in_kernel: true,
                charged_bytes: 1 << 20,
                shmem_bytes: Some(1 << 20),
                reason: "tmpfs/shmem files still charged: /tmp/t/f (1024 KiB)".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let text = dying_table(&[row]).to_string();
        assert!(text.contains("/gone"), "{text}");
        assert!(text.contains("kept"), "{text}");
        assert!(text.contains("1.0 MiB") || text.contains("1 MiB"), "{text}");
        assert!(text.contains("before start"), "{text}");
        assert!(text.contains("/tmp/t/f"), "{text}");
        assert_eq!(cut("abcdef", 3), "abc…");
        assert_eq!(cut("abc", 3), "abc");
    }
}
