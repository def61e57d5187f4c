//! Registry sync end to end: the `vpn-filter` controller (target/debug/vpn-filter, built by
//! `cargo build -p vpn-filter`) runs in the lab's filter namespace with a feed file or an HTTP
//! feed served from that namespace's loopback, and real WireGuard initiations from the client
//! namespace show what the kernel enforces as the feed changes. Plus the allowlist sync
//! against the real kernel trie, in process.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, TcpListener, UdpSocket},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use time::OffsetDateTime;
use vpn_filter::{
    kernel::{Applied, Filter, LoadOptions, Policy},
    registry::{AllowedBy, Allowlist, Prefix},
};
use vpn_filter_common::{entry_tag, Config};
use vpn_filter_tests::{
    lab::{sa, FilterLab, FILTER_V4, REGISTERED_V4, REGISTERED_V6, UNREGISTERED_V4},
    netns::{udp_bind, udp_drain, udp_send, Process},
    packet::{fill_pseudo_random, wireguard_initiation},
};

const WG_PORT: u16 = 51820;
const WINDOW: Duration = Duration::from_millis(400);
const STARTUP: Duration = vpn_filter_tests::CONTROLLER_START;
/// Long enough for a file change to settle (one poll) and be applied.
const RELOAD: Duration = Duration::from_secs(20);
/// The controller's log line for a refused feed (the detail follows on the same line).
const REFUSED: &str = "refused; the allowlist in force";

/// The controller binary, built next to this test's own directory.
fn controller() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/debug/deps/..")
        .join("vpn-filter");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build -p vpn-filter`",
        bin.display()
    );
    bin
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(vpn_filter_tests::netns::unique(&format!("reg{tag}")));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One registry entry of a test feed.
struct E<'a> {
    id: &'a str,
    prefixes: Vec<String>,
    status: &'a str,
    approved_at: OffsetDateTime,
    expires_at: Option<OffsetDateTime>,
}

fn approved<'a>(id: &'a str, prefixes: &[&str]) -> E<'a> {
    E {
        id,
        prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
        status: "approved",
        approved_at: time::macros::datetime!(2020-01-01 0:00 UTC),
        expires_at: None,
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .expect("formats")
}

fn feed_json(serial: u64, entries: &[E<'_>]) -> String {
    let entries: Vec<serde_json::Value> = entries
        .iter()
        .map(|e| {
            serde_json::json!({
                "id": e.id,
                "holder": format!("holder of {}", e.id),
                "category": "company",
                "prefixes": e.prefixes,
                "status": e.status,
                "approved_at": rfc3339(e.approved_at),
                "expires_at": e.expires_at.map(rfc3339),
            })
        })
        .collect();
    serde_json::json!({ "serial": serial, "generated_at": "2026-11-27T10:00:00Z", "entries": entries })
        .to_string()
}

/// Publishes a feed the recommended way: a temporary file renamed over the feed.
fn publish(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).expect("write feed");
    std::fs::rename(&tmp, path).expect("rename feed");
}

/// The controller running in the lab's filter namespace, without pins (so a restart starts
/// from an empty kernel allowlist and only the persisted feed can restore it).
fn start(lab: &FilterLab, dir: &TempDir, registry: &str, extra: &[&str]) -> Process {
    let mut args = vec!["--no-pin"];
    args.extend_from_slice(extra);
    start_with(lab.filter.command(controller()), lab, dir, registry, &args)
}

fn start_with(
    mut cmd: Command,
    lab: &FilterLab,
    dir: &TempDir,
    registry: &str,
    extra: &[&str],
) -> Process {
    cmd.args(["run", "--iface", &lab.filter_if, "--registry", registry])
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--control-socket")
        .arg(dir.join("control.sock"))
        .args(["--registry-poll-ms", "100"])
        .args(extra)
        .env("RUST_LOG", "info");
    let p = Process::spawn(cmd);
    p.wait_ready(STARTUP);
    p
}

fn stop(p: &Process) {
    let status = p.terminate(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "the controller must exit cleanly on SIGTERM: {status:?}; stderr:\n{}",
        p.stderr_lines().join("\n")
    );
}

/// Waits until `n` stderr lines contain `needle`.
fn wait_count(p: &Process, needle: &str, n: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if p.stderr_lines()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
            >= n
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "fewer than {n} stderr lines containing {needle:?} within {timeout:?}; stderr:\n{}",
        p.stderr_lines().join("\n")
    );
}

static NEXT_PORT: AtomicU16 = AtomicU16::new(30000);

/// Sends one WireGuard initiation from `src` on a port never used before (a new flow, so the
/// allowlist is consulted) and says whether it reached the filter namespace's socket.
fn passes(lab: &FilterLab, sock: &UdpSocket, src: &str) -> bool {
    let port = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
    let server = if src.contains(':') {
        "fd77::1"
    } else {
        FILTER_V4
    };
    udp_send(
        &lab.client,
        sa(src, port),
        sa(server, WG_PORT),
        &wireguard_initiation(port as u32),
    );
    udp_drain(sock, WINDOW)
        .iter()
        .any(|(from, _)| *from == sa(src, port))
}

struct Lab {
    lab: FilterLab,
    sock4: UdpSocket,
    sock6: UdpSocket,
    dir: TempDir,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let lab = FilterLab::new();
        let sock4 = udp_bind(&lab.filter, sa(FILTER_V4, WG_PORT));
        let sock6 = udp_bind(&lab.filter, sa("fd77::1", WG_PORT));
        Lab {
            lab,
            sock4,
            sock6,
            dir: TempDir::new(tag),
        }
    }

    fn passes(&self, src: &str) -> bool {
        let sock = if src.contains(':') {
            &self.sock6
        } else {
            &self.sock4
        };
        passes(&self.lab, sock, src)
    }

    fn feed_path(&self) -> PathBuf {
        self.dir.join("registry.json")
    }

    fn registry(&self) -> String {
        self.feed_path().display().to_string()
    }

    fn start(&self, extra: &[&str]) -> Process {
        start(&self.lab, &self.dir, &self.registry(), extra)
    }

    /// Registered passes, unregistered is dropped.
    fn assert_enforces_only_registered(&self, when: &str) {
        assert!(
            self.passes(REGISTERED_V4),
            "{when}: the registered client's handshake must pass"
        );
        assert!(
            !self.passes(UNREGISTERED_V4),
            "{when}: the unregistered client's handshake must be dropped"
        );
    }
}

#[test]
fn a_prefix_added_to_the_file_starts_passing_its_vpn_traffic() {
    let lab = Lab::new("add");
    publish(
        &lab.feed_path(),
        &feed_json(1, &[approved("REG-1", &[REGISTERED_V4])]),
    );
    let p = lab.start(&[]);
    p.wait_stderr("registry serial 1 applied", STARTUP);
    assert!(!lab.passes(UNREGISTERED_V4), "not registered yet: dropped");
    publish(
        &lab.feed_path(),
        &feed_json(
            2,
            &[
                approved("REG-1", &[REGISTERED_V4]),
                approved("REG-2", &["10.77.0.3/32"]),
            ],
        ),
    );
    p.wait_stderr("registry serial 2 applied", RELOAD);
    assert!(
        lab.passes(UNREGISTERED_V4),
        "the newly registered prefix's handshake must pass"
    );
    assert!(lab.passes(REGISTERED_V4), "the other entry stays");
    stop(&p);
}

#[test]
fn a_revoked_prefix_starts_being_dropped() {
    let lab = Lab::new("rev");
    let both = |serial, status| {
        let mut a = approved("REG-1", &[REGISTERED_V4]);
        a.status = status;
        feed_json(serial, &[a, approved("REG-2", &[REGISTERED_V6])])
    };
    publish(&lab.feed_path(), &both(1, "approved"));
    let p = lab.start(&[]);
    p.wait_stderr("registry serial 1 applied", STARTUP);
    assert!(lab.passes(REGISTERED_V4), "registered: passes");
    publish(&lab.feed_path(), &both(2, "revoked"));
    p.wait_stderr("registry serial 2 applied", RELOAD);
    assert!(
        !lab.passes(REGISTERED_V4),
        "a revoked registration's new handshakes must be dropped"
    );
    assert!(lab.passes(REGISTERED_V6), "the entry still approved passes");
    stop(&p);
}

#[test]
fn a_revoked_registration_s_established_flow_is_dropped_at_once() {
    let lab = Lab::new("flow");
    let feed = |serial, status| {
        let mut a = approved("REG-1", &[REGISTERED_V4]);
        a.status = status;
        feed_json(serial, &[a, approved("REG-2", &[REGISTERED_V6])])
    };
    publish(&lab.feed_path(), &feed(1, "approved"));
    let p = lab.start(&[]);
    p.wait_stderr("registry serial 1 applied", STARTUP);
    // One flow (same ports both times): allowed, and remembered as allowed.
    let send = |n: u32| {
        udp_send(
            &lab.lab.client,
            sa(REGISTERED_V4, 40404),
            sa(FILTER_V4, WG_PORT),
            &wireguard_initiation(n),
        );
        udp_drain(&lab.sock4, WINDOW)
            .iter()
            .any(|(from, _)| *from == sa(REGISTERED_V4, 40404))
    };
    assert!(send(1), "the registered flow passes");
    assert!(send(2), "and keeps passing");
    publish(&lab.feed_path(), &feed(2, "revoked"));
    p.wait_stderr("registry serial 2 applied", RELOAD);
    let applied = p
        .stderr_lines()
        .into_iter()
        .find(|l| l.contains("registry serial 2 applied"))
        .unwrap_or_default();
    assert!(
        applied.contains("allowlist generation") && applied.contains("re-check their endpoints"),
        "{applied}"
    );
    assert!(
        !send(3),
        "the established flow of a revoked registration must be dropped at once, not after its idle timeout"
    );
    stop(&p);
}

#[test]
fn a_client_retrying_from_one_port_gets_through_once_approved() {
    // The regulator's process: an unregistered client keeps retrying its handshake from one
    // port; its registration is approved; its very next handshake must arrive.
    let lab = Lab::new("retry");
    publish(
        &lab.feed_path(),
        &feed_json(1, &[approved("REG-2", &[REGISTERED_V6])]),
    );
    let p = lab.start(&[]);
    p.wait_stderr("registry serial 1 applied", STARTUP);
    let send = |n: u32| {
        udp_send(
            &lab.lab.client,
            sa(UNREGISTERED_V4, 40405),
            sa(FILTER_V4, WG_PORT),
            &wireguard_initiation(n),
        );
        udp_drain(&lab.sock4, WINDOW)
            .iter()
            .any(|(from, _)| *from == sa(UNREGISTERED_V4, 40405))
    };
    for n in 0..3 {
        assert!(!send(n), "retry {n} while unregistered is dropped");
    }
    publish(
        &lab.feed_path(),
        &feed_json(
            2,
            &[
                approved("REG-2", &[REGISTERED_V6]),
                approved("REG-NEW", &[UNREGISTERED_V4]),
            ],
        ),
    );
    p.wait_stderr("registry serial 2 applied", RELOAD);
    assert!(send(10), "the first retry after the approval arrives");
    assert!(send(11), "and so does the next");
    stop(&p);
}

#[test]
fn an_entry_stops_passing_at_its_expiry_without_a_new_feed() {
    let lab = Lab::new("exp");
    let mut expiring = approved("REG-EXP", &[REGISTERED_V4]);
    expiring.expires_at = Some(OffsetDateTime::now_utc() + Duration::from_secs(8));
    publish(
        &lab.feed_path(),
        &feed_json(1, &[expiring, approved("REG-2", &[REGISTERED_V6])]),
    );
    let p = lab.start(&[]);
    p.wait_stderr("registry serial 1 applied", STARTUP);
    assert!(lab.passes(REGISTERED_V4), "before its expiry: passes");
    p.wait_stderr("applied (an approval or expiry instant)", RELOAD);
    assert!(
        !lab.passes(REGISTERED_V4),
        "after its expiry: dropped, with no new feed"
    );
    assert!(lab.passes(REGISTERED_V6), "the entry without expiry passes");
    stop(&p);
}

#[test]
fn an_entry_starts_passing_at_its_approval_time_without_a_new_feed() {
    let lab = Lab::new("appr");
    let mut future = approved("REG-LATER", &["10.77.0.3"]);
    future.approved_at = OffsetDateTime::now_utc() + Duration::from_secs(8);
    publish(
        &lab.feed_path(),
        &feed_json(1, &[approved("REG-1", &[REGISTERED_V4]), future]),
    );
    let p = lab.start(&[]);
    p.wait_stderr("registry serial 1 applied", STARTUP);
    assert!(
        !lab.passes(UNREGISTERED_V4),
        "before its approval time: dropped"
    );
    p.wait_stderr("applied (an approval or expiry instant)", RELOAD);
    assert!(
        lab.passes(UNREGISTERED_V4),
        "from its approval time: passes"
    );
    stop(&p);
}

#[test]
fn a_bad_feed_leaves_enforcement_unchanged() {
    let lab = Lab::new("bad");
    let good = feed_json(
        5,
        &[
            approved("REG-1", &[REGISTERED_V4]),
            approved("REG-2", &[REGISTERED_V6]),
        ],
    );
    publish(&lab.feed_path(), &good);
    let p = lab.start(&[]);
    p.wait_stderr("registry serial 5 applied", STARTUP);
    lab.assert_enforces_only_registered("with the good feed");
    let opens_the_unregistered = |serial| {
        feed_json(
            serial,
            &[
                approved("REG-1", &[REGISTERED_V4]),
                approved("REG-2", &[REGISTERED_V6]),
                approved("REG-3", &["10.77.0.3/32"]),
            ],
        )
    };
    let bad: Vec<(&str, String)> = vec![
        ("invalid JSON", good[..good.len() - 10].to_string()),
        (
            "a bad prefix",
            opens_the_unregistered(6).replace("10.77.0.3/32", "10.77.0.300/32"),
        ),
        (
            "a prefix with host bits set",
            opens_the_unregistered(6).replace("10.77.0.3/32", "10.77.0.3/24"),
        ),
        (
            "an absurdly broad prefix",
            opens_the_unregistered(6).replace("10.77.0.3/32", "0.0.0.0/0"),
        ),
        ("a serial going backwards", opens_the_unregistered(4)),
        ("an empty feed", feed_json(7, &[])),
        (
            "an unknown status",
            opens_the_unregistered(8).replace("approved", "approvd"),
        ),
        (
            "an unreadable format",
            "<html>502 Bad Gateway</html>".to_string(),
        ),
    ];
    for (i, (what, content)) in bad.iter().enumerate() {
        publish(&lab.feed_path(), content);
        wait_count(&p, REFUSED, i + 1, RELOAD);
        lab.assert_enforces_only_registered(&format!("after {what}"));
    }
    let stderr = p.stderr_lines().join("\n");
    for needle in [
        "invalid JSON feed",
        "(id REG-3): prefixes[0] \"10.77.0.300/32\"",
        "host bits set",
        "broader than /8",
        "serial 4 is older than serial 5",
        "allows no prefix at all",
        "unknown status \"approvd\"",
        "cannot tell the format",
        "the allowlist in force (serial 5) stays",
    ] {
        assert!(stderr.contains(needle), "no {needle:?} in:\n{stderr}");
    }
    assert!(
        !stderr.contains("registry serial 6 applied") && !stderr.contains("serial 4 applied"),
        "no bad feed was applied:\n{stderr}"
    );
    stop(&p);
}

#[test]
fn a_half_written_file_is_never_applied_and_the_completed_one_is() {
    let lab = Lab::new("half");
    publish(
        &lab.feed_path(),
        &feed_json(1, &[approved("REG-1", &[REGISTERED_V4])]),
    );
    let p = lab.start(&[]);
    p.wait_stderr("registry serial 1 applied", STARTUP);
    let next = feed_json(
        2,
        &[
            approved("REG-1", &[REGISTERED_V4]),
            approved("REG-2", &["10.77.0.3/32"]),
        ],
    );
    // A writer that writes in place and stalls halfway.
    std::fs::write(lab.feed_path(), &next[..next.len() / 2]).expect("write half");
    wait_count(&p, REFUSED, 1, RELOAD);
    lab.assert_enforces_only_registered("with the half-written file");
    // The writer finishes.
    std::fs::write(lab.feed_path(), &next).expect("write whole");
    p.wait_stderr("registry serial 2 applied", RELOAD);
    assert!(lab.passes(UNREGISTERED_V4), "the completed feed is applied");
    stop(&p);
}

#[test]
fn a_csv_export_is_enforced_like_the_json_feed() {
    let lab = Lab::new("csv");
    let path = lab.dir.join("registry.csv");
    std::fs::write(
        &path,
        format!(
            "id,holder,category,prefix,status,approved_at,expires_at\n\
             REG-1,\"Acme, Inc.\",company,{REGISTERED_V4},approved,2020-01-01T00:00:00Z,\n\
             REG-1,\"Acme, Inc.\",company,{REGISTERED_V6},approved,2020-01-01T00:00:00Z,\n\
             REG-2,Bob,freelancer,10.77.0.3,revoked,2020-01-01T00:00:00Z,\n"
        ),
    )
    .expect("write csv");
    let p = start(&lab.lab, &lab.dir, &path.display().to_string(), &[]);
    p.wait_stderr("registry CSV export without serial applied", STARTUP);
    lab.assert_enforces_only_registered("with the CSV export");
    assert!(
        lab.passes(REGISTERED_V6),
        "the entry's second row counts too"
    );
    stop(&p);
}

#[test]
fn a_restart_with_the_file_gone_enforces_the_persisted_last_good_feed() {
    let lab = Lab::new("rst");
    publish(
        &lab.feed_path(),
        &feed_json(3, &[approved("REG-1", &[REGISTERED_V4])]),
    );
    let p = lab.start(&[]);
    p.wait_stderr("registry serial 3 applied", STARTUP);
    stop(&p);
    std::fs::remove_file(lab.feed_path()).expect("remove the feed");
    let p = lab.start(&[]);
    p.wait_stderr("ENFORCING THE LAST GOOD FEED", STARTUP);
    p.wait_stderr(
        "registry serial 3 applied (startup (last good feed))",
        STARTUP,
    );
    lab.assert_enforces_only_registered("after a restart without the source");
    stop(&p);
}

#[test]
fn a_first_start_without_source_or_persisted_feed_fails_clearly() {
    let lab = Lab::new("none");
    let mut cmd = lab.lab.filter.command(controller());
    cmd.args([
        "run",
        "--no-pin",
        "--iface",
        &lab.lab.filter_if,
        "--registry",
    ])
    .arg(lab.feed_path())
    .arg("--state-dir")
    .arg(lab.dir.join("state"))
    .arg("--control-socket")
    .arg(lab.dir.join("control.sock"));
    let out = cmd.output().expect("run the controller");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must fail: {stderr}");
    assert!(
        stderr.contains("no usable registry feed") && stderr.contains("no last good feed"),
        "{stderr}"
    );
}

/// A feed server on the filter namespace's loopback: serves the current body with its ETag,
/// answers `304 Not Modified` when `If-None-Match` carries the current ETag, and records the
/// `If-None-Match` of every request.
struct FeedServer {
    port: u16,
    body: Arc<Mutex<(String, String)>>,
    if_none_match: Arc<Mutex<Vec<Option<String>>>>,
    not_modified: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FeedServer {
    fn start(lab: &FilterLab, body: String, etag: &str) -> FeedServer {
        let listener = lab
            .filter
            .enter(|| TcpListener::bind("127.0.0.1:0").expect("bind the feed server"));
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let body = Arc::new(Mutex::new((body, etag.to_string())));
        let if_none_match = Arc::new(Mutex::new(Vec::new()));
        let not_modified = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (body, inm, nm, stop) = (
                body.clone(),
                if_none_match.clone(),
                not_modified.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let Ok((mut s, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    };
                    s.set_nonblocking(false).ok();
                    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
                    let mut req = Vec::new();
                    let mut buf = [0u8; 2048];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&req).to_string();
                    let tag = text.lines().find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.trim()
                            .eq_ignore_ascii_case("if-none-match")
                            .then(|| v.trim().to_string())
                    });
                    inm.lock().unwrap().push(tag.clone());
                    let (content, etag) = body.lock().unwrap().clone();
                    let resp = if tag.as_deref() == Some(etag.as_str()) {
                        nm.fetch_add(1, Ordering::SeqCst);
                        format!("HTTP/1.1 304 Not Modified\r\nETag: {etag}\r\nConnection: close\r\n\r\n")
                    } else {
                        format!(
                            "HTTP/1.1 200 OK\r\nETag: {etag}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{content}",
                            content.len()
                        )
                    };
                    let _ = s.write_all(resp.as_bytes());
                }
            })
        };
        FeedServer {
            port,
            body,
            if_none_match,
            not_modified,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/feed.json", self.port)
    }

    fn set(&self, body: String, etag: &str) {
        *self.body.lock().unwrap() = (body, etag.to_string());
    }
}

impl Drop for FeedServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn an_http_feed_is_polled_with_if_none_match_and_a_304_keeps_it() {
    let lab = Lab::new("http");
    let server = FeedServer::start(
        &lab.lab,
        feed_json(1, &[approved("REG-1", &[REGISTERED_V4])]),
        "\"v1\"",
    );
    let p = start(
        &lab.lab,
        &lab.dir,
        &server.url(),
        &["--registry-http-interval", "1"],
    );
    p.wait_stderr("registry serial 1 applied", STARTUP);
    let deadline = Instant::now() + RELOAD;
    while server.not_modified.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let seen = server.if_none_match.lock().unwrap().clone();
    assert_eq!(
        seen.first(),
        Some(&None),
        "the first request has no ETag yet"
    );
    assert!(
        server.not_modified.load(Ordering::SeqCst) >= 2,
        "later polls must send If-None-Match: \"v1\" and get 304; requests: {seen:?}"
    );
    assert!(
        seen[1..].iter().all(|t| t.as_deref() == Some("\"v1\"")),
        "{seen:?}"
    );
    lab.assert_enforces_only_registered("while the server answers 304");

    server.set(
        feed_json(
            2,
            &[
                approved("REG-1", &[REGISTERED_V4]),
                approved("REG-2", &["10.77.0.3/32"]),
            ],
        ),
        "\"v2\"",
    );
    p.wait_stderr("registry serial 2 applied", RELOAD);
    assert!(lab.passes(UNREGISTERED_V4), "the new version is enforced");
    stop(&p);
}

#[test]
fn a_restart_with_the_http_source_unreachable_enforces_the_persisted_last_good_feed() {
    let lab = Lab::new("hrst");
    let server = FeedServer::start(
        &lab.lab,
        feed_json(9, &[approved("REG-1", &[REGISTERED_V4])]),
        "\"v9\"",
    );
    let url = server.url();
    let p = start(&lab.lab, &lab.dir, &url, &[]);
    p.wait_stderr("registry serial 9 applied", STARTUP);
    stop(&p);
    drop(server);
    let p = start(&lab.lab, &lab.dir, &url, &[]);
    p.wait_stderr("ENFORCING THE LAST GOOD FEED", STARTUP);
    let stderr = p.stderr_lines().join("\n");
    assert!(
        stderr.contains("REGISTRY SOURCE UNUSABLE AT STARTUP") && stderr.contains(&url),
        "the failure must be named: {stderr}"
    );
    lab.assert_enforces_only_registered("after a restart with the source unreachable");
    stop(&p);
}

#[test]
fn with_a_pinned_key_an_unsigned_or_badly_signed_feed_is_refused() {
    use base64::Engine as _;
    use ed25519_dalek::{Signer as _, SigningKey};
    let lab = Lab::new("sig");
    let key = SigningKey::from_bytes(&[42u8; 32]);
    let pubkey = lab.dir.join("registry.pub");
    let b64 = base64::engine::general_purpose::STANDARD;
    std::fs::write(&pubkey, b64.encode(key.verifying_key().as_bytes())).expect("write key");
    let sig_path = lab.dir.join("registry.json.sig");
    let good = feed_json(1, &[approved("REG-1", &[REGISTERED_V4])]);
    std::fs::write(&sig_path, b64.encode(key.sign(good.as_bytes()).to_bytes())).expect("sig");
    publish(&lab.feed_path(), &good);
    let p = lab.start(&["--registry-pubkey", &pubkey.display().to_string()]);
    p.wait_stderr("registry serial 1 applied", STARTUP);

    // A new feed whose signature file was not updated: the old signature does not match.
    let opened = feed_json(
        2,
        &[
            approved("REG-1", &[REGISTERED_V4]),
            approved("REG-2", &["10.77.0.3/32"]),
        ],
    );
    publish(&lab.feed_path(), &opened);
    wait_count(&p, "BAD SIGNATURE", 1, RELOAD);
    lab.assert_enforces_only_registered("with a badly signed feed");
    // No signature at all.
    std::fs::remove_file(&sig_path).expect("remove sig");
    wait_count(&p, "the feed is not signed", 1, RELOAD);
    lab.assert_enforces_only_registered("with an unsigned feed");
    // Signed properly: applied.
    std::fs::write(
        &sig_path,
        b64.encode(key.sign(opened.as_bytes()).to_bytes()),
    )
    .expect("sig");
    p.wait_stderr("registry serial 2 applied", RELOAD);
    assert!(lab.passes(UNREGISTERED_V4), "the signed feed is applied");
    stop(&p);
}

/// `count` host prefixes (/32) from `base` on.
fn hosts(base: [u8; 4], count: u32) -> Vec<String> {
    let b = u32::from_be_bytes(base);
    (0..count)
        .map(|i| format!("{}/32", std::net::Ipv4Addr::from(b + i)))
        .collect()
}

#[test]
fn no_packet_from_a_registered_address_is_dropped_while_100k_prefixes_are_replaced() {
    let lab = Lab::new("big");
    const BULK: u32 = 100_000;
    // Before: the client is registered as a host; after: by a /24 of another entry, while
    // 100,000 other prefixes are replaced by 100,000 new ones. The address moves from a
    // removed prefix to an added one: only add-before-remove keeps it covered throughout.
    let before = feed_json(
        1,
        &[
            approved("REG-HOST", &[REGISTERED_V4]),
            E {
                prefixes: hosts([100, 64, 0, 0], BULK),
                ..approved("BULK-1", &[])
            },
        ],
    );
    let after = feed_json(
        2,
        &[
            approved("REG-NET", &["10.77.0.0/24"]),
            E {
                prefixes: hosts([100, 96, 0, 0], BULK),
                ..approved("BULK-2", &[])
            },
        ],
    );
    publish(&lab.feed_path(), &before);
    let p = lab.start(&["--force-shrink"]);
    p.wait_stderr("registry serial 1 applied", STARTUP);

    // A steady stream of initiations from the registered client, each on a new flow (its
    // own source port), so every one of them is judged by the allowlist.
    lab.sock4
        .set_read_timeout(Some(Duration::from_millis(20)))
        .expect("timeout");
    set_rcvbuf(&lab.sock4, 64 << 20);
    let sending = Arc::new(AtomicBool::new(true));
    let sent = Arc::new(AtomicUsize::new(0));
    let sender = {
        let (sending, sent) = (sending.clone(), sent.clone());
        let client_name = lab.lab.client.name().to_string();
        std::thread::spawn(move || {
            let path = format!("/var/run/netns/{client_name}");
            let f = std::fs::File::open(&path).expect("netns");
            // SAFETY: a valid namespace fd; only this thread changes namespace.
            assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
            let mut payload = wireguard_initiation(1);
            let mut port: u16 = 10_000;
            while sending.load(Ordering::SeqCst) {
                let s = UdpSocket::bind(sa(REGISTERED_V4, port)).expect("bind");
                fill_pseudo_random(&mut payload[4..8], port as u64);
                s.send_to(&payload, sa(FILTER_V4, WG_PORT)).expect("send");
                sent.fetch_add(1, Ordering::SeqCst);
                port = if port >= 60_000 { 10_000 } else { port + 1 };
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    let received = Arc::new(AtomicUsize::new(0));
    let receiving = Arc::new(AtomicBool::new(true));
    let receiver = {
        let sock = lab.sock4.try_clone().expect("clone socket");
        let (received, receiving) = (received.clone(), receiving.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let reg: IpAddr = REGISTERED_V4.parse().unwrap();
            while receiving.load(Ordering::SeqCst) {
                if let Ok((_, from)) = sock.recv_from(&mut buf) {
                    if from.ip() == reg {
                        received.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let sent_before = sent.load(Ordering::SeqCst);
    publish(&lab.feed_path(), &after);
    p.wait_stderr("registry serial 2 applied", Duration::from_secs(120));
    let sent_during = sent.load(Ordering::SeqCst) - sent_before;
    std::thread::sleep(Duration::from_millis(500));
    sending.store(false, Ordering::SeqCst);
    sender.join().expect("sender");
    std::thread::sleep(Duration::from_millis(500));
    receiving.store(false, Ordering::SeqCst);
    receiver.join().expect("receiver");

    let (sent, received) = (sent.load(Ordering::SeqCst), received.load(Ordering::SeqCst));
    let applied = p
        .stderr_lines()
        .into_iter()
        .find(|l| l.contains("registry serial 2 applied"))
        .unwrap_or_default();
    assert!(
        applied.contains("100001 added") && applied.contains("100001 removed"),
        "the update replaced 100,001 prefixes: {applied}"
    );
    assert!(
        sent_during > 50,
        "the stream must run while the update is applied ({sent_during} sent meanwhile)"
    );
    eprintln!(
        "{sent} initiations sent ({sent_during} while the update was applied), {received} received; {applied}"
    );
    let drops: Vec<String> = p
        .stdout_lines()
        .into_iter()
        .filter(|l| l.contains(&format!("\"src\":\"{REGISTERED_V4}\"")))
        .collect();
    assert!(
        drops.is_empty(),
        "no drop event may name the registered client: {drops:?}"
    );
    assert_eq!(
        received, sent,
        "every handshake from the registered client must arrive during the update ({applied})"
    );
    stop(&p);
}

fn set_rcvbuf(sock: &UdpSocket, bytes: i32) {
    // SAFETY: setsockopt with a valid int option on our socket.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &bytes as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as u32,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
}

// ---- the allowlist sync against the real kernel trie, in process ----

/// Reproducible pseudo-random numbers from a seed (the tests' one generator).
struct Rng(rand_pcg::Pcg64);

impl Rng {
    fn next(&mut self) -> u64 {
        vpn_filter_tests::rng::next_u64(&mut self.0)
    }
}

/// A random allowlist: IPv4 and IPv6 prefixes of random lengths in small address ranges (so
/// they overlap and successive sets share many prefixes), tagged by a few entries.
fn random_allowlist(rng: &mut Rng, n: usize) -> Allowlist {
    let mut out = Allowlist::default();
    for _ in 0..n {
        let r = rng.next();
        let id = format!("E{}", r % 7);
        let by = AllowedBy {
            tag: entry_tag(id.as_bytes()),
            id: id.into(),
        };
        let p = if r & 0x100 == 0 {
            let len = 16 + (rng.next() % 17) as u8;
            let bits = 0x0a00_0000 | (rng.next() as u32 & 0x00ff_ffff);
            let mask = u32::MAX << (32 - len);
            Prefix::V4 {
                addr: (bits & mask).to_be_bytes(),
                len,
            }
        } else {
            let len = 48 + (rng.next() % 81) as u8;
            let bits = (0xfd77u128 << 112)
                | (u128::from(rng.next() as u32) << 64)
                | u128::from(rng.next());
            let mask = u128::MAX << (128 - u32::from(len));
            Prefix::V6 {
                addr: (bits & mask).to_be_bytes(),
                len,
            }
        };
        out.prefixes.insert(p, by);
    }
    out
}

fn load(options: LoadOptions) -> Filter {
    vpn_filter_tests::require_root();
    Filter::load(options, &Policy::default(), &Config::default())
        .expect("the program loads through the verifier")
}

#[test]
fn syncing_random_sets_leaves_exactly_them_in_the_kernel_tries() {
    let mut filter = load(LoadOptions::default());
    let mut rng = Rng(vpn_filter_tests::rng::seeded(0x5eed_1234_abcd_0001));
    for round in 0..6 {
        let want = random_allowlist(&mut rng, 3000);
        let report = filter.sync_allowlist(&want).expect("sync");
        assert!(
            !report.read_kernel,
            "round {round}: a freshly loaded filter's maps are empty, so no sync reads them back"
        );
        let in_kernel = filter.read_allowlist().expect("read the tries back");
        assert_eq!(
            in_kernel,
            Applied::from_allowlist(&want),
            "round {round}: the kernel must hold exactly the wanted set ({report:?})"
        );
        // The kernel's longest-prefix match agrees with the controller's for addresses in
        // and around the prefixes.
        for _ in 0..300 {
            let ip: IpAddr = if rng.next() & 1 == 0 {
                std::net::Ipv4Addr::from(0x0a00_0000 | (rng.next() as u32 & 0x00ff_ffff)).into()
            } else {
                let (p, _) = want
                    .prefixes
                    .iter()
                    .nth((rng.next() % want.len() as u64) as usize)
                    .expect("non-empty");
                match p {
                    Prefix::V6 { addr, len } => {
                        let host = u128::from(rng.next()) & (u128::MAX >> u32::from(*len).min(127));
                        std::net::Ipv6Addr::from(u128::from_be_bytes(*addr) | host).into()
                    }
                    Prefix::V4 { addr, .. } => std::net::Ipv4Addr::from(*addr).into(),
                }
            };
            let kernel = filter.lookup(ip).expect("lookup");
            let expected = want.lookup(ip).map(|(_, by)| by.tag);
            assert_eq!(kernel, expected, "round {round}: lookup of {ip}");
        }
    }
}

#[test]
fn a_feed_over_capacity_is_refused_naming_the_option_and_nothing_changes() {
    let mut filter = load(LoadOptions {
        allow_v4_entries: 10,
        ..LoadOptions::default()
    });
    let mut rng = Rng(vpn_filter_tests::rng::seeded(7));
    let mut small = Allowlist::default();
    while small.v4_count() < 5 {
        let a = random_allowlist(&mut rng, 20);
        small.prefixes.extend(
            a.prefixes
                .into_iter()
                .filter(|(p, _)| matches!(p, Prefix::V4 { .. })),
        );
    }
    while small.v4_count() > 5 {
        let last = *small.prefixes.keys().next_back().unwrap();
        small.prefixes.remove(&last);
    }
    filter.sync_allowlist(&small).expect("5 prefixes fit");
    let mut big = small.clone();
    for i in 0..6u8 {
        big.prefixes.insert(
            Prefix::V4 {
                addr: [192, 0, 2, i],
                len: 32,
            },
            AllowedBy {
                id: "BIG".into(),
                tag: entry_tag(b"BIG"),
            },
        );
    }
    let err = filter.sync_allowlist(&big).unwrap_err().to_string();
    assert!(
        err.contains("11 IPv4 prefixes") && err.contains("--allow-v4-entries"),
        "{err}"
    );
    assert_eq!(
        filter.read_allowlist().unwrap(),
        Applied::from_allowlist(&small),
        "nothing changed"
    );
}

#[test]
fn a_full_trie_takes_a_disjoint_set_by_removing_first_only_what_it_must() {
    let mut filter = load(LoadOptions {
        allow_v4_entries: 10,
        ..LoadOptions::default()
    });
    let set = |third: u8, n: u8| {
        let mut a = Allowlist::default();
        for i in 0..n {
            a.prefixes.insert(
                Prefix::V4 {
                    addr: [192, 0, third, i],
                    len: 32,
                },
                AllowedBy {
                    id: "E".into(),
                    tag: entry_tag(b"E"),
                },
            );
        }
        a
    };
    filter.sync_allowlist(&set(2, 10)).expect("full");
    let next = set(3, 4);
    let report = filter.sync_allowlist(&next).expect("the new set fits");
    assert_eq!(report.removed_first, 4, "{report:?}");
    assert_eq!((report.added, report.removed), (4, 10));
    assert_eq!(
        filter.read_allowlist().unwrap(),
        Applied::from_allowlist(&next)
    );
}

#[test]
fn a_feed_signed_with_openssl_as_documented_validates_and_a_tampered_one_does_not() {
    let dir = TempDir::new("ossl");
    let run = |args: &[&str]| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(args.join(" "))
            .current_dir(&dir.0)
            .output()
            .expect("sh");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(
        dir.join("feed.json"),
        feed_json(1, &[approved("REG-1", &[REGISTERED_V4])]),
    )
    .unwrap();
    // The commands of docs/registry-feed.md.
    run(&["openssl genpkey -algorithm ed25519 -out registry-signing.pem"]);
    run(&["openssl pkey -in registry-signing.pem -pubout -out registry.pub"]);
    run(&["openssl pkeyutl -sign -inkey registry-signing.pem -rawin -in feed.json | base64 -w0 > feed.json.sig"]);
    let validate = || {
        Command::new(controller())
            .args(["registry", "validate", "--registry-pubkey"])
            .arg(dir.join("registry.pub"))
            .arg(dir.join("feed.json"))
            .output()
            .expect("run validate")
    };
    let out = validate();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("signature valid"));
    let tampered = std::fs::read_to_string(dir.join("feed.json"))
        .unwrap()
        .replace(REGISTERED_V4, "10.77.0.3");
    std::fs::write(dir.join("feed.json"), tampered).unwrap();
    let out = validate();
    assert!(!out.status.success(), "a tampered feed must fail");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("BAD SIGNATURE"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_asks_the_running_filter_s_pinned_allowlist_and_names_the_entry() {
    let lab = Lab::new("kchk");
    let bpffs = vpn_filter_tests::netns::BpfFsDir::new("kchk");
    publish(
        &lab.feed_path(),
        &feed_json(4, &[approved("REG-1", &["10.77.0.0/30"])]),
    );
    // Pins in this process's mount namespace, so `check` (run from here) sees them.
    let p = start_with(
        lab.lab.filter.command_keep_mounts(controller()),
        &lab.lab,
        &lab.dir,
        &lab.registry(),
        &[
            "--bpffs-dir",
            &bpffs.path().join("vf").display().to_string(),
            "--lock-file",
            &lab.dir.join("pins.lock").display().to_string(),
            "--detach-on-exit",
        ],
    );
    p.wait_stderr("registry serial 4 applied", STARTUP);
    let check = |addr: &str| {
        let out = Command::new(controller())
            .args(["check", addr, "--state-dir"])
            .arg(lab.dir.join("state"))
            .arg("--bpffs-dir")
            .arg(bpffs.path().join("vf"))
            .output()
            .expect("run check");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let (code, out) = check(REGISTERED_V4);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("running filter (kernel allowlist pinned in")
            && out.contains(
                "ALLOWED\n    by entry REG-1 \"holder of REG-1\" (company) via 10.77.0.0/30"
            ),
        "the kernel's answer, named through the last applied feed:\n{out}"
    );
    let (code, out) = check("10.77.0.9");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("NOT ALLOWED"), "{out}");
    stop(&p);
}

#[test]
fn check_names_the_entry_that_allows_an_address_in_a_feed_and_in_the_running_filter() {
    let lab = Lab::new("chk");
    publish(
        &lab.feed_path(),
        &feed_json(
            4,
            &[
                approved("REG-1", &["10.77.0.0/30"]),
                E {
                    status: "revoked",
                    ..approved("REG-OLD", &["10.77.0.3"])
                },
            ],
        ),
    );
    let p = lab.start(&[]);
    p.wait_stderr("registry serial 4 applied", STARTUP);
    let check = |addr: &str| {
        let out = Command::new(controller())
            .args(["check", addr, "--registry"])
            .arg(lab.feed_path())
            .arg("--state-dir")
            .arg(lab.dir.join("state"))
            .arg("--bpffs-dir")
            .arg(lab.dir.join("no-pins"))
            .output()
            .expect("run check");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let (code, out) = check(REGISTERED_V4);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        out.matches("ALLOWED\n    by entry REG-1 \"holder of REG-1\" (company) via 10.77.0.0/30")
            .count(),
        2,
        "both the feed and the running filter's last applied feed name REG-1:\n{out}"
    );
    let (code, out) = check("10.77.0.9");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("NOT ALLOWED"), "{out}");
    let (code, out) = check("::ffff:10.77.0.3");
    assert_eq!(
        code,
        Some(0),
        "a mapped address is checked as IPv4 (10.77.0.3 is in the /30):\n{out}"
    );
    stop(&p);
}
