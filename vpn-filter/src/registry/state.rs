//! The last good feed, persisted so a restart without the source still enforces.
//!
//! Layout of the state directory (default `/var/lib/vpn-filter`):
//!
//! ```text
//! registry-state.json      what was applied last: source, format, serial, sha256, signature,
//!                          ETag, when, and the name of the feed file below
//! feed-<sha256>.<json|csv> the exact bytes of that feed (so its signature still verifies)
//! lock                     flock'ed by the running controller: one controller per directory
//! ```
//!
//! Every file is written atomically: to a temporary file in the same directory, fsync'ed, then
//! renamed over the old one, then the directory fsync'ed. The feed file is named by its
//! digest and written before the state file that names it, so a crash at any point leaves a
//! state file naming a complete feed (the old one or the new one), never a mix.

use std::{
    fs::File,
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Default `--state-dir`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/vpn-filter";
const STATE_FILE: &str = "registry-state.json";
const LOCK_FILE: &str = "lock";
const STATE_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {err}")]
    Io { path: String, err: std::io::Error },
    #[error("{path}: not a vpn-filter state file: {why}")]
    Corrupt { path: String, why: String },
    #[error("{path}: the persisted feed does not match its recorded sha256 (expected {expected}, found {found})")]
    Digest {
        path: String,
        expected: String,
        found: String,
    },
    #[error("the state directory {path} is in use by another vpn-filter controller (its lock file is held); give each controller its own --state-dir")]
    Locked { path: String },
}

fn io_err(path: &Path, err: std::io::Error) -> StateError {
    StateError::Io {
        path: path.display().to_string(),
        err,
    }
}

/// What the state file records about the last applied feed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateMeta {
    pub version: u32,
    /// Where the feed came from (path or URL).
    pub source: String,
    /// `json` or `csv`.
    pub format: String,
    pub serial: Option<u64>,
    /// Hex SHA-256 of the feed bytes.
    pub sha256: String,
    /// File name of the feed bytes inside the state directory.
    pub feed_file: String,
    /// The detached signature's text, when one was checked.
    pub signature: Option<String>,
    /// The HTTP ETag the feed was served with.
    pub etag: Option<String>,
    /// When the feed was applied (RFC 3339).
    pub applied_at: String,
    /// Prefixes in force when it was applied.
    pub prefixes_in_force: usize,
}

/// A persisted feed: its record and bytes (digest already checked).
#[derive(Clone, Debug)]
pub struct Persisted {
    pub meta: StateMeta,
    pub bytes: Vec<u8>,
}

/// Hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    path: PathBuf,
}

/// Held while a controller uses a state directory; released on drop (or process exit).
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

impl StateDir {
    pub fn new(path: impl Into<PathBuf>) -> StateDir {
        StateDir { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the directory (mode 0750) if needed and takes its lock.
    pub fn lock(&self) -> Result<StateLock, StateError> {
        std::fs::create_dir_all(&self.path).map_err(|e| io_err(&self.path, e))?;
        let lock_path = self.path.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o640)
            .open(&lock_path)
            .map_err(|e| io_err(&lock_path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(StateLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(StateError::Locked {
                path: self.path.display().to_string(),
            }),
            Err(std::fs::TryLockError::Error(err)) => Err(io_err(&lock_path, err)),
        }
    }

    /// The persisted feed, if any. A missing state file is `Ok(None)`; a damaged one is an
    /// error (the caller logs it and carries on without).
    pub fn load(&self) -> Result<Option<Persisted>, StateError> {
        let state_path = self.path.join(STATE_FILE);
        let text = match std::fs::read(&state_path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&state_path, e)),
        };
        let meta: StateMeta = serde_json::from_slice(&text).map_err(|e| StateError::Corrupt {
            path: state_path.display().to_string(),
            why: e.to_string(),
        })?;
        if meta.version != STATE_VERSION {
            return Err(StateError::Corrupt {
                path: state_path.display().to_string(),
                why: format!(
                    "version {} (this controller reads version {STATE_VERSION})",
                    meta.version
                ),
            });
        }
        if meta.feed_file.contains('/') || meta.feed_file.starts_with('.') {
            return Err(StateError::Corrupt {
                path: state_path.display().to_string(),
                why: format!("feed_file \"{}\" is not a plain file name", meta.feed_file),
            });
        }
        let feed_path = self.path.join(&meta.feed_file);
        let bytes = std::fs::read(&feed_path).map_err(|e| io_err(&feed_path, e))?;
        let found = sha256_hex(&bytes);
        if found != meta.sha256 {
            return Err(StateError::Digest {
                path: feed_path.display().to_string(),
                expected: meta.sha256,
                found,
            });
        }
        Ok(Some(Persisted { meta, bytes }))
    }

    /// Persists a feed as the last good one. `meta.feed_file` is filled in, and `meta.sha256`
    /// when empty (callers that already hashed the bytes pass the digest).
    /// Writes the feed file of a feed about to be applied (named by its digest, so the state
    /// file still names the last good feed until [`StateDir::save`]): its bytes need not be
    /// held in memory while the feed is applied. A file left by a feed that is then not
    /// applied is removed by the next save.
    pub fn stage_feed(&self, sha256: &str, format: &str, bytes: &[u8]) -> Result<(), StateError> {
        std::fs::create_dir_all(&self.path).map_err(|e| io_err(&self.path, e))?;
        let name = format!("feed-{sha256}.{format}");
        if !self.path.join(&name).exists() {
            write_atomic(&self.path, &name, bytes)?;
        }
        Ok(())
    }

    /// Saves `meta` as the last good feed, with `bytes` as its feed file unless that file
    /// is already there (staged by [`StateDir::stage_feed`]; `bytes` may then be empty).
    pub fn save(&self, mut meta: StateMeta, bytes: &[u8]) -> Result<StateMeta, StateError> {
        std::fs::create_dir_all(&self.path).map_err(|e| io_err(&self.path, e))?;
        meta.version = STATE_VERSION;
        if meta.sha256.is_empty() {
            meta.sha256 = sha256_hex(bytes);
        }
        meta.feed_file = format!("feed-{}.{}", meta.sha256, meta.format);
        let feed_path = self.path.join(&meta.feed_file);
        if !feed_path.exists() {
            write_atomic(&self.path, &meta.feed_file, bytes)?;
        }
        let json = serde_json::to_vec_pretty(&meta).expect("StateMeta serialises");
        write_atomic(&self.path, STATE_FILE, &json)?;
        // Older feed files are no longer named by the state file.
        if let Ok(dir) = std::fs::read_dir(&self.path) {
            for f in dir.flatten() {
                let name = f.file_name();
                let name = name.to_string_lossy();
                if name.starts_with("feed-") && name != meta.feed_file.as_str() {
                    let _ = std::fs::remove_file(f.path());
                }
            }
        }
        Ok(meta)
    }
}

/// Writes `dir/name` atomically: temporary file, fsync, rename, fsync of the directory.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StateError> {
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let target = dir.join(name);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o640)
            .open(&tmp)
            .map_err(|e| io_err(&tmp, e))?;
        f.write_all(bytes).map_err(|e| io_err(&tmp, e))?;
        f.sync_all().map_err(|e| io_err(&tmp, e))?;
        std::fs::rename(&tmp, &target).map_err(|e| io_err(&target, e))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err(dir, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let p = std::env::temp_dir().join(format!(
                "vpn-filter-state-test-{tag}-{}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&p);
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn meta(serial: u64) -> StateMeta {
        StateMeta {
            version: 0,
            source: "/etc/feed.json".into(),
            format: "json".into(),
            serial: Some(serial),
            sha256: String::new(),
            feed_file: String::new(),
            signature: None,
            etag: Some("\"v1\"".into()),
            applied_at: "2026-11-27T10:00:00Z".into(),
            prefixes_in_force: 3,
        }
    }

    #[test]
    fn a_saved_feed_loads_back_byte_for_byte() {
        let dir = TempDir::new("roundtrip");
        let state = StateDir::new(&dir.0);
        assert!(state.load().unwrap().is_none(), "nothing persisted yet");
        let saved = state.save(meta(7), b"feed v7").unwrap();
        let p = state.load().unwrap().expect("persisted");
        assert_eq!(p.bytes, b"feed v7");
        assert_eq!(p.meta, saved);
        assert_eq!(p.meta.serial, Some(7));
    }

    #[test]
    fn saving_a_new_feed_replaces_the_old_one_and_its_file() {
        let dir = TempDir::new("replace");
        let state = StateDir::new(&dir.0);
        state.save(meta(1), b"one").unwrap();
        state.save(meta(2), b"two").unwrap();
        assert_eq!(state.load().unwrap().unwrap().bytes, b"two");
        let feeds = std::fs::read_dir(&dir.0)
            .unwrap()
            .flatten()
            .filter(|f| f.file_name().to_string_lossy().starts_with("feed-"))
            .count();
        assert_eq!(feeds, 1, "the old feed file is removed");
    }

    #[test]
    fn a_damaged_feed_file_is_reported_not_used() {
        let dir = TempDir::new("damaged");
        let state = StateDir::new(&dir.0);
        let m = state.save(meta(1), b"original").unwrap();
        std::fs::write(dir.0.join(&m.feed_file), b"tampered").unwrap();
        let err = state.load().unwrap_err();
        assert!(matches!(err, StateError::Digest { .. }), "{err}");
    }

    #[test]
    fn a_second_lock_on_the_same_directory_is_refused() {
        let dir = TempDir::new("lock");
        let state = StateDir::new(&dir.0);
        let _held = state.lock().unwrap();
        let err = state.lock().unwrap_err();
        assert!(matches!(err, StateError::Locked { .. }), "{err}");
    }
}
