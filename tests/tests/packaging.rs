//! The operator-facing examples in packaging/ are checked against the real tools and the real
//! controller: the Prometheus config and alert rules with Debian's `promtool` (installed by
//! `cargo xtask test`), the rules' metric names against what the controller's exporter
//! writes, and the Vector pipeline's field mapping against the fields a real event record
//! has. Vector itself is not packaged for Debian, so its own `vector validate` cannot run
//! here; see the report printed by the last test.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use vpn_filter::{
    client::{
        event::{Clock, EventRecord},
        status::{
            EndpointsReport, EventsStatus, InterfaceStatus, KernelCounters, ProviderCounts,
            RegistryStatus, StatusReport,
        },
    },
    kernel::Stats,
    registry::sync::SyncReport,
};

fn packaging() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging")
}

fn promtool(args: &[&str]) -> String {
    let tool = Path::new("/usr/bin/promtool");
    assert!(
        tool.exists(),
        "{} is missing: Debian's prometheus package provides it (`cargo xtask test` installs it)",
        tool.display()
    );
    let out = Command::new(tool)
        .args(args)
        .current_dir(packaging().join("prometheus"))
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn fleet_prometheus_scrape_config_and_alert_rules_pass_promtool_check() {
    let out = promtool(&["check", "config", "prometheus.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
    let out = promtool(&["check", "rules", "vpn-filter-rules.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn fleet_alert_rules_fire_as_their_promtool_unit_tests_expect() {
    let out = promtool(&["test", "rules", "vpn-filter-rules.test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

/// The sample names the controller's exporter writes (counters with their `_total`), as
/// PromQL expressions name them.
fn exported_sample_names() -> BTreeSet<String> {
    let mut registry = RegistryStatus::default();
    registry.synced(1, &SyncReport::default());
    let report = StatusReport {
        version: "0".into(),
        pid: 1,
        started_at: time::OffsetDateTime::UNIX_EPOCH,
        uptime_secs: 1,
        program_id: Some(1),
        interfaces: vec![InterfaceStatus {
            name: "eth0".into(),
            ifindex: 2,
            mode: "native".into(),
        }],
        policy: Default::default(),
        // With an endpoint feed, so its series are among the exported ones.
        endpoints: Some(EndpointsReport {
            feed: registry.clone(),
            providers: vec![ProviderCounts {
                id: 1,
                name: "example".into(),
                dropped: 0,
                monitored: 0,
            }],
        }),
        registry,
        // The VPN domain list's series too.
        vpn_domains: Some(Default::default()),
        counters: KernelCounters::from_stats(&Stats::default()),
        events: EventsStatus::default(),
    };
    let (text, _) = vpn_filter::daemon::observe::metrics::encode(report, false).expect("encode");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            l.split(['{', ' '])
                .next()
                .expect("a sample name")
                .to_string()
        })
        .collect()
}

/// `vpn_filter_...` names in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("vpn_filter_") {
        // Skip recording-rule names (`instance:vpn_filter_dropped:rate5m`).
        let preceded_by_colon = i > 0 && rest.as_bytes()[i - 1] == b':';
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !preceded_by_colon {
            out.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    out
}

#[test]
fn fleet_alert_rules_use_only_metrics_the_controller_exports() {
    let rules = std::fs::read_to_string(packaging().join("prometheus/vpn-filter-rules.yml"))
        .expect("rules");
    let exported = exported_sample_names();
    let used = metric_names(&rules);
    assert!(
        used.len() >= 8,
        "the rules use the controller's metrics: {used:?}"
    );
    let unknown: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        unknown.is_empty(),
        "the alert rules name metrics the controller does not export: {unknown:?}; exported: {exported:?}"
    );
}

#[test]
fn the_grafana_dashboard_is_valid_json_and_queries_only_exported_metrics() {
    let path = packaging().join("grafana/vpn-filter.json");
    let text = std::fs::read_to_string(&path).expect("the dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()));
    let exprs: Vec<&str> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .map(|t| t["expr"].as_str().expect("a PromQL expression"))
        .collect();
    assert!(exprs.len() >= 10, "the dashboard has queries: {exprs:?}");
    let exported = exported_sample_names();
    let used = metric_names(&exprs.join("\n"));
    let unknown: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics the controller does not export: {unknown:?}"
    );
}

#[test]
fn fleet_vector_mapping_reads_only_fields_that_event_records_have() {
    let config = std::fs::read_to_string(packaging().join("vector/vpn-filter-events.toml"))
        .expect("vector config");
    // The remap program's reads of the parsed event: `e.FIELD` (not `.source.ip = ...`).
    let source = config
        .split("source = '''")
        .nth(1)
        .and_then(|s| s.split("'''").next())
        .expect("the remap source");
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.';
    let mut read = BTreeSet::new();
    for (i, _) in source.match_indices("e.") {
        if source[..i].chars().next_back().is_some_and(ident) {
            continue;
        }
        let tail = &source[i + 2..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        read.insert(tail[..end].to_string());
    }
    // A real record, serialised as the controller writes it.
    let record = EventRecord::from_event(&vpn_filter_common::Event::default(), &Clock::new());
    let json = serde_json::to_value(&record).expect("serialise");
    let fields: BTreeSet<String> = json
        .as_object()
        .expect("an object")
        .keys()
        .cloned()
        .collect();
    let unknown: Vec<&String> = read.iter().filter(|f| !fields.contains(*f)).collect();
    assert!(
        unknown.is_empty(),
        "the Vector remap reads fields events do not have: {unknown:?} (event fields: {fields:?})"
    );
    let unmapped: Vec<&String> = fields.iter().filter(|f| !read.contains(*f)).collect();
    assert!(
        unmapped.is_empty(),
        "every event field is mapped: {unmapped:?} are not"
    );
    // Every field is named in the mapping table of the config's header too.
    for f in &fields {
        assert!(
            config.contains(&format!("#   {f}")) || config.contains(&format!(", {f}")),
            "the header's mapping table does not list `{f}`"
        );
    }
    let vector = ["/usr/bin/vector", "/usr/local/bin/vector"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    match vector {
        Some(v) => {
            let out = Command::new(v)
                .args(["validate", "--no-environment"])
                .arg(packaging().join("vector/vpn-filter-events.toml"))
                .output()
                .expect("run vector");
            assert!(
                out.status.success(),
                "vector validate: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        None => eprintln!(
            "[packaging] vector is not installed (not packaged for Debian): its config was checked against real event fields, not by `vector validate`"
        ),
    }
}
