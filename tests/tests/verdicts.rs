//! Verdict tables through BPF_PROG_TEST_RUN (`Filter::run_frame`): the real program, loaded
//! through the kernel verifier, judging frames built by `vpn_filter_tests::packet`. No
//! network namespace is needed, but loading needs root.
//!
//! Every test loads its own `Filter` (flow state lives in the kernel's maps). Inside a table
//! each row uses its own addresses and ports, so rows never share a flow and can be read (and
//! fail) one by one. Each row states the XDP action and which protocol x verdict counter must
//! move by exactly one (or that none may move).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use vpn_filter::{
    kernel::{Filter, LoadOptions, Policy, Stats},
    registry::Feed,
};
use vpn_filter_common::{Config, Counter, ExtHeaderOverflow, PolicyMode, Protocol, Verdict};
use vpn_filter_tests::{lab::registry_json, packet::*};

const XDP_ABORTED: u32 = 0;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// Registered addresses (in the allowlist of every filter loaded here).
const REG_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const REG_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 2);

fn load(policy: &Policy, config: &Config) -> Filter {
    vpn_filter_tests::require_root();
    let json = registry_json(1, &[("REG-1", &[&REG_V4.to_string(), &REG_V6.to_string()])]);
    let (feed, _) =
        Feed::from_json(json.as_bytes(), "test", Default::default()).expect("valid feed");
    let mut filter = Filter::load(LoadOptions::default(), policy, config)
        .expect("the program loads through the verifier");
    filter
        .sync_allowlist(&feed.allowlist(time::OffsetDateTime::now_utc()))
        .expect("sync");
    filter
}

fn enforce() -> Filter {
    load(&Policy::default(), &Config::default())
}

fn action_name(a: u32) -> &'static str {
    match a {
        XDP_ABORTED => "XDP_ABORTED",
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        _ => "unexpected action",
    }
}

/// Runs one frame; panics on XDP_ABORTED or anything but PASS/DROP.
fn run(filter: &Filter, frame: &[u8]) -> u32 {
    let a = filter.run_frame(frame).expect("BPF_PROG_TEST_RUN");
    assert!(
        a == XDP_PASS || a == XDP_DROP,
        "action {a} ({}) for {:02x?}",
        action_name(a),
        frame
    );
    a
}

fn stats(filter: &Filter) -> Stats {
    filter.stats().expect("stats")
}

fn counter_delta(before: &Stats, after: &Stats, c: Counter) -> u64 {
    after.counter(c) - before.counter(c)
}

/// One row: what it is, the frame, the action, and the single counter that must move.
struct Row {
    what: String,
    frame: Vec<u8>,
    action: u32,
    counts: Option<(Protocol, Verdict)>,
}

/// Runs every row, then fails listing every row that did not behave.
fn run_table(filter: &Filter, rows: &[Row]) {
    let mut failures = Vec::new();
    for row in rows {
        let before = stats(filter);
        let got = filter.run_frame(&row.frame).expect("BPF_PROG_TEST_RUN");
        let after = stats(filter);
        let moved = after.verdicts_since(&before);
        let want_moved: Vec<_> = row.counts.iter().map(|(p, v)| (*p, *v, 1)).collect();
        if got != row.action || moved != want_moved {
            failures.push(format!(
                "  {}: got {} with counters {moved:?}, want {} with {want_moved:?}",
                row.what,
                action_name(got),
                action_name(row.action)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// The protocol table
// ---------------------------------------------------------------------------------------

/// What a lone packet does when neither endpoint is registered (policy enforce).
#[derive(Clone, Copy, Debug)]
enum Alone {
    /// Conclusive alone: dropped.
    Drop(Protocol),
    /// Weak: passed, flow remembered as pending.
    Pending(Protocol),
    /// A follow-up without a known flow, or not a VPN: passed, no counter moves.
    Pass,
    /// No signature's, but judged by a heuristic monitored by default (`fully_encrypted`
    /// for an OpenVPN packet that no flow claims): passed, reported.
    Reported(Protocol),
}

/// A message: its name, how to add L4 + payload to an IP frame (given a per-row ephemeral
/// port), who sends it, and what it does alone.
struct Msg {
    name: &'static str,
    from_client: bool,
    build: fn(Frame, u16) -> Frame,
    alone: Alone,
}

const fn msg(
    name: &'static str,
    from_client: bool,
    build: fn(Frame, u16) -> Frame,
    alone: Alone,
) -> Msg {
    Msg {
        name,
        from_client,
        build,
        alone,
    }
}

const WG: Protocol = Protocol::WireGuard;
const OVPN: Protocol = Protocol::OpenVpn;
const V2: OvpnWrap = OvpnWrap::TlsCryptV2 { wkc_len: 299 };

fn messages() -> Vec<Msg> {
    use Alone::*;
    vec![
        // WireGuard
        msg(
            "wireguard initiation",
            true,
            |f, p| f.udp(p, 51820).payload(&wireguard_initiation(7)),
            Drop(WG),
        ),
        msg(
            "wireguard response",
            false,
            |f, p| f.udp(51820, p).payload(&wireguard_response(8, 7)),
            Drop(WG),
        ),
        msg(
            "wireguard cookie reply",
            false,
            |f, p| f.udp(51820, p).payload(&wireguard_cookie(7)),
            Drop(WG),
        ),
        msg(
            "wireguard padded initiation",
            true,
            |f, p| {
                f.udp(p, 51820)
                    .payload(&wireguard_padded_initiation(7, 204))
            },
            Pending(WG),
        ),
        msg(
            "wireguard padded response without a flow",
            false,
            |f, p| {
                f.udp(51820, p)
                    .payload(&wireguard_padded_response(8, 7, 100))
            },
            Pass,
        ),
        msg(
            "wireguard data",
            true,
            |f, p| f.udp(p, 51820).payload(&wireguard_data(9, 0, 128)),
            Pending(WG),
        ),
        msg(
            "wireguard keepalive",
            true,
            |f, p| f.udp(p, 51820).payload(&wireguard_data(9, 5, 32)),
            Pending(WG),
        ),
        // OpenVPN over UDP
        msg(
            "openvpn client reset v2 plain",
            true,
            |f, p| {
                f.udp(p, 1194).payload(&openvpn_client_reset(
                    0x1f2b_1e4e_edf3_db60,
                    OvpnWrap::Plain,
                ))
            },
            Pending(OVPN),
        ),
        msg(
            "openvpn client reset v1 plain",
            true,
            |f, p| {
                f.udp(p, 1194)
                    .payload(&openvpn_client_reset_v1(0x8a31_77c2_0e94_5bd1))
            },
            Pending(OVPN),
        ),
        msg(
            "openvpn client reset tls-auth",
            true,
            |f, p| {
                f.udp(p, 1194)
                    .payload(&openvpn_client_reset(0xffa0_d7c6_8186_5291, TLS_AUTH_SHA1))
            },
            Pending(OVPN),
        ),
        msg(
            "openvpn client reset tls-auth sha256",
            true,
            |f, p| {
                f.udp(p, 1194).payload(&openvpn_client_reset(
                    0x3c5e_91a2_7b04_e6d8,
                    OvpnWrap::TlsAuth { hmac_len: 32 },
                ))
            },
            Pending(OVPN),
        ),
        msg(
            "openvpn client reset tls-crypt",
            true,
            |f, p| {
                f.udp(p, 1194).payload(&openvpn_client_reset(
                    0x0857_75ae_2fab_83df,
                    OvpnWrap::TlsCrypt,
                ))
            },
            Pending(OVPN),
        ),
        msg(
            "openvpn client reset v3 tls-crypt-v2",
            true,
            |f, p| {
                f.udp(p, 1194)
                    .payload(&openvpn_client_reset(0x8837_1aa2_abfc_d010, V2))
            },
            Pending(OVPN),
        ),
        msg(
            "openvpn server reset without a flow",
            false,
            |f, p| {
                f.udp(1194, p).payload(&openvpn_server_reset(
                    0xa957_88e6_055f_db17,
                    0x1f2b_1e4e_edf3_db60,
                    OvpnWrap::Plain,
                ))
            },
            Pass,
        ),
        msg(
            "openvpn control without a flow",
            true,
            |f, p| {
                f.udp(p, 1194).payload(&openvpn_control(
                    0x1f2b_1e4e_edf3_db60,
                    0xa957_88e6_055f_db17,
                    OvpnWrap::Plain,
                    2,
                    1,
                    300,
                ))
            },
            // No flow claims it: the fully-encrypted rule judges it as any datagram.
            Reported(Protocol::FullyEncrypted),
        ),
        msg(
            "openvpn data v2 without a flow",
            true,
            |f, p| f.udp(p, 1194).payload(&openvpn_data_v2(0, 1, 108)),
            Reported(Protocol::FullyEncrypted),
        ),
        // OpenVPN over TCP
        msg(
            "openvpn/tcp client reset plain",
            true,
            |f, p| {
                f.tcp(p, 1194).payload(&tcp_framed(&openvpn_client_reset(
                    0x6e1d_4a90_b3c2_17f5,
                    OvpnWrap::Plain,
                )))
            },
            Pending(OVPN),
        ),
        msg(
            "openvpn/tcp client reset tls-auth",
            true,
            |f, p| {
                f.tcp(p, 1194).payload(&tcp_framed(&openvpn_client_reset(
                    0xd59a_c21f_037d_cca8,
                    TLS_AUTH_SHA1,
                )))
            },
            Pending(OVPN),
        ),
        msg(
            "openvpn/tcp client reset tls-crypt",
            true,
            |f, p| {
                f.tcp(p, 1194).payload(&tcp_framed(&openvpn_client_reset(
                    0x42b7_e810_9cd3_5a6f,
                    OvpnWrap::TlsCrypt,
                )))
            },
            Pending(OVPN),
        ),
        msg(
            "openvpn/tcp server reset without a flow",
            false,
            |f, p| {
                f.tcp(1194, p).payload(&tcp_framed(&openvpn_server_reset(
                    0x76b7_fc07_846e_4323,
                    0x6e1d_4a90_b3c2_17f5,
                    TLS_AUTH_SHA1,
                )))
            },
            Pass,
        ),
        // IKE / ESP / AH
        msg(
            "ikev2 IKE_SA_INIT on 500",
            true,
            |f, p| {
                f.udp(p, 500)
                    .payload(&ikev2_sa_init(0x7bdb_d193_4390_5c35, 352))
            },
            Drop(Protocol::Ike),
        ),
        msg(
            "ikev2 IKE_SA_INIT response on 500",
            false,
            |f, p| {
                f.udp(500, p)
                    .payload(&ikev2_sa_init_response(0x7bdb, 0x56ba, 248))
            },
            Drop(Protocol::Ike),
        ),
        msg(
            "ikev1 main mode on 500",
            true,
            |f, p| f.udp(p, 500).payload(&ikev1_main_mode(0x1010, 180)),
            Drop(Protocol::Ike),
        ),
        msg(
            "ikev1 aggressive mode on 500",
            true,
            |f, p| f.udp(p, 500).payload(&ikev1_aggressive(0x1011, 400)),
            Drop(Protocol::Ike),
        ),
        msg(
            "ikev2 IKE_SA_INIT on 4500 after the non-ESP marker",
            true,
            |f, p| {
                f.udp(p, 4500)
                    .payload(&non_esp_marker(&ikev2_sa_init(0x4500, 352)))
            },
            Drop(Protocol::Ike),
        ),
        msg(
            "ikev2 IKE_AUTH on 4500 after the non-ESP marker",
            true,
            |f, p| {
                f.udp(p, 4500)
                    .payload(&non_esp_marker(&ikev2_auth(0x4501, 0x4502, 304)))
            },
            Drop(Protocol::Ike),
        ),
        msg(
            "IKE over TCP (IKETCP)",
            true,
            |f, p| {
                f.tcp(p, 4500)
                    .payload(&iketcp_stream_start(&ikev2_sa_init(0x7c9, 352)))
            },
            Drop(Protocol::Ike),
        ),
        // Weak alone: DNS, NTP and QUIC from a 4500 source port have this shape (see
        // flow_state.rs for its confirmation).
        msg(
            "ESP in UDP on 4500",
            true,
            |f, p| f.udp(p, 4500).payload(&esp_in_udp(0x453e_c8e3, 1, 136)),
            Pending(Protocol::Esp),
        ),
        msg(
            "NAT-T keepalive on 4500",
            true,
            |f, p| f.udp(p, 4500).payload(&nat_keepalive()),
            Pass,
        ),
        msg(
            "ESP (IP protocol 50)",
            true,
            |f, _| f.esp(0x0102_0304, 1).payload(&[0x5a; 64]),
            Drop(Protocol::Esp),
        ),
        msg(
            "AH (IP protocol 51)",
            true,
            |f, _| f.ah(0x0102_0305, 1, 4).payload(&[0x45; 40]),
            Drop(Protocol::Ah),
        ),
        // L2TP, PPTP
        msg(
            "l2tp SCCRQ",
            true,
            |f, p| f.udp(p, 1701).payload(&l2tp_sccrq(41210)),
            Drop(Protocol::L2tp),
        ),
        msg(
            "l2tp SCCRP",
            false,
            |f, p| f.udp(1701, p).payload(&l2tp_sccrp(41210, 46735)),
            Drop(Protocol::L2tp),
        ),
        msg(
            "l2tpv3 control",
            true,
            |f, p| f.udp(p, 1701).payload(&l2tpv3_control(0x1234_5678, 1)),
            Drop(Protocol::L2tp),
        ),
        msg(
            "l2tp ZLB without a flow",
            false,
            |f, p| f.udp(1701, p).payload(&l2tp_zlb(46735, 1, 2)),
            Pass,
        ),
        msg(
            "pptp SCCRQ on TCP 1723",
            true,
            |f, p| f.tcp(p, 1723).payload(&pptp_sccrq()),
            Drop(Protocol::Pptp),
        ),
        msg(
            "pptp SCCRP on TCP 1723",
            false,
            |f, p| f.tcp(1723, p).payload(&pptp_sccrp()),
            Drop(Protocol::Pptp),
        ),
        msg(
            "pptp enhanced GRE v1 (PPP)",
            true,
            |f, _| {
                f.gre_pptp(0x4000, Some(1), Some(0))
                    .payload(&[0xff, 0x03, 0xc0, 0x21, 1, 1, 0, 4])
            },
            Drop(Protocol::Pptp),
        ),
        msg(
            "GRE v0 carrying IPv4",
            true,
            |f, _| f.gre_v0(0x0800).payload(&[0x45; 40]),
            Pass,
        ),
        msg(
            "GRE v0 with a key (enterprise tunnel)",
            true,
            |f, _| f.gre_v0_key(0x0800, 7).payload(&[0x45; 40]),
            Pass,
        ),
        msg(
            "ERSPAN (GRE v0, 0x88be)",
            true,
            |f, _| {
                f.gre_raw(&[0x10, 0x00, 0x88, 0xbe, 0, 0, 0, 1])
                    .payload(&[0; 60])
            },
            Pass,
        ),
        // Tailscale, OpenConnect, SoftEther
        msg(
            "tailscale disco",
            true,
            |f, p| f.udp(p, 41641).payload(&tailscale_disco(120)),
            Drop(Protocol::TailscaleDisco),
        ),
        msg(
            "openconnect DTLS ClientHello to 443",
            true,
            |f, p| f.udp(p, 443).payload(&openconnect_dtls_client_hello()),
            // Weak since issue 16: the server's DTLS answer confirms it (and is dropped).
            Pending(Protocol::OpenConnectDtls),
        ),
        msg(
            "anyconnect Cisco DTLS 0x0100 ClientHello",
            true,
            |f, p| f.udp(p, 443).payload(&cisco_dtls_client_hello()),
            Drop(Protocol::OpenConnectDtls),
        ),
        msg(
            "softether IP=...,PORT=...",
            true,
            |f, p| f.udp(p, 5555).payload(&softether_udp("198.51.100.7", 5555)),
            Drop(Protocol::SoftEther),
        ),
    ]
}

#[derive(Clone, Copy, Debug)]
enum Encap {
    Untagged,
    Vlan,
    QinQ,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Registered {
    Neither,
    Source,
    Destination,
}

/// Unregistered addresses unique to row `i`: the client and the server.
fn endpoints(v6: bool, i: u32) -> (IpAddr, IpAddr) {
    let [_, _, hi, lo] = i.to_be_bytes();
    if v6 {
        let c = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, i as u16 >> 8, i as u16);
        let s = Ipv6Addr::new(0x2001, 0xdb8, 0x5, 0, 0, 0, i as u16 >> 8, i as u16);
        (c.into(), s.into())
    } else {
        (
            Ipv4Addr::new(10, hi, lo, 2).into(),
            Ipv4Addr::new(172, 16 + hi, lo, 1).into(),
        )
    }
}

fn protocol_rows(families: &[bool]) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut i = 0u32;
    for &v6 in families {
        for m in messages() {
            for encap in [Encap::Untagged, Encap::Vlan, Encap::QinQ] {
                for reg in [
                    Registered::Neither,
                    Registered::Source,
                    Registered::Destination,
                ] {
                    i += 1;
                    let (client, server) = endpoints(v6, i);
                    let (mut src, mut dst) = if m.from_client {
                        (client, server)
                    } else {
                        (server, client)
                    };
                    let reg_addr: IpAddr = if v6 { REG_V6.into() } else { REG_V4.into() };
                    match reg {
                        Registered::Neither => {}
                        Registered::Source => src = reg_addr,
                        Registered::Destination => dst = reg_addr,
                    }
                    let f = match encap {
                        Encap::Untagged => Frame::eth(),
                        Encap::Vlan => Frame::eth().vlan(100),
                        Encap::QinQ => Frame::eth().qinq(200, 300),
                    };
                    let frame = (m.build)(f.ip(src, dst), 20000 + i as u16).build();
                    let (action, counts) = match (m.alone, reg) {
                        (Alone::Pass, _) => (XDP_PASS, None),
                        (Alone::Reported(p), Registered::Neither) => {
                            (XDP_PASS, Some((p, Verdict::Monitored)))
                        }
                        (Alone::Reported(p), _) => (XDP_PASS, Some((p, Verdict::Allowed))),
                        (Alone::Drop(p), Registered::Neither) => {
                            (XDP_DROP, Some((p, Verdict::Dropped)))
                        }
                        (Alone::Pending(p), Registered::Neither) => {
                            (XDP_PASS, Some((p, Verdict::Pending)))
                        }
                        (Alone::Drop(p) | Alone::Pending(p), _) => {
                            (XDP_PASS, Some((p, Verdict::Allowed)))
                        }
                    };
                    let fam = if v6 { "ipv6" } else { "ipv4" };
                    rows.push(Row {
                        what: format!("{} over {fam}, {encap:?}, registered: {reg:?}", m.name),
                        frame,
                        action,
                        counts,
                    });
                }
            }
        }
    }
    rows
}

#[test]
fn every_protocol_over_ipv4_untagged_vlan_and_qinq_with_each_registered_endpoint() {
    run_table(&enforce(), &protocol_rows(&[false]));
}

#[test]
fn every_protocol_over_ipv6_untagged_vlan_and_qinq_with_each_registered_endpoint() {
    run_table(&enforce(), &protocol_rows(&[true]));
}

#[test]
fn ipv4_mapped_ipv6_endpoints_are_judged_by_the_ipv4_allowlist() {
    let filter = enforce();
    let mapped = |a: Ipv4Addr| a.to_ipv6_mapped();
    let rows = vec![
        Row {
            what: "registered ::ffff:198.51.100.2 sends a WireGuard initiation".into(),
            frame: Frame::eth()
                .ipv6(mapped(REG_V4), "2001:db8:5::1".parse().unwrap())
                .udp(40000, 51820)
                .payload(&wireguard_initiation(1))
                .build(),
            action: XDP_PASS,
            counts: Some((WG, Verdict::Allowed)),
        },
        Row {
            what: "unregistered ::ffff:203.0.113.9 sends a WireGuard initiation".into(),
            frame: Frame::eth()
                .ipv6(
                    mapped(Ipv4Addr::new(203, 0, 113, 9)),
                    "2001:db8:5::1".parse().unwrap(),
                )
                .udp(40001, 51820)
                .payload(&wireguard_initiation(2))
                .build(),
            action: XDP_DROP,
            counts: Some((WG, Verdict::Dropped)),
        },
    ];
    run_table(&filter, &rows);
}

// ---------------------------------------------------------------------------------------
// Policy modes
// ---------------------------------------------------------------------------------------

/// The messages conclusive alone, each over IPv4 with unique unregistered endpoints.
fn strong_frames() -> Vec<(String, Protocol, Vec<u8>)> {
    let mut out = Vec::new();
    for (i, m) in messages().into_iter().enumerate() {
        if let Alone::Drop(p) = m.alone {
            let (c, s) = endpoints(false, 5000 + i as u32);
            let (src, dst) = if m.from_client { (c, s) } else { (s, c) };
            out.push((
                m.name.to_string(),
                p,
                (m.build)(Frame::eth().ip(src, dst), 30000 + i as u16).build(),
            ));
        }
    }
    out
}

#[test]
fn monitor_policy_passes_and_counts_every_unregistered_detection() {
    let filter = load(&Policy::all(PolicyMode::Monitor), &Config::default());
    let rows: Vec<Row> = strong_frames()
        .into_iter()
        .map(|(what, p, frame)| Row {
            what,
            frame,
            action: XDP_PASS,
            counts: Some((p, Verdict::Monitored)),
        })
        .collect();
    run_table(&filter, &rows);
    assert_eq!(
        stats(&filter).counter(Counter::EventsEmitted),
        rows.len() as u64,
        "one event per monitored packet"
    );
}

#[test]
fn off_policy_ignores_detections_without_an_allowlist_lookup() {
    let filter = load(&Policy::all(PolicyMode::Off), &Config::default());
    let rows: Vec<Row> = strong_frames()
        .into_iter()
        .map(|(what, p, frame)| Row {
            what,
            frame,
            action: XDP_PASS,
            counts: Some((p, Verdict::Ignored)),
        })
        .collect();
    run_table(&filter, &rows);
    let s = stats(&filter);
    assert_eq!(s.counter(Counter::AllowlistLookups), 0, "{s:?}");
    assert_eq!(
        s.counter(Counter::FlowInsert),
        0,
        "no flow remembered under off: {s:?}"
    );
}

#[test]
fn a_per_protocol_policy_applies_to_that_protocol_only() {
    let mut policy = Policy::default();
    policy.set(WG, PolicyMode::Monitor);
    policy.set(Protocol::Ike, PolicyMode::Off);
    let filter = load(&policy, &Config::default());
    let (c, s) = endpoints(false, 1);
    let rows = vec![
        Row {
            what: "wireguard initiation under wireguard=monitor".into(),
            frame: Frame::eth()
                .ip(c, s)
                .udp(40000, 51820)
                .payload(&wireguard_initiation(1))
                .build(),
            action: XDP_PASS,
            counts: Some((WG, Verdict::Monitored)),
        },
        Row {
            what: "IKE_SA_INIT under ike=off".into(),
            frame: Frame::eth()
                .ip(c, s)
                .udp(40001, 500)
                .payload(&ikev2_sa_init(9, 352))
                .build(),
            action: XDP_PASS,
            counts: Some((Protocol::Ike, Verdict::Ignored)),
        },
        Row {
            what: "ESP (IP protocol 50), esp still enforced".into(),
            frame: Frame::eth()
                .ip(c, s)
                .esp(0x1000, 1)
                .payload(&[0; 64])
                .build(),
            action: XDP_DROP,
            counts: Some((Protocol::Esp, Verdict::Dropped)),
        },
        Row {
            what: "L2TP SCCRQ, l2tp still enforced".into(),
            frame: Frame::eth()
                .ip(c, s)
                .udp(40003, 1701)
                .payload(&l2tp_sccrq(5))
                .build(),
            action: XDP_DROP,
            counts: Some((Protocol::L2tp, Verdict::Dropped)),
        },
    ];
    run_table(&filter, &rows);
}

#[test]
fn a_policy_change_applies_at_once_to_flows_already_blocked() {
    let mut filter = enforce();
    let (c, s) = endpoints(false, 2);
    let init = Frame::eth()
        .ip(c, s)
        .udp(40000, 51820)
        .payload(&wireguard_initiation(1))
        .build();
    let data = Frame::eth()
        .ip(c, s)
        .udp(40000, 51820)
        .payload(&wireguard_data(3, 0, 128))
        .build();
    assert_eq!(run(&filter, &init), XDP_DROP);
    // A data-only flow, confirmed by its fourth packet, then blocked.
    for _ in 0..3 {
        assert_eq!(run(&filter, &data), XDP_PASS, "pending");
    }
    assert_eq!(run(&filter, &data), XDP_DROP, "data on the blocked flow");

    filter
        .set_policy(&Policy::all(PolicyMode::Monitor))
        .unwrap();
    let before = stats(&filter);
    assert_eq!(
        run(&filter, &data),
        XDP_PASS,
        "monitor: the blocked flow's packets pass"
    );
    assert_eq!(
        stats(&filter).verdicts_since(&before),
        vec![(WG, Verdict::Monitored, 1)]
    );

    filter.set_policy(&Policy::all(PolicyMode::Off)).unwrap();
    let before = stats(&filter);
    assert_eq!(run(&filter, &data), XDP_PASS);
    assert_eq!(
        stats(&filter).verdicts_since(&before),
        vec![(WG, Verdict::Ignored, 1)]
    );

    filter.set_policy(&Policy::default()).unwrap();
    assert_eq!(
        run(&filter, &data),
        XDP_DROP,
        "enforce again: the flow is still known"
    );
}

#[test]
fn a_flow_blocked_under_monitor_is_dropped_once_the_policy_becomes_enforce() {
    let mut filter = load(&Policy::all(PolicyMode::Monitor), &Config::default());
    let (c, s) = endpoints(false, 3);
    let init = Frame::eth()
        .ip(c, s)
        .udp(40000, 500)
        .payload(&ikev2_sa_init(5, 352))
        .build();
    let reply = Frame::eth()
        .ip(s, c)
        .udp(500, 40000)
        .payload(&ikev2_sa_init_response(5, 6, 248))
        .build();
    assert_eq!(run(&filter, &init), XDP_PASS);
    filter.set_policy(&Policy::default()).unwrap();
    assert_eq!(run(&filter, &reply), XDP_DROP);
}

// ---------------------------------------------------------------------------------------
// Flow follow-up
// ---------------------------------------------------------------------------------------

struct Flow {
    client: IpAddr,
    server: IpAddr,
    cport: u16,
    sport: u16,
    vlan: Option<u16>,
}

impl Flow {
    fn new(v6: bool, i: u32, cport: u16, sport: u16) -> Flow {
        let (client, server) = endpoints(v6, i);
        Flow {
            client,
            server,
            cport,
            sport,
            vlan: None,
        }
    }

    fn base(&self) -> Frame {
        match self.vlan {
            Some(v) => Frame::eth().vlan(v),
            None => Frame::eth(),
        }
    }

    fn c2s_udp(&self, p: &[u8]) -> Vec<u8> {
        self.base()
            .ip(self.client, self.server)
            .udp(self.cport, self.sport)
            .payload(p)
            .build()
    }

    fn s2c_udp(&self, p: &[u8]) -> Vec<u8> {
        self.base()
            .ip(self.server, self.client)
            .udp(self.sport, self.cport)
            .payload(p)
            .build()
    }

    fn c2s_tcp(&self, p: &[u8]) -> Vec<u8> {
        self.base()
            .ip(self.client, self.server)
            .tcp(self.cport, self.sport)
            .payload(p)
            .build()
    }

    fn s2c_tcp(&self, p: &[u8]) -> Vec<u8> {
        self.base()
            .ip(self.server, self.client)
            .tcp(self.sport, self.cport)
            .payload(p)
            .build()
    }
}

/// One step of a flow: what it is, the frame, the action, the counter that moves.
type Step<'a> = (&'a str, Vec<u8>, u32, Option<(Protocol, Verdict)>);

/// Runs `steps` in order on `filter`, checking each action and counter move.
fn sequence(filter: &Filter, steps: &[Step]) {
    let rows: Vec<Row> = steps
        .iter()
        .map(|(what, frame, action, counts)| Row {
            what: what.to_string(),
            frame: frame.clone(),
            action: *action,
            counts: *counts,
        })
        .collect();
    // In order, stopping at the first failure: later steps depend on earlier ones.
    for (n, row) in rows.iter().enumerate() {
        let before = stats(filter);
        let got = run(filter, &row.frame);
        let moved = stats(filter).verdicts_since(&before);
        let want: Vec<_> = row.counts.iter().map(|(p, v)| (*p, *v, 1)).collect();
        assert!(
            got == row.action && moved == want,
            "step {} ({}): got {} with {moved:?}, want {} with {want:?}",
            n + 1,
            row.what,
            action_name(got),
            action_name(row.action)
        );
    }
}

#[test]
fn a_blocked_wireguard_flow_is_dropped_in_both_directions() {
    for v6 in [false, true] {
        let filter = enforce();
        let f = Flow::new(v6, 10, 38031, 51820);
        let d = Some((WG, Verdict::Dropped));
        let pending = Some((WG, Verdict::Pending));
        sequence(
            &filter,
            &[
                (
                    "initiation",
                    f.c2s_udp(&wireguard_initiation(0xb9ea_c571)),
                    XDP_DROP,
                    d,
                ),
                (
                    "initiation retransmitted",
                    f.c2s_udp(&wireguard_initiation(0xb9ea_c572)),
                    XDP_DROP,
                    d,
                ),
                (
                    "response from the server",
                    f.s2c_udp(&wireguard_response(0xa10a_4fe6, 0xb9ea_c571)),
                    XDP_DROP,
                    d,
                ),
                // The handshake is conclusive alone and left no entry: data of a tunnel that
                // was up before is a data-only flow, confirmed by its fourth packet.
                (
                    "data from the client",
                    f.c2s_udp(&wireguard_data(0xa10a_4fe6, 0, 128)),
                    XDP_PASS,
                    pending,
                ),
                (
                    "data from the server",
                    f.s2c_udp(&wireguard_data(0xb9ea_c571, 0, 128)),
                    XDP_PASS,
                    pending,
                ),
                (
                    "data from the client again",
                    f.c2s_udp(&wireguard_data(0xa10a_4fe6, 1, 128)),
                    XDP_PASS,
                    pending,
                ),
                (
                    "fourth data packet confirms",
                    f.c2s_udp(&wireguard_data(0xa10a_4fe6, 2, 128)),
                    XDP_DROP,
                    d,
                ),
                (
                    "data from the server",
                    f.s2c_udp(&wireguard_data(0xb9ea_c571, 1, 128)),
                    XDP_DROP,
                    d,
                ),
                (
                    "keepalive from the server",
                    f.s2c_udp(&wireguard_data(0xb9ea_c571, 2, 32)),
                    XDP_DROP,
                    d,
                ),
            ],
        );
        let s = stats(&filter);
        assert_eq!(
            s.counter(Counter::FlowHit),
            5,
            "every data packet after the first hit the flow: {s:?}"
        );
    }
}

#[test]
fn a_blocked_flow_still_passes_packets_that_do_not_look_like_its_protocol() {
    // The flow map is consulted only for candidates: ordinary bytes on the same 5-tuple are
    // not inspected, so they pass (the handshake is what the filter denies).
    let filter = enforce();
    let f = Flow::new(false, 11, 40000, 51820);
    assert_eq!(run(&filter, &f.c2s_udp(&wireguard_initiation(1))), XDP_DROP);
    assert_eq!(run(&filter, &f.c2s_udp(b"hello, not wireguard")), XDP_PASS);
}

#[test]
fn a_blocked_ike_flow_drops_the_responders_reply() {
    let filter = enforce();
    let f = Flow::new(false, 12, 500, 500);
    let d = Some((Protocol::Ike, Verdict::Dropped));
    sequence(
        &filter,
        &[
            (
                "IKE_SA_INIT request",
                f.c2s_udp(&ikev2_sa_init(0x77, 352)),
                XDP_DROP,
                d,
            ),
            (
                "IKE_SA_INIT response",
                f.s2c_udp(&ikev2_sa_init_response(0x77, 0x88, 248)),
                XDP_DROP,
                d,
            ),
        ],
    );
}

fn openvpn_udp_confirmed_by_the_server_reset(v6: bool, wrap: OvpnWrap, i: u32) {
    let filter = enforce();
    let mut f = Flow::new(v6, 20 + i, 34265, 1194);
    f.vlan = Some(42);
    let (cs, ss) = (0x1f2b_1e4e_edf3_db60, 0xa957_88e6_055f_db17);
    let d = Some((OVPN, Verdict::Dropped));
    let mut steps = vec![
        (
            "client reset passes as pending",
            f.c2s_udp(&openvpn_client_reset(cs, wrap)),
            XDP_PASS,
            Some((OVPN, Verdict::Pending)),
        ),
        (
            "server reset confirms and is dropped",
            f.s2c_udp(&openvpn_server_reset(ss, cs, wrap)),
            XDP_DROP,
            d,
        ),
        (
            "server reset retransmitted",
            f.s2c_udp(&openvpn_server_reset(ss, cs, wrap)),
            XDP_DROP,
            d,
        ),
    ];
    if let OvpnWrap::TlsCryptV2 { wkc_len } = wrap {
        steps.push((
            "client's WKc control",
            f.c2s_udp(&openvpn_control_wkc(cs, ss, 280, wkc_len)),
            XDP_DROP,
            d,
        ));
    } else {
        steps.push((
            "client's control (ClientHello)",
            f.c2s_udp(&openvpn_control(cs, ss, wrap, 2, 1, 300)),
            XDP_DROP,
            d,
        ));
    }
    steps.push((
        "client's ack",
        f.c2s_udp(&openvpn_ack(cs, ss, wrap, 3, 1)),
        XDP_DROP,
        d,
    ));
    // Data packets carry no session id: on a flow that never carried data while allowed they
    // are not the flow's own (an NTP or SIP packet shares their first byte), so they pass; the
    // tunnel cannot carry anything without its handshake. Not claimed by the flow, the first
    // is judged by the fully-encrypted rule as its conversation's first datagram (monitored by
    // default), the second is then its conversation's.
    steps.push((
        "data from the client",
        f.c2s_udp(&openvpn_data_v2(0, 1, 108)),
        XDP_PASS,
        Some((Protocol::FullyEncrypted, Verdict::Monitored)),
    ));
    steps.push((
        "data from the server",
        f.s2c_udp(&openvpn_data_v2(0, 1, 108)),
        XDP_PASS,
        None,
    ));
    sequence(&filter, &steps);
}

#[test]
fn openvpn_plain_over_udp_is_pending_until_the_server_reset_confirms_it() {
    openvpn_udp_confirmed_by_the_server_reset(false, OvpnWrap::Plain, 0);
    openvpn_udp_confirmed_by_the_server_reset(true, OvpnWrap::Plain, 1);
}

#[test]
fn openvpn_tls_auth_over_udp_is_pending_until_the_server_reset_confirms_it() {
    openvpn_udp_confirmed_by_the_server_reset(false, TLS_AUTH_SHA1, 2);
    openvpn_udp_confirmed_by_the_server_reset(true, TLS_AUTH_SHA1, 3);
    openvpn_udp_confirmed_by_the_server_reset(false, OvpnWrap::TlsAuth { hmac_len: 64 }, 4);
}

#[test]
fn openvpn_tls_crypt_over_udp_is_pending_until_the_server_reset_confirms_it() {
    openvpn_udp_confirmed_by_the_server_reset(false, OvpnWrap::TlsCrypt, 5);
    openvpn_udp_confirmed_by_the_server_reset(true, OvpnWrap::TlsCrypt, 6);
}

#[test]
fn openvpn_tls_crypt_v2_over_udp_is_pending_until_the_server_reset_confirms_it() {
    openvpn_udp_confirmed_by_the_server_reset(false, V2, 7);
    openvpn_udp_confirmed_by_the_server_reset(true, V2, 8);
}

#[test]
fn openvpn_over_tcp_is_pending_until_the_server_reset_confirms_it() {
    for (i, wrap) in [OvpnWrap::Plain, TLS_AUTH_SHA1, OvpnWrap::TlsCrypt]
        .into_iter()
        .enumerate()
    {
        for v6 in [false, true] {
            let filter = enforce();
            let f = Flow::new(v6, 40 + i as u32, 49648, 1194);
            let (cs, ss) = (0xd59a_c21f_037d_cca8, 0x1234_5678_9abc_def0);
            let d = Some((OVPN, Verdict::Dropped));
            sequence(
                &filter,
                &[
                    (
                        "client reset",
                        f.c2s_tcp(&tcp_framed(&openvpn_client_reset(cs, wrap))),
                        XDP_PASS,
                        Some((OVPN, Verdict::Pending)),
                    ),
                    (
                        "server reset",
                        f.s2c_tcp(&tcp_framed(&openvpn_server_reset(ss, cs, wrap))),
                        XDP_DROP,
                        d,
                    ),
                    (
                        "server reset retransmitted",
                        f.s2c_tcp(&tcp_framed(&openvpn_server_reset(ss, cs, wrap))),
                        XDP_DROP,
                        d,
                    ),
                ],
            );
        }
    }
}

#[test]
fn openvpn_client_reset_is_confirmed_by_the_clients_own_control_packet() {
    // Asymmetric routing: the filter never sees the server's reset.
    let filter = enforce();
    let f = Flow::new(false, 50, 40000, 1194);
    let cs = 0x5b2e_c7a1_9f40_d836;
    sequence(
        &filter,
        &[
            (
                "client reset",
                f.c2s_udp(&openvpn_client_reset(cs, TLS_AUTH_SHA1)),
                XDP_PASS,
                Some((OVPN, Verdict::Pending)),
            ),
            (
                "client control, same session",
                f.c2s_udp(&openvpn_control(
                    cs,
                    0x4f1a_b27c_93e5_d608,
                    TLS_AUTH_SHA1,
                    2,
                    1,
                    300,
                )),
                XDP_DROP,
                Some((OVPN, Verdict::Dropped)),
            ),
        ],
    );
}

#[test]
fn openvpn_plain_server_reset_echoing_another_session_does_not_confirm() {
    let filter = enforce();
    let f = Flow::new(false, 51, 40000, 1194);
    let p = Some((OVPN, Verdict::Pending));
    sequence(
        &filter,
        &[
            (
                "client reset",
                f.c2s_udp(&openvpn_client_reset(
                    0x1f2b_1e4e_edf3_db60,
                    OvpnWrap::Plain,
                )),
                XDP_PASS,
                p,
            ),
            (
                "server reset for another client session",
                f.s2c_udp(&openvpn_server_reset(
                    0xa957_88e6_055f_db17,
                    0x42b7_e810_9cd3_5a6f,
                    OvpnWrap::Plain,
                )),
                XDP_PASS,
                p,
            ),
            // Data before the server's reset: no pending flow claims a packet without a
            // session id (a decoy's pending flow must not swallow another protocol's packet
            // that starts like OpenVPN data); the fully-encrypted rule judges it.
            (
                "data: the flow is only pending",
                f.c2s_udp(&openvpn_data_v2(0, 1, 108)),
                XDP_PASS,
                Some((Protocol::FullyEncrypted, Verdict::Monitored)),
            ),
        ],
    );
}

#[test]
fn a_registered_openvpn_client_is_allowed_through_the_whole_handshake() {
    let filter = enforce();
    let f = Flow {
        client: REG_V4.into(),
        server: "192.0.2.80".parse().unwrap(),
        cport: 40000,
        sport: 1194,
        vlan: None,
    };
    let a = Some((OVPN, Verdict::Allowed));
    let (cs, ss) = (0x9d3e_25c1_f078_a4b6, 0x1c84_e7f2_6a95_03db);
    sequence(
        &filter,
        &[
            (
                "client reset",
                f.c2s_udp(&openvpn_client_reset(cs, TLS_AUTH_SHA1)),
                XDP_PASS,
                a,
            ),
            (
                "server reset",
                f.s2c_udp(&openvpn_server_reset(ss, cs, TLS_AUTH_SHA1)),
                XDP_PASS,
                a,
            ),
            (
                "control",
                f.c2s_udp(&openvpn_control(cs, ss, TLS_AUTH_SHA1, 2, 1, 300)),
                XDP_PASS,
                a,
            ),
            ("data", f.s2c_udp(&openvpn_data_v2(0, 1, 108)), XDP_PASS, a),
        ],
    );
    let s = stats(&filter);
    assert_eq!(
        s.counter(Counter::AllowlistLookups),
        1,
        "later packets skip the lookup: {s:?}"
    );
}

#[test]
fn a_wireguard_data_only_flow_is_confirmed_by_its_fourth_packet() {
    for v6 in [false, true] {
        let filter = enforce();
        let f = Flow::new(v6, 60, 38031, 51820);
        let p = Some((WG, Verdict::Pending));
        let d = Some((WG, Verdict::Dropped));
        sequence(
            &filter,
            &[
                (
                    "data 1 (client)",
                    f.c2s_udp(&wireguard_data(0xa10a_4fe6, 10, 128)),
                    XDP_PASS,
                    p,
                ),
                (
                    "data 2 (server)",
                    f.s2c_udp(&wireguard_data(0xb9ea_c571, 10, 128)),
                    XDP_PASS,
                    p,
                ),
                (
                    "data 3 (client)",
                    f.c2s_udp(&wireguard_data(0xa10a_4fe6, 11, 128)),
                    XDP_PASS,
                    p,
                ),
                (
                    "data 4 (server) confirms",
                    f.s2c_udp(&wireguard_data(0xb9ea_c571, 11, 128)),
                    XDP_DROP,
                    d,
                ),
                (
                    "data 5 (client)",
                    f.c2s_udp(&wireguard_data(0xa10a_4fe6, 12, 128)),
                    XDP_DROP,
                    d,
                ),
                (
                    "keepalive (server)",
                    f.s2c_udp(&wireguard_data(0xb9ea_c571, 12, 32)),
                    XDP_DROP,
                    d,
                ),
            ],
        );
    }
}

#[test]
fn a_padded_wireguard_initiation_is_confirmed_by_a_response_echoing_its_sender_index() {
    for v6 in [false, true] {
        let filter = enforce();
        let f = Flow::new(v6, 70, 40000, 443);
        let d = Some((WG, Verdict::Dropped));
        sequence(
            &filter,
            &[
                (
                    "padded initiation (204)",
                    f.c2s_udp(&wireguard_padded_initiation(0xcafe, 204)),
                    XDP_PASS,
                    Some((WG, Verdict::Pending)),
                ),
                (
                    "padded response (100) echoing 0xcafe",
                    f.s2c_udp(&wireguard_padded_response(0xbeef, 0xcafe, 100)),
                    XDP_DROP,
                    d,
                ),
                (
                    "data from the client",
                    f.c2s_udp(&wireguard_data(0xbeef, 0, 128)),
                    XDP_DROP,
                    d,
                ),
            ],
        );
    }
}

#[test]
fn a_padded_wireguard_response_echoing_another_index_does_not_confirm() {
    let filter = enforce();
    let f = Flow::new(false, 71, 40000, 443);
    let p = Some((WG, Verdict::Pending));
    sequence(
        &filter,
        &[
            (
                "padded initiation",
                f.c2s_udp(&wireguard_padded_initiation(0xcafe, 204)),
                XDP_PASS,
                p,
            ),
            (
                "padded response echoing 0xdead",
                f.s2c_udp(&wireguard_padded_response(0xbeef, 0xdead, 100)),
                XDP_PASS,
                p,
            ),
        ],
    );
}

#[test]
fn a_pending_flow_expires_after_the_pending_timeout() {
    let config = Config {
        pending_flow_timeout_ns: 50_000_000,
        ..Config::default()
    };
    let filter = load(&Policy::default(), &config);
    let f = Flow::new(false, 80, 40000, 1194);
    assert_eq!(
        run(
            &filter,
            &f.c2s_udp(&openvpn_client_reset(
                0x7e31_c9a4_25bd_f018,
                OvpnWrap::Plain
            ))
        ),
        XDP_PASS
    );
    std::thread::sleep(std::time::Duration::from_millis(120));
    let before = stats(&filter);
    assert_eq!(
        run(
            &filter,
            &f.s2c_udp(&openvpn_server_reset(
                0x2c97_4be1_d305_8fa6,
                0x7e31_c9a4_25bd_f018,
                OvpnWrap::Plain
            ))
        ),
        XDP_PASS,
        "too late to confirm"
    );
    assert_eq!(stats(&filter).verdicts_since(&before), vec![]);
}

#[test]
fn a_blocked_flow_is_forgotten_after_the_blocked_timeout() {
    let config = Config {
        blocked_flow_timeout_ns: 50_000_000,
        ..Config::default()
    };
    let filter = load(&Policy::default(), &config);
    let f = Flow::new(false, 81, 40000, 51820);
    for n in 0..3 {
        assert_eq!(
            run(&filter, &f.c2s_udp(&wireguard_data(2, n, 64))),
            XDP_PASS
        );
    }
    assert_eq!(
        run(&filter, &f.c2s_udp(&wireguard_data(2, 3, 64))),
        XDP_DROP,
        "confirmed"
    );
    assert_eq!(
        run(&filter, &f.c2s_udp(&wireguard_data(2, 4, 64))),
        XDP_DROP,
        "while blocked"
    );
    std::thread::sleep(std::time::Duration::from_millis(120));
    let before = stats(&filter);
    assert_eq!(
        run(&filter, &f.c2s_udp(&wireguard_data(2, 1, 64))),
        XDP_PASS,
        "a fresh data-only flow"
    );
    assert_eq!(
        stats(&filter).verdicts_since(&before),
        vec![(WG, Verdict::Pending, 1)]
    );
}

// ---------------------------------------------------------------------------------------
// Robustness: what must pass
// ---------------------------------------------------------------------------------------

const C4: Ipv4Addr = Ipv4Addr::new(10, 9, 9, 2);
const S4: Ipv4Addr = Ipv4Addr::new(10, 9, 9, 1);

fn c6() -> Ipv6Addr {
    "2001:db8:9::2".parse().unwrap()
}

fn s6() -> Ipv6Addr {
    "2001:db8:9::1".parse().unwrap()
}

fn wg4(sport: u16) -> Frame {
    Frame::eth()
        .ipv4(C4, S4)
        .udp(sport, 51820)
        .payload(&wireguard_initiation(3))
}

fn wg6(sport: u16) -> Frame {
    Frame::eth()
        .ipv6(c6(), s6())
        .udp(sport, 51820)
        .payload(&wireguard_initiation(3))
}

/// A row that must pass with no verdict counter moving and `counter` moving by one.
fn pass_row(what: &str, frame: Vec<u8>) -> Row {
    Row {
        what: what.into(),
        frame,
        action: XDP_PASS,
        counts: None,
    }
}

fn check_counter(filter: &Filter, what: &str, frame: &[u8], action: u32, counter: Counter) {
    let before = stats(filter);
    let got = run(filter, frame);
    let after = stats(filter);
    assert_eq!(got, action, "{what}: action");
    assert_eq!(
        counter_delta(&before, &after, counter),
        1,
        "{what}: counter {counter:?} moves by one"
    );
}

#[test]
fn truncated_vpn_frames_pass_at_every_cut() {
    let filter = enforce();
    let mut rows = Vec::new();
    for (name, full) in [
        ("ipv4 wireguard", wg4(40000).build()),
        ("ipv6 wireguard", wg6(40000).build()),
        (
            "qinq ipv4 ike",
            Frame::eth()
                .qinq(1, 2)
                .ipv4(C4, S4)
                .udp(40001, 500)
                .payload(&ikev2_sa_init(3, 352))
                .build(),
        ),
        (
            "ipv6 tcp pptp",
            Frame::eth()
                .ipv6(c6(), s6())
                .tcp(40002, 1723)
                .payload(&pptp_sccrq())
                .build(),
        ),
    ] {
        for cut in (14..full.len()).step_by(3) {
            rows.push(pass_row(
                &format!("{name} cut at {cut} of {}", full.len()),
                full[..cut].to_vec(),
            ));
        }
    }
    run_table(&filter, &rows);
}

#[test]
fn truncated_headers_are_counted_as_truncated() {
    let filter = enforce();
    let full = wg4(40000).build();
    check_counter(
        &filter,
        "cut inside the IPv4 header",
        &full[..14 + 10],
        XDP_PASS,
        Counter::Truncated,
    );
    let vlan = Frame::eth().vlan(5).ipv4(C4, S4).udp(1, 2).build();
    check_counter(
        &filter,
        "cut inside the VLAN tag",
        &vlan[..16],
        XDP_PASS,
        Counter::Truncated,
    );
}

#[test]
fn lying_lengths_pass_and_are_counted_as_malformed() {
    let filter = enforce();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "ipv4 total length beyond the frame",
            wg4(40000).ip_len(2000).build(),
        ),
        (
            "ipv4 total length shorter than the header",
            wg4(40001).ip_len(12).build(),
        ),
        ("ipv4 ihl below 5", wg4(40002).ihl(4).build()),
        (
            "ipv4 ihl beyond the total length",
            wg4(40003).ihl(15).ip_len(40).build(),
        ),
        (
            "ethertype ipv4 but version 6",
            wg4(40004).ip_version(6).build(),
        ),
        (
            "udp length beyond the ip payload",
            wg4(40005).udp_len(400).build(),
        ),
        ("udp length below 8", wg4(40006).udp_len(7).build()),
        (
            "ipv6 payload length beyond the frame",
            wg6(40007).ip_len(1000).build(),
        ),
        (
            "ethertype ipv6 but version 4",
            wg6(40008).ip_version(4).build(),
        ),
        (
            "ipv6 udp length beyond the payload",
            wg6(40009).udp_len(400).build(),
        ),
        (
            "tcp data offset below 5",
            Frame::eth()
                .ipv4(C4, S4)
                .tcp(40010, 1723)
                .payload(&pptp_sccrq())
                .tcp_data_offset(4)
                .build(),
        ),
        (
            "tcp data offset beyond the segment",
            Frame::eth()
                .ipv4(C4, S4)
                .tcp(40011, 1723)
                .tcp_data_offset(15)
                .payload(&[0; 20])
                .build(),
        ),
        (
            "ipv6 extension header longer than the payload",
            Frame::eth()
                .ipv6(c6(), s6())
                .ext(Ext::DestOpts { len8: 20 })
                .udp(40012, 51820)
                .payload(&wireguard_initiation(3))
                .ip_len(16)
                .build(),
        ),
    ];
    for (what, frame) in cases {
        check_counter(&filter, what, &frame, XDP_PASS, Counter::Malformed);
    }
    assert_eq!(stats(&filter).dropped(), 0);
}

#[test]
fn a_udp_length_shorter_than_the_ip_payload_judges_only_the_udp_payload() {
    // Trailing bytes after the UDP datagram (Ethernet padding, or a lie) are not payload:
    // a 148-byte initiation announced as 100 bytes is not an initiation.
    let filter = enforce();
    let rows = vec![
        // Not an initiation: random-looking bytes, which the fully-encrypted rule reports.
        Row {
            what: "148 bytes announced as 100".into(),
            frame: wg4(40000).udp_len(108).build(),
            action: XDP_PASS,
            counts: Some((Protocol::FullyEncrypted, Verdict::Monitored)),
        },
        Row {
            what: "an initiation followed by trailing bytes".into(),
            frame: Frame::eth()
                .ipv4(C4, S4)
                .udp(40001, 51820)
                .payload(&[wireguard_initiation(4), vec![0; 20]].concat())
                .udp_len(156)
                .build(),
            action: XDP_DROP,
            counts: Some((WG, Verdict::Dropped)),
        },
    ];
    run_table(&filter, &rows);
}

#[test]
fn runt_frames_padded_to_the_ethernet_minimum_are_judged_by_their_ip_length() {
    let filter = enforce();
    let mut frame = Frame::eth()
        .ipv4(C4, S4)
        .udp(40000, 1194)
        .payload(&[0x38, 1, 2])
        .build();
    frame.resize(60, 0);
    assert_eq!(run(&filter, &frame), XDP_PASS);
    let mut keepalive = Frame::eth()
        .ipv4(C4, S4)
        .udp(40001, 4500)
        .payload(&nat_keepalive())
        .build();
    keepalive.resize(60, 0);
    assert_eq!(run(&filter, &keepalive), XDP_PASS);
    assert_eq!(stats(&filter).counter(Counter::Malformed), 0);
}

#[test]
fn garbage_frames_never_abort() {
    let filter = enforce();
    let mut x = 0x1234_5678_9abc_def0u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..20_000 {
        let len = 14 + (next() % 300) as usize;
        let mut f: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Steer a good share into the IPv4/IPv6/VLAN parsers.
        match i % 4 {
            0 => f[12..14].copy_from_slice(&[0x08, 0x00]),
            1 => f[12..14].copy_from_slice(&[0x86, 0xdd]),
            2 => f[12..14].copy_from_slice(&[0x81, 0x00]),
            _ => {}
        }
        let a = run(&filter, &f);
        assert!(a == XDP_PASS || a == XDP_DROP);
    }
    // Random bytes can form a VPN signature (ESP is IP protocol 50 alone); what matters here
    // is that the program never aborts. The false-positive suite bounds the drops.
}

#[test]
fn non_first_fragments_pass_and_are_counted() {
    let filter = enforce();
    let wg = wireguard_initiation(3);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "ipv4 fragment at offset 8 with more fragments",
            Frame::eth()
                .ipv4(C4, S4)
                .fragment(true, 8)
                .ip_proto(17)
                .payload(&wg)
                .build(),
        ),
        (
            "ipv4 last fragment",
            Frame::eth()
                .ipv4(C4, S4)
                .fragment(false, 1480)
                .ip_proto(17)
                .payload(&wg)
                .build(),
        ),
        (
            "ipv4 fragment with a VLAN tag",
            Frame::eth()
                .vlan(7)
                .ipv4(C4, S4)
                .fragment(false, 16)
                .ip_proto(50)
                .payload(&wg)
                .build(),
        ),
        (
            "ipv6 fragment at offset 8",
            Frame::eth()
                .ipv6(c6(), s6())
                .fragment(true, 8)
                .ip_proto(17)
                .payload(&wg)
                .build(),
        ),
        (
            "ipv6 last fragment after a hop-by-hop header",
            Frame::eth()
                .ipv6(c6(), s6())
                .hop_by_hop()
                .fragment(false, 1232)
                .ip_proto(17)
                .payload(&wg)
                .build(),
        ),
    ];
    for (what, frame) in cases {
        check_counter(&filter, what, &frame, XDP_PASS, Counter::Fragment);
    }
}

#[test]
fn the_first_fragment_of_a_vpn_handshake_is_judged_like_any_packet() {
    // README, "Fragments": the first fragment carries the UDP header and is judged; its UDP
    // length announces the whole datagram, longer than this fragment.
    let filter = enforce();
    let ike = ikev2_sa_init(0x1f, 1600);
    let wg = wireguard_initiation(3);
    let rows = vec![
        Row {
            what: "ipv4 first fragment of a 1600-byte IKE_SA_INIT".into(),
            frame: Frame::eth()
                .ipv4(C4, S4)
                .fragment(true, 0)
                .udp(500, 500)
                .udp_len(1608)
                .payload(&ike[..1000])
                .build(),
            action: XDP_DROP,
            counts: Some((Protocol::Ike, Verdict::Dropped)),
        },
        Row {
            what: "ipv6 first fragment of a 1600-byte IKE_SA_INIT".into(),
            frame: Frame::eth()
                .ipv6(c6(), s6())
                .fragment(true, 0)
                .udp(500, 500)
                .udp_len(1608)
                .payload(&ike[..1000])
                .build(),
            action: XDP_DROP,
            counts: Some((Protocol::Ike, Verdict::Dropped)),
        },
        Row {
            what: "ipv4 first fragment holding 64 bytes of a WireGuard initiation".into(),
            frame: Frame::eth()
                .ipv4(C4, S4)
                .fragment(true, 0)
                .udp(40000, 51820)
                .udp_len(156)
                .payload(&wg[..64])
                .build(),
            action: XDP_DROP,
            counts: Some((WG, Verdict::Dropped)),
        },
        Row {
            what: "ipv4 first fragment of a registered client's IKE_SA_INIT".into(),
            frame: Frame::eth()
                .ipv4(REG_V4, S4)
                .fragment(true, 0)
                .udp(500, 500)
                .udp_len(1608)
                .payload(&ike[..1000])
                .build(),
            action: XDP_PASS,
            counts: Some((Protocol::Ike, Verdict::Allowed)),
        },
        Row {
            what: "ipv6 atomic fragment (offset 0, no more) of a WireGuard initiation".into(),
            frame: Frame::eth()
                .ipv6(c6(), s6())
                .fragment(false, 0)
                .udp(40001, 51820)
                .payload(&wg)
                .build(),
            action: XDP_DROP,
            counts: Some((WG, Verdict::Dropped)),
        },
    ];
    run_table(&filter, &rows);
}

#[test]
fn tiny_first_fragments_are_dropped_and_counted_whatever_they_carry() {
    // RFC 1858: a first fragment with only the UDP header and a few payload bytes would
    // hide a handshake's identifying bytes in later fragments, which carry no ports.
    let filter = enforce();
    let wg = wireguard_initiation(4);
    let dns = b"\x12\x34\x01\x00\x00\x01\x00\x00";
    for (what, frame) in [
        (
            "ipv4 first fragment with 8 bytes of a WireGuard initiation",
            Frame::eth()
                .ipv4(C4, S4)
                .fragment(true, 0)
                .udp(40000, 51820)
                .udp_len(156)
                .payload(&wg[..8])
                .build(),
        ),
        (
            "ipv6 first fragment with 4 payload bytes",
            Frame::eth()
                .ipv6(c6(), s6())
                .fragment(true, 0)
                .udp(40000, 51820)
                .udp_len(156)
                .payload(&wg[..4])
                .build(),
        ),
        (
            "ipv4 first fragment of a registered client with 8 payload bytes",
            Frame::eth()
                .ipv4(REG_V4, S4)
                .fragment(true, 0)
                .udp(53, 53)
                .udp_len(600)
                .payload(dns)
                .build(),
        ),
    ] {
        let before = filter.stats().unwrap().counter(Counter::TinyFragment);
        assert_eq!(filter.run_frame(&frame).unwrap(), XDP_DROP, "{what}");
        let after = filter.stats().unwrap().counter(Counter::TinyFragment);
        assert_eq!(after, before + 1, "{what}: counted as tiny_fragment");
    }
    // A first fragment with 64 payload bytes (MIN_FIRST_FRAGMENT_PAYLOAD) is an ordinary
    // first fragment: judged, and ordinary traffic passes.
    let frame = Frame::eth()
        .ipv4(C4, S4)
        .fragment(true, 0)
        .udp(53, 53)
        .udp_len(600)
        .payload(&[0x55; 64])
        .build();
    assert_eq!(filter.run_frame(&frame).unwrap(), XDP_PASS);
}

#[test]
fn ipv4_options_and_ipv6_extension_headers_are_skipped_to_reach_the_payload() {
    let filter = enforce();
    let wg = wireguard_initiation(9);
    let d = Some((WG, Verdict::Dropped));
    let rows = vec![
        Row {
            what: "ipv4 with router-alert and padding options".into(),
            frame: Frame::eth()
                .ipv4(C4, S4)
                .ipv4_options(&[0x94, 0x04, 0, 0, 0x01, 0x01])
                .udp(40000, 51820)
                .payload(&wg)
                .build(),
            action: XDP_DROP,
            counts: d,
        },
        Row {
            what: "ipv4 with 40 bytes of options (IHL 15)".into(),
            frame: Frame::eth()
                .ipv4(C4, S4)
                .ipv4_options(&[1; 40])
                .udp(40001, 51820)
                .payload(&wg)
                .build(),
            action: XDP_DROP,
            counts: d,
        },
        Row {
            what: "ipv6 hop-by-hop, routing, destination options".into(),
            frame: Frame::eth()
                .ipv6(c6(), s6())
                .hop_by_hop()
                .routing()
                .dest_opts()
                .udp(40002, 51820)
                .payload(&wg)
                .build(),
            action: XDP_DROP,
            counts: d,
        },
        Row {
            what: "ipv6 six extension headers (the limit)".into(),
            frame: Frame::eth()
                .ipv6(c6(), s6())
                .hop_by_hop()
                .dest_opts()
                .routing()
                .dest_opts()
                .fragment(false, 0)
                .dest_opts()
                .udp(40003, 51820)
                .payload(&wg)
                .build(),
            action: XDP_DROP,
            counts: d,
        },
        Row {
            what: "ipv6 dest options then ESP".into(),
            frame: Frame::eth()
                .ipv6(c6(), s6())
                .dest_opts()
                .esp(0x99, 1)
                .payload(&[0; 48])
                .build(),
            action: XDP_DROP,
            counts: Some((Protocol::Esp, Verdict::Dropped)),
        },
        Row {
            what: "qinq ipv6 with a routing header, tcp with options (pptp)".into(),
            frame: Frame::eth()
                .qinq(3, 4)
                .ipv6(c6(), s6())
                .routing()
                .tcp(40004, 1723)
                .tcp_syn_options()
                .payload(&pptp_sccrq())
                .build(),
            action: XDP_DROP,
            counts: Some((Protocol::Pptp, Verdict::Dropped)),
        },
    ];
    run_table(&filter, &rows);
}

#[test]
fn ipv6_extension_chains_beyond_the_parser_limit_are_dropped_and_counted() {
    let mut nine = Frame::eth().ipv6(c6(), s6());
    for _ in 0..9 {
        nine = nine.dest_opts();
    }
    let nine = nine
        .udp(40000, 53)
        .payload(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00")
        .build();
    // A 2048-byte destination options header and one more: more extension header bytes
    // than followed.
    let deep = Frame::eth()
        .ipv6(c6(), s6())
        .ext(Ext::DestOpts { len8: 255 })
        .ext(Ext::DestOpts { len8: 0 })
        .udp(40001, 51820)
        .payload(&wireguard_initiation(2))
        .build();
    // The default: dropped, whatever they carry (even DNS), since the chain could hide a VPN.
    let filter = enforce();
    check_counter(
        &filter,
        "nine extension headers",
        &nine,
        XDP_DROP,
        Counter::ExtHeaderLimit,
    );
    check_counter(
        &filter,
        "2 KiB of extension headers",
        &deep,
        XDP_DROP,
        Counter::ExtHeaderLimit,
    );
    // --ext-header-overflow pass: passed uninspected, still counted.
    let filter = load(
        &Policy::default(),
        &Config {
            ext_header_overflow: ExtHeaderOverflow::Pass as u8,
            ..Config::default()
        },
    );
    check_counter(
        &filter,
        "nine extension headers, pass",
        &nine,
        XDP_PASS,
        Counter::ExtHeaderLimit,
    );
    check_counter(
        &filter,
        "2 KiB of extension headers, pass",
        &deep,
        XDP_PASS,
        Counter::ExtHeaderLimit,
    );
}

#[test]
fn arp_ndp_icmp_and_other_ethertypes_pass() {
    let filter = enforce();
    check_counter(
        &filter,
        "arp request",
        &Frame::eth().arp_request(C4, S4).build(),
        XDP_PASS,
        Counter::NonIp,
    );
    check_counter(
        &filter,
        "lldp",
        &Frame::eth()
            .raw(0x88cc, &[0x02, 0x07, 0x04, 0, 0, 0, 0, 0, 1])
            .build(),
        XDP_PASS,
        Counter::NonIp,
    );
    // Three tags are parsed (QinQ plus a customer tag); a fourth is not an access network's.
    check_counter(
        &filter,
        "four vlan tags",
        &Frame::eth()
            .vlan(1)
            .vlan(2)
            .vlan(3)
            .vlan(4)
            .ipv4(C4, S4)
            .udp(40000, 51820)
            .payload(&wireguard_initiation(1))
            .build(),
        XDP_PASS,
        Counter::NonIp,
    );
    let rows = vec![
        pass_row(
            "ndp neighbour solicitation",
            Frame::eth()
                .ipv6(
                    "fe80::2".parse().unwrap(),
                    "ff02::1:ff00:1".parse().unwrap(),
                )
                .ttl(255)
                .ndp_solicit(s6())
                .build(),
        ),
        pass_row(
            "icmp echo",
            Frame::eth()
                .ipv4(C4, S4)
                .icmp_echo(1, 1)
                .payload(&[0x61; 56])
                .build(),
        ),
        pass_row(
            "icmpv6 echo",
            Frame::eth()
                .ipv6(c6(), s6())
                .icmp_echo(1, 1)
                .payload(&[0x61; 56])
                .build(),
        ),
        pass_row(
            "icmp carrying a wireguard initiation",
            Frame::eth()
                .ipv4(C4, S4)
                .icmp_echo(2, 2)
                .payload(&wireguard_initiation(1))
                .build(),
        ),
        pass_row(
            "icmp port unreachable quoting a wireguard initiation",
            Frame::eth()
                .ipv4(S4, C4)
                .icmp(3, 3, [0; 4])
                .payload(
                    &Frame::eth()
                        .ipv4(C4, S4)
                        .udp(40000, 51820)
                        .payload(&wireguard_initiation(1))
                        .build()[14..],
                )
                .build(),
        ),
        pass_row(
            "vlan icmp echo",
            Frame::eth().vlan(9).ipv4(C4, S4).icmp_echo(3, 3).build(),
        ),
        pass_row(
            "ip protocol 115 (L2TPv3 over IP: not detected)",
            Frame::eth()
                .ipv4(C4, S4)
                .ip_proto(115)
                .payload(&[0; 40])
                .build(),
        ),
    ];
    run_table(&filter, &rows);
    assert_eq!(stats(&filter).dropped(), 0);
}

#[test]
fn counters_follow_the_packets() {
    let filter = enforce();
    let before = stats(&filter);
    let f = Flow::new(false, 90, 40000, 51820);
    run(&filter, &f.c2s_udp(&wireguard_initiation(1)));
    run(
        &filter,
        &Frame::eth()
            .ipv6(c6(), s6())
            .udp(40001, 53)
            .payload(&dns_query(0x1234, "example.com"))
            .build(),
    );
    run(&filter, &Frame::eth().arp_request(C4, S4).build());
    let after = stats(&filter);
    assert_eq!(counter_delta(&before, &after, Counter::Packets), 3);
    assert_eq!(counter_delta(&before, &after, Counter::Ipv4), 1);
    assert_eq!(counter_delta(&before, &after, Counter::Ipv6), 1);
    assert_eq!(counter_delta(&before, &after, Counter::NonIp), 1);
    assert_eq!(
        counter_delta(&before, &after, Counter::Candidates),
        1,
        "only the initiation was inspected"
    );
    assert_eq!(
        counter_delta(&before, &after, Counter::FlowInsert),
        0,
        "a drop conclusive alone needs no flow entry"
    );
    assert_eq!(counter_delta(&before, &after, Counter::AllowlistLookups), 1);
    assert_eq!(counter_delta(&before, &after, Counter::EventsEmitted), 1);
    assert_eq!(after.dropped() - before.dropped(), 1);
}

#[test]
fn drop_events_are_rate_limited_per_source() {
    let filter = enforce();
    let before = stats(&filter);
    for i in 0..20u16 {
        let f = Flow::new(false, 91, 41000 + i, 51820);
        assert_eq!(
            run(&filter, &f.c2s_udp(&wireguard_initiation(i as u32))),
            XDP_DROP
        );
    }
    let after = stats(&filter);
    assert_eq!(
        counter_delta(&before, &after, Counter::EventsEmitted),
        5,
        "the default 5 events per source per second"
    );
    assert_eq!(
        counter_delta(&before, &after, Counter::EventsSuppressed),
        15
    );
}
