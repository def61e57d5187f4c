//! `vpn-filter replay`: the real program in the real kernel (loaded, never attached) judging
//! the packets of a capture. The fixtures are real VPN clients talking to real servers
//! (tests/fixtures/README.md: client 10.200.0.2 / fd00:200::2, server 10.200.0.1 /
//! fd00:200::1); the ordinary-traffic captures are written here from the false-positive
//! builders.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::Command,
};

use vpn_filter::{
    kernel::Policy,
    registry::{Allowlist, Feed},
    replay::{
        capture::CaptureError, replay, FlowResult, Outcome, Replay, ReplayError, ReplaySettings,
    },
};
use vpn_filter_common::{Message, PolicyMode, Protocol, Reason, Verdict};
use vpn_filter_tests::{
    lab::registry_json,
    netns::unique,
    packet::{
        dns_answer, dns_query, fill_pseudo_random, ntp_request, quic_initial, quic_short, rtp,
        stun_binding_request, tls_client_hello, webrtc_dtls_client_hello, wireguard_data, Frame,
        TCP_ACK, TCP_SYN,
    },
    require_root,
};

const CLIENT_V4: &str = "10.200.0.2";
const CLIENT_V6: &str = "fd00:200::2";

const FIXTURES: &[&str] = &[
    "ikev2-psk",
    "l2tp",
    "openconnect",
    "openvpn-tcp-tls-auth",
    "openvpn-tcp-tls-crypt",
    "openvpn-udp-plain",
    "openvpn-udp-tls-auth",
    "openvpn-udp-tls-crypt",
    "openvpn-udp-tls-crypt-v2",
    "openvpn-udp6-tls-auth",
    "pptp",
    "wireguard-ipv4",
    "wireguard-ipv6",
];

/// The VPN flows of each fixture: (IP protocol, server port, protocol). Every other flow of
/// the fixture is ordinary traffic (the TLS part of OpenConnect).
fn vpn_flows(fixture: &str) -> &'static [(u8, u16, Protocol)] {
    match fixture {
        "ikev2-psk" => &[(17, 500, Protocol::Ike), (17, 4500, Protocol::Ike)],
        "l2tp" => &[(17, 1701, Protocol::L2tp)],
        "openconnect" => &[(17, 443, Protocol::OpenConnectDtls)],
        "openvpn-tcp-tls-auth" | "openvpn-tcp-tls-crypt" => &[(6, 1194, Protocol::OpenVpn)],
        f if f.starts_with("openvpn-udp") => &[(17, 1194, Protocol::OpenVpn)],
        "pptp" => &[(6, 1723, Protocol::Pptp)],
        f if f.starts_with("wireguard") => &[(17, 51820, Protocol::WireGuard)],
        f => panic!("no expectations for fixture {f}"),
    }
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(format!("{name}.pcap"))
}

fn allowlist(registered: &[&str]) -> Allowlist {
    if registered.is_empty() {
        return Allowlist::default();
    }
    let json = registry_json(1, &[("REC-1", registered)]);
    let (feed, _) =
        Feed::from_json(json.as_bytes(), "test", Default::default()).expect("valid feed");
    feed.allowlist(time::OffsetDateTime::now_utc())
}

fn settings(registered: &[&str]) -> ReplaySettings {
    ReplaySettings {
        allowlist: allowlist(registered),
        keep_dropped: true,
        ..Default::default()
    }
}

/// Replays `path`; every verdict the program counted must be attributed to its packet.
fn run(path: &Path, settings: &ReplaySettings) -> Replay {
    require_root();
    let r = replay(path, settings, &mut |_, _| {})
        .unwrap_or_else(|e| panic!("replaying {}: {e}", path.display()));
    assert_eq!(
        r.attribution_gaps,
        0,
        "{}: per-packet verdicts do not add up to the program's counters",
        path.display()
    );
    r
}

fn replay_err(path: &Path) -> ReplayError {
    match replay(path, &settings(&[]), &mut |_, _| {}) {
        Ok(r) => panic!(
            "{} replayed without error ({} packets) but is damaged",
            path.display(),
            r.packets
        ),
        Err(e) => e,
    }
}

/// The fixtures' flows start with the client's packet: the destination is the server.
fn server_port(f: &FlowResult) -> u16 {
    f.dport
}

/// A file in the temp directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str, bytes: &[u8]) -> TempFile {
        let p = std::env::temp_dir().join(unique(tag));
        std::fs::write(&p, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", p.display()));
        TempFile(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A packet as a test writes or reads it: timestamp (ns since the epoch) and bytes.
type Packet = (u64, Vec<u8>);

/// Reads a little-endian microsecond pcap (what the fixtures are), independently of the
/// reader under test: header 24 bytes, then records of a 16-byte header and the data.
fn read_pcap(path: &Path) -> (u32, Vec<Packet>) {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    assert_eq!(
        u32_at(0),
        0xa1b2_c3d4,
        "{}: a LE microsecond pcap",
        path.display()
    );
    let linktype = u32_at(20);
    let mut out = Vec::new();
    let mut o = 24;
    while o + 16 <= b.len() {
        let ts = u32_at(o) as u64 * 1_000_000_000 + u32_at(o + 4) as u64 * 1_000;
        let caplen = u32_at(o + 8) as usize;
        out.push((ts, b[o + 16..o + 16 + caplen].to_vec()));
        o += 16 + caplen;
    }
    (linktype, out)
}

/// Offsets of each record in a pcap written by [`pcap`] or recorded by tcpdump.
fn record_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut o = 24;
    while o + 16 <= bytes.len() {
        offsets.push(o);
        let caplen = u32::from_le_bytes([bytes[o + 8], bytes[o + 9], bytes[o + 10], bytes[o + 11]]);
        o += 16 + caplen as usize;
    }
    offsets
}

/// A little-endian microsecond pcap.
fn pcap(linktype: u32, packets: &[Packet]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    b.extend_from_slice(&2u16.to_le_bytes());
    b.extend_from_slice(&4u16.to_le_bytes());
    b.extend_from_slice(&[0; 8]);
    b.extend_from_slice(&262_144u32.to_le_bytes());
    b.extend_from_slice(&linktype.to_le_bytes());
    for (ts, data) in packets {
        b.extend_from_slice(&((ts / 1_000_000_000) as u32).to_le_bytes());
        b.extend_from_slice(&((ts % 1_000_000_000 / 1_000) as u32).to_le_bytes());
        b.extend_from_slice(&(data.len() as u32).to_le_bytes());
        b.extend_from_slice(&(data.len() as u32).to_le_bytes());
        b.extend_from_slice(data);
    }
    b
}

fn pcapng_block(block_type: u32, body: &[u8]) -> Vec<u8> {
    let len = 12 + body.len().div_ceil(4) * 4;
    let mut b = block_type.to_le_bytes().to_vec();
    b.extend_from_slice(&(len as u32).to_le_bytes());
    b.extend_from_slice(body);
    b.resize(len - 4, 0);
    b.extend_from_slice(&(len as u32).to_le_bytes());
    b
}

/// A little-endian pcapng: one section, one interface with nanosecond timestamps
/// (if_tsresol 9), enhanced packet blocks.
fn pcapng(linktype: u32, packets: &[Packet]) -> Vec<u8> {
    let mut shb = 0x1a2b_3c4du32.to_le_bytes().to_vec();
    shb.extend_from_slice(&1u16.to_le_bytes());
    shb.extend_from_slice(&0u16.to_le_bytes());
    shb.extend_from_slice(&u64::MAX.to_le_bytes());
    let mut b = pcapng_block(0x0a0d_0d0a, &shb);
    let mut idb = (linktype as u16).to_le_bytes().to_vec();
    idb.extend_from_slice(&[0, 0]);
    idb.extend_from_slice(&262_144u32.to_le_bytes());
    // if_tsresol = 9, then opt_endofopt.
    idb.extend_from_slice(&[9, 0, 1, 0, 9, 0, 0, 0, 0, 0, 0, 0]);
    b.extend_from_slice(&pcapng_block(1, &idb));
    for (ts, data) in packets {
        let mut epb = 0u32.to_le_bytes().to_vec();
        epb.extend_from_slice(&((ts >> 32) as u32).to_le_bytes());
        epb.extend_from_slice(&(*ts as u32).to_le_bytes());
        epb.extend_from_slice(&(data.len() as u32).to_le_bytes());
        epb.extend_from_slice(&(data.len() as u32).to_le_bytes());
        epb.extend_from_slice(data);
        b.extend_from_slice(&pcapng_block(6, &epb));
    }
    b
}

/// Ethernet frame -> Linux cooked (SLL) packet: packet type, ARPHRD_ETHER, the source MAC
/// as link-layer address, the ethertype as protocol, then the frame's payload.
fn to_sll(frame: &[u8]) -> Vec<u8> {
    let mut p = vec![0, 0, 0, 1, 0, 6];
    p.extend_from_slice(&frame[6..12]);
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(&frame[12..14]);
    p.extend_from_slice(&frame[14..]);
    p
}

/// Ethernet frame -> Linux cooked v2 (SLL2) packet.
fn to_sll2(frame: &[u8]) -> Vec<u8> {
    let mut p = frame[12..14].to_vec();
    p.extend_from_slice(&[0, 0, 0, 0, 0, 2, 0, 1, 0, 6]);
    p.extend_from_slice(&frame[6..12]);
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(&frame[14..]);
    p
}

#[test]
fn fixtures_with_nothing_registered_drop_every_vpn_flow() {
    for name in FIXTURES {
        let r = run(&fixture(name), &settings(&[]));
        let expected = vpn_flows(name);
        for (ip_proto, port, protocol) in expected {
            let f = r
                .flows
                .iter()
                .find(|f| f.ip_proto == *ip_proto && server_port(f) == *port)
                .unwrap_or_else(|| panic!("{name}: no flow to port {port}: {:?}", r.flows));
            assert_eq!(f.protocol, *protocol, "{name}: protocol of {f:?}");
            assert_eq!(f.verdict, Outcome::Dropped, "{name}: verdict of {f:?}");
            assert!(
                f.message.is_some(),
                "{name}: a dropped flow names its message"
            );
        }
        for f in &r.flows {
            if !expected
                .iter()
                .any(|(p, port, _)| f.ip_proto == *p && server_port(f) == *port)
            {
                assert_eq!(
                    f.verdict,
                    Outcome::Unclassified,
                    "{name}: ordinary flow {f:?} must pass unclassified"
                );
            }
        }
        assert_eq!(
            r.flows.iter().map(|f| f.packets).sum::<u64>(),
            r.packets,
            "{name}: every packet is in a flow"
        );
    }
}

#[test]
fn fixtures_with_the_client_registered_drop_nothing() {
    for name in FIXTURES {
        let r = run(&fixture(name), &settings(&[CLIENT_V4, CLIENT_V6]));
        assert_eq!(r.packets_with(Verdict::Dropped), 0, "{name}: {:?}", r.flows);
        for (ip_proto, port, protocol) in vpn_flows(name) {
            let f = r
                .flows
                .iter()
                .find(|f| f.ip_proto == *ip_proto && server_port(f) == *port)
                .unwrap_or_else(|| panic!("{name}: no flow to port {port}"));
            assert_eq!(
                (f.protocol, f.verdict),
                (*protocol, Outcome::Allowed),
                "{name}: {f:?}"
            );
        }
    }
}

#[test]
fn monitor_policy_reports_the_vpn_flow_and_drops_nothing() {
    let mut s = settings(&[]);
    s.policy = Policy::all(PolicyMode::Monitor);
    let r = run(&fixture("wireguard-ipv4"), &s);
    assert_eq!(r.packets_with(Verdict::Dropped), 0);
    assert_eq!(r.flows.len(), 1);
    assert_eq!(r.flows[0].verdict, Outcome::Monitored);
    // The handshake (1, 2) and the data-only flow confirmed by its fourth packet (6-10); 3-5
    // are pending.
    assert_eq!(r.verdict(Protocol::WireGuard, Verdict::Monitored), 7);
    assert_eq!(r.verdict(Protocol::WireGuard, Verdict::Pending), 3);
}

#[test]
fn off_policy_ignores_its_protocol_and_judges_the_others() {
    let mut s = settings(&[]);
    s.policy
        .apply_override("wireguard=off")
        .expect("valid override");
    let wg = run(&fixture("wireguard-ipv4"), &s);
    assert_eq!(wg.packets_with(Verdict::Dropped), 0);
    assert_eq!(wg.flows[0].verdict, Outcome::Ignored, "{:?}", wg.flows[0]);
    assert!(wg.verdict(Protocol::WireGuard, Verdict::Ignored) > 0);
    let ike = run(&fixture("ikev2-psk"), &s);
    assert!(ike.flows.iter().all(|f| f.verdict == Outcome::Dropped));
}

#[test]
fn dropped_packets_carry_the_message_and_reason_of_their_event() {
    let r = run(&fixture("wireguard-ipv4"), &settings(&[]));
    // The handshake (1, 2), then the transport data as a data-only flow: 3-5 pending, 6-10
    // dropped.
    assert_eq!(
        r.dropped.len(),
        7,
        "the handshake and the confirmed data-only flow"
    );
    let first = &r.dropped[0];
    assert_eq!(first.number, 1);
    assert_eq!(
        (first.protocol, first.message, first.reason),
        (
            Protocol::WireGuard,
            Message::WgInitiation,
            Reason::Signature
        )
    );
    assert_eq!(first.src, CLIENT_V4.parse::<IpAddr>().expect("address"));
    assert_eq!(first.dport, 51820);
    let reasons: Vec<(u64, Reason)> = r.dropped.iter().map(|d| (d.number, d.reason)).collect();
    assert_eq!(
        reasons,
        [
            (1, Reason::Signature),
            (2, Reason::Signature),
            (6, Reason::Confirmed),
            (7, Reason::FlowFollowUp),
            (8, Reason::FlowFollowUp),
            (9, Reason::FlowFollowUp),
            (10, Reason::FlowFollowUp),
        ]
    );
}

#[test]
fn diff_lists_the_flows_a_registration_lets_through() {
    let path = fixture("ikev2-psk");
    let before = run(&path, &settings(&[]));
    let after = run(&path, &settings(&[CLIENT_V4]));
    let changed = before.changed_flows(&after);
    assert_eq!(changed.len(), 2, "both IKE flows change: {changed:?}");
    for (a, b) in changed {
        assert_eq!((a.verdict, b.verdict), (Outcome::Dropped, Outcome::Allowed));
    }
    assert!(
        before.changed_flows(&before).is_empty(),
        "a replay does not differ from itself"
    );
}

/// Ordinary traffic of many kinds, IPv4 and IPv6: DNS, QUIC, TLS over TCP, NTP, STUN,
/// RTP, WebRTC DTLS, ICMP, ARP, and random UDP of VPN-like sizes.
fn ordinary_traffic() -> Vec<Packet> {
    let c4: Ipv4Addr = "192.0.2.10".parse().expect("v4");
    let s4: Ipv4Addr = "198.51.100.20".parse().expect("v4");
    let c6: Ipv6Addr = "2001:db8::10".parse().expect("v6");
    let s6: Ipv6Addr = "2001:db8:1::20".parse().expect("v6");
    let mut frames = Vec::new();
    for (c, s) in [
        (IpAddr::V4(c4), IpAddr::V4(s4)),
        (IpAddr::V6(c6), IpAddr::V6(s6)),
    ] {
        let udp = |sport, dport, payload: &[u8]| {
            Frame::eth()
                .ip(c, s)
                .udp(sport, dport)
                .payload(payload)
                .build()
        };
        let udp_back = |sport, dport, payload: &[u8]| {
            Frame::eth()
                .ip(s, c)
                .udp(sport, dport)
                .payload(payload)
                .build()
        };
        frames.push(udp(53000, 53, &dns_query(0x1234, "example.com")));
        frames.push(udp_back(
            53,
            53000,
            &dns_answer(0x1234, "example.com", &[s4]),
        ));
        let dcid = [7u8; 8];
        frames.push(udp(44000, 443, &quic_initial(&dcid, &[9u8; 8], 1200)));
        for i in 0..6 {
            frames.push(udp(
                44000,
                443,
                &quic_short(0x40 | i, &dcid, 120 + i as usize, i as u64),
            ));
            frames.push(udp_back(
                443,
                44000,
                &quic_short(0x41, &[9u8; 8], 1200, 100 + i as u64),
            ));
        }
        frames.push(udp(12300, 123, &ntp_request()));
        frames.push(udp(50000, 3478, &stun_binding_request([3; 12])));
        frames.push(udp(50002, 50004, &webrtc_dtls_client_hello(0)));
        for seq in 0..8 {
            frames.push(udp(
                40002,
                40004,
                &rtp(111, seq, seq as u32 * 960, 0xdead_beef, 160),
            ));
        }
        // Random payloads of the sizes VPN handshakes have, to VPN ports and others.
        for (i, (len, port)) in [
            (148, 51820),
            (92, 51820),
            (14, 1194),
            (42, 1194),
            (352, 500),
            (99, 1701),
            (64, 41641),
            (168, 443),
            (200, 9999),
        ]
        .into_iter()
        .enumerate()
        {
            let mut p = vec![0u8; len];
            fill_pseudo_random(&mut p, 1000 + i as u64);
            frames.push(udp(33000 + i as u16, port, &p));
        }
        let tcp = Frame::eth().ip(c, s).tcp(45000, 443);
        let tcp_back = Frame::eth().ip(s, c).tcp(443, 45000);
        frames.push(tcp.clone().tcp_flags(TCP_SYN).tcp_syn_options().build());
        frames.push(
            tcp_back
                .clone()
                .tcp_flags(TCP_SYN | TCP_ACK)
                .tcp_syn_options()
                .build(),
        );
        frames.push(tcp.clone().tcp_flags(TCP_ACK).build());
        frames.push(
            tcp.clone()
                .payload(&tls_client_hello("example.com"))
                .build(),
        );
        let mut data = vec![0u8; 1400];
        fill_pseudo_random(&mut data, 77);
        frames.push(tcp_back.clone().payload(&data).build());
        frames.push(Frame::eth().ip(c, s).icmp_echo(1, 1).build());
    }
    frames.push(Frame::eth().arp_request(c4, s4).build());
    frames
        .into_iter()
        .enumerate()
        .map(|(i, f)| (1_700_000_000_000_000_000 + i as u64 * 1_000_000, f))
        .collect()
}

#[test]
fn ordinary_traffic_is_never_dropped() {
    let packets = ordinary_traffic();
    let file = TempFile::new("ordinary.pcap", &pcap(1, &packets));
    let r = run(file.path(), &settings(&[]));
    assert_eq!(r.packets, packets.len() as u64);
    assert_eq!(r.packets_with(Verdict::Dropped), 0, "{:#?}", r.flows);
    // The random payloads below look fully encrypted, which is what the fully_encrypted
    // heuristic reports, and have OpenVPN's reset sizes, which openvpn_obfuscated watches
    // (pending): heuristics monitored by default, never dropping. Every other flow is
    // unclassified.
    let mut reported = 0;
    for f in &r.flows {
        let heuristic = Policy::default().mode(f.protocol) == PolicyMode::Monitor
            && f.protocol != Protocol::Endpoints;
        if heuristic && matches!(f.verdict, Outcome::Monitored | Outcome::Pending) {
            reported += f.packets;
            continue;
        }
        assert_eq!(
            f.verdict,
            Outcome::Unclassified,
            "ordinary flow judged as a VPN: {f:?}"
        );
    }
    assert_eq!(r.unclassified + reported, r.packets);
}

#[test]
fn cooked_captures_give_the_verdicts_of_their_ethernet_original() {
    let (linktype, packets) = read_pcap(&fixture("openvpn-udp-tls-auth"));
    assert_eq!(linktype, 1);
    let original = run(&fixture("openvpn-udp-tls-auth"), &settings(&[]));
    for (name, linktype, convert) in [
        ("SLL", 113, to_sll as fn(&[u8]) -> Vec<u8>),
        ("SLL2", 276, to_sll2),
    ] {
        let cooked: Vec<Packet> = packets.iter().map(|(t, f)| (*t, convert(f))).collect();
        let file = TempFile::new("cooked.pcap", &pcap(linktype, &cooked));
        let r = run(file.path(), &settings(&[]));
        assert_eq!(r.linktypes, vec![linktype]);
        assert_eq!(r.flows, original.flows, "{name} differs from Ethernet");
        assert_eq!(r.dropped, original.dropped, "{name}");
    }
}

/// The address family a BSD loopback header gives the frame's ethertype (macOS's AF_INET6).
fn address_family(frame: &[u8]) -> u32 {
    match &frame[12..14] {
        [0x08, 0x00] => 2,
        [0x86, 0xdd] => 30,
        _ => 0,
    }
}

/// Ethernet frame -> NULL (BSD loopback) packet: the family in the capturing host's byte
/// order (little-endian here), then the frame's payload.
fn to_null(frame: &[u8]) -> Vec<u8> {
    [&address_family(frame).to_le_bytes()[..], &frame[14..]].concat()
}

/// Ethernet frame -> LOOP (OpenBSD loopback) packet: the family in network byte order.
fn to_loop(frame: &[u8]) -> Vec<u8> {
    [&address_family(frame).to_be_bytes()[..], &frame[14..]].concat()
}

fn ppp_protocol(frame: &[u8]) -> [u8; 2] {
    match &frame[12..14] {
        [0x08, 0x00] => [0x00, 0x21],
        [0x86, 0xdd] => [0x00, 0x57],
        _ => [0xc0, 0x21],
    }
}

/// Ethernet frame -> PPP in HDLC-like framing: `ff 03`, the PPP protocol, the payload.
fn to_ppp(frame: &[u8]) -> Vec<u8> {
    [&[0xff, 0x03][..], &ppp_protocol(frame), &frame[14..]].concat()
}

/// Ethernet frame -> PPP with direction ("sent"), without address and control bytes.
fn to_ppp_with_dir(frame: &[u8]) -> Vec<u8> {
    [&[0x01][..], &ppp_protocol(frame), &frame[14..]].concat()
}

/// Ethernet frame -> NFLOG record as `nft ... log group 1` writes it on a little-endian host:
/// family, version, group, then the packet-header, prefix and payload attributes.
fn to_nflog(frame: &[u8]) -> Vec<u8> {
    let family = if frame[12..14] == [0x86, 0xdd] { 10 } else { 2 };
    let mut b = vec![family, 0, 0, 1];
    let prefix = b"vpn\0".to_vec();
    let header = [&frame[12..14], &[1, 0][..]].concat();
    for (kind, value) in [(1u16, header), (10, prefix), (9, frame[14..].to_vec())] {
        b.extend_from_slice(&(4 + value.len() as u16).to_le_bytes());
        b.extend_from_slice(&kind.to_le_bytes());
        b.extend_from_slice(&value);
        b.resize(b.len().next_multiple_of(4), 0);
    }
    b
}

/// Ethernet frame -> 802.11 data frame from the station to its access point (To DS:
/// addresses BSSID, source, destination), LLC/SNAP with the ethertype, then the payload.
fn to_wifi(frame: &[u8]) -> Vec<u8> {
    let (dst, src) = (&frame[..6], &frame[6..12]);
    let bssid = [0x02, 0, 0, 0, 0, 0xaa];
    [
        &[0x08, 0x01, 0, 0][..],
        &bssid,
        src,
        dst,
        &[0, 0],
        &[0xaa, 0xaa, 0x03, 0, 0, 0],
        &frame[12..14],
        &frame[14..],
    ]
    .concat()
}

/// Ethernet frame -> radiotap (flags: FCS at the end) + 802.11 data frame + FCS.
fn to_radiotap(frame: &[u8]) -> Vec<u8> {
    let radiotap = [0, 0, 9, 0, 0x02, 0, 0, 0, 0x10];
    [&radiotap[..], &to_wifi(frame), &[0xde, 0xad, 0xbe, 0xef]].concat()
}

#[test]
fn bsd_loopback_capture_of_a_wireguard_handshake_gives_the_ethernet_report() {
    for name in ["wireguard-ipv4", "wireguard-ipv6"] {
        let (_, packets) = read_pcap(&fixture(name));
        let original = run(&fixture(name), &settings(&[]));
        let null: Vec<Packet> = packets.iter().map(|(t, f)| (*t, to_null(f))).collect();
        let file = TempFile::new("null.pcap", &pcap(0, &null));
        let r = run(file.path(), &settings(&[]));
        assert_eq!(r.linktypes, vec![0]);
        assert_eq!(r.packets, original.packets, "{name}");
        assert_eq!(
            r.flows, original.flows,
            "{name}: NULL differs from Ethernet"
        );
        assert_eq!(r.dropped, original.dropped, "{name}");
        assert!(
            r.flows.iter().any(|f| f.dport == 51820
                && f.protocol == Protocol::WireGuard
                && f.verdict == Outcome::Dropped),
            "{name}: the handshake is dropped as WireGuard: {:#?}",
            r.flows
        );
    }
}

#[test]
fn loopback_ppp_nflog_and_wifi_captures_give_the_verdicts_of_their_ethernet_original() {
    for fixture_name in ["openvpn-udp-tls-auth", "openvpn-udp6-tls-auth", "pptp"] {
        let (_, packets) = read_pcap(&fixture(fixture_name));
        let original = run(&fixture(fixture_name), &settings(&[]));
        for (name, linktype, convert) in [
            ("LOOP", 108, to_loop as fn(&[u8]) -> Vec<u8>),
            ("PPP", 9, to_ppp),
            ("PPP_HDLC", 50, to_ppp),
            ("PPP_WITH_DIR", 204, to_ppp_with_dir),
            ("NFLOG", 239, to_nflog),
            ("IEEE802_11", 105, to_wifi),
            ("IEEE802_11_RADIOTAP", 127, to_radiotap),
        ] {
            let converted: Vec<Packet> = packets.iter().map(|(t, f)| (*t, convert(f))).collect();
            let file = TempFile::new("linktype.pcapng", &pcapng(linktype, &converted));
            let r = run(file.path(), &settings(&[]));
            assert_eq!(r.linktypes, vec![linktype], "{fixture_name} {name}");
            assert_eq!(
                r.flows, original.flows,
                "{fixture_name}: {name} differs from Ethernet"
            );
            assert_eq!(r.dropped, original.dropped, "{fixture_name} {name}");
        }
    }
}

#[test]
fn pcapng_capture_gives_the_verdicts_and_times_of_its_pcap_original() {
    let (_, packets) = read_pcap(&fixture("wireguard-ipv6"));
    let original = run(&fixture("wireguard-ipv6"), &settings(&[]));
    let file = TempFile::new("ng.pcapng", &pcapng(1, &packets));
    let r = run(file.path(), &settings(&[]));
    assert_eq!(r.format, vpn_filter::replay::Format::PcapNg);
    assert_eq!(
        r.flows, original.flows,
        "same flows, verdicts and (nanosecond) times as the microsecond pcap"
    );
    assert_eq!(r.first_ts_ns, Some(packets[0].0));
}

/// Transport data of a WireGuard flow from an unregistered client (four packets, the count
/// that confirms a data-only flow), then four more `gap_s` seconds later.
fn wireguard_with_gap(gap_s: u64) -> Vec<Packet> {
    let c: IpAddr = CLIENT_V4.parse().expect("v4");
    let s: IpAddr = "10.200.0.1".parse().expect("v4");
    let t0 = 1_700_000_000_000_000_000u64;
    let wg = |payload: &[u8]| {
        Frame::eth()
            .ip(c, s)
            .udp(40000, 51820)
            .payload(payload)
            .build()
    };
    let mut p = Vec::new();
    for i in 0..4 {
        p.push((t0 + i * 1_000_000, wg(&wireguard_data(9, i, 128))));
    }
    for i in 0..4 {
        p.push((
            t0 + gap_s * 1_000_000_000 + i * 1_000_000,
            wg(&wireguard_data(9, 4 + i, 128)),
        ));
    }
    p
}

#[test]
fn blocked_flow_keeps_dropping_within_its_timeout_on_the_capture_clock() {
    // 60 s after the flow was confirmed: the blocked flow (120 s) is still remembered.
    let file = TempFile::new("wg-60s.pcap", &pcap(1, &wireguard_with_gap(60)));
    let r = run(file.path(), &settings(&[]));
    assert_eq!(r.dropped.len(), 5);
    assert_eq!(r.dropped[0].reason, Reason::Confirmed);
    assert!(r.dropped[1..]
        .iter()
        .all(|d| d.reason == Reason::FlowFollowUp));
}

#[test]
fn blocked_flow_expires_after_its_timeout_on_the_capture_clock() {
    // 300 s later the gateway has forgotten the flow (blocked timeout 120 s): the data
    // packets are judged afresh, although the replay itself takes milliseconds.
    let file = TempFile::new("wg-300s.pcap", &pcap(1, &wireguard_with_gap(300)));
    let r = run(file.path(), &settings(&[]));
    let f = &r.flows[0];
    assert_eq!(
        (f.count(Outcome::Pending), f.count(Outcome::Dropped)),
        (6, 2),
        "twice three data packets pending, the fourth confirms the flow: {f:?}"
    );
    let reasons: Vec<(u64, Reason)> = r.dropped.iter().map(|d| (d.number, d.reason)).collect();
    assert_eq!(reasons, [(4, Reason::Confirmed), (8, Reason::Confirmed)]);
}

#[test]
fn truncated_capture_reports_the_packets_read_before_the_cut() {
    let bytes = std::fs::read(fixture("openvpn-udp-plain")).expect("fixture");
    let offsets = record_offsets(&bytes);
    // Cut inside the 6th packet's data.
    let cut = offsets[5] + 16 + 10;
    let file = TempFile::new("cut.pcap", &bytes[..cut]);
    require_root();
    match replay_err(file.path()) {
        ReplayError::Capture { error, partial } => {
            assert!(
                matches!(error, CaptureError::Truncated { packet: 6, offset, .. } if offset == offsets[5] as u64),
                "{error}"
            );
            assert_eq!(partial.packets, 5);
            assert_eq!(partial.flows.len(), 1, "the flow read so far is reported");
            let msg = ReplayError::Capture { error, partial }.to_string();
            assert!(msg.contains(&file.path().display().to_string()), "{msg}");
            assert!(msg.contains("truncated"), "{msg}");
            assert!(msg.contains("5 packet(s) were read"), "{msg}");
        }
        e => panic!("expected a truncated-capture error, got {e}"),
    }
}

#[test]
fn corrupt_record_length_is_reported_with_its_offset_and_packet() {
    let mut bytes = std::fs::read(fixture("wireguard-ipv4")).expect("fixture");
    let offsets = record_offsets(&bytes);
    let at = offsets[2];
    bytes[at + 8..at + 12].copy_from_slice(&0x7fff_fff0u32.to_le_bytes());
    let file = TempFile::new("corrupt.pcap", &bytes);
    require_root();
    match replay_err(file.path()) {
        ReplayError::Capture { error, partial } => {
            let msg = error.to_string();
            assert!(
                matches!(error, CaptureError::Corrupt { packet: 3, .. }),
                "{msg}"
            );
            assert!(msg.contains(&format!("byte {at}")), "{msg}");
            assert!(msg.contains("2147483632 captured bytes"), "{msg}");
            assert_eq!(partial.packets, 2);
        }
        e => panic!("expected a corrupt-record error, got {e}"),
    }
}

#[test]
fn garbage_is_refused_as_not_a_capture() {
    let file = TempFile::new(
        "garbage.pcap",
        b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
    );
    match replay_err(file.path()) {
        ReplayError::Open(e @ CaptureError::NotACapture { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("not a pcap or pcapng capture"), "{msg}");
            assert!(msg.contains("\"GET / HT\""), "{msg}");
        }
        e => panic!("expected not-a-capture, got {e}"),
    }
}

#[test]
fn empty_file_is_refused() {
    let file = TempFile::new("empty.pcap", b"");
    assert!(matches!(
        replay_err(file.path()),
        ReplayError::Open(CaptureError::Empty { .. })
    ));
}

#[test]
fn unsupported_link_type_is_named() {
    let packets = vec![(0u64, vec![0u8; 64])];
    let file = TempFile::new("hdlc.pcap", &pcap(104, &packets));
    require_root();
    match replay_err(file.path()) {
        ReplayError::Capture { error, partial } => {
            let msg = error.to_string();
            assert!(
                msg.contains("link type 104 (Cisco HDLC)"),
                "names the link type: {msg}"
            );
            assert!(
                msg.contains("Linux cooked SLL (113)"),
                "lists what works: {msg}"
            );
            assert_eq!(partial.packets, 0);
        }
        e => panic!("expected an unsupported-link-type error, got {e}"),
    }
}

#[test]
fn progress_reaches_the_end_of_the_file() {
    require_root();
    let path = fixture("l2tp");
    let len = std::fs::metadata(&path).expect("fixture").len();
    let mut last = (0, 0);
    replay(&path, &settings(&[]), &mut |pos, total| last = (pos, total)).expect("replay");
    assert_eq!(last, (len, len));
}

// The command line.

/// The controller binary next to the test binary's target directory (build it first:
/// `cargo build -p vpn-filter`; `cargo xtask test` does).
fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("VPN_FILTER_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("own path");
    let mut dir = exe.parent().expect("directory").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("vpn-filter");
    assert!(
        bin.exists(),
        "{} missing: run `cargo build -p vpn-filter` first",
        bin.display()
    );
    bin
}

fn cli(args: &[&str]) -> std::process::Output {
    require_root();
    Command::new(binary())
        .arg("replay")
        .args(args)
        .output()
        .expect("running vpn-filter replay")
}

#[test]
fn cli_json_has_flow_dropped_packet_change_and_summary_records() {
    let registry = TempFile::new(
        "registry.json",
        registry_json(1, &[("REC-1", &[CLIENT_V4, CLIENT_V6])]).as_bytes(),
    );
    let pcap = fixture("wireguard-ipv4");
    let out = cli(&[
        "--pcap",
        pcap.to_str().expect("utf-8 path"),
        "--format",
        "json",
        "--show-dropped",
        "--diff",
        registry.path().to_str().expect("utf-8 path"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let of = |kind: &str| -> Vec<&serde_json::Value> {
        records.iter().filter(|r| r["record"] == kind).collect()
    };
    let flows = of("flow");
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0]["protocol"], "wireguard");
    assert_eq!(flows[0]["verdict"], "dropped");
    assert_eq!(flows[0]["src"], CLIENT_V4);
    assert_eq!(flows[0]["dport"], 51820);
    assert_eq!(flows[0]["packets"], 10);
    assert_eq!(flows[0]["packets_by_verdict"]["dropped"], 7);
    assert_eq!(flows[0]["packets_by_verdict"]["pending"], 3);
    assert_eq!(of("dropped_packet").len(), 7);
    assert_eq!(of("dropped_packet")[0]["message"], "wg_initiation");
    let changes = of("verdict_change");
    assert_eq!(changes.len(), 1);
    assert_eq!(
        (&changes[0]["verdict"], &changes[0]["second_verdict"]),
        (&"dropped".into(), &"allowed".into())
    );
    let summary = of("summary");
    assert_eq!(summary.len(), 1);
    assert_eq!(summary[0]["packets"], 10);
    assert_eq!(summary[0]["verdicts"]["wireguard"]["dropped"], 7);
    assert_eq!(summary[0]["second"]["changed_flows"], 1);
    assert_eq!(records.last().expect("records")["record"], "summary");
}

#[test]
fn cli_table_shows_each_flow_with_its_verdict() {
    let pcap = fixture("ikev2-psk");
    let out = cli(&["--pcap", pcap.to_str().expect("utf-8 path")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert!(text.contains("flows (2)"), "{text}");
    for port in ["500", "4500"] {
        let line = text
            .lines()
            .find(|l| l.contains(&format!("10.200.0.1:{port} ")))
            .unwrap_or_else(|| panic!("no flow line for port {port}:\n{text}"));
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(&cells[..1], ["udp"], "{line}");
        assert_eq!(&cells[3..5], ["ike", "dropped"], "{line}");
    }
}

#[test]
fn cli_truncated_capture_prints_what_was_read_and_fails() {
    let bytes = std::fs::read(fixture("pptp")).expect("fixture");
    let offsets = record_offsets(&bytes);
    let file = TempFile::new("cut.pcap", &bytes[..offsets[8] + 20]);
    let out = cli(&["--pcap", file.path().to_str().expect("utf-8 path")]);
    assert!(!out.status.success(), "a damaged capture must fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("truncated"), "{stderr}");
    assert!(stderr.contains("(it would be packet 9)"), "{stderr}");
    assert!(stderr.contains("8 packet(s) were read"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("8 packets"),
        "the partial report is printed:\n{stdout}"
    );
    assert!(stdout.contains("pptp"), "{stdout}");
}
