//! Section 1: the program's in-kernel cost per packet, with BPF_PROG_TEST_RUN.
//!
//! A call with `repeat` > 1 replays one frame: after the first run a VPN frame is a flow-map
//! hit, not a new flow, and the allowlist sees one key. So each (class, source) cell runs
//! `bench_mutate` with a table of thousands of source addresses: it writes the next one into
//! the frame and tail-calls the program under test (vpn-filter, or `bench_pass` for the
//! baseline), every run a new flow from a different source. Calls are interleaved A B B A;
//! each call costs two RCU grace periods (~20 ms) for the XDP dispatcher swap, which is why
//! one call runs thousands of packets. The classic single-frame measurement (no harness) is
//! reported beside it.

use std::{net::IpAddr, os::fd::AsFd as _, time::Instant};

use anyhow::{anyhow, Context as _, Result};
use aya::{
    maps::{Array, MapData, ProgramArray, RingBuf},
    programs::{ProgramFd, Xdp},
    Ebpf, EbpfLoader,
};
use vpn_filter::kernel::{test_run::test_run, Filter, LoadOptions, Policy, BENCH_OBJECT};
use vpn_filter_common::{Config, Counter, PolicyMode, Protocol};
use vpn_filter_tests::packet::{
    dns_query, fill_pseudo_random, ikev2_sa_init, l2tp_sccrq, openvpn_client_reset, pptp_sccrq,
    quic_initial, wireguard_initiation, Frame, TLS_AUTH_SHA1,
};

use super::{
    registry::Registry,
    util::{check_stop, count, median, ns, ratio, signed_ns, Rng},
};

/// The benchmark-only programs, loaded through the verifier.
pub struct BenchProgs {
    ebpf: Ebpf,
}

impl BenchProgs {
    pub fn load() -> Result<BenchProgs> {
        let mut ebpf = EbpfLoader::new()
            .load(BENCH_OBJECT)
            .context("loading the benchmark eBPF object")?;
        for name in [
            "bench_pass",
            "bench_count_drop",
            "bench_gen",
            "bench_mutate",
        ] {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing from the benchmark object"))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("the verifier rejected {name}"))?;
        }
        Ok(BenchProgs { ebpf })
    }

    pub fn xdp(&self, name: &str) -> &Xdp {
        self.ebpf
            .program(name)
            .expect("checked at load")
            .try_into()
            .expect("checked at load")
    }

    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    pub fn xdp_mut(&mut self, name: &str) -> &mut Xdp {
        self.ebpf
            .program_mut(name)
            .expect("checked at load")
            .try_into()
            .expect("checked at load")
    }

    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

/// A packet class: how to build one frame of it from a source and destination.
struct Class {
    name: &'static str,
    /// A VPN message: judged against the allowlist (hit and miss both measured).
    vpn: bool,
    family: Family,
    build: fn(&mut Rng, IpAddr, IpAddr) -> Vec<u8>,
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0; len];
    fill_pseudo_random(&mut v, seed);
    v
}

fn tls_record(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut p = vec![0x17, 0x03, 0x03];
    p.extend_from_slice(&((len - 5) as u16).to_be_bytes());
    p.extend_from_slice(&random_bytes(len - 5, rng.next_u64()));
    p
}

/// 18 bytes of RTP-looking payload: with the headers, a 60-byte (64 with FCS) frame.
fn small_udp_payload(rng: &mut Rng) -> Vec<u8> {
    let mut p = random_bytes(18, rng.next_u64());
    p[0] = 0x80;
    p
}

/// Index of the plain WireGuard initiation in [`CLASSES`].
const WG: usize = 6;

const CLASSES: &[Class] = &[
    Class {
        name: "TCP data segment (TLS record, port 443, 100 B)",
        vpn: false,
        family: Family::V4,
        build: |r, s, d| {
            let p = tls_record(r, 100);
            Frame::eth().ip(s, d).tcp(r.port(), 443).payload(&p).build()
        },
    },
    Class {
        name: "UDP, 64-byte frame (port 9000)",
        vpn: false,
        family: Family::V4,
        build: |r, s, d| {
            let p = small_udp_payload(r);
            Frame::eth()
                .ip(s, d)
                .udp(r.port(), 9000)
                .payload(&p)
                .build()
        },
    },
    Class {
        name: "DNS query (UDP 53)",
        vpn: false,
        family: Family::V4,
        build: |r, s, d| {
            // A fixed id: 5 in 256 ids (first byte 0x08, 0x10, 0x38, 0x40, 0x50) pass the
            // prefilter as possible OpenVPN resets (said in the section's introduction).
            let p = dns_query(0xbeef, "www.example.com");
            Frame::eth().ip(s, d).udp(r.port(), 53).payload(&p).build()
        },
    },
    Class {
        name: "QUIC Initial (UDP 443, 1200 B)",
        vpn: false,
        family: Family::V4,
        build: |r, s, d| {
            let p = quic_initial(
                &r.next_u64().to_be_bytes(),
                &r.next_u64().to_be_bytes(),
                1200,
            );
            Frame::eth().ip(s, d).udp(r.port(), 443).payload(&p).build()
        },
    },
    Class {
        name: "UDP, 64-byte frame, 802.1Q VLAN",
        vpn: false,
        family: Family::V4,
        build: |r, s, d| {
            let p = small_udp_payload(r);
            Frame::eth()
                .vlan(100)
                .ip(s, d)
                .udp(r.port(), 9000)
                .payload(&p)
                .build()
        },
    },
    Class {
        name: "UDP, 64-byte payload, IPv6",
        vpn: false,
        family: Family::V6,
        build: |r, s, d| {
            let p = small_udp_payload(r);
            Frame::eth()
                .ip(s, d)
                .udp(r.port(), 9000)
                .payload(&p)
                .build()
        },
    },
    Class {
        name: "WireGuard handshake initiation",
        vpn: true,
        family: Family::V4,
        build: |r, s, d| {
            let p = wireguard_initiation(r.next_u32());
            Frame::eth()
                .ip(s, d)
                .udp(r.port(), 51820)
                .payload(&p)
                .build()
        },
    },
    Class {
        name: "OpenVPN client hard reset (UDP, tls-auth)",
        vpn: true,
        family: Family::V4,
        build: |r, s, d| {
            let p = openvpn_client_reset(r.next_u64() | 1, TLS_AUTH_SHA1);
            Frame::eth()
                .ip(s, d)
                .udp(r.port(), 1194)
                .payload(&p)
                .build()
        },
    },
    Class {
        name: "IKEv2 IKE_SA_INIT (UDP 500)",
        vpn: true,
        family: Family::V4,
        build: |r, s, d| {
            let p = ikev2_sa_init(r.next_u64() | 1, 352);
            Frame::eth().ip(s, d).udp(500, 500).payload(&p).build()
        },
    },
    Class {
        name: "ESP (IP protocol 50)",
        vpn: true,
        family: Family::V4,
        build: |r, s, d| {
            let p = random_bytes(96, r.next_u64());
            Frame::eth()
                .ip(s, d)
                .esp(r.next_u32() | 1, 1)
                .payload(&p)
                .build()
        },
    },
    Class {
        name: "L2TP SCCRQ (UDP 1701)",
        vpn: true,
        family: Family::V4,
        build: |r, s, d| {
            let p = l2tp_sccrq(r.next_u32() as u16 | 1);
            Frame::eth().ip(s, d).udp(1701, 1701).payload(&p).build()
        },
    },
    Class {
        name: "PPTP SCCRQ (TCP 1723)",
        vpn: true,
        family: Family::V4,
        build: |r, s, d| {
            let p = pptp_sccrq();
            Frame::eth()
                .ip(s, d)
                .tcp(r.port(), 1723)
                .payload(&p)
                .build()
        },
    },
    Class {
        name: "PPTP data (GRE v1)",
        vpn: true,
        family: Family::V4,
        build: |r, s, d| {
            let p = random_bytes(64, r.next_u64());
            Frame::eth()
                .ip(s, d)
                .gre_pptp(r.next_u32() as u16, Some(1), None)
                .payload(&p)
                .build()
        },
    },
    Class {
        name: "WireGuard initiation, 802.1Q VLAN",
        vpn: true,
        family: Family::V4,
        build: |r, s, d| {
            let p = wireguard_initiation(r.next_u32());
            Frame::eth()
                .vlan(100)
                .ip(s, d)
                .udp(r.port(), 51820)
                .payload(&p)
                .build()
        },
    },
    Class {
        name: "WireGuard initiation, IPv6",
        vpn: true,
        family: Family::V6,
        build: |r, s, d| {
            let p = wireguard_initiation(r.next_u32());
            Frame::eth()
                .ip(s, d)
                .udp(r.port(), 51820)
                .payload(&p)
                .build()
        },
    },
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Source {
    /// Source outside the allowlist (and the destination too): the full judgement.
    Unregistered,
    /// Source inside an allowed prefix.
    Registered,
}

/// `bench_mutate` and its maps: runs a template frame `repeat` times, each run with the next
/// source address, through whichever program `MUT_JMP[0]` holds.
struct Harness<'a> {
    progs: &'a mut BenchProgs,
}

impl Harness<'_> {
    fn set_addrs(&mut self, addrs: &[[u8; 16]]) -> Result<()> {
        let ebpf = self.progs.ebpf_mut();
        let mut m: Array<&mut MapData, [u8; 16]> = Array::try_from(
            ebpf.map_mut("MUT_ADDRS")
                .ok_or_else(|| anyhow!("MUT_ADDRS"))?,
        )?;
        for (i, a) in addrs.iter().enumerate() {
            m.set(i as u32, a, 0)?;
        }
        self.config(2, addrs.len() as u32)
    }

    fn config(&mut self, slot: u32, value: u32) -> Result<()> {
        let ebpf = self.progs.ebpf_mut();
        let mut m: Array<&mut MapData, u32> = Array::try_from(
            ebpf.map_mut("MUT_CONFIG")
                .ok_or_else(|| anyhow!("MUT_CONFIG"))?,
        )?;
        m.set(slot, value, 0)?;
        Ok(())
    }

    /// Where the source address sits in the frame, and its length.
    fn set_layout(&mut self, offset: usize, len: usize) -> Result<()> {
        self.config(0, offset as u32)?;
        self.config(1, len as u32)
    }

    fn jump_to(&mut self, prog: &ProgramFd) -> Result<()> {
        let ebpf = self.progs.ebpf_mut();
        let mut m =
            ProgramArray::try_from(ebpf.map_mut("MUT_JMP").ok_or_else(|| anyhow!("MUT_JMP"))?)?;
        m.set(0, prog, 0)
            .context("putting the program under test into MUT_JMP (tail call)")?;
        Ok(())
    }

    /// A WireGuard initiation from `n` new unregistered sources: baseline, then vpn-filter.
    fn wg_first_packets(
        &mut self,
        reg: &Registry,
        rng: &mut Rng,
        n: usize,
        fds: (&ProgramFd, &ProgramFd),
        events: &mut RingBuf<MapData>,
    ) -> Result<Pass> {
        let dst = IpAddr::V4(reg.miss4(rng));
        let frame = (CLASSES[WG].build)(rng, "192.0.2.77".parse()?, dst);
        self.set_layout(find(&frame, &[192, 0, 2, 77])?, 4)?;
        let addrs: Vec<[u8; 16]> = (0..n)
            .map(|_| {
                let mut a = [0u8; 16];
                a[..4].copy_from_slice(&reg.miss4(rng).octets());
                a
            })
            .collect();
        self.set_addrs(&addrs)?;
        self.jump_to(fds.0)?;
        let (_, base) = self.run(&frame, n as u32)?;
        self.jump_to(fds.1)?;
        let (action, filter) = self.run(&frame, n as u32)?;
        drain(events);
        Ok(Pass {
            base,
            filter,
            action,
        })
    }

    /// `repeat` runs from the first address on; the XDP action of the last run and the mean
    /// ns per run.
    /// The classic measurement: `frame` alone, `repeat` times, straight into `prog` (no
    /// mutation, no tail call).
    fn direct(prog: &Xdp, frame: &[u8], repeat: u32) -> Result<(u32, f64)> {
        let r = test_run(prog.fd()?.as_fd(), frame, repeat).context("BPF_PROG_TEST_RUN")?;
        Ok((r.action, r.duration_ns as f64))
    }

    fn run(&mut self, frame: &[u8], repeat: u32) -> Result<(u32, f64)> {
        {
            let ebpf = self.progs.ebpf_mut();
            let mut m: Array<&mut MapData, u32> =
                Array::try_from(ebpf.map_mut("MUT_POS").ok_or_else(|| anyhow!("MUT_POS"))?)?;
            m.set(0, 0, 0)?;
        }
        let prog = self.progs.xdp("bench_mutate");
        let r = test_run(prog.fd()?.as_fd(), frame, repeat).context("BPF_PROG_TEST_RUN")?;
        // The kernel reports whole nanoseconds per run; recompute from the total is not
        // possible, so take it as given.
        Ok((r.action, r.duration_ns as f64))
    }
}

/// One pass over the addresses: mean ns per run of the baseline and of vpn-filter.
#[derive(Clone, Copy, Default)]
struct Pass {
    base: f64,
    filter: f64,
    /// XDP action of vpn-filter's last run.
    action: u32,
}

fn action_name(a: u32) -> &'static str {
    match a {
        0 => "aborted",
        1 => "drop",
        2 => "pass",
        3 => "tx",
        4 => "redirect",
        _ => "?",
    }
}

/// Results of one (class, source) cell over all rounds.
#[derive(Default)]
struct Cell {
    /// One frame, one source, repeated (cache-hot; a VPN frame is a new flow only once).
    direct: Vec<Pass>,
    first: Vec<Pass>,
    again: Vec<Pass>,
    /// Ordinary classes: each packet to a different destination (the mutation writes the
    /// destination address), as upstream traffic through a gateway.
    to_many: Vec<Pass>,
}

impl Cell {
    /// (baseline, vpn-filter, difference, action): medians over rounds.
    fn summary(passes: &[Pass]) -> (f64, f64, f64, u32) {
        let base = median(passes.iter().map(|p| p.base).collect());
        let filter = median(passes.iter().map(|p| p.filter).collect());
        let diff = median(passes.iter().map(|p| p.filter - p.base).collect());
        let action = passes.last().map_or(0, |p| p.action);
        (base, filter, diff, action)
    }
}

/// Where `src` sits in `frame` (the first occurrence after the Ethernet header).
fn find(frame: &[u8], src: &[u8]) -> Result<usize> {
    frame
        .windows(src.len())
        .skip(14)
        .position(|w| w == src)
        .map(|p| p + 14)
        .ok_or_else(|| anyhow!("source address not found in the template frame"))
}

pub struct Settings {
    /// Allowlist sizes (total prefixes; 80% IPv4, 20% IPv6).
    pub sizes: Vec<usize>,
    /// Packets per (class, source) cell and round, each from a different source address.
    pub frames: usize,
    /// Interleaved rounds; the report gives the median over rounds.
    pub rounds: usize,
    /// Runs of the single-frame, cache-hot measurement.
    pub direct_repeat: u32,
    /// The allowlist size at which the first packet's cost is broken down.
    pub breakdown_size: usize,
}

/// The costliest ordinary class over pass-through, per way of measuring it.
pub struct OrdinaryWorst {
    pub size: usize,
    /// One frame repeated (cache-hot, one flow).
    pub one_frame: f64,
    /// Each packet from a different source, and the class.
    pub many_sources: (f64, &'static str),
    /// Each packet to a different destination, and the class.
    pub many_destinations: (f64, &'static str),
}

/// Key numbers for the summary.
#[derive(Default)]
pub struct Highlights {
    /// Largest ns above baseline of an ordinary (non-VPN) class, per size.
    pub ordinary_max: Vec<OrdinaryWorst>,
    /// WireGuard initiation from an unregistered source, new flow: ns above baseline.
    pub wg_miss: Vec<(usize, f64)>,
    /// WireGuard initiations, per size: vpn-filter's own ns per packet for an unregistered
    /// source's first packet and a registered source's first packet, and the registered
    /// flow's next packets' ns above baseline.
    pub wg_registered: Vec<(usize, f64, f64, f64)>,
    /// An unregistered WireGuard initiation's parse and classification alone (the policy
    /// off): ns above baseline, from the breakdown.
    pub classify_only: Option<f64>,
}

pub fn split(total: usize) -> (usize, usize) {
    let v6 = total / 5;
    (total - v6, v6)
}

pub fn run(s: &Settings, out: &mut String, hl: &mut Highlights) -> Result<()> {
    let mut progs = BenchProgs::load()?;
    let pass_fd = progs.xdp("bench_pass").fd()?.try_clone()?;
    let mut h = Harness { progs: &mut progs };

    out.push_str(&format!(
        "Each cell: vpn-filter's mean time per packet minus the pass-through baseline's, in \
         ns (median over {} rounds), and in brackets the ratio of the two; then vpn-filter's \
         XDP action. One round runs {} packets of the class, each from a different source \
         address (registered: inside a random allowed prefix; unregistered: outside all of \
         them), so the tries and the flow map see {} different keys. \"First packet\" = each \
         packet opens a new flow; \"same flow again\" = the same packets replayed, now \
         flow-map hits (for unregistered VPN flows: follow-up packets of a blocked flow). \
         Ordinary classes have no allowlist lookup: only the unregistered columns apply, and \
         one more: \"many destinations\", the same addresses written as the destination of \
         one source's packets, as upstream traffic through a gateway. \
         Baseline: `bench_mutate` (writes the source address, tail-calls) + `bench_pass`. \
         \"One frame repeated\" is the classic measurement: one frame, {} runs per call, \
         straight into the program (cache-hot, one flow). For each allowlist size a fresh \
         program is loaded and its flow table (LRU, {} flows) filled by a flood of new flows \
         first, as any flood fills it within a fraction of a second: every new flow measured \
         here also pays an LRU eviction. The DNS query has a fixed id (0xbeef): ids whose \
         first byte is 0x08, 0x10, 0x38, 0x40 or 0x50 (2% of random ids) pass the prefilter \
         as possible OpenVPN resets and are classified in full before they pass.\n\n",
        s.rounds,
        count(s.frames),
        count(s.frames),
        count(s.direct_repeat as usize),
        count(vpn_filter_common::DEFAULT_FLOW_ENTRIES as usize),
    ));

    for &size in &s.sizes {
        check_stop()?;
        let (n4, n6) = split(size);
        let t = Instant::now();
        let reg = Registry::generate(n4, n6, 0x5eed_0000 + size as u64);
        let mut filter = Filter::load(
            LoadOptions::default(),
            &Policy::default(),
            &Config::default(),
        )
        .context("loading vpn-filter")?;
        let mut events = filter.take_events()?;
        let filter_fd = filter.program_mut().fd()?.try_clone()?;
        filter
            .sync_allowlist(&reg.allowlist())
            .with_context(|| format!("syncing {size} prefixes"))?;
        let mut rng = Rng::new(0xd57 + size as u64);
        let dst4 = IpAddr::V4(reg.miss4(&mut rng));
        let dst6 = IpAddr::V6(reg.miss6(&mut rng));
        let breakdown = size == s.breakdown_size;
        let mut empty_table = Vec::new();
        if breakdown {
            for _ in 0..s.rounds {
                check_stop()?;
                empty_table.push(h.wg_first_packets(
                    &reg,
                    &mut rng,
                    s.frames,
                    (&pass_fd, &filter_fd),
                    &mut events,
                )?);
            }
        }
        // Fill the flow table (and the event rate limiters) with a flood of new flows.
        let flood = (CLASSES.iter().find(|c| c.vpn).expect("a VPN class").build)(
            &mut rng,
            "192.0.2.77".parse()?,
            dst4,
        );
        h.set_layout(find(&flood, &[192, 0, 2, 77])?, 4)?;
        h.jump_to(&filter_fd)?;
        let chunk = 32_768;
        for _ in 0..(vpn_filter_common::DEFAULT_FLOW_ENTRIES as usize).div_ceil(chunk) + 1 {
            check_stop()?;
            let addrs: Vec<[u8; 16]> = (0..chunk)
                .map(|_| {
                    let mut a = [0u8; 16];
                    a[..4].copy_from_slice(&reg.miss4(&mut rng).octets());
                    a
                })
                .collect();
            h.set_addrs(&addrs)?;
            h.run(&flood, chunk as u32)?;
            drain(&mut events);
        }
        let before = filter.stats()?;
        eprintln!(
            "bench: in-kernel cost, allowlist {size} prefixes (set up in {:.1} s)",
            t.elapsed().as_secs_f64()
        );
        let sources: &[Source] = if size == 0 {
            &[Source::Unregistered]
        } else {
            &[Source::Unregistered, Source::Registered]
        };
        let mut cells: Vec<[Cell; 2]> = CLASSES.iter().map(|_| Default::default()).collect();
        let t = Instant::now();
        for round in 0..s.rounds {
            for (ci, class) in CLASSES.iter().enumerate() {
                for (si, &source) in sources.iter().enumerate() {
                    if !class.vpn && source == Source::Registered {
                        continue;
                    }
                    check_stop()?;
                    let addr = |rng: &mut Rng| -> IpAddr {
                        match (class.family, source) {
                            (Family::V4, Source::Unregistered) => IpAddr::V4(reg.miss4(rng)),
                            (Family::V4, Source::Registered) => IpAddr::V4(reg.hit4(rng)),
                            (Family::V6, Source::Unregistered) => IpAddr::V6(reg.miss6(rng)),
                            (Family::V6, Source::Registered) => IpAddr::V6(reg.hit6(rng)),
                        }
                    };
                    let addrs: Vec<[u8; 16]> = (0..s.frames)
                        .map(|_| {
                            let mut a = [0u8; 16];
                            match addr(&mut rng) {
                                IpAddr::V4(v) => a[..4].copy_from_slice(&v.octets()),
                                IpAddr::V6(v) => a.copy_from_slice(&v.octets()),
                            }
                            a
                        })
                        .collect();
                    let (placeholder, dst): (IpAddr, IpAddr) = match class.family {
                        Family::V4 => ("192.0.2.77".parse()?, dst4),
                        Family::V6 => ("2001:db8::77:77".parse()?, dst6),
                    };
                    let frame = (class.build)(&mut rng, placeholder, dst);
                    let src_bytes = match placeholder {
                        IpAddr::V4(v) => v.octets().to_vec(),
                        IpAddr::V6(v) => v.octets().to_vec(),
                    };
                    h.set_layout(find(&frame, &src_bytes)?, src_bytes.len())?;
                    h.set_addrs(&addrs)?;
                    let n = s.frames as u32;
                    // First packets: baseline first (it leaves no flow behind), then
                    // vpn-filter on the same, still unseen, sources.
                    h.jump_to(&pass_fd)?;
                    let (_, b1) = h.run(&frame, n)?;
                    h.jump_to(&filter_fd)?;
                    let (a1, f1) = h.run(&frame, n)?;
                    drain(&mut events);
                    // Same flows again, in the other order.
                    let (a2, f2) = h.run(&frame, n)?;
                    drain(&mut events);
                    h.jump_to(&pass_fd)?;
                    let (_, b2) = h.run(&frame, n)?;
                    cells[ci][si].first.push(Pass {
                        base: b1,
                        filter: f1,
                        action: a1,
                    });
                    cells[ci][si].again.push(Pass {
                        base: b2,
                        filter: f2,
                        action: a2,
                    });
                    if !class.vpn {
                        // The same addresses as destinations, from one source.
                        let src = addr(&mut rng);
                        let frame = (class.build)(&mut rng, src, placeholder);
                        h.set_layout(find(&frame, &src_bytes)?, src_bytes.len())?;
                        let ((_, b), (a, f)) = if round % 2 == 0 {
                            h.jump_to(&pass_fd)?;
                            let b = h.run(&frame, n)?;
                            h.jump_to(&filter_fd)?;
                            (b, h.run(&frame, n)?)
                        } else {
                            h.jump_to(&filter_fd)?;
                            let f = h.run(&frame, n)?;
                            h.jump_to(&pass_fd)?;
                            (h.run(&frame, n)?, f)
                        };
                        drain(&mut events);
                        cells[ci][si].to_many.push(Pass {
                            base: b,
                            filter: f,
                            action: a,
                        });
                    }
                    if source == Source::Unregistered {
                        let src = addr(&mut rng);
                        let frame = (class.build)(&mut rng, src, dst);
                        let r = s.direct_repeat;
                        let pass = h.progs.xdp("bench_pass");
                        let fprog = filter.program_mut();
                        let ((a, f), (_, b)) = if round % 2 == 0 {
                            let f = Harness::direct(fprog, &frame, r)?;
                            (f, Harness::direct(pass, &frame, r)?)
                        } else {
                            let b = Harness::direct(pass, &frame, r)?;
                            (Harness::direct(fprog, &frame, r)?, b)
                        };
                        drain(&mut events);
                        cells[ci][si].direct.push(Pass {
                            base: b,
                            filter: f,
                            action: a,
                        });
                    }
                }
            }
            eprintln!(
                "bench:   round {}/{} done ({:.0} s)",
                round + 1,
                s.rounds,
                t.elapsed().as_secs_f64()
            );
        }

        out.push_str(&format!(
            "### Allowlist: {} prefixes ({} IPv4 + {} IPv6)\n\n",
            count(size),
            count(n4),
            count(n6)
        ));
        if size > 0 {
            out.push_str(&format!("Prefix lengths: {}.\n\n", reg.describe()));
        }
        out.push_str(
            "| packet class | one frame repeated: baseline ns | one frame repeated: vpn-filter | many sources, baseline ns | unregistered source, first packet | unregistered, same flow again | registered source, first packet | registered, same flow again | ordinary: many destinations |\n\
             |---|---:|---|---:|---|---|---|---|---|\n",
        );
        let cell_text = |passes: &[Pass]| -> String {
            if passes.is_empty() {
                return "—".into();
            }
            let (base, filter, diff, action) = Cell::summary(passes);
            format!(
                "{} ns ({}) {}",
                signed_ns(diff),
                ratio(filter / base),
                action_name(action)
            )
        };
        let mut ordinary_max = f64::NEG_INFINITY;
        let mut ordinary_many = (f64::NEG_INFINITY, "");
        let mut ordinary_dsts = (f64::NEG_INFINITY, "");
        for (ci, class) in CLASSES.iter().enumerate() {
            let [miss, hit] = &cells[ci];
            let (base, _, diff, _) = Cell::summary(&miss.first);
            let (dbase, _, ddiff, _) = Cell::summary(&miss.direct);
            if !class.vpn {
                ordinary_max = ordinary_max.max(ddiff);
                if diff > ordinary_many.0 {
                    ordinary_many = (diff, class.name);
                }
                let (_, _, tdiff, _) = Cell::summary(&miss.to_many);
                if tdiff > ordinary_dsts.0 {
                    ordinary_dsts = (tdiff, class.name);
                }
            }
            if class.name.starts_with("WireGuard handshake") {
                hl.wg_miss.push((size, diff));
                if !hit.first.is_empty() && !hit.again.is_empty() {
                    let (_, miss_ns, _, _) = Cell::summary(&miss.first);
                    let (_, hit_ns, _, _) = Cell::summary(&hit.first);
                    let (_, _, again_diff, _) = Cell::summary(&hit.again);
                    hl.wg_registered.push((size, miss_ns, hit_ns, again_diff));
                }
            }
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                class.name,
                ns(dbase),
                cell_text(&miss.direct),
                ns(base),
                cell_text(&miss.first),
                cell_text(&miss.again),
                cell_text(&hit.first),
                cell_text(&hit.again),
                cell_text(&miss.to_many),
            ));
        }
        hl.ordinary_max.push(OrdinaryWorst {
            size,
            one_frame: ordinary_max,
            many_sources: ordinary_many,
            many_destinations: ordinary_dsts,
        });
        out.push('\n');
        if breakdown {
            // Classification alone: the WireGuard policy off (no flow map, no allowlist, no
            // event), on the same full flow table.
            let mut off = Policy::default();
            off.set(Protocol::WireGuard, PolicyMode::Off);
            filter.set_policy(&off)?;
            let mut classify_only = Vec::new();
            for _ in 0..s.rounds {
                check_stop()?;
                classify_only.push(h.wg_first_packets(
                    &reg,
                    &mut rng,
                    s.frames,
                    (&pass_fd, &filter_fd),
                    &mut events,
                )?);
            }
            filter.set_policy(&Policy::default())?;
            hl.classify_only = Some(Cell::summary(&classify_only).2);
            let diff = |p: &[Pass]| signed_ns(Cell::summary(p).2);
            out.push_str(&format!(
                "Where an unregistered WireGuard initiation's time goes ({} prefixes, ns above \
                 baseline, medians):\n\n\
                 | path | ns |\n|---|---:|\n\
                 | parse + classify only (WireGuard policy `off`: no allowlist, flow map or event) | {} |\n\
                 | the same sources again (their events rate-limited) | {} |\n\
                 | first packets on a fresh program (the allowlist's first level; events emitted up to the per-CPU budget, then suppressed) | {} |\n\
                 | first packets after a flood (the per-CPU event budget spent: the repeat-source filter's slot, a random access into 16 MiB, for the second's first {} suppressed events per CPU, none after) | {} |\n\n",
                count(size),
                diff(&classify_only),
                diff(&cells[WG][0].again),
                diff(&empty_table),
                count(vpn_filter_common::REPEAT_CHECKS_PER_SEC as usize),
                diff(&cells[WG][0].first),
            ));
        }
        let after = filter.stats()?;
        let c = |k: Counter| count((after.counter(k) - before.counter(k)) as usize);
        out.push_str(&format!(
            "vpn-filter's counters over these measurements: {} packets, {} allowlist lookups, \
             {} flow inserts, {} flow-map hits, {} events emitted, {} suppressed by the \
             event rate limits, {} lost (ring buffer full), {} flow inserts failed.\n\n",
            c(Counter::Packets),
            c(Counter::AllowlistLookups),
            c(Counter::FlowInsert),
            c(Counter::FlowHit),
            c(Counter::EventsEmitted),
            c(Counter::EventsSuppressed),
            c(Counter::EventsLost),
            c(Counter::FlowInsertFailed),
        ));
    }
    Ok(())
}

/// Empties the ring buffer, as the controller would, so every run can emit its event.
pub fn drain(events: &mut RingBuf<MapData>) -> usize {
    let mut n = 0;
    while let Some(item) = events.next() {
        drop(item);
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wg_indexes_the_plain_wireguard_initiation() {
        assert_eq!(CLASSES[WG].name, "WireGuard handshake initiation");
    }

    #[test]
    fn every_template_carries_its_source_where_the_mutator_writes() {
        let mut rng = Rng::new(1);
        for c in CLASSES {
            let (src, dst): (IpAddr, IpAddr) = match c.family {
                Family::V4 => (
                    "192.0.2.77".parse().unwrap(),
                    "198.51.100.1".parse().unwrap(),
                ),
                Family::V6 => (
                    "2001:db8::77:77".parse().unwrap(),
                    "2001:db8::1".parse().unwrap(),
                ),
            };
            let frame = (c.build)(&mut rng, src, dst);
            let bytes = match src {
                IpAddr::V4(v) => v.octets().to_vec(),
                IpAddr::V6(v) => v.octets().to_vec(),
            };
            let at = find(&frame, &bytes).unwrap();
            let expected = match (c.family, c.name.contains("VLAN")) {
                (Family::V4, false) => 26,
                (Family::V4, true) => 30,
                (Family::V6, _) => 22,
            };
            assert_eq!(at, expected, "{}", c.name);
        }
    }
}
