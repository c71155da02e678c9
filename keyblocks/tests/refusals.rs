//! Refusals: every tampered, truncated, lying or mis-keyed block is refused with a
//! clear error, and no error or `Debug` output ever shows key bytes.
//!
//! Base blocks are the published TR-31:2018 Annex A examples (A.7.2.1, A.7.2.2,
//! A.7.3.1, A.7.4) and psec's malformed-block vectors (knovichikhin/psec
//! tests/test_tr31.py, test_kb_unwrap_exceptions).

use keyblocks::{
    unwrap, wrap, wrap_with_padding, Algorithm, Error, Exportability, Header, KeyUsage, ModeOfUse,
    Version,
};

fn h(s: &str) -> Vec<u8> {
    hex::decode(s).expect("test vector hex")
}

/// (KBPK, block, key) from TR-31:2018 Annex A.
const VECTORS: [(&str, &str, &str); 4] = [
    // A.7.2.1, version A
    (
        "89E88CF7931444F334BD7547FC3F380C",
        "A0072P0TE00E0000F5161ED902807AF26F1D62263644BD24192FDB3193C730301CEE8701",
        "F039121BEC83D26B169BDCD5B22AAF8F",
    ),
    // A.7.2.2, version B
    (
        "DD7515F2BFC17F85CE48F3CA25CB21F6",
        "B0080P0TE00E000094B420079CC80BA3461F86FE26EFC4A3B8E4FA4C5F5341176EED7B727B8A248E",
        "3F419E1CB7079442AA37474C2EFBF8B8",
    ),
    // A.7.3.1, version C with a KS block
    (
        "B8ED59E0A279A295E9F5ED7944FD06B9",
        "C0096B0TX12S0100KS1800604B120F9292800000BFB9B689CB567E66FC3FEE5AD5F52161FC6545B9D60989015D02155C",
        "EDB380DD340BC2620247D445F5B8D678",
    ),
    // A.7.4, version D
    (
        "88E1AB2A2E3DD38C1FA039A536500CC8A87AB9D62DC92C01058FA79F44657DE6",
        "D0112P0AE00E0000B82679114F470F540165EDFBF7E250FCEA43F810D215F8D207E2E417C07156A27E8E31DA05F7425509593D03A457DC34",
        "3F419E1CB7079442AA37474C2EFBF8B8",
    ),
];

fn header_len(block: &str) -> usize {
    // The KS block of A.7.3.1 is the only optional block among VECTORS.
    if block.contains("KS18") {
        40
    } else {
        16
    }
}

/// A different character of the same class: hex stays hex, a letter stays a letter.
fn flip(c: u8) -> u8 {
    match c {
        b'0'..=b'8' | b'A'..=b'E' => c + 1,
        b'9' => b'0',
        b'F' => b'A',
        b'G'..=b'Y' => c + 1,
        b'Z' => b'A',
        _ => b'0',
    }
}

fn with_byte(block: &str, i: usize, c: u8) -> String {
    let mut b = block.as_bytes().to_vec();
    b[i] = c;
    String::from_utf8(b).expect("ascii")
}

#[test]
fn flipping_any_character_of_a_block_is_refused() {
    for (kbpk, block, _) in VECTORS {
        let kbpk = h(kbpk);
        assert!(
            unwrap(&kbpk, block).is_ok(),
            "{block} must unwrap untouched"
        );
        let hlen = header_len(block);
        for i in 0..block.len() {
            let tampered = with_byte(block, i, flip(block.as_bytes()[i]));
            let result = unwrap(&kbpk, &tampered);
            let err = result.expect_err("tampered block must be refused");
            // Past the header (ciphertext and MAC, hex for hex), and in the header's
            // free-form fields, the structure is intact: only the MAC can catch it.
            let free_form = matches!(i, 5..=10 | 14) || i >= hlen;
            if free_form {
                assert_eq!(err, Error::MacMismatch, "position {i} of {block}");
            }
        }
    }
}

#[test]
fn relabelled_usage_and_exportability_are_refused_by_the_mac() {
    // Key-type confusion: a PIN key turned into a MAC key, or made exportable.
    let (kbpk, block, _) = VECTORS[1];
    let kbpk = h(kbpk);
    for (from, to) in [("P0TE", "M1TC"), ("P0TE", "K0TB"), ("00E0", "00S0")] {
        let relabelled = block.replacen(from, to, 1);
        assert_ne!(relabelled, block);
        let err = unwrap(&kbpk, &relabelled).expect_err("refused");
        assert_eq!(err, Error::MacMismatch);
        assert_eq!(
            err.to_string(),
            "key block MAC does not verify (wrong KBPK or tampered block)"
        );
    }
}

#[test]
fn wrong_kbpk_is_refused_for_every_version() {
    for (kbpk, block, _) in VECTORS {
        let mut wrong = h(kbpk);
        // Not 0x01: that is a DES parity bit, which TDES ignores.
        wrong[0] ^= 0x02;
        assert_eq!(unwrap(&wrong, block).unwrap_err(), Error::MacMismatch);
        // Same length, entirely different key.
        let other = vec![0x5Au8; wrong.len()];
        assert_eq!(unwrap(&other, block).unwrap_err(), Error::MacMismatch);
    }
}

#[test]
fn truncated_and_padded_blocks_are_refused_with_their_lengths() {
    let (kbpk, block, _) = VECTORS[1];
    let kbpk = h(kbpk);
    let err = unwrap(&kbpk, &block[..64]).unwrap_err();
    assert_eq!(
        err,
        Error::Truncated {
            declared: 80,
            actual: 64
        }
    );
    assert_eq!(
        err.to_string(),
        "truncated key block: header says 80 chars, got 64"
    );
    let err = unwrap(&kbpk, &format!("{block}00000000")).unwrap_err();
    assert_eq!(
        err,
        Error::TrailingData {
            declared: 80,
            actual: 88
        }
    );
    assert_eq!(unwrap(&kbpk, "").unwrap_err(), Error::TooShort { len: 0 });
    assert_eq!(
        unwrap(&kbpk, "B00").unwrap_err(),
        Error::TooShort { len: 3 }
    );
}

#[test]
fn length_field_lies_are_refused() {
    let (kbpk, block, _) = VECTORS[1];
    let kbpk = h(kbpk);
    // Length field says more, or less, than the block holds.
    let longer = block.replacen("B0080", "B0096", 1);
    assert_eq!(
        unwrap(&kbpk, &longer).unwrap_err(),
        Error::Truncated {
            declared: 96,
            actual: 80
        }
    );
    let shorter = block.replacen("B0080", "B0072", 1);
    assert!(matches!(
        unwrap(&kbpk, &shorter).unwrap_err(),
        Error::TrailingData { .. }
    ));
    // Non-numeric length (psec: "Key block header length (X040) is malformed").
    let bad = block.replacen("B0080", "BX080", 1);
    assert_eq!(unwrap(&kbpk, &bad).unwrap_err(), Error::BadLengthField);
    let bad = block.replacen("B0080", "B 080", 1);
    assert_eq!(unwrap(&kbpk, &bad).unwrap_err(), Error::BadLengthField);
}

#[test]
fn optional_block_count_and_length_lies_are_refused() {
    let (kbpk, block, _) = VECTORS[2];
    let kbpk = h(kbpk);
    // Count says 2 blocks, one present: the "second" runs into the ciphertext.
    let two = block.replacen("S0100KS", "S0200KS", 1);
    assert!(unwrap(&kbpk, &two).is_err());
    // Count says 0: the KS block becomes misaligned payload, refused before any MAC.
    let zero = block.replacen("S0100KS", "S0000KS", 1);
    assert!(unwrap(&kbpk, &zero).is_err());
    // Block length says more than is there.
    let long = block.replacen("KS18", "KSFF", 1);
    let err = unwrap(&kbpk, &long).unwrap_err();
    assert!(
        matches!(err, Error::BadOptionalBlock { index: 1, .. }),
        "{err}"
    );
    // Block length shorter than its own id and length field.
    let tiny = block.replacen("KS18", "KS03", 1);
    assert!(matches!(
        unwrap(&kbpk, &tiny).unwrap_err(),
        Error::BadOptionalBlock { index: 1, .. }
    ));
    // Lower-case hex in a block length.
    let lower = block.replacen("KS18", "KS1a", 1);
    assert!(unwrap(&kbpk, &lower).is_err());
    // Non-numeric count.
    let nonnum = block.replacen("S0100KS", "S0X00KS", 1);
    assert_eq!(unwrap(&kbpk, &nonnum).unwrap_err(), Error::BadBlockCount);
}

#[test]
fn malformed_header_templates_are_refused() {
    // Source: knovichikhin/psec tests/test_tr31.py, test_header_block_load_exceptions
    // (same inputs; our errors are typed rather than psec's strings).
    let bad = [
        "B0000P0TE00N0100",
        "B0000P0TE00N0100K",
        "B0000P0TE00N0100KS",
        "B0000P0TE00N0100KS1",
        "B0000P0TE00N0100KS1Y",
        "B0000P0TE00N0100KS02",
        "B0000P0TE00N0100KS071",
        "B0000P0TE00N0100KS00",
        "B0000P0TE00N0100KS001",
        "B0000P0TE00N0100KS001S",
        "B0000P0TE00N0100KS0000",
        "B0000P0TE00N0100KS0001",
        "B0000P0TE00N0100KS00010",
        "B0000P0TE00N0100KS00010H",
        "B0000P0TE00N0100KS000101",
        "B0000P0TE00N0100KS0001FF",
        "B0000P0TE00N0200KS07000T",
        "B0000P0TE00N0200KS0600TT",
        "B0000P0TE00N0200KS050TT1",
        "B0000P0TE00N0200KS04TT1X",
        "B0000P0TE00N0200KS04TT03",
        "B0000P0TE00N0200KS04TT05",
        "B0000P0TE00N0200KS04TT00",
        "B0000P0TE00N0200KS04TT0000",
        "B0000P0TE00N0200KS04TT00011F",
        "B0000P0TE00N0100**04",
        "B0000P0TE00N0200KS0600??04",
        "B0000P0TE00N0100KS05\x03",
        "B0000P0TE00N0200KS04TT05\u{FF}",
        "_0000P0TE00N0000",
        "",
        "B0000",
        "B0000P0TE00N0X00",
        // Block count says 0 but a block follows.
        "B0000P0TE00N0000KS1800604B120F9292800000",
        // PB must be the last optional block.
        "B0000P0TE00N0200PB0600KS1200604B120F9292",
    ];
    for template in bad {
        let err = Header::parse_template(template).expect_err(template);
        assert!(!err.to_string().is_empty());
    }
}

#[test]
fn bad_version_characters_are_refused() {
    let (kbpk, block, _) = VECTORS[1];
    let kbpk = h(kbpk);
    for v in [b'E', b'X', b'1', b'b', b'0'] {
        let bad = with_byte(block, 0, v);
        assert_eq!(
            unwrap(&kbpk, &bad).unwrap_err(),
            Error::UnsupportedVersion {
                found: char::from(v)
            }
        );
    }
    assert_eq!(
        "E".parse::<Version>().unwrap_err(),
        Error::UnsupportedVersion { found: 'E' }
    );
}

#[test]
fn kbpk_of_wrong_length_for_the_version_is_refused() {
    for (_, block, _) in VECTORS {
        let version = Version::from_byte(block.as_bytes()[0]).expect("version");
        for len in [0usize, 7, 8, 15, 17, 23, 25, 31, 32, 33, 48] {
            let key = vec![0x11u8; len];
            let result = unwrap(&key, block);
            if version.is_valid_kbpk_len(len) {
                assert_eq!(result.unwrap_err(), Error::MacMismatch);
            } else {
                assert_eq!(
                    result.unwrap_err(),
                    Error::InvalidKbpkLength { version, len }
                );
            }
        }
    }
    let err = unwrap(&[0u8; 15], VECTORS[3].1).unwrap_err();
    assert!(err
        .to_string()
        .starts_with("KBPK length 15 is not valid for version D"));
    // Single-DES KBPKs are refused even for legacy A/C.
    assert!(matches!(
        unwrap(&[0u8; 8], VECTORS[0].1).unwrap_err(),
        Error::InvalidKbpkLength { len: 8, .. }
    ));
}

#[test]
fn structural_payload_problems_are_refused() {
    let (kbpk, block, _) = VECTORS[1];
    let kbpk = h(kbpk);
    // Lower-case hex in ciphertext / MAC.
    let lower = format!("{}{}", &block[..16], block[16..].to_ascii_lowercase());
    assert!(matches!(
        unwrap(&kbpk, &lower).unwrap_err(),
        Error::BadHex { .. }
    ));
    // Non-hex in the MAC (psec: "Key block MAC must be valid hexchars").
    let nonhex = with_byte(block, 79, b'X');
    assert_eq!(
        unwrap(&kbpk, &nonhex).unwrap_err(),
        Error::BadHex { part: "MAC" }
    );
    // Non-printable byte anywhere.
    let ctrl = with_byte(block, 30, 0x07);
    assert_eq!(
        unwrap(&kbpk, &ctrl).unwrap_err(),
        Error::NotPrintable { offset: 30 }
    );
    assert!(matches!(
        unwrap(
            &kbpk,
            "B0080P0TE00E0000\u{e9}4B420079CC80BA3461F86FE26EFC4A3B8E4FA4C5F5341176EED7B727B8A248"
        )
        .unwrap_err(),
        Error::NotPrintable { offset: 16 }
    ));
    // psec vectors: no key data at all, or a header not aligned to the block size.
    let e16 = b"EEEEEEEEEEEEEEEE";
    assert!(matches!(
        unwrap(e16, "B0032M3TC00E0000FFFFFFFF9AA5BBA6").unwrap_err(),
        Error::BadPayloadLength { .. }
    ));
    assert!(matches!(
        unwrap(e16, "A0024M3TC00E00009AA5BBA6").unwrap_err(),
        Error::BadPayloadLength { .. }
    ));
    assert_eq!(
        unwrap(e16, "A0024M3TC00E0100TT04BBA6").unwrap_err(),
        Error::HeaderMisaligned {
            len: 20,
            block_size: 8
        }
    );
    // psec: "Key block length (87) must be multiple of 8".
    assert!(unwrap(
        e16,
        "A0087M3TC00E000062C2C14D8785A01A9E8283525CA96F490D0CC6346FC7C2AC1E6FF354468910379AA5BBA"
    )
    .is_err());
}

#[test]
fn authenticated_but_impossible_key_length_is_refused() {
    // Source: knovichikhin/psec tests/test_tr31.py, test_kb_unwrap_exceptions: blocks
    // with a valid MAC under b"E"*16 whose key length field is 0 bits, or 128 bits
    // where only 64 bits of key follow.
    let e16 = b"EEEEEEEEEEEEEEEE";
    for block in [
        "A0056M3TC00E0000ABE3EB7813FD4031BCBAEC1FCAB750BB920E4863",
        "B0064M3TC00E000013F1B06566ECAE897A6DF8C7AA651FCEF9480447EEEC9933",
        "C0056M3TC00E0000629D73329F5F42D868B2EB1E4C52D1E191BC1D3C",
        "A0056M3TC00E0000EF14FD71CFCDCE0630AD5C1CDE0041DCF95CF1D0",
        "B0064M3TC00E00000398DC96A5DDB0EF61E26F8935173BD478DF9484050A672A",
        "C0056M3TC00E000001235EC22408B6CE866746FF992B8707FD7A26D2",
    ] {
        assert_eq!(
            unwrap(e16, block).unwrap_err(),
            Error::BadKeyLengthField,
            "{block}"
        );
    }
    // psec: "Key block MAC doesn't match generated MAC."
    for block in [
        "A0056M3TC00E0000BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB9AA5BBA6",
        "B0064M3TC00E0000BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBFFFFFFFF9AA5BBA6",
        "C0056M3TC00E0000BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB9AA5BBA6",
    ] {
        assert_eq!(unwrap(e16, block).unwrap_err(), Error::MacMismatch);
    }
}

#[test]
fn errors_and_debug_output_never_contain_key_bytes() {
    let mut messages = Vec::new();
    for (kbpk, block, key) in VECTORS {
        let kbpk_bytes = h(kbpk);
        let out = unwrap(&kbpk_bytes, block).expect("unwraps");
        let debug = format!("{out:?} {:#?}", out);
        let key_bytes = h(key);
        assert!(!debug.contains(key), "Debug shows the key as hex");
        assert!(!debug.contains(&key.to_lowercase()));
        assert!(
            !debug.contains(format!("{:?}", &key_bytes[..4]).trim_end_matches(']')),
            "Debug shows key bytes"
        );
        let mut wrong = kbpk_bytes.clone();
        wrong[3] ^= 0xFF;
        for bad_block in [block.to_string(), block[..block.len() - 2].to_string()] {
            for k in [&kbpk_bytes, &wrong] {
                if let Err(e) = unwrap(k, &bad_block) {
                    messages.push((format!("{e} {e:?} {}", e.code()), kbpk, key));
                }
            }
        }
    }
    assert!(!messages.is_empty());
    for (msg, kbpk, key) in messages {
        assert!(!msg.contains(kbpk) && !msg.contains(key), "{msg}");
        assert!(
            !msg.contains(&kbpk[..8]) && !msg.contains(&key[..8]),
            "{msg}"
        );
    }
}

#[test]
fn wrap_refuses_bad_requests() {
    let hdr = Header::new(
        Version::B,
        KeyUsage::P0,
        Algorithm::TDES,
        ModeOfUse::E,
        Exportability::NonExportable,
    );
    let kbpk = [0x11u8; 16];
    let key = [0x22u8; 16];
    assert_eq!(
        wrap(&kbpk, &hdr, &key, Some(8)).unwrap_err(),
        Error::MaskedLengthTooShort { masked: 8, key: 16 }
    );
    assert_eq!(
        wrap(&kbpk, &hdr, &[], None).unwrap_err(),
        Error::InvalidKeyLength { len: 0 }
    );
    assert!(wrap(&kbpk, &hdr, &vec![0u8; 6000], None).is_err());
    assert!(matches!(
        wrap(&kbpk, &hdr, &vec![0u8; 4980], None).unwrap_err(),
        Error::BlockTooLong { .. }
    ));
    assert_eq!(
        wrap(&[0u8; 32], &hdr, &key, None).unwrap_err(),
        Error::InvalidKbpkLength {
            version: Version::B,
            len: 32
        }
    );
    assert_eq!(
        wrap_with_padding(&kbpk, &hdr, &key, &[0u8; 5]).unwrap_err(),
        Error::BadPaddingLength {
            len: 5,
            block_size: 8
        }
    );
    let mut bad = hdr.clone();
    bad.key_usage = KeyUsage([b'P', 0x01]);
    assert!(matches!(
        wrap(&kbpk, &bad, &key, None).unwrap_err(),
        Error::InvalidField { .. }
    ));
    let mut bad = hdr.clone();
    assert!(bad.set_optional(*b"KS", "line\nbreak").is_err());
    assert!(bad.set_optional(*b"K!", "x").is_err());
    bad.optional_blocks.push(keyblocks::OptionalBlock {
        id: *b"TS",
        data: "\u{e9}".into(),
    });
    assert!(matches!(
        wrap(&kbpk, &bad, &key, None).unwrap_err(),
        Error::InvalidField { .. }
    ));
    let mut many = hdr.clone();
    for i in 0..100 {
        many.optional_blocks.push(keyblocks::OptionalBlock {
            id: [b'0' + (i / 10) as u8, b'0' + (i % 10) as u8],
            data: "PPPP".into(),
        });
    }
    assert_eq!(
        wrap(&kbpk, &many, &key, None).unwrap_err(),
        Error::TooManyOptionalBlocks { count: 100 }
    );
}
