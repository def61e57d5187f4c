//! Events: the ring buffer, the per-CPU budget, the per-source limit and the reserve for
//! retrying sources.

use super::*;

#[map(name = "EVENTS")]
pub(super) static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_EVENT_RING_BYTES, 0);

/// Per-CPU event budget over all sources (first-N-per-second), checked before the
/// per-source limit so a random-source flood costs no LRU insert per packet. Slot 1 is the
/// reserve for retrying sources once slot 0 is spent.
#[map(name = "EVENT_BUDGET")]
pub(super) static EVENT_BUDGET: PerCpuArray<RateState> = PerCpuArray::with_max_entries(2, 0);

/// Per-source event limit: one [`SourceRate`] slot per source hash. An array, not an LRU
/// hash: a flood from random sources spends the CPU's budget on its first events of every
/// second, and an LRU insert with eviction for each of those cost more per flood packet, on
/// average, than the rest of the drop (measured in the in-kernel bench).
#[map(name = "EVENT_LIMIT")]
pub(super) static EVENT_LIMIT: Array<SourceRate> = Array::with_max_entries(EVENT_LIMIT_SLOTS, 0);

/// Repeat-source filter: per slot (hash of the source address) a 16-bit fingerprint, the
/// window it was last seen in and the window it was last reported in from the reserve.
#[map(name = "REPEAT_SOURCES")]
pub(super) static REPEAT_SOURCES: Array<u32> = Array::with_max_entries(REPEAT_SLOTS, 0);

/// Verdict for a reported packet: `allowed` for a just-approved flow, else what the current
/// policy says for an unregistered flow (the policy may have changed since the flow was
/// judged: the current one decides). One call site, so the event code is inlined once.
#[inline(always)]
pub(super) fn report(
    ctx: &XdpContext,
    pkt: &Packet,
    det: &Detection,
    protocol: Protocol,
    reason: Reason,
    now: u64,
    cfg: &Config,
) -> u32 {
    let mode = policy(protocol);
    let (verdict, action) = if reason == Reason::Registered {
        (Verdict::Allowed, XDP_PASS)
    } else if mode == PolicyMode::Enforce as u8 {
        (Verdict::Dropped, XDP_DROP)
    } else if mode == PolicyMode::Monitor as u8 {
        (Verdict::Monitored, XDP_PASS)
    } else {
        count(verdict_counter_index(protocol, Verdict::Ignored));
        return XDP_PASS;
    };
    count(verdict_counter_index(protocol, verdict));
    emit(ctx, pkt, det, protocol, verdict, reason, now, cfg);
    action
}

/// Reports a verdict through the ring buffer, at most `events_per_source_per_sec` per source.
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "inlined; a struct would only add copies on the BPF stack"
)]
pub(super) fn emit(
    ctx: &XdpContext,
    pkt: &Packet,
    det: &Detection,
    protocol: Protocol,
    verdict: Verdict,
    reason: Reason,
    now: u64,
    cfg: &Config,
) {
    let message = det.message as u8;
    emit_event(ctx, pkt, message, 0, protocol, verdict, reason, now, cfg);
}

/// [`emit`] for any message, with the endpoint provider id (0 for signatures).
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "inlined; a struct would only add copies on the BPF stack"
)]
pub(super) fn emit_event(
    ctx: &XdpContext,
    pkt: &Packet,
    message: u8,
    provider: u16,
    protocol: Protocol,
    verdict: Verdict,
    reason: Reason,
    now: u64,
    cfg: &Config,
) {
    // The CPU's budget first (only looked at here; spent below, once the per-source limit
    // lets the event through, so one noisy source cannot spend everyone's budget).
    let budget = match EVENT_BUDGET.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, only this CPU touches it while the program runs.
        Some(b) => unsafe { &mut *b },
        None => return,
    };
    if now.wrapping_sub(budget.window_start_ns) >= NS_PER_SEC {
        budget.window_start_ns = now;
        budget.emitted = 0;
        budget.suppressed = 0;
    }
    let suppressed = if budget.emitted >= cfg.events_per_cpu_per_sec {
        // Spent (a flood, often from random sources): a source seen retrying still gets
        // reported about once a minute, from a small reserve. The filter is consulted for
        // the second's first REPEAT_CHECKS_PER_SEC suppressed events only (see there).
        if budget.suppressed >= REPEAT_CHECKS_PER_SEC
            || !(repeat_source_due(&pkt.src, now) && take_reserve(now))
        {
            budget.suppressed += 1;
            count(counter_index(Counter::EventsSuppressed));
            return;
        }
        count(counter_index(Counter::EventsRepeatSource));
        0
    } else {
        let suppressed = match per_source(pkt, now, cfg) {
            Some(s) => s,
            None => return,
        };
        budget.emitted += 1;
        suppressed
    };
    submit(
        ctx, pkt, message, provider, protocol, verdict, reason, now, suppressed,
    );
}

/// The per-source limit: `None` when the source has used its events this second (counted
/// as suppressed), else how many of its events were suppressed since its last one (as far
/// as its slot remembers: a source that took a slot over starts afresh).
///
/// The source is looked for in the [`EVENT_LIMIT_WAYS`] ways of its bucket; a newcomer takes
/// the way whose window started longest ago (see [`SourceRate`]).
#[inline(always)]
pub(super) fn per_source(pkt: &Packet, now: u64, cfg: &Config) -> Option<u32> {
    let (src, _) = pkt.words();
    let family = pkt.family as u32;
    // Seeded per load (as the TCP stream slots): nobody can aim a source at another's bucket.
    let base = event_limit_bucket(seed(), &src, pkt.family);
    let mut found = EVENT_LIMIT_WAYS;
    let mut oldest = 0;
    let mut oldest_age = 0u64;
    let mut w = 0;
    while w < EVENT_LIMIT_WAYS {
        if let Some(slot) = EVENT_LIMIT.get(base + w) {
            if slot.src == src && slot.family == family {
                found = w;
                break;
            }
            // Saturating: a window another CPU started after `now` was read is the newest.
            let age = now.saturating_sub(slot.rate.window_start_ns);
            if age > oldest_age {
                oldest = w;
                oldest_age = age;
            }
        }
        w += 1;
    }
    if found == EVENT_LIMIT_WAYS {
        if let Some(slot) = EVENT_LIMIT.get_ptr_mut(base + oldest) {
            // SAFETY: an array slot; racing writers on other CPUs can only blur the counts.
            unsafe {
                *slot = SourceRate {
                    src,
                    family,
                    _pad: 0,
                    rate: RateState {
                        window_start_ns: now,
                        emitted: 1,
                        suppressed: 0,
                    },
                }
            };
        }
        return Some(0);
    }
    let Some(slot) = EVENT_LIMIT.get_ptr_mut(base + found) else {
        return Some(0);
    };
    // SAFETY: as above.
    let rate = unsafe { &mut (*slot).rate };
    if now.wrapping_sub(rate.window_start_ns) >= NS_PER_SEC {
        rate.window_start_ns = now;
        rate.emitted = 0;
    }
    if rate.emitted >= cfg.events_per_source_per_sec {
        rate.suppressed += 1;
        count(counter_index(Counter::EventsSuppressed));
        return None;
    }
    rate.emitted += 1;
    let s = rate.suppressed;
    rate.suppressed = 0;
    Some(s)
}

/// Writes one event into the ring buffer (a full ring is counted, never waited on).
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "inlined; a struct would only add copies on the BPF stack"
)]
pub(super) fn submit(
    ctx: &XdpContext,
    pkt: &Packet,
    message: u8,
    provider: u16,
    protocol: Protocol,
    verdict: Verdict,
    reason: Reason,
    now: u64,
    suppressed: u32,
) {
    match EVENTS.reserve::<Event>(0) {
        Some(mut entry) => {
            entry.write(Event {
                ts_ns: now,
                ifindex: ctx.ingress_ifindex() as u32,
                pkt_len: (ctx.data_end() - ctx.data()) as u32,
                src: pkt.src,
                dst: pkt.dst,
                sport: pkt.sport.to_be_bytes(),
                dport: pkt.dport.to_be_bytes(),
                suppressed,
                family: pkt.family,
                ip_proto: pkt.ip_proto,
                protocol: protocol as u8,
                message,
                verdict: verdict as u8,
                reason: reason as u8,
                vlan: pkt.vlan.to_be_bytes(),
                provider,
                encap: pkt.encap,
                _pad: [0; 5],
            });
            entry.submit(0);
            count(counter_index(Counter::EventsEmitted));
        }
        None => count(counter_index(Counter::EventsLost)),
    }
}

/// Whether `src`, whose event the spent budget would suppress, was seen within the last window
/// or two and not reported from the reserve for [`REPEAT_REPORT_WINDOWS`] windows. One read
/// and one write of a 16 MiB array; a 16-bit fingerprint keeps a flood of random sources from
/// passing for a repeat (about one in 65,536 collisions with an occupied slot).
#[inline(always)]
pub(super) fn repeat_source_due(src: &[u8; 16], now: u64) -> bool {
    let a = u64::from_le_bytes([
        src[0], src[1], src[2], src[3], src[4], src[5], src[6], src[7],
    ]);
    let b = u64::from_le_bytes([
        src[8], src[9], src[10], src[11], src[12], src[13], src[14], src[15],
    ]);
    let mut h = a ^ b.rotate_left(29) ^ 0x9e37_79b9_7f4a_7c15;
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    let idx = (h as u32) & (REPEAT_SLOTS - 1);
    let fp = ((h >> 48) as u32) | 1;
    let window = ((now / REPEAT_WINDOW_NS) & 0xff) as u32;
    let slot = match REPEAT_SOURCES.get_ptr_mut(idx) {
        Some(s) => s,
        None => return false,
    };
    // SAFETY: an array slot; a racing writer can only lose an update (a missed report).
    let v = unsafe { *slot };
    let (due, reported) = if v >> 16 == fp {
        let seen = (v >> 8) & 0xff;
        let reported = v & 0xff;
        let recent = (window.wrapping_sub(seen) & 0xff) <= 1;
        let quiet = (window.wrapping_sub(reported) & 0xff) >= REPEAT_REPORT_WINDOWS as u32;
        if recent && quiet {
            (true, window)
        } else {
            (false, reported)
        }
    } else {
        (
            false,
            window.wrapping_sub(REPEAT_REPORT_WINDOWS as u32) & 0xff,
        )
    };
    let new = (fp << 16) | (window << 8) | reported;
    if new != v {
        // SAFETY: as above.
        unsafe { *slot = new };
    }
    due
}

/// Takes one event from this CPU's reserve for retrying sources, if any is left this second.
#[inline(always)]
pub(super) fn take_reserve(now: u64) -> bool {
    let reserve = match EVENT_BUDGET.get_ptr_mut(1) {
        // SAFETY: per-CPU slot, only this CPU touches it while the program runs.
        Some(r) => unsafe { &mut *r },
        None => return false,
    };
    if now.wrapping_sub(reserve.window_start_ns) >= NS_PER_SEC {
        reserve.window_start_ns = now;
        reserve.emitted = 0;
    }
    if reserve.emitted >= REPEAT_RESERVE_PER_SEC {
        return false;
    }
    reserve.emitted += 1;
    true
}
