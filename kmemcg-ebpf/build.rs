use which::which;

/// Rebuild when bpf-linker changes: the object it links is what the agent embeds.
fn main() {
    if let Ok(bpf_linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", bpf_linker.display());
    }
}
