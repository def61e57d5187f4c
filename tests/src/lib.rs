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
