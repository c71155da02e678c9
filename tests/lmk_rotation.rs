//! LMK rotation on the real daemon (`poshsm serve --dev` as a child process,
//! mutual TLS, sled on disk, the sealed LMK set file):
//!
//! - after `RotateLmk` every stored key and terminal works with the same ids
//!   and KCVs, and every stored block names the new LMK;
//! - callers' blocks under the previous LMK work during the migration window,
//!   `TranslateKeyBlock` moves them, and after `RetirePreviousLmk` they are
//!   refused with `LMK_RETIRED`, across restarts;
//! - a crash at each step of a rotation (failpoints that abort the process),
//!   and SIGKILL at random moments during one, leave the old or the new LMK
//!   with every key under it, never a mix; the restart finishes or abandons the
//!   rotation and audits which.
//!
//! The terminal and the network (PIN pad, PIN check, MAC check) are computed
//! outside the daemon from the clear keys the test formed as components.

mod common;

use common::reason;

use common::daemon::Daemon;
use poshsm::pinpad::{tdes_components, NetworkPeer, PinPad};
use poshsm::proto::{self as pb, crypto_client::CryptoClient, key_admin_client::KeyAdminClient};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use tonic::transport::Channel;
use tonic::Code;

type Admin = KeyAdminClient<Channel>;
type Posp = CryptoClient<Channel>;

const PAN: &str = "6222020200112233445";

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

/// The LMK identity a block names: optional block `KP` = "01" + 10 hex of the LMK KCV.
fn block_lmk(block: &str) -> String {
    let h = keyblocks::Header::parse(block).expect("a TR-31 block");
    h.optional(b"KP").expect("KP block").to_string()
}

fn kp_of(kcv16: &str) -> String {
    format!("01{}", &kcv16[..10])
}

async fn lmk_status(admin: &mut Admin) -> (String, pb::LmkStatus) {
    let s = admin
        .get_status(pb::GetStatusRequest {})
        .await
        .expect("GetStatus")
        .into_inner();
    (s.state, s.lmk.expect("lmk status"))
}

/// Every stored key: id → (KCV, LMK identity of its block).
async fn stored_keys(admin: &mut Admin) -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    let mut token = String::new();
    loop {
        let page = admin
            .list_keys(pb::ListKeysRequest {
                page_size: 500,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("ListKeys")
            .into_inner();
        for k in page.keys {
            let lmk = block_lmk(&k.key_block);
            out.insert(k.key_id, (k.kcv, lmk));
        }
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

/// The clear keys the test parties know, and the daemon's view of them.
struct World {
    pad: PinPad,
    net: NetworkPeer,
    tmk_block: String,
    tmk_clear: Vec<u8>,
    terminal: String,
}

async fn import(admin: &mut Admin, t: pb::KeyType, alias: &str) -> (pb::KeyInfo, Vec<u8>) {
    let (parts, clear) = tdes_components();
    let info = admin
        .import_key_components(pb::ImportKeyComponentsRequest {
            key_type: t as i32,
            algorithm: pb::KeyAlgorithm::Tdes2key as i32,
            components: parts,
            alias: alias.into(),
            ..Default::default()
        })
        .await
        .expect("import components")
        .into_inner();
    (info, clear.to_vec())
}

async fn setup_world(admin: &mut Admin, posp: &mut Posp, terminal: &str) -> World {
    let (tmk, tmk_clear) = import(admin, pb::KeyType::Tmk, &format!("{terminal}-tmk")).await;
    let (_, zpk) = import(admin, pb::KeyType::Zpk, &format!("{terminal}-zpk")).await;
    let (_, zak) = import(admin, pb::KeyType::Zak, &format!("{terminal}-zak")).await;
    admin
        .create_terminal(pb::CreateTerminalRequest {
            terminal_id: terminal.into(),
            tmk: by_id(&tmk.key_id),
            ..Default::default()
        })
        .await
        .expect("create terminal");
    let mut pad = PinPad::new(terminal, &tmk_clear).expect("pad");
    sign_in(posp, &mut pad).await;
    World {
        pad,
        net: NetworkPeer::new(
            &format!("{terminal}-zpk"),
            &format!("{terminal}-zak"),
            &zpk,
            &zak,
        )
        .expect("peer"),
        tmk_block: tmk.key_block,
        tmk_clear,
        terminal: terminal.into(),
    }
}

async fn sign_in(posp: &mut Posp, pad: &mut PinPad) -> pb::SignInResponse {
    let r = posp
        .sign_in(pad.sign_in_request())
        .await
        .expect("sign-in")
        .into_inner();
    pad.load_field62(&r.field62, r.layout)
        .expect("field 62 checks out on the terminal");
    r
}

/// A PIN from the terminal reaches the network intact, and a MAC the daemon
/// makes with the terminal's MAK checks out on the terminal.
async fn day_works(posp: &mut Posp, w: &World) {
    try_day(posp, w).await.expect("the terminal's day");
}

async fn try_day(posp: &mut Posp, w: &World) -> Result<(), String> {
    let block = w.pad.pin_block("842135", PAN)?;
    let out = posp
        .translate_pin(pb::TranslatePinRequest {
            source: Some(pb::translate_pin_request::Source::TerminalId(
                w.terminal.clone(),
            )),
            dest_key: by_alias(&w.net.zpk_alias),
            pin_block: block,
            pan: PAN.into(),
            ..Default::default()
        })
        .await
        .map_err(|s| format!("TranslatePin: {s:?}"))?
        .into_inner();
    if w.net.pin(&out.pin_block, PAN)? != "842135" {
        return Err("the network read another PIN".into());
    }
    let msg = b"0200 purchase 000000012345".to_vec();
    let mac = posp
        .generate_mac(pb::GenerateMacRequest {
            key_source: Some(pb::generate_mac_request::KeySource::TerminalId(
                w.terminal.clone(),
            )),
            algorithm: pb::MacAlgorithm::UnionpayEcb as i32,
            message: msg.clone(),
            ..Default::default()
        })
        .await
        .map_err(|s| format!("GenerateMac: {s:?}"))?
        .into_inner()
        .mac;
    if !w.pad.check_mac(&msg, &mac) {
        return Err("the terminal rejects the daemon's MAC".into());
    }
    Ok(())
}

/// A stateless sign-in (the TMK given as an LMK block, nothing stored):
/// returns the PIK's LMK block, as a POSP keeps it in its terminal table, and
/// a PIN pad that loaded the matching field 62.
async fn stateless_pik(posp: &mut Posp, w: &World, tmk_block: &str) -> (String, PinPad) {
    let mut pad = PinPad::new(&w.terminal, &w.tmk_clear).expect("pad");
    let mut req = pad.sign_in_request();
    req.tmk = by_block(tmk_block);
    let r = posp
        .sign_in(req)
        .await
        .expect("stateless sign-in")
        .into_inner();
    pad.load_field62(&r.field62, r.layout).expect("field 62");
    let pik = r.pik.expect("pik");
    assert!(pik.key_id.is_empty(), "stateless: nothing stored");
    (pik.key_block, pad)
}

/// TranslatePin with a caller-held PIK block.
async fn translate_with_block(
    posp: &mut Posp,
    w: &World,
    pik_block: &str,
    pad: &PinPad,
) -> Result<String, tonic::Status> {
    let out = posp
        .translate_pin(pb::TranslatePinRequest {
            source: Some(pb::translate_pin_request::Source::SourceKey(pb::KeyRef {
                r#ref: Some(pb::key_ref::Ref::KeyBlock(pik_block.into())),
            })),
            dest_key: by_alias(&w.net.zpk_alias),
            pin_block: pad.pin_block("2468", PAN).expect("pin block"),
            pan: PAN.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(w.net.pin(&out.pin_block, PAN).expect("network PIN"))
}

async fn translate_block(
    posp: &mut Posp,
    block: &str,
) -> Result<pb::TranslateKeyBlockResponse, tonic::Status> {
    Ok(posp
        .translate_key_block(pb::TranslateKeyBlockRequest {
            key_block: block.into(),
        })
        .await?
        .into_inner())
}

async fn rotate(admin: &mut Admin) -> Result<pb::LmkChangeResponse, tonic::Status> {
    // A --dev daemon seals the new LMK under the dev passphrases when none are given.
    Ok(admin
        .rotate_lmk(pb::RotateLmkRequest::default())
        .await?
        .into_inner())
}

async fn audit_outcomes(admin: &mut Admin, op: &str) -> Vec<String> {
    let mut stream = admin
        .get_audit_log(pb::GetAuditLogRequest { since_seq: 0 })
        .await
        .expect("audit log")
        .into_inner();
    let mut out = Vec::new();
    while let Some(ev) = stream.message().await.expect("audit event") {
        if ev.operation == op {
            out.push(ev.outcome);
        }
    }
    out
}

async fn chain_valid(admin: &mut Admin) {
    let v = admin
        .verify_audit_log(pb::VerifyAuditLogRequest {})
        .await
        .expect("verify")
        .into_inner();
    assert!(v.valid, "audit chain: {}", v.problem);
}

fn start(dir: &Path) -> Daemon {
    tokio::task::block_in_place(|| Daemon::start(dir))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_every_key_and_terminal_and_retirement_refuses_old_blocks() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = start(dir.path());
    let (mut admin, mut posp) = d.clients(dir.path()).await;
    let w = setup_world(&mut admin, &mut posp, "LMKT0001").await;
    let (pik_block, stateless_pad) = stateless_pik(&mut posp, &w, &w.tmk_block).await;
    day_works(&mut posp, &w).await;
    assert_eq!(
        translate_with_block(&mut posp, &w, &pik_block, &stateless_pad)
            .await
            .expect("before"),
        "2468"
    );
    let before = stored_keys(&mut admin).await;
    let (state, lmk0) = lmk_status(&mut admin).await;
    assert_eq!(state, "OK");
    assert!(lmk0.previous_kcv.is_empty() && lmk0.window_opened_unix == 0);
    assert!(before
        .values()
        .all(|(_, kp)| *kp == kp_of(&lmk0.current_kcv)));
    let sealed_before = std::fs::read_to_string(dir.path().join("lmk.sealed")).expect("sealed");

    // Rotate.
    let change = rotate(&mut admin).await.expect("RotateLmk");
    assert_eq!(change.keys_rewrapped, before.len() as u64);
    let lmk1 = change.lmk.expect("lmk");
    assert_ne!(lmk1.current_kcv, lmk0.current_kcv);
    assert_eq!(lmk1.previous_kcv, lmk0.current_kcv);
    assert!(lmk1.window_opened_unix > 0);
    assert_eq!(
        lmk_status(&mut admin).await.1,
        lmk1,
        "GetStatus shows the window"
    );
    let sealed_after = std::fs::read_to_string(dir.path().join("lmk.sealed")).expect("sealed");
    assert_ne!(sealed_before, sealed_after);
    assert!(sealed_after.contains(&lmk1.current_kcv) && sealed_after.contains(&lmk0.current_kcv));
    assert!(!dir.path().join("lmk.sealed.next").exists());

    // Same ids and KCVs; every stored block now names the new LMK.
    let after = stored_keys(&mut admin).await;
    assert_eq!(
        before
            .iter()
            .map(|(id, (kcv, _))| (id, kcv))
            .collect::<Vec<_>>(),
        after
            .iter()
            .map(|(id, (kcv, _))| (id, kcv))
            .collect::<Vec<_>>()
    );
    assert!(after
        .values()
        .all(|(_, kp)| *kp == kp_of(&lmk1.current_kcv)));
    // The terminal works on the same working keys, and signs in again.
    day_works(&mut posp, &w).await;
    let mut w = w;
    sign_in(&mut posp, &mut w.pad).await;
    day_works(&mut posp, &w).await;

    // A second rotation waits for the window to close.
    let s = rotate(&mut admin).await.expect_err("window open");
    assert_eq!(
        (s.code(), reason(&s).as_str()),
        (Code::FailedPrecondition, "PREVIOUS_LMK_ACTIVE")
    );

    // Callers' blocks under the previous LMK still work, and translate.
    assert_eq!(
        translate_with_block(&mut posp, &w, &pik_block, &stateless_pad)
            .await
            .expect("window"),
        "2468"
    );
    let moved = translate_block(&mut posp, &pik_block)
        .await
        .expect("TranslateKeyBlock");
    assert!(moved.translated);
    assert_eq!(block_lmk(&moved.key_block), kp_of(&lmk1.current_kcv));
    assert_eq!(moved.lmk_kcv, lmk1.current_kcv);
    assert_eq!(moved.key_type, pb::KeyType::Tpk as i32);
    let again = translate_block(&mut posp, &moved.key_block)
        .await
        .expect("idempotent");
    assert!(!again.translated && again.key_block == moved.key_block && again.kcv == moved.kcv);
    assert_eq!(
        translate_with_block(&mut posp, &w, &moved.key_block, &stateless_pad)
            .await
            .expect("new block"),
        "2468"
    );
    // The stored TMK's old block (as a POSP table holds it) also still signs in statelessly.
    let (pik_block2, pad2) = stateless_pik(&mut posp, &w, &w.tmk_block).await;
    assert_eq!(
        block_lmk(&pik_block2),
        kp_of(&lmk1.current_kcv),
        "new blocks are under the new LMK"
    );
    assert_eq!(
        translate_with_block(&mut posp, &w, &pik_block2, &pad2)
            .await
            .expect("x"),
        "2468"
    );

    // The window survives a restart (the set file holds both LMKs).
    d.kill();
    let d = start(dir.path());
    let (mut admin, mut posp) = d.clients(dir.path()).await;
    let (state, l) = lmk_status(&mut admin).await;
    assert_eq!((state.as_str(), &l), ("OK", &lmk1));
    assert_eq!(
        translate_with_block(&mut posp, &w, &pik_block, &stateless_pad)
            .await
            .expect("after restart"),
        "2468"
    );

    // A copy of the sealed file as it was during the window (an operator's
    // backup, or an attacker's), to be put back after the retirement.
    std::fs::copy(
        dir.path().join("lmk.sealed"),
        dir.path().join("lmk.sealed.window"),
    )
    .unwrap();

    // Retire the previous LMK: old blocks are refused, new ones work.
    let retired = admin
        .retire_previous_lmk(pb::RetirePreviousLmkRequest {})
        .await
        .expect("retire")
        .into_inner()
        .lmk
        .expect("lmk");
    assert!(retired.previous_kcv.is_empty() && retired.window_opened_unix == 0);
    assert_eq!(retired.retired_kcvs, vec![lmk0.current_kcv.clone()]);
    let refused = |s: tonic::Status| (s.code(), reason(&s));
    let want = (Code::FailedPrecondition, "LMK_RETIRED".to_string());
    assert_eq!(
        refused(
            translate_with_block(&mut posp, &w, &pik_block, &stateless_pad)
                .await
                .expect_err("retired")
        ),
        want
    );
    assert_eq!(
        refused(
            translate_block(&mut posp, &pik_block)
                .await
                .expect_err("retired")
        ),
        want
    );
    let mut req = w.pad.sign_in_request();
    req.tmk = by_block(&w.tmk_block);
    assert_eq!(
        refused(posp.sign_in(req).await.expect_err("retired TMK block")),
        want
    );
    assert_eq!(
        translate_with_block(&mut posp, &w, &moved.key_block, &stateless_pad)
            .await
            .expect("current"),
        "2468"
    );
    day_works(&mut posp, &w).await;
    let s = admin
        .retire_previous_lmk(pb::RetirePreviousLmkRequest {})
        .await
        .expect_err("nothing to retire");
    assert_eq!(
        (s.code(), reason(&s).as_str()),
        (Code::FailedPrecondition, "NO_PREVIOUS_LMK")
    );

    // Retirement survives a restart.
    let window_file = std::fs::read_to_string(dir.path().join("lmk.sealed.window")).expect("copy");
    d.kill();
    let d = start(dir.path());
    let (mut admin, mut posp) = d.clients(dir.path()).await;
    assert_eq!(lmk_status(&mut admin).await.1, retired);
    assert_eq!(
        refused(
            translate_block(&mut posp, &pik_block)
                .await
                .expect_err("retired")
        ),
        want
    );
    day_works(&mut posp, &w).await;

    // Putting the window-era file back does not bring the LMK back: the store
    // recorded the retirement, and the start finishes it again.
    drop((admin, posp));
    d.kill();
    std::fs::write(dir.path().join("lmk.sealed"), &window_file).unwrap();
    let d = start(dir.path());
    let (mut admin, mut posp) = d.clients(dir.path()).await;
    assert_eq!(lmk_status(&mut admin).await.1, retired);
    assert_eq!(
        refused(
            translate_block(&mut posp, &pik_block)
                .await
                .expect_err("still retired")
        ),
        want
    );
    let sealed_now = std::fs::read_to_string(dir.path().join("lmk.sealed")).unwrap();
    assert!(!sealed_now.contains("\"previous\": {"), "{sealed_now}");
    day_works(&mut posp, &w).await;

    // Everything is in the audit log (refusals too), and the chain holds.
    assert_eq!(
        audit_outcomes(&mut admin, "RotateLmk").await,
        ["STARTED", "OK", "PREVIOUS_LMK_ACTIVE"]
    );
    assert_eq!(
        audit_outcomes(&mut admin, "RetirePreviousLmk").await,
        ["OK", "NO_PREVIOUS_LMK", "COMPLETED_AT_START"]
    );
    assert_eq!(
        audit_outcomes(&mut admin, "TranslateKeyBlock").await,
        ["OK"]
    );
    chain_valid(&mut admin).await;

    // A second rotation now goes ahead, and the auditor cannot rotate.
    let lmk2 = rotate(&mut admin)
        .await
        .expect("second rotation")
        .lmk
        .expect("lmk");
    assert_eq!(lmk2.previous_kcv, lmk1.current_kcv);
    assert_eq!(lmk2.retired_kcvs, vec![lmk0.current_kcv.clone()]);
    let auditor = poshsm::cli::client::connect(&poshsm::cli::client::ClientConfig::from_data_dir(
        &d.addr,
        dir.path(),
        "auditor",
    ))
    .await
    .expect("auditor");
    let s = KeyAdminClient::new(auditor)
        .retire_previous_lmk(pb::RetirePreviousLmkRequest {})
        .await
        .expect_err("auditor");
    assert_eq!(s.code(), Code::PermissionDenied);
    day_works(&mut posp, &w).await;
}

/// Rotation fixtures: `n` terminals, signed in, each with a PIN pad.
async fn fleet(admin: &mut Admin, posp: &mut Posp, n: usize) -> Vec<World> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(setup_world(admin, posp, &format!("KILL{i:04}")).await);
    }
    out
}

/// After a restart: OK (the self-test unwrapped every stored key under the
/// current LMK), the same ids and KCVs, every block under `kp`, no `.next`
/// file, the chain valid, and the terminals' days work.
async fn consistent(
    dir: &Path,
    d: &Daemon,
    before: &BTreeMap<String, (String, String)>,
    worlds: &[World],
) -> pb::LmkStatus {
    let (mut admin, mut posp) = d.clients(dir).await;
    let (state, lmk) = lmk_status(&mut admin).await;
    assert_eq!(state, "OK");
    let now = stored_keys(&mut admin).await;
    assert_eq!(
        before
            .iter()
            .map(|(id, (kcv, _))| (id, kcv))
            .collect::<Vec<_>>(),
        now.iter()
            .map(|(id, (kcv, _))| (id, kcv))
            .collect::<Vec<_>>()
    );
    let kp = kp_of(&lmk.current_kcv);
    let mixed = now.values().filter(|(_, k)| *k != kp).count();
    assert_eq!(
        mixed, 0,
        "{mixed} keys are not under the current LMK {}",
        lmk.current_kcv
    );
    assert!(!dir.join("lmk.sealed.next").exists());
    chain_valid(&mut admin).await;
    for w in worlds.iter().step_by(7) {
        day_works(&mut posp, w).await;
    }
    lmk
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_any_step_of_a_rotation_leaves_the_old_or_the_new_lmk_never_a_mix() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = start(dir.path());
    let (mut admin, mut posp) = d.clients(dir.path()).await;
    let worlds = fleet(&mut admin, &mut posp, 40).await;
    let before = stored_keys(&mut admin).await;
    assert!(before.len() >= 40 * 5, "{} keys", before.len());
    let mut lmk = lmk_status(&mut admin).await.1;
    drop((admin, posp));
    d.kill();

    // Deterministic crashes at each step (debug builds abort at a failpoint;
    // release builds have none, and test the random kills below only).
    let failpoints: &[(&str, bool)] = if cfg!(debug_assertions) {
        &[
            ("lmk-rotate-after-next-file", false),
            ("lmk-rotate-after-keys", false),
            ("lmk-rotate-after-switch", true),
            ("lmk-rotate-after-rename", true),
        ]
    } else {
        &[]
    };
    for &(point, completes) in failpoints {
        let d = tokio::task::block_in_place(|| {
            Daemon::start_with_env(dir.path(), &[("POSHSM_FAILPOINT", point)])
        });
        let (mut admin, _) = d.clients(dir.path()).await;
        let s = rotate(&mut admin)
            .await
            .expect_err("the daemon dies mid-rotation");
        assert!(
            matches!(s.code(), Code::Unavailable | Code::Unknown),
            "{point}: {s:?}"
        );
        drop(d);
        let d = start(dir.path());
        let now = consistent(dir.path(), &d, &before, &worlds).await;
        let (mut admin, _) = d.clients(dir.path()).await;
        let outcomes = audit_outcomes(&mut admin, "RotateLmk").await;
        if completes {
            assert_ne!(
                now.current_kcv, lmk.current_kcv,
                "{point}: rotation completed"
            );
            assert_eq!(now.previous_kcv, lmk.current_kcv, "{point}");
            if point == "lmk-rotate-after-switch" {
                assert_eq!(
                    outcomes.last().map(String::as_str),
                    Some("COMPLETED_AT_START")
                );
            }
            admin
                .retire_previous_lmk(pb::RetirePreviousLmkRequest {})
                .await
                .expect("retire");
        } else {
            assert_eq!(
                now.current_kcv, lmk.current_kcv,
                "{point}: rotation rolled back"
            );
            assert!(now.previous_kcv.is_empty());
            assert_eq!(
                outcomes.last().map(String::as_str),
                Some("ROLLED_BACK_AT_START")
            );
        }
        lmk = lmk_status(&mut admin).await.1;
        drop(admin);
        d.kill();
    }

    // SIGKILL at random moments around a rotation: first time one whole
    // rotation (seals, re-wrap, rename), then kill within 60–130 % of that, so
    // kills land before, around and after the commit point (the failpoints
    // above hit each step deterministically).
    let full = {
        let d = start(dir.path());
        let (mut admin, _) = d.clients(dir.path()).await;
        let t0 = std::time::Instant::now();
        rotate(&mut admin).await.expect("timed rotation");
        let full = t0.elapsed();
        admin
            .retire_previous_lmk(pb::RetirePreviousLmkRequest {})
            .await
            .expect("retire");
        drop(admin);
        d.kill();
        full
    };
    let mut seed = [0u8; 8];
    poshsm::crypto::random_bytes(&mut seed);
    let seed = u64::from_le_bytes(seed);
    eprintln!("lmk_rotation kill seed {seed:#x}, one rotation takes {full:?}");
    let (mut rolled_back, mut completed) = (0, 0);
    for round in 0..8u64 {
        let d = start(dir.path());
        let (mut admin, _) = d.clients(dir.path()).await;
        let old = lmk_status(&mut admin).await.1;
        // Spread the kill over the rotation (Argon2id seals, re-wrap, rename).
        let t = full.as_micros() as u64;
        let delay = Duration::from_micros(
            t * 6 / 10 + seed.rotate_left(round as u32 * 11) % (t * 7 / 10).max(1),
        );
        let call = tokio::spawn(async move { rotate(&mut admin).await });
        tokio::time::sleep(delay).await;
        d.kill();
        let _ = call.await;
        let d = start(dir.path());
        let now = consistent(dir.path(), &d, &before, &worlds).await;
        let (mut admin, _) = d.clients(dir.path()).await;
        if now.current_kcv == old.current_kcv {
            rolled_back += 1;
        } else {
            completed += 1;
            assert_eq!(now.previous_kcv, old.current_kcv);
            admin
                .retire_previous_lmk(pb::RetirePreviousLmkRequest {})
                .await
                .expect("retire");
        }
        drop(admin);
        d.kill();
    }
    eprintln!("random kills: {rolled_back} rolled back, {completed} completed");
}

/// Two nodes sharing one LMK (the scale-out of OPERATIONS.md §4): node A
/// rotates, node B adopts A's new set, and both then take each other's new
/// and previous-LMK blocks. A set not rotated from B's LMK is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_adopts_the_first_nodes_new_lmk() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start(da.path());
    // Node B starts from A's sealed LMK (copied, as after the ceremony).
    std::fs::create_dir_all(db.path()).unwrap();
    std::fs::copy(da.path().join("lmk.sealed"), db.path().join("lmk.sealed")).unwrap();
    let b = start(db.path());
    let (mut admin_a, mut posp_a) = a.clients(da.path()).await;
    let (mut admin_b, mut posp_b) = b.clients(db.path()).await;
    assert_eq!(
        lmk_status(&mut admin_a).await.1,
        lmk_status(&mut admin_b).await.1
    );
    let wa = setup_world(&mut admin_a, &mut posp_a, "NODEA001").await;
    let wb = setup_world(&mut admin_b, &mut posp_b, "NODEB001").await;
    // A POSP table entry made on B before the rotation.
    let (old_b_pik, old_b_pad) = stateless_pik(&mut posp_b, &wb, &wb.tmk_block).await;

    // An unrelated set is refused, and changes nothing.
    let stranger = tempfile::tempdir().unwrap();
    drop(start(stranger.path()));
    let s = admin_b
        .rotate_lmk(pb::RotateLmkRequest {
            adopt_sealed_set: std::fs::read_to_string(stranger.path().join("lmk.sealed")).unwrap(),
            ..Default::default()
        })
        .await
        .expect_err("not rotated from B's LMK");
    assert_eq!(
        (s.code(), reason(&s).as_str()),
        (Code::InvalidArgument, "INVALID_ARGUMENT")
    );
    assert!(
        s.message().contains("not rotated from this module's LMK"),
        "{}",
        s.message()
    );

    let lmk_a = rotate(&mut admin_a).await.expect("rotate A").lmk.unwrap();
    let lmk_b = admin_b
        .rotate_lmk(pb::RotateLmkRequest {
            adopt_sealed_set: std::fs::read_to_string(da.path().join("lmk.sealed")).unwrap(),
            ..Default::default()
        })
        .await
        .expect("B adopts")
        .into_inner()
        .lmk
        .unwrap();
    assert_eq!(
        lmk_a, lmk_b,
        "both nodes: same current, previous and window"
    );
    day_works(&mut posp_a, &wa).await;
    day_works(&mut posp_b, &wb).await;
    // B's old table entry (the ZPK alias is B's, so PINs go through B):
    // works on B in the window; A, which never stored it, translates it.
    assert_eq!(
        translate_with_block(&mut posp_b, &wb, &old_b_pik, &old_b_pad)
            .await
            .expect("B, window"),
        "2468"
    );
    let moved = translate_block(&mut posp_a, &old_b_pik)
        .await
        .expect("translate on A");
    assert!(moved.translated && moved.lmk_kcv == lmk_a.current_kcv);
    assert_eq!(
        translate_with_block(&mut posp_b, &wb, &moved.key_block, &old_b_pad)
            .await
            .expect("B, new block"),
        "2468"
    );
    // B restarts on the adopted set.
    b.kill();
    let b = start(db.path());
    let (mut admin_b, _) = b.clients(db.path()).await;
    assert_eq!(lmk_status(&mut admin_b).await, ("OK".to_string(), lmk_a));
}

/// Traffic keeps flowing while the LMK rotates and the previous one retires:
/// PIN translations, MACs and sign-ins (stored and stateless) from two
/// clients, with no error, no ALARM, and every stored key under the current
/// LMK at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_keeps_flowing_through_a_rotation_and_a_retirement() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = start(dir.path());
    let (mut admin, mut posp) = d.clients(dir.path()).await;
    let mut worlds = Vec::new();
    for i in 0..2 {
        worlds.push(setup_world(&mut admin, &mut posp, &format!("FLOW{i:04}")).await);
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for mut w in worlds {
        let (mut posp, stop) = (posp.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut errors) = (0u64, Vec::new());
            // At most one round per 60 ms: a terminal's 20 translations a second
            // (the default security trigger) is a limit a release build reaches.
            let mut pace = tokio::time::interval(Duration::from_millis(60));
            pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                pace.tick().await;
                let r = async {
                    try_day(&mut posp, &w).await?;
                    let s = posp
                        .sign_in(w.pad.sign_in_request())
                        .await
                        .map_err(|s| format!("SignIn: {s:?}"))?
                        .into_inner();
                    w.pad.load_field62(&s.field62, s.layout)?;
                    // The blocks handed out are usable right away.
                    let pik = s.pik.ok_or("no pik")?;
                    translate_block(&mut posp, &pik.key_block)
                        .await
                        .map_err(|s| format!("TranslateKeyBlock of a fresh block: {s:?}"))?;
                    // The POSP's table entry for the TMK, migrated as it goes
                    // (a no-op outside the window).
                    w.tmk_block = translate_block(&mut posp, &w.tmk_block)
                        .await
                        .map_err(|s| format!("TranslateKeyBlock of the TMK: {s:?}"))?
                        .key_block;
                    let (block, pad) = stateless_pik(&mut posp, &w, &w.tmk_block).await;
                    translate_with_block(&mut posp, &w, &block, &pad)
                        .await
                        .map_err(|s| format!("stateless TranslatePin: {s:?}"))?;
                    Ok::<_, String>(())
                }
                .await;
                match r {
                    Ok(()) => ok += 1,
                    Err(e) => errors.push(e),
                }
            }
            (ok, errors)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    rotate(&mut admin).await.expect("rotate under traffic");
    tokio::time::sleep(Duration::from_millis(300)).await;
    admin
        .retire_previous_lmk(pb::RetirePreviousLmkRequest {})
        .await
        .expect("retire under traffic");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for t in tasks {
        let (ok, errors) = t.await.expect("task");
        assert!(
            errors.is_empty(),
            "{} errors, first: {:?}",
            errors.len(),
            errors.first()
        );
        total += ok;
    }
    assert!(total >= 4, "{total} rounds");
    let (state, lmk) = lmk_status(&mut admin).await;
    assert_eq!(state, "OK");
    let kp = kp_of(&lmk.current_kcv);
    assert!(stored_keys(&mut admin)
        .await
        .values()
        .all(|(_, k)| *k == kp));
    chain_valid(&mut admin).await;
    eprintln!("{total} rounds of traffic during the rotation");
}
