//! Ordinary traffic is never dropped, and the kernel agrees with a host model frame by frame.
//!
//! 1. The false-positive corpus (DNS, QUIC, TLS, STUN, WebRTC DTLS, RTP, NTP, ...), in
//!    realistic volumes and on the long-lived 5-tuples where flow state could build up,
//!    through the real program (BPF_PROG_TEST_RUN): nothing is dropped.
//! 2. A seeded random test: a few hundred thousand random frames and mutations (flipped bytes,
//!    truncations, lying lengths) of valid VPN and non-VPN frames. For every frame:
//!    - the program never returns XDP_ABORTED;
//!    - a frame is dropped only if it is a *VPN candidate*: the pure classifier (this crate's
//!      dependency `vpn-filter-ebpf`, run on the host on the payload the kernel would see)
//!      calls it `Strong`, or it belongs to a flow that an earlier `Strong`/`Weak` detection
//!      put in the flow table;
//!    - the action equals the host reference model's: the same header parse, the same
//!      classifier, and the flow rules of `decide` with `classify::confirms`.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr},
    time::Instant,
};

use vpn_filter::kernel::{Filter, LoadOptions, Policy};
use vpn_filter_common::{Config, Counter, FlowState, FlowStatus, PolicyMode, Protocol};
use vpn_filter_ebpf::{
    classify::{
        advance, belongs, classify_gre, classify_ip_proto, classify_tcp, classify_udp_on,
        is_standard_ike_port, ovpn_packet, tcp_prefilter, udp_prefilter, udp_second_look,
        wg_follow, Confirmation, Detection, Prefilter, SecondLook, Strength, OVPN_OBFS_MARK,
        PORT_MARK_IKE, PORT_MARK_OVPN_OBFS, WINDOW,
    },
    parse::{parse, Packet, FRAG_FIRST, FRAG_LATER},
};
use vpn_filter_tests::{
    corpus::{self, endpoints, Rng, NAMES},
    packet::*,
};

const XDP_ABORTED: u32 = 0;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// Timeouts far longer than any test, so the host model can ignore time.
fn timeless() -> Config {
    Config {
        blocked_flow_timeout_ns: 3_600_000_000_000,
        allowed_flow_timeout_ns: 3_600_000_000_000,
        pending_flow_timeout_ns: 3_600_000_000_000,
        fallback_timeout_ns: 3_600_000_000_000,
        ..Config::default()
    }
}

fn load(config: &Config) -> Filter {
    vpn_filter_tests::require_root();
    let mut f = Filter::load(LoadOptions::default(), &Policy::default(), config)
        .expect("the program loads through the verifier");
    // The shipped VPN domain list, as `vpn-filter run` loads it without --vpn-domains.
    f.sync_vpn_domains(&vpn_filter::domains::DomainList::builtin())
        .expect("sync the VPN domain list");
    f
}

// ---------------------------------------------------------------------------------------
// 1. The false-positive corpus
// ---------------------------------------------------------------------------------------

/// Runs frames; returns the indices of dropped frames (panics on XDP_ABORTED).
fn drops(filter: &Filter, frames: &[Vec<u8>]) -> Vec<usize> {
    let mut out = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        let a = filter.run_frame(f).expect("BPF_PROG_TEST_RUN");
        assert_ne!(a, XDP_ABORTED, "frame {i}: XDP_ABORTED");
        if a == XDP_DROP {
            out.push(i);
        }
    }
    out
}

fn assert_none_dropped(what: &str, frames: &[Vec<u8>]) {
    let filter = load(&Config::default());
    let dropped = drops(&filter, frames);
    let stats = filter.stats().unwrap();
    // tls_sni is monitored by default, so a false match would pass: it must not match at
    // all (the corpus holds browser ClientHellos, whole and split, naming unlisted hosts).
    let sni: u64 = vpn_filter_common::Verdict::ALL
        .iter()
        .map(|v| stats.verdict(Protocol::TlsSni, *v))
        .sum();
    assert_eq!(
        sni, 0,
        "{what}: {sni} tls_sni verdicts: {:?}",
        stats.verdicts
    );
    assert!(
        dropped.is_empty(),
        "{what}: {} of {} frames dropped, first: #{} {:02x?}\n{:?}",
        dropped.len(),
        frames.len(),
        dropped[0],
        &frames[dropped[0]][..frames[dropped[0]].len().min(96)],
        stats.verdicts
    );
}

/// Every group of the corpus (`vpn_filter_tests::corpus`, shared with `cargo xtask accuracy`)
/// from one generator, none dropped.
fn assert_generator_none_dropped(generator: corpus::Generator) {
    for group in generator() {
        assert_none_dropped(&group.name, &group.frames);
    }
}

#[test]
fn dns_queries_and_answers_for_every_id_are_never_dropped() {
    assert_generator_none_dropped(corpus::dns_one_port_per_query);
}

#[test]
fn dns_between_two_servers_on_one_five_tuple_is_never_dropped() {
    assert_generator_none_dropped(corpus::dns_server_to_server);
}

#[test]
fn quic_initial_and_handshake_long_headers_are_never_dropped() {
    assert_generator_none_dropped(corpus::quic_long_headers);
}

#[test]
fn quic_short_header_connections_are_never_dropped() {
    assert_generator_none_dropped(corpus::quic_short_headers);
}

#[test]
fn tls_http_and_ssh_on_tcp_are_never_dropped() {
    assert_generator_none_dropped(corpus::tls_http_ssh);
}

#[test]
fn stun_and_webrtc_dtls_are_never_dropped() {
    assert_generator_none_dropped(corpus::stun_webrtc_dtls);
}

#[test]
fn rtp_and_ntp_streams_are_never_dropped() {
    assert_generator_none_dropped(corpus::rtp_ntp);
}

#[test]
fn encrypted_udp_flows_with_openvpn_sized_packets_are_never_dropped() {
    assert_generator_none_dropped(corpus::encrypted_udp);
}

#[test]
fn dtls_1_3_records_with_connection_ids_are_never_dropped() {
    assert_generator_none_dropped(corpus::dtls13_connection_ids);
}

#[test]
fn every_corpus_generator_is_asserted_here() {
    let source = include_str!("false_positives.rs");
    for (name, _) in corpus::GENERATORS {
        assert!(
            source.contains(&format!("(corpus::{name})")),
            "corpus::{name} has no never-dropped test in tests/false_positives.rs"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 2. The host reference model
// ---------------------------------------------------------------------------------------

/// What the kernel's `parse` extracts: the kernel's own parser (`vpn_filter_ebpf::parse`),
/// run over the frame's bytes.
#[derive(Clone, Copy, Debug)]
struct Parsed {
    src: [u8; 16],
    dst: [u8; 16],
    family: u8,
    proto: u8,
    sport: u16,
    dport: u16,
    payload_off: usize,
    payload_len: usize,
    captured: usize,
    /// Dropped whatever it carries: a tiny first fragment (RFC 1858 evasion) or an IPv6
    /// extension header chain beyond the parser's limits (`--ext-header-overflow drop`).
    dropped_unparsed: bool,
    /// Outermost VLAN id (flows are keyed by it).
    vlan: u16,
    /// The first fragment of a fragmented datagram.
    first_fragment: bool,
}

fn be16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

/// `None` where the kernel passes the frame before classification (non-IP, truncated,
/// malformed, later fragment).
fn host_parse(f: &[u8]) -> Option<Parsed> {
    let mut pkt = Packet::default();
    let dropped_unparsed = match parse(f, false, &mut pkt) {
        Ok(()) if pkt.frag == FRAG_LATER => return None,
        Ok(()) => false,
        Err(Counter::TinyFragment | Counter::ExtHeaderLimit) => true,
        Err(_) => return None,
    };
    Some(Parsed {
        src: pkt.src,
        dst: pkt.dst,
        family: pkt.family,
        proto: pkt.ip_proto,
        sport: pkt.sport,
        dport: pkt.dport,
        payload_off: pkt.payload_off,
        payload_len: pkt.payload_len,
        captured: pkt.captured,
        dropped_unparsed,
        vlan: pkt.vlan,
        first_fragment: pkt.frag == FRAG_FIRST,
    })
}

/// The kernel's `detect`, without the flow gate: the detection, and whether it is a follow-up
/// decided by the prefilter alone (those need their protocol's gate open).
fn host_detect(
    f: &[u8],
    p: &Parsed,
    port_marks: &HashMap<u16, u64>,
    gates: &HashSet<u8>,
    flows: &HashMap<Key, FlowState>,
) -> Option<(Detection, bool)> {
    match p.proto {
        17 | 6 => {}
        47 => {
            if p.payload_off + 4 > f.len() {
                return None;
            }
            return classify_gre(f[p.payload_off..p.payload_off + 4].try_into().unwrap())
                .map(|d| (d, false));
        }
        50 | 51 => return classify_ip_proto(p.proto).map(|d| (d, false)),
        _ => return None,
    }
    // A TCP first fragment is a segment that goes on (see the program's `detect`).
    let len = if p.proto == 6 && p.first_fragment {
        0xffff
    } else {
        p.payload_len
    };
    if len < 4 || p.captured < 4 || p.payload_off + 4 > f.len() {
        return None;
    }
    let head: [u8; 4] = f[p.payload_off..p.payload_off + 4].try_into().unwrap();
    // As in the program: a follow-up without a live flow of its protocol on its 5-tuple,
    // and a datagram no first-look rule took, get the second look (port marks, bytes 8..32).
    // (The program's `flow_claims`: an allowed flow claims every packet, any other only
    // those that belong to it.)
    let claims = |protocol: Protocol, message: vpn_filter_common::Message| {
        if !gates.contains(&(protocol as u8)) {
            return false;
        }
        let Some(state) = flows.get(&key_of(p, protocol as u8, 0).0) else {
            return false;
        };
        if state.status == FlowStatus::Allowed as u8 {
            return true;
        }
        let mut token = [0u8; 8];
        if message == vpn_filter_common::Message::OvpnControl {
            if p.captured < 9 || p.payload_off + 9 > f.len() {
                return false;
            }
            token.copy_from_slice(&f[p.payload_off + 1..p.payload_off + 9]);
        }
        let det = Detection {
            protocol,
            message,
            strength: Strength::FollowUp,
            token,
            peer_token: [0; 8],
            aux: head,
        };
        belongs(state, &det)
    };
    let mut ike_port = false;
    let pre = if p.proto == 17 {
        let mut pre = udp_prefilter(p.sport, p.dport, len, head);
        if let Prefilter::FollowUp(protocol, message) = pre {
            if !claims(protocol, message) {
                pre = Prefilter::No;
            }
        }
        match pre {
            Prefilter::No => {
                let mark = |port| port_marks.get(&port).copied().unwrap_or(0);
                let marks = mark(p.sport) | mark(p.dport);
                let mut h = [0u8; 24];
                if len >= 28 && p.captured >= 32 {
                    if p.payload_off + 32 > f.len() {
                        return None;
                    }
                    h.copy_from_slice(&f[p.payload_off + 8..p.payload_off + 32]);
                }
                match udp_second_look(p.sport, p.dport, len, marks, &h) {
                    SecondLook::No => Prefilter::No,
                    SecondLook::Inspect { ike_port: i } => {
                        ike_port = i;
                        Prefilter::Inspect
                    }
                    SecondLook::OvpnObfuscated
                        if claims(
                            Protocol::OpenVpnObfuscated,
                            vpn_filter_common::Message::OvpnObfuscated,
                        ) =>
                    {
                        return Some((ovpn_packet(len, head, Strength::FollowUp), true));
                    }
                    // (The fully-encrypted rule's look: monitored under this policy.)
                    SecondLook::OvpnObfuscated => Prefilter::No,
                }
            }
            pre => pre,
        }
    } else {
        tcp_prefilter(len, head)
    };
    match pre {
        Prefilter::No => None,
        Prefilter::FollowUp(protocol, message) => {
            let mut token = [0u8; 8];
            let mut aux = head;
            if p.captured >= 9 {
                if p.payload_off + 9 > f.len() {
                    return None;
                }
                token.copy_from_slice(&f[p.payload_off + 1..p.payload_off + 9]);
            }
            if p.captured >= 17 && message == vpn_filter_common::Message::OvpnControl {
                if p.payload_off + 17 > f.len() {
                    return None;
                }
                aux.copy_from_slice(&f[p.payload_off + 13..p.payload_off + 17]);
            }
            Some((
                Detection {
                    protocol,
                    message,
                    strength: Strength::FollowUp,
                    token,
                    peer_token: [0; 8],
                    aux,
                },
                true,
            ))
        }
        Prefilter::Inspect => {
            let n = p.captured.min(WINDOW);
            if p.payload_off + n > f.len() {
                return None;
            }
            let mut w = [0u8; WINDOW];
            w[..n].copy_from_slice(&f[p.payload_off..p.payload_off + n]);
            let d = if p.proto == 17 {
                classify_udp_on(p.sport, p.dport, len, &w, ike_port)
            } else {
                classify_tcp(len, &w)
            };
            d.map(|d| (d, false))
        }
    }
}

/// Endpoints in canonical order, IP protocol, family, VPN protocol and class, VLAN.
type Key = ([u8; 16], u16, [u8; 16], u16, u8, u8, (u8, u8), u16);

fn flow_key(p: &Parsed, det: &Detection) -> (Key, bool) {
    let class = (det.message == vpn_filter_common::Message::WgData) as u8;
    key_of(p, det.protocol as u8, class)
}

fn key_of(p: &Parsed, protocol: u8, class: u8) -> (Key, bool) {
    let src_first = (p.src, p.sport) <= (p.dst, p.dport);
    let pc = (protocol, class);
    let key = if src_first {
        (
            p.src, p.sport, p.dst, p.dport, p.proto, p.family, pc, p.vlan,
        )
    } else {
        (
            p.dst, p.dport, p.src, p.sport, p.proto, p.family, pc, p.vlan,
        )
    };
    (key, src_first)
}

/// The flow table and gates of `decide` under policy enforce, nothing registered, timeless.
#[derive(Default)]
struct Model {
    flows: HashMap<Key, FlowState>,
    gates: HashSet<u8>,
    /// Marks of UDP ports (the program's `PORT_MARKS`).
    port_marks: HashMap<u16, u64>,
    /// Protocols the default policy monitors.
    monitored: HashSet<u8>,
    /// Closed (client, server) pairs, lower address first, and their VLAN (the program's
    /// `FALLBACK_PAIRS`): armed by a confirmed flow's drop; every later packet between the
    /// two in that VLAN is dropped.
    closed_pairs: HashSet<([u8; 16], [u8; 16], u16)>,
    /// The `fallback` policy is enforce (it is off by default).
    fallback_enforced: bool,
}

/// What the model says about one frame.
struct Judgement {
    action: u32,
    /// The classifier alone says Strong.
    strong: bool,
    /// Judged as part of a flow already in the table (blocked, or pending and confirmed).
    known_flow: bool,
    /// A tiny first fragment or an overlong extension header chain, dropped whatever it
    /// carries.
    tiny_fragment: bool,
}

impl Model {
    fn judge(&mut self, f: &[u8]) -> Judgement {
        let pass = Judgement {
            action: XDP_PASS,
            strong: false,
            known_flow: false,
            tiny_fragment: false,
        };
        let Some(p) = host_parse(f) else { return pass };
        if p.dropped_unparsed {
            return Judgement {
                action: XDP_DROP,
                tiny_fragment: true,
                ..pass
            };
        }
        let pair = if p.src <= p.dst {
            (p.src, p.dst, p.vlan)
        } else {
            (p.dst, p.src, p.vlan)
        };
        if self.closed_pairs.contains(&pair) {
            return Judgement {
                action: XDP_DROP,
                known_flow: true,
                ..pass
            };
        }
        let Some((det, gated)) = host_detect(f, &p, &self.port_marks, &self.gates, &self.flows)
        else {
            return pass;
        };
        if det.protocol == Protocol::Ike && p.proto == 17 {
            for port in [p.sport, p.dport] {
                if !is_standard_ike_port(port) {
                    *self.port_marks.entry(port).or_default() |= PORT_MARK_IKE;
                }
            }
        }
        // Heuristics are monitored under the default policy: judged (and remembered) as
        // under enforce, but passed.
        let monitored = self.monitored.contains(&(det.protocol as u8));
        let drop = if monitored { XDP_PASS } else { XDP_DROP };
        if gated && !self.gates.contains(&(det.protocol as u8)) {
            return pass;
        }
        let strong = det.strength == Strength::Strong;
        let protocol = det.protocol as u8;
        let (key, src_is_lo) = flow_key(&p, &det);
        let mut confirmed: Option<FlowState> = None;
        if let Some(state) = self.flows.get_mut(&key) {
            let same = (state.from_lo == 1) == src_is_lo;
            match FlowStatus::from_u8(state.status) {
                Some(FlowStatus::Blocked) => {
                    if belongs(state, &det) {
                        if det.message == vpn_filter_common::Message::WgObfuscatedData {
                            wg_follow(state, &det);
                        }
                        self.gates.insert(protocol);
                        return Judgement {
                            action: drop,
                            strong,
                            known_flow: true,
                            tiny_fragment: false,
                        };
                    }
                    if !strong {
                        return pass;
                    }
                }
                Some(FlowStatus::Pending) => {
                    let confirmation = advance(state, &det, same);
                    if state.flags & OVPN_OBFS_MARK != 0 {
                        state.flags &= !OVPN_OBFS_MARK;
                        for port in [p.sport, p.dport] {
                            *self.port_marks.entry(port).or_default() |= PORT_MARK_OVPN_OBFS;
                        }
                    }
                    match confirmation {
                        Confirmation::Confirmed => confirmed = Some(*state),
                        Confirmation::Pending => {
                            if !strong {
                                self.gates.insert(protocol);
                                return pass;
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        if det.strength == Strength::FollowUp && confirmed.is_none() {
            return pass;
        }
        let known_flow = confirmed.is_some();
        let mut state = confirmed.unwrap_or(FlowState {
            expires_ns: u64::MAX,
            token: det.token,
            packets: 1,
            aux: det.aux,
            protocol,
            message: det.message as u8,
            from_lo: src_is_lo as u8,
            ..Default::default()
        });
        if det.strength == Strength::Weak && !known_flow {
            state.status = FlowStatus::Pending as u8;
            self.gates.insert(protocol);
            self.flows.insert(key, state);
            return pass;
        }
        if known_flow && !monitored && self.fallback_enforced {
            // A confirmed handshake dropped: the pair is closed (fallback.rs).
            self.closed_pairs.insert(pair);
        }
        if known_flow {
            state.status = FlowStatus::Blocked as u8;
            self.gates.insert(protocol);
            self.flows.insert(key, state);
            if det.protocol == vpn_filter_common::Protocol::WireGuard && key.6 .1 == 0 {
                // A confirmed padded handshake blocks its transport data too.
                let mut data_key = key;
                data_key.6 .1 = vpn_filter_common::FLOW_CLASS_DATA;
                self.flows.insert(data_key, state);
            }
        }
        // Conclusive alone: dropped without a flow entry.
        Judgement {
            action: drop,
            strong,
            known_flow,
            tiny_fragment: false,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Frame generators for the random test
// ---------------------------------------------------------------------------------------

/// Endpoints of a VPN conversation and the message family it speaks, so later frames can
/// continue it (both directions) and reach pending and blocked flows.
#[derive(Clone, Copy)]
struct Conv {
    client: IpAddr,
    server: IpAddr,
    eport: u16,
    /// Index into [`FAMILIES`].
    family: usize,
    session: u64,
    vlan: Option<u16>,
}

/// Message kinds that share a flow (same ports), as ranges of `vpn_message` kinds.
const FAMILIES: [std::ops::Range<usize>; 12] = [
    0..4,
    4..6,
    6..10,
    10..12,
    12..13,
    13..15,
    15..16,
    16..18,
    18..20,
    20..22,
    22..23,
    23..26,
];

fn new_conv(rng: &mut Rng) -> Conv {
    let v6 = rng.chance(2);
    let (client, server) = endpoints(rng, v6);
    let vlan = if rng.chance(3) {
        Some(rng.below(4095) as u16)
    } else {
        None
    };
    Conv {
        client,
        server,
        eport: rng.ephemeral(),
        family: rng.below(FAMILIES.len() as u64) as usize,
        session: rng.next(),
        vlan,
    }
}

/// Adds L4 and payload to an IP frame, given the source and destination ports.
type Build = Box<dyn FnOnce(Frame, u16, u16) -> Frame>;

/// A valid VPN message of `conv`'s family, in a random direction.
fn vpn_frame(rng: &mut Rng, conv: &Conv) -> Vec<u8> {
    let kinds = FAMILIES[conv.family].clone();
    let kind = rng.range(kinds.start, kinds.end);
    let sid = conv.session;
    let peer = sid.rotate_left(17) ^ 0x5a5a_5a5a_5a5a_5a5a;
    let wraps = [
        OvpnWrap::Plain,
        TLS_AUTH_SHA1,
        OvpnWrap::TlsCrypt,
        OvpnWrap::TlsCryptV2 { wkc_len: 299 },
    ];
    let wrap = wraps[(sid % 4) as usize];
    // (from the client?, L4 + payload)
    let (c2s, build): (bool, Build) = match kind {
        0 => (
            true,
            Box::new(move |f, sp, dp| f.udp(sp, dp).payload(&wireguard_initiation(sid as u32))),
        ),
        1 => (
            false,
            Box::new(move |f, sp, dp| {
                f.udp(sp, dp)
                    .payload(&wireguard_response(peer as u32, sid as u32))
            }),
        ),
        2 => (
            false,
            Box::new(move |f, sp, dp| f.udp(sp, dp).payload(&wireguard_cookie(sid as u32))),
        ),
        3 => {
            let len = 32 + 16 * rng.below(80) as usize;
            (
                rng.chance(2),
                Box::new(move |f, sp, dp| {
                    f.udp(sp, dp).payload(&wireguard_data(sid as u32, 0, len))
                }),
            )
        }
        4 => {
            let len = rng.range(149, 405);
            (
                true,
                Box::new(move |f, sp, dp| {
                    f.udp(sp, dp)
                        .payload(&wireguard_padded_initiation(sid as u32, len))
                }),
            )
        }
        5 => {
            let len = rng.range(93, 405);
            (
                false,
                Box::new(move |f, sp, dp| {
                    f.udp(sp, dp)
                        .payload(&wireguard_padded_response(peer as u32, sid as u32, len))
                }),
            )
        }
        6 => (
            true,
            Box::new(move |f, sp, dp| f.udp(sp, dp).payload(&openvpn_client_reset(sid, wrap))),
        ),
        7 => (
            false,
            Box::new(move |f, sp, dp| {
                f.udp(sp, dp)
                    .payload(&openvpn_server_reset(peer, sid, wrap))
            }),
        ),
        8 => {
            let len = rng.range(10, 1100);
            (
                true,
                Box::new(move |f, sp, dp| {
                    f.udp(sp, dp)
                        .payload(&openvpn_control(sid, peer, wrap, 2, 1, len))
                }),
            )
        }
        9 => {
            let len = rng.range(8, 1400);
            (
                rng.chance(2),
                Box::new(move |f, sp, dp| f.udp(sp, dp).payload(&openvpn_data_v2(0, 1, len))),
            )
        }
        10 => (
            true,
            Box::new(move |f, sp, dp| {
                f.tcp(sp, dp)
                    .payload(&tcp_framed(&openvpn_client_reset(sid, wrap)))
            }),
        ),
        11 => (
            false,
            Box::new(move |f, sp, dp| {
                f.tcp(sp, dp)
                    .payload(&tcp_framed(&openvpn_server_reset(peer, sid, wrap)))
            }),
        ),
        12 => {
            let len = rng.range(200, 900);
            (
                rng.chance(2),
                Box::new(move |f, sp, dp| f.udp(sp, dp).payload(&ikev2_sa_init(sid | 1, len))),
            )
        }
        13 => {
            let len = rng.range(100, 900);
            (
                true,
                Box::new(move |f, sp, dp| {
                    f.udp(sp, dp)
                        .payload(&non_esp_marker(&ikev2_auth(sid | 1, peer, len)))
                }),
            )
        }
        14 => {
            let len = rng.range(16, 1400);
            (
                rng.chance(2),
                Box::new(move |f, sp, dp| {
                    f.udp(sp, dp)
                        .payload(&esp_in_udp(sid as u32 | 0x100, 1, len))
                }),
            )
        }
        15 => (
            true,
            Box::new(move |f, sp, dp| {
                f.tcp(sp, dp)
                    .payload(&iketcp_stream_start(&ikev2_sa_init(sid | 1, 352)))
            }),
        ),
        16 => {
            let body = rng.bytes_in(8, 200);
            (
                rng.chance(2),
                Box::new(move |f, _, _| f.esp(sid as u32, 1).payload(&body)),
            )
        }
        17 => {
            let body = rng.bytes_in(8, 200);
            (
                rng.chance(2),
                Box::new(move |f, _, _| f.ah(sid as u32, 1, 4).payload(&body)),
            )
        }
        18 => (
            true,
            Box::new(move |f, sp, dp| f.udp(sp, dp).payload(&l2tp_sccrq(sid as u16))),
        ),
        19 => (
            false,
            Box::new(move |f, sp, dp| f.udp(sp, dp).payload(&l2tp_zlb(sid as u16, 1, 1))),
        ),
        20 => (
            true,
            Box::new(move |f, sp, dp| f.tcp(sp, dp).payload(&pptp_sccrq())),
        ),
        21 => {
            let body = rng.bytes_in(4, 200);
            (
                rng.chance(2),
                Box::new(move |f, _, _| f.gre_pptp(sid as u16, Some(1), None).payload(&body)),
            )
        }
        22 => {
            let len = rng.range(62, 200);
            (
                rng.chance(2),
                Box::new(move |f, sp, dp| f.udp(sp, dp).payload(&tailscale_disco(len))),
            )
        }
        23 => (
            true,
            Box::new(move |f, sp, dp| f.udp(sp, dp).payload(&openconnect_dtls_client_hello())),
        ),
        24 => (
            true,
            Box::new(move |f, sp, dp| f.udp(sp, dp).payload(&cisco_dtls_client_hello())),
        ),
        _ => (
            true,
            Box::new(move |f, sp, dp| f.udp(sp, dp).payload(&softether_udp("203.0.113.5", 5555))),
        ),
    };
    let (src, dst) = if c2s {
        (conv.client, conv.server)
    } else {
        (conv.server, conv.client)
    };
    let mut f = match conv.vlan {
        Some(v) => Frame::eth().vlan(v),
        None => Frame::eth(),
    }
    .ip(src, dst);
    if src.is_ipv4() && rng.chance(8) {
        f = f.ipv4_options(&[1, 1, 1, 1]);
    }
    if src.is_ipv6() && rng.chance(8) {
        f = f.hop_by_hop().dest_opts();
    }
    // The server's port for the family; the client's is the conversation's ephemeral port.
    let server_port = [
        51820u16, 443, 1194, 1194, 500, 4500, 4500, 0, 1701, 1723, 41641, 443,
    ][conv.family];
    let server_port = if conv.family == 11 && kind == 25 {
        5555
    } else {
        server_port
    };
    let (sp, dp) = if c2s {
        (conv.eport, server_port)
    } else {
        (server_port, conv.eport)
    };
    build(f, sp, dp).build()
}

/// Ordinary traffic on random endpoints.
fn ordinary_frame(rng: &mut Rng) -> Vec<u8> {
    let v6 = rng.chance(2);
    let (c, s) = endpoints(rng, v6);
    let f = if rng.chance(4) {
        Frame::eth().vlan(rng.below(4095) as u16)
    } else {
        Frame::eth()
    }
    .ip(c, s);
    let e = rng.ephemeral();
    let id = rng.next() as u16;
    let f = match rng.below(11) {
        0 => f
            .udp(e, 53)
            .payload(&dns_query(id, NAMES[rng.below(8) as usize])),
        1 => f.udp(53, e).payload(&dns_answer(
            id,
            NAMES[rng.below(8) as usize],
            &[Ipv4Addr::new(192, 0, 2, 1)],
        )),
        2 => f
            .udp(e, 443)
            .payload(&quic_initial(&rng.bytes(8), &rng.bytes(8), 1200)),
        3 => f.udp(e, 443).payload(&quic_short(
            0x40 | (rng.next() as u8 & 0x3f),
            &rng.bytes(8),
            rng.range(30, 1350),
            rng.next(),
        )),
        4 => f.tcp(e, 443).payload(&tls_client_hello("example.com")),
        5 => f
            .udp(e, 3478)
            .payload(&stun_binding_request(rng.bytes(12).try_into().unwrap())),
        6 => f
            .udp(e, rng.ephemeral())
            .payload(&webrtc_dtls_client_hello(0)),
        7 => f.udp(e, rng.ephemeral()).payload(&rtp(
            96,
            id,
            0,
            rng.next() as u32,
            rng.range(20, 1200),
        )),
        8 => f.udp(e, 123).payload(&ntp_request()),
        9 => f.icmp_echo(id, 1).payload(&rng.bytes(56)),
        _ => f.gre_v0(0x0800).payload(&rng.bytes_in(20, 200)),
    };
    f.build()
}

/// Random bytes in plausible headers, on random ports.
fn random_frame(rng: &mut Rng) -> Vec<u8> {
    let v6 = rng.chance(2);
    let (c, s) = endpoints(rng, v6);
    let len = match rng.below(3) {
        0 => rng.range(0, 20),
        1 => rng.range(20, 200),
        _ => rng.range(200, 1400),
    };
    let mut payload = rng.bytes(len);
    // A share starts like something the prefilters look at.
    let heads: [&[u8]; 8] = [
        &[1, 0, 0, 0],
        &[2, 0, 0, 0],
        &[4, 0, 0, 0],
        &[0x38],
        &[0x50],
        &[0x16, 0xfe, 0xfd],
        &[0xc8, 0x02],
        b"IP=",
    ];
    if rng.chance(3) {
        let h = heads[rng.below(8) as usize];
        let n = h.len().min(payload.len());
        payload[..n].copy_from_slice(&h[..n]);
    }
    let ports = [
        53u16,
        123,
        443,
        500,
        1194,
        1701,
        1723,
        4500,
        51820,
        rng.ephemeral(),
        rng.ephemeral(),
    ];
    let sp = ports[rng.below(ports.len() as u64) as usize];
    let dp = ports[rng.below(ports.len() as u64) as usize];
    let f = Frame::eth().ip(c, s);
    match rng.below(8) {
        0..=4 => f.udp(sp, dp).payload(&payload),
        5 | 6 => f.tcp(sp, dp).payload(&payload),
        _ => f.ip_proto(rng.next() as u8).payload(&payload),
    }
    .build()
}

/// Offsets of the length fields of a built frame (IPv4 total length, IHL, IPv6 payload
/// length, UDP length, TCP data offset), found by walking the headers the builder wrote.
fn length_fields(f: &[u8]) -> Vec<(usize, bool)> {
    // (offset, is a 16-bit field)
    let mut out = Vec::new();
    let mut l3 = 14;
    let mut et = be16(f, 12);
    while et == 0x8100 || et == 0x88a8 {
        et = be16(f, l3 + 2);
        l3 += 4;
    }
    let (proto, l4) = match et {
        0x0800 => {
            out.push((l3 + 2, true));
            out.push((l3, false));
            (f[l3 + 9], l3 + (f[l3] & 0x0f) as usize * 4)
        }
        0x86dd => {
            out.push((l3 + 4, true));
            let mut next = f[l3 + 6];
            let mut off = l3 + 40;
            while matches!(next, 0 | 43 | 60 | 44) {
                out.push((off + 1, false));
                let step = if next == 44 {
                    8
                } else {
                    (f[off + 1] as usize + 1) * 8
                };
                next = f[off];
                off += step;
            }
            (next, off)
        }
        _ => return out,
    };
    match proto {
        17 => out.push((l4 + 4, true)),
        6 => out.push((l4 + 12, false)),
        _ => {}
    }
    out
}

/// Mutates a frame: flipped bytes (mostly in the payload), a truncation, a lying length, or
/// bytes inserted or removed in the middle.
fn mutate(rng: &mut Rng, mut f: Vec<u8>) -> Vec<u8> {
    match rng.below(5) {
        0 | 1 => {
            for _ in 0..rng.range(1, 5) {
                let at = if rng.chance(3) {
                    rng.range(12, f.len())
                } else {
                    f.len() - 1 - rng.below(f.len().min(80) as u64) as usize
                };
                f[at] ^= 1 << rng.below(8);
            }
        }
        2 => {
            let cut = rng.range(14, f.len() + 1);
            f.truncate(cut);
        }
        3 => {
            let fields = length_fields(&f);
            if !fields.is_empty() {
                let (at, wide) = fields[rng.below(fields.len() as u64) as usize];
                if wide {
                    let v = match rng.below(3) {
                        0 => rng.next() as u16,
                        1 => be16(&f, at).wrapping_add(rng.range(1, 9) as u16),
                        _ => be16(&f, at).wrapping_sub(rng.range(1, 9) as u16),
                    };
                    f[at..at + 2].copy_from_slice(&v.to_be_bytes());
                } else {
                    f[at] = rng.next() as u8;
                }
            }
        }
        _ => {
            let at = rng.range(14, f.len());
            if rng.chance(2) {
                let n = rng.range(1, 9).min(f.len() - at);
                f.drain(at..at + n);
            } else {
                let extra = rng.bytes_in(1, 9);
                f.splice(at..at, extra);
            }
            if f.len() < 14 {
                f.resize(14, 0);
            }
        }
    }
    f
}

#[test]
fn random_and_mutated_frames_are_dropped_only_when_they_are_vpn_candidates() {
    // The default policy with the fallback closure enforced (it is off by default), so the
    // model checks the closure too: after a confirmed drop every frame between the two
    // addresses is dropped, and nothing else is.
    let mut policy = Policy::default();
    policy.set(Protocol::Fallback, PolicyMode::Enforce);
    vpn_filter_tests::require_root();
    let filter = Filter::load(LoadOptions::default(), &policy, &timeless())
        .expect("the program loads through the verifier");
    let mut model = Model {
        monitored: Protocol::ALL
            .iter()
            .filter(|&&p| policy.mode(p) == PolicyMode::Monitor)
            .map(|&p| p as u8)
            .collect(),
        fallback_enforced: true,
        ..Model::default()
    };
    let mut rng = Rng(vpn_filter_tests::rng::seeded(0x5eed_f00d));
    let mut convs: Vec<Conv> = Vec::new();
    let started = Instant::now();
    let total = 300_000;
    let (mut dropped, mut strong_drops, mut flow_drops) = (0u64, 0u64, 0u64);
    let mut mismatches = Vec::new();
    for i in 0..total {
        let frame = match rng.below(10) {
            0..=2 => random_frame(&mut rng),
            3..=7 => {
                // Half the time a conversation already under way (its flow may be pending or
                // blocked), else a new one.
                let conv = if !convs.is_empty() && rng.chance(2) {
                    convs[rng.below(convs.len() as u64) as usize]
                } else {
                    let c = new_conv(&mut rng);
                    if convs.len() < 512 {
                        convs.push(c);
                    } else {
                        let k = rng.below(512) as usize;
                        convs[k] = c;
                    }
                    c
                };
                let f = vpn_frame(&mut rng, &conv);
                if rng.chance(2) {
                    mutate(&mut rng, f)
                } else {
                    f
                }
            }
            _ => {
                let f = ordinary_frame(&mut rng);
                if rng.chance(2) {
                    mutate(&mut rng, f)
                } else {
                    f
                }
            }
        };
        let got = filter.run_frame(&frame).expect("BPF_PROG_TEST_RUN");
        assert_ne!(got, XDP_ABORTED, "frame {i}: XDP_ABORTED for {frame:02x?}");
        assert!(
            got == XDP_PASS || got == XDP_DROP,
            "frame {i}: action {got}"
        );
        let want = model.judge(&frame);
        if got == XDP_DROP {
            dropped += 1;
            assert!(
                want.strong || want.known_flow || want.tiny_fragment,
                "frame {i} dropped but it is not a VPN candidate (not Strong alone, no known flow, not a tiny fragment): {:02x?}",
                &frame
            );
            if want.strong {
                strong_drops += 1;
            } else {
                flow_drops += 1;
            }
        }
        if got != want.action && mismatches.len() < 10 {
            mismatches.push(format!(
                "frame {i}: kernel {got}, model {}: {:02x?}",
                want.action,
                &frame[..frame.len().min(120)]
            ));
        }
    }
    let elapsed = started.elapsed();
    let stats = filter.stats().unwrap();
    eprintln!(
        "{total} frames in {elapsed:?}: {dropped} dropped ({strong_drops} strong alone, {flow_drops} on known flows); {} flows",
        model.flows.len()
    );
    assert!(
        mismatches.is_empty(),
        "kernel and model disagree:\n{}",
        mismatches.join("\n")
    );
    assert_eq!(stats.counter(Counter::FlowInsertFailed), 0, "{stats:?}");
    assert!(
        strong_drops > 10_000 && flow_drops > 1_000,
        "the generators reach both kinds of drop"
    );
}
