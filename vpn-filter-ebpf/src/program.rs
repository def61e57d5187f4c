use core::{ffi::c_void, mem::size_of, ptr};

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::{bpf_ktime_get_ns, bpf_xdp_load_bytes},
    macros::{map, xdp},
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, HashMap, LruHashMap, PerCpuArray, RingBuf,
    },
    programs::XdpContext,
};
use vpn_filter_common::{
    counter_index, fast_v6_filter_bit, verdict_counter_index, AllowValue, AllowlistLookup, Config,
    Counter, Event, ExtHeaderOverflow, FastKeyV4, FastKeyV6, FastLengths, FlowKey, FlowState,
    FlowStatus, PolicyMode, Protocol, RateState, Reason, Verdict, DEFAULT_ALLOWED_FLOW_TIMEOUT_NS,
    DEFAULT_ALLOWLIST_LOOKUP, DEFAULT_ALLOW_V4_ENTRIES, DEFAULT_ALLOW_V6_ENTRIES,
    DEFAULT_BLOCKED_FLOW_TIMEOUT_NS, DEFAULT_EVENTS_PER_CPU_PER_SEC,
    DEFAULT_EVENTS_PER_SOURCE_PER_SEC, DEFAULT_EVENT_LIMIT_ENTRIES, DEFAULT_EVENT_RING_BYTES,
    DEFAULT_FLOW_ENTRIES, DEFAULT_PENDING_FLOW_TIMEOUT_NS, ENCAP_VLAN_STACK, FAMILY_V4, FAMILY_V6,
    FAST_BITMAP_V4_LONG, FAST_BITMAP_V6, FAST_BITMAP_WORDS, FAST_V6_MAX_LENGTHS, FAST_V6_USE_TRIE,
    FLOW_CLASS_DATA, REPEAT_REPORT_WINDOWS, REPEAT_RESERVE_PER_SEC, REPEAT_SLOTS, REPEAT_WINDOW_NS,
    STATS_LEN,
};
mod endpoints;

use vpn_filter_ebpf::{
    classify::{
        advance, belongs, classify_gre, classify_ip_proto, classify_tcp, classify_udp,
        ike_any_port_prefilter, tcp_prefilter, udp_prefilter, Confirmation, Detection, Prefilter,
        Strength, WINDOW,
    },
    parse::{
        self, Frame, Packet, FRAG_FIRST, FRAG_LATER, IPPROTO_AH, IPPROTO_ESP, IPPROTO_GRE,
        IPPROTO_TCP, IPPROTO_UDP, MAX_PAYLOAD_OFFSET,
    },
};

#[map(name = "ALLOW_V4")]
static ALLOW_V4: LpmTrie<[u8; 4], AllowValue> =
    LpmTrie::with_max_entries(DEFAULT_ALLOW_V4_ENTRIES, 0);

#[map(name = "ALLOW_V6")]
static ALLOW_V6: LpmTrie<[u8; 16], AllowValue> =
    LpmTrie::with_max_entries(DEFAULT_ALLOW_V6_ENTRIES, 0);

/// Fast path: the IPv4 /24 bitmap and the filters in front of the hashes (see
/// [`FAST_BITMAP_WORDS`]).
#[map(name = "FAST_BITMAPS")]
static FAST_BITMAPS: Array<u64> = Array::with_max_entries(FAST_BITMAP_WORDS, 0);

/// BPF_F_NO_PREALLOC: memory follows the feed, not the configured capacity.
const BPF_F_NO_PREALLOC: u32 = 1;

/// Fast path, IPv4 prefixes /25../32, exact match on (masked address, length).
#[map(name = "FAST_V4_LONG")]
static FAST_V4_LONG: HashMap<FastKeyV4, u8> =
    HashMap::with_max_entries(DEFAULT_ALLOW_V4_ENTRIES, BPF_F_NO_PREALLOC);

/// Fast path, IPv6 prefixes, exact match on (masked address, length).
#[map(name = "FAST_V6")]
static FAST_V6: HashMap<FastKeyV6, u8> =
    HashMap::with_max_entries(DEFAULT_ALLOW_V6_ENTRIES, BPF_F_NO_PREALLOC);

/// Fast path: the prefix lengths the hashes hold.
#[map(name = "FAST_LENGTHS")]
static FAST_LENGTHS: Array<FastLengths> = Array::with_max_entries(1, 0);

/// Per-protocol [`PolicyMode`], indexed by [`Protocol`].
#[map(name = "POLICY")]
static POLICY: Array<u8> = Array::with_max_entries(Protocol::COUNT as u32, 0);

#[map(name = "CONFIG")]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map(name = "FLOWS")]
static FLOWS: LruHashMap<FlowKey, FlowState> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_ENTRIES, 0);

/// Per protocol: the latest expiry of any flow entry of that protocol. Follow-up-only packets
/// (OpenVPN data, L2TP acks) look up the flow map only while this is in the future, so
/// ordinary traffic that happens to share their first byte pays an array read, not a hash.
#[map(name = "FLOW_GATE")]
static FLOW_GATE: Array<u64> = Array::with_max_entries(Protocol::COUNT as u32, 0);

/// Allowlist generation: raised by the controller after each sync that changed the allowlist
/// (after the writes), read here before any allowlist lookup. A flow entry stamped with an
/// older generation looks its endpoints up again on its next packet.
#[map(name = "ALLOW_GEN")]
static ALLOW_GEN: Array<u64> = Array::with_max_entries(1, 0);

/// Repeat-source filter: per slot (hash of the source address) a 16-bit fingerprint, the
/// window it was last seen in and the window it was last reported in from the reserve.
#[map(name = "REPEAT_SOURCES")]
static REPEAT_SOURCES: Array<u32> = Array::with_max_entries(REPEAT_SLOTS, 0);

/// Per-CPU scratch slot holding the packet's headers and detection while it is judged (see
/// [`try_vpn_filter`]).
#[map(name = "SCRATCH")]
static SCRATCH: PerCpuArray<Candidate> = PerCpuArray::with_max_entries(1, 0);

/// `try_vpn_filter`'s answer for "no signature, but the destination may be a listed endpoint":
/// the packet is in the scratch slot (not an XDP action).
const JUDGE_ENDPOINT: u32 = u32::MAX;

/// Per-CPU slot the parser passes its offsets through (see [`launder`]).
#[map(name = "PARSE_SCRATCH")]
static PARSE_SCRATCH: PerCpuArray<[u64; 8]> = PerCpuArray::with_max_entries(1, 0);

/// Returns `v` unchanged, through a map slot the verifier cannot see into. Every L2 stack,
/// extension header chain and tunnel ends with its own constant offsets; carried in
/// registers they would make the verifier walk the rest of the program once per path. Passed
/// through the slot they are unknown values (bounded again by the caller's checks), and all
/// paths meet in one state.
#[inline(always)]
fn launder<const N: usize>(v: [u64; N]) -> Result<[u64; N], Counter> {
    let slot = PARSE_SCRATCH.get_ptr_mut(0).ok_or(Counter::InternalError)?;
    let mut out = [0u64; N];
    let mut i = 0;
    while i < N && i < 8 {
        // SAFETY: a per-CPU slot of eight words, only this CPU touches it while the program
        // runs; volatile so that the compiler does not forward the store to the load.
        unsafe {
            ptr::write_volatile(&mut (*slot)[i], v[i]);
            out[i] = ptr::read_volatile(&(*slot)[i]);
        }
        i += 1;
    }
    Ok(out)
}

/// Per-CPU buffer for the payload window a candidate is classified from.
#[map(name = "PAYLOAD_WINDOW")]
static PAYLOAD_WINDOW: PerCpuArray<[u8; WINDOW]> = PerCpuArray::with_max_entries(1, 0);

/// A classified packet on its way to [`decide`].
#[derive(Clone, Copy)]
struct Candidate {
    pkt: Packet,
    det: Detection,
}

#[map(name = "STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STATS_LEN, 0);

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_EVENT_RING_BYTES, 0);

/// Per-CPU event budget over all sources (first-N-per-second), checked before the
/// per-source limit so a random-source flood costs no LRU insert per packet. Slot 1 is the
/// reserve for retrying sources once slot 0 is spent.
#[map(name = "EVENT_BUDGET")]
static EVENT_BUDGET: PerCpuArray<RateState> = PerCpuArray::with_max_entries(2, 0);

#[map(name = "EVENT_LIMIT")]
static EVENT_LIMIT: LruHashMap<[u8; 16], RateState> =
    LruHashMap::with_max_entries(DEFAULT_EVENT_LIMIT_ENTRIES, 0);

const TCP_SYN: u8 = 0x02;
const NS_PER_SEC: u64 = 1_000_000_000;
/// How long a dropped first fragment's datagram is remembered: Linux's reassembly timeout.
const FRAG_REASSEMBLY_NS: u64 = 30_000_000_000;

/// Key of `FRAGS_DROPPED`: a datagram whose first fragment was dropped.
#[repr(C)]
#[derive(Clone, Copy)]
struct FragKey {
    src: [u8; 16],
    dst: [u8; 16],
    id: u32,
    family: u8,
    ip_proto: u8,
    _pad: [u8; 2],
}

/// Datagrams whose first fragment was dropped (value: when), so that their later fragments
/// are counted (`fragment_of_dropped`). They pass: the receiver cannot reassemble them.
#[map(name = "FRAGS_DROPPED")]
static FRAGS_DROPPED: LruHashMap<FragKey, u64> = LruHashMap::with_max_entries(16384, 0);

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
        Ok(action) => action,
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
    Ok(unsafe { ptr::read_unaligned((start + offset) as *const [u8; N]) })
}

#[inline(always)]
fn read<const N: usize>(ctx: &XdpContext, offset: usize) -> Result<[u8; N], Counter> {
    // SAFETY: bytes_at bounds-checks against data_end.
    unsafe { bytes_at::<N>(ctx, offset) }
}

#[inline(always)]
fn try_vpn_filter(ctx: &XdpContext, ip_start: bool) -> Result<u32, Counter> {
    parse(ctx, ip_start)?;
    let head = stream_head(ctx)?;
    judge(ctx, head)
}

/// Judges the packet [`parse`] left in the scratch slot. Not inlined: its stack frame and
/// the parser's are never on the stack at the same time.
#[inline(never)]
fn judge(ctx: &XdpContext, head: u32) -> Result<u32, Counter> {
    let slot = SCRATCH.get_ptr_mut(0).ok_or(Counter::InternalError)?;
    // SAFETY: a per-CPU slot, only this CPU touches it while the program runs.
    let pkt = unsafe { (*slot).pkt };
    // Values read back from a map are unknown to the verifier: bound them again before they
    // become packet offsets.
    if pkt.payload_off > MAX_PAYLOAD_OFFSET
        || pkt.payload_len > 0xffff
        || pkt.captured > pkt.payload_len
    {
        return Err(Counter::Malformed);
    }
    if pkt.frag == FRAG_LATER {
        return Err(later_fragment(&pkt));
    }
    if head == HEAD_HELD {
        count(counter_index(Counter::TcpStreamBuffered));
        return Ok(XDP_PASS);
    }
    let found = if head == HEAD_DETECTED {
        // SAFETY: stream_head stored it in the per-CPU slot.
        Some(unsafe { (*slot).det })
    } else {
        detect(ctx, &pkt)?
    };
    let det = match found {
        Some(d) => d,
        // No signature: judged only if it goes to a listed VPN endpoint (endpoints.rs), by
        // the caller, from the scratch slot.
        None => {
            if !endpoints::candidate(&pkt) {
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
    // SAFETY: a per-CPU slot, only this CPU touches it while the program runs.
    unsafe { (*slot).det = det };
    // SAFETY: reads the local pointer; volatile so the stores above are not forwarded.
    let slot = unsafe { ptr::read_volatile(&slot) };
    // SAFETY: as above.
    let c = unsafe { &*slot };
    let action = decide(ctx, c);
    if action == XDP_DROP && c.pkt.frag == FRAG_FIRST {
        let p = &c.pkt;
        remember_dropped_fragment(p.family, p.ip_proto, &p.src, &p.dst, p.frag_id);
    }
    Ok(action)
}

/// [`stream_head`]'s answers.
const HEAD_ORDINARY: u32 = 0;
/// The segment carries part of a candidate stream's first [`HEAD_BYTES`] and was buffered;
/// the bytes so far are not complete enough to judge.
const HEAD_HELD: u32 = 1;
/// The stream's first bytes, reassembled, matched: the detection is in the scratch slot.
const HEAD_DETECTED: u32 = 2;

/// Bytes of a TCP stream's start that are reassembled: the classifier's window.
const HEAD_BYTES: usize = WINDOW;
/// Slots of the `TCP_HEADS` array (a power of two).
const TCP_HEAD_SLOTS: u32 = 1 << 18;
/// A slot is trusted for this many ~1.07 s ticks after its SYN.
const TCP_HEAD_TICKS: u64 = 60;

/// Per direction of a TCP connection, from its SYN (or SYN-ACK): the initial sequence number,
/// a 16-bit tag of the 4-tuple's hash and the tick it was seen, in a slot chosen by the hash.
/// A data segment finds whether it touches the stream's first bytes with one array read, so
/// ordinary segments never reach a hash map. Collisions only lose reassembly for a flow
/// (the segment is then judged alone, as before).
#[map(name = "TCP_HEADS")]
static TCP_HEADS: Array<u64> = Array::with_max_entries(TCP_HEAD_SLOTS, 0);

/// Reassembly of a candidate stream's first bytes, per direction: while a segment arrives
/// short (a split) or out of order.
#[map(name = "TCP_STREAMS")]
static TCP_STREAMS: LruHashMap<StreamKey, StreamHead> = LruHashMap::with_max_entries(16384, 0);

/// An empty [`StreamHead`] (never written) that new entries are copied from.
#[map(name = "STREAM_TEMPLATE")]
static STREAM_TEMPLATE: PerCpuArray<StreamHead> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
#[derive(Clone, Copy)]
struct StreamKey {
    src: [u8; 16],
    dst: [u8; 16],
    sport: u16,
    dport: u16,
    isn: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct StreamHead {
    /// The first bytes; [`HEAD_BYTES`] + 128 so that every bounded copy fits.
    buf: [u8; HEAD_BYTES + 128],
    /// Bytes contiguous from the stream's start.
    contig: u16,
    /// One out-of-order range held beyond a gap (`ooo_end == 0`: none).
    ooo_start: u16,
    ooo_end: u16,
    /// Highest stream offset seen (capped), the length the classifier is told.
    end: u16,
}

/// Hash of a TCP direction (addresses, ports), with the per-boot seed.
#[inline(always)]
fn tcp_hash(pkt: &Packet) -> u32 {
    let mut h: u32 = TCP_HEAD_SEED.get(0).copied().unwrap_or(0) ^ 0x811c_9dc5;
    let mut i = 0;
    while i < 16 {
        let a = u32::from_ne_bytes([pkt.src[i], pkt.src[i + 1], pkt.src[i + 2], pkt.src[i + 3]]);
        let b = u32::from_ne_bytes([pkt.dst[i], pkt.dst[i + 1], pkt.dst[i + 2], pkt.dst[i + 3]]);
        h = (h ^ a).wrapping_mul(0x0100_0193).rotate_left(13);
        h = (h ^ b).wrapping_mul(0x0100_0193).rotate_left(13);
        i += 4;
    }
    h = (h ^ ((pkt.sport as u32) << 16 | pkt.dport as u32)).wrapping_mul(0x85eb_ca6b);
    h ^ (h >> 15)
}

/// Seed of [`tcp_hash`], written by the controller at load (random per boot), so that
/// nobody can aim SYNs at another connection's slot.
#[map(name = "TCP_HEAD_SEED")]
static TCP_HEAD_SEED: Array<u32> = Array::with_max_entries(1, 0);

/// TCP streams, not segments: a VPN message whose first bytes are split over segments (at
/// any position, in any order) is judged on the reassembled bytes. SYN and SYN-ACK record the
/// initial sequence number; a data segment within the first [`HEAD_BYTES`] of its stream that
/// does not hold them all from the start is buffered until they are contiguous, then judged.
/// Reads the packet from the scratch slot; not inlined: its own stack frame, called before
/// [`judge`] rather than from it.
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "passing map keys by value copies them onto the 512-byte BPF stack"
)]
#[inline(never)]
fn stream_head(ctx: &XdpContext) -> Result<u32, Counter> {
    let scratch = SCRATCH.get_ptr_mut(0).ok_or(Counter::InternalError)?;
    // SAFETY: a per-CPU slot, only this CPU touches it while the program runs.
    let pkt = unsafe { &(*scratch).pkt };
    if pkt.ip_proto != IPPROTO_TCP || pkt.frag == FRAG_LATER {
        return Ok(HEAD_ORDINARY);
    }
    let h = tcp_hash(pkt);
    let idx = h & (TCP_HEAD_SLOTS - 1);
    let tag = (h >> 16) as u64;
    // SAFETY: helper without arguments.
    let tick = (unsafe { bpf_ktime_get_ns() } >> 30) & 0xffff;
    if pkt.tcp_flags & TCP_SYN != 0 {
        if let Some(slot) = TCP_HEADS.get_ptr_mut(idx) {
            // SAFETY: an array slot; a racing writer on another CPU writes a whole u64 too.
            unsafe { *slot = (pkt.tcp_seq as u64) << 32 | tag << 16 | tick };
        }
        // A SYN's own data (TCP Fast Open) starts the stream: judged alone, as before.
        return Ok(HEAD_ORDINARY);
    }
    let len = pkt.payload_len;
    if len == 0 {
        return Ok(HEAD_ORDINARY);
    }
    let Some(slot) = TCP_HEADS.get_ptr_mut(idx) else {
        return Ok(HEAD_ORDINARY);
    };
    // SAFETY: as above.
    let v = unsafe { *slot };
    if v == 0
        || (v >> 16) & 0xffff != tag
        || (tick.wrapping_sub(v & 0xffff) & 0xffff) > TCP_HEAD_TICKS
    {
        return Ok(HEAD_ORDINARY);
    }
    let isn = (v >> 32) as u32;
    let rel = pkt.tcp_seq.wrapping_sub(isn.wrapping_add(1)) as usize;
    if rel >= HEAD_BYTES {
        // Beyond the head (or before the ISN): nothing to reassemble.
        return Ok(HEAD_ORDINARY);
    }
    let key = StreamKey {
        src: pkt.src,
        dst: pkt.dst,
        sport: pkt.sport,
        dport: pkt.dport,
        isn,
    };
    // SAFETY: a pointer into the LRU map's value, valid for this program run.
    let mut entry = TCP_STREAMS.get_ptr_mut(&key);
    if entry.is_none() {
        if rel == 0 && len >= HEAD_BYTES {
            // The usual case: the first segment holds the whole head. Judged alone; the slot
            // is released so that the rest of the stream skips this.
            // SAFETY: as above.
            unsafe { *slot = 0 };
            return Ok(HEAD_ORDINARY);
        }
        // Inserted from a zeroed map slot: 232 bytes would not fit on the stack.
        let Some(fresh) = STREAM_TEMPLATE.get(0) else {
            return Ok(HEAD_ORDINARY);
        };
        if TCP_STREAMS.insert(&key, fresh, 0).is_err() {
            count(counter_index(Counter::InternalError));
            return Ok(HEAD_ORDINARY);
        }
        entry = TCP_STREAMS.get_ptr_mut(&key);
    }
    let Some(e) = entry else {
        return Ok(HEAD_ORDINARY);
    };
    // SAFETY: a pointer into the LRU map's value, valid for this program run. Concurrent
    // segments of one direction on two CPUs could interleave here; the worst outcome is a
    // head judged on mixed bytes, as a receiver seeing overlapping retransmissions might.
    let e = unsafe { &mut *e };
    let seg_end = rel + len;
    let end = if seg_end > 0xffff { 0xffff } else { seg_end };
    if end > e.end as usize {
        e.end = end as u16;
    }
    let contig = e.contig as usize;
    let clip_end = if seg_end > HEAD_BYTES {
        HEAD_BYTES
    } else {
        seg_end
    };
    if rel <= contig {
        // In order (or overlapping what is held): the bytes not held yet, first copy wins as
        // in the receiver's queue.
        if clip_end > contig {
            copy_segment(ctx, pkt, e, contig, contig - rel, clip_end - contig)?;
            let mut c = clip_end;
            // The held out-of-order range joins once the gap is filled.
            if e.ooo_end != 0 && e.ooo_start as usize <= c {
                if e.ooo_end as usize > c {
                    c = e.ooo_end as usize;
                }
                e.ooo_start = 0;
                e.ooo_end = 0;
            }
            e.contig = c as u16;
        }
    } else if e.ooo_end == 0 {
        copy_segment(ctx, pkt, e, rel, 0, clip_end - rel)?;
        e.ooo_start = rel as u16;
        e.ooo_end = clip_end as u16;
    } else if rel == e.ooo_end as usize && clip_end > rel {
        copy_segment(ctx, pkt, e, rel, 0, clip_end - rel)?;
        e.ooo_end = clip_end as u16;
    }
    let contig = e.contig as usize;
    // Judge once everything seen is contiguous, or the whole head is.
    if contig == 0 || (contig < HEAD_BYTES && e.ooo_end != 0) {
        return Ok(HEAD_HELD);
    }
    let stream_len = if (e.end as usize) > contig {
        e.end as usize
    } else {
        contig
    };
    let w: &[u8; WINDOW] = match e.buf.first_chunk::<WINDOW>() {
        Some(w) => w,
        None => return Ok(HEAD_ORDINARY),
    };
    if let Some(det) = classify_tcp(stream_len, w) {
        // SAFETY: as above.
        unsafe { (*scratch).det = det };
        // Kept: a retransmission of any of its segments is judged again (and dropped with the
        // flow).
        return Ok(HEAD_DETECTED);
    }
    if contig >= HEAD_BYTES {
        // The head is complete and is no VPN: forget the stream.
        // SAFETY: as above.
        unsafe { *slot = 0 };
        let _ = TCP_STREAMS.remove(&key);
        return Ok(HEAD_ORDINARY);
    }
    Ok(HEAD_HELD)
}

/// Copies `n` bytes of the segment's payload, from `from` on, into the head at `at`.
#[inline(always)]
fn copy_segment(
    ctx: &XdpContext,
    pkt: &Packet,
    e: &mut StreamHead,
    at: usize,
    from: usize,
    n: usize,
) -> Result<(), Counter> {
    if n == 0
        || n > HEAD_BYTES
        || at >= HEAD_BYTES
        || from > pkt.captured
        || from + n > pkt.captured
    {
        return Ok(());
    }
    // The same value, in a form whose range the verifier sees as 1..=128 (the compiler
    // folds the `n == 0` check above into one it cannot follow).
    let n = ((n - 1) & 0x7f) + 1;
    // SAFETY: `at < HEAD_BYTES` and `n <= 128` keep the write inside the buffer of
    // HEAD_BYTES + 128; the helper bounds-checks the packet side.
    let rc = unsafe {
        bpf_xdp_load_bytes(
            ctx.ctx as *mut _,
            (pkt.payload_off + from) as u32,
            e.buf.as_mut_ptr().add(at) as *mut c_void,
            n as u32,
        )
    };
    if rc != 0 {
        return Err(Counter::Truncated);
    }
    Ok(())
}

/// The XDP side of [`Frame`]: direct packet access, bounds-checked against `data_end`.
struct Xdp<'a>(&'a XdpContext);

impl Frame for Xdp<'_> {
    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Result<[u8; N], Counter> {
        read(self.0, offset)
    }

    #[inline(always)]
    fn len(&self) -> usize {
        self.0.data_end() - self.0.data()
    }

    #[inline(always)]
    fn launder<const N: usize>(&self, v: [u64; N]) -> Result<[u64; N], Counter> {
        launder(v)
    }
}

/// Parses the frame (`vpn_filter_ebpf::parse`) and leaves the packet in the scratch slot for
/// [`judge`]. Not inlined: its own stack frame, so its temporaries never stack up with the
/// classifier's (512 bytes for a call chain).
#[inline(never)]
fn parse(ctx: &XdpContext, ip_start: bool) -> Result<(), Counter> {
    let mut pkt = Packet::default();
    let r = parse::parse(&Xdp(ctx), ip_start, &mut pkt);
    match pkt.outer_family {
        FAMILY_V4 => count(counter_index(Counter::Ipv4)),
        FAMILY_V6 => count(counter_index(Counter::Ipv6)),
        _ => {}
    }
    if pkt.encap & !ENCAP_VLAN_STACK != 0 {
        count(counter_index(Counter::Encapsulated));
    }
    match r {
        Ok(()) => {}
        Err(Counter::TinyFragment) => {
            // Its later fragments are counted as `fragment_of_dropped`.
            let p = &pkt;
            remember_dropped_fragment(p.family, p.ip_proto, &p.src, &p.dst, p.frag_id);
            return Err(Counter::TinyFragment);
        }
        Err(e) => return Err(e),
    }
    let slot = SCRATCH.get_ptr_mut(0).ok_or(Counter::InternalError)?;
    // SAFETY: a per-CPU slot, only this CPU touches it while the program runs.
    unsafe { (*slot).pkt = pkt };
    Ok(())
}

#[inline(always)]
fn fragment_key(family: u8, ip_proto: u8, src: &[u8; 16], dst: &[u8; 16], id: u32) -> FragKey {
    FragKey {
        src: *src,
        dst: *dst,
        id,
        family,
        ip_proto,
        _pad: [0; 2],
    }
}

#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "passing map keys by value copies them onto the 512-byte BPF stack"
)]
#[inline(always)]
fn remember_dropped_fragment(family: u8, ip_proto: u8, src: &[u8; 16], dst: &[u8; 16], id: u32) {
    let key = fragment_key(family, ip_proto, src, dst, id);
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if FRAGS_DROPPED.insert(&key, &now, 0).is_err() {
        count(counter_index(Counter::InternalError));
    }
}

/// A later fragment: passed (it has no L4 header to judge), and counted as
/// `fragment_of_dropped` when its first fragment was dropped.
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "passing map keys by value copies them onto the 512-byte BPF stack"
)]
#[inline(always)]
fn later_fragment(pkt: &Packet) -> Counter {
    count(counter_index(Counter::Fragment));
    let key = fragment_key(pkt.family, pkt.ip_proto, &pkt.src, &pkt.dst, pkt.frag_id);
    // SAFETY: the value is copied out at once.
    let dropped = unsafe { FRAGS_DROPPED.get(&key) }.copied();
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    match dropped {
        Some(t) if now.saturating_sub(t) < FRAG_REASSEMBLY_NS => Counter::FragmentOfDropped,
        _ => Counter::Packets,
    }
}

/// Header checks first; the payload window is copied only for candidates.
#[inline(always)]
fn detect(ctx: &XdpContext, pkt: &Packet) -> Result<Option<Detection>, Counter> {
    match pkt.ip_proto {
        IPPROTO_UDP | IPPROTO_TCP => {}
        IPPROTO_GRE => {
            let head: [u8; 4] = read(ctx, pkt.payload_off)?;
            return Ok(classify_gre(head));
        }
        IPPROTO_ESP | IPPROTO_AH => return Ok(classify_ip_proto(pkt.ip_proto)),
        _ => return Ok(None),
    }
    let len = pkt.payload_len;
    // Every VPN message recognised is at least four bytes long (and a first fragment must
    // hold the first four).
    if len < 4 || pkt.captured < 4 {
        return Ok(None);
    }
    let head: [u8; 4] = read(ctx, pkt.payload_off)?;
    let pre = if pkt.ip_proto == IPPROTO_UDP {
        match udp_prefilter(pkt.sport, pkt.dport, len, head) {
            Prefilter::No if len >= 28 && pkt.captured >= 32 => {
                let h: [u8; 16] = read(ctx, pkt.payload_off + 16)?;
                if ike_any_port_prefilter(len, h) {
                    Prefilter::Inspect
                } else {
                    Prefilter::No
                }
            }
            p => p,
        }
    } else {
        tcp_prefilter(len, head)
    };
    match pre {
        Prefilter::No => Ok(None),
        Prefilter::FollowUp(protocol, message) => {
            // Meaningful only while this protocol has live flows.
            let gate = FLOW_GATE.get(protocol as u32).copied().unwrap_or(0);
            // SAFETY: helper without arguments.
            if gate == 0 || unsafe { bpf_ktime_get_ns() } > gate {
                return Ok(None);
            }
            let mut token = [0u8; 8];
            // Control packets: the tls-crypt packet-id time at [13..17]; data packets: the
            // opcode and peer id (see `belongs`).
            let mut aux = [head[0], head[1], head[2], head[3]];
            if pkt.captured >= 17 {
                let h: [u8; 17] = read(ctx, pkt.payload_off)?;
                token.copy_from_slice(&h[1..9]);
                if message == vpn_filter_common::Message::OvpnControl {
                    aux.copy_from_slice(&h[13..17]);
                }
            } else if pkt.captured >= 9 {
                let h: [u8; 9] = read(ctx, pkt.payload_off)?;
                token.copy_from_slice(&h[1..9]);
            }
            Ok(Some(Detection {
                protocol,
                message,
                strength: Strength::FollowUp,
                token,
                peer_token: [0; 8],
                aux,
            }))
        }
        Prefilter::Inspect => {
            count(counter_index(Counter::Candidates));
            // The window lives in a per-CPU map slot, not on the BPF stack (512 bytes for a
            // whole call chain).
            let w = match PAYLOAD_WINDOW.get_ptr_mut(0) {
                // SAFETY: a per-CPU slot, only this CPU touches it while the program runs.
                Some(p) => unsafe { &mut *p },
                None => return Err(Counter::InternalError),
            };
            *w = [0u8; WINDOW];
            // A first fragment may hold fewer bytes than the datagram: the rest stays zero.
            let n = if pkt.captured < WINDOW {
                pkt.captured
            } else {
                WINDOW
            };
            if n == 0 || n > WINDOW {
                return Ok(None);
            }
            // SAFETY: `w` has WINDOW >= n bytes; the helper bounds-checks the packet side.
            let rc = unsafe {
                bpf_xdp_load_bytes(
                    ctx.ctx as *mut _,
                    pkt.payload_off as u32,
                    w.as_mut_ptr() as *mut c_void,
                    n as u32,
                )
            };
            if rc != 0 {
                return Err(Counter::Truncated);
            }
            Ok(if pkt.ip_proto == IPPROTO_UDP {
                classify_udp(pkt.sport, pkt.dport, len, w)
            } else {
                classify_tcp(len, w)
            })
        }
    }
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

/// Canonical flow key of `protocol`'s entry: the lower (address, port) endpoint first. Returns
/// the key and whether the packet's source is the `lo` endpoint.
#[inline(always)]
fn flow_key(pkt: &Packet, protocol: Protocol, class: u8) -> (FlowKey, bool) {
    let s_hi = u64::from_be_bytes([
        pkt.src[0], pkt.src[1], pkt.src[2], pkt.src[3], pkt.src[4], pkt.src[5], pkt.src[6],
        pkt.src[7],
    ]);
    let s_lo = u64::from_be_bytes([
        pkt.src[8],
        pkt.src[9],
        pkt.src[10],
        pkt.src[11],
        pkt.src[12],
        pkt.src[13],
        pkt.src[14],
        pkt.src[15],
    ]);
    let d_hi = u64::from_be_bytes([
        pkt.dst[0], pkt.dst[1], pkt.dst[2], pkt.dst[3], pkt.dst[4], pkt.dst[5], pkt.dst[6],
        pkt.dst[7],
    ]);
    let d_lo = u64::from_be_bytes([
        pkt.dst[8],
        pkt.dst[9],
        pkt.dst[10],
        pkt.dst[11],
        pkt.dst[12],
        pkt.dst[13],
        pkt.dst[14],
        pkt.dst[15],
    ]);
    let src_first = (s_hi, s_lo, pkt.sport) <= (d_hi, d_lo, pkt.dport);
    let (a, ap, b, bp) = if src_first {
        (pkt.src, pkt.sport, pkt.dst, pkt.dport)
    } else {
        (pkt.dst, pkt.dport, pkt.src, pkt.sport)
    };
    (
        FlowKey {
            lo_addr: a,
            hi_addr: b,
            lo_port: ap.to_be_bytes(),
            hi_port: bp.to_be_bytes(),
            ip_proto: pkt.ip_proto,
            family: pkt.family,
            protocol: protocol as u8,
            class,
            vlan: pkt.vlan.to_be_bytes(),
            _pad2: [0; 2],
        },
        src_first,
    )
}

/// Is either endpoint in the allowlist? `mode` is the configured [`AllowlistLookup`].
#[inline(always)]
fn allowlisted(pkt: &Packet, mode: u32) -> bool {
    count(counter_index(Counter::AllowlistLookups));
    address_allowed(mode, pkt.family, &pkt.src) || address_allowed(mode, pkt.family, &pkt.dst)
}

/// Is `addr` in a registered prefix? `mode` is an [`AllowlistLookup`]; every mode gives the
/// same answer (tests/tests/fastpath.rs checks it). Not inlined: its own stack frame.
#[inline(never)]
fn address_allowed(mode: u32, family: u8, addr: &[u8; 16]) -> bool {
    if family == FAMILY_V4 {
        return v4_allowed(mode, [addr[0], addr[1], addr[2], addr[3]]);
    }
    // IPv4-mapped IPv6 (::ffff:a.b.c.d) is the IPv4 host a.b.c.d: judged by the IPv4
    // structures, so a registration of 203.0.113.7 also covers a dual-stack socket's mapped
    // form.
    let mapped = addr[0] | addr[1] | addr[2] | addr[3] | addr[4] | addr[5] | addr[6] | addr[7] == 0
        && addr[8] | addr[9] == 0
        && addr[10] == 0xff
        && addr[11] == 0xff;
    if mapped {
        return v4_allowed(mode, [addr[12], addr[13], addr[14], addr[15]]);
    }
    // NAT64's well-known prefix (64:ff9b::/96, RFC 6052) embeds the IPv4 host a.b.c.d that a
    // NAT64 gateway translates to: a registration of a.b.c.d covers it. An IPv6 registration
    // of the NAT64 address itself is honoured too (below).
    let nat64 = addr[0] == 0
        && addr[1] == 0x64
        && addr[2] == 0xff
        && addr[3] == 0x9b
        && addr[4] | addr[5] | addr[6] | addr[7] | addr[8] | addr[9] | addr[10] | addr[11] == 0;
    if nat64 && v4_allowed(mode, [addr[12], addr[13], addr[14], addr[15]]) {
        return true;
    }
    if mode == AllowlistLookup::Fast as u32 {
        if let Some(found) = v6_fast(addr) {
            return found;
        }
    }
    ALLOW_V6.get(Key::new(128, *addr)).is_some()
}

#[inline(always)]
fn v4_allowed(mode: u32, a: [u8; 4]) -> bool {
    if mode == AllowlistLookup::Fast as u32 || mode == AllowlistLookup::BitmapTrie as u32 {
        let ip = u32::from_be_bytes(a);
        let slash24 = ip >> 8;
        if let Some(word) = FAST_BITMAPS.get(slash24 >> 6) {
            if word & (1u64 << (slash24 & 63)) != 0 {
                return true;
            }
        }
        let long = FAST_LENGTHS.get(0).map(|l| l.v4_long).unwrap_or(0);
        if long == 0 {
            return false;
        }
        if mode == AllowlistLookup::Fast as u32 {
            let idx = FAST_BITMAP_V4_LONG + (slash24 >> 6);
            return match FAST_BITMAPS.get(idx) {
                Some(word) if word & (1u64 << (slash24 & 63)) != 0 => v4_long_probe(ip, long),
                _ => false,
            };
        }
    }
    ALLOW_V4.get(Key::new(32, a)).is_some()
}

/// Probes `FAST_V4_LONG` for each length 25..=32 whose bit is set in `present`.
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "passing map keys by value copies them onto the 512-byte BPF stack"
)]
fn v4_long_probe(ip: u32, present: u32) -> bool {
    let mut key = FastKeyV4::default();
    let mut i = 0u32;
    while i < 8 {
        if present & (1 << i) != 0 {
            let len = 25 + i;
            let masked = ip & (u32::MAX << (32 - len));
            key.addr = masked.to_be_bytes();
            key.len = len as u8;
            if FAST_V4_LONG.get_ptr(&key).is_some() {
                return true;
            }
        }
        i += 1;
    }
    false
}

/// Probes `FAST_V6` for each length present; `None` when IPv6 must use the trie.
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "passing map keys by value copies them onto the 512-byte BPF stack"
)]
fn v6_fast(addr: &[u8; 16]) -> Option<bool> {
    let lengths = FAST_LENGTHS.get(0)?;
    let n = lengths.v6_count;
    if n == FAST_V6_USE_TRIE || n as usize > FAST_V6_MAX_LENGTHS {
        return None;
    }
    let hi = u64::from_be_bytes([
        addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
    ]);
    let lo = u64::from_be_bytes([
        addr[8], addr[9], addr[10], addr[11], addr[12], addr[13], addr[14], addr[15],
    ]);
    // No prefix overlaps this /32: no probe can hit.
    if lengths.v6_unfiltered == 0 {
        let bit = fast_v6_filter_bit((hi >> 32) as u32);
        match FAST_BITMAPS.get(FAST_BITMAP_V6 + (bit >> 6)) {
            Some(word) if word & (1u64 << (bit & 63)) != 0 => {}
            _ => return Some(false),
        }
    }
    let mut key = FastKeyV6::default();
    let mut i = 0usize;
    while i < FAST_V6_MAX_LENGTHS {
        if i >= n as usize {
            break;
        }
        let len = lengths.v6[i] as u32;
        let (h, l) = if len == 0 {
            (0, 0)
        } else if len < 64 {
            (hi & (u64::MAX << (64 - len)), 0)
        } else if len == 64 {
            (hi, 0)
        } else if len < 128 {
            (hi, lo & (u64::MAX << (128 - len)))
        } else {
            (hi, lo)
        };
        key.addr[..8].copy_from_slice(&h.to_be_bytes());
        key.addr[8..].copy_from_slice(&l.to_be_bytes());
        key.len = len as u8;
        if FAST_V6.get_ptr(&key).is_some() {
            return Some(true);
        }
        i += 1;
    }
    Some(false)
}

#[inline(always)]
fn policy(protocol: Protocol) -> u8 {
    POLICY
        .get(protocol as u32)
        .copied()
        .unwrap_or(PolicyMode::Off as u8)
}

#[inline(always)]
fn open_gate(protocol: Protocol, expires: u64) {
    if let Some(slot) = FLOW_GATE.get_ptr_mut(protocol as u32) {
        // SAFETY: an array slot; racing writers only ever move it to a recent expiry.
        unsafe {
            if *slot < expires {
                *slot = expires;
            }
        }
    }
}

#[inline(always)]
fn store_flow(key: &FlowKey, state: &FlowState, protocol: Protocol) {
    if FLOWS.insert(key, state, 0).is_ok() {
        count(counter_index(Counter::FlowInsert));
        open_gate(protocol, state.expires_ns);
    } else {
        count(counter_index(Counter::FlowInsertFailed));
    }
}

#[inline(always)]
fn allow_generation() -> u32 {
    ALLOW_GEN.get(0).copied().unwrap_or(0) as u32
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

/// Judges a candidate.
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "passing map keys by value copies them onto the 512-byte BPF stack"
)]
fn decide(ctx: &XdpContext, c: &Candidate) -> u32 {
    let pkt = &c.pkt;
    let det = &c.det;
    let protocol = det.protocol;
    let mode = policy(protocol);
    if mode == PolicyMode::Off as u8 {
        count(verdict_counter_index(protocol, Verdict::Ignored));
        return XDP_PASS;
    }
    let cfg = config();
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // Read before any allowlist lookup: the controller raises it after its writes, so a
    // verdict stamped with it never misses a later change.
    let generation = allow_generation();
    let class = if det.message == vpn_filter_common::Message::WgData {
        FLOW_CLASS_DATA
    } else {
        0
    };
    let (key, src_is_lo) = flow_key(pkt, protocol, class);

    let entry = match FLOWS.get_ptr_mut(&key) {
        // SAFETY: a pointer into the LRU map's value, valid for this program run.
        Some(state) if unsafe { (*state).expires_ns } > now => Some(state),
        _ => None,
    };
    // At most one allowlist lookup per packet, and none for a flow judged under the current
    // generation: its status already says whether an endpoint is registered.
    let allowed = match entry {
        // SAFETY: as above.
        Some(state) if unsafe { (*state).generation } == generation => {
            (unsafe { (*state).status }) == FlowStatus::Allowed as u8
        }
        None if det.strength == Strength::FollowUp => {
            // Continues a flow we do not know (or that expired): ordinary traffic.
            return XDP_PASS;
        }
        _ => allowlisted(pkt, cfg.allowlist_lookup),
    };
    let mut judged = Judged::Fresh;
    if let Some(state) = entry {
        count(counter_index(Counter::FlowHit));
        // SAFETY: as above.
        let state = unsafe { &mut *state };
        judged = judge_flow(det, state, src_is_lo, now, generation, allowed, &cfg);
        if matches!(judged, Judged::Report(Reason::Confirmed))
            && protocol == Protocol::WireGuard
            && class == 0
        {
            // A padded handshake just confirmed: its transport data is a conversation of
            // its own (see `FlowKey::class`); block it too, with the handshake's indices.
            let mut data_key = key;
            data_key.class = FLOW_CLASS_DATA;
            store_flow(&data_key, state, protocol);
        }
    }
    let reason = match judged {
        Judged::Pass => return XDP_PASS,
        Judged::Report(reason) => reason,
        Judged::Fresh => {
            if det.strength == Strength::FollowUp {
                return XDP_PASS;
            }
            if allowed || det.strength == Strength::Weak {
                let (status, timeout, verdict) = if allowed {
                    (
                        FlowStatus::Allowed,
                        cfg.allowed_flow_timeout_ns,
                        Verdict::Allowed,
                    )
                } else {
                    (
                        FlowStatus::Pending,
                        cfg.pending_flow_timeout_ns,
                        Verdict::Pending,
                    )
                };
                let state = FlowState {
                    expires_ns: now + timeout,
                    token: det.token,
                    peer_token: [0; 8],
                    packets: 1,
                    generation,
                    aux: det.aux,
                    data_head: [0; 4],
                    status: status as u8,
                    protocol: protocol as u8,
                    message: det.message as u8,
                    from_lo: src_is_lo as u8,
                    flags: 0,
                    _pad: [0; 3],
                };
                store_flow(&key, &state, protocol);
                count(verdict_counter_index(protocol, verdict));
                return XDP_PASS;
            }
            // Conclusive alone: no flow entry. Every later packet that matters is conclusive
            // alone too, so a flood of handshakes from random sources costs no insert, and
            // no eviction can let a blocked session's next recognisable packet through.
            Reason::Signature
        }
    };
    report(ctx, pkt, det, protocol, reason, now, &cfg)
}

/// Applies the flow entry of the packet's protocol (keys carry the protocol, so the entry is
/// always of `det`'s protocol). `allowed` says whether an endpoint is registered now. An
/// entry judged under an older allowlist is judged again first: approvals and revocations
/// take effect on the next packet.
#[inline(always)]
fn judge_flow(
    det: &Detection,
    state: &mut FlowState,
    src_is_lo: bool,
    now: u64,
    generation: u32,
    allowed: bool,
    cfg: &Config,
) -> Judged {
    let same_direction = (state.from_lo == 1) == src_is_lo;
    let mut reason = Reason::FlowFollowUp;
    if state.generation != generation {
        // `allowed` was looked up under the current generation.
        count(counter_index(Counter::FlowRejudged));
        state.generation = generation;
        let was_allowed = state.status == FlowStatus::Allowed as u8;
        if allowed && !was_allowed {
            // Approved while blocked, monitored or pending: this packet and the rest pass.
            state.status = FlowStatus::Allowed as u8;
            state.expires_ns = now + cfg.allowed_flow_timeout_ns;
            return Judged::Report(Reason::Registered);
        }
        if !allowed && was_allowed {
            // Revoked: from now on an unregistered flow of its protocol.
            state.status = FlowStatus::Blocked as u8;
            reason = Reason::Revoked;
        }
    }
    let status = state.status;
    if status == FlowStatus::Allowed as u8 {
        state.expires_ns = now + cfg.allowed_flow_timeout_ns;
        // Learn what a revocation needs to recognise the flow's later packets: the peer's
        // session or index from its reply, and that the flow carried OpenVPN data.
        if !same_direction
            && (det.message == vpn_filter_common::Message::OvpnServerReset
                || det.message == vpn_filter_common::Message::WgResponse
                || det.message == vpn_filter_common::Message::WgPaddedResponse)
        {
            state.peer_token = det.token;
        }
        if det.message == vpn_filter_common::Message::OvpnData && state.data_head[0] == 0 {
            state.data_head = det.aux;
        }
        count(verdict_counter_index(det.protocol, Verdict::Allowed));
        return Judged::Pass;
    }
    if status == FlowStatus::Blocked as u8 || status == FlowStatus::Monitored as u8 {
        if !belongs(state, det) {
            // Shares a first byte or a loose shape with the protocol but not the flow's
            // tokens: ordinary traffic or another session, judged on its own; the entry is
            // left as it is.
            return if det.strength == Strength::Strong {
                Judged::Fresh
            } else {
                Judged::Pass
            };
        }
        state.expires_ns = now + cfg.blocked_flow_timeout_ns;
        open_gate(det.protocol, state.expires_ns);
        return Judged::Report(reason);
    }
    if status == FlowStatus::Pending as u8 {
        if advance(state, det, same_direction) == Confirmation::Confirmed {
            // Confirmed over several packets: remembered (with both sides' tokens), so the
            // flow's own later packets, not all conclusive alone, are dropped too. The
            // endpoints were looked up under this generation: still unregistered.
            state.status = FlowStatus::Blocked as u8;
            state.expires_ns = now + cfg.blocked_flow_timeout_ns;
            open_gate(det.protocol, state.expires_ns);
            return Judged::Report(Reason::Confirmed);
        }
        if det.strength == Strength::Strong {
            return Judged::Fresh;
        }
        // The pending timeout follows the flow: a late reply still confirms.
        state.expires_ns = now + cfg.pending_flow_timeout_ns;
        open_gate(det.protocol, state.expires_ns);
        count(verdict_counter_index(det.protocol, Verdict::Pending));
        return Judged::Pass;
    }
    Judged::Fresh
}

/// Verdict for a reported packet: `allowed` for a just-approved flow, else what the current
/// policy says for an unregistered flow (the policy may have changed since the flow was
/// judged: the current one decides). One call site, so the event code is inlined once.
#[inline(always)]
fn report(
    ctx: &XdpContext,
    pkt: &Packet,
    det: &Detection,
    protocol: Protocol,
    reason: Reason,
    now: u64,
    cfg: &Config,
) -> u32 {
    let mode = policy(protocol);
    let (verdict, action) = if reason == Reason::Registered {
        (Verdict::Allowed, XDP_PASS)
    } else if mode == PolicyMode::Enforce as u8 {
        (Verdict::Dropped, XDP_DROP)
    } else if mode == PolicyMode::Monitor as u8 {
        (Verdict::Monitored, XDP_PASS)
    } else {
        count(verdict_counter_index(protocol, Verdict::Ignored));
        return XDP_PASS;
    };
    count(verdict_counter_index(protocol, verdict));
    emit(ctx, pkt, det, protocol, verdict, reason, now, cfg);
    action
}

/// Reports a verdict through the ring buffer, at most `events_per_source_per_sec` per source.
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "inlined; a struct would only add copies on the BPF stack"
)]
fn emit(
    ctx: &XdpContext,
    pkt: &Packet,
    det: &Detection,
    protocol: Protocol,
    verdict: Verdict,
    reason: Reason,
    now: u64,
    cfg: &Config,
) {
    let message = det.message as u8;
    emit_event(ctx, pkt, message, 0, protocol, verdict, reason, now, cfg);
}

/// [`emit`] for any message, with the endpoint provider id (0 for signatures).
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "inlined; a struct would only add copies on the BPF stack"
)]
fn emit_event(
    ctx: &XdpContext,
    pkt: &Packet,
    message: u8,
    provider: u16,
    protocol: Protocol,
    verdict: Verdict,
    reason: Reason,
    now: u64,
    cfg: &Config,
) {
    // The CPU's budget first (only looked at here; spent below, once the per-source limit
    // lets the event through, so one noisy source cannot spend everyone's budget).
    let budget = match EVENT_BUDGET.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, only this CPU touches it while the program runs.
        Some(b) => unsafe { &mut *b },
        None => return,
    };
    if now.wrapping_sub(budget.window_start_ns) >= NS_PER_SEC {
        budget.window_start_ns = now;
        budget.emitted = 0;
    }
    let suppressed = if budget.emitted >= cfg.events_per_cpu_per_sec {
        // Spent (a flood, often from random sources): a source seen retrying still gets
        // reported about once a minute, from a small reserve.
        if !(repeat_source_due(&pkt.src, now) && take_reserve(now)) {
            budget.suppressed += 1;
            count(counter_index(Counter::EventsSuppressed));
            return;
        }
        count(counter_index(Counter::EventsRepeatSource));
        0
    } else {
        let suppressed = match per_source(&pkt.src, now, cfg) {
            Some(s) => s,
            None => return,
        };
        budget.emitted += 1;
        suppressed
    };
    submit(
        ctx, pkt, message, provider, protocol, verdict, reason, now, suppressed,
    );
}

/// The per-source limit: `None` when `src` has used its events this second (counted as
/// suppressed), else how many of its events were suppressed since its last one.
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "passing map keys by value copies them onto the 512-byte BPF stack"
)]
fn per_source(src: &[u8; 16], now: u64, cfg: &Config) -> Option<u32> {
    match EVENT_LIMIT.get_ptr_mut(src) {
        Some(rate) => {
            // SAFETY: a pointer into the LRU map's value, valid for this program run.
            let rate = unsafe { &mut *rate };
            if now.wrapping_sub(rate.window_start_ns) >= NS_PER_SEC {
                rate.window_start_ns = now;
                rate.emitted = 0;
            }
            if rate.emitted >= cfg.events_per_source_per_sec {
                rate.suppressed += 1;
                count(counter_index(Counter::EventsSuppressed));
                return None;
            }
            rate.emitted += 1;
            let s = rate.suppressed;
            rate.suppressed = 0;
            Some(s)
        }
        None => {
            let fresh = RateState {
                window_start_ns: now,
                emitted: 1,
                suppressed: 0,
            };
            if EVENT_LIMIT.insert(src, &fresh, 0).is_err() {
                count(counter_index(Counter::InternalError));
            }
            Some(0)
        }
    }
}

/// Writes one event into the ring buffer (a full ring is counted, never waited on).
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "inlined; a struct would only add copies on the BPF stack"
)]
fn submit(
    ctx: &XdpContext,
    pkt: &Packet,
    message: u8,
    provider: u16,
    protocol: Protocol,
    verdict: Verdict,
    reason: Reason,
    now: u64,
    suppressed: u32,
) {
    match EVENTS.reserve::<Event>(0) {
        Some(mut entry) => {
            entry.write(Event {
                ts_ns: now,
                ifindex: ctx.ingress_ifindex() as u32,
                pkt_len: (ctx.data_end() - ctx.data()) as u32,
                src: pkt.src,
                dst: pkt.dst,
                sport: pkt.sport.to_be_bytes(),
                dport: pkt.dport.to_be_bytes(),
                suppressed,
                family: pkt.family,
                ip_proto: pkt.ip_proto,
                protocol: protocol as u8,
                message,
                verdict: verdict as u8,
                reason: reason as u8,
                vlan: pkt.vlan.to_be_bytes(),
                provider,
                encap: pkt.encap,
                _pad: [0; 5],
            });
            entry.submit(0);
            count(counter_index(Counter::EventsEmitted));
        }
        None => count(counter_index(Counter::EventsLost)),
    }
}

/// Whether `src`, whose event the spent budget would suppress, was seen within the last window
/// or two and not reported from the reserve for [`REPEAT_REPORT_WINDOWS`] windows. One read
/// and one write of a 16 MiB array; a 16-bit fingerprint keeps a flood of random sources from
/// passing for a repeat (about one in 65,536 collisions with an occupied slot).
#[inline(always)]
fn repeat_source_due(src: &[u8; 16], now: u64) -> bool {
    let a = u64::from_le_bytes([
        src[0], src[1], src[2], src[3], src[4], src[5], src[6], src[7],
    ]);
    let b = u64::from_le_bytes([
        src[8], src[9], src[10], src[11], src[12], src[13], src[14], src[15],
    ]);
    let mut h = a ^ b.rotate_left(29) ^ 0x9e37_79b9_7f4a_7c15;
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    let idx = (h as u32) & (REPEAT_SLOTS - 1);
    let fp = ((h >> 48) as u32) | 1;
    let window = ((now / REPEAT_WINDOW_NS) & 0xff) as u32;
    let slot = match REPEAT_SOURCES.get_ptr_mut(idx) {
        Some(s) => s,
        None => return false,
    };
    // SAFETY: an array slot; a racing writer can only lose an update (a missed report).
    let v = unsafe { *slot };
    let (due, reported) = if v >> 16 == fp {
        let seen = (v >> 8) & 0xff;
        let reported = v & 0xff;
        let recent = (window.wrapping_sub(seen) & 0xff) <= 1;
        let quiet = (window.wrapping_sub(reported) & 0xff) >= REPEAT_REPORT_WINDOWS as u32;
        if recent && quiet {
            (true, window)
        } else {
            (false, reported)
        }
    } else {
        (
            false,
            window.wrapping_sub(REPEAT_REPORT_WINDOWS as u32) & 0xff,
        )
    };
    let new = (fp << 16) | (window << 8) | reported;
    if new != v {
        // SAFETY: as above.
        unsafe { *slot = new };
    }
    due
}

/// Takes one event from this CPU's reserve for retrying sources, if any is left this second.
#[inline(always)]
fn take_reserve(now: u64) -> bool {
    let reserve = match EVENT_BUDGET.get_ptr_mut(1) {
        // SAFETY: per-CPU slot, only this CPU touches it while the program runs.
        Some(r) => unsafe { &mut *r },
        None => return false,
    };
    if now.wrapping_sub(reserve.window_start_ns) >= NS_PER_SEC {
        reserve.window_start_ns = now;
        reserve.emitted = 0;
    }
    if reserve.emitted >= REPEAT_RESERVE_PER_SEC {
        return false;
    }
    reserve.emitted += 1;
    true
}

const _: () = assert!(size_of::<Event>().is_multiple_of(8));
