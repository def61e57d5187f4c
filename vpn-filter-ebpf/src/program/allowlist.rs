//! Is an address registered? The LPM tries, and the fast path in front of them.

use super::*;

#[map(name = "ALLOW_V4")]
pub(super) static ALLOW_V4: LpmTrie<[u8; 4], AllowValue> =
    LpmTrie::with_max_entries(DEFAULT_ALLOW_V4_ENTRIES, 0);

#[map(name = "ALLOW_V6")]
pub(super) static ALLOW_V6: LpmTrie<[u8; 16], AllowValue> =
    LpmTrie::with_max_entries(DEFAULT_ALLOW_V6_ENTRIES, 0);

/// Fast path: the IPv4 /24 bitmap and the filters in front of the hashes (see
/// [`FAST_BITMAP_WORDS`]).
#[map(name = "FAST_BITMAPS")]
pub(super) static FAST_BITMAPS: Array<u64> = Array::with_max_entries(FAST_BITMAP_WORDS, 0);

/// Fast path: one bit per IPv4 /16 in front of the IPv4 bitmaps (see [`FAST_SUMMARY_WORDS`]).
#[map(name = "FAST_SUMMARY")]
pub(super) static FAST_SUMMARY: Array<u64> = Array::with_max_entries(FAST_SUMMARY_WORDS, 0);

/// BPF_F_NO_PREALLOC: memory follows the feed, not the configured capacity.
pub(super) const BPF_F_NO_PREALLOC: u32 = 1;

/// Fast path, IPv4 prefixes /25../32, exact match on (masked address, length).
#[map(name = "FAST_V4_LONG")]
pub(super) static FAST_V4_LONG: HashMap<FastKeyV4, u8> =
    HashMap::with_max_entries(DEFAULT_ALLOW_V4_ENTRIES, BPF_F_NO_PREALLOC);

/// Fast path, IPv6 prefixes, exact match on (masked address, length).
#[map(name = "FAST_V6")]
pub(super) static FAST_V6: HashMap<FastKeyV6, u8> =
    HashMap::with_max_entries(DEFAULT_ALLOW_V6_ENTRIES, BPF_F_NO_PREALLOC);

/// Fast path: the prefix lengths the hashes hold.
#[map(name = "FAST_LENGTHS")]
pub(super) static FAST_LENGTHS: Array<FastLengths> = Array::with_max_entries(1, 0);

/// Allowlist generation: raised by the controller after each sync that changed the allowlist
/// (after the writes), read here before any allowlist lookup. A flow entry stamped with an
/// older generation looks its endpoints up again on its next packet.
#[map(name = "ALLOW_GEN")]
pub(super) static ALLOW_GEN: Array<u64> = Array::with_max_entries(1, 0);

/// Is either endpoint in the allowlist? `mode` is the configured [`AllowlistLookup`].
#[inline(always)]
pub(super) fn allowlisted(pkt: &Packet, mode: u32) -> bool {
    count(counter_index(Counter::AllowlistLookups));
    address_allowed(mode, pkt.family, &pkt.src) || address_allowed(mode, pkt.family, &pkt.dst)
}

/// Whether either endpoint may be registered: `false` only when the fast path's first level
/// (the IPv4 bitmaps, the IPv6 /32 filter) rules both out, in which case [`allowlisted`] is
/// certain to answer `false` too. Any other mode, or an address the first level does not
/// cover, answers `true` and leaves the answer to [`allowlisted`]. A few array reads: the
/// guard in front of costlier work for packets that are dropped unless registered. Not
/// counted as an allowlist lookup (`allowlist_lookups` counts the full ones): a count on
/// one of its answers only made the verifier walk `report` twice (+95,000 processed
/// instructions).
#[inline(always)]
pub(super) fn maybe_listed(pkt: &Packet, mode: u32) -> bool {
    if mode != AllowlistLookup::Fast as u32 {
        return true;
    }
    address_maybe_listed(pkt.family, &pkt.src) || address_maybe_listed(pkt.family, &pkt.dst)
}

#[inline(always)]
fn address_maybe_listed(family: u8, addr: &[u8; 16]) -> bool {
    if family == FAMILY_V4 {
        return v4_maybe_listed(u32::from_be_bytes([addr[0], addr[1], addr[2], addr[3]]));
    }
    // IPv4-mapped (::ffff:0:0/96) and NAT64 (64:ff9b::/96) addresses begin with a zero
    // byte and are judged by the IPv4 structures: left to the full lookup.
    if addr[0] == 0 {
        return true;
    }
    let Some(lengths) = FAST_LENGTHS.get(0) else {
        return true;
    };
    if lengths.v6_count == FAST_V6_USE_TRIE
        || lengths.v6_count as usize > FAST_V6_MAX_LENGTHS
        || lengths.v6_unfiltered != 0
    {
        return true;
    }
    let bit = fast_v6_filter_bit(u32::from_be_bytes([addr[0], addr[1], addr[2], addr[3]]));
    matches!(
        FAST_BITMAPS.get(FAST_BITMAP_V6 + (bit >> 6)),
        Some(word) if word & (1u64 << (bit & 63)) != 0
    )
}

/// [`v4_allowed`]'s first level in fast mode: the /16 holds a marked /24 (`FAST_SUMMARY`,
/// 8 KiB), and the /24 is registered whole or holds a longer prefix.
#[inline(always)]
fn v4_maybe_listed(ip: u32) -> bool {
    let slash16 = ip >> 16;
    if !FAST_SUMMARY
        .get(slash16 >> 6)
        .is_some_and(|w| w & (1u64 << (slash16 & 63)) != 0)
    {
        return false;
    }
    let slash24 = ip >> 8;
    let bit = 1u64 << (slash24 & 63);
    if FAST_BITMAPS.get(slash24 >> 6).is_some_and(|w| w & bit != 0) {
        return true;
    }
    FAST_LENGTHS.get(0).is_some_and(|l| l.v4_long != 0)
        && FAST_BITMAPS
            .get(FAST_BITMAP_V4_LONG + (slash24 >> 6))
            .is_some_and(|w| w & bit != 0)
}

/// Is `addr` in a registered prefix? `mode` is an [`AllowlistLookup`]; every mode gives the
/// same answer (tests/tests/fastpath.rs checks it). Not inlined: its own stack frame.
#[inline(never)]
pub(super) fn address_allowed(mode: u32, family: u8, addr: &[u8; 16]) -> bool {
    if family == FAMILY_V4 {
        return v4_allowed(mode, [addr[0], addr[1], addr[2], addr[3]]);
    }
    // IPv4-mapped IPv6 (::ffff:a.b.c.d) is the IPv4 host a.b.c.d: judged by the IPv4
    // structures, so a registration of 203.0.113.7 also covers a dual-stack socket's mapped
    // form.
    let mapped = addr[0] | addr[1] | addr[2] | addr[3] | addr[4] | addr[5] | addr[6] | addr[7] == 0
        && addr[8] | addr[9] == 0
        && addr[10] == 0xff
        && addr[11] == 0xff;
    if mapped {
        return v4_allowed(mode, [addr[12], addr[13], addr[14], addr[15]]);
    }
    // NAT64's well-known prefix (64:ff9b::/96, RFC 6052) embeds the IPv4 host a.b.c.d that a
    // NAT64 gateway translates to: a registration of a.b.c.d covers it. An IPv6 registration
    // of the NAT64 address itself is honoured too (below).
    let nat64 = addr[0] == 0
        && addr[1] == 0x64
        && addr[2] == 0xff
        && addr[3] == 0x9b
        && addr[4] | addr[5] | addr[6] | addr[7] | addr[8] | addr[9] | addr[10] | addr[11] == 0;
    if nat64 && v4_allowed(mode, [addr[12], addr[13], addr[14], addr[15]]) {
        return true;
    }
    if mode == AllowlistLookup::Fast as u32 {
        if let Some(found) = v6_fast(addr) {
            return found;
        }
    }
    ALLOW_V6.get(Key::new(128, *addr)).is_some()
}

#[inline(always)]
pub(super) fn v4_allowed(mode: u32, a: [u8; 4]) -> bool {
    if mode == AllowlistLookup::Fast as u32 || mode == AllowlistLookup::BitmapTrie as u32 {
        let ip = u32::from_be_bytes(a);
        let slash24 = ip >> 8;
        if let Some(word) = FAST_BITMAPS.get(slash24 >> 6) {
            if word & (1u64 << (slash24 & 63)) != 0 {
                return true;
            }
        }
        let long = FAST_LENGTHS.get(0).map(|l| l.v4_long).unwrap_or(0);
        if long == 0 {
            return false;
        }
        if mode == AllowlistLookup::Fast as u32 {
            let idx = FAST_BITMAP_V4_LONG + (slash24 >> 6);
            return match FAST_BITMAPS.get(idx) {
                Some(word) if word & (1u64 << (slash24 & 63)) != 0 => v4_long_probe(ip, long),
                _ => false,
            };
        }
    }
    ALLOW_V4.get(Key::new(32, a)).is_some()
}

/// Probes `FAST_V4_LONG` for each length 25..=32 whose bit is set in `present`, longest
/// first, like the IPv6 lengths: most registrations are single addresses, found by the first
/// probe (shortest first, a /32 took every probe of the lengths present).
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "passing map keys by value copies them onto the 512-byte BPF stack"
)]
pub(super) fn v4_long_probe(ip: u32, present: u32) -> bool {
    let mut key = FastKeyV4::default();
    let mut i = 0u32;
    while i < 8 {
        let bit = 7 - i;
        if present & (1 << bit) != 0 {
            let len = 25 + bit;
            let masked = ip & (u32::MAX << (32 - len));
            key.addr = masked.to_be_bytes();
            key.len = len as u8;
            if FAST_V4_LONG.get_ptr(&key).is_some() {
                return true;
            }
        }
        i += 1;
    }
    false
}

/// Probes `FAST_V6` for each length present; `None` when IPv6 must use the trie.
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "passing map keys by value copies them onto the 512-byte BPF stack"
)]
pub(super) fn v6_fast(addr: &[u8; 16]) -> Option<bool> {
    let lengths = FAST_LENGTHS.get(0)?;
    let n = lengths.v6_count;
    if n == FAST_V6_USE_TRIE || n as usize > FAST_V6_MAX_LENGTHS {
        return None;
    }
    let hi = u64::from_be_bytes([
        addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
    ]);
    let lo = u64::from_be_bytes([
        addr[8], addr[9], addr[10], addr[11], addr[12], addr[13], addr[14], addr[15],
    ]);
    // No prefix overlaps this /32: no probe can hit.
    if lengths.v6_unfiltered == 0 {
        let bit = fast_v6_filter_bit((hi >> 32) as u32);
        match FAST_BITMAPS.get(FAST_BITMAP_V6 + (bit >> 6)) {
            Some(word) if word & (1u64 << (bit & 63)) != 0 => {}
            _ => return Some(false),
        }
    }
    let mut key = FastKeyV6::default();
    let mut i = 0usize;
    while i < FAST_V6_MAX_LENGTHS {
        if i >= n as usize {
            break;
        }
        let len = lengths.v6[i] as u32;
        let (h, l) = if len == 0 {
            (0, 0)
        } else if len < 64 {
            (hi & (u64::MAX << (64 - len)), 0)
        } else if len == 64 {
            (hi, 0)
        } else if len < 128 {
            (hi, lo & (u64::MAX << (128 - len)))
        } else {
            (hi, lo)
        };
        key.addr[..8].copy_from_slice(&h.to_be_bytes());
        key.addr[8..].copy_from_slice(&l.to_be_bytes());
        key.len = len as u8;
        if FAST_V6.get_ptr(&key).is_some() {
            return Some(true);
        }
        i += 1;
    }
    Some(false)
}

#[inline(always)]
pub(super) fn allow_generation() -> u32 {
    ALLOW_GEN.get(0).copied().unwrap_or(0) as u32
}
