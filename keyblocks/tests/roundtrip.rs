//! Property tests: wrap→unwrap is the identity for every version, KBPK size and key
//! size (with random optional blocks and masking); header parse∘serialize is the
//! identity; and no input, however mangled, makes parsing or unwrapping panic.

use keyblocks::{
    unwrap, wrap, Algorithm, Exportability, Header, KeyUsage, ModeOfUse, OptionalBlock, Version,
};
use proptest::prelude::*;

fn printable() -> impl Strategy<Value = u8> {
    0x20u8..=0x7E
}

fn version() -> impl Strategy<Value = Version> {
    prop_oneof![
        Just(Version::A),
        Just(Version::B),
        Just(Version::C),
        Just(Version::D)
    ]
}

fn exportability() -> impl Strategy<Value = Exportability> {
    prop_oneof![
        Just(Exportability::Exportable),
        Just(Exportability::NonExportable),
        Just(Exportability::Sensitive)
    ]
}

/// Optional blocks with any alphanumeric id but `PB`; data up to 300 chars so both
/// the short and the extended length encodings occur.
fn optional_block() -> impl Strategy<Value = OptionalBlock> {
    ("[A-Za-z0-9]{2}", "[ -~]{0,300}")
        .prop_filter("PB is managed by wrap", |(id, _)| id != "PB")
        .prop_map(|(id, data)| {
            let id = id.as_bytes();
            OptionalBlock {
                id: [id[0], id[1]],
                data,
            }
        })
}

fn header_for(version: impl Strategy<Value = Version>) -> impl Strategy<Value = Header> {
    (
        version,
        [printable(), printable()],
        printable(),
        printable(),
        [printable(), printable()],
        exportability(),
        printable(),
        prop::collection::vec(optional_block(), 0..4),
    )
        .prop_map(
            |(version, usage, alg, mode, key_version, exportability, key_context, blocks)| Header {
                version,
                key_usage: KeyUsage(usage),
                algorithm: Algorithm(alg),
                mode_of_use: ModeOfUse(mode),
                key_version,
                exportability,
                key_context,
                optional_blocks: blocks,
            },
        )
}

fn without_padding(h: &Header) -> Vec<OptionalBlock> {
    h.optional_blocks
        .iter()
        .filter(|b| !b.is_padding())
        .cloned()
        .collect()
}

fn kbpk_len(version: Version) -> BoxedStrategy<usize> {
    match version {
        Version::D => prop_oneof![Just(16usize), Just(24), Just(32)].boxed(),
        _ => prop_oneof![Just(16usize), Just(24)].boxed(),
    }
}

/// Key lengths: every standard size (single DES, 2-/3-key TDES, AES-128/192/256),
/// plus arbitrary lengths (e.g. a 16-byte SM4 key, HMAC keys).
fn key_len() -> impl Strategy<Value = usize> {
    prop_oneof![Just(8usize), Just(16), Just(24), Just(32), 1usize..=80]
}

fn wrap_case(
    versions: impl Strategy<Value = Version>,
) -> impl Strategy<Value = (Header, Vec<u8>, Vec<u8>, Option<usize>)> {
    header_for(versions).prop_flat_map(|header| {
        let v = header.version;
        (
            Just(header),
            kbpk_len(v).prop_flat_map(|n| prop::collection::vec(any::<u8>(), n)),
            key_len().prop_flat_map(|n| prop::collection::vec(any::<u8>(), n)),
            prop::option::of(0usize..=40),
        )
    })
}

fn check_roundtrip(header: &Header, kbpk: &[u8], key: &[u8], extra: Option<usize>) {
    let masked = extra.map(|e| key.len() + e);
    let block = wrap(kbpk, header, key, masked).expect("wrap");
    let bs = header.version.block_size();
    assert_eq!(block.len() % bs, 0, "block length aligned");
    assert_eq!(block[1..5].parse::<usize>().ok(), Some(block.len()));
    let out = unwrap(kbpk, &block).expect("unwrap of a fresh block");
    assert_eq!(&out.key[..], key);
    assert_eq!(out.header.version, header.version);
    assert_eq!(out.header.key_usage, header.key_usage);
    assert_eq!(out.header.algorithm, header.algorithm);
    assert_eq!(out.header.mode_of_use, header.mode_of_use);
    assert_eq!(out.header.key_version, header.key_version);
    assert_eq!(out.header.exportability, header.exportability);
    assert_eq!(out.header.key_context, header.key_context);
    assert_eq!(without_padding(&out.header), without_padding(header));
    // The payload is `2 + max(key, masked)` bytes rounded up to the block size: the
    // masked length hides the true key length.
    let header_len = out.header.to_header_string().expect("serializes").len();
    let payload = (block.len() - header_len - 2 * header.version.mac_len()) / 2;
    let hidden = masked.unwrap_or(key.len());
    assert!(
        payload >= 2 + hidden && payload < 2 + hidden + bs,
        "payload {payload}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn wrap_then_unwrap_is_identity_for_b_and_d(
        (header, kbpk, key, extra) in wrap_case(prop_oneof![Just(Version::B), Just(Version::D)])
    ) {
        check_roundtrip(&header, &kbpk, &key, extra);
    }

    #[test]
    fn wrap_then_unwrap_is_identity_for_legacy_a_and_c(
        (header, kbpk, key, extra) in wrap_case(prop_oneof![Just(Version::A), Just(Version::C)])
    ) {
        check_roundtrip(&header, &kbpk, &key, extra);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn header_serialize_then_parse_is_identity(header in header_for(version())) {
        let s = header.to_header_string().expect("serializes");
        prop_assert_eq!(s.len() % header.version.block_size(), 0);
        let parsed = Header::parse(&s).expect("canonical header parses strictly");
        // Serialization may only have added a PB block for alignment.
        let mut normalized = parsed.clone();
        normalized.optional_blocks = without_padding(&parsed);
        let mut original = header.clone();
        original.optional_blocks = without_padding(&header);
        prop_assert_eq!(normalized, original);
        // And parse∘serialize is the identity on the canonical string.
        prop_assert_eq!(parsed.to_header_string().expect("serializes"), s.clone());
        prop_assert_eq!(s.parse::<Header>().expect("FromStr"), parsed);
    }

    #[test]
    fn arbitrary_input_never_panics(s in "[ -~]{0,200}", kbpk in prop::collection::vec(any::<u8>(), 0..40)) {
        let _ = Header::parse(&s);
        let _ = Header::parse_template(&s);
        let _ = unwrap(&kbpk, &s);
    }

    #[test]
    fn mangled_valid_blocks_never_panic_and_never_unwrap(
        pos in 0usize..200,
        c in printable(),
        cut in 0usize..200,
    ) {
        // TR-31:2018 A.7.3.1 (version C with a KS block) as the base.
        let kbpk = hex::decode("B8ED59E0A279A295E9F5ED7944FD06B9").expect("hex");
        let block = "C0096B0TX12S0100KS1800604B120F9292800000BFB9B689CB567E66FC3FEE5AD5F52161FC6545B9D60989015D02155C";
        let mut bytes = block.as_bytes().to_vec();
        let i = pos % bytes.len();
        let changed = bytes[i] != c;
        bytes[i] = c;
        bytes.truncate(bytes.len() - cut % 8);
        let mangled = String::from_utf8(bytes).expect("ascii");
        let result = unwrap(&kbpk, &mangled);
        if changed || cut % 8 != 0 {
            prop_assert!(result.is_err());
        }
    }
}

#[test]
fn sixteen_byte_sm4_key_under_proprietary_algorithm_code_round_trips() {
    // poshsm labels SM4 keys with the proprietary algorithm code '4'.
    let header = Header::new(
        Version::D,
        KeyUsage::P0,
        Algorithm(b'4'),
        ModeOfUse::E,
        Exportability::NonExportable,
    );
    let key = [0xA5u8; 16];
    let kbpk = [0x3Cu8; 32];
    let block = wrap(&kbpk, &header, &key, None).expect("wrap");
    assert_eq!(&block[5..9], "P04E");
    let out = unwrap(&kbpk, &block).expect("unwrap");
    assert_eq!(out.header.algorithm, Algorithm(b'4'));
    assert_eq!(&out.key[..], &key);
}
