//! The security-API attack catalogue, replayed over the gRPC edge (MockHsm, real
//! mutual TLS). Each test is one attack from the literature (see SECURITY.md for
//! the references): it must be refused with the documented gRPC code and
//! `ErrorInfo` reason, and the refused call must leave the module's keys and
//! terminals exactly as they were.
//!
//! tests/core_refusals.rs replays the same rules against the transport-free core
//! with exact messages; this file is the auditor-facing catalogue over the wire.

mod common;

use common::reason;

use keyblocks::{Exportability, Header, KeyUsage, ModeOfUse, Version};
use poshsm::hsm::HsmConfig;
use poshsm::proto::{self as pb, crypto_client::CryptoClient, key_admin_client::KeyAdminClient};
use poshsm::testing::MockHsm;
use tonic::transport::Channel;
use tonic::Code;
use tonic_types::StatusExt;

type Admin = KeyAdminClient<Channel>;
type Posp = CryptoClient<Channel>;

const PAN: &str = "6228480402564890018";

/// The 4 weak and 12 semi-weak DES keys (FIPS 74 §3.6; NIST SP 800-67 Rev. 2 §3.3.2).
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

// ---- helpers --------------------------------------------------------------------------

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
    for b in v.iter_mut() {
        if b.count_ones() % 2 == 0 {
            *b ^= 1;
        }
    }
    v
}

/// Random DES-family key material with odd parity and no weak half.
fn odd(n: usize) -> Vec<u8> {
    loop {
        let k = with_odd_parity(random(n));
        let weak = k.chunks(8).any(|c| WEAK_DES_KEYS.iter().any(|w| h(w) == c));
        if !weak {
            return k;
        }
    }
}

fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.iter().zip(b).map(|(x, y)| x ^ y).collect()
}

/// Three odd-parity components whose XOR is exactly `key` (odd ⊕ odd ⊕ odd = odd).
fn split3(key: &[u8]) -> Vec<Vec<u8>> {
    let a = odd(key.len());
    let b = odd(key.len());
    let c = xor(&xor(key, &a), &b);
    vec![a, b, c]
}

/// Asserts a refusal: gRPC code, `ErrorInfo{reason, domain = "poshsm"}`, a message.
fn refused<T: std::fmt::Debug>(
    r: Result<tonic::Response<T>, tonic::Status>,
    code: Code,
    why: &str,
) -> tonic::Status {
    let s = match r {
        Ok(ok) => panic!("expected {why}, the call succeeded: {ok:?}"),
        Err(s) => s,
    };
    assert_eq!(s.code(), code, "expected {why}: {s:?}");
    assert_eq!(reason(&s), why, "{s:?}");
    let info = s.get_error_details().error_info().cloned().unwrap();
    assert_eq!(info.domain, "poshsm");
    assert!(!s.message().is_empty(), "{s:?}");
    s
}

fn by_id(id: &str) -> Option<pb::KeyRef> {
    Some(pb::KeyRef {
        r#ref: Some(pb::key_ref::Ref::KeyId(id.into())),
    })
}

fn by_alias(a: &str) -> Option<pb::KeyRef> {
    Some(pb::KeyRef {
        r#ref: Some(pb::key_ref::Ref::Alias(a.into())),
    })
}

fn by_block(b: &str) -> Option<pb::KeyRef> {
    Some(pb::KeyRef {
        r#ref: Some(pb::key_ref::Ref::KeyBlock(b.into())),
    })
}

/// Everything a refused call must not change: every key (id, state, alias,
/// version, exportability) and every terminal (with its key version).
#[derive(Debug, PartialEq)]
struct Snapshot {
    keys: Vec<(String, String, String, u32, bool)>,
    terminals: Vec<(String, String, u32)>,
    counts: (u64, u64),
}

async fn snapshot(admin: &mut Admin) -> Snapshot {
    let mut keys = Vec::new();
    let mut token = String::new();
    loop {
        let page = admin
            .list_keys(pb::ListKeysRequest {
                key_type: 0,
                page_size: 1000,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        keys.extend(
            page.keys
                .into_iter()
                .map(|k| (k.key_id, k.state, k.alias, k.version, k.exportable)),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let terminals = admin
        .list_terminals(pb::ListTerminalsRequest {
            page_size: 1000,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .terminals
        .into_iter()
        .map(|t| (t.terminal_id, t.tmk_key_id, t.key_version))
        .collect();
    let st = admin
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.state, "OK", "{st:?}");
    Snapshot {
        keys,
        terminals,
        counts: (st.keys, st.terminals),
    }
}

async fn components(
    admin: &mut Admin,
    key_type: pb::KeyType,
    algorithm: pb::KeyAlgorithm,
    parts: Vec<Vec<u8>>,
) -> Result<tonic::Response<pb::KeyInfo>, tonic::Status> {
    admin
        .import_key_components(pb::ImportKeyComponentsRequest {
            key_type: key_type as i32,
            algorithm: algorithm as i32,
            components: parts,
            ..Default::default()
        })
        .await
}

/// A TDES key of known clear value, formed from three components.
async fn form(
    admin: &mut Admin,
    key_type: pb::KeyType,
    clear: &[u8],
    alias: &str,
    exportable: bool,
) -> pb::KeyInfo {
    let algorithm = match clear.len() {
        8 => pb::KeyAlgorithm::Des,
        16 => pb::KeyAlgorithm::Tdes2key,
        _ => pb::KeyAlgorithm::Tdes3key,
    };
    admin
        .import_key_components(pb::ImportKeyComponentsRequest {
            key_type: key_type as i32,
            algorithm: algorithm as i32,
            components: split3(clear),
            alias: alias.into(),
            exportable,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

async fn generate(
    admin: &mut Admin,
    key_type: pb::KeyType,
    algorithm: pb::KeyAlgorithm,
    exportable: bool,
) -> pb::KeyInfo {
    admin
        .generate_key(pb::GenerateKeyRequest {
            key_type: key_type as i32,
            algorithm: algorithm as i32,
            alias: String::new(),
            exportable,
        })
        .await
        .unwrap()
        .into_inner()
}

async fn export(
    admin: &mut Admin,
    key: Option<pb::KeyRef>,
    kek: Option<pb::KeyRef>,
    format: &str,
) -> Result<tonic::Response<pb::ExportKeyResponse>, tonic::Status> {
    admin
        .export_key(pb::ExportKeyRequest {
            key,
            wrapping_key: kek,
            format: format.into(),
        })
        .await
}

async fn mac_with(
    posp: &mut Posp,
    key: Option<pb::KeyRef>,
    algorithm: pb::MacAlgorithm,
) -> Result<tonic::Response<pb::GenerateMacResponse>, tonic::Status> {
    posp.generate_mac(pb::GenerateMacRequest {
        key_source: key.map(pb::generate_mac_request::KeySource::Key),
        algorithm: algorithm as i32,
        message: b"0200 attack".to_vec(),
        mac_length: 0,
    })
    .await
}

async fn verify_with(
    posp: &mut Posp,
    key: Option<pb::KeyRef>,
    algorithm: pb::MacAlgorithm,
) -> Result<tonic::Response<pb::VerifyMacResponse>, tonic::Status> {
    posp.verify_mac(pb::VerifyMacRequest {
        key_source: key.map(pb::verify_mac_request::KeySource::Key),
        algorithm: algorithm as i32,
        message: b"0200 attack".to_vec(),
        mac: vec![0x30; 8],
    })
    .await
}

fn translate_req(
    source: pb::translate_pin_request::Source,
    dest: Option<pb::KeyRef>,
    pin_block: Vec<u8>,
    pan: &str,
) -> pb::TranslatePinRequest {
    pb::TranslatePinRequest {
        source: Some(source),
        dest_key: dest,
        pin_block,
        pan: pan.into(),
        source_format: 0,
        dest_format: 0,
    }
}

fn from_terminal(t: &str) -> pb::translate_pin_request::Source {
    pb::translate_pin_request::Source::TerminalId(t.into())
}

fn from_key(k: Option<pb::KeyRef>) -> pb::translate_pin_request::Source {
    pb::translate_pin_request::Source::SourceKey(k.unwrap())
}

/// Signs the mock's terminal in and loads field 62 into its PIN pad.
async fn signed_in(mock: &mut MockHsm) -> pb::SignInResponse {
    mock.sign_in_terminal().await.unwrap()
}

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

fn replace_at(s: &str, at: usize, with: &str) -> String {
    let out = format!("{}{}{}", &s[..at], with, &s[at + with.len()..]);
    assert_ne!(out, s, "a real change");
    out
}

// ---- component entry (Bond & Anderson 2001; ANSI X9.24-1) ------------------------------

/// Key-part XOR to null: identical components cancel to an all-zero (known) key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_part_xor_to_null_is_refused() {
    let mock = MockHsm::start().await.unwrap();
    let mut admin = mock.admin.clone();
    let before = snapshot(&mut admin).await;
    let c = odd(16);
    refused(
        components(
            &mut admin,
            pb::KeyType::Zmk,
            pb::KeyAlgorithm::Tdes2key,
            vec![c.clone(), c.clone()],
        )
        .await,
        Code::InvalidArgument,
        "DUPLICATE_COMPONENT",
    );
    // The duplicate hidden among others: c, d, c.
    let d = odd(16);
    refused(
        components(
            &mut admin,
            pb::KeyType::Zmk,
            pb::KeyAlgorithm::Tdes2key,
            vec![c.clone(), d.clone(), c.clone()],
        )
        .await,
        Code::InvalidArgument,
        "DUPLICATE_COMPONENT",
    );
    // Four distinct parts that still cancel: a ⊕ b ⊕ e ⊕ (a ⊕ b ⊕ e) = 0.
    let (a, b, e) = (odd(16), odd(16), odd(16));
    let last = xor(&xor(&a, &b), &e);
    refused(
        components(
            &mut admin,
            pb::KeyType::Zmk,
            pb::KeyAlgorithm::Tdes2key,
            vec![a, b, e, last],
        )
        .await,
        Code::InvalidArgument,
        "WEAK_KEY",
    );
    assert_eq!(snapshot(&mut admin).await, before, "nothing was stored");
    mock.stop().await;
}

/// A "key" from one component is a clear key known to one person.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_from_a_single_component_is_refused() {
    let mock = MockHsm::start().await.unwrap();
    let mut admin = mock.admin.clone();
    let before = snapshot(&mut admin).await;
    for parts in [vec![odd(16)], vec![]] {
        refused(
            components(
                &mut admin,
                pb::KeyType::Zmk,
                pb::KeyAlgorithm::Tdes2key,
                parts,
            )
            .await,
            Code::InvalidArgument,
            "TOO_FEW_COMPONENTS",
        );
    }
    assert_eq!(snapshot(&mut admin).await, before);
    mock.stop().await;
}

/// Weak and semi-weak DES keys (FIPS 74) as either half of a TDES key, and TDES
/// keys with equal halves (which collapse to single DES), formed from two
/// components whose XOR has even parity and becomes the weak key only after the
/// module's parity adjustment — the check must come after the adjustment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weak_and_semi_weak_keys_formed_from_components_are_refused_after_parity_adjustment() {
    let mock = MockHsm::start().await.unwrap();
    let mut admin = mock.admin.clone();
    let before = snapshot(&mut admin).await;
    let good = odd(8);
    let mut keys: Vec<Vec<u8>> = Vec::new();
    for w in WEAK_DES_KEYS {
        keys.push([h(w), good.clone()].concat());
        keys.push([good.clone(), h(w)].concat());
    }
    keys.push([good.clone(), good.clone()].concat());
    for key in keys {
        // c1 ⊕ c2 = key with every parity bit flipped: even parity, = key after adjustment.
        let c1 = odd(16);
        let c2 = xor(&xor(&c1, &key), &[0x01; 16]);
        assert!(c2.iter().all(|b| b.count_ones() % 2 == 1));
        assert!(xor(&c1, &c2).iter().all(|b| b.count_ones() % 2 == 0));
        refused(
            components(
                &mut admin,
                pb::KeyType::Zmk,
                pb::KeyAlgorithm::Tdes2key,
                vec![c1, c2],
            )
            .await,
            Code::InvalidArgument,
            "WEAK_KEY",
        );
    }
    assert_eq!(snapshot(&mut admin).await, before);
    mock.stop().await;
}

/// A component with even parity in one byte: usually a typing error by a
/// custodian, always refused (ANSI X9.24-1 component rules).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_with_bad_parity_is_refused() {
    let mock = MockHsm::start().await.unwrap();
    let mut admin = mock.admin.clone();
    let before = snapshot(&mut admin).await;
    let mut bad = odd(16);
    bad[7] ^= 0x01;
    for parts in [
        vec![odd(16), bad.clone()],
        vec![bad.clone(), odd(16), odd(16)],
    ] {
        refused(
            components(
                &mut admin,
                pb::KeyType::Zmk,
                pb::KeyAlgorithm::Tdes2key,
                parts,
            )
            .await,
            Code::InvalidArgument,
            "BAD_PARITY",
        );
    }
    assert_eq!(snapshot(&mut admin).await, before);
    mock.stop().await;
}

/// Clear key parts are entered by administrators only (the posp and auditor
/// certificates are refused, and the denial is audited).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_component_entry_by_a_non_admin_is_refused_and_audited() {
    let mock = MockHsm::start().await.unwrap();
    let mut admin = mock.admin.clone();
    let before = snapshot(&mut admin).await;
    for role in ["posp", "auditor"] {
        let mut other = KeyAdminClient::new(mock.channel(role).await.unwrap());
        refused(
            components(
                &mut other,
                pb::KeyType::Zmk,
                pb::KeyAlgorithm::Tdes2key,
                split3(&odd(16)),
            )
            .await,
            Code::PermissionDenied,
            "PERMISSION_DENIED",
        );
        let events = mock.hsm.audit_log(0, 10_000).unwrap();
        assert!(
            events.iter().any(|e| e.operation == "ImportKeyComponents"
                && e.outcome == "PERMISSION_DENIED"
                && e.actor == role),
            "the denial of {role} is audited"
        );
    }
    assert_eq!(snapshot(&mut admin).await, before);
    mock.stop().await;
}

// ---- key-type confusion (Bond 2001; TR-31 key binding) ----------------------------------

/// A PIN key (or a PIK delivered at sign-in) used as a key-encryption key, to
/// export, import, be a terminal's TMK or drive a stateless sign-in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_key_cannot_be_used_as_a_wrapping_key() {
    let mut mock = MockHsm::start().await.unwrap();
    let s = signed_in(&mut mock).await;
    let mut admin = mock.admin.clone();
    let mut posp = mock.posp.clone();
    let tmk = generate(
        &mut admin,
        pb::KeyType::Tmk,
        pb::KeyAlgorithm::Tdes2key,
        true,
    )
    .await;
    let zpk_clear = odd(16);
    let zpk = form(&mut admin, pb::KeyType::Zpk, &zpk_clear, "", false).await;
    let before = snapshot(&mut admin).await;
    let pik = s.pik.as_ref().unwrap();
    for wrapping in [
        by_alias("mock-zpk"),
        by_id(&zpk.key_id),
        by_block(&pik.key_block),
    ] {
        for format in ["TR31", "X917_ECB"] {
            refused(
                export(&mut admin, by_id(&tmk.key_id), wrapping.clone(), format).await,
                Code::FailedPrecondition,
                "KEY_USAGE_MISMATCH",
            );
        }
    }
    // Import "under" the ZPK: the attacker knows the ZPK-encrypted value, not the key.
    let mut ct = odd(16);
    ct.reverse();
    for wrapped in [
        pb::import_key_request::Wrapped::X917Ecb(ct),
        pb::import_key_request::Wrapped::Tr31KeyBlock(tr31_under(
            &zpk_clear,
            KeyUsage::K0,
            ModeOfUse::B,
            &odd(16),
        )),
    ] {
        refused(
            admin
                .import_key(pb::ImportKeyRequest {
                    key_type: pb::KeyType::Tmk as i32,
                    algorithm: pb::KeyAlgorithm::Tdes2key as i32,
                    wrapping_key: by_id(&zpk.key_id),
                    wrapped: Some(wrapped),
                    ..Default::default()
                })
                .await,
            Code::FailedPrecondition,
            "KEY_USAGE_MISMATCH",
        );
    }
    // A PIN key as a terminal's TMK, or as the TMK of a stateless sign-in.
    refused(
        admin
            .create_terminal(pb::CreateTerminalRequest {
                terminal_id: "ATTACK01".into(),
                tmk: by_id(&zpk.key_id),
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
        "KEY_USAGE_MISMATCH",
    );
    refused(
        posp.sign_in(pb::SignInRequest {
            terminal_id: "ATTACK01".into(),
            tmk: by_block(&pik.key_block),
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
        "KEY_USAGE_MISMATCH",
    );
    assert_eq!(snapshot(&mut admin).await, before);
    mock.stop().await;
}

/// TR-31 binds the usage to the key: a block whose header says MAC key (or KEK,
/// or data key) cannot be imported as a PIN key, and so on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tr31_usage_that_contradicts_the_requested_type_is_refused() {
    let mock = MockHsm::start().await.unwrap();
    let mut admin = mock.admin.clone();
    let zmk_clear = odd(16);
    let zmk = form(&mut admin, pb::KeyType::Zmk, &zmk_clear, "", false).await;
    let before = snapshot(&mut admin).await;
    let key = odd(16);
    for (usage, mode, asked) in [
        (KeyUsage::M3, ModeOfUse::C, pb::KeyType::Zpk),
        (KeyUsage::P0, ModeOfUse::E, pb::KeyType::Zak),
        (KeyUsage::K0, ModeOfUse::B, pb::KeyType::Zpk),
        (KeyUsage::D0, ModeOfUse::B, pb::KeyType::Kek),
        (KeyUsage::P0, ModeOfUse::B, pb::KeyType::Tmk),
        (KeyUsage::M3, ModeOfUse::C, pb::KeyType::Zek),
    ] {
        refused(
            admin
                .import_key(pb::ImportKeyRequest {
                    key_type: asked as i32,
                    wrapping_key: by_id(&zmk.key_id),
                    wrapped: Some(pb::import_key_request::Wrapped::Tr31KeyBlock(tr31_under(
                        &zmk_clear, usage, mode, &key,
                    ))),
                    ..Default::default()
                })
                .await,
            Code::FailedPrecondition,
            "KEY_USAGE_MISMATCH",
        );
    }
    assert_eq!(snapshot(&mut admin).await, before);
    // The same key with the matching usage is accepted: the block itself was fine.
    admin
        .import_key(pb::ImportKeyRequest {
            key_type: pb::KeyType::Zpk as i32,
            wrapping_key: by_id(&zmk.key_id),
            wrapped: Some(pb::import_key_request::Wrapped::Tr31KeyBlock(tr31_under(
                &zmk_clear,
                KeyUsage::P0,
                ModeOfUse::E,
                &key,
            ))),
            ..Default::default()
        })
        .await
        .unwrap();
    mock.stop().await;
}

/// A KEK used as a MAC key would make the MAC function an encryption oracle for
/// the KEK (a MAC over a chosen block is the block enciphered under the key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_encryption_key_cannot_mac() {
    let mock = MockHsm::start().await.unwrap();
    let mut admin = mock.admin.clone();
    let mut posp = mock.posp.clone();
    let zmk = form(&mut admin, pb::KeyType::Zmk, &odd(16), "", false).await;
    let kek = generate(
        &mut admin,
        pb::KeyType::Kek,
        pb::KeyAlgorithm::Aes256,
        false,
    )
    .await;
    let before = snapshot(&mut admin).await;
    for key in [
        by_alias("mock-tmk"),
        by_id(&zmk.key_id),
        by_block(&zmk.key_block),
        by_id(&kek.key_id),
    ] {
        for alg in [
            pb::MacAlgorithm::Iso9797Alg1,
            pb::MacAlgorithm::Iso9797Alg3,
            pb::MacAlgorithm::UnionpayEcb,
            pb::MacAlgorithm::Cmac,
        ] {
            refused(
                mac_with(&mut posp, key.clone(), alg).await,
                Code::FailedPrecondition,
                "KEY_USAGE_MISMATCH",
            );
            refused(
                verify_with(&mut posp, key.clone(), alg).await,
                Code::FailedPrecondition,
                "KEY_USAGE_MISMATCH",
            );
        }
    }
    assert_eq!(snapshot(&mut admin).await, before);
    mock.stop().await;
}

/// A PIN key used as a MAC key: an encryption oracle for PIN blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_key_cannot_mac() {
    let mut mock = MockHsm::start().await.unwrap();
    let s = signed_in(&mut mock).await;
    let mut admin = mock.admin.clone();
    let mut posp = mock.posp.clone();
    let before = snapshot(&mut admin).await;
    let pik = s.pik.unwrap();
    for key in [
        by_alias("mock-zpk"),
        by_id(&pik.key_id),
        by_block(&pik.key_block),
    ] {
        for alg in [
            pb::MacAlgorithm::Iso9797Alg1,
            pb::MacAlgorithm::Iso9797Alg3,
            pb::MacAlgorithm::UnionpayEcb,
            pb::MacAlgorithm::Cmac,
        ] {
            refused(
                mac_with(&mut posp, key.clone(), alg).await,
                Code::FailedPrecondition,
                "KEY_USAGE_MISMATCH",
            );
            refused(
                verify_with(&mut posp, key.clone(), alg).await,
                Code::FailedPrecondition,
                "KEY_USAGE_MISMATCH",
            );
        }
    }
    assert_eq!(snapshot(&mut admin).await, before);
    mock.stop().await;
}

/// A MAC key (or a data key) used for PIN blocks, as source or destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mac_key_cannot_be_used_for_pins() {
    let mut mock = MockHsm::start().await.unwrap();
    let s = signed_in(&mut mock).await;
    let mut admin = mock.admin.clone();
    let mut posp = mock.posp.clone();
    let before = snapshot(&mut admin).await;
    let block = mock.terminal.pin_block("1234", PAN).unwrap();
    let mak = s.mak.unwrap();
    let tdk = s.tdk.unwrap();
    for source in [
        from_key(by_alias("mock-zak")),
        from_key(by_block(&mak.key_block)),
        from_key(by_id(&mak.key_id)),
        from_key(by_block(&tdk.key_block)),
    ] {
        refused(
            posp.translate_pin(translate_req(
                source,
                by_alias("mock-zpk"),
                block.clone(),
                PAN,
            ))
            .await,
            Code::FailedPrecondition,
            "KEY_USAGE_MISMATCH",
        );
    }
    for dest in [
        by_alias("mock-zak"),
        by_block(&mak.key_block),
        by_block(&tdk.key_block),
        by_alias("mock-tmk"),
    ] {
        refused(
            posp.translate_pin(translate_req(
                from_terminal("MOCK0001"),
                dest,
                block.clone(),
                PAN,
            ))
            .await,
            Code::FailedPrecondition,
            "KEY_USAGE_MISMATCH",
        );
    }
    // The PIK itself is not a destination either: PINs leave only under a ZPK.
    refused(
        posp.translate_pin(translate_req(
            from_terminal("MOCK0001"),
            by_id(&s.pik.unwrap().key_id),
            block.clone(),
            PAN,
        ))
        .await,
        Code::FailedPrecondition,
        "KEY_USAGE_MISMATCH",
    );
    assert_eq!(snapshot(&mut admin).await, before);
    mock.stop().await;
}

/// A TMK and a ZMK are both K0 in TR-31; the authenticated type block keeps them apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zmk_cannot_stand_in_for_a_tmk() {
    let mock = MockHsm::start().await.unwrap();
    let mut admin = mock.admin.clone();
    let mut posp = mock.posp.clone();
    let zmk = form(&mut admin, pb::KeyType::Zmk, &odd(16), "", false).await;
    let before = snapshot(&mut admin).await;
    refused(
        admin
            .create_terminal(pb::CreateTerminalRequest {
                terminal_id: "ATTACK02".into(),
                tmk: by_id(&zmk.key_id),
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
        "KEY_USAGE_MISMATCH",
    );
    refused(
        posp.sign_in(pb::SignInRequest {
            terminal_id: "ATTACK02".into(),
            tmk: by_block(&zmk.key_block),
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
        "KEY_USAGE_MISMATCH",
    );
    assert_eq!(snapshot(&mut admin).await, before);
    mock.stop().await;
}

// ---- export (Clulow 2003 wrap/decrypt; ANSI X9.24-1 key hierarchy) -------------------

/// A KEK exported under a working key: the working key's holder (anyone who can
/// decrypt data or PINs with it, or who received it in the clear at a terminal)
/// would learn the KEK and every key ever sent under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kek_is_not_exported_under_a_working_key() {
    let mut mock = MockHsm::start().await.unwrap();
    let s = signed_in(&mut mock).await;
    let mut admin = mock.admin.clone();
    let kek = generate(
        &mut admin,
        pb::KeyType::Kek,
        pb::KeyAlgorithm::Tdes2key,
        true,
    )
    .await;
    let tmk = generate(
        &mut admin,
        pb::KeyType::Tmk,
        pb::KeyAlgorithm::Tdes2key,
        true,
    )
    .await;
    let zek = generate(
        &mut admin,
        pb::KeyType::Zek,
        pb::KeyAlgorithm::Tdes2key,
        false,
    )
    .await;
    let before = snapshot(&mut admin).await;
    for key in [by_id(&kek.key_id), by_id(&tmk.key_id)] {
        for under in [
            by_alias("mock-zpk"),
            by_alias("mock-zak"),
            by_id(&zek.key_id),
            by_block(&s.pik.as_ref().unwrap().key_block),
            by_block(&s.mak.as_ref().unwrap().key_block),
            by_block(&s.tdk.as_ref().unwrap().key_block),
        ] {
            for format in ["TR31", "X917_ECB"] {
                refused(
                    export(&mut admin, key.clone(), under.clone(), format).await,
                    Code::FailedPrecondition,
                    "KEY_USAGE_MISMATCH",
                );
            }
        }
    }
    assert_eq!(snapshot(&mut admin).await, before);
    // Control: under a KEK the same export works.
    export(&mut admin, by_id(&tmk.key_id), by_id(&kek.key_id), "TR31")
        .await
        .unwrap();
    mock.stop().await;
}

/// A key exported under itself is E_K(K): with a known-plaintext relation it is a
/// self-describing ciphertext (Clulow's PKCS #11 wrap-with-self), and if the key
/// can decrypt, the export is the clear key. Refused however the key is named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_not_exported_under_itself() {
    let mock = MockHsm::start().await.unwrap();
    let mut admin = mock.admin.clone();
    let kek = admin
        .generate_key(pb::GenerateKeyRequest {
            key_type: pb::KeyType::Kek as i32,
            algorithm: pb::KeyAlgorithm::Tdes2key as i32,
            alias: "self-kek".into(),
            exportable: true,
        })
        .await
        .unwrap()
        .into_inner();
    let before = snapshot(&mut admin).await;
    let names = [
        by_id(&kek.key_id),
        by_alias("self-kek"),
        by_block(&kek.key_block),
    ];
    for key in &names {
        for under in &names {
            for format in ["TR31", "X917_ECB"] {
                refused(
                    export(&mut admin, key.clone(), under.clone(), format).await,
                    Code::FailedPrecondition,
                    "KEY_USAGE_MISMATCH",
                );
            }
        }
    }
    // The same key material stored twice (a copy formed from components) is "itself" too.
    let clear = odd(16);
    let a = form(&mut admin, pb::KeyType::Kek, &clear, "", true).await;
    let b = form(&mut admin, pb::KeyType::Kek, &clear, "", true).await;
    assert_eq!(a.kcv, b.kcv);
    let before2 = snapshot(&mut admin).await;
    refused(
        export(&mut admin, by_id(&a.key_id), by_id(&b.key_id), "X917_ECB").await,
        Code::FailedPrecondition,
        "KEY_USAGE_MISMATCH",
    );
    assert_eq!(snapshot(&mut admin).await, before2);
    assert_ne!(before, before2);
    mock.stop().await;
}

/// Export only of exportable keys, only under KEKs of at least equal strength.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_exportable_keys_and_weaker_keks_are_refused() {
    let mock = MockHsm::start().await.unwrap();
    let mut admin = mock.admin.clone();
    let kek = generate(
        &mut admin,
        pb::KeyType::Kek,
        pb::KeyAlgorithm::Tdes2key,
        false,
    )
    .await;
    let strong = generate(&mut admin, pb::KeyType::Zpk, pb::KeyAlgorithm::Aes256, true).await;
    let before = snapshot(&mut admin).await;
    refused(
        export(&mut admin, by_alias("mock-zpk"), by_id(&kek.key_id), "").await,
        Code::FailedPrecondition,
        "NOT_EXPORTABLE",
    );
    refused(
        export(&mut admin, by_id(&strong.key_id), by_id(&kek.key_id), "").await,
        Code::FailedPrecondition,
        "WRAPPING_KEY_TOO_WEAK",
    );
    // A TR-31 block marked non-exportable does not become exportable on import.
    let zmk_clear = odd(16);
    let zmk = form(&mut admin, pb::KeyType::Zmk, &zmk_clear, "", false).await;
    let header = Header::new(
        Version::B,
        KeyUsage::P0,
        keyblocks::Algorithm::TDES,
        ModeOfUse::E,
        Exportability::NonExportable,
    );
    let block = keyblocks::wrap(&zmk_clear, &header, &odd(16), None).unwrap();
    let imported = admin
        .import_key(pb::ImportKeyRequest {
            key_type: pb::KeyType::Zpk as i32,
            wrapping_key: by_id(&zmk.key_id),
            wrapped: Some(pb::import_key_request::Wrapped::Tr31KeyBlock(block)),
            exportable: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!imported.exportable, "the block's N wins over the request");
    refused(
        export(&mut admin, by_id(&imported.key_id), by_id(&kek.key_id), "").await,
        Code::FailedPrecondition,
        "NOT_EXPORTABLE",
    );
    let after = snapshot(&mut admin).await;
    assert_eq!(after.keys.len(), before.keys.len() + 2, "only zmk + import");
    mock.stop().await;
}

// ---- PIN translation (Clulow 2003; Berkman & Ostrovsky 2007; ISO 9564-1) -------------

/// Translation into ISO format 1 drops the PAN binding: with it, the attacker can
/// re-enter the block as ISO 0 under chosen PANs and read digits off the
/// validity answers (Clulow). Refused from every PAN-bound format, also in batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn translation_to_iso1_is_refused() {
    let mut mock = MockHsm::start().await.unwrap();
    signed_in(&mut mock).await;
    let mut posp = mock.posp.clone();
    let mut admin = mock.admin.clone();
    let before = snapshot(&mut admin).await;
    let block = mock.terminal.pin_block("1234", PAN).unwrap();
    for source_format in [
        pb::PinBlockFormat::Unspecified,
        pb::PinBlockFormat::Iso0,
        pb::PinBlockFormat::Iso3,
        pb::PinBlockFormat::Iso4,
    ] {
        let req = pb::TranslatePinRequest {
            source_format: source_format as i32,
            dest_format: pb::PinBlockFormat::Iso1 as i32,
            ..translate_req(
                from_terminal("MOCK0001"),
                by_alias("mock-zpk"),
                block.clone(),
                PAN,
            )
        };
        refused(
            posp.translate_pin(req.clone()).await,
            Code::FailedPrecondition,
            "FORMAT_TRANSLATION_REFUSED",
        );
        let b = posp
            .translate_pin_batch(pb::TranslatePinBatchRequest { items: vec![req] })
            .await
            .unwrap()
            .into_inner();
        match &b.results[0].result {
            Some(pb::translate_pin_result::Result::Error(e)) => {
                assert_eq!(e.reason, "FORMAT_TRANSLATION_REFUSED");
                assert_eq!(e.code, Code::FailedPrecondition as u32);
            }
            other => panic!("{other:?}"),
        }
    }
    // Control: ISO 0 → ISO 0 and ISO 0 → ISO 3 keep the PAN binding and work.
    for dest in [pb::PinBlockFormat::Iso0, pb::PinBlockFormat::Iso3] {
        posp.translate_pin(pb::TranslatePinRequest {
            dest_format: dest as i32,
            ..translate_req(
                from_terminal("MOCK0001"),
                by_alias("mock-zpk"),
                block.clone(),
                PAN,
            )
        })
        .await
        .unwrap();
    }
    assert_eq!(snapshot(&mut admin).await, before);
    mock.stop().await;
}

/// The PIN-translation oracle surface: every way a block can fail to decode
/// (control field, PIN length, a non-decimal digit, a wrong fill digit, a wrong
/// PAN) gives one reason *and one message*, so an attacker who alters PANs or
/// blocks learns one bit per call at most — and the security trigger caps the calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_block_decode_failures_are_indistinguishable() {
    use poshsm::crypto::{Algorithm, Cipher};
    let mock = MockHsm::start().await.unwrap();
    let mut admin = mock.admin.clone();
    let mut posp = mock.posp.clone();
    let tpk_clear = odd(16);
    let tpk = form(&mut admin, pb::KeyType::Tpk, &tpk_clear, "", false).await;
    let tpk_cipher = Cipher::new(Algorithm::Tdes2, &tpk_clear).unwrap();
    let enc = |clear: Vec<u8>| {
        let mut b = clear;
        tpk_cipher.ecb_encrypt(&mut b).unwrap();
        b
    };
    // PAN 6228480402564890018 → PAN field 0000‖040256489001 (the 12 rightmost
    // digits without the check digit, ISO 9564-1 format 0).
    let pan_field = h("0000040256489001");
    let mut messages = std::collections::BTreeSet::new();
    let probe = |pin_block: Vec<u8>, pan: &'static str| {
        let mut posp = posp.clone();
        let tpk_id = tpk.key_id.clone();
        async move {
            let s = refused(
                posp.translate_pin(translate_req(
                    from_key(by_id(&tpk_id)),
                    by_alias("mock-zpk"),
                    pin_block,
                    pan,
                ))
                .await,
                Code::InvalidArgument,
                "INVALID_PIN_BLOCK",
            );
            s.message().to_string()
        }
    };
    for pin_field in [
        "96975310FFFFFFFF", // control field 9
        "03975FFFFFFFFFFF", // PIN length 3
        "0D975310975310FF", // PIN length 13
        "0697531AFFFFFFFF", // a non-decimal digit
        "06975310FFFFFFFE", // a wrong fill digit
    ] {
        let block = enc(xor(&h(pin_field), &pan_field));
        messages.insert(probe(block, PAN).await);
    }
    // A genuine block decoded under another PAN (Berkman & Ostrovsky's PAN modification).
    let good = enc(xor(&h("06975310FFFFFFFF"), &pan_field));
    messages.insert(probe(good.clone(), "6228480402564899991").await);
    assert_eq!(
        messages.len(),
        1,
        "one message for every decode failure: {messages:?}"
    );
    let m = messages.into_iter().next().unwrap();
    assert!(!m.contains("975310"), "{m}");
    // Control: the genuine block under its PAN decodes.
    posp.translate_pin(translate_req(
        from_key(by_id(&tpk.key_id)),
        by_alias("mock-zpk"),
        good,
        PAN,
    ))
    .await
    .unwrap();
    mock.stop().await;
}

/// Berkman & Ostrovsky's attacks need many translation calls per PIN; the
/// per-terminal security trigger stops a probing terminal after its burst —
/// then even its genuine requests are held back — and audits the episode once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pan_modification_probes_trip_the_security_trigger() {
    let config = HsmConfig {
        pin_guard: poshsm::hsm::guard::Limit {
            per_sec: 0.01,
            burst: 8.0,
        },
        ..Default::default()
    };
    let mut mock = MockHsm::start_with(config).await.unwrap();
    signed_in(&mut mock).await;
    let mut posp = mock.posp.clone();
    let block = mock.terminal.pin_block("4321", PAN).unwrap();
    let mut throttled = 0;
    for i in 0..20u32 {
        // The attacker varies the PAN's last digits and watches the answers.
        let pan = format!("62284804025648{:05}", 90018 + i * 7);
        match posp
            .translate_pin(translate_req(
                from_terminal("MOCK0001"),
                by_alias("mock-zpk"),
                block.clone(),
                &pan,
            ))
            .await
        {
            Ok(_) => {}
            Err(s) if reason(&s) == "TERMINAL_THROTTLED" => {
                assert_eq!(s.code(), Code::ResourceExhausted);
                throttled += 1;
            }
            Err(s) => assert_eq!(reason(&s), "INVALID_PIN_BLOCK", "{s:?}"),
        }
    }
    assert_eq!(
        throttled, 12,
        "8 calls in the burst, the other 12 throttled"
    );
    refused(
        posp.translate_pin(translate_req(
            from_terminal("MOCK0001"),
            by_alias("mock-zpk"),
            block,
            PAN,
        ))
        .await,
        Code::ResourceExhausted,
        "TERMINAL_THROTTLED",
    );
    let episodes = mock
        .hsm
        .audit_log(0, 10_000)
        .unwrap()
        .into_iter()
        .filter(|e| e.outcome == "TERMINAL_THROTTLED")
        .count();
    assert_eq!(episodes, 1);
    mock.stop().await;
}

// ---- LMK key blocks (TR-31 key binding; the KP LMK identity) --------------------------

/// An LMK key block whose header is edited — exportability N→E, usage M→P, the
/// authenticated key-type block TAK→TPK, the key-version field — fails its MAC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_lmk_key_block_header_is_refused() {
    let mut mock = MockHsm::start().await.unwrap();
    let s = signed_in(&mut mock).await;
    let mut admin = mock.admin.clone();
    let mut posp = mock.posp.clone();
    let kek = generate(
        &mut admin,
        pb::KeyType::Kek,
        pb::KeyAlgorithm::Aes256,
        false,
    )
    .await;
    let zak = admin
        .get_key(by_alias("mock-zak").unwrap())
        .await
        .unwrap()
        .into_inner();
    let before = snapshot(&mut admin).await;
    let mak = s.mak.unwrap().key_block;
    // The untampered blocks work (control).
    mac_with(&mut posp, by_block(&mak), pb::MacAlgorithm::Iso9797Alg1)
        .await
        .unwrap();
    mac_with(
        &mut posp,
        by_block(&zak.key_block),
        pb::MacAlgorithm::Iso9797Alg3,
    )
    .await
    .unwrap();
    for block in [&mak, &zak.key_block] {
        assert_eq!(&block[..1], "D", "an LMK block is TR-31 version D");
        assert_eq!(&block[11..12], "N");
        let exportable = replace_at(block, 11, "E");
        refused(
            export(&mut admin, by_block(&exportable), by_id(&kek.key_id), "").await,
            Code::InvalidArgument,
            "INVALID_KEY_BLOCK",
        );
        let as_pin = replace_at(block, 5, "P0");
        refused(
            posp.translate_pin(translate_req(
                from_key(by_block(&as_pin)),
                by_alias("mock-zpk"),
                vec![0; 8],
                PAN,
            ))
            .await,
            Code::InvalidArgument,
            "INVALID_KEY_BLOCK",
        );
        let versioned = replace_at(block, 9, "99");
        refused(
            mac_with(
                &mut posp,
                by_block(&versioned),
                pb::MacAlgorithm::Iso9797Alg1,
            )
            .await,
            Code::InvalidArgument,
            "INVALID_KEY_BLOCK",
        );
    }
    // The key type lives in an authenticated optional block: TAK → TPK would
    // turn the MAK into a PIN key (both sides of a MAC/PIN confusion).
    let at = mak.find("TAK").expect("the key-type block");
    let as_tpk = replace_at(&mak, at, "TPK");
    refused(
        posp.translate_pin(translate_req(
            from_key(by_block(&as_tpk)),
            by_alias("mock-zpk"),
            vec![0; 8],
            PAN,
        ))
        .await,
        Code::InvalidArgument,
        "INVALID_KEY_BLOCK",
    );
    assert_eq!(snapshot(&mut admin).await, before);
    mock.stop().await;
}

/// A key block from another module (another LMK) is refused with WRONG_LMK,
/// however it is presented: as a MAC key, a PIN key, a stateless TMK, a TMK to
/// store, or a key to export.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_block_from_another_modules_lmk_is_refused() {
    let mock = MockHsm::start().await.unwrap();
    let mut other = MockHsm::start().await.unwrap();
    let theirs = signed_in(&mut other).await;
    let mut their_admin = other.admin.clone();
    let their_zak = their_admin
        .get_key(by_alias("mock-zak").unwrap())
        .await
        .unwrap()
        .into_inner();
    let their_tmk = their_admin
        .get_key(by_alias("mock-tmk").unwrap())
        .await
        .unwrap()
        .into_inner();
    let their_kek = generate(
        &mut their_admin,
        pb::KeyType::Kek,
        pb::KeyAlgorithm::Tdes2key,
        true,
    )
    .await;
    // Control: the blocks work on their own module.
    mac_with(
        &mut other.posp.clone(),
        by_block(&their_zak.key_block),
        pb::MacAlgorithm::Iso9797Alg3,
    )
    .await
    .unwrap();

    let mut admin = mock.admin.clone();
    let mut posp = mock.posp.clone();
    let kek = generate(
        &mut admin,
        pb::KeyType::Kek,
        pb::KeyAlgorithm::Aes256,
        false,
    )
    .await;
    let before = snapshot(&mut admin).await;
    refused(
        mac_with(
            &mut posp,
            by_block(&their_zak.key_block),
            pb::MacAlgorithm::Iso9797Alg3,
        )
        .await,
        Code::InvalidArgument,
        "WRONG_LMK",
    );
    refused(
        posp.translate_pin(translate_req(
            from_key(by_block(&theirs.pik.unwrap().key_block)),
            by_alias("mock-zpk"),
            vec![0; 8],
            PAN,
        ))
        .await,
        Code::InvalidArgument,
        "WRONG_LMK",
    );
    refused(
        posp.sign_in(pb::SignInRequest {
            terminal_id: "FOREIGN1".into(),
            tmk: by_block(&their_tmk.key_block),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "WRONG_LMK",
    );
    refused(
        admin
            .create_terminal(pb::CreateTerminalRequest {
                terminal_id: "FOREIGN1".into(),
                tmk: by_block(&their_tmk.key_block),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "WRONG_LMK",
    );
    refused(
        export(
            &mut admin,
            by_block(&their_kek.key_block),
            by_id(&kek.key_id),
            "",
        )
        .await,
        Code::InvalidArgument,
        "WRONG_LMK",
    );
    refused(
        admin.get_key(by_block(&their_zak.key_block).unwrap()).await,
        Code::InvalidArgument,
        "WRONG_LMK",
    );
    assert_eq!(snapshot(&mut admin).await, before);
    other.stop().await;
    mock.stop().await;
}

/// A retired key is dead by id, by key block (the block names its key id), and
/// its alias is released; a terminal whose TMK is retired cannot sign in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_key_is_refused_however_it_is_named() {
    let mock = MockHsm::start().await.unwrap();
    let mut admin = mock.admin.clone();
    let mut posp = mock.posp.clone();
    let zak = admin
        .get_key(by_alias("mock-zak").unwrap())
        .await
        .unwrap()
        .into_inner();
    let kek = generate(
        &mut admin,
        pb::KeyType::Kek,
        pb::KeyAlgorithm::Aes256,
        false,
    )
    .await;
    let zek = generate(
        &mut admin,
        pb::KeyType::Zek,
        pb::KeyAlgorithm::Tdes2key,
        true,
    )
    .await;
    for k in [&zak, &zek] {
        let r = admin
            .retire_key(by_id(&k.key_id).unwrap())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.state, "RETIRED");
    }
    let tmk = admin
        .get_key(by_alias("mock-tmk").unwrap())
        .await
        .unwrap()
        .into_inner();
    admin.retire_key(by_id(&tmk.key_id).unwrap()).await.unwrap();
    let before = snapshot(&mut admin).await;
    for key in [by_id(&zak.key_id), by_block(&zak.key_block)] {
        refused(
            mac_with(&mut posp, key.clone(), pb::MacAlgorithm::Iso9797Alg3).await,
            Code::FailedPrecondition,
            "KEY_RETIRED",
        );
        refused(
            verify_with(&mut posp, key, pb::MacAlgorithm::Iso9797Alg3).await,
            Code::FailedPrecondition,
            "KEY_RETIRED",
        );
    }
    refused(
        mac_with(
            &mut posp,
            by_alias("mock-zak"),
            pb::MacAlgorithm::Iso9797Alg3,
        )
        .await,
        Code::NotFound,
        "UNKNOWN_KEY",
    );
    for key in [by_id(&zek.key_id), by_block(&zek.key_block)] {
        refused(
            export(&mut admin, key, by_id(&kek.key_id), "").await,
            Code::FailedPrecondition,
            "KEY_RETIRED",
        );
    }
    refused(
        admin.rotate_key(by_id(&zak.key_id).unwrap()).await,
        Code::FailedPrecondition,
        "KEY_RETIRED",
    );
    refused(
        posp.sign_in(mock.terminal.sign_in_request()).await,
        Code::FailedPrecondition,
        "TERMINAL_HAS_NO_TMK",
    );
    refused(
        posp.sign_in(pb::SignInRequest {
            terminal_id: "MOCK0001".into(),
            tmk: by_block(&tmk.key_block),
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
        "KEY_RETIRED",
    );
    assert_eq!(snapshot(&mut admin).await, before);
    mock.stop().await;
}

// ---- single DES (legacy only, by configuration) -----------------------------------------

/// Single DES (56-bit) keys and the UNIONPAY_001 layout are refused unless the
/// configuration enables them for legacy terminals; even then weak DES keys are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_des_is_refused_unless_the_config_enables_it() {
    let mock = MockHsm::start().await.unwrap();
    let mut admin = mock.admin.clone();
    let mut posp = mock.posp.clone();
    let zmk_clear = odd(16);
    let zmk = form(&mut admin, pb::KeyType::Zmk, &zmk_clear, "", false).await;
    let before = snapshot(&mut admin).await;
    for kt in [
        pb::KeyType::Tmk,
        pb::KeyType::Tpk,
        pb::KeyType::Zpk,
        pb::KeyType::Tak,
        pb::KeyType::Zak,
    ] {
        refused(
            admin
                .generate_key(pb::GenerateKeyRequest {
                    key_type: kt as i32,
                    algorithm: pb::KeyAlgorithm::Des as i32,
                    ..Default::default()
                })
                .await,
            Code::FailedPrecondition,
            "SINGLE_DES_DISABLED",
        );
        refused(
            components(&mut admin, kt, pb::KeyAlgorithm::Des, split3(&odd(8))).await,
            Code::FailedPrecondition,
            "SINGLE_DES_DISABLED",
        );
    }
    // A single-DES key delivered under the ZMK (X9.17) or in a TR-31 block.
    let mut ct = odd(8);
    poshsm::crypto::Cipher::new(poshsm::crypto::Algorithm::Tdes2, &zmk_clear)
        .unwrap()
        .ecb_encrypt(&mut ct)
        .unwrap();
    for wrapped in [
        pb::import_key_request::Wrapped::X917Ecb(ct),
        pb::import_key_request::Wrapped::Tr31KeyBlock(
            keyblocks::wrap(
                &zmk_clear,
                &Header::new(
                    Version::B,
                    KeyUsage::P0,
                    keyblocks::Algorithm::DES,
                    ModeOfUse::E,
                    Exportability::Exportable,
                ),
                &odd(8),
                None,
            )
            .unwrap(),
        ),
    ] {
        refused(
            admin
                .import_key(pb::ImportKeyRequest {
                    key_type: pb::KeyType::Zpk as i32,
                    algorithm: pb::KeyAlgorithm::Des as i32,
                    wrapping_key: by_id(&zmk.key_id),
                    wrapped: Some(wrapped),
                    ..Default::default()
                })
                .await,
            Code::FailedPrecondition,
            "SINGLE_DES_DISABLED",
        );
    }
    refused(
        admin
            .create_terminal(pb::CreateTerminalRequest {
                terminal_id: "LEGACY01".into(),
                tmk_algorithm: pb::KeyAlgorithm::Des as i32,
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
        "SINGLE_DES_DISABLED",
    );
    refused(
        posp.sign_in(pb::SignInRequest {
            layout: pb::Field62Layout::Unionpay001 as i32,
            ..mock.terminal.sign_in_request()
        })
        .await,
        Code::FailedPrecondition,
        "SINGLE_DES_DISABLED",
    );
    refused(
        posp.sign_in(pb::SignInRequest {
            terminal_id: "MOCK0001".into(),
            layout: pb::Field62Layout::Unionpay001 as i32,
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
        "SINGLE_DES_DISABLED",
    );
    assert_eq!(snapshot(&mut admin).await, before);
    mock.stop().await;

    // Legacy configuration: single DES is accepted, weak DES keys still are not.
    let mut legacy = MockHsm::start_with(HsmConfig {
        allow_single_des: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut admin = legacy.admin.clone();
    generate(&mut admin, pb::KeyType::Zak, pb::KeyAlgorithm::Des, false).await;
    let r = legacy
        .posp
        .clone()
        .sign_in(pb::SignInRequest {
            terminal_id: "MOCK0001".into(),
            layout: pb::Field62Layout::Unionpay001 as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.field62.len(), 24);
    legacy.terminal.load_field62(&r.field62, r.layout).unwrap();
    let before = snapshot(&mut admin).await;
    for w in WEAK_DES_KEYS {
        let c1 = odd(8);
        let c2 = xor(&xor(&c1, &h(w)), &[0x01; 8]);
        if c1 == c2 {
            continue;
        }
        refused(
            components(
                &mut admin,
                pb::KeyType::Zak,
                pb::KeyAlgorithm::Des,
                vec![c1, c2],
            )
            .await,
            Code::InvalidArgument,
            "WEAK_KEY",
        );
    }
    assert_eq!(snapshot(&mut admin).await, before);
    legacy.stop().await;
}
