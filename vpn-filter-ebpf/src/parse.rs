//! The packet parser, shared by the XDP program and the host (replay, the tests' reference
//! model): Ethernet and its stacks (VLAN, PPPoE, MPLS), IPv4/IPv6 with extension headers and
//! fragments, one tunnel level (IP-in-IP, GRE, VXLAN, Geneve), and the TCP/UDP header. It
//! reads through [`Frame`], implemented by the kernel program for its `XdpContext` and here
//! for byte slices, so both sides parse with the same code.
//!
//! Verifier rules apply (see the crate docs): constant loop bounds, bounded offsets.

use vpn_filter_common::{
    Counter, ENCAP_GENEVE, ENCAP_GRE, ENCAP_IP_IN_IP, ENCAP_MPLS, ENCAP_PPPOE, ENCAP_VLAN_STACK,
    ENCAP_VXLAN, FAMILY_V4, FAMILY_V6, MIN_FIRST_FRAGMENT_PAYLOAD,
};

/// Where the parser reads from.
#[expect(clippy::len_without_is_empty, reason = "the parser never asks")]
pub trait Frame {
    /// `N` bytes at `offset`; [`Counter::Truncated`] past the end.
    fn read<const N: usize>(&self, offset: usize) -> Result<[u8; N], Counter>;
    /// Length of the frame in bytes.
    fn len(&self) -> usize;
    /// Returns `v` unchanged. The kernel passes it through a map slot so that the verifier
    /// forgets the constants each header path leaves in them (see the program's `launder`).
    fn launder<const N: usize>(&self, v: [u64; N]) -> Result<[u64; N], Counter>;
}

impl Frame for [u8] {
    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Result<[u8; N], Counter> {
        match self.get(offset..offset.saturating_add(N)) {
            Some(b) => {
                let mut out = [0u8; N];
                out.copy_from_slice(b);
                Ok(out)
            }
            None => Err(Counter::Truncated),
        }
    }

    #[inline(always)]
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    #[inline(always)]
    fn launder<const N: usize>(&self, v: [u64; N]) -> Result<[u64; N], Counter> {
        Ok(v)
    }
}

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
/// Pre-standard QinQ outer tag (still common on access networks).
pub const ETH_P_QINQ1: u16 = 0x9100;
pub const ETH_P_PPP_SES: u16 = 0x8864;
pub const ETH_P_MPLS_UC: u16 = 0x8847;
pub const ETH_P_MPLS_MC: u16 = 0x8848;
/// Transparent Ethernet bridging (GRE protocol type; also what VXLAN and Geneve carry).
pub const ETH_P_TEB: u16 = 0x6558;
pub const PPP_IP: u16 = 0x0021;
pub const PPP_IPV6: u16 = 0x0057;
pub const VXLAN_PORT: u16 = 4789;
pub const GENEVE_PORT: u16 = 6081;
pub const IPPROTO_IPIP: u8 = 4;
pub const IPPROTO_IPV6: u8 = 41;
pub const MAX_VLAN_TAGS: usize = 3;
pub const MAX_MPLS_LABELS: usize = 4;
pub const FRAG_NONE: u8 = 0;
pub const FRAG_FIRST: u8 = 1;
pub const FRAG_LATER: u8 = 2;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_GRE: u8 = 47;
pub const IPPROTO_ESP: u8 = 50;
pub const IPPROTO_AH: u8 = 51;
/// IPv6 extension headers followed; a longer chain is `ext_header_limit` (see
/// `--ext-header-overflow`). Linux forwards chains of any length, but its option limits
/// (net.ipv6.max_{hbh,dst}_opts_number = 8) make longer ones pointless for real stacks.
pub const MAX_EXT_HEADERS: usize = 8;
/// Bytes of IPv6 extension headers followed (one 2048-byte destination options header is
/// the largest its length field can say).
pub const MAX_EXT_BYTES: usize = 2048;
/// Network headers further in than this are not parsed; keeps every packet offset bounded
/// for the verifier. Reached only by the limits above plus a tunnel.
pub const MAX_L3_OFFSET: usize = 2200;
/// L4 headers further in than this are not parsed (counted as `ext_header_limit`).
pub const MAX_L4_OFFSET: usize = 4400;
/// The L4 payload starts at most a TCP header (60 bytes) after [`MAX_L4_OFFSET`].
pub const MAX_PAYLOAD_OFFSET: usize = MAX_L4_OFFSET + 60;

/// Everything the decision needs from the headers. `repr(C)`: the two addresses come first,
/// so they are 4-byte aligned and hashes read them a word at a time ([`Packet::words`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Packet {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub family: u8,
    pub ip_proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub vlan: u16,
    /// Offset of the L4 payload (UDP/TCP) or of the L4 header (GRE/ESP/AH) in the frame.
    pub payload_off: usize,
    /// L4 payload length according to the headers (checked against the frame). For the first
    /// fragment of a fragmented UDP datagram: the whole datagram's, from the UDP length.
    pub payload_len: usize,
    /// Bytes of that payload present in this packet (less than `payload_len` only in a first
    /// fragment).
    pub captured: usize,
    /// [`Event::encap`] bits.
    pub encap: u8,
    /// [`FRAG_NONE`], [`FRAG_FIRST`] or [`FRAG_LATER`].
    pub frag: u8,
    /// TCP flags byte (0 for other protocols).
    pub tcp_flags: u8,
    pub frag_id: u32,
    /// TCP sequence number (0 for other protocols).
    pub tcp_seq: u32,
    /// The outermost network layer's family (what the `ipv4`/`ipv6` counters count).
    pub outer_family: u8,
}

impl Packet {
    /// The source and destination addresses as eight native-endian words (one load each: a
    /// byte-array read would be four byte loads per word in BPF).
    #[inline(always)]
    pub fn words(&self) -> ([u32; 4], [u32; 4]) {
        const {
            assert!(core::mem::offset_of!(Packet, src) % 4 == 0);
            assert!(core::mem::offset_of!(Packet, dst) % 4 == 0);
            assert!(core::mem::align_of::<Packet>() >= 4);
        }
        // SAFETY: `src` and `dst` are 16 bytes at 4-aligned offsets of a struct aligned to at
        // least 4 (checked above), and any bit pattern is a valid u32.
        unsafe {
            (
                core::ptr::read(self.src.as_ptr() as *const [u32; 4]),
                core::ptr::read(self.dst.as_ptr() as *const [u32; 4]),
            )
        }
    }

    /// The source and destination addresses as four native-endian 64-bit words (one load
    /// each), for hashes.
    #[inline(always)]
    pub fn dwords(&self) -> ([u64; 2], [u64; 2]) {
        const {
            assert!(core::mem::offset_of!(Packet, src) % 8 == 0);
            assert!(core::mem::offset_of!(Packet, dst) % 8 == 0);
            assert!(core::mem::align_of::<Packet>() >= 8);
        }
        // SAFETY: `src` and `dst` are 16 bytes at 8-aligned offsets of a struct aligned to at
        // least 8 (checked above), and any bit pattern is a valid u64.
        unsafe {
            (
                core::ptr::read(self.src.as_ptr() as *const [u64; 2]),
                core::ptr::read(self.dst.as_ptr() as *const [u64; 2]),
            )
        }
    }
}

/// Ethernet header, then up to three VLAN tags (0x8100, 0x88a8, 0x9100 in any order), then
/// PPPoE session or MPLS. Returns the ethertype of the network layer, its offset, the
/// outermost VLAN id and the [`Event::encap`] bits.
#[inline(always)]
pub fn l2<F: Frame + ?Sized>(
    f: &F,
    start: usize,
    max_tags: usize,
) -> Result<(u16, usize, u16, u8), Counter> {
    let eth: [u8; ETH_HLEN] = f.read(start)?;
    let mut ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    let mut off = start + ETH_HLEN;
    let mut vlan = 0u16;
    let mut encap = 0u8;
    let mut tags = 0;
    while tags < max_tags
        && (ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD || ethertype == ETH_P_QINQ1)
    {
        let tag: [u8; 4] = f.read(off)?;
        if tags == 0 {
            vlan = u16::from_be_bytes([tag[0], tag[1]]) & 0x0fff;
        } else {
            encap |= ENCAP_VLAN_STACK;
        }
        ethertype = u16::from_be_bytes([tag[2], tag[3]]);
        off += 4;
        tags += 1;
    }
    match ethertype {
        ETH_P_PPP_SES => {
            // Version/type 0x11, code 0 (session data), session id, length, PPP protocol.
            let h: [u8; 8] = f.read(off)?;
            if h[0] != 0x11 || h[1] != 0 {
                return Err(Counter::NonIp);
            }
            encap |= ENCAP_PPPOE;
            off += 8;
            ethertype = match u16::from_be_bytes([h[6], h[7]]) {
                PPP_IP => ETH_P_IP,
                PPP_IPV6 => ETH_P_IPV6,
                // LCP, IPCP, authentication...: not IP.
                _ => return Err(Counter::NonIp),
            };
        }
        ETH_P_MPLS_UC | ETH_P_MPLS_MC => {
            encap |= ENCAP_MPLS;
            let mut labels = 0;
            let mut bottom = false;
            while labels < MAX_MPLS_LABELS && !bottom {
                let label: [u8; 4] = f.read(off)?;
                bottom = label[2] & 1 != 0;
                off += 4;
                labels += 1;
            }
            if !bottom {
                return Err(Counter::NonIp);
            }
            // No protocol field: the payload's first nibble says IPv4 or IPv6.
            let first: [u8; 1] = f.read(off)?;
            ethertype = match first[0] >> 4 {
                4 => ETH_P_IP,
                6 => ETH_P_IPV6,
                _ => return Err(Counter::NonIp),
            };
        }
        _ => {}
    }
    Ok((ethertype, off, vlan, encap))
}

/// What the network layer says about the L4 header's whereabouts.
#[derive(Clone, Copy)]
pub struct L3 {
    /// Offset of the L4 header.
    l4: usize,
    /// L4 bytes according to the IP header(s).
    l4_len: usize,
    /// L4 bytes present in the frame (less than `l4_len` only in a first fragment, or inside
    /// an outer first fragment).
    avail: usize,
    /// [`FRAG_NONE`], [`FRAG_FIRST`] or [`FRAG_LATER`].
    frag: u8,
    /// IPv4 identification or IPv6 fragment identification (fragments only).
    frag_id: u32,
}

/// Parses the IPv4 or IPv6 header (and IPv6 extension headers) at `off`, filling the
/// addresses, family and L4 protocol of `pkt`. `truncated_ok`: the header sits inside an
/// outer first fragment, so its lengths may reach past the frame.
#[inline(always)]
pub fn l3<F: Frame + ?Sized>(
    f: &F,
    ethertype: u16,
    off: usize,
    truncated_ok: bool,
    pkt: &mut Packet,
) -> Result<L3, Counter> {
    let frame_len = f.len();
    if off > MAX_L3_OFFSET {
        return Err(Counter::ExtHeaderLimit);
    }
    let mut r = L3 {
        l4: 0,
        l4_len: 0,
        avail: 0,
        frag: FRAG_NONE,
        frag_id: 0,
    };
    match ethertype {
        ETH_P_IP => {
            let ip: [u8; 20] = f.read(off)?;
            let ihl = ((ip[0] & 0x0f) as usize) * 4;
            if ip[0] >> 4 != 4 || ihl < 20 {
                return Err(Counter::Malformed);
            }
            let mut total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
            // BIG TCP (and GSO'd packets seen in generic mode) may carry tot_len 0: the frame
            // says how long the packet is.
            if total == 0 {
                total = frame_len.saturating_sub(off);
            }
            if total < ihl || (off + total > frame_len && !truncated_ok) {
                return Err(Counter::Malformed);
            }
            pkt.family = FAMILY_V4;
            pkt.ip_proto = ip[9];
            pkt.src = [0; 16];
            pkt.dst = [0; 16];
            pkt.src[..4].copy_from_slice(&ip[12..16]);
            pkt.dst[..4].copy_from_slice(&ip[16..20]);
            let frag = u16::from_be_bytes([ip[6], ip[7]]);
            if frag & 0x3fff != 0 {
                r.frag = if frag & 0x1fff != 0 {
                    FRAG_LATER
                } else {
                    FRAG_FIRST
                };
                r.frag_id = u16::from_be_bytes([ip[4], ip[5]]) as u32;
            }
            r.l4 = off + ihl;
            r.l4_len = total - ihl;
        }
        ETH_P_IPV6 => {
            let ip: [u8; 40] = f.read(off)?;
            if ip[0] >> 4 != 6 {
                return Err(Counter::Malformed);
            }
            let mut payload = u16::from_be_bytes([ip[4], ip[5]]) as usize;
            // A jumbogram (BIG TCP) says 0 here and its length in a hop-by-hop option.
            if payload == 0 {
                payload = frame_len.saturating_sub(off + 40);
            }
            if off + 40 + payload > frame_len && !truncated_ok {
                return Err(Counter::Malformed);
            }
            pkt.family = FAMILY_V6;
            pkt.src.copy_from_slice(&ip[8..24]);
            pkt.dst.copy_from_slice(&ip[24..40]);
            let (next, l4) = ipv6_ext_headers(f, ip[6], off + 40, &mut r)?;
            pkt.ip_proto = next;
            let used = l4 - (off + 40);
            if used > payload {
                return Err(Counter::Malformed);
            }
            r.l4 = l4;
            r.l4_len = payload - used;
        }
        _ => return Err(Counter::NonIp),
    }
    let present = frame_len.saturating_sub(r.l4);
    r.avail = if present < r.l4_len {
        present
    } else {
        r.l4_len
    };
    if truncated_ok && r.avail < r.l4_len && r.frag == FRAG_NONE {
        r.frag = FRAG_FIRST;
    }
    Ok(r)
}

/// One tunnel level inside the outer packet: IP-in-IP (4, 41), GRE version 0 carrying IPv4,
/// IPv6 or Ethernet, VXLAN (UDP 4789) and Geneve (UDP 6081). Returns the inner network
/// layer's ethertype and offset, and the [`Event::encap`] bit.
#[inline(always)]
pub fn tunnel<F: Frame + ?Sized>(
    f: &F,
    ip_proto: u8,
    l4: usize,
) -> Result<Option<(u16, usize, u8)>, Counter> {
    match ip_proto {
        IPPROTO_IPIP => Ok(Some((ETH_P_IP, l4, ENCAP_IP_IN_IP))),
        IPPROTO_IPV6 => Ok(Some((ETH_P_IPV6, l4, ENCAP_IP_IN_IP))),
        IPPROTO_GRE => {
            // A header cut short is no tunnel: the packet is judged as what it is (the
            // tiny-fragment rule applies to it as to any other).
            let Ok(h) = f.read::<4>(l4) else {
                return Ok(None);
            };
            // Version 0 only (version 1 is PPTP's enhanced GRE, classified as such); no
            // routing field (deprecated, RFC 2784).
            if h[1] & 0x07 != 0 || h[0] & 0x40 != 0 {
                return Ok(None);
            }
            let mut len = 4;
            if h[0] & 0x80 != 0 {
                len += 4; // checksum + reserved
            }
            if h[0] & 0x20 != 0 {
                len += 4; // key
            }
            if h[0] & 0x10 != 0 {
                len += 4; // sequence number
            }
            match u16::from_be_bytes([h[2], h[3]]) {
                ETH_P_IP => Ok(Some((ETH_P_IP, l4 + len, ENCAP_GRE))),
                ETH_P_IPV6 => Ok(Some((ETH_P_IPV6, l4 + len, ENCAP_GRE))),
                ETH_P_TEB => Ok(Some((ETH_P_TEB, l4 + len, ENCAP_GRE))),
                _ => Ok(None),
            }
        }
        IPPROTO_UDP => {
            let Ok(udp) = f.read::<8>(l4) else {
                return Ok(None);
            };
            match u16::from_be_bytes([udp[2], udp[3]]) {
                VXLAN_PORT => {
                    let Ok(h) = f.read::<8>(l4 + 8) else {
                        return Ok(None);
                    };
                    // The I flag (a valid VNI) must be set.
                    if h[0] & 0x08 == 0 {
                        return Ok(None);
                    }
                    Ok(Some((ETH_P_TEB, l4 + 16, ENCAP_VXLAN)))
                }
                GENEVE_PORT => {
                    let Ok(h) = f.read::<8>(l4 + 8) else {
                        return Ok(None);
                    };
                    if h[0] >> 6 != 0 {
                        return Ok(None);
                    }
                    let inner = l4 + 16 + ((h[0] & 0x3f) as usize) * 4;
                    match u16::from_be_bytes([h[2], h[3]]) {
                        ETH_P_TEB => Ok(Some((ETH_P_TEB, inner, ENCAP_GENEVE))),
                        ETH_P_IP => Ok(Some((ETH_P_IP, inner, ENCAP_GENEVE))),
                        ETH_P_IPV6 => Ok(Some((ETH_P_IPV6, inner, ENCAP_GENEVE))),
                        _ => Ok(None),
                    }
                }
                _ => Ok(None),
            }
        }
        _ => Ok(None),
    }
}

/// Parses a frame down to its L4 header into `pkt`. `ip_start`: the frame starts at the IP
/// header (devices without an Ethernet header; the `vpn_filter_ip` variant).
///
/// The error says why the frame is not judged ([`Counter::TinyFragment`] and
/// [`Counter::ExtHeaderLimit`] are verdicts of their own; the caller decides). `pkt` holds
/// what was parsed before the error: for a tiny fragment, its addresses and fragment id.
/// `outer_family` is set as soon as the L2 headers name the network layer.
#[inline(never)]
pub fn parse<F: Frame + ?Sized>(f: &F, ip_start: bool, pkt: &mut Packet) -> Result<(), Counter> {
    let (mut ethertype, mut off, vlan, mut encap): (u16, usize, u16, u8) = if ip_start {
        // Twenty bytes (the smallest IP header) rather than one: the compiler folds a 1-byte
        // bound check into `data < data_end`, which the verifier does not take as a range.
        let first: [u8; 20] = f.read(0)?;
        let ethertype = match first[0] >> 4 {
            4 => ETH_P_IP,
            6 => ETH_P_IPV6,
            _ => return Err(Counter::NonIp),
        };
        (ethertype, 0, 0, 0)
    } else {
        l2(f, 0, MAX_VLAN_TAGS)?
    };
    pkt.outer_family = match ethertype {
        ETH_P_IP => FAMILY_V4,
        ETH_P_IPV6 => FAMILY_V6,
        _ => return Err(Counter::NonIp),
    };
    pkt.vlan = vlan;
    let [t, o, e] = f.launder([ethertype as u64, off as u64, encap as u64])?;
    if o > MAX_L3_OFFSET as u64 {
        return Err(Counter::ExtHeaderLimit);
    }
    (ethertype, off, encap) = (t as u16, o as usize, e as u8);
    let mut r = l3(f, ethertype, off, false, pkt)?;
    // One tunnel level: the inner packet is judged like an outer one, by its own addresses.
    if r.frag != FRAG_LATER {
        if let Some((inner_type, inner_off, bit)) = tunnel(f, pkt.ip_proto, r.l4)? {
            // An outer first fragment must hold the inner headers and the start of the inner
            // payload, like any first fragment.
            if r.frag == FRAG_FIRST && r.avail < MIN_FIRST_FRAGMENT_PAYLOAD as usize {
                pkt.frag_id = r.frag_id;
                return Err(Counter::TinyFragment);
            }
            let truncated_ok = r.frag == FRAG_FIRST;
            let [t, o, e] =
                f.launder([inner_type as u64, inner_off as u64, (encap | bit) as u64])?;
            if o > MAX_L3_OFFSET as u64 {
                return Err(Counter::ExtHeaderLimit);
            }
            (ethertype, off, encap) = (t as u16, o as usize, e as u8);
            if ethertype == ETH_P_TEB {
                let (t, o, _, inner_encap) = l2(f, off, 1)?;
                let [t, o, e] = f.launder([t as u64, o as u64, (encap | inner_encap) as u64])?;
                if o > MAX_L3_OFFSET as u64 {
                    return Err(Counter::ExtHeaderLimit);
                }
                (ethertype, off, encap) = (t as u16, o as usize, e as u8);
            }
            r = l3(f, ethertype, off, truncated_ok, pkt)?;
        }
    }
    let [l4, l4_len, avail, frag, e] = f.launder([
        r.l4 as u64,
        r.l4_len as u64,
        r.avail as u64,
        r.frag as u64,
        encap as u64,
    ])?;
    if l4 > MAX_L4_OFFSET as u64 || l4_len > 0xffff || avail > l4_len {
        return Err(Counter::ExtHeaderLimit);
    }
    r.l4 = l4 as usize;
    r.l4_len = l4_len as usize;
    r.avail = avail as usize;
    r.frag = frag as u8;
    pkt.encap = e as u8;
    pkt.frag = r.frag;
    pkt.frag_id = r.frag_id;
    if r.frag == FRAG_LATER {
        return Ok(());
    }
    let l4 = r.l4;
    let l4_len = r.l4_len;
    let first_fragment = r.frag == FRAG_FIRST;
    // The tiny-fragment rule comes before any L4 header read: a first fragment cut inside
    // the header is the evasion itself, not a truncated packet.
    let min_first = MIN_FIRST_FRAGMENT_PAYLOAD as usize
        + match pkt.ip_proto {
            IPPROTO_UDP => 8,
            IPPROTO_TCP => 20,
            _ => 0,
        };
    if first_fragment && r.avail < min_first {
        return Err(Counter::TinyFragment);
    }
    match pkt.ip_proto {
        IPPROTO_UDP => {
            let udp: [u8; 8] = f.read(l4)?;
            let ulen = u16::from_be_bytes([udp[4], udp[5]]) as usize;
            // Only a first fragment may hold less than its UDP length announces (README,
            // "Fragments": it is judged like any packet, by the datagram's length).
            if ulen < 8 || l4_len < 8 || (ulen > l4_len && !first_fragment) {
                return Err(Counter::Malformed);
            }
            pkt.sport = u16::from_be_bytes([udp[0], udp[1]]);
            pkt.dport = u16::from_be_bytes([udp[2], udp[3]]);
            pkt.payload_off = l4 + 8;
            pkt.payload_len = ulen - 8;
            let avail = if ulen < r.avail { ulen } else { r.avail };
            pkt.captured = avail - 8;
        }
        IPPROTO_TCP => {
            let tcp: [u8; 20] = f.read(l4)?;
            let doff = ((tcp[12] >> 4) as usize) * 4;
            if doff < 20 || doff > l4_len {
                return Err(Counter::Malformed);
            }
            if first_fragment && r.avail < doff + MIN_FIRST_FRAGMENT_PAYLOAD as usize {
                pkt.frag_id = r.frag_id;
                return Err(Counter::TinyFragment);
            }
            pkt.sport = u16::from_be_bytes([tcp[0], tcp[1]]);
            pkt.dport = u16::from_be_bytes([tcp[2], tcp[3]]);
            pkt.tcp_seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
            pkt.tcp_flags = tcp[13];
            pkt.payload_off = l4 + doff;
            // A TCP first fragment is judged as the segment it starts (what it holds).
            pkt.payload_len = if first_fragment {
                r.avail - doff
            } else {
                l4_len - doff
            };
            pkt.captured = pkt.payload_len;
        }
        _ => {
            pkt.payload_off = l4;
            pkt.payload_len = l4_len;
            pkt.captured = r.avail;
        }
    }
    Ok(())
}

/// The common case, parsed straight through: an untagged Ethernet header (or a bare IP
/// start), then IPv4 without options or fragmentation, or IPv6 without extension headers,
/// then TCP or UDP that is no tunnel (VXLAN, Geneve), every length consistent. Nothing else
/// is accepted here: `false` leaves `pkt` untouched and leaves the frame to [`parse`],
/// which also gives every error. For the frames it accepts, the answer is exactly
/// [`parse`]'s (a host test compares the two over generated and mutated frames). It
/// saves ordinary packets the general parser's loops and the verifier-merging slot round
/// trips. The kernel calls it first, and [`parse`] when it refuses.
#[inline(always)]
pub fn parse_plain<F: Frame + ?Sized>(f: &F, ip_start: bool, pkt: &mut Packet) -> bool {
    let frame_len = f.len();
    let off = if ip_start { 0 } else { ETH_HLEN };
    let ethertype = if ip_start {
        0
    } else {
        let Ok(eth) = f.read::<ETH_HLEN>(0) else {
            return false;
        };
        u16::from_be_bytes([eth[12], eth[13]])
    };
    let Ok(head) = f.read::<20>(off) else {
        return false;
    };
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    let (family, ip_proto, l4, l4_len) = if head[0] == 0x45 && (ip_start || ethertype == ETH_P_IP) {
        let total = u16::from_be_bytes([head[2], head[3]]) as usize;
        // No fragment offset, no more-fragments bit (DF may be set).
        if u16::from_be_bytes([head[6], head[7]]) & 0x3fff != 0
            || total < 20
            || off + total > frame_len
        {
            return false;
        }
        src[..4].copy_from_slice(&head[12..16]);
        dst[..4].copy_from_slice(&head[16..20]);
        (FAMILY_V4, head[9], off + 20, total - 20)
    } else if head[0] >> 4 == 6 && (ip_start || ethertype == ETH_P_IPV6) {
        let Ok(ip) = f.read::<40>(off) else {
            return false;
        };
        let payload = u16::from_be_bytes([ip[4], ip[5]]) as usize;
        if payload == 0 || off + 40 + payload > frame_len {
            return false;
        }
        src.copy_from_slice(&ip[8..24]);
        dst.copy_from_slice(&ip[24..40]);
        (FAMILY_V6, ip[6], off + 40, payload)
    } else {
        return false;
    };
    let (sport, dport, payload_off, payload_len, tcp_seq, tcp_flags) = match ip_proto {
        IPPROTO_UDP => {
            let Ok(udp) = f.read::<8>(l4) else {
                return false;
            };
            let dport = u16::from_be_bytes([udp[2], udp[3]]);
            let ulen = u16::from_be_bytes([udp[4], udp[5]]) as usize;
            if dport == VXLAN_PORT || dport == GENEVE_PORT || ulen < 8 || ulen > l4_len {
                return false;
            }
            let sport = u16::from_be_bytes([udp[0], udp[1]]);
            (sport, dport, l4 + 8, ulen - 8, 0, 0)
        }
        IPPROTO_TCP => {
            let Ok(tcp) = f.read::<20>(l4) else {
                return false;
            };
            let doff = ((tcp[12] >> 4) as usize) * 4;
            if doff < 20 || doff > l4_len {
                return false;
            }
            (
                u16::from_be_bytes([tcp[0], tcp[1]]),
                u16::from_be_bytes([tcp[2], tcp[3]]),
                l4 + doff,
                l4_len - doff,
                u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
                tcp[13],
            )
        }
        _ => return false,
    };
    pkt.outer_family = family;
    pkt.family = family;
    pkt.ip_proto = ip_proto;
    pkt.src = src;
    pkt.dst = dst;
    pkt.sport = sport;
    pkt.dport = dport;
    pkt.vlan = 0;
    pkt.encap = 0;
    pkt.frag = FRAG_NONE;
    pkt.frag_id = 0;
    pkt.payload_off = payload_off;
    pkt.payload_len = payload_len;
    pkt.captured = payload_len;
    pkt.tcp_seq = tcp_seq;
    pkt.tcp_flags = tcp_flags;
    true
}

/// Follows IPv6 extension headers (at most [`MAX_EXT_HEADERS`] and [`MAX_EXT_BYTES`]);
/// returns the upper-layer protocol and its offset, and records fragment information in `r`.
#[inline(always)]
pub fn ipv6_ext_headers<F: Frame + ?Sized>(
    f: &F,
    first: u8,
    start: usize,
    r: &mut L3,
) -> Result<(u8, usize), Counter> {
    let mut next = first;
    let mut off = start;
    let mut i = 0;
    while i < MAX_EXT_HEADERS {
        match next {
            // Hop-by-hop, routing, destination options, mobility, HIP, shim6: length in
            // 8-octet units, not counting the first 8.
            0 | 43 | 60 | 135 | 139 | 140 => {
                let h: [u8; 2] = f.read(off)?;
                next = h[0];
                off += (h[1] as usize + 1) * 8;
            }
            // Fragment header: later fragments carry no L4 header.
            44 => {
                let h: [u8; 8] = f.read(off)?;
                let field = u16::from_be_bytes([h[2], h[3]]);
                r.frag_id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                if field & 0xfff8 != 0 {
                    r.frag = FRAG_LATER;
                } else if field & 1 != 0 {
                    r.frag = FRAG_FIRST;
                }
                next = h[0];
                off += 8;
                if r.frag == FRAG_LATER {
                    return Ok((next, off));
                }
            }
            _ => return Ok((next, off)),
        }
        if off > start + MAX_EXT_BYTES {
            return Err(Counter::ExtHeaderLimit);
        }
        i += 1;
    }
    match next {
        0 | 43 | 60 | 44 | 135 | 139 | 140 => Err(Counter::ExtHeaderLimit),
        _ => Ok((next, off)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: deterministic cases, no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn chance(&mut self, one_in: u64) -> bool {
            self.below(one_in) == 0
        }
    }

    /// A frame near the fast path's edge: mostly plain TCP/UDP over IPv4/IPv6, sometimes with
    /// a tag, options, fragment bits, a tunnel port or protocol, inconsistent lengths, a cut
    /// or flipped bytes.
    fn frame(rng: &mut Rng, ip_start: bool) -> Vec<u8> {
        let mut f = Vec::new();
        if !ip_start {
            f.extend_from_slice(&[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2]);
            if rng.chance(8) {
                f.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]);
            }
        }
        let v6 = rng.chance(3);
        let proto = match rng.below(12) {
            0 => IPPROTO_IPIP,
            1 => IPPROTO_GRE,
            2 => IPPROTO_ESP,
            3..=7 => IPPROTO_UDP,
            _ => IPPROTO_TCP,
        };
        let (l4_header, dport) = if proto == IPPROTO_TCP {
            (20, 443)
        } else {
            (8, 51820)
        };
        let dport = match rng.below(10) {
            0 => VXLAN_PORT,
            1 => GENEVE_PORT,
            _ => dport,
        };
        let payload = rng.below(80) as usize;
        let l4_len = l4_header + payload;
        if !ip_start {
            f.extend_from_slice(if v6 { &[0x86, 0xdd] } else { &[0x08, 0x00] });
        }
        if v6 {
            let mut ip = vec![0x60, 0, 0, 0];
            ip.extend_from_slice(&(l4_len as u16).to_be_bytes());
            ip.push(if rng.chance(10) { 0 } else { proto });
            ip.push(64);
            for _ in 0..32 {
                ip.push(rng.below(256) as u8);
            }
            f.extend_from_slice(&ip);
        } else {
            let options = rng.chance(10);
            let ihl = if options { 6 } else { 5 };
            let total = ihl * 4 + l4_len;
            let mut ip = vec![0x40 | ihl as u8, 0];
            ip.extend_from_slice(&(total as u16).to_be_bytes());
            ip.extend_from_slice(&[0x12, 0x34]);
            ip.extend_from_slice(match rng.below(8) {
                0 => &[0x20, 0x00],
                1 => &[0x00, 0x10],
                2 => &[0x40, 0x00],
                _ => &[0x00, 0x00],
            });
            ip.extend_from_slice(&[64, proto, 0, 0]);
            for _ in 0..8 {
                ip.push(rng.below(256) as u8);
            }
            if options {
                ip.extend_from_slice(&[1, 1, 1, 0]);
            }
            f.extend_from_slice(&ip);
        }
        let mut l4 = Vec::new();
        l4.extend_from_slice(&(rng.below(65536) as u16).to_be_bytes());
        l4.extend_from_slice(&dport.to_be_bytes());
        if proto == IPPROTO_TCP {
            l4.extend_from_slice(&(rng.next() as u32).to_be_bytes());
            l4.extend_from_slice(&[0, 0, 0, 0]);
            let doff = if rng.chance(10) {
                rng.below(16) as u8
            } else {
                5
            };
            l4.extend_from_slice(&[doff << 4, rng.below(256) as u8, 0xff, 0xff, 0, 0, 0, 0]);
        } else {
            l4.extend_from_slice(&(l4_len as u16).to_be_bytes());
            l4.extend_from_slice(&[0, 0]);
        }
        for _ in 0..payload {
            l4.push(rng.below(256) as u8);
        }
        if proto == IPPROTO_UDP && dport == VXLAN_PORT && payload >= 8 {
            l4[8] = if rng.chance(2) { 0x08 } else { 0 };
        }
        f.extend_from_slice(&l4);
        // Lengths that disagree with the frame: bytes added or cut, header fields flipped.
        if rng.chance(6) {
            let pad = rng.below(20) as usize;
            f.resize(f.len() + pad, 0);
        }
        if rng.chance(6) {
            let cut = rng.below(f.len() as u64 + 1) as usize;
            f.truncate(cut);
        }
        if rng.chance(4) && !f.is_empty() {
            for _ in 0..1 + rng.below(3) {
                let i = rng.below(f.len().min(64) as u64) as usize;
                f[i] ^= 1 << rng.below(8);
            }
        }
        f
    }

    #[test]
    fn the_plain_path_gives_the_full_parsers_answer_wherever_it_answers() {
        let mut rng = Rng(0x5eed_f00d);
        let mut accepted = [0usize; 2];
        let cases = 200_000;
        for case in 0..cases {
            let ip_start = case % 4 == 3;
            let f = frame(&mut rng, ip_start);
            let mut plain = Packet::default();
            if !parse_plain(&f[..], ip_start, &mut plain) {
                assert_eq!(
                    plain,
                    Packet::default(),
                    "a refusal leaves the packet untouched"
                );
                continue;
            }
            accepted[ip_start as usize] += 1;
            let mut full = Packet::default();
            assert_eq!(
                parse(&f[..], ip_start, &mut full),
                Ok(()),
                "case {case}: the plain path accepted what the full parser refuses: {f:02x?}"
            );
            assert_eq!(plain, full, "case {case}: {f:02x?}");
        }
        // Not vacuous: both variants take the plain path for most plain frames.
        assert!(
            accepted[0] > cases / 4 && accepted[1] > cases / 16,
            "{accepted:?}"
        );
    }
}
