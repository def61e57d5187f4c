//! TLS-carried VPNs by the server name of a ClientHello (issue 16, item 1).
//!
//! WARP's API, Psiphon, Windscribe, Opera VPN and the other consumer apps that tunnel in TLS
//! on 443 show one thing in clear: the ClientHello's `server_name` (RFC 6066, section 3). The
//! operator's list of VPN domains is matched by suffix: the name's hash is walked from its end
//! ([`vpn_filter_common::domain_hash`]) and looked up at every dot, so `a.b.example.com`
//! matches a listed `example.com` and `notexample.com` does not.
//!
//! Layout walked (RFC 8446 section 4.1.2, RFC 5246 section 7.4.1.2): a handshake record
//! `16 03 0{1,2,3} len(2)`, handshake type 1 and a 24-bit length, client version (2), random
//! (32), session id (1 + up to 32), cipher suites (2 + even length), compression methods
//! (1 + length), extensions (2 + length), each extension `type(2) len(2) data`. The
//! server_name extension (type 0) holds a list (2), a name type (1, host_name = 0) and the
//! name (2 + length).
//!
//! Every loop is bounded by a constant: at most [`MAX_EXTENSIONS`] extensions per segment
//! and [`SNI_MAX_NAME`] name bytes. A ClientHello with post-quantum key shares (~1.8 KB)
//! spans two segments; when the first one ends before server_name, the walk returns where
//! the next extension header starts in the next segment ([`Walk::Continue`]) and the kernel
//! continues there. A first segment shorter than the kernel's stream head is reassembled
//! into it first; the fixed fields are then read from the head and the segment that completed
//! it ([`hello_extensions`]), and the walk goes on in that segment. An extension header or a
//! server_name extension that a segment boundary cuts (a split inside the name, as zapret's
//! `midsld`) is carried: its bytes in the first segment are kept and the next segment's walk
//! reads them and the segment as one stream, so a name split over any number of in-order
//! segments is read whole. Not caught (misses, never false positives): a ClientHello whose
//! fixed fields (session id, cipher suites,
//! compression) are neither in its first segment nor in the reassembled head, a ClientHello
//! fragmented over several TLS records, names longer than [`SNI_MAX_NAME`] bytes, ECH (the
//! outer name is the provider's front: matched only if listed).

use vpn_filter_common::{domain_hash_step, Message, Protocol, DOMAIN_HASH_SEED, SNI_MAX_NAME};

use super::{Detection, Strength};

/// Most extensions walked per segment; a ClientHello with more is not judged beyond them
/// (browsers send 16-20).
pub const MAX_EXTENSIONS: usize = 32;

/// Segment offsets beyond this are not read (no frame is longer).
pub const MAX_OFFSET: usize = 0xffff;

/// Most bytes a segment's end carries into the next segment's walk: an extension header,
/// the server_name list header and the longest name read ([`Walk::Continue`]).
pub const MAX_CARRY: usize = 4 + 5 + SNI_MAX_NAME;

/// Bytes of a segment read at an offset. The kernel reads the packet with
/// `bpf_xdp_load_bytes`; the host tests read a slice: one parser for both.
pub trait Bytes {
    /// `N` bytes at `at`, or `None` when the segment holds fewer.
    fn load<const N: usize>(&self, at: usize) -> Option<[u8; N]>;
}

/// Where a walk over a ClientHello (or its continuation) ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Walk {
    /// Not a ClientHello, malformed, no server_name, or a case this parser leaves alone.
    None,
    /// The server name is `len` bytes at `off` of this segment (`1..=SNI_MAX_NAME`).
    Name { off: usize, len: usize },
    /// The segment ended before server_name was read: the walk goes on in the next segment,
    /// read as one stream after the last `carry` bytes of this one (0 when the segment ended
    /// between two extensions; else the extension header or the server_name extension that
    /// the boundary cut, at most [`MAX_CARRY`] bytes). In that stream the next extension
    /// header starts at `skip` and the extensions end at `end`.
    Continue {
        skip: usize,
        end: usize,
        carry: usize,
    },
}

/// Cheap check on a first client payload's first six bytes: a TLS handshake record
/// carrying a ClientHello. Any record-layer minor version: TLS 1.3 servers ignore the field
/// (RFC 8446, section 5.1) and OpenSSL checks only the major one in a first record, so a
/// client may send 03 00 or 03 7f; browsers send 03 01.
#[inline(always)]
pub fn is_client_hello_head(h: [u8; 6]) -> bool {
    h[0] == 0x16 && h[1] == 0x03 && h[5] == 0x01
}

/// Walks a TCP stream's first segment (`seg_len` bytes) from the record header to the
/// extensions, then through them.
#[inline(always)]
pub fn client_hello<B: Bytes>(b: &B, seg_len: usize) -> Walk {
    match hello_extensions(b) {
        Some((start, end)) => walk_extensions(b, seg_len, start, end),
        None => Walk::None,
    }
}

/// The ClientHello's fixed fields, from the record header: where its extensions start and
/// end (stream offsets), or `None` when `b` does not start a ClientHello this parser reads.
/// No loop: the kernel also runs it over a reassembled stream head (see the program's
/// sni.rs).
#[inline(always)]
pub fn hello_extensions<B: Bytes>(b: &B) -> Option<(usize, usize)> {
    // Record header and handshake header; the session id length after the version and the
    // random (two small reads, not one of 44 bytes: the buffer sits on the deepest call
    // chain's stack in the kernel).
    let h = b.load::<9>(0)?;
    let head = [h[0], h[1], h[2], h[3], h[4], h[5]];
    if !is_client_hello_head(head) {
        return None;
    }
    let rec_len = u16::from_be_bytes([h[3], h[4]]) as usize;
    let hs_len = (h[6] as usize) << 16 | (h[7] as usize) << 8 | h[8] as usize;
    // The handshake fits its record (a ClientHello fragmented over records is not judged).
    if hs_len + 4 > rec_len || hs_len < 38 {
        return None;
    }
    let sid = b.load::<1>(43)?[0] as usize;
    if sid > 32 {
        return None;
    }
    let at = 44 + sid;
    let cs_len = u16::from_be_bytes(b.load::<2>(at)?) as usize;
    if cs_len < 2 || cs_len & 1 != 0 {
        return None;
    }
    let at = at + 2 + cs_len;
    let comp = b.load::<1>(at)?;
    let at = at + 1 + comp[0] as usize;
    let el = b.load::<2>(at)?;
    let start = at + 2;
    let end = start + u16::from_be_bytes(el) as usize;
    // The extensions end inside the handshake message, which ends inside the record.
    if end > 9 + hs_len {
        return None;
    }
    Some((start, end))
}

/// Walks extensions from `start` (an extension header) to `end` (may lie beyond the
/// segment's `seg_len` bytes: the ClientHello goes on in the next segment).
#[inline(always)]
pub fn walk_extensions<B: Bytes>(b: &B, seg_len: usize, start: usize, end: usize) -> Walk {
    let mut off = start;
    let mut i = 0;
    while i < MAX_EXTENSIONS {
        if off + 4 > end || off > MAX_OFFSET || end > MAX_OFFSET + 1 {
            // No server_name in the extensions (or lengths that overrun them).
            return Walk::None;
        }
        if off >= seg_len {
            return Walk::Continue {
                skip: off - seg_len,
                end: end - seg_len,
                carry: 0,
            };
        }
        // A header the boundary cuts is read again, whole, in the next segment's walk.
        if off + 4 > seg_len {
            return carry_from(off, seg_len, end);
        }
        let Some(x) = b.load::<4>(off) else {
            return Walk::None;
        };
        let len = u16::from_be_bytes([x[2], x[3]]) as usize;
        if x[0] == 0 && x[1] == 0 {
            return server_name(b, seg_len, off, len, end);
        }
        off += 4 + len;
        i += 1;
    }
    Walk::None
}

/// The walk goes on in the next segment from the extension header at `off`, which this
/// segment's `seg_len` bytes cut: its bytes are carried (zapret's and GoodbyeDPI's splits
/// inside the server name).
#[inline(always)]
fn carry_from(off: usize, seg_len: usize, end: usize) -> Walk {
    if seg_len - off > MAX_CARRY || end < off {
        return Walk::None;
    }
    Walk::Continue {
        skip: 0,
        end: end - off,
        carry: seg_len - off,
    }
}

/// The host name in the server_name extension whose header is at `ext` and whose `len`
/// bytes of data follow it; when the segment's `seg_len` bytes cut it, the extension is
/// carried into the next segment's walk.
#[inline(always)]
fn server_name<B: Bytes>(b: &B, seg_len: usize, ext: usize, len: usize, end: usize) -> Walk {
    let at = ext + 4;
    if at + len > end || len < 6 {
        return Walk::None;
    }
    if at + 5 > seg_len {
        return carry_from(ext, seg_len, end);
    }
    let Some(x) = b.load::<5>(at) else {
        return Walk::None;
    };
    let list = u16::from_be_bytes([x[0], x[1]]) as usize;
    let name_len = u16::from_be_bytes([x[3], x[4]]) as usize;
    // The list fills the extension; its first entry is a host_name (clients send one).
    if list + 2 != len || x[2] != 0 || name_len + 3 > list {
        return Walk::None;
    }
    if name_len == 0 || name_len > SNI_MAX_NAME {
        return Walk::None;
    }
    if at + 5 + name_len > seg_len {
        return carry_from(ext, seg_len, end);
    }
    Walk::Name {
        off: at + 5,
        len: name_len,
    }
}

/// A server name as the kernel holds it (in a per-CPU map slot, not on the BPF stack).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Name {
    /// Bytes of the name in `bytes` (`1..=SNI_MAX_NAME`).
    pub len: u64,
    pub bytes: [u8; SNI_MAX_NAME],
}

/// Whether the host name or one of its dot-suffixes is listed: the running hash from the
/// name's end is looked up at every dot and once for the whole name.
///
/// The length is read from memory again at every step: the verifier then never narrows one
/// register's range step by step (which would leave the loop with a different known length
/// at each step and walk everything after it once per length).
#[inline(always)]
pub fn name_listed(name: &Name, listed: impl Fn(u64) -> bool) -> bool {
    let mut h = DOMAIN_HASH_SEED;
    let mut hit = false;
    let mut i = 0;
    while i < SNI_MAX_NAME {
        // SAFETY: reads a field of a live reference.
        let n = unsafe { core::ptr::read_volatile(&name.len) } as usize;
        if i >= n || n > SNI_MAX_NAME {
            break;
        }
        let b = name.bytes[(n - 1 - i) & (SNI_MAX_NAME - 1)];
        // A leading dot or an empty label never looks up the empty suffix.
        if b == b'.' && i > 0 && listed(h) {
            hit = true;
        }
        h = domain_hash_step(h, b);
        i += 1;
    }
    // SAFETY: as above.
    let n = unsafe { core::ptr::read_volatile(&name.len) } as usize;
    if n == 0 || n > SNI_MAX_NAME {
        return false;
    }
    hit || listed(h)
}

/// Drops a fully qualified name's trailing dot (`windscribe.com.`, which servers accept):
/// it is not part of the name matched. Run on the loaded name before [`name_listed`].
#[inline(always)]
pub fn strip_trailing_dot(name: &mut Name) {
    let n = name.len as usize;
    if n > 1 && n <= SNI_MAX_NAME && name.bytes[(n - 1) & (SNI_MAX_NAME - 1)] == b'.' {
        name.len = (n - 1) as u64;
    }
}

/// The detection for a listed server name: conclusive for the list, judged by the
/// `tls_sni` policy (monitored by default).
#[inline(always)]
pub fn detection() -> Detection {
    Detection::new(
        Protocol::TlsSni,
        Message::TlsClientHelloSni,
        Strength::Strong,
    )
}
