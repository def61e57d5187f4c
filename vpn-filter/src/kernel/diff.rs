//! The allowlist diff, as a pure function: what to write to make a trie holding `have` hold
//! `want`. Kept apart from the map code so its properties are tested on the host.
//!
//! Both sets are slices sorted by key with unique keys (as read from a `BTreeMap`, or sorted
//! once after reading the kernel), so the diff is one merge pass with no lookups and no
//! allocation besides the plan itself.

/// What a sync writes: upserts (new keys and re-tagged keys), then removals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan<K> {
    /// Keys to write with their tag, in key order.
    pub upserts: Vec<(K, u64)>,
    /// Keys to delete, in key order.
    pub removals: Vec<K>,
    /// Of the upserts, how many keys are new (the rest change tag in place).
    pub added: usize,
    /// Per upsert, whether its key is new (false: re-tagged in place). Lets a derived
    /// structure keyed by the same keys (the fast-path hashes) take its own plan from this one
    /// instead of diffing a million keys again.
    pub is_new: Vec<bool>,
}

impl<K> Plan<K> {
    pub fn changed(&self) -> usize {
        self.upserts.len() - self.added
    }

    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.removals.is_empty()
    }
}

/// The plan turning `have` into `want` (both sorted by key, keys unique).
pub fn plan<K: Ord + Copy>(have: &[(K, u64)], want: &[(K, u64)]) -> Plan<K> {
    debug_assert!(have.windows(2).all(|w| w[0].0 < w[1].0), "have is sorted");
    debug_assert!(want.windows(2).all(|w| w[0].0 < w[1].0), "want is sorted");
    let mut p = Plan {
        upserts: Vec::new(),
        removals: Vec::new(),
        added: 0,
        is_new: Vec::new(),
    };
    let (mut i, mut j) = (0, 0);
    while i < have.len() || j < want.len() {
        match (have.get(i), want.get(j)) {
            (Some(h), Some(w)) if h.0 == w.0 => {
                if h.1 != w.1 {
                    p.upserts.push(*w);
                    p.is_new.push(false);
                }
                i += 1;
                j += 1;
            }
            (Some(h), Some(w)) if h.0 < w.0 => {
                p.removals.push(h.0);
                i += 1;
            }
            (Some(_), Some(w)) | (None, Some(w)) => {
                p.upserts.push(*w);
                p.is_new.push(true);
                p.added += 1;
                j += 1;
            }
            (Some(h), None) => {
                p.removals.push(h.0);
                i += 1;
            }
            (None, None) => unreachable!("loop condition"),
        }
    }
    p
}

/// One write to the trie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op<K> {
    Upsert(K, u64),
    Remove(K),
}

/// The order in which a plan is written. Upserts come before removals, so a key that stays is
/// never missing and an address moving from a removed prefix to an added one stays covered.
/// When the trie cannot hold `have` plus the additions at once (`capacity`), the fewest
/// removals needed to make room go first: those keys leave the allowlist anyway.
pub fn schedule<K: Copy>(
    plan: &Plan<K>,
    have_len: usize,
    capacity: usize,
) -> impl Iterator<Item = Op<K>> + '_ {
    let peak = have_len + plan.added;
    let early = peak.saturating_sub(capacity).min(plan.removals.len());
    let (first, rest) = plan.removals.split_at(early);
    first
        .iter()
        .map(|k| Op::Remove(*k))
        .chain(plan.upserts.iter().map(|(k, t)| Op::Upsert(*k, *t)))
        .chain(rest.iter().map(|k| Op::Remove(*k)))
}

/// How many removals [`schedule`] puts before the upserts.
pub fn early_removals<K>(plan: &Plan<K>, have_len: usize, capacity: usize) -> usize {
    (have_len + plan.added)
        .saturating_sub(capacity)
        .min(plan.removals.len())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    /// A set as the kernel would hold it: sorted, unique keys. Small key space so old and new
    /// sets overlap a lot; few tags so re-tagging happens.
    fn set() -> impl Strategy<Value = Vec<(u16, u64)>> {
        proptest::collection::btree_map(0u16..400, 0u64..3, 0..200)
            .prop_map(|m| m.into_iter().collect())
    }

    fn run(have: &[(u16, u64)], ops: impl Iterator<Item = Op<u16>>) -> BTreeMap<u16, u64> {
        let mut trie: BTreeMap<u16, u64> = have.iter().copied().collect();
        for op in ops {
            match op {
                Op::Upsert(k, t) => {
                    trie.insert(k, t);
                }
                Op::Remove(k) => {
                    assert!(trie.remove(&k).is_some(), "removing {k}, which is absent");
                }
            }
        }
        trie
    }

    proptest! {
        #[test]
        fn applying_the_plan_to_the_old_set_yields_exactly_the_new_set(have in set(), want in set()) {
            let p = plan(&have, &want);
            let got = run(&have, schedule(&p, have.len(), usize::MAX));
            let want_map: BTreeMap<u16, u64> = want.iter().copied().collect();
            prop_assert_eq!(got, want_map);
        }

        #[test]
        fn a_key_in_both_sets_is_present_at_every_step(have in set(), want in set()) {
            let p = plan(&have, &want);
            let want_map: BTreeMap<u16, u64> = want.iter().copied().collect();
            let staying: Vec<u16> = have.iter().map(|(k, _)| *k).filter(|k| want_map.contains_key(k)).collect();
            let mut trie: BTreeMap<u16, u64> = have.iter().copied().collect();
            for op in schedule(&p, have.len(), usize::MAX) {
                match op {
                    Op::Upsert(k, t) => { trie.insert(k, t); }
                    Op::Remove(k) => { trie.remove(&k); }
                }
                for k in &staying {
                    prop_assert!(trie.contains_key(k), "key {} missing mid-sync", k);
                }
            }
        }

        #[test]
        fn every_addition_precedes_every_removal_when_capacity_allows(have in set(), want in set()) {
            let p = plan(&have, &want);
            let ops: Vec<Op<u16>> = schedule(&p, have.len(), have.len() + p.added).collect();
            let first_removal = ops.iter().position(|o| matches!(o, Op::Remove(_))).unwrap_or(ops.len());
            prop_assert!(ops[first_removal..].iter().all(|o| matches!(o, Op::Remove(_))));
        }

        #[test]
        fn the_plan_writes_only_what_differs(have in set(), want in set()) {
            let p = plan(&have, &want);
            let have_map: BTreeMap<u16, u64> = have.iter().copied().collect();
            let want_map: BTreeMap<u16, u64> = want.iter().copied().collect();
            for (k, t) in &p.upserts {
                prop_assert_ne!(have_map.get(k), Some(t), "unchanged key {} rewritten", k);
            }
            for k in &p.removals {
                prop_assert!(!want_map.contains_key(k), "wanted key {} removed", k);
            }
            prop_assert_eq!(p.added, want.iter().filter(|(k, _)| !have_map.contains_key(k)).count());
            prop_assert_eq!(p.is_new.len(), p.upserts.len());
            for ((k, _), new) in p.upserts.iter().zip(&p.is_new) {
                prop_assert_eq!(*new, !have_map.contains_key(k), "key {} marked new = {}", k, new);
            }
            prop_assert_eq!(p.removals.len(), have.iter().filter(|(k, _)| !want_map.contains_key(k)).count());
        }

        #[test]
        fn a_full_trie_never_exceeds_its_capacity_and_still_ends_exact(have in set(), want in set()) {
            let capacity = have.len().max(want.len());
            let p = plan(&have, &want);
            let mut trie: BTreeMap<u16, u64> = have.iter().copied().collect();
            for op in schedule(&p, have.len(), capacity) {
                match op {
                    Op::Upsert(k, t) => { trie.insert(k, t); }
                    Op::Remove(k) => { trie.remove(&k); }
                }
                prop_assert!(trie.len() <= capacity, "{} entries in a trie of {}", trie.len(), capacity);
            }
            let want_map: BTreeMap<u16, u64> = want.iter().copied().collect();
            prop_assert_eq!(trie, want_map);
        }
    }

    #[test]
    fn identical_sets_need_no_write() {
        let s = [(1u16, 1u64), (2, 2)];
        assert!(plan(&s, &s).is_empty());
    }

    #[test]
    fn a_retagged_key_is_an_upsert_not_an_addition() {
        let p = plan(&[(1u16, 1u64)], &[(1, 2)]);
        assert_eq!(p.upserts, vec![(1, 2)]);
        assert_eq!((p.added, p.changed()), (0, 1));
        assert!(p.removals.is_empty());
    }
}
