//! Where the registry feed comes from: a local file, or an HTTP(S) URL.
//!
//! - **File**: re-read when its identity (device, inode, size, mtime, ctime) or its signature
//!   file's changes, once the change has held still for one poll interval (so a writer that
//!   rewrites the file in place is not caught midway; the recommended way to publish is still
//!   to write a temporary file and `rename(2)` it over the feed, which is atomic). The file is
//!   stat'ed again after reading; a change during the read discards the read.
//! - **URL**: polled every interval with `If-None-Match` (the ETag of the last fetch); `304
//!   Not Modified` costs one round trip. The body is read up to the size limit, never beyond.
//!
//! With a pinned key, the detached signature is `FEED.sig` beside the file, or the URL with
//! `.sig` appended to its path (`https://h/feed.json?x=1` -> `https://h/feed.json.sig?x=1`).

use std::{
    io::Read as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{anyhow, bail, Context as _, Result};

use crate::registry::signature::MAX_SIGNATURE_BYTES;

/// A feed as fetched, before any check.
#[derive(Clone, Debug)]
pub struct Fetched {
    pub bytes: Vec<u8>,
    /// The detached signature's bytes, when one was fetched (only with a pinned key).
    pub signature: Option<Vec<u8>>,
    /// Where the signature was looked for (for messages).
    pub signature_at: String,
    /// The HTTP ETag the feed was served with.
    pub etag: Option<String>,
}

/// `--registry`: a file path or an http(s) URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceSpec {
    File(PathBuf),
    Url(reqwest::Url),
}

impl SourceSpec {
    pub fn parse(s: &str) -> Result<SourceSpec> {
        let lower = s.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            let url = reqwest::Url::parse(s).with_context(|| format!("registry URL \"{s}\""))?;
            return Ok(SourceSpec::Url(url));
        }
        if let Some((scheme, _)) = s.split_once("://") {
            bail!("registry source \"{s}\": unsupported scheme \"{scheme}\" (a file path, http:// or https://)");
        }
        Ok(SourceSpec::File(PathBuf::from(s)))
    }

    /// The source as given, for messages and the state file.
    pub fn describe(&self) -> String {
        match self {
            SourceSpec::File(p) => p.display().to_string(),
            SourceSpec::Url(u) => u.to_string(),
        }
    }
}

/// `FEED.sig` beside a file.
pub fn signature_path(feed: &Path) -> PathBuf {
    let mut s = feed.as_os_str().to_os_string();
    s.push(".sig");
    PathBuf::from(s)
}

/// The feed URL with `.sig` appended to its path.
pub fn signature_url(feed: &reqwest::Url) -> reqwest::Url {
    let mut u = feed.clone();
    let path = format!("{}.sig", feed.path());
    u.set_path(&path);
    u
}

/// Identity of a file version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        size: m.len(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

/// A feed file (and its signature file), watched by polling.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    sig_path: PathBuf,
    with_signature: bool,
    max_bytes: u64,
    /// The version last read (applied or refused): not read again.
    seen: Option<(Option<Stamp>, Option<Stamp>)>,
    /// A new version seen at the previous poll, read if it still holds now.
    pending: Option<(Option<Stamp>, Option<Stamp>)>,
}

impl FileSource {
    pub fn new(path: PathBuf, with_signature: bool, max_bytes: u64) -> FileSource {
        FileSource {
            sig_path: signature_path(&path),
            path,
            with_signature,
            max_bytes,
            seen: None,
            pending: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn stamps(&self) -> (Option<Stamp>, Option<Stamp>) {
        (
            stamp(&self.path),
            if self.with_signature {
                stamp(&self.sig_path)
            } else {
                None
            },
        )
    }

    /// Reads the feed now (at startup).
    pub fn read_now(&mut self) -> Result<Fetched> {
        let stamps = self.stamps();
        self.seen = Some(stamps);
        self.pending = None;
        self.read(stamps)
    }

    /// `None` when nothing changed (or a change is still settling); otherwise the new version,
    /// or why it could not be read.
    pub fn poll(&mut self) -> Option<Result<Fetched>> {
        let stamps = self.stamps();
        if self.seen == Some(stamps) {
            self.pending = None;
            return None;
        }
        if self.pending != Some(stamps) {
            self.pending = Some(stamps);
            return None;
        }
        self.pending = None;
        self.seen = Some(stamps);
        Some(self.read(stamps))
    }

    fn read(&mut self, stamps: (Option<Stamp>, Option<Stamp>)) -> Result<Fetched> {
        let bytes = read_limited(&self.path, self.max_bytes)?;
        let signature = if self.with_signature {
            match read_limited(&self.sig_path, MAX_SIGNATURE_BYTES as u64) {
                Ok(s) => Some(s),
                Err(_) if !self.sig_path.exists() => None,
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        if self.stamps() != stamps {
            // Written to while we read: forget this version, the next poll sees the new one.
            self.seen = None;
            bail!(
                "{} changed while being read; it will be read again once it holds still",
                self.path.display()
            );
        }
        Ok(Fetched {
            bytes,
            signature,
            signature_at: self.sig_path.display().to_string(),
            etag: None,
        })
    }
}

/// Reads a file, refusing one over `max` bytes (without reading it all).
fn read_limited(path: &Path, max: u64) -> Result<Vec<u8>> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let len = f
        .metadata()
        .with_context(|| format!("cannot stat {}", path.display()))?
        .len();
    if len > max {
        bail!(
            "{} is {len} bytes, over the limit of {max} (--max-feed-bytes)",
            path.display()
        );
    }
    let mut bytes = Vec::with_capacity(len as usize);
    f.take(max + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() as u64 > max {
        bail!(
            "{} grew past the limit of {max} bytes (--max-feed-bytes) while being read",
            path.display()
        );
    }
    Ok(bytes)
}

/// What an HTTP poll found.
#[derive(Debug)]
pub enum HttpPoll {
    NotModified,
    New(Fetched),
}

/// A feed URL.
#[derive(Clone, Debug)]
pub struct HttpSource {
    client: reqwest::Client,
    url: reqwest::Url,
    with_signature: bool,
    max_bytes: u64,
    /// CA certificates trusted in addition to the system's.
    extra_roots: Vec<reqwest::Certificate>,
}

/// The HTTP client: our user agent, timeouts, and the extra CA certificates.
fn client(extra_roots: &[reqwest::Certificate]) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("vpn-filter/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT);
    for c in extra_roots {
        builder = builder.add_root_certificate(c.clone());
    }
    builder.build().context("building the HTTP client")
}

/// Connect timeout; a whole request may take [`REQUEST_TIMEOUT`].
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

impl HttpSource {
    /// `extra_ca`: a PEM file of CA certificates trusted in addition to the system's.
    pub fn new(
        url: reqwest::Url,
        with_signature: bool,
        max_bytes: u64,
        extra_ca: Option<&Path>,
    ) -> Result<HttpSource> {
        let mut extra_roots = Vec::new();
        if let Some(path) = extra_ca {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading CA certificates {}", path.display()))?;
            extra_roots = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("{}: not a PEM certificate bundle", path.display()))?;
            if extra_roots.is_empty() {
                bail!("{}: no certificate found", path.display());
            }
        }
        Ok(HttpSource {
            client: client(&extra_roots)?,
            url,
            with_signature,
            max_bytes,
            extra_roots,
        })
    }

    /// A new client, without the pooled connections of the old one: those belong to the
    /// tokio runtime they were opened on (the controller's start-up runtime ends before it
    /// serves).
    pub fn reset_connections(&mut self) -> Result<()> {
        self.client = client(&self.extra_roots)?;
        Ok(())
    }

    pub fn url(&self) -> &reqwest::Url {
        &self.url
    }

    /// One poll: `GET` with `If-None-Match: etag` when given; with a pinned key, then the
    /// signature.
    ///
    /// The feed and its signature are two requests, and a publication may land between them
    /// (`registry publish` switches both files at once, but not between a client's two
    /// requests). So after the signature, a `HEAD` with `If-None-Match` carrying the feed's
    /// new ETag asks whether the feed is still the one read: `304` proves the pair belongs
    /// together; anything else means a new publication, and both are fetched again (at most
    /// [`PAIR_ATTEMPTS`] times; the last pair is then judged as it is). Without an ETag
    /// there is nothing to ask and the pair is taken as read.
    pub async fn fetch(&self, etag: Option<&str>) -> Result<HttpPoll> {
        match self.fetch_feed(etag).await? {
            None => Ok(HttpPoll::NotModified),
            Some(feed) => self.with_signature_of(feed).await,
        }
    }

    /// A poll while the version the server serves was refused: `If-None-Match` carries the
    /// refused version's ETag, so while it stays the answer is a `304` without a body
    /// instead of the whole feed again. With a key, the signature is fetched too (it is
    /// small), since a signature published after its feed is the usual way out. `None`: the
    /// refused feed and signature are still what the server serves.
    pub async fn fetch_after_refusal(
        &self,
        refused_etag: &str,
        refused_signature: Option<&[u8]>,
    ) -> Result<Option<HttpPoll>> {
        match self.fetch_feed(Some(refused_etag)).await? {
            Some(feed) => self.with_signature_of(feed).await.map(Some),
            None if !self.with_signature => Ok(None),
            None => {
                if self.fetch_signature().await?.as_deref() == refused_signature {
                    Ok(None)
                } else {
                    self.fetch(None).await.map(Some)
                }
            }
        }
    }

    /// The detached signature (`None`: the server has none, 404).
    async fn fetch_signature(&self) -> Result<Option<Vec<u8>>> {
        let sig_url = signature_url(&self.url);
        let resp = self
            .client
            .get(sig_url.clone())
            .send()
            .await
            .map_err(|e| anyhow!("GET {sig_url}: {}", error_chain(&e)))?;
        match resp.status() {
            s if s.is_success() => Ok(Some(
                read_body(resp, MAX_SIGNATURE_BYTES as u64, &sig_url).await?,
            )),
            reqwest::StatusCode::NOT_FOUND => Ok(None),
            s => bail!("GET {sig_url}: HTTP {s}"),
        }
    }

    /// A fetched feed completed with its signature, the pair checked as [`HttpSource::fetch`]
    /// describes.
    async fn with_signature_of(&self, first: (Vec<u8>, Option<String>)) -> Result<HttpPoll> {
        let mut feed = first;
        let mut attempt = 1;
        loop {
            let (bytes, new_etag) = feed;
            let signature = if self.with_signature {
                self.fetch_signature().await?
            } else {
                None
            };
            if let (true, Some(tag)) = (self.with_signature, new_etag.as_deref()) {
                if attempt < PAIR_ATTEMPTS && !self.still(tag).await? {
                    log::info!(
                        "{}: a new version was published while its signature was fetched; fetching both again",
                        self.url
                    );
                    attempt += 1;
                    feed = self.fetch_feed(None).await?.ok_or_else(|| {
                        anyhow!(
                            "GET {}: 304 Not Modified to a request without ETag",
                            self.url
                        )
                    })?;
                    continue;
                }
            }
            return Ok(HttpPoll::New(Fetched {
                bytes,
                signature,
                signature_at: signature_url(&self.url).to_string(),
                etag: new_etag,
            }));
        }
    }

    /// `GET` of the feed: `None` for `304 Not Modified`, else the body and its ETag.
    async fn fetch_feed(&self, etag: Option<&str>) -> Result<Option<(Vec<u8>, Option<String>)>> {
        let mut req = self.client.get(self.url.clone());
        if let Some(tag) = etag {
            req = req.header(reqwest::header::IF_NONE_MATCH, tag);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| anyhow!("GET {}: {}", self.url, error_chain(&e)))?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_MODIFIED {
            return Ok(None);
        }
        if !status.is_success() {
            bail!("GET {}: HTTP {status}", self.url);
        }
        let new_etag = resp
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = read_body(resp, self.max_bytes, &self.url).await?;
        Ok(Some((bytes, new_etag)))
    }

    /// Is the feed still the version with ETag `tag`? (`HEAD` with `If-None-Match`.)
    async fn still(&self, tag: &str) -> Result<bool> {
        let resp = self
            .client
            .head(self.url.clone())
            .header(reqwest::header::IF_NONE_MATCH, tag)
            .send()
            .await
            .map_err(|e| anyhow!("HEAD {}: {}", self.url, error_chain(&e)))?;
        Ok(resp.status() == reqwest::StatusCode::NOT_MODIFIED)
    }
}

/// How many times a feed and its signature are fetched when publications keep landing
/// between the two requests.
pub const PAIR_ATTEMPTS: u32 = 3;

async fn read_body(mut resp: reqwest::Response, max: u64, url: &reqwest::Url) -> Result<Vec<u8>> {
    if let Some(len) = resp.content_length() {
        if len > max {
            bail!("GET {url}: {len} bytes announced, over the limit of {max} (--max-feed-bytes)");
        }
    }
    let mut body = Vec::with_capacity(resp.content_length().unwrap_or(0) as usize);
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| anyhow!("GET {url}: reading the body: {}", error_chain(&e)))?
    {
        if (body.len() + chunk.len()) as u64 > max {
            bail!("GET {url}: the body exceeds the limit of {max} bytes (--max-feed-bytes)");
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// An error and its causes on one line (reqwest's own message omits the cause).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    };

    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpListener,
    };

    use super::*;

    #[test]
    fn sources_are_told_apart_by_scheme() {
        assert_eq!(
            SourceSpec::parse("/etc/vpn-filter/registry.json").unwrap(),
            SourceSpec::File("/etc/vpn-filter/registry.json".into())
        );
        assert!(matches!(
            SourceSpec::parse("https://registry.example/feed.json").unwrap(),
            SourceSpec::Url(_)
        ));
        let err = SourceSpec::parse("ftp://x/feed").unwrap_err().to_string();
        assert!(err.contains("unsupported scheme"), "{err}");
    }

    #[test]
    fn the_signature_url_appends_sig_to_the_path_not_the_query() {
        let u = reqwest::Url::parse("https://h/feeds/feed.json?token=1").unwrap();
        assert_eq!(
            signature_url(&u).as_str(),
            "https://h/feeds/feed.json.sig?token=1"
        );
        assert_eq!(
            signature_path(Path::new("/etc/feed.csv")),
            Path::new("/etc/feed.csv.sig")
        );
    }

    struct TempFile(PathBuf);

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn temp_file(tag: &str, content: &[u8]) -> TempFile {
        let p =
            std::env::temp_dir().join(format!("vpn-filter-source-{tag}-{}", std::process::id()));
        std::fs::write(&p, content).unwrap();
        TempFile(p)
    }

    #[test]
    fn a_changed_file_is_read_only_once_it_holds_still_for_a_poll() {
        let f = temp_file("settle", b"one");
        let mut src = FileSource::new(f.0.clone(), false, 1024);
        assert_eq!(src.read_now().unwrap().bytes, b"one");
        assert!(src.poll().is_none(), "unchanged");
        std::fs::write(&f.0, b"two, longer").unwrap();
        assert!(src.poll().is_none(), "a fresh change waits one poll");
        let got = src.poll().expect("read once it held still").unwrap();
        assert_eq!(got.bytes, b"two, longer");
        assert!(src.poll().is_none(), "not read again");
    }

    #[test]
    fn a_file_over_the_size_limit_is_refused_without_reading_it() {
        let f = temp_file("limit", &[b'x'; 2000]);
        let mut src = FileSource::new(f.0.clone(), false, 1000);
        let err = src.read_now().unwrap_err().to_string();
        assert!(err.contains("2000 bytes, over the limit of 1000"), "{err}");
    }

    /// A one-connection-at-a-time HTTP/1.1 server on loopback that serves `body` with ETag
    /// `"v1"` and answers `304` when the request carries `If-None-Match: "v1"`.
    async fn serve(body: &'static [u8], seen_304: Arc<AtomicUsize>) -> reqwest::Url {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut sock, _) = listener.accept().await.unwrap();
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = sock.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    req.extend_from_slice(&buf[..n]);
                }
                let text = String::from_utf8_lossy(&req).to_ascii_lowercase();
                let resp = if text.contains("if-none-match: \"v1\"") {
                    seen_304.fetch_add(1, Ordering::SeqCst);
                    b"HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\nconnection: close\r\n\r\n"
                        .to_vec()
                } else {
                    let mut r = format!(
                        "HTTP/1.1 200 OK\r\netag: \"v1\"\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    r.extend_from_slice(body);
                    r
                };
                sock.write_all(&resp).await.unwrap();
                sock.shutdown().await.ok();
            }
        });
        reqwest::Url::parse(&format!("http://{addr}/feed.json")).unwrap()
    }

    #[tokio::test]
    async fn an_http_source_sends_the_etag_back_and_gets_not_modified() {
        let seen_304 = Arc::new(AtomicUsize::new(0));
        let url = serve(b"{\"serial\": 1}", seen_304.clone()).await;
        let src = HttpSource::new(url, false, 1 << 20, None).unwrap();
        let HttpPoll::New(first) = src.fetch(None).await.unwrap() else {
            panic!("the first fetch has no ETag and gets the body");
        };
        assert_eq!(first.bytes, b"{\"serial\": 1}");
        assert_eq!(first.etag.as_deref(), Some("\"v1\""));
        let again = src.fetch(first.etag.as_deref()).await.unwrap();
        assert!(matches!(again, HttpPoll::NotModified), "{again:?}");
        assert_eq!(seen_304.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_http_body_over_the_limit_is_refused() {
        let url = serve(&[b'x'; 4096], Arc::new(AtomicUsize::new(0))).await;
        let src = HttpSource::new(url, false, 1000, None).unwrap();
        let err = src.fetch(None).await.unwrap_err().to_string();
        assert!(err.contains("over the limit of 1000"), "{err}");
    }

    #[tokio::test]
    async fn an_unreachable_url_names_the_cause() {
        // A port nothing listens on: bind, note the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = reqwest::Url::parse(&format!("http://127.0.0.1:{port}/feed.json")).unwrap();
        let src = HttpSource::new(url, false, 1000, None).unwrap();
        let err = src.fetch(None).await.unwrap_err().to_string();
        assert!(err.to_ascii_lowercase().contains("connect"), "{err}");
    }
}
