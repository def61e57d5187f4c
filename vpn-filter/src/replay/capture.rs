//! Reading pcap and pcapng captures as Ethernet frames the XDP program can parse.
//!
//! Link types: Ethernet (1) as captured; Linux cooked captures SLL (113) and SLL2 (276), and
//! raw IP (101, 228, 229), get an Ethernet header synthesised from their protocol field (or
//! the IP version). Any other link type is refused with its number and name.

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

const SUPPORTED: &str =
    "Ethernet (1), Linux cooked SLL (113), Linux cooked SLL2 (276) and raw IP (101, 228, 229)";

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
    let (ethertype, src_mac, payload): (u16, [u8; 6], &[u8]) = match linktype {
        LINKTYPE_ETHERNET => {
            out.extend_from_slice(data);
            return Ok(false);
        }
        LINKTYPE_LINUX_SLL => {
            // packet type, ARPHRD type, address length, 8 address bytes, protocol.
            if data.len() < SLL_HLEN {
                return Ok(true);
            }
            let alen = u16::from_be_bytes([data[4], data[5]]);
            (
                u16::from_be_bytes([data[14], data[15]]),
                mac(alen as usize, &data[6..14]),
                &data[SLL_HLEN..],
            )
        }
        LINKTYPE_LINUX_SLL2 => {
            // protocol, reserved, ifindex, ARPHRD type, packet type, address length, address.
            if data.len() < SLL2_HLEN {
                return Ok(true);
            }
            (
                u16::from_be_bytes([data[0], data[1]]),
                mac(data[11] as usize, &data[12..20]),
                &data[SLL2_HLEN..],
            )
        }
        LINKTYPE_RAW | LINKTYPE_IPV4 | LINKTYPE_IPV6 => {
            let ethertype = match data.first().map(|b| b >> 4) {
                Some(4) => 0x0800,
                Some(6) => 0x86dd,
                _ => 0,
            };
            (ethertype, [0; 6], data)
        }
        other => return Err(other),
    };
    out.reserve(ETH_HLEN + payload.len());
    out.extend_from_slice(&[0u8; 6]);
    out.extend_from_slice(&src_mac);
    out.extend_from_slice(&ethertype.to_be_bytes());
    out.extend_from_slice(payload);
    Ok(false)
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
        assert_eq!(to_ethernet(105, &[0; 40], &mut out), Err(105));
        assert_eq!(linktype_name(105), "IEEE 802.11");
    }
}
