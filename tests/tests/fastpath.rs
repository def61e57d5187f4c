//! The allowlist fast path (vpn-filter/src/kernel/fastpath.rs) against the LPM tries, in the kernel
//! through BPF_PROG_TEST_RUN: a WireGuard initiation is dropped iff neither endpoint is
//! registered, so the action is the program's answer to "is this address registered?".
//!
//! Every query runs once per lookup mode (trie, fast, bitmap+trie), each on its own flow (the
//! source port differs), and the answers are compared with each other and with the
//! controller's own `Allowlist::lookup`.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd as _, OwnedFd},
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
        Arc,
    },
};

use vpn_filter::{
    kernel::{Filter, LoadOptions, Policy},
    registry::{AllowedBy, Allowlist, Prefix},
};
use vpn_filter_common::{AllowlistLookup, Config};
use vpn_filter_tests::packet::{wireguard_initiation, Frame};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// Numbers the flows: each query's peer is a new address outside every generated prefix
/// (0.0.0.0/1 and 100::/8, where generated prefixes all lie in 128.0.0.0/1 and 8000::/1), so
/// every query is a new flow and no verdict comes from the flow cache.
static NEXT_FLOW: AtomicU32 = AtomicU32::new(1);

const MODES: [AllowlistLookup; 3] = [
    AllowlistLookup::Trie,
    AllowlistLookup::Fast,
    AllowlistLookup::BitmapTrie,
];

/// Reproducible pseudo-random numbers from a seed (the tests' one generator).
struct Rng(rand_pcg::Pcg64);

impl Rng {
    fn next(&mut self) -> u64 {
        vpn_filter_tests::rng::next_u64(&mut self.0)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn v4_prefix(addr: u32, len: u8) -> Prefix {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Prefix::V4 {
        addr: (addr & mask).to_be_bytes(),
        len,
    }
}

fn v6_prefix(addr: u128, len: u8) -> Prefix {
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    };
    Prefix::V6 {
        addr: (addr & mask).to_be_bytes(),
        len,
    }
}

/// First and last address of a prefix.
fn bounds(p: &Prefix) -> (IpAddr, IpAddr) {
    match *p {
        Prefix::V4 { addr, len } => {
            let a = u32::from_be_bytes(addr);
            let host = u32::MAX.checked_shr(len.into()).unwrap_or(0);
            (Ipv4Addr::from(a).into(), Ipv4Addr::from(a | host).into())
        }
        Prefix::V6 { addr, len } => {
            let a = u128::from_be_bytes(addr);
            let host = u128::MAX.checked_shr(len.into()).unwrap_or(0);
            (Ipv6Addr::from(a).into(), Ipv6Addr::from(a | host).into())
        }
    }
}

fn allowlist(prefixes: impl IntoIterator<Item = Prefix>) -> Allowlist {
    let by = AllowedBy {
        id: Arc::from("TEST"),
        tag: 1,
    };
    Allowlist {
        prefixes: prefixes
            .into_iter()
            .map(|p| (p, by.clone()))
            .collect::<BTreeMap<_, _>>(),
    }
}

/// A random prefix that never covers the peers (nothing under 1.0.0.0 or 2000::).
fn random_v4(rng: &mut Rng, broad: bool) -> Prefix {
    let len = if broad {
        rng.below(33) as u8
    } else {
        (8 + rng.below(25)) as u8
    };
    let addr = (rng.next() as u32) | 0x8000_0000;
    v4_prefix(addr, len.max(1))
}

fn random_v6(rng: &mut Rng, lengths: &[u8]) -> Prefix {
    let len = lengths[rng.below(lengths.len() as u64) as usize];
    let addr = (u128::from(rng.next()) << 64 | u128::from(rng.next())) | 1 << 127;
    v6_prefix(addr, len.max(1))
}

fn load() -> Filter {
    load_with_flows(1 << 20)
}

fn load_with_flows(flow_entries: u32) -> Filter {
    vpn_filter_tests::require_root();
    let options = LoadOptions {
        flow_entries,
        ..LoadOptions::default()
    };
    Filter::load(options, &Policy::default(), &Config::default())
        .expect("the program loads through the verifier")
}

fn set_mode(filter: &mut Filter, mode: AllowlistLookup) {
    filter
        .set_config(&Config {
            allowlist_lookup: mode as u32,
            ..Config::default()
        })
        .expect("CONFIG written");
}

/// A WireGuard initiation from `addr` to a new unregistered peer of its family (IPv4-mapped
/// sources go to an IPv6 peer): a new flow.
fn initiation(addr: IpAddr) -> Vec<u8> {
    let n = NEXT_FLOW.fetch_add(1, Ordering::Relaxed);
    assert!(n < 1 << 31, "flow numbers stay inside 0.0.0.0/1");
    let peer: IpAddr = match addr {
        IpAddr::V4(_) => Ipv4Addr::from(n).into(),
        IpAddr::V6(_) => Ipv6Addr::from(1u128 << 120 | u128::from(n)).into(),
    };
    Frame::eth()
        .ip(addr, peer)
        .udp(40000, 51820)
        .payload(&wireguard_initiation(n))
        .build()
}

/// Is `addr` registered, by the program's verdict (a new flow each call)?
fn registered(filter: &Filter, addr: IpAddr) -> bool {
    match filter
        .run_frame(&initiation(addr))
        .expect("BPF_PROG_TEST_RUN")
    {
        XDP_PASS => true,
        XDP_DROP => false,
        a => panic!("unexpected XDP action {a} for {addr}"),
    }
}

/// The queries for a prefix set: each prefix's bounds and their neighbours, random addresses,
/// and the IPv4-mapped form of every IPv4 one.
fn queries(rng: &mut Rng, allow: &Allowlist, random: usize) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for p in allow.prefixes.keys() {
        let (first, last) = bounds(p);
        out.push(first);
        out.push(last);
        match (first, last) {
            (IpAddr::V4(f), IpAddr::V4(l)) => {
                out.push(Ipv4Addr::from(u32::from(f).wrapping_sub(1)).into());
                out.push(Ipv4Addr::from(u32::from(l).wrapping_add(1)).into());
            }
            (IpAddr::V6(f), IpAddr::V6(l)) => {
                out.push(Ipv6Addr::from(u128::from(f).wrapping_sub(1)).into());
                out.push(Ipv6Addr::from(u128::from(l).wrapping_add(1)).into());
            }
            _ => unreachable!("a prefix's bounds share its family"),
        }
    }
    for _ in 0..random {
        out.push(Ipv4Addr::from(rng.next() as u32 | 0x8000_0000).into());
        let hi = rng.next() | 1 << 63;
        out.push(Ipv6Addr::from(u128::from(hi) << 64 | u128::from(rng.next())).into());
    }
    let mapped: Vec<IpAddr> = out
        .iter()
        .filter_map(|a| match a {
            IpAddr::V4(v4) => Some(IpAddr::V6(v4.to_ipv6_mapped())),
            IpAddr::V6(_) => None,
        })
        .collect();
    out.extend(mapped);
    out
}

/// Syncs `allow`, then judges every query in every mode; panics on the first disagreement.
fn check_equivalence(
    filter: &mut Filter,
    rng: &mut Rng,
    allow: &Allowlist,
    random: usize,
    round: &str,
) {
    filter.sync_allowlist(allow).expect("sync");
    let qs = queries(rng, allow, random);
    let mut answers: Vec<Vec<bool>> = Vec::new();
    for mode in MODES {
        set_mode(filter, mode);
        answers.push(qs.iter().map(|a| registered(filter, *a)).collect());
    }
    let mut registered_seen = 0;
    for (i, a) in qs.iter().enumerate() {
        let model = allow.lookup(*a).is_some();
        registered_seen += usize::from(model);
        for (m, mode) in MODES.iter().enumerate() {
            assert_eq!(
                answers[m][i],
                model,
                "{round}: {a} is {} by the allowlist but the {} lookup says {}",
                if model { "registered" } else { "unregistered" },
                mode.name(),
                answers[m][i]
            );
        }
    }
    assert!(
        registered_seen > 0 && registered_seen < qs.len(),
        "{round}: the queries cover both answers ({registered_seen} of {} registered)",
        qs.len()
    );
}

#[test]
fn fast_lookups_answer_like_the_trie_for_random_prefix_sets_and_their_edges() {
    let mut filter = load();
    let mut rng = Rng(vpn_filter_tests::rng::seeded(0x5eed_0001));
    // Each round replaces the previous set on the same maps: the sync's removals are checked
    // too, not only fresh fills.
    for round in 0..8 {
        let v6_lengths: Vec<u8> = match round % 3 {
            // Registered IPv6 is mostly /32../64.
            0 => vec![32, 36, 40, 44, 48, 56, 64],
            // Every length: more than the fast path probes, IPv6 falls back to the trie.
            1 => (1..=128).collect(),
            _ => vec![1, 7, 29, 63, 64, 65, 96, 127, 128],
        };
        let mut prefixes = Vec::new();
        for _ in 0..150 {
            prefixes.push(random_v4(&mut rng, round % 2 == 1));
            prefixes.push(random_v6(&mut rng, &v6_lengths));
        }
        let allow = allowlist(prefixes);
        check_equivalence(
            &mut filter,
            &mut rng,
            &allow,
            400,
            &format!("round {round}"),
        );
    }
}

#[test]
fn fast_lookups_answer_like_the_trie_at_every_prefix_length() {
    let mut filter = load();
    let mut rng = Rng(vpn_filter_tests::rng::seeded(0x5eed_0002));
    // /1../32 and /1../128 (a /0 would register the peers too), one set per length so every
    // length is probed alone, with its neighbours registered or not.
    for len in 1..=32u8 {
        let base = 0x8000_0000 | rng.next() as u32;
        let allow = allowlist([v4_prefix(base, len), v6_prefix(1 << 127, len.min(16))]);
        check_equivalence(&mut filter, &mut rng, &allow, 40, &format!("IPv4 /{len}"));
    }
    for len in 1..=128u8 {
        let base = 1 << 127 | u128::from(rng.next()) << 64 | u128::from(rng.next());
        let allow = allowlist([v6_prefix(base, len), v4_prefix(0x8000_0000, 24)]);
        check_equivalence(&mut filter, &mut rng, &allow, 40, &format!("IPv6 /{len}"));
    }
}

#[test]
fn a_zero_length_prefix_registers_every_address_in_every_mode() {
    let mut filter = load();
    let allow = allowlist([v4_prefix(0, 0), v6_prefix(0, 0)]);
    filter.sync_allowlist(&allow).expect("sync");
    let mut rng = Rng(vpn_filter_tests::rng::seeded(0x5eed_0003));
    let qs = queries(&mut rng, &allow, 50);
    for mode in MODES {
        set_mode(&mut filter, mode);
        for a in &qs {
            assert!(
                registered(&filter, *a),
                "{a} is inside 0.0.0.0/0 and ::/0 but the {} lookup dropped it",
                mode.name()
            );
        }
    }
}

/// BPF_PROG_TEST_RUN on a program fd, usable from another thread than the `Filter`'s owner
/// (the sync holds `&mut Filter`).
fn test_run(prog: &OwnedFd, frame: &[u8]) -> u32 {
    vpn_filter::kernel::test_run::test_run(prog.as_fd(), frame, 1)
        .expect("BPF_PROG_TEST_RUN")
        .action
}

#[test]
fn a_large_update_never_shows_a_still_registered_address_as_unregistered() {
    // A small flow map: after its removals the sync walks the flows (revoked registrations),
    // and the prober adds one per frame; a small LRU keeps that walk short.
    let mut filter = load_with_flows(4096);
    let mut rng = Rng(vpn_filter_tests::rng::seeded(0x5eed_0004));
    let mut old = Vec::new();
    for _ in 0..50_000 {
        old.push(random_v4(&mut rng, false));
        old.push(random_v6(&mut rng, &[32, 40, 48, 56, 64]));
    }
    let old = allowlist(old);
    let started = std::time::Instant::now();
    filter.sync_allowlist(&old).expect("first sync");
    eprintln!("first sync: {:?}", started.elapsed());
    // The new set keeps every other prefix, drops the rest, adds as many new ones: ~100k
    // changes, with bitmap words, hash entries and lengths all moving.
    let kept: Vec<Prefix> = old.prefixes.keys().copied().step_by(2).collect();
    let mut new = kept.clone();
    for _ in 0..25_000 {
        new.push(random_v4(&mut rng, false));
        new.push(random_v6(&mut rng, &[33, 47, 48, 60, 64, 128]));
    }
    let new = allowlist(new);
    // Probe addresses: the bounds of kept prefixes (registered before, during and after).
    let probes: Vec<IpAddr> = kept
        .iter()
        .flat_map(|p| {
            let (f, l) = bounds(p);
            [f, l]
        })
        .collect();
    let prog = filter
        .program_mut()
        .fd()
        .expect("program fd")
        .as_fd()
        .try_clone_to_owned()
        .expect("dup the program fd");
    let done = Arc::new(AtomicBool::new(false));
    let judged = Arc::new(AtomicU64::new(0));
    let prober = {
        let (done, judged) = (done.clone(), judged.clone());
        std::thread::spawn(move || {
            let mut i = 0usize;
            while !done.load(Ordering::Relaxed) {
                let a = probes[i % probes.len()];
                let action = test_run(&prog, &initiation(a));
                if action != XDP_PASS {
                    return Err(format!(
                        "{a} stays registered but was judged unregistered (action {action}) during the update"
                    ));
                }
                judged.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            Ok(())
        })
    };
    let started = std::time::Instant::now();
    let report = filter.sync_allowlist(&new).expect("second sync");
    eprintln!("second sync: {:?}, {report:?}", started.elapsed());
    done.store(true, Ordering::Relaxed);
    prober
        .join()
        .expect("prober thread")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        report.added > 40_000 && report.removed > 40_000,
        "the update was large: {report:?}"
    );
    assert!(
        judged.load(Ordering::Relaxed) > 1_000,
        "frames were judged while the sync ran ({})",
        judged.load(Ordering::Relaxed)
    );
}

/// `FAST_SUMMARY` (one bit per IPv4 /16) is read before the IPv4 bitmaps; maps pinned by a
/// build without it get a new, empty one next to the reused bitmaps and tries, and an empty
/// summary says "not registered" for every IPv4 source. The next controller's first sync
/// reads the summary the kernel holds (not one derived from the bitmaps) and fills it, so a
/// registered source passes again. Its pin is removed here to make that case.
#[test]
fn a_summary_created_next_to_pinned_fast_maps_is_filled_by_the_first_sync() {
    vpn_filter_tests::require_root();
    let dir = vpn_filter_tests::netns::BpfFsDir::new("fast-summary");
    let pins = || vpn_filter::kernel::pin::PinDir::new(dir.path());
    let load = || {
        Filter::load_pinned(
            LoadOptions::default(),
            &Policy::default(),
            &Config::default(),
            pins(),
        )
        .expect("the program loads")
    };
    let allow = allowlist([v4_prefix(0x8a10_0700, 24), v4_prefix(0x8a20_0309, 32)]);
    let sources: [IpAddr; 2] = ["138.16.7.9".parse().unwrap(), "138.32.3.9".parse().unwrap()];
    {
        let (mut filter, reused) = load();
        assert_eq!(reused, 0);
        filter.sync_allowlist(&allow).unwrap();
        for s in sources {
            assert!(registered(&filter, s), "{s} registered after the sync");
        }
    }
    let summary_pin = pins().map_path(vpn_filter_common::maps::FAST_SUMMARY);
    std::fs::remove_file(&summary_pin)
        .unwrap_or_else(|e| panic!("removing {}: {e}", summary_pin.display()));
    let (mut filter, reused) = load();
    assert!(reused > 0, "the other maps are reused");
    for s in sources {
        assert!(
            !registered(&filter, s),
            "{s}: the new summary is empty until the first sync (the case is made)"
        );
    }
    let report = filter.sync_allowlist(&allow).unwrap();
    assert!(report.read_kernel, "the first sync reads the kernel's maps");
    for s in sources {
        assert!(
            registered(&filter, s),
            "{s} registered after the first sync"
        );
    }
}
