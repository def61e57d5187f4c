//! Operations: a filter that survives restarts, upgrades and mistakes.
//!
//! The controller runs as a real process in the lab's filter namespace but in the host's
//! mount namespace (`NetNs::command_keep_mounts`), so it pins into the host's bpffs exactly as
//! on a gateway; each test gets its own pin directory, lock, state directory and control
//! socket, all removed afterwards.

use std::{
    net::UdpSocket,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use vpn_filter_tests::{
    gateway_lab::{controller_path, TempDir},
    lab::{registry_json, sa, FilterLab, FILTER_V4, REGISTERED_V4, UNREGISTERED_V4},
    netns::{udp_bind, BpfFsDir, Process},
    packet::wireguard_initiation,
};

const WG_PORT: u16 = 51820;

/// Per-test places: pins, lock, state, socket, registry.
struct Dirs {
    pins: BpfFsDir,
    tmp: TempDir,
}

impl Dirs {
    fn new() -> Dirs {
        let d = Dirs {
            pins: BpfFsDir::new("ops"),
            tmp: TempDir::new("ops"),
        };
        std::fs::write(
            d.registry(),
            registry_json(1, &[("REG-1", &[REGISTERED_V4])]),
        )
        .unwrap();
        d
    }

    fn pin_root(&self) -> PathBuf {
        self.pins.path().join("vpn-filter")
    }

    fn registry(&self) -> PathBuf {
        self.tmp.path().join("registry.json")
    }

    fn lock(&self) -> PathBuf {
        self.tmp.path().join("controller.lock")
    }

    fn args(&self) -> Vec<String> {
        let p = |p: &Path| p.display().to_string();
        vec![
            "--bpffs-dir".into(),
            p(&self.pin_root()),
            "--lock-file".into(),
            p(&self.lock()),
            "--state-dir".into(),
            p(&self.tmp.path().join("state")),
            "--control-socket".into(),
            p(&self.tmp.path().join("control.sock")),
            "--reattach-interval-ms".into(),
            "300".into(),
        ]
    }
}

fn start(lab: &FilterLab, dirs: &Dirs, extra: &[&str]) -> Process {
    let mut cmd = lab.filter.command_keep_mounts(controller_path());
    cmd.args(["run", "--iface", &lab.filter_if, "--registry"])
        .arg(dirs.registry());
    cmd.args(dirs.args()).args(extra);
    let p = Process::spawn(cmd);
    p.wait_ready(vpn_filter_tests::CONTROLLER_START);
    p
}

fn kill9(p: &Process) {
    p.signal(libc::SIGKILL);
    // A hang guard bounded by polls, not by the clock: SIGKILL is immediate.
    let mut polls = 0;
    while p.exit_status().is_none() {
        polls += 1;
        assert!(
            polls < 6000,
            "controller did not die on SIGKILL (hang guard)"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends WireGuard initiations from the registered and the unregistered address as fast as
/// the loop goes until `stop`; counts what was sent and what arrived from each.
struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<Mutex<(u64, u64)>>,
    got: Arc<Mutex<(u64, u64)>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(lab: &FilterLab) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(Mutex::new((0, 0)));
        let got = Arc::new(Mutex::new((0, 0)));
        let rx: UdpSocket = udp_bind(&lab.filter, sa(FILTER_V4, WG_PORT));
        let reg: UdpSocket = lab
            .client
            .enter(|| UdpSocket::bind(sa(REGISTERED_V4, 0)).unwrap());
        let unreg: UdpSocket = lab
            .client
            .enter(|| UdpSocket::bind(sa(UNREGISTERED_V4, 0)).unwrap());
        let mut threads = Vec::new();
        {
            let (stop, got) = (stop.clone(), got.clone());
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                loop {
                    match rx.recv_from(&mut buf) {
                        Ok((_, from)) => {
                            let mut g = got.lock().unwrap();
                            if from.ip().to_string() == REGISTERED_V4 {
                                g.0 += 1;
                            } else {
                                g.1 += 1;
                            }
                        }
                        Err(_) if stop.load(Ordering::SeqCst) => return,
                        Err(_) => {}
                    }
                }
            }));
        }
        {
            let (stop, sent) = (stop.clone(), sent.clone());
            threads.push(std::thread::spawn(move || {
                let mut i = 0u32;
                while !stop.load(Ordering::SeqCst) {
                    reg.send_to(&wireguard_initiation(i), sa(FILTER_V4, WG_PORT))
                        .unwrap();
                    unreg
                        .send_to(&wireguard_initiation(i + 1), sa(FILTER_V4, WG_PORT))
                        .unwrap();
                    {
                        let mut s = sent.lock().unwrap();
                        s.0 += 1;
                        s.1 += 1;
                    }
                    i = i.wrapping_add(2);
                    std::thread::sleep(Duration::from_micros(500));
                }
            }));
        }
        Traffic {
            stop,
            sent,
            got,
            threads,
        }
    }

    /// Stops, waits for the last datagrams, returns ((reg sent, unreg sent), (reg got, unreg got)).
    fn finish(self) -> ((u64, u64), (u64, u64)) {
        std::thread::sleep(Duration::from_millis(50));
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().unwrap();
        }
        let sent = *self.sent.lock().unwrap();
        let got = *self.got.lock().unwrap();
        (sent, got)
    }
}

#[test]
fn kill_9_leaves_the_filter_enforcing_and_a_restart_adopts_it_without_a_gap() {
    let lab = FilterLab::new();
    let dirs = Dirs::new();
    let first = start(&lab, &dirs, &[]);
    let traffic = Traffic::start(&lab);
    std::thread::sleep(Duration::from_millis(500));
    kill9(&first);
    // No controller now: the pinned link and maps keep enforcing.
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        dirs.pin_root().join("links").join(&lab.filter_if).exists(),
        "link pin survives the controller"
    );
    let second = start(&lab, &dirs, &[]);
    second.wait_stderr("adopted", Duration::from_secs(5));
    second.wait_stderr(
        "replaced the program on its pinned link",
        Duration::from_secs(5),
    );
    std::thread::sleep(Duration::from_millis(500));
    let ((reg_sent, unreg_sent), (reg_got, unreg_got)) = traffic.finish();
    assert!(unreg_sent > 500, "the flood ran: {unreg_sent}");
    assert_eq!(
        unreg_got, 0,
        "no unregistered handshake passes before, during or after the restart"
    );
    assert_eq!(
        reg_got, reg_sent,
        "no registered packet is dropped before, during or after the restart"
    );
    second
        .terminate(Duration::from_secs(5))
        .expect("controller exits on SIGTERM");
}

#[test]
fn a_restarted_controller_swaps_its_program_into_the_same_link() {
    let lab = FilterLab::new();
    let dirs = Dirs::new();
    let first = start(&lab, &dirs, &[]);
    let link_before = vpn_filter::kernel::pin::pinned_link_state(
        &dirs.pin_root().join("links").join(&lab.filter_if),
    )
    .unwrap();
    first.terminate(Duration::from_secs(5)).expect("exit");
    let traffic = Traffic::start(&lab);
    let second = start(&lab, &dirs, &[]);
    let link_after = vpn_filter::kernel::pin::pinned_link_state(
        &dirs.pin_root().join("links").join(&lab.filter_if),
    )
    .unwrap();
    let ((reg_sent, _), (reg_got, unreg_got)) = traffic.finish();
    assert_eq!(
        link_after.link_id, link_before.link_id,
        "the same kernel link object"
    );
    assert_ne!(
        link_after.prog_id, link_before.prog_id,
        "running the new program"
    );
    assert_eq!(
        unreg_got, 0,
        "no packet was judged by 'no program' during the swap"
    );
    assert_eq!(reg_got, reg_sent);
    second.terminate(Duration::from_secs(5)).expect("exit");
}

#[test]
fn a_sigterm_during_start_up_stops_the_controller_cleanly() {
    // Sent as soon as the registry is applied, before any interface is attached: the
    // signal handlers must already be in place (the default action would kill the process).
    let lab = FilterLab::new();
    let dirs = Dirs::new();
    let mut cmd = lab.filter.command_keep_mounts(controller_path());
    cmd.args(["run", "--iface", &lab.filter_if, "--registry"])
        .arg(dirs.registry());
    cmd.args(dirs.args());
    let p = Process::spawn(cmd);
    p.wait_stderr("registry serial 1 applied", Duration::from_secs(20));
    let status = p.terminate(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "a SIGTERM during start-up must end in a clean exit: {status:?}; stderr:\n{}",
        p.stderr_lines().join("\n")
    );
}

#[test]
fn a_second_controller_refuses_with_a_clear_message() {
    let lab = FilterLab::new();
    let dirs = Dirs::new();
    let _first = start(&lab, &dirs, &[]);
    let mut cmd = lab.filter.command_keep_mounts(controller_path());
    cmd.args(["run", "--iface", &lab.filter_if, "--registry"])
        .arg(dirs.registry())
        .args(dirs.args());
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another vpn-filter controller is running"),
        "{err}"
    );
    assert!(
        err.contains(&format!("pid {}", _first.pid())),
        "names the holder: {err}"
    );
}

#[test]
fn detach_removes_links_pins_and_programs() {
    let lab = FilterLab::new();
    let dirs = Dirs::new();
    let ctl = start(&lab, &dirs, &[]);
    let link = vpn_filter::kernel::pin::pinned_link_state(
        &dirs.pin_root().join("links").join(&lab.filter_if),
    )
    .unwrap();
    ctl.terminate(Duration::from_secs(5)).expect("exit");
    assert!(
        lab.xdp_mode_shown().starts_with("xdp"),
        "still attached after the controller exits"
    );

    let out = std::process::Command::new(controller_path())
        .args(["detach", "--bpffs-dir"])
        .arg(dirs.pin_root())
        .arg("--lock-file")
        .arg(dirs.lock())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "detach: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lab.xdp_mode_shown(), "", "no XDP program on the interface");
    assert!(
        !dirs.pin_root().exists(),
        "no pins left under {}",
        dirs.pin_root().display()
    );
    // The kernel's own listing: the program is gone.
    let still: Vec<u32> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.id())
        .filter(|id| *id == link.prog_id)
        .collect();
    assert!(still.is_empty(), "program {} still loaded", link.prog_id);
}

#[test]
fn detach_is_refused_while_a_controller_runs() {
    let lab = FilterLab::new();
    let dirs = Dirs::new();
    let _ctl = start(&lab, &dirs, &[]);
    let out = std::process::Command::new(controller_path())
        .args(["detach", "--bpffs-dir"])
        .arg(dirs.pin_root())
        .arg("--lock-file")
        .arg(dirs.lock())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("stop the running controller first"));
    assert!(lab.xdp_mode_shown().starts_with("xdp"));
}

#[test]
fn an_interface_deleted_and_recreated_gets_the_filter_back() {
    let lab = FilterLab::new();
    let dirs = Dirs::new();
    let ctl = start(&lab, &dirs, &[]);
    // Delete the veth pair and make a new one with the same names and addresses.
    lab.filter.ip(&["link", "del", "dev", &lab.filter_if]);
    ctl.wait_stderr("the interface is gone", Duration::from_secs(5));
    vpn_filter_tests::netns::veth(&lab.client, &lab.client_if, &lab.filter, &lab.filter_if);
    lab.readdress();
    ctl.wait_stderr(
        "the interface came back; filter re-attached",
        Duration::from_secs(5),
    );
    assert!(lab.xdp_mode_shown().starts_with("xdp"));
    let sock = udp_bind(&lab.filter, sa(FILTER_V4, WG_PORT));
    vpn_filter_tests::netns::udp_send(
        &lab.client,
        sa(UNREGISTERED_V4, 40000),
        sa(FILTER_V4, WG_PORT),
        &wireguard_initiation(1),
    );
    vpn_filter_tests::netns::udp_send(
        &lab.client,
        sa(REGISTERED_V4, 40001),
        sa(FILTER_V4, WG_PORT),
        &wireguard_initiation(2),
    );
    let got = vpn_filter_tests::netns::udp_drain(&sock, Duration::from_millis(400));
    assert_eq!(
        got.len(),
        1,
        "only the registered initiation arrives: {got:?}"
    );
    assert_eq!(got[0].0, sa(REGISTERED_V4, 40001));
}

#[test]
fn sighup_with_a_bad_config_keeps_the_old_one_and_a_good_one_applies() {
    let lab = FilterLab::new();
    let dirs = Dirs::new();
    let config = dirs.tmp.path().join("config.toml");
    std::fs::write(&config, "[policy]\nwireguard = \"enforce\"\n").unwrap();
    let ctl = start(&lab, &dirs, &["--config", config.to_str().unwrap()]);
    let sock = udp_bind(&lab.filter, sa(FILTER_V4, WG_PORT));
    let send = |port: u16| {
        vpn_filter_tests::netns::udp_send(
            &lab.client,
            sa(UNREGISTERED_V4, port),
            sa(FILTER_V4, WG_PORT),
            &wireguard_initiation(port as u32),
        );
        vpn_filter_tests::netns::udp_drain(&sock, Duration::from_millis(300)).len()
    };
    assert_eq!(send(41000), 0, "enforced");

    std::fs::write(
        &config,
        "[policy]\nwireguard = \"maybe\"\nflow-entrie = 3\n",
    )
    .unwrap();
    ctl.signal(libc::SIGHUP);
    ctl.wait_stderr("configuration not reloaded", Duration::from_secs(5));
    let err = ctl.stderr_lines().join("\n");
    assert!(
        err.contains("flow-entrie") || err.contains("maybe"),
        "the error names the problem: {err}"
    );
    assert_eq!(send(41001), 0, "the old policy stays in force");

    std::fs::write(&config, "[policy]\nwireguard = \"monitor\"\n").unwrap();
    ctl.signal(libc::SIGHUP);
    ctl.wait_stderr("configuration reloaded", Duration::from_secs(5));
    assert_eq!(send(41002), 1, "monitor: the initiation passes");
    // Decided by the event arriving; the bound on polls is only a hang guard (events are
    // delivered within a second on an idle machine, later under load).
    let mut polls = 0;
    while !ctl
        .stdout_lines()
        .iter()
        .any(|l| l.contains("\"monitored\""))
    {
        polls += 1;
        assert!(polls < 1200, "no monitored event was emitted (hang guard)");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_controller_keeps_only_cap_bpf_net_admin_and_perfmon() {
    let lab = FilterLab::new();
    let dirs = Dirs::new();
    let ctl = start(&lab, &dirs, &["--run-as", "nobody"]);
    ctl.wait_stderr("privileges dropped", Duration::from_secs(5));
    let status = std::fs::read_to_string(format!("/proc/{}/status", ctl.pid())).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("{name} missing from /proc status"))
    };
    // CAP_NET_ADMIN = 12, CAP_PERFMON = 38, CAP_BPF = 39.
    let want = (1u64 << 12) | (1 << 38) | (1 << 39);
    assert_eq!(u64::from_str_radix(&field("CapEff:"), 16).unwrap(), want);
    assert_eq!(u64::from_str_radix(&field("CapPrm:"), 16).unwrap(), want);
    let uid: u32 = field("Uid:")
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(uid, 0, "no longer root");
    // It still does its job: a registry change is applied to the kernel map.
    std::fs::write(
        dirs.registry(),
        registry_json(
            2,
            &[("REG-1", &[REGISTERED_V4]), ("REG-2", &[UNREGISTERED_V4])],
        ),
    )
    .unwrap();
    ctl.wait_stderr("serial 2", Duration::from_secs(5));
    let sock = udp_bind(&lab.filter, sa(FILTER_V4, WG_PORT));
    vpn_filter_tests::netns::udp_send(
        &lab.client,
        sa(UNREGISTERED_V4, 40002),
        sa(FILTER_V4, WG_PORT),
        &wireguard_initiation(5),
    );
    assert_eq!(
        vpn_filter_tests::netns::udp_drain(&sock, Duration::from_millis(400)).len(),
        1,
        "now registered"
    );
}

/// Each thread of `pid`: its name and its effective and permitted capability sets, from
/// `/proc/PID/task/*/status`.
fn thread_capabilities(pid: u32) -> Vec<(String, u64, u64)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the controller's threads");
    tasks
        .map(|t| {
            let status = std::fs::read_to_string(t.unwrap().path().join("status"))
                .expect("a thread's status");
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_string())
                    .unwrap_or_else(|| panic!("{name} missing from a thread's status"))
            };
            let caps = |name: &str| u64::from_str_radix(&field(name), 16).unwrap();
            (field("Name:"), caps("CapEff:"), caps("CapPrm:"))
        })
        .collect()
}

/// Starts the controller with `extra` arguments and checks that every one of its threads
/// (the tokio workers that parse HTTP, control-socket and metrics requests included) holds
/// only CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON, effective and permitted.
fn every_thread_keeps_only_the_kept_capabilities(extra: &[&str]) {
    let lab = FilterLab::new();
    let dirs = Dirs::new();
    let metrics = "127.0.0.1:0";
    let mut args = vec!["--metrics", metrics];
    args.extend_from_slice(extra);
    let ctl = start(&lab, &dirs, &args);
    ctl.wait_stderr("privileges dropped", Duration::from_secs(5));
    // CAP_NET_ADMIN = 12, CAP_PERFMON = 38, CAP_BPF = 39.
    let want = (1u64 << 12) | (1 << 38) | (1 << 39);
    let threads = thread_capabilities(ctl.pid());
    assert!(
        threads.len() > 1,
        "the runtime's worker threads are running: {threads:?}"
    );
    let wrong: Vec<String> = threads
        .iter()
        .filter(|(_, eff, prm)| (*eff, *prm) != (want, want))
        .map(|(name, eff, prm)| format!("{name}: CapEff {eff:016x} CapPrm {prm:016x}"))
        .collect();
    assert!(
        wrong.is_empty(),
        "threads holding other capabilities than {want:016x}:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn every_thread_keeps_only_cap_bpf_net_admin_and_perfmon_as_root() {
    every_thread_keeps_only_the_kept_capabilities(&[]);
}

#[test]
fn every_thread_keeps_only_cap_bpf_net_admin_and_perfmon_with_run_as() {
    every_thread_keeps_only_the_kept_capabilities(&["--run-as", "nobody"]);
}

#[test]
fn detaching_the_last_interface_removes_the_pins() {
    let lab = FilterLab::new();
    let dirs = Dirs::new();
    let ctl = start(&lab, &dirs, &[]);
    ctl.terminate(Duration::from_secs(5)).expect("exit");
    assert!(dirs.pin_root().exists(), "the pins outlive the controller");

    let out = std::process::Command::new(controller_path())
        .args(["detach", "--iface", &lab.filter_if, "--bpffs-dir"])
        .arg(dirs.pin_root())
        .arg("--lock-file")
        .arg(dirs.lock())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "detach: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lab.xdp_mode_shown(), "", "no XDP program on the interface");
    let left: Vec<String> = walk(&dirs.pin_root());
    assert!(
        !dirs.pin_root().exists(),
        "no pins left under {} after detaching its last interface: {left:?}",
        dirs.pin_root().display()
    );
}

/// Every path under `dir` (empty if it does not exist).
fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.map_while(Result::ok) {
            out.push(e.path().display().to_string());
            out.extend(walk(&e.path()));
        }
    }
    out
}

/// Index of the first stderr line that contains `needle`, if any.
fn line_index(lines: &[String], needle: &str) -> Option<usize> {
    lines.iter().position(|l| l.contains(needle))
}

#[test]
fn status_and_sigterm_are_answered_while_a_million_prefix_sync_runs() {
    let lab = FilterLab::new();
    let dirs = Dirs::new();
    let ctl = start(&lab, &dirs, &["--registry-poll-ms", "100"]);
    let after_ready = ctl.stderr_lines().len();
    // Serial 2 adds a million host prefixes: seconds of kernel writes, long enough to ask
    // the controller something in the middle. Published by rename, as documented.
    const BULK: u32 = 1_000_000;
    let base = u32::from_be_bytes([100, 64, 0, 0]);
    let bulk: Vec<String> = (0..BULK)
        .map(|i| format!("{}/32", std::net::Ipv4Addr::from(base + i)))
        .collect();
    let bulk: Vec<&str> = bulk.iter().map(String::as_str).collect();
    let feed = registry_json(2, &[("REG-1", &[REGISTERED_V4]), ("BULK", &bulk)]);
    let tmp = dirs.tmp.path().join("registry.json.tmp");
    std::fs::write(&tmp, feed).unwrap();
    std::fs::rename(&tmp, dirs.registry()).unwrap();

    // The sync's kernel writes have begun (parsing and checks are behind it).
    let started = ctl.wait_stderr_from(
        after_ready,
        "registry sync started",
        Duration::from_secs(120),
    );
    // `status` answers, and what it reports is still serial 1: the answer was made before
    // the sync of serial 2 was done.
    let out = std::process::Command::new(controller_path())
        .args(["status", "--json", "--control-socket"])
        .arg(dirs.tmp.path().join("control.sock"))
        .output()
        .expect("run vpn-filter status");
    assert!(
        out.status.success(),
        "status during the sync: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(
        status["registry"]["serial"], 1,
        "the feed in force while serial 2 is written"
    );
    // Then SIGTERM, still during the sync: acknowledged before the sync's completion line
    // (so the status answer, which came before the signal was sent, was too).
    let code = ctl
        .terminate(Duration::from_secs(120))
        .expect("the controller exits after SIGTERM");
    assert!(code.success(), "exit status {code}");
    let lines = ctl.stderr_lines();
    let all = lines.join("\n");
    let applied = line_index(&lines, "registry serial 2 applied")
        .unwrap_or_else(|| panic!("the sync finishes before the exit; stderr:\n{all}"));
    let term = line_index(&lines, "SIGTERM: exiting")
        .unwrap_or_else(|| panic!("SIGTERM acknowledged; stderr:\n{all}"));
    assert!(
        started < term && term < applied,
        "SIGTERM acknowledged (line {term}) during the sync (lines {started}-{applied}); stderr:\n{all}"
    );
    assert!(
        line_index(
            &lines[term..applied],
            "waiting for the feed sync in progress"
        )
        .is_some(),
        "the exit says it waits for the sync; stderr:\n{all}"
    );
}
