//! OpenConnect/AnyConnect DTLS: Cisco's pre-standard DTLS records, and a resumed
//! ClientHello towards the VPN port.

use super::*;

pub const DTLS_VPN_PORT: u16 = 443;

#[inline(always)]
pub(super) fn is_dtls_version(a: u8, b: u8) -> bool {
    // DTLS 1.0 (FE FF), DTLS 1.2 (FE FD), Cisco's pre-standard DTLS (01 00).
    (a == 0xfe && (b == 0xff || b == 0xfd)) || (a == 0x01 && b == 0x00)
}

#[inline(always)]
pub(super) fn dtls(sport: u16, dport: u16, w: &[u8; WINDOW], len: usize) -> Option<Detection> {
    // Record header: type, version (2), epoch (2), sequence (6), length (2).
    if len < 25 || be16(w[11], w[12]) as usize + 13 > len {
        return None;
    }
    if w[1] == 0x01 && w[2] == 0x00 {
        // Cisco's pre-standard DTLS 1.0 (version 0x0100) is used by AnyConnect/OpenConnect only.
        return Some(Detection::new(
            Protocol::OpenConnectDtls,
            Message::DtlsRecord,
            Strength::Strong,
        ));
    }
    // Standard DTLS is also WebRTC's: only a ClientHello towards the VPN port with a 32-byte
    // session id (the session OpenConnect resumes from the CSTP channel) counts. It is weak:
    // the server's answer (a DTLS handshake record from 443) confirms it, so a confirmed
    // flow shows that the server really speaks DTLS to this client, which is what lets its
    // drop close the pair's other traffic (the TLS fallback; see the program's fallback.rs).
    if dport == DTLS_VPN_PORT && w[13] == 1 {
        if w[59] == 32 {
            return Some(
                Detection::new(
                    Protocol::OpenConnectDtls,
                    Message::DtlsClientHello,
                    Strength::Weak,
                )
                .with_tokens(window_at::<60, 8>(w), [0; 8]),
            );
        }
        // Any other ClientHello to 443 (FortiClient's DTLS tunnel, a new OpenConnect session,
        // Citrix EDT, a WebRTC peer on 443): its own protocol, monitored by default.
        return Some(Detection::new(
            Protocol::Dtls443,
            Message::DtlsClientHello443,
            Strength::Strong,
        ));
    }
    // The server's handshake answer: ServerHello (2) or HelloVerifyRequest (3).
    if sport == DTLS_VPN_PORT && (w[13] == 2 || w[13] == 3) {
        return Some(Detection::new(
            Protocol::OpenConnectDtls,
            Message::DtlsServerHello,
            Strength::FollowUp,
        ));
    }
    None
}

/// The prefilter's check: a handshake record of a DTLS version.
#[inline(always)]
pub(super) fn is_head(head: [u8; 4]) -> bool {
    head[0] == 0x16 && is_dtls_version(head[1], head[2])
}
