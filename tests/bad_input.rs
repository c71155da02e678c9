//! Hostile and broken input on every RPC of `Crypto` and `KeyAdmin`, over real
//! mutual TLS: empty, oversized, malformed and wrong-typed requests (unknown enum
//! numbers, missing oneofs, empty key references, bodies that are not protobuf,
//! wrong wire types, invalid UTF-8, 10 MB messages, 9,999- and 20,000-character
//! key blocks, over-long batches, PIN blocks of every wrong length, PANs with
//! letters, extreme page sizes, garbage page tokens). Each gets its documented
//! gRPC code and `ErrorInfo` reason (or, for bodies that do not decode or exceed
//! the transport limit, tonic's own clear status) — never a panic, a hang or
//! memory exhaustion — and afterwards the daemon still serves.

mod common;

use common::reason;

use poshsm::proto as pb;
use poshsm::testing::MockHsm;
use prost::Message;
use tonic::transport::Channel;
use tonic::{Code, Status};

const PAN: &str = "6228480402564890018";
const TID: &str = "MOCK0001";
/// Largest batch the server accepts (`server::services::MAX_BATCH`).
const MAX_BATCH: usize = 10_000;

/// Asserts a documented refusal: gRPC code and `ErrorInfo` reason.
#[track_caller]
fn expect<T: std::fmt::Debug>(r: Result<tonic::Response<T>, Status>, code: Code, why: &str) {
    match r {
        Ok(ok) => panic!("expected {code:?}/{why}, got {ok:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "expected {why}: {s:?}");
            assert_eq!(reason(&s), why, "{s:?}");
            assert!(!s.message().is_empty());
            assert!(
                s.message().len() < 4096,
                "an error message stays short ({} bytes)",
                s.message().len()
            );
        }
    }
}

/// Asserts a transport-level refusal (a body that does not decode, a message
/// above the gRPC size limit): tonic's own status, never Unknown (a panic or a
/// torn connection) and never a success.
#[track_caller]
fn expect_transport<T: std::fmt::Debug>(
    r: Result<tonic::Response<T>, Status>,
    code: Code,
    says: &str,
) {
    match r {
        Ok(ok) => panic!("expected {code:?}, got {ok:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "{s:?}");
            assert!(
                s.message().contains(says),
                "the message says {says:?}: {s:?}"
            );
        }
    }
}

fn kid(id: &str) -> Option<pb::KeyRef> {
    Some(pb::KeyRef {
        r#ref: Some(pb::key_ref::Ref::KeyId(id.into())),
    })
}

fn alias(a: &str) -> Option<pb::KeyRef> {
    Some(pb::KeyRef {
        r#ref: Some(pb::key_ref::Ref::Alias(a.into())),
    })
}

fn block(b: &str) -> Option<pb::KeyRef> {
    Some(pb::KeyRef {
        r#ref: Some(pb::key_ref::Ref::KeyBlock(b.into())),
    })
}

/// Every empty or absent form of a key reference.
fn empty_refs() -> Vec<Option<pb::KeyRef>> {
    vec![
        None,
        Some(pb::KeyRef { r#ref: None }),
        kid(""),
        alias(""),
        block(""),
    ]
}

/// A header that looks like an LMK block (version D, 9,999 or 20,000 characters
/// long), followed by hex: the size caps and the parser must refuse it cleanly.
fn long_block(len: usize) -> String {
    let head = format!("D{:04}M3TC00N0000", len.min(9999));
    let mut s = head;
    while s.len() < len {
        s.push_str("0123456789ABCDEF");
    }
    s.truncate(len);
    s
}

fn tmac(t: &str) -> Option<pb::generate_mac_request::KeySource> {
    Some(pb::generate_mac_request::KeySource::TerminalId(t.into()))
}

fn vmac(t: &str) -> Option<pb::verify_mac_request::KeySource> {
    Some(pb::verify_mac_request::KeySource::TerminalId(t.into()))
}

fn tpin(t: &str) -> Option<pb::translate_pin_request::Source> {
    Some(pb::translate_pin_request::Source::TerminalId(t.into()))
}

/// A well-formed translation request from the mock terminal to the mock ZPK.
fn translate(mock: &MockHsm, pin: &str) -> pb::TranslatePinRequest {
    pb::TranslatePinRequest {
        source: tpin(TID),
        dest_key: alias(&mock.network.zpk_alias),
        pin_block: mock.terminal.pin_block(pin, PAN).unwrap(),
        pan: PAN.into(),
        source_format: 0,
        dest_format: 0,
    }
}

/// A mock whose security trigger does not get in the way: this file floods one
/// terminal with broken translations on purpose (tests/guard.rs tests the trigger).
async fn start() -> MockHsm {
    let lenient = poshsm::hsm::guard::Limit {
        per_sec: 10_000.0,
        burst: 100_000.0,
    };
    MockHsm::start_with(poshsm::hsm::HsmConfig {
        pin_guard: lenient,
        mac_failure_guard: lenient,
        ..Default::default()
    })
    .await
    .unwrap()
}

async fn signed_in(mock: &mut MockHsm) {
    let r = mock
        .posp
        .clone()
        .sign_in(mock.terminal.sign_in_request())
        .await
        .unwrap()
        .into_inner();
    mock.terminal.load_field62(&r.field62, r.layout).unwrap();
}

/// After everything: a fresh sign-in and translation work, status and health are OK.
async fn still_serving(mock: &mut MockHsm) {
    signed_in(mock).await;
    let out = mock
        .posp
        .clone()
        .translate_pin(translate(mock, "24680135"))
        .await
        .expect("translation after the abuse")
        .into_inner();
    assert_eq!(mock.network.pin(&out.pin_block, PAN).unwrap(), "24680135");
    let st = mock
        .admin
        .clone()
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.state, "OK", "{st:?}");
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(mock.channel("posp").await.unwrap());
    let h = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        h.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

// ---- a codec for bodies that are not what the schema says ------------------------------

mod raw {
    use prost::bytes::{Buf, BufMut};
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
    use tonic::Status;

    /// Sends and receives the message body bytes as they are.
    #[derive(Clone, Copy, Default)]
    pub struct Codec_;
    pub struct Enc;
    pub struct Dec;

    impl Encoder for Enc {
        type Item = Vec<u8>;
        type Error = Status;
        fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
            dst.put_slice(&item);
            Ok(())
        }
    }

    impl Decoder for Dec {
        type Item = Vec<u8>;
        type Error = Status;
        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
            let mut v = vec![0u8; src.remaining()];
            src.copy_to_slice(&mut v);
            Ok(Some(v))
        }
    }

    impl Codec for Codec_ {
        type Encode = Vec<u8>;
        type Decode = Vec<u8>;
        type Encoder = Enc;
        type Decoder = Dec;
        fn encoder(&mut self) -> Enc {
            Enc
        }
        fn decoder(&mut self) -> Dec {
            Dec
        }
    }
}

async fn raw_call(
    ch: Channel,
    path: &'static str,
    body: Vec<u8>,
) -> Result<tonic::Response<Vec<u8>>, Status> {
    let mut g = tonic::client::Grpc::new(ch);
    g.ready()
        .await
        .map_err(|e| Status::unknown(format!("not ready: {e}")))?;
    g.unary(
        tonic::Request::new(body),
        tonic::codegen::http::uri::PathAndQuery::from_static(path),
        raw::Codec_,
    )
    .await
}

const CRYPTO_RPCS: [&str; 6] = [
    "/poshsm.v1.Crypto/SignIn",
    "/poshsm.v1.Crypto/TranslatePin",
    "/poshsm.v1.Crypto/GenerateMac",
    "/poshsm.v1.Crypto/VerifyMac",
    "/poshsm.v1.Crypto/TranslatePinBatch",
    "/poshsm.v1.Crypto/VerifyMacBatch",
];

const ADMIN_RPCS: [&str; 14] = [
    "/poshsm.v1.KeyAdmin/GenerateKey",
    "/poshsm.v1.KeyAdmin/ImportKeyComponents",
    "/poshsm.v1.KeyAdmin/ImportKey",
    "/poshsm.v1.KeyAdmin/ExportKey",
    "/poshsm.v1.KeyAdmin/CreateTerminal",
    "/poshsm.v1.KeyAdmin/GetKey",
    "/poshsm.v1.KeyAdmin/ListKeys",
    "/poshsm.v1.KeyAdmin/RetireKey",
    "/poshsm.v1.KeyAdmin/RotateKey",
    "/poshsm.v1.KeyAdmin/GetTerminal",
    "/poshsm.v1.KeyAdmin/ListTerminals",
    "/poshsm.v1.KeyAdmin/GetAuditLog",
    "/poshsm.v1.KeyAdmin/VerifyAuditLog",
    "/poshsm.v1.KeyAdmin/GetStatus",
];

/// Bodies that are not valid protobuf for any of our messages.
fn undecodable() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("0xFF bytes", vec![0xFF; 64]),
        // Field 1, wire type 2, length 200, but only 3 bytes follow.
        ("truncated length", vec![0x0A, 0xC8, 0x01, b'a', b'b', b'c']),
        // Field 0 is not a valid field number.
        ("field number 0", vec![0x00, 0x01]),
        // Wire type 7 does not exist.
        ("wire type 7", vec![0x0F, 0x01]),
        // A varint longer than 10 bytes.
        (
            "endless varint",
            vec![
                0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01,
            ],
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_that_are_not_protobuf_get_a_decode_error_on_every_rpc() {
    let mut mock = start().await;
    let admin_ch = mock.channel("admin").await.unwrap();
    for path in CRYPTO_RPCS.iter().chain(ADMIN_RPCS.iter()) {
        for (what, body) in undecodable() {
            let r = raw_call(admin_ch.clone(), path, body).await;
            match r {
                Ok(ok) => panic!("{path} {what}: decoded?! {ok:?}"),
                Err(s) => {
                    assert_eq!(s.code(), Code::Internal, "{path} {what}: {s:?}");
                    assert!(s.message().contains("decode"), "{path} {what}: {s:?}");
                }
            }
        }
    }
    // Wrong wire types and invalid UTF-8 in string fields, message by message.
    let invalid_utf8 = vec![0x0A, 0x02, 0xC3, 0x28]; // field 1, bytes C3 28
    let varint_for_string = vec![0x08, 0x05]; // field 1 as a varint
    for path in [
        "/poshsm.v1.Crypto/SignIn",           // terminal_id
        "/poshsm.v1.Crypto/TranslatePin",     // terminal_id (oneof)
        "/poshsm.v1.Crypto/GenerateMac",      // terminal_id (oneof)
        "/poshsm.v1.Crypto/VerifyMac",        // terminal_id (oneof)
        "/poshsm.v1.KeyAdmin/CreateTerminal", // terminal_id
        "/poshsm.v1.KeyAdmin/GetKey",         // KeyRef.key_id
        "/poshsm.v1.KeyAdmin/RetireKey",
        "/poshsm.v1.KeyAdmin/RotateKey",
        "/poshsm.v1.KeyAdmin/GetTerminal",
    ] {
        for (what, body) in [
            ("invalid UTF-8", invalid_utf8.clone()),
            ("varint where a string belongs", varint_for_string.clone()),
        ] {
            let s = raw_call(admin_ch.clone(), path, body).await.unwrap_err();
            assert_eq!(s.code(), Code::Internal, "{path} {what}: {s:?}");
            assert!(s.message().contains("decode"), "{path} {what}: {s:?}");
        }
    }
    // A string where an enum (varint) belongs: GenerateKey.key_type, ListKeys.key_type.
    for path in [
        "/poshsm.v1.KeyAdmin/GenerateKey",
        "/poshsm.v1.KeyAdmin/ListKeys",
    ] {
        let s = raw_call(admin_ch.clone(), path, vec![0x0A, 0x01, b'x'])
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::Internal, "{path}: {s:?}");
    }
    // Unknown fields are ignored (protobuf rules): an empty GetStatus with field 99 answers.
    let ok = raw_call(
        admin_ch.clone(),
        "/poshsm.v1.KeyAdmin/GetStatus",
        vec![0x98, 0x06, 0x01],
    )
    .await
    .unwrap()
    .into_inner();
    assert_eq!(pb::StatusResponse::decode(&ok[..]).unwrap().state, "OK");
    // A method that does not exist.
    let s = raw_call(admin_ch, "/poshsm.v1.KeyAdmin/DumpKeys", vec![])
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unimplemented, "{s:?}");
    still_serving(&mut mock).await;
    mock.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_requests_get_their_documented_answers() {
    let mut mock = start().await;
    let mut posp = mock.posp.clone();
    let mut admin = mock.admin.clone();
    use Code::*;
    expect(
        posp.sign_in(pb::SignInRequest::default()).await,
        InvalidArgument,
        "INVALID_TERMINAL_ID",
    );
    expect(
        posp.translate_pin(pb::TranslatePinRequest::default()).await,
        InvalidArgument,
        "INVALID_ARGUMENT",
    );
    expect(
        posp.generate_mac(pb::GenerateMacRequest::default()).await,
        InvalidArgument,
        "INVALID_ARGUMENT",
    );
    expect(
        posp.verify_mac(pb::VerifyMacRequest::default()).await,
        InvalidArgument,
        "INVALID_ARGUMENT",
    );
    let b = posp
        .translate_pin_batch(pb::TranslatePinBatchRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(b.results.is_empty());
    let b = posp
        .verify_mac_batch(pb::VerifyMacBatchRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(b.results.is_empty());
    // Batches of empty items: each item answers on its own.
    let b = posp
        .translate_pin_batch(pb::TranslatePinBatchRequest {
            items: vec![pb::TranslatePinRequest::default(); 3],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(b.results.len(), 3);
    for r in &b.results {
        match &r.result {
            Some(pb::translate_pin_result::Result::Error(e)) => {
                assert_eq!(e.reason, "INVALID_ARGUMENT");
                assert_eq!(e.code, InvalidArgument as u32);
            }
            other => panic!("{other:?}"),
        }
    }
    let b = posp
        .verify_mac_batch(pb::VerifyMacBatchRequest {
            items: vec![pb::VerifyMacRequest::default(); 3],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(b.results.iter().all(|r| matches!(
        &r.result,
        Some(pb::verify_mac_result::Result::Error(e)) if e.reason == "INVALID_ARGUMENT"
    )));

    expect(
        admin.generate_key(pb::GenerateKeyRequest::default()).await,
        InvalidArgument,
        "INVALID_ARGUMENT",
    );
    expect(
        admin
            .import_key_components(pb::ImportKeyComponentsRequest::default())
            .await,
        InvalidArgument,
        "INVALID_ARGUMENT",
    );
    expect(
        admin.import_key(pb::ImportKeyRequest::default()).await,
        InvalidArgument,
        "INVALID_ARGUMENT",
    );
    expect(
        admin.export_key(pb::ExportKeyRequest::default()).await,
        InvalidArgument,
        "INVALID_ARGUMENT",
    );
    expect(
        admin
            .create_terminal(pb::CreateTerminalRequest::default())
            .await,
        InvalidArgument,
        "INVALID_TERMINAL_ID",
    );
    for r in [
        admin.get_key(pb::KeyRef::default()).await,
        admin.retire_key(pb::KeyRef::default()).await,
        admin.rotate_key(pb::KeyRef::default()).await,
    ] {
        expect(r, InvalidArgument, "INVALID_ARGUMENT");
    }
    expect(
        admin.get_terminal(pb::GetTerminalRequest::default()).await,
        InvalidArgument,
        "INVALID_TERMINAL_ID",
    );
    let keys = admin
        .list_keys(pb::ListKeysRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(keys.keys.len(), 3, "the mock's TMK, ZPK and ZAK");
    let terms = admin
        .list_terminals(pb::ListTerminalsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(terms.terminals.len(), 1);
    let mut stream = admin
        .get_audit_log(pb::GetAuditLogRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while let Some(e) = stream.message().await.unwrap() {
        assert_eq!(e.seq, n + 1);
        n += 1;
    }
    assert!(n >= 4);
    assert!(
        admin
            .verify_audit_log(pb::VerifyAuditLogRequest::default())
            .await
            .unwrap()
            .into_inner()
            .valid
    );
    still_serving(&mut mock).await;
    mock.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_enum_numbers_missing_oneofs_and_empty_key_refs_are_invalid_arguments() {
    let mut mock = start().await;
    signed_in(&mut mock).await;
    let mut posp = mock.posp.clone();
    let mut admin = mock.admin.clone();
    use Code::*;
    for bad in [-1, 10, 99, i32::MAX, i32::MIN] {
        expect(
            posp.sign_in(pb::SignInRequest {
                algorithm: bad,
                ..mock.terminal.sign_in_request()
            })
            .await,
            InvalidArgument,
            "INVALID_ARGUMENT",
        );
        expect(
            posp.sign_in(pb::SignInRequest {
                layout: bad,
                ..mock.terminal.sign_in_request()
            })
            .await,
            InvalidArgument,
            "INVALID_ARGUMENT",
        );
        for (s, d) in [(bad, 0), (0, bad)] {
            expect(
                posp.translate_pin(pb::TranslatePinRequest {
                    source_format: s,
                    dest_format: d,
                    ..translate(&mock, "1234")
                })
                .await,
                InvalidArgument,
                "INVALID_ARGUMENT",
            );
        }
        expect(
            posp.generate_mac(pb::GenerateMacRequest {
                key_source: tmac(TID),
                algorithm: bad,
                message: b"x".to_vec(),
                mac_length: 0,
            })
            .await,
            InvalidArgument,
            "INVALID_ARGUMENT",
        );
        expect(
            posp.verify_mac(pb::VerifyMacRequest {
                key_source: vmac(TID),
                algorithm: bad,
                message: b"x".to_vec(),
                mac: vec![0; 8],
            })
            .await,
            InvalidArgument,
            "INVALID_ARGUMENT",
        );
        for (kt, alg) in [(bad, 1), (5, bad)] {
            expect(
                admin
                    .generate_key(pb::GenerateKeyRequest {
                        key_type: kt,
                        algorithm: alg,
                        ..Default::default()
                    })
                    .await,
                InvalidArgument,
                "INVALID_ARGUMENT",
            );
            expect(
                admin
                    .import_key_components(pb::ImportKeyComponentsRequest {
                        key_type: kt,
                        algorithm: alg,
                        components: vec![vec![1; 16], vec![2; 16]],
                        ..Default::default()
                    })
                    .await,
                InvalidArgument,
                "INVALID_ARGUMENT",
            );
            expect(
                admin
                    .import_key(pb::ImportKeyRequest {
                        key_type: kt,
                        algorithm: alg,
                        wrapping_key: alias("mock-tmk"),
                        wrapped: Some(pb::import_key_request::Wrapped::X917Ecb(vec![0; 16])),
                        ..Default::default()
                    })
                    .await,
                InvalidArgument,
                "INVALID_ARGUMENT",
            );
        }
        expect(
            admin
                .list_keys(pb::ListKeysRequest {
                    key_type: bad,
                    ..Default::default()
                })
                .await,
            InvalidArgument,
            "INVALID_ARGUMENT",
        );
        expect(
            admin
                .create_terminal(pb::CreateTerminalRequest {
                    terminal_id: "ENUM0001".into(),
                    tmk_algorithm: bad,
                    ..Default::default()
                })
                .await,
            InvalidArgument,
            "INVALID_ARGUMENT",
        );
    }
    // MAC_ALGORITHM_UNSPECIFIED is not an algorithm.
    expect(
        posp.generate_mac(pb::GenerateMacRequest {
            key_source: tmac(TID),
            algorithm: 0,
            message: b"x".to_vec(),
            mac_length: 0,
        })
        .await,
        InvalidArgument,
        "INVALID_ARGUMENT",
    );
    // Export formats that do not exist.
    for format in ["PKCS8", "tr-34", "X917", "\u{0}", "TR31 "] {
        expect(
            admin
                .export_key(pb::ExportKeyRequest {
                    key: alias("mock-tmk"),
                    wrapping_key: alias("mock-zpk"),
                    format: format.into(),
                })
                .await,
            InvalidArgument,
            "INVALID_ARGUMENT",
        );
    }
    // Missing oneofs: no source / key source / wrapped key.
    expect(
        posp.translate_pin(pb::TranslatePinRequest {
            source: None,
            ..translate(&mock, "1234")
        })
        .await,
        InvalidArgument,
        "INVALID_ARGUMENT",
    );
    expect(
        admin
            .import_key(pb::ImportKeyRequest {
                key_type: pb::KeyType::Zpk as i32,
                wrapping_key: alias("mock-tmk"),
                wrapped: None,
                ..Default::default()
            })
            .await,
        InvalidArgument,
        "INVALID_ARGUMENT",
    );
    // Every empty form of every key reference.
    for r in empty_refs() {
        expect(
            posp.translate_pin(pb::TranslatePinRequest {
                dest_key: r.clone(),
                ..translate(&mock, "1234")
            })
            .await,
            InvalidArgument,
            "INVALID_ARGUMENT",
        );
        if let Some(k) = r.clone() {
            expect(
                posp.translate_pin(pb::TranslatePinRequest {
                    source: Some(pb::translate_pin_request::Source::SourceKey(k.clone())),
                    ..translate(&mock, "1234")
                })
                .await,
                InvalidArgument,
                "INVALID_ARGUMENT",
            );
            expect(
                posp.generate_mac(pb::GenerateMacRequest {
                    key_source: Some(pb::generate_mac_request::KeySource::Key(k.clone())),
                    algorithm: pb::MacAlgorithm::Cmac as i32,
                    message: b"x".to_vec(),
                    mac_length: 0,
                })
                .await,
                InvalidArgument,
                "INVALID_ARGUMENT",
            );
            expect(
                posp.verify_mac(pb::VerifyMacRequest {
                    key_source: Some(pb::verify_mac_request::KeySource::Key(k.clone())),
                    algorithm: pb::MacAlgorithm::Cmac as i32,
                    message: b"x".to_vec(),
                    mac: vec![0; 8],
                })
                .await,
                InvalidArgument,
                "INVALID_ARGUMENT",
            );
            for res in [
                admin.get_key(k.clone()).await,
                admin.retire_key(k.clone()).await,
                admin.rotate_key(k.clone()).await,
            ] {
                expect(res, InvalidArgument, "INVALID_ARGUMENT");
            }
        }
        for (key, kek) in [
            (r.clone(), alias("mock-tmk")),
            (alias("mock-zpk"), r.clone()),
        ] {
            expect(
                admin
                    .export_key(pb::ExportKeyRequest {
                        key,
                        wrapping_key: kek,
                        format: String::new(),
                    })
                    .await,
                InvalidArgument,
                "INVALID_ARGUMENT",
            );
        }
        expect(
            admin
                .import_key(pb::ImportKeyRequest {
                    key_type: pb::KeyType::Zpk as i32,
                    algorithm: pb::KeyAlgorithm::Tdes2key as i32,
                    wrapping_key: r.clone(),
                    wrapped: Some(pb::import_key_request::Wrapped::X917Ecb(vec![0; 16])),
                    ..Default::default()
                })
                .await,
            InvalidArgument,
            "INVALID_ARGUMENT",
        );
    }
    still_serving(&mut mock).await;
    mock.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_hit_a_clear_limit() {
    let mut mock = start().await;
    signed_in(&mut mock).await;
    let mut posp = mock.posp.clone();
    let mut admin = mock.admin.clone();
    // 10 MB: under the Crypto service's 16 MiB gRPC limit, so the core's
    // max_mac_message (64 KiB by default) answers MESSAGE_TOO_LARGE.
    let ten_mb = vec![0x5Au8; 10 * 1000 * 1000];
    expect(
        posp.generate_mac(pb::GenerateMacRequest {
            key_source: tmac(TID),
            algorithm: pb::MacAlgorithm::UnionpayEcb as i32,
            message: ten_mb.clone(),
            mac_length: 0,
        })
        .await,
        Code::InvalidArgument,
        "MESSAGE_TOO_LARGE",
    );
    expect(
        posp.verify_mac(pb::VerifyMacRequest {
            key_source: vmac(TID),
            algorithm: pb::MacAlgorithm::UnionpayEcb as i32,
            message: ten_mb.clone(),
            mac: vec![0x30; 8],
        })
        .await,
        Code::InvalidArgument,
        "MESSAGE_TOO_LARGE",
    );
    // One byte over the core limit, and exactly at it.
    let limit = mock.hsm.config().max_mac_message;
    expect(
        posp.generate_mac(pb::GenerateMacRequest {
            key_source: tmac(TID),
            algorithm: pb::MacAlgorithm::UnionpayEcb as i32,
            message: vec![1; limit + 1],
            mac_length: 0,
        })
        .await,
        Code::InvalidArgument,
        "MESSAGE_TOO_LARGE",
    );
    posp.generate_mac(pb::GenerateMacRequest {
        key_source: tmac(TID),
        algorithm: pb::MacAlgorithm::UnionpayEcb as i32,
        message: vec![1; limit],
        mac_length: 0,
    })
    .await
    .unwrap();
    // Above the gRPC limit (16 MiB on Crypto): tonic refuses before decoding.
    drop(ten_mb);
    expect_transport(
        posp.generate_mac(pb::GenerateMacRequest {
            key_source: tmac(TID),
            algorithm: pb::MacAlgorithm::UnionpayEcb as i32,
            message: vec![0; 17 * 1024 * 1024],
            mac_length: 0,
        })
        .await,
        Code::OutOfRange,
        "too large",
    );
    // KeyAdmin keeps tonic's default 4 MiB limit: a 5 MB component is refused by it.
    expect_transport(
        admin
            .import_key_components(pb::ImportKeyComponentsRequest {
                key_type: pb::KeyType::Zmk as i32,
                components: vec![vec![1; 5_000_000], vec![2; 16]],
                ..Default::default()
            })
            .await,
        Code::OutOfRange,
        "too large",
    );
    // A 1 MB component is under the limit and refused by the core.
    expect(
        admin
            .import_key_components(pb::ImportKeyComponentsRequest {
                key_type: pb::KeyType::Zmk as i32,
                components: vec![vec![1; 1_000_000], vec![2; 16]],
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "INVALID_KEY_LENGTH",
    );
    // Batches above MAX_BATCH items.
    expect(
        posp.translate_pin_batch(pb::TranslatePinBatchRequest {
            items: vec![pb::TranslatePinRequest::default(); MAX_BATCH + 1],
        })
        .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    expect(
        posp.verify_mac_batch(pb::VerifyMacBatchRequest {
            items: vec![pb::VerifyMacRequest::default(); MAX_BATCH + 1],
        })
        .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    // Key blocks of 9,999 and 20,000 characters, wherever a key block goes.
    for len in [4097, 9_999, 20_000] {
        let b = long_block(len);
        expect(
            posp.generate_mac(pb::GenerateMacRequest {
                key_source: Some(pb::generate_mac_request::KeySource::Key(block(&b).unwrap())),
                algorithm: pb::MacAlgorithm::Iso9797Alg3 as i32,
                message: b"x".to_vec(),
                mac_length: 0,
            })
            .await,
            Code::InvalidArgument,
            "INVALID_KEY_BLOCK",
        );
        expect(
            posp.verify_mac(pb::VerifyMacRequest {
                key_source: Some(pb::verify_mac_request::KeySource::Key(block(&b).unwrap())),
                algorithm: pb::MacAlgorithm::Iso9797Alg3 as i32,
                message: b"x".to_vec(),
                mac: vec![0; 8],
            })
            .await,
            Code::InvalidArgument,
            "INVALID_KEY_BLOCK",
        );
        expect(
            posp.translate_pin(pb::TranslatePinRequest {
                source: Some(pb::translate_pin_request::Source::SourceKey(
                    block(&b).unwrap(),
                )),
                ..translate(&mock, "1234")
            })
            .await,
            Code::InvalidArgument,
            "INVALID_KEY_BLOCK",
        );
        expect(
            posp.translate_pin(pb::TranslatePinRequest {
                dest_key: block(&b),
                ..translate(&mock, "1234")
            })
            .await,
            Code::InvalidArgument,
            "INVALID_KEY_BLOCK",
        );
        expect(
            posp.sign_in(pb::SignInRequest {
                terminal_id: TID.into(),
                tmk: block(&b),
                ..Default::default()
            })
            .await,
            Code::InvalidArgument,
            "INVALID_KEY_BLOCK",
        );
        for res in [
            admin.get_key(block(&b).unwrap()).await,
            admin.retire_key(block(&b).unwrap()).await,
            admin.rotate_key(block(&b).unwrap()).await,
        ] {
            expect(res, Code::InvalidArgument, "INVALID_KEY_BLOCK");
        }
        for (key, kek) in [
            (block(&b), alias("mock-tmk")),
            (alias("mock-zpk"), block(&b)),
        ] {
            expect(
                admin
                    .export_key(pb::ExportKeyRequest {
                        key,
                        wrapping_key: kek,
                        format: String::new(),
                    })
                    .await,
                Code::InvalidArgument,
                "INVALID_KEY_BLOCK",
            );
        }
        expect(
            admin
                .create_terminal(pb::CreateTerminalRequest {
                    terminal_id: "LONGBLK1".into(),
                    tmk: block(&b),
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
            "INVALID_KEY_BLOCK",
        );
        expect(
            admin
                .import_key(pb::ImportKeyRequest {
                    key_type: pb::KeyType::Zpk as i32,
                    wrapping_key: block(&b),
                    wrapped: Some(pb::import_key_request::Wrapped::X917Ecb(vec![0; 16])),
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
            "INVALID_KEY_BLOCK",
        );
        // As the TR-31 block to import (under a real KEK): the parser refuses it.
        expect(
            admin
                .import_key(pb::ImportKeyRequest {
                    key_type: pb::KeyType::Zpk as i32,
                    wrapping_key: alias("mock-tmk"),
                    wrapped: Some(pb::import_key_request::Wrapped::Tr31KeyBlock(b.clone())),
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
            "INVALID_KEY_BLOCK",
        );
    }
    still_serving(&mut mock).await;
    mock.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_and_odd_strings_are_refused_with_short_messages() {
    let mut mock = start().await;
    signed_in(&mut mock).await;
    let mut posp = mock.posp.clone();
    let mut admin = mock.admin.clone();
    let long = "A".repeat(20_000);
    let odd_strings: Vec<String> = vec![
        "\u{0}".into(),
        "T\u{0}1".into(),
        "\u{202E}1000TOM".into(), // right-to-left override
        "términal".into(),
        "🔑🔑".into(),
        "T 1".into(),
        "../../etc/passwd".into(),
        "\r\nX-Injected: 1".into(),
        "%s%n%x".into(),
        long.clone(),
        "x".repeat(1_000_000),
    ];
    for s in &odd_strings {
        // Terminal ids are validated before use.
        expect(
            posp.sign_in(pb::SignInRequest {
                terminal_id: s.clone(),
                ..Default::default()
            })
            .await,
            Code::InvalidArgument,
            "INVALID_TERMINAL_ID",
        );
        expect(
            admin
                .create_terminal(pb::CreateTerminalRequest {
                    terminal_id: s.clone(),
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
            "INVALID_TERMINAL_ID",
        );
        expect(
            admin
                .get_terminal(pb::GetTerminalRequest {
                    terminal_id: s.clone(),
                })
                .await,
            Code::InvalidArgument,
            "INVALID_TERMINAL_ID",
        );
        expect(
            posp.generate_mac(pb::GenerateMacRequest {
                key_source: tmac(s),
                algorithm: pb::MacAlgorithm::UnionpayEcb as i32,
                message: b"x".to_vec(),
                mac_length: 0,
            })
            .await,
            Code::InvalidArgument,
            "INVALID_TERMINAL_ID",
        );
        expect(
            posp.translate_pin(pb::TranslatePinRequest {
                source: tpin(s),
                ..translate(&mock, "1234")
            })
            .await,
            Code::InvalidArgument,
            "INVALID_TERMINAL_ID",
        );
        // Aliases are validated when they are set ...
        expect(
            admin
                .generate_key(pb::GenerateKeyRequest {
                    key_type: pb::KeyType::Zpk as i32,
                    alias: s.clone(),
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
            "INVALID_ALIAS",
        );
        // ... and unknown when looked up; so are key ids.
        for r in [alias(s), kid(s)] {
            expect(
                admin.get_key(r.clone().unwrap()).await,
                Code::NotFound,
                "UNKNOWN_KEY",
            );
            expect(
                posp.generate_mac(pb::GenerateMacRequest {
                    key_source: Some(pb::generate_mac_request::KeySource::Key(r.unwrap())),
                    algorithm: pb::MacAlgorithm::Cmac as i32,
                    message: b"x".to_vec(),
                    mac_length: 0,
                })
                .await,
                Code::NotFound,
                "UNKNOWN_KEY",
            );
        }
        // Merchant ids: at most 32 printable ASCII characters.
        if s.len() > 32 || !s.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
            expect(
                admin
                    .create_terminal(pb::CreateTerminalRequest {
                        terminal_id: "MERCH001".into(),
                        merchant_id: s.clone(),
                        ..Default::default()
                    })
                    .await,
                Code::InvalidArgument,
                "INVALID_ARGUMENT",
            );
        }
        // KCVs are hex.
        expect(
            admin
                .import_key_components(pb::ImportKeyComponentsRequest {
                    key_type: pb::KeyType::Zmk as i32,
                    components: vec![
                        hex::decode("0123456789ABCDEFFEDCBA9876543210").unwrap(),
                        hex::decode("1032547698BADCFEEFCDAB8967452301").unwrap(),
                    ],
                    component_kcvs: vec![s.clone(), s.clone()],
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        );
        // Export formats are a closed list.
        expect(
            admin
                .export_key(pb::ExportKeyRequest {
                    key: alias("mock-tmk"),
                    wrapping_key: alias("mock-zpk"),
                    format: s.clone(),
                })
                .await,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        );
        // Page tokens are opaque cursors: garbage gives an empty or partial page.
        let page = admin
            .list_keys(pb::ListKeysRequest {
                key_type: 0,
                page_size: 10,
                page_token: s.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.keys.len() <= 6, "the mock's 3 keys and 3 working keys");
        admin
            .list_terminals(pb::ListTerminalsRequest {
                page_size: 10,
                page_token: s.clone(),
            })
            .await
            .unwrap();
    }
    still_serving(&mut mock).await;
    mock.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_pin_blocks_pans_macs_and_lengths_are_refused() {
    let mut mock = start().await;
    signed_in(&mut mock).await;
    let mut posp = mock.posp.clone();
    let mut admin = mock.admin.clone();
    // PIN blocks of every wrong length (TDES PIK: one 8-byte block), and huge.
    let mut lengths: Vec<usize> = (0..=33).filter(|n| *n != 8).collect();
    lengths.push(1_000_000);
    for len in &lengths {
        expect(
            posp.translate_pin(pb::TranslatePinRequest {
                pin_block: vec![0xA5; *len],
                ..translate(&mock, "1234")
            })
            .await,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        );
    }
    let b = posp
        .translate_pin_batch(pb::TranslatePinBatchRequest {
            items: lengths
                .iter()
                .filter(|n| **n < 100)
                .map(|n| pb::TranslatePinRequest {
                    pin_block: vec![0xA5; *n],
                    ..translate(&mock, "1234")
                })
                .collect(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(b.results.iter().all(|r| matches!(
        &r.result,
        Some(pb::translate_pin_result::Result::Error(e)) if e.reason == "INVALID_ARGUMENT"
    )));
    // PANs with letters, separators, wrong lengths, non-ASCII digits.
    for pan in [
        "",
        "622848040256489001X",
        "62284804025648900A8",
        "6228-4804-0256-4890",
        "6228 4804 0256 4890",
        "12345678901",
        "62284804025648900181",
        "+6228480402564890018",
        "٦٢٢٨٤٨٠٤٠٢٥٦٤٨٩٠٠١٨",
        "6228480402564890018\u{0}",
    ] {
        expect(
            posp.translate_pin(pb::TranslatePinRequest {
                pan: pan.into(),
                ..translate(&mock, "1234")
            })
            .await,
            Code::InvalidArgument,
            "INVALID_PAN",
        );
    }
    let pan_1m = "1".repeat(1_000_000);
    expect(
        posp.translate_pin(pb::TranslatePinRequest {
            pan: pan_1m,
            ..translate(&mock, "1234")
        })
        .await,
        Code::InvalidArgument,
        "INVALID_PAN",
    );
    // MAC lengths outside 4..=8 bytes.
    for n in [1u32, 2, 3, 9, 16, u32::MAX] {
        expect(
            posp.generate_mac(pb::GenerateMacRequest {
                key_source: tmac(TID),
                algorithm: pb::MacAlgorithm::UnionpayEcb as i32,
                message: b"0200".to_vec(),
                mac_length: n,
            })
            .await,
            Code::InvalidArgument,
            "INVALID_MAC_LENGTH",
        );
    }
    for n in [0usize, 1, 3, 9, 17, 100_000] {
        expect(
            posp.verify_mac(pb::VerifyMacRequest {
                key_source: vmac(TID),
                algorithm: pb::MacAlgorithm::UnionpayEcb as i32,
                message: b"0200".to_vec(),
                mac: vec![0x30; n],
            })
            .await,
            Code::InvalidArgument,
            "INVALID_MAC_LENGTH",
        );
    }
    // Check-value lengths other than 4 and 8.
    for n in [1u32, 5, 16, u32::MAX] {
        expect(
            posp.sign_in(pb::SignInRequest {
                check_value_length: n,
                ..mock.terminal.sign_in_request()
            })
            .await,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        );
    }
    // Components and wrapped keys of the wrong length.
    for len in [0usize, 1, 8, 15, 17, 24, 4096] {
        expect(
            admin
                .import_key_components(pb::ImportKeyComponentsRequest {
                    key_type: pb::KeyType::Zmk as i32,
                    algorithm: pb::KeyAlgorithm::Tdes2key as i32,
                    components: vec![vec![0x01; len], vec![0x02; 16]],
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
            "INVALID_KEY_LENGTH",
        );
        expect(
            admin
                .import_key(pb::ImportKeyRequest {
                    key_type: pb::KeyType::Zpk as i32,
                    algorithm: pb::KeyAlgorithm::Tdes2key as i32,
                    wrapping_key: alias("mock-tmk"),
                    wrapped: Some(pb::import_key_request::Wrapped::X917Ecb(vec![0x11; len])),
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
            "INVALID_KEY_LENGTH",
        );
    }
    // Component KCVs: one per component or none.
    expect(
        admin
            .import_key_components(pb::ImportKeyComponentsRequest {
                key_type: pb::KeyType::Zmk as i32,
                components: vec![
                    hex::decode("0123456789ABCDEFFEDCBA9876543210").unwrap(),
                    hex::decode("1032547698BADCFEEFCDAB8967452301").unwrap(),
                ],
                component_kcvs: vec!["08D7B4".into(); 3],
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    // An X9.17 import without an algorithm.
    expect(
        admin
            .import_key(pb::ImportKeyRequest {
                key_type: pb::KeyType::Zpk as i32,
                wrapping_key: alias("mock-tmk"),
                wrapped: Some(pb::import_key_request::Wrapped::X917Ecb(vec![0x11; 16])),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    still_serving(&mut mock).await;
    mock.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_page_sizes_and_sequence_numbers_are_handled() {
    let mut mock = start().await;
    let mut admin = mock.admin.clone();
    let admin_ch = mock.channel("admin").await.unwrap();
    for size in [0u32, 1, 1000, 1001, u32::MAX] {
        let p = admin
            .list_keys(pb::ListKeysRequest {
                key_type: 0,
                page_size: size,
                page_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(p.keys.len(), if size == 1 { 1 } else { 3 });
        let t = admin
            .list_terminals(pb::ListTerminalsRequest {
                page_size: size,
                page_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(t.terminals.len(), 1);
    }
    // "Negative" page sizes: -1 as a 10-byte varint in the uint32 field (how a
    // client with a signed type would send it) decodes as 2^32 - 1.
    let minus_one = [0xFFu8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01];
    let mut list_keys = vec![0x10]; // ListKeysRequest.page_size = 2, varint
    list_keys.extend_from_slice(&minus_one);
    let r = raw_call(admin_ch.clone(), "/poshsm.v1.KeyAdmin/ListKeys", list_keys)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pb::ListKeysResponse::decode(&r[..]).unwrap().keys.len(), 3);
    let mut list_terms = vec![0x08]; // ListTerminalsRequest.page_size = 1, varint
    list_terms.extend_from_slice(&minus_one);
    let r = raw_call(admin_ch, "/poshsm.v1.KeyAdmin/ListTerminals", list_terms)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        pb::ListTerminalsResponse::decode(&r[..])
            .unwrap()
            .terminals
            .len(),
        1
    );
    // Paging with page_size 1 walks every key exactly once.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let p = admin
            .list_keys(pb::ListKeysRequest {
                key_type: 0,
                page_size: 1,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(p.keys.into_iter().map(|k| k.key_id));
        if p.next_page_token.is_empty() {
            break;
        }
        token = p.next_page_token;
        assert!(seen.len() <= 3, "paging terminates");
    }
    assert_eq!(seen.len(), 3);
    // Audit log from the extremes of the sequence space.
    for since in [0u64, 1, u64::MAX - 1, u64::MAX] {
        let mut stream = admin
            .get_audit_log(pb::GetAuditLogRequest { since_seq: since })
            .await
            .unwrap()
            .into_inner();
        let mut n = 0;
        while stream.message().await.unwrap().is_some() {
            n += 1;
        }
        assert_eq!(n > 0, since <= 1, "since {since}: {n} events");
    }
    still_serving(&mut mock).await;
    mock.stop().await;
}

/// Distinct odd-parity 16-byte components, `n` of them.
fn distinct_components(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut v = vec![0x80u8; 16];
            for (k, b) in v.iter_mut().enumerate().take(4) {
                *b = (((i >> (6 * k)) & 0x3F) << 1) as u8 | 0x80;
            }
            for b in v.iter_mut() {
                if b.count_ones() % 2 == 0 {
                    *b ^= 1;
                }
            }
            v
        })
        .collect()
}

/// The duplicate-component check compares every pair: a request with 200,000
/// distinct components (3.5 MB, under the 4 MiB limit) would keep a blocking
/// thread busy for hours. The component count is capped before any work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_components_are_refused_before_any_quadratic_work() {
    let mut mock = start().await;
    let mut admin = mock.admin.clone();
    for n in [17usize, 5_000, 200_000] {
        let parts = distinct_components(n);
        let t = std::time::Instant::now();
        expect(
            admin
                .import_key_components(pb::ImportKeyComponentsRequest {
                    key_type: pb::KeyType::Zmk as i32,
                    components: parts,
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        );
        assert!(
            t.elapsed() < std::time::Duration::from_secs(5),
            "{n} components refused in {:?}",
            t.elapsed()
        );
    }
    // At the cap, distinct random parts still form a key.
    let parts: Vec<Vec<u8>> = (0..16)
        .map(|_| {
            let mut v = vec![0u8; 16];
            poshsm::crypto::random_bytes(&mut v);
            v.iter_mut()
                .filter(|b| b.count_ones() % 2 == 0)
                .for_each(|b| *b ^= 1);
            v
        })
        .collect();
    for (i, a) in parts.iter().enumerate() {
        assert!(parts[..i].iter().all(|b| b != a));
    }
    admin
        .import_key_components(pb::ImportKeyComponentsRequest {
            key_type: pb::KeyType::Zmk as i32,
            components: parts,
            ..Default::default()
        })
        .await
        .unwrap();
    still_serving(&mut mock).await;
    mock.stop().await;
}
