//! XDP programs for the benchmarks (`cargo xtask bench`), never loaded by the controller.
//!
//! - `bench_pass`: returns `XDP_PASS` and nothing else. The baseline that BPF_PROG_TEST_RUN
//!   timings are taken against (the harness's own cost cancels out).
//! - `bench_count_drop`: counts the packet in a per-CPU slot and drops it. The cheapest useful
//!   XDP program: the XDP ceiling on a given receiver.
//! - `bench_gen`: the traffic generator. Run through BPF_PROG_TEST_RUN with live frames
//!   (`BPF_F_TEST_XDP_LIVE_FRAMES`) on one untagged IPv4 template frame, it gives every frame a
//!   fresh pseudo-random source address and port, fixes the checksums incrementally and
//!   redirects the frame out of the interface in `GEN_CONFIG[GEN_IFINDEX]`. One long call,
//!   stopped by a signal, keeps a veth busy at several Mpps from one core.
//! - `bench_mutate`: the in-kernel cost harness. Run through BPF_PROG_TEST_RUN with a large
//!   `repeat` on one template frame, it writes the next source address from `MUT_ADDRS` into
//!   the frame (the buffer persists across repeats) and tail-calls the program in
//!   `MUT_JMP[0]` (vpn-filter, or `bench_pass` for the baseline): every run is a new flow
//!   from a different source, with caches as warm as under a steady flood.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // The programs only exist for the BPF target; the host build is empty so that
    // `cargo test --workspace` and clippy work on the whole workspace.
}

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        bindings::xdp_action::{XDP_ABORTED, XDP_DROP, XDP_PASS},
        helpers::{bpf_get_prandom_u32, bpf_redirect},
        macros::{map, xdp},
        maps::{Array, PerCpuArray, ProgramArray},
        programs::XdpContext,
    };

    /// Slots of `GEN_CONFIG` (u32 each), written by the benchmark before the run.
    const GEN_IFINDEX: u32 = 0;
    /// Source address = (random & SRC_AND) | SRC_OR, host byte order.
    const GEN_SRC_AND: u32 = 1;
    const GEN_SRC_OR: u32 = 2;
    /// Offset of the L4 checksum in the frame: 40 (UDP), 50 (TCP) or 0 (leave it: UDP
    /// without a checksum).
    const GEN_L4_CSUM_OFF: u32 = 3;
    const GEN_SLOTS: u32 = 4;

    const ETH_HLEN: usize = 14;
    const IP_OFF: usize = ETH_HLEN;
    const IP_CSUM_OFF: usize = IP_OFF + 10;
    const IP_SRC_OFF: usize = IP_OFF + 12;
    const L4_OFF: usize = IP_OFF + 20;
    const UDP_CSUM_OFF: usize = L4_OFF + 6;
    const TCP_CSUM_OFF: usize = L4_OFF + 16;
    /// The template must at least reach the end of a TCP header.
    const MIN_FRAME: usize = L4_OFF + 20;

    #[map(name = "BENCH_COUNT")]
    static BENCH_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

    #[map(name = "GEN_CONFIG")]
    static GEN_CONFIG: Array<u32> = Array::with_max_entries(GEN_SLOTS, 0);

    /// Frames the generator redirected, per CPU.
    #[map(name = "GEN_COUNT")]
    static GEN_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

    /// Slots of `MUT_CONFIG`: offset of the source address in the frame, its length (4 or
    /// 16), and how many addresses of `MUT_ADDRS` to cycle through.
    const MUT_OFFSET: u32 = 0;
    const MUT_ADDR_LEN: u32 = 1;
    const MUT_COUNT: u32 = 2;
    const MUT_SLOTS: u32 = 3;
    /// Capacity of `MUT_ADDRS`.
    const MUT_MAX_ADDRS: u32 = 65_536;
    /// Largest source-address offset accepted (two VLAN tags + IPv4).
    const MUT_MAX_OFFSET: usize = 64;

    #[map(name = "MUT_CONFIG")]
    static MUT_CONFIG: Array<u32> = Array::with_max_entries(MUT_SLOTS, 0);

    /// Source addresses (IPv4 in the first four bytes).
    #[map(name = "MUT_ADDRS")]
    static MUT_ADDRS: Array<[u8; 16]> = Array::with_max_entries(MUT_MAX_ADDRS, 0);

    /// Runs so far; the next address is `MUT_ADDRS[MUT_POS % MUT_COUNT]`. Userspace resets it.
    #[map(name = "MUT_POS")]
    static MUT_POS: Array<u32> = Array::with_max_entries(1, 0);

    #[map(name = "MUT_JMP")]
    static MUT_JMP: ProgramArray = ProgramArray::with_max_entries(1, 0);

    #[xdp]
    pub fn bench_mutate(ctx: XdpContext) -> u32 {
        let Some(pos) = MUT_POS.get_ptr_mut(0) else {
            return XDP_ABORTED;
        };
        let n = MUT_CONFIG.get(MUT_COUNT).copied().unwrap_or(0);
        if n == 0 {
            return XDP_ABORTED;
        }
        // SAFETY: an array slot; test runs of this program are single-threaded.
        let i = unsafe {
            let i = *pos;
            *pos = i.wrapping_add(1);
            i
        };
        let Some(addr) = MUT_ADDRS.get(i % n) else {
            return XDP_ABORTED;
        };
        let off = MUT_CONFIG.get(MUT_OFFSET).copied().unwrap_or(0) as usize;
        let len = MUT_CONFIG.get(MUT_ADDR_LEN).copied().unwrap_or(0);
        if off > MUT_MAX_OFFSET {
            return XDP_ABORTED;
        }
        let start = ctx.data();
        if start + off + 16 > ctx.data_end() {
            return XDP_ABORTED;
        }
        let p = (start + off) as *mut u8;
        // SAFETY: p..p+16 is inside the frame (checked above).
        unsafe {
            if len == 16 {
                core::ptr::write_unaligned(p as *mut [u8; 16], *addr);
            } else {
                core::ptr::write_unaligned(p as *mut [u8; 4], [addr[0], addr[1], addr[2], addr[3]]);
            }
            MUT_JMP.tail_call(&ctx, 0);
        }
        XDP_ABORTED
    }

    #[xdp]
    pub fn bench_pass(_ctx: XdpContext) -> u32 {
        XDP_PASS
    }

    #[xdp]
    pub fn bench_count_drop(_ctx: XdpContext) -> u32 {
        bump(&BENCH_COUNT);
        XDP_DROP
    }

    #[inline(always)]
    fn bump(map: &PerCpuArray<u64>) {
        if let Some(slot) = map.get_ptr_mut(0) {
            // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
            unsafe { *slot += 1 };
        }
    }

    #[inline(always)]
    fn config(slot: u32) -> u32 {
        GEN_CONFIG.get(slot).copied().unwrap_or(0)
    }

    /// One's-complement update of `csum` (as stored, big-endian) when the 16-bit words `old`
    /// are replaced by `new` (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')).
    #[inline(always)]
    fn csum_replace<const N: usize>(csum: u16, old: [u16; N], new: [u16; N]) -> u16 {
        let mut sum = (!csum) as u32;
        let mut i = 0;
        while i < N {
            sum += (!old[i]) as u32 + new[i] as u32;
            i += 1;
        }
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        !(sum as u16)
    }

    #[xdp]
    pub fn bench_gen(ctx: XdpContext) -> u32 {
        let start = ctx.data();
        if start + MIN_FRAME > ctx.data_end() {
            return XDP_ABORTED;
        }
        let p = start as *mut u8;
        // SAFETY: every offset below is < MIN_FRAME, checked against data_end above.
        unsafe {
            let rd = |off: usize| u16::from_be_bytes([*p.add(off), *p.add(off + 1)]);
            let wr = |off: usize, v: u16| {
                let b = v.to_be_bytes();
                *p.add(off) = b[0];
                *p.add(off + 1) = b[1];
            };
            let rand = bpf_get_prandom_u32();
            let mut src = (rand & config(GEN_SRC_AND)) | config(GEN_SRC_OR);
            // Keep clear of 0/8, 127/8 and 224/3, which the stack drops as martians.
            let top = src >> 24;
            if top == 0 || top == 127 || top >= 224 {
                src = (src & 0x00ff_ffff) | 0x0b00_0000;
            }
            let sport = (bpf_get_prandom_u32() as u16) | 0x0400;
            let sport_off = L4_OFF;
            let old = [rd(IP_SRC_OFF), rd(IP_SRC_OFF + 2), rd(sport_off)];
            let new = [(src >> 16) as u16, src as u16, sport];
            wr(IP_SRC_OFF, new[0]);
            wr(IP_SRC_OFF + 2, new[1]);
            wr(sport_off, new[2]);
            // The IP header checksum covers the address only.
            let ip = csum_replace(rd(IP_CSUM_OFF), [old[0], old[1]], [new[0], new[1]]);
            wr(IP_CSUM_OFF, ip);
            // The L4 checksum covers the pseudo-header's address and the port.
            let off = config(GEN_L4_CSUM_OFF) as usize;
            if off == UDP_CSUM_OFF {
                let c = rd(UDP_CSUM_OFF);
                if c != 0 {
                    let mut n = csum_replace(c, old, new);
                    if n == 0 {
                        n = 0xffff;
                    }
                    wr(UDP_CSUM_OFF, n);
                }
            } else if off == TCP_CSUM_OFF {
                wr(TCP_CSUM_OFF, csum_replace(rd(TCP_CSUM_OFF), old, new));
            }
        }
        bump(&GEN_COUNT);
        // SAFETY: plain helper call; the kernel validates the ifindex.
        unsafe { bpf_redirect(config(GEN_IFINDEX), 0) as u32 }
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // No code path can panic (the verifier would reject the object if one remained); the
    // handler exists because `no_std` requires one.
    loop {}
}
