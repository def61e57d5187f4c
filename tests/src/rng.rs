//! The one seeded pseudo-random generator of the tests and benchmarks: rand_pcg's `Pcg64`,
//! so a seed names the same data on every run and machine.

use rand_core::{Rng as _, SeedableRng as _};

/// A generator for `seed`.
pub fn seeded(seed: u64) -> rand_pcg::Pcg64 {
    rand_pcg::Pcg64::seed_from_u64(seed)
}

/// The next 64 random bits.
pub fn next_u64(rng: &mut rand_pcg::Pcg64) -> u64 {
    rng.next_u64()
}
