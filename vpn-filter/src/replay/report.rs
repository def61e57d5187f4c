//! Replay output: aligned tables, or JSON lines (fields documented in docs/replay.md).

use std::{collections::BTreeMap, io::Write, net::IpAddr};

use serde::Serialize;
use vpn_filter_common::{Counter, Protocol, Verdict};

use super::{capture::linktype_name, DroppedPacket, FlowResult, Outcome, Replay};

/// What the replay ran with, for the report header.
#[derive(Clone, Debug)]
pub struct Context {
    pub registry: String,
    pub policy: String,
    pub show_dropped: bool,
    /// Why the capture could not be read to its end (the report covers what was read).
    pub error: Option<String>,
}

/// The second replay of a `--diff`.
pub struct DiffSide<'a> {
    pub replay: &'a Replay,
    pub registry: &'a str,
    pub policy: &'a str,
}

/// Parse counters worth reporting for packets the program did not classify.
const PARSE_COUNTERS: [Counter; 5] = [
    Counter::NonIp,
    Counter::Fragment,
    Counter::Truncated,
    Counter::Malformed,
    Counter::ExtHeaderLimit,
];

/// Verdict columns, most severe first.
const VERDICT_COLUMNS: [Verdict; 5] = [
    Verdict::Dropped,
    Verdict::Monitored,
    Verdict::Pending,
    Verdict::Allowed,
    Verdict::Ignored,
];

pub fn ip_proto_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        47 => "gre".into(),
        50 => "esp".into(),
        51 => "ah".into(),
        58 => "icmpv6".into(),
        132 => "sctp".into(),
        n => format!("ip{n}"),
    }
}

fn endpoint(ip: IpAddr, port: u16, ip_proto: u8) -> String {
    let has_ports = ip_proto == 6 || ip_proto == 17;
    match (ip, has_ports) {
        (IpAddr::V6(a), true) => format!("[{a}]:{port}"),
        (a, true) => format!("{a}:{port}"),
        (a, false) => a.to_string(),
    }
}

/// RFC 3339 UTC with nanoseconds.
pub fn rfc3339(ts_ns: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ts_ns as i128)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ts_ns.to_string())
}

fn relative(ts_ns: u64, start: u64) -> String {
    format!("+{:.6}s", ts_ns.saturating_sub(start) as f64 / 1e9)
}

fn linktypes(r: &Replay) -> String {
    if r.linktypes.is_empty() {
        return "no packets".into();
    }
    r.linktypes
        .iter()
        .map(|l| format!("{} ({l})", linktype_name(*l)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Rows of cells printed with columns padded to their widest cell; numeric columns (those
/// whose header is in `right`) are right-aligned.
fn print_rows(out: &mut impl Write, rows: &[Vec<String>], right: &[usize]) -> std::io::Result<()> {
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let mut widths = vec![0; cols];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = widths[i] - cell.chars().count();
            if right.contains(&i) {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                if i + 1 < row.len() {
                    line.push_str(&" ".repeat(pad));
                }
            }
        }
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// Tables for people.
pub fn table(
    out: &mut impl Write,
    ctx: &Context,
    r: &Replay,
    diff: Option<&DiffSide<'_>>,
) -> std::io::Result<()> {
    let start = r.first_ts_ns.unwrap_or(0);
    let span = r.last_ts_ns.unwrap_or(start).saturating_sub(start) as f64 / 1e9;
    writeln!(
        out,
        "capture   {} ({}, {})",
        r.path.display(),
        r.format.name(),
        linktypes(r)
    )?;
    match r.first_ts_ns {
        Some(first) => writeln!(
            out,
            "          {} packets, {} bytes, {:.3} s from {}",
            r.packets,
            r.bytes,
            span,
            rfc3339(first)
        )?,
        None => writeln!(out, "          no packets")?,
    }
    writeln!(out, "registry  {}", ctx.registry)?;
    writeln!(out, "policy    {}", ctx.policy)?;
    writeln!(
        out,
        "replayed  {} packets in {:.3} s ({:.0} packets/s)",
        r.packets,
        r.elapsed.as_secs_f64(),
        r.packets_per_second()
    )?;
    for w in warnings(r) {
        writeln!(out, "warning   {w}")?;
    }
    if let Some(e) = &ctx.error {
        writeln!(out, "error     {e} (the report covers what was read)")?;
    }

    writeln!(out, "\npackets by protocol and verdict")?;
    let mut rows = vec![{
        let mut h = vec!["PROTOCOL".to_string()];
        h.extend(VERDICT_COLUMNS.iter().map(|v| v.name().to_uppercase()));
        h.push("TOTAL".into());
        h
    }];
    for p in &Protocol::ALL[1..] {
        let counts: Vec<u64> = VERDICT_COLUMNS.iter().map(|v| r.verdict(*p, *v)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            continue;
        }
        let mut row = vec![p.name().to_string()];
        row.extend(counts.iter().map(|n| n.to_string()));
        row.push(total.to_string());
        rows.push(row);
    }
    let mut row = vec!["unclassified".to_string()];
    row.extend(VERDICT_COLUMNS.iter().map(|_| "-".to_string()));
    row.push(r.unclassified.to_string());
    rows.push(row);
    let mut row = vec!["total".to_string()];
    row.extend(
        VERDICT_COLUMNS
            .iter()
            .map(|v| r.packets_with(*v).to_string()),
    );
    row.push(r.packets.to_string());
    rows.push(row);
    print_rows(out, &rows, &[1, 2, 3, 4, 5, 6])?;
    let notes: Vec<String> = PARSE_COUNTERS
        .iter()
        .filter_map(|c| {
            let n = r.counters.get(c).copied().unwrap_or(0);
            (n > 0).then(|| format!("{n} {}", c.name()))
        })
        .collect();
    if !notes.is_empty() {
        writeln!(
            out,
            "(unclassified includes, as the program counted them: {})",
            notes.join(", ")
        )?;
    }

    writeln!(out, "\nflows ({})", r.flows.len())?;
    let mut rows = vec![[
        "PROTO",
        "SOURCE",
        "DESTINATION",
        "PROTOCOL",
        "VERDICT",
        "PACKETS",
        "DROPPED",
        "BYTES",
        "FIRST",
        "LAST",
    ]
    .map(String::from)
    .to_vec()];
    for f in &r.flows {
        rows.push(vec![
            ip_proto_name(f.ip_proto),
            endpoint(f.src, f.sport, f.ip_proto),
            endpoint(f.dst, f.dport, f.ip_proto),
            f.protocol.name().to_string(),
            f.verdict.name().to_string(),
            f.packets.to_string(),
            f.count(Outcome::Dropped).to_string(),
            f.bytes.to_string(),
            relative(f.first_ts_ns, start),
            relative(f.last_ts_ns, start),
        ]);
    }
    print_rows(out, &rows, &[5, 6, 7, 8, 9])?;
    let without = r.packets - r.flows.iter().map(|f| f.packets).sum::<u64>();
    if without > 0 {
        writeln!(out, "({without} packets carry no IP header: in no flow)")?;
    }

    if ctx.show_dropped {
        dropped_table(out, r, start)?;
    }
    if let Some(d) = diff {
        diff_table(out, r, d)?;
    }
    Ok(())
}

/// `--show-dropped`: every dropped packet, times relative to the capture's `start`.
fn dropped_table(out: &mut impl Write, r: &Replay, start: u64) -> std::io::Result<()> {
    writeln!(out, "\ndropped packets ({})", r.dropped.len())?;
    let mut rows = vec![[
        "PACKET",
        "TIME",
        "PROTO",
        "SOURCE",
        "DESTINATION",
        "PROTOCOL",
        "MESSAGE",
        "REASON",
        "BYTES",
    ]
    .map(String::from)
    .to_vec()];
    for d in &r.dropped {
        rows.push(vec![
            d.number.to_string(),
            relative(d.ts_ns, start),
            ip_proto_name(d.ip_proto),
            endpoint(d.src, d.sport, d.ip_proto),
            endpoint(d.dst, d.dport, d.ip_proto),
            d.protocol.name().to_string(),
            d.message.name().to_string(),
            d.reason.name().to_string(),
            d.wire_len.to_string(),
        ]);
    }
    print_rows(out, &rows, &[0, 1, 8])?;
    Ok(())
}

/// A second replay: the flows whose verdict it changes.
fn diff_table(out: &mut impl Write, r: &Replay, d: &DiffSide<'_>) -> std::io::Result<()> {
    let changed = r.changed_flows(d.replay);
    writeln!(
        out,
        "\nsecond replay: registry {}; policy {}",
        d.registry, d.policy
    )?;
    writeln!(
        out,
        "flows whose verdict changes ({} of {})",
        changed.len(),
        r.flows.len()
    )?;
    if !changed.is_empty() {
        let mut rows = vec![[
            "PROTO",
            "SOURCE",
            "DESTINATION",
            "PROTOCOL",
            "VERDICT",
            "",
            "SECOND",
            "PACKETS",
            "DROPPED",
            "",
            "SECOND",
        ]
        .map(String::from)
        .to_vec()];
        for (a, b) in changed {
            rows.push(vec![
                ip_proto_name(a.ip_proto),
                endpoint(a.src, a.sport, a.ip_proto),
                endpoint(a.dst, a.dport, a.ip_proto),
                if a.protocol == b.protocol || b.protocol == Protocol::None {
                    a.protocol.name().to_string()
                } else {
                    format!("{}/{}", a.protocol.name(), b.protocol.name())
                },
                a.verdict.name().to_string(),
                "->".into(),
                b.verdict.name().to_string(),
                a.packets.to_string(),
                a.count(Outcome::Dropped).to_string(),
                "->".into(),
                b.count(Outcome::Dropped).to_string(),
            ]);
        }
        print_rows(out, &rows, &[7, 8, 10])?;
    }
    Ok(())
}

fn warnings(r: &Replay) -> Vec<String> {
    let mut w = Vec::new();
    if r.snapped > 0 {
        w.push(format!(
            "{} packets were cut short by the capture's snap length: the program saw less than \
             the gateway would have, so their verdicts may differ from live",
            r.snapped
        ));
    }
    if r.oversized > 0 {
        w.push(format!(
            "{} frames are longer than {} bytes (GRO/TSO super-packets of a host capture, or \
             jumbo frames): a test run shows the program only their first {} bytes, so it \
             passes them as malformed; a gateway's XDP sees the segments on the wire instead",
            r.oversized,
            super::TEST_RUN_LINEAR_MAX,
            super::TEST_RUN_LINEAR_MAX
        ));
    }
    if r.not_run > 0 {
        w.push(format!(
            "{} frames were too short for an Ethernet (or cooked) header and passed without a run",
            r.not_run
        ));
    }
    w
}

/// Packets per verdict, only the verdicts that occur, most severe first.
fn outcome_counts(f: &FlowResult) -> BTreeMap<&'static str, u64> {
    Outcome::ALL
        .iter()
        .filter(|o| f.count(**o) > 0)
        .map(|o| (o.name(), f.count(*o)))
        .collect()
}

/// The `flow` record of docs/replay.md.
#[derive(Serialize)]
pub struct FlowRecord {
    pub record: &'static str,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    pub ip_proto: u8,
    pub protocol: &'static str,
    pub verdict: &'static str,
    pub packets: u64,
    pub bytes: u64,
    pub packets_by_verdict: BTreeMap<&'static str, u64>,
    pub first_packet: u64,
    pub first_seen: String,
    pub last_seen: String,
    pub message: Option<&'static str>,
    pub reason: Option<&'static str>,
}

impl FlowRecord {
    pub fn new(f: &FlowResult) -> FlowRecord {
        FlowRecord {
            record: "flow",
            src: f.src,
            sport: f.sport,
            dst: f.dst,
            dport: f.dport,
            ip_proto: f.ip_proto,
            protocol: f.protocol.name(),
            verdict: f.verdict.name(),
            packets: f.packets,
            bytes: f.bytes,
            packets_by_verdict: outcome_counts(f),
            first_packet: f.first_packet,
            first_seen: rfc3339(f.first_ts_ns),
            last_seen: rfc3339(f.last_ts_ns),
            message: f.message.map(|m| m.name()),
            reason: f.reason.map(|r| r.name()),
        }
    }
}

/// The `verdict_change` record: the flow as in the first replay, and what the second gave.
#[derive(Serialize)]
pub struct ChangeRecord {
    #[serde(flatten)]
    pub flow: FlowRecord,
    pub second_protocol: &'static str,
    pub second_verdict: &'static str,
    pub second_packets_by_verdict: BTreeMap<&'static str, u64>,
}

/// The `dropped_packet` record of docs/replay.md.
#[derive(Serialize)]
pub struct DroppedRecord {
    pub record: &'static str,
    pub packet: u64,
    pub time: String,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    pub ip_proto: u8,
    pub protocol: &'static str,
    pub message: &'static str,
    pub reason: &'static str,
    pub bytes: u64,
}

impl DroppedRecord {
    pub fn new(d: &DroppedPacket) -> DroppedRecord {
        DroppedRecord {
            record: "dropped_packet",
            packet: d.number,
            time: rfc3339(d.ts_ns),
            src: d.src,
            sport: d.sport,
            dst: d.dst,
            dport: d.dport,
            ip_proto: d.ip_proto,
            protocol: d.protocol.name(),
            message: d.message.name(),
            reason: d.reason.name(),
            bytes: d.wire_len,
        }
    }
}

/// Packets per protocol and verdict, for the summary.
fn verdict_totals(r: &Replay) -> BTreeMap<&'static str, BTreeMap<&'static str, u64>> {
    let mut m: BTreeMap<_, BTreeMap<_, _>> = BTreeMap::new();
    for ((p, v), n) in &r.verdicts {
        m.entry(p.name()).or_default().insert(v.name(), *n);
    }
    m
}

/// The second replay of a `--diff`, in the summary.
#[derive(Serialize)]
pub struct SecondSummary {
    pub registry: String,
    pub policy: String,
    pub verdicts: BTreeMap<&'static str, BTreeMap<&'static str, u64>>,
    pub dropped: u64,
    pub changed_flows: usize,
}

/// The `summary` record of docs/replay.md.
#[derive(Serialize)]
pub struct SummaryRecord {
    pub record: &'static str,
    pub capture: String,
    pub format: &'static str,
    pub link_types: Vec<u32>,
    pub registry: String,
    pub policy: String,
    pub packets: u64,
    pub bytes: u64,
    pub first_seen: Option<String>,
    pub last_seen: Option<String>,
    pub flows: usize,
    pub verdicts: BTreeMap<&'static str, BTreeMap<&'static str, u64>>,
    pub dropped: u64,
    pub unclassified: u64,
    pub counters: BTreeMap<&'static str, u64>,
    pub not_run: u64,
    pub snapped: u64,
    pub oversized: u64,
    pub attribution_gaps: u64,
    pub replay_seconds: f64,
    pub packets_per_second: f64,
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub second: Option<SecondSummary>,
}

impl SummaryRecord {
    pub fn new(ctx: &Context, r: &Replay) -> SummaryRecord {
        SummaryRecord {
            record: "summary",
            capture: r.path.display().to_string(),
            format: r.format.name(),
            link_types: r.linktypes.clone(),
            registry: ctx.registry.clone(),
            policy: ctx.policy.clone(),
            packets: r.packets,
            bytes: r.bytes,
            first_seen: r.first_ts_ns.map(rfc3339),
            last_seen: r.last_ts_ns.map(rfc3339),
            flows: r.flows.len(),
            verdicts: verdict_totals(r),
            dropped: r.packets_with(Verdict::Dropped),
            unclassified: r.unclassified,
            counters: PARSE_COUNTERS
                .iter()
                .map(|c| (c.name(), r.counters.get(c).copied().unwrap_or(0)))
                .collect(),
            not_run: r.not_run,
            snapped: r.snapped,
            oversized: r.oversized,
            attribution_gaps: r.attribution_gaps,
            replay_seconds: r.elapsed.as_secs_f64(),
            packets_per_second: r.packets_per_second().round(),
            error: ctx.error.clone(),
            second: None,
        }
    }
}

fn line(out: &mut impl Write, record: &impl Serialize) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, record)?;
    writeln!(out)
}

/// JSON lines: `flow` records, then `dropped_packet` (with --show-dropped) and
/// `verdict_change` (with --diff) records, then one `summary`.
pub fn json_lines(
    out: &mut impl Write,
    ctx: &Context,
    r: &Replay,
    diff: Option<&DiffSide<'_>>,
) -> std::io::Result<()> {
    for f in &r.flows {
        line(out, &FlowRecord::new(f))?;
    }
    if ctx.show_dropped {
        for d in &r.dropped {
            line(out, &DroppedRecord::new(d))?;
        }
    }
    let mut summary = SummaryRecord::new(ctx, r);
    if let Some(d) = diff {
        let changed = r.changed_flows(d.replay);
        for (a, b) in &changed {
            let mut flow = FlowRecord::new(a);
            flow.record = "verdict_change";
            line(
                out,
                &ChangeRecord {
                    flow,
                    second_protocol: b.protocol.name(),
                    second_verdict: b.verdict.name(),
                    second_packets_by_verdict: outcome_counts(b),
                },
            )?;
        }
        summary.second = Some(SecondSummary {
            registry: d.registry.to_string(),
            policy: d.policy.to_string(),
            verdicts: verdict_totals(d.replay),
            dropped: d.replay.packets_with(Verdict::Dropped),
            changed_flows: changed.len(),
        });
    }
    line(out, &summary)
}
