//! `vpn-filter top`: a live terminal view of a running daemon, for incidents.
//!
//! Fed by the control socket: a status report every refresh (counters, from which the rates
//! per protocol are computed) and the event stream (from which the top sources are counted).
//! Each event counts for itself plus the events its source had suppressed by the kernel's
//! rate limit before it (`suppressed_before`), so a source flooding at thousands of packets
//! per second ranks by what it sends, not by the five events a second it is allowed.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    net::IpAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, LazyLock,
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use ratatui::{
    crossterm::event::{self, Event as TermEvent, KeyCode, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Cell, Paragraph, Row, Table},
    Frame,
};
use time::OffsetDateTime;
use vpn_filter_common::{Protocol, Verdict};

use crate::client::{
    self as control,
    event::EventRecord,
    status::{KernelCounters, StatusReport},
    StatusClient, StreamLine,
};

#[derive(Debug, Clone, clap::Args)]
pub struct TopArgs {
    /// The daemon's control socket.
    #[arg(long, value_name = "PATH", default_value = control::DEFAULT_SOCKET)]
    pub control_socket: PathBuf,
    /// Refresh interval in milliseconds.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub interval_ms: u64,
    /// Top sources are counted over this many seconds.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub window: u64,
}

/// Sources tracked at most; beyond this the least active are forgotten (random-source floods).
const MAX_SOURCES: usize = 50_000;
/// Past events asked for on connect, so the view is not empty at first.
const CONNECT_BACKLOG: usize = 1000;

/// One source's recent activity.
#[derive(Clone, Debug)]
struct Source {
    /// (time, packets) per event, in arrival order.
    hits: VecDeque<(OffsetDateTime, u64)>,
    in_window: u64,
    protocols: BTreeSet<String>,
    verdict: String,
    last_seen: OffsetDateTime,
    last_dst: IpAddr,
    last_dport: u16,
    iface: String,
}

/// A row of the top-sources table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceRow {
    pub src: IpAddr,
    /// Packets reported in the window (events plus the suppressed ones they carry).
    pub packets: u64,
    pub protocols: String,
    pub verdict: String,
    pub last_dst: String,
    pub iface: String,
    pub last_seen_secs: i64,
}

/// Per-second rates of one protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rates {
    pub per_verdict: [f64; Verdict::COUNT],
}

/// Everything the view shows; fed by [`Model::on_status`] and [`Model::on_event`].
#[derive(Debug)]
pub struct Model {
    window: time::Duration,
    pub status: Option<StatusReport>,
    prev: Option<(Instant, u32, KernelCounters)>,
    /// Per protocol (wire order, `None` excluded).
    pub rates: Vec<(Protocol, Rates)>,
    /// Events emitted and suppressed per second (kernel).
    pub event_rates: (f64, f64),
    sources: HashMap<IpAddr, Source>,
    /// Lines the daemon skipped for this viewer (too slow) plus lines dropped here.
    pub lagged: u64,
    pub error: Option<String>,
}

impl Model {
    pub fn new(window: Duration) -> Self {
        Model {
            window: time::Duration::try_from(window).unwrap_or(time::Duration::MINUTE),
            status: None,
            prev: None,
            rates: Vec::new(),
            event_rates: (0.0, 0.0),
            sources: HashMap::new(),
            lagged: 0,
            error: None,
        }
    }

    /// A new status report taken at `now`: rates are the counter differences since the
    /// previous one (none across a daemon restart).
    pub fn on_status(&mut self, now: Instant, report: StatusReport) {
        let cur = report.counters.clone();
        if let Some((then, pid, prev)) = &self.prev {
            let dt = now.duration_since(*then).as_secs_f64();
            if *pid == report.pid && dt > 0.0 {
                let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / dt;
                self.rates = Protocol::ALL[1..]
                    .iter()
                    .map(|p| {
                        let mut r = Rates::default();
                        for v in Verdict::ALL {
                            r.per_verdict[*v as usize] = rate(
                                cur.verdict(p.name(), v.name()),
                                prev.verdict(p.name(), v.name()),
                            );
                        }
                        (*p, r)
                    })
                    .collect();
                self.event_rates = (
                    rate(
                        cur.counter("events_emitted"),
                        prev.counter("events_emitted"),
                    ),
                    rate(
                        cur.counter("events_suppressed"),
                        prev.counter("events_suppressed"),
                    ),
                );
            } else {
                self.rates.clear();
            }
        }
        self.prev = Some((now, report.pid, cur));
        self.status = Some(report);
        self.error = None;
    }

    pub fn on_event(&mut self, ev: &EventRecord) {
        let Ok(t) = OffsetDateTime::parse(&ev.time, &time::format_description::well_known::Rfc3339)
        else {
            return;
        };
        let packets = 1 + ev.suppressed_before as u64;
        let s = self.sources.entry(ev.src).or_insert_with(|| Source {
            hits: VecDeque::new(),
            in_window: 0,
            protocols: BTreeSet::new(),
            verdict: String::new(),
            last_seen: t,
            last_dst: ev.dst,
            last_dport: ev.dport,
            iface: String::new(),
        });
        s.hits.push_back((t, packets));
        s.in_window += packets;
        // Endpoint events name the provider: `endpoints:mullvad`.
        let what = match &ev.provider {
            Some(p) => format!("{}:{p}", ev.protocol),
            None => ev.protocol.clone(),
        };
        if !s.protocols.contains(&what) {
            s.protocols.insert(what);
        }
        if t >= s.last_seen {
            s.last_seen = t;
            s.last_dst = ev.dst;
            s.last_dport = ev.dport;
            if s.verdict != ev.verdict {
                s.verdict.clone_from(&ev.verdict);
            }
            if s.iface != ev.iface {
                s.iface.clone_from(&ev.iface);
            }
        }
    }

    /// Forgets activity older than the window; bounds the number of sources tracked.
    pub fn prune(&mut self, now: OffsetDateTime) {
        let cutoff = now - self.window;
        self.sources.retain(|_, s| {
            // Events from different CPUs may arrive slightly out of order: look at all.
            if s.hits.iter().any(|(t, _)| *t < cutoff) {
                s.hits.retain(|(t, _)| *t >= cutoff);
                s.in_window = s.hits.iter().map(|(_, n)| n).sum();
            }
            !s.hits.is_empty()
        });
        if self.sources.len() > MAX_SOURCES {
            let mut counts: Vec<u64> = self.sources.values().map(|s| s.in_window).collect();
            let keep = MAX_SOURCES / 2;
            counts.select_nth_unstable_by(keep, |a, b| b.cmp(a));
            let threshold = counts[keep];
            self.sources.retain(|_, s| s.in_window > threshold);
        }
    }

    /// The `n` sources with the most packets in the window.
    pub fn top_sources(&self, now: OffsetDateTime, n: usize) -> Vec<SourceRow> {
        let mut all: Vec<(&IpAddr, &Source)> = self.sources.iter().collect();
        all.sort_by(|a, b| {
            b.1.in_window
                .cmp(&a.1.in_window)
                .then(b.1.last_seen.cmp(&a.1.last_seen))
                .then(a.0.cmp(b.0))
        });
        all.into_iter()
            .take(n)
            .map(|(ip, s)| SourceRow {
                src: *ip,
                packets: s.in_window,
                protocols: s.protocols.iter().cloned().collect::<Vec<_>>().join(","),
                verdict: s.verdict.clone(),
                last_dst: match s.last_dst {
                    IpAddr::V6(a) => format!("[{a}]:{}", s.last_dport),
                    IpAddr::V4(a) => format!("{a}:{}", s.last_dport),
                },
                iface: s.iface.clone(),
                last_seen_secs: (now - s.last_seen).whole_seconds().max(0),
            })
            .collect()
    }

    pub fn sources_tracked(&self) -> usize {
        self.sources.len()
    }
}

fn rate_text(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.1}M", r / 1e6)
    } else if r >= 1e4 {
        format!("{:.1}k", r / 1e3)
    } else if r >= 10.0 || r == 0.0 {
        format!("{r:.0}")
    } else {
        format!("{r:.1}")
    }
}

/// Draws the whole view.
pub fn render(frame: &mut Frame, model: &Model, now: OffsetDateTime) {
    let area = frame.area();
    let [head, protos, sources, foot] = Layout::vertical([
        Constraint::Length(4),
        Constraint::Length(Protocol::COUNT as u16 + 2),
        Constraint::Min(4),
        Constraint::Length(1),
    ])
    .areas(area);

    render_header(frame, model, head);
    render_protocols(frame, model, protos);
    render_sources(frame, model, now, sources);
    render_footer(frame, model, foot);
}

/// The header: daemon, interfaces, registry, totals.
fn render_header(frame: &mut Frame, model: &Model, head: Rect) {
    let mut lines = Vec::new();
    match &model.status {
        Some(s) => {
            let ifaces: Vec<String> = s
                .interfaces
                .iter()
                .map(|i| format!("{} ({})", i.name, i.mode))
                .collect();
            lines.push(Line::from(vec![
                Span::styled("vpn-filter top", Style::new().add_modifier(Modifier::BOLD)),
                Span::raw(format!(
                    "  pid {}  program {}  up {}  on {}",
                    s.pid,
                    s.program_id.map_or("?".into(), |i| i.to_string()),
                    crate::cli::status::duration_text(s.uptime_secs),
                    ifaces.join(", ")
                )),
            ]));
            let reg = &s.registry;
            let sync_style = if reg.last_outcome.as_deref() == Some("error") {
                Style::new().fg(Color::Red)
            } else {
                Style::new()
            };
            lines.push(Line::from(vec![
                Span::raw(format!(
                    "registry serial {}: {} IPv4 + {} IPv6 prefixes; last sync ",
                    reg.serial.map_or("none".into(), |x| x.to_string()),
                    reg.v4_prefixes,
                    reg.v6_prefixes
                )),
                Span::styled(
                    reg.last_outcome.clone().unwrap_or_else(|| "none".into()),
                    sync_style,
                ),
            ]));
            let e = &s.events;
            let loss = e.lost + e.output_failed + e.undecodable;
            lines.push(Line::from(vec![
                Span::raw(format!(
                    "events/s {} emitted, {} suppressed (rate limit); totals: {} emitted, {} suppressed, ",
                    rate_text(model.event_rates.0),
                    rate_text(model.event_rates.1),
                    e.emitted,
                    e.suppressed
                )),
                Span::styled(
                    format!("{loss} lost"),
                    if loss > 0 {
                        Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)
                    } else {
                        Style::new()
                    },
                ),
            ]));
        }
        None => lines.push(Line::from("vpn-filter top: waiting for the daemon...")),
    }
    frame.render_widget(Paragraph::new(lines), head);
}

/// Rates per protocol.
fn render_protocols(frame: &mut Frame, model: &Model, protos: Rect) {
    let header = Row::new(
        [
            "protocol",
            "dropped/s",
            "monitored/s",
            "allowed/s",
            "dropped total",
        ]
        .map(|h| Cell::from(h).style(Style::new().add_modifier(Modifier::BOLD))),
    );
    let rows: Vec<Row> = Protocol::ALL[1..]
        .iter()
        .map(|p| {
            let r = model
                .rates
                .iter()
                .find(|(q, _)| q == p)
                .map(|(_, r)| *r)
                .unwrap_or_default();
            let total = model
                .status
                .as_ref()
                .map_or(0, |s| s.counters.verdict(p.name(), Verdict::Dropped.name()));
            let dropping = r.per_verdict[Verdict::Dropped as usize] > 0.0;
            let style = if dropping {
                Style::new().fg(Color::Red)
            } else if total == 0 {
                Style::new().fg(Color::DarkGray)
            } else {
                Style::new()
            };
            Row::new(vec![
                Cell::from(p.name()),
                Cell::from(rate_text(r.per_verdict[Verdict::Dropped as usize])),
                Cell::from(rate_text(r.per_verdict[Verdict::Monitored as usize])),
                Cell::from(rate_text(r.per_verdict[Verdict::Allowed as usize])),
                Cell::from(total.to_string()),
            ])
            .style(style)
        })
        .collect();
    let widths = [
        Constraint::Length(18),
        Constraint::Length(12),
        Constraint::Length(12),
        Constraint::Length(12),
        Constraint::Length(14),
    ];
    frame.render_widget(
        Table::new(rows, widths)
            .header(header)
            .block(Block::bordered().title(" packets per second by protocol ")),
        protos,
    );
}

/// The top blocked sources.
fn render_sources(frame: &mut Frame, model: &Model, now: OffsetDateTime, sources: Rect) {
    let n = sources.height.saturating_sub(3) as usize;
    let header = Row::new(
        [
            "source",
            "packets",
            "protocols",
            "verdict",
            "last destination",
            "iface",
            "seen",
        ]
        .map(|h| Cell::from(h).style(Style::new().add_modifier(Modifier::BOLD))),
    );
    let rows: Vec<Row> = model
        .top_sources(now, n)
        .into_iter()
        .map(|r| {
            Row::new(vec![
                Cell::from(r.src.to_string()),
                Cell::from(r.packets.to_string()),
                Cell::from(r.protocols),
                Cell::from(r.verdict),
                Cell::from(r.last_dst),
                Cell::from(r.iface),
                Cell::from(format!("{}s ago", r.last_seen_secs)),
            ])
        })
        .collect();
    let widths = [
        Constraint::Length(28),
        Constraint::Length(9),
        Constraint::Length(18),
        Constraint::Length(10),
        Constraint::Length(30),
        Constraint::Length(10),
        Constraint::Length(8),
    ];
    let title = format!(
        " top sources, last {} s ({} tracked) ",
        model.window.whole_seconds(),
        model.sources_tracked()
    );
    frame.render_widget(
        Table::new(rows, widths)
            .header(header)
            .block(Block::bordered().title(title)),
        sources,
    );
}

/// The footer: keys, lag and errors.
fn render_footer(frame: &mut Frame, model: &Model, foot: Rect) {
    let mut foot_spans = vec![Span::raw("q: quit")];
    if model.lagged > 0 {
        foot_spans.push(Span::styled(
            format!("  {} events skipped (view too slow)", model.lagged),
            Style::new().fg(Color::Yellow),
        ));
    }
    if let Some(e) = &model.error {
        foot_spans.push(Span::styled(format!("  {e}"), Style::new().fg(Color::Red)));
    }
    frame.render_widget(Paragraph::new(Line::from(foot_spans)), foot);
}

enum Msg {
    Event(Box<EventRecord>),
    Lagged(u64),
    Disconnected(String),
}

/// Set by SIGINT and SIGTERM (signal-hook); the UI loop checks it between frames.
static STOP: LazyLock<Arc<AtomicBool>> = LazyLock::new(Default::default);

/// Reads the event stream on its own thread, reconnecting when the daemon restarts.
fn spawn_event_reader(path: PathBuf, tx: mpsc::SyncSender<Msg>) {
    std::thread::spawn(move || {
        let mut backlog = CONNECT_BACKLOG;
        // Events this thread could not hand over (the view is behind): reported as lag.
        let mut dropped_here = 0u64;
        loop {
            let r = control::stream_events(&path, backlog, true, |line| {
                if dropped_here > 0 && tx.try_send(Msg::Lagged(dropped_here)).is_ok() {
                    dropped_here = 0;
                }
                let msg = match line {
                    StreamLine::Event(l) => match serde_json::from_str::<EventRecord>(&l) {
                        Ok(ev) => Msg::Event(Box::new(ev)),
                        Err(_) => return true,
                    },
                    StreamLine::Lagged(n) => Msg::Lagged(n),
                };
                match tx.try_send(msg) {
                    Ok(()) => true,
                    Err(mpsc::TrySendError::Full(_)) => {
                        dropped_here += 1;
                        true
                    }
                    Err(mpsc::TrySendError::Disconnected(_)) => false,
                }
            });
            let why = match r {
                Ok(()) => "the daemon closed the event stream".to_string(),
                Err(e) => format!("{e:#}"),
            };
            if tx.send(Msg::Disconnected(why)).is_err() {
                return;
            }
            // After a reconnect only new events: the old ones were counted already.
            backlog = 0;
            std::thread::sleep(Duration::from_secs(1));
        }
    });
}

/// Runs the view until q, Esc, Ctrl-C or SIGINT/SIGTERM.
pub fn run(args: TopArgs) -> Result<()> {
    // Fail before touching the terminal if the daemon cannot be reached.
    let mut client = StatusClient::connect(&args.control_socket)?;
    let first = client.status()?;
    let interval = Duration::from_millis(args.interval_ms.max(100));
    let mut model = Model::new(Duration::from_secs(args.window.max(1)));
    model.on_status(Instant::now(), first);

    let (tx, rx) = mpsc::sync_channel(65_536);
    spawn_event_reader(args.control_socket.clone(), tx);

    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&STOP))
            .context("installing the SIGINT/SIGTERM handlers")?;
    }
    let mut terminal = ratatui::try_init().context("setting up the terminal")?;
    let result = ui_loop(
        &mut terminal,
        &mut model,
        &mut Some(client),
        &rx,
        &args,
        interval,
    );
    ratatui::restore();
    result
}

fn ui_loop(
    terminal: &mut ratatui::DefaultTerminal,
    model: &mut Model,
    client: &mut Option<StatusClient>,
    rx: &mpsc::Receiver<Msg>,
    args: &TopArgs,
    interval: Duration,
) -> Result<()> {
    let mut next_status = Instant::now() + interval;
    loop {
        while let Ok(msg) = rx.try_recv() {
            match msg {
                Msg::Event(ev) => model.on_event(&ev),
                Msg::Lagged(n) => model.lagged += n,
                Msg::Disconnected(why) => model.error = Some(why),
            }
        }
        let now = Instant::now();
        if now >= next_status {
            next_status = now + interval;
            if client.is_none() {
                *client = StatusClient::connect(&args.control_socket).ok();
            }
            if let Some(c) = client.as_mut() {
                match c.status() {
                    Ok(r) => model.on_status(now, r),
                    Err(e) => {
                        model.error = Some(format!("{e:#}"));
                        *client = None;
                    }
                }
            }
        }
        let wall = OffsetDateTime::now_utc();
        model.prune(wall);
        terminal.draw(|f| render(f, model, wall))?;
        let wait = next_status.saturating_duration_since(Instant::now());
        if event::poll(wait.min(Duration::from_millis(250)))? {
            if let TermEvent::Key(k) = event::read()? {
                let quit = k.kind == KeyEventKind::Press
                    && (matches!(k.code, KeyCode::Char('q') | KeyCode::Esc)
                        || (k.code == KeyCode::Char('c')
                            && k.modifiers.contains(KeyModifiers::CONTROL)));
                if quit {
                    return Ok(());
                }
            }
        }
        if STOP.load(Ordering::SeqCst) {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use ratatui::{backend::TestBackend, Terminal};

    use super::*;
    use crate::{
        client::status::{EventsStatus, InterfaceStatus, RegistryStatus},
        kernel::Stats,
    };

    fn event(src: &str, t: OffsetDateTime, suppressed: u32) -> EventRecord {
        EventRecord {
            time: t
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap(),
            iface: "eth0".into(),
            ifindex: 2,
            protocol: "wireguard".into(),
            message: "wg_initiation".into(),
            verdict: "dropped".into(),
            reason: "signature".into(),
            flow: "new".into(),
            src: src.parse().unwrap(),
            dst: "192.0.2.1".parse().unwrap(),
            sport: 1000,
            dport: 51820,
            ip_proto: 17,
            pkt_len: 190,
            vlan: 0,
            suppressed_before: suppressed,
            provider: None,
            encap: Vec::new(),
        }
    }

    fn report(pid: u32, wg_dropped: u64) -> StatusReport {
        let mut stats = Stats::default();
        stats
            .verdicts
            .insert((Protocol::WireGuard, Verdict::Dropped), wg_dropped);
        StatusReport {
            version: "0.1.0".into(),
            pid,
            started_at: OffsetDateTime::UNIX_EPOCH,
            uptime_secs: 5,
            program_id: Some(9),
            interfaces: vec![InterfaceStatus {
                name: "eth0".into(),
                ifindex: 2,
                mode: "native".into(),
            }],
            policy: Default::default(),
            registry: RegistryStatus::default(),
            endpoints: None,
            vpn_domains: None,
            counters: KernelCounters::from_stats(&stats),
            events: EventsStatus::default(),
        }
    }

    #[test]
    fn sources_rank_by_packets_including_suppressed() {
        let now = OffsetDateTime::now_utc();
        let mut m = Model::new(Duration::from_secs(60));
        // A: 5 events, one of which carries 995 suppressed: 1000 packets.
        for i in 0..5 {
            m.on_event(&event("198.51.100.1", now, if i == 4 { 995 } else { 0 }));
        }
        // B: 20 events, nothing suppressed.
        for _ in 0..20 {
            m.on_event(&event("198.51.100.2", now, 0));
        }
        let top = m.top_sources(now, 10);
        assert_eq!(top.len(), 2);
        assert_eq!(top[0].src, "198.51.100.1".parse::<IpAddr>().unwrap());
        assert_eq!(top[0].packets, 1000);
        assert_eq!(top[1].packets, 20);
        assert_eq!(top[0].last_dst, "192.0.2.1:51820");
    }

    #[test]
    fn activity_older_than_the_window_is_forgotten() {
        let now = OffsetDateTime::now_utc();
        let mut m = Model::new(Duration::from_secs(60));
        m.on_event(&event("198.51.100.1", now - time::Duration::seconds(90), 0));
        m.on_event(&event("198.51.100.2", now - time::Duration::seconds(30), 0));
        m.on_event(&event("198.51.100.2", now - time::Duration::seconds(70), 4));
        m.prune(now);
        let top = m.top_sources(now, 10);
        assert_eq!(top.len(), 1, "{top:?}");
        assert_eq!(top[0].src, "198.51.100.2".parse::<IpAddr>().unwrap());
        assert_eq!(top[0].packets, 1, "the 70 s old event no longer counts");
    }

    #[test]
    fn rates_are_counter_differences_per_second_and_reset_on_restart() {
        let mut m = Model::new(Duration::from_secs(60));
        let t0 = Instant::now();
        m.on_status(t0, report(1, 100));
        assert!(m.rates.is_empty(), "no rate from one sample");
        m.on_status(t0 + Duration::from_secs(2), report(1, 700));
        let wg = m
            .rates
            .iter()
            .find(|(p, _)| *p == Protocol::WireGuard)
            .unwrap()
            .1;
        assert_eq!(wg.per_verdict[Verdict::Dropped as usize], 300.0);
        m.on_status(t0 + Duration::from_secs(3), report(2, 5));
        assert!(m.rates.is_empty(), "a new daemon (pid) starts over");
    }

    #[test]
    fn the_view_renders_protocol_rates_and_top_sources() {
        let now = OffsetDateTime::now_utc();
        let mut m = Model::new(Duration::from_secs(60));
        let t0 = Instant::now();
        m.on_status(t0, report(1, 0));
        m.on_status(t0 + Duration::from_secs(1), report(1, 2500));
        m.on_event(&event("2001:db8::7", now, 41));
        let mut term = Terminal::new(TestBackend::new(120, 32)).unwrap();
        term.draw(|f| render(f, &m, now)).unwrap();
        let buf = term.backend().buffer().clone();
        let text: String = (0..buf.area.height)
            .map(|y| {
                (0..buf.area.width)
                    .map(|x| buf[(x, y)].symbol().to_string())
                    .collect::<String>()
                    + "\n"
            })
            .collect();
        assert!(text.contains("vpn-filter top"), "{text}");
        assert!(text.contains("eth0 (native)"), "{text}");
        let wg = text
            .lines()
            .find(|l| l.contains("wireguard") && l.contains("2500"))
            .unwrap_or_else(|| panic!("a wireguard row with 2500/s in\n{text}"));
        assert!(wg.contains("2500"), "{wg}");
        let src = text
            .lines()
            .find(|l| l.contains("2001:db8::7"))
            .unwrap_or_else(|| panic!("the source row in\n{text}"));
        assert!(src.contains(" 42 "), "42 packets: {src}");
        assert!(text.contains("q: quit"));
    }

    #[test]
    fn rates_are_compact() {
        assert_eq!(rate_text(0.0), "0");
        assert_eq!(rate_text(2.5), "2.5");
        assert_eq!(rate_text(2500.0), "2500");
        assert_eq!(rate_text(25_000.0), "25.0k");
        assert_eq!(rate_text(3_200_000.0), "3.2M");
    }
}
