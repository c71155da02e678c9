//! End to end over real mutual TLS: the `poshsm` binary runs `serve --dev` as a
//! child process and `poshsm admin … --json` drives it; the JSON output is parsed.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_poshsm");

/// The daemon; killed when dropped.
struct Daemon {
    child: Child,
    addr: String,
    data_dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    fn start() -> Daemon {
        let tmp = tempfile::tempdir().expect("temp dir");
        let data_dir = tmp.path().join("data");
        let mut child = Command::new(BIN)
            .arg("serve")
            .arg("--dev")
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--listen", "127.0.0.1:0"])
            .env("POSHSM_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start poshsm serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        // Keeps reading so the daemon never writes to a closed pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("poshsm listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        let mut d = Daemon {
            child,
            addr: String::new(),
            data_dir,
            _tmp: tmp,
        };
        d.addr = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the daemon did not print `poshsm listening on ADDR` within 20 s");
        d
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("admin")
            .arg("--addr")
            .arg(&self.addr)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(args)
            .env_remove("POSHSM_COMPONENTS")
            .env("POSHSM_LOG", "warn");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run poshsm admin")
    }

    /// Runs with `--json` after the subcommand; must succeed.
    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.run(&a);
        parse_ok(args, out)
    }
}

fn parse_ok(args: &[&str], out: Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "poshsm admin {args:?} failed: {}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("poshsm admin {args:?}: not JSON ({e}): {stdout}"))
}

fn s<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("no string {field} in {v}"))
}

fn is_kcv(k: &str) -> bool {
    k.len() == 6 && k.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Sets the low bit of each byte so it has odd parity.
fn odd(mut b: Vec<u8>) -> Vec<u8> {
    for x in &mut b {
        if x.count_ones() % 2 == 0 {
            *x ^= 1;
        }
    }
    b
}

#[test]
fn admin_cli_end_to_end() {
    let d = Daemon::start();
    assert!(Path::new(&d.data_dir).join("certs/admin.pem").exists());
    let mut control_calls = 0u64;

    // keys
    let zmk = d.json(&[
        "key",
        "generate",
        "--type",
        "zmk",
        "--alias",
        "zmk-1",
        "--exportable",
    ]);
    control_calls += 1;
    assert_eq!(s(&zmk, "key_type"), "ZMK");
    assert_eq!(s(&zmk, "algorithm"), "TDES_2KEY");
    assert_eq!(s(&zmk, "alias"), "zmk-1");
    assert_eq!(s(&zmk, "state"), "ACTIVE");
    assert!(is_kcv(s(&zmk, "kcv")));
    let zmk_id = s(&zmk, "key_id").to_string();
    assert!(zmk_id.starts_with('k') && zmk_id.len() == 25, "{zmk_id}");

    let list = d.json(&["key", "list"]);
    let list = list.as_array().expect("key list is an array");
    assert!(list
        .iter()
        .any(|k| k["alias"] == "zmk-1" && k["key_id"] == zmk_id));
    let zmks = d.json(&["key", "list", "--type", "zmk"]);
    assert!(zmks
        .as_array()
        .unwrap()
        .iter()
        .all(|k| k["key_type"] == "ZMK"));

    // a human table too
    let human = d.run(&["key", "list"]);
    assert!(human.status.success());
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.starts_with("KEY ID") && text.contains("zmk-1"),
        "{text}"
    );

    for r in [
        "zmk-1",
        zmk_id.as_str(),
        s(&zmk, "key_block"),
        &format!("id:{zmk_id}"),
    ] {
        let got = d.json(&["key", "get", r]);
        assert_eq!(s(&got, "key_id"), zmk_id, "key get {r}");
        assert_eq!(s(&got, "kcv"), s(&zmk, "kcv"));
    }

    // terminals; --json before the subcommand works too
    let t = parse_ok(
        &["terminal", "create"],
        d.run(&["--json", "terminal", "create", "T1", "--merchant", "M1"]),
    );
    control_calls += 1;
    assert_eq!(s(&t, "terminal_id"), "T1");
    assert_eq!(s(&t, "merchant_id"), "M1");
    assert!(is_kcv(s(&t, "tmk_kcv")));
    let got = d.json(&["terminal", "get", "T1"]);
    assert_eq!(s(&got, "tmk_key_id"), s(&t, "tmk_key_id"));
    let terminals = d.json(&["terminal", "list"]);
    assert!(terminals
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["terminal_id"] == "T1"));

    // sign-in: UNIONPAY_004 field 62 is 60 bytes
    let si = d.json(&["sign-in", "T1", "--tdk"]);
    assert_eq!(s(&si, "layout"), "UNIONPAY_004");
    assert_eq!(s(&si, "field62").len(), 120, "{si}");
    assert_eq!(si["key_version"], 1);
    for k in ["pik", "mak", "tdk"] {
        assert!(is_kcv(s(&si[k], "kcv")), "{k}: {si}");
        assert!(s(&si[k], "key_block").starts_with("D0"));
    }
    let t_after = d.json(&["terminal", "get", "T1"]);
    assert_eq!(t_after["key_version"], 1);

    // MACs with the terminal's MAK
    let data = "0200702406C020C09A11166228480000000001000000000000000100000112";
    let mac = d.json(&[
        "mac",
        "generate",
        "--terminal",
        "T1",
        "--algorithm",
        "unionpay-ecb",
        "--data",
        data,
    ]);
    let mac_hex = s(&mac, "mac").to_string();
    assert_eq!(mac_hex.len(), 16, "{mac}");
    assert_eq!(s(&mac, "mac_text").len(), 8);
    let ok = d.json(&[
        "mac",
        "verify",
        "--terminal",
        "T1",
        "--algorithm",
        "unionpay-ecb",
        "--data",
        data,
        "--mac",
        &mac_hex,
    ]);
    assert_eq!(ok["valid"], true);
    let ok_text = d.json(&[
        "mac",
        "verify",
        "--terminal",
        "T1",
        "--algorithm",
        "unionpay-ecb",
        "--data",
        data,
        "--mac-text",
        s(&mac, "mac_text"),
    ]);
    assert_eq!(ok_text["valid"], true);
    let mut bad = hex::decode(&mac_hex).unwrap();
    bad[0] ^= 0x01;
    let out = d.run(&[
        "mac",
        "verify",
        "--terminal",
        "T1",
        "--algorithm",
        "unionpay-ecb",
        "--data",
        data,
        "--mac",
        &hex::encode(bad),
        "--json",
    ]);
    assert!(!out.status.success(), "a wrong MAC exits non-zero");
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON even when invalid");
    assert_eq!(v["valid"], false);

    // a ZPK: export under the ZMK, retire
    let zpk = d.json(&[
        "key",
        "generate",
        "--type",
        "zpk",
        "--alias",
        "zpk-1",
        "--exportable",
    ]);
    control_calls += 1;
    let exp = d.json(&["key", "export", "zpk-1", "--under", "zmk-1"]);
    control_calls += 1;
    assert_eq!(s(&exp, "kcv"), s(&zpk, "kcv"));
    assert!(s(&exp, "tr31_key_block").len() > 40);
    let retired = d.json(&["key", "retire", "zpk-1"]);
    control_calls += 1;
    assert_eq!(s(&retired, "state"), "RETIRED");
    let got = d.json(&["key", "get", s(&zpk, "key_id")]);
    assert_eq!(s(&got, "state"), "RETIRED");

    // errors carry the reason code and exit non-zero
    let out = d.run(&["terminal", "get", "NOPE"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("[UNKNOWN_TERMINAL]"), "{err}");
    assert!(err.contains("terminal create NOPE"), "{err}");
    let out = d.run(&["key", "get", "no-such-alias"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("[UNKNOWN_KEY]"));

    // components from the environment: two odd-parity TDES components whose XOR,
    // parity-adjusted, is 0123456789ABCDEF FEDCBA9876543210 (KCV 08D7B4)
    let key = hex::decode("0123456789ABCDEFFEDCBA9876543210").unwrap();
    let c1 = odd(hex::decode("1F2E3D4C5B6A79880F1E2D3C4B5A6978").unwrap());
    let c2: Vec<u8> = c1.iter().zip(&key).map(|(a, k)| a ^ k ^ 0x01).collect();
    assert_eq!(odd(c2.clone()), c2, "c2 has odd parity");
    let comps = format!("{}\n{}\n", hex::encode_upper(&c1), hex::encode_upper(&c2));
    let out = d
        .cmd(&[
            "key",
            "import-components",
            "--type",
            "zmk",
            "--alias",
            "zmk-psec",
            "--json",
        ])
        .env("POSHSM_COMPONENTS", &comps)
        .output()
        .unwrap();
    control_calls += 1;
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let imported = parse_ok(&["key", "import-components"], out);
    assert_eq!(s(&imported, "kcv"), "08D7B4", "{imported}");
    assert_eq!(s(&imported, "algorithm"), "TDES_2KEY");
    assert_eq!(imported["component_kcvs"].as_array().unwrap().len(), 2);
    // no component ever printed
    for c in [&c1, &c2] {
        let h = hex::encode_upper(c);
        assert!(!stderr.to_uppercase().contains(&h));
        assert!(!imported.to_string().to_uppercase().contains(&h));
    }
    // a wrong expected component KCV is refused before anything is stored
    let out = d
        .cmd(&[
            "key",
            "import-components",
            "--type",
            "zmk",
            "--kcv",
            "000000",
            "--kcv",
            "000000",
        ])
        .env("POSHSM_COMPONENTS", &comps)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("KCV_MISMATCH"));

    // the audit chain, checked by the daemon and by the CLI
    let audit = d.json(&["audit", "verify"]);
    assert_eq!(audit["valid"], true, "{audit}");
    assert_eq!(audit["client"]["valid"], true, "{audit}");
    assert!(
        audit["events"].as_u64().unwrap() >= control_calls,
        "{audit}"
    );
    let log = d.json(&["audit", "log"]);
    let log = log.as_array().unwrap();
    assert!(log.len() as u64 >= control_calls);
    assert!(log.iter().any(|e| e["operation"] == "CreateTerminal"));
    let tail = d.json(&["audit", "log", "--since", "2"]);
    assert_eq!(tail.as_array().unwrap()[0]["seq"], 2);

    // a daemon that is not there
    let out = Command::new(BIN)
        .args(["admin", "--addr", "127.0.0.1:1", "status"])
        .arg("--data-dir")
        .arg(&d.data_dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is `poshsm serve` running"), "{err}");

    let st = d.json(&["status"]);
    assert_eq!(s(&st, "state"), "OK");
    assert!(is_kcv(s(&st, "lmk_kcv")));
    assert!(st["keys"].as_u64().unwrap() >= 4);
    assert_eq!(st["terminals"], 1);
}

#[test]
fn missing_certificates_get_a_hint() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["admin", "--addr", "127.0.0.1:1", "status"])
        .arg("--data-dir")
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--data-dir") || err.contains("--ca"), "{err}");
}

#[test]
fn lmk_rotation_from_the_command_line() {
    let d = Daemon::start();
    let zpk = d.json(&["key", "generate", "--type", "zpk", "--alias", "zpk-lmk"]);
    let old_block = s(&zpk, "key_block").to_string();
    let st0 = d.json(&["lmk", "status"]);
    assert_eq!(s(&st0, "previous_kcv"), "");
    let kcv0 = s(&st0, "current_kcv").to_string();
    assert_eq!(kcv0.len(), 16);

    // Retiring needs a previous LMK, and --yes.
    let out = d.run(&["lmk", "retire-previous"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NO_PREVIOUS_LMK"));

    let r = d.json(&["lmk", "rotate", "--dev"]);
    assert_eq!(s(&r, "previous_kcv"), kcv0);
    assert!(r["keys_rewrapped"].as_u64().unwrap() >= 1);
    let kcv1 = s(&r, "current_kcv").to_string();
    assert_ne!(kcv1, kcv0);
    // `status` shows the window in the human table.
    let human = String::from_utf8_lossy(&d.run(&["status"]).stdout).to_string();
    assert!(
        human.contains(&format!("{kcv0} (migration window open since")),
        "{human}"
    );
    // The stored key keeps its KCV; the caller's old block translates.
    assert_eq!(
        s(&d.json(&["key", "get", "zpk-lmk"]), "kcv"),
        s(&zpk, "kcv")
    );
    let t = d.json(&["key", "translate-block", &old_block]);
    let t = &t.as_array().unwrap()[0];
    assert_eq!(t["translated"], true);
    assert_eq!(s(t, "kcv"), s(&zpk, "kcv"));
    assert_eq!(s(t, "lmk_kcv"), kcv1);

    let out = d.run(&["lmk", "retire-previous"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("irreversible"));
    let r = d.json(&["lmk", "retire-previous", "--yes"]);
    assert_eq!(r["retired_kcvs"], serde_json::json!([kcv0]));
    let out = d.run(&["key", "translate-block", &old_block]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("[LMK_RETIRED]"));
}

/// The load generator end to end: it builds its fixtures through the admin
/// API, plays every terminal's PIN pad, checks each answer (a wrong PIN block
/// length or a MAC that does not verify counts as an error and fails the run),
/// and its in-process modes drive the core directly.
#[test]
fn the_load_generator_runs_clean_against_the_daemon_and_in_process() {
    let d = Daemon::start();
    let out = Command::new(BIN)
        .arg("bench")
        .arg("--addr")
        .arg(&d.addr)
        .arg("--data-dir")
        .arg(&d.data_dir)
        .args([
            "--rpc",
            "health,translate-pin,verify-mac,inprocess-translate-pin,inprocess-terminal-pin",
            // Open loop, slow enough for the default security trigger (20/s per terminal).
            "--rate",
            "200",
            "--terminals",
            "40",
            "--connections",
            "2",
            "--concurrency",
            "8",
            "--duration",
            "1",
            "--warmup",
            "0",
            "--json",
            "--cpu-pid",
            &d.child.id().to_string(),
        ])
        .env("POSHSM_LOG", "warn")
        .output()
        .expect("run poshsm bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("JSON row"))
        .collect();
    let names: Vec<&str> = rows.iter().map(|r| s(r, "rpc")).collect();
    assert_eq!(
        names,
        [
            "health",
            "translate-pin",
            "verify-mac",
            "inprocess-translate-pin",
            "inprocess-terminal-pin"
        ]
    );
    for r in &rows {
        assert_eq!(r["errors"], 0, "{r}");
        assert!(r["ok"].as_u64().unwrap_or(0) > 0, "{r}");
    }
    // --cpu-pid: both sides' CPU per call for the network RPCs (read in
    // 10 ms ticks, so a short run may read zero), none for the in-process ones.
    for r in &rows[..3] {
        let d = r["daemon_cpu_us"].as_f64().unwrap_or(-1.0);
        let g = r["generator_cpu_us"].as_f64().unwrap_or(-1.0);
        assert!(d >= 0.0 && g >= 0.0, "no CPU per call: {r}");
    }
    for r in &rows[3..] {
        assert!(r.get("daemon_cpu_us").is_none(), "{r}");
    }
}
