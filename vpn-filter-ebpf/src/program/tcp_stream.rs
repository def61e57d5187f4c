//! TCP streams, not segments: reassembly of a candidate stream's first bytes.

use super::*;

/// [`stream_head`]'s answers.
pub(super) const HEAD_ORDINARY: u32 = 0;

/// The segment carries part of a candidate stream's first [`HEAD_BYTES`] and was buffered;
/// the bytes so far are not complete enough to judge.
pub(super) const HEAD_HELD: u32 = 1;

/// The stream's first bytes, reassembled, matched: the detection is in the scratch slot.
pub(super) const HEAD_DETECTED: u32 = 2;

/// Flag on the answers above: the segment starts the stream of the side that sent the SYN
/// (the client's first payload), which the fully-encrypted rule judges.
pub(super) const HEAD_FIRST_CLIENT: u32 = 0x100;

/// Bit of a `TCP_HEADS` slot's tag: the ISN came from a SYN (the client), not a SYN-ACK.
const SLOT_CLIENT: u64 = 1 << 16;

/// Bytes of a TCP stream's start that are reassembled: the classifier's window.
pub(super) const HEAD_BYTES: usize = WINDOW;

/// Slots of the `TCP_HEADS` array (a power of two).
pub(super) const TCP_HEAD_SLOTS: u32 = 1 << 18;

/// A slot is trusted for this many ~1.07 s ticks after its SYN.
pub(super) const TCP_HEAD_TICKS: u64 = 60;

/// Per direction of a TCP connection, from its SYN (or SYN-ACK): the initial sequence number,
/// a 16-bit tag of the 4-tuple's hash and the tick it was seen, in a slot chosen by the hash.
/// A data segment finds whether it touches the stream's first bytes with one array read, so
/// ordinary segments never reach a hash map. Collisions only lose reassembly for a flow
/// (the segment is then judged alone, as before).
#[map(name = "TCP_HEADS")]
pub(super) static TCP_HEADS: Array<u64> = Array::with_max_entries(TCP_HEAD_SLOTS, 0);

/// One bit per `TCP_HEADS` slot, set while the slot may hold a stream's start: a data
/// segment reads its slot only when its bit says so. 32 KiB instead of the slots' 2 MiB, so
/// the segments of established streams (the bulk of a gateway's TCP: replies past their first
/// payload, streams older than the slots' trust, streams whose SYN was never seen) cost a read
/// that stays in cache rather than a random miss into the slots (about 100 ns per segment in
/// the in-kernel bench). Bits are set and cleared by plain read-modify-write (the v1 BPF
/// target has no atomic OR): two CPUs writing one word in the same few nanoseconds can lose
/// the other's update, which costs what a slot collision costs (one stream's reassembly), or
/// a needless slot read. A SYN flood makes such races likelier, but the same flood overwrites
/// the slots themselves far more often.
#[map(name = "TCP_HEAD_LIVE")]
pub(super) static TCP_HEAD_LIVE: Array<u64> = Array::with_max_entries(TCP_HEAD_SLOTS / 64, 0);

/// Slot `idx`'s word in `TCP_HEAD_LIVE` and its bit.
#[inline(always)]
fn live_word(idx: u32) -> Option<(*mut u64, u64)> {
    let word = TCP_HEAD_LIVE.get_ptr_mut(idx / 64)?;
    Some((word, 1u64 << (idx % 64)))
}

/// Sets or clears a slot's bit (volatile: ordered with the slot's own accesses).
#[inline(always)]
fn set_live(word: *mut u64, bit: u64, live: bool) {
    // SAFETY: a word of this program's array map.
    unsafe {
        let w = ptr::read_volatile(word);
        let new = if live { w | bit } else { w & !bit };
        if new != w {
            ptr::write_volatile(word, new);
        }
    }
}

/// Clears the bit of `pkt`'s slot once the slot no longer holds a stream's start (it held
/// `seen`). A SYN on another CPU may have written the slot since it was read: its bit is set
/// again then (without a barrier, a SYN on the same slot within the same ~100 ns can still
/// end with its bit clear: one stream's reassembly lost, as in a slot collision). Hashes the packet again rather than keeping the slot's index: held across
/// `stream_head`'s calls, it took that frame past the stack budget (once per stream).
#[inline(always)]
fn forget(slot: *mut u64, pkt: &Packet, seen: u64) {
    let Some((word, bit)) = live_word(tcp_hash(pkt) & (TCP_HEAD_SLOTS - 1)) else {
        return;
    };
    set_live(word, bit, false);
    // SAFETY: an array slot of this program's map; volatile: read after the clear.
    if unsafe { ptr::read_volatile(slot) } != seen {
        set_live(word, bit, true);
    }
}

/// Reassembly of a candidate stream's first bytes, per direction: while a segment arrives
/// short (a split) or out of order.
#[map(name = "TCP_STREAMS")]
pub(super) static TCP_STREAMS: LruHashMap<StreamKey, StreamHead> =
    LruHashMap::with_max_entries(16384, 0);

/// An empty [`StreamHead`] (never written) that new entries are copied from.
#[map(name = "STREAM_TEMPLATE")]
pub(super) static STREAM_TEMPLATE: PerCpuArray<StreamHead> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct StreamKey {
    src: [u8; 16],
    dst: [u8; 16],
    sport: u16,
    dport: u16,
    isn: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct StreamHead {
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

/// Hash of a TCP direction (addresses, ports), with the per-boot seed. Mixed a 64-bit word
/// at a time (five rounds instead of nine 32-bit ones): this build's BPF code (cpu v1, no
/// alu32) does 32-bit arithmetic in 64-bit registers with a zero-extension after each step
/// (about 15 ns less per TCP segment in the in-kernel bench).
/// Not inlined: its 64-bit constants and words, inlined into the server-name stages, took
/// their frames past the stack budget.
#[inline(never)]
pub(super) fn tcp_hash(pkt: &Packet) -> u32 {
    let (src, dst) = pkt.dwords();
    let ports = (pkt.sport as u64) << 16 | pkt.dport as u64;
    // Written out, not a loop over an array: the array would sit in the callers' frames.
    let round = |h: u64, w: u64| (h ^ w).wrapping_mul(0xff51_afd7_ed55_8ccd).rotate_left(29);
    let mut h = seed() as u64 ^ 0x9e37_79b9_7f4a_7c15;
    h = round(h, src[0]);
    h = round(h, src[1]);
    h = round(h, dst[0]);
    h = round(h, dst[1]);
    h = round(h, ports);
    (h ^ (h >> 32)) as u32
}

/// Seeded hash of one endpoint (address as [`Packet::words`], port), for conversation slots
/// that either direction finds.
#[inline(always)]
pub(super) fn endpoint_hash(addr: &[u32; 4], port: u16) -> u32 {
    vpn_filter_common::endpoint_hash(seed(), addr, port)
}

/// The per-load seed of the slot hashes (0 until the controller writes it).
#[inline(always)]
pub(super) fn seed() -> u32 {
    TCP_HEAD_SEED.get(0).copied().unwrap_or(0)
}

/// Seed of [`tcp_hash`], written by the controller at load (random per boot), so that
/// nobody can aim SYNs at another connection's slot.
#[map(name = "TCP_HEAD_SEED")]
pub(super) static TCP_HEAD_SEED: Array<u32> = Array::with_max_entries(1, 0);

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
pub(super) fn stream_head(ctx: &XdpContext) -> Result<u32, Counter> {
    let scratch = SCRATCH.get_ptr_mut(0).ok_or(Counter::InternalError)?;
    // SAFETY: a per-CPU slot, only this CPU touches it while the program runs.
    let pkt = unsafe { &(*scratch).pkt };
    if pkt.ip_proto != IPPROTO_TCP || pkt.frag != FRAG_NONE {
        return Ok(HEAD_ORDINARY);
    }
    let h = tcp_hash(pkt);
    let idx = h & (TCP_HEAD_SLOTS - 1);
    // 15 bits of tag; the lowest bit of the field says which side the slot belongs to.
    let tag = (h >> 16) as u64 & 0xfffe;
    // The clock is read only where a slot is written or matched: not for ordinary segments.
    let now_tick = || (now_ns() >> 30) & 0xffff;
    if pkt.tcp_flags & TCP_SYN != 0 {
        let tick = now_tick();
        let client = if pkt.tcp_flags & TCP_ACK == 0 {
            SLOT_CLIENT
        } else {
            0
        };
        let isn = pkt.tcp_seq;
        if let Some(slot) = TCP_HEADS.get_ptr_mut(idx) {
            // SAFETY: an array slot; a racing writer on another CPU writes a whole u64 too.
            unsafe { ptr::write_volatile(slot, (isn as u64) << 32 | tag << 16 | client | tick) };
            // After the slot: a reader that sees the bit finds the slot written.
            if let Some((word, bit)) = live_word(idx) {
                set_live(word, bit, true);
            }
        }
        if client == 0 || pkt.payload_len == 0 {
            return Ok(HEAD_ORDINARY);
        }
        // A client SYN's data (TCP Fast Open: shadowsocks-libev's `fast_open`, a ClientHello
        // in the SYN) is the stream's first payload, its first byte numbered ISN + 1: judged
        // below as any first payload (the fully-encrypted rule, the server name).
        // SAFETY: as above; `pkt` is read again below.
        unsafe { (*scratch).pkt.tcp_seq = isn.wrapping_add(1) };
    }
    // SAFETY: as above.
    let pkt = unsafe { &(*scratch).pkt };
    let len = pkt.payload_len;
    if len == 0 {
        return Ok(HEAD_ORDINARY);
    }
    let live = match live_word(idx) {
        // SAFETY: a word of this program's array map.
        Some((word, bit)) => (unsafe { ptr::read_volatile(word) }) & bit != 0,
        None => false,
    };
    if !live {
        return Ok(HEAD_ORDINARY);
    }
    let Some(slot) = TCP_HEADS.get_ptr_mut(idx) else {
        return Ok(HEAD_ORDINARY);
    };
    // SAFETY: as above.
    let v = unsafe { ptr::read_volatile(slot) };
    if v == 0 {
        forget(slot, pkt, 0);
        return Ok(HEAD_ORDINARY);
    }
    if (v >> 16) & 0xfffe != tag {
        // Another stream's slot (a collision): its bit stays.
        return Ok(HEAD_ORDINARY);
    }
    let tick = now_tick();
    if (tick.wrapping_sub(v & 0xffff) & 0xffff) > TCP_HEAD_TICKS {
        // No longer trusted: the stream's later segments skip the slot.
        forget(slot, pkt, v);
        return Ok(HEAD_ORDINARY);
    }
    let isn = (v >> 32) as u32;
    let rel = pkt.tcp_seq.wrapping_sub(isn.wrapping_add(1)) as usize;
    if rel >= HEAD_BYTES {
        // Beyond the head (or before the ISN): nothing to reassemble. A client segment of a
        // young stream may continue a ClientHello split over two segments (sni.rs: one
        // array read unless its stream left the walk for it).
        if v & SLOT_CLIENT != 0 && sni::sni_stage(ctx, false) == DETECT_FOUND {
            return Ok(HEAD_DETECTED);
        }
        return Ok(HEAD_ORDINARY);
    }
    // The client's first payload: the fully-encrypted rule judges it (a retransmission is
    // judged again, so an enforced verdict holds).
    let first = if rel == 0 && v & SLOT_CLIENT != 0 {
        HEAD_FIRST_CLIENT
    } else {
        0
    };
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
            // The usual case: the first segment holds the whole head. Judged alone; the
            // server's slot is released so that the rest of its stream skips this (the
            // client's stays: a retransmission of its first payload is judged again).
            if first == 0 {
                // SAFETY: as above.
                unsafe { ptr::write_volatile(slot, 0) };
                forget(slot, pkt, 0);
                return Ok(HEAD_ORDINARY);
            }
            // The client's first payload: a ClientHello naming a listed domain (sni.rs; a
            // six-byte compare for anything else).
            if sni::sni_stage(ctx, true) == DETECT_FOUND {
                return Ok(HEAD_DETECTED | first);
            }
            return Ok(HEAD_ORDINARY | first);
        }
        // Inserted from a zeroed map slot: 232 bytes would not fit on the stack.
        let Some(fresh) = STREAM_TEMPLATE.get(0) else {
            return Ok(HEAD_ORDINARY | first);
        };
        if TCP_STREAMS.insert(&key, fresh, 0).is_err() {
            count(counter_index(Counter::InternalError));
            return Ok(HEAD_ORDINARY | first);
        }
        entry = TCP_STREAMS.get_ptr_mut(&key);
    }
    let Some(e) = entry else {
        return Ok(HEAD_ORDINARY | first);
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
        return Ok(HEAD_HELD | first);
    }
    let stream_len = if (e.end as usize) > contig {
        e.end as usize
    } else {
        contig
    };
    let w: &[u8; WINDOW] = match e.buf.first_chunk::<WINDOW>() {
        Some(w) => w,
        None => return Ok(HEAD_ORDINARY | first),
    };
    if let Some(det) = classify_tcp(stream_len, w) {
        // SAFETY: as above.
        unsafe { (*scratch).det = det };
        // Kept: a retransmission of any of its segments is judged again (and dropped with the
        // flow).
        return Ok(HEAD_DETECTED | first);
    }
    if contig >= HEAD_BYTES {
        // The head is complete and is no VPN. A client's ClientHello whose first segment
        // was shorter than the head (split after a few bytes to hide its server name) is
        // walked on in this segment, as a continuation (sni.rs; `from_head` answers only for
        // a segment after the first, so `first` is 0). Its slot stays for the segments after
        // it, and so does the stream: a retransmission of this segment completes the head
        // again and is judged again.
        if v & SLOT_CLIENT != 0 && sni::from_head(ctx, &e.buf, rel) {
            if sni::sni_stage(ctx, false) == DETECT_FOUND {
                return Ok(HEAD_DETECTED);
            }
            return Ok(HEAD_ORDINARY);
        }
        // Otherwise forget the stream.
        // SAFETY: as above.
        unsafe { ptr::write_volatile(slot, 0) };
        forget(slot, pkt, 0);
        let _ = TCP_STREAMS.remove(&key);
        return Ok(HEAD_ORDINARY | first);
    }
    Ok(HEAD_HELD | first)
}

/// Copies `n` bytes of the segment's payload, from `from` on, into the head at `at`.
#[inline(always)]
pub(super) fn copy_segment(
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

pub(super) const TCP_SYN: u8 = 0x02;
pub(super) const TCP_ACK: u8 = 0x10;
