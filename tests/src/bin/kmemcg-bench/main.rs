//! kmemcg's overhead benchmark: an allocation-heavy workload in a non-root cgroup, run
//! interleaved with no tracing, with empty programs on the same memory hooks, with kmemcg
//! (programs plus the agent's sampling every second, in this process) and with the real
//! `kmemcg agent` as deploy/ configures it (pinned maps, limit rules in force). Prints
//! throughput ratios and the kernel's own run time (BPF_ENABLE_STATS) per event, in all and
//! per memory hook program.
mod deploy;
mod programs;
mod report;

use std::{
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Parser;
use kmemcg_agent::{
    baseline::EmptyPrograms,
    kernel::HostFacts,
    leaks::Leaks,
    sampler::Sampler,
    tracer::{Tracer, TracerConfig},
    truth::Truth,
};
use kmemcg_tests::{TestCgroup, Tmpfs, require_root, workload_bin};

use crate::{deploy::DeploySetup, programs::ProgramStats};

#[derive(Parser)]
struct Args {
    /// Rounds; each runs every mode once, in a rotating order.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=50))]
    rounds: u32,
    /// Seconds per run.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// kmemcg's live-object map capacity (the agent's --max-objects) in the kmemcg mode; the
    /// deploy mode keeps deploy/'s.
    #[arg(long)]
    max_objects: Option<u32>,
    /// Leave out the deploy mode (the agent as deploy/ configures it).
    #[arg(long)]
    no_deploy: bool,
    /// Seconds between the deploy agent's samples. deploy/ says 5; a run shorter than that
    /// would see no sample at all (the agent samples as it starts, before the workload), so
    /// by default it samples every second, as the kmemcg mode does.
    #[arg(long, default_value_t = 1.0)]
    deploy_interval: f64,
    /// What the bench cgroup runs: `mix` (files, sockets, pipes, percpu maps: mostly
    /// accounted objects), `messaging` (hackbench's pattern in 8 thread pairs: unaccounted
    /// skbs allocated and freed on different CPUs), `hackbench` (hackbench itself: 10 groups
    /// of 20 sender and 20 receiver processes) or `fork-exec` (`/bin/true`, over and over).
    #[arg(long, value_enum, default_value_t = Workload::Mix)]
    workload: Workload,
}

#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
enum Workload {
    Mix,
    Messaging,
    Hackbench,
    ForkExec,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Untraced,
    Empty,
    Kmemcg,
    /// kmemcg with the bench cgroup's objects recorded by call site (`kmemcg leaks`).
    Leaks,
    Deploy,
}

impl Mode {
    const ALL: [Mode; 5] = [
        Mode::Untraced,
        Mode::Empty,
        Mode::Kmemcg,
        Mode::Leaks,
        Mode::Deploy,
    ];

    fn label(self) -> &'static str {
        match self {
            Mode::Untraced => "no tracing",
            Mode::Empty => "empty programs (6 BTF tracepoints)",
            Mode::Kmemcg => "kmemcg",
            Mode::Leaks => "kmemcg, recording the cgroup's leaks",
            Mode::Deploy => "kmemcg agent (deploy config)",
        }
    }

    /// Column heading in the per-program table.
    fn short(self) -> &'static str {
        match self {
            Mode::Untraced => "untraced",
            Mode::Empty => "empty",
            Mode::Kmemcg => "kmemcg",
            Mode::Leaks => "leaks",
            Mode::Deploy => "deploy",
        }
    }
}

#[derive(Default)]
struct Results {
    ops_per_sec: Vec<f64>,
    programs: ProgramStats,
    ops: f64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    require_root();
    let started = Instant::now();
    let cgroup = TestCgroup::new("bench");
    let tmpfs = Tmpfs::new();
    let dir = tmpfs.sub("bench");
    let deploy = (!args.no_deploy)
        .then(|| DeploySetup::new(cgroup.path(), args.deploy_interval))
        .transpose()?;
    let modes: Vec<Mode> = Mode::ALL
        .into_iter()
        .filter(|&m| m != Mode::Deploy || deploy.is_some())
        .collect();
    report::header(&args, &modes, deploy.as_ref());
    // Kernel BPF statistics are on while this fd is open, and off again when it closes.
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("enabling kernel BPF statistics")?;
    let mut results: Vec<Results> = modes.iter().map(|_| Results::default()).collect();

    for round in 0..args.rounds as usize {
        for i in 0..modes.len() {
            let index = (i + round) % modes.len();
            let mode = modes[index];
            let (ops, programs, setup) = run(mode, &cgroup, &dir, &args, deploy.as_ref())
                .with_context(|| format!("round {}, {}", round + 1, mode.label()))?;
            eprintln!(
                "round {} {:<36} {ops:>10.0} ops/s (set up in {:.1} s)",
                round + 1,
                mode.label(),
                setup.as_secs_f64()
            );
            let r = &mut results[index];
            r.ops_per_sec.push(ops);
            r.ops += ops * args.seconds;
            r.programs.add(&programs);
        }
    }
    report::report(&modes, &results);
    eprintln!("benchmark took {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// One run of the workload under `mode`: ops/s, what the mode's programs ran meanwhile, and
/// how long the mode took to set up before the workload started.
fn run(
    mode: Mode,
    cgroup: &TestCgroup,
    dir: &str,
    args: &Args,
    deploy: Option<&DeploySetup>,
) -> anyhow::Result<(f64, ProgramStats, Duration)> {
    let started = Instant::now();
    let seconds = args.seconds;
    let empty = (mode == Mode::Empty)
        .then(EmptyPrograms::attach)
        .transpose()?;
    let mut sampler = if matches!(mode, Mode::Kmemcg | Mode::Leaks) {
        let mut config = TracerConfig::default();
        if let Some(max) = args.max_objects {
            config.max_objects = max;
        }
        let host = HostFacts::read()?;
        let mut tracer = Tracer::start(config, &host)?;
        let truth = Truth::start(&mut tracer, &host);
        let leaks = (mode == Mode::Leaks).then(|| {
            let mount = tracer.cgroup2_mount().to_path_buf();
            Arc::new(Leaks::new(
                &mut |name| tracer.take_map(name),
                mount,
                &host.kallsyms,
            ))
        });
        let mut sampler = Sampler::new(tracer, truth);
        if let Some(leaks) = leaks {
            leaks.start(cgroup.path(), Duration::from_secs(3600))?;
            sampler.set_leaks(leaks);
        }
        Some(sampler)
    } else {
        None
    };
    let agent = match (mode, deploy) {
        (Mode::Deploy, Some(setup)) => Some(setup.start()?),
        (Mode::Deploy, None) => bail!("the deploy mode was not set up"),
        _ => None,
    };
    let stats = |sampler: &Option<Sampler>| -> anyhow::Result<ProgramStats> {
        Ok(match (&empty, sampler, &agent) {
            (Some(e), _, _) => ProgramStats::from_named(e.program_stats_by_name()),
            (_, Some(s), _) => ProgramStats::from_named(s.tracer().program_stats_by_name()),
            (_, _, Some(a)) => a.stats()?,
            _ => ProgramStats::default(),
        })
    };
    let before = stats(&sampler)?;
    let setup = started.elapsed();
    let mut cmd = Command::new(workload_bin());
    for join in cgroup.join_dirs() {
        cmd.arg("--join").arg(join);
    }
    match args.workload {
        Workload::Mix => cmd.args(["mix", dir]),
        Workload::Messaging => cmd.arg("messaging"),
        Workload::Hackbench => cmd.arg("hackbench"),
        Workload::ForkExec => cmd.arg("fork-exec"),
    };
    let mut child = cmd
        .arg(seconds.to_string())
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
    let after = stats(&sampler)?;
    if let Some(agent) = agent {
        agent.finish()?;
    }
    let output = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let Some(ops) = text
        .split_whitespace()
        .next()
        .and_then(|n| n.parse::<f64>().ok())
    else {
        bail!("the workload printed no rate: {text}");
    };
    Ok((ops, after.since(&before), setup))
}
