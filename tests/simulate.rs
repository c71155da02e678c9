//! `poshsm simulate`: a short business day passes with only expected failures
//! against the in-process daemon and against a running `serve --dev`; a
//! daemon whose security trigger throttles legitimate traffic makes the day
//! fail (non-zero exit, the reason named).

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

fn poshsm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_poshsm"))
        .args(args)
        .env("POSHSM_LOG", "warn")
        .output()
        .expect("run poshsm")
}

fn report(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON summary ({e}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

struct Daemon(Child, String);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `poshsm serve --dev` on 127.0.0.1:0 in `dir`, optionally with a config file.
fn serve(dir: &Path, config: Option<&str>) -> Daemon {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_poshsm"));
    cmd.args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("POSHSM_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(text) = config {
        let p = dir.with_extension("toml");
        std::fs::write(&p, text).unwrap();
        cmd.arg("--config").arg(p);
    }
    let mut child = cmd.spawn().expect("start poshsm serve");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(a) = line.strip_prefix("poshsm listening on ") {
                let _ = tx.send(a.trim().to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("daemon address");
    Daemon(child, addr)
}

#[test]
fn a_short_day_in_process_has_only_expected_failures() {
    let out = poshsm(&[
        "simulate",
        "--terminals",
        "24",
        "--duration",
        "4",
        "--terminal-tps",
        "4",
        "--failure-pct",
        "20",
        "--json",
    ]);
    let r = report(&out);
    assert!(
        out.status.success(),
        "{r:#}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(r["pass"], true);
    assert_eq!(r["morning_sign_ins"], 24);
    assert_eq!(r["midday_sign_ins"], 24, "every terminal re-signs mid-day");
    assert!(r["purchases"].as_u64().unwrap() > 50, "{r:#}");
    assert!(r["approved"].as_u64().unwrap() > 0);
    let expected = r["expected_failures"].as_object().unwrap();
    assert!(
        expected.values().map(|v| v.as_u64().unwrap()).sum::<u64>() > 0,
        "20% injected faults produce expected failures: {r:#}"
    );
    assert!(r["unexpected_failures"].as_object().unwrap().is_empty());
    assert_eq!(r["module_state"], "OK");
    // Sign-ins and provisioning are audited: 48 sign-ins, 24 terminals, ZMK, ZPK, ZAK, TMK.
    assert!(r["audit_events"].as_u64().unwrap() >= 48 + 24 + 4, "{r:#}");
}

#[test]
fn a_running_daemon_passes_and_a_throttling_one_fails_the_day() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ok");
    let d = serve(&dir, None);
    let data_dir = dir.to_str().unwrap();
    let out = poshsm(&[
        "simulate",
        "--addr",
        &d.1,
        "--data-dir",
        data_dir,
        "--terminals",
        "8",
        "--duration",
        "3",
        "--json",
    ]);
    let r = report(&out);
    assert!(out.status.success(), "{r:#}");
    assert_eq!(r["pass"], true);
    drop(d);

    // A security trigger far below the day's pace: legitimate PIN translations
    // are throttled, which the simulator counts as unexpected and fails on.
    let dir = tmp.path().join("tight");
    let d = serve(
        &dir,
        Some("[hsm]\npin_guard = { per_sec = 0.2, burst = 1.0 }\n"),
    );
    let out = poshsm(&[
        "simulate",
        "--addr",
        &d.1,
        "--data-dir",
        dir.to_str().unwrap(),
        "--terminals",
        "2",
        "--duration",
        "3",
        "--terminal-tps",
        "5",
        "--json",
    ]);
    let r = report(&out);
    assert!(!out.status.success(), "{r:#}");
    assert_eq!(r["pass"], false);
    let unexpected = r["unexpected_failures"].as_object().unwrap();
    assert!(
        unexpected.contains_key("TRANSLATE_PIN TERMINAL_THROTTLED"),
        "{r:#}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("unexpected failure"));
}

#[test]
fn a_terminal_pace_above_the_security_trigger_is_refused_up_front() {
    let out = poshsm(&["simulate", "--terminal-tps", "50"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("security trigger"), "{err}");
}
