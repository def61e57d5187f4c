//! `cargo xtask bench`: measures vpn-filter against the kernel's ceiling and against what an
//! operator would use instead, in one run, and writes BENCHMARKS.md.
//!
//! 1. In-kernel cost per packet (BPF_PROG_TEST_RUN against a pass-through program).
//! 2. Throughput across a veth pair with native XDP, driven by the project's own XDP
//!    generator: no program, count-and-drop, vpn-filter, xdp-filter, nftables.
//! 3. Registry sync time through the controller's API.
//! 4. Events: records per second from the kernel to the events file, controller CPU.
//! 5. `vpn-filter replay` packets per second.
//! 6. The verifier's budget: instructions, processed instructions, stack per call chain.
//!
//! Method: ../shared/perf-method.md of the project notes, summarised in the output file.
//! Nothing here asserts a speed: slow numbers are reported, never failed.

#[path = "../bench/events.rs"]
mod events;
#[path = "../bench/kernel.rs"]
mod kernel;
#[path = "../bench/registry.rs"]
mod registry;
#[path = "../bench/replay.rs"]
mod replay;
#[path = "../bench/sync.rs"]
mod sync;
#[path = "../bench/util.rs"]
mod util;
#[cfg(target_arch = "x86_64")]
#[path = "../verifier_stats.rs"]
mod verifier_stats;
#[path = "../bench/veth.rs"]
mod veth;

use std::{path::PathBuf, process::ExitCode, time::Instant};

use anyhow::{Context as _, Result};
use clap::{Parser, ValueEnum};

use crate::util::{ns, ratio, Machine};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum Section {
    /// In-kernel cost per packet (BPF_PROG_TEST_RUN).
    Kernel,
    /// Throughput across veth with native XDP.
    Veth,
    /// The flood's receive rate with two receive queues against one.
    Scaling,
    /// Registry sync.
    Sync,
    /// Events from the kernel to the events file, under a flood.
    Events,
    /// `vpn-filter replay` throughput.
    Replay,
    /// The verifier's figures for both program variants.
    Verifier,
}

#[derive(Parser)]
#[command(about = "vpn-filter benchmarks: writes BENCHMARKS.md")]
struct Args {
    /// Where to write the report (Markdown).
    #[arg(long, default_value = "BENCHMARKS.md")]
    out: PathBuf,
    /// A short run (CI): fewer frames, rounds and seconds; the same tables.
    #[arg(long)]
    quick: bool,
    /// Run only these sections (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Section>,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let args = Args::parse();
    vpn_filter_tests::require_root();
    util::install_stop_handler();
    // Other work on a shared machine disturbs the measuring thread less at nice -20.
    if let Err(e) = util::raise_priority(0) {
        eprintln!("bench: warning: {e:#}");
    }
    let started = Instant::now();
    let want = |s: Section| args.only.is_empty() || args.only.contains(&s);
    let machine = Machine::describe();
    let load_before = util::load_average();

    let mut kernel_md = String::new();
    let mut veth_md = String::new();
    let mut scaling_md = String::new();
    let mut scaling_ratio: Option<f64> = None;
    let mut sync_md = String::new();
    let mut events_md = String::new();
    let mut replay_md = String::new();
    let mut verifier_md = String::new();
    let mut verifier_targets = String::new();
    let mut khl = kernel::Highlights::default();
    let mut vhl = veth::Highlights::default();
    let mut shl = sync::Highlights::default();
    let mut replay_startup: Option<f64> = None;
    let mut verify_secs: Option<f64> = None;

    if want(Section::Kernel) {
        let s = if args.quick {
            kernel::Settings {
                sizes: vec![0, 20_000, 1_000_000],
                frames: 4_000,
                rounds: 3,
                direct_repeat: 50_000,
                breakdown_size: 20_000,
            }
        } else {
            kernel::Settings {
                sizes: vec![0, 20_000, 1_000_000],
                frames: 20_000,
                rounds: 5,
                direct_repeat: 200_000,
                breakdown_size: 20_000,
            }
        };
        section("in-kernel cost", &mut kernel_md, |md| {
            kernel::run(&s, md, &mut khl)
        })?;
    }
    if want(Section::Veth) {
        let s = if args.quick {
            veth::Settings {
                prefixes: 20_000,
                seconds: 1.0,
                warmup: 0.3,
                rounds: 1,
            }
        } else {
            veth::Settings {
                prefixes: 20_000,
                seconds: 1.5,
                warmup: 0.4,
                rounds: 5,
            }
        };
        section("throughput across veth", &mut veth_md, |md| {
            veth::run(&s, md, &mut vhl)
        })?;
    }
    if want(Section::Scaling) {
        let s = veth::Settings {
            prefixes: 20_000,
            seconds: if args.quick { 1.0 } else { 1.5 },
            warmup: if args.quick { 0.3 } else { 0.4 },
            rounds: if args.quick { 1 } else { 3 },
        };
        section("two receive queues", &mut scaling_md, |md| {
            scaling_ratio = Some(veth::scaling(&s, md)?);
            Ok(())
        })?;
    }
    if want(Section::Sync) {
        let s = sync::Settings {
            sizes: vec![20_000, 1_000_000],
            change_size: 1_000_000,
            change_fraction: 0.01,
            rounds: if args.quick { 1 } else { 3 },
        };
        section("registry sync", &mut sync_md, |md| {
            sync::run(&s, md, &mut shl)
        })?;
    }
    if want(Section::Events) {
        let s = events::Settings {
            seconds: if args.quick { 2.0 } else { 5.0 },
            rounds: if args.quick { 1 } else { 3 },
        };
        section("events", &mut events_md, |md| events::run(&s, md))?;
    }
    if want(Section::Replay) {
        let s = replay::Settings {
            packets: if args.quick { 50_000 } else { 200_000 },
            rounds: 3,
        };
        section("replay", &mut replay_md, |md| {
            replay::run(&s, md, &mut replay_startup)
        })?;
    }
    if want(Section::Verifier) {
        section("verifier budget", &mut verifier_md, |md| {
            verifier(md, &mut verifier_targets, &mut verify_secs)
        })?;
    }

    let mut md = String::new();
    md.push_str("# vpn-filter benchmarks\n\n");
    md.push_str(&format!(
        "Written by `cargo xtask bench{}` in {:.0} s. Numbers from one run on one machine: \
         absolute values move between runs on a shared VM, ratios taken in the same run \
         hold better. Nothing here is asserted; the targets are reported.\n\n",
        if args.quick { " --quick" } else { "" },
        started.elapsed().as_secs_f64()
    ));
    md.push_str(&format!(
        "| machine | |\n|---|---|\n| kernel | {} |\n| CPU | {} |\n| CPUs | {} |\n| memory | {:.1} GiB |\n| date (UTC) | {} |\n| run | {} |\n| load average (1, 5, 15 min) at start / end | {} / {} |\n\n",
        machine.kernel,
        machine.cpu,
        machine.cpus,
        machine.memory_gib,
        machine.date,
        if args.quick {
            "quick (reduced corpus, rounds and durations)"
        } else {
            "full"
        },
        load_before,
        util::load_average(),
    ));
    md.push_str(
        "The load average at the start is other work on the machine (the benchmark had not \
         started); the one at the end also counts the benchmark's own busy threads. Other \
         work sharing the two CPUs shows most in section 2 (NAPI busy share, generator rate) \
         and in the sync times.\n\n",
    );

    md.push_str(
        "## Targets\n\nIssue 18's targets, each with this run's figure and whether it was met; \
         by how much a missed one was missed is in the figure, and why in its last cell. Speed ratios are taken within \
         this run. Memory and start-up at a million prefixes are measured by hand (section \
         \"Issue 18: start-up and memory\" below).\n\n\
         | target | measured | |\n|---|---|---|\n",
    );
    let verdict = |met: bool| if met { "met" } else { "missed" };
    // A missed target's cell says why, from what the program does that the target's
    // reference does not (the figures behind it are in section 1's breakdown).
    let missed_why = |met: bool, why: &str| {
        if met {
            verdict(met).to_string()
        } else {
            format!("{}: {why}", verdict(met))
        }
    };
    for w in &khl.ordinary_max {
        md.push_str(&format!(
            "| ordinary packets (TCP, UDP, DNS, QUIC, IPv6, VLAN) at most 10 ns over a pass-through program, in the kernel (allowlist {}) | worst ordinary class {} ns over it, one frame repeated; {} ns from many sources ({}); {} ns to many destinations ({}) | {} |\n",
            util::count(w.size),
            util::signed_ns(w.one_frame),
            util::signed_ns(w.many_sources.0),
            w.many_sources.1,
            util::signed_ns(w.many_destinations.0),
            w.many_destinations.1,
            missed_why(
                w.one_frame.max(w.many_sources.0).max(w.many_destinations.0) <= 10.0,
                ORDINARY_WHY
            )
        ));
    }
    if let Some(t) = &vhl.targets {
        let rounds = |v: &[f64]| -> String {
            let each: Vec<String> = v.iter().map(|x| util::signed_ns(*x)).collect();
            format!(
                "{} ns (rounds: {})",
                util::signed_ns(util::median(v.to_vec())),
                each.join(", ")
            )
        };
        md.push_str(&format!(
            "| the same on veth: vpn-filter minus a pass-through XDP program, receiving CPU per packet (this VM's noise is larger than the target) | ordinary UDP {}; ordinary TCP {} | {} |\n",
            rounds(&t.ordinary_over_pass[0]),
            rounds(&t.ordinary_over_pass[1]),
            missed_why(
                util::median(t.ordinary_over_pass[0].to_vec()) <= 10.0
                    && util::median(t.ordinary_over_pass[1].to_vec()) <= 10.0,
                "as in the kernel (the row above), plus the VM's noise"
            )
        ));
        md.push_str(&format!(
            "| unregistered-handshake flood on veth, {} prefixes: receiving-CPU cost no more than xdp-filter's in the same run | {} ns vs xdp-filter {} ns: {} (count-and-drop {} ns, nftables {} ns) | {} |\n",
            util::count(t.prefixes),
            ns(t.vpn_filter),
            ns(t.xdp_filter),
            ratio(t.vpn_filter / t.xdp_filter),
            ns(t.count_drop),
            ns(t.nftables),
            missed_why(t.vpn_filter <= t.xdp_filter, &flood_why(khl.classify_only))
        ));
        md.push_str(&format!(
            "| (stretch) the same flood at most 1.3x count-and-drop | {} ns vs {} ns: {} | {} |\n",
            ns(t.vpn_filter),
            ns(t.count_drop),
            ratio(t.vpn_filter / t.count_drop),
            missed_why(
                t.vpn_filter <= 1.3 * t.count_drop,
                "count-and-drop reads no packet byte; see the row above"
            )
        ));
    }
    if let Some(r) = scaling_ratio {
        md.push_str(&format!(
            "| the same flood with two receive queues on two CPUs, relative to one (reported; no global lock or shared counter may cap it) | vpn-filter {} (section 2b) | reported |\n",
            ratio(r)
        ));
    }
    if !khl.wg_miss.is_empty() {
        let each: Vec<String> = khl
            .wg_miss
            .iter()
            .map(|(size, v)| {
                format!(
                    "{} ns at {} prefixes",
                    util::signed_ns(*v),
                    util::count(*size)
                )
            })
            .collect();
        md.push_str(&format!(
            "| (context) in-kernel cost of an unregistered WireGuard initiation's first packet, flow table full | {} | |\n",
            each.join(", ")
        ));
    }
    for (size, miss, hit, again) in &khl.wg_registered {
        md.push_str(&format!(
            "| registered WireGuard source, allowlist {}: first packet at most 2x an unregistered first packet | {} ns vs {} ns: {} | {} |\n",
            util::count(*size),
            ns(*hit),
            ns(*miss),
            ratio(hit / miss),
            missed_why(*hit <= 2.0 * miss, REGISTERED_FIRST_WHY)
        ));
        md.push_str(&format!(
            "| registered WireGuard flow, allowlist {}: next packets at most 100 ns over the baseline (measured on the same initiations sent again, flow-map hits; not on transport data) | {} ns | {} |\n",
            util::count(*size),
            util::signed_ns(*again),
            missed_why(*again <= 100.0, REGISTERED_AGAIN_WHY)
        ));
    }
    for (size, secs) in &shl.full {
        if *size == 1_000_000 {
            md.push_str(&format!(
                "| full sync of 1,000,000 prefixes under 1 s | {secs:.2} s | {} |\n",
                verdict(*secs < 1.0)
            ));
        }
    }
    if let Some(c) = shl.change {
        md.push_str(&format!(
            "| a 1% change to 1,000,000 prefixes under 100 ms | {:.0} ms | {} |\n",
            c * 1000.0,
            verdict(c < 0.1)
        ));
    }
    if let Some(start) = replay_startup {
        let why = verify_secs.map_or(String::new(), |v| {
            format!(" (the kernel's verifier alone takes {v:.2} s to load the program)")
        });
        md.push_str(&format!(
            "| `vpn-filter replay` start-up under 0.3 s | {start:.2} s{why} | {} |\n",
            missed_why(start < 0.3, REPLAY_WHY)
        ));
    }
    md.push_str(&verifier_targets);
    md.push('\n');

    md.push_str(METHOD);
    if !kernel_md.is_empty() {
        md.push_str("## 1. In-kernel cost per packet (BPF_PROG_TEST_RUN)\n\n");
        md.push_str(&kernel_md);
    }
    if !veth_md.is_empty() {
        md.push_str("## 2. Throughput across veth, native XDP\n\n");
        md.push_str(&veth_md);
    }
    if !scaling_md.is_empty() {
        md.push_str("## 2b. Two receive queues\n\n");
        md.push_str(&scaling_md);
    }
    if !sync_md.is_empty() {
        md.push_str("## 3. Registry sync\n\n");
        md.push_str(&sync_md);
    }
    if !events_md.is_empty() {
        md.push_str("## 4. Events under a flood\n\n");
        md.push_str(&events_md);
    }
    if !replay_md.is_empty() {
        md.push_str("## 5. `vpn-filter replay`\n\n");
        md.push_str(&replay_md);
    }
    if !verifier_md.is_empty() {
        md.push_str("## Verifier budget\n\n");
        md.push_str(&verifier_md);
    }
    // The fleet section is measured by the fleet test (tests/tests/fleet.rs) at full size, and
    // the accuracy section by `cargo xtask accuracy`, not by this run: carried over from the
    // file as they were.
    if let Ok(old) = std::fs::read_to_string(&args.out) {
        for heading in KEPT_SECTIONS {
            if let Some(start) = old.find(heading) {
                let rest = &old[start..];
                let end = rest[heading.len()..]
                    .find("\n## ")
                    .map_or(rest.len(), |i| i + heading.len() + 1);
                md.push('\n');
                md.push_str(rest[..end].trim_end());
                md.push_str("\n\n");
            }
        }
    }
    std::fs::write(&args.out, &md).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "bench: wrote {} in {:.0} s",
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    // The report is written either way; a section that broke fails the run (CI runs the
    // quick bench so it never rots), slow numbers never do.
    let failed = FAILED.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if !failed.is_empty() {
        anyhow::bail!(
            "these sections stopped early (see {}): {}",
            args.out.display(),
            failed.join(", ")
        );
    }
    Ok(())
}

/// The verifier's figures for both program variants (tests/tests/verifier_budget.rs holds
/// the same limits).
#[cfg(target_arch = "x86_64")]
fn verifier(md: &mut String, targets: &mut String, verify_secs: &mut Option<f64>) -> Result<()> {
    let stats = verifier_stats::measure()?;
    // Replay loads the Ethernet variant only: its time, not the slower of the two.
    *verify_secs = stats
        .iter()
        .find(|s| s.program == vpn_filter_common::PROGRAM_NAME)
        .and_then(|s| s.verification_us)
        .map(|us| us as f64 / 1e6);
    md.push_str(
        "Both program variants loaded through this kernel's verifier with `BPF_LOG_STATS`. \
         \"xlated\" is the program after the verifier's rewrites; \"processed\" is the \
         verifier's own work (its limit is 1,000,000); the frames are each subprogram's \
         stack, in the program's order; the deepest chain adds the frames along the call \
         path with the most stack, rounded as the verifier rounds them (its limit is 512 \
         bytes). `cargo xtask test` fails above 448 bytes or above its ceiling on processed \
         instructions (tests/tests/verifier_budget.rs).\n\n\
         | program | xlated insns | processed insns | verification time | subprogram frames (bytes) | deepest chain (subprograms) |\n\
         |---|---:|---:|---:|---|---:|\n",
    );
    for s in &stats {
        let frames: Vec<String> = s.stack_depths.iter().map(|d| d.to_string()).collect();
        md.push_str(&format!(
            "| `{}` | {} | {} | {} | {} | {} bytes (subprograms {}) |\n",
            s.program,
            util::count(s.xlated_insns as usize),
            util::count(s.processed_insns as usize),
            s.verification_us
                .map_or("—".into(), |us| format!("{:.2} s", us as f64 / 1e6)),
            frames.join("+"),
            s.deepest_chain,
            s.chain
                .iter()
                .map(|i| format!("#{i}, {} insns", s.lengths[*i]))
                .collect::<Vec<_>>()
                .join(" → ")
        ));
        targets.push_str(&format!(
            "| `{}`: stack along any call chain at most 448 bytes | {} bytes | {} |\n",
            s.program,
            s.deepest_chain,
            if s.deepest_chain > 448 {
                "missed"
            } else {
                "met"
            }
        ));
    }
    md.push('\n');
    Ok(())
}

#[cfg(not(target_arch = "x86_64"))]
fn verifier(md: &mut String, _targets: &mut String, _verify_secs: &mut Option<f64>) -> Result<()> {
    md.push_str("Not measured: the verifier log capture works on x86_64 only.\n\n");
    Ok(())
}

/// Headings of the sections other programs write (the fleet test, `cargo xtask accuracy`)
/// or that were measured by hand, kept across runs.
const KEPT_SECTIONS: [&str; 3] = [
    "## Issue 18: start-up and memory, measured by hand",
    "## Fleet: one feed server, many gateways",
    "## Accuracy: recall and false positives",
];

/// Sections that stopped with an error.
static FAILED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Runs one section; a failure is written into its part of the report (and the run goes on),
/// except Ctrl-C, which ends the run.
fn section(name: &str, md: &mut String, f: impl FnOnce(&mut String) -> Result<()>) -> Result<()> {
    if let Err(e) = f(md) {
        util::check_stop()?;
        eprintln!("bench: {name} failed: {e:#}");
        FAILED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(name.to_string());
        md.push_str(&format!(
            "\n**This section stopped early, so the tables above are incomplete or missing:** \
             {e:#}\n\n"
        ));
    }
    Ok(())
}

/// Why the ordinary-packet target is missed (the Targets table).
const ORDINARY_WHY: &str = "a pass-through program reads no byte; vpn-filter parses every \
     packet to its transport header (VLAN tags, IPv6 extension headers, fragments, tunnels: \
     skipping any of them is a bypass) and checks it against the small filters other rules \
     need on every packet (a closed pair's address bit, the fully-encrypted rule's UDP \
     conversation slot or TCP stream slot, the endpoint list's summary bit)";

/// Why a registered source's first packet costs more than twice an unregistered one's.
const REGISTERED_FIRST_WHY: &str = "a registered source's first packet misses in the flow \
     map, takes the full allowlist lookup and inserts a flow entry (in a full LRU table the \
     insert evicts one); an unregistered handshake is dropped on the allowlist's first level \
     and touches no flow entry. Later packets of the flow are judged by that entry \
     (revocation, confirmation)";

/// Why a registered flow's next packets cost more than 100 ns.
const REGISTERED_AGAIN_WHY: &str = "each of them is parsed and classified like any \
     handshake, then finds and updates its flow entry (a random bucket of a 262,144-entry \
     table, a cache miss when thousands of flows are live)";

/// Why replay starts in more than 0.3 s.
const REPLAY_WHY: &str = "replay runs the real program, which the kernel verifies at every \
     load; the verifier takes most of the start-up";

/// Why the handshake flood costs more than xdp-filter's exact-address lookup.
fn flood_why(classify_only: Option<f64>) -> String {
    let classify = classify_only.map_or(String::new(), |v| {
        format!(
            " (parse and classify alone: {} ns in section 1)",
            util::signed_ns(v)
        )
    });
    format!(
        "xdp-filter looks one address up in a hash; vpn-filter recognises the handshake in the \
         payload{classify}, asks the allowlist (prefixes, not exact addresses) and accounts \
         for every drop: counters and, once the CPU's event budget is spent, for the second's \
         first {} suppressed events the repeat-source filter's slot (a random access \
         into 16 MiB) that keeps a retrying source reported",
        util::count(vpn_filter_common::REPEAT_CHECKS_PER_SEC as usize)
    )
}

const METHOD: &str = "## Method\n\n\
- **In-kernel cost** (section 1): BPF_PROG_TEST_RUN of the real program against a \
pass-through program (`bench_pass`, returns XDP_PASS) loaded in the same process, calls \
interleaved (baseline, vpn-filter, vpn-filter, baseline, ...). A call with `repeat` > 1 \
replays one frame, which for a VPN class is a new flow only once and a flow-map hit after, so \
the many-sources columns run `bench_mutate` instead: it writes the next source address from a \
table of thousands into the frame (the kernel keeps the buffer across repeats) and tail-calls \
the program under test, so each run is a new flow from a different source, with caches as \
warm as under a steady flood. The same harness with `bench_pass` behind the tail call is the \
baseline, so the harness's cost cancels out of the difference. The classic one-frame figure \
(no harness, one flow) is given too. The kernel reports whole nanoseconds per run (the mean \
over the call); each figure is the median over rounds.\n\
- **Throughput** (section 2): generator netns -- vga <-> vbr -- receiver netns, one queue \
each; the program under test on vbr in native mode (`ip link` shows `xdp`). The generator is \
the project's own XDP program (`bench_gen`): one template frame given to BPF_PROG_TEST_RUN \
with live frames, each frame rewritten with a random source address and port (checksums \
fixed incrementally) and redirected out of vga, in one long call stopped by a signal. GRO on \
vbr (NAPI without a program), threaded NAPI, the `napi/vbr-*` thread pinned to the other CPU \
than the generator, both at nice -20. The receiving cost per packet is the NAPI thread's CPU \
time (schedstat) divided by the packets vbr received (its rx counter, which counts frames an \
XDP program dropped too); the receiving CPU's busy time from /proc/stat is given as a \
cross-check (it also counts anything else that ran on that CPU). On a shared 2-CPU VM the rate \
is capped by the generator or disturbed by other work; the CPU time per packet holds better. \
When the receiver is not saturated (NAPI busy well under 100%), its per-packet figure also \
carries the cost of waking up for small batches.\n\
- **Sync** (section 3): the controller's `Filter::sync_allowlist` on allowlists built in \
memory.\n\
- **Events** (section 4): the release controller under a flood of new unregistered flows \
sent through an AF_PACKET socket; its own counters and its CPU time from /proc.\n\
- **Replay** (section 5): the release `vpn-filter replay` on a synthetic pcap written by the \
bench; wall time of the process, start-up measured separately.\n\
- Medians everywhere; classes and variants are interleaved round by round, so slow phases of \
the shared VM hit every variant alike.\n\n\
Anchors (published): 10G line rate with 64-byte frames is 14.88 Mpps (67 ns/packet); XDP drop \
on one core 24 Mpps (41.6 ns, CoNEXT 2018); BPF LPM trie lookup 37 ns (1 entry) to 665 ns (1M \
entries, Cloudflare 2025); a spoofed flood misses the allowlist and pays the full walk.\n\n";
