//! Known VPN endpoints: flows to a provider's published servers (or Tor relays), judged by
//! address because the protocol has no signature (TLS-wrapped, fully encrypted, QUIC).
//!
//! Called for TCP/UDP packets that [`super::detect`] found no signature in. Ordinary traffic
//! pays one read of a 16 KiB array: the destination's bit in `ENDPOINT_SUMMARY` (IPv4: its
//! /16; IPv6: its top 16 bits), then where that is set its bit in `ENDPOINT_BITMAP` (IPv4:
//! its /24; IPv6: its top 24 bits), both set by the controller for every listed prefix. Only
//! a set bit leads to the trie lookup, the scope check, the policy and the allowlist lookup
//! of both endpoints.
//! Registered traffic (either endpoint in the allowlist) is never touched.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    macros::map,
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, PerCpuArray,
    },
    programs::XdpContext,
};
use vpn_filter_common::{
    counter_index, endpoint_counter_index, verdict_counter_index, Counter, EndpointValue, Message,
    PolicyMode, Protocol, Reason, Verdict, DEFAULT_ALLOWLIST_LOOKUP, DEFAULT_ENDPOINT_V4_ENTRIES,
    DEFAULT_ENDPOINT_V6_ENTRIES, ENDPOINT_BITMAP_V6, ENDPOINT_BITMAP_WORDS, ENDPOINT_SUMMARY_SPAN,
    ENDPOINT_SUMMARY_WORDS, FAMILY_V4, MAX_PROVIDERS,
};

use super::{
    allowlisted, config, count, emit_event, now_ns, policy, Packet, CONFIG, IPPROTO_TCP,
    IPPROTO_UDP,
};

#[map(name = "VPN_ENDPOINTS_V4")]
static VPN_ENDPOINTS_V4: LpmTrie<[u8; 4], EndpointValue> =
    LpmTrie::with_max_entries(DEFAULT_ENDPOINT_V4_ENTRIES, 0);

#[map(name = "VPN_ENDPOINTS_V6")]
static VPN_ENDPOINTS_V6: LpmTrie<[u8; 16], EndpointValue> =
    LpmTrie::with_max_entries(DEFAULT_ENDPOINT_V6_ENTRIES, 0);

/// The filter in front of the tries (see [`ENDPOINT_BITMAP_WORDS`]).
#[map(name = "ENDPOINT_BITMAP")]
static ENDPOINT_BITMAP: Array<u64> = Array::with_max_entries(ENDPOINT_BITMAP_WORDS, 0);

/// The filter in front of that one (see [`ENDPOINT_SUMMARY_WORDS`]): 16 KiB that stay in
/// cache, where the bitmap's 4 MiB cost a miss per packet to a new destination.
#[map(name = "ENDPOINT_SUMMARY")]
static ENDPOINT_SUMMARY: Array<u64> = Array::with_max_entries(ENDPOINT_SUMMARY_WORDS, 0);

/// Per provider: packets dropped and monitored ([`endpoint_counter_index`]).
#[map(name = "ENDPOINT_STATS")]
static ENDPOINT_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_PROVIDERS * 2, 0);

/// Verdict for a TCP/UDP packet without a VPN signature.
///
/// The steps after the bitmap are split so that no call chain outgrows the 512-byte BPF
/// stack: [`listing`] and [`report`] have their own frames, and the allowlist lookup is
/// called from here, as [`super::decide`] calls it.
/// Not inlined: its frame is not added to the classifier's (which, with `decide` inlined,
/// holds the flow key and state), and the chain through it stays within 512 bytes.
#[inline(never)]
pub(super) fn judge(ctx: &XdpContext, pkt: &Packet) -> u32 {
    if !candidate(pkt) {
        return XDP_PASS;
    }
    let Some(listed) = listing(pkt) else {
        return XDP_PASS;
    };
    if allowlisted(pkt, allowlist_lookup()) {
        count(verdict_counter_index(Protocol::Endpoints, Verdict::Allowed));
        return XDP_PASS;
    }
    report(ctx, pkt, listed.provider)
}

/// Whether `pkt` (TCP or UDP) goes to a destination whose bit is set in the bitmap: the only
/// packets [`judge`] looks at further. One array read.
#[inline(always)]
pub(super) fn candidate(pkt: &Packet) -> bool {
    (pkt.ip_proto == IPPROTO_TCP || pkt.ip_proto == IPPROTO_UDP)
        && maybe_listed(pkt.family, &pkt.dst)
}

/// The destination's bit in `ENDPOINT_SUMMARY`, then in `ENDPOINT_BITMAP`.
#[inline(always)]
fn maybe_listed(family: u8, dst: &[u8; 16]) -> bool {
    let (word, bit) = if family == FAMILY_V4 {
        let slash24 = u32::from_be_bytes([0, dst[0], dst[1], dst[2]]);
        (slash24 >> 6, slash24 & 63)
    } else {
        let top24 = u32::from_be_bytes([0, dst[0], dst[1], dst[2]]);
        (ENDPOINT_BITMAP_V6 + (top24 >> 6), top24 & 63)
    };
    let group = word / ENDPOINT_SUMMARY_SPAN;
    match ENDPOINT_SUMMARY.get(group / 64) {
        Some(w) if w & (1u64 << (group % 64)) != 0 => {}
        _ => return false,
    }
    match ENDPOINT_BITMAP.get(word) {
        Some(w) => w & (1u64 << bit) != 0,
        None => false,
    }
}

/// The listing of the destination when the packet is in its scope and the `endpoints` policy
/// is not off (an off policy counts the packet as ignored).
#[inline(never)]
fn listing(pkt: &Packet) -> Option<EndpointValue> {
    count(counter_index(Counter::EndpointLookups));
    let listed = if pkt.family == FAMILY_V4 {
        VPN_ENDPOINTS_V4
            .get(Key::new(
                32,
                [pkt.dst[0], pkt.dst[1], pkt.dst[2], pkt.dst[3]],
            ))
            .copied()
    } else {
        VPN_ENDPOINTS_V6.get(Key::new(128, pkt.dst)).copied()
    }?;
    if listed.ip_proto != 0 && listed.ip_proto != pkt.ip_proto {
        return None;
    }
    let port = u16::from_be_bytes(listed.port);
    if port != 0 && port != pkt.dport {
        return None;
    }
    if policy(Protocol::Endpoints) == PolicyMode::Off as u8 {
        count(verdict_counter_index(Protocol::Endpoints, Verdict::Ignored));
        return None;
    }
    Some(listed)
}

/// The configured [`vpn_filter_common::AllowlistLookup`], without copying the whole config.
#[inline(always)]
fn allowlist_lookup() -> u32 {
    match CONFIG.get(0) {
        Some(c) if c.allowlist_lookup != 0 => c.allowlist_lookup,
        _ => DEFAULT_ALLOWLIST_LOOKUP as u32,
    }
}

/// An unregistered client's packet to a listed endpoint: counted (also per provider),
/// reported, and dropped under `enforce`.
#[inline(never)]
fn report(ctx: &XdpContext, pkt: &Packet, provider: u16) -> u32 {
    let (verdict, action) = if policy(Protocol::Endpoints) == PolicyMode::Enforce as u8 {
        (Verdict::Dropped, XDP_DROP)
    } else {
        (Verdict::Monitored, XDP_PASS)
    };
    count(verdict_counter_index(Protocol::Endpoints, verdict));
    let slot = endpoint_counter_index(provider, verdict == Verdict::Monitored);
    if let Some(n) = ENDPOINT_STATS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *n += 1 };
    }
    let cfg = config();
    let now = now_ns();
    emit_event(
        ctx,
        pkt,
        Message::ListedEndpoint as u8,
        provider,
        Protocol::Endpoints,
        verdict,
        Reason::ListedEndpoint,
        now,
        &cfg,
    );
    action
}
