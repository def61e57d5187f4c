//! Known VPN endpoints: providers' published server lists (and Tor relays), for VPNs that have
//! no wire signature. Format in docs/endpoints.md.
//!
//! Two feed formats:
//! - a plain-text CIDR list, one prefix (or address) per line, `#` comments; the provider is
//!   named by the configuration (`--endpoints-provider`);
//! - a JSON feed, `{"serial": 3, "endpoints": [{"provider": "mullvad", "prefixes": [...],
//!   "port": 51820, "protocol": "udp"}]}`, with a provider and an optional port/protocol
//!   scope per entry.
//!
//! Parsing is strict and locates every problem (line, or entry index and field); a feed with
//! any error is refused whole. Feeds come through the same loop as the registry
//! ([`crate::registry::sync::FeedSync`]): file or HTTP(S) with ETag, optional signature, size limit,
//! broad prefixes refused, large shrink refused, last good feed persisted.
//!
//! Submodules: [`import`] (converters from the providers' own formats), [`cli`] (the
//! `endpoints` subcommands).

pub mod import;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, RwLock},
};

use anyhow::Result;
use serde_json::Value;
use time::OffsetDateTime;
use vpn_filter_common::{EndpointValue, MAX_PROVIDERS};

use crate::registry::{
    canonical_ip, guard,
    guard::GuardOptions,
    strip_bom,
    sync::{FeedKind, FeedSync, RegistryArgs, SourceOptions},
    FeedError, Prefix, Warnings,
};

/// Shortest IPv4 endpoint prefix accepted without `--endpoints-allow-broad`: a listed prefix
/// blocks traffic, so the bar is higher than the registry's (/8).
pub const MIN_V4_PREFIX: u8 = 16;
/// Shortest IPv6 endpoint prefix accepted without `--endpoints-allow-broad`.
pub const MIN_V6_PREFIX: u8 = 32;
/// Longest provider name.
pub const MAX_PROVIDER_NAME: usize = 64;

/// The two endpoint feed formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointFormat {
    Text,
    Json,
}

impl EndpointFormat {
    pub fn name(self) -> &'static str {
        match self {
            EndpointFormat::Text => "text",
            EndpointFormat::Json => "json",
        }
    }
}

/// `--endpoints-format`.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum EndpointFormatChoice {
    /// JSON when the first non-blank character is `{`, otherwise text.
    #[default]
    Auto,
    Text,
    Json,
}

/// Options for parsing a feed.
#[derive(Clone, Debug, Default)]
pub struct ParseOptions {
    /// Provider of a plain-text list.
    pub provider: Option<String>,
    /// Accept prefixes shorter than [`MIN_V4_PREFIX`] / [`MIN_V6_PREFIX`].
    pub allow_broad: bool,
}

/// Which traffic to a listed prefix is judged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Scope {
    /// 6 (TCP) or 17 (UDP); 0: both.
    pub ip_proto: u8,
    /// Destination port; 0: any.
    pub port: u16,
}

impl Scope {
    pub fn describe(&self) -> String {
        let proto = match self.ip_proto {
            6 => "tcp",
            17 => "udp",
            _ => "tcp+udp",
        };
        match self.port {
            0 => format!("{proto}, any port"),
            p => format!("{proto} port {p}"),
        }
    }
}

/// What a listed prefix means: whose server, which traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listing {
    pub provider: Arc<str>,
    pub scope: Scope,
}

/// The set the kernel should hold: each prefix with its provider id and scope, and the
/// provider names by id (id `i` is `providers[i - 1]`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointSet {
    pub prefixes: BTreeMap<Prefix, EndpointValue>,
    pub providers: Vec<Arc<str>>,
}

impl EndpointSet {
    pub fn len(&self) -> usize {
        self.prefixes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prefixes.is_empty()
    }

    pub fn v4_count(&self) -> usize {
        self.prefixes
            .keys()
            .take_while(|p| matches!(p, Prefix::V4 { .. }))
            .count()
    }

    /// The provider's name for an id.
    pub fn provider_name(&self, id: u16) -> Option<&str> {
        self.providers
            .get(usize::from(id).checked_sub(1)?)
            .map(|s| &**s)
    }

    /// The most specific listing containing `ip`, as the kernel's LPM lookup finds it.
    pub fn lookup(&self, ip: IpAddr) -> Option<(Prefix, EndpointValue)> {
        let ip = canonical_ip(ip);
        let max = if ip.is_ipv4() { 32 } else { 128 };
        (0..=max).rev().find_map(|len| {
            let key = Prefix::of(ip, len);
            self.prefixes.get(&key).map(|v| (key, *v))
        })
    }
}

/// A validated endpoint feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointFeed {
    pub format: EndpointFormat,
    /// The JSON feed's serial (a text list has none).
    pub serial: Option<u64>,
    pub set: EndpointSet,
}

impl EndpointFeed {
    /// Parses and validates a feed. `source_name` names it in errors.
    pub fn parse(
        bytes: &[u8],
        source_name: &str,
        format: EndpointFormatChoice,
        opts: &ParseOptions,
    ) -> Result<(EndpointFeed, Warnings), FeedError> {
        let body = strip_bom(bytes);
        let format = match format {
            EndpointFormatChoice::Text => EndpointFormat::Text,
            EndpointFormatChoice::Json => EndpointFormat::Json,
            EndpointFormatChoice::Auto => match body.iter().find(|b| !b.is_ascii_whitespace()) {
                Some(b'{') => EndpointFormat::Json,
                _ => EndpointFormat::Text,
            },
        };
        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        let mut listed = Vec::new();
        let serial = match format {
            EndpointFormat::Text => {
                parse_text(body, opts, &mut listed, &mut problems);
                None
            }
            EndpointFormat::Json => {
                parse_json(body, opts, &mut listed, &mut problems, &mut warnings)
                    .map_err(|e| FeedError::new(source_name, e))?
            }
        };
        if !problems.is_empty() {
            return Err(FeedError {
                source_name: source_name.to_string(),
                problems,
            });
        }
        let set = build_set(listed, &mut warnings).map_err(|e| FeedError::new(source_name, e))?;
        Ok((
            EndpointFeed {
                format,
                serial,
                set,
            },
            warnings,
        ))
    }

    pub fn describe(&self) -> String {
        let what = match self.serial {
            Some(s) => format!("serial {s}"),
            None => format!("{} list without serial", self.format.name()),
        };
        format!(
            "{what} ({} prefixes of {} provider(s))",
            self.set.len(),
            self.set.providers.len()
        )
    }
}

/// One listed prefix before the set is built, with where it came from.
struct Listed {
    prefix: Prefix,
    listing: Listing,
    at: String,
}

/// Parses one prefix and applies the endpoint breadth rule.
pub fn check_prefix(s: &str, allow_broad: bool) -> Result<Prefix, String> {
    let p: Prefix = s.trim().parse()?;
    let min = match p {
        Prefix::V4 { .. } => MIN_V4_PREFIX,
        Prefix::V6 { .. } => MIN_V6_PREFIX,
    };
    if p.len() < min && !allow_broad {
        return Err(format!(
            "{p} is broader than /{min}; refused unless broad endpoint prefixes are explicitly allowed (--endpoints-allow-broad): a listed prefix blocks traffic, one typo must not cut off a network"
        ));
    }
    Ok(p)
}

/// Checks a provider name: 1 to 64 of `A-Z a-z 0-9 . _ -`, space.
pub fn check_provider(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the provider name is empty".into());
    }
    if name.len() > MAX_PROVIDER_NAME {
        return Err(format!(
            "the provider name \"{name}\" is longer than {MAX_PROVIDER_NAME} bytes"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ' ')))
    {
        return Err(format!(
            "the provider name \"{name}\" contains {c:?} (allowed: letters, digits, '.', '_', '-', space)"
        ));
    }
    Ok(())
}

fn parse_text(body: &[u8], opts: &ParseOptions, out: &mut Vec<Listed>, problems: &mut Vec<String>) {
    let provider: Arc<str> = match &opts.provider {
        Some(p) => match check_provider(p) {
            Ok(()) => p.as_str().into(),
            Err(e) => {
                problems.push(format!("--endpoints-provider: {e}"));
                return;
            }
        },
        None => {
            problems.push(
                "a plain-text endpoint list does not name its provider: give it with --endpoints-provider NAME (or `endpoints-provider` in the configuration)".into(),
            );
            return;
        }
    };
    let text = match std::str::from_utf8(body) {
        Ok(t) => t,
        Err(e) => {
            problems.push(format!("not UTF-8 text ({e})"));
            return;
        }
    };
    for (i, line) in text.lines().enumerate() {
        let content = line.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let at = format!("line {}", i + 1);
        match check_prefix(content, opts.allow_broad) {
            Ok(prefix) => out.push(Listed {
                prefix,
                listing: Listing {
                    provider: provider.clone(),
                    scope: Scope::default(),
                },
                at,
            }),
            Err(e) => problems.push(format!("{at}: \"{content}\": {e}")),
        }
    }
}

const JSON_TOP_FIELDS: [&str; 3] = ["serial", "generated_at", "endpoints"];
const JSON_ENTRY_FIELDS: [&str; 5] = ["provider", "prefix", "prefixes", "port", "protocol"];

/// Parses the JSON feed; returns its serial. `Err` for a document that is not a feed at all
/// (syntax, with line and column); located problems go to `problems`.
fn parse_json(
    body: &[u8],
    opts: &ParseOptions,
    out: &mut Vec<Listed>,
    problems: &mut Vec<String>,
    warnings: &mut Warnings,
) -> Result<Option<u64>, String> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| format!("not valid JSON: {e}"))?;
    let Value::Object(top) = doc else {
        return Err("the feed must be a JSON object with an \"endpoints\" array".into());
    };
    for k in top
        .keys()
        .filter(|k| !JSON_TOP_FIELDS.contains(&k.as_str()))
    {
        warnings.push(format!("unknown top-level field \"{k}\" ignored"));
    }
    let serial = match top.get("serial") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(s) => Some(s),
            None => {
                problems.push(format!("serial: {v} is not a non-negative integer"));
                None
            }
        },
    };
    if let Some(g) = top.get("generated_at") {
        let ok = g.as_str().is_some_and(|s| {
            OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).is_ok()
        });
        if !ok {
            problems.push(format!("generated_at: {g} is not an RFC 3339 time"));
        }
    }
    let entries = match top.get("endpoints") {
        Some(Value::Array(a)) => a,
        Some(v) => {
            problems.push(format!("endpoints: expected an array, found {}", kind(v)));
            return Ok(serial);
        }
        None => {
            problems.push("endpoints: missing (the array of listed endpoints)".into());
            return Ok(serial);
        }
    };
    for (i, e) in entries.iter().enumerate() {
        let at = format!("endpoints[{i}]");
        let Value::Object(fields) = e else {
            problems.push(format!("{at}: expected an object, found {}", kind(e)));
            continue;
        };
        for k in fields
            .keys()
            .filter(|k| !JSON_ENTRY_FIELDS.contains(&k.as_str()))
        {
            warnings.push(format!("{at}: unknown field \"{k}\" ignored"));
        }
        let before = problems.len();
        let provider = match fields.get("provider") {
            Some(Value::String(p)) => match check_provider(p) {
                Ok(()) => Some(Arc::<str>::from(p.as_str())),
                Err(e) => {
                    problems.push(format!("{at}.provider: {e}"));
                    None
                }
            },
            Some(v) => {
                problems.push(format!(
                    "{at}.provider: expected a string, found {}",
                    kind(v)
                ));
                None
            }
            None => {
                problems.push(format!("{at}.provider: missing"));
                None
            }
        };
        let port = match fields.get("port") {
            None | Some(Value::Null) => 0,
            Some(v) => match v.as_u64() {
                Some(p @ 1..=65535) => p as u16,
                _ => {
                    problems.push(format!("{at}.port: {v} is not a port (1-65535)"));
                    0
                }
            },
        };
        let ip_proto = match fields.get("protocol") {
            None | Some(Value::Null) => 0,
            Some(Value::String(s)) if s == "tcp" => 6,
            Some(Value::String(s)) if s == "udp" => 17,
            Some(v) => {
                problems.push(format!(
                    "{at}.protocol: {v} is not \"tcp\" or \"udp\" (leave it out for both)"
                ));
                0
            }
        };
        let mut texts: Vec<(String, &Value)> = Vec::new();
        match (fields.get("prefix"), fields.get("prefixes")) {
            (Some(p), None) => texts.push((format!("{at}.prefix"), p)),
            (None, Some(Value::Array(ps))) => {
                if ps.is_empty() {
                    problems.push(format!("{at}.prefixes: empty"));
                }
                for (j, p) in ps.iter().enumerate() {
                    texts.push((format!("{at}.prefixes[{j}]"), p));
                }
            }
            (None, Some(v)) => problems.push(format!(
                "{at}.prefixes: expected an array, found {}",
                kind(v)
            )),
            (Some(_), Some(_)) => problems.push(format!(
                "{at}: both \"prefix\" and \"prefixes\"; give one of them"
            )),
            (None, None) => problems.push(format!("{at}: missing \"prefix\" or \"prefixes\"")),
        }
        let mut prefixes = Vec::new();
        for (where_, v) in texts {
            match v.as_str() {
                Some(s) => match check_prefix(s, opts.allow_broad) {
                    Ok(p) => prefixes.push((p, where_)),
                    Err(e) => problems.push(format!("{where_}: \"{s}\": {e}")),
                },
                None => problems.push(format!("{where_}: expected a string, found {}", kind(v))),
            }
        }
        if problems.len() > before {
            continue;
        }
        let Some(provider) = provider else { continue };
        for (prefix, where_) in prefixes {
            out.push(Listed {
                prefix,
                listing: Listing {
                    provider: provider.clone(),
                    scope: Scope { ip_proto, port },
                },
                at: where_,
            });
        }
    }
    Ok(serial)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Numbers the providers (sorted by name, from 1) and settles prefixes listed more than once:
/// by the same provider with different scopes, the listing widens to any port and protocol;
/// by different providers, the first provider by name keeps it. Both are warnings.
fn build_set(listed: Vec<Listed>, warnings: &mut Warnings) -> Result<EndpointSet, String> {
    let names: BTreeSet<Arc<str>> = listed.iter().map(|l| l.listing.provider.clone()).collect();
    if names.len() >= MAX_PROVIDERS as usize {
        return Err(format!(
            "{} providers; at most {} can be named",
            names.len(),
            MAX_PROVIDERS - 1
        ));
    }
    let providers: Vec<Arc<str>> = names.into_iter().collect();
    let id_of =
        |name: &Arc<str>| -> u16 { providers.binary_search(name).map_or(0, |i| (i + 1) as u16) };
    let mut prefixes: BTreeMap<Prefix, (EndpointValue, String)> = BTreeMap::new();
    let mut settled = 0usize;
    for l in listed {
        let value = EndpointValue {
            provider: id_of(&l.listing.provider),
            port: l.listing.scope.port.to_be_bytes(),
            ip_proto: l.listing.scope.ip_proto,
            _pad: [0; 3],
        };
        match prefixes.get_mut(&l.prefix) {
            None => {
                prefixes.insert(l.prefix, (value, l.at));
            }
            Some((cur, first_at)) if *cur != value => {
                settled += 1;
                if settled <= 20 {
                    let mut w = format!("{} ({}) is also listed at {first_at}", l.prefix, l.at);
                    if cur.provider == value.provider {
                        let _ = write!(w, " with another scope: judged for any port and protocol");
                        cur.port = [0; 2];
                        cur.ip_proto = 0;
                    } else {
                        let keep = cur.provider.min(value.provider);
                        let _ = write!(
                            w,
                            " by another provider: attributed to {}",
                            providers[usize::from(keep) - 1]
                        );
                        if value.provider < cur.provider {
                            *cur = value;
                        }
                    }
                    warnings.push(w);
                } else if cur.provider == value.provider {
                    cur.port = [0; 2];
                    cur.ip_proto = 0;
                } else if value.provider < cur.provider {
                    *cur = value;
                }
            }
            Some(_) => {}
        }
    }
    if settled > 20 {
        warnings.push(format!(
            "... and {} more prefix(es) listed more than once",
            settled - 20
        ));
    }
    Ok(EndpointSet {
        prefixes: prefixes.into_iter().map(|(p, (v, _))| (p, v)).collect(),
        providers,
    })
}

/// Provider names by id for the feed in force, shared with the event pump, the status report
/// and `top` (one controller per process).
static PROVIDER_NAMES: RwLock<Vec<Arc<str>>> = RwLock::new(Vec::new());

/// The name of provider `id` in the endpoint feed in force.
pub fn provider_name(id: u16) -> Option<Arc<str>> {
    let names = PROVIDER_NAMES.read().unwrap_or_else(|e| e.into_inner());
    names.get(usize::from(id).checked_sub(1)?).cloned()
}

/// Every provider in force, by id.
pub fn providers_in_force() -> Vec<Arc<str>> {
    PROVIDER_NAMES
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

/// Names the providers of a feed loaded outside the sync loop (`replay`), for its events.
pub fn set_provider_names_for_replay(names: &[Arc<str>]) {
    set_provider_names(names)
}

pub(crate) fn set_provider_names(names: &[Arc<str>]) {
    *PROVIDER_NAMES.write().unwrap_or_else(|e| e.into_inner()) = names.to_vec();
}

/// The endpoint options of `vpn-filter run` (and `replay`, `check`).
#[derive(Debug, Clone, Default, clap::Args, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct EndpointArgs {
    /// Known VPN endpoints (provider server lists): a file (re-read when it changes) or an
    /// http(s):// URL (polled with ETag, like --registry). A plain-text CIDR list (with
    /// --endpoints-provider) or a JSON feed (docs/endpoints.md). Flows from unregistered
    /// clients to these addresses are judged under the `endpoints` policy.
    #[arg(long, value_name = "FILE|URL")]
    pub endpoints: Option<String>,
    /// Provider named by a plain-text endpoint list.
    #[arg(long, value_name = "NAME")]
    pub endpoints_provider: Option<String>,
    /// Endpoint feed format: auto tells JSON (`{` first) from text.
    #[arg(long, value_enum, default_value = "auto")]
    pub endpoints_format: EndpointFormatChoice,
    /// Pinned Ed25519 public key for the endpoint feed (as --registry-pubkey).
    #[arg(long, value_name = "FILE")]
    pub endpoints_pubkey: Option<PathBuf>,
    /// Accept endpoint prefixes broader than /16 (IPv4) or /32 (IPv6).
    #[arg(long)]
    pub endpoints_allow_broad: bool,
    /// Apply an endpoint feed that empties the list or removes more than
    /// --max-shrink-percent of it.
    #[arg(long)]
    pub endpoints_force_shrink: bool,
}

impl EndpointArgs {
    pub fn parse_options(&self) -> ParseOptions {
        ParseOptions {
            provider: self.endpoints_provider.clone(),
            allow_broad: self.endpoints_allow_broad,
        }
    }

    /// Reads and validates the endpoint file named by `--endpoints` (a file only: replay and
    /// check read it once). `None` without the option.
    pub fn load_file(&self) -> Result<Option<(EndpointFeed, Warnings)>> {
        let Some(src) = &self.endpoints else {
            return Ok(None);
        };
        let bytes = std::fs::read(src)
            .map_err(|e| anyhow::anyhow!("--endpoints {src}: cannot read: {e}"))?;
        let parsed =
            EndpointFeed::parse(&bytes, src, self.endpoints_format, &self.parse_options())?;
        Ok(Some(parsed))
    }
}

/// The endpoint feed as a [`FeedKind`]: what the loop needs to know about it.
pub struct Endpoints {
    format: EndpointFormatChoice,
    opts: ParseOptions,
}

impl FeedKind for Endpoints {
    type Feed = EndpointFeed;
    type Set = EndpointSet;
    const WHAT: &'static str = "endpoint list";
    const WHAT_LOUD: &'static str = "ENDPOINT LIST";
    const SET_NAME: &'static str = "endpoint list";

    fn parse(
        &self,
        bytes: &[u8],
        origin: &str,
        persisted_format: Option<&str>,
    ) -> Result<(EndpointFeed, Warnings), FeedError> {
        let format = match persisted_format {
            None => self.format,
            Some("json") => EndpointFormatChoice::Json,
            Some("text") => EndpointFormatChoice::Text,
            Some(_) => EndpointFormatChoice::Auto,
        };
        EndpointFeed::parse(bytes, origin, format, &self.opts)
    }

    fn describe(feed: &EndpointFeed) -> String {
        feed.describe()
    }

    fn serial(feed: &EndpointFeed) -> Option<u64> {
        feed.serial
    }

    fn format_name(feed: &EndpointFeed) -> &'static str {
        feed.format.name()
    }

    fn set(feed: &EndpointFeed, _now: OffsetDateTime) -> EndpointSet {
        feed.set.clone()
    }

    fn next_change_after(_feed: &EndpointFeed, _now: OffsetDateTime) -> Option<OffsetDateTime> {
        None
    }

    fn check_transition(
        last: Option<(&EndpointFeed, &EndpointSet)>,
        new: &EndpointFeed,
        new_set: &EndpointSet,
        opts: &GuardOptions,
    ) -> Result<Vec<String>, guard::Refusal> {
        guard::check_sets(
            last.map(|(f, s)| (f.serial, &s.prefixes)),
            new.serial,
            &new_set.prefixes,
            opts,
        )
    }
}

/// The endpoint side of the controller.
pub type EndpointSync = FeedSync<Endpoints>;

impl FeedSync<Endpoints> {
    /// `None` without `--endpoints`. The state (last good feed) lives in
    /// `<--state-dir>/endpoints`; the guards' limits are the registry's, except
    /// `--endpoints-force-shrink`.
    pub fn new(args: &EndpointArgs, registry: &RegistryArgs) -> Result<Option<EndpointSync>> {
        let Some(source) = &args.endpoints else {
            return Ok(None);
        };
        let mut guard = registry.guard_options();
        guard.force_shrink = args.endpoints_force_shrink;
        guard.allow_serial_reset = registry.guard.allow_serial_reset;
        let kind = Endpoints {
            format: args.endpoints_format,
            opts: args.parse_options(),
        };
        FeedSync::with_kind(
            kind,
            &SourceOptions {
                source,
                pubkeys: args.endpoints_pubkey.as_slice(),
                state_dir: registry.state_dir.join("endpoints"),
                state_flag: "--state-dir, its endpoints/ subdirectory",
                max_feed_bytes: registry.guard.max_feed_bytes,
                guard,
                poll_ms: registry.registry_poll_ms,
                http_interval: registry.registry_http_interval,
                ca: registry.registry_ca.as_deref(),
            },
        )
        .map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str, provider: Option<&str>) -> Result<(EndpointFeed, Warnings), FeedError> {
        EndpointFeed::parse(
            s.as_bytes(),
            "t.txt",
            EndpointFormatChoice::Auto,
            &ParseOptions {
                provider: provider.map(Into::into),
                allow_broad: false,
            },
        )
    }

    #[test]
    fn text_list_takes_comments_hosts_and_the_configured_provider() {
        let (feed, warnings) = text(
            "# Mullvad relays\n198.51.100.0/24\n203.0.113.7 # one host\n\n2001:db8:5::/48\n",
            Some("mullvad"),
        )
        .unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(feed.format, EndpointFormat::Text);
        assert_eq!(feed.set.providers, vec![Arc::<str>::from("mullvad")]);
        assert_eq!(feed.set.len(), 3);
        assert_eq!(feed.set.v4_count(), 2);
        let (p, v) = feed.set.lookup("203.0.113.7".parse().unwrap()).unwrap();
        assert_eq!(p.to_string(), "203.0.113.7/32");
        assert_eq!(feed.set.provider_name(v.provider), Some("mullvad"));
        assert!(feed.set.lookup("203.0.113.8".parse().unwrap()).is_none());
    }

    #[test]
    fn text_list_errors_name_the_line() {
        let e = text("198.51.100.0/24\n10.0.0.5/24\nfoo\n10.0.0.0/8\n", Some("x")).unwrap_err();
        let msg = e.to_string();
        assert_eq!(e.problems.len(), 3, "{msg}");
        assert!(
            e.problems[0].starts_with("line 2: \"10.0.0.5/24\": host bits set"),
            "{msg}"
        );
        assert!(e.problems[1].starts_with("line 3: \"foo\""), "{msg}");
        assert!(e.problems[2].contains("line 4") && e.problems[2].contains("broader than /16"));
    }

    #[test]
    fn text_list_without_a_provider_is_refused() {
        let e = text("198.51.100.0/24\n", None).unwrap_err();
        assert!(e.to_string().contains("--endpoints-provider"), "{e}");
    }

    #[test]
    fn json_feed_carries_providers_and_scopes() {
        let (feed, warnings) = text(
            r#"{"serial": 4, "endpoints": [
                {"provider": "tor", "prefixes": ["192.0.2.10", "2001:db8::10"], "port": 9001, "protocol": "tcp"},
                {"provider": "mullvad", "prefix": "198.51.100.0/24"},
                {"provider": "mullvad", "prefix": "198.51.100.0/24", "port": 51820}
            ], "note": 1}"#,
            None,
        )
        .unwrap();
        assert_eq!(feed.serial, Some(4));
        assert_eq!(feed.set.providers.len(), 2);
        // mullvad sorts first: id 1.
        let (_, v) = feed.set.lookup("198.51.100.9".parse().unwrap()).unwrap();
        assert_eq!(v.provider, 1);
        // Listed twice with different scopes: widened.
        assert_eq!((v.port, v.ip_proto), ([0, 0], 0));
        let (_, v) = feed.set.lookup("192.0.2.10".parse().unwrap()).unwrap();
        assert_eq!(feed.set.provider_name(v.provider), Some("tor"));
        assert_eq!((u16::from_be_bytes(v.port), v.ip_proto), (9001, 6));
        assert!(warnings
            .iter()
            .any(|w| w.contains("unknown top-level field \"note\"")));
        assert!(
            warnings.iter().any(|w| w.contains("another scope")),
            "{warnings:?}"
        );
    }

    #[test]
    fn json_feed_errors_name_the_entry_and_field() {
        let e = text(
            r#"{"endpoints": [
                {"provider": "", "prefix": "192.0.2.1"},
                {"provider": "a", "prefix": "192.0.2.1", "port": 70000, "protocol": "sctp"},
                {"provider": "b", "prefixes": ["192.0.2.1", 5]},
                {"provider": "c"}
            ]}"#,
            None,
        )
        .unwrap_err();
        let p = &e.problems;
        assert!(
            p.iter()
                .any(|x| x.starts_with("endpoints[0].provider: the provider name is empty")),
            "{p:?}"
        );
        assert!(
            p.iter().any(|x| x.starts_with("endpoints[1].port: 70000")),
            "{p:?}"
        );
        assert!(
            p.iter().any(|x| x.starts_with("endpoints[1].protocol")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|x| x.starts_with("endpoints[2].prefixes[1]: expected a string")),
            "{p:?}"
        );
        assert!(
            p.iter().any(|x| x.starts_with("endpoints[3]: missing")),
            "{p:?}"
        );
    }

    #[test]
    fn json_syntax_errors_give_line_and_column() {
        let e = text("{\"endpoints\": [\n  {\"provider\": \"a\",}\n]}", None).unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
    }

    #[test]
    fn a_prefix_of_two_providers_goes_to_the_first_by_name() {
        let (feed, warnings) = text(
            r#"{"endpoints": [{"provider": "zeta", "prefix": "192.0.2.0/24"},
                              {"provider": "alpha", "prefix": "192.0.2.0/24"}]}"#,
            None,
        )
        .unwrap();
        let (_, v) = feed.set.lookup("192.0.2.1".parse().unwrap()).unwrap();
        assert_eq!(feed.set.provider_name(v.provider), Some("alpha"));
        assert!(warnings[0].contains("attributed to alpha"), "{warnings:?}");
    }
}
