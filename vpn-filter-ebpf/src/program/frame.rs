//! The XDP side of the shared parser (`vpn_filter_ebpf::parse`): direct packet access,
//! offsets laundered for the verifier, and the fragment bookkeeping.

use aya_ebpf::bindings::xdp_md;

use super::*;

/// Per-CPU slot the parser passes its offsets through (see [`launder`]).
#[map(name = "PARSE_SCRATCH")]
pub(super) static PARSE_SCRATCH: PerCpuArray<[u64; 8]> = PerCpuArray::with_max_entries(1, 0);

/// Returns `v` unchanged, through a map slot the verifier cannot see into. Every L2 stack,
/// extension header chain and tunnel ends with its own constant offsets; carried in
/// registers they would make the verifier walk the rest of the program once per path. Passed
/// through the slot they are unknown values (bounded again by the caller's checks), and all
/// paths meet in one state.
#[inline(always)]
pub(super) fn launder<const N: usize>(v: [u64; N]) -> Result<[u64; N], Counter> {
    let slot = PARSE_SCRATCH.get_ptr_mut(0).ok_or(Counter::InternalError)?;
    let mut out = [0u64; N];
    let mut i = 0;
    while i < N && i < 8 {
        // SAFETY: a per-CPU slot of eight words, only this CPU touches it while the program
        // runs; volatile so that the compiler does not forward the store to the load.
        unsafe {
            ptr::write_volatile(&mut (*slot)[i], v[i]);
            out[i] = ptr::read_volatile(&(*slot)[i]);
        }
        i += 1;
    }
    Ok(out)
}

/// The XDP side of [`Frame`]: direct packet access, bounds-checked against `data_end`.
pub(super) struct Xdp<'a>(&'a XdpContext);

impl Frame for Xdp<'_> {
    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Result<[u8; N], Counter> {
        read(self.0, offset)
    }

    #[inline(always)]
    fn len(&self) -> usize {
        self.0.data_end() - self.0.data()
    }

    #[inline(always)]
    fn launder<const N: usize>(&self, v: [u64; N]) -> Result<[u64; N], Counter> {
        launder(v)
    }
}

/// [`Frame`] for [`plain`]: reads `data` and `data_end` from the context with volatile loads,
/// so that the compiler cannot hoist them into the caller and pass the packet pointers as
/// integers (which the verifier refuses to do arithmetic on).
struct XdpOwnLoads(*mut xdp_md);

impl XdpOwnLoads {
    #[inline(always)]
    fn bounds(&self) -> (usize, usize) {
        // SAFETY: the context is valid for the program run; two aligned u32 fields.
        unsafe {
            (
                ptr::read_volatile(&(*self.0).data) as usize,
                ptr::read_volatile(&(*self.0).data_end) as usize,
            )
        }
    }
}

impl Frame for XdpOwnLoads {
    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Result<[u8; N], Counter> {
        let (start, end) = self.bounds();
        if start + offset + N > end {
            return Err(Counter::Truncated);
        }
        // SAFETY: bounds-checked against data_end just above.
        Ok(unsafe { load::<N>(start + offset) })
    }

    #[inline(always)]
    fn len(&self) -> usize {
        let (start, end) = self.bounds();
        end - start
    }

    #[inline(always)]
    fn launder<const N: usize>(&self, v: [u64; N]) -> Result<[u64; N], Counter> {
        launder(v)
    }
}

/// The plain-frame parser (`parse_plain`), in a frame of its own: inlined into [`parse`], its
/// locals took that frame's call chain past the 448-byte budget. Takes the context pointer
/// by value: with a `&XdpContext` the compiler spilled the context to the caller's stack.
#[inline(never)]
fn plain(ctx: *mut xdp_md, ip_start: bool, pkt: &mut Packet) -> bool {
    parse::parse_plain(&XdpOwnLoads(ctx), ip_start, pkt)
}

/// Parses the frame (`vpn_filter_ebpf::parse`) and leaves the packet in the scratch slot for
/// [`judge`]. Not inlined: its own stack frame, so its temporaries never stack up with the
/// classifier's (512 bytes for a call chain).
#[inline(never)]
pub(super) fn parse(ctx: &XdpContext, ip_start: bool) -> Result<(), Counter> {
    let mut pkt = Packet::default();
    let r = if plain(ctx.ctx, ip_start, &mut pkt) {
        Ok(())
    } else {
        parse::parse(&Xdp(ctx), ip_start, &mut pkt)
    };
    match pkt.outer_family {
        FAMILY_V4 => count(counter_index(Counter::Ipv4)),
        FAMILY_V6 => count(counter_index(Counter::Ipv6)),
        _ => {}
    }
    if pkt.encap & !ENCAP_VLAN_STACK != 0 {
        count(counter_index(Counter::Encapsulated));
    }
    match r {
        Ok(()) => {}
        Err(Counter::TinyFragment) => {
            // Its later fragments are counted as `fragment_of_dropped`.
            let p = &pkt;
            remember_dropped_fragment(p.family, p.ip_proto, &p.src, &p.dst, p.frag_id);
            return Err(Counter::TinyFragment);
        }
        Err(e) => return Err(e),
    }
    let slot = SCRATCH.get_ptr_mut(0).ok_or(Counter::InternalError)?;
    // SAFETY: a per-CPU slot, only this CPU touches it while the program runs.
    unsafe { (*slot).pkt = pkt };
    Ok(())
}

/// How long a dropped first fragment's datagram is remembered: Linux's reassembly timeout.
pub(super) const FRAG_REASSEMBLY_NS: u64 = 30_000_000_000;

/// Key of `FRAGS_DROPPED`: a datagram whose first fragment was dropped.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct FragKey {
    src: [u8; 16],
    dst: [u8; 16],
    id: u32,
    family: u8,
    ip_proto: u8,
    _pad: [u8; 2],
}

/// Datagrams whose first fragment was dropped (value: when), so that their later fragments
/// are counted (`fragment_of_dropped`). They pass: the receiver cannot reassemble them.
#[map(name = "FRAGS_DROPPED")]
pub(super) static FRAGS_DROPPED: LruHashMap<FragKey, u64> = LruHashMap::with_max_entries(16384, 0);

#[inline(always)]
pub(super) fn fragment_key(
    family: u8,
    ip_proto: u8,
    src: &[u8; 16],
    dst: &[u8; 16],
    id: u32,
) -> FragKey {
    FragKey {
        src: *src,
        dst: *dst,
        id,
        family,
        ip_proto,
        _pad: [0; 2],
    }
}

#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "passing map keys by value copies them onto the 512-byte BPF stack"
)]
#[inline(always)]
pub(super) fn remember_dropped_fragment(
    family: u8,
    ip_proto: u8,
    src: &[u8; 16],
    dst: &[u8; 16],
    id: u32,
) {
    let key = fragment_key(family, ip_proto, src, dst, id);
    let now = now_ns();
    if FRAGS_DROPPED.insert(&key, &now, 0).is_err() {
        count(counter_index(Counter::InternalError));
    }
}

/// [`later_fragment`] for the packet in the scratch slot, in its own frame (off the
/// deepest call chain's stack).
#[inline(never)]
pub(super) fn later_fragment_in_scratch() -> Counter {
    match SCRATCH.get(0) {
        Some(c) => later_fragment(&c.pkt),
        None => Counter::InternalError,
    }
}

/// A later fragment: passed (it has no L4 header to judge), and counted as
/// `fragment_of_dropped` when its first fragment was dropped.
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "passing map keys by value copies them onto the 512-byte BPF stack"
)]
#[inline(always)]
pub(super) fn later_fragment(pkt: &Packet) -> Counter {
    count(counter_index(Counter::Fragment));
    let key = fragment_key(pkt.family, pkt.ip_proto, &pkt.src, &pkt.dst, pkt.frag_id);
    // SAFETY: the value is copied out at once.
    let dropped = unsafe { FRAGS_DROPPED.get(&key) }.copied();
    let now = now_ns();
    match dropped {
        Some(t) if now.saturating_sub(t) < FRAG_REASSEMBLY_NS => Counter::FragmentOfDropped,
        _ => Counter::Packets,
    }
}
