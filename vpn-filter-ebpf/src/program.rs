use core::{arch::asm, ffi::c_void, mem::size_of, ptr};

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::{bpf_ktime_get_coarse_ns, bpf_xdp_load_bytes},
    macros::{map, xdp},
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, HashMap, LruHashMap, PerCpuArray, RingBuf,
    },
    programs::XdpContext,
};
use vpn_filter_common::{
    counter_index, event_limit_bucket, fast_v6_filter_bit, verdict_counter_index, AllowValue,
    AllowlistLookup, Config, Counter, Event, ExtHeaderOverflow, FastKeyV4, FastKeyV6, FastLengths,
    FlowKey, FlowState, FlowStatus, Message, PolicyMode, Protocol, RateState, Reason, SourceRate,
    Verdict, DEFAULT_ALLOWED_FLOW_TIMEOUT_NS, DEFAULT_ALLOWLIST_LOOKUP, DEFAULT_ALLOW_V4_ENTRIES,
    DEFAULT_ALLOW_V6_ENTRIES, DEFAULT_BLOCKED_FLOW_TIMEOUT_NS, DEFAULT_EVENTS_PER_CPU_PER_SEC,
    DEFAULT_EVENTS_PER_SOURCE_PER_SEC, DEFAULT_EVENT_RING_BYTES, DEFAULT_FALLBACK_TIMEOUT_NS,
    DEFAULT_FLOW_ENTRIES, DEFAULT_PENDING_FLOW_TIMEOUT_NS, ENCAP_VLAN_STACK, EVENT_LIMIT_SLOTS,
    EVENT_LIMIT_WAYS, FALLBACK_PAIR_ENTRIES, FAMILY_V4, FAMILY_V6, FAST_BITMAP_V4_LONG,
    FAST_BITMAP_V6, FAST_BITMAP_WORDS, FAST_SUMMARY_WORDS, FAST_V6_MAX_LENGTHS, FAST_V6_USE_TRIE,
    FLOW_CLASS_DATA, REPEAT_CHECKS_PER_SEC, REPEAT_REPORT_WINDOWS, REPEAT_RESERVE_PER_SEC,
    REPEAT_SLOTS, REPEAT_WINDOW_NS, STATS_LEN,
};
mod allowlist;
mod detect;
mod endpoints;
mod events;
mod fallback;
mod flow;
mod frame;
mod sni;
mod tcp_stream;

use vpn_filter_ebpf::{
    classify::{
        advance, belongs, classify_gre, classify_ip_proto, classify_tcp, classify_udp_on,
        encrypted, is_standard_ike_port, ovpn_packet, tcp_prefilter, udp_prefilter,
        udp_second_look, wg_follow, Confirmation, Detection, Prefilter, SecondLook, Strength,
        OVPN_OBFS_MARK, PORT_MARK_IKE, PORT_MARK_OVPN_OBFS, WINDOW,
    },
    parse::{
        self, Frame, Packet, FRAG_FIRST, FRAG_LATER, FRAG_NONE, IPPROTO_AH, IPPROTO_ESP,
        IPPROTO_GRE, IPPROTO_TCP, IPPROTO_UDP, MAX_PAYLOAD_OFFSET,
    },
};

use self::{allowlist::*, detect::*, events::*, flow::*, frame::*, tcp_stream::*};

/// Per-protocol [`PolicyMode`], indexed by [`Protocol`].
#[map(name = "POLICY")]
static POLICY: Array<u8> = Array::with_max_entries(Protocol::COUNT as u32, 0);

#[map(name = "CONFIG")]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Per-CPU scratch slot holding the packet's headers and detection while it is judged (see
/// [`try_vpn_filter`]).
#[map(name = "SCRATCH")]
static SCRATCH: PerCpuArray<Candidate> = PerCpuArray::with_max_entries(1, 0);

/// `try_vpn_filter`'s answer for "no signature, but the destination may be a listed endpoint":
/// the packet is in the scratch slot (not an XDP action).
const JUDGE_ENDPOINT: u32 = u32::MAX;

/// A classified packet on its way to [`decide`].
#[derive(Clone, Copy)]
struct Candidate {
    pkt: Packet,
    det: Detection,
    /// For [`encrypted_stage`]: bytes held by the payload window, and the `UDP_FIRST` slot
    /// of a UDP conversation (`u32::MAX`: none).
    fet_n: u32,
    fet_udp_slot: u32,
    /// Set by `decide` when a confirmed flow was dropped: the top level closes the pair
    /// ([`fallback::arm`]) in its own frame.
    arm_fallback: u32,
    /// The classifier's inputs, passed through the slot (see `detect`).
    laundry: Laundry,
}

#[derive(Clone, Copy)]
struct Laundry {
    len: u32,
    sport: u16,
    dport: u16,
    ike_port: u32,
    udp: u32,
}

#[map(name = "STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STATS_LEN, 0);

const NS_PER_SEC: u64 = 1_000_000_000;

/// Ethernet-like devices: frames start at the Ethernet header.
#[xdp]
pub fn vpn_filter(ctx: XdpContext) -> u32 {
    filter(&ctx, false)
}

/// Devices whose frames start at the IP header (tun, wireguard, ppp, ipip, gre...).
#[xdp]
pub fn vpn_filter_ip(ctx: XdpContext) -> u32 {
    filter(&ctx, true)
}

#[inline(always)]
fn filter(ctx: &XdpContext, ip_start: bool) -> u32 {
    count(counter_index(Counter::Packets));
    match try_vpn_filter(ctx, ip_start) {
        // Judged here, not inside the classifier's frame: the two stack frames never stack up
        // (512 bytes for a call chain).
        Ok(JUDGE_ENDPOINT) => match SCRATCH.get(0) {
            Some(c) => {
                let action = endpoints::judge(ctx, &c.pkt);
                if action == XDP_DROP && c.pkt.frag == FRAG_FIRST {
                    let p = &c.pkt;
                    remember_dropped_fragment(p.family, p.ip_proto, &p.src, &p.dst, p.frag_id);
                }
                action
            }
            None => XDP_PASS,
        },
        Ok(action) => {
            if let Some(c) = SCRATCH.get_ptr_mut(0) {
                // SAFETY: a per-CPU slot, only this CPU touches it while the program runs.
                let c = unsafe { &mut *c };
                if c.arm_fallback != 0 {
                    c.arm_fallback = 0;
                    fallback::arm(&c.pkt, now_ns());
                }
            }
            action
        }
        Err(Counter::TinyFragment) => {
            count(counter_index(Counter::TinyFragment));
            XDP_DROP
        }
        Err(Counter::ExtHeaderLimit) => {
            count(counter_index(Counter::ExtHeaderLimit));
            let pass = CONFIG
                .get(0)
                .is_some_and(|c| c.ext_header_overflow == ExtHeaderOverflow::Pass as u8);
            if pass {
                XDP_PASS
            } else {
                XDP_DROP
            }
        }
        // Counted already.
        Err(Counter::Packets) => XDP_PASS,
        Err(outcome) => {
            count(counter_index(outcome));
            XDP_PASS
        }
    }
}

/// The kernel's monotonic clock (CLOCK_MONOTONIC), as of the last timer tick: every time the
/// program keeps (flow expiries, rate windows, event times, slot ticks) is milliseconds to
/// minutes long, so a tick's resolution (4 ms at HZ=250) costs nothing, where the precise
/// clock (`bpf_ktime_get_ns`) reads the clock source on every call: on a KVM guest it was a
/// sixth of a handshake flood packet's time in the kernel. Every reading in the program comes
/// from here, so the times it compares are all on the same clock.
#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

#[inline(always)]
fn count(index: u32) {
    if let Some(slot) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
}

/// Bounds-checked pointer to `N` bytes at `offset`.
///
/// # Safety
/// The returned pointer is valid for reads of `N` bytes for the duration of the program run;
/// the check against `data_end` is the one the verifier requires before any packet access.
#[inline(always)]
unsafe fn bytes_at<const N: usize>(ctx: &XdpContext, offset: usize) -> Result<[u8; N], Counter> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + N > end {
        return Err(Counter::Truncated);
    }
    Ok(unsafe { load::<N>(start + offset) })
}

/// Reads `N` bytes at `addr` with the widest loads that fit (8, 4, 2, then 1 bytes).
/// `ptr::read_unaligned` compiles to one load per byte and shifts to put them together: the
/// BPF backend assumes no misaligned access, and headers sit at any alignment (an Ethernet
/// header puts the IP header two bytes off four). The loads are written out here because the
/// kernel allows misaligned packet and map-value reads on every architecture it defines
/// `HAVE_EFFICIENT_UNALIGNED_ACCESS` for (x86-64, arm64...; elsewhere the verifier refuses
/// them at load time, with a clear message), while LLVM's switch for it
/// (`allows-misaligned-mem-access`) also emits misaligned stack accesses, which the
/// verifier refuses everywhere.
///
/// # Safety
/// `addr` must be valid for reads of `N` bytes (the caller's check against `data_end`, which
/// the verifier sees and requires).
#[inline(always)]
unsafe fn load<const N: usize>(addr: usize) -> [u8; N] {
    let mut out = [0u8; N];
    let mut i = 0;
    // One load of `$ty` at `addr + i` into `out[i..]`; `$bpf` is its size in BPF assembly.
    macro_rules! word {
        ($ty:ty, $bpf:literal) => {{
            const W: usize = size_of::<$ty>();
            let v: $ty;
            // SAFETY: the caller's contract; a load the verifier checks like any other.
            unsafe {
                asm!(concat!("{v} = *(", $bpf, " *)({p} + 0)"), v = out(reg) v,
                    p = in(reg) addr + i, options(nostack, readonly, preserves_flags))
            };
            out[i..i + W].copy_from_slice(&v.to_ne_bytes());
            i += W;
        }};
    }
    while i + 8 <= N {
        word!(u64, "u64");
    }
    if i + 4 <= N {
        word!(u32, "u32");
    }
    if i + 2 <= N {
        word!(u16, "u16");
    }
    if i < N {
        // SAFETY: as above.
        out[i] = unsafe { ptr::read((addr + i) as *const u8) };
    }
    out
}

#[inline(always)]
fn read<const N: usize>(ctx: &XdpContext, offset: usize) -> Result<[u8; N], Counter> {
    // SAFETY: bytes_at bounds-checks against data_end.
    unsafe { bytes_at::<N>(ctx, offset) }
}

#[inline(always)]
fn try_vpn_filter(ctx: &XdpContext, ip_start: bool) -> Result<u32, Counter> {
    parse(ctx, ip_start)?;
    // A closed pair first: every packet between the two is judged under `fallback`,
    // whatever it carries.
    if fallback::closed(ctx) == XDP_DROP {
        return Ok(XDP_DROP);
    }
    let head = stream_head(ctx)?;
    // Three frames called one after the other, never nested: their stacks never add up.
    let mut found = detect(ctx, head)?;
    if found == DETECT_ENCRYPTED_CANDIDATE {
        found = encrypted_stage(ctx);
    }
    // Decoded from judge's own encoding (see there).
    let r = judge(ctx, head, found);
    if r >> 32 == 0 {
        return Ok(r as u32);
    }
    Err(Counter::from_u8(r as u8).unwrap_or(Counter::InternalError))
}

/// Judges the packet [`parse`] left in the scratch slot ([`judge_packet`]). Not inlined:
/// its stack frame and the parser's are never on the stack at the same time. Answers the
/// action, or `1 << 32 | counter` for an error: a `Result` packs the error with an
/// undefined action half, which the compiler leaves in a register the verifier refuses to
/// read.
#[inline(never)]
fn judge(ctx: &XdpContext, head: u32, found: u32) -> u64 {
    match judge_packet(ctx, head, found) {
        Ok(action) => action as u64,
        Err(c) => 1 << 32 | c as u8 as u64,
    }
}

/// The body of [`judge`].
#[inline(always)]
fn judge_packet(ctx: &XdpContext, head: u32, found: u32) -> Result<u32, Counter> {
    let slot = SCRATCH.get_ptr_mut(0).ok_or(Counter::InternalError)?;
    // SAFETY: a per-CPU slot, only this CPU touches it while the program runs. Fields are
    // read in place: a copy of the record would sit on the deepest call chain's stack.
    let (payload_off, payload_len, captured, frag) = unsafe {
        let p = &(*slot).pkt;
        (p.payload_off, p.payload_len, p.captured, p.frag)
    };
    // Values read back from a map are unknown to the verifier: bound them again before they
    // become packet offsets.
    if payload_off > MAX_PAYLOAD_OFFSET || payload_len > 0xffff || captured > payload_len {
        return Err(Counter::Malformed);
    }
    if frag == FRAG_LATER {
        return Err(later_fragment_in_scratch());
    }
    // SAFETY: as above.
    let pkt = unsafe { &(*slot).pkt };
    if head & !HEAD_FIRST_CLIENT == HEAD_HELD && found == 0 {
        count(counter_index(Counter::TcpStreamBuffered));
        return Ok(XDP_PASS);
    }
    // SAFETY: a per-CPU slot, only this CPU touches it while the program runs; `detect` and
    // `stream_head` leave their detection there.
    let det = match found != 0 {
        true => unsafe { (*slot).det },
        // No signature: judged only if it goes to a listed VPN endpoint (endpoints.rs), by
        // the caller, from the scratch slot.
        false => {
            if !endpoints::candidate(pkt) {
                return Ok(XDP_PASS);
            }
            // The packet is in the scratch slot already.
            return Ok(JUDGE_ENDPOINT);
        }
    };
    // Every parse and classification path ends here with its own constants (family, offsets,
    // protocol, message, strength). Judged from those registers, `decide` would be verified
    // once per path and the program would exceed the verifier's budget. Judged from a map
    // slot, read through a pointer the compiler cannot see through, the values are unknown to
    // the verifier: every path meets in one state and `decide` is verified once. Candidates
    // only (ordinary traffic never gets here); the copy also keeps them off the BPF stack.
    if det.protocol == Protocol::Ike && pkt.ip_proto == IPPROTO_UDP {
        mark_ports(pkt.sport, pkt.dport, PORT_MARK_IKE);
    }
    // SAFETY: reads the local pointer; volatile so the stores above are not forwarded.
    let slot = unsafe { ptr::read_volatile(&slot) };
    // SAFETY: as above.
    let c = unsafe { &*slot };
    let action = decide(ctx, c);
    if action == XDP_DROP && c.pkt.frag == FRAG_FIRST {
        let p = &c.pkt;
        remember_dropped_fragment(p.family, p.ip_proto, &p.src, &p.dst, p.frag_id);
    }
    if action == XDP_PASS && endpoints::candidate(&c.pkt) {
        // Passed (pending, monitored, allowed): a listed endpoint is still judged, so a
        // monitored heuristic's report never shadows the endpoint list's verdict.
        return Ok(JUDGE_ENDPOINT);
    }
    Ok(action)
}

#[inline(always)]
fn config() -> Config {
    let mut c = CONFIG.get(0).copied().unwrap_or_default();
    if c.blocked_flow_timeout_ns == 0 {
        c.blocked_flow_timeout_ns = DEFAULT_BLOCKED_FLOW_TIMEOUT_NS;
    }
    if c.allowed_flow_timeout_ns == 0 {
        c.allowed_flow_timeout_ns = DEFAULT_ALLOWED_FLOW_TIMEOUT_NS;
    }
    if c.pending_flow_timeout_ns == 0 {
        c.pending_flow_timeout_ns = DEFAULT_PENDING_FLOW_TIMEOUT_NS;
    }
    if c.events_per_source_per_sec == 0 {
        c.events_per_source_per_sec = DEFAULT_EVENTS_PER_SOURCE_PER_SEC;
    }
    if c.events_per_cpu_per_sec == 0 {
        c.events_per_cpu_per_sec = DEFAULT_EVENTS_PER_CPU_PER_SEC;
    }
    if c.allowlist_lookup == 0 {
        c.allowlist_lookup = DEFAULT_ALLOWLIST_LOOKUP as u32;
    }
    c
}

#[inline(always)]
fn policy(protocol: Protocol) -> u8 {
    POLICY
        .get(protocol as u32)
        .copied()
        .unwrap_or(PolicyMode::Off as u8)
}

/// What the flow entry of a packet's protocol decided.
enum Judged {
    /// Passed without a report (allowed flow, pending flow, or not the flow's own packet).
    Pass,
    /// Reported with this reason; the verdict follows the current policy (or is `allowed`
    /// for [`Reason::Registered`]).
    Report(Reason),
    /// The entry does not decide: judge the packet as on a fresh 5-tuple.
    Fresh,
}

const _: () = assert!(size_of::<Event>().is_multiple_of(8));
