//! Batch map calls (`BPF_MAP_UPDATE_BATCH`, `BPF_MAP_DELETE_BATCH`, and the
//! `BPF_MAP_LOOKUP_BATCH` that [`super::stats`] reads counters with) through raw bpf(2):
//! aya 0.14 has no batch calls. One system call writes a chunk of entries instead of one call
//! per entry, which is most of the cost of loading a million prefixes. The kernel's generic
//! batch (LPM tries, arrays, hashes since 5.6) does per entry exactly what a single update or
//! delete does, in order.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
};

use anyhow::{anyhow, Result};
use aya::maps::{Map, MapData};

pub(super) const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// Entries per system call: bounds the time the kernel spends in one call (it reschedules
/// inside a batch, but signals wait for the call to return).
const CHUNK: usize = 16_384;

/// The `batch` member of `union bpf_attr` (include/uapi/linux/bpf.h), for every
/// BPF_MAP_*_BATCH command.
#[repr(C)]
#[derive(Default)]
pub(super) struct BatchAttr {
    pub in_batch: u64,
    pub out_batch: u64,
    pub keys: u64,
    pub values: u64,
    pub count: u32,
    pub map_fd: u32,
    pub elem_flags: u64,
    pub flags: u64,
}

/// The data of a map of any kind.
pub(super) fn map_data(map: &Map) -> Result<&MapData> {
    Ok(match map {
        Map::Array(d) | Map::HashMap(d) | Map::LpmTrie(d) | Map::LruHashMap(d) => d,
        _ => {
            return Err(anyhow!(
                "batch writes are used on arrays, hashes and tries only"
            ))
        }
    })
}

/// One batch call; returns how many entries the kernel processed and the error, if any.
///
/// # Safety
///
/// `attr.map_fd` is an open map fd, and every pointer in `attr` (`in_batch`, `out_batch`,
/// `keys`, `values`; 0 where unused) points at memory that is valid for what `cmd` reads or
/// writes there for `attr.count` entries of that map.
pub(super) unsafe fn call(cmd: libc::c_long, attr: &mut BatchAttr) -> (usize, Option<io::Error>) {
    // SAFETY: the caller's guarantee covers what `attr` points at; the kernel reads at most
    // size_of::<BatchAttr>() bytes of `attr` and writes `count` (and `out_batch`) back.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>(),
        )
    };
    let done = attr.count as usize;
    if rc < 0 {
        (done, Some(io::Error::last_os_error()))
    } else {
        (done, None)
    }
}

/// Every entry of `map` (keys of type `K`, values of type `V`), read a chunk per system call
/// (BPF_MAP_LOOKUP_BATCH; for an LPM trie the kernel walks it as `get_next_key` would). The
/// position token is a key for tries and arrays and a 4-byte bucket index for hashes: `K` is
/// at least 4 bytes, so a `K` holds either.
pub(super) fn lookup_all<K: aya::Pod, V: aya::Pod>(map: &MapData) -> io::Result<Vec<(K, V)>> {
    assert!(
        std::mem::size_of::<K>() >= 4,
        "a key holds the position token"
    );
    let fd = map.fd().as_fd().as_raw_fd() as u32;
    // SAFETY (both): Pod types are plain data, valid for any bytes the kernel writes.
    let zero_k = || unsafe { std::mem::zeroed::<K>() };
    let zero_v = || unsafe { std::mem::zeroed::<V>() };
    let mut keys: Vec<K> = (0..CHUNK).map(|_| zero_k()).collect();
    let mut values: Vec<V> = (0..CHUNK).map(|_| zero_v()).collect();
    // The kernel's position tokens (a key, for the generic batch of tries and hashes).
    let (mut token_in, mut token_out) = (zero_k(), zero_k());
    let mut out = Vec::new();
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                std::ptr::addr_of_mut!(token_in) as u64
            },
            out_batch: std::ptr::addr_of_mut!(token_out) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: fd,
            ..Default::default()
        };
        // SAFETY: `fd` is the map's; `keys` and `values` have room for CHUNK (`count`) keys
        // and values of the map's types (the caller's `K` and `V`); both tokens are a key.
        let (done, err) = unsafe { call(BPF_MAP_LOOKUP_BATCH, &mut attr) };
        let done = done.min(CHUNK);
        out.extend(
            keys[..done]
                .iter()
                .copied()
                .zip(values[..done].iter().copied()),
        );
        match err {
            None => {}
            // The end of the map.
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            Some(e) => return Err(e),
        }
        if done == 0 {
            return Ok(out);
        }
        token_in = token_out;
        first = false;
    }
}

/// Writes `keys[i] -> values[i]` for every i (BPF_ANY), in order.
pub(super) fn update<K: aya::Pod, V: aya::Pod>(
    map: &MapData,
    keys: &[K],
    values: &[V],
) -> io::Result<()> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    let fd = map.fd().as_fd().as_raw_fd() as u32;
    for (k, v) in keys.chunks(CHUNK).zip(values.chunks(CHUNK)) {
        let mut attr = BatchAttr {
            keys: k.as_ptr() as u64,
            values: v.as_ptr() as u64,
            count: k.len() as u32,
            map_fd: fd,
            ..Default::default()
        };
        // SAFETY: `fd` is the map's; keys and values point at `count` entries each, of the
        // map's key and value types (the caller's `K` and `V`), that outlive the call.
        if let (_, Some(e)) = unsafe { call(BPF_MAP_UPDATE_BATCH, &mut attr) } {
            return Err(e);
        }
    }
    Ok(())
}

/// Deletes every key in `keys`; keys already absent are skipped (the kernel stops a batch at
/// the first absent key and says how far it got: the rest is sent again).
pub(super) fn delete<K: aya::Pod>(map: &MapData, keys: &[K]) -> io::Result<()> {
    let fd = map.fd().as_fd().as_raw_fd() as u32;
    let mut rest = keys;
    while !rest.is_empty() {
        let n = rest.len().min(CHUNK);
        let mut attr = BatchAttr {
            keys: rest.as_ptr() as u64,
            count: n as u32,
            map_fd: fd,
            ..Default::default()
        };
        // SAFETY: `fd` is the map's; keys points at `count` keys of the map's key type (the
        // caller's `K`) that outlive the call.
        match unsafe { call(BPF_MAP_DELETE_BATCH, &mut attr) } {
            (_, None) => rest = &rest[n..],
            (done, Some(e)) if e.raw_os_error() == Some(libc::ENOENT) => {
                // Entry `done` was absent: what its removal was for.
                rest = &rest[(done + 1).min(rest.len())..];
            }
            (_, Some(e)) => return Err(e),
        }
    }
    Ok(())
}
