//! `cargo xtask`: the project's build, run, test, dist, demo, bench and accuracy entry points.
//!
//! Everything that needs the eBPF toolchain first runs [`bootstrap`], which makes sure the
//! nightly toolchain has `rust-src` and that `bpf-linker` is built against the nightly
//! toolchain's own libLLVM in `target/tools` (nothing but crates is downloaded).
//!
//! xtask deliberately does not depend on the vpn-filter crates: their build needs the
//! toolchain this program installs.

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{anyhow, bail, Context as _, Result};
use clap::{Parser, Subcommand};

const BPF_LINKER_VERSION: &str = "0.13.0";

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "vpn-filter build, run, test, dist, demo, bench and accuracy"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the eBPF toolchain pieces (rust-src, bpf-linker) if missing.
    Bootstrap,
    /// Build the XDP object and the controller.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build, then run the controller (as root) with the given arguments,
    /// e.g. `cargo xtask run -- run --iface eth0 --registry feed.json`.
    Run {
        #[arg(long)]
        release: bool,
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Everything CI checks: rustfmt, clippy (userspace and the eBPF crate for the BPF
    /// target), unit tests, and the privileged integration tests (root required).
    Test {
        /// Extra arguments for the integration test binaries (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Release artifacts in target/dist: shell completions and man pages (clap_complete,
    /// clap_mangen, through the controller's hidden `generate-assets`), and a .deb (cargo-deb:
    /// binary, systemd unit, example config, man pages, completions). Installs cargo-deb into
    /// target/tools if missing.
    Dist,
    /// A throwaway network-namespace lab: a registered and an unregistered client send real
    /// VPN handshakes through a gateway running vpn-filter. Ctrl-C tears it down.
    Demo {
        /// Keep the lab up after the scenario until Ctrl-C.
        #[arg(long)]
        hold: bool,
    },
    /// Accuracy report: recall per VPN family on every fixture capture (tests/fixtures, and
    /// tests/fixtures/consumer when present) and the false positives of each protocol's rules
    /// on the false-positive corpus, through the real program (root required). Prints markdown
    /// tables; fails on an unreadable capture, a program that does not load, or any drop of
    /// corpus traffic under the default policy (never on recall below 100%).
    Accuracy {
        /// Also write the tables into BENCHMARKS.md (between its accuracy markers).
        #[arg(long)]
        write: bool,
    },
    /// Benchmarks (results go to BENCHMARKS.md): in-kernel cost per packet, throughput across
    /// veth against count-and-drop, xdp-filter and nftables, registry sync. Root required.
    Bench {
        /// A short run (CI, under two minutes): the same tables from fewer samples.
        #[arg(long)]
        quick: bool,
        /// Extra arguments for the bench binary (e.g. `--only kernel,sync`).
        #[arg(last = true)]
        args: Vec<OsString>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let lock = match &cli.command {
        Cmd::Test { .. } => machine_lock("cargo xtask test"),
        Cmd::Bench { .. } => machine_lock("cargo xtask bench"),
        Cmd::Accuracy { .. } => machine_lock("cargo xtask accuracy"),
        _ => Ok(None),
    };
    // Held until the process exits (the lock goes with the file descriptor).
    let _machine = match lock {
        Ok(lock) => lock,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Cmd::Bootstrap => bootstrap().map(|_| ()),
        Cmd::Build { release } => build(release),
        Cmd::Run { release, args } => run(release, &args),
        Cmd::Test { args } => test(&args),
        Cmd::Dist => dist(),
        Cmd::Demo { hold } => demo(hold),
        Cmd::Bench { quick, args } => bench(quick, &args),
        Cmd::Accuracy { write } => accuracy(write),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn tools_dir() -> PathBuf {
    env::var_os("VPN_FILTER_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/tools"))
}

/// Runs a command, failing with its description if it does not succeed.
fn sh(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: $ {}", describe(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {}", describe(cmd)))?;
    if !status.success() {
        bail!("{} failed ({status})", describe(cmd));
    }
    Ok(())
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {}", describe(cmd)))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            describe(cmd),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A command with the outer cargo's toolchain selection removed, so `rustup run nightly` or
/// `cargo +nightly` mean what they say.
fn clean(mut cmd: Command) -> Command {
    cmd.env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("CARGO")
        .env_remove("RUSTC_WRAPPER");
    cmd
}

/// Makes sure the eBPF toolchain is present; returns the directory holding bpf-linker.
fn bootstrap() -> Result<PathBuf> {
    // 1. The nightly toolchain and its rust-src (for -Z build-std=core).
    let sysroot = output(clean(Command::new("rustc")).args(["+nightly", "--print", "sysroot"]))
        .context(
        "the nightly toolchain is required for the eBPF crate (rustup toolchain install nightly)",
    )?;
    let sysroot = PathBuf::from(sysroot.trim());
    let installed = output(clean(Command::new("rustup")).args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if !installed.lines().any(|l| l.trim().starts_with("rust-src")) {
        sh(clean(Command::new("rustup")).args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }

    // 2. bpf-linker, built against the nightly toolchain's own libLLVM.
    let tools = tools_dir();
    let bin = tools.join("bin");
    let linker = bin.join("bpf-linker");
    if linker.is_file() {
        let ok = Command::new(&linker)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if ok {
            return Ok(bin);
        }
        eprintln!(
            "xtask: {} exists but does not run (nightly toolchain updated?); rebuilding",
            linker.display()
        );
    }
    let vv = output(clean(Command::new("rustc")).args(["+nightly", "-vV"]))?;
    let major = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .ok_or_else(|| anyhow!("cannot read the LLVM version from `rustc +nightly -vV`:\n{vv}"))?
        .trim()
        .to_string();
    let libdir = sysroot.join("lib");
    let lib = std::fs::read_dir(&libdir)
        .with_context(|| format!("reading {}", libdir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libLLVM.so.")))
        .ok_or_else(|| {
            anyhow!(
                "no libLLVM.so.* in {}: this nightly toolchain does not ship its LLVM as a shared library, so bpf-linker cannot be built against it",
                libdir.display()
            )
        })?;
    let prefix = tools.join("llvm-prefix");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    // -lLLVM looks for libLLVM.so; the loader looks for the SONAME (via the binary's rpath).
    for name in [
        OsString::from("libLLVM.so"),
        lib.file_name().expect("has a name").to_owned(),
    ] {
        let link = prefix_lib.join(&name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&lib, &link)
            .with_context(|| format!("symlinking {}", link.display()))?;
    }
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against {} (LLVM {major}); about a minute",
        lib.display()
    );
    let mut cmd = clean(Command::new("cargo"));
    cmd.args([
        "+stable",
        "install",
        "bpf-linker",
        "--locked",
        "--version",
        BPF_LINKER_VERSION,
    ])
    .args([
        "--no-default-features",
        "--features",
        &format!("llvm-{major}"),
    ])
    .arg("--root")
    .arg(&tools)
    .env("LLVM_PREFIX", &prefix);
    sh(&mut cmd)?;
    let out = Command::new(&linker)
        .arg("--version")
        .output()
        .with_context(|| format!("running {}", linker.display()))?;
    if !out.status.success() {
        bail!(
            "the freshly built {} does not run: {}",
            linker.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(bin)
}

/// Debian packages the privileged tests and the demo use (iproute2 for namespaces and veth,
/// ping, sysctl, mount).
const TEST_PACKAGES: &[&str] = &["iproute2", "iputils-ping", "procps", "util-linux"];

/// What the fleet test (tests/tests/fleet.rs) and the packaging checks
/// (tests/tests/packaging.rs) add: nginx serves the published feed to the fleet (started by
/// the test with its own config, never as a service), and promtool (in Debian's prometheus)
/// checks the scrape config and alert rules in packaging/prometheus/.
const FLEET_PACKAGES: &[&str] = &["nginx", "prometheus"];

/// What the end-to-end suite (tests/tests/e2e_vpn.rs) adds: real VPN servers and clients, and
/// the ordinary-traffic tools (curl, dig, dnsmasq, iperf3, openssl); and Shadowsocks
/// (tests/tests/endpoints.rs: a VPN without a wire signature, blocked by its endpoint).
const E2E_PACKAGES: &[&str] = &[
    "openssl",
    "openvpn",
    "wireguard-go",
    "wireguard-tools",
    "strongswan-charon",
    "strongswan-swanctl",
    "libcharon-extra-plugins",
    "libstrongswan-extra-plugins",
    "pptpd",
    "pptp-linux",
    "xl2tpd",
    "ocserv",
    "openconnect",
    "curl",
    "bind9-dnsutils",
    "dnsmasq-base",
    "iperf3",
    "shadowsocks-libev",
];

/// While alive, a `/usr/sbin/policy-rc.d` that forbids package scripts to start services, so
/// installing openvpn, ocserv, pptpd, xl2tpd... never starts a daemon in the root namespace.
/// A machine's own policy-rc.d is left alone.
struct NoServiceStarts(Option<PathBuf>);

impl NoServiceStarts {
    fn install() -> Result<NoServiceStarts> {
        const MARK: &str = "# written by cargo xtask for the duration of an install";
        let path = PathBuf::from("/usr/sbin/policy-rc.d");
        if path.exists() {
            // The machine's own, kept; or ours, left by an interrupted install: removed after.
            let ours = std::fs::read_to_string(&path).is_ok_and(|s| s.contains(MARK));
            return Ok(NoServiceStarts(ours.then_some(path)));
        }
        std::fs::write(&path, format!("#!/bin/sh\n{MARK}\nexit 101\n"))
            .with_context(|| format!("writing {}", path.display()))?;
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .with_context(|| format!("chmod {}", path.display()))?;
        Ok(NoServiceStarts(Some(path)))
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Installs missing Debian packages with apt-get (root only; the caller checks).
fn ensure_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            let out = Command::new("dpkg-query").args(["-W", "-f=${Status}", p]).output();
            !matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if Command::new("apt-get").arg("--version").output().is_err() {
        bail!("missing packages {missing:?} and no apt-get to install them; install them by hand");
    }
    eprintln!("xtask: installing Debian packages {missing:?}");
    let _no_service_starts = NoServiceStarts::install()?;
    sh(Command::new("apt-get")
        .arg("update")
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    sh(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

/// Cargo of the nightly toolchain (for rustfmt's unstable options and the BPF target).
fn cargo_nightly() -> Command {
    let mut cmd = clean(Command::new("rustup"));
    cmd.args(["run", "nightly", "cargo"]).current_dir(root());
    cmd
}

fn build(release: bool) -> Result<()> {
    bootstrap()?;
    let mut cmd = cargo();
    cmd.args([
        "build",
        "--package",
        "vpn-filter",
        "--package",
        "vpn-filter-tests",
        "--bins",
    ]);
    if release {
        cmd.arg("--release");
    }
    sh(&mut cmd)
}

/// Where [`machine_lock`] locks: one path per machine, whatever the checkout.
const MACHINE_LOCK: &str = "/run/lock/vpn-filter-xtask.lock";

/// One test, bench or accuracy run per machine at a time, whichever checkout it runs from.
/// They share the CPUs with the traffic they measure or judge: a benchmark flooding veth on
/// both cores starves a concurrent test suite's controllers past their hang guards (seen in
/// CI: a run that overlapped the tail of a developer's own clean-clone run failed), and a
/// concurrent test run skews a benchmark. A second run waits for the first, saying which
/// one it waits for. `None` (no lock) when the lock directory is missing or not writable:
/// the run goes ahead, as before this lock existed. An advisory lock (flock): it is
/// released when the holder exits, however it exits.
fn machine_lock(what: &str) -> Result<Option<std::fs::File>> {
    use std::{
        fs::{File, OpenOptions, TryLockError},
        io::{Read as _, Seek as _, SeekFrom, Write as _},
    };
    let path = Path::new(MACHINE_LOCK);
    let mut file: File = match OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!(
                "xtask: not taking the machine lock {}: {e}; runs on this machine are not serialised",
                path.display()
            );
            return Ok(None);
        }
    };
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            eprintln!(
                "xtask: waiting for another run on this machine to finish ({}; lock {}): tests and benchmarks sharing the CPUs starve each other",
                if holder.is_empty() { "unknown" } else { holder },
                path.display()
            );
            file.lock()
                .with_context(|| format!("locking {}", path.display()))?;
        }
        Err(TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking {}", path.display()));
        }
    }
    // Who holds it, for the next run's message.
    let who = format!(
        "{what}, pid {}, in {}\n",
        std::process::id(),
        root().display()
    );
    let _ = file
        .set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)).map(|_| ()))
        .and_then(|()| file.write_all(who.as_bytes()));
    Ok(Some(file))
}

fn require_root(what: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        bail!("{what} needs root (loading XDP programs and creating network namespaces); run it with sudo");
    }
    Ok(())
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn run(release: bool, args: &[OsString]) -> Result<()> {
    build(release)?;
    require_root("cargo xtask run")?;
    let bin = root().join(if release {
        "target/release/vpn-filter"
    } else {
        "target/debug/vpn-filter"
    });
    sh(Command::new(bin).args(args))
}

fn test(extra: &[OsString]) -> Result<()> {
    let tools_bin = bootstrap()?;
    require_root("cargo xtask test")?;
    ensure_packages(TEST_PACKAGES)?;
    ensure_packages(E2E_PACKAGES)?;
    ensure_packages(FLEET_PACKAGES)?;
    // Formatting: the unstable rustfmt options (import grouping) need nightly rustfmt.
    sh(cargo_nightly().args(["fmt", "--all", "--check"]))?;
    // Clippy on the userspace crates and the host build of the eBPF crate...
    sh(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ]))?;
    // ...and on the eBPF crate as the kernel sees it.
    let path = env::join_paths(
        std::iter::once(tools_bin)
            .chain(env::split_paths(&env::var_os("PATH").unwrap_or_default())),
    )?;
    sh(cargo_nightly()
        .args(["clippy", "--package", "vpn-filter-ebpf", "--locked"])
        .args([
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--release",
        ])
        .arg("--target-dir")
        .arg(root().join("target/ebpf"))
        .args(["--", "-D", "warnings"])
        .env("PATH", &path))?;
    // The integration tests start the controller binary.
    sh(cargo().args(["build", "--package", "vpn-filter", "--bins", "--locked"]))?;
    // Unit tests (host) and the privileged integration tests, serially: they share kernel
    // state (namespaces, XDP attachments).
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--locked", "--", "--test-threads=1"])
        .args(extra);
    sh(&mut cmd)
}

/// cargo-deb, built from crates.io into target/tools like bpf-linker.
const CARGO_DEB_VERSION: &str = "3.8.0";

/// Makes sure `cargo-deb` is in target/tools/bin; returns that directory.
fn ensure_cargo_deb() -> Result<PathBuf> {
    let bin = tools_dir().join("bin");
    let runs = Command::new(bin.join("cargo-deb"))
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !runs {
        eprintln!(
            "xtask: building cargo-deb {CARGO_DEB_VERSION} into {}",
            tools_dir().display()
        );
        sh(clean(Command::new("cargo"))
            .args([
                "+stable",
                "install",
                "cargo-deb",
                "--locked",
                "--version",
                CARGO_DEB_VERSION,
            ])
            .arg("--root")
            .arg(tools_dir()))?;
    }
    Ok(bin)
}

/// What the .deb must hold (checked after building it).
const DEB_CONTENTS: &[&str] = &[
    "./usr/sbin/vpn-filter",
    "./lib/systemd/system/vpn-filter.service",
    "./etc/vpn-filter/config.toml",
    "./usr/share/man/man1/vpn-filter.1",
    "./usr/share/man/man1/vpn-filter-run.1",
    "./usr/share/bash-completion/completions/vpn-filter",
    "./usr/share/zsh/vendor-completions/_vpn-filter",
    "./usr/share/fish/vendor_completions.d/vpn-filter.fish",
];

fn dist() -> Result<()> {
    bootstrap()?;
    let tools_bin = ensure_cargo_deb()?;
    sh(cargo().args([
        "build",
        "--release",
        "--package",
        "vpn-filter",
        "--bins",
        "--locked",
    ]))?;
    let dist = root().join("target/dist");
    if dist.exists() {
        std::fs::remove_dir_all(&dist).with_context(|| format!("emptying {}", dist.display()))?;
    }
    sh(Command::new(root().join("target/release/vpn-filter"))
        .arg("generate-assets")
        .arg("--out")
        .arg(&dist))?;
    let path = env::join_paths(
        std::iter::once(tools_bin)
            .chain(env::split_paths(&env::var_os("PATH").unwrap_or_default())),
    )?;
    sh(cargo()
        .args(["deb", "--no-build", "--package", "vpn-filter", "--output"])
        .arg(&dist)
        .env("PATH", &path))?;
    let deb = std::fs::read_dir(&dist)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| anyhow!("cargo deb wrote no .deb into {}", dist.display()))?;
    let listing = output(Command::new("dpkg-deb").arg("--contents").arg(&deb))?;
    let missing: Vec<&&str> = DEB_CONTENTS
        .iter()
        .filter(|f| {
            !listing.lines().any(|l| {
                l.split_whitespace()
                    .last()
                    .is_some_and(|p| p.trim_end_matches(".gz") == **f)
            })
        })
        .collect();
    if !missing.is_empty() {
        bail!("{} lacks {missing:?}; it holds:\n{listing}", deb.display());
    }
    eprintln!(
        "xtask: {} (completions and man pages in {})",
        deb.display(),
        dist.display()
    );
    Ok(())
}

fn demo(hold: bool) -> Result<()> {
    require_root("cargo xtask demo")?;
    ensure_packages(TEST_PACKAGES)?;
    build(false)?;
    let mut cmd = Command::new(root().join("target/debug/vpn-filter-demo"));
    cmd.arg("--controller")
        .arg(root().join("target/debug/vpn-filter"));
    if hold {
        cmd.arg("--hold");
    }
    sh(&mut cmd)
}

fn accuracy(write: bool) -> Result<()> {
    bootstrap()?;
    require_root("cargo xtask accuracy")?;
    // The debug build the tests use (build.rs builds the XDP object into it); the run is
    // syscall-bound, so an optimised build would buy little and cost a second full build.
    sh(cargo().args([
        "build",
        "--package",
        "vpn-filter-tests",
        "--bin",
        "vpn-filter-accuracy",
    ]))?;
    let mut cmd = Command::new(root().join("target/debug/vpn-filter-accuracy"));
    if write {
        cmd.arg("--write").arg(root().join("BENCHMARKS.md"));
    }
    sh(&mut cmd)
}

/// What the benchmark adds to [`TEST_PACKAGES`]: the peers it compares against (nftables,
/// xdp-filter from xdp-tools) and ethtool (GRO on the receiving veth).
const BENCH_PACKAGES: &[&str] = &["nftables", "xdp-tools", "ethtool"];

fn bench(quick: bool, args: &[OsString]) -> Result<()> {
    bootstrap()?;
    require_root("cargo xtask bench")?;
    ensure_packages(TEST_PACKAGES)?;
    ensure_packages(BENCH_PACKAGES)?;
    sh(cargo().args([
        "build",
        "--release",
        "--package",
        "vpn-filter-tests",
        // The controller itself: sections 4 (events) and 5 (replay) run the release binary.
        "--package",
        "vpn-filter",
        "--bins",
    ]))?;
    // The committed BENCHMARKS.md comes from a full run; a quick run (CI) writes beside the
    // build output so it never replaces it.
    let out = if quick {
        root().join("target/BENCHMARKS.quick.md")
    } else {
        root().join("BENCHMARKS.md")
    };
    let mut cmd = Command::new(root().join("target/release/vpn-filter-bench"));
    cmd.arg("--out").arg(&out);
    if quick {
        cmd.arg("--quick");
    }
    sh(cmd.args(args))?;
    // Section 6: the allowlist lookup structures against the plain LPM trie, same keys, same
    // process (a separate binary: it loads its own program per lookup mode).
    let mut lookup = Command::new(root().join("target/release/vpn-filter-bench-lookup"));
    if quick {
        lookup.args(["--sizes", "20000", "--rounds", "3"]);
    }
    eprintln!("xtask: $ {}", describe(&lookup));
    let table = output(&mut lookup)?;
    let section = format!(
        "\n## 6. Allowlist lookup structures\n\n\
         Written by `vpn-filter-bench-lookup`. Each packet is an unregistered WireGuard initiation \
         from a new random source (a new flow, so every packet pays the lookup of both endpoints), \
         through BPF_PROG_TEST_RUN with a pass-through baseline in the same process; medians of \
         interleaved rounds. Modes (the `allowlist_lookup` field of the CONFIG map): `trie` = the \
         LPM tries alone; `bitmap_trie` = a /24 bitmap, then the trie; `fast` = the default: IPv4 \
         /24 bitmap for prefixes up to /24, a second bitmap marking /24s that hold longer prefixes, \
         then one hash probe per longer prefix length present; IPv6 a /32 filter bitmap, then one \
         hash probe per prefix length present (at most 16, else the trie). \
         \"lookup\" is the cost over the same program with an empty allowlist. The tries stay the \
         authoritative allowlist; `tests/tests/fastpath.rs` checks in the kernel that `fast` and \
         `trie` agree on random sets, every prefix length and boundary, and during a large \
         update. Choice: `fast`, because `bitmap_trie` gains nothing once any prefix longer than \
         /24 exists, and filtering before the hash probes is what makes IPv6 cheap.\n\n{table}"
    );
    let mut text =
        std::fs::read_to_string(&out).with_context(|| format!("reading {}", out.display()))?;
    text.push_str(&section);
    std::fs::write(&out, text).with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}
