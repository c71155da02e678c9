//! Block ciphers behind one type: DES, 2- and 3-key TDES (EDE), AES-128/192/256 and SM4,
//! in raw block, ECB and CBC form, without padding.
//!
//! A [`Cipher`] holds only the expanded key schedule (zeroized on drop by the RustCrypto
//! crates' `zeroize` feature); it never keeps or prints the key bytes, and its `Debug`
//! shows the algorithm only.

use std::fmt;

use cipher::generic_array::GenericArray;
use cipher::{BlockDecrypt, BlockEncrypt, KeyInit};

use super::CryptoError;

/// A symmetric algorithm together with its key length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Single DES, 8-byte key (legacy UnionPay 001 layouts and X9.9 only).
    Des,
    /// Two-key TDES EDE, 16-byte key `K1‖K2`.
    Tdes2,
    /// Three-key TDES EDE, 24-byte key `K1‖K2‖K3`.
    Tdes3,
    Aes128,
    Aes192,
    Aes256,
    /// SM4 (GB/T 32907), 16-byte key.
    Sm4,
}

impl Algorithm {
    /// Every algorithm, for tests and table-driven code.
    pub const ALL: [Algorithm; 7] = [
        Algorithm::Des,
        Algorithm::Tdes2,
        Algorithm::Tdes3,
        Algorithm::Aes128,
        Algorithm::Aes192,
        Algorithm::Aes256,
        Algorithm::Sm4,
    ];

    /// Key length in bytes.
    pub fn key_len(self) -> usize {
        match self {
            Algorithm::Des => 8,
            Algorithm::Tdes2 | Algorithm::Aes128 | Algorithm::Sm4 => 16,
            Algorithm::Tdes3 | Algorithm::Aes192 => 24,
            Algorithm::Aes256 => 32,
        }
    }

    /// Block length in bytes: 8 for the DES family, 16 for AES and SM4.
    pub fn block_len(self) -> usize {
        if self.is_des_family() {
            8
        } else {
            16
        }
    }

    /// DES, 2-key or 3-key TDES (keys carry parity bits).
    pub fn is_des_family(self) -> bool {
        matches!(self, Algorithm::Des | Algorithm::Tdes2 | Algorithm::Tdes3)
    }

    /// A short stable name, e.g. `"TDES-2KEY"`.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Des => "DES",
            Algorithm::Tdes2 => "TDES-2KEY",
            Algorithm::Tdes3 => "TDES-3KEY",
            Algorithm::Aes128 => "AES-128",
            Algorithm::Aes192 => "AES-192",
            Algorithm::Aes256 => "AES-256",
            Algorithm::Sm4 => "SM4",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The expanded key schedule. AES schedules are boxed to keep the enum small.
pub(crate) enum Schedule {
    Des(des::Des),
    Tdes2(des::TdesEde2),
    Tdes3(des::TdesEde3),
    Aes128(Box<aes::Aes128>),
    Aes192(Box<aes::Aes192>),
    Aes256(Box<aes::Aes256>),
    Sm4(sm4::Sm4),
}

/// The DES family's block path (`super::des_sp`); the RustCrypto schedule
/// beside it serves CMAC, which needs the `cipher` traits. Kept inline (not
/// boxed) so a cached key's round keys stay in its locked page.
#[allow(clippy::large_enum_variant)]
enum Fast {
    None,
    Des(super::des_sp::FastDes),
    Tdes(super::des_sp::FastTdes),
}

/// A keyed block cipher. Build one per key with [`Cipher::new`] (or
/// [`KeyMaterial::cipher`](super::KeyMaterial::cipher)) and reuse it: it is `Send + Sync`.
pub struct Cipher {
    algorithm: Algorithm,
    schedule: Schedule,
    fast: Fast,
}

impl fmt::Debug for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cipher({:?})", self.algorithm)
    }
}

/// Dispatches one in-place block operation to the right RustCrypto type.
macro_rules! on_block {
    ($schedule:expr, $method:ident, $block:expr) => {
        match $schedule {
            Schedule::Des(c) => c.$method(GenericArray::from_mut_slice($block)),
            Schedule::Tdes2(c) => c.$method(GenericArray::from_mut_slice($block)),
            Schedule::Tdes3(c) => c.$method(GenericArray::from_mut_slice($block)),
            Schedule::Aes128(c) => c.$method(GenericArray::from_mut_slice($block)),
            Schedule::Aes192(c) => c.$method(GenericArray::from_mut_slice($block)),
            Schedule::Aes256(c) => c.$method(GenericArray::from_mut_slice($block)),
            Schedule::Sm4(c) => c.$method(GenericArray::from_mut_slice($block)),
        }
    };
}

impl Cipher {
    /// Expands `key` for `alg`. Fails only on a wrong key length; DES parity and weak keys
    /// are checked by [`KeyMaterial::new_checked`](super::KeyMaterial::new_checked), not here.
    pub fn new(alg: Algorithm, key: &[u8]) -> Result<Cipher, CryptoError> {
        let bad_len = || CryptoError::InvalidKeyLength {
            algorithm: alg,
            expected: alg.key_len(),
            actual: key.len(),
        };
        if key.len() != alg.key_len() {
            return Err(bad_len());
        }
        let schedule = match alg {
            Algorithm::Des => Schedule::Des(des::Des::new_from_slice(key).map_err(|_| bad_len())?),
            Algorithm::Tdes2 => {
                Schedule::Tdes2(des::TdesEde2::new_from_slice(key).map_err(|_| bad_len())?)
            }
            Algorithm::Tdes3 => {
                Schedule::Tdes3(des::TdesEde3::new_from_slice(key).map_err(|_| bad_len())?)
            }
            Algorithm::Aes128 => Schedule::Aes128(Box::new(
                aes::Aes128::new_from_slice(key).map_err(|_| bad_len())?,
            )),
            Algorithm::Aes192 => Schedule::Aes192(Box::new(
                aes::Aes192::new_from_slice(key).map_err(|_| bad_len())?,
            )),
            Algorithm::Aes256 => Schedule::Aes256(Box::new(
                aes::Aes256::new_from_slice(key).map_err(|_| bad_len())?,
            )),
            Algorithm::Sm4 => Schedule::Sm4(sm4::Sm4::new_from_slice(key).map_err(|_| bad_len())?),
        };
        let fast = match alg {
            Algorithm::Des => match <&[u8; 8]>::try_from(key) {
                Ok(k) => Fast::Des(super::des_sp::FastDes::new(k)),
                Err(_) => return Err(bad_len()),
            },
            Algorithm::Tdes2 | Algorithm::Tdes3 => {
                Fast::Tdes(super::des_sp::FastTdes::new(key).ok_or_else(bad_len)?)
            }
            _ => Fast::None,
        };
        Ok(Cipher {
            algorithm: alg,
            schedule,
            fast,
        })
    }

    /// The algorithm this cipher was keyed for.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Block length in bytes (8 or 16).
    pub fn block_len(&self) -> usize {
        self.algorithm.block_len()
    }

    pub(crate) fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    fn check_block(&self, operation: &'static str, len: usize) -> Result<(), CryptoError> {
        if len == self.block_len() {
            Ok(())
        } else {
            Err(CryptoError::InvalidDataLength {
                operation,
                requirement: "must be exactly one cipher block",
                actual: len,
            })
        }
    }

    fn check_blocks(&self, operation: &'static str, len: usize) -> Result<(), CryptoError> {
        if len % self.block_len() == 0 {
            Ok(())
        } else {
            Err(CryptoError::InvalidDataLength {
                operation,
                requirement: "must be a multiple of the cipher block length",
                actual: len,
            })
        }
    }

    /// Encrypts one block whose length the caller has already checked.
    pub(crate) fn encrypt_checked(&self, block: &mut [u8]) {
        match (&self.fast, <&mut [u8; 8]>::try_from(&mut *block)) {
            (Fast::Tdes(t), Ok(b)) => t.encrypt(b),
            (Fast::Des(d), Ok(b)) => d.encrypt(b),
            // invariant: every caller passes exactly `self.block_len()` bytes, so
            // `from_mut_slice` (which asserts the length) cannot panic.
            _ => on_block!(&self.schedule, encrypt_block, block),
        }
    }

    /// Starts fetching a DES-family key's round keys: called on a key that is
    /// likely cold (a terminal's, one of thousands) before taking a lock, so
    /// its misses overlap with others instead of following them (see
    /// [`crate::sys::prefetch`]). No effect on any result.
    pub fn warm(&self) {
        match &self.fast {
            Fast::Tdes(t) => t.warm(),
            Fast::Des(d) => d.warm(),
            Fast::None => {}
        }
    }

    /// Decrypts one block whose length the caller has already checked.
    pub(crate) fn decrypt_checked(&self, block: &mut [u8]) {
        match (&self.fast, <&mut [u8; 8]>::try_from(&mut *block)) {
            (Fast::Tdes(t), Ok(b)) => t.decrypt(b),
            (Fast::Des(d), Ok(b)) => d.decrypt(b),
            // invariant: every caller passes exactly `self.block_len()` bytes, so
            // `from_mut_slice` (which asserts the length) cannot panic.
            _ => on_block!(&self.schedule, decrypt_block, block),
        }
    }

    /// Encrypts exactly one block in place.
    pub fn encrypt_block(&self, block: &mut [u8]) -> Result<(), CryptoError> {
        self.check_block("block encrypt", block.len())?;
        self.encrypt_checked(block);
        Ok(())
    }

    /// Decrypts exactly one block in place.
    pub fn decrypt_block(&self, block: &mut [u8]) -> Result<(), CryptoError> {
        self.check_block("block decrypt", block.len())?;
        self.decrypt_checked(block);
        Ok(())
    }

    /// ECB-encrypts in place; `data` must be a whole number of blocks (empty is allowed).
    pub fn ecb_encrypt(&self, data: &mut [u8]) -> Result<(), CryptoError> {
        self.check_blocks("ECB encrypt", data.len())?;
        for block in data.chunks_exact_mut(self.block_len()) {
            self.encrypt_checked(block);
        }
        Ok(())
    }

    /// ECB-decrypts in place; `data` must be a whole number of blocks (empty is allowed).
    pub fn ecb_decrypt(&self, data: &mut [u8]) -> Result<(), CryptoError> {
        self.check_blocks("ECB decrypt", data.len())?;
        for block in data.chunks_exact_mut(self.block_len()) {
            self.decrypt_checked(block);
        }
        Ok(())
    }

    /// CBC-encrypts in place with `iv` (one block); no padding.
    pub fn cbc_encrypt(&self, iv: &[u8], data: &mut [u8]) -> Result<(), CryptoError> {
        self.check_block("CBC IV", iv.len())?;
        self.check_blocks("CBC encrypt", data.len())?;
        let bs = self.block_len();
        let mut chain = [0u8; 16];
        // invariant: block lengths are 8 or 16, never more than the 16-byte buffer.
        let chain = &mut chain[..bs];
        chain.copy_from_slice(iv);
        for block in data.chunks_exact_mut(bs) {
            xor_in_place(block, chain);
            self.encrypt_checked(block);
            chain.copy_from_slice(block);
        }
        Ok(())
    }

    /// CBC-decrypts in place with `iv` (one block); no padding.
    pub fn cbc_decrypt(&self, iv: &[u8], data: &mut [u8]) -> Result<(), CryptoError> {
        self.check_block("CBC IV", iv.len())?;
        self.check_blocks("CBC decrypt", data.len())?;
        let bs = self.block_len();
        let mut chain = [0u8; 16];
        let mut next = [0u8; 16];
        // invariant: block lengths are 8 or 16, never more than the 16-byte buffers.
        let chain = &mut chain[..bs];
        // invariant: as above.
        let next = &mut next[..bs];
        chain.copy_from_slice(iv);
        for block in data.chunks_exact_mut(bs) {
            next.copy_from_slice(block);
            self.decrypt_checked(block);
            xor_in_place(block, chain);
            chain.copy_from_slice(next);
        }
        Ok(())
    }
}

/// `dst ^= src` over the shorter of the two.
pub(crate) fn xor_in_place(dst: &mut [u8], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d ^= s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn cipher_is_send_and_sync() {
        assert_send_sync::<Cipher>();
    }

    #[test]
    fn debug_shows_only_the_algorithm() {
        let c = Cipher::new(Algorithm::Tdes2, &[0x11; 16]).unwrap();
        assert_eq!(format!("{c:?}"), "Cipher(Tdes2)");
    }
}
