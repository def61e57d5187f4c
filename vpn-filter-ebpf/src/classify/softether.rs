//! SoftEther's UDP acceleration announcement (`IP=...,PORT=...`).

use super::*;

#[inline(always)]
pub(super) fn softether(w: &[u8; WINDOW], len: usize) -> Option<Detection> {
    // SoftEther's UDP acceleration announces itself as "IP=<addr>,PORT=<port>".
    if len < 16 {
        return None;
    }
    const NEEDLE: &[u8; 6] = b",PORT=";
    let mut i = 3;
    while i + NEEDLE.len() <= WINDOW && i + NEEDLE.len() <= len {
        let mut k = 0;
        while k < NEEDLE.len() {
            // SAFETY: i + k < i + NEEDLE.len() <= WINDOW (loop conditions). Written with
            // get_unchecked because LLVM keeps a bounds check here that the verifier rejects.
            if unsafe { *w.get_unchecked(i + k) } != NEEDLE[k] {
                break;
            }
            k += 1;
        }
        if k == NEEDLE.len() {
            return Some(Detection::new(
                Protocol::SoftEther,
                Message::SoftEtherUdp,
                Strength::Strong,
            ));
        }
        i += 1;
    }
    None
}

/// The prefilter's check: `IP=`.
#[inline(always)]
pub(super) fn is_head(head: [u8; 4]) -> bool {
    head[0] == b'I' && head[1] == b'P' && head[2] == b'='
}

/// SoftEther's connection over TCP (plain, or what a TLS-terminating middlebox forwards)
/// starts with an HTTP POST to its VPN service path, `/vpnsvc/connect.cgi` or
/// `/vpnsvc/vpn.cgi`. Strong: no web application serves that path on a gateway's traffic.
#[inline(always)]
pub(super) fn http_connect(w: &[u8; WINDOW], len: usize) -> Option<Detection> {
    const PATH: &[u8; 13] = b"POST /vpnsvc/";
    if len < 24 || window_at::<0, 13>(w) != *PATH {
        return None;
    }
    let rest = window_at::<13, 12>(w);
    if rest != *b"connect.cgi " && window_at::<13, 8>(w) != *b"vpn.cgi " {
        return None;
    }
    Some(Detection::new(
        Protocol::SoftEther,
        Message::SoftEtherHttp,
        Strength::Strong,
    ))
}

/// The TCP prefilter's check: `POST`.
#[inline(always)]
pub(super) fn is_http_head(head: [u8; 4]) -> bool {
    head == *b"POST"
}
