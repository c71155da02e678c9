//! Cross-check against psec (knovichikhin/psec, PyPI), an independent TR-31
//! implementation, on random cases in both directions: blocks psec wraps must unwrap
//! here to the same key and header, and blocks wrapped here must unwrap in psec.
//!
//! Runs `python3 tests/crosscheck/psec_tr31.py` once and talks to it over JSON lines.
//! If python3 or psec is missing the test prints "SKIPPED: psec not available" and
//! passes — unless `POSHSM_CROSSCHECK=require`, when it fails. Set
//! `POSHSM_CROSSCHECK_SEED=<u64>` to replay a run (the seed is printed on failure).
//! Also drives `examples/tr31` end to end when cargo has built it.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use keyblocks::{
    unwrap, wrap, Algorithm, Exportability, Header, KeyUsage, ModeOfUse, OptionalBlock, Version,
};
use rand_core::{OsRng, RngCore};

const SCRIPT: &str = "tests/crosscheck/psec_tr31.py";
/// Random cases per (version, KBPK size, key size) combination and direction.
const ROUNDS: usize = 3;

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn required() -> bool {
    std::env::var("POSHSM_CROSSCHECK").is_ok_and(|v| v == "require")
}

fn psec_available() -> bool {
    Command::new("python3")
        .arg(crate_dir().join(SCRIPT))
        .arg("--probe")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Small deterministic generator (splitmix64) so that a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn pick(&mut self, set: &[u8]) -> u8 {
        set[self.below(set.len())]
    }
}

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

fn random_header(rng: &mut Rng, version: Version) -> Header {
    // psec wants the 16 fixed header characters alphanumeric and block data printable.
    let exportability = [
        Exportability::Exportable,
        Exportability::NonExportable,
        Exportability::Sensitive,
    ][rng.below(3)];
    let mut header = Header {
        version,
        key_usage: KeyUsage([rng.pick(ALNUM), rng.pick(ALNUM)]),
        algorithm: Algorithm(rng.pick(b"TAD4H")),
        mode_of_use: ModeOfUse(rng.pick(b"BCDEGNVXY")),
        key_version: [rng.pick(ALNUM), rng.pick(ALNUM)],
        exportability,
        key_context: rng.pick(b"012"),
        optional_blocks: Vec::new(),
    };
    for _ in 0..rng.below(4) {
        let id = [rng.pick(ALNUM), rng.pick(ALNUM)];
        // psec keeps blocks in a dict (ids must be unique) and drops any id equal to
        // "PB" ignoring case ("pB" too), where we treat only "PB" as padding.
        if id.eq_ignore_ascii_case(&OptionalBlock::PB) || header.optional(&id).is_some() {
            continue;
        }
        // Mostly short blocks, sometimes long enough for the extended length form.
        let len = if rng.below(4) == 0 {
            250 + rng.below(100)
        } else {
            rng.below(40)
        };
        let data: String = (0..len)
            .map(|_| char::from(0x20 + rng.below(0x5F) as u8))
            .collect();
        header.optional_blocks.push(OptionalBlock { id, data });
    }
    header
}

struct Psec {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Psec {
    fn start() -> Psec {
        let mut child = Command::new("python3")
            .arg(crate_dir().join(SCRIPT))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start python3");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Psec {
            child,
            stdin,
            stdout,
        }
    }

    fn call(&mut self, request: &str) -> Vec<String> {
        writeln!(self.stdin, "{request}").expect("write to psec");
        self.stdin.flush().expect("flush");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read from psec");
        line.trim_end_matches('\n')
            .split('\t')
            .map(str::to_owned)
            .collect()
    }

    fn wrap(&mut self, kbpk: &[u8], template: &str, key: &[u8], masked: Option<usize>) -> String {
        let masked = masked.map_or("null".to_owned(), |m| m.to_string());
        let answer = self.call(&format!(
            r#"{{"op":"wrap","kbpk":"{}","header":"{}","key":"{}","masked_key_len":{}}}"#,
            hex::encode(kbpk),
            json_escape(template),
            hex::encode(key),
            masked
        ));
        assert_eq!(answer[0], "ok", "psec wrap failed: {answer:?}");
        answer[1].clone()
    }

    fn unwrap(&mut self, kbpk: &[u8], block: &str) -> Vec<String> {
        self.call(&format!(
            r#"{{"op":"unwrap","kbpk":"{}","block":"{}"}}"#,
            hex::encode(kbpk),
            json_escape(block)
        ))
    }
}

impl Drop for Psec {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn json_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Checks psec's view of a block (an `ok` answer) against the header we meant.
fn assert_psec_sees(answer: &[String], header: &Header, key: &[u8], context: &str) {
    assert_eq!(
        answer[0], "ok",
        "psec refused our block: {answer:?} ({context})"
    );
    assert_eq!(answer[1], hex::encode_upper(key), "{context}");
    assert_eq!(answer[2], header.version.to_string(), "{context}");
    assert_eq!(answer[3], header.key_usage.to_string(), "{context}");
    assert_eq!(answer[4], header.algorithm.to_string(), "{context}");
    assert_eq!(answer[5], header.mode_of_use.to_string(), "{context}");
    assert_eq!(answer[6].as_bytes(), &header.key_version, "{context}");
    assert_eq!(answer[7], header.exportability.to_string(), "{context}");
    assert_eq!(
        answer[8],
        format!("{}0", char::from(header.key_context)),
        "{context}"
    );
    let blocks: Vec<String> = header
        .optional_blocks
        .iter()
        .filter(|b| !b.is_padding())
        .map(|b| format!("{}{}={}", char::from(b.id[0]), char::from(b.id[1]), b.data))
        .collect();
    assert_eq!(&answer[9..], &blocks[..], "{context}");
}

fn same_header_modulo_padding(a: &Header, b: &Header) -> bool {
    let strip = |h: &Header| {
        let mut h = h.clone();
        h.optional_blocks.retain(|b| !b.is_padding());
        h
    };
    strip(a) == strip(b)
}

#[test]
fn psec_and_keyblocks_unwrap_each_others_blocks() {
    if !psec_available() {
        if required() {
            panic!("POSHSM_CROSSCHECK=require but python3/psec is not available (pip install psec cryptography)");
        }
        println!("SKIPPED: psec not available");
        return;
    }
    let seed = std::env::var("POSHSM_CROSSCHECK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| OsRng.next_u64());
    println!("psec cross-check seed: {seed} (replay with POSHSM_CROSSCHECK_SEED={seed})");
    let mut rng = Rng(seed);
    let mut psec = Psec::start();
    let mut checked = 0;

    let combos: &[(Version, &[usize])] = &[
        (Version::B, &[16, 24]),
        (Version::D, &[16, 24, 32]),
        (Version::A, &[16, 24]),
        (Version::C, &[16, 24]),
    ];
    // Every key size: 2-/3-key TDES, AES-128/192/256, single DES, and an odd length.
    let key_sizes = [16usize, 24, 16, 24, 32, 8, 5];
    for &(version, kbpk_sizes) in combos {
        for &kbpk_len in kbpk_sizes {
            for &key_len in &key_sizes {
                for _ in 0..ROUNDS {
                    let kbpk = rng.bytes(kbpk_len);
                    let key = rng.bytes(key_len);
                    let header = random_header(&mut rng, version);
                    let masked = match rng.below(3) {
                        0 => None,
                        1 => Some(key_len),
                        _ => Some(key_len + rng.below(20)),
                    };
                    let context = format!(
                        "seed {seed}, version {version}, KBPK {kbpk_len} bytes, key {key_len} bytes"
                    );

                    // Rust wraps, psec unwraps.
                    let block = wrap(&kbpk, &header, &key, masked).expect("wrap");
                    assert_psec_sees(&psec.unwrap(&kbpk, &block), &header, &key, &context);

                    // psec wraps (from our serialized header as its template), Rust unwraps.
                    let template = header.to_header_string().expect("header serializes");
                    let theirs = psec.wrap(&kbpk, &template, &key, masked);
                    let out = unwrap(&kbpk, &theirs)
                        .unwrap_or_else(|e| panic!("psec block {theirs} refused: {e} ({context})"));
                    assert_eq!(&out.key[..], &key[..], "{context}");
                    assert!(
                        same_header_modulo_padding(&out.header, &header),
                        "header mismatch: {:?} vs {:?} ({context})",
                        out.header,
                        header
                    );
                    checked += 2;
                }
            }
        }
    }
    println!("psec cross-check: {checked} blocks agreed");
    exercise_example_tool(&mut psec, &mut rng);
}

/// Runs `examples/tr31` once in each direction against psec, if cargo built it
/// (`cargo test` builds examples next to the test binaries' `deps` directory).
fn exercise_example_tool(psec: &mut Psec, rng: &mut Rng) {
    let Some(tool) = example_binary() else {
        println!("note: examples/tr31 not built; end-to-end check of the tool skipped");
        return;
    };
    let kbpk = rng.bytes(32);
    let key = rng.bytes(16);
    let output = Command::new(&tool)
        .args([
            "wrap",
            "--kbpk",
            &hex::encode_upper(&kbpk),
            "--header",
            "D0000P0AE00N0000",
            "--key",
            &hex::encode_upper(&key),
        ])
        .output()
        .expect("run tr31 example");
    assert!(output.status.success(), "tr31 wrap failed: {output:?}");
    let block = String::from_utf8(output.stdout).expect("utf8");
    let block = block.trim();
    let answer = psec.unwrap(&kbpk, block);
    assert_eq!(answer[0], "ok", "{answer:?}");
    assert_eq!(answer[1], hex::encode_upper(&key));

    let theirs = psec.wrap(&kbpk, "D0000P0AE00N0000", &key, None);
    let output = Command::new(&tool)
        .args(["unwrap", "--kbpk", &hex::encode_upper(&kbpk), &theirs])
        .output()
        .expect("run tr31 example");
    assert!(output.status.success(), "tr31 unwrap failed: {output:?}");
    assert_eq!(
        String::from_utf8(output.stdout).expect("utf8").trim(),
        format!("header={} key={}", &theirs[..16], hex::encode_upper(&key))
    );

    // A wrong KBPK: message on stderr, non-zero exit, nothing on stdout.
    let output = Command::new(&tool)
        .args(["unwrap", "--kbpk", &hex::encode_upper([0u8; 32]), &theirs])
        .output()
        .expect("run tr31 example");
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    assert!(String::from_utf8_lossy(&output.stderr).contains("MAC does not verify"));
    println!("examples/tr31 agreed with psec in both directions");
}

fn example_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let profile_dir = exe.parent()?.parent()?;
    let name = format!("tr31{}", std::env::consts::EXE_SUFFIX);
    let path = profile_dir.join("examples").join(name);
    Path::new(&path).is_file().then_some(path)
}
