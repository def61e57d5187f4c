//! The VPN domain list of the `tls_sni` rule (`--vpn-domains FILE`): parsing, validation and
//! the reload loop.
//!
//! One domain per line, `#` comments. Every problem is refused with its line number and what
//! is wrong; a refused list never replaces the one in force. Without `--vpn-domains` the list
//! shipped in `packaging/vpn-domains.txt` (built into the binary) is used. The kernel looks
//! names up by [`vpn_filter_common::domain_hash`] of each dot-suffix, so the map holds one
//! hash per listed domain.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::{Context as _, Result};
use vpn_filter_common::{domain_hash, SNI_DOMAIN_ENTRIES, SNI_MAX_NAME};

/// The list shipped with the program (`packaging/vpn-domains.txt`).
pub const BUILTIN: &str = include_str!("../../packaging/vpn-domains.txt");

/// Where the built-in list is said to come from (status, logs).
pub const BUILTIN_SOURCE: &str = "built-in (packaging/vpn-domains.txt)";

/// A valid domain list: each domain with the line it is on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DomainList {
    pub domains: BTreeMap<String, usize>,
}

/// A list refused: every problem, located.
#[derive(Debug, thiserror::Error)]
#[error("{name}: {} problem(s):\n  {}", problems.len(), problems.join("\n  "))]
pub struct ListError {
    pub name: String,
    pub problems: Vec<String>,
}

impl DomainList {
    /// Parses `text` (named `name` in errors).
    pub fn parse(text: &str, name: &str) -> Result<DomainList, ListError> {
        let mut domains = BTreeMap::new();
        let mut problems = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let entry = raw.split('#').next().unwrap_or("").trim();
            if entry.is_empty() {
                continue;
            }
            if let Err(why) = check_domain(entry) {
                problems.push(format!("line {line}: `{entry}`: {why}"));
                continue;
            }
            if let Some(first) = domains.insert(entry.to_string(), line) {
                problems.push(format!(
                    "line {line}: `{entry}` is listed already on line {first}"
                ));
                domains.insert(entry.to_string(), first);
            }
        }
        if domains.len() > SNI_DOMAIN_ENTRIES as usize {
            problems.push(format!(
                "{} domains: at most {SNI_DOMAIN_ENTRIES} fit the kernel's map",
                domains.len()
            ));
        }
        if !problems.is_empty() {
            return Err(ListError {
                name: name.to_string(),
                problems,
            });
        }
        Ok(DomainList { domains })
    }

    /// The built-in list.
    pub fn builtin() -> DomainList {
        DomainList::parse(BUILTIN, BUILTIN_SOURCE).expect("the shipped list is valid (tested)")
    }

    /// The kernel's keys: one hash per domain.
    pub fn hashes(&self) -> Vec<u64> {
        self.domains
            .keys()
            .map(|d| domain_hash(d.as_bytes()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.domains.len()
    }

    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }
}

/// Why `d` is no listable domain (`Ok` when it is one).
fn check_domain(d: &str) -> Result<(), String> {
    if d.contains(char::is_whitespace) {
        return Err("one domain per line (found whitespace inside)".into());
    }
    if d.len() > SNI_MAX_NAME {
        return Err(format!(
            "{} bytes: the kernel reads server names up to {SNI_MAX_NAME}",
            d.len()
        ));
    }
    if let Some(rest) = d.strip_prefix("*.") {
        return Err(format!(
            "no wildcards: write `{rest}`, which matches its subdomains too"
        ));
    }
    if d.contains("://") || d.contains('/') || d.contains(':') {
        return Err("a domain name, not a URL or host:port".into());
    }
    if d.ends_with('.') || d.starts_with('.') {
        return Err("no leading or trailing dot".into());
    }
    if d.chars().any(|c| c.is_ascii_uppercase()) {
        return Err("lower case only (names are matched case-insensitively)".into());
    }
    let labels: Vec<&str> = d.split('.').collect();
    if labels.len() < 2 {
        return Err(
            "at least two labels: a top-level domain alone would match every name under it".into(),
        );
    }
    for label in &labels {
        if label.is_empty() {
            return Err("empty label (`..`)".into());
        }
        if label.len() > 63 {
            return Err(format!("label `{label}` is longer than 63 bytes"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "label `{label}`: only a-z, 0-9, `-` and `_` (write IDNs in their xn-- form)"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label `{label}` starts or ends with `-`"));
        }
    }
    if labels
        .last()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("an IP address, not a domain (IP lists are --endpoints)".into());
    }
    Ok(())
}

/// Where the list comes from: the file given with `--vpn-domains`, or the built-in one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DomainSource {
    Builtin,
    File(PathBuf),
}

impl DomainSource {
    pub fn new(path: Option<&Path>) -> DomainSource {
        match path {
            Some(p) => DomainSource::File(p.to_path_buf()),
            None => DomainSource::Builtin,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            DomainSource::Builtin => BUILTIN_SOURCE.to_string(),
            DomainSource::File(p) => p.display().to_string(),
        }
    }

    /// Reads and validates the list.
    pub fn load(&self) -> Result<DomainList> {
        match self {
            DomainSource::Builtin => Ok(DomainList::builtin()),
            DomainSource::File(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading the VPN domain list {}", p.display()))?;
                Ok(DomainList::parse(&text, &p.display().to_string())?)
            }
        }
    }

    /// What identifies the file's current version (modification time and length): a reload
    /// happens only when it changed.
    fn stamp(&self) -> Option<(SystemTime, u64)> {
        match self {
            DomainSource::Builtin => None,
            DomainSource::File(p) => {
                let m = std::fs::metadata(p).ok()?;
                Some((m.modified().ok()?, m.len()))
            }
        }
    }
}

/// The list in force and how its last load went, kept by the daemon.
#[derive(Debug)]
pub struct DomainSync {
    pub source: DomainSource,
    pub in_force: DomainList,
    stamp: Option<(SystemTime, u64)>,
}

/// The outcome of one [`DomainSync::reload`].
#[derive(Debug)]
pub enum Reloaded {
    /// A new list is in force (its length).
    Applied(usize),
    /// The file did not change.
    Unchanged,
    /// Refused: the list in force stays.
    Failed(anyhow::Error),
}

impl DomainSync {
    /// Loads the first list; a bad one stops the start (there is nothing in force yet).
    pub fn start(source: DomainSource) -> Result<DomainSync> {
        let stamp = source.stamp();
        let in_force = source.load()?;
        Ok(DomainSync {
            source,
            in_force,
            stamp,
        })
    }

    /// Reads the list again if the file changed (or always, with `force`: SIGHUP), and hands
    /// a valid new list to `apply` (which writes the kernel map). A refused list, or one
    /// `apply` failed to write, leaves the one in force.
    pub fn reload(
        &mut self,
        force: bool,
        apply: impl FnOnce(&DomainList) -> Result<()>,
    ) -> Reloaded {
        let stamp = self.source.stamp();
        if !force && (stamp == self.stamp || self.source == DomainSource::Builtin) {
            return Reloaded::Unchanged;
        }
        self.stamp = stamp;
        let list = match self.source.load() {
            Ok(l) => l,
            Err(e) => return Reloaded::Failed(e),
        };
        if list == self.in_force {
            return Reloaded::Unchanged;
        }
        if let Err(e) = apply(&list) {
            return Reloaded::Failed(e);
        }
        self.in_force = list;
        Reloaded::Applied(self.in_force.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_list_is_valid_and_names_a_source_for_every_entry() {
        let list = DomainList::builtin();
        assert!(list.len() >= 20, "{}", list.len());
        // Every domain line is under a `# source:` comment of its group (blank lines end a
        // group).
        let mut sourced = false;
        for (i, line) in BUILTIN.lines().enumerate() {
            let t = line.trim();
            if t.is_empty() {
                sourced = false;
            } else if t.starts_with("# source:") {
                sourced = true;
            } else if !t.starts_with('#') {
                assert!(sourced, "line {}: `{t}` has no `# source:` above it", i + 1);
            }
        }
        // Shared fronts are never listed.
        for shared in ["cloudflare.com", "google.com", "proton.me", "github.com"] {
            assert!(!list.domains.contains_key(shared), "{shared} is listed");
        }
        for vpn in ["cloudflareclient.com", "windscribe.com", "psiphon3.net"] {
            assert!(list.domains.contains_key(vpn), "{vpn} is not listed");
        }
    }

    #[test]
    fn problems_are_refused_with_their_line_and_what_is_wrong() {
        let text = "# comment\nexample.com\n\ncom\n*.vpn.example\nExample.org\nexample.com\nhttps://a.b/\na..b\n-a.b\n10.0.0.1\nok.example # trailing comment\n";
        let e = DomainList::parse(text, "list.txt").unwrap_err();
        let all = e.to_string();
        for want in [
            "list.txt:",
            "line 4: `com`: at least two labels",
            "line 5: `*.vpn.example`: no wildcards: write `vpn.example`",
            "line 6: `Example.org`: lower case only",
            "line 7: `example.com` is listed already on line 2",
            "line 8: `https://a.b/`: a domain name, not a URL",
            "line 9: `a..b`: empty label",
            "line 10: `-a.b`: label `-a` starts or ends with `-`",
            "line 11: `10.0.0.1`: an IP address",
        ] {
            assert!(all.contains(want), "missing {want:?} in:\n{all}");
        }
        assert_eq!(e.problems.len(), 8, "{all}");
        let long = format!("{}.com", "a".repeat(63) + "." + &"b".repeat(63));
        let e = DomainList::parse(&long, "x").unwrap_err().to_string();
        assert!(e.contains("the kernel reads server names up to 128"), "{e}");
    }

    #[test]
    fn a_valid_list_hashes_each_domain_once() {
        let l = DomainList::parse("a.example\nb.example # b\n", "x").unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(
            l.hashes(),
            vec![domain_hash(b"a.example"), domain_hash(b"b.example")]
        );
        assert_eq!(l.domains["b.example"], 2);
    }

    #[test]
    fn a_refused_reload_keeps_the_list_in_force() {
        let dir = std::env::temp_dir().join(format!("vpnf-domains-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("domains.txt");
        std::fs::write(&path, "a.example\n").unwrap();
        let mut sync = DomainSync::start(DomainSource::File(path.clone())).unwrap();
        assert_eq!(sync.in_force.len(), 1);
        std::fs::write(&path, "a.example\nbad\n").unwrap();
        match sync.reload(true, |_| panic!("a refused list is never applied")) {
            Reloaded::Failed(e) => assert!(format!("{e:#}").contains("line 2: `bad`"), "{e:#}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(sync.in_force.len(), 1);
        std::fs::write(&path, "a.example\nb.example\n").unwrap();
        let mut applied = 0;
        match sync.reload(true, |l| {
            applied = l.len();
            Ok(())
        }) {
            Reloaded::Applied(2) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(applied, 2);
        assert!(matches!(sync.reload(true, |_| Ok(())), Reloaded::Unchanged));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
