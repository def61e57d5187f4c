//! OpenVPN over UDP and TCP: the hard-reset layouts (plain, tls-auth, tls-crypt,
//! tls-crypt-v2) and the opcodes of its control and data packets.

use super::*;

/// nDPI's bound for OpenVPN resets: larger packets are something else.
pub const OVPN_MAX_RESET: usize = 1200;

/// Smallest tls-crypt-v2 client reset (v3): the 54-byte tls-crypt reset and a WKc of at least
/// a 32-byte tag, the 256-byte client key and its 2-byte length (the fixture's is 353).
pub const OVPN_MIN_RESET_V3: usize = 54 + 32 + 256 + 2;

/// Highest replay packet id (low byte) a tls-crypt-v2 client reset carries: 1, plus one per
/// retransmission within the handshake window.
pub const OVPN_V3_MAX_REPLAY_ID: u8 = 64;

/// OpenVPN opcodes (`[0] >> 3`).
pub(super) mod ovpn {
    pub const CONTROL_HARD_RESET_CLIENT_V1: u8 = 1;
    pub const CONTROL_HARD_RESET_SERVER_V1: u8 = 2;
    pub const CONTROL_V1: u8 = 4;
    pub const ACK_V1: u8 = 5;
    pub const DATA_V1: u8 = 6;
    pub const CONTROL_HARD_RESET_CLIENT_V2: u8 = 7;
    pub const CONTROL_HARD_RESET_SERVER_V2: u8 = 8;
    pub const DATA_V2: u8 = 9;
    pub const CONTROL_HARD_RESET_CLIENT_V3: u8 = 10;
    pub const CONTROL_WKC_V1: u8 = 11;
}

/// Whether a v1/v2 client reset of `len` bytes at `w[O..]` has one of the layouts OpenVPN
/// sends. The replay packet id of wrapped resets is small (1, and one more per
/// retransmission): its middle bytes are zero.
#[inline(always)]
pub(super) fn client_reset_v2_layout<const O: usize>(w: &[u8; WINDOW], len: usize) -> bool {
    match len {
        // Plain: no acks, message packet id 0.
        14 => w[O + 9] | w[O + 10] | w[O + 11] | w[O + 12] | w[O + 13] == 0,
        // tls-auth with an HMAC of H bytes at [9..9 + H] (MD5 16, SHA1 20, SHA224 28, SHA256
        // 32), then the replay packet id and time, no acks and message packet id 0: the last
        // five bytes are zero.
        38 => {
            w[O + 26] | w[O + 27] | w[O + 33] | w[O + 34] | w[O + 35] | w[O + 36] | w[O + 37] == 0
        }
        42 => {
            w[O + 30] | w[O + 31] | w[O + 37] | w[O + 38] | w[O + 39] | w[O + 40] | w[O + 41] == 0
        }
        50 => {
            w[O + 38] | w[O + 39] | w[O + 45] | w[O + 46] | w[O + 47] | w[O + 48] | w[O + 49] == 0
        }
        // tls-auth with SHA256, or tls-crypt (replay packet id in clear at [9..13]).
        54 => {
            w[O + 42] | w[O + 43] | w[O + 49] | w[O + 50] | w[O + 51] | w[O + 52] | w[O + 53] == 0
                || w[O + 10] | w[O + 11] == 0
        }
        // tls-auth with SHA384 and SHA512.
        70 => {
            w[O + 58] | w[O + 59] | w[O + 65] | w[O + 66] | w[O + 67] | w[O + 68] | w[O + 69] == 0
        }
        86 => {
            w[O + 74] | w[O + 75] | w[O + 81] | w[O + 82] | w[O + 83] | w[O + 84] | w[O + 85] == 0
        }
        _ => false,
    }
}

/// The client session id a server reset of `len` bytes at `w[O..]` echoes; `[0; 8]` when the
/// layout hides it; `None` when no server reset has this layout. The server's reset
/// acknowledges the client's packet 0 (ack count 1, packet id 0) and echoes the client's session
/// id: in clear at [14..22] without tls-auth/tls-crypt, after the HMAC and the replay packet
/// id and time with tls-auth (nDPI checks the same echo), encrypted with tls-crypt, where only
/// the replay packet id (small) is visible.
#[inline(always)]
pub(super) fn server_reset_echo<const O: usize>(w: &[u8; WINDOW], len: usize) -> Option<[u8; 8]> {
    macro_rules! echo {
        ($ack:expr, $at:expr) => {
            if w[O + $ack] == 1
                && w[O + $ack + 1] | w[O + $ack + 2] | w[O + $ack + 3] | w[O + $ack + 4] == 0
            {
                Some([
                    w[O + $at],
                    w[O + $at + 1],
                    w[O + $at + 2],
                    w[O + $at + 3],
                    w[O + $at + 4],
                    w[O + $at + 5],
                    w[O + $at + 6],
                    w[O + $at + 7],
                ])
            } else {
                None
            }
        };
    }
    match len {
        26 => echo!(9, 14),
        // tls-auth, HMAC of H bytes: ack count at 17 + H, echo at 22 + H.
        50 => echo!(33, 38),
        54 => echo!(37, 42),
        62 => echo!(45, 50),
        // tls-crypt (replay packet id in clear at [9..13]), or tls-auth with SHA256.
        66 if small_replay_id::<O>(w) => Some([0; 8]),
        66 => echo!(49, 54),
        // tls-crypt-v2: tls-crypt plus an early-negotiation TLV.
        72 if small_replay_id::<O>(w) => Some([0; 8]),
        // tls-auth with SHA384 and SHA512.
        82 => echo!(65, 70),
        98 => echo!(81, 86),
        _ => None,
    }
}

/// The replay packet id in clear at `w[O + 9..O + 13]` of a tls-crypt packet is a small
/// counter (1 for a first reset, one more per retransmission), with OpenVPN 2.6's
/// early-negotiation marker 0x0f in its top byte or none.
#[inline(always)]
pub(super) fn small_replay_id<const O: usize>(w: &[u8; WINDOW]) -> bool {
    (w[O + 9] == 0 || w[O + 9] == 0x0f)
        && w[O + 10] | w[O + 11] == 0
        && w[O + 12] != 0
        && w[O + 12] <= OVPN_V3_MAX_REPLAY_ID
}

/// OpenVPN packet at `w[O..]` (O = 0 on UDP, 2 on TCP after the length prefix); `len` is the
/// OpenVPN packet length. Indexes the window directly (a copy would cost BPF stack).
#[inline(always)]
pub(super) fn openvpn<const O: usize>(w: &[u8; WINDOW], len: usize) -> Option<Detection> {
    const { assert!(O + 94 <= WINDOW) };
    let opcode = w[O] >> 3;
    let key_id = w[O] & 0x07;
    if key_id != 0 || !(14..OVPN_MAX_RESET).contains(&len) {
        return None;
    }
    // STUN/QUIC collisions: STUN's magic cookie at [4..8].
    if w[O + 4] == STUN_MAGIC[0]
        && w[O + 5] == STUN_MAGIC[1]
        && w[O + 6] == STUN_MAGIC[2]
        && w[O + 7] == STUN_MAGIC[3]
    {
        return None;
    }
    let session = [
        w[O + 1],
        w[O + 2],
        w[O + 3],
        w[O + 4],
        w[O + 5],
        w[O + 6],
        w[O + 7],
        w[O + 8],
    ];
    // The session id is 8 random bytes: four or more zero bytes there are the header of
    // something else (a DNS header's counts put 4-6 zeros there).
    let zeros = (session[0] == 0) as u8
        + (session[1] == 0) as u8
        + (session[2] == 0) as u8
        + (session[3] == 0) as u8
        + (session[4] == 0) as u8
        + (session[5] == 0) as u8
        + (session[6] == 0) as u8
        + (session[7] == 0) as u8;
    if zeros >= 4 {
        return None;
    }
    match opcode {
        ovpn::CONTROL_HARD_RESET_CLIENT_V1 | ovpn::CONTROL_HARD_RESET_CLIENT_V2
            if !client_reset_v2_layout::<O>(w, len) =>
        {
            None
        }
        // tls-crypt-v2 (v3): the 54-byte tls-crypt reset plus the wrapped client key (WKc:
        // 32-byte tag, the 256-byte client key and metadata, 2-byte length), and the replay
        // packet id in clear at [9..13] (0x0f000001 from OpenVPN 2.6: the early-negotiation
        // marker in its top byte).
        ovpn::CONTROL_HARD_RESET_CLIENT_V3
            if len < OVPN_MIN_RESET_V3 || !small_replay_id::<O>(w) =>
        {
            None
        }
        // The packet-id time of a tls-crypt-v2 reset is repeated in clear by every control
        // packet of the session: the continuation must carry it (a QUIC short-header packet
        // can look like a v3 reset and its successor like a WKc control packet, but its
        // bytes [13..17] are packet number and ciphertext, different in every packet).
        ovpn::CONTROL_HARD_RESET_CLIENT_V3 => Some(
            Detection::new(Protocol::OpenVpn, Message::OvpnClientReset, Strength::Weak)
                .with_tokens(session, [0; 8])
                .with_aux([w[O + 13], w[O + 14], w[O + 15], w[O + 16]]),
        ),
        ovpn::CONTROL_HARD_RESET_CLIENT_V1 | ovpn::CONTROL_HARD_RESET_CLIENT_V2 => Some(
            Detection::new(Protocol::OpenVpn, Message::OvpnClientReset, Strength::Weak)
                .with_tokens(session, [0; 8]),
        ),
        ovpn::CONTROL_HARD_RESET_SERVER_V1 | ovpn::CONTROL_HARD_RESET_SERVER_V2 => {
            let peer = server_reset_echo::<O>(w, len)?;
            Some(
                Detection::new(
                    Protocol::OpenVpn,
                    Message::OvpnServerReset,
                    Strength::FollowUp,
                )
                .with_tokens(session, peer),
            )
        }
        ovpn::CONTROL_V1 | ovpn::ACK_V1 | ovpn::CONTROL_WKC_V1 => Some(
            Detection::new(Protocol::OpenVpn, Message::OvpnControl, Strength::FollowUp)
                .with_tokens(session, [0; 8])
                .with_aux([w[O + 13], w[O + 14], w[O + 15], w[O + 16]]),
        ),
        _ => None,
    }
}
