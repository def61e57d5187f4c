//! The known-endpoint maps: `VPN_ENDPOINTS_V4`/`_V6` (LPM tries, provider id and scope per
//! prefix) and the `ENDPOINT_BITMAP` and `ENDPOINT_SUMMARY` filters in front of them, written
//! add-before-remove like the allowlist; and the per-provider counters in `ENDPOINT_STATS`.

use anyhow::{bail, Context as _, Result};
use aya::maps::{
    lpm_trie::{Key, LpmTrie},
    Array, MapData, PerCpuArray,
};
use vpn_filter_common::{
    endpoint_counter_index, endpoint_summary, maps, EndpointValue, DEFAULT_ENDPOINT_V4_ENTRIES,
    DEFAULT_ENDPOINT_V6_ENTRIES, ENDPOINT_BITMAP_V6, ENDPOINT_BITMAP_WORDS, ENDPOINT_SUMMARY_WORDS,
};

use super::{batch, diff, Filter};
use crate::{
    endpoints::EndpointSet,
    registry::{
        sync::{Apply, SyncReport},
        Prefix,
    },
};

/// What the endpoint maps hold, as last written by this controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointsApplied {
    pub v4: Vec<(Prefix, u64)>,
    pub v6: Vec<(Prefix, u64)>,
    pub bitmap: Vec<u64>,
    /// `ENDPOINT_SUMMARY`: derived from `bitmap`, except when read back from the kernel
    /// (what the map holds: a summary created after the other maps were pinned is empty).
    pub summary: Vec<u64>,
}

impl EndpointsApplied {
    /// Freshly created maps: nothing listed.
    pub fn empty() -> EndpointsApplied {
        EndpointsApplied {
            v4: Vec::new(),
            v6: Vec::new(),
            bitmap: vec![0; ENDPOINT_BITMAP_WORDS as usize],
            summary: vec![0; ENDPOINT_SUMMARY_WORDS as usize],
        }
    }

    fn from_lists(v4: Vec<(Prefix, u64)>, v6: Vec<(Prefix, u64)>) -> EndpointsApplied {
        let mut bitmap = vec![0u64; ENDPOINT_BITMAP_WORDS as usize];
        for (p, _) in v4.iter().chain(v6.iter()) {
            mark(&mut bitmap, p);
        }
        let summary = endpoint_summary(&bitmap).to_vec();
        EndpointsApplied {
            v4,
            v6,
            bitmap,
            summary,
        }
    }

    /// The set's prefixes and values split by family, and its bitmap.
    pub fn from_set(set: &EndpointSet) -> EndpointsApplied {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for (p, v) in &set.prefixes {
            match p {
                Prefix::V4 { .. } => v4.push((*p, v.tag())),
                Prefix::V6 { .. } => v6.push((*p, v.tag())),
            }
        }
        EndpointsApplied::from_lists(v4, v6)
    }
}

/// Sets the bitmap bits of every /24 (IPv4) or top-24-bit block (IPv6) `p` overlaps.
fn mark(bitmap: &mut [u64], p: &Prefix) {
    let (base, top24, len) = match p {
        Prefix::V4 { addr, len } => (
            0u64,
            u32::from_be_bytes([0, addr[0], addr[1], addr[2]]),
            *len,
        ),
        Prefix::V6 { addr, len } => (
            u64::from(ENDPOINT_BITMAP_V6) * 64,
            u32::from_be_bytes([0, addr[0], addr[1], addr[2]]),
            *len,
        ),
    };
    let count: u64 = if len >= 24 { 1 } else { 1 << (24 - len) };
    let first = base + u64::from(top24);
    let mut bit = first;
    while bit < first + count {
        let word = (bit / 64) as usize;
        if bit % 64 == 0 && first + count - bit >= 64 {
            bitmap[word] = u64::MAX;
            bit += 64;
        } else {
            bitmap[word] |= 1 << (bit % 64);
            bit += 1;
        }
    }
}

impl Filter {
    /// Makes the endpoint maps hold `want`: bitmap bits for the union first (the bitmap, then
    /// its summary), then the tries' additions and changes, then their removals, then the
    /// bitmap and the summary reduced to `want`. A listed address is never missing during a
    /// sync (an address moving between providers keeps a listing); a stale bit only costs a
    /// lookup further on. On failure the next sync reads the kernel's tries again.
    pub fn sync_endpoints(&mut self, want: &EndpointSet) -> Result<SyncReport> {
        let want = EndpointsApplied::from_set(want);
        let (cap_v4, cap_v6) = (
            DEFAULT_ENDPOINT_V4_ENTRIES as usize,
            DEFAULT_ENDPOINT_V6_ENTRIES as usize,
        );
        if want.v4.len() > cap_v4 || want.v6.len() > cap_v6 {
            bail!(
                "the endpoint feed lists {} IPv4 and {} IPv6 prefixes; the endpoint maps hold at most {cap_v4} and {cap_v6}; nothing was changed",
                want.v4.len(),
                want.v6.len()
            );
        }
        let mut report = SyncReport {
            v4: want.v4.len(),
            v6: want.v6.len(),
            ..Default::default()
        };
        let have = match self.endpoints.take() {
            Some(h) => h,
            None => {
                report.read_kernel = true;
                self.read_endpoints()?
            }
        };
        let plan_v4 = diff::plan(&have.v4, &want.v4);
        let plan_v6 = diff::plan(&have.v6, &want.v6);
        let early_v4 = diff::early_removals(&plan_v4, have.v4.len(), cap_v4);
        let early_v6 = diff::early_removals(&plan_v6, have.v6.len(), cap_v6);
        report.added = plan_v4.added + plan_v6.added;
        report.changed = plan_v4.changed() + plan_v6.changed();
        report.removed = plan_v4.removals.len() + plan_v6.removals.len();
        report.removed_first = early_v4 + early_v6;
        let union: Vec<u64> = have
            .bitmap
            .iter()
            .zip(&want.bitmap)
            .map(|(h, w)| h | w)
            .collect();
        let union_summary = endpoint_summary(&union);
        let result = (|| -> Result<()> {
            self.write_words(maps::ENDPOINT_BITMAP, &have.bitmap, &union)?;
            self.write_words(maps::ENDPOINT_SUMMARY, &have.summary, &union_summary)?;
            let (first_v4, rest_v4) = plan_v4.removals.split_at(early_v4);
            let (first_v6, rest_v6) = plan_v6.removals.split_at(early_v6);
            self.write_endpoint_trie::<[u8; 4]>(maps::VPN_ENDPOINTS_V4, &[], first_v4)?;
            self.write_endpoint_trie::<[u8; 16]>(maps::VPN_ENDPOINTS_V6, &[], first_v6)?;
            self.write_endpoint_trie::<[u8; 4]>(maps::VPN_ENDPOINTS_V4, &plan_v4.upserts, &[])?;
            self.write_endpoint_trie::<[u8; 16]>(maps::VPN_ENDPOINTS_V6, &plan_v6.upserts, &[])?;
            self.write_endpoint_trie::<[u8; 4]>(maps::VPN_ENDPOINTS_V4, &[], rest_v4)?;
            self.write_endpoint_trie::<[u8; 16]>(maps::VPN_ENDPOINTS_V6, &[], rest_v6)?;
            self.write_words(maps::ENDPOINT_BITMAP, &union, &want.bitmap)?;
            self.write_words(maps::ENDPOINT_SUMMARY, &union_summary, &want.summary)?;
            Ok(())
        })();
        result?;
        self.endpoints = Some(want);
        Ok(report)
    }

    /// Writes the words of `want` that differ from `have` into the array map `name`.
    fn write_words(&mut self, name: &str, have: &[u64], want: &[u64]) -> Result<()> {
        let mut words: Array<&mut MapData, u64> = Array::try_from(self.map_mut(name)?)?;
        for (i, (h, w)) in have.iter().zip(want).enumerate() {
            if h != w {
                words
                    .set(i as u32, *w, 0)
                    .with_context(|| format!("writing word {i} of {name}"))?;
            }
        }
        Ok(())
    }

    fn write_endpoint_trie<K: aya::Pod>(
        &mut self,
        name: &str,
        upserts: &[(Prefix, u64)],
        removals: &[Prefix],
    ) -> Result<()>
    where
        Prefix: super::TrieKey<K>,
    {
        use super::TrieKey as _;
        let mut trie: LpmTrie<&mut MapData, K, EndpointValue> =
            LpmTrie::try_from(self.map_mut(name)?)?;
        for (p, tag) in upserts {
            trie.insert(&p.trie_key(), EndpointValue::from_tag(*tag), 0)
                .with_context(|| format!("adding {p} to the endpoint list"))?;
        }
        for p in removals {
            match trie.remove(&p.trie_key()) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(aya::maps::MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => {
                    return Err(anyhow::Error::new(e)
                        .context(format!("removing {p} from the endpoint list")))
                }
            }
        }
        Ok(())
    }

    /// What the kernel's endpoint tries hold (the bitmap is derived from them).
    pub fn read_endpoints(&self) -> Result<EndpointsApplied> {
        fn read<K: aya::Pod>(
            filter: &Filter,
            name: &str,
            prefix: impl Fn(K, u8) -> Prefix,
        ) -> Result<Vec<(Prefix, u64)>> {
            // In batches, as the allowlist is read back (not two system calls per entry).
            let entries =
                batch::lookup_all::<Key<K>, EndpointValue>(batch::map_data(filter.map(name)?)?)
                    .context("reading the endpoint list (BPF_MAP_LOOKUP_BATCH)")?;
            let mut out: Vec<(Prefix, u64)> = entries
                .into_iter()
                .map(|(k, v)| (prefix(k.data(), k.prefix_len() as u8), v.tag()))
                .collect();
            out.sort_unstable_by_key(|(p, _)| *p);
            out.dedup_by_key(|(p, _)| *p);
            Ok(out)
        }
        let v4 = read(self, maps::VPN_ENDPOINTS_V4, |addr, len| Prefix::V4 {
            addr,
            len,
        })?;
        let v6 = read(self, maps::VPN_ENDPOINTS_V6, |addr, len| Prefix::V6 {
            addr,
            len,
        })?;
        let mut applied = EndpointsApplied::from_lists(v4, v6);
        // The summary as the kernel holds it, so that the next sync writes what it lacks.
        for (i, w) in
            batch::lookup_all::<u32, u64>(batch::map_data(self.map(maps::ENDPOINT_SUMMARY)?)?)
                .context("reading the endpoint summary")?
        {
            if let Some(slot) = applied.summary.get_mut(i as usize) {
                *slot = w;
            }
        }
        Ok(applied)
    }

    /// The kernel's endpoint answer for `ip` (trie only).
    pub fn lookup_endpoint(&self, ip: std::net::IpAddr) -> Result<Option<EndpointValue>> {
        let r = match crate::registry::canonical_ip(ip) {
            std::net::IpAddr::V4(a) => {
                let t: LpmTrie<&MapData, [u8; 4], EndpointValue> =
                    LpmTrie::try_from(self.map(maps::VPN_ENDPOINTS_V4)?)?;
                t.get(&Key::new(32, a.octets()), 0)
            }
            std::net::IpAddr::V6(a) => {
                let t: LpmTrie<&MapData, [u8; 16], EndpointValue> =
                    LpmTrie::try_from(self.map(maps::VPN_ENDPOINTS_V6)?)?;
                t.get(&Key::new(128, a.octets()), 0)
            }
        };
        match r {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The bitmap as the kernel holds it (for tests).
    pub fn endpoint_bitmap_word(&self, index: u32) -> Result<u64> {
        let a: Array<&MapData, u64> = Array::try_from(self.map(maps::ENDPOINT_BITMAP)?)?;
        Ok(a.get(&index, 0)?)
    }

    /// Packets (dropped, monitored) per provider id `1..=providers`, summed over CPUs.
    pub fn endpoint_stats(&self, providers: usize) -> Result<Vec<(u64, u64)>> {
        let map: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.map(maps::ENDPOINT_STATS)?)?;
        read_endpoint_stats(&map, providers)
    }
}

/// Packets (dropped, monitored) for provider ids `1..=providers`.
pub fn read_endpoint_stats<T: std::borrow::Borrow<MapData>>(
    map: &PerCpuArray<T, u64>,
    providers: usize,
) -> Result<Vec<(u64, u64)>> {
    let sum = |i: u32| -> Result<u64> { Ok(map.get(&i, 0)?.iter().sum()) };
    (1..=providers as u16)
        .map(|id| {
            Ok((
                sum(endpoint_counter_index(id, false))?,
                sum(endpoint_counter_index(id, true))?,
            ))
        })
        .collect()
}

impl Apply<EndpointSet> for Filter {
    fn apply(&mut self, set: &EndpointSet) -> Result<SyncReport> {
        let report = self.sync_endpoints(set)?;
        crate::endpoints::set_provider_names(&set.providers);
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(p: &str) -> Vec<u64> {
        let mut b = vec![0u64; ENDPOINT_BITMAP_WORDS as usize];
        mark(&mut b, &p.parse().unwrap());
        let mut set = Vec::new();
        for (i, w) in b.iter().enumerate() {
            for j in 0..64 {
                if w & (1 << j) != 0 {
                    set.push(i as u64 * 64 + j);
                }
            }
        }
        set
    }

    #[test]
    fn bitmap_marks_every_block_a_prefix_overlaps() {
        assert_eq!(bits("192.0.2.7/32"), vec![0xc00002]);
        assert_eq!(bits("192.0.2.0/24"), vec![0xc00002]);
        assert_eq!(
            bits("192.0.0.0/22"),
            (0xc00000..0xc00004).collect::<Vec<_>>()
        );
        assert_eq!(bits("10.0.0.0/16").len(), 256);
        let v6 = u64::from(ENDPOINT_BITMAP_V6) * 64;
        assert_eq!(bits("2001:db8::1/128"), vec![v6 + 0x20010d]);
        assert_eq!(bits("2001:db8::/32"), vec![v6 + 0x20010d]);
        assert_eq!(bits("2001::/16").len(), 256);
    }

    /// The summary bits set for a prefix: its IPv4 /16s (or IPv6 top-16-bit blocks), numbered
    /// from the IPv6 region's first group for IPv6.
    fn summary_bits(p: &str) -> Vec<u64> {
        let mut b = vec![0u64; ENDPOINT_BITMAP_WORDS as usize];
        mark(&mut b, &p.parse().unwrap());
        let s = endpoint_summary(&b);
        (0..s.len() as u64 * 64)
            .filter(|g| s[(*g / 64) as usize] & (1 << (g % 64)) != 0)
            .collect()
    }

    #[test]
    fn summary_marks_the_sixteen_bit_blocks_that_hold_a_listing() {
        let v6 = u64::from(ENDPOINT_BITMAP_V6) / 4;
        assert_eq!(summary_bits("192.0.2.7/32"), vec![0xc000]);
        assert_eq!(summary_bits("192.0.255.0/24"), vec![0xc000]);
        assert_eq!(summary_bits("192.0.0.0/15"), vec![0xc000, 0xc001]);
        assert_eq!(summary_bits("2001:db8::1/128"), vec![v6 + 0x2001]);
        assert_eq!(summary_bits("2001:ff00::/24"), vec![v6 + 0x2001]);
        assert!(summary_bits("0.0.0.0/0").len() == 1 << 16);
    }
}
