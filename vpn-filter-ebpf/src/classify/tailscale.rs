//! Tailscale disco packets (magic `TS💬`).

use super::*;

pub(super) const DISCO_MAGIC: [u8; 6] = [0x54, 0x53, 0xf0, 0x9f, 0x92, 0xac];

/// The prefilter's check: the magic's first two bytes.
#[inline(always)]
pub(super) fn is_head(head: [u8; 4]) -> bool {
    head[0] == DISCO_MAGIC[0] && head[1] == DISCO_MAGIC[1]
}

/// A disco packet: the six-byte magic, a 32-byte sender key and a 24-byte nonce at least.
#[inline(always)]
pub(super) fn disco(w: &[u8; WINDOW], len: usize) -> Option<Detection> {
    if len >= 62
        && w[0] == DISCO_MAGIC[0]
        && w[1] == DISCO_MAGIC[1]
        && w[2] == DISCO_MAGIC[2]
        && w[3] == DISCO_MAGIC[3]
        && w[4] == DISCO_MAGIC[4]
        && w[5] == DISCO_MAGIC[5]
    {
        return Some(Detection::new(
            Protocol::TailscaleDisco,
            Message::DiscoPacket,
            Strength::Strong,
        ));
    }
    None
}
