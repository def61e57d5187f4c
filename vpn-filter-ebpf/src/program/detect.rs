//! Header checks first; the payload window is copied and classified only for candidates.

use super::*;

/// Per-CPU buffer for the payload window a candidate is classified from.
#[map(name = "PAYLOAD_WINDOW")]
pub(super) static PAYLOAD_WINDOW: PerCpuArray<[u8; WINDOW]> = PerCpuArray::with_max_entries(1, 0);

/// Marks of UDP ports, two bits per port ([`PORT_MARK_IKE`], [`PORT_MARK_OVPN_OBFS`]):
/// - the port carried IKE away from 500/4500: ESP-in-UDP on it is a candidate as on 4500
///   (weak, confirmed only by ESP's behaviour in both directions, so a spoofed IKE packet
///   cannot get a port's ordinary traffic dropped);
/// - the port answered a scrambled-OpenVPN reset pair: its packets are followed up.
#[map(name = "PORT_MARKS")]
pub(super) static PORT_MARKS: Array<u64> = Array::with_max_entries(2048, 0);

#[inline(always)]
pub(super) fn port_marks(port: u16) -> u64 {
    PORT_MARKS
        .get((port >> 5) as u32)
        .map_or(0, |w| (w >> ((port & 31) * 2)) & 3)
}

#[inline(always)]
pub(super) fn mark_ports(sport: u16, dport: u16, mark: u64) {
    for port in [sport, dport] {
        if mark == PORT_MARK_IKE && is_standard_ike_port(port) {
            continue;
        }
        if let Some(w) = PORT_MARKS.get_ptr_mut((port >> 5) as u32) {
            // SAFETY: an array slot; a lost race only delays the mark to the next packet.
            unsafe { *w |= mark << ((port & 31) * 2) };
        }
    }
}

/// Whether `protocol` has live flow entries (follow-up packets are looked up only then).
#[inline(always)]
fn gate_open(protocol: Protocol) -> bool {
    let gate = FLOW_GATE.get(protocol as u32).copied().unwrap_or(0);
    // SAFETY: helper without arguments.
    gate != 0 && unsafe { bpf_ktime_get_ns() } <= gate
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
        let mut pre = udp_prefilter(pkt.sport, pkt.dport, len, head);
        if let Prefilter::FollowUp(protocol, _) = pre {
            // A follow-up of a protocol with no live flow is ordinary traffic as far as the
            // signatures go; the heuristics still get their look (a scrambled reset may
            // start with any byte).
            if !gate_open(protocol) {
                pre = Prefilter::No;
            }
        }
        match pre {
            Prefilter::No => {
                let marks = port_marks(pkt.sport) | port_marks(pkt.dport);
                let mut h = [0u8; 24];
                if len >= 28 && pkt.captured >= 32 {
                    h = read(ctx, pkt.payload_off + 8)?;
                }
                match udp_second_look(pkt.sport, pkt.dport, len, marks, &h) {
                    SecondLook::No => Prefilter::No,
                    SecondLook::Inspect { ike_port: p } => {
                        ike_port = p;
                        Prefilter::Inspect
                    }
                    SecondLook::OvpnObfuscated => {
                        Prefilter::FollowUp(Protocol::OpenVpnObfuscated, Message::OvpnObfuscated)
                    }
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
            if !gate_open(protocol) {
                return Ok(None);
            }
            if protocol == Protocol::OpenVpnObfuscated {
                return Ok(Some(ovpn_packet(len, head, Strength::FollowUp)));
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
