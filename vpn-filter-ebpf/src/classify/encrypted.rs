//! Fully encrypted first payloads (Shadowsocks, VMess, obfs4, Psiphon OSSH): the rule set
//! published in "How the Great Firewall of China Detects and Blocks Fully Encrypted Traffic"
//! (USENIX Security 2023). A payload is *exempt* (not fully encrypted) if any of:
//! - Ex1: the average number of set bits per byte is <= 3.4 or >= 4.6;
//! - Ex2: its first six bytes are printable ASCII;
//! - Ex3: more than half of its bytes are printable;
//! - Ex4: it holds a run of more than 20 printable bytes;
//! - Ex5: it starts like TLS (`[16-17] 03 [00-09]`) or like an HTTP request.
//!
//! Everything else looks random. The rule is applied to the first [`WINDOW`] bytes of a
//! flow's first client payload (the paper applies it to the whole first packet; on 96 random
//! bytes the Ex1 bounds sit four standard deviations from the mean, so the window does not
//! change the verdict on random data). Monitor by default: the GFW itself accepted about
//! 0.6% collateral damage, and the project's corpus figure is published by
//! `cargo xtask accuracy`.

use super::*;

/// Payloads shorter than this are not judged (no encrypted proxy's first packet is: a salt
/// or IV of 16-32 bytes, a length, a tag).
pub const FET_MIN_LEN: usize = 24;

#[inline(always)]
fn printable(b: u8) -> bool {
    (0x20..=0x7e).contains(&b)
}

/// Whether the first `n` bytes of `w` (`n` at most [`WINDOW`]) look fully encrypted.
#[inline(always)]
pub fn fully_encrypted(w: &[u8; WINDOW], n: usize) -> bool {
    if !(FET_MIN_LEN..=WINDOW).contains(&n) {
        return false;
    }
    // Ex5: TLS records and HTTP requests.
    if (w[0] == 0x16 || w[0] == 0x17) && w[1] == 3 && w[2] <= 9 {
        return false;
    }
    let head = window_at::<0, 4>(w);
    if matches!(
        &head,
        b"GET " | b"PUT " | b"POST" | b"HEAD" | b"DELE" | b"OPTI" | b"CONN" | b"PATC" | b"TRAC"
    ) {
        return false;
    }
    // STUN (its magic cookie) is a protocol of its own.
    if window_at::<4, 4>(w) == STUN_MAGIC {
        return false;
    }
    // Ex2: the first six bytes printable.
    let mut k = 0;
    let mut first6 = true;
    while k < 6 {
        first6 &= printable(w[k]);
        k += 1;
    }
    if first6 {
        return false;
    }
    // One pass with no data-dependent branch (the verifier walks it once): bytes beyond `n`
    // are zero in the window, and zero has no set bit and is not printable.
    let (mut bits, mut printables, mut run, mut long_run) = (0u32, 0u32, 0u32, 0u32);
    let mut i = 0;
    while i < WINDOW {
        // SAFETY: i < WINDOW.
        let b = unsafe { *w.get_unchecked(i) } as u32;
        bits += b.count_ones();
        // 1 when b >= 0x20, 1 when b >= 0x7f: printable is the first without the second.
        let p = ((b + 0xe0) >> 8) ^ ((b + 0x81) >> 8);
        printables += p;
        run = (run + 1) * p;
        // 1 once a run reaches 21 bytes (run <= WINDOW < 235).
        long_run |= (run + 235) >> 8;
        i += 1;
    }
    let n = n as u32;
    // Ex1 (in tenths of a bit per byte), Ex3, Ex4.
    let tenths = bits * 10;
    !(tenths <= 34 * n || tenths >= 46 * n || printables * 2 > n || long_run != 0)
}

/// A datagram the rule looks at: no port whose own protocol is random-looking or already
/// judged (DNS, NTP, QUIC on 443, IKE, mDNS, STUN), not a QUIC long header of a known
/// version, not RTP/SRTP (version 2 in the first two bits), not STUN. The first datagram of
/// a flow is then judged (see the program's `udp_first`).
#[inline(always)]
pub fn udp_candidate(sport: u16, dport: u16, len: usize, head: [u8; 4]) -> bool {
    udp_conversation_candidate(sport, dport, len) && !exempt_udp_head(head)
}

/// The ports and sizes whose conversations the rule follows at all.
#[inline(always)]
pub fn udp_conversation_candidate(sport: u16, dport: u16, len: usize) -> bool {
    if len < FET_MIN_LEN {
        return false;
    }
    for p in [sport, dport] {
        if matches!(p, 53 | 123 | 443 | 500 | 4500 | 5353 | 3478 | 5349 | 19302) {
            return false;
        }
    }
    true
}

/// First bytes the rule leaves alone: RTP/SRTP with no CSRC list, RTCP, and QUIC long
/// headers of a known version. (A conversation already dropped by the rule is dropped
/// whatever its next datagram starts with: see the program's `conversation_look`.)
///
/// The RTP test is narrow on purpose. "Version 2" alone (the first two bits) holds for one
/// random byte in four: a Shadowsocks datagram would pass as RTP 25% of the time, and a
/// one-datagram conversation (its reply judged as new) one time in sixteen. RTP senders
/// outside mixers send no CSRC (count 0), so the first byte is 0x80, 0x90, 0xa0 or 0xb0
/// (padding and extension bits free): 1 random byte in 64. RTCP: version 2 and a packet
/// type of 200-211 (SR, RR, SDES, BYE, APP, RFC 4585 feedback, RFC 3611 XR...), 1 random
/// pair in 85. A mixer's RTP with CSRCs is judged by the rule, and looks random: under
/// enforce it would be dropped, which is why the rule is monitored by default.
#[inline(always)]
pub fn exempt_udp_head(head: [u8; 4]) -> bool {
    // RTP/SRTP with no CSRC; RTCP.
    if head[0] & 0xc0 == 0x80 && (head[0] & 0x0f == 0 || (200..=211).contains(&head[1])) {
        return true;
    }
    // QUIC long headers: version 1, 2 (0x6b3343cf), drafts (0xff0000xx).
    if head[0] & 0xc0 == 0xc0
        && ((head[1] == 0 && head[2] == 0 && head[3] == 0)
            || (head[1] == 0x6b && head[2] == 0x33 && head[3] == 0x43)
            || (head[1] == 0xff && head[2] == 0 && head[3] == 0))
    {
        return true;
    }
    false
}

/// The detection for a fully encrypted first payload: conclusive for the rule (monitored
/// by default through its protocol's policy).
#[inline(always)]
pub fn detection() -> Detection {
    Detection::new(
        Protocol::FullyEncrypted,
        Message::EncryptedFirstPayload,
        Strength::Strong,
    )
}
