//! `make-consumer-fixtures`: writes the SYNTHESIZED captures of `tests/fixtures/consumer/`
//! (issue 15, "The VPNs people actually use"). The recorded ones (tinc, Mullvad UDP-over-TCP)
//! come from `scripts/record-fixtures.sh`; `tests/fixtures/consumer/MANIFEST.tsv` says which is
//! which and where each fact comes from.
//!
//!     cargo run -p vpn-filter-tests --bin make-consumer-fixtures [-- OUT_DIR]
//!
//! Deterministic: every random byte comes from the tests' seeded generator (`rng::seeded`,
//! one fixed seed per file), timestamps are copied from the real captures or derived from a
//! fixed start, so running it twice writes identical files.
//!
//! Two kinds of output:
//!
//! - Real captures rewritten (WARP, padded WireGuard, Mullvad LWO, AmneziaWG 1.x/2.0, XOR-ed
//!   OpenVPN): each frame of `tests/fixtures/<real>.pcap` keeps its Ethernet/IP/TCP headers,
//!   timestamps and direction; only the UDP/TCP payload is transformed, and lengths and
//!   checksums are recomputed (`with_payload`). Payload sizes only change where the
//!   obfuscation changes them (padding, junk packets).
//! - Conversations built from scratch with `packet::Frame` (Lightway UDP, SoftEther HTTP,
//!   FortiGate DTLS): a TCP or UDP flow between client 10.200.0.2 and server 10.200.0.1 with
//!   MACs 02:00:00:00:00:02 / 02:00:00:00:00:01; TCP with a three-way handshake, sequence
//!   numbers, a bare ACK where the receiver has nothing to send, and a FIN exchange.
//!
//! Sources of the wire facts (read, not copied): mullvadvpn-app
//! `tunnel-obfuscation/src/lwo.rs`; amneziawg-go `device/send.go`, `device/magic-header.go`;
//! lightway-core `src/wire.rs`; openconnect `fortinet.c`; the Tunnelblick OpenVPN "xorpatch"
//! (`buffer_mask`, `buffer_xorptrpos`); sing-box `client_bind.go` for WARP's reserved bytes;
//! summarised in /work/notes/consumer-facts.md and docs' signatures list.

use std::{
    fs::File,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use pcap_file::{
    pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter},
    DataLink, Endianness, TsResolution,
};
use rand_core::Rng as _;
use rand_pcg::Pcg64;
use vpn_filter_tests::{
    packet::{checksum, Frame, IPPROTO_TCP, IPPROTO_UDP, TCP_ACK, TCP_FIN, TCP_PSH, TCP_SYN},
    rng,
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

type Pkt = (Duration, Vec<u8>);

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let out = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("consumer"));
    std::fs::create_dir_all(&out).expect("output directory");
    let w = |name: &str, pkts: Vec<Pkt>| write(&out.join(name), &pkts);

    for port in [2408, 4500, 500] {
        w(&format!("warp-{port}.pcap"), warp(&root, port));
    }
    w("wireguard-padded-tunnelbear.pcap", wg_padded(&root, None));
    w(
        "wireguard-padded-random.pcap",
        wg_padded(&root, Some(1..=256)),
    );
    w("mullvad-lwo-v1.pcap", lwo_v1(&root));
    w("mullvad-lwo-v2.pcap", lwo_v2(&root));
    w("amneziawg-1.pcap", amneziawg(&root, false));
    w("amneziawg-2.pcap", amneziawg(&root, true));
    w("lightway-udp.pcap", lightway());
    for name in [
        "openvpn-udp-plain",
        "openvpn-udp-tls-auth",
        "openvpn-udp-tls-crypt",
        "openvpn-udp-tls-crypt-v2",
        "openvpn-udp6-tls-auth",
        "openvpn-tcp-tls-auth",
    ] {
        w(
            &format!("{}.pcap", name.replace("openvpn-", "openvpn-xormask-")),
            openvpn_xor(&root, name, Scramble::XorMask),
        );
    }
    w(
        "openvpn-xorptrpos-udp-tls-auth.pcap",
        openvpn_xor(&root, "openvpn-udp-tls-auth", Scramble::XorPtrPos),
    );
    w("softether-http.pcap", softether_http());
    w("forticlient-dtls.pcap", forticlient_dtls());
}

// ---------------------------------------------------------------------------------------
// pcap in and out
// ---------------------------------------------------------------------------------------

fn read(root: &Path, name: &str) -> Vec<Pkt> {
    let path = root.join(format!("{name}.pcap"));
    let file = File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reader = PcapReader::new(file).expect("a pcap");
    assert_eq!(reader.header().datalink, DataLink::ETHERNET);
    let mut out = Vec::new();
    while let Some(p) = reader.next_packet() {
        let p = p.expect("a packet");
        out.push((p.timestamp, p.data.into_owned()));
    }
    out
}

fn write(path: &Path, pkts: &[Pkt]) {
    let header = PcapHeader {
        version_major: 2,
        version_minor: 4,
        ts_correction: 0,
        ts_accuracy: 0,
        snaplen: 262144,
        datalink: DataLink::ETHERNET,
        ts_resolution: TsResolution::MicroSecond,
        endianness: Endianness::Little,
    };
    let file = File::create(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut writer = PcapWriter::with_header(file, header).expect("pcap header");
    for (ts, frame) in pkts {
        writer
            .write_packet(&PcapPacket::new(*ts, frame.len() as u32, frame))
            .expect("write");
    }
    println!("{}: {} frames", path.display(), pkts.len());
}

// ---------------------------------------------------------------------------------------
// Frame surgery on real captures (untagged Ethernet, IPv4 or IPv6 without extension headers)
// ---------------------------------------------------------------------------------------

struct Layout {
    v6: bool,
    l4: usize,
    payload: usize,
    proto: u8,
}

fn layout(f: &[u8]) -> Layout {
    let ethertype = u16::from_be_bytes([f[12], f[13]]);
    let (v6, l4, proto) = match ethertype {
        0x0800 => (false, 14 + usize::from(f[14] & 0x0f) * 4, f[23]),
        0x86dd => (true, 14 + 40, f[20]),
        other => panic!("ethertype {other:#06x}"),
    };
    let payload = match proto {
        IPPROTO_UDP => l4 + 8,
        IPPROTO_TCP => l4 + usize::from(f[l4 + 12] >> 4) * 4,
        other => panic!("IP protocol {other}"),
    };
    Layout {
        v6,
        l4,
        payload,
        proto,
    }
}

fn payload(f: &[u8]) -> &[u8] {
    &f[layout(f).payload..]
}

/// True for a frame sent by the client (10.200.0.2 or fd00:200::2).
fn from_client(f: &[u8]) -> bool {
    if layout(f).v6 {
        f[14 + 8..14 + 24]
            == "fd00:200::2"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
    } else {
        f[26..30] == CLIENT.octets()
    }
}

/// `f` with its transport payload replaced by `new`; IP and UDP lengths and the IPv4, UDP and
/// TCP checksums recomputed.
fn with_payload(f: &[u8], new: &[u8]) -> Vec<u8> {
    let l = layout(f);
    let mut out = f[..l.payload].to_vec();
    out.extend_from_slice(new);
    let l4_len = out.len() - l.l4;
    if l.v6 {
        out[18..20].copy_from_slice(&(l4_len as u16).to_be_bytes());
    } else {
        let ihl = l.l4 - 14;
        out[16..18].copy_from_slice(&((ihl + l4_len) as u16).to_be_bytes());
        out[24..26].copy_from_slice(&[0, 0]);
        let c = checksum(&[&out[14..l.l4]]);
        out[24..26].copy_from_slice(&c.to_be_bytes());
    }
    let csum_at = match l.proto {
        IPPROTO_UDP => {
            out[l.l4 + 4..l.l4 + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            l.l4 + 6
        }
        _ => l.l4 + 16,
    };
    out[csum_at..csum_at + 2].copy_from_slice(&[0, 0]);
    let mut pseudo = Vec::new();
    if l.v6 {
        pseudo.extend_from_slice(&out[22..54]);
        pseudo.extend_from_slice(&(l4_len as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, l.proto]);
    } else {
        pseudo.extend_from_slice(&out[26..34]);
        pseudo.extend_from_slice(&[0, l.proto]);
        pseudo.extend_from_slice(&(l4_len as u16).to_be_bytes());
    }
    let mut c = checksum(&[&pseudo, &out[l.l4..]]);
    if c == 0 && l.proto == IPPROTO_UDP {
        c = 0xffff;
    }
    out[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
    out
}

/// Replaces the server's port `from` with `to` (source or destination), checksums fixed.
fn remap_port(f: &[u8], from: u16, to: u16) -> Vec<u8> {
    let l = layout(f);
    let mut out = f.to_vec();
    for at in [l.l4, l.l4 + 2] {
        if u16::from_be_bytes([out[at], out[at + 1]]) == from {
            out[at..at + 2].copy_from_slice(&to.to_be_bytes());
        }
    }
    let p = payload(&out).to_vec();
    with_payload(&out, &p)
}

/// Every frame of `pkts` with a payload passed through `f(from_client, payload)`, which
/// returns the payloads to send in its place (several: extra datagrams sent just before, a
/// microsecond apart). Frames without payload (TCP handshake, bare ACKs) are kept as they are.
fn rewrite(pkts: Vec<Pkt>, mut f: impl FnMut(bool, &[u8]) -> Vec<Vec<u8>>) -> Vec<Pkt> {
    let mut out = Vec::new();
    for (ts, frame) in pkts {
        let p = payload(&frame);
        if p.is_empty() {
            out.push((ts, frame));
            continue;
        }
        let news = f(from_client(&frame), p);
        let n = news.len() as u32;
        for (i, new) in news.iter().enumerate() {
            let t = ts.saturating_sub(Duration::from_micros(u64::from(n - 1 - i as u32)));
            out.push((t, with_payload(&frame, new)));
        }
    }
    out
}

fn random_vec(rng: &mut Pcg64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

fn range(rng: &mut Pcg64, r: std::ops::RangeInclusive<u32>) -> u32 {
    r.start() + (rng.next_u32() % (r.end() - r.start() + 1))
}

// ---------------------------------------------------------------------------------------
// WireGuard derivatives, from the real wireguard-go capture
// ---------------------------------------------------------------------------------------

/// Cloudflare WARP: WireGuard whose reserved bytes [1..4] carry the 3-byte client id from the
/// registration API, in every packet of both directions (sing-box and wghttp set them on send
/// and clear them on receive, hence the server's carry them too), server port `port`.
fn warp(root: &Path, port: u16) -> Vec<Pkt> {
    let mut rng = rng::seeded(0x3a59_0000 + u64::from(port));
    let mut id = [0u8; 3];
    rng.fill_bytes(&mut id);
    let pkts = read(root, "wireguard-ipv4")
        .into_iter()
        .map(|(t, f)| (t, remap_port(&f, 51820, port)))
        .collect();
    rewrite(pkts, |_, p| {
        let mut p = p.to_vec();
        p[1..4].copy_from_slice(&id);
        vec![p]
    })
}

/// Padded WireGuard handshakes: TunnelBear's 204-byte initiation and 100-byte response
/// (`None`: 56 and 8 random bytes appended), or random padding of each handshake message
/// (`Some(range)` extra bytes, appended). Transport data unchanged.
fn wg_padded(root: &Path, random: Option<std::ops::RangeInclusive<u32>>) -> Vec<Pkt> {
    let mut rng = rng::seeded(if random.is_some() {
        0x9add_0002
    } else {
        0x9add_0001
    });
    rewrite(read(root, "wireguard-ipv4"), |_, p| {
        let extra = match (p[0], &random) {
            (1, None) => 204 - 148,
            (2, None) => 100 - 92,
            (1 | 2, Some(r)) => range(&mut rng, r.clone()) as usize,
            _ => 0,
        };
        let mut p = p.to_vec();
        p.extend_from_slice(&random_vec(&mut rng, extra));
        vec![p]
    })
}

/// The leading region LWO scrambles, by WireGuard message type.
fn lwo_region(ty: u8, v2: bool) -> usize {
    match (ty, v2) {
        (1, _) => 148,
        (2, _) => 92,
        (3, false) => 64,
        (4, false) => 32,
        (4, true) => 16,
        _ => 0,
    }
}

/// Mullvad LWO (v1, mullvadvpn-app tunnel-obfuscation/src/lwo.rs): XOR of the leading region
/// with the receiver's 32-byte public key (client→server: the server's key, server→client:
/// the client's), then byte 1 replaced by a random byte with 0x80 set. Sizes unchanged. The
/// keys here are seeded random 32-byte strings (the capture's real keys were not kept).
fn lwo_v1(root: &Path) -> Vec<Pkt> {
    let mut rng = rng::seeded(0x1a0_0001);
    let server_key = random_vec(&mut rng, 32);
    let client_key = random_vec(&mut rng, 32);
    rewrite(read(root, "wireguard-ipv4"), |c2s, p| {
        let key = if c2s { &server_key } else { &client_key };
        let mut p = p.to_vec();
        let n = lwo_region(p[0], false).min(p.len());
        for (i, b) in p[..n].iter_mut().enumerate() {
            *b ^= key[i % 32];
        }
        p[1] = (rng.next_u32() as u8) | 0x80;
        vec![p]
    })
}

/// Mullvad LWO v2 (per consumer-facts.md): key = the server's public key in both directions;
/// handshakes padded with 1..=256 random bytes (appended); len_mix = datagram length mod
/// 256; byte i of the leading region (148/92/16) XOR (key[i%32] + len_mix + i); byte 1 the
/// marker ((key[0] + len_mix) & 0x3f) | 0x40. Data unpadded.
fn lwo_v2(root: &Path) -> Vec<Pkt> {
    let mut rng = rng::seeded(0x1a0_0002);
    let key = random_vec(&mut rng, 32);
    rewrite(read(root, "wireguard-ipv4"), |_, p| {
        let n = lwo_region(p[0], true);
        let mut p = p.to_vec();
        if p[0] == 1 || p[0] == 2 {
            let extra = range(&mut rng, 1..=256) as usize;
            p.extend_from_slice(&random_vec(&mut rng, extra));
        }
        let len_mix = (p.len() % 256) as u8;
        for (i, b) in p[..n].iter_mut().enumerate() {
            *b ^= key[i % 32].wrapping_add(len_mix).wrapping_add(i as u8);
        }
        p[1] = (key[0].wrapping_add(len_mix) & 0x3f) | 0x40;
        vec![p]
    })
}

/// AmneziaWG (amneziawg-go device/send.go). 1.x: H1..H4 fixed u32 (LE at [0..4], replacing
/// type and reserved), S1/S2 random bytes prepended to initiation/response, Jc = 4 junk
/// datagrams of Jmin..=Jmax = 40..=70 random bytes before the initiation, transport packets
/// unpadded. 2.0: each H a range, a fresh value per packet; S4 random bytes prepended to
/// transport packets too (S3 would pad cookies; none here). No I1..I5 packets, no header
/// protection.
fn amneziawg(root: &Path, v2: bool) -> Vec<Pkt> {
    let mut rng = rng::seeded(if v2 { 0xa3e2_0002 } else { 0xa3e2_0001 });
    // H ranges: four disjoint windows of 2^20 values above 2^24 (a single value in 1.x).
    let width = if v2 { 1 << 20 } else { 0 };
    let mut h = Vec::new();
    for i in 0..4u32 {
        let start = (1 << 24) + i * (1 << 28) + (rng.next_u32() % (1 << 26));
        h.push(start..=start + width);
    }
    let s1 = range(&mut rng, 15..=150) as usize;
    let mut s2 = range(&mut rng, 15..=150) as usize;
    if s1 + 56 == s2 {
        s2 += 1;
    }
    let s4 = if v2 {
        range(&mut rng, 8..=32) as usize
    } else {
        0
    };
    rewrite(read(root, "wireguard-ipv4"), |_, p| {
        let (hi, pad) = match p[0] {
            1 => (0, s1),
            2 => (1, s2),
            3 => (2, 0),
            _ => (3, s4),
        };
        let mut msg = p.to_vec();
        let hv = range(&mut rng, h[hi].clone());
        msg[..4].copy_from_slice(&hv.to_le_bytes());
        let mut out = Vec::new();
        if p[0] == 1 {
            for _ in 0..4 {
                let n = range(&mut rng, 40..=70) as usize;
                out.push(random_vec(&mut rng, n));
            }
        }
        let mut d = random_vec(&mut rng, pad);
        d.extend_from_slice(&msg);
        out.push(d);
        out
    })
}

// ---------------------------------------------------------------------------------------
// OpenVPN with the Tunnelblick "scramble" patch
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Scramble {
    /// `scramble xormask <string>`: byte i XOR mask[i % len].
    XorMask,
    /// `scramble xorptrpos`: byte i XOR (i + 1).
    XorPtrPos,
}

/// The mask used by every `xormask` capture (an 8-character config string).
const XOR_MASK: &[u8] = b"t9Qw#e2R";

fn scramble(how: Scramble, p: &mut [u8]) {
    for (i, b) in p.iter_mut().enumerate() {
        *b ^= match how {
            Scramble::XorMask => XOR_MASK[i % XOR_MASK.len()],
            Scramble::XorPtrPos => (i + 1) as u8,
        };
    }
}

/// Every OpenVPN packet scrambled as the patch does in `link_socket_write`, before the TCP
/// framing: over TCP the 2-byte length prefix stays in clear and the packet after it is
/// scrambled from index 0 (each segment of these captures carries exactly one packet).
fn openvpn_xor(root: &Path, name: &str, how: Scramble) -> Vec<Pkt> {
    let tcp = name.contains("-tcp-");
    rewrite(read(root, name), |_, p| {
        let mut p = p.to_vec();
        if tcp {
            let len = usize::from(u16::from_be_bytes([p[0], p[1]]));
            assert_eq!(len + 2, p.len(), "{name}: one OpenVPN packet per segment");
            scramble(how, &mut p[2..]);
        } else {
            scramble(how, &mut p);
        }
        vec![p]
    })
}

// ---------------------------------------------------------------------------------------
// Conversations from scratch
// ---------------------------------------------------------------------------------------

/// A flow between CLIENT:cport and SERVER:sport; timestamps from a fixed start.
struct Flow {
    pkts: Vec<Pkt>,
    t: Duration,
    cport: u16,
    sport: u16,
    tcp: bool,
    cseq: u32,
    sseq: u32,
    /// Direction (true: client) of the last data segment not yet acknowledged.
    unacked: Option<bool>,
}

impl Flow {
    fn new(tcp: bool, cport: u16, sport: u16, rng: &mut Pcg64) -> Flow {
        Flow {
            pkts: Vec::new(),
            t: Duration::from_secs(1_780_000_000),
            cport,
            sport,
            tcp,
            cseq: rng.next_u32(),
            sseq: rng.next_u32(),
            unacked: None,
        }
    }

    fn wait_ms(&mut self, ms: u64) {
        self.t += Duration::from_micros(ms * 1000);
    }

    fn frame(&mut self, c2s: bool, flags: u8, payload: &[u8], syn_options: bool) {
        self.t += Duration::from_micros(150);
        let (smac, dmac, src, dst, sp, dp) = if c2s {
            (
                CLIENT_MAC, SERVER_MAC, CLIENT, SERVER, self.cport, self.sport,
            )
        } else {
            (
                SERVER_MAC, CLIENT_MAC, SERVER, CLIENT, self.sport, self.cport,
            )
        };
        let base = Frame::eth().macs(smac, dmac).ipv4(src, dst).dont_fragment();
        let frame = if self.tcp {
            let (seq, ack) = if c2s {
                (self.cseq, self.sseq)
            } else {
                (self.sseq, self.cseq)
            };
            let ack = if flags & TCP_ACK != 0 { ack } else { 0 };
            let mut f = base.tcp(sp, dp).tcp_flags(flags).tcp_seq(seq, ack);
            if syn_options {
                f = f.tcp_syn_options();
            }
            let adv = payload.len() as u32 + u32::from(flags & (TCP_SYN | TCP_FIN) != 0);
            if c2s {
                self.cseq = self.cseq.wrapping_add(adv);
            } else {
                self.sseq = self.sseq.wrapping_add(adv);
            }
            f.payload(payload).build()
        } else {
            base.udp(sp, dp).payload(payload).build()
        };
        self.pkts.push((self.t, frame));
    }

    fn open(&mut self) {
        self.frame(true, TCP_SYN, &[], true);
        self.frame(false, TCP_SYN | TCP_ACK, &[], true);
        self.frame(true, TCP_ACK, &[], false);
    }

    /// A datagram, or a TCP data segment (PSH|ACK), preceded by the receiver's bare ACK when
    /// the same side sends twice in a row.
    fn send(&mut self, c2s: bool, payload: &[u8]) {
        if self.tcp {
            if self.unacked == Some(c2s) {
                self.frame(!c2s, TCP_ACK, &[], false);
            }
            self.unacked = Some(c2s);
            self.frame(c2s, TCP_PSH | TCP_ACK, payload, false);
        } else {
            self.frame(c2s, 0, payload, false);
        }
    }

    fn close(mut self) -> Vec<Pkt> {
        if self.tcp {
            if let Some(d) = self.unacked.take() {
                self.frame(!d, TCP_ACK, &[], false);
            }
            self.frame(true, TCP_FIN | TCP_ACK, &[], false);
            self.frame(false, TCP_FIN | TCP_ACK, &[], false);
            self.frame(true, TCP_ACK, &[], false);
        }
        self.pkts
    }
}

// --- DTLS 1.2 records ------------------------------------------------------------------

const DTLS_1_0: u16 = 0xfeff;
const DTLS_1_2: u16 = 0xfefd;

/// One direction's DTLS record layer: record sequence per epoch, handshake message sequence.
struct Dtls {
    epoch: u16,
    seq: u64,
    msg_seq: u16,
}

impl Dtls {
    fn new() -> Dtls {
        Dtls {
            epoch: 0,
            seq: 0,
            msg_seq: 0,
        }
    }

    fn record(&mut self, content_type: u8, version: u16, body: &[u8]) -> Vec<u8> {
        let mut r = vec![content_type];
        r.extend_from_slice(&version.to_be_bytes());
        r.extend_from_slice(&self.epoch.to_be_bytes());
        r.extend_from_slice(&self.seq.to_be_bytes()[2..]);
        r.extend_from_slice(&(body.len() as u16).to_be_bytes());
        r.extend_from_slice(body);
        self.seq += 1;
        r
    }

    /// A handshake record (unfragmented message of `msg_type`).
    fn handshake(&mut self, version: u16, msg_type: u8, body: &[u8]) -> Vec<u8> {
        let len = (body.len() as u32).to_be_bytes();
        let mut hs = vec![msg_type, len[1], len[2], len[3]];
        hs.extend_from_slice(&self.msg_seq.to_be_bytes());
        hs.extend_from_slice(&[0, 0, 0, len[1], len[2], len[3]]);
        hs.extend_from_slice(body);
        self.msg_seq += 1;
        self.record(22, version, &hs)
    }

    /// ChangeCipherSpec, then the epoch moves to 1.
    fn change_cipher_spec(&mut self) -> Vec<u8> {
        let r = self.record(20, DTLS_1_2, &[1]);
        self.epoch = 1;
        self.seq = 0;
        r
    }

    /// An AES-GCM protected record: 8-byte explicit nonce, `plain_len` bytes, 16-byte tag.
    fn sealed(&mut self, content_type: u8, plain_len: usize, rng: &mut Pcg64) -> Vec<u8> {
        let body = random_vec(rng, 8 + plain_len + 16);
        self.record(content_type, DTLS_1_2, &body)
    }
}

fn ext(ty: u16, body: &[u8]) -> Vec<u8> {
    let mut e = ty.to_be_bytes().to_vec();
    e.extend_from_slice(&(body.len() as u16).to_be_bytes());
    e.extend_from_slice(body);
    e
}

fn client_hello(cookie: &[u8], random: &[u8]) -> Vec<u8> {
    let mut b = DTLS_1_2.to_be_bytes().to_vec();
    b.extend_from_slice(random);
    b.push(0); // no session id
    b.push(cookie.len() as u8);
    b.extend_from_slice(cookie);
    let suites: [u16; 6] = [0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8];
    b.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        b.extend_from_slice(&s.to_be_bytes());
    }
    b.extend_from_slice(&[1, 0]);
    let mut e = Vec::new();
    e.extend(ext(0xff01, &[0])); // renegotiation_info
    e.extend(ext(0x000a, &[0, 6, 0, 0x1d, 0, 0x17, 0, 0x18])); // supported_groups
    e.extend(ext(0x000b, &[1, 0])); // ec_point_formats
    e.extend(ext(0x0017, &[])); // extended_master_secret
    e.extend(ext(
        0x000d,
        &[0, 8, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01, 0x05, 0x03],
    )); // signature_algorithms
    b.extend_from_slice(&(e.len() as u16).to_be_bytes());
    b.extend_from_slice(&e);
    b
}

fn hello_verify_request(cookie: &[u8]) -> Vec<u8> {
    let mut b = DTLS_1_0.to_be_bytes().to_vec();
    b.push(cookie.len() as u8);
    b.extend_from_slice(cookie);
    b
}

fn server_hello(rng: &mut Pcg64) -> Vec<u8> {
    let mut b = DTLS_1_2.to_be_bytes().to_vec();
    b.extend_from_slice(&random_vec(rng, 32));
    b.push(32);
    b.extend_from_slice(&random_vec(rng, 32));
    b.extend_from_slice(&[0xc0, 0x30, 0]); // ECDHE_RSA_AES_256_GCM_SHA384, null compression
    let mut e = Vec::new();
    e.extend(ext(0xff01, &[0]));
    e.extend(ext(0x0017, &[]));
    e.extend(ext(0x000b, &[1, 0]));
    b.extend_from_slice(&(e.len() as u16).to_be_bytes());
    b.extend_from_slice(&e);
    b
}

/// The DTLS 1.2 handshake flights (ECDHE-RSA, stateless cookie exchange), each (from_client,
/// records of one datagram), and the client's and server's record layers, now at epoch 1.
type Flights = Vec<(bool, Vec<u8>)>;

fn dtls_handshake(rng: &mut Pcg64) -> (Flights, Dtls, Dtls) {
    let (mut c, mut s) = (Dtls::new(), Dtls::new());
    let client_random = random_vec(rng, 32);
    let cookie = random_vec(rng, 20);
    let cert = random_vec(rng, 780);
    let mut flights = Vec::new();
    flights.push((
        true,
        c.handshake(DTLS_1_0, 1, &client_hello(&[], &client_random)),
    ));
    flights.push((
        false,
        s.handshake(DTLS_1_0, 3, &hello_verify_request(&cookie)),
    ));
    flights.push((
        true,
        c.handshake(DTLS_1_2, 1, &client_hello(&cookie, &client_random)),
    ));
    let mut f = s.handshake(DTLS_1_2, 2, &server_hello(rng));
    let mut certs = vec![0, 3, 0x0f];
    certs.extend_from_slice(&(cert.len() as u32).to_be_bytes()[1..]);
    certs.extend_from_slice(&cert);
    let mut cert_msg = (certs.len() as u32).to_be_bytes()[1..].to_vec();
    cert_msg.extend_from_slice(&certs);
    f.extend(s.handshake(DTLS_1_2, 11, &cert_msg));
    let mut ske = vec![3, 0, 0x1d, 32];
    ske.extend_from_slice(&random_vec(rng, 32));
    ske.extend_from_slice(&[0x08, 0x04, 0x01, 0x00]);
    ske.extend_from_slice(&random_vec(rng, 256));
    f.extend(s.handshake(DTLS_1_2, 12, &ske));
    f.extend(s.handshake(DTLS_1_2, 14, &[]));
    flights.push((false, f));
    let mut cke = vec![32];
    cke.extend_from_slice(&random_vec(rng, 32));
    let mut f = c.handshake(DTLS_1_2, 16, &cke);
    f.extend(c.change_cipher_spec());
    f.extend(c.sealed(22, 12 + 12, rng)); // Finished: 12-byte header + verify_data
    flights.push((true, f));
    let mut f = s.change_cipher_spec();
    f.extend(s.sealed(22, 12 + 12, rng));
    flights.push((false, f));
    (flights, c, s)
}

/// ExpressVPN Lightway over UDP (lightway-core src/wire.rs): every datagram starts with 'H'
/// 'e', major 1, minor 3, aggressive-mode 0, expresslane 0, two zero bytes and the 8-byte
/// session id (all zero until the server assigns one, in its first reply); then DTLS 1.2
/// (wolfSSL): ClientHello, HelloVerifyRequest, ClientHello with cookie, the server's flight,
/// the client's, the server's Finished, then application_data records carrying the pings
/// (84-byte inner IPv4 ICMP echo each, sealed).
fn lightway() -> Vec<Pkt> {
    let mut rng = rng::seeded(0x119e_0001);
    let session = random_vec(&mut rng, 8);
    let header = |session: &[u8]| {
        let mut h = vec![b'H', b'e', 1, 3, 0, 0, 0, 0];
        h.extend_from_slice(session);
        h
    };
    let cport = 40000 + (rng.next_u32() % 20000) as u16;
    let mut flow = Flow::new(false, cport, 443, &mut rng);
    let mut assigned = false;
    let (flights, mut c, mut s) = dtls_handshake(&mut rng);
    for (c2s, records) in flights {
        if !c2s {
            assigned = true;
        }
        let mut d = header(if assigned { &session } else { &[0; 8] });
        d.extend_from_slice(&records);
        flow.send(c2s, &d);
        flow.wait_ms(1);
    }
    for i in 0..4 {
        for c2s in [true, false] {
            let rec = if c2s { &mut c } else { &mut s };
            let mut d = header(&session);
            d.extend_from_slice(&rec.sealed(23, 84, &mut rng));
            flow.send(c2s, &d);
        }
        flow.wait_ms(if i == 0 { 5 } else { 300 });
    }
    flow.close()
}

/// FortiGate SSL-VPN DTLS (openconnect fortinet.c): UDP on the TLS port 443, a standard DTLS
/// 1.2 handshake (first datagram a ClientHello), then inside DTLS the client's
/// be16 length + "GFtype\0clthello\0SVPNCOOKIE\0" + cookie + "\0" and the server's
/// "GFtype\0svrhello\0handshake\0ok\0" (only their sealed sizes are visible), then data.
fn forticlient_dtls() -> Vec<Pkt> {
    let mut rng = rng::seeded(0xf027_0001);
    let cport = 40000 + (rng.next_u32() % 20000) as u16;
    let mut flow = Flow::new(false, cport, 443, &mut rng);
    let (flights, mut c, mut s) = dtls_handshake(&mut rng);
    for (c2s, records) in flights {
        flow.send(c2s, &records);
        flow.wait_ms(1);
    }
    let cookie_len = 32; // SVPNCOOKIE value as hex text
    let clthello = 2 + b"GFtype\0clthello\0SVPNCOOKIE\0".len() + cookie_len + 1;
    let svrhello = b"GFtype\0svrhello\0handshake\0ok\0".len();
    flow.send(true, &c.sealed(23, clthello, &mut rng));
    flow.send(false, &s.sealed(23, svrhello, &mut rng));
    flow.wait_ms(5);
    for _ in 0..4 {
        // PPP-framed inner IPv4 ping, as FortiGate tunnels carry it
        flow.send(true, &c.sealed(23, 6 + 84, &mut rng));
        flow.send(false, &s.sealed(23, 6 + 84, &mut rng));
        flow.wait_ms(300);
    }
    flow.close()
}

/// SoftEther's HTTP-shaped session start (Protocol.c ClientUploadSignature), over plain TCP
/// 5555 so that the bytes are visible: POST /vpnsvc/connect.cgi, Content-Type image/jpeg,
/// body = a GIF89a watermark plus random bytes; the server answers 200 with its hello PACK;
/// then the client's POST /vpnsvc/vpn.cgi (application/octet-stream) with its auth PACK.
/// Real SoftEther starts TLS first (StartSSLEx) and sends all this inside it: this capture is
/// what a TLS-stripping or plaintext deployment shows, not what the wire of a default
/// installation shows. The watermark's first bytes (47 49 46 38 39 61 c8 00 33 00) are real,
/// the rest of it is random here.
fn softether_http() -> Vec<Pkt> {
    let mut rng = rng::seeded(0x50f7_0001);
    let cport = 40000 + (rng.next_u32() % 20000) as u16;
    let mut flow = Flow::new(true, cport, 5555, &mut rng);
    flow.open();
    let mut body = vec![0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0xc8, 0x00, 0x33, 0x00];
    body.extend_from_slice(&random_vec(&mut rng, 1401 - 10)); // watermark size assumed
    let extra = range(&mut rng, 0..=1999) as usize;
    body.extend_from_slice(&random_vec(&mut rng, extra));
    let post = |target: &str, ctype: &str, body: &[u8]| {
        let mut p = format!(
            "POST {target} HTTP/1.1\r\nHost: {SERVER}\r\nContent-Type: {ctype}\r\n\
             Connection: Keep-Alive\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        p.extend_from_slice(body);
        p
    };
    let first = post("/vpnsvc/connect.cgi", "image/jpeg", &body);
    // the request spans segments of at most 1448 bytes (MSS 1460 minus timestamps)
    for chunk in first.chunks(1448) {
        flow.send(true, chunk);
    }
    let hello = random_vec(&mut rng, 812);
    let mut resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
         Connection: Keep-Alive\r\nContent-Length: {}\r\n\r\n",
        hello.len()
    )
    .into_bytes();
    resp.extend_from_slice(&hello);
    flow.send(false, &resp);
    let auth = random_vec(&mut rng, 530);
    flow.send(
        true,
        &post("/vpnsvc/vpn.cgi", "application/octet-stream", &auth),
    );
    let welcome = random_vec(&mut rng, 1200);
    let mut resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
         Connection: Keep-Alive\r\nContent-Length: {}\r\n\r\n",
        welcome.len()
    )
    .into_bytes();
    resp.extend_from_slice(&welcome);
    flow.send(false, &resp);
    flow.wait_ms(20);
    for _ in 0..3 {
        // tunnelled Ethernet frames (the session's own block framing), opaque here
        flow.send(true, &random_vec(&mut rng, 110));
        flow.send(false, &random_vec(&mut rng, 110));
        flow.wait_ms(300);
    }
    flow.close()
}
