//! Issue 14, item 1: TCP streams, not segments. After the handshake has been seen, a VPN
//! message whose first bytes are split over two segments (after 1, 2, 3 or 7 bytes, or at a
//! random position below 64) is recognised when the segment that completes the bytes the
//! rule needs arrives: earlier segments pass and are counted as `tcp_stream_buffered`, the
//! completing one (the first, if it already holds them: "IKETCP" is 6 bytes) gets the
//! verdict the unsplit segment gets, and retransmissions of a
//! dropped stream's segments are dropped. Segments arriving out of order end the same way.
//! Ordinary streams split the same way pass.
//!
//! The random split positions come from a seeded generator; the seed is printed and can be
//! set with `PARSER_SEED`.

use std::net::IpAddr;

use rand_core::{Rng as _, SeedableRng as _};
use vpn_filter::kernel::Filter;
use vpn_filter_common::{Counter, Protocol, Verdict};
use vpn_filter_tests::{
    judge::{client, expect, load, run, server, Failures, Outcome, XDP_DROP, XDP_PASS},
    mangle::split_tcp,
    packet::*,
};

const CLIENT_ISN: u32 = 0x1000_0000;
const SERVER_ISN: u32 = 0x7000_0000;

fn seed() -> u64 {
    let seed = std::env::var("PARSER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x0014_5e9e);
    eprintln!("PARSER_SEED={seed}");
    seed
}

/// Split positions: the fixed ones and `random` more below 64 (and below `len`).
fn cuts(rng: &mut rand_pcg::Pcg64, len: usize, random: usize) -> Vec<usize> {
    let mut c = vec![1, 2, 3, 7];
    for _ in 0..random {
        c.push(1 + (rng.next_u32() as usize) % (63.min(len - 1)));
    }
    c
}

/// A TCP connection between a client and a server port.
struct Conn {
    c: IpAddr,
    s: IpAddr,
    cport: u16,
    sport: u16,
}

impl Conn {
    fn syn(&self) -> Vec<u8> {
        Frame::eth()
            .ip(self.c, self.s)
            .tcp(self.cport, self.sport)
            .tcp_flags(TCP_SYN)
            .tcp_seq(CLIENT_ISN, 0)
            .tcp_syn_options()
            .build()
    }

    fn syn_ack(&self) -> Vec<u8> {
        Frame::eth()
            .ip(self.s, self.c)
            .tcp(self.sport, self.cport)
            .tcp_flags(TCP_SYN | TCP_ACK)
            .tcp_seq(SERVER_ISN, CLIENT_ISN + 1)
            .tcp_syn_options()
            .build()
    }

    /// The client's first data segment.
    fn client_data(&self, payload: &[u8]) -> Vec<u8> {
        Frame::eth()
            .ip(self.c, self.s)
            .tcp(self.cport, self.sport)
            .tcp_seq(CLIENT_ISN + 1, SERVER_ISN + 1)
            .payload(payload)
            .build()
    }

    /// The server's first data segment (after the client's `client_len` bytes).
    fn server_data(&self, payload: &[u8], client_len: usize) -> Vec<u8> {
        Frame::eth()
            .ip(self.s, self.c)
            .tcp(self.sport, self.cport)
            .tcp_seq(SERVER_ISN + 1, CLIENT_ISN + 1 + client_len as u32)
            .payload(payload)
            .build()
    }

    fn name(&self) -> String {
        format!("{}:{} -> {}", self.c, self.cport, self.sport)
    }
}

/// Runs the handshake; both segments pass and move nothing.
fn handshake(filter: &Filter, failures: &mut Failures, conn: &Conn) {
    let nothing = expect(XDP_PASS, None, &[]);
    failures.check(
        filter,
        &format!("{} SYN", conn.name()),
        &conn.syn(),
        &nothing,
    );
    failures.check(
        filter,
        &format!("{} SYN-ACK", conn.name()),
        &conn.syn_ack(),
        &nothing,
    );
}

fn verdict(p: Protocol, v: Verdict) -> Outcome {
    let action = if v == Verdict::Dropped {
        XDP_DROP
    } else {
        XDP_PASS
    };
    expect(action, Some((p, v)), &[])
}

/// `segment` split in two at `cut`, in order or not. In order, the first piece passes
/// buffered unless it already holds the `needs` bytes the rule reads (then it gets
/// `complete`, and so does the second, on the flow that verdict left); out of order, the
/// later piece passes and the first gets `complete`. Returns the two pieces in stream order.
#[expect(clippy::too_many_arguments, reason = "one per aspect of the split")]
fn split_in_two(
    filter: &Filter,
    failures: &mut Failures,
    what: &str,
    segment: &[u8],
    cut: usize,
    needs: usize,
    in_order: bool,
    complete: &Outcome,
) -> Vec<Vec<u8>> {
    let pieces = split_tcp(segment, &[cut]);
    let (first, second) = if in_order {
        (&pieces[0], &pieces[1])
    } else {
        (&pieces[1], &pieces[0])
    };
    let order = if in_order { "in order" } else { "out of order" };
    let got = run(filter, first);
    if in_order && cut >= needs {
        failures.require(got == *complete, || {
            format!(
                "{what} split after {cut} ({order}): first piece, holding the {needs} bytes the \
                 rule reads: got {got}, want {complete}"
            )
        });
    } else if in_order {
        let buffered = expect(XDP_PASS, None, &[Counter::TcpStreamBuffered]);
        failures.require(got == buffered, || {
            format!("{what} split after {cut} ({order}): first piece: got {got}, want {buffered}")
        });
    } else {
        // Where the stream's start is missing, buffering is the kernel's choice; it must pass.
        failures.require(got.action == XDP_PASS && got.verdicts.is_empty(), || {
            format!("{what} split after {cut} ({order}): later piece first: got {got}, want a pass")
        });
    }
    failures.check(
        filter,
        &format!("{what} split after {cut} ({order}): completing piece"),
        second,
        complete,
    );
    pieces
}

/// A client's first message split in two on a fresh connection, for each cut, in order and
/// out of order, from an unregistered client; then retransmissions of both pieces.
fn client_message_split(
    protocol: Protocol,
    dport: u16,
    message: &[u8],
    needs: usize,
    port: u16,
    random_cuts: usize,
) {
    let filter = load();
    let mut rng = rand_pcg::Pcg64::seed_from_u64(seed());
    let mut failures = Failures::default();
    let mut cport = port;
    for v6 in [false, true] {
        for cut in cuts(&mut rng, message.len(), random_cuts) {
            for in_order in [true, false] {
                cport += 1;
                let conn = Conn {
                    c: client(v6, false),
                    s: server(v6),
                    cport,
                    sport: dport,
                };
                handshake(&filter, &mut failures, &conn);
                let what = format!("{protocol:?} from {}", conn.name());
                let dropped = verdict(protocol, Verdict::Dropped);
                let pieces = split_in_two(
                    &filter,
                    &mut failures,
                    &what,
                    &conn.client_data(message),
                    cut,
                    needs,
                    in_order,
                    &dropped,
                );
                for (i, piece) in pieces.iter().enumerate() {
                    failures.check(
                        &filter,
                        &format!("{what} split after {cut}: retransmitted piece {}", i + 1),
                        piece,
                        &dropped,
                    );
                }
            }
        }
    }
    failures.assert_none();
}

/// The same from a registered client: every segment passes, nothing is dropped.
fn registered_client_message_split(dport: u16, message: &[u8], port: u16) {
    let filter = load();
    let mut failures = Failures::default();
    for v6 in [false, true] {
        for (i, cut) in [1usize, 2, 3, 7].into_iter().enumerate() {
            let conn = Conn {
                c: client(v6, true),
                s: server(v6),
                cport: port + 8 * v6 as u16 + i as u16,
                sport: dport,
            };
            handshake(&filter, &mut failures, &conn);
            for piece in split_tcp(&conn.client_data(message), &[cut]) {
                let got = run(&filter, &piece);
                failures.require(
                    got.action == XDP_PASS
                        && got.verdicts.iter().all(|(_, v, _)| *v == Verdict::Allowed),
                    || format!("registered {} split after {cut}: got {got}", conn.name()),
                );
            }
        }
    }
    failures.assert_none();
}

fn pptp() -> Vec<u8> {
    pptp_sccrq()
}

fn iketcp() -> Vec<u8> {
    iketcp_stream_start(&ikev2_sa_init(0x7c9a_11e5_0000_0001, 352))
}

#[test]
fn a_pptp_request_split_over_two_segments_is_dropped_when_completed() {
    // The rule reads the whole message (its length field must fit what is there).
    client_message_split(Protocol::Pptp, 1723, &pptp(), pptp().len(), 20000, 8);
}

#[test]
fn an_ike_over_tcp_stream_start_split_over_two_segments_is_dropped_when_completed() {
    // The rule reads the 6-byte stream prefix "IKETCP" (RFC 8229).
    client_message_split(Protocol::Ike, 4500, &iketcp(), 6, 21000, 8);
}

#[test]
fn a_registered_client_splitting_pptp_or_iketcp_passes() {
    registered_client_message_split(1723, &pptp(), 22000);
    registered_client_message_split(4500, &iketcp(), 22100);
}

/// The OpenVPN-over-TCP hard reset exchange with both resets split at `cut`: the client's
/// reset is pending when completed (as unsplit), the server's completes the confirmation
/// and is dropped, and retransmissions of its pieces are dropped.
#[test]
fn an_openvpn_tcp_hard_reset_exchange_split_over_segments_is_dropped_when_completed() {
    let filter = load();
    let mut rng = rand_pcg::Pcg64::seed_from_u64(seed());
    let mut failures = Failures::default();
    let mut cport = 23000u16;
    for v6 in [false, true] {
        for wrap in [OvpnWrap::Plain, TLS_AUTH_SHA1, OvpnWrap::TlsCrypt] {
            let reset_len = tcp_framed(&openvpn_client_reset(1, wrap)).len();
            for cut in cuts(&mut rng, reset_len, 4) {
                for in_order in [true, false] {
                    cport += 1;
                    let conn = Conn {
                        c: client(v6, false),
                        s: server(v6),
                        cport,
                        sport: 1194,
                    };
                    let cs = 0x1f2b_1e4e_edf3_0000 ^ cport as u64;
                    let ss = 0xa957_88e6_055f_0000 ^ cport as u64;
                    let reset = tcp_framed(&openvpn_client_reset(cs, wrap));
                    let reply = tcp_framed(&openvpn_server_reset(ss, cs, wrap));
                    handshake(&filter, &mut failures, &conn);
                    let what = format!("openvpn {wrap:?} {}", conn.name());
                    split_in_two(
                        &filter,
                        &mut failures,
                        &format!("{what}: client reset"),
                        &conn.client_data(&reset),
                        cut,
                        reset.len(),
                        in_order,
                        &verdict(Protocol::OpenVpn, Verdict::Pending),
                    );
                    let dropped = verdict(Protocol::OpenVpn, Verdict::Dropped);
                    let pieces = split_in_two(
                        &filter,
                        &mut failures,
                        &format!("{what}: server reset"),
                        &conn.server_data(&reply, reset.len()),
                        cut,
                        reply.len(),
                        in_order,
                        &dropped,
                    );
                    for (i, piece) in pieces.iter().enumerate() {
                        failures.check(
                            &filter,
                            &format!("{what}: server reset retransmitted piece {}", i + 1),
                            piece,
                            &dropped,
                        );
                    }
                }
            }
        }
    }
    failures.assert_none();
}

#[test]
fn unsplit_vpn_stream_starts_get_the_verdicts_the_split_tests_expect() {
    // The control: the same messages in one segment each after the handshake.
    let filter = load();
    let mut failures = Failures::default();
    for v6 in [false, true] {
        let conn = |cport: u16, sport: u16| Conn {
            c: client(v6, false),
            s: server(v6),
            cport,
            sport,
        };
        let base = 24000 + 16 * v6 as u16;
        for (p, sport, message) in [
            (Protocol::Pptp, 1723, pptp()),
            (Protocol::Ike, 4500, iketcp()),
        ] {
            let conn = conn(base + sport % 7, sport);
            handshake(&filter, &mut failures, &conn);
            failures.check(
                &filter,
                &format!("{p:?} from {}", conn.name()),
                &conn.client_data(&message),
                &verdict(p, Verdict::Dropped),
            );
        }
        let conn = conn(base + 9, 1194);
        let cs = 0x1f2b_1e4e_edf3_0000 ^ conn.cport as u64;
        let reset = tcp_framed(&openvpn_client_reset(cs, TLS_AUTH_SHA1));
        let reply = tcp_framed(&openvpn_server_reset(
            0xa957_88e6_055f_0001,
            cs,
            TLS_AUTH_SHA1,
        ));
        handshake(&filter, &mut failures, &conn);
        failures.check(
            &filter,
            "openvpn client reset",
            &conn.client_data(&reset),
            &verdict(Protocol::OpenVpn, Verdict::Pending),
        );
        failures.check(
            &filter,
            "openvpn server reset",
            &conn.server_data(&reply, reset.len()),
            &verdict(Protocol::OpenVpn, Verdict::Dropped),
        );
    }
    failures.assert_none();
}

#[test]
fn ordinary_streams_split_after_one_to_seven_bytes_pass() {
    let filter = load();
    let mut failures = Failures::default();
    let http = b"GET /index.html HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/8.5.0\r\n\r\n";
    let ssh = b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n";
    let streams: [(&str, u16, Vec<u8>); 4] = [
        ("http get", 80, http.to_vec()),
        ("tls client hello", 443, tls_client_hello("example.com")),
        ("ssh banner", 22, ssh.to_vec()),
        ("http get on 1194", 1194, http.to_vec()),
    ];
    let mut cport = 25000;
    for v6 in [false, true] {
        for (name, sport, message) in &streams {
            for cut in 1..=7 {
                cport += 1;
                let conn = Conn {
                    c: client(v6, false),
                    s: server(v6),
                    cport,
                    sport: *sport,
                };
                handshake(&filter, &mut failures, &conn);
                for (i, piece) in split_tcp(&conn.client_data(message), &[cut])
                    .iter()
                    .enumerate()
                {
                    let got = run(&filter, piece);
                    failures.require(got.action == XDP_PASS && got.verdicts.is_empty(), || {
                        format!(
                            "{name} from {} split after {cut}, piece {}: got {got}",
                            conn.name(),
                            i + 1
                        )
                    });
                }
            }
        }
    }
    failures.assert_none();
}

/// A stream whose head was reassembled and found ordinary is forgotten (its slot freed, and
/// the slot's bit in `TCP_HEAD_LIVE` cleared, so its later segments skip the slot), and the
/// same 4-tuple opened again is followed again: the next SYN arms the slot and its bit, and
/// a PPTP request split over two segments is dropped when completed. Both directions are
/// forgotten and re-armed: the client's after its split head, the server's after its first
/// payload (one segment holding the whole head).
#[test]
fn a_reused_four_tuple_is_followed_again_after_its_stream_was_forgotten() {
    let mut failures = Failures::default();
    // Longer than the classifier's 96-byte window, so that the head completes.
    let ordinary =
        b"GET /a/rather/long/path/to/make/the/request/longer/than/the/window HTTP/1.1\r\n\
                     Host: example.com\r\nAccept: */*\r\n\r\n";
    assert!(ordinary.len() > 96);
    let reply = [b'x'; 200];
    for v6 in [false, true] {
        // A program of its own per family: the slots left live at the end are this family's.
        let filter = load();
        let conn = Conn {
            c: client(v6, false),
            s: server(v6),
            cport: 26000 + v6 as u16,
            sport: 1723,
        };
        let nothing = expect(XDP_PASS, None, &[]);
        for round in 0..3 {
            let what = format!("{} round {round}", conn.name());
            handshake(&filter, &mut failures, &conn);
            let armed = live_bits(&filter);
            failures.require(armed == 2, || {
                format!("{what}: after the handshake {armed} slots live, want 2 (one per side)")
            });
            // The client's head split after 3 bytes: buffered, then completed and ordinary.
            let pieces = split_tcp(&conn.client_data(ordinary), &[3]);
            failures.check(
                &filter,
                &format!("{what}: ordinary head, first piece"),
                &pieces[0],
                &expect(XDP_PASS, None, &[Counter::TcpStreamBuffered]),
            );
            failures.check(
                &filter,
                &format!("{what}: ordinary head, completing piece"),
                &pieces[1],
                &nothing,
            );
            // The server's first payload, whole: its slot is released.
            failures.check(
                &filter,
                &format!("{what}: server's first payload"),
                &conn.server_data(&reply, ordinary.len()),
                &nothing,
            );
            let left = live_bits(&filter);
            failures.require(left == 0, || {
                format!("{what}: both heads judged, {left} slots still live, want 0")
            });
        }
        // The same 4-tuple again, now carrying PPTP split after 3 bytes.
        handshake(&filter, &mut failures, &conn);
        let what = format!("{} reopened", conn.name());
        let pptp = pptp();
        split_in_two(
            &filter,
            &mut failures,
            &what,
            &conn.client_data(&pptp),
            3,
            pptp.len(),
            true,
            &verdict(Protocol::Pptp, Verdict::Dropped),
        );
    }
    failures.assert_none();
}

/// Slots whose bit is set in `TCP_HEAD_LIVE`.
fn live_bits(filter: &Filter) -> u32 {
    let map = aya::maps::Array::<_, u64>::try_from(
        filter.map(vpn_filter_common::maps::TCP_HEAD_LIVE).unwrap(),
    )
    .unwrap();
    map.iter().map(|w| w.unwrap().count_ones()).sum()
}
