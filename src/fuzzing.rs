//! Entry points for the fuzz targets in `fuzz/` and for the stable test that
//! replays their corpus (`tests/fuzz_corpus.rs`). Each takes arbitrary bytes
//! and must never panic; where a parse succeeds it checks a round-trip property.
#![doc(hidden)]

use crate::crypto::pinblock::{self, Pan, PinBlockFormat};
use crate::crypto::{mac, Algorithm, Cipher};

const KBPK_AES: [u8; 32] = [0x42; 32];
const KBPK_TDES: [u8; 16] = [0x13; 16];

/// TR-31 parse and unwrap: a parsed header re-serialises and parses to itself.
pub fn keyblock(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(h) = keyblocks::Header::parse(s) {
        if let Ok(text) = h.to_header_string() {
            if let Ok(again) = keyblocks::Header::parse_template(&text) {
                assert_eq!(again.key_usage, h.key_usage);
                assert_eq!(again.algorithm, h.algorithm);
            }
        }
    }
    let _ = keyblocks::unwrap(&KBPK_AES, s);
    let _ = keyblocks::unwrap(&KBPK_TDES, s);
}

/// PIN-block decoding of every format under TDES, AES and SM4 keys; a block
/// that decodes re-encodes to one that decodes to the same PIN.
pub fn pinblock(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let format = [
        PinBlockFormat::Iso0,
        PinBlockFormat::Iso1,
        PinBlockFormat::Iso3,
        PinBlockFormat::Iso4,
    ][(sel & 3) as usize];
    let (alg, key): (Algorithm, &[u8]) = match (sel >> 2) % 3 {
        0 => (Algorithm::Tdes2, &KBPK_AES[..16]),
        1 => (Algorithm::Aes128, &KBPK_AES[..16]),
        _ => (Algorithm::Sm4, &KBPK_AES[..16]),
    };
    let Ok(cipher) = Cipher::new(alg, key) else {
        return;
    };
    let pan = Pan::parse("4000001234562").ok();
    if let Ok(pin) = pinblock::decipher(format, &cipher, rest, pan.as_ref()) {
        if let Ok(again) = pinblock::encipher(format, &cipher, &pin, pan.as_ref()) {
            let back = pinblock::decipher(format, &cipher, &again, pan.as_ref());
            assert!(back
                .map(|p| p.expose_digits() == pin.expose_digits())
                .unwrap_or(false));
        }
    }
}

/// MAC input handling: every algorithm over arbitrary messages, with keys of every algorithm.
pub fn mac_input(data: &[u8]) {
    for (alg, key) in [
        (Algorithm::Des, &KBPK_TDES[..8]),
        (Algorithm::Tdes2, &KBPK_TDES[..]),
        (Algorithm::Aes128, &KBPK_AES[..16]),
        (Algorithm::Sm4, &KBPK_AES[..16]),
    ] {
        let Ok(c) = Cipher::new(alg, key) else {
            continue;
        };
        let a = mac::iso9797_alg1(&c, data, mac::Padding::Method1);
        let b = mac::iso9797_alg1(&c, data, mac::Padding::Method2);
        assert_eq!(a.len(), c.block_len());
        assert_eq!(b.len(), c.block_len());
        let _ = mac::unionpay_ecb(&c, data);
        let _ = mac::cmac(&c, data);
    }
    let _ = mac::iso9797_alg3(&KBPK_TDES, data, mac::Padding::Method1);
}

/// The daemon's config parser.
pub fn config(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = crate::cli::serve::parse_config(s);
    }
}
