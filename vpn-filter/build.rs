//! Builds the XDP object (the `vpn-filter-ebpf` crate) so the controller can embed it with
//! `include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vpn-filter.bpf.o"))`, and the
//! benchmark-only programs as `vpn-filter-bench.bpf.o`.
//!
//! When: whenever the eBPF or common crate's sources, manifests or the lock file change.
//! How: `rustup run nightly cargo build --release --target bpfel-unknown-none -Z build-std=core`
//! in a separate target directory (`target/ebpf`, so the nested cargo never waits on the outer
//! one's lock), with the environment of the outer cargo removed (a `cargo clippy` or a stable
//! `RUSTC` must not leak into the nightly BPF build).
//! Needs: the nightly toolchain with `rust-src`, and `bpf-linker`. `cargo xtask build`
//! installs both (into `target/tools`); this script looks there first, then on `PATH`, and
//! fails with that instruction if neither has it. It never falls back to a stale object.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    if let Err(e) = run() {
        // cargo prints this verbatim; keep it actionable.
        panic!("building the XDP object failed:\n{e}");
    }
}

fn run() -> Result<(), String> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let root = manifest_dir
        .parent()
        .ok_or("vpn-filter has no parent directory")?
        .to_path_buf();
    let out_dir = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    for rel in [
        "vpn-filter-ebpf/src",
        "vpn-filter-ebpf/Cargo.toml",
        "vpn-filter-common/src",
        "vpn-filter-common/Cargo.toml",
        "Cargo.lock",
        "Cargo.toml",
        // The eBPF target's link flags (bpf-linker's memory-intrinsic lowering).
        ".cargo/config.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(rel).display());
    }
    println!("cargo:rerun-if-env-changed=VPN_FILTER_TOOLS_DIR");

    let tools = env::var_os("VPN_FILTER_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/tools"));
    let mut path = vec![tools.join("bin")];
    path.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
    let path = env::join_paths(path).map_err(|e| e.to_string())?;
    if !on_path(&path, "bpf-linker") {
        return Err(format!(
            "bpf-linker not found in {} or on PATH.\nRun `cargo xtask build` once: it adds rust-src to the nightly toolchain and builds bpf-linker into target/tools.",
            tools.join("bin").display()
        ));
    }

    let target_dir = root.join("target/ebpf");
    let mut cmd = Command::new("rustup");
    cmd.current_dir(&root)
        .args(["run", "nightly", "cargo", "build", "--release", "--locked"])
        .args(["--package", "vpn-filter-ebpf", "--bins"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir);
    for (k, _) in env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CARGO")
            || k.starts_with("RUSTC")
            || k == "RUSTFLAGS"
            || k == "RUSTUP_TOOLCHAIN"
            || k == "RUSTDOC"
        {
            cmd.env_remove(k.as_ref());
        }
    }
    cmd.env("PATH", &path);
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run rustup: {e}"))?;
    if !status.success() {
        return Err(format!(
            "nightly cargo build of vpn-filter-ebpf failed ({status}); see the output above"
        ));
    }
    // The controller's program, and the benchmark-only programs (`filter::BENCH_OBJECT`).
    for (bin, object) in [
        ("vpn-filter-xdp", "vpn-filter.bpf.o"),
        ("vpn-filter-bench-progs", "vpn-filter-bench.bpf.o"),
    ] {
        let obj = target_dir.join("bpfel-unknown-none/release").join(bin);
        std::fs::copy(&obj, out_dir.join(object))
            .map_err(|e| format!("cannot copy {}: {e}", obj.display()))?;
    }
    Ok(())
}

fn on_path(path: &std::ffi::OsStr, exe: &str) -> bool {
    env::split_paths(path).any(|d| is_file(&d.join(exe)))
}

fn is_file(p: &Path) -> bool {
    p.metadata().map(|m| m.is_file()).unwrap_or(false)
}
