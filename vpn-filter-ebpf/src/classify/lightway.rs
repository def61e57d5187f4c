//! ExpressVPN Lightway over UDP: every datagram starts with a 16-byte header, `'H' 'e'`,
//! major version 1, minor version, the aggressive-mode and express-data flags (0 or 1), two
//! reserved zero bytes and an 8-byte session id; a DTLS record follows.

use super::*;

const HEADER: usize = 16;

/// Strong: the header's magic, version, flags and reserved bytes, and a DTLS 1.0/1.2 record
/// header behind it (content type 20..=25, version FE FF/FE FD, a length that fits the
/// datagram). Together about 2^-60 for random bytes; nothing else on the wire starts "He\x01"
/// with a DTLS record at 16.
#[inline(always)]
pub(super) fn lightway(w: &[u8; WINDOW], len: usize) -> Option<Detection> {
    if len < HEADER + 13 || !is_head([w[0], w[1], w[2], w[3]]) {
        return None;
    }
    if w[4] > 1 || w[5] > 1 || w[6] != 0 || w[7] != 0 {
        return None;
    }
    let record = w[HEADER];
    if !(20..=25).contains(&record)
        || w[HEADER + 1] != 0xfe
        || (w[HEADER + 2] != 0xfd && w[HEADER + 2] != 0xff)
    {
        return None;
    }
    if be16(w[HEADER + 11], w[HEADER + 12]) as usize + HEADER + 13 > len {
        return None;
    }
    Some(
        Detection::new(
            Protocol::Lightway,
            Message::LightwayDatagram,
            Strength::Strong,
        )
        .with_tokens(window_at::<8, 8>(w), [0; 8]),
    )
}

/// The prefilter's check: `He`, major version 1, a small minor version.
#[inline(always)]
pub(super) fn is_head(head: [u8; 4]) -> bool {
    head[0] == b'H' && head[1] == b'e' && head[2] == 1 && head[3] < 16
}
