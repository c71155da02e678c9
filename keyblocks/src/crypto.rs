//! Hazmat: the cipher plumbing behind the binding methods (CBC, CBC-MAC, CMAC key
//! derivation, key variants), generic over the RustCrypto `cipher` 0.4 block ciphers.
//!
//! Private to the crate. Every derived key lives in a `Zeroizing` buffer and every
//! cipher instance zeroizes its schedule on drop (`des`/`aes`/`cmac` "zeroize"
//! features); nothing here formats, logs or returns an error carrying key bytes.

use cipher::generic_array::GenericArray;
use cipher::{BlockDecrypt, BlockEncrypt, BlockSizeUser, KeyInit};
use cmac::{Cmac, Mac};
use zeroize::{Zeroize, Zeroizing};

use aes::{Aes128, Aes192, Aes256};
use des::{TdesEde2, TdesEde3};

/// Largest KBPK / derived key handled (AES-256).
pub(crate) const MAX_KEY: usize = 32;

/// Largest cipher block (AES).
const MAX_BLOCK: usize = 16;

/// A derived key of the same length as the KBPK, wiped on drop.
pub(crate) struct DerivedKey {
    bytes: Zeroizing<[u8; MAX_KEY]>,
    len: usize,
}

impl DerivedKey {
    fn new(len: usize) -> DerivedKey {
        DerivedKey {
            bytes: Zeroizing::new([0u8; MAX_KEY]),
            len: len.min(MAX_KEY),
        }
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.bytes[..self.len]
    }
}

/// Key usage indicator of the TR-31 key derivation data.
#[derive(Clone, Copy)]
pub(crate) enum DerivedUsage {
    /// `0000`: key block encryption key (KBEK).
    Encryption,
    /// `0001`: key block MAC key (KBAK / KBMK).
    Authentication,
}

/// Derives a KBEK or KBAK by the key derivation binding method (TR-31:2018
/// §5.3.2.1 for TDES, §5.3.2.3 for AES): CMAC under the KBPK of
/// `counter ‖ usage ‖ 00 ‖ algorithm ‖ length-in-bits`, one call per cipher block
/// of output, truncated to the KBPK length.
pub(crate) fn derive_key<C: CmacCipher>(
    kbpk: &[u8],
    usage: DerivedUsage,
    algorithm: u16,
) -> Option<DerivedKey> {
    let bs = C::block_size();
    let mut out = DerivedKey::new(kbpk.len());
    let bits = u16::try_from(kbpk.len() * 8).ok()?;
    let usage: u16 = match usage {
        DerivedUsage::Encryption => 0x0000,
        DerivedUsage::Authentication => 0x0001,
    };
    let mut tag = Zeroizing::new([0u8; MAX_BLOCK]);
    for (i, chunk) in out.as_mut_slice().chunks_mut(bs).enumerate() {
        let counter = u8::try_from(i + 1).ok()?;
        let [u_hi, u_lo] = usage.to_be_bytes();
        let [a_hi, a_lo] = algorithm.to_be_bytes();
        let [l_hi, l_lo] = bits.to_be_bytes();
        let input = [counter, u_hi, u_lo, 0x00, a_hi, a_lo, l_hi, l_lo];
        C::cmac(kbpk, &[&input], &mut tag[..])?;
        chunk.copy_from_slice(&tag[..chunk.len()]);
    }
    Some(out)
}

/// A variant of the KBPK for the key variant binding method (versions A and C):
/// every byte XORed with `mask` (0x45 for the KBEK, 0x4D for the KBAK).
pub(crate) fn variant_key(kbpk: &[u8], mask: u8) -> DerivedKey {
    let mut out = DerivedKey::new(kbpk.len());
    for (o, k) in out.as_mut_slice().iter_mut().zip(kbpk) {
        *o = k ^ mask;
    }
    out
}

/// A block cipher usable for CMAC (NIST SP 800-38B) in this crate.
///
/// Implemented for the five concrete ciphers the binding methods use; a trait per
/// concrete type keeps the `cmac` crate's generic bounds out of our signatures.
pub(crate) trait CmacCipher: BlockSizeUser {
    /// CMAC under `key` of `parts` concatenated; the full tag goes to the front of `out`.
    fn cmac(key: &[u8], parts: &[&[u8]], out: &mut [u8]) -> Option<()>;
}

macro_rules! cmac_cipher {
    ($($cipher:ty),+) => {$(
        impl CmacCipher for $cipher {
            fn cmac(key: &[u8], parts: &[&[u8]], out: &mut [u8]) -> Option<()> {
                let mut mac = <Cmac<$cipher> as KeyInit>::new_from_slice(key).ok()?;
                for part in parts {
                    Mac::update(&mut mac, part);
                }
                let mut tag = mac.finalize().into_bytes();
                let dst = out.get_mut(..tag.len());
                let copied = dst.map(|d| d.copy_from_slice(&tag));
                tag.as_mut_slice().zeroize();
                copied
            }
        }
    )+};
}

cmac_cipher!(TdesEde2, TdesEde3, Aes128, Aes192, Aes256);

/// CBC encryption in place; `data` must be a whole number of blocks.
pub(crate) fn cbc_encrypt<C>(key: &[u8], iv: &[u8], data: &mut [u8]) -> Option<()>
where
    C: BlockEncrypt + KeyInit,
{
    let cipher = C::new_from_slice(key).ok()?;
    let bs = C::block_size();
    if iv.len() != bs || data.len() % bs != 0 {
        return None;
    }
    let mut chain = [0u8; MAX_BLOCK];
    chain[..bs].copy_from_slice(iv);
    for block in data.chunks_exact_mut(bs) {
        for (b, c) in block.iter_mut().zip(&chain[..bs]) {
            *b ^= c;
        }
        cipher.encrypt_block(GenericArray::from_mut_slice(block));
        chain[..bs].copy_from_slice(block);
    }
    Some(())
}

/// CBC decryption in place; `data` must be a whole number of blocks.
pub(crate) fn cbc_decrypt<C>(key: &[u8], iv: &[u8], data: &mut [u8]) -> Option<()>
where
    C: BlockDecrypt + KeyInit,
{
    let cipher = C::new_from_slice(key).ok()?;
    let bs = C::block_size();
    if iv.len() != bs || data.len() % bs != 0 {
        return None;
    }
    let mut chain = [0u8; MAX_BLOCK];
    let mut saved = [0u8; MAX_BLOCK];
    chain[..bs].copy_from_slice(iv);
    for block in data.chunks_exact_mut(bs) {
        saved[..bs].copy_from_slice(block);
        cipher.decrypt_block(GenericArray::from_mut_slice(block));
        for (b, c) in block.iter_mut().zip(&chain[..bs]) {
            *b ^= c;
        }
        chain = saved;
    }
    Some(())
}

/// Plain CBC-MAC (ISO 9797-1 algorithm 1, no padding, zero IV) of `parts`
/// concatenated; the total length must be a whole number of blocks. Returns the
/// last block in `out`.
pub(crate) fn cbc_mac<C>(key: &[u8], parts: &[&[u8]], out: &mut [u8]) -> Option<()>
where
    C: BlockEncrypt + KeyInit,
{
    let cipher = C::new_from_slice(key).ok()?;
    let bs = C::block_size();
    let mut state = [0u8; MAX_BLOCK];
    let mut pos = 0;
    for part in parts {
        for &byte in *part {
            state[pos] ^= byte;
            pos += 1;
            if pos == bs {
                cipher.encrypt_block(GenericArray::from_mut_slice(&mut state[..bs]));
                pos = 0;
            }
        }
    }
    if pos != 0 {
        return None;
    }
    out.get_mut(..bs)?.copy_from_slice(&state[..bs]);
    Some(())
}
