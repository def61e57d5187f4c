//! The registry feed: who registered which addresses for VPN use.
//!
//! Two formats, documented in docs/registry-feed.md: the versioned JSON feed
//! (`{"serial": 42, "generated_at": "...", "entries": [{"id", "holder", "category", "prefixes",
//! "status", "approved_at", "expires_at"}]}`) and a plain CSV export (header
//! `id,holder,category,prefix,status,approved_at,expires_at`, one row per prefix). Parsing is
//! strict and reports every problem with the entry id and field (JSON) or line and column (CSV)
//! it belongs to; a feed with any error is rejected whole, so a bad file never replaces a good
//! allowlist.
//!
//! Submodules: [`guard`] (checks of a new feed against the one in force: serial, shrink,
//! size), [`signature`] (ed25519 over the feed bytes), [`state`] (the last good feed on disk),
//! [`canonical`] (the feed `registry publish` writes, and the diff between two feeds).

pub mod canonical;
mod csv_feed;
pub mod guard;
mod json_feed;
pub mod publish;
pub mod signature;
pub mod source;
pub mod state;
pub mod sync;

use std::{
    collections::{BTreeMap, HashSet},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    str::FromStr,
    sync::Arc,
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Deserialize;
use time::OffsetDateTime;
use vpn_filter_common::entry_tag;

/// Shortest IPv4 prefix accepted without `allow_broad` (a /8 is already 16 M addresses).
pub const MIN_V4_PREFIX: u8 = 8;
/// Shortest IPv6 prefix accepted without `allow_broad`.
pub const MIN_V6_PREFIX: u8 = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    SoftwareHouse,
    CallCentre,
    Bank,
    Embassy,
    Freelancer,
    Company,
}

impl Category {
    pub const ALL: [Category; 6] = [
        Category::SoftwareHouse,
        Category::CallCentre,
        Category::Bank,
        Category::Embassy,
        Category::Freelancer,
        Category::Company,
    ];

    /// The name used in feeds.
    pub fn name(self) -> &'static str {
        match self {
            Category::SoftwareHouse => "software_house",
            Category::CallCentre => "call_centre",
            Category::Bank => "bank",
            Category::Embassy => "embassy",
            Category::Freelancer => "freelancer",
            Category::Company => "company",
        }
    }

    pub fn from_name(s: &str) -> Option<Category> {
        Category::ALL.into_iter().find(|c| c.name() == s)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Approved,
    Pending,
    Rejected,
    Revoked,
}

impl Status {
    pub const ALL: [Status; 4] = [
        Status::Approved,
        Status::Pending,
        Status::Rejected,
        Status::Revoked,
    ];

    /// The name used in feeds.
    pub fn name(self) -> &'static str {
        match self {
            Status::Approved => "approved",
            Status::Pending => "pending",
            Status::Rejected => "rejected",
            Status::Revoked => "revoked",
        }
    }

    pub fn from_name(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|c| c.name() == s)
    }
}

/// An IP prefix with no host bits set. IPv4-mapped IPv6 prefixes (`::ffff:0:0/96` and
/// longer) are stored as the IPv4 prefix they denote.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Prefix {
    V4 { addr: [u8; 4], len: u8 },
    V6 { addr: [u8; 16], len: u8 },
}

impl Prefix {
    pub fn len(&self) -> u8 {
        match self {
            Prefix::V4 { len, .. } | Prefix::V6 { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Does the prefix contain `ip`?
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.net().contains(&canonical_ip(ip))
    }

    /// The prefix of length `len` (at most the family's width) that contains `ip`.
    pub fn of(ip: IpAddr, len: u8) -> Prefix {
        match ip {
            IpAddr::V4(a) => Prefix::V4 {
                addr: Ipv4Net::new(a, len)
                    .expect("an IPv4 prefix length")
                    .network()
                    .octets(),
                len,
            },
            IpAddr::V6(a) => Prefix::V6 {
                addr: Ipv6Net::new(a, len)
                    .expect("an IPv6 prefix length")
                    .network()
                    .octets(),
                len,
            },
        }
    }

    fn net(&self) -> IpNet {
        match *self {
            Prefix::V4 { addr, len } => Ipv4Net::new(addr.into(), len)
                .expect("an IPv4 prefix length")
                .into(),
            Prefix::V6 { addr, len } => Ipv6Net::new(addr.into(), len)
                .expect("an IPv6 prefix length")
                .into(),
        }
    }
}

/// IPv4-mapped IPv6 addresses are the IPv4 hosts they denote (the kernel judges them so too).
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Prefix::V4 { addr, len } => write!(f, "{}/{}", Ipv4Addr::from(*addr), len),
            Prefix::V6 { addr, len } => write!(f, "{}/{}", Ipv6Addr::from(*addr), len),
        }
    }
}

impl FromStr for Prefix {
    type Err = String;

    /// Parses `a.b.c.d/n`, `x::y/n` or a bare address (a host: /32 or /128). Host bits set
    /// (`10.0.0.5/24`) are an error, not silently cleared: such a line is usually a typo
    /// whose intended meaning (the host? the network?) only the registry can say.
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr_s, len_s) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr_s
            .parse()
            .map_err(|_| format!("\"{addr_s}\" is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len: u8 = match len_s {
            None => max,
            Some(l) => {
                let n: u8 = l
                    .parse()
                    .map_err(|_| format!("prefix length \"{l}\" is not a number"))?;
                if n > max {
                    return Err(format!("prefix length /{n} is longer than /{max}"));
                }
                n
            }
        };
        let network = Prefix::of(addr, len);
        let prefix = match addr {
            IpAddr::V4(a) => {
                if network.net().addr() != addr {
                    return Err(format!(
                        "host bits set: {s} (did you mean {}/{len} or {a}/32?)",
                        network.net().addr()
                    ));
                }
                network
            }
            IpAddr::V6(a) => {
                if network.net().addr() != addr {
                    return Err(format!(
                        "host bits set: {s} (did you mean {}/{len} or {a}/128?)",
                        network.net().addr()
                    ));
                }
                // ::ffff:a.b.c.d/(96+n) is the IPv4 prefix a.b.c.d/n.
                let o = a.octets();
                if len >= 96 && o[..10].iter().all(|b| *b == 0) && o[10] == 0xff && o[11] == 0xff {
                    Prefix::V4 {
                        addr: [o[12], o[13], o[14], o[15]],
                        len: len - 96,
                    }
                } else {
                    Prefix::V6 { addr: o, len }
                }
            }
        };
        Ok(prefix)
    }
}

/// A validated registration.
/// An entry's prefixes.
pub type Prefixes = smallvec::SmallVec<[Prefix; 1]>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub id: Arc<str>,
    /// Shared between the entries of one holder (see [`Interner`]).
    pub holder: Arc<str>,
    pub category: Category,
    /// Inline while it holds one prefix (most entries), on the heap beyond.
    pub prefixes: Prefixes,
    pub status: Status,
    pub approved_at: OffsetDateTime,
    pub expires_at: Option<OffsetDateTime>,
}

impl Entry {
    /// Is the registration in force at `now`?
    pub fn in_force(&self, now: OffsetDateTime) -> bool {
        self.status == Status::Approved
            && self.approved_at <= now
            && self.expires_at.is_none_or(|e| now < e)
    }

    /// The tag stored with this entry's prefixes in the kernel allowlist.
    pub fn tag(&self) -> u64 {
        entry_tag(self.id.as_bytes())
    }

    /// Why the entry is not in force at `now` (`None` when it is).
    pub fn not_in_force_because(&self, now: OffsetDateTime) -> Option<String> {
        if self.status != Status::Approved {
            return Some(format!("its status is {}", self.status.name()));
        }
        if now < self.approved_at {
            return Some(format!(
                "it is approved only from {}",
                rfc3339(self.approved_at)
            ));
        }
        match self.expires_at {
            Some(e) if e <= now => Some(format!("it expired at {}", rfc3339(e))),
            _ => None,
        }
    }
}

/// Formats a time as RFC 3339 (for messages).
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// The two feed formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FeedFormat {
    Json,
    Csv,
}

impl FeedFormat {
    pub fn name(self) -> &'static str {
        match self {
            FeedFormat::Json => "json",
            FeedFormat::Csv => "csv",
        }
    }

    pub fn from_name(s: &str) -> Option<FeedFormat> {
        match s {
            "json" => Some(FeedFormat::Json),
            "csv" => Some(FeedFormat::Csv),
            _ => None,
        }
    }
}

/// `--registry-format`: fixed, or told from the content.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum FormatChoice {
    /// JSON when the first non-blank character is `{`, CSV when the first line is the
    /// `id,...` header.
    #[default]
    Auto,
    Json,
    Csv,
}

/// The header of the CSV export (column order may differ; every column is required).
pub const CSV_HEADER: &str = "id,holder,category,prefix,status,approved_at,expires_at";

/// Tells the format from the content: a JSON feed is an object (`{` first, after an optional
/// UTF-8 byte-order mark and white space); a CSV export starts with its header line.
pub fn detect_format(bytes: &[u8]) -> Result<FeedFormat, String> {
    let body = strip_bom(bytes);
    let first = body.iter().position(|b| !b.is_ascii_whitespace());
    match first.map(|i| body[i]) {
        None => Err("the feed is empty".to_string()),
        Some(b'{') => Ok(FeedFormat::Json),
        Some(_) => {
            let start = first.unwrap_or(0);
            let line_end = body[start..]
                .iter()
                .position(|b| *b == b'\n')
                .map_or(body.len(), |n| start + n);
            let line = String::from_utf8_lossy(&body[start..line_end]);
            let cols: Vec<String> = line
                .trim_end_matches('\r')
                .split(',')
                .map(|c| c.trim().trim_matches('"').to_ascii_lowercase())
                .collect();
            if cols.iter().any(|c| c == "id") && cols.iter().any(|c| c == "prefix") {
                Ok(FeedFormat::Csv)
            } else {
                let shown: String = line.chars().take(60).collect();
                Err(format!(
                    "cannot tell the format: neither a JSON object (starting with '{{') nor a CSV export with the header \"{CSV_HEADER}\" (first line: \"{shown}\"); name it with --registry-format"
                ))
            }
        }
    }
}

pub(crate) fn strip_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes)
}

/// A validated feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Feed {
    pub format: FeedFormat,
    /// The JSON feed's serial; a CSV export has none (the serial check does not apply).
    pub serial: Option<u64>,
    /// The JSON feed's `generated_at`; a CSV export has none.
    pub generated_at: Option<OffsetDateTime>,
    pub entries: Vec<Entry>,
}

/// Options for validation.
#[derive(Clone, Copy, Debug, Default)]
pub struct ValidateOptions {
    /// Accept prefixes shorter than /8 (IPv4) or /16 (IPv6), including 0.0.0.0/0 and ::/0.
    pub allow_broad: bool,
}

/// How many problems an error message lists before summarising the rest.
const PROBLEMS_SHOWN: usize = 100;

/// Everything wrong with a feed, each problem located.
#[derive(Debug, thiserror::Error)]
pub struct FeedError {
    pub source_name: String,
    pub problems: Vec<String>,
}

impl fmt::Display for FeedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} problem(s):",
            self.source_name,
            self.problems.len()
        )?;
        for p in self.problems.iter().take(PROBLEMS_SHOWN) {
            write!(f, "\n  - {p}")?;
        }
        if self.problems.len() > PROBLEMS_SHOWN {
            write!(
                f,
                "\n  ... and {} more problem(s)",
                self.problems.len() - PROBLEMS_SHOWN
            )?;
        }
        Ok(())
    }
}

impl FeedError {
    pub fn new(source_name: &str, problem: impl Into<String>) -> FeedError {
        FeedError {
            source_name: source_name.to_string(),
            problems: vec![problem.into()],
        }
    }
}

/// Non-fatal observations (unknown fields, ...).
pub type Warnings = Vec<String>;

fn parse_time(s: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("\"{s}\" is not an RFC 3339 time ({e})"))
}

impl Feed {
    /// Reads and validates a feed file, telling JSON from CSV by its content.
    pub fn from_file(path: &Path, opts: ValidateOptions) -> Result<(Feed, Warnings), FeedError> {
        let name = path.display().to_string();
        let bytes =
            std::fs::read(path).map_err(|e| FeedError::new(&name, format!("cannot read: {e}")))?;
        Feed::parse(&bytes, &name, FormatChoice::Auto, opts)
    }

    /// Parses and validates a feed in the chosen (or detected) format. `source_name` names it
    /// in errors.
    pub fn parse(
        bytes: &[u8],
        source_name: &str,
        format: FormatChoice,
        opts: ValidateOptions,
    ) -> Result<(Feed, Warnings), FeedError> {
        let format = match format {
            FormatChoice::Json => FeedFormat::Json,
            FormatChoice::Csv => FeedFormat::Csv,
            FormatChoice::Auto => {
                detect_format(bytes).map_err(|e| FeedError::new(source_name, e))?
            }
        };
        match format {
            FeedFormat::Json => Feed::from_json(bytes, source_name, opts),
            FeedFormat::Csv => Feed::from_csv(bytes, source_name, opts),
        }
    }

    /// Parses and validates a JSON feed. `source_name` names it in errors.
    pub fn from_json(
        bytes: &[u8],
        source_name: &str,
        opts: ValidateOptions,
    ) -> Result<(Feed, Warnings), FeedError> {
        json_feed::parse(bytes, source_name, opts)
    }

    /// Parses and validates a CSV export. `source_name` names it in errors.
    pub fn from_csv(
        bytes: &[u8],
        source_name: &str,
        opts: ValidateOptions,
    ) -> Result<(Feed, Warnings), FeedError> {
        csv_feed::parse(bytes, source_name, opts)
    }

    /// The allowlist in force at `now`: every prefix of every entry in force, tagged with the
    /// entry that registered it. A prefix registered by several entries keeps the entry with
    /// the lowest id (deterministic, so repeated syncs do not churn).
    ///
    /// Built from a sorted list rather than by inserting prefix after prefix: a million
    /// inserts in feed order spent most of their time searching the tree (about 0.2 s of a
    /// 1M-entry feed's 1.4 s check); a sorted run is loaded in one pass.
    pub fn allowlist(&self, now: OffsetDateTime) -> Allowlist {
        let mut all: Vec<(Prefix, u32)> = Vec::with_capacity(
            self.entries
                .iter()
                .filter(|e| e.in_force(now))
                .map(|e| e.prefixes.len())
                .sum(),
        );
        for (i, e) in self.entries.iter().enumerate() {
            if e.in_force(now) {
                all.extend(e.prefixes.iter().map(|p| (*p, i as u32)));
            }
        }
        let id = |i: u32| &self.entries[i as usize].id;
        // By prefix, then entry id: the first of each prefix is the one kept.
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| id(a.1).cmp(id(b.1))));
        all.dedup_by_key(|(p, _)| *p);
        Allowlist {
            prefixes: all
                .into_iter()
                .map(|(p, i)| {
                    let e = &self.entries[i as usize];
                    (
                        p,
                        AllowedBy {
                            id: e.id.clone(),
                            tag: e.tag(),
                        },
                    )
                })
                .collect(),
        }
    }

    /// The next instant after `now` at which some entry enters or leaves force, so the
    /// controller can re-apply the allowlist on time without a new feed.
    pub fn next_change_after(&self, now: OffsetDateTime) -> Option<OffsetDateTime> {
        self.entries
            .iter()
            .filter(|e| e.status == Status::Approved)
            .flat_map(|e| [Some(e.approved_at), e.expires_at])
            .flatten()
            .filter(|t| *t > now)
            .min()
    }

    /// The entry with this id.
    pub fn entry(&self, id: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| &*e.id == id)
    }

    /// Every entry (in force or not) listing a prefix that contains `ip`, with that prefix.
    pub fn entries_covering(&self, ip: IpAddr) -> Vec<(&Entry, Prefix)> {
        let mut out = Vec::new();
        for e in &self.entries {
            if let Some(p) = e
                .prefixes
                .iter()
                .filter(|p| p.contains(ip))
                .max_by_key(|p| p.len())
            {
                out.push((e, *p));
            }
        }
        out
    }

    /// A one-line description for logs: format, serial, entries.
    pub fn describe(&self) -> String {
        match self.serial {
            Some(s) => format!("serial {s}"),
            None => format!(
                "{} export without serial",
                self.format.name().to_uppercase()
            ),
        }
    }
}

/// The fields of one entry as text, before validation (shared by the JSON and CSV parsers).
#[derive(Default)]
pub(crate) struct RawFields<'a> {
    pub holder: Option<&'a str>,
    pub category: Option<&'a str>,
    pub status: Option<&'a str>,
    pub approved_at: Option<&'a str>,
    /// `None`: no expiry.
    pub expires_at: Option<&'a str>,
}

/// The validated fields of one entry, without id and prefixes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Fields {
    pub holder: String,
    pub category: Category,
    pub status: Status,
    pub approved_at: OffsetDateTime,
    pub expires_at: Option<OffsetDateTime>,
}

/// Validates the fields of one entry. `at(field)` locates a field in messages.
pub(crate) fn check_fields(
    raw: &RawFields<'_>,
    at: &dyn Fn(&str) -> String,
    problems: &mut Vec<String>,
) -> Option<Fields> {
    let before = problems.len();
    let holder = match raw.holder {
        Some(h) => h.to_string(),
        None => {
            problems.push(format!("{}: missing", at("holder")));
            String::new()
        }
    };
    let category = match raw.category {
        Some(c) => Category::from_name(c.trim()).or_else(|| {
            problems.push(format!(
                "{}: unknown category \"{c}\" (expected software_house, call_centre, bank, embassy, freelancer or company)",
                at("category")
            ));
            None
        }),
        None => {
            problems.push(format!("{}: missing", at("category")));
            None
        }
    };
    let status = match raw.status {
        Some(s) => Status::from_name(s.trim()).or_else(|| {
            problems.push(format!(
                "{}: unknown status \"{s}\" (expected approved, pending, rejected or revoked)",
                at("status")
            ));
            None
        }),
        None => {
            problems.push(format!("{}: missing", at("status")));
            None
        }
    };
    let approved_at = match raw.approved_at.map(|s| parse_time(s.trim())) {
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => {
            problems.push(format!("{}: {e}", at("approved_at")));
            None
        }
        None => {
            problems.push(format!("{}: missing", at("approved_at")));
            None
        }
    };
    let expires_at = match raw.expires_at.map(|s| parse_time(s.trim())) {
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => {
            problems.push(format!("{}: {e}", at("expires_at")));
            None
        }
        None => None,
    };
    if let (Some(a), Some(e)) = (approved_at, expires_at) {
        if e <= a {
            problems.push(format!(
                "{}: expires_at is not after approved_at ({} <= {})",
                at("expires_at"),
                rfc3339(e),
                rfc3339(a)
            ));
        }
    }
    if problems.len() > before {
        return None;
    }
    Some(Fields {
        holder,
        category: category?,
        status: status?,
        approved_at: approved_at?,
        expires_at,
    })
}

/// Parses one prefix of a feed and applies the breadth rule.
pub(crate) fn check_prefix(s: &str, opts: ValidateOptions) -> Result<Prefix, String> {
    let p: Prefix = s.trim().parse()?;
    let min = match p {
        Prefix::V4 { .. } => MIN_V4_PREFIX,
        Prefix::V6 { .. } => MIN_V6_PREFIX,
    };
    if p.len() < min && !opts.allow_broad {
        return Err(format!(
            "broader than /{min}; refused unless broad prefixes are explicitly allowed (--allow-broad): one typo must not open the filter"
        ));
    }
    Ok(p)
}

/// Up to how many prefixes an entry's repeats are found by a linear search (beyond, by a hash
/// set).
pub(crate) const PREFIXES_LINEAR: usize = 16;

/// One shared copy of each distinct string (holders: a registry lists many entries per
/// holder, and a million copies of the same few names cost tens of megabytes).
#[derive(Default)]
pub(crate) struct Interner {
    seen: HashSet<Arc<str>>,
}

impl Interner {
    pub fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.seen.get(s) {
            return a.clone();
        }
        let a: Arc<str> = s.into();
        self.seen.insert(a.clone());
        a
    }
}

/// An entry's prefixes in feed order, without repeats: a linear search while short, a hash
/// set once long (an entry may list thousands).
#[derive(Debug, Default)]
pub(crate) struct PrefixSet {
    list: Vec<Prefix>,
    set: Option<HashSet<Prefix>>,
}

impl PrefixSet {
    const LINEAR: usize = PREFIXES_LINEAR;

    pub fn with_capacity(n: usize) -> PrefixSet {
        PrefixSet {
            list: Vec::with_capacity(n),
            set: None,
        }
    }

    /// Adds `p` unless already there (then returns false).
    pub fn insert(&mut self, p: Prefix) -> bool {
        if self.list.len() < Self::LINEAR {
            if self.list.contains(&p) {
                return false;
            }
        } else {
            let list = &self.list;
            let set = self
                .set
                .get_or_insert_with(|| list.iter().copied().collect());
            if !set.insert(p) {
                return false;
            }
        }
        self.list.push(p);
        true
    }

    pub fn into_vec(self) -> Vec<Prefix> {
        self.list
    }
}

/// Which entry allows a prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedBy {
    pub id: Arc<str>,
    pub tag: u64,
}

/// The set of allowed prefixes, as the kernel should hold it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allowlist {
    pub prefixes: BTreeMap<Prefix, AllowedBy>,
}

impl Allowlist {
    pub fn v4_count(&self) -> usize {
        // IPv4 prefixes sort before IPv6 ones.
        self.prefixes
            .range(
                ..Prefix::V6 {
                    addr: [0; 16],
                    len: 0,
                },
            )
            .count()
    }

    pub fn v6_count(&self) -> usize {
        self.prefixes.len() - self.v4_count()
    }

    pub fn len(&self) -> usize {
        self.prefixes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prefixes.is_empty()
    }

    /// The entry whose prefix matches `ip` most specifically, as the kernel's LPM lookup would.
    pub fn lookup(&self, ip: IpAddr) -> Option<(&Prefix, &AllowedBy)> {
        let ip = canonical_ip(ip);
        let max = if ip.is_ipv4() { 32 } else { 128 };
        (0..=max)
            .rev()
            .find_map(|len| self.prefixes.get_key_value(&Prefix::of(ip, len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(entries: &str) -> String {
        format!(
            r#"{{"serial": 7, "generated_at": "2026-11-27T10:00:00Z", "entries": [{entries}]}}"#
        )
    }

    fn entry(id: &str, prefixes: &str, status: &str) -> String {
        format!(
            r#"{{"id": "{id}", "holder": "Acme", "category": "software_house", "prefixes": [{prefixes}], "status": "{status}", "approved_at": "2026-11-20T08:00:00Z", "expires_at": "2027-11-20T08:00:00Z"}}"#
        )
    }

    fn parse(json: &str) -> Result<(Feed, Warnings), FeedError> {
        Feed::from_json(json.as_bytes(), "test.json", ValidateOptions::default())
    }

    fn parse_csv(csv: &str) -> Result<(Feed, Warnings), FeedError> {
        Feed::from_csv(csv.as_bytes(), "test.csv", ValidateOptions::default())
    }

    fn now() -> OffsetDateTime {
        time::macros::datetime!(2026-11-28 12:00 UTC)
    }

    #[test]
    fn valid_feed_yields_prefixes_of_entries_in_force() {
        let json = feed(
            &[
                entry("A", r#""203.0.113.0/28", "2001:db8:10::/48""#, "approved"),
                entry("B", r#""198.51.100.7""#, "pending"),
            ]
            .join(","),
        );
        let (f, w) = parse(&json).unwrap();
        assert!(w.is_empty());
        assert_eq!(f.serial, Some(7));
        assert_eq!(f.format, FeedFormat::Json);
        let allow = f.allowlist(now());
        assert_eq!(allow.prefixes.len(), 2);
        assert_eq!(allow.v4_count(), 1);
        assert!(allow.lookup("203.0.113.9".parse().unwrap()).is_some());
        assert!(allow.lookup("203.0.113.16".parse().unwrap()).is_none());
        assert!(
            allow.lookup("198.51.100.7".parse().unwrap()).is_none(),
            "pending is not allowed"
        );
    }

    #[test]
    fn bad_prefixes_are_named_with_entry_and_index() {
        for (bad, why) in [
            ("10.0.0.300/24", "not an IP address"),
            ("10.0.0.0/33", "longer than /32"),
            ("10.0.0.0/x", "not a number"),
            ("10.0.0.5/24", "host bits set"),
            ("2001:db8::1/48", "host bits set"),
            ("0.0.0.0/0", "broader than /8"),
            ("::/0", "broader than /16"),
        ] {
            let json = feed(&entry("REG-9", &format!("\"{bad}\""), "approved"));
            let err = parse(&json).unwrap_err().to_string();
            assert!(err.contains("entries[0] (id REG-9): prefixes[0]"), "{err}");
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn broad_prefixes_pass_when_explicitly_allowed() {
        let json = feed(&entry("R", r#""0.0.0.0/0""#, "approved"));
        let opts = ValidateOptions { allow_broad: true };
        let (f, _) = Feed::from_json(json.as_bytes(), "t", opts).unwrap();
        assert_eq!(f.entries[0].prefixes.len(), 1);
    }

    #[test]
    fn invalid_json_names_line_and_column() {
        let err = parse("{\n  \"serial\": 1,\n  oops\n}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("test.json"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn a_truncated_json_feed_is_refused() {
        let json = feed(&entry("A", r#""192.0.2.0/24""#, "approved"));
        let err = parse(&json[..json.len() / 2]).unwrap_err().to_string();
        assert!(err.contains("invalid JSON"), "{err}");
    }

    #[test]
    fn a_field_of_the_wrong_type_names_line_and_column() {
        let err = parse("{\"serial\": \"seven\",\n \"generated_at\": \"2026-11-27T10:00:00Z\", \"entries\": []}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1, column"), "{err}");
        assert!(err.contains("invalid type"), "{err}");
    }

    #[test]
    fn missing_top_level_fields_are_each_named() {
        let err = parse("{}").unwrap_err();
        let text = err.to_string();
        assert_eq!(err.problems.len(), 3, "{text}");
        for f in ["serial", "generated_at", "entries"] {
            assert!(text.contains(&format!("missing field \"{f}\"")), "{text}");
        }
    }

    #[test]
    fn unknown_category_status_and_dates_out_of_order_are_errors() {
        let json = feed(
            r#"{"id": "X", "holder": "h", "category": "casino", "prefixes": ["192.0.2.0/24"], "status": "maybe", "approved_at": "2026-11-20T08:00:00Z", "expires_at": "2026-11-19T08:00:00Z"}"#,
        );
        let err = parse(&json).unwrap_err();
        let text = err.to_string();
        assert_eq!(err.problems.len(), 3, "{text}");
        assert!(
            text.contains("entries[0] (id X): category: unknown category \"casino\""),
            "{text}"
        );
        assert!(text.contains("unknown status \"maybe\""), "{text}");
        assert!(
            text.contains("expires_at is not after approved_at"),
            "{text}"
        );
    }

    #[test]
    fn a_bad_time_names_the_field() {
        let json = feed(
            &entry("T", r#""192.0.2.1""#, "approved").replace("2026-11-20T08:00:00Z", "yesterday"),
        );
        let err = parse(&json).unwrap_err().to_string();
        assert!(
            err.contains("entries[0] (id T): approved_at: \"yesterday\" is not an RFC 3339 time"),
            "{err}"
        );
    }

    #[test]
    fn null_expiry_means_no_expiry() {
        let json = feed(
            &entry("N", r#""192.0.2.1""#, "approved").replace(r#""2027-11-20T08:00:00Z""#, "null"),
        );
        let (f, _) = parse(&json).unwrap();
        assert_eq!(f.entries[0].expires_at, None);
        assert!(f.entries[0].in_force(time::macros::datetime!(2100-01-01 0:00 UTC)));
    }

    /// Entries are validated as they are read (never collected raw); the problems still come
    /// in feed order, every entry's own before the duplicates, each duplicate naming the
    /// first valid entry with its id (an invalid one is not an id's first use).
    #[test]
    fn entry_problems_come_in_feed_order_then_the_duplicates() {
        let json = feed(
            &[
                entry("A", r#""192.0.2.1""#, "approved"),
                entry("B", r#""192.0.2.2""#, "maybe"),
                entry("A", r#""192.0.2.3""#, "approved"),
                entry("B", r#""192.0.2.4""#, "approved"),
                entry("C", r#""10.0.0.300""#, "approved"),
                entry("B", r#""192.0.2.5""#, "approved"),
            ]
            .join(","),
        );
        let err = parse(&json).unwrap_err();
        let p = &err.problems;
        assert_eq!(p.len(), 4, "{p:#?}");
        assert!(p[0].starts_with("entries[1] (id B): status"), "{p:#?}");
        assert!(p[1].starts_with("entries[4] (id C): prefixes[0]"), "{p:#?}");
        assert_eq!(
            p[2],
            "entries[2] (id A): duplicate id, first used by entries[0]"
        );
        assert_eq!(
            p[3],
            "entries[5] (id B): duplicate id, first used by entries[3]"
        );
    }

    #[test]
    fn duplicate_ids_are_errors_and_unknown_fields_warnings() {
        let mut e = entry("D", r#""192.0.2.1""#, "approved");
        e.insert_str(1, r#""colour": "blue", "#);
        let json = feed(&[e.clone(), e].join(","));
        let err = parse(&json).unwrap_err().to_string();
        assert!(
            err.contains("duplicate id, first used by entries[0]"),
            "{err}"
        );
        let json = feed(&entry("D", r#""192.0.2.1""#, "approved").replacen(
            '{',
            r#"{"colour": "blue", "#,
            1,
        ));
        let (_, warnings) = parse(&json).unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("colour"));
    }

    #[test]
    fn a_field_given_twice_in_an_entry_is_an_error() {
        let json = feed(&entry("T2", r#""192.0.2.1""#, "approved").replacen(
            '{',
            r#"{"status": "revoked", "#,
            1,
        ));
        let err = parse(&json).unwrap_err().to_string();
        assert!(
            err.contains("(id T2): status: given more than once"),
            "{err}"
        );
    }

    #[test]
    fn a_prefix_listed_twice_in_an_entry_is_a_warning() {
        let json = feed(&entry("P", r#""192.0.2.1", "192.0.2.1/32""#, "approved"));
        let (f, w) = parse(&json).unwrap();
        assert_eq!(f.entries[0].prefixes.len(), 1);
        assert!(w[0].contains("listed twice"), "{w:?}");
    }

    #[test]
    fn overlapping_prefixes_of_two_entries_are_both_kept_and_the_longest_match_wins() {
        let json = feed(
            &[
                entry("COMPANY", r#""192.0.2.0/24""#, "approved"),
                entry("FREELANCER", r#""192.0.2.77""#, "approved"),
            ]
            .join(","),
        );
        let (f, _) = parse(&json).unwrap();
        let allow = f.allowlist(now());
        let (p, by) = allow.lookup("192.0.2.77".parse().unwrap()).unwrap();
        assert_eq!(
            (p.to_string().as_str(), &*by.id),
            ("192.0.2.77/32", "FREELANCER")
        );
        let (_, by) = allow.lookup("192.0.2.78".parse().unwrap()).unwrap();
        assert_eq!(&*by.id, "COMPANY");
    }

    #[test]
    fn a_prefix_registered_by_two_entries_is_attributed_to_the_lowest_id() {
        let json = feed(
            &[
                entry("B", r#""192.0.2.0/24""#, "approved"),
                entry("A", r#""192.0.2.0/24""#, "approved"),
            ]
            .join(","),
        );
        let (f, _) = parse(&json).unwrap();
        let allow = f.allowlist(now());
        assert_eq!(allow.len(), 1);
        assert_eq!(&*allow.prefixes.values().next().unwrap().id, "A");
    }

    #[test]
    fn expiry_and_future_approval_follow_the_clock() {
        let json = feed(&entry("E", r#""192.0.2.0/24""#, "approved"));
        let (f, _) = parse(&json).unwrap();
        assert_eq!(f.allowlist(now()).prefixes.len(), 1);
        assert!(f
            .allowlist(time::macros::datetime!(2027-11-20 08:00 UTC))
            .prefixes
            .is_empty());
        assert!(f
            .allowlist(time::macros::datetime!(2026-11-20 07:59 UTC))
            .prefixes
            .is_empty());
        assert_eq!(
            f.next_change_after(now()),
            Some(time::macros::datetime!(2027-11-20 08:00 UTC))
        );
    }

    #[test]
    fn ipv4_mapped_prefixes_become_ipv4() {
        assert_eq!(
            "::ffff:192.0.2.0/120".parse::<Prefix>().unwrap(),
            Prefix::V4 {
                addr: [192, 0, 2, 0],
                len: 24
            }
        );
        let p: Prefix = "192.0.2.0/24".parse().unwrap();
        assert!(p.contains("::ffff:192.0.2.77".parse().unwrap()));
    }

    #[test]
    fn lookup_of_a_mapped_address_uses_the_ipv4_allowlist() {
        let json = feed(&entry("M", r#""192.0.2.0/24""#, "approved"));
        let (f, _) = parse(&json).unwrap();
        let allow = f.allowlist(now());
        assert!(allow.lookup("::ffff:192.0.2.9".parse().unwrap()).is_some());
        assert!(allow.lookup("::ffff:192.0.3.9".parse().unwrap()).is_none());
    }

    #[test]
    fn the_error_message_lists_at_most_a_hundred_problems() {
        let entries: Vec<String> = (0..150)
            .map(|i| entry(&format!("E{i}"), r#""10.0.0.300""#, "approved"))
            .collect();
        let err = parse(&feed(&entries.join(","))).unwrap_err();
        assert_eq!(err.problems.len(), 150);
        let text = err.to_string();
        assert!(text.contains("150 problem(s)"), "{text}");
        assert!(text.contains("... and 50 more problem(s)"), "{text}");
    }

    // ---- CSV ----

    const HEADER: &str = "id,holder,category,prefix,status,approved_at,expires_at\n";

    #[test]
    fn csv_rows_of_one_id_merge_into_one_entry() {
        let csv = format!(
            "{HEADER}REG-1,\"Acme, Inc.\",software_house,203.0.113.0/28,approved,2026-11-20T08:00:00Z,2027-11-20T08:00:00Z\n\
             REG-2,Bob,freelancer,198.51.100.7,approved,2026-11-20T08:00:00Z,\n\
             REG-1,\"Acme, Inc.\",software_house,2001:db8:10::/48,approved,2026-11-20T08:00:00Z,2027-11-20T08:00:00Z\n"
        );
        let (f, w) = parse_csv(&csv).unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(f.format, FeedFormat::Csv);
        assert_eq!(f.serial, None);
        assert_eq!(f.entries.len(), 2);
        assert_eq!(&*f.entries[0].id, "REG-1");
        assert_eq!(&*f.entries[0].holder, "Acme, Inc.");
        assert_eq!(f.entries[0].prefixes.len(), 2);
        assert_eq!(f.entries[1].expires_at, None, "empty expires_at: no expiry");
        assert_eq!(f.allowlist(now()).len(), 3);
    }

    #[test]
    fn csv_columns_are_found_by_name_in_any_order_and_extra_ones_warned() {
        let csv = "prefix,id,status,holder,category,approved_at,expires_at,notes\n\
                   192.0.2.0/24,R,approved,H,bank,2026-11-20T08:00:00Z,,hello\n";
        let (f, w) = parse_csv(csv).unwrap();
        assert_eq!(f.entries[0].category, Category::Bank);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("line 1, column 8: unknown column \"notes\""),
            "{w:?}"
        );
    }

    #[test]
    fn csv_bad_values_name_line_column_and_id() {
        let csv = format!(
            "{HEADER}OK,h,company,192.0.2.1,approved,2026-11-20T08:00:00Z,\n\
             BAD,h,casino,10.0.0.300/24,maybe,2026-11-20T08:00:00Z,2026-11-19T08:00:00Z\n"
        );
        let err = parse_csv(&csv).unwrap_err();
        let text = err.to_string();
        assert_eq!(err.problems.len(), 4, "{text}");
        assert!(text.contains("line 3, column 4 (prefix), id BAD: \"10.0.0.300/24\": \"10.0.0.300\" is not an IP address"), "{text}");
        assert!(
            text.contains("line 3, column 3 (category), id BAD: unknown category \"casino\""),
            "{text}"
        );
        assert!(
            text.contains("line 3, column 5 (status), id BAD: unknown status \"maybe\""),
            "{text}"
        );
        assert!(
            text.contains(
                "line 3, column 7 (expires_at), id BAD: expires_at is not after approved_at"
            ),
            "{text}"
        );
    }

    #[test]
    fn csv_rows_of_one_id_that_disagree_are_an_error_naming_both_lines() {
        let csv = format!(
            "{HEADER}R,h,company,192.0.2.1,approved,2026-11-20T08:00:00Z,\n\
             R,h,company,192.0.2.2,revoked,2026-11-20T08:00:00Z,\n"
        );
        let err = parse_csv(&csv).unwrap_err().to_string();
        assert!(
            err.contains(
                "line 3, column 5 (status), id R: \"revoked\" differs from line 2 (\"approved\")"
            ),
            "{err}"
        );
    }

    /// An entry whose fields are invalid has no `Entry` to hold its id: its later rows are
    /// still found by it (compared with its first row, not taken for a new entry).
    #[test]
    fn csv_later_rows_of_an_entry_with_invalid_fields_are_compared_with_its_first_row() {
        let csv = format!(
            "{HEADER}BAD,h,company,192.0.2.1,maybe,2026-11-20T08:00:00Z,\n\
             OK,h,company,192.0.2.5,approved,2026-11-20T08:00:00Z,\n\
             BAD,h2,company,192.0.2.2,maybe,2026-11-20T08:00:00Z,\n"
        );
        let err = parse_csv(&csv).unwrap_err();
        let text = err.to_string();
        assert_eq!(err.problems.len(), 2, "{text}");
        assert!(
            text.contains("line 2, column 5 (status), id BAD: unknown status \"maybe\""),
            "{text}"
        );
        assert!(
            text.contains("line 4, column 2 (holder), id BAD: \"h2\" differs from line 2 (\"h\")"),
            "{text}"
        );
    }

    /// Later rows are compared by a hash; a disagreeing one re-reads the first row from the
    /// bytes (after a byte-order mark, across quoted fields and other ids' rows) to quote it.
    #[test]
    fn csv_disagreeing_rows_quote_the_first_row_re_read_from_the_bytes() {
        let csv = format!(
            "\u{feff}{HEADER}R,\"Acme, Inc.\",company,192.0.2.1,approved,2026-11-20T08:00:00Z,\n\
             S,other,bank,192.0.2.9,approved,2026-11-20T08:00:00Z,\n\
             R,\"Acme, Inc.\",company,192.0.2.2,approved,2026-11-20T08:00:00Z,\n\
             R,\"Acme Inc\",bank,192.0.2.3,approved,2026-11-20T08:00:00Z,2027-01-01T00:00:00Z\n"
        );
        let err = parse_csv(&csv).unwrap_err().to_string();
        for want in [
            "line 5, column 2 (holder), id R: \"Acme Inc\" differs from line 2 (\"Acme, Inc.\")",
            "line 5, column 3 (category), id R: \"bank\" differs from line 2 (\"company\")",
            "line 5, column 7 (expires_at), id R: \"2027-01-01T00:00:00Z\" differs from line 2 (\"\")",
        ] {
            assert!(err.contains(want), "{want} in {err}");
        }
        assert_eq!(err.matches("differs from").count(), 3, "{err}");
    }

    #[test]
    fn csv_missing_columns_are_named() {
        let err = parse_csv("id,holder,prefix\nR,h,192.0.2.1\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "line 1: the header lacks column(s) category, status, approved_at, expires_at"
            ),
            "{err}"
        );
    }

    #[test]
    fn csv_rows_with_the_wrong_number_of_fields_name_the_line() {
        let csv = format!("{HEADER}R,h,company,192.0.2.1,approved\n");
        let err = parse_csv(&csv).unwrap_err().to_string();
        assert!(
            err.contains("line 2: 5 field(s), the header has 7"),
            "{err}"
        );
    }

    #[test]
    fn csv_a_half_written_last_row_is_refused() {
        let full = format!("{HEADER}R,h,company,192.0.2.1,approved,2026-11-20T08:00:00Z,\n");
        let cut = &full[..full.len() - 12];
        let err = parse_csv(cut).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn csv_empty_id_and_duplicate_columns_are_errors() {
        let csv = format!("{HEADER},h,company,192.0.2.1,approved,2026-11-20T08:00:00Z,\n");
        assert!(parse_csv(&csv)
            .unwrap_err()
            .to_string()
            .contains("line 2, column 1 (id): empty"));
        let err = parse_csv("id,id,holder,category,prefix,status,approved_at,expires_at\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("column \"id\" appears twice"), "{err}");
    }

    #[test]
    fn csv_with_byte_order_mark_and_crlf_parses() {
        let csv = format!(
            "\u{feff}{}R,h,company,192.0.2.1,approved,2026-11-20T08:00:00Z,\r\n",
            HEADER.replace('\n', "\r\n")
        );
        let (f, _) =
            Feed::parse(csv.as_bytes(), "t", FormatChoice::Auto, Default::default()).unwrap();
        assert_eq!(f.format, FeedFormat::Csv);
        assert_eq!(f.entries.len(), 1);
    }

    #[test]
    fn the_format_is_told_from_the_content() {
        assert_eq!(detect_format(b"  \n{\"serial\": 1}"), Ok(FeedFormat::Json));
        assert_eq!(detect_format(HEADER.as_bytes()), Ok(FeedFormat::Csv));
        assert_eq!(
            detect_format(b"\"id\",\"holder\",\"prefix\"\n"),
            Ok(FeedFormat::Csv)
        );
        let err = detect_format(b"<html>oops</html>").unwrap_err();
        assert!(err.contains("cannot tell the format"), "{err}");
        assert!(err.contains("--registry-format"), "{err}");
        assert_eq!(detect_format(b"  \n").unwrap_err(), "the feed is empty");
    }

    #[test]
    fn a_forced_format_is_used_even_when_the_content_says_otherwise() {
        let err = Feed::parse(
            HEADER.as_bytes(),
            "t",
            FormatChoice::Json,
            Default::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("invalid JSON"), "{err}");
    }

    #[test]
    fn entries_covering_an_address_include_those_not_in_force() {
        let json = feed(
            &[
                entry("A", r#""192.0.2.0/24""#, "revoked"),
                entry("B", r#""192.0.2.7""#, "approved"),
            ]
            .join(","),
        );
        let (f, _) = parse(&json).unwrap();
        let cov = f.entries_covering("192.0.2.7".parse().unwrap());
        assert_eq!(cov.len(), 2);
        assert_eq!(
            cov[0].0.not_in_force_because(now()).as_deref(),
            Some("its status is revoked")
        );
        assert_eq!(cov[1].0.not_in_force_because(now()), None);
    }
}
