//! The Python POSP example (examples/python/posp_client.py) against the real
//! daemon binary: stubs generated at run time with grpcio-tools, mutual TLS with
//! the dev certificates, sign-in / PIN translation / MACs checked with psec.
//! Skipped (SKIPPED) when python3 lacks grpcio, grpcio-tools or psec, unless
//! POSHSM_CROSSCHECK=require (CI).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the daemon when the test ends, however it ends.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn python_ready() -> bool {
    let ok = Command::new("python3")
        .args(["-W", "ignore", "-c", "import grpc, grpc_tools.protoc, psec"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            !common::crosscheck_required(),
            "POSHSM_CROSSCHECK=require but python3 with grpcio, grpcio-tools and psec is not available"
        );
        eprintln!("SKIPPED: python3 with grpcio, grpcio-tools and psec not available");
    }
    ok
}

#[test]
fn the_python_posp_example_signs_in_translates_and_macs_against_the_daemon() {
    if !python_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_poshsm"))
        .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("POSHSM_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start poshsm serve");
    let stdout = child.stdout.take().expect("daemon stdout");
    let daemon = Daemon(child);
    // The dev first start seals an LMK and makes certificates, then prints the address.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("poshsm listening on ") {
                let _ = tx.send(addr.trim().to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the daemon printed `poshsm listening on ADDR`");

    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/python/posp_client.py"
    );
    let started = Instant::now();
    let out = Command::new("python3")
        .arg(script)
        .args(["--addr", &addr, "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("run python3");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "posp_client.py failed:\n{text}");
    assert!(text.contains("all checks passed"), "{text}");
    assert!(!text.contains("FAIL"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(60));
    drop(daemon);
}
