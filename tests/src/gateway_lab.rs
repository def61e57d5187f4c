//! The four-namespace gateway lab the demo and the end-to-end suite use:
//!
//! ```text
//!  registered client   10.81.1.2 ── g-reg   ┐
//!                                            ├ gateway (forwards; vpn-filter on all three) ── g-srv ── server 10.81.3.2
//!  unregistered client 10.81.2.2 ── g-unreg ┘
//! ```
//!
//! Each client and the server has a default route via its gateway address (`10.81.N.1`), so
//! the server sees the clients' own addresses (no NAT). Static neighbour entries both ways, so
//! no ARP races. XDP sees ingress only: a client's packets are judged on its `g-*` interface,
//! the server's replies on `g-srv`.
//!
//! [`GatewayLab::add_ipv6`] adds the same plan in IPv6 (`fd81:N::2`, gateway `fd81:N::1`).
//!
//! Dropping a [`GatewayLab`] first kills (by pid, TERM then KILL) every process still living
//! in its namespaces, then deletes the namespaces, so a failing test leaves nothing behind.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use crate::netns::{neigh, unique, veth, NetNs, Process};

pub const REGISTERED: &str = "10.81.1.2";
pub const UNREGISTERED: &str = "10.81.2.2";
pub const SERVER: &str = "10.81.3.2";
/// The same hosts' IPv6 addresses, once [`GatewayLab::add_ipv6`] has added them (gateway
/// `fd81:N::1`).
pub const REGISTERED6: &str = "fd81:1::2";
pub const UNREGISTERED6: &str = "fd81:2::2";
pub const SERVER6: &str = "fd81:3::2";

/// The gateway's interfaces towards the registered client, the unregistered client and the
/// server, in that order.
pub const GATEWAY_IFACES: [&str; 3] = ["g-reg", "g-unreg", "g-srv"];

pub struct GatewayLab {
    pub reg: NetNs,
    pub unreg: NetNs,
    pub server: NetNs,
    pub gw: NetNs,
    /// The controller's state directory (persisted registry), private to this lab.
    pub state: TempDir,
}

impl GatewayLab {
    /// Creates the namespaces, links and routes; the gateway forwards IPv4.
    pub fn new() -> GatewayLab {
        crate::require_root();
        let lab = GatewayLab {
            reg: NetNs::new("rc"),
            unreg: NetNs::new("uc"),
            server: NetNs::new("sv"),
            gw: NetNs::new("gw"),
            state: TempDir::new("gwstate"),
        };
        for (i, (ns, gif)) in [&lab.reg, &lab.unreg, &lab.server]
            .into_iter()
            .zip(GATEWAY_IFACES)
            .enumerate()
        {
            let net = i + 1;
            let cif = format!("c{i}");
            veth(ns, &cif, &lab.gw, gif);
            ns.ip(&["addr", "add", &format!("10.81.{net}.2/24"), "dev", &cif]);
            lab.gw
                .ip(&["addr", "add", &format!("10.81.{net}.1/24"), "dev", gif]);
            ns.ip(&["route", "add", "default", "via", &format!("10.81.{net}.1")]);
            neigh(ns, &cif, &format!("10.81.{net}.1"), &lab.gw.mac(gif));
            neigh(&lab.gw, gif, &format!("10.81.{net}.2"), &ns.mac(&cif));
        }
        lab.gw.sysctl("net.ipv4.ip_forward", "1");
        lab
    }

    /// Adds IPv6 to the lab: `fd81:N::2/64` on each client and the server, `fd81:N::1/64`
    /// on the gateway, default routes and static neighbour entries as for IPv4, and IPv6
    /// forwarding on the gateway. No duplicate address detection, so the addresses are usable
    /// at once. Not done by [`GatewayLab::new`]: the tests that want IPv6 ask for it.
    pub fn add_ipv6(&self) {
        for (i, (ns, gif)) in [&self.reg, &self.unreg, &self.server]
            .into_iter()
            .zip(GATEWAY_IFACES)
            .enumerate()
        {
            let net = i + 1;
            let cif = format!("c{i}");
            ns.ip(&[
                "-6",
                "addr",
                "add",
                &format!("fd81:{net}::2/64"),
                "dev",
                &cif,
                "nodad",
            ]);
            self.gw.ip(&[
                "-6",
                "addr",
                "add",
                &format!("fd81:{net}::1/64"),
                "dev",
                gif,
                "nodad",
            ]);
            ns.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &format!("fd81:{net}::1"),
            ]);
            neigh(ns, &cif, &format!("fd81:{net}::1"), &self.gw.mac(gif));
            neigh(&self.gw, gif, &format!("fd81:{net}::2"), &ns.mac(&cif));
        }
        self.gw.sysctl("net.ipv6.conf.all.forwarding", "1");
    }

    /// Starts `controller run` in the gateway namespace, attached to all three gateway
    /// interfaces, with `registry` and any `extra` arguments; returns once it reports
    /// ready (panics with its stderr if it does not within 20 s).
    pub fn start_controller(&self, controller: &Path, registry: &Path, extra: &[&str]) -> Process {
        assert!(
            controller.is_file(),
            "controller binary {} not found: build it with `cargo build -p vpn-filter --bins` (cargo xtask test does)",
            controller.display()
        );
        let mut cmd = self.gw.command(controller);
        // Unpinned, with a private state directory and control socket: nothing of this lab
        // outlives it or meets another lab's controller.
        cmd.args(["run", "--no-pin", "--registry"]).arg(registry);
        cmd.arg("--state-dir").arg(self.state.path());
        cmd.arg("--control-socket")
            .arg(self.state.path().join("control.sock"));
        for iface in GATEWAY_IFACES {
            cmd.args(["--iface", iface]);
        }
        cmd.args(extra);
        let process = Process::spawn(cmd);
        process.wait_ready(crate::CONTROLLER_START);
        process
    }

    /// Kills every process still living in the lab's namespaces (found with `ip netns pids`,
    /// signalled by pid): SIGTERM, then SIGKILL for whatever is left after a second.
    pub fn kill_leftovers(&self) {
        for sig in [libc::SIGTERM, libc::SIGKILL] {
            let pids = self.pids();
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                // SAFETY: kill(2) on a pid that lives in one of this lab's namespaces.
                unsafe { libc::kill(pid, sig) };
            }
            let deadline = Instant::now() + Duration::from_secs(1);
            while Instant::now() < deadline && !self.pids().is_empty() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Pids of the processes living in the lab's namespaces.
    pub fn pids(&self) -> Vec<i32> {
        [&self.reg, &self.unreg, &self.server, &self.gw]
            .iter()
            .flat_map(|ns| ns_pids(ns.name()))
            .collect()
    }
}

impl Default for GatewayLab {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for GatewayLab {
    fn drop(&mut self) {
        // Before the namespaces (fields) are deleted: a process left in a deleted namespace
        // would keep it alive, unseen by `ip netns list`.
        self.kill_leftovers();
    }
}

/// Pids of the processes in namespace `name` (`ip netns pids`); empty if none or on error.
fn ns_pids(name: &str) -> Vec<i32> {
    Command::new("ip")
        .args(["netns", "pids", name])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The controller binary: `$VPN_FILTER_BIN`, or `vpn-filter` in the cargo target directory
/// of the running executable (a test binary in `target/debug/deps/` or a binary in
/// `target/debug/`).
pub fn controller_path() -> PathBuf {
    if let Some(p) = std::env::var_os("VPN_FILTER_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("own path");
    let dir = exe.parent().expect("the executable is in a directory");
    let dir = if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("deps/ has a parent")
    } else {
        dir
    };
    dir.join("vpn-filter")
}

/// A temporary directory (mode 0755, so daemons that drop privileges can read their
/// configuration), removed with its contents on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(unique(tag));
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
