//! Checks of a new feed against the one in force, before anything reaches the kernel.
//!
//! Each protects against a likely upstream failure that a valid-looking feed can hide:
//! - **size**: a feed over `max_feed_bytes` is refused before it is parsed;
//! - **serial going backwards**: a stale mirror or a replayed file (refused unless
//!   `allow_serial_reset`); an equal serial with different content is accepted with a warning;
//! - **shrink**: a feed that empties an allowlist that had prefixes, or removes more than
//!   `max_shrink_percent` of the prefixes in force when there were at least
//!   [`SHRINK_MIN_BASELINE`], is refused unless `force_shrink` (a truncated export or a failed
//!   database query looks exactly like a mass revocation).
//!
//! The comparison is with the allowlist in force at the same instant, so entries that expired
//! on their own do not count as removed by the new feed.

use std::collections::BTreeMap;

use super::{Allowlist, Feed, Prefix};

/// Default `--max-feed-bytes`: 256 MiB, room for a JSON feed of a million single-prefix
/// entries (about 220 bytes each).
pub const DEFAULT_MAX_FEED_BYTES: u64 = 256 << 20;
/// Default `--max-shrink-percent`.
pub const DEFAULT_MAX_SHRINK_PERCENT: u8 = 50;
/// The percentage rule applies only when at least this many prefixes were in force (removing
/// 3 of 5 prefixes is ordinary business; removing 10,000 of 20,000 is not).
pub const SHRINK_MIN_BASELINE: usize = 100;

/// The guard's flags, shared by `vpn-filter run` and `vpn-filter registry validate
/// --against-state` (`#[command(flatten)]`). Serialisable with the flag names as keys, for a
/// configuration file.
#[derive(Debug, Clone, clap::Args, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GuardArgs {
    /// Refuse feeds larger than this many bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_FEED_BYTES, value_name = "BYTES")]
    pub max_feed_bytes: u64,
    /// Accept feeds that empty the allowlist or remove more than --max-shrink-percent of it
    /// (refused by default: a likely upstream failure).
    #[arg(long)]
    pub force_shrink: bool,
    /// Largest share of the prefixes in force (when at least 100) a new feed may remove.
    #[arg(long, default_value_t = DEFAULT_MAX_SHRINK_PERCENT, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(1..=100))]
    pub max_shrink_percent: u8,
    /// Accept a feed whose serial is lower than the one in force (a registry reset).
    #[arg(long)]
    pub allow_serial_reset: bool,
}

impl GuardArgs {
    pub fn options(&self) -> GuardOptions {
        GuardOptions {
            max_feed_bytes: self.max_feed_bytes,
            max_shrink_percent: self.max_shrink_percent,
            force_shrink: self.force_shrink,
            allow_serial_reset: self.allow_serial_reset,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct GuardOptions {
    pub max_feed_bytes: u64,
    pub max_shrink_percent: u8,
    pub force_shrink: bool,
    pub allow_serial_reset: bool,
}

impl Default for GuardOptions {
    fn default() -> Self {
        GuardOptions {
            max_feed_bytes: DEFAULT_MAX_FEED_BYTES,
            max_shrink_percent: DEFAULT_MAX_SHRINK_PERCENT,
            force_shrink: false,
            allow_serial_reset: false,
        }
    }
}

/// Why a valid feed is not applied.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the feed is {size} bytes, over the limit of {limit} (--max-feed-bytes)")]
    TooLarge { size: u64, limit: u64 },
    #[error("serial {new} is older than serial {last} in force: a registry's serial never goes backwards (a stale mirror or a replayed file?); --allow-serial-reset accepts it")]
    SerialBackwards { new: u64, last: u64 },
    #[error("the feed allows no prefix at all where {last} were in force: likely an upstream failure (empty export, failed query); --force-shrink applies it")]
    Emptied { last: usize },
    #[error("the feed removes {removed} of the {last} prefixes in force ({percent}%, over the {limit}% limit of --max-shrink-percent): likely an upstream failure (truncated export?); --force-shrink applies it")]
    Shrink {
        removed: usize,
        last: usize,
        percent: usize,
        limit: u8,
    },
}

/// Refuses a feed over the size limit (before reading or parsing it further).
pub fn check_size(size: u64, opts: &GuardOptions) -> Result<(), Refusal> {
    if size > opts.max_feed_bytes {
        return Err(Refusal::TooLarge {
            size,
            limit: opts.max_feed_bytes,
        });
    }
    Ok(())
}

/// The feed in force, to compare a new one with.
#[derive(Clone, Copy, Debug)]
pub struct Baseline<'a> {
    pub serial: Option<u64>,
    /// Its allowlist at the instant the new feed would be applied.
    pub allowlist: &'a Allowlist,
}

/// Checks `new` (whose allowlist at the same instant is `new_allow`) against the feed in force.
/// Returns warnings when it may be applied.
pub fn check_transition(
    last: Option<Baseline<'_>>,
    new: &Feed,
    new_allow: &Allowlist,
    opts: &GuardOptions,
) -> Result<Vec<String>, Refusal> {
    check_sets(
        last.map(|l| (l.serial, &l.allowlist.prefixes)),
        new.serial,
        &new_allow.prefixes,
        opts,
    )
}

/// The guard for any feed that puts a set of prefixes in the kernel (the allowlist, the
/// endpoint lists): `last` is the serial and set in force, `new_serial` and `new` the
/// candidate's. Returns warnings when it may be applied.
pub fn check_sets<V, W>(
    last: Option<(Option<u64>, &BTreeMap<Prefix, V>)>,
    new_serial: Option<u64>,
    new: &BTreeMap<Prefix, W>,
    opts: &GuardOptions,
) -> Result<Vec<String>, Refusal> {
    let mut warnings = Vec::new();
    let Some((last_serial, last_set)) = last else {
        return Ok(warnings);
    };
    match (last_serial, new_serial) {
        (Some(l), Some(n)) if n < l => {
            if opts.allow_serial_reset {
                warnings.push(format!(
                    "serial {n} is older than serial {l} in force; accepted (--allow-serial-reset)"
                ));
            } else {
                return Err(Refusal::SerialBackwards { new: n, last: l });
            }
        }
        (Some(l), Some(n)) if n == l => warnings.push(format!(
            "serial {n} is unchanged but the content differs: publishers should raise the serial with every change"
        )),
        (Some(l), None) => warnings.push(format!(
            "the new feed has no serial (a CSV export); the serial check against serial {l} does not apply"
        )),
        _ => {}
    }
    let last_count = last_set.len();
    if last_count == 0 {
        return Ok(warnings);
    }
    let removed = removed_keys(last_set, new);
    let shrink = if new.is_empty() {
        Some(Refusal::Emptied { last: last_count })
    } else {
        let percent = removed * 100 / last_count;
        (last_count >= SHRINK_MIN_BASELINE
            && removed * 100 > last_count * usize::from(opts.max_shrink_percent))
        .then_some(Refusal::Shrink {
            removed,
            last: last_count,
            percent,
            limit: opts.max_shrink_percent,
        })
    };
    match shrink {
        Some(refusal) if opts.force_shrink => {
            warnings.push(format!("{refusal}; applied anyway (--force-shrink)"))
        }
        Some(refusal) => return Err(refusal),
        None => {}
    }
    Ok(warnings)
}

/// How many prefixes of `last` are not in `new`.
pub fn removed_count(last: &Allowlist, new: &Allowlist) -> usize {
    removed_keys(&last.prefixes, &new.prefixes)
}

/// How many keys of `last` are not in `new`.
pub fn removed_keys<V, W>(last: &BTreeMap<Prefix, V>, new: &BTreeMap<Prefix, W>) -> usize {
    // Both maps iterate in key order: one merge pass, no lookups.
    let mut removed = 0;
    let mut new_keys = new.keys().peekable();
    for k in last.keys() {
        while new_keys.next_if(|n| *n < k).is_some() {}
        if new_keys.next_if(|n| *n == k).is_none() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::registry::{Category, Entry, FeedFormat, Prefix, Status};

    fn feed(serial: Option<u64>, hosts: std::ops::Range<u32>) -> Feed {
        let prefixes = hosts
            .map(|h| Prefix::V4 {
                addr: (0x0a00_0000 + h).to_be_bytes(),
                len: 32,
            })
            .collect::<Vec<_>>();
        let entries = if prefixes.is_empty() {
            Vec::new()
        } else {
            vec![Entry {
                id: "E".into(),
                holder: "h".into(),
                category: Category::Company,
                prefixes: prefixes.into(),
                status: Status::Approved,
                approved_at: datetime!(2020-01-01 0:00 UTC),
                expires_at: None,
            }]
        };
        Feed {
            format: FeedFormat::Json,
            serial,
            generated_at: None,
            entries,
        }
    }

    fn check(last: &Feed, new: &Feed, opts: GuardOptions) -> Result<Vec<String>, Refusal> {
        let now = datetime!(2026-01-01 0:00 UTC);
        let last_allow = last.allowlist(now);
        check_transition(
            Some(Baseline {
                serial: last.serial,
                allowlist: &last_allow,
            }),
            new,
            &new.allowlist(now),
            &opts,
        )
    }

    #[test]
    fn a_serial_going_backwards_is_refused() {
        let err = check(
            &feed(Some(42), 0..10),
            &feed(Some(41), 0..10),
            Default::default(),
        );
        assert_eq!(err, Err(Refusal::SerialBackwards { new: 41, last: 42 }));
        assert!(err
            .unwrap_err()
            .to_string()
            .contains("never goes backwards"));
    }

    #[test]
    fn a_serial_reset_is_accepted_when_explicitly_allowed() {
        let opts = GuardOptions {
            allow_serial_reset: true,
            ..Default::default()
        };
        let w = check(&feed(Some(42), 0..10), &feed(Some(1), 0..10), opts).unwrap();
        assert!(w[0].contains("--allow-serial-reset"), "{w:?}");
    }

    #[test]
    fn an_equal_serial_with_other_content_is_a_warning() {
        let w = check(
            &feed(Some(5), 0..10),
            &feed(Some(5), 0..11),
            Default::default(),
        )
        .unwrap();
        assert!(w[0].contains("unchanged"), "{w:?}");
    }

    #[test]
    fn an_empty_feed_replacing_a_populated_one_is_refused() {
        let err = check(
            &feed(Some(1), 0..20_000),
            &feed(Some(2), 0..0),
            Default::default(),
        );
        assert_eq!(err, Err(Refusal::Emptied { last: 20_000 }));
    }

    #[test]
    fn an_empty_feed_is_applied_with_force_shrink() {
        let opts = GuardOptions {
            force_shrink: true,
            ..Default::default()
        };
        let w = check(&feed(Some(1), 0..20_000), &feed(Some(2), 0..0), opts).unwrap();
        assert!(w[0].contains("--force-shrink"), "{w:?}");
    }

    #[test]
    fn removing_more_than_half_of_many_prefixes_is_refused() {
        let err = check(
            &feed(Some(1), 0..1000),
            &feed(Some(2), 0..499),
            Default::default(),
        )
        .unwrap_err();
        assert_eq!(
            err,
            Refusal::Shrink {
                removed: 501,
                last: 1000,
                percent: 50,
                limit: 50
            }
        );
    }

    #[test]
    fn removing_half_of_many_prefixes_is_accepted() {
        check(
            &feed(Some(1), 0..1000),
            &feed(Some(2), 0..500),
            Default::default(),
        )
        .unwrap();
    }

    #[test]
    fn replacing_every_prefix_counts_as_removing_them_all() {
        let err = check(
            &feed(Some(1), 0..200),
            &feed(Some(2), 1000..1200),
            Default::default(),
        );
        assert!(
            matches!(err, Err(Refusal::Shrink { removed: 200, .. })),
            "{err:?}"
        );
    }

    #[test]
    fn small_allowlists_may_lose_most_prefixes_but_not_all() {
        check(
            &feed(Some(1), 0..5),
            &feed(Some(2), 0..1),
            Default::default(),
        )
        .unwrap();
        assert!(check(
            &feed(Some(1), 0..5),
            &feed(Some(2), 0..0),
            Default::default()
        )
        .is_err());
    }

    #[test]
    fn size_over_the_limit_is_refused() {
        let opts = GuardOptions {
            max_feed_bytes: 100,
            ..Default::default()
        };
        assert!(check_size(100, &opts).is_ok());
        assert_eq!(
            check_size(101, &opts),
            Err(Refusal::TooLarge {
                size: 101,
                limit: 100
            })
        );
    }

    #[test]
    fn the_first_feed_has_nothing_to_be_checked_against() {
        let f = feed(Some(1), 0..0);
        let now = datetime!(2026-01-01 0:00 UTC);
        assert!(check_transition(None, &f, &f.allowlist(now), &Default::default()).is_ok());
    }
}
