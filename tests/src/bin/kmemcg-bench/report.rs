//! What the bench prints: its configuration first, so that a pasted result says what it
//! measured; then the modes' throughput and their programs' cost, in all and per program.
use kmemcg_agent::tracer::TracerConfig;

use crate::{
    Args, Mode, Results,
    deploy::DeploySetup,
    programs::{GROUPS, Runs},
};

pub fn header(args: &Args, modes: &[Mode], deploy: Option<&DeploySetup>) {
    println!(
        "kmemcg-bench: --rounds {} --seconds {} --workload {}: each round runs the workload \
         (kmemcg-workload) for that long under every mode once, in a rotating order",
        args.rounds,
        args.seconds,
        format!("{:?}", args.workload).to_lowercase()
    );
    let labels: Vec<&str> = modes.iter().map(|m| m.label()).collect();
    println!("modes: {}", labels.join(" | "));
    let max_objects = args
        .max_objects
        .unwrap_or_else(|| TracerConfig::default().max_objects);
    println!(
        "{}: programs loaded by this process, maps read every 1 s, max_objects {max_objects}",
        Mode::Kmemcg.label()
    );
    if let Some(deploy) = deploy {
        let mut lines = deploy.describe().into_iter();
        if let Some(first) = lines.next() {
            println!("{}: {first}", Mode::Deploy.label());
        }
        for line in lines {
            println!("{line}");
        }
    }
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// ns per run and runs per op (with `decimals`), or `-` where nothing ran.
fn per_run(runs: Runs, ops: f64, decimals: usize) -> (String, String) {
    if runs.count > 0 {
        (
            format!("{:.1}", runs.ns as f64 / runs.count as f64),
            format!("{:.decimals$}", runs.count as f64 / ops),
        )
    } else {
        ("-".into(), "-".into())
    }
}

pub fn report(modes: &[Mode], results: &[Results]) {
    let of = |mode: Mode| modes.iter().position(|&m| m == mode).map(|i| &results[i]);
    let Some(untraced) = of(Mode::Untraced).map(|r| median(&r.ops_per_sec)) else {
        return;
    };
    let cost = |ops: f64| untraced / ops - 1.0;
    println!();
    println!("| mode | ops/s (median) | throughput vs untraced | ns per event | events per op |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (mode, r) in modes.iter().zip(results) {
        let ops = median(&r.ops_per_sec);
        let (ns, per_op) = per_run(r.programs.total, r.ops, 1);
        println!(
            "| {} | {ops:.0} | {:.3} | {ns} | {per_op} |",
            mode.label(),
            ops / untraced
        );
    }
    let added = |mode| of(mode).map(|r| cost(median(&r.ops_per_sec)));
    let (Some(empty), Some(kmemcg)) = (added(Mode::Empty), added(Mode::Kmemcg)) else {
        return;
    };
    let times_empty = |c: f64| if empty > 0.0 { c / empty } else { f64::NAN };
    println!();
    println!(
        "added cost: empty programs {:.1}%, kmemcg {:.1}% ({:.2}x the empty programs' cost)",
        empty * 100.0,
        kmemcg * 100.0,
        times_empty(kmemcg)
    );
    for mode in [Mode::Leaks, Mode::Deploy] {
        if let Some(cost) = added(mode) {
            println!(
                "added cost: {} {:.1}% ({:.2}x the empty programs' cost)",
                mode.label(),
                cost * 100.0,
                times_empty(cost)
            );
        }
    }
    per_program(modes, results);
}

/// Each memory hook program and group: the kernel's run time per run, and runs per op.
fn per_program(modes: &[Mode], results: &[Results]) {
    let traced: Vec<(Mode, &Results)> = modes
        .iter()
        .copied()
        .zip(results)
        .filter(|(m, _)| *m != Mode::Untraced)
        .collect();
    println!();
    println!(
        "Per program: the kernel's run time per run (BPF_ENABLE_STATS, ns/run) and runs per \
         workload op (runs/op), all runs summed"
    );
    println!();
    let mut heading = String::from("| program |");
    let mut rule = String::from("| --- |");
    for (mode, _) in &traced {
        heading.push_str(&format!(" {0} ns/run | {0} runs/op |", mode.short()));
        rule.push_str(" ---: | ---: |");
    }
    println!("{heading}");
    println!("{rule}");
    for (group, members) in GROUPS {
        for &hook in members {
            row(hook, &traced, |r| r.programs.sum_of(&[hook]));
        }
        let name = format!("{group} ({})", members.join(" + "));
        row(&name, &traced, |r| r.programs.sum_of(members));
    }
}

fn row(name: &str, traced: &[(Mode, &Results)], runs: impl Fn(&Results) -> Runs) {
    let mut line = format!("| {name} |");
    for (_, r) in traced {
        let (ns, per_op) = per_run(runs(r), r.ops, 3);
        line.push_str(&format!(" {ns} | {per_op} |"));
    }
    println!("{line}");
}
