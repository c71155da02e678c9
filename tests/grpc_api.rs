//! The gRPC API over real mutual TLS: the business day through MockHsm, every
//! documented error path with its status code and ErrorInfo reason, role
//! denials, refused handshakes, and persistence across a daemon restart.

mod common;

use common::reason;

use poshsm::proto::{self as pb, crypto_client::CryptoClient, key_admin_client::KeyAdminClient};
use poshsm::testing::MockHsm;
use tonic::Code;

fn expect_err<T: std::fmt::Debug>(
    r: Result<tonic::Response<T>, tonic::Status>,
    code: Code,
    why: &str,
) -> tonic::Status {
    let s = r.expect_err(&format!("expected {why}"));
    assert_eq!(s.code(), code, "{why}: {s:?}");
    assert_eq!(reason(&s), why, "{s:?}");
    assert!(!s.message().is_empty());
    s
}

fn alias(a: &str) -> Option<pb::KeyRef> {
    Some(pb::KeyRef {
        r#ref: Some(pb::key_ref::Ref::Alias(a.into())),
    })
}

fn tid(t: &str) -> Option<pb::verify_mac_request::KeySource> {
    Some(pb::verify_mac_request::KeySource::TerminalId(t.into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_business_day_runs_over_mutual_tls() {
    let mut mock = MockHsm::start().await.unwrap();
    let mut posp = mock.posp.clone();
    let r = posp
        .sign_in(mock.terminal.sign_in_request())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.field62.len(), 60);
    assert_eq!(r.layout, pb::Field62Layout::Unionpay004 as i32);
    mock.terminal.load_field62(&r.field62, r.layout).unwrap();

    let request = b"0200 purchase 000000001000".to_vec();
    let v = posp
        .verify_mac(pb::VerifyMacRequest {
            key_source: tid("MOCK0001"),
            algorithm: pb::MacAlgorithm::UnionpayEcb as i32,
            message: request.clone(),
            mac: mock.terminal.mac(&request).unwrap(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(v.valid);
    let pan = "6228480402564890018";
    let t = posp
        .translate_pin(pb::TranslatePinRequest {
            source: Some(pb::translate_pin_request::Source::TerminalId(
                "MOCK0001".into(),
            )),
            dest_key: alias(&mock.network.zpk_alias),
            pin_block: mock.terminal.pin_block("8642", pan).unwrap(),
            pan: pan.into(),
            source_format: 0,
            dest_format: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mock.network.pin(&t.pin_block, pan).unwrap(), "8642");
    let net = b"0200 to CUPS".to_vec();
    let m = posp
        .generate_mac(pb::GenerateMacRequest {
            key_source: Some(pb::generate_mac_request::KeySource::Key(
                alias(&mock.network.zak_alias).unwrap(),
            )),
            algorithm: pb::MacAlgorithm::Iso9797Alg3 as i32,
            message: net.clone(),
            mac_length: 8,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.mac, mock.network.mac(&net).unwrap());
    let response = b"0210 approved".to_vec();
    let rm = posp
        .generate_mac(pb::GenerateMacRequest {
            key_source: Some(pb::generate_mac_request::KeySource::TerminalId(
                "MOCK0001".into(),
            )),
            algorithm: pb::MacAlgorithm::UnionpayEcb as i32,
            message: response.clone(),
            mac_length: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(mock.terminal.check_mac(&response, &rm.mac));

    // Batches: one good and one bad item, each answered on its own.
    let good = pb::TranslatePinRequest {
        source: Some(pb::translate_pin_request::Source::TerminalId(
            "MOCK0001".into(),
        )),
        dest_key: alias(&mock.network.zpk_alias),
        pin_block: mock.terminal.pin_block("1234", pan).unwrap(),
        pan: pan.into(),
        ..Default::default()
    };
    let mut bad = good.clone();
    bad.pin_block = vec![0u8; 5];
    let b = posp
        .translate_pin_batch(pb::TranslatePinBatchRequest {
            items: vec![good, bad],
        })
        .await
        .unwrap()
        .into_inner();
    match &b.results[0].result {
        Some(pb::translate_pin_result::Result::Ok(o)) => {
            assert_eq!(mock.network.pin(&o.pin_block, pan).unwrap(), "1234")
        }
        other => panic!("{other:?}"),
    }
    match &b.results[1].result {
        Some(pb::translate_pin_result::Result::Error(e)) => {
            assert_eq!(e.code, Code::InvalidArgument as u32)
        }
        other => panic!("{other:?}"),
    }
    mock.stop().await;
}

/// Our codec starts with a 1 KiB buffer (src/server/codec.rs): requests and
/// answers several times that size must still cross whole, both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_larger_than_the_codec_buffer_cross_intact() {
    let mut mock = MockHsm::start().await.unwrap();
    let mut posp = mock.posp.clone();
    mock.sign_in_terminal().await.unwrap();
    // An 8 KiB request, MACed by the test terminal (the PIN pad's own code).
    let message: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 251) as u8).collect();
    let v = posp
        .verify_mac(pb::VerifyMacRequest {
            key_source: tid("MOCK0001"),
            algorithm: pb::MacAlgorithm::UnionpayEcb as i32,
            message: message.clone(),
            mac: mock.terminal.mac(&message).unwrap(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(v.valid);
    // A batch whose request and answer are both over 1 KiB.
    let pan = "6228480402564890018";
    // 48 items: under the security trigger's burst of 50 per terminal.
    let pins: Vec<String> = (0..48).map(|i| format!("{:04}", 1000 + i)).collect();
    let items = pins
        .iter()
        .map(|p| pb::TranslatePinRequest {
            source: Some(pb::translate_pin_request::Source::TerminalId(
                "MOCK0001".into(),
            )),
            dest_key: alias(&mock.network.zpk_alias),
            pin_block: mock.terminal.pin_block(p, pan).unwrap(),
            pan: pan.into(),
            ..Default::default()
        })
        .collect();
    let b = posp
        .translate_pin_batch(pb::TranslatePinBatchRequest { items })
        .await
        .unwrap()
        .into_inner();
    assert!(prost::Message::encoded_len(&b) > 1024);
    assert_eq!(b.results.len(), pins.len());
    for (p, r) in pins.iter().zip(&b.results) {
        match &r.result {
            Some(pb::translate_pin_result::Result::Ok(o)) => {
                assert_eq!(&mock.network.pin(&o.pin_block, pan).unwrap(), p)
            }
            other => panic!("{other:?}"),
        }
    }
    mock.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_path_has_its_status_code_and_reason() {
    let mut mock = MockHsm::start().await.unwrap();
    let mut posp = mock.posp.clone();
    let mut admin = mock.admin.clone();

    expect_err(
        posp.sign_in(pb::SignInRequest {
            terminal_id: "NOPE".into(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
        "UNKNOWN_TERMINAL",
    );
    expect_err(
        posp.translate_pin(pb::TranslatePinRequest {
            source: Some(pb::translate_pin_request::Source::TerminalId(
                "MOCK0001".into(),
            )),
            dest_key: alias("mock-zpk"),
            pin_block: vec![0; 8],
            pan: "6228480402564890018".into(),
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
        "TERMINAL_NOT_SIGNED_IN",
    );
    mock.sign_in_terminal().await.unwrap();
    // Garbage under the PIK: not a valid ISO 0 block.
    expect_err(
        posp.translate_pin(pb::TranslatePinRequest {
            source: Some(pb::translate_pin_request::Source::TerminalId(
                "MOCK0001".into(),
            )),
            dest_key: alias("mock-zpk"),
            pin_block: vec![0xA5; 8],
            pan: "6228480402564890018".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "INVALID_PIN_BLOCK",
    );
    expect_err(
        posp.translate_pin(pb::TranslatePinRequest {
            source: Some(pb::translate_pin_request::Source::TerminalId(
                "MOCK0001".into(),
            )),
            dest_key: alias("mock-zpk"),
            pin_block: mock
                .terminal
                .pin_block("1234", "6228480402564890018")
                .unwrap(),
            pan: "62284804".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "INVALID_PAN",
    );
    // A MAC key used for PINs, a PIN key used to MAC.
    expect_err(
        posp.translate_pin(pb::TranslatePinRequest {
            source: Some(pb::translate_pin_request::Source::SourceKey(
                alias("mock-zak").unwrap(),
            )),
            dest_key: alias("mock-zpk"),
            pin_block: vec![0; 8],
            pan: "6228480402564890018".into(),
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
        "KEY_USAGE_MISMATCH",
    );
    expect_err(
        posp.generate_mac(pb::GenerateMacRequest {
            key_source: Some(pb::generate_mac_request::KeySource::Key(
                alias("mock-zpk").unwrap(),
            )),
            algorithm: pb::MacAlgorithm::Iso9797Alg3 as i32,
            message: b"x".to_vec(),
            mac_length: 0,
        })
        .await,
        Code::FailedPrecondition,
        "KEY_USAGE_MISMATCH",
    );
    expect_err(
        posp.generate_mac(pb::GenerateMacRequest {
            key_source: Some(pb::generate_mac_request::KeySource::Key(
                alias("no-such-key").unwrap(),
            )),
            algorithm: pb::MacAlgorithm::Cmac as i32,
            message: b"x".to_vec(),
            mac_length: 0,
        })
        .await,
        Code::NotFound,
        "UNKNOWN_KEY",
    );
    expect_err(
        posp.generate_mac(pb::GenerateMacRequest {
            key_source: None,
            algorithm: pb::MacAlgorithm::Cmac as i32,
            message: vec![],
            mac_length: 0,
        })
        .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    // A wrong MAC is valid=false, not an error.
    let v = posp
        .verify_mac(pb::VerifyMacRequest {
            key_source: tid("MOCK0001"),
            algorithm: pb::MacAlgorithm::UnionpayEcb as i32,
            message: b"abc".to_vec(),
            mac: b"00000000".to_vec(),
        })
        .await
        .unwrap();
    assert!(!v.into_inner().valid);
    // Control plane.
    expect_err(
        admin
            .export_key(pb::ExportKeyRequest {
                key: alias("mock-zpk"),
                wrapping_key: alias("mock-tmk"),
                format: String::new(),
            })
            .await,
        Code::FailedPrecondition,
        "NOT_EXPORTABLE",
    );
    expect_err(
        admin
            .import_key_components(pb::ImportKeyComponentsRequest {
                key_type: pb::KeyType::Zmk as i32,
                algorithm: pb::KeyAlgorithm::Tdes2key as i32,
                components: vec![hex::decode("0123456789ABCDEFFEDCBA9876543210").unwrap(); 2],
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "DUPLICATE_COMPONENT",
    );
    expect_err(
        admin
            .generate_key(pb::GenerateKeyRequest {
                key_type: pb::KeyType::Zpk as i32,
                algorithm: 0,
                alias: "mock-zpk".into(),
                exportable: false,
            })
            .await,
        Code::AlreadyExists,
        "ALIAS_EXISTS",
    );
    expect_err(
        admin
            .get_terminal(pb::GetTerminalRequest {
                terminal_id: "NOPE".into(),
            })
            .await,
        Code::NotFound,
        "UNKNOWN_TERMINAL",
    );
    // Alarm: crypto is refused with MODULE_ALARM, status shows why.
    mock.hsm.raise_alarm("test: simulated tamper");
    expect_err(
        posp.sign_in(mock.terminal.sign_in_request()).await,
        Code::Unavailable,
        "MODULE_ALARM",
    );
    let st = admin
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.state, "ALARM");
    assert!(st.reason.contains("simulated tamper"));
    mock.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_are_enforced_from_the_client_certificate() {
    let mock = MockHsm::start().await.unwrap();
    // posp may not administer keys.
    let mut as_posp = KeyAdminClient::new(mock.channel("posp").await.unwrap());
    expect_err(
        as_posp
            .generate_key(pb::GenerateKeyRequest {
                key_type: pb::KeyType::Zpk as i32,
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    // Clear component entry by a non-admin is refused, and audited.
    let mut as_auditor = KeyAdminClient::new(mock.channel("auditor").await.unwrap());
    expect_err(
        as_auditor
            .import_key_components(pb::ImportKeyComponentsRequest {
                key_type: pb::KeyType::Zmk as i32,
                components: vec![vec![1; 16], vec![2; 16]],
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    let events = mock.hsm.audit_log(0, 1000).unwrap();
    assert!(events.iter().any(|e| e.operation == "ImportKeyComponents"
        && e.outcome == "PERMISSION_DENIED"
        && e.actor == "auditor"));
    // The auditor reads; it does not sign in terminals.
    assert_eq!(
        as_auditor
            .get_status(pb::GetStatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .state,
        "OK"
    );
    let mut auditor_crypto = CryptoClient::new(mock.channel("auditor").await.unwrap());
    expect_err(
        auditor_crypto
            .sign_in(mock.terminal.sign_in_request())
            .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    mock.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_without_a_client_certificate_or_from_a_foreign_ca_are_refused() {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    poshsm::server::install_crypto_provider();
    let mock = MockHsm::start().await.unwrap();
    let uri = format!("https://{}", mock.addr);
    // No client certificate at all.
    let no_cert = Endpoint::from_shared(uri.clone())
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(mock.ca_pem()))
                .domain_name("localhost"),
        )
        .unwrap();
    let refused = match no_cert.connect().await {
        Err(_) => true,
        Ok(ch) => CryptoClient::new(ch)
            .sign_in(pb::SignInRequest {
                terminal_id: "MOCK0001".into(),
                ..Default::default()
            })
            .await
            .is_err(),
    };
    assert!(
        refused,
        "a client without a certificate must not get an answer"
    );
    // A certificate named "posp" but issued by another CA.
    let foreign = poshsm::devcerts::generate("foreign CA", &["posp"]).unwrap();
    let (c, k) = foreign.client("posp").unwrap();
    let forged = Endpoint::from_shared(uri)
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(mock.ca_pem()))
                .identity(Identity::from_pem(c, k))
                .domain_name("localhost"),
        )
        .unwrap();
    let refused = match forged.connect().await {
        Err(_) => true,
        Ok(ch) => CryptoClient::new(ch)
            .sign_in(pb::SignInRequest {
                terminal_id: "MOCK0001".into(),
                ..Default::default()
            })
            .await
            .is_err(),
    };
    assert!(refused, "a certificate from a foreign CA must be refused");
    // Health and reflection are served to authenticated clients.
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
    mock.stop().await;
}

/// The real binary: `serve --dev`, a sign-in, SIGTERM, restart, and the terminal is still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_daemon_restart() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let start = || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_poshsm"))
            .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("poshsm listening on ")
            .expect("listening line")
            .to_string();
        (child, addr)
    };
    let connect = |addr: String, role: &'static str| {
        let cfg = poshsm::cli::client::ClientConfig::from_data_dir(&addr, dir.path(), role);
        async move { poshsm::cli::client::connect(&cfg).await.unwrap() }
    };
    let (mut child, addr) = start();
    let mut admin = KeyAdminClient::new(connect(addr.clone(), "admin").await);
    admin
        .create_terminal(pb::CreateTerminalRequest {
            terminal_id: "T1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut posp = CryptoClient::new(connect(addr.clone(), "posp").await);
    let s1 = posp
        .sign_in(pb::SignInRequest {
            terminal_id: "T1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mac1 = posp
        .generate_mac(pb::GenerateMacRequest {
            key_source: Some(pb::generate_mac_request::KeySource::TerminalId("T1".into())),
            algorithm: pb::MacAlgorithm::UnionpayEcb as i32,
            message: b"before restart".to_vec(),
            mac_length: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .mac;
    // Graceful stop (SIGTERM), then start again on the same data dir.
    unsafe_kill(child.id(), 15);
    assert!(
        child.wait().unwrap().success(),
        "SIGTERM is a clean shutdown"
    );
    let (mut child, addr) = start();
    let mut admin = KeyAdminClient::new(connect(addr.clone(), "admin").await);
    let t = admin
        .get_terminal(pb::GetTerminalRequest {
            terminal_id: "T1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.key_version, s1.key_version);
    let mut posp = CryptoClient::new(connect(addr.clone(), "posp").await);
    let v = posp
        .verify_mac(pb::VerifyMacRequest {
            key_source: tid("T1"),
            algorithm: pb::MacAlgorithm::UnionpayEcb as i32,
            message: b"before restart".to_vec(),
            mac: mac1,
        })
        .await
        .unwrap();
    assert!(
        v.into_inner().valid,
        "the stored MAK still verifies after a restart"
    );
    let chain = admin
        .verify_audit_log(pb::VerifyAuditLogRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(chain.valid && chain.events >= 2, "{chain:?}");
    unsafe_kill(child.id(), 15);
    let _ = child.wait();
}

fn unsafe_kill(pid: u32, sig: i32) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}
