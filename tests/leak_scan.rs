//! Leak scanner: runs the whole business day through a real poshsm server (built
//! here with `poshsm::server::serve` on a data directory this test owns, like
//! `MockHsm` does) while recording everything that leaves the module — every
//! gRPC response (its `Debug` form and its encoded bytes, so raw `bytes` fields
//! are covered), every error status (message, details, metadata), the tracing
//! output at TRACE level, the metrics page, and every file under the data
//! directory — then asserts that none of the clear keys the test knows (LMK,
//! components, ZMK, ZPK, ZAK, KEK, TMKs, every PIK/MAK/TDK from field 62) nor
//! the clear PINs appears anywhere, as raw bytes, upper-case hex or lower-case hex.
//!
//! The scanner is itself tested: a known key planted in the log, in a response
//! buffer and in a file of the data directory must be found.

use poshsm::crypto::pinblock::{self, Pan, Pin, PinBlockFormat};
use poshsm::crypto::{mac, Algorithm, Cipher};
use poshsm::hsm::{Hsm, HsmConfig};
use poshsm::keys::lmk::{dev_passphrases, KdfParams};
use poshsm::keys::Lmk;
use poshsm::proto::{self as pb, crypto_client::CryptoClient, key_admin_client::KeyAdminClient};
use poshsm::server::{metrics::Metrics, AccessConfig, TlsMaterial};
use poshsm::store::Store;
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use tonic::Code;

// ---- the scanner ----------------------------------------------------------------------

/// What must never be seen: named byte strings, each searched as raw bytes,
/// upper-case hex and lower-case hex.
struct Scanner {
    /// (label, pattern); every pattern is at least 6 bytes.
    patterns: Vec<(String, Vec<u8>)>,
    /// Patterns by their first 6 bytes.
    index: HashMap<[u8; 6], Vec<usize>>,
    /// Quick filter on the first two bytes.
    first2: Vec<bool>,
}

impl Scanner {
    fn new(secrets: &[(String, Vec<u8>)]) -> Scanner {
        let mut patterns = Vec::new();
        for (name, bytes) in secrets {
            assert!(bytes.len() >= 6, "{name}: too short to scan for");
            patterns.push((format!("{name} (raw)"), bytes.clone()));
            patterns.push((
                format!("{name} (upper hex)"),
                hex::encode_upper(bytes).into_bytes(),
            ));
            patterns.push((
                format!("{name} (lower hex)"),
                hex::encode(bytes).into_bytes(),
            ));
        }
        let mut index: HashMap<[u8; 6], Vec<usize>> = HashMap::new();
        let mut first2 = vec![false; 1 << 16];
        for (i, (_, p)) in patterns.iter().enumerate() {
            let mut k = [0u8; 6];
            k.copy_from_slice(&p[..6]);
            index.entry(k).or_default().push(i);
            first2[usize::from(p[0]) << 8 | usize::from(p[1])] = true;
        }
        Scanner {
            patterns,
            index,
            first2,
        }
    }

    /// Labels of the patterns found in `hay`.
    fn scan(&self, hay: &[u8]) -> HashSet<String> {
        let mut found = HashSet::new();
        if hay.len() < 6 {
            return found;
        }
        for i in 0..=hay.len() - 6 {
            if !self.first2[usize::from(hay[i]) << 8 | usize::from(hay[i + 1])] {
                continue;
            }
            let mut k = [0u8; 6];
            k.copy_from_slice(&hay[i..i + 6]);
            if let Some(ids) = self.index.get(&k) {
                for &id in ids {
                    let (label, p) = &self.patterns[id];
                    if hay[i..].starts_with(p) {
                        found.insert(label.clone());
                    }
                }
            }
        }
        found
    }
}

/// Every regular file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else if p.is_file() {
                out.push(p);
            }
        }
    }
    out
}

// ---- tracing into memory --------------------------------------------------------------

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs (once per process) a TRACE-level subscriber writing into memory.
fn log_capture() -> Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = Capture(buf.clone());
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .try_init()
            .expect("this test binary installs the only subscriber");
        buf
    })
    .clone()
}

fn log_snapshot(log: &Arc<Mutex<Vec<u8>>>) -> Vec<u8> {
    log.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

// ---- everything that leaves the module ----------------------------------------------------

#[derive(Default)]
struct Outbound {
    /// Debug forms, messages, metadata: text.
    text: Vec<u8>,
    /// Encoded responses and error details: bytes.
    bytes: Vec<u8>,
    responses: usize,
    errors: usize,
}

impl Outbound {
    fn metadata(&mut self, m: &tonic::metadata::MetadataMap) {
        let _ = writeln!(self.text, "{m:?}");
        for kv in m.iter() {
            if let tonic::metadata::KeyAndValueRef::Binary(_, v) = kv {
                if let Ok(b) = v.to_bytes() {
                    self.bytes.extend_from_slice(&b);
                }
            }
        }
    }

    fn record<T: prost::Message + std::fmt::Debug>(&mut self, m: &T) {
        let _ = writeln!(self.text, "{m:?}");
        self.bytes.extend_from_slice(&m.encode_to_vec());
        self.bytes.push(0);
        self.responses += 1;
    }

    fn status(&mut self, s: &tonic::Status) {
        let _ = writeln!(self.text, "{s:?}\n{}\n{}", s.message(), s);
        self.bytes.extend_from_slice(s.details());
        self.bytes.push(0);
        self.metadata(s.metadata());
        self.errors += 1;
    }

    /// A call that must succeed: records the response and returns it.
    fn ok<T: prost::Message + std::fmt::Debug>(
        &mut self,
        r: Result<tonic::Response<T>, tonic::Status>,
    ) -> T {
        match r {
            Ok(resp) => {
                self.metadata(resp.metadata());
                let m = resp.into_inner();
                self.record(&m);
                m
            }
            Err(s) => {
                self.status(&s);
                panic!("unexpected error: {s:?}")
            }
        }
    }

    /// A call that must fail with `code`: records the status.
    fn err<T: prost::Message + std::fmt::Debug>(
        &mut self,
        r: Result<tonic::Response<T>, tonic::Status>,
        code: Code,
    ) {
        match r {
            Ok(resp) => {
                let m = resp.into_inner();
                self.record(&m);
                panic!("expected {code:?}, got {m:?}")
            }
            Err(s) => {
                self.status(&s);
                assert_eq!(s.code(), code, "{s:?}");
            }
        }
    }
}

// ---- the test's own arithmetic ------------------------------------------------------------

fn random(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    poshsm::crypto::random_bytes(&mut v);
    v
}

fn odd(n: usize) -> Vec<u8> {
    let mut v = random(n);
    for b in v.iter_mut() {
        if b.count_ones() % 2 == 0 {
            *b ^= 1;
        }
    }
    v
}

fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.iter().zip(b).map(|(x, y)| x ^ y).collect()
}

fn tdes(key: &[u8]) -> Cipher {
    let alg = match key.len() {
        8 => Algorithm::Des,
        16 => Algorithm::Tdes2,
        _ => Algorithm::Tdes3,
    };
    Cipher::new(alg, key).unwrap()
}

fn ecb_decrypt(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut d = data.to_vec();
    tdes(key).ecb_decrypt(&mut d).unwrap();
    d
}

fn ecb_encrypt(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut d = data.to_vec();
    tdes(key).ecb_encrypt(&mut d).unwrap();
    d
}

fn kcv(key: &[u8]) -> String {
    hex::encode_upper(&ecb_encrypt(key, &[0u8; 8])[..3])
}

/// The keys in field 62 under `tmk`, each checked against its check value.
fn field62_keys(tmk: &[u8], f62: &[u8], slots: &[(usize, usize)], cv_len: usize) -> Vec<Vec<u8>> {
    let mut pos = 0;
    let mut keys = Vec::new();
    for &(klen, slot) in slots {
        let key = ecb_decrypt(tmk, &f62[pos..pos + klen]);
        pos += slot;
        let cv = &f62[pos..pos + cv_len];
        pos += cv_len;
        assert_eq!(
            &ecb_encrypt(&key, &[0u8; 8])[..cv_len],
            cv,
            "the test decrypted field 62 correctly"
        );
        keys.push(key);
    }
    assert_eq!(pos, f62.len());
    keys
}

fn key_ref(r: pb::key_ref::Ref) -> Option<pb::KeyRef> {
    Some(pb::KeyRef { r#ref: Some(r) })
}

fn alias(a: &str) -> Option<pb::KeyRef> {
    key_ref(pb::key_ref::Ref::Alias(a.into()))
}

fn kid(id: &str) -> Option<pb::KeyRef> {
    key_ref(pb::key_ref::Ref::KeyId(id.into()))
}

const PAN: &str = "6228480402564890018";
/// 12-digit PINs: a chance match anywhere in the scanned data is negligible.
const PIN_1: &str = "739146825037";
const PIN_2: &str = "508273619402";

fn iso0_clear(pin: &str, pan: &str) -> Vec<u8> {
    let pin_field = hex::decode(format!("{:02X}{pin:F<14}", pin.len())).unwrap();
    let digits = &pan[pan.len() - 13..pan.len() - 1];
    let pan_field = hex::decode(format!("0000{digits}")).unwrap();
    xor(&pin_field, &pan_field)
}

// ---- the day ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_clear_key_or_pin_leaves_the_module_during_a_business_day() {
    let log = log_capture();
    let dir = tempfile::tempdir().unwrap();
    let mut secrets: Vec<(String, Vec<u8>)> = Vec::new();

    // The module, set up as `serve --dev` would: sealed LMK, certificates, store.
    let lmk_bytes: [u8; 32] = random(32).try_into().unwrap();
    secrets.push(("LMK".into(), lmk_bytes.to_vec()));
    let lmk = Lmk::from_bytes(&lmk_bytes);
    let sealed = lmk.seal(&dev_passphrases(), KdfParams::DEV).unwrap();
    std::fs::write(dir.path().join("lmk.sealed"), sealed.to_json()).unwrap();
    let pki = poshsm::devcerts::generate("leak-scan CA", &["admin", "posp", "auditor"]).unwrap();
    poshsm::devcerts::write(&dir.path().join("certs"), &pki).unwrap();
    let store = Store::open(&dir.path().join("db")).unwrap();
    // A tight MAC-failure trigger so the day also trips it (and logs it).
    let config = HsmConfig {
        mac_failure_guard: poshsm::hsm::guard::Limit {
            per_sec: 0.01,
            burst: 3.0,
        },
        ..Default::default()
    };
    let hsm = Arc::new(Hsm::new(lmk, store, config));
    assert_eq!(hsm.status().state, "OK");
    let metrics = Arc::new(Metrics::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let tls = TlsMaterial {
        ca_pem: pki.ca_pem.clone().into_bytes(),
        cert_pem: pki.server_cert_pem.clone().into_bytes(),
        key_pem: pki.server_key_pem.clone().into_bytes(),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(poshsm::server::serve(
        listener,
        hsm.clone(),
        tls,
        AccessConfig::default(),
        Some(metrics.clone()),
        // The binary's way: connections on their own I/O threads, whose log
        // lines the process-wide subscriber captures as well.
        2,
        async move {
            let _ = stop_rx.await;
        },
    ));
    let channel = |role: &str| {
        let (c, k) = pki.client(role).unwrap();
        let (c, k, ca, a) = (
            c.to_string(),
            k.to_string(),
            pki.ca_pem.clone(),
            addr.clone(),
        );
        async move {
            poshsm::cli::client::connect_pem(&a, ca.as_bytes(), c.as_bytes(), k.as_bytes())
                .await
                .unwrap()
        }
    };
    let mut admin = KeyAdminClient::new(channel("admin").await);
    let mut posp = CryptoClient::new(channel("posp").await);
    let mut auditor = KeyAdminClient::new(channel("auditor").await);
    let mut out = Outbound::default();

    // 1. Custodians form the ZMK from three components (with their KCVs).
    let zmk_parts: Vec<Vec<u8>> = (0..3).map(|_| odd(16)).collect();
    let zmk = xor(&xor(&zmk_parts[0], &zmk_parts[1]), &zmk_parts[2]);
    for (i, p) in zmk_parts.iter().enumerate() {
        secrets.push((format!("ZMK component {}", i + 1), p.clone()));
    }
    secrets.push(("ZMK".into(), zmk.clone()));
    let zmk_info = out.ok(admin
        .import_key_components(pb::ImportKeyComponentsRequest {
            key_type: pb::KeyType::Zmk as i32,
            algorithm: pb::KeyAlgorithm::Tdes2key as i32,
            components: zmk_parts.clone(),
            component_kcvs: zmk_parts.iter().map(|p| kcv(p)).collect(),
            alias: "zmk-cups".into(),
            exportable: false,
        })
        .await);
    assert_eq!(zmk_info.kcv, kcv(&zmk));
    // Refused entries: a duplicate component, a wrong component KCV.
    out.err(
        admin
            .import_key_components(pb::ImportKeyComponentsRequest {
                key_type: pb::KeyType::Zmk as i32,
                components: vec![zmk_parts[0].clone(), zmk_parts[0].clone()],
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
    );
    out.err(
        admin
            .import_key_components(pb::ImportKeyComponentsRequest {
                key_type: pb::KeyType::Zmk as i32,
                components: zmk_parts.clone(),
                component_kcvs: vec!["000000".into(); 3],
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
    );

    // 2. The network delivers the ZPK (X9.17 under the ZMK) and the ZAK (TR-31).
    let zpk = odd(16);
    secrets.push(("ZPK".into(), zpk.clone()));
    out.ok(admin
        .import_key(pb::ImportKeyRequest {
            key_type: pb::KeyType::Zpk as i32,
            algorithm: pb::KeyAlgorithm::Tdes2key as i32,
            wrapping_key: alias("zmk-cups"),
            wrapped: Some(pb::import_key_request::Wrapped::X917Ecb(ecb_encrypt(
                &zmk, &zpk,
            ))),
            expected_kcv: kcv(&zpk),
            alias: "zpk-cups".into(),
            exportable: false,
        })
        .await);
    let zak = odd(16);
    secrets.push(("ZAK".into(), zak.clone()));
    let zak_block = keyblocks::wrap(
        &zmk,
        &keyblocks::Header::new(
            keyblocks::Version::B,
            keyblocks::KeyUsage::M3,
            keyblocks::Algorithm::TDES,
            keyblocks::ModeOfUse::C,
            keyblocks::Exportability::NonExportable,
        ),
        &zak,
        None,
    )
    .unwrap();
    out.ok(admin
        .import_key(pb::ImportKeyRequest {
            key_type: pb::KeyType::Zak as i32,
            wrapping_key: alias("zmk-cups"),
            wrapped: Some(pb::import_key_request::Wrapped::Tr31KeyBlock(zak_block)),
            expected_kcv: kcv(&zak),
            alias: "zak-cups".into(),
            ..Default::default()
        })
        .await);

    // 3. The key-injection facility's KEK, and two terminals.
    let kek_parts: Vec<Vec<u8>> = (0..2).map(|_| odd(16)).collect();
    let kek = xor(&kek_parts[0], &kek_parts[1]);
    let kek = kek
        .iter()
        .map(|b| if b.count_ones() % 2 == 0 { b ^ 1 } else { *b })
        .collect::<Vec<u8>>(); // the module parity-adjusts a two-part XOR
    for (i, p) in kek_parts.iter().enumerate() {
        secrets.push((format!("KEK component {}", i + 1), p.clone()));
    }
    secrets.push(("KEK".into(), kek.clone()));
    let kek_info = out.ok(admin
        .import_key_components(pb::ImportKeyComponentsRequest {
            key_type: pb::KeyType::Kek as i32,
            algorithm: pb::KeyAlgorithm::Tdes2key as i32,
            components: kek_parts.clone(),
            alias: "kek-kif".into(),
            ..Default::default()
        })
        .await);
    assert_eq!(kek_info.kcv, kcv(&kek));
    let tmk1_parts: Vec<Vec<u8>> = (0..3).map(|_| odd(16)).collect();
    let tmk1 = xor(&xor(&tmk1_parts[0], &tmk1_parts[1]), &tmk1_parts[2]);
    for (i, p) in tmk1_parts.iter().enumerate() {
        secrets.push((format!("TMK1 component {}", i + 1), p.clone()));
    }
    secrets.push(("TMK1".into(), tmk1.clone()));
    let tmk1_info = out.ok(admin
        .import_key_components(pb::ImportKeyComponentsRequest {
            key_type: pb::KeyType::Tmk as i32,
            algorithm: pb::KeyAlgorithm::Tdes2key as i32,
            components: tmk1_parts.clone(),
            exportable: true,
            ..Default::default()
        })
        .await);
    out.ok(admin
        .create_terminal(pb::CreateTerminalRequest {
            terminal_id: "T0000001".into(),
            merchant_id: "898000000000001".into(),
            tmk: kid(&tmk1_info.key_id),
            tmk_algorithm: 0,
        })
        .await);
    let t2 = out.ok(admin
        .create_terminal(pb::CreateTerminalRequest {
            terminal_id: "T0000002".into(),
            merchant_id: "898000000000002".into(),
            ..Default::default()
        })
        .await);
    // The generated TMK goes to the injection facility under the KEK.
    let x917 = out.ok(admin
        .export_key(pb::ExportKeyRequest {
            key: kid(&t2.tmk_key_id),
            wrapping_key: alias("kek-kif"),
            format: "X917_ECB".into(),
        })
        .await);
    let tmk2 = ecb_decrypt(&kek, &x917.x917_ecb);
    assert_eq!(kcv(&tmk2), t2.tmk_kcv);
    secrets.push(("TMK2".into(), tmk2.clone()));
    out.ok(admin
        .export_key(pb::ExportKeyRequest {
            key: kid(&t2.tmk_key_id),
            wrapping_key: alias("kek-kif"),
            format: "TR31".into(),
        })
        .await);
    out.err(
        admin
            .export_key(pb::ExportKeyRequest {
                key: alias("zpk-cups"),
                wrapping_key: alias("kek-kif"),
                format: String::new(),
            })
            .await,
        Code::FailedPrecondition,
    );
    out.err(
        admin
            .export_key(pb::ExportKeyRequest {
                key: kid(&tmk1_info.key_id),
                wrapping_key: kid(&tmk1_info.key_id),
                format: "X917_ECB".into(),
            })
            .await,
        Code::FailedPrecondition,
    );

    // 4. Morning: both terminals sign in.
    let s1 = out.ok(posp
        .sign_in(pb::SignInRequest {
            terminal_id: "T0000001".into(),
            include_tdk: true,
            ..Default::default()
        })
        .await);
    let k1 = field62_keys(&tmk1, &s1.field62, &[(16, 16), (8, 16), (16, 16)], 4);
    let (pik1, mak1) = (k1[0].clone(), k1[1].clone());
    for (n, k) in ["PIK1", "MAK1", "TDK1"].iter().zip(&k1) {
        secrets.push((n.to_string(), k.clone()));
    }
    let s2 = out.ok(posp
        .sign_in(pb::SignInRequest {
            terminal_id: "T0000002".into(),
            include_tdk: true,
            layout: pb::Field62Layout::DoubleMak as i32,
            check_value_length: 8,
            ..Default::default()
        })
        .await);
    let k2 = field62_keys(&tmk2, &s2.field62, &[(16, 16), (16, 16), (16, 16)], 8);
    for (n, k) in ["PIK2", "MAK2", "TDK2"].iter().zip(&k2) {
        secrets.push((n.to_string(), k.clone()));
    }

    // 5. Purchases: MACs and PIN translations, good and bad.
    secrets.push((format!("PIN {PIN_1}"), PIN_1.as_bytes().to_vec()));
    secrets.push((format!("PIN {PIN_2}"), PIN_2.as_bytes().to_vec()));
    secrets.push(("PIN 1 BCD".into(), hex::decode(PIN_1).unwrap()));
    secrets.push(("PIN 2 BCD".into(), hex::decode(PIN_2).unwrap()));
    secrets.push(("PIN 1 clear ISO 0 block".into(), iso0_clear(PIN_1, PAN)));
    secrets.push(("PIN 2 clear ISO 0 block".into(), iso0_clear(PIN_2, PAN)));
    let pin_block = |pik: &[u8], pin: &str| {
        pinblock::encipher(
            PinBlockFormat::Iso0,
            &tdes(pik),
            &Pin::parse(pin).unwrap(),
            Some(&Pan::parse(PAN).unwrap()),
        )
        .unwrap()
        .to_vec()
    };
    let request = b"0200 purchase 000000012345".to_vec();
    let v = out.ok(posp
        .verify_mac(pb::VerifyMacRequest {
            key_source: Some(pb::verify_mac_request::KeySource::TerminalId(
                "T0000001".into(),
            )),
            algorithm: pb::MacAlgorithm::UnionpayEcb as i32,
            message: request.clone(),
            mac: mac::unionpay_ecb(&tdes(&mak1), &request),
        })
        .await);
    assert!(v.valid);
    let v = out.ok(posp
        .verify_mac(pb::VerifyMacRequest {
            key_source: Some(pb::verify_mac_request::KeySource::TerminalId(
                "T0000001".into(),
            )),
            algorithm: pb::MacAlgorithm::UnionpayEcb as i32,
            message: request.clone(),
            mac: b"00000000".to_vec(),
        })
        .await);
    assert!(!v.valid);
    let block1 = pin_block(&pik1, PIN_1);
    let t = out.ok(posp
        .translate_pin(pb::TranslatePinRequest {
            source: Some(pb::translate_pin_request::Source::TerminalId(
                "T0000001".into(),
            )),
            dest_key: alias("zpk-cups"),
            pin_block: block1.clone(),
            pan: PAN.into(),
            source_format: 0,
            dest_format: 0,
        })
        .await);
    let back = pinblock::decipher(
        PinBlockFormat::Iso0,
        &tdes(&zpk),
        &t.pin_block,
        Some(&Pan::parse(PAN).unwrap()),
    )
    .unwrap();
    assert_eq!(
        back.expose_digits(),
        PIN_1.as_bytes(),
        "the PIN went through"
    );
    out.ok(posp
        .translate_pin(pb::TranslatePinRequest {
            source: Some(pb::translate_pin_request::Source::TerminalId(
                "T0000001".into(),
            )),
            dest_key: alias("zpk-cups"),
            pin_block: block1.clone(),
            pan: PAN.into(),
            source_format: pb::PinBlockFormat::Iso0 as i32,
            dest_format: pb::PinBlockFormat::Iso3 as i32,
        })
        .await);
    let good2 = pb::TranslatePinRequest {
        source: Some(pb::translate_pin_request::Source::TerminalId(
            "T0000002".into(),
        )),
        dest_key: alias("zpk-cups"),
        pin_block: pin_block(&k2[0], PIN_2),
        pan: PAN.into(),
        source_format: 0,
        dest_format: 0,
    };
    let mut wrong_pan = good2.clone();
    wrong_pan.pan = "6228480402564899991".into();
    let mut to_iso1 = good2.clone();
    to_iso1.dest_format = pb::PinBlockFormat::Iso1 as i32;
    let batch = out.ok(posp
        .translate_pin_batch(pb::TranslatePinBatchRequest {
            items: vec![good2.clone(), wrong_pan.clone(), to_iso1.clone()],
        })
        .await);
    assert!(matches!(
        batch.results[0].result,
        Some(pb::translate_pin_result::Result::Ok(_))
    ));
    out.err(posp.translate_pin(wrong_pan).await, Code::InvalidArgument);
    out.err(posp.translate_pin(to_iso1).await, Code::FailedPrecondition);
    out.err(
        posp.translate_pin(pb::TranslatePinRequest {
            source: Some(pb::translate_pin_request::Source::SourceKey(
                alias("zak-cups").unwrap(),
            )),
            ..good2.clone()
        })
        .await,
        Code::FailedPrecondition,
    );
    let response = b"0210 approved 00".to_vec();
    let m = out.ok(posp
        .generate_mac(pb::GenerateMacRequest {
            key_source: Some(pb::generate_mac_request::KeySource::TerminalId(
                "T0000001".into(),
            )),
            algorithm: pb::MacAlgorithm::UnionpayEcb as i32,
            message: response.clone(),
            mac_length: 0,
        })
        .await);
    assert_eq!(m.mac, mac::unionpay_ecb(&tdes(&mak1), &response));
    for alg in [pb::MacAlgorithm::Iso9797Alg3, pb::MacAlgorithm::Cmac] {
        out.ok(posp
            .generate_mac(pb::GenerateMacRequest {
                key_source: Some(pb::generate_mac_request::KeySource::Key(
                    alias("zak-cups").unwrap(),
                )),
                algorithm: alg as i32,
                message: b"0200 to the network".to_vec(),
                mac_length: 0,
            })
            .await);
    }
    out.err(
        posp.generate_mac(pb::GenerateMacRequest {
            key_source: Some(pb::generate_mac_request::KeySource::Key(
                alias("zpk-cups").unwrap(),
            )),
            algorithm: pb::MacAlgorithm::Cmac as i32,
            message: b"x".to_vec(),
            mac_length: 0,
        })
        .await,
        Code::FailedPrecondition,
    );
    out.ok(posp
        .verify_mac_batch(pb::VerifyMacBatchRequest {
            items: vec![
                pb::VerifyMacRequest {
                    key_source: Some(pb::verify_mac_request::KeySource::TerminalId(
                        "T0000002".into(),
                    )),
                    algorithm: pb::MacAlgorithm::Iso9797Alg3 as i32,
                    message: request.clone(),
                    mac: mac::iso9797_alg3(&k2[1], &request, mac::Padding::Method1)
                        .unwrap()
                        .to_vec(),
                },
                pb::VerifyMacRequest::default(),
            ],
        })
        .await);

    // A terminal sending bad MACs trips the security trigger (logged and audited).
    let mut tripped = false;
    for _ in 0..6 {
        let r = posp
            .verify_mac(pb::VerifyMacRequest {
                key_source: Some(pb::verify_mac_request::KeySource::TerminalId(
                    "T0000002".into(),
                )),
                algorithm: pb::MacAlgorithm::Iso9797Alg3 as i32,
                message: request.clone(),
                mac: vec![0x42; 8],
            })
            .await;
        match r {
            Ok(_) => {
                out.ok(r);
            }
            Err(_) => {
                out.err(r, Code::ResourceExhausted);
                tripped = true;
            }
        }
    }
    assert!(tripped, "the security trigger tripped");

    // 6. Next morning: keys rotate; a stateless sign-in under TMK1's LMK block.
    let s1b = out.ok(posp
        .sign_in(pb::SignInRequest {
            terminal_id: "T0000001".into(),
            include_tdk: true,
            ..Default::default()
        })
        .await);
    let k1b = field62_keys(&tmk1, &s1b.field62, &[(16, 16), (8, 16), (16, 16)], 4);
    for (n, k) in ["PIK1'", "MAK1'", "TDK1'"].iter().zip(&k1b) {
        secrets.push((n.to_string(), k.clone()));
    }
    let old = out.ok(posp
        .verify_mac(pb::VerifyMacRequest {
            key_source: Some(pb::verify_mac_request::KeySource::TerminalId(
                "T0000001".into(),
            )),
            algorithm: pb::MacAlgorithm::UnionpayEcb as i32,
            message: request.clone(),
            mac: mac::unionpay_ecb(&tdes(&mak1), &request),
        })
        .await);
    assert!(old.valid, "yesterday's MAK verifies in the grace window");
    let stateless = out.ok(posp
        .sign_in(pb::SignInRequest {
            terminal_id: "T0000001".into(),
            tmk: key_ref(pb::key_ref::Ref::KeyBlock(tmk1_info.key_block.clone())),
            layout: pb::Field62Layout::DoubleMak as i32,
            ..Default::default()
        })
        .await);
    let ks = field62_keys(&tmk1, &stateless.field62, &[(16, 16), (16, 16)], 4);
    for (n, k) in ["stateless PIK", "stateless MAK"].iter().zip(&ks) {
        secrets.push((n.to_string(), k.clone()));
    }

    // 7. Administration and audit: reads, rotation, retirement, denials.
    for r in [
        alias("zmk-cups"),
        alias("zpk-cups"),
        alias("zak-cups"),
        alias("kek-kif"),
        kid(&tmk1_info.key_id),
        kid(&s1b.pik.as_ref().unwrap().key_id),
        key_ref(pb::key_ref::Ref::KeyBlock(
            s1b.mak.as_ref().unwrap().key_block.clone(),
        )),
    ] {
        out.ok(admin.get_key(r.unwrap()).await);
    }
    let mut token = String::new();
    loop {
        let page = out.ok(admin
            .list_keys(pb::ListKeysRequest {
                key_type: 0,
                page_size: 2,
                page_token: token.clone(),
            })
            .await);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    out.ok(auditor
        .list_terminals(pb::ListTerminalsRequest {
            page_size: 10,
            page_token: String::new(),
        })
        .await);
    out.ok(auditor
        .get_terminal(pb::GetTerminalRequest {
            terminal_id: "T0000001".into(),
        })
        .await);
    out.ok(admin.rotate_key(alias("zak-cups").unwrap()).await);
    out.ok(admin.retire_key(alias("kek-kif").unwrap()).await);
    out.err(
        auditor
            .generate_key(pb::GenerateKeyRequest {
                key_type: pb::KeyType::Zpk as i32,
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
    );
    out.err(
        KeyAdminClient::new(channel("posp").await)
            .import_key_components(pb::ImportKeyComponentsRequest {
                key_type: pb::KeyType::Zmk as i32,
                components: zmk_parts.clone(),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
    );
    let mut events = auditor
        .get_audit_log(pb::GetAuditLogRequest { since_seq: 0 })
        .await
        .unwrap()
        .into_inner();
    let mut n_events = 0;
    while let Some(e) = events.message().await.unwrap() {
        out.record(&e);
        n_events += 1;
    }
    assert!(n_events >= 15, "{n_events} audit events");
    let chain = out.ok(auditor.verify_audit_log(pb::VerifyAuditLogRequest {}).await);
    assert!(chain.valid, "{chain:?}");
    let st = out.ok(auditor.get_status(pb::GetStatusRequest {}).await);
    assert_eq!(st.state, "OK");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel("posp").await);
    out.ok(health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await);
    // The module's own Debug and status, and the metrics page.
    let _ = writeln!(out.text, "{hsm:?}\n{:?}", hsm.status());
    out.text.extend_from_slice(metrics.render().as_bytes());

    // Close down: the server flushes the store on shutdown.
    drop((admin, posp, auditor, health));
    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
    drop(hsm);
    assert!(out.responses >= 40 && out.errors >= 10, "the day ran");

    // ---- the scan ----
    let scanner = Scanner::new(&secrets);
    let logs = log_snapshot(&log);
    assert!(
        logs.len() > 10_000,
        "the TRACE subscriber captured the day ({} bytes)",
        logs.len()
    );
    let text = String::from_utf8_lossy(&logs);
    assert!(
        text.contains("security trigger") && text.contains("h2::"),
        "the log holds poshsm's and the transport's events"
    );
    let mut leaks: Vec<String> = Vec::new();
    let mut report = |place: &str, found: HashSet<String>| {
        for f in found {
            leaks.push(format!("{f} in {place}"));
        }
    };
    report("responses and errors (text)", scanner.scan(&out.text));
    report("responses and errors (bytes)", scanner.scan(&out.bytes));
    report("tracing log", scanner.scan(&logs));
    let files = files_under(dir.path());
    assert!(
        files.iter().any(|p| p.ends_with("lmk.sealed"))
            && files.iter().any(|p| p.to_string_lossy().contains("/db/")),
        "{files:?}"
    );
    let mut file_bytes = 0;
    for f in &files {
        let data = std::fs::read(f).unwrap();
        file_bytes += data.len();
        report(&f.display().to_string(), scanner.scan(&data));
    }
    assert!(
        file_bytes > 10_000,
        "the store was written ({file_bytes} bytes)"
    );
    // The store does hold the keys — as LMK blocks: prove the scan read it.
    let db: Vec<u8> = files
        .iter()
        .filter(|p| p.to_string_lossy().contains("/db/"))
        .flat_map(|p| std::fs::read(p).unwrap())
        .collect();
    assert!(
        db.windows(tmk1_info.key_block.len())
            .any(|w| w == tmk1_info.key_block.as_bytes()),
        "the data directory holds TMK1's LMK block"
    );
    eprintln!(
        "leak scan: {} responses, {} errors, {} bytes of text, {} bytes of encoded messages, \
         {} bytes of TRACE log, {} files ({file_bytes} bytes), {} patterns",
        out.responses,
        out.errors,
        out.text.len(),
        out.bytes.len(),
        logs.len(),
        files.len(),
        scanner.patterns.len()
    );
    leaks.sort();
    assert!(
        leaks.is_empty(),
        "clear keys or PINs left the module:\n{}",
        leaks.join("\n")
    );

    // ---- the scanner can fail: plant a key in each place and find it ----
    let planted = odd(16);
    let probe = Scanner::new(&[("planted".into(), planted.clone())]);
    tracing::error!(key = %hex::encode_upper(&planted), "planted by the leak-scan self-check");
    let found = probe.scan(&log_snapshot(&log));
    assert!(found.contains("planted (upper hex)"), "{found:?}");
    let mut buf = out.bytes.clone();
    buf.extend_from_slice(&planted);
    assert!(probe.scan(&buf).contains("planted (raw)"));
    let leaked_file = dir.path().join("db").join("leaked.bin");
    std::fs::write(&leaked_file, hex::encode(&planted)).unwrap();
    let found: HashSet<String> = files_under(dir.path())
        .iter()
        .flat_map(|f| probe.scan(&std::fs::read(f).unwrap()))
        .collect();
    assert!(found.contains("planted (lower hex)"), "{found:?}");
}

/// The scanner finds a key in every form and position, and nothing else.
#[test]
fn the_scanner_finds_planted_keys_and_only_them() {
    let key = odd(16);
    let pin = b"739146825037".to_vec();
    let s = Scanner::new(&[("key".into(), key.clone()), ("pin".into(), pin.clone())]);
    let noise = random(4096);
    let plant = |at: usize, what: &[u8]| {
        let mut v = noise.clone();
        v.splice(at..at, what.iter().copied());
        v
    };
    for at in [0, 1, 7, 2048, 4096] {
        assert!(s.scan(&plant(at, &key)).contains("key (raw)"), "at {at}");
        assert!(s
            .scan(&plant(at, hex::encode_upper(&key).as_bytes()))
            .contains("key (upper hex)"));
        assert!(s
            .scan(&plant(at, hex::encode(&key).as_bytes()))
            .contains("key (lower hex)"));
        assert!(s.scan(&plant(at, &pin)).contains("pin (raw)"));
    }
    // At the very end of the buffer, and as the whole buffer.
    assert!(s.scan(&key).contains("key (raw)"));
    assert!(s
        .scan(format!("log line key={}", hex::encode_upper(&key)).as_bytes())
        .contains("key (upper hex)"));
    // A near miss (last byte differs) and the empty buffer are not findings.
    let mut near = key.clone();
    near[15] ^= 0x80;
    assert!(s.scan(&plant(100, &near)).is_empty());
    assert!(s.scan(&plant(100, &key[..15])).is_empty());
    assert!(s.scan(&[]).is_empty());
    assert!(s.scan(&noise).is_empty());
}
