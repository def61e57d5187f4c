//! `vpn-filter run`: the long-running controller.

use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use tokio::signal::unix::{signal, Signal, SignalKind};
use vpn_filter_common::{Config, Counter, Protocol, Verdict};

use crate::{
    daemon::{
        lifecycle::{LifecycleArgs, Reloader},
        observe::{self, ObserveArgs},
        status::{self, DaemonStatus, SharedStatus},
    },
    domains::{DomainSource, DomainSync, Reloaded},
    endpoints::{EndpointArgs, EndpointSync},
    kernel::{events::EventRing, pin::ControllerLock, AttachMode, Filter, LoadOptions, Policy},
    registry::{
        signature::Keyring,
        sync::{Outcome, RegistryArgs, RegistrySync},
    },
};

#[derive(Debug, Clone, clap::Args, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RunArgs {
    /// Interface to attach to (repeat for several). Attach to every interface whose ingress
    /// traffic should be judged; the flow state sees both directions only if both are covered.
    /// In the config file: `interfaces = ["eth0", "eth1"]`.
    #[arg(long = "iface", required_unless_present = "config")]
    #[serde(rename = "interfaces")]
    pub ifaces: Vec<String>,
    /// TOML file with any of these settings (keys are the long flag names; `interfaces`;
    /// `[policy]` table). Flags override it; SIGHUP re-reads it (a bad file is refused and
    /// the running settings stay).
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<std::path::PathBuf>,
    #[command(flatten)]
    #[serde(flatten)]
    pub registry: Box<RegistryArgs>,
    #[command(flatten)]
    #[serde(flatten)]
    pub endpoints: EndpointArgs,
    /// VPN domains for the `tls_sni` rule: a ClientHello naming one of them or a subdomain
    /// is reported (policy `tls_sni`, monitor by default). One domain per line, `#` comments
    /// (the shipped list, packaging/vpn-domains.txt, names a source for each). Default: that
    /// list, built into the binary. Re-read when the file changes and on SIGHUP; a list with
    /// any error is refused (line numbers in the log and `status`) and the one in force stays.
    #[arg(long, value_name = "FILE")]
    #[serde(default)]
    pub vpn_domains: Option<std::path::PathBuf>,
    /// XDP attach mode: auto tries native and falls back to generic with a warning.
    #[arg(long, value_enum, default_value = "auto")]
    pub xdp_mode: AttachMode,
    /// Per-protocol policy override, PROTOCOL=enforce|monitor|off (repeatable; PROTOCOL may
    /// be `all`). Protocols: wireguard, openvpn, ike, esp, ah, l2tp, pptp, tailscale_disco,
    /// openconnect_dtls, softether, endpoints (flows to listed VPN servers, --endpoints),
    /// tls_sni (ClientHellos naming a --vpn-domains domain), the heuristics.
    /// Default: enforce for the signatures; monitor for endpoints, tls_sni and the heuristics.
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
    /// Seconds a client and a server stay closed to each other (any port and protocol) after
    /// a VPN handshake between them was confirmed and dropped: the tunnel cannot fall back
    /// to TLS on 443 (OpenConnect) or TCP (SoftEther). Policy slot `fallback`.
    #[arg(long, default_value_t = vpn_filter_common::DEFAULT_FALLBACK_TIMEOUT_NS / 1_000_000_000)]
    pub fallback_timeout: u64,
    /// Events per source address per second before the kernel suppresses (and counts) them.
    #[arg(long, default_value_t = vpn_filter_common::DEFAULT_EVENTS_PER_SOURCE_PER_SEC)]
    pub events_per_source: u32,
    /// Events per CPU per second over all sources before the kernel suppresses (and counts)
    /// them: bounds the event rate under a flood from random sources.
    #[arg(long, default_value_t = vpn_filter_common::DEFAULT_EVENTS_PER_CPU_PER_SEC)]
    pub events_per_cpu: u32,
    /// IPv6 packets whose extension header chain is longer than Linux itself accepts on a
    /// forwarding path: `drop` (default; such a chain could hide a VPN, and no real stack
    /// sends one) or `pass` uninspected. Counted as `ext_header_limit` either way.
    #[arg(long, value_enum, default_value = "drop")]
    #[serde(default)]
    pub ext_header_overflow: ExtHeaderOverflowArg,
    #[command(flatten)]
    #[serde(flatten)]
    pub observe: ObserveArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub lifecycle: LifecycleArgs,
}

/// `--ext-header-overflow` ([`vpn_filter_common::ExtHeaderOverflow`]).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum ExtHeaderOverflowArg {
    #[default]
    Drop,
    Pass,
}

impl RunArgs {
    fn policy(&self) -> Result<Policy> {
        let mut policy = Policy::default();
        for spec in &self.policy {
            policy.apply_override(spec)?;
        }
        Ok(policy)
    }

    fn kernel_config(&self) -> Config {
        Config {
            blocked_flow_timeout_ns: self.blocked_flow_timeout.saturating_mul(1_000_000_000),
            fallback_timeout_ns: self.fallback_timeout.saturating_mul(1_000_000_000),
            events_per_source_per_sec: self.events_per_source,
            events_per_cpu_per_sec: self.events_per_cpu,
            ext_header_overflow: match self.ext_header_overflow {
                ExtHeaderOverflowArg::Drop => vpn_filter_common::ExtHeaderOverflow::Drop,
                ExtHeaderOverflowArg::Pass => vpn_filter_common::ExtHeaderOverflow::Pass,
            } as u8,
            ..Default::default()
        }
    }
}

/// Records a registry step in the daemon status.
fn record_registry(status: &SharedStatus, outcome: &Outcome) {
    match outcome {
        // A CSV export has no serial: recorded as 0.
        Outcome::Applied {
            serial,
            generated_at,
            report,
            ..
        } => {
            let mut s = status::lock(status);
            s.registry.synced(serial.unwrap_or(0), report);
            s.registry.feed_generated_at = *generated_at;
        }
        Outcome::Unchanged => status::lock(status).registry.confirmed(),
        Outcome::Failed(e) => status::lock(status).registry.failed(e),
    }
}

/// Records an endpoint-list step in the daemon status.
fn record_endpoints(status: &SharedStatus, outcome: &Outcome) {
    let mut s = status::lock(status);
    let Some(e) = s.endpoints.as_mut() else {
        return;
    };
    match outcome {
        Outcome::Applied { serial, report, .. } => e.synced(*serial, report),
        Outcome::Unchanged => e.confirmed(),
        Outcome::Failed(err) => e.failed(err),
    }
}

/// Re-reads the VPN domain list (when its file changed, or always with `force`) and writes
/// the kernel map; a refused list is logged and recorded, and the one in force stays.
fn reload_domains(
    domains: &mut DomainSync,
    filter: &mut Filter,
    status: &SharedStatus,
    force: bool,
) {
    let source = domains.source.describe();
    match domains.reload(force, |list| {
        filter.sync_vpn_domains(list).map(|r| {
            log::info!(
                "VPN domain list {source} reloaded: {} domains (+{} -{})",
                r.domains,
                r.added,
                r.removed
            );
        })
    }) {
        Reloaded::Applied(n) => status::lock(status).vpn_domains.loaded(n),
        Reloaded::Unchanged => {}
        Reloaded::Failed(e) => {
            log::error!("VPN domain list {source} refused, the list in force stays: {e:#}");
            status::lock(status).vpn_domains.failed(&e);
        }
    }
}

/// What `run` needs to re-read `--config` on SIGHUP: the command line as given.
pub struct Reload {
    pub reloader: Reloader,
    pub cli: RunArgs,
}

/// The log line that says the controller is up: attached, enforcing, privileges dropped,
/// control socket and metrics serving. Tests and operators wait for it; systemd is told the
/// same with `READY=1`.
pub const READY: &str = "ready: enforcing on";

/// Everything start-up hands to the serving phase.
struct Started {
    args: RunArgs,
    filter: Filter,
    registry: RegistrySync,
    endpoint_sync: Option<EndpointSync>,
    domains: DomainSync,
    status: SharedStatus,
    bound: observe::Bound,
    ring: EventRing,
    signals: Signals,
    _lock: Option<ControllerLock>,
}

/// SIGINT, SIGTERM and SIGHUP, installed before anything is loaded or attached.
struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

/// Runs the controller until SIGINT or SIGTERM.
///
/// Start-up is privileged work (loading, pinning, attaching, binding) and runs on the main
/// thread alone, the async parts on a current-thread runtime. When it is done, that runtime
/// and its blocking threads are gone; the main thread drops its capabilities (capabilities
/// are per thread), and only then is the multi-threaded runtime built, whose threads inherit
/// the reduced set: no thread that parses HTTP, control-socket or metrics requests ever holds
/// more than CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON.
pub fn run(args: RunArgs, reload: Option<Reload>) -> Result<()> {
    fixed_mmap_threshold();
    let startup = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the start-up runtime")?;
    let mut started = startup.block_on(start(args))?;
    drop(startup);
    if !started.args.lifecycle.keep_privileges {
        drop_privileges(&started.args)?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the runtime")?;
    // Connections the start-up runtime opened died with it.
    started.registry.reset_connections()?;
    if let Some(e) = &mut started.endpoint_sync {
        e.reset_connections()?;
    }
    runtime.block_on(serve(started, reload))
}

/// Start-up: everything that needs privileges, up to attaching to every interface.
async fn start(args: RunArgs) -> Result<Started> {
    if args.ifaces.is_empty() {
        bail!("no interface to attach to: give --iface or `interfaces` in the config file");
    }
    if args.registry.registry.is_empty() {
        bail!("no registry: give --registry or `registry` in the config file");
    }
    let policy = args.policy()?;
    // Signal handlers before anything is loaded or attached: a SIGTERM or SIGINT during
    // start-up waits for the loop in `serve` (a clean stop) instead of killing the process with
    // the default action halfway through.
    let signals = Signals {
        int: signal(SignalKind::interrupt())?,
        term: signal(SignalKind::terminate())?,
        hup: signal(SignalKind::hangup())?,
    };
    // One controller per pin tree: a second one would fight over links and maps.
    let lock = match args.lifecycle.pins() {
        Some(_) => Some(ControllerLock::acquire(&args.lifecycle.lock_path())?),
        None => None,
    };
    let mut registry = RegistrySync::new(&args.registry)?;
    let mut endpoint_sync = EndpointSync::new(&args.endpoints, &args.registry)?;
    // A bad list stops the start: there is no list in force yet to keep.
    let domains = DomainSync::start(DomainSource::new(args.vpn_domains.as_deref()))?;
    let mut daemon_status = DaemonStatus::new(&policy, registry.source());
    if let Some(e) = &endpoint_sync {
        daemon_status.endpoints = Some(crate::client::status::RegistryStatus {
            source: e.source(),
            ..Default::default()
        });
    }
    let status = daemon_status.shared();
    // Events file, control socket and metrics port first: a conflict stops the start before
    // anything is loaded or attached.
    let bound = observe::Bound::bind(&args.observe)?;

    // The kernel verifies the program (a second or two) on one thread while this one reads
    // and checks the registry feed (as long again at a million prefixes).
    let loading = {
        let (args, policy) = (args.clone(), policy);
        std::thread::Builder::new()
            .name("load".into())
            .spawn(move || load(&args, &policy))
            .context("starting the loading thread")?
    };
    let prepared = registry.prepare_start().await;
    let mut filter = loading
        .join()
        .map_err(|_| anyhow::anyhow!("the loading thread panicked"))??;
    // The allowlist is brought up to date before any link runs this program, so a restart
    // or an upgrade never judges a packet with a stale or empty allowlist.
    let outcome = registry.finish_start(&mut filter, prepared)?;
    record_registry(&status, &outcome);
    match &mut endpoint_sync {
        Some(e) => {
            let outcome = e.start(&mut filter).await?;
            record_endpoints(&status, &outcome);
        }
        // Pinned maps may hold a previous configuration's endpoint list.
        None => {
            let r = filter
                .sync_endpoints(&crate::endpoints::EndpointSet::default())
                .context("clearing the endpoint lists (no --endpoints)")?;
            if r.removed > 0 {
                log::info!(
                    "no --endpoints: removed {} listed endpoint prefixes left in the pinned maps",
                    r.removed
                );
            }
        }
    }
    // The map is the controller's own (not pinned): filled before any link runs this program.
    let r = filter.sync_vpn_domains(&domains.in_force)?;
    log::info!(
        "VPN domain list {}: {} domains",
        domains.source.describe(),
        r.domains
    );
    {
        let mut s = status::lock(&status);
        s.vpn_domains.source = domains.source.describe();
        s.vpn_domains.loaded(r.domains);
    }
    let ring = filter.take_event_ring()?;
    attach(&args, &mut filter)?;
    observe::record_attachments(&status, &filter);
    release_freed_memory();
    Ok(Started {
        args,
        filter,
        registry,
        endpoint_sync,
        domains,
        status,
        bound,
        ring,
        signals,
        _lock: lock,
    })
}

/// Allocations of a megabyte or more (a million-prefix feed's tables, a sync's key arrays)
/// get mappings of their own, returned to the system when freed whichever thread made them.
/// glibc otherwise raises the threshold after the first such free, and what another thread's
/// heap kept at its top (which `malloc_trim` leaves) stayed resident: 33 MB after a restart's
/// sync read the kernel's maps back on a second thread.
fn fixed_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; no pointer is involved.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// Returns the heap that start-up freed (the feed's parse and the first sync's copies, some
/// hundred megabytes at a million prefixes) to the system: glibc keeps it otherwise.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages; no pointer is involved.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Loads the program: against the pinned maps (adopting them) unless `--no-pin`.
fn load(args: &RunArgs, policy: &Policy) -> Result<Filter> {
    let options = LoadOptions {
        allow_v4_entries: args.allow_v4_entries,
        allow_v6_entries: args.allow_v6_entries,
        flow_entries: args.flow_entries,
        ..LoadOptions::default()
    };
    Ok(match args.lifecycle.pins() {
        Some(pins) => {
            let root = pins.root().display().to_string();
            let (filter, reused) =
                Filter::load_pinned(options, policy, &args.kernel_config(), pins)?;
            if reused > 0 {
                log::info!("adopted {reused} pinned maps under {root}: allowlist, flows and counters carry over");
            }
            filter
        }
        None => Filter::load(options, policy, &args.kernel_config())?,
    })
}

/// Attaches to every `--iface`; then the maps of an older pin layout, which no link runs any
/// more, are removed.
fn attach(args: &RunArgs, filter: &mut Filter) -> Result<()> {
    for iface in &args.ifaces {
        let how = filter.attach(iface, args.xdp_mode)?.describe();
        log::info!(
            "attached to {iface} ({how}), program id {}",
            filter.program_id().map_or("?".into(), |i| i.to_string())
        );
    }
    if let Some(pins) = filter.pins() {
        for dir in pins.other_versions()? {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
            log::info!("removed maps of another pin layout: {}", dir.display());
        }
    }
    Ok(())
}

/// What the feeds need to write the kernel: the loaded filter and the feed loops. Owned by
/// the select loop between polls, and moved onto a blocking thread for each poll (see
/// [`Feeds::spawn_poll`]).
struct Feeds {
    filter: Filter,
    registry: RegistrySync,
    endpoint_sync: Option<EndpointSync>,
    domains: DomainSync,
}

impl Feeds {
    /// One poll of both feeds and of the domain list, with whatever kernel writes they bring.
    async fn poll(&mut self, status: &SharedStatus) {
        let mut worked = false;
        if let Some(outcome) = self.registry.tick(&mut self.filter).await {
            record_registry(status, &outcome);
            worked = true;
        }
        if let Some(e) = &mut self.endpoint_sync {
            if let Some(outcome) = e.tick(&mut self.filter).await {
                record_endpoints(status, &outcome);
                worked = true;
            }
        }
        reload_domains(&mut self.domains, &mut self.filter, status, false);
        if worked {
            // A new feed's parse and checks freed hundreds of megabytes at a million
            // prefixes, applied or refused: without this a gateway settled 130 MiB higher
            // after its first reload than after its start.
            release_freed_memory();
        }
    }

    /// Runs [`Feeds::poll`] on a blocking thread and hands `self` back when it is done. A
    /// sync is CPU and system-call work (parsing and checking a feed, then a million
    /// prefixes are seconds of it): on the loop it would hold up signals, re-attach and the
    /// stats tick, and on a 2-thread runtime half of the threads that serve the control
    /// socket, metrics and events.
    fn spawn_poll(mut self, status: SharedStatus) -> tokio::task::JoinHandle<Feeds> {
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            handle.block_on(self.poll(&status));
            self
        })
    }
}

/// The serving phase, on the multi-threaded runtime: observability, then the loop until
/// SIGINT or SIGTERM, then the exit.
///
/// Feed polls (and the kernel writes of a sync) run off the loop, on a blocking thread that
/// owns the filter meanwhile ([`Feeds`]): signals are answered while a sync runs. What needs
/// the filter waits for the sync to finish: a SIGHUP is applied right after it, re-attach and
/// the stats line resume after it. SIGTERM or SIGINT during a sync is acknowledged at once,
/// and the controller exits when the sync is done: a sync is never cut short, so the kernel
/// holds either the feed in force or the new one, and what is persisted says which.
async fn serve(started: Started, reload: Option<Reload>) -> Result<()> {
    let Started {
        mut args,
        filter,
        registry,
        endpoint_sync,
        domains,
        status,
        bound,
        ring,
        mut signals,
        _lock,
    } = started;
    let mut observability = bound.start(&filter, status.clone())?;
    let mut events_task = observability.spawn_events(ring);
    announce_ready(&args, &filter);

    let mut poll = tokio::time::interval(registry.poll_interval());
    let stats_every = Duration::from_secs(args.stats_interval.max(1));
    let mut stats_tick = tokio::time::interval(stats_every);
    let mut reattach = tokio::time::interval(Duration::from_millis(
        args.lifecycle.reattach_interval_ms.max(100),
    ));
    // Ticks missed during a sync are not made up in a burst after it.
    for t in [&mut poll, &mut stats_tick, &mut reattach] {
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    let mut missing_logged: Vec<String> = Vec::new();
    // `Some` between polls; `None` while a poll runs in `polling`, which hands it back.
    let mut feeds = Some(Feeds {
        filter,
        registry,
        endpoint_sync,
        domains,
    });
    let mut polling: Option<tokio::task::JoinHandle<Feeds>> = None;
    let mut hup_pending = false;

    loop {
        tokio::select! {
            _ = signals.int.recv() => { log::info!("SIGINT: exiting"); break; }
            _ = signals.term.recv() => { log::info!("SIGTERM: exiting"); break; }
            _ = signals.hup.recv() => {
                match &mut feeds {
                    Some(f) => sighup(f, &mut args, reload.as_ref(), &status),
                    None => {
                        log::info!("SIGHUP: applied when the feed sync in progress is finished");
                        hup_pending = true;
                    }
                }
            }
            r = async { polling.as_mut().expect("guarded").await }, if polling.is_some() => {
                polling = None;
                let mut f = r.context("the feed poll failed")?;
                if std::mem::take(&mut hup_pending) {
                    sighup(&mut f, &mut args, reload.as_ref(), &status);
                }
                feeds = Some(f);
            }
            r = &mut events_task => {
                match r {
                    Ok(Ok(())) => bail!("event stream ended"),
                    Ok(Err(e)) => return Err(e.context("event stream failed")),
                    Err(e) => bail!("event task failed: {e}"),
                }
            }
            _ = poll.tick(), if feeds.is_some() => {
                let f = feeds.take().expect("guarded");
                polling = Some(f.spawn_poll(status.clone()));
            }
            _ = reattach.tick(), if feeds.is_some() => {
                let filter = &mut feeds.as_mut().expect("guarded").filter;
                match filter.reattach_lost(args.xdp_mode) {
                    Ok((back, missing)) => {
                        for i in back {
                            log::warn!("{i}: the interface came back; filter re-attached");
                            missing_logged.retain(|m| *m != i);
                        }
                        for i in missing {
                            if !missing_logged.contains(&i) {
                                log::warn!("{i}: the interface is gone; the filter will re-attach when it returns");
                                missing_logged.push(i);
                            }
                        }
                        observe::record_attachments(&status, filter);
                    }
                    Err(e) => log::error!("re-attaching: {e:#}"),
                }
            }
            _ = stats_tick.tick(), if args.stats_interval > 0 && feeds.is_some() => {
                match feeds.as_ref().expect("guarded").filter.stats() {
                    Ok(stats) => eprintln!("{}", stats_line(&stats)),
                    Err(e) => log::warn!("reading counters: {e:#}"),
                }
            }
        }
    }
    if let Some(p) = polling {
        if !p.is_finished() {
            log::info!(
            "waiting for the feed sync in progress to finish before exiting (a sync is never cut short: the kernel keeps the feed in force or the new one)"
            );
        }
        feeds = Some(p.await.context("the feed poll failed")?);
    }
    let Feeds { filter, .. } = feeds.expect("handed back");
    // Give the event task a moment to drain what the kernel already queued.
    tokio::time::sleep(Duration::from_millis(100)).await;
    events_task.abort();
    drop(observability);
    exit(&args, filter)
}

/// SIGHUP: re-reads `--config` (when given) and the domain list.
fn sighup(feeds: &mut Feeds, args: &mut RunArgs, reload: Option<&Reload>, status: &SharedStatus) {
    let Feeds {
        filter,
        registry,
        domains,
        ..
    } = feeds;
    if let Some(r) = reload {
        match r
            .reloader
            .load(&r.cli)
            .and_then(|new| apply_reload(filter, registry, args, new))
        {
            Ok(new) => *args = new,
            Err(e) => {
                log::error!("configuration not reloaded, the running one stays in force: {e:#}")
            }
        }
    }
    // The domain list is re-read on every SIGHUP (and its file may have moved).
    let source = DomainSource::new(args.vpn_domains.as_deref());
    if source != domains.source {
        domains.source = source;
        status::lock(status).vpn_domains.source = domains.source.describe();
    }
    reload_domains(domains, filter, status, true);
}

/// The `ready` line, and `READY=1` to systemd when it started us (`Type=notify`).
fn announce_ready(args: &RunArgs, filter: &Filter) {
    log::info!(
        "{READY} {} (program id {})",
        args.ifaces.join(", "),
        filter.program_id().map_or("?".into(), |i| i.to_string())
    );
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        log::warn!("telling systemd we are ready: {e}");
    }
}

/// On the way out: detach (and remove the pins) when asked to, else leave the filter
/// enforcing from its pins.
fn exit(args: &RunArgs, filter: Filter) -> Result<()> {
    if args.lifecycle.detach_on_exit || args.lifecycle.no_pin {
        let mut filter = filter;
        filter.detach_all().context("detaching on exit")?;
        if let (true, Some(pins)) = (args.lifecycle.detach_on_exit, filter.pins().cloned()) {
            drop(filter);
            pins.remove_maps()?;
            pins.remove_if_empty()?;
        }
        log::info!("detached from every interface");
    } else {
        log::info!(
            "exiting; the filter stays attached and enforcing from {} (`vpn-filter detach` removes it)",
            args.lifecycle.bpffs_dir.display()
        );
    }
    Ok(())
}

/// Applies a re-read configuration: policy and kernel settings at once; anything that needs
/// a new program or new maps is reported as waiting for a restart. Returns the settings now
/// in force.
fn apply_reload(
    filter: &mut Filter,
    registry: &mut RegistrySync,
    old: &RunArgs,
    new: RunArgs,
) -> Result<RunArgs> {
    let policy = new.policy()?;
    if new.ifaces.is_empty() {
        bail!("no interface in the new configuration");
    }
    // The pinned keys change at once (a key rollover across a fleet is a config push and a
    // SIGHUP), as long as signatures stay required: turning the check on or off changes what
    // the source fetches and waits for a restart. Keys are read before anything applies, so
    // an unreadable key refuses the whole reload.
    let (old_keys, new_keys) = (&old.registry.registry_pubkey, &new.registry.registry_pubkey);
    let keys = (new_keys != old_keys && !old_keys.is_empty() && !new_keys.is_empty())
        .then(|| Keyring::from_files(new_keys))
        .transpose()?;
    filter.set_policy(&policy)?;
    filter.set_config(&new.kernel_config())?;
    let mut waiting = Vec::new();
    if new.ifaces != old.ifaces {
        waiting.push("interfaces");
    }
    if (new.allow_v4_entries, new.allow_v6_entries, new.flow_entries)
        != (old.allow_v4_entries, old.allow_v6_entries, old.flow_entries)
    {
        waiting.push("map sizes");
    }
    let json = |v: &dyn erased::Ser| v.json();
    let mut in_force = old.registry.clone();
    if let Some(keys) = keys {
        registry.set_keys(keys, new_keys);
        in_force.registry_pubkey = new_keys.clone();
    }
    if json(&new.registry) != json(&in_force) {
        waiting.push("registry settings");
    }
    if json(&new.endpoints) != json(&old.endpoints) {
        waiting.push("endpoint settings");
    }
    if json(&new.observe) != json(&old.observe) {
        waiting.push("observability settings");
    }
    if json(&new.lifecycle) != json(&old.lifecycle) || new.xdp_mode != old.xdp_mode {
        waiting.push("attach and pin settings");
    }
    log::info!("configuration reloaded: policy and kernel settings applied");
    if !waiting.is_empty() {
        log::warn!(
            "changed {} take effect at the next restart",
            waiting.join(", ")
        );
    }
    // Keep what is really in force for the settings that did not apply.
    Ok(RunArgs {
        ifaces: old.ifaces.clone(),
        allow_v4_entries: old.allow_v4_entries,
        allow_v6_entries: old.allow_v6_entries,
        flow_entries: old.flow_entries,
        registry: in_force,
        endpoints: old.endpoints.clone(),
        observe: old.observe.clone(),
        lifecycle: old.lifecycle.clone(),
        xdp_mode: old.xdp_mode,
        ..new
    })
}

mod erased {
    /// Compares settings groups by their serialised form.
    pub trait Ser {
        fn json(&self) -> serde_json::Value;
    }

    impl<T: serde::Serialize> Ser for T {
        fn json(&self) -> serde_json::Value {
            serde_json::to_value(self).unwrap_or_default()
        }
    }
}

/// Keeps only CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON, switching to `--run-as` if given (its
/// directories are handed to that user first).
fn drop_privileges(args: &RunArgs) -> Result<()> {
    let user = match &args.lifecycle.run_as {
        Some(name) => {
            let (uid, gid) = crate::daemon::privs::lookup_user(name)?;
            let mut dirs = vec![
                args.lifecycle.bpffs_dir.clone(),
                args.registry.state_dir.clone(),
            ];
            if let Some(dir) = args.observe.control_socket_path().parent() {
                dirs.push(dir.to_path_buf());
            }
            if let Some(f) = &args.observe.events_file {
                dirs.push(f.clone());
            }
            for d in dirs {
                crate::daemon::privs::chown_tree(&d, uid, gid)?;
            }
            Some((uid, gid))
        }
        None => None,
    };
    crate::daemon::privs::drop_privileges(user)?;
    log::info!(
        "privileges dropped: {}keeping only CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON",
        args.lifecycle
            .run_as
            .as_ref()
            .map(|u| format!("running as {u}, "))
            .unwrap_or_default()
    );
    Ok(())
}

/// One line of counters: packets, then dropped/allowed/monitored per protocol that has any.
pub fn stats_line(stats: &crate::kernel::Stats) -> String {
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

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, FromArgMatches as _, Parser};

    use super::*;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        run: RunArgs,
    }

    #[test]
    fn the_shipped_example_config_is_valid() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/vpn-filter.toml");
        let m = Wrapper::command()
            .try_get_matches_from(["x", "--config", path])
            .unwrap();
        let w = Wrapper::from_arg_matches(&m).unwrap();
        let merged = crate::daemon::config::merge(&w.run, &m, std::path::Path::new(path)).unwrap();
        assert_eq!(merged.ifaces, ["eth0", "eth1"]);
        assert_eq!(merged.registry.registry, "/etc/vpn-filter/registry.json");
        let policy = merged.policy().unwrap();
        assert_eq!(
            policy.mode(Protocol::SoftEther),
            vpn_filter_common::PolicyMode::Monitor
        );
        assert_eq!(
            policy.mode(Protocol::WireGuard),
            vpn_filter_common::PolicyMode::Enforce
        );
    }

    #[test]
    fn vpn_domains_is_a_flag_and_a_config_key_defaulting_to_the_built_in_list() {
        let a = run_args(&["x", "--iface", "eth0", "--registry", "f.json"], "").unwrap();
        assert_eq!(a.vpn_domains, None);
        let b = run_args(
            &["x", "--config", "c.toml"],
            "vpn-domains = \"/etc/vpn-filter/vpn-domains.txt\"\n",
        )
        .unwrap();
        assert_eq!(
            b.vpn_domains.as_deref(),
            Some(std::path::Path::new("/etc/vpn-filter/vpn-domains.txt"))
        );
        let c = run_args(
            &["x", "--config", "c.toml", "--vpn-domains", "mine.txt"],
            "vpn-domains = \"/etc/vpn-filter/vpn-domains.txt\"\n",
        )
        .unwrap();
        assert_eq!(
            c.vpn_domains.as_deref(),
            Some(std::path::Path::new("mine.txt"))
        );
    }

    fn run_args(argv: &[&str], toml: &str) -> anyhow::Result<RunArgs> {
        let matches = Wrapper::command().try_get_matches_from(argv).unwrap();
        let cli = Wrapper::from_arg_matches(&matches).unwrap().run;
        crate::daemon::config::merge_str(&cli, &matches, toml, "test.toml")
    }

    #[test]
    fn registry_pubkey_is_repeatable_on_the_command_line_and_a_string_or_list_in_the_config() {
        let a = run_args(
            &[
                "x",
                "--iface",
                "eth0",
                "--registry",
                "f.json",
                "--registry-pubkey",
                "a.pub",
                "--registry-pubkey",
                "b.pub",
            ],
            "",
        )
        .unwrap();
        assert_eq!(
            a.registry.registry_pubkey,
            ["a.pub", "b.pub"].map(std::path::PathBuf::from)
        );
        let one = run_args(
            &["x", "--config", "c.toml"],
            "registry-pubkey = \"a.pub\"\n",
        )
        .unwrap();
        assert_eq!(
            one.registry.registry_pubkey,
            ["a.pub"].map(std::path::PathBuf::from)
        );
        let two = run_args(
            &["x", "--config", "c.toml"],
            "registry-pubkey = [\"a.pub\", \"b.pub\"]\n",
        )
        .unwrap();
        assert_eq!(
            two.registry.registry_pubkey,
            ["a.pub", "b.pub"].map(std::path::PathBuf::from)
        );
        let err = run_args(&["x", "--config", "c.toml"], "registry-pubkey = 3\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("key `registry-pubkey`") && err.contains("a file path or a list"),
            "{err}"
        );
    }
}
