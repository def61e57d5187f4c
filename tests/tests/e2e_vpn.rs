//! End to end: real VPN clients and servers (Debian packages) try to build real tunnels
//! through a gateway running the vpn-filter controller (`target/debug/vpn-filter run`).
//!
//! ```text
//!  registered client   10.81.1.2 ── g-reg   ┐
//!                                            ├ gateway: vpn-filter on all three ── g-srv ── server 10.81.3.2
//!  unregistered client 10.81.2.2 ── g-unreg ┘
//! ```
//!
//! For every protocol, three tests:
//! - registry = the registered client: its tunnel comes up and carries a ping; the
//!   unregistered client's tunnel stays down for [`BLOCK_WINDOW`] (its own status, and a ping
//!   through it fails) and the controller reports drop events naming the protocol;
//! - registry = the server: both tunnels come up, nothing is reported;
//! - `--policy all=monitor`: both tunnels come up and the unregistered one is reported.
//!
//! A protocol without a wire signature, judged by a heuristic that is monitored by default
//! (Shadowsocks: `fully_encrypted`), gets the same three adapted: under the default policy
//! both clients get through and the unregistered one is reported; under `--policy
//! fully_encrypted=enforce` only the registered one gets through and the other's drops are
//! reported; with the server registered both get through and nothing is reported.
//!
//! Plus ordinary traffic (HTTP, DNS over UDP, TLS, iperf3) through the same gateway: it works
//! for both clients and nothing is dropped.
//!
//! Each test prints one summary row straight to stderr (not captured by the test harness), so
//! `cargo test` output lists every protocol with its blocked/allowed result. Keys,
//! certificates and passwords are generated per test in a temporary directory. Every process
//! is killed by pid (its own guard, then a sweep of the lab's namespaces) and every namespace
//! deleted, also when a test fails. The packages are installed by `cargo xtask test`.
//!
//! PPTP and L2TP stop after their control connections here (the kernel has no PPP): "up" means
//! the client's own report of the control connection (pptp starting pppd once the server
//! accepted the call; xl2tpd's `Connection established`), and there is no ping. For
//! OpenConnect the judged channel is DTLS: the TLS (CSTP) connection on TCP 443 looks like
//! HTTPS, but once the server answers the DTLS handshake and that answer is dropped, the
//! client-server pair is closed (fallback) and the CSTP connection carries nothing more. The
//! README's "Covered end to end" section has the table of results and these limits.

use std::{
    io::Write as _,
    net::{Shutdown, TcpListener},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::Value;
use vpn_filter_tests::{
    gateway_lab::{
        controller_path, GatewayLab, TempDir, REGISTERED, REGISTERED6, SERVER, SERVER6,
        UNREGISTERED, UNREGISTERED6,
    },
    lab::registry_json,
    netns::{NetNs, Process},
    require_root,
};

/// The registered client's tunnel (or both, where both must pass) must be up within this.
const UP_TIMEOUT: Duration = Duration::from_secs(30);
/// The unregistered client's tunnel must still be down this long after the client started:
/// long enough for every client here to retransmit its handshake at least once.
const BLOCK_WINDOW: Duration = Duration::from_secs(8);

// ----------------------------------------------------------------------------- plumbing

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Registered,
    Unregistered,
}

impl Side {
    fn ns(self, lab: &GatewayLab) -> &NetNs {
        match self {
            Side::Registered => &lab.reg,
            Side::Unregistered => &lab.unreg,
        }
    }

    fn addr(self) -> &'static str {
        match self {
            Side::Registered => REGISTERED,
            Side::Unregistered => UNREGISTERED,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Side::Registered => "registered",
            Side::Unregistered => "unregistered",
        }
    }

    /// Host number of this client inside the tunnels (the server is .1).
    fn host(self) -> u8 {
        match self {
            Side::Registered => 2,
            Side::Unregistered => 3,
        }
    }
}

/// Runs a command to completion; panics with its output unless it succeeds.
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

fn write_file(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Writes a file readable by its owner only (keys, passwords).
fn write_secret(path: &Path, contents: &str) {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(contents.as_bytes()))
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// A file of `tests/e2e/`.
fn e2e_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e").join(name)
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

/// Polls `f` every 100 ms until it holds, at most `timeout`'s worth of polls (a hang guard
/// bounded by polls, not a clock); returns how long it took (for the summary only).
fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    for _ in 0..=timeout.as_millis() / 100 {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// One echo request from `ns` (from `src` if given) to `dst`, answered within a second.
fn ping_once(ns: &NetNs, src: Option<&str>, dst: &str) -> bool {
    let mut args = vec!["-n", "-c1", "-W1"];
    if let Some(src) = src {
        args.extend(["-I", src]);
    }
    args.push(dst);
    ns.exec("ping", &args).status.success()
}

/// Is something listening in `ns` on `port` (`ss` filter: `-tln` or `-uln`)?
fn listening(ns: &NetNs, flags: &str, port: u16) -> bool {
    let out = ns.exec("ss", &[flags, "-H"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.contains(&format!(":{port} ")))
}

/// Named processes of one scenario, killed (by pid) when dropped; their output for messages.
#[derive(Default)]
struct Procs(Vec<(String, Process)>);

impl Procs {
    fn add(&mut self, label: impl Into<String>, p: Process) {
        self.0.push((label.into(), p));
    }

    fn get(&self, label: &str) -> &Process {
        self.0
            .iter()
            .find(|(l, _)| l == label)
            .map(|(_, p)| p)
            .unwrap_or_else(|| panic!("no process {label}"))
    }

    /// Whether any output line (stdout or stderr) of process `label` contains `needle`.
    fn said(&self, label: &str, needle: &str) -> bool {
        let p = self.get(label);
        p.stdout_lines()
            .iter()
            .chain(p.stderr_lines().iter())
            .any(|l| l.contains(needle))
    }

    /// The last lines of every process's output, for failure messages.
    fn logs(&self) -> String {
        let mut s = String::new();
        for (label, p) in &self.0 {
            let out = p.stdout_lines();
            let err = p.stderr_lines();
            s.push_str(&format!("---- {label} (pid {}) stdout:\n", p.pid()));
            for l in out.iter().skip(out.len().saturating_sub(25)) {
                s.push_str(&format!("  {l}\n"));
            }
            s.push_str(&format!("---- {label} stderr:\n"));
            for l in err.iter().skip(err.len().saturating_sub(25)) {
                s.push_str(&format!("  {l}\n"));
            }
        }
        s
    }
}

/// A command in `ns` with a private, empty `/run` (a tmpfs in the mount namespace that
/// `ip netns exec` creates): daemons that insist on fixed paths there (charon's pid file,
/// wireguard-go's UAPI socket, pptp's call-manager socket) cannot collide across namespaces
/// and leave nothing behind.
fn with_private_run(ns: &NetNs, script: &str) -> Command {
    let mut cmd = ns.command("sh");
    cmd.args([
        "-c",
        &format!("mount -t tmpfs vf-e2e-run /run && exec {script}"),
    ]);
    cmd
}

/// A CA, a server certificate (for 10.81.3.2) and a client certificate, ECDSA P-256.
struct Pki {
    ca: PathBuf,
    server_crt: PathBuf,
    server_key: PathBuf,
    client_crt: PathBuf,
    client_key: PathBuf,
}

impl Pki {
    fn generate(dir: &Path) -> Pki {
        let d = dir.join("pki");
        std::fs::create_dir_all(&d).expect("mkdir pki");
        let p = |n: &str| d.join(n);
        run_ok(Command::new("openssl").current_dir(&d).args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=vpn-filter e2e CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]));
        for (name, eku, san) in [
            ("server", "serverAuth", format!("DNS:server,IP:{SERVER}")),
            ("client", "clientAuth", "DNS:client".to_string()),
        ] {
            run_ok(Command::new("openssl").current_dir(&d).args([
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ]));
            write_file(
                &p(&format!("{name}.ext")),
                &format!(
                    "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyAgreement\nextendedKeyUsage={eku}\nsubjectAltName={san}\n"
                ),
            );
            run_ok(Command::new("openssl").current_dir(&d).args([
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.crt"),
            ]));
        }
        Pki {
            ca: p("ca.crt"),
            server_crt: p("server.crt"),
            server_key: p("server.key"),
            client_crt: p("client.crt"),
            client_key: p("client.key"),
        }
    }
}

// ----------------------------------------------------------------------------- the lab

/// How long an event (or a `counters:` line) may take from the kernel to the test: through
/// the ring buffer, the controller and a pipe. Under a second when the machine is idle;
/// seconds when it is loaded. A bound on waits that end as soon as it arrives.
const EVENT_DELIVERY: Duration = Duration::from_secs(15);

/// One test's lab: namespaces, the controller, a temporary directory. Field order is drop
/// order: the controller, then the lab (which kills what is left in its namespaces and
/// deletes them), then the directory.
struct Env {
    controller: Process,
    lab: GatewayLab,
    dir: TempDir,
}

impl Env {
    /// A lab whose registry allows `allowed` (one entry), controller started with `extra`.
    fn new(allowed: &[&str], extra: &[&str]) -> Env {
        require_root();
        let dir = TempDir::new("e2e");
        let lab = GatewayLab::new();
        let registry = dir.path().join("registry.json");
        write_file(&registry, &registry_json(1, &[("REG-E2E-1", allowed)]));
        let mut args = vec!["--stats-interval", "1"];
        args.extend(extra);
        let controller = lab.start_controller(&controller_path(), &registry, &args);
        Env {
            controller,
            lab,
            dir,
        }
    }

    /// Every event the controller has written so far (one JSON object per stdout line).
    fn events(&self) -> Vec<Value> {
        self.controller
            .stdout_lines()
            .iter()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("controller stdout line is not JSON ({e}): {l}"))
            })
            .collect()
    }

    /// The controller's `counters:` lines so far.
    fn counters_lines(&self) -> Vec<String> {
        self.controller
            .stderr_lines()
            .into_iter()
            .filter(|l| l.starts_with("counters:"))
            .collect()
    }

    /// A `counters:` line printed after this call (waits for two new ones, so the last was
    /// read after everything sent before the call; printed every second, given
    /// [`EVENT_DELIVERY`] on a loaded machine).
    fn fresh_counters(&self) -> String {
        let before = self.counters_lines().len();
        let printed = wait_until(EVENT_DELIVERY, || self.counters_lines().len() >= before + 2);
        assert!(
            printed.is_some(),
            "the controller printed no two counters lines in {EVENT_DELIVERY:?}; stderr:\n{}",
            self.controller.stderr_lines().join("\n")
        );
        self.counters_lines().pop().expect("a counters line")
    }
}

/// Events about `addr` (as source or destination).
fn naming<'a>(events: &'a [Value], addr: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["src"] == addr || e["dst"] == addr)
        .collect()
}

fn is(e: &Value, protocol: &str, verdict: &str) -> bool {
    e["protocol"] == protocol && e["verdict"] == verdict
}

/// Sum of `dropped=N` over the protocols of a `counters:` line.
fn dropped_in(counters: &str) -> u64 {
    counters
        .split(" | ")
        .skip(1)
        .flat_map(|part| part.split_whitespace())
        .filter_map(|kv| kv.strip_prefix("dropped="))
        .map(|n| {
            n.parse::<u64>()
                .unwrap_or_else(|e| panic!("bad count {n:?} in {counters:?}: {e}"))
        })
        .sum()
}

/// Writes one summary row to the real stderr: the test harness captures `print!`/`eprint!`
/// output of passing tests, not direct writes, so the rows show in any `cargo test` run.
fn summary(row: &str) {
    let _ = writeln!(std::io::stderr(), "[e2e-vpn] {row}");
}

// ----------------------------------------------------------------------------- scenarios

/// Where a client pings to prove its tunnel carries traffic.
struct Ping {
    src: Option<String>,
    dst: String,
}

/// A VPN under test: a server in the lab's server namespace, a client in either client
/// namespace, and a way to ask the client whether its tunnel is up.
trait Vpn {
    /// Name in the summary, e.g. `openvpn-udp-tls-auth`.
    fn name(&self) -> &'static str;
    /// The `protocol` of the controller's events for it.
    fn protocol(&self) -> &'static str;
    /// What "up" means for this client, for messages and the summary.
    fn up_means(&self) -> &'static str;
    fn start_server(&mut self, lab: &GatewayLab, dir: &Path);
    fn start_client(&mut self, lab: &GatewayLab, dir: &Path, side: Side);
    /// The client's own view: is its tunnel up?
    fn is_up(&self, lab: &GatewayLab, side: Side) -> bool;
    /// A ping through the tunnel, or `None` where no data plane can come up here (PPTP).
    fn ping(&self, lab: &GatewayLab, side: Side) -> Option<Ping>;
    fn procs(&self) -> &Procs;
    /// Whether blocking the handshake also leaves the client without any tunnel (so a ping
    /// through it must fail). OpenConnect too: once its DTLS handshake is dropped, the
    /// fallback closure drops its TLS (CSTP) connection with the server.
    fn blocks_data_plane(&self) -> bool {
        true
    }
    /// Controller arguments for the "only the registered client" test besides the default
    /// policy (OpenConnect: the fallback closure, off by default).
    fn enforce_args(&self) -> &'static [&'static str] {
        &[]
    }
    /// A remark on a blocked client for the summary row.
    fn blocked_note(&self, _side: Side) -> String {
        String::new()
    }
    /// The address a client's VPN traffic comes from, as events name it (by default the
    /// client's IPv4 address).
    fn client_addr(&self, side: Side) -> &'static str {
        side.addr()
    }
    /// The server's address the clients talk to (by default its IPv4 address).
    fn server_addr(&self) -> &'static str {
        SERVER
    }
    /// The mode of the controller's default policy for [`Vpn::protocol`], for the summary.
    fn default_mode(&self) -> &'static str {
        "enforce"
    }
    /// For the summary, where [`Vpn::ping`] is `None`: what "up" proved instead.
    fn without_ping(&self) -> &'static str {
        "no data plane here"
    }
    /// For a client that must stay blocked: does anything of it get through? By default,
    /// whether its tunnel is up; where "up" needs several channels (Shadowsocks: TCP and
    /// UDP), whether any one of them works.
    fn gets_anything_through(&self, lab: &GatewayLab, side: Side) -> bool {
        self.is_up(lab, side)
    }
    /// Attempts of a client that must stay blocked that may get through: 0 for a signature.
    /// A heuristic with a published exemption rate lets that share of fresh attempts
    /// through by design (see the Shadowsocks implementation).
    fn tolerated_passes(&self) -> u32 {
        0
    }
}

/// Waits for `side`'s tunnel to come up and carry a ping; panics with the logs otherwise.
/// Returns a short description for the summary (time since `started`, the clients' start).
fn expect_up(vpn: &dyn Vpn, env: &Env, side: Side, started: Instant) -> String {
    wait_until(UP_TIMEOUT, || vpn.is_up(&env.lab, side)).unwrap_or_else(|| {
        panic!(
            "{}: the {} client's tunnel is not up ({}) after {UP_TIMEOUT:?}\nevents: {:?}\n{}",
            vpn.name(),
            side.label(),
            vpn.up_means(),
            env.controller.stdout_lines(),
            vpn.procs().logs()
        )
    });
    let took = started.elapsed();
    let ping = match vpn.ping(&env.lab, side) {
        None => vpn.without_ping().to_string(),
        Some(p) => {
            let ok = wait_until(Duration::from_secs(10), || {
                ping_once(side.ns(&env.lab), p.src.as_deref(), &p.dst)
            });
            assert!(
                ok.is_some(),
                "{}: the {} client's tunnel is up but carries no ping to {} within 10 s\n{}",
                vpn.name(),
                side.label(),
                p.dst,
                vpn.procs().logs()
            );
            format!("ping {} ok", p.dst)
        }
    };
    format!("up in {:.1} s, {ping}", took.as_secs_f64())
}

/// Registry = the registered client: only its tunnel comes up; the other is blocked and
/// reported.
fn only_the_registered_client_gets_through(vpn: impl Vpn) {
    let extra = vpn.enforce_args();
    let mode = if extra.is_empty() {
        "enforce".to_string()
    } else {
        format!("enforce {}", extra.join(" "))
    };
    blocked_unless_registered(vpn, extra, &mode);
}

/// The same under a policy given as controller arguments (`extra`; `mode` names it in the
/// summary): for a protocol monitored by default, its `--policy <protocol>=enforce`.
fn blocked_unless_registered(mut vpn: impl Vpn, extra: &[&str], mode: &str) {
    let reg_addr = vpn.client_addr(Side::Registered);
    let unreg_addr = vpn.client_addr(Side::Unregistered);
    let env = Env::new(&[reg_addr], extra);
    let dir = env.dir.path();
    vpn.start_server(&env.lab, dir);
    let started = Instant::now();
    vpn.start_client(&env.lab, dir, Side::Unregistered);
    vpn.start_client(&env.lab, dir, Side::Registered);

    let reg = expect_up(&vpn, &env, Side::Registered, started);

    // Attempts until the window ends: each a fresh try of the unregistered client (for a
    // heuristic, a new connection with new random bytes).
    let tolerated = vpn.tolerated_passes();
    let deadline = Instant::now() + BLOCK_WINDOW.saturating_sub(started.elapsed());
    let (mut attempts, mut passes) = (0u32, 0u32);
    loop {
        attempts += 1;
        if vpn.gets_anything_through(&env.lab, Side::Unregistered) {
            passes += 1;
            if passes > tolerated {
                break;
            }
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        passes <= tolerated && attempts > passes,
        "{}: the unregistered client got through on {passes} of {attempts} attempts (up means: {}; at most {tolerated} tolerated, see tolerated_passes) although the registry allows only {reg_addr}\nevents: {:?}\n{}",
        vpn.name(),
        vpn.up_means(),
        env.controller.stdout_lines(),
        vpn.procs().logs()
    );
    let down_for = started.elapsed();
    if let Some(p) = vpn
        .ping(&env.lab, Side::Unregistered)
        .filter(|_| vpn.blocks_data_plane())
    {
        assert!(
            !ping_once(&env.lab.unreg, p.src.as_deref(), &p.dst),
            "{}: a ping through the unregistered client's tunnel to {} was answered",
            vpn.name(),
            p.dst
        );
    }

    let events = env.events();
    let drops: Vec<_> = naming(&events, unreg_addr)
        .into_iter()
        .filter(|e| is(e, vpn.protocol(), "dropped"))
        .collect();
    assert!(
        !drops.is_empty(),
        "{}: no `dropped` event with protocol {} naming {unreg_addr}; events: {events:?}",
        vpn.name(),
        vpn.protocol()
    );
    let about_reg = naming(&events, reg_addr);
    assert!(
        about_reg.is_empty(),
        "{}: events name the registered client: {about_reg:?}",
        vpn.name()
    );
    let messages: std::collections::BTreeSet<&str> =
        drops.iter().filter_map(|e| e["message"].as_str()).collect();
    summary(&format!(
        "{:<24} registry=client  {mode}  registered: ALLOWED ({reg})  unregistered: BLOCKED (down for {:.1} s, {} drop events: {} {:?}{})",
        vpn.name(),
        down_for.as_secs_f64(),
        drops.len(),
        vpn.protocol(),
        messages,
        vpn.blocked_note(Side::Unregistered)
    ));
}

/// Registry = the server: both clients' tunnels come up and nothing is reported.
fn both_get_through_when_the_server_is_registered(mut vpn: impl Vpn) {
    let env = Env::new(&[vpn.server_addr()], &[]);
    let dir = env.dir.path();
    vpn.start_server(&env.lab, dir);
    let started = Instant::now();
    vpn.start_client(&env.lab, dir, Side::Unregistered);
    vpn.start_client(&env.lab, dir, Side::Registered);
    let reg = expect_up(&vpn, &env, Side::Registered, started);
    let unreg = expect_up(&vpn, &env, Side::Unregistered, started);
    let events = env.events();
    assert!(
        events.is_empty(),
        "{}: with the server registered nothing may be reported, got {events:?}",
        vpn.name()
    );
    summary(&format!(
        "{:<24} registry=server  {}  registered: ALLOWED ({reg})  unregistered: ALLOWED ({unreg}), 0 events",
        vpn.name(),
        vpn.default_mode()
    ));
}

/// `--policy all=monitor`: the unregistered tunnel comes up too, and is reported.
fn monitor_mode_reports_but_lets_through(vpn: impl Vpn) {
    reported_but_let_through(vpn, &["--policy", "all=monitor"], "monitor");
}

/// The same under a policy given as controller arguments (`extra`; `mode` names it in the
/// summary): none, for a protocol monitored by default.
fn reported_but_let_through(mut vpn: impl Vpn, extra: &[&str], mode: &str) {
    let reg_addr = vpn.client_addr(Side::Registered);
    let unreg_addr = vpn.client_addr(Side::Unregistered);
    let env = Env::new(&[reg_addr], extra);
    let dir = env.dir.path();
    vpn.start_server(&env.lab, dir);
    let started = Instant::now();
    vpn.start_client(&env.lab, dir, Side::Unregistered);
    vpn.start_client(&env.lab, dir, Side::Registered);
    let reg = expect_up(&vpn, &env, Side::Registered, started);
    let unreg = expect_up(&vpn, &env, Side::Unregistered, started);
    // Events travel through a ring buffer, the controller and a pipe: on a loaded machine
    // that can take seconds (a bound, not a pause: the wait ends with the first event).
    let monitored = |events: &[Value]| {
        naming(events, unreg_addr)
            .into_iter()
            .filter(|e| is(e, vpn.protocol(), "monitored"))
            .count()
    };
    wait_until(EVENT_DELIVERY, || monitored(&env.events()) > 0);
    let events = env.events();
    let n = monitored(&events);
    if n == 0 {
        // What the kernel counted tells a missed detection from a lost event.
        panic!(
            "{}: {mode}: no `monitored` event with protocol {} naming {unreg_addr}; events: {events:?}\nlast {}\ncontroller stderr:\n{}\n{}",
            vpn.name(),
            vpn.protocol(),
            env.fresh_counters(),
            env.controller.stderr_lines().join("\n"),
            vpn.procs().logs()
        );
    }
    let dropped: Vec<_> = events
        .iter()
        .filter(|e| e["verdict"] == "dropped")
        .collect();
    assert!(
        dropped.is_empty(),
        "{}: {mode} dropped something: {dropped:?}",
        vpn.name()
    );
    let about_reg = naming(&events, reg_addr);
    assert!(
        about_reg.is_empty(),
        "{}: events name the registered client: {about_reg:?}",
        vpn.name()
    );
    summary(&format!(
        "{:<24} registry=client  {mode}  registered: ALLOWED ({reg})  unregistered: PASSED+REPORTED ({unreg}, {n} monitored events)",
        vpn.name()
    ));
}

// ----------------------------------------------------------------------------- OpenVPN

#[derive(Clone, Copy)]
enum Transport {
    Udp,
    Tcp,
}

#[derive(Clone, Copy)]
enum Wrap {
    TlsAuth,
    TlsCrypt,
    TlsCryptV2,
}

/// OpenVPN 2.6 server and clients (certificates; tls-auth, tls-crypt or tls-crypt-v2), tunnel
/// 10.8.0.0/24.
struct OpenVpn {
    transport: Transport,
    wrap: Wrap,
    procs: Procs,
    client_conf: Option<PathBuf>,
}

impl OpenVpn {
    fn new(transport: Transport, wrap: Wrap) -> OpenVpn {
        OpenVpn {
            transport,
            wrap,
            procs: Procs::default(),
            client_conf: None,
        }
    }
}

impl Vpn for OpenVpn {
    fn name(&self) -> &'static str {
        match (self.transport, self.wrap) {
            (Transport::Udp, Wrap::TlsAuth) => "openvpn-udp-tls-auth",
            (Transport::Udp, Wrap::TlsCrypt) => "openvpn-udp-tls-crypt",
            (Transport::Tcp, Wrap::TlsAuth) => "openvpn-tcp-tls-auth",
            (Transport::Tcp, Wrap::TlsCrypt) => "openvpn-tcp-tls-crypt",
            (Transport::Udp, Wrap::TlsCryptV2) => "openvpn-udp-tls-crypt-v2",
            (Transport::Tcp, Wrap::TlsCryptV2) => "openvpn-tcp-tls-crypt-v2",
        }
    }

    fn protocol(&self) -> &'static str {
        "openvpn"
    }

    fn up_means(&self) -> &'static str {
        "client log: Initialization Sequence Completed"
    }

    fn start_server(&mut self, lab: &GatewayLab, dir: &Path) {
        let pki = Pki::generate(dir);
        let key = dir.join("wrap.key");
        let client_key = dir.join("wrap-client.key");
        match self.wrap {
            Wrap::TlsAuth | Wrap::TlsCrypt => {
                run_ok(Command::new("openvpn").args(["--genkey", "secret", path_str(&key)]));
            }
            Wrap::TlsCryptV2 => {
                run_ok(Command::new("openvpn").args([
                    "--genkey",
                    "tls-crypt-v2-server",
                    path_str(&key),
                ]));
                run_ok(Command::new("openvpn").args([
                    "--tls-crypt-v2",
                    path_str(&key),
                    "--genkey",
                    "tls-crypt-v2-client",
                    path_str(&client_key),
                ]));
            }
        }
        let (swrap, cwrap) = match self.wrap {
            Wrap::TlsAuth => (
                format!("tls-auth {} 0", key.display()),
                format!("tls-auth {} 1", key.display()),
            ),
            Wrap::TlsCrypt => (
                format!("tls-crypt {}", key.display()),
                format!("tls-crypt {}", key.display()),
            ),
            Wrap::TlsCryptV2 => (
                format!("tls-crypt-v2 {}", key.display()),
                format!("tls-crypt-v2 {}", client_key.display()),
            ),
        };
        let (sproto, cproto) = match self.transport {
            Transport::Udp => ("udp", "udp"),
            Transport::Tcp => ("tcp-server", "tcp-client"),
        };
        let server_conf = dir.join("openvpn-server.conf");
        write_file(
            &server_conf,
            &format!(
                "dev tun\nproto {sproto}\nlocal {SERVER}\nport 1194\ntopology subnet\nserver 10.8.0.0 255.255.255.0\n\
                 ca {}\ncert {}\nkey {}\ndh none\n{swrap}\nduplicate-cn\nkeepalive 10 60\nverb 3\n",
                pki.ca.display(),
                pki.server_crt.display(),
                pki.server_key.display()
            ),
        );
        let client_conf = dir.join("openvpn-client.conf");
        write_file(
            &client_conf,
            &format!(
                "client\ndev tun\nproto {cproto}\nremote {SERVER} 1194\nnobind\nca {}\ncert {}\nkey {}\n\
                 remote-cert-tls server\n{cwrap}\nconnect-retry 1\nverb 3\n",
                pki.ca.display(),
                pki.client_crt.display(),
                pki.client_key.display()
            ),
        );
        self.client_conf = Some(client_conf);
        let mut cmd = lab.server.command("openvpn");
        cmd.arg("--config").arg(&server_conf);
        self.procs.add("openvpn-server", Process::spawn(cmd));
        let ready = wait_until(Duration::from_secs(15), || {
            self.procs
                .said("openvpn-server", "Initialization Sequence Completed")
        });
        assert!(
            ready.is_some(),
            "the OpenVPN server did not start\n{}",
            self.procs.logs()
        );
    }

    fn start_client(&mut self, lab: &GatewayLab, _dir: &Path, side: Side) {
        let mut cmd = side.ns(lab).command("openvpn");
        cmd.arg("--config")
            .arg(self.client_conf.as_ref().expect("server started first"));
        self.procs.add(side.label(), Process::spawn(cmd));
    }

    fn is_up(&self, _lab: &GatewayLab, side: Side) -> bool {
        self.procs
            .said(side.label(), "Initialization Sequence Completed")
    }

    fn ping(&self, _lab: &GatewayLab, _side: Side) -> Option<Ping> {
        Some(Ping {
            src: None,
            dst: "10.8.0.1".into(),
        })
    }

    fn procs(&self) -> &Procs {
        &self.procs
    }
}

// ----------------------------------------------------------------------------- WireGuard

/// wireguard-go (userspace, TUN) on every side, configured with wg(8); tunnel 10.201.0.0/24.
#[derive(Default)]
struct WireGuard {
    procs: Procs,
    server_pub: String,
    client_keys: Vec<(Side, PathBuf, String)>,
}

const WG_IF: &str = "wg0";

impl WireGuard {
    /// A key pair: (private key file, public key).
    fn keypair(dir: &Path, name: &str) -> (PathBuf, String) {
        let private = run_ok(Command::new("wg").arg("genkey"));
        let file = dir.join(format!("{name}.key"));
        write_secret(&file, &private);
        let mut child = Command::new("wg")
            .arg("pubkey")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn wg pubkey");
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(private.as_bytes())
            .expect("write to wg pubkey");
        let out = child.wait_with_output().expect("wg pubkey");
        assert!(out.status.success(), "wg pubkey failed");
        (
            file,
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        )
    }

    /// `wg ARGS` in the mount and network namespaces of the wireguard-go process `label`
    /// (its UAPI socket lives in that process's private /run).
    fn wg(&self, label: &str, args: &[&str]) -> std::process::Output {
        let pid = self.procs.get(label).pid().to_string();
        Command::new("nsenter")
            .args(["--target", &pid, "--mount", "--net", "wg"])
            .args(args)
            .output()
            .expect("run nsenter wg")
    }

    /// Starts wireguard-go in `ns` as `label`, waits for its UAPI socket.
    fn start_daemon(&mut self, ns: &NetNs, label: &str) {
        let mut cmd = with_private_run(ns, &format!("wireguard-go -f {WG_IF}"));
        cmd.env("WG_PROCESS_FOREGROUND", "1");
        self.procs.add(label, Process::spawn(cmd));
        let ok = wait_until(Duration::from_secs(10), || {
            self.wg(label, &["show", WG_IF]).status.success()
        });
        assert!(
            ok.is_some(),
            "wireguard-go ({label}) did not start\n{}",
            self.procs.logs()
        );
    }

    fn set(&self, label: &str, args: &[&str]) {
        let mut all = vec!["set", WG_IF];
        all.extend(args);
        let out = self.wg(label, &all);
        assert!(
            out.status.success(),
            "wg {all:?} ({label}) failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Vpn for WireGuard {
    fn name(&self) -> &'static str {
        "wireguard"
    }

    fn protocol(&self) -> &'static str {
        "wireguard"
    }

    fn up_means(&self) -> &'static str {
        "wg show: a completed handshake with the server"
    }

    fn start_server(&mut self, lab: &GatewayLab, dir: &Path) {
        let (server_key, server_pub) = Self::keypair(dir, "wg-server");
        self.server_pub = server_pub;
        for side in [Side::Registered, Side::Unregistered] {
            let (k, p) = Self::keypair(dir, &format!("wg-{}", side.label()));
            self.client_keys.push((side, k, p));
        }
        self.start_daemon(&lab.server, "server");
        let mut args = vec![
            "listen-port".to_string(),
            "51820".into(),
            "private-key".into(),
            path_str(&server_key).into(),
        ];
        for (side, _, public) in &self.client_keys {
            args.extend([
                "peer".into(),
                public.clone(),
                "allowed-ips".into(),
                format!("10.201.0.{}/32", side.host()),
            ]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.set("server", &args);
        lab.server
            .ip(&["addr", "add", "10.201.0.1/24", "dev", WG_IF]);
        lab.server.ip(&["link", "set", WG_IF, "up"]);
    }

    fn start_client(&mut self, lab: &GatewayLab, _dir: &Path, side: Side) {
        let ns = side.ns(lab);
        self.start_daemon(ns, side.label());
        let (_, key, _) = self
            .client_keys
            .iter()
            .find(|(s, _, _)| *s == side)
            .expect("keys made with the server")
            .clone();
        let server_pub = self.server_pub.clone();
        self.set(
            side.label(),
            &[
                "private-key",
                path_str(&key),
                "peer",
                &server_pub,
                "allowed-ips",
                "10.201.0.1/32",
                "endpoint",
                &format!("{SERVER}:51820"),
            ],
        );
        ns.ip(&[
            "addr",
            "add",
            &format!("10.201.0.{}/24", side.host()),
            "dev",
            WG_IF,
        ]);
        ns.ip(&["link", "set", WG_IF, "up"]);
        // Traffic for the tunnel makes wireguard-go start (and keep retrying) the handshake.
        let mut ping = ns.command("ping");
        ping.args(["-n", "-i", "0.5", "-W", "1", "10.201.0.1"]);
        self.procs
            .add(format!("{}-ping", side.label()), Process::spawn(ping));
    }

    fn is_up(&self, _lab: &GatewayLab, side: Side) -> bool {
        let out = self.wg(side.label(), &["show", WG_IF, "latest-handshakes"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.split_whitespace().nth(1).is_some_and(|t| t != "0"))
    }

    fn ping(&self, _lab: &GatewayLab, _side: Side) -> Option<Ping> {
        Some(Ping {
            src: None,
            dst: "10.201.0.1".into(),
        })
    }

    fn procs(&self) -> &Procs {
        &self.procs
    }
}

// ----------------------------------------------------------------------------- IKEv2

/// strongSwan charon on every side with kernel-libipsec (userspace ESP: this kernel has no
/// ESP, and libipsec only does ESP in UDP, hence `encap = yes`), IKEv2 with a PSK. Tunnel
/// addresses 10.202.0.N/32 on lo; the server has one connection per client.
#[derive(Default)]
struct Ikev2 {
    procs: Procs,
    psk: String,
}

impl Ikev2 {
    fn vici(dir: &Path, label: &str) -> PathBuf {
        dir.join(format!("{label}.vici"))
    }

    fn conf(dir: &Path, label: &str) -> PathBuf {
        dir.join(format!("{label}-strongswan.conf"))
    }

    /// Starts charon in `ns` as `label` with `swanctl_conf` loaded.
    fn start_charon(&mut self, ns: &NetNs, dir: &Path, label: &str, swanctl_conf: &str) {
        let vici = Self::vici(dir, label);
        let conf = Self::conf(dir, label);
        // Retransmissions bounded: the unregistered client gives up in about 6 s.
        write_file(
            &conf,
            &format!(
                "charon {{\n  load = random nonce aes sha1 sha2 hmac kdf curve25519 gmp pem pkcs1 x509 pubkey \
                 kernel-libipsec kernel-netlink socket-default vici updown\n  install_virtual_ip = no\n  \
                 retransmit_tries = 2\n  retransmit_timeout = 1.0\n  plugins {{\n    vici {{\n      socket = unix://{}\n    }}\n  }}\n  \
                 filelog {{\n    stderr {{\n      default = 1\n      ike = 2\n    }}\n  }}\n}}\n",
                vici.display()
            ),
        );
        let swanctl = dir.join(format!("{label}-swanctl.conf"));
        write_secret(&swanctl, swanctl_conf);
        // charon insists on /run/charon.pid: a private /run per instance.
        let mut cmd = with_private_run(ns, "/usr/lib/ipsec/charon");
        cmd.env("STRONGSWAN_CONF", &conf);
        self.procs
            .add(format!("charon-{label}"), Process::spawn(cmd));
        let ok = wait_until(Duration::from_secs(15), || vici.exists());
        assert!(
            ok.is_some(),
            "charon ({label}) did not open its vici socket\n{}",
            self.procs.logs()
        );
        run_ok(
            Command::new("swanctl")
                .env("STRONGSWAN_CONF", &conf)
                .args(["--load-all", "--noprompt", "--uri"])
                .arg(format!("unix://{}", vici.display()))
                .arg("--file")
                .arg(&swanctl),
        );
    }
}

impl Vpn for Ikev2 {
    fn name(&self) -> &'static str {
        "ikev2-psk"
    }

    fn protocol(&self) -> &'static str {
        "ike"
    }

    fn up_means(&self) -> &'static str {
        "swanctl --initiate: IKE_SA and CHILD_SA established"
    }

    fn start_server(&mut self, lab: &GatewayLab, dir: &Path) {
        self.psk = run_ok(Command::new("openssl").args(["rand", "-hex", "24"]))
            .trim()
            .to_string();
        lab.server
            .ip(&["addr", "add", "10.202.0.1/32", "dev", "lo"]);
        let mut conns = String::new();
        for side in [Side::Registered, Side::Unregistered] {
            conns.push_str(&format!(
                "  {label} {{\n    version = 2\n    local_addrs = {SERVER}\n    remote_addrs = {addr}\n    encap = yes\n    \
                 local {{\n      auth = psk\n      id = server\n    }}\n    remote {{\n      auth = psk\n      id = {label}\n    }}\n    \
                 children {{\n      net {{\n        local_ts = 10.202.0.1/32\n        remote_ts = 10.202.0.{host}/32\n        \
                 esp_proposals = aes256-sha256\n      }}\n    }}\n  }}\n",
                label = side.label(),
                addr = side.addr(),
                host = side.host()
            ));
        }
        let conf = format!(
            "connections {{\n{conns}}}\nsecrets {{\n  ike-e2e {{\n    id-1 = server\n    id-2 = registered\n    \
             id-3 = unregistered\n    secret = 0x{}\n  }}\n}}\n",
            self.psk
        );
        self.start_charon(&lab.server, dir, "server", &conf);
    }

    fn start_client(&mut self, lab: &GatewayLab, dir: &Path, side: Side) {
        let ns = side.ns(lab);
        let host = side.host();
        ns.ip(&["addr", "add", &format!("10.202.0.{host}/32"), "dev", "lo"]);
        let label = side.label();
        let conf = format!(
            "connections {{\n  e2e {{\n    version = 2\n    local_addrs = {addr}\n    remote_addrs = {SERVER}\n    encap = yes\n    \
             local {{\n      auth = psk\n      id = {label}\n    }}\n    remote {{\n      auth = psk\n      id = server\n    }}\n    \
             children {{\n      net {{\n        local_ts = 10.202.0.{host}/32\n        remote_ts = 10.202.0.1/32\n        \
             esp_proposals = aes256-sha256\n      }}\n    }}\n  }}\n}}\nsecrets {{\n  ike-e2e {{\n    id-1 = server\n    \
             id-2 = {label}\n    secret = 0x{}\n  }}\n}}\n",
            self.psk,
            addr = side.addr()
        );
        self.start_charon(ns, dir, label, &conf);
        let mut initiate = Command::new("swanctl");
        initiate
            .env("STRONGSWAN_CONF", Self::conf(dir, label))
            .args(["--initiate", "--child", "net", "--timeout", "25", "--uri"])
            .arg(format!("unix://{}", Self::vici(dir, label).display()));
        self.procs
            .add(format!("initiate-{label}"), Process::spawn(initiate));
    }

    fn is_up(&self, _lab: &GatewayLab, side: Side) -> bool {
        self.procs
            .get(&format!("initiate-{}", side.label()))
            .exit_status()
            .is_some_and(|s| s.success())
    }

    fn ping(&self, _lab: &GatewayLab, side: Side) -> Option<Ping> {
        Some(Ping {
            src: Some(format!("10.202.0.{}", side.host())),
            dst: "10.202.0.1".into(),
        })
    }

    fn procs(&self) -> &Procs {
        &self.procs
    }
}

// ----------------------------------------------------------------------------- PPTP

/// pptpd (server) and pptp-linux (client). The TCP 1723 control connection and the outgoing
/// call complete; the PPP session cannot (this kernel has no PPP), so there is no ping. The
/// server's pppd is a stand-in that holds the call open (`tests/e2e/pppd-standin` says why);
/// the client's is the real one, which pptp starts once the server has accepted the call.
#[derive(Default)]
struct Pptp {
    procs: Procs,
}

impl Vpn for Pptp {
    fn name(&self) -> &'static str {
        "pptp"
    }

    fn protocol(&self) -> &'static str {
        "pptp"
    }

    fn up_means(&self) -> &'static str {
        "control connection and outgoing call established: the client started pppd"
    }

    fn start_server(&mut self, lab: &GatewayLab, dir: &Path) {
        let options = dir.join("pptpd-options");
        write_file(
            &options,
            "name vf-e2e-pptpd\nrefuse-pap\nrefuse-chap\nrefuse-mschap\nrequire-mschap-v2\nnodefaultroute\nnoipx\nnobsdcomp\n",
        );
        let conf = dir.join("pptpd.conf");
        write_file(
            &conf,
            &format!(
                "option {}\nppp {}\nlocalip 10.203.0.1\nremoteip 10.203.0.2-10\nlisten {SERVER}\n",
                options.display(),
                e2e_file("pppd-standin").display()
            ),
        );
        let cmd = with_private_run(
            &lab.server,
            &format!(
                "pptpd --fg -c {} -o {} -p {}",
                conf.display(),
                options.display(),
                dir.join("pptpd.pid").display()
            ),
        );
        self.procs.add("pptpd", Process::spawn(cmd));
        let ok = wait_until(Duration::from_secs(10), || {
            listening(&lab.server, "-tln", 1723)
        });
        assert!(
            ok.is_some(),
            "pptpd is not listening\n{}",
            self.procs.logs()
        );
    }

    fn start_client(&mut self, lab: &GatewayLab, _dir: &Path, side: Side) {
        // pptp's call manager binds a socket named after the server under /run/pptp: a
        // private /run per client. pptp starts pppd only once the call is connected.
        let cmd = with_private_run(
            side.ns(lab),
            &format!("pptp {SERVER} --nohostroute --loglevel 2 nodetach noauth"),
        );
        self.procs.add(side.label(), Process::spawn(cmd));
    }

    fn is_up(&self, _lab: &GatewayLab, side: Side) -> bool {
        // pppd's first words: without /dev/ppp (this kernel) it says so; with PPP it names
        // its interface.
        ["/dev/ppp", "Using interface ppp", "Connect: ppp"]
            .iter()
            .any(|m| self.procs.said(side.label(), m))
    }

    fn ping(&self, _lab: &GatewayLab, _side: Side) -> Option<Ping> {
        None
    }

    fn procs(&self) -> &Procs {
        &self.procs
    }
}

// ----------------------------------------------------------------------------- OpenConnect

/// ocserv (server) and openconnect (client, AnyConnect protocol): TLS (CSTP) on TCP 443, then
/// the DTLS channel on UDP 443, which is what the filter judges. Tunnel 10.205.0.0/24.
#[derive(Default)]
struct OpenConnect {
    procs: Procs,
    ca: PathBuf,
    password_file: PathBuf,
    dir: PathBuf,
}

impl OpenConnect {
    fn addr_file(&self, side: Side) -> PathBuf {
        self.dir.join(format!("oc-{}.addr", side.label()))
    }
}

impl Vpn for OpenConnect {
    fn name(&self) -> &'static str {
        "openconnect-dtls"
    }

    fn protocol(&self) -> &'static str {
        "openconnect_dtls"
    }

    fn up_means(&self) -> &'static str {
        "client log: Established DTLS connection"
    }

    fn start_server(&mut self, lab: &GatewayLab, dir: &Path) {
        let pki = Pki::generate(dir);
        self.dir = dir.to_path_buf();
        self.ca = pki.ca.clone();
        let password = run_ok(Command::new("openssl").args(["rand", "-hex", "12"]))
            .trim()
            .to_string();
        self.password_file = dir.join("oc-password");
        write_secret(&self.password_file, &format!("{password}\n"));
        let hash = run_ok(Command::new("openssl").args(["passwd", "-6", &password]));
        let passwd = dir.join("ocpasswd");
        write_file(&passwd, &format!("e2e:*:{}\n", hash.trim()));
        let conf = dir.join("ocserv.conf");
        write_file(
            &conf,
            &format!(
                "auth = \"plain[passwd={passwd}]\"\nlisten-host = {SERVER}\ntcp-port = 443\nudp-port = 443\n\
                 run-as-user = nobody\nrun-as-group = nogroup\nsocket-file = {dir}/ocserv.sock\npid-file = {dir}/ocserv.pid\n\
                 server-cert = {cert}\nserver-key = {key}\nisolate-workers = false\nuse-occtl = false\nmax-clients = 4\n\
                 max-same-clients = 4\nkeepalive = 32400\ndpd = 90\nmobile-dpd = 1800\nswitch-to-tcp-timeout = 25\n\
                 try-mtu-discovery = false\ntls-priorities = \"NORMAL:%SERVER_PRECEDENCE\"\nauth-timeout = 240\n\
                 min-reauth-time = 3\ncookie-timeout = 300\ndeny-roaming = false\nrekey-time = 172800\nrekey-method = ssl\n\
                 device = vpns\npredictable-ips = true\nipv4-network = 10.205.0.0\nipv4-netmask = 255.255.255.0\n\
                 route = 10.205.0.0/255.255.255.0\n",
                passwd = passwd.display(),
                dir = dir.display(),
                cert = pki.server_crt.display(),
                key = pki.server_key.display()
            ),
        );
        let mut cmd = lab.server.command("ocserv");
        cmd.args(["--foreground", "-c"]).arg(&conf);
        self.procs.add("ocserv", Process::spawn(cmd));
        let ok = wait_until(Duration::from_secs(10), || {
            listening(&lab.server, "-tln", 443) && listening(&lab.server, "-uln", 443)
        });
        assert!(
            ok.is_some(),
            "ocserv is not listening\n{}",
            self.procs.logs()
        );
    }

    fn start_client(&mut self, lab: &GatewayLab, _dir: &Path, side: Side) {
        let script = e2e_file("vpnc-script");
        let mut cmd = side.ns(lab).command("sh");
        cmd.args([
            "-c",
            &format!(
                "exec openconnect --protocol=anyconnect --user=e2e --passwd-on-stdin --non-inter \
                 --cafile {} --script {} https://{SERVER}/ < {}",
                self.ca.display(),
                script.display(),
                self.password_file.display()
            ),
        ])
        .env("VF_ADDR_FILE", self.addr_file(side));
        self.procs.add(side.label(), Process::spawn(cmd));
    }

    fn is_up(&self, _lab: &GatewayLab, side: Side) -> bool {
        self.procs.said(side.label(), "Established DTLS connection")
    }

    fn ping(&self, lab: &GatewayLab, side: Side) -> Option<Ping> {
        // The server's end of this client's tunnel: the local address of the vpns device
        // whose peer is the address the client was given.
        let Ok(client) = std::fs::read_to_string(self.addr_file(side)) else {
            // No tunnel at all: aim at the pool's first address, which cannot answer.
            return Some(Ping {
                src: None,
                dst: "10.205.0.1".into(),
            });
        };
        let client = client.trim();
        let addrs = lab.server.ip(&["-4", "-o", "addr", "show"]);
        let local = addrs
            .lines()
            .find(|l| l.contains(&format!("peer {client}/")))
            .and_then(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                w.iter()
                    .position(|t| *t == "inet")
                    .and_then(|i| w.get(i + 1))
                    .map(|a| a.to_string())
            })
            .unwrap_or_else(|| panic!("no server tunnel device with peer {client} in:\n{addrs}"));
        Some(Ping {
            src: None,
            dst: local,
        })
    }

    fn procs(&self) -> &Procs {
        &self.procs
    }

    fn enforce_args(&self) -> &'static [&'static str] {
        &["--policy", "fallback=enforce"]
    }

    fn blocked_note(&self, side: Side) -> String {
        if self.procs.said(side.label(), "CSTP connected") {
            "; its TLS (CSTP) channel came up, then was closed with the pair (fallback)".into()
        } else {
            String::new()
        }
    }
}

// ----------------------------------------------------------------------------- L2TP

/// xl2tpd as LNS (server) and as LAC (client, autodial). The L2TPv2 control connection on
/// UDP 1701 comes up; the PPP session then fails (no PPP in this kernel), so there is no ping.
#[derive(Default)]
struct L2tp {
    procs: Procs,
}

impl L2tp {
    fn start_xl2tpd(&mut self, ns: &NetNs, dir: &Path, label: &str, conf: &str) {
        let conf_file = dir.join(format!("xl2tpd-{label}.conf"));
        write_file(&conf_file, conf);
        let secrets = dir.join("l2tp-secrets");
        write_secret(&secrets, "");
        // Its pid file and control pipe go to a private /run.
        let cmd = with_private_run(
            ns,
            &format!(
                "xl2tpd -D -c {} -s {} -p /run/xl2tpd.pid -C /run/xl2tpd.control",
                conf_file.display(),
                secrets.display()
            ),
        );
        self.procs.add(label, Process::spawn(cmd));
    }

    fn ppp_options(dir: &Path) -> PathBuf {
        let f = dir.join("l2tp-ppp-options");
        write_file(&f, "noauth\nnodefaultroute\n");
        f
    }
}

impl Vpn for L2tp {
    fn name(&self) -> &'static str {
        "l2tp"
    }

    fn protocol(&self) -> &'static str {
        "l2tp"
    }

    fn up_means(&self) -> &'static str {
        "xl2tpd (LAC): Connection established, i.e. the L2TP control connection is up"
    }

    fn start_server(&mut self, lab: &GatewayLab, dir: &Path) {
        let conf = format!(
            "[global]\nlisten-addr = {SERVER}\nport = 1701\n[lns default]\nip range = 10.204.0.2-10.204.0.10\n\
             local ip = 10.204.0.1\nrequire authentication = no\nname = e2e-lns\npppoptfile = {}\nlength bit = yes\n",
            Self::ppp_options(dir).display()
        );
        self.start_xl2tpd(&lab.server, dir, "lns", &conf);
        let ok = wait_until(Duration::from_secs(10), || {
            listening(&lab.server, "-uln", 1701)
        });
        assert!(
            ok.is_some(),
            "xl2tpd (LNS) is not listening\n{}",
            self.procs.logs()
        );
    }

    fn start_client(&mut self, lab: &GatewayLab, dir: &Path, side: Side) {
        let conf = format!(
            "[global]\nlisten-addr = {}\nport = 1701\n[lac e2e]\nlns = {SERVER}\nautodial = yes\nredial = no\n\
             require authentication = no\nname = e2e-lac\npppoptfile = {}\nlength bit = yes\n",
            side.addr(),
            Self::ppp_options(dir).display()
        );
        self.start_xl2tpd(side.ns(lab), dir, side.label(), &conf);
    }

    fn is_up(&self, _lab: &GatewayLab, side: Side) -> bool {
        self.procs
            .said(side.label(), &format!("Connection established to {SERVER}"))
    }

    fn ping(&self, _lab: &GatewayLab, _side: Side) -> Option<Ping> {
        None
    }

    fn procs(&self) -> &Procs {
        &self.procs
    }
}

// ----------------------------------------------------------------------------- Shadowsocks

/// shadowsocks-libev with an AEAD cipher: ss-server (TCP and UDP relay) in the server
/// namespace; in a client namespace ss-local (SOCKS5 on 127.0.0.1, TCP) and ss-tunnel (UDP
/// only, a local port forwarded to the server's UDP echo). There is no wire signature: every
/// byte is salt or ciphertext, which the `fully_encrypted` heuristic judges (monitor by
/// default). There is no tunnel interface either, so "up" is traffic through the relay: an
/// HTTP GET through the SOCKS5 proxy (curl --socks5-hostname) to the server's HTTP server and
/// a datagram through ss-tunnel that the server's UDP echo returns. Over IPv4 or IPv6 (the
/// relay's own connections; the HTTP server and the echo behind ss-server are on the server's
/// IPv4 address, which the filter never sees).
#[derive(Default)]
struct Shadowsocks {
    ipv6: bool,
    procs: Procs,
    config: Option<PathBuf>,
    http: Option<HttpServer>,
    echo: Option<UdpEcho>,
}

const SS_METHOD: &str = "chacha20-ietf-poly1305";
const SS_PORT: u16 = 8388;
/// ss-local's SOCKS5 port and ss-tunnel's UDP port, on 127.0.0.1 of each client namespace.
const SS_SOCKS_PORT: u16 = 1080;
const SS_TUNNEL_PORT: u16 = 5300;
/// The HTTP server and the UDP echo behind ss-server, in the server namespace.
const SS_HTTP_PORT: u16 = 8080;
const SS_ECHO_PORT: u16 = 7007;

impl Shadowsocks {
    fn ipv6() -> Shadowsocks {
        Shadowsocks {
            ipv6: true,
            ..Shadowsocks::default()
        }
    }

    /// An HTTP GET through the client's SOCKS5 proxy returns the page.
    fn tcp_works(&self, lab: &GatewayLab, side: Side) -> bool {
        let out = side.ns(lab).exec(
            "curl",
            &[
                "-sS",
                "--max-time",
                "2",
                "--socks5-hostname",
                &format!("127.0.0.1:{SS_SOCKS_PORT}"),
                &format!("http://{SERVER}:{SS_HTTP_PORT}/"),
            ],
        );
        out.status.success() && out.stdout == HTTP_BODY.as_bytes()
    }

    /// A datagram sent to the client's ss-tunnel comes back from the server's echo within a
    /// second. A fresh socket each time: ss-tunnel relays it from a fresh socket too, so the
    /// filter sees a new flow.
    fn udp_works(&self, lab: &GatewayLab, side: Side) -> bool {
        let sock = side.ns(lab).enter(|| {
            std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a UDP socket on 127.0.0.1")
        });
        sock.set_read_timeout(Some(Duration::from_secs(1)))
            .expect("read timeout");
        let payload = format!(
            "vpn-filter e2e: UDP through Shadowsocks from the {} client",
            side.label()
        );
        if sock
            .send_to(payload.as_bytes(), ("127.0.0.1", SS_TUNNEL_PORT))
            .is_err()
        {
            return false;
        }
        let mut buf = [0u8; 512];
        matches!(sock.recv_from(&mut buf), Ok((n, _)) if buf[..n] == *payload.as_bytes())
    }
}

impl Vpn for Shadowsocks {
    fn name(&self) -> &'static str {
        if self.ipv6 {
            "shadowsocks-ipv6"
        } else {
            "shadowsocks"
        }
    }

    fn client_addr(&self, side: Side) -> &'static str {
        match (self.ipv6, side) {
            (false, _) => side.addr(),
            (true, Side::Registered) => REGISTERED6,
            (true, Side::Unregistered) => UNREGISTERED6,
        }
    }

    fn server_addr(&self) -> &'static str {
        if self.ipv6 {
            SERVER6
        } else {
            SERVER
        }
    }

    fn protocol(&self) -> &'static str {
        "fully_encrypted"
    }

    fn up_means(&self) -> &'static str {
        "an HTTP GET through ss-local's SOCKS5 proxy and a UDP datagram through ss-tunnel, both answered through ss-server"
    }

    fn start_server(&mut self, lab: &GatewayLab, dir: &Path) {
        if self.ipv6 {
            lab.add_ipv6();
        }
        let mut raw = [0u8; 18];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut raw))
            .expect("random bytes for the password");
        let password: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        // The password in a file readable by root only, not on any command line.
        let config = dir.join("shadowsocks.json");
        write_secret(
            &config,
            &serde_json::json!({
                "server": self.server_addr(),
                "server_port": SS_PORT,
                "password": password,
                "method": SS_METHOD,
                "timeout": 60,
            })
            .to_string(),
        );
        self.http = Some(HttpServer::start(
            &lab.server,
            &format!("{SERVER}:{SS_HTTP_PORT}"),
        ));
        self.echo = Some(UdpEcho::start(
            &lab.server,
            &format!("{SERVER}:{SS_ECHO_PORT}"),
        ));
        let mut cmd = lab.server.command("ss-server");
        cmd.arg("-c").arg(&config).args(["-u", "-v"]);
        self.procs.add("ss-server", Process::spawn(cmd));
        self.config = Some(config);
        let ready = wait_until(Duration::from_secs(10), || {
            listening(&lab.server, "-tln", SS_PORT) && listening(&lab.server, "-uln", SS_PORT)
        });
        assert!(
            ready.is_some(),
            "ss-server is not listening on TCP and UDP {SS_PORT}\n{}",
            self.procs.logs()
        );
    }

    fn start_client(&mut self, lab: &GatewayLab, _dir: &Path, side: Side) {
        let config = self.config.clone().expect("server started first");
        let ns = side.ns(lab);
        let mut local = ns.command("ss-local");
        local.arg("-c").arg(&config).args([
            "-b",
            "127.0.0.1",
            "-l",
            &SS_SOCKS_PORT.to_string(),
            "-v",
        ]);
        self.procs
            .add(format!("ss-local-{}", side.label()), Process::spawn(local));
        let mut tunnel = ns.command("ss-tunnel");
        tunnel
            .arg("-c")
            .arg(&config)
            .args(["-b", "127.0.0.1", "-l", &SS_TUNNEL_PORT.to_string()])
            .args(["-L", &format!("{SERVER}:{SS_ECHO_PORT}"), "-U", "-v"]);
        self.procs.add(
            format!("ss-tunnel-{}", side.label()),
            Process::spawn(tunnel),
        );
        // Listening before "up" or "blocked" is judged: a client that never started must not
        // pass for a blocked one.
        let ready = wait_until(Duration::from_secs(10), || {
            listening(ns, "-tln", SS_SOCKS_PORT) && listening(ns, "-uln", SS_TUNNEL_PORT)
        });
        assert!(
            ready.is_some(),
            "the {} client's ss-local (TCP {SS_SOCKS_PORT}) or ss-tunnel (UDP {SS_TUNNEL_PORT}) is not listening\n{}",
            side.label(),
            self.procs.logs()
        );
    }

    fn is_up(&self, lab: &GatewayLab, side: Side) -> bool {
        self.tcp_works(lab, side) && self.udp_works(lab, side)
    }

    fn gets_anything_through(&self, lab: &GatewayLab, side: Side) -> bool {
        self.tcp_works(lab, side) || self.udp_works(lab, side)
    }

    /// The fully-encrypted rule exempts a random first payload whose first six bytes are
    /// printable, one in 390 (README): each fresh connection of the unregistered client
    /// passes with that chance, and over the window's ~3 attempts one such pass came in
    /// about one run in a hundred. One pass is tolerated; two (about 1 in 50,000 runs
    /// by chance) fail, and so does a window in which no attempt was blocked.
    fn tolerated_passes(&self) -> u32 {
        1
    }

    fn ping(&self, _lab: &GatewayLab, _side: Side) -> Option<Ping> {
        None
    }

    fn default_mode(&self) -> &'static str {
        "monitor"
    }

    fn without_ping(&self) -> &'static str {
        "HTTP over TCP and a UDP echo through the relay"
    }

    fn procs(&self) -> &Procs {
        &self.procs
    }
}

// ----------------------------------------------------------------------------- the tests

macro_rules! vpn_tests {
    ($($module:ident => $make:expr;)*) => {$(
        mod $module {
            use super::*;

            #[test]
            fn tunnel_comes_up_only_from_the_registered_client() {
                only_the_registered_client_gets_through($make);
            }

            #[test]
            fn both_tunnels_come_up_when_the_server_is_registered() {
                both_get_through_when_the_server_is_registered($make);
            }

            #[test]
            fn unregistered_tunnel_comes_up_and_is_reported_in_monitor_mode() {
                monitor_mode_reports_but_lets_through($make);
            }
        }
    )*};
}

/// The same three for a protocol monitored by default (a heuristic), adapted: reported
/// under the default policy, blocked under `--policy <protocol>=enforce`, untouched when the
/// server is registered.
macro_rules! heuristic_vpn_tests {
    ($($module:ident => $make:expr;)*) => {$(
        mod $module {
            use super::*;

            #[test]
            fn unregistered_tunnel_works_and_is_reported_under_the_default_policy() {
                let vpn = $make;
                let mode = vpn.default_mode();
                reported_but_let_through(vpn, &[], mode);
            }

            #[test]
            fn enforce_blocks_only_the_unregistered_client() {
                let vpn = $make;
                let policy = format!("{}=enforce", vpn.protocol());
                blocked_unless_registered(vpn, &["--policy", &policy], &policy);
            }

            #[test]
            fn both_tunnels_work_when_the_server_is_registered() {
                both_get_through_when_the_server_is_registered($make);
            }
        }
    )*};
}

vpn_tests! {
    openvpn_udp_tls_auth => OpenVpn::new(Transport::Udp, Wrap::TlsAuth);
    openvpn_udp_tls_crypt => OpenVpn::new(Transport::Udp, Wrap::TlsCrypt);
    openvpn_tcp_tls_auth => OpenVpn::new(Transport::Tcp, Wrap::TlsAuth);
    openvpn_tcp_tls_crypt => OpenVpn::new(Transport::Tcp, Wrap::TlsCrypt);
    openvpn_udp_tls_crypt_v2 => OpenVpn::new(Transport::Udp, Wrap::TlsCryptV2);
    wireguard => WireGuard::default();
    ikev2_psk => Ikev2::default();
    pptp => Pptp::default();
    openconnect_dtls => OpenConnect::default();
    l2tp => L2tp::default();
}

heuristic_vpn_tests! {
    shadowsocks => Shadowsocks::default();
    shadowsocks_ipv6 => Shadowsocks::ipv6();
}

// ----------------------------------------------------------------------------- ordinary traffic

/// A tiny HTTP/1.0 server on a thread, its socket in the server namespace.
struct HttpServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

const HTTP_BODY: &str = "vpn-filter e2e: ordinary HTTP\n";

impl HttpServer {
    fn start(ns: &NetNs, addr: &str) -> HttpServer {
        let listener = ns.enter(|| {
            TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr} in {}: {e}", ns.name()))
        });
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut req = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                            match std::io::Read::read(&mut conn, &mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => req.extend_from_slice(&buf[..n]),
                            }
                        }
                        let _ = write!(
                            conn,
                            "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{HTTP_BODY}",
                            HTTP_BODY.len()
                        );
                        let _ = conn.shutdown(Shutdown::Write);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        HttpServer {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A UDP echo server on a thread, its socket in the server namespace.
struct UdpEcho {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpEcho {
    fn start(ns: &NetNs, addr: &str) -> UdpEcho {
        let sock = ns.enter(|| {
            std::net::UdpSocket::bind(addr)
                .unwrap_or_else(|e| panic!("bind UDP {addr} in {}: {e}", ns.name()))
        });
        // Wakes the loop to see the stop flag.
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !flag.load(Ordering::SeqCst) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
        });
        UdpEcho {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs a client command in `ns`; panics with its output unless it succeeds.
fn client_ok(ns: &NetNs, what: &str, program: &str, args: &[&str]) -> String {
    let out = ns.exec(program, args);
    assert!(
        out.status.success(),
        "{what} from {} failed ({}): {}{}",
        ns.name(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Bytes an iperf3 client run moved (its JSON report's end.sum_received / end.sum).
fn iperf3_bytes(json: &str) -> u64 {
    let v: Value = serde_json::from_str(json)
        .unwrap_or_else(|e| panic!("iperf3 -J output is not JSON ({e}): {json}"));
    let end = &v["end"];
    end["sum_received"]["bytes"]
        .as_u64()
        .or_else(|| end["sum"]["bytes"].as_u64())
        .unwrap_or_else(|| panic!("no byte count in iperf3's report: {end}"))
}

#[test]
fn ordinary_http_dns_tls_and_iperf3_traffic_passes_for_both_clients_with_no_drops() {
    let env = Env::new(&[REGISTERED], &[]);
    let dir = env.dir.path();
    let server = &env.lab.server;
    let pki = Pki::generate(dir);
    let mut procs = Procs::default();

    let _http = HttpServer::start(server, &format!("{SERVER}:80"));
    // dnsmasq writes its pid file under /run: a private one.
    let dns = with_private_run(
        server,
        &format!(
            "dnsmasq --keep-in-foreground --no-resolv --no-hosts --bind-interfaces --user=root \
             --listen-address={SERVER} --address=/svc.e2e.test/{SERVER}"
        ),
    );
    procs.add("dnsmasq", Process::spawn(dns));
    let mut tls = server.command("openssl");
    tls.args(["s_server", "-quiet", "-www", "-accept"])
        .arg(format!("{SERVER}:443"))
        .arg("-cert")
        .arg(&pki.server_crt)
        .arg("-key")
        .arg(&pki.server_key);
    procs.add("openssl-s_server", Process::spawn(tls));
    let mut iperf = server.command("iperf3");
    iperf.args(["-s", "-B", SERVER, "-p", "5201"]);
    procs.add("iperf3-server", Process::spawn(iperf));
    let ready = wait_until(Duration::from_secs(10), || {
        listening(server, "-uln", 53)
            && listening(server, "-tln", 443)
            && listening(server, "-tln", 5201)
    });
    assert!(ready.is_some(), "servers did not start\n{}", procs.logs());

    let mut rows = Vec::new();
    for side in [Side::Registered, Side::Unregistered] {
        let ns = side.ns(&env.lab);
        let body = client_ok(
            ns,
            "HTTP GET",
            "curl",
            &["-sS", "--max-time", "10", &format!("http://{SERVER}/")],
        );
        assert_eq!(
            body,
            HTTP_BODY,
            "HTTP body from the {} client",
            side.label()
        );
        let answer = client_ok(
            ns,
            "DNS query",
            "dig",
            &[
                "+short",
                "+time=2",
                "+tries=3",
                &format!("@{SERVER}"),
                "svc.e2e.test",
                "A",
            ],
        );
        assert_eq!(
            answer.trim(),
            SERVER,
            "DNS answer for the {} client",
            side.label()
        );
        let page = client_ok(
            ns,
            "HTTPS GET (TLS)",
            "curl",
            &[
                "-sS",
                "--max-time",
                "10",
                "--cacert",
                path_str(&pki.ca),
                &format!("https://{SERVER}/"),
            ],
        );
        assert!(
            page.contains("Cipher") || page.contains("TLS"),
            "openssl s_server's status page over TLS for the {} client, got: {page}",
            side.label()
        );
        let tcp = iperf3_bytes(&client_ok(
            ns,
            "iperf3 TCP",
            "iperf3",
            &["-c", SERVER, "-p", "5201", "-t", "2", "-J"],
        ));
        let udp = iperf3_bytes(&client_ok(
            ns,
            "iperf3 UDP",
            "iperf3",
            &[
                "-c", SERVER, "-p", "5201", "-u", "-b", "20M", "-t", "1", "-J",
            ],
        ));
        assert!(
            tcp > 0 && udp > 0,
            "iperf3 moved no data for the {} client",
            side.label()
        );
        rows.push(format!(
            "{}: HTTP ok, DNS ok, TLS ok, iperf3 TCP {:.0} MB in 2 s, UDP {:.1} MB in 1 s",
            side.label(),
            tcp as f64 / 1e6,
            udp as f64 / 1e6
        ));
    }

    let counters = env.fresh_counters();
    assert_eq!(
        dropped_in(&counters),
        0,
        "ordinary traffic was dropped: {counters}"
    );
    // No signature may even report ordinary traffic. The one report allowed is the
    // fully-encrypted heuristic's on iperf3's UDP test (its payload is random bytes, which is
    // what that rule looks for: the reason it is monitored by default), never as a drop.
    let events = env.events();
    let (heuristic, other): (Vec<&Value>, Vec<&Value>) = events.iter().partition(|e| {
        is(e, "fully_encrypted", "monitored") && e["ip_proto"] == 17 && e["dport"] == 5201
    });
    assert!(other.is_empty(), "ordinary traffic was reported: {other:?}");
    summary(&format!(
        "{:<24} registry=client  enforce  {}; drops 0, events {} (fully_encrypted monitored: iperf3's random UDP payload)",
        "ordinary-traffic",
        rows.join("; "),
        heuristic.len()
    ));
}
