//! The real program in the real kernel, attached to a veth in a network namespace, judging
//! packets sent by the kernel stack of another namespace.

use std::{
    net::{Ipv4Addr, TcpListener, TcpStream},
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use vpn_filter::{
    client::event::{decode, Clock, EventRecord},
    kernel::{AttachMode, Filter, LoadOptions, Policy, Stats},
    registry::Feed,
};
use vpn_filter_common::{Config, Counter, Protocol, Verdict};
use vpn_filter_tests::{
    lab::{
        registry_json, sa, FilterLab, FILTER_V4, FILTER_V6, REGISTERED_V4, REGISTERED_V6,
        UNREGISTERED_V4, UNREGISTERED_V6,
    },
    netns::{udp_bind, udp_drain, udp_send},
    packet::wireguard_initiation,
};

const WG_PORT: u16 = 51820;
const WINDOW: Duration = Duration::from_millis(400);

/// Loads the filter with the lab's registered client addresses in the allowlist.
fn load_filter() -> Filter {
    let json = registry_json(1, &[("REG-1", &[REGISTERED_V4, REGISTERED_V6])]);
    let (feed, _) =
        Feed::from_json(json.as_bytes(), "test", Default::default()).expect("valid feed");
    let mut filter = Filter::load(
        LoadOptions::default(),
        &Policy::default(),
        &Config::default(),
    )
    .expect("the program loads through the verifier");
    filter
        .sync_allowlist(&feed.allowlist(time::OffsetDateTime::now_utc()))
        .expect("sync");
    filter
}

fn attach(lab: &FilterLab, filter: &mut Filter, mode: AttachMode) {
    let iface = lab.filter_if.clone();
    lab.filter
        .enter(|| filter.attach(&iface, mode))
        .expect("attach");
}

/// The next event in the ring, polled at most `polls` times 10 ms apart (a hang guard bounded
/// by polls, not by the clock).
fn next_event(ring: &mut RingBuf<MapData>, polls: usize) -> Option<EventRecord> {
    let clock = Clock::new();
    for _ in 0..polls {
        if let Some(item) = ring.next() {
            let ev = decode(&item).expect("an Event record");
            return Some(EventRecord::from_event(&ev, &clock));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// Polls the program's counters until `done` holds (at most 500 polls, 10 ms apart).
fn wait_stats(filter: &Filter, what: &str, done: impl Fn(&Stats) -> bool) -> Stats {
    for _ in 0..500 {
        let s = filter.stats().expect("STATS");
        if done(&s) {
            return s;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{what}: not counted after 500 polls");
}

#[test]
fn program_attaches_in_native_mode_on_veth() {
    let lab = FilterLab::new();
    let mut filter = load_filter();
    attach(&lab, &mut filter, AttachMode::Native);
    assert_eq!(lab.xdp_mode_shown(), "xdp", "ip link must show native XDP");
}

#[test]
fn program_attaches_in_generic_mode_on_veth() {
    let lab = FilterLab::new();
    let mut filter = load_filter();
    attach(&lab, &mut filter, AttachMode::Generic);
    assert_eq!(lab.xdp_mode_shown(), "xdpgeneric");
}

fn wireguard_verdicts(mode: AttachMode, server: &str, registered: &str, unregistered: &str) {
    let lab = FilterLab::new();
    let mut filter = load_filter();
    attach(&lab, &mut filter, mode);
    let sock = udp_bind(&lab.filter, sa(server, WG_PORT));

    udp_send(
        &lab.client,
        sa(unregistered, 40000),
        sa(server, WG_PORT),
        &wireguard_initiation(7),
    );
    let got = udp_drain(&sock, WINDOW);
    assert!(
        got.is_empty(),
        "an unregistered WireGuard initiation must be dropped, got {got:?}"
    );
    let stats = filter.stats().unwrap();
    assert_eq!(
        stats.verdict(Protocol::WireGuard, Verdict::Dropped),
        1,
        "{stats:?}"
    );

    let init = wireguard_initiation(8);
    udp_send(
        &lab.client,
        sa(registered, 40001),
        sa(server, WG_PORT),
        &init,
    );
    let got = udp_drain(&sock, WINDOW);
    assert_eq!(
        got.len(),
        1,
        "a registered WireGuard initiation must arrive"
    );
    assert_eq!(got[0].0, sa(registered, 40001));
    assert_eq!(got[0].1, init);
    let stats = filter.stats().unwrap();
    assert_eq!(
        stats.verdict(Protocol::WireGuard, Verdict::Allowed),
        1,
        "{stats:?}"
    );
    assert_eq!(
        stats.verdict(Protocol::WireGuard, Verdict::Dropped),
        1,
        "{stats:?}"
    );
}

#[test]
fn unregistered_wireguard_initiation_is_dropped_registered_arrives_native_ipv4() {
    wireguard_verdicts(
        AttachMode::Native,
        FILTER_V4,
        REGISTERED_V4,
        UNREGISTERED_V4,
    );
}

#[test]
fn unregistered_wireguard_initiation_is_dropped_registered_arrives_generic_ipv4() {
    wireguard_verdicts(
        AttachMode::Generic,
        FILTER_V4,
        REGISTERED_V4,
        UNREGISTERED_V4,
    );
}

#[test]
fn unregistered_wireguard_initiation_is_dropped_registered_arrives_native_ipv6() {
    wireguard_verdicts(
        AttachMode::Native,
        FILTER_V6,
        REGISTERED_V6,
        UNREGISTERED_V6,
    );
}

#[test]
fn unregistered_wireguard_initiation_is_dropped_registered_arrives_generic_ipv6() {
    wireguard_verdicts(
        AttachMode::Generic,
        FILTER_V6,
        REGISTERED_V6,
        UNREGISTERED_V6,
    );
}

#[test]
fn ordinary_udp_tcp_and_icmp_from_unregistered_addresses_arrive_untouched() {
    for mode in [AttachMode::Native, AttachMode::Generic] {
        let lab = FilterLab::new();
        let mut filter = load_filter();
        attach(&lab, &mut filter, mode);

        // UDP: DNS-like and arbitrary payloads, including WireGuard-sized random bytes.
        let sock = udp_bind(&lab.filter, sa(FILTER_V4, 5353));
        let payloads: Vec<Vec<u8>> = vec![
            b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01".to_vec(),
            vec![0xabu8; 148],
            vec![0x42u8; 92],
            b"hello".to_vec(),
        ];
        for p in &payloads {
            udp_send(
                &lab.client,
                sa(UNREGISTERED_V4, 41000),
                sa(FILTER_V4, 5353),
                p,
            );
        }
        let got: Vec<Vec<u8>> = udp_drain(&sock, WINDOW)
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        assert_eq!(
            got, payloads,
            "{mode:?}: every ordinary UDP datagram arrives unchanged"
        );

        // TCP: a connection and a few bytes each way.
        let listener = lab
            .filter
            .enter(|| TcpListener::bind(sa(FILTER_V4, 8080)).unwrap());
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 5];
            std::io::Read::read_exact(&mut s, &mut buf).unwrap();
            std::io::Write::write_all(&mut s, &buf).unwrap();
        });
        let echoed = lab.client.enter(|| {
            let mut s =
                TcpStream::connect_timeout(&sa(FILTER_V4, 8080), Duration::from_secs(2)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            std::io::Write::write_all(&mut s, b"ping!").unwrap();
            let mut buf = [0u8; 5];
            std::io::Read::read_exact(&mut s, &mut buf).unwrap();
            buf
        });
        server.join().unwrap();
        assert_eq!(&echoed, b"ping!", "{mode:?}: TCP works");

        // ICMP echo, IPv4 and IPv6.
        for dst in [FILTER_V4, FILTER_V6] {
            let out = lab.client.exec("ping", &["-c", "1", "-W", "2", dst]);
            assert!(
                out.status.success(),
                "{mode:?}: ping {dst}: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }

        let stats = filter.stats().unwrap();
        assert_eq!(
            stats.dropped(),
            0,
            "{mode:?}: nothing ordinary is dropped: {stats:?}"
        );
        assert!(
            stats.counter(Counter::Packets) >= 10,
            "{mode:?}: the program saw the traffic: {stats:?}"
        );
    }
}

#[test]
fn drop_event_reaches_the_controller_with_addresses_ports_and_protocol() {
    let lab = FilterLab::new();
    let mut filter = load_filter();
    let mut ring = filter.take_events().unwrap();
    attach(&lab, &mut filter, AttachMode::Native);
    let _sock = udp_bind(&lab.filter, sa(FILTER_V4, WG_PORT));

    udp_send(
        &lab.client,
        sa(UNREGISTERED_V4, 40100),
        sa(FILTER_V4, WG_PORT),
        &wireguard_initiation(9),
    );
    let ev = next_event(&mut ring, 200).expect("a drop event");
    assert_eq!(ev.src, UNREGISTERED_V4.parse::<Ipv4Addr>().unwrap());
    assert_eq!(ev.dst, FILTER_V4.parse::<Ipv4Addr>().unwrap());
    assert_eq!((ev.sport, ev.dport), (40100, WG_PORT));
    assert_eq!(ev.protocol, "wireguard");
    assert_eq!(ev.message, "wg_initiation");
    assert_eq!(ev.verdict, "dropped");
    assert_eq!(ev.reason, "signature");
    assert_eq!(ev.ip_proto, 17);
    assert_eq!(
        ev.ifindex,
        lab.filter.ifindex(&lab.filter_if),
        "the ingress interface"
    );
    // Decided by the kernel's own counter (counted in the run that submitted the event),
    // not by waiting for a second event that should not come.
    let s = wait_stats(&filter, "the event", |s| {
        s.counter(Counter::EventsEmitted) >= 1
    });
    assert_eq!(
        s.counter(Counter::EventsEmitted),
        1,
        "exactly one event per dropped packet"
    );
    assert!(
        ring.next().is_none(),
        "exactly one event per dropped packet"
    );

    // A registered initiation produces no event.
    udp_send(
        &lab.client,
        sa(REGISTERED_V4, 40101),
        sa(FILTER_V4, WG_PORT),
        &wireguard_initiation(10),
    );
    let s = wait_stats(&filter, "the registered initiation", |s| {
        s.verdict(Protocol::WireGuard, Verdict::Allowed) >= 1
    });
    assert_eq!(
        s.counter(Counter::EventsEmitted),
        1,
        "allowed traffic emits no event"
    );
    assert!(ring.next().is_none(), "allowed traffic emits no event");
}
