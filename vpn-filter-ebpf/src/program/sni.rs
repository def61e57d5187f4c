//! TLS-carried VPNs: a TCP client's ClientHello whose server name is listed
//! (`TLS_SNI_DOMAINS`). The parser is classify/sni.rs; this stage reads the packet for it.
//!
//! Called by [`stream_head`] for two kinds of segment only: a stream's first client payload
//! holding the whole head, which pays a 6-byte read and a compare unless it is a
//! ClientHello, and a later client segment of a young stream (its `TCP_HEADS` slot is the
//! client's and fresh), which pays one array read (`SNI_PENDING`) and a compare unless its
//! stream's ClientHello left the walk for it. Every other packet pays nothing. A hit leaves
//! the detection in the scratch slot and `stream_head` answers [`HEAD_DETECTED`], as for a
//! signature found in reassembled bytes: no new state for the stages after it.

use aya_ebpf::helpers::{bpf_probe_read_kernel, generated};
use vpn_filter_common::{SNI_DOMAIN_ENTRIES, SNI_MAX_NAME};
use vpn_filter_ebpf::classify::sni::{self, Bytes, Name, Walk, MAX_CARRY};

use super::*;

/// Listed VPN domains: [`vpn_filter_common::domain_hash`] -> 1. Filled by the controller.
#[map(name = "TLS_SNI_DOMAINS")]
pub(super) static TLS_SNI_DOMAINS: HashMap<u64, u32> =
    HashMap::with_max_entries(SNI_DOMAIN_ENTRIES, 0);

/// Slots of `SNI_PENDING` (a power of two).
const SNI_PENDING_SLOTS: u32 = 1 << 16;

/// A ClientHello whose first segment ended before its server_name: where the walk goes on.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct SniPending {
    /// The direction's seeded hash ([`tcp_hash`]) with its lowest bit set; zero: free.
    hash: u32,
    /// Sequence number of the segment that continues the ClientHello.
    seq: u32,
    /// Where the next extension header and the extensions' end lie in the stream that
    /// segment continues: the `carry` bytes kept in `SNI_CARRY`, then the segment.
    skip: u16,
    end: u16,
    carry: u16,
    _pad: u16,
}

/// Bytes of a `SNI_CARRY` slot: [`MAX_CARRY`] rounded up to whole words.
const CARRY_BUF: usize = (MAX_CARRY + 7) & !7;

/// Slots of `SNI_CARRY` (a power of two).
const SNI_CARRY_SLOTS: u32 = 1 << 13;

/// The end of a ClientHello segment that cut an extension header or the server_name
/// extension (a split inside the name): read again, before the next segment, by that
/// segment's walk.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct SniCarry {
    /// The direction's tag, as in [`SniPending`].
    tag: u32,
    len: u32,
    bytes: [u8; CARRY_BUF],
}

/// Carried segment ends, in a slot chosen by the direction's seeded hash; read only by a
/// segment whose `SNI_PENDING` slot says it carries bytes. A collision loses one flow's
/// carry (a miss). Fewer slots than `SNI_PENDING`: a boundary inside the server_name
/// extension is rare outside deliberate splits.
#[map(name = "SNI_CARRY")]
pub(super) static SNI_CARRY: Array<SniCarry> = Array::with_max_entries(SNI_CARRY_SLOTS, 0);

/// ClientHellos waiting for their second segment, in a slot chosen by the direction's
/// seeded hash (as `TCP_HEADS`): only a flagged segment reads its slot, and a collision
/// only loses one flow's continuation (a miss).
#[map(name = "SNI_PENDING")]
pub(super) static SNI_PENDING: Array<SniPending> = Array::with_max_entries(SNI_PENDING_SLOTS, 0);

/// Per-CPU buffer for the server name (not on the 512-byte BPF stack), and where the walk
/// found it.
#[map(name = "SNI_NAME")]
pub(super) static SNI_NAME: PerCpuArray<SniScratch> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct SniScratch {
    /// The walk's answer ([`walk_stage`]): the name's packet offset (or its offset in
    /// `stream` when `in_stream`), the continuation.
    off: u32,
    skip: u32,
    end: u32,
    /// Bytes of this segment's end to carry into the next segment's walk.
    carry_next: u32,
    /// Where those bytes start, in the stream walked.
    carry_from: u32,
    in_stream: u32,
    /// A continuation's stream: the carried bytes (`carry` of them), then the segment's
    /// first bytes, `stream_len` in all (0: the segment alone).
    carry: u32,
    stream_len: u32,
    stream: [u8; 2 * CARRY_BUF],
    name: Name,
}

/// The packet's payload, as the parser reads it.
struct Payload<'a> {
    ctx: &'a XdpContext,
    off: usize,
}

impl Bytes for Payload<'_> {
    #[inline(always)]
    fn load<const N: usize>(&self, at: usize) -> Option<[u8; N]> {
        if at > sni::MAX_OFFSET {
            return None;
        }
        let mut buf = [0u8; N];
        // SAFETY: `buf` holds N bytes; the helper bounds-checks the packet side.
        let rc = unsafe {
            bpf_xdp_load_bytes(
                self.ctx.ctx as *mut _,
                (self.off + at) as u32,
                buf.as_mut_ptr() as *mut c_void,
                N as u32,
            )
        };
        (rc == 0).then_some(buf)
    }
}

/// A stream's reassembled head (its first [`HEAD_BYTES`], complete) and the segment that
/// completed it, which starts at stream offset `rel`: read as one stream from offset 0.
/// Bytes between the head and `rel` that the segment does not hold are not there (a load
/// needing them fails: a miss).
struct HeadThenSegment<'a> {
    head: &'a [u8; HEAD_BYTES + 128],
    ctx: &'a XdpContext,
    off: usize,
    rel: usize,
}

impl Bytes for HeadThenSegment<'_> {
    #[inline(always)]
    fn load<const N: usize>(&self, at: usize) -> Option<[u8; N]> {
        if at + N <= HEAD_BYTES {
            return self.head.get(at..at + N)?.try_into().ok();
        }
        if at < self.rel || at > sni::MAX_OFFSET {
            return None;
        }
        Payload {
            ctx: self.ctx,
            off: self.off,
        }
        .load::<N>(at - self.rel)
    }
}

/// A client's stream head just completed in a segment starting at stream offset `rel` (its
/// first segment was shorter than the head: a ClientHello split after a few bytes, as
/// GoodbyeDPI and zapret split it). When the head starts a ClientHello whose extensions
/// begin in this segment, leaves the walk's continuation for this very segment in
/// `SNI_PENDING` (the caller then runs [`sni_stage`] on it, as on any continuation) and
/// answers true. Its own frame.
#[inline(never)]
pub(super) fn from_head(ctx: &XdpContext, head: &[u8; HEAD_BYTES + 128], rel: usize) -> bool {
    let Some(slot) = SCRATCH.get(0) else {
        return false;
    };
    let pkt = &slot.pkt;
    if policy(Protocol::TlsSni) == PolicyMode::Off as u8
        || pkt.payload_off > MAX_PAYLOAD_OFFSET
        || pkt.captured > 0xffff
        || rel == 0
        || rel >= HEAD_BYTES
    {
        return false;
    }
    let b = HeadThenSegment {
        head,
        ctx,
        off: pkt.payload_off,
        rel,
    };
    let Some((start, end)) = sni::hello_extensions(&b) else {
        return false;
    };
    if end < start || end - start > 0xffff {
        return false;
    }
    let h = tcp_hash(pkt);
    let tag = h | 1;
    // Extensions that start before this segment are in the head: carried into its walk.
    let carry = rel.saturating_sub(start);
    if carry > 0 {
        let Some(kept) = SNI_CARRY.get_ptr_mut(tag & (SNI_CARRY_SLOTS - 1)) else {
            return false;
        };
        // SAFETY: an array slot (as in `save_carry`).
        let kept = unsafe { &mut *kept };
        if carry > MAX_CARRY || start >= HEAD_BYTES {
            return false;
        }
        // As in `save_carry`: the tag is cleared first and written last.
        // SAFETY: a field of the slot.
        unsafe { ptr::write_volatile(&mut kept.tag, 0) };
        // SAFETY: `head[start..rel]`, inside the head (rel < HEAD_BYTES), into `bytes`
        // (CARRY_BUF >= MAX_CARRY >= carry bytes).
        let rc = unsafe {
            generated::bpf_probe_read_kernel(
                kept.bytes.as_mut_ptr() as *mut c_void,
                carry as u32,
                head.as_ptr().add(start) as *const c_void,
            )
        };
        if rc != 0 {
            return false;
        }
        kept.tag = tag;
        kept.len = carry as u32;
    }
    let (skip, end) = if carry > 0 {
        (0, end - start)
    } else {
        (start - rel, end - rel)
    };
    let Some(e) = SNI_PENDING.get_ptr_mut(h & (SNI_PENDING_SLOTS - 1)) else {
        return false;
    };
    // SAFETY: an array slot; a racing writer on another CPU writes its own flow's
    // continuation, ours is then a miss.
    unsafe {
        *e = SniPending {
            hash: tag,
            seq: pkt.tcp_seq,
            skip: skip as u16,
            end: end as u16,
            carry: carry as u16,
            _pad: 0,
        }
    };
    true
}

/// The carried bytes of a segment's end (`SNI_CARRY`), then the segment: one stream, read
/// from the buffer where it holds the bytes and from the packet after the carried ones.
struct CarryThenSegment<'a> {
    buf: &'a [u8; 2 * CARRY_BUF],
    /// Bytes of `buf` filled: `carry` carried ones, then the segment's first bytes.
    len: usize,
    carry: usize,
    seg: Payload<'a>,
}

impl Bytes for CarryThenSegment<'_> {
    #[inline(always)]
    fn load<const N: usize>(&self, at: usize) -> Option<[u8; N]> {
        if at + N <= self.len {
            if self.len > 2 * CARRY_BUF {
                return None;
            }
            // SAFETY: `at + N <= len <= 2 * CARRY_BUF`, the size of `buf`. Through the helper,
            // not an index: the verifier would bound a copy of `at` other than the one the
            // compiled address uses.
            return unsafe { bpf_probe_read_kernel(self.buf.as_ptr().add(at) as *const [u8; N]) }
                .ok();
        }
        if at < self.carry {
            return None;
        }
        self.seg.load::<N>(at - self.carry)
    }
}

/// Fills `SNI_NAME.stream` for a continuation that carries `carry` bytes: those bytes from
/// the direction's `SNI_CARRY` slot, then the segment's first bytes. False when the slot
/// holds another flow's bytes (a collision: a miss). Its own frame.
#[inline(never)]
fn fill_stream(ctx: &XdpContext, tag: u32, carry: u32, overlap: u32) -> bool {
    let (Some(slot), Some(out)) = (SCRATCH.get(0), SNI_NAME.get_ptr_mut(0)) else {
        return false;
    };
    let pkt = &slot.pkt;
    let (carry, overlap) = (carry as usize, overlap as usize);
    if carry == 0
        || carry > MAX_CARRY
        || pkt.payload_off > MAX_PAYLOAD_OFFSET
        || overlap >= pkt.captured
        || pkt.captured > 0xffff
    {
        return false;
    }
    let captured = pkt.captured - overlap;
    let Some(kept) = SNI_CARRY.get(tag & (SNI_CARRY_SLOTS - 1)) else {
        return false;
    };
    if kept.tag != tag || kept.len as usize != carry {
        return false;
    }
    // SAFETY: a per-CPU slot, only this CPU touches it while the program runs.
    let out = unsafe { &mut *out };
    out.stream[..CARRY_BUF].copy_from_slice(&kept.bytes);
    // Written by another CPU meanwhile (another flow's carry, tag last): not ours after all.
    // SAFETY: reads a field of the array slot.
    if unsafe { ptr::read_volatile(&kept.tag) } != tag {
        return false;
    }
    let n = if captured < CARRY_BUF {
        captured
    } else {
        CARRY_BUF
    };
    // Read back, so that the check below is not folded away: the verifier cannot see that
    // `captured > overlap` makes the size non-zero.
    // SAFETY: reads a local.
    let n = unsafe { ptr::read_volatile(&n) };
    if n == 0 || n > CARRY_BUF {
        return false;
    }
    // SAFETY: `stream` holds 2 * CARRY_BUF bytes; carry <= MAX_CARRY <= CARRY_BUF and
    // n <= CARRY_BUF; the helper bounds-checks the packet side.
    let rc = unsafe {
        bpf_xdp_load_bytes(
            ctx.ctx as *mut _,
            (pkt.payload_off + overlap) as u32,
            out.stream.as_mut_ptr().add(carry) as *mut c_void,
            n as u32,
        )
    };
    if rc != 0 {
        return false;
    }
    out.carry = carry as u32;
    out.stream_len = (carry + n) as u32;
    true
}

/// Keeps the bytes the walk asked to carry (`SNI_NAME.carry_next` of them from
/// `carry_from` in the stream it walked) in the direction's `SNI_CARRY` slot. Its own
/// frame.
#[inline(never)]
fn save_carry(ctx: &XdpContext, tag: u32, overlap: u32) -> bool {
    let (Some(slot), Some(w)) = (SCRATCH.get(0), SNI_NAME.get(0)) else {
        return false;
    };
    let pkt = &slot.pkt;
    let (len, from, carry) = (
        w.carry_next as usize,
        w.carry_from as usize,
        w.carry as usize,
    );
    let overlap = overlap as usize;
    if len == 0
        || len > MAX_CARRY
        || carry > MAX_CARRY
        || pkt.payload_off > MAX_PAYLOAD_OFFSET
        || overlap > 0xffff
    {
        return false;
    }
    let Some(kept) = SNI_CARRY.get_ptr_mut(tag & (SNI_CARRY_SLOTS - 1)) else {
        return false;
    };
    // SAFETY: an array slot; a racing writer on another CPU writes its own flow's carry,
    // and the tag check on the next segment turns ours into a miss.
    let kept = unsafe { &mut *kept };
    // The tag is cleared before the bytes change and written after them: a reader on
    // another CPU that finds its tag before and after its copy has its own bytes.
    // SAFETY: a field of the slot.
    unsafe { ptr::write_volatile(&mut kept.tag, 0) };
    if from < carry {
        // Part of the carried bytes again (a segment shorter than what it had to complete):
        // all in the stream buffer, which holds the segment's first CARRY_BUF bytes.
        if from >= CARRY_BUF {
            return false;
        }
        let src = &w.stream[from..from + CARRY_BUF];
        kept.bytes.copy_from_slice(src);
    } else {
        let at = from - carry + overlap;
        if at > 0xffff {
            return false;
        }
        // SAFETY: `bytes` holds CARRY_BUF >= len bytes; the helper bounds-checks the packet.
        let rc = unsafe {
            bpf_xdp_load_bytes(
                ctx.ctx as *mut _,
                (pkt.payload_off + at) as u32,
                kept.bytes.as_mut_ptr() as *mut c_void,
                len as u32,
            )
        };
        if rc != 0 {
            return false;
        }
    }
    kept.tag = tag;
    kept.len = len as u32;
    true
}

/// [`walk_stage`]'s answers.
const WALK_NONE: u32 = 0;
const WALK_NAME: u32 = 1;
const WALK_CONTINUE: u32 = 2;

/// Judges a client segment (see the module's comment; `first`: the stream's first
/// payload): `DETECT_FOUND` with the detection in the scratch slot when its ClientHello
/// names a listed domain. Its own frame; the walk and the name lookup are frames of their
/// own, whose results pass through `SNI_NAME`, so that the many ways out of the walk meet in
/// one verifier state before the name is hashed.
#[inline(never)]
pub(super) fn sni_stage(ctx: &XdpContext, first: bool) -> u32 {
    let Some(slot) = SCRATCH.get_ptr_mut(0) else {
        return DETECT_NONE;
    };
    // SAFETY: a per-CPU slot, only this CPU touches it while the program runs.
    let pkt = unsafe { &(*slot).pkt };
    if pkt.ip_proto != IPPROTO_TCP
        || pkt.payload_off > MAX_PAYLOAD_OFFSET
        || pkt.captured > pkt.payload_len
        || pkt.payload_len > 0xffff
        || policy(Protocol::TlsSni) == PolicyMode::Off as u8
    {
        return DETECT_NONE;
    }
    let h = tcp_hash(pkt);
    let idx = h & (SNI_PENDING_SLOTS - 1);
    // The slot's tag: the hash with its lowest bit set, so that zero means free.
    let tag = h | 1;
    // Bytes at the start of a continuation segment that the walk has already read: a
    // segment may overlap the one before it (the receiver trims the overlap and keeps what
    // it has), and is walked from where the walk left off.
    let mut overlap = 0usize;
    let (skip, end, carry) = if first {
        // The cheap check: six bytes, a compare.
        let p = Payload {
            ctx,
            off: pkt.payload_off,
        };
        match p.load::<6>(0) {
            Some(b) if sni::is_client_hello_head(b) => (0, 0, 0),
            _ => return DETECT_NONE,
        }
    } else {
        let Some(pending) = SNI_PENDING.get(idx) else {
            return DETECT_NONE;
        };
        if pending.hash != tag {
            return DETECT_NONE;
        }
        overlap = pending.seq.wrapping_sub(pkt.tcp_seq) as usize;
        if overlap >= pkt.captured {
            return DETECT_NONE;
        }
        (
            pending.skip as u32,
            pending.end as u32,
            pending.carry as u32,
        )
    };
    let streamed = if carry == 0 {
        if let Some(out) = SNI_NAME.get_ptr_mut(0) {
            // SAFETY: a per-CPU slot, only this CPU touches it while the program runs.
            unsafe {
                (*out).carry = 0;
                (*out).stream_len = 0;
            }
        }
        true
    } else {
        fill_stream(ctx, tag, carry, overlap as u32)
    };
    let walk = if streamed {
        walk_stage(ctx, first, skip, end, overlap as u32)
    } else {
        WALK_NONE
    };
    if walk == WALK_NAME && name_stage(ctx) {
        // SAFETY: as above.
        unsafe { (*slot).det = sni::detection() };
        // A pending slot stays: a retransmission is judged again.
        return DETECT_FOUND;
    }
    let Some(e) = SNI_PENDING.get_ptr_mut(idx) else {
        return DETECT_NONE;
    };
    if walk == WALK_CONTINUE {
        let Some(w) = SNI_NAME.get(0) else {
            return DETECT_NONE;
        };
        let carry_next = w.carry_next;
        let (skip, end) = (w.skip as u16, w.end as u16);
        let next = pkt.tcp_seq.wrapping_add(pkt.payload_len as u32);
        // SAFETY: as below.
        let (held, held_seq) = unsafe { ((*e).hash, (*e).seq) };
        let ahead = held_seq.wrapping_sub(next);
        if held == tag && ahead > 0 && ahead < 0x10000 {
            // A repeated earlier segment (a retransmission, or a duplicate sent to rewind the
            // walk): the walk already goes on further along; it stays there.
            return DETECT_NONE;
        }
        if carry_next == 0 || save_carry(ctx, tag, overlap as u32) {
            // SAFETY: an array slot; a racing writer on another CPU writes its own flow's
            // continuation, ours is then a miss.
            unsafe {
                *e = SniPending {
                    hash: tag,
                    seq: next,
                    skip,
                    end,
                    carry: carry_next as u16,
                    _pad: 0,
                }
            };
        } else {
            // SAFETY: as above.
            unsafe { (*e).hash = 0 };
        }
    } else if !first {
        // Judged: the slot is free again.
        // SAFETY: as above.
        unsafe { (*e).hash = 0 };
    }
    DETECT_NONE
}

/// The parser's walk over the packet in the scratch slot: from the record header (`first`)
/// or from the continuation `skip`/`end` of the ClientHello's first segment. Leaves its
/// answer in `SNI_NAME`.
#[inline(never)]
fn walk_stage(ctx: &XdpContext, first: bool, skip: u32, end: u32, overlap: u32) -> u32 {
    let (Some(slot), Some(out)) = (SCRATCH.get(0), SNI_NAME.get_ptr_mut(0)) else {
        return WALK_NONE;
    };
    let pkt = &slot.pkt;
    let overlap = overlap as usize;
    if pkt.payload_off > MAX_PAYLOAD_OFFSET || pkt.captured > 0xffff || overlap >= 0x10000 {
        return WALK_NONE;
    }
    // The segment from where the walk left off (past an overlap with the one before it).
    let (seg_off, captured) = (
        pkt.payload_off + overlap,
        pkt.captured.saturating_sub(overlap),
    );
    let p = Payload { ctx, off: seg_off };
    // SAFETY: a per-CPU slot, only this CPU touches it while the program runs.
    let out = unsafe { &mut *out };
    // A continuation reads the bytes its stream carried (none: the segment alone).
    let (carry, stream_len) = if first {
        (0, 0)
    } else {
        (out.carry as usize, out.stream_len as usize)
    };
    if carry > MAX_CARRY || stream_len > 2 * CARRY_BUF {
        return WALK_NONE;
    }
    let (walk, walked) = if first {
        (sni::client_hello(&p, captured), captured)
    } else {
        let s = CarryThenSegment {
            buf: &out.stream,
            len: stream_len,
            carry,
            seg: p,
        };
        let walked = carry + captured;
        (
            sni::walk_extensions(&s, walked, skip as usize, end as usize),
            walked,
        )
    };
    out.in_stream = 0;
    out.carry_next = 0;
    match walk {
        Walk::Name { off, len } if off >= carry => {
            out.off = (seg_off + off - carry) as u32;
            out.name.len = len as u64;
            WALK_NAME
        }
        // The name starts in the carried bytes: it lies in the stream buffer (carried
        // bytes, then CARRY_BUF of the segment, and a name is at most SNI_MAX_NAME).
        Walk::Name { off, len } if off + len <= stream_len => {
            out.off = off as u32;
            out.in_stream = 1;
            out.name.len = len as u64;
            WALK_NAME
        }
        Walk::Continue {
            skip,
            end,
            carry: c,
        } if skip <= 0xffff && end <= 0xffff && c <= MAX_CARRY && c <= walked => {
            out.skip = skip as u32;
            out.end = end as u32;
            out.carry_next = c as u32;
            out.carry_from = (walked - c) as u32;
            WALK_CONTINUE
        }
        _ => WALK_NONE,
    }
}

/// Loads the server name the walk found and looks its suffixes up.
#[inline(never)]
fn name_stage(ctx: &XdpContext) -> bool {
    let Some(buf) = SNI_NAME.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: a per-CPU slot, only this CPU touches it while the program runs.
    let buf = unsafe { &mut *buf };
    let len = buf.name.len as usize;
    let at = buf.off as usize;
    if len == 0 || len > SNI_MAX_NAME || at > 0xffff {
        return false;
    }
    // The same value in a form whose range the verifier sees (1..=SNI_MAX_NAME).
    let n = ((len - 1) & (SNI_MAX_NAME - 1)) + 1;
    if buf.in_stream != 0 {
        // In the continuation's stream buffer, at an offset inside the carried bytes.
        if at >= CARRY_BUF {
            return false;
        }
        // SAFETY: `stream` holds 2 * CARRY_BUF >= at + SNI_MAX_NAME bytes and `name.bytes`
        // SNI_MAX_NAME; two fields of one slot, never overlapping.
        unsafe {
            ptr::copy_nonoverlapping(
                buf.stream.as_ptr().add(at),
                buf.name.bytes.as_mut_ptr(),
                SNI_MAX_NAME,
            )
        };
    } else {
        // SAFETY: `bytes` holds SNI_MAX_NAME >= n bytes; the helper bounds-checks the packet.
        let rc = unsafe {
            bpf_xdp_load_bytes(
                ctx.ctx as *mut _,
                at as u32,
                buf.name.bytes.as_mut_ptr() as *mut c_void,
                n as u32,
            )
        };
        if rc != 0 {
            return false;
        }
    }
    sni::strip_trailing_dot(&mut buf.name);
    sni::name_listed(&buf.name, |h| {
        // SAFETY: a hash map lookup by value; the value is not kept.
        unsafe { TLS_SNI_DOMAINS.get(h) }.is_some()
    })
}
