//! The false-positive corpus: ordinary traffic (DNS, QUIC, TLS, STUN, WebRTC DTLS, RTP, NTP,
//! fully encrypted UDP, DTLS 1.3), in realistic volumes and on the long-lived 5-tuples where
//! flow state could build up. One definition, two users: `tests/tests/false_positives.rs`
//! asserts that none of it is dropped, and `cargo xtask accuracy` (the `vpn-filter-accuracy`
//! binary) measures how much of it each protocol's rules flag when every protocol is in
//! monitor mode.
//!
//! Every generator has a fixed seed, so a group is the same frames on every run and machine.
//! Groups are built one generator at a time ([`GENERATORS`]): the whole corpus at once would
//! hold several hundred megabytes of frames.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::packet::*;

/// Reproducible pseudo-random numbers from a seed (the tests' one generator,
/// [`crate::rng`]).
pub struct Rng(pub rand_pcg::Pcg64);

impl Rng {
    pub fn seeded(seed: u64) -> Rng {
        Rng(crate::rng::seeded(seed))
    }

    #[expect(
        clippy::should_implement_trait,
        reason = "the name every generator of the tests uses; an endless Iterator would be no clearer"
    )]
    pub fn next(&mut self) -> u64 {
        crate::rng::next_u64(&mut self.0)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below((hi - lo) as u64) as usize
    }

    pub fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    pub fn bytes_in(&mut self, lo: usize, hi: usize) -> Vec<u8> {
        let n = self.range(lo, hi);
        self.bytes(n)
    }

    pub fn v4(&mut self) -> Ipv4Addr {
        Ipv4Addr::from((self.next() as u32 & 0x00ff_ffff) | 0x0a00_0000)
    }

    pub fn v6(&mut self) -> Ipv6Addr {
        Ipv6Addr::from((0x2001_0db8u128 << 96) | (self.next() as u128))
    }

    pub fn ephemeral(&mut self) -> u16 {
        32768 + self.below(28232) as u16
    }
}

/// One kind of ordinary traffic, in capture order.
pub struct Group {
    /// What it is, as the tests and the accuracy report name it.
    pub name: String,
    pub frames: Vec<Vec<u8>>,
}

impl Group {
    fn new(name: impl Into<String>, frames: Vec<Vec<u8>>) -> Group {
        Group {
            name: name.into(),
            frames,
        }
    }
}

/// A generator of corpus groups.
pub type Generator = fn() -> Vec<Group>;

/// Every generator of the corpus, by its function's name; each returns one or more groups (a generator that
/// builds several connections from one seed returns one group per connection).
pub const GENERATORS: &[(&str, Generator)] = &[
    ("dns_one_port_per_query", dns_one_port_per_query),
    ("dns_server_to_server", dns_server_to_server),
    ("quic_long_headers", quic_long_headers),
    ("quic_short_headers", quic_short_headers),
    ("tls_http_ssh", tls_http_ssh),
    ("stun_webrtc_dtls", stun_webrtc_dtls),
    ("rtp_ntp", rtp_ntp),
    ("encrypted_udp", encrypted_udp),
    ("dtls13_connection_ids", dtls13_connection_ids),
];

pub const NAMES: [&str; 8] = [
    "example.com",
    "www.debian.org",
    "a.root-servers.net",
    "mail.google.com",
    "cdn.jsdelivr.net",
    "x.y",
    "very-long-label-for-a-dns-name-used-in-a-test.subdomain.example.org",
    "_sip._udp.voip.example.net",
];

pub fn endpoints(rng: &mut Rng, v6: bool) -> (IpAddr, IpAddr) {
    if v6 {
        (rng.v6().into(), rng.v6().into())
    } else {
        (rng.v4().into(), rng.v4().into())
    }
}

/// A stub resolver: a fresh source port per query. Every 16-bit id, so every first byte and
/// every WireGuard/OpenVPN-looking head, in both flag variants (RD + EDNS, and the RD=0
/// queries recursive resolvers send to authoritative servers).
pub fn dns_one_port_per_query() -> Vec<Group> {
    let mut rng = Rng::seeded(0xd25);
    let mut frames = Vec::new();
    for id in 0..=u16::MAX {
        let v6 = id % 2 == 1;
        let (client, server) = endpoints(&mut rng, v6);
        let port = rng.ephemeral();
        let name = NAMES[(id % 8) as usize];
        let q = if id % 3 == 0 {
            dns_query_plain(id, name)
        } else {
            dns_query(id, name)
        };
        let a = dns_answer(
            id,
            name,
            &[
                Ipv4Addr::new(93, 184, 215, 14),
                Ipv4Addr::new(93, 184, 215, 15),
            ],
        );
        frames.push(
            Frame::eth()
                .ip(client, server)
                .udp(port, 53)
                .payload(&q)
                .build(),
        );
        frames.push(
            Frame::eth()
                .ip(server, client)
                .udp(53, port)
                .payload(&a)
                .build(),
        );
    }
    vec![Group::new("dns, one port per query", frames)]
}

/// Server-to-server (53 <-> 53) or a forwarder with a fixed port: one long-lived 5-tuple
/// whose first byte (the id) is random per message and whose bytes 1..9 (flags, counts)
/// barely change. Queries are pipelined: answers come back out of order. IPv4, then IPv6.
pub fn dns_server_to_server() -> Vec<Group> {
    let mut rng = Rng::seeded(0xd26);
    let mut groups = Vec::new();
    for v6 in [false, true] {
        let (client, server) = endpoints(&mut rng, v6);
        let mut frames = Vec::new();
        let mut outstanding: Vec<(u16, &str)> = Vec::new();
        for i in 0..30_000 {
            let id = rng.next() as u16;
            let name = NAMES[rng.below(8) as usize];
            let q = if i % 2 == 0 {
                dns_query_plain(id, name)
            } else {
                dns_query(id, name)
            };
            frames.push(
                Frame::eth()
                    .ip(client, server)
                    .udp(53, 53)
                    .payload(&q)
                    .build(),
            );
            outstanding.push((id, name));
            if outstanding.len() > 4 || rng.chance(2) {
                let k = rng.below(outstanding.len() as u64) as usize;
                let (id, name) = outstanding.swap_remove(k);
                let a = dns_answer(id, name, &[Ipv4Addr::new(192, 0, 2, (id & 0xff) as u8)]);
                frames.push(
                    Frame::eth()
                        .ip(server, client)
                        .udp(53, 53)
                        .payload(&a)
                        .build(),
                );
            }
        }
        groups.push(Group::new(
            if v6 {
                "dns 53<->53 over ipv6"
            } else {
                "dns 53<->53 over ipv4"
            },
            frames,
        ));
    }
    groups
}

/// QUIC Initial and Handshake long headers, a new connection each.
pub fn quic_long_headers() -> Vec<Group> {
    let mut rng = Rng::seeded(0x9c1);
    let mut frames = Vec::new();
    for i in 0..5_000 {
        let (client, server) = endpoints(&mut rng, i % 2 == 0);
        let port = rng.ephemeral();
        let dcid = rng.bytes(8);
        let scid = rng.bytes(if i % 3 == 0 { 0 } else { 8 });
        frames.push(
            Frame::eth()
                .ip(client, server)
                .udp(port, 443)
                .payload(&quic_initial(&dcid, &scid, 1200 + (i % 150)))
                .build(),
        );
        let mut reply = quic_initial(&scid, &rng.bytes(8), rng.range(100, 1200));
        reply[0] = 0xc0 | (rng.next() as u8 & 0x3f); // Initial/0-RTT/Handshake/Retry, any bits
        frames.push(
            Frame::eth()
                .ip(server, client)
                .udp(443, port)
                .payload(&reply)
                .build(),
        );
    }
    vec![Group::new("quic long headers", frames)]
}

/// One QUIC connection after the handshake: short-header packets both ways on one 5-tuple.
/// The first byte is 0x40 (fixed bit) | spin bit | five bits masked by header protection, so
/// it looks like every OpenVPN opcode from 8 to 15 with every key id; the destination
/// connection id (`client_cid`/`server_cid` bytes) follows, constant for the connection.
pub fn quic_connection(
    rng: &mut Rng,
    v6: bool,
    client_cid: usize,
    server_cid: usize,
    packets: usize,
) -> Vec<Vec<u8>> {
    let (client, server) = endpoints(rng, v6);
    let port = rng.ephemeral();
    let to_server = rng.bytes(server_cid);
    let to_client = rng.bytes(client_cid);
    let mut frames = Vec::new();
    for _ in 0..packets {
        let from_client = rng.chance(2);
        let first = 0x40 | (rng.next() as u8 & 0x3f);
        // ACK-only packets, mid-size, and full-size.
        let len = match rng.below(3) {
            0 => rng.range(25, 80),
            1 => rng.range(80, 1200),
            _ => rng.range(1200, 1351),
        };
        let seed = rng.next();
        if from_client {
            let p = quic_short(first, &to_server, len.max(1 + server_cid + 16), seed);
            frames.push(
                Frame::eth()
                    .ip(client, server)
                    .udp(port, 443)
                    .payload(&p)
                    .build(),
            );
        } else {
            let p = quic_short(first, &to_client, len.max(1 + client_cid + 16), seed);
            frames.push(
                Frame::eth()
                    .ip(server, client)
                    .udp(443, port)
                    .payload(&p)
                    .build(),
            );
        }
    }
    frames
}

/// HTTP/3: connection ids of 0 (common for clients), 8 (common for servers), 16 and 20
/// bytes; long connections, one group each.
pub fn quic_short_headers() -> Vec<Group> {
    let mut rng = Rng::seeded(0x9c2);
    [(0, 8), (8, 8), (0, 16), (20, 20), (4, 8)]
        .into_iter()
        .map(|(client_cid, server_cid)| {
            let frames = quic_connection(
                &mut rng,
                client_cid % 8 == 0,
                client_cid,
                server_cid,
                40_000,
            );
            Group::new(
                format!("quic short headers, cids {client_cid}/{server_cid}"),
                frames,
            )
        })
        .collect()
}

/// TLS on TCP (443 and VPN ports), HTTP and SSH banners.
pub fn tls_http_ssh() -> Vec<Group> {
    let mut rng = Rng::seeded(0x715);
    let mut frames = Vec::new();
    let hosts = [
        "example.com",
        "www.google.com",
        "vpn.example.net",
        "openvpn.net",
        "a.b",
    ];
    for i in 0..5_000 {
        let (client, server) = endpoints(&mut rng, i % 2 == 0);
        let port = rng.ephemeral();
        let dport = [443u16, 8443, 1194, 1723, 4500][i % 5];
        let hello = tls_client_hello(hosts[i % hosts.len()]);
        // The ClientHello is the client's first payload (ISN + 1), as the stream-head rules
        // (fully_encrypted, tls_sni) see it; one in ten rides in the SYN (TCP Fast Open).
        let isn = rng.next() as u32;
        let fast_open = i % 10 == 9;
        frames.push(
            Frame::eth()
                .ip(client, server)
                .tcp(port, dport)
                .tcp_syn_options()
                .tcp_flags(TCP_SYN)
                .tcp_seq(isn, 0)
                .payload(if fast_open { &hello[..] } else { &[] })
                .build(),
        );
        if !fast_open {
            frames.push(
                Frame::eth()
                    .ip(client, server)
                    .tcp(port, dport)
                    .tcp_seq(isn.wrapping_add(1), 1)
                    .payload(&hello)
                    .build(),
            );
        }
        // Application data records and continuation segments of random bytes.
        let mut record = vec![0x17, 0x03, 0x03];
        let body = rng.bytes_in(20, 1400);
        record.extend_from_slice(&(body.len() as u16).to_be_bytes());
        record.extend_from_slice(&body);
        frames.push(
            Frame::eth()
                .ip(server, client)
                .tcp(dport, port)
                .payload(&record)
                .build(),
        );
        frames.push(
            Frame::eth()
                .ip(server, client)
                .tcp(dport, port)
                .payload(&rng.bytes_in(1, 1448))
                .build(),
        );
    }
    for p in [
        &b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"[..],
        b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n",
        b"\x00\x00\x00\x1c\x0a\x14",
    ] {
        frames.push(
            Frame::eth()
                .ipv4(rng.v4(), rng.v4())
                .tcp(rng.ephemeral(), 80)
                .payload(p)
                .build(),
        );
    }
    vec![
        Group::new("tls, http, ssh", frames),
        browser_client_hellos(),
    ]
}

/// Hosts browsers and apps name in ClientHellos that are no VPN service's: shared fronts of
/// listed providers (cloudflare.com, proton.me) and names that merely end like or contain a
/// listed one.
pub const BROWSER_HOSTS: &[&str] = &[
    "www.google.com",
    "github.com",
    "cloudflare.com",
    "www.cloudflare.com",
    "one.one.one.one",
    "dash.cloudflare.com",
    "proton.me",
    "mail.proton.me",
    "www.wikipedia.org",
    "notwindscribe.com",
    "windscribe.com.example.net",
    "nordvpn-review.example.org",
    "api.github.com",
    "fonts.gstatic.com",
];

/// Browser-like ClientHellos with post-quantum key shares (~1.8 KB) after a SYN, each cut at
/// a 1,448-byte MSS into two segments, the server name in the first or the second (Chrome
/// permutes extensions), one in four after a first segment of 1-5 bytes, one in four first
/// inside the server name; and the server's first answer.
pub fn browser_client_hellos() -> Group {
    let mut rng = Rng::seeded(0xb40);
    let mut frames = Vec::new();
    for i in 0..2_000 {
        let (client, server) = endpoints(&mut rng, i % 2 == 1);
        let port = rng.ephemeral();
        let host = BROWSER_HOSTS[i % BROWSER_HOSTS.len()];
        let hello = tls_client_hello_pq(host, i % 3 != 0, rng.next());
        let isn = rng.next() as u32;
        frames.push(
            Frame::eth()
                .ip(client, server)
                .tcp(port, 443)
                .tcp_syn_options()
                .tcp_flags(TCP_SYN)
                .tcp_seq(isn, 0)
                .build(),
        );
        let mut seq = isn.wrapping_add(1);
        // One in four split first after 1-5 bytes (GoodbyeDPI, zapret): the stream head is
        // reassembled and the walk goes on in the next segment. One in four split first
        // inside the server name (zapret's midsld): the name's first part is carried into the
        // next segment's walk.
        let name = hello
            .windows(host.len())
            .position(|w| w == host.as_bytes())
            .expect("the name is in the hello");
        let split = match i % 4 {
            3 => 1 + i % 5,
            1 => name + 1 + (rng.next() as usize) % (host.len() - 1),
            _ => 0,
        };
        let (lead, rest) = hello.split_at(split);
        let chunks = std::iter::once(lead)
            .filter(|c| !c.is_empty())
            .chain(rest.chunks(1448));
        for chunk in chunks {
            frames.push(
                Frame::eth()
                    .ip(client, server)
                    .tcp(port, 443)
                    .tcp_seq(seq, 1)
                    .payload(chunk)
                    .build(),
            );
            seq = seq.wrapping_add(chunk.len() as u32);
        }
        let mut answer = vec![0x16, 0x03, 0x03];
        let body = rng.bytes_in(90, 1400);
        answer.extend_from_slice(&(body.len() as u16).to_be_bytes());
        answer.extend_from_slice(&body);
        frames.push(
            Frame::eth()
                .ip(server, client)
                .tcp(443, port)
                .payload(&answer)
                .build(),
        );
    }
    Group::new(
        "browser tls, post-quantum ClientHellos in two segments (a quarter split after 1-5 bytes first, a quarter inside the server name)",
        frames,
    )
}

/// STUN binding requests and WebRTC DTLS-SRTP ClientHellos (with and without the cookie,
/// from either side), on STUN, TURN, 443 and high ports.
pub fn stun_webrtc_dtls() -> Vec<Group> {
    let mut rng = Rng::seeded(0x57);
    let mut frames = Vec::new();
    for i in 0..5_000 {
        let (client, server) = endpoints(&mut rng, i % 2 == 0);
        let port = rng.ephemeral();
        let media = [3478u16, 19302, 443, rng.ephemeral(), 10000][i % 5];
        let tid: [u8; 12] = rng.bytes(12).try_into().unwrap();
        frames.push(
            Frame::eth()
                .ip(client, server)
                .udp(port, media)
                .payload(&stun_binding_request(tid))
                .build(),
        );
        // DTLS-SRTP: the ClientHello, then again with the cookie from HelloVerifyRequest; on a
        // high port and on 443 (media servers that listen there).
        for cookie in [0u8, 32] {
            frames.push(
                Frame::eth()
                    .ip(client, server)
                    .udp(port, media)
                    .payload(&webrtc_dtls_client_hello(cookie))
                    .build(),
            );
        }
        // The other side may be the DTLS client too.
        frames.push(
            Frame::eth()
                .ip(server, client)
                .udp(media, port)
                .payload(&webrtc_dtls_client_hello(0))
                .build(),
        );
    }
    vec![Group::new("stun, webrtc dtls", frames)]
}

/// Twenty RTP streams of 2,000 packets (several payload types and sizes), then NTP requests
/// and replies.
pub fn rtp_ntp() -> Vec<Group> {
    let mut rng = Rng::seeded(0x47b);
    let mut frames = Vec::new();
    for stream in 0..20 {
        let (a, b) = endpoints(&mut rng, stream % 2 == 0);
        let (pa, pb) = (rng.ephemeral(), rng.ephemeral());
        let ssrc = rng.next() as u32;
        let pt = [0u8, 8, 9, 96, 111, 120][stream % 6];
        let len = [172usize, 172, 92, 1200, 80, 60][stream % 6];
        for seq in 0..2_000u16 {
            let p = rtp(
                pt,
                seq.wrapping_add(stream as u16 * 977),
                seq as u32 * 160,
                ssrc,
                len,
            );
            frames.push(Frame::eth().ip(a, b).udp(pa, pb).payload(&p).build());
        }
    }
    for i in 0..5_000 {
        let (c, s) = endpoints(&mut rng, i % 2 == 0);
        let port = if i % 2 == 0 { 123 } else { rng.ephemeral() };
        frames.push(
            Frame::eth()
                .ip(c, s)
                .udp(port, 123)
                .payload(&ntp_request())
                .build(),
        );
        let mut reply = ntp_request();
        reply[0] = 0x24;
        reply[1] = 2;
        frames.push(Frame::eth().ip(s, c).udp(123, port).payload(&reply).build());
    }
    vec![Group::new("rtp, ntp", frames)]
}

/// OpenVPN's reset sizes (client and server, every wrap and digest, UDP and TCP framing).
pub const OVPN_SIZES: [usize; 16] = [
    14, 26, 38, 42, 50, 54, 62, 66, 70, 72, 82, 86, 98, 353, 359, 400,
];

/// Fully encrypted protocols (obfuscated proxies, games, VoIP over proprietary crypto): every
/// byte random, on one 5-tuple for a long time, both ways, and half the packets exactly the
/// size of an OpenVPN reset. IPv4, then IPv6.
pub fn encrypted_udp() -> Vec<Group> {
    let mut rng = Rng::seeded(0x6a3e);
    let mut groups = Vec::new();
    for v6 in [false, true] {
        let (a, b) = endpoints(&mut rng, v6);
        let (pa, pb) = (rng.ephemeral(), 27015);
        let mut frames = Vec::new();
        for _ in 0..60_000 {
            let len = if rng.chance(2) {
                OVPN_SIZES[rng.below(16) as usize]
            } else {
                rng.range(14, 1400)
            };
            let p = rng.bytes(len);
            frames.push(if rng.chance(2) {
                Frame::eth().ip(a, b).udp(pa, pb).payload(&p).build()
            } else {
                Frame::eth().ip(b, a).udp(pb, pa).payload(&p).build()
            });
        }
        groups.push(Group::new(
            if v6 {
                "encrypted udp over ipv6"
            } else {
                "encrypted udp over ipv4"
            },
            frames,
        ));
    }
    groups
}

/// RFC 9147 unified header: 001CSLEE, here with C (an 8-byte connection id, constant for the
/// connection), so 0x30..0x3f: OpenVPN's data v1 and client reset v2 opcodes. The sequence
/// number is encrypted. IPv4, then IPv6.
pub fn dtls13_connection_ids() -> Vec<Group> {
    let mut rng = Rng::seeded(0xd713);
    let mut groups = Vec::new();
    for v6 in [false, true] {
        let (a, b) = endpoints(&mut rng, v6);
        let (pa, pb) = (rng.ephemeral(), 4433);
        let (cid_a, cid_b) = (rng.bytes(8), rng.bytes(8));
        let mut frames = Vec::new();
        for _ in 0..40_000 {
            let first = 0x30 | (rng.next() as u8 & 0x0f);
            let len = if rng.chance(2) {
                OVPN_SIZES[rng.below(16) as usize]
            } else {
                rng.range(30, 1300)
            };
            let to_b = rng.chance(2);
            let mut p = vec![first];
            p.extend_from_slice(if to_b { &cid_b } else { &cid_a });
            p.extend_from_slice(&rng.bytes(len - 9));
            frames.push(if to_b {
                Frame::eth().ip(a, b).udp(pa, pb).payload(&p).build()
            } else {
                Frame::eth().ip(b, a).udp(pb, pa).payload(&p).build()
            });
        }
        groups.push(Group::new(
            if v6 {
                "dtls 1.3 with connection ids over ipv6"
            } else {
                "dtls 1.3 with connection ids over ipv4"
            },
            frames,
        ));
    }
    groups
}
