//! `vpn-filter replay`: runs the real XDP program over a capture, offline.
//!
//! The program is loaded into the kernel exactly as `run` loads it, never attached, and every
//! packet of the capture goes through BPF_PROG_TEST_RUN in capture order, so the flow map
//! fills as it would on the gateway. Verdicts come only from the kernel: the action the
//! program returned, the protocol x verdict counter it incremented (read with batch
//! syscalls around each packet, see [`replay`]), and for dropped or monitored packets the
//! event it emitted (message and reason).
//!
//! Time: the program's flow timeouts run on the kernel clock, which a replay compresses (a
//! day of traffic replays in seconds). Replay therefore loads the program with timeouts it
//! never reaches and expires flow entries itself on the capture's clock: after each judged
//! packet it reads the flow's entry, and when the capture's time passes the entry's expiry
//! (the configured timeout after the kernel last refreshed it) it deletes the entry before
//! the flow's next packet, as the gateway would have found it stale. The verdict for that
//! packet is still the program's.

pub mod capture;
pub mod headers;
pub mod report;

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use vpn_filter_common::{
    verdict_counter_index, Config, Counter, FlowKey, FlowState, FlowStatus, Message, PolicyMode,
    Protocol, Reason, Verdict, DEFAULT_ALLOWED_FLOW_TIMEOUT_NS, DEFAULT_ALLOW_V4_ENTRIES,
    DEFAULT_ALLOW_V6_ENTRIES, DEFAULT_BLOCKED_FLOW_TIMEOUT_NS, DEFAULT_FLOW_ENTRIES,
    DEFAULT_PENDING_FLOW_TIMEOUT_NS, STATS_LEN,
};

pub use self::capture::{CaptureError, Format};
use self::{
    capture::{CaptureReader, FrameInfo},
    headers::Tuple,
};
use crate::{
    client::event::decode,
    kernel::{events::EventRing, flows, Filter, LoadOptions, Policy, StatsReader},
    registry::Allowlist,
};

/// XDP_DROP as the program returns it.
const XDP_DROP: u32 = 1;
/// Frames shorter than this are not run: BPF_PROG_TEST_RUN refuses them, and the program
/// passes them untouched (it cannot read an Ethernet header).
const MIN_FRAME: usize = 14;
/// Longest frame a test run hands the program whole (4 KiB page less XDP headroom and the
/// shared-info tail on x86-64). Longer frames go in as multi-buffer XDP: the program sees only
/// this much and passes them as malformed. On a gateway such frames do not reach XDP: they
/// are GRO/TSO super-packets of a host capture, or jumbo frames.
pub const TEST_RUN_LINEAR_MAX: usize = 3520;
/// Kernel-side flow timeout during a replay: never reached, replay expires entries on the
/// capture's clock instead (module docs).
const KERNEL_TIMEOUT_NS: u64 = 1 << 60;
/// How often (in packets) the progress callback is called.
const PROGRESS_EVERY: u64 = 4096;

/// Flow timeouts, applied on the capture's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub allowed_ns: u64,
    pub blocked_ns: u64,
    pub pending_ns: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            allowed_ns: DEFAULT_ALLOWED_FLOW_TIMEOUT_NS,
            blocked_ns: DEFAULT_BLOCKED_FLOW_TIMEOUT_NS,
            pending_ns: DEFAULT_PENDING_FLOW_TIMEOUT_NS,
        }
    }
}

impl Timeouts {
    fn for_status(&self, status: u8) -> u64 {
        match FlowStatus::from_u8(status) {
            Some(FlowStatus::Allowed) => self.allowed_ns,
            Some(FlowStatus::Pending) => self.pending_ns,
            _ => self.blocked_ns,
        }
    }
}

/// What to replay with.
#[derive(Clone, Debug)]
pub struct ReplaySettings {
    pub policy: Policy,
    /// The registered prefixes (empty: nothing is registered).
    pub allowlist: Allowlist,
    /// The known VPN endpoints (empty: none listed).
    pub endpoints: crate::endpoints::EndpointSet,
    /// The VPN domains of the `tls_sni` rule (default: the built-in list, as `run`).
    pub vpn_domains: crate::domains::DomainList,
    /// Capacity of the flow-state LRU map (as `run --flow-entries`).
    pub flow_entries: u32,
    pub timeouts: Timeouts,
    /// Keep a record of every dropped packet ([`Replay::dropped`]).
    pub keep_dropped: bool,
}

impl Default for ReplaySettings {
    fn default() -> Self {
        ReplaySettings {
            policy: Policy::default(),
            allowlist: Allowlist::default(),
            endpoints: Default::default(),
            vpn_domains: crate::domains::DomainList::builtin(),
            flow_entries: DEFAULT_FLOW_ENTRIES,
            timeouts: Timeouts::default(),
            keep_dropped: false,
        }
    }
}

/// What the program did with one packet. Ordered by severity: a flow's verdict is the most
/// severe verdict any of its packets got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// Not recognised as a VPN packet (ordinary traffic, or a header the program does not
    /// parse): passed.
    Unclassified,
    /// The protocol's policy is off: passed.
    Ignored,
    /// An endpoint is registered: passed.
    Allowed,
    /// Looked like a VPN but needs confirmation: passed, flow remembered.
    Pending,
    /// Unregistered, policy monitor: passed and reported.
    Monitored,
    /// Unregistered, policy enforce: dropped.
    Dropped,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Unclassified,
        Outcome::Ignored,
        Outcome::Allowed,
        Outcome::Pending,
        Outcome::Monitored,
        Outcome::Dropped,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Outcome::Unclassified => "unclassified",
            Outcome::Ignored => Verdict::Ignored.name(),
            Outcome::Allowed => Verdict::Allowed.name(),
            Outcome::Pending => Verdict::Pending.name(),
            Outcome::Monitored => Verdict::Monitored.name(),
            Outcome::Dropped => Verdict::Dropped.name(),
        }
    }

    pub fn from_name(name: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.name() == name)
    }
}

impl From<Verdict> for Outcome {
    fn from(v: Verdict) -> Self {
        match v {
            Verdict::Allowed => Outcome::Allowed,
            Verdict::Dropped => Outcome::Dropped,
            Verdict::Monitored => Outcome::Monitored,
            Verdict::Pending => Outcome::Pending,
            Verdict::Ignored => Outcome::Ignored,
        }
    }
}

/// One flow of the capture: packets sharing addresses, ports and IP protocol in either
/// direction (the key of the program's flow map). Source and destination are those of the
/// flow's first packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowResult {
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    pub ip_proto: u8,
    /// The VPN protocol of its most severe verdict (`none` when never classified).
    pub protocol: Protocol,
    /// The most severe verdict any of its packets got.
    pub verdict: Outcome,
    pub packets: u64,
    /// Wire bytes, counted as Ethernet frames.
    pub bytes: u64,
    /// Packets per outcome, indexed by `Outcome as usize`.
    pub by_outcome: [u64; 6],
    /// Capture position of its first packet (1-based).
    pub first_packet: u64,
    pub first_ts_ns: u64,
    pub last_ts_ns: u64,
    /// Message and reason of its first drop or monitor event.
    pub message: Option<Message>,
    pub reason: Option<Reason>,
    key: FlowKey,
}

impl FlowResult {
    pub fn count(&self, outcome: Outcome) -> u64 {
        self.by_outcome[outcome as usize]
    }
}

/// One dropped packet, from the program's event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DroppedPacket {
    /// Capture position (1-based).
    pub number: u64,
    pub ts_ns: u64,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    pub ip_proto: u8,
    pub protocol: Protocol,
    pub message: Message,
    pub reason: Reason,
    pub wire_len: u64,
}

/// The result of replaying a capture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replay {
    pub path: PathBuf,
    pub format: Format,
    /// Link types of the packets read, in order of first appearance.
    pub linktypes: Vec<u32>,
    /// Packets read (including those not run: see `not_run`).
    pub packets: u64,
    pub bytes: u64,
    pub first_ts_ns: Option<u64>,
    pub last_ts_ns: Option<u64>,
    /// Packets per VPN protocol and verdict.
    pub verdicts: BTreeMap<(Protocol, Verdict), u64>,
    /// Packets not recognised as VPN packets (passed).
    pub unclassified: u64,
    /// The program's parse counters over the replay (non-IP frames, fragments, truncated and
    /// malformed headers, extension-header chains beyond its limit).
    pub counters: BTreeMap<Counter, u64>,
    /// Frames too short for an Ethernet header (or a cut link header): passed without a run.
    pub not_run: u64,
    /// Packets the capture cut short (snap length): the program saw fewer bytes than the
    /// gateway would have, so their verdicts may differ from live.
    pub snapped: u64,
    /// Frames longer than [`TEST_RUN_LINEAR_MAX`]: judged on their first bytes only.
    pub oversized: u64,
    /// Flows in order of their first packet.
    pub flows: Vec<FlowResult>,
    /// Verdicts the program counted that replay could not attribute to a packet (sum of
    /// differences per protocol x verdict; 0 unless the program's counting changed).
    pub attribution_gaps: u64,
    /// Every dropped packet, if [`ReplaySettings::keep_dropped`].
    pub dropped: Vec<DroppedPacket>,
    /// Time spent replaying (after the program was loaded).
    pub elapsed: Duration,
}

impl Replay {
    fn new(reader: &CaptureReader) -> Replay {
        Replay {
            path: reader.path().to_path_buf(),
            format: reader.format(),
            linktypes: Vec::new(),
            packets: 0,
            bytes: 0,
            first_ts_ns: None,
            last_ts_ns: None,
            verdicts: BTreeMap::new(),
            unclassified: 0,
            counters: BTreeMap::new(),
            not_run: 0,
            snapped: 0,
            oversized: 0,
            flows: Vec::new(),
            attribution_gaps: 0,
            dropped: Vec::new(),
            elapsed: Duration::ZERO,
        }
    }

    /// Packets with this verdict, over all protocols.
    pub fn packets_with(&self, verdict: Verdict) -> u64 {
        self.verdicts
            .iter()
            .filter(|((_, v), _)| *v == verdict)
            .map(|(_, n)| n)
            .sum()
    }

    pub fn verdict(&self, protocol: Protocol, verdict: Verdict) -> u64 {
        self.verdicts
            .get(&(protocol, verdict))
            .copied()
            .unwrap_or(0)
    }

    /// Packets replayed per second of replay time.
    pub fn packets_per_second(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.packets as f64 / s
        } else {
            0.0
        }
    }

    /// Flows whose verdict differs in `other` (a replay of the same capture with other
    /// settings): `(flow here, flow there)`.
    pub fn changed_flows<'a>(&'a self, other: &'a Replay) -> Vec<(&'a FlowResult, &'a FlowResult)> {
        let theirs: HashMap<&FlowKey, &FlowResult> =
            other.flows.iter().map(|f| (&f.key, f)).collect();
        self.flows
            .iter()
            .filter_map(|f| {
                let o = theirs.get(&f.key)?;
                (o.verdict != f.verdict || o.protocol != f.protocol).then_some((f, *o))
            })
            .collect()
    }
}

/// A replay that could not finish.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The capture is unreadable from some point on; `partial` holds what was replayed
    /// before it.
    #[error("{}", capture_message(.error, .partial))]
    Capture {
        error: CaptureError,
        partial: Box<Replay>,
    },
    /// The capture could not be opened at all.
    #[error(transparent)]
    Open(CaptureError),
    /// Loading the program, syncing the allowlist, or a kernel call failed.
    #[error(transparent)]
    Kernel(#[from] anyhow::Error),
}

fn capture_message(error: &CaptureError, partial: &Replay) -> String {
    format!(
        "{error}; {} packet(s) were read and replayed before it",
        partial.packets
    )
}

/// Kernel flow entry as last seen, with its expiry on the capture's clock.
#[derive(Clone, Copy, Debug)]
struct KernelEntry {
    expires_ns: u64,
    packets: u32,
    capture_expiry_ns: u64,
}

struct FlowAcc {
    result: FlowResult,
    kernel: Option<KernelEntry>,
}

/// A dropped or monitored packet whose event is still in the ring.
struct AwaitedEvent {
    tuple: Option<Tuple>,
    flow: Option<usize>,
    /// Index in [`Replay::dropped`].
    dropped: Option<usize>,
}

/// Number of protocol x verdict slots at the start of `STATS`.
const VERDICT_SLOTS: usize = Protocol::COUNT * Verdict::COUNT;
/// The counters read after every packet: `candidates`, `flow_hit`, `flow_insert`,
/// `flow_insert_failed`, `allowlist_lookups` (see [`replay`]); `candidates` only matters
/// when a protocol's policy is off.
const SIGNALS_FIRST: Counter = Counter::Candidates;
const SIGNALS: usize = Counter::AllowlistLookups as usize - SIGNALS_FIRST as usize + 1;
/// Position of a counter among the signals.
const fn signal(c: Counter) -> usize {
    c as usize - SIGNALS_FIRST as usize
}
/// Events are read in batches: the ring wakes its reader (an IPI) only when a record lands
/// in an empty ring, so draining after every packet would cost one wakeup per drop. The
/// ring holds 4 MiB / 72 B = 58k events.
const EVENT_BATCH: usize = 1024;

/// Replays the capture at `path` through a freshly loaded program. `progress` is called now
/// and then with (bytes read, file size).
///
/// Which verdict the program counted for a packet, at the cost of one small counter read
/// per packet (the 55 protocol x verdict slots are read only when nothing cheaper decides):
/// the program counts verdicts only in `decide`, and every verdict except `ignored` either
/// finds the packet's flow entry (`flow_hit`) or looks up the allowlist
/// (`allowlist_lookups`) and stores one (`flow_insert`, `flow_insert_failed`); `ignored`
/// happens only after a payload inspection (`candidates`) for a protocol whose policy is
/// off. So after each run these counters are read in one syscall (a batch read costs per
/// slot, so only what is needed): if none of the flow counters moved, the packet was not judged (or, under an
/// off policy, the slots are read). If they moved, the packet's flow entry tells the verdict
/// by how it changed (refreshed or new: its status; a pending entry's packet count), and
/// only an entry that did not change or is missing sends replay to the slots. The totals
/// the program counted are checked against this attribution ([`Replay::attribution_gaps`]).
pub fn replay(
    path: &Path,
    settings: &ReplaySettings,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Replay, ReplayError> {
    let mut reader = CaptureReader::open(path).map_err(ReplayError::Open)?;
    let mut filter = load(settings)?;
    let mut ring = filter.take_event_ring()?;
    let stats = StatsReader::new(&filter)?;
    let signals_first = vpn_filter_common::counter_index(SIGNALS_FIRST);
    let any_off = Protocol::ALL[1..]
        .iter()
        .any(|p| settings.policy.mode(*p) == PolicyMode::Off);
    // Without an off policy `candidates` tells nothing: start the read after it.
    let skip = if any_off { 0 } else { 1 };
    let mut signals = [[0u64; SIGNALS]; 2];
    let mut verdicts = [vec![0u64; VERDICT_SLOTS], vec![0u64; VERDICT_SLOTS]];
    stats.read_range(signals_first + skip as u32, &mut signals[0][skip..])?;
    stats.read_range(0, &mut verdicts[0])?;

    let mut out = Replay::new(&reader);
    let mut flows: Vec<FlowAcc> = Vec::new();
    let mut index: HashMap<FlowKey, usize> = HashMap::new();
    let mut awaited: Vec<AwaitedEvent> = Vec::with_capacity(EVENT_BATCH);
    let mut frame = Vec::with_capacity(2048);
    let started = Instant::now();
    let file_len = reader.file_len();
    progress(0, file_len);

    let result = loop {
        let info = match reader.next_frame(&mut frame) {
            Ok(Some(info)) => info,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        if info.number % PROGRESS_EVERY == 0 {
            progress(reader.position(), file_len);
        }
        out.packets += 1;
        out.bytes += info.wire_len;
        out.first_ts_ns.get_or_insert(info.ts_ns);
        out.last_ts_ns = Some(info.ts_ns);
        out.snapped += info.snapped as u64;
        out.oversized += (frame.len() > TEST_RUN_LINEAR_MAX) as u64;
        if info.short_link_header || frame.len() < MIN_FRAME {
            out.not_run += 1;
            continue;
        }

        let tuple = headers::tuple(&frame);
        let flow = tuple.map(|t| {
            let key = t.flow_key();
            *index.entry(key).or_insert_with(|| {
                flows.push(FlowAcc {
                    result: new_flow(&t, key, info.number, info.ts_ns),
                    kernel: None,
                });
                flows.len() - 1
            })
        });
        if let Some(i) = flow {
            let f = &mut flows[i];
            if f.kernel.is_some_and(|k| info.ts_ns >= k.capture_expiry_ns) {
                flows::remove_flow(&mut filter, &f.result.key)?;
                f.kernel = None;
            }
        }

        let action = filter
            .run_frame(&frame)
            .with_context(|| format!("running packet {} through the program", info.number))?;
        stats.read_range(signals_first + skip as u32, &mut signals[1][skip..])?;
        let moved = |c: Counter| signals[0][signal(c)] != signals[1][signal(c)];
        let flow_work = moved(Counter::FlowHit)
            || moved(Counter::FlowInsert)
            || moved(Counter::FlowInsertFailed)
            || moved(Counter::AllowlistLookups);
        let may_ignore = any_off && moved(Counter::Candidates);
        signals.swap(0, 1);
        let mut entry = None;
        let mut judged = None;
        if flow_work {
            if let Some(i) = flow {
                entry = flows::flow_entry(&filter, &flows[i].result.key)?;
                judged = infer(flows[i].kernel, entry, action);
            }
            if let Some((p, v)) = judged {
                verdicts[0][verdict_counter_index(p, v) as usize] += 1;
            }
        }
        if judged.is_none() && (flow_work || may_ignore) {
            stats.read_range(0, &mut verdicts[1])?;
            judged = self::judged(&verdicts[0], &verdicts[1]);
            verdicts.swap(0, 1);
        }

        let (protocol, mut outcome) = match judged {
            Some((p, v)) => (p, Outcome::from(v)),
            None => (Protocol::None, Outcome::Unclassified),
        };
        if action == XDP_DROP {
            // Only an enforce verdict drops; the counter says which protocol.
            outcome = Outcome::Dropped;
        }
        if let Some((p, v)) = judged {
            *out.verdicts.entry((p, v)).or_default() += 1;
        }

        if let Some(i) = flow {
            let kernel = flow_work.then_some(entry);
            flows[i].record(&info, kernel, settings, protocol, outcome);
        }
        if matches!(outcome, Outcome::Dropped | Outcome::Monitored) {
            let dropped = (outcome == Outcome::Dropped && settings.keep_dropped)
                .then_some(tuple)
                .flatten()
                .map(|t| {
                    out.dropped.push(DroppedPacket {
                        number: info.number,
                        ts_ns: info.ts_ns,
                        src: t.src_ip(),
                        sport: t.sport,
                        dst: t.dst_ip(),
                        dport: t.dport,
                        ip_proto: t.ip_proto,
                        protocol,
                        message: Message::None,
                        reason: Reason::None,
                        wire_len: info.wire_len,
                    });
                    out.dropped.len() - 1
                });
            awaited.push(AwaitedEvent {
                tuple,
                flow,
                dropped,
            });
            if awaited.len() >= EVENT_BATCH {
                pair_events(&mut ring, &mut awaited, &mut flows, &mut out);
            }
        }
    };
    pair_events(&mut ring, &mut awaited, &mut flows, &mut out);

    out.elapsed = started.elapsed();
    progress(reader.position(), file_len);
    out.linktypes = reader.linktypes().to_vec();
    let mut all = vec![0u64; STATS_LEN as usize];
    stats.read_range(0, &mut all)?;
    out.take_kernel_totals(&all);
    out.flows = flows.into_iter().map(|f| f.result).collect();
    match result {
        Ok(()) => Ok(out),
        Err(error) => Err(ReplayError::Capture {
            error,
            partial: Box::new(out),
        }),
    }
}

impl FlowAcc {
    /// One packet of this flow: its counts, its verdict, and (`kernel`: `Some` when the
    /// packet touched the flow map) the kernel's entry for it, with its expiry on the
    /// capture's clock.
    fn record(
        &mut self,
        info: &FrameInfo,
        kernel: Option<Option<FlowState>>,
        settings: &ReplaySettings,
        protocol: Protocol,
        outcome: Outcome,
    ) {
        if let Some(entry) = kernel {
            self.kernel = match entry {
                None => None,
                Some(st) => Some(KernelEntry {
                    expires_ns: st.expires_ns,
                    packets: st.packets,
                    capture_expiry_ns: match self.kernel {
                        // Not refreshed (a pending flow counting packets): same expiry.
                        Some(k) if k.expires_ns == st.expires_ns => k.capture_expiry_ns,
                        _ => info
                            .ts_ns
                            .saturating_add(settings.timeouts.for_status(st.status)),
                    },
                }),
            };
        }
        let r = &mut self.result;
        r.packets += 1;
        r.bytes += info.wire_len;
        r.by_outcome[outcome as usize] += 1;
        r.last_ts_ns = r.last_ts_ns.max(info.ts_ns);
        r.first_ts_ns = r.first_ts_ns.min(info.ts_ns);
        if outcome >= r.verdict && protocol != Protocol::None {
            r.verdict = outcome;
            r.protocol = protocol;
        }
    }
}

impl Replay {
    /// The program's counters (`all`: every STATS slot) at the end. Its verdict totals are
    /// authoritative; the per-packet attribution must add up to them, and a gap is counted
    /// and logged.
    fn take_kernel_totals(&mut self, all: &[u64]) {
        for c in Counter::ALL {
            let n = all[vpn_filter_common::counter_index(*c) as usize];
            if n > 0 {
                self.counters.insert(*c, n);
            }
        }
        let mut kernel_totals = BTreeMap::new();
        for p in Protocol::ALL {
            for v in Verdict::ALL {
                let n = all[verdict_counter_index(*p, *v) as usize];
                if n > 0 {
                    kernel_totals.insert((*p, *v), n);
                }
                let mine = self.verdicts.get(&(*p, *v)).copied().unwrap_or(0);
                self.attribution_gaps += n.abs_diff(mine);
            }
        }
        if self.attribution_gaps > 0 {
            log::warn!(
                "{}: {} verdicts counted by the program were not attributed to their packets; \
                 per-flow results may be incomplete (totals are the program's)",
                self.path.display(),
                self.attribution_gaps
            );
        }
        self.verdicts = kernel_totals;
        self.unclassified = self.packets - self.verdicts.values().sum::<u64>();
    }
}

/// Reads the events of the awaited packets, in order, and gives their message and reason
/// to the packet's flow and drop record. An event that does not match the next awaited
/// packet's addresses (events lost) is matched against the following ones.
fn pair_events(
    ring: &mut EventRing,
    awaited: &mut Vec<AwaitedEvent>,
    flows: &mut [FlowAcc],
    out: &mut Replay,
) {
    let mut next = 0;
    while let Some(item) = ring.next_record() {
        let Some(ev) = decode(&item) else { continue };
        let matches = |a: &AwaitedEvent| {
            a.tuple.is_some_and(|t| {
                t.src == ev.src
                    && t.dst == ev.dst
                    && t.sport.to_be_bytes() == ev.sport
                    && t.dport.to_be_bytes() == ev.dport
            })
        };
        let Some(k) = awaited[next..].iter().position(matches) else {
            continue;
        };
        let a = &awaited[next + k];
        next += k + 1;
        let (message, reason) = (Message::from_u8(ev.message), Reason::from_u8(ev.reason));
        if let Some(i) = a.flow {
            let r = &mut flows[i].result;
            if r.message.is_none() {
                r.message = message;
                r.reason = reason;
            }
        }
        if let Some(d) = a.dropped {
            let d = &mut out.dropped[d];
            d.message = message.unwrap_or(Message::None);
            d.reason = reason.unwrap_or(Reason::None);
        }
    }
    awaited.clear();
}

fn load(settings: &ReplaySettings) -> anyhow::Result<Filter> {
    let options = LoadOptions {
        allow_v4_entries: DEFAULT_ALLOW_V4_ENTRIES.max(settings.allowlist.v4_count() as u32),
        allow_v6_entries: DEFAULT_ALLOW_V6_ENTRIES.max(settings.allowlist.v6_count() as u32),
        flow_entries: settings.flow_entries,
        ..LoadOptions::default()
    };
    let config = Config {
        blocked_flow_timeout_ns: KERNEL_TIMEOUT_NS,
        allowed_flow_timeout_ns: KERNEL_TIMEOUT_NS,
        pending_flow_timeout_ns: KERNEL_TIMEOUT_NS,
        // Every drop and monitor verdict must produce its event (message, reason).
        events_per_source_per_sec: u32::MAX,
        events_per_cpu_per_sec: u32::MAX,
        ..Config::default()
    };
    let mut filter = Filter::load(options, &settings.policy, &config)?;
    filter
        .sync_allowlist(&settings.allowlist)
        .context("loading the registry into the allowlist")?;
    filter
        .sync_endpoints(&settings.endpoints)
        .context("loading the endpoint lists")?;
    filter
        .sync_vpn_domains(&settings.vpn_domains)
        .context("loading the VPN domain list")?;
    Ok(filter)
}

/// The verdict a packet that moved the flow counters got, from how its flow entry changed
/// since `before` (module docs); `None` when the entry does not tell.
fn infer(
    before: Option<KernelEntry>,
    after: Option<FlowState>,
    action: u32,
) -> Option<(Protocol, Verdict)> {
    let st = after?;
    let protocol = Protocol::from_u8(st.protocol)?;
    let refreshed = before.is_none_or(|k| k.expires_ns != st.expires_ns);
    let counted = before.is_some_and(|k| k.packets != st.packets);
    let dropped = action == XDP_DROP;
    let verdict = match FlowStatus::from_u8(st.status)? {
        FlowStatus::Allowed if refreshed && !dropped => Verdict::Allowed,
        FlowStatus::Blocked if refreshed && dropped => Verdict::Dropped,
        FlowStatus::Monitored if refreshed && !dropped => Verdict::Monitored,
        FlowStatus::Pending if (refreshed || counted) && !dropped => Verdict::Pending,
        _ => return None,
    };
    Some((protocol, verdict))
}

/// The protocol x verdict counter the packet incremented (the program increments at most
/// one per packet; none for packets it did not classify).
fn judged(before: &[u64], after: &[u64]) -> Option<(Protocol, Verdict)> {
    let mut found: Option<(Protocol, Verdict)> = None;
    for p in Protocol::ALL {
        for v in Verdict::ALL {
            let i = verdict_counter_index(*p, *v) as usize;
            if after[i] > before[i]
                && found.is_none_or(|(_, fv)| Outcome::from(*v) > Outcome::from(fv))
            {
                found = Some((*p, *v));
            }
        }
    }
    found
}

fn new_flow(t: &Tuple, key: FlowKey, number: u64, ts_ns: u64) -> FlowResult {
    FlowResult {
        src: t.src_ip(),
        sport: t.sport,
        dst: t.dst_ip(),
        dport: t.dport,
        ip_proto: t.ip_proto,
        protocol: Protocol::None,
        verdict: Outcome::Unclassified,
        packets: 0,
        bytes: 0,
        by_outcome: [0; 6],
        first_packet: number,
        first_ts_ns: ts_ns,
        last_ts_ns: ts_ns,
        message: None,
        reason: None,
        key,
    }
}

/// `all=MODE` when every protocol has the same mode, else `protocol=mode` for each
/// protocol that is not enforced.
pub fn describe_policy(policy: &Policy) -> String {
    let protocols = &Protocol::ALL[1..];
    let first = policy.mode(protocols[0]);
    if protocols.iter().all(|p| policy.mode(*p) == first) {
        return format!("all={}", first.name());
    }
    let others: Vec<String> = protocols
        .iter()
        .filter(|p| policy.mode(**p) != PolicyMode::Enforce)
        .map(|p| format!("{}={}", p.name(), policy.mode(*p).name()))
        .collect();
    format!("enforce, except {}", others.join(", "))
}
