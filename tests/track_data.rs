//! Track data (磁道加密): TranslateData from a terminal's TDK to a ZEK in ECB and
//! CBC, checked by the network side in Python (pyca/cryptography); refusals; and
//! DecryptData only for the `data-decrypt` role, which no certificate has by default.

mod common;

use common::{hx, python, reason, unhex};
use poshsm::proto as pb;
use poshsm::testing::MockHsm;
use serde_json::json;
use tonic::Code;

fn alias(a: &str) -> Option<pb::KeyRef> {
    Some(pb::KeyRef {
        r#ref: Some(pb::key_ref::Ref::Alias(a.into())),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn track_data_translates_from_the_tdk_to_a_zek_and_decrypts_only_for_its_role() {
    let mut mock = MockHsm::start().await.unwrap();
    let mut posp = mock.posp.clone();
    let mut admin = mock.admin.clone();
    mock.sign_in_terminal().await.unwrap();
    let (parts, zek) = poshsm::pinpad::tdes_components();
    admin
        .import_key_components(pb::ImportKeyComponentsRequest {
            key_type: pb::KeyType::Zek as i32,
            algorithm: pb::KeyAlgorithm::Tdes2key as i32,
            components: parts,
            alias: "zek-cups".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    // Track 2 equivalent data, packed, zero-padded to whole blocks by the PIN pad.
    let track2 = b"6222020200112233445D30122011234567890".to_vec();
    let mut padded = track2.clone();
    padded.resize(track2.len().div_ceil(8) * 8, 0);
    let under_tdk = mock.terminal.encrypt_track(&track2).unwrap();
    let iv = b"\x01\x23\x45\x67\x89\xAB\xCD\xEF".to_vec();
    let translate =
        |dest: &str, mode: pb::DataMode, iv: Vec<u8>, data: Vec<u8>| pb::TranslateDataRequest {
            source: Some(pb::translate_data_request::Source::TerminalId(
                "MOCK0001".into(),
            )),
            source_cipher: None,
            dest_key: alias(dest),
            dest_cipher: Some(pb::DataCipher {
                mode: mode as i32,
                iv,
            }),
            data,
        };
    let cbc = posp
        .translate_data(translate(
            "zek-cups",
            pb::DataMode::Cbc,
            iv.clone(),
            under_tdk.clone(),
        ))
        .await
        .unwrap()
        .into_inner();
    let ecb = posp
        .translate_data(translate(
            "zek-cups",
            pb::DataMode::Ecb,
            vec![],
            under_tdk.clone(),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(cbc.data, ecb.data);
    let Some(net) = python(
        "terminal.py",
        &[
            json!({"op": "cbc", "key": hx(&zek), "iv": hx(&iv), "data": hx(&cbc.data), "encrypt": false}),
            json!({"op": "ecb", "key": hx(&zek), "data": hx(&ecb.data), "encrypt": false}),
        ],
    ) else {
        mock.stop().await;
        return;
    };
    assert_eq!(
        unhex(&net[0]["data"]),
        padded,
        "CBC under the ZEK decrypts to the track data"
    );
    assert_eq!(
        unhex(&net[1]["data"]),
        padded,
        "ECB under the ZEK decrypts to the track data"
    );

    // Refusals.
    let s = posp
        .translate_data(translate(
            "mock-zpk",
            pb::DataMode::Ecb,
            vec![],
            under_tdk.clone(),
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (s.code(), reason(&s).as_str()),
        (Code::FailedPrecondition, "KEY_USAGE_MISMATCH"),
        "a ZPK is no data key"
    );
    let s = posp
        .translate_data(translate(
            "zek-cups",
            pb::DataMode::Ecb,
            vec![],
            under_tdk[..5].to_vec(),
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (s.code(), reason(&s).as_str()),
        (Code::InvalidArgument, "INVALID_ARGUMENT"),
        "partial block"
    );
    let s = posp
        .translate_data(translate(
            "zek-cups",
            pb::DataMode::Cbc,
            vec![0; 5],
            under_tdk.clone(),
        ))
        .await
        .unwrap_err();
    assert_eq!(reason(&s), "INVALID_ARGUMENT", "IV of the wrong length");
    let mut from_pin_key = translate("zek-cups", pb::DataMode::Ecb, vec![], under_tdk.clone());
    from_pin_key.source = Some(pb::translate_data_request::Source::SourceKey(
        alias("mock-zpk").unwrap(),
    ));
    let s = posp.translate_data(from_pin_key).await.unwrap_err();
    assert_eq!(
        reason(&s),
        "KEY_USAGE_MISMATCH",
        "a PIN key cannot decrypt data"
    );

    // Decryption to clear: refused to posp and admin (no certificate has data-decrypt by default).
    let decrypt = pb::DecryptDataRequest {
        source: Some(pb::decrypt_data_request::Source::TerminalId(
            "MOCK0001".into(),
        )),
        cipher: None,
        data: under_tdk.clone(),
    };
    for ch in [
        mock.channel("posp").await.unwrap(),
        mock.channel("admin").await.unwrap(),
    ] {
        let s = pb::crypto_client::CryptoClient::new(ch)
            .decrypt_data(decrypt.clone())
            .await
            .unwrap_err();
        assert_eq!(
            (s.code(), reason(&s).as_str()),
            (Code::PermissionDenied, "PERMISSION_DENIED")
        );
    }
    // The core operation itself (what a data-decrypt client would get), audited.
    let clear = mock
        .hsm
        .decrypt_data(
            "data-decrypt",
            &poshsm::hsm::DataKeySource::Terminal("MOCK0001".into()),
            &poshsm::hsm::DataMode::Ecb,
            &under_tdk,
        )
        .unwrap();
    assert_eq!(clear.to_vec(), padded);
    assert!(mock
        .hsm
        .audit_log(0, 1000)
        .unwrap()
        .iter()
        .any(|e| e.operation == "DecryptData" && e.actor == "data-decrypt"));
    mock.stop().await;
}

#[test]
fn the_data_decrypt_role_is_granted_only_by_the_config() {
    let c = poshsm::cli::serve::parse_config("[access]\n\"track-auditor\" = \"data-decrypt\"\n")
        .unwrap();
    assert!(c.access.is_some());
    assert!(poshsm::cli::serve::parse_config("[access]\nx = \"data-decryptor\"\n").is_err());
}
