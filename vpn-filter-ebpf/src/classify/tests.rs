//! Host unit tests of the classifier: one behaviour per test. Payloads are built here (this
//! crate cannot use the integration harness); where a real client's bytes matter, the first
//! bytes of a packet from `tests/fixtures` are quoted as hex with the pcap and frame number.

use vpn_filter_common::{FlowState, FlowStatus, Message, Protocol};

use super::*;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// The classifier's view of a payload: the first `min(len, WINDOW)` bytes, zero beyond.
fn win(p: &[u8]) -> [u8; WINDOW] {
    let mut w = [0u8; WINDOW];
    let n = p.len().min(WINDOW);
    w[..n].copy_from_slice(&p[..n]);
    w
}

/// The first four payload bytes, zero-padded, as the kernel passes them to the prefilters.
fn head(p: &[u8]) -> [u8; 4] {
    let mut h = [0u8; 4];
    let n = p.len().min(4);
    h[..n].copy_from_slice(&p[..n]);
    h
}

fn udp_pre(sport: u16, dport: u16, p: &[u8]) -> Prefilter {
    udp_prefilter(sport, dport, p.len(), head(p))
}

/// The signatures' verdict: the flow heuristics (which also look at datagrams no signature
/// took, see obfuscated.rs) are left out; [`udp_any`] keeps them.
fn udp(sport: u16, dport: u16, p: &[u8]) -> Option<Detection> {
    udp_any(sport, dport, p).filter(|d| !is_heuristic(d.protocol))
}

fn udp_any(sport: u16, dport: u16, p: &[u8]) -> Option<Detection> {
    classify_udp(sport, dport, p.len(), &win(p))
}

fn is_heuristic(protocol: Protocol) -> bool {
    matches!(
        protocol,
        Protocol::WireGuardObfuscated | Protocol::OpenVpnObfuscated | Protocol::Dtls443
    )
}

fn tcp_pre(p: &[u8]) -> Prefilter {
    tcp_prefilter(p.len(), head(p))
}

fn tcp(p: &[u8]) -> Option<Detection> {
    classify_tcp(p.len(), &win(p))
}

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// `prefix` followed by pseudo-random bytes up to `len`.
fn padded(prefix: &[u8], len: usize, seed: u64) -> Vec<u8> {
    let mut p = prefix.to_vec();
    let mut x = seed | 1;
    while p.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p.push(x as u8);
    }
    p.truncate(len);
    p
}

fn token4(v: [u8; 4]) -> [u8; 8] {
    [v[0], v[1], v[2], v[3], 0, 0, 0, 0]
}

fn assert_detects(
    d: Option<Detection>,
    protocol: Protocol,
    message: Message,
    strength: Strength,
) -> Detection {
    let d =
        d.unwrap_or_else(|| panic!("expected {protocol:?}/{message:?}/{strength:?}, got nothing"));
    assert_eq!(
        (d.protocol, d.message, d.strength),
        (protocol, message, strength),
        "{d:?}"
    );
    d
}

const WG_SENDER: [u8; 4] = [0x71, 0xc5, 0xea, 0xb9];
const WG_RECEIVER: [u8; 4] = [0xe6, 0x4f, 0x0a, 0xa1];

fn wg(ty: u8, len: usize, idx_a: [u8; 4], idx_b: [u8; 4]) -> Vec<u8> {
    let mut pre = vec![ty, 0, 0, 0];
    pre.extend_from_slice(&idx_a);
    pre.extend_from_slice(&idx_b);
    padded(&pre, len, len as u64)
}

const SESSION: [u8; 8] = [0x1f, 0x2b, 0x1e, 0x4e, 0xed, 0xf3, 0xdb, 0x60];
const SERVER_SESSION: [u8; 8] = [0xa9, 0x57, 0x88, 0xe6, 0x05, 0x5f, 0xdb, 0x17];

/// Plain OpenVPN client reset v2 (openvpn-udp-plain.pcap #1, 14 bytes).
fn ovpn_plain_client_reset() -> Vec<u8> {
    hex("381f2b1e4eedf3db600000000000")
}

/// Plain OpenVPN server reset v2 (openvpn-udp-plain.pcap #2, 26 bytes): acks the client's
/// packet 0 and echoes its session id at [14..22].
fn ovpn_plain_server_reset() -> Vec<u8> {
    hex("40a95788e6055fdb1701000000001f2b1e4eedf3db6000000000")
}

/// An OpenVPN packet: opcode byte, [`SESSION`], then pseudo-random bytes up to `len`.
fn ovpn(op: u8, len: usize) -> Vec<u8> {
    let mut pre = vec![op];
    pre.extend_from_slice(&SESSION);
    padded(&pre, len, op as u64 * 31 + len as u64)
}

/// A tls-auth client reset v2 with an HMAC of `hmac` bytes: 22 + `hmac` bytes, replay packet
/// id 1 and a time after the HMAC, no acks, message packet id 0.
fn tls_auth_reset(hmac: usize) -> Vec<u8> {
    let mut p = vec![0x38];
    p.extend_from_slice(&SESSION);
    p = padded(&p, 9 + hmac, hmac as u64);
    p.extend_from_slice(&[0, 0, 0, 1, 0x6b, 0x0a, 0xf5, 0x93, 0, 0, 0, 0, 0]);
    p
}

/// A tls-crypt-v2 client reset v3 of `len` bytes with replay packet id `pid`.
fn v3_reset(len: usize, pid: [u8; 4]) -> Vec<u8> {
    let mut p = vec![0x50];
    p.extend_from_slice(&SESSION);
    p.extend_from_slice(&pid);
    padded(&p, len, 0x50)
}

#[expect(
    clippy::too_many_arguments,
    reason = "one argument per IKE header field"
)]
fn ike_header(
    spi_i: u64,
    spi_r: u64,
    next: u8,
    version: u8,
    exchange: u8,
    flags: u8,
    msg_id: u32,
    length: u32,
) -> Vec<u8> {
    let mut p = spi_i.to_be_bytes().to_vec();
    p.extend_from_slice(&spi_r.to_be_bytes());
    p.extend_from_slice(&[next, version, exchange, flags]);
    p.extend_from_slice(&msg_id.to_be_bytes());
    p.extend_from_slice(&length.to_be_bytes());
    p
}

const SPI_I: u64 = 0x7bdb_d193_4390_5c35;

/// IKEv2 IKE_SA_INIT request of `len` bytes, length field consistent.
fn ikev2_sa_init(len: usize) -> Vec<u8> {
    padded(
        &ike_header(SPI_I, 0, 33, 0x20, 34, 0x08, 0, len as u32),
        len,
        500,
    )
}

fn l2tp_sccrq() -> Vec<u8> {
    // l2tp.pcap #1, first 64 of 99 bytes; the rest are the host name, vendor, tunnel id and
    // window AVPs.
    padded(
        &hex(
            "c8020063000000000000000080080000000000018008000000020100800a0000000300000003\
             800a00000004000000000008000000060690800800000007766d",
        ),
        99,
        1701,
    )
}

fn pptp_sccrq() -> Vec<u8> {
    // pptp.pcap #4, first 64 of 156 bytes (host name "local", zero padded).
    let mut p = hex(
        "009c00011a2b3c4d00010000010000000000000300000003ffff00016c6f63616c0000000000000000\
         00000000000000000000000000000000000000",
    );
    p.resize(156, 0);
    p
}

/// The real OpenConnect 9.01 DTLS ClientHello (openconnect.pcap #21, 168 bytes; the
/// classifier sees the first [`WINDOW`]): record FE FF, length 155, ClientHello, client_version
/// FE FD, random, session id length 32 at [59].
fn openconnect_client_hello() -> Vec<u8> {
    padded(
        &hex(
            "16feff0000000000000000009b0100008f000000000000008ffefd2eecc76caa7b667c2f869f5109\
             d665b492ca1e8d18e32dcef2755c8066309d6520f8ffe9b6",
        ),
        168,
        443,
    )
}

/// A WebRTC-style DTLS 1.2 ClientHello: same record framing, empty session id.
fn webrtc_client_hello(len: usize) -> Vec<u8> {
    let body_len = (len - 13) as u16;
    let mut p = vec![0x16, 0xfe, 0xff, 0, 0, 0, 0, 0, 0, 0, 0];
    p.extend_from_slice(&body_len.to_be_bytes());
    p.extend_from_slice(&[
        1,
        0,
        0,
        (body_len - 12) as u8,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        (body_len - 12) as u8,
    ]);
    p.extend_from_slice(&[0xfe, 0xfd]);
    p = padded(&p, 59, 7);
    p.push(0); // session id length
    p.push(0); // cookie length
    padded(&p, len, 8)
}

// ---------------------------------------------------------------------------------------
// The window helper itself
// ---------------------------------------------------------------------------------------

#[test]
fn window_copies_at_most_window_bytes_and_zero_fills_the_rest() {
    let long: Vec<u8> = (0..200u8).collect();
    let w = win(&long);
    assert_eq!(w[WINDOW - 1], (WINDOW - 1) as u8);
    let short = win(&[9, 8, 7]);
    assert_eq!(&short[..4], &[9, 8, 7, 0]);
    assert!(short[3..].iter().all(|b| *b == 0));
}

// ---------------------------------------------------------------------------------------
// udp_prefilter
// ---------------------------------------------------------------------------------------

#[test]
fn udp_prefilter_passes_empty_payloads() {
    assert_eq!(udp_prefilter(40000, 51820, 0, [1, 0, 0, 0]), Prefilter::No);
    assert_eq!(udp_prefilter(500, 500, 0, [0; 4]), Prefilter::No);
}

#[test]
fn udp_prefilter_inspects_everything_on_the_ike_ports_in_either_direction() {
    for (s, d) in [
        (500, 500),
        (40000, 500),
        (500, 40000),
        (4500, 4500),
        (40000, 4500),
        (4500, 1),
    ] {
        assert_eq!(
            udp_pre(s, d, b"anything at all"),
            Prefilter::Inspect,
            "{s}->{d}"
        );
    }
}

#[test]
fn udp_prefilter_inspects_the_four_wireguard_message_types() {
    for ty in 1..=4u8 {
        assert_eq!(
            udp_pre(40000, 51820, &wg(ty, 148, WG_SENDER, WG_RECEIVER)),
            Prefilter::Inspect
        );
    }
}

#[test]
fn udp_prefilter_ignores_wireguard_lookalikes_with_a_bad_type_or_reserved_bytes() {
    assert_eq!(
        udp_pre(40000, 51820, &wg(0, 148, WG_SENDER, WG_RECEIVER)),
        Prefilter::No
    );
    assert_eq!(
        udp_pre(40000, 51820, &wg(5, 148, WG_SENDER, WG_RECEIVER)),
        Prefilter::No
    );
    // A client id in the reserved bytes is inspected only at the handshakes' exact sizes.
    let mut p = wg(1, 149, WG_SENDER, WG_RECEIVER);
    p[2] = 1;
    assert_eq!(udp_pre(40000, 51820, &p), Prefilter::No);
}

#[test]
fn udp_prefilter_inspects_disco_l2tp_dtls_and_softether_heads() {
    for p in [
        padded(&[0x54, 0x53, 0xf0, 0x9f, 0x92, 0xac], 80, 1),
        l2tp_sccrq(),
        padded(&[0xc8, 0x03, 0, 20], 20, 2),
        openconnect_client_hello(),
        padded(&[0x16, 0xfe, 0xfd], 100, 3),
        padded(&[0x16, 0x01, 0x00], 100, 4),
        b"IP=10.0.0.1,PORT=5555".to_vec(),
    ] {
        assert_eq!(
            udp_pre(40000, 1701, &p),
            Prefilter::Inspect,
            "{:02x?}",
            &p[..4]
        );
    }
}

#[test]
fn udp_prefilter_ignores_tls_record_versions_on_udp() {
    assert_eq!(
        udp_pre(40000, 443, &padded(&[0x16, 0x03, 0x01], 100, 5)),
        Prefilter::No
    );
}

#[test]
fn udp_prefilter_inspects_openvpn_resets_with_key_id_zero_and_a_plausible_length() {
    for op in [0x08u8, 0x10, 0x38, 0x40, 0x50] {
        assert_eq!(
            udp_pre(40000, 1194, &ovpn(op, 14)),
            Prefilter::Inspect,
            "{op:#x}"
        );
        assert_eq!(
            udp_pre(40000, 1194, &ovpn(op, 1199)),
            Prefilter::Inspect,
            "{op:#x}"
        );
    }
}

#[test]
fn udp_prefilter_ignores_openvpn_resets_with_a_key_id() {
    assert_eq!(udp_pre(40000, 1194, &ovpn(0x39, 42)), Prefilter::No);
    assert_eq!(udp_pre(40000, 1194, &ovpn(0x41, 54)), Prefilter::No);
}

#[test]
fn udp_prefilter_ignores_openvpn_resets_shorter_than_14_or_from_1200_bytes() {
    assert_eq!(udp_pre(40000, 1194, &ovpn(0x38, 13)), Prefilter::No);
    assert_eq!(
        udp_pre(40000, 1194, &ovpn(0x38, OVPN_MAX_RESET)),
        Prefilter::No
    );
}

#[test]
fn udp_prefilter_marks_openvpn_control_ack_and_wkc_as_follow_up() {
    for op in [0x20u8, 0x21, 0x28, 0x2f, 0x58] {
        assert_eq!(
            udp_pre(40000, 1194, &ovpn(op, 100)),
            Prefilter::FollowUp(Protocol::OpenVpn, Message::OvpnControl),
            "{op:#x}"
        );
    }
    assert_eq!(
        udp_pre(40000, 1194, &ovpn(0x20, 8)),
        Prefilter::No,
        "too short for a session id"
    );
}

#[test]
fn udp_prefilter_marks_openvpn_data_as_follow_up() {
    for op in [0x30u8, 0x48, 0x4b] {
        assert_eq!(
            udp_pre(40000, 1194, &ovpn(op, 108)),
            Prefilter::FollowUp(Protocol::OpenVpn, Message::OvpnData),
            "{op:#x}"
        );
    }
    assert_eq!(udp_pre(40000, 1194, &[0x48, 0, 0, 0]), Prefilter::No);
}

#[test]
fn udp_prefilter_never_inspects_quic_long_headers_stun_rtp_or_ntp() {
    let quic = padded(&[0xc3, 0, 0, 0, 1], 1200, 9);
    let stun = padded(&[0x00, 0x01, 0x00, 0x20, 0x21, 0x12, 0xa4, 0x42], 52, 10);
    let rtp = padded(&[0x80, 0x60, 0x12, 0x34], 172, 11);
    let ntp = padded(&[0x23], 48, 12);
    for p in [&quic, &stun, &rtp] {
        assert_eq!(udp_pre(50000, 443, p), Prefilter::No, "{:02x?}", &p[..4]);
    }
    // NTP's first byte 0x23 is opcode 4 (control), key id 3: a follow-up at most, which
    // costs a gate read and can never start a flow.
    assert_ne!(udp_pre(50000, 123, &ntp), Prefilter::Inspect);
}

// ---------------------------------------------------------------------------------------
// classify_udp: WireGuard
// ---------------------------------------------------------------------------------------

#[test]
fn wireguard_initiation_of_exactly_148_bytes_is_strong_with_the_sender_index() {
    let d = udp(38031, 51820, &wg(1, 148, WG_SENDER, [0; 4]));
    let d = assert_detects(
        d,
        Protocol::WireGuard,
        Message::WgInitiation,
        Strength::Strong,
    );
    assert_eq!(d.token, token4(WG_SENDER));
    assert_eq!(d.peer_token, [0; 8]);
}

#[test]
fn real_wireguard_go_initiation_is_strong() {
    // wireguard-ipv4.pcap #1, sender 0xB9EAC571 (little-endian on the wire).
    let p = padded(
        &hex("0100000071c5eab9dbf4c9cde6e13534d6f8a25513f9835778cad34c"),
        148,
        1,
    );
    let d = assert_detects(
        udp(38031, 51820, &p),
        Protocol::WireGuard,
        Message::WgInitiation,
        Strength::Strong,
    );
    assert_eq!(d.token, token4(WG_SENDER));
}

#[test]
fn wireguard_initiation_on_any_port_is_detected() {
    for port in [443, 53, 2408, 5060] {
        assert!(
            udp(40000, port, &wg(1, 148, WG_SENDER, [0; 4])).is_some(),
            "port {port}"
        );
    }
}

#[test]
fn wireguard_initiation_of_147_bytes_is_not_wireguard() {
    assert_eq!(udp(40000, 51820, &wg(1, 147, WG_SENDER, [0; 4])), None);
}

#[test]
fn padded_wireguard_initiation_is_weak_up_to_the_padding_limit() {
    for len in [149, 204, WG_MAX_PADDED] {
        let d = udp(40000, 51820, &wg(1, len, WG_SENDER, [0; 4]));
        let d = assert_detects(
            d,
            Protocol::WireGuard,
            Message::WgPaddedInitiation,
            Strength::Weak,
        );
        assert_eq!(d.token, token4(WG_SENDER));
    }
    assert_eq!(
        udp(40000, 51820, &wg(1, WG_MAX_PADDED + 1, WG_SENDER, [0; 4])),
        None
    );
}

#[test]
fn wireguard_response_of_exactly_92_bytes_is_strong_with_both_indices() {
    let d = udp(51820, 38031, &wg(2, 92, WG_RECEIVER, WG_SENDER));
    let d = assert_detects(
        d,
        Protocol::WireGuard,
        Message::WgResponse,
        Strength::Strong,
    );
    assert_eq!(d.token, token4(WG_RECEIVER), "the responder's sender index");
    assert_eq!(
        d.peer_token,
        token4(WG_SENDER),
        "echoes the initiator's sender index"
    );
}

#[test]
fn padded_wireguard_response_is_only_a_follow_up() {
    let d = udp(51820, 40000, &wg(2, 100, WG_RECEIVER, WG_SENDER));
    let d = assert_detects(
        d,
        Protocol::WireGuard,
        Message::WgPaddedResponse,
        Strength::FollowUp,
    );
    assert_eq!(d.peer_token, token4(WG_SENDER));
    assert_eq!(udp(51820, 40000, &wg(2, 91, WG_RECEIVER, WG_SENDER)), None);
    assert_eq!(
        udp(
            51820,
            40000,
            &wg(2, WG_MAX_PADDED + 1, WG_RECEIVER, WG_SENDER)
        ),
        None
    );
}

#[test]
fn wireguard_cookie_reply_of_exactly_64_bytes_is_strong() {
    let d = udp(51820, 40000, &wg(3, 64, WG_SENDER, [0; 4]));
    let d = assert_detects(d, Protocol::WireGuard, Message::WgCookie, Strength::Strong);
    assert_eq!(d.peer_token, token4(WG_SENDER), "the receiver index");
    assert_eq!(udp(51820, 40000, &wg(3, 63, WG_SENDER, [0; 4])), None);
    assert_eq!(udp(51820, 40000, &wg(3, 80, WG_SENDER, [0; 4])), None);
}

#[test]
fn wireguard_data_is_weak_when_at_least_32_bytes_and_a_multiple_of_16() {
    for len in [32, 48, 128, 1440] {
        let d = udp(40000, 51820, &wg(4, len, WG_RECEIVER, [0; 4]));
        let d = assert_detects(d, Protocol::WireGuard, Message::WgData, Strength::Weak);
        assert_eq!(d.token, token4(WG_RECEIVER));
    }
}

#[test]
fn wireguard_data_of_a_length_not_padded_to_16_is_not_wireguard() {
    for len in [16, 31, 33, 40, 127] {
        assert_eq!(
            udp(40000, 51820, &wg(4, len, WG_RECEIVER, [0; 4])),
            None,
            "len {len}"
        );
    }
}

#[test]
fn wireguard_with_a_nonzero_reserved_byte_is_weak_at_the_handshake_sizes_only() {
    for i in 1..4 {
        let mut p = wg(1, 148, WG_SENDER, [0; 4]);
        p[i] = 0x01;
        let d = udp(40000, 2408, &p).expect("a client-id initiation");
        assert_eq!(
            (d.protocol, d.message, d.strength),
            (Protocol::WireGuard, Message::WgIdInitiation, Strength::Weak),
            "reserved byte {i}"
        );
        assert_eq!(d.token[..4], WG_SENDER);
        // Other sizes with a non-zero reserved byte are not WireGuard.
        for len in [32, 64, 147, 149, 204] {
            let mut p = wg(1, len, WG_SENDER, [0; 4]);
            p[i] = 0x01;
            assert_eq!(
                udp(40000, 51820, &p),
                None,
                "reserved byte {i}, {len} bytes"
            );
        }
        // Never on DNS's port.
        assert_eq!(udp(40000, 53, &p), None);
    }
    let mut r = wg(2, 92, [9, 9, 9, 9], WG_SENDER);
    r[1] = 0xab;
    let d = udp(2408, 40000, &r).expect("a client-id response");
    assert_eq!(
        (d.message, d.strength, d.peer_token[..4].to_vec()),
        (
            Message::WgIdResponse,
            Strength::FollowUp,
            WG_SENDER.to_vec()
        )
    );
}

// ---------------------------------------------------------------------------------------
// classify_udp: Tailscale, L2TP, DTLS, SoftEther
// ---------------------------------------------------------------------------------------

#[test]
fn tailscale_disco_of_at_least_62_bytes_is_strong() {
    let magic = [0x54, 0x53, 0xf0, 0x9f, 0x92, 0xac];
    for len in [62, 120] {
        let d = udp(41641, 41641, &padded(&magic, len, 3));
        assert_detects(
            d,
            Protocol::TailscaleDisco,
            Message::DiscoPacket,
            Strength::Strong,
        );
    }
}

#[test]
fn tailscale_disco_shorter_than_62_bytes_or_with_a_wrong_magic_byte_is_not_detected() {
    let magic = [0x54, 0x53, 0xf0, 0x9f, 0x92, 0xac];
    assert_eq!(udp(41641, 41641, &padded(&magic, 61, 3)), None);
    let mut p = padded(&magic, 80, 3);
    p[5] = 0xad;
    assert_eq!(udp(41641, 41641, &p), None);
}

#[test]
fn real_l2tp_sccrq_is_strong() {
    let d = udp(1701, 1701, &l2tp_sccrq());
    assert_detects(d, Protocol::L2tp, Message::L2tpControl, Strength::Strong);
}

#[test]
fn l2tp_control_whose_length_field_disagrees_with_the_payload_is_not_detected() {
    let mut p = l2tp_sccrq();
    p.push(0);
    assert_eq!(udp(1701, 1701, &p), None);
    assert_eq!(udp(1701, 1701, &p[..98]), None);
}

#[test]
fn l2tp_zlb_ack_is_only_a_follow_up() {
    // l2tp.pcap #5.
    let d = udp(1701, 1701, &hex("c802000cb68f000000010002"));
    assert_detects(d, Protocol::L2tp, Message::L2tpControl, Strength::FollowUp);
}

#[test]
fn l2tp_control_without_a_message_type_avp_first_is_not_detected() {
    let mut p = l2tp_sccrq();
    p[15] = 7; // attribute 7 (host name) instead of 0 (message type)
    assert_eq!(udp(1701, 1701, &p), None);
    let mut p = l2tp_sccrq();
    p[12] = 0x00; // M bit clear
    assert_eq!(udp(1701, 1701, &p), None);
}

#[test]
fn l2tp_message_types_outside_1_to_16_are_not_detected() {
    for ty in [0u8, 17, 255] {
        let mut p = l2tp_sccrq();
        p[19] = ty;
        assert_eq!(udp(1701, 1701, &p), None, "type {ty}");
    }
}

#[test]
fn l2tp_shorter_than_its_header_is_not_detected() {
    assert_eq!(
        udp(1701, 1701, &[0xc8, 0x02, 0x00, 0x0b, 0, 0, 0, 0, 0, 0, 0]),
        None
    );
}

#[test]
fn l2tpv3_control_with_a_matching_length_is_strong() {
    let mut p = vec![0xc8, 0x03, 0x00, 0x14, 0, 0, 0x12, 0x34, 0, 0, 0, 0];
    p.extend_from_slice(&[0x80, 0x08, 0, 0, 0, 0, 0, 1]);
    let d = udp(1701, 1701, &p);
    assert_detects(d, Protocol::L2tp, Message::L2tpControl, Strength::Strong);
}

#[test]
fn real_openconnect_dtls_client_hello_to_443_is_weak_and_the_server_hello_confirms_it() {
    let d = udp(39019, 443, &openconnect_client_hello());
    assert_detects(
        d,
        Protocol::OpenConnectDtls,
        Message::DtlsClientHello,
        Strength::Weak,
    );
    // The server's answer: a handshake record of type ServerHello (2) from 443.
    let mut reply = openconnect_client_hello();
    reply[13] = 2;
    let r = udp(443, 39019, &reply);
    let r = assert_detects(
        r,
        Protocol::OpenConnectDtls,
        Message::DtlsServerHello,
        Strength::FollowUp,
    );
    let mut state = FlowState {
        status: FlowStatus::Pending as u8,
        protocol: Protocol::OpenConnectDtls as u8,
        message: Message::DtlsClientHello as u8,
        token: d.unwrap().token,
        ..Default::default()
    };
    assert_eq!(advance(&mut state, &r, false), Confirmation::Confirmed);
}

#[test]
fn dtls_client_hello_from_port_443_is_not_openconnect() {
    assert_eq!(udp(443, 39019, &openconnect_client_hello()), None);
}

#[test]
fn dtls_client_hello_with_a_32_byte_session_id_to_another_port_is_not_openconnect() {
    assert_eq!(udp(39019, 4433, &openconnect_client_hello()), None);
}

#[test]
fn webrtc_dtls_client_hello_to_443_with_an_empty_session_id_is_not_openconnect() {
    let p = webrtc_client_hello(180);
    assert_eq!(p[59], 0);
    assert_eq!(udp(50000, 443, &p), None);
}

#[test]
fn dtls_server_hello_with_a_32_byte_session_id_is_not_openconnect() {
    let mut p = openconnect_client_hello();
    p[13] = 2;
    assert_eq!(udp(39019, 443, &p), None);
}

#[test]
fn cisco_pre_standard_dtls_handshake_is_strong_on_any_port() {
    let mut p = vec![0x16, 0x01, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 80];
    p = padded(&p, 93, 17);
    let d = udp(50000, 443, &p);
    assert_detects(
        d,
        Protocol::OpenConnectDtls,
        Message::DtlsRecord,
        Strength::Strong,
    );
    assert!(udp(443, 50000, &p).is_some());
}

#[test]
fn dtls_record_longer_than_the_payload_is_not_detected() {
    let mut p = openconnect_client_hello();
    p.truncate(167);
    assert_eq!(udp(39019, 443, &p), None);
    let mut cisco = padded(&[0x16, 0x01, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 81], 93, 17);
    assert_eq!(udp(50000, 443, &cisco), None);
    cisco.truncate(24);
    assert_eq!(
        udp(50000, 443, &cisco),
        None,
        "shorter than a record and handshake header"
    );
}

#[test]
fn softether_udp_announcement_is_strong() {
    let d = udp(40000, 5555, b"IP=198.51.100.7,PORT=5555 ...");
    assert_detects(
        d,
        Protocol::SoftEther,
        Message::SoftEtherUdp,
        Strength::Strong,
    );
}

#[test]
fn softether_lookalike_without_port_or_too_short_is_not_detected() {
    assert_eq!(udp(40000, 5555, b"IP=198.51.100.7, no port"), None);
    assert_eq!(
        udp(40000, 5555, b"IP=1,PORT=1"),
        None,
        "shorter than 16 bytes"
    );
}

#[test]
fn softether_port_field_beyond_the_window_is_not_seen() {
    let mut p = b"IP=".to_vec();
    p.extend_from_slice(&[b'1'; WINDOW - 4]);
    p.extend_from_slice(b",PORT=443");
    assert_eq!(udp(40000, 5555, &p), None);
}

// ---------------------------------------------------------------------------------------
// classify_udp: IKE and ESP
// ---------------------------------------------------------------------------------------

#[test]
fn ikev2_sa_init_on_500_is_strong_with_the_initiator_spi() {
    let d = udp(500, 500, &ikev2_sa_init(352));
    let d = assert_detects(d, Protocol::Ike, Message::IkeSaInit, Strength::Strong);
    assert_eq!(d.token, SPI_I.to_be_bytes());
}

#[test]
fn real_strongswan_sa_init_header_is_strong() {
    // ikev2-psk.pcap #1: `[16..20]` = 21 20 22 08, IKE length 0x160 = 352.
    let p = padded(
        &hex("7bdbd19343905c350000000000000000212022080000000000000160220000a0"),
        352,
        5,
    );
    assert_detects(
        udp(500, 500, &p),
        Protocol::Ike,
        Message::IkeSaInit,
        Strength::Strong,
    );
}

#[test]
fn ikev2_sa_init_response_is_strong() {
    let p = padded(
        &ike_header(SPI_I, 0x56ba_8feb_86b2_4e78, 33, 0x20, 34, 0x20, 0, 248),
        248,
        6,
    );
    assert_detects(
        udp(500, 500, &p),
        Protocol::Ike,
        Message::IkeSaInit,
        Strength::Strong,
    );
}

#[test]
fn ikev2_auth_and_informational_are_strong_ike_other() {
    for (exchange, flags, msg_id) in [
        (35u8, 0x08u8, 1u32),
        (37, 0x20, 0),
        (36, 0x08, 2),
        (43, 0x08, 0),
    ] {
        let p = padded(
            &ike_header(SPI_I, 9, 46, 0x20, exchange, flags, msg_id, 100),
            100,
            7,
        );
        assert_detects(
            udp(500, 500, &p),
            Protocol::Ike,
            Message::IkeOther,
            Strength::Strong,
        );
    }
}

#[test]
fn ike_whose_length_field_disagrees_with_the_payload_is_not_detected() {
    let mut p = ikev2_sa_init(352);
    p.push(0);
    assert_eq!(udp(500, 500, &p), None);
}

#[test]
fn ike_with_a_zero_initiator_spi_is_not_detected() {
    let p = padded(&ike_header(0, 0, 33, 0x20, 34, 0x08, 0, 300), 300, 8);
    assert_eq!(udp(500, 500, &p), None);
}

#[test]
fn ike_with_an_unknown_version_or_exchange_or_flag_is_not_detected() {
    for (version, exchange, flags) in [
        (0x30u8, 34u8, 0x08u8),
        (0x20, 33, 0x08),
        (0x20, 38, 0x08),
        (0x20, 34, 0x01),
        (0x10, 6, 0),
    ] {
        let p = padded(
            &ike_header(SPI_I, 0, 33, version, exchange, flags, 0, 300),
            300,
            9,
        );
        assert_eq!(
            udp(500, 500, &p),
            None,
            "version {version:#x} exchange {exchange} flags {flags:#x}"
        );
    }
}

#[test]
fn ike_shorter_than_its_header_is_not_detected() {
    let p = ike_header(SPI_I, 0, 33, 0x20, 34, 0x08, 0, 27);
    assert_eq!(udp(500, 500, &p[..27]), None);
}

#[test]
fn ikev1_main_and_aggressive_mode_first_messages_are_sa_init() {
    for exchange in [2u8, 4] {
        let p = padded(&ike_header(SPI_I, 0, 1, 0x10, exchange, 0, 0, 180), 180, 10);
        assert_detects(
            udp(500, 500, &p),
            Protocol::Ike,
            Message::IkeSaInit,
            Strength::Strong,
        );
    }
}

#[test]
fn ikev1_quick_mode_and_informational_are_ike_other() {
    for exchange in [5u8, 32] {
        let p = padded(
            &ike_header(SPI_I, 7, 8, 0x10, exchange, 1, 0x1234, 92),
            92,
            11,
        );
        assert_detects(
            udp(500, 500, &p),
            Protocol::Ike,
            Message::IkeOther,
            Strength::Strong,
        );
    }
}

#[test]
fn ike_after_the_non_esp_marker_on_4500_is_strong() {
    // ikev2-psk.pcap #3: IKE_AUTH, marker then an IKE length of 0x130 = 304 of 308 bytes.
    let p = padded(
        &hex("000000007bdbd19343905c3556ba8feb86b24e782e2023080000000100000130"),
        308,
        12,
    );
    let d = assert_detects(
        udp(4500, 4500, &p),
        Protocol::Ike,
        Message::IkeOther,
        Strength::Strong,
    );
    assert_eq!(d.token, SPI_I.to_be_bytes());
    let mut sa_init = vec![0, 0, 0, 0];
    sa_init.extend_from_slice(&ikev2_sa_init(352));
    assert_detects(
        udp(40000, 4500, &sa_init),
        Protocol::Ike,
        Message::IkeSaInit,
        Strength::Strong,
    );
}

#[test]
fn ike_on_4500_whose_length_counts_the_marker_is_not_detected() {
    let mut p = vec![0, 0, 0, 0];
    p.extend_from_slice(&ikev2_sa_init(352));
    p[4 + 24..4 + 28].copy_from_slice(&356u32.to_be_bytes());
    assert_eq!(udp(4500, 4500, &p), None);
}

#[test]
fn esp_in_udp_on_4500_is_weak_with_the_spi_and_sequence_number() {
    // ikev2-psk.pcap #5: SPI 0x453ec8e3, sequence 1, 136 bytes. Weak: DNS, NTP and QUIC
    // from a 4500 source port have the same shape.
    let p = padded(&hex("453ec8e300000001cffc09b23286bf9a"), 136, 13);
    let d = assert_detects(
        udp(4500, 4500, &p),
        Protocol::Esp,
        Message::EspUdp,
        Strength::Weak,
    );
    assert_eq!(d.token, [0x45, 0x3e, 0xc8, 0xe3, 0, 0, 0, 1]);
}

#[test]
fn esp_in_udp_shorter_than_16_bytes_is_not_detected() {
    assert_eq!(
        udp(
            4500,
            4500,
            &padded(&[0x45, 0x3e, 0xc8, 0xe3, 0, 0, 0, 1], 15, 1)
        ),
        None
    );
}

#[test]
fn nat_keepalive_on_4500_is_not_detected() {
    assert_eq!(udp(4500, 4500, &[0xff]), None);
}

// ---------------------------------------------------------------------------------------
// classify_udp: OpenVPN
// ---------------------------------------------------------------------------------------

#[test]
fn real_plain_openvpn_client_reset_is_weak_with_the_session_id() {
    let d = udp(34265, 1194, &ovpn_plain_client_reset());
    let d = assert_detects(
        d,
        Protocol::OpenVpn,
        Message::OvpnClientReset,
        Strength::Weak,
    );
    assert_eq!(d.token, SESSION);
}

#[test]
fn plain_openvpn_client_reset_v1_is_weak() {
    let mut p = ovpn_plain_client_reset();
    p[0] = 0x08;
    assert_detects(
        udp(34265, 1194, &p),
        Protocol::OpenVpn,
        Message::OvpnClientReset,
        Strength::Weak,
    );
}

#[test]
fn fourteen_byte_client_reset_with_acks_or_a_packet_id_is_not_openvpn() {
    let mut p = ovpn_plain_client_reset();
    p[9] = 1;
    assert_eq!(udp(34265, 1194, &p), None);
    let mut p = ovpn_plain_client_reset();
    p[13] = 1;
    assert_eq!(udp(34265, 1194, &p), None);
}

#[test]
fn real_tls_auth_client_reset_is_weak() {
    // openvpn-udp-tls-auth.pcap #1 (42 bytes, HMAC-SHA1).
    let p =
        hex("38ffa0d7c6818652919a2d3b4478da32e04d7feb9fdb7dae392a1b1a28000000016b0af5930000000000");
    assert_eq!(p.len(), 42);
    assert_detects(
        udp(50005, 1194, &p),
        Protocol::OpenVpn,
        Message::OvpnClientReset,
        Strength::Weak,
    );
}

#[test]
fn real_tls_crypt_client_reset_is_weak() {
    // openvpn-udp-tls-crypt.pcap #1 (54 bytes).
    let p = padded(
        &hex("38085775ae2fab83df000000016b0af597b2d44a7470d5396b89ce0fcaae5dfa"),
        54,
        14,
    );
    assert_detects(
        udp(47204, 1194, &p),
        Protocol::OpenVpn,
        Message::OvpnClientReset,
        Strength::Weak,
    );
}

#[test]
fn real_tls_crypt_v2_client_reset_v3_is_weak() {
    // openvpn-udp-tls-crypt-v2.pcap #1 (353 bytes): replay packet id 0x0f000001.
    let p = padded(
        &hex("5088371aa2abfcd0100f0000016b0af59b41ba844c3cb279127c44a82ad3f9c9"),
        353,
        15,
    );
    let d = assert_detects(
        udp(33463, 1194, &p),
        Protocol::OpenVpn,
        Message::OvpnClientReset,
        Strength::Weak,
    );
    assert_eq!(d.token, hex("88371aa2abfcd010").as_slice());
}

#[test]
fn tls_auth_client_resets_of_every_digest_size_are_weak() {
    // MD5, SHA1, SHA224, SHA256, SHA384, SHA512.
    for hmac in [16, 20, 28, 32, 48, 64] {
        let p = tls_auth_reset(hmac);
        assert_eq!(p.len(), 22 + hmac);
        let d = udp(40000, 1194, &p);
        assert_detects(
            d,
            Protocol::OpenVpn,
            Message::OvpnClientReset,
            Strength::Weak,
        );
    }
}

#[test]
fn client_reset_of_a_length_no_openvpn_layout_has_is_not_openvpn() {
    for len in [15, 22, 41, 43, 55, 60, 100, 353, 1000] {
        assert_eq!(udp(40000, 1194, &ovpn(0x38, len)), None, "len {len}");
    }
}

#[test]
fn tls_auth_client_reset_with_acks_or_a_large_packet_id_is_not_openvpn() {
    let mut acks = tls_auth_reset(20);
    acks[37] = 1; // ack count
    assert_eq!(udp(40000, 1194, &acks), None);
    let mut pid = tls_auth_reset(20);
    pid[30] = 0x12; // packet id 0x00120001
    assert_eq!(udp(40000, 1194, &pid), None);
    let mut msg = tls_auth_reset(20);
    msg[41] = 1; // message packet id 1
    assert_eq!(udp(40000, 1194, &msg), None);
    let mut sha512 = tls_auth_reset(64);
    sha512[85] = 1; // message packet id 1, after a 64-byte HMAC
    assert_eq!(udp(40000, 1194, &sha512), None);
}

#[test]
fn tls_crypt_client_reset_with_a_large_packet_id_is_not_openvpn() {
    let mut p = padded(
        &hex("38085775ae2fab83df000000016b0af597b2d44a7470d5396b89ce0fcaae5dfa"),
        54,
        14,
    );
    p[10] = 0x01;
    assert_eq!(udp(47204, 1194, &p), None);
}

#[test]
fn tls_crypt_v2_client_reset_without_the_early_negotiation_marker_is_weak() {
    let d = udp(40000, 1194, &v3_reset(400, [0, 0, 0, 1]));
    assert_detects(
        d,
        Protocol::OpenVpn,
        Message::OvpnClientReset,
        Strength::Weak,
    );
}

#[test]
fn tls_crypt_v2_client_reset_too_short_for_a_wrapped_client_key_is_not_openvpn() {
    assert_eq!(
        udp(
            40000,
            1194,
            &v3_reset(OVPN_MIN_RESET_V3 - 1, [0x0f, 0, 0, 1])
        ),
        None
    );
    assert!(udp(40000, 1194, &v3_reset(OVPN_MIN_RESET_V3, [0x0f, 0, 0, 1])).is_some());
}

#[test]
fn tls_crypt_v2_client_reset_with_a_large_packet_id_is_not_openvpn() {
    assert_eq!(udp(40000, 1194, &v3_reset(353, [0x0f, 0x33, 0, 1])), None);
    assert_eq!(udp(40000, 1194, &v3_reset(353, [0x0f, 0, 0x44, 1])), None);
}

#[test]
fn quic_short_header_starting_with_0x50_is_not_an_openvpn_reset() {
    // 0x50: QUIC's fixed bit plus bits masked by header protection, which reads as OpenVPN
    // opcode 10 (client reset v3) with key id 0. The destination connection id and the
    // protected packet number follow, so no replay packet id with zero middle bytes.
    for len in [40, 120, 353, 900] {
        let p = padded(
            &[
                0x50, 0x9b, 0x1d, 0x2e, 0x77, 0x01, 0xc4, 0x5a, 0x10, 0xd3, 0x8e, 0x41,
            ],
            len,
            len as u64,
        );
        assert_eq!(udp(50000, 443, &p), None, "len {len}");
    }
}

#[test]
fn dns_header_shaped_like_a_client_reset_is_not_openvpn() {
    // Id 0x38c4, flags 0 (no RD), one question, no answer, authority or additional records:
    // 54 bytes, so a tls-crypt reset by length and packet id, but the "session id" holds the
    // header's counts (six zero bytes).
    let mut q = hex("38c4 0000 0001 0000 0000 0000");
    q.extend_from_slice(&[30]);
    q.extend_from_slice(&[b'a'; 30]);
    q.extend_from_slice(&[3, b'c', b'o', b'm', 0, 0, 1, 0, 1]);
    assert_eq!(q.len(), 52);
    q.extend_from_slice(&[0, 0]);
    assert_eq!(udp(40000, 53, &q), None);
}

#[test]
fn openvpn_session_ids_with_up_to_three_zero_bytes_are_accepted() {
    let mut three = tls_auth_reset(20);
    three[1..9].copy_from_slice(&[0, 0x12, 0, 0x34, 0, 0x56, 0x78, 0x9a]);
    assert!(udp(40000, 1194, &three).is_some());
    let mut four = three.clone();
    four[8] = 0;
    assert_eq!(udp(40000, 1194, &four), None);
}

#[test]
fn openvpn_client_reset_with_a_zero_session_id_is_not_openvpn() {
    let mut p = vec![0x38];
    p.extend_from_slice(&[0; 8]);
    let p = padded(&p, 42, 16);
    assert_eq!(udp(40000, 1194, &p), None);
}

#[test]
fn openvpn_client_reset_with_the_stun_magic_cookie_is_not_openvpn() {
    let mut p = tls_auth_reset(20);
    p[4..8].copy_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
    assert_eq!(udp(40000, 1194, &p), None);
}

#[test]
fn openvpn_reset_of_1200_bytes_or_more_is_not_openvpn() {
    assert_eq!(
        udp(40000, 1194, &v3_reset(OVPN_MAX_RESET, [0x0f, 0, 0, 1])),
        None
    );
    assert!(udp(40000, 1194, &v3_reset(OVPN_MAX_RESET - 1, [0x0f, 0, 0, 1])).is_some());
}

#[test]
fn openvpn_reset_with_a_key_id_is_not_openvpn() {
    let mut p = tls_auth_reset(20);
    p[0] = 0x3a;
    assert_eq!(udp(40000, 1194, &p), None);
}

#[test]
fn real_plain_server_reset_is_a_follow_up_echoing_the_client_session() {
    let d = udp(1194, 34265, &ovpn_plain_server_reset());
    let d = assert_detects(
        d,
        Protocol::OpenVpn,
        Message::OvpnServerReset,
        Strength::FollowUp,
    );
    assert_eq!(d.token, SERVER_SESSION);
    assert_eq!(d.peer_token, SESSION);
}

#[test]
fn real_tls_auth_server_reset_echoes_the_client_session_after_the_hmac() {
    // openvpn-udp-tls-auth.pcap #2 (54 bytes): HMAC-SHA1, packet id 1, time, ack count 1,
    // acked packet id 0, then the client's session id ffa0d7c681865291 at [42..50].
    let p = hex(
        "4076b7fc07846e432313ad31434f8ff79e42694354855b2446439e2656000000016b0af593010000\
         0000ffa0d7c68186529100000000",
    );
    assert_eq!(p.len(), 54);
    let d = assert_detects(
        udp(1194, 50005, &p),
        Protocol::OpenVpn,
        Message::OvpnServerReset,
        Strength::FollowUp,
    );
    assert_eq!(d.peer_token, hex("ffa0d7c681865291").as_slice());
}

/// A tls-auth server reset v2 with an HMAC of `hmac` bytes echoing [`SESSION`].
fn tls_auth_server_reset(hmac: usize) -> Vec<u8> {
    let mut p = vec![0x40];
    p.extend_from_slice(&SERVER_SESSION);
    p = padded(&p, 9 + hmac, hmac as u64 + 1);
    p.extend_from_slice(&[0, 0, 0, 1, 0x6b, 0x0a, 0xf5, 0x93, 1, 0, 0, 0, 0]);
    p.extend_from_slice(&SESSION);
    p.extend_from_slice(&[0, 0, 0, 0]);
    p
}

#[test]
fn tls_auth_server_resets_of_every_digest_size_echo_the_client_session() {
    for hmac in [16, 20, 28, 32, 48, 64] {
        let p = tls_auth_server_reset(hmac);
        let d = assert_detects(
            udp(1194, 40000, &p),
            Protocol::OpenVpn,
            Message::OvpnServerReset,
            Strength::FollowUp,
        );
        assert_eq!(d.peer_token, SESSION, "hmac {hmac}");
    }
}

#[test]
fn real_tls_crypt_server_resets_hide_the_echo() {
    // openvpn-udp-tls-crypt.pcap #2 (66 bytes) and openvpn-udp-tls-crypt-v2.pcap #2 (72):
    // packet id 1 and the time in clear, the rest encrypted.
    for (head, len) in [
        (
            "40bb70c9eda63748cb000000016b0af597f63819b20617cd36b3841408bbf9f2",
            66,
        ),
        (
            "40d1275f9fe4fc1672000000016b0af59b5cb59b9393e8c81fdf13fd290b9787",
            72,
        ),
    ] {
        let p = padded(&hex(head), len, len as u64);
        let d = assert_detects(
            udp(1194, 47204, &p),
            Protocol::OpenVpn,
            Message::OvpnServerReset,
            Strength::FollowUp,
        );
        assert_eq!(d.peer_token, [0; 8]);
    }
}

#[test]
fn server_reset_of_a_length_no_openvpn_layout_has_is_not_openvpn() {
    for len in [14, 25, 27, 42, 55, 64, 67, 100, 500] {
        assert_eq!(udp(1194, 40000, &ovpn(0x40, len)), None, "len {len}");
    }
}

#[test]
fn server_reset_that_acknowledges_nothing_is_not_openvpn() {
    let mut plain = ovpn_plain_server_reset();
    plain[9] = 0;
    assert_eq!(udp(1194, 34265, &plain), None);
    let mut auth = tls_auth_server_reset(20);
    auth[37] = 2;
    assert_eq!(udp(1194, 34265, &auth), None);
}

#[test]
fn tls_crypt_server_reset_with_a_large_packet_id_is_not_openvpn() {
    let mut p = padded(
        &hex("40d1275f9fe4fc1672000000016b0af59b5cb59b9393e8c81fdf13fd290b9787"),
        72,
        72,
    );
    p[11] = 0x20;
    assert_eq!(udp(1194, 47204, &p), None);
}

#[test]
fn server_reset_v1_is_a_follow_up() {
    let mut p = ovpn_plain_server_reset();
    p[0] = 0x10;
    assert_detects(
        udp(1194, 34265, &p),
        Protocol::OpenVpn,
        Message::OvpnServerReset,
        Strength::FollowUp,
    );
}

#[test]
fn openvpn_control_reaching_the_classifier_is_a_follow_up_with_the_session() {
    // openvpn-udp-plain.pcap #3 starts like this (P_CONTROL_V1 carrying the ClientHello).
    let p = padded(
        &hex("201f2b1e4eedf3db600100000000a95788e6055fdb170000000116030101"),
        311,
        18,
    );
    let d = assert_detects(
        udp(34265, 1194, &p),
        Protocol::OpenVpn,
        Message::OvpnControl,
        Strength::FollowUp,
    );
    assert_eq!(d.token, SESSION);
}

#[test]
fn openvpn_data_is_never_classified_from_the_window() {
    // Data packets are follow-ups decided by the prefilter alone.
    assert_eq!(udp(34265, 1194, &ovpn(0x48, 108)), None);
    assert_eq!(udp(34265, 1194, &ovpn(0x30, 108)), None);
}

// ---------------------------------------------------------------------------------------
// TCP
// ---------------------------------------------------------------------------------------

#[test]
fn tcp_prefilter_passes_segments_shorter_than_six_bytes() {
    assert_eq!(tcp_pre(b"IKETC"), Prefilter::No);
    assert_eq!(tcp_pre(&[]), Prefilter::No);
}

#[test]
fn tcp_prefilter_inspects_iketcp_pptp_and_framed_openvpn() {
    assert_eq!(tcp_pre(b"IKETCP\x00\x20"), Prefilter::Inspect);
    assert_eq!(tcp_pre(&pptp_sccrq()), Prefilter::Inspect);
    for op in [0x08u8, 0x10, 0x38, 0x40, 0x50, 0x20, 0x28] {
        let mut p = vec![0, 42];
        p.extend_from_slice(&ovpn(op, 42));
        assert_eq!(tcp_pre(&p), Prefilter::Inspect, "{op:#x}");
    }
}

#[test]
fn tcp_prefilter_ignores_tls_http_and_ssh() {
    let tls = padded(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01], 517, 20);
    assert_eq!(tcp_pre(&tls), Prefilter::No);
    assert_eq!(
        tcp_pre(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"),
        Prefilter::No
    );
    assert_eq!(
        tcp_pre(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n"),
        Prefilter::No
    );
}

#[test]
fn tcp_prefilter_ignores_framed_openvpn_longer_than_the_segment() {
    let mut p = vec![0, 43];
    p.extend_from_slice(&ovpn(0x38, 42));
    assert_eq!(tcp_pre(&p), Prefilter::No);
}

#[test]
fn tcp_prefilter_ignores_framed_openvpn_data() {
    let mut p = vec![0, 108];
    p.extend_from_slice(&ovpn(0x48, 108));
    assert_eq!(tcp_pre(&p), Prefilter::No);
}

#[test]
fn iketcp_stream_prefix_is_strong() {
    let d = tcp(b"IKETCP\x01\x64\x00\x00\x00\x00");
    assert_detects(d, Protocol::Ike, Message::IkeTcp, Strength::Strong);
}

#[test]
fn real_pptp_sccrq_is_strong() {
    assert_detects(
        tcp(&pptp_sccrq()),
        Protocol::Pptp,
        Message::PptpControl,
        Strength::Strong,
    );
}

#[test]
fn pptp_with_a_wrong_magic_or_a_length_beyond_the_segment_is_not_detected() {
    let mut p = pptp_sccrq();
    p[7] = 0x4e;
    assert_eq!(tcp(&p), None);
    let p = pptp_sccrq();
    assert_eq!(tcp(&p[..155]), None);
}

#[test]
fn pptp_with_a_length_below_16_is_not_detected() {
    let mut p = pptp_sccrq();
    p[1] = 15;
    assert_eq!(tcp(&p), None);
}

#[test]
fn real_framed_tls_crypt_client_reset_over_tcp_is_weak() {
    // openvpn-tcp-tls-crypt.pcap #4: 0x0036 then the 54-byte reset.
    let p = padded(
        &hex("003638d59ac21f037dcca8000000016b0af5a231969fd4532cf2c17ebb2c8e47"),
        56,
        21,
    );
    let d = assert_detects(
        tcp(&p),
        Protocol::OpenVpn,
        Message::OvpnClientReset,
        Strength::Weak,
    );
    assert_eq!(d.token, hex("d59ac21f037dcca8").as_slice());
}

#[test]
fn framed_tls_auth_client_reset_over_tcp_is_weak() {
    let mut p = vec![0, 42];
    p.extend_from_slice(&tls_auth_reset(20));
    assert_detects(
        tcp(&p),
        Protocol::OpenVpn,
        Message::OvpnClientReset,
        Strength::Weak,
    );
    let mut sha256 = vec![0, 54];
    sha256.extend_from_slice(&tls_auth_reset(32));
    assert_detects(
        tcp(&sha256),
        Protocol::OpenVpn,
        Message::OvpnClientReset,
        Strength::Weak,
    );
}

#[test]
fn framed_client_reset_over_tcp_of_a_length_no_layout_has_is_not_openvpn() {
    let mut p = vec![0, 60];
    p.extend_from_slice(&ovpn(0x38, 60));
    assert_eq!(tcp(&p), None);
}

#[test]
fn framed_plain_client_reset_over_tcp_is_weak() {
    let mut p = vec![0, 14];
    p.extend_from_slice(&ovpn_plain_client_reset());
    assert_detects(
        tcp(&p),
        Protocol::OpenVpn,
        Message::OvpnClientReset,
        Strength::Weak,
    );
}

#[test]
fn framed_plain_server_reset_over_tcp_echoes_the_client_session() {
    let mut p = vec![0, 26];
    p.extend_from_slice(&ovpn_plain_server_reset());
    let d = assert_detects(
        tcp(&p),
        Protocol::OpenVpn,
        Message::OvpnServerReset,
        Strength::FollowUp,
    );
    assert_eq!(d.peer_token, SESSION);
}

#[test]
fn framed_openvpn_with_a_prefix_below_14_is_not_detected() {
    let mut p = vec![0, 13];
    p.extend_from_slice(&ovpn_plain_client_reset()[..13]);
    assert_eq!(tcp(&p), None);
}

#[test]
fn tls_client_hello_on_tcp_is_not_detected() {
    assert_eq!(
        tcp(&padded(
            &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03],
            517,
            22
        )),
        None
    );
}

// ---------------------------------------------------------------------------------------
// GRE, ESP, AH
// ---------------------------------------------------------------------------------------

#[test]
fn enhanced_gre_v1_carrying_ppp_is_pptp() {
    for flags in [[0x30, 0x81], [0x20, 0x01], [0x30, 0x01], [0x20, 0x81]] {
        let d = classify_gre([flags[0], flags[1], 0x88, 0x0b]);
        assert_detects(d, Protocol::Pptp, Message::PptpGre, Strength::Strong);
    }
}

#[test]
fn gre_version_0_is_never_pptp() {
    for head in [
        [0x00, 0x00, 0x08, 0x00],
        [0x20, 0x00, 0x88, 0x0b],
        [0x10, 0x00, 0x88, 0xbe],
        [0x00, 0x00, 0x88, 0x0b],
    ] {
        assert_eq!(classify_gre(head), None, "{head:02x?}");
    }
}

#[test]
fn gre_v1_without_the_key_bit_or_not_carrying_ppp_is_not_pptp() {
    assert_eq!(classify_gre([0x00, 0x01, 0x88, 0x0b]), None);
    assert_eq!(classify_gre([0x20, 0x01, 0x08, 0x00]), None);
}

#[test]
fn esp_and_ah_are_recognised_by_protocol_number_alone() {
    assert_detects(
        classify_ip_proto(50),
        Protocol::Esp,
        Message::EspIp,
        Strength::Strong,
    );
    assert_detects(
        classify_ip_proto(51),
        Protocol::Ah,
        Message::AhIp,
        Strength::Strong,
    );
    for p in [1u8, 6, 17, 47, 58, 115] {
        assert_eq!(classify_ip_proto(p), None, "protocol {p}");
    }
}

// ---------------------------------------------------------------------------------------
// advance (pending flows) and belongs (blocked flows)
// ---------------------------------------------------------------------------------------

fn pending(protocol: Protocol, message: Message, token: [u8; 8], packets: u32) -> FlowState {
    FlowState {
        expires_ns: u64::MAX,
        token,
        packets,
        status: FlowStatus::Pending as u8,
        protocol: protocol as u8,
        message: message as u8,
        from_lo: 1,
        ..Default::default()
    }
}

fn det(
    protocol: Protocol,
    message: Message,
    strength: Strength,
    token: [u8; 8],
    peer: [u8; 8],
) -> Detection {
    Detection::new(protocol, message, strength).with_tokens(token, peer)
}

#[test]
fn padded_wireguard_initiation_is_confirmed_by_a_reply_echoing_its_sender_index() {
    let state = pending(
        Protocol::WireGuard,
        Message::WgPaddedInitiation,
        token4(WG_SENDER),
        1,
    );
    for message in [Message::WgPaddedResponse, Message::WgResponse] {
        let reply = det(
            Protocol::WireGuard,
            message,
            Strength::FollowUp,
            token4(WG_RECEIVER),
            token4(WG_SENDER),
        );
        assert_eq!(
            advance(&mut state.clone(), &reply, false),
            Confirmation::Confirmed,
            "{message:?}"
        );
    }
}

#[test]
fn padded_wireguard_reply_with_another_index_does_not_confirm() {
    let state = pending(
        Protocol::WireGuard,
        Message::WgPaddedInitiation,
        token4(WG_SENDER),
        1,
    );
    let reply = det(
        Protocol::WireGuard,
        Message::WgPaddedResponse,
        Strength::FollowUp,
        token4(WG_RECEIVER),
        token4([1, 2, 3, 4]),
    );
    assert_eq!(
        advance(&mut state.clone(), &reply, false),
        Confirmation::Pending
    );
}

#[test]
fn padded_wireguard_reply_in_the_initiators_direction_does_not_confirm() {
    let state = pending(
        Protocol::WireGuard,
        Message::WgPaddedInitiation,
        token4(WG_SENDER),
        1,
    );
    let reply = det(
        Protocol::WireGuard,
        Message::WgPaddedResponse,
        Strength::FollowUp,
        token4(WG_RECEIVER),
        token4(WG_SENDER),
    );
    assert_eq!(
        advance(&mut state.clone(), &reply, true),
        Confirmation::Pending
    );
}

#[test]
fn wireguard_data_flow_is_confirmed_by_its_fourth_packet() {
    let data = det(
        Protocol::WireGuard,
        Message::WgData,
        Strength::Weak,
        token4(WG_RECEIVER),
        [0; 8],
    );
    // `packets` counts the packets already seen, the creating one included.
    for seen in 1..WG_DATA_CONFIRM_PACKETS - 1 {
        let state = pending(
            Protocol::WireGuard,
            Message::WgData,
            token4(WG_RECEIVER),
            seen,
        );
        assert_eq!(
            advance(&mut state.clone(), &data, true),
            Confirmation::Pending,
            "after {seen}"
        );
    }
    let state = pending(
        Protocol::WireGuard,
        Message::WgData,
        token4(WG_RECEIVER),
        WG_DATA_CONFIRM_PACKETS - 1,
    );
    assert_eq!(
        advance(&mut state.clone(), &data, false),
        Confirmation::Confirmed
    );
}

#[test]
fn openvpn_client_reset_is_confirmed_by_a_server_reset_from_the_other_side() {
    let state = pending(Protocol::OpenVpn, Message::OvpnClientReset, SESSION, 1);
    let echoing = det(
        Protocol::OpenVpn,
        Message::OvpnServerReset,
        Strength::FollowUp,
        SERVER_SESSION,
        SESSION,
    );
    assert_eq!(
        advance(&mut state.clone(), &echoing, false),
        Confirmation::Confirmed
    );
    let wrapped = det(
        Protocol::OpenVpn,
        Message::OvpnServerReset,
        Strength::FollowUp,
        SERVER_SESSION,
        [0; 8],
    );
    assert_eq!(
        advance(&mut state.clone(), &wrapped, false),
        Confirmation::Confirmed
    );
}

#[test]
fn openvpn_server_reset_echoing_another_session_does_not_confirm() {
    let state = pending(Protocol::OpenVpn, Message::OvpnClientReset, SESSION, 1);
    let other = det(
        Protocol::OpenVpn,
        Message::OvpnServerReset,
        Strength::FollowUp,
        SERVER_SESSION,
        [9; 8],
    );
    assert_eq!(
        advance(&mut state.clone(), &other, false),
        Confirmation::Pending
    );
}

#[test]
fn openvpn_server_reset_in_the_clients_direction_does_not_confirm() {
    let state = pending(Protocol::OpenVpn, Message::OvpnClientReset, SESSION, 1);
    let same = det(
        Protocol::OpenVpn,
        Message::OvpnServerReset,
        Strength::FollowUp,
        SERVER_SESSION,
        SESSION,
    );
    assert_eq!(
        advance(&mut state.clone(), &same, true),
        Confirmation::Pending
    );
}

#[test]
fn openvpn_client_reset_is_confirmed_by_the_clients_control_packet_with_the_same_session() {
    let state = pending(Protocol::OpenVpn, Message::OvpnClientReset, SESSION, 1);
    let control = det(
        Protocol::OpenVpn,
        Message::OvpnControl,
        Strength::FollowUp,
        SESSION,
        [0; 8],
    );
    assert_eq!(
        advance(&mut state.clone(), &control, true),
        Confirmation::Confirmed
    );
}

#[test]
fn openvpn_control_with_another_session_or_from_the_other_side_does_not_confirm() {
    let state = pending(Protocol::OpenVpn, Message::OvpnClientReset, SESSION, 1);
    let other = det(
        Protocol::OpenVpn,
        Message::OvpnControl,
        Strength::FollowUp,
        SERVER_SESSION,
        [0; 8],
    );
    assert_eq!(
        advance(&mut state.clone(), &other, true),
        Confirmation::Pending
    );
    let reverse = det(
        Protocol::OpenVpn,
        Message::OvpnControl,
        Strength::FollowUp,
        SESSION,
        [0; 8],
    );
    assert_eq!(
        advance(&mut state.clone(), &reverse, false),
        Confirmation::Pending
    );
}

#[test]
fn openvpn_data_and_repeated_client_resets_do_not_confirm() {
    let state = pending(Protocol::OpenVpn, Message::OvpnClientReset, SESSION, 1);
    let data = det(
        Protocol::OpenVpn,
        Message::OvpnData,
        Strength::FollowUp,
        SESSION,
        [0; 8],
    );
    assert_eq!(
        advance(&mut state.clone(), &data, false),
        Confirmation::Pending
    );
    let again = det(
        Protocol::OpenVpn,
        Message::OvpnClientReset,
        Strength::Weak,
        SESSION,
        [0; 8],
    );
    assert_eq!(
        advance(&mut state.clone(), &again, true),
        Confirmation::Pending
    );
}

#[test]
fn confirmation_needs_the_same_protocol() {
    let state = pending(Protocol::OpenVpn, Message::OvpnClientReset, SESSION, 1);
    let wg = det(
        Protocol::WireGuard,
        Message::WgData,
        Strength::Weak,
        SESSION,
        SESSION,
    );
    assert_eq!(
        advance(&mut state.clone(), &wg, false),
        Confirmation::Pending
    );
}

#[test]
fn only_pending_flows_are_confirmed() {
    for status in [
        FlowStatus::Blocked,
        FlowStatus::Allowed,
        FlowStatus::Monitored,
        FlowStatus::None,
    ] {
        let mut state = pending(Protocol::OpenVpn, Message::OvpnClientReset, SESSION, 1);
        state.status = status as u8;
        let reply = det(
            Protocol::OpenVpn,
            Message::OvpnServerReset,
            Strength::FollowUp,
            SERVER_SESSION,
            SESSION,
        );
        assert_eq!(
            advance(&mut state.clone(), &reply, false),
            Confirmation::Pending,
            "{status:?}"
        );
    }
}

#[test]
fn a_pending_entry_with_an_unknown_message_is_never_confirmed() {
    let mut state = pending(Protocol::OpenVpn, Message::OvpnClientReset, SESSION, 1);
    state.message = 200;
    let reply = det(
        Protocol::OpenVpn,
        Message::OvpnServerReset,
        Strength::FollowUp,
        SERVER_SESSION,
        SESSION,
    );
    assert_eq!(
        advance(&mut state.clone(), &reply, false),
        Confirmation::Pending
    );
}

// ---------------------------------------------------------------------------------------
// Properties over many payloads
// ---------------------------------------------------------------------------------------

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // SplitMix64.
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Random payloads, half of them starting with a head the prefilters care about.
fn random_payload(rng: &mut Rng) -> Vec<u8> {
    let len = match rng.below(4) {
        0 => rng.below(16) as usize,
        1 => rng.below(80) as usize,
        2 => [14, 26, 42, 54, 64, 92, 100, 148, 156, 204, 353][rng.below(11) as usize],
        _ => rng.below(1500) as usize,
    };
    let mut p: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
    let heads: [&[u8]; 10] = [
        &[1, 0, 0, 0],
        &[2, 0, 0, 0],
        &[3, 0, 0, 0],
        &[4, 0, 0, 0],
        &[0x38],
        &[0x40],
        &[0x16, 0xfe, 0xfd],
        &[0xc8, 0x02],
        &[0x54, 0x53, 0xf0, 0x9f, 0x92, 0xac],
        b"IP=",
    ];
    if rng.below(2) == 0 {
        let h = heads[rng.below(heads.len() as u64) as usize];
        let n = h.len().min(p.len());
        p[..n].copy_from_slice(&h[..n]);
    }
    p
}

#[test]
fn udp_prefilter_never_rejects_what_the_classifier_would_start_a_flow_from() {
    let mut rng = Rng(0x5eed_0001);
    let ports = [53u16, 123, 443, 500, 1194, 1701, 4500, 51820, 40000];
    for _ in 0..200_000 {
        let p = random_payload(&mut rng);
        let sport = ports[rng.below(ports.len() as u64) as usize];
        let dport = ports[rng.below(ports.len() as u64) as usize];
        if let Some(d) = udp_any(sport, dport, &p) {
            if d.strength != Strength::FollowUp {
                // The heuristics are reached through the second look (bytes 8..32).
                let mut h = [0u8; 24];
                if p.len() >= 32 {
                    h.copy_from_slice(&p[8..32]);
                }
                let second = udp_second_look(sport, dport, p.len(), 0, &h);
                // (A follow-up whose protocol has no live flow gets the second look too.)
                let pre = match udp_pre(sport, dport, &p) {
                    Prefilter::No | Prefilter::FollowUp(..)
                        if second == (SecondLook::Inspect { ike_port: false }) =>
                    {
                        Prefilter::Inspect
                    }
                    pre => pre,
                };
                assert_eq!(
                    pre,
                    Prefilter::Inspect,
                    "{sport}->{dport} {d:?} {:02x?}",
                    &p[..p.len().min(16)]
                );
            }
        }
    }
}

#[test]
fn tcp_prefilter_never_rejects_what_the_classifier_would_start_a_flow_from() {
    let mut rng = Rng(0x5eed_0002);
    for _ in 0..200_000 {
        let mut p = random_payload(&mut rng);
        if rng.below(2) == 0 && p.len() >= 2 {
            let n = (p.len() - 2) as u16;
            p[..2].copy_from_slice(&n.to_be_bytes());
        }
        if let Some(d) = tcp(&p) {
            if d.strength != Strength::FollowUp {
                assert_eq!(
                    tcp_pre(&p),
                    Prefilter::Inspect,
                    "{d:?} {:02x?}",
                    &p[..p.len().min(16)]
                );
            }
        }
    }
}

#[test]
fn classifiers_never_panic_on_any_length_or_content() {
    let mut rng = Rng(0x5eed_0003);
    for _ in 0..100_000 {
        let p = random_payload(&mut rng);
        let len = if rng.below(8) == 0 {
            rng.below(70_000) as usize
        } else {
            p.len()
        };
        let w = win(&p);
        let _ = classify_udp(rng.next() as u16, rng.next() as u16, len, &w);
        let _ = classify_udp(500, 4500, len, &w);
        let _ = classify_tcp(len, &w);
        let _ = udp_prefilter(rng.next() as u16, 500, len, head(&p));
        let _ = tcp_prefilter(len, head(&p));
    }
}

// ---------------------------------------------------------------------------------------
// Collision guards added after the false-positive review
// ---------------------------------------------------------------------------------------

/// A DNS query with id 0x0100 and flags 0 (RD clear, as resolvers ask authoritative servers)
/// starts `01 00 00 00` like a WireGuard initiation.
fn dns_query_like_wireguard(len: usize) -> Vec<u8> {
    // id 0x0100, flags 0, qdcount 1, ancount 0, nscount 0, arcount 0, then the question.
    padded(
        &[
            0x01, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        ],
        len,
        53,
    )
}

#[test]
fn dns_message_on_port_53_shaped_like_a_wireguard_initiation_is_not_wireguard() {
    let p = dns_query_like_wireguard(148);
    assert_eq!(udp(40000, 53, &p), None);
    assert_eq!(udp(53, 40000, &p), None);
}

#[test]
fn wireguard_initiation_on_port_53_with_an_ordinary_sender_index_is_still_detected() {
    let p = wg(1, 148, [0x9a, 0x21, 0x33, 0x04], [0; 4]);
    let d = udp(40000, 53, &p).expect("WireGuard on port 53 is still WireGuard");
    assert_eq!(d.message, Message::WgInitiation);
}

#[test]
fn udp_4500_payload_with_a_reserved_spi_is_not_esp() {
    // SPI 1..=255 is reserved (RFC 4303): not ESP.
    let p = padded(&[0, 0, 0, 7, 0, 0, 0, 1], 64, 4500);
    assert_eq!(udp(4500, 4500, &p), None);
}

#[test]
fn udp_4500_payload_with_sequence_number_zero_is_not_esp() {
    let p = padded(&[0x12, 0x34, 0x56, 0x78, 0, 0, 0, 0], 64, 4501);
    assert_eq!(udp(4500, 4500, &p), None);
}

#[test]
fn udp_4500_payload_with_a_valid_spi_and_sequence_is_esp() {
    let p = padded(&[0x12, 0x34, 0x56, 0x78, 0, 0, 0, 1], 136, 4502);
    let d = udp(4500, 4500, &p).expect("ESP-in-UDP");
    assert_eq!((d.protocol, d.message), (Protocol::Esp, Message::EspUdp));
}

fn esp(spi: u32, seq: u32) -> Detection {
    let mut t = [0u8; 8];
    t[..4].copy_from_slice(&spi.to_be_bytes());
    t[4..].copy_from_slice(&seq.to_be_bytes());
    det(Protocol::Esp, Message::EspUdp, Strength::Weak, t, [0; 8])
}

#[test]
fn esp_in_udp_is_confirmed_by_a_rising_sequence_and_the_other_sides_own_spi() {
    let mut state = pending(Protocol::Esp, Message::EspUdp, esp(0x453e_c8e3, 1).token, 1);
    assert_eq!(
        advance(&mut state, &esp(0x453e_c8e3, 2), true),
        Confirmation::Pending,
        "one side alone is not enough"
    );
    assert_eq!(
        advance(&mut state, &esp(0xc1a0_0b17, 1), false),
        Confirmation::Confirmed
    );
    let mut state = pending(Protocol::Esp, Message::EspUdp, esp(0x453e_c8e3, 1).token, 1);
    assert_eq!(
        advance(&mut state, &esp(0xc1a0_0b17, 1), false),
        Confirmation::Pending
    );
    assert_eq!(
        advance(&mut state, &esp(0x453e_c8e3, 3), true),
        Confirmation::Confirmed
    );
}

#[test]
fn esp_shaped_dns_replies_and_repeats_do_not_confirm() {
    // A DNS query from port 4500 (id 0x1c2d, RD, one question) and its answer.
    let mut state = pending(
        Protocol::Esp,
        Message::EspUdp,
        esp(0x1c2d_0100, 0x0001_0000).token,
        1,
    );
    for _ in 0..3 {
        assert_eq!(
            advance(&mut state, &esp(0x1c2d_8180, 0x0001_0001), false),
            Confirmation::Pending
        );
        assert_eq!(
            advance(&mut state, &esp(0x1c2d_0100, 0x0001_0000), true),
            Confirmation::Pending,
            "a retransmitted query does not advance the sequence number"
        );
        assert_eq!(
            advance(&mut state, &esp(0x7a11_0100, 0x0001_0000), true),
            Confirmation::Pending,
            "another query is another SPI"
        );
    }
    // A jump larger than the window is not the same SA making progress.
    assert_eq!(
        advance(
            &mut state,
            &esp(0x1c2d_0100, 0x0001_0000 + ESP_SEQ_WINDOW + 1),
            true
        ),
        Confirmation::Pending
    );
}

#[test]
fn a_second_client_token_lets_the_reply_confirm_without_echoing_the_first() {
    // A decoy reset with another session id, then the server answers the real one.
    let mut state = pending(Protocol::OpenVpn, Message::OvpnClientReset, [9; 8], 1);
    let real = det(
        Protocol::OpenVpn,
        Message::OvpnClientReset,
        Strength::Weak,
        SESSION,
        [0; 8],
    );
    assert_eq!(advance(&mut state, &real, true), Confirmation::Pending);
    let reply = det(
        Protocol::OpenVpn,
        Message::OvpnServerReset,
        Strength::FollowUp,
        SERVER_SESSION,
        SESSION,
    );
    assert_eq!(advance(&mut state, &reply, false), Confirmation::Confirmed);
    assert_eq!(
        state.peer_token, SERVER_SESSION,
        "the server's session is learned"
    );
}

#[test]
fn a_tls_crypt_v2_continuation_must_repeat_the_resets_packet_id_time() {
    let mut state = pending(Protocol::OpenVpn, Message::OvpnClientReset, SESSION, 1);
    state.aux = [0x6b, 0x0c, 0x8a, 0x60];
    let mut control = det(
        Protocol::OpenVpn,
        Message::OvpnControl,
        Strength::FollowUp,
        SESSION,
        [0; 8],
    );
    control.aux = [0x13, 0x37, 0x00, 0x42];
    assert_eq!(
        advance(&mut state.clone(), &control, true),
        Confirmation::Pending
    );
    control.aux = state.aux;
    assert_eq!(
        advance(&mut state.clone(), &control, true),
        Confirmation::Confirmed
    );
}

#[test]
fn only_packets_carrying_a_blocked_flows_tokens_belong_to_it() {
    let mut state = pending(Protocol::OpenVpn, Message::OvpnClientReset, SESSION, 1);
    state.status = FlowStatus::Blocked as u8;
    state.peer_token = SERVER_SESSION;
    let control = |t| {
        det(
            Protocol::OpenVpn,
            Message::OvpnControl,
            Strength::FollowUp,
            t,
            [0; 8],
        )
    };
    assert!(belongs(&state, &control(SESSION)));
    assert!(belongs(&state, &control(SERVER_SESSION)));
    // An NTP request (0x23: opcode 4, key id 3) on the same 5-tuple.
    assert!(!belongs(&state, &control([0, 6, 0x20, 0, 0, 0, 0, 0])));
    // Data: only once the flow carried data while allowed, with the same peer id.
    let mut data = det(
        Protocol::OpenVpn,
        Message::OvpnData,
        Strength::FollowUp,
        [0; 8],
        [0; 8],
    );
    data.aux = [0x48, 0, 0, 1];
    assert!(!belongs(&state, &data));
    state.data_head = [0x48, 0, 0, 1];
    assert!(belongs(&state, &data));
    data.aux = [0x48, 0, 0, 2];
    assert!(!belongs(&state, &data));
    // WireGuard data: the receiver index must be one side's.
    let mut wg = pending(Protocol::WireGuard, Message::WgData, token4(WG_RECEIVER), 4);
    wg.status = FlowStatus::Blocked as u8;
    let wgd = |t| {
        det(
            Protocol::WireGuard,
            Message::WgData,
            Strength::Weak,
            t,
            [0; 8],
        )
    };
    assert!(belongs(&wg, &wgd(token4(WG_RECEIVER))));
    assert!(!belongs(&wg, &wgd(token4([1, 2, 3, 4]))));
    // Strict handshake layouts belong whatever their tokens.
    let reset = det(
        Protocol::OpenVpn,
        Message::OvpnClientReset,
        Strength::Weak,
        [7; 8],
        [0; 8],
    );
    assert!(belongs(&state, &reset));
}

fn bytes_16_32(p: &[u8]) -> [u8; 16] {
    let mut h = [0u8; 16];
    h.copy_from_slice(&p[16..32]);
    h
}

#[test]
fn ike_on_any_udp_port_is_recognised_by_its_header_with_or_without_the_marker() {
    // strongSwan with `port = 51000`: no marker.
    let plain = ikev2_sa_init(352);
    assert!(ike_any_port_prefilter(plain.len(), bytes_16_32(&plain)));
    assert_detects(
        udp(40000, 51000, &plain),
        Protocol::Ike,
        Message::IkeSaInit,
        Strength::Strong,
    );
    // `port_nat_t = 4501`: four zero bytes, then IKE.
    let mut marked = vec![0, 0, 0, 0];
    marked.extend_from_slice(&plain);
    assert!(ike_any_port_prefilter(marked.len(), bytes_16_32(&marked)));
    assert_detects(
        udp(40000, 4501, &marked),
        Protocol::Ike,
        Message::IkeSaInit,
        Strength::Strong,
    );
}

#[test]
fn ike_any_port_prefilter_needs_the_length_to_match_the_datagram() {
    let plain = ikev2_sa_init(352);
    assert!(!ike_any_port_prefilter(
        plain.len() + 1,
        bytes_16_32(&plain)
    ));
    assert!(udp(40000, 51000, &plain[..300]).is_none());
    // DNS and random payloads on odd ports.
    let dns = hex("12340100000100000000000003777777076578616d706c6503636f6d0000010001");
    assert!(!ike_any_port_prefilter(dns.len(), bytes_16_32(&dns)));
    for seed in 0..2000u64 {
        let p = padded(&[], 64 + (seed as usize % 900), seed);
        assert!(
            !ike_any_port_prefilter(p.len(), bytes_16_32(&p)),
            "random payload {seed} passed the IKE prefilter"
        );
    }
}

#[test]
fn on_a_port_that_carried_ike_ike_stays_ike_and_esp_shapes_are_weak_esp() {
    let plain = ikev2_sa_init(352);
    assert_detects(
        classify_udp_on(40000, 51000, plain.len(), &win(&plain), true),
        Protocol::Ike,
        Message::IkeSaInit,
        Strength::Strong,
    );
    let mut esp = vec![0x11, 0x22, 0x33, 0x44, 0, 0, 0, 1];
    esp.extend_from_slice(&[0xab; 120]);
    assert_detects(
        classify_udp_on(40000, 51000, esp.len(), &win(&esp), true),
        Protocol::Esp,
        Message::EspUdp,
        Strength::Weak,
    );
    // Without the mark, the same bytes on that port are nothing.
    assert!(classify_udp_on(40000, 51000, esp.len(), &win(&esp), false).is_none());
}

// ---------------------------------------------------------------------------------------
// The fully-encrypted rule (encrypted.rs)
// ---------------------------------------------------------------------------------------

fn fet(p: &[u8]) -> bool {
    encrypted::fully_encrypted(&win(p), p.len().min(WINDOW))
}

#[test]
fn random_first_payloads_are_fully_encrypted() {
    let mut rng = Rng(0x5eed_fe70);
    let mut flagged = 0;
    for _ in 0..10_000 {
        let len = 24 + rng.below(400) as usize;
        let p: Vec<u8> = (0..len).map(|_| rng.below(256) as u8).collect();
        flagged += fet(&p) as u32;
    }
    // Random bytes fail an exemption only by chance (a printable first six bytes: 1 in
    // 390; a popcount outside 3.4..4.6 on short payloads).
    assert!(
        flagged > 9_800,
        "{flagged} of 10000 random payloads flagged"
    );
}

#[test]
fn each_exemption_of_the_rule_holds() {
    let mut rng = Rng(0x5eed_fe71);
    let random: Vec<u8> = (0..96).map(|_| rng.below(256) as u8).collect();
    let mut base = random.clone();
    base[0] = 0x9c; // not printable, not TLS
    assert!(fet(&base), "the base payload is flagged");
    // Ex1: too few or too many set bits.
    assert!(!fet(&[0x01; 96]));
    assert!(!fet(&[0xef; 96]));
    // Ex2: six printable bytes first.
    let mut p = base.clone();
    p[..6].copy_from_slice(b"abcdef");
    assert!(!fet(&p));
    // Ex3: more than half printable.
    let p: Vec<u8> = (0..96)
        .map(|i| {
            if i % 3 == 0 {
                0x9c
            } else {
                b'k' + (i % 7) as u8
            }
        })
        .collect();
    assert!(!fet(&p));
    // Ex4: a printable run of 21.
    let mut p = base.clone();
    p[30..51].copy_from_slice(b"ABCDEFGHIJKLMNOPQRSTU");
    assert!(!fet(&p));
    // Ex5: TLS records, HTTP requests.
    let mut p = base.clone();
    p[..3].copy_from_slice(&[0x16, 0x03, 0x01]);
    assert!(!fet(&p));
    let mut p = base.clone();
    p[..4].copy_from_slice(b"POST");
    assert!(!fet(&p));
    // STUN's cookie; too short.
    let mut p = base.clone();
    p[4..8].copy_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
    assert!(!fet(&p));
    assert!(!fet(&base[..23]));
}

#[test]
fn udp_candidates_leave_out_dns_quic_rtp_and_short_datagrams() {
    assert!(encrypted::udp_candidate(40000, 8388, 100, [0x3c, 1, 2, 3]));
    for port in [53u16, 123, 443, 500, 4500, 3478] {
        assert!(
            !encrypted::udp_candidate(40000, port, 100, [0x3c, 1, 2, 3]),
            "port {port}"
        );
    }
    assert!(!encrypted::udp_candidate(40000, 8388, 23, [0x3c, 1, 2, 3]));
    assert!(
        !encrypted::udp_candidate(40000, 8388, 100, [0x80, 0x60, 1, 2]),
        "RTP"
    );
    assert!(
        !encrypted::udp_candidate(40000, 8388, 1200, [0xc3, 0, 0, 0]),
        "QUIC v1"
    );
    assert!(
        !encrypted::udp_candidate(40000, 8388, 1200, [0xd1, 0x6b, 0x33, 0x43]),
        "QUIC v2"
    );
}

#[test]
fn rtp_and_rtcp_are_exempt_but_a_random_first_byte_rarely_is() {
    // RTP as senders send it (no CSRC; padding, extension and marker bits free) and RTCP
    // (SR, RR, SDES, BYE, RFC 4585 feedback, XR).
    for head in [
        [0x80, 0x00, 0x12, 0x34],
        [0x80, 0x6f, 0x12, 0x34],
        [0x90, 0xe0, 0x12, 0x34],
        [0xa0, 0x08, 0x12, 0x34],
        [0xb0, 0x7f, 0x12, 0x34],
        [0x80, 0xc8, 0x00, 0x06],
        [0x81, 0xc9, 0x00, 0x07],
        [0x81, 0xca, 0x00, 0x03],
        [0x8f, 0xce, 0x00, 0x04],
        [0x81, 0xcd, 0x00, 0x04],
        [0x80, 0xcf, 0x00, 0x04],
    ] {
        assert!(encrypted::exempt_udp_head(head), "{head:02x?}");
    }
    // Random first bytes (a Shadowsocks salt): "version 2" alone exempted one in four, so a
    // one-datagram conversation passed the rule one time in sixteen (its reply is judged as
    // new). The exemption now takes about one in 40.
    let mut rng = Rng(0x5eed_0e17);
    let exempt = (0..100_000)
        .filter(|_| {
            let h = [
                rng.below(256) as u8,
                rng.below(256) as u8,
                rng.below(256) as u8,
                rng.below(256) as u8,
            ];
            encrypted::exempt_udp_head(h)
        })
        .count();
    assert!(
        exempt < 3_000,
        "{exempt} of 100000 random first bytes are exempt as RTP/RTCP/QUIC"
    );
}

// ---------------------------------------------------------------------------------------
// TLS ClientHello server names (sni.rs)
// ---------------------------------------------------------------------------------------

mod sni_walk {
    use std::collections::HashSet;

    use vpn_filter_common::{domain_hash, SNI_MAX_NAME};

    use crate::classify::sni::{self, Bytes, Name, Walk};

    /// A segment as the kernel reads it: bytes beyond it are not there.
    struct Seg<'a>(&'a [u8]);

    impl Bytes for Seg<'_> {
        fn load<const N: usize>(&self, at: usize) -> Option<[u8; N]> {
            self.0.get(at..at + N)?.try_into().ok()
        }
    }

    fn ext(ty: u16, data: &[u8]) -> Vec<u8> {
        let mut e = ty.to_be_bytes().to_vec();
        e.extend_from_slice(&(data.len() as u16).to_be_bytes());
        e.extend_from_slice(data);
        e
    }

    fn sni_ext(host: &str) -> Vec<u8> {
        let n = host.as_bytes();
        let mut d = ((n.len() + 3) as u16).to_be_bytes().to_vec();
        d.push(0);
        d.extend_from_slice(&(n.len() as u16).to_be_bytes());
        d.extend_from_slice(n);
        ext(0, &d)
    }

    /// A ClientHello record: 32-byte session id, three suites, the extensions in order.
    fn hello(exts: &[Vec<u8>]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend_from_slice(&[0x5a; 32]);
        body.push(32);
        body.extend_from_slice(&[0xa5; 32]);
        body.extend_from_slice(&[0, 6, 0x13, 1, 0x13, 2, 0x13, 3, 1, 0]);
        let all: Vec<u8> = exts.concat();
        body.extend_from_slice(&(all.len() as u16).to_be_bytes());
        body.extend_from_slice(&all);
        let l = (body.len() as u32).to_be_bytes();
        let mut hs = vec![1, l[1], l[2], l[3]];
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    /// Chrome-like: GREASE, supported_versions, a post-quantum key share (X25519MLKEM768,
    /// 1,216 bytes of key material), then the SNI last: about 1.8 KB.
    fn pq_hello(host: &str) -> Vec<u8> {
        let mut ks = vec![0x04, 0xc6, 0x11, 0xec, 0x04, 0xc0];
        ks.extend_from_slice(&vec![0x77; 1216]);
        ks.extend_from_slice(&[0, 0x1d, 0, 32]);
        ks.extend_from_slice(&[0x33; 32]);
        hello(&[
            ext(0x0a0a, &[]),
            ext(0x002b, &[4, 3, 4, 3, 3]),
            ext(0x0033, &ks),
            ext(0x0010, b"\x00\x0c\x02h2\x08http/1.1"),
            ext(0x0015, &[0; 300]),
            sni_ext(host),
        ])
    }

    fn name_of(seg: &[u8], w: Walk) -> Option<String> {
        match w {
            Walk::Name { off, len } => Some(String::from_utf8_lossy(&seg[off..off + len]).into()),
            _ => None,
        }
    }

    fn listed(list: &[&str], host: &str) -> bool {
        let set: HashSet<u64> = list.iter().map(|d| domain_hash(d.as_bytes())).collect();
        let mut name = Name {
            len: host.len() as u64,
            bytes: [0; SNI_MAX_NAME],
        };
        let n = host.len().min(SNI_MAX_NAME);
        name.bytes[..n].copy_from_slice(&host.as_bytes()[..n]);
        sni::name_listed(&name, |h| set.contains(&h))
    }

    #[test]
    fn the_server_name_is_found_in_a_whole_client_hello() {
        let p = hello(&[ext(0x002b, &[2, 3, 4]), sni_ext("api.windscribe.com")]);
        let w = sni::client_hello(&Seg(&p), p.len());
        assert_eq!(name_of(&p, w).as_deref(), Some("api.windscribe.com"));
    }

    #[test]
    fn a_split_client_hello_continues_in_the_next_segment() {
        let p = pq_hello("engage.cloudflareclient.com");
        assert!(p.len() > 1700, "{}", p.len());
        let cut = 1448;
        let (a, b) = p.split_at(cut);
        let Walk::Continue {
            skip,
            end,
            carry: 0,
        } = sni::client_hello(&Seg(a), a.len())
        else {
            panic!("the first segment must leave the walk for the second");
        };
        let w = sni::walk_extensions(&Seg(b), b.len(), skip, end);
        assert_eq!(
            name_of(b, w).as_deref(),
            Some("engage.cloudflareclient.com")
        );
        // Whole, in one (GRO or jumbo) segment.
        let w = sni::client_hello(&Seg(&p), p.len());
        assert_eq!(
            name_of(&p, w).as_deref(),
            Some("engage.cloudflareclient.com")
        );
    }

    /// The kernel's walk over a ClientHello cut at `cuts`: the first segment from the record
    /// header, each later one as one stream after the bytes the walk carried.
    fn walk_segments(p: &[u8], cuts: &[usize]) -> Option<String> {
        let mut bounds = vec![0];
        bounds.extend_from_slice(cuts);
        bounds.push(p.len());
        let mut stream = p[..bounds[1]].to_vec();
        let mut w = sni::client_hello(&Seg(&stream), stream.len());
        for seg in bounds.windows(2).skip(1) {
            match w {
                Walk::Name { .. } => break,
                Walk::None => return None,
                Walk::Continue { skip, end, carry } => {
                    assert!(carry <= sni::MAX_CARRY && carry <= stream.len());
                    let mut next = stream[stream.len() - carry..].to_vec();
                    next.extend_from_slice(&p[seg[0]..seg[1]]);
                    stream = next;
                    w = sni::walk_extensions(&Seg(&stream), stream.len(), skip, end);
                }
            }
        }
        name_of(&stream, w)
    }

    #[test]
    fn a_server_name_cut_anywhere_is_read_across_segments() {
        let host = "engage.cloudflareclient.com";
        let p = pq_hello(host);
        let (start, _) = sni::hello_extensions(&Seg(&p)).expect("a ClientHello");
        let name = p
            .windows(host.len())
            .position(|w| w == host.as_bytes())
            .unwrap();
        // One boundary anywhere after the fixed fields (before them, the kernel reassembles
        // the stream head first).
        for cut in start..p.len() {
            assert_eq!(
                walk_segments(&p, &[cut]).as_deref(),
                Some(host),
                "cut at {cut}"
            );
        }
        // Two boundaries around the server_name extension: one-byte segments included.
        for a in name - 12..name + host.len() {
            for b in a + 1..(name + host.len() + 2).min(p.len()) {
                assert_eq!(
                    walk_segments(&p, &[a, b]).as_deref(),
                    Some(host),
                    "cuts at {a} and {b}"
                );
            }
        }
        // Every byte its own segment from the extension header on.
        let cuts: Vec<usize> = (name - 9..name + host.len()).collect();
        assert_eq!(walk_segments(&p, &cuts).as_deref(), Some(host));
    }

    #[test]
    fn malformed_client_hellos_are_left_alone() {
        let good = hello(&[sni_ext("a.windscribe.com")]);
        // Not a handshake record, not a ClientHello, a record major version other than 3
        // (any minor one is read: servers ignore it).
        for (i, v) in [(0, 0x17u8), (5, 2), (1, 2)] {
            let mut p = good.clone();
            p[i] = v;
            assert_eq!(sni::client_hello(&Seg(&p), p.len()), Walk::None, "{i}");
        }
        // Truncated anywhere: never a name read beyond the bytes present, never a panic.
        for cut in 0..good.len() {
            let p = &good[..cut];
            match sni::client_hello(&Seg(p), p.len()) {
                Walk::Name { off, len } => assert!(off + len <= p.len()),
                Walk::None | Walk::Continue { .. } => {}
            }
        }
        // Lengths that lie: extensions longer than the handshake, a session id over 32.
        let mut p = good.clone();
        let el = 5 + 4 + 2 + 32 + 1 + 32 + 2 + 6 + 2;
        p[el - 2] = 0xff;
        assert_eq!(sni::client_hello(&Seg(&p), p.len()), Walk::None);
        let mut p = good.clone();
        p[43] = 33;
        assert_eq!(sni::client_hello(&Seg(&p), p.len()), Walk::None);
        // An empty name, a name over 128 bytes.
        let p = hello(&[sni_ext("")]);
        assert_eq!(sni::client_hello(&Seg(&p), p.len()), Walk::None);
        let long = format!("{}.windscribe.com", "a".repeat(120));
        let p = hello(&[sni_ext(&long)]);
        assert_eq!(sni::client_hello(&Seg(&p), p.len()), Walk::None);
    }

    #[test]
    fn at_most_32_extensions_are_walked() {
        let mut exts: Vec<Vec<u8>> = (0..32).map(|i| ext(0x1000 + i, &[])).collect();
        exts.push(sni_ext("a.windscribe.com"));
        let p = hello(&exts);
        assert_eq!(sni::client_hello(&Seg(&p), p.len()), Walk::None);
        exts.remove(0);
        let p = hello(&exts);
        let w = sni::client_hello(&Seg(&p), p.len());
        assert_eq!(name_of(&p, w).as_deref(), Some("a.windscribe.com"));
    }

    #[test]
    fn names_match_listed_domains_and_their_subdomains_only() {
        let list = ["windscribe.com", "cloudflareclient.com"];
        assert!(listed(&list, "windscribe.com"));
        assert!(listed(&list, "api.windscribe.com"));
        assert!(listed(&list, "A.B.WindScribe.COM"));
        assert!(listed(&list, "engage.cloudflareclient.com"));
        assert!(!listed(&list, "notwindscribe.com"));
        assert!(!listed(&list, "windscribe.com.evil.example"));
        assert!(!listed(&list, "com"));
        assert!(!listed(&list, ".com"));
        assert!(!listed(&list, "cloudflare.com"));
        assert!(!listed(&list, "www.google.com"));
        // A name longer than the kernel reads is not matched.
        let long = format!("{}.windscribe.com", "a".repeat(SNI_MAX_NAME));
        assert!(!listed(&list, &long));
    }
}
