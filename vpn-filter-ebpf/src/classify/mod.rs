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

/// STUN's magic cookie (RFC 5389), which no VPN message may carry where STUN has it.
const STUN_MAGIC: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];

mod dtls;
pub mod encrypted;
mod ike_esp;
mod l2tp;
mod lightway;
mod obfuscated;
mod openvpn;
mod pptp;
pub mod sni;
mod softether;
mod tailscale;
mod tinc;
mod wireguard;

use self::{
    dtls::dtls,
    ike_esp::{esp_progress, ike, ike_any_port, nat_t},
    l2tp::l2tp,
    openvpn::{openvpn, ovpn},
    softether::softether,
    wireguard::wireguard,
};
pub use self::{
    dtls::DTLS_VPN_PORT,
    ike_esp::{ike_any_port_prefilter, is_standard_ike_port, ESP_SEQ_WINDOW, IKE_PORT, NAT_T_PORT},
    obfuscated::{
        is_ovpn_client_reset_size, is_ovpn_server_reset_size, ovpn_packet, udp_second_look,
        wg_follow, SecondLook, OVPN_OBFS_JUDGE_PACKETS, OVPN_OBFS_MARK, PORT_MARK_IKE,
        PORT_MARK_OVPN_OBFS, WG_OBFS_CONFIRM_PACKETS,
    },
    openvpn::{OVPN_MAX_RESET, OVPN_MIN_RESET_V3, OVPN_V3_MAX_REPLAY_ID},
    pptp::classify_gre,
    wireguard::{WG_DATA_CONFIRM_PACKETS, WG_MAX_PADDED},
};

/// Bytes of payload the classifier sees. Every check below indexes into this window with
/// constant indices, so the BPF verifier sees no variable offsets and no panics exist.
/// 96 covers the longest fixed layout checked: OpenVPN's tls-auth resets with HMAC-SHA512
/// (86 bytes from the client, 98 from the server), whose packet id, acks and echoed session id
/// come after the 64-byte HMAC.
pub const WINDOW: usize = 96;

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
    // WireGuard: message type 1..=4, three reserved zero bytes; or a handshake of the exact
    // size with a client id in the reserved bytes (WARP).
    if head[1] == 0 && head[2] == 0 && head[3] == 0 && head[0] >= 1 && head[0] <= 4 {
        return Prefilter::Inspect;
    }
    if wireguard::is_id_handshake_head(head, len) {
        return Prefilter::Inspect;
    }
    // Tailscale disco, L2TP control, DTLS handshake records, SoftEther "IP=": the same
    // head checks the classifier dispatches on.
    if tailscale::is_head(head)
        || l2tp::is_head(head)
        || dtls::is_head(head)
        || softether::is_head(head)
        || lightway::is_head(head)
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

/// Stage 2 for UDP. `w` holds the first `min(len, WINDOW)` payload bytes, zero beyond.
#[inline(always)]
pub fn classify_udp(sport: u16, dport: u16, len: usize, w: &[u8; WINDOW]) -> Option<Detection> {
    classify_udp_on(sport, dport, len, w, false)
}

/// [`classify_udp`], with `ike_port`: one of the ports carried an IKE exchange recently, so
/// the datagram is read as on 4500 (marker then IKE, or ESP-in-UDP: weak, confirmed only by
/// ESP's own behaviour in both directions).
#[inline(always)]
pub fn classify_udp_on(
    sport: u16,
    dport: u16,
    len: usize,
    w: &[u8; WINDOW],
    ike_port: bool,
) -> Option<Detection> {
    if port_is(sport, dport, IKE_PORT) {
        if let Some(d) = ike(w, 0, len) {
            return Some(d);
        }
    }
    if ike_port || port_is(sport, dport, NAT_T_PORT) {
        // A port that carried IKE without the marker carries it so again.
        if ike_port {
            if let Some(d) = ike(w, 0, len) {
                return Some(d);
            }
        }
        // WireGuard handshakes on 4500 (WARP uses 500, 1701 and 4500 besides 2408): before
        // ESP-in-UDP, whose SPI would take their first four bytes.
        if len == 148 || len == 92 {
            if let Some(d) = wireguard(sport, dport, w, len) {
                return Some(d);
            }
        }
        return nat_t(w, len);
    }
    if let Some(d) = wireguard(sport, dport, w, len) {
        return Some(d);
    }
    let head = [w[0], w[1], w[2], w[3]];
    if tailscale::is_head(head) {
        if let Some(d) = tailscale::disco(w, len) {
            return Some(d);
        }
    }
    if l2tp::is_head(head) {
        return l2tp(w, len);
    }
    if dtls::is_head(head) {
        return dtls(sport, dport, w, len);
    }
    if softether::is_head(head) {
        return softether(w, len);
    }
    if lightway::is_head(head) {
        return lightway::lightway(w, len);
    }
    // IKE away from 500/4500 (strongSwan's `port`/`port_nat_t`, one line of configuration):
    // by its header alone, with or without the non-ESP marker.
    if let Some(d) = ike_any_port(w, len) {
        return Some(d);
    }
    if let Some(d) = openvpn::<0>(w, len) {
        return Some(d);
    }
    // Heuristics over a flow, for what no signature took (see obfuscated.rs).
    if let Some(d) = obfuscated::wg_data(sport, dport, w, len) {
        return Some(d);
    }
    obfuscated::ovpn_reset(sport, dport, w, len)
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
    if wireguard::is_tcp_head(head) || tinc::is_head(head) || softether::is_http_head(head) {
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
    if let Some(d) = ike_esp::ike_tcp(w, len) {
        return Some(d);
    }
    if let Some(d) = pptp::control(w, len) {
        return Some(d);
    }
    if let Some(d) = wireguard::over_tcp(w, len) {
        return Some(d);
    }
    if let Some(d) = tinc::id_line(w, len) {
        return Some(d);
    }
    if let Some(d) = softether::http_connect(w, len) {
        return Some(d);
    }
    // OpenVPN over TCP: after the 2-byte length prefix.
    let prefix = be16(w[0], w[1]) as usize;
    if prefix + 2 <= len && prefix >= 14 {
        return openvpn::<2>(w, prefix);
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
    match created_by {
        Some(Message::WgObfuscatedData) if det.message == Message::WgObfuscatedData => {
            return obfuscated::wg_advance(state, det, same_direction);
        }
        Some(Message::OvpnObfuscated) if det.message == Message::OvpnObfuscated => {
            return obfuscated::ovpn_advance(state, det, same_direction);
        }
        _ => {}
    }
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
        // The same for an initiation carrying a client id (WARP).
        (
            Some(Message::WgPaddedInitiation | Message::WgIdInitiation),
            Message::WgPaddedResponse | Message::WgResponse | Message::WgIdResponse,
        ) => reply && (det.peer_token == state.token || any_token),
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
        // OpenConnect: the server answers the ClientHello with a DTLS handshake record.
        (Some(Message::DtlsClientHello), Message::DtlsServerHello) => reply,
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
        Message::WgObfuscatedData => obfuscated::wg_belongs(state, det),
        // A response recognised by its size and type alone must name one of the flow's
        // indices. (Initiations belong whatever their index: a retry takes a new one.)
        Message::WgIdResponse => {
            token4_is(&det.token, &state.token)
                || token4_is(&det.token, &state.peer_token)
                || token4_is(&det.peer_token, &state.token)
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
