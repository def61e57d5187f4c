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

use vpn_filter_common::{SNI_DOMAIN_ENTRIES, SNI_MAX_NAME};
use vpn_filter_ebpf::classify::sni::{self, Bytes, Name, Walk};

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
    /// Where the next extension header and the extensions' end lie in that segment.
    skip: u16,
    end: u16,
    _pad: u32,
}

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
    /// The walk's answer ([`walk_stage`]): the name's packet offset, the continuation.
    off: u32,
    skip: u32,
    end: u32,
    _pad: u32,
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
    // Extension headers before this segment are in the head only: not walked (a miss).
    if start < rel || end < start || end - rel > 0xffff {
        return false;
    }
    let h = tcp_hash(pkt);
    let Some(e) = SNI_PENDING.get_ptr_mut(h & (SNI_PENDING_SLOTS - 1)) else {
        return false;
    };
    // SAFETY: an array slot; a racing writer on another CPU writes its own flow's
    // continuation, ours is then a miss.
    unsafe {
        *e = SniPending {
            hash: h | 1,
            seq: pkt.tcp_seq,
            skip: (start - rel) as u16,
            end: (end - rel) as u16,
            _pad: 0,
        }
    };
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
    let (skip, end) = if first {
        // The cheap check: six bytes, a compare.
        let p = Payload {
            ctx,
            off: pkt.payload_off,
        };
        match p.load::<6>(0) {
            Some(b) if sni::is_client_hello_head(b) => (0, 0),
            _ => return DETECT_NONE,
        }
    } else {
        let Some(pending) = SNI_PENDING.get(idx) else {
            return DETECT_NONE;
        };
        if pending.hash != tag || pending.seq != pkt.tcp_seq {
            return DETECT_NONE;
        }
        (pending.skip as u32, pending.end as u32)
    };
    let walk = walk_stage(ctx, first, skip, end);
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
        // SAFETY: an array slot; a racing writer on another CPU writes its own flow's
        // continuation, ours is then a miss.
        unsafe {
            *e = SniPending {
                hash: tag,
                seq: pkt.tcp_seq.wrapping_add(pkt.payload_len as u32),
                skip: w.skip as u16,
                end: w.end as u16,
                _pad: 0,
            }
        };
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
fn walk_stage(ctx: &XdpContext, first: bool, skip: u32, end: u32) -> u32 {
    let (Some(slot), Some(out)) = (SCRATCH.get(0), SNI_NAME.get_ptr_mut(0)) else {
        return WALK_NONE;
    };
    let pkt = &slot.pkt;
    if pkt.payload_off > MAX_PAYLOAD_OFFSET || pkt.captured > 0xffff {
        return WALK_NONE;
    }
    let p = Payload {
        ctx,
        off: pkt.payload_off,
    };
    let walk = if first {
        sni::client_hello(&p, pkt.captured)
    } else {
        sni::walk_extensions(&p, pkt.captured, skip as usize, end as usize)
    };
    // SAFETY: a per-CPU slot, only this CPU touches it while the program runs.
    let out = unsafe { &mut *out };
    match walk {
        Walk::Name { off, len } => {
            out.off = (pkt.payload_off + off) as u32;
            out.name.len = len as u64;
            WALK_NAME
        }
        Walk::Continue { skip, end } if skip <= 0xffff && end <= 0xffff => {
            out.skip = skip as u32;
            out.end = end as u32;
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
    sni::name_listed(&buf.name, |h| {
        // SAFETY: a hash map lookup by value; the value is not kept.
        unsafe { TLS_SNI_DOMAINS.get(h) }.is_some()
    })
}
