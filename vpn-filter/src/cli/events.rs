//! `vpn-filter events`: the running daemon's recent drop events, and with --follow new ones.

use std::{io::Write as _, path::PathBuf};

use anyhow::Result;

use crate::client::{self, stream_events, StreamLine, DEFAULT_EVENTS_BACKLOG};

#[derive(Debug, Clone, clap::Args)]
pub struct EventsArgs {
    /// Keep printing new events as they happen (until Ctrl-C).
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Past events to print first (the daemon keeps the last 1000).
    #[arg(long, short = 'n', default_value_t = DEFAULT_EVENTS_BACKLOG, value_name = "N")]
    pub lines: usize,
    /// The daemon's control socket.
    #[arg(long, value_name = "PATH", default_value = client::DEFAULT_SOCKET)]
    pub control_socket: PathBuf,
}

/// Prints event lines to stdout (JSON lines, as the daemon writes them); a note on stderr
/// when this follower was too slow and missed some. Ends quietly when stdout is closed.
pub fn events(args: EventsArgs) -> Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut stdout_closed = false;
    stream_events(
        &args.control_socket,
        args.lines,
        args.follow,
        |line| match line {
            StreamLine::Event(l) => {
                stdout_closed = writeln!(out, "{l}").is_err();
                !stdout_closed
            }
            StreamLine::Lagged(n) => {
                eprintln!(
                    "vpn-filter events: too slow, the daemon skipped {n} events for this follower"
                );
                true
            }
        },
    )?;
    if args.follow && !stdout_closed {
        eprintln!("vpn-filter events: the daemon closed the stream (stopped?)");
    }
    Ok(())
}
