//! DES-family key hygiene: odd parity and the weak / semi-weak key list.
//!
//! Used when keys are generated or imported. These checks compare key bytes, so they run
//! without early exit on the bytes (via `subtle`) and never report which part failed.

use subtle::{Choice, ConstantTimeEq};
use zeroize::Zeroizing;

/// The 4 weak and 12 semi-weak DES keys with odd parity: FIPS 74 (1981) §3.6 and
/// NIST SP 800-67 Rev. 2 §3.3.2.
pub const WEAK_AND_SEMI_WEAK_KEYS: [[u8; 8]; 16] = [
    // weak
    [0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01],
    [0xFE, 0xFE, 0xFE, 0xFE, 0xFE, 0xFE, 0xFE, 0xFE],
    [0xE0, 0xE0, 0xE0, 0xE0, 0xF1, 0xF1, 0xF1, 0xF1],
    [0x1F, 0x1F, 0x1F, 0x1F, 0x0E, 0x0E, 0x0E, 0x0E],
    // semi-weak pairs
    [0x01, 0xFE, 0x01, 0xFE, 0x01, 0xFE, 0x01, 0xFE],
    [0xFE, 0x01, 0xFE, 0x01, 0xFE, 0x01, 0xFE, 0x01],
    [0x1F, 0xE0, 0x1F, 0xE0, 0x0E, 0xF1, 0x0E, 0xF1],
    [0xE0, 0x1F, 0xE0, 0x1F, 0xF1, 0x0E, 0xF1, 0x0E],
    [0x01, 0xE0, 0x01, 0xE0, 0x01, 0xF1, 0x01, 0xF1],
    [0xE0, 0x01, 0xE0, 0x01, 0xF1, 0x01, 0xF1, 0x01],
    [0x1F, 0xFE, 0x1F, 0xFE, 0x0E, 0xFE, 0x0E, 0xFE],
    [0xFE, 0x1F, 0xFE, 0x1F, 0xFE, 0x0E, 0xFE, 0x0E],
    [0x01, 0x1F, 0x01, 0x1F, 0x01, 0x0E, 0x01, 0x0E],
    [0x1F, 0x01, 0x1F, 0x01, 0x0E, 0x01, 0x0E, 0x01],
    [0xE0, 0xFE, 0xE0, 0xFE, 0xF1, 0xFE, 0xF1, 0xFE],
    [0xFE, 0xE0, 0xFE, 0xE0, 0xFE, 0xF1, 0xFE, 0xF1],
];

/// The byte with its low bit set so that it has an odd number of one bits.
fn odd_parity_byte(b: u8) -> u8 {
    let high = b & 0xFE;
    if high.count_ones() % 2 == 0 {
        high | 1
    } else {
        high
    }
}

/// True if every byte has an odd number of one bits (DES key parity).
pub fn has_odd_parity(key: &[u8]) -> bool {
    key.iter().all(|b| b.count_ones() % 2 == 1)
}

/// Sets the low bit of every byte so the key has odd parity. Idempotent.
pub fn adjust_odd_parity(key: &mut [u8]) {
    for b in key.iter_mut() {
        *b = odd_parity_byte(*b);
    }
}

/// Parity-adjusted copy of an 8-byte part; `None` if `part` is not 8 bytes.
fn adjusted(part: &[u8]) -> Option<Zeroizing<[u8; 8]>> {
    let mut out = Zeroizing::new([0u8; 8]);
    if part.len() != 8 {
        return None;
    }
    out.copy_from_slice(part);
    adjust_odd_parity(out.as_mut_slice());
    Some(out)
}

fn weak_choice(adjusted8: &[u8; 8]) -> Choice {
    WEAK_AND_SEMI_WEAK_KEYS
        .iter()
        .fold(Choice::from(0), |acc, weak| acc | adjusted8.ct_eq(weak))
}

/// True if the 8-byte DES key is one of the 4 weak or 12 semi-weak keys, ignoring parity
/// bits. Any other length returns `false`.
pub fn is_weak_or_semi_weak(key8: &[u8]) -> bool {
    match adjusted(key8) {
        Some(k) => weak_choice(&k).into(),
        None => false,
    }
}

/// True if any 8-byte part of a DES/TDES key is weak or semi-weak, or if K1 == K2 or
/// K2 == K3 (ignoring parity), which makes TDES EDE collapse to single DES.
/// Lengths that are not 8, 16 or 24 bytes return `false` (they are not DES keys).
pub fn has_weak_part(key: &[u8]) -> bool {
    if !matches!(key.len(), 8 | 16 | 24) {
        return false;
    }
    let mut bad = Choice::from(0);
    let mut previous: Option<Zeroizing<[u8; 8]>> = None;
    for part in key.chunks_exact(8).filter_map(adjusted) {
        bad |= weak_choice(&part);
        if let Some(prev) = &previous {
            bad |= prev.ct_eq(&*part);
        }
        previous = Some(part);
    }
    bad.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parity_byte_table_is_odd() {
        for b in 0..=255u8 {
            let p = odd_parity_byte(b);
            assert_eq!(p.count_ones() % 2, 1);
            assert_eq!(p & 0xFE, b & 0xFE);
        }
    }
}
