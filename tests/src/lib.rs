//! Test harness for vpn-filter: network namespaces, veth pairs and bpffs directories that
//! always clean up after themselves, packet builders, and helpers to send packets from one
//! namespace and observe what arrives in another. Used by the integration tests in
//! `tests/tests/`, the demo (`cargo xtask demo`) and the benchmarks.
//!
//! Everything here needs root; [`require_root`] fails loudly (it never skips).

pub mod accuracy;
pub mod corpus;
pub mod gateway_lab;
pub mod judge;
pub mod lab;
pub mod mangle;
pub mod netns;
pub mod packet;
pub mod rng;

/// Hang guard for a controller's start-up (its `ready` line). The kernel's verifier alone
/// takes about a second on an idle 2-core machine and many times that on a loaded one (a CI
/// run sharing the machine with a flood benchmark went past 20 s): the guard only has to
/// tell a hang from slowness, and a start that makes it costs nothing.
pub const CONTROLLER_START: std::time::Duration = std::time::Duration::from_secs(90);

/// Panics with a clear message unless running as root. Privileged tests call this first: a
/// test that cannot run must fail, not pass silently.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "this test needs root (XDP, BPF maps, network namespaces); run `sudo cargo xtask test`"
    );
}
