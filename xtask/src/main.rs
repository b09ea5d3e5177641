//! `cargo xtask <task>`: what a developer or CI runs.
//!
//! - `setup`: installs what the build and the tests need when it is missing (rust-src for the
//!   eBPF toolchain, bpf-linker linked against that toolchain's own LLVM, apt packages the
//!   tests use); fast when everything is there.
//! - `test`: setup, format and lint checks, build, then every test (unit and, as root, against
//!   the real kernel, then in QEMU against the kernels of `vm`'s matrix).
//! - `vm`: the integration tests inside other Linux kernels (Debian's), in QEMU.
//! - `bench`: the overhead benchmark (root).
//! - `run`: setup, build and run the agent on defaults (root).
//! - `image`: the OCI image from the release build (podman).
mod image;
mod setup;
mod vm;

use std::process::Command;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing kmemcg needs, when missing.
    Setup,
    /// Set up, check formatting and lints, build, and run every test.
    Test {
        /// Skip `cargo fmt --check` and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Skip the VM matrix (as does KMEMCG_VM=0; it also needs root and QEMU).
        #[arg(long)]
        no_vm: bool,
        /// Extra arguments for the test binaries (e.g. a test name filter).
        #[arg(last = true)]
        test_args: Vec<String>,
    },
    /// Set up, build and run the overhead benchmark (needs root).
    Bench {
        /// Extra arguments for kmemcg-bench (--rounds N, --seconds S, --no-deploy,
        /// --deploy-interval S, --max-objects N).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run the integration tests inside other kernels (Debian's), in QEMU.
    Vm(vm::VmArgs),
    /// Build the OCI image (ghcr.io/kmemcg/kmemcg:<version>) from the release build.
    Image(image::ImageArgs),
    /// Set up, build and run `kmemcg agent` (needs root).
    Run {
        /// Arguments for `kmemcg agent` (e.g. --listen 0.0.0.0:9847).
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Vm(args) => {
            setup::run()?;
            vm::run(args)
        }
        Task::Test {
            no_lint,
            no_vm,
            test_args,
        } => test(no_lint, no_vm, &test_args),
        Task::Bench { args } => {
            setup::run()?;
            build()?;
            run_binary("kmemcg-bench", &args)
        }
        Task::Image(args) => {
            setup::run()?;
            image::run(args)
        }
        Task::Run { args } => {
            setup::run()?;
            build()?;
            let mut agent_args = vec!["agent".to_string()];
            agent_args.extend(args);
            run_binary("kmemcg", &agent_args)
        }
    }
}

/// `cargo xtask test`: the host tests, then the VM matrix; one summary line over both, last.
fn test(no_lint: bool, no_vm: bool, test_args: &[String]) -> anyhow::Result<()> {
    setup::run()?;
    if !no_lint {
        cargo(&["fmt", "--all", "--check"])?;
        cargo(&[
            "clippy",
            "--release",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])?;
    }
    build()?;
    // One test at a time: the tests share the kernel (cgroups, tracepoints).
    let mut args = vec![
        "test",
        "--release",
        "--no-fail-fast",
        "--",
        "--test-threads=1",
    ];
    args.extend(test_args.iter().map(String::as_str));
    let host = cargo_test(&args)?;
    let (mut passed, mut failed) = (host.passed, host.failed);
    let mut problems = Vec::new();
    if !host.success {
        problems.push("the host tests failed".to_string());
    }
    if vm::wanted_by_test(no_vm) {
        match vm::run_for_test(test_args) {
            Ok(totals) => {
                passed += totals.passed;
                failed += totals.failed;
                if totals.kernels_failed > 0 {
                    problems.push(format!(
                        "{} kernel(s) of the VM matrix failed",
                        totals.kernels_failed
                    ));
                }
            }
            Err(e) => {
                println!("vm matrix: could not run: {e:#}");
                failed += 1;
                problems.push(format!("the VM matrix could not run: {e:#}"));
            }
        }
    }
    // The one line CI reads, last.
    println!("all tests: {passed} passed, {failed} failed");
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(())
}

fn build() -> anyhow::Result<()> {
    cargo(&["build", "--release", "--bins"])
}

pub(crate) fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(args)
        .env("PATH", setup::path_with_cargo_bin())
        .status()
        .with_context(|| format!("running {cargo} {}", args.join(" ")))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// What `cargo test` reported.
struct HostTests {
    passed: u64,
    failed: u64,
    /// cargo's exit status: false also when a test binary did not build or crashed.
    success: bool,
}

/// Runs `cargo test`, passing its output through, and sums the test binaries' results.
fn cargo_test(args: &[&str]) -> anyhow::Result<HostTests> {
    use std::io::BufRead as _;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut child = Command::new(&cargo)
        .args(args)
        .env("PATH", setup::path_with_cargo_bin())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cargo} {}", args.join(" ")))?;
    let (mut passed, mut failed) = (0u64, 0u64);
    let stdout = child.stdout.take().context("cargo test's output")?;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some((p, f)) = parse_test_result(&line) {
            passed += p;
            failed += f;
        }
    }
    let status = child.wait()?;
    if !status.success() {
        println!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(HostTests {
        passed,
        failed,
        success: status.success(),
    })
}

/// (passed, failed) of a libtest summary line:
/// `test result: ok. 6 passed; 0 failed; 0 ignored; ...`.
fn parse_test_result(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("test result: ")?;
    let count = |word: &str| {
        rest.split(';').find_map(|part| {
            part.trim()
                .strip_suffix(word)?
                .split_whitespace()
                .last()?
                .parse()
                .ok()
        })
    };
    Some((count(" passed")?, count(" failed")?))
}

fn run_binary(name: &str, args: &[String]) -> anyhow::Result<()> {
    let path = setup::workspace_root().join("target/release").join(name);
    let status = Command::new(&path)
        .args(args)
        .status()
        .with_context(|| format!("running {}", path.display()))?;
    if !status.success() {
        bail!("{name} failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_libtest_summaries() {
        let line = "test result: ok. 6 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out";
        assert_eq!(parse_test_result(line), Some((6, 1)));
        assert_eq!(parse_test_result("running 6 tests"), None);
    }
}
