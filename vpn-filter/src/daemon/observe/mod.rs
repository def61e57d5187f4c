//! Wiring of the daemon's observability: the event pump, the control socket, the metrics
//! endpoint and the periodic loss report. `run.rs` calls [`Bound::bind`] before loading
//! anything, [`Bound::start`] once the program is attached, and keeps the returned
//! [`Observability`] alive until exit.

pub mod control;
pub mod events;
pub mod metrics;

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use tokio::task::JoinHandle;
use vpn_filter_common::Counter;

use self::{
    control::{ControlServer, SocketGuard},
    events::{EventHub, Output, OutputTarget, PipelineCounters, Pump},
};
use crate::{
    client::status::InterfaceStatus,
    daemon::status::{self, SharedStatus, Sources},
    kernel::{events::EventRing, Filter, StatsReader},
};

/// Command-line options of `vpn-filter run` for events, metrics and the control socket.
#[derive(Debug, Clone, clap::Args, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ObserveArgs {
    /// Append events (JSON lines) to this file instead of writing them to stdout; the file
    /// is reopened on SIGHUP (logrotate: `postrotate systemctl kill -s HUP vpn-filter`).
    #[arg(long, value_name = "PATH")]
    pub events_file: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics. ADDR is PORT (listens on 127.0.0.1),
    /// ADDRESS or ADDRESS:PORT (default port 9469). Off unless given.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// Control socket for `vpn-filter status`, `events` and `top` (mode 0600: root only).
    /// [default: /run/vpn-filter/control.sock]
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,
    /// Log how many events were suppressed, lost or not written every SECS seconds, when any
    /// were (0: never; the counters are always in `status` and the metrics).
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub loss_report_interval: u64,
}

/// The running observability tasks; stopping them (drop) also removes the control socket.
pub struct Observability {
    pub sources: Sources,
    pump: Option<Pump>,
    tasks: Vec<JoinHandle<()>>,
    _socket: Option<SocketGuard>,
    pub control_socket: Option<PathBuf>,
    pub metrics_addr: Option<std::net::SocketAddr>,
}

impl Drop for Observability {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Copies the filter's attachments and program id into the shared status.
pub fn record_attachments(status: &SharedStatus, filter: &Filter) {
    let mut s = status::lock(status);
    s.program_id = filter.program_id();
    s.interfaces = filter
        .attachments()
        .iter()
        .map(|a| InterfaceStatus {
            name: a.iface.clone(),
            ifindex: a.ifindex,
            mode: a.mode_name().to_string(),
        })
        .collect();
}

/// The endpoints, bound before anything is loaded or attached: a taken port, a live
/// daemon on the control socket or an unwritable events file stops the start before the
/// filter touches an interface.
pub struct Bound {
    output: Output,
    control: Option<ControlServer>,
    metrics: Option<std::net::TcpListener>,
    loss_report_interval: u64,
}

impl Bound {
    /// Needs no runtime: start-up binds before the serving runtime exists.
    pub fn bind(args: &ObserveArgs) -> Result<Self> {
        let target = match &args.events_file {
            Some(p) => OutputTarget::File(p.clone()),
            None => OutputTarget::Stdout,
        };
        let output = Output::open(target)?;
        let control = bind_control(args.control_socket.as_ref())?;
        let metrics = match &args.metrics {
            Some(spec) => Some(metrics::bind(metrics::parse_listen(spec)?)?),
            None => None,
        };
        Ok(Bound {
            output,
            control,
            metrics,
            loss_report_interval: args.loss_report_interval,
        })
    }

    /// Starts serving, once the program is loaded (the counters map exists).
    pub fn start(self, filter: &Filter, status: SharedStatus) -> Result<Observability> {
        status::lock(&status).events_output = self.output.target().describe();
        let hub = EventHub::new(events::DEFAULT_BACKLOG, events::DEFAULT_FOLLOWER_QUEUE);
        let pipeline = Arc::new(PipelineCounters::default());
        let sources = Sources {
            status,
            stats: Arc::new(StatsReader::new(filter).context("opening the counters map")?),
            pipeline: pipeline.clone(),
            hub: hub.clone(),
        };
        let pump = Pump::new(self.output, hub, pipeline);
        let mut tasks = Vec::new();

        let (socket, control_socket) = match self.control {
            Some(server) => {
                let path = server.path().to_path_buf();
                log::info!(
                    "control socket {} (vpn-filter status|events|top)",
                    path.display()
                );
                let (listener, guard) = server.into_parts()?;
                tasks.push(tokio::spawn(control::serve(listener, sources.clone())));
                (Some(guard), Some(path))
            }
            None => (None, None),
        };

        let metrics_addr = match self.metrics {
            Some(listener) => {
                let addr = listener.local_addr()?;
                let listener = tokio::net::TcpListener::from_std(listener)
                    .context("registering the metrics socket with tokio")?;
                log::info!("metrics at http://{addr}/metrics");
                tasks.push(tokio::spawn(metrics::serve(listener, sources.clone())));
                Some(addr)
            }
            None => None,
        };

        if self.loss_report_interval > 0 {
            tasks.push(tokio::spawn(report_losses(
                sources.clone(),
                Duration::from_secs(self.loss_report_interval),
            )));
        }
        Ok(Observability {
            sources,
            pump: Some(pump),
            tasks,
            _socket: socket,
            control_socket,
            metrics_addr,
        })
    }
}

impl Observability {
    /// Starts reading the ring buffer (once); the task ends only on an error.
    pub fn spawn_events(&mut self, ring: EventRing) -> JoinHandle<Result<()>> {
        let pump = self.pump.take().expect("spawn_events is called once");
        tokio::spawn(events::pump(ring, pump))
    }
}

impl ObserveArgs {
    /// The control socket path in use (the default unless `--control-socket`).
    pub fn control_socket_path(&self) -> PathBuf {
        self.control_socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(crate::client::DEFAULT_SOCKET))
    }
}

/// Binds the control socket. An explicit `--control-socket` must work; the default path
/// held by another live daemon only costs this one its status interface (with a warning), so
/// the filter itself still starts.
fn bind_control(explicit: Option<&PathBuf>) -> Result<Option<ControlServer>> {
    match explicit {
        Some(p) => Ok(Some(ControlServer::bind(p)?)),
        None => match ControlServer::bind(std::path::Path::new(crate::client::DEFAULT_SOCKET)) {
            Ok(s) => Ok(Some(s)),
            Err(e) => {
                log::warn!(
                    "no control socket ({e:#}); `vpn-filter status|events|top` cannot reach this daemon"
                );
                Ok(None)
            }
        },
    }
}

/// Totals the loss report compares between ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Losses {
    suppressed: u64,
    lost: u64,
    output_failed: u64,
    follower_dropped: u64,
    undecodable: u64,
}

impl Losses {
    fn read(sources: &Sources) -> Result<Self> {
        let stats = sources.stats.read()?;
        let p = &sources.pipeline;
        Ok(Losses {
            suppressed: stats.counter(Counter::EventsSuppressed),
            lost: stats.counter(Counter::EventsLost),
            output_failed: PipelineCounters::get(&p.output_failed),
            follower_dropped: PipelineCounters::get(&p.follower_dropped),
            undecodable: PipelineCounters::get(&p.undecodable),
        })
    }

    fn since(self, before: Losses) -> Losses {
        Losses {
            suppressed: self.suppressed.saturating_sub(before.suppressed),
            lost: self.lost.saturating_sub(before.lost),
            output_failed: self.output_failed.saturating_sub(before.output_failed),
            follower_dropped: self
                .follower_dropped
                .saturating_sub(before.follower_dropped),
            undecodable: self.undecodable.saturating_sub(before.undecodable),
        }
    }
}

/// The log line for losses `d` over `secs` seconds (`None` when there were none), and whether
/// it is a warning (events actually lost) rather than information (rate limiting by design).
/// Only the kinds that grew are named, each with its total since start.
fn loss_message(d: Losses, total: Losses, secs: u64) -> Option<(bool, String)> {
    let kinds = [
        (
            d.suppressed,
            total.suppressed,
            "suppressed by the per-source rate limit",
        ),
        (d.lost, total.lost, "lost (ring buffer full)"),
        (
            d.output_failed,
            total.output_failed,
            "not written (output failed)",
        ),
        (
            d.follower_dropped,
            total.follower_dropped,
            "missed by slow followers",
        ),
        (d.undecodable, total.undecodable, "undecodable"),
    ];
    let parts: Vec<String> = kinds
        .iter()
        .filter(|(n, _, _)| *n > 0)
        .map(|(n, t, what)| format!("{n} {what} ({t} since start)"))
        .collect();
    if parts.is_empty() {
        return None;
    }
    let warn = d.lost + d.output_failed + d.undecodable > 0;
    Some((
        warn,
        format!("events in the last {secs} s: {}", parts.join(", ")),
    ))
}

async fn report_losses(sources: Sources, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut prev = Losses::default();
    loop {
        tick.tick().await;
        let now = match Losses::read(&sources) {
            Ok(l) => l,
            Err(e) => {
                log::warn!("loss report: reading the counters: {e:#}");
                continue;
            }
        };
        if let Some((warn, msg)) = loss_message(now.since(prev), now, every.as_secs()) {
            if warn {
                log::warn!("{msg}");
            } else {
                log::info!("{msg}");
            }
        }
        prev = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_losses_no_message() {
        let t = Losses {
            suppressed: 5,
            ..Default::default()
        };
        assert_eq!(loss_message(t.since(t), t, 10), None);
    }

    #[test]
    fn suppression_is_information_loss_is_a_warning() {
        let before = Losses::default();
        let now = Losses {
            suppressed: 40,
            ..Default::default()
        };
        let (warn, msg) = loss_message(now.since(before), now, 10).unwrap();
        assert!(!warn);
        assert_eq!(
            msg,
            "events in the last 10 s: 40 suppressed by the per-source rate limit (40 since start)"
        );
        let later = Losses { lost: 3, ..now };
        let (warn, msg) = loss_message(later.since(now), later, 10).unwrap();
        assert!(warn);
        assert_eq!(
            msg,
            "events in the last 10 s: 3 lost (ring buffer full) (3 since start)"
        );
    }
}
