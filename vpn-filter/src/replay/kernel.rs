//! The kernel side of a replay: the program's counters read in one syscall, and its flow map.

use std::os::fd::{AsFd as _, AsRawFd as _, RawFd};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::maps::{HashMap, Map, MapData, MapError};
use vpn_filter_common::{maps, FlowKey, FlowState, Protocol, FLOW_CLASS_DATA, STATS_LEN};

use crate::kernel::Filter;

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// The `batch` member of the kernel's `union bpf_attr` (BPF_MAP_*_BATCH commands).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Reads a range of the per-CPU `STATS` array (every possible CPU) with one
/// BPF_MAP_LOOKUP_BATCH, instead of one lookup syscall per slot.
pub struct StatsReader {
    fd: RawFd,
    cpus: usize,
    keys: Vec<u32>,
    raw: Vec<u64>,
}

impl StatsReader {
    pub fn new(filter: &Filter) -> Result<StatsReader> {
        let fd = match filter.map(maps::STATS)? {
            Map::PerCpuArray(data) => data.fd().as_fd().as_raw_fd(),
            _ => bail!("map {} is not a per-CPU array", maps::STATS),
        };
        let cpus = aya::util::nr_cpus().map_err(|(path, e)| anyhow!("reading {path}: {e}"))?;
        Ok(StatsReader {
            fd,
            cpus,
            keys: vec![0; STATS_LEN as usize],
            raw: vec![0; STATS_LEN as usize * cpus],
        })
    }

    /// Slots `first..first + out.len()`, each summed over CPUs, into `out`.
    pub fn read(&mut self, first: u32, out: &mut [u64]) -> Result<()> {
        let count = out.len() as u32;
        assert!(first + count <= STATS_LEN, "STATS has {STATS_LEN} slots");
        // Batches resume after the key in `in_batch`; none means from the first slot.
        let mut resume_after = first.wrapping_sub(1);
        let mut out_batch = 0u32;
        let mut attr = BatchAttr {
            in_batch: if first == 0 {
                0
            } else {
                &mut resume_after as *mut u32 as u64
            },
            out_batch: &mut out_batch as *mut u32 as u64,
            keys: self.keys.as_mut_ptr() as u64,
            values: self.raw.as_mut_ptr() as u64,
            count,
            map_fd: self.fd as u32,
            ..Default::default()
        };
        // SAFETY: `attr` is the kernel's batch attribute layout (the size passed covers
        // exactly these fields; the kernel zero-fills the rest of its union). `keys` has room
        // for STATS_LEN u32 keys and `raw` for STATS_LEN values of 8 bytes per possible CPU,
        // at least what the kernel writes for `count` elements of a per-CPU u64 array;
        // `in_batch` and `out_batch` point to 4-byte keys. The map fd stays open while the
        // Filter it was borrowed from lives, which outlives this reader.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>() as u32,
            )
        };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            // ENOENT means the end of the map was reached; complete if every slot came.
            if err.raw_os_error() != Some(libc::ENOENT) || attr.count != count {
                return Err(err).context("reading the STATS counters (BPF_MAP_LOOKUP_BATCH)");
            }
        }
        for (i, key) in self.keys[..count as usize].iter().enumerate() {
            if let Some(slot) = key.checked_sub(first).and_then(|k| out.get_mut(k as usize)) {
                *slot = self.raw[i * self.cpus..(i + 1) * self.cpus].iter().sum();
            }
        }
        Ok(())
    }
}

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
