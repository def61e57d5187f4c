//! The vpn-filter XDP program.
//!
//! Per packet: Ethernet (up to two VLAN tags) -> IPv4/IPv6 (options, extension headers,
//! fragments) -> UDP/TCP/GRE/ESP/AH. Ordinary traffic leaves after header checks and a look at
//! the first four payload bytes. Only VPN candidates get their payload window copied and
//! classified, and only classified packets touch the flow map and the allowlist tries.
//!
//! Every outcome that is not a VPN verdict is `XDP_PASS`: a parse error never drops a packet
//! and the program never returns `XDP_ABORTED`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Packet loads as wide as the field (`program::load`).
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // The program only exists for the BPF target; the host build of this binary is empty so
    // that `cargo test --workspace` and clippy work on the whole workspace.
}

#[cfg(target_arch = "bpf")]
mod program;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // No code path can panic (the verifier would reject the object if one remained); the
    // handler exists because `no_std` requires one.
    loop {}
}
