//! Pins: what keeps the filter enforcing while no controller runs.
//!
//! Layout under the bpffs directory (default `/sys/fs/bpf/vpn-filter`):
//!
//! ```text
//! vpn-filter/
//!   v1/maps/<MAP>      every map of the program, layout version 1
//!   links/<iface>      the XDP link of each interface (independent of the map layout)
//! ```
//!
//! A controller that starts finds the maps pinned by its predecessor, checks that each has
//! exactly the shape this build expects (type, key and value size, capacity) and reuses them:
//! the allowlist, flow state and counters carry over. It then loads its program against those
//! maps and swaps it into each pinned link with `BPF_LINK_UPDATE`, an atomic replacement: there
//! is no moment without a filter. A map whose shape does not match is a clear error, never a
//! silent reuse (aya 0.14 does not check). When the record layout changes, the version in the
//! path changes with it ([`vpn_filter_common::PIN_LAYOUT_VERSION`]); the links are carried over
//! to the new program and the old version's maps are removed.

use std::{
    fs::{File, OpenOptions},
    io::{Read as _, Seek as _, Write as _},
    net::IpAddr,
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::maps::{lpm_trie::Key, LpmTrie, Map, MapData, MapError, MapInfo};
use vpn_filter_common::PIN_LAYOUT_VERSION;

use super::map_shapes::{expected_maps, LoadOptions, MapShape};

/// Default bpffs directory.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/vpn-filter";

/// Paths of the pins.
#[derive(Clone, Debug)]
pub struct PinDir {
    root: PathBuf,
}

impl PinDir {
    pub fn new(root: impl Into<PathBuf>) -> PinDir {
        PinDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Directory of this layout version's maps.
    pub fn maps_dir(&self) -> PathBuf {
        self.version_dir(PIN_LAYOUT_VERSION).join("maps")
    }

    fn version_dir(&self, version: u32) -> PathBuf {
        self.root.join(format!("v{version}"))
    }

    pub fn map_path(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    pub fn link_path(&self, iface: &str) -> PathBuf {
        self.links_dir().join(iface)
    }

    /// Interfaces with a pinned link.
    pub fn pinned_links(&self) -> Result<Vec<String>> {
        let dir = self.links_dir();
        if !dir.exists() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            out.push(e?.file_name().to_string_lossy().into_owned());
        }
        out.sort();
        Ok(out)
    }

    /// Map directories of other layout versions (left by an older or newer build).
    pub fn other_versions(&self) -> Result<Vec<PathBuf>> {
        if !self.root.exists() {
            return Ok(Vec::new());
        }
        let mine = self.version_dir(PIN_LAYOUT_VERSION);
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.root)? {
            let p = e?.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if p != mine && name.starts_with('v') && name[1..].parse::<u32>().is_ok() {
                out.push(p);
            }
        }
        Ok(out)
    }

    /// Makes sure the root lives on a bpffs and creates the directories.
    pub fn prepare(&self) -> Result<()> {
        ensure_bpffs(&self.root)?;
        for d in [self.maps_dir(), self.links_dir()] {
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        Ok(())
    }

    /// Checks every pinned map of this layout version against the shape this build expects.
    /// Returns how many were found (0: a fresh start).
    pub fn check_maps(&self, options: &LoadOptions) -> Result<usize> {
        let mut found = 0;
        for want in expected_maps(options) {
            let path = self.map_path(want.name);
            if !path.exists() {
                continue;
            }
            found += 1;
            let info = MapInfo::from_pin(&path)
                .with_context(|| format!("opening pinned map {}", path.display()))?;
            let got = MapShape {
                name: want.name,
                map_type: info
                    .map_type()
                    .with_context(|| format!("type of {}", path.display()))?,
                key_size: info.key_size(),
                value_size: info.value_size(),
                max_entries: info.max_entries(),
            };
            if got != want {
                bail!(
                    "pinned map {} does not have the shape this build expects (found {:?} key {} value {} entries {}, expected {:?} key {} value {} entries {}). \
                     It was left by a different vpn-filter build or configuration (map sizes); it is not reused. \
                     Run `vpn-filter detach` to remove the old filter, or start with the same --allow-*-entries/--flow-entries as before.",
                    path.display(),
                    got.map_type,
                    got.key_size,
                    got.value_size,
                    got.max_entries,
                    want.map_type,
                    want.key_size,
                    want.value_size,
                    want.max_entries
                );
            }
        }
        Ok(found)
    }

    /// Removes every map pin of this and other layout versions and the empty directories.
    /// Links are left alone.
    pub fn remove_maps(&self) -> Result<()> {
        let mut dirs = self.other_versions()?;
        dirs.push(self.version_dir(PIN_LAYOUT_VERSION));
        for d in dirs {
            if d.exists() {
                std::fs::remove_dir_all(&d).with_context(|| format!("removing {}", d.display()))?;
            }
        }
        Ok(())
    }

    /// Removes the whole pin tree if nothing is left in it.
    pub fn remove_if_empty(&self) -> Result<()> {
        let links = self.links_dir();
        if links.exists() && std::fs::read_dir(&links)?.next().is_none() {
            std::fs::remove_dir(&links)?;
        }
        if self.root.exists() && std::fs::read_dir(&self.root)?.next().is_none() {
            std::fs::remove_dir(&self.root)?;
        }
        Ok(())
    }
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

impl PinDir {
    /// Longest-prefix match of `ip` in a pinned trie pair (`v4` or `v6`, by family), for the
    /// CLI's questions to a running filter. `Ok(None)`: that trie is not pinned;
    /// `Ok(Some(None))`: pinned, no prefix covers `ip`.
    pub fn lookup<V: aya::Pod>(&self, v4: &str, v6: &str, ip: IpAddr) -> Result<Option<Option<V>>> {
        let path = self.map_path(match ip {
            IpAddr::V4(_) => v4,
            IpAddr::V6(_) => v6,
        });
        if !path.exists() {
            return Ok(None);
        }
        let data = MapData::from_pin(&path).with_context(|| {
            format!("opening the pinned map {} (are you root?)", path.display())
        })?;
        let map = Map::LpmTrie(data);
        let r = match ip {
            IpAddr::V4(a) => {
                let t: LpmTrie<_, [u8; 4], V> = LpmTrie::try_from(&map)?;
                t.get(&Key::new(32, a.octets()), 0)
            }
            IpAddr::V6(a) => {
                let t: LpmTrie<_, [u8; 16], V> = LpmTrie::try_from(&map)?;
                t.get(&Key::new(128, a.octets()), 0)
            }
        };
        match r {
            Ok(v) => Ok(Some(Some(v))),
            Err(MapError::KeyNotFound) => Ok(Some(None)),
            Err(e) => {
                Err(anyhow::Error::new(e).context(format!("looking up {ip} in {}", path.display())))
            }
        }
    }
}

/// Fails unless `path` (or its nearest existing ancestor) is on a bpffs. If `/sys/fs/bpf` is
/// not mounted at all (common inside `ip netns exec`, which remounts /sys), mounts it: pins
/// on a private instance would vanish with this process, so the controller must use the
/// host's bpffs.
pub fn ensure_bpffs(path: &Path) -> Result<()> {
    let mut probe = path.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            break;
        }
    }
    if fs_magic(&probe)? == BPF_FS_MAGIC {
        return Ok(());
    }
    if path.starts_with("/sys/fs/bpf")
        && fs_magic(Path::new("/sys/fs/bpf")).ok() != Some(BPF_FS_MAGIC)
    {
        let target = c"/sys/fs/bpf";
        // SAFETY: valid NUL-terminated strings; a plain mount(2).
        let rc = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                target.as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            bail!(
                "/sys/fs/bpf is not a bpffs and mounting one failed: {}",
                std::io::Error::last_os_error()
            );
        }
        log::warn!(
            "mounted a bpffs on /sys/fs/bpf: if this process runs in a private mount namespace (e.g. `ip netns exec`), its pins vanish with it; start the controller in the host's mount namespace for enforcement that outlives it"
        );
        return Ok(());
    }
    bail!(
        "{} is not on a bpffs (mount -t bpf bpf /sys/fs/bpf)",
        path.display()
    )
}

fn fs_magic(p: &Path) -> Result<i64> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes())?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and statfs buffer.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        bail!(
            "statfs {}: {}",
            p.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(st.f_type as i64)
}

/// `bpf_link_info` for an XDP link: the interface it is attached to (0 once the interface is
/// gone: the kernel detaches XDP links of an unregistered device) and the program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdpLinkState {
    pub ifindex: u32,
    pub prog_id: u32,
    pub link_id: u32,
}

/// Opens a pinned BPF object (BPF_OBJ_GET).
pub fn bpf_obj_get(path: &Path) -> Result<std::os::fd::OwnedFd> {
    use std::os::{fd::FromRawFd as _, unix::ffi::OsStrExt as _};
    #[repr(C)]
    struct ObjAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    const BPF_OBJ_GET: libc::c_long = 7;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let attr = ObjAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    // SAFETY: attr is valid for its size and points at a NUL-terminated path.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &attr as *const ObjAttr,
            std::mem::size_of::<ObjAttr>() as u32,
        )
    };
    if fd < 0 {
        bail!(
            "opening pin {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// State of the XDP link pinned at `path`.
pub fn pinned_link_state(path: &Path) -> Result<XdpLinkState> {
    xdp_link_state(bpf_obj_get(path)?)
}

/// Reads an XDP link's state with BPF_OBJ_GET_INFO_BY_FD (aya 0.14 does not expose the
/// XDP part of the link info).
pub fn xdp_link_state(link: impl AsFd) -> Result<XdpLinkState> {
    // struct bpf_link_info: type, id, prog_id, then a union aligned to 8 (xdp.ifindex first).
    #[repr(C, align(8))]
    struct LinkInfo {
        link_type: u32,
        id: u32,
        prog_id: u32,
        _pad: u32,
        union: [u64; 8],
    }
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    const BPF_LINK_TYPE_XDP: u32 = 6;
    let mut info = LinkInfo {
        link_type: 0,
        id: 0,
        prog_id: 0,
        _pad: 0,
        union: [0; 8],
    };
    let attr = InfoAttr {
        bpf_fd: link.as_fd().as_raw_fd() as u32,
        info_len: std::mem::size_of::<LinkInfo>() as u32,
        info: &mut info as *mut LinkInfo as u64,
    };
    // SAFETY: attr and info are valid for the sizes passed; the kernel writes at most info_len.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &attr as *const InfoAttr,
            std::mem::size_of::<InfoAttr>() as u32,
        )
    };
    if rc != 0 {
        bail!(
            "BPF_OBJ_GET_INFO_BY_FD on a link: {}",
            std::io::Error::last_os_error()
        );
    }
    if info.link_type != BPF_LINK_TYPE_XDP {
        bail!(
            "pinned link {} is not an XDP link (type {})",
            info.id,
            info.link_type
        );
    }
    Ok(XdpLinkState {
        ifindex: info.union[0] as u32,
        prog_id: info.prog_id,
        link_id: info.id,
    })
}

/// An exclusive lock: one controller per pin directory.
pub struct ControllerLock {
    _file: File,
    path: PathBuf,
}

impl ControllerLock {
    /// Takes the lock at `path` (a regular file, e.g. /run/vpn-filter/<pins>.lock) or fails
    /// naming the process that holds it.
    pub fn acquire(path: &Path) -> Result<ControllerLock> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("opening lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(anyhow!("locking {}: {e}", path.display()))
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(anyhow!(
                "another vpn-filter controller is running (lock {} held{}); only one controller may manage these pins",
                path.display(),
                if holder.is_empty() { String::new() } else { format!(" by pid {holder}") }
            ));
            }
        }
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "{}", std::process::id())?;
        file.flush()?;
        Ok(ControllerLock {
            _file: file,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Default lock path for a pin root: one lock per pin tree.
pub fn default_lock_path(pin_root: &Path) -> PathBuf {
    let tag: String = pin_root
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    PathBuf::from("/run/vpn-filter").join(format!("{}.lock", tag.trim_matches('_')))
}

/// What `vpn-filter detach` removed.
#[derive(Debug, Default)]
pub struct DetachReport {
    pub links: Vec<String>,
    pub maps_removed: bool,
}

/// Removes the filter from `iface`, or from every interface when `iface` is `None`; once no
/// link is left, also every map pin and the pin directory. Refuses while a controller holds
/// the lock: it would re-attach.
pub fn detach(pins: &PinDir, iface: Option<&str>, lock_path: &Path) -> Result<DetachReport> {
    let _lock = ControllerLock::acquire(lock_path).context(
        "stop the running controller first (systemctl stop vpn-filter), or let it detach with --detach-on-exit",
    )?;
    let mut report = DetachReport::default();
    let targets = match iface {
        Some(i) => {
            if !pins.link_path(i).exists() {
                bail!(
                    "no pinned vpn-filter link for {i} under {}",
                    pins.links_dir().display()
                );
            }
            vec![i.to_string()]
        }
        None => pins.pinned_links()?,
    };
    for i in targets {
        let path = pins.link_path(&i);
        // Unpinning drops the last reference once our fd closes: the kernel detaches the program.
        let link = aya::programs::links::PinnedLink::from_pin(&path)
            .with_context(|| format!("opening pinned link {}", path.display()))?;
        drop(
            link.unpin()
                .with_context(|| format!("unpinning {}", path.display()))?,
        );
        report.links.push(i);
    }
    // Without links nothing runs the program: the maps go too, whether the last link went
    // by name or with all the others.
    if iface.is_none() || pins.pinned_links()?.is_empty() {
        pins.remove_maps()?;
        report.maps_removed = true;
        pins.remove_if_empty()?;
    }
    Ok(report)
}
