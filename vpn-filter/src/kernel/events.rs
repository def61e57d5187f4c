//! The `EVENTS` ring buffer: one record per dropped or monitored packet (a
//! `vpn_filter_common::Event`), read in order, without busy polling.

use std::{
    io,
    ops::Deref,
    os::fd::{AsRawFd, RawFd},
};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

/// The ring buffer, taken from the [`super::Filter`] once ([`super::Filter::take_event_ring`]).
pub struct EventRing {
    ring: RingBuf<MapData>,
}

impl EventRing {
    pub(super) fn new(ring: RingBuf<MapData>) -> EventRing {
        EventRing { ring }
    }

    /// The next record waiting, if any; never blocks.
    pub fn next_record(&mut self) -> Option<impl Deref<Target = [u8]> + '_> {
        self.ring.next()
    }

    /// The ring registered with tokio, to wait on its epoll readiness (needs a runtime).
    pub fn into_async(self) -> Result<AsyncEventRing> {
        // SAFETY: the RingBuf owns its map fd, which stays open and unchanged until the RingBuf
        // (owned by the AsyncFd from here on) is dropped.
        let fd = unsafe { AsyncFd::register(self) }
            .context("registering the event ring buffer with tokio")?;
        Ok(AsyncEventRing { fd })
    }
}

impl AsRawFd for EventRing {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}

/// An [`EventRing`] that can be awaited.
pub struct AsyncEventRing {
    fd: AsyncFd<EventRing>,
}

impl AsyncEventRing {
    /// Waits until records are waiting, then hands every waiting record to `record`, in order.
    /// Cancel-safe: nothing is read before the wait completes.
    pub async fn drain(&mut self, mut record: impl FnMut(&[u8])) -> io::Result<()> {
        let mut guard = self.fd.readable_mut().await?;
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next_record() {
            record(&item);
        }
        guard.clear_ready();
        Ok(())
    }
}
