//! Least privilege: once the program is loaded, attached and pinned, the controller keeps
//! only what it still needs for the rest of its life:
//!
//! | capability | why |
//! |---|---|
//! | `CAP_BPF` | `bpf(2)` map updates (allowlist sync, policy), ring-buffer reads, pin opens |
//! | `CAP_NET_ADMIN` | re-attaching XDP to an interface that disappeared and came back |
//! | `CAP_PERFMON` | reading per-CPU maps and link/program info on kernels that gate them on it |
//!
//! Everything else (CAP_SYS_ADMIN, CAP_DAC_OVERRIDE, CAP_SETUID, ...) is dropped from the
//! effective, permitted, inheritable and bounding sets, while the main thread is the only one:
//! capability sets are per thread, and the runtime's threads are started afterwards so they
//! inherit the reduced ones. With `--run-as USER` the process also
//! leaves uid 0 (the three capabilities are kept across the switch); the pin directory, the
//! state directory and the control socket directory are handed to that user first so the
//! controller can still write there.

use std::{os::unix::fs::chown, path::Path};

use anyhow::{anyhow, bail, Context as _, Result};
use caps::{CapSet, Capability, CapsHashSet};

/// The capabilities kept after start-up.
pub const KEPT: [Capability; 3] = [
    Capability::CAP_BPF,
    Capability::CAP_NET_ADMIN,
    Capability::CAP_PERFMON,
];

/// Looks up a user's uid and gid.
pub fn lookup_user(name: &str) -> Result<(u32, u32)> {
    let c = std::ffi::CString::new(name).map_err(|_| anyhow!("bad user name {name:?}"))?;
    // SAFETY: getpwnam returns a pointer into static storage or null; read it at once.
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    if pw.is_null() {
        bail!("no user named {name:?} (create it, e.g. useradd --system vpn-filter)");
    }
    // SAFETY: non-null passwd entry.
    Ok(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

/// Recursively hands `path` to `uid:gid` (directories the controller keeps writing to).
pub fn chown_tree(path: &Path, uid: u32, gid: u32) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    chown(path, Some(uid), Some(gid)).with_context(|| format!("chown {}", path.display()))?;
    if path.is_dir() {
        for e in std::fs::read_dir(path)? {
            chown_tree(&e?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// Drops to [`KEPT`], switching to `user` (uid, gid) first if given.
///
/// Capabilities belong to a thread, not to the process: this must run while the calling
/// thread is the only one, so that every thread started later inherits the reduced sets. It
/// refuses otherwise.
pub fn drop_privileges(user: Option<(u32, u32)>) -> Result<()> {
    let threads = std::fs::read_dir("/proc/self/task")
        .context("listing this process's threads")?
        .count();
    if threads != 1 {
        bail!(
            "dropping capabilities with {threads} threads running would leave the others privileged"
        );
    }
    let keep: CapsHashSet = KEPT.iter().copied().collect();
    if let Some((uid, gid)) = user {
        // Keep the permitted set across setuid, then restore the effective set.
        // SAFETY: prctl with constant arguments.
        if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) } != 0 {
            bail!(
                "prctl(PR_SET_KEEPCAPS): {}",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: plain syscalls; order matters (groups and gid before uid).
        unsafe {
            if libc::setgroups(0, std::ptr::null()) != 0 {
                bail!("setgroups: {}", std::io::Error::last_os_error());
            }
            if libc::setresgid(gid, gid, gid) != 0 {
                bail!("setresgid({gid}): {}", std::io::Error::last_os_error());
            }
            if libc::setresuid(uid, uid, uid) != 0 {
                bail!("setresuid({uid}): {}", std::io::Error::last_os_error());
            }
        }
    }
    for cap in caps::all() {
        if !keep.contains(&cap) {
            // Dropping from the bounding set needs CAP_SETPCAP, which goes last.
            let _ = caps::drop(None, CapSet::Bounding, cap);
        }
    }
    // Effective first: the kernel refuses a permitted set smaller than the effective one.
    caps::set(None, CapSet::Effective, &keep).context("setting the effective capabilities")?;
    caps::set(None, CapSet::Permitted, &keep).context("setting the permitted capabilities")?;
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new())
        .context("clearing inheritable capabilities")?;
    let eff = caps::read(None, CapSet::Effective)?;
    if eff != keep {
        bail!("capability drop incomplete: effective set is {eff:?}");
    }
    Ok(())
}
