//! VPN classification over the first [`WINDOW`] bytes of a UDP/TCP payload.
//!
//! Two steps, so ordinary traffic pays as little as possible:
//! 1. a prefilter on the first four payload bytes, the length and the ports
//!    ([`udp_prefilter`], [`tcp_prefilter`]) that the kernel reads straight from the packet;
//! 2. only for candidates, the kernel copies up to [`WINDOW`] bytes of payload and
//!    [`classify_udp`]/[`classify_tcp`] check the protocol's structure.
//!
//! A [`Detection`] is [`Strength::Strong`] when the packet alone is conclusive (exact sizes,
//! length fields that must equal the payload length, magic numbers), [`Strength::Weak`] when
//! it needs the flow's other packets or the peer's reply to confirm (see [`confirms`]), and
//! [`Strength::FollowUp`] when it only matters if its flow is already known.
//! Wire facts and their sources: README, "What is detected".

use vpn_filter_common::{flow_flags, FlowState, FlowStatus, Message, Protocol};

/// Bytes of payload the classifier sees. Every check below indexes into this window with
/// constant indices, so the BPF verifier sees no variable offsets and no panics exist.
/// 96 covers the longest fixed layout checked: OpenVPN's tls-auth resets with HMAC-SHA512
/// (86 bytes from the client, 98 from the server), whose packet id, acks and echoed session id
/// come after the 64-byte HMAC.
pub const WINDOW: usize = 96;

/// Largest padded WireGuard handshake recognised (some commercial VPNs pad the 148/92-byte
/// messages; TunnelBear uses 204/100). Anything longer is not treated as WireGuard.
pub const WG_MAX_PADDED: usize = 148 + 256;
/// nDPI's bound for OpenVPN resets: larger packets are something else.
pub const OVPN_MAX_RESET: usize = 1200;
/// Smallest tls-crypt-v2 client reset (v3): the 54-byte tls-crypt reset and a WKc of at least
/// a 32-byte tag, the 256-byte client key and its 2-byte length (the fixture's is 353).
pub const OVPN_MIN_RESET_V3: usize = 54 + 32 + 256 + 2;
/// Packets of a pending WireGuard-data flow before it counts as confirmed.
pub const WG_DATA_CONFIRM_PACKETS: u32 = 4;
/// ESP-in-UDP: how far the creating direction's sequence number may advance between two of
/// its packets and still count as the same SA making progress (RFC 4303 sequence numbers
/// rise by one per packet; a gap this size is lost packets, not a coincidence).
pub const ESP_SEQ_WINDOW: u32 = 4096;
/// Highest replay packet id (low byte) a tls-crypt-v2 client reset carries: 1, plus one per
/// retransmission within the handshake window.
pub const OVPN_V3_MAX_REPLAY_ID: u8 = 64;

pub const IKE_PORT: u16 = 500;
pub const NAT_T_PORT: u16 = 4500;
pub const DTLS_VPN_PORT: u16 = 443;

const STUN_MAGIC: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
const DISCO_MAGIC: [u8; 6] = [0x54, 0x53, 0xf0, 0x9f, 0x92, 0xac];
const PPTP_MAGIC: [u8; 4] = [0x1a, 0x2b, 0x3c, 0x4d];

/// How conclusive a single packet is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strength {
    /// Conclusive alone: the allowlist decides at once.
    Strong,
    /// Suggestive: remembered as a pending flow until confirmed.
    Weak,
    /// Only meaningful on a flow that is already known (pending, blocked or allowed).
    FollowUp,
}

/// What the classifier found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Detection {
    pub protocol: Protocol,
    pub message: Message,
    pub strength: Strength,
    /// Identifier this packet's sender uses (OpenVPN session id, WireGuard sender or receiver
    /// index); zero when none is visible.
    pub token: [u8; 8],
    /// Identifier of the peer echoed by this packet (WireGuard response's receiver index,
    /// OpenVPN server reset's remote session id when visible); zero when none.
    pub peer_token: [u8; 8],
    /// OpenVPN: the packet-id time of tls-crypt-v2 resets and of control packets (in clear
    /// at [13..17]), or the first four bytes of a data packet; zero otherwise.
    pub aux: [u8; 4],
}

impl Detection {
    #[inline(always)]
    const fn new(protocol: Protocol, message: Message, strength: Strength) -> Self {
        Self {
            protocol,
            message,
            strength,
            token: [0; 8],
            peer_token: [0; 8],
            aux: [0; 4],
        }
    }

    #[inline(always)]
    const fn with_tokens(mut self, token: [u8; 8], peer_token: [u8; 8]) -> Self {
        self.token = token;
        self.peer_token = peer_token;
        self
    }

    #[inline(always)]
    const fn with_aux(mut self, aux: [u8; 4]) -> Self {
        self.aux = aux;
        self
    }
}

/// What the prefilter decided from the first four bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefilter {
    /// Ordinary traffic: pass without further work.
    No,
    /// Copy the payload window and classify it.
    Inspect,
    /// Cannot start a flow, but continues one: look up the flow only if this protocol has
    /// live flows.
    FollowUp(Protocol, Message),
}

#[inline(always)]
fn be16(a: u8, b: u8) -> u16 {
    u16::from_be_bytes([a, b])
}

#[inline(always)]
fn port_is(sport: u16, dport: u16, port: u16) -> bool {
    sport == port || dport == port
}

/// OpenVPN opcodes (`[0] >> 3`).
mod ovpn {
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

/// Stage 1 for UDP: `head` is the first four payload bytes (zero-padded), `len` the UDP
/// payload length from the UDP header.
#[inline(always)]
pub fn udp_prefilter(sport: u16, dport: u16, len: usize, head: [u8; 4]) -> Prefilter {
    if len == 0 {
        return Prefilter::No;
    }
    if port_is(sport, dport, IKE_PORT) || port_is(sport, dport, NAT_T_PORT) {
        return Prefilter::Inspect;
    }
    // WireGuard: message type 1..=4, three reserved zero bytes.
    if head[1] == 0 && head[2] == 0 && head[3] == 0 && head[0] >= 1 && head[0] <= 4 {
        return Prefilter::Inspect;
    }
    // Tailscale disco, L2TP control, DTLS handshake records, SoftEther "IP=".
    if (head[0] == DISCO_MAGIC[0] && head[1] == DISCO_MAGIC[1])
        || (head[0] == 0xc8 && (head[1] == 0x02 || head[1] == 0x03))
        || (head[0] == 0x16 && is_dtls_version(head[1], head[2]))
        || (head[0] == b'I' && head[1] == b'P' && head[2] == b'=')
    {
        return Prefilter::Inspect;
    }
    let key_id = head[0] & 0x07;
    match head[0] >> 3 {
        ovpn::CONTROL_HARD_RESET_CLIENT_V1
        | ovpn::CONTROL_HARD_RESET_CLIENT_V2
        | ovpn::CONTROL_HARD_RESET_CLIENT_V3
        | ovpn::CONTROL_HARD_RESET_SERVER_V1
        | ovpn::CONTROL_HARD_RESET_SERVER_V2
            if key_id == 0 && (14..OVPN_MAX_RESET).contains(&len) =>
        {
            Prefilter::Inspect
        }
        ovpn::CONTROL_V1 | ovpn::ACK_V1 | ovpn::CONTROL_WKC_V1 if len >= 9 => {
            Prefilter::FollowUp(Protocol::OpenVpn, Message::OvpnControl)
        }
        ovpn::DATA_V1 | ovpn::DATA_V2 if len >= 5 => {
            Prefilter::FollowUp(Protocol::OpenVpn, Message::OvpnData)
        }
        _ => Prefilter::No,
    }
}

#[inline(always)]
fn is_dtls_version(a: u8, b: u8) -> bool {
    // DTLS 1.0 (FE FF), DTLS 1.2 (FE FD), Cisco's pre-standard DTLS (01 00).
    (a == 0xfe && (b == 0xff || b == 0xfd)) || (a == 0x01 && b == 0x00)
}

/// Stage 2 for UDP. `w` holds the first `min(len, WINDOW)` payload bytes, zero beyond.
#[inline(always)]
pub fn classify_udp(sport: u16, dport: u16, len: usize, w: &[u8; WINDOW]) -> Option<Detection> {
    if port_is(sport, dport, IKE_PORT) {
        if let Some(d) = ike(w, 0, len) {
            return Some(d);
        }
    }
    if port_is(sport, dport, NAT_T_PORT) {
        // RFC 3948: four zero bytes (non-ESP marker) then IKE; 0xFF alone is a NAT
        // keepalive; anything else with a non-zero SPI is ESP.
        if w[0] == 0 && w[1] == 0 && w[2] == 0 && w[3] == 0 {
            return if len >= 4 { ike(w, 4, len - 4) } else { None };
        }
        // ESP: SPI values 1..=255 are reserved (RFC 4303), and the sequence number starts
        // at 1, so neither is zero in real ESP. That shape alone is weak: any UDP payload on
        // a 4500 source port (DNS, NTP, QUIC from a port-randomising stack or CGNAT) has it.
        // The flow is confirmed only by what ESP does and they do not: the same SPI with a
        // rising sequence number from one side, and an ESP packet with its own SPI from the
        // other (see `advance`).
        let spi_valid = w[0] | w[1] | w[2] != 0;
        let seq_nonzero = w[4] | w[5] | w[6] | w[7] != 0;
        if len >= 16 && spi_valid && seq_nonzero {
            return Some(
                Detection::new(Protocol::Esp, Message::EspUdp, Strength::Weak)
                    .with_tokens([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]], [0; 8]),
            );
        }
        return None;
    }
    if let Some(d) = wireguard(sport, dport, w, len) {
        return Some(d);
    }
    if len >= 62
        && w[0] == DISCO_MAGIC[0]
        && w[1] == DISCO_MAGIC[1]
        && w[2] == DISCO_MAGIC[2]
        && w[3] == DISCO_MAGIC[3]
        && w[4] == DISCO_MAGIC[4]
        && w[5] == DISCO_MAGIC[5]
    {
        return Some(Detection::new(
            Protocol::TailscaleDisco,
            Message::DiscoPacket,
            Strength::Strong,
        ));
    }
    if w[0] == 0xc8 && (w[1] == 0x02 || w[1] == 0x03) {
        return l2tp(w, len);
    }
    if w[0] == 0x16 && is_dtls_version(w[1], w[2]) {
        return dtls(dport, w, len);
    }
    if w[0] == b'I' && w[1] == b'P' && w[2] == b'=' {
        return softether(w, len);
    }
    // IKE away from 500/4500 (strongSwan's `port`/`port_nat_t`, one line of configuration):
    // by its header alone, with or without the non-ESP marker.
    if let Some(d) = ike(w, 0, len) {
        return Some(d);
    }
    if w[0] | w[1] | w[2] | w[3] == 0 && len >= 4 {
        if let Some(d) = ike(w, 4, len - 4) {
            return Some(d);
        }
    }
    openvpn::<0>(w, len)
}

/// Prefilter for IKE on any UDP port: `h` holds payload bytes 16..32, where the IKE header
/// has its version, exchange type and length (4 bytes later behind a non-ESP marker). The
/// length must equal the datagram's, so ordinary payloads practically never pass.
#[inline(always)]
pub fn ike_any_port_prefilter(len: usize, h: [u8; 16]) -> bool {
    let version_ok = |v: u8| v == 0x20 || v == 0x10;
    let plain = version_ok(h[1]) && u32::from_be_bytes([h[8], h[9], h[10], h[11]]) as usize == len;
    let marked = version_ok(h[5])
        && len >= 4
        && u32::from_be_bytes([h[12], h[13], h[14], h[15]]) as usize == len - 4;
    plain || marked
}

/// IKE header at `w[o..o + 28]`; `len` is the IKE message length available.
#[inline(always)]
fn ike(w: &[u8; WINDOW], o: usize, len: usize) -> Option<Detection> {
    if len < 28 {
        return None;
    }
    // `o` is 0 or 4; spell both out so every index stays a constant.
    let h: [u8; 28] = if o == 0 {
        window_at::<0, 28>(w)
    } else {
        window_at::<4, 28>(w)
    };
    let spi_i_nonzero = h[0] | h[1] | h[2] | h[3] | h[4] | h[5] | h[6] | h[7] != 0;
    let next_payload = h[16];
    let version = h[17];
    let exchange = h[18];
    let flags = h[19];
    let length = u32::from_be_bytes([h[24], h[25], h[26], h[27]]) as usize;
    if !spi_i_nonzero || length != len {
        return None;
    }
    let spi_r_zero = h[8] | h[9] | h[10] | h[11] | h[12] | h[13] | h[14] | h[15] == 0;
    let msg_id_zero = h[20] | h[21] | h[22] | h[23] == 0;
    let message = match version {
        0x20 => {
            // IKEv2: exchange types 34..=37 (SA_INIT, AUTH, CREATE_CHILD_SA, INFORMATIONAL),
            // 43 (IKE_SESSION_RESUME); only the I, V and R flags may be set.
            if !((34..=37).contains(&exchange) || exchange == 43) || flags & !0x38 != 0 {
                return None;
            }
            if exchange == 34 && msg_id_zero && next_payload == 33 {
                Message::IkeSaInit
            } else {
                Message::IkeOther
            }
        }
        0x10 => {
            // IKEv1: main (2), aggressive (4), informational (5), quick (32).
            if !(exchange == 2 || exchange == 4 || exchange == 5 || exchange == 32) {
                return None;
            }
            if spi_r_zero && next_payload == 1 && (exchange == 2 || exchange == 4) {
                Message::IkeSaInit
            } else {
                Message::IkeOther
            }
        }
        _ => return None,
    };
    Some(
        Detection::new(Protocol::Ike, message, Strength::Strong)
            .with_tokens([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]], [0; 8]),
    )
}

/// Copies `N` bytes starting at the constant offset `O`.
#[inline(always)]
fn window_at<const O: usize, const N: usize>(w: &[u8; WINDOW]) -> [u8; N] {
    const { assert!(O + N <= WINDOW) };
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        // SAFETY: i < N and O + N <= WINDOW (asserted at compile time above).
        out[i] = unsafe { *w.get_unchecked(O + i) };
        i += 1;
    }
    out
}

#[inline(always)]
fn wireguard(sport: u16, dport: u16, w: &[u8; WINDOW], len: usize) -> Option<Detection> {
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

#[inline(always)]
fn l2tp(w: &[u8; WINDOW], len: usize) -> Option<Detection> {
    // Control messages have T, L and S bits set (0xC8) and a length field equal to the payload.
    if len < 12 || be16(w[2], w[3]) as usize != len {
        return None;
    }
    if w[1] == 0x03 {
        // L2TPv3 over UDP: control header carries a 32-bit connection id.
        return Some(Detection::new(
            Protocol::L2tp,
            Message::L2tpControl,
            Strength::Strong,
        ));
    }
    if len == 12 {
        // Zero-length body (ZLB) acknowledgement: only meaningful on a known flow.
        return Some(Detection::new(
            Protocol::L2tp,
            Message::L2tpControl,
            Strength::FollowUp,
        ));
    }
    // First AVP must be Message Type: M bit, length 8, vendor 0, attribute 0.
    if len >= 20
        && w[12] & 0x80 != 0
        && w[12] & 0x03 == 0
        && w[13] == 8
        && w[14] == 0
        && w[15] == 0
        && w[16] == 0
        && w[17] == 0
        && w[18] == 0
        && w[19] >= 1
        && w[19] <= 16
    {
        return Some(Detection::new(
            Protocol::L2tp,
            Message::L2tpControl,
            Strength::Strong,
        ));
    }
    None
}

#[inline(always)]
fn dtls(dport: u16, w: &[u8; WINDOW], len: usize) -> Option<Detection> {
    // Record header: type, version (2), epoch (2), sequence (6), length (2).
    if len < 25 || be16(w[11], w[12]) as usize + 13 > len {
        return None;
    }
    if w[1] == 0x01 && w[2] == 0x00 {
        // Cisco's pre-standard DTLS 1.0 (version 0x0100) is used by AnyConnect/OpenConnect only.
        return Some(Detection::new(
            Protocol::OpenConnectDtls,
            Message::DtlsRecord,
            Strength::Strong,
        ));
    }
    // Standard DTLS is also WebRTC's: only a ClientHello towards the VPN port with a 32-byte
    // session id (the session OpenConnect resumes from the CSTP channel) counts.
    if dport == DTLS_VPN_PORT && w[13] == 1 && w[59] == 32 {
        return Some(Detection::new(
            Protocol::OpenConnectDtls,
            Message::DtlsClientHello,
            Strength::Strong,
        ));
    }
    None
}

#[inline(always)]
fn softether(w: &[u8; WINDOW], len: usize) -> Option<Detection> {
    // SoftEther's UDP acceleration announces itself as "IP=<addr>,PORT=<port>".
    if len < 16 {
        return None;
    }
    const NEEDLE: &[u8; 6] = b",PORT=";
    let mut i = 3;
    while i + NEEDLE.len() <= WINDOW && i + NEEDLE.len() <= len {
        let mut k = 0;
        while k < NEEDLE.len() {
            // SAFETY: i + k < i + NEEDLE.len() <= WINDOW (loop conditions). Written with
            // get_unchecked because LLVM keeps a bounds check here that the verifier rejects.
            if unsafe { *w.get_unchecked(i + k) } != NEEDLE[k] {
                break;
            }
            k += 1;
        }
        if k == NEEDLE.len() {
            return Some(Detection::new(
                Protocol::SoftEther,
                Message::SoftEtherUdp,
                Strength::Strong,
            ));
        }
        i += 1;
    }
    None
}

/// Whether a v1/v2 client reset of `len` bytes at `w[O..]` has one of the layouts OpenVPN
/// sends. The replay packet id of wrapped resets is small (1, and one more per
/// retransmission): its middle bytes are zero.
#[inline(always)]
fn client_reset_v2_layout<const O: usize>(w: &[u8; WINDOW], len: usize) -> bool {
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
fn server_reset_echo<const O: usize>(w: &[u8; WINDOW], len: usize) -> Option<[u8; 8]> {
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
fn small_replay_id<const O: usize>(w: &[u8; WINDOW]) -> bool {
    (w[O + 9] == 0 || w[O + 9] == 0x0f)
        && w[O + 10] | w[O + 11] == 0
        && w[O + 12] != 0
        && w[O + 12] <= OVPN_V3_MAX_REPLAY_ID
}

/// OpenVPN packet at `w[O..]` (O = 0 on UDP, 2 on TCP after the length prefix); `len` is the
/// OpenVPN packet length. Indexes the window directly (a copy would cost BPF stack).
#[inline(always)]
fn openvpn<const O: usize>(w: &[u8; WINDOW], len: usize) -> Option<Detection> {
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

/// Stage 1 for TCP: `head` is the first four bytes of the segment's payload, `len` the
/// payload length.
#[inline(always)]
pub fn tcp_prefilter(len: usize, head: [u8; 4]) -> Prefilter {
    if len < 6 {
        return Prefilter::No;
    }
    let prefix = be16(head[0], head[1]) as usize;
    if head[0] == b'I' && head[1] == b'K' && head[2] == b'E' && head[3] == b'T' {
        return Prefilter::Inspect;
    }
    // PPTP control: length, then message type 1 (control).
    if head[2] == 0 && head[3] == 1 && prefix >= 16 && prefix <= len {
        return Prefilter::Inspect;
    }
    // OpenVPN over TCP: a 2-byte length prefix, then an OpenVPN reset.
    let opcode = head[2] >> 3;
    if prefix + 2 <= len
        && head[2] & 0x07 == 0
        && matches!(
            opcode,
            ovpn::CONTROL_HARD_RESET_CLIENT_V1
                | ovpn::CONTROL_HARD_RESET_CLIENT_V2
                | ovpn::CONTROL_HARD_RESET_CLIENT_V3
                | ovpn::CONTROL_HARD_RESET_SERVER_V1
                | ovpn::CONTROL_HARD_RESET_SERVER_V2
                | ovpn::CONTROL_V1
                | ovpn::ACK_V1
        )
    {
        return Prefilter::Inspect;
    }
    Prefilter::No
}

/// Stage 2 for TCP (payload of one segment).
#[inline(always)]
pub fn classify_tcp(len: usize, w: &[u8; WINDOW]) -> Option<Detection> {
    if len >= 6
        && w[0] == b'I'
        && w[1] == b'K'
        && w[2] == b'E'
        && w[3] == b'T'
        && w[4] == b'C'
        && w[5] == b'P'
    {
        return Some(Detection::new(
            Protocol::Ike,
            Message::IkeTcp,
            Strength::Strong,
        ));
    }
    let prefix = be16(w[0], w[1]) as usize;
    if len >= 16
        && w[2] == 0
        && w[3] == 1
        && w[4] == PPTP_MAGIC[0]
        && w[5] == PPTP_MAGIC[1]
        && w[6] == PPTP_MAGIC[2]
        && w[7] == PPTP_MAGIC[3]
        && prefix >= 16
        && prefix <= len
    {
        return Some(Detection::new(
            Protocol::Pptp,
            Message::PptpControl,
            Strength::Strong,
        ));
    }
    if prefix + 2 <= len && prefix >= 14 {
        return openvpn::<2>(w, prefix);
    }
    None
}

/// GRE header (first four bytes after the IP header): only enhanced GRE (version 1) carrying
/// PPP (0x880B) is PPTP. GRE version 0 (enterprise tunnels, ERSPAN) is never touched.
#[inline(always)]
pub fn classify_gre(head: [u8; 4]) -> Option<Detection> {
    let key_present = head[0] & 0x20 != 0;
    let version = head[1] & 0x07;
    if key_present && version == 1 && head[2] == 0x88 && head[3] == 0x0b {
        return Some(Detection::new(
            Protocol::Pptp,
            Message::PptpGre,
            Strength::Strong,
        ));
    }
    None
}

/// Detection for IP protocols that are VPN by number alone (ESP 50, AH 51).
#[inline(always)]
pub fn classify_ip_proto(ip_proto: u8) -> Option<Detection> {
    match ip_proto {
        50 => Some(Detection::new(
            Protocol::Esp,
            Message::EspIp,
            Strength::Strong,
        )),
        51 => Some(Detection::new(
            Protocol::Ah,
            Message::AhIp,
            Strength::Strong,
        )),
        _ => None,
    }
}

/// What a packet does to a pending flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Confirmation {
    /// The flow is now a confirmed VPN flow: apply the allowlist decision.
    Confirmed,
    /// Still pending; count the packet.
    Pending,
}

/// Applies `det`, a packet of the pending flow's protocol, to the pending entry `state` and
/// says whether it confirms the flow. `same_direction` is true when the packet travels in the
/// direction of the packet that created the entry.
///
/// Confirmation needs what the other side or the flow's own progress shows: the peer's reply
/// echoing the creator's token (padded WireGuard, OpenVPN), the client continuing under its
/// session id (and, for tls-crypt-v2, its packet-id time), repeated consistent packets
/// (WireGuard data), or both ESP directions with one SA's sequence number rising. A packet
/// that does not confirm still moves the entry on: the pending timeout follows the flow, the
/// other side's token is learned, and a second token from the creating side (a retry or a
/// decoy) lets the reply confirm without echoing a particular one.
#[inline(always)]
pub fn advance(state: &mut FlowState, det: &Detection, same_direction: bool) -> Confirmation {
    if state.status != FlowStatus::Pending as u8 || state.protocol != det.protocol as u8 {
        return Confirmation::Pending;
    }
    let created_by = Message::from_u8(state.message);
    // Another packet of the kind that created the entry (a client reset, a padded initiation):
    // a retry with a new session id or index, a decoy, or the roles the other way round.
    // Either way the entry no longer knows which one the real handshake is: any reply of the
    // right layout confirms, from either side.
    if det.strength == Strength::Weak
        && det.message as u8 == state.message
        && !matches!(created_by, Some(Message::WgData) | Some(Message::EspUdp))
    {
        if det.token != state.token || det.aux != state.aux {
            state.flags |= flow_flags::ANY_TOKEN;
        }
        if !same_direction {
            state.flags |= flow_flags::ANY_SIDE;
        }
    }
    let any_token = state.flags & flow_flags::ANY_TOKEN != 0;
    let reply = !same_direction || state.flags & flow_flags::ANY_SIDE != 0;
    let continuation = same_direction || state.flags & flow_flags::ANY_SIDE != 0;
    let yes = match (created_by, det.message) {
        // Padded WireGuard: the reply's receiver index must echo the initiator's sender index.
        (Some(Message::WgPaddedInitiation), Message::WgPaddedResponse | Message::WgResponse) => {
            reply && (det.peer_token == state.token || any_token)
        }
        // WireGuard seen only from its data packets: enough consistent packets on the flow.
        (Some(Message::WgData), Message::WgData) => {
            if !same_direction && state.peer_token == [0; 8] {
                state.peer_token = det.token;
            }
            state.packets + 1 >= WG_DATA_CONFIRM_PACKETS
        }
        // OpenVPN: the server answers the client's reset...
        (Some(Message::OvpnClientReset), Message::OvpnServerReset) => {
            reply && (det.peer_token == [0; 8] || det.peer_token == state.token || any_token)
        }
        // ...or the client continues its control channel under the same session id (and,
        // for tls-crypt-v2, the same packet-id time).
        (Some(Message::OvpnClientReset), Message::OvpnControl) => {
            continuation
                && (det.token == state.token || any_token)
                && (state.aux == [0; 4] || det.aux == state.aux || any_token)
        }
        (Some(Message::EspUdp), Message::EspUdp) => {
            esp_progress(state, det, same_direction);
            state.flags & (flow_flags::ESP_REVERSE | flow_flags::ESP_ADVANCED)
                == flow_flags::ESP_REVERSE | flow_flags::ESP_ADVANCED
        }
        _ => false,
    };
    if yes {
        // The confirming reply names the other side's session or index.
        if !same_direction && det.token != [0; 8] && created_by != Some(Message::WgData) {
            state.peer_token = det.token;
        }
        return Confirmation::Confirmed;
    }
    state.packets = state.packets.saturating_add(1);
    Confirmation::Pending
}

/// ESP-in-UDP evidence: the creator's SPI again with a sequence number a little higher, and an
/// ESP packet with another SPI from the other side.
#[inline(always)]
fn esp_progress(state: &mut FlowState, det: &Detection, same_direction: bool) {
    let t = &det.token;
    let same_spi = t[0] == state.token[0]
        && t[1] == state.token[1]
        && t[2] == state.token[2]
        && t[3] == state.token[3];
    if same_direction {
        if !same_spi {
            return;
        }
        let old = u32::from_be_bytes([
            state.token[4],
            state.token[5],
            state.token[6],
            state.token[7],
        ]);
        let new = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
        if new > old && new - old <= ESP_SEQ_WINDOW {
            state.flags |= flow_flags::ESP_ADVANCED;
            state.token[4] = t[4];
            state.token[5] = t[5];
            state.token[6] = t[6];
            state.token[7] = t[7];
        }
    } else if !same_spi {
        state.flags |= flow_flags::ESP_REVERSE;
        if state.peer_token == [0; 8] {
            state.peer_token = *t;
        }
    }
}

/// Whether `det`, a packet of the protocol of a blocked (or monitored) flow, is that flow's own
/// and so dropped (or reported) as a follow-up. Handshake messages with a strict layout are
/// the protocol's whatever their tokens; packets recognised only by a first byte or a loose
/// shape must carry one of the flow's tokens. So a spoofer who makes an ordinary 5-tuple (NTP,
/// DNS, SIP...) a blocked flow cannot get that service's real packets dropped.
#[inline(always)]
pub fn belongs(state: &FlowState, det: &Detection) -> bool {
    match det.message {
        // Receiver index (WireGuard data) or SPI (ESP): one of the two sides' own.
        Message::WgData | Message::EspUdp => {
            token4_is(&det.token, &state.token) || token4_is(&det.token, &state.peer_token)
        }
        Message::OvpnControl => {
            det.token != [0; 8] && (det.token == state.token || det.token == state.peer_token)
        }
        // Data packets carry no session id: the flow must have carried data while allowed
        // (it was revoked since), with the same opcode and, for P_DATA_V2, the same peer id.
        Message::OvpnData => {
            let head = state.data_head;
            head[0] != 0
                && det.aux[0] >> 3 == head[0] >> 3
                && (det.aux[0] >> 3 != ovpn::DATA_V2
                    || (det.aux[1] == head[1] && det.aux[2] == head[2] && det.aux[3] == head[3]))
        }
        _ => true,
    }
}

#[inline(always)]
fn token4_is(a: &[u8; 8], b: &[u8; 8]) -> bool {
    (b[0] | b[1] | b[2] | b[3]) != 0 && a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3]
}

#[cfg(test)]
mod tests;
