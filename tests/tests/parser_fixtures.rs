//! Issue 14's property test: every real-client fixture (tests/fixtures/*.pcap), transformed
//! the way a network or an adversary's stack can transform it without changing what the
//! receiver gets, is judged as the original. Per flow (the 5-tuple of the original frames)
//! the verdict (dropped or not, and by which protocol's rule) must equal the unmodified
//! fixture's.
//!
//! One test per transformation, so each merges with its kernel side: TCP re-segmentation,
//! IP fragmentation, each encapsulation, IPv6 extension headers. Random choices come from a
//! seeded generator; the seed is printed and can be set with `PARSER_SEED`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    net::IpAddr,
    path::PathBuf,
};

use pcap_file::pcap::PcapReader;
use rand_core::{Rng as _, SeedableRng as _};
use vpn_filter_common::{Protocol, Verdict, MIN_FIRST_FRAGMENT_PAYLOAD};
use vpn_filter_tests::{
    judge::{load, run},
    mangle::{
        fragment, insert_ext_headers, ip_packet, l3, split_tcp, tcp_payload, transport,
        transport_header_len, Encap, GreFields, ETH_P_9100,
    },
    packet::{Ext, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV6, IPPROTO_TCP, IPPROTO_UDP},
};

type Rng = rand_pcg::Pcg64;

fn seed() -> u64 {
    let seed = std::env::var("PARSER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x0014_f1c5);
    eprintln!("PARSER_SEED={seed}");
    seed
}

fn fixtures() -> Vec<(String, Vec<Vec<u8>>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("fixtures directory")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .filter(|n| n.ends_with(".pcap"))
        .collect();
    names.sort();
    assert!(names.len() >= 13, "fixtures: {names:?}");
    names
        .into_iter()
        .map(|name| {
            let file = File::open(dir.join(&name)).expect("open fixture");
            let mut reader = PcapReader::new(file).expect("a pcap");
            let mut frames = Vec::new();
            while let Some(p) = reader.next_packet() {
                frames.push(p.expect("a packet").data.into_owned());
            }
            (name, frames)
        })
        .collect()
}

/// A flow: protocol number and the two endpoints, in order.
type FlowKey = (u8, (IpAddr, u16), (IpAddr, u16));

fn flow_key(frame: &[u8]) -> Option<FlowKey> {
    let packet = ip_packet(frame)?;
    let (src, dst): (IpAddr, IpAddr) = match packet[0] >> 4 {
        4 => (
            <[u8; 4]>::try_from(&packet[12..16]).ok()?.into(),
            <[u8; 4]>::try_from(&packet[16..20]).ok()?.into(),
        ),
        _ => (
            <[u8; 16]>::try_from(&packet[8..24]).ok()?.into(),
            <[u8; 16]>::try_from(&packet[24..40]).ok()?.into(),
        ),
    };
    let (l4, proto) = transport(frame);
    let ports = |at: usize| u16::from_be_bytes([frame[at], frame[at + 1]]);
    let (sp, dp) = match proto {
        IPPROTO_TCP | IPPROTO_UDP => (ports(l4), ports(l4 + 2)),
        _ => (0, 0),
    };
    let (a, b) = ((src, sp), (dst, dp));
    Some(if a <= b { (proto, a, b) } else { (proto, b, a) })
}

/// Per flow: the first original frame (1-based) of which something was dropped, and the
/// protocols whose dropped counters moved.
type Verdicts = BTreeMap<FlowKey, (Option<usize>, BTreeSet<Protocol>)>;

/// Runs each original frame's transformed frames (in order) through a fresh filter and
/// collects the verdict of each original frame's flow.
fn judge(frames: &[Vec<u8>], transform: &mut dyn FnMut(&[u8]) -> Vec<Vec<u8>>) -> Verdicts {
    let filter = load();
    let mut verdicts = Verdicts::new();
    for (i, original) in frames.iter().enumerate() {
        let key = flow_key(original);
        for frame in transform(original) {
            let got = run(&filter, &frame);
            let Some(key) = key else { continue };
            let v = verdicts.entry(key).or_default();
            if got.dropped() && v.0.is_none() {
                v.0 = Some(i + 1);
            }
            v.1.extend(
                got.verdicts
                    .iter()
                    .filter(|(_, verdict, _)| *verdict == Verdict::Dropped)
                    .map(|(p, _, _)| *p),
            );
        }
    }
    verdicts
}

/// Each fixture with its frames and its unmodified per-flow verdicts.
fn originals() -> Vec<(String, Vec<Vec<u8>>, Verdicts)> {
    let all: Vec<_> = fixtures()
        .into_iter()
        .map(|(name, frames)| {
            let verdicts = judge(&frames, &mut |f| vec![f.to_vec()]);
            (name, frames, verdicts)
        })
        .collect();
    let dropped_flows: usize = all
        .iter()
        .map(|(_, _, v)| v.values().filter(|v| v.0.is_some()).count())
        .sum();
    assert!(dropped_flows >= 13, "every fixture has a dropped flow");
    all
}

/// The fixtures whose transformed per-flow verdicts differ from the original's; `what`
/// names the transformation in the messages.
fn differing(
    originals: &[(String, Vec<Vec<u8>>, Verdicts)],
    what: &str,
    transform: &mut dyn FnMut(&[u8]) -> Vec<Vec<u8>>,
) -> Vec<String> {
    let mut failures = Vec::new();
    for (name, frames, original) in originals {
        let transformed = judge(frames, transform);
        if transformed != *original {
            failures.push(format!(
                "  {name}: original {original:?}\n  {what}: {transformed:?}"
            ));
        }
    }
    failures
}

fn assert_same(what: &str, failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{} fixtures judged differently {what}:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Every fixture, transformed, must give the original's per-flow verdicts.
fn same_verdicts(what: &str, transform: &mut dyn FnMut(&[u8]) -> Vec<Vec<u8>>) {
    assert_same(what, differing(&originals(), what, transform));
}

#[test]
fn fixtures_resegmented_at_random_positions_get_their_verdicts() {
    let mut rng = Rng::seed_from_u64(seed());
    same_verdicts("re-segmented", &mut |frame| {
        if flow_key(frame).is_none_or(|k| k.0 != IPPROTO_TCP) {
            return vec![frame.to_vec()];
        }
        let len = tcp_payload(frame).len();
        if len < 2 {
            return vec![frame.to_vec()];
        }
        // One to three cuts, all within the first 64 bytes (where the rules look).
        let limit = len.min(64);
        let mut cuts: Vec<usize> = (0..1 + rng.next_u32() % 3)
            .map(|_| 1 + (rng.next_u32() as usize) % (limit - 1))
            .collect();
        cuts.sort_unstable();
        cuts.dedup();
        split_tcp(frame, &cuts)
    });
}

/// Random fragment sizes for a frame whose fragmentable part is `data_len` bytes with an
/// `l4_header`-byte transport header: the first carries at least 64 bytes of payload, the
/// others at least 8; `None` when the datagram is too small to be fragmented so.
fn fragment_sizes(rng: &mut Rng, data_len: usize, l4_header: usize) -> Option<Vec<usize>> {
    let min_first = (l4_header + MIN_FIRST_FRAGMENT_PAYLOAD as usize).next_multiple_of(8);
    if data_len <= min_first {
        return None;
    }
    let mut sizes = Vec::new();
    let mut left = data_len;
    let first_max = (left - 1) / 8 * 8;
    let first = min_first + 8 * (rng.next_u32() as usize % ((first_max - min_first) / 8 + 1));
    sizes.push(first);
    left -= first;
    while left > 8 && rng.next_u32().is_multiple_of(2) {
        let size = 8 * (1 + rng.next_u32() as usize % ((left - 1) / 8));
        sizes.push(size);
        left -= size;
    }
    Some(sizes)
}

#[test]
fn fixtures_fragmented_at_random_sizes_get_their_verdicts() {
    let mut rng = Rng::seed_from_u64(seed());
    let mut id = 0x7000u32;
    same_verdicts("fragmented", &mut |frame| {
        let Some(key) = flow_key(frame) else {
            return vec![frame.to_vec()];
        };
        if key.0 != IPPROTO_TCP && key.0 != IPPROTO_UDP {
            return vec![frame.to_vec()];
        }
        let (l4, _) = transport(frame);
        let data_len = frame.len() - l4;
        match fragment_sizes(&mut rng, data_len, transport_header_len(frame)) {
            Some(sizes) => {
                id += 1;
                fragment(frame, &sizes, id)
            }
            None => vec![frame.to_vec()],
        }
    });
}

/// The encapsulations of the property test: each kind once, the variants that change the
/// parser's path (outer family, carried type, optional fields, depth) included.
fn property_encaps() -> Vec<Encap> {
    vec![
        Encap::Pppoe,
        Encap::Vlans(vec![ETH_P_8021AD, ETH_P_8021Q]),
        Encap::Vlans(vec![ETH_P_9100, ETH_P_8021AD, ETH_P_8021Q]),
        Encap::Mpls(1),
        Encap::Mpls(4),
        Encap::IpInIp { outer_v6: false },
        Encap::IpInIp { outer_v6: true },
        Encap::Gre {
            outer_v6: false,
            ethernet: false,
            fields: GreFields::default(),
        },
        Encap::Gre {
            outer_v6: true,
            ethernet: false,
            fields: GreFields::ALL,
        },
        Encap::Gre {
            outer_v6: false,
            ethernet: true,
            fields: GreFields {
                key: true,
                ..Default::default()
            },
        },
        Encap::Vxlan,
        Encap::Geneve { options: false },
        Encap::Geneve { options: true },
    ]
}

#[test]
fn fixtures_inside_each_encapsulation_get_their_verdicts() {
    let originals = originals();
    let mut failures = Vec::new();
    for encap in property_encaps() {
        failures.extend(differing(
            &originals,
            &format!("inside {}", encap.name()),
            &mut |frame| vec![encap.wrap(frame)],
        ));
    }
    assert_same("inside encapsulations", failures);
}

#[test]
fn fixtures_behind_random_ipv6_extension_headers_get_their_verdicts() {
    let mut rng = Rng::seed_from_u64(seed());
    same_verdicts("behind extension headers", &mut |frame| {
        if ip_packet(frame).is_none() || l3(frame).1 != ETH_P_IPV6 {
            return vec![frame.to_vec()];
        }
        // 1 to 7 headers of up to 512 bytes each, at most 1800 bytes: within the parser's
        // limits (8 headers, 2048 bytes of L3 headers) but beyond what bd31a58 followed.
        let mut chain = Vec::new();
        if rng.next_u32().is_multiple_of(2) {
            chain.push(Ext::HopByHop {
                len8: (rng.next_u32() % 4) as u8,
            });
        }
        for _ in 0..1 + rng.next_u32() % 6 {
            let len8 = (rng.next_u32() % 64) as u8;
            chain.push(if rng.next_u32().is_multiple_of(3) {
                Ext::Routing { len8: len8 | 2 }
            } else {
                Ext::DestOpts { len8 }
            });
        }
        let mut bytes = 0;
        chain.retain(|e| {
            let len = match e {
                Ext::HopByHop { len8 } | Ext::DestOpts { len8 } | Ext::Routing { len8 } => {
                    (*len8 as usize + 1) * 8
                }
                Ext::Fragment { .. } => 8,
            };
            bytes += len;
            bytes <= 1800
        });
        vec![insert_ext_headers(frame, &chain)]
    });
}
