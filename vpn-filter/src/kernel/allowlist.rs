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
    pub fn from_allowlist(want: &Allowlist) -> Applied {
        let v4_len = want.v4_count();
        let mut out = Applied {
            v4: Vec::with_capacity(v4_len),
            v6: Vec::with_capacity(want.len() - v4_len),
        };
        for (p, by) in &want.prefixes {
            match p {
                Prefix::V4 { .. } => out.v4.push((*p, by.tag)),
                Prefix::V6 { .. } => out.v6.push((*p, by.tag)),
            }
        }
        out
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}
