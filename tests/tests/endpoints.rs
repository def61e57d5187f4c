//! Known VPN endpoints (issue 17): the converters from the providers' formats (fixtures in
//! tests/fixtures/endpoints/, no network), the kernel's endpoint maps against the
//! controller's model (BPF_PROG_TEST_RUN), and a gateway lab where an unregistered client's
//! Shadowsocks (TCP and UDP) and TLS to a server listed as provider "X" are blocked while a
//! registered client and unlisted servers are untouched.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use serde_json::Value;
use vpn_filter::{
    endpoints::{
        import::{import, ImportFormat, Imported},
        EndpointArgs, EndpointFeed, EndpointFormatChoice, EndpointSet, EndpointSync, ParseOptions,
    },
    kernel::{Filter, LoadOptions, Policy},
    registry::{
        guard::GuardArgs,
        sync::{Outcome, RegistryArgs},
        AllowedBy, Allowlist, Prefix,
    },
};
use vpn_filter_common::{Config, EndpointValue, PolicyMode, Protocol, Verdict};
use vpn_filter_tests::{
    gateway_lab::{controller_path, GatewayLab, TempDir, REGISTERED, SERVER, UNREGISTERED},
    lab::registry_json,
    netns::{neigh, NetNs, Process},
    packet::Frame,
};

// ------------------------------------------------------------------------ converters

/// `vpn-filter endpoints import`: the converters, from the samples in tests/fixtures/endpoints/.
mod endpoints_import {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/endpoints")
            .join(name);
        std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
    }

    fn hosts(list: &[&str]) -> BTreeSet<IpAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    /// The converted list, as text, parses as an endpoint feed naming `provider` and lists
    /// exactly the imported hosts.
    fn text_round_trips(imported: &Imported, provider: &str) {
        let text = imported.to_text(provider);
        let (feed, warnings) = EndpointFeed::parse(
            text.as_bytes(),
            "converted",
            EndpointFormatChoice::Auto,
            &ParseOptions {
                provider: Some(provider.into()),
                allow_broad: false,
            },
        )
        .unwrap_or_else(|e| panic!("the converted list is a valid feed: {e}\n{text}"));
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(feed.set.len(), imported.hosts().len());
        for h in imported.hosts() {
            let (_, v) = feed.set.lookup(h).expect("every host is listed");
            assert_eq!(feed.set.provider_name(v.provider), Some(provider));
        }
    }

    #[test]
    fn tor_onionoo_sample_converts_to_the_or_addresses_of_running_relays() {
        let got = import(ImportFormat::TorOnionoo, &fixture("onionoo-details.json")).unwrap();
        assert_eq!((got.servers, got.skipped_inactive), (4, 1));
        assert_eq!(
            got.hosts(),
            hosts(&[
                "192.0.2.10",
                "2001:db8:100::10",
                "198.51.100.20",
                "203.0.113.30",
                "2001:db8:200::30"
            ])
        );
        text_round_trips(&got, "tor");
        // The JSON form keeps the OR ports as TCP scopes.
        let json = got.to_json("tor", Some(7));
        let (feed, _) = EndpointFeed::parse(
            json.as_bytes(),
            "converted.json",
            EndpointFormatChoice::Json,
            &ParseOptions::default(),
        )
        .unwrap();
        assert_eq!(feed.serial, Some(7));
        let (_, v) = feed.set.lookup("198.51.100.20".parse().unwrap()).unwrap();
        assert_eq!((u16::from_be_bytes(v.port), v.ip_proto), (443, 6));
    }

    #[test]
    fn tor_consensus_sample_converts_to_r_and_a_line_addresses() {
        let got = import(
            ImportFormat::TorConsensus,
            &fixture("consensus-excerpt.txt"),
        )
        .unwrap();
        assert_eq!(got.servers, 3);
        assert_eq!(
            got.hosts(),
            hosts(&[
                "192.0.2.10",
                "2001:db8:100::10",
                "198.51.100.20",
                "203.0.113.30",
                "2001:db8:200::30"
            ])
        );
        text_round_trips(&got, "tor");
    }

    #[test]
    fn mullvad_sample_converts_to_the_entry_addresses_of_active_relays() {
        let got = import(ImportFormat::Mullvad, &fixture("mullvad-relays.json")).unwrap();
        assert_eq!((got.servers, got.skipped_inactive), (5, 1));
        assert_eq!(
            got.hosts(),
            hosts(&[
                "192.0.2.66",
                "2001:db8:1b20:5::a01f",
                "192.0.2.68",
                "2001:db8:1b20:5::a09f",
                "198.51.100.101",
                "192.0.2.70"
            ])
        );
        text_round_trips(&got, "mullvad");
    }

    #[test]
    fn nordvpn_sample_converts_to_the_stations_of_online_servers() {
        let got = import(ImportFormat::Nordvpn, &fixture("nordvpn-servers.json")).unwrap();
        assert_eq!((got.servers, got.skipped_inactive), (3, 1));
        assert_eq!(
            got.hosts(),
            hosts(&[
                "192.0.2.131",
                "198.51.100.77",
                "198.51.100.78",
                "2001:db8:77::1"
            ])
        );
        text_round_trips(&got, "nordvpn");
    }

    #[test]
    fn proton_sample_converts_to_entry_ips_not_exit_ips() {
        let got = import(ImportFormat::Proton, &fixture("proton-logicals.json")).unwrap();
        assert_eq!((got.servers, got.skipped_inactive), (3, 1));
        assert_eq!(got.hosts(), hosts(&["192.0.2.201", "198.51.100.55"]));
        text_round_trips(&got, "proton");
    }

    #[test]
    fn converter_errors_name_the_place_and_the_problem() {
        let bad =
            br#"{"relays": [{"or_addresses": ["192.0.2.1:9001"]}, {"or_addresses": ["nonsense"]}]}"#;
        let e = import(ImportFormat::TorOnionoo, bad).unwrap_err();
        assert!(
            e.starts_with("relays[1].or_addresses[0]: \"nonsense\""),
            "{e}"
        );
        let e = import(
            ImportFormat::Proton,
            br#"{"LogicalServers": [{"Servers": [{}]}]}"#,
        )
        .unwrap_err();
        assert_eq!(e, "LogicalServers[0].Servers[0]: missing \"EntryIP\"");
        let e = import(ImportFormat::TorConsensus, b"r short 1 2\n").unwrap_err();
        assert!(e.starts_with("line 1: an \"r\" line has 8 fields"), "{e}");
        let e = import(ImportFormat::Mullvad, b"{\"wireguard\": {}}").unwrap_err();
        assert_eq!(e, "wireguard: missing \"relays\"");
        let e = import(ImportFormat::Nordvpn, b"[]").unwrap_err();
        assert!(e.contains("no address found"), "{e}");
    }
}

// ------------------------------------------------------------- kernel equivalence

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// Client addresses: each query comes from a new one in 10.0.0.0/8 (IPv4) or fd00::/8
/// (IPv6); generated endpoint prefixes all lie in 128.0.0.0/1 and 8000::/1.
static NEXT_CLIENT: AtomicU32 = AtomicU32::new(1);

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

fn load(policy: PolicyMode) -> Filter {
    vpn_filter_tests::require_root();
    let mut p = Policy::default();
    p.set(Protocol::Endpoints, policy);
    Filter::load(LoadOptions::default(), &p, &Config::default())
        .expect("the program loads through the verifier")
}

fn client(family_v4: bool) -> IpAddr {
    let n = NEXT_CLIENT.fetch_add(1, Ordering::Relaxed);
    if family_v4 {
        Ipv4Addr::from(0x0a00_0000 | (n & 0x00ff_ffff)).into()
    } else {
        Ipv6Addr::from(0xfd00u128 << 112 | u128::from(n)).into()
    }
}

/// Ordinary traffic (a TCP SYN or a UDP datagram with a DNS-looking payload: no VPN
/// signature) from `src` to `dst`: the program's action.
fn action(filter: &Filter, src: IpAddr, dst: IpAddr, tcp: bool, dport: u16) -> u32 {
    let f = Frame::eth().ip(src, dst);
    let f = if tcp {
        f.tcp(40000, dport).payload(b"")
    } else {
        f.udp(40000, dport)
            .payload(&[0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0])
    };
    filter.run_frame(&f.build()).expect("BPF_PROG_TEST_RUN")
}

/// The model: would a packet to `dst` (proto, port) from an unregistered client be judged?
fn listed(set: &EndpointSet, dst: IpAddr, tcp: bool, dport: u16) -> bool {
    match set.lookup(dst) {
        None => false,
        Some((_, v)) => {
            let proto = if tcp { 6 } else { 17 };
            (v.ip_proto == 0 || v.ip_proto == proto)
                && (v.port == [0, 0] || u16::from_be_bytes(v.port) == dport)
        }
    }
}

fn random_set(rng: &mut Rng, n: usize) -> EndpointSet {
    let mut set = EndpointSet {
        providers: vec!["p1".into(), "p2".into(), "p3".into()],
        ..Default::default()
    };
    for _ in 0..n {
        let v6 = rng.below(4) == 0;
        let p = if v6 {
            let len = [32u8, 40, 48, 56, 64, 96, 128][rng.below(7) as usize];
            let addr = (u128::from(rng.next()) << 64 | u128::from(rng.next())) | 1 << 127;
            let mask = u128::MAX << (128 - len);
            Prefix::V6 {
                addr: (addr & mask).to_be_bytes(),
                len,
            }
        } else {
            let len = (16 + rng.below(17)) as u8;
            let addr = (rng.next() as u32) | 0x8000_0000;
            let mask = u32::MAX << (32 - len);
            Prefix::V4 {
                addr: (addr & mask).to_be_bytes(),
                len,
            }
        };
        let (ip_proto, port) = match rng.below(4) {
            0 => (6, 443),
            1 => (17, 0),
            _ => (0, 0),
        };
        set.prefixes.insert(
            p,
            EndpointValue {
                provider: (1 + rng.below(3)) as u16,
                port: u16::to_be_bytes(port),
                ip_proto,
                _pad: [0; 3],
            },
        );
    }
    set
}

/// Each prefix's bounds and their neighbours, and random addresses.
fn queries(rng: &mut Rng, set: &EndpointSet, random: usize) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for p in set.prefixes.keys() {
        match *p {
            Prefix::V4 { addr, len } => {
                let a = u32::from_be_bytes(addr);
                let last = a | u32::MAX.checked_shr(len.into()).unwrap_or(0);
                for x in [a, last, a.wrapping_sub(1), last.wrapping_add(1)] {
                    out.push(Ipv4Addr::from(x | 0x8000_0000).into());
                }
            }
            Prefix::V6 { addr, len } => {
                let a = u128::from_be_bytes(addr);
                let last = a | u128::MAX.checked_shr(len.into()).unwrap_or(0);
                for x in [a, last, a.wrapping_sub(1), last.wrapping_add(1)] {
                    out.push(Ipv6Addr::from(x | 1 << 127).into());
                }
            }
        }
    }
    for _ in 0..random {
        out.push(Ipv4Addr::from(rng.next() as u32 | 0x8000_0000).into());
        out.push(Ipv6Addr::from(u128::from(rng.next()) << 64 | 1 << 127).into());
    }
    out
}

#[test]
fn kernel_endpoints_maps_judge_like_the_controllers_model_across_add_and_remove_syncs() {
    let mut filter = load(PolicyMode::Enforce);
    let mut rng = Rng(vpn_filter_tests::rng::seeded(0xe4d0_0017));
    // Each round replaces the previous set on the same maps: removals (and the bitmap
    // shrinking) are checked, not only fresh fills.
    for round in 0..5 {
        let set = random_set(&mut rng, [300, 40, 500, 0, 120][round]);
        let report = filter.sync_endpoints(&set).expect("sync");
        assert_eq!(report.v4 + report.v6, set.len());
        let qs = queries(&mut rng, &set, 200);
        let mut dropped = 0;
        for (i, dst) in qs.iter().enumerate() {
            let tcp = i % 2 == 0;
            let dport = if i % 3 == 0 { 443 } else { 8443 };
            let src = client(dst.is_ipv4());
            let want = listed(&set, *dst, tcp, dport);
            let got = action(&filter, src, *dst, tcp, dport);
            assert_eq!(
                got,
                if want { XDP_DROP } else { XDP_PASS },
                "round {round}: {} {dst}:{dport} from {src}: the model says {}",
                if tcp { "TCP" } else { "UDP" },
                if want { "listed" } else { "not listed" }
            );
            dropped += usize::from(want);
            // The kernel's own trie agrees on the provider.
            if let Some((_, v)) = set.lookup(*dst) {
                assert_eq!(filter.lookup_endpoint(*dst).unwrap(), Some(v));
            }
        }
        if !set.is_empty() {
            assert!(
                dropped > 0 && dropped < qs.len(),
                "round {round}: the queries cover both answers ({dropped} of {})",
                qs.len()
            );
        }
    }
    // After the last sync to the same set, nothing is rewritten.
    let again = random_set(&mut Rng(vpn_filter_tests::rng::seeded(0)), 0);
    filter.sync_endpoints(&again).unwrap();
    let r = filter.sync_endpoints(&again).unwrap();
    assert_eq!((r.added, r.changed, r.removed), (0, 0, 0));
}

fn one_listing(prefix: &str) -> EndpointSet {
    let mut set = EndpointSet {
        providers: vec!["X".into()],
        ..Default::default()
    };
    set.prefixes.insert(
        prefix.parse().unwrap(),
        EndpointValue {
            provider: 1,
            ..Default::default()
        },
    );
    set
}

#[test]
fn registered_clients_and_registered_servers_are_never_judged_by_endpoints() {
    let mut filter = load(PolicyMode::Enforce);
    filter
        .sync_endpoints(&one_listing("198.18.0.0/24"))
        .unwrap();
    let by = AllowedBy {
        id: "REG".into(),
        tag: 1,
    };
    let mut allow = Allowlist::default();
    allow
        .prefixes
        .insert("10.9.9.9/32".parse().unwrap(), by.clone());
    allow.prefixes.insert("198.18.0.77/32".parse().unwrap(), by);
    filter.sync_allowlist(&allow).unwrap();
    let listed: IpAddr = "198.18.0.5".parse().unwrap();
    let registered: IpAddr = "10.9.9.9".parse().unwrap();
    let unregistered: IpAddr = "10.9.9.10".parse().unwrap();
    assert_eq!(action(&filter, registered, listed, true, 443), XDP_PASS);
    assert_eq!(action(&filter, registered, listed, false, 8388), XDP_PASS);
    // A listed address that is also registered (a registered server) passes.
    let both: IpAddr = "198.18.0.77".parse().unwrap();
    assert_eq!(action(&filter, unregistered, both, true, 443), XDP_PASS);
    assert_eq!(action(&filter, unregistered, listed, true, 443), XDP_DROP);
    let stats = filter.stats().unwrap();
    assert_eq!(stats.verdict(Protocol::Endpoints, Verdict::Allowed), 3);
    assert_eq!(stats.verdict(Protocol::Endpoints, Verdict::Dropped), 1);
    assert_eq!(filter.endpoint_stats(1).unwrap(), vec![(1, 0)]);
}

/// `ENDPOINT_SUMMARY` is the filter in front of the bitmap; maps pinned by a build without it
/// get a new, empty one next to the reused bitmap and tries. The next controller's first sync
/// reads the summary the kernel holds (not one derived from the tries) and fills it: the
/// listed endpoint is judged again. Its pin is removed here to make that case.
#[test]
fn a_summary_created_next_to_pinned_endpoint_maps_is_filled_by_the_first_sync() {
    vpn_filter_tests::require_root();
    let dir = vpn_filter_tests::netns::BpfFsDir::new("endpoint-summary");
    let pins = || vpn_filter::kernel::pin::PinDir::new(dir.path());
    let mut p = Policy::default();
    p.set(Protocol::Endpoints, PolicyMode::Enforce);
    let set = one_listing("198.18.7.0/24");
    let listed: IpAddr = "198.18.7.9".parse().unwrap();
    let src: IpAddr = "10.9.9.10".parse().unwrap();
    {
        let (mut filter, reused) =
            Filter::load_pinned(LoadOptions::default(), &p, &Config::default(), pins()).unwrap();
        assert_eq!(reused, 0);
        filter.sync_endpoints(&set).unwrap();
        assert_eq!(action(&filter, src, listed, true, 443), XDP_DROP);
    }
    let summary_pin = pins().map_path(vpn_filter_common::maps::ENDPOINT_SUMMARY);
    std::fs::remove_file(&summary_pin)
        .unwrap_or_else(|e| panic!("removing {}: {e}", summary_pin.display()));
    let (mut filter, reused) =
        Filter::load_pinned(LoadOptions::default(), &p, &Config::default(), pins()).unwrap();
    assert!(reused > 0, "the other maps are reused");
    // Before any sync the new summary is empty: the listing is not seen yet.
    assert_eq!(action(&filter, src, listed, true, 443), XDP_PASS);
    let report = filter.sync_endpoints(&set).unwrap();
    assert!(report.read_kernel, "the first sync reads the kernel's maps");
    assert_eq!(action(&filter, src, listed, true, 443), XDP_DROP);
}

#[test]
fn endpoints_policy_monitor_passes_and_counts_off_ignores() {
    let mut filter = load(PolicyMode::Monitor);
    filter
        .sync_endpoints(&one_listing("198.18.1.0/24"))
        .unwrap();
    let dst: IpAddr = "198.18.1.1".parse().unwrap();
    assert_eq!(action(&filter, client(true), dst, true, 443), XDP_PASS);
    let mut p = Policy::default();
    p.set(Protocol::Endpoints, PolicyMode::Off);
    filter.set_policy(&p).unwrap();
    assert_eq!(action(&filter, client(true), dst, true, 443), XDP_PASS);
    let stats = filter.stats().unwrap();
    assert_eq!(stats.verdict(Protocol::Endpoints, Verdict::Monitored), 1);
    assert_eq!(stats.verdict(Protocol::Endpoints, Verdict::Ignored), 1);
    assert_eq!(filter.endpoint_stats(1).unwrap(), vec![(0, 1)]);
}

#[test]
fn the_default_policy_for_endpoints_is_monitor() {
    assert_eq!(
        Policy::default().mode(Protocol::Endpoints),
        PolicyMode::Monitor
    );
    assert_eq!(
        Policy::default().mode(Protocol::WireGuard),
        PolicyMode::Enforce
    );
}

#[test]
fn replay_judges_a_capture_against_the_endpoints_lists() {
    vpn_filter_tests::require_root();
    let client: IpAddr = "10.9.8.7".parse().unwrap();
    let listed: IpAddr = "198.18.2.9".parse().unwrap();
    let unlisted: IpAddr = "198.18.3.9".parse().unwrap();
    let frames = [
        Frame::eth()
            .ip(client, listed)
            .tcp(40001, 443)
            .payload(b"")
            .build(),
        Frame::eth()
            .ip(client, unlisted)
            .tcp(40002, 443)
            .payload(b"")
            .build(),
        Frame::eth()
            .ip(client, listed)
            .udp(40003, 8388)
            .payload(&[7u8; 64])
            .build(),
    ];
    // A little-endian microsecond pcap, Ethernet.
    let mut pcap = Vec::new();
    for v in [
        0xa1b2_c3d4u32.to_le_bytes().to_vec(),
        vec![2, 0, 4, 0],
        vec![0; 8],
    ] {
        pcap.extend_from_slice(&v);
    }
    pcap.extend_from_slice(&262_144u32.to_le_bytes());
    pcap.extend_from_slice(&1u32.to_le_bytes());
    for (i, f) in frames.iter().enumerate() {
        pcap.extend_from_slice(&(1_700_000_000u32 + i as u32).to_le_bytes());
        pcap.extend_from_slice(&0u32.to_le_bytes());
        pcap.extend_from_slice(&(f.len() as u32).to_le_bytes());
        pcap.extend_from_slice(&(f.len() as u32).to_le_bytes());
        pcap.extend_from_slice(f);
    }
    let dir = TempDir::new("ep-replay");
    let path = dir.path().join("c.pcap");
    std::fs::write(&path, pcap).unwrap();
    let mut policy = Policy::default();
    policy.set(Protocol::Endpoints, PolicyMode::Enforce);
    let settings = vpn_filter::replay::ReplaySettings {
        policy,
        endpoints: one_listing("198.18.2.0/24"),
        ..Default::default()
    };
    let r = vpn_filter::replay::replay(&path, &settings, &mut |_, _| {}).expect("replay");
    assert_eq!(r.verdict(Protocol::Endpoints, Verdict::Dropped), 2);
    let to = |dst: IpAddr| r.flows.iter().filter(move |f| f.dst == dst);
    for f in to(listed) {
        assert_eq!(f.protocol, Protocol::Endpoints, "{f:?}");
        assert_eq!(f.verdict, vpn_filter::replay::Outcome::Dropped, "{f:?}");
        assert_eq!(f.message, Some(vpn_filter_common::Message::ListedEndpoint));
    }
    assert!(to(unlisted).all(|f| f.verdict == vpn_filter::replay::Outcome::Unclassified));
}

// ---------------------------------------------------------------- the feed loop

fn host_list(n: usize) -> String {
    let mut s = String::from("# provider X\n");
    for i in 0..n {
        s.push_str(&format!("198.18.{}.{}\n", i / 250, 1 + i % 250));
    }
    s
}

/// Writes `text` to `path` by renaming a complete temporary file over it.
fn publish(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn registry_args(state: &Path) -> RegistryArgs {
    RegistryArgs {
        registry: String::new(),
        registry_format: Default::default(),
        registry_pubkey: Vec::new(),
        state_dir: state.to_path_buf(),
        allow_broad: false,
        guard: GuardArgs {
            max_feed_bytes: 1 << 20,
            force_shrink: false,
            max_shrink_percent: 50,
            allow_serial_reset: false,
        },
        registry_poll_ms: 50,
        registry_http_interval: 60,
        registry_ca: None,
    }
}

/// Ticks the loop until it reports an outcome (a new version is read once it holds still for
/// two polls), for at most [`MAX_POLLS`] polls: a bound on the loop's own steps, not on the
/// clock, so a slow machine cannot fail it.
fn next_outcome(
    rt: &tokio::runtime::Runtime,
    sync: &mut EndpointSync,
    filter: &mut Filter,
) -> Outcome {
    for _ in 0..MAX_POLLS {
        match rt.block_on(sync.tick(filter)) {
            // The source answered with the list in force: not the step waited for.
            Some(Outcome::Unchanged) | None => {}
            Some(o) => return o,
        }
        std::thread::sleep(sync.poll_interval());
    }
    panic!("no outcome within {MAX_POLLS} polls");
}

/// Polls [`next_outcome`] waits at most (an outcome needs three).
const MAX_POLLS: usize = 100;

#[test]
fn a_bad_or_mass_shrinking_endpoints_feed_never_replaces_the_list_in_force() {
    let mut filter = load(PolicyMode::Enforce);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = TempDir::new("ep-sync");
    let list = dir.path().join("x.txt");
    publish(&list, &host_list(200));
    let args = EndpointArgs {
        endpoints: Some(list.to_str().unwrap().into()),
        endpoints_provider: Some("X".into()),
        ..Default::default()
    };
    let state = dir.path().join("state");
    let reg = registry_args(&state);
    let mut sync = EndpointSync::new(&args, &reg)
        .unwrap()
        .expect("--endpoints given");
    match rt.block_on(sync.start(&mut filter)).unwrap() {
        Outcome::Applied { report, .. } => assert_eq!(report.v4, 200),
        o => panic!("the first list is applied: {o:?}"),
    }
    let first: IpAddr = "198.18.0.1".parse().unwrap();
    let last: IpAddr = "198.18.0.200".parse().unwrap();
    assert_eq!(
        filter.lookup_endpoint(first).unwrap().map(|v| v.provider),
        Some(1)
    );

    // A bad line: refused, naming it; the list in force stays.
    publish(&list, &format!("{}198.18.9.0/33\n", host_list(200)));
    match next_outcome(&rt, &mut sync, &mut filter) {
        Outcome::Failed(e) => assert!(e.contains("line 202") && e.contains("/33"), "{e}"),
        o => panic!("a bad list is refused, got {o:?}"),
    }
    assert!(filter.lookup_endpoint(last).unwrap().is_some());

    // Losing 190 of 200 prefixes at once: refused as a likely upstream failure.
    publish(&list, &host_list(10));
    match next_outcome(&rt, &mut sync, &mut filter) {
        Outcome::Failed(e) => assert!(e.contains("removes 190 of the 200"), "{e}"),
        o => panic!("a mass shrink is refused, got {o:?}"),
    }
    assert!(filter.lookup_endpoint(last).unwrap().is_some());

    // An ordinary change applies, add before remove.
    publish(&list, &host_list(190));
    match next_outcome(&rt, &mut sync, &mut filter) {
        Outcome::Applied { report, .. } => assert_eq!((report.v4, report.removed), (190, 10)),
        o => panic!("a good list applies, got {o:?}"),
    }
    assert!(filter.lookup_endpoint(last).unwrap().is_none());
    drop(sync);

    // The source gone at the next start: the persisted last good list is enforced.
    std::fs::remove_file(&list).unwrap();
    let mut filter = load(PolicyMode::Enforce);
    let mut sync = EndpointSync::new(&args, &reg).unwrap().unwrap();
    match rt.block_on(sync.start(&mut filter)).unwrap() {
        Outcome::Applied { report, .. } => assert_eq!(report.v4, 190),
        o => panic!("the last good list is enforced: {o:?}"),
    }
    assert_eq!(
        filter.lookup_endpoint(first).unwrap().map(|v| v.provider),
        Some(1)
    );
    assert!(
        state.join("endpoints").is_dir(),
        "state kept apart from the registry's"
    );
}

// ---------------------------------------------------------------------- gateway lab

/// A second server address that no list names.
const UNLISTED: &str = "10.81.3.3";
const SS_PORT: u16 = 8388;
const SS_PASSWORD: &str = "vpnf-endpoints-test";
const SS_METHOD: &str = "chacha20-ietf-poly1305";

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `f` every 100 ms until it holds, at most `timeout`'s worth of polls (a hang guard
/// bounded by polls, not a clock).
fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..=timeout.as_millis() / 100 {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn listening(ns: &NetNs, flags: &str, port: u16) -> bool {
    let out = ns.exec("ss", &[flags, "-H"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.contains(&format!(":{port} ")))
}

/// The servers: dnsmasq (DNS over UDP and TCP, the target of the Shadowsocks tunnels),
/// ss-server (TCP and UDP relay) and openssl s_server (TLS on 443), on both server addresses.
struct Servers {
    procs: Vec<(&'static str, Process)>,
    ca: PathBuf,
}

impl Servers {
    fn start(ns: &NetNs, dir: &Path) -> Servers {
        let key = dir.join("server.key");
        let crt = dir.join("server.crt");
        run_ok(Command::new("openssl").args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=vpnf-endpoints-test",
            "-addext",
            &format!("subjectAltName=IP:{SERVER},IP:{UNLISTED}"),
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            crt.to_str().unwrap(),
        ]));
        let mut procs = Vec::new();
        let mut dns = ns.command("sh");
        dns.args([
            "-c",
            &format!(
                "mount -t tmpfs vf-ep-run /run && exec dnsmasq --keep-in-foreground --no-resolv --no-hosts \
                 --user=root --listen-address={SERVER} --listen-address={UNLISTED} --bind-interfaces \
                 --address=/svc.ep.test/{SERVER}"
            ),
        ]);
        procs.push(("dnsmasq", Process::spawn(dns)));
        let mut ss = ns.command("ss-server");
        ss.args(["-s", "0.0.0.0", "-p", &SS_PORT.to_string()])
            .args(["-k", SS_PASSWORD, "-m", SS_METHOD, "-u", "-v"]);
        procs.push(("ss-server", Process::spawn(ss)));
        let mut tls = ns.command("openssl");
        tls.args(["s_server", "-quiet", "-www", "-accept", "443", "-cert"])
            .arg(&crt)
            .arg("-key")
            .arg(&key);
        procs.push(("openssl-s_server", Process::spawn(tls)));
        let servers = Servers { procs, ca: crt };
        let ready = wait_until(Duration::from_secs(10), || {
            listening(ns, "-uln", 53)
                && listening(ns, "-tln", 53)
                && listening(ns, "-tln", SS_PORT)
                && listening(ns, "-uln", SS_PORT)
                && listening(ns, "-tln", 443)
        });
        assert!(ready, "servers did not start\n{}", servers.logs());
        servers
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        for (label, p) in &self.procs {
            s.push_str(&format!("---- {label}:\n"));
            for l in p.stdout_lines().iter().chain(p.stderr_lines().iter()) {
                s.push_str(&format!("  {l}\n"));
            }
        }
        s
    }
}

/// What one client got through to one server address.
#[derive(Debug, PartialEq, Eq)]
struct Reached {
    shadowsocks_tcp: bool,
    shadowsocks_udp: bool,
    tls: bool,
}

/// An ss-tunnel in `ns` to the ss-server on `server`, forwarding a local port (TCP and UDP)
/// to the DNS server behind it; a DNS query over UDP and one over TCP through it; and an
/// HTTPS request straight to `server`.
fn try_client(ns: &NetNs, server: &str, ca: &Path, local_port: u16) -> Reached {
    let mut tunnel = ns.command("ss-tunnel");
    tunnel
        .args(["-s", server, "-p", &SS_PORT.to_string()])
        .args(["-l", &local_port.to_string(), "-b", "127.0.0.1"])
        .args(["-L", &format!("{SERVER}:53")])
        .args(["-k", SS_PASSWORD, "-m", SS_METHOD, "-u"]);
    let tunnel = Process::spawn(tunnel);
    let up = wait_until(Duration::from_secs(10), || {
        listening(ns, "-tln", local_port) && listening(ns, "-uln", local_port)
    });
    assert!(
        up,
        "ss-tunnel did not listen on {local_port}: {:?}",
        tunnel.stderr_lines()
    );
    let dig = |tcp: bool| -> bool {
        let port = local_port.to_string();
        let mut args = vec![
            "+short",
            "+time=2",
            "+tries=2",
            "@127.0.0.1",
            "-p",
            &port,
            "svc.ep.test",
            "A",
        ];
        if tcp {
            args.insert(0, "+tcp");
        }
        let out = ns.exec("dig", &args);
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == SERVER
    };
    let shadowsocks_udp = dig(false);
    let shadowsocks_tcp = dig(true);
    drop(tunnel);
    let out = ns.exec(
        "curl",
        &[
            "-sS",
            "--max-time",
            "4",
            "--cacert",
            ca.to_str().unwrap(),
            &format!("https://{server}/"),
        ],
    );
    let page = String::from_utf8_lossy(&out.stdout);
    let tls = out.status.success() && (page.contains("Cipher") || page.contains("TLS"));
    Reached {
        shadowsocks_tcp,
        shadowsocks_udp,
        tls,
    }
}

#[test]
fn unregistered_shadowsocks_and_tls_to_listed_endpoints_are_blocked_naming_the_provider() {
    let lab = GatewayLab::new();
    // The unlisted server address, on the same server namespace.
    lab.server
        .ip(&["addr", "add", &format!("{UNLISTED}/24"), "dev", "c2"]);
    neigh(&lab.gw, "g-srv", UNLISTED, &lab.server.mac("c2"));
    let dir = TempDir::new("endpoints");
    let registry = dir.path().join("registry.json");
    std::fs::write(&registry, registry_json(1, &[("REG-1", &[REGISTERED])])).unwrap();
    let list = dir.path().join("x.txt");
    std::fs::write(&list, format!("# provider X's servers\n{SERVER}/32\n")).unwrap();
    let servers = Servers::start(&lab.server, dir.path());
    let list_arg = list.to_str().unwrap().to_string();
    let controller = lab.start_controller(
        &controller_path(),
        &registry,
        &[
            "--endpoints",
            &list_arg,
            "--endpoints-provider",
            "X",
            "--policy",
            "endpoints=enforce",
        ],
    );
    assert!(
        controller
            .stderr_lines()
            .iter()
            .any(|l| l.contains("endpoint list") && l.contains("applied")),
        "the controller applied the endpoint list: {:?}",
        controller.stderr_lines()
    );

    let unreg_listed = try_client(&lab.unreg, SERVER, &servers.ca, 5301);
    let reg_listed = try_client(&lab.reg, SERVER, &servers.ca, 5302);
    let unreg_unlisted = try_client(&lab.unreg, UNLISTED, &servers.ca, 5303);
    let all = Reached {
        shadowsocks_tcp: true,
        shadowsocks_udp: true,
        tls: true,
    };
    let none = Reached {
        shadowsocks_tcp: false,
        shadowsocks_udp: false,
        tls: false,
    };
    let context = || {
        format!(
            "controller stderr: {:?}\n{}",
            controller.stderr_lines(),
            servers.logs()
        )
    };
    assert_eq!(
        unreg_listed,
        none,
        "unregistered client to the listed server\n{}",
        context()
    );
    assert_eq!(
        reg_listed,
        all,
        "registered client to the listed server\n{}",
        context()
    );
    assert_eq!(
        unreg_unlisted,
        all,
        "unregistered client to the unlisted server\n{}",
        context()
    );

    let events: Vec<Value> = controller
        .stdout_lines()
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let from = |who: &str| -> Vec<&Value> { events.iter().filter(|e| e["src"] == who).collect() };
    // Shadowsocks is also reported (monitored, never dropped) by the fully-encrypted
    // heuristic, to whichever server; every other event must be the endpoint list's.
    let unreg: Vec<&Value> = from(UNREGISTERED)
        .into_iter()
        .filter(|e| !(e["protocol"] == "fully_encrypted" && e["verdict"] == "monitored"))
        .collect();
    assert!(
        !unreg.is_empty(),
        "no event for the unregistered client: {events:?}"
    );
    for e in &unreg {
        assert_eq!(e["protocol"], "endpoints", "{e}");
        assert_eq!(e["provider"], "X", "{e}");
        assert_eq!(e["verdict"], "dropped", "{e}");
        assert_eq!(e["dst"], SERVER, "{e}");
    }
    let ports: BTreeSet<(u64, u64)> = unreg
        .iter()
        .map(|e| {
            (
                e["ip_proto"].as_u64().unwrap(),
                e["dport"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(
        ports.contains(&(6, u64::from(SS_PORT))),
        "Shadowsocks TCP reported: {ports:?}"
    );
    assert!(
        ports.contains(&(17, u64::from(SS_PORT))),
        "Shadowsocks UDP reported: {ports:?}"
    );
    assert!(ports.contains(&(6, 443)), "TLS reported: {ports:?}");
    assert!(
        from(REGISTERED).is_empty(),
        "events for the registered client: {events:?}"
    );
    // Only the fully-encrypted heuristic's monitored reports may name the unlisted server.
    assert!(
        events.iter().all(|e| e["dst"] != UNLISTED
            || (e["protocol"] == "fully_encrypted" && e["verdict"] == "monitored")),
        "events for the unlisted server: {events:?}"
    );
    eprintln!(
        "[endpoints] listed server {SERVER} (provider X), endpoints=enforce: unregistered {unreg_listed:?}; registered {reg_listed:?}; unregistered to unlisted {UNLISTED}: {unreg_unlisted:?}; {} events for the unregistered client",
        unreg.len()
    );
}
