//! Drop events, counters, the metrics endpoint and the control socket of the real daemon:
//! `target/debug/vpn-filter run` attached to the lab's veth in the filter namespace, packets
//! sent by the client namespace's kernel stack or as raw frames.

use std::{
    collections::{BTreeMap, HashMap},
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::PathBuf,
    time::{Duration, Instant},
};

use serde_json::Value;
use vpn_filter_tests::{
    gateway_lab::{controller_path, TempDir},
    lab::{
        registry_json, sa, FilterLab, FILTER_V4, FILTER_V6, REGISTERED_V4, REGISTERED_V6,
        UNREGISTERED_V4, UNREGISTERED_V6,
    },
    netns::{udp_send, Process, RawSocket},
    packet::{wireguard_data, wireguard_initiation, Frame},
};

const WG_PORT: u16 = 51820;
const METRICS_PORT: u16 = 9469;
const START_TIMEOUT: Duration = vpn_filter_tests::CONTROLLER_START;

/// A `vpn-filter run` in the lab's filter namespace, with its control socket in a temp dir.
struct Daemon {
    proc: Process,
    socket: PathBuf,
    dir: TempDir,
}

impl Daemon {
    fn start(lab: &FilterLab, extra: &[&str]) -> Daemon {
        let dir = TempDir::new("obs");
        let registry = dir.path().join("registry.json");
        std::fs::write(
            &registry,
            registry_json(1, &[("REG-1", &[REGISTERED_V4, REGISTERED_V6])]),
        )
        .expect("write the registry");
        let socket = dir.path().join("control.sock");
        let mut cmd = lab.filter.command(controller_path());
        cmd.args(["run", "--no-pin", "--iface", &lab.filter_if, "--registry"])
            .arg(&registry)
            .arg("--control-socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .args(extra);
        let proc = Process::spawn(cmd);
        proc.wait_ready(START_TIMEOUT);
        Daemon { proc, socket, dir }
    }

    /// `vpn-filter <args> --control-socket <ours>`, run to completion.
    fn cli(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(controller_path())
            .args(args)
            .arg("--control-socket")
            .arg(&self.socket)
            .output()
            .expect("run the vpn-filter CLI")
    }

    fn status(&self) -> Value {
        let out = self.cli(&["status", "--json"]);
        assert!(
            out.status.success(),
            "status --json failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "status --json is not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Polls the status until `done` holds (the kernel counts synchronously, the controller
    /// reads the ring asynchronously); panics with the last status otherwise. A hang guard
    /// bounded by polls, not by the clock.
    fn wait_status(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        const POLLS: usize = 300;
        let mut s = Value::Null;
        for _ in 0..POLLS {
            s = self.status();
            if done(&s) {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{what}: not reached after {POLLS} polls; last status: {s:#}");
    }

    fn events(&self) -> Vec<Value> {
        self.proc
            .stdout_lines()
            .iter()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("event line not JSON ({e}): {l}"))
            })
            .collect()
    }
}

fn verdict(status: &Value, protocol: &str, verdict: &str) -> u64 {
    status["counters"]["verdicts"][protocol][verdict]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {protocol}/{verdict} in {status:#}"))
}

fn ev_counter(status: &Value, name: &str) -> u64 {
    status["events"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no events.{name} in {status:#}"))
}

fn send_wg(lab: &FilterLab, from: &str, sport: u16, to: &str, sender: u32) {
    udp_send(
        &lab.client,
        sa(from, sport),
        sa(to, WG_PORT),
        &wireguard_initiation(sender),
    );
}

/// Waits for exactly one event line, then makes sure no second one follows.
fn exactly_one_event(d: &Daemon) -> Value {
    let line = d
        .proc
        .next_line(Duration::from_secs(10))
        .unwrap_or_else(|| {
            panic!(
                "no event within 10 s; stderr:\n{}",
                d.proc.stderr_lines().join("\n")
            )
        });
    // The registered handshake sent before must not have produced one, and nothing may follow.
    std::thread::sleep(Duration::from_millis(500));
    let all = d.proc.stdout_lines();
    assert_eq!(all.len(), 1, "exactly one event expected, got {all:#?}");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("event not JSON ({e}): {line}"))
}

fn check_handshake_event(
    lab: &FilterLab,
    ev: &Value,
    src: &str,
    dst: &str,
    sport: u16,
    pkt_len: u64,
) {
    let ifindex = lab.filter.ifindex(&lab.filter_if) as u64;
    let expected = [
        ("iface", Value::from(lab.filter_if.as_str())),
        ("ifindex", Value::from(ifindex)),
        ("protocol", Value::from("wireguard")),
        ("message", Value::from("wg_initiation")),
        ("verdict", Value::from("dropped")),
        ("reason", Value::from("signature")),
        ("flow", Value::from("new")),
        ("src", Value::from(src)),
        ("dst", Value::from(dst)),
        ("sport", Value::from(sport)),
        ("dport", Value::from(WG_PORT)),
        ("ip_proto", Value::from(17)),
        ("pkt_len", Value::from(pkt_len)),
        ("vlan", Value::from(0)),
        ("suppressed_before", Value::from(0)),
    ];
    for (k, v) in expected {
        assert_eq!(ev[k], v, "field {k} of {ev:#}");
    }
    let t = time::OffsetDateTime::parse(
        ev["time"].as_str().expect("time is a string"),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap_or_else(|e| panic!("time {} is not RFC 3339: {e}", ev["time"]));
    let age = time::OffsetDateTime::now_utc() - t;
    assert!(
        age > time::Duration::seconds(-2) && age < time::Duration::seconds(30),
        "event time {t} is not about now"
    );
    let keys: Vec<&str> = ev
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys.len(),
        16,
        "the documented fields and no others: {keys:?}"
    );
}

#[test]
fn dropped_ipv4_handshake_produces_exactly_one_event_with_its_fields() {
    let lab = FilterLab::new();
    let d = Daemon::start(&lab, &[]);
    send_wg(&lab, REGISTERED_V4, 40001, FILTER_V4, 1);
    send_wg(&lab, UNREGISTERED_V4, 40002, FILTER_V4, 2);
    let ev = exactly_one_event(&d);
    check_handshake_event(
        &lab,
        &ev,
        UNREGISTERED_V4,
        FILTER_V4,
        40002,
        14 + 20 + 8 + 148,
    );
}

#[test]
fn dropped_ipv6_handshake_produces_exactly_one_event_with_its_fields() {
    let lab = FilterLab::new();
    let d = Daemon::start(&lab, &[]);
    send_wg(&lab, REGISTERED_V6, 40001, FILTER_V6, 1);
    send_wg(&lab, UNREGISTERED_V6, 40002, FILTER_V6, 2);
    let ev = exactly_one_event(&d);
    check_handshake_event(
        &lab,
        &ev,
        UNREGISTERED_V6,
        FILTER_V6,
        40002,
        14 + 40 + 8 + 148,
    );
}

#[test]
fn a_follow_up_packet_of_a_blocked_flow_is_reported_as_follow_up() {
    let lab = FilterLab::new();
    let d = Daemon::start(&lab, &[]);
    // A WireGuard data-only flow: three data packets pending, the fourth confirms it (a new
    // verdict), the fifth is a follow-up of the blocked flow. (Handshake messages are
    // conclusive alone and leave no flow entry: each is a new verdict.)
    for n in 0..5 {
        udp_send(
            &lab.client,
            sa(UNREGISTERED_V4, 40003),
            sa(FILTER_V4, WG_PORT),
            &wireguard_data(0x77, n, 64),
        );
    }
    let first = d
        .proc
        .next_line(Duration::from_secs(10))
        .expect("first event");
    let second = d
        .proc
        .next_line(Duration::from_secs(10))
        .expect("second event");
    let (first, second): (Value, Value) = (
        serde_json::from_str(&first).unwrap(),
        serde_json::from_str(&second).unwrap(),
    );
    assert_eq!(
        (first["flow"].as_str(), first["reason"].as_str()),
        (Some("new"), Some("confirmed"))
    );
    assert_eq!(
        (second["flow"].as_str(), second["reason"].as_str()),
        (Some("follow_up"), Some("flow_follow_up"))
    );
}

fn mac_bytes(text: &str) -> [u8; 6] {
    let v: Vec<u8> = text
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).expect("hex MAC"))
        .collect();
    v.try_into().expect("six bytes")
}

/// A flood source address: 10.99.x.y, none registered.
fn flood_source(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 99, (i / 200) as u8, (i % 200 + 1) as u8)
}

#[test]
fn a_flood_gives_bounded_events_and_exact_suppressed_counts() {
    const SOURCES: usize = 300;
    const PACKETS: usize = 20_000;
    const PER_SOURCE: u64 = 5;
    let lab = FilterLab::new();
    let d = Daemon::start(
        &lab,
        &[
            "--events-per-source",
            "5",
            "--loss-report-interval",
            "1",
            "--metrics",
            &METRICS_PORT.to_string(),
        ],
    );
    // Raw frames from 300 source addresses the client namespace does not own, each packet a
    // new flow (its own source port): the program sees every one as a fresh handshake.
    let raw = RawSocket::open(&lab.client, &lab.client_if);
    let dst_mac = mac_bytes(&lab.filter.mac(&lab.filter_if));
    let src_mac = mac_bytes(&lab.client.mac(&lab.client_if));
    let dst: Ipv4Addr = FILTER_V4.parse().unwrap();
    let start = Instant::now();
    for k in 0..PACKETS {
        let frame = Frame::eth()
            .macs(src_mac, dst_mac)
            .ipv4(flood_source(k % SOURCES), dst)
            .udp(1024 + (k / SOURCES) as u16, WG_PORT)
            .payload(&wireguard_initiation(k as u32))
            .build();
        raw.send(&frame);
    }
    let sent_secs = start.elapsed().as_secs_f64();

    // Every packet sent was judged and dropped: the counters match what was sent.
    let s = d.wait_status("all flood packets counted", |s| {
        verdict(s, "wireguard", "dropped") >= PACKETS as u64
    });
    assert_eq!(verdict(&s, "wireguard", "dropped"), PACKETS as u64);
    let s = d.wait_status("every emitted event written", |s| {
        ev_counter(s, "written") == ev_counter(s, "emitted")
    });
    let (emitted, suppressed, lost) = (
        ev_counter(&s, "emitted"),
        ev_counter(&s, "suppressed"),
        ev_counter(&s, "lost"),
    );
    assert_eq!(
        emitted + suppressed + lost,
        PACKETS as u64,
        "every dropped packet is either an event, a suppressed event or a lost one: {s:#}"
    );
    eprintln!(
        "flood: {PACKETS} packets from {SOURCES} sources in {sent_secs:.2} s: {emitted} events, {suppressed} suppressed, {lost} lost"
    );
    assert_eq!(lost, 0, "the ring buffer holds this flood");
    // Bounded: at most PER_SOURCE per source per one-second window the flood touched.
    let windows = sent_secs.ceil() as u64 + 1;
    assert!(
        emitted <= SOURCES as u64 * PER_SOURCE * windows,
        "{emitted} events for {SOURCES} sources over {sent_secs:.2} s"
    );
    assert!(
        emitted >= SOURCES as u64,
        "each source's first packet is reported"
    );

    // The JSON output has exactly the emitted events, each source within its budget, and the
    // suppressed counts they carry never exceed what was suppressed.
    let events = d.events();
    assert_eq!(events.len() as u64, emitted);
    let mut per_source: HashMap<String, u64> = HashMap::new();
    let mut carried = 0u64;
    for ev in &events {
        *per_source
            .entry(ev["src"].as_str().expect("src").to_string())
            .or_default() += 1;
        carried += ev["suppressed_before"].as_u64().expect("suppressed_before");
    }
    assert_eq!(per_source.len(), SOURCES, "every source appears");
    for (src, n) in &per_source {
        assert!(
            *n <= PER_SOURCE * windows,
            "{src}: {n} events over {windows} windows"
        );
    }
    assert!(
        carried <= suppressed,
        "{carried} carried > {suppressed} suppressed"
    );

    // The metrics say the same.
    let m = scrape(&lab, true);
    for (name, want) in [
        ("vpn_filter_events_emitted_total", emitted),
        ("vpn_filter_events_suppressed_total", suppressed),
        ("vpn_filter_events_lost_total", lost),
        ("vpn_filter_events_written_total", emitted),
        (
            "vpn_filter_verdicts_total{protocol=\"wireguard\",verdict=\"dropped\"}",
            PACKETS as u64,
        ),
    ] {
        assert_eq!(m.get(name).copied(), Some(want as f64), "{name}");
    }
    // And the controller says it in its log, unasked.
    d.proc.wait_stderr(
        "suppressed by the per-source rate limit",
        Duration::from_secs(10),
    );
}

#[test]
fn status_json_names_the_interface_and_counts_what_was_sent() {
    let lab = FilterLab::new();
    let d = Daemon::start(&lab, &["--xdp-mode", "native"]);
    for i in 0..3 {
        send_wg(&lab, UNREGISTERED_V4, 41000 + i, FILTER_V4, i as u32);
    }
    send_wg(&lab, UNREGISTERED_V6, 41000, FILTER_V6, 9);
    for i in 0..2 {
        send_wg(&lab, REGISTERED_V4, 42000 + i, FILTER_V4, 20 + i as u32);
    }
    let s = d.wait_status("six handshakes counted", |s| {
        verdict(s, "wireguard", "dropped") + verdict(s, "wireguard", "allowed") >= 6
    });
    assert_eq!(verdict(&s, "wireguard", "dropped"), 4);
    assert_eq!(verdict(&s, "wireguard", "allowed"), 2);
    assert!(s["counters"]["counters"]["packets"].as_u64().unwrap() >= 6);
    let ifaces = s["interfaces"].as_array().expect("interfaces");
    assert_eq!(ifaces.len(), 1, "{s:#}");
    assert_eq!(ifaces[0]["name"], lab.filter_if.as_str());
    assert_eq!(
        ifaces[0]["ifindex"].as_u64(),
        Some(lab.filter.ifindex(&lab.filter_if) as u64)
    );
    assert_eq!(ifaces[0]["mode"], "native");
    assert!(s["program_id"].as_u64().is_some_and(|id| id > 0), "{s:#}");
    assert_eq!(s["registry"]["serial"], 1);
    assert_eq!(s["registry"]["v4_prefixes"], 1);
    assert_eq!(s["registry"]["v6_prefixes"], 1);
    assert_eq!(s["registry"]["last_outcome"], "ok");
    assert_eq!(s["policy"]["wireguard"], "enforce");
    assert_eq!(s["events"]["output"], "stdout");

    // The human-readable form says the same.
    let out = d.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("interfaces: {} (ifindex", lab.filter_if)),
        "{text}"
    );
    let wg = text
        .lines()
        .find(|l| l.starts_with("wireguard"))
        .unwrap_or_else(|| panic!("a wireguard row in\n{text}"));
    assert_eq!(
        wg.split_whitespace().collect::<Vec<_>>(),
        ["wireguard", "2", "4", "0", "0", "0"],
        "allowed dropped monitored pending ignored"
    );
}

/// `GET /metrics` from inside the filter namespace (the daemon's loopback); returns the
/// samples after checking the response and parsing the body strictly.
fn scrape(lab: &FilterLab, openmetrics: bool) -> BTreeMap<String, f64> {
    let (head, body) = http_get(lab, "/metrics", openmetrics);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let ctype = if openmetrics {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; version=0.0.4; charset=utf-8"
    };
    assert!(
        head.contains(&format!("Content-Type: {ctype}\r\n")),
        "{head}"
    );
    parse_exposition(&body, openmetrics).unwrap_or_else(|e| panic!("{e}\n{body}"))
}

fn http_get(lab: &FilterLab, path: &str, openmetrics: bool) -> (String, String) {
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), METRICS_PORT);
    let response = lab.filter.enter(|| {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect to the metrics endpoint {addr}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let accept = if openmetrics {
            "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n"
        } else {
            ""
        };
        write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n{accept}\r\n").unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).expect("read the response");
        r
    });
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header/body separator in {response:?}"));
    (head.to_string() + "\r\n", body.to_string())
}

/// A strict parser for the Prometheus text format (0.0.4) and OpenMetrics text: every line
/// is a well-formed comment or sample, every sample belongs to a family declared (TYPE)
/// before it with a suffix its type allows, label sets are well formed and unique, values
/// parse, and OpenMetrics ends with `# EOF`. Returns `name{labels}` -> value.
fn parse_exposition(text: &str, openmetrics: bool) -> Result<BTreeMap<String, f64>, String> {
    fn is_name(s: &str, colon: bool) -> bool {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
    }
    fn value(s: &str) -> Option<f64> {
        match s {
            "+Inf" => Some(f64::INFINITY),
            "-Inf" => Some(f64::NEG_INFINITY),
            "NaN" => Some(f64::NAN),
            _ => s.parse().ok(),
        }
    }
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = BTreeMap::new();
    let mut lines: Vec<&str> = text.split('\n').collect();
    if lines.pop() != Some("") {
        return Err("the exposition must end with a newline".into());
    }
    if openmetrics {
        if lines.pop() != Some("# EOF") {
            return Err("OpenMetrics must end with # EOF".into());
        }
    } else if lines.contains(&"# EOF") {
        return Err("# EOF in the Prometheus text format".into());
    }
    for (n, line) in lines.iter().enumerate() {
        let at = |msg: &str| format!("line {}: {msg}: {line:?}", n + 1);
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if !is_name(name, true) {
                return Err(at("bad metric name"));
            }
            match kind {
                "HELP" => {}
                "UNIT" if openmetrics => {}
                "TYPE" => {
                    let ty = parts.next().unwrap_or("");
                    let known: &[&str] = if openmetrics {
                        &[
                            "counter",
                            "gauge",
                            "info",
                            "stateset",
                            "histogram",
                            "gaugehistogram",
                            "summary",
                            "unknown",
                        ]
                    } else {
                        &["counter", "gauge", "histogram", "summary", "untyped"]
                    };
                    if !known.contains(&ty) {
                        return Err(at("unknown type"));
                    }
                    if types.insert(name.to_string(), ty.to_string()).is_some() {
                        return Err(at("family declared twice"));
                    }
                }
                _ => return Err(at("unknown comment")),
            }
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            return Err(at("empty line or malformed comment"));
        }
        // name{labels} value
        let (series, val) = line.rsplit_once(' ').ok_or_else(|| at("no value"))?;
        let v = value(val).ok_or_else(|| at("bad value"))?;
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (
                name,
                rest.strip_suffix('}')
                    .ok_or_else(|| at("unclosed label set"))?,
            ),
            None => (series, ""),
        };
        if !is_name(name, true) {
            return Err(at("bad sample name"));
        }
        let mut rest = labels;
        let mut seen = Vec::new();
        while !rest.is_empty() {
            let (lname, after) = rest.split_once("=\"").ok_or_else(|| at("bad label"))?;
            if !is_name(lname, false) || seen.contains(&lname) {
                return Err(at("bad or repeated label name"));
            }
            seen.push(lname);
            let mut end = None;
            let mut escaped = false;
            for (i, c) in after.char_indices() {
                match (escaped, c) {
                    (true, '\\' | '"' | 'n') => escaped = false,
                    (true, _) => return Err(at("bad escape in label value")),
                    (false, '\\') => escaped = true,
                    (false, '"') => {
                        end = Some(i);
                        break;
                    }
                    (false, '\n') => return Err(at("newline in label value")),
                    _ => {}
                }
            }
            let end = end.ok_or_else(|| at("unterminated label value"))?;
            rest = &after[end + 1..];
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
                if rest.is_empty() {
                    return Err(at("trailing comma"));
                }
            } else if !rest.is_empty() {
                return Err(at("junk after a label"));
            }
        }
        let family = types
            .iter()
            .filter(|(f, ty)| {
                let suffixes: &[&str] = match ty.as_str() {
                    "counter" if openmetrics => &["_total", "_created"],
                    "counter" => &["", "_total"],
                    "histogram" => &["_bucket", "_sum", "_count", "_created"],
                    "summary" => &["", "_sum", "_count", "_created"],
                    "info" => &["_info"],
                    _ => &[""],
                };
                suffixes
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(f.as_str()))
            })
            .count();
        if family != 1 {
            return Err(at("sample of no declared family"));
        }
        if samples.insert(series.to_string(), v).is_some() {
            return Err(at("duplicate series"));
        }
    }
    if samples.is_empty() {
        return Err("no samples".into());
    }
    Ok(samples)
}

#[test]
fn the_metrics_endpoint_serves_valid_prometheus_text_matching_the_status() {
    let lab = FilterLab::new();
    let d = Daemon::start(&lab, &["--metrics", &METRICS_PORT.to_string()]);
    assert!(
        d.proc.stderr_lines().iter().any(|l| l.contains(&format!(
            "metrics at http://127.0.0.1:{METRICS_PORT}/metrics"
        ))),
        "a bare port listens on loopback: {:?}",
        d.proc.stderr_lines()
    );
    send_wg(&lab, UNREGISTERED_V4, 43000, FILTER_V4, 1);
    send_wg(&lab, REGISTERED_V4, 43001, FILTER_V4, 2);
    let s = d.wait_status("both handshakes counted", |s| {
        verdict(s, "wireguard", "dropped") == 1 && verdict(s, "wireguard", "allowed") == 1
    });
    for openmetrics in [true, false] {
        let m = scrape(&lab, openmetrics);
        let get = |k: &str| {
            *m.get(k)
                .unwrap_or_else(|| panic!("no series {k} (openmetrics {openmetrics}) in {m:#?}"))
        };
        assert_eq!(
            get("vpn_filter_verdicts_total{protocol=\"wireguard\",verdict=\"dropped\"}"),
            1.0
        );
        assert_eq!(
            get("vpn_filter_verdicts_total{protocol=\"wireguard\",verdict=\"allowed\"}"),
            1.0
        );
        assert_eq!(
            get("vpn_filter_verdicts_total{protocol=\"openvpn\",verdict=\"dropped\"}"),
            0.0
        );
        assert!(get("vpn_filter_packets_total") >= 2.0);
        assert_eq!(get("vpn_filter_registry_serial"), 1.0);
        assert_eq!(get("vpn_filter_allowlist_prefixes{family=\"ipv4\"}"), 1.0);
        assert_eq!(get("vpn_filter_allowlist_prefixes{family=\"ipv6\"}"), 1.0);
        assert_eq!(get("vpn_filter_registry_last_sync_success"), 1.0);
        assert_eq!(get("vpn_filter_registry_syncs_total{outcome=\"ok\"}"), 1.0);
        let last_sync = get("vpn_filter_registry_last_sync_timestamp_seconds");
        let now = time::OffsetDateTime::now_utc().unix_timestamp() as f64;
        assert!(
            (now - 120.0..=now + 1.0).contains(&last_sync),
            "last sync {last_sync}, now {now}"
        );
        assert_eq!(
            get("vpn_filter_events_emitted_total"),
            ev_counter(&s, "emitted") as f64
        );
        assert_eq!(get("vpn_filter_events_lost_total"), 0.0);
        assert_eq!(
            get(&format!(
                "vpn_filter_interface_attached{{iface=\"{}\",mode=\"{}\"}}",
                lab.filter_if,
                s["interfaces"][0]["mode"].as_str().unwrap()
            )),
            1.0
        );
        assert_eq!(
            get("vpn_filter_program_id"),
            s["program_id"].as_f64().unwrap()
        );
    }
    let (head, _) = http_get(&lab, "/other", true);
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
}

#[test]
fn events_follow_streams_new_events_to_several_followers() {
    let lab = FilterLab::new();
    let d = Daemon::start(&lab, &[]);
    let follow = || {
        let mut cmd = std::process::Command::new(controller_path());
        cmd.args(["events", "--follow", "-n", "0", "--control-socket"])
            .arg(&d.socket);
        Process::spawn(cmd)
    };
    let (a, b) = (follow(), follow());
    d.wait_status("two followers connected", |s| {
        ev_counter(s, "followers") == 2
    });
    send_wg(&lab, UNREGISTERED_V4, 44000, FILTER_V4, 1);
    for (name, f) in [("first", &a), ("second", &b)] {
        let line = f.next_line(Duration::from_secs(10)).unwrap_or_else(|| {
            panic!(
                "the {name} follower got no event; its stderr: {:?}",
                f.stderr_lines()
            )
        });
        let ev: Value = serde_json::from_str(&line).expect("a JSON event");
        assert_eq!(ev["src"], UNREGISTERED_V4, "{name}: {ev:#}");
        assert_eq!(ev["sport"], 44000);
    }
    // The daemon's own output has it too, and the backlog serves it to a late reader.
    let daemon_line = d
        .proc
        .next_line(Duration::from_secs(5))
        .expect("daemon event");
    let out = d.cli(&["events", "-n", "5"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        daemon_line,
        "events without --follow prints the backlog"
    );
    drop(a);
    d.wait_status("a follower that goes away is dropped", |s| {
        ev_counter(s, "followers") == 1
    });
}

#[test]
fn the_events_file_is_reopened_on_sighup() {
    let lab = FilterLab::new();
    let dir = TempDir::new("evf");
    let file = dir.path().join("events.json");
    let d = Daemon::start(&lab, &["--events-file", file.to_str().unwrap()]);
    send_wg(&lab, UNREGISTERED_V4, 45000, FILTER_V4, 1);
    d.wait_status("first event written", |s| ev_counter(s, "written") == 1);
    let rotated = dir.path().join("events.json.1");
    std::fs::rename(&file, &rotated).expect("rotate");
    d.proc.signal(libc::SIGHUP);
    d.proc
        .wait_stderr("SIGHUP: reopened the events file", Duration::from_secs(10));
    send_wg(&lab, UNREGISTERED_V4, 45001, FILTER_V4, 2);
    d.wait_status("second event written", |s| ev_counter(s, "written") == 2);
    let read = |p: &PathBuf| -> Vec<Value> {
        std::fs::read_to_string(p)
            .unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect()
    };
    let (old, new) = (read(&rotated), read(&file));
    assert_eq!(old.len(), 1, "{old:?}");
    assert_eq!(old[0]["sport"], 45000);
    assert_eq!(new.len(), 1, "{new:?}");
    assert_eq!(new[0]["sport"], 45001);
    assert!(d.proc.stdout_lines().is_empty(), "nothing goes to stdout");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode & 0o007,
        0,
        "the events file is not world-readable: {mode:o}"
    );
}

#[test]
fn events_that_cannot_be_written_are_counted_and_the_daemon_goes_on() {
    let lab = FilterLab::new();
    let d = Daemon::start(&lab, &["--events-file", "/dev/full"]);
    send_wg(&lab, UNREGISTERED_V4, 46000, FILTER_V4, 1);
    let s = d.wait_status("the failed write counted", |s| {
        ev_counter(s, "output_failed") == 1
    });
    assert_eq!(ev_counter(&s, "written"), 0);
    d.proc
        .wait_stderr("writing events to /dev/full failed", Duration::from_secs(5));
    send_wg(&lab, UNREGISTERED_V4, 46001, FILTER_V4, 2);
    d.wait_status("the next failure counted too", |s| {
        ev_counter(s, "output_failed") == 2
    });
    assert!(d.proc.exit_status().is_none(), "the daemon keeps running");
}

#[test]
fn the_control_socket_is_root_only_and_removed_on_exit() {
    let lab = FilterLab::new();
    let d = Daemon::start(&lab, &[]);
    let meta = std::fs::metadata(&d.socket).expect("the socket exists");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.uid(), 0);
    // An unprivileged user cannot connect.
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(controller_path())
        .args(["status", "--control-socket"])
        .arg(&d.socket)
        .output()
        .expect("run setpriv");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "nobody must not get a status");
    assert!(err.contains("only root may connect"), "{err}");
    let socket = d.socket.clone();
    let status = d.proc.terminate(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "clean exit: {status:?}"
    );
    assert!(!socket.exists(), "the socket is removed on exit");
    drop(d.dir);
}

#[test]
fn status_without_a_daemon_says_what_to_check() {
    let dir = TempDir::new("nod");
    let out = std::process::Command::new(controller_path())
        .args(["status", "--control-socket"])
        .arg(dir.path().join("none.sock"))
        .output()
        .expect("run the CLI");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is `vpn-filter run` running?"), "{err}");
}

#[test]
fn a_second_daemon_on_the_same_control_socket_is_refused() {
    let lab = FilterLab::new();
    let d = Daemon::start(&lab, &[]);
    let lab2 = FilterLab::new();
    let registry = d.dir.path().join("registry.json");
    let mut cmd = lab2.filter.command(controller_path());
    cmd.args(["run", "--no-pin", "--iface", &lab2.filter_if, "--registry"])
        .arg(&registry)
        .arg("--control-socket")
        .arg(&d.socket)
        .arg("--state-dir")
        .arg(d.dir.path().join("state2"));
    let second = Process::spawn(cmd);
    // A hang guard bounded by polls, not by the clock.
    let mut polls = 0;
    while second.exit_status().is_none() {
        polls += 1;
        assert!(polls < 600, "the second daemon must refuse to start");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!second.exit_status().unwrap().success());
    let err = second.stderr_lines().join("\n");
    assert!(
        err.contains("another vpn-filter daemon is listening"),
        "{err}"
    );
    // The first one is unaffected.
    assert_eq!(d.status()["interfaces"][0]["name"], lab.filter_if.as_str());
}
