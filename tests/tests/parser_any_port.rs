//! Issue 14, item 4: any port. IKE is recognised by its strict header (nonzero initiator
//! SPI, zero responder SPI, version 2.0, IKE_SA_INIT, IKE length = UDP payload length) on any
//! UDP port, with or without the non-ESP marker; ESP-in-UDP on a port that carried IKE is
//! confirmed as ESP like on 4500. DNS, NTP and QUIC on UDP 4500 and WebRTC's DTLS on any port
//! keep passing. (OpenConnect's standard-DTLS ClientHello is still judged on 443 only: see
//! README.)

use vpn_filter::kernel::{Filter, FrameStart, Policy};
use vpn_filter_common::{Config, PolicyMode, Protocol, Verdict};
use vpn_filter_tests::{
    judge::{client, expect, load, load_with, run, server, Failures, Outcome, XDP_DROP, XDP_PASS},
    packet::*,
};

const IKE: Protocol = Protocol::Ike;
const ESP: Protocol = Protocol::Esp;

fn judged(registered: bool, p: Protocol) -> Outcome {
    if registered {
        expect(XDP_PASS, Some((p, Verdict::Allowed)), &[])
    } else {
        expect(XDP_DROP, Some((p, Verdict::Dropped)), &[])
    }
}

/// An IKE_SA_INIT from each family's client, registered or not, to `dport`, with the non-ESP
/// marker or without.
fn ike_sa_init_on(dport: u16, marker: bool, port: u16) {
    let filter = load();
    let mut failures = Failures::default();
    for v6 in [false, true] {
        for registered in [false, true] {
            let (c, s) = (client(v6, registered), server(v6));
            let sport = port + 2 * v6 as u16 + registered as u16;
            let ike = ikev2_sa_init(0x51a1_7000_0000_0000 | sport as u64, 352);
            let payload = if marker { non_esp_marker(&ike) } else { ike };
            failures.check(
                &filter,
                &format!("ike_sa_init from {c} to udp {dport} (marker: {marker})"),
                &udp(c, s, sport, dport, &payload),
                &judged(registered, IKE),
            );
        }
    }
    failures.assert_none();
}

#[test]
fn an_ike_sa_init_on_udp_51000_without_the_non_esp_marker_is_dropped() {
    ike_sa_init_on(51000, false, 20000);
}

#[test]
fn an_ike_sa_init_on_udp_4501_after_the_non_esp_marker_is_dropped() {
    ike_sa_init_on(4501, true, 20100);
}

#[test]
fn under_ike_monitor_esp_in_udp_on_a_port_that_carried_ike_is_confirmed_as_esp() {
    let mut policy = Policy::default();
    policy.set(IKE, PolicyMode::Monitor);
    let filter = load_with(FrameStart::Ethernet, &policy, &Config::default());
    let mut failures = Failures::default();
    for v6 in [false, true] {
        for registered in [false, true] {
            let (c, s) = (client(v6, registered), server(v6));
            let sport = 20200 + 2 * v6 as u16 + registered as u16;
            let ike = non_esp_marker(&ikev2_sa_init(0x51a1_7100_0000_0000 | sport as u64, 352));
            let who = format!("{c}:{sport} -> udp 4501");
            let ike_want = if registered {
                expect(XDP_PASS, Some((IKE, Verdict::Allowed)), &[])
            } else {
                expect(XDP_PASS, Some((IKE, Verdict::Monitored)), &[])
            };
            failures.check(
                &filter,
                &format!("ike_sa_init {who}"),
                &udp(c, s, sport, 4501, &ike),
                &ike_want,
            );
            let spi = 0xc0de_0000 | sport as u32;
            // As on 4500, ESP's own behaviour confirms it: the same SPI with a rising sequence
            // number from one side and ESP with its own SPI from the other. One packet is never
            // enough, so a spoofed IKE packet cannot make a port's ordinary traffic drop.
            let pending = if registered {
                expect(XDP_PASS, Some((ESP, Verdict::Allowed)), &[])
            } else {
                expect(XDP_PASS, Some((ESP, Verdict::Pending)), &[])
            };
            for seq in 1..=2 {
                failures.check(
                    &filter,
                    &format!("esp-in-udp seq {seq} {who}"),
                    &udp(c, s, sport, 4501, &esp_in_udp(spi, seq, 136)),
                    &pending,
                );
            }
            failures.check(
                &filter,
                &format!("the server's esp-in-udp {who}"),
                &udp(s, c, 4501, sport, &esp_in_udp(spi ^ 0x0f0f_0000, 1, 136)),
                &judged(registered, ESP),
            );
            failures.check(
                &filter,
                &format!("esp-in-udp seq 3 {who}"),
                &udp(c, s, sport, 4501, &esp_in_udp(spi, 3, 136)),
                &judged(registered, ESP),
            );
        }
    }
    failures.assert_none();
}

/// Runs `frames` (one flow) and fails on any drop or any dropped counter.
fn all_pass(filter: &Filter, failures: &mut Failures, what: &str, frames: &[Vec<u8>]) {
    for (i, f) in frames.iter().enumerate() {
        let got = run(filter, f);
        failures.require(
            got.action == XDP_PASS && got.verdicts.iter().all(|(_, v, _)| *v != Verdict::Dropped),
            || format!("{what}, packet {}: got {got}", i + 1),
        );
    }
}

#[test]
fn dns_ntp_and_quic_on_udp_4500_keep_passing() {
    let filter = load();
    let mut failures = Failures::default();
    for v6 in [false, true] {
        let (c, s) = (client(v6, false), server(v6));
        let dns: Vec<Vec<u8>> = (0..4u16)
            .flat_map(|i| {
                [
                    udp(c, s, 4500, 53, &dns_query(0x4500 + i, "example.com")),
                    udp(
                        s,
                        c,
                        53,
                        4500,
                        &dns_answer(0x4500 + i, "example.com", &[[192, 0, 2, 1].into()]),
                    ),
                ]
            })
            .collect();
        all_pass(&filter, &mut failures, "dns from udp 4500", &dns);
        let ntp: Vec<Vec<u8>> = (0..4)
            .map(|_| udp(c, s, 4500, 123, &ntp_request()))
            .collect();
        all_pass(&filter, &mut failures, "ntp from udp 4500", &ntp);
        let quic: Vec<Vec<u8>> = (0..4u64)
            .map(|i| {
                if i == 0 {
                    udp(c, s, 4500, 443, &quic_initial(&[4; 8], &[5; 8], 1200))
                } else {
                    udp(c, s, 4500, 443, &quic_short(0x41, &[4; 8], 200, i))
                }
            })
            .collect();
        all_pass(&filter, &mut failures, "quic from udp 4500", &quic);
        let to_4500: Vec<Vec<u8>> = (0..4u16)
            .map(|i| udp(c, s, 40000 + i, 4500, &dns_query(i, "example.com")))
            .collect();
        all_pass(
            &filter,
            &mut failures,
            "dns-shaped datagrams to udp 4500",
            &to_4500,
        );
    }
    failures.assert_none();
}

#[test]
fn webrtc_dtls_on_any_port_keeps_passing() {
    let filter = load();
    let mut failures = Failures::default();
    for v6 in [false, true] {
        let (c, s) = (client(v6, false), server(v6));
        for (i, dport) in [443u16, 40443, 3478, 19302, 51234].into_iter().enumerate() {
            for cookie in [0u8, 32] {
                let sport = 20400 + 32 * v6 as u16 + 2 * i as u16 + (cookie > 0) as u16;
                // On 443 a ClientHello is also FortiClient's DTLS tunnel: reported under
                // `dtls_443` (monitored by default), never dropped.
                let want = if dport == 443 {
                    expect(XDP_PASS, Some((Protocol::Dtls443, Verdict::Monitored)), &[])
                } else {
                    expect(XDP_PASS, None, &[])
                };
                failures.check(
                    &filter,
                    &format!("webrtc dtls client hello (cookie {cookie}) to udp {dport}"),
                    &udp(c, s, sport, dport, &webrtc_dtls_client_hello(cookie)),
                    &want,
                );
            }
        }
    }
    failures.assert_none();
}
