//! L2TP v2/v3 control messages.

use super::*;

#[inline(always)]
pub(super) fn l2tp(w: &[u8; WINDOW], len: usize) -> Option<Detection> {
    // Control messages have T, L and S bits set (0xC8) and a length field equal to the payload.
    if len < 12 || be16(w[2], w[3]) as usize != len {
        return None;
    }
    if w[1] == 0x03 {
        // L2TPv3 over UDP: control header carries a 32-bit connection id.
        return Some(Detection::new(
            Protocol::L2tp,
            Message::L2tpControl,
            Strength::Strong,
        ));
    }
    if len == 12 {
        // Zero-length body (ZLB) acknowledgement: only meaningful on a known flow.
        return Some(Detection::new(
            Protocol::L2tp,
            Message::L2tpControl,
            Strength::FollowUp,
        ));
    }
    // First AVP must be Message Type: M bit, length 8, vendor 0, attribute 0.
    if len >= 20
        && w[12] & 0x80 != 0
        && w[12] & 0x03 == 0
        && w[13] == 8
        && w[14] == 0
        && w[15] == 0
        && w[16] == 0
        && w[17] == 0
        && w[18] == 0
        && w[19] >= 1
        && w[19] <= 16
    {
        return Some(Detection::new(
            Protocol::L2tp,
            Message::L2tpControl,
            Strength::Strong,
        ));
    }
    None
}

/// The prefilter's check: T and L bits set, version 2 or 3.
#[inline(always)]
pub(super) fn is_head(head: [u8; 4]) -> bool {
    head[0] == 0xc8 && (head[1] == 0x02 || head[1] == 0x03)
}
