//! Backup and restore: a snapshot of a dev node restored onto a second data
//! dir holding the same sealed LMK serves the same terminals with the same
//! keys; a snapshot is refused under another LMK, when cut short or edited,
//! and over a non-empty store.

use poshsm::cli::backup::{backup, restore};
use poshsm::cli::serve::{dev_setup, open_hsm, SEALED_FILE};
use poshsm::crypto::Algorithm;
use poshsm::hsm::{
    CreateTerminal, GenerateKey, Hsm, HsmConfig, KeyRef, MacAlgorithm, MacKeySource, MacRequest,
    SignIn, SignInSource,
};
use poshsm::keys::KeyType;
use std::path::Path;
use std::process::Command;

const MSG: &[u8] = b"0200|T1|000001|000000010000|6222020200112233445";

fn open(dir: &Path) -> Hsm {
    let hsm = open_hsm(dir, true, HsmConfig::default()).expect("open the module");
    assert_eq!(hsm.status().state, "OK", "{}", hsm.status().reason);
    hsm
}

fn mac_of(hsm: &Hsm, terminal: &str) -> Vec<u8> {
    hsm.generate_mac(&MacRequest {
        source: MacKeySource::Terminal(terminal.into()),
        algorithm: MacAlgorithm::UnionpayEcb,
        message: MSG,
        mac_length: 0,
    })
    .expect("generate a MAC")
}

fn sign_in(hsm: &Hsm, terminal: &str) {
    hsm.sign_in(
        "test",
        SignIn {
            source: SignInSource::Terminal(terminal.into()),
            algorithm: None,
            include_tdk: true,
            layout: None,
            check_value_length: 0,
        },
    )
    .expect("sign in");
}

/// A dev node with a ZPK, two terminals and three sign-ins; returns T1's MAC of MSG.
fn populated_node(dir: &Path) -> (Vec<u8>, u64) {
    dev_setup(dir).unwrap();
    let hsm = open(dir);
    hsm.generate_key(
        "test",
        GenerateKey {
            key_type: KeyType::Zpk,
            algorithm: Algorithm::Tdes2,
            alias: "zpk-cups".into(),
            exportable: false,
        },
    )
    .unwrap();
    for t in ["T1", "T2"] {
        hsm.create_terminal(
            "test",
            CreateTerminal {
                terminal_id: t.into(),
                merchant_id: "898110000000001".into(),
                tmk: None,
                tmk_algorithm: None,
            },
        )
        .unwrap();
    }
    sign_in(&hsm, "T1");
    sign_in(&hsm, "T1");
    sign_in(&hsm, "T2");
    let mac = mac_of(&hsm, "T1");
    let events = hsm.verify_audit_log().unwrap();
    (mac, events)
}

fn copy_lmk(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    std::fs::copy(from.join(SEALED_FILE), to.join(SEALED_FILE)).unwrap();
}

#[test]
fn a_restored_node_serves_the_same_terminals_with_the_same_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("a"), tmp.path().join("b"));
    let (mac_before, events) = populated_node(&src);
    let snap = tmp.path().join("a.snapshot");
    let b = backup(&src, &snap, false, false).expect("backup");
    assert_eq!(b.summary.counts.terminals, 2);
    assert_eq!(b.summary.counts.audit, events);
    // The snapshot holds key blocks, never a clear key: every "key_block" is an LMK block.
    let text = std::fs::read_to_string(&snap).unwrap();
    assert!(text.lines().filter(|l| l.contains("\"key_block\"")).count() >= 5);
    assert!(!text.contains("\"clear\""));

    copy_lmk(&src, &dst);
    let r = restore(&dst, &snap, false).expect("restore");
    assert_eq!(r.summary.sha256, b.summary.sha256);

    let hsm = open(&dst); // the self-test unwraps every restored block
    let t1 = hsm.get_terminal("T1").expect("T1 restored");
    assert_eq!(t1.key_version, 2);
    assert_eq!(hsm.get_terminal("T2").unwrap().key_version, 1);
    assert_eq!(
        mac_of(&hsm, "T1"),
        mac_before,
        "the MAK of the pre-backup sign-in MACs the same"
    );
    assert!(hsm.get_key(&KeyRef::Alias("zpk-cups".into())).is_ok());
    assert_eq!(
        hsm.verify_audit_log().unwrap(),
        events + 1,
        "the chain verifies, with the Restore event appended"
    );
    // A second restore onto the now non-empty store is refused.
    drop(hsm);
    let err = restore(&dst, &snap, false).unwrap_err();
    assert!(err.contains("not empty"), "{err}");
}

#[test]
fn a_snapshot_is_refused_under_another_lmk_or_when_cut_short() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("a");
    populated_node(&src);
    let snap = tmp.path().join("a.snapshot");
    backup(&src, &snap, false, false).unwrap();

    // Another node's LMK: refused before anything is written.
    let other = tmp.path().join("other");
    dev_setup(&other).unwrap();
    let err = restore(&other, &snap, false).unwrap_err();
    assert!(err.contains("another LMK"), "{err}");
    assert!(!other.join("db").exists(), "nothing written");

    // Cut short (the last lines lost), or one byte changed.
    let text = std::fs::read_to_string(&snap).unwrap();
    let cut = tmp.path().join("cut.snapshot");
    std::fs::write(&cut, &text[..text.len() * 2 / 3]).unwrap();
    let dst = tmp.path().join("b");
    copy_lmk(&src, &dst);
    let err = restore(&dst, &cut, false).unwrap_err();
    assert!(err.contains("truncated"), "{err}");
    let edited = tmp.path().join("edited.snapshot");
    std::fs::write(&edited, text.replacen("\"T2\"", "\"T3\"", 1)).unwrap();
    let err = restore(&dst, &edited, false).unwrap_err();
    assert!(err.contains("corrupt"), "{err}");
    assert!(
        !dst.join("db").exists(),
        "a refused restore leaves no store"
    );

    // No sealed LMK in the target: the error says to copy it.
    let bare = tmp.path().join("bare");
    std::fs::create_dir_all(&bare).unwrap();
    let err = restore(&bare, &snap, false).unwrap_err();
    assert!(err.contains("lmk.sealed"), "{err}");
}

#[test]
fn the_binary_backs_up_and_restores_with_json_output() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("a"), tmp.path().join("b"));
    populated_node(&src);
    let snap = tmp.path().join("a.snapshot");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_poshsm"))
            .args(args)
            .output()
            .expect("run poshsm")
    };
    let out = run(&[
        "backup",
        "--data-dir",
        src.to_str().unwrap(),
        "--out",
        snap.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["counts"]["terminals"], 2);
    // Refuses to overwrite the snapshot without --force.
    let again = run(&[
        "backup",
        "--data-dir",
        src.to_str().unwrap(),
        "--out",
        snap.to_str().unwrap(),
    ]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));

    copy_lmk(&src, &dst);
    let out = run(&[
        "restore",
        "--data-dir",
        dst.to_str().unwrap(),
        "--from",
        snap.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["restored"], true);
    assert_eq!(r["sha256"], v["sha256"]);
}
