//! The running daemon's state, as `vpn-filter status`, the metrics endpoint and `vpn-filter
//! top` see it.
//!
//! [`DaemonStatus`] is the small shared struct the daemon loop updates (attachments at start,
//! the registry after every sync: see [`RegistryStatus::synced`] and
//! [`RegistryStatus::failed`]); [`Sources`] bundles it with the kernel counters and the event
//! pipeline's counters, and [`Sources::report`] takes one consistent snapshot of all of them as
//! a [`StatusReport`], the document the control socket serves.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{Arc, Mutex, MutexGuard},
};

use anyhow::{anyhow, Result};
use aya::maps::{Map, MapData, PerCpuArray};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use vpn_filter_common::{maps, Counter, Protocol, Verdict};

use crate::{
    daemon::observe::events::{EventHub, PipelineCounters},
    kernel::{Filter, Policy, Stats},
    registry::sync::SyncReport,
};

/// Shared, updated by the daemon loop, read by the control socket and the metrics endpoint.
pub type SharedStatus = Arc<Mutex<DaemonStatus>>;

/// What the daemon knows about itself besides counters.
#[derive(Clone, Debug)]
pub struct DaemonStatus {
    pub started_at: OffsetDateTime,
    pub program_id: Option<u32>,
    pub interfaces: Vec<InterfaceStatus>,
    pub policy: BTreeMap<String, String>,
    pub registry: RegistryStatus,
    /// The endpoint feed (`None` without `--endpoints`).
    pub endpoints: Option<RegistryStatus>,
    /// Where events are written (`stdout` or the file path).
    pub events_output: String,
}

impl DaemonStatus {
    pub fn new(policy: &Policy, registry_source: impl Into<String>) -> Self {
        DaemonStatus {
            started_at: OffsetDateTime::now_utc(),
            program_id: None,
            interfaces: Vec::new(),
            policy: Protocol::ALL[1..]
                .iter()
                .map(|p| (p.name().to_string(), policy.mode(*p).name().to_string()))
                .collect(),
            registry: RegistryStatus {
                source: registry_source.into(),
                ..Default::default()
            },
            endpoints: None,
            events_output: "stdout".into(),
        }
    }

    pub fn shared(self) -> SharedStatus {
        Arc::new(Mutex::new(self))
    }
}

/// Locks the shared status; a panic elsewhere while holding it leaves plain data behind, so a
/// poisoned lock is still usable.
pub fn lock(status: &SharedStatus) -> MutexGuard<'_, DaemonStatus> {
    status.lock().unwrap_or_else(|e| e.into_inner())
}

/// One interface the program is attached to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceStatus {
    pub name: String,
    pub ifindex: u32,
    /// `native`, `generic`, or `pinned` (a link taken over from a previous controller, in
    /// whatever mode it was created).
    pub mode: String,
}

/// The allowlist in force and how the last registry sync went.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryStatus {
    /// Where the feed comes from (path or URL).
    pub source: String,
    /// Serial of the feed whose allowlist is in force; `null` before the first good sync (or
    /// when the feed has no serial).
    pub serial: Option<u64>,
    pub v4_prefixes: u64,
    pub v6_prefixes: u64,
    /// Time of the last sync attempt (good or not).
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_sync: Option<OffsetDateTime>,
    /// `ok` or `error`; `null` before the first attempt.
    pub last_outcome: Option<String>,
    /// The last failure's message (kept after later successes, with its time).
    pub last_error: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_error_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_success: Option<OffsetDateTime>,
    pub syncs_ok: u64,
    pub syncs_failed: u64,
    /// Time the source last answered with the feed in force (`304 Not Modified`, the same
    /// bytes) or with a new feed that was applied: how current this gateway's view is.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub last_check: Option<OffsetDateTime>,
    /// `generated_at` of the feed in force (`null` for a feed without one).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub feed_generated_at: Option<OffsetDateTime>,
}

impl RegistryStatus {
    /// Records a sync that put feed `serial` in force (`None`: a feed without a serial).
    pub fn synced(&mut self, serial: impl Into<Option<u64>>, report: &SyncReport) {
        let now = OffsetDateTime::now_utc();
        self.serial = serial.into();
        self.v4_prefixes = report.v4 as u64;
        self.v6_prefixes = report.v6 as u64;
        self.last_sync = Some(now);
        self.last_success = Some(now);
        self.last_outcome = Some("ok".into());
        self.last_check = Some(now);
        self.syncs_ok += 1;
    }

    /// Records a poll whose answer was the feed in force (`304`, or the same bytes): the
    /// source is reachable and this gateway is current.
    pub fn confirmed(&mut self) {
        let now = OffsetDateTime::now_utc();
        self.last_check = Some(now);
        self.last_outcome = Some("ok".into());
    }

    /// Records a refused feed or a failed sync (the previous allowlist stays in force).
    pub fn failed(&mut self, error: &dyn std::fmt::Display) {
        let now = OffsetDateTime::now_utc();
        self.last_sync = Some(now);
        self.last_error_at = Some(now);
        self.last_error = Some(format!("{error:#}"));
        self.last_outcome = Some("error".into());
        self.syncs_failed += 1;
    }
}

/// An independent handle on the kernel's `STATS` map (its own fd), so counters can be read
/// from any task while the daemon loop owns the [`Filter`].
pub struct StatsReader {
    map: PerCpuArray<MapData, u64>,
    endpoints: PerCpuArray<MapData, u64>,
}

impl std::fmt::Debug for StatsReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatsReader").finish_non_exhaustive()
    }
}

impl StatsReader {
    pub fn new(filter: &Filter) -> Result<Self> {
        let open = |name: &str| -> Result<PerCpuArray<MapData, u64>> {
            let data = match filter.map(name)? {
                Map::PerCpuArray(data) => data,
                _ => return Err(anyhow!("map {name} is not a per-CPU array")),
            };
            let fd = std::os::fd::AsFd::as_fd(data.fd()).try_clone_to_owned()?;
            Ok(PerCpuArray::try_from(Map::PerCpuArray(MapData::from_fd(
                fd,
            )?))?)
        };
        Ok(StatsReader {
            map: open(maps::STATS)?,
            endpoints: open(maps::ENDPOINT_STATS)?,
        })
    }

    /// Per provider of the endpoint feed in force: packets dropped and monitored.
    pub fn read_providers(&self) -> Result<Vec<ProviderCounts>> {
        let names = crate::endpoints::providers_in_force();
        let counts = crate::kernel::endpoints::read_endpoint_stats(&self.endpoints, names.len())?;
        Ok(names
            .iter()
            .zip(counts)
            .enumerate()
            .map(|(i, (name, (dropped, monitored)))| ProviderCounts {
                id: (i + 1) as u16,
                name: name.to_string(),
                dropped,
                monitored,
            })
            .collect())
    }

    /// Counters summed over CPUs.
    pub fn read(&self) -> Result<Stats> {
        Stats::read(&self.map)
    }
}

/// Everything a status report is made from.
#[derive(Clone, Debug)]
pub struct Sources {
    pub status: SharedStatus,
    pub stats: Arc<StatsReader>,
    pub pipeline: Arc<PipelineCounters>,
    pub hub: EventHub,
}

impl Sources {
    pub fn report(&self) -> Result<StatusReport> {
        let stats = self.stats.read()?;
        let status = lock(&self.status).clone();
        let now = OffsetDateTime::now_utc();
        let get = PipelineCounters::get;
        let p = &self.pipeline;
        Ok(StatusReport {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            started_at: status.started_at,
            uptime_secs: (now - status.started_at).whole_seconds().max(0) as u64,
            program_id: status.program_id,
            interfaces: status.interfaces,
            policy: status.policy,
            registry: status.registry,
            endpoints: match status.endpoints {
                Some(feed) => Some(EndpointsReport {
                    feed,
                    providers: self.stats.read_providers()?,
                }),
                None => None,
            },
            counters: KernelCounters::from_stats(&stats),
            events: EventsStatus {
                output: status.events_output,
                emitted: stats.counter(Counter::EventsEmitted),
                suppressed: stats.counter(Counter::EventsSuppressed),
                lost: stats.counter(Counter::EventsLost),
                received: get(&p.received),
                undecodable: get(&p.undecodable),
                written: get(&p.written),
                output_failed: get(&p.output_failed),
                followers: self.hub.followers() as u64,
                follower_dropped: get(&p.follower_dropped),
            },
        })
    }
}

/// The document `vpn-filter status --json` prints (field names are stable; see
/// docs/metrics.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub version: String,
    pub pid: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    pub uptime_secs: u64,
    pub program_id: Option<u32>,
    pub interfaces: Vec<InterfaceStatus>,
    /// Protocol name to `enforce`, `monitor` or `off`.
    pub policy: BTreeMap<String, String>,
    pub registry: RegistryStatus,
    /// The endpoint feed and per-provider verdicts; absent without `--endpoints`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<EndpointsReport>,
    pub counters: KernelCounters,
    pub events: EventsStatus,
}

/// The endpoint feed in force (same fields as the registry's) and what each provider's
/// listing caught.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointsReport {
    #[serde(flatten)]
    pub feed: RegistryStatus,
    pub providers: Vec<ProviderCounts>,
}

/// Packets to one provider's listed endpoints from unregistered clients.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderCounts {
    pub id: u16,
    pub name: String,
    pub dropped: u64,
    pub monitored: u64,
}

/// The kernel's counters, summed over CPUs, by their stable names.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelCounters {
    /// protocol -> verdict -> packets, for every protocol and verdict (zeros included).
    pub verdicts: BTreeMap<String, BTreeMap<String, u64>>,
    /// Parse and infrastructure counters (`packets`, `truncated`, `flow_hit`, ...).
    pub counters: BTreeMap<String, u64>,
}

impl KernelCounters {
    pub fn from_stats(stats: &Stats) -> Self {
        let verdicts = Protocol::ALL[1..]
            .iter()
            .map(|p| {
                let by_verdict = Verdict::ALL
                    .iter()
                    .map(|v| (v.name().to_string(), stats.verdict(*p, *v)))
                    .collect();
                (p.name().to_string(), by_verdict)
            })
            .collect();
        let counters = Counter::ALL
            .iter()
            .map(|c| (c.name().to_string(), stats.counter(*c)))
            .collect();
        KernelCounters { verdicts, counters }
    }

    pub fn verdict(&self, protocol: &str, verdict: &str) -> u64 {
        self.verdicts
            .get(protocol)
            .and_then(|m| m.get(verdict))
            .copied()
            .unwrap_or(0)
    }

    pub fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }

    /// Sum of one verdict over all protocols.
    pub fn verdict_total(&self, verdict: &str) -> u64 {
        self.verdicts.values().filter_map(|m| m.get(verdict)).sum()
    }
}

/// Event accounting, kernel and userspace: nothing is lost without a count here.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsStatus {
    /// `stdout` or the events file.
    pub output: String,
    /// Kernel: records put in the ring buffer.
    pub emitted: u64,
    /// Kernel: events not emitted because their source exceeded its rate
    /// (`--events-per-source`).
    pub suppressed: u64,
    /// Kernel: events lost because the ring buffer was full.
    pub lost: u64,
    /// Controller: records read from the ring buffer.
    pub received: u64,
    /// Controller: records of the wrong size (version mismatch), skipped.
    pub undecodable: u64,
    /// Controller: events written to the output.
    pub written: u64,
    /// Controller: events whose write failed.
    pub output_failed: u64,
    /// Clients streaming events now (`events --follow`, `top`).
    pub followers: u64,
    /// Lines slow followers missed.
    pub follower_dropped: u64,
}

/// `3725` -> `1h 2m`: the coarse uptime operators read.
pub fn duration_text(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

fn time_text(t: Option<OffsetDateTime>) -> String {
    t.and_then(|t| {
        t.format(&time::format_description::well_known::Rfc3339)
            .ok()
    })
    .unwrap_or_else(|| "never".into())
}

/// The human-readable form of `vpn-filter status`.
pub fn render_text(r: &StatusReport) -> String {
    let mut o = String::new();
    let started = time_text(Some(r.started_at));
    let _ = writeln!(
        o,
        "vpn-filter {} (pid {}), up {} since {started}",
        r.version,
        r.pid,
        duration_text(r.uptime_secs)
    );
    let _ = writeln!(
        o,
        "program id: {}",
        r.program_id.map_or("?".into(), |i| i.to_string())
    );
    let ifaces: Vec<String> = r
        .interfaces
        .iter()
        .map(|i| format!("{} (ifindex {}, {})", i.name, i.ifindex, i.mode))
        .collect();
    let _ = writeln!(o, "interfaces: {}", ifaces.join(", "));
    let reg = &r.registry;
    let _ = writeln!(
        o,
        "registry: {}: serial {}, {} IPv4 + {} IPv6 prefixes in force",
        reg.source,
        reg.serial.map_or("none".into(), |s| s.to_string()),
        reg.v4_prefixes,
        reg.v6_prefixes
    );
    let _ = writeln!(
        o,
        "  last sync: {} ({}), last success: {}, {} ok / {} failed",
        time_text(reg.last_sync),
        reg.last_outcome.as_deref().unwrap_or("none yet"),
        time_text(reg.last_success),
        reg.syncs_ok,
        reg.syncs_failed
    );
    if let Some(e) = &reg.last_error {
        let _ = writeln!(o, "  last error ({}): {e}", time_text(reg.last_error_at));
    }
    if let Some(ep) = &r.endpoints {
        let f = &ep.feed;
        let _ = writeln!(
            o,
            "endpoints: {}: serial {}, {} IPv4 + {} IPv6 prefixes of {} provider(s); last sync {} ({})",
            f.source,
            f.serial.map_or("none".into(), |s| s.to_string()),
            f.v4_prefixes,
            f.v6_prefixes,
            ep.providers.len(),
            time_text(f.last_sync),
            f.last_outcome.as_deref().unwrap_or("none yet"),
        );
        if let Some(e) = &f.last_error {
            let _ = writeln!(o, "  last error ({}): {e}", time_text(f.last_error_at));
        }
        for p in &ep.providers {
            let _ = writeln!(
                o,
                "  provider {}: {} dropped, {} monitored",
                p.name, p.dropped, p.monitored
            );
        }
    }
    let modes: Vec<String> = r.policy.iter().map(|(p, m)| format!("{p}={m}")).collect();
    let _ = writeln!(o, "policy: {}", modes.join(" "));
    let c = &r.counters;
    let _ = writeln!(
        o,
        "packets: {} (IPv4 {}, IPv6 {}, non-IP {}); VPN candidates {}",
        c.counter("packets"),
        c.counter("ipv4"),
        c.counter("ipv6"),
        c.counter("non_ip"),
        c.counter("candidates")
    );
    let _ = writeln!(
        o,
        "passed unparsed: fragment {}, truncated {}, malformed {}, ext_header_limit {}",
        c.counter("fragment"),
        c.counter("truncated"),
        c.counter("malformed"),
        c.counter("ext_header_limit")
    );
    let _ = writeln!(
        o,
        "flows: {} hits, {} inserts, {} insert failures; {} allowlist lookups; {} internal errors",
        c.counter("flow_hit"),
        c.counter("flow_insert"),
        c.counter("flow_insert_failed"),
        c.counter("allowlist_lookups"),
        c.counter("internal_error")
    );
    let verdicts: Vec<&str> = Verdict::ALL.iter().map(|v| v.name()).collect();
    let _ = write!(o, "{:<18}", "protocol");
    for v in &verdicts {
        let _ = write!(o, "{v:>12}");
    }
    o.push('\n');
    let mut any = false;
    for (p, by) in &c.verdicts {
        if by.values().all(|n| *n == 0) {
            continue;
        }
        any = true;
        let _ = write!(o, "{p:<18}");
        for v in &verdicts {
            let _ = write!(o, "{:>12}", by.get(*v).copied().unwrap_or(0));
        }
        o.push('\n');
    }
    if !any {
        let _ = writeln!(o, "  (no VPN traffic seen yet)");
    }
    let e = &r.events;
    let _ = writeln!(
        o,
        "events: {} emitted, {} suppressed by the per-source rate limit, {} lost (ring buffer full)",
        e.emitted, e.suppressed, e.lost
    );
    let _ = writeln!(
        o,
        "  output {}: {} written, {} failed; {} followers, {} lines they missed; {} undecodable",
        e.output, e.written, e.output_failed, e.followers, e.follower_dropped, e.undecodable
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StatusReport {
        let mut stats = Stats::default();
        stats
            .verdicts
            .insert((Protocol::WireGuard, Verdict::Dropped), 12);
        stats.counters.insert(Counter::Packets, 40);
        stats.counters.insert(Counter::EventsSuppressed, 7);
        let mut registry = RegistryStatus {
            source: "/etc/vpn-filter/registry.json".into(),
            ..Default::default()
        };
        registry.synced(
            42,
            &SyncReport {
                v4: 3,
                v6: 1,
                ..Default::default()
            },
        );
        StatusReport {
            version: "0.1.0".into(),
            pid: 99,
            started_at: OffsetDateTime::UNIX_EPOCH,
            uptime_secs: 3725,
            program_id: Some(17),
            interfaces: vec![InterfaceStatus {
                name: "eth0".into(),
                ifindex: 2,
                mode: "native".into(),
            }],
            policy: [("wireguard".to_string(), "enforce".to_string())].into(),
            registry,
            endpoints: None,
            counters: KernelCounters::from_stats(&stats),
            events: EventsStatus {
                output: "stdout".into(),
                suppressed: 7,
                ..Default::default()
            },
        }
    }

    #[test]
    fn report_round_trips_through_json() {
        let r = sample();
        let text = serde_json::to_string(&r).unwrap();
        let back: StatusReport = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["counters"]["verdicts"]["wireguard"]["dropped"], 12);
        assert_eq!(v["counters"]["verdicts"]["openvpn"]["dropped"], 0);
        assert_eq!(v["registry"]["serial"], 42);
        assert_eq!(v["registry"]["last_outcome"], "ok");
    }

    #[test]
    fn text_names_interfaces_registry_and_counters() {
        let text = render_text(&sample());
        assert!(text.contains("eth0 (ifindex 2, native)"), "{text}");
        assert!(text.contains("serial 42, 3 IPv4 + 1 IPv6"), "{text}");
        assert!(text.contains("up 1h 2m"), "{text}");
        let wg = text
            .lines()
            .find(|l| l.starts_with("wireguard"))
            .unwrap_or_else(|| panic!("a wireguard row in {text}"));
        assert_eq!(
            wg.split_whitespace().collect::<Vec<_>>(),
            ["wireguard", "0", "12", "0", "0", "0"]
        );
        assert!(
            !text.contains("\nopenvpn"),
            "protocols without traffic are left out"
        );
        assert!(text.contains("7 suppressed"), "{text}");
    }

    #[test]
    fn a_failed_sync_keeps_the_serial_in_force() {
        let mut r = RegistryStatus::default();
        r.synced(
            5,
            &SyncReport {
                v4: 1,
                ..Default::default()
            },
        );
        r.failed(&"entry REG-9: bad prefix");
        assert_eq!(r.serial, Some(5));
        assert_eq!(r.last_outcome.as_deref(), Some("error"));
        assert_eq!(r.last_error.as_deref(), Some("entry REG-9: bad prefix"));
        assert_eq!((r.syncs_ok, r.syncs_failed), (1, 1));
    }
}
