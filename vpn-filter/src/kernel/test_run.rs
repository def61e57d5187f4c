//! BPF_PROG_TEST_RUN: frames through an XDP program without an interface, the one place the
//! controller, the replay, the tests and the benchmarks make that call.
//!
//! It takes the program's fd rather than aya's `Xdp`, so a thread that does not own the
//! [`super::Filter`] (a prober running while another thread syncs the allowlist) can use a
//! clone of the fd.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
};

/// What one BPF_PROG_TEST_RUN returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TestRun {
    /// The XDP action of the last run.
    pub action: u32,
    /// Mean nanoseconds per run, as the kernel measured it.
    pub duration_ns: u32,
}

/// The `test` member of the kernel's `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct TestAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// Runs `frame` through the XDP program `prog` `repeat` times (0 counts as 1). Flow state
/// and counters change as they would live.
pub fn test_run(prog: BorrowedFd<'_>, frame: &[u8], repeat: u32) -> io::Result<TestRun> {
    let mut attr = TestAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat,
        ..TestAttr::default()
    };
    // SAFETY: `attr` is a valid bpf_attr prefix for BPF_PROG_TEST_RUN; `frame` outlives the
    // call; no output buffers are given.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestAttr,
            std::mem::size_of::<TestAttr>(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(TestRun {
        action: attr.retval,
        duration_ns: attr.duration,
    })
}
