//! The canonical JSON feed that `vpn-filter registry publish` writes, and the difference
//! between two feeds that it prints.
//!
//! Canonical means: entries sorted by id, each entry's prefixes sorted and without
//! duplicates, times in UTC (`Z`), `expires_at` always present (`null` for no expiry), one
//! entry per line. The same registry content therefore always gives the same bytes (apart from
//! `serial` and `generated_at`), and two publications differ line by line only where entries
//! changed.

use std::collections::BTreeMap;

use time::OffsetDateTime;

use super::{rfc3339, Entry, Feed, Prefix};

/// The serial of a new publication: above every serial published before (`previous`), and
/// at least the input's own serial when it has one.
pub fn next_serial(previous: Option<u64>, input: Option<u64>) -> Result<u64, String> {
    let above = match previous {
        Some(p) => p
            .checked_add(1)
            .ok_or_else(|| format!("the previous serial {p} is the largest possible"))?,
        None => 1,
    };
    Ok(above.max(input.unwrap_or(0)))
}

fn utc(t: OffsetDateTime) -> String {
    rfc3339(t.to_offset(time::UtcOffset::UTC))
}

fn sorted_prefixes(e: &Entry) -> Vec<Prefix> {
    let mut p = e.prefixes.to_vec();
    p.sort();
    p.dedup();
    p
}

/// The canonical feed's bytes: one entry per line, its fields in the documented order,
/// strings escaped as serde_json escapes them.
pub fn to_json(serial: u64, generated_at: OffsetDateTime, entries: &[Entry]) -> Vec<u8> {
    let mut sorted: Vec<&Entry> = entries.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    // About 180 bytes a one-prefix entry: written once into a buffer of that size, not
    // through a value tree per entry and a doubling string (at a million entries that took
    // seconds and most of `registry publish`'s memory).
    let mut out: Vec<u8> = Vec::with_capacity(64 + entries.len() * 192);
    let string = |out: &mut Vec<u8>, s: &str| {
        serde_json::to_writer(&mut *out, s).expect("writing a string into a Vec cannot fail");
    };
    out.extend_from_slice(format!("{{\"serial\":{serial},\"generated_at\":").as_bytes());
    string(&mut out, &utc(generated_at));
    out.extend_from_slice(b",\"entries\":[");
    for (i, e) in sorted.iter().enumerate() {
        out.extend_from_slice(if i == 0 { b"\n" } else { b",\n" });
        out.extend_from_slice(b"{\"id\":");
        string(&mut out, &e.id);
        out.extend_from_slice(b",\"holder\":");
        string(&mut out, &e.holder);
        out.extend_from_slice(b",\"category\":");
        string(&mut out, e.category.name());
        out.extend_from_slice(b",\"prefixes\":[");
        for (j, p) in sorted_prefixes(e).iter().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            string(&mut out, &p.to_string());
        }
        out.extend_from_slice(b"],\"status\":");
        string(&mut out, e.status.name());
        out.extend_from_slice(b",\"approved_at\":");
        string(&mut out, &utc(e.approved_at));
        out.extend_from_slice(b",\"expires_at\":");
        match e.expires_at {
            Some(t) => string(&mut out, &utc(t)),
            None => out.extend_from_slice(b"null"),
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"\n]}\n");
    out
}

/// What changed in one entry.
#[derive(Debug, PartialEq, Eq)]
pub struct Changed<'a> {
    pub id: &'a str,
    /// One item per changed field: `status approved -> revoked`, `prefixes +a -b`.
    pub fields: Vec<String>,
}

/// The difference between the previous publication and a new one, by entry id.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FeedDiff<'a> {
    pub added: Vec<&'a Entry>,
    pub removed: Vec<&'a Entry>,
    pub changed: Vec<Changed<'a>>,
    pub unchanged: usize,
}

impl FeedDiff<'_> {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    /// `N added, N removed, N changed, N unchanged`.
    pub fn summary(&self) -> String {
        format!(
            "{} added, {} removed, {} changed, {} unchanged",
            self.added.len(),
            self.removed.len(),
            self.changed.len(),
            self.unchanged
        )
    }

    /// One line per added, removed or changed entry (`+`, `-`, `~`).
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        for e in &self.added {
            out.push(format!("+ {}", describe(e)));
        }
        for e in &self.removed {
            out.push(format!("- {}", describe(e)));
        }
        for c in &self.changed {
            out.push(format!("~ {}: {}", c.id, c.fields.join("; ")));
        }
        out
    }
}

fn describe(e: &Entry) -> String {
    let prefixes: Vec<String> = sorted_prefixes(e).iter().map(Prefix::to_string).collect();
    format!(
        "{} \"{}\" ({}, {}) {}",
        e.id,
        e.holder,
        e.category.name(),
        e.status.name(),
        prefixes.join(" ")
    )
}

/// Compares two feeds entry by entry (matched by id).
pub fn diff<'a>(old: &'a Feed, new: &'a Feed) -> FeedDiff<'a> {
    let old_by_id: BTreeMap<&str, &Entry> = old.entries.iter().map(|e| (&*e.id, e)).collect();
    let new_by_id: BTreeMap<&str, &Entry> = new.entries.iter().map(|e| (&*e.id, e)).collect();
    let mut d = FeedDiff::default();
    for (id, n) in &new_by_id {
        let Some(o) = old_by_id.get(id) else {
            d.added.push(n);
            continue;
        };
        let fields = changed_fields(o, n);
        if fields.is_empty() {
            d.unchanged += 1;
        } else {
            d.changed.push(Changed { id, fields });
        }
    }
    for (id, o) in &old_by_id {
        if !new_by_id.contains_key(id) {
            d.removed.push(o);
        }
    }
    d
}

fn changed_fields(o: &Entry, n: &Entry) -> Vec<String> {
    let mut f = Vec::new();
    if o.holder != n.holder {
        f.push(format!("holder \"{}\" -> \"{}\"", o.holder, n.holder));
    }
    if o.category != n.category {
        f.push(format!(
            "category {} -> {}",
            o.category.name(),
            n.category.name()
        ));
    }
    if o.status != n.status {
        f.push(format!("status {} -> {}", o.status.name(), n.status.name()));
    }
    if o.approved_at != n.approved_at {
        f.push(format!(
            "approved_at {} -> {}",
            utc(o.approved_at),
            utc(n.approved_at)
        ));
    }
    if o.expires_at != n.expires_at {
        let show = |t: Option<OffsetDateTime>| t.map_or("none".to_string(), utc);
        f.push(format!(
            "expires_at {} -> {}",
            show(o.expires_at),
            show(n.expires_at)
        ));
    }
    let (op, np) = (sorted_prefixes(o), sorted_prefixes(n));
    if op != np {
        let mut parts = Vec::new();
        parts.extend(
            np.iter()
                .filter(|p| op.binary_search(p).is_err())
                .map(|p| format!("+{p}")),
        );
        parts.extend(
            op.iter()
                .filter(|p| np.binary_search(p).is_err())
                .map(|p| format!("-{p}")),
        );
        f.push(format!("prefixes {}", parts.join(" ")));
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{FormatChoice, ValidateOptions};

    fn feed(text: &str) -> Feed {
        Feed::parse(
            text.as_bytes(),
            "t",
            FormatChoice::Auto,
            ValidateOptions::default(),
        )
        .unwrap()
        .0
    }

    const CSV: &str = "id,holder,category,prefix,status,approved_at,expires_at\n\
        REG-2,\"Bilal, Khan\",freelancer,198.51.100.7,approved,2026-11-21T14:30:00+05:00,\n\
        REG-1,Acme,software_house,2001:db8:10::/48,approved,2026-11-20T08:00:00Z,2027-11-20T08:00:00Z\n\
        REG-1,Acme,software_house,203.0.113.0/28,approved,2026-11-20T08:00:00Z,2027-11-20T08:00:00Z\n";

    #[test]
    fn a_csv_export_becomes_a_sorted_utc_json_feed_that_parses_to_the_same_entries() {
        let input = feed(CSV);
        let t = time::macros::datetime!(2026-12-05 21:00 UTC);
        let bytes = to_json(7, t, &input.entries);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert_eq!(
            text,
            "{\"serial\":7,\"generated_at\":\"2026-12-05T21:00:00Z\",\"entries\":[\n\
             {\"id\":\"REG-1\",\"holder\":\"Acme\",\"category\":\"software_house\",\"prefixes\":[\"203.0.113.0/28\",\"2001:db8:10::/48\"],\"status\":\"approved\",\"approved_at\":\"2026-11-20T08:00:00Z\",\"expires_at\":\"2027-11-20T08:00:00Z\"},\n\
             {\"id\":\"REG-2\",\"holder\":\"Bilal, Khan\",\"category\":\"freelancer\",\"prefixes\":[\"198.51.100.7/32\"],\"status\":\"approved\",\"approved_at\":\"2026-11-21T09:30:00Z\",\"expires_at\":null}\n\
             ]}\n"
        );
        let back = feed(&text);
        assert_eq!(back.serial, Some(7));
        assert!(diff(&input, &back).is_empty());
        // Canonical: the same content gives the same bytes.
        assert_eq!(to_json(7, t, &back.entries), bytes);
    }

    #[test]
    fn an_empty_feed_is_canonical_too() {
        let t = time::macros::datetime!(2026-12-05 21:00 UTC);
        let text = String::from_utf8(to_json(1, t, &[])).unwrap();
        assert_eq!(feed(&text).entries.len(), 0, "{text}");
    }

    #[test]
    fn the_diff_names_added_removed_and_changed_entries_and_what_changed() {
        let old = feed(CSV);
        let new = feed(
            "id,holder,category,prefix,status,approved_at,expires_at\n\
             REG-1,Acme,software_house,203.0.113.0/28,revoked,2026-11-20T08:00:00Z,2027-11-20T08:00:00Z\n\
             REG-1,Acme,software_house,203.0.113.16/28,revoked,2026-11-20T08:00:00Z,2027-11-20T08:00:00Z\n\
             REG-3,Bank,bank,192.0.2.0/24,approved,2026-11-20T08:00:00Z,\n",
        );
        let d = diff(&old, &new);
        assert_eq!(d.summary(), "1 added, 1 removed, 1 changed, 0 unchanged");
        let lines = d.lines();
        assert_eq!(
            lines,
            vec![
                "+ REG-3 \"Bank\" (bank, approved) 192.0.2.0/24".to_string(),
                "- REG-2 \"Bilal, Khan\" (freelancer, approved) 198.51.100.7/32".to_string(),
                "~ REG-1: status approved -> revoked; prefixes +203.0.113.16/28 -2001:db8:10::/48"
                    .to_string(),
            ]
        );
    }

    #[test]
    fn the_serial_rises_above_the_previous_publication_and_honours_a_higher_input_serial() {
        assert_eq!(next_serial(None, None), Ok(1));
        assert_eq!(next_serial(Some(41), None), Ok(42));
        assert_eq!(next_serial(Some(41), Some(7)), Ok(42));
        assert_eq!(next_serial(Some(41), Some(100)), Ok(100));
        assert_eq!(next_serial(None, Some(0)), Ok(1));
        assert!(next_serial(Some(u64::MAX), None)
            .unwrap_err()
            .contains("largest"));
    }
}
