//! `vpn-filter registry validate` and `vpn-filter check`.

use std::{net::IpAddr, path::PathBuf, process::ExitCode};

use anyhow::{anyhow, bail, Result};
use time::OffsetDateTime;
use vpn_filter_common::{maps, AllowValue};

use crate::{
    kernel::pin::{PinDir, DEFAULT_PIN_ROOT},
    registry::{
        canonical_ip,
        guard::{self, Baseline, GuardArgs, DEFAULT_MAX_FEED_BYTES},
        rfc3339,
        signature::Keyring,
        source::{signature_path, FileSource, HttpPoll, HttpSource, SourceSpec},
        state::{StateDir, DEFAULT_STATE_DIR},
        Entry, Feed, FeedFormat, FormatChoice, Prefix, Status, ValidateOptions,
    },
};

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// The feed file (JSON or CSV).
    pub file: PathBuf,
    /// Feed format: auto tells JSON from CSV by the content.
    #[arg(long, value_enum, default_value = "auto")]
    pub registry_format: FormatChoice,
    /// Accept prefixes broader than /8 (IPv4) or /16 (IPv6).
    #[arg(long)]
    pub allow_broad: bool,
    /// Also check the detached signature FILE.sig against this Ed25519 public key (repeat:
    /// valid under any of them, as a controller given several keys accepts it).
    #[arg(long, value_name = "KEYFILE")]
    pub registry_pubkey: Vec<PathBuf>,
    /// Also run the controller's checks against the last good feed persisted in DIR (serial
    /// going backwards, emptying or mass shrink): would a running controller apply it?
    #[arg(long, value_name = "DIR")]
    pub against_state: Option<PathBuf>,
    /// The guard's limits: the size limit always, the others with --against-state.
    #[command(flatten)]
    pub guard: GuardArgs,
}

/// Exit 0 when valid (and acceptable against the state), 1 otherwise.
pub fn validate(args: ValidateArgs) -> Result<()> {
    let name = args.file.display().to_string();
    let mut source = FileSource::new(
        args.file.clone(),
        !args.registry_pubkey.is_empty(),
        args.guard.max_feed_bytes,
    );
    let fetched = source.read_now()?;
    let mut signed = String::new();
    if !args.registry_pubkey.is_empty() {
        let keys = Keyring::from_files(&args.registry_pubkey)?;
        let key = keys.verify(
            &fetched.bytes,
            fetched.signature.as_deref(),
            &signature_path(&args.file).display().to_string(),
        )?;
        signed = format!(", signature valid (key {})", key.fingerprint());
    }
    let opts = ValidateOptions {
        allow_broad: args.allow_broad,
    };
    let (feed, warnings) = Feed::parse(&fetched.bytes, &name, args.registry_format, opts)?;
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let now = OffsetDateTime::now_utc();
    let allow = feed.allowlist(now);
    let count = |s: Status| feed.entries.iter().filter(|e| e.status == s).count();
    let next = feed.next_change_after(now).map_or(String::new(), |t| {
        format!("; next approval or expiry at {}", rfc3339(t))
    });
    println!(
        "{name}: valid {} feed ({}{signed}): {} entries ({} approved, {} pending, {} rejected, {} revoked; {} in force now), {} IPv4 and {} IPv6 prefixes allowed now{next}",
        feed.format.name().to_uppercase(),
        feed.describe(),
        feed.entries.len(),
        count(Status::Approved),
        count(Status::Pending),
        count(Status::Rejected),
        count(Status::Revoked),
        feed.entries.iter().filter(|e| e.in_force(now)).count(),
        allow.v4_count(),
        allow.v6_count()
    );
    if let Some(dir) = &args.against_state {
        let state = StateDir::new(dir);
        let Some(p) = state.load()? else {
            println!(
                "{}: no last good feed persisted: a controller would apply it as its first",
                dir.display()
            );
            return Ok(());
        };
        let format =
            FeedFormat::from_name(&p.meta.format).map_or(FormatChoice::Auto, |f| match f {
                FeedFormat::Json => FormatChoice::Json,
                FeedFormat::Csv => FormatChoice::Csv,
            });
        let (last, _) = Feed::parse(
            &p.bytes,
            &format!("{}/{}", dir.display(), p.meta.feed_file),
            format,
            opts,
        )?;
        let last_allow = last.allowlist(now);
        let guard_opts = args.guard.options();
        let baseline = Baseline {
            serial: last.serial,
            allowlist: &last_allow,
        };
        let warnings = guard::check_transition(Some(baseline), &feed, &allow, &guard_opts)
            .map_err(|e| {
                anyhow!(
                    "a controller would refuse it against the last good feed ({}) in {}: {e}",
                    last.describe(),
                    dir.display()
                )
            })?;
        for w in &warnings {
            eprintln!("warning: {w}");
        }
        println!(
            "against the last good feed in {} ({}, {} prefixes in force now): acceptable, {} prefix(es) removed",
            dir.display(),
            last.describe(),
            last_allow.len(),
            guard::removed_count(&last_allow, &allow)
        );
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The address to check (IPv4 or IPv6; IPv4-mapped IPv6 is checked as IPv4).
    pub address: IpAddr,
    /// Also check against this feed (file or http(s) URL, JSON or CSV).
    #[arg(long, value_name = "FILE|URL")]
    pub registry: Option<String>,
    /// Format of --registry.
    #[arg(long, value_enum, default_value = "auto")]
    pub registry_format: FormatChoice,
    /// With --registry: accept prefixes broader than /8 (IPv4) or /16 (IPv6).
    #[arg(long)]
    pub allow_broad: bool,
    /// The running controller's state directory (its last applied feed names the entries).
    #[arg(long, default_value = DEFAULT_STATE_DIR, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// The running filter's bpffs directory (`run --bpffs-dir`): its pinned allowlist maps
    /// answer for the kernel.
    #[arg(long, default_value = DEFAULT_PIN_ROOT, value_name = "DIR")]
    pub bpffs_dir: PathBuf,
    /// Also say whether ADDRESS is a listed VPN endpoint in this endpoint feed (the running
    /// filter's endpoint lists are always consulted when pinned).
    #[command(flatten)]
    pub endpoints: crate::endpoints::EndpointArgs,
}

/// One view's answer.
struct Answer {
    view: String,
    /// `None`: the view could not be consulted.
    allowed: Option<bool>,
    lines: Vec<String>,
}

/// Exit 0: allowed in every view consulted; 1: not allowed in some view; 2: error.
pub fn check(args: CheckArgs) -> ExitCode {
    match check_inner(&args) {
        Ok(answers) => {
            println!("{}", args.address);
            for a in &answers {
                println!(
                    "  {}: {}",
                    a.view,
                    match a.allowed {
                        Some(true) => "ALLOWED",
                        Some(false) => "NOT ALLOWED",
                        None => "not consulted",
                    }
                );
                for l in &a.lines {
                    println!("    {l}");
                }
            }
            match crate::cli::endpoints::check_lines(
                &args.endpoints,
                &args.state_dir,
                &PinDir::new(&args.bpffs_dir),
                args.address,
            ) {
                Ok(views) => {
                    for (view, lines) in views {
                        println!("  {view}:");
                        for l in lines {
                            println!("    {l}");
                        }
                    }
                }
                Err(e) => {
                    eprintln!("error: endpoint lists: {e:#}");
                    return ExitCode::from(2);
                }
            }
            if answers.iter().all(|a| a.allowed != Some(false)) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn check_inner(args: &CheckArgs) -> Result<Vec<Answer>> {
    let ip = canonical_ip(args.address);
    let now = OffsetDateTime::now_utc();
    let mut answers = Vec::new();
    let opts = ValidateOptions {
        allow_broad: args.allow_broad,
    };
    if let Some(src) = &args.registry {
        let (feed, name) = fetch_feed(src, args.registry_format, opts)?;
        answers.push(feed_answer(
            format!("feed {name} ({})", feed.describe()),
            &feed,
            ip,
            now,
        ));
    }
    // The running filter: its last applied feed, and the kernel's pinned allowlist.
    let state = StateDir::new(&args.state_dir);
    let applied = match state.load() {
        Ok(Some(p)) => {
            let format =
                FeedFormat::from_name(&p.meta.format).map_or(FormatChoice::Auto, |f| match f {
                    FeedFormat::Json => FormatChoice::Json,
                    FeedFormat::Csv => FormatChoice::Csv,
                });
            let name = format!("{}/{}", args.state_dir.display(), p.meta.feed_file);
            // The controller validated it with its own options; be lenient on breadth here.
            let lenient = ValidateOptions { allow_broad: true };
            let (feed, _) = Feed::parse(&p.bytes, &name, format, lenient)?;
            Some((feed, p.meta))
        }
        Ok(None) => None,
        Err(e) => return Err(e.into()),
    };
    let pins = PinDir::new(&args.bpffs_dir);
    let kernel = kernel_lookup(&pins, ip)?;
    match (&kernel, &applied) {
        (Some(tag), _) => {
            let mut lines = Vec::new();
            let view = format!(
                "running filter (kernel allowlist pinned in {})",
                pins.maps_dir().display()
            );
            let allowed = Some(tag.is_some());
            match (tag, &applied) {
                (Some(tag), Some((feed, meta))) => {
                    match feed.entries.iter().find(|e| e.tag() == *tag) {
                        Some(e) => lines.push(entry_line(e, best_prefix(e, ip), now)),
                        None => lines.push(format!(
                            "by entry tag {tag:#018x}, not in the last applied feed ({} in {}): the state directory is older than the kernel's allowlist",
                            feed.describe(),
                            meta.source
                        )),
                    }
                }
                (Some(tag), None) => lines.push(format!(
                    "by entry tag {tag:#018x} (no state in {} to name the entry)",
                    args.state_dir.display()
                )),
                (None, Some((feed, _))) => lines.extend(not_allowed_lines(feed, ip, now)),
                (None, None) => {}
            }
            answers.push(Answer {
                view,
                allowed,
                lines,
            });
        }
        (None, Some((feed, meta))) => {
            let a = feed_answer(
                format!(
                    "running filter's last applied feed ({} from {}, applied {}; no pinned maps in {}, so the kernel itself was not asked)",
                    feed.describe(),
                    meta.source,
                    meta.applied_at,
                    pins.maps_dir().display()
                ),
                feed,
                ip,
                now,
            );
            answers.push(a);
        }
        (None, None) => {
            if answers.is_empty() && args.endpoints.endpoints.is_none() {
                bail!(
                    "nothing to check against: no --registry given, no state in {} and no pinned maps in {} (is the controller running with these directories?)",
                    args.state_dir.display(),
                    pins.maps_dir().display()
                );
            }
            answers.push(Answer {
                view: "running filter".into(),
                allowed: None,
                lines: vec![format!(
                    "not found: no state in {}, no pinned maps in {}",
                    args.state_dir.display(),
                    pins.maps_dir().display()
                )],
            });
        }
    }
    Ok(answers)
}

fn fetch_feed(src: &str, format: FormatChoice, opts: ValidateOptions) -> Result<(Feed, String)> {
    let spec = SourceSpec::parse(src)?;
    let bytes = match &spec {
        SourceSpec::File(p) => {
            FileSource::new(p.clone(), false, DEFAULT_MAX_FEED_BYTES)
                .read_now()?
                .bytes
        }
        SourceSpec::Url(u) => {
            let http = HttpSource::new(u.clone(), false, DEFAULT_MAX_FEED_BYTES, None)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            match rt.block_on(http.fetch(None))? {
                HttpPoll::New(f) => f.bytes,
                HttpPoll::NotModified => bail!("{u}: 304 Not Modified to a request without ETag"),
            }
        }
    };
    let name = spec.describe();
    let (feed, _) = Feed::parse(&bytes, &name, format, opts)?;
    Ok((feed, name))
}

/// `Ok(None)`: no pinned maps (the kernel cannot be asked); `Ok(Some(tag))`: the kernel's
/// answer.
fn kernel_lookup(pins: &PinDir, ip: IpAddr) -> Result<Option<Option<u64>>> {
    Ok(pins
        .lookup::<AllowValue>(maps::ALLOW_V4, maps::ALLOW_V6, ip)?
        .map(|v| v.map(|v| v.entry_tag)))
}

fn feed_answer(view: String, feed: &Feed, ip: IpAddr, now: OffsetDateTime) -> Answer {
    let allow = feed.allowlist(now);
    match allow.lookup(ip) {
        Some((prefix, by)) => {
            let e = feed
                .entry(&by.id)
                .expect("the allowlist names entries of its feed");
            Answer {
                view,
                allowed: Some(true),
                lines: vec![entry_line(e, Some(*prefix), now)],
            }
        }
        None => Answer {
            view,
            allowed: Some(false),
            lines: not_allowed_lines(feed, ip, now),
        },
    }
}

fn best_prefix(e: &Entry, ip: IpAddr) -> Option<Prefix> {
    e.prefixes
        .iter()
        .filter(|p| p.contains(ip))
        .max_by_key(|p| p.len())
        .copied()
}

fn entry_line(e: &Entry, prefix: Option<Prefix>, now: OffsetDateTime) -> String {
    let via = prefix.map_or(String::new(), |p| format!(" via {p}"));
    let until = e.expires_at.map_or("no expiry".to_string(), |t| {
        format!("expires {}", rfc3339(t))
    });
    let state = match e.not_in_force_because(now) {
        None => String::new(),
        Some(why) => {
            format!(" [now not in force: {why}; the controller re-applies at that instant]")
        }
    };
    format!(
        "by entry {} \"{}\" ({}){via}, approved {}, {until}{state}",
        e.id,
        e.holder,
        e.category.name(),
        rfc3339(e.approved_at)
    )
}

fn not_allowed_lines(feed: &Feed, ip: IpAddr, now: OffsetDateTime) -> Vec<String> {
    let covering = feed.entries_covering(ip);
    if covering.is_empty() {
        return vec!["no entry of the feed lists a prefix containing it".to_string()];
    }
    covering
        .into_iter()
        .map(|(e, p)| {
            format!(
                "entry {} \"{}\" lists {p}, but {}",
                e.id,
                e.holder,
                e.not_in_force_because(now)
                    .unwrap_or_else(|| "it is in force (?)".into())
            )
        })
        .collect()
}
