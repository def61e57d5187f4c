//! Small helpers shared by the benchmark sections: a deterministic RNG, medians, the machine
//! description, Ctrl-C handling and number formatting.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, LazyLock,
    },
    time::Duration,
};

use anyhow::{bail, Result};

/// Reproducible pseudo-random numbers from a seed (the tests' one generator), to spread
/// addresses and ports.
#[derive(Clone, Debug)]
pub struct Rng(rand_pcg::Pcg64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(vpn_filter_tests::rng::seeded(seed))
    }

    pub fn next_u64(&mut self) -> u64 {
        vpn_filter_tests::rng::next_u64(&mut self.0)
    }

    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// A source port in the ephemeral range.
    pub fn port(&mut self) -> u16 {
        self.range(1024, 65535) as u16
    }
}

/// Median of `v` (NaN when empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if !n.is_multiple_of(2) {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Set by SIGINT and SIGTERM (signal-hook).
static STOP: LazyLock<Arc<AtomicBool>> = LazyLock::new(Default::default);

/// Ctrl-C and SIGTERM set a flag that [`check_stop`] turns into an error, so the run unwinds
/// and every namespace, attachment and nftables table is removed by its guard.
pub fn install_stop_handler() {
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&STOP)).expect("installing a signal handler");
    }
}

pub fn check_stop() -> Result<()> {
    if STOP.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps for `d`, waking early (with an error) on Ctrl-C.
pub fn sleep(d: Duration) -> Result<()> {
    let end = std::time::Instant::now() + d;
    loop {
        check_stop()?;
        let now = std::time::Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// The machine the numbers were taken on.
pub struct Machine {
    pub kernel: String,
    pub cpu: String,
    pub cpus: usize,
    pub memory_gib: f64,
    pub date: String,
}

impl Machine {
    pub fn describe() -> Machine {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let memory_gib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            })
            .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
        let date = time::OffsetDateTime::now_utc()
            .format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second]"
            ))
            .unwrap_or_else(|_| "unknown".into());
        Machine {
            kernel,
            cpu,
            cpus,
            memory_gib,
            date,
        }
    }
}

/// The 1, 5 and 15-minute load averages, as /proc/loadavg gives them.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(", "))
        .unwrap_or_else(|| "unknown".into())
}

/// Pins the calling thread (`pid` 0) or task `pid` to one CPU.
pub fn pin_to_cpu(pid: libc::pid_t, cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        bail!(
            "sched_setaffinity({pid}, cpu {cpu}): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Gives task `tid` (0: the calling thread) nice -20, so the shared machine's other work
/// disturbs the measured threads less (the CPU time per packet does not depend on it).
pub fn raise_priority(tid: libc::pid_t) -> Result<()> {
    let tid = if tid == 0 {
        // SAFETY: gettid has no preconditions.
        unsafe { libc::gettid() }
    } else {
        tid
    };
    // SAFETY: setpriority on a task id; failure is reported.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, -20) } != 0 {
        bail!(
            "setpriority({tid}, -20): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// `1234.5` -> "1,234"; NaN -> "n/a".
pub fn ns(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    let r = v.round() as i64;
    let s = r.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if r < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// Signed difference with an explicit sign: "+12", "-3", "0".
pub fn signed_ns(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    if v.round() > 0.0 {
        format!("+{}", ns(v))
    } else {
        ns(v)
    }
}

/// A ratio as "1.23x".
pub fn ratio(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    format!("{v:.2}x")
}

/// Millions (of packets per second): "4.21".
pub fn mega(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    format!("{:.2}", v / 1e6)
}

/// A count with thousands separators.
pub fn count(n: usize) -> String {
    ns(n as f64)
}
