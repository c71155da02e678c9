//! Remote TMK change (远程更新主密钥): a new TMK under the current one, pending
//! until confirmed or used at sign-in, the old one valid until then. The
//! terminal side (decrypting the delivered TMK and field 62) is computed in Python.

mod common;

use common::{hx, python, reason, unhex};
use poshsm::proto as pb;
use poshsm::testing::MockHsm;
use serde_json::json;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_changes_its_tmk_remotely_and_signs_in_under_the_new_one() {
    if python(
        "terminal.py",
        &[json!({"op": "kcv", "key": "00".repeat(16)})],
    )
    .is_none()
    {
        return;
    }
    let mock = MockHsm::start().await.unwrap();
    let mut posp = mock.posp.clone();
    let mut admin = mock.admin.clone();
    // A terminal whose TMK the test knows (formed from components).
    let (parts, tmk) = poshsm::pinpad::tdes_components();
    let info = admin
        .import_key_components(pb::ImportKeyComponentsRequest {
            key_type: pb::KeyType::Tmk as i32,
            algorithm: pb::KeyAlgorithm::Tdes2key as i32,
            components: parts,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    admin
        .create_terminal(pb::CreateTerminalRequest {
            terminal_id: "RTMK0001".into(),
            tmk: Some(pb::KeyRef {
                r#ref: Some(pb::key_ref::Ref::KeyId(info.key_id)),
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let tid = "RTMK0001".to_string();
    let sign_in = |pending: bool| pb::SignInRequest {
        terminal_id: tid.clone(),
        use_pending_tmk: pending,
        ..Default::default()
    };
    let field62_ok = |key: &[u8], f62: &[u8]| {
        let r = python("terminal.py", &[json!({"op": "field62", "tmk": hx(key), "field62": hx(f62), "layout": "UNIONPAY_003"})]).unwrap();
        r[0]["cv_ok"] == true
    };

    let s = posp.sign_in(sign_in(true)).await.unwrap_err();
    assert_eq!(
        (s.code(), reason(&s).as_str()),
        (Code::FailedPrecondition, "NO_PENDING_TMK")
    );

    let first = posp
        .change_terminal_tmk(pb::ChangeTerminalTmkRequest {
            terminal_id: tid.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let t = admin
        .get_terminal(pb::GetTerminalRequest {
            terminal_id: tid.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        t.tmk_kcv, info.kcv,
        "the old TMK stays current until confirmed or used"
    );
    assert_eq!(t.pending_tmk_key_id, first.key_id);
    // The old TMK keeps working meanwhile: a lost response never strands the terminal.
    let day = posp.sign_in(sign_in(false)).await.unwrap().into_inner();
    assert!(
        field62_ok(&tmk, &day.field62),
        "field 62 still under the old TMK"
    );

    // A newer change replaces the pending one.
    let change = posp
        .change_terminal_tmk(pb::ChangeTerminalTmkRequest {
            terminal_id: tid.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        admin
            .get_key(pb::KeyRef {
                r#ref: Some(pb::key_ref::Ref::KeyId(first.key_id.clone()))
            })
            .await
            .is_err(),
        "superseded pending TMK deleted"
    );

    // The terminal decrypts the new TMK under its current one and checks the check value.
    let r = python(
        "terminal.py",
        &[json!({"op": "ecb", "key": hx(&tmk), "data": hx(&change.under_current_tmk), "encrypt": false})],
    )
    .unwrap();
    let new_tmk = unhex(&r[0]["data"]);
    let cv = python("terminal.py", &[json!({"op": "kcv", "key": hx(&new_tmk)})]).unwrap();
    assert_eq!(
        hex::encode_upper(&change.check_value),
        cv[0]["kcv"].as_str().unwrap()[..8]
    );

    // Sign in under the pending TMK: field 62 is under the new TMK, which becomes current.
    let day = posp.sign_in(sign_in(true)).await.unwrap().into_inner();
    assert!(
        field62_ok(&new_tmk, &day.field62),
        "field 62 under the new TMK"
    );
    assert!(!field62_ok(&tmk, &day.field62), "and not under the old one");
    let t = admin
        .get_terminal(pb::GetTerminalRequest {
            terminal_id: tid.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.tmk_kcv, change.kcv);
    assert!(t.pending_tmk_key_id.is_empty());
    let day = posp.sign_in(sign_in(false)).await.unwrap().into_inner();
    assert!(
        field62_ok(&new_tmk, &day.field62),
        "later sign-ins use the new TMK"
    );

    // Confirmation path: change again, confirm, and there is nothing left to confirm.
    let third = posp
        .change_terminal_tmk(pb::ChangeTerminalTmkRequest {
            terminal_id: tid.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let confirmed = posp
        .confirm_terminal_tmk(pb::ConfirmTerminalTmkRequest {
            terminal_id: tid.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(confirmed.tmk_kcv, third.kcv);
    let s = posp
        .confirm_terminal_tmk(pb::ConfirmTerminalTmkRequest {
            terminal_id: tid.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&s), "NO_PENDING_TMK");
    let ops: Vec<String> = mock
        .hsm
        .audit_log(0, 10_000)
        .unwrap()
        .into_iter()
        .map(|e| e.operation)
        .collect();
    assert_eq!(ops.iter().filter(|o| *o == "ChangeTerminalTmk").count(), 3);
    assert_eq!(ops.iter().filter(|o| *o == "ConfirmTerminalTmk").count(), 1);
    mock.stop().await;
}
