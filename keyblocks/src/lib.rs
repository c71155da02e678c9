//! TR-31 / ANSI X9.143 key blocks: typed headers, wrap and unwrap.
//!
//! A key block carries a symmetric key encrypted under a *key block protection key*
//! (KBPK) together with a header that fixes what the key may be used for (usage,
//! algorithm, mode of use, exportability, optional blocks). A MAC binds header and key
//! together, so a block whose header was changed — a PIN key relabelled as a MAC key —
//! no longer unwraps.
//!
//! | version | binding method | KBPK | MAC | wrap | unwrap |
//! |---|---|---|---|---|---|
//! | `A`, `C` | TDES key variant (legacy) | TDES 16/24 | 4-byte CBC-MAC | yes | yes |
//! | `B` | TDES CMAC key derivation (TR-31:2018 §5.3.2.1) | TDES 16/24 | 8-byte CMAC | yes | yes |
//! | `D` | AES CMAC key derivation (TR-31:2018 §5.3.2.3, X9.143) | AES 16/24/32 | 16-byte CMAC | yes | yes |
//!
//! Any wrapped key length is accepted (TDES, AES, single DES, or e.g. a 16-byte SM4
//! key under a proprietary algorithm code), up to what fits the 9999-character block.
//!
//! Map of the crate:
//! - [`header`]: [`Header`] and its typed fields; strict [`Header::parse`], canonical
//!   [`Header::to_header_string`], generic optional blocks (short and extended length)
//!   with typed helpers for `KS`, `KC`, `KP` and automatic `PB` padding.
//! - [`wrap`] / [`unwrap`]: the binding methods. `unwrap` verifies the MAC in constant
//!   time before anything is returned and hands the key back as [`Unwrapped`], whose
//!   key is `Zeroizing` and whose `Debug` never prints it.
//! - [`Error`]: one `#[non_exhaustive]` enum; messages name the problem and never
//!   contain key material.
//!
//! Invariants: no I/O, no `unsafe`, no clear key or derived key outside a zeroizing
//! buffer, no key bytes in any error, panic or `Debug` output. This crate checks the
//! *format* of a header; whether a usage may do an operation is the caller's policy.
//!
//! # Example
//!
//! ```
//! use keyblocks::{Algorithm, Exportability, Header, KeyUsage, ModeOfUse, Version};
//!
//! # fn main() -> Result<(), keyblocks::Error> {
//! let kbpk = [0x11u8; 32]; // AES-256 KBPK
//! let pin_key = [0x22u8; 16]; // a 2-key TDES PIN key
//!
//! let mut header = Header::new(
//!     Version::D,
//!     KeyUsage::P0,
//!     Algorithm::TDES,
//!     ModeOfUse::E,
//!     Exportability::NonExportable,
//! );
//! header.set_key_set_id("00604B120F9292800000")?;
//!
//! // Mask the key length: a 2-key TDES key looks like a 3-key one.
//! let block = keyblocks::wrap(&kbpk, &header, &pin_key, Some(24))?;
//! assert!(block.starts_with("D0"));
//!
//! let unwrapped = keyblocks::unwrap(&kbpk, &block)?;
//! assert_eq!(unwrapped.header.key_usage, KeyUsage::P0);
//! assert_eq!(unwrapped.header.key_set_id(), Some("00604B120F9292800000"));
//! assert_eq!(&unwrapped.key[..], &pin_key[..]);
//!
//! // A wrong KBPK (or any tampering) is refused before the key is returned.
//! let err = keyblocks::unwrap(&[0x33u8; 32], &block).unwrap_err();
//! assert_eq!(err, keyblocks::Error::MacMismatch);
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod block;
mod crypto;
mod error;
pub mod header;

pub use block::{unwrap, wrap, wrap_with_padding, Unwrapped};
pub use error::Error;
pub use header::{
    Algorithm, CheckValue, Exportability, Header, KcvAlgorithm, KeyUsage, ModeOfUse, OptionalBlock,
    Version, MAX_BLOCK_LEN,
};
