//! 国密: an SM4 terminal's whole business day over the real gRPC path (MockHsm,
//! mutual TLS), every value checked against OpenSSL's SM4 through pyca/cryptography
//! (tests/crosscheck/terminal.py), with random cases for PINs, PANs and messages.

mod common;

use common::{hx, python, unhex};
use poshsm::proto::{self as pb};
use poshsm::testing::MockHsm;
use serde_json::json;
use tonic_types::StatusExt;

fn random(n: usize) -> Vec<u8> {
    use std::io::Read;
    let mut v = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut v)
        .unwrap();
    v
}

fn odd_parity(mut v: Vec<u8>) -> Vec<u8> {
    for b in &mut v {
        if b.count_ones() % 2 == 0 {
            *b ^= 1;
        }
    }
    v
}

fn by_alias(a: &str) -> Option<pb::KeyRef> {
    Some(pb::KeyRef {
        r#ref: Some(pb::key_ref::Ref::Alias(a.into())),
    })
}

/// Forms a key from components whose clear XOR the test knows.
async fn form(
    mock: &MockHsm,
    t: pb::KeyType,
    alg: pb::KeyAlgorithm,
    alias: &str,
    exportable: bool,
) -> Vec<u8> {
    let n = if alg == pb::KeyAlgorithm::Sm4 { 2 } else { 3 };
    let parts: Vec<Vec<u8>> = (0..n)
        .map(|_| {
            if alg == pb::KeyAlgorithm::Sm4 {
                random(16)
            } else {
                odd_parity(random(16))
            }
        })
        .collect();
    let clear: Vec<u8> = (0..16)
        .map(|i| parts.iter().fold(0u8, |a, p| a ^ p[i]))
        .collect();
    let mut admin = mock.admin.clone();
    admin
        .import_key_components(pb::ImportKeyComponentsRequest {
            key_type: t as i32,
            algorithm: alg as i32,
            components: parts,
            alias: alias.into(),
            exportable,
            ..Default::default()
        })
        .await
        .unwrap();
    clear
}

fn digits(n: usize) -> String {
    random(n)
        .iter()
        .map(|b| char::from(b'0' + b % 10))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sm4_terminal_business_day_matches_openssl_sm4() {
    if common::python(
        "terminal.py",
        &[json!({"op": "kcv", "key": "00".repeat(16), "alg": "SM4"})],
    )
    .is_none()
    {
        return;
    }
    let mock = MockHsm::start().await.unwrap();
    let mut admin = mock.admin.clone();
    let mut posp = mock.posp.clone();
    let sm4 = pb::KeyAlgorithm::Sm4;

    let tmk = form(&mock, pb::KeyType::Tmk, sm4, "sm4-tmk", false).await;
    let zpk = form(&mock, pb::KeyType::Zpk, sm4, "sm4-zpk", true).await;
    let zak = form(&mock, pb::KeyType::Zak, sm4, "sm4-zak", false).await;
    let zmk = form(&mock, pb::KeyType::Zmk, sm4, "sm4-zmk", false).await;
    let tdes_zpk = form(
        &mock,
        pb::KeyType::Zpk,
        pb::KeyAlgorithm::Tdes2key,
        "tdes-zpk",
        false,
    )
    .await;

    // The KCV of an SM4 key is SM4 over 16 zero bytes, first 3 bytes.
    let info = admin
        .get_key(by_alias("sm4-zpk").unwrap())
        .await
        .unwrap()
        .into_inner();
    let k = python(
        "terminal.py",
        &[json!({"op": "kcv", "key": hx(&zpk), "alg": "SM4"})],
    )
    .unwrap();
    assert_eq!(info.kcv, k[0]["kcv"].as_str().unwrap()[..6]);
    assert_eq!(info.algorithm, sm4 as i32);

    admin
        .create_terminal(pb::CreateTerminalRequest {
            terminal_id: "SM4T0001".into(),
            tmk: by_alias("sm4-tmk"),
            ..Default::default()
        })
        .await
        .unwrap();

    // Sign-in with 8-byte check values: PIK‖CV‖MAK‖CV‖TDK‖CV, each key SM4-ECB under the TMK.
    let s = posp
        .sign_in(pb::SignInRequest {
            terminal_id: "SM4T0001".into(),
            include_tdk: true,
            check_value_length: 8,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.layout, pb::Field62Layout::Block16 as i32);
    assert_eq!(s.field62.len(), 3 * (16 + 8));
    let keys = python(
        "terminal.py",
        &[json!({"op": "field62", "tmk": hx(&tmk), "field62": hx(&s.field62), "layout": "BLOCK16", "cv_len": 8, "alg": "SM4", "tdk": true})],
    )
    .unwrap();
    assert_eq!(keys[0]["cv_ok"], true, "{}", keys[0]);
    let pik = keys[0]["pik"].as_str().unwrap().to_string();
    let mak = keys[0]["mak"].as_str().unwrap().to_string();

    // Random purchases: MAC in, PIN translated (to SM4 ISO 0, SM4 ISO 4, TDES ISO 0), MAC out.
    for round in 0..12 {
        let pan = digits(16 + round % 4);
        let pin = digits(4 + round % 9);
        let msg = random(1 + (round * 37) % 300);
        let t = python(
            "terminal.py",
            &[
                json!({"op": "unionpay_ecb", "key": mak, "data": hx(&msg), "alg": "SM4"}),
                json!({"op": "encipher_iso0", "key": pik, "pin": pin, "pan": pan, "alg": "SM4"}),
                json!({"op": "cmac", "key": hx(&zak), "data": hx(&msg), "alg": "SM4"}),
                json!({"op": "cbc_mac", "key": hx(&zak), "data": hx(&msg), "alg": "SM4"}),
            ],
        )
        .unwrap();
        let v = posp
            .verify_mac(pb::VerifyMacRequest {
                key_source: Some(pb::verify_mac_request::KeySource::TerminalId(
                    "SM4T0001".into(),
                )),
                algorithm: pb::MacAlgorithm::UnionpayEcb as i32,
                message: msg.clone(),
                mac: unhex(&t[0]["mac"]),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(v.valid, "round {round}: the SM4 POS MAC must verify");
        assert_eq!(
            unhex(&t[0]["mac"]).len(),
            16,
            "SM4 ECB MAC: 8 bytes as 16 hex chars"
        );

        let block = unhex(&t[1]["block"]);
        assert_eq!(block.len(), 16);
        let mut outs = Vec::new();
        for (dest, fmt) in [
            ("sm4-zpk", pb::PinBlockFormat::Iso0),
            ("sm4-zpk", pb::PinBlockFormat::Iso4),
            ("tdes-zpk", pb::PinBlockFormat::Iso0),
        ] {
            let r = posp
                .translate_pin(pb::TranslatePinRequest {
                    source: Some(pb::translate_pin_request::Source::TerminalId(
                        "SM4T0001".into(),
                    )),
                    dest_key: by_alias(dest),
                    pin_block: block.clone(),
                    pan: pan.clone(),
                    source_format: pb::PinBlockFormat::Iso0 as i32,
                    dest_format: fmt as i32,
                })
                .await
                .unwrap()
                .into_inner();
            outs.push(r.pin_block);
        }
        let back = python(
            "terminal.py",
            &[
                json!({"op": "decipher_iso0", "key": hx(&zpk), "block": hx(&outs[0]), "pan": pan, "alg": "SM4"}),
                json!({"op": "decipher_iso4", "key": hx(&zpk), "block": hx(&outs[1]), "pan": pan, "alg": "SM4"}),
                json!({"op": "decipher_iso0", "key": hx(&tdes_zpk), "block": hx(&outs[2]), "pan": pan}),
            ],
        )
        .unwrap();
        for (i, b) in back.iter().enumerate() {
            assert_eq!(b["pin"], pin.as_str(), "round {round} translation {i}: {b}");
        }

        for (alg, idx, len) in [
            (pb::MacAlgorithm::Cmac, 2, 0u32),
            (pb::MacAlgorithm::Iso9797Alg1, 3, 0),
            (pb::MacAlgorithm::Cmac, 2, 8),
        ] {
            let m = posp
                .generate_mac(pb::GenerateMacRequest {
                    key_source: Some(pb::generate_mac_request::KeySource::Key(
                        by_alias("sm4-zak").unwrap(),
                    )),
                    algorithm: alg as i32,
                    message: msg.clone(),
                    mac_length: len,
                })
                .await
                .unwrap()
                .into_inner();
            let want = unhex(&t[idx]["mac"]);
            let n = if len == 0 { 16 } else { len as usize };
            assert_eq!(m.mac, want[..n], "round {round}: {alg:?} length {len}");
        }
    }

    // Export: SM4 keys never as TR-31; X9.17-style ECB under an SM4 ZMK decrypts to the key.
    let e = admin
        .export_key(pb::ExportKeyRequest {
            key: by_alias("sm4-zpk"),
            wrapping_key: by_alias("sm4-zmk"),
            format: "TR31".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.get_error_details().error_info().unwrap().reason,
        "UNSUPPORTED_ALGORITHM"
    );
    let x = admin
        .export_key(pb::ExportKeyRequest {
            key: by_alias("sm4-zpk"),
            wrapping_key: by_alias("sm4-zmk"),
            format: "X917_ECB".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let d = python("terminal.py", &[json!({"op": "ecb", "key": hx(&zmk), "data": hx(&x.x917_ecb), "encrypt": false, "alg": "SM4"})]).unwrap();
    assert_eq!(
        unhex(&d[0]["data"]),
        zpk,
        "the exported SM4 key decrypts under the ZMK"
    );
    // And imports back under the same ZMK with its KCV.
    let back = admin
        .import_key(pb::ImportKeyRequest {
            key_type: pb::KeyType::Zpk as i32,
            algorithm: sm4 as i32,
            wrapping_key: by_alias("sm4-zmk"),
            wrapped: Some(pb::import_key_request::Wrapped::X917Ecb(x.x917_ecb)),
            expected_kcv: info.kcv.clone(),
            alias: "sm4-zpk-again".into(),
            exportable: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(back.kcv, info.kcv);
    mock.stop().await;
}

/// VECTORS.md §1 V3 and §3 (blog.csdn.net/M_Kerry/article/details/104625499):
/// the published SM4 TMK, the PIK ciphertext under it with its published KCV, and
/// the published SM4 PIN block of PIN 123654, driven through the gRPC path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_published_sm4_sign_in_and_pin_block_vectors_go_through_the_daemon() {
    let mock = MockHsm::start().await.unwrap();
    let mut admin = mock.admin.clone();
    let mut posp = mock.posp.clone();
    let tmk = hex::decode("1234567890ABCDEFABCDEF0987654321").unwrap();
    let c1 = random(16);
    let c2: Vec<u8> = c1.iter().zip(&tmk).map(|(a, b)| a ^ b).collect();
    admin
        .import_key_components(pb::ImportKeyComponentsRequest {
            key_type: pb::KeyType::Tmk as i32,
            algorithm: pb::KeyAlgorithm::Sm4 as i32,
            components: vec![c1, c2],
            alias: "v3-tmk".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let pik = admin
        .import_key(pb::ImportKeyRequest {
            key_type: pb::KeyType::Tpk as i32,
            algorithm: pb::KeyAlgorithm::Sm4 as i32,
            wrapping_key: by_alias("v3-tmk"),
            wrapped: Some(pb::import_key_request::Wrapped::X917Ecb(
                hex::decode("3D66234C49E4296FF9C78D8BACBD6A76").unwrap(),
            )),
            expected_kcv: "861E83E31FAEBF10".into(),
            alias: "v3-pik".into(),
            exportable: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pik.kcv, "861E83");
    // A wrong published KCV digit is refused.
    let e = admin
        .import_key(pb::ImportKeyRequest {
            key_type: pb::KeyType::Tpk as i32,
            algorithm: pb::KeyAlgorithm::Sm4 as i32,
            wrapping_key: by_alias("v3-tmk"),
            wrapped: Some(pb::import_key_request::Wrapped::X917Ecb(
                hex::decode("3D66234C49E4296FF9C78D8BACBD6A76").unwrap(),
            )),
            expected_kcv: "861E83E31FAEBF11".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.get_error_details().error_info().unwrap().reason,
        "KCV_MISMATCH"
    );

    // §3: PIN 123654, PAN 6230606601007726888 → SM4(PIK, ISO0‖00×8) = E639B734…
    let tdes_zpk = form(
        &mock,
        pb::KeyType::Zpk,
        pb::KeyAlgorithm::Tdes2key,
        "v3-zpk",
        false,
    )
    .await;
    let out = posp
        .translate_pin(pb::TranslatePinRequest {
            source: Some(pb::translate_pin_request::Source::SourceKey(
                by_alias("v3-pik").unwrap(),
            )),
            dest_key: by_alias("v3-zpk"),
            pin_block: hex::decode("E639B7346D93D4ECE1E991CDCC84936E").unwrap(),
            pan: "6230606601007726888".into(),
            source_format: pb::PinBlockFormat::Iso0 as i32,
            dest_format: pb::PinBlockFormat::Iso0 as i32,
        })
        .await
        .unwrap()
        .into_inner();
    if let Some(d) = python(
        "terminal.py",
        &[
            json!({"op": "decipher_iso0", "key": hx(&tdes_zpk), "block": hx(&out.pin_block), "pan": "6230606601007726888"}),
        ],
    ) {
        assert_eq!(d[0]["pin"], "123654");
    }
    mock.stop().await;
}
