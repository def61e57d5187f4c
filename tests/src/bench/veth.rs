//! Section 2: throughput across a veth pair with native XDP, and what the receiving CPU pays
//! per packet, for vpn-filter and for what an operator would use instead.
//!
//! ```text
//!   generator netns                          receiver netns
//!   bench_gen (BPF_PROG_TEST_RUN,            vbr: GRO on, threaded NAPI, napi/vbr-* on CPU 1
//!   live frames, CPU 0) -> vga <--- veth ---> vbr: the variant under test
//! ```
//!
//! Variants, in the same run: no program (the kernel stack takes every packet), count-and-drop
//! (`bench_count_drop`, the XDP ceiling here), vpn-filter, xdp-filter (Debian xdp-tools;
//! exact IPv4 addresses only, so it gets the allowlist's /32s) and an nftables netdev-ingress
//! ruleset doing vpn-filter's job (interval sets of the allowed prefixes and payload matches
//! for the same signatures).

use std::{
    collections::BTreeSet,
    fs::File,
    net::Ipv4Addr,
    os::fd::AsRawFd as _,
    path::Path,
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    maps::{Array, Map, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues},
    programs::{xdp::XdpLinkId, TestRun as _, TestRunAttrs, TestRunOptions, XdpMode},
};
use vpn_filter::kernel::{AttachMode, Filter, LoadOptions, Policy};
use vpn_filter_common::Config;
use vpn_filter_tests::{
    netns::NetNs,
    packet::{wireguard_initiation, Frame},
};

use super::{
    kernel::{drain, split, BenchProgs},
    registry::Registry,
    util::{
        check_stop, count, median, mega, ns, pin_to_cpu, raise_priority, ratio, signed_ns, sleep,
        Rng,
    },
};

const GEN_IF: &str = "vga";
/// Short, so the NAPI thread's name (`napi/vbr-<id>`, 15 characters at most) stays whole.
const RX_IF: &str = "vbr";
const RX_ADDR: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 2);
const GEN_ADDR: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 1);
const GEN_CPU: usize = 0;
const RX_CPU: usize = 1;
/// xdp-filter's maps hold at most this many addresses (xdpfilt_prog.h).
const XDP_FILTER_MAX: usize = 10_000;
const NFT_TABLE: &str = "vpnf_bench";
const NFT_COUNTER: &str = "vpn_drops";

pub struct Settings {
    pub prefixes: usize,
    pub seconds: f64,
    pub warmup: f64,
    pub rounds: usize,
}

pub struct Targets {
    pub prefixes: usize,
    /// vpn-filter minus pass-through XDP on ordinary UDP and TCP, ns per packet, per round
    /// (both measured in the same round).
    pub ordinary_over_pass: [Vec<f64>; 2],
    pub count_drop: f64,
    pub vpn_filter: f64,
    pub xdp_filter: f64,
    pub nftables: f64,
}

#[derive(Default)]
pub struct Highlights {
    pub targets: Option<Targets>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Variant {
    NoProgram,
    PassThrough,
    CountDrop,
    VpnFilter,
    XdpFilter,
    Nftables,
}

impl Variant {
    const ALL: [Variant; 6] = [
        Variant::NoProgram,
        Variant::PassThrough,
        Variant::CountDrop,
        Variant::VpnFilter,
        Variant::XdpFilter,
        Variant::Nftables,
    ];

    fn name(self) -> &'static str {
        match self {
            Variant::NoProgram => "no program (kernel stack)",
            Variant::PassThrough => "pass-through XDP (XDP_PASS only)",
            Variant::CountDrop => "count-and-drop XDP (ceiling)",
            Variant::VpnFilter => "vpn-filter",
            Variant::XdpFilter => "xdp-filter (exact /32s, deny policy)",
            Variant::Nftables => "nftables netdev ingress",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    WireGuard,
    Udp,
    Tcp,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::WireGuard, Kind::Udp, Kind::Tcp];

    fn name(self) -> &'static str {
        match self {
            Kind::WireGuard => {
                "Unregistered WireGuard handshake initiations (190-byte frames, random sources)"
            }
            Kind::Udp => "Ordinary UDP (60-byte frames + FCS = 64, random sources, port 9000)",
            Kind::Tcp => {
                "Ordinary TCP data segments (60-byte frames, random sources, port 443, no listener)"
            }
        }
    }
}

/// The two namespaces and the veth pair between them.
struct Lab {
    gen: NetNs,
    rx: NetNs,
    gen_ifindex: u32,
    rx_ifindex: u32,
    gen_mac: [u8; 6],
    rx_mac: [u8; 6],
    /// NAPI threads that existed before ours: ours are the new `napi/vbr-*` ones.
    napi_before: BTreeSet<i32>,
    /// Receive (and transmit) queues of each end of the pair.
    queues: usize,
}

fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let v: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad MAC {s}"))?;
    v.try_into().map_err(|_| anyhow!("bad MAC {s}"))
}

fn sh(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A command run in `ns`'s network namespace that keeps the host's mounts (so tools that pin
/// into /sys/fs/bpf, like xdp-filter, see the host's bpffs).
fn in_netns(ns: &NetNs, program: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/var/run/netns/{}", ns.name()))
        .arg("--")
        .arg(program);
    c
}

/// xdp-filter (libxdp) pins its maps and programs under /sys/fs/bpf.
fn ensure_bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    let mounted = mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "));
    if !mounted {
        sh(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    }
    Ok(())
}

fn napi_threads() -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) {
                if comm.trim().starts_with(&format!("napi/{RX_IF}-")) {
                    out.insert(pid);
                }
            }
        }
    }
    out
}

impl Lab {
    /// `queues` receive queues on the receiving end, each with its NAPI thread. A generator
    /// thread on CPU c feeds queue c modulo `queues` (veth picks the receive queue by the
    /// sending CPU): one queue, generator on [`GEN_CPU`], NAPI on [`RX_CPU`]; two queues, a
    /// generator and a NAPI thread on each CPU.
    fn new(queues: usize) -> Result<Lab> {
        let napi_before = napi_threads();
        let gen = NetNs::new("g");
        let rx = NetNs::new("r");
        let q = queues.to_string();
        sh(Command::new("ip").args([
            "link",
            "add",
            GEN_IF,
            "netns",
            gen.name(),
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
            "type",
            "veth",
            "peer",
            "name",
            RX_IF,
            "netns",
            rx.name(),
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
        ]))?;
        gen.ip(&["addr", "add", &format!("{GEN_ADDR}/24"), "dev", GEN_IF]);
        rx.ip(&["addr", "add", &format!("{RX_ADDR}/24"), "dev", RX_IF]);
        gen.ip(&["link", "set", "dev", GEN_IF, "up"]);
        rx.ip(&["link", "set", "dev", RX_IF, "up"]);
        for key in [
            "net.ipv4.conf.all.rp_filter",
            "net.ipv4.conf.default.rp_filter",
        ] {
            rx.sysctl(key, "0");
        }
        rx.sysctl(&format!("net.ipv4.conf.{RX_IF}.rp_filter"), "0");
        // GRO gives the receiving veth NAPI even without an XDP program (and lets the
        // generator's XDP_REDIRECT into the pair succeed); threaded NAPI gives it a thread
        // we can pin and time.
        sh(in_netns(&rx, "ethtool").args(["-K", RX_IF, "gro", "on"]))?;
        sh(rx
            .command("sh")
            .args(["-c", &format!("echo 1 > /sys/class/net/{RX_IF}/threaded")]))?;
        let lab = Lab {
            gen_ifindex: gen.ifindex(GEN_IF),
            rx_ifindex: rx.ifindex(RX_IF),
            gen_mac: parse_mac(&gen.mac(GEN_IF))?,
            rx_mac: parse_mac(&rx.mac(RX_IF))?,
            gen,
            rx,
            napi_before,
            queues,
        };
        lab.napi_pids()?;
        Ok(lab)
    }

    /// The receiving veth's NAPI threads, one per queue: with one queue pinned to
    /// [`RX_CPU`], with more one per CPU (in thread id order).
    fn napi_pids(&self) -> Result<Vec<i32>> {
        let now: Vec<i32> = napi_threads()
            .difference(&self.napi_before)
            .copied()
            .collect();
        if now.len() != self.queues {
            bail!(
                "{} new napi/{RX_IF}-* threads for {} queue(s): {now:?} (threaded NAPI on the veth?)",
                now.len(),
                self.queues
            );
        }
        for (i, pid) in now.iter().enumerate() {
            pin_to_cpu(*pid, self.rx_cpus()[i])?;
            raise_priority(*pid)?;
        }
        Ok(now)
    }

    /// The CPUs of the receive queues' NAPI threads.
    fn rx_cpus(&self) -> Vec<usize> {
        if self.queues == 1 {
            vec![RX_CPU]
        } else {
            (0..self.queues).collect()
        }
    }

    /// The CPUs of the generator threads, one per queue.
    fn gen_cpus(&self) -> Vec<usize> {
        if self.queues == 1 {
            vec![GEN_CPU]
        } else {
            (0..self.queues).collect()
        }
    }

    /// vbr's received-packet counter (frames its NAPI took from the ring, XDP drops included).
    fn rx_packets(&self) -> Result<u64> {
        let text = self
            .rx
            .enter(|| std::fs::read_to_string("/proc/thread-self/net/dev"))?;
        for line in text.lines() {
            if let Some((name, rest)) = line.split_once(':') {
                if name.trim() == RX_IF {
                    return rest
                        .split_whitespace()
                        .nth(1)
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(|| anyhow!("cannot parse /proc/net/dev line {line:?}"));
                }
            }
        }
        bail!("{RX_IF} not in the receiver's /proc/net/dev")
    }

    fn xdp_shown(&self) -> Result<String> {
        let out = sh(Command::new("ip").args([
            "-n",
            self.rx.name(),
            "-d",
            "link",
            "show",
            "dev",
            RX_IF,
        ]))?;
        for w in ["xdpgeneric", "xdpoffload", "xdpdrv", "xdp"] {
            if out.split_whitespace().any(|t| t == w) {
                return Ok(w.to_string());
            }
        }
        Ok(String::new())
    }
}

/// Busy (user, nice, system, irq, softirq) jiffies of one CPU, from /proc/stat.
fn cpu_jiffies(cpu: usize) -> Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let key = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(key.as_str()))
        .ok_or_else(|| anyhow!("no {key} in /proc/stat"))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 8 {
        bail!("short /proc/stat line {line:?}");
    }
    Ok(v[0] + v[1] + v[2] + v[5] + v[6])
}

fn schedstat_ns(pid: i32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .with_context(|| format!("reading /proc/{pid}/schedstat"))?;
    s.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("cannot parse schedstat {s:?}"))
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

extern "C" fn on_sigusr1(_: libc::c_int) {}

/// SIGUSR1 interrupts the generator's BPF_PROG_TEST_RUN call (the kernel checks for pending
/// signals between batches and returns EINTR). A no-op handler, not SIG_IGN: an ignored
/// signal never becomes pending.
fn install_sigusr1() {
    // SAFETY: a zeroed sigaction with a valid handler; no SA_RESTART, so the call returns.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigusr1 as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
    }
}

/// Counters at one instant.
#[derive(Clone, Copy)]
struct Snap {
    t: Instant,
    rx: u64,
    napi_ns: u64,
    cpu_busy: u64,
    sent: u64,
    dropped: Option<u64>,
}

/// One measurement.
#[derive(Clone, Copy, Debug)]
struct Sample {
    /// Packets per second vbr received.
    pps: f64,
    /// NAPI thread CPU ns per received packet.
    napi_ns: f64,
    /// Receiving CPU busy ns per received packet (/proc/stat).
    cpu_ns: f64,
    /// NAPI thread busy share of wall time.
    napi_util: f64,
    /// Generator frames per second.
    gen_pps: f64,
    /// Share of the received packets the variant dropped, by its own count (NaN: no count).
    dropped: f64,
}

/// The variant in place on vbr; removed on drop.
enum Installed<'a> {
    None,
    /// `bench_pass` or `bench_count_drop`.
    Bench {
        progs: &'a mut BenchProgs,
        prog: &'static str,
        link: Option<XdpLinkId>,
    },
    VpnFilter {
        filter: Box<Filter>,
        stop: Arc<AtomicBool>,
        drained: mpsc::Receiver<u64>,
    },
    XdpFilter {
        lab: &'a Lab,
        /// libxdp's per-action statistics (`struct datarec { rx_packets, rx_bytes }`).
        stats: Option<PerCpuArray<MapData, [u64; 2]>>,
    },
    Nftables {
        lab: &'a Lab,
    },
}

impl Installed<'_> {
    /// Packets the variant has dropped so far, by its own count: the per-CPU counter of
    /// count-and-drop, vpn-filter's verdict counters, xdp-filter's XDP_DROP statistics, the
    /// nftables rule counters. `None` for the kernel stack alone.
    fn dropped(&self) -> Result<Option<u64>> {
        Ok(match self {
            Installed::None => None,
            Installed::Bench {
                prog: "bench_pass", ..
            } => None,
            Installed::Bench { progs, .. } => {
                let m: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
                    progs
                        .ebpf()
                        .map("BENCH_COUNT")
                        .ok_or_else(|| anyhow!("BENCH_COUNT missing"))?,
                )?;
                Some(m.get(&0, 0)?.iter().sum())
            }
            Installed::VpnFilter { filter, .. } => Some(filter.stats()?.dropped()),
            Installed::XdpFilter { stats, .. } => match stats {
                // XDP_DROP is action 1.
                Some(m) => Some(m.get(&1, 0)?.iter().map(|r| r[0]).sum()),
                None => None,
            },
            Installed::Nftables { lab } => {
                // The named counter, not `nft list table`: nft 1.0.6 aborts printing raw
                // payload matches back.
                // -t: without the sets' elements, so the read is quick.
                let out = sh(in_netns(&lab.rx, "nft").args([
                    "-t",
                    "list",
                    "counter",
                    "netdev",
                    NFT_TABLE,
                    NFT_COUNTER,
                ]))?;
                let n = out
                    .split_whitespace()
                    .skip_while(|w| *w != "packets")
                    .nth(1)
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| anyhow!("no packet count in {out:?}"))?;
                Some(n)
            }
        })
    }
}

impl Drop for Installed<'_> {
    fn drop(&mut self) {
        match self {
            Installed::None => {}
            Installed::Bench { progs, prog, link } => {
                if let Some(l) = link.take() {
                    if let Err(e) = progs.xdp_mut(prog).detach(l) {
                        eprintln!("bench: warning: detaching {prog}: {e}");
                    }
                }
            }
            Installed::VpnFilter { filter, stop, .. } => {
                stop.store(true, Ordering::SeqCst);
                if let Err(e) = filter.detach_all() {
                    eprintln!("bench: warning: detaching vpn-filter: {e:#}");
                }
            }
            Installed::XdpFilter { lab, stats } => {
                *stats = None;
                if let Err(e) = sh(in_netns(&lab.rx, "xdp-filter").args(["unload", RX_IF])) {
                    eprintln!("bench: warning: {e:#}");
                }
            }
            Installed::Nftables { lab } => {
                if let Err(e) =
                    sh(in_netns(&lab.rx, "nft").args(["delete", "table", "netdev", NFT_TABLE]))
                {
                    eprintln!("bench: warning: {e:#}");
                }
            }
        }
    }
}

/// The nftables ruleset doing vpn-filter's job: the same signatures (structure, not ports
/// alone, where nftables can express it), dropped unless an endpoint is in the allowlist.
fn nft_ruleset(reg: &Registry) -> String {
    let v4: Vec<String> = reg
        .v4
        .iter()
        .map(|(a, l)| format!("{}/{}", Ipv4Addr::from(*a), l))
        .collect();
    let v6: Vec<String> = reg
        .v6
        .iter()
        .map(|(a, l)| format!("{}/{}", std::net::Ipv6Addr::from(*a), l))
        .collect();
    let unregistered4 = "ip saddr != @allow4 ip daddr != @allow4";
    let unregistered6 = "ip6 saddr != @allow6 ip6 daddr != @allow6";
    // Checked in this order; the WireGuard rules come first.
    let signatures = [
        // WireGuard: exact message sizes, type byte and three reserved zero bytes.
        "udp length 156 @th,64,32 0x01000000",
        "udp length 100 @th,64,32 0x02000000",
        "udp length 72 @th,64,32 0x03000000",
        // IKEv2 / IKEv1 header version byte on 500, after the non-ESP marker on 4500.
        "udp dport 500 @th,200,8 { 0x10, 0x20 }",
        "udp dport 4500 @th,64,32 0 @th,232,8 { 0x10, 0x20 }",
        // OpenVPN hard reset (client v1/v2/v3), key id 0.
        "udp dport 1194 @th,64,8 { 0x08, 0x38, 0x50 }",
        // L2TPv2/v3 control header.
        "udp dport 1701 @th,64,16 { 0xc802, 0xc803 }",
        // PPTP control channel.
        "tcp dport 1723",
        // Enhanced GRE (version 1, key bit) carrying PPP: matched from the network header
        // (`@th,0,..` on GRE makes nft 1.0.6 abort when it reads the ruleset back), so at the
        // offset without IPv4 options or IPv6 extension headers.
        "GRE",
        "meta l4proto esp",
        "meta l4proto ah",
    ];
    let mut rules = String::new();
    for sig in signatures {
        let (m4, m6) = if sig == "GRE" {
            (
                "meta l4proto gre @nh,160,32 & 0x2007ffff == 0x2001880b",
                "meta l4proto gre @nh,320,32 & 0x2007ffff == 0x2001880b",
            )
        } else {
            (sig, sig)
        };
        rules.push_str(&format!(
            "    meta protocol ip {m4} {unregistered4} counter name {NFT_COUNTER} drop\n"
        ));
        rules.push_str(&format!(
            "    meta protocol ip6 {m6} {unregistered6} counter name {NFT_COUNTER} drop\n"
        ));
    }
    format!(
        "table netdev {NFT_TABLE} {{\n\
         \x20 counter {NFT_COUNTER} {{ }}\n\
         \x20 set allow4 {{ type ipv4_addr; flags interval; auto-merge; elements = {{ {} }} }}\n\
         \x20 set allow6 {{ type ipv6_addr; flags interval; auto-merge; elements = {{ {} }} }}\n\
         \x20 chain ingress {{\n\
         \x20   type filter hook ingress device \"{RX_IF}\" priority -500; policy accept;\n\
         {rules}\
         \x20 }}\n\
         }}\n",
        v4.join(", "),
        v6.join(", ")
    )
}

struct Generator {
    progs: BenchProgs,
}

impl Generator {
    fn new(lab: &Lab) -> Result<Generator> {
        let mut progs = BenchProgs::load()?;
        let mut cfg: Array<&mut MapData, u32> = Array::try_from(
            progs
                .ebpf_mut()
                .map_mut("GEN_CONFIG")
                .ok_or_else(|| anyhow!("GEN_CONFIG missing"))?,
        )?;
        cfg.set(0, lab.gen_ifindex, 0)?;
        // Sources: any unicast address (the program moves 0/8, 127/8 and 224/3 to 11/8).
        cfg.set(1, u32::MAX, 0)?;
        cfg.set(2, 0, 0)?;
        Ok(Generator { progs })
    }

    fn set_csum_offset(&mut self, off: u32) -> Result<()> {
        let mut cfg: Array<&mut MapData, u32> = Array::try_from(
            self.progs
                .ebpf_mut()
                .map_mut("GEN_CONFIG")
                .ok_or_else(|| anyhow!("GEN_CONFIG missing"))?,
        )?;
        cfg.set(3, off, 0)?;
        Ok(())
    }

    fn sent(&self) -> Result<u64> {
        let m: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
            self.progs
                .ebpf()
                .map("GEN_COUNT")
                .ok_or_else(|| anyhow!("GEN_COUNT missing"))?,
        )?;
        Ok(m.get(&0, 0)?.iter().sum())
    }
}

fn template(kind: Kind, lab: &Lab) -> (Vec<u8>, u32) {
    let f = Frame::eth()
        .macs(lab.gen_mac, lab.rx_mac)
        .ipv4(Ipv4Addr::new(11, 0, 0, 1), RX_ADDR);
    match kind {
        Kind::WireGuard => (
            f.udp(40000, 51820)
                .payload(&wireguard_initiation(0x1234_5678))
                .build(),
            40,
        ),
        Kind::Udp => {
            let mut p = vec![0u8; 18];
            vpn_filter_tests::packet::fill_pseudo_random(&mut p, 7);
            p[0] = 0x80;
            (f.udp(40000, 9000).payload(&p).build(), 40)
        }
        Kind::Tcp => (
            f.tcp(40000, 443)
                .payload(&[0x17, 0x03, 0x03, 0x00, 0x01, 0x00])
                .build(),
            50,
        ),
    }
}

/// Runs the generator (one thread per queue) for `warmup + seconds` and measures the
/// receiver over `seconds`. With several queues the figures per packet are summed over the
/// NAPI threads and the receiving CPUs.
fn measure(
    lab: &Lab,
    gen: &Generator,
    installed: &Installed,
    frame: &[u8],
    s: &Settings,
) -> Result<Sample> {
    let napis = lab.napi_pids()?;
    let rx_cpus = lab.rx_cpus();
    let gen_cpus = lab.gen_cpus();
    let (tid_tx, tid_rx) = mpsc::channel::<libc::pthread_t>();
    let gen_path = format!("/var/run/netns/{}", lab.gen.name());
    let prog = gen.progs.xdp("bench_gen");
    let snap = |dropped: Option<u64>| -> Result<Snap> {
        let mut cpu_busy = 0;
        for &c in &rx_cpus {
            cpu_busy += cpu_jiffies(c)?;
        }
        let mut napi_ns = 0;
        for &p in &napis {
            napi_ns += schedstat_ns(p)?;
        }
        Ok(Snap {
            t: Instant::now(),
            rx: lab.rx_packets()?,
            napi_ns,
            cpu_busy,
            sent: gen.sent()?,
            dropped,
        })
    };
    // Set before the generators are signalled: an interruption before that (any signal the
    // process catches may land on a generator's thread) is not the end of the run.
    let stopping = AtomicBool::new(false);
    let stopping = &stopping;
    let gen_path = &gen_path;
    std::thread::scope(|scope| -> Result<Sample> {
        let handles: Vec<_> = gen_cpus
            .iter()
            .map(|&cpu| {
                let tid_tx = tid_tx.clone();
                scope.spawn(move || -> Result<()> {
                    let file = File::open(gen_path).with_context(|| format!("open {gen_path}"))?;
                    // SAFETY: a valid namespace fd; only this thread changes namespace.
                    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        bail!("setns({gen_path}): {}", std::io::Error::last_os_error());
                    }
                    pin_to_cpu(0, cpu)?;
                    raise_priority(0)?;
                    // SAFETY: pthread_self has no preconditions.
                    let _ = tid_tx.send(unsafe { libc::pthread_self() });
                    loop {
                        let mut opts = TestRunOptions::new();
                        opts.data_in = Some(frame);
                        opts.repeat = u32::MAX;
                        opts.attrs = TestRunAttrs::new().xdp_live_frames(64);
                        match prog.test_run(opts) {
                            // EINTR is how the run ends; a call that ran out of repeats goes on.
                            Ok(_) => {}
                            Err(e) if format!("{e:?}").contains("Interrupted") => {}
                            Err(e) => {
                                return Err(
                                    anyhow::Error::new(e).context("generator BPF_PROG_TEST_RUN")
                                );
                            }
                        }
                        if stopping.load(Ordering::SeqCst) {
                            return Ok(());
                        }
                    }
                })
            })
            .collect();
        drop(tid_tx);
        let mut tids = Vec::new();
        for _ in &handles {
            tids.push(
                tid_rx
                    .recv_timeout(Duration::from_secs(5))
                    .map_err(|_| anyhow!("a generator thread did not start"))?,
            );
        }
        let stop_gen = || {
            stopping.store(true, Ordering::SeqCst);
            // Repeat until the threads have left the syscall (a signal between batches).
            for _ in 0..200 {
                if handles.iter().all(|h| h.is_finished()) {
                    break;
                }
                for (h, &tid) in handles.iter().zip(&tids) {
                    if !h.is_finished() {
                        // SAFETY: tid is a live thread of this process until joined below.
                        unsafe { libc::pthread_kill(tid, libc::SIGUSR1) };
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        let result = (|| -> Result<Sample> {
            sleep(Duration::from_secs_f64(s.warmup))?;
            if handles.iter().any(|h| h.is_finished()) {
                // The thread's own error (joined below) says why; this names when.
                bail!("a generator stopped during the warm-up");
            }
            let a = snap(installed.dropped()?)?;
            sleep(Duration::from_secs_f64(s.seconds))?;
            let b = snap(installed.dropped()?)?;
            let dt = (b.t - a.t).as_secs_f64();
            let rx = (b.rx - a.rx) as f64;
            if rx == 0.0 {
                bail!("the receiver saw no packets");
            }
            let napi_ns = (b.napi_ns - a.napi_ns) as f64;
            let jiffy_ns = 1e9 / clk_tck();
            Ok(Sample {
                pps: rx / dt,
                napi_ns: napi_ns / rx,
                cpu_ns: (b.cpu_busy - a.cpu_busy) as f64 * jiffy_ns / rx,
                napi_util: napi_ns / (dt * 1e9 * napis.len() as f64),
                gen_pps: (b.sent - a.sent) as f64 / dt,
                dropped: match (a.dropped, b.dropped) {
                    (Some(x), Some(y)) => y.saturating_sub(x) as f64 / rx,
                    _ => f64::NAN,
                },
            })
        })();
        stop_gen();
        let mut joined = Ok(());
        for h in handles {
            let r = h
                .join()
                .map_err(|_| anyhow!("a generator thread panicked"))
                .and_then(|r| r);
            if joined.is_ok() {
                joined = r;
            }
        }
        // The generator's error first: it is the cause when the measurement failed too.
        match (result, joined) {
            (Err(m), Err(g)) => Err(g.context(format!("{m:#}"))),
            (_, Err(g)) => Err(g),
            (r, Ok(())) => r,
        }
    })
}

fn install<'a>(
    v: Variant,
    lab: &'a Lab,
    reg: &Registry,
    rx_progs: &'a mut BenchProgs,
) -> Result<Installed<'a>> {
    Ok(match v {
        Variant::NoProgram => Installed::None,
        Variant::PassThrough | Variant::CountDrop => {
            let name = if v == Variant::PassThrough {
                "bench_pass"
            } else {
                "bench_count_drop"
            };
            let ifindex = lab.rx_ifindex;
            let prog = rx_progs.xdp_mut(name);
            let link = lab
                .rx
                .enter(|| prog.attach_to_if_index(ifindex, XdpMode::Driver))
                .with_context(|| format!("attaching {name} in native mode"))?;
            Installed::Bench {
                progs: rx_progs,
                prog: name,
                link: Some(link),
            }
        }
        Variant::VpnFilter => {
            let mut filter = Box::new(
                Filter::load(
                    LoadOptions::default(),
                    &Policy::default(),
                    &Config::default(),
                )
                .context("loading vpn-filter")?,
            );
            filter.sync_allowlist(&reg.allowlist())?;
            let mut events = filter.take_events()?;
            lab.rx
                .enter(|| filter.attach(RX_IF, AttachMode::Native).map(|_| ()))
                .context("attaching vpn-filter in native mode")?;
            // Drain the ring buffer as the controller would, on the generator's CPU (the
            // receiving CPU is the one being measured).
            let stop = Arc::new(AtomicBool::new(false));
            let (tx, rx) = mpsc::channel();
            let stop2 = stop.clone();
            std::thread::spawn(move || {
                let stop = stop2;
                let _ = pin_to_cpu(0, GEN_CPU);
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    n += drain(&mut events) as u64;
                    std::thread::sleep(Duration::from_millis(1));
                }
                let _ = tx.send(n);
            });
            Installed::VpnFilter {
                filter,
                stop,
                drained: rx,
            }
        }
        Variant::XdpFilter => {
            ensure_bpffs()?;
            sh(in_netns(&lab.rx, "xdp-filter").args([
                "load",
                "--mode",
                "native",
                "--policy",
                "deny",
                "--features",
                "ipv4,ipv6",
                RX_IF,
            ]))
            .context("xdp-filter load")?;
            let mut installed = Installed::XdpFilter { lab, stats: None };
            let path = Path::new("/sys/fs/bpf/xdp-filter/filter_ipv4");
            let map = Map::from_map_data(
                MapData::from_pin(path).with_context(|| format!("opening {}", path.display()))?,
            )?;
            let mut m: PerCpuHashMap<MapData, [u8; 4], u64> = PerCpuHashMap::try_from(map)?;
            let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
            // MAP_FLAG_SRC | MAP_FLAG_DST: the address passes as either endpoint.
            let both = PerCpuValues::try_from(vec![3u64; cpus])?;
            for (a, _) in reg.v4.iter().filter(|(_, l)| *l == 32).take(XDP_FILTER_MAX) {
                m.insert(a.to_be_bytes(), PerCpuValues::try_from(both.to_vec())?, 0)?;
            }
            let stats = Path::new("/sys/fs/bpf/xdp-filter/xdp_stats_map");
            if let Installed::XdpFilter { stats: slot, .. } = &mut installed {
                *slot = match MapData::from_pin(stats)
                    .map_err(anyhow::Error::from)
                    .and_then(|d| Ok(Map::from_map_data(d)?))
                    .and_then(|m| Ok(PerCpuArray::try_from(m)?))
                {
                    Ok(m) => Some(m),
                    Err(e) => {
                        eprintln!("bench: xdp-filter's drop statistics unreadable: {e:#}");
                        None
                    }
                };
            }
            installed
        }
        Variant::Nftables => {
            let rules = nft_ruleset(reg);
            let dir = std::env::temp_dir().join(format!("vpnf-bench-{}.nft", std::process::id()));
            std::fs::write(&dir, rules)?;
            let r = sh(in_netns(&lab.rx, "nft").arg("-f").arg(&dir));
            let _ = std::fs::remove_file(&dir);
            r.context("loading the nftables ruleset")?;
            Installed::Nftables { lab }
        }
    })
}

/// What both veth sections start with: two CPUs, the generator's stop signal, the allowlist.
fn prepare(s: &Settings, out: &mut String) -> Result<(Registry, usize, usize)> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        out.push_str("Not measured: the method needs two CPUs (generator and receiver).\n\n");
        bail!("vpn-filter was not measured: the method needs two CPUs (generator and receiver)");
    }
    install_sigusr1();
    let (n4, n6) = split(s.prefixes);
    let reg = Registry::generate(n4, n6, 0x7e7f + s.prefixes as u64);
    Ok((reg, n4, n6))
}

pub fn run(s: &Settings, out: &mut String, hl: &mut Highlights) -> Result<()> {
    let (reg, n4, n6) = prepare(s, out)?;
    let lab = Lab::new(1)?;
    let mut gen = Generator::new(&lab)?;
    let mut rx_progs = BenchProgs::load()?;
    let mut tools_missing: Vec<(Variant, String)> = Vec::new();
    for (v, tool) in [
        (Variant::XdpFilter, "xdp-filter"),
        (Variant::Nftables, "nft"),
    ] {
        if Command::new(tool).arg("--help").output().is_err() {
            tools_missing.push((v, format!("`{tool}` is not installed")));
        }
    }
    let variants: Vec<Variant> = Variant::ALL
        .into_iter()
        .filter(|v| !tools_missing.iter().any(|(m, _)| m == v))
        .collect();
    // samples[variant][kind] = per-round samples
    let mut samples: Vec<Vec<Vec<Sample>>> =
        vec![vec![Vec::new(); Kind::ALL.len()]; Variant::ALL.len()];
    let mut failures: Vec<(Variant, String)> = tools_missing;
    let mut modes: Vec<(Variant, String)> = Vec::new();
    let mut drained_events = 0u64;
    let mut rng = Rng::new(1);
    for round in 0..s.rounds {
        // A different variant order each round, so no variant always follows the same one.
        let mut order = variants.clone();
        let k = rng.range(0, order.len() as u64 - 1) as usize;
        order.rotate_left(k);
        for &v in &order {
            if failures.iter().any(|(f, _)| *f == v) {
                continue;
            }
            check_stop()?;
            eprintln!("bench: veth round {}/{}: {}", round + 1, s.rounds, v.name());
            let installed = match install(v, &lab, &reg, &mut rx_progs) {
                Ok(i) => i,
                Err(e) => {
                    eprintln!("bench: {} could not be set up: {e:#}", v.name());
                    failures.push((v, format!("{e:#}")));
                    continue;
                }
            };
            if round == 0 {
                modes.push((v, lab.xdp_shown()?));
            }
            for (ki, &kind) in Kind::ALL.iter().enumerate() {
                let (frame, csum) = template(kind, &lab);
                gen.set_csum_offset(csum)?;
                match measure(&lab, &gen, &installed, &frame, s) {
                    Ok(x) => {
                        eprintln!(
                            "bench:   {:?}: {} Mpps, napi {} ns/pkt ({:.0}% busy), cpu {} ns/pkt, generator {} Mpps",
                            kind,
                            mega(x.pps),
                            ns(x.napi_ns),
                            x.napi_util * 100.0,
                            ns(x.cpu_ns),
                            mega(x.gen_pps)
                        );
                        samples[v as usize][ki].push(x);
                    }
                    Err(e) => {
                        eprintln!("bench:   {kind:?} failed: {e:#}");
                        failures.push((v, format!("{kind:?}: {e:#}")));
                        break;
                    }
                }
            }
            if let Installed::VpnFilter { stop, drained, .. } = &installed {
                stop.store(true, Ordering::SeqCst);
                drained_events += drained.recv_timeout(Duration::from_secs(2)).unwrap_or(0);
            }
            drop(installed);
        }
    }

    out.push_str(&format!(
        "Allowlist: {} prefixes ({} IPv4 + {} IPv6; {}). vpn-filter and nftables get all of \
         them; xdp-filter only matches exact addresses and holds at most {} per family, so it \
         gets the first {} IPv4 /32s. Each cell is the median of {} round(s) of {:.1} s \
         (after {:.1} s of warm-up). \"Receiving CPU\" is the NAPI thread's CPU time per \
         packet received; \"cost over baseline\" subtracts the no-program figure; \"1/pps \
         cost\" is 1/pps - 1/pps(no program). \"dropped\" is the share of received packets \
         the variant dropped by its own count (its counters are read a moment apart from \
         the rx counter, so a few percent either way is timing, not error). The generator runs on CPU {GEN_CPU}, \
         the receiver's NAPI thread on CPU {RX_CPU}.\n\n",
        count(s.prefixes),
        count(n4),
        count(n6),
        reg.describe(),
        count(XDP_FILTER_MAX),
        count(
            reg.v4
                .iter()
                .filter(|(_, l)| *l == 32)
                .count()
                .min(XDP_FILTER_MAX)
        ),
        s.rounds,
        s.seconds,
        s.warmup
    ));
    let med = |v: Variant, ki: usize, f: fn(&Sample) -> f64| -> f64 {
        median(samples[v as usize][ki].iter().map(f).collect())
    };
    for (ki, kind) in Kind::ALL.iter().enumerate() {
        out.push_str(&format!("### {}\n\n", kind.name()));
        out.push_str(
            "| variant | received Mpps | receiving CPU ns/packet | cost over baseline | vs count-and-drop | 1/pps cost | CPU (/proc/stat) ns/packet | NAPI busy | generator Mpps | dropped |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        let base_napi = med(Variant::NoProgram, ki, |x| x.napi_ns);
        let base_pps = med(Variant::NoProgram, ki, |x| x.pps);
        let drop_napi = med(Variant::CountDrop, ki, |x| x.napi_ns);
        for v in Variant::ALL {
            if samples[v as usize][ki].is_empty() {
                continue;
            }
            let napi = med(v, ki, |x| x.napi_ns);
            let pps = med(v, ki, |x| x.pps);
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {:.0}% | {} | {} |\n",
                v.name(),
                mega(pps),
                ns(napi),
                if v == Variant::NoProgram {
                    "—".to_string()
                } else {
                    signed_ns(napi - base_napi)
                },
                ratio(napi / drop_napi),
                if v == Variant::NoProgram {
                    "—".to_string()
                } else {
                    signed_ns(1e9 / pps - 1e9 / base_pps)
                },
                ns(med(v, ki, |x| x.cpu_ns)),
                med(v, ki, |x| x.napi_util) * 100.0,
                mega(med(v, ki, |x| x.gen_pps)),
                {
                    let c = med(v, ki, |x| x.dropped);
                    if c.is_finite() {
                        format!("{c:.2}")
                    } else {
                        "—".into()
                    }
                }
            ));
        }
        out.push('\n');
    }
    if !modes.is_empty() {
        out.push_str("XDP mode shown by `ip -d link` on the receiving veth: ");
        let shown: Vec<String> = modes
            .iter()
            .map(|(v, m)| {
                format!(
                    "{}: {}",
                    v.name(),
                    if m.is_empty() { "no XDP" } else { m.as_str() }
                )
            })
            .collect();
        out.push_str(&shown.join("; "));
        out.push_str(".\n\n");
    }
    out.push_str(&format!(
        "vpn-filter's drop events drained from the ring buffer during its runs: {}.\n\n",
        count(drained_events as usize)
    ));
    let version = |pkg: &str| -> String {
        Command::new("dpkg-query")
            .args(["-W", "-f=${Version}", pkg])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| "unknown version".into())
    };
    let xdp_filter_loaded = modes
        .iter()
        .any(|(v, m)| *v == Variant::XdpFilter && m == "xdp");
    out.push_str(&format!(
        "Versions: xdp-tools {} (Debian; xdp-filter {} in native mode on this kernel), \
         nftables {}.\n\n",
        version("xdp-tools"),
        if xdp_filter_loaded {
            "loads and runs"
        } else {
            "did not load"
        },
        version("nftables")
    ));
    out.push_str(
        "Notes: xdp-filter cannot tell a VPN handshake from other traffic: with a deny policy \
         it drops every packet whose source and destination are not listed, ordinary traffic \
         included, so its ordinary-traffic rows are drop costs, not pass costs. The nftables \
         ruleset puts the signature matches first and the set lookups last, so ordinary \
         traffic pays only the payload compares. On traffic that goes on into the stack, \
         compare vpn-filter with the pass-through row: their difference is vpn-filter's own \
         work; the pass-through row minus the no-program row is what any XDP program on a \
         veth adds to passed traffic (the frame enters the stack through XDP's path).\n\n",
    );
    for (v, why) in &failures {
        out.push_str(&format!(
            "- {} was not measured (or not fully): {}\n",
            v.name(),
            why
        ));
    }
    if !failures.is_empty() {
        out.push('\n');
    }
    // The tables above are written either way; a section whose own rows are missing fails.
    let measured = |v: Variant, ki: usize| samples[v as usize][ki].len();
    check_own_rows_measured(measured, &failures)?;
    let t = |v: Variant| med(v, 0, |x| x.napi_ns);
    let over_pass = |ki: usize| -> Vec<f64> {
        samples[Variant::VpnFilter as usize][ki]
            .iter()
            .zip(&samples[Variant::PassThrough as usize][ki])
            .map(|(f, p)| f.napi_ns - p.napi_ns)
            .collect()
    };
    hl.targets = Some(Targets {
        prefixes: s.prefixes,
        ordinary_over_pass: [over_pass(1), over_pass(2)],
        count_drop: t(Variant::CountDrop),
        vpn_filter: t(Variant::VpnFilter),
        xdp_filter: t(Variant::XdpFilter),
        nftables: t(Variant::Nftables),
    });
    Ok(())
}

/// Section 2b (issue 18, item 5): the unregistered-handshake flood's receive rate with one
/// receive queue and with two, for vpn-filter and for count-and-drop. Returns vpn-filter's
/// ratio (two queues over one, medians).
pub fn scaling(s: &Settings, out: &mut String) -> Result<f64> {
    let (reg, _, _) = prepare(s, out)?;
    let variants = [Variant::CountDrop, Variant::VpnFilter];
    // samples[variant][queues - 1] = per-round samples
    let mut samples: Vec<[Vec<Sample>; 2]> = vec![Default::default(); variants.len()];
    for round in 0..s.rounds {
        for queues in [1, 2] {
            let lab = Lab::new(queues)?;
            let mut gen = Generator::new(&lab)?;
            let mut rx_progs = BenchProgs::load()?;
            let (frame, csum) = template(Kind::WireGuard, &lab);
            gen.set_csum_offset(csum)?;
            for (vi, &v) in variants.iter().enumerate() {
                check_stop()?;
                eprintln!(
                    "bench: scaling round {}/{}: {} queue(s), {}",
                    round + 1,
                    s.rounds,
                    queues,
                    v.name()
                );
                let installed = install(v, &lab, &reg, &mut rx_progs)
                    .with_context(|| format!("setting up {}", v.name()))?;
                let x = measure(&lab, &gen, &installed, &frame, s)
                    .with_context(|| format!("{} with {queues} receive queue(s)", v.name()))?;
                eprintln!(
                    "bench:   {} Mpps, napi {} ns/pkt ({:.0}% busy), generator {} Mpps",
                    mega(x.pps),
                    ns(x.napi_ns),
                    x.napi_util * 100.0,
                    mega(x.gen_pps)
                );
                samples[vi][queues - 1].push(x);
            }
        }
    }
    out.push_str(&format!(
        "The unregistered-handshake flood of section 2 (190-byte WireGuard initiations from \
         random sources, {} prefixes), received by a veth with one receive queue and with two. \
         veth picks the receive queue by the sending CPU: with one queue, the generator runs \
         on CPU {GEN_CPU} and the queue's NAPI thread on CPU {RX_CPU}; with two, a generator \
         thread and a NAPI thread share each of the two CPUs, so the generators take CPU time \
         the receivers had alone before, and the ratio is a lower bound of what two dedicated \
         receiving CPUs give. Medians of {} round(s) of {:.1} s (after {:.1} s of warm-up). \
         Both variants drop the flood (vpn-filter passes the rare random source that falls \
         in a registered prefix).\n\n\
         | variant | 1 queue: received Mpps | 2 queues: received Mpps | 2 queues / 1 queue | NAPI CPU ns/packet, 1 queue | NAPI CPU ns/packet, 2 queues (both threads) | NAPI busy, 2 queues (each thread) |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
        count(s.prefixes),
        s.rounds,
        s.seconds,
        s.warmup
    ));
    let med = |vi: usize, qi: usize, f: fn(&Sample) -> f64| -> f64 {
        median(samples[vi][qi].iter().map(f).collect())
    };
    let mut vpn_ratio = f64::NAN;
    for (vi, v) in variants.iter().enumerate() {
        let (one, two) = (med(vi, 0, |x| x.pps), med(vi, 1, |x| x.pps));
        if *v == Variant::VpnFilter {
            vpn_ratio = two / one;
        }
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {:.0}% |\n",
            v.name(),
            mega(one),
            mega(two),
            ratio(two / one),
            ns(med(vi, 0, |x| x.napi_ns)),
            ns(med(vi, 1, |x| x.napi_ns)),
            med(vi, 1, |x| x.napi_util) * 100.0,
        ));
    }
    out.push_str(
        "\nNothing global sits on the flood's path: the counters and event budget are per-CPU \
         arrays, the flood's packets insert no flow entry and skip the flow map, and the \
         event limiters and the repeat-source filter are arrays indexed by a hash of the \
         source (a rare shared cache line, no lock). The ring buffer's lock is taken only for \
         events, which the per-CPU budget bounds.\n\n",
    );
    if !vpn_ratio.is_finite() {
        bail!("vpn-filter's scaling ratio could not be measured");
    }
    Ok(vpn_ratio)
}

/// The variants without which the section says nothing about vpn-filter: vpn-filter itself
/// and the baselines its cost is taken against. The peers (xdp-filter, nftables) may be
/// missing on a machine without the tools; their absence is reported, not failed.
const OWN_ROWS: [Variant; 4] = [
    Variant::NoProgram,
    Variant::PassThrough,
    Variant::CountDrop,
    Variant::VpnFilter,
];

/// Fails, naming the variant, the packet kind and why, when one of [`OWN_ROWS`] has no sample
/// for some packet kind (a failed measurement would otherwise be a NaN median in the tables
/// and in the targets, with the section still passing).
fn check_own_rows_measured(
    measured: impl Fn(Variant, usize) -> usize,
    failures: &[(Variant, String)],
) -> Result<()> {
    for v in OWN_ROWS {
        for (ki, kind) in Kind::ALL.iter().enumerate() {
            if measured(v, ki) == 0 {
                let why = failures
                    .iter()
                    .filter(|(f, _)| *f == v)
                    .map(|(_, why)| why.as_str())
                    .collect::<Vec<_>>()
                    .join("; ");
                bail!(
                    "{} was not measured on {:?} frames: {}",
                    v.name(),
                    kind,
                    if why.is_empty() { "no sample" } else { &why }
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_vpn_filter_variant_fails_the_section_and_names_it() {
        let failures = vec![(
            Variant::VpnFilter,
            "attaching vpn-filter in native mode: EBUSY".to_string(),
        )];
        let err = check_own_rows_measured(|v, _| usize::from(v != Variant::VpnFilter), &failures)
            .expect_err("a section without vpn-filter's rows must fail");
        let msg = format!("{err:#}");
        assert!(msg.contains("vpn-filter was not measured"), "{msg}");
        assert!(msg.contains("EBUSY"), "{msg}");
    }

    #[test]
    fn a_baseline_missing_one_packet_kind_fails_the_section() {
        let err = check_own_rows_measured(
            |v, ki| usize::from(!(v == Variant::CountDrop && ki == 2)),
            &[],
        )
        .expect_err("count-and-drop without a TCP sample must fail");
        assert!(format!("{err:#}").contains("count-and-drop"), "{err:#}");
    }

    #[test]
    fn missing_peers_do_not_fail_the_section() {
        let failures = vec![
            (
                Variant::XdpFilter,
                "`xdp-filter` is not installed".to_string(),
            ),
            (Variant::Nftables, "`nft` is not installed".to_string()),
        ];
        check_own_rows_measured(
            |v, _| usize::from(!matches!(v, Variant::XdpFilter | Variant::Nftables)),
            &failures,
        )
        .expect("peers may be missing");
    }
}
