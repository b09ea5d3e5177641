//! Installs what the build and the tests need, each step only when missing.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// The toolchain that builds the eBPF programs (it needs `-Z build-std`), named once in
/// .cargo/config.toml, which cargo passes on to `cargo xtask`.
fn ebpf_toolchain() -> anyhow::Result<String> {
    std::env::var("KMEMCG_EBPF_TOOLCHAIN").context(
        "KMEMCG_EBPF_TOOLCHAIN is unset: run this as `cargo xtask setup` inside the kmemcg \
         workspace (its .cargo/config.toml names the eBPF toolchain)",
    )
}

/// Debian packages the tests use, by the command that shows they are there: tmux drives
/// `kmemcg top` in a real terminal, Prometheus scrapes the agent (promtool checks the rules),
/// podman/buildah build the image (`cargo xtask image`) and run it with runc (crun refuses
/// hybrid cgroup hosts), systemd-analyze verifies the unit, QEMU boots other kernels with a
/// busybox initramfs (`cargo xtask vm`).
const APT_PACKAGES: &[(&str, &str)] = &[
    ("tmux", "tmux"),
    ("prometheus", "prometheus"),
    ("podman", "podman"),
    ("buildah", "buildah"),
    ("runc", "runc"),
    ("systemd-analyze", "systemd"),
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("busybox", "busybox-static"),
];

/// PyPI packages the tests use: kubernetes-validate checks the manifests against the
/// Kubernetes schemas, offline.
const PIP_PACKAGES: &[(&str, &str)] = &[("kubernetes-validate", "kubernetes-validate")];

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

/// PATH with $CARGO_HOME/bin first, where bpf-linker is installed.
pub fn path_with_cargo_bin() -> String {
    let bin = cargo_home().join("bin");
    match std::env::var("PATH") {
        Ok(path) => format!("{}:{path}", bin.display()),
        Err(_) => bin.display().to_string(),
    }
}

pub fn run() -> anyhow::Result<()> {
    let toolchain = ebpf_toolchain()?;
    ensure_rust_src(&toolchain)?;
    ensure_bpf_linker(&toolchain)?;
    ensure_apt_packages()?;
    ensure_pip_packages()?;
    ensure_kubectl()
}

/// `kubectl kustomize` renders the enforcement overlay in the tests. Debian's kubectl (1.20)
/// is too old for it, so it is not installed from there.
fn ensure_kubectl() -> anyhow::Result<()> {
    let version = output(Command::new("kubectl").args(["version", "--client", "-o", "json"]))
        .context(
            "kubectl is missing: install kubectl 1.21 or later (https://kubernetes.io/docs/tasks/tools/); \
             the tests render deploy/kubernetes-enforce with `kubectl kustomize`",
        )?;
    let minor = version
        .split("\"minor\":")
        .nth(1)
        .and_then(|r| {
            r.trim_start()
                .trim_start_matches('"')
                .split(|c: char| !c.is_ascii_digit())
                .next()
        })
        .and_then(|m| m.parse::<u32>().ok())
        .unwrap_or(0);
    if minor < 21 {
        bail!(
            "kubectl 1.{minor} is too old for `kubectl kustomize` of deploy/kubernetes-enforce: install 1.21 or later"
        );
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run_checked(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    eprintln!("xtask setup: {what}");
    let status = cmd
        .status()
        .with_context(|| format!("{what}: could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// The pinned eBPF toolchain with `rust-src`, installed if missing.
fn ensure_rust_src(toolchain: &str) -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        toolchain,
    ]));
    let installed = match installed {
        Some(installed) => installed,
        None => {
            run_checked(
                Command::new("rustup").args([
                    "toolchain",
                    "install",
                    toolchain,
                    "--profile",
                    "minimal",
                    "--component",
                    "rust-src",
                ]),
                &format!("installing the {toolchain} toolchain"),
            )?;
            return Ok(());
        }
    };
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    run_checked(
        Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", toolchain]),
        &format!("adding rust-src to {toolchain}"),
    )
}

/// bpf-linker built against the eBPF toolchain's own shared LLVM, so no system LLVM is needed.
fn ensure_bpf_linker(toolchain: &str) -> anyhow::Result<()> {
    let bin = cargo_home().join("bin/bpf-linker");
    if output(Command::new(&bin).arg("--version")).is_some() {
        return Ok(());
    }
    let sysroot =
        output(Command::new("rustc").args([&format!("+{toolchain}"), "--print", "sysroot"]))
            .context("finding the eBPF toolchain's sysroot")?;
    let lib_dir = PathBuf::from(sysroot.trim()).join("lib");
    let llvm = std::fs::read_dir(&lib_dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libLLVM.so."))
        })
        .with_context(|| format!("no libLLVM.so.* in {}", lib_dir.display()))?;
    let llvm_major = llvm
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.trim_start_matches("libLLVM.so.").split('.').next())
        .and_then(|v| v.split('-').next())
        .context("reading the LLVM version")?
        .to_string();
    // Both links matter: libLLVM.so for linking, the soname for running (rpath).
    let prefix = cargo_home().join("kmemcg-llvm");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    for link in [
        prefix_lib.join("libLLVM.so"),
        prefix_lib.join(llvm.file_name().expect("file name")),
    ] {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&llvm, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    run_checked(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--no-default-features",
                "--features",
                &format!("llvm-{llvm_major}"),
                "--root",
            ])
            .arg(cargo_home())
            .env("LLVM_PREFIX", &prefix),
        &format!("installing bpf-linker against {}", llvm.display()),
    )
}

/// The packages of (command, package) pairs whose command is not on PATH.
fn missing_packages<'a>(packages: &[(&str, &'a str)]) -> Vec<&'a str> {
    packages
        .iter()
        .filter(|(command, _)| output(Command::new("which").arg(command)).is_none())
        .map(|(_, package)| *package)
        .collect()
}

fn ensure_apt_packages() -> anyhow::Result<()> {
    let missing = missing_packages(APT_PACKAGES);
    if missing.is_empty() {
        return Ok(());
    }
    run_checked(
        Command::new("apt-get").arg("update").arg("-qq"),
        "apt-get update",
    )?;
    run_checked(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        &format!("installing {}", missing.join(" ")),
    )
}

fn ensure_pip_packages() -> anyhow::Result<()> {
    let missing = missing_packages(PIP_PACKAGES);
    if missing.is_empty() {
        return Ok(());
    }
    run_checked(
        Command::new("python3")
            .args(["-m", "pip", "install", "--quiet"])
            .args(&missing),
        &format!("installing {} (pip)", missing.join(" ")),
    )
}
