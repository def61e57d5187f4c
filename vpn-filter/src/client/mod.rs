//! The control-socket protocol and its client: how `vpn-filter status`, `vpn-filter events` and `vpn-filter
//! top` talk to a running `vpn-filter run`.
//!
//! A Unix stream socket (default [`DEFAULT_SOCKET`]) created mode 0600 by the daemon; a peer
//! that is neither root nor the daemon's own user is refused (SO_PEERCRED), so only root may
//! connect. The protocol is line-based JSON, one request per line:
//!
//! ```text
//! > {"cmd":"status"}
//! < {"ok":true,"status":{...}}                     (a StatusReport; more requests may follow)
//! > {"cmd":"events","follow":true,"backlog":10}
//! < {"ok":true}
//! < {...event...}                                  (the last `backlog` events, then new ones)
//! < {"lagged":120}                                 (this follower was too slow: 120 missed)
//! ```
//!
//! Errors are `{"ok":false,"error":"..."}`. `events` without `follow` sends the backlog and
//! closes. A follower has its own bounded queue (`daemon::observe::events::EventHub`); the daemon never
//! waits for it.

pub mod event;
pub mod status;

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    time::Duration,
};

use anyhow::{anyhow, bail, Context as _, Result};
use serde::{Deserialize, Serialize};

use self::status::StatusReport;

/// Where the daemon listens unless told otherwise (`--control-socket`).
pub const DEFAULT_SOCKET: &str = "/run/vpn-filter/control.sock";
/// Default number of past events `events` sends first.
pub const DEFAULT_EVENTS_BACKLOG: usize = 10;

/// A request line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub cmd: String,
    /// `events`: keep streaming after the backlog.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub follow: bool,
    /// `events`: how many past events to send first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backlog: Option<usize>,
}

/// A reply line.
#[derive(Debug, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<StatusReport>,
}

// The client side is blocking: the CLI commands have nothing else to do.

/// Connects to the daemon, explaining the usual failures.
pub fn connect(path: &Path) -> Result<std::os::unix::net::UnixStream> {
    std::os::unix::net::UnixStream::connect(path).map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                " (is `vpn-filter run` running? pass --control-socket if it uses another path)"
            }
            std::io::ErrorKind::PermissionDenied => " (only root may connect)",
            _ => "",
        };
        anyhow!(
            "cannot connect to the vpn-filter daemon at {}: {e}{hint}",
            path.display()
        )
    })
}

fn send(stream: &mut std::os::unix::net::UnixStream, req: &Request) -> Result<()> {
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    stream.write_all(&line).context("sending to the daemon")?;
    Ok(())
}

fn read_reply(reader: &mut impl std::io::BufRead) -> Result<Reply> {
    let mut line = String::new();
    let n = reader
        .read_line(&mut line)
        .context("reading the daemon's reply")?;
    if n == 0 {
        bail!("the daemon closed the connection without replying");
    }
    let reply: Reply = serde_json::from_str(&line)
        .with_context(|| format!("the daemon's reply is not valid: {}", line.trim_end()))?;
    if !reply.ok {
        bail!(
            "the daemon refused: {}",
            reply.error.as_deref().unwrap_or("no reason given")
        );
    }
    Ok(reply)
}

/// A connection that asks for status reports (one per call).
pub struct StatusClient {
    writer: std::os::unix::net::UnixStream,
    reader: BufReader<std::os::unix::net::UnixStream>,
}

impl StatusClient {
    pub fn connect(path: &Path) -> Result<Self> {
        let s = connect(path)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let reader = BufReader::new(s.try_clone()?);
        Ok(StatusClient { writer: s, reader })
    }

    pub fn status(&mut self) -> Result<StatusReport> {
        send(
            &mut self.writer,
            &Request {
                cmd: "status".into(),
                follow: false,
                backlog: None,
            },
        )?;
        read_reply(&mut self.reader)?
            .status
            .ok_or_else(|| anyhow!("the daemon's reply carries no status"))
    }
}

/// One status report from the daemon at `path`.
pub fn request_status(path: &Path) -> Result<StatusReport> {
    StatusClient::connect(path)?.status()
}

/// A line of an event stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamLine {
    /// An event record, as the daemon wrote it (JSON, no trailing newline).
    Event(String),
    /// This follower was too slow; the daemon skipped this many lines for it.
    Lagged(u64),
}

/// Classifies a stream line.
pub fn parse_stream_line(line: &str) -> StreamLine {
    #[derive(Deserialize)]
    struct Lag {
        lagged: u64,
    }
    if line.starts_with("{\"lagged\":") {
        if let Ok(l) = serde_json::from_str::<Lag>(line) {
            return StreamLine::Lagged(l.lagged);
        }
    }
    StreamLine::Event(line.to_string())
}

/// Streams events from the daemon at `path`: the last `backlog` ones, then (with `follow`)
/// new ones until the daemon goes away or `on_line` returns false.
pub fn stream_events(
    path: &Path,
    backlog: usize,
    follow: bool,
    mut on_line: impl FnMut(StreamLine) -> bool,
) -> Result<()> {
    let mut s = connect(path)?;
    send(
        &mut s,
        &Request {
            cmd: "events".into(),
            follow,
            backlog: Some(backlog),
        },
    )?;
    let mut reader = BufReader::with_capacity(64 * 1024, s);
    read_reply(&mut reader)?;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).context("reading events")? == 0 {
            return Ok(());
        }
        if !on_line(parse_stream_line(line.trim_end_matches('\n'))) {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_lines_are_passed_through_verbatim() {
        let l = r#"{"time":"x","lagged_note":1}"#;
        assert_eq!(parse_stream_line(l), StreamLine::Event(l.to_string()));
    }
}
