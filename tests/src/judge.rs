//! Frames through a loaded filter (BPF_PROG_TEST_RUN) and what moved: the parser tests'
//! shared harness (tests/tests/parser_*.rs). Each check names the frame, the XDP action and
//! the exact protocol x verdict counters and parse counters that must move.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use vpn_filter::{
    kernel::{Filter, FrameStart, LoadOptions, Policy, Stats},
    registry::Feed,
};
use vpn_filter_common::{Config, Counter, PolicyMode, Protocol, Verdict};

use crate::lab::registry_json;

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// Registered addresses (in the allowlist of every filter loaded here).
pub const REG_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const REG_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 2);
/// Unregistered clients and a server.
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x200, 0, 0, 0, 0, 7);
pub const SERVER_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x300, 0, 0, 0, 0, 1);

/// The client address of one family, registered or not.
pub fn client(v6: bool, registered: bool) -> IpAddr {
    match (v6, registered) {
        (false, false) => CLIENT_V4.into(),
        (false, true) => REG_V4.into(),
        (true, false) => CLIENT_V6.into(),
        (true, true) => REG_V6.into(),
    }
}

pub fn server(v6: bool) -> IpAddr {
    if v6 {
        SERVER_V6.into()
    } else {
        SERVER_V4.into()
    }
}

/// Loads the program (frames starting at `frame_start`) with [`REG_V4`] and [`REG_V6`]
/// registered.
pub fn load_with(frame_start: FrameStart, policy: &Policy, config: &Config) -> Filter {
    crate::require_root();
    let json = registry_json(1, &[("REG-1", &[&REG_V4.to_string(), &REG_V6.to_string()])]);
    let (feed, _) =
        Feed::from_json(json.as_bytes(), "test", Default::default()).expect("valid feed");
    let options = LoadOptions {
        frame_start,
        ..Default::default()
    };
    let mut filter =
        Filter::load(options, policy, config).expect("the program loads through the verifier");
    filter
        .sync_allowlist(&feed.allowlist(time::OffsetDateTime::now_utc()))
        .expect("sync");
    filter
}

/// Ethernet frames, policy enforce, default configuration.
pub fn load() -> Filter {
    load_with(FrameStart::Ethernet, &Policy::default(), &Config::default())
}

/// Ethernet frames, the default policy but `mode` for `protocol`, default configuration.
pub fn load_policy(protocol: Protocol, mode: PolicyMode) -> Filter {
    let mut policy = Policy::default();
    policy.set(protocol, mode);
    load_with(FrameStart::Ethernet, &policy, &Config::default())
}

pub fn action_name(a: u32) -> &'static str {
    match a {
        0 => "XDP_ABORTED",
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        _ => "unexpected action",
    }
}

/// What one frame did: its action and every counter that moved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub action: u32,
    pub verdicts: Vec<(Protocol, Verdict, u64)>,
    pub counters: Vec<(Counter, u64)>,
}

impl Outcome {
    pub fn counter(&self, c: Counter) -> u64 {
        self.counters
            .iter()
            .find(|(k, _)| *k == c)
            .map_or(0, |(_, n)| *n)
    }

    pub fn dropped(&self) -> bool {
        self.action == XDP_DROP
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} verdicts {:?} counters {:?}",
            action_name(self.action),
            self.verdicts,
            self.counters
        )
    }
}

/// Runs one frame and reports what moved.
pub fn run(filter: &Filter, frame: &[u8]) -> Outcome {
    let before = filter.stats().expect("stats");
    let action = filter.run_frame(frame).expect("BPF_PROG_TEST_RUN");
    let after = filter.stats().expect("stats");
    Outcome {
        action,
        verdicts: after.verdicts_since(&before),
        counters: counter_delta(&before, &after),
    }
}

/// The parse counters that moved, except the ones every packet moves (packets, ipv4/ipv6,
/// candidates, flow and lookup bookkeeping, events).
fn counter_delta(before: &Stats, after: &Stats) -> Vec<(Counter, u64)> {
    let mut d = Vec::new();
    for c in Counter::ALL {
        if BOOKKEEPING.contains(c) {
            continue;
        }
        let n = after.counter(*c) - before.counter(*c);
        if n != 0 {
            d.push((*c, n));
        }
    }
    d
}

const BOOKKEEPING: &[Counter] = &[
    Counter::Packets,
    Counter::Ipv4,
    Counter::Ipv6,
    Counter::Candidates,
    Counter::FlowHit,
    Counter::FlowInsert,
    Counter::FlowRejudged,
    Counter::AllowlistLookups,
    Counter::EventsEmitted,
    Counter::EventsSuppressed,
    Counter::EventsLost,
    Counter::EventsRepeatSource,
    Counter::EndpointLookups,
];

/// The outcome a frame must have: its action, the single protocol x verdict counter that
/// moves by one (or none), and the parse counters that move by one (all others stay).
pub fn expect(action: u32, verdict: Option<(Protocol, Verdict)>, counters: &[Counter]) -> Outcome {
    let mut counters: Vec<(Counter, u64)> = counters.iter().map(|c| (*c, 1)).collect();
    counters.sort_by_key(|(c, _)| *c as u32);
    Outcome {
        action,
        verdicts: verdict.iter().map(|(p, v)| (*p, *v, 1)).collect(),
        counters,
    }
}

/// Every family (IPv4, IPv6) and registration (unregistered, registered):
/// `f(filter, failures, client, server, registered, k)`, where `k` counts the four calls from
/// 0 (for distinct ports). Fails once at the end, listing every check that failed.
pub fn each_client(
    filter: &Filter,
    mut f: impl FnMut(&Filter, &mut Failures, IpAddr, IpAddr, bool, u16),
) {
    let mut failures = Failures::default();
    let mut k = 0;
    for v6 in [false, true] {
        for registered in [false, true] {
            f(
                filter,
                &mut failures,
                client(v6, registered),
                server(v6),
                registered,
                k,
            );
            k += 1;
        }
    }
    failures.assert_none();
}

/// Records a failure unless `frame` passes with no verdict (parse counters may move).
pub fn require_ignored(failures: &mut Failures, filter: &Filter, what: &str, frame: &[u8]) {
    let got = run(filter, frame);
    failures.require(got.action == XDP_PASS && got.verdicts.is_empty(), || {
        format!("{what}: got {got}, want XDP_PASS and no verdict")
    });
}

/// Collects the rows of a table that did not behave, then fails once listing all of them.
#[derive(Default)]
pub struct Failures(Vec<String>, usize);

impl Failures {
    /// Runs `frame` and records a failure unless its outcome is `want`.
    pub fn check(&mut self, filter: &Filter, what: &str, frame: &[u8], want: &Outcome) {
        let got = run(filter, frame);
        self.1 += 1;
        if got != *want {
            self.0.push(format!("  {what}: got {got}, want {want}"));
        }
    }

    /// Records a failure unless `ok` (for outcomes checked by hand).
    pub fn require(&mut self, ok: bool, message: impl FnOnce() -> String) {
        self.1 += 1;
        if !ok {
            self.0.push(format!("  {}", message()));
        }
    }

    pub fn assert_none(self) {
        assert!(
            self.0.is_empty(),
            "{} of {} checks failed:\n{}",
            self.0.len(),
            self.1,
            self.0.join("\n")
        );
    }
}
