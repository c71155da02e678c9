//! Key check values (KCVs): a short fingerprint that lets two parties confirm they hold
//! the same key without revealing it.
//!
//! Full blocks are returned; callers truncate (UnionPay field 62 uses 4 bytes, the gRPC
//! API 3). A KCV is a public value; it must never be computed over anything but zeros.

use super::cipher::Cipher;
use super::mac::cmac;

/// `E(K, 0…0)`, one zero block under the key, for any algorithm. This is the UnionPay
/// sign-in check value for DES/TDES and SM4 keys.
pub fn encrypt_zeros(cipher: &Cipher) -> Vec<u8> {
    let mut block = vec![0u8; cipher.block_len()];
    cipher.encrypt_checked(&mut block);
    block
}

/// The standard KCV block: `E(K, zero block)` for DES, TDES and SM4; for AES the CMAC
/// method that ANSI X9.24-1:2017 and PCI PIN require, `AES-CMAC(K, 16 zero bytes)`.
pub fn kcv_block(cipher: &Cipher) -> Vec<u8> {
    match cipher.algorithm() {
        super::Algorithm::Aes128 | super::Algorithm::Aes192 | super::Algorithm::Aes256 => {
            cmac(cipher, &[0u8; 16])
        }
        _ => encrypt_zeros(cipher),
    }
}

/// Upper-case hex of the first `n_bytes` of [`kcv_block`] (the whole block if shorter).
pub fn kcv_hex(cipher: &Cipher, n_bytes: usize) -> String {
    let block = kcv_block(cipher);
    let n = n_bytes.min(block.len());
    hex::encode_upper(block.get(..n).unwrap_or_default())
}
