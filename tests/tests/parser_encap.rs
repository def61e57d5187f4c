//! Issue 14, item 5: the encapsulations operators have. A VPN handshake from an unregistered
//! source inside PPPoE, VLAN stacks, MPLS, IP-in-IP, GRE, VXLAN or Geneve is judged exactly
//! like the same packet unencapsulated, on its inner addresses, and counted as
//! `encapsulated` (VLAN stacks excepted, see `Encap::counted_as_encapsulated`); a registered
//! inner source passes; ordinary traffic inside any of them
//! passes with no protocol counter moving.
//!
//! The outer tunnel endpoints ([`mangle::TUNNEL_V4`], [`mangle::TUNNEL_V6`]) are never
//! registered: a registered inner source passing shows the inner addresses are the ones
//! looked up.

use vpn_filter::kernel::Filter;
use vpn_filter_common::{Counter, Protocol, Verdict};
use vpn_filter_tests::{
    judge::{client, expect, load, server, Failures, Outcome, XDP_DROP, XDP_PASS},
    mangle::{Encap, GreFields, ETH_P_9100},
    packet::*,
};

const WG: Protocol = Protocol::WireGuard;
const IKE: Protocol = Protocol::Ike;
const OVPN: Protocol = Protocol::OpenVpn;

/// One step of an exchange: the frame (unencapsulated) and what it must do when it is not
/// encapsulated. Inside an encapsulation the same, plus `encapsulated` +1.
type Step = (String, Vec<u8>, Outcome);

/// The VPN exchanges of item 5, from a client of family `v6`, registered or not, on client
/// port `port` (each exchange on its own 5-tuple): a WireGuard initiation, an IKE_SA_INIT,
/// and an OpenVPN UDP hard reset (pending alone) confirmed by the server's hard reset.
fn vpn_exchanges(v6: bool, registered: bool, port: u16) -> Vec<Vec<Step>> {
    let (c, s) = (client(v6, registered), server(v6));
    let judged = |p: Protocol, pending: bool| {
        let (action, verdict) = match (registered, pending) {
            (true, _) => (XDP_PASS, Verdict::Allowed),
            (false, true) => (XDP_PASS, Verdict::Pending),
            (false, false) => (XDP_DROP, Verdict::Dropped),
        };
        expect(action, Some((p, verdict)), &[])
    };
    let who = if registered {
        "registered"
    } else {
        "unregistered"
    };
    vec![
        vec![(
            format!("wireguard initiation from {who} {c}"),
            Frame::eth()
                .ip(c, s)
                .udp(port, 51820)
                .payload(&wireguard_initiation(port as u32))
                .build(),
            judged(WG, false),
        )],
        vec![(
            format!("ike_sa_init from {who} {c}"),
            Frame::eth()
                .ip(c, s)
                .udp(port + 1, 500)
                .payload(&ikev2_sa_init(0x1ce0_0000 | port as u64, 352))
                .build(),
            judged(IKE, false),
        )],
        vec![
            (
                format!("openvpn client hard reset from {who} {c}"),
                Frame::eth()
                    .ip(c, s)
                    .udp(port + 2, 1194)
                    .payload(&openvpn_client_reset(
                        0x1f2b_1e4e_edf3_0000 ^ port as u64,
                        OvpnWrap::Plain,
                    ))
                    .build(),
                judged(OVPN, true),
            ),
            (
                format!("openvpn server hard reset to {who} {c}"),
                Frame::eth()
                    .ip(s, c)
                    .udp(1194, port + 2)
                    .payload(&openvpn_server_reset(
                        0xa957_88e6_055f_0000 ^ port as u64,
                        0x1f2b_1e4e_edf3_0000 ^ port as u64,
                        OvpnWrap::Plain,
                    ))
                    .build(),
                judged(OVPN, false),
            ),
        ],
    ]
}

/// Ordinary traffic from the false-positive corpus (DNS, QUIC Initial, STUN, TLS
/// ClientHello, NTP) from an unregistered client on client port `port`.
fn ordinary(v6: bool, port: u16) -> Vec<(String, Vec<u8>)> {
    let (c, s) = (client(v6, false), server(v6));
    let udp = |sport: u16, dport: u16, payload: &[u8]| {
        Frame::eth()
            .ip(c, s)
            .udp(sport, dport)
            .payload(payload)
            .build()
    };
    vec![
        (
            "dns query".into(),
            udp(port, 53, &dns_query(port, "example.com")),
        ),
        (
            "dns answer".into(),
            Frame::eth()
                .ip(s, c)
                .udp(53, port)
                .payload(&dns_answer(
                    port,
                    "example.com",
                    &[[93, 184, 215, 14].into()],
                ))
                .build(),
        ),
        (
            "quic initial".into(),
            udp(port + 1, 443, &quic_initial(&[7; 8], &[9; 8], 1200)),
        ),
        (
            "stun binding request".into(),
            udp(port + 2, 3478, &stun_binding_request([3; 12])),
        ),
        ("ntp request".into(), udp(port + 3, 123, &ntp_request())),
        (
            "tls client hello".into(),
            Frame::eth()
                .ip(c, s)
                .tcp(port + 4, 443)
                .payload(&tls_client_hello("example.com"))
                .build(),
        ),
    ]
}

/// Runs every exchange of both families and both registrations inside `encap` (a fresh
/// 5-tuple per exchange): each step must do what it does unencapsulated, and be counted as
/// encapsulated.
fn vpn_inside(filter: &Filter, encap: &Encap, port: u16, failures: &mut Failures) {
    for v6 in [false, true] {
        for registered in [false, true] {
            let port = port + 8 * (2 * v6 as u16 + registered as u16);
            for exchange in vpn_exchanges(v6, registered, port) {
                for (what, frame, mut want) in exchange {
                    if encap.counted_as_encapsulated() {
                        want.counters.push((Counter::Encapsulated, 1));
                    }
                    failures.check(
                        filter,
                        &format!("{} inside {}", what, encap.name()),
                        &encap.wrap(&frame),
                        &want,
                    );
                }
            }
        }
    }
}

fn vpn_inside_all(encaps: &[Encap]) {
    let filter = load();
    let mut failures = Failures::default();
    for (i, encap) in encaps.iter().enumerate() {
        vpn_inside(&filter, encap, 20000 + 64 * i as u16, &mut failures);
    }
    failures.assert_none();
}

#[test]
fn vpn_handshakes_without_encapsulation_are_judged_as_the_encapsulated_tests_expect() {
    // The control: the same exchanges and expectations, unencapsulated, no `encapsulated`.
    let filter = load();
    let mut failures = Failures::default();
    for v6 in [false, true] {
        for registered in [false, true] {
            let port = 30000 + 8 * (2 * v6 as u16 + registered as u16);
            for exchange in vpn_exchanges(v6, registered, port) {
                for (what, frame, want) in exchange {
                    failures.check(&filter, &what, &frame, &want);
                }
            }
        }
    }
    failures.assert_none();
}

#[test]
fn a_wireguard_initiation_inside_pppoe_is_dropped() {
    vpn_inside_all(&[Encap::Pppoe]);
}

#[test]
fn vpn_handshakes_inside_two_and_three_vlan_tags_of_any_tpid_are_dropped() {
    vpn_inside_all(&[
        Encap::Vlans(vec![ETH_P_8021AD, ETH_P_8021Q]),
        Encap::Vlans(vec![ETH_P_8021Q, ETH_P_8021Q]),
        Encap::Vlans(vec![ETH_P_9100, ETH_P_8021Q]),
        Encap::Vlans(vec![ETH_P_9100, ETH_P_8021AD]),
        Encap::Vlans(vec![ETH_P_8021AD, ETH_P_8021Q, ETH_P_8021Q]),
        Encap::Vlans(vec![ETH_P_9100, ETH_P_8021AD, ETH_P_8021Q]),
        Encap::Vlans(vec![ETH_P_8021Q, ETH_P_9100, ETH_P_8021AD]),
        Encap::Vlans(vec![ETH_P_9100, ETH_P_9100, ETH_P_9100]),
    ]);
}

#[test]
fn vpn_handshakes_behind_one_to_four_mpls_labels_are_dropped() {
    vpn_inside_all(&[
        Encap::Mpls(1),
        Encap::Mpls(2),
        Encap::Mpls(3),
        Encap::Mpls(4),
    ]);
}

#[test]
fn vpn_handshakes_inside_ip_in_ip_6in4_4in6_and_6in6_are_dropped() {
    // Inner IPv4 and IPv6 in each outer family: protocol 4 or 41.
    vpn_inside_all(&[
        Encap::IpInIp { outer_v6: false },
        Encap::IpInIp { outer_v6: true },
    ]);
}

#[test]
fn vpn_handshakes_inside_gre_carrying_ip_or_ethernet_are_dropped() {
    let mut encaps = Vec::new();
    for outer_v6 in [false, true] {
        for ethernet in [false, true] {
            for fields in [
                GreFields::default(),
                GreFields {
                    checksum: true,
                    ..Default::default()
                },
                GreFields {
                    key: true,
                    ..Default::default()
                },
                GreFields {
                    sequence: true,
                    ..Default::default()
                },
                GreFields::ALL,
            ] {
                encaps.push(Encap::Gre {
                    outer_v6,
                    ethernet,
                    fields,
                });
            }
        }
    }
    vpn_inside_all(&encaps);
}

#[test]
fn vpn_handshakes_inside_vxlan_are_dropped() {
    vpn_inside_all(&[Encap::Vxlan]);
}

#[test]
fn vpn_handshakes_inside_geneve_with_and_without_options_are_dropped() {
    vpn_inside_all(&[
        Encap::Geneve { options: false },
        Encap::Geneve { options: true },
    ]);
}

#[test]
fn ordinary_traffic_inside_every_encapsulation_passes_without_a_protocol_counter() {
    let filter = load();
    let mut failures = Failures::default();
    for (i, encap) in Encap::all().iter().enumerate() {
        let counted: &[Counter] = if encap.counted_as_encapsulated() {
            &[Counter::Encapsulated]
        } else {
            &[]
        };
        let want = expect(XDP_PASS, None, counted);
        for v6 in [false, true] {
            let port = 40000 + 16 * (2 * i as u16 + v6 as u16);
            for (what, frame) in ordinary(v6, port) {
                failures.check(
                    &filter,
                    &format!(
                        "{what} over {} inside {}",
                        if v6 { "v6" } else { "v4" },
                        encap.name()
                    ),
                    &encap.wrap(&frame),
                    &want,
                );
            }
        }
    }
    failures.assert_none();
}
