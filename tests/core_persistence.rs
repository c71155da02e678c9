//! Durability and fail-closed start-up of the core (DESIGN.md §2.5, §2.6, §4):
//! keys, aliases, terminals and the audit chain survive a reopen and keep
//! working; a corrupted or tampered store, or the wrong LMK, puts the module in
//! ALARM on the next start, where crypto is refused with MODULE_ALARM.
//! Corruption is written with sled directly, as an attacker or a bad disk would.

use poshsm::crypto::Algorithm;
use poshsm::hsm::*;
use poshsm::keys::{KeyType, Lmk};
use poshsm::store::Store;
use std::path::Path;
use zeroize::Zeroizing;

const LMK: [u8; 32] = [0x5A; 32];
const OTHER_LMK: [u8; 32] = [0xA5; 32];
const MSG: &[u8] = b"0200 purchase 6222020200112233445 000000012345 T0000001";

/// sled releases its file lock when its background threads let go of the dropped
/// database, which can lag the drop by a few milliseconds inside one process (a
/// restarted daemon is a new process and never sees this): retry on that error only.
fn retry_locked<T, E: std::fmt::Debug>(f: impl Fn() -> Result<T, E>) -> T {
    let mut attempts = 0;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if format!("{e:?}").contains("could not acquire lock") && attempts < 500 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("cannot open the store: {e:?}"),
        }
    }
}

fn open_with(dir: &Path, lmk: &[u8; 32]) -> Hsm {
    Hsm::new(
        Lmk::from_bytes(lmk),
        retry_locked(|| Store::open(dir)),
        HsmConfig::default(),
    )
}

fn open(dir: &Path) -> Hsm {
    let hsm = open_with(dir, &LMK);
    assert_eq!(hsm.status().state, "OK", "{:?}", hsm.status());
    hsm
}

fn odd(n: usize) -> Vec<u8> {
    use std::io::Read;
    let mut v = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut v)
        .unwrap();
    for b in &mut v {
        if b.count_ones() % 2 == 0 {
            *b ^= 1;
        }
    }
    v
}

fn generate(hsm: &Hsm, key_type: KeyType, alias: &str) -> KeyInfo {
    hsm.generate_key(
        "admin",
        GenerateKey {
            key_type,
            algorithm: Algorithm::Tdes2,
            alias: alias.into(),
            exportable: false,
        },
    )
    .unwrap()
}

fn sign_in(hsm: &Hsm, tid: &str) -> Result<SignInResult, HsmError> {
    hsm.sign_in(
        "posp",
        SignIn {
            source: SignInSource::Terminal(tid.into()),
            algorithm: None,
            include_tdk: true,
            layout: None,
            check_value_length: 0,
        },
    )
}

fn mac(hsm: &Hsm, source: MacKeySource, alg: MacAlgorithm) -> Result<Vec<u8>, HsmError> {
    hsm.generate_mac(&MacRequest {
        source,
        algorithm: alg,
        message: MSG,
        mac_length: 0,
    })
}

fn verify(hsm: &Hsm, source: MacKeySource, alg: MacAlgorithm, m: &[u8]) -> bool {
    hsm.verify_mac(
        &MacRequest {
            source,
            algorithm: alg,
            message: MSG,
            mac_length: 0,
        },
        m,
    )
    .unwrap()
}

fn terminal(tid: &str) -> MacKeySource {
    MacKeySource::Terminal(tid.into())
}

fn zak(hsm_alias: &str) -> MacKeySource {
    MacKeySource::Key(KeyRef::Alias(hsm_alias.into()))
}

/// A small populated module: a ZMK from components, a ZAK and a ZPK with
/// aliases, terminal T0000001 with a generated TMK, signed in twice.
/// Returns the ZAK's info.
fn populate(hsm: &Hsm) -> KeyInfo {
    let parts: Vec<Zeroizing<Vec<u8>>> = (0..3).map(|_| Zeroizing::new(odd(16))).collect();
    hsm.import_key_components(
        "custodians",
        ImportComponents {
            key_type: KeyType::Zmk,
            algorithm: Algorithm::Tdes2,
            components: parts,
            component_kcvs: vec![],
            alias: "zmk-cups".into(),
            exportable: false,
        },
    )
    .unwrap();
    let zak = generate(hsm, KeyType::Zak, "zak-cups");
    generate(hsm, KeyType::Zpk, "zpk-cups");
    hsm.create_terminal(
        "admin",
        CreateTerminal {
            terminal_id: "T0000001".into(),
            merchant_id: "898110000000001".into(),
            tmk: None,
            tmk_algorithm: None,
        },
    )
    .unwrap();
    zak
}

/// Overwrites one record of `tree` with sled directly, after the module is gone.
fn tamper(
    dir: &Path,
    tree: &str,
    key: &[u8],
    edit: impl FnOnce(Option<Vec<u8>>) -> Option<Vec<u8>>,
) {
    let db = retry_locked(|| sled::open(dir));
    let t = db.open_tree(tree).unwrap();
    let old = t.get(key).unwrap().map(|v| v.to_vec());
    match edit(old) {
        Some(new) => t.insert(key, new).unwrap(),
        None => t.remove(key).unwrap(),
    };
    db.flush().unwrap();
}

/// Edits one JSON field of a record.
fn with_field(old: Option<Vec<u8>>, field: &str, value: serde_json::Value) -> Option<Vec<u8>> {
    let mut v: serde_json::Value = serde_json::from_slice(&old.expect("record exists")).unwrap();
    assert!(v.get(field).is_some(), "record has a {field} field: {v}");
    assert_ne!(v[field], value, "a real change");
    v[field] = value;
    Some(serde_json::to_vec(&v).unwrap())
}

/// The module is in ALARM, says why (naming each of `names`), and refuses crypto
/// and key management with MODULE_ALARM.
#[track_caller]
fn assert_alarm(hsm: &Hsm, names: &[&str]) {
    let st = hsm.status();
    assert_eq!(st.state, "ALARM", "{st:?}");
    for n in names {
        assert!(
            st.reason.contains(n),
            "alarm reason does not name {n:?}: {}",
            st.reason
        );
    }
    let refusals = [
        mac(hsm, zak("zak-cups"), MacAlgorithm::Iso9797Alg3).map(|_| ()),
        mac(hsm, terminal("T0000001"), MacAlgorithm::UnionpayEcb).map(|_| ()),
        sign_in(hsm, "T0000001").map(|_| ()),
        hsm.generate_key(
            "admin",
            GenerateKey {
                key_type: KeyType::Zpk,
                algorithm: Algorithm::Tdes2,
                alias: String::new(),
                exportable: false,
            },
        )
        .map(|_| ()),
    ];
    for r in refusals {
        let e = r.expect_err("crypto must be refused in ALARM");
        assert_eq!(e.reason, Reason::ModuleAlarm, "{e:?}");
        assert_eq!(e.code(), "MODULE_ALARM");
        assert!(
            e.message.contains(&st.reason),
            "the refusal says why: {}",
            e.message
        );
    }
}

#[test]
fn keys_aliases_terminals_and_the_audit_chain_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let hsm = open(dir.path());
    let zak_info = populate(&hsm);
    let day1 = sign_in(&hsm, "T0000001").unwrap();
    let day1_mac = mac(&hsm, terminal("T0000001"), MacAlgorithm::Iso9797Alg1).unwrap();
    let day2 = sign_in(&hsm, "T0000001").unwrap();
    assert_ne!(day1.mak.kcv, day2.mak.kcv);

    let keys_before = hsm.list_keys(None, 1000, "").unwrap().0;
    let terminal_before = hsm.get_terminal("T0000001").unwrap();
    assert_eq!(terminal_before.key_version, 2);
    let audit_before = hsm.audit_log(0, 10_000).unwrap();
    let chain_before = hsm.verify_audit_log().unwrap();
    let status_before = hsm.status();
    let term_mac = mac(&hsm, terminal("T0000001"), MacAlgorithm::UnionpayEcb).unwrap();
    let zak_mac = mac(&hsm, zak("zak-cups"), MacAlgorithm::Iso9797Alg3).unwrap();
    drop(hsm);

    let hsm = open(dir.path());
    let st = hsm.status();
    assert_eq!(
        (st.keys, st.terminals),
        (status_before.keys, status_before.terminals)
    );
    assert_eq!(st.lmk_kcv, status_before.lmk_kcv);
    assert_eq!(hsm.list_keys(None, 1000, "").unwrap().0, keys_before);
    for alias in ["zmk-cups", "zak-cups", "zpk-cups"] {
        let by_alias = hsm.get_key(&KeyRef::Alias(alias.into())).unwrap();
        assert!(keys_before.contains(&by_alias), "{alias}");
        assert_eq!(by_alias.alias, alias);
    }
    assert_eq!(hsm.get_terminal("T0000001").unwrap(), terminal_before);
    assert_eq!(hsm.audit_log(0, 10_000).unwrap(), audit_before);
    assert_eq!(hsm.verify_audit_log().unwrap(), chain_before);

    // The stored working keys still work, and compute the same MACs as before.
    assert_eq!(
        mac(&hsm, terminal("T0000001"), MacAlgorithm::UnionpayEcb).unwrap(),
        term_mac
    );
    assert_eq!(
        mac(&hsm, zak("zak-cups"), MacAlgorithm::Iso9797Alg3).unwrap(),
        zak_mac
    );
    let by_block = MacKeySource::Key(KeyRef::Block(zak_info.key_block.clone()));
    assert_eq!(
        mac(&hsm, by_block, MacAlgorithm::Iso9797Alg3).unwrap(),
        zak_mac
    );
    // Yesterday's MAK is still in its grace window after the restart.
    assert!(verify(
        &hsm,
        terminal("T0000001"),
        MacAlgorithm::Iso9797Alg1,
        &day1_mac
    ));

    // The day goes on: the next sign-in and the audit chain continue from the store.
    let day3 = sign_in(&hsm, "T0000001").unwrap();
    assert_eq!(day3.key_version, 3);
    let after = hsm.audit_log(0, 10_000).unwrap();
    assert_eq!(after.len(), audit_before.len() + 1);
    let last = after.last().unwrap();
    assert_eq!(last.seq, audit_before.last().unwrap().seq + 1);
    assert_eq!(last.prev_hash, audit_before.last().unwrap().hash);
    assert_eq!(hsm.verify_audit_log().unwrap(), chain_before + 1);
}

#[test]
fn a_key_record_that_does_not_parse_puts_the_module_in_alarm() {
    let dir = tempfile::tempdir().unwrap();
    let zpk = {
        let hsm = open(dir.path());
        populate(&hsm);
        sign_in(&hsm, "T0000001").unwrap();
        hsm.get_key(&KeyRef::Alias("zpk-cups".into())).unwrap()
    };
    tamper(dir.path(), "keys", zpk.key_id.as_bytes(), |old| {
        assert!(old.is_some());
        Some(b"\x00junk, not a key record".to_vec())
    });
    let hsm = open_with(dir.path(), &LMK);
    assert_alarm(&hsm, &[&zpk.key_id, "keys"]);
}

#[test]
fn a_key_record_carrying_another_keys_block_puts_the_module_in_alarm() {
    let dir = tempfile::tempdir().unwrap();
    let (zpk, zak) = {
        let hsm = open(dir.path());
        let zak = populate(&hsm);
        (hsm.get_key(&KeyRef::Alias("zpk-cups".into())).unwrap(), zak)
    };
    // The ZPK's record now holds the ZAK's (perfectly valid) LMK block: a swap that
    // would turn a PIN key id into a MAC key.
    tamper(dir.path(), "keys", zpk.key_id.as_bytes(), |old| {
        with_field(old, "key_block", zak.key_block.clone().into())
    });
    let hsm = open_with(dir.path(), &LMK);
    assert_alarm(&hsm, &[&zpk.key_id, "does not match its key block"]);
}

#[test]
fn a_key_record_whose_type_was_edited_puts_the_module_in_alarm() {
    let dir = tempfile::tempdir().unwrap();
    let zpk = {
        let hsm = open(dir.path());
        populate(&hsm);
        hsm.get_key(&KeyRef::Alias("zpk-cups".into())).unwrap()
    };
    tamper(dir.path(), "keys", zpk.key_id.as_bytes(), |old| {
        with_field(old, "key_type", "ZAK".into())
    });
    let hsm = open_with(dir.path(), &LMK);
    assert_alarm(&hsm, &[&zpk.key_id]);
}

#[test]
fn a_terminal_record_that_does_not_parse_puts_the_module_in_alarm() {
    let dir = tempfile::tempdir().unwrap();
    {
        let hsm = open(dir.path());
        populate(&hsm);
    }
    tamper(dir.path(), "terminals", b"T0000001", |old| {
        assert!(old.is_some());
        Some(b"{\"v\":1,\"terminal_id\":".to_vec())
    });
    let hsm = open_with(dir.path(), &LMK);
    assert_alarm(&hsm, &["T0000001", "terminals"]);
}

#[test]
fn a_tampered_audit_event_puts_the_module_in_alarm_and_fails_verification() {
    let dir = tempfile::tempdir().unwrap();
    let events = {
        let hsm = open(dir.path());
        populate(&hsm);
        sign_in(&hsm, "T0000001").unwrap();
        hsm.audit_log(0, 1000).unwrap()
    };
    assert!(events.len() >= 4, "{events:?}");
    let target = &events[1];
    assert_eq!(target.seq, 2);
    assert_eq!(target.outcome, "OK");
    tamper(dir.path(), "audit", &2u64.to_be_bytes(), |old| {
        with_field(old, "outcome", "DENIED".into())
    });
    let hsm = open_with(dir.path(), &LMK);
    assert_alarm(&hsm, &["audit event 2"]);
    let e = hsm.verify_audit_log().unwrap_err();
    assert_eq!(e.reason, Reason::StoreError, "{e:?}");
    assert!(e.message.contains("audit event 2"), "{}", e.message);
    assert!(e.message.contains("altered"), "{}", e.message);
    // The log still shows the tampered record for the auditor to see.
    assert_eq!(hsm.audit_log(2, 1).unwrap()[0].outcome, "DENIED");
}

#[test]
fn a_deleted_audit_event_puts_the_module_in_alarm() {
    let dir = tempfile::tempdir().unwrap();
    {
        let hsm = open(dir.path());
        populate(&hsm);
    }
    tamper(dir.path(), "audit", &3u64.to_be_bytes(), |old| {
        assert!(old.is_some());
        None
    });
    let hsm = open_with(dir.path(), &LMK);
    assert_alarm(&hsm, &["audit event 4", "3 was expected"]);
    assert!(hsm.verify_audit_log().is_err());
}

#[test]
fn a_reopen_with_a_different_lmk_puts_the_module_in_alarm_and_damages_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (keys, zak_mac) = {
        let hsm = open(dir.path());
        populate(&hsm);
        let keys = hsm.list_keys(None, 1000, "").unwrap().0;
        (
            keys,
            mac(&hsm, zak("zak-cups"), MacAlgorithm::Iso9797Alg3).unwrap(),
        )
    };
    {
        let hsm = open_with(dir.path(), &OTHER_LMK);
        let st = hsm.status();
        assert_ne!(
            st.lmk_kcv,
            Hsm::new(
                Lmk::from_bytes(&LMK),
                Store::temporary().unwrap(),
                HsmConfig::default()
            )
            .status()
            .lmk_kcv
        );
        // Every stored key names the LMK it was wrapped under; the first one checked
        // is named in the alarm.
        assert!(
            keys.iter().any(|k| st.reason.contains(&k.key_id)),
            "{}",
            st.reason
        );
        assert_alarm(&hsm, &["another LMK"]);
    }
    // Back with the right LMK: nothing was damaged by the failed start.
    let hsm = open(dir.path());
    assert_eq!(hsm.list_keys(None, 1000, "").unwrap().0, keys);
    assert_eq!(
        mac(&hsm, zak("zak-cups"), MacAlgorithm::Iso9797Alg3).unwrap(),
        zak_mac
    );
    hsm.verify_audit_log().unwrap();
}

#[test]
fn a_terminal_record_with_swapped_working_keys_cannot_turn_the_pik_into_a_mac_key() {
    // The terminal record is a side table: if its PIK and MAK ids are swapped on disk,
    // the key blocks' own usage must still decide, or GenerateMac(terminal) becomes an
    // encryption oracle under the PIN key (ISO 9797 alg 1 of one block = E_PIK(block)).
    let dir = tempfile::tempdir().unwrap();
    let signed = {
        let hsm = open(dir.path());
        populate(&hsm);
        sign_in(&hsm, "T0000001").unwrap()
    };
    tamper(dir.path(), "terminals", b"T0000001", |old| {
        let mut v: serde_json::Value = serde_json::from_slice(&old.unwrap()).unwrap();
        let cur = &mut v["current"];
        assert_eq!(cur["pik"], signed.pik.key_id.as_str());
        assert_eq!(cur["mak"], signed.mak.key_id.as_str());
        cur["pik"] = signed.mak.key_id.clone().into();
        cur["mak"] = signed.pik.key_id.clone().into();
        Some(serde_json::to_vec(&v).unwrap())
    });
    let hsm = open_with(dir.path(), &LMK);
    let e = mac(&hsm, terminal("T0000001"), MacAlgorithm::Iso9797Alg1)
        .expect_err("a PIK must never compute a MAC");
    assert!(
        matches!(e.reason, Reason::KeyUsageMismatch | Reason::ModuleAlarm),
        "{e:?}"
    );
    let e = hsm
        .translate_pin(&TranslatePin {
            source: PinKeySource::Terminal("T0000001".into()),
            dest: KeyRef::Alias("zpk-cups".into()),
            pin_block: vec![0u8; 8],
            pan: "6222020200112233445".into(),
            source_format: poshsm::crypto::pinblock::PinBlockFormat::Iso0,
            dest_format: poshsm::crypto::pinblock::PinBlockFormat::Iso0,
        })
        .expect_err("a MAK must never decrypt a PIN block");
    assert!(
        matches!(e.reason, Reason::KeyUsageMismatch | Reason::ModuleAlarm),
        "{e:?}"
    );
    assert_alarm(&hsm, &["T0000001"]);
}

#[test]
fn a_corrupt_last_audit_event_still_opens_the_module_in_alarm() {
    let dir = tempfile::tempdir().unwrap();
    let last = {
        let hsm = open(dir.path());
        populate(&hsm);
        hsm.audit_log(0, 10_000).unwrap().last().unwrap().seq
    };
    tamper(dir.path(), "audit", &last.to_be_bytes(), |old| {
        assert!(old.is_some());
        Some(b"{not json".to_vec())
    });
    let hsm = open_with(dir.path(), &LMK);
    assert_alarm(&hsm, &["audit"]);
    assert!(hsm.verify_audit_log().is_err());
    // Nothing more is appended to a chain whose head is unreadable.
    let appended = hsm.audit(vec![poshsm::store::audit::AuditDraft {
        operation: "probe".into(),
        ..Default::default()
    }]);
    assert!(
        appended.is_err(),
        "an append after a corrupt head must fail"
    );
}
