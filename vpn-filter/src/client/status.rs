//! The status document the daemon serves on its control socket (`vpn-filter status --json`,
//! the metrics endpoint, `vpn-filter top`). Field names are stable; see docs/metrics.md.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::registry::sync::SyncReport;

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
    /// The VPN domain list of the `tls_sni` rule; absent from daemons older than it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpn_domains: Option<DomainsStatus>,
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

/// The VPN domain list in force (`--vpn-domains`, or the built-in list) and how its last
/// load went.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainsStatus {
    /// The file, or `built-in (packaging/vpn-domains.txt)`.
    pub source: String,
    /// Domains in the kernel's map.
    pub domains: u64,
    /// Time the list in force was loaded.
    #[serde(with = "time::serde::rfc3339::option")]
    pub loaded_at: Option<OffsetDateTime>,
    pub loads_ok: u64,
    pub loads_failed: u64,
    /// The last refused list's problems (kept after later successes, with its time).
    pub last_error: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_error_at: Option<OffsetDateTime>,
}

impl DomainsStatus {
    pub fn loaded(&mut self, domains: usize) {
        self.domains = domains as u64;
        self.loaded_at = Some(OffsetDateTime::now_utc());
        self.loads_ok += 1;
    }

    pub fn failed(&mut self, error: &dyn std::fmt::Display) {
        self.last_error = Some(format!("{error:#}"));
        self.last_error_at = Some(OffsetDateTime::now_utc());
        self.loads_failed += 1;
    }
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
