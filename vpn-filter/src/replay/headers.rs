//! The flow a frame belongs to, read with the XDP program's own parser, so replay groups
//! packets into the flows the kernel keeps state for and can address the kernel's flow entry.
//!
//! Verdicts never come from here: only the kernel program judges packets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use vpn_filter_common::{FlowKey, FAMILY_V4};
use vpn_filter_ebpf::parse::{parse, Packet, FRAG_LATER, IPPROTO_TCP, IPPROTO_UDP};

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

    /// The kernel's flow-map key for this packet (`FlowKey::canonical`, as the XDP program
    /// makes it), with protocol 0; the kernel keeps one entry per VPN protocol under the same
    /// endpoints (see `replay::kernel::flow_entry`).
    pub fn flow_key(&self) -> FlowKey {
        let t = self;
        FlowKey::canonical(
            &t.src, t.sport, &t.dst, t.dport, t.ip_proto, t.family, t.vlan, 0, 0,
        )
        .0
    }
}

fn ip(family: u8, a: &[u8; 16]) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*a))
    }
}

/// The IP addresses, transport protocol and ports of an Ethernet frame, read by the XDP
/// program's own parser (`vpn_filter_ebpf::parse`: VLAN stacks, PPPoE, MPLS, one tunnel
/// level, IPv6 extension headers); `None` for frames that carry no IPv4/IPv6 header. Ports
/// are zero for protocols without ports, for non-first fragments and for headers the kernel
/// does not judge (truncated, malformed).
pub fn tuple(frame: &[u8]) -> Option<Tuple> {
    let mut pkt = Packet::default();
    let parsed = parse(frame, false, &mut pkt);
    if pkt.family == 0 {
        return None;
    }
    let ports = parsed.is_ok()
        && pkt.frag != FRAG_LATER
        && (pkt.ip_proto == IPPROTO_UDP || pkt.ip_proto == IPPROTO_TCP);
    Some(Tuple {
        family: pkt.family,
        src: pkt.src,
        dst: pkt.dst,
        sport: if ports { pkt.sport } else { 0 },
        dport: if ports { pkt.dport } else { 0 },
        ip_proto: pkt.ip_proto,
        vlan: pkt.vlan,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 8];
        f[12] = 0x08;
        f[14] = 0x45;
        // Lengths as a real stack writes them: the parser is the kernel's, which does not
        // judge a datagram whose UDP length is zero.
        f[14 + 3] = 28;
        f[14 + 9] = 17;
        f[38 + 1] = 8;
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
