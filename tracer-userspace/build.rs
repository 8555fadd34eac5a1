//! Builds the eBPF object (the tracer-ebpf crate, for bpfel-unknown-none with nightly and
//! bpf-linker) and leaves it in OUT_DIR for `include_bytes_aligned!`. `cargo xtask build`
//! installs what this needs; a plain `cargo build` works once it is there.

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata failed")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == "tracer-ebpf")
        .ok_or_else(|| anyhow!("the workspace has no tracer-ebpf package"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("tracer-ebpf has no directory"))?;
    // The object also depends on the shared types.
    println!(
        "cargo:rerun-if-changed={}",
        root_dir.join("../tracer-common/src")
    );
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context(
        "building the eBPF object failed; it needs the nightly toolchain with rust-src and \
         bpf-linker on PATH: run `cargo xtask build` once to install them",
    )
}
