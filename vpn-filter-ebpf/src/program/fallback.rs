//! Closing the fallbacks: after a VPN handshake between a client and a server was confirmed
//! (the server answered the client in the VPN's own protocol) and dropped, every other packet
//! between the two addresses, on any port and protocol, is judged under the `fallback`
//! policy for [`Config::fallback_timeout_ns`]. OpenConnect's TLS channel on 443 (after its
//! DTLS was dropped) and SoftEther's TCP then cannot carry the tunnel.
//!
//! Keyed by the (client, server) pair, never by the server alone: servers sit behind shared
//! CDNs and hosting. Armed only by a *confirmed* flow, never by one packet: a spoofed
//! handshake towards a server that does not speak the VPN (a bank's web server, a CDN front)
//! gets no answer and arms nothing. Ordinary packets pay one hash of an address and one array
//! read (`FALLBACK_ADDRS`); only addresses that were in a closed pair reach the map.

use super::*;

/// Armed pairs: the time each stays closed until.
#[map(name = "FALLBACK_PAIRS")]
pub(super) static FALLBACK_PAIRS: LruHashMap<PairKey, u64> =
    LruHashMap::with_max_entries(FALLBACK_PAIR_ENTRIES, 0);

/// Addresses in an armed pair, one bit per address hash: the filter in front of the map.
#[map(name = "FALLBACK_ADDRS")]
pub(super) static FALLBACK_ADDRS: Array<u64> = Array::with_max_entries(FALLBACK_ADDR_WORDS, 0);

const FALLBACK_ADDR_WORDS: u32 = 1 << 14;

/// The two addresses, lower first, and the VLAN: tenants of a shared gateway reuse
/// private addresses, and a closure in one VLAN must not close another's pair.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct PairKey {
    lo: [u8; 16],
    hi: [u8; 16],
    family: u8,
    _pad1: u8,
    vlan: u16,
    _pad: [u8; 4],
}

#[inline(always)]
fn pair_key(pkt: &Packet) -> PairKey {
    let (lo, hi) = if pkt.src <= pkt.dst {
        (pkt.src, pkt.dst)
    } else {
        (pkt.dst, pkt.src)
    };
    PairKey {
        lo,
        hi,
        family: pkt.family,
        _pad1: 0,
        vlan: pkt.vlan,
        _pad: [0; 4],
    }
}

/// The bit of `addr` in `FALLBACK_ADDRS`: (word, mask).
#[inline(always)]
fn addr_bit(addr: &[u32; 4]) -> (u32, u64) {
    let h = endpoint_hash(addr, 0);
    ((h >> 6) & (FALLBACK_ADDR_WORDS - 1), 1u64 << (h & 63))
}

#[inline(always)]
fn addr_marked(addr: &[u32; 4]) -> bool {
    let (word, mask) = addr_bit(addr);
    FALLBACK_ADDRS.get(word).is_some_and(|w| w & mask != 0)
}

/// Closes the packet's address pair until `now + timeout`. Not inlined: the key stays off
/// `decide`'s frame.
#[inline(never)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "passing map keys by value copies them onto the 512-byte BPF stack"
)]
pub(super) fn arm(pkt: &Packet, now: u64) {
    // Under policy off nothing is closed (and nothing is counted for it).
    if policy(Protocol::Fallback) == PolicyMode::Off as u8 {
        return;
    }
    let cfg_timeout = CONFIG.get(0).map_or(0, |c| c.fallback_timeout_ns);
    let timeout = if cfg_timeout == 0 {
        DEFAULT_FALLBACK_TIMEOUT_NS
    } else {
        cfg_timeout
    };
    let until = now + timeout;
    let key = pair_key(pkt);
    if FALLBACK_PAIRS.insert(&key, &until, 0).is_err() {
        count(counter_index(Counter::FlowInsertFailed));
        return;
    }
    let (src, dst) = pkt.words();
    for addr in [&src, &dst] {
        let (word, mask) = addr_bit(addr);
        if let Some(w) = FALLBACK_ADDRS.get_ptr_mut(word) {
            // SAFETY: an array slot; a lost race only leaves a bit unset until the next arm.
            unsafe { *w |= mask };
        }
    }
}

/// Judges the packet in the scratch slot if its two addresses form a closed pair: XDP_DROP
/// when it is dropped here, XDP_PASS otherwise (judged on as usual, also when reported
/// under a monitor policy). Ordinary packets pay one hash of the source address and one
/// array read; only marked addresses reach the map. Not inlined: its own frame, called from
/// the top level.
#[inline(never)]
pub(super) fn closed(ctx: &XdpContext) -> u32 {
    let Some(c) = SCRATCH.get(0) else {
        return XDP_PASS;
    };
    let pkt = &c.pkt;
    // Later fragments follow their first fragment (FRAGS_DROPPED).
    // Nothing is armed under policy off (the default): ordinary packets pay one array read.
    if policy(Protocol::Fallback) == PolicyMode::Off as u8 {
        return XDP_PASS;
    }
    let (src, dst) = pkt.words();
    if pkt.frag == FRAG_LATER || !addr_marked(&src) || !addr_marked(&dst) {
        return XDP_PASS;
    }
    match judge(ctx, pkt) {
        Some(XDP_DROP) => {
            if pkt.frag == FRAG_FIRST {
                remember_dropped_fragment(
                    pkt.family,
                    pkt.ip_proto,
                    &pkt.src,
                    &pkt.dst,
                    pkt.frag_id,
                );
            }
            XDP_DROP
        }
        _ => XDP_PASS,
    }
}

/// The verdict on a packet between a closed pair, or `None` when the pair is not closed.
/// Registered traffic (either address in the allowlist) passes: an approval during the
/// closure takes effect at once.
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "passing map keys by value copies them onto the 512-byte BPF stack"
)]
pub(super) fn judge(ctx: &XdpContext, pkt: &Packet) -> Option<u32> {
    let key = pair_key(pkt);
    // SAFETY: the value is copied out at once.
    let until = unsafe { FALLBACK_PAIRS.get(&key) }.copied()?;
    let now = now_ns();
    if until <= now {
        return None;
    }
    let mode = policy(Protocol::Fallback);
    if mode == PolicyMode::Off as u8 {
        count(verdict_counter_index(Protocol::Fallback, Verdict::Ignored));
        return None;
    }
    let cfg = config();
    if allowlisted(pkt, cfg.allowlist_lookup) {
        count(verdict_counter_index(Protocol::Fallback, Verdict::Allowed));
        return Some(XDP_PASS);
    }
    let (verdict, action) = if mode == PolicyMode::Enforce as u8 {
        (Verdict::Dropped, XDP_DROP)
    } else {
        (Verdict::Monitored, XDP_PASS)
    };
    count(verdict_counter_index(Protocol::Fallback, verdict));
    emit_event(
        ctx,
        pkt,
        Message::FallbackPair as u8,
        0,
        Protocol::Fallback,
        verdict,
        Reason::Fallback,
        now,
        &cfg,
    );
    Some(action)
}
