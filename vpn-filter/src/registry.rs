//! The registry feed: who registered which addresses for VPN use.
//!
//! Format (versioned JSON, documented in docs/registry-feed.md):
//! `{"serial": 42, "generated_at": "...", "entries": [{"id", "holder", "category", "prefixes",
//! "status", "approved_at", "expires_at"}]}`. Parsing is strict and reports every problem with
//! the entry id and field it belongs to; a feed with any error is rejected whole, so a bad
//! file never replaces a good allowlist.

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    str::FromStr,
};

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

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Approved,
    Pending,
    Rejected,
    Revoked,
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
        match (self, canonical_ip(ip)) {
            (Prefix::V4 { addr, len }, IpAddr::V4(ip)) => {
                let mask = if *len == 0 { 0 } else { u32::MAX << (32 - len) };
                u32::from_be_bytes(*addr) == u32::from(ip) & mask
            }
            (Prefix::V6 { addr, len }, IpAddr::V6(ip)) => {
                let mask = if *len == 0 {
                    0
                } else {
                    u128::MAX << (128 - len)
                };
                u128::from_be_bytes(*addr) == u128::from(ip) & mask
            }
            _ => false,
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
        let prefix = match addr {
            IpAddr::V4(a) => {
                let bits = u32::from(a);
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                if bits & !mask != 0 {
                    return Err(format!(
                        "host bits set: {s} (did you mean {}/{len} or {a}/32?)",
                        Ipv4Addr::from(bits & mask)
                    ));
                }
                Prefix::V4 {
                    addr: a.octets(),
                    len,
                }
            }
            IpAddr::V6(a) => {
                let bits = u128::from(a);
                let mask = if len == 0 {
                    0
                } else {
                    u128::MAX << (128 - len)
                };
                if bits & !mask != 0 {
                    return Err(format!(
                        "host bits set: {s} (did you mean {}/{len} or {a}/128?)",
                        Ipv6Addr::from(bits & mask)
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

/// One registration as it appears in the feed.
#[derive(Clone, Debug, Deserialize)]
pub struct RawEntry {
    pub id: Option<String>,
    pub holder: Option<String>,
    pub category: Option<String>,
    pub prefixes: Option<Vec<String>>,
    pub status: Option<String>,
    pub approved_at: Option<String>,
    pub expires_at: Option<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

#[derive(Clone, Debug, Deserialize)]
struct RawFeed {
    serial: Option<u64>,
    generated_at: Option<String>,
    entries: Option<Vec<RawEntry>>,
    #[serde(flatten)]
    extra: BTreeMap<String, serde_json::Value>,
}

/// A validated registration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    pub holder: String,
    pub category: Category,
    pub prefixes: Vec<Prefix>,
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
}

/// A validated feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Feed {
    pub serial: u64,
    pub generated_at: OffsetDateTime,
    pub entries: Vec<Entry>,
}

/// Options for validation.
#[derive(Clone, Copy, Debug, Default)]
pub struct ValidateOptions {
    /// Accept prefixes shorter than /8 (IPv4) or /16 (IPv6), including 0.0.0.0/0 and ::/0.
    pub allow_broad: bool,
}

/// Everything wrong with a feed, each problem located.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {} problem(s):\n{}", problems.len(), problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct FeedError {
    pub source_name: String,
    pub problems: Vec<String>,
}

/// Non-fatal observations (unknown fields, ...).
pub type Warnings = Vec<String>;

fn parse_time(s: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("\"{s}\" is not an RFC 3339 time ({e})"))
}

impl Feed {
    /// Reads and validates a JSON feed file.
    pub fn from_file(path: &Path, opts: ValidateOptions) -> Result<(Feed, Warnings), FeedError> {
        let name = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| FeedError {
            source_name: name.clone(),
            problems: vec![format!("cannot read: {e}")],
        })?;
        Feed::from_json(&bytes, &name, opts)
    }

    /// Parses and validates a JSON feed. `source_name` names it in errors.
    pub fn from_json(
        bytes: &[u8],
        source_name: &str,
        opts: ValidateOptions,
    ) -> Result<(Feed, Warnings), FeedError> {
        let fail = |problems: Vec<String>| FeedError {
            source_name: source_name.to_string(),
            problems,
        };
        let raw: RawFeed = serde_json::from_slice(bytes).map_err(|e| {
            fail(vec![format!(
                "line {}, column {}: invalid JSON: {e}",
                e.line(),
                e.column()
            )])
        })?;
        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        for k in raw.extra.keys() {
            warnings.push(format!("unknown top-level field \"{k}\" ignored"));
        }
        let serial = raw.serial.unwrap_or_else(|| {
            problems.push("missing field \"serial\"".to_string());
            0
        });
        let generated_at = match raw.generated_at.as_deref().map(parse_time) {
            Some(Ok(t)) => t,
            Some(Err(e)) => {
                problems.push(format!("generated_at: {e}"));
                OffsetDateTime::UNIX_EPOCH
            }
            None => {
                problems.push("missing field \"generated_at\"".to_string());
                OffsetDateTime::UNIX_EPOCH
            }
        };
        let raw_entries = raw.entries.unwrap_or_else(|| {
            problems.push("missing field \"entries\"".to_string());
            Vec::new()
        });
        let mut entries = Vec::with_capacity(raw_entries.len());
        let mut seen_ids = BTreeMap::new();
        for (i, raw) in raw_entries.into_iter().enumerate() {
            match validate_entry(i, raw, opts, &mut warnings) {
                Ok(entry) => {
                    if let Some(first) = seen_ids.insert(entry.id.clone(), i) {
                        problems.push(format!(
                            "entries[{i}] (id {}): duplicate id, first used by entries[{first}]",
                            entry.id
                        ));
                    }
                    entries.push(entry);
                }
                Err(mut e) => problems.append(&mut e),
            }
        }
        if !problems.is_empty() {
            return Err(fail(problems));
        }
        Ok((
            Feed {
                serial,
                generated_at,
                entries,
            },
            warnings,
        ))
    }

    /// The allowlist in force at `now`: every prefix of every entry in force, tagged with the
    /// entry that registered it. A prefix registered by several entries keeps the entry with
    /// the lowest id (deterministic, so repeated syncs do not churn).
    pub fn allowlist(&self, now: OffsetDateTime) -> Allowlist {
        let mut out = Allowlist::default();
        for e in self.entries.iter().filter(|e| e.in_force(now)) {
            for p in &e.prefixes {
                out.prefixes
                    .entry(*p)
                    .and_modify(|cur: &mut AllowedBy| {
                        if e.id < cur.id {
                            *cur = AllowedBy {
                                id: e.id.clone(),
                                tag: e.tag(),
                            };
                        }
                    })
                    .or_insert_with(|| AllowedBy {
                        id: e.id.clone(),
                        tag: e.tag(),
                    });
            }
        }
        out
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
}

fn validate_entry(
    i: usize,
    raw: RawEntry,
    opts: ValidateOptions,
    warnings: &mut Warnings,
) -> Result<Entry, Vec<String>> {
    let mut problems = Vec::new();
    let id = match raw.id.as_deref().map(str::trim) {
        Some(id) if !id.is_empty() => id.to_string(),
        _ => {
            problems.push(format!("entries[{i}]: missing or empty \"id\""));
            format!("<entries[{i}]>")
        }
    };
    let at = format!("entries[{i}] (id {id})");
    for k in raw.extra.keys() {
        warnings.push(format!("{at}: unknown field \"{k}\" ignored"));
    }
    let holder = raw.holder.unwrap_or_else(|| {
        problems.push(format!("{at}: missing \"holder\""));
        String::new()
    });
    let category = match raw.category.as_deref() {
        Some(c) => match serde_json::from_value::<Category>(serde_json::Value::String(c.into())) {
            Ok(c) => Some(c),
            Err(_) => {
                problems.push(format!(
                    "{at}: unknown category \"{c}\" (expected software_house, call_centre, bank, embassy, freelancer or company)"
                ));
                None
            }
        },
        None => {
            problems.push(format!("{at}: missing \"category\""));
            None
        }
    };
    let status = match raw.status.as_deref() {
        Some(s) => match serde_json::from_value::<Status>(serde_json::Value::String(s.into())) {
            Ok(s) => Some(s),
            Err(_) => {
                problems.push(format!(
                    "{at}: unknown status \"{s}\" (expected approved, pending, rejected or revoked)"
                ));
                None
            }
        },
        None => {
            problems.push(format!("{at}: missing \"status\""));
            None
        }
    };
    let approved_at = match raw.approved_at.as_deref().map(parse_time) {
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => {
            problems.push(format!("{at}: approved_at: {e}"));
            None
        }
        None => {
            problems.push(format!("{at}: missing \"approved_at\""));
            None
        }
    };
    let expires_at = match raw.expires_at.as_deref().map(parse_time) {
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => {
            problems.push(format!("{at}: expires_at: {e}"));
            None
        }
        None => None,
    };
    if let (Some(a), Some(e)) = (approved_at, expires_at) {
        if e <= a {
            problems.push(format!("{at}: expires_at is not after approved_at"));
        }
    }
    let mut prefixes = Vec::new();
    match raw.prefixes {
        None => problems.push(format!("{at}: missing \"prefixes\"")),
        Some(list) if list.is_empty() => problems.push(format!("{at}: \"prefixes\" is empty")),
        Some(list) => {
            for (j, s) in list.iter().enumerate() {
                match s.trim().parse::<Prefix>() {
                    Ok(p) => {
                        let min = match p {
                            Prefix::V4 { .. } => MIN_V4_PREFIX,
                            Prefix::V6 { .. } => MIN_V6_PREFIX,
                        };
                        if p.len() < min && !opts.allow_broad {
                            problems.push(format!(
                                "{at}: prefixes[{j}] \"{s}\": broader than /{min}; refused unless broad prefixes are explicitly allowed (one typo must not open the filter)"
                            ));
                        } else if prefixes.contains(&p) {
                            warnings.push(format!("{at}: prefixes[{j}] \"{s}\" listed twice"));
                        } else {
                            prefixes.push(p);
                        }
                    }
                    Err(e) => problems.push(format!("{at}: prefixes[{j}] \"{s}\": {e}")),
                }
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Entry {
        id,
        holder,
        category: category.expect("checked above"),
        prefixes,
        status: status.expect("checked above"),
        approved_at: approved_at.expect("checked above"),
        expires_at,
    })
}

/// Which entry allows a prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedBy {
    pub id: String,
    pub tag: u64,
}

/// The set of allowed prefixes, as the kernel should hold it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allowlist {
    pub prefixes: BTreeMap<Prefix, AllowedBy>,
}

impl Allowlist {
    pub fn v4_count(&self) -> usize {
        self.prefixes
            .keys()
            .filter(|p| matches!(p, Prefix::V4 { .. }))
            .count()
    }

    pub fn v6_count(&self) -> usize {
        self.prefixes.len() - self.v4_count()
    }

    /// The entry whose prefix matches `ip` most specifically, as the kernel's LPM lookup would.
    pub fn lookup(&self, ip: IpAddr) -> Option<(&Prefix, &AllowedBy)> {
        self.prefixes
            .iter()
            .filter(|(p, _)| p.contains(ip))
            .max_by_key(|(p, _)| p.len())
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
        assert_eq!(f.serial, 7);
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
    fn unknown_category_status_and_dates_out_of_order_are_errors() {
        let json = feed(
            r#"{"id": "X", "holder": "h", "category": "casino", "prefixes": ["192.0.2.0/24"], "status": "maybe", "approved_at": "2026-11-20T08:00:00Z", "expires_at": "2026-11-19T08:00:00Z"}"#,
        );
        let err = parse(&json).unwrap_err();
        let text = err.to_string();
        assert_eq!(err.problems.len(), 3, "{text}");
        assert!(text.contains("unknown category \"casino\""));
        assert!(text.contains("unknown status \"maybe\""));
        assert!(text.contains("expires_at is not after approved_at"));
    }

    #[test]
    fn duplicate_ids_are_errors_and_unknown_fields_warnings() {
        let mut e = entry("D", r#""192.0.2.1""#, "approved");
        e.insert_str(1, r#""colour": "blue", "#);
        let json = feed(&[e.clone(), e].join(","));
        let err = parse(&json).unwrap_err().to_string();
        assert!(err.contains("duplicate id"), "{err}");
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
}
