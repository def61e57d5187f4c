//! Flow state: the canonical key, the verdict on a classified packet and the flow entry it
//! leaves.

use aya_ebpf::bindings::xdp_md;

use super::*;

#[map(name = "FLOWS")]
pub(super) static FLOWS: LruHashMap<FlowKey, FlowState> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_ENTRIES, 0);

/// Per protocol: the latest expiry of any flow entry of that protocol. Follow-up-only packets
/// (OpenVPN data, L2TP acks) look up the flow map only while this is in the future, so
/// ordinary traffic that happens to share their first byte pays an array read, not a hash.
#[map(name = "FLOW_GATE")]
pub(super) static FLOW_GATE: Array<u64> = Array::with_max_entries(Protocol::COUNT as u32, 0);

/// Canonical flow key of `protocol`'s entry: the lower (address, port) endpoint first. Returns
/// the key and whether the packet's source is the `lo` endpoint.
#[inline(always)]
pub(super) fn flow_key(pkt: &Packet, protocol: Protocol, class: u8) -> (FlowKey, bool) {
    FlowKey::canonical(
        &pkt.src,
        pkt.sport,
        &pkt.dst,
        pkt.dport,
        pkt.ip_proto,
        pkt.family,
        pkt.vlan,
        protocol as u8,
        class,
    )
}

#[inline(always)]
pub(super) fn open_gate(protocol: Protocol, expires: u64) {
    if let Some(slot) = FLOW_GATE.get_ptr_mut(protocol as u32) {
        // SAFETY: an array slot; racing writers only ever move it to a recent expiry.
        unsafe {
            if *slot < expires {
                *slot = expires;
            }
        }
    }
}

#[inline(always)]
pub(super) fn store_flow(key: &FlowKey, state: &FlowState, protocol: Protocol) {
    if FLOWS.insert(key, state, 0).is_ok() {
        count(counter_index(Counter::FlowInsert));
        open_gate(protocol, state.expires_ns);
    } else {
        count(counter_index(Counter::FlowInsertFailed));
    }
}

/// Judges a candidate.
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "passing map keys by value copies them onto the 512-byte BPF stack"
)]
pub(super) fn decide(ctx: &XdpContext, c: &Candidate) -> u32 {
    let pkt = &c.pkt;
    let det = &c.det;
    let protocol = det.protocol;
    let mode = policy(protocol);
    if mode == PolicyMode::Off as u8 {
        count(verdict_counter_index(protocol, Verdict::Ignored));
        return XDP_PASS;
    }
    let cfg = config();
    let now = now_ns();
    // Read before any allowlist lookup: the controller raises it after its writes, so a
    // verdict stamped with it never misses a later change.
    let generation = allow_generation();
    let class = if det.message == vpn_filter_common::Message::WgData {
        FLOW_CLASS_DATA
    } else {
        0
    };
    // A packet conclusive alone between endpoints that cannot be registered is reported and
    // judged whatever flow entry its 5-tuple has: an entry could only change the report's
    // reason. So the allowlist's first level is asked first, and such a packet never looks
    // up the flow map, whose lookup (a random bucket of a large table) is the costliest step
    // of a spoofed flood's packet. The flow's own later packets (not all conclusive alone)
    // still find its entry: a revoked or confirmed flow is reported as such by them.
    if det.strength == Strength::Strong && !maybe_listed(pkt, cfg.allowlist_lookup) {
        return signature_drop(ctx.ctx, c, now);
    }
    // A block of its own: written out flat, the compiler gives `judge`'s frame 8 more bytes
    // and the deepest call chain goes over 448.
    let reason = {
        let (key, src_is_lo) = flow_key(pkt, protocol, class);

        let entry = match FLOWS.get_ptr_mut(&key) {
            // SAFETY: a pointer into the LRU map's value, valid for this program run.
            Some(state) if unsafe { (*state).expires_ns } > now => Some(state),
            _ => None,
        };
        // At most one allowlist lookup per packet, and none for a flow judged under the current
        // generation: its status already says whether an endpoint is registered.
        let allowed = match entry {
            // SAFETY: as above.
            Some(state) if unsafe { (*state).generation } == generation => {
                (unsafe { (*state).status }) == FlowStatus::Allowed as u8
            }
            None if det.strength == Strength::FollowUp => {
                // Continues a flow we do not know (or that expired): ordinary traffic.
                return XDP_PASS;
            }
            _ => allowlisted(pkt, cfg.allowlist_lookup),
        };
        let mut judged = Judged::Fresh;
        if let Some(state) = entry {
            count(counter_index(Counter::FlowHit));
            // SAFETY: as above.
            let state = unsafe { &mut *state };
            judged = judge_flow(det, state, src_is_lo, now, generation, allowed, &cfg);
            if state.flags & OVPN_OBFS_MARK != 0 && protocol == Protocol::OpenVpnObfuscated {
                // A scrambled-OpenVPN reset pair just matched: the rest of the flow's packets
                // (any size) are followed up through its ports' mark.
                state.flags &= !OVPN_OBFS_MARK;
                mark_ports(pkt.sport, pkt.dport, PORT_MARK_OVPN_OBFS);
            }
            if matches!(judged, Judged::Report(Reason::Confirmed))
                && protocol == Protocol::WireGuard
                && class == 0
            {
                // A padded handshake just confirmed: its transport data is a conversation of
                // its own (see `FlowKey::class`); block it too, with the handshake's indices.
                let mut data_key = key;
                data_key.class = FLOW_CLASS_DATA;
                store_flow(&data_key, state, protocol);
            }
        }
        match judged {
            Judged::Pass => return XDP_PASS,
            Judged::Report(reason) => reason,
            Judged::Fresh => {
                if det.strength == Strength::FollowUp {
                    return XDP_PASS;
                }
                if allowed || det.strength == Strength::Weak {
                    let (status, timeout, verdict) = if allowed {
                        (
                            FlowStatus::Allowed,
                            cfg.allowed_flow_timeout_ns,
                            Verdict::Allowed,
                        )
                    } else {
                        (
                            FlowStatus::Pending,
                            cfg.pending_flow_timeout_ns,
                            Verdict::Pending,
                        )
                    };
                    let state = FlowState {
                        expires_ns: now + timeout,
                        token: det.token,
                        peer_token: [0; 8],
                        packets: 1,
                        generation,
                        aux: det.aux,
                        data_head: [0; 4],
                        status: status as u8,
                        protocol: protocol as u8,
                        message: det.message as u8,
                        from_lo: src_is_lo as u8,
                        flags: 0,
                        _pad: [0; 3],
                    };
                    store_flow(&key, &state, protocol);
                    count(verdict_counter_index(protocol, verdict));
                    return XDP_PASS;
                }
                // Conclusive alone: no flow entry. Every later packet that matters is conclusive
                // alone too, so a flood of handshakes from random sources costs no insert, and
                // no eviction can let a blocked session's next recognisable packet through.
                Reason::Signature
            }
        }
    };
    let action = report(ctx, pkt, det, protocol, reason, now, &cfg);
    if action == XDP_DROP && matches!(reason, Reason::Confirmed | Reason::Revoked) {
        // The server answered this client in the VPN's protocol (or the two ran a tunnel
        // while registered): close the pair's other traffic, so the tunnel cannot fall back
        // (done by the top level, in its own frame).
        if let Some(slot) = SCRATCH.get_ptr_mut(0) {
            // SAFETY: a per-CPU slot, only this CPU touches it while the program runs.
            unsafe { (*slot).arm_fallback = 1 };
        }
    }
    action
}

/// Reports a packet conclusive alone between endpoints the allowlist's first level rules out
/// ([`maybe_listed`]): counted as the packet's allowlist lookup, reported as a signature.
/// Its own frame, taking the context by value: inlined into `decide`, the count on this path
/// alone made the verifier walk `report` once more per state (+95,000 processed
/// instructions).
#[inline(never)]
fn signature_drop(ctx: *mut xdp_md, c: &Candidate, now: u64) -> u32 {
    count(counter_index(Counter::AllowlistLookups));
    let cfg = config();
    let ctx = XdpContext::new(ctx);
    report(
        &ctx,
        &c.pkt,
        &c.det,
        c.det.protocol,
        Reason::Signature,
        now,
        &cfg,
    )
}

/// Moves a flow entry's expiry to `until`. The program's clock is coarse ([`now_ns`]): the
/// packets of one tick compute the same expiry, and a refresh that would leave it unchanged
/// moves it on by 1 ns instead, so that whoever reads the map sees every refresh (replay
/// keeps the entries' expiries on its capture's clock by watching them change).
#[inline(always)]
fn set_expiry(state: &mut FlowState, until: u64) {
    state.expires_ns = if until == state.expires_ns {
        until + 1
    } else {
        until
    };
}

/// Applies the flow entry of the packet's protocol (keys carry the protocol, so the entry is
/// always of `det`'s protocol). `allowed` says whether an endpoint is registered now. An
/// entry judged under an older allowlist is judged again first: approvals and revocations
/// take effect on the next packet.
#[inline(always)]
pub(super) fn judge_flow(
    det: &Detection,
    state: &mut FlowState,
    src_is_lo: bool,
    now: u64,
    generation: u32,
    allowed: bool,
    cfg: &Config,
) -> Judged {
    let same_direction = (state.from_lo == 1) == src_is_lo;
    let mut reason = Reason::FlowFollowUp;
    if state.generation != generation {
        // `allowed` was looked up under the current generation.
        count(counter_index(Counter::FlowRejudged));
        state.generation = generation;
        let was_allowed = state.status == FlowStatus::Allowed as u8;
        if allowed && !was_allowed {
            // Approved while blocked, monitored or pending: this packet and the rest pass.
            state.status = FlowStatus::Allowed as u8;
            set_expiry(state, now + cfg.allowed_flow_timeout_ns);
            return Judged::Report(Reason::Registered);
        }
        if !allowed && was_allowed {
            // Revoked: from now on an unregistered flow of its protocol.
            state.status = FlowStatus::Blocked as u8;
            reason = Reason::Revoked;
        }
    }
    let status = state.status;
    if status == FlowStatus::Allowed as u8 {
        set_expiry(state, now + cfg.allowed_flow_timeout_ns);
        // Learn what a revocation needs to recognise the flow's later packets: the peer's
        // session or index from its reply, and that the flow carried OpenVPN data.
        if !same_direction
            && (det.message == vpn_filter_common::Message::OvpnServerReset
                || det.message == vpn_filter_common::Message::WgResponse
                || det.message == vpn_filter_common::Message::WgPaddedResponse
                || det.message == vpn_filter_common::Message::WgIdResponse)
        {
            state.peer_token = det.token;
        }
        if det.message == vpn_filter_common::Message::OvpnData && state.data_head[0] == 0 {
            state.data_head = det.aux;
        }
        count(verdict_counter_index(det.protocol, Verdict::Allowed));
        return Judged::Pass;
    }
    if status == FlowStatus::Blocked as u8 || status == FlowStatus::Monitored as u8 {
        if !belongs(state, det) {
            // Shares a first byte or a loose shape with the protocol but not the flow's
            // tokens: ordinary traffic or another session, judged on its own; the entry is
            // left as it is.
            return if det.strength == Strength::Strong {
                Judged::Fresh
            } else {
                Judged::Pass
            };
        }
        if det.message == Message::WgObfuscatedData {
            // Its counter moves on: a replayed or constant one does not belong again.
            wg_follow(state, det);
        }
        set_expiry(state, now + cfg.blocked_flow_timeout_ns);
        open_gate(det.protocol, state.expires_ns);
        return Judged::Report(reason);
    }
    if status == FlowStatus::Pending as u8 {
        if advance(state, det, same_direction) == Confirmation::Confirmed {
            // Confirmed over several packets: remembered (with both sides' tokens), so the
            // flow's own later packets, not all conclusive alone, are dropped too. The
            // endpoints were looked up under this generation: still unregistered.
            state.status = FlowStatus::Blocked as u8;
            set_expiry(state, now + cfg.blocked_flow_timeout_ns);
            open_gate(det.protocol, state.expires_ns);
            return Judged::Report(Reason::Confirmed);
        }
        if det.strength == Strength::Strong {
            return Judged::Fresh;
        }
        // The pending timeout follows the flow: a late reply still confirms.
        set_expiry(state, now + cfg.pending_flow_timeout_ns);
        open_gate(det.protocol, state.expires_ns);
        count(verdict_counter_index(det.protocol, Verdict::Pending));
        return Judged::Pass;
    }
    Judged::Fresh
}
