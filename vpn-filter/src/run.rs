//! `vpn-filter run`: the long-running controller.

use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use tokio::signal::unix::{signal, SignalKind};
use vpn_filter_common::{Config, Counter, Protocol, Verdict};

use crate::{
    filter::{AttachMode, Filter, LoadOptions, Policy},
    observe::{self, ObserveArgs},
    status::{self, DaemonStatus, SharedStatus},
    sync::{Outcome, RegistryArgs, RegistrySync},
};

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Interface to attach to (repeat for several). Attach to every interface whose ingress
    /// traffic should be judged; the flow state sees both directions only if both are covered.
    #[arg(long = "iface", required = true)]
    pub ifaces: Vec<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// XDP attach mode: auto tries native and falls back to generic with a warning.
    #[arg(long, value_enum, default_value = "auto")]
    pub xdp_mode: AttachMode,
    /// Per-protocol policy override, PROTOCOL=enforce|monitor|off (repeatable; PROTOCOL may
    /// be `all`). Protocols: wireguard, openvpn, ike, esp, ah, l2tp, pptp, tailscale_disco,
    /// openconnect_dtls, softether. Default: enforce for all.
    #[arg(long = "policy", value_name = "PROTOCOL=MODE")]
    pub policy: Vec<String>,
    /// Print per-protocol counters to stderr every SECS seconds (0: never).
    #[arg(long, default_value_t = 0, value_name = "SECS")]
    pub stats_interval: u64,
    /// Capacity of the IPv4 allowlist trie.
    #[arg(long, default_value_t = vpn_filter_common::DEFAULT_ALLOW_V4_ENTRIES)]
    pub allow_v4_entries: u32,
    /// Capacity of the IPv6 allowlist trie.
    #[arg(long, default_value_t = vpn_filter_common::DEFAULT_ALLOW_V6_ENTRIES)]
    pub allow_v6_entries: u32,
    /// Capacity of the flow-state LRU map.
    #[arg(long, default_value_t = vpn_filter_common::DEFAULT_FLOW_ENTRIES)]
    pub flow_entries: u32,
    /// Seconds a flow judged an unregistered VPN keeps being dropped after its last packet.
    #[arg(long, default_value_t = vpn_filter_common::DEFAULT_BLOCKED_FLOW_TIMEOUT_NS / 1_000_000_000)]
    pub blocked_flow_timeout: u64,
    /// Events per source address per second before the kernel suppresses (and counts) them.
    #[arg(long, default_value_t = vpn_filter_common::DEFAULT_EVENTS_PER_SOURCE_PER_SEC)]
    pub events_per_source: u32,
    /// Events per CPU per second over all sources before the kernel suppresses (and counts)
    /// them: bounds the event rate under a flood from random sources.
    #[arg(long, default_value_t = vpn_filter_common::DEFAULT_EVENTS_PER_CPU_PER_SEC)]
    pub events_per_cpu: u32,
    #[command(flatten)]
    pub observe: ObserveArgs,
}

impl RunArgs {
    fn policy(&self) -> Result<Policy> {
        let mut policy = Policy::default();
        for spec in &self.policy {
            policy.apply_override(spec)?;
        }
        Ok(policy)
    }

    fn config(&self) -> Config {
        Config {
            blocked_flow_timeout_ns: self.blocked_flow_timeout.saturating_mul(1_000_000_000),
            events_per_source_per_sec: self.events_per_source,
            events_per_cpu_per_sec: self.events_per_cpu,
            ..Default::default()
        }
    }
}

/// Records a registry step in the daemon status.
fn record_registry(status: &SharedStatus, outcome: &Outcome) {
    match outcome {
        // A CSV export has no serial: recorded as 0.
        Outcome::Applied { serial, report, .. } => status::lock(status)
            .registry
            .synced(serial.unwrap_or(0), report),
        Outcome::Failed(e) => status::lock(status).registry.failed(e),
    }
}

pub async fn run(args: RunArgs) -> Result<()> {
    let policy = args.policy()?;
    let mut registry = RegistrySync::new(&args.registry)?;
    let status = DaemonStatus::new(&policy, registry.source()).shared();
    // Events file, control socket and metrics port first: a conflict stops the start before
    // anything is loaded or attached.
    let endpoints = observe::Bound::bind(&args.observe).await?;

    let options = LoadOptions {
        allow_v4_entries: args.allow_v4_entries,
        allow_v6_entries: args.allow_v6_entries,
        flow_entries: args.flow_entries,
    };
    let mut filter = Filter::load(options, &policy, &args.config())?;
    let outcome = registry.start(&mut filter).await?;
    record_registry(&status, &outcome);
    let ring = filter.take_events()?;
    for iface in &args.ifaces {
        let how = match filter.attach(iface, args.xdp_mode)? {
            crate::filter::Attached::New(aya::programs::XdpMode::Driver) => "native mode",
            crate::filter::Attached::New(_) => "generic mode",
            crate::filter::Attached::Replaced => "took over the pinned link",
        };
        log::info!(
            "attached to {iface} ({how}), program id {}",
            filter.program_id().map_or("?".into(), |i| i.to_string())
        );
    }

    observe::record_attachments(&status, &filter);
    let mut observability = endpoints.start(&filter, status.clone())?;
    let events_task = observability.spawn_events(ring);

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut poll = tokio::time::interval(registry.poll_interval());
    let stats_every = Duration::from_secs(args.stats_interval.max(1));
    let mut stats_tick = tokio::time::interval(stats_every);
    let mut events_task = events_task;

    loop {
        tokio::select! {
            _ = sigint.recv() => { log::info!("SIGINT: detaching and exiting"); break; }
            _ = sigterm.recv() => { log::info!("SIGTERM: detaching and exiting"); break; }
            r = &mut events_task => {
                match r {
                    Ok(Ok(())) => bail!("event stream ended"),
                    Ok(Err(e)) => return Err(e.context("event stream failed")),
                    Err(e) => bail!("event task failed: {e}"),
                }
            }
            _ = poll.tick() => {
                if let Some(outcome) = registry.tick(&mut filter).await {
                    record_registry(&status, &outcome);
                }
            }
            _ = stats_tick.tick(), if args.stats_interval > 0 => {
                match filter.stats() {
                    Ok(stats) => eprintln!("{}", stats_line(&stats)),
                    Err(e) => log::warn!("reading counters: {e:#}"),
                }
            }
        }
    }
    events_task.abort();
    drop(observability);
    filter.detach_all().context("detaching on exit")?;
    Ok(())
}

/// One line of counters: packets, then dropped/allowed/monitored per protocol that has any.
pub fn stats_line(stats: &crate::filter::Stats) -> String {
    let mut line = format!(
        "counters: packets={} candidates={} events={} suppressed={} lost={}",
        stats.counter(Counter::Packets),
        stats.counter(Counter::Candidates),
        stats.counter(Counter::EventsEmitted),
        stats.counter(Counter::EventsSuppressed),
        stats.counter(Counter::EventsLost),
    );
    for p in &Protocol::ALL[1..] {
        let parts: Vec<String> = Verdict::ALL
            .iter()
            .filter_map(|v| {
                let n = stats.verdict(*p, *v);
                (n > 0).then(|| format!("{}={n}", v.name()))
            })
            .collect();
        if !parts.is_empty() {
            line.push_str(&format!(" | {}: {}", p.name(), parts.join(" ")));
        }
    }
    line
}
