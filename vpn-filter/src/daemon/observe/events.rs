//! Drop/monitor events: from the kernel's ring buffer to JSON lines.
//!
//! The [`Pump`] drains the `EVENTS` ring buffer whenever epoll says it is readable (tokio
//! `AsyncFd`, never busy polling), encodes each record once as a JSON line without per-event
//! heap allocation beyond a shared buffer, writes every drained batch to the output with one
//! `write`, and hands the same lines to the [`EventHub`] that feeds `vpn-filter events
//! --follow` and `vpn-filter top`. Nothing is dropped silently: records that cannot be written
//! and lines a slow follower misses are counted in [`PipelineCounters`].
//!
//! Field names are stable and documented in docs/events.md.

use std::{
    collections::{HashMap, VecDeque},
    fs::{File, OpenOptions},
    io::{self, Write},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use bytes::{BufMut as _, Bytes, BytesMut};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::broadcast,
};
use vpn_filter_common::Event;

use crate::{
    client::event::{decode, event_json, iface_name, Clock},
    kernel::events::EventRing,
};

/// Interface names by index, looked up again after a while (interfaces can be renamed).
#[derive(Debug, Default)]
struct IfNames {
    names: HashMap<u32, (String, Instant)>,
}

const IFNAME_TTL: Duration = Duration::from_secs(10);

impl IfNames {
    fn get(&mut self, ifindex: u32, now: Instant) -> &str {
        let entry = self
            .names
            .entry(ifindex)
            .or_insert_with(|| (iface_name(ifindex), now));
        if now.duration_since(entry.1) > IFNAME_TTL {
            *entry = (iface_name(ifindex), now);
        }
        &entry.0
    }
}

/// Userspace side of the event accounting (the kernel side is in the `STATS` counters).
#[derive(Debug, Default)]
pub struct PipelineCounters {
    /// Records read from the ring buffer.
    pub received: AtomicU64,
    /// Records of the wrong size (a kernel/controller version mismatch), skipped.
    pub undecodable: AtomicU64,
    /// Events written to the output (stdout or `--events-file`).
    pub written: AtomicU64,
    /// Events that could not be written (the write failed: disk full, closed pipe, ...).
    pub output_failed: AtomicU64,
    /// Lines a slow `events --follow` / `top` client missed (its queue was full).
    pub follower_dropped: AtomicU64,
}

impl PipelineCounters {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// Lines kept for `vpn-filter events` (without `--follow`) and for followers that connect.
pub const DEFAULT_BACKLOG: usize = 1000;
/// Lines a follower may fall behind before it starts missing them (per follower).
pub const DEFAULT_FOLLOWER_QUEUE: usize = 4096;

/// Fan-out of encoded event lines to followers, plus a short backlog.
///
/// Every follower has its own bounded queue (a cursor into a shared bounded ring): a follower
/// that falls more than `follower_queue` lines behind misses the oldest ones and is told how
/// many; the pump never waits for a follower.
#[derive(Clone, Debug)]
pub struct EventHub {
    inner: Arc<HubInner>,
}

#[derive(Debug)]
struct HubInner {
    backlog: Mutex<VecDeque<Bytes>>,
    backlog_cap: usize,
    tx: broadcast::Sender<Bytes>,
}

impl EventHub {
    pub fn new(backlog: usize, follower_queue: usize) -> Self {
        let (tx, _) = broadcast::channel(follower_queue.max(1));
        EventHub {
            inner: Arc::new(HubInner {
                backlog: Mutex::new(VecDeque::with_capacity(backlog)),
                backlog_cap: backlog,
                tx,
            }),
        }
    }

    /// Publishes complete lines (each ends with `\n`).
    pub fn publish(&self, lines: &mut Vec<Bytes>) {
        if lines.is_empty() {
            return;
        }
        let mut backlog = self.inner.backlog.lock().unwrap_or_else(|e| e.into_inner());
        let followers = self.inner.tx.receiver_count() > 0;
        for line in lines.drain(..) {
            if followers {
                // Fails only when no follower is subscribed: nothing to deliver then.
                let _ = self.inner.tx.send(line.clone());
            }
            if self.inner.backlog_cap > 0 {
                if backlog.len() == self.inner.backlog_cap {
                    backlog.pop_front();
                }
                backlog.push_back(line);
            }
        }
    }

    /// The last `backlog` lines and a receiver for every line published after them (no gap,
    /// no duplicate: both are taken under the backlog lock the publisher holds).
    pub fn subscribe(&self, backlog: usize) -> (Vec<Bytes>, broadcast::Receiver<Bytes>) {
        let held = self.inner.backlog.lock().unwrap_or_else(|e| e.into_inner());
        let rx = self.inner.tx.subscribe();
        let skip = held.len().saturating_sub(backlog);
        (held.iter().skip(skip).cloned().collect(), rx)
    }

    /// The last `n` lines.
    pub fn backlog(&self, n: usize) -> Vec<Bytes> {
        let held = self.inner.backlog.lock().unwrap_or_else(|e| e.into_inner());
        let skip = held.len().saturating_sub(n);
        held.iter().skip(skip).cloned().collect()
    }

    /// Followers currently subscribed.
    pub fn followers(&self) -> usize {
        self.inner.tx.receiver_count()
    }
}

/// Where events are written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputTarget {
    Stdout,
    /// Appended to; reopened on SIGHUP (logrotate's `postrotate kill -HUP`).
    File(PathBuf),
}

impl OutputTarget {
    pub fn describe(&self) -> String {
        match self {
            OutputTarget::Stdout => "stdout".into(),
            OutputTarget::File(p) => p.display().to_string(),
        }
    }
}

enum Sink {
    Stdout(io::Stdout),
    File(File),
    /// For tests: any writer.
    Writer(Box<dyn Write + Send>),
}

/// The JSON-lines output.
pub struct Output {
    target: OutputTarget,
    sink: Sink,
    /// The previous write stopped in the middle of a line: start the next with a newline so
    /// the broken line does not swallow the next record.
    partial: bool,
}

fn open_append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .with_context(|| format!("opening the events file {}", path.display()))
}

impl Output {
    pub fn open(target: OutputTarget) -> Result<Self> {
        let sink = match &target {
            OutputTarget::Stdout => Sink::Stdout(io::stdout()),
            OutputTarget::File(p) => Sink::File(open_append(p)?),
        };
        Ok(Output {
            target,
            sink,
            partial: false,
        })
    }

    /// An output writing into `w` (tests, benchmarks).
    pub fn writer(w: impl Write + Send + 'static) -> Self {
        Output {
            target: OutputTarget::Stdout,
            sink: Sink::Writer(Box::new(w)),
            partial: false,
        }
    }

    pub fn target(&self) -> &OutputTarget {
        &self.target
    }

    /// Reopens the file (after logrotate moved it). On failure the old file stays in use.
    pub fn reopen(&mut self) -> Result<bool> {
        if let OutputTarget::File(p) = &self.target {
            let f = open_append(p)?;
            self.sink = Sink::File(f);
            self.partial = false;
            return Ok(true);
        }
        Ok(false)
    }

    fn out(&mut self) -> &mut dyn Write {
        match &mut self.sink {
            Sink::Stdout(s) => s,
            Sink::File(f) => f,
            Sink::Writer(w) => w.as_mut(),
        }
    }

    /// Writes `buf` (whole lines) in as few `write` calls as the sink takes.
    fn write_batch(&mut self, buf: &[u8]) -> io::Result<()> {
        if self.partial {
            self.write_raw(b"\n")?;
            self.partial = false;
        }
        self.write_raw(buf)?;
        self.out().flush()
    }

    fn write_raw(&mut self, mut buf: &[u8]) -> io::Result<()> {
        let mut wrote_any = false;
        while !buf.is_empty() {
            match self.out().write(buf) {
                Ok(0) => {
                    self.partial = wrote_any;
                    return Err(io::ErrorKind::WriteZero.into());
                }
                Ok(n) => {
                    wrote_any = true;
                    buf = &buf[n..];
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.partial = wrote_any;
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

/// A batch is written once this many bytes are pending, even if the ring is not drained yet.
const BATCH_BYTES: usize = 256 * 1024;
/// Write errors are logged at most this often (all are counted).
const WRITE_ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// Turns ring-buffer records into JSON lines for the output and the hub.
pub struct Pump {
    clock: Clock,
    names: IfNames,
    output: Output,
    hub: EventHub,
    counters: Arc<PipelineCounters>,
    /// Encoding buffer; each line is split off as a `Bytes` sharing this allocation.
    enc: BytesMut,
    /// The batch for the output.
    batch: Vec<u8>,
    batch_events: u64,
    /// The batch for the hub.
    lines: Vec<Bytes>,
    last_error_log: Option<Instant>,
    errors_since_log: u64,
}

impl Pump {
    pub fn new(output: Output, hub: EventHub, counters: Arc<PipelineCounters>) -> Self {
        Pump {
            clock: Clock::new(),
            names: IfNames::default(),
            output,
            hub,
            counters,
            enc: BytesMut::with_capacity(64 * 1024),
            batch: Vec::with_capacity(BATCH_BYTES + 4096),
            batch_events: 0,
            lines: Vec::with_capacity(1024),
            last_error_log: None,
            errors_since_log: 0,
        }
    }

    /// Encodes one ring-buffer record into the pending batch.
    pub fn push(&mut self, record: &[u8], now: Instant) {
        PipelineCounters::add(&self.counters.received, 1);
        let Some(ev) = decode(record) else {
            PipelineCounters::add(&self.counters.undecodable, 1);
            log::warn!(
                "ignored a ring-buffer record of {} bytes (expected {}): controller and program versions differ?",
                record.len(),
                std::mem::size_of::<Event>()
            );
            return;
        };
        let mut tbuf = [0u8; 48];
        let time = self.clock.format(ev.ts_ns, &mut tbuf);
        let iface = self.names.get(ev.ifindex, now);
        let json = event_json(&ev, time, iface);
        if self.enc.capacity() - self.enc.len() < 1024 {
            self.enc.reserve(64 * 1024);
        }
        let mut w = (&mut self.enc).writer();
        // Serialising plain integers, &strs and addresses into memory cannot fail.
        if serde_json::to_writer(&mut w, &json).is_err() {
            self.enc.clear();
            return;
        }
        self.enc.put_u8(b'\n');
        let line = self.enc.split().freeze();
        self.batch.extend_from_slice(&line);
        self.batch_events += 1;
        self.lines.push(line);
    }

    /// True when the batch should be written before reading more.
    pub fn batch_full(&self) -> bool {
        self.batch.len() >= BATCH_BYTES
    }

    /// Writes the pending batch and publishes it to followers.
    pub fn flush(&mut self, now: Instant) {
        if self.batch.is_empty() {
            return;
        }
        let n = self.batch_events;
        let batch = std::mem::take(&mut self.batch);
        match self.output.write_batch(&batch) {
            Ok(()) => PipelineCounters::add(&self.counters.written, n),
            Err(e) => {
                PipelineCounters::add(&self.counters.output_failed, n);
                self.errors_since_log += n;
                let due = self
                    .last_error_log
                    .is_none_or(|t| now.duration_since(t) >= WRITE_ERROR_LOG_EVERY);
                if due {
                    log::error!(
                        "writing events to {} failed: {e}; {} events not written (counted as events_output_failed)",
                        self.output.target().describe(),
                        self.errors_since_log
                    );
                    self.last_error_log = Some(now);
                    self.errors_since_log = 0;
                }
            }
        }
        self.batch = batch;
        self.batch.clear();
        self.batch_events = 0;
        self.hub.publish(&mut self.lines);
    }

    /// SIGHUP: reopen the events file.
    pub fn reopen(&mut self) {
        match self.output.reopen() {
            Ok(true) => log::info!(
                "SIGHUP: reopened the events file {}",
                self.output.target().describe()
            ),
            Ok(false) => log::info!("SIGHUP: events go to stdout, nothing to reopen"),
            Err(e) => log::error!("SIGHUP: {e:#}; still writing to the previous file"),
        }
    }
}

/// Drains the ring buffer into `pump` until the task is cancelled. Waits on the ring
/// buffer's epoll readiness; never busy-polls. Reopens the output on SIGHUP.
pub async fn pump(ring: EventRing, mut pump: Pump) -> Result<()> {
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut ring = ring.into_async()?;
    loop {
        tokio::select! {
            drained = ring.drain(|record| {
                let now = Instant::now();
                pump.push(record, now);
                if pump.batch_full() {
                    pump.flush(now);
                }
            }) => {
                drained?;
                pump.flush(Instant::now());
            }
            _ = hup.recv() => pump.reopen(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv6Addr};

    use vpn_filter_common::{Message, Protocol, Reason, Verdict, FAMILY_V4, FAMILY_V6};

    use super::*;
    use crate::client::event::EventRecord;

    fn event(src_last: u8, reason: Reason) -> Event {
        let mut ev = Event {
            ts_ns: 1_000_000_123,
            ifindex: 1,
            pkt_len: 190,
            family: FAMILY_V4,
            ip_proto: 17,
            protocol: Protocol::WireGuard as u8,
            message: Message::WgInitiation as u8,
            verdict: Verdict::Dropped as u8,
            reason: reason as u8,
            suppressed: 3,
            sport: 40000u16.to_be_bytes(),
            dport: 51820u16.to_be_bytes(),
            vlan: 7u16.to_be_bytes(),
            ..Default::default()
        };
        ev.src[..4].copy_from_slice(&[10, 0, 0, src_last]);
        ev.dst[..4].copy_from_slice(&[10, 0, 0, 1]);
        ev
    }

    fn bytes_of(ev: &Event) -> Vec<u8> {
        // SAFETY: Event is #[repr(C)] plain data without padding.
        unsafe { std::slice::from_raw_parts(ev as *const Event as *const u8, size_of::<Event>()) }
            .to_vec()
    }

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    struct Failing;
    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from_raw_os_error(libc::ENOSPC))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    use std::mem::size_of;

    #[test]
    fn pump_output_parses_as_the_documented_record() {
        let out = Shared::default();
        let counters = Arc::new(PipelineCounters::default());
        let mut pump = Pump::new(
            Output::writer(out.clone()),
            EventHub::new(10, 10),
            counters.clone(),
        );
        let ev = event(9, Reason::Signature);
        pump.push(&bytes_of(&ev), Instant::now());
        pump.flush(Instant::now());
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(text.ends_with('\n'), "a JSON line ends with a newline");
        let rec: EventRecord = serde_json::from_str(text.trim_end()).expect("valid JSON");
        let expected = EventRecord::from_event(&ev, &pump.clock);
        assert_eq!(rec, expected);
        assert_eq!(rec.src, "10.0.0.9".parse::<IpAddr>().unwrap());
        assert_eq!(rec.flow, "new");
        assert_eq!(rec.vlan, 7);
        assert_eq!(rec.suppressed_before, 3);
        assert_eq!(
            rec.time,
            pump.clock
                .wall(ev.ts_ns)
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap()
        );
        assert_eq!(PipelineCounters::get(&counters.written), 1);
    }

    #[test]
    fn endpoint_events_name_the_provider_and_others_have_no_provider_field() {
        crate::endpoints::set_provider_names_for_replay(&["mullvad".into(), "X".into()]);
        let mut ev = event(9, Reason::ListedEndpoint);
        ev.protocol = Protocol::Endpoints as u8;
        ev.message = Message::ListedEndpoint as u8;
        ev.provider = 2;
        let r = EventRecord::from_event(&ev, &Clock::new());
        assert_eq!(
            (r.protocol.as_str(), r.message.as_str(), r.reason.as_str()),
            ("endpoints", "listed_endpoint", "listed_endpoint")
        );
        assert_eq!(r.provider.as_deref(), Some("X"));
        // An id the feed in force does not know is shown as such, not dropped.
        ev.provider = 7;
        let r = EventRecord::from_event(&ev, &Clock::new());
        assert_eq!(r.provider.as_deref(), Some("#7"));
        let plain = serde_json::to_value(EventRecord::from_event(
            &event(9, Reason::Signature),
            &Clock::new(),
        ))
        .unwrap();
        assert!(plain.get("provider").is_none(), "{plain}");
    }

    #[test]
    fn follow_up_reason_gives_flow_follow_up() {
        let clock = Clock::new();
        let mut ev = event(1, Reason::FlowFollowUp);
        ev.family = FAMILY_V6;
        ev.src = "fd77::3".parse::<Ipv6Addr>().unwrap().octets();
        let rec = EventRecord::from_event(&ev, &clock);
        assert_eq!(rec.flow, "follow_up");
        assert_eq!(rec.reason, "flow_follow_up");
        assert_eq!(rec.src, "fd77::3".parse::<IpAddr>().unwrap());
        assert_eq!(
            EventRecord::from_event(&event(1, Reason::Confirmed), &clock).flow,
            "new"
        );
    }

    #[test]
    fn a_batch_is_one_write_and_lines_reach_the_hub_in_order() {
        let out = Shared::default();
        let hub = EventHub::new(100, 100);
        let mut pump = Pump::new(
            Output::writer(out.clone()),
            hub.clone(),
            Arc::new(PipelineCounters::default()),
        );
        for i in 0..5 {
            pump.push(&bytes_of(&event(i, Reason::Signature)), Instant::now());
        }
        assert!(
            out.0.lock().unwrap().is_empty(),
            "nothing is written before the flush"
        );
        pump.flush(Instant::now());
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 5);
        let backlog = hub.backlog(10);
        assert_eq!(backlog.len(), 5);
        let joined: Vec<u8> = backlog.iter().flat_map(|b| b.iter().copied()).collect();
        assert_eq!(joined, text.as_bytes(), "hub lines equal the output lines");
    }

    #[test]
    fn write_failures_are_counted_not_fatal() {
        let counters = Arc::new(PipelineCounters::default());
        let mut pump = Pump::new(
            Output::writer(Failing),
            EventHub::new(10, 10),
            counters.clone(),
        );
        for i in 0..3 {
            pump.push(&bytes_of(&event(i, Reason::Signature)), Instant::now());
        }
        pump.flush(Instant::now());
        assert_eq!(PipelineCounters::get(&counters.output_failed), 3);
        assert_eq!(PipelineCounters::get(&counters.written), 0);
    }

    #[test]
    fn a_record_of_the_wrong_size_is_counted_as_undecodable() {
        let counters = Arc::new(PipelineCounters::default());
        let mut pump = Pump::new(
            Output::writer(Shared::default()),
            EventHub::new(10, 10),
            counters.clone(),
        );
        pump.push(&[0u8; 12], Instant::now());
        assert_eq!(PipelineCounters::get(&counters.undecodable), 1);
        assert_eq!(PipelineCounters::get(&counters.received), 1);
    }

    #[test]
    fn backlog_keeps_the_newest_lines() {
        let hub = EventHub::new(3, 10);
        let mut lines: Vec<Bytes> = (0..5).map(|i| Bytes::from(format!("{i}\n"))).collect();
        hub.publish(&mut lines);
        let got: Vec<_> = hub.backlog(10).into_iter().collect();
        assert_eq!(
            got,
            vec![Bytes::from("2\n"), Bytes::from("3\n"), Bytes::from("4\n")]
        );
        assert_eq!(hub.backlog(1), vec![Bytes::from("4\n")]);
    }

    #[test]
    fn subscribe_sees_every_line_after_its_backlog() {
        let hub = EventHub::new(10, 10);
        hub.publish(&mut vec![Bytes::from("a\n")]);
        let (backlog, mut rx) = hub.subscribe(5);
        hub.publish(&mut vec![Bytes::from("b\n")]);
        assert_eq!(backlog, vec![Bytes::from("a\n")]);
        assert_eq!(rx.try_recv().unwrap(), Bytes::from("b\n"));
        assert_eq!(hub.followers(), 1);
    }

    #[test]
    fn reopen_after_rename_writes_to_a_new_file() {
        let dir = std::env::temp_dir().join(format!("vpn-filter-events-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("events.json");
        let mut out = Output::open(OutputTarget::File(path.clone())).unwrap();
        out.write_batch(b"one\n").unwrap();
        std::fs::rename(&path, dir.join("events.json.1")).unwrap();
        out.write_batch(b"two\n").unwrap();
        assert!(out.reopen().unwrap());
        out.write_batch(b"three\n").unwrap();
        let old = std::fs::read_to_string(dir.join("events.json.1")).unwrap();
        let new = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(old, "one\ntwo\n");
        assert_eq!(new, "three\n");
    }
}
