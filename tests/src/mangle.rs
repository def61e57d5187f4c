//! Transformations of whole frames, as an operator's network or an adversary's stack would
//! apply them to a packet without changing what the receiver finally gets (issue 14): wrap
//! it in an encapsulation, fragment it, put IPv6 extension headers in front of its transport
//! header, split a TCP segment's payload over several segments, or take the Ethernet header
//! away (devices whose frames start at IP).
//!
//! Every function takes an Ethernet frame (as built by [`crate::packet::Frame`] or read from
//! a fixture, optionally VLAN-tagged) and returns new frames with every length and checksum
//! recomputed. They panic on frames they were not written for (a test bug, not a verdict).

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::packet::{
    checksum, ext_bytes, ext_number, Ext, Frame, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6,
    IPPROTO_FRAGMENT, IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_TCP,
};

pub const ETH_P_PPPOE_SESSION: u16 = 0x8864;
pub const ETH_P_MPLS_UC: u16 = 0x8847;
/// Transparent Ethernet bridging: GRE and Geneve carrying an Ethernet frame.
pub const ETH_P_TEB: u16 = 0x6558;
pub const ETH_P_9100: u16 = 0x9100;
pub const IPPROTO_IPIP: u8 = 4;
pub const IPPROTO_IPV6: u8 = 41;
pub const VXLAN_PORT: u16 = 4789;
pub const GENEVE_PORT: u16 = 6081;

/// Tunnel endpoints of the outer headers: never registered in any test.
pub const TUNNEL_V4: (Ipv4Addr, Ipv4Addr) =
    (Ipv4Addr::new(192, 0, 2, 201), Ipv4Addr::new(192, 0, 2, 202));
pub const TUNNEL_V6: (Ipv6Addr, Ipv6Addr) = (
    Ipv6Addr::new(0x2001, 0xdb8, 0xeeee, 0, 0, 0, 0, 0x201),
    Ipv6Addr::new(0x2001, 0xdb8, 0xeeee, 0, 0, 0, 0, 0x202),
);

// ---------------------------------------------------------------------------------------
// Taking frames apart
// ---------------------------------------------------------------------------------------

/// Where the network layer of an Ethernet frame starts (after any VLAN tags) and its
/// ethertype.
pub fn l3(frame: &[u8]) -> (usize, u16) {
    let mut at = 12;
    loop {
        let ethertype = u16::from_be_bytes([frame[at], frame[at + 1]]);
        match ethertype {
            ETH_P_8021Q | ETH_P_8021AD | ETH_P_9100 => at += 4,
            _ => return (at + 2, ethertype),
        }
    }
}

/// The IP packet of a frame (IPv4 or IPv6), or `None` for anything else (ARP...).
pub fn ip_packet(frame: &[u8]) -> Option<&[u8]> {
    let (at, ethertype) = l3(frame);
    matches!(ethertype, ETH_P_IP | ETH_P_IPV6).then(|| &frame[at..])
}

/// A frame as a device whose frames start at the IP header sees it (tun, wireguard, ppp).
pub fn strip_ethernet(frame: &[u8]) -> Vec<u8> {
    ip_packet(frame)
        .unwrap_or_else(|| panic!("strip_ethernet: not an IP frame: {frame:02x?}"))
        .to_vec()
}

fn ip_ethertype(packet: &[u8]) -> u16 {
    match packet[0] >> 4 {
        4 => ETH_P_IP,
        6 => ETH_P_IPV6,
        v => panic!("IP version {v}"),
    }
}

/// An Ethernet frame with the MACs of `like`, then `ethertype` and `body`.
fn ethernet(like: &[u8], ethertype: u16, body: &[u8]) -> Vec<u8> {
    let mut f = like[..12].to_vec();
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(body);
    f
}

// ---------------------------------------------------------------------------------------
// Encapsulations
// ---------------------------------------------------------------------------------------

/// Optional fields of a GRE version 0 header (RFC 2784, RFC 2890).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct GreFields {
    pub checksum: bool,
    pub key: bool,
    pub sequence: bool,
}

impl GreFields {
    pub const ALL: GreFields = GreFields {
        checksum: true,
        key: true,
        sequence: true,
    };
}

/// An encapsulation the operators' networks put around a packet. IP-level ones (PPPoE,
/// MPLS, IP-in-IP, GRE carrying IP) carry the frame's IP packet; the others (VLAN tags, GRE
/// carrying Ethernet, VXLAN, Geneve) carry the whole frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Encap {
    /// PPPoE session (ethertype 0x8864), PPP protocol 0x0021 or 0x0057.
    Pppoe,
    /// VLAN tags with these TPIDs, outermost first (in front of any tags the frame has).
    Vlans(Vec<u16>),
    /// An MPLS label stack of this many labels (1..=4), the last with bottom-of-stack.
    Mpls(u8),
    /// IP in IP: IPv4 or IPv6 (`outer_v6`) outer header, protocol 4 or 41 by the inner
    /// packet's version (IP-in-IP, 6in4, 4in6, 6in6).
    IpInIp { outer_v6: bool },
    /// GRE version 0 over IPv4 or IPv6, carrying the IP packet (0x0800/0x86DD) or, with
    /// `ethernet`, the whole frame (0x6558).
    Gre {
        outer_v6: bool,
        ethernet: bool,
        fields: GreFields,
    },
    /// VXLAN (UDP 4789) over IPv4: 8-byte header with the I flag, then the frame.
    Vxlan,
    /// Geneve (UDP 6081) over IPv4, protocol 0x6558, with or without an 8-byte option.
    Geneve { options: bool },
}

impl Encap {
    /// One of each kind and variant the parser must peel (issue 14, item 5).
    pub fn all() -> Vec<Encap> {
        let mut all = vec![
            Encap::Pppoe,
            Encap::Vlans(vec![ETH_P_8021AD, ETH_P_8021Q]),
            Encap::Vlans(vec![ETH_P_9100, ETH_P_8021Q]),
            Encap::Vlans(vec![ETH_P_8021AD, ETH_P_8021Q, ETH_P_8021Q]),
            Encap::Vlans(vec![ETH_P_9100, ETH_P_8021AD, ETH_P_8021Q]),
            Encap::Vlans(vec![ETH_P_9100, ETH_P_9100, ETH_P_9100]),
        ];
        all.extend((1..=4).map(Encap::Mpls));
        for outer_v6 in [false, true] {
            all.push(Encap::IpInIp { outer_v6 });
            for ethernet in [false, true] {
                for fields in [GreFields::default(), GreFields::ALL] {
                    all.push(Encap::Gre {
                        outer_v6,
                        ethernet,
                        fields,
                    });
                }
            }
        }
        all.push(Encap::Gre {
            outer_v6: false,
            ethernet: false,
            fields: GreFields {
                key: true,
                ..Default::default()
            },
        });
        all.push(Encap::Gre {
            outer_v6: false,
            ethernet: false,
            fields: GreFields {
                checksum: true,
                ..Default::default()
            },
        });
        all.push(Encap::Gre {
            outer_v6: false,
            ethernet: false,
            fields: GreFields {
                sequence: true,
                ..Default::default()
            },
        });
        all.extend([
            Encap::Vxlan,
            Encap::Geneve { options: false },
            Encap::Geneve { options: true },
        ]);
        all
    }

    /// A short name for messages, e.g. `gre/v6/eth/csum+key+seq`.
    pub fn name(&self) -> String {
        match self {
            Encap::Pppoe => "pppoe".into(),
            Encap::Vlans(tpids) => {
                let t: Vec<String> = tpids.iter().map(|t| format!("{t:#06x}")).collect();
                format!("vlans[{}]", t.join(","))
            }
            Encap::Mpls(n) => format!("mpls x{n}"),
            Encap::IpInIp { outer_v6 } => format!("ip-in-ip/{}", v(*outer_v6)),
            Encap::Gre {
                outer_v6,
                ethernet,
                fields,
            } => {
                let mut f = Vec::new();
                if fields.checksum {
                    f.push("csum");
                }
                if fields.key {
                    f.push("key");
                }
                if fields.sequence {
                    f.push("seq");
                }
                format!(
                    "gre/{}/{}/{}",
                    v(*outer_v6),
                    if *ethernet { "eth" } else { "ip" },
                    if f.is_empty() {
                        "plain".into()
                    } else {
                        f.join("+")
                    }
                )
            }
            Encap::Vxlan => "vxlan".into(),
            Encap::Geneve { options } => {
                format!("geneve{}", if *options { "+opt" } else { "" })
            }
        }
    }

    /// Whether the program counts a packet inside this encapsulation as `encapsulated`: VLAN
    /// stacks are an L2 detail of the access network, named in events but not counted
    /// (`Counter::Encapsulated` lists PPPoE, MPLS, IP-in-IP, GRE, VXLAN and Geneve).
    pub fn counted_as_encapsulated(&self) -> bool {
        !matches!(self, Encap::Vlans(_))
    }

    /// Whether this encapsulation carries only IP packets (a non-IP frame cannot be put in).
    pub fn carries_ip_only(&self) -> bool {
        match self {
            Encap::Pppoe | Encap::Mpls(_) | Encap::IpInIp { .. } => true,
            Encap::Gre { ethernet, .. } => !ethernet,
            Encap::Vlans(_) | Encap::Vxlan | Encap::Geneve { .. } => false,
        }
    }

    /// `frame` inside this encapsulation. Frames an IP-only encapsulation cannot carry (ARP)
    /// are returned unchanged.
    pub fn wrap(&self, frame: &[u8]) -> Vec<u8> {
        if self.carries_ip_only() && ip_packet(frame).is_none() {
            return frame.to_vec();
        }
        let ip = || ip_packet(frame).expect("checked above");
        match self {
            Encap::Pppoe => pppoe(frame, ip()),
            Encap::Vlans(tpids) => vlans(frame, tpids),
            Encap::Mpls(labels) => mpls(frame, ip(), *labels),
            Encap::IpInIp { outer_v6 } => {
                let inner = ip();
                let proto = match ip_ethertype(inner) {
                    ETH_P_IP => IPPROTO_IPIP,
                    _ => IPPROTO_IPV6,
                };
                outer_ip(*outer_v6).ip_proto(proto).payload(inner).build()
            }
            Encap::Gre {
                outer_v6,
                ethernet,
                fields,
            } => {
                let (proto, inner) = if *ethernet {
                    (ETH_P_TEB, frame)
                } else {
                    (ip_ethertype(ip()), ip())
                };
                let gre = gre(proto, *fields, inner);
                let header_len = gre.len() - inner.len();
                outer_ip(*outer_v6)
                    .gre_raw(&gre[..header_len])
                    .payload(inner)
                    .build()
            }
            Encap::Vxlan => {
                let mut p = vec![0x08, 0, 0, 0, 0, 0x12, 0x34, 0];
                p.extend_from_slice(frame);
                outer_ip(false)
                    .udp(entropy_port(frame), VXLAN_PORT)
                    .payload(&p)
                    .build()
            }
            Encap::Geneve { options } => {
                let opt: &[u8] = if *options {
                    // Class 0x0103, type 0x80 (critical bit clear), 4 bytes of data.
                    &[0x01, 0x03, 0x80, 0x01, 0xde, 0xad, 0xbe, 0xef]
                } else {
                    &[]
                };
                let mut p = vec![(opt.len() / 4) as u8, 0];
                p.extend_from_slice(&ETH_P_TEB.to_be_bytes());
                p.extend_from_slice(&[0, 0x56, 0x78, 0]);
                p.extend_from_slice(opt);
                p.extend_from_slice(frame);
                outer_ip(false)
                    .udp(entropy_port(frame), GENEVE_PORT)
                    .payload(&p)
                    .build()
            }
        }
    }
}

fn v(v6: bool) -> &'static str {
    if v6 {
        "v6"
    } else {
        "v4"
    }
}

/// The outer Ethernet + IP header between the tunnel endpoints.
fn outer_ip(v6: bool) -> Frame {
    if v6 {
        Frame::eth().ipv6(TUNNEL_V6.0, TUNNEL_V6.1)
    } else {
        Frame::eth().ipv4(TUNNEL_V4.0, TUNNEL_V4.1)
    }
}

/// A source port from the inner frame's bytes, as tunnel endpoints pick one for ECMP.
fn entropy_port(frame: &[u8]) -> u16 {
    49152 | (checksum(&[frame]) & 0x3fff)
}

fn pppoe(frame: &[u8], ip: &[u8]) -> Vec<u8> {
    let ppp_proto: u16 = match ip_ethertype(ip) {
        ETH_P_IP => 0x0021,
        _ => 0x0057,
    };
    // Version 1, type 1, code 0 (session data), session id, length of the PPP frame.
    let mut b = vec![0x11, 0x00, 0x2a, 0x2a];
    b.extend_from_slice(&((2 + ip.len()) as u16).to_be_bytes());
    b.extend_from_slice(&ppp_proto.to_be_bytes());
    b.extend_from_slice(ip);
    ethernet(frame, ETH_P_PPPOE_SESSION, &b)
}

fn vlans(frame: &[u8], tpids: &[u16]) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    for (i, tpid) in tpids.iter().enumerate() {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&(100 + i as u16).to_be_bytes());
    }
    f.extend_from_slice(&frame[12..]);
    f
}

fn mpls(frame: &[u8], ip: &[u8], labels: u8) -> Vec<u8> {
    assert!((1..=4).contains(&labels), "1 to 4 MPLS labels");
    let mut b = Vec::new();
    for i in 0..labels {
        let label = 1000 + u32::from(i);
        let bottom = u32::from(i + 1 == labels);
        let entry = (label << 12) | (bottom << 8) | 64;
        b.extend_from_slice(&entry.to_be_bytes());
    }
    b.extend_from_slice(ip);
    ethernet(frame, ETH_P_MPLS_UC, &b)
}

/// A GRE version 0 header carrying `proto`, then `inner`; the checksum (when present)
/// covers both.
fn gre(proto: u16, fields: GreFields, inner: &[u8]) -> Vec<u8> {
    let mut flags = 0u8;
    if fields.checksum {
        flags |= 0x80;
    }
    if fields.key {
        flags |= 0x20;
    }
    if fields.sequence {
        flags |= 0x10;
    }
    let mut b = vec![flags, 0];
    b.extend_from_slice(&proto.to_be_bytes());
    if fields.checksum {
        b.extend_from_slice(&[0, 0, 0, 0]);
    }
    if fields.key {
        b.extend_from_slice(&0x0000_beefu32.to_be_bytes());
    }
    if fields.sequence {
        b.extend_from_slice(&7u32.to_be_bytes());
    }
    b.extend_from_slice(inner);
    if fields.checksum {
        let c = checksum(&[&b]);
        b[4..6].copy_from_slice(&c.to_be_bytes());
    }
    b
}

// ---------------------------------------------------------------------------------------
// IP headers in place
// ---------------------------------------------------------------------------------------

/// Rewrites the IPv4 total length and header checksum of the packet at `at`.
fn fix_ipv4(frame: &mut [u8], at: usize) {
    let ihl = (frame[at] & 0x0f) as usize * 4;
    let total = (frame.len() - at) as u16;
    frame[at + 2..at + 4].copy_from_slice(&total.to_be_bytes());
    frame[at + 10..at + 12].copy_from_slice(&[0, 0]);
    let c = checksum(&[&frame[at..at + ihl]]);
    frame[at + 10..at + 12].copy_from_slice(&c.to_be_bytes());
}

/// Rewrites the IPv6 payload length of the packet at `at`.
fn fix_ipv6(frame: &mut [u8], at: usize) {
    let plen = (frame.len() - at - 40) as u16;
    frame[at + 4..at + 6].copy_from_slice(&plen.to_be_bytes());
}

/// The unfragmentable part of an IPv6 packet (fixed header, hop-by-hop and routing headers):
/// its length, and the offset of the Next Header field that names what follows it.
fn ipv6_unfragmentable(packet: &[u8]) -> (usize, usize) {
    let (mut len, mut next_at) = (40, 6);
    while matches!(packet[next_at], IPPROTO_HOPOPTS | IPPROTO_ROUTING) {
        next_at = len;
        len += (packet[len + 1] as usize + 1) * 8;
    }
    (len, next_at)
}

// ---------------------------------------------------------------------------------------
// Fragments
// ---------------------------------------------------------------------------------------

/// Fragments an IP frame: every fragment but the last carries the next of `sizes` bytes of
/// the fragmentable part (the transport header included), each a multiple of 8; the last
/// carries the rest. IPv4 fragments keep the header (DF cleared, identification `id`);
/// IPv6 fragments get a fragment header with identification `id` after the unfragmentable
/// part.
pub fn fragment(frame: &[u8], sizes: &[usize], id: u32) -> Vec<Vec<u8>> {
    let (at, ethertype) = l3(frame);
    let packet = &frame[at..];
    let (header_len, next_at) = match ethertype {
        ETH_P_IP => ((packet[0] & 0x0f) as usize * 4, None),
        ETH_P_IPV6 => {
            let (len, next_at) = ipv6_unfragmentable(packet);
            (len, Some(next_at))
        }
        e => panic!("fragment: ethertype {e:#06x} is not IP"),
    };
    let data = &packet[header_len..];
    let mut pieces = Vec::new();
    let mut offset = 0;
    for &size in sizes {
        assert!(
            size > 0 && size.is_multiple_of(8),
            "fragment sizes are positive multiples of 8: {size}"
        );
        assert!(
            offset + size < data.len(),
            "fragments {sizes:?} of {}",
            data.len()
        );
        pieces.push((offset, &data[offset..offset + size], true));
        offset += size;
    }
    pieces.push((offset, &data[offset..], false));
    pieces
        .into_iter()
        .map(|(offset, piece, more)| {
            let mut f = frame[..at].to_vec();
            match next_at {
                None => {
                    f.extend_from_slice(&packet[..header_len]);
                    f[at + 4..at + 6].copy_from_slice(&(id as u16).to_be_bytes());
                    let field = (offset / 8) as u16 | if more { 0x2000 } else { 0 };
                    f[at + 6..at + 8].copy_from_slice(&field.to_be_bytes());
                    f.extend_from_slice(piece);
                    fix_ipv4(&mut f, at);
                }
                Some(next_at) => {
                    f.extend_from_slice(&packet[..header_len]);
                    let next = f[at + next_at];
                    f[at + next_at] = IPPROTO_FRAGMENT;
                    f.extend_from_slice(&ext_bytes(
                        &Ext::Fragment {
                            offset: offset as u16,
                            more,
                            id,
                        },
                        next,
                    ));
                    f.extend_from_slice(piece);
                    fix_ipv6(&mut f, at);
                }
            }
            f
        })
        .collect()
}

/// The size of the transport header of an IP frame's packet (8 for UDP, the data offset for
/// TCP), for choosing fragment sizes by payload.
pub fn transport_header_len(frame: &[u8]) -> usize {
    let (l4, proto) = transport(frame);
    match proto {
        IPPROTO_TCP => (frame[l4 + 12] >> 4) as usize * 4,
        _ => 8,
    }
}

/// Where the transport header of an IP frame starts and its protocol number (IPv6 extension
/// headers are walked).
pub fn transport(frame: &[u8]) -> (usize, u8) {
    let (at, ethertype) = l3(frame);
    match ethertype {
        ETH_P_IP => (at + (frame[at] & 0x0f) as usize * 4, frame[at + 9]),
        ETH_P_IPV6 => {
            let (mut next, mut pos) = (frame[at + 6], at + 40);
            while matches!(next, 0 | 43 | 60) {
                next = frame[pos];
                pos += (frame[pos + 1] as usize + 1) * 8;
            }
            if next == IPPROTO_FRAGMENT {
                next = frame[pos];
                pos += 8;
            }
            (pos, next)
        }
        e => panic!("transport: ethertype {e:#06x} is not IP"),
    }
}

// ---------------------------------------------------------------------------------------
// IPv6 extension headers
// ---------------------------------------------------------------------------------------

/// `exts` inserted in front of the existing chain of an IPv6 frame (after the fixed header).
pub fn insert_ext_headers(frame: &[u8], exts: &[Ext]) -> Vec<u8> {
    let (at, ethertype) = l3(frame);
    assert_eq!(ethertype, ETH_P_IPV6, "insert_ext_headers: not IPv6");
    let mut f = frame[..at + 40].to_vec();
    let mut next = frame[at + 6];
    let mut chain = Vec::new();
    for e in exts.iter().rev() {
        chain.splice(0..0, ext_bytes(e, next));
        next = ext_number(e);
    }
    f[at + 6] = next;
    f.extend_from_slice(&chain);
    f.extend_from_slice(&frame[at + 40..]);
    fix_ipv6(&mut f, at);
    f
}

// ---------------------------------------------------------------------------------------
// TCP segmentation
// ---------------------------------------------------------------------------------------

/// The TCP payload of an IP frame, its start offset, and the IP header's start.
fn tcp_parts(frame: &[u8]) -> (usize, usize, usize) {
    let (at, _) = l3(frame);
    let (l4, proto) = transport(frame);
    assert_eq!(proto, IPPROTO_TCP, "not a TCP segment");
    let data = l4 + (frame[l4 + 12] >> 4) as usize * 4;
    (at, l4, data)
}

/// The TCP payload of a frame (empty for a bare ACK/SYN).
pub fn tcp_payload(frame: &[u8]) -> &[u8] {
    let (_, _, data) = tcp_parts(frame);
    &frame[data..]
}

/// Splits a TCP segment's payload at `cuts` (strictly increasing offsets inside the
/// payload): one segment per piece, each with its sequence number advanced by its offset,
/// PSH only on the last, lengths and checksums recomputed.
pub fn split_tcp(frame: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let (at, l4, data) = tcp_parts(frame);
    let payload = &frame[data..];
    let mut bounds = vec![0];
    for &c in cuts {
        assert!(
            c > *bounds.last().expect("non-empty") && c < payload.len(),
            "split_tcp: cuts {cuts:?} in a payload of {}",
            payload.len()
        );
        bounds.push(c);
    }
    bounds.push(payload.len());
    let seq = u32::from_be_bytes(frame[l4 + 4..l4 + 8].try_into().expect("4 bytes"));
    bounds
        .windows(2)
        .enumerate()
        .map(|(i, w)| {
            let mut f = frame[..data].to_vec();
            f.extend_from_slice(&payload[w[0]..w[1]]);
            let s = seq.wrapping_add(w[0] as u32);
            f[l4 + 4..l4 + 8].copy_from_slice(&s.to_be_bytes());
            if i + 2 < bounds.len() {
                f[l4 + 13] &= !0x08;
            }
            fix_ip_and_tcp(&mut f, at, l4);
            f
        })
        .collect()
}

/// Recomputes the IP lengths (and IPv4 checksum) and the TCP checksum of a frame whose TCP
/// header starts at `l4`.
fn fix_ip_and_tcp(f: &mut [u8], at: usize, l4: usize) {
    let tcp_len = (f.len() - l4) as u16;
    let mut pseudo = Vec::with_capacity(40);
    if f[at] >> 4 == 4 {
        fix_ipv4(f, at);
        pseudo.extend_from_slice(&f[at + 12..at + 20]);
        pseudo.extend_from_slice(&[0, IPPROTO_TCP]);
        pseudo.extend_from_slice(&tcp_len.to_be_bytes());
    } else {
        fix_ipv6(f, at);
        pseudo.extend_from_slice(&f[at + 8..at + 40]);
        pseudo.extend_from_slice(&(tcp_len as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, IPPROTO_TCP]);
    }
    f[l4 + 16..l4 + 18].copy_from_slice(&[0, 0]);
    let c = checksum(&[&pseudo, &f[l4..]]);
    f[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{dns_query, IPPROTO_DSTOPTS, IPPROTO_UDP};

    const C4: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
    const S4: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);

    fn tcp_frame(payload: &[u8]) -> Vec<u8> {
        Frame::eth()
            .ipv4(C4, S4)
            .tcp(40000, 443)
            .tcp_seq(1000, 1)
            .payload(payload)
            .build()
    }

    #[test]
    fn split_segments_are_what_the_builder_makes_of_each_piece() {
        let payload: Vec<u8> = (0..100).collect();
        let segments = split_tcp(&tcp_frame(&payload), &[1, 30]);
        let built = |seq: u32, piece: &[u8], flags: u8| {
            Frame::eth()
                .ipv4(C4, S4)
                .tcp(40000, 443)
                .tcp_seq(seq, 1)
                .tcp_flags(flags)
                .payload(piece)
                .build()
        };
        assert_eq!(segments[0], built(1000, &payload[..1], 0x10));
        assert_eq!(segments[1], built(1001, &payload[1..30], 0x10));
        assert_eq!(segments[2], built(1030, &payload[30..], 0x18));
    }

    #[test]
    fn fragments_reassemble_to_the_original_payload() {
        let frame = Frame::eth()
            .ipv4(C4, S4)
            .udp(53, 40000)
            .payload(&[7u8; 300])
            .build();
        let frags = fragment(&frame, &[80, 96], 9);
        assert_eq!(frags.len(), 3);
        let mut data = Vec::new();
        for (i, f) in frags.iter().enumerate() {
            let field = u16::from_be_bytes([f[20], f[21]]);
            assert_eq!((field & 0x1fff) as usize * 8, data.len(), "offset of {i}");
            assert_eq!(field & 0x2000 != 0, i < 2, "MF of {i}");
            assert_eq!(checksum(&[&f[14..34]]), 0, "header checksum of {i}");
            data.extend_from_slice(&f[34..]);
        }
        assert_eq!(data, frame[34..]);
    }

    #[test]
    fn ipv6_fragment_header_follows_the_hop_by_hop_header() {
        let frame = Frame::eth()
            .ipv6(TUNNEL_V6.0, TUNNEL_V6.1)
            .hop_by_hop()
            .udp(53, 40000)
            .payload(&dns_query(1, "example.com"))
            .build();
        let frags = fragment(&frame, &[16], 5);
        let first = &frags[0];
        assert_eq!(first[14 + 6], IPPROTO_HOPOPTS);
        assert_eq!(first[54], IPPROTO_FRAGMENT, "hop-by-hop's next header");
        assert_eq!(first[62], IPPROTO_UDP, "fragment header's next header");
        assert_eq!(&first[70..], &frame[62..78]);
        assert_eq!(
            u16::from_be_bytes([first[18], first[19]]) as usize,
            first.len() - 54
        );
    }

    #[test]
    fn inserted_extension_headers_chain_to_the_transport() {
        let frame = Frame::eth()
            .ipv6(TUNNEL_V6.0, TUNNEL_V6.1)
            .udp(53, 40000)
            .payload(&[1; 20])
            .build();
        let with = insert_ext_headers(
            &frame,
            &[Ext::HopByHop { len8: 0 }, Ext::DestOpts { len8: 63 }],
        );
        let built = Frame::eth()
            .ipv6(TUNNEL_V6.0, TUNNEL_V6.1)
            .hop_by_hop()
            .ext(Ext::DestOpts { len8: 63 })
            .udp(53, 40000)
            .payload(&[1; 20])
            .build();
        assert_eq!(with, built);
        assert_eq!(transport(&with), (14 + 40 + 8 + 512, IPPROTO_UDP));
        assert_eq!(with[14 + 40 + 8], IPPROTO_UDP);
        assert_eq!(with[14 + 40], IPPROTO_DSTOPTS);
    }

    #[test]
    fn gre_checksum_covers_header_and_payload() {
        let frame = Frame::eth()
            .ipv4(C4, S4)
            .udp(1, 2)
            .payload(&[3; 10])
            .build();
        let wrapped = Encap::Gre {
            outer_v6: false,
            ethernet: false,
            fields: GreFields::ALL,
        }
        .wrap(&frame);
        assert_eq!(checksum(&[&wrapped[34..]]), 0);
        assert_eq!(&wrapped[34 + 16..], &frame[14..]);
    }
}
