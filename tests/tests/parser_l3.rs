//! Issue 14, item 6: devices whose frames start at the IP header (tun, wireguard, ppp, gre,
//! ipip). The program variant loaded with `FrameStart::Ip` judges raw IP packets; the daemon
//! attached to a TUN device judges the packets written into it (which enter the kernel's
//! receive path, where XDP runs), instead of parsing the IP header as Ethernet and passing
//! everything.

use std::{
    fs::File,
    io::Write as _,
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _},
    path::PathBuf,
    time::{Duration, Instant},
};

use serde_json::Value;
use vpn_filter::kernel::{FrameStart, Policy};
use vpn_filter_common::{Config, Protocol, Verdict};
use vpn_filter_tests::{
    gateway_lab::{controller_path, TempDir},
    judge::{client, expect, load_with, server, Failures, REG_V4, REG_V6, XDP_DROP, XDP_PASS},
    lab::registry_json,
    mangle::strip_ethernet,
    netns::{NetNs, Process},
    packet::*,
};

fn wireguard(c: IpAddr, s: IpAddr, port: u16) -> Vec<u8> {
    Frame::eth()
        .ip(c, s)
        .udp(port, 51820)
        .payload(&wireguard_initiation(port as u32))
        .build()
}

fn dns(c: IpAddr, s: IpAddr, port: u16) -> Vec<u8> {
    Frame::eth()
        .ip(c, s)
        .udp(port, 53)
        .payload(&dns_query(port, "example.com"))
        .build()
}

#[test]
fn a_filter_for_ip_devices_drops_a_raw_wireguard_initiation_and_passes_raw_dns() {
    let filter = load_with(FrameStart::Ip, &Policy::default(), &Config::default());
    let mut failures = Failures::default();
    for v6 in [false, true] {
        let s = server(v6);
        let (unreg, reg) = (client(v6, false), client(v6, true));
        let port = 20000 + 8 * v6 as u16;
        failures.check(
            &filter,
            &format!("raw wireguard initiation from {unreg}"),
            &strip_ethernet(&wireguard(unreg, s, port)),
            &expect(XDP_DROP, Some((Protocol::WireGuard, Verdict::Dropped)), &[]),
        );
        failures.check(
            &filter,
            &format!("raw wireguard initiation from {reg}"),
            &strip_ethernet(&wireguard(reg, s, port + 1)),
            &expect(XDP_PASS, Some((Protocol::WireGuard, Verdict::Allowed)), &[]),
        );
        failures.check(
            &filter,
            &format!("raw dns query from {unreg}"),
            &strip_ethernet(&dns(unreg, s, port + 2)),
            &expect(XDP_PASS, None, &[]),
        );
        failures.check(
            &filter,
            &format!("raw ike_sa_init from {unreg}"),
            &strip_ethernet(
                &Frame::eth()
                    .ip(unreg, s)
                    .udp(port + 3, 500)
                    .payload(&ikev2_sa_init(0x1ce0_3000_0000_0001, 352))
                    .build(),
            ),
            &expect(XDP_DROP, Some((Protocol::Ike, Verdict::Dropped)), &[]),
        );
    }
    failures.assert_none();
}

// ---------------------------------------------------------------------------------------
// The daemon on a TUN device
// ---------------------------------------------------------------------------------------

const TUN: &str = "tun0";
const TUN_V4: &str = "10.77.0.1";
const TUN_V6: &str = "fd00:77::1";
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

/// Creates `tun0` in `ns` (owned by the returned file: writing an IP packet to it makes the
/// packet arrive on `tun0`), addressed and up, reverse-path filtering off so packets from
/// any source are delivered.
fn tun_device(ns: &NetNs) -> File {
    let file = ns.enter(|| {
        let path = c"/dev/net/tun";
        // SAFETY: a valid C string; the fd is owned by the File below.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        assert!(
            fd >= 0,
            "open /dev/net/tun: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: fd was just opened and is owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        // struct ifreq: the name, then ifr_flags, padded to 40 bytes.
        let mut ifreq = [0u8; 40];
        ifreq[..TUN.len()].copy_from_slice(TUN.as_bytes());
        ifreq[16..18].copy_from_slice(&(IFF_TUN | IFF_NO_PI).to_ne_bytes());
        // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `ifreq` is sized for.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, ifreq.as_mut_ptr()) };
        assert_eq!(rc, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
        file
    });
    ns.sysctl("net.ipv4.conf.all.rp_filter", "0");
    ns.sysctl(&format!("net.ipv4.conf.{TUN}.rp_filter"), "0");
    ns.ip(&["addr", "add", &format!("{TUN_V4}/24"), "dev", TUN]);
    ns.ip(&["addr", "add", &format!("{TUN_V6}/64"), "dev", TUN, "nodad"]);
    ns.ip(&["link", "set", TUN, "up"]);
    file
}

/// `vpn-filter run --iface tun0` in `ns` with REG_V4/REG_V6 registered.
struct Daemon {
    _proc: Process,
    socket: PathBuf,
    _dir: TempDir,
}

impl Daemon {
    fn start(ns: &NetNs) -> Daemon {
        let dir = TempDir::new("tun");
        let registry = dir.path().join("registry.json");
        std::fs::write(
            &registry,
            registry_json(1, &[("REG-1", &[&REG_V4.to_string(), &REG_V6.to_string()])]),
        )
        .expect("write the registry");
        let socket = dir.path().join("control.sock");
        let mut cmd = ns.command(controller_path());
        cmd.args(["run", "--no-pin", "--iface", TUN, "--registry"])
            .arg(&registry)
            .arg("--control-socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.path().join("state"));
        let proc = Process::spawn(cmd);
        proc.wait_stderr("control socket", Duration::from_secs(30));
        Daemon {
            _proc: proc,
            socket,
            _dir: dir,
        }
    }

    fn status(&self) -> Value {
        let out = std::process::Command::new(controller_path())
            .args(["status", "--json", "--control-socket"])
            .arg(&self.socket)
            .output()
            .expect("run the vpn-filter CLI");
        assert!(
            out.status.success(),
            "status --json failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status --json is JSON")
    }
}

fn verdict(status: &Value, protocol: &str, verdict: &str) -> u64 {
    status["counters"]["verdicts"][protocol][verdict]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {protocol}/{verdict} in {status:#}"))
}

/// Receives datagrams on `sock` until one with `payload` arrives (or the deadline); returns
/// the sources of everything received.
fn receive_until(sock: &UdpSocket, payload: &[u8]) -> Vec<SocketAddr> {
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("read timeout");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut from = Vec::new();
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        if let Ok((n, src)) = sock.recv_from(&mut buf) {
            from.push(src);
            if &buf[..n] == payload {
                return from;
            }
        }
    }
    panic!("the marker datagram never arrived; received from {from:?}");
}

#[test]
fn the_daemon_on_a_tun_device_drops_a_wireguard_initiation_and_passes_dns() {
    vpn_filter_tests::require_root();
    let ns = NetNs::new("tun");
    let mut tun = tun_device(&ns);
    let daemon = Daemon::start(&ns);
    for v6 in [false, true] {
        let local: IpAddr = if v6 { TUN_V6 } else { TUN_V4 }.parse().expect("address");
        let (unreg, reg) = (client(v6, false), client(v6, true));
        let wg_sock = ns.enter(|| UdpSocket::bind(SocketAddr::new(local, 51820)).expect("bind"));
        let dns_sock = ns.enter(|| UdpSocket::bind(SocketAddr::new(local, 53)).expect("bind"));
        // Unregistered initiation, registered initiation, then DNS: the last two arrive, and
        // once the registered one has, the earlier unregistered one has been judged.
        tun.write_all(&strip_ethernet(&wireguard(unreg, local, 41000)))
            .expect("write to tun");
        tun.write_all(&strip_ethernet(&wireguard(reg, local, 41001)))
            .expect("write to tun");
        let dns_frame = dns(unreg, local, 41002);
        tun.write_all(&strip_ethernet(&dns_frame))
            .expect("write to tun");
        let wg_from = receive_until(&wg_sock, &wireguard_initiation(41001));
        assert_eq!(
            wg_from,
            vec![SocketAddr::new(reg, 41001)],
            "only the registered initiation arrives ({})",
            if v6 { "IPv6" } else { "IPv4" }
        );
        receive_until(&dns_sock, &dns_query(41002, "example.com"));
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let s = loop {
        let s = daemon.status();
        if verdict(&s, "wireguard", "dropped") >= 2 || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(verdict(&s, "wireguard", "dropped"), 2, "{s:#}");
    assert_eq!(verdict(&s, "wireguard", "allowed"), 2, "{s:#}");
}
