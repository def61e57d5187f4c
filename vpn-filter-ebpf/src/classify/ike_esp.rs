//! IKEv1/IKEv2 (UDP 500, 4500 after the non-ESP marker, any port by its header, IKE over
//! TCP) and ESP-in-UDP (weak: confirmed by ESP's own behaviour).

use super::*;

/// ESP-in-UDP: how far the creating direction's sequence number may advance between two of
/// its packets and still count as the same SA making progress (RFC 4303 sequence numbers
/// rise by one per packet; a gap this size is lost packets, not a coincidence).
pub const ESP_SEQ_WINDOW: u32 = 4096;

pub const IKE_PORT: u16 = 500;

pub const NAT_T_PORT: u16 = 4500;

/// UDP 500 or 4500.
#[inline(always)]
pub fn is_standard_ike_port(port: u16) -> bool {
    port == IKE_PORT || port == NAT_T_PORT
}

/// Prefilter for IKE on any UDP port: `h` holds payload bytes 16..32, where the IKE header
/// has its version, exchange type and length (4 bytes later behind a non-ESP marker). The
/// length must equal the datagram's, so ordinary payloads practically never pass.
#[inline(always)]
pub fn ike_any_port_prefilter(len: usize, h: [u8; 16]) -> bool {
    let version_ok = |v: u8| v == 0x20 || v == 0x10;
    let plain = version_ok(h[1]) && u32::from_be_bytes([h[8], h[9], h[10], h[11]]) as usize == len;
    let marked = version_ok(h[5])
        && len >= 4
        && u32::from_be_bytes([h[12], h[13], h[14], h[15]]) as usize == len - 4;
    plain || marked
}

/// IKE header at `w[o..o + 28]`; `len` is the IKE message length available.
#[inline(always)]
pub(super) fn ike(w: &[u8; WINDOW], o: usize, len: usize) -> Option<Detection> {
    if len < 28 {
        return None;
    }
    // `o` is 0 or 4; spell both out so every index stays a constant.
    let h: [u8; 28] = if o == 0 {
        window_at::<0, 28>(w)
    } else {
        window_at::<4, 28>(w)
    };
    let spi_i_nonzero = h[0] | h[1] | h[2] | h[3] | h[4] | h[5] | h[6] | h[7] != 0;
    let next_payload = h[16];
    let version = h[17];
    let exchange = h[18];
    let flags = h[19];
    let length = u32::from_be_bytes([h[24], h[25], h[26], h[27]]) as usize;
    if !spi_i_nonzero || length != len {
        return None;
    }
    let spi_r_zero = h[8] | h[9] | h[10] | h[11] | h[12] | h[13] | h[14] | h[15] == 0;
    let msg_id_zero = h[20] | h[21] | h[22] | h[23] == 0;
    let message = match version {
        0x20 => {
            // IKEv2: exchange types 34..=37 (SA_INIT, AUTH, CREATE_CHILD_SA, INFORMATIONAL),
            // 43 (IKE_SESSION_RESUME); only the I, V and R flags may be set.
            if !((34..=37).contains(&exchange) || exchange == 43) || flags & !0x38 != 0 {
                return None;
            }
            if exchange == 34 && msg_id_zero && next_payload == 33 {
                Message::IkeSaInit
            } else {
                Message::IkeOther
            }
        }
        0x10 => {
            // IKEv1: main (2), aggressive (4), informational (5), quick (32).
            if !(exchange == 2 || exchange == 4 || exchange == 5 || exchange == 32) {
                return None;
            }
            if spi_r_zero && next_payload == 1 && (exchange == 2 || exchange == 4) {
                Message::IkeSaInit
            } else {
                Message::IkeOther
            }
        }
        _ => return None,
    };
    Some(
        Detection::new(Protocol::Ike, message, Strength::Strong)
            .with_tokens([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]], [0; 8]),
    )
}

/// ESP-in-UDP evidence: the creator's SPI again with a sequence number a little higher, and an
/// ESP packet with another SPI from the other side.
#[inline(always)]
pub(super) fn esp_progress(state: &mut FlowState, det: &Detection, same_direction: bool) {
    let t = &det.token;
    let same_spi = t[0] == state.token[0]
        && t[1] == state.token[1]
        && t[2] == state.token[2]
        && t[3] == state.token[3];
    if same_direction {
        if !same_spi {
            return;
        }
        let old = u32::from_be_bytes([
            state.token[4],
            state.token[5],
            state.token[6],
            state.token[7],
        ]);
        let new = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
        if new > old && new - old <= ESP_SEQ_WINDOW {
            state.flags |= flow_flags::ESP_ADVANCED;
            state.token[4] = t[4];
            state.token[5] = t[5];
            state.token[6] = t[6];
            state.token[7] = t[7];
        }
    } else if !same_spi {
        state.flags |= flow_flags::ESP_REVERSE;
        if state.peer_token == [0; 8] {
            state.peer_token = *t;
        }
    }
}

/// On 4500 (or a port that carried IKE): RFC 3948's four zero bytes (non-ESP marker) then
/// IKE; 0xFF alone is a NAT keepalive; anything else with a non-zero SPI is ESP.
#[inline(always)]
pub(super) fn nat_t(w: &[u8; WINDOW], len: usize) -> Option<Detection> {
    if w[0] == 0 && w[1] == 0 && w[2] == 0 && w[3] == 0 {
        return if len >= 4 { ike(w, 4, len - 4) } else { None };
    }
    // ESP: SPI values 1..=255 are reserved (RFC 4303), and the sequence number starts at 1,
    // so neither is zero in real ESP. That shape alone is weak: any UDP payload on a 4500
    // source port (DNS, NTP, QUIC from a port-randomising stack or CGNAT) has it. The flow is
    // confirmed only by what ESP does and they do not: the same SPI with a rising sequence
    // number from one side, and an ESP packet with its own SPI from the other (see
    // `advance`).
    let spi_valid = w[0] | w[1] | w[2] != 0;
    let seq_nonzero = w[4] | w[5] | w[6] | w[7] != 0;
    if len >= 16 && spi_valid && seq_nonzero {
        return Some(
            Detection::new(Protocol::Esp, Message::EspUdp, Strength::Weak)
                .with_tokens([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]], [0; 8]),
        );
    }
    None
}

/// IKE on any other port, by its header alone, with or without the non-ESP marker.
#[inline(always)]
pub(super) fn ike_any_port(w: &[u8; WINDOW], len: usize) -> Option<Detection> {
    if let Some(d) = ike(w, 0, len) {
        return Some(d);
    }
    if w[0] | w[1] | w[2] | w[3] == 0 && len >= 4 {
        return ike(w, 4, len - 4);
    }
    None
}

/// IKE over TCP (RFC 8229): the stream starts with `IKETCP`.
#[inline(always)]
pub(super) fn ike_tcp(w: &[u8; WINDOW], len: usize) -> Option<Detection> {
    if len >= 6
        && w[0] == b'I'
        && w[1] == b'K'
        && w[2] == b'E'
        && w[3] == b'T'
        && w[4] == b'C'
        && w[5] == b'P'
    {
        return Some(Detection::new(
            Protocol::Ike,
            Message::IkeTcp,
            Strength::Strong,
        ));
    }
    None
}
