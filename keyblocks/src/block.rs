//! Wrap a key into a key block and unwrap it again, for versions A, B, C and D.
//!
//! Unwrap authenticates before it trusts or returns anything: for A/C the MAC over
//! header and ciphertext is checked before decryption; for B/D (where the standard
//! MACs the clear payload) the payload is decrypted into a zeroizing scratch buffer
//! and nothing in it is parsed or returned until the MAC verifies. MACs are compared
//! in constant time. Clear keys only ever leave in `Zeroizing` buffers.

use core::fmt;

use aes::{Aes128, Aes192, Aes256};
use des::{TdesEde2, TdesEde3};
use rand_core::{OsRng, RngCore};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::crypto::{self, CmacCipher, DerivedKey, DerivedUsage};
use crate::error::Error;
use crate::header::{
    decode_hex_upper, parse_header_of_block, push_hex_upper, Header, Version, FIXED_HEADER_LEN,
    MAX_BLOCK_LEN,
};

/// The result of a successful [`unwrap`]: the authenticated header and the clear key.
///
/// `Debug` never shows the key bytes.
pub struct Unwrapped {
    /// The header, exactly as bound to the key by the MAC.
    pub header: Header,
    /// The clear key, wiped from memory when dropped.
    pub key: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for Unwrapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Unwrapped")
            .field("header", &self.header)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Wraps `key` under `kbpk` into a key block with `header`, padding with random bytes.
///
/// `masked_key_len`, when set, pads the key to that many bytes before block
/// alignment so the block does not reveal the true key length (e.g. `Some(24)` makes
/// a 2-key TDES key look like a 3-key one). It must not be shorter than the key.
///
/// A `PB` optional block is added to the header when needed for alignment; the
/// header's length field is computed. Returns the key block string.
pub fn wrap(
    kbpk: &[u8],
    header: &Header,
    key: &[u8],
    masked_key_len: Option<usize>,
) -> Result<String, Error> {
    let version = header.version;
    check_kbpk(version, kbpk)?;
    check_key_len(key.len())?;
    let masked = masked_key_len.unwrap_or(key.len());
    if masked < key.len() {
        return Err(Error::MaskedLengthTooShort {
            masked,
            key: key.len(),
        });
    }
    let bs = version.block_size();
    let align = (bs - (2 + masked) % bs) % bs;
    let mut padding = Zeroizing::new(vec![0u8; masked - key.len() + align]);
    OsRng
        .try_fill_bytes(&mut padding)
        .map_err(|_| Error::RandomUnavailable)?;
    wrap_with_padding(kbpk, header, key, &padding)
}

/// Wraps with caller-chosen padding bytes instead of random ones, so that known-answer
/// tests can reproduce published key blocks. `2 + key.len() + padding.len()` must be a
/// multiple of the version's block size; padding beyond alignment masks the key length.
///
/// Never use this for real keys: padding must be random.
#[doc(hidden)]
pub fn wrap_with_padding(
    kbpk: &[u8],
    header: &Header,
    key: &[u8],
    padding: &[u8],
) -> Result<String, Error> {
    let version = header.version;
    check_kbpk(version, kbpk)?;
    check_key_len(key.len())?;
    let bs = version.block_size();
    if (2 + key.len() + padding.len()) % bs != 0 {
        return Err(Error::BadPaddingLength {
            len: padding.len(),
            block_size: bs,
        });
    }
    let (blocks, count) = header.encode_optional_blocks()?;
    let header_len = FIXED_HEADER_LEN + blocks.len();
    let payload_len = 2 + key.len() + padding.len();
    let mac_len = version.mac_len();
    let total = header_len + 2 * payload_len + 2 * mac_len;
    if total > MAX_BLOCK_LEN {
        return Err(Error::BlockTooLong { len: total });
    }
    let bits =
        u16::try_from(key.len() * 8).map_err(|_| Error::InvalidKeyLength { len: key.len() })?;

    let mut out = String::with_capacity(total);
    header.encode_fixed(&mut out, total, count)?;
    out.push_str(&blocks);

    let mut payload = Zeroizing::new(Vec::with_capacity(payload_len));
    payload.extend_from_slice(&bits.to_be_bytes());
    payload.extend_from_slice(key);
    payload.extend_from_slice(padding);

    let mut mac = [0u8; 16];
    let header_bytes = out.as_bytes();
    let sealed = match (version, kbpk.len()) {
        (Version::A | Version::C, 16) => {
            seal_variant::<TdesEde2>(kbpk, header_bytes, &mut payload, &mut mac)
        }
        (Version::A | Version::C, 24) => {
            seal_variant::<TdesEde3>(kbpk, header_bytes, &mut payload, &mut mac)
        }
        (Version::B, 16) => {
            seal_derived::<TdesEde2>(kbpk, ALG_TDES2, header_bytes, &mut payload, &mut mac)
        }
        (Version::B, 24) => {
            seal_derived::<TdesEde3>(kbpk, ALG_TDES3, header_bytes, &mut payload, &mut mac)
        }
        (Version::D, 16) => {
            seal_derived::<Aes128>(kbpk, ALG_AES128, header_bytes, &mut payload, &mut mac)
        }
        (Version::D, 24) => {
            seal_derived::<Aes192>(kbpk, ALG_AES192, header_bytes, &mut payload, &mut mac)
        }
        (Version::D, 32) => {
            seal_derived::<Aes256>(kbpk, ALG_AES256, header_bytes, &mut payload, &mut mac)
        }
        _ => None,
    };
    // check_kbpk admitted the length, so the dispatch above always finds a cipher;
    // None here can only mean an internal length mismatch.
    sealed.ok_or(Error::InvalidKbpkLength {
        version,
        len: kbpk.len(),
    })?;
    // `payload` now holds ciphertext.
    push_hex_upper(&mut out, &payload);
    push_hex_upper(&mut out, &mac[..mac_len]);
    Ok(out)
}

/// Unwraps a key block: parses the header strictly, checks the KBPK length for the
/// version, verifies the MAC in constant time, and returns the header and clear key.
///
/// Any tampering with header, encrypted key data or MAC, and any wrong KBPK, yields
/// [`Error::MacMismatch`]; structural problems yield the specific error.
pub fn unwrap(kbpk: &[u8], block: &str) -> Result<Unwrapped, Error> {
    let (header, header_len) = parse_header_of_block(block)?;
    let version = header.version;
    check_kbpk(version, kbpk)?;

    // invariant: the parser only returns header lengths within the block; the
    // checked split merely keeps this function free of panicking paths.
    let (header_bytes, rest) = block
        .as_bytes()
        .split_at_checked(header_len)
        .ok_or(Error::BadPayloadLength { len: 0, version })?;
    let mac_len = version.mac_len();
    let bs = version.block_size();
    let Some(payload_hex_len) = rest.len().checked_sub(2 * mac_len) else {
        return Err(Error::BadPayloadLength { len: 0, version });
    };
    if payload_hex_len == 0 || payload_hex_len % (2 * bs) != 0 {
        return Err(Error::BadPayloadLength {
            len: payload_hex_len,
            version,
        });
    }
    let (payload_hex, mac_hex) = rest.split_at(payload_hex_len);
    let mut received_mac = [0u8; 16];
    decode_hex_upper(mac_hex, &mut received_mac[..mac_len])
        .map_err(|_| Error::BadHex { part: "MAC" })?;
    let mut payload = Zeroizing::new(vec![0u8; payload_hex_len / 2]);
    decode_hex_upper(payload_hex, &mut payload).map_err(|_| Error::BadHex {
        part: "encrypted key data",
    })?;

    let mac = &received_mac[..mac_len];
    let opened = match (version, kbpk.len()) {
        (Version::A | Version::C, 16) => {
            open_variant::<TdesEde2>(kbpk, header_bytes, &mut payload, mac)
        }
        (Version::A | Version::C, 24) => {
            open_variant::<TdesEde3>(kbpk, header_bytes, &mut payload, mac)
        }
        (Version::B, 16) => {
            open_derived::<TdesEde2>(kbpk, ALG_TDES2, header_bytes, &mut payload, mac)
        }
        (Version::B, 24) => {
            open_derived::<TdesEde3>(kbpk, ALG_TDES3, header_bytes, &mut payload, mac)
        }
        (Version::D, 16) => {
            open_derived::<Aes128>(kbpk, ALG_AES128, header_bytes, &mut payload, mac)
        }
        (Version::D, 24) => {
            open_derived::<Aes192>(kbpk, ALG_AES192, header_bytes, &mut payload, mac)
        }
        (Version::D, 32) => {
            open_derived::<Aes256>(kbpk, ALG_AES256, header_bytes, &mut payload, mac)
        }
        _ => Err(Error::InvalidKbpkLength {
            version,
            len: kbpk.len(),
        }),
    };
    opened?;

    // Authenticated from here on: `payload` is `key length in bits ‖ key ‖ padding`.
    let Some(([hi, lo], body)) = payload.split_first_chunk::<2>() else {
        return Err(Error::BadKeyLengthField);
    };
    let bits = usize::from(u16::from_be_bytes([*hi, *lo]));
    let key = match body.get(..bits / 8) {
        Some(key) if bits != 0 && bits % 8 == 0 => Zeroizing::new(key.to_vec()),
        _ => return Err(Error::BadKeyLengthField),
    };
    Ok(Unwrapped { header, key })
}

/// Key derivation "algorithm" indicators of TR-31:2018 §5.3.2.
const ALG_TDES2: u16 = 0x0000;
const ALG_TDES3: u16 = 0x0001;
const ALG_AES128: u16 = 0x0002;
const ALG_AES192: u16 = 0x0003;
const ALG_AES256: u16 = 0x0004;

/// Key variant masks of the variant binding method (versions A and C).
const KBEK_VARIANT: u8 = 0x45;
const KBAK_VARIANT: u8 = 0x4D;

/// Length of the A/C MAC: the leftmost 4 bytes of the CBC-MAC.
const VARIANT_MAC_LEN: usize = 4;

fn check_kbpk(version: Version, kbpk: &[u8]) -> Result<(), Error> {
    if version.is_valid_kbpk_len(kbpk.len()) {
        Ok(())
    } else {
        Err(Error::InvalidKbpkLength {
            version,
            len: kbpk.len(),
        })
    }
}

fn check_key_len(len: usize) -> Result<(), Error> {
    // The 9999-char block bounds the key far below u16::MAX bits; this early check
    // only gives a clearer error than BlockTooLong for absurd lengths.
    if len == 0 || len > MAX_BLOCK_LEN / 2 {
        Err(Error::InvalidKeyLength { len })
    } else {
        Ok(())
    }
}

fn derive_pair<C: CmacCipher>(kbpk: &[u8], algorithm: u16) -> Option<(DerivedKey, DerivedKey)> {
    let kbek = crypto::derive_key::<C>(kbpk, DerivedUsage::Encryption, algorithm)?;
    let kbak = crypto::derive_key::<C>(kbpk, DerivedUsage::Authentication, algorithm)?;
    Some((kbek, kbak))
}

/// B/D wrap: MAC = CMAC(KBAK, header ‖ clear payload); payload encrypted with
/// CBC under the KBEK, the MAC as IV.
fn seal_derived<C>(
    kbpk: &[u8],
    algorithm: u16,
    header: &[u8],
    payload: &mut [u8],
    mac: &mut [u8; 16],
) -> Option<()>
where
    C: CmacCipher + cipher::BlockEncrypt + cipher::KeyInit,
{
    let (kbek, kbak) = derive_pair::<C>(kbpk, algorithm)?;
    let bs = <C as cipher::BlockSizeUser>::block_size();
    C::cmac(kbak.as_slice(), &[header, payload], mac)?;
    crypto::cbc_encrypt::<C>(kbek.as_slice(), &mac[..bs], payload)
}

/// B/D unwrap: decrypt into the (zeroizing) payload buffer with the received MAC as
/// IV, then recompute the CMAC over header ‖ clear payload and compare in constant
/// time. On mismatch the caller drops (and so wipes) the buffer unread.
fn open_derived<C>(
    kbpk: &[u8],
    algorithm: u16,
    header: &[u8],
    payload: &mut [u8],
    received_mac: &[u8],
) -> Result<(), Error>
where
    C: CmacCipher + cipher::BlockDecrypt + cipher::KeyInit,
{
    let internal = Error::MacMismatch;
    let (kbek, kbak) = derive_pair::<C>(kbpk, algorithm).ok_or(internal.clone())?;
    crypto::cbc_decrypt::<C>(kbek.as_slice(), received_mac, payload).ok_or(internal.clone())?;
    let mut computed = [0u8; 16];
    C::cmac(kbak.as_slice(), &[header, payload], &mut computed).ok_or(internal)?;
    let bs = <C as cipher::BlockSizeUser>::block_size();
    if bool::from(computed[..bs].ct_eq(received_mac)) {
        Ok(())
    } else {
        Err(Error::MacMismatch)
    }
}

/// A/C wrap: payload encrypted with CBC under KBEK = KBPK ⊕ 45…, IV = first 8 header
/// chars; MAC = leftmost 4 bytes of CBC-MAC(KBAK = KBPK ⊕ 4D…, header ‖ ciphertext).
fn seal_variant<C>(kbpk: &[u8], header: &[u8], payload: &mut [u8], mac: &mut [u8; 16]) -> Option<()>
where
    C: cipher::BlockEncrypt + cipher::KeyInit,
{
    let kbek = crypto::variant_key(kbpk, KBEK_VARIANT);
    let kbak = crypto::variant_key(kbpk, KBAK_VARIANT);
    let bs = <C as cipher::BlockSizeUser>::block_size();
    crypto::cbc_encrypt::<C>(kbek.as_slice(), header.get(..bs)?, payload)?;
    let mut full = [0u8; 16];
    crypto::cbc_mac::<C>(kbak.as_slice(), &[header, payload], &mut full)?;
    mac[..VARIANT_MAC_LEN].copy_from_slice(&full[..VARIANT_MAC_LEN]);
    Some(())
}

/// A/C unwrap: verify the MAC over header ‖ ciphertext in constant time first, and
/// only then decrypt.
fn open_variant<C>(
    kbpk: &[u8],
    header: &[u8],
    payload: &mut [u8],
    received_mac: &[u8],
) -> Result<(), Error>
where
    C: cipher::BlockEncrypt + cipher::BlockDecrypt + cipher::KeyInit,
{
    let kbak = crypto::variant_key(kbpk, KBAK_VARIANT);
    let mut full = [0u8; 16];
    crypto::cbc_mac::<C>(kbak.as_slice(), &[header, payload], &mut full)
        .ok_or(Error::MacMismatch)?;
    if !bool::from(full[..VARIANT_MAC_LEN].ct_eq(received_mac)) {
        return Err(Error::MacMismatch);
    }
    let kbek = crypto::variant_key(kbpk, KBEK_VARIANT);
    let bs = <C as cipher::BlockSizeUser>::block_size();
    let iv = header.get(..bs).ok_or(Error::MacMismatch)?;
    crypto::cbc_decrypt::<C>(kbek.as_slice(), iv, payload).ok_or(Error::MacMismatch)
}
