//! WireGuard: handshake initiation (148 B), response (92 B), cookie reply (64 B) and
//! transport data; padded handshakes (commercial VPNs) up to [`WG_MAX_PADDED`].

use super::*;

/// Largest padded WireGuard handshake recognised (some commercial VPNs pad the 148/92-byte
/// messages; TunnelBear uses 204/100). Anything longer is not treated as WireGuard.
pub const WG_MAX_PADDED: usize = 148 + 256;

/// Packets of a pending WireGuard-data flow before it counts as confirmed.
pub const WG_DATA_CONFIRM_PACKETS: u32 = 4;

#[inline(always)]
pub(super) fn wireguard(sport: u16, dport: u16, w: &[u8; WINDOW], len: usize) -> Option<Detection> {
    if w[1] != 0 || w[2] != 0 || w[3] != 0 {
        return None;
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
