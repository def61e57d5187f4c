//! `vpn-filter endpoints validate|import`, and the endpoint part of `vpn-filter check`.

use std::{net::IpAddr, path::PathBuf};

use anyhow::{bail, Context as _, Result};
use vpn_filter_common::{maps, EndpointValue};

use crate::{
    endpoints::{
        import::{import, ImportFormat},
        EndpointArgs, EndpointFeed, EndpointFormatChoice, EndpointSet, ParseOptions, Scope,
    },
    kernel::pin::PinDir,
    registry::{
        canonical_ip,
        signature::PublicKey,
        source::{signature_path, FileSource},
        state::StateDir,
        Prefix,
    },
};

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// The endpoint feed (plain-text CIDR list or JSON).
    pub file: PathBuf,
    /// Provider of a plain-text list.
    #[arg(long, value_name = "NAME")]
    pub provider: Option<String>,
    /// Feed format: auto tells JSON (`{` first) from text.
    #[arg(long, value_enum, default_value = "auto")]
    pub format: EndpointFormatChoice,
    /// Accept prefixes broader than /16 (IPv4) or /32 (IPv6).
    #[arg(long)]
    pub allow_broad: bool,
    /// Also check the detached signature FILE.sig against this Ed25519 public key.
    #[arg(long, value_name = "KEYFILE")]
    pub pubkey: Option<PathBuf>,
}

/// Exit 0 when valid, 1 otherwise (every problem printed with its line or entry and field).
pub fn validate(args: ValidateArgs) -> Result<()> {
    let name = args.file.display().to_string();
    let fetched = FileSource::new(
        args.file.clone(),
        args.pubkey.is_some(),
        crate::registry::guard::DEFAULT_MAX_FEED_BYTES,
    )
    .read_now()?;
    let mut signed = String::new();
    if let Some(key_path) = &args.pubkey {
        let key = PublicKey::from_file(key_path)?;
        key.verify(
            &fetched.bytes,
            fetched.signature.as_deref(),
            &signature_path(&args.file).display().to_string(),
        )?;
        signed = format!(", signature valid (key {})", key.fingerprint());
    }
    let opts = ParseOptions {
        provider: args.provider.clone(),
        allow_broad: args.allow_broad,
    };
    let (feed, warnings) = EndpointFeed::parse(&fetched.bytes, &name, args.format, &opts)?;
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let set = &feed.set;
    println!(
        "{name}: valid {} endpoint feed ({}{signed}): {} IPv4 and {} IPv6 prefixes",
        feed.format.name(),
        feed.describe(),
        set.v4_count(),
        set.len() - set.v4_count()
    );
    for (i, p) in set.providers.iter().enumerate() {
        let id = (i + 1) as u16;
        let n = set.prefixes.values().filter(|v| v.provider == id).count();
        println!("  provider {id} {p}: {n} prefixes");
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The provider's published list, as downloaded.
    pub file: PathBuf,
    #[arg(long, value_enum)]
    pub format: ImportFormat,
    /// Write a JSON endpoint feed (with the ports the source gives, e.g. Tor OR ports)
    /// instead of a plain-text list of hosts.
    #[arg(long)]
    pub json: bool,
    /// Provider name in the JSON feed (default: tor, mullvad, nordvpn or proton).
    #[arg(long, value_name = "NAME")]
    pub provider: Option<String>,
    /// Serial of the JSON feed.
    #[arg(long)]
    pub serial: Option<u64>,
}

/// Prints the converted list on stdout; a summary on stderr.
pub fn import_cmd(args: ImportArgs) -> Result<()> {
    let bytes =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let what = args.format.default_provider();
    let imported =
        import(args.format, &bytes).map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
    let provider = args.provider.as_deref().unwrap_or(what);
    if let Err(e) = crate::endpoints::check_provider(provider) {
        bail!("--provider: {e}");
    }
    let out = if args.json {
        imported.to_json(provider, args.serial)
    } else {
        imported.to_text(&format!("{} from {}", provider, args.file.display()))
    };
    print!("{out}");
    eprintln!(
        "{}: {} servers read ({} inactive skipped), {} addresses",
        args.file.display(),
        imported.servers,
        imported.skipped_inactive,
        imported.hosts().len()
    );
    Ok(())
}

/// Lines for `vpn-filter check`: is `ip` a listed endpoint, and of which provider, in the
/// given feed (`--endpoints`), in the running filter's pinned maps (named through its last
/// applied endpoint feed in `<state_dir>/endpoints`).
pub fn check_lines(
    args: &EndpointArgs,
    state_dir: &std::path::Path,
    pins: &PinDir,
    ip: IpAddr,
) -> Result<Vec<(String, Vec<String>)>> {
    let ip = canonical_ip(ip);
    let mut out = Vec::new();
    if let Some((feed, _)) = args.load_file()? {
        let src = args.endpoints.as_deref().unwrap_or("?");
        out.push((
            format!("endpoint feed {src} ({})", feed.describe()),
            vec![listing_line(&feed.set, feed.set.lookup(ip))],
        ));
    }
    let dir = state_dir.join("endpoints");
    let applied = match StateDir::new(&dir).load() {
        Ok(Some(p)) => {
            let format = match p.meta.format.as_str() {
                "json" => EndpointFormatChoice::Json,
                _ => EndpointFormatChoice::Text,
            };
            // A text list's provider is not in the file (the controller's configuration names
            // it); it shows as "configured-provider".
            let opts = ParseOptions {
                provider: Some("configured-provider".into()),
                allow_broad: true,
            };
            let lenient = EndpointFeed::parse(&p.bytes, &p.meta.feed_file, format, &opts)?;
            Some(lenient.0)
        }
        Ok(None) => None,
        Err(e) => return Err(e.into()),
    };
    match kernel_lookup(pins, ip)? {
        Some(found) => {
            let line = match (found, &applied) {
                (None, _) => "not listed".to_string(),
                (Some(v), Some(feed)) => {
                    let prefix = feed.set.lookup(ip).map(|(p, _)| p);
                    listing_line(&feed.set, prefix.map(|p| (p, v)))
                }
                (Some(v), None) => format!(
                    "LISTED as provider id {} ({}; no endpoint state in {} to name it)",
                    v.provider,
                    scope_of(&v).describe(),
                    dir.display()
                ),
            };
            out.push((
                format!(
                    "running filter (kernel endpoint lists pinned in {})",
                    pins.maps_dir().display()
                ),
                vec![line],
            ));
        }
        None => {
            if let Some(feed) = &applied {
                out.push((
                    format!(
                        "running filter's last applied endpoint feed ({}; no pinned maps, so the kernel itself was not asked)",
                        feed.describe()
                    ),
                    vec![listing_line(&feed.set, feed.set.lookup(ip))],
                ));
            }
        }
    }
    Ok(out)
}

fn scope_of(v: &EndpointValue) -> Scope {
    Scope {
        ip_proto: v.ip_proto,
        port: u16::from_be_bytes(v.port),
    }
}

fn listing_line(set: &EndpointSet, found: Option<(Prefix, EndpointValue)>) -> String {
    match found {
        None => "not listed".into(),
        Some((p, v)) => format!(
            "LISTED as a server of provider \"{}\" via {p} ({})",
            set.provider_name(v.provider).unwrap_or("?"),
            scope_of(&v).describe()
        ),
    }
}

/// `Ok(None)`: no pinned endpoint maps; `Ok(Some(value))`: the kernel's answer.
fn kernel_lookup(pins: &PinDir, ip: IpAddr) -> Result<Option<Option<EndpointValue>>> {
    pins.lookup(maps::VPN_ENDPOINTS_V4, maps::VPN_ENDPOINTS_V6, ip)
}
