//! Issue 14, item 2: fragments. A TCP or UDP first fragment with fewer than
//! `MIN_FIRST_FRAGMENT_PAYLOAD` bytes of transport payload (even too short for the transport
//! header) is dropped as a tiny fragment; a larger first fragment is judged by its own
//! transport semantics; later fragments of a dropped datagram pass, counted.

use std::net::IpAddr;

use vpn_filter::kernel::Filter;
use vpn_filter_common::{Counter, Protocol, Verdict, MIN_FIRST_FRAGMENT_PAYLOAD};
use vpn_filter_tests::{
    judge::{client, expect, load, server, Failures, XDP_DROP, XDP_PASS},
    mangle::fragment,
    packet::*,
};

const MIN: usize = MIN_FIRST_FRAGMENT_PAYLOAD as usize;

fn family(v6: bool) -> &'static str {
    if v6 {
        "ipv6"
    } else {
        "ipv4"
    }
}

/// A TCP segment with 12 bytes of options (32-byte header), so that header + 64 bytes of
/// payload is a multiple of 8.
fn tcp(c: IpAddr, s: IpAddr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    Frame::eth()
        .ip(c, s)
        .tcp(sport, dport)
        .tcp_options(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0])
        .payload(payload)
        .build()
}

#[test]
fn tcp_and_udp_first_fragments_with_fewer_than_64_payload_bytes_are_dropped_as_tiny() {
    let filter = load();
    let mut failures = Failures::default();
    let tiny = expect(XDP_DROP, None, &[Counter::TinyFragment]);
    let mut port = 20000;
    for v6 in [false, true] {
        for registered in [false, true] {
            let (c, s) = (client(v6, registered), server(v6));
            // UDP: header only, header + 8, header + 56 (the largest multiple of 8 below 64).
            for size in [8, 16, 8 + 56] {
                port += 1;
                let wg = udp(c, s, port, 51820, &wireguard_initiation(port as u32));
                failures.check(
                    &filter,
                    &format!("{} udp first fragment of {size} bytes from {c}", family(v6)),
                    &fragment(&wg, &[size], port as u32)[0],
                    &tiny,
                );
            }
            // TCP: shorter than its 32-byte header, header + 0, header + 56.
            for size in [8, 16, 24, 32, 32 + 56] {
                port += 1;
                let pptp = tcp(c, s, port, 1723, &pptp_sccrq());
                failures.check(
                    &filter,
                    &format!("{} tcp first fragment of {size} bytes from {c}", family(v6)),
                    &fragment(&pptp, &[size], port as u32)[0],
                    &tiny,
                );
            }
            // Too short for even the UDP header: 4 bytes of a UDP header, more fragments.
            port += 1;
            let four = Frame::eth()
                .ip(c, s)
                .fragment(true, 0)
                .ip_proto(IPPROTO_UDP)
                .payload(&[0x9c, 0x40, 0xca, 0x6c])
                .build();
            failures.check(
                &filter,
                &format!("{} udp first fragment of 4 bytes from {c}", family(v6)),
                &four,
                &tiny,
            );
            // The same as a NIC delivers it: padded to the 60-byte Ethernet minimum.
            let mut padded = four.clone();
            padded.resize(padded.len().max(60), 0);
            failures.check(
                &filter,
                &format!(
                    "{} udp first fragment of 4 bytes from {c}, Ethernet padding",
                    family(v6)
                ),
                &padded,
                &tiny,
            );
        }
    }
    failures.assert_none();
}

#[test]
fn a_first_fragment_with_64_payload_bytes_is_not_tiny() {
    let filter = load();
    let mut failures = Failures::default();
    for v6 in [false, true] {
        let (c, s) = (client(v6, false), server(v6));
        let dns = udp(c, s, 20100 + v6 as u16, 53, &[7u8; 400]);
        failures.check(
            &filter,
            &format!("{} udp first fragment of 8 + {MIN} bytes", family(v6)),
            &fragment(&dns, &[8 + MIN], 100 + v6 as u32)[0],
            &expect(XDP_PASS, None, &[]),
        );
        let http = tcp(c, s, 20110 + v6 as u16, 80, &[b'a'; 400]);
        failures.check(
            &filter,
            &format!("{} tcp first fragment of 32 + {MIN} bytes", family(v6)),
            &fragment(&http, &[32 + MIN], 110 + v6 as u32)[0],
            &expect(XDP_PASS, None, &[]),
        );
    }
    failures.assert_none();
}

/// A WireGuard initiation (148 bytes of payload, UDP length 156) in fragments: the first
/// carries `first` bytes of the datagram (8 of them the UDP header).
fn wireguard_in_fragments(
    filter: &Filter,
    failures: &mut Failures,
    v6: bool,
    registered: bool,
    sizes: &[usize],
    port: u16,
) {
    let (c, s) = (client(v6, registered), server(v6));
    let wg = udp(c, s, port, 51820, &wireguard_initiation(port as u32));
    let frags = fragment(&wg, sizes, 0x0f00_0000 | port as u32);
    let (first_want, later) = if registered {
        (
            expect(XDP_PASS, Some((Protocol::WireGuard, Verdict::Allowed)), &[]),
            vec![Counter::Fragment],
        )
    } else {
        (
            expect(XDP_DROP, Some((Protocol::WireGuard, Verdict::Dropped)), &[]),
            vec![Counter::Fragment, Counter::FragmentOfDropped],
        )
    };
    let what = format!(
        "{} wireguard initiation from {c} in fragments {sizes:?}",
        family(v6)
    );
    failures.check(filter, &format!("{what}: first"), &frags[0], &first_want);
    for (i, f) in frags.iter().enumerate().skip(1) {
        failures.check(
            filter,
            &format!("{what}: fragment {}", i + 1),
            f,
            &expect(XDP_PASS, None, &later),
        );
    }
}

#[test]
fn a_wireguard_initiation_whose_first_fragment_holds_64_to_147_payload_bytes_is_dropped() {
    let filter = load();
    let mut failures = Failures::default();
    let mut port = 21000;
    for v6 in [false, true] {
        for registered in [false, true] {
            // 8 + 64, 8 + 72, 8 + 88, 8 + 120, 8 + 144 (the largest multiple of 8 below 156).
            for first in [72, 80, 96, 128, 152] {
                port += 1;
                wireguard_in_fragments(&filter, &mut failures, v6, registered, &[first], port);
            }
            port += 1;
            wireguard_in_fragments(&filter, &mut failures, v6, registered, &[72, 40], port);
        }
    }
    failures.assert_none();
}

#[test]
fn a_pptp_request_in_a_tcp_first_fragment_is_dropped() {
    let filter = load();
    let mut failures = Failures::default();
    for v6 in [false, true] {
        for registered in [false, true] {
            let (c, s) = (client(v6, registered), server(v6));
            let port = 22000 + 2 * v6 as u16 + registered as u16;
            let pptp = tcp(c, s, port, 1723, &pptp_sccrq());
            let frags = fragment(&pptp, &[32 + 72], port as u32);
            let (first, later) = if registered {
                (
                    expect(XDP_PASS, Some((Protocol::Pptp, Verdict::Allowed)), &[]),
                    vec![Counter::Fragment],
                )
            } else {
                (
                    expect(XDP_DROP, Some((Protocol::Pptp, Verdict::Dropped)), &[]),
                    vec![Counter::Fragment, Counter::FragmentOfDropped],
                )
            };
            let what = format!("{} pptp sccrq from {c}", family(v6));
            failures.check(
                &filter,
                &format!("{what}: first fragment"),
                &frags[0],
                &first,
            );
            failures.check(
                &filter,
                &format!("{what}: second fragment"),
                &frags[1],
                &expect(XDP_PASS, None, &later),
            );
        }
    }
    failures.assert_none();
}

/// The outcome of an OpenVPN packet with this verdict.
fn verdict_of(v: Verdict) -> vpn_filter_tests::judge::Outcome {
    let action = if v == Verdict::Dropped {
        XDP_DROP
    } else {
        XDP_PASS
    };
    expect(action, Some((Protocol::OpenVpn, v)), &[])
}

#[test]
fn an_openvpn_tcp_hard_reset_exchange_in_first_fragments_is_dropped() {
    // tls-crypt-v2: the client's hard reset (v3, with its 299-byte wrapped key) is long
    // enough for a first fragment of 64 payload bytes and more fragments. It is pending
    // alone (as unfragmented); the server's hard reset, in a first fragment of 64 payload
    // bytes where it is long enough, confirms it and is dropped.
    let wrap = OvpnWrap::TlsCryptV2 { wkc_len: 299 };
    let filter = load();
    let mut failures = Failures::default();
    for v6 in [false, true] {
        for registered in [false, true] {
            let (c, s) = (client(v6, registered), server(v6));
            let port = 22100 + 2 * v6 as u16 + registered as u16;
            let (cs, ss) = (
                0x1f2b_1e4e_edf3_0000 ^ port as u64,
                0xa957_88e6_055f_0000 ^ port as u64,
            );
            let reset = tcp_framed(&openvpn_client_reset(cs, wrap));
            let reply = tcp_framed(&openvpn_server_reset(ss, cs, wrap));
            let what = format!("{} openvpn tcp hard reset with {c}", family(v6));
            // The control: the same exchange unfragmented, on its own 5-tuple.
            let (unfragmented_first, unfragmented_second) = if registered {
                (Verdict::Allowed, Verdict::Allowed)
            } else {
                (Verdict::Pending, Verdict::Dropped)
            };
            let control = port + 50;
            let (ccs, css) = (cs ^ 0xffff, ss ^ 0xffff);
            failures.check(
                &filter,
                &format!("{what}: unfragmented client reset"),
                &tcp(
                    c,
                    s,
                    control,
                    1194,
                    &tcp_framed(&openvpn_client_reset(ccs, wrap)),
                ),
                &verdict_of(unfragmented_first),
            );
            failures.check(
                &filter,
                &format!("{what}: unfragmented server reset"),
                &tcp(
                    s,
                    c,
                    1194,
                    control,
                    &tcp_framed(&openvpn_server_reset(css, ccs, wrap)),
                ),
                &verdict_of(unfragmented_second),
            );
            let first_fragment = |frame: Vec<u8>, len: usize, id: u32| {
                if len > MIN + 8 {
                    fragment(&frame, &[32 + MIN], id).swap_remove(0)
                } else {
                    frame
                }
            };
            let client_first = first_fragment(tcp(c, s, port, 1194, &reset), reset.len(), 1);
            let server_first = first_fragment(tcp(s, c, 1194, port, &reply), reply.len(), 2);
            assert!(reset.len() > MIN + 8, "{}", reset.len());
            let ovpn = |v: Verdict| Some((Protocol::OpenVpn, v));
            let (first, second) = if registered {
                (
                    expect(XDP_PASS, ovpn(Verdict::Allowed), &[]),
                    expect(XDP_PASS, ovpn(Verdict::Allowed), &[]),
                )
            } else {
                (
                    expect(XDP_PASS, ovpn(Verdict::Pending), &[]),
                    expect(XDP_DROP, ovpn(Verdict::Dropped), &[]),
                )
            };
            failures.check(
                &filter,
                &format!("{what}: client's first fragment"),
                &client_first,
                &first,
            );
            failures.check(
                &filter,
                &format!("{what}: server's reset (first fragment)"),
                &server_first,
                &second,
            );
        }
    }
    failures.assert_none();
}

#[test]
fn an_ordinary_fragmented_udp_datagram_passes_in_every_fragment() {
    let filter = load();
    let mut failures = Failures::default();
    for v6 in [false, true] {
        let (c, s) = (client(v6, false), server(v6));
        // A 3000-byte DNS response, fragmented at the Ethernet MTU.
        let answers: Vec<std::net::Ipv4Addr> = (0..185u8).map(|i| [192, 0, 2, i].into()).collect();
        let response = dns_answer(0x3000, "big.example.com", &answers);
        assert!(response.len() >= 2990, "{}", response.len());
        let frame = udp(s, c, 53, 23000 + v6 as u16, &response);
        let mtu_payload = if v6 { 1448 } else { 1480 };
        let frags = fragment(&frame, &[mtu_payload, mtu_payload], 0x3000 + v6 as u32);
        assert_eq!(frags.len(), 3);
        for (i, f) in frags.iter().enumerate() {
            let want = if i == 0 {
                expect(XDP_PASS, None, &[])
            } else {
                expect(XDP_PASS, None, &[Counter::Fragment])
            };
            failures.check(
                &filter,
                &format!("{} dns response fragment {}", family(v6), i + 1),
                f,
                &want,
            );
        }
    }
    failures.assert_none();
}
