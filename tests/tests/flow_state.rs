//! Flow state under an adversary and under a regulator's clock (issue 13): approvals and
//! revocations reach live flows within one sync; a pending entry is no hiding place; spoofed
//! packets cannot turn ordinary traffic into a blocked flow; strong drops cost no flow entry;
//! ESP-in-UDP needs more than a port; a retrying client is reported during a flood.
//!
//! Every test loads the real program through the verifier and judges frames with
//! BPF_PROG_TEST_RUN (`Filter::run_frame`); root is required, no namespace.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::maps::{HashMap as BpfHashMap, MapData};
use rand_core::Rng as _;
use vpn_filter::{
    kernel::{Filter, LoadOptions, Policy, Stats},
    registry::Feed,
};
use vpn_filter_common::{
    maps, Config, Counter, Event, FlowKey, FlowState, Protocol, Reason, Verdict,
    REPEAT_CHECKS_PER_SEC,
};
use vpn_filter_tests::{lab::registry_json, packet::*};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

const WG: Protocol = Protocol::WireGuard;
const OVPN: Protocol = Protocol::OpenVpn;

fn feed(serial: u64, prefixes: &[&str]) -> Feed {
    let entries: Vec<(&str, &[&str])> = if prefixes.is_empty() {
        vec![]
    } else {
        vec![("REG-APPROVED", prefixes)]
    };
    let json = registry_json(serial, &entries);
    Feed::from_json(json.as_bytes(), "test", Default::default())
        .expect("valid feed")
        .0
}

fn sync(filter: &mut Filter, serial: u64, prefixes: &[&str]) {
    filter
        .sync_allowlist(&feed(serial, prefixes).allowlist(time::OffsetDateTime::now_utc()))
        .expect("sync");
}

fn load_with(config: &Config, options: LoadOptions) -> Filter {
    vpn_filter_tests::require_root();
    let mut filter = Filter::load(options, &Policy::default(), config)
        .expect("the program loads through the verifier");
    sync(&mut filter, 1, &[]);
    filter
}

fn load() -> Filter {
    load_with(&Config::default(), LoadOptions::default())
}

fn run(filter: &Filter, frame: &[u8]) -> u32 {
    let a = filter.run_frame(frame).expect("BPF_PROG_TEST_RUN");
    assert!(a == XDP_PASS || a == XDP_DROP, "action {a}");
    a
}

fn stats(filter: &Filter) -> Stats {
    filter.stats().expect("stats")
}

/// Runs `frame`, checking the action and the one verdict counter that moves (if any).
#[track_caller]
fn expect(
    filter: &Filter,
    what: &str,
    frame: &[u8],
    action: u32,
    moved: Option<(Protocol, Verdict)>,
) {
    let before = stats(filter);
    let got = run(filter, frame);
    let after = stats(filter);
    let want: Vec<_> = moved.iter().map(|(p, v)| (*p, *v, 1)).collect();
    let name = |a| if a == XDP_DROP { "DROP" } else { "PASS" };
    assert!(
        got == action && after.verdicts_since(&before) == want,
        "{what}: got {} with {:?}, want {} with {want:?}",
        name(got),
        after.verdicts_since(&before),
        name(action)
    );
}

/// Both directions of one UDP 5-tuple.
#[derive(Clone, Copy)]
struct Udp {
    c: IpAddr,
    s: IpAddr,
    cp: u16,
    sp: u16,
}

impl Udp {
    fn new(c: impl Into<IpAddr>, cp: u16, s: impl Into<IpAddr>, sp: u16) -> Udp {
        Udp {
            c: c.into(),
            s: s.into(),
            cp,
            sp,
        }
    }

    fn c2s(&self, p: &[u8]) -> Vec<u8> {
        Frame::eth()
            .ip(self.c, self.s)
            .udp(self.cp, self.sp)
            .payload(p)
            .build()
    }

    fn s2c(&self, p: &[u8]) -> Vec<u8> {
        Frame::eth()
            .ip(self.s, self.c)
            .udp(self.sp, self.cp)
            .payload(p)
            .build()
    }
}

fn v4(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(203, 0, 113, last)
}

const SERVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 80);

/// Drains the ring buffer into events.
fn events(ring: &mut aya::maps::RingBuf<MapData>) -> Vec<Event> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        assert!(item.len() >= std::mem::size_of::<Event>());
        // SAFETY: the kernel wrote an `Event` (repr(C), plain integers) at the item's start.
        out.push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const Event) });
    }
    out
}

// ---------------------------------------------------------------------------------------
// 1. Approvals and revocations reach live flows within one sync
// ---------------------------------------------------------------------------------------

#[test]
fn a_wireguard_client_retrying_when_it_is_approved_gets_through_on_its_next_handshake() {
    let mut filter = load();
    let f = Udp::new(v4(10), 41000, SERVER, 51820);
    for i in 0..3 {
        expect(
            &filter,
            "initiation while unregistered",
            &f.c2s(&wireguard_initiation(i)),
            XDP_DROP,
            Some((WG, Verdict::Dropped)),
        );
    }
    sync(&mut filter, 2, &["203.0.113.10/32"]);
    expect(
        &filter,
        "initiation after the approval",
        &f.c2s(&wireguard_initiation(9)),
        XDP_PASS,
        Some((WG, Verdict::Allowed)),
    );
    expect(
        &filter,
        "response",
        &f.s2c(&wireguard_response(7, 9)),
        XDP_PASS,
        Some((WG, Verdict::Allowed)),
    );
}

#[test]
fn a_blocked_openvpn_client_approved_while_it_retries_passes_with_reason_registered() {
    let mut filter = load();
    let mut ring = filter.take_events().unwrap();
    let f = Udp::new(v4(11), 41001, SERVER, 1194);
    let (cs, ss) = (0x1f2b_1e4e_edf3_db60, 0xa957_88e6_055f_db17);
    let wrap = TLS_AUTH_SHA1;
    expect(
        &filter,
        "client reset",
        &f.c2s(&openvpn_client_reset(cs, wrap)),
        XDP_PASS,
        Some((OVPN, Verdict::Pending)),
    );
    expect(
        &filter,
        "server reset confirms",
        &f.s2c(&openvpn_server_reset(ss, cs, wrap)),
        XDP_DROP,
        Some((OVPN, Verdict::Dropped)),
    );
    expect(
        &filter,
        "client reset retried",
        &f.c2s(&openvpn_client_reset(cs, wrap)),
        XDP_DROP,
        Some((OVPN, Verdict::Dropped)),
    );
    events(&mut ring);

    sync(&mut filter, 2, &["203.0.113.11/32"]);
    expect(
        &filter,
        "client reset retried after the approval",
        &f.c2s(&openvpn_client_reset(cs, wrap)),
        XDP_PASS,
        Some((OVPN, Verdict::Allowed)),
    );
    expect(
        &filter,
        "server reset",
        &f.s2c(&openvpn_server_reset(ss, cs, wrap)),
        XDP_PASS,
        Some((OVPN, Verdict::Allowed)),
    );
    expect(
        &filter,
        "control",
        &f.c2s(&openvpn_control(cs, ss, wrap, 2, 1, 300)),
        XDP_PASS,
        Some((OVPN, Verdict::Allowed)),
    );
    let evs = events(&mut ring);
    assert_eq!(
        evs.len(),
        1,
        "one event, for the first packet after the approval: {evs:?}"
    );
    assert_eq!(evs[0].reason, Reason::Registered as u8);
    assert_eq!(evs[0].verdict, Verdict::Allowed as u8);
    assert_eq!(evs[0].src[..4], v4(11).octets());
    assert_eq!(stats(&filter).counter(Counter::FlowRejudged), 1);
}

/// A WireGuard data-only flow blocked between `c` and `s`, then `prefix` approved: the next
/// data packet passes. For every address form the allowlist covers.
fn approval_reaches_a_blocked_data_flow(c: IpAddr, s: IpAddr, prefix: &str) {
    let mut filter = load();
    let f = Udp::new(c, 41002, s, 51820);
    for n in 0..3 {
        expect(
            &filter,
            "data, pending",
            &f.c2s(&wireguard_data(5, n, 64)),
            XDP_PASS,
            Some((WG, Verdict::Pending)),
        );
    }
    expect(
        &filter,
        "fourth data packet confirms",
        &f.c2s(&wireguard_data(5, 3, 64)),
        XDP_DROP,
        Some((WG, Verdict::Dropped)),
    );
    expect(
        &filter,
        "blocked",
        &f.c2s(&wireguard_data(5, 4, 64)),
        XDP_DROP,
        Some((WG, Verdict::Dropped)),
    );
    sync(&mut filter, 2, &[prefix]);
    expect(
        &filter,
        &format!("after approving {prefix}"),
        &f.c2s(&wireguard_data(5, 5, 64)),
        XDP_PASS,
        Some((WG, Verdict::Allowed)),
    );
    expect(
        &filter,
        "the rest of the flow",
        &f.s2c(&wireguard_data(6, 0, 64)),
        XDP_PASS,
        Some((WG, Verdict::Allowed)),
    );
}

#[test]
fn approval_reaches_blocked_flows_over_ipv4_ipv6_ipv4_mapped_and_nat64() {
    approval_reaches_a_blocked_data_flow(v4(12).into(), SERVER.into(), "203.0.113.12/32");
    let c6: Ipv6Addr = "2001:db8:12::7".parse().unwrap();
    let s6: Ipv6Addr = "2001:db8:99::80".parse().unwrap();
    approval_reaches_a_blocked_data_flow(c6.into(), s6.into(), "2001:db8:12::/48");
    // A dual-stack socket's IPv4-mapped form is the IPv4 host.
    let mapped: Ipv6Addr = "::ffff:203.0.113.13".parse().unwrap();
    approval_reaches_a_blocked_data_flow(mapped.into(), s6.into(), "203.0.113.13/32");
    // NAT64 (64:ff9b::/96): an IPv6-only client reaching a registered IPv4 server.
    let nat64: Ipv6Addr = "64:ff9b::cb00:710e".parse().unwrap();
    approval_reaches_a_blocked_data_flow(c6.into(), nat64.into(), "203.0.113.14/32");
}

#[test]
fn a_pending_flow_approved_before_its_confirmation_passes() {
    let mut filter = load();
    let f = Udp::new(v4(15), 41003, SERVER, 51820);
    expect(
        &filter,
        "data, pending",
        &f.c2s(&wireguard_data(5, 0, 64)),
        XDP_PASS,
        Some((WG, Verdict::Pending)),
    );
    sync(&mut filter, 2, &["203.0.113.0/24"]);
    for n in 1..6 {
        expect(
            &filter,
            "data after the approval",
            &f.c2s(&wireguard_data(5, n, 64)),
            XDP_PASS,
            Some((WG, Verdict::Allowed)),
        );
    }
}

#[test]
fn a_revoked_registration_stops_its_live_tunnel_on_the_next_packet() {
    let mut filter = load();
    let mut ring = filter.take_events().unwrap();
    sync(&mut filter, 2, &["203.0.113.16/32"]);
    let f = Udp::new(v4(16), 41004, SERVER, 1194);
    let (cs, ss) = (0x0102_0304_0506_0708, 0x1112_1314_1516_1718);
    let wrap = OvpnWrap::TlsCrypt;
    let a = Some((OVPN, Verdict::Allowed));
    expect(
        &filter,
        "client reset",
        &f.c2s(&openvpn_client_reset(cs, wrap)),
        XDP_PASS,
        a,
    );
    expect(
        &filter,
        "server reset",
        &f.s2c(&openvpn_server_reset(ss, cs, wrap)),
        XDP_PASS,
        a,
    );
    expect(
        &filter,
        "data",
        &f.c2s(&openvpn_data_v2(3, 1, 108)),
        XDP_PASS,
        a,
    );
    expect(
        &filter,
        "data back",
        &f.s2c(&openvpn_data_v2(3, 1, 108)),
        XDP_PASS,
        a,
    );

    sync(&mut filter, 3, &[]);
    let d = Some((OVPN, Verdict::Dropped));
    expect(
        &filter,
        "data after the revocation",
        &f.c2s(&openvpn_data_v2(3, 2, 108)),
        XDP_DROP,
        d,
    );
    expect(
        &filter,
        "data back",
        &f.s2c(&openvpn_data_v2(3, 2, 108)),
        XDP_DROP,
        d,
    );
    expect(
        &filter,
        "server control",
        &f.s2c(&openvpn_control(ss, cs, wrap, 3, 2, 200)),
        XDP_DROP,
        d,
    );
    expect(
        &filter,
        "another session's data (peer id 4)",
        &f.c2s(&openvpn_data_v2(4, 2, 108)),
        XDP_PASS,
        // Not the flow's: judged by the fully-encrypted rule (monitored) as any datagram.
        Some((Protocol::FullyEncrypted, Verdict::Monitored)),
    );
    let evs = events(&mut ring);
    assert_eq!(evs[0].reason, Reason::Revoked as u8, "{evs:?}");
}

// ---------------------------------------------------------------------------------------
// 2. Pending entries are not a hiding place
// ---------------------------------------------------------------------------------------

#[test]
fn a_wireguard_shaped_decoy_does_not_hide_an_openvpn_handshake() {
    let filter = load();
    let f = Udp::new(v4(20), 41010, SERVER, 1194);
    let (cs, ss) = (0x2f2b_1e4e_edf3_db60, 0xb957_88e6_055f_db17);
    expect(
        &filter,
        "decoy: WireGuard data shape, 32 bytes",
        &f.c2s(&wireguard_data(1, 0, 32)),
        XDP_PASS,
        Some((WG, Verdict::Pending)),
    );
    expect(
        &filter,
        "client reset",
        &f.c2s(&openvpn_client_reset(cs, OvpnWrap::Plain)),
        XDP_PASS,
        Some((OVPN, Verdict::Pending)),
    );
    expect(
        &filter,
        "server reset",
        &f.s2c(&openvpn_server_reset(ss, cs, OvpnWrap::Plain)),
        XDP_DROP,
        Some((OVPN, Verdict::Dropped)),
    );
    expect(
        &filter,
        "client control",
        &f.c2s(&openvpn_control(cs, ss, OvpnWrap::Plain, 0, 1, 300)),
        XDP_DROP,
        Some((OVPN, Verdict::Dropped)),
    );
}

#[test]
fn a_decoy_reset_with_another_session_does_not_hide_the_real_one() {
    for wrap in [OvpnWrap::Plain, TLS_AUTH_SHA1] {
        let filter = load();
        let f = Udp::new(v4(21), 41011, SERVER, 1194);
        let (decoy, cs, ss) = (
            0x0bad_0bad_0bad_0bad,
            0x3f2b_1e4e_edf3_db60,
            0xc957_88e6_055f_db17,
        );
        expect(
            &filter,
            "decoy reset",
            &f.c2s(&openvpn_client_reset(decoy, wrap)),
            XDP_PASS,
            Some((OVPN, Verdict::Pending)),
        );
        expect(
            &filter,
            "real reset",
            &f.c2s(&openvpn_client_reset(cs, wrap)),
            XDP_PASS,
            Some((OVPN, Verdict::Pending)),
        );
        expect(
            &filter,
            "server reset echoing the real session",
            &f.s2c(&openvpn_server_reset(ss, cs, wrap)),
            XDP_DROP,
            Some((OVPN, Verdict::Dropped)),
        );
    }
}

#[test]
fn a_padded_wireguard_retry_with_a_new_index_is_still_confirmed_by_the_reply() {
    let filter = load();
    let f = Udp::new(v4(22), 41012, SERVER, 51820);
    expect(
        &filter,
        "padded initiation",
        &f.c2s(&wireguard_padded_initiation(0x11, 204)),
        XDP_PASS,
        Some((WG, Verdict::Pending)),
    );
    expect(
        &filter,
        "retry, new sender index",
        &f.c2s(&wireguard_padded_initiation(0x22, 204)),
        XDP_PASS,
        Some((WG, Verdict::Pending)),
    );
    expect(
        &filter,
        "response to the retry",
        &f.s2c(&wireguard_padded_response(0x33, 0x22, 100)),
        XDP_DROP,
        Some((WG, Verdict::Dropped)),
    );
}

#[test]
fn pending_expiry_follows_the_flow_so_a_late_reply_still_confirms() {
    let config = Config {
        pending_flow_timeout_ns: 1_000_000_000,
        ..Config::default()
    };
    let filter = load_with(&config, LoadOptions::default());
    let f = Udp::new(v4(23), 41013, SERVER, 1194);
    let (cs, ss) = (0x4f2b_1e4e_edf3_db60, 0xd957_88e6_055f_db17);
    let wrap = TLS_AUTH_SHA1;
    expect(
        &filter,
        "client reset",
        &f.c2s(&openvpn_client_reset(cs, wrap)),
        XDP_PASS,
        Some((OVPN, Verdict::Pending)),
    );
    std::thread::sleep(std::time::Duration::from_millis(700));
    expect(
        &filter,
        "retransmitted reset",
        &f.c2s(&openvpn_client_reset(cs, wrap)),
        XDP_PASS,
        Some((OVPN, Verdict::Pending)),
    );
    // More than the pending timeout after the first reset, less after the retransmission.
    std::thread::sleep(std::time::Duration::from_millis(500));
    expect(
        &filter,
        "late server reset",
        &f.s2c(&openvpn_server_reset(ss, cs, wrap)),
        XDP_DROP,
        Some((OVPN, Verdict::Dropped)),
    );
}

/// One packet of the property test's vocabulary: VPN messages of several protocols and
/// tokens in both directions, ordinary payloads, and byte-level mutations of both.
fn random_packet(rng: &mut rand_pcg::Pcg64, f: &Udp) -> Vec<u8> {
    let tok = [
        0x1111_2222_3333_4444u64,
        0x5555_6666_7777_8888,
        0x0bad_0bad_0bad_0bad,
    ];
    let t = tok[(rng.next_u32() % 3) as usize];
    let u = tok[(rng.next_u32() % 3) as usize];
    let wraps = [
        OvpnWrap::Plain,
        TLS_AUTH_SHA1,
        OvpnWrap::TlsCrypt,
        OvpnWrap::TlsCryptV2 { wkc_len: 290 },
    ];
    let wrap = wraps[(rng.next_u32() % 4) as usize];
    let idx = [1u32, 2, 0xabcd][(rng.next_u32() % 3) as usize];
    let mut p = match rng.next_u32() % 17 {
        0 => wireguard_initiation(idx),
        1 => wireguard_response(idx, idx + 1),
        2 => wireguard_data(
            idx,
            rng.next_u64() % 8,
            32 + 16 * (rng.next_u32() % 4) as usize,
        ),
        3 => wireguard_padded_initiation(idx, 160 + (rng.next_u32() % 100) as usize),
        4 => wireguard_padded_response(idx, idx + 1, 100),
        5 => openvpn_client_reset(t, wrap),
        6 => openvpn_server_reset(u, t, wrap),
        7 => openvpn_control(t, u, wrap, 2, 1, 100),
        8 => openvpn_ack(t, u, wrap, 3, 1),
        9 => openvpn_data_v2(idx, 1, 108),
        10 => ikev2_sa_init(t, 352),
        11 => l2tp_sccrq(idx as u16),
        12 => l2tp_zlb(idx as u16, 1, 1),
        13 => esp_in_udp(0x1000 + idx, 1 + rng.next_u32() % 4, 136),
        14 => dns_query(idx as u16, "example.com"),
        15 => ntp_request(),
        _ => quic_short(
            0x40 | (rng.next_u32() % 64) as u8,
            &t.to_be_bytes(),
            200,
            rng.next_u64(),
        ),
    };
    if rng.next_u32().is_multiple_of(4) && !p.is_empty() {
        let at = (rng.next_u32() as usize) % p.len();
        p[at] = rng.next_u32() as u8;
    }
    if rng.next_u32().is_multiple_of(2) {
        f.c2s(&p)
    } else {
        f.s2c(&p)
    }
}

/// Forgets every flow of `filter` (the "fresh 5-tuple" side of the property test).
fn clear_flows(filter: &mut Filter) {
    let mut flows: BpfHashMap<&mut MapData, FlowKey, FlowState> =
        BpfHashMap::try_from(filter.map_mut(maps::FLOWS).unwrap()).unwrap();
    let keys: Vec<FlowKey> = flows.keys().map(|k| k.unwrap()).collect();
    for k in keys {
        let _ = flows.remove(&k);
    }
}

/// The invariant of the flow state, packet by packet, over random multi-packet sequences on one
/// 5-tuple (fixed seed): *a packet that would be dropped on a fresh 5-tuple is never passed
/// because of what came before it on that 5-tuple* (nothing is registered here, so the one
/// exception, a registered endpoint, does not arise).
#[test]
fn no_history_on_a_5_tuple_makes_a_packet_that_a_fresh_5_tuple_drops_pass() {
    use rand_core::SeedableRng as _;
    let filter = load();
    let mut fresh = load();
    let mut rng = rand_pcg::Pcg64::seed_from_u64(0x013f_10e5_7a7e);
    let ports = [
        (41020u16, 1194u16),
        (4500, 4500),
        (500, 500),
        (41021, 51820),
        (123, 123),
        (41022, 1701),
        (41023, 53),
    ];
    let (mut checked, mut fresh_drops) = (0u64, 0u64);
    let mut violations = Vec::new();
    for seq in 0..400u32 {
        let (cp, sp) = ports[(seq as usize) % ports.len()];
        let c = Ipv4Addr::new(10, 13, (seq >> 8) as u8, seq as u8);
        let f = Udp::new(c, cp, SERVER, sp);
        let len = 2 + rng.next_u32() % 14;
        for step in 0..len {
            let frame = random_packet(&mut rng, &f);
            let got = run(&filter, &frame);
            clear_flows(&mut fresh);
            let alone = run(&fresh, &frame);
            checked += 1;
            if alone == XDP_DROP {
                fresh_drops += 1;
                if got == XDP_PASS && violations.len() < 10 {
                    violations.push(format!(
                        "sequence {seq} step {step}: {:02x?}",
                        &frame[42..frame.len().min(90)]
                    ));
                }
            }
        }
    }
    eprintln!("{checked} packets checked, {fresh_drops} dropped on a fresh 5-tuple");
    assert!(
        fresh_drops > 200,
        "the vocabulary reaches drops: {fresh_drops}"
    );
    assert!(
        violations.is_empty(),
        "history made fresh drops pass:\n{}",
        violations.join("\n")
    );
}

/// A real handshake on `f`: each packet, and whether it is a handshake message (the messages
/// without which the tunnel cannot come up; transport data is not one).
fn conversation(rng: &mut rand_pcg::Pcg64, f: &Udp) -> Vec<(Vec<u8>, bool)> {
    let cs = rng.next_u64() | 0x0101_0101_0101_0101;
    let ss = rng.next_u64() | 0x0101_0101_0101_0101;
    let (i, r) = (rng.next_u32() | 1, rng.next_u32() | 1);
    let wraps = [
        OvpnWrap::Plain,
        TLS_AUTH_SHA1,
        OvpnWrap::TlsCrypt,
        OvpnWrap::TlsCryptV2 { wkc_len: 290 },
    ];
    match rng.next_u32() % 5 {
        0 | 1 => {
            let wrap = wraps[(rng.next_u32() % 4) as usize];
            let control = match wrap {
                OvpnWrap::TlsCryptV2 { wkc_len } => openvpn_control_wkc(cs, ss, 280, wkc_len),
                _ => openvpn_control(cs, ss, wrap, 2, 1, 300),
            };
            vec![
                (f.c2s(&openvpn_client_reset(cs, wrap)), true),
                (f.s2c(&openvpn_server_reset(ss, cs, wrap)), true),
                (f.c2s(&openvpn_client_reset(cs, wrap)), true),
                (f.s2c(&openvpn_server_reset(ss, cs, wrap)), true),
                (f.c2s(&control), false),
                (f.s2c(&openvpn_control(ss, cs, wrap, 2, 1, 900)), false),
            ]
        }
        2 => vec![
            (f.c2s(&wireguard_padded_initiation(i, 204)), true),
            (f.s2c(&wireguard_padded_response(r, i, 100)), true),
            (f.c2s(&wireguard_padded_initiation(i ^ 2, 204)), true),
            (f.s2c(&wireguard_padded_response(r ^ 2, i ^ 2, 100)), true),
            (f.c2s(&wireguard_data(r, 0, 64)), false),
        ],
        3 => vec![
            (f.c2s(&wireguard_initiation(i)), true),
            (f.s2c(&wireguard_response(r, i)), true),
            (f.c2s(&wireguard_data(r, 0, 64)), false),
        ],
        _ => vec![
            (f.c2s(&ikev2_sa_init(cs, 352)), true),
            (f.s2c(&ikev2_sa_init_response(cs, ss, 248)), true),
            (f.c2s(&l2tp_sccrq(i as u16)), true),
        ],
    }
}

/// Decoys cannot hide a handshake: a real handshake is run on a fresh 5-tuple, then again on
/// a fresh filter with random decoys (other protocols, other tokens, either direction,
/// mutated) before and between its packets. Every handshake message the first run dropped
/// must be dropped in the second.
#[test]
fn decoys_before_and_between_a_handshakes_packets_never_let_a_dropped_message_pass() {
    use rand_core::SeedableRng as _;
    let mut base = load();
    let mut mixed = load();
    let mut rng = rand_pcg::Pcg64::seed_from_u64(0xdec0_4213);
    let ports = [
        (41030u16, 1194u16),
        (41031, 51820),
        (500, 500),
        (41032, 443),
        (123, 123),
    ];
    let (mut checked, mut dropped) = (0u64, 0u64);
    let mut violations = Vec::new();
    for n in 0..600u32 {
        let (cp, sp) = ports[(n as usize) % ports.len()];
        let f = Udp::new(
            Ipv4Addr::new(10, 14, (n >> 8) as u8, n as u8),
            cp,
            SERVER,
            sp,
        );
        let conv = conversation(&mut rng, &f);
        clear_flows(&mut base);
        let want: Vec<u32> = conv.iter().map(|(p, _)| run(&base, p)).collect();
        clear_flows(&mut mixed);
        for (k, (p, handshake)) in conv.iter().enumerate() {
            let mut decoys = Vec::new();
            for _ in 0..rng.next_u32() % 4 {
                let d = random_packet(&mut rng, &f);
                let o = vpn_filter_tests::judge::run(&mixed, &d);
                decoys.push(format!("{:02x?} -> {o}", &d[42..d.len().min(50)]));
            }
            let got = vpn_filter_tests::judge::run(&mixed, p);
            if n == 311 || n == 563 {
                eprintln!("conv {n} pkt {k}: decoys {decoys:?} got {got}");
            }
            let got = got.action;
            if *handshake {
                checked += 1;
                if want[k] == XDP_DROP {
                    dropped += 1;
                    if got == XDP_PASS && violations.len() < 10 {
                        violations.push(format!(
                            "conversation {n} packet {k}: {:02x?}",
                            &p[42..p.len().min(70)]
                        ));
                    }
                }
            }
        }
    }
    eprintln!("{checked} handshake messages checked, {dropped} dropped without decoys");
    assert!(dropped > 500, "the conversations reach drops: {dropped}");
    assert!(
        violations.is_empty(),
        "decoys let dropped handshake messages pass:\n{}",
        violations.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// 3. A spoofer cannot turn ordinary traffic into a blocked flow
// ---------------------------------------------------------------------------------------

/// Spoofed OpenVPN, L2TP and WireGuard packets on `f` (both directions, as a spoofer with TTL=1
/// can send them past the gateway), confirming an OpenVPN and a WireGuard-data flow.
fn spoof_vpn_on(filter: &Filter, f: &Udp) {
    let (cs, ss) = (0x5f2b_1e4e_edf3_db60, 0xe957_88e6_055f_db17);
    for p in [
        f.c2s(&openvpn_client_reset(cs, OvpnWrap::Plain)),
        f.s2c(&openvpn_server_reset(ss, cs, OvpnWrap::Plain)),
        f.c2s(&openvpn_control(cs, ss, OvpnWrap::Plain, 0, 1, 100)),
        f.c2s(&l2tp_sccrq(7)),
        f.s2c(&l2tp_zlb(7, 0, 1)),
        f.c2s(&wireguard_initiation(3)),
    ] {
        run(filter, &p);
    }
    for n in 0..5 {
        run(filter, &f.c2s(&wireguard_data(0x99, n, 64)));
        run(filter, &f.s2c(&wireguard_data(0x98, n, 64)));
    }
}

fn ntp_response() -> Vec<u8> {
    let mut p = vec![0u8; 48];
    p[..8].copy_from_slice(&[0x24, 2, 6, 0xe9, 0, 0, 0x0a, 0x3b]);
    fill_pseudo_random(&mut p[8..], 0x7e7);
    p
}

fn snmp_get(request_id: u8) -> Vec<u8> {
    // SNMPv2c GetRequest for sysDescr.0, community "public" (0x30: OpenVPN's P_DATA_V1 byte).
    let mut p = hex_bytes("302902010104067075626c6963a01c0204");
    p.extend_from_slice(&[0x1d, 0x2e, 0x33, request_id]);
    p.extend_from_slice(&hex_bytes("020100020100300e300c06082b060102010101000500"));
    p
}

fn hex_bytes(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// A service's name, 5-tuple, requests and replies.
type Service = (&'static str, Udp, Vec<Vec<u8>>, Vec<Vec<u8>>);

#[test]
fn spoofed_vpn_packets_on_ntp_sip_snmp_and_dns_5_tuples_never_block_the_real_service() {
    let filter = load();
    let client = v4(30);
    let services: Vec<Service> = vec![
        ("NTP 123<->123", Udp::new(client, 123, SERVER, 123), vec![ntp_request()], vec![ntp_response()]),
        (
            "SIP 5060<->5060",
            Udp::new(client, 5060, SERVER, 5060),
            vec![
                b"INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.30:5060\r\n\r\n".to_vec(),
                b"OPTIONS sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.30:5060\r\n\r\n".to_vec(),
                b"ACK sip:bob@example.com SIP/2.0\r\n\r\n".to_vec(),
            ],
            vec![b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 203.0.113.30:5060\r\n\r\n".to_vec()],
        ),
        ("SNMP", Udp::new(client, 41030, SERVER, 161), vec![snmp_get(1), snmp_get(2)], vec![snmp_get(3)]),
        (
            "DNS",
            Udp::new(client, 41031, SERVER, 53),
            vec![dns_query(0x0400, "example.com"), dns_query_plain(0x0100, "example.org")],
            vec![dns_answer(0x0400, "example.com", &[Ipv4Addr::new(192, 0, 2, 1)])],
        ),
    ];
    let mut failures = Vec::new();
    for (name, f, requests, replies) in &services {
        spoof_vpn_on(&filter, f);
        for _ in 0..3 {
            for r in requests {
                if run(&filter, &f.c2s(r)) != XDP_PASS {
                    failures.push(format!("{name}: request {:02x?}", &r[..8]));
                }
            }
            for r in replies {
                if run(&filter, &f.s2c(r)) != XDP_PASS {
                    failures.push(format!("{name}: reply {:02x?}", &r[..8]));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "real service packets dropped:\n{}",
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// 4. Floods: no flow insert for strong drops
// ---------------------------------------------------------------------------------------

#[test]
fn single_packet_strong_drops_from_random_sources_need_no_flow_entry() {
    let options = LoadOptions {
        flow_entries: 1024,
        ..LoadOptions::default()
    };
    let filter = load_with(&Config::default(), options);
    // A blocked WireGuard session, then a flood of 6x the flow map's size.
    let victim = Udp::new(v4(40), 41040, SERVER, 51820);
    expect(
        &filter,
        "session's initiation",
        &victim.c2s(&wireguard_initiation(1)),
        XDP_DROP,
        Some((WG, Verdict::Dropped)),
    );
    let before = stats(&filter);
    for i in 0..6144u32 {
        let src = Ipv4Addr::from(0x0a00_0000 | i);
        let f = Udp::new(
            src,
            20000 + (i % 30000) as u16,
            SERVER,
            [51820, 500, 1701][(i % 3) as usize],
        );
        let p = match i % 3 {
            0 => wireguard_initiation(i),
            1 => ikev2_sa_init(i as u64 + 1, 352),
            _ => l2tp_sccrq(i as u16),
        };
        assert_eq!(run(&filter, &f.c2s(&p)), XDP_DROP);
    }
    let after = stats(&filter);
    assert_eq!(
        after.counter(Counter::FlowInsert) - before.counter(Counter::FlowInsert),
        0,
        "no insert per flood packet"
    );
    expect(
        &filter,
        "the session's next initiation after the flood",
        &victim.c2s(&wireguard_initiation(2)),
        XDP_DROP,
        Some((WG, Verdict::Dropped)),
    );
}

// ---------------------------------------------------------------------------------------
// 5. ESP-in-UDP needs more than a port number
// ---------------------------------------------------------------------------------------

#[test]
fn dns_ntp_and_quic_from_source_port_4500_pass() {
    let filter = load();
    let dns = Udp::new(v4(50), 4500, SERVER, 53);
    let ntp = Udp::new(v4(51), 4500, SERVER, 123);
    let quic = Udp::new(v4(52), 4500, SERVER, 443);
    let mut failures = Vec::new();
    let mut check = |what: String, frame: Vec<u8>| {
        if run(&filter, &frame) != XDP_PASS {
            failures.push(what);
        }
    };
    for id in [0x1c2d_u16, 0x1c2d, 0x7a11, 0x0042, 0x9999] {
        check(
            format!("DNS query {id:#x}"),
            dns.c2s(&dns_query(id, "example.com")),
        );
        check(
            format!("DNS answer {id:#x}"),
            dns.s2c(&dns_answer(
                id,
                "example.com",
                &[Ipv4Addr::new(192, 0, 2, 7)],
            )),
        );
    }
    for n in 0..5 {
        check(format!("NTP request {n}"), ntp.c2s(&ntp_request()));
        check(format!("NTP response {n}"), ntp.s2c(&ntp_response()));
    }
    let dcid = [0xd1, 0xc1, 0xd0, 0x0d, 0x11, 0x22, 0x33, 0x44];
    check(
        "QUIC Initial".into(),
        quic.c2s(&quic_initial(&dcid, &[1, 2, 3, 4], 1200)),
    );
    for n in 0..20u64 {
        check(
            format!("QUIC short {n}"),
            quic.c2s(&quic_short(0x40 | (n as u8 * 7 % 64), &dcid, 1200, n)),
        );
        check(
            format!("QUIC short back {n}"),
            quic.s2c(&quic_short(
                0x40 | (n as u8 * 5 % 64),
                &[9, 8, 7, 6],
                300,
                n + 100,
            )),
        );
    }
    assert!(failures.is_empty(), "dropped: {failures:?}");
}

#[test]
fn esp_in_udp_is_confirmed_by_a_rising_sequence_and_the_peers_own_spi() {
    let filter = load();
    let f = Udp::new(v4(53), 4500, SERVER, 4500);
    let esp = Protocol::Esp;
    expect(
        &filter,
        "c2s seq 1",
        &f.c2s(&esp_in_udp(0x453e_c8e3, 1, 136)),
        XDP_PASS,
        Some((esp, Verdict::Pending)),
    );
    expect(
        &filter,
        "s2c seq 1",
        &f.s2c(&esp_in_udp(0xc1a0_0b17, 1, 136)),
        XDP_PASS,
        Some((esp, Verdict::Pending)),
    );
    expect(
        &filter,
        "c2s seq 2 confirms",
        &f.c2s(&esp_in_udp(0x453e_c8e3, 2, 136)),
        XDP_DROP,
        Some((esp, Verdict::Dropped)),
    );
    expect(
        &filter,
        "s2c seq 2",
        &f.s2c(&esp_in_udp(0xc1a0_0b17, 2, 136)),
        XDP_DROP,
        Some((esp, Verdict::Dropped)),
    );
    expect(
        &filter,
        "another SPI's packet is not the flow's",
        &f.s2c(&esp_in_udp(0x7777_0000, 9, 136)),
        XDP_PASS,
        None,
    );
}

#[test]
fn quic_short_headers_shaped_like_a_tls_crypt_v2_reset_and_wkc_pass() {
    let filter = load();
    let f = Udp::new(v4(54), 41054, SERVER, 443);
    let dcid = [0x6e, 0x11, 0x42, 0x9a, 0x3c, 0x77, 0x10, 0x05];
    // First byte 0x50 is opcode 10 (tls-crypt-v2 reset), key 0, with a replay packet id that
    // looks like OpenVPN 2.6's (0x0f000001) in bytes 9..13; the next packets start 0x58 (WKc
    // control) with the same connection id where the session id would be.
    // 1000 bytes: OpenVPN resets are shorter than 1200 (nDPI's bound), QUIC packets need not be.
    let mut reset = quic_short(0x50, &dcid, 1000, 1);
    reset[9..13].copy_from_slice(&[0x0f, 0, 0, 1]);
    run(&filter, &f.c2s(&reset));
    for n in 0..30u64 {
        let p = quic_short(0x58, &dcid, 1200, 1000 + n);
        assert_eq!(run(&filter, &f.c2s(&p)), XDP_PASS, "QUIC packet {n}");
        let back = quic_short(
            0x40 | (n as u8 % 64),
            &[5, 4, 3, 2, 1, 0, 9, 8],
            1200,
            2000 + n,
        );
        assert_eq!(
            run(&filter, &f.s2c(&back)),
            XDP_PASS,
            "QUIC packet {n} back"
        );
    }
}

#[test]
fn flows_in_different_vlans_do_not_share_state() {
    let filter = load();
    let (c, s) = (IpAddr::from(v4(55)), IpAddr::from(SERVER));
    let data = |vlan: u16, n: u64| {
        Frame::eth()
            .vlan(vlan)
            .ip(c, s)
            .udp(41055, 51820)
            .payload(&wireguard_data(5, n, 64))
            .build()
    };
    for n in 0..4 {
        run(&filter, &data(10, n));
    }
    assert_eq!(run(&filter, &data(10, 4)), XDP_DROP, "blocked in VLAN 10");
    expect(
        &filter,
        "the same 5-tuple in VLAN 20 is a new flow",
        &data(20, 0),
        XDP_PASS,
        Some((WG, Verdict::Pending)),
    );
}

// ---------------------------------------------------------------------------------------
// 6. A real unregistered user is reported during a spoofed flood
// ---------------------------------------------------------------------------------------

/// Keeps the calling thread on one CPU (the event budget is per CPU).
fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes within it; sched_setaffinity(0)
    // applies to the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
}

#[test]
fn a_retrying_source_is_reported_while_a_random_source_flood_spends_the_event_budget() {
    pin_to_cpu(0);
    let config = Config {
        events_per_cpu_per_sec: 20,
        ..Config::default()
    };
    let mut filter = load_with(&config, LoadOptions::default());
    let mut ring = filter.take_events().unwrap();
    let real = Udp::new(v4(60), 41060, SERVER, 51820);
    let before = stats(&filter);
    let mut drops = 0u64;
    for i in 0..3000u32 {
        let src = Ipv4Addr::from(0x0a80_0000 | i);
        let f = Udp::new(src, 30000, SERVER, 51820);
        drops += (run(&filter, &f.c2s(&wireguard_initiation(i))) == XDP_DROP) as u64;
        if i % 500 == 250 {
            drops += (run(&filter, &real.c2s(&wireguard_initiation(i))) == XDP_DROP) as u64;
        }
    }
    let after = stats(&filter);
    let evs = events(&mut ring);
    let reported = evs.iter().filter(|e| e.src[..4] == v4(60).octets()).count();
    assert!(
        reported >= 1,
        "the retrying source was never reported among {} events",
        evs.len()
    );
    assert!(
        reported <= 2,
        "reported from the reserve at most once a minute: {reported}"
    );
    let emitted = after.counter(Counter::EventsEmitted) - before.counter(Counter::EventsEmitted);
    let suppressed =
        after.counter(Counter::EventsSuppressed) - before.counter(Counter::EventsSuppressed);
    assert_eq!(
        emitted + suppressed,
        drops,
        "every drop is either reported or counted as suppressed"
    );
    assert_eq!(emitted as usize, evs.len());
    assert!(
        after.counter(Counter::EventsRepeatSource) - before.counter(Counter::EventsRepeatSource)
            >= 1
    );
}

/// Past REPEAT_CHECKS_PER_SEC suppressed events in a CPU's second, the flood's packets skip
/// the repeat-source filter (a random access into 16 MiB each, where a flood that fast
/// overwrites a retrying client's slot before its retry anyway): a source the filter saw
/// retrying is reported below the cap, and not once the second's flood passed it.
#[test]
fn past_the_checks_cap_a_flood_skips_the_repeat_source_filter() {
    pin_to_cpu(0);
    let config = Config {
        events_per_cpu_per_sec: 20,
        ..Config::default()
    };
    let real = Udp::new(v4(61), 41061, SERVER, 51820);
    let flood = Udp::new(Ipv4Addr::new(10, 129, 0, 1), 30000, SERVER, 51820);
    for over_cap in [false, true] {
        let mut filter = load_with(&config, LoadOptions::default());
        let mut ring = filter.take_events().unwrap();
        // The budget's window starts with this second's first event: everything below runs
        // well inside it (a few hundred thousand runs of ~0.1-0.5 us in one call).
        for i in 0..30u32 {
            let src = Ipv4Addr::from(0x0a81_0100 | i);
            let f = Udp::new(src, 30000, SERVER, 51820);
            assert_eq!(run(&filter, &f.c2s(&wireguard_initiation(i))), XDP_DROP);
        }
        // Budget spent: the real client's first attempt is suppressed and recorded.
        assert_eq!(run(&filter, &real.c2s(&wireguard_initiation(1))), XDP_DROP);
        let flood_runs = if over_cap {
            REPEAT_CHECKS_PER_SEC + 1000
        } else {
            1000
        };
        let before = stats(&filter);
        assert_eq!(
            filter
                .run_frame_repeat(&flood.c2s(&wireguard_initiation(7)), flood_runs)
                .expect("BPF_PROG_TEST_RUN"),
            XDP_DROP
        );
        let mid = stats(&filter);
        let moved = |c: Counter| mid.counter(c) - before.counter(c);
        // The flood's one source retries too: reported once from the reserve.
        assert_eq!(moved(Counter::EventsRepeatSource), 1);
        assert_eq!(
            moved(Counter::EventsSuppressed) + moved(Counter::EventsEmitted),
            flood_runs as u64,
            "every flood packet's event is emitted or counted as suppressed"
        );
        // Its retry.
        assert_eq!(run(&filter, &real.c2s(&wireguard_initiation(2))), XDP_DROP);
        let reported = events(&mut ring)
            .iter()
            .filter(|e| e.src[..4] == v4(61).octets())
            .count();
        if over_cap {
            assert_eq!(reported, 0, "past the cap the filter is not consulted");
        } else {
            assert_eq!(
                reported, 1,
                "below the cap the retry is reported from the reserve"
            );
        }
    }
}

/// The per-source event limit never makes two sources share one limit. Its slots were once
/// chosen and matched by an unseeded hash in which an IPv6 source could be computed to
/// collide with any IPv4 one (both words of the hash's input are XORed): the attacker's
/// detections then spent the victim's per-source allowance and the victim's own events were
/// suppressed. The attacker below is that computed address.
#[test]
fn a_source_cannot_spend_another_sources_event_allowance() {
    let victim = v4(77);
    // The old hash's input: the first and last 8 bytes of the 16-byte source as
    // little-endian words, combined as a ^ rotl(b, 31). An IPv4 source is [addr, 0...].
    let mut v = [0u8; 16];
    v[..4].copy_from_slice(&victim.octets());
    let a_victim = u64::from_le_bytes(v[..8].try_into().unwrap());
    let prefix = [0x20u8, 0x01, 0x0d, 0xb8, 0x00, 0x77, 0x00, 0x00];
    let a_attacker = u64::from_le_bytes(prefix);
    let b_attacker = (a_victim ^ a_attacker).rotate_right(31);
    let mut att = [0u8; 16];
    att[..8].copy_from_slice(&prefix);
    att[8..].copy_from_slice(&b_attacker.to_le_bytes());
    assert_eq!(
        a_attacker ^ b_attacker.rotate_left(31),
        a_victim,
        "the attacker collides under the old hash"
    );
    let attacker = Ipv6Addr::from(att);
    let server6: Ipv6Addr = "2001:db8:ff::80".parse().unwrap();

    let mut filter = load();
    let mut ring = filter.take_events().unwrap();
    // Well past the default per-source allowance (5 a second), all within the CPU's budget.
    let noisy = Udp::new(attacker, 40000, server6, 51820);
    for i in 0..20u32 {
        assert_eq!(run(&filter, &noisy.c2s(&wireguard_initiation(i))), XDP_DROP);
    }
    let real = Udp::new(victim, 41077, SERVER, 51820);
    assert_eq!(run(&filter, &real.c2s(&wireguard_initiation(99))), XDP_DROP);
    let evs = events(&mut ring);
    let from_attacker = evs.iter().filter(|e| e.src == att).count();
    let from_victim = evs
        .iter()
        .filter(|e| e.src[..4] == victim.octets() && e.src[4..].iter().all(|&b| b == 0))
        .count();
    assert!(
        from_attacker <= 5,
        "the attacker stays within its own allowance: {from_attacker} events"
    );
    assert_eq!(
        from_victim,
        1,
        "the victim's drop is reported ({} events in all)",
        evs.len()
    );
}

/// Sources whose hashes name the same event-limit slot keep their own allowances. Session 5's
/// `EVENT_LIMIT` held one source per slot: a source that found another there took the slot
/// over with a fresh allowance, so two colliding sources reset each other on every event and
/// neither was limited. The 300-source flood test in `observability.rs` failed on it by
/// chance: by the birthday bound one load in two (3 runs of 6 here). A slot is now one way of
/// a bucket. The sources below all hash, under this load's seed, to one slot: as many as a
/// bucket has ways, interleaved, then one more, which must still be reported.
#[test]
fn sources_sharing_an_event_limit_slot_keep_their_own_allowances() {
    use vpn_filter_common::{
        endpoint_hash, DEFAULT_EVENTS_PER_SOURCE_PER_SEC, EVENT_LIMIT_SLOTS, EVENT_LIMIT_WAYS,
        FAMILY_V4,
    };
    let mut filter = load();
    let seed = aya::maps::Array::<_, u32>::try_from(filter.map(maps::TCP_HEAD_SEED).unwrap())
        .unwrap()
        .get(&0, 0)
        .unwrap();
    let words = |a: Ipv4Addr| {
        let o = a.octets();
        [u32::from_ne_bytes(o), 0, 0, 0]
    };
    let slot =
        |a: Ipv4Addr| endpoint_hash(seed, &words(a), FAMILY_V4 as u16) & (EVENT_LIMIT_SLOTS - 1);
    // The slot of the first candidate, and more sources on exactly that slot (one in 65,536
    // addresses of 10.64.0.0/10 lands there: a few hundred thousand hashes).
    let first = Ipv4Addr::new(10, 64, 0, 1);
    let target = slot(first);
    let wanted = EVENT_LIMIT_WAYS as usize + 1;
    let sources: Vec<Ipv4Addr> = std::iter::once(first)
        .chain(
            (u32::from(first) + 1..u32::from(Ipv4Addr::new(10, 127, 255, 255)))
                .map(Ipv4Addr::from)
                .filter(|&a| slot(a) == target),
        )
        .take(wanted)
        .collect();
    assert_eq!(sources.len(), wanted, "colliding sources found");

    let mut ring = filter.take_events().unwrap();
    let (sharing, newcomer) = sources.split_at(EVENT_LIMIT_WAYS as usize);
    const ROUNDS: u32 = 40;
    for i in 0..ROUNDS {
        for (k, &src) in sharing.iter().enumerate() {
            let f = Udp::new(src, 40000 + k as u16, SERVER, 51820);
            assert_eq!(run(&filter, &f.c2s(&wireguard_initiation(i))), XDP_DROP);
        }
    }
    // The bucket is full of live sources: the newcomer takes the way whose window is oldest.
    let late = Udp::new(newcomer[0], 40999, SERVER, 51820);
    assert_eq!(run(&filter, &late.c2s(&wireguard_initiation(7))), XDP_DROP);
    let evs = events(&mut ring);
    let of = |a: Ipv4Addr| {
        evs.iter()
            .filter(|e| e.src[..4] == a.octets() && e.src[4..].iter().all(|&b| b == 0))
            .count() as u64
    };
    // Limited: some of each source's drops were suppressed, whatever the clock did (the
    // allowance is per one-second window; a source that reset another's allowance on every
    // event was reported for every drop).
    let allowance = DEFAULT_EVENTS_PER_SOURCE_PER_SEC as u64;
    for &src in sharing {
        let n = of(src);
        assert!(
            n >= 1 && n < ROUNDS as u64,
            "{src}: {n} events for {ROUNDS} drops, sharing slot {target} with {} others \
             (allowance {allowance} a second)",
            sharing.len() - 1
        );
    }
    assert_eq!(
        of(newcomer[0]),
        1,
        "a source arriving at a full bucket is still reported"
    );
}

/// A decoy cannot make another protocol's handshake a follow-up: an OpenVPN reset sent first
/// on a 5-tuple leaves a pending OpenVPN flow there; an IKE_SA_INIT on that 5-tuple whose
/// SPI starts like an OpenVPN opcode (0x2d: P_ACK_V1, a byte the initiator chooses) was
/// taken for that flow's follow-up and passed. A pending flow now claims only its own
/// session's packets; the SA_INIT is classified and dropped as on any 5-tuple.
#[test]
fn a_decoys_pending_openvpn_flow_does_not_swallow_an_ike_handshake() {
    let filter = load();
    let f = Udp::new(Ipv4Addr::new(10, 14, 9, 9), 41031, SERVER, 51820);
    let spi = 0x2d6b_69bb_25ff_27af;
    expect(
        &filter,
        "the SA_INIT on a fresh 5-tuple",
        &f.c2s(&ikev2_sa_init(spi, 352)),
        XDP_DROP,
        Some((Protocol::Ike, Verdict::Dropped)),
    );
    let g = Udp::new(Ipv4Addr::new(10, 14, 9, 10), 41031, SERVER, 51820);
    expect(
        &filter,
        "the decoy: an OpenVPN client reset",
        &g.c2s(&openvpn_client_reset(
            0x5eed_dec0_1111_2222,
            OvpnWrap::Plain,
        )),
        XDP_PASS,
        Some((OVPN, Verdict::Pending)),
    );
    expect(
        &filter,
        "the SA_INIT after the decoy, on the decoy's 5-tuple",
        &g.c2s(&ikev2_sa_init(spi, 352)),
        XDP_DROP,
        Some((Protocol::Ike, Verdict::Dropped)),
    );
}
