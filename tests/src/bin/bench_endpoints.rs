//! Known-endpoint benchmarks (issue 17), printed as Markdown for BENCHMARKS.md:
//!
//! 1. Sync: `Filter::sync_endpoints` (what the controller calls when the endpoint feed
//!    changes) for 100,000 prefixes: full load into empty maps, a 1% change, the same set
//!    again, and emptying; plus parsing the same list as a text feed.
//! 2. Per-packet cost of the endpoint hook: BPF_PROG_TEST_RUN of one ordinary TCP frame
//!    (no VPN signature) repeated, against the pass-through program, with the endpoint maps
//!    empty, with 100,000 listed prefixes (destination's /24 not listed), with the
//!    destination's /24 listed but not the destination, and to a listed destination.
//!    `--baseline-object FILE` also times an XDP object built without the hook (e.g. the
//!    main branch's `target/ebpf/bpfel-unknown-none/release/vpn-filter-xdp`) on the same
//!    frame.
//!
//! Nothing is asserted: numbers are reported.

#[path = "../bench/util.rs"]
#[expect(
    dead_code,
    reason = "shared with the main benchmark; only part of it is used here"
)]
mod util;

use std::{
    net::{IpAddr, Ipv4Addr},
    os::fd::AsFd as _,
    path::PathBuf,
    process::ExitCode,
    time::Instant,
};

use anyhow::{anyhow, Context as _, Result};
use aya::{programs::Xdp, Ebpf, EbpfLoader};
use clap::Parser;
use vpn_filter::{
    endpoints::{EndpointFeed, EndpointFormatChoice, EndpointSet, ParseOptions},
    kernel::{Filter, LoadOptions, Policy, BENCH_OBJECT},
    registry::Prefix,
};
use vpn_filter_common::{Config, EndpointValue, PolicyMode, Protocol};
use vpn_filter_tests::packet::Frame;

#[derive(Parser)]
struct Args {
    /// Listed prefixes.
    #[arg(long, default_value_t = 100_000)]
    prefixes: usize,
    /// Runs per timing (the median is reported).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// BPF_PROG_TEST_RUN repeat count per timing.
    #[arg(long, default_value_t = 2_000_000)]
    repeat: u32,
    /// An XDP object without the endpoint hook, timed on the same ordinary frame.
    #[arg(long)]
    baseline_object: Option<PathBuf>,
}

/// A provider list like the real ones: mostly single servers (IPv4 /32, IPv6 /128 and /64),
/// some hosting ranges (/24../31, IPv6 /48), in 128.0.0.0/1 and 2000::/3.
fn generate(n: usize, seed: u64) -> EndpointSet {
    let mut rng = util::Rng::new(seed);
    let mut set = EndpointSet {
        providers: ["mullvad", "nordvpn", "proton", "tor", "warp"]
            .iter()
            .map(|s| (*s).into())
            .collect(),
        ..Default::default()
    };
    while set.prefixes.len() < n {
        let kind = rng.range(0, 99);
        let p = if kind < 80 {
            let len = if kind < 65 {
                32
            } else {
                rng.range(24, 31) as u8
            };
            let a = rng.next_u32() | 0x8000_0000;
            let mask = u32::MAX << (32 - len);
            Prefix::V4 {
                addr: (a & mask).to_be_bytes(),
                len,
            }
        } else {
            let len = [128u8, 64, 48][rng.range(0, 2) as usize];
            let a = (u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64())) >> 3 | 1 << 125;
            let mask = u128::MAX << (128 - len);
            Prefix::V6 {
                addr: (a & mask).to_be_bytes(),
                len,
            }
        };
        set.prefixes.insert(
            p,
            EndpointValue {
                provider: rng.range(1, 5) as u16,
                ..Default::default()
            },
        );
    }
    set
}

fn fresh() -> Result<Filter> {
    let mut p = Policy::default();
    p.set(Protocol::Endpoints, PolicyMode::Enforce);
    Filter::load(LoadOptions::default(), &p, &Config::default()).context("loading vpn-filter")
}

fn ms(s: f64) -> String {
    format!("{:.0} ms", s * 1e3)
}

fn sync_section(a: &Args, out: &mut String) -> Result<()> {
    let set = generate(a.prefixes, 0x17);
    let v4 = set.v4_count();
    // 1% of the prefixes replaced by others.
    let mut changed = set.clone();
    let drop: Vec<Prefix> = changed.prefixes.keys().step_by(100).copied().collect();
    for p in &drop {
        changed.prefixes.remove(p);
    }
    let extra = generate(drop.len() * 2, 0x99);
    for (p, v) in extra.prefixes.into_iter().take(drop.len()) {
        changed.prefixes.insert(p, v);
    }
    let mut rows: Vec<(String, Vec<f64>, vpn_filter::registry::sync::SyncReport)> = Vec::new();
    let mut full = Vec::new();
    let mut change = Vec::new();
    let mut same = Vec::new();
    let mut empty = Vec::new();
    let mut reports = [Default::default(); 4];
    for _ in 0..a.rounds {
        util::check_stop()?;
        let mut f = fresh()?;
        let t = Instant::now();
        reports[0] = f.sync_endpoints(&set)?;
        full.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        reports[1] = f.sync_endpoints(&changed)?;
        change.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        reports[2] = f.sync_endpoints(&changed)?;
        same.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        reports[3] = f.sync_endpoints(&EndpointSet::default())?;
        empty.push(t.elapsed().as_secs_f64());
    }
    for (i, (what, times)) in [
        ("full load into empty maps", full),
        ("1% replaced", change),
        ("the same set again", same),
        ("emptied", empty),
    ]
    .into_iter()
    .enumerate()
    {
        rows.push((what.to_string(), times, reports[i]));
    }
    // Parsing the same prefixes as a text feed (what the controller does before the sync).
    let text: String = set.prefixes.keys().map(|p| format!("{p}\n")).collect();
    let mut parse = Vec::new();
    for _ in 0..a.rounds {
        let t = Instant::now();
        let (feed, _) = EndpointFeed::parse(
            text.as_bytes(),
            "bench",
            EndpointFormatChoice::Text,
            &ParseOptions {
                provider: Some("bench".into()),
                allow_broad: false,
            },
        )?;
        parse.push(t.elapsed().as_secs_f64());
        assert_eq!(feed.set.len(), set.len(), "the text feed round-trips");
    }
    out.push_str(&format!(
        "### Endpoint list sync\n\n`Filter::sync_endpoints` on {} prefixes ({} IPv4, {} IPv6; 65% IPv4 /32, \
         15% IPv4 /24../31, IPv6 /128, /64, /48), median of {} runs, each on a freshly loaded \
         program. The set is built in memory beforehand; parsing it as a text feed is timed \
         separately.\n\n| operation | added | changed | removed | median | runs |\n|---|---:|---:|---:|---:|---|\n",
        set.len(),
        v4,
        set.len() - v4,
        a.rounds
    ));
    for (what, times, r) in rows {
        out.push_str(&format!(
            "| {what} | {} | {} | {} | {} | {} |\n",
            r.added,
            r.changed,
            r.removed,
            ms(util::median(times.clone())),
            times.iter().map(|t| ms(*t)).collect::<Vec<_>>().join(", ")
        ));
    }
    out.push_str(&format!(
        "| parse + validate the {}-line text feed | | | | {} | {} |\n\n",
        set.len(),
        ms(util::median(parse.clone())),
        parse.iter().map(|t| ms(*t)).collect::<Vec<_>>().join(", ")
    ));
    Ok(())
}

fn time_run(prog: &Xdp, frame: &[u8], repeat: u32) -> Result<(u32, f64)> {
    let r = vpn_filter::kernel::test_run::test_run(prog.fd()?.as_fd(), frame, repeat)
        .context("BPF_PROG_TEST_RUN")?;
    Ok((r.action, r.duration_ns as f64))
}

fn median_run(prog: &Xdp, frame: &[u8], a: &Args) -> Result<(u32, f64)> {
    let mut times = Vec::new();
    let mut action = 0;
    for _ in 0..a.rounds {
        let (act, ns) = time_run(prog, frame, a.repeat)?;
        action = act;
        times.push(ns);
    }
    Ok((action, util::median(times)))
}

fn ordinary(dst: Ipv4Addr) -> Vec<u8> {
    // An HTTP request segment: ordinary TCP with a payload, no VPN signature.
    Frame::eth()
        .ip(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)), IpAddr::V4(dst))
        .tcp(40000, 443)
        .payload(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n")
        .build()
}

fn cost_section(a: &Args, out: &mut String) -> Result<()> {
    let mut bench = EbpfLoader::new().load(BENCH_OBJECT)?;
    let pass: &mut Xdp = bench
        .program_mut("bench_pass")
        .ok_or_else(|| anyhow!("bench_pass"))?
        .try_into()?;
    pass.load()?;
    let pass: &Xdp = bench.program("bench_pass").unwrap().try_into()?;
    let unlisted = Ipv4Addr::new(93, 184, 215, 14);
    let frame = ordinary(unlisted);
    let (_, base) = median_run(pass, &frame, a)?;

    let mut rows: Vec<(String, u32, f64)> = Vec::new();
    let mut baseline_obj: Option<Ebpf> = None;
    if let Some(path) = &a.baseline_object {
        let mut e = EbpfLoader::new()
            .load_file(path)
            .with_context(|| format!("loading {}", path.display()))?;
        let p: &mut Xdp = e
            .program_mut(vpn_filter_common::PROGRAM_NAME)
            .ok_or_else(|| {
                anyhow!(
                    "no program {} in {}",
                    vpn_filter_common::PROGRAM_NAME,
                    path.display()
                )
            })?
            .try_into()?;
        p.load()?;
        baseline_obj = Some(e);
    }
    if let Some(e) = &baseline_obj {
        let p: &Xdp = e
            .program(vpn_filter_common::PROGRAM_NAME)
            .unwrap()
            .try_into()?;
        let (act, ns) = median_run(p, &frame, a)?;
        rows.push((
            format!(
                "object without the hook ({}), ordinary TCP",
                a.baseline_object.as_ref().unwrap().display()
            ),
            act,
            ns,
        ));
    }

    let mut f = fresh()?;
    let mut measure = |f: &mut Filter, what: &str, frame: &[u8]| -> Result<()> {
        let mut times = Vec::new();
        let mut action = 0;
        for _ in 0..a.rounds {
            let (act, ns) = time_run(f.program_mut(), frame, a.repeat)?;
            action = act;
            times.push(ns);
        }
        rows.push((what.to_string(), action, util::median(times)));
        Ok(())
    };
    measure(
        &mut f,
        "this branch, endpoint maps empty, ordinary TCP",
        &frame,
    )?;
    let set = generate(a.prefixes, 0x17);
    // The frame's destination must stay outside every listed /24.
    assert!(set.lookup(unlisted.into()).is_none() && unlisted.octets()[0] < 128);
    f.sync_endpoints(&set)?;
    measure(
        &mut f,
        &format!(
            "this branch, {} prefixes listed, destination's /24 not listed",
            set.len()
        ),
        &frame,
    )?;
    // A listed /32 and its /24 neighbour.
    let host = set
        .prefixes
        .iter()
        .find_map(|(p, _)| match p {
            Prefix::V4 { addr, len: 32 } => Some(Ipv4Addr::from(*addr)),
            _ => None,
        })
        .expect("the set has IPv4 hosts");
    let neighbour = Ipv4Addr::from(u32::from(host) ^ 1);
    if set.lookup(neighbour.into()).is_none() {
        measure(
            &mut f,
            "this branch, destination's /24 listed, destination not (trie miss)",
            &ordinary(neighbour),
        )?;
    }
    measure(
        &mut f,
        "this branch, listed destination, unregistered client (allowlist lookups, drop; events rate-limited)",
        &ordinary(host),
    )?;

    out.push_str(&format!(
        "### Endpoint hook, per-packet cost\n\nBPF_PROG_TEST_RUN of one frame (an HTTP request \
         segment: TCP, no VPN signature) repeated {} times per call, median of {} calls. The \
         pass-through program takes {:.1} ns per run; the columns are ns per run and ns above \
         it.\n\n| program and maps | action | ns/packet | above pass-through |\n|---|---|---:|---:|\n",
        a.repeat,
        a.rounds,
        base
    ));
    for (what, act, ns) in rows {
        let action = match act {
            1 => "drop",
            2 => "pass",
            _ => "other",
        };
        out.push_str(&format!(
            "| {what} | {action} | {ns:.1} | {:.1} |\n",
            ns - base
        ));
    }
    out.push('\n');
    Ok(())
}

fn main() -> ExitCode {
    let a = Args::parse();
    vpn_filter_tests::require_root();
    util::install_stop_handler();
    let m = util::Machine::describe();
    let mut out = format!(
        "## Known endpoints (issue 17)\n\n`cargo run --release -p vpn-filter-tests --bin vpn-filter-bench-endpoints`, {} UTC, \
         kernel {}, {} ({} CPUs), {:.1} GiB; load average before: {}.\n\n",
        m.date,
        m.kernel,
        m.cpu,
        m.cpus,
        m.memory_gib,
        util::load_average()
    );
    let r = sync_section(&a, &mut out).and_then(|()| cost_section(&a, &mut out));
    print!("{out}");
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
