//! Criterion micro-benchmarks of the hot primitives (see BENCHMARKS.md):
//! the TDES PIN-translate core, X9.19 over 256 bytes, TR-31 version D unwrap, and the
//! full in-process `Hsm::translate_pin`.
//!
//! Run: `cargo bench --bench primitives -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use keyblocks::{
    unwrap, wrap, Algorithm as KbAlg, Exportability, Header, KeyUsage, ModeOfUse, Version,
};
use poshsm::crypto::mac::{iso9797_alg3, Padding, RetailMac};
use poshsm::crypto::pinblock::{decipher, encipher, Pan, Pin, PinBlockFormat};
use poshsm::crypto::{adjust_odd_parity, Algorithm, Cipher};
use poshsm::hsm::{
    GenerateKey, Hsm, HsmConfig, ImportComponents, KeyRef, PinKeySource, TranslatePin,
};
use poshsm::keys::{KeyType, Lmk};
use poshsm::store::Store;
use zeroize::Zeroizing;

const PAN: &str = "4000001234562000";
const PIN: &str = "1234";

/// A fixed 16-byte TDES key with odd parity, distinct per `seed`.
fn tdes2_key(seed: u8) -> Vec<u8> {
    let mut k: Vec<u8> = (0..16u8)
        .map(|i| i.wrapping_mul(37).wrapping_add(seed).wrapping_mul(11) ^ 0x5C)
        .collect();
    adjust_odd_parity(&mut k);
    k
}

/// The TDES PIN-translate core with pre-built key schedules: decrypt + decode the
/// ISO 0 block under the source key, encode + encrypt under the destination key.
fn pin_translate_tdes_core(c: &mut Criterion) {
    let src = Cipher::new(Algorithm::Tdes2, &tdes2_key(1)).unwrap();
    let dst = Cipher::new(Algorithm::Tdes2, &tdes2_key(2)).unwrap();
    let pan = Pan::parse(PAN).unwrap();
    let pin = Pin::parse(PIN).unwrap();
    let block = encipher(PinBlockFormat::Iso0, &src, &pin, Some(&pan)).unwrap();
    c.bench_function("pin_translate_tdes_core", |b| {
        b.iter(|| {
            let pin = decipher(
                PinBlockFormat::Iso0,
                black_box(&src),
                black_box(&block),
                Some(&pan),
            )
            .unwrap();
            encipher(PinBlockFormat::Iso0, black_box(&dst), &pin, Some(&pan)).unwrap()
        })
    });
}

/// The raw TDES work of one translation: one block decrypted under key A and
/// encrypted under key B — through `Cipher` (our SP-box DES, `crypto::des_sp`)
/// and, for the ratio in the same run, through RustCrypto `des` directly.
fn tdes_block_decrypt_encrypt(c: &mut Criterion) {
    use cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
    let a = Cipher::new(Algorithm::Tdes2, &tdes2_key(1)).unwrap();
    let b_key = Cipher::new(Algorithm::Tdes2, &tdes2_key(2)).unwrap();
    let ra = des::TdesEde2::new_from_slice(&tdes2_key(1)).unwrap();
    let rb = des::TdesEde2::new_from_slice(&tdes2_key(2)).unwrap();
    let block = [0x3Cu8; 8];
    let mut g = c.benchmark_group("tdes_block_decrypt_encrypt");
    g.bench_function("sp_box", |b| {
        b.iter(|| {
            let mut blk = black_box(block);
            a.ecb_decrypt(&mut blk).unwrap();
            b_key.ecb_encrypt(&mut blk).unwrap();
            blk
        })
    });
    g.bench_function("rustcrypto_des", |b| {
        b.iter(|| {
            let mut blk = black_box(block);
            ra.decrypt_block((&mut blk).into());
            rb.encrypt_block((&mut blk).into());
            blk
        })
    });
    g.finish();
}

/// ANSI X9.19 (ISO 9797-1 algorithm 3) over a 256-byte message: the one-shot function
/// (key schedules built per call) and `RetailMac` with precomputed schedules.
fn x919_256b(c: &mut Criterion) {
    let key = tdes2_key(3);
    let data: Vec<u8> = (0..256u32).map(|i| (i * 7 + 1) as u8).collect();
    let mac = RetailMac::new(&key).unwrap();
    let mut g = c.benchmark_group("x919_256B");
    g.bench_function("iso9797_alg3_oneshot", |b| {
        b.iter(|| iso9797_alg3(black_box(&key), black_box(&data), Padding::Method1).unwrap())
    });
    g.bench_function("retail_mac_precomputed", |b| {
        b.iter(|| black_box(&mac).compute(black_box(&data), Padding::Method1))
    });
    g.finish();
}

/// TR-31 version D (AES-256 KBPK) unwrap of a 2-key TDES PIN key.
fn tr31_d_unwrap(c: &mut Criterion) {
    let kbpk: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(29) ^ 0xA5).collect();
    let header = Header::new(
        Version::D,
        KeyUsage::P0,
        KbAlg::TDES,
        ModeOfUse::E,
        Exportability::Exportable,
    );
    let key = tdes2_key(4);
    let block = wrap(&kbpk, &header, &key, None).unwrap();
    assert_eq!(&*unwrap(&kbpk, &block).unwrap().key, key.as_slice());
    c.bench_function("tr31_d_unwrap", |b| {
        b.iter(|| unwrap(black_box(&kbpk), black_box(&block)).unwrap())
    });
}

/// The full in-process core translate: `Hsm::translate_pin` TPK → ZPK, ISO 0 → ISO 0,
/// keys looked up by alias (key cache warm after the first call). The
/// per-key security trigger is off: one key translating millions of PINs a
/// second is exactly what it exists to stop.
fn core_translate_pin(c: &mut Criterion) {
    let hsm = Hsm::new(
        Lmk::from_bytes(&[7; 32]),
        Store::temporary().unwrap(),
        HsmConfig {
            pin_guard: poshsm::hsm::guard::Limit {
                per_sec: 0.0,
                burst: 0.0,
            },
            ..HsmConfig::default()
        },
    );
    // The TPK from three known odd-parity components, so the bench knows the clear key.
    let comps: Vec<Vec<u8>> = (10..13).map(tdes2_key).collect();
    let tpk_clear: Vec<u8> = (0..16)
        .map(|i| comps[0][i] ^ comps[1][i] ^ comps[2][i])
        .collect();
    hsm.import_key_components(
        "bench",
        ImportComponents {
            key_type: KeyType::Tpk,
            algorithm: Algorithm::Tdes2,
            components: comps.into_iter().map(Zeroizing::new).collect(),
            component_kcvs: vec![],
            alias: "tpk".into(),
            exportable: false,
        },
    )
    .unwrap();
    hsm.generate_key(
        "bench",
        GenerateKey {
            key_type: KeyType::Zpk,
            algorithm: Algorithm::Tdes2,
            alias: "zpk".into(),
            exportable: true,
        },
    )
    .unwrap();
    let tpk = Cipher::new(Algorithm::Tdes2, &tpk_clear).unwrap();
    let pan = Pan::parse(PAN).unwrap();
    let pin_block = encipher(
        PinBlockFormat::Iso0,
        &tpk,
        &Pin::parse(PIN).unwrap(),
        Some(&pan),
    )
    .unwrap();
    let req = TranslatePin {
        source: PinKeySource::Key(KeyRef::Alias("tpk".into())),
        dest: KeyRef::Alias("zpk".into()),
        pin_block,
        pan: PAN.into(),
        source_format: PinBlockFormat::Iso0,
        dest_format: PinBlockFormat::Iso0,
    };
    hsm.translate_pin(&req).unwrap();
    c.bench_function("core_translate_pin", |b| {
        b.iter(|| hsm.translate_pin(black_box(&req)).unwrap())
    });
}

criterion_group!(
    benches,
    pin_translate_tdes_core,
    tdes_block_decrypt_encrypt,
    x919_256b,
    tr31_d_unwrap,
    core_translate_pin
);
criterion_main!(benches);
