//! Cross-check of `poshsm::crypto` against independent implementations on random cases:
//! psec (PIN blocks ISO 0/3/4, CBC and retail MACs, KCV) and Python `cryptography`
//! (TDES/AES/SM4 ECB and CBC, AES/SM4/TDES CMAC, and the UnionPay ECB MAC and SM4 PIN
//! block built from raw ECB). The oracle is `tests/crosscheck/crypto_check.py`.
//!
//! If python3, psec or cryptography is missing this prints "SKIPPED: …" and passes, unless
//! `POSHSM_CROSSCHECK=require`, in which case it fails. `POSHSM_CROSSCHECK_SEED=<u64>`
//! replays a run; the seed is printed on every failure.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use poshsm::crypto::*;
use serde_json::{json, Value};

/// Cases per cross-checked function.
const CASES: usize = 250;

/// SplitMix64: a tiny deterministic generator so a failing run can be replayed by seed.
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
    fn range(&mut self, lo: usize, hi_inclusive: usize) -> usize {
        lo + self.below(hi_inclusive - lo + 1)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn bytes_between(&mut self, lo: usize, hi_inclusive: usize) -> Vec<u8> {
        let n = self.range(lo, hi_inclusive);
        self.bytes(n)
    }
    fn digits_between(&mut self, lo: usize, hi_inclusive: usize) -> String {
        let n = self.range(lo, hi_inclusive);
        (0..n)
            .map(|_| char::from(b'0' + self.below(10) as u8))
            .collect()
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

fn alg_name(a: Algorithm) -> &'static str {
    match a {
        Algorithm::Des => "DES",
        Algorithm::Tdes2 => "TDES2",
        Algorithm::Tdes3 => "TDES3",
        Algorithm::Aes128 => "AES128",
        Algorithm::Aes192 => "AES192",
        Algorithm::Aes256 => "AES256",
        Algorithm::Sm4 => "SM4",
    }
}

fn up(b: &[u8]) -> String {
    hex::encode_upper(b)
}

fn unhex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap_or("zz")).unwrap_or_else(|_| panic!("bad hex from oracle: {v}"))
}

fn padding_of(n: u64) -> Padding {
    match n {
        1 => Padding::Method1,
        2 => Padding::Method2,
        _ => Padding::Method3,
    }
}

/// A DES-family key: random, odd parity (psec and OpenSSL accept any parity, but real keys
/// have it), never weak.
fn key_for(rng: &mut Rng, alg: Algorithm) -> Vec<u8> {
    loop {
        let mut k = rng.bytes(alg.key_len());
        if alg.is_des_family() {
            adjust_odd_parity(&mut k);
            if has_weak_part(&k) {
                continue;
            }
        }
        return k;
    }
}

/// What the Rust side checks once the oracle has answered.
enum Check {
    /// The oracle's `field` must equal this upper-case hex.
    Equal { field: &'static str, ours: String },
    /// PIN round trip: the oracle decoded our block to `pin`, and we decode its `block`.
    Pin {
        format: PinBlockFormat,
        key: Option<(Algorithm, Vec<u8>)>,
        pin: String,
        pan: String,
    },
}

struct Case {
    request: Value,
    check: Check,
}

fn build_cases(rng: &mut Rng) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut push = |request: Value, check: Check| cases.push(Case { request, check });
    let all = Algorithm::ALL;
    let wide = [
        Algorithm::Aes128,
        Algorithm::Aes192,
        Algorithm::Aes256,
        Algorithm::Sm4,
    ];

    for _ in 0..CASES {
        // ECB and CBC, both directions.
        let alg = rng.pick(&all);
        let key = key_for(rng, alg);
        let c = Cipher::new(alg, &key).unwrap();
        let blocks = rng.range(0, 5);
        let data = rng.bytes(blocks * alg.block_len());
        let mut ours = data.clone();
        c.ecb_encrypt(&mut ours).unwrap();
        let mut back = ours.clone();
        c.ecb_decrypt(&mut back).unwrap();
        assert_eq!(back, data, "ECB decrypt({alg}) must invert encrypt");
        push(
            json!({"op": "ecb", "alg": alg_name(alg), "key": up(&key), "data": up(&data)}),
            Check::Equal {
                field: "enc",
                ours: up(&ours),
            },
        );

        let alg = rng.pick(&all);
        let key = key_for(rng, alg);
        let c = Cipher::new(alg, &key).unwrap();
        let iv = rng.bytes(alg.block_len());
        let blocks = rng.range(1, 5);
        let data = rng.bytes(blocks * alg.block_len());
        let mut ours = data.clone();
        c.cbc_encrypt(&iv, &mut ours).unwrap();
        let mut back = ours.clone();
        c.cbc_decrypt(&iv, &mut back).unwrap();
        assert_eq!(back, data, "CBC decrypt({alg}) must invert encrypt");
        push(
            json!({"op": "cbc", "alg": alg_name(alg), "key": up(&key), "iv": up(&iv), "data": up(&data)}),
            Check::Equal {
                field: "enc",
                ours: up(&ours),
            },
        );

        // CMAC over every algorithm.
        let alg = rng.pick(&all);
        let key = key_for(rng, alg);
        let c = Cipher::new(alg, &key).unwrap();
        let data = rng.bytes_between(0, 70);
        push(
            json!({"op": "cmac", "alg": alg_name(alg), "key": up(&key), "data": up(&data)}),
            Check::Equal {
                field: "mac",
                ours: up(&cmac(&c, &data)),
            },
        );

        // KCV (psec for DES/TDES, CMAC for AES, ECB for SM4).
        let alg = rng.pick(&all);
        let key = key_for(rng, alg);
        let c = Cipher::new(alg, &key).unwrap();
        push(
            json!({"op": "kcv", "alg": alg_name(alg), "key": up(&key)}),
            Check::Equal {
                field: "kcv",
                ours: up(&kcv_block(&c)),
            },
        );

        // ISO 0 (deterministic: exact compare both ways) and ISO 3 (random fill: decode
        // each other's block). psec needs a PAN of at least 13 digits.
        for format in [PinBlockFormat::Iso0, PinBlockFormat::Iso3] {
            let pin_s = rng.digits_between(4, 12);
            let pan_s = rng.digits_between(13, 19);
            let (pin, pan) = (Pin::parse(&pin_s).unwrap(), Pan::parse(&pan_s).unwrap());
            let (op, ours) = match format {
                PinBlockFormat::Iso0 => ("iso0", encode_iso0(&pin, &pan)),
                _ => ("iso3", encode_iso3(&pin, &pan)),
            };
            push(
                json!({"op": op, "pin": pin_s, "pan": pan_s, "ours": up(&*ours)}),
                Check::Pin {
                    format,
                    key: None,
                    pin: pin_s.clone(),
                    pan: pan_s.clone(),
                },
            );
        }

        // ISO 4 under AES (psec supports AES only), PANs of 12–19 digits.
        let alg = rng.pick(&[Algorithm::Aes128, Algorithm::Aes192, Algorithm::Aes256]);
        let key = key_for(rng, alg);
        let c = Cipher::new(alg, &key).unwrap();
        let pin_s = rng.digits_between(4, 12);
        let pan_s = rng.digits_between(12, 19);
        let ours = encipher_iso4(
            &c,
            &Pin::parse(&pin_s).unwrap(),
            &Pan::parse(&pan_s).unwrap(),
        )
        .unwrap();
        push(
            json!({"op": "iso4", "key": up(&key), "pin": pin_s, "pan": pan_s, "ours": up(&ours)}),
            Check::Pin {
                format: PinBlockFormat::Iso4,
                key: Some((alg, key)),
                pin: pin_s,
                pan: pan_s,
            },
        );

        // Enciphered ISO 0/3 through the generic helper: plain ECB under TDES, the
        // zero-padded 16-byte form under SM4/AES.
        let alg = if rng.below(2) == 0 {
            rng.pick(&wide)
        } else {
            rng.pick(&all)
        };
        let format = rng.pick(&[PinBlockFormat::Iso0, PinBlockFormat::Iso3]);
        let key = key_for(rng, alg);
        let c = Cipher::new(alg, &key).unwrap();
        let pin_s = rng.digits_between(4, 12);
        let pan_s = rng.digits_between(13, 19);
        let pan = Pan::parse(&pan_s).unwrap();
        let ours = encipher(format, &c, &Pin::parse(&pin_s).unwrap(), Some(&pan)).unwrap();
        let fname = if format == PinBlockFormat::Iso0 {
            "iso0"
        } else {
            "iso3"
        };
        push(
            json!({"op": "pin_enc", "alg": alg_name(alg), "key": up(&key), "format": fname,
                   "pin": pin_s, "pan": pan_s, "ours": up(&ours)}),
            Check::Pin {
                format,
                key: Some((alg, key)),
                pin: pin_s,
                pan: pan_s,
            },
        );

        // ISO 9797-1 alg. 1 (X9.9 / full-TDES / AES / SM4 CBC-MAC), every padding.
        let alg = rng.pick(&all);
        let key = key_for(rng, alg);
        let c = Cipher::new(alg, &key).unwrap();
        let data = rng.bytes_between(0, 70);
        let padding = rng.range(1, 3) as u64;
        push(
            json!({"op": "cbc_mac", "alg": alg_name(alg), "key": up(&key), "data": up(&data), "padding": padding}),
            Check::Equal {
                field: "mac",
                ours: up(&iso9797_alg1(&c, &data, padding_of(padding))),
            },
        );

        // ISO 9797-1 alg. 3 (X9.19), 2- and 3-key, every padding.
        let alg = rng.pick(&[Algorithm::Tdes2, Algorithm::Tdes3]);
        let key = key_for(rng, alg);
        let data = rng.bytes_between(0, 70);
        let padding = rng.range(1, 3) as u64;
        let ours = iso9797_alg3(&key, &data, padding_of(padding)).unwrap();
        push(
            json!({"op": "retail_mac", "key": up(&key), "data": up(&data), "padding": padding}),
            Check::Equal {
                field: "mac",
                ours: up(&ours),
            },
        );

        // UnionPay ECB MAC over every algorithm.
        let alg = rng.pick(&all);
        let key = key_for(rng, alg);
        let c = Cipher::new(alg, &key).unwrap();
        let data = rng.bytes_between(0, 120);
        push(
            json!({"op": "unionpay_ecb", "alg": alg_name(alg), "key": up(&key), "data": up(&data)}),
            Check::Equal {
                field: "mac",
                ours: up(&unionpay_ecb(&c, &data)),
            },
        );
    }
    cases
}

fn script_path() -> PathBuf {
    // `file!()` is relative to the package root in the real crate and absolute in a
    // scratch package that points at this file.
    let here = PathBuf::from(file!());
    let here = if here.is_absolute() {
        here
    } else {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(here)
    };
    here.parent()
        .expect("test file has a directory")
        .join("crosscheck/crypto_check.py")
}

fn skip(reason: &str) {
    if std::env::var("POSHSM_CROSSCHECK").as_deref() == Ok("require") {
        panic!("cross-check required (POSHSM_CROSSCHECK=require) but unavailable: {reason}");
    }
    println!("SKIPPED: {reason}");
}

/// Decodes the oracle's PIN block with our code.
fn decode_theirs(
    format: PinBlockFormat,
    key: &Option<(Algorithm, Vec<u8>)>,
    block: &[u8],
    pan: &Pan,
) -> Result<Pin, CryptoError> {
    match key {
        Some((alg, key)) => decipher(format, &Cipher::new(*alg, key)?, block, Some(pan)),
        None => {
            let b: [u8; 8] = block
                .try_into()
                .map_err(|_| CryptoError::InvalidPinBlock("oracle block not 8 bytes"))?;
            match format {
                PinBlockFormat::Iso0 => decode_iso0(&b, pan),
                _ => decode_iso3(&b, pan),
            }
        }
    }
}

#[test]
fn crypto_matches_psec_and_python_cryptography_on_random_cases() {
    let seed = std::env::var("POSHSM_CROSSCHECK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let mut b = [0u8; 8];
            random_bytes(&mut b);
            u64::from_le_bytes(b)
        });
    let mut rng = Rng(seed);
    let cases = build_cases(&mut rng);

    let script = script_path();
    let child = Command::new("python3")
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return skip(&format!("cannot run python3: {e}")),
    };
    let mut stdin = child.stdin.take().expect("piped stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));

    let mut first = String::new();
    stdout.read_line(&mut first).expect("read oracle banner");
    let banner: Value = serde_json::from_str(&first).unwrap_or(Value::Null);
    if let Some(reason) = banner.get("skipped").and_then(Value::as_str) {
        let _ = child.wait();
        return skip(reason);
    }
    assert_eq!(
        banner["ready"],
        true,
        "oracle did not start: {first:?} ({})",
        script.display()
    );

    let lines: Vec<String> = cases
        .iter()
        .enumerate()
        .map(|(id, c)| {
            let mut r = c.request.clone();
            r["id"] = json!(id);
            r.to_string()
        })
        .collect();
    let writer = std::thread::spawn(move || {
        for l in lines {
            writeln!(stdin, "{l}").expect("write to oracle");
        }
        // Dropping stdin closes it, so the oracle finishes.
    });

    let mut answers: HashMap<u64, Value> = HashMap::new();
    for line in stdout.lines() {
        let v: Value = serde_json::from_str(&line.expect("read oracle")).expect("oracle JSON");
        let id = v["id"].as_u64().expect("oracle id");
        answers.insert(id, v);
    }
    writer.join().expect("writer thread");
    assert!(
        child.wait().expect("oracle exit").success(),
        "oracle failed"
    );

    let mut failures = Vec::new();
    let mut per_op: HashMap<String, usize> = HashMap::new();
    for (id, case) in cases.iter().enumerate() {
        let op = case.request["op"].as_str().unwrap_or("?").to_string();
        *per_op.entry(op.clone()).or_default() += 1;
        let Some(ans) = answers.get(&(id as u64)) else {
            failures.push(format!("case {id} ({op}): no answer"));
            continue;
        };
        if let Some(err) = ans.get("error") {
            failures.push(format!(
                "case {id} ({op}): oracle error {err} for {}",
                case.request
            ));
            continue;
        }
        match &case.check {
            Check::Equal { field, ours } => {
                let theirs = ans[*field].as_str().unwrap_or("<missing>");
                if theirs != ours {
                    failures.push(format!(
                        "case {id} ({op}): ours {ours} != oracle {theirs} for {}",
                        case.request
                    ));
                }
            }
            Check::Pin {
                format,
                key,
                pin,
                pan,
            } => {
                if ans["decoded_ours"].as_str() != Some(pin.as_str()) {
                    failures.push(format!(
                        "case {id} ({op}): oracle decoded our block to {} for {}",
                        ans["decoded_ours"], case.request
                    ));
                }
                let pan_v = Pan::parse(pan).unwrap();
                let theirs = unhex(&ans["block"]);
                match decode_theirs(*format, key, &theirs, &pan_v) {
                    Ok(p) if p.expose_digits() == pin.as_bytes() => {}
                    other => failures.push(format!(
                        "case {id} ({op}): we decoded the oracle's block {} to {other:?} for {}",
                        up(&theirs),
                        case.request
                    )),
                }
                // ISO 0 is deterministic (also when enciphered): compare exactly too.
                if *format == PinBlockFormat::Iso0 {
                    let ours = case.request["ours"].as_str().unwrap_or("");
                    if ans["block"].as_str() != Some(ours) {
                        failures.push(format!(
                            "case {id} ({op}): ISO 0 block ours {ours} != psec {}",
                            ans["block"]
                        ));
                    }
                }
            }
        }
    }
    let mut summary: Vec<_> = per_op.iter().collect();
    summary.sort();
    println!(
        "cross-checked {} cases, seed {seed}: {summary:?}",
        cases.len()
    );
    for (op, n) in &per_op {
        assert!(*n >= 200, "only {n} cases for {op}");
    }
    assert!(
        failures.is_empty(),
        "{} of {} cross-check cases failed (replay with POSHSM_CROSSCHECK_SEED={seed}):\n{}",
        failures.len(),
        cases.len(),
        failures
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
