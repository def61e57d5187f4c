//! The verifier's own figures for each program variant: translated instructions, processed
//! instructions ("processed N insns") and the stack depth of every subprogram ("stack depth
//! A+B+..."), for the verifier-budget test and the benchmark report.
//!
//! aya 0.14 loads a program with no verifier log and keeps the log only when the load
//! fails, so a successful load's statistics are never seen. This module is included (with
//! `#[path]`) into the executables that want them, and there it defines the C `syscall`
//! symbol: the executable's definition takes the place of glibc's for every caller in the
//! process (aya's `libc::syscall(SYS_bpf, ..)` included). It forwards every call unchanged,
//! except `BPF_PROG_LOAD` while [`capture`] runs: a load without a log buffer gets one, at
//! `BPF_LOG_STATS`, and the log is kept. Only x86_64 (a variadic call passes its integer
//! arguments exactly as a call with seven `long`s does there).

#![cfg(target_arch = "x86_64")]

use std::{
    arch::asm,
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    },
};

use aya::{programs::Xdp, EbpfLoader};
use vpn_filter::kernel::EBPF_OBJECT;
use vpn_filter_common::{PROGRAM_NAME, PROGRAM_NAME_IP};

const BPF_PROG_LOAD: libc::c_long = 5;
/// `BPF_LOG_STATS` (include/linux/bpf_verifier.h).
const BPF_LOG_STATS: u32 = 4;
const LOG_SIZE: usize = 1 << 16;

/// Offsets in `union bpf_attr` for BPF_PROG_LOAD (include/uapi/linux/bpf.h).
const INSN_CNT: usize = 4;
const INSNS: usize = 8;
const LOG_LEVEL: usize = 24;
const LOG_SIZE_OFF: usize = 28;
const LOG_BUF: usize = 32;
const PROG_NAME: usize = 48;

static CAPTURING: AtomicBool = AtomicBool::new(false);
/// A load seen while capturing.
struct Load {
    name: String,
    log: String,
    /// The instructions as submitted (8 bytes each).
    insns: Vec<[u8; 8]>,
}

static LOGS: Mutex<Vec<Load>> = Mutex::new(Vec::new());

/// The raw system call, as glibc's `syscall(3)` does it: -1 and errno on failure.
unsafe fn raw(n: libc::c_long, a: [libc::c_long; 6]) -> libc::c_long {
    let ret: libc::c_long;
    // SAFETY: the caller's arguments, passed to the kernel as syscall(2) would.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") n => ret,
            in("rdi") a[0],
            in("rsi") a[1],
            in("rdx") a[2],
            in("r10") a[3],
            in("r8") a[4],
            in("r9") a[5],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    if (-4095..0).contains(&ret) {
        // SAFETY: errno of the calling thread.
        unsafe { *libc::__errno_location() = -ret as libc::c_int };
        return -1;
    }
    ret
}

/// Takes the place of glibc's `syscall(3)` in this executable (see the module comment).
///
/// # Safety
/// As `syscall(3)`: the arguments must be valid for system call `n`.
#[no_mangle]
pub unsafe extern "C" fn syscall(
    n: libc::c_long,
    a1: libc::c_long,
    a2: libc::c_long,
    a3: libc::c_long,
    a4: libc::c_long,
    a5: libc::c_long,
    a6: libc::c_long,
) -> libc::c_long {
    let args = [a1, a2, a3, a4, a5, a6];
    if n != libc::SYS_bpf || a1 != BPF_PROG_LOAD || !CAPTURING.load(Ordering::SeqCst) {
        // SAFETY: forwarded unchanged.
        return unsafe { raw(n, args) };
    }
    let attr = a2 as *mut u8;
    // SAFETY: BPF_PROG_LOAD's attr is a `union bpf_attr` of at least `a3` bytes, which
    // covers the fields read and written here (they precede `prog_ifindex`).
    unsafe {
        let level = attr.add(LOG_LEVEL).cast::<u32>();
        if level.read_unaligned() != 0 {
            // The loader asked for a log of its own (a failed load being retried).
            return raw(n, args);
        }
        let mut buf = vec![0u8; LOG_SIZE];
        level.write_unaligned(BPF_LOG_STATS);
        attr.add(LOG_SIZE_OFF)
            .cast::<u32>()
            .write_unaligned(LOG_SIZE as u32);
        attr.add(LOG_BUF)
            .cast::<u64>()
            .write_unaligned(buf.as_mut_ptr() as u64);
        let ret = raw(n, args);
        let errno = *libc::__errno_location();
        level.write_unaligned(0);
        attr.add(LOG_SIZE_OFF).cast::<u32>().write_unaligned(0);
        attr.add(LOG_BUF).cast::<u64>().write_unaligned(0);
        let name = std::slice::from_raw_parts(attr.add(PROG_NAME), 16);
        let name =
            String::from_utf8_lossy(&name[..name.iter().position(|b| *b == 0).unwrap_or(16)])
                .into_owned();
        let log = String::from_utf8_lossy(&buf[..buf.iter().position(|b| *b == 0).unwrap_or(0)])
            .into_owned();
        let count = attr.add(INSN_CNT).cast::<u32>().read_unaligned() as usize;
        let insns = attr.add(INSNS).cast::<u64>().read_unaligned() as *const [u8; 8];
        let insns = std::slice::from_raw_parts(insns, count).to_vec();
        LOGS.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Load { name, log, insns });
        *libc::__errno_location() = errno;
        ret
    }
}

/// The verifier's figures for one program.
#[derive(Clone, Debug)]
pub struct Stats {
    pub program: &'static str,
    /// Instructions after the verifier's rewrites (`xlated_prog_len / 8`).
    pub xlated_insns: u32,
    /// "processed N insns": the verifier's work, against its limit of 1,000,000.
    pub processed_insns: u32,
    /// "verification time N usec".
    pub verification_us: Option<u64>,
    /// "stack depth A+B+...": each subprogram's frame, in the program's order.
    pub stack_depths: Vec<u32>,
    /// The deepest call chain's stack, as the verifier adds it up (each frame rounded up to
    /// 32 bytes), and the subprograms along it (by index).
    pub deepest_chain: u32,
    pub chain: Vec<usize>,
    /// Each subprogram's length in submitted instructions (to tell them apart).
    pub lengths: Vec<usize>,
}

/// Subprogram starts and who calls whom, from the submitted instructions: a BPF-to-BPF call
/// (`call` with src_reg BPF_PSEUDO_CALL) or a callback's address (`ld_imm64` with src_reg
/// BPF_PSEUDO_FUNC, for bpf_loop and the like) from one subprogram to another.
pub fn call_graph(insns: &[[u8; 8]]) -> (Vec<usize>, Vec<Vec<usize>>) {
    const CALL: u8 = 0x85;
    const LD_IMM64: u8 = 0x18;
    const PSEUDO_CALL: u8 = 1;
    const PSEUDO_FUNC: u8 = 4;
    let refs = |i: usize| -> Option<usize> {
        let insn = insns[i];
        let src = insn[1] >> 4;
        let imm = i32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]) as i64;
        let is_ref =
            (insn[0] == CALL && src == PSEUDO_CALL) || (insn[0] == LD_IMM64 && src == PSEUDO_FUNC);
        is_ref.then(|| (i as i64 + imm + 1) as usize)
    };
    let mut starts: Vec<usize> = vec![0];
    starts.extend((0..insns.len()).filter_map(refs));
    starts.sort_unstable();
    starts.dedup();
    let sub_of = |pc: usize| starts.partition_point(|s| *s <= pc) - 1;
    let mut calls = vec![Vec::new(); starts.len()];
    for i in 0..insns.len() {
        if let Some(target) = refs(i) {
            calls[sub_of(i)].push(sub_of(target));
        }
    }
    for c in &mut calls {
        c.sort_unstable();
        c.dedup();
    }
    (starts, calls)
}

/// The deepest chain from subprogram 0: (bytes, subprograms along it). Each frame is rounded
/// as the verifier's `round_up_stack_depth` does: to 16 bytes when the program is JITed, to
/// 32 (at least 32) for the interpreter.
pub fn deepest_chain(frames: &[u32], calls: &[Vec<usize>], jit: bool) -> (u32, Vec<usize>) {
    fn walk(
        i: usize,
        frames: &[u32],
        calls: &[Vec<usize>],
        jit: bool,
        seen: &mut Vec<bool>,
    ) -> (u32, Vec<usize>) {
        let frame = frames.get(i).copied().unwrap_or(0);
        let own = if jit {
            frame.div_ceil(16) * 16
        } else {
            frame.max(1).div_ceil(32) * 32
        };
        seen[i] = true;
        let mut best = (0, Vec::new());
        for &c in &calls[i] {
            // The verifier refuses recursion; a cycle here would be a parsing error.
            if !seen[c] {
                let sub = walk(c, frames, calls, jit, seen);
                if sub.0 > best.0 {
                    best = sub;
                }
            }
        }
        seen[i] = false;
        let mut chain = vec![i];
        chain.extend(best.1);
        (own + best.0, chain)
    }
    walk(0, frames, calls, jit, &mut vec![false; calls.len()])
}

/// Parses the statistics lines of a verifier log.
pub fn parse_log(log: &str) -> Option<(u32, Vec<u32>)> {
    let processed = log.lines().find_map(|l| {
        l.strip_prefix("processed ")?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })?;
    let stack = log.lines().find_map(|l| {
        let depths = l.strip_prefix("stack depth ")?;
        depths
            .trim()
            .split('+')
            .map(|d| d.trim().parse().ok())
            .collect::<Option<Vec<u32>>>()
    })?;
    Some((processed, stack))
}

/// Loads both program variants of the embedded object through the verifier and returns
/// their figures.
pub fn measure() -> anyhow::Result<Vec<Stats>> {
    use anyhow::{anyhow, bail, Context as _};
    let mut ebpf = EbpfLoader::new()
        .load(EBPF_OBJECT)
        .context("loading the vpn-filter object")?;
    let mut out = Vec::new();
    for name in [PROGRAM_NAME, PROGRAM_NAME_IP] {
        let prog: &mut Xdp = ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("{name} missing from the object"))?
            .try_into()?;
        LOGS.lock().unwrap_or_else(|e| e.into_inner()).clear();
        CAPTURING.store(true, Ordering::SeqCst);
        let loaded = prog.load();
        CAPTURING.store(false, Ordering::SeqCst);
        loaded.with_context(|| format!("loading {name}"))?;
        let logs = std::mem::take(&mut *LOGS.lock().unwrap_or_else(|e| e.into_inner()));
        let load = logs
            .iter()
            .rev()
            .find(|l| l.name == name)
            .ok_or_else(|| anyhow!("no BPF_PROG_LOAD of {name} was seen"))?;
        let log = &load.log;
        let (processed_insns, stack_depths) = parse_log(log)
            .ok_or_else(|| anyhow!("no statistics in {name}'s verifier log: {log:?}"))?;
        let (starts, calls) = call_graph(&load.insns);
        if starts.len() != stack_depths.len() {
            bail!(
                "{name}: {} subprograms in the instructions but {} frames in the verifier log",
                starts.len(),
                stack_depths.len()
            );
        }
        let verification_us = log.lines().find_map(|l| {
            l.strip_prefix("verification time ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        });
        let jit = std::fs::read_to_string("/proc/sys/net/core/bpf_jit_enable")
            .map_or(true, |v| v.trim() != "0");
        let (deepest_chain, chain) = deepest_chain(&stack_depths, &calls, jit);
        let lengths: Vec<usize> = starts
            .iter()
            .zip(starts.iter().skip(1).chain([&load.insns.len()]))
            .map(|(a, b)| b - a)
            .collect();
        let info = prog.info()?;
        let xlated_insns = info.size_translated().unwrap_or(0) / 8;
        out.push(Stats {
            program: name,
            xlated_insns,
            processed_insns,
            verification_us,
            stack_depths,
            deepest_chain,
            chain,
            lengths,
        });
    }
    Ok(out)
}
