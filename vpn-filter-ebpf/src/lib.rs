//! Pure parts of the vpn-filter XDP program: VPN classification over a fixed payload window,
//! and the flow-confirmation rules. No packet pointers here, so everything compiles and is
//! unit-tested on the host (`cargo test -p vpn-filter-ebpf`) and is inlined into the kernel
//! program unchanged.
//!
//! Rules for code in this crate (it runs under the BPF verifier): no loops without a constant
//! bound, no slice indexing that could panic (the window is a fixed-size array indexed with
//! constants), no allocation, no recursion.
#![cfg_attr(target_arch = "bpf", no_std)]

pub mod classify;
pub mod parse;
