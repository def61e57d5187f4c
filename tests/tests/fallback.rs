//! Issue 16, item 3: closing the fallbacks. After a VPN handshake between an unregistered
//! client and a server was confirmed by the server's answer and dropped, every packet between
//! the two (any port, any protocol, both directions) is dropped under the `fallback` policy
//! for `--fallback-timeout`: OpenConnect's TLS channel on 443 cannot carry the tunnel once its
//! DTLS was dropped. Keyed by the pair: the client's traffic to other servers and other
//! clients' traffic to the server pass. A handshake nobody answered closes nothing. Off by
//! default (a spoofer who forges both directions could close someone's pair): the operator
//! opts in with `--policy fallback=enforce`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::maps::HashMap;
use vpn_filter::kernel::{Filter, FrameStart, Policy};
use vpn_filter_common::{Config, PolicyMode, Protocol, Verdict};
use vpn_filter_tests::{
    judge::{
        client, expect, load, load_policy, load_with, server, Failures, Outcome, XDP_DROP, XDP_PASS,
    },
    packet::*,
};

const OC: Protocol = Protocol::OpenConnectDtls;
const FB: Protocol = Protocol::Fallback;

fn other_server(v6: bool) -> IpAddr {
    if v6 {
        Ipv6Addr::new(0x2001, 0xdb8, 0x400, 0, 0, 0, 0, 9).into()
    } else {
        Ipv4Addr::new(203, 0, 113, 99).into()
    }
}

fn other_client(v6: bool) -> IpAddr {
    if v6 {
        Ipv6Addr::new(0x2001, 0xdb8, 0x500, 0, 0, 0, 0, 8).into()
    } else {
        Ipv4Addr::new(203, 0, 113, 88).into()
    }
}

fn tls(from: IpAddr, to: IpAddr, fport: u16, tport: u16) -> Vec<u8> {
    let mut p = vec![0x17, 0x03, 0x03, 0x00, 0x40];
    p.extend((0..64u8).map(|i| i.wrapping_mul(37)));
    Frame::eth()
        .ip(from, to)
        .tcp(fport, tport)
        .tcp_flags(TCP_ACK | TCP_PSH)
        .tcp_seq(1000, 2000)
        .payload(&p)
        .build()
}

fn server_hello() -> Vec<u8> {
    let mut p = openconnect_dtls_client_hello();
    p[13] = 2; // ServerHello
    p
}

/// The default policy with the closure enforced (it is off by default: see README).
fn enforcing() -> Filter {
    load_policy(FB, PolicyMode::Enforce)
}

/// The size of the kernel's `PairKey`: two addresses, the family, the VLAN, padding.
const PAIR_KEY_LEN: usize = 40;

/// The closed pairs in the kernel: (key, deadline in kernel ns).
fn closed_pairs(filter: &Filter) -> Vec<([u8; PAIR_KEY_LEN], u64)> {
    let pairs: HashMap<_, [u8; PAIR_KEY_LEN], u64> =
        HashMap::try_from(filter.map("FALLBACK_PAIRS").expect("FALLBACK_PAIRS"))
            .expect("FALLBACK_PAIRS is a hash map");
    pairs
        .iter()
        .collect::<Result<_, _>>()
        .expect("read FALLBACK_PAIRS")
}

/// CLOCK_MONOTONIC_COARSE in ns: the clock the program reads (`bpf_ktime_get_coarse_ns`,
/// the monotonic clock as of the timekeeper's last update).
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) },
        0
    );
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn nothing() -> Outcome {
    expect(XDP_PASS, None, &[])
}

/// The DTLS channel of an unregistered OpenConnect client: its ClientHello waits for the
/// server's answer, which confirms it and is dropped.
fn dtls_dropped(filter: &Filter, failures: &mut Failures, c: IpAddr, s: IpAddr, cport: u16) {
    failures.check(
        filter,
        &format!("{c} DTLS ClientHello"),
        &udp(c, s, cport, 443, &openconnect_dtls_client_hello()),
        &expect(XDP_PASS, Some((OC, Verdict::Pending)), &[]),
    );
    failures.check(
        filter,
        &format!("{s} DTLS ServerHello to {c}"),
        &udp(s, c, 443, cport, &server_hello()),
        &expect(XDP_DROP, Some((OC, Verdict::Dropped)), &[]),
    );
}

#[test]
fn after_a_dropped_dtls_handshake_the_pair_is_closed_on_every_port() {
    let filter = enforcing();
    let mut failures = Failures::default();
    for v6 in [false, true] {
        let (c, s) = (client(v6, false), server(v6));
        let base = 44000 + 100 * v6 as u16;
        dtls_dropped(&filter, &mut failures, c, s, base);
        let closed = expect(XDP_DROP, Some((FB, Verdict::Dropped)), &[]);
        for (what, frame) in [
            ("TLS to 443 (the fallback)", tls(c, s, base + 1, 443)),
            ("TLS from 443", tls(s, c, 443, base + 1)),
            ("TLS to 8443", tls(c, s, base + 2, 8443)),
            (
                "UDP to 53",
                udp(c, s, base + 3, 53, &[1, 2, 3, 4, 5, 6, 7, 8]),
            ),
        ] {
            failures.check(&filter, &format!("{c} <-> {s}: {what}"), &frame, &closed);
        }
        // The pair, not the server or the client alone.
        failures.check(
            &filter,
            &format!("{c} to another server"),
            &tls(c, other_server(v6), base + 4, 443),
            &nothing(),
        );
        failures.check(
            &filter,
            &format!("another client to {s}"),
            &tls(other_client(v6), s, base + 5, 443),
            &nothing(),
        );
    }
    failures.assert_none();
}

/// A handshake that closes nothing, from every family's client (ports from `port`): a
/// registered client's ClientHello and the server's answer are allowed; an unregistered
/// client's ClientHello that nobody answers (a spoofed one) stays pending. The client's TLS
/// to the server after it passes unjudged.
fn closes_nothing(registered: bool, port: u16) {
    let filter = enforcing();
    let mut failures = Failures::default();
    for v6 in [false, true] {
        let (c, s) = (client(v6, registered), server(v6));
        let base = port + 100 * v6 as u16;
        let hello = if registered {
            Verdict::Allowed
        } else {
            Verdict::Pending
        };
        failures.check(
            &filter,
            &format!("{c} ClientHello"),
            &udp(c, s, base, 443, &openconnect_dtls_client_hello()),
            &expect(XDP_PASS, Some((OC, hello)), &[]),
        );
        if registered {
            failures.check(
                &filter,
                &format!("{s} ServerHello to {c}"),
                &udp(s, c, 443, base, &server_hello()),
                &expect(XDP_PASS, Some((OC, Verdict::Allowed)), &[]),
            );
        }
        failures.check(
            &filter,
            &format!("{c} TLS after it"),
            &tls(c, s, base + 1, 443),
            &nothing(),
        );
    }
    failures.assert_none();
}

#[test]
fn an_unanswered_handshake_closes_nothing() {
    closes_nothing(false, 45000);
}

#[test]
fn registered_clients_close_nothing() {
    closes_nothing(true, 46000);
}

#[test]
fn off_by_default_the_pair_stays_open() {
    let filter = load();
    let mut failures = Failures::default();
    let (c, s) = (client(false, false), server(false));
    dtls_dropped(&filter, &mut failures, c, s, 48000);
    failures.check(
        &filter,
        "TLS after the drop",
        &tls(c, s, 48001, 443),
        &nothing(),
    );
    failures.assert_none();
}

#[test]
fn the_fallback_policy_and_timeout_are_the_operators() {
    // Monitor: reported, passed.
    let filter = load_policy(FB, PolicyMode::Monitor);
    let mut failures = Failures::default();
    let (c, s) = (client(false, false), server(false));
    dtls_dropped(&filter, &mut failures, c, s, 47000);
    failures.check(
        &filter,
        "TLS under fallback=monitor",
        &tls(c, s, 47001, 443),
        &expect(XDP_PASS, Some((FB, Verdict::Monitored)), &[]),
    );
    // The operator's timeout: the closure's deadline is the arming packet's kernel time
    // (the program's coarse CLOCK_MONOTONIC, read around it here from the same clock) plus
    // the configured timeout, not the default.
    const HOUR_NS: u64 = 3_600_000_000_000;
    let config = Config {
        fallback_timeout_ns: HOUR_NS,
        ..Config::default()
    };
    let mut policy = Policy::default();
    policy.set(FB, PolicyMode::Enforce);
    let mut filter = load_with(FrameStart::Ethernet, &policy, &config);
    let before = monotonic_ns();
    dtls_dropped(&filter, &mut failures, c, s, 47100);
    let after = monotonic_ns();
    let closures = closed_pairs(&filter);
    assert_eq!(closures.len(), 1, "one closed pair: {closures:?}");
    let (key, until) = closures[0];
    assert!(
        (before + HOUR_NS..=after + HOUR_NS).contains(&until),
        "the closure lasts the configured hour: until {until}, armed between {before} and {after}"
    );
    failures.check(
        &filter,
        "TLS during the closure",
        &tls(c, s, 47101, 443),
        &expect(XDP_DROP, Some((FB, Verdict::Dropped)), &[]),
    );
    // A closure whose deadline has passed closes nothing: move the deadline to before the
    // arming packet, as the clock would after the timeout.
    let mut pairs: HashMap<_, [u8; PAIR_KEY_LEN], u64> =
        HashMap::try_from(filter.map_mut("FALLBACK_PAIRS").expect("FALLBACK_PAIRS"))
            .expect("FALLBACK_PAIRS is a hash map");
    pairs.insert(key, before, 0).expect("rewrite the deadline");
    failures.check(
        &filter,
        "TLS after the closure",
        &tls(c, s, 47102, 443),
        &nothing(),
    );
    failures.assert_none();
}

/// A closure armed in one VLAN never closes the same pair of addresses in another: tenants
/// of a shared gateway reuse private addresses (flows in different VLANs never share state).
#[test]
fn a_closure_stays_in_its_vlan() {
    let filter = enforcing();
    let mut failures = Failures::default();
    let (c, s) = (client(false, false), server(false));
    let in_vlan = |vlan: u16, from: IpAddr, to: IpAddr, fport: u16, tport: u16, p: &[u8]| {
        let f = Frame::eth().vlan(vlan).ip(from, to);
        if p.first() == Some(&0x17) {
            f.tcp(fport, tport)
                .tcp_flags(TCP_ACK | TCP_PSH)
                .tcp_seq(1000, 2000)
                .payload(p)
                .build()
        } else {
            f.udp(fport, tport).payload(p).build()
        }
    };
    failures.check(
        &filter,
        "VLAN 10: DTLS ClientHello",
        &in_vlan(10, c, s, 48000, 443, &openconnect_dtls_client_hello()),
        &expect(XDP_PASS, Some((OC, Verdict::Pending)), &[]),
    );
    failures.check(
        &filter,
        "VLAN 10: the server's DTLS answer",
        &in_vlan(10, s, c, 443, 48000, &server_hello()),
        &expect(XDP_DROP, Some((OC, Verdict::Dropped)), &[]),
    );
    let mut record = vec![0x17, 0x03, 0x03, 0x00, 0x40];
    record.extend((0..64u8).map(|i| i.wrapping_mul(37)));
    failures.check(
        &filter,
        "VLAN 10: TLS between the pair (closed)",
        &in_vlan(10, c, s, 48001, 443, &record),
        &expect(XDP_DROP, Some((FB, Verdict::Dropped)), &[]),
    );
    failures.check(
        &filter,
        "VLAN 20: TLS between the same addresses (another tenant)",
        &in_vlan(20, c, s, 48002, 443, &record),
        &nothing(),
    );
    failures.assert_none();
}
