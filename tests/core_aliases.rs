//! An alias follows its key: through a rotation, a retirement, and while calls
//! race a series of rotations (the core caches alias → key id; a stale entry
//! would keep a retired key's id under the alias). Likewise a terminal's
//! cached keys follow a retirement of its previous MAK.

use poshsm::crypto::Algorithm;
use poshsm::hsm::*;
use poshsm::keys::{KeyType, Lmk};
use poshsm::store::Store;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const MESSAGE: &[u8] = b"0200 ISO 8583 message to MAC";

fn mac(hsm: &Hsm, r: KeyRef) -> Result<Vec<u8>, HsmError> {
    hsm.generate_mac(&MacRequest {
        source: MacKeySource::Key(r),
        algorithm: MacAlgorithm::Iso9797Alg3,
        message: MESSAGE,
        mac_length: 8,
    })
}

fn alias() -> KeyRef {
    KeyRef::Alias("zak.cups".into())
}

/// A core with one ZAK under the alias `zak.cups`.
fn hsm_with_zak() -> (Arc<Hsm>, KeyInfo) {
    let hsm = Arc::new(Hsm::new(
        Lmk::generate(),
        Store::temporary().unwrap(),
        HsmConfig::default(),
    ));
    let zak = hsm
        .generate_key(
            "test",
            GenerateKey {
                key_type: KeyType::Zak,
                algorithm: Algorithm::Tdes2,
                alias: "zak.cups".into(),
                exportable: false,
            },
        )
        .unwrap();
    (hsm, zak)
}

#[test]
fn an_alias_follows_its_key_through_rotation_and_retirement() {
    let (hsm, k0) = hsm_with_zak();
    let m0 = mac(&hsm, alias()).unwrap();
    assert_eq!(m0, mac(&hsm, KeyRef::Id(k0.key_id.clone())).unwrap());

    let k1 = hsm.rotate_key("test", &alias()).unwrap();
    let m1 = mac(&hsm, alias()).unwrap();
    assert_eq!(m1, mac(&hsm, KeyRef::Id(k1.key_id.clone())).unwrap());
    assert_ne!(m0, m1, "the alias still names the rotated-out key");

    hsm.retire_key("test", &alias()).unwrap();
    let e = mac(&hsm, alias()).unwrap_err();
    assert_eq!(e.reason, Reason::UnknownKey, "{e:?}");
}

#[test]
fn calls_racing_rotations_end_on_the_last_key() {
    let (hsm, _) = hsm_with_zak();
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let (hsm, stop) = (hsm.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut ok = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    match mac(&hsm, alias()) {
                        Ok(_) => ok += 1,
                        // read the old id just before the switch
                        Err(e) if e.reason == Reason::KeyRetired => {}
                        Err(e) => panic!("unexpected refusal during rotation: {e:?}"),
                    }
                }
                ok
            })
        })
        .collect();
    let mut last = None;
    for _ in 0..100 {
        last = Some(hsm.rotate_key("test", &alias()).unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    let calls: u64 = callers.into_iter().map(|c| c.join().unwrap()).sum();
    assert!(calls > 0);
    let last = last.unwrap();
    assert_eq!(
        mac(&hsm, alias()).unwrap(),
        mac(&hsm, KeyRef::Id(last.key_id)).unwrap(),
        "after the rotations the alias must name the last key"
    );
}

#[test]
fn racing_rotations_of_one_key_never_leave_two_active_successors() {
    let (hsm, _) = hsm_with_zak();
    let rotators: Vec<_> = (0..4)
        .map(|_| {
            let hsm = hsm.clone();
            std::thread::spawn(move || {
                let (mut ok, mut conflicts) = (0, 0);
                for _ in 0..25 {
                    match hsm.rotate_key("test", &alias()) {
                        Ok(_) => ok += 1,
                        // lost the race: the alias or the key moved under us
                        Err(e) if matches!(e.reason, Reason::Conflict | Reason::KeyRetired) => {
                            conflicts += 1
                        }
                        Err(e) => panic!("unexpected: {e:?}"),
                    }
                }
                (ok, conflicts)
            })
        })
        .collect();
    let (ok, conflicts) = rotators
        .into_iter()
        .map(|t| t.join().unwrap())
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    assert!(ok > 0, "no rotation succeeded ({conflicts} conflicts)");
    let (keys, _) = hsm.list_keys(Some(KeyType::Zak), 1000, "").unwrap();
    let active: Vec<_> = keys
        .iter()
        .filter(|k| k.state == poshsm::store::STATE_ACTIVE)
        .collect();
    assert_eq!(
        active.len(),
        1,
        "{ok} rotations, {conflicts} conflicts: {active:?}"
    );
    assert_eq!(keys.len(), 1 + ok, "one new key per successful rotation");
    assert_eq!(
        mac(&hsm, alias()).unwrap(),
        mac(&hsm, KeyRef::Id(active[0].key_id.clone())).unwrap()
    );
}

/// A terminal's previous MAK verifies during the grace window after a
/// sign-in — until it is retired: the cached terminal entry must drop it too
/// (it once kept accepting it for the rest of the window).
#[test]
fn a_retired_previous_mak_stops_verifying_at_once() {
    let hsm = Hsm::new(
        Lmk::generate(),
        Store::temporary().unwrap(),
        HsmConfig::default(),
    );
    let tmk = hsm
        .generate_key(
            "test",
            GenerateKey {
                key_type: KeyType::Tmk,
                algorithm: Algorithm::Tdes2,
                alias: String::new(),
                exportable: false,
            },
        )
        .unwrap();
    hsm.create_terminal(
        "admin",
        CreateTerminal {
            terminal_id: "T0000001".into(),
            merchant_id: String::new(),
            tmk: Some(KeyRef::Id(tmk.key_id)),
            tmk_algorithm: None,
        },
    )
    .unwrap();
    let sign_in = || {
        hsm.sign_in(
            "posp",
            SignIn {
                source: SignInSource::Terminal("T0000001".into()),
                algorithm: None,
                include_tdk: false,
                layout: Some(Field62Layout::DoubleMak),
                check_value_length: 0,
            },
        )
        .unwrap()
    };
    let day1 = sign_in();
    // The day-1 MAC of a message, computed by the module under the day-1 MAK.
    let mac1 = hsm
        .generate_mac(&MacRequest {
            source: MacKeySource::Key(KeyRef::Id(day1.mak.key_id.clone())),
            algorithm: MacAlgorithm::UnionpayEcb,
            message: MESSAGE,
            mac_length: 0,
        })
        .unwrap();
    sign_in();
    let verify = || {
        hsm.verify_mac(
            &MacRequest {
                source: MacKeySource::Terminal("T0000001".into()),
                algorithm: MacAlgorithm::UnionpayEcb,
                message: MESSAGE,
                mac_length: 0,
            },
            &mac1,
        )
    };
    assert!(
        verify().unwrap(),
        "the previous MAK verifies in its grace window"
    );
    hsm.retire_key("admin", &KeyRef::Id(day1.mak.key_id.clone()))
        .unwrap();
    assert!(
        !verify().unwrap_or(false),
        "a retired previous MAK still verified"
    );
}
