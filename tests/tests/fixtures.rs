//! Real clients against the real program: every capture in `tests/fixtures` (recorded from
//! Debian's OpenVPN, wireguard-go, strongSwan, xl2tpd, pptp-linux and OpenConnect, see
//! `tests/fixtures/README.md`) replayed frame by frame, in capture order, through
//! BPF_PROG_TEST_RUN.
//!
//! - With an empty allowlist (policy enforce) each handshake is recognised: the first frame
//!   dropped is the client's first handshake packet, or the server's reply that confirms it,
//!   nothing before it is dropped, and only that protocol's counters move.
//! - With the client's or the server's address registered, nothing is dropped.

use std::{fs::File, net::IpAddr, path::PathBuf};

use pcap_file::{pcap::PcapReader, DataLink};
use vpn_filter::{
    kernel::{Filter, LoadOptions, Policy, Stats},
    registry::Feed,
};
use vpn_filter_common::{Config, Protocol, Verdict};
use vpn_filter_tests::lab::registry_json;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

const CLIENT_V4: &str = "10.200.0.2";
const SERVER_V4: &str = "10.200.0.1";
const CLIENT_V6: &str = "fd00:200::2";
const SERVER_V6: &str = "fd00:200::1";

/// The frames of a capture, in order; checks the link type and that nothing was snapped.
fn frames(name: &str) -> Vec<Vec<u8>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    let file = File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reader = PcapReader::new(file).unwrap_or_else(|e| panic!("{name}: not a pcap: {e}"));
    assert_eq!(
        reader.header().datalink,
        DataLink::ETHERNET,
        "{name}: link type"
    );
    let mut out = Vec::new();
    while let Some(packet) = reader.next_packet() {
        let packet = packet.unwrap_or_else(|e| panic!("{name}: frame {}: {e}", out.len() + 1));
        assert_eq!(
            packet.orig_len as usize,
            packet.data.len(),
            "{name}: frame {} was snapped",
            out.len() + 1
        );
        out.push(packet.data.into_owned());
    }
    assert!(!out.is_empty(), "{name}: no frames");
    out
}

fn load(registered: &[&str]) -> Filter {
    vpn_filter_tests::require_root();
    let mut filter = Filter::load(
        LoadOptions::default(),
        &Policy::default(),
        &Config::default(),
    )
    .expect("the program loads through the verifier");
    if !registered.is_empty() {
        let json = registry_json(1, &[("FIXTURE", registered)]);
        let (feed, _) =
            Feed::from_json(json.as_bytes(), "test", Default::default()).expect("valid feed");
        filter
            .sync_allowlist(&feed.allowlist(time::OffsetDateTime::now_utc()))
            .expect("sync");
    }
    filter
}

/// Replays `name`; returns the action of each frame and the counters afterwards.
fn replay(name: &str, registered: &[&str]) -> (Vec<u32>, Stats) {
    let filter = load(registered);
    let actions: Vec<u32> = frames(name)
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let a = filter.run_frame(f).expect("BPF_PROG_TEST_RUN");
            assert!(
                a == XDP_PASS || a == XDP_DROP,
                "{name}: frame {}: action {a}",
                i + 1
            );
            a
        })
        .collect();
    (actions, filter.stats().expect("stats"))
}

fn show(actions: &[u32]) -> String {
    actions
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}:{}", i + 1, if *a == XDP_DROP { "DROP" } else { "pass" }))
        .collect::<Vec<_>>()
        .join(" ")
}

/// With nothing registered: the first drop is frame `first_drop` (1-based), nothing before it
/// is dropped, the frames in `also_dropped` are dropped too, and only `protocol` counts drops
/// (one per dropped frame), or `fallback` after a confirmed drop closed the pair.
fn recognised(name: &str, protocol: Protocol, first_drop: usize, also_dropped: &[usize]) -> Stats {
    let (actions, stats) = replay(name, &[]);
    let first = actions.iter().position(|a| *a == XDP_DROP).map(|i| i + 1);
    assert_eq!(
        first,
        Some(first_drop),
        "{name}: first dropped frame; replay: {}",
        show(&actions)
    );
    for n in also_dropped {
        assert_eq!(
            actions[n - 1],
            XDP_DROP,
            "{name}: frame {n} must be dropped; replay: {}",
            show(&actions)
        );
    }
    let drops = actions.iter().filter(|a| **a == XDP_DROP).count() as u64;
    // A flow confirmed by the server's answer and dropped closes the client-server pair:
    // its later packets are counted as `fallback` drops.
    assert!(
        stats.verdict(protocol, Verdict::Dropped) >= 1,
        "{name}: dropped as {protocol:?}: {stats:?}"
    );
    assert_eq!(
        stats.verdict(protocol, Verdict::Dropped)
            + stats.verdict(Protocol::Fallback, Verdict::Dropped),
        drops,
        "{name}: every drop counted as {protocol:?} or as the pair's fallback: {stats:?}"
    );
    assert_eq!(
        stats.dropped(),
        drops,
        "{name}: no other protocol dropped anything: {stats:?}"
    );
    stats
}

/// With `registered` in the allowlist nothing is dropped and `protocol` counts allowed packets.
fn allowed(name: &str, protocol: Protocol, registered: &str) {
    let (actions, stats) = replay(name, &[registered]);
    assert!(
        actions.iter().all(|a| *a == XDP_PASS),
        "{name} with {registered} registered: {}",
        show(&actions)
    );
    assert_eq!(stats.dropped(), 0, "{stats:?}");
    assert!(
        stats.verdict(protocol, Verdict::Allowed) >= 1,
        "{name}: {protocol:?} allowed: {stats:?}"
    );
}

fn allowed_either_side(name: &str, protocol: Protocol, v6: bool) {
    let (c, s) = if v6 {
        (CLIENT_V6, SERVER_V6)
    } else {
        (CLIENT_V4, SERVER_V4)
    };
    allowed(name, protocol, c);
    allowed(name, protocol, s);
    // The registered addresses must be the capture's: a sanity check of the constants.
    assert!(c.parse::<IpAddr>().is_ok() && s.parse::<IpAddr>().is_ok());
}

#[test]
fn every_fixture_is_covered_by_a_test_here() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let source = include_str!("fixtures.rs");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".pcap") || name.ends_with(".pcapng") {
            assert!(
                source.contains(&format!("\"{name}\"")),
                "{name} has no replay test in tests/fixtures.rs"
            );
        }
    }
}

/// The consumer-VPN captures (issue 15) are listed in `consumer/MANIFEST.tsv`, one row per
/// file, and every row names a file that is there; their verdict tests live with the rules.
#[test]
fn every_consumer_fixture_is_in_the_manifest() {
    const FAMILIES: [&str; 12] = [
        "warp",
        "wireguard-padded",
        "mullvad-udp-over-tcp",
        "mullvad-lwo",
        "amneziawg-1",
        "amneziawg-2",
        "lightway-udp",
        "openvpn-xor",
        "tinc-tcp",
        "tinc-udp",
        "softether-http",
        "forticlient-dtls",
    ];
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/consumer");
    let manifest = std::fs::read_to_string(dir.join("MANIFEST.tsv")).unwrap();
    let mut lines = manifest.lines();
    assert_eq!(
        lines.next(),
        Some("file\tfamily\tprovenance\texpected\tnote"),
        "MANIFEST.tsv header"
    );
    let mut listed = Vec::new();
    for row in lines {
        let cols: Vec<&str> = row.split('\t').collect();
        assert_eq!(cols.len(), 5, "MANIFEST.tsv row {row:?}: five columns");
        let (file, family, provenance, expected) = (cols[0], cols[1], cols[2], cols[3]);
        assert!(!listed.contains(&file), "{file} listed twice");
        assert!(FAMILIES.contains(&family), "{file}: family {family:?}");
        assert!(
            provenance.starts_with("recorded: ") || provenance.starts_with("synthesized: "),
            "{file}: provenance {provenance:?}"
        );
        assert!(
            ["blocked", "monitored", "missed"].contains(&expected),
            "{file}: expected {expected:?}"
        );
        assert!(!cols[4].is_empty(), "{file}: no note");
        assert!(
            dir.join(file).is_file(),
            "{file} is in MANIFEST.tsv but missing"
        );
        frames(&format!("consumer/{file}"));
        listed.push(file);
    }
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".pcap") || name.ends_with(".pcapng") {
            assert!(
                listed.contains(&name.as_str()),
                "consumer/{name} is not in MANIFEST.tsv"
            );
        }
    }
    for family in FAMILIES {
        assert!(
            manifest.contains(&format!("\t{family}\t")),
            "no capture of {family}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// WireGuard
// ---------------------------------------------------------------------------------------

#[test]
fn wireguard_ipv4_initiation_is_dropped_and_the_flow_stays_blocked() {
    // 1 initiation, 2 response: conclusive alone, dropped without a flow entry. 3-10 transport
    // data (which could not exist with the filter in place: the handshake never completes) is
    // judged as a data-only flow: pending for three packets, blocked from the fourth.
    recognised(
        "wireguard-ipv4.pcap",
        Protocol::WireGuard,
        1,
        &[2, 6, 7, 8, 9, 10],
    );
}

#[test]
fn wireguard_ipv6_initiation_is_dropped_and_the_flow_stays_blocked() {
    recognised(
        "wireguard-ipv6.pcap",
        Protocol::WireGuard,
        1,
        &[2, 6, 7, 8, 9, 10],
    );
}

#[test]
fn wireguard_registered_endpoints_pass() {
    allowed_either_side("wireguard-ipv4.pcap", Protocol::WireGuard, false);
    allowed_either_side("wireguard-ipv6.pcap", Protocol::WireGuard, true);
}

// ---------------------------------------------------------------------------------------
// OpenVPN: the client reset is pending, the server's reset (frame 2 on UDP) confirms it
// ---------------------------------------------------------------------------------------

fn openvpn_udp(name: &str) {
    // 1 client reset (pending), 2 server reset (confirms: dropped), 3-14 the control channel
    // under the two session ids: the blocked flow's own. The data packets at the end (15-22),
    // which could not exist with the filter in place, carry no session id and the flow never
    // carried data while registered: not recognisably its own, they pass.
    let stats = recognised(
        name,
        Protocol::OpenVpn,
        2,
        &[3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14],
    );
    assert_eq!(
        stats.verdict(Protocol::OpenVpn, Verdict::Pending),
        1,
        "{name}: the client reset was pending: {stats:?}"
    );
}

#[test]
fn openvpn_udp_plain_is_confirmed_by_the_server_reset() {
    openvpn_udp("openvpn-udp-plain.pcap");
}

#[test]
fn openvpn_udp_tls_auth_is_confirmed_by_the_server_reset() {
    openvpn_udp("openvpn-udp-tls-auth.pcap");
}

#[test]
fn openvpn_udp_tls_crypt_is_confirmed_by_the_server_reset() {
    openvpn_udp("openvpn-udp-tls-crypt.pcap");
}

#[test]
fn openvpn_udp_tls_crypt_v2_is_confirmed_by_the_server_reset() {
    openvpn_udp("openvpn-udp-tls-crypt-v2.pcap");
}

#[test]
fn openvpn_udp6_tls_auth_is_confirmed_by_the_server_reset() {
    openvpn_udp("openvpn-udp6-tls-auth.pcap");
}

fn openvpn_tcp(name: &str) {
    // 1-3 the TCP handshake, 4 client reset (pending), 5 the server's bare ACK, 6 server
    // reset (confirms: dropped).
    let stats = recognised(name, Protocol::OpenVpn, 6, &[]);
    assert_eq!(
        stats.verdict(Protocol::OpenVpn, Verdict::Pending),
        1,
        "{name}: {stats:?}"
    );
}

#[test]
fn openvpn_tcp_tls_auth_is_confirmed_by_the_server_reset() {
    openvpn_tcp("openvpn-tcp-tls-auth.pcap");
}

#[test]
fn openvpn_tcp_tls_crypt_is_confirmed_by_the_server_reset() {
    openvpn_tcp("openvpn-tcp-tls-crypt.pcap");
}

#[test]
fn openvpn_registered_endpoints_pass() {
    for name in [
        "openvpn-udp-plain.pcap",
        "openvpn-udp-tls-auth.pcap",
        "openvpn-udp-tls-crypt.pcap",
        "openvpn-udp-tls-crypt-v2.pcap",
        "openvpn-tcp-tls-auth.pcap",
        "openvpn-tcp-tls-crypt.pcap",
    ] {
        allowed_either_side(name, Protocol::OpenVpn, false);
    }
    allowed_either_side("openvpn-udp6-tls-auth.pcap", Protocol::OpenVpn, true);
}

// ---------------------------------------------------------------------------------------
// IPsec, L2TP, PPTP, OpenConnect
// ---------------------------------------------------------------------------------------

#[test]
fn ikev2_sa_init_is_dropped_and_every_later_ike_and_esp_packet_too() {
    // 1 IKE_SA_INIT request, 2 its response (the 500<->500 flow), 3-4 IKE_AUTH on 4500 and
    // 13-14 the INFORMATIONAL pair: IKE, conclusive alone. The ESP-in-UDP pings (5-12), which
    // could not exist with the filter in place, are judged on their own: 5 (client SPI, seq 1)
    // and 6 (server SPI) pending, 7 (client SPI, seq 2) confirms, and the rest belong to the
    // blocked ESP flow by their SPIs. (The fallback closure is off by default.)
    let (actions, stats) = replay("ikev2-psk.pcap", &[]);
    let passed: Vec<usize> = (1..=actions.len())
        .filter(|n| actions[n - 1] == XDP_PASS)
        .collect();
    assert_eq!(passed, vec![5, 6], "{}", show(&actions));
    assert_eq!(
        stats.verdict(Protocol::Ike, Verdict::Dropped),
        6,
        "{stats:?}"
    );
    assert_eq!(
        stats.verdict(Protocol::Esp, Verdict::Pending),
        2,
        "{stats:?}"
    );
    assert_eq!(
        stats.verdict(Protocol::Esp, Verdict::Dropped),
        6,
        "{stats:?}"
    );
    assert_eq!(stats.dropped(), 12, "{stats:?}");
}

#[test]
fn ikev2_registered_endpoints_pass() {
    allowed_either_side("ikev2-psk.pcap", Protocol::Ike, false);
    let (_, stats) = replay("ikev2-psk.pcap", &[CLIENT_V4]);
    // Each protocol has its own flow entry: 6 IKE messages, 8 ESP-in-UDP packets.
    assert_eq!(
        stats.verdict(Protocol::Ike, Verdict::Allowed),
        6,
        "{stats:?}"
    );
    assert_eq!(
        stats.verdict(Protocol::Esp, Verdict::Allowed),
        8,
        "{stats:?}"
    );
}

#[test]
fn l2tp_sccrq_is_dropped_and_the_tunnel_setup_stays_blocked() {
    // 1 SCCRQ; then SCCRP, SCCCN, ICRQ, ICRP, ICCN, CDN: every control message with a Message
    // Type AVP is conclusive alone. The ZLB acks (5, 8, 9, 11) are follow-ups only, and the
    // SCCRQ's drop leaves no flow entry for them: they pass (nothing to acknowledge).
    recognised("l2tp.pcap", Protocol::L2tp, 1, &[2, 3, 4, 6, 7, 10]);
}

#[test]
fn l2tp_registered_endpoints_pass() {
    allowed_either_side("l2tp.pcap", Protocol::L2tp, false);
}

#[test]
fn pptp_sccrq_is_dropped() {
    // 1-3 the TCP handshake; 4 SCCRQ; 6 SCCRP on the blocked flow. (No GRE in this capture:
    // the server's pppd exits before any PPP frame is sent.)
    recognised("pptp.pcap", Protocol::Pptp, 4, &[6]);
}

#[test]
fn pptp_registered_endpoints_pass() {
    allowed_either_side("pptp.pcap", Protocol::Pptp, false);
}

#[test]
fn openconnect_dtls_is_dropped_at_the_server_hello() {
    // 1-20 the CSTP channel: TLS on TCP 443, not a detection. 21 the DTLS ClientHello (record
    // FE FF, client_version FE FD, 32-byte session id, TLS_PSK suites) to UDP 443: weak,
    // passed. 22 the server's DTLS ServerHello confirms it and is dropped. (With the fallback
    // closure enforced the rest of the pair's traffic would be dropped too:
    // tests/tests/fallback.rs.)
    recognised("openconnect.pcap", Protocol::OpenConnectDtls, 22, &[]);
}

#[test]
fn openconnect_registered_endpoints_pass() {
    allowed_either_side("openconnect.pcap", Protocol::OpenConnectDtls, false);
}

/// Every consumer capture gets, with nothing registered and the default policy, the outcome
/// its MANIFEST.tsv row states (`blocked`: a packet dropped; `monitored`: reported, none
/// dropped; `missed`: nothing flagged, a documented gap), caught as the protocol named here;
/// and with its server registered nothing of it is dropped.
#[test]
fn consumer_fixtures_get_the_outcome_their_manifest_row_states() {
    use vpn_filter_tests::accuracy::{outcome, parse_manifest, read_capture, Runner};
    vpn_filter_tests::require_root();
    let protocol_of = |family: &str| match family {
        "tinc-udp" | "tinc-tcp" => Protocol::Tinc,
        "mullvad-udp-over-tcp" | "warp" | "wireguard-padded" => Protocol::WireGuard,
        "mullvad-lwo" | "amneziawg-1" | "amneziawg-2" => Protocol::WireGuardObfuscated,
        "lightway-udp" => Protocol::Lightway,
        "openvpn-xor" => Protocol::OpenVpnObfuscated,
        "softether-http" => Protocol::SoftEther,
        "forticlient-dtls" => Protocol::Dtls443,
        other => panic!("family {other} has no protocol here"),
    };
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/consumer");
    let rows = parse_manifest(&std::fs::read_to_string(dir.join("MANIFEST.tsv")).unwrap())
        .expect("manifest");
    let mut wrong = Vec::new();
    for row in &rows {
        let frames = read_capture(&dir.join(&row.file)).expect("capture");
        let mut runner = Runner::load(&Policy::default()).expect("load");
        let tally = runner
            .tally(frames.iter().map(|f| f.as_slice()))
            .expect("replay");
        let got = outcome(&tally);
        let by = tally.by_protocol();
        let flagged_as: Vec<Protocol> = by.keys().copied().collect();
        let want_protocol = protocol_of(&row.family);
        // Besides the family's protocol, only a monitored heuristic may flag it (WARP's
        // transport packets carry the client id too: wireguard_obfuscated reports them).
        // A confirmed drop closes the pair: its later packets are `fallback` drops.
        let stray = flagged_as.iter().any(|p| {
            *p != want_protocol
                && *p != Protocol::Fallback
                && Policy::default().mode(*p) != vpn_filter_common::PolicyMode::Monitor
        });
        // The fully-encrypted heuristic also reports what the family's own rule misses.
        let caught_as = flagged_as.contains(&want_protocol)
            || (row.expected == "monitored" && flagged_as.contains(&Protocol::FullyEncrypted));
        if got != row.expected || (got != "missed" && (!caught_as || stray)) {
            wrong.push(format!(
                "{}: {got} as {flagged_as:?}, manifest says {} as {want_protocol:?}",
                row.file, row.expected
            ));
        }
        // The server registered: nothing dropped.
        let (actions, stats) = replay(
            &format!("consumer/{}", row.file),
            &["10.200.0.1", "fd00:200::1"],
        );
        if actions.contains(&XDP_DROP) {
            wrong.push(format!(
                "{} with its server registered: {} ({stats:?})",
                row.file,
                show(&actions)
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
