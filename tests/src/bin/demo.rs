//! `cargo xtask demo`: vpn-filter doing its job in a throwaway lab.
//!
//! ```text
//!  registered client  10.81.1.2 ──┐
//!                                  ├── gateway (vpn-filter on all three interfaces) ── server 10.81.3.2
//!  unregistered client 10.81.2.2 ──┘
//! ```
//!
//! The registry allows only the registered client. Both clients send real WireGuard
//! handshake initiations and IKEv2 IKE_SA_INIT requests to the server through the gateway;
//! the demo prints the controller's drop events and counters as they happen, then what the
//! server received, and removes every namespace, link and process on exit or Ctrl-C.

use std::{
    net::UdpSocket,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, LazyLock,
    },
    time::{Duration, Instant},
};

use clap::Parser;
use vpn_filter_tests::{
    gateway_lab::{
        GatewayLab, TempDir, GATEWAY_IFACES, REGISTERED as REG, SERVER, UNREGISTERED as UNREG,
    },
    lab::{registry_json, sa},
    netns::{udp_bind, udp_send, Process},
    packet::wireguard_initiation,
};

#[derive(Parser)]
#[command(about = "A throwaway network-namespace lab showing vpn-filter at work")]
struct Args {
    /// The vpn-filter controller binary.
    #[arg(long)]
    controller: Option<PathBuf>,
    /// Keep the lab up after the scenario until Ctrl-C (to look around with `ip netns`).
    #[arg(long)]
    hold: bool,
}

/// Set by SIGINT and SIGTERM (signal-hook).
static STOP: LazyLock<Arc<AtomicBool>> = LazyLock::new(Default::default);

struct Lab {
    // Field order is drop order: the controller goes before the namespaces.
    controller: Process,
    _registry: TempDir,
    net: GatewayLab,
}

fn build_lab(controller: &Path) -> Lab {
    let net = GatewayLab::new();
    let dir = TempDir::new("demo");
    let registry = dir.path().join("registry.json");
    std::fs::write(&registry, registry_json(1, &[("REG-DEMO-1", &[REG])])).expect("write registry");
    println!(
        "registry {} allows only {REG} (entry REG-DEMO-1)",
        registry.display()
    );
    let controller = net.start_controller(controller, &registry, &["--stats-interval", "1"]);
    Lab {
        controller,
        _registry: dir,
        net,
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    vpn_filter_tests::require_root();
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&STOP)).expect("installing a signal handler");
    }
    let controller = args.controller.unwrap_or_else(|| {
        std::env::current_exe()
            .expect("own path")
            .with_file_name("vpn-filter")
    });
    println!("== building the lab: registered client, unregistered client, gateway, server");
    let lab = build_lab(&controller);
    for l in lab.controller.stderr_lines() {
        println!("   controller: {l}");
    }
    let wg_sock = udp_bind(&lab.net.server, sa(SERVER, 51820));
    let ike_sock = udp_bind(&lab.net.server, sa(SERVER, 500));

    println!(
        "== both clients send WireGuard initiations and IKEv2 IKE_SA_INIT requests to {SERVER}"
    );
    let mut seen_err = 0;
    let mut received: Vec<(String, String)> = Vec::new();
    for round in 0..3u32 {
        if STOP.load(Ordering::SeqCst) {
            break;
        }
        for (who, ns, src) in [
            ("registered", &lab.net.reg, REG),
            ("unregistered", &lab.net.unreg, UNREG),
        ] {
            udp_send(
                ns,
                sa(src, 40000 + round as u16),
                sa(SERVER, 51820),
                &wireguard_initiation(round * 2 + 1),
            );
            udp_send(
                ns,
                sa(src, 500),
                sa(SERVER, 500),
                &ike_sa_init(0x1000 + round as u64),
            );
            println!(
                "   {who} client {src} sent WireGuard initiation #{round} and IKE_SA_INIT #{round}"
            );
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            for (proto, sock) in [("wireguard", &wg_sock), ("ike", &ike_sock)] {
                drain(sock, proto, &mut received);
            }
            while let Some(line) = lab.controller.next_line(Duration::from_millis(20)) {
                println!("   EVENT {line}");
            }
            let errs = lab.controller.stderr_lines();
            for l in errs.iter().skip(seen_err) {
                if l.starts_with("counters:") {
                    println!("   {l}");
                }
            }
            seen_err = errs.len();
        }
    }

    println!("== what the server received");
    for (proto, from) in &received {
        println!("   {proto} handshake from {from}");
    }
    let from_reg = received.iter().filter(|(_, f)| f.starts_with(REG)).count();
    let from_unreg = received
        .iter()
        .filter(|(_, f)| f.starts_with(UNREG))
        .count();
    let events = lab.controller.stdout_lines();
    let unreg_events = events
        .iter()
        .filter(|l| l.contains(&format!("\"src\":\"{UNREG}\"")))
        .count();
    let ok = from_reg == 6 && from_unreg == 0 && unreg_events > 0;
    println!(
        "== result: registered client {from_reg}/6 handshakes delivered, unregistered client {from_unreg}/6 delivered, {unreg_events} drop events naming {UNREG}: {}",
        if ok { "as expected" } else { "NOT AS EXPECTED" }
    );

    if args.hold {
        println!(
            "== lab kept up (namespaces {} {} {} {}; gateway interfaces {}); Ctrl-C to tear down",
            lab.net.reg.name(),
            lab.net.unreg.name(),
            lab.net.gw.name(),
            lab.net.server.name(),
            GATEWAY_IFACES.join(" ")
        );
        while !STOP.load(Ordering::SeqCst) {
            while let Some(line) = lab.controller.next_line(Duration::from_millis(200)) {
                println!("   EVENT {line}");
            }
        }
    }
    println!("== tearing down: stopping the controller, deleting the namespaces");
    let status = lab.controller.terminate(Duration::from_secs(5));
    drop(lab);
    if status.is_none_or(|s| !s.success()) {
        eprintln!("the controller did not exit cleanly: {status:?}");
        return ExitCode::FAILURE;
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// An IKEv2 IKE_SA_INIT request header (initiator SPI, zero responder SPI, SA payload next,
/// version 2.0, exchange 34, initiator flag, message id 0) followed by an opaque body, with
/// the length field equal to the message length as on the wire.
fn ike_sa_init(spi: u64) -> Vec<u8> {
    let mut p = vec![0u8; 28 + 40];
    p[0..8].copy_from_slice(&spi.to_be_bytes());
    p[16] = 33;
    p[17] = 0x20;
    p[18] = 34;
    p[19] = 0x08;
    let len = p.len() as u32;
    p[24..28].copy_from_slice(&len.to_be_bytes());
    p[28] = 0; // SA payload: no next payload
    p[30..32].copy_from_slice(&40u16.to_be_bytes());
    p
}

fn drain(sock: &UdpSocket, proto: &str, received: &mut Vec<(String, String)>) {
    let mut buf = [0u8; 2048];
    sock.set_read_timeout(Some(Duration::from_millis(10))).ok();
    while let Ok((_, from)) = sock.recv_from(&mut buf) {
        println!("   server got a {proto} handshake from {from}");
        received.push((proto.to_string(), from.to_string()));
    }
}
