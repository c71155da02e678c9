//! Message authentication codes used in card payments: ISO 9797-1 algorithm 1 (CBC-MAC,
//! ANSI X9.9 with DES), algorithm 3 (ANSI X9.19 retail MAC), the UnionPay POS "ECB" MAC
//! (DES/TDES and the SM4 variant), and CMAC (NIST SP 800-38B).
//!
//! MACs are computed here and compared by the caller with [`mac_eq`] (constant time);
//! this module never compares MACs with `==` and never returns key-dependent errors.

use cmac::digest::{core_api::CoreWrapper, InnerInit};
use cmac::{CmacCore, Mac};
use subtle::ConstantTimeEq;

use super::cipher::{xor_in_place, Cipher, Schedule};
use super::CryptoError;

/// ISO/IEC 9797-1 padding methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Padding {
    /// Method 1: zero bytes up to a block boundary, none if already aligned; an empty
    /// message becomes one zero block.
    Method1,
    /// Method 2: `0x80`, then zero bytes up to a block boundary; always adds at least one byte.
    Method2,
    /// Method 3: a block holding the message length in bits (big-endian), then the message
    /// padded as in method 1.
    Method3,
}

/// Feeds the padded message to `f` one block at a time, without copying the message.
fn for_each_padded_block(data: &[u8], bs: usize, padding: Padding, mut f: impl FnMut(&[u8])) {
    let mut buf = [0u8; 16];
    if padding == Padding::Method3 {
        let bits = (data.len() as u128).wrapping_mul(8).to_be_bytes();
        // invariant: `bs` is a cipher block length (8 or 16), so `16 - bs` cannot underflow.
        f(&bits[16 - bs..]);
    }
    let chunks = data.chunks_exact(bs);
    let rest = chunks.remainder();
    for block in chunks {
        f(block);
    }
    // invariant: `bs` is a cipher block length (8 or 16), within the 16-byte buffer.
    let last = &mut buf[..bs];
    match padding {
        Padding::Method1 | Padding::Method3 => {
            if !rest.is_empty() || data.is_empty() {
                // invariant: `rest.len() < bs == last.len()` (remainder of `chunks_exact`).
                last[..rest.len()].copy_from_slice(rest);
                f(last);
            }
        }
        Padding::Method2 => {
            // invariant: `rest.len() < bs == last.len()` (remainder of `chunks_exact`).
            last[..rest.len()].copy_from_slice(rest);
            if let Some(marker) = last.get_mut(rest.len()) {
                *marker = 0x80;
            }
            f(last);
        }
    }
}

/// ISO/IEC 9797-1 MAC algorithm 1: CBC-MAC with a zero IV, the MAC being the whole last
/// block. With DES this is ANSI X9.9; with TDES it is the "full 3DES" CBC-MAC; AES and SM4
/// work the same way with 16-byte blocks. Callers truncate.
pub fn iso9797_alg1(cipher: &Cipher, data: &[u8], padding: Padding) -> Vec<u8> {
    let bs = cipher.block_len();
    let mut state = vec![0u8; bs];
    for_each_padded_block(data, bs, padding, |block| {
        xor_in_place(&mut state, block);
        cipher.encrypt_checked(&mut state);
    });
    state
}

/// ISO/IEC 9797-1 MAC algorithm 3 (ANSI X9.19 "retail MAC") with precomputed key
/// schedules, so the hot path does not re-key: single-DES CBC under K1 over every block,
/// then the final block through TDES EDE (K1, K2, K1) for 16-byte keys or
/// (K1, K2, K3) for 24-byte keys.
pub struct RetailMac {
    /// K1‖K2(‖K3): its K1 schedule also runs the single-DES CBC chain, so a
    /// cold MAC key is two (three) schedules to fetch.
    ede: super::des_sp::FastTdes,
}

impl std::fmt::Debug for RetailMac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RetailMac(<redacted>)")
    }
}

impl RetailMac {
    /// `key` is `K1‖K2` (16 bytes) or `K1‖K2‖K3` (24 bytes). An 8-byte key is refused:
    /// X9.19 with K1 == K2 is plain X9.9; call [`iso9797_alg1`] for that explicitly.
    pub fn new(key: &[u8]) -> Result<Self, CryptoError> {
        let bad = || CryptoError::UnusableKeyLength {
            operation: "ISO 9797-1 algorithm 3 (needs a 16- or 24-byte key)",
            actual: key.len(),
        };
        if !matches!(key.len(), 16 | 24) {
            return Err(bad());
        }
        let ede = super::des_sp::FastTdes::new(key).ok_or_else(bad)?;
        Ok(RetailMac { ede })
    }

    /// The full 8-byte MAC of `data` padded with `padding`.
    pub fn compute(&self, data: &[u8], padding: Padding) -> [u8; 8] {
        // Run CBC under K1, remembering the input of the last encryption so the final
        // block can be redone under TDES instead.
        let mut state = [0u8; 8];
        let mut last_input = [0u8; 8];
        for_each_padded_block(data, 8, padding, |block| {
            last_input = state;
            xor_in_place(&mut last_input, block);
            state = last_input;
            self.ede.encrypt_k1(&mut state);
        });
        self.ede.encrypt(&mut last_input);
        last_input
    }

    /// Starts fetching a cold key's schedules (see [`crate::crypto::Cipher::warm`]).
    pub fn warm(&self) {
        self.ede.warm();
    }
}

/// ISO/IEC 9797-1 MAC algorithm 3 (ANSI X9.19) in one call; see [`RetailMac`].
pub fn iso9797_alg3(key: &[u8], data: &[u8], padding: Padding) -> Result<[u8; 8], CryptoError> {
    Ok(RetailMac::new(key)?.compute(data, padding))
}

/// The UnionPay POS "ECB" MAC's final block `O`, before it is turned into ASCII:
/// XOR the zero-padded blocks into `R`; `H = hex(R)` upper-case ASCII (two blocks);
/// `T = E(H[..bs]) ⊕ H[bs..]`; `O = E(T)`. Exposed so callers can choose an output form.
pub fn unionpay_ecb_block(cipher: &Cipher, data: &[u8]) -> Vec<u8> {
    let bs = cipher.block_len();
    let mut r = vec![0u8; bs];
    for block in data.chunks(bs) {
        xor_in_place(&mut r, block);
    }
    let h = hex::encode_upper(&r).into_bytes();
    // invariant: `h` is the hex of `bs` bytes, so it is `2 * bs` long.
    let (h1, h2) = h.split_at(bs);
    let mut t = h1.to_vec();
    cipher.encrypt_checked(&mut t);
    xor_in_place(&mut t, h2);
    cipher.encrypt_checked(&mut t);
    t
}

/// The UnionPay POS "ECB" MAC as carried in field 64 (see API.md "MAC note").
/// - 8-byte-block ciphers (DES, TDES): the first 8 upper-case hex characters of `O`
///   (i.e. the first 4 bytes of `O`), as 8 ASCII bytes.
/// - 16-byte-block ciphers (SM4, AES): the first 8 bytes of `O` as 16 upper-case hex
///   ASCII characters (the 国密 form (a) in VECTORS.md §2.2).
pub fn unionpay_ecb(cipher: &Cipher, data: &[u8]) -> Vec<u8> {
    let o = unionpay_ecb_block(cipher, data);
    let take = if cipher.block_len() == 8 { 4 } else { 8 };
    hex::encode_upper(o.get(..take).unwrap_or_default()).into_bytes()
}

/// CMAC over an existing key schedule (cloned, so the caller's cipher is not re-keyed).
macro_rules! cmac_with {
    ($ty:ty, $inner:expr, $data:expr) => {{
        let core = CmacCore::<$ty>::inner_init($inner.clone());
        let mut mac = CoreWrapper::from_core(core);
        mac.update($data);
        mac.finalize().into_bytes().to_vec()
    }};
}

/// CMAC (NIST SP 800-38B, = ISO 9797-1 MAC algorithm 5) over the key's own cipher, full
/// block length (8 bytes for DES/TDES, 16 for AES/SM4). Callers truncate.
pub fn cmac(cipher: &Cipher, data: &[u8]) -> Vec<u8> {
    match cipher.schedule() {
        Schedule::Des(c) => cmac_with!(des::Des, c, data),
        Schedule::Tdes2(c) => cmac_with!(des::TdesEde2, c, data),
        Schedule::Tdes3(c) => cmac_with!(des::TdesEde3, c, data),
        Schedule::Aes128(c) => cmac_with!(aes::Aes128, **c, data),
        Schedule::Aes192(c) => cmac_with!(aes::Aes192, **c, data),
        Schedule::Aes256(c) => cmac_with!(aes::Aes256, **c, data),
        Schedule::Sm4(c) => cmac_with!(sm4::Sm4, c, data),
    }
}

/// Constant-time MAC comparison; different lengths compare unequal.
pub fn mac_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}
