//! Shared helpers for integration tests: running the Python cross-check
//! scripts (psec, `cryptography`) as independent implementations.
#![allow(dead_code)]

pub mod daemon;

use serde_json::Value;
use std::io::Write;
use std::process::{Command, Stdio};

/// True when CI demands the cross-checks (POSHSM_CROSSCHECK=require).
pub fn crosscheck_required() -> bool {
    std::env::var("POSHSM_CROSSCHECK")
        .map(|v| v == "require")
        .unwrap_or(false)
}

/// Runs `tests/crosscheck/<script>` with one JSON request per line and returns
/// one JSON answer per request. `None` (after printing SKIPPED) when python3 or
/// its modules are missing, unless the cross-checks are required.
pub fn python(script: &str, requests: &[Value]) -> Option<Vec<Value>> {
    let path = format!("{}/tests/crosscheck/{script}", env!("CARGO_MANIFEST_DIR"));
    let probe = Command::new("python3")
        .args(["-c", "import psec, cryptography"])
        .output();
    match probe {
        Ok(o) if o.status.success() => {}
        _ => {
            assert!(
                !crosscheck_required(),
                "POSHSM_CROSSCHECK=require but python3 with psec and cryptography is not available"
            );
            eprintln!("SKIPPED: python3 with psec and cryptography not available");
            return None;
        }
    }
    let mut child = Command::new("python3")
        .arg(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python3");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        for r in requests {
            writeln!(stdin, "{r}").expect("write request");
        }
    }
    let out = child.wait_with_output().expect("python output");
    assert!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("answer is JSON"))
        .collect();
    assert_eq!(
        answers.len(),
        requests.len(),
        "one answer per request from {script}"
    );
    Some(answers)
}

/// Upper-case hex.
pub fn hx(b: &[u8]) -> String {
    hex::encode_upper(b)
}

/// Decodes hex from a JSON string field.
pub fn unhex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("valid hex")
}

/// The stable reason code (`ErrorInfo.reason`) of a gRPC status, or "".
pub fn reason(s: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    s.get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}
