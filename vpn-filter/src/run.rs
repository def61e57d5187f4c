//! `vpn-filter run`: the long-running controller.

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::{bail, Context as _, Result};
use tokio::signal::unix::{signal, SignalKind};
use vpn_filter_common::{Config, Counter, Protocol, Verdict};

use crate::{
    events::{self, JsonLines},
    filter::{AttachMode, Filter, LoadOptions, Policy, SyncReport},
    registry::{Feed, ValidateOptions},
};

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Interface to attach to (repeat for several). Attach to every interface whose ingress
    /// traffic should be judged; the flow state sees both directions only if both are covered.
    #[arg(long = "iface", required = true)]
    pub ifaces: Vec<String>,
    /// Registry feed (JSON) listing registered VPN addresses. Re-read when it changes; a bad
    /// version is refused and the previous allowlist stays in force.
    #[arg(long)]
    pub registry: PathBuf,
    /// XDP attach mode: auto tries native and falls back to generic with a warning.
    #[arg(long, value_enum, default_value = "auto")]
    pub xdp_mode: AttachMode,
    /// Per-protocol policy override, PROTOCOL=enforce|monitor|off (repeatable; PROTOCOL may
    /// be `all`). Protocols: wireguard, openvpn, ike, esp, ah, l2tp, pptp, tailscale_disco,
    /// openconnect_dtls, softether. Default: enforce for all.
    #[arg(long = "policy", value_name = "PROTOCOL=MODE")]
    pub policy: Vec<String>,
    /// Accept registry prefixes broader than /8 (IPv4) or /16 (IPv6).
    #[arg(long)]
    pub allow_broad: bool,
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
    /// How often the registry file is checked for changes, in milliseconds.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub registry_poll_ms: u64,
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
            ..Default::default()
        }
    }
}

/// Identity of a file version: a rewrite (even in place) changes mtime or size.
fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

fn log_sync(feed: &Feed, report: &SyncReport, took: Duration) {
    log::info!(
        "registry serial {} applied: {} IPv4 + {} IPv6 prefixes ({} added, {} changed, {} removed) in {:.1} ms",
        feed.serial,
        report.v4,
        report.v6,
        report.added,
        report.changed,
        report.removed,
        took.as_secs_f64() * 1e3
    );
}

fn apply(filter: &mut Filter, feed: &Feed) -> Result<SyncReport> {
    let start = std::time::Instant::now();
    let report = filter.sync_allowlist(&feed.allowlist(time::OffsetDateTime::now_utc()))?;
    log_sync(feed, &report, start.elapsed());
    Ok(report)
}

pub async fn run(args: RunArgs) -> Result<()> {
    let policy = args.policy()?;
    let validate = ValidateOptions {
        allow_broad: args.allow_broad,
    };
    let (mut feed, warnings) = Feed::from_file(&args.registry, validate)?;
    for w in warnings {
        log::warn!("{}: {w}", args.registry.display());
    }
    let mut stamp = file_stamp(&args.registry);

    let options = LoadOptions {
        allow_v4_entries: args.allow_v4_entries,
        allow_v6_entries: args.allow_v6_entries,
        flow_entries: args.flow_entries,
    };
    let mut filter = Filter::load(options, &policy, &args.config())?;
    apply(&mut filter, &feed)?;
    let ring = filter.take_events()?;
    for iface in &args.ifaces {
        let mode = filter.attach(iface, args.xdp_mode)?;
        log::info!(
            "attached to {iface} ({} mode), program id {}",
            if mode == aya::programs::XdpMode::Driver {
                "native"
            } else {
                "generic"
            },
            filter.program_id().map_or("?".into(), |i| i.to_string())
        );
    }

    let events_task = tokio::spawn(async move {
        let mut out = JsonLines::new(std::io::stdout());
        events::stream(ring, move |rec| out.write(&rec)).await
    });

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut poll = tokio::time::interval(Duration::from_millis(args.registry_poll_ms.max(50)));
    let stats_every = Duration::from_secs(args.stats_interval.max(1));
    let mut stats_tick = tokio::time::interval(stats_every);
    let mut next_change = feed.next_change_after(time::OffsetDateTime::now_utc());
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
                let now_stamp = file_stamp(&args.registry);
                let now = time::OffsetDateTime::now_utc();
                if now_stamp != stamp {
                    stamp = now_stamp;
                    match Feed::from_file(&args.registry, validate) {
                        Ok((new_feed, warnings)) => {
                            for w in warnings {
                                log::warn!("{}: {w}", args.registry.display());
                            }
                            match apply(&mut filter, &new_feed) {
                                Ok(_) => {
                                    feed = new_feed;
                                    next_change = feed.next_change_after(now);
                                }
                                Err(e) => log::error!("registry serial {} not applied: {e:#}; previous entries stay in force", new_feed.serial),
                            }
                        }
                        Err(e) => log::error!("registry refused, previous allowlist (serial {}) stays in force: {e}", feed.serial),
                    }
                } else if next_change.is_some_and(|t| t <= now) {
                    // An entry was approved or expired: re-apply without a new feed.
                    if let Err(e) = apply(&mut filter, &feed) {
                        log::error!("re-applying the registry at an expiry failed: {e:#}");
                    }
                    next_change = feed.next_change_after(now);
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
