//! The accuracy report's machinery (`cargo xtask accuracy`, binary `vpn-filter-accuracy`):
//! frames through the real program with BPF_PROG_TEST_RUN, each packet's verdicts read from
//! the program's own protocol x verdict counters, packets grouped into flows, and the tables.
//!
//! A packet is *flagged* when the program counted it `dropped` or `monitored` for some
//! protocol; a flow is flagged by a protocol when any of its packets was. `pending` (a
//! handshake that waits for its confirmation) is not a flag.
//!
//! Everything here but [`Runner`] is plain data and has unit tests.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt::Write as _,
    path::Path,
};

use anyhow::{bail, Context as _, Result};
use vpn_filter::{
    kernel::{Filter, LoadOptions, Policy, StatsReader},
    replay::{capture::CaptureReader, headers::tuple},
};
use vpn_filter_common::{verdict_counter_index, Config, Protocol, Verdict};

/// The XDP actions the program returns.
pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// Frames shorter than an Ethernet header are not run (BPF_PROG_TEST_RUN refuses them; the
/// program would pass them untouched).
const MIN_FRAME: usize = 14;

/// Number of protocol x verdict slots at the start of the program's `STATS` array.
const VERDICT_SLOTS: usize = Protocol::COUNT * Verdict::COUNT;

/// Whether a verdict is a flag: the program acted on (dropped) or reported (monitored) the
/// packet as this protocol.
pub fn is_flag(v: Verdict) -> bool {
    matches!(v, Verdict::Dropped | Verdict::Monitored)
}

/// The protocol x verdict counters that moved between two reads of the verdict slots.
pub fn verdict_deltas(before: &[u64], after: &[u64]) -> Vec<(Protocol, Verdict, u64)> {
    let mut out = Vec::new();
    for p in Protocol::ALL {
        for v in Verdict::ALL {
            let i = verdict_counter_index(*p, *v) as usize;
            let n = after
                .get(i)
                .copied()
                .unwrap_or(0)
                .saturating_sub(before.get(i).copied().unwrap_or(0));
            if n > 0 {
                out.push((*p, *v, n));
            }
        }
    }
    out
}

/// A flow: both directions of a conversation, keyed as the program keys its flow map
/// (lower address and port first), by IP protocol and outer VLAN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowId {
    pub family: u8,
    pub ip_proto: u8,
    pub vlan: u16,
    pub lo: ([u8; 16], u16),
    pub hi: ([u8; 16], u16),
}

/// The flow of an Ethernet frame, read with the program's own parser; `None` for frames
/// without an IPv4/IPv6 header. Ports are 0 for protocols without ports (ESP, GRE...) and
/// for non-first fragments.
pub fn flow_id(frame: &[u8]) -> Option<FlowId> {
    let t = tuple(frame)?;
    let a = (t.src, t.sport);
    let b = (t.dst, t.dport);
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    Some(FlowId {
        family: t.family,
        ip_proto: t.ip_proto,
        vlan: t.vlan,
        lo,
        hi,
    })
}

/// What the program did with one packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Judged {
    /// The XDP action (`None`: too short to run, passed).
    pub action: Option<u32>,
    /// The protocol x verdict counters it moved.
    pub verdicts: Vec<(Protocol, Verdict, u64)>,
}

/// One flow's packets and what was flagged in it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowTally {
    pub packets: u64,
    pub bytes: u64,
    /// Packets the program dropped (XDP_DROP, attributed to a protocol or not).
    pub dropped: u64,
    /// Packets counted `monitored`.
    pub monitored: u64,
    /// Per protocol: packets and bytes it flagged.
    pub flagged: BTreeMap<Protocol, (u64, u64)>,
}

impl FlowTally {
    /// Caught: a packet was dropped or reported.
    pub fn caught(&self) -> bool {
        self.dropped > 0 || self.monitored > 0 || !self.flagged.is_empty()
    }
}

/// Packets of one replay, grouped into flows.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub flows: HashMap<FlowId, FlowTally>,
    /// Frames without an IP header (not in any flow), counted in `packets` and `bytes`.
    pub no_flow: FlowTally,
    pub packets: u64,
    pub bytes: u64,
}

impl Tally {
    /// Adds one packet of `len` bytes in `flow` with what the program did with it.
    pub fn record(&mut self, flow: Option<FlowId>, len: usize, judged: &Judged) {
        let len = len as u64;
        self.packets += 1;
        self.bytes += len;
        let t = match flow {
            Some(id) => self.flows.entry(id).or_default(),
            None => &mut self.no_flow,
        };
        t.packets += 1;
        t.bytes += len;
        if judged.action == Some(XDP_DROP) {
            t.dropped += 1;
        }
        let mut flagged_by = BTreeSet::new();
        for (p, v, _) in &judged.verdicts {
            if *v == Verdict::Monitored {
                t.monitored += 1;
            }
            if is_flag(*v) {
                flagged_by.insert(*p);
            }
        }
        for p in flagged_by {
            let e = t.flagged.entry(p).or_default();
            e.0 += 1;
            e.1 += len;
        }
    }

    /// Flows that were caught (a packet dropped or reported).
    pub fn caught_flows(&self) -> u64 {
        self.flows.values().filter(|f| f.caught()).count() as u64
    }

    /// Packets the program dropped.
    pub fn dropped_packets(&self) -> u64 {
        self.flows.values().map(|f| f.dropped).sum::<u64>() + self.no_flow.dropped
    }

    pub fn dropped_flows(&self) -> u64 {
        self.flows.values().filter(|f| f.dropped > 0).count() as u64
    }

    pub fn monitored_packets(&self) -> u64 {
        self.flows.values().map(|f| f.monitored).sum::<u64>() + self.no_flow.monitored
    }

    /// Per protocol: flows it flagged, packets and bytes it flagged.
    pub fn by_protocol(&self) -> BTreeMap<Protocol, Flagged> {
        let mut out: BTreeMap<Protocol, Flagged> = BTreeMap::new();
        let mut add = |f: &FlowTally, is_flow: bool| {
            for (p, (packets, bytes)) in &f.flagged {
                let e = out.entry(*p).or_default();
                e.packets += packets;
                e.bytes += bytes;
                e.flows += u64::from(is_flow);
            }
        };
        for f in self.flows.values() {
            add(f, true);
        }
        add(&self.no_flow, false);
        out
    }
}

/// What a capture's replay amounts to, in the manifests' words: `blocked` (a packet dropped),
/// `monitored` (reported, none dropped) or `missed`.
pub fn outcome(t: &Tally) -> &'static str {
    if t.dropped_packets() > 0 {
        "blocked"
    } else if t.monitored_packets() > 0 || t.caught_flows() > 0 {
        "monitored"
    } else {
        "missed"
    }
}

/// Whether a measured [`outcome`] is what a manifest's `expected` says (`blocked`,
/// `monitored` or its synonym `reported`, `missed`); `None` for anything else.
pub fn as_expected(expected: &str, measured: &str) -> Option<bool> {
    let want = match expected.trim().to_ascii_lowercase().as_str() {
        "blocked" | "dropped" => "blocked",
        "monitored" | "reported" => "monitored",
        "missed" | "passed" | "pass" => "missed",
        _ => return None,
    };
    Some(want == measured)
}

/// Sums of several replays (separate loads: their flows are counted apart even when their
/// addresses meet).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub flows: u64,
    pub packets: u64,
    pub bytes: u64,
    pub caught_flows: u64,
    pub dropped_flows: u64,
    pub dropped_packets: u64,
    pub monitored_packets: u64,
    pub by_protocol: BTreeMap<Protocol, Flagged>,
}

impl Totals {
    pub fn add(&mut self, t: &Tally) {
        self.flows += t.flows.len() as u64;
        self.packets += t.packets;
        self.bytes += t.bytes;
        self.caught_flows += t.caught_flows();
        self.dropped_flows += t.dropped_flows();
        self.dropped_packets += t.dropped_packets();
        self.monitored_packets += t.monitored_packets();
        for (p, f) in t.by_protocol() {
            let e = self.by_protocol.entry(p).or_default();
            e.flows += f.flows;
            e.packets += f.packets;
            e.bytes += f.bytes;
        }
    }
}

/// What one protocol flagged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flagged {
    pub flows: u64,
    pub packets: u64,
    pub bytes: u64,
}

/// The real program, freshly loaded (empty flow map, counters at zero, nothing registered),
/// and a reader of its verdict counters.
pub struct Runner {
    filter: Filter,
    stats: StatsReader,
    last: Vec<u64>,
    now: Vec<u64>,
}

impl Runner {
    pub fn load(policy: &Policy) -> Result<Runner> {
        let mut filter = Filter::load(LoadOptions::default(), policy, &Config::default())
            .context("loading the XDP program")?;
        // The controller's default VPN domain list, as `vpn-filter run` loads it.
        filter.sync_vpn_domains(&vpn_filter::domains::DomainList::builtin())?;
        let stats = StatsReader::new(&filter)?;
        Ok(Runner {
            filter,
            stats,
            last: vec![0; VERDICT_SLOTS],
            now: vec![0; VERDICT_SLOTS],
        })
    }

    /// Runs one Ethernet frame; fails on a kernel error or XDP_ABORTED.
    pub fn run(&mut self, frame: &[u8]) -> Result<Judged> {
        if frame.len() < MIN_FRAME {
            return Ok(Judged {
                action: None,
                verdicts: Vec::new(),
            });
        }
        let action = self.filter.run_frame(frame)?;
        if action == XDP_ABORTED {
            bail!("XDP_ABORTED for frame {frame:02x?}");
        }
        self.stats.read_range(0, &mut self.now)?;
        let verdicts = verdict_deltas(&self.last, &self.now);
        std::mem::swap(&mut self.last, &mut self.now);
        Ok(Judged {
            action: Some(action),
            verdicts,
        })
    }

    /// Runs every frame, tallied by flow.
    pub fn tally<'a>(&mut self, frames: impl IntoIterator<Item = &'a [u8]>) -> Result<Tally> {
        let mut tally = Tally::default();
        for f in frames {
            let judged = self.run(f)?;
            tally.record(flow_id(f), f.len(), &judged);
        }
        Ok(tally)
    }
}

/// Every packet of a capture (pcap or pcapng, any link type replay reads) as Ethernet frames.
pub fn read_capture(path: &Path) -> Result<Vec<Vec<u8>>> {
    let mut reader = CaptureReader::open(path)?;
    let mut frames = Vec::new();
    let mut frame = Vec::new();
    while let Some(info) = reader.next_frame(&mut frame)? {
        if info.short_link_header {
            continue;
        }
        frames.push(std::mem::take(&mut frame));
    }
    if frames.is_empty() {
        bail!("{}: no packets", path.display());
    }
    Ok(frames)
}

/// One row of a fixtures manifest (`MANIFEST.tsv`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestRow {
    pub file: String,
    pub family: String,
    pub provenance: String,
    pub expected: String,
}

/// Reads a manifest: tab-separated, a header line naming the columns (`file`, `family`, and
/// optionally `provenance` and `expected`, in any order); blank lines and lines starting with
/// `#` are skipped.
pub fn parse_manifest(text: &str) -> Result<Vec<ManifestRow>> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'));
    let Some((_, header)) = lines.next() else {
        return Ok(Vec::new());
    };
    let columns: Vec<String> = header
        .split('\t')
        .map(|c| c.trim().to_ascii_lowercase())
        .collect();
    let col = |name: &str| columns.iter().position(|c| c == name);
    let (Some(file), Some(family)) = (col("file"), col("family")) else {
        bail!("the header line names no `file` and `family` columns: {header:?}");
    };
    let (provenance, expected) = (col("provenance"), col("expected"));
    let mut rows = Vec::new();
    for (n, line) in lines {
        let fields: Vec<&str> = line.split('\t').map(str::trim).collect();
        let get = |i: Option<usize>| {
            i.and_then(|i| fields.get(i))
                .copied()
                .unwrap_or("")
                .to_string()
        };
        let row = ManifestRow {
            file: get(Some(file)),
            family: get(Some(family)),
            provenance: get(provenance),
            expected: get(expected),
        };
        if row.file.is_empty() || row.family.is_empty() {
            bail!("line {}: no file or no family: {line:?}", n + 1);
        }
        rows.push(row);
    }
    Ok(rows)
}

/// Replaces what lies between the lines `begin` and `end` in `text` with `body`; both markers
/// must be there once, in that order.
pub fn replace_between(text: &str, begin: &str, end: &str, body: &str) -> Result<String> {
    let (Some(b), Some(e)) = (text.find(begin), text.find(end)) else {
        bail!("the markers {begin} and {end} are not both there");
    };
    if text.matches(begin).count() != 1 || text.matches(end).count() != 1 {
        bail!("the markers {begin} and {end} must each be there once");
    }
    if e < b {
        bail!("{end} comes before {begin}");
    }
    let mut out = String::with_capacity(text.len() + body.len());
    out.push_str(&text[..b + begin.len()]);
    out.push('\n');
    out.push_str(body.trim_matches('\n'));
    out.push('\n');
    out.push_str(&text[e..]);
    Ok(out)
}

/// `n / total` as a percentage with enough digits to show a small rate; "-" for no total.
pub fn percent(n: u64, total: u64) -> String {
    if total == 0 {
        return "-".into();
    }
    let p = n as f64 * 100.0 / total as f64;
    if n == 0 {
        "0%".into()
    } else if p >= 10.0 {
        format!("{p:.1}%")
    } else {
        format!("{p:.3}%")
    }
}

/// "openvpn 3, esp 1": flows flagged per protocol.
pub fn caught_as(tally: &Tally) -> String {
    let parts: Vec<String> = tally
        .by_protocol()
        .iter()
        .map(|(p, f)| format!("{} {}", p.name(), f.flows))
        .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

/// A markdown table.
pub fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "| {} |", head.join(" | "));
    let _ = writeln!(
        s,
        "|{}|",
        head.iter().map(|_| "---").collect::<Vec<_>>().join("|")
    );
    for r in rows {
        let _ = writeln!(s, "| {} |", r.join(" | "));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::Frame;

    fn udp(src: &str, sport: u16, dst: &str, dport: u16, len: usize) -> Vec<u8> {
        Frame::eth()
            .ip(src.parse().unwrap(), dst.parse().unwrap())
            .udp(sport, dport)
            .payload(&vec![0u8; len])
            .build()
    }

    #[test]
    fn both_directions_are_one_flow_and_ports_tell_flows_apart() {
        let a = flow_id(&udp("10.0.0.2", 40000, "10.0.0.1", 1194, 10)).unwrap();
        let b = flow_id(&udp("10.0.0.1", 1194, "10.0.0.2", 40000, 10)).unwrap();
        let c = flow_id(&udp("10.0.0.2", 40001, "10.0.0.1", 1194, 10)).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        let tcp = Frame::eth()
            .ip("10.0.0.2".parse().unwrap(), "10.0.0.1".parse().unwrap())
            .tcp(40000, 1194)
            .build();
        assert_ne!(flow_id(&tcp).unwrap(), a, "TCP and UDP are different flows");
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(flow_id(&arp), None);
    }

    fn judged(action: u32, verdicts: &[(Protocol, Verdict)]) -> Judged {
        Judged {
            action: Some(action),
            verdicts: verdicts.iter().map(|(p, v)| (*p, *v, 1)).collect(),
        }
    }

    #[test]
    fn a_flow_is_caught_by_any_dropped_or_monitored_packet_and_pending_is_no_flag() {
        let f1 = flow_id(&udp("10.0.0.2", 1, "10.0.0.1", 2, 1)).unwrap();
        let f2 = flow_id(&udp("10.0.0.2", 3, "10.0.0.1", 4, 1)).unwrap();
        let f3 = flow_id(&udp("10.0.0.2", 5, "10.0.0.1", 6, 1)).unwrap();
        let mut t = Tally::default();
        t.record(
            Some(f1),
            100,
            &judged(XDP_PASS, &[(Protocol::OpenVpn, Verdict::Pending)]),
        );
        t.record(
            Some(f1),
            60,
            &judged(XDP_DROP, &[(Protocol::OpenVpn, Verdict::Dropped)]),
        );
        t.record(
            Some(f2),
            80,
            &judged(XDP_PASS, &[(Protocol::WireGuard, Verdict::Monitored)]),
        );
        t.record(
            Some(f3),
            50,
            &judged(XDP_PASS, &[(Protocol::Ike, Verdict::Pending)]),
        );
        t.record(None, 42, &judged(XDP_PASS, &[]));
        assert_eq!((t.packets, t.bytes), (5, 332));
        assert_eq!(t.flows.len(), 3);
        assert_eq!(t.caught_flows(), 2);
        assert_eq!((t.dropped_flows(), t.dropped_packets()), (1, 1));
        assert_eq!(t.monitored_packets(), 1);
        let by = t.by_protocol();
        assert_eq!(
            by[&Protocol::OpenVpn],
            Flagged {
                flows: 1,
                packets: 1,
                bytes: 60
            }
        );
        assert_eq!(by[&Protocol::WireGuard].flows, 1);
        assert!(!by.contains_key(&Protocol::Ike), "pending is not a flag");
        assert_eq!(caught_as(&t), "wireguard 1, openvpn 1");

        let mut sum = Totals::default();
        sum.add(&t);
        sum.add(&t);
        assert_eq!((sum.flows, sum.packets, sum.caught_flows), (6, 10, 4));
        assert_eq!(sum.by_protocol[&Protocol::OpenVpn].packets, 2);
    }

    #[test]
    fn an_unattributed_drop_still_catches_the_flow() {
        let f = flow_id(&udp("10.0.0.2", 1, "10.0.0.1", 2, 1)).unwrap();
        let mut t = Tally::default();
        t.record(Some(f), 60, &judged(XDP_DROP, &[]));
        assert_eq!(t.caught_flows(), 1);
        assert!(t.by_protocol().is_empty());
    }

    #[test]
    fn deltas_are_per_protocol_and_verdict() {
        let before = vec![0u64; VERDICT_SLOTS];
        let mut after = before.clone();
        after[verdict_counter_index(Protocol::Esp, Verdict::Monitored) as usize] = 2;
        after[verdict_counter_index(Protocol::Ike, Verdict::Pending) as usize] = 1;
        assert_eq!(
            verdict_deltas(&before, &after),
            vec![
                (Protocol::Ike, Verdict::Pending, 1),
                (Protocol::Esp, Verdict::Monitored, 2)
            ]
        );
        assert!(verdict_deltas(&after, &after).is_empty());
    }

    #[test]
    fn manifest_columns_by_header_in_any_order() {
        let rows = parse_manifest(
            "# consumer captures\nfamily\tfile\texpected\tprovenance\n\n\
             nordvpn\tnord-udp.pcap\tcaught\trecorded 2026-12\nmullvad\tmv.pcapng\t\t\n",
        )
        .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].file, "nord-udp.pcap");
        assert_eq!(rows[0].family, "nordvpn");
        assert_eq!(rows[0].expected, "caught");
        assert_eq!(rows[0].provenance, "recorded 2026-12");
        assert_eq!(rows[1].expected, "");
        let no_provenance = parse_manifest("file\tfamily\na.pcap\twireguard\n").unwrap();
        assert_eq!(no_provenance[0].provenance, "");
        assert!(parse_manifest("name\tkind\na\tb\n").is_err());
        assert!(parse_manifest("file\tfamily\na.pcap\n").is_err());
        assert!(parse_manifest("").unwrap().is_empty());
    }

    #[test]
    fn the_section_between_the_markers_is_replaced_and_the_rest_kept() {
        let (b, e) = ("<!-- accuracy:begin -->", "<!-- accuracy:end -->");
        let doc = format!("# Title\n\nintro\n{b}\nold\ntable\n{e}\n\n## Next\n");
        let out = replace_between(&doc, b, e, "\nnew table\n\n").unwrap();
        assert_eq!(
            out,
            format!("# Title\n\nintro\n{b}\nnew table\n{e}\n\n## Next\n")
        );
        assert_eq!(replace_between(&out, b, e, "new table").unwrap(), out);
        assert!(replace_between("no markers", b, e, "x").is_err());
        assert!(replace_between(&format!("{e}\n{b}\n"), b, e, "x").is_err());
        assert!(replace_between(&format!("{b}\n{e}\n{b}\n{e}\n"), b, e, "x").is_err());
    }

    #[test]
    fn outcomes_compare_with_the_manifest_words() {
        let f = flow_id(&udp("10.0.0.2", 1, "10.0.0.1", 2, 1)).unwrap();
        let mut t = Tally::default();
        t.record(Some(f), 60, &judged(XDP_PASS, &[]));
        assert_eq!(outcome(&t), "missed");
        t.record(
            Some(f),
            60,
            &judged(XDP_PASS, &[(Protocol::WireGuard, Verdict::Monitored)]),
        );
        assert_eq!(outcome(&t), "monitored");
        assert_eq!(as_expected("reported", outcome(&t)), Some(true));
        t.record(Some(f), 60, &judged(XDP_DROP, &[]));
        assert_eq!(outcome(&t), "blocked");
        assert_eq!(as_expected("Blocked", "blocked"), Some(true));
        assert_eq!(as_expected("monitored", "blocked"), Some(false));
        assert_eq!(as_expected("caught, eventually", "blocked"), None);
    }

    #[test]
    fn percentages_show_small_rates() {
        assert_eq!(percent(0, 10), "0%");
        assert_eq!(percent(1, 3), "33.3%");
        assert_eq!(percent(1, 100_000), "0.001%");
        assert_eq!(percent(1, 0), "-");
    }
}
