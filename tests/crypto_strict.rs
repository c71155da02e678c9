//! Refusals of `poshsm::crypto`: every malformed input is an error with a stable reason
//! code, never a panic, and no error or `Debug` string shows a key byte or a PIN digit.

use poshsm::crypto::pinblock::{decode_iso4_pin_field, encode_iso4_pan_field};
use poshsm::crypto::*;
use zeroize::Zeroizing;

fn h(s: &str) -> Vec<u8> {
    hex::decode(s).expect("test hex")
}

fn b8(s: &str) -> [u8; 8] {
    h(s).try_into().unwrap()
}

fn pin(s: &str) -> Pin {
    Pin::parse(s).unwrap()
}

fn pan(s: &str) -> Pan {
    Pan::parse(s).unwrap()
}

/// A PAN whose ISO 0/3 PAN field is all zeros, so hand-written blocks are the clear field.
fn zero_pan() -> Pan {
    pan("0000000000000")
}

fn reason<T: std::fmt::Debug>(r: Result<T, CryptoError>) -> &'static str {
    r.expect_err("expected an error").reason()
}

fn aes() -> Cipher {
    Cipher::new(Algorithm::Aes128, &h("00112233445566778899AABBCCDDEEFF")).unwrap()
}

fn sm4() -> Cipher {
    Cipher::new(Algorithm::Sm4, &h("F351D490994603795C6EBEE8FAEBB481")).unwrap()
}

fn tdes() -> Cipher {
    Cipher::new(Algorithm::Tdes2, &h("0123456789ABCDEFFEDCBA9876543210")).unwrap()
}

// ---- keys and ciphers ------------------------------------------------------------------

#[test]
fn wrong_key_lengths_are_refused_for_every_algorithm() {
    for alg in Algorithm::ALL {
        for len in [0, alg.key_len() - 1, alg.key_len() + 1, 64] {
            let key = vec![0x5Au8; len];
            assert_eq!(
                reason(Cipher::new(alg, &key)),
                "INVALID_KEY_LENGTH",
                "{alg} {len}"
            );
            assert_eq!(
                reason(KeyMaterial::new(alg, Zeroizing::new(key))),
                "INVALID_KEY_LENGTH"
            );
        }
    }
}

#[test]
fn block_ecb_and_cbc_lengths_are_checked() {
    for alg in Algorithm::ALL {
        let c = Cipher::new(alg, &vec![0x3Cu8; alg.key_len()]).unwrap();
        let bs = c.block_len();
        for len in [0, 1, bs - 1, bs + 1, 2 * bs + 3] {
            let mut buf = vec![0u8; len];
            assert_eq!(reason(c.encrypt_block(&mut buf)), "INVALID_DATA_LENGTH");
            assert_eq!(reason(c.decrypt_block(&mut buf)), "INVALID_DATA_LENGTH");
            if len % bs != 0 {
                assert_eq!(reason(c.ecb_encrypt(&mut buf)), "INVALID_DATA_LENGTH");
                assert_eq!(reason(c.ecb_decrypt(&mut buf)), "INVALID_DATA_LENGTH");
                let iv = vec![0u8; bs];
                assert_eq!(reason(c.cbc_encrypt(&iv, &mut buf)), "INVALID_DATA_LENGTH");
                assert_eq!(reason(c.cbc_decrypt(&iv, &mut buf)), "INVALID_DATA_LENGTH");
            }
            // A wrong IV length is refused even for good data.
            let mut good = vec![0u8; 2 * bs];
            let iv = vec![0u8; len];
            assert_eq!(reason(c.cbc_encrypt(&iv, &mut good)), "INVALID_DATA_LENGTH");
            assert_eq!(reason(c.cbc_decrypt(&iv, &mut good)), "INVALID_DATA_LENGTH");
        }
        // Empty data is a whole number of blocks.
        c.ecb_encrypt(&mut []).unwrap();
        c.cbc_encrypt(&vec![0u8; bs], &mut []).unwrap();
    }
}

#[test]
fn checked_import_refuses_bad_parity_and_weak_des_keys() {
    let bad_parity = h("0023456789ABCDEFFEDCBA9876543210");
    assert_eq!(
        reason(KeyMaterial::new_checked(
            Algorithm::Tdes2,
            Zeroizing::new(bad_parity)
        )),
        "BAD_PARITY"
    );
    let weak_half = h("0123456789ABCDEF0101010101010101");
    assert_eq!(
        reason(KeyMaterial::new_checked(
            Algorithm::Tdes2,
            Zeroizing::new(weak_half)
        )),
        "WEAK_KEY"
    );
    let equal_halves = h("0123456789ABCDEF0123456789ABCDEF");
    assert_eq!(
        reason(KeyMaterial::new_checked(
            Algorithm::Tdes2,
            Zeroizing::new(equal_halves)
        )),
        "WEAK_KEY"
    );
    KeyMaterial::new_checked(
        Algorithm::Tdes2,
        Zeroizing::new(h("0123456789ABCDEFFEDCBA9876543210")),
    )
    .unwrap();
    // AES and SM4 keys carry no parity and have no weak-key list.
    KeyMaterial::new_checked(Algorithm::Aes128, Zeroizing::new(vec![0u8; 16])).unwrap();
    KeyMaterial::new_checked(Algorithm::Sm4, Zeroizing::new(vec![0u8; 16])).unwrap();
}

#[test]
fn retail_mac_needs_a_double_or_triple_length_key() {
    for len in [0, 8, 15, 17, 23, 25, 32] {
        let key = vec![0x11u8; len];
        assert_eq!(
            reason(iso9797_alg3(&key, b"data", Padding::Method1)),
            "INVALID_KEY_LENGTH"
        );
        assert_eq!(reason(RetailMac::new(&key)), "INVALID_KEY_LENGTH");
    }
}

// ---- PAN and PIN parsing -----------------------------------------------------------------

#[test]
fn pan_parse_accepts_only_12_to_19_ascii_digits() {
    for bad in [
        "",
        "12345678901",
        "12345678901234567890",
        "1234 5678 9012 3456",
        "123456789012345X",
        "-12345678901234",
        "١٢٣٤٥٦٧٨٩٠١٢٣",
        "１２３４５６７８９０１２",
    ] {
        assert_eq!(reason(Pan::parse(bad)), "INVALID_PAN", "{bad:?}");
    }
    for good in ["123456789012", "1234567890123456789"] {
        assert_eq!(Pan::parse(good).unwrap().as_str(), good);
    }
}

#[test]
fn pin_parse_accepts_only_4_to_12_ascii_digits() {
    for bad in ["", "123", "1234567890123", "12a4", "12 34", "١٢٣٤", "+1234"] {
        assert_eq!(reason(Pin::parse(bad)), "INVALID_PIN", "{bad:?}");
    }
    for good in ["1234", "123456789012"] {
        let p = Pin::parse(good).unwrap();
        assert_eq!(p.expose_digits(), good.as_bytes());
        assert_eq!(p.len(), good.len());
    }
}

// ---- strict ISO 0 / 1 / 3 decoding -------------------------------------------------------

#[test]
fn iso0_decode_refuses_every_malformed_field() {
    let z = zero_pan();
    assert_eq!(
        decode_iso0(&b8("041234FFFFFFFFFF"), &z)
            .unwrap()
            .expose_digits(),
        b"1234"
    );
    for (block, why) in [
        ("141234FFFFFFFFFF", "control 1"),
        ("341234FFFFFFFFFF", "control 3"),
        ("F41234FFFFFFFFFF", "control F"),
        ("03123FFFFFFFFFFF", "PIN length 3"),
        ("0D1234567890123F", "PIN length 13"),
        ("001234FFFFFFFFFF", "PIN length 0"),
        ("0F1234567890ABCD", "PIN length 15"),
        ("041A34FFFFFFFFFF", "non-digit PIN nibble"),
        ("04123FFFFFFFFFFF", "F inside the PIN digits"),
        ("041234FFFFFFFFFE", "fill E"),
        ("041234AAAAAAAAAA", "ISO 3 style fill"),
        ("0412340FFFFFFFFF", "digit in fill"),
    ] {
        let err = decode_iso0(&b8(block), &z).expect_err(why);
        assert_eq!(err.reason(), "INVALID_PIN_BLOCK", "{why}");
    }
}

#[test]
fn iso0_decode_with_the_wrong_pan_is_refused() {
    let right = pan("5544332211009966");
    let wrong = pan("5544332211009976");
    let block = encode_iso0(&pin("1234"), &right);
    assert_eq!(reason(decode_iso0(&block, &wrong)), "INVALID_PIN_BLOCK");
    let block = encode_iso3(&pin("1234"), &right);
    // ISO 3 fill is random A–F, so pick a wrong PAN whose last field digit (8 instead of
    // 6, xor E) maps every A–F fill nibble onto 0–5: always detected, never flaky.
    let wrong8 = pan("5544332211009986");
    assert_eq!(reason(decode_iso3(&block, &wrong8)), "INVALID_PIN_BLOCK");
}

#[test]
fn iso1_decode_checks_control_length_and_digits_but_not_fill() {
    assert_eq!(
        decode_iso1(&b8("1412340123456789"))
            .unwrap()
            .expose_digits(),
        b"1234"
    );
    assert_eq!(
        decode_iso1(&b8("14123401ABCDEF99"))
            .unwrap()
            .expose_digits(),
        b"1234"
    );
    for (block, why) in [
        ("0412340123456789", "control 0"),
        ("1312340123456789", "PIN length 3"),
        ("1D12345678901234", "PIN length 13"),
        ("1412B40123456789", "non-digit PIN nibble"),
    ] {
        assert_eq!(
            reason(decode_iso1(&b8(block))),
            "INVALID_PIN_BLOCK",
            "{why}"
        );
    }
}

#[test]
fn iso3_decode_refuses_every_malformed_field() {
    let z = zero_pan();
    assert_eq!(
        decode_iso3(&b8("341234ABCDEFABCD"), &z)
            .unwrap()
            .expose_digits(),
        b"1234"
    );
    assert_eq!(
        decode_iso3(&b8("341234FFFFFFFFFF"), &z)
            .unwrap()
            .expose_digits(),
        b"1234"
    );
    for (block, why) in [
        ("041234ABCDEFABCD", "control 0"),
        ("241234ABCDEFABCD", "control 2"),
        ("33123ABCDEFABCDE", "PIN length 3"),
        ("3D1234567890123A", "PIN length 13"),
        ("3412C4ABCDEFABCD", "non-digit PIN nibble"),
        ("341234ABCDEFABC9", "digit 9 in fill"),
        ("3412340BCDEFABCD", "digit 0 in fill"),
    ] {
        assert_eq!(
            reason(decode_iso3(&b8(block), &z)),
            "INVALID_PIN_BLOCK",
            "{why}"
        );
    }
}

// ---- ISO 4 -------------------------------------------------------------------------------

fn field16(s: &str) -> [u8; 16] {
    h(s).try_into().unwrap()
}

#[test]
fn iso4_pin_field_decode_refuses_every_malformed_field() {
    let ok = "441234AAAAAAAAAA0123456789ABCDEF";
    assert_eq!(
        decode_iso4_pin_field(&field16(ok)).unwrap().expose_digits(),
        b"1234"
    );
    for (field, why) in [
        ("041234AAAAAAAAAA0123456789ABCDEF", "control 0"),
        ("341234AAAAAAAAAA0123456789ABCDEF", "control 3"),
        ("43123AAAAAAAAAAA0123456789ABCDEF", "PIN length 3"),
        ("4D1234567890123A0123456789ABCDEF", "PIN length 13"),
        (
            "44123AAAAAAAAAAA0123456789ABCDEF",
            "A inside the PIN digits",
        ),
        ("441234AAAAAAAAAB0123456789ABCDEF", "fill B"),
        ("441234FFFFFFFFFF0123456789ABCDEF", "fill F"),
    ] {
        assert_eq!(
            reason(decode_iso4_pin_field(&field16(field))),
            "INVALID_PIN_BLOCK",
            "{why}"
        );
    }
}

#[test]
fn iso4_decipher_with_the_wrong_pan_or_key_is_refused() {
    let c = aes();
    let right = pan("1234567890123456");
    let block = encipher_iso4(&c, &pin("1234"), &right).unwrap();
    for wrong in ["1234567890123457", "123456789012345", "2234567890123456"] {
        assert_eq!(
            reason(decipher_iso4(&c, &block, &pan(wrong))),
            "INVALID_PIN_BLOCK"
        );
    }
    let other = Cipher::new(Algorithm::Aes128, &[0x42; 16]).unwrap();
    assert_eq!(
        reason(decipher_iso4(&other, &block, &right)),
        "INVALID_PIN_BLOCK"
    );
}

#[test]
fn iso4_needs_a_16_byte_block_cipher_and_a_16_byte_block() {
    let p = pan("1234567890123456");
    for c in [
        tdes(),
        Cipher::new(Algorithm::Des, &h("0123456789ABCDEF")).unwrap(),
    ] {
        assert_eq!(reason(encipher_iso4(&c, &pin("1234"), &p)), "UNSUPPORTED");
        assert_eq!(reason(decipher_iso4(&c, &[0u8; 16], &p)), "UNSUPPORTED");
        assert_eq!(
            reason(encipher(PinBlockFormat::Iso4, &c, &pin("1234"), Some(&p))),
            "UNSUPPORTED"
        );
        assert_eq!(
            reason(decipher(PinBlockFormat::Iso4, &c, &[0u8; 16], Some(&p))),
            "UNSUPPORTED"
        );
    }
    for len in [0, 8, 15, 17, 32] {
        assert_eq!(
            reason(decipher_iso4(&aes(), &vec![0u8; len], &p)),
            "INVALID_DATA_LENGTH"
        );
    }
    // SM4 works for ISO 4 too.
    let block = encipher_iso4(&sm4(), &pin("1234"), &p).unwrap();
    assert_eq!(
        decipher_iso4(&sm4(), &block, &p).unwrap().expose_digits(),
        b"1234"
    );
}

#[test]
fn iso4_pan_field_uses_the_length_nibble_for_12_to_19_digits() {
    // psec encode_pan_field_iso_4: M = len - 12, digits, zero fill.
    assert_eq!(
        hex::encode_upper(encode_iso4_pan_field(&pan("123456789012"))),
        "01234567890120000000000000000000"
    );
    assert_eq!(
        hex::encode_upper(encode_iso4_pan_field(&pan("1234567890123456789"))),
        "71234567890123456789000000000000"
    );
}

// ---- format-generic helpers ------------------------------------------------------------

#[test]
fn formats_that_bind_the_pan_refuse_a_missing_pan() {
    for (format, c) in [
        (PinBlockFormat::Iso0, tdes()),
        (PinBlockFormat::Iso3, tdes()),
        (PinBlockFormat::Iso0, sm4()),
        (PinBlockFormat::Iso4, aes()),
    ] {
        assert!(format.needs_pan());
        assert_eq!(
            reason(encipher(format, &c, &pin("1234"), None)),
            "INVALID_PAN"
        );
        let block = vec![0u8; format.clear_len().max(c.block_len())];
        assert_eq!(reason(decipher(format, &c, &block, None)), "INVALID_PAN");
    }
    assert!(!PinBlockFormat::Iso1.needs_pan());
    let block = encipher(PinBlockFormat::Iso1, &tdes(), &pin("1234"), None).unwrap();
    let back = decipher(PinBlockFormat::Iso1, &tdes(), &block, None).unwrap();
    assert_eq!(back.expose_digits(), b"1234");
}

#[test]
fn enciphered_block_length_must_match_the_cipher() {
    let p = pan("6230606601007726888");
    for len in [0, 7, 9, 16, 24] {
        assert_eq!(
            reason(decipher(
                PinBlockFormat::Iso0,
                &tdes(),
                &vec![0u8; len],
                Some(&p)
            )),
            "INVALID_DATA_LENGTH",
            "TDES {len}"
        );
    }
    for len in [0, 8, 15, 17, 32] {
        assert_eq!(
            reason(decipher(
                PinBlockFormat::Iso0,
                &sm4(),
                &vec![0u8; len],
                Some(&p)
            )),
            "INVALID_DATA_LENGTH",
            "SM4 {len}"
        );
    }
}

#[test]
fn sm4_form_refuses_non_zero_padding() {
    // V3 ISO 0 block (VECTORS.md §3) followed by padding that is not all zero.
    let p = pan("6230606601007726888");
    for pad in ["0000000000000001", "8000000000000000", "FFFFFFFFFFFFFFFF"] {
        let mut block = h(&format!("06125055FF88D977{pad}"));
        sm4().ecb_encrypt(&mut block).unwrap();
        assert_eq!(
            reason(decipher(PinBlockFormat::Iso0, &sm4(), &block, Some(&p))),
            "INVALID_PIN_BLOCK",
            "{pad}"
        );
    }
    let mut good = h("06125055FF88D9770000000000000000");
    sm4().ecb_encrypt(&mut good).unwrap();
    decipher(PinBlockFormat::Iso0, &sm4(), &good, Some(&p)).unwrap();
}

// ---- padding rules -----------------------------------------------------------------------

#[test]
fn iso9797_padding_rules() {
    let c = tdes();
    let mac = |d: &[u8], p| iso9797_alg1(&c, d, p);
    // Method 1: nothing added when aligned; an empty message is one zero block.
    assert_eq!(mac(b"", Padding::Method1), mac(&[0u8; 8], Padding::Method1));
    assert_eq!(
        mac(b"12345678", Padding::Method1),
        mac(b"12345678", Padding::Method1)
    );
    assert_eq!(
        mac(b"123", Padding::Method1),
        mac(b"123\0\0\0\0\0", Padding::Method1)
    );
    // Method 2: always 0x80, so aligned input grows by a block.
    let mut aligned = b"12345678".to_vec();
    aligned.extend_from_slice(&[0x80, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        mac(b"12345678", Padding::Method2),
        mac(&aligned, Padding::Method1)
    );
    assert_eq!(
        mac(b"", Padding::Method2),
        mac(&h("8000000000000000"), Padding::Method1)
    );
    // Method 3: a length block (bits, big-endian) first.
    let mut with_len = h("0000000000000018");
    with_len.extend_from_slice(b"123\0\0\0\0\0");
    assert_eq!(
        mac(b"123", Padding::Method3),
        mac(&with_len, Padding::Method1)
    );
}

// ---- nothing secret in errors or Debug ---------------------------------------------------

#[test]
fn errors_and_debug_never_show_pin_digits_or_key_bytes() {
    let secret_pin = "987654";
    let p = pan("5544332211009966");
    let key_hex = "0123456789ABCDEFFEDCBA9876543210";
    let key = KeyMaterial::new(Algorithm::Tdes2, Zeroizing::new(h(key_hex))).unwrap();
    let c = key.cipher().unwrap();
    let block = encode_iso0(&pin(secret_pin), &p);
    let enc = encipher(PinBlockFormat::Iso0, &c, &pin(secret_pin), Some(&p)).unwrap();

    let mut messages = vec![
        format!("{key:?}"),
        format!("{c:?}"),
        format!("{:?}", pin(secret_pin)),
        format!("{:?}", RetailMac::new(key.expose()).unwrap()),
    ];
    let errors = [
        decode_iso3(&block, &p).unwrap_err(),
        decode_iso1(&block).unwrap_err(),
        decipher(PinBlockFormat::Iso3, &c, &enc, Some(&p)).unwrap_err(),
        decode_iso0(&block, &pan("5544332211009976")).unwrap_err(),
        Pin::parse("98765x").unwrap_err(),
        Cipher::new(Algorithm::Tdes3, key.expose()).unwrap_err(),
    ];
    for e in &errors {
        messages.push(e.to_string());
        messages.push(format!("{e:?}"));
    }
    let block_hex = hex::encode_upper(*block);
    for m in &messages {
        assert!(!m.contains(secret_pin), "{m}");
        assert!(!m.contains("98765"), "{m}");
        assert!(!m.to_uppercase().contains(&block_hex), "{m}");
        assert!(!m.to_uppercase().contains("0123456789ABCDEF"), "{m}");
        assert!(!m.contains("[1, 35"), "{m}");
    }
    assert_eq!(format!("{key:?}"), "KeyMaterial(Tdes2, <redacted>)");
}

#[test]
fn reason_codes_are_stable() {
    assert_eq!(CryptoError::WeakKey.reason(), "WEAK_KEY");
    assert_eq!(CryptoError::BadParity.reason(), "BAD_PARITY");
    assert_eq!(CryptoError::Unsupported("x").reason(), "UNSUPPORTED");
    assert_eq!(
        CryptoError::InvalidPinBlock("x").reason(),
        "INVALID_PIN_BLOCK"
    );
    assert_eq!(CryptoError::InvalidPan("x").reason(), "INVALID_PAN");
    assert_eq!(CryptoError::InvalidPin("x").reason(), "INVALID_PIN");
    assert_eq!(CryptoError::RngFailure.reason(), "RNG_FAILURE");
}

#[test]
fn mac_eq_is_exact() {
    assert!(mac_eq(b"E267B6E2", b"E267B6E2"));
    assert!(!mac_eq(b"E267B6E2", b"E267B6E3"));
    assert!(!mac_eq(b"E267B6E2", b"E267B6E"));
    assert!(!mac_eq(b"", b"0"));
}
