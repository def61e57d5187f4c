//! Allowlist lookup cost under a flood of spoofed handshakes: every frame is a WireGuard
//! initiation from a new random unregistered source (a new flow, so a full allowlist lookup of
//! both endpoints), judged through BPF_PROG_TEST_RUN with the allowlist in each lookup mode
//! (`Config::allowlist_lookup`), against the `bench_pass` program in the same process.
//!
//! A second baseline is the same program with an empty allowlist (its lookups find an empty
//! trie at once): the "lookup" column is a mode's cost over it, the allowlist's share of the
//! verdict. Modes and the baselines run interleaved in rounds; each round's value is the mean of the
//! kernel-measured duration over a batch of frames, the table shows the median over rounds.
//! Run as root, in release: `cargo run --release -p vpn-filter-tests --bin
//! vpn-filter-bench-lookup`. Prints a markdown table.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd as _, OwnedFd},
    sync::Arc,
};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{programs::Xdp, EbpfLoader};
use clap::Parser;
use vpn_filter::{
    kernel::{Filter, LoadOptions, Policy, BENCH_OBJECT},
    registry::{AllowedBy, Allowlist, Prefix},
};
use vpn_filter_common::{AllowlistLookup, Config};
use vpn_filter_tests::packet::{wireguard_initiation, Frame};

#[derive(Parser)]
struct Args {
    /// Allowlist sizes (prefixes, 80 % IPv4 / 20 % IPv6).
    #[arg(long, value_delimiter = ',', default_value = "20000,1000000")]
    sizes: Vec<usize>,
    /// Interleaved rounds per size and family.
    #[arg(long, default_value_t = 15)]
    rounds: usize,
    /// Frames per mode per round.
    #[arg(long, default_value_t = 2000)]
    batch: usize,
}

/// Reproducible pseudo-random numbers from a seed (the tests' one generator).
struct Rng(rand_pcg::Pcg64);

impl Rng {
    fn next(&mut self) -> u64 {
        vpn_filter_tests::rng::next_u64(&mut self.0)
    }

    fn pick<T: Copy>(&mut self, weighted: &[(u32, T)]) -> T {
        let total: u32 = weighted.iter().map(|(w, _)| w).sum();
        let mut r = (self.next() % u64::from(total)) as u32;
        for (w, v) in weighted {
            if r < *w {
                return *v;
            }
            r -= w;
        }
        weighted[weighted.len() - 1].1
    }
}

/// A registry-like mix: IPv4 mostly /24 with /32 hosts and some shorter and longer
/// allocations; IPv6 mostly /48 with /32, /56, /64.
fn allowlist(n: usize, rng: &mut Rng) -> Allowlist {
    let by = AllowedBy {
        id: Arc::from("BENCH"),
        tag: 1,
    };
    let mut prefixes = BTreeMap::new();
    let v4_target = n * 4 / 5;
    while prefixes.len() < v4_target {
        let len: u8 = rng.pick(&[
            (55, 24),
            (8, 23),
            (7, 22),
            (3, 20),
            (2, 16),
            (15, 32),
            (3, 28),
            (2, 29),
            (5, 30),
        ]);
        // Unicast space above 1.0.0.0 (the peers live in 0.0.0.0/8).
        let addr = (rng.next() as u32).max(1 << 24);
        let mask = u32::MAX << (32 - len);
        prefixes.insert(
            Prefix::V4 {
                addr: (addr & mask).to_be_bytes(),
                len,
            },
            by.clone(),
        );
    }
    while prefixes.len() < n {
        let len: u8 = rng.pick(&[(15, 32), (5, 40), (50, 48), (15, 56), (15, 64)]);
        // Global unicast 2000::/3.
        let addr = (u128::from(rng.next()) << 64 | u128::from(rng.next())) >> 3 | 1 << 125;
        let mask = u128::MAX << (128 - len);
        prefixes.insert(
            Prefix::V6 {
                addr: (addr & mask).to_be_bytes(),
                len,
            },
            by.clone(),
        );
    }
    Allowlist { prefixes }
}

/// BPF_PROG_TEST_RUN once; returns (action, kernel-measured duration in ns).
fn test_run(prog: &OwnedFd, frame: &[u8]) -> Result<(u32, u32)> {
    let run = vpn_filter::kernel::test_run::test_run(prog.as_fd(), frame, 1)
        .context("BPF_PROG_TEST_RUN")?;
    Ok((run.action, run.duration_ns))
}

#[derive(Clone, Copy, PartialEq)]
enum Family {
    V4,
    V6,
}

/// A new unregistered source each call, to a fixed unregistered server.
struct Flood<'a> {
    rng: Rng,
    allow: &'a Allowlist,
    family: Family,
    n: u32,
}

impl Flood<'_> {
    fn frame(&mut self) -> Vec<u8> {
        self.n += 1;
        loop {
            let (src, dst): (IpAddr, IpAddr) = match self.family {
                Family::V4 => (
                    Ipv4Addr::from((self.rng.next() as u32).max(1 << 24)).into(),
                    Ipv4Addr::new(0, 0, 0, 1).into(),
                ),
                Family::V6 => (
                    Ipv6Addr::from(
                        (u128::from(self.rng.next()) << 64 | u128::from(self.rng.next())) >> 3
                            | 1 << 125,
                    )
                    .into(),
                    Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 1).into(),
                ),
            };
            if self.allow.lookup(src).is_some() {
                continue;
            }
            return Frame::eth()
                .ip(src, dst)
                .udp(40000, 51820)
                .payload(&wireguard_initiation(self.n))
                .build();
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let args = Args::parse();
    if unsafe { libc::geteuid() } != 0 {
        bail!("run as root: BPF_PROG_TEST_RUN needs CAP_BPF/CAP_SYS_ADMIN");
    }
    let mut bench = EbpfLoader::new()
        .load(BENCH_OBJECT)
        .context("loading the benchmark object")?;
    let pass: &mut Xdp = bench
        .program_mut("bench_pass")
        .ok_or_else(|| anyhow!("bench_pass missing"))?
        .try_into()?;
    pass.load()?;
    let pass_fd = pass.fd()?.as_fd().try_clone_to_owned()?;

    let modes = [
        AllowlistLookup::Trie,
        AllowlistLookup::BitmapTrie,
        AllowlistLookup::Fast,
    ];
    println!(
        "| prefixes | sources | lookup mode | ns/packet (median) | over pass-through (ns) | lookup (ns over empty allowlist) | lookup vs trie |"
    );
    println!("|---:|---|---|---:|---:|---:|---:|");
    let mut rng = Rng(vpn_filter_tests::rng::seeded(0xbe7c_0001));
    for &size in &args.sizes {
        let allow = allowlist(size, &mut rng);
        let options = LoadOptions {
            allow_v4_entries: (size as u32).max(1024),
            allow_v6_entries: (size as u32 / 4).max(1024),
            ..LoadOptions::default()
        };
        let config = Config {
            // One event per CPU per second: the flood's cost is the verdict, not the ring.
            events_per_cpu_per_sec: 1,
            ..Config::default()
        };
        let mut filter = Filter::load(options, &Policy::default(), &config)?;
        let started = std::time::Instant::now();
        filter.sync_allowlist(&allow)?;
        eprintln!(
            "{size} prefixes synced in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let prog = filter.program_mut().fd()?.as_fd().try_clone_to_owned()?;
        let mut empty = Filter::load(
            options,
            &Policy::default(),
            &Config {
                allowlist_lookup: AllowlistLookup::Trie as u32,
                ..config
            },
        )?;
        empty.sync_allowlist(&Allowlist::default())?;
        let empty_fd = empty.program_mut().fd()?.as_fd().try_clone_to_owned()?;
        for family in [Family::V4, Family::V6] {
            let mut flood = Flood {
                rng: Rng(vpn_filter_tests::rng::seeded(rng.next())),
                allow: &allow,
                family,
                n: 0,
            };
            // Per mode (0 = pass-through, 1 = empty allowlist, then `modes`): one mean per
            // round.
            let mut means = vec![Vec::new(); modes.len() + 2];
            for _ in 0..args.rounds {
                for slot in 0..modes.len() + 2 {
                    let frames: Vec<Vec<u8>> = (0..args.batch).map(|_| flood.frame()).collect();
                    let fd = match slot {
                        0 => &pass_fd,
                        1 => &empty_fd,
                        _ => {
                            filter.set_config(&Config {
                                allowlist_lookup: modes[slot - 2] as u32,
                                ..config
                            })?;
                            &prog
                        }
                    };
                    let mut total = 0u64;
                    for f in &frames {
                        let (action, ns) = test_run(fd, f)?;
                        if slot > 0 && action != 1 {
                            bail!(
                                "an unregistered WireGuard initiation was not dropped ({action})"
                            );
                        }
                        total += u64::from(ns);
                    }
                    means[slot].push(total as f64 / args.batch as f64);
                }
            }
            let fam = if family == Family::V4 { "IPv4" } else { "IPv6" };
            let base = median(&mut means[0]);
            let no_lookup = median(&mut means[1]);
            let trie = median(&mut means[2]) - no_lookup;
            for (i, mode) in modes.iter().enumerate() {
                let m = median(&mut means[i + 2]);
                let lookup = m - no_lookup;
                println!(
                    "| {size} | {fam} | {} | {m:.0} | {:.0} | {lookup:.0} | {:.2} |",
                    mode.name(),
                    m - base,
                    lookup / trie
                );
            }
            println!(
                "| {size} | {fam} | (empty allowlist) | {no_lookup:.0} | {:.0} | 0 | |",
                no_lookup - base
            );
            println!("| {size} | {fam} | (pass-through) | {base:.0} | 0 | | |");
        }
    }
    Ok(())
}
