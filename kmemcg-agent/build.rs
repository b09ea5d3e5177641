//! Builds kmemcg-ebpf for the BPF target so that the agent can embed the object
//! (`AYA_BUILD_SKIP=1` skips it, for `cargo check` and clippy).
use std::path::Path;

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let manifest_dir = env!("CARGO_MANIFEST_DIR");
    let ebpf_dir = Path::new(manifest_dir).join("../kmemcg-ebpf");
    let ebpf_dir = ebpf_dir.to_str().expect("the workspace path is UTF-8");
    println!("cargo:rerun-if-env-changed=KMEMCG_EBPF_TOOLCHAIN");
    // Set by .cargo/config.toml, the one place that names it.
    let toolchain = std::env::var("KMEMCG_EBPF_TOOLCHAIN").context(
        "KMEMCG_EBPF_TOOLCHAIN is unset: build inside the kmemcg workspace, whose \
         .cargo/config.toml names the eBPF toolchain",
    )?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "kmemcg-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )?;
    // With AYA_BUILD_SKIP nothing was built: embed empty objects, which the loader reports.
    for name in ["kmemcg-ebpf", "kmemcg-ebpf-empty"] {
        let object = Path::new(&std::env::var("OUT_DIR")?).join(name);
        if !object.exists() {
            std::fs::write(&object, [])?;
        }
    }
    Ok(())
}
