//! The CSV export: header `id,holder,category,prefix,status,approved_at,expires_at`, one row
//! per prefix. Rows with the same id are one entry: they must agree on every column but
//! `prefix`. An empty `expires_at` means no expiry. Columns are found by header name (any
//! order); extra columns are ignored with a warning. Every problem names its line and column.

use std::{
    collections::{HashMap, HashSet},
    hash::BuildHasher as _,
    sync::Arc,
};

use hashbrown::HashTable;

use super::{
    check_fields, check_prefix, Entry, Feed, FeedError, FeedFormat, Interner, Prefix, RawFields,
    ValidateOptions, Warnings, CSV_HEADER, PREFIXES_LINEAR,
};

/// The columns, in the documented order.
const COLUMNS: [&str; 7] = [
    "id",
    "holder",
    "category",
    "prefix",
    "status",
    "approved_at",
    "expires_at",
];

/// What is kept of an entry's first row to check its later rows against: a hash of the
/// columns that must agree (not their text: six strings per entry cost more than the entry
/// itself at a million), and where the row starts, to re-read its text when a later row
/// disagrees and the message has to quote it.
struct FirstRow {
    line: u64,
    byte: u64,
    hash: u64,
}

/// The trimmed text of the agreeing columns of the row starting at `byte` of `body` (a row
/// read before, so valid UTF-8 with every column).
fn reread_row(body: &[u8], byte: u64, index: &[usize; 7]) -> [String; 6] {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .buffer_capacity(1024)
        .from_reader(&body[byte as usize..]);
    let mut record = csv::ByteRecord::new();
    let _ = reader.read_byte_record(&mut record);
    let col = |k: usize| {
        record
            .get(index[k])
            .map(|b| String::from_utf8_lossy(b).trim().to_string())
            .unwrap_or_default()
    };
    [col(0), col(1), col(2), col(4), col(5), col(6)]
}

/// The column of each documented column (in [`COLUMNS`] order) in the header row; a
/// repeated or missing column is a problem, an unknown one a warning.
fn column_index(
    header: &csv::ByteRecord,
    problems: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> [usize; 7] {
    // Column index of each documented column.
    let mut index = [usize::MAX; 7];
    for (col, name) in header.iter().enumerate() {
        let name = String::from_utf8_lossy(name);
        let name = name.trim();
        match COLUMNS.iter().position(|c| c.eq_ignore_ascii_case(name)) {
            Some(k) if index[k] != usize::MAX => problems.push(format!(
                "line 1, column {}: column \"{name}\" appears twice (first at column {})",
                col + 1,
                index[k] + 1
            )),
            Some(k) => index[k] = col,
            None => warnings.push(format!(
                "line 1, column {}: unknown column \"{name}\" ignored",
                col + 1
            )),
        }
    }
    let missing: Vec<&str> = COLUMNS
        .iter()
        .zip(index)
        .filter(|(_, i)| *i == usize::MAX)
        .map(|(c, _)| *c)
        .collect();
    if !missing.is_empty() {
        problems.push(format!(
            "line 1: the header lacks column(s) {} (expected \"{CSV_HEADER}\")",
            missing.join(", ")
        ));
    }
    index
}

/// The id of entry `i`: held by the entry, or by `invalid_ids` when its fields are invalid.
fn id_of<'a>(
    entries: &'a [Option<Entry>],
    invalid_ids: &'a HashMap<u32, Arc<str>>,
    i: u32,
) -> &'a str {
    match &entries[i as usize] {
        Some(e) => &e.id,
        None => &invalid_ids[&i],
    }
}

pub(super) fn parse(
    bytes: &[u8],
    source_name: &str,
    opts: ValidateOptions,
) -> Result<(Feed, Warnings), FeedError> {
    let fail = |problems: Vec<String>| FeedError {
        source_name: source_name.to_string(),
        problems,
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(super::strip_bom(bytes));
    let header = reader
        .byte_headers()
        .map_err(|e| fail(vec![format!("line 1: unreadable CSV header: {e}")]))?
        .clone();
    let mut warnings = Vec::new();
    let mut problems = Vec::new();
    let index = column_index(&header, &mut problems, &mut warnings);
    if !problems.is_empty() {
        return Err(fail(problems));
    }

    // Every row but the header may start an entry: the tables below are sized once for that
    // many (a rehash of a million-id index would hold the old and the new table at once;
    // vector pages an export of multi-row entries never touches cost no memory).
    let rows = bytes.iter().filter(|&&b| b == b'\n').count() + 1;
    // Entries in the order of their first row (`None` while an entry's fields are invalid:
    // then the feed is refused anyway, and the id is kept in `invalid_ids`), found by id
    // through `by_id`: the index of each id's entry, hashed by the id.
    let mut entries: Vec<Option<Entry>> = Vec::with_capacity(rows);
    let mut first_rows: Vec<FirstRow> = Vec::with_capacity(rows);
    let mut invalid_ids: HashMap<u32, Arc<str>> = HashMap::new();
    let hasher = foldhash::fast::RandomState::default();
    let mut by_id: HashTable<u32> = HashTable::with_capacity(rows);
    // Repeat checks for entries with many prefixes (a linear search while few).
    let mut prefix_sets: HashMap<usize, HashSet<Prefix>> = HashMap::new();
    let mut holders = Interner::default();
    let body = super::strip_bom(bytes);
    let mut record = csv::ByteRecord::new();
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                let what = match e.kind() {
                    csv::ErrorKind::UnequalLengths {
                        expected_len, len, ..
                    } => format!("{len} field(s), the header has {expected_len}"),
                    _ => e.to_string(),
                };
                problems.push(format!("line {line}: {what}"));
                continue;
            }
        }
        let (line, byte) = record.position().map_or((0, 0), |p| (p.line(), p.byte()));
        let mut text: [&str; 7] = [""; 7];
        let mut bad = false;
        for (k, col) in index.iter().enumerate() {
            match std::str::from_utf8(&record[*col]) {
                Ok(s) => text[k] = s.trim(),
                Err(_) => {
                    problems.push(format!(
                        "line {line}, column {} ({}): not valid UTF-8",
                        col + 1,
                        COLUMNS[k]
                    ));
                    bad = true;
                }
            }
        }
        if bad {
            continue;
        }
        let [id, holder, category, prefix, status, approved_at, expires_at] = text;
        if id.is_empty() {
            problems.push(format!("line {line}, column {} (id): empty", index[0] + 1));
            continue;
        }
        let at = |k: usize| {
            format!(
                "line {line}, column {} ({}), id {id}",
                index[k] + 1,
                COLUMNS[k]
            )
        };
        let prefix = match check_prefix(prefix, opts) {
            Ok(p) => Some(p),
            Err(e) => {
                problems.push(format!("{}: \"{prefix}\": {e}", at(3)));
                None
            }
        };
        let others = [id, holder, category, status, approved_at, expires_at];
        // The columns that must agree (all but `id` and `prefix`).
        let hash = hasher.hash_one(&others[1..]);
        let id_hash = hasher.hash_one(id);
        let known = by_id
            .find(id_hash, |&i| id_of(&entries, &invalid_ids, i) == id)
            .map(|&i| i as usize);
        match known {
            Some(i) => {
                // A further row of a known id: every column but the prefix must agree.
                let first = &first_rows[i];
                if first.hash != hash {
                    let first_text = reread_row(body, first.byte, &index);
                    for (n, k) in [(1, 1), (2, 2), (3, 4), (4, 5), (5, 6)] {
                        if first_text[n] != others[n] {
                            problems.push(format!(
                                "{}: \"{}\" differs from line {} (\"{}\"); all rows of one id must agree except the prefix",
                                at(k),
                                others[n],
                                first.line,
                                first_text[n]
                            ));
                        }
                    }
                }
                if let (Some(p), Some(e)) = (prefix, &mut entries[i]) {
                    let list = &mut e.prefixes;
                    let fresh = if list.len() < PREFIXES_LINEAR {
                        !list.contains(&p)
                    } else {
                        prefix_sets
                            .entry(i)
                            .or_insert_with(|| list.iter().copied().collect())
                            .insert(p)
                    };
                    if fresh {
                        list.push(p);
                    } else {
                        warnings.push(format!("{}: \"{p}\" listed twice", at(3)));
                    }
                }
            }
            None => {
                let raw = RawFields {
                    holder: Some(holder),
                    category: Some(category),
                    status: Some(status),
                    approved_at: Some(approved_at),
                    expires_at: (!expires_at.is_empty()).then_some(expires_at),
                };
                let field_at = |field: &str| {
                    let k = COLUMNS.iter().position(|c| *c == field).unwrap_or(0);
                    at(k)
                };
                let Ok(i) = u32::try_from(entries.len()) else {
                    problems.push(format!("line {line}: more than {} entries", u32::MAX));
                    break;
                };
                let id: Arc<str> = id.into();
                // The id moves into its entry, or aside when the fields are invalid (no
                // clone: a reference count changed twice per entry showed in the profile).
                let entry = match check_fields(&raw, &field_at, &mut problems) {
                    Some(f) => Some(Entry {
                        id,
                        holder: holders.get(&f.holder),
                        category: f.category,
                        prefixes: prefix.into_iter().collect(),
                        status: f.status,
                        approved_at: f.approved_at,
                        expires_at: f.expires_at,
                    }),
                    None => {
                        invalid_ids.insert(i, id);
                        None
                    }
                };
                entries.push(entry);
                by_id.insert_unique(id_hash, i, |&j| {
                    hasher.hash_one(id_of(&entries, &invalid_ids, j))
                });
                first_rows.push(FirstRow { line, byte, hash });
            }
        }
    }
    drop((by_id, first_rows, prefix_sets, holders, invalid_ids));
    if !problems.is_empty() {
        return Err(fail(problems));
    }
    let entries: Vec<Entry> = entries
        .into_iter()
        .map(|e| {
            let mut e = e.expect("an entry with invalid fields is a problem, checked above");
            if e.prefixes.capacity() > e.prefixes.len() {
                e.prefixes.shrink_to_fit();
            }
            e
        })
        .collect();
    let mut entries = entries;
    entries.shrink_to_fit();
    Ok((
        Feed {
            format: FeedFormat::Csv,
            serial: None,
            generated_at: None,
            entries,
        },
        warnings,
    ))
}
