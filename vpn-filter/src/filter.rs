//! Loading the XDP object, attaching it, and the controller's view of its maps.

use std::{collections::BTreeMap, net::IpAddr};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, MapData, PerCpuArray, RingBuf,
    },
    programs::{xdp::XdpLinkId, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use vpn_filter_common::{
    counter_index, maps, verdict_counter_index, AllowValue, Config, Counter, PolicyMode, Protocol,
    Verdict, DEFAULT_ALLOW_V4_ENTRIES, DEFAULT_ALLOW_V6_ENTRIES, DEFAULT_FLOW_ENTRIES,
    PROGRAM_NAME,
};

use crate::registry::{canonical_ip, Allowlist, Prefix};

/// The XDP object built by build.rs from the vpn-filter-ebpf crate.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vpn-filter.bpf.o"));

/// Per-protocol policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy(pub [PolicyMode; Protocol::COUNT]);

impl Default for Policy {
    /// Enforce for every protocol: every detection is structural (exact sizes, length fields,
    /// magic numbers, or confirmation by the flow's other packets).
    fn default() -> Self {
        let mut modes = [PolicyMode::Enforce; Protocol::COUNT];
        modes[Protocol::None as usize] = PolicyMode::Off;
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

/// Map sizes and runtime settings fixed at load time.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    pub allow_v4_entries: u32,
    pub allow_v6_entries: u32,
    pub flow_entries: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            allow_v4_entries: DEFAULT_ALLOW_V4_ENTRIES,
            allow_v6_entries: DEFAULT_ALLOW_V6_ENTRIES,
            flow_entries: DEFAULT_FLOW_ENTRIES,
        }
    }
}

/// How to attach: `Auto` tries native (driver) mode and falls back to generic (skb) mode with
/// a warning; the others insist.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    Auto,
    Native,
    Generic,
}

/// Result of one allowlist sync.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
    pub v4: usize,
    pub v6: usize,
}

/// The loaded program and its maps.
pub struct Filter {
    ebpf: Ebpf,
    options: LoadOptions,
    links: Vec<Attachment>,
}

/// One interface the program is attached to.
#[derive(Debug)]
pub struct Attachment {
    pub iface: String,
    pub mode: XdpMode,
    link: XdpLinkId,
}

impl Filter {
    /// Loads the embedded object through the verifier, sized by `options`, with `policy` and
    /// `config` written before anything is attached.
    pub fn load(options: LoadOptions, policy: &Policy, config: &Config) -> Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(maps::ALLOW_V4, options.allow_v4_entries)
            .map_max_entries(maps::ALLOW_V6, options.allow_v6_entries)
            .map_max_entries(maps::FLOWS, options.flow_entries)
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
        prog.load()
            .context("the kernel verifier rejected the XDP program")?;
        let mut filter = Filter {
            ebpf,
            options,
            links: Vec::new(),
        };
        filter.set_policy(policy)?;
        filter.set_config(config)?;
        Ok(filter)
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

    pub fn program_id(&self) -> Option<u32> {
        let prog: &Xdp = self.ebpf.program(PROGRAM_NAME)?.try_into().ok()?;
        prog.info().ok().map(|i| i.id())
    }

    /// Runs one frame through the loaded program with BPF_PROG_TEST_RUN (no interface
    /// needed); returns the XDP action. Flow state and counters change as they would live.
    pub fn run_frame(&self, frame: &[u8]) -> Result<u32> {
        use aya::programs::{TestRun as _, TestRunOptions};
        let prog: &Xdp = self
            .ebpf
            .program(PROGRAM_NAME)
            .expect("checked at load")
            .try_into()
            .expect("checked at load");
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        let r = prog.test_run(opts).context("BPF_PROG_TEST_RUN")?;
        Ok(r.return_value)
    }

    /// Attaches to `iface`; returns the mode actually used.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<XdpMode> {
        let prog = self.program_mut();
        let (link, used) = match mode {
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
            AttachMode::Auto => {
                match prog.attach(iface, XdpMode::Driver) {
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
                }
            }
        };
        self.links.push(Attachment {
            iface: iface.to_string(),
            mode: used,
            link,
        });
        Ok(used)
    }

    pub fn attachments(&self) -> &[Attachment] {
        &self.links
    }

    /// Detaches from every interface.
    pub fn detach_all(&mut self) -> Result<()> {
        let links = std::mem::take(&mut self.links);
        for a in links {
            self.program_mut()
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
    /// an instant. A prefix that does not fit (map full) fails the sync with a clear error;
    /// what was already added stays, and nothing was removed yet.
    pub fn sync_allowlist(&mut self, want: &Allowlist) -> Result<SyncReport> {
        let (want_v4, want_v6) = (want.v4_count(), want.v6_count());
        if want_v4 > self.options.allow_v4_entries as usize {
            bail!(
                "the registry has {want_v4} IPv4 prefixes but the allowlist holds at most {} (raise --allow-v4-entries)",
                self.options.allow_v4_entries
            );
        }
        if want_v6 > self.options.allow_v6_entries as usize {
            bail!(
                "the registry has {want_v6} IPv6 prefixes but the allowlist holds at most {} (raise --allow-v6-entries)",
                self.options.allow_v6_entries
            );
        }
        let mut report = SyncReport {
            v4: want_v4,
            v6: want_v6,
            ..Default::default()
        };
        {
            let mut v4: LpmTrie<&mut MapData, [u8; 4], AllowValue> =
                LpmTrie::try_from(self.map_mut(maps::ALLOW_V4)?)?;
            let have = read_trie(&v4)?;
            let wanted: BTreeMap<Key4, u64> = want
                .prefixes
                .iter()
                .filter_map(|(p, by)| match p {
                    Prefix::V4 { addr, len } => Some(((*len, *addr), by.tag)),
                    _ => None,
                })
                .collect();
            apply_diff(&mut v4, &have, &wanted, &mut report)?;
        }
        {
            let mut v6: LpmTrie<&mut MapData, [u8; 16], AllowValue> =
                LpmTrie::try_from(self.map_mut(maps::ALLOW_V6)?)?;
            let have = read_trie(&v6)?;
            let wanted: BTreeMap<(u8, [u8; 16]), u64> = want
                .prefixes
                .iter()
                .filter_map(|(p, by)| match p {
                    Prefix::V6 { addr, len } => Some(((*len, *addr), by.tag)),
                    _ => None,
                })
                .collect();
            apply_diff(&mut v6, &have, &wanted, &mut report)?;
        }
        Ok(report)
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
        let map: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(self.map(maps::STATS)?)?;
        let sum = |i: u32| -> Result<u64> { Ok(map.get(&i, 0)?.iter().sum()) };
        let mut stats = Stats::default();
        for p in Protocol::ALL {
            for v in Verdict::ALL {
                let n = sum(verdict_counter_index(*p, *v))?;
                if n > 0 {
                    stats.verdicts.insert((*p, *v), n);
                }
            }
        }
        for c in Counter::ALL {
            stats.counters.insert(*c, sum(counter_index(*c))?);
        }
        Ok(stats)
    }

    /// Takes the ring buffer of events (once).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map(maps::EVENTS)
            .ok_or_else(|| anyhow!("EVENTS map already taken"))?;
        Ok(RingBuf::try_from(map)?)
    }

    pub fn map(&self, name: &str) -> Result<&aya::maps::Map> {
        self.ebpf
            .map(name)
            .ok_or_else(|| anyhow!("map {name} missing from the object"))
    }

    pub fn map_mut(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("map {name} missing from the object"))
    }
}

type Key4 = (u8, [u8; 4]);

fn read_trie<K: aya::Pod + Ord>(
    trie: &LpmTrie<&mut MapData, K, AllowValue>,
) -> Result<BTreeMap<(u8, K), u64>> {
    let mut out = BTreeMap::new();
    for item in trie.iter() {
        let (k, v) = item.context("reading the allowlist")?;
        out.insert((k.prefix_len() as u8, k.data()), v.entry_tag);
    }
    Ok(out)
}

fn apply_diff<K: aya::Pod + Ord>(
    trie: &mut LpmTrie<&mut MapData, K, AllowValue>,
    have: &BTreeMap<(u8, K), u64>,
    want: &BTreeMap<(u8, K), u64>,
    report: &mut SyncReport,
) -> Result<()> {
    for ((len, data), tag) in want {
        match have.get(&(*len, *data)) {
            Some(t) if t == tag => continue,
            Some(_) => report.changed += 1,
            None => report.added += 1,
        }
        trie.insert(
            &Key::new(*len as u32, *data),
            AllowValue { entry_tag: *tag },
            0,
        )
        .with_context(|| format!("adding an allowlist prefix of length /{len} (map full?)"))?;
    }
    for (len, data) in have.keys() {
        if !want.contains_key(&(*len, *data)) {
            trie.remove(&Key::new(*len as u32, *data))
                .with_context(|| format!("removing an allowlist prefix of length /{len}"))?;
            report.removed += 1;
        }
    }
    Ok(())
}

/// Counters read from the kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Non-zero protocol x verdict counts.
    pub verdicts: BTreeMap<(Protocol, Verdict), u64>,
    pub counters: BTreeMap<Counter, u64>,
}

impl Stats {
    pub fn verdict(&self, p: Protocol, v: Verdict) -> u64 {
        self.verdicts.get(&(p, v)).copied().unwrap_or(0)
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
