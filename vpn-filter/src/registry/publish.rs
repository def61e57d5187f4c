//! The registry operator's side: `vpn-filter registry keygen` and `vpn-filter registry
//! publish`.
//!
//! `publish` writes into an output directory laid out for any static web server:
//!
//! ```text
//! OUT/current -> releases/42          symlink, the web server's document root
//! OUT/releases/41/feed.json           the previous publications (the last --keep)
//! OUT/releases/42/feed.json           the canonical feed, serial 42
//! OUT/releases/42/feed.json.sig       its detached signature (base64)
//! ```
//!
//! A release directory is complete (both files written and fsync'ed) before `current` is
//! switched to it by `rename(2)` of a new symlink over the old one, so the server resolves
//! either the old pair or the new pair, never a mix. Controllers fetch the feed and then its
//! signature in two requests; a publication landing between them is caught by the
//! controller, which checks that the feed did not change meanwhile (see `source.rs`).
//!
//! Static servers (nginx, Apache, most CDNs) make the ETag from the file's modification time
//! in whole seconds and its size, so two publications in the same second with the same size
//! would share an ETag and a controller polling with `If-None-Match` would keep the older one.
//! `publish` therefore gives every release's files a modification time at least one second
//! later than the previous release's.

use std::{
    fs::File,
    io::Write as _,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::{anyhow, bail, Context as _, Result};
use time::OffsetDateTime;

use crate::registry::{
    canonical,
    guard::{self, Baseline, GuardOptions, DEFAULT_MAX_SHRINK_PERCENT},
    signature::{PublicKey, SecretKey},
    state::sha256_hex,
    Feed, FormatChoice, ValidateOptions,
};

#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Where to write the private key (PEM PKCS#8, mode 0600). Refused if it exists.
    pub private_key: PathBuf,
    /// Where to write the public key (PEM, the format `run --registry-pubkey` reads).
    /// Default: the private key's path with `.pub` appended.
    #[arg(long, value_name = "FILE")]
    pub public_key: Option<PathBuf>,
}

/// `FILE` + `.pub`.
fn default_public_path(private: &Path) -> PathBuf {
    let mut s = private.as_os_str().to_os_string();
    s.push(".pub");
    PathBuf::from(s)
}

/// Creates `path` (refusing to replace anything) with `mode`, writes `text` and fsyncs.
fn write_new(path: &Path, text: &str, mode: u32) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => anyhow!(
                "{} already exists: refusing to overwrite a key (remove or move it first)",
                path.display()
            ),
            std::io::ErrorKind::NotFound => anyhow!(
                "cannot create {}: the directory {} does not exist",
                path.display(),
                path.parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."))
                    .display()
            ),
            _ => anyhow!("cannot create {}: {e}", path.display()),
        })?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

pub fn keygen(args: KeygenArgs) -> Result<()> {
    let public_path = args
        .public_key
        .clone()
        .unwrap_or_else(|| default_public_path(&args.private_key));
    if public_path == args.private_key {
        bail!(
            "the public and the private key would both be written to {}",
            public_path.display()
        );
    }
    // Both paths are checked before anything is written, so a refusal leaves nothing behind.
    for p in [&args.private_key, &public_path] {
        if std::fs::symlink_metadata(p).is_ok() {
            bail!(
                "{} already exists: refusing to overwrite a key (remove or move it first)",
                p.display()
            );
        }
    }
    let secret = SecretKey::generate().map_err(|e| anyhow!(e))?;
    write_new(&args.private_key, &secret.to_pem(), 0o600)?;
    let public = secret.public();
    if let Err(e) = write_new(&public_path, &public.to_pem(), 0o644) {
        let _ = std::fs::remove_file(&args.private_key);
        return Err(e);
    }
    println!(
        "private key: {} (mode 0600; keep it secret, it signs feeds)",
        args.private_key.display()
    );
    println!(
        "public key:  {} (give it to gateways: --registry-pubkey {})",
        public_path.display(),
        public_path.display()
    );
    println!("key {}", public.fingerprint());
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// The registry's source of truth: a CSV export or a JSON feed.
    pub input: PathBuf,
    /// Output directory (created if missing); serve OUT/current as the web server's document
    /// root.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// The Ed25519 private key that signs the feed (from `registry keygen`, or `openssl
    /// genpkey -algorithm ed25519`).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Input format: auto tells JSON from CSV by the content.
    #[arg(long, value_enum, default_value = "auto")]
    pub registry_format: FormatChoice,
    /// Accept prefixes broader than /8 (IPv4) or /16 (IPv6), as `registry validate` does.
    #[arg(long)]
    pub allow_broad: bool,
    /// Name of the feed file (its signature is NAME.sig); gateways poll
    /// https://HOST/NAME.
    #[arg(long, default_value = "feed.json", value_name = "NAME")]
    pub name: String,
    /// How many releases to keep in OUT/releases (the current one is always kept).
    #[arg(long, default_value_t = 10, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep: u32,
    /// Publish even when gateways with default settings would refuse the feed because it
    /// empties the allowlist or removes more than half of it (they need --force-shrink too).
    #[arg(long)]
    pub force_shrink: bool,
    /// Print the new serial and the diff, write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// One publisher at a time per output directory (`OUT/.publish.lock`, flock'ed): two would
/// pick the same serial.
fn lock_out(out: &Path) -> Result<File> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let path = out.join(".publish.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "another `registry publish` is writing to {} (it holds {})",
            out.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(err)) => Err(anyhow!("locking {}: {err}", path.display())),
    }
}

/// The release directories under `releases` by serial.
fn releases(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(anyhow!("reading {}: {e}", dir.display())),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        if let Some(serial) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
            out.push((serial, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsync {}", dir.display()))
}

/// Published files and directories are world-readable whatever the umask: a web server
/// running as its own user serves them.
const PUBLIC_FILE: u32 = 0o644;
const PUBLIC_DIR: u32 = 0o755;

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

fn write_file(path: &Path, bytes: &[u8], mtime: SystemTime) -> Result<()> {
    let mut f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.set_permissions(std::fs::Permissions::from_mode(PUBLIC_FILE)))
        .and_then(|()| f.set_modified(mtime))
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

pub fn publish(args: PublishArgs) -> Result<()> {
    if args.name.is_empty() || args.name.contains('/') || args.name.starts_with('.') {
        bail!(
            "--name \"{}\": a plain file name is expected (no directory, not hidden)",
            args.name
        );
    }
    let opts = ValidateOptions {
        allow_broad: args.allow_broad,
    };
    // The input, checked exactly as `registry validate` checks it.
    let input_name = args.input.display().to_string();
    let bytes = std::fs::read(&args.input).with_context(|| format!("cannot read {input_name}"))?;
    let (input, warnings) = Feed::parse(&bytes, &input_name, args.registry_format, opts)
        .map_err(|e| anyhow!("{e}\nnothing was published"))?;
    // Parsed: the input's bytes are not needed again (88 MB for a million-row CSV).
    drop(bytes);
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let secret = SecretKey::from_file(&args.key)?;
    if let Ok(m) = std::fs::metadata(&args.key) {
        if m.mode() & 0o077 != 0 {
            eprintln!(
                "warning: the private key {} is readable by others (mode {:o}): chmod 600 it",
                args.key.display(),
                m.mode() & 0o777
            );
        }
    }

    // The previous publication: what `current` points at, and the highest serial ever
    // released (after a roll-back of `current` to an older release, a new one must still rise
    // above the newest).
    let current = args.out.join("current");
    let releases_dir = args.out.join("releases");
    let _lock = if args.dry_run {
        None
    } else {
        Some(lock_out(&args.out)?)
    };
    match std::fs::symlink_metadata(&current) {
        Ok(m) if !m.file_type().is_symlink() => bail!(
            "{} exists and is not a symlink: this directory was not made by `registry publish` (choose an empty or new --out)",
            current.display()
        ),
        _ => {}
    }
    let previous_path = current.join(&args.name);
    let previous = match std::fs::read(&previous_path) {
        Ok(b) => {
            let name = previous_path.display().to_string();
            let (feed, _) = Feed::parse(
                &b,
                &name,
                FormatChoice::Json,
                ValidateOptions { allow_broad: true },
            )
            .map_err(|e| anyhow!("the previous publication does not parse: {e}"))?;
            Some(feed)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(anyhow!("reading {}: {e}", previous_path.display())),
    };
    let released = releases(&releases_dir)?;
    let highest = released
        .last()
        .map(|(s, _)| *s)
        .max(previous.as_ref().and_then(|p| p.serial));
    let serial = canonical::next_serial(highest, input.serial).map_err(|e| anyhow!(e))?;
    let now = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("0 is a valid nanosecond");
    let feed_bytes = canonical::to_json(serial, now, &input.entries);

    // Self-check: the canonical bytes say what the input said.
    let (published, _) =
        Feed::parse(&feed_bytes, "the canonical feed", FormatChoice::Json, opts)
            .map_err(|e| anyhow!("internal error: the canonical feed does not parse: {e}"))?;
    if !canonical::diff(&input, &published).is_empty() || published.serial != Some(serial) {
        bail!("internal error: the canonical feed differs from the input");
    }
    let signature = secret.sign_base64(&feed_bytes);
    let public: PublicKey = secret.public();
    public
        .verify(&feed_bytes, Some(signature.as_bytes()), "the new signature")
        .map_err(|e| anyhow!("internal error: {e}"))?;

    // What changed, and whether gateways would take it.
    let empty = Feed {
        format: published.format,
        serial: None,
        generated_at: None,
        entries: Vec::new(),
    };
    let before = previous.as_ref().unwrap_or(&empty);
    let d = canonical::diff(before, &published);
    let from = match &previous {
        Some(p) => p.describe(),
        None => "nothing published".to_string(),
    };
    println!("{from} -> serial {serial}: {}", d.summary());
    for line in d.lines() {
        println!("  {line}");
    }
    if let Some(prev) = &previous {
        let last_allow = prev.allowlist(now);
        let guard_opts = GuardOptions {
            max_feed_bytes: u64::MAX,
            max_shrink_percent: DEFAULT_MAX_SHRINK_PERCENT,
            force_shrink: args.force_shrink,
            allow_serial_reset: false,
        };
        let baseline = Baseline {
            serial: prev.serial,
            allowlist: &last_allow,
        };
        guard::check_transition(
            Some(baseline),
            &published,
            &published.allowlist(now),
            &guard_opts,
        )
        .map_err(|e| {
            anyhow!("gateways with default settings would refuse this feed: {e}; nothing was published (--force-shrink publishes it anyway)")
        })?;
    }
    if args.dry_run {
        println!(
            "dry run: serial {serial} ({} bytes) not written",
            feed_bytes.len()
        );
        return Ok(());
    }

    // The release directory, complete before it is named.
    std::fs::create_dir_all(&releases_dir)
        .with_context(|| format!("creating {}", releases_dir.display()))?;
    set_mode(&releases_dir, PUBLIC_DIR)?;
    let mtime = released
        .iter()
        .filter_map(|(_, dir)| std::fs::metadata(dir.join(&args.name)).ok())
        .filter_map(|m| m.modified().ok())
        .map(|t| t + Duration::from_secs(1))
        .fold(SystemTime::now(), SystemTime::max);
    let release = releases_dir.join(serial.to_string());
    let staging = releases_dir.join(format!(".{serial}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir(&staging).with_context(|| format!("creating {}", staging.display()))?;
    set_mode(&staging, PUBLIC_DIR)?;
    let sig_name = format!("{}.sig", args.name);
    write_file(&staging.join(&args.name), &feed_bytes, mtime)?;
    write_file(&staging.join(&sig_name), signature.as_bytes(), mtime)?;
    fsync_dir(&staging)?;
    std::fs::rename(&staging, &release)
        .with_context(|| format!("renaming {} to {}", staging.display(), release.display()))?;
    fsync_dir(&releases_dir)?;

    // The switch: one rename of a new symlink over `current`.
    let link_tmp = args
        .out
        .join(format!(".current.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&link_tmp);
    let target = Path::new("releases").join(serial.to_string());
    std::os::unix::fs::symlink(&target, &link_tmp)
        .with_context(|| format!("creating the symlink {}", link_tmp.display()))?;
    std::fs::rename(&link_tmp, &current)
        .with_context(|| format!("switching {} to {}", current.display(), target.display()))?;
    fsync_dir(&args.out)?;

    // Old releases beyond --keep go (never the current one).
    let mut all = releases(&releases_dir)?;
    let excess = all.len().saturating_sub(args.keep as usize);
    for (s, dir) in all.drain(..excess) {
        if s != serial {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("removing the old release {}", dir.display()))?;
        }
    }
    println!(
        "published serial {serial} ({} bytes, sha256 {}, signed by {}): {} -> {}; serve {} as the document root",
        feed_bytes.len(),
        sha256_hex(&feed_bytes),
        public.fingerprint(),
        current.display(),
        target.display(),
        current.display()
    );
    Ok(())
}
