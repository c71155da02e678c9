//! Power-on self-tests: known-answer tests of every algorithm from published
//! vectors, an LMK wrap/unwrap round trip, the audit chain, and every stored
//! key record (its block must unwrap under the LMK and agree with the record).
//! Any failure returns the reason; the caller puts the module in ALARM.

use super::Hsm;
use crate::crypto::pinblock::{self, Pan, Pin};
use crate::crypto::{mac, Algorithm, Cipher};
use crate::keys::{self, KeyMeta, KeyType, LoadedKey};

fn h(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap_or_default()
}

fn kat(name: &str, got: &[u8], want_hex: &str) -> Result<(), String> {
    if hex::encode_upper(got) == want_hex.to_ascii_uppercase() {
        Ok(())
    } else {
        Err(format!("known-answer test {name} failed"))
    }
}

fn ecb(alg: Algorithm, key: &str, data: &str) -> Result<Vec<u8>, String> {
    let c = Cipher::new(alg, &h(key)).map_err(|e| e.to_string())?;
    let mut d = h(data);
    c.ecb_encrypt(&mut d).map_err(|e| e.to_string())?;
    Ok(d)
}

/// The algorithm KATs alone (also run by `poshsm selftest`).
pub fn algorithms() -> Result<(), String> {
    // FIPS 197 Appendix C.1 (AES-128).
    kat(
        "AES-128 (FIPS 197 C.1)",
        &ecb(
            Algorithm::Aes128,
            "000102030405060708090a0b0c0d0e0f",
            "00112233445566778899aabbccddeeff",
        )?,
        "69c4e0d86a7b0430d8cdb78070b4c55a",
    )?;
    // GB/T 32907-2016 Appendix A.1 (SM4).
    kat(
        "SM4 (GB/T 32907 A.1)",
        &ecb(
            Algorithm::Sm4,
            "0123456789ABCDEFFEDCBA9876543210",
            "0123456789ABCDEFFEDCBA9876543210",
        )?,
        "681EDF34D206965E86B3E94F536E4246",
    )?;
    // RFC 4493 §4 example 1 (AES-CMAC, empty message).
    let c = Cipher::new(Algorithm::Aes128, &h("2b7e151628aed2a6abf7158809cf4f3c"))
        .map_err(|e| e.to_string())?;
    kat(
        "AES-CMAC (RFC 4493 ex. 1)",
        &mac::cmac(&c, b""),
        "bb1d6929e95937287fa37d129b756746",
    )?;
    // psec docstring: full-TDES CBC-MAC, padding method 2.
    let c = Cipher::new(Algorithm::Tdes2, &h("0123456789ABCDEFFEDCBA9876543210"))
        .map_err(|e| e.to_string())?;
    kat(
        "TDES CBC-MAC (psec generate_cbc_mac)",
        &mac::iso9797_alg1(&c, &h("1234567890ABCDEF"), mac::Padding::Method2),
        "925B1737EF681AD3",
    )?;
    // psec tests/test_mac.py: X9.19 retail MAC, K = "A"*8 ‖ "B"*8, "hello world", method 1.
    let r = mac::iso9797_alg3(b"AAAAAAAABBBBBBBB", b"hello world", mac::Padding::Method1)
        .map_err(|e| e.to_string())?;
    kat("X9.19 retail MAC (psec)", &r, "3DDE5C5511661CBF")?;
    // solo123/pgate pos_mac_test.rb: UnionPay POS ECB MAC with a DES MAK.
    let c = Cipher::new(Algorithm::Des, &h("2222222222222222")).map_err(|e| e.to_string())?;
    kat(
        "UnionPay ECB MAC (pgate)",
        &mac::unionpay_ecb(&c, &h("1234567890ABCDEFABCDEF1234567890")),
        &hex::encode_upper(b"E267B6E2"),
    )?;
    // psec tests: ISO 9564 format 0, PIN 1234, PAN 5555555551234567.
    let pin = Pin::parse("1234").map_err(|e| e.to_string())?;
    let pan = Pan::parse("5555555551234567").map_err(|e| e.to_string())?;
    kat(
        "ISO 9564 format 0 (psec)",
        &pinblock::encode_iso0(&pin, &pan)[..],
        "041261AAAAEDCBA9",
    )?;
    Ok(())
}

pub fn run(hsm: &Hsm) -> Result<(), String> {
    algorithms()?;
    // LMK: wrap and unwrap a fixed key; the KCV must survive.
    let probe = LoadedKey::new(
        KeyMeta {
            key_type: KeyType::Zpk,
            algorithm: Algorithm::Tdes2,
            exportable: false,
            key_id: Some("selftest".into()),
            kcv: String::new(),
        },
        &h("0123456789ABCDEFFEDCBA9876543210"),
    )
    .map_err(|e| format!("LMK self-test: {e}"))?;
    let lmks = hsm.lmks();
    let block = keys::wrap_under_lmk(&lmks.current, &probe)
        .map_err(|e| format!("LMK self-test wrap: {e}"))?;
    let back = keys::unwrap_from_lmk(&lmks.current, &block)
        .map_err(|e| format!("LMK self-test unwrap: {e}"))?;
    // The TDES KCV of this key is published by psec (generate_kcv → 08D7).
    if back.meta().kcv != "08D7B4" || back.meta() != probe.meta() {
        return Err("LMK self-test: round trip changed the key".into());
    }
    // The audit chain.
    hsm.store()
        .verify_audit_chain()
        .map_err(|e| format!("audit chain: {e}"))?;
    // Every stored key: the block unwraps under the *current* LMK (a store
    // holding blocks of two LMKs is a half-done rotation) and agrees with its record.
    hsm.store()
        .for_each_key(|rec| {
            let k = keys::unwrap_from_lmk(&lmks.current, &rec.key_block).map_err(|e| {
                crate::store::StoreError::Corrupt {
                    tree: "keys",
                    problem: format!("key {}: {e}", rec.key_id),
                }
            })?;
            let m = k.meta();
            if m.key_id.as_deref() != Some(rec.key_id.as_str())
                || m.kcv != rec.kcv
                || m.key_type.name() != rec.key_type
            {
                return Err(crate::store::StoreError::Corrupt {
                    tree: "keys",
                    problem: format!("key {}: record does not match its key block", rec.key_id),
                });
            }
            Ok(())
        })
        .map_err(|e| e.to_string())?;
    hsm.store()
        .for_each_terminal(|_| Ok(()))
        .map_err(|e| e.to_string())?;
    Ok(())
}
