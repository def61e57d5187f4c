//! The fast path: verdict structures in front of the allowlist tries, so a lookup that misses
//! (a flood of spoofed sources) costs a few array and hash probes instead of a trie walk.
//!
//! The tries stay the authoritative allowlist (what `check` reads and what the sync diffs);
//! these maps are derived from the same prefixes and written by the same sync:
//!
//! - `FAST_BITMAPS`: one bit per IPv4 /24, set when the /24 lies in a prefix of /24 or
//!   shorter; and two filters, one bit per IPv4 /24 holding a /25../32 prefix and one per
//!   IPv6 /32 overlapped by a prefix (hashed onto 2^24 bits), so most misses cost no hash
//!   probe at all;
//! - `FAST_V4_LONG`: exact-match hash of the /25../32 prefixes (masked address, length);
//! - `FAST_V6`: exact-match hash of every IPv6 prefix;
//! - `FAST_LENGTHS`: which lengths the hashes hold, so the program probes only those (IPv6
//!   falls back to the trie when more than [`FAST_V6_MAX_LENGTHS`] lengths are in use);
//! - `FAST_SUMMARY`: one bit per IPv4 /16 holding a /24 marked in either IPv4 bitmap, read
//!   first by the flood's check ([`fast_summary`]).
//!
//! An update never makes a still-registered address look unregistered: the lengths only grow
//! before entries are added and shrink after they are removed; each changed bitmap word first
//! gets the union of its old and new bits, then its new bits, and the summary is widened to
//! cover both before any bitmap word is written and narrowed after the last; hash entries are
//! added before stale ones are removed ([`Plan::grow`] runs with the trie additions,
//! [`Plan::shrink`] with the trie removals).

use std::collections::BTreeSet;

use anyhow::{Context as _, Result};
use aya::{
    maps::{Array, MapData},
    Ebpf,
};
use vpn_filter_common::{
    fast_summary, fast_v6_filter_bit, maps, FastKeyV4, FastKeyV6, FastLengths, FAST_BITMAP_V4_LONG,
    FAST_BITMAP_V6, FAST_BITMAP_WORDS, FAST_SUMMARY_WORDS, FAST_V6_FILTER_MIN_LEN,
    FAST_V6_MAX_LENGTHS, FAST_V6_USE_TRIE,
};

use super::{
    allowlist::Applied,
    batch,
    diff::{self, Op},
    map_shapes::map,
};
use crate::registry::Prefix;

/// Value stored in the fast hashes (presence is what counts).
const PRESENT: u8 = 1;

/// What the fast maps hold (or should hold).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FastState {
    /// [`FAST_BITMAP_WORDS`] words.
    pub bitmap: Vec<u64>,
    /// Sorted, unique; the tag is always 0 (the diff's re-tagging never applies).
    pub v4_long: Vec<(FastKeyV4, u64)>,
    pub v6: Vec<(FastKeyV6, u64)>,
    pub lengths: FastLengths,
    /// `FAST_SUMMARY`'s words: derived from `bitmap`, except when read back from the kernel
    /// (what the map holds: a summary created after the other maps were pinned is empty).
    pub summary: Vec<u64>,
}

impl FastState {
    /// The state of freshly created maps.
    pub fn empty() -> FastState {
        FastState {
            bitmap: vec![0; FAST_BITMAP_WORDS as usize],
            v4_long: Vec::new(),
            v6: Vec::new(),
            lengths: FastLengths::default(),
            summary: vec![0; FAST_SUMMARY_WORDS as usize],
        }
    }

    /// The fast maps' contents for an allowlist.
    pub fn from_applied(applied: &Applied) -> FastState {
        let summary = FastSummary::from_applied(applied);
        let mut v4_long: Vec<(FastKeyV4, u64)> = applied
            .v4
            .iter()
            .filter_map(|(p, _)| v4_long_key(p))
            .map(|k| (k, 0))
            .collect();
        let mut v6: Vec<(FastKeyV6, u64)> = applied
            .v6
            .iter()
            .filter_map(|(p, _)| v6_key(p))
            .map(|k| (k, 0))
            .collect();
        // Already in order (the keys order as the prefixes do); this only checks it.
        v4_long.sort_unstable();
        v6.sort_unstable();
        FastState {
            summary: fast_summary(&summary.bitmap).to_vec(),
            bitmap: summary.bitmap,
            v4_long,
            v6,
            lengths: summary.lengths,
        }
    }

    /// What a sync keeps of this state for the next one.
    pub fn summary(self) -> FastSummary {
        FastSummary {
            v4_long: self.v4_long.len(),
            v6: self.v6.len(),
            bitmap: self.bitmap,
            lengths: self.lengths,
        }
    }

    /// What the kernel's fast maps hold (262,144 array reads plus the hashes' keys).
    pub fn read(ebpf: &Ebpf) -> Result<FastState> {
        let mut words = vec![0u64; FAST_BITMAP_WORDS as usize];
        for (i, w) in
            batch::lookup_all::<u32, u64>(batch::map_data(map(ebpf, maps::FAST_BITMAPS)?)?)
                .context("reading the IPv4 fast-path bitmap")?
        {
            if let Some(slot) = words.get_mut(i as usize) {
                *slot = w;
            }
        }
        let mut v4_long: Vec<(FastKeyV4, u64)> =
            batch::lookup_all::<FastKeyV4, u8>(batch::map_data(map(ebpf, maps::FAST_V4_LONG)?)?)
                .context("reading the IPv4 fast-path hash")?
                .into_iter()
                .map(|(k, _)| (k, 0))
                .collect();
        let mut v6: Vec<(FastKeyV6, u64)> =
            batch::lookup_all::<FastKeyV6, u8>(batch::map_data(map(ebpf, maps::FAST_V6)?)?)
                .context("reading the IPv6 fast-path hash")?
                .into_iter()
                .map(|(k, _)| (k, 0))
                .collect();
        v4_long.sort_unstable();
        v4_long.dedup();
        v6.sort_unstable();
        v6.dedup();
        let lengths: Array<&MapData, FastLengths> =
            Array::try_from(map(ebpf, maps::FAST_LENGTHS)?)?;
        let lengths = lengths
            .get(&0, 0)
            .context("reading the fast-path lengths")?;
        let mut summary = vec![0u64; FAST_SUMMARY_WORDS as usize];
        for (i, w) in
            batch::lookup_all::<u32, u64>(batch::map_data(map(ebpf, maps::FAST_SUMMARY)?)?)
                .context("reading the fast-path summary")?
        {
            if let Some(slot) = summary.get_mut(i as usize) {
                *slot = w;
            }
        }
        Ok(FastState {
            bitmap: words,
            v4_long,
            v6,
            lengths,
            summary,
        })
    }
}

/// The fast maps as a sync keeps them between runs: the bitmap words and lengths, and how many
/// keys each hash holds. The hash keys themselves are the tries' own prefixes (the /25../32
/// ones for IPv4, all for IPv6), so a sync that knows the trie plan takes the hash plan from it
/// ([`Plan::from_trie_plans`]) instead of listing and diffing a million keys again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FastSummary {
    /// [`FAST_BITMAP_WORDS`] words.
    pub bitmap: Vec<u64>,
    pub lengths: FastLengths,
    /// Keys in `FAST_V4_LONG` and in `FAST_V6`.
    pub v4_long: usize,
    pub v6: usize,
}

impl FastSummary {
    /// The state of freshly created maps.
    pub fn empty() -> FastSummary {
        FastState::empty().summary()
    }

    /// The bitmap words, lengths and hash sizes for an allowlist (one pass, no key lists).
    pub fn from_applied(applied: &Applied) -> FastSummary {
        let mut s = FastSummary {
            bitmap: vec![0; FAST_BITMAP_WORDS as usize],
            lengths: FastLengths::default(),
            v4_long: 0,
            v6: applied.v6.len(),
        };
        let mut v6_lengths = [false; 129];
        for (p, _) in &applied.v4 {
            let Prefix::V4 { addr, len } = *p else {
                continue;
            };
            if len <= 24 {
                let first = u32::from_be_bytes(addr) >> 8;
                set_bits(&mut s.bitmap, first, 1u32 << (24 - len));
            } else {
                s.v4_long += 1;
                s.lengths.v4_long |= 1 << (len - 25);
                let slash24 = u32::from_be_bytes(addr) >> 8;
                set_bits(&mut s.bitmap, FAST_BITMAP_V4_LONG * 64 + slash24, 1);
            }
        }
        for (p, _) in &applied.v6 {
            let Prefix::V6 { addr, len } = *p else {
                continue;
            };
            v6_lengths[len.min(128) as usize] = true;
            let top32 = u32::from_be_bytes([addr[0], addr[1], addr[2], addr[3]]);
            if len < FAST_V6_FILTER_MIN_LEN {
                s.lengths.v6_unfiltered = 1;
            } else {
                let count = if len >= 32 { 1 } else { 1u32 << (32 - len) };
                for x in top32..=top32 + (count - 1) {
                    set_bits(
                        &mut s.bitmap,
                        FAST_BITMAP_V6 * 64 + fast_v6_filter_bit(x),
                        1,
                    );
                }
            }
        }
        let lengths: BTreeSet<u8> = (0..=128u8).filter(|l| v6_lengths[*l as usize]).collect();
        s.lengths.set_v6(&lengths);
        s
    }
}

/// The `FAST_V4_LONG` key of an IPv4 prefix longer than /24.
fn v4_long_key(p: &Prefix) -> Option<FastKeyV4> {
    match *p {
        Prefix::V4 { addr, len } if len > 24 => Some(FastKeyV4 {
            addr,
            len,
            _pad: [0; 3],
        }),
        _ => None,
    }
}

/// The `FAST_V6` key of an IPv6 prefix.
fn v6_key(p: &Prefix) -> Option<FastKeyV6> {
    match *p {
        Prefix::V6 { addr, len } => Some(FastKeyV6 {
            addr,
            len,
            _pad: [0; 3],
        }),
        Prefix::V4 { .. } => None,
    }
}

/// One family's trie plan, as [`Plan::from_trie_plans`] reads it.
pub struct TrieChange<'a> {
    /// The trie's upserts, in key order.
    pub upserts: &'a [(Prefix, u64)],
    /// Per upsert, whether the key is new; `None`: all are (a load into empty tries).
    pub is_new: Option<&'a [bool]>,
    pub removals: &'a [Prefix],
}

impl<'a> TrieChange<'a> {
    /// `plan`'s change, its upserts being `upserts` (`want` itself when `have_empty`: a load
    /// into empty tries keeps no separate list).
    pub fn of(
        plan: &'a diff::Plan<Prefix>,
        upserts: &'a [(Prefix, u64)],
        have_empty: bool,
    ) -> TrieChange<'a> {
        TrieChange {
            upserts,
            is_new: (!have_empty).then_some(&plan.is_new[..]),
            removals: &plan.removals,
        }
    }
}

/// The plan of a hash keyed by `key` of the trie's prefixes: its new keys and its removed keys
/// (a re-tagged prefix changes nothing there).
fn keyed<K: Copy>(c: &TrieChange, key: impl Fn(&Prefix) -> Option<K>) -> diff::Plan<K> {
    let upserts: Vec<(K, u64)> = c
        .upserts
        .iter()
        .enumerate()
        .filter(|(i, _)| c.is_new.is_none_or(|n| n[*i]))
        .filter_map(|(_, (p, _))| key(p))
        .map(|k| (k, 0))
        .collect();
    diff::Plan {
        added: upserts.len(),
        is_new: vec![true; upserts.len()],
        upserts,
        removals: c.removals.iter().filter_map(key).collect(),
    }
}

trait LengthsExt {
    fn v6_lengths(&self) -> Option<BTreeSet<u8>>;
    fn set_v6(&mut self, lengths: &BTreeSet<u8>);
}

impl LengthsExt for FastLengths {
    /// The IPv6 lengths listed, `None` when IPv6 uses the trie.
    fn v6_lengths(&self) -> Option<BTreeSet<u8>> {
        let n = self.v6_count as usize;
        if self.v6_count == FAST_V6_USE_TRIE || n > FAST_V6_MAX_LENGTHS {
            return None;
        }
        Some(self.v6[..n].iter().copied().collect())
    }

    /// Lists `lengths` longest first, or selects the trie when there are too many.
    fn set_v6(&mut self, lengths: &BTreeSet<u8>) {
        self.v6 = [0; FAST_V6_MAX_LENGTHS];
        if lengths.len() > FAST_V6_MAX_LENGTHS {
            self.v6_count = FAST_V6_USE_TRIE;
            return;
        }
        for (slot, len) in self.v6.iter_mut().zip(lengths.iter().rev()) {
            *slot = *len;
        }
        self.v6_count = lengths.len() as u8;
    }
}

/// Sets `count` bits from bit `first` on.
fn set_bits(words: &mut [u64], first: u32, count: u32) {
    let (mut bit, end) = (first as usize, first as usize + count as usize);
    while bit < end {
        let (w, b) = (bit / 64, bit % 64);
        let n = (64 - b).min(end - bit);
        let mask = if n == 64 {
            u64::MAX
        } else {
            ((1u64 << n) - 1) << b
        };
        words[w] |= mask;
        bit += n;
    }
}

/// The writes turning `have` into `want`, in two halves run around the trie writes.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    /// Lengths written before anything is added (old and new together).
    grown: FastLengths,
    want_lengths: FastLengths,
    have_lengths: FastLengths,
    /// Changed bitmap words: index, old | new, new.
    words: Vec<(u32, u64, u64)>,
    /// Summary words to write: index, what the map holds, what it holds while the bitmaps
    /// hold the union, what it holds after.
    summary: Vec<(u32, u64, u64, u64)>,
    v4: diff::Plan<FastKeyV4>,
    v4_early: usize,
    v6: diff::Plan<FastKeyV6>,
    v6_early: usize,
}

impl Plan {
    pub fn new(have: &FastState, want: &FastState, cap_v4: usize, cap_v6: usize) -> Plan {
        let v4 = diff::plan(&have.v4_long, &want.v4_long);
        let v6 = diff::plan(&have.v6, &want.v6);
        Plan::build(
            (
                &have.bitmap,
                Some(&have.summary),
                have.lengths,
                have.v4_long.len(),
                have.v6.len(),
            ),
            (&want.bitmap, want.lengths),
            v4,
            v6,
            cap_v4,
            cap_v6,
        )
    }

    /// The same plan as [`Plan::new`], with the hash plans taken from the tries' plans. Only
    /// valid when `have` is what the fast maps hold for the tries' current contents (the state
    /// this controller's previous sync left).
    pub fn from_trie_plans(
        have: &FastSummary,
        want: &FastSummary,
        v4: &TrieChange,
        v6: &TrieChange,
        cap_v4: usize,
        cap_v6: usize,
    ) -> Plan {
        Plan::build(
            (&have.bitmap, None, have.lengths, have.v4_long, have.v6),
            (&want.bitmap, want.lengths),
            keyed(v4, v4_long_key),
            keyed(v6, v6_key),
            cap_v4,
            cap_v6,
        )
    }

    /// `have`'s summary is what the map holds when known to differ from the bitmap's own
    /// (read back from the kernel), else `None`.
    fn build(
        have: (&[u64], Option<&Vec<u64>>, FastLengths, usize, usize),
        want: (&[u64], FastLengths),
        v4: diff::Plan<FastKeyV4>,
        v6: diff::Plan<FastKeyV6>,
        cap_v4: usize,
        cap_v6: usize,
    ) -> Plan {
        let (have_bitmap, have_summary, have_lengths, have_v4_long, have_v6) = have;
        let (want_bitmap, want_lengths) = want;
        let mut grown = want_lengths;
        grown.v4_long |= have_lengths.v4_long;
        grown.v6_unfiltered |= have_lengths.v6_unfiltered;
        match (have_lengths.v6_lengths(), want_lengths.v6_lengths()) {
            (Some(a), Some(b)) => grown.set_v6(&a.union(&b).copied().collect()),
            _ => {
                grown.v6_count = FAST_V6_USE_TRIE;
                grown.v6 = [0; FAST_V6_MAX_LENGTHS];
            }
        }
        if want_lengths.v6_count == FAST_V6_USE_TRIE {
            log::warn!(
                "the allowlist uses more than {FAST_V6_MAX_LENGTHS} distinct IPv6 prefix lengths: IPv6 lookups use the LPM trie (slower under a flood)"
            );
        }
        let words = have_bitmap
            .iter()
            .zip(want_bitmap)
            .enumerate()
            .filter(|(_, (h, w))| h != w)
            .map(|(i, (h, w))| (i as u32, h | w, *w))
            .collect();
        // The summary covers the bitmaps' union (the old bits stay in the kernel until the
        // shrink), whatever the map held before.
        let derived = fast_summary(have_bitmap);
        let held: &[u64] = have_summary.map_or(&derived, |s| s);
        let after = fast_summary(want_bitmap);
        let summary = (0..FAST_SUMMARY_WORDS as usize)
            .map(|i| (i as u32, held[i], derived[i] | after[i], after[i]))
            .filter(|(_, held, during, after)| held != during || during != after)
            .collect();
        Plan {
            summary,
            grown,
            want_lengths,
            have_lengths,
            words,
            v4_early: diff::early_removals(&v4, have_v4_long, cap_v4),
            v6_early: diff::early_removals(&v6, have_v6, cap_v6),
            v4,
            v6,
        }
    }

    /// The summary widened first, then the lengths, then the union of old and new bitmap
    /// words, then the hash additions (after the few removals a full map needs to make room).
    pub fn grow(&self, ebpf: &Ebpf) -> Result<()> {
        write_words(
            ebpf,
            maps::FAST_SUMMARY,
            self.summary
                .iter()
                .filter(|(_, held, during, _)| held != during)
                .map(|(i, _, during, _)| (*i, *during)),
        )?;
        if self.grown != self.have_lengths {
            write_lengths(ebpf, &self.grown)?;
        }
        write_words(
            ebpf,
            maps::FAST_BITMAPS,
            self.words.iter().map(|(i, union, _)| (*i, *union)),
        )?;
        let v4_ops = self.v4.removals[..self.v4_early]
            .iter()
            .map(|k| Op::Remove(*k))
            .chain(self.v4.upserts.iter().map(|(k, t)| Op::Upsert(*k, *t)));
        apply(ebpf, maps::FAST_V4_LONG, v4_ops)?;
        let v6_ops = self.v6.removals[..self.v6_early]
            .iter()
            .map(|k| Op::Remove(*k))
            .chain(self.v6.upserts.iter().map(|(k, t)| Op::Upsert(*k, *t)));
        apply(ebpf, maps::FAST_V6, v6_ops)
    }

    /// Hash removals, then the new bitmap words, then the new lengths, then the summary
    /// narrowed.
    pub fn shrink(&self, ebpf: &Ebpf) -> Result<()> {
        let v4_ops = self.v4.removals[self.v4_early..]
            .iter()
            .map(|k| Op::Remove(*k));
        apply(ebpf, maps::FAST_V4_LONG, v4_ops)?;
        let v6_ops = self.v6.removals[self.v6_early..]
            .iter()
            .map(|k| Op::Remove(*k));
        apply(ebpf, maps::FAST_V6, v6_ops)?;
        write_words(
            ebpf,
            maps::FAST_BITMAPS,
            self.words
                .iter()
                .filter(|(_, union, new)| union != new)
                .map(|(i, _, new)| (*i, *new)),
        )?;
        if self.want_lengths != self.grown {
            write_lengths(ebpf, &self.want_lengths)?;
        }
        write_words(
            ebpf,
            maps::FAST_SUMMARY,
            self.summary
                .iter()
                .filter(|(_, _, during, after)| during != after)
                .map(|(i, _, _, after)| (*i, *after)),
        )
    }
}

fn write_lengths(ebpf: &Ebpf, lengths: &FastLengths) -> Result<()> {
    batch::update(
        batch::map_data(map(ebpf, maps::FAST_LENGTHS)?)?,
        &[0u32],
        std::slice::from_ref(lengths),
    )
    .context("writing the fast-path prefix lengths")
}

/// Applies `ops` to the hash `name` in order, in batches (a run of removals, then a run of
/// additions, ...).
fn apply<K: aya::Pod + std::fmt::Debug>(
    ebpf: &Ebpf,
    name: &str,
    ops: impl Iterator<Item = Op<K>>,
) -> Result<()> {
    let data = batch::map_data(map(ebpf, name)?)?;
    let mut upserts: Vec<K> = Vec::new();
    let mut removals: Vec<K> = Vec::new();
    let flush = |upserts: &mut Vec<K>, removals: &mut Vec<K>| -> Result<()> {
        if !removals.is_empty() {
            batch::delete(data, removals)
                .with_context(|| format!("removing {} key(s) from {name}", removals.len()))?;
            removals.clear();
        }
        if !upserts.is_empty() {
            let present = vec![PRESENT; upserts.len()];
            batch::update(data, upserts, &present)
                .with_context(|| format!("adding {} key(s) to {name}", upserts.len()))?;
            upserts.clear();
        }
        Ok(())
    };
    for op in ops {
        match op {
            Op::Upsert(k, _) => upserts.push(k),
            Op::Remove(k) => {
                if !upserts.is_empty() {
                    flush(&mut upserts, &mut removals)?;
                }
                removals.push(k);
            }
        }
    }
    flush(&mut upserts, &mut removals)
}

/// Writes words `(index, value)` of the array `name` in batches.
fn write_words(ebpf: &Ebpf, name: &str, words: impl Iterator<Item = (u32, u64)>) -> Result<()> {
    let (idx, vals): (Vec<u32>, Vec<u64>) = words.unzip();
    if idx.is_empty() {
        return Ok(());
    }
    batch::update(batch::map_data(map(ebpf, name)?)?, &idx, &vals)
        .with_context(|| format!("writing {} word(s) of {name}", idx.len()))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn v4(addr: u32, len: u8) -> Prefix {
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        Prefix::V4 {
            addr: (addr & mask).to_be_bytes(),
            len,
        }
    }

    fn v6(top: u32, len: u8) -> Prefix {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&top.to_be_bytes());
        addr[4] = 0x80;
        let a = u128::from_be_bytes(addr);
        let mask = if len == 0 {
            0
        } else {
            u128::MAX << (128 - len)
        };
        Prefix::V6 {
            addr: (a & mask).to_be_bytes(),
            len,
        }
    }

    /// An allowlist over a small address space (so old and new overlap), every kind of
    /// prefix the fast path treats apart: /24 and shorter, /25../32, IPv6 short and long.
    fn applied() -> impl Strategy<Value = Applied> {
        let p4 = (0u32..64, 12u8..=32, 0u64..3)
            .prop_map(|(a, len, tag)| (v4(0x0a00_0000 | (a << 6), len), tag));
        let p6 = (
            0u32..16,
            prop::sample::select(vec![16u8, 32, 33, 48, 64]),
            0u64..3,
        )
            .prop_map(|(a, len, tag)| (v6(0x2001_0000 | a, len), tag));
        (
            proptest::collection::btree_map(p4.prop_map(|(p, t)| (p, t)), Just(()), 0..40),
            proptest::collection::btree_map(p6, Just(()), 0..20),
        )
            .prop_map(|(a, b)| {
                let mut out = Applied::default();
                let mut m4 = std::collections::BTreeMap::new();
                for ((p, t), ()) in a {
                    m4.insert(p, t);
                }
                let mut m6 = std::collections::BTreeMap::new();
                for ((p, t), ()) in b {
                    m6.insert(p, t);
                }
                out.v4 = m4.into_iter().collect();
                out.v6 = m6.into_iter().collect();
                out
            })
    }

    proptest! {
        #[test]
        fn the_plan_from_the_trie_plans_equals_the_full_diff(have in applied(), want in applied()) {
            let (full_have, full_want) = (FastState::from_applied(&have), FastState::from_applied(&want));
            let full = Plan::new(&full_have, &full_want, 30, 10);
            let (sum_have, sum_want) = (FastSummary::from_applied(&have), FastSummary::from_applied(&want));
            prop_assert_eq!(&sum_have, &full_have.clone().summary());
            prop_assert_eq!(&sum_want, &full_want.clone().summary());
            let (p4, p6) = (diff::plan(&have.v4, &want.v4), diff::plan(&have.v6, &want.v6));
            let quick = Plan::from_trie_plans(
                &sum_have,
                &sum_want,
                &TrieChange::of(&p4, &p4.upserts, false),
                &TrieChange::of(&p6, &p6.upserts, false),
                30,
                10,
            );
            prop_assert_eq!(&quick, &full);
            // A load into empty tries: the upserts are `want` itself.
            let empty = Applied::default();
            let full = Plan::new(&FastState::empty(), &full_want, 30, 10);
            let (e4, e6) = (diff::plan(&empty.v4, &want.v4), diff::plan(&empty.v6, &want.v6));
            let quick = Plan::from_trie_plans(
                &FastSummary::empty(),
                &sum_want,
                &TrieChange::of(&e4, &want.v4, true),
                &TrieChange::of(&e6, &want.v6, true),
                30,
                10,
            );
            prop_assert_eq!(&quick, &full);
        }
    }

    #[test]
    fn the_summary_marks_the_sixteen_bit_blocks_either_ipv4_bitmap_marks() {
        let summary_of = |prefixes: &[Prefix]| -> Vec<u32> {
            let a = Applied {
                v4: prefixes.iter().map(|p| (*p, 0)).collect(),
                ..Applied::default()
            };
            let s = FastState::from_applied(&a).summary;
            (0..1u32 << 16)
                .filter(|g| s[(*g / 64) as usize] & (1 << (g % 64)) != 0)
                .collect()
        };
        // A /24 (whole-/24 bitmap), a /32 (long-prefix filter), a /15 (two /16s).
        assert_eq!(summary_of(&[v4(0xc000_0200, 24)]), vec![0xc000]);
        assert_eq!(summary_of(&[v4(0x0a01_0203, 32)]), vec![0x0a01]);
        assert_eq!(summary_of(&[v4(0x0a02_0000, 15)]), vec![0x0a02, 0x0a03]);
        assert!(summary_of(&[]).is_empty());
    }

    #[test]
    fn set_bits_covers_exactly_the_range() {
        let mut w = vec![0u64; 4];
        set_bits(&mut w, 60, 70);
        let ones: u32 = w.iter().map(|x| x.count_ones()).sum();
        assert_eq!(ones, 70, "70 bits set");
        assert_eq!(w[0], 0xf000_0000_0000_0000);
        assert_eq!(w[1], u64::MAX);
        assert_eq!(w[2], 0b11);
    }

    #[test]
    fn too_many_ipv6_lengths_select_the_trie() {
        let mut l = FastLengths::default();
        l.set_v6(&(32..=48).collect());
        assert_eq!(l.v6_count, FAST_V6_USE_TRIE);
        l.set_v6(&[48, 32, 64].into_iter().collect());
        assert_eq!((l.v6_count, &l.v6[..3]), (3, &[64, 48, 32][..]));
    }
}
