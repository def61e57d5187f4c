//! The allowlist as the kernel holds it.

use crate::registry::{Allowlist, Prefix};

/// The allowlist as written to the kernel, per family, sorted by prefix.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub v4: Vec<(Prefix, u64)>,
    pub v6: Vec<(Prefix, u64)>,
}

impl Applied {
    /// The allowlist's prefixes and tags split by family (already sorted: IPv4 sorts first).
    /// One walk of the map: counting the IPv4 prefixes first would walk it twice.
    pub fn from_allowlist(want: &Allowlist) -> Applied {
        Self::from_allowlist_sized(want, 0)
    }

    /// As [`Applied::from_allowlist`], reserving `v4_hint` IPv4 slots up front (the previous
    /// sync's count, so a small change never regrows the vector).
    pub fn from_allowlist_sized(want: &Allowlist, v4_hint: usize) -> Applied {
        let v4_cap = v4_hint.min(want.len());
        let mut out = Applied {
            v4: Vec::with_capacity(v4_cap),
            v6: Vec::new(),
        };
        let mut it = want.prefixes.iter();
        for (p, by) in it.by_ref() {
            match p {
                Prefix::V4 { .. } => out.v4.push((*p, by.tag)),
                Prefix::V6 { .. } => {
                    out.v6.reserve_exact(want.len() - out.v4.len());
                    out.v6.push((*p, by.tag));
                    break;
                }
            }
        }
        out.v6.extend(it.map(|(p, by)| (*p, by.tag)));
        out
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}
