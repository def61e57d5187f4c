//! Prometheus endpoint (`vpn-filter run --metrics 127.0.0.1:9469`).
//!
//! Every scrape takes one [`StatusReport`] (kernel counters summed over CPUs, the event
//! pipeline's counters, the registry status) and encodes it with `prometheus-client`: as
//! OpenMetrics text when the scraper asks for it (Prometheus does), as the classic Prometheus
//! text format (0.0.4) otherwise. Metric names are documented in docs/metrics.md.
//!
//! The HTTP side is hyper's HTTP/1.1 server, kept small: `GET`/`HEAD /metrics`, one request
//! per connection, bounded request size and time, a bounded number of connections.

use std::{
    convert::Infallible,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use anyhow::{anyhow, Context as _, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};
use tokio::{net::TcpListener, sync::Semaphore};
use vpn_filter_common::{Counter, Protocol, Verdict};

use crate::{client::status::StatusReport, daemon::status::Sources};

/// The port used when `--metrics` names none.
pub const DEFAULT_PORT: u16 = 9469;
const MAX_REQUEST: usize = 8192;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_CONNECTIONS: usize = 16;

pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Parses `--metrics`: `PORT`, `HOST:PORT`, `[V6]:PORT` or `HOST` (port 9469). A bare port
/// listens on 127.0.0.1: the endpoint is loopback-only unless an address says otherwise.
pub fn parse_listen(spec: &str) -> Result<SocketAddr> {
    let spec = spec.trim();
    if let Ok(port) = spec.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    if let Ok(sa) = spec.parse::<SocketAddr>() {
        return Ok(sa);
    }
    if let Ok(ip) = spec.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, DEFAULT_PORT));
    }
    Err(anyhow!(
        "--metrics {spec:?}: expected PORT, ADDRESS or ADDRESS:PORT (e.g. 127.0.0.1:9469 or [::1]:9469)"
    ))
}

/// Binds the endpoint (at startup, so a taken port fails the start with a clear error). A
/// std listener: start-up runs before the runtime that serves it exists.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener> {
    if !addr.ip().is_loopback() {
        log::warn!(
            "metrics endpoint on {addr} is reachable from other hosts; the counters reveal traffic patterns, restrict access with a firewall"
        );
    }
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("listening for metrics on {addr}"))?;
    listener
        .set_nonblocking(true)
        .context("making the metrics socket non-blocking")?;
    Ok(listener)
}

/// Serves scrapes until the task is cancelled: HTTP/1.1 by hyper, one request per
/// connection, at most [`MAX_CONNECTIONS`] at once, each done within [`REQUEST_TIMEOUT`].
pub async fn serve(listener: TcpListener, sources: Sources) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                log::warn!("metrics accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            log::debug!("metrics: too many connections, dropped {peer}");
            continue;
        };
        let sources = sources.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let sources = sources.clone();
                async move { Ok::<_, Infallible>(respond(&req, &sources)) }
            });
            let conn = http1::Builder::new()
                .keep_alive(false)
                .title_case_headers(true)
                .max_buf_size(MAX_REQUEST)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(REQUEST_TIMEOUT, conn).await {
                Ok(Err(e)) => log::debug!("metrics request from {peer}: {e}"),
                Err(_) => log::debug!("metrics request from {peer} timed out"),
                Ok(Ok(())) => {}
            }
            drop(permit);
        });
    }
}

/// The answer to one request: `GET` or `HEAD /metrics` (OpenMetrics when the `Accept` header
/// asks for it), 404 for other paths, 405 for other methods.
fn respond<B>(req: &Request<B>, sources: &Sources) -> Response<Full<Bytes>> {
    let with_body = req.method() == Method::GET;
    if !with_body && req.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n", true);
    }
    if req.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "metrics are at /metrics\n",
            with_body,
        );
    }
    let openmetrics = wants_openmetrics(req.headers());
    let encoded = sources
        .report()
        .and_then(|report| encode(report, openmetrics));
    match encoded {
        Ok((body, ctype)) => response(StatusCode::OK, ctype, body, with_body),
        Err(e) => {
            log::warn!("metrics scrape: {e:#}");
            let body = format!("reading the counters failed: {e:#}\n");
            response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                body,
                with_body,
            )
        }
    }
}

/// Whether an `Accept` header asks for OpenMetrics (Prometheus sends one that does).
fn wants_openmetrics(headers: &header::HeaderMap) -> bool {
    headers.get_all(header::ACCEPT).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.contains("application/openmetrics-text"))
    })
}

fn plain(status: StatusCode, body: &'static str, with_body: bool) -> Response<Full<Bytes>> {
    response(status, "text/plain", body.to_string(), with_body)
}

/// A response with `Content-Type` and the body's length (also for `HEAD`, which sends none).
fn response(
    status: StatusCode,
    ctype: &'static str,
    body: String,
    with_body: bool,
) -> Response<Full<Bytes>> {
    let len = body.len();
    let body = if with_body {
        Bytes::from(body)
    } else {
        Bytes::new()
    };
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    r
}

/// Encodes a report; returns the text and its content type.
pub fn encode(report: StatusReport, openmetrics: bool) -> Result<(String, &'static str)> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ReportCollector(report)));
    let mut body = String::with_capacity(16 * 1024);
    if openmetrics {
        prometheus_client::encoding::text::encode(&mut body, &registry)
            .map_err(|_| anyhow!("encoding the metrics failed"))?;
        Ok((body, OPENMETRICS_CONTENT_TYPE))
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut body, &registry)
            .map_err(|_| anyhow!("encoding the metrics failed"))?;
        Ok((body, PROMETHEUS_CONTENT_TYPE))
    }
}

#[derive(Debug)]
struct ReportCollector(StatusReport);

type Enc<'a> = DescriptorEncoder<'a>;

fn counter(enc: &mut Enc, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    let m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    c.encode(m)
}

fn gauge<V: prometheus_client::encoding::EncodeGaugeValue>(
    enc: &mut Enc,
    name: &str,
    help: &str,
    v: V,
) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    let m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    g.encode(m)
}

/// A counter family with one label.
fn counters_by(
    enc: &mut Enc,
    name: &str,
    help: &str,
    label: &str,
    series: &[(&str, u64)],
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, n) in series {
        let labels = [(label, *value)];
        ConstCounter::new(*n).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn unix_seconds(t: Option<time::OffsetDateTime>) -> f64 {
    t.map_or(0.0, |t| t.unix_timestamp_nanos() as f64 / 1e9)
}

impl Collector for ReportCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let r = &self.0;
        let e = &mut enc;
        encode_build_and_process(e, r)?;
        encode_known_endpoints(e, r)?;
        encode_vpn_domains(e, r)?;
        encode_verdicts(e, r)?;
        encode_kernel_counters(e, r)?;
        encode_event_pipeline(e, r)?;
        encode_registry(e, r)?;
        Ok(())
    }
}

/// Build and process.
fn encode_build_and_process(
    e: &mut DescriptorEncoder,
    r: &StatusReport,
) -> Result<(), std::fmt::Error> {
    // Build and process.
    {
        let mut m = e.encode_descriptor(
            "vpn_filter_build_info",
            "Controller version (always 1).",
            None,
            MetricType::Gauge,
        )?;
        let labels = [("version", r.version.as_str())];
        ConstGauge::new(1i64).encode(m.encode_family(&labels)?)?;
    }
    gauge(
        e,
        "vpn_filter_start_time_seconds",
        "Unix time the controller started.",
        unix_seconds(Some(r.started_at)),
    )?;
    gauge(
        e,
        "vpn_filter_program_id",
        "Kernel id of the loaded XDP program (0 if unknown).",
        r.program_id.unwrap_or(0) as i64,
    )?;
    {
        let mut m = e.encode_descriptor(
            "vpn_filter_interface_attached",
            "Interfaces the program is attached to (1 per interface), with the XDP mode.",
            None,
            MetricType::Gauge,
        )?;
        for i in &r.interfaces {
            let labels = [("iface", i.name.as_str()), ("mode", i.mode.as_str())];
            ConstGauge::new(1i64).encode(m.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

/// Known endpoints: per provider of the feed in force.
fn encode_known_endpoints(
    e: &mut DescriptorEncoder,
    r: &StatusReport,
) -> Result<(), std::fmt::Error> {
    // Known endpoints: per provider of the feed in force.
    if let Some(ep) = &r.endpoints {
        gauge(
            e,
            "vpn_filter_endpoint_prefixes",
            "Prefixes of the endpoint feed in force.",
            (ep.feed.v4_prefixes + ep.feed.v6_prefixes) as i64,
        )?;
        let mut m = e.encode_descriptor(
            "vpn_filter_endpoint_packets",
            "Packets from unregistered clients to a provider's listed endpoints, by provider and verdict (dropped, monitored).",
            None,
            MetricType::Counter,
        )?;
        for p in &ep.providers {
            for (verdict, n) in [("dropped", p.dropped), ("monitored", p.monitored)] {
                let labels = [("provider", p.name.as_str()), ("verdict", verdict)];
                ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
            }
        }
    }
    Ok(())
}

/// The VPN domain list of the `tls_sni` rule.
fn encode_vpn_domains(e: &mut DescriptorEncoder, r: &StatusReport) -> Result<(), std::fmt::Error> {
    if let Some(d) = &r.vpn_domains {
        gauge(
            e,
            "vpn_filter_vpn_domains",
            "Domains of the VPN domain list in force (tls_sni rule).",
            d.domains as i64,
        )?;
        counters_by(
            e,
            "vpn_filter_vpn_domain_loads",
            "Loads of the VPN domain list by outcome (ok, error: refused, the list in force stayed).",
            "outcome",
            &[("ok", d.loads_ok), ("error", d.loads_failed)],
        )?;
    }
    Ok(())
}

/// Verdicts per protocol.
fn encode_verdicts(e: &mut DescriptorEncoder, r: &StatusReport) -> Result<(), std::fmt::Error> {
    let c = &r.counters;
    // Verdicts per protocol.
    {
        let mut m = e.encode_descriptor(
            "vpn_filter_verdicts",
            "Classified VPN packets by protocol and verdict (allowed, dropped, monitored, pending, ignored).",
            None,
            MetricType::Counter,
        )?;
        for p in &Protocol::ALL[1..] {
            for v in Verdict::ALL {
                let labels = [("protocol", p.name()), ("verdict", v.name())];
                ConstCounter::new(c.verdict(p.name(), v.name()))
                    .encode(m.encode_family(&labels)?)?;
            }
        }
    }
    Ok(())
}

/// The kernel's parse and infrastructure counters.
fn encode_kernel_counters(
    e: &mut DescriptorEncoder,
    r: &StatusReport,
) -> Result<(), std::fmt::Error> {
    let c = &r.counters;
    // Parse and infrastructure counters: every Counter has a home here (the match is
    // exhaustive, so a new counter cannot be forgotten).
    let mut by_family = Vec::new();
    let mut passed = Vec::new();
    for kc in Counter::ALL {
        let n = &c.counter(kc.name());
        match kc {
            Counter::Packets => counter(e, "vpn_filter_packets", "Packets the XDP program saw.", *n)?,
            Counter::NonIp | Counter::Ipv4 | Counter::Ipv6 => by_family.push((kc.name(), *n)),
            Counter::Fragment | Counter::Truncated | Counter::Malformed => {
                passed.push((kc.name(), *n))
            }
            Counter::Candidates => counter(e, "vpn_filter_candidates", "Packets whose headers made them VPN candidates (payload inspected).", *n)?,
            Counter::FlowHit => counter(e, "vpn_filter_flow_hits", "Packets that found their flow in the flow map.", *n)?,
            Counter::FlowInsert => counter(e, "vpn_filter_flow_inserts", "Flow map insertions.", *n)?,
            Counter::FlowInsertFailed => counter(e, "vpn_filter_flow_insert_failures", "Flow map insertions that failed.", *n)?,
            Counter::AllowlistLookups => counter(e, "vpn_filter_allowlist_lookups", "Allowlist lookups (one per newly judged flow).", *n)?,
            Counter::EventsEmitted => counter(e, "vpn_filter_events_emitted", "Events the kernel put in the ring buffer.", *n)?,
            Counter::EventsSuppressed => counter(e, "vpn_filter_events_suppressed", "Events not emitted because their source exceeded its event rate (--events-per-source) or the CPU its event budget (--events-per-cpu).", *n)?,
            Counter::EventsLost => counter(e, "vpn_filter_events_lost", "Events lost because the ring buffer was full.", *n)?,
            Counter::InternalError => counter(e, "vpn_filter_internal_errors", "Map updates in the XDP program that should not fail but did.", *n)?,
            Counter::TinyFragment => counter(e, "vpn_filter_tiny_fragments_dropped", "First fragments too small to carry the L4 header and payload start (RFC 1858 evasion): dropped.", *n)?,
            Counter::FlowRejudged => counter(e, "vpn_filter_flows_rejudged", "Flow entries whose endpoints were looked up again because the allowlist changed since their verdict.", *n)?,
            Counter::EventsRepeatSource => counter(e, "vpn_filter_events_repeat_source", "Events emitted from the reserve for sources seen retrying while the per-CPU event budget was spent.", *n)?,
            Counter::EndpointLookups => counter(e, "vpn_filter_endpoint_lookups", "Endpoint trie lookups (packets whose destination passed the endpoint bitmap).", *n)?,
            Counter::ExtHeaderLimit => counter(e, "vpn_filter_ext_header_overflow", "IPv6 packets whose extension header chain is longer than the parser follows; dropped unless --ext-header-overflow pass.", *n)?,
            Counter::FragmentOfDropped => counter(e, "vpn_filter_fragments_of_dropped", "Non-first fragments of a datagram whose first fragment was dropped (passed; they cannot be reassembled).", *n)?,
            Counter::Encapsulated => counter(e, "vpn_filter_encapsulated", "Packets judged inside an encapsulation (PPPoE, MPLS, IP-in-IP, GRE, VXLAN, Geneve).", *n)?,
            Counter::TcpStreamBuffered => counter(e, "vpn_filter_tcp_stream_buffered", "TCP segments held in a per-flow stream buffer because a candidate stream's first bytes arrived split.", *n)?,
        }
    }
    counters_by(
        e,
        "vpn_filter_packets_by_family",
        "Packets by network layer: ipv4, ipv6, non_ip.",
        "family",
        &by_family,
    )?;
    counters_by(
        e,
        "vpn_filter_passed_unparsed",
        "Packets passed without judgement because their headers could not be followed, by reason.",
        "reason",
        &passed,
    )?;
    Ok(())
}

/// The controller's side of the event path.
fn encode_event_pipeline(
    e: &mut DescriptorEncoder,
    r: &StatusReport,
) -> Result<(), std::fmt::Error> {
    // The controller's side of the event path.
    let ev = &r.events;
    counter(
        e,
        "vpn_filter_events_received",
        "Events the controller read from the ring buffer.",
        ev.received,
    )?;
    counter(
        e,
        "vpn_filter_events_written",
        "Events written to the output (stdout or --events-file).",
        ev.written,
    )?;
    counter(
        e,
        "vpn_filter_events_output_failed",
        "Events whose write to the output failed.",
        ev.output_failed,
    )?;
    counter(
        e,
        "vpn_filter_events_undecodable",
        "Ring-buffer records of an unexpected size, skipped.",
        ev.undecodable,
    )?;
    counter(
        e,
        "vpn_filter_events_follower_dropped",
        "Event lines slow followers (events --follow, top) missed.",
        ev.follower_dropped,
    )?;
    gauge(
        e,
        "vpn_filter_event_followers",
        "Clients streaming events now.",
        ev.followers as i64,
    )?;
    Ok(())
}

/// Registry.
fn encode_registry(e: &mut DescriptorEncoder, r: &StatusReport) -> Result<(), std::fmt::Error> {
    // Registry.
    let reg = &r.registry;
    gauge(
        e,
        "vpn_filter_registry_serial",
        "Serial of the registry feed in force (-1 before the first good sync).",
        reg.serial.map_or(-1, |s| s as i64),
    )?;
    {
        let mut m = e.encode_descriptor(
            "vpn_filter_allowlist_prefixes",
            "Prefixes in the kernel allowlist, by address family.",
            None,
            MetricType::Gauge,
        )?;
        for (fam, n) in [("ipv4", reg.v4_prefixes), ("ipv6", reg.v6_prefixes)] {
            let labels = [("family", fam)];
            ConstGauge::new(n as i64).encode(m.encode_family(&labels)?)?;
        }
    }
    gauge(
        e,
        "vpn_filter_registry_last_sync_timestamp_seconds",
        "Unix time of the last registry sync attempt (0: none yet).",
        unix_seconds(reg.last_sync),
    )?;
    gauge(
        e,
        "vpn_filter_registry_last_success_timestamp_seconds",
        "Unix time of the last successful registry sync (0: none yet).",
        unix_seconds(reg.last_success),
    )?;
    gauge(
        e,
        "vpn_filter_registry_last_check_timestamp_seconds",
        "Unix time the registry source last answered with the feed in force (304) or a new feed that was applied (0: never).",
        unix_seconds(reg.last_check),
    )?;
    gauge(
        e,
        "vpn_filter_registry_feed_generated_timestamp_seconds",
        "generated_at of the registry feed in force, as Unix time (0: none, or a feed without it).",
        unix_seconds(reg.feed_generated_at),
    )?;
    gauge(
        e,
        "vpn_filter_registry_last_sync_success",
        "1 if the last registry sync attempt succeeded, 0 if it failed or none was made.",
        i64::from(reg.last_outcome.as_deref() == Some("ok")),
    )?;
    counters_by(
        e,
        "vpn_filter_registry_syncs",
        "Registry sync attempts by outcome (ok, error).",
        "outcome",
        &[("ok", reg.syncs_ok), ("error", reg.syncs_failed)],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        client::status::{EventsStatus, InterfaceStatus, KernelCounters, RegistryStatus},
        kernel::Stats,
        registry::sync::SyncReport,
    };

    fn report() -> StatusReport {
        let mut stats = Stats::default();
        stats
            .verdicts
            .insert((Protocol::WireGuard, Verdict::Dropped), 12);
        stats.counters.insert(Counter::Packets, 40);
        stats.counters.insert(Counter::Truncated, 2);
        let mut registry = RegistryStatus::default();
        registry.synced(
            42,
            &SyncReport {
                v4: 3,
                v6: 1,
                ..Default::default()
            },
        );
        registry.failed(&"GET http://registry/feed.json: connection refused");
        registry.confirmed();
        registry.feed_generated_at = Some(time::macros::datetime!(2026-12-05 10:00 UTC));
        StatusReport {
            version: "0.1.0".into(),
            pid: 1,
            started_at: time::OffsetDateTime::UNIX_EPOCH,
            uptime_secs: 1,
            program_id: Some(17),
            interfaces: vec![InterfaceStatus {
                name: "eth0".into(),
                ifindex: 2,
                mode: "native".into(),
            }],
            policy: BTreeMap::new(),
            registry,
            endpoints: None,
            vpn_domains: None,
            counters: KernelCounters::from_stats(&stats),
            events: EventsStatus {
                suppressed: 5,
                output_failed: 1,
                ..Default::default()
            },
        }
    }

    /// Sample lines as `name{labels} value`.
    fn samples(text: &str) -> BTreeMap<String, String> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (k, v) = l.rsplit_once(' ').expect("sample line");
                (k.to_string(), v.to_string())
            })
            .collect()
    }

    #[test]
    fn endpoint_metrics_name_each_provider_and_are_absent_without_endpoints() {
        let without = samples(&encode(report(), true).unwrap().0);
        assert!(!without
            .keys()
            .any(|k| k.starts_with("vpn_filter_endpoint_packets")));
        let mut r = report();
        let mut feed = RegistryStatus::default();
        feed.synced(
            None,
            &SyncReport {
                v4: 5,
                v6: 2,
                ..Default::default()
            },
        );
        r.endpoints = Some(crate::client::status::EndpointsReport {
            feed,
            providers: vec![crate::client::status::ProviderCounts {
                id: 1,
                name: "X".into(),
                dropped: 9,
                monitored: 4,
            }],
        });
        let s = samples(&encode(r, true).unwrap().0);
        assert_eq!(
            s["vpn_filter_endpoint_packets_total{provider=\"X\",verdict=\"dropped\"}"],
            "9"
        );
        assert_eq!(
            s["vpn_filter_endpoint_packets_total{provider=\"X\",verdict=\"monitored\"}"],
            "4"
        );
        assert_eq!(s["vpn_filter_endpoint_prefixes"], "7");
        assert_eq!(s["vpn_filter_endpoint_lookups_total"], "0");
    }

    #[test]
    fn openmetrics_output_has_the_documented_series() {
        let (text, ctype) = encode(report(), true).unwrap();
        assert_eq!(ctype, OPENMETRICS_CONTENT_TYPE);
        assert!(text.ends_with("# EOF\n"), "{text}");
        let s = samples(&text);
        assert_eq!(
            s["vpn_filter_verdicts_total{protocol=\"wireguard\",verdict=\"dropped\"}"],
            "12"
        );
        assert_eq!(
            s["vpn_filter_verdicts_total{protocol=\"openvpn\",verdict=\"allowed\"}"],
            "0"
        );
        assert_eq!(s["vpn_filter_packets_total"], "40");
        assert_eq!(
            s["vpn_filter_passed_unparsed_total{reason=\"truncated\"}"],
            "2"
        );
        assert_eq!(s["vpn_filter_registry_serial"], "42");
        assert_eq!(s["vpn_filter_allowlist_prefixes{family=\"ipv4\"}"], "3");
        // A 304 after a failed poll: the source is back and this gateway is current.
        assert_eq!(s["vpn_filter_registry_last_sync_success"], "1");
        assert_eq!(s["vpn_filter_registry_syncs_total{outcome=\"ok\"}"], "1");
        assert_eq!(s["vpn_filter_registry_syncs_total{outcome=\"error\"}"], "1");
        assert_eq!(
            s["vpn_filter_registry_feed_generated_timestamp_seconds"],
            "1796464800.0"
        );
        let checked: f64 = s["vpn_filter_registry_last_check_timestamp_seconds"]
            .parse()
            .unwrap();
        let success: f64 = s["vpn_filter_registry_last_success_timestamp_seconds"]
            .parse()
            .unwrap();
        assert!(checked >= success && success > 0.0, "{checked} {success}");
        assert_eq!(s["vpn_filter_events_output_failed_total"], "1");
        assert_eq!(
            s["vpn_filter_interface_attached{iface=\"eth0\",mode=\"native\"}"],
            "1"
        );
    }

    #[test]
    fn prometheus_text_output_has_the_same_samples() {
        let r = report();
        let (om, _) = encode(r.clone(), true).unwrap();
        let (text, ctype) = encode(r, false).unwrap();
        assert_eq!(ctype, PROMETHEUS_CONTENT_TYPE);
        assert!(!text.contains("# EOF"));
        assert_eq!(samples(&text), samples(&om));
    }

    #[test]
    fn openmetrics_is_served_when_an_accept_header_asks_for_it() {
        let request = |accept: &[&str]| {
            let mut b = Request::builder().uri("/metrics");
            for a in accept {
                b = b.header(header::ACCEPT, *a);
            }
            b.body(()).unwrap()
        };
        let prometheus =
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
        assert!(wants_openmetrics(request(&[prometheus]).headers()));
        assert!(wants_openmetrics(
            request(&["text/plain", "application/openmetrics-text"]).headers()
        ));
        assert!(!wants_openmetrics(request(&["text/plain"]).headers()));
        assert!(!wants_openmetrics(request(&[]).headers()));
    }

    #[test]
    fn listen_addresses_default_to_loopback() {
        assert_eq!(
            parse_listen("9469").unwrap(),
            "127.0.0.1:9469".parse().unwrap()
        );
        assert_eq!(
            parse_listen("0.0.0.0:9100").unwrap(),
            "0.0.0.0:9100".parse().unwrap()
        );
        assert_eq!(
            parse_listen("[::1]:9469").unwrap(),
            "[::1]:9469".parse().unwrap()
        );
        assert_eq!(parse_listen("::1").unwrap(), "[::1]:9469".parse().unwrap());
        let e = parse_listen("localhost:x").unwrap_err().to_string();
        assert!(e.contains("expected PORT"), "{e}");
    }
}
