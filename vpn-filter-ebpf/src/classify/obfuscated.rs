//! Tunnels behind an obfuscation layer, recognised over a flow rather than by one packet.
//! Both are heuristics with a measured false-positive rate (`cargo xtask accuracy`): their
//! protocols are monitored by default.
//!
//! - **WireGuard with rewritten headers** (AmneziaWG 1.x, WARP's client id on data packets):
//!   the message type is replaced, but a transport packet keeps its receiver index at [4..8]
//!   and its little-endian counter at [8..16], and its size is a multiple of 16. Per direction
//!   the first eight bytes stay constant while the counter rises by small steps.
//! - **Scrambled OpenVPN** (the XOR patches, "obfuscated servers"): a fixed byte mapping keeps
//!   sizes and the pattern of first bytes. The client's reset has one of OpenVPN's reset sizes
//!   and the server answers with the matching server reset size (12 bytes longer) and another
//!   first byte; then neither reset byte comes back, and two to four other first bytes (the
//!   control, ack and data opcodes under the mapping) make up the next packets (nDPI's and the
//!   USENIX Security 2022 paper's opcode pattern).

use super::*;

/// Port marks ([`PORT_MARK_IKE`], [`PORT_MARK_OVPN_OBFS`]): two bits per UDP port.
pub const PORT_MARK_IKE: u64 = 1;
/// The port answered a scrambled-OpenVPN reset pair: its packets are followed up.
pub const PORT_MARK_OVPN_OBFS: u64 = 2;

/// Consistent transport packets in one direction before the flow counts as confirmed.
pub const WG_OBFS_CONFIRM_PACKETS: u32 = 6;
/// Largest counter step between two consistent packets (reordering and loss).
pub const WG_OBFS_MAX_STEP: u32 = 64;

/// Packets of a scrambled-OpenVPN candidate flow after which its pattern is judged.
pub const OVPN_OBFS_JUDGE_PACKETS: u32 = 8;

/// Ports whose ordinary traffic has the candidate sizes so often that following it up would
/// cost more than the misses: DNS, NTP, QUIC, mDNS, STUN.
#[inline(always)]
fn busy_port(port: u16) -> bool {
    matches!(port, 53 | 123 | 443 | 5353 | 3478)
}

/// The second look at a UDP datagram no first-look rule took: bytes [8..32] of the payload
/// (`h`, zero when the datagram is shorter) and the marks of its ports decide whether the
/// window is classified ([`SecondLook::Inspect`]), whether the datagram continues a
/// scrambled-OpenVPN candidate flow, or nothing. Shared by the kernel and the host model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecondLook {
    No,
    /// Classify the window; `ike_port`: one of the ports carried IKE.
    Inspect {
        ike_port: bool,
    },
    /// A packet on a port that answered a scrambled-OpenVPN reset pair.
    OvpnObfuscated,
}

#[inline(always)]
pub fn udp_second_look(sport: u16, dport: u16, len: usize, marks: u64, h: &[u8; 24]) -> SecondLook {
    if marks & PORT_MARK_IKE != 0 {
        return SecondLook::Inspect { ike_port: true };
    }
    if len >= 28 && ike_any_port_prefilter(len, window16(h)) {
        return SecondLook::Inspect { ike_port: false };
    }
    let quiet = !busy_port(sport) && !busy_port(dport);
    // A transport packet of WireGuard with a rewritten type: size, and the counter's high
    // bytes zero (a counter below 2^32).
    if quiet
        && len >= 32
        && len.is_multiple_of(16)
        && h[4] == 0
        && h[5] == 0
        && h[6] == 0
        && h[7] == 0
    {
        return SecondLook::Inspect { ike_port: false };
    }
    if quiet && is_ovpn_client_reset_size(len) {
        return SecondLook::Inspect { ike_port: false };
    }
    // The server's reset answering a candidate (the kernel follows it up only while
    // candidate flows live), and every packet on a port that answered one.
    if quiet && (is_ovpn_server_reset_size(len) || marks & PORT_MARK_OVPN_OBFS != 0) {
        return SecondLook::OvpnObfuscated;
    }
    SecondLook::No
}

#[inline(always)]
fn window16(h: &[u8; 24]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        out[i] = h[8 + i];
        i += 1;
    }
    out
}

/// OpenVPN client reset sizes over UDP: no HMAC, tls-auth with MD5, SHA1 (the default),
/// SHA256 (or tls-crypt), SHA512.
#[inline(always)]
pub fn is_ovpn_client_reset_size(len: usize) -> bool {
    matches!(len, 14 | 38 | 42 | 54 | 86)
}

/// OpenVPN server reset sizes over UDP that are not also client reset sizes (54 is both).
#[inline(always)]
pub fn is_ovpn_server_reset_size(len: usize) -> bool {
    matches!(len, 26 | 50 | 66 | 98)
}

/// A transport packet of WireGuard with rewritten headers: weak, confirmed by
/// [`WG_OBFS_CONFIRM_PACKETS`] consistent packets in one direction. Token: the first eight
/// bytes (header and receiver index); aux: the counter's low 32 bits.
#[inline(always)]
pub(super) fn wg_data(sport: u16, dport: u16, w: &[u8; WINDOW], len: usize) -> Option<Detection> {
    if busy_port(sport)
        || busy_port(dport)
        || len < 32
        || !len.is_multiple_of(16)
        || w[12] != 0
        || w[13] != 0
        || w[14] != 0
        || w[15] != 0
        || (w[4] == 0 && w[5] == 0 && w[6] == 0 && w[7] == 0)
    {
        return None;
    }
    Some(
        Detection::new(
            Protocol::WireGuardObfuscated,
            Message::WgObfuscatedData,
            Strength::Weak,
        )
        .with_tokens(window_at::<0, 8>(w), [0; 8])
        .with_aux(window_at::<8, 4>(w)),
    )
}

/// A datagram of a reset size on a quiet port: the possible start of scrambled OpenVPN.
/// Token: its size (two bytes) and first byte; aux: its first four bytes.
#[inline(always)]
pub(super) fn ovpn_reset(
    sport: u16,
    dport: u16,
    w: &[u8; WINDOW],
    len: usize,
) -> Option<Detection> {
    if busy_port(sport) || busy_port(dport) || !is_ovpn_client_reset_size(len) {
        return None;
    }
    if window_at::<4, 4>(w) == STUN_MAGIC {
        return None;
    }
    Some(ovpn_packet(len, [w[0], w[1], w[2], w[3]], Strength::Weak))
}

/// A packet of a possible scrambled-OpenVPN flow (`head`: its first four bytes).
#[inline(always)]
pub fn ovpn_packet(len: usize, head: [u8; 4], strength: Strength) -> Detection {
    let l = (len as u16).to_le_bytes();
    Detection::new(
        Protocol::OpenVpnObfuscated,
        Message::OvpnObfuscated,
        strength,
    )
    .with_tokens([l[0], l[1], head[0], 0, 0, 0, 0, 0], [0; 8])
    .with_aux(head)
}

#[inline(always)]
fn le32(b: [u8; 4]) -> u32 {
    u32::from_le_bytes(b)
}

/// Whether `counter` moves on from `last` by 1..=[`WG_OBFS_MAX_STEP`].
#[inline(always)]
fn small_step(last: [u8; 4], counter: [u8; 4]) -> bool {
    let step = le32(counter).wrapping_sub(le32(last));
    step != 0 && step <= WG_OBFS_MAX_STEP
}

/// [`super::advance`] for a pending rewritten-WireGuard flow. Each direction keeps its own
/// header (`token` for the creating side, `peer_token` for the other) and counter (`aux`,
/// `data_head`); a packet is consistent when it repeats its direction's header and moves its
/// counter on by a small step. [`WG_OBFS_CONFIRM_PACKETS`] consistent packets in a row
/// confirm; an inconsistent one starts the count again from itself.
#[inline(always)]
pub(super) fn wg_advance(
    state: &mut FlowState,
    det: &Detection,
    same_direction: bool,
) -> Confirmation {
    let consistent = if same_direction {
        let ok = det.token == state.token && small_step(state.aux, det.aux);
        state.token = det.token;
        state.aux = det.aux;
        ok
    } else if state.peer_token == [0; 8] {
        // The other side's first packet: its baseline.
        state.peer_token = det.token;
        state.data_head = det.aux;
        true
    } else {
        let ok = det.token == state.peer_token && small_step(state.data_head, det.aux);
        state.peer_token = det.token;
        state.data_head = det.aux;
        ok
    };
    if !consistent {
        state.packets = 1;
        return Confirmation::Pending;
    }
    state.packets = state.packets.saturating_add(1);
    if state.packets >= WG_OBFS_CONFIRM_PACKETS {
        Confirmation::Confirmed
    } else {
        Confirmation::Pending
    }
}

/// Whether a rewritten-WireGuard packet is the blocked flow's own: one direction's header
/// with that direction's counter above the last one seen (so a constant-header protocol on
/// a spoofed 5-tuple loses at most one packet). The caller moves the counter on.
#[inline(always)]
pub(super) fn wg_belongs(state: &FlowState, det: &Detection) -> bool {
    let above = |last: [u8; 4]| le32(det.aux).wrapping_sub(le32(last)).wrapping_sub(1) < 1 << 30;
    (det.token == state.token && above(state.aux))
        || (state.peer_token != [0; 8] && det.token == state.peer_token && above(state.data_head))
}

/// Moves a blocked rewritten-WireGuard flow's counter on after [`wg_belongs`].
#[inline(always)]
pub fn wg_follow(state: &mut FlowState, det: &Detection) {
    if det.token == state.token {
        state.aux = det.aux;
    } else {
        state.data_head = det.aux;
    }
}

// Scrambled OpenVPN's state in the flow entry: `token` = the client reset's size (two bytes)
// and first byte; `peer_token[0]` = the server reset's first byte (0: not seen yet, the reset
// byte itself is then kept as byte|1 in [1]), `peer_token[2..6]` = up to four other first
// bytes, `peer_token[6]` = how many; `flags` OVPN_OBFS_* below.

/// The flow broke the pattern: it never confirms.
pub const OVPN_OBFS_FAILED: u8 = 0x10;
/// The server's reset was seen.
pub const OVPN_OBFS_ANSWERED: u8 = 0x20;
/// A non-reset first byte was seen.
pub const OVPN_OBFS_PAST_RESETS: u8 = 0x40;
/// The reset pair just matched: the program marks the ports.
pub const OVPN_OBFS_MARK: u8 = 0x80;

/// [`super::advance`] for a pending scrambled-OpenVPN flow.
#[inline(always)]
pub(super) fn ovpn_advance(
    state: &mut FlowState,
    det: &Detection,
    same_direction: bool,
) -> Confirmation {
    if state.flags & OVPN_OBFS_FAILED != 0 {
        return Confirmation::Pending;
    }
    let byte = det.token[2];
    let client_reset = state.token[2];
    if state.flags & OVPN_OBFS_ANSWERED == 0 {
        if same_direction {
            // A retransmitted reset; anything else first breaks the pattern.
            if det.token != state.token {
                state.flags |= OVPN_OBFS_FAILED;
            }
            return Confirmation::Pending;
        }
        let client_len = u16::from_le_bytes([state.token[0], state.token[1]]);
        let len = u16::from_le_bytes([det.token[0], det.token[1]]);
        if len != client_len + 12 || byte == client_reset {
            state.flags |= OVPN_OBFS_FAILED;
            return Confirmation::Pending;
        }
        state.peer_token[0] = byte;
        state.flags |= OVPN_OBFS_ANSWERED | OVPN_OBFS_MARK;
        state.packets = 2;
        return Confirmation::Pending;
    }
    let server_reset = state.peer_token[0];
    if byte == client_reset || byte == server_reset {
        // Resets may repeat (retransmissions) only before the other opcodes start.
        if state.flags & OVPN_OBFS_PAST_RESETS != 0 {
            state.flags |= OVPN_OBFS_FAILED;
        }
    } else {
        state.flags |= OVPN_OBFS_PAST_RESETS;
        let n = state.peer_token[6] as usize;
        let known = (n > 0 && state.peer_token[2] == byte)
            || (n > 1 && state.peer_token[3] == byte)
            || (n > 2 && state.peer_token[4] == byte)
            || (n > 3 && state.peer_token[5] == byte);
        if !known {
            match n {
                0 => state.peer_token[2] = byte,
                1 => state.peer_token[3] = byte,
                2 => state.peer_token[4] = byte,
                3 => state.peer_token[5] = byte,
                _ => {
                    state.flags |= OVPN_OBFS_FAILED;
                    return Confirmation::Pending;
                }
            }
            state.peer_token[6] = (n + 1) as u8;
        }
    }
    state.packets = state.packets.saturating_add(1);
    if state.flags & OVPN_OBFS_FAILED == 0
        && state.packets >= OVPN_OBFS_JUDGE_PACKETS
        && state.peer_token[6] >= 2
    {
        Confirmation::Confirmed
    } else {
        Confirmation::Pending
    }
}
