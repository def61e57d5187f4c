//! Reading pcap and pcapng captures as Ethernet frames the XDP program can parse.
//!
//! Link types: Ethernet (1) as captured. The others get an Ethernet header synthesised from
//! what their own link header says the packet is: Linux cooked captures SLL (113) and SLL2
//! (276) from their protocol field; raw IP (101, 228, 229) from the IP version; BSD loopback
//! NULL (0) and LOOP (108) from their address family; PPP (9), PPP in HDLC framing (50, also
//! Cisco HDLC) and PPP with direction (204) from the PPP protocol; Linux NFLOG (239) from its
//! family and payload attribute; IEEE 802.11 (105) and radiotap (127) data frames from their
//! LLC/SNAP header. Frames that carry no readable packet (802.11 management, control and
//! protected frames, PPP control protocols) become Ethernet frames of ethertype 0, which the
//! program passes as non-IP. Any other link type is refused with its number and name.

use std::{
    fs::File,
    io::{Read, Seek, SeekFrom},
    path::{Path, PathBuf},
};

use pcap_parser::{traits::PcapReaderIterator, Block, PcapBlockOwned, PcapError};

/// Read buffer: holds any legal pcap record (libpcap's limit is 256 KiB) or pcapng block.
const BUFFER_BYTES: usize = 4 << 20;
/// libpcap refuses records whose captured length exceeds this (and the snap length).
const MAX_RECORD_CAPLEN: u32 = 262_144;
const ETH_HLEN: usize = 14;
const SLL_HLEN: usize = 16;
const SLL2_HLEN: usize = 20;

/// Link types replay understands.
pub const LINKTYPE_ETHERNET: u32 = 1;
pub const LINKTYPE_RAW: u32 = 101;
pub const LINKTYPE_LINUX_SLL: u32 = 113;
pub const LINKTYPE_IPV4: u32 = 228;
pub const LINKTYPE_IPV6: u32 = 229;
pub const LINKTYPE_LINUX_SLL2: u32 = 276;
pub const LINKTYPE_NULL: u32 = 0;
pub const LINKTYPE_LOOP: u32 = 108;
pub const LINKTYPE_PPP: u32 = 9;
pub const LINKTYPE_PPP_HDLC: u32 = 50;
pub const LINKTYPE_PPP_WITH_DIR: u32 = 204;
pub const LINKTYPE_NFLOG: u32 = 239;
pub const LINKTYPE_IEEE802_11: u32 = 105;
pub const LINKTYPE_IEEE802_11_RADIOTAP: u32 = 127;

const SUPPORTED: &str = "Ethernet (1), Linux cooked SLL (113), Linux cooked SLL2 (276), raw IP \
     (101, 228, 229), BSD loopback (0, 108), PPP (9, 50, 204), Linux NFLOG (239) and IEEE \
     802.11 with or without radiotap (105, 127)";

/// A capture that cannot be read (further). Every variant names the file; those met after
/// the header also say where (byte offset, packet number).
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("{path}: cannot open: {error}")]
    Open {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: empty file, not a capture")]
    Empty { path: PathBuf },
    #[error("{path}: not a pcap or pcapng capture (it starts with {start})")]
    NotACapture { path: PathBuf, start: String },
    #[error("{path}: truncated: the file ends inside the capture header")]
    TruncatedHeader { path: PathBuf },
    #[error(
        "{path}: truncated: the file ends inside the record that starts at byte {offset} \
         (it would be packet {packet})"
    )]
    Truncated {
        path: PathBuf,
        offset: u64,
        packet: u64,
    },
    #[error("{path}: corrupt record at byte {offset} (it would be packet {packet}): {detail}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        packet: u64,
        detail: String,
    },
    #[error(
        "{path}: packet {packet} (byte {offset}) has link type {linktype} ({name}), which replay \
         does not read; supported: {SUPPORTED}"
    )]
    UnsupportedLinkType {
        path: PathBuf,
        offset: u64,
        packet: u64,
        linktype: u32,
        name: &'static str,
    },
    #[error("{path}: read error at byte {offset}: {error}")]
    Read {
        path: PathBuf,
        offset: u64,
        error: std::io::Error,
    },
}

impl CaptureError {
    /// The capture's path.
    pub fn path(&self) -> &Path {
        match self {
            CaptureError::Open { path, .. }
            | CaptureError::Empty { path }
            | CaptureError::NotACapture { path, .. }
            | CaptureError::TruncatedHeader { path }
            | CaptureError::Truncated { path, .. }
            | CaptureError::Corrupt { path, .. }
            | CaptureError::UnsupportedLinkType { path, .. }
            | CaptureError::Read { path, .. } => path,
        }
    }
}

/// Capture file format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Pcap,
    PcapNg,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Pcap => "pcap",
            Format::PcapNg => "pcapng",
        }
    }
}

/// Human name of a link type (for messages).
pub fn linktype_name(linktype: u32) -> &'static str {
    match linktype {
        0 => "NULL, BSD loopback",
        LINKTYPE_ETHERNET => "Ethernet",
        6 => "IEEE 802.5 Token Ring",
        9 => "PPP",
        50 => "PPP over HDLC",
        LINKTYPE_RAW => "raw IP",
        104 => "Cisco HDLC",
        105 => "IEEE 802.11",
        108 => "OpenBSD loopback",
        LINKTYPE_LINUX_SLL => "Linux cooked SLL",
        127 => "IEEE 802.11 radiotap",
        147..=162 => "user-defined",
        192 => "PPI",
        LINKTYPE_PPP_WITH_DIR => "PPP with direction",
        LINKTYPE_IPV4 => "raw IPv4",
        LINKTYPE_IPV6 => "raw IPv6",
        239 => "Linux netlink (NFLOG)",
        252 => "Wireshark upper PDU",
        LINKTYPE_LINUX_SLL2 => "Linux cooked SLL2",
        _ => "unknown",
    }
}

/// One packet, converted to an Ethernet frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameInfo {
    /// 1-based position in the capture (as Wireshark numbers packets).
    pub number: u64,
    /// Capture timestamp, nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// Length of the packet on the wire, counted as an Ethernet frame (the original length
    /// adjusted for the link-header conversion).
    pub wire_len: u64,
    /// The capture holds fewer bytes than were on the wire (snap length).
    pub snapped: bool,
    /// The link-layer header was shorter than its link type requires (no frame produced).
    pub short_link_header: bool,
}

#[derive(Clone, Copy, Debug)]
struct Interface {
    linktype: u32,
    /// Timestamp units per second.
    resolution: u64,
    /// Seconds added to every timestamp.
    offset_s: i64,
}

/// Streaming reader over a pcap or pcapng file.
pub struct CaptureReader {
    path: PathBuf,
    reader: Box<dyn PcapReaderIterator + Send>,
    format: Format,
    state: State,
    file_len: u64,
}

struct State {
    interfaces: Vec<Interface>,
    big_endian: bool,
    legacy_snaplen: u32,
    linktypes: Vec<u32>,
    packets: u64,
    last_ts_ns: u64,
}

enum Step {
    Packet(FrameInfo),
    Skip,
}

impl CaptureReader {
    /// Opens `path` and reads the capture header (pcapng is probed first, then pcap).
    pub fn open(path: &Path) -> Result<CaptureReader, CaptureError> {
        let path_buf = path.to_path_buf();
        let mut file = File::open(path).map_err(|error| CaptureError::Open {
            path: path_buf.clone(),
            error,
        })?;
        let file_len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut start = [0u8; 8];
        let n = read_up_to(&mut file, &mut start).map_err(|error| CaptureError::Read {
            path: path_buf.clone(),
            offset: 0,
            error,
        })?;
        file.seek(SeekFrom::Start(0))
            .map_err(|error| CaptureError::Read {
                path: path_buf.clone(),
                offset: 0,
                error,
            })?;
        if n == 0 {
            return Err(CaptureError::Empty { path: path_buf });
        }
        let format = if n >= 4 && start[..4] == [0x0a, 0x0d, 0x0d, 0x0a] {
            Format::PcapNg
        } else {
            Format::Pcap
        };
        let reader = pcap_parser::create_reader(BUFFER_BYTES, file).map_err(|e| match e {
            PcapError::Eof => CaptureError::Empty {
                path: path_buf.clone(),
            },
            PcapError::Incomplete(_) | PcapError::UnexpectedEof => CaptureError::TruncatedHeader {
                path: path_buf.clone(),
            },
            PcapError::ReadError => CaptureError::Read {
                path: path_buf.clone(),
                offset: 0,
                error: std::io::Error::other("read failed"),
            },
            _ if format == Format::PcapNg => CaptureError::Corrupt {
                path: path_buf.clone(),
                offset: 0,
                packet: 1,
                detail: format!("bad pcapng section header block: {e}"),
            },
            _ => CaptureError::NotACapture {
                path: path_buf.clone(),
                start: describe_start(&start[..n]),
            },
        })?;
        Ok(CaptureReader {
            path: path_buf,
            reader,
            format,
            state: State {
                interfaces: Vec::new(),
                big_endian: false,
                legacy_snaplen: 0,
                linktypes: Vec::new(),
                packets: 0,
                last_ts_ns: 0,
            },
            file_len,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Size of the file in bytes.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// Bytes of the file consumed so far.
    pub fn position(&self) -> u64 {
        self.reader.consumed() as u64
    }

    /// Packets returned so far.
    pub fn packets(&self) -> u64 {
        self.state.packets
    }

    /// Link types of the packets seen so far, in order of first appearance.
    pub fn linktypes(&self) -> &[u32] {
        &self.state.linktypes
    }

    /// The next packet as an Ethernet frame in `frame` (cleared first); `None` at the end of
    /// the capture.
    pub fn next_frame(&mut self, frame: &mut Vec<u8>) -> Result<Option<FrameInfo>, CaptureError> {
        loop {
            let offset = self.reader.consumed() as u64;
            let packet = self.state.packets + 1;
            match self.reader.next() {
                Ok((len, block)) => {
                    let step = self.state.handle(&self.path, offset, block, frame);
                    self.reader.consume(len);
                    match step? {
                        Step::Packet(info) => return Ok(Some(info)),
                        Step::Skip => continue,
                    }
                }
                Err(PcapError::Eof) => return Ok(None),
                Err(PcapError::Incomplete(_)) => {
                    if self.reader.refill().is_err() {
                        return Err(CaptureError::Read {
                            path: self.path.clone(),
                            offset,
                            error: std::io::Error::other("read failed"),
                        });
                    }
                }
                Err(PcapError::UnexpectedEof) => {
                    if let Some(detail) = self.implausible_record() {
                        return Err(CaptureError::Corrupt {
                            path: self.path.clone(),
                            offset,
                            packet,
                            detail,
                        });
                    }
                    return Err(CaptureError::Truncated {
                        path: self.path.clone(),
                        offset,
                        packet,
                    });
                }
                Err(PcapError::BufferTooSmall) => {
                    let detail = self.implausible_record().unwrap_or_else(|| {
                        oversized_detail(self.format, self.state.big_endian, self.reader.data())
                    });
                    return Err(CaptureError::Corrupt {
                        path: self.path.clone(),
                        offset,
                        packet,
                        detail,
                    });
                }
                Err(PcapError::ReadError) => {
                    return Err(CaptureError::Read {
                        path: self.path.clone(),
                        offset,
                        error: std::io::Error::other("read failed"),
                    })
                }
                Err(e) => {
                    let detail = match self.format {
                        Format::PcapNg => format!("not a valid pcapng block ({})", error_kind(&e)),
                        Format::Pcap => format!("not a valid pcap record ({})", error_kind(&e)),
                    };
                    return Err(CaptureError::Corrupt {
                        path: self.path.clone(),
                        offset,
                        packet,
                        detail,
                    });
                }
            }
        }
    }
}

impl CaptureReader {
    /// A pcap record header whose captured length no capture can hold (garbage, not a cut).
    fn implausible_record(&self) -> Option<String> {
        let data = self.reader.data();
        if self.format != Format::Pcap || data.len() < 16 {
            return None;
        }
        let b = [data[8], data[9], data[10], data[11]];
        let caplen = if self.state.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        };
        (caplen > MAX_RECORD_CAPLEN.max(self.state.legacy_snaplen)).then(|| {
            format!(
                "record claims {caplen} captured bytes, more than the snap length {} allows",
                self.state.legacy_snaplen
            )
        })
    }
}

impl State {
    fn handle(
        &mut self,
        path: &Path,
        offset: u64,
        block: PcapBlockOwned<'_>,
        frame: &mut Vec<u8>,
    ) -> Result<Step, CaptureError> {
        let number = self.packets + 1;
        let corrupt = |detail: String| CaptureError::Corrupt {
            path: path.to_path_buf(),
            offset,
            packet: number,
            detail,
        };
        let (iface, ts_ns, data, origlen) = match block {
            PcapBlockOwned::LegacyHeader(h) => {
                let resolution = if h.is_nanosecond_precision() {
                    1_000_000_000
                } else {
                    1_000_000
                };
                self.legacy_snaplen = h.snaplen;
                self.big_endian = h.is_bigendian();
                // The upper bits of the link-type field carry FCS information (pcap spec).
                self.interfaces = vec![Interface {
                    linktype: (h.network.0 as u32) & 0xffff,
                    resolution,
                    offset_s: 0,
                }];
                return Ok(Step::Skip);
            }
            PcapBlockOwned::Legacy(b) => {
                if b.caplen > MAX_RECORD_CAPLEN.max(self.legacy_snaplen) {
                    return Err(corrupt(format!(
                        "record claims {} captured bytes, more than the snap length {} allows",
                        b.caplen, self.legacy_snaplen
                    )));
                }
                let iface =
                    self.interfaces.first().copied().ok_or_else(|| {
                        corrupt("packet record before the file header".to_string())
                    })?;
                let frac = b.ts_usec as u64;
                let ts = (b.ts_sec as u64)
                    .saturating_mul(1_000_000_000)
                    .saturating_add(frac.saturating_mul(1_000_000_000 / iface.resolution));
                (iface, ts, b.data, b.origlen)
            }
            PcapBlockOwned::NG(Block::SectionHeader(shb)) => {
                // Interface ids are per section.
                self.interfaces.clear();
                self.big_endian = shb.big_endian();
                return Ok(Step::Skip);
            }
            PcapBlockOwned::NG(Block::InterfaceDescription(idb)) => {
                let resolution = idb.ts_resolution().ok_or_else(|| {
                    corrupt(format!(
                        "interface description block has an invalid if_tsresol ({})",
                        idb.if_tsresol
                    ))
                })?;
                self.interfaces.push(Interface {
                    linktype: (idb.linktype.0 as u32) & 0xffff,
                    resolution,
                    offset_s: idb.ts_offset(),
                });
                return Ok(Step::Skip);
            }
            PcapBlockOwned::NG(Block::EnhancedPacket(epb)) => {
                let iface = self
                    .interfaces
                    .get(epb.if_id as usize)
                    .copied()
                    .ok_or_else(|| {
                        corrupt(format!(
                            "packet on interface {} but the section describes {} interface(s)",
                            epb.if_id,
                            self.interfaces.len()
                        ))
                    })?;
                let units = ((epb.ts_high as u64) << 32) | epb.ts_low as u64;
                let ns = (units as u128 * 1_000_000_000 / iface.resolution as u128) as i128
                    + iface.offset_s as i128 * 1_000_000_000;
                let ts = ns.clamp(0, u64::MAX as i128) as u64;
                let data = &epb.data[..(epb.caplen as usize).min(epb.data.len())];
                (iface, ts, data, epb.origlen)
            }
            PcapBlockOwned::NG(Block::SimplePacket(spb)) => {
                let iface = self.interfaces.first().copied().ok_or_else(|| {
                    corrupt("simple packet block but the section describes no interface".into())
                })?;
                // Simple packet blocks carry no timestamp: keep the previous packet's.
                let data = &spb.data[..(spb.origlen as usize).min(spb.data.len())];
                (iface, self.last_ts_ns, data, spb.origlen)
            }
            PcapBlockOwned::NG(_) => return Ok(Step::Skip),
        };
        if !self.linktypes.contains(&iface.linktype) {
            self.linktypes.push(iface.linktype);
        }
        let short = to_ethernet(iface.linktype, data, frame).map_err(|linktype| {
            CaptureError::UnsupportedLinkType {
                path: path.to_path_buf(),
                offset,
                packet: number,
                linktype,
                name: linktype_name(linktype),
            }
        })?;
        self.packets = number;
        self.last_ts_ns = ts_ns;
        let origlen = (origlen as u64).max(data.len() as u64);
        Ok(Step::Packet(FrameInfo {
            number,
            ts_ns,
            wire_len: (origlen + frame.len() as u64).saturating_sub(data.len() as u64),
            snapped: (data.len() as u64) < origlen,
            short_link_header: short,
        }))
    }
}

/// Converts one captured packet to an Ethernet frame in `out`. Returns whether the link
/// header was cut short (then `out` is empty), or the link type when it is unsupported.
pub fn to_ethernet(linktype: u32, data: &[u8], out: &mut Vec<u8>) -> Result<bool, u32> {
    out.clear();
    let link = match linktype {
        LINKTYPE_ETHERNET => {
            out.extend_from_slice(data);
            return Ok(false);
        }
        LINKTYPE_LINUX_SLL => sll(data),
        LINKTYPE_LINUX_SLL2 => sll2(data),
        LINKTYPE_RAW | LINKTYPE_IPV4 | LINKTYPE_IPV6 => Some(Link::ip(data)),
        LINKTYPE_NULL | LINKTYPE_LOOP => loopback(data),
        LINKTYPE_PPP => ppp(data),
        LINKTYPE_PPP_HDLC => ppp_hdlc(data),
        LINKTYPE_PPP_WITH_DIR => data.get(1..).and_then(ppp),
        LINKTYPE_NFLOG => nflog(data),
        LINKTYPE_IEEE802_11 => ieee80211(data, false, false),
        LINKTYPE_IEEE802_11_RADIOTAP => radiotap(data),
        other => return Err(other),
    };
    let Some(link) = link else {
        return Ok(true);
    };
    out.reserve(ETH_HLEN + link.payload.len());
    out.extend_from_slice(&link.dst);
    out.extend_from_slice(&link.src);
    out.extend_from_slice(&link.ethertype.to_be_bytes());
    out.extend_from_slice(link.payload);
    Ok(false)
}

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_MPLS: u16 = 0x8847;
/// What a frame that carries no readable packet becomes: the program passes it as non-IP.
const ETHERTYPE_NONE: u16 = 0;

/// What a link header says: the Ethernet header to synthesise and the packet behind it.
/// `None` from the parsers below means the link header is cut short.
struct Link<'a> {
    ethertype: u16,
    dst: [u8; 6],
    src: [u8; 6],
    payload: &'a [u8],
}

impl<'a> Link<'a> {
    fn new(ethertype: u16, payload: &'a [u8]) -> Link<'a> {
        Link {
            ethertype,
            dst: [0; 6],
            src: [0; 6],
            payload,
        }
    }

    /// An IP packet with nothing in front: the ethertype of its version.
    fn ip(payload: &'a [u8]) -> Link<'a> {
        Link::new(ip_ethertype(payload), payload)
    }

    /// A frame with no packet replay can read.
    fn none() -> Link<'a> {
        Link::new(ETHERTYPE_NONE, &[])
    }
}

fn ip_ethertype(packet: &[u8]) -> u16 {
    match packet.first().map(|b| b >> 4) {
        Some(4) => ETHERTYPE_IPV4,
        Some(6) => ETHERTYPE_IPV6,
        _ => ETHERTYPE_NONE,
    }
}

/// SLL: packet type, ARPHRD type, address length, 8 address bytes, protocol.
fn sll(data: &[u8]) -> Option<Link<'_>> {
    if data.len() < SLL_HLEN {
        return None;
    }
    let alen = u16::from_be_bytes([data[4], data[5]]);
    Some(Link {
        src: mac(alen as usize, &data[6..14]),
        ..Link::new(u16::from_be_bytes([data[14], data[15]]), &data[SLL_HLEN..])
    })
}

/// SLL2: protocol, reserved, ifindex, ARPHRD type, packet type, address length, address.
fn sll2(data: &[u8]) -> Option<Link<'_>> {
    if data.len() < SLL2_HLEN {
        return None;
    }
    Some(Link {
        src: mac(data[11] as usize, &data[12..20]),
        ..Link::new(u16::from_be_bytes([data[0], data[1]]), &data[SLL2_HLEN..])
    })
}

/// NULL and LOOP: a 4-byte address family, in the capturing host's byte order (NULL) or in
/// network byte order (LOOP, though some writers get it wrong). Families are small numbers,
/// so the smaller of the two readings is the right one. AF_INET6 differs between systems.
fn loopback(data: &[u8]) -> Option<Link<'_>> {
    let af: [u8; 4] = data.get(..4)?.try_into().ok()?;
    let family = u32::from_le_bytes(af).min(u32::from_be_bytes(af));
    let ethertype = match family {
        2 => ETHERTYPE_IPV4,
        // Linux, NetBSD/OpenBSD/BSD/OS, FreeBSD/DragonFly, macOS.
        10 | 24 | 28 | 30 => ETHERTYPE_IPV6,
        _ => ETHERTYPE_NONE,
    };
    Some(Link::new(ethertype, &data[4..]))
}

/// PPP (RFC 1661), with or without the HDLC-like address and control bytes `ff 03`
/// (RFC 1662), with a one- or two-byte protocol field (a one-byte field is odd).
fn ppp(data: &[u8]) -> Option<Link<'_>> {
    let data = data.strip_prefix(&[0xff, 0x03]).unwrap_or(data);
    let (protocol, payload) = match *data.first()? {
        odd if odd & 1 == 1 => (odd as u16, &data[1..]),
        _ => (u16::from_be_bytes([data[0], *data.get(1)?]), &data[2..]),
    };
    let ethertype = match protocol {
        0x0021 => ETHERTYPE_IPV4,
        0x0057 => ETHERTYPE_IPV6,
        0x0281 => ETHERTYPE_MPLS,
        // LCP, IPCP, authentication, compressed datagrams: nothing the program reads.
        _ => return Some(Link::none()),
    };
    Some(Link::new(ethertype, payload))
}

/// Link type 50: PPP in HDLC-like framing, or Cisco HDLC (address 0x0f or 0x8f, control 0,
/// then an ethertype).
fn ppp_hdlc(data: &[u8]) -> Option<Link<'_>> {
    match data.first()? {
        0x0f | 0x8f => {
            let ethertype = data.get(2..4)?;
            Some(Link::new(
                u16::from_be_bytes([ethertype[0], ethertype[1]]),
                &data[4..],
            ))
        }
        _ => ppp(data),
    }
}

const NFULA_PAYLOAD: u16 = 9;

/// NFLOG: family, version, resource id, then netlink attributes (length including the
/// 4-byte header, type; both in the logging host's byte order; padded to 4 bytes). The
/// packet is the NFULA_PAYLOAD attribute; a log entry without one carries no packet.
fn nflog(data: &[u8]) -> Option<Link<'_>> {
    if data.len() < 4 {
        return None;
    }
    let attrs = &data[4..];
    let payload = nflog_payload(attrs, u16::from_le_bytes)
        .or_else(|| nflog_payload(attrs, u16::from_be_bytes))?;
    let Some(payload) = payload else {
        return Some(Link::none());
    };
    let ethertype = match data[0] {
        2 => ETHERTYPE_IPV4,
        10 => ETHERTYPE_IPV6,
        _ => ip_ethertype(payload),
    };
    Some(Link::new(ethertype, payload))
}

/// The NFULA_PAYLOAD attribute's value when the attributes parse in this byte order
/// (`None` when they do not: a length shorter than its header or past the end).
fn nflog_payload(mut attrs: &[u8], read: fn([u8; 2]) -> u16) -> Option<Option<&[u8]>> {
    while attrs.len() >= 4 {
        let len = read([attrs[0], attrs[1]]) as usize;
        // The top two bits of the type are the nested and byte-order flags.
        let kind = read([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if kind == NFULA_PAYLOAD {
            return Some(Some(&attrs[4..len]));
        }
        attrs = &attrs[len.next_multiple_of(4).min(attrs.len())..];
    }
    Some(None)
}

/// Radiotap: version, pad, length (LE), presence bitmaps (bit 31: another word follows),
/// fields. Of the fields only Flags matters (FCS at the end, padding after the 802.11
/// header); it follows TSFT, which is 8-byte aligned from the start of the header.
fn radiotap(data: &[u8]) -> Option<Link<'_>> {
    let len = u16::from_le_bytes([*data.get(2)?, *data.get(3)?]) as usize;
    if len < 8 || len > data.len() {
        return None;
    }
    let header = &data[..len];
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(header.get(at..at + 4)?.try_into().ok()?))
    };
    let present = word(4)?;
    let mut at = 8;
    let mut last = present;
    while last & (1 << 31) != 0 {
        last = word(at)?;
        at += 4;
    }
    if present & 1 != 0 {
        at = at.next_multiple_of(8) + 8;
    }
    let flags = if present & 2 != 0 {
        *header.get(at)?
    } else {
        0
    };
    ieee80211(&data[len..], flags & 0x10 != 0, flags & 0x20 != 0)
}

/// An 802.11 frame (optionally with the 4-byte FCS at the end, optionally padded to 4 bytes
/// after the MAC header). Only unprotected data frames carry a packet: after the MAC header
/// (24 bytes, +6 with four addresses, +2 QoS control, +4 HT control) an LLC/SNAP header
/// (`aa aa 03`, OUI 00-00-00 or 00-00-f8) gives the ethertype.
fn ieee80211(data: &[u8], fcs: bool, padded: bool) -> Option<Link<'_>> {
    let data = if fcs {
        data.get(..data.len().checked_sub(4)?)?
    } else {
        data
    };
    let (fc0, fc1) = (*data.first()?, *data.get(1)?);
    let (kind, subtype) = ((fc0 >> 2) & 3, fc0 >> 4);
    let (to_ds, from_ds) = (fc1 & 1 != 0, fc1 & 2 != 0);
    let protected = fc1 & 0x40 != 0;
    // Type 2 is data; subtypes with bit 2 set (null data, CF-only) carry no payload.
    if kind != 2 || subtype & 4 != 0 || protected {
        return Some(Link::none());
    }
    let qos = subtype & 8 != 0;
    let mut header: usize = 24;
    if to_ds && from_ds {
        header += 6;
    }
    if qos {
        header += 2;
        if fc1 & 0x80 != 0 {
            header += 4;
        }
    }
    if padded {
        header = header.next_multiple_of(4);
    }
    let llc = data.get(header..header + 8)?;
    // An A-MSDU (QoS control bit 7) holds several subframes, not one packet.
    let amsdu = qos && data[24 + 6 * usize::from(to_ds && from_ds)] & 0x80 != 0;
    if amsdu || llc[..3] != [0xaa, 0xaa, 0x03] || !matches!(llc[3..6], [0, 0, 0] | [0, 0, 0xf8]) {
        return Some(Link::none());
    }
    let addr = |n: usize| mac(6, &data[4 + 6 * n..10 + 6 * n]);
    let (dst, src) = match (to_ds, from_ds) {
        (false, false) => (addr(0), addr(1)),
        (true, false) => (addr(2), addr(1)),
        (false, true) => (addr(0), addr(2)),
        (true, true) => (addr(2), mac(6, &data[24..30])),
    };
    Some(Link {
        dst,
        src,
        ..Link::new(u16::from_be_bytes([llc[6], llc[7]]), &data[header + 8..])
    })
}

fn mac(len: usize, addr: &[u8]) -> [u8; 6] {
    let mut m = [0u8; 6];
    if len == 6 {
        m.copy_from_slice(&addr[..6]);
    }
    m
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn describe_start(start: &[u8]) -> String {
    let hex: Vec<String> = start.iter().map(|b| format!("{b:02x}")).collect();
    let text: String = start
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        })
        .collect();
    format!("bytes {} \"{text}\"", hex.join(" "))
}

fn error_kind<I>(e: &PcapError<I>) -> String {
    match e {
        PcapError::NomError(_, kind) | PcapError::OwnedNomError(_, kind) => {
            format!("{kind:?} check failed")
        }
        PcapError::HeaderNotRecognized => "unrecognised header".to_string(),
        _ => "parse error".to_string(),
    }
}

/// What the header of a record too large for the read buffer claims.
fn oversized_detail(format: Format, big_endian: bool, data: &[u8]) -> String {
    let field = |at: usize| {
        let b = [data[at], data[at + 1], data[at + 2], data[at + 3]];
        if big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    };
    match format {
        Format::Pcap if data.len() >= 16 => format!(
            "record header claims {} captured bytes, more than any capture holds",
            field(8)
        ),
        Format::PcapNg if data.len() >= 8 => format!(
            "block header claims {} bytes, more than any block holds",
            field(4)
        ),
        _ => "record larger than any capture holds".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sll_becomes_ethernet_with_its_protocol_and_source_address() {
        let mut sll = vec![0, 0, 0, 1, 0, 6, 1, 2, 3, 4, 5, 6, 0, 0, 0x08, 0x00];
        sll.extend_from_slice(&[0x45, 0, 0, 20]);
        let mut out = Vec::new();
        assert_eq!(to_ethernet(LINKTYPE_LINUX_SLL, &sll, &mut out), Ok(false));
        assert_eq!(
            out,
            [0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 0x08, 0x00, 0x45, 0, 0, 20]
        );
    }

    #[test]
    fn sll2_becomes_ethernet_with_its_protocol() {
        let mut sll2 = vec![
            0x86, 0xdd, 0, 0, 0, 0, 0, 3, 0, 1, 0, 6, 9, 9, 9, 9, 9, 9, 0, 0,
        ];
        sll2.extend_from_slice(&[0x60, 0, 0, 0]);
        let mut out = Vec::new();
        assert_eq!(to_ethernet(LINKTYPE_LINUX_SLL2, &sll2, &mut out), Ok(false));
        assert_eq!(&out[6..14], &[9, 9, 9, 9, 9, 9, 0x86, 0xdd]);
        assert_eq!(&out[14..], &[0x60, 0, 0, 0]);
    }

    #[test]
    fn raw_ip_gets_the_ethertype_of_its_version() {
        let mut out = Vec::new();
        assert_eq!(
            to_ethernet(LINKTYPE_RAW, &[0x60, 0, 0, 0], &mut out),
            Ok(false)
        );
        assert_eq!(&out[12..14], &[0x86, 0xdd]);
        assert_eq!(
            to_ethernet(LINKTYPE_IPV4, &[0x45, 0, 0, 0], &mut out),
            Ok(false)
        );
        assert_eq!(&out[12..14], &[0x08, 0x00]);
    }

    #[test]
    fn short_cooked_header_is_reported_not_converted() {
        let mut out = vec![1, 2, 3];
        assert_eq!(
            to_ethernet(LINKTYPE_LINUX_SLL, &[0; 10], &mut out),
            Ok(true)
        );
        assert!(out.is_empty());
    }

    /// Writes `bytes` to a temporary file and reads every frame back.
    fn read_all(bytes: &[u8]) -> Vec<(FrameInfo, Vec<u8>)> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("vf-capture-{}-{n}", std::process::id()));
        std::fs::write(&path, bytes).expect("temp file");
        let mut reader = CaptureReader::open(&path).expect("a capture");
        let mut out = Vec::new();
        let mut frame = Vec::new();
        while let Some(info) = reader.next_frame(&mut frame).expect("readable") {
            out.push((info, frame.clone()));
        }
        std::fs::remove_file(&path).expect("remove temp file");
        out
    }

    fn pcap_header(magic: u32, big_endian: bool) -> Vec<u8> {
        let u32_bytes = |v: u32| {
            if big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let u16_bytes = |v: u16| {
            if big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let mut h = u32_bytes(magic).to_vec();
        h.extend_from_slice(&u16_bytes(2));
        h.extend_from_slice(&u16_bytes(4));
        // thiszone, sigfigs, snaplen, link type Ethernet
        for v in [0, 0, 65535, 1] {
            h.extend_from_slice(&u32_bytes(v));
        }
        h
    }

    fn record(big_endian: bool, sec: u32, frac: u32, data: &[u8]) -> Vec<u8> {
        let mut r = Vec::new();
        for v in [sec, frac, data.len() as u32, data.len() as u32] {
            r.extend_from_slice(&if big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            });
        }
        r.extend_from_slice(data);
        r
    }

    #[test]
    fn nanosecond_pcap_timestamps_keep_their_nanoseconds() {
        let mut f = pcap_header(0xa1b2_3c4d, false);
        f.extend(record(false, 1_700_000_000, 123_456_789, &[0u8; 60]));
        let frames = read_all(&f);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].0.ts_ns, 1_700_000_000_123_456_789);
    }

    #[test]
    fn big_endian_pcap_reads_like_little_endian() {
        let mut f = pcap_header(0xa1b2_c3d4, true);
        f.extend(record(true, 10, 5, &[7u8; 60]));
        f.extend(record(true, 11, 6, &[8u8; 61]));
        let frames = read_all(&f);
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].0.ts_ns, 10_000_005_000);
        assert_eq!(frames[1].1, vec![8u8; 61]);
        assert_eq!(frames[1].0.number, 2);
    }

    #[test]
    fn pcapng_without_tsresol_counts_microseconds() {
        let block = |ty: u32, body: &[u8]| {
            let len = 12 + body.len().div_ceil(4) * 4;
            let mut b = ty.to_le_bytes().to_vec();
            b.extend_from_slice(&(len as u32).to_le_bytes());
            b.extend_from_slice(body);
            b.resize(len - 4, 0);
            b.extend_from_slice(&(len as u32).to_le_bytes());
            b
        };
        let mut shb = 0x1a2b_3c4du32.to_le_bytes().to_vec();
        shb.extend_from_slice(&[1, 0, 0, 0]);
        shb.extend_from_slice(&u64::MAX.to_le_bytes());
        let mut f = block(0x0a0d_0d0a, &shb);
        f.extend(block(1, &[1, 0, 0, 0, 0, 0, 1, 0]));
        let ts: u64 = 1_700_000_000_000_001;
        let mut epb = 0u32.to_le_bytes().to_vec();
        epb.extend_from_slice(&((ts >> 32) as u32).to_le_bytes());
        epb.extend_from_slice(&(ts as u32).to_le_bytes());
        epb.extend_from_slice(&60u32.to_le_bytes());
        epb.extend_from_slice(&1514u32.to_le_bytes());
        epb.extend_from_slice(&[0u8; 60]);
        f.extend(block(6, &epb));
        let frames = read_all(&f);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].0.ts_ns, ts * 1_000);
        assert!(frames[0].0.snapped, "60 of 1514 bytes captured");
        assert_eq!(frames[0].0.wire_len, 1514);
    }

    #[test]
    fn unsupported_link_type_is_named() {
        let mut out = Vec::new();
        assert_eq!(to_ethernet(104, &[0; 40], &mut out), Err(104));
        assert_eq!(linktype_name(104), "Cisco HDLC");
    }

    const V4: [u8; 4] = [0x45, 0, 0, 20];
    const V6: [u8; 4] = [0x60, 0, 0, 0];

    /// Converts and returns (ethertype, payload) of the synthesised Ethernet frame.
    fn convert(linktype: u32, data: &[u8]) -> (u16, Vec<u8>) {
        let mut out = Vec::new();
        assert_eq!(
            to_ethernet(linktype, data, &mut out),
            Ok(false),
            "link type {linktype}: {data:02x?}"
        );
        (u16::from_be_bytes([out[12], out[13]]), out[14..].to_vec())
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn bsd_loopback_family_is_read_in_either_byte_order() {
        for (linktype, af, ip, ethertype) in [
            (LINKTYPE_NULL, [2, 0, 0, 0], V4, 0x0800),
            (LINKTYPE_NULL, [0, 0, 0, 2], V4, 0x0800),
            (LINKTYPE_NULL, [30, 0, 0, 0], V6, 0x86dd),
            (LINKTYPE_NULL, [0, 0, 0, 28], V6, 0x86dd),
            (LINKTYPE_LOOP, [0, 0, 0, 24], V6, 0x86dd),
            (LINKTYPE_LOOP, [0, 0, 0, 2], V4, 0x0800),
            (LINKTYPE_LOOP, [10, 0, 0, 0], V6, 0x86dd),
        ] {
            assert_eq!(
                convert(linktype, &cat(&[&af, &ip])),
                (ethertype, ip.to_vec()),
                "{linktype} {af:?}"
            );
        }
    }

    #[test]
    fn bsd_loopback_of_another_family_is_not_ip() {
        assert_eq!(convert(LINKTYPE_NULL, &[17, 0, 0, 0, 1, 2]).0, 0);
    }

    #[test]
    fn short_loopback_header_is_reported() {
        let mut out = Vec::new();
        assert_eq!(to_ethernet(LINKTYPE_NULL, &[2, 0], &mut out), Ok(true));
    }

    #[test]
    fn ppp_protocol_gives_the_ethertype_with_or_without_framing() {
        for (linktype, header, ip, ethertype) in [
            (LINKTYPE_PPP, &[0xff, 0x03, 0x00, 0x21][..], V4, 0x0800),
            (LINKTYPE_PPP, &[0x00, 0x57], V6, 0x86dd),
            (LINKTYPE_PPP, &[0x21], V4, 0x0800),
            (LINKTYPE_PPP, &[0xff, 0x03, 0x57], V6, 0x86dd),
            (LINKTYPE_PPP_HDLC, &[0xff, 0x03, 0x00, 0x21], V4, 0x0800),
            (LINKTYPE_PPP_HDLC, &[0x0f, 0x00, 0x86, 0xdd], V6, 0x86dd),
            (LINKTYPE_PPP_HDLC, &[0x8f, 0x00, 0x08, 0x00], V4, 0x0800),
            (
                LINKTYPE_PPP_WITH_DIR,
                &[0x00, 0xff, 0x03, 0x00, 0x21],
                V4,
                0x0800,
            ),
            (LINKTYPE_PPP_WITH_DIR, &[0x01, 0x00, 0x57], V6, 0x86dd),
        ] {
            assert_eq!(
                convert(linktype, &cat(&[header, &ip])),
                (ethertype, ip.to_vec()),
                "{linktype} {header:02x?}"
            );
        }
    }

    #[test]
    fn ppp_control_protocols_are_not_ip() {
        // LCP configure-request.
        assert_eq!(
            convert(LINKTYPE_PPP, &[0xff, 0x03, 0xc0, 0x21, 1, 1, 0, 4]),
            (0, vec![])
        );
    }

    /// NFLOG header (family, version 0, resource id 5) and attributes in `order`.
    fn nflog(family: u8, attrs: &[(u16, &[u8])], order: fn(u16) -> [u8; 2]) -> Vec<u8> {
        let mut b = vec![family, 0, 0, 5];
        for (kind, value) in attrs {
            b.extend_from_slice(&order(4 + value.len() as u16));
            b.extend_from_slice(&order(*kind));
            b.extend_from_slice(value);
            b.resize(b.len().next_multiple_of(4), 0);
        }
        b
    }

    #[test]
    fn nflog_payload_attribute_is_the_packet_in_either_byte_order() {
        let packet = cat(&[&V4, &[1, 2, 3]]);
        for order in [u16::to_le_bytes, u16::to_be_bytes] {
            // Packet header (hw protocol, hook), prefix "drop", then the payload.
            let attrs: [(u16, &[u8]); 3] = [
                (1, &[0x08, 0x00, 1, 0]),
                (10, b"drop\0"),
                (NFULA_PAYLOAD, &packet),
            ];
            assert_eq!(
                convert(LINKTYPE_NFLOG, &nflog(2, &attrs, order)),
                (0x0800, packet.clone())
            );
        }
        let attrs: [(u16, &[u8]); 1] = [(NFULA_PAYLOAD, &V6)];
        assert_eq!(
            convert(LINKTYPE_NFLOG, &nflog(10, &attrs, u16::to_le_bytes)),
            (0x86dd, V6.to_vec())
        );
    }

    #[test]
    fn nflog_without_payload_is_not_ip() {
        let attrs: [(u16, &[u8]); 1] = [(10, b"prefix\0")];
        assert_eq!(
            convert(LINKTYPE_NFLOG, &nflog(2, &attrs, u16::to_le_bytes)),
            (0, vec![])
        );
    }

    #[test]
    fn nflog_with_broken_attributes_is_reported() {
        let mut out = Vec::new();
        // An attribute claiming 200 bytes in both byte orders' readings of a 12-byte record.
        let broken = [2, 0, 0, 5, 0xc8, 0xc8, 9, 0, 0, 0, 0, 0];
        assert_eq!(to_ethernet(LINKTYPE_NFLOG, &broken, &mut out), Ok(true));
    }

    const A1: [u8; 6] = [1; 6];
    const A2: [u8; 6] = [2; 6];
    const A3: [u8; 6] = [3; 6];
    const A4: [u8; 6] = [4; 6];
    const SNAP_V4: [u8; 8] = [0xaa, 0xaa, 0x03, 0, 0, 0, 0x08, 0x00];

    /// An 802.11 MAC header: frame control, duration, three addresses, sequence control.
    fn wifi(fc: [u8; 2]) -> Vec<u8> {
        cat(&[&fc, &[0, 0], &A1, &A2, &A3, &[0, 0]])
    }

    /// (dst, src, ethertype, payload) of the synthesised frame.
    fn convert_wifi(linktype: u32, data: &[u8]) -> ([u8; 6], [u8; 6], u16, Vec<u8>) {
        let mut out = Vec::new();
        assert_eq!(to_ethernet(linktype, data, &mut out), Ok(false));
        (
            out[..6].try_into().expect("6"),
            out[6..12].try_into().expect("6"),
            u16::from_be_bytes([out[12], out[13]]),
            out[14..].to_vec(),
        )
    }

    #[test]
    fn wifi_data_frame_to_the_access_point_gives_its_snap_ethertype() {
        // Data, To DS: BSSID, source, destination.
        let frame = cat(&[&wifi([0x08, 0x01]), &SNAP_V4, &V4]);
        assert_eq!(
            convert_wifi(LINKTYPE_IEEE802_11, &frame),
            (A3, A2, 0x0800, V4.to_vec())
        );
    }

    #[test]
    fn wifi_qos_data_between_access_points_skips_the_fourth_address_and_qos() {
        // QoS data (subtype 8), To DS and From DS, order bit: HT control follows QoS control.
        let header = cat(&[&wifi([0x88, 0x83]), &A4, &[0, 0], &[0; 4]]);
        let frame = cat(&[&header, &[0xaa, 0xaa, 0x03, 0, 0, 0, 0x86, 0xdd], &V6]);
        assert_eq!(
            convert_wifi(LINKTYPE_IEEE802_11, &frame),
            (A3, A4, 0x86dd, V6.to_vec())
        );
    }

    #[test]
    fn wifi_frames_without_a_readable_packet_are_not_ip() {
        let beacon = cat(&[&wifi([0x80, 0x00]), &[0; 12]]);
        let null_data = wifi([0x48, 0x01]);
        let protected = cat(&[&wifi([0x08, 0x41]), &[0; 8], &SNAP_V4, &V4]);
        let ack = vec![0xd4, 0, 0, 0, 1, 1, 1, 1, 1, 1];
        for frame in [beacon, null_data, protected, ack] {
            assert_eq!(convert(LINKTYPE_IEEE802_11, &frame), (0, vec![]));
        }
    }

    #[test]
    fn wifi_data_frame_cut_inside_its_snap_header_is_reported() {
        let mut out = Vec::new();
        let frame = cat(&[&wifi([0x08, 0x01]), &SNAP_V4[..5]]);
        assert_eq!(to_ethernet(LINKTYPE_IEEE802_11, &frame, &mut out), Ok(true));
    }

    #[test]
    fn radiotap_header_is_skipped_and_its_fcs_flag_honoured() {
        let body = cat(&[&wifi([0x08, 0x02]), &SNAP_V4, &V4]);
        // Only the rate field: no flags, nothing at the end.
        let plain = cat(&[&[0, 0, 9, 0, 4, 0, 0, 0, 2], &body[..]]);
        assert_eq!(
            convert_wifi(LINKTYPE_IEEE802_11_RADIOTAP, &plain),
            (A1, A3, 0x0800, V4.to_vec())
        );
        // TSFT (8-byte aligned at 8), flags = FCS at end, then an extended presence word.
        let header = cat(&[
            &[0, 0, 28, 0],
            &(0x8000_0003u32).to_le_bytes(),
            &[0, 0, 0, 0],
            &[0; 4],
            &[7; 8],
            &[0x10],
            &[0; 3],
        ]);
        assert_eq!(header.len(), 28);
        let framed = cat(&[&header, &body, &[0xde, 0xad, 0xbe, 0xef]]);
        assert_eq!(
            convert_wifi(LINKTYPE_IEEE802_11_RADIOTAP, &framed),
            (A1, A3, 0x0800, V4.to_vec())
        );
    }

    #[test]
    fn radiotap_data_pad_flag_aligns_the_payload() {
        // QoS data (26-byte header) padded to 28.
        let body = cat(&[&wifi([0x88, 0x01]), &[0, 0], &[0, 0], &SNAP_V4, &V4]);
        let framed = cat(&[&[0, 0, 9, 0, 2, 0, 0, 0, 0x20], &body[..]]);
        assert_eq!(
            convert(LINKTYPE_IEEE802_11_RADIOTAP, &framed),
            (0x0800, V4.to_vec())
        );
    }

    #[test]
    fn radiotap_length_past_the_packet_is_reported() {
        let mut out = Vec::new();
        assert_eq!(
            to_ethernet(
                LINKTYPE_IEEE802_11_RADIOTAP,
                &[0, 0, 64, 0, 0, 0, 0, 0],
                &mut out
            ),
            Ok(true)
        );
    }
}
