//! Section 4: events, from the kernel's ring buffer to JSON lines in the events file.
//!
//! The real controller (`target/release/vpn-filter run`) on the lab's filter veth, its events
//! going to a file; the bench floods unregistered WireGuard initiations from random sources
//! (each packet a new flow) through an AF_PACKET socket on the client side, and reads the
//! controller's own counters (`status --json`) and its CPU time (/proc/PID/stat).

use std::{
    net::Ipv4Addr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::Value;
use vpn_filter_tests::{
    gateway_lab::{controller_path, TempDir},
    lab::{registry_json, FilterLab, FILTER_V4, REGISTERED_V4},
    netns::{Process, RawSocket},
    packet::{wireguard_initiation, Frame},
};

use super::util::{self, median, Rng};

const WG_PORT: u16 = 51820;

pub struct Settings {
    /// Seconds of flood per round.
    pub seconds: f64,
    pub rounds: usize,
}

/// One controller configuration under the flood.
struct Variant {
    name: &'static str,
    /// Extra `run` flags.
    args: &'static [&'static str],
}

const VARIANTS: &[Variant] = &[
    Variant {
        name: "rate limits raised: every packet an event",
        args: &[
            "--events-per-source",
            "4000000000",
            "--events-per-cpu",
            "4000000000",
        ],
    },
    Variant {
        name: "default rate limits",
        args: &[],
    },
];

#[derive(Default)]
struct Round {
    sent: f64,
    flood_secs: f64,
    drain_secs: f64,
    emitted: f64,
    suppressed: f64,
    lost: f64,
    written: f64,
    lines: f64,
    cpu_secs: f64,
}

struct Daemon {
    proc: Process,
    socket: std::path::PathBuf,
    events_file: std::path::PathBuf,
    _dir: TempDir,
}

impl Daemon {
    fn start(lab: &FilterLab, extra: &[&str]) -> Result<Daemon> {
        let dir = TempDir::new("bench-ev");
        let registry = dir.path().join("registry.json");
        std::fs::write(&registry, registry_json(1, &[("REG-1", &[REGISTERED_V4])]))
            .context("writing the registry")?;
        let socket = dir.path().join("control.sock");
        let events_file = dir.path().join("events.jsonl");
        let mut cmd = lab.filter.command(controller_path());
        cmd.args(["run", "--no-pin", "--iface", &lab.filter_if, "--registry"])
            .arg(&registry)
            .arg("--control-socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--events-file")
            .arg(&events_file)
            .args(["--loss-report-interval", "0"])
            .args(extra);
        let proc = Process::spawn(cmd);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !proc
            .stderr_lines()
            .iter()
            .any(|l| l.contains(vpn_filter::daemon::run::READY))
        {
            if let Some(s) = proc.exit_status() {
                bail!(
                    "the controller exited ({s}) before it listened; stderr:\n{}",
                    proc.stderr_lines().join("\n")
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the controller did not listen within 30 s; stderr:\n{}",
                    proc.stderr_lines().join("\n")
                );
            }
            util::sleep(Duration::from_millis(20))?;
        }
        Ok(Daemon {
            proc,
            socket,
            events_file,
            _dir: dir,
        })
    }

    fn status(&self) -> Result<Value> {
        let out = std::process::Command::new(controller_path())
            .args(["status", "--json", "--control-socket"])
            .arg(&self.socket)
            .output()
            .context("running `vpn-filter status`")?;
        if !out.status.success() {
            bail!(
                "`vpn-filter status --json` failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_slice(&out.stdout).context("`vpn-filter status --json` output")
    }

    /// The controller's CPU time so far (all threads, user + system), in seconds.
    fn cpu_secs(&self) -> Result<f64> {
        cpu_secs(self.proc.pid())
    }
}

fn cpu_secs(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("{path}: no command name"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks = |i: usize| -> Result<f64> {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .map(|v| v as f64)
            .ok_or_else(|| anyhow!("{path}: field {} is not a number", i + 3))
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks(11)? + ticks(12)?) / hz)
}

fn ev(s: &Value, name: &str) -> Result<f64> {
    s["events"][name]
        .as_u64()
        .map(|v| v as f64)
        .ok_or_else(|| anyhow!("no events.{name} in the controller's status"))
}

fn count_lines(path: &Path) -> Result<f64> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(data.iter().filter(|b| **b == b'\n').count() as f64)
}

fn mac_bytes(s: &str) -> Result<[u8; 6]> {
    let v: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("MAC address {s:?}"))?;
    v.try_into().map_err(|_| anyhow!("MAC address {s:?}"))
}

/// A random source in 100.64.0.0/10 (shared address space: never registered here).
fn flood_source(rng: &mut Rng) -> Ipv4Addr {
    Ipv4Addr::from(0x6440_0000 | (rng.next_u32() & 0x003f_ffff))
}

fn round(d: &Daemon, lab: &FilterLab, raw: &RawSocket, s: &Settings, seed: u64) -> Result<Round> {
    let dst_mac = mac_bytes(&lab.filter.mac(&lab.filter_if))?;
    let src_mac = mac_bytes(&lab.client.mac(&lab.client_if))?;
    let dst: Ipv4Addr = FILTER_V4.parse()?;
    let mut rng = Rng::new(seed);

    let s0 = d.status()?;
    let lines0 = count_lines(&d.events_file)?;
    let cpu0 = d.cpu_secs()?;
    let start = Instant::now();
    let stop_at = start + Duration::from_secs_f64(s.seconds);
    let mut sent = 0u64;
    while Instant::now() < stop_at {
        for _ in 0..256 {
            let frame = Frame::eth()
                .macs(src_mac, dst_mac)
                .ipv4(flood_source(&mut rng), dst)
                .udp(rng.port(), WG_PORT)
                .payload(&wireguard_initiation(rng.next_u32()))
                .build();
            raw.send(&frame);
            sent += 1;
        }
        util::check_stop()?;
    }
    let flood_secs = start.elapsed().as_secs_f64();

    // Drained: every emitted record written, and the kernel's count stable.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last_emitted = -1.0;
    let s1 = loop {
        let st = d.status()?;
        let (emitted, written) = (ev(&st, "emitted")?, ev(&st, "written")?);
        if emitted == last_emitted && written >= emitted - ev(&s0, "emitted")? + ev(&s0, "written")?
        {
            break st;
        }
        last_emitted = emitted;
        if Instant::now() > deadline {
            bail!("the controller did not write the flood's events within 60 s: {st}");
        }
        util::sleep(Duration::from_millis(20))?;
    };
    let total_secs = start.elapsed().as_secs_f64();
    let cpu1 = d.cpu_secs()?;
    let delta = |name: &str| -> Result<f64> { Ok(ev(&s1, name)? - ev(&s0, name)?) };
    Ok(Round {
        sent: sent as f64,
        flood_secs,
        drain_secs: total_secs,
        emitted: delta("emitted")?,
        suppressed: delta("suppressed")?,
        lost: delta("lost")?,
        written: delta("written")?,
        lines: count_lines(&d.events_file)? - lines0,
        cpu_secs: cpu1 - cpu0,
    })
}

pub fn run(s: &Settings, out: &mut String) -> Result<()> {
    let controller = controller_path();
    if !controller.exists() {
        bail!(
            "{} not found (`cargo xtask bench` builds it)",
            controller.display()
        );
    }
    out.push_str(&format!(
        "The real controller (`vpn-filter run --no-pin --events-file FILE`) on the lab's veth \
         (native XDP), while the bench sends unregistered WireGuard initiations from random \
         sources in 100.64.0.0/10, each a new flow, through an AF_PACKET socket on the other \
         end for {:.1} s per round ({} round{}, medians). Counts are the controller's own \
         (`status --json`: `emitted` and `suppressed` by the kernel, `lost` for a full ring \
         buffer, `written` to the file), taken before the flood and after the last event was \
         written; lines in the file are counted as a cross-check. Written/s is events written \
         over the time from the flood's start to the last one written. Controller CPU is \
         utime + stime of the process from /proc/PID/stat (10 ms ticks, all threads, \
         including answering the bench's status polls). The sender shares the 2 CPUs with the \
         controller, so the offered rate is what one sending thread achieves here, not the \
         controller's ceiling.\n\n",
        s.seconds,
        s.rounds,
        if s.rounds == 1 { "" } else { "s" },
    ));
    out.push_str(
        "| controller setting | offered (packets/s) | events emitted | suppressed | lost (ring full) | written | lines in file | written/s | controller CPU | CPU per event written |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for v in VARIANTS {
        let lab = FilterLab::new();
        let d = Daemon::start(&lab, v.args)
            .with_context(|| format!("starting the controller ({})", v.name))?;
        let raw = RawSocket::open(&lab.client, &lab.client_if);
        let mut rounds = Vec::new();
        for r in 0..s.rounds {
            rounds.push(
                round(&d, &lab, &raw, s, 0xe7e0 + r as u64)
                    .with_context(|| format!("flood round {} ({})", r + 1, v.name))?,
            );
        }
        let m = |f: &dyn Fn(&Round) -> f64| median(rounds.iter().map(f).collect());
        let written = m(&|r| r.written);
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.0}% of one CPU | {} |\n",
            v.name,
            util::count(m(&|r| r.sent / r.flood_secs) as usize),
            util::count(m(&|r| r.emitted) as usize),
            util::count(m(&|r| r.suppressed) as usize),
            util::count(m(&|r| r.lost) as usize),
            util::count(written as usize),
            util::count(m(&|r| r.lines) as usize),
            util::count(m(&|r| r.written / r.drain_secs) as usize),
            100.0 * m(&|r| r.cpu_secs / r.drain_secs),
            if written > 0.0 {
                format!(
                    "{} ns",
                    util::ns(m(&|r| 1e9 * r.cpu_secs / r.written.max(1.0)))
                )
            } else {
                "no events written".to_string()
            },
        ));
        d.proc.terminate(Duration::from_secs(10));
    }
    out.push_str(
        "\nWith the limits raised, every dropped packet is an event unless the ring buffer \
         is full (`lost`); with the defaults, the kernel suppresses (and counts) nearly all of \
         a flood from random sources, and the controller's cost is what is left.\n\n",
    );
    Ok(())
}
