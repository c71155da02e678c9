//! Hazmat primitives: block ciphers, key check values, ISO 9564 PIN blocks and MACs.
//!
//! This layer is called only by the HSM core. It works on clear key bytes and clear PINs,
//! so it must never leak them: no key byte or PIN digit appears in an error, a `Debug`
//! string or a log line, clear keys live only in [`KeyMaterial`] (zeroized on drop), and
//! PINs live only in [`Pin`] (zeroized on drop). Functions here hold no state and do no I/O
//! other than reading the OS random number generator.
//!
//! Map:
//! - [`cipher`]: [`Algorithm`] and [`Cipher`] (DES, 2/3-key TDES, AES, SM4; ECB and CBC).
//! - [`secret`]: [`KeyMaterial`], the only holder of clear key bytes, and the OS RNG.
//! - [`deskey`]: DES parity and weak-key checks.
//! - [`kcv`]: key check values.
//! - [`pinblock`]: [`Pan`], [`Pin`] and ISO 9564-1 formats 0, 1, 3 and 4, plus the
//!   UnionPay SM4 form (an 8-byte block zero-padded to 16 bytes).
//! - [`mac`]: ISO 9797-1 algorithms 1 and 3 (X9.9 / X9.19), the UnionPay POS "ECB" MAC,
//!   CMAC (NIST SP 800-38B) and a constant-time comparison.

pub mod cipher;
mod des_sp;
pub mod deskey;
mod error;
pub mod kcv;
pub mod mac;
pub mod pinblock;
pub mod secret;

pub use self::cipher::{Algorithm, Cipher};
pub use self::deskey::{adjust_odd_parity, has_odd_parity, has_weak_part, is_weak_or_semi_weak};
pub use self::error::CryptoError;
pub use self::kcv::{encrypt_zeros, kcv_block, kcv_hex};
pub use self::mac::{
    cmac, iso9797_alg1, iso9797_alg3, mac_eq, unionpay_ecb, unionpay_ecb_block, Padding, RetailMac,
};
pub use self::pinblock::{
    decipher, decipher_iso4, decode_iso0, decode_iso1, decode_iso3, encipher, encipher_iso4,
    encode_iso0, encode_iso1, encode_iso3, Pan, Pin, PinBlockFormat,
};
pub use self::secret::{random_bytes, try_random_bytes, KeyMaterial};
