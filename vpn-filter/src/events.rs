//! Drop/monitor events: from the kernel's ring buffer to JSON lines.
//!
//! Field names are stable and documented in docs/events.md.

use std::{
    io::Write,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use bytes::{BufMut as _, BytesMut};
use serde::Serialize;
use tokio::io::unix::AsyncFd;
use vpn_filter_common::{Event, Message, Protocol, Reason, Verdict, FAMILY_V4};

/// An event as written to the JSON-lines output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct EventRecord {
    /// Wall-clock time of the verdict, RFC 3339 with nanoseconds (UTC).
    pub time: String,
    /// Ingress interface name, resolved in the controller's network namespace (the index as
    /// text when it has no name there).
    pub iface: String,
    /// Ingress interface index.
    pub ifindex: u32,
    pub protocol: String,
    pub message: String,
    pub verdict: String,
    pub reason: String,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub ip_proto: u8,
    pub pkt_len: u32,
    pub vlan: u16,
    /// Events from this source suppressed by the kernel's rate limit since its previous event.
    pub suppressed_before: u32,
}

/// Converts the kernel's CLOCK_MONOTONIC timestamps to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    offset_ns: i128,
}

impl Clock {
    pub fn new() -> Self {
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        let real = clock_ns(libc::CLOCK_REALTIME);
        Clock {
            offset_ns: real - mono,
        }
    }

    pub fn wall(&self, mono_ns: u64) -> time::OffsetDateTime {
        let ns = mono_ns as i128 + self.offset_ns;
        time::OffsetDateTime::from_unix_timestamp_nanos(ns)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// Interface name for an index, or the index itself.
pub fn iface_name(ifindex: u32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return ifindex.to_string();
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

impl EventRecord {
    pub fn from_event(ev: &Event, clock: &Clock) -> Self {
        let (src, dst) = if ev.family == FAMILY_V4 {
            (
                IpAddr::V4(Ipv4Addr::new(ev.src[0], ev.src[1], ev.src[2], ev.src[3])),
                IpAddr::V4(Ipv4Addr::new(ev.dst[0], ev.dst[1], ev.dst[2], ev.dst[3])),
            )
        } else {
            (
                IpAddr::V6(Ipv6Addr::from(ev.src)),
                IpAddr::V6(Ipv6Addr::from(ev.dst)),
            )
        };
        let time = clock
            .wall(ev.ts_ns)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        EventRecord {
            time,
            iface: iface_name(ev.ifindex),
            ifindex: ev.ifindex,
            protocol: Protocol::from_u8(ev.protocol)
                .map_or("unknown", |p| p.name())
                .to_string(),
            message: Message::from_u8(ev.message)
                .map_or("unknown", |m| m.name())
                .to_string(),
            verdict: Verdict::from_u8(ev.verdict)
                .map_or("unknown", |v| v.name())
                .to_string(),
            reason: Reason::from_u8(ev.reason)
                .map_or("unknown", |r| r.name())
                .to_string(),
            src,
            dst,
            sport: u16::from_be_bytes(ev.sport),
            dport: u16::from_be_bytes(ev.dport),
            ip_proto: ev.ip_proto,
            pkt_len: ev.pkt_len,
            vlan: u16::from_be_bytes(ev.vlan),
            suppressed_before: ev.suppressed,
        }
    }
}

/// Decodes one ring-buffer record; `None` if it is not an [`Event`] (wrong size).
pub fn decode(bytes: &[u8]) -> Option<Event> {
    if bytes.len() != std::mem::size_of::<Event>() {
        return None;
    }
    // SAFETY: length checked; Event is Pod (any bit pattern valid); unaligned read.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const Event) })
}

/// Reads events until the task is cancelled, handing each to `sink`. Waits on the ring
/// buffer's epoll readiness; never busy-polls.
pub async fn stream(
    ring: RingBuf<MapData>,
    mut sink: impl FnMut(EventRecord) -> Result<()>,
) -> Result<()> {
    let clock = Clock::new();
    // SAFETY: the RingBuf owns its map fd, which stays open and unchanged until the RingBuf
    // (owned by the AsyncFd from here on) is dropped.
    let mut fd = unsafe { AsyncFd::register(ring) }
        .map_err(|e| anyhow::anyhow!("registering the event ring buffer with tokio: {e}"))?;
    loop {
        let mut guard = fd.readable_mut().await?;
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            match decode(&item) {
                Some(ev) => sink(EventRecord::from_event(&ev, &clock))?,
                None => log::warn!("ignored a ring-buffer record of {} bytes", item.len()),
            }
        }
        guard.clear_ready();
    }
}

/// Writes events as JSON lines, one `write` per batch.
pub struct JsonLines<W: Write> {
    out: W,
    buf: BytesMut,
}

impl<W: Write> JsonLines<W> {
    pub fn new(out: W) -> Self {
        JsonLines {
            out,
            buf: BytesMut::with_capacity(4096),
        }
    }

    pub fn write(&mut self, rec: &EventRecord) -> Result<()> {
        let mut w = (&mut self.buf).writer();
        serde_json::to_writer(&mut w, rec)?;
        self.buf.put_u8(b'\n');
        self.out.write_all(&self.buf)?;
        self.out.flush()?;
        self.buf.clear();
        Ok(())
    }
}
