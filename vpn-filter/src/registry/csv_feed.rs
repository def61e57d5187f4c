//! The CSV export: header `id,holder,category,prefix,status,approved_at,expires_at`, one row
//! per prefix. Rows with the same id are one entry: they must agree on every column but
//! `prefix`. An empty `expires_at` means no expiry. Columns are found by header name (any
//! order); extra columns are ignored with a warning. Every problem names its line and column.

use std::{collections::HashMap, sync::Arc};

use super::{
    check_fields, check_prefix, Entry, Feed, FeedError, FeedFormat, Fields, PrefixSet, RawFields,
    ValidateOptions, Warnings, CSV_HEADER,
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

/// One entry being assembled from its rows.
struct Building {
    first_line: u64,
    /// The row's text of every column but `prefix` (to compare later rows with).
    text: [String; 6],
    fields: Option<Fields>,
    prefixes: PrefixSet,
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

    let mut order: Vec<Arc<str>> = Vec::new();
    let mut building: HashMap<Arc<str>, Building> = HashMap::new();
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
        let line = record.position().map_or(0, |p| p.line());
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
        match building.get_mut(id) {
            Some(b) => {
                // A further row of a known id: every column but the prefix must agree.
                for (n, k) in [(1, 1), (2, 2), (3, 4), (4, 5), (5, 6)] {
                    if b.text[n] != others[n] {
                        problems.push(format!(
                            "{}: \"{}\" differs from line {} (\"{}\"); all rows of one id must agree except the prefix",
                            at(k),
                            others[n],
                            b.first_line,
                            b.text[n]
                        ));
                    }
                }
                if let Some(p) = prefix {
                    if !b.prefixes.insert(p) {
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
                let fields = check_fields(&raw, &field_at, &mut problems);
                let mut b = Building {
                    first_line: line,
                    text: others.map(str::to_string),
                    fields,
                    prefixes: PrefixSet::default(),
                };
                if let Some(p) = prefix {
                    b.prefixes.insert(p);
                }
                let id: Arc<str> = id.into();
                order.push(id.clone());
                building.insert(id, b);
            }
        }
    }
    if !problems.is_empty() {
        return Err(fail(problems));
    }
    let mut entries = Vec::with_capacity(order.len());
    for id in order {
        let b = building
            .remove(&id)
            .expect("every id in order was inserted");
        let f = b
            .fields
            .expect("a row with invalid fields is a problem, checked above");
        entries.push(Entry {
            id,
            holder: f.holder,
            category: f.category,
            prefixes: b.prefixes.into_vec(),
            status: f.status,
            approved_at: f.approved_at,
            expires_at: f.expires_at,
        });
    }
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
