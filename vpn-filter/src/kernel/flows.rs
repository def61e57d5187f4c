//! The kernel's flow map, as a replay needs it: emulating flow timeouts on the capture's clock.

use anyhow::{Context as _, Result};
use aya::maps::{HashMap, MapData, MapError};
use vpn_filter_common::{maps, FlowKey, FlowState, Protocol, FLOW_CLASS_DATA};

use super::Filter;

/// The kernel's flow entry for the 5-tuple of `key` (protocol ignored), for emulating flow
/// timeouts on the capture's clock: the kernel keeps one entry per VPN protocol, and the most
/// recently refreshed one speaks for the flow.
pub fn flow_entry(filter: &Filter, key: &FlowKey) -> Result<Option<FlowState>> {
    let map: HashMap<&MapData, FlowKey, FlowState> = HashMap::try_from(filter.map(maps::FLOWS)?)?;
    let mut best: Option<FlowState> = None;
    for k in protocol_keys(key) {
        match map.get(&k, 0) {
            Ok(v) => {
                if best.is_none_or(|b| v.expires_ns > b.expires_ns) {
                    best = Some(v);
                }
            }
            Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(e).context("reading the FLOWS map"),
        }
    }
    Ok(best)
}

/// The keys every protocol's entries (and WireGuard's data class) have for `key`'s 5-tuple.
fn protocol_keys(key: &FlowKey) -> impl Iterator<Item = FlowKey> + '_ {
    Protocol::ALL[1..]
        .iter()
        .map(|p| FlowKey {
            protocol: *p as u8,
            class: 0,
            ..*key
        })
        .chain(std::iter::once(FlowKey {
            protocol: Protocol::WireGuard as u8,
            class: FLOW_CLASS_DATA,
            ..*key
        }))
}

/// Removes every protocol's entry for the 5-tuple of `key`.
pub fn remove_flow(filter: &mut Filter, key: &FlowKey) -> Result<()> {
    let mut map: HashMap<&mut MapData, FlowKey, FlowState> =
        HashMap::try_from(filter.map_mut(maps::FLOWS)?)?;
    for k in protocol_keys(key) {
        // Only the protocols that have an entry (deleting a missing key is an error).
        match map.get(&k, 0) {
            Ok(_) => {}
            Err(MapError::KeyNotFound) => continue,
            Err(e) => return Err(e).context("reading the FLOWS map"),
        }
        match map.remove(&k) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(e).context("removing an expired entry from the FLOWS map"),
        }
    }
    Ok(())
}
