//! Synthetic registries: allowlists of a given size with a realistic mix of prefix lengths,
//! spread over the whole unicast space, and addresses that are known to hit or miss them.
//!
//! IPv4: 70% /32 (single office or server addresses), 30% /24../29 (small assigned blocks).
//! IPv6: 10% /128, 60% /48 (a site), 30% /56../64. Prefixes are grouped four to an entry, as
//! a registry lists several addresses per holder.

use std::{
    collections::{BTreeMap, HashSet},
    net::{Ipv4Addr, Ipv6Addr},
};

use vpn_filter::registry::{AllowedBy, Allowlist, Prefix};

use super::util::Rng;

/// Prefixes per registry entry.
const PER_ENTRY: usize = 4;

#[derive(Clone)]
pub struct Registry {
    /// (network address, length), in generation order.
    pub v4: Vec<(u32, u8)>,
    pub v6: Vec<(u128, u8)>,
    set4: HashSet<(u8, u32)>,
    set6: HashSet<(u8, u128)>,
}

fn mask4(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - len)
    }
}

fn mask6(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    }
}

/// A random global unicast IPv4 address (not 0/8, 10/8, 127/8, 224/3).
pub fn unicast4(rng: &mut Rng) -> u32 {
    loop {
        let a = rng.next_u32();
        let top = a >> 24;
        if top != 0 && top != 10 && top != 127 && top < 224 {
            return a;
        }
    }
}

/// A random address in 2000::/3.
pub fn unicast6(rng: &mut Rng) -> u128 {
    let a = ((rng.next_u64() as u128) << 64) | rng.next_u64() as u128;
    (a >> 3) | (1u128 << 125)
}

const LENS4: [u8; 7] = [24, 25, 26, 27, 28, 29, 32];
const LENS6: [u8; 11] = [48, 56, 57, 58, 59, 60, 61, 62, 63, 64, 128];

impl Registry {
    /// `v4` IPv4 and `v6` IPv6 distinct prefixes.
    pub fn generate(v4: usize, v6: usize, seed: u64) -> Registry {
        let mut r = Registry {
            v4: Vec::with_capacity(v4),
            v6: Vec::with_capacity(v6),
            set4: HashSet::with_capacity(v4),
            set6: HashSet::with_capacity(v6),
        };
        let mut rng = Rng::new(seed);
        while r.v4.len() < v4 {
            r.add4(&mut rng);
        }
        while r.v6.len() < v6 {
            r.add6(&mut rng);
        }
        r
    }

    fn add4(&mut self, rng: &mut Rng) {
        let len = if rng.range(0, 99) < 70 {
            32
        } else {
            rng.range(24, 29) as u8
        };
        let addr = unicast4(rng) & mask4(len);
        if self.set4.insert((len, addr)) {
            self.v4.push((addr, len));
        }
    }

    fn add6(&mut self, rng: &mut Rng) {
        let roll = rng.range(0, 99);
        let len = if roll < 10 {
            128
        } else if roll < 70 {
            48
        } else {
            rng.range(56, 64) as u8
        };
        let addr = unicast6(rng) & mask6(len);
        if self.set6.insert((len, addr)) {
            self.v6.push((addr, len));
        }
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// A copy with `fraction` of the prefixes (of each family) removed and as many new ones
    /// added: the "1% change" of a registry update.
    pub fn changed(&self, fraction: f64, seed: u64) -> Registry {
        let mut rng = Rng::new(seed);
        let n4 = (self.v4.len() as f64 * fraction).round() as usize;
        let n6 = (self.v6.len() as f64 * fraction).round() as usize;
        let mut r = self.clone();
        for _ in 0..n4 {
            let i = rng.range(0, r.v4.len() as u64 - 1) as usize;
            let (a, l) = r.v4.swap_remove(i);
            r.set4.remove(&(l, a));
        }
        for _ in 0..n6 {
            let i = rng.range(0, r.v6.len() as u64 - 1) as usize;
            let (a, l) = r.v6.swap_remove(i);
            r.set6.remove(&(l, a));
        }
        let (want4, want6) = (self.v4.len(), self.v6.len());
        while r.v4.len() < want4 {
            r.add4(&mut rng);
        }
        while r.v6.len() < want6 {
            r.add6(&mut rng);
        }
        r
    }

    /// The allowlist the controller would build from this registry. A prefix's entry depends
    /// on the prefix alone, so a changed registry keeps the tags of the prefixes it keeps.
    pub fn allowlist(&self) -> Allowlist {
        let entries = (self.len() / PER_ENTRY).max(1) as u64;
        let mut prefixes = BTreeMap::new();
        let all = self
            .v4
            .iter()
            .map(|(a, l)| Prefix::V4 {
                addr: a.to_be_bytes(),
                len: *l,
            })
            .chain(self.v6.iter().map(|(a, l)| Prefix::V6 {
                addr: a.to_be_bytes(),
                len: *l,
            }));
        for p in all {
            let key = match p {
                Prefix::V4 { addr, len } => {
                    vpn_filter_common::entry_tag(&[&addr[..], &[len]].concat())
                }
                Prefix::V6 { addr, len } => {
                    vpn_filter_common::entry_tag(&[&addr[..], &[len]].concat())
                }
            };
            let entry = format!("bench-{}", key % entries);
            let tag = vpn_filter_common::entry_tag(entry.as_bytes());
            prefixes.insert(
                p,
                AllowedBy {
                    id: entry.as_str().into(),
                    tag,
                },
            );
        }
        Allowlist { prefixes }
    }

    pub fn covers4(&self, a: u32) -> bool {
        LENS4
            .iter()
            .any(|&l| self.set4.contains(&(l, a & mask4(l))))
    }

    pub fn covers6(&self, a: u128) -> bool {
        LENS6
            .iter()
            .any(|&l| self.set6.contains(&(l, a & mask6(l))))
    }

    /// A random address inside a random allowed IPv4 prefix.
    pub fn hit4(&self, rng: &mut Rng) -> Ipv4Addr {
        let (a, l) = self.v4[rng.range(0, self.v4.len() as u64 - 1) as usize];
        Ipv4Addr::from(a | (rng.next_u32() & !mask4(l)))
    }

    pub fn hit6(&self, rng: &mut Rng) -> Ipv6Addr {
        let (a, l) = self.v6[rng.range(0, self.v6.len() as u64 - 1) as usize];
        let r = ((rng.next_u64() as u128) << 64) | rng.next_u64() as u128;
        Ipv6Addr::from(a | (r & !mask6(l)))
    }

    /// A random unicast IPv4 address no allowed prefix covers.
    pub fn miss4(&self, rng: &mut Rng) -> Ipv4Addr {
        loop {
            let a = unicast4(rng);
            if !self.covers4(a) {
                return Ipv4Addr::from(a);
            }
        }
    }

    pub fn miss6(&self, rng: &mut Rng) -> Ipv6Addr {
        loop {
            let a = unicast6(rng);
            if !self.covers6(a) {
                return Ipv6Addr::from(a);
            }
        }
    }

    /// Shares of each IPv4 prefix length, for the report: "/32 70%, /24-/29 30%".
    pub fn describe(&self) -> String {
        let n4 = self.v4.len().max(1) as f64;
        let n6 = self.v6.len().max(1) as f64;
        let p32 = self.v4.iter().filter(|(_, l)| *l == 32).count() as f64 / n4 * 100.0;
        let p128 = self.v6.iter().filter(|(_, l)| *l == 128).count() as f64 / n6 * 100.0;
        let p48 = self.v6.iter().filter(|(_, l)| *l == 48).count() as f64 / n6 * 100.0;
        format!(
            "IPv4 {:.0}% /32, {:.0}% /24-/29; IPv6 {:.0}% /48, {:.0}% /56-/64, {:.0}% /128",
            p32,
            100.0 - p32,
            p48,
            100.0 - p48 - p128,
            p128
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_are_covered_and_misses_are_not() {
        let r = Registry::generate(2000, 500, 1);
        let mut rng = Rng::new(2);
        for _ in 0..1000 {
            assert!(r.covers4(u32::from(r.hit4(&mut rng))));
            assert!(!r.covers4(u32::from(r.miss4(&mut rng))));
            assert!(r.covers6(u128::from(r.hit6(&mut rng))));
            assert!(!r.covers6(u128::from(r.miss6(&mut rng))));
        }
    }

    #[test]
    fn a_change_keeps_the_size_and_replaces_the_fraction() {
        let r = Registry::generate(10_000, 1000, 1);
        let c = r.changed(0.01, 9);
        assert_eq!((c.v4.len(), c.v6.len()), (10_000, 1000));
        let kept = c.v4.iter().filter(|p| r.set4.contains(&(p.1, p.0))).count();
        assert!((9_890..=9_910).contains(&kept), "kept {kept}");
    }
}
