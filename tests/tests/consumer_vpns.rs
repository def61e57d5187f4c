//! Issue 15: the VPNs people install. Each rule through the real program
//! (BPF_PROG_TEST_RUN), unregistered and registered, IPv4 and IPv6, with the lookalikes that
//! must keep passing:
//! - WireGuard handshakes carrying a client id in the reserved bytes (Cloudflare WARP) on
//!   2408, 500, 1701 and 4500, confirmed by the response echoing the sender index;
//! - WireGuard on TCP behind a 2-byte length (Mullvad's udp-over-tcp), whole or split;
//! - Lightway's "He" header in front of DTLS;
//! - tinc's ID line; SoftEther's HTTP connect request;
//! - the two heuristics, monitored by default: WireGuard with rewritten headers (AmneziaWG)
//!   by its transport invariants, and scrambled OpenVPN by its reset sizes and opcode
//!   pattern.

use std::net::IpAddr;

use vpn_filter::kernel::Filter;
use vpn_filter_common::{Counter, PolicyMode, Protocol, Verdict};
use vpn_filter_tests::{
    judge::{
        each_client, expect, load, load_policy, require_ignored, run, Failures, Outcome, XDP_DROP,
        XDP_PASS,
    },
    packet::*,
};

const WG: Protocol = Protocol::WireGuard;

fn pending(p: Protocol) -> Outcome {
    expect(XDP_PASS, Some((p, Verdict::Pending)), &[])
}

fn allowed(p: Protocol) -> Outcome {
    expect(XDP_PASS, Some((p, Verdict::Allowed)), &[])
}

fn dropped(p: Protocol) -> Outcome {
    expect(XDP_DROP, Some((p, Verdict::Dropped)), &[])
}

fn monitored(p: Protocol) -> Outcome {
    expect(XDP_PASS, Some((p, Verdict::Monitored)), &[])
}

fn signature(registered: bool, p: Protocol) -> Outcome {
    if registered {
        allowed(p)
    } else {
        dropped(p)
    }
}

// ---------------------------------------------------------------------------------------
// WireGuard with a client id (WARP)
// ---------------------------------------------------------------------------------------

fn with_id(mut p: Vec<u8>, id: [u8; 3]) -> Vec<u8> {
    p[1..4].copy_from_slice(&id);
    p
}

/// The default policy with the fallback closure off: several handshakes between one client
/// and one server, each judged on its own (tests/tests/fallback.rs covers the closure).
fn without_fallback() -> Filter {
    load_policy(Protocol::Fallback, PolicyMode::Off)
}

#[test]
fn warp_handshakes_are_confirmed_by_the_echoed_index_on_each_warp_port() {
    let filter = without_fallback();
    each_client(&filter, |filter, failures, c, s, registered, k| {
        for (i, port) in [2408u16, 500, 1701, 4500].into_iter().enumerate() {
            let cport = 30000 + k * 16 + i as u16;
            let sender = 0x1111_0000 + cport as u32;
            let init = with_id(wireguard_initiation(sender), [0x5a, 0x1b, 0xc3]);
            let reply = with_id(wireguard_response(0x2222_0000, sender), [0x5a, 0x1b, 0xc3]);
            let name = format!("warp {c} -> {port}");
            let first = if registered { allowed(WG) } else { pending(WG) };
            failures.check(
                filter,
                &format!("{name} initiation"),
                &udp(c, s, cport, port, &init),
                &first,
            );
            failures.check(
                filter,
                &format!("{name} response echoing the index"),
                &udp(s, c, port, cport, &reply),
                &signature(registered, WG),
            );
        }
        // A reply that does not echo the index confirms nothing.
        let cport = 31000 + k;
        let init = with_id(wireguard_initiation(0x3333_0000), [1, 2, 3]);
        let other = with_id(wireguard_response(0x4444_0000, 0x5555_0000), [1, 2, 3]);
        let first = if registered { allowed(WG) } else { pending(WG) };
        failures.check(
            filter,
            "warp initiation",
            &udp(c, s, cport, 2408, &init),
            &first,
        );
        if !registered {
            // Passes; the flow stays pending.
            failures.check(
                filter,
                "a 92-byte reply naming another index",
                &udp(s, c, 2408, cport, &other),
                &pending(WG),
            );
        }
    });
}

#[test]
fn client_id_lookalikes_pass() {
    let filter = load();
    each_client(&filter, |filter, failures, c, s, _, k| {
        let cport = 32000 + k * 8;
        // Other sizes, DNS's port, STUN's cookie.
        let mut p = with_id(wireguard_initiation(7), [9, 9, 9]);
        p.push(0);
        // (Random-looking, so the fully-encrypted heuristic may report it; not WireGuard.)
        let got = run(filter, &udp(c, s, cport, 2408, &p));
        failures.require(
            got.action == XDP_PASS && got.verdicts.iter().all(|v| v.0 != WG),
            || format!("149 bytes: got {got}, want XDP_PASS and no wireguard verdict"),
        );
        let p = with_id(wireguard_initiation(7), [9, 9, 9]);
        require_ignored(
            failures,
            filter,
            "on port 53",
            &udp(c, s, cport + 1, 53, &p),
        );
        let mut p = with_id(wireguard_initiation(7), [9, 9, 9]);
        p[4..8].copy_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
        require_ignored(
            failures,
            filter,
            "STUN cookie",
            &udp(c, s, cport + 2, 2408, &p),
        );
    });
}

// ---------------------------------------------------------------------------------------
// WireGuard over TCP (Mullvad udp-over-tcp)
// ---------------------------------------------------------------------------------------

fn framed(p: &[u8]) -> Vec<u8> {
    let mut f = (p.len() as u16).to_be_bytes().to_vec();
    f.extend_from_slice(p);
    f
}

#[test]
fn wireguard_over_tcp_is_dropped_whole_and_split() {
    let filter = load();
    each_client(&filter, |filter, failures, c, s, registered, k| {
        let cport = 33000 + k * 16;
        let init = framed(&wireguard_initiation(0x6666_0000 + cport as u32));
        failures.check(
            filter,
            &format!("udp-over-tcp initiation {c}"),
            &tcp_segment(c, s, cport, 443, 1, &init),
            &signature(registered, WG),
        );
        let reply = framed(&wireguard_response(0x7777_0000, 0x6666_0000));
        failures.check(
            filter,
            &format!("udp-over-tcp response to {c}"),
            &tcp_segment(s, c, 443, cport + 1, 1, &reply),
            &signature(registered, WG),
        );
        // Split after 1, 2, 3 and 7 bytes, after the handshake was seen.
        for (i, cut) in [1usize, 2, 3, 7].into_iter().enumerate() {
            let port = cport + 2 + i as u16;
            let isn = 0x1000_0000;
            let syn = Frame::eth()
                .ip(c, s)
                .tcp(port, 5001)
                .tcp_flags(TCP_SYN)
                .tcp_seq(isn, 0)
                .tcp_syn_options()
                .build();
            let _ = run(filter, &syn);
            let buffered = expect(XDP_PASS, None, &[Counter::TcpStreamBuffered]);
            failures.check(
                filter,
                &format!("first {cut} bytes"),
                &tcp_segment(c, s, port, 5001, isn + 1, &init[..cut]),
                &buffered,
            );
            failures.check(
                filter,
                &format!("the rest after {cut}"),
                &tcp_segment(c, s, port, 5001, isn + 1 + cut as u32, &init[cut..]),
                &signature(registered, WG),
            );
        }
    });
}

#[test]
fn dns_over_tcp_that_starts_like_wireguard_over_tcp_passes() {
    let filter = load();
    each_client(&filter, |filter, failures, c, s, _, k| {
        // Length 148, id 0x0100, flags 0, one question.
        let mut dns = vec![0u8; 150];
        dns[..8].copy_from_slice(&[0x00, 0x94, 0x01, 0x00, 0x00, 0x00, 0x00, 0x01]);
        require_ignored(
            failures,
            filter,
            "dns over tcp",
            &tcp_segment(c, s, 34000 + k, 53, 1, &dns),
        );
    });
}

// ---------------------------------------------------------------------------------------
// Lightway
// ---------------------------------------------------------------------------------------

fn lightway(session: u64, record: u8, body: usize) -> Vec<u8> {
    let mut p = vec![b'H', b'e', 1, 3, 0, 0, 0, 0];
    p.extend_from_slice(&session.to_be_bytes());
    // DTLS 1.2 record: type, version, epoch, sequence, length.
    p.extend_from_slice(&[record, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 1]);
    p.extend_from_slice(&(body as u16).to_be_bytes());
    p.extend((0..body).map(|i| (i * 7 + 3) as u8));
    p
}

#[test]
fn lightway_datagrams_are_dropped_in_both_directions() {
    let filter = load();
    each_client(&filter, |filter, failures, c, s, registered, k| {
        let cport = 35000 + k;
        let hello = lightway(0, 22, 180);
        failures.check(
            filter,
            &format!("lightway client hello {c}"),
            &udp(c, s, cport, 443, &hello),
            &signature(registered, Protocol::Lightway),
        );
        let data = lightway(0x0123_4567_89ab_cdef, 23, 1200);
        failures.check(
            filter,
            &format!("lightway data to {c}"),
            &udp(s, c, 443, cport, &data),
            &signature(registered, Protocol::Lightway),
        );
    });
}

#[test]
fn lightway_lookalikes_pass() {
    let filter = load();
    each_client(&filter, |filter, failures, c, s, _, k| {
        let cport = 36000 + k * 4;
        let mut p = lightway(0, 22, 100);
        p[16] = 0x30; // not a DTLS content type
        require_ignored(failures, filter, "He + no DTLS", &udp(c, s, cport, 443, &p));
        let mut p = lightway(0, 22, 100);
        p[6] = 1; // reserved byte set
        require_ignored(
            failures,
            filter,
            "He + reserved",
            &udp(c, s, cport + 1, 443, &p),
        );
        let mut p = lightway(0, 22, 100);
        p[27..29].copy_from_slice(&2000u16.to_be_bytes()); // record longer than the datagram
        require_ignored(
            failures,
            filter,
            "He + long record",
            &udp(c, s, cport + 2, 443, &p),
        );
    });
}

// ---------------------------------------------------------------------------------------
// tinc, SoftEther over HTTP
// ---------------------------------------------------------------------------------------

#[test]
fn tinc_id_lines_are_dropped() {
    let filter = load();
    each_client(&filter, |filter, failures, c, s, registered, k| {
        let cport = 37000 + k * 8;
        for (i, line) in [
            "0 alice 17\n",
            "0 bob_2 17.7\n",
            "0 gw1 17.0\n",
            "0 a 17.1\n",
        ]
        .into_iter()
        .enumerate()
        {
            failures.check(
                filter,
                &format!("tinc {line:?} from {c}"),
                &tcp_segment(c, s, cport + i as u16, 655, 1, line.as_bytes()),
                &signature(registered, Protocol::Tinc),
            );
        }
        for (i, line) in [
            "0 alice 18\n",
            "0 alice 17",
            "0 al-ice 17\n",
            "0 alice 17.77x\n",
        ]
        .into_iter()
        .enumerate()
        {
            require_ignored(
                failures,
                filter,
                &format!("not tinc: {line:?}"),
                &tcp_segment(c, s, cport + 4 + i as u16, 655, 1, line.as_bytes()),
            );
        }
    });
}

#[test]
fn softether_http_connect_requests_are_dropped() {
    let filter = load();
    each_client(&filter, |filter, failures, c, s, registered, k| {
        let cport = 38000 + k * 4;
        for (i, req) in [
            "POST /vpnsvc/connect.cgi HTTP/1.1\r\nHost: 203.0.113.1\r\nContent-Type: image/jpeg\r\n\r\n",
            "POST /vpnsvc/vpn.cgi HTTP/1.1\r\nHost: 203.0.113.1\r\nContent-Type: application/octet-stream\r\n\r\n",
        ]
        .into_iter()
        .enumerate()
        {
            failures.check(
                filter,
                &format!("softether {req:.24} from {c}"),
                &tcp_segment(c, s, cport + i as u16, 443, 1, req.as_bytes()),
                &signature(registered, Protocol::SoftEther),
            );
        }
        let post = "POST /vpnsvc/other.cgi HTTP/1.1\r\nHost: example\r\n\r\n";
        require_ignored(
            failures,
            filter,
            "another POST",
            &tcp_segment(c, s, cport + 2, 80, 1, post.as_bytes()),
        );
        let post = "POST /api/v1/upload HTTP/1.1\r\nHost: example\r\n\r\n";
        require_ignored(
            failures,
            filter,
            "an ordinary POST",
            &tcp_segment(c, s, cport + 3, 80, 1, post.as_bytes()),
        );
    });
}

// ---------------------------------------------------------------------------------------
// The heuristics (AmneziaWG, scrambled OpenVPN): monitored by default
// ---------------------------------------------------------------------------------------

/// A heuristic's packets from one client, as `flow(filter, failures, c, s, cport,
/// registered, confirmed)`: `confirmed` is what the packets from the confirming one on do.
type Flow = fn(&Filter, &mut Failures, IpAddr, IpAddr, u16, bool, &Outcome);

/// What packet `n` of a heuristic's flow does: allowed from a registered client; from an
/// unregistered one pending before packet `confirming`, `confirmed` from it on.
fn heuristic_step(
    p: Protocol,
    registered: bool,
    n: usize,
    confirming: usize,
    confirmed: &Outcome,
) -> Outcome {
    if registered {
        allowed(p)
    } else if n < confirming {
        pending(p)
    } else {
        confirmed.clone()
    }
}

/// `flow` from every client (ports from `port`), confirming as monitored under the default
/// policy, as dropped when the operator enforces `p`.
fn heuristic_confirms(flow: Flow, p: Protocol, enforce: bool, port: u16) {
    let (filter, confirmed) = if enforce {
        (load_policy(p, PolicyMode::Enforce), dropped(p))
    } else {
        (load(), monitored(p))
    };
    each_client(&filter, |filter, failures, c, s, registered, k| {
        flow(filter, failures, c, s, port + k, registered, &confirmed);
    });
}

/// Traffic that must never confirm as heuristic `p`, though the operator enforces it:
/// `f(filter, failures, c, s, k)` from each unregistered client.
fn never_confirms(p: Protocol, mut f: impl FnMut(&Filter, &mut Failures, IpAddr, IpAddr, u16)) {
    let filter = load_policy(p, PolicyMode::Enforce);
    each_client(&filter, |filter, failures, c, s, registered, k| {
        if !registered {
            f(filter, failures, c, s, k);
        }
    });
}

/// Records a failure unless `frame` passes (a verdict may move: a heuristic's pending).
fn require_passed(failures: &mut Failures, filter: &Filter, what: &str, frame: &[u8]) {
    let got = run(filter, frame);
    failures.require(got.action == XDP_PASS, || format!("{what}: {got}"));
}

// ---------------------------------------------------------------------------------------
// WireGuard with rewritten headers (AmneziaWG): a heuristic, monitored by default
// ---------------------------------------------------------------------------------------

const AWG: Protocol = Protocol::WireGuardObfuscated;

/// AmneziaWG 1.x transport: the H4 header, the receiver index, the counter.
fn awg_data(h4: u32, receiver: u32, counter: u64, len: usize) -> Vec<u8> {
    let mut p = wireguard_data(receiver, counter, len);
    p[..4].copy_from_slice(&h4.to_le_bytes());
    p
}

/// Eight transport packets of one flow: the sixth confirms it.
fn awg_flow(
    filter: &Filter,
    failures: &mut Failures,
    c: IpAddr,
    s: IpAddr,
    cport: u16,
    registered: bool,
    confirmed: &Outcome,
) {
    for n in 0..8u64 {
        let p = awg_data(
            0x6c1f_3a09,
            0x0bad_cafe,
            100 + n,
            128 + 16 * (n as usize % 3),
        );
        failures.check(
            filter,
            &format!("awg packet {n} from {c}"),
            &udp(c, s, cport, 51820, &p),
            &heuristic_step(AWG, registered, n as usize, 5, confirmed),
        );
    }
}

#[test]
fn amneziawg_transport_is_monitored_after_six_consistent_packets() {
    heuristic_confirms(awg_flow, AWG, false, 39000);
}

#[test]
fn amneziawg_transport_is_dropped_when_the_operator_enforces_it() {
    heuristic_confirms(awg_flow, AWG, true, 39100);
}

#[test]
fn constant_or_random_headers_never_confirm_as_amneziawg() {
    never_confirms(AWG, |filter, failures, c, s, k| {
        // A constant "counter" (a fixed-layout protocol), then random first bytes.
        for n in 0..12 {
            let p = awg_data(0x0000_0123, 0x0000_0456, 7, 64);
            let frame = udp(c, s, 39200 + k, 9000, &p);
            require_passed(failures, filter, &format!("constant counter {n}"), &frame);
        }
        for n in 0..12u64 {
            let p = awg_data((n * 0x9e37_79b9) as u32, 0x1357_0000 + n as u32, n, 64);
            let frame = udp(c, s, 39300 + k, 9000, &p);
            require_passed(failures, filter, &format!("random header {n}"), &frame);
        }
    });
}

// ---------------------------------------------------------------------------------------
// Scrambled OpenVPN: a heuristic, monitored by default
// ---------------------------------------------------------------------------------------

const OBFS: Protocol = Protocol::OpenVpnObfuscated;

/// Tunnelblick's "xormask": every byte XORed with the mask, cycled.
fn xormask(p: &[u8], mask: &[u8]) -> Vec<u8> {
    p.iter()
        .enumerate()
        .map(|(i, b)| b ^ mask[i % mask.len()])
        .collect()
}

/// A tls-auth (SHA1) OpenVPN handshake start, client (true) or server packets in order.
fn ovpn_exchange() -> Vec<(bool, Vec<u8>)> {
    let (cs, ss) = (0x0c11_e17a_5e55_1011u64, 0x5e4e_e45e_5510_2022u64);
    let w = TLS_AUTH_SHA1;
    vec![
        (true, openvpn_client_reset(cs, w)),
        (false, openvpn_server_reset(ss, cs, w)),
        (true, openvpn_ack(cs, ss, w, 2, 0)),
        (true, openvpn_control(cs, ss, w, 3, 1, 300)),
        (false, openvpn_ack(ss, cs, w, 2, 1)),
        (false, openvpn_control(ss, cs, w, 3, 1, 1100)),
        (false, openvpn_control(ss, cs, w, 4, 2, 900)),
        (true, openvpn_ack(cs, ss, w, 4, 2)),
        (true, openvpn_control(cs, ss, w, 5, 2, 200)),
        (false, openvpn_data_v2(1, 1, 120)),
        (true, openvpn_data_v2(1, 1, 120)),
    ]
}

/// The exchange scrambled, both directions: the eighth packet confirms it.
fn scrambled_flow(
    filter: &Filter,
    failures: &mut Failures,
    c: IpAddr,
    s: IpAddr,
    cport: u16,
    registered: bool,
    confirmed: &Outcome,
) {
    let mask = [0x5a, 0x13, 0xc7, 0x2e, 0x91];
    for (n, (from_client, p)) in ovpn_exchange().into_iter().enumerate() {
        let p = xormask(&p, &mask);
        let frame = if from_client {
            udp(c, s, cport, 1194, &p)
        } else {
            udp(s, c, 1194, cport, &p)
        };
        failures.check(
            filter,
            &format!("scrambled openvpn packet {n} ({} bytes) {c}", p.len()),
            &frame,
            &heuristic_step(OBFS, registered, n, 7, confirmed),
        );
    }
}

#[test]
fn scrambled_openvpn_is_monitored_after_its_opcode_pattern() {
    heuristic_confirms(scrambled_flow, OBFS, false, 40000);
}

#[test]
fn scrambled_openvpn_is_dropped_when_the_operator_enforces_it() {
    heuristic_confirms(scrambled_flow, OBFS, true, 40100);
}

#[test]
fn request_reply_traffic_of_reset_sizes_never_confirms_as_scrambled_openvpn() {
    never_confirms(OBFS, |filter, failures, c, s, k| {
        let cport = 40200 + k * 4;
        // A DNS-like exchange on another port: 42-byte queries, 58-byte answers.
        for n in 0..12u8 {
            let q = vec![n; 42];
            let a = vec![n ^ 0x80; 58];
            for (frame, what) in [
                (udp(c, s, cport, 5300, &q), "query"),
                (udp(s, c, 5300, cport, &a), "answer"),
            ] {
                require_passed(failures, filter, &format!("{what} {n}"), &frame);
            }
        }
        // The reset sizes answered, then a game's many first bytes.
        let q = vec![0x11; 42];
        let a = vec![0x22; 54];
        let _ = run(filter, &udp(c, s, cport + 1, 27015, &q));
        let _ = run(filter, &udp(s, c, 27015, cport + 1, &a));
        for n in 0..16u8 {
            let p = vec![0x30 + n; 70 + n as usize];
            let frame = udp(c, s, cport + 1, 27015, &p);
            require_passed(failures, filter, &format!("game packet {n}"), &frame);
        }
    });
}
