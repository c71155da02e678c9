//! Clear key material and the OS random number generator.
//!
//! [`KeyMaterial`] is the only type in poshsm that holds clear key bytes: it has no
//! `Clone`, no `Serialize`, a `Debug` that prints `<redacted>`, and it zeroizes on drop.
//! Nothing here may copy key bytes into a type without those properties.

use std::fmt;

use rand_core::{OsRng, RngCore};
use secrecy::{ExposeSecret, SecretBox};
use zeroize::Zeroizing;

use super::cipher::{Algorithm, Cipher};
use super::deskey::{adjust_odd_parity, has_odd_parity, has_weak_part};
use super::CryptoError;

/// Fills `buf` from the operating system's CSPRNG.
///
/// # Panics
/// If the OS RNG fails. A payment HSM must not carry on without randomness; use
/// [`try_random_bytes`] where the caller can report the failure instead.
pub fn random_bytes(buf: &mut [u8]) {
    OsRng.fill_bytes(buf);
}

/// Fills `buf` from the operating system's CSPRNG, reporting failure as
/// [`CryptoError::RngFailure`].
pub fn try_random_bytes(buf: &mut [u8]) -> Result<(), CryptoError> {
    OsRng
        .try_fill_bytes(buf)
        .map_err(|_| CryptoError::RngFailure)
}

/// A clear symmetric key and its algorithm.
pub struct KeyMaterial {
    algorithm: Algorithm,
    bytes: SecretBox<[u8]>,
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyMaterial({:?}, <redacted>)", self.algorithm)
    }
}

impl KeyMaterial {
    /// Wraps `bytes` as a key for `alg`, checking only the length. The input buffer is
    /// copied into an exactly-sized secret box and then zeroized.
    pub fn new(alg: Algorithm, bytes: Zeroizing<Vec<u8>>) -> Result<Self, CryptoError> {
        if bytes.len() != alg.key_len() {
            return Err(CryptoError::InvalidKeyLength {
                algorithm: alg,
                expected: alg.key_len(),
                actual: bytes.len(),
            });
        }
        let boxed: Box<[u8]> = Box::from(bytes.as_slice());
        Ok(KeyMaterial {
            algorithm: alg,
            bytes: SecretBox::new(boxed),
        })
    }

    /// Like [`KeyMaterial::new`], and for the DES family also requires odd parity
    /// ([`CryptoError::BadParity`]) and no weak, semi-weak or repeated part
    /// ([`CryptoError::WeakKey`]). Use it for keys entering the HSM.
    pub fn new_checked(alg: Algorithm, bytes: Zeroizing<Vec<u8>>) -> Result<Self, CryptoError> {
        let key = Self::new(alg, bytes)?;
        if alg.is_des_family() {
            if !has_odd_parity(key.expose()) {
                return Err(CryptoError::BadParity);
            }
            if has_weak_part(key.expose()) {
                return Err(CryptoError::WeakKey);
            }
        }
        Ok(key)
    }

    /// A fresh random key from the OS RNG. DES-family keys get odd parity and are re-drawn
    /// while any part is weak/semi-weak or K1 == K2 / K2 == K3.
    pub fn generate(alg: Algorithm) -> Result<Self, CryptoError> {
        let mut buf = Zeroizing::new(vec![0u8; alg.key_len()]);
        loop {
            try_random_bytes(&mut buf)?;
            if !alg.is_des_family() {
                break;
            }
            adjust_odd_parity(&mut buf);
            if !has_weak_part(&buf) {
                break;
            }
        }
        Self::new(alg, buf)
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The clear key bytes. Callers must not copy them out of zeroizing storage.
    pub fn expose(&self) -> &[u8] {
        self.bytes.expose_secret()
    }

    /// An expanded cipher for this key.
    pub fn cipher(&self) -> Result<Cipher, CryptoError> {
        Cipher::new(self.algorithm, self.expose())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let k = KeyMaterial::new(Algorithm::Tdes2, Zeroizing::new(vec![0xAB; 16])).unwrap();
        assert_eq!(format!("{k:?}"), "KeyMaterial(Tdes2, <redacted>)");
    }
}
