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
    sync::{Arc, Mutex, MutexGuard},
};

use anyhow::Result;
use time::OffsetDateTime;
use vpn_filter_common::{Counter, Protocol, Verdict};

use crate::{
    client::status::{
        DomainsStatus, EndpointsReport, EventsStatus, InterfaceStatus, KernelCounters,
        ProviderCounts, RegistryStatus, StatusReport,
    },
    daemon::observe::events::{EventHub, PipelineCounters},
    kernel::{Policy, Stats, StatsReader},
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
    /// The VPN domain list of the `tls_sni` rule.
    pub vpn_domains: DomainsStatus,
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
            vpn_domains: DomainsStatus::default(),
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

/// Everything a status report is made from.
#[derive(Clone, Debug)]
pub struct Sources {
    pub status: SharedStatus,
    pub stats: Arc<StatsReader>,
    pub pipeline: Arc<PipelineCounters>,
    pub hub: EventHub,
}

impl Sources {
    /// Per provider of the endpoint feed in force: packets dropped and monitored.
    fn providers(&self) -> Result<Vec<ProviderCounts>> {
        let names = crate::endpoints::providers_in_force();
        let counts = self.stats.read_providers(names.len())?;
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
                    providers: self.providers()?,
                }),
                None => None,
            },
            vpn_domains: Some(status.vpn_domains),
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

/// The report's counters from the kernel's (kept here, beside [`Sources::report`], so the
/// protocol types in `client` do not depend on the kernel side).
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
}
