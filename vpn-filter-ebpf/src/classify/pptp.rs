//! PPTP: the TCP control channel's magic cookie, and enhanced GRE (version 1) carrying PPP.

use super::*;

pub(super) const PPTP_MAGIC: [u8; 4] = [0x1a, 0x2b, 0x3c, 0x4d];

/// GRE header (first four bytes after the IP header): only enhanced GRE (version 1) carrying
/// PPP (0x880B) is PPTP. GRE version 0 (enterprise tunnels, ERSPAN) is never touched.
#[inline(always)]
pub fn classify_gre(head: [u8; 4]) -> Option<Detection> {
    let key_present = head[0] & 0x20 != 0;
    let version = head[1] & 0x07;
    if key_present && version == 1 && head[2] == 0x88 && head[3] == 0x0b {
        return Some(Detection::new(
            Protocol::Pptp,
            Message::PptpGre,
            Strength::Strong,
        ));
    }
    None
}

/// PPTP's TCP control channel: length, message type 1 (control), the magic cookie.
#[inline(always)]
pub(super) fn control(w: &[u8; WINDOW], len: usize) -> Option<Detection> {
    let prefix = be16(w[0], w[1]) as usize;
    if len >= 16
        && w[2] == 0
        && w[3] == 1
        && w[4] == PPTP_MAGIC[0]
        && w[5] == PPTP_MAGIC[1]
        && w[6] == PPTP_MAGIC[2]
        && w[7] == PPTP_MAGIC[3]
        && prefix >= 16
        && prefix <= len
    {
        return Some(Detection::new(
            Protocol::Pptp,
            Message::PptpControl,
            Strength::Strong,
        ));
    }
    None
}
