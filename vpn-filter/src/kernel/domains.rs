//! The listed-domain map of the `tls_sni` rule (`TLS_SNI_DOMAINS`): one hash per listed
//! domain. A domain that stays listed is never touched; delisted ones are removed before new
//! ones are added, so a list of up to the map's capacity always fits, whatever it replaces.

use std::collections::BTreeSet;

use anyhow::{Context as _, Result};
use aya::maps::{HashMap, MapData};
use vpn_filter_common::maps;

use super::Filter;
use crate::domains::DomainList;

/// What a sync changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DomainsReport {
    pub domains: usize,
    pub added: usize,
    pub removed: usize,
}

impl Filter {
    /// Makes `TLS_SNI_DOMAINS` hold exactly `list`'s hashes.
    pub fn sync_vpn_domains(&mut self, list: &DomainList) -> Result<DomainsReport> {
        let want: BTreeSet<u64> = list.hashes().into_iter().collect();
        let mut map: HashMap<&mut MapData, u64, u32> =
            HashMap::try_from(self.map_mut(maps::TLS_SNI_DOMAINS)?)?;
        let have: BTreeSet<u64> = map
            .keys()
            .collect::<Result<_, _>>()
            .context("reading TLS_SNI_DOMAINS")?;
        let mut report = DomainsReport {
            domains: want.len(),
            ..Default::default()
        };
        // Removals first: adding first would need room for both lists (a new list of
        // 16,000 domains replacing another failed at the 385th insert and left the map
        // holding the old list and part of the new one).
        for h in have.difference(&want) {
            map.remove(h).context("removing from TLS_SNI_DOMAINS")?;
            report.removed += 1;
        }
        for h in want.difference(&have) {
            map.insert(h, 1, 0)
                .context("writing TLS_SNI_DOMAINS (its capacity is SNI_DOMAIN_ENTRIES)")?;
            report.added += 1;
        }
        Ok(report)
    }
}
