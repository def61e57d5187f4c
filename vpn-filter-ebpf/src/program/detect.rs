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

/// Slots of `UDP_FIRST` (a power of two).
const UDP_FIRST_SLOTS: u32 = 1 << 18;

/// A UDP conversation is judged again after this many ~1.07 s ticks.
const UDP_FIRST_TICKS: u32 = 60;

/// UDP conversations seen lately, one u32 per slot (a 16-bit tag of the conversation's
/// seeded hash, the tick it was seen): the fully-encrypted rule judges a conversation's
/// first datagram only. Collisions only make a datagram count as first again (judged once
/// more) or as seen (not judged).
#[map(name = "UDP_FIRST")]
pub(super) static UDP_FIRST: Array<u32> = Array::with_max_entries(UDP_FIRST_SLOTS, 0);

/// Bit of a `UDP_FIRST` slot: the rule dropped this conversation (enforce); its datagrams
/// are dropped whatever they start with until the slot goes stale.
const UDP_FIRST_BLOCKED: u32 = 0x8000;

/// What `UDP_FIRST` knows of a datagram's conversation.
enum Conversation {
    /// Not seen lately: the slot index and the value that records it there (not written
    /// yet: [`udp_seen`] does, once the datagram is judged).
    New(u32, u32),
    Seen,
    /// Dropped by the fully-encrypted rule; the slot's tick was refreshed.
    Blocked,
}

/// Looks the datagram's conversation up in `UDP_FIRST`.
#[inline(always)]
fn udp_conversation(pkt: &Packet) -> Option<Conversation> {
    // Either direction: the conversation, not the direction, is new.
    let (src, dst) = pkt.words();
    let h = endpoint_hash(&src, pkt.sport) ^ endpoint_hash(&dst, pkt.dport);
    let h = (h ^ (h >> 15)).wrapping_mul(0x2c1b_3c6d);
    let idx = h & (UDP_FIRST_SLOTS - 1);
    let slot = UDP_FIRST.get_ptr_mut(idx)?;
    let tag = h >> 16;
    let tick = ((now_ns() >> 30) & 0x7fff) as u32;
    // SAFETY: an array slot; a racing writer on another CPU writes a whole u32 too.
    let v = unsafe { *slot };
    if v >> 16 == tag && v != 0 && (tick.wrapping_sub(v & 0x7fff) & 0x7fff) <= UDP_FIRST_TICKS {
        if v & UDP_FIRST_BLOCKED != 0 {
            // SAFETY: as above.
            unsafe { *slot = tag << 16 | UDP_FIRST_BLOCKED | tick };
            return Some(Conversation::Blocked);
        }
        return Some(Conversation::Seen);
    }
    Some(Conversation::New(idx, tag << 16 | tick))
}

/// Records a conversation's first datagram in its slot (the value `udp_conversation` made:
/// the conversation is hashed once).
#[inline(always)]
fn udp_seen(idx: u32, seen: u32) {
    if let Some(slot) = UDP_FIRST.get_ptr_mut(idx) {
        // SAFETY: an array slot; a racing writer on another CPU writes a whole u32 too.
        unsafe { *slot = seen };
    }
}

/// [`conversation_look`]'s answers other than a slot index (indices are below
/// `UDP_FIRST_SLOTS`).
const CONV_SKIP: u32 = u32::MAX;
const CONV_BLOCKED: u32 = u32::MAX - 1;

/// `fet_udp_slot` of a datagram whose conversation [`encrypted_stage`] still has to look up.
const FET_LOOK_CONVERSATION: u32 = u32::MAX - 1;

/// The fully-encrypted rule's look at a datagram's conversation: [`CONV_BLOCKED`] when the
/// rule dropped the conversation before, the `UDP_FIRST` slot (now recorded) when this is
/// its first datagram and is to be judged, [`CONV_SKIP`] otherwise (an exempt port or size,
/// an exempt first bytes, or a conversation already judged). Exempt first bytes (RTP, QUIC)
/// need the slot only where the rule enforces: to drop a blocked conversation's next
/// datagram whatever it starts with. Under monitor (the default) they skip the lookup. Its
/// own frame: called from three places, verified as one function.
#[inline(never)]
fn conversation_look(pkt: &Packet, head: [u8; 4], len: usize) -> u32 {
    if !encrypted::udp_conversation_candidate(pkt.sport, pkt.dport, len) {
        return CONV_SKIP;
    }
    let exempt = encrypted::exempt_udp_head(head);
    if exempt && policy(Protocol::FullyEncrypted) != PolicyMode::Enforce as u8 {
        return CONV_SKIP;
    }
    match udp_conversation(pkt) {
        Some(Conversation::Blocked) => CONV_BLOCKED,
        Some(Conversation::New(idx, seen)) if !exempt => {
            udp_seen(idx, seen);
            idx & (UDP_FIRST_SLOTS - 1)
        }
        _ => CONV_SKIP,
    }
}

/// Whether a live flow entry of `protocol` on the packet's 5-tuple claims the packet as its
/// follow-up (`message`, `head` its first bytes): an allowed flow claims every packet (it
/// learns from them, see `judge_flow`); any other only the packets that belong to it (its
/// session ids, its data opcode: `belongs`). A packet no flow claims is ordinary traffic as
/// far as the follow-ups go and gets the classifier's and the heuristics' look: a decoy that
/// left a pending OpenVPN flow on a 5-tuple cannot make an IKE packet whose SPI starts like
/// an OpenVPN opcode pass as that flow's follow-up. Its own frame: the key and the token stay
/// off the caller's stack.
#[inline(never)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "passing map keys by value copies them onto the 512-byte BPF stack"
)]
fn flow_claims(
    ctx: &XdpContext,
    pkt: &Packet,
    protocol: Protocol,
    message: u32,
    head: u32,
) -> bool {
    let (key, _) = flow_key(pkt, protocol, 0);
    let now = now_ns();
    let Some(state) = FLOWS.get_ptr(&key) else {
        return false;
    };
    // SAFETY: a pointer into the LRU map's value, valid for this program run.
    let state = unsafe { &*state };
    if state.expires_ns <= now {
        return false;
    }
    if state.status == FlowStatus::Allowed as u8 {
        return true;
    }
    let mut det = Detection {
        protocol: Protocol::OpenVpn,
        message: Message::OvpnObfuscated,
        strength: Strength::FollowUp,
        token: [0; 8],
        peer_token: [0; 8],
        aux: head.to_be_bytes(),
    };
    if message == Message::OvpnControl as u32 {
        det.message = Message::OvpnControl;
        // The session id, bytes 1..9 (as the follow-up's detection reads it).
        if pkt.payload_off > MAX_PAYLOAD_OFFSET || pkt.captured < 9 {
            return false;
        }
        match read::<9>(ctx, pkt.payload_off) {
            Ok(h) => det.token.copy_from_slice(&h[1..9]),
            Err(_) => return false,
        }
    } else if message == Message::OvpnData as u32 {
        det.message = Message::OvpnData;
    }
    belongs(state, &det)
}

/// Whether `protocol` has live flow entries (follow-up packets are looked up only then).
#[inline(always)]
pub(super) fn gate_open(protocol: Protocol) -> bool {
    let gate = FLOW_GATE.get(protocol as u32).copied().unwrap_or(0);
    gate != 0 && now_ns() <= gate
}

/// Classifies the packet in the scratch slot and leaves the detection there: 1 when there
/// is one, 0 when not. `head` is [`stream_head`]'s answer. Not inlined, and called before
/// [`judge`] rather than from it: its stack frame and `decide`'s are never on the stack
/// together (512 bytes for a call chain).
#[inline(never)]
pub(super) fn detect(ctx: &XdpContext, head: u32) -> Result<u32, Counter> {
    let first_client = head & HEAD_FIRST_CLIENT != 0;
    let head = head & !HEAD_FIRST_CLIENT;
    if head == HEAD_DETECTED {
        // stream_head left it in the slot.
        return Ok(1);
    }
    if head == HEAD_HELD && !first_client {
        return Ok(0);
    }
    let slot = SCRATCH.get_ptr_mut(0).ok_or(Counter::InternalError)?;
    // SAFETY: a per-CPU slot, only this CPU touches it while the program runs.
    let pkt = unsafe { &(*slot).pkt };
    // Values read from a map are unknown to the verifier: bound them again before they
    // become packet offsets.
    if pkt.payload_off > MAX_PAYLOAD_OFFSET
        || pkt.payload_len > 0xffff
        || pkt.captured > pkt.payload_len
    {
        return Err(Counter::Malformed);
    }
    if pkt.frag == FRAG_LATER {
        // No L4 header: `judge` accounts for it.
        return Ok(0);
    }
    let found = if head == HEAD_HELD {
        // Held for a signature split over segments: the client's first payload is still
        // judged alone by the fully-encrypted rule, as it arrived.
        // Pieces shorter than FET_MIN_HELD are not judged: a split VPN handshake's first
        // piece (an HMAC: random bytes) is no first payload of its own.
        match load_window(ctx, pkt)? {
            Some((_, n)) if n >= FET_MIN_HELD => Found::Encrypted {
                n,
                udp_slot: u32::MAX,
            },
            _ => Found::None,
        }
    } else {
        detect_packet(ctx, pkt, first_client)?
    };
    match found {
        Found::Det(det) => {
            // SAFETY: as above.
            unsafe { (*slot).det = det };
            Ok(DETECT_FOUND)
        }
        Found::Encrypted { n, udp_slot } => {
            // SAFETY: as above.
            unsafe {
                (*slot).fet_n = n as u32;
                (*slot).fet_udp_slot = udp_slot;
            }
            Ok(DETECT_ENCRYPTED_CANDIDATE)
        }
        Found::None => Ok(DETECT_NONE),
    }
}

/// Shortest held (split) first client segment the fully-encrypted rule judges.
const FET_MIN_HELD: usize = 64;

/// [`detect`]'s answers.
pub(super) const DETECT_NONE: u32 = 0;
pub(super) const DETECT_FOUND: u32 = 1;
/// No signature, and the payload window (loaded) is for the fully-encrypted rule:
/// [`encrypted_stage`] judges it.
pub(super) const DETECT_ENCRYPTED_CANDIDATE: u32 = 2;

/// What [`detect_packet`] found.
enum Found {
    None,
    Det(Detection),
    /// The window holds `n` bytes for the fully-encrypted rule; `udp_slot` is the UDP
    /// conversation's `UDP_FIRST` slot (`u32::MAX`: a TCP stream).
    Encrypted {
        n: usize,
        udp_slot: u32,
    },
}

/// The fully-encrypted rule on the window [`detect`] loaded. Its own frame, called from the
/// top level: every path of the classifier reaches it in one verifier state, so its loop
/// is walked once rather than once per classifier path.
#[inline(never)]
pub(super) fn encrypted_stage(ctx: &XdpContext) -> u32 {
    let Some(slot) = SCRATCH.get_ptr_mut(0) else {
        return DETECT_NONE;
    };
    // SAFETY: a per-CPU slot, only this CPU touches it while the program runs.
    let (mut n, mut udp_slot) = unsafe { ((*slot).fet_n as usize, (*slot).fet_udp_slot) };
    if udp_slot == FET_LOOK_CONVERSATION {
        // SAFETY: as above.
        let pkt = unsafe { &(*slot).pkt };
        // Bound again: values read back from a map are unknown to the verifier.
        if pkt.payload_off > MAX_PAYLOAD_OFFSET || pkt.captured > pkt.payload_len {
            return DETECT_NONE;
        }
        let Ok(head) = read::<4>(ctx, pkt.payload_off) else {
            return DETECT_NONE;
        };
        match conversation_look(pkt, head, pkt.payload_len) {
            // Dropped before by the rule: dropped again, whatever it starts with (an
            // encrypted datagram may look like RTP).
            CONV_BLOCKED => {
                // SAFETY: as above.
                unsafe { (*slot).det = encrypted::detection() };
                return DETECT_FOUND;
            }
            CONV_SKIP => return DETECT_NONE,
            idx => udp_slot = idx,
        }
        if n == 0 {
            // The conversation's first datagram, not loaded by the classifier (no
            // signature's candidate): loaded now, for it alone.
            match load_window(ctx, pkt) {
                Ok(Some((_, held))) => n = held,
                _ => return DETECT_NONE,
            }
        }
    }
    if !(encrypted::FET_MIN_LEN..=WINDOW).contains(&n) {
        return DETECT_NONE;
    }
    let Some(w) = PAYLOAD_WINDOW.get(0) else {
        return DETECT_NONE;
    };
    if !encrypted::fully_encrypted(w, n) {
        return DETECT_NONE;
    }
    if udp_slot != u32::MAX && policy(Protocol::FullyEncrypted) == PolicyMode::Enforce as u8 {
        // Dropped: the conversation's later datagrams are dropped too (see udp_conversation).
        if let Some(s) = UDP_FIRST.get_ptr_mut(udp_slot) {
            // SAFETY: an array slot.
            unsafe { *s |= UDP_FIRST_BLOCKED };
        }
    }
    // SAFETY: as above.
    unsafe { (*slot).det = encrypted::detection() };
    DETECT_FOUND
}

/// Header checks first; the payload window is copied only for candidates.
#[inline(always)]
fn detect_packet(ctx: &XdpContext, pkt: &Packet, first_client: bool) -> Result<Found, Counter> {
    match pkt.ip_proto {
        IPPROTO_UDP | IPPROTO_TCP => {}
        IPPROTO_GRE => {
            let head: [u8; 4] = read(ctx, pkt.payload_off)?;
            return Ok(classify_gre(head).map_or(Found::None, Found::Det));
        }
        IPPROTO_ESP | IPPROTO_AH => {
            return Ok(classify_ip_proto(pkt.ip_proto).map_or(Found::None, Found::Det))
        }
        _ => return Ok(Found::None),
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
        return Ok(Found::None);
    }
    let head: [u8; 4] = read(ctx, pkt.payload_off)?;
    let mut ike_port = false;
    // The window is also judged by the fully-encrypted rule: a TCP stream's first client
    // payload, a UDP conversation's first datagram.
    let fet = first_client;
    let pre = if pkt.ip_proto == IPPROTO_UDP {
        let mut pre = udp_prefilter(pkt.sport, pkt.dport, len, head);
        if let Prefilter::FollowUp(protocol, message) = pre {
            // A follow-up of no live flow of its protocol is ordinary traffic as far as the
            // signatures go, and gets the heuristics' look like any datagram: a random first
            // byte looks like an OpenVPN data opcode one time in seven, and must not buy a
            // fully encrypted datagram its way past the rule.
            if !gate_open(protocol)
                || !flow_claims(ctx, pkt, protocol, message as u32, u32::from_be_bytes(head))
            {
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
                    SecondLook::OvpnObfuscated
                        if gate_open(Protocol::OpenVpnObfuscated)
                            && flow_claims(
                                ctx,
                                pkt,
                                Protocol::OpenVpnObfuscated,
                                Message::OvpnObfuscated as u32,
                                u32::from_be_bytes(head),
                            ) =>
                    {
                        Prefilter::FollowUp(Protocol::OpenVpnObfuscated, Message::OvpnObfuscated)
                    }
                    SecondLook::Inspect { ike_port: p } => {
                        // The signatures first; with none, the conversation is looked up
                        // after them (see the `Inspect` arm below).
                        ike_port = p;
                        Prefilter::Inspect
                    }
                    // No signature's candidate: the fully-encrypted rule's look at its
                    // conversation, in `encrypted_stage` (the window is loaded there, for a
                    // conversation's first datagram only).
                    _ if encrypted::udp_conversation_candidate(pkt.sport, pkt.dport, len)
                        && (!encrypted::exempt_udp_head(head)
                            || policy(Protocol::FullyEncrypted) == PolicyMode::Enforce as u8) =>
                    {
                        return Ok(Found::Encrypted {
                            n: 0,
                            udp_slot: FET_LOOK_CONVERSATION,
                        });
                    }
                    _ => Prefilter::No,
                }
            }
            p => p,
        }
    } else {
        match tcp_prefilter(len, head) {
            Prefilter::No if first_client => Prefilter::Inspect,
            p => p,
        }
    };
    match pre {
        Prefilter::No => Ok(Found::None),
        Prefilter::FollowUp(protocol, message) => {
            // Meaningful only while this protocol has live flows (a UDP follow-up got here
            // through `flow_claims`, after its gate was read).
            if pkt.ip_proto != IPPROTO_UDP && !gate_open(protocol) {
                return Ok(Found::None);
            }
            if protocol == Protocol::OpenVpnObfuscated {
                return Ok(Found::Det(ovpn_packet(len, head, Strength::FollowUp)));
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
            Ok(Found::Det(Detection {
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
            let Some((w, n)) = load_window(ctx, pkt)? else {
                return Ok(Found::None);
            };
            // The prefilters narrowed `len`, the ports and the flags differently on every
            // path that leads here (exact handshake sizes, reset sizes, port checks): met in
            // those states, the classifier would be verified once per path. Laundered through
            // the scratch slot, they are unknown to the verifier and every path meets in one
            // state (classification is correct for any value).
            let slot = SCRATCH.get_ptr_mut(0).ok_or(Counter::InternalError)?;
            // SAFETY: a per-CPU slot, only this CPU touches it while the program runs.
            let l = unsafe {
                (*slot).laundry = Laundry {
                    len: len as u32,
                    sport: pkt.sport,
                    dport: pkt.dport,
                    ike_port: ike_port as u32,
                    udp: (pkt.ip_proto == IPPROTO_UDP) as u32,
                };
                ptr::read_volatile(&(*slot).laundry)
            };
            let len = (l.len & 0xffff) as usize;
            let found = if l.udp != 0 {
                classify_udp_on(l.sport, l.dport, len, w, l.ike_port != 0)
            } else {
                classify_tcp(len, w)
            };
            Ok(match found {
                Some(d) => Found::Det(d),
                None if fet && n >= encrypted::FET_MIN_LEN => Found::Encrypted {
                    n,
                    udp_slot: u32::MAX,
                },
                // A datagram taken for a handshake by its first bytes or its size, that is
                // none: the fully-encrypted rule's look at its conversation, as for any other
                // datagram (in `encrypted_stage`, verified once, not once per classifier path).
                None if l.udp != 0 && n >= encrypted::FET_MIN_LEN => Found::Encrypted {
                    n,
                    udp_slot: FET_LOOK_CONVERSATION,
                },
                None => Found::None,
            })
        }
    }
}

/// Copies the first [`WINDOW`] payload bytes (fewer if the packet holds fewer; zero beyond)
/// into the per-CPU window: the window and how many bytes it holds.
#[inline(always)]
fn load_window(
    ctx: &XdpContext,
    pkt: &Packet,
) -> Result<Option<(&'static mut [u8; WINDOW], usize)>, Counter> {
    // The window lives in a per-CPU map slot, not on the BPF stack (512 bytes for a whole
    // call chain).
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
    Ok(Some((w, n)))
}
