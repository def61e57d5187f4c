use std::net::{IpAddr, Ipv4Addr};

use vpn_filter::kernel::{test_run::test_run, Filter, LoadOptions, Policy};
use vpn_filter_common::Config;
use vpn_filter_tests::packet::*;

#[test]
fn probe() {
    let mut filter = Filter::load(
        LoadOptions::default(),
        &Policy::default(),
        &Config::default(),
    )
    .unwrap();
    let prog = filter.program_mut();
    let fd = std::os::fd::AsFd::as_fd(prog.fd().unwrap());
    let src = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));
    let dst = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 9));
    let frames = [
        (
            "udp9000",
            Frame::eth()
                .ip(src, dst)
                .udp(40000, 9000)
                .payload(&[0x55u8; 18])
                .build(),
        ),
        (
            "tcp443",
            Frame::eth()
                .ip(src, dst)
                .tcp(40000, 443)
                .payload(&[0x17u8; 100])
                .build(),
        ),
    ];
    for (name, f) in &frames {
        let mut v: Vec<u32> = (0..15)
            .map(|_| test_run(fd, f, 1_000_000).unwrap().duration_ns)
            .collect();
        v.sort();
        eprintln!(
            "PROBE {name}: median {} ns (min {} max {})",
            v[7], v[0], v[14]
        );
    }
}
