//! WireGuard: handshake initiation (148 B), response (92 B), cookie reply (64 B) and
//! transport data; padded handshakes (commercial VPNs) up to [`WG_MAX_PADDED`]; handshakes
//! whose reserved bytes carry a client id (Cloudflare WARP); the handshake on TCP behind a
//! 2-byte length (Mullvad's udp-over-tcp).

use super::*;

/// Largest padded WireGuard handshake recognised (some commercial VPNs pad the 148/92-byte
/// messages; TunnelBear uses 204/100). Anything longer is not treated as WireGuard.
pub const WG_MAX_PADDED: usize = 148 + 256;

/// Packets of a pending WireGuard-data flow before it counts as confirmed.
pub const WG_DATA_CONFIRM_PACKETS: u32 = 4;

#[inline(always)]
pub(super) fn wireguard(sport: u16, dport: u16, w: &[u8; WINDOW], len: usize) -> Option<Detection> {
    if w[1] != 0 || w[2] != 0 || w[3] != 0 {
        return with_client_id(sport, dport, w, len);
    }
    // A DNS message with id 0x0100..0x0400 and flags 0 starts like WireGuard; on port 53 its
    // question count (1) at [4..6] gives it away. WireGuard on port 53 loses only sender
    // indices starting 00 01 (1 in 65,536 handshakes, retried with a new index).
    if (sport == 53 || dport == 53) && w[4] == 0 && w[5] == 1 {
        return None;
    }
    let idx_a = [w[4], w[5], w[6], w[7], 0, 0, 0, 0];
    let idx_b = [w[8], w[9], w[10], w[11], 0, 0, 0, 0];
    let d = match w[0] {
        1 if len == 148 => {
            Detection::new(Protocol::WireGuard, Message::WgInitiation, Strength::Strong)
                .with_tokens(idx_a, [0; 8])
        }
        1 if len > 148 && len <= WG_MAX_PADDED => Detection::new(
            Protocol::WireGuard,
            Message::WgPaddedInitiation,
            Strength::Weak,
        )
        .with_tokens(idx_a, [0; 8]),
        2 if len == 92 => {
            Detection::new(Protocol::WireGuard, Message::WgResponse, Strength::Strong)
                .with_tokens(idx_a, idx_b)
        }
        2 if len > 92 && len <= WG_MAX_PADDED => Detection::new(
            Protocol::WireGuard,
            Message::WgPaddedResponse,
            Strength::FollowUp,
        )
        .with_tokens(idx_a, idx_b),
        3 if len == 64 => Detection::new(Protocol::WireGuard, Message::WgCookie, Strength::Strong)
            .with_tokens([0; 8], idx_a),
        // Transport data: 16-byte header + AEAD tag, padded to 16 bytes; keepalive is 32.
        4 if len >= 32 && len.is_multiple_of(16) => {
            Detection::new(Protocol::WireGuard, Message::WgData, Strength::Weak)
                .with_tokens(idx_a, [0; 8])
        }
        _ => return None,
    };
    Some(d)
}

/// Handshakes whose three reserved bytes are not zero. Cloudflare WARP puts a 3-byte client
/// id there (other clients built on WireGuard libraries that expose "reserved" do the same).
/// Without the zeros, a 148-byte datagram starting with 1 is not conclusive alone: the
/// initiation is weak and confirmed only by a 92-byte response whose receiver index echoes
/// its sender index (see [`super::advance`]).
#[inline(always)]
fn with_client_id(sport: u16, dport: u16, w: &[u8; WINDOW], len: usize) -> Option<Detection> {
    // WARP never runs on DNS's port, and STUN's cookie rules out STUN binding messages.
    if sport == 53 || dport == 53 || [w[4], w[5], w[6], w[7]] == STUN_MAGIC {
        return None;
    }
    let idx_a = [w[4], w[5], w[6], w[7], 0, 0, 0, 0];
    let idx_b = [w[8], w[9], w[10], w[11], 0, 0, 0, 0];
    match w[0] {
        1 if len == 148 => Some(
            Detection::new(Protocol::WireGuard, Message::WgIdInitiation, Strength::Weak)
                .with_tokens(idx_a, [0; 8]),
        ),
        2 if len == 92 => Some(
            Detection::new(
                Protocol::WireGuard,
                Message::WgIdResponse,
                Strength::FollowUp,
            )
            .with_tokens(idx_a, idx_b),
        ),
        _ => None,
    }
}

/// The prefilter's check for [`with_client_id`]: a type and the exact size.
#[inline(always)]
pub(super) fn is_id_handshake_head(head: [u8; 4], len: usize) -> bool {
    (head[0] == 1 && len == 148) || (head[0] == 2 && len == 92)
}

/// Mullvad's udp-over-tcp: every WireGuard datagram on the TCP stream behind its 2-byte
/// big-endian length, so the stream starts `00 94 01 00 00 00` (an initiation, 148 bytes) or,
/// from the server, `00 5c 02 00 00 00` (a response, 92 bytes). Strong: the length must name
/// the message's own size and `stream_len` must hold it. A DNS-over-TCP message with id
/// 0x0100/0x0200 and flags 0 starts the same way; its question count (1) at [6..8] gives it
/// away, at the price of 1 in 65,536 sender indices (the client retries with a new one).
#[inline(always)]
pub(super) fn over_tcp(w: &[u8; WINDOW], stream_len: usize) -> Option<Detection> {
    if w[0] != 0 || w[3] != 0 || w[4] != 0 || w[5] != 0 || (w[6] == 0 && w[7] == 1) {
        return None;
    }
    let whole = match (w[1], w[2]) {
        (0x94, 1) => stream_len >= 150,
        (0x5c, 2) => stream_len >= 94,
        _ => false,
    };
    if !whole {
        return None;
    }
    Some(
        Detection::new(Protocol::WireGuard, Message::WgTcp, Strength::Strong)
            .with_tokens([w[6], w[7], w[8], w[9], 0, 0, 0, 0], [0; 8]),
    )
}

/// The TCP prefilter's check for [`over_tcp`].
#[inline(always)]
pub(super) fn is_tcp_head(head: [u8; 4]) -> bool {
    head[0] == 0
        && ((head[1] == 0x94 && head[2] == 1) || (head[1] == 0x5c && head[2] == 2))
        && head[3] == 0
}
