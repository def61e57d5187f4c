//! Issue 14, item 3: IPv6 extension headers. The parser follows up to 8 extension headers
//! and up to 2048 bytes of L3 headers; a VPN packet anywhere within that is judged, ordinary
//! traffic passes. A longer chain is judged by `--ext-header-overflow`: dropped by default,
//! passed with `pass`, counted as `ext_header_limit` either way.

use vpn_filter::kernel::{FrameStart, Policy};
use vpn_filter_common::{Config, Counter, ExtHeaderOverflow, Protocol, Verdict};
use vpn_filter_tests::{
    judge::{client, expect, load, load_with, server, Failures, XDP_DROP, XDP_PASS},
    mangle::insert_ext_headers,
    packet::*,
};

const DO8: Ext = Ext::DestOpts { len8: 0 };
/// One destination-options header of 512 bytes.
const DO512: Ext = Ext::DestOpts { len8: 63 };
const HBH: Ext = Ext::HopByHop { len8: 0 };
const RH: Ext = Ext::Routing { len8: 2 };

/// The chains within the parser's limits, by name.
fn within_limits() -> Vec<(&'static str, Vec<Ext>)> {
    vec![
        ("seven destination-options headers", vec![DO8; 7]),
        ("eight destination-options headers", vec![DO8; 8]),
        ("one 512-byte destination-options header", vec![DO512]),
        (
            "three 512-byte destination-options headers",
            vec![DO512, DO512, DO512],
        ),
        (
            "hop-by-hop, routing, destination options",
            vec![HBH, RH, DO8],
        ),
        (
            "hop-by-hop, six destination options, routing",
            [vec![HBH], vec![DO8; 6], vec![RH]].concat(),
        ),
    ]
}

/// The chains beyond them: more than 8 headers, or more than 2048 bytes of headers.
fn beyond_limits() -> Vec<(&'static str, Vec<Ext>)> {
    vec![
        ("nine destination-options headers", vec![DO8; 9]),
        (
            "hop-by-hop, ten destination options, routing",
            [vec![HBH], vec![DO8; 10], vec![RH]].concat(),
        ),
        ("five 512-byte destination-options headers", vec![DO512; 5]),
    ]
}

fn wireguard(registered: bool, port: u16) -> Vec<u8> {
    Frame::eth()
        .ip(client(true, registered), server(true))
        .udp(port, 51820)
        .payload(&wireguard_initiation(port as u32))
        .build()
}

fn dns(port: u16) -> Vec<u8> {
    Frame::eth()
        .ip(client(true, false), server(true))
        .udp(port, 53)
        .payload(&dns_query(port, "example.com"))
        .build()
}

#[test]
fn a_wireguard_initiation_behind_extension_headers_within_the_limits_is_dropped() {
    let filter = load();
    let mut failures = Failures::default();
    for (i, (name, chain)) in within_limits().into_iter().enumerate() {
        let port = 20000 + 2 * i as u16;
        failures.check(
            &filter,
            &format!("wireguard initiation behind {name}"),
            &insert_ext_headers(&wireguard(false, port), &chain),
            &expect(XDP_DROP, Some((Protocol::WireGuard, Verdict::Dropped)), &[]),
        );
        failures.check(
            &filter,
            &format!("wireguard initiation from a registered client behind {name}"),
            &insert_ext_headers(&wireguard(true, port + 1), &chain),
            &expect(XDP_PASS, Some((Protocol::WireGuard, Verdict::Allowed)), &[]),
        );
    }
    failures.assert_none();
}

#[test]
fn dns_behind_extension_headers_within_the_limits_passes() {
    let filter = load();
    let mut failures = Failures::default();
    for (i, (name, chain)) in within_limits().into_iter().enumerate() {
        failures.check(
            &filter,
            &format!("dns query behind {name}"),
            &insert_ext_headers(&dns(21000 + i as u16), &chain),
            &expect(XDP_PASS, None, &[]),
        );
    }
    failures.assert_none();
}

#[test]
fn chains_beyond_the_limits_are_dropped_and_counted_by_default() {
    let filter = load();
    let mut failures = Failures::default();
    let limit = expect(XDP_DROP, None, &[Counter::ExtHeaderLimit]);
    for (i, (name, chain)) in beyond_limits().into_iter().enumerate() {
        failures.check(
            &filter,
            &format!("wireguard initiation behind {name}"),
            &insert_ext_headers(&wireguard(false, 22000 + i as u16), &chain),
            &limit,
        );
        failures.check(
            &filter,
            &format!("dns query behind {name}"),
            &insert_ext_headers(&dns(22100 + i as u16), &chain),
            &limit,
        );
    }
    failures.assert_none();
}

#[test]
fn chains_beyond_the_limits_pass_and_are_counted_with_ext_header_overflow_pass() {
    let pass = Config {
        ext_header_overflow: ExtHeaderOverflow::Pass as u8,
        ..Config::default()
    };
    let loaded = load_with(FrameStart::Ethernet, &Policy::default(), &pass);
    let mut set = load();
    set.set_config(&pass).expect("set_config");
    let mut failures = Failures::default();
    let counted = expect(XDP_PASS, None, &[Counter::ExtHeaderLimit]);
    for (how, filter) in [("loaded with", &loaded), ("set to", &set)] {
        for (i, (name, chain)) in beyond_limits().into_iter().enumerate() {
            failures.check(
                filter,
                &format!("wireguard initiation behind {name}, overflow {how} pass"),
                &insert_ext_headers(&wireguard(false, 23000 + i as u16), &chain),
                &counted,
            );
        }
    }
    failures.assert_none();
}
