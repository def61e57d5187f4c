//! Loading the XDP object, attaching it, and the controller's view of its maps.

mod allowlist;
mod batch;
pub mod domains;
pub mod endpoints;
pub mod events;
pub mod fastpath;
pub mod flows;
mod map_shapes;
pub mod pin;
pub mod stats;
pub mod test_run;

use std::net::IpAddr;

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, MapData, RingBuf,
    },
    programs::{
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
        Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use vpn_filter_common::{
    maps, AllowValue, Config, PolicyMode, Protocol, DEFAULT_ALLOW_V4_ENTRIES,
    DEFAULT_ALLOW_V6_ENTRIES, DEFAULT_FLOW_ENTRIES, PROGRAM_NAME, PROGRAM_NAME_IP,
};

pub use self::{
    allowlist::Applied,
    map_shapes::{expected_maps, FrameStart, LoadOptions, MapShape},
    stats::{Stats, StatsReader},
};
use crate::{
    kernel::pin::PinDir,
    registry::{
        canonical_ip,
        sync::{Apply, SyncReport},
        Allowlist, Prefix,
    },
};

/// Index of a network interface in this process's network namespace.
pub fn if_index(iface: &str) -> Result<u32> {
    let c = std::ffi::CString::new(iface).map_err(|_| anyhow!("bad interface name {iface:?}"))?;
    // SAFETY: valid NUL-terminated name.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        bail!(
            "no interface named {iface} ({})",
            std::io::Error::last_os_error()
        );
    }
    Ok(i)
}

/// Creates a new XDP link in the requested mode (auto: native, else generic with a warning).
fn attach_new(prog: &mut Xdp, iface: &str, mode: AttachMode) -> Result<(XdpLinkId, XdpMode)> {
    Ok(match mode {
        AttachMode::Native => (
            prog.attach(iface, XdpMode::Driver).with_context(|| {
                format!("attaching to {iface} in native mode failed - try --xdp-mode generic")
            })?,
            XdpMode::Driver,
        ),
        AttachMode::Generic => (
            prog.attach(iface, XdpMode::Skb)
                .with_context(|| format!("attaching to {iface} in generic mode failed"))?,
            XdpMode::Skb,
        ),
        AttachMode::Auto => match prog.attach(iface, XdpMode::Driver) {
            Ok(l) => (l, XdpMode::Driver),
            Err(native_err) => {
                log::warn!(
                    "{iface}: native XDP unavailable ({native_err}); falling back to generic mode (slower: runs after the skb is built)"
                );
                let l = prog.attach(iface, XdpMode::Skb).with_context(|| {
                    format!("attaching to {iface} failed in native ({native_err}) and generic mode")
                })?;
                (l, XdpMode::Skb)
            }
        },
    })
}

pub mod diff;

/// Where `iface`'s XDP frames start, from its ARPHRD type; an error naming the device and
/// type for devices the program cannot parse (it never passes them silently).
fn device_frame_start(iface: &str) -> Result<FrameStart> {
    let kind = device_type(iface)?;
    frame_start_of(kind).ok_or_else(|| {
        anyhow!(
            "{iface} has link type {kind}, which vpn-filter cannot parse: supported are Ethernet-like devices (ARPHRD_ETHER, loopback) and devices whose frames start at the IP header (tun, wireguard, ppp, ipip, sit, gre, ip6tnl, ip6gre, rawip)"
        )
    })
}

/// The program variant for an ARPHRD device type.
fn frame_start_of(arphrd: u16) -> Option<FrameStart> {
    match arphrd {
        // ETHER, LOOPBACK (an all-zero Ethernet header).
        1 | 772 => Some(FrameStart::Ethernet),
        // NONE (tun, wireguard), PPP, RAWIP, TUNNEL (ipip), TUNNEL6 (ip6tnl), SIT, IPGRE,
        // IP6GRE.
        0xfffe | 512 | 519 | 768 | 769 | 776 | 778 | 823 => Some(FrameStart::Ip),
        _ => None,
    }
}

/// The device's ARPHRD type (SIOCGIFHWADDR's sa_family).
fn device_type(iface: &str) -> Result<u16> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _};
    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket for SIOCGIFHWADDR");
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = iface.as_bytes();
    if name.len() >= req.ifr_name.len() {
        bail!("interface name {iface:?} is too long");
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR reads ifr_name and writes ifr_hwaddr within `req`.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("reading the link type of {iface}"));
    }
    // SAFETY: the kernel filled the hwaddr member of the union.
    Ok(unsafe { req.ifr_ifru.ifru_hwaddr.sa_family })
}

/// The XDP object built by build.rs from the vpn-filter-ebpf crate.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vpn-filter.bpf.o"));

/// Benchmark and test programs only, never attached by the controller: `bench_pass`
/// (returns `XDP_PASS`), `bench_count_drop` (per-CPU count in `BENCH_COUNT`, `XDP_DROP`),
/// `bench_gen` (the live-frames traffic generator) and `bench_mutate` (writes the next source
/// address from a table into the frame, then tail-calls the program under test). Built by
/// build.rs from `vpn-filter-ebpf/src/bin/bench.rs`.
pub static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vpn-filter-bench.bpf.o"));

/// Per-protocol policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy(pub [PolicyMode; Protocol::COUNT]);

impl Default for Policy {
    /// Enforce for every signature: those detections are structural (exact sizes, length
    /// fields, magic numbers, or confirmation by the flow's other packets). Monitor for the
    /// endpoint lists and the heuristics.
    fn default() -> Self {
        let mut modes = [PolicyMode::Enforce; Protocol::COUNT];
        modes[Protocol::None as usize] = PolicyMode::Off;
        // Endpoint lists hold shared addresses (CDN fronts, hosting ranges, relays that also
        // serve other things): observe first, enforce once the reports are understood.
        modes[Protocol::Endpoints as usize] = PolicyMode::Monitor;
        // Heuristics over a flow's packets, with a false-positive rate measured on the
        // corpus (`cargo xtask accuracy`) rather than zero by construction: reported, not
        // dropped, until an operator opts in.
        modes[Protocol::WireGuardObfuscated as usize] = PolicyMode::Monitor;
        modes[Protocol::OpenVpnObfuscated as usize] = PolicyMode::Monitor;
        // A DTLS handshake to 443 is FortiClient's or OpenConnect's tunnel, but also Citrix's
        // remote desktop and, rarely, a WebRTC peer: reported, not dropped.
        modes[Protocol::Dtls443 as usize] = PolicyMode::Monitor;
        modes[Protocol::FullyEncrypted as usize] = PolicyMode::Monitor;
        // A listed domain means the app was opened, not that a tunnel runs (its API, its
        // updates): reported until the operator decides.
        modes[Protocol::TlsSni as usize] = PolicyMode::Monitor;
        // Closing a client-server pair rests on the two directions of a handshake seen at
        // the gateway. Where source addresses can be forged on both sides of it (no ingress
        // filtering), a spoofer could close someone's pair: the operator opts in
        // (`--policy fallback=enforce` or `monitor`) once that is ruled out.
        modes[Protocol::Fallback as usize] = PolicyMode::Off;
        Policy(modes)
    }
}

impl Policy {
    pub fn all(mode: PolicyMode) -> Self {
        let mut p = Policy([mode; Protocol::COUNT]);
        p.0[Protocol::None as usize] = PolicyMode::Off;
        p
    }

    pub fn mode(&self, protocol: Protocol) -> PolicyMode {
        self.0[protocol as usize]
    }

    pub fn set(&mut self, protocol: Protocol, mode: PolicyMode) {
        if protocol != Protocol::None {
            self.0[protocol as usize] = mode;
        }
    }

    /// Applies `PROTOCOL=MODE` (e.g. `openvpn=monitor`, `all=monitor`).
    pub fn apply_override(&mut self, spec: &str) -> Result<()> {
        let (p, m) = spec
            .split_once('=')
            .ok_or_else(|| anyhow!("policy \"{spec}\": expected PROTOCOL=MODE"))?;
        let mode = PolicyMode::from_name(m.trim()).ok_or_else(|| {
            anyhow!("policy \"{spec}\": unknown mode \"{m}\" (expected enforce, monitor or off)")
        })?;
        if p.trim() == "all" {
            *self = Policy::all(mode);
            return Ok(());
        }
        let protocol = Protocol::from_name(p.trim())
            .filter(|p| *p != Protocol::None)
            .ok_or_else(|| {
                let names: Vec<_> = Protocol::ALL[1..].iter().map(|p| p.name()).collect();
                anyhow!(
                    "policy \"{spec}\": unknown protocol \"{p}\" (expected all or one of {})",
                    names.join(", ")
                )
            })?;
        self.set(protocol, mode);
        Ok(())
    }
}

/// How to attach: `Auto` tries native (driver) mode and falls back to generic (skb) mode with
/// a warning; the others insist.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    Auto,
    Native,
    Generic,
}

/// The loaded program and its maps.
pub struct Filter {
    ebpf: Ebpf,
    options: LoadOptions,
    links: Vec<Attachment>,
    pins: Option<PinDir>,
    /// What the allowlist tries hold, as last written by this controller (sorted): a sync
    /// diffs against it instead of reading a million-entry trie back. `None` until the first
    /// sync, or after a failed one: then the tries are read (adopting what a previous
    /// controller left in pinned maps).
    applied: Option<Applied>,
    /// What the fast-path maps hold, as last written by this controller (`None`: read them).
    fast: Option<fastpath::FastSummary>,
    /// What the endpoint maps hold, as last written by this controller (`None`: read them).
    endpoints: Option<endpoints::EndpointsApplied>,
}

/// One interface the program is attached to.
#[derive(Debug)]
pub struct Attachment {
    pub iface: String,
    /// Mode used when this controller attached; `None` when it took over a pinned link (the
    /// kernel keeps the mode the link was created with).
    pub mode: Option<XdpMode>,
    /// Interface index when attached.
    pub ifindex: u32,
    /// Whether the link is pinned (outlives the controller).
    pub pinned: bool,
    /// Which program variant runs there (from the device type).
    pub frame_start: FrameStart,
    link: XdpLinkId,
}

/// How [`Filter::attach`] got the program onto an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    /// A new link in this mode.
    New(XdpMode),
    /// The pinned link left by a previous controller now runs this program (BPF_LINK_UPDATE:
    /// atomic, no moment without a filter).
    Replaced,
}

impl Attachment {
    /// `native`, `generic`, `offload`, `default`, or `pinned` (a link taken over from a
    /// previous controller, in whatever mode it was created).
    pub fn mode_name(&self) -> &'static str {
        match self.mode {
            Some(XdpMode::Driver) => "native",
            Some(XdpMode::Skb) => "generic",
            Some(XdpMode::Hardware) => "offload",
            Some(XdpMode::Default) => "default",
            None => "pinned",
        }
    }
}

impl Attached {
    /// For the log line of an attach.
    pub fn describe(&self) -> &'static str {
        match self {
            Attached::New(XdpMode::Driver) => "native mode",
            Attached::New(_) => "generic mode",
            Attached::Replaced => "replaced the program on its pinned link, atomically",
        }
    }
}

/// Keeps the verifier's verdict readable: its last lines say why.
fn load_error(e: aya::programs::ProgramError) -> anyhow::Error {
    if let aya::programs::ProgramError::LoadError {
        io_error,
        verifier_log,
    } = &e
    {
        let log = verifier_log.to_string();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(25)..].join("\n");
        return anyhow!("the kernel verifier rejected the XDP program ({io_error}); last lines of its log:\n{tail}");
    }
    anyhow::Error::new(e).context("loading the XDP program into the kernel")
}

impl Filter {
    /// Loads the embedded object through the verifier, sized by `options`, with `policy` and
    /// `config` written before anything is attached. Nothing is pinned: the filter lives as
    /// long as this value (tests, replay, benchmarks).
    pub fn load(options: LoadOptions, policy: &Policy, config: &Config) -> Result<Self> {
        Self::load_inner(options, policy, config, None, true)
    }

    /// Like [`Filter::load`], but every map is pinned under `pins` and reused from there if
    /// a previous controller left it (after checking its shape), and links are pinned on
    /// attach: enforcement outlives the controller. Returns the filter and how many pinned
    /// maps were reused.
    pub fn load_pinned(
        options: LoadOptions,
        policy: &Policy,
        config: &Config,
        pins: PinDir,
    ) -> Result<(Self, usize)> {
        pins.prepare()?;
        let reused = pins.check_maps(&options)?;
        // With no map pinned yet, every map is created by this load, empty, as without pins.
        let filter = Self::load_inner(options, policy, config, Some(pins), reused == 0)?;
        Ok((filter, reused))
    }

    fn load_inner(
        options: LoadOptions,
        policy: &Policy,
        config: &Config,
        pins: Option<PinDir>,
        fresh: bool,
    ) -> Result<Self> {
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(maps::ALLOW_V4, options.allow_v4_entries)
            .map_max_entries(maps::ALLOW_V6, options.allow_v6_entries)
            .map_max_entries(maps::FAST_V4_LONG, options.allow_v4_entries)
            .map_max_entries(maps::FAST_V6, options.allow_v6_entries)
            .map_max_entries(maps::FLOWS, options.flow_entries);
        if let Some(pins) = &pins {
            for shape in expected_maps(&options) {
                loader.map_pin_path(shape.name, pins.map_path(shape.name));
            }
        }
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .context("loading the vpn-filter eBPF object (are you root, with BPF enabled?)")?;
        if let Err(e) = aya_log::EbpfLogger::init(&mut ebpf) {
            // The program logs nothing per packet; a missing logger only loses internal warnings.
            log::debug!("eBPF logger not initialised: {e}");
        }
        let prog: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or_else(|| anyhow!("program {PROGRAM_NAME} missing from the object"))?
            .try_into()?;
        prog.load().map_err(load_error)?;
        if options.frame_start == FrameStart::Ip {
            let prog: &mut Xdp = ebpf
                .program_mut(PROGRAM_NAME_IP)
                .ok_or_else(|| anyhow!("program {PROGRAM_NAME_IP} missing from the object"))?
                .try_into()?;
            prog.load().map_err(load_error)?;
        }
        let mut filter = Filter {
            ebpf,
            options,
            links: Vec::new(),
            pins,
            // Maps created by this load are empty (the first sync then reads nothing back, a
            // second or two at a million prefixes); pinned ones may hold a predecessor's.
            fast: fresh.then(fastpath::FastSummary::empty),
            applied: fresh.then(Applied::default),
            endpoints: fresh.then(endpoints::EndpointsApplied::empty),
        };
        filter.set_policy(policy)?;
        filter.set_config(config)?;
        filter.seed_tcp_heads()?;
        Ok(filter)
    }

    /// A random seed for the kernel's TCP stream-head slots, so that nobody can aim SYNs at
    /// another connection's slot.
    fn seed_tcp_heads(&mut self) -> Result<()> {
        let mut seed = [0u8; 4];
        // SAFETY: getrandom(2) writes at most `seed.len()` bytes into `seed`.
        let n = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
        if n != seed.len() as isize {
            return Err(std::io::Error::last_os_error()).context("getrandom for the TCP seed");
        }
        let mut map: Array<&mut MapData, u32> =
            Array::try_from(self.map_mut(maps::TCP_HEAD_SEED)?)?;
        map.set(0, u32::from_ne_bytes(seed), 0)
            .context("writing the TCP stream-head seed")
    }

    pub fn pins(&self) -> Option<&PinDir> {
        self.pins.as_ref()
    }

    pub fn options(&self) -> LoadOptions {
        self.options
    }

    pub fn program_mut(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(PROGRAM_NAME)
            .expect("checked at load")
            .try_into()
            .expect("checked at load")
    }

    /// The program variant for frames starting at `start`, loaded on first use (the IP
    /// variant is verified only when a device needs it).
    fn program_for(&mut self, start: FrameStart) -> Result<&mut Xdp> {
        let name = match start {
            FrameStart::Ethernet => PROGRAM_NAME,
            FrameStart::Ip => PROGRAM_NAME_IP,
        };
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from the object"))?
            .try_into()?;
        if prog.fd().is_err() {
            prog.load().map_err(load_error)?;
        }
        Ok(prog)
    }

    pub fn program_id(&self) -> Option<u32> {
        let prog: &Xdp = self.ebpf.program(PROGRAM_NAME)?.try_into().ok()?;
        prog.info().ok().map(|i| i.id())
    }

    /// Runs one frame through the loaded program with BPF_PROG_TEST_RUN (no interface
    /// needed); returns the XDP action. Flow state and counters change as they would live.
    pub fn run_frame(&self, frame: &[u8]) -> Result<u32> {
        self.run_frame_repeat(frame, 1)
    }

    /// [`Self::run_frame`] `repeat` times in one call (the kernel runs the program back to
    /// back on the same frame); returns the last run's action.
    pub fn run_frame_repeat(&self, frame: &[u8], repeat: u32) -> Result<u32> {
        let name = match self.options.frame_start {
            FrameStart::Ethernet => PROGRAM_NAME,
            FrameStart::Ip => PROGRAM_NAME_IP,
        };
        let prog: &Xdp = self
            .ebpf
            .program(name)
            .expect("checked at load")
            .try_into()
            .expect("checked at load");
        let fd = std::os::fd::AsFd::as_fd(prog.fd()?);
        let run = test_run::test_run(fd, frame, repeat).context("BPF_PROG_TEST_RUN")?;
        Ok(run.action)
    }

    /// Attaches to `iface`. With pins, a link pinned for `iface` by a previous controller is
    /// taken over atomically if it is still attached to that interface; otherwise (and
    /// without pins) a new link is created in `mode` and, with pins, pinned.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<Attached> {
        let ifindex = if_index(iface)?;
        let frame_start = device_frame_start(iface)?;
        if let Some(pin_path) = self.pins.as_ref().map(|p| p.link_path(iface)) {
            if pin_path.exists() {
                match pin::pinned_link_state(&pin_path) {
                    Ok(state) if state.ifindex == ifindex => {
                        let fd_link: FdLink = PinnedLink::from_pin(&pin_path)
                            .with_context(|| format!("opening pinned link {}", pin_path.display()))?
                            .into();
                        let xdp_link = XdpLink::try_from(fd_link).with_context(|| {
                            format!("{} is not an XDP link", pin_path.display())
                        })?;
                        let link = self
                            .program_for(frame_start)?
                            .attach_to_link(xdp_link)
                            .with_context(|| {
                                format!("replacing the program on {iface}'s pinned link")
                            })?;
                        self.links.push(Attachment {
                            iface: iface.into(),
                            mode: None,
                            ifindex,
                            pinned: true,
                            frame_start,
                            link,
                        });
                        return Ok(Attached::Replaced);
                    }
                    Ok(state) => {
                        log::warn!(
                            "{iface}: pinned link {} belongs to a former interface (ifindex {} now {ifindex}); attaching anew",
                            pin_path.display(),
                            state.ifindex
                        );
                    }
                    Err(e) => log::warn!(
                        "{iface}: pinned link {} unusable ({e:#}); attaching anew",
                        pin_path.display()
                    ),
                }
                std::fs::remove_file(&pin_path)
                    .with_context(|| format!("removing stale pin {}", pin_path.display()))?;
            }
        }
        let (link, used) = attach_new(self.program_for(frame_start)?, iface, mode)?;
        if used == XdpMode::Skb {
            log::warn!(
                "{iface}: generic XDP sees packets after GRO: merged TCP/UDP segments are judged with their merged sizes"
            );
        }
        let pinned = if let Some(pin_path) = self.pins.as_ref().map(|p| p.link_path(iface)) {
            let prog = self.program_for(frame_start)?;
            let xdp_link = prog.take_link(link)?;
            let fd_link = FdLink::try_from(xdp_link).with_context(|| {
                format!("{iface}: the kernel gave a netlink XDP attachment, which cannot be pinned")
            })?;
            let pinned = fd_link
                .pin(&pin_path)
                .with_context(|| format!("pinning {}", pin_path.display()))?;
            let fd_link: FdLink = pinned.into();
            let link = prog.attach_to_link(XdpLink::try_from(fd_link)?)?;
            self.links.push(Attachment {
                iface: iface.into(),
                mode: Some(used),
                ifindex,
                pinned: true,
                frame_start,
                link,
            });
            true
        } else {
            self.links.push(Attachment {
                iface: iface.into(),
                mode: Some(used),
                ifindex,
                pinned: false,
                frame_start,
                link,
            });
            false
        };
        log::debug!("{iface}: attached (pinned: {pinned}, frames start at {frame_start:?})");
        Ok(Attached::New(used))
    }

    pub fn attachments(&self) -> &[Attachment] {
        &self.links
    }

    /// Interfaces whose attachment is gone (interface deleted, or deleted and re-created with
    /// a new index) and that exist again: re-attaches them in `mode` and returns their names.
    /// Interfaces still missing are returned in the second list.
    pub fn reattach_lost(&mut self, mode: AttachMode) -> Result<(Vec<String>, Vec<String>)> {
        let (mut back, mut missing) = (Vec::new(), Vec::new());
        let ifaces: Vec<(String, u32, bool)> = self
            .links
            .iter()
            .map(|a| (a.iface.clone(), a.ifindex, a.pinned))
            .collect();
        for (iface, ifindex, pinned) in ifaces {
            let now = if_index(&iface).ok();
            let link_ok = match (&self.pins, pinned) {
                (Some(p), true) => pin::pinned_link_state(&p.link_path(&iface))
                    .map(|s| s.ifindex != 0 && Some(s.ifindex) == now)
                    .unwrap_or(false),
                _ => Some(ifindex) == now,
            };
            if link_ok {
                continue;
            }
            let Some(_) = now else {
                missing.push(iface);
                continue;
            };
            if let Some(pos) = self.links.iter().position(|a| a.iface == iface) {
                let old = self.links.remove(pos);
                // The kernel already detached it; releasing our handle cannot fail usefully.
                if let Ok(prog) = self.program_for(old.frame_start) {
                    let _ = prog.detach(old.link);
                }
            }
            self.attach(&iface, mode)?;
            back.push(iface);
        }
        Ok((back, missing))
    }

    /// Detaches from every interface and removes the link pins: the filter stops.
    pub fn detach_all(&mut self) -> Result<()> {
        let links = std::mem::take(&mut self.links);
        for a in links {
            if a.pinned {
                if let Some(p) = &self.pins {
                    let path = p.link_path(&a.iface);
                    if path.exists() {
                        std::fs::remove_file(&path)
                            .with_context(|| format!("unpinning {}", path.display()))?;
                    }
                }
            }
            self.program_for(a.frame_start)?
                .detach(a.link)
                .with_context(|| format!("detaching from {}", a.iface))?;
        }
        Ok(())
    }

    pub fn set_policy(&mut self, policy: &Policy) -> Result<()> {
        let mut map: Array<&mut MapData, u8> = Array::try_from(self.map_mut(maps::POLICY)?)?;
        for p in Protocol::ALL {
            map.set(*p as u32, policy.mode(*p) as u8, 0)
                .with_context(|| format!("setting the policy of {}", p.name()))?;
        }
        Ok(())
    }

    pub fn policy(&self) -> Result<Policy> {
        let map: Array<&MapData, u8> = Array::try_from(self.map(maps::POLICY)?)?;
        let mut policy = Policy::all(PolicyMode::Off);
        for p in Protocol::ALL {
            let v = map.get(&(*p as u32), 0)?;
            policy.0[*p as usize] = PolicyMode::from_u8(v).unwrap_or(PolicyMode::Off);
        }
        Ok(policy)
    }

    pub fn set_config(&mut self, config: &Config) -> Result<()> {
        let mut map: Array<&mut MapData, Config> = Array::try_from(self.map_mut(maps::CONFIG)?)?;
        map.set(0, config, 0).context("writing the CONFIG map")?;
        Ok(())
    }

    /// Makes the kernel allowlist equal to `want`: prefixes are added (and re-tagged) before
    /// stale ones are removed, so an address that stays registered is never missing, even for
    /// an instant (see [`diff`]). A feed over capacity fails before anything is written, with
    /// the option to raise. If a write fails midway, what was already added stays, nothing
    /// was removed yet, and the next sync re-reads the tries.
    ///
    /// Live flows follow at once, in both directions: after the writes the allowlist
    /// generation (`ALLOW_GEN`) is raised, and each flow entry stamped with an older one looks
    /// its endpoints up again on its next packet. A blocked or pending flow whose endpoint was
    /// just approved passes (event reason `registered`); an allowed flow whose registration
    /// was removed is judged unregistered from then on (reason `revoked`). O(1) per sync,
    /// one lookup per live flow, no walk of the flow map.
    pub fn sync_allowlist(&mut self, want: &Allowlist) -> Result<SyncReport> {
        let want = self.to_applied(want);
        self.sync_applied(want)
    }

    /// An allowlist as the tries' sorted entries.
    fn to_applied(&self, want: &Allowlist) -> Applied {
        let hint = self.applied.as_ref().map_or(0, |a| a.v4.len());
        Applied::from_allowlist_sized(want, hint)
    }

    /// [`Filter::sync_allowlist`] of the allowlist `want` holds.
    fn sync_applied(&mut self, want: Applied) -> Result<SyncReport> {
        let (cap_v4, cap_v6) = (
            self.options.allow_v4_entries as usize,
            self.options.allow_v6_entries as usize,
        );
        if want.v4.len() > cap_v4 {
            bail!(
                "the registry has {} IPv4 prefixes in force but the IPv4 allowlist holds at most {cap_v4} (raise --allow-v4-entries); nothing was changed",
                want.v4.len()
            );
        }
        if want.v6.len() > cap_v6 {
            bail!(
                "the registry has {} IPv6 prefixes in force but the IPv6 allowlist holds at most {cap_v6} (raise --allow-v6-entries); nothing was changed",
                want.v6.len()
            );
        }
        let mut report = SyncReport {
            v4: want.v4.len(),
            v6: want.v6.len(),
            ..Default::default()
        };
        // The fast maps' plan comes from the tries' plan when both states are this
        // controller's own from its last sync (they then match by construction); after a
        // restart or a failed sync both are read back from the kernel and diffed in full.
        let known = match (self.applied.take(), self.fast.take()) {
            (Some(a), Some(f)) => Some((a, f)),
            _ => None,
        };
        let (have, fast_have) = match known {
            Some((a, f)) => (a, Ok(f)),
            None => {
                report.read_kernel = true;
                // Two kinds of maps, read on two threads (the kernel's batch lookups are most
                // of a restart's sync at a million prefixes).
                let ebpf = &self.ebpf;
                let (tries, fast) = std::thread::scope(|s| -> Result<_> {
                    let fast = std::thread::Builder::new()
                        .name("sync-read".into())
                        .spawn_scoped(s, || fastpath::FastState::read(ebpf))
                        .context("starting the thread that reads the fast-path maps")?;
                    let tries = self.read_allowlist();
                    let fast = fast
                        .join()
                        .map_err(|_| anyhow!("the thread reading the fast-path maps panicked"))?;
                    Ok((tries, fast))
                })?;
                (tries?, Err(fast?))
            }
        };
        // Into empty tries (a first load) every wanted prefix is an upsert: the plan is
        // `want` itself, not a copy of it.
        let plan = |have: &[(Prefix, u64)], want: &[(Prefix, u64)]| {
            if have.is_empty() {
                diff::Plan {
                    upserts: Vec::new(),
                    removals: Vec::new(),
                    added: want.len(),
                    is_new: Vec::new(),
                }
            } else {
                diff::plan(have, want)
            }
        };
        let plan_v4 = plan(&have.v4, &want.v4);
        let plan_v6 = plan(&have.v6, &want.v6);
        let upserts_v4 = if have.v4.is_empty() {
            &want.v4
        } else {
            &plan_v4.upserts
        };
        let upserts_v6 = if have.v6.is_empty() {
            &want.v6
        } else {
            &plan_v6.upserts
        };
        let (fast_want, fast_plan) = match fast_have {
            Ok(fast_have) => {
                let fast_want = fastpath::FastSummary::from_applied(&want);
                let fast_plan = fastpath::Plan::from_trie_plans(
                    &fast_have,
                    &fast_want,
                    &fastpath::TrieChange::of(&plan_v4, upserts_v4, have.v4.is_empty()),
                    &fastpath::TrieChange::of(&plan_v6, upserts_v6, have.v6.is_empty()),
                    cap_v4,
                    cap_v6,
                );
                (fast_want, fast_plan)
            }
            Err(fast_have) => {
                let fast_want = fastpath::FastState::from_applied(&want);
                let fast_plan = fastpath::Plan::new(&fast_have, &fast_want, cap_v4, cap_v6);
                (fast_want.summary(), fast_plan)
            }
        };
        // Additions of both families before removals of either.
        let early_v4 = diff::early_removals(&plan_v4, have.v4.len(), cap_v4);
        let early_v6 = diff::early_removals(&plan_v6, have.v6.len(), cap_v6);
        if early_v4 + early_v6 > 0 {
            log::warn!(
                "the allowlist cannot hold the current and the new prefixes at once (IPv4 {} + {} new > {cap_v4} or IPv6 {} + {} new > {cap_v6}): removing {} revoked prefix(es) before adding; raise --allow-v4-entries/--allow-v6-entries for headroom",
                have.v4.len(),
                plan_v4.added,
                have.v6.len(),
                plan_v6.added,
                early_v4 + early_v6
            );
        }
        report.added = plan_v4.added + plan_v6.added;
        report.changed = (upserts_v4.len() - plan_v4.added) + (upserts_v6.len() - plan_v6.added);
        report.removed = plan_v4.removals.len() + plan_v6.removals.len();
        report.removed_first = early_v4 + early_v6;
        let result = (|| -> Result<()> {
            let (first_v4, rest_v4) = plan_v4.removals.split_at(early_v4);
            let (first_v6, rest_v6) = plan_v6.removals.split_at(early_v6);
            remove_all(self.map(maps::ALLOW_V4)?, first_v4, v4_key)?;
            remove_all(self.map(maps::ALLOW_V6)?, first_v6, v6_key)?;
            // The tries and the fast maps are separate kernel maps, each with its own locks:
            // written on two threads, a million prefixes load in about the time of the larger
            // half (0.9 -> 0.5 s). Both sides only add (the fast hashes' early removals are
            // the tries' own, done above), so their order does not matter: an address still
            // registered never looks unregistered in between.
            // The keys are built here, so the thread allocates nothing (its heap arena would
            // keep what it freed).
            let ebpf = &self.ebpf;
            let (v4, v6) = (
                TrieUpserts::new(upserts_v4, v4_key),
                TrieUpserts::new(upserts_v6, v6_key),
            );
            std::thread::scope(|s| -> Result<()> {
                let tries = std::thread::Builder::new()
                    .name("sync-tries".into())
                    .spawn_scoped(s, || -> Result<()> {
                        v4.write(map_shapes::map(ebpf, maps::ALLOW_V4)?)?;
                        v6.write(map_shapes::map(ebpf, maps::ALLOW_V6)?)
                    })
                    .context("starting the thread that writes the allowlist tries")?;
                let fast = fast_plan.grow(ebpf);
                let tries = tries
                    .join()
                    .map_err(|_| anyhow!("the thread writing the allowlist tries panicked"))?;
                tries.and(fast)
            })?;
            remove_all(self.map(maps::ALLOW_V4)?, rest_v4, v4_key)?;
            remove_all(self.map(maps::ALLOW_V6)?, rest_v6, v6_key)?;
            fast_plan.shrink(&self.ebpf)?;
            Ok(())
        })();
        match result {
            Ok(()) => {
                self.applied = Some(want);
                self.fast = Some(fast_want);
                if report.added + report.changed + report.removed > 0 {
                    report.generation = self.bump_generation()?;
                }
                Ok(report)
            }
            // `applied` stays None: the next sync reads what the kernel really holds.
            Err(e) => Err(e),
        }
    }

    /// Raises the allowlist generation (after the allowlist writes); returns the new one.
    fn bump_generation(&mut self) -> Result<u64> {
        let mut map: Array<&mut MapData, u64> = Array::try_from(self.map_mut(maps::ALLOW_GEN)?)?;
        let next = map.get(&0, 0).context("reading ALLOW_GEN")?.wrapping_add(1);
        map.set(0, next, 0).context("writing ALLOW_GEN")?;
        Ok(next)
    }

    /// What the kernel's allowlist tries hold, sorted (reads every entry, in batches).
    pub fn read_allowlist(&self) -> Result<Applied> {
        Ok(Applied {
            v4: read_trie(self.map(maps::ALLOW_V4)?, |addr: [u8; 4], len| Prefix::V4 {
                addr,
                len,
            })?,
            v6: read_trie(self.map(maps::ALLOW_V6)?, |addr: [u8; 16], len| {
                Prefix::V6 { addr, len }
            })?,
        })
    }

    /// The allowlist as this controller last wrote it (`None` before the first sync or after
    /// a failed one).
    pub fn applied_allowlist(&self) -> Option<&Applied> {
        self.applied.as_ref()
    }

    /// The kernel's answer for `ip`: the tag of the matching entry, if any.
    pub fn lookup(&self, ip: IpAddr) -> Result<Option<u64>> {
        let r = match canonical_ip(ip) {
            IpAddr::V4(a) => {
                let t: LpmTrie<&MapData, [u8; 4], AllowValue> =
                    LpmTrie::try_from(self.map(maps::ALLOW_V4)?)?;
                t.get(&Key::new(32, a.octets()), 0)
            }
            IpAddr::V6(a) => {
                let t: LpmTrie<&MapData, [u8; 16], AllowValue> =
                    LpmTrie::try_from(self.map(maps::ALLOW_V6)?)?;
                t.get(&Key::new(128, a.octets()), 0)
            }
        };
        match r {
            Ok(v) => Ok(Some(v.entry_tag)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Counters summed over CPUs.
    pub fn stats(&self) -> Result<Stats> {
        StatsReader::new(self)?.read()
    }

    /// Takes the ring buffer of events (once).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map(maps::EVENTS)
            .ok_or_else(|| anyhow!("EVENTS map already taken"))?;
        Ok(RingBuf::try_from(map)?)
    }

    /// Takes the ring buffer of events (once), wrapped for the daemon and replay.
    pub fn take_event_ring(&mut self) -> Result<events::EventRing> {
        Ok(events::EventRing::new(self.take_events()?))
    }

    pub fn map(&self, name: &str) -> Result<&aya::maps::Map> {
        map_shapes::map(&self.ebpf, name)
    }

    pub fn map_mut(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        map_shapes::map_mut(&mut self.ebpf, name)
    }
}

fn v4_key(p: &Prefix) -> Key<[u8; 4]> {
    match p {
        Prefix::V4 { addr, len } => Key::new(u32::from(*len), *addr),
        Prefix::V6 { .. } => unreachable!("IPv6 prefix in the IPv4 plan"),
    }
}

fn v6_key(p: &Prefix) -> Key<[u8; 16]> {
    match p {
        Prefix::V6 { addr, len } => Key::new(u32::from(*len), *addr),
        Prefix::V4 { .. } => unreachable!("IPv4 prefix in the IPv6 plan"),
    }
}

fn read_trie<K: aya::Pod>(
    map: &aya::maps::Map,
    prefix: impl Fn(K, u8) -> Prefix,
) -> Result<Vec<(Prefix, u64)>> {
    let entries = batch::lookup_all::<Key<K>, AllowValue>(batch::map_data(map)?)
        .context("reading the allowlist (BPF_MAP_LOOKUP_BATCH)")?;
    let mut out: Vec<(Prefix, u64)> = entries
        .into_iter()
        .map(|(k, v)| (prefix(k.data(), k.prefix_len() as u8), v.entry_tag))
        .collect();
    out.sort_unstable_by_key(|(p, _)| *p);
    out.dedup_by_key(|(p, _)| *p);
    Ok(out)
}

/// Prefixes to add to one trie, as its keys and values.
struct TrieUpserts<K: aya::Pod> {
    keys: Vec<Key<K>>,
    values: Vec<AllowValue>,
}

impl<K: aya::Pod> TrieUpserts<K> {
    fn new(upserts: &[(Prefix, u64)], key: fn(&Prefix) -> Key<K>) -> Self {
        TrieUpserts {
            keys: upserts.iter().map(|(p, _)| key(p)).collect(),
            values: upserts
                .iter()
                .map(|(_, tag)| AllowValue { entry_tag: *tag })
                .collect(),
        }
    }

    /// Adds (or re-tags) them in the trie `map`, in batches.
    fn write(&self, map: &aya::maps::Map) -> Result<()> {
        if self.keys.is_empty() {
            return Ok(());
        }
        batch::update(batch::map_data(map)?, &self.keys, &self.values)
            .with_context(|| format!("adding {} prefix(es) to the allowlist", self.keys.len()))
    }
}

/// Removes `removals` from the trie `map`, in batches; prefixes already gone are skipped.
fn remove_all<K: aya::Pod>(
    map: &aya::maps::Map,
    removals: &[Prefix],
    key: fn(&Prefix) -> Key<K>,
) -> Result<()> {
    if removals.is_empty() {
        return Ok(());
    }
    let keys: Vec<Key<K>> = removals.iter().map(key).collect();
    batch::delete(batch::map_data(map)?, &keys)
        .with_context(|| format!("removing {} prefix(es) from the allowlist", removals.len()))
}

/// A prefix as the key of its family's trie.
trait TrieKey<K: aya::Pod> {
    fn trie_key(&self) -> Key<K>;
}

impl Apply<Allowlist> for Filter {
    fn apply(&mut self, set: &Allowlist) -> Result<SyncReport> {
        self.sync_allowlist(set)
    }

    fn apply_owned(&mut self, set: Allowlist) -> Result<SyncReport> {
        let want = self.to_applied(&set);
        // 44 MB at a million prefixes, not held through the write.
        drop(set);
        self.sync_applied(want)
    }
}

impl TrieKey<[u8; 4]> for Prefix {
    fn trie_key(&self) -> Key<[u8; 4]> {
        v4_key(self)
    }
}

impl TrieKey<[u8; 16]> for Prefix {
    fn trie_key(&self) -> Key<[u8; 16]> {
        v6_key(self)
    }
}
