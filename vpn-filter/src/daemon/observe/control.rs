//! The daemon's end of the control socket (the protocol is described in [`crate::client`]):
//! a Unix stream socket created mode 0600; a peer that is neither root nor the daemon's own
//! user is refused (SO_PEERCRED). A follower has its own bounded queue ([`EventHub`]); the
//! daemon never waits for it.

use std::{
    os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::UnixListener,
    sync::{broadcast::error::RecvError, Semaphore},
};

use crate::{
    client::{status::StatusReport, Reply, Request, DEFAULT_EVENTS_BACKLOG},
    daemon::{
        observe::events::{EventHub, PipelineCounters},
        status::Sources,
    },
};

/// Longest request line accepted.
const MAX_REQUEST: u64 = 4096;
/// Concurrent control connections (followers included).
const MAX_CONNECTIONS: usize = 64;
/// A follower's writes are gathered up to this size.
const FOLLOW_BATCH: usize = 64 * 1024;
fn reply_line(reply: &Reply) -> Vec<u8> {
    let mut v = serde_json::to_vec(reply).unwrap_or_else(|e| {
        format!("{{\"ok\":false,\"error\":\"encoding the reply: {e}\"}}").into_bytes()
    });
    v.push(b'\n');
    v
}

fn error_line(msg: impl Into<String>) -> Vec<u8> {
    reply_line(&Reply {
        ok: false,
        error: Some(msg.into()),
        status: None,
    })
}

/// The daemon's listening socket; the socket file is removed on drop if it is still ours.
pub struct ControlServer {
    /// Bound before the runtime that serves it exists (start-up runs privileged, on one
    /// thread); made a tokio listener in [`ControlServer::into_parts`].
    listener: std::os::unix::net::UnixListener,
    guard: SocketGuard,
}

/// Removes the socket file on drop, unless another daemon has replaced it since.
#[derive(Debug)]
pub struct SocketGuard {
    path: PathBuf,
    ino: u64,
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl ControlServer {
    /// Binds `path` (creating its directory, mode 0755, if missing). A socket file left by a
    /// daemon that is gone is replaced; one a live daemon answers on is an error.
    pub fn bind(path: &Path) -> Result<ControlServer> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                std::fs::create_dir_all(dir).with_context(|| {
                    format!("creating the control socket directory {}", dir.display())
                })?;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                    .with_context(|| format!("chmod {}", dir.display()))?;
            }
        }
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                bail!(
                    "{} exists and is not a socket; refusing to replace it (use --control-socket)",
                    path.display()
                );
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!(
                    "another vpn-filter daemon is listening on {} (use --control-socket to run a second one)",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing the stale socket {}", path.display()))?;
        }
        let listener = std::os::unix::net::UnixListener::bind(path)
            .with_context(|| format!("binding the control socket {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 0600 {}", path.display()))?;
        let ino = std::fs::symlink_metadata(path)?.ino();
        Ok(ControlServer {
            listener,
            guard: SocketGuard {
                path: path.to_path_buf(),
                ino,
            },
        })
    }

    pub fn path(&self) -> &Path {
        &self.guard.path
    }

    /// Splits into the listener (to [`serve`]) and the guard that removes the socket file.
    /// Needs the tokio runtime that will serve it.
    pub fn into_parts(self) -> Result<(UnixListener, SocketGuard)> {
        self.listener
            .set_nonblocking(true)
            .context("making the control socket non-blocking")?;
        let listener = UnixListener::from_std(self.listener)
            .context("registering the control socket with tokio")?;
        Ok((listener, self.guard))
    }
}

/// Accepts connections until the task is cancelled.
pub async fn serve(listener: UnixListener, sources: Sources) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                log::warn!("control socket accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match stream.peer_cred() {
            Ok(c) if c.uid() == 0 || c.uid() == me => {}
            Ok(c) => {
                log::warn!(
                    "control socket: refused a client with uid {} (root only)",
                    c.uid()
                );
                let mut s = stream;
                let _ = s
                    .write_all(&error_line("permission denied: only root may connect"))
                    .await;
                continue;
            }
            Err(e) => {
                log::warn!("control socket: cannot read the peer's credentials: {e}");
                continue;
            }
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            let mut s = stream;
            let _ = s
                .write_all(&error_line(format!(
                    "too many control connections (at most {MAX_CONNECTIONS})"
                )))
                .await;
            continue;
        };
        let sources = sources.clone();
        tokio::spawn(async move {
            let (rd, wr) = stream.into_split();
            let report = || sources.report();
            let ep = Endpoint {
                hub: &sources.hub,
                pipeline: &sources.pipeline,
                report: &report,
            };
            if let Err(e) = handle(rd, wr, &ep).await {
                log::debug!("control connection ended: {e:#}");
            }
            drop(permit);
        });
    }
}

/// What a connection needs from the daemon.
pub struct Endpoint<'a> {
    pub hub: &'a EventHub,
    pub pipeline: &'a PipelineCounters,
    /// Takes a status snapshot.
    pub report: &'a (dyn Fn() -> Result<StatusReport> + Send + Sync),
}

/// Serves one connection: requests until EOF, or an event stream.
pub async fn handle<R, W>(rd: R, mut wr: W, ep: &Endpoint<'_>) -> Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut rd = tokio::io::BufReader::new(rd);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut rd)
            .take(MAX_REQUEST + 1)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        if line.last() != Some(&b'\n') {
            let msg = if n as u64 > MAX_REQUEST {
                format!("request longer than {MAX_REQUEST} bytes")
            } else {
                "request not terminated by a newline".to_string()
            };
            wr.write_all(&error_line(msg)).await?;
            return Ok(());
        }
        let req: Request = match serde_json::from_slice(&line) {
            Ok(r) => r,
            Err(e) => {
                wr.write_all(&error_line(format!(
                    "bad request ({e}); expected {{\"cmd\":\"status\"}} or {{\"cmd\":\"events\",\"follow\":true}}"
                )))
                .await?;
                continue;
            }
        };
        match req.cmd.as_str() {
            "status" => {
                let reply = match (ep.report)() {
                    Ok(r) => Reply {
                        ok: true,
                        error: None,
                        status: Some(r),
                    },
                    Err(e) => Reply {
                        ok: false,
                        error: Some(format!("reading the counters: {e:#}")),
                        status: None,
                    },
                };
                wr.write_all(&reply_line(&reply)).await?;
            }
            "events" => {
                let backlog = req.backlog.unwrap_or(DEFAULT_EVENTS_BACKLOG);
                return serve_events(rd, wr, ep.hub, ep.pipeline, backlog, req.follow).await;
            }
            other => {
                wr.write_all(&error_line(format!(
                    "unknown command {other:?} (expected status or events)"
                )))
                .await?;
            }
        }
    }
}

async fn serve_events<R, W>(
    mut rd: R,
    mut wr: W,
    hub: &EventHub,
    pipeline: &PipelineCounters,
    backlog: usize,
    follow: bool,
) -> Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let ok = reply_line(&Reply {
        ok: true,
        error: None,
        status: None,
    });
    if !follow {
        let mut buf = ok;
        for l in hub.backlog(backlog) {
            buf.extend_from_slice(&l);
        }
        wr.write_all(&buf).await?;
        wr.shutdown().await?;
        return Ok(());
    }
    let (past, mut rx) = hub.subscribe(backlog);
    let mut buf = ok;
    for l in past {
        buf.extend_from_slice(&l);
    }
    wr.write_all(&buf).await?;
    let mut scratch = [0u8; 256];
    loop {
        buf.clear();
        tokio::select! {
            r = rx.recv() => {
                match r {
                    Ok(line) => push_line(&mut buf, line),
                    Err(RecvError::Lagged(n)) => lagged(&mut buf, n, pipeline),
                    Err(RecvError::Closed) => return Ok(()),
                }
                // Gather what else is queued into one write.
                while buf.len() < FOLLOW_BATCH {
                    match rx.try_recv() {
                        Ok(line) => push_line(&mut buf, line),
                        Err(tokio::sync::broadcast::error::TryRecvError::Lagged(n)) => {
                            lagged(&mut buf, n, pipeline)
                        }
                        Err(_) => break,
                    }
                }
                wr.write_all(&buf).await?;
            }
            // The client closed (or sent something it should not): stop following.
            r = rd.read(&mut scratch) => {
                if matches!(r, Ok(0) | Err(_)) {
                    return Ok(());
                }
            }
        }
    }
}

fn push_line(buf: &mut Vec<u8>, line: Bytes) {
    buf.extend_from_slice(&line);
}

fn lagged(buf: &mut Vec<u8>, n: u64, counters: &PipelineCounters) {
    counters
        .follower_dropped
        .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    buf.extend_from_slice(format!("{{\"lagged\":{n}}}\n").as_bytes());
}

#[cfg(test)]
mod tests {
    use tokio::net::UnixStream;

    use super::*;
    use crate::client::{parse_stream_line, StreamLine};

    struct Fixture {
        hub: EventHub,
        pipeline: Arc<PipelineCounters>,
    }

    fn fixture(queue: usize) -> Fixture {
        Fixture {
            hub: EventHub::new(100, queue),
            pipeline: Arc::new(PipelineCounters::default()),
        }
    }

    fn no_status() -> Result<StatusReport> {
        Err(anyhow::anyhow!("no kernel in unit tests"))
    }

    /// A connection served like the daemon serves one; returns the client end.
    fn connection(
        f: &Fixture,
    ) -> (
        tokio::task::JoinHandle<Result<()>>,
        tokio::io::BufReader<UnixStream>,
    ) {
        let (client, server) = UnixStream::pair().unwrap();
        let hub = f.hub.clone();
        let pipeline = f.pipeline.clone();
        let task = tokio::spawn(async move {
            let (rd, wr) = server.into_split();
            let ep = Endpoint {
                hub: &hub,
                pipeline: &pipeline,
                report: &no_status,
            };
            handle(rd, wr, &ep).await
        });
        (task, tokio::io::BufReader::new(client))
    }

    async fn follower(
        f: &Fixture,
        backlog: usize,
    ) -> (
        tokio::task::JoinHandle<Result<()>>,
        tokio::io::BufReader<UnixStream>,
    ) {
        let (task, mut client) = connection(f);
        let req = format!("{{\"cmd\":\"events\",\"follow\":true,\"backlog\":{backlog}}}\n");
        client.get_mut().write_all(req.as_bytes()).await.unwrap();
        (task, client)
    }

    async fn read_lines(client: &mut tokio::io::BufReader<UnixStream>, want: usize) -> Vec<String> {
        let mut lines = Vec::new();
        while lines.len() < want {
            let mut l = String::new();
            let n = tokio::time::timeout(Duration::from_secs(5), client.read_line(&mut l))
                .await
                .expect("lines arrive within 5 s")
                .unwrap();
            assert!(n > 0, "stream ended early after {lines:?}");
            lines.push(l.trim_end_matches('\n').to_string());
        }
        lines
    }

    fn publish(hub: &EventHub, range: std::ops::Range<usize>) {
        let mut lines: Vec<Bytes> = range
            .map(|i| Bytes::from(format!("{{\"n\":{i}}}\n")))
            .collect();
        hub.publish(&mut lines);
    }

    async fn wait_followers(hub: &EventHub, n: usize) {
        for _ in 0..500 {
            if hub.followers() == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{} followers, expected {n}", hub.followers());
    }

    #[tokio::test]
    async fn a_follower_gets_its_backlog_then_new_events() {
        let f = fixture(100);
        publish(&f.hub, 0..3);
        let (_task, mut client) = follower(&f, 2).await;
        let lines = read_lines(&mut client, 3).await;
        assert_eq!(lines, ["{\"ok\":true}", "{\"n\":1}", "{\"n\":2}"]);
        publish(&f.hub, 3..5);
        let lines = read_lines(&mut client, 2).await;
        assert_eq!(lines, ["{\"n\":3}", "{\"n\":4}"]);
    }

    #[tokio::test]
    async fn events_without_follow_sends_the_backlog_and_closes() {
        let f = fixture(100);
        publish(&f.hub, 0..3);
        let (task, mut client) = connection(&f);
        client
            .write_all(b"{\"cmd\":\"events\",\"backlog\":5}\n")
            .await
            .unwrap();
        let mut all = String::new();
        tokio::time::timeout(Duration::from_secs(5), client.read_to_string(&mut all))
            .await
            .expect("the daemon closes after the backlog")
            .unwrap();
        assert_eq!(all, "{\"ok\":true}\n{\"n\":0}\n{\"n\":1}\n{\"n\":2}\n");
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_slow_follower_misses_lines_counted_and_never_blocks_the_publisher_or_others() {
        let f = fixture(16);
        let (_slow_task, _slow_client) = follower(&f, 0).await; // does not read for now
        let (_fast_task, mut fast) = follower(&f, 0).await;
        assert_eq!(read_lines(&mut fast, 1).await, ["{\"ok\":true}"]);
        wait_followers(&f.hub, 2).await;
        // The slow client's socket buffer fills, its task blocks in write and its queue
        // overflows; publishing must go on regardless.
        let pad = "x".repeat(1000);
        let mut got = 0usize;
        for chunk in 0..1000 {
            let mut lines: Vec<Bytes> = (0..10)
                .map(|i| Bytes::from(format!("{{\"n\":{},\"pad\":\"{pad}\"}}\n", chunk * 10 + i)))
                .collect();
            f.hub.publish(&mut lines);
            // Keep the fast follower drained so only the slow one lags.
            got += read_lines(&mut fast, 10).await.len();
        }
        assert_eq!(got, 10_000, "the fast follower gets every line");
        assert_eq!(f.hub.followers(), 2);
        // When the slow client finally reads, it learns how many lines it missed, and the
        // daemon has counted them.
        let mut slow = _slow_client;
        let mut lagged = None;
        let mut seen = 0;
        while lagged.is_none() {
            let l = read_lines(&mut slow, 1).await.remove(0);
            seen += 1;
            if let StreamLine::Lagged(n) = parse_stream_line(&l) {
                lagged = Some(n);
            }
        }
        let n = lagged.expect("a lag notice");
        assert!(n > 0 && seen < 10_000, "lag {n} after {seen} lines");
        assert!(PipelineCounters::get(&f.pipeline.follower_dropped) >= n);
    }

    #[tokio::test]
    async fn a_lagging_follower_is_told_how_many_it_missed() {
        let f = fixture(4);
        let (_, mut rx) = f.hub.subscribe(0);
        publish(&f.hub, 0..10);
        let mut buf = Vec::new();
        match rx.recv().await {
            Err(RecvError::Lagged(n)) => lagged(&mut buf, n, &f.pipeline),
            other => panic!("expected a lag, got {other:?}"),
        }
        assert_eq!(String::from_utf8(buf).unwrap(), "{\"lagged\":6}\n");
        assert_eq!(parse_stream_line("{\"lagged\":6}"), StreamLine::Lagged(6));
        assert_eq!(PipelineCounters::get(&f.pipeline.follower_dropped), 6);
    }

    #[tokio::test]
    async fn the_follower_task_ends_when_the_client_disconnects() {
        let f = fixture(16);
        let (task, mut client) = follower(&f, 0).await;
        assert_eq!(read_lines(&mut client, 1).await, ["{\"ok\":true}"]);
        drop(client);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the follower task ends")
            .unwrap()
            .unwrap();
        wait_followers(&f.hub, 0).await;
    }

    #[tokio::test]
    async fn bad_requests_get_an_error_and_the_connection_stays_usable() {
        let f = fixture(16);
        let (_task, mut client) = connection(&f);
        client.get_mut().write_all(b"not json\n").await.unwrap();
        let l = read_lines(&mut client, 1).await;
        assert!(
            l[0].starts_with("{\"ok\":false,\"error\":\"bad request"),
            "{l:?}"
        );
        client
            .get_mut()
            .write_all(b"{\"cmd\":\"reboot\"}\n")
            .await
            .unwrap();
        let l = read_lines(&mut client, 1).await;
        assert!(l[0].contains("unknown command \\\"reboot\\\""), "{l:?}");
        client
            .get_mut()
            .write_all(b"{\"cmd\":\"status\"}\n")
            .await
            .unwrap();
        let l = read_lines(&mut client, 1).await;
        assert!(l[0].contains("no kernel in unit tests"), "{l:?}");
    }

    #[tokio::test]
    async fn an_overlong_request_is_refused() {
        let f = fixture(16);
        let (task, mut client) = connection(&f);
        client.get_mut().write_all(&vec![b'x'; 5000]).await.unwrap();
        let l = read_lines(&mut client, 1).await;
        assert!(l[0].contains("longer than 4096 bytes"), "{l:?}");
        task.await.unwrap().unwrap();
    }
}
