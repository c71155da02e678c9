//! A fast keyed hash for the maps the hot path reads per call: the terminal
//! cache, the alias cache and the key cache. std's SipHash-1-3 cost ~150
//! instructions per lookup of a 16–32-byte id, three lookups per PIN
//! translation (callgrind); this one costs a multiply per 8 bytes.
//!
//! It is not meant to resist chosen-key flooding the way SipHash does, and
//! does not need to here: every key in these maps was created by an operator
//! (terminal ids, aliases) or minted by poshsm (key ids, and the LMK key
//! blocks a caller may name directly, cached only once the LMK's MAC over
//! them has verified); a caller's lookup of an unknown id never inserts it,
//! and every map is bounded by the key-cache capacity. The seed is still
//! random per map, so the layout of a table differs between processes and
//! between maps.

use std::hash::{BuildHasher, Hasher};

/// Odd constants (the fractional parts of √2 and √3): mixing multipliers.
const K0: u64 = 0x6a09_e667_f3bc_c909;
const K1: u64 = 0xbb67_ae85_84ca_a73b;

/// The high and low halves of a 64×64-bit product, folded by XOR: every
/// input bit reaches the middle bits of the result.
#[inline(always)]
fn fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

/// A [`BuildHasher`] with a random seed, drawn from std's own per-process
/// randomness when the map is created.
#[derive(Clone)]
pub struct FastState {
    seed: u64,
}

impl Default for FastState {
    fn default() -> Self {
        FastState {
            seed: std::hash::RandomState::new().hash_one(0x5eed_u64),
        }
    }
}

impl BuildHasher for FastState {
    type Hasher = FastHasher;
    #[inline]
    fn build_hasher(&self) -> FastHasher {
        FastHasher {
            state: self.seed,
            mul: (K0 ^ self.seed.rotate_left(17)) | 1,
            last: (K1 ^ self.seed) | 1,
        }
    }
}

/// See [`FastState`].
pub struct FastHasher {
    state: u64,
    /// Seed-derived odd multipliers: one per word, one at the end.
    mul: u64,
    last: u64,
}

impl FastHasher {
    #[inline(always)]
    fn mix(&mut self, word: u64) {
        self.state = fold(self.state ^ word, self.mul);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            self.mix(u64::from_le_bytes(b));
        }
        let rest = words.remainder();
        let mut b = [0u8; 8];
        b[..rest.len()].copy_from_slice(rest);
        // The length goes into the last word, so "ab" and "ab\0" differ.
        self.mix(u64::from_le_bytes(b) ^ ((rest.len() as u64) << 59));
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.mix(u64::from(i));
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.mix(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.mix(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.mix(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        fold(self.state, self.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn equal_inputs_hash_equal_and_near_inputs_do_not_collide() {
        let s = FastState::default();
        assert_eq!(s.hash_one("T0000001"), s.hash_one(String::from("T0000001")));
        // Ids that differ in one character, in length only, or in a trailing NUL.
        let mut ids: Vec<String> = (0..100_000).map(|i| format!("T{i:07}")).collect();
        ids.extend(["ab", "ab\0", "ab\0\0", "", "\0"].map(String::from));
        let hashes: HashSet<u64> = ids.iter().map(|id| s.hash_one(id)).collect();
        assert_eq!(hashes.len(), ids.len(), "a collision among sequential ids");
    }

    #[test]
    fn the_low_and_high_bits_spread_sequential_ids() {
        // hashbrown picks the bucket from the low bits and the tag from the top 7.
        let s = FastState::default();
        let mut low = [0u32; 256];
        let mut top = [0u32; 128];
        let n = 256 * 400;
        for i in 0..n {
            let h = s.hash_one(format!("T{i:07}"));
            low[(h & 0xff) as usize] += 1;
            top[(h >> 57) as usize] += 1;
        }
        // Each cell expects 400 (low) / 800 (top); ±40 % is over 7 standard
        // deviations (a fair hash fails this about once in 10^10 runs).
        assert!(low.iter().all(|&c| (240..=560).contains(&c)), "{low:?}");
        assert!(top.iter().all(|&c| (480..=1120).contains(&c)), "{top:?}");
    }

    #[test]
    fn two_maps_get_different_seeds() {
        let (a, b) = (FastState::default(), FastState::default());
        assert_ne!(a.hash_one("T1"), b.hash_one("T1"));
    }
}
