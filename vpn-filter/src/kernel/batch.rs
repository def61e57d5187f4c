//! Batch map writes (`BPF_MAP_UPDATE_BATCH`, `BPF_MAP_DELETE_BATCH`) through raw bpf(2):
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

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// Entries per system call: bounds the time the kernel spends in one call (it reschedules
/// inside a batch, but signals wait for the call to return).
const CHUNK: usize = 16_384;

/// The `batch` member of `union bpf_attr` (include/uapi/linux/bpf.h).
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
fn call(cmd: libc::c_long, attr: &mut BatchAttr) -> (usize, Option<io::Error>) {
    // SAFETY: `attr` is a valid `batch` attr whose keys/values point at `count` entries that
    // outlive the call; the kernel reads at most size_of::<BatchAttr>() bytes and writes
    // `count` back.
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
        if let (_, Some(e)) = call(BPF_MAP_UPDATE_BATCH, &mut attr) {
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
        match call(BPF_MAP_DELETE_BATCH, &mut attr) {
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
