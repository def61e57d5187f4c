//! The JSON feed: `{"serial", "generated_at", "entries": [...]}`.
//!
//! Deserialised with hand-written visitors rather than `#[serde(flatten)]`: flatten buffers
//! every entry into an intermediate tree first, which at a million entries costs seconds and
//! gigabytes. The visitors keep unknown field names (for the warnings) and skip their values.

use std::{borrow::Cow, fmt};

use serde::{
    de::{IgnoredAny, MapAccess, Visitor},
    Deserialize, Deserializer,
};

use super::{
    check_fields, check_prefix, parse_time, Feed, FeedError, FeedFormat, Interner, PrefixSet,
    RawFields, ValidateOptions, Warnings,
};

/// A string borrowed from the feed bytes when it has no escapes (most do): a million entries
/// then cost no allocation per field.
#[derive(Debug)]
struct Str<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(v)))
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v.to_string())))
            }

            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

fn as_str<'a>(s: &'a Option<Str<'_>>) -> Option<&'a str> {
    s.as_ref().map(|s| &*s.0)
}

/// One registration as it appears in the feed, before validation.
#[derive(Debug, Default)]
struct RawEntry<'de> {
    id: Option<Str<'de>>,
    holder: Option<Str<'de>>,
    category: Option<Str<'de>>,
    prefixes: Option<Vec<Str<'de>>>,
    status: Option<Str<'de>>,
    approved_at: Option<Str<'de>>,
    expires_at: Option<Str<'de>>,
    unknown: Vec<String>,
    repeated: Vec<&'static str>,
}

#[derive(Debug, Default)]
struct RawFeed<'de> {
    serial: Option<u64>,
    generated_at: Option<Str<'de>>,
    entries: Option<Vec<RawEntry<'de>>>,
    unknown: Vec<String>,
    repeated: Vec<&'static str>,
}

/// A field name: one of `known`, or another name (kept for the warning).
enum Key {
    Known(usize),
    Other(String),
}

struct KeyVisitor(&'static [&'static str]);

impl Visitor<'_> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key, E> {
        Ok(match self.0.iter().position(|k| *k == v) {
            Some(i) => Key::Known(i),
            None => Key::Other(v.to_string()),
        })
    }
}

struct KeySeed(&'static [&'static str]);

impl<'de> serde::de::DeserializeSeed<'de> for KeySeed {
    type Value = Key;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_str(KeyVisitor(self.0))
    }
}

const ENTRY_FIELDS: &[&str] = &[
    "id",
    "holder",
    "category",
    "prefixes",
    "status",
    "approved_at",
    "expires_at",
];

/// Sets a field once; a second occurrence is recorded as a problem (the first value stays).
fn set_once<T>(slot: &mut Option<T>, seen: &mut u32, bit: usize, v: Option<T>) -> bool {
    let fresh = *seen & (1 << bit) == 0;
    *seen |= 1 << bit;
    if fresh {
        *slot = v;
    }
    fresh
}

impl<'de> Deserialize<'de> for RawEntry<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawEntry<'de>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a registry entry (an object)")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawEntry<'de>, A::Error> {
                let mut e = RawEntry::default();
                let mut seen = 0u32;
                while let Some(key) = map.next_key_seed(KeySeed(ENTRY_FIELDS))? {
                    let i = match key {
                        Key::Known(i) => i,
                        Key::Other(name) => {
                            map.next_value::<IgnoredAny>()?;
                            e.unknown.push(name);
                            continue;
                        }
                    };
                    let fresh = match i {
                        0 => set_once(&mut e.id, &mut seen, i, map.next_value()?),
                        1 => set_once(&mut e.holder, &mut seen, i, map.next_value()?),
                        2 => set_once(&mut e.category, &mut seen, i, map.next_value()?),
                        3 => set_once(&mut e.prefixes, &mut seen, i, map.next_value()?),
                        4 => set_once(&mut e.status, &mut seen, i, map.next_value()?),
                        5 => set_once(&mut e.approved_at, &mut seen, i, map.next_value()?),
                        _ => set_once(&mut e.expires_at, &mut seen, i, map.next_value()?),
                    };
                    if !fresh {
                        e.repeated.push(ENTRY_FIELDS[i]);
                    }
                }
                Ok(e)
            }
        }
        d.deserialize_map(V)
    }
}

const FEED_FIELDS: &[&str] = &["serial", "generated_at", "entries"];

impl<'de> Deserialize<'de> for RawFeed<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawFeed<'de>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a registry feed (an object with serial, generated_at and entries)")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawFeed<'de>, A::Error> {
                let mut feed = RawFeed::default();
                let mut seen = 0u32;
                while let Some(key) = map.next_key_seed(KeySeed(FEED_FIELDS))? {
                    let (fresh, name) = match key {
                        Key::Known(0) => (
                            set_once(&mut feed.serial, &mut seen, 0, map.next_value()?),
                            "serial",
                        ),
                        Key::Known(1) => (
                            set_once(&mut feed.generated_at, &mut seen, 1, map.next_value()?),
                            "generated_at",
                        ),
                        Key::Known(2) => (
                            set_once(&mut feed.entries, &mut seen, 2, map.next_value()?),
                            "entries",
                        ),
                        Key::Known(_) => unreachable!("FEED_FIELDS has 3 names"),
                        Key::Other(name) => {
                            map.next_value::<IgnoredAny>()?;
                            feed.unknown.push(name);
                            (true, "")
                        }
                    };
                    if !fresh {
                        feed.repeated.push(name);
                    }
                }
                Ok(feed)
            }
        }
        d.deserialize_map(V)
    }
}

pub(super) fn parse(
    bytes: &[u8],
    source_name: &str,
    opts: ValidateOptions,
) -> Result<(Feed, Warnings), FeedError> {
    let raw: RawFeed = serde_json::from_slice(super::strip_bom(bytes)).map_err(|e| {
        FeedError::new(
            source_name,
            format!(
                "line {}, column {}: invalid JSON feed: {e}",
                e.line(),
                e.column()
            ),
        )
    })?;
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    for k in &raw.unknown {
        warnings.push(format!("unknown top-level field \"{k}\" ignored"));
    }
    for k in &raw.repeated {
        problems.push(format!("top-level field \"{k}\" given more than once"));
    }
    let serial = raw.serial;
    if serial.is_none() {
        problems.push("missing field \"serial\" (an unsigned integer)".to_string());
    }
    let generated_at = match as_str(&raw.generated_at).map(parse_time) {
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => {
            problems.push(format!("generated_at: {e}"));
            None
        }
        None => {
            problems.push("missing field \"generated_at\"".to_string());
            None
        }
    };
    let raw_entries = raw.entries.unwrap_or_else(|| {
        problems.push("missing field \"entries\" (a list)".to_string());
        Vec::new()
    });
    let mut entries = Vec::with_capacity(raw_entries.len());
    // Index in the feed of each valid entry, for the duplicate check.
    let mut index = Vec::with_capacity(raw_entries.len());
    let mut holders = Interner::default();
    for (i, raw) in raw_entries.into_iter().enumerate() {
        if let Some(entry) =
            validate_entry(i, raw, opts, &mut holders, &mut problems, &mut warnings)
        {
            entries.push(entry);
            index.push(i);
        }
    }
    // Duplicate ids: sort (id, index) pairs and compare neighbours (no hashing of a million
    // ids).
    let mut by_id: Vec<(&str, usize)> = entries
        .iter()
        .zip(&index)
        .map(|(e, i)| (&*e.id, *i))
        .collect();
    by_id.sort_unstable();
    let mut dups: Vec<(usize, String)> = Vec::new();
    for w in by_id.chunk_by(|a, b| a.0 == b.0) {
        for (id, i) in &w[1..] {
            dups.push((
                *i,
                format!(
                    "entries[{i}] (id {id}): duplicate id, first used by entries[{}]",
                    w[0].1
                ),
            ));
        }
    }
    dups.sort_unstable();
    problems.extend(dups.into_iter().map(|(_, p)| p));
    if !problems.is_empty() {
        return Err(FeedError {
            source_name: source_name.to_string(),
            problems,
        });
    }
    Ok((
        Feed {
            format: FeedFormat::Json,
            serial,
            generated_at,
            entries,
        },
        warnings,
    ))
}

fn validate_entry(
    i: usize,
    raw: RawEntry<'_>,
    opts: ValidateOptions,
    holders: &mut Interner,
    problems: &mut Vec<String>,
    warnings: &mut Warnings,
) -> Option<super::Entry> {
    let before = problems.len();
    let id = match as_str(&raw.id).map(str::trim) {
        Some(id) if !id.is_empty() => id.to_string(),
        _ => {
            problems.push(format!("entries[{i}]: missing or empty \"id\""));
            format!("<entries[{i}]>")
        }
    };
    // Built only for messages.
    let base = || format!("entries[{i}] (id {id})");
    for k in &raw.unknown {
        warnings.push(format!("{}: unknown field \"{k}\" ignored", base()));
    }
    for k in &raw.repeated {
        problems.push(format!("{}: {k}: given more than once", base()));
    }
    let fields = check_fields(
        &RawFields {
            holder: as_str(&raw.holder),
            category: as_str(&raw.category),
            status: as_str(&raw.status),
            approved_at: as_str(&raw.approved_at),
            expires_at: as_str(&raw.expires_at),
        },
        &|field| format!("{}: {field}", base()),
        problems,
    );
    let mut prefixes = PrefixSet::with_capacity(raw.prefixes.as_ref().map_or(0, Vec::len));
    match &raw.prefixes {
        None => problems.push(format!("{}: prefixes: missing", base())),
        Some(list) if list.is_empty() => problems.push(format!("{}: prefixes: empty list", base())),
        Some(list) => {
            for (j, s) in list.iter().enumerate() {
                let s = &*s.0;
                match check_prefix(s, opts) {
                    Ok(p) => {
                        if !prefixes.insert(p) {
                            warnings
                                .push(format!("{}: prefixes[{j}] \"{s}\" listed twice", base()));
                        }
                    }
                    Err(e) => problems.push(format!("{}: prefixes[{j}] \"{s}\": {e}", base())),
                }
            }
        }
    }
    if problems.len() > before {
        return None;
    }
    let f = fields?;
    Some(super::Entry {
        id: id.into(),
        holder: holders.get(&f.holder),
        category: f.category,
        prefixes: prefixes.into_vec().into_iter().collect(),
        status: f.status,
        approved_at: f.approved_at,
        expires_at: f.expires_at,
    })
}
