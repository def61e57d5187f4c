//! The JSON feed: `{"serial", "generated_at", "entries": [...]}`.
//!
//! Deserialised with hand-written visitors rather than `#[serde(flatten)]`: flatten buffers
//! every entry into an intermediate tree first, which at a million entries costs seconds and
//! gigabytes. The visitors keep unknown field names (for the warnings) and skip their values,
//! and each entry is validated as soon as it is read: the raw entries are never collected.

use std::{borrow::Cow, fmt, hash::BuildHasher as _};

use hashbrown::HashTable;
use serde::{
    de::{IgnoredAny, MapAccess, SeqAccess, Visitor},
    Deserialize, Deserializer,
};

use super::{
    check_fields, check_prefix, parse_time, Entry, Feed, FeedError, FeedFormat, Interner,
    PrefixSet, RawFields, ValidateOptions, Warnings,
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

/// The feed's top level. Its entries are not collected: each is validated as it is read
/// (see [`Entries`]), so a million raw entries never sit in memory next to the feed bytes.
#[derive(Debug, Default)]
struct RawFeed<'de> {
    serial: Option<u64>,
    generated_at: Option<Str<'de>>,
    /// Whether an `entries` list was read.
    entries: bool,
    unknown: Vec<String>,
    repeated: Vec<&'static str>,
}

/// What validating the entries one by one builds.
struct Entries {
    opts: ValidateOptions,
    holders: Interner,
    problems: Vec<String>,
    warnings: Warnings,
    /// Valid entries, in feed order.
    entries: Vec<Entry>,
    /// Index in the feed of each valid entry (for the duplicate message).
    index: Vec<u32>,
    /// Each valid entry's position in `entries`, hashed by its id: a later one with the same
    /// id is a duplicate.
    by_id: HashTable<u32>,
    hasher: foldhash::fast::RandomState,
    /// Duplicate ids, reported after every other problem (in feed order).
    dups: Vec<String>,
    /// Entries read so far.
    read: usize,
}

impl Entries {
    fn new(opts: ValidateOptions) -> Entries {
        Entries {
            opts,
            holders: Interner::default(),
            problems: Vec::new(),
            warnings: Vec::new(),
            entries: Vec::new(),
            index: Vec::new(),
            by_id: HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
            dups: Vec::new(),
            read: 0,
        }
    }

    /// Validates the next entry of the list and keeps it if valid.
    fn push(&mut self, raw: RawEntry<'_>) {
        let i = self.read;
        self.read += 1;
        let Some(entry) = validate_entry(
            i,
            raw,
            self.opts,
            &mut self.holders,
            &mut self.problems,
            &mut self.warnings,
        ) else {
            return;
        };
        let hash = self.hasher.hash_one(&*entry.id);
        let entries = &self.entries;
        if let Some(&first) = self
            .by_id
            .find(hash, |&k| *entries[k as usize].id == *entry.id)
        {
            self.dups.push(format!(
                "entries[{i}] (id {}): duplicate id, first used by entries[{}]",
                entry.id, self.index[first as usize]
            ));
            return;
        }
        let k = self.entries.len() as u32;
        self.entries.push(entry);
        self.index.push(i as u32);
        let (entries, hasher) = (&self.entries, &self.hasher);
        self.by_id
            .insert_unique(hash, k, |&j| hasher.hash_one(&*entries[j as usize].id));
    }
}

/// The `entries` list, read element by element into [`Entries`].
struct EntriesSeed<'a>(&'a mut Entries);

impl<'de> serde::de::DeserializeSeed<'de> for EntriesSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for EntriesSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of registry entries")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(raw) = seq.next_element::<RawEntry<'de>>()? {
            self.0.push(raw);
        }
        Ok(())
    }
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

/// The top level, its entries validated into the [`Entries`] it holds.
struct FeedSeed<'a>(&'a mut Entries);

impl<'de> serde::de::DeserializeSeed<'de> for FeedSeed<'_> {
    type Value = RawFeed<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<RawFeed<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FeedSeed<'_> {
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
                Key::Known(2) => {
                    // A second list is a problem and is skipped (the first one stays).
                    let fresh = !feed.entries;
                    if fresh {
                        map.next_value_seed(EntriesSeed(&mut *self.0))?;
                        feed.entries = true;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                    (fresh, "entries")
                }
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

pub(super) fn parse(
    bytes: &[u8],
    source_name: &str,
    opts: ValidateOptions,
) -> Result<(Feed, Warnings), FeedError> {
    let syntax = |e: serde_json::Error| {
        FeedError::new(
            source_name,
            format!(
                "line {}, column {}: invalid JSON feed: {e}",
                e.line(),
                e.column()
            ),
        )
    };
    let mut list = Entries::new(opts);
    let mut de = serde_json::Deserializer::from_slice(super::strip_bom(bytes));
    let raw =
        serde::de::DeserializeSeed::deserialize(FeedSeed(&mut list), &mut de).map_err(syntax)?;
    de.end().map_err(syntax)?;
    // Feed-level findings come first, then each entry's (in feed order), then duplicates.
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
    if !raw.entries {
        problems.push("missing field \"entries\" (a list)".to_string());
    }
    let Entries {
        problems: entry_problems,
        warnings: entry_warnings,
        mut entries,
        dups,
        ..
    } = list;
    problems.extend(entry_problems);
    problems.extend(dups);
    warnings.extend(entry_warnings);
    if !problems.is_empty() {
        return Err(FeedError {
            source_name: source_name.to_string(),
            problems,
        });
    }
    entries.shrink_to_fit();
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
) -> Option<Entry> {
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
    Some(Entry {
        id: id.into(),
        holder: holders.get(&f.holder),
        category: f.category,
        prefixes: prefixes.into_vec().into_iter().collect(),
        status: f.status,
        approved_at: f.approved_at,
        expires_at: f.expires_at,
    })
}
