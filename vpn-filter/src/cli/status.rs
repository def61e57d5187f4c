//! `vpn-filter status`: one report from the running daemon, as text or JSON.

use std::{fmt::Write as _, path::PathBuf};

use anyhow::Result;
use time::OffsetDateTime;
use vpn_filter_common::Verdict;

use crate::client::{self, status::StatusReport};

#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// Print the status document as JSON (stable field names, see docs/metrics.md).
    #[arg(long)]
    pub json: bool,
    /// The daemon's control socket.
    #[arg(long, value_name = "PATH", default_value = client::DEFAULT_SOCKET)]
    pub control_socket: PathBuf,
}

pub fn status(args: StatusArgs) -> Result<()> {
    let report = client::request_status(&args.control_socket)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", render_text(&report));
    }
    Ok(())
}

/// `3725` -> `1h 2m`: the coarse uptime operators read.
pub fn duration_text(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

fn time_text(t: Option<OffsetDateTime>) -> String {
    t.and_then(|t| {
        t.format(&time::format_description::well_known::Rfc3339)
            .ok()
    })
    .unwrap_or_else(|| "never".into())
}

/// The human-readable form of `vpn-filter status`.
pub fn render_text(r: &StatusReport) -> String {
    let mut o = String::new();
    let started = time_text(Some(r.started_at));
    let _ = writeln!(
        o,
        "vpn-filter {} (pid {}), up {} since {started}",
        r.version,
        r.pid,
        duration_text(r.uptime_secs)
    );
    let _ = writeln!(
        o,
        "program id: {}",
        r.program_id.map_or("?".into(), |i| i.to_string())
    );
    let ifaces: Vec<String> = r
        .interfaces
        .iter()
        .map(|i| format!("{} (ifindex {}, {})", i.name, i.ifindex, i.mode))
        .collect();
    let _ = writeln!(o, "interfaces: {}", ifaces.join(", "));
    let reg = &r.registry;
    let _ = writeln!(
        o,
        "registry: {}: serial {}, {} IPv4 + {} IPv6 prefixes in force",
        reg.source,
        reg.serial.map_or("none".into(), |s| s.to_string()),
        reg.v4_prefixes,
        reg.v6_prefixes
    );
    let _ = writeln!(
        o,
        "  last sync: {} ({}), last success: {}, {} ok / {} failed",
        time_text(reg.last_sync),
        reg.last_outcome.as_deref().unwrap_or("none yet"),
        time_text(reg.last_success),
        reg.syncs_ok,
        reg.syncs_failed
    );
    if let Some(e) = &reg.last_error {
        let _ = writeln!(o, "  last error ({}): {e}", time_text(reg.last_error_at));
    }
    if let Some(ep) = &r.endpoints {
        let f = &ep.feed;
        let _ = writeln!(
            o,
            "endpoints: {}: serial {}, {} IPv4 + {} IPv6 prefixes of {} provider(s); last sync {} ({})",
            f.source,
            f.serial.map_or("none".into(), |s| s.to_string()),
            f.v4_prefixes,
            f.v6_prefixes,
            ep.providers.len(),
            time_text(f.last_sync),
            f.last_outcome.as_deref().unwrap_or("none yet"),
        );
        if let Some(e) = &f.last_error {
            let _ = writeln!(o, "  last error ({}): {e}", time_text(f.last_error_at));
        }
        for p in &ep.providers {
            let _ = writeln!(
                o,
                "  provider {}: {} dropped, {} monitored",
                p.name, p.dropped, p.monitored
            );
        }
    }
    if let Some(d) = &r.vpn_domains {
        let _ = writeln!(
            o,
            "vpn domains: {}: {} domains in force, loaded {}; {} ok / {} refused",
            d.source,
            d.domains,
            time_text(d.loaded_at),
            d.loads_ok,
            d.loads_failed
        );
        if let Some(e) = &d.last_error {
            let _ = writeln!(o, "  last refused ({}): {e}", time_text(d.last_error_at));
        }
    }
    let modes: Vec<String> = r.policy.iter().map(|(p, m)| format!("{p}={m}")).collect();
    let _ = writeln!(o, "policy: {}", modes.join(" "));
    let c = &r.counters;
    let _ = writeln!(
        o,
        "packets: {} (IPv4 {}, IPv6 {}, non-IP {}); VPN candidates {}",
        c.counter("packets"),
        c.counter("ipv4"),
        c.counter("ipv6"),
        c.counter("non_ip"),
        c.counter("candidates")
    );
    let _ = writeln!(
        o,
        "passed unparsed: fragment {}, truncated {}, malformed {}",
        c.counter("fragment"),
        c.counter("truncated"),
        c.counter("malformed"),
    );
    let _ = writeln!(
        o,
        "parser: tiny fragments {} (dropped), ext-header overflow {}, fragments of dropped {}, encapsulated {}, tcp stream buffered {}",
        c.counter("tiny_fragment"),
        c.counter("ext_header_limit"),
        c.counter("fragment_of_dropped"),
        c.counter("encapsulated"),
        c.counter("tcp_stream_buffered"),
    );
    let _ = writeln!(
        o,
        "flows: {} hits, {} inserts, {} insert failures; {} allowlist lookups; {} internal errors",
        c.counter("flow_hit"),
        c.counter("flow_insert"),
        c.counter("flow_insert_failed"),
        c.counter("allowlist_lookups"),
        c.counter("internal_error")
    );
    let verdicts: Vec<&str> = Verdict::ALL.iter().map(|v| v.name()).collect();
    let _ = write!(o, "{:<18}", "protocol");
    for v in &verdicts {
        let _ = write!(o, "{v:>12}");
    }
    o.push('\n');
    let mut any = false;
    for (p, by) in &c.verdicts {
        if by.values().all(|n| *n == 0) {
            continue;
        }
        any = true;
        let _ = write!(o, "{p:<18}");
        for v in &verdicts {
            let _ = write!(o, "{:>12}", by.get(*v).copied().unwrap_or(0));
        }
        o.push('\n');
    }
    if !any {
        let _ = writeln!(o, "  (no VPN traffic seen yet)");
    }
    let e = &r.events;
    let _ = writeln!(
        o,
        "events: {} emitted, {} suppressed by the per-source rate limit, {} lost (ring buffer full)",
        e.emitted, e.suppressed, e.lost
    );
    let _ = writeln!(
        o,
        "  output {}: {} written, {} failed; {} followers, {} lines they missed; {} undecodable",
        e.output, e.written, e.output_failed, e.followers, e.follower_dropped, e.undecodable
    );
    o
}

#[cfg(test)]
mod tests {
    use vpn_filter_common::{Counter, Protocol};

    use super::*;
    use crate::{
        client::status::{EventsStatus, InterfaceStatus, KernelCounters, RegistryStatus},
        kernel::Stats,
        registry::sync::SyncReport,
    };

    fn sample() -> StatusReport {
        let mut stats = Stats::default();
        stats
            .verdicts
            .insert((Protocol::WireGuard, Verdict::Dropped), 12);
        stats.counters.insert(Counter::Packets, 40);
        stats.counters.insert(Counter::EventsSuppressed, 7);
        let mut registry = RegistryStatus {
            source: "/etc/vpn-filter/registry.json".into(),
            ..Default::default()
        };
        registry.synced(
            42,
            &SyncReport {
                v4: 3,
                v6: 1,
                ..Default::default()
            },
        );
        StatusReport {
            version: "0.1.0".into(),
            pid: 99,
            started_at: OffsetDateTime::UNIX_EPOCH,
            uptime_secs: 3725,
            program_id: Some(17),
            interfaces: vec![InterfaceStatus {
                name: "eth0".into(),
                ifindex: 2,
                mode: "native".into(),
            }],
            policy: [("wireguard".to_string(), "enforce".to_string())].into(),
            registry,
            endpoints: None,
            vpn_domains: None,
            counters: KernelCounters::from_stats(&stats),
            events: EventsStatus {
                output: "stdout".into(),
                suppressed: 7,
                ..Default::default()
            },
        }
    }

    #[test]
    fn report_round_trips_through_json() {
        let r = sample();
        let text = serde_json::to_string(&r).unwrap();
        let back: StatusReport = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["counters"]["verdicts"]["wireguard"]["dropped"], 12);
        assert_eq!(v["counters"]["verdicts"]["openvpn"]["dropped"], 0);
        assert_eq!(v["registry"]["serial"], 42);
        assert_eq!(v["registry"]["last_outcome"], "ok");
    }

    #[test]
    fn text_names_interfaces_registry_and_counters() {
        let text = render_text(&sample());
        assert!(text.contains("eth0 (ifindex 2, native)"), "{text}");
        assert!(text.contains("serial 42, 3 IPv4 + 1 IPv6"), "{text}");
        assert!(text.contains("up 1h 2m"), "{text}");
        let wg = text
            .lines()
            .find(|l| l.starts_with("wireguard"))
            .unwrap_or_else(|| panic!("a wireguard row in {text}"));
        assert_eq!(
            wg.split_whitespace().collect::<Vec<_>>(),
            ["wireguard", "0", "12", "0", "0", "0"]
        );
        assert!(
            !text.contains("\nopenvpn"),
            "protocols without traffic are left out"
        );
        assert!(text.contains("7 suppressed"), "{text}");
    }

    #[test]
    fn a_failed_sync_keeps_the_serial_in_force() {
        let mut r = RegistryStatus::default();
        r.synced(
            5,
            &SyncReport {
                v4: 1,
                ..Default::default()
            },
        );
        r.failed(&"entry REG-9: bad prefix");
        assert_eq!(r.serial, Some(5));
        assert_eq!(r.last_outcome.as_deref(), Some("error"));
        assert_eq!(r.last_error.as_deref(), Some("entry REG-9: bad prefix"));
        assert_eq!((r.syncs_ok, r.syncs_failed), (1, 1));
    }
}
