//! The flow a frame belongs to, read the way the XDP program reads it (VLAN tags, IPv4, IPv6
//! extension headers, UDP/TCP ports), so replay groups packets into the flows the kernel
//! keeps state for and can address the kernel's flow entry.
//!
//! Verdicts never come from here: only the kernel program judges packets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use vpn_filter_common::{FlowKey, FAMILY_V4, FAMILY_V6};

const ETH_HLEN: usize = 14;
const MAX_VLAN_TAGS: usize = 2;
const MAX_EXT_HEADERS: usize = 6;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// Addresses and ports of one packet, in the direction it travelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub family: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub ip_proto: u8,
    /// Outermost VLAN id (0 untagged): flows in different VLANs are different flows.
    pub vlan: u16,
}

impl Tuple {
    pub fn src_ip(&self) -> IpAddr {
        ip(self.family, &self.src)
    }

    pub fn dst_ip(&self) -> IpAddr {
        ip(self.family, &self.dst)
    }

    /// The kernel's flow-map key for this packet: the lower (address, port) endpoint first,
    /// so both directions share one entry (as `flow_key` in the XDP program), with protocol
    /// 0; the kernel keeps one entry per VPN protocol under the same endpoints (see
    /// `replay::kernel::flow_entry`).
    pub fn flow_key(&self) -> FlowKey {
        let src_first = (self.src, self.sport) <= (self.dst, self.dport);
        let (a, ap, b, bp) = if src_first {
            (self.src, self.sport, self.dst, self.dport)
        } else {
            (self.dst, self.dport, self.src, self.sport)
        };
        FlowKey {
            lo_addr: a,
            hi_addr: b,
            lo_port: ap.to_be_bytes(),
            hi_port: bp.to_be_bytes(),
            ip_proto: self.ip_proto,
            family: self.family,
            protocol: 0,
            class: 0,
            vlan: self.vlan.to_be_bytes(),
            _pad2: [0; 2],
        }
    }
}

fn ip(family: u8, a: &[u8; 16]) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*a))
    }
}

/// The IP addresses, transport protocol and ports of an Ethernet frame; `None` for frames
/// that carry no IPv4/IPv6 header. Ports are zero for protocols without ports and for
/// non-first fragments.
pub fn tuple(frame: &[u8]) -> Option<Tuple> {
    let mut ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let mut l3 = ETH_HLEN;
    let mut vlan = 0;
    for i in 0..MAX_VLAN_TAGS {
        if ethertype != 0x8100 && ethertype != 0x88a8 {
            break;
        }
        if i == 0 {
            vlan = u16::from_be_bytes([*frame.get(l3)?, *frame.get(l3 + 1)?]) & 0x0fff;
        }
        ethertype = u16::from_be_bytes([*frame.get(l3 + 2)?, *frame.get(l3 + 3)?]);
        l3 += 4;
    }
    let mut t = Tuple {
        family: 0,
        src: [0; 16],
        dst: [0; 16],
        sport: 0,
        dport: 0,
        ip_proto: 0,
        vlan,
    };
    let (l4, first_fragment) = match ethertype {
        0x0800 => {
            let ip = frame.get(l3..l3 + 20)?;
            let ihl = ((ip[0] & 0x0f) as usize) * 4;
            if ip[0] >> 4 != 4 || ihl < 20 {
                return None;
            }
            t.family = FAMILY_V4;
            t.ip_proto = ip[9];
            t.src[..4].copy_from_slice(&ip[12..16]);
            t.dst[..4].copy_from_slice(&ip[16..20]);
            let offset = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff;
            (l3 + ihl, offset == 0)
        }
        0x86dd => {
            let ip = frame.get(l3..l3 + 40)?;
            if ip[0] >> 4 != 6 {
                return None;
            }
            t.family = FAMILY_V6;
            t.src.copy_from_slice(&ip[8..24]);
            t.dst.copy_from_slice(&ip[24..40]);
            let mut next = ip[6];
            let mut off = l3 + 40;
            let mut first = true;
            for _ in 0..MAX_EXT_HEADERS {
                match next {
                    0 | 43 | 60 => match frame.get(off..off + 2) {
                        Some(h) => {
                            next = h[0];
                            off += (h[1] as usize + 1) * 8;
                        }
                        None => break,
                    },
                    44 => match frame.get(off..off + 4) {
                        Some(h) => {
                            first = u16::from_be_bytes([h[2], h[3]]) & 0xfff8 == 0;
                            next = h[0];
                            off += 8;
                        }
                        None => break,
                    },
                    _ => break,
                }
            }
            t.ip_proto = next;
            (off, first)
        }
        _ => return None,
    };
    if first_fragment && (t.ip_proto == IPPROTO_UDP || t.ip_proto == IPPROTO_TCP) {
        if let Some(p) = frame.get(l4..l4 + 4) {
            t.sport = u16::from_be_bytes([p[0], p[1]]);
            t.dport = u16::from_be_bytes([p[2], p[3]]);
        }
    }
    Some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 8];
        f[12] = 0x08;
        f[14] = 0x45;
        f[14 + 9] = 17;
        f[14 + 12..14 + 16].copy_from_slice(&src);
        f[14 + 16..14 + 20].copy_from_slice(&dst);
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&dport.to_be_bytes());
        f
    }

    #[test]
    fn both_directions_share_one_flow_key() {
        let a = tuple(&udp4([10, 0, 0, 2], 40000, [10, 0, 0, 1], 51820)).expect("ipv4");
        let b = tuple(&udp4([10, 0, 0, 1], 51820, [10, 0, 0, 2], 40000)).expect("ipv4");
        assert_eq!(a.flow_key(), b.flow_key());
        assert_eq!(a.flow_key().lo_addr[..4], [10, 0, 0, 1]);
        assert_eq!(u16::from_be_bytes(a.flow_key().lo_port), 51820);
    }

    #[test]
    fn vlan_tagged_frame_is_read_past_its_tag() {
        let plain = udp4([10, 0, 0, 2], 1, [10, 0, 0, 1], 2);
        let mut tagged = plain[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]);
        tagged.extend_from_slice(&plain[12..]);
        let t = tuple(&tagged).expect("a tuple");
        assert_eq!(t.vlan, 7, "the VLAN id is part of the flow");
        assert_eq!(Some(Tuple { vlan: 0, ..t }), tuple(&plain));
    }

    #[test]
    fn later_fragment_has_no_ports() {
        let mut f = udp4([10, 0, 0, 2], 1, [10, 0, 0, 1], 2);
        f[14 + 7] = 0x10;
        let t = tuple(&f).expect("ipv4");
        assert_eq!((t.sport, t.dport), (0, 0));
    }

    #[test]
    fn arp_has_no_tuple() {
        let mut f = vec![0u8; 42];
        f[12] = 0x08;
        f[13] = 0x06;
        assert_eq!(tuple(&f), None);
    }
}
