//! The program's counters: [`Stats`], and the one [`StatsReader`] that reads them, for the
//! daemon (status, metrics, the loss report) and for a replay (a range of slots per packet).
//! Slots are read with one BPF_MAP_LOOKUP_BATCH instead of one lookup syscall per slot.

use std::{
    collections::BTreeMap,
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    sync::Mutex,
};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::maps::{Map, MapData, PerCpuArray};
use vpn_filter_common::{
    counter_index, maps, verdict_counter_index, Counter, Protocol, Verdict, STATS_LEN,
};

use super::{
    batch::{self, BatchAttr, BPF_MAP_LOOKUP_BATCH},
    endpoints::read_endpoint_stats,
    Filter,
};

/// An independent handle on the kernel's `STATS` and `ENDPOINT_STATS` maps (its own fds), so
/// counters can be read from any task while the daemon loop owns the [`Filter`].
pub struct StatsReader {
    stats: OwnedFd,
    endpoints: PerCpuArray<MapData, u64>,
    cpus: usize,
    /// Buffers of [`StatsReader::read_range`] (a replay reads per packet).
    buffers: Mutex<Buffers>,
}

struct Buffers {
    keys: Vec<u32>,
    raw: Vec<u64>,
}

impl std::fmt::Debug for StatsReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatsReader").finish_non_exhaustive()
    }
}

impl StatsReader {
    pub fn new(filter: &Filter) -> Result<StatsReader> {
        let clone = |name: &str| -> Result<OwnedFd> {
            match filter.map(name)? {
                Map::PerCpuArray(data) => Ok(data.fd().as_fd().try_clone_to_owned()?),
                _ => bail!("map {name} is not a per-CPU array"),
            }
        };
        let stats = clone(maps::STATS)?;
        let endpoints = PerCpuArray::try_from(Map::PerCpuArray(MapData::from_fd(clone(
            maps::ENDPOINT_STATS,
        )?)?))?;
        let cpus = aya::util::nr_cpus().map_err(|(path, e)| anyhow!("reading {path}: {e}"))?;
        Ok(StatsReader {
            stats,
            endpoints,
            cpus,
            buffers: Mutex::new(Buffers {
                keys: vec![0; STATS_LEN as usize],
                raw: vec![0; STATS_LEN as usize * cpus],
            }),
        })
    }

    /// Every counter, summed over CPUs.
    pub fn read(&self) -> Result<Stats> {
        let mut all = vec![0u64; STATS_LEN as usize];
        self.read_range(0, &mut all)?;
        Ok(Stats::from_slots(&all))
    }

    /// Packets (dropped, monitored) for provider ids `1..=providers`, summed over CPUs.
    pub fn read_providers(&self, providers: usize) -> Result<Vec<(u64, u64)>> {
        read_endpoint_stats(&self.endpoints, providers)
    }

    /// Slots `first..first + out.len()`, each summed over CPUs, into `out`.
    pub fn read_range(&self, first: u32, out: &mut [u64]) -> Result<()> {
        let count = out.len() as u32;
        assert!(first + count <= STATS_LEN, "STATS has {STATS_LEN} slots");
        let mut buffers = self.buffers.lock().unwrap_or_else(|e| e.into_inner());
        let Buffers { keys, raw } = &mut *buffers;
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
            keys: keys.as_mut_ptr() as u64,
            values: raw.as_mut_ptr() as u64,
            count,
            map_fd: self.stats.as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: the map fd is this reader's own. `keys` has room for STATS_LEN u32 keys and
        // `raw` for STATS_LEN values of 8 bytes per possible CPU, at least what the kernel
        // writes for `count` elements of a per-CPU u64 array; `in_batch` and `out_batch`
        // point to 4-byte keys.
        let (done, err) = unsafe { batch::call(BPF_MAP_LOOKUP_BATCH, &mut attr) };
        if let Some(err) = err {
            // ENOENT means the end of the map was reached; complete if every slot came.
            if err.raw_os_error() != Some(libc::ENOENT) || done != count as usize {
                return Err(err).context("reading the STATS counters (BPF_MAP_LOOKUP_BATCH)");
            }
        }
        for (i, key) in keys[..count as usize].iter().enumerate() {
            if let Some(slot) = key.checked_sub(first).and_then(|k| out.get_mut(k as usize)) {
                *slot = raw[i * self.cpus..(i + 1) * self.cpus].iter().sum();
            }
        }
        Ok(())
    }
}

/// Counters read from the kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Non-zero protocol x verdict counts.
    pub verdicts: BTreeMap<(Protocol, Verdict), u64>,
    pub counters: BTreeMap<Counter, u64>,
}

impl Stats {
    /// From the `STATS` slots, each summed over CPUs (indexed as the kernel counts).
    pub fn from_slots(slots: &[u64]) -> Stats {
        let sum = |i: u32| slots.get(i as usize).copied().unwrap_or(0);
        let mut stats = Stats::default();
        for p in Protocol::ALL {
            for v in Verdict::ALL {
                let n = sum(verdict_counter_index(*p, *v));
                if n > 0 {
                    stats.verdicts.insert((*p, *v), n);
                }
            }
        }
        for c in Counter::ALL {
            stats.counters.insert(*c, sum(counter_index(*c)));
        }
        stats
    }

    pub fn verdict(&self, p: Protocol, v: Verdict) -> u64 {
        self.verdicts.get(&(p, v)).copied().unwrap_or(0)
    }

    /// The protocol x verdict counters that moved since `before`, with how much, in
    /// protocol then verdict order.
    pub fn verdicts_since(&self, before: &Stats) -> Vec<(Protocol, Verdict, u64)> {
        let mut moved = Vec::new();
        for p in Protocol::ALL {
            for v in Verdict::ALL {
                let n = self.verdict(*p, *v) - before.verdict(*p, *v);
                if n != 0 {
                    moved.push((*p, *v, n));
                }
            }
        }
        moved
    }

    pub fn counter(&self, c: Counter) -> u64 {
        self.counters.get(&c).copied().unwrap_or(0)
    }

    /// Total drops over all protocols.
    pub fn dropped(&self) -> u64 {
        self.verdicts
            .iter()
            .filter(|((_, v), _)| *v == Verdict::Dropped)
            .map(|(_, n)| n)
            .sum()
    }

    pub fn to_json(&self) -> serde_json::Value {
        let mut protocols = serde_json::Map::new();
        for ((p, v), n) in &self.verdicts {
            let e = protocols
                .entry(p.name())
                .or_insert_with(|| serde_json::Value::Object(Default::default()));
            e[v.name()] = (*n).into();
        }
        let counters: serde_json::Map<_, _> = self
            .counters
            .iter()
            .map(|(c, n)| (c.name().to_string(), (*n).into()))
            .collect();
        serde_json::json!({ "protocols": protocols, "counters": counters })
    }
}
