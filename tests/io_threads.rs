//! The gRPC port served on I/O threads (`serve --io-threads N`, the binary's
//! default): connections spread to the least loaded thread, mutual TLS
//! identities still reach the authorization check, calls that commit to the
//! store work from a thread's own runtime, closed connections are counted
//! back, and shutdown stops every thread and returns. The services' long-input
//! and batch-slicing paths (through `MockHsm`, which serves on the test's own
//! runtime) give the same answers as the short ones.

use poshsm::hsm::{guard::Limit, Hsm, HsmConfig};
use poshsm::keys::Lmk;
use poshsm::proto::{self as pb, key_admin_client::KeyAdminClient};
use poshsm::server::{metrics::Metrics, AccessConfig, TlsMaterial};
use poshsm::store::Store;
use poshsm::testing::MockHsm;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

/// `poshsm_io_thread_<name>{thread="T"}` values from a `/metrics` rendering, by thread.
fn per_thread(text: &str, name: &str) -> Vec<u64> {
    let prefix = format!("poshsm_io_thread_{name}{{thread=\"");
    let mut out: Vec<(usize, u64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .map(|rest| {
            let (t, v) = rest.split_once("\"} ").expect("thread label then value");
            (t.parse().unwrap(), v.parse().unwrap())
        })
        .collect();
    out.sort();
    assert!(
        out.iter().enumerate().all(|(i, &(t, _))| i == t),
        "threads 0..n: {out:?}"
    );
    out.into_iter().map(|(_, v)| v).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_spread_over_io_threads_and_shutdown_stops_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("db")).unwrap();
    let hsm = Arc::new(Hsm::new(Lmk::generate(), store, HsmConfig::default()));
    let pki = poshsm::devcerts::generate("io-threads CA", &["admin", "auditor"]).unwrap();
    let tls = TlsMaterial {
        ca_pem: pki.ca_pem.clone().into_bytes(),
        cert_pem: pki.server_cert_pem.clone().into_bytes(),
        key_pem: pki.server_key_pem.clone().into_bytes(),
    };
    let metrics = Arc::new(Metrics::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(poshsm::server::serve(
        listener,
        hsm.clone(),
        tls,
        AccessConfig::default(),
        Some(metrics.clone()),
        2,
        async move {
            let _ = stop_rx.await;
        },
    ));
    let connect = |role: &str| {
        let (c, k) = pki.client(role).unwrap();
        let (c, k, ca, a) = (
            c.to_string(),
            k.to_string(),
            pki.ca_pem.clone(),
            addr.clone(),
        );
        async move {
            poshsm::cli::client::connect_pem(&a, ca.as_bytes(), c.as_bytes(), k.as_bytes())
                .await
                .unwrap()
        }
    };

    // Four connections, each used once: two per thread.
    let mut channels: Vec<Channel> = Vec::new();
    for role in ["admin", "auditor", "admin", "auditor"] {
        let ch = connect(role).await;
        let status = KeyAdminClient::new(ch.clone())
            .get_status(pb::GetStatusRequest {})
            .await
            .expect("the certificate's role reaches authorization through an I/O thread")
            .into_inner();
        assert_eq!(status.state, "OK");
        channels.push(ch);
    }
    let text = metrics.render();
    assert_eq!(per_thread(&text, "connections"), [2, 2], "{text}");
    assert_eq!(per_thread(&text, "accepted_total"), [2, 2], "{text}");

    // Role checks still apply: an auditor may not generate a key.
    let zmk = || pb::GenerateKeyRequest {
        key_type: pb::KeyType::Zmk as i32,
        algorithm: pb::KeyAlgorithm::Tdes2key as i32,
        alias: "io-zmk".into(),
        exportable: false,
    };
    let denied = KeyAdminClient::new(channels[1].clone())
        .generate_key(zmk())
        .await
        .expect_err("auditor cannot generate keys");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    // A durable call (store commit, blocking pool of the thread's runtime).
    let key = KeyAdminClient::new(channels[0].clone())
        .generate_key(zmk())
        .await
        .expect("admin generates a key")
        .into_inner();
    assert_eq!(key.alias, "io-zmk");
    assert_eq!(
        hsm.list_keys(None, 10, "").unwrap().0.len(),
        1,
        "the key is in the module"
    );

    // Closed connections are counted back.
    drop(channels);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let open = per_thread(&metrics.render(), "connections");
        if open == [0, 0] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still open: {open:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Shutdown with a connection open: every thread stops, `serve` returns.
    let idle = connect("admin").await;
    KeyAdminClient::new(idle.clone())
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap();
    assert_eq!(
        per_thread(&metrics.render(), "accepted_total")
            .iter()
            .sum::<u64>(),
        5
    );
    stop_tx.send(()).unwrap();
    let served = tokio::time::timeout(Duration::from_secs(20), server)
        .await
        .expect("serve returned after shutdown")
        .unwrap();
    assert!(served.is_ok(), "{:?}", served.err().map(|e| e.to_string()));
    let refused = tokio::net::TcpStream::connect(&addr).await;
    assert!(refused.is_err(), "the port is closed after shutdown");
    drop(idle);
}

/// Messages over 64 KiB (allowed by the config) are MACed on the blocking pool, batches yield every
/// 256 items: the answers are the terminal's and the network's, item by item.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_messages_and_large_batches_answer_as_short_ones_do() {
    let open = Limit {
        per_sec: 1e6,
        burst: 1e6,
    };
    let mut mock = MockHsm::start_with(HsmConfig {
        pin_guard: open,
        mac_failure_guard: open,
        // Above the 64 KiB default, so a long message takes the blocking pool.
        max_mac_message: 1 << 20,
        ..Default::default()
    })
    .await
    .unwrap();
    mock.sign_in_terminal().await.unwrap();
    let mut posp = mock.posp.clone();
    let terminal = || {
        Some(pb::generate_mac_request::KeySource::TerminalId(
            "MOCK0001".into(),
        ))
    };
    for len in [1_000usize, 100_000] {
        let message: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let mac = posp
            .generate_mac(pb::GenerateMacRequest {
                key_source: terminal(),
                algorithm: pb::MacAlgorithm::UnionpayEcb as i32,
                message: message.clone(),
                mac_length: 0,
            })
            .await
            .unwrap()
            .into_inner()
            .mac;
        assert_eq!(mac, mock.terminal.mac(&message).unwrap(), "{len} bytes");
        for (m, valid) in [(mac.clone(), true), (vec![0u8; mac.len()], false)] {
            let got = posp
                .verify_mac(pb::VerifyMacRequest {
                    key_source: Some(pb::verify_mac_request::KeySource::TerminalId(
                        "MOCK0001".into(),
                    )),
                    algorithm: pb::MacAlgorithm::UnionpayEcb as i32,
                    message: message.clone(),
                    mac: m,
                })
                .await
                .unwrap()
                .into_inner()
                .valid;
            assert_eq!(got, valid, "{len} bytes");
        }
    }

    // 600 PINs in one batch (three slices), each its own PIN and PAN.
    let pans: Vec<String> = (0..600).map(|i| format!("62284804{i:010}1")).collect();
    let pins: Vec<String> = (0..600)
        .map(|i| format!("{:04}", (i * 37) % 10_000))
        .collect();
    let items = pans
        .iter()
        .zip(&pins)
        .map(|(pan, pin)| pb::TranslatePinRequest {
            source: Some(pb::translate_pin_request::Source::TerminalId(
                "MOCK0001".into(),
            )),
            dest_key: Some(pb::KeyRef {
                r#ref: Some(pb::key_ref::Ref::Alias("mock-zpk".into())),
            }),
            pin_block: mock.terminal.pin_block(pin, pan).unwrap(),
            pan: pan.clone(),
            ..Default::default()
        })
        .collect();
    let results = posp
        .translate_pin_batch(pb::TranslatePinBatchRequest { items })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), 600);
    for ((r, pan), pin) in results.iter().zip(&pans).zip(&pins) {
        let Some(pb::translate_pin_result::Result::Ok(out)) = &r.result else {
            panic!("item for {pan} failed: {r:?}");
        };
        assert_eq!(
            &mock.network.pin(&out.pin_block, pan).unwrap(),
            pin,
            "{pan}"
        );
    }
    mock.stop().await;
}
