//! kmemcg's overhead benchmark: an allocation-heavy workload in a non-root cgroup, run
//! interleaved with no tracing, with empty programs on the same memory hooks, and with kmemcg
//! (programs plus the agent's sampling every second). Prints throughput ratios and the kernel's
//! own per-program run time (BPF_ENABLE_STATS) per event.
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Parser;
use kmemcg_agent::{
    baseline::EmptyPrograms,
    sampler::Sampler,
    tracer::{Tracer, TracerConfig},
};
use kmemcg_tests::{TestCgroup, Tmpfs, require_root, workload_bin};

#[derive(Parser)]
struct Args {
    /// Rounds; each runs every mode once, in a rotating order.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=50))]
    rounds: u32,
    /// Seconds per run.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// kmemcg's live-object map capacity (the agent's --max-objects).
    #[arg(long)]
    max_objects: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Untraced,
    Empty,
    Kmemcg,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Untraced, Mode::Empty, Mode::Kmemcg];

    fn label(self) -> &'static str {
        match self {
            Mode::Untraced => "no tracing",
            Mode::Empty => "empty programs (6 BTF tracepoints)",
            Mode::Kmemcg => "kmemcg",
        }
    }
}

#[derive(Default)]
struct Results {
    ops_per_sec: Vec<f64>,
    bpf_ns: u64,
    bpf_runs: u64,
    ops: f64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    require_root();
    let cgroup = TestCgroup::new("bench");
    let tmpfs = Tmpfs::new();
    let dir = tmpfs.sub("bench");
    // Kernel BPF statistics are on while this fd is open, and off again when it closes.
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("enabling kernel BPF statistics")?;
    let mut results: Vec<Results> = Mode::ALL.iter().map(|_| Results::default()).collect();

    for round in 0..args.rounds as usize {
        for i in 0..Mode::ALL.len() {
            let index = (i + round) % Mode::ALL.len();
            let mode = Mode::ALL[index];
            let (ops, ns, runs) = run(mode, &cgroup, &dir, &args)?;
            eprintln!("round {} {:<36} {ops:>10.0} ops/s", round + 1, mode.label());
            let r = &mut results[index];
            r.ops_per_sec.push(ops);
            r.ops += ops * args.seconds;
            r.bpf_ns += ns;
            r.bpf_runs += runs;
        }
    }
    report(&results);
    Ok(())
}

/// One run of the workload under `mode`: (ops/s, BPF ns, BPF runs).
fn run(mode: Mode, cgroup: &TestCgroup, dir: &str, args: &Args) -> anyhow::Result<(f64, u64, u64)> {
    let seconds = args.seconds;
    let empty = (mode == Mode::Empty)
        .then(EmptyPrograms::attach)
        .transpose()?;
    let mut sampler = if mode == Mode::Kmemcg {
        let mut config = TracerConfig::default();
        if let Some(max) = args.max_objects {
            config.max_objects = max;
        }
        Some(Sampler::new(Tracer::start(config)?))
    } else {
        None
    };
    let stats = |empty: &Option<EmptyPrograms>, sampler: &Option<Sampler>| match (empty, sampler) {
        (Some(e), _) => e.program_stats(),
        (_, Some(s)) => s.tracer().program_stats(),
        _ => (0, 0),
    };
    let before = stats(&empty, &sampler);
    let mut cmd = Command::new(workload_bin());
    for join in cgroup.join_dirs() {
        cmd.arg("--join").arg(join);
    }
    let mut child = cmd
        .args(["mix", dir, &seconds.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the workload")?;
    // The agent reads its maps every second while the workload runs, as in production.
    let mut next_sample = Instant::now() + Duration::from_secs(1);
    while child.try_wait()?.is_none() {
        if let Some(s) = sampler.as_mut()
            && Instant::now() >= next_sample
        {
            s.sample()?;
            next_sample += Duration::from_secs(1);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let after = stats(&empty, &sampler);
    let output = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let Some(ops) = text
        .split_whitespace()
        .next()
        .and_then(|n| n.parse::<f64>().ok())
    else {
        bail!("the workload printed no rate: {text}");
    };
    Ok((ops, after.0 - before.0, after.1 - before.1))
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn report(results: &[Results]) {
    let untraced = median(&results[0].ops_per_sec);
    let cost = |ops: f64| untraced / ops - 1.0;
    println!();
    println!("| mode | ops/s (median) | throughput vs untraced | ns per event | events per op |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (mode, r) in Mode::ALL.iter().zip(results) {
        let ops = median(&r.ops_per_sec);
        let (ns, per_op) = if r.bpf_runs > 0 {
            (
                format!("{:.1}", r.bpf_ns as f64 / r.bpf_runs as f64),
                format!("{:.1}", r.bpf_runs as f64 / r.ops),
            )
        } else {
            ("-".into(), "-".into())
        };
        println!(
            "| {} | {ops:.0} | {:.3} | {ns} | {per_op} |",
            mode.label(),
            ops / untraced
        );
    }
    let empty = cost(median(&results[1].ops_per_sec));
    let kmemcg = cost(median(&results[2].ops_per_sec));
    println!();
    println!(
        "added cost: empty programs {:.1}%, kmemcg {:.1}% ({:.2}x the empty programs' cost)",
        empty * 100.0,
        kmemcg * 100.0,
        if empty > 0.0 {
            kmemcg / empty
        } else {
            f64::NAN
        }
    );
}
