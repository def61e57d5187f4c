//! Header checks first; the payload window is copied and classified only for candidates.

use super::*;

/// Per-CPU buffer for the payload window a candidate is classified from.
#[map(name = "PAYLOAD_WINDOW")]
pub(super) static PAYLOAD_WINDOW: PerCpuArray<[u8; WINDOW]> = PerCpuArray::with_max_entries(1, 0);

/// UDP ports that carried IKE away from 500/4500, one bit per port: ESP-in-UDP on them is a
/// candidate as on 4500 (weak, confirmed only by ESP's behaviour in both directions, so a
/// spoofed IKE packet cannot get a port's ordinary traffic dropped).
#[map(name = "IKE_PORTS")]
pub(super) static IKE_PORTS: Array<u64> = Array::with_max_entries(1024, 0);

#[inline(always)]
pub(super) fn ike_port_seen(port: u16) -> bool {
    IKE_PORTS
        .get((port >> 6) as u32)
        .is_some_and(|w| w & (1u64 << (port & 63)) != 0)
}

#[inline(always)]
pub(super) fn mark_ike_ports(sport: u16, dport: u16) {
    for port in [sport, dport] {
        if is_standard_ike_port(port) {
            continue;
        }
        if let Some(w) = IKE_PORTS.get_ptr_mut((port >> 6) as u32) {
            // SAFETY: an array slot; a lost race only delays the mark to the next packet.
            unsafe { *w |= 1u64 << (port & 63) };
        }
    }
}

/// Header checks first; the payload window is copied only for candidates.
#[inline(always)]
pub(super) fn detect(ctx: &XdpContext, pkt: &Packet) -> Result<Option<Detection>, Counter> {
    match pkt.ip_proto {
        IPPROTO_UDP | IPPROTO_TCP => {}
        IPPROTO_GRE => {
            let head: [u8; 4] = read(ctx, pkt.payload_off)?;
            return Ok(classify_gre(head));
        }
        IPPROTO_ESP | IPPROTO_AH => return Ok(classify_ip_proto(pkt.ip_proto)),
        _ => return Ok(None),
    }
    // A TCP first fragment holds the start of a segment whose length no header states: the
    // rules are told the segment goes on (they then judge the bytes present), the
    // conservative reading of a fragment cut before the bytes a rule needs.
    let len = if pkt.ip_proto == IPPROTO_TCP && pkt.frag == FRAG_FIRST {
        0xffff
    } else {
        pkt.payload_len
    };
    // Every VPN message recognised is at least four bytes long (and a first fragment must
    // hold the first four).
    if len < 4 || pkt.captured < 4 {
        return Ok(None);
    }
    let head: [u8; 4] = read(ctx, pkt.payload_off)?;
    let mut ike_port = false;
    let pre = if pkt.ip_proto == IPPROTO_UDP {
        match udp_prefilter(pkt.sport, pkt.dport, len, head) {
            Prefilter::No => {
                ike_port = ike_port_seen(pkt.sport) || ike_port_seen(pkt.dport);
                if ike_port {
                    Prefilter::Inspect
                } else if len >= 28 && pkt.captured >= 32 {
                    let h: [u8; 16] = read(ctx, pkt.payload_off + 16)?;
                    if ike_any_port_prefilter(len, h) {
                        Prefilter::Inspect
                    } else {
                        Prefilter::No
                    }
                } else {
                    Prefilter::No
                }
            }
            p => p,
        }
    } else {
        tcp_prefilter(len, head)
    };
    match pre {
        Prefilter::No => Ok(None),
        Prefilter::FollowUp(protocol, message) => {
            // Meaningful only while this protocol has live flows.
            let gate = FLOW_GATE.get(protocol as u32).copied().unwrap_or(0);
            // SAFETY: helper without arguments.
            if gate == 0 || unsafe { bpf_ktime_get_ns() } > gate {
                return Ok(None);
            }
            let mut token = [0u8; 8];
            // Control packets: the tls-crypt packet-id time at [13..17]; data packets: the
            // opcode and peer id (see `belongs`).
            let mut aux = [head[0], head[1], head[2], head[3]];
            if pkt.captured >= 17 {
                let h: [u8; 17] = read(ctx, pkt.payload_off)?;
                token.copy_from_slice(&h[1..9]);
                if message == vpn_filter_common::Message::OvpnControl {
                    aux.copy_from_slice(&h[13..17]);
                }
            } else if pkt.captured >= 9 {
                let h: [u8; 9] = read(ctx, pkt.payload_off)?;
                token.copy_from_slice(&h[1..9]);
            }
            Ok(Some(Detection {
                protocol,
                message,
                strength: Strength::FollowUp,
                token,
                peer_token: [0; 8],
                aux,
            }))
        }
        Prefilter::Inspect => {
            count(counter_index(Counter::Candidates));
            // The window lives in a per-CPU map slot, not on the BPF stack (512 bytes for a
            // whole call chain).
            let w = match PAYLOAD_WINDOW.get_ptr_mut(0) {
                // SAFETY: a per-CPU slot, only this CPU touches it while the program runs.
                Some(p) => unsafe { &mut *p },
                None => return Err(Counter::InternalError),
            };
            *w = [0u8; WINDOW];
            // A first fragment may hold fewer bytes than the datagram: the rest stays zero.
            let n = if pkt.captured < WINDOW {
                pkt.captured
            } else {
                WINDOW
            };
            if n == 0 || n > WINDOW {
                return Ok(None);
            }
            // SAFETY: `w` has WINDOW >= n bytes; the helper bounds-checks the packet side.
            let rc = unsafe {
                bpf_xdp_load_bytes(
                    ctx.ctx as *mut _,
                    pkt.payload_off as u32,
                    w.as_mut_ptr() as *mut c_void,
                    n as u32,
                )
            };
            if rc != 0 {
                return Err(Counter::Truncated);
            }
            Ok(if pkt.ip_proto == IPPROTO_UDP {
                classify_udp_on(pkt.sport, pkt.dport, len, w, ike_port)
            } else {
                classify_tcp(len, w)
            })
        }
    }
}
