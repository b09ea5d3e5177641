//! `cargo xtask image`: kmemcg's OCI image from the release build.
//!
//! The binary links glibc dynamically, so the image holds it and the libraries `ldd` lists,
//! copied from the machine that built it (so their versions are the ones it was linked
//! against), on `FROM scratch` (deploy/image/Containerfile). Built with podman (buildah)
//! with `--timestamp 0`: the same inputs give the same image id.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::setup::workspace_root;

/// The repository the manifests in deploy/ pull from.
pub const REPOSITORY: &str = "ghcr.io/kmemcg/kmemcg";

#[derive(Debug, Args)]
pub struct ImageArgs {
    /// Image name [default: ghcr.io/kmemcg/kmemcg:<version>, the tag deploy/ names].
    #[arg(long)]
    pub tag: Option<String>,
    /// Use target/release/kmemcg as it is instead of building it first.
    #[arg(long)]
    pub no_build: bool,
    /// Also write the image to this OCI archive (e.g. to copy it to a node or a registry).
    #[arg(long, value_name = "FILE")]
    pub archive: Option<PathBuf>,
}

pub fn default_tag() -> String {
    format!("{REPOSITORY}:{}", env!("CARGO_PKG_VERSION"))
}

pub fn run(args: ImageArgs) -> anyhow::Result<()> {
    if !args.no_build {
        crate::cargo(&["build", "--release", "--bins"])?;
    }
    let root = workspace_root();
    let binary = root.join("target/release/kmemcg");
    let context = root.join("target/image");
    stage(&binary, &context)?;
    let tag = args.tag.unwrap_or_else(default_tag);
    let status = Command::new("podman")
        .args([
            "build",
            "--timestamp",
            "0",
            "--layers=false",
            "--pull=never",
            "--file",
        ])
        .arg(root.join("deploy/image/Containerfile"))
        .args([
            "--build-arg",
            &format!("VERSION={}", env!("CARGO_PKG_VERSION")),
        ])
        .args(["--tag", &tag])
        .arg(&context)
        .status()
        .context("running podman build (cargo xtask setup installs podman)")?;
    if !status.success() {
        bail!("podman build of {tag} failed ({status})");
    }
    if let Some(archive) = &args.archive {
        let _ = std::fs::remove_file(archive);
        let status = Command::new("podman")
            .args(["save", "--format", "oci-archive", "--output"])
            .arg(archive)
            .arg(&tag)
            .status()
            .context("running podman save")?;
        if !status.success() {
            bail!(
                "podman save of {tag} to {} failed ({status})",
                archive.display()
            );
        }
    }
    println!("{tag}");
    Ok(())
}

/// Copies the binary to rootfs/usr/local/bin and each library it loads to the same path in
/// rootfs/ (symlinks resolved: the image gets the files under the names the loader asks for).
fn stage(binary: &Path, context: &Path) -> anyhow::Result<()> {
    if !binary.exists() {
        bail!(
            "{} is not built: run `cargo build --release --bins`",
            binary.display()
        );
    }
    let rootfs = context.join("rootfs");
    if rootfs.exists() {
        std::fs::remove_dir_all(&rootfs)
            .with_context(|| format!("removing the old {}", rootfs.display()))?;
    }
    let ldd = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    if !ldd.status.success() {
        bail!(
            "ldd {} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&ldd.stderr)
        );
    }
    let libraries = libraries(&String::from_utf8_lossy(&ldd.stdout))?;
    let mut files = vec![(binary.to_path_buf(), PathBuf::from("usr/local/bin/kmemcg"))];
    files.extend(libraries.into_iter().map(|lib| {
        let inside = lib.strip_prefix("/").unwrap_or(&lib).to_path_buf();
        (lib, inside)
    }));
    for (from, inside) in files {
        let to = rootfs.join(&inside);
        std::fs::create_dir_all(to.parent().expect("a file in a directory"))?;
        std::fs::copy(&from, &to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    }
    Ok(())
}

/// The absolute paths of the shared objects in `ldd` output (the vDSO has none).
pub(crate) fn libraries(ldd: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for line in ldd.lines() {
        let line = line.trim();
        if line.contains("not found") {
            bail!("a library of kmemcg is missing on this machine: {line}");
        }
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match line.split_once(" => ") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            found.push(PathBuf::from(path));
        }
    }
    if found.is_empty() {
        bail!("ldd listed no libraries: is kmemcg statically linked? Then drop this staging");
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_libraries_ldd_lists() {
        let out = "\tlinux-vdso.so.1 (0x00007f657a282000)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f657a251000)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f657973e000)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f657a284000)\n";
        let libs = libraries(out).expect("libraries");
        assert_eq!(
            libs,
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert!(libraries("\tlibfoo.so => not found\n").is_err());
        assert_eq!(
            default_tag(),
            format!("ghcr.io/kmemcg/kmemcg:{}", env!("CARGO_PKG_VERSION"))
        );
    }
}
