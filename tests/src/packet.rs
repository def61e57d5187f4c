//! Packet builders: VPN payloads that match the wire formats, and (further down) whole
//! Ethernet frames for BPF_PROG_TEST_RUN and raw sockets.

/// A WireGuard handshake initiation (148 bytes): type 1, reserved zero, sender index,
/// then pseudo-random ephemeral/static/timestamp/mac1 bytes and a zero mac2.
pub fn wireguard_initiation(sender: u32) -> Vec<u8> {
    let mut p = vec![0u8; 148];
    p[0] = 1;
    p[4..8].copy_from_slice(&sender.to_le_bytes());
    fill_pseudo_random(&mut p[8..116], sender as u64);
    p
}

/// A WireGuard handshake response (92 bytes) answering `receiver`.
pub fn wireguard_response(sender: u32, receiver: u32) -> Vec<u8> {
    let mut p = vec![0u8; 92];
    p[0] = 2;
    p[4..8].copy_from_slice(&sender.to_le_bytes());
    p[8..12].copy_from_slice(&receiver.to_le_bytes());
    fill_pseudo_random(&mut p[12..60], sender as u64 ^ 0x5555);
    p
}

/// Deterministic filler (xorshift), so tests are reproducible.
pub fn fill_pseudo_random(buf: &mut [u8], seed: u64) {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for b in buf {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
}
