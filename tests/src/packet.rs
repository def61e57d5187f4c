//! Packet builders: VPN payloads that match the wire formats, ordinary payloads that look
//! like them (the false-positive corpus), and whole Ethernet frames for BPF_PROG_TEST_RUN
//! and raw sockets.
//!
//! Frames are built katran-style, outermost layer first:
//!
//! ```
//! use vpn_filter_tests::packet::{wireguard_initiation, Frame};
//! let frame = Frame::eth()
//!     .vlan(100)
//!     .ipv4([198, 51, 100, 7].into(), [203, 0, 113, 1].into())
//!     .udp(40000, 51820)
//!     .payload(&wireguard_initiation(7))
//!     .build();
//! assert_eq!(frame.len(), 14 + 4 + 20 + 8 + 148);
//! ```
//!
//! Lengths (IPv4 total length, IPv6 payload length, UDP length, TCP data offset, IHL) and
//! checksums (IPv4 header, UDP, TCP, ICMP, ICMPv6) are computed from what is built, unless a
//! test overrides a length on purpose to make it lie ([`Frame::udp_len`],
//! [`Frame::ip_len`], [`Frame::ihl`], [`Frame::tcp_data_offset`]).
//!
//! Payload builders take the identifiers a test wants to see again (session ids, indices,
//! SPIs) and fill everything else with deterministic pseudo-random bytes, so every run builds
//! the same bytes. Multi-byte fields are big-endian except WireGuard's (little-endian), as on
//! the wire.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_GRE: u8 = 47;
pub const IPPROTO_ESP: u8 = 50;
pub const IPPROTO_AH: u8 = 51;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_NONE: u8 = 59;
pub const IPPROTO_DSTOPTS: u8 = 60;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// An IPv6 extension header, in the order added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ext {
    /// Hop-by-hop options; `len8` is the Hdr Ext Len field (8-octet units beyond the first 8).
    HopByHop { len8: u8 },
    /// Routing header (type 4, segments left 0) of `(len8 + 1) * 8` bytes.
    Routing { len8: u8 },
    /// Destination options of `(len8 + 1) * 8` bytes.
    DestOpts { len8: u8 },
    /// Fragment header: `offset` in bytes (a multiple of 8), `more` the M flag.
    Fragment { offset: u16, more: bool, id: u32 },
}

#[derive(Clone, Debug)]
struct V4 {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    id: u16,
    options: Vec<u8>,
    dont_fragment: bool,
    more_fragments: bool,
    /// Fragment offset in bytes (a multiple of 8).
    frag_offset: u16,
    total_len: Option<u16>,
    ihl: Option<u8>,
    version: u8,
}

#[derive(Clone, Debug)]
struct V6 {
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop_limit: u8,
    ext: Vec<Ext>,
    payload_len: Option<u16>,
    version: u8,
}

#[derive(Clone, Debug)]
enum Net {
    None,
    /// Anything that is not IP: the bytes after the EtherType.
    Raw {
        ethertype: u16,
        body: Vec<u8>,
    },
    V4(V4),
    V6(V6),
}

#[derive(Clone, Debug)]
enum L4 {
    /// The payload follows the IP header directly, under this protocol number.
    Proto(u8),
    Udp {
        sport: u16,
        dport: u16,
        len: Option<u16>,
    },
    Tcp {
        sport: u16,
        dport: u16,
        seq: u32,
        ack: u32,
        flags: u8,
        options: Vec<u8>,
        doff: Option<u8>,
    },
    /// GRE header bytes, already built.
    Gre(Vec<u8>),
    Esp {
        spi: u32,
        seq: u32,
    },
    Ah {
        spi: u32,
        seq: u32,
        next: u8,
    },
    /// ICMP (IPv4) or ICMPv6 (IPv6): type, code and the four bytes after the checksum.
    Icmp {
        ty: u8,
        code: u8,
        rest: [u8; 4],
    },
}

/// An Ethernet frame under construction. See the module documentation.
#[derive(Clone, Debug)]
pub struct Frame {
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    /// 802.1ad/802.1Q tags, outermost first: (TPID, TCI).
    tags: Vec<(u16, u16)>,
    net: Net,
    l4: L4,
    payload: Vec<u8>,
}

impl Frame {
    /// An Ethernet header with locally administered MACs; add a network layer next.
    pub fn eth() -> Frame {
        Frame {
            dst_mac: [0x02, 0, 0, 0, 0, 0x01],
            src_mac: [0x02, 0, 0, 0, 0, 0x02],
            tags: Vec::new(),
            net: Net::None,
            l4: L4::Proto(IPPROTO_NONE),
            payload: Vec::new(),
        }
    }

    pub fn macs(mut self, src: [u8; 6], dst: [u8; 6]) -> Frame {
        self.src_mac = src;
        self.dst_mac = dst;
        self
    }

    /// An 802.1Q tag (TPID 0x8100) with VLAN id `id`, inside any tags already added.
    pub fn vlan(self, id: u16) -> Frame {
        self.tag(ETH_P_8021Q, id)
    }

    /// QinQ: an 802.1ad service tag (TPID 0x88a8) `outer`, then an 802.1Q tag `inner`.
    pub fn qinq(self, outer: u16, inner: u16) -> Frame {
        self.tag(ETH_P_8021AD, outer).tag(ETH_P_8021Q, inner)
    }

    /// Any VLAN-style tag: TPID and TCI (priority and DEI bits included).
    pub fn tag(mut self, tpid: u16, tci: u16) -> Frame {
        self.tags.push((tpid, tci));
        self
    }

    /// A non-IP frame: `ethertype`, then `body` as is.
    pub fn raw(mut self, ethertype: u16, body: &[u8]) -> Frame {
        self.net = Net::Raw {
            ethertype,
            body: body.to_vec(),
        };
        self
    }

    /// An ARP request (who has `target`, tell `sender`).
    pub fn arp_request(self, sender: Ipv4Addr, target: Ipv4Addr) -> Frame {
        let mut b = vec![0, 1, 0x08, 0x00, 6, 4, 0, 1];
        b.extend_from_slice(&self.src_mac);
        b.extend_from_slice(&sender.octets());
        b.extend_from_slice(&[0; 6]);
        b.extend_from_slice(&target.octets());
        self.raw(ETH_P_ARP, &b)
    }

    pub fn ipv4(mut self, src: Ipv4Addr, dst: Ipv4Addr) -> Frame {
        self.net = Net::V4(V4 {
            src,
            dst,
            ttl: 64,
            id: 0x1234,
            options: Vec::new(),
            dont_fragment: false,
            more_fragments: false,
            frag_offset: 0,
            total_len: None,
            ihl: None,
            version: 4,
        });
        self
    }

    pub fn ipv6(mut self, src: Ipv6Addr, dst: Ipv6Addr) -> Frame {
        self.net = Net::V6(V6 {
            src,
            dst,
            hop_limit: 64,
            ext: Vec::new(),
            payload_len: None,
            version: 6,
        });
        self
    }

    /// IPv4 or IPv6 by the addresses' family (both must be the same).
    pub fn ip(self, src: IpAddr, dst: IpAddr) -> Frame {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => self.ipv4(s, d),
            (IpAddr::V6(s), IpAddr::V6(d)) => self.ipv6(s, d),
            _ => panic!("mixed address families: {src} -> {dst}"),
        }
    }

    /// IPv4 options (padded with end-of-options to a multiple of four bytes).
    pub fn ipv4_options(mut self, options: &[u8]) -> Frame {
        let v4 = self.v4_mut("ipv4_options");
        v4.options = options.to_vec();
        while !v4.options.len().is_multiple_of(4) {
            v4.options.push(0);
        }
        self
    }

    pub fn dont_fragment(mut self) -> Frame {
        self.v4_mut("dont_fragment").dont_fragment = true;
        self
    }

    /// Marks the packet as an IP fragment: IPv4 flags/offset, or an IPv6 fragment header
    /// appended to the extension headers. `offset` is in bytes and must be a multiple of 8.
    /// A non-first fragment has no L4 header: build it with [`Frame::ip_proto`]. A first
    /// fragment of a longer datagram needs [`Frame::udp_len`] to announce the whole length.
    pub fn fragment(mut self, more: bool, offset: u16) -> Frame {
        assert!(
            offset.is_multiple_of(8),
            "fragment offsets are multiples of 8 bytes"
        );
        match &mut self.net {
            Net::V4(v4) => {
                v4.more_fragments = more;
                v4.frag_offset = offset;
            }
            Net::V6(v6) => v6.ext.push(Ext::Fragment {
                offset,
                more,
                id: 0x0bad_cafe,
            }),
            _ => panic!("fragment() needs an IP layer"),
        }
        self
    }

    pub fn ttl(mut self, ttl: u8) -> Frame {
        match &mut self.net {
            Net::V4(v4) => v4.ttl = ttl,
            Net::V6(v6) => v6.hop_limit = ttl,
            _ => panic!("ttl() needs an IP layer"),
        }
        self
    }

    /// An IPv6 extension header, after those already added.
    pub fn ext(mut self, ext: Ext) -> Frame {
        self.v6_mut("ext").ext.push(ext);
        self
    }

    /// An 8-byte hop-by-hop options header (PadN).
    pub fn hop_by_hop(self) -> Frame {
        self.ext(Ext::HopByHop { len8: 0 })
    }

    /// A 24-byte routing header (type 4, segments left 0, one segment).
    pub fn routing(self) -> Frame {
        self.ext(Ext::Routing { len8: 2 })
    }

    /// An 8-byte destination options header (PadN).
    pub fn dest_opts(self) -> Frame {
        self.ext(Ext::DestOpts { len8: 0 })
    }

    /// Overrides the IPv4 total length or the IPv6 payload length (to make it lie).
    pub fn ip_len(mut self, len: u16) -> Frame {
        match &mut self.net {
            Net::V4(v4) => v4.total_len = Some(len),
            Net::V6(v6) => v6.payload_len = Some(len),
            _ => panic!("ip_len() needs an IP layer"),
        }
        self
    }

    /// Overrides the IPv4 header length field (4-byte words) without changing the header.
    pub fn ihl(mut self, words: u8) -> Frame {
        self.v4_mut("ihl").ihl = Some(words);
        self
    }

    /// Overrides the IP version nibble.
    pub fn ip_version(mut self, version: u8) -> Frame {
        match &mut self.net {
            Net::V4(v4) => v4.version = version,
            Net::V6(v6) => v6.version = version,
            _ => panic!("ip_version() needs an IP layer"),
        }
        self
    }

    /// The payload follows the IP header (and extension headers) directly, under `proto`.
    pub fn ip_proto(mut self, proto: u8) -> Frame {
        self.l4 = L4::Proto(proto);
        self
    }

    pub fn udp(mut self, sport: u16, dport: u16) -> Frame {
        self.l4 = L4::Udp {
            sport,
            dport,
            len: None,
        };
        self
    }

    /// Overrides the UDP length field (to make it lie, or for a first fragment).
    pub fn udp_len(mut self, len: u16) -> Frame {
        match &mut self.l4 {
            L4::Udp { len: l, .. } => *l = Some(len),
            _ => panic!("udp_len() needs a UDP layer"),
        }
        self
    }

    /// A TCP segment with PSH|ACK set.
    pub fn tcp(mut self, sport: u16, dport: u16) -> Frame {
        self.l4 = L4::Tcp {
            sport,
            dport,
            seq: 1,
            ack: 1,
            flags: TCP_PSH | TCP_ACK,
            options: Vec::new(),
            doff: None,
        };
        self
    }

    pub fn tcp_flags(mut self, flags: u8) -> Frame {
        *self.tcp_mut("tcp_flags").3 = flags;
        self
    }

    pub fn tcp_seq(mut self, seq: u32, ack: u32) -> Frame {
        let t = self.tcp_mut("tcp_seq");
        *t.0 = seq;
        *t.1 = ack;
        self
    }

    /// TCP options (padded with end-of-options to a multiple of four bytes); the data offset
    /// grows to match.
    pub fn tcp_options(mut self, options: &[u8]) -> Frame {
        let t = self.tcp_mut("tcp_options");
        *t.2 = options.to_vec();
        while !t.2.len().is_multiple_of(4) {
            t.2.push(0);
        }
        self
    }

    /// Typical SYN options: MSS 1460, SACK permitted, timestamps, NOP, window scale 10.
    pub fn tcp_syn_options(self) -> Frame {
        self.tcp_options(&[
            2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0x4d, 0xbb, 0x54, 0x22, 0, 0, 0, 0, 1, 3, 3, 10,
        ])
    }

    /// Overrides the TCP data offset field (4-byte words) without changing the header.
    pub fn tcp_data_offset(mut self, words: u8) -> Frame {
        match &mut self.l4 {
            L4::Tcp { doff, .. } => *doff = Some(words),
            _ => panic!("tcp_data_offset() needs a TCP layer"),
        }
        self
    }

    /// GRE version 0 (RFC 2784) carrying `proto` (e.g. 0x0800, 0x88be for ERSPAN).
    pub fn gre_v0(mut self, proto: u16) -> Frame {
        let mut h = vec![0x00, 0x00];
        h.extend_from_slice(&proto.to_be_bytes());
        self.l4 = L4::Gre(h);
        self
    }

    /// GRE version 0 with the key bit and a key (RFC 2890), as enterprise tunnels use.
    pub fn gre_v0_key(mut self, proto: u16, key: u32) -> Frame {
        let mut h = vec![0x20, 0x00];
        h.extend_from_slice(&proto.to_be_bytes());
        h.extend_from_slice(&key.to_be_bytes());
        self.l4 = L4::Gre(h);
        self
    }

    /// Enhanced GRE (version 1, RFC 2637) carrying PPP for PPTP call `call_id`: key bit
    /// always, S bit with `seq`, A bit with `ack`. The payload-length field counts the payload.
    pub fn gre_pptp(mut self, call_id: u16, seq: Option<u32>, ack: Option<u32>) -> Frame {
        let mut flags0 = 0x20u8;
        if seq.is_some() {
            flags0 |= 0x10;
        }
        let mut flags1 = 0x01u8;
        if ack.is_some() {
            flags1 |= 0x80;
        }
        let mut h = vec![flags0, flags1, 0x88, 0x0b, 0, 0];
        h.extend_from_slice(&call_id.to_be_bytes());
        if let Some(s) = seq {
            h.extend_from_slice(&s.to_be_bytes());
        }
        if let Some(a) = ack {
            h.extend_from_slice(&a.to_be_bytes());
        }
        self.l4 = L4::Gre(h);
        self
    }

    /// Any GRE header, as given.
    pub fn gre_raw(mut self, header: &[u8]) -> Frame {
        self.l4 = L4::Gre(header.to_vec());
        self
    }

    /// ESP (IP protocol 50): SPI and sequence number, then the payload.
    pub fn esp(mut self, spi: u32, seq: u32) -> Frame {
        self.l4 = L4::Esp { spi, seq };
        self
    }

    /// AH (IP protocol 51) with a 12-byte ICV, then the payload under `next`.
    pub fn ah(mut self, spi: u32, seq: u32, next: u8) -> Frame {
        self.l4 = L4::Ah { spi, seq, next };
        self
    }

    /// An ICMP echo request (IPv4) or ICMPv6 echo request (IPv6).
    pub fn icmp_echo(mut self, id: u16, seq: u16) -> Frame {
        let ty = match self.net {
            Net::V6(_) => 128,
            _ => 8,
        };
        let [a, b] = id.to_be_bytes();
        let [c, d] = seq.to_be_bytes();
        self.l4 = L4::Icmp {
            ty,
            code: 0,
            rest: [a, b, c, d],
        };
        self
    }

    /// An ICMPv6 neighbour solicitation for `target` (NDP); build it on an IPv6 layer with
    /// hop limit 255.
    pub fn ndp_solicit(mut self, target: Ipv6Addr) -> Frame {
        self.l4 = L4::Icmp {
            ty: 135,
            code: 0,
            rest: [0; 4],
        };
        let mut p = target.octets().to_vec();
        p.extend_from_slice(&[1, 1]);
        p.extend_from_slice(&self.src_mac);
        self.payload = p;
        self
    }

    /// Any ICMP/ICMPv6 message (by the IP layer's family).
    pub fn icmp(mut self, ty: u8, code: u8, rest: [u8; 4]) -> Frame {
        self.l4 = L4::Icmp { ty, code, rest };
        self
    }

    pub fn payload(mut self, payload: &[u8]) -> Frame {
        self.payload = payload.to_vec();
        self
    }

    /// The frame's bytes.
    pub fn build(&self) -> Vec<u8> {
        let mut f = Vec::with_capacity(64 + self.payload.len());
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        for (tpid, tci) in &self.tags {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&tci.to_be_bytes());
        }
        match &self.net {
            Net::None => panic!("Frame::build: no network layer"),
            Net::Raw { ethertype, body } => {
                f.extend_from_slice(&ethertype.to_be_bytes());
                f.extend_from_slice(body);
            }
            Net::V4(v4) => {
                f.extend_from_slice(&ETH_P_IP.to_be_bytes());
                let l4 = self.l4_bytes(&PseudoHeader::V4(v4.src, v4.dst));
                let header_len = 20 + v4.options.len();
                let total = v4.total_len.unwrap_or((header_len + l4.len()) as u16);
                let mut h = Vec::with_capacity(header_len);
                let ihl = v4.ihl.unwrap_or((header_len / 4) as u8);
                h.push((v4.version << 4) | (ihl & 0x0f));
                h.push(0);
                h.extend_from_slice(&total.to_be_bytes());
                h.extend_from_slice(&v4.id.to_be_bytes());
                let mut frag = v4.frag_offset / 8;
                if v4.dont_fragment {
                    frag |= 0x4000;
                }
                if v4.more_fragments {
                    frag |= 0x2000;
                }
                h.extend_from_slice(&frag.to_be_bytes());
                h.push(v4.ttl);
                h.push(self.ip_proto_number(false));
                h.extend_from_slice(&[0, 0]);
                h.extend_from_slice(&v4.src.octets());
                h.extend_from_slice(&v4.dst.octets());
                h.extend_from_slice(&v4.options);
                let c = checksum(&[&h]);
                h[10..12].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&h);
                f.extend_from_slice(&l4);
            }
            Net::V6(v6) => {
                f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
                let upper = self.ip_proto_number(true);
                let l4 = self.l4_bytes(&PseudoHeader::V6(v6.src, v6.dst));
                let mut exts = Vec::new();
                for (i, e) in v6.ext.iter().enumerate() {
                    let next = match v6.ext.get(i + 1) {
                        Some(n) => ext_number(n),
                        None => upper,
                    };
                    exts.extend_from_slice(&ext_bytes(e, next));
                }
                let first = v6.ext.first().map(ext_number).unwrap_or(upper);
                let plen = v6.payload_len.unwrap_or((exts.len() + l4.len()) as u16);
                f.extend_from_slice(&[v6.version << 4, 0, 0, 0]);
                f.extend_from_slice(&plen.to_be_bytes());
                f.push(first);
                f.push(v6.hop_limit);
                f.extend_from_slice(&v6.src.octets());
                f.extend_from_slice(&v6.dst.octets());
                f.extend_from_slice(&exts);
                f.extend_from_slice(&l4);
            }
        }
        f
    }

    fn ip_proto_number(&self, v6: bool) -> u8 {
        match &self.l4 {
            L4::Proto(p) => *p,
            L4::Udp { .. } => IPPROTO_UDP,
            L4::Tcp { .. } => IPPROTO_TCP,
            L4::Gre(_) => IPPROTO_GRE,
            L4::Esp { .. } => IPPROTO_ESP,
            L4::Ah { .. } => IPPROTO_AH,
            L4::Icmp { .. } if v6 => IPPROTO_ICMPV6,
            L4::Icmp { .. } => IPPROTO_ICMP,
        }
    }

    /// The L4 header (with its checksum) followed by the payload.
    fn l4_bytes(&self, ph: &PseudoHeader) -> Vec<u8> {
        let p = &self.payload;
        let mut out = Vec::with_capacity(60 + p.len());
        match &self.l4 {
            L4::Proto(_) => {}
            L4::Udp { sport, dport, len } => {
                let real = (8 + p.len()) as u16;
                out.extend_from_slice(&sport.to_be_bytes());
                out.extend_from_slice(&dport.to_be_bytes());
                out.extend_from_slice(&len.unwrap_or(real).to_be_bytes());
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(p);
                let mut c = checksum(&[&ph.bytes(IPPROTO_UDP, real), &out]);
                if c == 0 {
                    c = 0xffff;
                }
                out[6..8].copy_from_slice(&c.to_be_bytes());
                return out;
            }
            L4::Tcp {
                sport,
                dport,
                seq,
                ack,
                flags,
                options,
                doff,
            } => {
                let header_len = 20 + options.len();
                out.extend_from_slice(&sport.to_be_bytes());
                out.extend_from_slice(&dport.to_be_bytes());
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(&ack.to_be_bytes());
                out.push(doff.unwrap_or((header_len / 4) as u8) << 4);
                out.push(*flags);
                out.extend_from_slice(&64240u16.to_be_bytes());
                out.extend_from_slice(&[0, 0, 0, 0]);
                out.extend_from_slice(options);
                out.extend_from_slice(p);
                let c = checksum(&[&ph.bytes(IPPROTO_TCP, out.len() as u16), &out]);
                out[16..18].copy_from_slice(&c.to_be_bytes());
                return out;
            }
            L4::Gre(h) => {
                out.extend_from_slice(h);
                // Enhanced GRE: the payload length field counts the payload.
                if h.len() >= 8 && h[1] & 0x07 == 1 {
                    out[4..6].copy_from_slice(&(p.len() as u16).to_be_bytes());
                }
            }
            L4::Esp { spi, seq } => {
                out.extend_from_slice(&spi.to_be_bytes());
                out.extend_from_slice(&seq.to_be_bytes());
            }
            L4::Ah { spi, seq, next } => {
                // 12-byte header + 12-byte ICV = 24 bytes = (6 - 2) 32-bit words.
                out.extend_from_slice(&[*next, 4, 0, 0]);
                out.extend_from_slice(&spi.to_be_bytes());
                out.extend_from_slice(&seq.to_be_bytes());
                let mut icv = [0u8; 12];
                fill_pseudo_random(&mut icv, *spi as u64);
                out.extend_from_slice(&icv);
            }
            L4::Icmp { ty, code, rest } => {
                out.extend_from_slice(&[*ty, *code, 0, 0]);
                out.extend_from_slice(rest);
                out.extend_from_slice(p);
                let c = match ph {
                    PseudoHeader::V4(..) => checksum(&[&out]),
                    PseudoHeader::V6(..) => {
                        checksum(&[&ph.bytes(IPPROTO_ICMPV6, out.len() as u16), &out])
                    }
                };
                out[2..4].copy_from_slice(&c.to_be_bytes());
                return out;
            }
        }
        out.extend_from_slice(p);
        out
    }

    fn v4_mut(&mut self, what: &str) -> &mut V4 {
        match &mut self.net {
            Net::V4(v4) => v4,
            _ => panic!("{what}() needs an IPv4 layer"),
        }
    }

    fn v6_mut(&mut self, what: &str) -> &mut V6 {
        match &mut self.net {
            Net::V6(v6) => v6,
            _ => panic!("{what}() needs an IPv6 layer"),
        }
    }

    fn tcp_mut(&mut self, what: &str) -> (&mut u32, &mut u32, &mut Vec<u8>, &mut u8) {
        match &mut self.l4 {
            L4::Tcp {
                seq,
                ack,
                options,
                flags,
                ..
            } => (seq, ack, options, flags),
            _ => panic!("{what}() needs a TCP layer"),
        }
    }
}

/// The common UDP frame: Ethernet, `from:fport` to `to:tport`, carrying `payload`.
pub fn udp(from: IpAddr, to: IpAddr, fport: u16, tport: u16, payload: &[u8]) -> Vec<u8> {
    Frame::eth()
        .ip(from, to)
        .udp(fport, tport)
        .payload(payload)
        .build()
}

/// The common TCP data segment: Ethernet, `from:fport` to `to:tport`, ACK|PSH, sequence
/// number `seq` (acknowledging 1), carrying `payload`.
pub fn tcp_segment(
    from: IpAddr,
    to: IpAddr,
    fport: u16,
    tport: u16,
    seq: u32,
    payload: &[u8],
) -> Vec<u8> {
    Frame::eth()
        .ip(from, to)
        .tcp(fport, tport)
        .tcp_flags(TCP_ACK | TCP_PSH)
        .tcp_seq(seq, 1)
        .payload(payload)
        .build()
}

enum PseudoHeader {
    V4(Ipv4Addr, Ipv4Addr),
    V6(Ipv6Addr, Ipv6Addr),
}

impl PseudoHeader {
    fn bytes(&self, proto: u8, len: u16) -> Vec<u8> {
        let mut b = Vec::with_capacity(40);
        match self {
            PseudoHeader::V4(s, d) => {
                b.extend_from_slice(&s.octets());
                b.extend_from_slice(&d.octets());
                b.extend_from_slice(&[0, proto]);
                b.extend_from_slice(&len.to_be_bytes());
            }
            PseudoHeader::V6(s, d) => {
                b.extend_from_slice(&s.octets());
                b.extend_from_slice(&d.octets());
                b.extend_from_slice(&(len as u32).to_be_bytes());
                b.extend_from_slice(&[0, 0, 0, proto]);
            }
        }
        b
    }
}

/// The IP protocol number of an extension header.
pub fn ext_number(e: &Ext) -> u8 {
    match e {
        Ext::HopByHop { .. } => IPPROTO_HOPOPTS,
        Ext::Routing { .. } => IPPROTO_ROUTING,
        Ext::DestOpts { .. } => IPPROTO_DSTOPTS,
        Ext::Fragment { .. } => IPPROTO_FRAGMENT,
    }
}

/// An extension header's bytes, with `next` as its Next Header.
pub fn ext_bytes(e: &Ext, next: u8) -> Vec<u8> {
    match *e {
        Ext::HopByHop { len8 } | Ext::DestOpts { len8 } => {
            let mut b = vec![next, len8];
            // PadN options (at most 255 bytes of padding each) covering the rest, a Pad1 for
            // a single byte left over.
            let len = (len8 as usize + 1) * 8;
            while b.len() < len {
                match len - b.len() {
                    1 => b.push(0),
                    rest => {
                        let n = (rest - 2).min(255);
                        b.extend_from_slice(&[1, n as u8]);
                        b.resize(b.len() + n, 0);
                    }
                }
            }
            b
        }
        Ext::Routing { len8 } => {
            let mut b = vec![0u8; (len8 as usize + 1) * 8];
            b[0] = next;
            b[1] = len8;
            b[2] = 4; // segment routing
            b[3] = 0; // segments left
            b
        }
        Ext::Fragment { offset, more, id } => {
            let mut b = vec![next, 0];
            let field = offset | u16::from(more);
            b.extend_from_slice(&field.to_be_bytes());
            b.extend_from_slice(&id.to_be_bytes());
            b
        }
    }
}

/// The Internet checksum (RFC 1071) over the concatenation of `parts`.
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    let mut odd: Option<u8> = None;
    for part in parts {
        for &b in *part {
            match odd.take() {
                Some(hi) => sum += u32::from(u16::from_be_bytes([hi, b])),
                None => odd = Some(b),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u32::from(u16::from_be_bytes([hi, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Deterministic filler (the tests' seeded generator), so tests are reproducible.
pub fn fill_pseudo_random(buf: &mut [u8], seed: u64) {
    rand_core::Rng::fill_bytes(&mut crate::rng::seeded(seed), buf);
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fill_pseudo_random(&mut v, seed);
    v
}

// ---------------------------------------------------------------------------------------
// WireGuard (little-endian indices)
// ---------------------------------------------------------------------------------------

/// A WireGuard handshake initiation (148 bytes): type 1, reserved zero, sender index,
/// then pseudo-random ephemeral/static/timestamp/mac1 bytes and a zero mac2.
pub fn wireguard_initiation(sender: u32) -> Vec<u8> {
    let mut p = vec![0u8; 148];
    p[0] = 1;
    p[4..8].copy_from_slice(&sender.to_le_bytes());
    fill_pseudo_random(&mut p[8..116], sender as u64);
    p
}

/// A WireGuard handshake response (92 bytes) answering `receiver`.
pub fn wireguard_response(sender: u32, receiver: u32) -> Vec<u8> {
    let mut p = vec![0u8; 92];
    p[0] = 2;
    p[4..8].copy_from_slice(&sender.to_le_bytes());
    p[8..12].copy_from_slice(&receiver.to_le_bytes());
    fill_pseudo_random(&mut p[12..60], sender as u64 ^ 0x5555);
    p
}

/// A WireGuard cookie reply (64 bytes) to `receiver`: nonce and encrypted cookie.
pub fn wireguard_cookie(receiver: u32) -> Vec<u8> {
    let mut p = vec![0u8; 64];
    p[0] = 3;
    p[4..8].copy_from_slice(&receiver.to_le_bytes());
    fill_pseudo_random(&mut p[8..], receiver as u64 ^ 0x3333);
    p
}

/// A WireGuard transport data message of `len` bytes (>= 32, a multiple of 16) to
/// `receiver` with `counter`; 32 bytes is a keepalive.
pub fn wireguard_data(receiver: u32, counter: u64, len: usize) -> Vec<u8> {
    assert!(
        len >= 32 && len.is_multiple_of(16),
        "WireGuard data is >= 32 bytes, padded to 16"
    );
    let mut p = vec![0u8; len];
    p[0] = 4;
    p[4..8].copy_from_slice(&receiver.to_le_bytes());
    p[8..16].copy_from_slice(&counter.to_le_bytes());
    fill_pseudo_random(&mut p[16..], counter ^ (receiver as u64) << 32);
    p
}

/// An initiation padded to `len` bytes (> 148), as some commercial VPNs send (204).
pub fn wireguard_padded_initiation(sender: u32, len: usize) -> Vec<u8> {
    let mut p = wireguard_initiation(sender);
    p.resize(len, 0);
    fill_pseudo_random(&mut p[148..], sender as u64 ^ 0x77);
    p
}

/// A response padded to `len` bytes (> 92), e.g. 100.
pub fn wireguard_padded_response(sender: u32, receiver: u32, len: usize) -> Vec<u8> {
    let mut p = wireguard_response(sender, receiver);
    p.resize(len, 0);
    fill_pseudo_random(&mut p[92..], sender as u64 ^ 0x99);
    p
}

// ---------------------------------------------------------------------------------------
// OpenVPN
// ---------------------------------------------------------------------------------------

/// OpenVPN opcode bytes with key id 0 (`opcode << 3`).
pub mod ovpn_op {
    pub const CLIENT_RESET_V1: u8 = 1 << 3;
    pub const SERVER_RESET_V1: u8 = 2 << 3;
    pub const SOFT_RESET_V1: u8 = 3 << 3;
    pub const CONTROL_V1: u8 = 4 << 3;
    pub const ACK_V1: u8 = 5 << 3;
    pub const DATA_V1: u8 = 6 << 3;
    pub const CLIENT_RESET_V2: u8 = 7 << 3;
    pub const SERVER_RESET_V2: u8 = 8 << 3;
    pub const DATA_V2: u8 = 9 << 3;
    pub const CLIENT_RESET_V3: u8 = 10 << 3;
    pub const CONTROL_WKC_V1: u8 = 11 << 3;
}

/// How the control channel is wrapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OvpnWrap {
    /// No tls-auth or tls-crypt.
    Plain,
    /// `--tls-auth` with an HMAC of `hmac_len` bytes (MD5 16, SHA1 20 (the default),
    /// SHA256 32, SHA512 64): `[9..9+H]` HMAC, then replay packet id and time in clear.
    TlsAuth { hmac_len: usize },
    /// `--tls-crypt`: replay packet id and time in clear at `[9..17]`, a 32-byte tag, the
    /// rest encrypted.
    TlsCrypt,
    /// `--tls-crypt-v2`: like tls-crypt; the client reset is opcode v3 and carries the
    /// wrapped client key (WKc) of `wkc_len` bytes, whose last two bytes are its length.
    TlsCryptV2 { wkc_len: usize },
}

/// The default tls-auth digest (SHA1).
pub const TLS_AUTH_SHA1: OvpnWrap = OvpnWrap::TlsAuth { hmac_len: 20 };
/// OpenVPN 2.6 marks the replay packet id of tls-crypt-v2 client packets with this high byte
/// (early negotiation): the fixture's v3 reset carries 0x0f000001, its WKc control 0x0f000002.
pub const OVPN_EARLY_NEG_START: u32 = 0x0f00_0000;
/// The replay time field written into wrapped packets (2026-11-28).
pub const OVPN_NET_TIME: u32 = 1_795_900_000;

/// One OpenVPN control-channel packet: `op` (opcode << 3 | key id), session id, wrap
/// header, acks (`acked` packet ids acknowledging `remote`'s packets), message packet id
/// (absent for P_ACK_V1) and `body`. `replay_pid` is the tls-auth/tls-crypt packet id.
#[expect(
    clippy::too_many_arguments,
    reason = "one argument per OpenVPN header field"
)]
pub fn openvpn_control_packet(
    op: u8,
    session: u64,
    wrap: OvpnWrap,
    replay_pid: u32,
    acked: &[u32],
    remote: u64,
    msg_pid: Option<u32>,
    body: &[u8],
) -> Vec<u8> {
    // The part after the session id in plain mode (and, encrypted, in tls-crypt mode).
    let mut inner = vec![acked.len() as u8];
    for a in acked {
        inner.extend_from_slice(&a.to_be_bytes());
    }
    if !acked.is_empty() {
        inner.extend_from_slice(&remote.to_be_bytes());
    }
    if let Some(m) = msg_pid {
        inner.extend_from_slice(&m.to_be_bytes());
    }
    inner.extend_from_slice(body);
    let mut p = vec![op];
    p.extend_from_slice(&session.to_be_bytes());
    match wrap {
        OvpnWrap::Plain => p.extend_from_slice(&inner),
        OvpnWrap::TlsAuth { hmac_len } => {
            p.extend_from_slice(&random_bytes(hmac_len, session ^ replay_pid as u64));
            p.extend_from_slice(&replay_pid.to_be_bytes());
            p.extend_from_slice(&OVPN_NET_TIME.to_be_bytes());
            p.extend_from_slice(&inner);
        }
        OvpnWrap::TlsCrypt | OvpnWrap::TlsCryptV2 { .. } => {
            p.extend_from_slice(&replay_pid.to_be_bytes());
            p.extend_from_slice(&OVPN_NET_TIME.to_be_bytes());
            p.extend_from_slice(&random_bytes(32, session ^ 0x7a9 ^ replay_pid as u64));
            // Encrypted: same length, unrelated bytes.
            p.extend_from_slice(&random_bytes(
                inner.len(),
                session ^ 0xc1c ^ replay_pid as u64,
            ));
        }
    }
    p
}

/// The wrapped client key of tls-crypt-v2: `len` bytes ending in the length (big-endian).
pub fn openvpn_wkc(len: usize, seed: u64) -> Vec<u8> {
    assert!(len >= 2);
    let mut w = random_bytes(len, seed ^ 0x3c3c);
    let n = w.len();
    w[n - 2..].copy_from_slice(&(len as u16).to_be_bytes());
    w
}

/// The client's hard reset: v2 (0x38), or v3 (0x50) with the WKc under tls-crypt-v2.
/// Sizes: plain 14, tls-auth 22 + HMAC (42 with SHA1), tls-crypt 54, tls-crypt-v2 54 + WKc.
pub fn openvpn_client_reset(session: u64, wrap: OvpnWrap) -> Vec<u8> {
    match wrap {
        OvpnWrap::TlsCryptV2 { wkc_len } => {
            let mut p = openvpn_control_packet(
                ovpn_op::CLIENT_RESET_V3,
                session,
                wrap,
                OVPN_EARLY_NEG_START | 1,
                &[],
                0,
                Some(0),
                &[],
            );
            p.extend_from_slice(&openvpn_wkc(wkc_len, session));
            p
        }
        _ => openvpn_control_packet(
            ovpn_op::CLIENT_RESET_V2,
            session,
            wrap,
            1,
            &[],
            0,
            Some(0),
            &[],
        ),
    }
}

/// The v1 client hard reset (0x08), plain: 14 bytes.
pub fn openvpn_client_reset_v1(session: u64) -> Vec<u8> {
    openvpn_control_packet(
        ovpn_op::CLIENT_RESET_V1,
        session,
        OvpnWrap::Plain,
        1,
        &[],
        0,
        Some(0),
        &[],
    )
}

/// The server's hard reset v2 (0x40) answering `client_session`: it acknowledges the
/// client's packet 0 and echoes its session id. Sizes: plain 26, tls-auth 34 + HMAC (54 with
/// SHA1), tls-crypt 66, tls-crypt-v2 72 (an early-negotiation TLV is added).
pub fn openvpn_server_reset(session: u64, client_session: u64, wrap: OvpnWrap) -> Vec<u8> {
    let tlv: &[u8] = match wrap {
        OvpnWrap::TlsCryptV2 { .. } => &[0, 1, 0, 2, 0, 1],
        _ => &[],
    };
    openvpn_control_packet(
        ovpn_op::SERVER_RESET_V2,
        session,
        wrap,
        1,
        &[0],
        client_session,
        Some(0),
        tlv,
    )
}

/// The v1 server hard reset (0x10), plain: 26 bytes.
pub fn openvpn_server_reset_v1(session: u64, client_session: u64) -> Vec<u8> {
    openvpn_control_packet(
        ovpn_op::SERVER_RESET_V1,
        session,
        OvpnWrap::Plain,
        1,
        &[0],
        client_session,
        Some(0),
        &[],
    )
}

/// P_CONTROL_V1 (0x20) carrying `body_len` bytes of TLS, acknowledging the peer's packet 0.
pub fn openvpn_control(
    session: u64,
    peer_session: u64,
    wrap: OvpnWrap,
    replay_pid: u32,
    msg_pid: u32,
    body_len: usize,
) -> Vec<u8> {
    let mut body = random_bytes(body_len, session ^ msg_pid as u64);
    if let Some(first) = body.first_mut() {
        *first = 0x16; // a TLS handshake record
    }
    openvpn_control_packet(
        ovpn_op::CONTROL_V1,
        session,
        wrap,
        replay_pid,
        &[0],
        peer_session,
        Some(msg_pid),
        &body,
    )
}

/// P_ACK_V1 (0x28) acknowledging the peer's packet `acked`.
pub fn openvpn_ack(
    session: u64,
    peer_session: u64,
    wrap: OvpnWrap,
    replay_pid: u32,
    acked: u32,
) -> Vec<u8> {
    openvpn_control_packet(
        ovpn_op::ACK_V1,
        session,
        wrap,
        replay_pid,
        &[acked],
        peer_session,
        None,
        &[],
    )
}

/// P_CONTROL_WKC_V1 (0x58): tls-crypt-v2's first control packet, TLS then the WKc again.
pub fn openvpn_control_wkc(
    session: u64,
    peer_session: u64,
    body_len: usize,
    wkc_len: usize,
) -> Vec<u8> {
    let wrap = OvpnWrap::TlsCryptV2 { wkc_len };
    let body = random_bytes(body_len, session ^ 0x5858);
    let mut p = openvpn_control_packet(
        ovpn_op::CONTROL_WKC_V1,
        session,
        wrap,
        OVPN_EARLY_NEG_START | 2,
        &[0],
        peer_session,
        Some(1),
        &body,
    );
    p.extend_from_slice(&openvpn_wkc(wkc_len, session));
    p
}

/// P_DATA_V2 (0x48, key id 0): 3-byte peer id, 4-byte packet id, then ciphertext; `len`
/// bytes in all (108 for a ping in the fixtures).
pub fn openvpn_data_v2(peer_id: u32, packet_id: u32, len: usize) -> Vec<u8> {
    assert!(len >= 8);
    let mut p = vec![ovpn_op::DATA_V2];
    p.extend_from_slice(&peer_id.to_be_bytes()[1..]);
    p.extend_from_slice(&packet_id.to_be_bytes());
    p.extend_from_slice(&random_bytes(
        len - 8,
        (peer_id as u64) << 32 | packet_id as u64,
    ));
    p
}

/// P_DATA_V1 (0x30, key id 0) of `len` bytes.
pub fn openvpn_data_v1(seed: u64, len: usize) -> Vec<u8> {
    let mut p = random_bytes(len, seed ^ 0x3030);
    p[0] = ovpn_op::DATA_V1;
    p
}

/// OpenVPN over TCP: the packet behind its 2-byte length prefix.
pub fn tcp_framed(packet: &[u8]) -> Vec<u8> {
    let mut p = (packet.len() as u16).to_be_bytes().to_vec();
    p.extend_from_slice(packet);
    p
}

// ---------------------------------------------------------------------------------------
// IKE, ESP
// ---------------------------------------------------------------------------------------

/// Any IKE message of `len` bytes (>= 28): the 28-byte header, then pseudo-random payloads.
#[expect(
    clippy::too_many_arguments,
    reason = "one argument per IKE header field"
)]
pub fn ike_message(
    spi_i: u64,
    spi_r: u64,
    next_payload: u8,
    version: u8,
    exchange: u8,
    flags: u8,
    msg_id: u32,
    len: usize,
) -> Vec<u8> {
    assert!(len >= 28);
    let mut p = Vec::with_capacity(len);
    p.extend_from_slice(&spi_i.to_be_bytes());
    p.extend_from_slice(&spi_r.to_be_bytes());
    p.extend_from_slice(&[next_payload, version, exchange, flags]);
    p.extend_from_slice(&msg_id.to_be_bytes());
    p.extend_from_slice(&(len as u32).to_be_bytes());
    p.extend_from_slice(&random_bytes(len - 28, spi_i ^ spi_r ^ msg_id as u64));
    p
}

/// IKEv2 IKE_SA_INIT request (352 bytes from strongSwan): SA first, responder SPI zero.
pub fn ikev2_sa_init(spi_i: u64, len: usize) -> Vec<u8> {
    ike_message(spi_i, 0, 33, 0x20, 34, 0x08, 0, len)
}

/// IKEv2 IKE_SA_INIT response (248 bytes from strongSwan): response flag.
pub fn ikev2_sa_init_response(spi_i: u64, spi_r: u64, len: usize) -> Vec<u8> {
    ike_message(spi_i, spi_r, 33, 0x20, 34, 0x20, 0, len)
}

/// IKEv2 IKE_AUTH request (encrypted payload 46 first, message id 1).
pub fn ikev2_auth(spi_i: u64, spi_r: u64, len: usize) -> Vec<u8> {
    ike_message(spi_i, spi_r, 46, 0x20, 35, 0x08, 1, len)
}

/// IKEv1 main mode, first message (SA payload, responder cookie zero).
pub fn ikev1_main_mode(spi_i: u64, len: usize) -> Vec<u8> {
    ike_message(spi_i, 0, 1, 0x10, 2, 0, 0, len)
}

/// IKEv1 aggressive mode, first message.
pub fn ikev1_aggressive(spi_i: u64, len: usize) -> Vec<u8> {
    ike_message(spi_i, 0, 1, 0x10, 4, 0, 0, len)
}

/// An IKE message on UDP 4500: the 4-byte zero non-ESP marker, then IKE (RFC 3948).
pub fn non_esp_marker(ike: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 4];
    p.extend_from_slice(ike);
    p
}

/// The start of an IKE-over-TCP stream (RFC 8229): "IKETCP", then the first IKE message
/// framed with a 2-byte length (counting itself) and the non-ESP marker.
pub fn iketcp_stream_start(ike: &[u8]) -> Vec<u8> {
    let mut p = b"IKETCP".to_vec();
    p.extend_from_slice(&((2 + 4 + ike.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0; 4]);
    p.extend_from_slice(ike);
    p
}

/// ESP in UDP on 4500 (RFC 3948): SPI, sequence number, then ciphertext; `len` bytes.
pub fn esp_in_udp(spi: u32, seq: u32, len: usize) -> Vec<u8> {
    assert!(len >= 8);
    let mut p = spi.to_be_bytes().to_vec();
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&random_bytes(len - 8, (spi as u64) << 32 | seq as u64));
    p
}

/// The NAT-T keepalive: a single 0xFF byte.
pub fn nat_keepalive() -> Vec<u8> {
    vec![0xff]
}

// ---------------------------------------------------------------------------------------
// L2TP, PPTP
// ---------------------------------------------------------------------------------------

fn l2tp_avp(attr: u16, value: &[u8]) -> Vec<u8> {
    let len = 6 + value.len() as u16;
    let mut a = (0x8000 | len).to_be_bytes().to_vec();
    a.extend_from_slice(&0u16.to_be_bytes());
    a.extend_from_slice(&attr.to_be_bytes());
    a.extend_from_slice(value);
    a
}

/// An L2TPv2 control message (T, L, S bits: 0xC802): message type AVP first, then `avps`.
pub fn l2tp_control(
    tunnel: u16,
    session: u16,
    ns: u16,
    nr: u16,
    msg_type: u16,
    avps: &[u8],
) -> Vec<u8> {
    let mut body = l2tp_avp(0, &msg_type.to_be_bytes());
    body.extend_from_slice(avps);
    let len = 12 + body.len() as u16;
    let mut p = vec![0xc8, 0x02];
    for v in [len, tunnel, session, ns, nr] {
        p.extend_from_slice(&v.to_be_bytes());
    }
    p.extend_from_slice(&body);
    p
}

/// SCCRQ as xl2tpd sends it: tunnel 0, session 0, Ns 0, Nr 0, with protocol version, host
/// name, framing and bearer capabilities, firmware, vendor, assigned tunnel id and window.
pub fn l2tp_sccrq(assigned_tunnel: u16) -> Vec<u8> {
    let mut avps = Vec::new();
    avps.extend_from_slice(&l2tp_avp(2, &[1, 0]));
    avps.extend_from_slice(&l2tp_avp(3, &[0, 0, 0, 3]));
    avps.extend_from_slice(&l2tp_avp(4, &[0, 0, 0, 0]));
    avps.extend_from_slice(&l2tp_avp(6, &[0x06, 0x90]));
    avps.extend_from_slice(&l2tp_avp(7, b"vfrec-cli"));
    avps.extend_from_slice(&l2tp_avp(8, b"xelerance.com"));
    avps.extend_from_slice(&l2tp_avp(9, &assigned_tunnel.to_be_bytes()));
    avps.extend_from_slice(&l2tp_avp(10, &[0, 4]));
    l2tp_control(0, 0, 0, 0, 1, &avps)
}

/// SCCRP answering on `tunnel` (the client's assigned id).
pub fn l2tp_sccrp(tunnel: u16, assigned_tunnel: u16) -> Vec<u8> {
    let mut avps = Vec::new();
    avps.extend_from_slice(&l2tp_avp(2, &[1, 0]));
    avps.extend_from_slice(&l2tp_avp(7, b"vfrec-srv"));
    avps.extend_from_slice(&l2tp_avp(9, &assigned_tunnel.to_be_bytes()));
    l2tp_control(tunnel, 0, 0, 1, 2, &avps)
}

/// A zero-length-body acknowledgement (12 bytes).
pub fn l2tp_zlb(tunnel: u16, ns: u16, nr: u16) -> Vec<u8> {
    let mut p = vec![0xc8, 0x02];
    for v in [12u16, tunnel, 0, ns, nr] {
        p.extend_from_slice(&v.to_be_bytes());
    }
    p
}

/// An L2TPv3 control message over UDP (0xC803): length, control connection id, Ns, Nr,
/// then the message type AVP.
pub fn l2tpv3_control(connection_id: u32, msg_type: u16) -> Vec<u8> {
    let body = l2tp_avp(0, &msg_type.to_be_bytes());
    let len = 12 + body.len() as u16;
    let mut p = vec![0xc8, 0x03];
    p.extend_from_slice(&len.to_be_bytes());
    p.extend_from_slice(&connection_id.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0]);
    p.extend_from_slice(&body);
    p
}

/// A PPTP control message of `len` bytes: length, type 1 (control), magic cookie,
/// control message type, reserved, then pseudo-random fields.
pub fn pptp_control(ctrl_type: u16, len: usize) -> Vec<u8> {
    assert!(len >= 16);
    let mut p = (len as u16).to_be_bytes().to_vec();
    p.extend_from_slice(&[0, 1, 0x1a, 0x2b, 0x3c, 0x4d]);
    p.extend_from_slice(&ctrl_type.to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(&random_bytes(len - 12, ctrl_type as u64));
    p
}

/// Start-Control-Connection-Request (156 bytes): protocol version 1.0, capabilities, host
/// and vendor names.
pub fn pptp_sccrq() -> Vec<u8> {
    let mut p = vec![
        0x00, 0x9c, 0, 1, 0x1a, 0x2b, 0x3c, 0x4d, 0, 1, 0, 0, 1, 0, 0, 0,
    ];
    p.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1]);
    let mut host = [0u8; 64];
    host[..5].copy_from_slice(b"local");
    let mut vendor = [0u8; 64];
    vendor[..10].copy_from_slice(b"cananian\0\0");
    p.extend_from_slice(&host);
    p.extend_from_slice(&vendor);
    assert_eq!(p.len(), 156);
    p
}

/// Start-Control-Connection-Reply (156 bytes).
pub fn pptp_sccrp() -> Vec<u8> {
    let mut p = pptp_sccrq();
    p[9] = 2;
    p[14] = 1; // result code: success
    p
}

// ---------------------------------------------------------------------------------------
// Tailscale, OpenConnect/AnyConnect DTLS, SoftEther
// ---------------------------------------------------------------------------------------

/// A Tailscale disco packet of `len` bytes (>= 62): magic, sender key, nonce, sealed box.
pub fn tailscale_disco(len: usize) -> Vec<u8> {
    assert!(len >= 6);
    let mut p = vec![0x54, 0x53, 0xf0, 0x9f, 0x92, 0xac];
    p.extend_from_slice(&random_bytes(len - 6, len as u64 ^ 0xd15c0));
    p
}

/// A DTLS record carrying a ClientHello: record version, client version, a session id of
/// `session_id_len` bytes, a cookie of `cookie_len` bytes, the cipher suites, null
/// compression and `extensions` (already encoded, without the 2-byte total).
pub fn dtls_client_hello(
    record_version: u16,
    client_version: u16,
    session_id_len: u8,
    cookie_len: u8,
    suites: &[u16],
    extensions: &[u8],
) -> Vec<u8> {
    let mut body = client_version.to_be_bytes().to_vec();
    body.extend_from_slice(&random_bytes(32, 0xd71));
    body.push(session_id_len);
    body.extend_from_slice(&random_bytes(session_id_len as usize, 0x51d));
    body.push(cookie_len);
    body.extend_from_slice(&random_bytes(cookie_len as usize, 0xc00c));
    body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend_from_slice(&s.to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]);
    if !extensions.is_empty() {
        body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
        body.extend_from_slice(extensions);
    }
    // Handshake header: type 1, length, message sequence 0, fragment offset 0, fragment length.
    let blen = (body.len() as u32).to_be_bytes();
    let mut hs = vec![
        1, blen[1], blen[2], blen[3], 0, 0, 0, 0, 0, blen[1], blen[2], blen[3],
    ];
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16];
    rec.extend_from_slice(&record_version.to_be_bytes());
    rec.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

/// OpenConnect 9 against ocserv: record version FE FF, client_version FE FD, a 32-byte
/// session id, TLS_PSK_* suites, signature_algorithms, session_ticket, renegotiation_info and
/// record_size_limit (168 bytes, as in the fixture).
pub fn openconnect_dtls_client_hello() -> Vec<u8> {
    let suites = [
        0x00a9, 0xccab, 0xc0a5, 0x008d, 0x00a8, 0xc0a4, 0x008c, 0x00ae,
    ];
    let mut ext = vec![0x00, 0x0d, 0x00, 0x22, 0x00, 0x20];
    ext.extend_from_slice(&[
        0x04, 0x01, 0x08, 0x09, 0x08, 0x04, 0x04, 0x03, 0x08, 0x07, 0x05, 0x01, 0x08, 0x0a, 0x08,
        0x05, 0x05, 0x03, 0x08, 0x08, 0x06, 0x01, 0x08, 0x0b, 0x08, 0x06, 0x06, 0x03, 0x02, 0x01,
        0x02, 0x03,
    ]);
    ext.extend_from_slice(&[0x00, 0x23, 0x00, 0x00]);
    ext.extend_from_slice(&[0xff, 0x01, 0x00, 0x01, 0x00]);
    ext.extend_from_slice(&[0x00, 0x1c, 0x00, 0x02, 0x40, 0x00]);
    dtls_client_hello(0xfeff, 0xfefd, 32, 0, &suites, &ext)
}

/// Cisco AnyConnect's pre-standard DTLS (version 0x0100) ClientHello resuming the session
/// negotiated over CSTP (32-byte session id).
pub fn cisco_dtls_client_hello() -> Vec<u8> {
    dtls_client_hello(0x0100, 0x0100, 32, 0, &[0x0035, 0x002f, 0x000a], &[])
}

/// SoftEther's UDP acceleration announcement: "IP=<addr>,PORT=<port>" and a little more.
pub fn softether_udp(ip: &str, port: u16) -> Vec<u8> {
    let mut p = format!("IP={ip},PORT={port}").into_bytes();
    p.extend_from_slice(&random_bytes(8, port as u64));
    p
}

// ---------------------------------------------------------------------------------------
// The false-positive corpus: ordinary traffic that shares a byte or a size with a VPN
// ---------------------------------------------------------------------------------------

fn dns_name(name: &str) -> Vec<u8> {
    let mut q = Vec::new();
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q
}

/// A DNS query (RD set) for `name`, type A, with an EDNS OPT record.
pub fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut p = id.to_be_bytes().to_vec();
    p.extend_from_slice(&[0x01, 0x20, 0, 1, 0, 0, 0, 0, 0, 1]);
    p.extend_from_slice(&dns_name(name));
    p.extend_from_slice(&[0, 1, 0, 1]);
    p.extend_from_slice(&[0, 0, 0x29, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
    p
}

/// A DNS query without RD or EDNS (flags 0x0000), as some stub resolvers and probes send.
pub fn dns_query_plain(id: u16, name: &str) -> Vec<u8> {
    let mut p = id.to_be_bytes().to_vec();
    p.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    p.extend_from_slice(&dns_name(name));
    p.extend_from_slice(&[0, 1, 0, 1]);
    p
}

/// The answer to [`dns_query`]: `answers` A records for `name`.
pub fn dns_answer(id: u16, name: &str, answers: &[Ipv4Addr]) -> Vec<u8> {
    let mut p = id.to_be_bytes().to_vec();
    p.extend_from_slice(&[0x81, 0x80, 0, 1]);
    p.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0]);
    p.extend_from_slice(&dns_name(name));
    p.extend_from_slice(&[0, 1, 0, 1]);
    for a in answers {
        p.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0x0e, 0x10, 0, 4]);
        p.extend_from_slice(&a.octets());
    }
    p
}

fn quic_varint(v: u64) -> Vec<u8> {
    match v {
        0..=63 => vec![v as u8],
        64..=16383 => (0x4000 | v as u16).to_be_bytes().to_vec(),
        _ => (0x8000_0000 | v as u32).to_be_bytes().to_vec(),
    }
}

/// A QUIC v1 Initial (long header, first byte 0xC3), padded to `len` bytes (>= 1200 from a
/// client).
pub fn quic_initial(dcid: &[u8], scid: &[u8], len: usize) -> Vec<u8> {
    let mut p = vec![0xc3, 0, 0, 0, 1, dcid.len() as u8];
    p.extend_from_slice(dcid);
    p.push(scid.len() as u8);
    p.extend_from_slice(scid);
    p.push(0); // token length
    let rest = len - p.len() - 2;
    p.extend_from_slice(&quic_varint(rest as u64));
    let rest = len - p.len();
    p.extend_from_slice(&random_bytes(rest, 0x9c1c));
    p
}

/// A QUIC short-header (1-RTT) packet: `first` is the first byte as it appears on the wire
/// (0x40 fixed bit, spin bit, and five bits masked by header protection), then the
/// destination connection id, then protected packet number and payload; `len` bytes.
pub fn quic_short(first: u8, dcid: &[u8], len: usize, seed: u64) -> Vec<u8> {
    let mut p = vec![first];
    p.extend_from_slice(dcid);
    let rest = len - p.len();
    p.extend_from_slice(&random_bytes(rest, seed));
    p
}

/// A TLS 1.3 ClientHello (record version 03 01) with SNI `host`, padded to 517 bytes.
pub fn tls_client_hello(host: &str) -> Vec<u8> {
    let mut ext = Vec::new();
    let name = host.as_bytes();
    ext.extend_from_slice(&[0, 0]);
    ext.extend_from_slice(&((name.len() + 5) as u16).to_be_bytes());
    ext.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
    ext.push(0);
    ext.extend_from_slice(&(name.len() as u16).to_be_bytes());
    ext.extend_from_slice(name);
    ext.extend_from_slice(&[0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]); // supported_versions
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&random_bytes(32, 0x7151));
    body.push(32);
    body.extend_from_slice(&random_bytes(32, 0x7152));
    body.extend_from_slice(&[0, 6, 0x13, 0x01, 0x13, 0x02, 0x13, 0x03, 1, 0]);
    // Padding extension up to a 517-byte record.
    let fixed = 5 + 4 + body.len() + 2 + ext.len() + 4;
    let pad = 517usize.saturating_sub(fixed);
    ext.extend_from_slice(&[0x00, 0x15]);
    ext.extend_from_slice(&(pad as u16).to_be_bytes());
    ext.extend_from_slice(&vec![0u8; pad]);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    client_hello_record(&body)
}

/// A ClientHello handshake message around `body`, in one TLS record (version 03 01).
fn client_hello_record(body: &[u8]) -> Vec<u8> {
    let blen = (body.len() as u32).to_be_bytes();
    let mut hs = vec![1, blen[1], blen[2], blen[3]];
    hs.extend_from_slice(body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

/// A TLS extension: type, 2-byte length, data.
pub fn tls_extension(ty: u16, data: &[u8]) -> Vec<u8> {
    let mut e = ty.to_be_bytes().to_vec();
    e.extend_from_slice(&(data.len() as u16).to_be_bytes());
    e.extend_from_slice(data);
    e
}

/// The server_name extension (RFC 6066) naming `host`.
pub fn tls_sni_extension(host: &str) -> Vec<u8> {
    let n = host.as_bytes();
    let mut d = ((n.len() + 3) as u16).to_be_bytes().to_vec();
    d.push(0);
    d.extend_from_slice(&(n.len() as u16).to_be_bytes());
    d.extend_from_slice(n);
    tls_extension(0, &d)
}

/// A TLS 1.3 ClientHello record (record version 03 01, 32-byte session id, the three TLS
/// 1.3 suites) carrying `extensions` (whole, in order).
pub fn tls_client_hello_with(extensions: &[Vec<u8>], seed: u64) -> Vec<u8> {
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&random_bytes(32, seed));
    body.push(32);
    body.extend_from_slice(&random_bytes(32, seed ^ 1));
    body.extend_from_slice(&[0, 6, 0x13, 0x01, 0x13, 0x02, 0x13, 0x03, 1, 0]);
    let all = extensions.concat();
    body.extend_from_slice(&(all.len() as u16).to_be_bytes());
    body.extend_from_slice(&all);
    client_hello_record(&body)
}

/// A browser-like ClientHello with a post-quantum key share (X25519MLKEM768: 1,216 bytes of
/// ML-KEM key beside the X25519 share), as Chrome and Firefox send since 2024: about 1.8 KB,
/// two TCP segments at a 1,460-byte MSS. `sni_last`: the server_name extension comes after
/// the key share (in the second segment once split), else first (Chrome permutes them).
pub fn tls_client_hello_pq(host: &str, sni_last: bool, seed: u64) -> Vec<u8> {
    let mut ks = vec![0x04, 0xc4, 0x11, 0xec, 0x04, 0xc0];
    ks.extend_from_slice(&random_bytes(1216, seed ^ 2));
    ks.extend_from_slice(&[0x00, 0x1d, 0x00, 0x20]);
    ks.extend_from_slice(&random_bytes(32, seed ^ 3));
    let mut exts = vec![
        tls_extension(0x0a0a, &[]),
        tls_extension(0x0017, &[]),
        tls_extension(0xff01, &[0]),
        tls_extension(0x000a, &[0, 8, 0x11, 0xec, 0, 0x1d, 0, 0x17, 0, 0x18]),
        tls_extension(0x000b, &[1, 0]),
        tls_extension(0x0023, &[]),
        tls_extension(0x0010, b"\x00\x0c\x02h2\x08http/1.1"),
        tls_extension(0x0005, &[1, 0, 0, 0, 0]),
        tls_extension(0x000d, &[0, 8, 4, 3, 8, 4, 4, 1, 5, 3]),
        tls_extension(0x0012, &[]),
        tls_extension(0x0033, &ks),
        tls_extension(0x002d, &[1, 1]),
        tls_extension(0x002b, &[6, 0x2a, 0x2a, 3, 4, 3, 3]),
        tls_extension(0x001b, &[2, 0, 2]),
        tls_extension(0x4469, &[0, 3, 2, b'h', b'2']),
        tls_extension(0xfe0d, &random_bytes(300, seed ^ 4)),
    ];
    if sni_last {
        exts.push(tls_sni_extension(host));
    } else {
        exts.insert(1, tls_sni_extension(host));
    }
    exts.push(tls_extension(0x1a1a, &[0]));
    tls_client_hello_with(&exts, seed)
}

/// A STUN binding request (RFC 5389) with transaction id `tid`, USERNAME and FINGERPRINT
/// attributes as ICE sends it.
pub fn stun_binding_request(tid: [u8; 12]) -> Vec<u8> {
    let mut attrs = vec![0x00, 0x06, 0x00, 0x09];
    attrs.extend_from_slice(b"abcd:efgh\0\0\0");
    attrs.extend_from_slice(&[0x80, 0x28, 0x00, 0x04, 0x12, 0x34, 0x56, 0x78]);
    let mut p = vec![0x00, 0x01];
    p.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    p.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
    p.extend_from_slice(&tid);
    p.extend_from_slice(&attrs);
    p
}

/// WebRTC's DTLS 1.2 ClientHello (BoringSSL/NSS style): record FE FF, client FE FD, empty
/// session id, ECDHE suites, use_srtp and extended_master_secret. `cookie_len` is 0 in the
/// first flight and 32 after a HelloVerifyRequest.
pub fn webrtc_dtls_client_hello(cookie_len: u8) -> Vec<u8> {
    let mut ext = vec![
        0x00, 0x0e, 0x00, 0x07, 0x00, 0x04, 0x00, 0x01, 0x00, 0x07, 0x00,
    ];
    ext.extend_from_slice(&[0x00, 0x17, 0x00, 0x00]);
    ext.extend_from_slice(&[0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x1d]);
    dtls_client_hello(
        0xfeff,
        0xfefd,
        0,
        cookie_len,
        &[0xc02b, 0xc02f, 0xcca9, 0xcca8, 0xc009, 0xc013],
        &ext,
    )
}

/// An RTP packet (version 2) of `len` bytes.
pub fn rtp(payload_type: u8, seq: u16, timestamp: u32, ssrc: u32, len: usize) -> Vec<u8> {
    let mut p = vec![0x80, payload_type & 0x7f];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&timestamp.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&random_bytes(len - 12, ssrc as u64 ^ seq as u64));
    p
}

/// An NTP v4 client request (48 bytes, mode 3).
pub fn ntp_request() -> Vec<u8> {
    let mut p = vec![0u8; 48];
    p[0] = 0x23;
    fill_pseudo_random(&mut p[40..], 0x4e7);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const B: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

    #[test]
    fn ipv4_udp_frame_has_lengths_and_a_valid_header_checksum() {
        let f = Frame::eth().ipv4(A, B).udp(1, 2).payload(b"hello").build();
        assert_eq!(f.len(), 14 + 20 + 8 + 5);
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        assert_eq!(u16::from_be_bytes([f[16], f[17]]), 33, "total length");
        assert_eq!(checksum(&[&f[14..34]]), 0, "header checksum verifies");
        assert_eq!(u16::from_be_bytes([f[38], f[39]]), 13, "UDP length");
        let ph = PseudoHeader::V4(A, B).bytes(IPPROTO_UDP, 13);
        assert_eq!(checksum(&[&ph, &f[34..]]), 0, "UDP checksum verifies");
    }

    #[test]
    fn qinq_puts_the_service_tag_outside_the_customer_tag() {
        let f = Frame::eth().qinq(10, 20).ipv4(A, B).udp(1, 2).build();
        assert_eq!(
            &f[12..22],
            &[0x88, 0xa8, 0, 10, 0x81, 0x00, 0, 20, 0x08, 0x00]
        );
    }

    #[test]
    fn ipv4_options_grow_the_ihl_and_stay_checksummed() {
        let f = Frame::eth()
            .ipv4(A, B)
            .ipv4_options(&[0x94, 0x04, 0, 0, 1])
            .udp(1, 2)
            .build();
        assert_eq!(f[14], 0x47, "IHL 7 words");
        assert_eq!(checksum(&[&f[14..42]]), 0);
        assert_eq!(
            u16::from_be_bytes([f[42], f[43]]),
            1,
            "UDP follows the options"
        );
    }

    #[test]
    fn ipv4_fragment_fields_carry_mf_and_the_offset_in_eight_byte_units() {
        let f = Frame::eth()
            .ipv4(A, B)
            .fragment(true, 1480)
            .ip_proto(17)
            .payload(&[0; 8])
            .build();
        assert_eq!(u16::from_be_bytes([f[20], f[21]]), 0x2000 | 185);
    }

    #[test]
    fn ipv6_extension_headers_chain_to_the_upper_layer() {
        let f = Frame::eth()
            .ipv6(
                "2001:db8::1".parse().unwrap(),
                "2001:db8::2".parse().unwrap(),
            )
            .hop_by_hop()
            .routing()
            .dest_opts()
            .fragment(false, 0)
            .udp(7, 9)
            .payload(b"x")
            .build();
        let l3 = 14;
        assert_eq!(f[l3 + 6], IPPROTO_HOPOPTS);
        let mut off = l3 + 40;
        assert_eq!(f[off], IPPROTO_ROUTING);
        off += 8;
        assert_eq!(f[off], IPPROTO_DSTOPTS);
        off += 24;
        assert_eq!(f[off], IPPROTO_FRAGMENT);
        off += 8;
        assert_eq!(f[off], IPPROTO_UDP);
        off += 8;
        assert_eq!(u16::from_be_bytes([f[off + 2], f[off + 3]]), 9);
        assert_eq!(
            u16::from_be_bytes([f[l3 + 4], f[l3 + 5]]) as usize,
            f.len() - l3 - 40
        );
    }

    #[test]
    fn tcp_options_set_the_data_offset() {
        let f = Frame::eth()
            .ipv4(A, B)
            .tcp(1, 2)
            .tcp_syn_options()
            .payload(b"abc")
            .build();
        assert_eq!(f[34 + 12] >> 4, 10);
        assert_eq!(f.len(), 14 + 20 + 40 + 3);
    }

    #[test]
    fn openvpn_sizes_match_the_fixtures() {
        assert_eq!(openvpn_client_reset(1, OvpnWrap::Plain).len(), 14);
        assert_eq!(openvpn_server_reset(2, 1, OvpnWrap::Plain).len(), 26);
        assert_eq!(openvpn_client_reset(1, TLS_AUTH_SHA1).len(), 42);
        assert_eq!(openvpn_server_reset(2, 1, TLS_AUTH_SHA1).len(), 54);
        assert_eq!(openvpn_client_reset(1, OvpnWrap::TlsCrypt).len(), 54);
        assert_eq!(openvpn_server_reset(2, 1, OvpnWrap::TlsCrypt).len(), 66);
        let v2 = OvpnWrap::TlsCryptV2 { wkc_len: 299 };
        assert_eq!(openvpn_client_reset(1, v2).len(), 353);
        assert_eq!(openvpn_server_reset(2, 1, v2).len(), 72);
        assert_eq!(
            tcp_framed(&openvpn_client_reset(1, TLS_AUTH_SHA1)).len(),
            44
        );
    }

    #[test]
    fn openconnect_client_hello_matches_the_fixture_layout() {
        let p = openconnect_dtls_client_hello();
        assert_eq!(p.len(), 168);
        assert_eq!(&p[..3], &[0x16, 0xfe, 0xff]);
        assert_eq!(u16::from_be_bytes([p[11], p[12]]) as usize + 13, p.len());
        assert_eq!(&p[25..27], &[0xfe, 0xfd]);
        assert_eq!(p[59], 32, "session id length");
    }

    #[test]
    fn pptp_and_l2tp_lengths_are_self_consistent() {
        assert_eq!(u16::from_be_bytes([pptp_sccrq()[0], pptp_sccrq()[1]]), 156);
        let s = l2tp_sccrq(7);
        assert_eq!(u16::from_be_bytes([s[2], s[3]]) as usize, s.len());
        assert_eq!(&s[12..20], &[0x80, 0x08, 0, 0, 0, 0, 0, 1]);
    }
}
