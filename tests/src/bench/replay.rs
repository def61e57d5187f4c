//! Section 5: `vpn-filter replay` throughput on a synthetic capture.
//!
//! The bench writes a classic pcap (Ethernet, microsecond timestamps) mixing ordinary traffic
//! with VPN handshakes and follow-up packets from many sources, then runs the real binary on it
//! and times it, next to a one-packet capture that measures the start-up (program load).

use std::{
    io::{BufWriter, Write as _},
    net::Ipv4Addr,
    path::Path,
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context as _, Result};
use vpn_filter_tests::{
    gateway_lab::{controller_path, TempDir},
    lab::registry_json,
    packet::{dns_query, ikev2_sa_init, quic_initial, wireguard_data, wireguard_initiation, Frame},
};

use super::util::{self, median, Rng};

pub struct Settings {
    pub packets: usize,
    pub rounds: usize,
}

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const GATEWAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];
/// Registered: WireGuard initiations from here pass.
const REGISTERED: &str = "198.51.100.0/24";

/// The capture's mix, by `i % 10`.
const MIX: &str = "40% TCP data (port 443), 10% DNS queries, 10% QUIC initials, 10% WireGuard \
                   initiations from registered sources, 10% WireGuard initiations from \
                   unregistered sources (5,000 addresses), 10% WireGuard data on those \
                   unregistered flows, 10% IKEv2 SA_INITs from unregistered sources";

fn frame(i: usize, rng: &mut Rng, pool: &[Ipv4Addr], recent: &mut Vec<(Ipv4Addr, u16)>) -> Vec<u8> {
    let server = Ipv4Addr::new(203, 0, 113, 10);
    let client = Ipv4Addr::new(
        192,
        168,
        (rng.next_u32() % 16) as u8,
        (rng.next_u32() % 250 + 2) as u8,
    );
    let f = Frame::eth().macs(CLIENT_MAC, GATEWAY_MAC);
    match i % 10 {
        0..=3 => f
            .ipv4(client, server)
            .tcp(rng.port(), 443)
            .payload(&[0x17; 100])
            .build(),
        4 => f
            .ipv4(client, Ipv4Addr::new(203, 0, 113, 53))
            .udp(rng.port(), 53)
            .payload(&dns_query(rng.next_u32() as u16, "example.com"))
            .build(),
        5 => f
            .ipv4(client, server)
            .udp(rng.port(), 443)
            .payload(&quic_initial(
                &rng.next_u64().to_be_bytes(),
                &[1, 2, 3, 4],
                1200,
            ))
            .build(),
        6 => f
            .ipv4(
                Ipv4Addr::new(198, 51, 100, (rng.next_u32() % 250 + 2) as u8),
                server,
            )
            .udp(rng.port(), 51820)
            .payload(&wireguard_initiation(rng.next_u32()))
            .build(),
        7 => {
            let src = pool[rng.next_u32() as usize % pool.len()];
            let sport = rng.port();
            if recent.len() < 1024 {
                recent.push((src, sport));
            } else {
                let k = rng.next_u32() as usize % recent.len();
                recent[k] = (src, sport);
            }
            f.ipv4(src, server)
                .udp(sport, 51820)
                .payload(&wireguard_initiation(rng.next_u32()))
                .build()
        }
        8 => {
            let (src, sport) = match recent.last() {
                Some(&(s, p)) => (s, p),
                None => (pool[0], 40000),
            };
            f.ipv4(src, server)
                .udp(sport, 51820)
                .payload(&wireguard_data(rng.next_u32(), i as u64, 128))
                .build()
        }
        _ => f
            .ipv4(pool[rng.next_u32() as usize % pool.len()], server)
            .udp(500, 500)
            .payload(&ikev2_sa_init(rng.next_u64(), 300))
            .build(),
    }
}

/// Writes a classic pcap (magic a1b2c3d4, version 2.4, link type 1: Ethernet).
fn write_pcap(path: &Path, packets: usize, seed: u64) -> Result<u64> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = BufWriter::new(file);
    let mut header = Vec::with_capacity(24);
    header.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    header.extend_from_slice(&2u16.to_le_bytes());
    header.extend_from_slice(&4u16.to_le_bytes());
    header.extend_from_slice(&0i32.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    header.extend_from_slice(&65535u32.to_le_bytes());
    header.extend_from_slice(&1u32.to_le_bytes());
    w.write_all(&header)?;
    let mut rng = Rng::new(seed);
    let pool: Vec<Ipv4Addr> = (0..5_000)
        .map(|_| Ipv4Addr::from(0x6440_0000 | (rng.next_u32() & 0x003f_ffff)))
        .collect();
    let mut recent = Vec::new();
    let mut bytes = 0u64;
    // 100,000 packets per second of capture time.
    let start_us: u64 = 1_790_000_000_000_000;
    for i in 0..packets {
        let data = frame(i, &mut rng, &pool, &mut recent);
        let ts = start_us + 10 * i as u64;
        let mut rec = Vec::with_capacity(16);
        rec.extend_from_slice(&((ts / 1_000_000) as u32).to_le_bytes());
        rec.extend_from_slice(&((ts % 1_000_000) as u32).to_le_bytes());
        rec.extend_from_slice(&(data.len() as u32).to_le_bytes());
        rec.extend_from_slice(&(data.len() as u32).to_le_bytes());
        w.write_all(&rec)?;
        w.write_all(&data)?;
        bytes += data.len() as u64;
    }
    w.flush()?;
    Ok(bytes)
}

struct Timed {
    wall: f64,
    /// The replay's own figure ("replayed N packets in X s (Y packets/s)").
    own_pps: Option<f64>,
}

fn replay(capture: &Path, registry: &Path) -> Result<Timed> {
    let start = Instant::now();
    let out = Command::new(controller_path())
        .arg("replay")
        .arg("--pcap")
        .arg(capture)
        .arg("--registry")
        .arg(registry)
        .output()
        .context("running `vpn-filter replay`")?;
    let wall = start.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "`vpn-filter replay --pcap {}` failed ({}): {}",
            capture.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let own_pps = text
        .lines()
        .find(|l| l.trim_start().starts_with("replayed"))
        .and_then(|l| l.rsplit_once('(').map(|(_, r)| r))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok());
    Ok(Timed { wall, own_pps })
}

/// Runs the section; answers the median start-up (seconds).
pub fn run(s: &Settings, out: &mut String, startup_secs: &mut Option<f64>) -> Result<()> {
    let controller = controller_path();
    if !controller.exists() {
        bail!(
            "{} not found (`cargo xtask bench` builds it)",
            controller.display()
        );
    }
    let dir = TempDir::new("bench-replay");
    let registry = dir.path().join("registry.json");
    std::fs::write(&registry, registry_json(1, &[("REG-1", &[REGISTERED])]))
        .context("writing the registry")?;
    let capture = dir.path().join("mix.pcap");
    let bytes = write_pcap(&capture, s.packets, 0x5eed)?;
    let one = dir.path().join("one.pcap");
    write_pcap(&one, 1, 0x5eed)?;

    let mut startup = Vec::new();
    let mut walls = Vec::new();
    let mut own = Vec::new();
    for _ in 0..s.rounds {
        util::check_stop()?;
        startup.push(replay(&one, &registry)?.wall);
        let t = replay(&capture, &registry)?;
        walls.push(t.wall);
        if let Some(p) = t.own_pps {
            own.push(p);
        }
    }
    let (wall, start) = (median(walls), median(startup));
    *startup_secs = Some(start);
    let n = s.packets as f64;
    out.push_str(&format!(
        "`vpn-filter replay --pcap FILE --registry FEED` (the release binary, table output to \
         a pipe) on a synthetic classic pcap written by the bench: {} Ethernet frames, {} \
         bytes of frames, 10 µs apart; {MIX}; the registry holds {REGISTERED}. Wall time of \
         the whole process, and of the same command on a one-packet capture (start-up: \
         loading the program, reading the feed), medians of {} runs.\n\n",
        util::count(s.packets),
        util::count(bytes as usize),
        s.rounds,
    ));
    out.push_str("| measure | value |\n|---|---|\n");
    out.push_str(&format!("| wall time, whole capture | {wall:.3} s |\n"));
    out.push_str(&format!(
        "| wall time, one-packet capture (start-up) | {start:.3} s |\n"
    ));
    out.push_str(&format!(
        "| packets per second, whole process | {} |\n",
        util::count((n / wall) as usize)
    ));
    if wall > start {
        out.push_str(&format!(
            "| packets per second, start-up subtracted | {} |\n",
            util::count((n / (wall - start)) as usize)
        ));
    }
    if own.is_empty() {
        out.push_str("| packets per second, the replay's own report | not found in its output |\n");
    } else {
        out.push_str(&format!(
            "| packets per second, the replay's own report (`replayed ... packets/s`) | {} |\n",
            util::count(median(own) as usize)
        ));
    }
    out.push('\n');
    Ok(())
}
