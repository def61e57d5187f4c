//! The controller's feed loop: fetch a feed, check it, apply it to the kernel, persist it, and
//! re-apply at approval and expiry instants. One loop serves both feeds, through [`FeedKind`]:
//! the registry (the allowlist, [`Registry`]) and the known VPN endpoints
//! (`crate::endpoints::Endpoints`).
//!
//! Every new feed goes through the same steps, and the first that fails refuses it with the
//! allowlist in force left exactly as it was:
//!
//! 1. size limit (`--max-feed-bytes`), enforced while reading;
//! 2. signature, when a key is pinned (`--registry-pubkey`);
//! 3. parse and validate (JSON or CSV), every problem located;
//! 4. the guard against the feed in force: serial going backwards, emptying or mass shrink;
//! 5. capacity, then the add-before-remove sync (`kernel::Filter::sync_allowlist`, through [`Apply`]); a write that
//!    fails midway is rolled back to the feed in force;
//! 6. the feed is persisted in the state directory as the last good one.
//!
//! At startup the persisted feed is the baseline for step 4, and when the source is
//! unreachable or its feed refused, the persisted feed is enforced (logged loudly).

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use time::OffsetDateTime;
use tokio::task::JoinHandle;

use crate::registry::{
    guard::{self, Baseline, GuardArgs, GuardOptions, Refusal},
    rfc3339,
    signature::Keyring,
    source::{Fetched, FileSource, HttpPoll, HttpSource, SourceSpec},
    state::{sha256_hex, Persisted, StateDir, StateLock, StateMeta, DEFAULT_STATE_DIR},
    Allowlist, Feed, FeedError, FeedFormat, FormatChoice, ValidateOptions, Warnings,
};

/// Result of one allowlist sync.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
    pub v4: usize,
    pub v6: usize,
    /// Removals written before the additions because the trie could not hold both (see
    /// `kernel::diff::schedule`).
    pub removed_first: usize,
    /// Whether the tries were read from the kernel first (first sync, adopted pinned maps, or
    /// after a failed sync).
    pub read_kernel: bool,
    /// The allowlist generation raised after the writes (0 when nothing changed): live flows
    /// re-check their endpoints against the new allowlist (see `kernel::Filter::sync_allowlist`).
    pub generation: u64,
}

/// Where a feed's set goes: the kernel's tries. `kernel::Filter` implements it for the
/// allowlist and for the endpoint lists; the loop stays free of BPF.
pub trait Apply<S> {
    /// Writes `set` (add before remove).
    fn apply(&mut self, set: &S) -> Result<SyncReport>;
    /// The same, for a set the caller no longer needs: a writer that converts it first can
    /// free it before the write.
    fn apply_owned(&mut self, set: S) -> Result<SyncReport> {
        self.apply(&set)
    }
}

/// What one kind of feed brings to the loop: parsing, the set it puts in the kernel, the
/// guard's comparison and the kernel write. The loop does the rest (sources, signature, size
/// limit, refusal reporting, rollback, persistence, fallback to the last good feed).
pub trait FeedKind {
    /// A parsed, validated feed.
    type Feed;
    /// What the kernel holds for a feed at an instant.
    type Set;
    /// Lower-case name in messages ("registry").
    const WHAT: &'static str;
    /// Upper-case name for the loudest messages ("REGISTRY").
    const WHAT_LOUD: &'static str;
    /// The kernel side's name in messages ("allowlist").
    const SET_NAME: &'static str;

    /// Parses and validates a feed. `persisted_format` is the format recorded with a
    /// persisted feed (`None` for a fresh fetch).
    fn parse(
        &self,
        bytes: &[u8],
        origin: &str,
        persisted_format: Option<&str>,
    ) -> Result<(Self::Feed, Warnings), FeedError>;
    /// One line for logs (serial, ...).
    fn describe(feed: &Self::Feed) -> String;
    fn serial(feed: &Self::Feed) -> Option<u64>;
    /// The feed's `generated_at`, when its format has one.
    fn generated_at(_feed: &Self::Feed) -> Option<OffsetDateTime> {
        None
    }
    /// Format name, persisted with the feed.
    fn format_name(feed: &Self::Feed) -> &'static str;
    /// The set in force at `now`.
    fn set(feed: &Self::Feed, now: OffsetDateTime) -> Self::Set;
    /// The next instant after `now` at which the set changes without a new feed.
    fn next_change_after(feed: &Self::Feed, now: OffsetDateTime) -> Option<OffsetDateTime>;
    /// The guard: checks `new` against the feed in force (see [`guard`]).
    fn check_transition(
        last: Option<(&Self::Feed, &Self::Set)>,
        new: &Self::Feed,
        new_set: &Self::Set,
        opts: &GuardOptions,
    ) -> Result<Vec<String>, Refusal>;
}

/// The registry feed: the allowlist.
pub struct Registry {
    format: FormatChoice,
    validate: ValidateOptions,
}

impl FeedKind for Registry {
    type Feed = Feed;
    type Set = Allowlist;
    const WHAT: &'static str = "registry";
    const WHAT_LOUD: &'static str = "REGISTRY";
    const SET_NAME: &'static str = "allowlist";

    fn parse(
        &self,
        bytes: &[u8],
        origin: &str,
        persisted_format: Option<&str>,
    ) -> Result<(Feed, Warnings), FeedError> {
        let format = match persisted_format {
            None => self.format,
            Some(name) => match FeedFormat::from_name(name) {
                Some(FeedFormat::Json) => FormatChoice::Json,
                Some(FeedFormat::Csv) => FormatChoice::Csv,
                None => FormatChoice::Auto,
            },
        };
        Feed::parse(bytes, origin, format, self.validate)
    }

    fn describe(feed: &Feed) -> String {
        feed.describe()
    }

    fn generated_at(feed: &Feed) -> Option<OffsetDateTime> {
        feed.generated_at
    }

    fn serial(feed: &Feed) -> Option<u64> {
        feed.serial
    }

    fn format_name(feed: &Feed) -> &'static str {
        feed.format.name()
    }

    fn set(feed: &Feed, now: OffsetDateTime) -> Allowlist {
        feed.allowlist(now)
    }

    fn next_change_after(feed: &Feed, now: OffsetDateTime) -> Option<OffsetDateTime> {
        feed.next_change_after(now)
    }

    fn check_transition(
        last: Option<(&Feed, &Allowlist)>,
        new: &Feed,
        new_set: &Allowlist,
        opts: &GuardOptions,
    ) -> Result<Vec<String>, Refusal> {
        let baseline = last.map(|(f, a)| Baseline {
            serial: f.serial,
            allowlist: a,
        });
        guard::check_transition(baseline, new, new_set, opts)
    }
}

/// The registry options of `vpn-filter run`. Serialisable with the flag names as keys, for a
/// configuration file.
#[derive(Debug, Clone, clap::Args, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RegistryArgs {
    /// Registry feed: a file path (re-read when it changes; publish by writing a temporary
    /// file and renaming it over this one) or an http(s):// URL (polled with ETag). JSON or
    /// CSV. A bad version is refused and the previous allowlist stays in force.
    #[arg(
        long,
        value_name = "FILE|URL",
        required_unless_present = "config",
        default_value = ""
    )]
    pub registry: String,
    /// Feed format: auto tells JSON from CSV by the content.
    #[arg(long, value_enum, default_value = "auto")]
    pub registry_format: FormatChoice,
    /// Pinned Ed25519 public key (PEM, or raw 32 bytes in base64/hex). With it, feeds must
    /// come with a valid detached signature (FEED.sig beside a file, URL.sig for a URL);
    /// unsigned or badly signed feeds are refused. Give it twice during a key rollover: a
    /// feed signed by either key is accepted. In the config file: a string or a list.
    #[arg(long, value_name = "FILE")]
    #[serde(default, deserialize_with = "one_or_many")]
    pub registry_pubkey: Vec<PathBuf>,
    /// Directory holding the last good feed (enforced at startup when the source is
    /// unreachable or bad). One controller per directory.
    #[arg(long, default_value = DEFAULT_STATE_DIR, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// Accept registry prefixes broader than /8 (IPv4) or /16 (IPv6).
    #[arg(long)]
    pub allow_broad: bool,
    #[command(flatten)]
    #[serde(flatten)]
    pub guard: GuardArgs,
    /// How often the registry file is checked for changes, in milliseconds (files only; a
    /// URL is fetched every --registry-http-interval).
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub registry_poll_ms: u64,
    /// How often a registry URL is polled, in seconds.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub registry_http_interval: u64,
    /// Extra CA certificates (PEM) trusted for an https registry URL, besides the system's.
    #[arg(long, value_name = "FILE")]
    pub registry_ca: Option<PathBuf>,
}

/// A config-file value given as one string or a list of them.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged, expecting = "a file path or a list of file paths")]
    enum OneOrMany {
        One(PathBuf),
        Many(Vec<PathBuf>),
    }
    Ok(match serde::Deserialize::deserialize(d)? {
        OneOrMany::One(p) => vec![p],
        OneOrMany::Many(v) => v,
    })
}

impl RegistryArgs {
    pub fn validate_options(&self) -> ValidateOptions {
        ValidateOptions {
            allow_broad: self.allow_broad,
        }
    }

    pub fn guard_options(&self) -> GuardOptions {
        self.guard.options()
    }
}

/// How often the loop looks whether an HTTP fetch is due or has finished (no I/O).
const HTTP_TICK: Duration = Duration::from_millis(100);

/// What a step of the loop did, for status reporting.
#[derive(Clone, Debug)]
pub enum Outcome {
    Applied {
        serial: Option<u64>,
        /// The feed's `generated_at`.
        generated_at: Option<OffsetDateTime>,
        report: SyncReport,
        took: Duration,
    },
    /// The source answered with the feed in force (`304 Not Modified`, or the same bytes).
    Unchanged,
    Failed(String),
}

/// A fetched feed that passed every check, not yet written to the kernel.
struct Checked<K: FeedKind> {
    fetched: Fetched,
    feed: K::Feed,
    digest: String,
    allow: K::Set,
    /// The set of the feed in force at `now` (what a failed write is rolled back to).
    last_set: Option<K::Set>,
    checked: Duration,
    now: OffsetDateTime,
}

/// What [`FeedSync::prepare_start`] found, for [`FeedSync::finish_start`].
pub struct Prepared<K: FeedKind>(PreparedKind<K>);

enum PreparedKind<K: FeedKind> {
    /// Apply the persisted feed (the source has nothing newer).
    Current,
    Checked(Box<Checked<K>>),
    /// The source is unusable: why (the persisted feed, if any, is applied).
    Failed(String),
}

/// The feed in force (or, at startup before anything is applied, the persisted one).
struct Current<F> {
    feed: F,
    bytes_sha256: String,
    origin: String,
    etag: Option<String>,
    signature: Option<String>,
    applied_at: Option<String>,
}

enum Source {
    File(FileSource),
    Http {
        src: HttpSource,
        interval: Duration,
        next_due: Instant,
        /// `Ok(None)`: the refused version is still served (see [`RefusedHttp`]).
        in_flight: Option<JoinHandle<Result<Option<HttpPoll>>>>,
    },
}

/// The version an HTTP source served that was refused (by a check, not by a failed kernel
/// write): the next polls send its ETag, so while it stays served they cost a `304` (and the
/// small signature) instead of the whole feed.
#[derive(Clone)]
struct RefusedHttp {
    etag: String,
    signature: Option<Vec<u8>>,
    /// Why it was refused, reported again at each poll that finds it still served.
    message: String,
}

/// One feed's side of the controller.
pub struct FeedSync<K: FeedKind> {
    kind: K,
    spec: SourceSpec,
    source: Source,
    guard: GuardOptions,
    keys: Keyring,
    state: StateDir,
    _lock: StateLock,
    current: Option<Current<K::Feed>>,
    /// Whether `current` is what the kernel holds.
    applied: bool,
    next_change: Option<OffsetDateTime>,
    poll_interval: Duration,
    /// Digest of the last refused feed and signature, so a URL serving them again is not
    /// reported at length every poll.
    last_refused: Option<String>,
    refused_http: Option<RefusedHttp>,
}

fn now_utc() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// The registry side of the controller.
pub type RegistrySync = FeedSync<Registry>;

impl FeedSync<Registry> {
    /// Parses the options, reads the key, and takes the state directory's lock.
    pub fn new(args: &RegistryArgs) -> Result<RegistrySync> {
        let kind = Registry {
            format: args.registry_format,
            validate: args.validate_options(),
        };
        FeedSync::with_kind(
            kind,
            &SourceOptions {
                source: &args.registry,
                pubkeys: &args.registry_pubkey,
                state_dir: args.state_dir.clone(),
                state_flag: "--state-dir",
                max_feed_bytes: args.guard.max_feed_bytes,
                guard: args.guard_options(),
                poll_ms: args.registry_poll_ms,
                http_interval: args.registry_http_interval,
                ca: args.registry_ca.as_deref(),
            },
        )
    }
}

/// Where a feed comes from and how it is guarded (the kind-independent options).
pub struct SourceOptions<'a> {
    /// File path or URL.
    pub source: &'a str,
    /// Accepted signing keys (none: feeds are not signed).
    pub pubkeys: &'a [PathBuf],
    pub state_dir: PathBuf,
    /// The option naming the state directory, for messages.
    pub state_flag: &'a str,
    pub max_feed_bytes: u64,
    pub guard: GuardOptions,
    pub poll_ms: u64,
    pub http_interval: u64,
    pub ca: Option<&'a std::path::Path>,
}

impl<K: FeedKind> FeedSync<K> {
    /// Parses the options, reads the key, and takes the state directory's lock.
    pub fn with_kind(kind: K, opts: &SourceOptions<'_>) -> Result<FeedSync<K>> {
        let spec = SourceSpec::parse(opts.source)?;
        let poll_interval = match spec {
            SourceSpec::File(_) => Duration::from_millis(opts.poll_ms.max(50)),
            // For a URL a tick only looks at the clock and at the background fetch, so it runs
            // often: a fetched feed is applied at once, not a file-poll interval later.
            SourceSpec::Url(_) => HTTP_TICK,
        };
        let keys = Keyring::from_files(opts.pubkeys)?;
        log_keys(K::WHAT, &keys, opts.pubkeys);
        let state = StateDir::new(&opts.state_dir);
        let lock = state.lock().with_context(|| {
            format!(
                "cannot use the state directory {} ({})",
                opts.state_dir.display(),
                opts.state_flag
            )
        })?;
        let with_sig = !keys.is_empty();
        let source = match &spec {
            SourceSpec::File(p) => {
                Source::File(FileSource::new(p.clone(), with_sig, opts.max_feed_bytes))
            }
            SourceSpec::Url(u) => Source::Http {
                src: HttpSource::new(u.clone(), with_sig, opts.max_feed_bytes, opts.ca)?,
                interval: Duration::from_secs(opts.http_interval.max(1)),
                next_due: Instant::now(),
                in_flight: None,
            },
        };
        Ok(FeedSync {
            kind,
            spec,
            source,
            guard: opts.guard,
            keys,
            state,
            _lock: lock,
            current: None,
            applied: false,
            next_change: None,
            poll_interval,
            last_refused: None,
            refused_http: None,
        })
    }

    /// Replaces the pinned keys (SIGHUP with a new `registry-pubkey` list).
    pub fn set_keys(&mut self, keys: Keyring, paths: &[PathBuf]) {
        log_keys(K::WHAT, &keys, paths);
        self.keys = keys;
        // A feed refused under the old keys is judged afresh.
        self.last_refused = None;
        self.refused_http = None;
    }

    /// How often [`RegistrySync::tick`] should run.
    pub fn poll_interval(&self) -> Duration {
        self.poll_interval
    }

    /// The feed in force.
    pub fn feed(&self) -> Option<&K::Feed> {
        self.current
            .as_ref()
            .filter(|_| self.applied)
            .map(|c| &c.feed)
    }

    /// Drops the HTTP source's pooled connections (see [`HttpSource::reset_connections`]).
    pub fn reset_connections(&mut self) -> Result<()> {
        if let Source::Http { src, .. } = &mut self.source {
            src.reset_connections()?;
        }
        Ok(())
    }

    /// The source as given on the command line.
    pub fn source(&self) -> String {
        self.spec.describe()
    }

    /// First load: the source's feed, or else the persisted last good one. Fails only when
    /// neither can be enforced.
    pub async fn start(&mut self, filter: &mut impl Apply<K::Set>) -> Result<Outcome> {
        let prepared = self.prepare_start().await;
        self.finish_start(filter, prepared)
    }

    /// The part of [`FeedSync::start`] that needs no kernel: the persisted feed, the
    /// source's, and its checks (run while the program is being verified).
    pub async fn prepare_start(&mut self) -> Prepared<K> {
        self.current = self.load_persisted();
        self.applied = false;
        let origin = self.spec.describe();
        let etag = self
            .current
            .as_ref()
            .filter(|c| c.origin == origin)
            .and_then(|c| c.etag.clone());
        let first: Result<Option<Fetched>> = match &mut self.source {
            Source::File(f) => f.read_now().map(Some),
            Source::Http {
                src,
                interval,
                next_due,
                ..
            } => {
                *next_due = Instant::now() + *interval;
                match src.fetch(etag.as_deref()).await {
                    Ok(HttpPoll::NotModified) => {
                        log::info!(
                            "{origin}: not modified since the persisted copy (ETag {})",
                            etag.as_deref().unwrap_or("?")
                        );
                        Ok(None)
                    }
                    Ok(HttpPoll::New(f)) => Ok(Some(f)),
                    Err(e) => Err(e),
                }
            }
        };
        Prepared(match first {
            Ok(None) => PreparedKind::Current,
            Ok(Some(fetched)) => match self.accept_check(fetched, now_utc()) {
                Ok(Some(checked)) => PreparedKind::Checked(Box::new(checked)),
                // The same bytes as the persisted feed.
                Ok(None) => PreparedKind::Current,
                Err(e) => PreparedKind::Failed(e),
            },
            Err(e) => PreparedKind::Failed(format!("{e:#}")),
        })
    }

    /// The rest of [`FeedSync::start`]: writes what [`FeedSync::prepare_start`] found, or
    /// else the persisted last good feed.
    pub fn finish_start(
        &mut self,
        filter: &mut impl Apply<K::Set>,
        prepared: Prepared<K>,
    ) -> Result<Outcome> {
        let error = match prepared.0 {
            PreparedKind::Current => return self.apply_current(filter, "startup"),
            PreparedKind::Checked(checked) => match self.accept_apply(filter, *checked) {
                Ok(outcome) => return Ok(outcome),
                Err(e) => e,
            },
            PreparedKind::Failed(e) => e,
        };
        let Some(cur) = &self.current else {
            bail!(
                "no usable {} feed: {error}; and no last good feed persisted in {} to fall back on",
                K::WHAT,
                self.state.path().display()
            );
        };
        log::error!("{} SOURCE UNUSABLE AT STARTUP: {error}", K::WHAT_LOUD);
        log::error!(
            "ENFORCING THE LAST GOOD FEED persisted in {}: {} from {}, applied {}, sha256 {}",
            self.state.path().display(),
            K::describe(&cur.feed),
            cur.origin,
            cur.applied_at.as_deref().unwrap_or("?"),
            cur.bytes_sha256
        );
        self.apply_current(filter, "startup (last good feed)")
    }

    /// One step of the loop: picks up a new feed version, or re-applies at an approval or
    /// expiry instant. `None` when there was nothing to do.
    pub async fn tick(&mut self, filter: &mut impl Apply<K::Set>) -> Option<Outcome> {
        let now = now_utc();
        let fetched: Option<Result<Fetched>> = match &mut self.source {
            Source::File(f) => f.poll(),
            Source::Http {
                src,
                interval,
                next_due,
                in_flight,
            } => {
                if in_flight.as_ref().is_some_and(|h| h.is_finished()) {
                    let handle = in_flight.take().expect("checked");
                    match handle.await {
                        Ok(Ok(Some(HttpPoll::NotModified))) => {
                            log::debug!("{}: not modified", src.url());
                            return Some(Outcome::Unchanged);
                        }
                        Ok(Ok(None)) => {
                            log::warn!(
                                "registry from {} still refused (not modified since); the allowlist in force stays",
                                src.url()
                            );
                            let why = self
                                .refused_http
                                .as_ref()
                                .map_or_else(String::new, |r| r.message.clone());
                            return Some(Outcome::Failed(why));
                        }
                        Ok(Ok(Some(HttpPoll::New(f)))) => Some(Ok(f)),
                        Ok(Err(e)) => Some(Err(e)),
                        Err(e) => Some(Err(anyhow::anyhow!("the fetch task failed: {e}"))),
                    }
                } else {
                    if in_flight.is_none() && Instant::now() >= *next_due {
                        *next_due = Instant::now() + *interval;
                        let src = src.clone();
                        let origin = src.url().to_string();
                        let etag = self
                            .current
                            .as_ref()
                            .filter(|c| c.origin == origin)
                            .and_then(|c| c.etag.clone());
                        let refused = self.refused_http.clone();
                        *in_flight = Some(tokio::spawn(async move {
                            match refused {
                                Some(r) => {
                                    src.fetch_after_refusal(&r.etag, r.signature.as_deref())
                                        .await
                                }
                                None => src.fetch(etag.as_deref()).await.map(Some),
                            }
                        }));
                    }
                    None
                }
            }
        };
        match fetched {
            Some(Ok(f)) => match self.accept(filter, f, now) {
                Ok(Some(outcome)) => return Some(outcome),
                Ok(None) => return Some(Outcome::Unchanged),
                Err(e) => return Some(Outcome::Failed(e)),
            },
            Some(Err(e)) => {
                let msg = format!("{e:#}");
                log::error!("{}", self.refusal_line(&msg));
                return Some(Outcome::Failed(msg));
            }
            None => {}
        }
        if self.applied && self.next_change.is_some_and(|t| t <= now) {
            return Some(
                match self.apply_current(filter, "an approval or expiry instant") {
                    Ok(o) => o,
                    Err(e) => {
                        let msg = format!("{e:#}");
                        log::error!(
                            "re-applying the {} at an approval or expiry instant failed: {msg}",
                            K::WHAT
                        );
                        Outcome::Failed(msg)
                    }
                },
            );
        }
        None
    }

    fn refusal_line(&self, error: &str) -> String {
        let in_force = match self.current.as_ref().filter(|_| self.applied) {
            Some(c) => format!(
                "the {} in force ({}) stays",
                K::SET_NAME,
                K::describe(&c.feed)
            ),
            None => "nothing is in force yet".to_string(),
        };
        format!(
            "{} from {} refused; {in_force}: {error}",
            K::WHAT,
            self.spec.describe()
        )
    }

    /// Checks and applies a fetched feed. `Ok(None)`: the same bytes as the feed in force.
    /// `Err`: refused (already logged), with the allowlist in force unchanged.
    fn accept(
        &mut self,
        filter: &mut impl Apply<K::Set>,
        fetched: Fetched,
        now: OffsetDateTime,
    ) -> Result<Option<Outcome>, String> {
        match self.accept_check(fetched, now)? {
            Some(checked) => self.accept_apply(filter, checked).map(Some),
            None => Ok(None),
        }
    }

    /// The checks of [`FeedSync::accept`] (nothing written to the kernel). `Ok(None)`: the
    /// same bytes as the feed in force.
    fn accept_check(
        &mut self,
        fetched: Fetched,
        now: OffsetDateTime,
    ) -> Result<Option<Checked<K>>, String> {
        let origin = self.spec.describe();
        let checked_start = Instant::now();
        // Filled by `check` for a feed that differs from the one in force.
        let mut last_set = None;
        let mut fetched = fetched;
        let result = self.check(&mut fetched, &origin, now, &mut last_set);
        let (feed, digest, allow) = match result {
            Ok(Some(x)) => x,
            Ok(None) => {
                self.refused_http = None;
                if let Some(c) = &mut self.current {
                    if fetched.etag.is_some() {
                        c.etag = fetched.etag;
                    }
                }
                return Ok(None);
            }
            Err((msg, digest)) => {
                self.refused_http = fetched.etag.clone().map(|etag| RefusedHttp {
                    etag,
                    signature: fetched.signature.clone(),
                    message: msg.clone(),
                });
                if digest.is_some() && digest == self.last_refused {
                    log::warn!(
                        "{} from {origin} still refused (same content as before); the {} in force stays",
                        K::WHAT,
                        K::SET_NAME
                    );
                } else {
                    log::error!("{}", self.refusal_line(&msg));
                }
                self.last_refused = digest;
                return Err(msg);
            }
        };
        let checked = checked_start.elapsed();
        Ok(Some(Checked {
            fetched,
            feed,
            digest,
            allow,
            last_set,
            checked,
            now,
        }))
    }

    /// The write of [`FeedSync::accept`]: applies a checked feed, or refuses it (with the
    /// set in force put back) when the kernel write fails.
    fn accept_apply(
        &mut self,
        filter: &mut impl Apply<K::Set>,
        checked: Checked<K>,
    ) -> Result<Outcome, String> {
        let Checked {
            fetched,
            feed,
            digest,
            allow,
            last_set,
            checked,
            now,
        } = checked;
        let origin = self.spec.describe();
        log_sync_start::<K>(&origin);
        let start = Instant::now();
        let report = match filter.apply_owned(allow) {
            Ok(r) => r,
            Err(e) => {
                let msg = format!("{} not applied: {e:#}", K::describe(&feed));
                log::error!("{}", self.refusal_line(&msg));
                self.rollback(filter, last_set.as_ref());
                return Err(msg);
            }
        };
        let took = start.elapsed();
        log::info!(
            "{} {} applied from {origin}: {} (checks {:.1} ms)",
            K::WHAT,
            K::describe(&feed),
            report_line(&report, took),
            checked.as_secs_f64() * 1e3
        );
        let signature = fetched
            .signature
            .as_deref()
            .filter(|_| !self.keys.is_empty())
            .map(|s| String::from_utf8_lossy(s).trim().to_string());
        let mut current = Current {
            feed,
            bytes_sha256: digest,
            origin,
            etag: fetched.etag,
            signature,
            applied_at: Some(rfc3339(now_utc())),
        };
        self.persist(&mut current, &fetched.bytes, &report);
        self.next_change = K::next_change_after(&current.feed, now);
        self.current = Some(current);
        self.applied = true;
        self.last_refused = None;
        self.refused_http = None;
        Ok(Outcome::Applied {
            serial: self.current.as_ref().and_then(|c| K::serial(&c.feed)),
            generated_at: self.current.as_ref().and_then(|c| K::generated_at(&c.feed)),
            report,
            took,
        })
    }

    /// Steps 1-4: the feed, its digest and its allowlist at `now`. `Ok(None)`: unchanged.
    /// `Err((message, refusal key))`.
    #[expect(
        clippy::type_complexity,
        reason = "a private helper's result, spelled out once"
    )]
    fn check(
        &self,
        fetched: &mut Fetched,
        origin: &str,
        now: OffsetDateTime,
        last_set: &mut Option<K::Set>,
    ) -> Result<Option<(K::Feed, String, K::Set)>, (String, Option<String>)> {
        guard::check_size(fetched.bytes.len() as u64, &self.guard)
            .map_err(|e| (e.to_string(), None))?;
        let digest = sha256_hex(&fetched.bytes);
        // A refusal is remembered by feed and signature, so a new signature is reported anew.
        let refusal_key = format!(
            "{digest}:{}",
            fetched
                .signature
                .as_deref()
                .map(sha256_hex)
                .unwrap_or_default()
        );
        let fail = |msg: String| (msg, Some(refusal_key.clone()));
        if !self.keys.is_empty() {
            let by = self
                .keys
                .verify(
                    &fetched.bytes,
                    fetched.signature.as_deref(),
                    &fetched.signature_at,
                )
                .map_err(|e| fail(e.to_string()))?;
            if self.keys.keys().len() > 1 {
                log::info!("{origin}: signed by the key {}", by.fingerprint());
            }
        }
        if self
            .current
            .as_ref()
            .is_some_and(|c| c.bytes_sha256 == digest)
        {
            return Ok(None);
        }
        let (feed, warnings) = self
            .kind
            .parse(&fetched.bytes, origin, None)
            .map_err(|e| fail(e.to_string()))?;
        log_warnings(origin, &warnings);
        // Parsed: the feed's bytes go to the state directory now (named by digest, not yet
        // by the state file, so a feed the checks below refuse is never taken for the last
        // good one; the next save removes its file), and are not held in memory through the
        // checks and the write (88 MB at a million prefixes). If that fails they are kept
        // and written when the feed is saved, as before.
        match self
            .state
            .stage_feed(&digest, K::format_name(&feed), &fetched.bytes)
        {
            Ok(()) => fetched.bytes = Vec::new(),
            Err(e) => log::debug!("staging the feed in the state directory: {e}"),
        }
        // The set in force at `now`, computed once and only for a feed that differs from it:
        // the guard's baseline and, if the write fails, what is put back.
        *last_set = self.current.as_ref().map(|c| K::set(&c.feed, now));
        let new_allow = K::set(&feed, now);
        let baseline = self
            .current
            .as_ref()
            .zip(last_set.as_ref())
            .map(|(c, a)| (&c.feed, a));
        let warnings = K::check_transition(baseline, &feed, &new_allow, &self.guard)
            .map_err(|e| fail(format!("{}: {e}", K::describe(&feed))))?;
        log_warnings(origin, &warnings);
        Ok(Some((feed, digest, new_allow)))
    }

    /// After a failed write: put the feed in force back exactly (`set`: its set at the
    /// instant of the write).
    fn rollback(&mut self, filter: &mut impl Apply<K::Set>, set: Option<&K::Set>) {
        let (Some(cur), Some(set)) = (self.current.as_ref().filter(|_| self.applied), set) else {
            return;
        };
        match filter.apply(set) {
            Ok(r) => log::warn!(
                "rolled back to {}: {} added, {} removed",
                K::describe(&cur.feed),
                r.added,
                r.removed
            ),
            Err(e) => log::error!(
                "ROLLING BACK to {} FAILED: {e:#}; the kernel {} may hold a mix of both feeds (no prefix of the feed in force was removed)",
                K::describe(&cur.feed),
                K::SET_NAME
            ),
        }
    }

    /// Applies the current feed as it stands at this instant (startup, expiry, approval).
    fn apply_current(&mut self, filter: &mut impl Apply<K::Set>, why: &str) -> Result<Outcome> {
        let Some(cur) = &self.current else {
            bail!("no {} feed to apply", K::WHAT);
        };
        let now = now_utc();
        log_sync_start::<K>(&cur.origin);
        let start = Instant::now();
        let report = filter
            .apply_owned(K::set(&cur.feed, now))
            .with_context(|| format!("applying {} {}", K::WHAT, K::describe(&cur.feed)))?;
        let took = start.elapsed();
        log::info!(
            "{} {} applied ({why}) from {}: {}",
            K::WHAT,
            K::describe(&cur.feed),
            cur.origin,
            report_line(&report, took)
        );
        self.applied = true;
        self.next_change = K::next_change_after(&cur.feed, now);
        if let Some(t) = self.next_change {
            log::debug!("next approval or expiry at {}", rfc3339(t));
        }
        Ok(Outcome::Applied {
            serial: K::serial(&cur.feed),
            generated_at: K::generated_at(&cur.feed),
            report,
            took,
        })
    }

    fn load_persisted(&self) -> Option<Current<K::Feed>> {
        let dir = self.state.path().display();
        let p: Persisted = match self.state.load() {
            Ok(Some(p)) => p,
            Ok(None) => {
                log::info!("no last good feed persisted in {dir} yet");
                return None;
            }
            Err(e) => {
                log::error!("the persisted last good feed is unusable: {e}");
                return None;
            }
        };
        let name = format!("the persisted feed in {dir} (from {})", p.meta.source);
        if !self.keys.is_empty() {
            if let Err(e) = self.keys.verify(
                &p.bytes,
                p.meta.signature.as_deref().map(str::as_bytes),
                &format!("{dir}/registry-state.json"),
            ) {
                log::error!("{name} is not used: {e}");
                return None;
            }
        }
        match self.kind.parse(&p.bytes, &name, Some(&p.meta.format)) {
            Ok((feed, _)) => {
                log::info!(
                    "last good feed: {} from {}, applied {}",
                    K::describe(&feed),
                    p.meta.source,
                    p.meta.applied_at
                );
                Some(Current {
                    feed,
                    bytes_sha256: p.meta.sha256,
                    origin: p.meta.source,
                    etag: p.meta.etag,
                    signature: p.meta.signature,
                    applied_at: Some(p.meta.applied_at),
                })
            }
            Err(e) => {
                log::error!("{name} is not used: {e}");
                None
            }
        }
    }

    fn persist(&self, cur: &mut Current<K::Feed>, bytes: &[u8], report: &SyncReport) {
        let meta = StateMeta {
            version: 0,
            source: cur.origin.clone(),
            format: K::format_name(&cur.feed).to_string(),
            serial: K::serial(&cur.feed),
            sha256: cur.bytes_sha256.clone(),
            feed_file: String::new(),
            signature: cur.signature.clone(),
            etag: cur.etag.clone(),
            applied_at: cur.applied_at.clone().unwrap_or_default(),
            prefixes_in_force: report.v4 + report.v6,
        };
        match self.state.save(meta, bytes) {
            Ok(_) => log::debug!(
                "persisted {} in {}",
                K::describe(&cur.feed),
                self.state.path().display()
            ),
            Err(e) => log::error!(
                "could not persist the applied feed as the last good one ({e}); a restart without the source would enforce an older feed"
            ),
        }
    }
}

/// Said before a sync's kernel writes, whose end the `... applied ...` line reports.
pub const SYNC_STARTED: &str = "sync started";

/// `registry sync started: writing the allowlist from SOURCE to the kernel`.
fn log_sync_start<K: FeedKind>(origin: &str) {
    log::info!(
        "{} {SYNC_STARTED}: writing the {} from {origin} to the kernel",
        K::WHAT,
        K::SET_NAME
    );
}

fn log_keys(what: &str, keys: &Keyring, paths: &[PathBuf]) {
    for (k, p) in keys.keys().iter().zip(paths) {
        log::info!(
            "{what} feeds signed by the Ed25519 key {} ({}) are accepted",
            k.fingerprint(),
            p.display()
        );
    }
}

/// `N IPv4 + M IPv6 prefixes (a added, c changed, r removed) in T ms`.
pub fn report_line(report: &SyncReport, took: Duration) -> String {
    let mut s = format!(
        "{} IPv4 + {} IPv6 prefixes ({} added, {} changed, {} removed) in {:.1} ms",
        report.v4,
        report.v6,
        report.added,
        report.changed,
        report.removed,
        took.as_secs_f64() * 1e3
    );
    if report.read_kernel {
        s.push_str(", after reading the kernel's tries");
    }
    if report.generation > 0 {
        s.push_str(&format!(
            "; allowlist generation {}: live flows re-check their endpoints on their next packet",
            report.generation
        ));
    }
    s
}

/// Warnings, at most 20 of them in full.
fn log_warnings(origin: &str, warnings: &[String]) {
    for w in warnings.iter().take(20) {
        log::warn!("{origin}: {w}");
    }
    if warnings.len() > 20 {
        log::warn!(
            "{origin}: ... and {} more warning(s) (`vpn-filter registry validate` lists them all)",
            warnings.len() - 20
        );
    }
}
