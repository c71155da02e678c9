//! Every refusal of DESIGN.md §5 against the transport-free core: each test
//! replays one misuse (or one classic security-API attack), asserts the exact
//! stable reason code, that the message names the problem, that it carries no
//! key bytes, and where the refusal follows a write attempt, that nothing was
//! half-written. Expected values come from published vectors or from the test's
//! own arithmetic with the RustCrypto `des` crate, never from poshsm itself.

use cipher::{Block, BlockDecrypt, BlockEncrypt, KeyInit};
use keyblocks::{Exportability, Header, KeyUsage, ModeOfUse, Version};
use poshsm::crypto::pinblock::PinBlockFormat;
use poshsm::crypto::Algorithm;
use poshsm::hsm::*;
use poshsm::keys::{KeyType, Lmk};
use poshsm::store::Store;
use zeroize::Zeroizing;

const LMK: [u8; 32] = [0x3C; 32];
const OTHER_LMK: [u8; 32] = [0xC3; 32];

/// TDES key with a published KCV: psec `generate_kcv` → 08D7B4 (also the core's
/// own self-test probe). Odd parity in every byte.
const PUBLISHED_KEY: &str = "0123456789ABCDEFFEDCBA9876543210";
const PUBLISHED_KCV: &str = "08D7B4";

/// The 4 weak and 12 semi-weak DES keys, FIPS 74 §3.6 / NIST SP 800-67 Rev. 2
/// §3.3.2 (written out here, independently of poshsm's own table).
const WEAK_DES_KEYS: [&str; 16] = [
    "0101010101010101",
    "FEFEFEFEFEFEFEFE",
    "E0E0E0E0F1F1F1F1",
    "1F1F1F1F0E0E0E0E",
    "01FE01FE01FE01FE",
    "FE01FE01FE01FE01",
    "1FE01FE00EF10EF1",
    "E01FE01FF10EF10E",
    "01E001E001F101F1",
    "E001E001F101F101",
    "1FFE1FFE0EFE0EFE",
    "FE1FFE1FFE0EFE0E",
    "011F011F010E010E",
    "1F011F010E010E01",
    "E0FEE0FEF1FEF1FE",
    "FEE0FEE0FEF1FEF1",
];

// ---- independent helpers ------------------------------------------------------------

fn h(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

fn random(n: usize) -> Vec<u8> {
    use std::io::Read;
    let mut v = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut v)
        .unwrap();
    v
}

fn with_odd_parity(mut v: Vec<u8>) -> Vec<u8> {
    for b in &mut v {
        if b.count_ones() % 2 == 0 {
            *b ^= 1;
        }
    }
    v
}

/// Random DES-family key material with odd parity.
fn odd(n: usize) -> Vec<u8> {
    with_odd_parity(random(n))
}

fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.iter().zip(b).map(|(x, y)| x ^ y).collect()
}

/// Three odd-parity components whose XOR is exactly `key` (odd ⊕ odd ⊕ odd = odd).
fn split3(key: &[u8]) -> Vec<Vec<u8>> {
    let c1 = odd(key.len());
    let c2 = odd(key.len());
    let c3 = xor(&xor(key, &c1), &c2);
    vec![c1, c2, c3]
}

fn ecb_with<C: KeyInit + BlockEncrypt + BlockDecrypt>(
    key: &[u8],
    data: &[u8],
    encrypt: bool,
) -> Vec<u8> {
    let c = C::new_from_slice(key).unwrap();
    let mut out = data.to_vec();
    for chunk in out.chunks_mut(8) {
        let block = Block::<C>::from_mut_slice(chunk);
        if encrypt {
            c.encrypt_block(block)
        } else {
            c.decrypt_block(block)
        }
    }
    out
}

/// DES / TDES ECB with RustCrypto `des` directly (not through poshsm).
fn des_ecb(key: &[u8], data: &[u8], encrypt: bool) -> Vec<u8> {
    match key.len() {
        8 => ecb_with::<des::Des>(key, data, encrypt),
        16 => ecb_with::<des::TdesEde2>(key, data, encrypt),
        24 => ecb_with::<des::TdesEde3>(key, data, encrypt),
        n => panic!("no DES key of {n} bytes"),
    }
}

/// KCV of a DES-family key: first 3 bytes of E(key, zeros), upper-case hex.
fn des_kcv(key: &[u8]) -> String {
    hex::encode_upper(&des_ecb(key, &[0u8; 8], true)[..3])
}

/// Clear ISO 9564 format 0 block, built from the standard's definition.
fn iso0_clear(pin: &str, pan: &str) -> Vec<u8> {
    let pin_field = format!("0{:X}{pin:F<14}", pin.len());
    let without_check = &pan[..pan.len() - 1];
    let pan_field = format!("0000{}", &without_check[without_check.len() - 12..]);
    xor(&h(&pin_field), &h(&pan_field))
}

/// DuplicateComponent → "DUPLICATE_COMPONENT": the API spelling of a reason.
fn api_code(reason: Reason) -> String {
    let mut out = String::new();
    for (i, c) in format!("{reason:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// True if `text` has a run of 16 or more hex digits that is not a key id
/// (`k` followed by exactly 24 hex digits, or 16 for ids minted before the
/// time-ordered ones): the shape of clear DES/TDES/AES key bytes.
fn has_key_shaped_hex(text: &str) -> bool {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_hexdigit() {
            let start = i;
            while i < b.len() && b[i].is_ascii_hexdigit() {
                i += 1;
            }
            let len = i - start;
            let key_id = (len == 16 || len == 24) && start > 0 && b[start - 1] == b'k';
            if len >= 16 && !key_id {
                return true;
            }
        } else {
            i += 1;
        }
    }
    false
}

/// Asserts a refusal: the exact reason and its API code, a message naming the
/// problem (each of `names`, case-insensitive), and no key material in it.
#[track_caller]
fn refused<T: std::fmt::Debug>(
    result: Result<T, HsmError>,
    reason: Reason,
    names: &[&str],
    secrets: &[&[u8]],
) -> HsmError {
    let e = match result {
        Ok(v) => panic!("expected {reason:?}, got Ok({v:?})"),
        Err(e) => e,
    };
    assert_eq!(e.reason, reason, "wrong reason: {e:?}");
    assert_eq!(e.code(), api_code(reason), "reason code spelling");
    let text = format!("{e} {e:?}");
    let lower = text.to_lowercase();
    for n in names {
        assert!(
            lower.contains(&n.to_lowercase()),
            "message does not name {n:?}: {}",
            e.message
        );
    }
    for s in secrets {
        for form in [hex::encode_upper(s), hex::encode(s)] {
            assert!(!text.contains(&form), "message leaks key bytes: {text}");
        }
    }
    assert!(
        !has_key_shaped_hex(&text),
        "message carries key-shaped hex: {text}"
    );
    e
}

// ---- core drivers -------------------------------------------------------------------

fn hsm_with(config: HsmConfig) -> Hsm {
    let hsm = Hsm::new(Lmk::from_bytes(&LMK), Store::temporary().unwrap(), config);
    assert_eq!(hsm.status().state, "OK", "{:?}", hsm.status());
    hsm
}

fn hsm() -> Hsm {
    hsm_with(HsmConfig::default())
}

fn legacy() -> HsmConfig {
    HsmConfig {
        allow_single_des: true,
        ..HsmConfig::default()
    }
}

fn components(
    hsm: &Hsm,
    key_type: KeyType,
    algorithm: Algorithm,
    parts: &[Vec<u8>],
    kcvs: &[&str],
    alias: &str,
) -> Result<KeyInfo, HsmError> {
    hsm.import_key_components(
        "custodians",
        ImportComponents {
            key_type,
            algorithm,
            components: parts.iter().cloned().map(Zeroizing::new).collect(),
            component_kcvs: kcvs.iter().map(|s| s.to_string()).collect(),
            alias: alias.into(),
            exportable: false,
        },
    )
}

/// A key of known clear value, formed from three components.
fn form(hsm: &Hsm, key_type: KeyType, clear: &[u8], alias: &str, exportable: bool) -> KeyInfo {
    let algorithm = match clear.len() {
        8 => Algorithm::Des,
        16 => Algorithm::Tdes2,
        24 => Algorithm::Tdes3,
        n => panic!("no DES key of {n} bytes"),
    };
    hsm.import_key_components(
        "custodians",
        ImportComponents {
            key_type,
            algorithm,
            components: split3(clear).into_iter().map(Zeroizing::new).collect(),
            component_kcvs: vec![],
            alias: alias.into(),
            exportable,
        },
    )
    .unwrap()
}

fn generate(hsm: &Hsm, key_type: KeyType, algorithm: Algorithm, exportable: bool) -> KeyInfo {
    hsm.generate_key(
        "admin",
        GenerateKey {
            key_type,
            algorithm,
            alias: String::new(),
            exportable,
        },
    )
    .unwrap()
}

fn id(k: &KeyInfo) -> KeyRef {
    KeyRef::Id(k.key_id.clone())
}

fn key_count(hsm: &Hsm) -> usize {
    hsm.list_keys(None, 1000, "").unwrap().0.len()
}

fn audit_count(hsm: &Hsm) -> usize {
    hsm.audit_log(0, 100_000).unwrap().len()
}

fn export(
    hsm: &Hsm,
    key: KeyRef,
    kek: KeyRef,
    format: ExportFormat,
) -> Result<ExportedKey, HsmError> {
    hsm.export_key(
        "admin",
        ExportKey {
            key,
            wrapping_key: kek,
            format,
        },
    )
}

fn create_terminal(hsm: &Hsm, tid: &str, tmk: Option<KeyRef>) -> Result<TerminalInfo, HsmError> {
    hsm.create_terminal(
        "admin",
        CreateTerminal {
            terminal_id: tid.into(),
            merchant_id: "898110000000001".into(),
            tmk,
            tmk_algorithm: None,
        },
    )
}

fn sign_in(hsm: &Hsm, tid: &str, layout: Option<Field62Layout>) -> Result<SignInResult, HsmError> {
    hsm.sign_in(
        "posp",
        SignIn {
            source: SignInSource::Terminal(tid.into()),
            algorithm: None,
            include_tdk: false,
            layout,
            check_value_length: 0,
        },
    )
}

fn mac(
    hsm: &Hsm,
    source: MacKeySource,
    alg: MacAlgorithm,
    msg: &[u8],
    len: usize,
) -> Result<Vec<u8>, HsmError> {
    hsm.generate_mac(&MacRequest {
        source,
        algorithm: alg,
        message: msg,
        mac_length: len,
    })
}

fn verify(
    hsm: &Hsm,
    source: MacKeySource,
    alg: MacAlgorithm,
    msg: &[u8],
    m: &[u8],
) -> Result<bool, HsmError> {
    hsm.verify_mac(
        &MacRequest {
            source,
            algorithm: alg,
            message: msg,
            mac_length: 0,
        },
        m,
    )
}

fn translate(
    hsm: &Hsm,
    source: PinKeySource,
    dest: KeyRef,
    block: &[u8],
    pan: &str,
    from: PinBlockFormat,
    to: PinBlockFormat,
) -> Result<TranslatedPin, HsmError> {
    hsm.translate_pin(&TranslatePin {
        source,
        dest,
        pin_block: block.to_vec(),
        pan: pan.into(),
        source_format: from,
        dest_format: to,
    })
}

const PAN: &str = "6222020200112233445";
const PIN: &str = "975310";

// ---- component entry ----------------------------------------------------------------

#[test]
fn a_key_from_a_single_component_is_refused_as_too_few_components() {
    let hsm = hsm();
    let c = odd(16);
    refused(
        components(
            &hsm,
            KeyType::Zmk,
            Algorithm::Tdes2,
            std::slice::from_ref(&c),
            &[],
            "",
        ),
        Reason::TooFewComponents,
        &["at least 2 components"],
        &[&c],
    );
    refused(
        components(&hsm, KeyType::Zmk, Algorithm::Tdes2, &[], &[], ""),
        Reason::TooFewComponents,
        &["component"],
        &[],
    );
    assert_eq!(key_count(&hsm), 0);
}

#[test]
fn two_identical_components_are_refused_as_duplicates_and_nothing_is_stored() {
    let hsm = hsm();
    let c = odd(16);
    let other = odd(16);
    refused(
        components(
            &hsm,
            KeyType::Zmk,
            Algorithm::Tdes2,
            &[c.clone(), c.clone()],
            &[],
            "zmk",
        ),
        Reason::DuplicateComponent,
        &["component 2 equals component 1"],
        &[&c],
    );
    // The duplicate hidden among three (its XOR would leave only `other` in clear).
    refused(
        components(
            &hsm,
            KeyType::Zmk,
            Algorithm::Tdes2,
            &[c.clone(), other.clone(), c.clone()],
            &[],
            "zmk",
        ),
        Reason::DuplicateComponent,
        &["component 3 equals component 1"],
        &[&c, &other],
    );
    assert_eq!(key_count(&hsm), 0);
    assert!(hsm.get_key(&KeyRef::Alias("zmk".into())).is_err());
}

#[test]
fn components_that_cancel_to_zero_are_refused_as_weak() {
    // Key-part XOR-to-null: four distinct odd-parity parts whose XOR is all zeros
    // (no two are equal, so the duplicate check alone would not catch it).
    let hsm = hsm();
    let a = odd(16);
    let b = odd(16);
    let d = odd(16);
    let e = xor(&xor(&a, &b), &d); // odd ⊕ odd ⊕ odd: odd parity
    let parts = vec![a.clone(), b.clone(), d.clone(), e.clone()];
    let total = parts.iter().fold(vec![0u8; 16], |acc, p| xor(&acc, p));
    assert_eq!(total, vec![0u8; 16], "the test's parts cancel");
    refused(
        components(&hsm, KeyType::Zmk, Algorithm::Tdes2, &parts, &[], ""),
        Reason::WeakKey,
        &["zero"],
        &[&a, &b, &d, &e],
    );
    assert_eq!(key_count(&hsm), 0);
}

#[test]
fn components_that_form_a_weak_or_semi_weak_des_key_are_refused() {
    let hsm = hsm_with(legacy());
    for weak_hex in WEAK_DES_KEYS {
        let weak = h(weak_hex);
        assert!(weak.iter().all(|b| b.count_ones() % 2 == 1), "{weak_hex}");
        // Two components: their XOR has even parity and only becomes the weak key
        // after parity adjustment, which is exactly what the core must check.
        // (0101…01 itself would need two equal parts that way: three parts there.)
        let c1 = odd(8);
        let c2 = xor(&xor(&c1, &weak), &[0x01; 8]);
        let parts = if c1 == c2 {
            split3(&weak)
        } else {
            vec![c1, c2]
        };
        refused(
            components(&hsm, KeyType::Tpk, Algorithm::Des, &parts, &[], ""),
            Reason::WeakKey,
            &["weak"],
            &[&parts[0], &parts[1], &weak],
        );
        // The weak key as either half of a double-length TDES key.
        let good = odd(8);
        for key in [
            [&weak[..], &good[..]].concat(),
            [&good[..], &weak[..]].concat(),
        ] {
            let parts = split3(&key);
            refused(
                components(&hsm, KeyType::Zmk, Algorithm::Tdes2, &parts, &[], ""),
                Reason::WeakKey,
                &["weak"],
                &[&key, &parts[0], &parts[1], &parts[2]],
            );
        }
    }
    assert_eq!(key_count(&hsm), 0);
}

#[test]
fn components_that_form_a_tdes_key_with_equal_halves_are_refused() {
    let hsm = hsm();
    let k1 = odd(8);
    let k3 = odd(8);
    // K1 = K2 (double length): TDES collapses to single DES.
    let double = [&k1[..], &k1[..]].concat();
    // K2 = K3 (triple length), the halves differing only in parity bits.
    let k2_flipped: Vec<u8> = k1.iter().map(|b| b ^ 0x01).collect();
    let triple_raw = [&k3[..], &k1[..], &k2_flipped[..]].concat();
    for (alg, key) in [(Algorithm::Tdes2, double), (Algorithm::Tdes3, triple_raw)] {
        // Two components so the XOR goes through parity adjustment: c2's parity
        // fix-up only touches the low bits, which the adjustment recomputes.
        let c1 = odd(key.len());
        let c2 = with_odd_parity(xor(&c1, &key));
        refused(
            components(&hsm, KeyType::Zmk, alg, &[c1.clone(), c2.clone()], &[], ""),
            Reason::WeakKey,
            &["equal tdes halves"],
            &[&c1, &c2, &key],
        );
    }
    assert_eq!(key_count(&hsm), 0);
}

#[test]
fn a_component_with_bad_parity_is_refused() {
    let hsm = hsm();
    let good = odd(16);
    let mut bad = odd(16);
    bad[5] ^= 0x01; // one byte with even parity
    refused(
        components(
            &hsm,
            KeyType::Zmk,
            Algorithm::Tdes2,
            &[good.clone(), bad.clone()],
            &[],
            "",
        ),
        Reason::BadParity,
        &["component 2", "parity"],
        &[&good, &bad],
    );
    assert_eq!(key_count(&hsm), 0);
}

#[test]
fn a_component_of_the_wrong_length_is_refused() {
    let hsm = hsm();
    let good = odd(16);
    let short = odd(15);
    refused(
        components(
            &hsm,
            KeyType::Zmk,
            Algorithm::Tdes2,
            &[good.clone(), short.clone()],
            &[],
            "",
        ),
        Reason::InvalidKeyLength,
        &["component 2", "15 bytes"],
        &[&good, &short],
    );
    let long = odd(24);
    refused(
        components(
            &hsm,
            KeyType::Zmk,
            Algorithm::Tdes2,
            &[long.clone(), good.clone()],
            &[],
            "",
        ),
        Reason::InvalidKeyLength,
        &["component 1", "24 bytes"],
        &[&good, &long],
    );
    assert_eq!(key_count(&hsm), 0);
}

#[test]
fn a_wrong_component_kcv_is_refused_and_the_published_kcv_is_accepted() {
    let hsm = hsm();
    let published = h(PUBLISHED_KEY);
    let other = odd(16);
    let parts = [published.clone(), other.clone()];
    let e = refused(
        components(
            &hsm,
            KeyType::Zmk,
            Algorithm::Tdes2,
            &parts,
            &["08D7B5", ""],
            "zmk",
        ),
        Reason::KcvMismatch,
        &["component 1", "08D7B5"],
        &[&published, &other],
    );
    // The message may show the KCVs (public), never a key.
    assert!(e.message.contains(PUBLISHED_KCV), "{}", e.message);
    assert_eq!(key_count(&hsm), 0);
    // A wrong KCV on the second component is caught as well.
    refused(
        components(
            &hsm,
            KeyType::Zmk,
            Algorithm::Tdes2,
            &parts,
            &[PUBLISHED_KCV, "000000"],
            "zmk",
        ),
        Reason::KcvMismatch,
        &["component 2"],
        &[&published, &other],
    );
    assert_eq!(key_count(&hsm), 0);
    // The published KCV (lower-case too) is accepted.
    let info = components(
        &hsm,
        KeyType::Zmk,
        Algorithm::Tdes2,
        &parts,
        &["08d7b4", ""],
        "zmk",
    )
    .unwrap();
    assert_eq!(info.kcv, des_kcv(&xor(&published, &other)));
}

#[test]
fn three_components_of_the_published_key_form_a_key_with_its_published_kcv() {
    let hsm = hsm();
    let parts = split3(&h(PUBLISHED_KEY));
    let kcvs: Vec<String> = parts.iter().map(|p| des_kcv(p)).collect();
    let kcv_refs: Vec<&str> = kcvs.iter().map(String::as_str).collect();
    let info = components(
        &hsm,
        KeyType::Zmk,
        Algorithm::Tdes2,
        &parts,
        &kcv_refs,
        "zmk",
    )
    .unwrap();
    assert_eq!(info.kcv, PUBLISHED_KCV);
    assert_eq!(info.key_type, "ZMK");
    // One KCV for three components is refused as an argument error.
    refused(
        components(
            &hsm,
            KeyType::Zmk,
            Algorithm::Tdes2,
            &parts,
            &[kcv_refs[0]],
            "",
        ),
        Reason::InvalidArgument,
        &["1 component KCVs for 3 components"],
        &[],
    );
}

// ---- single DES -----------------------------------------------------------------------

#[test]
fn single_des_keys_are_refused_unless_enabled_in_the_config() {
    let strict = hsm();
    let gen = |hsm: &Hsm| {
        hsm.generate_key(
            "admin",
            GenerateKey {
                key_type: KeyType::Tpk,
                algorithm: Algorithm::Des,
                alias: String::new(),
                exportable: false,
            },
        )
    };
    refused(
        gen(&strict),
        Reason::SingleDesDisabled,
        &["single-DES", "allow_single_des"],
        &[],
    );
    let parts = split3(&odd(8));
    refused(
        components(&strict, KeyType::Tpk, Algorithm::Des, &parts, &[], ""),
        Reason::SingleDesDisabled,
        &["single-DES"],
        &[&parts[0], &parts[1], &parts[2]],
    );
    // A single-DES key delivered under a KEK (X9.17) is refused as well.
    let kek_clear = odd(16);
    let kek = form(&strict, KeyType::Zmk, &kek_clear, "", false);
    let des_key = odd(8);
    let before = key_count(&strict);
    refused(
        strict.import_key(
            "admin",
            ImportKey {
                key_type: KeyType::Zpk,
                algorithm: Some(Algorithm::Des),
                wrapping_key: id(&kek),
                wrapped: Wrapped::X917Ecb(des_ecb(&kek_clear, &des_key, true)),
                expected_kcv: String::new(),
                alias: String::new(),
                exportable: false,
            },
        ),
        Reason::SingleDesDisabled,
        &["single-DES"],
        &[&kek_clear, &des_key],
    );
    assert_eq!(key_count(&strict), before);

    let legacy = hsm_with(legacy());
    let info = gen(&legacy).unwrap();
    assert_eq!(info.algorithm, "DES");
    let des_clear = odd(8);
    let formed = form(&legacy, KeyType::Tpk, &des_clear, "", false);
    assert_eq!(formed.algorithm, "DES");
    assert_eq!(formed.kcv, des_kcv(&des_clear));
}

#[test]
fn the_unionpay_001_sign_in_layout_is_refused_unless_single_des_is_enabled() {
    for config in [HsmConfig::default(), legacy()] {
        let allowed = config.allow_single_des;
        let hsm = hsm_with(config);
        let tmk_clear = odd(16);
        let tmk = form(&hsm, KeyType::Tmk, &tmk_clear, "", false);
        create_terminal(&hsm, "T001", Some(id(&tmk))).unwrap();
        let result = sign_in(&hsm, "T001", Some(Field62Layout::Unionpay001));
        if !allowed {
            refused(
                result,
                Reason::SingleDesDisabled,
                &["UNIONPAY_001", "allow_single_des"],
                &[&tmk_clear],
            );
            let t = hsm.get_terminal("T001").unwrap();
            assert_eq!(t.key_version, 0, "a refused sign-in rotates nothing");
            assert!(t.current.is_none());
            continue;
        }
        let r = result.unwrap();
        assert_eq!(r.layout, Field62Layout::Unionpay001);
        assert_eq!(r.field62.len(), 24, "PIK 8‖CV 4‖MAK 8‖CV 4");
        // The terminal's view: decrypt each key under the TMK and check its CV.
        for (off, wk) in [(0, &r.pik), (12, &r.mak)] {
            let key = des_ecb(&tmk_clear, &r.field62[off..off + 8], false);
            let cv = des_ecb(&key, &[0u8; 8], true);
            assert_eq!(&r.field62[off + 8..off + 12], &cv[..4]);
            assert_eq!(wk.kcv, des_kcv(&key));
        }
    }
}

// ---- export ---------------------------------------------------------------------------

#[test]
fn a_non_exportable_key_is_not_exported_and_the_refusal_is_audited() {
    let hsm = hsm();
    let kek = generate(&hsm, KeyType::Kek, Algorithm::Tdes2, false);
    let zpk = generate(&hsm, KeyType::Zpk, Algorithm::Tdes2, false);
    for format in [ExportFormat::Tr31, ExportFormat::X917Ecb] {
        refused(
            export(&hsm, id(&zpk), id(&kek), format),
            Reason::NotExportable,
            &[&zpk.key_id, "not exportable"],
            &[],
        );
    }
    let log = hsm.audit_log(0, 1000).unwrap();
    let denials: Vec<_> = log
        .iter()
        .filter(|e| e.operation == "ExportKey" && e.key_id == zpk.key_id)
        .collect();
    assert_eq!(denials.len(), 2);
    assert!(denials.iter().all(|e| e.outcome == "NOT_EXPORTABLE"));
    assert_eq!(hsm.verify_audit_log().unwrap(), log.len() as u64);
}

#[test]
fn keys_are_exported_only_under_a_key_encryption_key() {
    let hsm = hsm();
    let tpk = generate(&hsm, KeyType::Tpk, Algorithm::Tdes2, true);
    for not_a_kek in [KeyType::Zpk, KeyType::Zak, KeyType::Tdk] {
        let w = generate(&hsm, not_a_kek, Algorithm::Tdes2, true);
        refused(
            export(&hsm, id(&tpk), id(&w), ExportFormat::X917Ecb),
            Reason::KeyUsageMismatch,
            &[not_a_kek.name(), "only under a KEK"],
            &[],
        );
    }
    // Never a KEK under a working key either.
    let kek = generate(&hsm, KeyType::Kek, Algorithm::Tdes2, true);
    let zpk = generate(&hsm, KeyType::Zpk, Algorithm::Tdes2, true);
    refused(
        export(&hsm, id(&kek), id(&zpk), ExportFormat::Tr31),
        Reason::KeyUsageMismatch,
        &["ZPK"],
        &[],
    );
}

#[test]
fn a_key_is_not_exported_under_itself() {
    let hsm = hsm();
    let kek = generate(&hsm, KeyType::Kek, Algorithm::Tdes2, true);
    for format in [ExportFormat::Tr31, ExportFormat::X917Ecb] {
        refused(
            export(&hsm, id(&kek), id(&kek), format),
            Reason::KeyUsageMismatch,
            &["under itself"],
            &[],
        );
        // The same key named once by id and once by its LMK block.
        refused(
            export(&hsm, id(&kek), KeyRef::Block(kek.key_block.clone()), format),
            Reason::KeyUsageMismatch,
            &["under itself"],
            &[],
        );
    }
    // The same clear value under another id (two imports of one ZMK) is "itself" too.
    let clear = odd(16);
    let a = form(&hsm, KeyType::Zmk, &clear, "", true);
    let b = form(&hsm, KeyType::Kek, &clear, "", true);
    refused(
        export(&hsm, id(&a), id(&b), ExportFormat::X917Ecb),
        Reason::KeyUsageMismatch,
        &["under itself"],
        &[&clear],
    );
}

#[test]
fn a_stronger_key_is_not_exported_under_a_weaker_kek() {
    let hsm = hsm();
    let kek2 = generate(&hsm, KeyType::Kek, Algorithm::Tdes2, true);
    let kek3 = generate(&hsm, KeyType::Kek, Algorithm::Tdes3, true);
    let aes256 = generate(&hsm, KeyType::Zpk, Algorithm::Aes256, true);
    let tdes3 = generate(&hsm, KeyType::Zpk, Algorithm::Tdes3, true);
    refused(
        export(&hsm, id(&aes256), id(&kek2), ExportFormat::Tr31),
        Reason::WrappingKeyTooWeak,
        &["AES_256", "weaker TDES_2KEY"],
        &[],
    );
    refused(
        export(&hsm, id(&tdes3), id(&kek2), ExportFormat::X917Ecb),
        Reason::WrappingKeyTooWeak,
        &["TDES_3KEY", "weaker TDES_2KEY"],
        &[],
    );
    refused(
        export(&hsm, id(&aes256), id(&kek3), ExportFormat::Tr31),
        Reason::WrappingKeyTooWeak,
        &["AES_256"],
        &[],
    );
    // Equal or weaker keys go out.
    export(&hsm, id(&tdes3), id(&kek3), ExportFormat::Tr31).unwrap();
    let tdes2 = generate(&hsm, KeyType::Zpk, Algorithm::Tdes2, true);
    export(&hsm, id(&tdes2), id(&kek3), ExportFormat::Tr31).unwrap();
}

#[test]
fn an_sm4_key_is_not_exported_as_tr31() {
    let hsm = hsm();
    let sm4 = generate(&hsm, KeyType::Zpk, Algorithm::Sm4, true);
    let aes_kek = generate(&hsm, KeyType::Kek, Algorithm::Aes256, true);
    let sm4_kek = generate(&hsm, KeyType::Kek, Algorithm::Sm4, true);
    for kek in [&aes_kek, &sm4_kek] {
        refused(
            export(&hsm, id(&sm4), id(kek), ExportFormat::Tr31),
            Reason::UnsupportedAlgorithm,
            &["TR-31", "SM4"],
            &[],
        );
    }
    // Under an SM4 KEK as X9.17 ECB it goes out.
    let out = export(&hsm, id(&sm4), id(&sm4_kek), ExportFormat::X917Ecb).unwrap();
    assert_eq!(out.x917_ecb.len(), 16);
    assert_eq!(out.kcv, sm4.kcv);
}

#[test]
fn an_exportable_tpk_is_exported_as_tr31_version_b_under_a_tdes_kek() {
    let hsm = hsm();
    let kek_clear = odd(16);
    let kek = form(&hsm, KeyType::Kek, &kek_clear, "kek", false);
    let tpk = generate(&hsm, KeyType::Tpk, Algorithm::Tdes2, true);
    let out = export(
        &hsm,
        id(&tpk),
        KeyRef::Alias("kek".into()),
        ExportFormat::Tr31,
    )
    .unwrap();
    assert!(
        out.tr31_key_block.starts_with('B'),
        "{}",
        out.tr31_key_block
    );
    assert_eq!(out.kcv, tpk.kcv);
    // The receiving side, with the KEK in clear, unwraps it independently of poshsm.
    let un = keyblocks::unwrap(&kek_clear, &out.tr31_key_block).unwrap();
    assert_eq!(un.header.key_usage, KeyUsage::P0);
    assert_eq!(un.header.algorithm, keyblocks::Algorithm::TDES);
    assert_eq!(des_kcv(&un.key), tpk.kcv);
    // The export is audited, naming the KEK by id and no key bytes.
    let log = hsm.audit_log(0, 1000).unwrap();
    let last = log.last().unwrap();
    assert_eq!(
        (last.operation.as_str(), last.outcome.as_str()),
        ("ExportKey", "OK")
    );
    assert_eq!(last.key_id, tpk.key_id);
    assert!(
        last.detail.contains(&format!("under={}", kek.key_id)),
        "{}",
        last.detail
    );
    assert!(!has_key_shaped_hex(&last.detail), "{}", last.detail);
    assert!(!last.detail.contains(&hex::encode_upper(&kek_clear)));
}

#[test]
fn an_x917_export_reimports_under_the_same_kek_with_the_same_kcv() {
    let hsm = hsm();
    let kek_clear = odd(16);
    let kek = form(&hsm, KeyType::Zmk, &kek_clear, "zmk", false);
    let tpk = generate(&hsm, KeyType::Tpk, Algorithm::Tdes2, true);
    let out = export(&hsm, id(&tpk), id(&kek), ExportFormat::X917Ecb).unwrap();
    assert_eq!(out.x917_ecb.len(), 16);
    assert!(out.tr31_key_block.is_empty());
    let clear = des_ecb(&kek_clear, &out.x917_ecb, false);
    assert_eq!(des_kcv(&clear), tpk.kcv, "the KEK holder recovers the TPK");
    let back = hsm
        .import_key(
            "admin",
            ImportKey {
                key_type: KeyType::Tpk,
                algorithm: Some(Algorithm::Tdes2),
                wrapping_key: id(&kek),
                wrapped: Wrapped::X917Ecb(out.x917_ecb.clone()),
                expected_kcv: out.kcv.clone(),
                alias: String::new(),
                exportable: false,
            },
        )
        .unwrap();
    assert_eq!(back.kcv, tpk.kcv);
    assert_ne!(back.key_id, tpk.key_id);
}

// ---- import ---------------------------------------------------------------------------

fn tr31_under(kek_clear: &[u8], usage: KeyUsage, mode: ModeOfUse, key: &[u8]) -> String {
    let header = Header::new(
        Version::B,
        usage,
        keyblocks::Algorithm::TDES,
        mode,
        Exportability::Exportable,
    );
    keyblocks::wrap(kek_clear, &header, key, None).unwrap()
}

fn import_tr31(
    hsm: &Hsm,
    t: KeyType,
    kek: KeyRef,
    block: String,
    kcv: &str,
) -> Result<KeyInfo, HsmError> {
    hsm.import_key(
        "admin",
        ImportKey {
            key_type: t,
            algorithm: None,
            wrapping_key: kek,
            wrapped: Wrapped::Tr31(block),
            expected_kcv: kcv.into(),
            alias: String::new(),
            exportable: true,
        },
    )
}

#[test]
fn a_tr31_block_whose_usage_contradicts_the_requested_type_is_refused() {
    let hsm = hsm();
    let kek_clear = odd(16);
    let kek = form(&hsm, KeyType::Zmk, &kek_clear, "", false);
    let key = odd(16);
    let before = key_count(&hsm);
    // A MAC key (M3) presented as a ZPK, a PIN key (P0) as a ZAK, a data key as a KEK.
    for (usage, mode, asked) in [
        (KeyUsage::M3, ModeOfUse::C, KeyType::Zpk),
        (KeyUsage::P0, ModeOfUse::B, KeyType::Zak),
        (KeyUsage::D0, ModeOfUse::B, KeyType::Kek),
        (KeyUsage::K0, ModeOfUse::B, KeyType::Zpk),
    ] {
        let block = tr31_under(&kek_clear, usage, mode, &key);
        refused(
            import_tr31(&hsm, asked, id(&kek), block, ""),
            Reason::KeyUsageMismatch,
            &[std::str::from_utf8(&usage.0).unwrap(), asked.name()],
            &[&key, &kek_clear],
        );
    }
    assert_eq!(key_count(&hsm), before);
    // The same key with the matching usage goes in, with the KCV the sender computed.
    let block = tr31_under(&kek_clear, KeyUsage::P0, ModeOfUse::B, &key);
    let info = import_tr31(&hsm, KeyType::Zpk, id(&kek), block, &des_kcv(&key)).unwrap();
    assert_eq!(info.kcv, des_kcv(&key));
    assert!(info.exportable, "an E block imported with exportable=true");
}

#[test]
fn an_import_whose_kcv_differs_from_the_expected_is_refused_and_not_stored() {
    let hsm = hsm();
    let kek_clear = odd(16);
    let kek = form(&hsm, KeyType::Zmk, &kek_clear, "", false);
    let zpk = odd(16);
    let right = des_kcv(&zpk);
    let wrong = if right == "000000" {
        "111111"
    } else {
        "000000"
    };
    let before = key_count(&hsm);
    let x917 = |kcv: &str| {
        hsm.import_key(
            "admin",
            ImportKey {
                key_type: KeyType::Zpk,
                algorithm: Some(Algorithm::Tdes2),
                wrapping_key: id(&kek),
                wrapped: Wrapped::X917Ecb(des_ecb(&kek_clear, &zpk, true)),
                expected_kcv: kcv.into(),
                alias: "zpk".into(),
                exportable: false,
            },
        )
    };
    refused(
        x917(wrong),
        Reason::KcvMismatch,
        &[wrong, "does not match"],
        &[&zpk, &kek_clear],
    );
    let block = tr31_under(&kek_clear, KeyUsage::P0, ModeOfUse::B, &zpk);
    refused(
        import_tr31(&hsm, KeyType::Zpk, id(&kek), block, wrong),
        Reason::KcvMismatch,
        &[wrong],
        &[&zpk, &kek_clear],
    );
    assert_eq!(key_count(&hsm), before);
    assert!(
        hsm.get_key(&KeyRef::Alias("zpk".into())).is_err(),
        "alias not bound"
    );
    assert_eq!(x917(&right).unwrap().kcv, right);
}

#[test]
fn keys_are_imported_only_under_a_key_encryption_key() {
    let hsm = hsm();
    let zpk_clear = odd(16);
    let zpk = form(&hsm, KeyType::Zpk, &zpk_clear, "", false);
    let key = odd(16);
    let before = key_count(&hsm);
    refused(
        hsm.import_key(
            "admin",
            ImportKey {
                key_type: KeyType::Zpk,
                algorithm: Some(Algorithm::Tdes2),
                wrapping_key: id(&zpk),
                wrapped: Wrapped::X917Ecb(des_ecb(&zpk_clear, &key, true)),
                expected_kcv: String::new(),
                alias: String::new(),
                exportable: false,
            },
        ),
        Reason::KeyUsageMismatch,
        &["ZPK", "not a KEK"],
        &[&zpk_clear, &key],
    );
    let block = tr31_under(&zpk_clear, KeyUsage::P0, ModeOfUse::B, &key);
    refused(
        import_tr31(&hsm, KeyType::Zpk, id(&zpk), block, ""),
        Reason::KeyUsageMismatch,
        &["ZPK"],
        &[&zpk_clear, &key],
    );
    assert_eq!(key_count(&hsm), before);
}

// ---- key-type confusion -------------------------------------------------------------

#[test]
fn a_key_encryption_key_cannot_generate_or_verify_a_mac() {
    let hsm = hsm();
    for t in [KeyType::Kek, KeyType::Tmk, KeyType::Zmk] {
        let k = generate(&hsm, t, Algorithm::Tdes2, false);
        for alg in [
            MacAlgorithm::Iso9797Alg3,
            MacAlgorithm::UnionpayEcb,
            MacAlgorithm::Cmac,
        ] {
            refused(
                mac(&hsm, MacKeySource::Key(id(&k)), alg, b"0200", 0),
                Reason::KeyUsageMismatch,
                &[t.name(), "MAC"],
                &[],
            );
        }
        refused(
            verify(
                &hsm,
                MacKeySource::Key(id(&k)),
                MacAlgorithm::Iso9797Alg1,
                b"0200",
                &[0; 8],
            ),
            Reason::KeyUsageMismatch,
            &[t.name()],
            &[],
        );
    }
}

#[test]
fn pin_and_data_keys_cannot_generate_or_verify_a_mac() {
    let hsm = hsm();
    for t in [KeyType::Tpk, KeyType::Zpk, KeyType::Tdk, KeyType::Zek] {
        let k = generate(&hsm, t, Algorithm::Tdes2, false);
        refused(
            mac(
                &hsm,
                MacKeySource::Key(id(&k)),
                MacAlgorithm::Iso9797Alg3,
                b"0200",
                0,
            ),
            Reason::KeyUsageMismatch,
            &[t.name(), "MAC"],
            &[],
        );
        refused(
            verify(
                &hsm,
                MacKeySource::Key(KeyRef::Block(k.key_block.clone())),
                MacAlgorithm::Iso9797Alg3,
                b"0200",
                &[0; 8],
            ),
            Reason::KeyUsageMismatch,
            &[t.name()],
            &[],
        );
    }
}

#[test]
fn a_mac_key_cannot_translate_pins() {
    let hsm = hsm();
    let tak_clear = odd(16);
    let tak = form(&hsm, KeyType::Tak, &tak_clear, "", false);
    let zpk = generate(&hsm, KeyType::Zpk, Algorithm::Tdes2, false);
    let tpk = generate(&hsm, KeyType::Tpk, Algorithm::Tdes2, false);
    let zak = generate(&hsm, KeyType::Zak, Algorithm::Tdes2, false);
    // A PIN block "encrypted" under the MAK: the classic MAC-key-as-PIN-key oracle.
    let block = des_ecb(&tak_clear, &iso0_clear(PIN, PAN), true);
    refused(
        translate(
            &hsm,
            PinKeySource::Key(id(&tak)),
            id(&zpk),
            &block,
            PAN,
            PinBlockFormat::Iso0,
            PinBlockFormat::Iso0,
        ),
        Reason::KeyUsageMismatch,
        &["TAK", "PIN"],
        &[&tak_clear],
    );
    refused(
        translate(
            &hsm,
            PinKeySource::Key(id(&tpk)),
            id(&zak),
            &block,
            PAN,
            PinBlockFormat::Iso0,
            PinBlockFormat::Iso0,
        ),
        Reason::KeyUsageMismatch,
        &["ZAK", "PIN"],
        &[],
    );
}

#[test]
fn pins_are_translated_only_to_a_zpk() {
    let hsm = hsm();
    let tpk_clear = odd(16);
    let tpk = form(&hsm, KeyType::Tpk, &tpk_clear, "", false);
    let other_tpk = generate(&hsm, KeyType::Tpk, Algorithm::Tdes2, false);
    let block = des_ecb(&tpk_clear, &iso0_clear(PIN, PAN), true);
    for dest in [id(&other_tpk), id(&tpk)] {
        refused(
            translate(
                &hsm,
                PinKeySource::Key(id(&tpk)),
                dest,
                &block,
                PAN,
                PinBlockFormat::Iso0,
                PinBlockFormat::Iso0,
            ),
            Reason::KeyUsageMismatch,
            &["to a ZPK", "TPK"],
            &[&tpk_clear],
        );
    }
}

// ---- PIN translation ----------------------------------------------------------------

#[test]
fn translation_from_iso0_to_iso1_is_refused_by_default_and_allowed_when_enabled() {
    for allow in [false, true] {
        let hsm = hsm_with(HsmConfig {
            allow_translate_to_iso1: allow,
            ..HsmConfig::default()
        });
        let tpk_clear = odd(16);
        let zpk_clear = odd(16);
        let tpk = form(&hsm, KeyType::Tpk, &tpk_clear, "", false);
        let zpk = form(&hsm, KeyType::Zpk, &zpk_clear, "", false);
        let block = des_ecb(&tpk_clear, &iso0_clear(PIN, PAN), true);
        let go = |to: PinBlockFormat| {
            translate(
                &hsm,
                PinKeySource::Key(id(&tpk)),
                id(&zpk),
                &block,
                PAN,
                PinBlockFormat::Iso0,
                to,
            )
        };
        // ISO 0 → ISO 0 always works: the network recovers the PIN.
        let same = go(PinBlockFormat::Iso0).unwrap();
        assert_eq!(
            des_ecb(&zpk_clear, &same.pin_block, false),
            iso0_clear(PIN, PAN)
        );
        assert_eq!(same.dest_kcv, zpk.kcv);
        let r = go(PinBlockFormat::Iso1);
        if !allow {
            let e = refused(
                r,
                Reason::FormatTranslationRefused,
                &["ISO 1", "PAN binding"],
                &[&tpk_clear, &zpk_clear],
            );
            assert!(!e.message.contains(PIN));
            continue;
        }
        let out = r.unwrap();
        let clear = hex::encode_upper(des_ecb(&zpk_clear, &out.pin_block, false));
        assert_eq!(&clear[..2], "16", "ISO 1 control nibble and PIN length");
        assert_eq!(&clear[2..8], PIN);
    }
}

#[test]
fn a_pin_block_that_does_not_decode_under_the_pik_is_refused_as_invalid() {
    let hsm = hsm();
    let tpk_clear = odd(16);
    let tpk = form(&hsm, KeyType::Tpk, &tpk_clear, "", false);
    let zpk = generate(&hsm, KeyType::Zpk, Algorithm::Tdes2, false);
    let pan_field = h("0000020011223344"); // 12 rightmost PAN digits before the check digit
    assert_eq!(
        xor(&iso0_clear(PIN, PAN), &pan_field),
        h("06975310FFFFFFFF"),
        "the test's ISO 0 builder"
    );
    for (what, pin_field) in [
        ("control field 9", "96975310FFFFFFFF"),
        ("PIN length 3", "03975FFFFFFFFFFF"),
        ("PIN length 13", "0D975310975310FF"),
        ("a non-decimal digit", "0697531AFFFFFFFF"),
        ("a wrong fill digit", "06975310FFFFFFFE"),
    ] {
        let block = des_ecb(&tpk_clear, &xor(&h(pin_field), &pan_field), true);
        let e = refused(
            translate(
                &hsm,
                PinKeySource::Key(id(&tpk)),
                id(&zpk),
                &block,
                PAN,
                PinBlockFormat::Iso0,
                PinBlockFormat::Iso0,
            ),
            Reason::InvalidPinBlock,
            &["PIN"],
            &[&tpk_clear],
        );
        assert!(!e.message.contains("97531"), "{what}: {}", e.message);
    }
    // A genuine ISO 0 block decoded with the wrong PAN: the fill no longer decodes.
    let block = des_ecb(&tpk_clear, &iso0_clear(PIN, PAN), true);
    refused(
        translate(
            &hsm,
            PinKeySource::Key(id(&tpk)),
            id(&zpk),
            &block,
            "6222029999999999995",
            PinBlockFormat::Iso0,
            PinBlockFormat::Iso0,
        ),
        Reason::InvalidPinBlock,
        &[],
        &[&tpk_clear],
    );
}

#[test]
fn a_pin_block_of_the_wrong_length_is_refused_without_panicking() {
    let hsm = hsm();
    let tpk = generate(&hsm, KeyType::Tpk, Algorithm::Tdes2, false);
    let zpk = generate(&hsm, KeyType::Zpk, Algorithm::Tdes2, false);
    // The core reports a wrong-length block as INVALID_ARGUMENT (a malformed request
    // field), not INVALID_PIN_BLOCK (a block that does not decode).
    for len in [0usize, 7, 9, 16] {
        refused(
            translate(
                &hsm,
                PinKeySource::Key(id(&tpk)),
                id(&zpk),
                &vec![0x5A; len],
                PAN,
                PinBlockFormat::Iso0,
                PinBlockFormat::Iso0,
            ),
            Reason::InvalidArgument,
            &["PIN block", &len.to_string()],
            &[],
        );
    }
}

#[test]
fn a_malformed_pan_is_refused() {
    let hsm = hsm();
    let tpk_clear = odd(16);
    let tpk = form(&hsm, KeyType::Tpk, &tpk_clear, "", false);
    let zpk = generate(&hsm, KeyType::Zpk, Algorithm::Tdes2, false);
    let block = des_ecb(&tpk_clear, &iso0_clear(PIN, PAN), true);
    for pan in [
        "",
        "62220202",
        "6222020200112233445678",
        "622202020011223344X",
        "6222 0202 0011 2233",
    ] {
        refused(
            translate(
                &hsm,
                PinKeySource::Key(id(&tpk)),
                id(&zpk),
                &block,
                pan,
                PinBlockFormat::Iso0,
                PinBlockFormat::Iso0,
            ),
            Reason::InvalidPan,
            &["PAN"],
            &[&tpk_clear],
        );
    }
}

#[test]
fn a_terminal_that_never_signed_in_has_no_working_keys() {
    let hsm = hsm();
    create_terminal(&hsm, "T0000001", None).unwrap();
    let zpk = generate(&hsm, KeyType::Zpk, Algorithm::Tdes2, false);
    refused(
        translate(
            &hsm,
            PinKeySource::Terminal("T0000001".into()),
            id(&zpk),
            &[0u8; 8],
            PAN,
            PinBlockFormat::Iso0,
            PinBlockFormat::Iso0,
        ),
        Reason::TerminalNotSignedIn,
        &["T0000001", "not signed in"],
        &[],
    );
    let term = MacKeySource::Terminal("T0000001".into());
    refused(
        mac(&hsm, term.clone(), MacAlgorithm::UnionpayEcb, b"0200", 0),
        Reason::TerminalNotSignedIn,
        &["T0000001", "not signed in"],
        &[],
    );
    refused(
        verify(
            &hsm,
            term.clone(),
            MacAlgorithm::UnionpayEcb,
            b"0200",
            b"00000000",
        ),
        Reason::TerminalNotSignedIn,
        &["T0000001"],
        &[],
    );
    // After a sign-in the same call works.
    sign_in(&hsm, "T0000001", None).unwrap();
    assert_eq!(
        mac(&hsm, term, MacAlgorithm::UnionpayEcb, b"0200", 0)
            .unwrap()
            .len(),
        8
    );
}

#[test]
fn an_unknown_terminal_is_refused() {
    let hsm = hsm();
    let zpk = generate(&hsm, KeyType::Zpk, Algorithm::Tdes2, false);
    refused(
        hsm.get_terminal("T9999999"),
        Reason::UnknownTerminal,
        &["T9999999"],
        &[],
    );
    refused(
        sign_in(&hsm, "T9999999", None),
        Reason::UnknownTerminal,
        &["T9999999"],
        &[],
    );
    refused(
        translate(
            &hsm,
            PinKeySource::Terminal("T9999999".into()),
            id(&zpk),
            &[0u8; 8],
            PAN,
            PinBlockFormat::Iso0,
            PinBlockFormat::Iso0,
        ),
        Reason::UnknownTerminal,
        &["T9999999"],
        &[],
    );
    refused(
        mac(
            &hsm,
            MacKeySource::Terminal("T9999999".into()),
            MacAlgorithm::UnionpayEcb,
            b"x",
            0,
        ),
        Reason::UnknownTerminal,
        &["T9999999"],
        &[],
    );
}

#[test]
fn a_terminal_whose_tmk_is_retired_cannot_sign_in() {
    let hsm = hsm();
    let tmk = generate(&hsm, KeyType::Tmk, Algorithm::Tdes2, false);
    create_terminal(&hsm, "T0000002", Some(id(&tmk))).unwrap();
    sign_in(&hsm, "T0000002", None).unwrap();
    hsm.retire_key("admin", &id(&tmk)).unwrap();
    refused(
        sign_in(&hsm, "T0000002", None),
        Reason::TerminalHasNoTmk,
        &["T0000002", &tmk.key_id],
        &[],
    );
    assert_eq!(hsm.get_terminal("T0000002").unwrap().key_version, 1);
}

// ---- MAC ------------------------------------------------------------------------------

#[test]
fn a_message_above_the_configured_limit_is_refused() {
    let hsm = hsm_with(HsmConfig {
        max_mac_message: 64,
        ..HsmConfig::default()
    });
    let zak = generate(&hsm, KeyType::Zak, Algorithm::Tdes2, false);
    let src = MacKeySource::Key(id(&zak));
    let at_limit = vec![0x30u8; 64];
    let m = mac(&hsm, src.clone(), MacAlgorithm::Iso9797Alg3, &at_limit, 0).unwrap();
    assert!(verify(&hsm, src.clone(), MacAlgorithm::Iso9797Alg3, &at_limit, &m).unwrap());
    let over = vec![0x30u8; 65];
    refused(
        mac(&hsm, src.clone(), MacAlgorithm::Iso9797Alg3, &over, 0),
        Reason::MessageTooLarge,
        &["65 bytes", "64 bytes"],
        &[],
    );
    refused(
        verify(&hsm, src, MacAlgorithm::Iso9797Alg3, &over, &m),
        Reason::MessageTooLarge,
        &["65 bytes"],
        &[],
    );
}

#[test]
fn mac_lengths_outside_four_bytes_to_the_full_mac_are_refused() {
    let hsm = hsm();
    let zak = generate(&hsm, KeyType::Zak, Algorithm::Tdes2, false);
    let aes = generate(&hsm, KeyType::Zak, Algorithm::Aes128, false);
    let src = MacKeySource::Key(id(&zak));
    let msg = b"0200 purchase";
    for (alg, key, full) in [
        (MacAlgorithm::Iso9797Alg3, &zak, 8usize),
        (MacAlgorithm::Iso9797Alg1, &zak, 8),
        (MacAlgorithm::Cmac, &aes, 16),
    ] {
        let s = MacKeySource::Key(id(key));
        for bad in [1usize, 3, full + 1, 64] {
            refused(
                mac(&hsm, s.clone(), alg, msg, bad),
                Reason::InvalidMacLength,
                &[&format!("mac_length {bad}")],
                &[],
            );
        }
        assert_eq!(mac(&hsm, s.clone(), alg, msg, 4).unwrap().len(), 4);
        assert_eq!(mac(&hsm, s.clone(), alg, msg, full).unwrap().len(), full);
    }
    let m = mac(&hsm, src.clone(), MacAlgorithm::Iso9797Alg3, msg, 0).unwrap();
    refused(
        verify(&hsm, src.clone(), MacAlgorithm::Iso9797Alg3, msg, &m[..3]),
        Reason::InvalidMacLength,
        &["3 bytes"],
        &[],
    );
    let mut long = m.clone();
    long.push(0);
    refused(
        verify(&hsm, src.clone(), MacAlgorithm::Iso9797Alg3, msg, &long),
        Reason::InvalidMacLength,
        &["9 bytes"],
        &[],
    );
    assert!(verify(&hsm, src, MacAlgorithm::Iso9797Alg3, msg, &m[..4]).unwrap());
}

#[test]
fn x919_with_the_single_des_mak_of_the_unionpay_003_layout_is_unsupported() {
    let hsm = hsm();
    create_terminal(&hsm, "T0000003", None).unwrap();
    let r = sign_in(&hsm, "T0000003", None).unwrap();
    assert_eq!(r.layout, Field62Layout::Unionpay003);
    let mak = hsm.get_key(&KeyRef::Id(r.mak.key_id.clone())).unwrap();
    assert_eq!(
        mak.algorithm, "DES",
        "the 003 layout's MAK is single length"
    );
    let term = MacKeySource::Terminal("T0000003".into());
    let msg = b"0200 purchase";
    refused(
        mac(&hsm, term.clone(), MacAlgorithm::Iso9797Alg3, msg, 0),
        Reason::UnsupportedAlgorithm,
        &["algorithm 3", "double- or triple-length"],
        &[],
    );
    refused(
        verify(&hsm, term.clone(), MacAlgorithm::Iso9797Alg3, msg, &[0; 8]),
        Reason::UnsupportedAlgorithm,
        &["algorithm 3"],
        &[],
    );
    // The same MAK by its LMK block, too.
    refused(
        mac(
            &hsm,
            MacKeySource::Key(KeyRef::Block(r.mak.key_block.clone())),
            MacAlgorithm::Iso9797Alg3,
            msg,
            0,
        ),
        Reason::UnsupportedAlgorithm,
        &["algorithm 3"],
        &[],
    );
    // What a single-DES MAK is for still works.
    let m = mac(&hsm, term.clone(), MacAlgorithm::UnionpayEcb, msg, 0).unwrap();
    assert!(verify(&hsm, term.clone(), MacAlgorithm::UnionpayEcb, msg, &m).unwrap());
    assert_eq!(
        mac(&hsm, term, MacAlgorithm::Iso9797Alg1, msg, 0)
            .unwrap()
            .len(),
        8
    );
}

#[test]
fn a_wrong_mac_verifies_false_rather_than_erroring() {
    let hsm = hsm();
    let zak = generate(&hsm, KeyType::Zak, Algorithm::Tdes2, false);
    let src = MacKeySource::Key(id(&zak));
    let msg = b"0200 purchase 000000012345";
    for alg in [
        MacAlgorithm::Iso9797Alg1,
        MacAlgorithm::Iso9797Alg3,
        MacAlgorithm::UnionpayEcb,
        MacAlgorithm::Cmac,
    ] {
        let good = mac(&hsm, src.clone(), alg, msg, 0).unwrap();
        assert_eq!(
            verify(&hsm, src.clone(), alg, msg, &good),
            Ok(true),
            "{alg:?}"
        );
        let mut bad = good.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0x01;
        assert_eq!(
            verify(&hsm, src.clone(), alg, msg, &bad),
            Ok(false),
            "{alg:?}"
        );
        let mut other = msg.to_vec();
        other[0] ^= 0x01;
        assert_eq!(
            verify(&hsm, src.clone(), alg, &other, &good),
            Ok(false),
            "{alg:?}"
        );
    }
}

// ---- key blocks -----------------------------------------------------------------------

fn replace_char(s: &str, at: usize, with: char) -> String {
    let mut b: Vec<char> = s.chars().collect();
    assert_ne!(b[at], with, "a real change");
    b[at] = with;
    b.into_iter().collect()
}

#[test]
fn an_lmk_key_block_tampered_in_its_header_is_refused() {
    let hsm = hsm();
    let zak = generate(&hsm, KeyType::Zak, Algorithm::Tdes2, false);
    let src = |b: &str| MacKeySource::Key(KeyRef::Block(b.to_string()));
    mac(
        &hsm,
        src(&zak.key_block),
        MacAlgorithm::Iso9797Alg3,
        b"x",
        0,
    )
    .unwrap();
    // Byte 11 is exportability: N → E would make the key exportable.
    assert_eq!(&zak.key_block[11..12], "N");
    let exportable = replace_char(&zak.key_block, 11, 'E');
    // Bytes 5–6 are the usage: M3 → P0 would make the MAC key a PIN key.
    assert_eq!(&zak.key_block[5..7], "M3");
    let as_pin = format!("{}P0{}", &zak.key_block[..5], &zak.key_block[7..]);
    for tampered in [exportable, as_pin] {
        refused(
            mac(&hsm, src(&tampered), MacAlgorithm::Iso9797Alg3, b"x", 0),
            Reason::InvalidKeyBlock,
            &["key block"],
            &[],
        );
        refused(
            hsm.get_key(&KeyRef::Block(tampered.clone())),
            Reason::InvalidKeyBlock,
            &[],
            &[],
        );
    }
    let kek = generate(&hsm, KeyType::Kek, Algorithm::Aes256, true);
    let exportable = replace_char(&zak.key_block, 11, 'E');
    refused(
        export(
            &hsm,
            KeyRef::Block(exportable),
            id(&kek),
            ExportFormat::Tr31,
        ),
        Reason::InvalidKeyBlock,
        &[],
        &[],
    );
}

#[test]
fn an_lmk_key_block_tampered_in_its_body_is_refused() {
    let hsm = hsm();
    let zak = generate(&hsm, KeyType::Zak, Algorithm::Tdes2, false);
    let block = &zak.key_block;
    let n = block.len();
    // One hex character inside the encrypted key data (before the 32-char MAC), one in the MAC.
    for at in [n - 40, n - 1] {
        let c = block.as_bytes()[at] as char;
        let with = if c == 'A' { 'B' } else { 'A' };
        let tampered = replace_char(block, at, with);
        refused(
            mac(
                &hsm,
                MacKeySource::Key(KeyRef::Block(tampered)),
                MacAlgorithm::Iso9797Alg3,
                b"x",
                0,
            ),
            Reason::InvalidKeyBlock,
            &["key block"],
            &[],
        );
    }
    // Truncated and non-hex bodies are refused the same way, without a panic.
    for tampered in [block[..n - 2].to_string(), replace_char(block, n - 40, 'x')] {
        refused(
            mac(
                &hsm,
                MacKeySource::Key(KeyRef::Block(tampered)),
                MacAlgorithm::Iso9797Alg3,
                b"x",
                0,
            ),
            Reason::InvalidKeyBlock,
            &[],
            &[],
        );
    }
}

#[test]
fn a_key_block_from_another_modules_lmk_is_refused_as_wrong_lmk() {
    let ours = hsm();
    let theirs = Hsm::new(
        Lmk::from_bytes(&OTHER_LMK),
        Store::temporary().unwrap(),
        HsmConfig::default(),
    );
    let zak = generate(&theirs, KeyType::Zak, Algorithm::Tdes2, false);
    mac(
        &theirs,
        MacKeySource::Key(KeyRef::Block(zak.key_block.clone())),
        MacAlgorithm::Iso9797Alg3,
        b"x",
        0,
    )
    .unwrap();
    let e = refused(
        mac(
            &ours,
            MacKeySource::Key(KeyRef::Block(zak.key_block.clone())),
            MacAlgorithm::Iso9797Alg3,
            b"x",
            0,
        ),
        Reason::WrongLmk,
        &["another LMK"],
        &[&LMK, &OTHER_LMK],
    );
    assert!(
        e.message.contains(&ours.status().lmk_kcv),
        "names our LMK by its KCV: {}",
        e.message
    );
    // Relabelling the block with our LMK's identity does not get it through its MAC.
    let relabelled = zak.key_block.replace(
        theirs.lmks().current.kp_block(),
        ours.lmks().current.kp_block(),
    );
    assert_ne!(relabelled, zak.key_block);
    refused(
        mac(
            &ours,
            MacKeySource::Key(KeyRef::Block(relabelled)),
            MacAlgorithm::Iso9797Alg3,
            b"x",
            0,
        ),
        Reason::InvalidKeyBlock,
        &[],
        &[&LMK, &OTHER_LMK],
    );
}

#[test]
fn a_retired_key_is_refused_by_id_and_by_key_block_and_its_alias_is_released() {
    let hsm = hsm();
    let zak = hsm
        .generate_key(
            "admin",
            GenerateKey {
                key_type: KeyType::Zak,
                algorithm: Algorithm::Tdes2,
                alias: "zak-cups".into(),
                exportable: true,
            },
        )
        .unwrap();
    let kek = generate(&hsm, KeyType::Kek, Algorithm::Tdes3, false);
    let refs = [
        KeyRef::Id(zak.key_id.clone()),
        KeyRef::Alias("zak-cups".into()),
        KeyRef::Block(zak.key_block.clone()),
    ];
    // Warm every cache path first: retirement must reach cached keys too.
    for r in &refs {
        mac(
            &hsm,
            MacKeySource::Key(r.clone()),
            MacAlgorithm::Iso9797Alg3,
            b"x",
            0,
        )
        .unwrap();
    }
    let retired = hsm
        .retire_key("admin", &KeyRef::Alias("zak-cups".into()))
        .unwrap();
    assert_eq!(retired.state, "RETIRED");
    for r in [&refs[0], &refs[2]] {
        refused(
            mac(
                &hsm,
                MacKeySource::Key(r.clone()),
                MacAlgorithm::Iso9797Alg3,
                b"x",
                0,
            ),
            Reason::KeyRetired,
            &[&zak.key_id, "retired"],
            &[],
        );
        refused(
            export(&hsm, r.clone(), id(&kek), ExportFormat::Tr31),
            Reason::KeyRetired,
            &[&zak.key_id],
            &[],
        );
    }
    // Retiring unbinds the alias (so it can name a successor), hence by alias the key is
    // not "retired" but unknown: the alias no longer names anything.
    refused(
        mac(
            &hsm,
            MacKeySource::Key(refs[1].clone()),
            MacAlgorithm::Iso9797Alg3,
            b"x",
            0,
        ),
        Reason::UnknownKey,
        &["zak-cups"],
        &[],
    );
    // The admin still sees the record, and the alias is free for a successor.
    assert_eq!(hsm.get_key(&refs[0]).unwrap().state, "RETIRED");
    let next = hsm
        .generate_key(
            "admin",
            GenerateKey {
                key_type: KeyType::Zak,
                algorithm: Algorithm::Tdes2,
                alias: "zak-cups".into(),
                exportable: false,
            },
        )
        .unwrap();
    assert_eq!(hsm.get_key(&refs[1]).unwrap().key_id, next.key_id);
}

// ---- duplicates and names -------------------------------------------------------------

#[test]
fn creating_a_terminal_twice_is_refused_and_leaves_nothing_behind() {
    let hsm = hsm();
    let first = create_terminal(&hsm, "T0000004", None).unwrap();
    let keys = key_count(&hsm);
    let events = audit_count(&hsm);
    refused(
        create_terminal(&hsm, "T0000004", None),
        Reason::TerminalExists,
        &["T0000004", "exists"],
        &[],
    );
    let tmk = generate(&hsm, KeyType::Tmk, Algorithm::Tdes2, false);
    let keys = keys + 1;
    let events = events + 1;
    refused(
        create_terminal(&hsm, "T0000004", Some(id(&tmk))),
        Reason::TerminalExists,
        &["T0000004"],
        &[],
    );
    assert_eq!(key_count(&hsm), keys, "no orphan TMK");
    assert_eq!(
        audit_count(&hsm),
        events,
        "no audit event for a refused creation"
    );
    assert_eq!(
        hsm.get_terminal("T0000004").unwrap(),
        first,
        "the first terminal is untouched"
    );
}

#[test]
fn a_reused_alias_is_refused_and_the_refused_key_is_not_stored() {
    let hsm = hsm();
    let first = hsm
        .generate_key(
            "admin",
            GenerateKey {
                key_type: KeyType::Zpk,
                algorithm: Algorithm::Tdes2,
                alias: "zpk-cups".into(),
                exportable: false,
            },
        )
        .unwrap();
    let keys = key_count(&hsm);
    let events = audit_count(&hsm);
    let refused_gen = hsm.generate_key(
        "admin",
        GenerateKey {
            key_type: KeyType::Zak,
            algorithm: Algorithm::Tdes2,
            alias: "zpk-cups".into(),
            exportable: false,
        },
    );
    refused(
        refused_gen,
        Reason::AliasExists,
        &["zpk-cups", "already in use"],
        &[],
    );
    let clear = odd(16);
    let parts = split3(&clear);
    refused(
        components(
            &hsm,
            KeyType::Zmk,
            Algorithm::Tdes2,
            &parts,
            &[],
            "zpk-cups",
        ),
        Reason::AliasExists,
        &["zpk-cups"],
        &[&clear, &parts[0], &parts[1], &parts[2]],
    );
    assert_eq!(key_count(&hsm), keys);
    assert_eq!(audit_count(&hsm), events);
    let (all, _) = hsm.list_keys(None, 1000, "").unwrap();
    assert!(
        all.iter().all(|k| k.kcv != des_kcv(&clear)),
        "the refused key is not stored"
    );
    assert_eq!(
        hsm.get_key(&KeyRef::Alias("zpk-cups".into()))
            .unwrap()
            .key_id,
        first.key_id
    );
    assert_eq!(hsm.verify_audit_log().unwrap(), events as u64);
}

#[test]
fn malformed_terminal_ids_are_refused() {
    let hsm = hsm();
    let long = "T".repeat(33);
    for bad in ["", "T 0001", "T0001\n", "T/../1", "终端1", long.as_str()] {
        refused(
            create_terminal(&hsm, bad, None),
            Reason::InvalidTerminalId,
            &["terminal id"],
            &[],
        );
        refused(
            hsm.get_terminal(bad),
            Reason::InvalidTerminalId,
            &["terminal id"],
            &[],
        );
        refused(
            sign_in(&hsm, bad, None),
            Reason::InvalidTerminalId,
            &[],
            &[],
        );
    }
    assert_eq!(
        key_count(&hsm),
        0,
        "no TMK generated for a refused terminal"
    );
    create_terminal(&hsm, &"T".repeat(32), None).unwrap();
}

#[test]
fn malformed_aliases_are_refused() {
    let hsm = hsm();
    let long = "a".repeat(65);
    for bad in ["zpk cups", "zpk/cups", "zpk\u{0}", "密钥", long.as_str()] {
        refused(
            hsm.generate_key(
                "admin",
                GenerateKey {
                    key_type: KeyType::Zpk,
                    algorithm: Algorithm::Tdes2,
                    alias: bad.into(),
                    exportable: false,
                },
            ),
            Reason::InvalidAlias,
            &["alias"],
            &[],
        );
        let parts = split3(&odd(16));
        refused(
            components(&hsm, KeyType::Zmk, Algorithm::Tdes2, &parts, &[], bad),
            Reason::InvalidAlias,
            &["alias"],
            &[&parts[0], &parts[1], &parts[2]],
        );
    }
    assert_eq!(key_count(&hsm), 0);
    hsm.generate_key(
        "admin",
        GenerateKey {
            key_type: KeyType::Zpk,
            algorithm: Algorithm::Tdes2,
            alias: "a".repeat(64),
            exportable: false,
        },
    )
    .unwrap();
}
