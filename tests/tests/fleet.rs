//! A fleet of gateways against one feed server: real nginx (Debian's) serves the directory
//! `vpn-filter registry publish` writes, and `FLEET_GATEWAYS` controllers (default 20; `vpn-filter
//! run --no-pin`, target/debug/vpn-filter), each in its own network namespace with a veth to
//! the server's namespace, poll it with ETag.
//!
//! ```text
//!  gateway i (netns)  up<i> 10.90.i.2 ── veth ── f<i> 10.90.i.1  feed server (netns): nginx :8080
//! ```
//!
//! What a gateway enforces is observed in its kernel: the feed registers (or not) the feed
//! server's side of the links, 10.90.0.0/16, and the test sends a WireGuard initiation from
//! 10.90.i.1 to each gateway, which arrives (allowed) or is counted as dropped by the
//! gateway's XDP program.
//!
//! Every wait is for a signal (a log line, a counter, an access-log line, a datagram); its
//! deadline only keeps a broken run from hanging and asserts no speed. Convergence is checked
//! by counting: from the feed server's access log, every gateway applies a publication on its
//! first poll after it (at most one `304` answered while the new release was switched in). The
//! test prints the feed server's requests and bytes per poll round and the convergence times
//! (`[fleet] ...` on stderr; speed belongs to `cargo xtask bench`). `FLEET_GATEWAYS` and `FLEET_ENTRIES` (registry entries
//! besides the probe's, default 200) scale it up for BENCHMARKS.md, with `FLEET_CONTROLLER`
//! naming the release binary.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use vpn_filter_tests::{
    gateway_lab::TempDir,
    netns::{udp_bind, udp_send, veth, NetNs, Process},
    packet::wireguard_initiation,
};

/// `--registry-http-interval`, seconds.
const INTERVAL: u64 = 2;
/// How long any wait may take before the test gives up: a guard against a hung run (a
/// controller stuck, nginx gone), not a speed target. Sixty poll intervals, plus a little per
/// gateway and entry when the fleet or the feed is scaled up.
fn hang_guard(gateways: usize, entries: usize) -> Duration {
    Duration::from_secs(60 * INTERVAL) + Duration::from_micros(20 * (gateways * entries) as u64)
}

/// Start-up of the whole fleet: each controller's program goes through the kernel verifier
/// (about 2 s of CPU each here).
fn startup(gateways: usize) -> Duration {
    Duration::from_secs(60 + 6 * gateways as u64)
}
const PORT: u16 = 8080;
const WG_PORT: u16 = 51820;
/// The probe entry: the feed server's side of every link.
const PROBE_PREFIX: &str = "10.90.0.0/16";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
        })
        .unwrap_or(default)
}

fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/debug/deps/..")
        .to_path_buf()
}

/// The controller: target/debug/vpn-filter, or `FLEET_CONTROLLER` (the release build, for
/// the full-size run: a debug build parses large feeds slowly).
fn controller() -> PathBuf {
    let bin = std::env::var_os("FLEET_CONTROLLER")
        .map(PathBuf::from)
        .unwrap_or_else(|| bin_dir().join("vpn-filter"));
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build -p vpn-filter`",
        bin.display()
    );
    bin
}

fn nginx() -> PathBuf {
    let p = PathBuf::from("/usr/sbin/nginx");
    assert!(
        p.exists(),
        "{} is missing: this test needs Debian's nginx (`cargo xtask test` installs it)",
        p.display()
    );
    p
}

fn vpnf(args: &[&str]) -> String {
    let out = Command::new(controller())
        .args(args)
        .output()
        .expect("run vpn-filter");
    assert!(
        out.status.success(),
        "vpn-filter {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The registry's CSV export: `entries` host registrations, plus the probe entry with
/// `probe_status`.
fn export(entries: usize, probe_status: &str, extra: &str) -> String {
    let mut s = String::from("id,holder,category,prefix,status,approved_at,expires_at\n");
    for i in 0..entries {
        s.push_str(&format!(
            "REG-{i:07},Holder {i},company,172.16.{}.{}/32,approved,2026-01-01T00:00:00Z,\n",
            i / 256 % 256,
            i % 256
        ));
    }
    s.push_str(&format!(
        "REG-PROBE,Feed server links,company,{PROBE_PREFIX},{probe_status},2026-01-01T00:00:00Z,\n"
    ));
    s.push_str(extra);
    s
}

/// nginx serving `root` on port 8080 of `ns`, with an access log of one line per request:
/// `addr method uri status bytes_sent msec`.
struct FeedServer {
    process: Process,
    access_log: PathBuf,
}

impl FeedServer {
    fn start(ns: &NetNs, dir: &Path, root: &Path, probe_addr: &str) -> FeedServer {
        let prefix = dir.join("nginx");
        std::fs::create_dir_all(prefix.join("logs")).expect("nginx prefix");
        let access_log = prefix.join("logs/access.log");
        let conf = prefix.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "worker_processes 1;\n\
                 pid {prefix}/nginx.pid;\n\
                 error_log {prefix}/logs/error.log warn;\n\
                 events {{ worker_connections 1024; }}\n\
                 http {{\n\
                   types {{ application/json json; text/plain sig; }}\n\
                   default_type application/octet-stream;\n\
                   log_format fleet '$remote_addr $request_method $uri $status $bytes_sent $msec';\n\
                   access_log {log} fleet;\n\
                   client_body_temp_path {prefix}/tmp;\n\
                   proxy_temp_path {prefix}/tmp;\n\
                   fastcgi_temp_path {prefix}/tmp;\n\
                   uwsgi_temp_path {prefix}/tmp;\n\
                   scgi_temp_path {prefix}/tmp;\n\
                   server {{\n\
                     listen {PORT};\n\
                     root {root};\n\
                   }}\n\
                 }}\n",
                prefix = prefix.display(),
                log = access_log.display(),
                root = root.display(),
            ),
        )
        .expect("nginx.conf");
        let mut cmd = ns.command(nginx());
        cmd.arg("-p")
            .arg(&prefix)
            .arg("-e")
            .arg(prefix.join("logs/error.log"))
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off; master_process on;"]);
        let process = Process::spawn(cmd);
        // Ready when it accepts connections.
        let addr: SocketAddr = format!("{probe_addr}:{PORT}").parse().expect("addr");
        // A bound on attempts, not on the clock: each attempt waits for nginx's answer (200 ms
        // at most), so a slow machine gets as many tries as a fast one.
        let mut attempts = 0;
        loop {
            if ns.enter(|| TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()) {
                break;
            }
            attempts += 1;
            if let Some(s) = process.exit_status() {
                panic!(
                    "nginx exited ({s}): {}\n{}",
                    process.stderr_lines().join("\n"),
                    std::fs::read_to_string(prefix.join("logs/error.log")).unwrap_or_default()
                );
            }
            assert!(
                attempts < 150,
                "nginx does not accept on {addr} after {attempts} attempts"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        FeedServer {
            process,
            access_log,
        }
    }

    fn requests(&self) -> Vec<Request> {
        std::fs::read_to_string(&self.access_log)
            .unwrap_or_default()
            .lines()
            .filter_map(Request::parse)
            .collect()
    }
}

impl Drop for FeedServer {
    fn drop(&mut self) {
        self.process.terminate(Duration::from_secs(5));
    }
}

#[derive(Clone, Debug)]
struct Request {
    addr: String,
    method: String,
    uri: String,
    status: u16,
    bytes: u64,
    at: f64,
}

impl Request {
    fn parse(line: &str) -> Option<Request> {
        let f: Vec<&str> = line.split_whitespace().collect();
        Some(Request {
            addr: f.first()?.to_string(),
            method: f.get(1)?.to_string(),
            uri: f.get(2)?.to_string(),
            status: f.get(3)?.parse().ok()?,
            bytes: f.get(4)?.parse().ok()?,
            at: f.get(5)?.parse().ok()?,
        })
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

/// Requests and bytes, and how they split by status.
fn tally(reqs: &[&Request]) -> String {
    let mut by: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for r in reqs {
        let e = by
            .entry(format!("{} {} {}", r.method, r.uri, r.status))
            .or_default();
        e.0 += 1;
        e.1 += r.bytes;
    }
    let total: u64 = reqs.iter().map(|r| r.bytes).sum();
    let parts: Vec<String> = by
        .iter()
        .map(|(k, (n, b))| format!("{n} x {k} ({b} B)"))
        .collect();
    format!(
        "{} requests, {total} bytes: {}",
        reqs.len(),
        parts.join(", ")
    )
}

struct Gateway {
    ns: NetNs,
    iface: String,
    server_addr: String,
    addr: String,
    dir: PathBuf,
    sock: UdpSocket,
    process: Option<Process>,
}

impl Gateway {
    fn control(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    fn config(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    fn set_keys(&self, keys: &[&Path]) {
        let list: Vec<String> = keys
            .iter()
            .map(|k| format!("{:?}", k.display().to_string()))
            .collect();
        std::fs::write(
            self.config(),
            format!("registry-pubkey = [{}]\n", list.join(", ")),
        )
        .expect("write config");
    }

    fn start(&mut self) {
        let mut cmd = self.ns.command(controller());
        cmd.args(["run", "--no-pin", "--iface", &self.iface])
            .arg("--config")
            .arg(self.config())
            .arg("--registry")
            .arg(format!("http://{}:{PORT}/feed.json", self.server_addr))
            .args(["--registry-http-interval", &INTERVAL.to_string()])
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("--control-socket")
            .arg(self.control())
            // Small maps: twenty gateways share one machine.
            .args(["--allow-v4-entries", "65536", "--allow-v6-entries", "1024"])
            .args(["--flow-entries", "4096"])
            .env("RUST_LOG", "info");
        self.process = Some(Process::spawn(cmd));
    }

    fn p(&self) -> &Process {
        self.process.as_ref().expect("started")
    }

    fn lines(&self) -> Vec<String> {
        self.p().stderr_lines()
    }

    fn count(&self, needle: &str) -> usize {
        self.lines().iter().filter(|l| l.contains(needle)).count()
    }

    fn status(&self) -> serde_json::Value {
        let mut s = UnixStream::connect(self.control())
            .unwrap_or_else(|e| panic!("connect {}: {e}", self.control().display()));
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        s.write_all(b"{\"cmd\":\"status\"}\n").expect("send");
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).expect("read");
        let v: serde_json::Value = serde_json::from_str(&line).expect("status JSON");
        assert_eq!(v["ok"], true, "{line}");
        v["status"].clone()
    }

    fn wireguard_dropped(&self) -> u64 {
        self.status()["counters"]["verdicts"]["wireguard"]["dropped"]
            .as_u64()
            .expect("counter")
    }
}

/// Waits until `done(gateway)` holds for every gateway; returns, per gateway, when it was
/// first seen to hold (since `from`, printed, never asserted). Panics naming the ones that did
/// not after `guard`'s worth of 20 ms polls: a bound on the number of polls, not a time.
fn wait_all(
    gws: &[Gateway],
    what: &str,
    from: Instant,
    guard: Duration,
    done: impl Fn(&Gateway) -> bool,
) -> Vec<Duration> {
    let mut seen: Vec<Option<Duration>> = vec![None; gws.len()];
    let max_polls = guard.as_millis() / 20;
    let mut polls = 0u128;
    loop {
        for (i, g) in gws.iter().enumerate() {
            if seen[i].is_none() {
                if let Some(s) = g.process.as_ref().and_then(Process::exit_status) {
                    panic!(
                        "gateway {i} exited ({s}) while waiting for {what}:\n{}",
                        g.lines().join("\n")
                    );
                }
                if done(g) {
                    seen[i] = Some(from.elapsed());
                }
            }
        }
        if seen.iter().all(Option::is_some) {
            return seen.into_iter().map(Option::unwrap).collect();
        }
        polls += 1;
        if polls > max_polls {
            let late: Vec<usize> = (0..gws.len()).filter(|i| seen[*i].is_none()).collect();
            let first = &gws[late[0]];
            panic!(
                "{what}: gateways {late:?} still waiting after {max_polls} polls (the hang guard); gateway {}'s log:\n{}",
                late[0],
                first.lines().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn max(ds: &[Duration]) -> Duration {
    ds.iter().copied().max().unwrap_or_default()
}

fn median(ds: &[Duration]) -> Duration {
    let mut v = ds.to_vec();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

struct Fleet {
    _dir: TempDir,
    dir: PathBuf,
    server_ns: NetNs,
    gws: Vec<Gateway>,
    next_port: u16,
    guard: Duration,
}

impl Fleet {
    fn out(&self) -> PathBuf {
        self.dir.join("out")
    }

    fn key(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn publish(&self, export: &str, key: &str) -> String {
        let input = self.dir.join("export.csv");
        std::fs::write(&input, export).expect("write export");
        vpnf(&[
            "registry",
            "publish",
            &input.display().to_string(),
            "--out",
            &self.out().display().to_string(),
            "--key",
            &self.key(key).display().to_string(),
        ])
    }

    /// Sends one WireGuard initiation from the feed server's side of each link to its
    /// gateway (a new flow each time) and checks each gateway's verdict: arrival when
    /// `allowed`, the kernel's dropped counter rising (and no arrival) otherwise.
    fn probe(&mut self, allowed: bool, when: &str) {
        let before: Vec<u64> = if allowed {
            Vec::new()
        } else {
            self.gws.iter().map(Gateway::wireguard_dropped).collect()
        };
        let port = self.next_port;
        self.next_port += 1;
        for g in &self.gws {
            udp_send(
                &self.server_ns,
                format!("{}:{port}", g.server_addr).parse().expect("addr"),
                format!("{}:{WG_PORT}", g.addr).parse().expect("addr"),
                &wireguard_initiation(u32::from(port)),
            );
        }
        let from = Instant::now();
        if allowed {
            wait_all(
                &self.gws,
                &format!("{when}: the registered probe arriving"),
                from,
                self.guard,
                |g| {
                    let mut buf = [0u8; 2048];
                    g.sock.set_nonblocking(true).ok();
                    matches!(g.sock.recv_from(&mut buf), Ok((_, from)) if from.port() == port)
                },
            );
        } else {
            let gws = &self.gws;
            wait_all(
                gws,
                &format!("{when}: the unregistered probe counted as dropped"),
                from,
                self.guard,
                |g| {
                    let i = gws.iter().position(|x| x.addr == g.addr).expect("member");
                    g.wireguard_dropped() > before[i]
                },
            );
            for (i, g) in self.gws.iter().enumerate() {
                let mut buf = [0u8; 2048];
                g.sock.set_nonblocking(true).ok();
                assert!(
                    g.sock.recv_from(&mut buf).is_err(),
                    "{when}: gateway {i} let the unregistered probe through"
                );
            }
        }
    }

    fn serials(&self) -> Vec<Option<u64>> {
        self.gws
            .iter()
            .map(|g| g.status()["registry"]["serial"].as_u64())
            .collect()
    }

    /// Waits for every gateway to apply `serial` (its log line, then its status: the line is
    /// logged just before the status is updated), then checks from the access log that each
    /// fetched it on its first poll after the publication: of its polls since `since_unix`
    /// (taken before publishing), the first `200` for the feed comes after at most one `304`
    /// logged once the release was in place (`published_unix`; one, for a poll that was in
    /// flight while it was switched in). Prints and returns the convergence times.
    fn converge(
        &self,
        server: &FeedServer,
        serial: u64,
        (since_unix, published_unix): (f64, f64),
        published_at: Instant,
        what: &str,
    ) -> Vec<Duration> {
        let needle = format!("registry serial {serial} applied from");
        let times = wait_all(
            &self.gws,
            &format!("{what}: serial {serial} applied"),
            published_at,
            self.guard,
            |g| g.count(&needle) > 0 && g.status()["registry"]["serial"].as_u64() == Some(serial),
        );
        assert!(
            self.serials().iter().all(|s| *s == Some(serial)),
            "{what}: every gateway's status must report serial {serial}: {:?}",
            self.serials()
        );
        let reqs = server.requests();
        for (i, g) in self.gws.iter().enumerate() {
            let polls: Vec<(u16, f64)> = reqs
                .iter()
                .filter(|r| {
                    r.addr == g.addr
                        && r.at >= since_unix
                        && r.uri == "/feed.json"
                        && r.method == "GET"
                })
                .map(|r| (r.status, r.at))
                .collect();
            let first_fetch = polls.iter().position(|(s, _)| *s == 200);
            let missed = first_fetch.map(|n| {
                polls[..n]
                    .iter()
                    .filter(|(s, at)| *s == 304 && *at >= published_unix)
                    .count()
            });
            assert!(
                matches!(missed, Some(m) if m <= 1),
                "{what}: gateway {i} must fetch serial {serial} on its first poll after the publication; its polls (status, unix time) since {since_unix} (published at {published_unix}): {polls:?}"
            );
        }
        eprintln!(
            "[fleet] {what}: serial {serial} on all {} gateways in {:.2} s (median {:.2} s; poll interval {INTERVAL} s)",
            self.gws.len(),
            max(&times).as_secs_f64(),
            median(&times).as_secs_f64()
        );
        times
    }

    /// Waits for every gateway to refuse a publication (a log line with `needle`), then
    /// checks it still enforces `serial`.
    /// Waits for every gateway to refuse a publication (a log line with `needle`), checks it
    /// still enforces `serial`, and that the refused feed was downloaded once per gateway
    /// since `since_unix` (before the switch): the polls after a refusal are answered `304`
    /// until the version changes.
    fn refused(
        &self,
        server: &FeedServer,
        needle: &str,
        serial: u64,
        published_at: Instant,
        since_unix: f64,
        what: &str,
    ) {
        let before: Vec<usize> = self.gws.iter().map(|g| g.count(needle)).collect();
        let gws = &self.gws;
        let times = wait_all(
            gws,
            &format!("{what}: refused ({needle})"),
            published_at,
            self.guard,
            |g| {
                let i = gws.iter().position(|x| x.addr == g.addr).expect("member");
                g.count(needle) > before[i]
            },
        );
        assert!(
            self.serials().iter().all(|s| *s == Some(serial)),
            "{what}: every gateway must keep serial {serial}: {:?}",
            self.serials()
        );
        // One more poll each after the refusal: a 304, the refused feed not downloaded again.
        let refused_at = unix_now();
        wait_all(
            &self.gws,
            &format!("{what}: a poll after the refusal"),
            Instant::now(),
            self.guard,
            |g| {
                server.requests().iter().any(|r| {
                    r.addr == g.addr && r.at > refused_at && r.method == "GET" && r.status == 304
                })
            },
        );
        let reqs = server.requests();
        for (i, g) in self.gws.iter().enumerate() {
            let bodies = reqs
                .iter()
                .filter(|r| {
                    r.addr == g.addr
                        && r.at >= since_unix
                        && r.uri == "/feed.json"
                        && r.method == "GET"
                        && r.status == 200
                })
                .count();
            assert_eq!(
                bodies, 1,
                "{what}: gateway {i} downloads the refused feed once, then polls with its ETag"
            );
        }
        let after: Vec<&Request> = reqs.iter().filter(|r| r.at > refused_at).collect();
        eprintln!(
            "[fleet] {what}: refused by all {} gateways in {:.2} s; serial {serial} stays; polls while it stays served: {}",
            self.gws.len(),
            max(&times).as_secs_f64(),
            tally(&after)
        );
    }
}

#[test]
fn fleet_of_gateways_converges_on_each_publication_refuses_bad_ones_and_rolls_keys_over() {
    vpn_filter_tests::require_root();
    let n = env_usize("FLEET_GATEWAYS", 20);
    let entries = env_usize("FLEET_ENTRIES", 200);
    assert!((1..=250).contains(&n), "FLEET_GATEWAYS must be 1..=250");
    let tmp = TempDir::new("fleet");
    let dir = tmp.path().to_path_buf();
    for key in ["a.pem", "b.pem", "c.pem"] {
        vpnf(&["registry", "keygen", &dir.join(key).display().to_string()]);
    }
    let server_ns = NetNs::new("fsrv");
    let started = Instant::now();
    let mut gws = Vec::new();
    for i in 0..n {
        let ns = NetNs::new("fgw");
        let (iface, peer) = (format!("up{i}"), format!("f{i}"));
        veth(&ns, &iface, &server_ns, &peer);
        let (server_addr, addr) = (format!("10.90.{i}.1"), format!("10.90.{i}.2"));
        server_ns.ip(&["addr", "add", &format!("{server_addr}/24"), "dev", &peer]);
        ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", &iface]);
        let gdir = dir.join(format!("gw{i}"));
        std::fs::create_dir_all(&gdir).expect("gateway dir");
        let sock = udp_bind(&ns, format!("{addr}:{WG_PORT}").parse().expect("addr"));
        gws.push(Gateway {
            ns,
            iface,
            server_addr,
            addr,
            dir: gdir,
            sock,
            process: None,
        });
    }
    let mut fleet = Fleet {
        _dir: tmp,
        dir: dir.clone(),
        server_ns,
        gws,
        next_port: 40000,
        guard: hang_guard(n, entries),
    };

    // Serial 1: the probe registered. nginx serves out/current.
    fleet.publish(&export(entries, "approved", ""), "a.pem");
    let server = FeedServer::start(
        &fleet.server_ns,
        &dir,
        &fleet.out().join("current"),
        "10.90.0.1",
    );
    let key_a = fleet.key("a.pem.pub");
    let key_b = fleet.key("b.pem.pub");
    for g in &mut fleet.gws {
        g.set_keys(&[&key_a]);
        g.start();
    }
    let t = wait_all(&fleet.gws, "start-up", started, startup(n), |g| {
        g.count("registry serial 1 applied") > 0 && g.count(vpn_filter::daemon::run::READY) > 0
    });
    eprintln!(
        "[fleet] {n} gateways up with serial 1 in {:.1} s ({entries} registry entries + the probe)",
        max(&t).as_secs_f64()
    );
    fleet.probe(true, "serial 1 (probe registered)");

    // Unchanged polls: every gateway's later polls are answered 304. Two full rounds.
    let quiet_from = unix_now();
    let q = Instant::now();
    wait_all(&fleet.gws, "two polls answered 304", q, fleet.guard, |g| {
        server
            .requests()
            .iter()
            .filter(|r| r.addr == g.addr && r.at >= quiet_from && r.status == 304)
            .count()
            >= 2
    });
    let quiet_to = unix_now();
    let reqs = server.requests();
    let quiet: Vec<&Request> = reqs
        .iter()
        .filter(|r| r.at >= quiet_from && r.at <= quiet_to)
        .collect();
    assert!(
        quiet
            .iter()
            .all(|r| r.status == 304 && r.uri == "/feed.json"),
        "while nothing is published every poll is a 304 of the feed: {}",
        tally(&quiet)
    );
    let rounds = (quiet_to - quiet_from) / INTERVAL as f64;
    let bytes: u64 = quiet.iter().map(|r| r.bytes).sum();
    eprintln!(
        "[fleet] unchanged: {} over {:.1} s = {rounds:.1} poll rounds: {:.1} requests and {:.0} bytes per round ({} per gateway per poll)",
        tally(&quiet),
        quiet_to - quiet_from,
        quiet.len() as f64 / rounds,
        bytes as f64 / rounds,
        quiet.first().map_or(0, |r| r.bytes)
    );

    // Serial 2: the probe revoked. Every gateway applies it on its first poll and its kernel
    // drops the probe.
    let round_from = unix_now();
    fleet.publish(&export(entries, "revoked", ""), "a.pem");
    let (published, published_unix) = (Instant::now(), unix_now());
    fleet.converge(
        &server,
        2,
        (round_from, published_unix),
        published,
        "a new publication",
    );
    let feed_len = std::fs::metadata(fleet.out().join("current/feed.json"))
        .expect("feed")
        .len();
    // The round: until each gateway's first 304 after its fetch.
    let round_to = unix_now() + INTERVAL as f64 + 1.0;
    wait_all(
        &fleet.gws,
        "a 304 after the new feed",
        Instant::now(),
        fleet.guard,
        |g| {
            server.requests().iter().any(|r| {
                r.addr == g.addr && r.at > round_from && r.status == 304 && r.method == "GET"
            })
        },
    );
    let reqs = server.requests();
    let round: Vec<&Request> = reqs
        .iter()
        .filter(|r| r.at >= round_from && r.at <= round_to)
        .filter(|r| !(r.method == "GET" && r.status == 304))
        .collect();
    eprintln!(
        "[fleet] publication round (feed {feed_len} B): {}",
        tally(&round)
    );
    for g in &fleet.gws {
        let fetched = round
            .iter()
            .filter(|r| r.addr == g.addr && r.uri == "/feed.json" && r.method == "GET")
            .count();
        assert_eq!(fetched, 1, "gateway {} fetched the new feed once", g.addr);
    }
    fleet.probe(false, "serial 2 (probe revoked)");

    // A bad signature: serial 3 signed by key C, which no gateway trusts.
    let since = unix_now();
    fleet.publish(&export(entries, "approved", ""), "c.pem");
    let published = Instant::now();
    fleet.refused(
        &server,
        "BAD SIGNATURE",
        2,
        published,
        since,
        "a feed signed by an unknown key",
    );
    fleet.probe(false, "after the badly signed feed");

    // A serial going backwards: `current` pointed back at release 1 (a restored backup).
    let since = unix_now();
    let link = fleet.out().join("current.tmp");
    std::os::unix::fs::symlink("releases/1", &link).expect("symlink");
    std::fs::rename(&link, fleet.out().join("current")).expect("switch back");
    let published = Instant::now();
    fleet.refused(
        &server,
        "serial 1 is older than serial 2",
        2,
        published,
        since,
        "an older serial",
    );
    fleet.probe(false, "after the older serial");

    // Back to normal: serial 4 (the probe registered again) signed by A.
    let since = unix_now();
    fleet.publish(&export(entries, "approved", ""), "a.pem");
    let (published, published_unix) = (Instant::now(), unix_now());
    fleet.converge(
        &server,
        4,
        (since, published_unix),
        published,
        "the next good publication",
    );
    fleet.probe(true, "serial 4 (probe registered again)");

    // Key rotation A -> B: B is added to every gateway's config (SIGHUP, no restart), the
    // registry signs with B, then A is retired. No gateway refuses any feed meanwhile.
    let refusals_before: Vec<usize> = fleet.gws.iter().map(|g| g.count("refused")).collect();
    let b_pub = key_b.display().to_string();
    let reload_from = Instant::now();
    for g in &fleet.gws {
        g.set_keys(&[&key_a, &key_b]);
        g.p().signal(libc::SIGHUP);
    }
    wait_all(
        &fleet.gws,
        "key B accepted after SIGHUP",
        reload_from,
        fleet.guard,
        |g| g.count(&format!("({b_pub}) are accepted")) > 0,
    );
    let since_b = unix_now();
    fleet.publish(
        &export(
            entries,
            "approved",
            "REG-ROT,Rotation,company,192.0.2.0/24,approved,2026-01-01T00:00:00Z,\n",
        ),
        "b.pem",
    );
    let (published, published_unix) = (Instant::now(), unix_now());
    fleet.converge(
        &server,
        5,
        (since_b, published_unix),
        published,
        "the first feed signed by key B",
    );
    let retire_from = Instant::now();
    let a_pub = key_a.display().to_string();
    let a_logged: Vec<usize> = fleet
        .gws
        .iter()
        .map(|g| g.count(&format!("({a_pub}) are accepted")))
        .collect();
    for g in &fleet.gws {
        g.set_keys(&[&key_b]);
        g.p().signal(libc::SIGHUP);
    }
    // Retired: the reload logs B's acceptance once more (and A's no more).
    wait_all(
        &fleet.gws,
        "key A retired after SIGHUP",
        retire_from,
        fleet.guard,
        |g| g.count(&format!("({b_pub}) are accepted")) >= 2,
    );
    for (i, g) in fleet.gws.iter().enumerate() {
        assert_eq!(
            g.count(&format!("({a_pub}) are accepted")),
            a_logged[i],
            "gateway {i} must not accept key A any more"
        );
    }
    let since_b_alone = unix_now();
    fleet.publish(&export(entries, "revoked", ""), "b.pem");
    let (published, published_unix) = (Instant::now(), unix_now());
    fleet.converge(
        &server,
        6,
        (since_b_alone, published_unix),
        published,
        "a feed signed by key B alone",
    );
    fleet.probe(false, "after the rotation");
    for (i, g) in fleet.gws.iter().enumerate() {
        let now: Vec<String> = g
            .lines()
            .into_iter()
            .filter(|l| l.contains("refused") || l.contains("BAD SIGNATURE"))
            .collect();
        assert_eq!(
            now.len(),
            refusals_before[i],
            "gateway {i} refused a feed during the key rotation: {now:?}"
        );
    }
    // After the rotation, a feed signed by the retired key A is refused.
    let since = unix_now();
    fleet.publish(&export(entries, "approved", ""), "a.pem");
    let published = Instant::now();
    fleet.refused(
        &server,
        "BAD SIGNATURE",
        6,
        published,
        since,
        "a feed signed by the retired key A",
    );

    let total = server.requests();
    eprintln!(
        "[fleet] whole run: {} gateways, {}, {:.0} s",
        n,
        tally(&total.iter().collect::<Vec<_>>()),
        started.elapsed().as_secs_f64()
    );
    for g in &fleet.gws {
        let p = g.p();
        let status = p.terminate(Duration::from_secs(20));
        assert!(
            status.is_some_and(|s| s.success()),
            "gateway {} must exit cleanly on SIGTERM: {status:?}",
            g.addr
        );
    }
}
