//! The event record: one JSON line of `vpn-filter run`'s output, of `vpn-filter events` and
//! of the control socket's event stream, and how a kernel [`Event`] becomes one. Field names
//! are stable and documented in docs/events.md.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;
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
    /// `new`: the first verdict on this flow (a handshake signature, or the packet that
    /// confirmed a pending flow); `follow_up`: a later packet of a flow already judged.
    pub flow: String,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub ip_proto: u8,
    pub pkt_len: u32,
    pub vlan: u16,
    /// Events from this source suppressed by the kernel's rate limit since its previous event.
    pub suppressed_before: u32,
    /// For `endpoints` events: the provider whose listed server `dst` is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Encapsulations the packet was found inside, outermost first (`pppoe`, `mpls`,
    /// `ip_in_ip`, `gre`, `vxlan`, `geneve`, `vlan_stack`); absent for none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub encap: Vec<String>,
}

/// The borrowed form the pump serialises: same fields, same order, no owned strings.
#[derive(Serialize)]
pub(crate) struct EventJson<'a> {
    time: &'a str,
    iface: &'a str,
    ifindex: u32,
    protocol: &'static str,
    message: &'static str,
    verdict: &'static str,
    reason: &'static str,
    flow: &'static str,
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    ip_proto: u8,
    pkt_len: u32,
    vlan: u16,
    suppressed_before: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Allocated only for endpoint events.
    provider: Option<String>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    encap: &'static [&'static str],
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

    /// Formats the wall-clock time of `mono_ns` as RFC 3339 into `buf`; returns the text.
    pub(crate) fn format<'b>(&self, mono_ns: u64, buf: &'b mut [u8; 48]) -> &'b str {
        let cap = buf.len();
        let mut cursor: &mut [u8] = &mut buf[..];
        let ok = self
            .wall(mono_ns)
            .format_into(&mut cursor, &time::format_description::well_known::Rfc3339)
            .is_ok();
        // What was written is what the cursor moved past (format_into's own count leaves out
        // the subsecond digits in time 0.3).
        let n = if ok { cap - cursor.len() } else { 0 };
        // RFC 3339 output is ASCII.
        std::str::from_utf8(&buf[..n]).unwrap_or("")
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

fn name_or_unknown<T>(v: Option<T>, name: impl FnOnce(T) -> &'static str) -> &'static str {
    v.map_or("unknown", name)
}

/// The `flow` field: `new` or `follow_up` (see [`EventRecord::flow`]).
pub fn flow_state(reason: u8) -> &'static str {
    if reason == Reason::FlowFollowUp as u8
        || reason == Reason::Registered as u8
        || reason == Reason::Revoked as u8
    {
        "follow_up"
    } else {
        "new"
    }
}

fn addresses(ev: &Event) -> (IpAddr, IpAddr) {
    if ev.family == FAMILY_V4 {
        (
            IpAddr::V4(Ipv4Addr::new(ev.src[0], ev.src[1], ev.src[2], ev.src[3])),
            IpAddr::V4(Ipv4Addr::new(ev.dst[0], ev.dst[1], ev.dst[2], ev.dst[3])),
        )
    } else {
        (
            IpAddr::V6(Ipv6Addr::from(ev.src)),
            IpAddr::V6(Ipv6Addr::from(ev.dst)),
        )
    }
}

pub(crate) fn event_json<'a>(ev: &Event, time: &'a str, iface: &'a str) -> EventJson<'a> {
    let (src, dst) = addresses(ev);
    EventJson {
        time,
        iface,
        ifindex: ev.ifindex,
        protocol: name_or_unknown(Protocol::from_u8(ev.protocol), Protocol::name),
        message: name_or_unknown(Message::from_u8(ev.message), Message::name),
        verdict: name_or_unknown(Verdict::from_u8(ev.verdict), Verdict::name),
        reason: name_or_unknown(Reason::from_u8(ev.reason), Reason::name),
        flow: flow_state(ev.reason),
        src,
        dst,
        sport: u16::from_be_bytes(ev.sport),
        dport: u16::from_be_bytes(ev.dport),
        ip_proto: ev.ip_proto,
        pkt_len: ev.pkt_len,
        vlan: u16::from_be_bytes(ev.vlan),
        suppressed_before: ev.suppressed,
        provider: match ev.provider {
            0 => None,
            id => Some(
                crate::endpoints::provider_name(id)
                    .map_or_else(|| format!("#{id}"), |p| p.to_string()),
            ),
        },
        encap: encap_names(ev.encap),
    }
}

/// The names of the [`Event::encap`] bits set, outermost first, without allocating per
/// event: a table of all 256 combinations is built once.
fn encap_names(bits: u8) -> &'static [&'static str] {
    use std::sync::OnceLock;
    static TABLE: OnceLock<Vec<&'static [&'static str]>> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        (0..=u8::MAX)
            .map(|b| {
                let names: Vec<&'static str> = vpn_filter_common::ENCAP_NAMES
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| b & (1 << i) != 0)
                    .map(|(_, n)| *n)
                    .collect();
                &*Vec::leak(names)
            })
            .collect()
    });
    table[bits as usize]
}

impl EventRecord {
    pub fn from_event(ev: &Event, clock: &Clock) -> Self {
        let mut tbuf = [0u8; 48];
        let time = clock.format(ev.ts_ns, &mut tbuf);
        let iface = iface_name(ev.ifindex);
        let j = event_json(ev, time, &iface);
        EventRecord {
            time: j.time.to_string(),
            iface: j.iface.to_string(),
            ifindex: j.ifindex,
            protocol: j.protocol.to_string(),
            message: j.message.to_string(),
            verdict: j.verdict.to_string(),
            reason: j.reason.to_string(),
            flow: j.flow.to_string(),
            src: j.src,
            dst: j.dst,
            sport: j.sport,
            dport: j.dport,
            ip_proto: j.ip_proto,
            pkt_len: j.pkt_len,
            vlan: j.vlan,
            suppressed_before: j.suppressed_before,
            provider: j.provider,
            encap: j.encap.iter().map(|s| s.to_string()).collect(),
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
