//! The per-terminal security trigger (安全触发): PIN translations and MAC
//! failures beyond the configured rate are refused with TERMINAL_THROTTLED,
//! each episode is audited once, and other terminals are unaffected.

mod common;

use common::reason;

use poshsm::hsm::guard::Limit;
use poshsm::hsm::*;
use poshsm::proto as pb;
use poshsm::testing::MockHsm;
use tonic::Code;

fn config(pin_burst: f64, mac_burst: f64) -> HsmConfig {
    HsmConfig {
        // Almost no refill during the test, so the burst is what counts.
        pin_guard: Limit {
            per_sec: 0.01,
            burst: pin_burst,
        },
        mac_failure_guard: Limit {
            per_sec: 0.01,
            burst: mac_burst,
        },
        ..Default::default()
    }
}

/// Audit events of throttling episodes so far.
fn throttle_events(mock: &MockHsm) -> usize {
    mock.hsm
        .audit_log(0, 1000)
        .unwrap()
        .into_iter()
        .filter(|e| e.outcome == "TERMINAL_THROTTLED")
        .count()
}

/// A UnionPay ECB MAC of `message` for the mock terminal to check.
fn verify_request(message: &[u8], mac: Vec<u8>) -> pb::VerifyMacRequest {
    pb::VerifyMacRequest {
        key_source: Some(pb::verify_mac_request::KeySource::TerminalId(
            "MOCK0001".into(),
        )),
        algorithm: pb::MacAlgorithm::UnionpayEcb as i32,
        message: message.to_vec(),
        mac,
    }
}

/// The mock terminal's PIN 1234 to the mock ZPK.
fn translate_request(mock: &MockHsm) -> pb::TranslatePinRequest {
    let pan = "6228480402564890018";
    pb::TranslatePinRequest {
        source: Some(pb::translate_pin_request::Source::TerminalId(
            "MOCK0001".into(),
        )),
        dest_key: Some(pb::KeyRef {
            r#ref: Some(pb::key_ref::Ref::Alias("mock-zpk".into())),
        }),
        pin_block: mock.terminal.pin_block("1234", pan).unwrap(),
        pan: pan.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_translations_beyond_the_burst_are_throttled_and_audited_once() {
    let mut mock = MockHsm::start_with(config(10.0, 50.0)).await.unwrap();
    let mut posp = mock.posp.clone();
    mock.sign_in_terminal().await.unwrap();
    let req = translate_request(&mock);
    for i in 0..10 {
        posp.translate_pin(req.clone())
            .await
            .unwrap_or_else(|e| panic!("call {i}: {e:?}"));
    }
    for _ in 0..5 {
        let s = posp.translate_pin(req.clone()).await.unwrap_err();
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(reason(&s), "TERMINAL_THROTTLED");
        assert!(
            !mock.hsm.has_deferred_audit(),
            "the refusal left after the server wrote its audit record"
        );
    }
    let throttles = throttle_events(&mock);
    assert_eq!(
        throttles, 1,
        "one audit event per episode, not per refused call"
    );
    // Another terminal's key is not affected: a ZPK -> ZPK translation is not a terminal's.
    let zpk_to_zpk = pb::TranslatePinRequest {
        source: Some(pb::translate_pin_request::Source::SourceKey(pb::KeyRef {
            r#ref: Some(pb::key_ref::Ref::Alias("mock-zpk".into())),
        })),
        pin_block: vec![0; 8],
        ..req.clone()
    };
    let s = posp.translate_pin(zpk_to_zpk).await.unwrap_err();
    assert_ne!(
        reason(&s),
        "TERMINAL_THROTTLED",
        "zone keys are not throttled per terminal"
    );
    mock.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_mac_failures_trip_the_trigger_for_that_terminal() {
    let mut mock = MockHsm::start_with(config(50.0, 5.0)).await.unwrap();
    let mut posp = mock.posp.clone();
    mock.sign_in_terminal().await.unwrap();
    let msg = b"0200 purchase".to_vec();
    let verify = |mac: Vec<u8>| verify_request(&msg, mac);
    for _ in 0..5 {
        assert!(
            !posp
                .verify_mac(verify(b"00000000".to_vec()))
                .await
                .unwrap()
                .into_inner()
                .valid
        );
    }
    let s = posp
        .verify_mac(verify(mock.terminal.mac(&msg).unwrap()))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::ResourceExhausted);
    assert_eq!(reason(&s), "TERMINAL_THROTTLED");
    assert!(
        !mock.hsm.has_deferred_audit(),
        "the refusal left after the server wrote its audit record"
    );
    let throttles = throttle_events(&mock);
    assert_eq!(throttles, 1);
    mock.stop().await;
}

/// Short messages are verified under the terminal cache's lock, long ones
/// (over 1 KiB) on cloned keys: both count on the one bucket of the terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mac_failures_on_short_and_long_messages_share_the_terminal_count() {
    let mut mock = MockHsm::start_with(config(50.0, 4.0)).await.unwrap();
    let mut posp = mock.posp.clone();
    mock.sign_in_terminal().await.unwrap();
    let short = b"0200 purchase".to_vec();
    let long: Vec<u8> = (0..3000).map(|i| (i % 251) as u8).collect();
    let (good_short, good_long) = (
        mock.terminal.mac(&short).unwrap(),
        mock.terminal.mac(&long).unwrap(),
    );
    for (m, mac, want) in [
        (&short, good_short.clone(), true),
        (&long, good_long.clone(), true),
        (&long, b"00000000".to_vec(), false),
        (&short, b"00000000".to_vec(), false),
        (&long, b"00000000".to_vec(), false),
        (&short, b"00000000".to_vec(), false),
    ] {
        let r = posp.verify_mac(verify_request(m, mac)).await.unwrap();
        assert_eq!(r.into_inner().valid, want, "{} bytes", m.len());
    }
    // Four failures, two on each path: the bucket is empty for both.
    for (m, mac) in [(&long, good_long), (&short, good_short)] {
        let s = posp.verify_mac(verify_request(m, mac)).await.unwrap_err();
        assert_eq!(reason(&s), "TERMINAL_THROTTLED", "{} bytes", m.len());
    }
    let throttles = throttle_events(&mock);
    assert_eq!(throttles, 1);
    mock.stop().await;
}

#[test]
fn the_guard_is_configured_from_the_config_file() {
    let c =
        poshsm::cli::serve::parse_config("[hsm.pin_guard]\nper_sec = 5.0\nburst = 7.0\n").unwrap();
    assert_eq!(
        c.hsm.pin_guard,
        Limit {
            per_sec: 5.0,
            burst: 7.0
        }
    );
    assert_eq!(
        c.hsm.mac_failure_guard,
        Limit {
            per_sec: 20.0,
            burst: 50.0
        },
        "defaults: 20/s, bursts of 50"
    );
    assert!(
        poshsm::cli::serve::parse_config("[hsm.pin_guard]\nrate = 5\n").is_err(),
        "unknown keys are errors"
    );
}

/// The hot path reaches a terminal's bucket through its cached entry; a new
/// sign-in (a new entry) or an eviction from the terminal cache must not hand
/// the terminal a fresh, full bucket.
#[test]
fn the_trigger_survives_a_new_sign_in_and_eviction_from_the_cache() {
    use poshsm::crypto::Algorithm;
    use poshsm::keys::{KeyType, Lmk};
    let hsm = Hsm::new(
        Lmk::generate(),
        poshsm::store::Store::temporary().unwrap(),
        HsmConfig {
            key_cache_capacity: 16,
            ..config(3.0, 50.0)
        },
    );
    let gen = |t: KeyType, alias: &str| {
        hsm.generate_key(
            "test",
            GenerateKey {
                key_type: t,
                algorithm: Algorithm::Tdes2,
                alias: alias.into(),
                exportable: false,
            },
        )
        .unwrap()
    };
    let tmk = gen(KeyType::Tmk, "tmk");
    gen(KeyType::Zpk, "zpk");
    let sign_in = |tid: &str| {
        hsm.sign_in(
            "posp",
            SignIn {
                source: SignInSource::Terminal(tid.into()),
                algorithm: None,
                include_tdk: false,
                layout: None,
                check_value_length: 0,
            },
        )
        .unwrap()
    };
    let ids: Vec<String> = (0..40).map(|i| format!("G{i:07}")).collect();
    for id in &ids {
        hsm.create_terminal(
            "admin",
            CreateTerminal {
                terminal_id: id.clone(),
                merchant_id: String::new(),
                tmk: Some(KeyRef::Id(tmk.key_id.clone())),
                tmk_algorithm: None,
            },
        )
        .unwrap();
        sign_in(id);
    }
    // A block that does not decode: the call still spends a token first.
    let translate = |tid: &str| {
        hsm.translate_pin(&TranslatePin {
            source: PinKeySource::Terminal(tid.into()),
            dest: KeyRef::Alias("zpk".into()),
            pin_block: vec![0x5a; 8],
            pan: "6228480402564890018".into(),
            source_format: poshsm::crypto::pinblock::PinBlockFormat::Iso0,
            dest_format: poshsm::crypto::pinblock::PinBlockFormat::Iso0,
        })
        .unwrap_err()
        .reason
    };
    for _ in 0..3 {
        assert_eq!(translate(&ids[0]), Reason::InvalidPinBlock);
    }
    // The refusal is answered without touching the store (the caller may be
    // an I/O thread serving other connections); its record waits for the
    // caller's `write_deferred_audit`, or for the next audit write or read.
    let commits = hsm.store_commit_groups();
    assert!(!hsm.has_deferred_audit());
    assert_eq!(translate(&ids[0]), Reason::TerminalThrottled);
    assert_eq!(
        hsm.store_commit_groups(),
        commits,
        "no commit while refusing"
    );
    assert!(hsm.has_deferred_audit(), "the episode's record is queued");
    let throttled = |h: &Hsm| {
        h.audit_log(0, 1000)
            .unwrap()
            .iter()
            .filter(|e| e.outcome == "TERMINAL_THROTTLED")
            .count()
    };
    assert_eq!(throttled(&hsm), 1, "reading the log writes it first");
    assert!(!hsm.has_deferred_audit());
    sign_in(&ids[0]);
    assert_eq!(
        translate(&ids[0]),
        Reason::TerminalThrottled,
        "reset by a sign-in"
    );
    // 39 other terminals through a 16-entry cache: ids[0]'s entry is evicted.
    assert!(hsm.terminal_cached(&ids[0]));
    for id in &ids[1..] {
        assert_eq!(translate(id), Reason::InvalidPinBlock);
    }
    assert!(!hsm.terminal_cached(&ids[0]), "the test no longer evicts");
    assert_eq!(
        translate(&ids[0]),
        Reason::TerminalThrottled,
        "reset by eviction"
    );
}

/// Every translation takes a token, refused or not: a terminal cannot probe
/// destination keys or formats for free, and a throttled terminal hears
/// TERMINAL_THROTTLED whatever else is wrong with its request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_translations_take_a_token_too() {
    let mut mock = MockHsm::start_with(config(2.0, 50.0)).await.unwrap();
    let mut posp = mock.posp.clone();
    mock.sign_in_terminal().await.unwrap();
    let good = translate_request(&mock);
    let to_iso1 = pb::TranslatePinRequest {
        dest_format: pb::PinBlockFormat::Iso1 as i32,
        ..good.clone()
    };
    let unknown_zpk = pb::TranslatePinRequest {
        dest_key: Some(pb::KeyRef {
            r#ref: Some(pb::key_ref::Ref::Alias("no-such-zpk".into())),
        }),
        ..good.clone()
    };
    let s = posp.translate_pin(to_iso1.clone()).await.unwrap_err();
    assert_eq!(reason(&s), "FORMAT_TRANSLATION_REFUSED");
    let s = posp.translate_pin(unknown_zpk.clone()).await.unwrap_err();
    assert_eq!(reason(&s), "UNKNOWN_KEY");
    for req in [good, to_iso1, unknown_zpk] {
        let s = posp.translate_pin(req).await.unwrap_err();
        assert_eq!(reason(&s), "TERMINAL_THROTTLED");
    }
    mock.stop().await;
}
