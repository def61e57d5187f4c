//! `cargo xtask accuracy`: recall on the real-client captures and false positives on the
//! project's false-positive corpus, measured with the real program (BPF_PROG_TEST_RUN, root
//! required) and printed as markdown; `--write FILE` also puts the tables between the
//! `<!-- accuracy:begin -->` and `<!-- accuracy:end -->` markers of FILE (BENCHMARKS.md).
//!
//! - Captures: every `*.pcap`/`*.pcapng` in `tests/fixtures` and `tests/fixtures/consumer`,
//!   each described by its directory's `MANIFEST.tsv` (file, family, provenance, expected),
//!   replayed with nothing registered under the default policy in a freshly loaded program.
//! - Corpus (`vpn_filter_tests::corpus`): each group in a fresh program with every protocol in
//!   monitor mode (what each protocol's rules would flag), then again under the default policy
//!   (what would be dropped: must be nothing).
//!
//! Fails (exit 1, after printing) on a capture that cannot be read, a manifest row whose
//! capture is missing, a program that does not load, or any drop of corpus traffic under the
//! default policy. Recall below 100% is reported, never a failure.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context as _, Result};
use clap::Parser;
use vpn_filter::kernel::Policy;
use vpn_filter_common::{PolicyMode, Protocol};
use vpn_filter_tests::{
    accuracy::{
        as_expected, caught_as, outcome, parse_manifest, percent, read_capture, replace_between,
        table, ManifestRow, Runner, Tally, Totals,
    },
    corpus,
};

const BEGIN: &str = "<!-- accuracy:begin -->";
const END: &str = "<!-- accuracy:end -->";

#[derive(Parser)]
#[command(
    name = "vpn-filter-accuracy",
    about = "Recall on the fixture captures, false positives on the FP corpus (root required)"
)]
struct Args {
    /// The fixtures directory (its MANIFEST.tsv and captures, and its consumer/ subdirectory).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures"))]
    fixtures: PathBuf,
    /// Also replace the section between the accuracy markers of this file.
    #[arg(long)]
    write: Option<PathBuf>,
    /// Measure only the captures (skips the corpus, which takes a few minutes); the tables
    /// are printed, never written.
    #[arg(long, conflicts_with = "write")]
    captures_only: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("accuracy: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A capture to replay.
struct Capture {
    /// Path relative to the fixtures directory, as shown.
    name: String,
    path: PathBuf,
    row: ManifestRow,
}

/// The captures of `dir` (`*.pcap`, `*.pcapng`) with their manifest rows. A capture without a
/// row gets its family from its file name (`prefix` and the name up to the first `-`) and a
/// note; a row without its
/// capture is a problem.
fn captures_in(
    dir: &Path,
    prefix: &str,
    problems: &mut Vec<String>,
    notes: &mut Vec<String>,
) -> Result<Vec<Capture>> {
    let manifest_path = dir.join("MANIFEST.tsv");
    let rows = match std::fs::read_to_string(&manifest_path) {
        Ok(text) => {
            parse_manifest(&text).with_context(|| format!("{}", manifest_path.display()))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            notes.push(format!("{prefix}MANIFEST.tsv: absent"));
            Vec::new()
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", manifest_path.display())),
    };
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".pcap") || n.ends_with(".pcapng"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for row in &rows {
        if !dir.join(&row.file).is_file() {
            problems.push(format!(
                "{prefix}MANIFEST.tsv lists {} ({}), which is not in {}",
                row.file,
                row.family,
                dir.display()
            ));
        }
    }
    for file in files {
        let row = match rows.iter().find(|r| r.file == file) {
            Some(r) => r.clone(),
            None => {
                // Kept apart from the listed families of another directory.
                let family = format!("{prefix}{}", file.split(['-', '.']).next().unwrap_or(&file));
                if !rows.is_empty() {
                    notes.push(format!(
                        "{prefix}{file}: not in MANIFEST.tsv, family `{family}` taken from its name"
                    ));
                }
                ManifestRow {
                    file: file.clone(),
                    family,
                    provenance: String::new(),
                    expected: String::new(),
                }
            }
        };
        out.push(Capture {
            name: format!("{prefix}{file}"),
            path: dir.join(&file),
            row,
        });
    }
    Ok(out)
}

/// What one capture gave.
struct Replayed {
    capture: Capture,
    tally: Option<Tally>,
}

fn machine_line() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let date = time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!(
            "[year]-[month]-[day] [hour]:[minute] UTC"
        ))
        .unwrap_or_else(|_| "unknown date".into());
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    format!("Measured by `cargo xtask accuracy`, {date}, commit {commit}, kernel {kernel}, {cpu} ({cpus} CPUs).")
}

fn num(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn run(args: &Args) -> Result<bool> {
    vpn_filter_tests::require_root();
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    let mut md = String::new();
    md.push_str(&machine_line());
    md.push_str("\n\n");

    // ---- Captures -------------------------------------------------------------------------
    let mut captures = captures_in(&args.fixtures, "", &mut problems, &mut notes)?;
    let consumer = args.fixtures.join("consumer");
    if consumer.is_dir() {
        captures.extend(captures_in(
            &consumer,
            "consumer/",
            &mut problems,
            &mut notes,
        )?);
    } else {
        notes.push("consumer/: absent (no consumer-VPN captures measured)".into());
    }
    let mut replayed = Vec::new();
    for capture in captures {
        eprintln!("accuracy: replaying {}", capture.name);
        let tally = match read_capture(&capture.path) {
            Ok(frames) => {
                let mut runner = Runner::load(&Policy::default())?;
                Some(
                    runner
                        .tally(frames.iter().map(Vec::as_slice))
                        .with_context(|| capture.name.clone())?,
                )
            }
            Err(e) => {
                problems.push(format!("{}: cannot be read: {e:#}", capture.name));
                None
            }
        };
        replayed.push(Replayed { capture, tally });
    }

    md.push_str("### Recall per family\n\n");
    md.push_str(
        "Each capture replayed with nothing registered under the default policy, in a freshly \
         loaded program. A flow (both directions of an address/port/IP-protocol tuple) is \
         caught when the program dropped or reported (monitored) any of its packets. Recall = \
         caught flows / every flow of the family's captures, including flows that carry no \
         VPN signature (OpenConnect's TLS channel on TCP 443, by design not a detection).\n\n",
    );
    let mut families: BTreeMap<String, (u64, Totals, Vec<&Tally>)> = BTreeMap::new();
    for r in &replayed {
        let e = families.entry(r.capture.row.family.clone()).or_default();
        e.0 += 1;
        if let Some(t) = &r.tally {
            e.1.add(t);
            e.2.push(t);
        }
    }
    let rows: Vec<Vec<String>> = families
        .iter()
        .map(|(family, (n, totals, tallies))| {
            let mut by: BTreeMap<Protocol, u64> = BTreeMap::new();
            for t in tallies {
                for (p, f) in t.by_protocol() {
                    *by.entry(p).or_default() += f.flows;
                }
            }
            let caught_by = if by.is_empty() {
                "-".to_string()
            } else {
                by.iter()
                    .map(|(p, n)| format!("{} {n}", p.name()))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            vec![
                family.clone(),
                n.to_string(),
                num(totals.flows),
                num(totals.caught_flows),
                percent(totals.caught_flows, totals.flows),
                caught_by,
            ]
        })
        .collect();
    md.push_str(&table(
        &[
            "family",
            "captures",
            "flows",
            "caught flows",
            "recall",
            "caught as (flows)",
        ],
        &rows,
    ));

    md.push_str("\n### Captures\n\n");
    let judged: Vec<Option<bool>> = replayed
        .iter()
        .map(|r| {
            r.tally
                .as_ref()
                .and_then(|t| as_expected(&r.capture.row.expected, outcome(t)))
        })
        .collect();
    md.push_str(&format!(
        "`measured`: blocked (a packet dropped), monitored (reported, none dropped) or missed; \
         in bold where it is not the manifest's `expected`. {} of {} captures with an expected \
         outcome measured as expected.\n\n",
        judged.iter().filter(|j| **j == Some(true)).count(),
        judged.iter().filter(|j| j.is_some()).count(),
    ));
    let rows: Vec<Vec<String>> = replayed
        .iter()
        .zip(&judged)
        .map(|(r, judged)| {
            let c = &r.capture;
            let expected = if c.row.expected.is_empty() {
                "-".to_string()
            } else {
                c.row.expected.clone()
            };
            match &r.tally {
                Some(t) => vec![
                    format!("`{}`", c.name),
                    c.row.family.clone(),
                    expected,
                    if *judged == Some(false) {
                        format!("**{}**", outcome(t))
                    } else {
                        outcome(t).to_string()
                    },
                    num(t.packets),
                    num(t.flows.len() as u64),
                    num(t.caught_flows()),
                    num(t.dropped_packets()),
                    num(t.monitored_packets()),
                    caught_as(t),
                ],
                None => {
                    let mut row = vec![
                        format!("`{}`", c.name),
                        c.row.family.clone(),
                        expected,
                        "**unreadable**".to_string(),
                    ];
                    row.extend(std::iter::repeat_n("-".to_string(), 6));
                    row
                }
            }
        })
        .collect();
    md.push_str(&table(
        &[
            "capture",
            "family",
            "expected",
            "measured",
            "packets",
            "flows",
            "caught flows",
            "dropped packets",
            "monitored packets",
            "caught as (flows)",
        ],
        &rows,
    ));

    if !args.captures_only {
        corpus_section(&mut md, &mut problems)?;
    }

    if !notes.is_empty() {
        md.push_str("\nNotes: ");
        md.push_str(&notes.join("; "));
        md.push_str(".\n");
    }
    if !problems.is_empty() {
        md.push_str("\n**Problems (the run failed):**\n\n");
        for p in &problems {
            md.push_str(&format!("- {p}\n"));
        }
    }

    println!("{md}");
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("accuracy: error: {p}");
        }
        return Ok(false);
    }
    if let Some(path) = args.write.as_ref().filter(|_| !args.captures_only) {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let text = replace_between(&text, BEGIN, END, &md)
            .with_context(|| format!("{}", path.display()))?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("accuracy: wrote the tables into {}", path.display());
    }
    Ok(true)
}

/// The false-positive corpus, every group under every-protocol-monitor and under the default
/// policy; a drop under the default policy is a problem.
fn corpus_section(md: &mut String, problems: &mut Vec<String>) -> Result<()> {
    let mut monitor = Totals::default();
    let mut default = Totals::default();
    let mut group_rows = Vec::new();
    for (generator, make) in corpus::GENERATORS {
        eprintln!("accuracy: corpus::{generator}");
        for group in make() {
            let frames = || group.frames.iter().map(Vec::as_slice);
            let m = Runner::load(&Policy::all(PolicyMode::Monitor))?
                .tally(frames())
                .with_context(|| group.name.clone())?;
            let d = Runner::load(&Policy::default())?
                .tally(frames())
                .with_context(|| group.name.clone())?;
            if d.dropped_packets() > 0 {
                problems.push(format!(
                    "corpus `{}`: {} packets in {} flows DROPPED under the default policy",
                    group.name,
                    d.dropped_packets(),
                    d.dropped_flows()
                ));
            }
            monitor.add(&m);
            default.add(&d);
            group_rows.push(vec![
                group.name.clone(),
                num(m.flows.len() as u64),
                num(m.packets),
                num(m.caught_flows()),
                num(m.monitored_packets()),
                caught_as(&m),
                num(d.dropped_packets()),
                num(d.monitored_packets()),
            ]);
        }
    }

    md.push_str("\n### False positives per protocol (every protocol in monitor mode)\n\n");
    md.push_str(&format!(
        "The false-positive corpus (`tests/src/corpus.rs`, fixed seeds; the same frames \
         `tests/tests/false_positives.rs` asserts are never dropped): {} groups, {} flows, {} \
         packets, {} bytes of DNS, QUIC, TLS/HTTP/SSH (browser ClientHellos with post-quantum \
         key shares, whole and split over two segments, included), STUN and WebRTC DTLS, RTP, \
         NTP, fully encrypted UDP and DTLS 1.3. Each group replayed in a freshly loaded program with every \
         protocol set to monitor, so rules that are off or monitor by default are measured too. \
         A packet is flagged when the program reported it as that protocol; rates are of the \
         whole corpus. No endpoint list is loaded (`endpoints` cannot flag anything here); the \
         shipped VPN domain list (packaging/vpn-domains.txt) is, as `vpn-filter run` loads it \
         (`tls_sni`).\n\n",
        group_rows.len(),
        num(monitor.flows),
        num(monitor.packets),
        num(monitor.bytes),
    ));
    let rows: Vec<Vec<String>> = Protocol::ALL
        .iter()
        .filter(|p| **p != Protocol::None)
        .map(|p| {
            let f = monitor.by_protocol.get(p).copied().unwrap_or_default();
            vec![
                p.name().to_string(),
                num(f.flows),
                percent(f.flows, monitor.flows),
                num(f.packets),
                percent(f.packets, monitor.packets),
                num(f.bytes),
                percent(f.bytes, monitor.bytes),
            ]
        })
        .collect();
    md.push_str(&table(
        &[
            "protocol",
            "flagged flows",
            "of flows",
            "flagged packets",
            "of packets",
            "flagged bytes",
            "of bytes",
        ],
        &rows,
    ));

    md.push_str("\n### False positives per corpus group\n\n");
    md.push_str(&format!(
        "Under the default policy the corpus had **{} dropped packets in {} flows** (must be \
         0: `cargo xtask accuracy` fails otherwise) and {} monitored packets.\n\n",
        num(default.dropped_packets),
        num(default.dropped_flows),
        num(default.monitored_packets),
    ));
    md.push_str(&table(
        &[
            "traffic",
            "flows",
            "packets",
            "flagged flows (all monitor)",
            "flagged packets (all monitor)",
            "flagged as (flows)",
            "dropped packets (default policy)",
            "monitored packets (default policy)",
        ],
        &group_rows,
    ));

    Ok(())
}
