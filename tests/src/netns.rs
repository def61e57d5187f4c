//! Network namespaces, veth pairs, bpffs directories and processes that remove themselves.
//!
//! Every guard cleans up in `Drop`, so a failing test (a panic) still leaves nothing behind:
//! deleting a namespace deletes the veth ends and XDP attachments inside it.

use std::{
    fs::File,
    io::{BufRead, BufReader},
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc, Arc, Mutex,
    },
    time::{Duration, Instant},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call, for namespaces and interfaces (<= 15 chars).
pub fn unique(tag: &str) -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("vft{}{}{}", std::process::id() % 100_000, tag, n)
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace created with `ip netns add`, deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates a namespace named after `tag` (made unique) with `lo` up.
    pub fn new(tag: &str) -> NetNs {
        let name = unique(tag);
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> <args>`; panics with ip's message on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = run(Command::new("ip").arg("-n").arg(&self.name).args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A command to run inside the namespace (`ip netns exec`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs a command inside the namespace and returns its output (whatever its status).
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        self.command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program} in {}: {e}", self.name))
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) {
        run(self
            .command("sysctl")
            .args(["-qw", &format!("{key}={value}")]));
    }

    /// Runs `f` on a thread that has entered this namespace. Sockets created there stay in
    /// the namespace when returned to the caller.
    pub fn enter<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                // SAFETY: a valid namespace fd; only this thread changes namespace.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    /// MAC address of an interface in this namespace.
    pub fn mac(&self, iface: &str) -> String {
        let out = self.ip(&["-o", "link", "show", "dev", iface]);
        out.split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .unwrap_or_else(|| panic!("no MAC for {iface} in {}: {out}", self.name))
            .to_string()
    }

    /// Interface index inside this namespace.
    pub fn ifindex(&self, iface: &str) -> u32 {
        let out = self.ip(&["-o", "link", "show", "dev", iface]);
        out.split(':')
            .next()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("no ifindex in {out}"))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let out = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        if let Ok(o) = out {
            if !o.status.success() {
                eprintln!(
                    "warning: ip netns del {}: {}",
                    self.name,
                    String::from_utf8_lossy(&o.stderr)
                );
            }
        }
    }
}

/// Creates a veth pair with one end in each namespace, both up.
pub fn veth(a: &NetNs, a_if: &str, b: &NetNs, b_if: &str) {
    run(Command::new("ip").args([
        "link",
        "add",
        a_if,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ]));
    a.ip(&["link", "set", "dev", a_if, "up"]);
    b.ip(&["link", "set", "dev", b_if, "up"]);
}

/// Adds a permanent neighbour entry: in `ns` on `dev`, `addr` is at `mac`.
pub fn neigh(ns: &NetNs, dev: &str, addr: &str, mac: &str) {
    ns.ip(&[
        "neigh",
        "replace",
        addr,
        "lladdr",
        mac,
        "dev",
        dev,
        "nud",
        "permanent",
    ]);
}

/// A bpffs directory for pins, removed with its contents on drop.
#[derive(Debug)]
pub struct BpfFsDir {
    path: PathBuf,
}

impl BpfFsDir {
    pub fn new(tag: &str) -> BpfFsDir {
        let base = Path::new("/sys/fs/bpf");
        let mounted = std::fs::read_to_string("/proc/mounts")
            .map(|m| {
                m.lines().any(|l| {
                    l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf ")
                })
            })
            .unwrap_or(false);
        if !mounted {
            run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]));
        }
        let path = base.join(unique(tag));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        BpfFsDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BpfFsDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A child process killed (by pid) on drop, with its stdout lines collected.
pub struct Process {
    child: Mutex<Child>,
    pid: u32,
    lines: Arc<Mutex<Vec<String>>>,
    rx: mpsc::Receiver<String>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Process {
    /// Spawns `cmd` with stdout and stderr captured line by line.
    pub fn spawn(mut cmd: Command) -> Process {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let (tx, rx) = mpsc::channel();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("piped");
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let err = child.stderr.take().expect("piped");
        {
            let stderr = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    stderr.lock().unwrap().push(line);
                }
            });
        }
        let pid = child.id();
        Process {
            child: Mutex::new(child),
            pid,
            lines,
            rx,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Next stdout line, waiting at most `timeout`.
    pub fn next_line(&self, timeout: Duration) -> Option<String> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// All stdout lines so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// All stderr lines so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until a stderr line contains `needle`; panics with the stderr seen otherwise.
    pub fn wait_stderr(&self, needle: &str, timeout: Duration) {
        self.wait_stderr_from(0, needle, timeout);
    }

    /// Waits until a stderr line at or after line `from` contains `needle` and returns its
    /// index; panics with the stderr seen if the process exits first or `timeout` (a hang
    /// guard) passes.
    pub fn wait_stderr_from(&self, from: usize, needle: &str, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let lines = self.stderr_lines();
            if let Some(i) = lines.iter().skip(from).position(|l| l.contains(needle)) {
                return from + i;
            }
            if let Some(status) = self.exit_status() {
                panic!(
                    "process exited ({status}) before printing {needle:?}; stderr:\n{}",
                    lines.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "no stderr line containing {needle:?} after line {from} within {timeout:?}; stderr:\n{}",
            self.stderr_lines().join("\n")
        );
    }

    /// Waits for the controller's `ready` line ([`vpn_filter::daemon::run::READY`]): attached,
    /// enforcing, privileges dropped, control socket and metrics serving. `timeout` is a hang
    /// guard ([`CONTROLLER_START`] unless a test needs another).
    pub fn wait_ready(&self, timeout: Duration) {
        self.wait_stderr(vpn_filter::daemon::run::READY, timeout);
    }

    /// Exit status if the process has ended.
    pub fn exit_status(&self) -> Option<std::process::ExitStatus> {
        self.child.lock().unwrap().try_wait().ok().flatten()
    }

    /// Sends a signal by pid.
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill with our child's pid.
        unsafe { libc::kill(self.pid as i32, sig) };
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit; returns the status.
    pub fn terminate(&self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(s) = self.exit_status() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Ok(None) = child.try_wait() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends one UDP datagram from `src` (an address of `ns`) to `dst`.
pub fn udp_send(ns: &NetNs, src: SocketAddr, dst: SocketAddr, payload: &[u8]) {
    ns.enter(|| {
        let s = UdpSocket::bind(src).unwrap_or_else(|e| panic!("bind {src} in {}: {e}", ns.name()));
        s.send_to(payload, dst)
            .unwrap_or_else(|e| panic!("send {src} -> {dst}: {e}"));
    });
}

/// A UDP socket bound inside `ns`.
pub fn udp_bind(ns: &NetNs, addr: SocketAddr) -> UdpSocket {
    ns.enter(|| {
        let s =
            UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr} in {}: {e}", ns.name()));
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        s
    })
}

/// Datagrams that arrive on `sock` within `window`, with their sources.
pub fn udp_drain(sock: &UdpSocket, window: Duration) -> Vec<(SocketAddr, Vec<u8>)> {
    let deadline = Instant::now() + window;
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    while Instant::now() < deadline {
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            got.push((from, buf[..n].to_vec()));
        }
    }
    got
}

/// A raw AF_PACKET socket bound to `iface` in `ns`, for sending crafted Ethernet frames.
pub struct RawSocket {
    fd: std::os::fd::OwnedFd,
}

impl RawSocket {
    pub fn open(ns: &NetNs, iface: &str) -> RawSocket {
        let ifindex = ns.ifindex(iface);
        let fd = ns.enter(|| {
            // SAFETY: plain socket(2); the fd is owned below.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
            let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_ifindex = ifindex as i32;
            // SAFETY: sll is a valid sockaddr_ll of the size passed.
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert_eq!(
                rc,
                0,
                "bind AF_PACKET to {iface}: {}",
                std::io::Error::last_os_error()
            );
            fd
        });
        RawSocket { fd }
    }

    /// Sends a complete Ethernet frame. A full transmit queue (ENOBUFS, which a flood from
    /// one thread reaches on a veth) is waited out, so every frame the caller counts is sent.
    pub fn send(&self, frame: &[u8]) {
        let mut waits = 0u32;
        loop {
            // SAFETY: frame is a valid buffer of the given length.
            let n = unsafe {
                libc::send(
                    self.fd.as_raw_fd(),
                    frame.as_ptr() as *const libc::c_void,
                    frame.len(),
                    0,
                )
            };
            if n >= 0 {
                assert_eq!(n as usize, frame.len(), "raw send: short write");
                return;
            }
            let err = std::io::Error::last_os_error();
            let full = matches!(err.raw_os_error(), Some(libc::ENOBUFS) | Some(libc::EAGAIN));
            assert!(full && waits < 20_000, "raw send: {err}");
            waits += 1;
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
    }
}

impl NetNs {
    /// A command that runs in this network namespace but keeps the caller's mount namespace
    /// (unlike `ip netns exec`, which remounts /sys): a controller started this way pins into
    /// the host's /sys/fs/bpf, so its pins outlive it as they would on a real gateway.
    pub fn command_keep_mounts(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        use std::os::unix::process::CommandExt as _;
        let file = File::open(format!("/var/run/netns/{}", self.name))
            .unwrap_or_else(|e| panic!("open netns {}: {e}", self.name));
        let fd = file.as_raw_fd();
        let mut cmd = Command::new(program);
        // SAFETY: setns is async-signal-safe; `file` is moved into the closure so the fd stays
        // open until exec.
        unsafe {
            cmd.pre_exec(move || {
                let _keep = &file;
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }
}
