//! Issue 16, item 2: fully encrypted first payloads (Shadowsocks, VMess, obfs4), through the
//! real program. The rule (encrypted.rs) judges a TCP stream's first client payload (the side
//! that sent the SYN) and a UDP conversation's first datagram; monitored by default, dropped
//! when an operator enforces `fully_encrypted`. The server's first payload, a TLS or HTTP
//! start, and the conversation's later packets are not judged.

use std::net::IpAddr;

use vpn_filter::kernel::Filter;
use vpn_filter_common::{PolicyMode, Protocol, Verdict};
use vpn_filter_tests::{
    judge::{
        client, each_client, expect, load, load_policy, require_ignored, run, server, Failures,
        Outcome, XDP_DROP, XDP_PASS,
    },
    packet::*,
};

const FE: Protocol = Protocol::FullyEncrypted;
const CLIENT_ISN: u32 = 0x2000_0000;
const SERVER_ISN: u32 = 0x6000_0000;

/// A Shadowsocks AEAD first packet: 32-byte salt, encrypted length and tag, payload, tag.
fn shadowsocks_like(seed: u64, len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    fill_pseudo_random(&mut p, seed);
    // Not printable (Ex2 exempts 1 in 390 random payloads), not RTP-like.
    p[0] = 0x1c;
    p
}

fn enforcing() -> Filter {
    load_policy(FE, PolicyMode::Enforce)
}

fn syn(c: IpAddr, s: IpAddr, cport: u16, sport: u16) -> Vec<u8> {
    Frame::eth()
        .ip(c, s)
        .tcp(cport, sport)
        .tcp_flags(TCP_SYN)
        .tcp_seq(CLIENT_ISN, 0)
        .tcp_syn_options()
        .build()
}

fn syn_ack(c: IpAddr, s: IpAddr, cport: u16, sport: u16) -> Vec<u8> {
    Frame::eth()
        .ip(s, c)
        .tcp(sport, cport)
        .tcp_flags(TCP_SYN | TCP_ACK)
        .tcp_seq(SERVER_ISN, CLIENT_ISN + 1)
        .tcp_syn_options()
        .build()
}

fn judged(registered: bool, enforce: bool) -> Outcome {
    match (registered, enforce) {
        (true, _) => expect(XDP_PASS, Some((FE, Verdict::Allowed)), &[]),
        (false, false) => expect(XDP_PASS, Some((FE, Verdict::Monitored)), &[]),
        (false, true) => expect(XDP_DROP, Some((FE, Verdict::Dropped)), &[]),
    }
}

/// A TCP connection whose client sends `first` (its first payload), then more.
fn tcp_conversation(filter: &Filter, enforce: bool) {
    each_client(filter, |filter, failures, c, s, registered, k| {
        for (i, (len, what)) in [(300usize, "whole head"), (80, "shorter than the head")]
            .into_iter()
            .enumerate()
        {
            let cport = 41000 + 2 * k + i as u16;
            let first = shadowsocks_like(cport as u64, len);
            let _ = run(filter, &syn(c, s, cport, 8388));
            let _ = run(filter, &syn_ack(c, s, cport, 8388));
            let name = format!("{c}:{cport} first payload, {what}");
            let first_frame = tcp_segment(c, s, cport, 8388, CLIENT_ISN + 1, &first);
            // (A first payload shorter than the head is also held for reassembly: the
            // counters may move; the action and the verdict are what matter.)
            let want = judged(registered, enforce);
            let got = run(filter, &first_frame);
            failures.require(
                got.action == want.action && got.verdicts == want.verdicts,
                || format!("{name}: got {got}, want {want}"),
            );
            if enforce && !registered {
                let got = run(filter, &first_frame);
                failures.require(got.action == XDP_DROP, || {
                    format!("{name}, retransmitted: got {got}, want XDP_DROP")
                });
            }
            // The server's first payload and the client's next segment are not judged.
            let reply = shadowsocks_like(cport as u64 ^ 0xff, 200);
            if !registered {
                require_ignored(
                    failures,
                    filter,
                    &format!("{name}: the server's first payload"),
                    &tcp_segment(s, c, 8388, cport, SERVER_ISN + 1, &reply),
                );
                require_ignored(
                    failures,
                    filter,
                    &format!("{name}: the client's next segment"),
                    &tcp_segment(c, s, cport, 8388, CLIENT_ISN + 1 + len as u32, &reply),
                );
            }
        }
    });
}

#[test]
fn a_fully_encrypted_tcp_first_payload_is_reported() {
    tcp_conversation(&load(), false);
}

#[test]
fn a_fully_encrypted_tcp_first_payload_is_dropped_under_enforce_also_when_retransmitted() {
    tcp_conversation(&enforcing(), true);
}

/// TCP Fast Open: the client's first payload rides in its SYN (shadowsocks-libev's
/// `fast_open`). It is the stream's first payload and judged as one; before, SYN data was
/// judged by the signatures alone and a fully encrypted first payload passed unjudged.
#[test]
fn a_fully_encrypted_first_payload_in_a_syn_is_judged() {
    let filter = enforcing();
    each_client(&filter, |filter, failures, c, s, registered, k| {
        for (i, len) in [300usize, 80].into_iter().enumerate() {
            let cport = 42000 + 2 * k + i as u16;
            let data = shadowsocks_like(cport as u64, len);
            let frame = Frame::eth()
                .ip(c, s)
                .tcp(cport, 8388)
                .tcp_flags(TCP_SYN)
                .tcp_seq(CLIENT_ISN, 0)
                .tcp_syn_options()
                .payload(&data)
                .build();
            let want = judged(registered, true);
            for attempt in ["", ", retransmitted"] {
                let got = run(filter, &frame);
                failures.require(
                    got.action == want.action && got.verdicts == want.verdicts,
                    || format!("{c}:{cport} SYN with {len} bytes of data{attempt}: got {got}, want {want}"),
                );
            }
        }
    });
}

fn udp_conversation(filter: &Filter, enforce: bool) {
    each_client(filter, |filter, failures, c, s, registered, k| {
        let cport = 42000 + k;
        let name = format!("udp {c}:{cport}");
        let first = udp(c, s, cport, 8388, &shadowsocks_like(cport as u64, 120));
        failures.check(
            filter,
            &format!("{name} first datagram"),
            &first,
            &judged(registered, enforce),
        );
        let reply = udp(s, c, 8388, cport, &shadowsocks_like(cport as u64 ^ 1, 120));
        let next = udp(c, s, cport, 8388, &shadowsocks_like(cport as u64 ^ 2, 120));
        if enforce && !registered {
            // Dropped datagrams leave the conversation unseen: each one is judged.
            failures.check(
                filter,
                &format!("{name} next datagram"),
                &next,
                &judged(false, true),
            );
        } else if !registered {
            require_ignored(failures, filter, &format!("{name} reply"), &reply);
            require_ignored(failures, filter, &format!("{name} next datagram"), &next);
        }
    });
}

#[test]
fn a_fully_encrypted_udp_first_datagram_is_reported_once_per_conversation() {
    udp_conversation(&load(), false);
}

#[test]
fn fully_encrypted_udp_is_dropped_datagram_by_datagram_under_enforce() {
    udp_conversation(&enforcing(), true);
}

#[test]
fn tls_http_and_exempt_ports_are_not_judged_even_under_enforce() {
    let filter = enforcing();
    let mut failures = Failures::default();
    let (c, s) = (client(false, false), server(false));
    let mut tls = shadowsocks_like(7, 300);
    tls[..3].copy_from_slice(&[0x16, 0x03, 0x01]);
    let mut http = shadowsocks_like(8, 300);
    http[..5].copy_from_slice(b"POST ");
    for (i, (p, what)) in [(tls, "tls"), (http, "http")].into_iter().enumerate() {
        let cport = 43000 + i as u16;
        let _ = run(&filter, &syn(c, s, cport, 443));
        require_ignored(
            &mut failures,
            &filter,
            what,
            &tcp_segment(c, s, cport, 443, CLIENT_ISN + 1, &p),
        );
    }
    // QUIC on 443, RTP's first byte, DNS.
    let random = shadowsocks_like(9, 200);
    require_ignored(
        &mut failures,
        &filter,
        "udp 443",
        &udp(c, s, 43010, 443, &random),
    );
    let mut rtp = random.clone();
    rtp[0] = 0x80;
    require_ignored(
        &mut failures,
        &filter,
        "rtp",
        &udp(c, s, 43011, 20000, &rtp),
    );
    require_ignored(
        &mut failures,
        &filter,
        "dns",
        &udp(c, s, 43012, 53, &random),
    );
    failures.assert_none();
}

/// A random datagram whose first byte is an OpenVPN opcode is taken by the signatures'
/// prefilters: a follow-up while OpenVPN flows live (one random first byte in six), a reset
/// to classify. When no signature and no live flow claims it, the fully-encrypted rule still
/// judges it, as any other datagram. (Before, it passed unjudged: the unregistered
/// Shadowsocks client of the IPv6 e2e test got datagrams through while an OpenVPN flow was
/// live.) Not covered: a datagram of an OpenVPN reset's size (14, 38, 42, 54, 86 bytes) is
/// the scrambled-OpenVPN heuristic's candidate (pending until the server answers in kind)
/// and is not judged by this rule; README lists it.
fn datagrams_the_signatures_do_not_claim(enforce: bool) {
    let filter = if enforce { enforcing() } else { load() };
    // A live OpenVPN flow elsewhere (a registered client's session: allowed, stored) opens
    // OpenVPN's follow-up gate.
    let reg = client(false, true);
    let opened = run(
        &filter,
        &udp(
            reg,
            server(false),
            40999,
            1194,
            &openvpn_client_reset(0x1f2b_1e4e_edf3_db60, TLS_AUTH_SHA1),
        ),
    );
    assert_eq!(
        opened.verdicts,
        vec![(Protocol::OpenVpn, Verdict::Allowed, 1)],
        "the registered OpenVPN session that opens the gate"
    );
    each_client(&filter, |filter, failures, c, s, registered, k| {
        for (i, (first, len, what)) in [
            (0x21u8, 123usize, "an OpenVPN control opcode (a follow-up)"),
            (0x2c, 200, "an OpenVPN ack opcode (a follow-up)"),
            (0x31, 123, "an OpenVPN data opcode (a follow-up)"),
            (0x4b, 77, "an OpenVPN data v2 opcode (a follow-up)"),
            (0x38, 123, "an OpenVPN client reset opcode"),
        ]
        .into_iter()
        .enumerate()
        {
            let cport = 43000 + 10 * k + i as u16;
            let mut p = shadowsocks_like(cport as u64, len);
            p[0] = first;
            failures.check(
                filter,
                &format!("udp {c}:{cport}, {what}"),
                &udp(c, s, cport, 8388, &p),
                &judged(registered, enforce),
            );
        }
    });
}

#[test]
fn datagrams_shaped_like_openvpn_are_still_judged_by_the_rule() {
    datagrams_the_signatures_do_not_claim(false);
}

#[test]
fn datagrams_shaped_like_openvpn_are_still_dropped_by_the_rule_under_enforce() {
    datagrams_the_signatures_do_not_claim(true);
}
