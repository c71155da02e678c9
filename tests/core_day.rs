//! The full POS business day of DESIGN.md §1 against the in-process core, with
//! the terminal and the network side computed independently in Python (psec and
//! pyca/cryptography, tests/crosscheck/terminal.py), and the store reopened.

mod common;

use common::{hx, python, unhex};
use poshsm::crypto::pinblock::PinBlockFormat;
use poshsm::crypto::Algorithm;
use poshsm::hsm::*;
use poshsm::keys::{KeyType, Lmk};
use poshsm::store::Store;
use serde_json::json;
use zeroize::Zeroizing;

const LMK: [u8; 32] = [0x5A; 32];

/// Random bytes with odd parity in every byte (the test's own, not poshsm's).
fn odd_parity_random(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    getrandom(&mut v);
    for b in &mut v {
        if b.count_ones() % 2 == 0 {
            *b ^= 1;
        }
    }
    v
}

fn getrandom(buf: &mut [u8]) {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(buf)
        .unwrap();
}

fn xor3(a: &[u8], b: &[u8], c: &[u8]) -> Vec<u8> {
    a.iter()
        .zip(b)
        .zip(c)
        .map(|((x, y), z)| x ^ y ^ z)
        .collect()
}

/// Forms a key from three known odd-parity components (their XOR keeps odd parity).
fn from_components(hsm: &Hsm, t: KeyType, alias: &str) -> (KeyInfo, Vec<u8>) {
    let c: Vec<Vec<u8>> = (0..3).map(|_| odd_parity_random(16)).collect();
    let clear = xor3(&c[0], &c[1], &c[2]);
    let info = hsm
        .import_key_components(
            "custodians",
            ImportComponents {
                key_type: t,
                algorithm: Algorithm::Tdes2,
                components: c.into_iter().map(Zeroizing::new).collect(),
                component_kcvs: vec![],
                alias: alias.into(),
                exportable: false,
            },
        )
        .unwrap();
    (info, clear)
}

fn open(dir: &std::path::Path) -> Hsm {
    let hsm = Hsm::new(
        Lmk::from_bytes(&LMK),
        Store::open(dir).unwrap(),
        HsmConfig::default(),
    );
    assert_eq!(hsm.status().state, "OK", "{:?}", hsm.status());
    hsm
}

#[test]
fn a_terminal_business_day_checked_by_an_independent_terminal_and_network() {
    let dir = tempfile::tempdir().unwrap();
    let hsm = open(dir.path());

    // 1. The ZMK from custodians' components; ZPK and ZAK delivered under it (X9.17 ECB).
    let (_zmk, zmk_clear) = from_components(&hsm, KeyType::Zmk, "zmk-cups");
    let zpk_clear = odd_parity_random(16);
    let zak_clear = odd_parity_random(16);
    let Some(net) = python(
        "terminal.py",
        &[
            json!({"op": "ecb", "key": hx(&zmk_clear), "data": hx(&zpk_clear)}),
            json!({"op": "kcv", "key": hx(&zpk_clear)}),
            json!({"op": "ecb", "key": hx(&zmk_clear), "data": hx(&zak_clear)}),
            json!({"op": "kcv", "key": hx(&zak_clear)}),
        ],
    ) else {
        return;
    };
    let import = |t: KeyType, ct: Vec<u8>, kcv: &str, alias: &str| {
        hsm.import_key(
            "admin",
            ImportKey {
                key_type: t,
                algorithm: Some(Algorithm::Tdes2),
                wrapping_key: KeyRef::Alias("zmk-cups".into()),
                wrapped: Wrapped::X917Ecb(ct),
                expected_kcv: kcv[..6].to_string(),
                alias: alias.into(),
                exportable: false,
            },
        )
        .unwrap()
    };
    let zpk = import(
        KeyType::Zpk,
        unhex(&net[0]["data"]),
        net[1]["kcv"].as_str().unwrap(),
        "zpk-cups",
    );
    let zak = import(
        KeyType::Zak,
        unhex(&net[2]["data"]),
        net[3]["kcv"].as_str().unwrap(),
        "zak-cups",
    );
    assert_eq!(zpk.kcv, net[1]["kcv"].as_str().unwrap()[..6]);

    // 2. Terminal T with a TMK formed from components (known to the PIN pad).
    let (tmk, tmk_clear) = from_components(&hsm, KeyType::Tmk, "tmk-T0000001");
    hsm.create_terminal(
        "admin",
        CreateTerminal {
            terminal_id: "T0000001".into(),
            merchant_id: "898110000000001".into(),
            tmk: Some(KeyRef::Id(tmk.key_id.clone())),
            tmk_algorithm: None,
        },
    )
    .unwrap();

    // 3. Sign-in: field 62 in the UNIONPAY_004 layout.
    let sign_in = |hsm: &Hsm| {
        hsm.sign_in(
            "posp",
            SignIn {
                source: SignInSource::Terminal("T0000001".into()),
                algorithm: None,
                include_tdk: true,
                layout: None,
                check_value_length: 0,
            },
        )
        .unwrap()
    };
    let day1 = sign_in(&hsm);
    assert_eq!(day1.layout, Field62Layout::Unionpay004);
    assert_eq!(day1.field62.len(), 60);
    assert_eq!(day1.key_version, 1);
    let keys = python(
        "terminal.py",
        &[json!({"op": "field62", "tmk": hx(&tmk_clear), "field62": hx(&day1.field62), "layout": "UNIONPAY_004"})],
    )
    .unwrap();
    assert_eq!(
        keys[0]["cv_ok"], true,
        "terminal rejects field 62: {}",
        keys[0]
    );
    let pik = keys[0]["pik"].as_str().unwrap().to_string();
    let mak = keys[0]["mak"].as_str().unwrap().to_string();
    assert_eq!(pik.len(), 32);
    assert_eq!(mak.len(), 16, "UNIONPAY_004 carries a single-length MAK");

    // 4. A purchase: request MAC, PIN translation, network MAC, response MAC.
    let request = b"0200 purchase 6222020200112233445 000000012345 T0000001".to_vec();
    let response = b"0210 approved 00 T0000001".to_vec();
    let network = b"0200 CUPS 6222020200112233445 000000012345".to_vec();
    let pan = "6222020200112233445";
    let t = python(
        "terminal.py",
        &[
            json!({"op": "unionpay_ecb", "key": mak, "data": hx(&request)}),
            json!({"op": "encipher_iso0", "key": pik, "pin": "246810", "pan": pan}),
            json!({"op": "x919", "key": hx(&zak_clear), "data": hx(&network)}),
            json!({"op": "unionpay_ecb", "key": mak, "data": hx(&response)}),
        ],
    )
    .unwrap();
    let term = MacKeySource::Terminal("T0000001".into());
    let req_mac = unhex(&t[0]["mac"]);
    let verify = |hsm: &Hsm, msg: &[u8], mac: &[u8]| {
        hsm.verify_mac(
            &MacRequest {
                source: term.clone(),
                algorithm: MacAlgorithm::UnionpayEcb,
                message: msg,
                mac_length: 0,
            },
            mac,
        )
        .unwrap()
    };
    assert!(verify(&hsm, &request, &req_mac));
    let mut tampered = request.clone();
    tampered[5] ^= 1;
    assert!(
        !verify(&hsm, &tampered, &req_mac),
        "a tampered request must not verify"
    );

    let translated = hsm
        .translate_pin(&TranslatePin {
            source: PinKeySource::Terminal("T0000001".into()),
            dest: KeyRef::Alias("zpk-cups".into()),
            pin_block: unhex(&t[1]["block"]),
            pan: pan.into(),
            source_format: PinBlockFormat::Iso0,
            dest_format: PinBlockFormat::Iso0,
        })
        .unwrap();
    assert_eq!(translated.dest_kcv, zpk.kcv);
    let net_mac = hsm
        .generate_mac(&MacRequest {
            source: MacKeySource::Key(KeyRef::Id(zak.key_id.clone())),
            algorithm: MacAlgorithm::Iso9797Alg3,
            message: &network,
            mac_length: 0,
        })
        .unwrap();
    let resp_mac = hsm
        .generate_mac(&MacRequest {
            source: term.clone(),
            algorithm: MacAlgorithm::UnionpayEcb,
            message: &response,
            mac_length: 0,
        })
        .unwrap();
    let n = python(
        "terminal.py",
        &[json!({"op": "decipher_iso0", "key": hx(&zpk_clear), "block": hx(&translated.pin_block), "pan": pan})],
    )
    .unwrap();
    assert_eq!(
        n[0]["pin"], "246810",
        "the network recovers the cardholder's PIN under the ZPK"
    );
    assert_eq!(
        hx(&net_mac),
        t[2]["mac"].as_str().unwrap(),
        "network MAC (X9.19 under the ZAK)"
    );
    assert_eq!(
        hx(&resp_mac),
        t[3]["mac"].as_str().unwrap(),
        "response MAC the terminal checks"
    );

    // 5. Next morning: keys rotate; yesterday's MAK verifies during the grace window.
    let day2 = sign_in(&hsm);
    assert_eq!(day2.key_version, 2);
    assert_ne!(day2.pik.kcv, day1.pik.kcv);
    assert!(
        verify(&hsm, &request, &req_mac),
        "previous MAK inside the grace window"
    );
    let keys2 = python(
        "terminal.py",
        &[json!({"op": "field62", "tmk": hx(&tmk_clear), "field62": hx(&day2.field62), "layout": "UNIONPAY_004"})],
    )
    .unwrap();
    assert_eq!(keys2[0]["cv_ok"], true);
    assert_ne!(keys2[0]["pik"], keys[0]["pik"]);

    // The audit chain holds every control-plane step and both sign-ins, and verifies.
    let events = hsm.audit_log(0, 1000).unwrap();
    let ops: Vec<&str> = events.iter().map(|e| e.operation.as_str()).collect();
    assert_eq!(ops.iter().filter(|o| **o == "SignIn").count(), 2, "{ops:?}");
    assert!(
        ops.contains(&"ImportKeyComponents")
            && ops.contains(&"ImportKey")
            && ops.contains(&"CreateTerminal")
    );
    assert_eq!(hsm.verify_audit_log().unwrap(), events.len() as u64);

    // Reopen: terminals, keys and the chain survive; the day goes on.
    let day2_pik = keys2[0]["pik"].as_str().unwrap().to_string();
    drop(hsm);
    let hsm = open(dir.path());
    assert_eq!(hsm.get_terminal("T0000001").unwrap().key_version, 2);
    let again = python(
        "terminal.py",
        &[json!({"op": "encipher_iso0", "key": day2_pik, "pin": "1357", "pan": pan})],
    )
    .unwrap();
    let out = hsm
        .translate_pin(&TranslatePin {
            source: PinKeySource::Terminal("T0000001".into()),
            dest: KeyRef::Alias("zpk-cups".into()),
            pin_block: unhex(&again[0]["block"]),
            pan: pan.into(),
            source_format: PinBlockFormat::Iso0,
            dest_format: PinBlockFormat::Iso3,
        })
        .unwrap();
    assert_eq!(out.pin_block.len(), 8);
    assert_eq!(hsm.verify_audit_log().unwrap(), events.len() as u64);
}
