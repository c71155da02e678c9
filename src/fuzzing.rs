//! Entry points for the fuzz targets in `fuzz/` and for the stable test that
//! replays their corpus (`tests/fuzz_corpus.rs`). Each takes arbitrary bytes
//! and must never panic; where a parse succeeds it checks a round-trip property.
#![doc(hidden)]

use crate::crypto::pinblock::{self, Pan, PinBlockFormat};
use crate::crypto::{mac, Algorithm, Cipher};

const KBPK_AES: [u8; 32] = [0x42; 32];
const KBPK_TDES: [u8; 16] = [0x13; 16];

/// TR-31 parse and unwrap: a parsed header re-serialises and parses to itself.
pub fn keyblock(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(h) = keyblocks::Header::parse(s) {
        if let Ok(text) = h.to_header_string() {
            if let Ok(again) = keyblocks::Header::parse_template(&text) {
                assert_eq!(again.key_usage, h.key_usage);
                assert_eq!(again.algorithm, h.algorithm);
            }
        }
    }
    let _ = keyblocks::unwrap(&KBPK_AES, s);
    let _ = keyblocks::unwrap(&KBPK_TDES, s);
}

/// PIN-block decoding of every format under TDES, AES and SM4 keys; a block
/// that decodes re-encodes to one that decodes to the same PIN.
pub fn pinblock(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let format = [
        PinBlockFormat::Iso0,
        PinBlockFormat::Iso1,
        PinBlockFormat::Iso3,
        PinBlockFormat::Iso4,
    ][(sel & 3) as usize];
    let (alg, key): (Algorithm, &[u8]) = match (sel >> 2) % 3 {
        0 => (Algorithm::Tdes2, &KBPK_AES[..16]),
        1 => (Algorithm::Aes128, &KBPK_AES[..16]),
        _ => (Algorithm::Sm4, &KBPK_AES[..16]),
    };
    let Ok(cipher) = Cipher::new(alg, key) else {
        return;
    };
    let pan = Pan::parse("4000001234562").ok();
    if let Ok(pin) = pinblock::decipher(format, &cipher, rest, pan.as_ref()) {
        if let Ok(again) = pinblock::encipher(format, &cipher, &pin, pan.as_ref()) {
            let back = pinblock::decipher(format, &cipher, &again, pan.as_ref());
            assert!(back
                .map(|p| p.expose_digits() == pin.expose_digits())
                .unwrap_or(false));
        }
    }
}

/// MAC input handling: the first byte picks a key algorithm and MAC algorithm,
/// the rest is the message (one MAC per input keeps executions fast).
pub fn mac_input(data: &[u8]) {
    let Some((&sel, msg)) = data.split_first() else {
        return;
    };
    let (alg, key): (Algorithm, &[u8]) = match sel & 3 {
        0 => (Algorithm::Des, &KBPK_TDES[..8]),
        1 => (Algorithm::Tdes2, &KBPK_TDES[..]),
        2 => (Algorithm::Aes128, &KBPK_AES[..16]),
        _ => (Algorithm::Sm4, &KBPK_AES[..16]),
    };
    let Ok(c) = Cipher::new(alg, key) else { return };
    match (sel >> 2) % 5 {
        0 => assert_eq!(
            mac::iso9797_alg1(&c, msg, mac::Padding::Method1).len(),
            c.block_len()
        ),
        1 => assert_eq!(
            mac::iso9797_alg1(&c, msg, mac::Padding::Method2).len(),
            c.block_len()
        ),
        2 => assert_eq!(
            mac::unionpay_ecb(&c, msg).len(),
            if c.block_len() == 8 { 8 } else { 16 }
        ),
        3 => assert_eq!(mac::cmac(&c, msg).len(), c.block_len()),
        _ => {
            let _ = mac::iso9797_alg3(&KBPK_TDES, msg, mac::Padding::Method1);
        }
    }
}

/// The daemon's config parser.
pub fn config(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = crate::cli::serve::parse_config(s);
    }
}

/// The payShield port's one parser: framing, header/command split and every
/// command layout. Each whole frame is parsed; the data is also offered as the
/// fields of every command. An error response always frames to itself.
pub fn payshield_frame(data: &[u8]) {
    use crate::payshield::frame;
    let mut rest = data;
    while let frame::Split::Frame { len } = frame::split_frame(rest, 32 * 1024) {
        let Some(payload) = rest.get(2..2 + len) else {
            break;
        };
        let req = frame::split_request(payload, 4);
        if let Some(cmd) = req.code {
            let _ = frame::parse_command(cmd, req.body);
            let mut out = Vec::new();
            frame::write_response(&mut out, req.header, frame::response_code(cmd), "15", &[]);
            assert_eq!(
                frame::split_frame(&out, usize::from(u16::MAX)),
                frame::Split::Frame { len: out.len() - 2 }
            );
        }
        rest = rest.get(2 + len..).unwrap_or_default();
    }
    for cmd in frame::IMPLEMENTED {
        if let Ok(code) = <[u8; 2]>::try_from(cmd.as_bytes()) {
            let _ = frame::parse_command(code, data);
        }
    }
}

/// Every request type through the core: the first byte picks the RPC, the rest
/// is decoded as its protobuf message, converted exactly as the gRPC services
/// do, and run against one in-process module with a few keys and a terminal.
pub fn core_request(data: &[u8]) {
    use crate::hsm::{Hsm, HsmConfig, MacRequest};
    use crate::proto as pb;
    use crate::server::convert as cv;
    use prost::Message;
    use std::sync::OnceLock;
    static HSM: OnceLock<Option<Hsm>> = OnceLock::new();
    let Some(hsm) = HSM
        .get_or_init(|| {
            let store = crate::store::Store::temporary().ok()?;
            let hsm = Hsm::new(
                crate::keys::Lmk::from_bytes(&[0x42; 32]),
                store,
                HsmConfig::default(),
            );
            let g = |t, a: &str| crate::hsm::GenerateKey {
                key_type: t,
                algorithm: Algorithm::Tdes2,
                alias: a.into(),
                exportable: true,
            };
            use crate::keys::KeyType as T;
            for (t, a) in [
                (T::Zmk, "zmk"),
                (T::Zpk, "zpk"),
                (T::Tpk, "tpk"),
                (T::Zak, "zak"),
                (T::Tak, "tak"),
                (T::Tdk, "tdk"),
            ] {
                hsm.generate_key("fuzz", g(t, a)).ok()?;
            }
            hsm.create_terminal(
                "fuzz",
                crate::hsm::CreateTerminal {
                    terminal_id: "T1".into(),
                    merchant_id: String::new(),
                    tmk: None,
                    tmk_algorithm: None,
                },
            )
            .ok()?;
            Some(hsm)
        })
        .as_ref()
    else {
        return;
    };
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    // Writing RPCs are sampled (1 input in 16 may write) and capped, so a long
    // run neither spends itself on fsyncs nor grows the store without bound.
    static WRITES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let may_write = sel < 16 && WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 20_000;
    match sel % 11 {
        0 => {
            if let Ok(r) = pb::TranslatePinRequest::decode(body) {
                if let Ok(t) = cv::translate_pin(r) {
                    let _ = hsm.translate_pin(&t);
                }
            }
        }
        1 => {
            if let Ok(mut r) = pb::GenerateMacRequest::decode(body) {
                if let Ok((source, algorithm)) = cv::generate_mac(&mut r) {
                    let _ = hsm.generate_mac(&MacRequest {
                        source,
                        algorithm,
                        message: &r.message,
                        mac_length: r.mac_length as usize,
                    });
                }
            }
        }
        2 => {
            if let Ok(mut r) = pb::VerifyMacRequest::decode(body) {
                if let Ok((source, algorithm)) = cv::verify_mac(&mut r) {
                    let _ = hsm.verify_mac(
                        &MacRequest {
                            source,
                            algorithm,
                            message: &r.message,
                            mac_length: 0,
                        },
                        &r.mac,
                    );
                }
            }
        }
        3 if may_write => {
            if let Ok(r) = pb::SignInRequest::decode(body) {
                if let Ok(s) = cv::sign_in(&r) {
                    let _ = hsm.sign_in_unflushed("fuzz", s);
                }
            }
        }
        4 if may_write => {
            if let Ok(r) = pb::GenerateKeyRequest::decode(body) {
                if let Ok(g) = cv::generate_key(r) {
                    let _ = hsm.generate_key("fuzz", g);
                }
            }
        }
        5 if may_write => {
            if let Ok(r) = pb::ImportKeyComponentsRequest::decode(body) {
                if let Ok(c) = cv::import_components(r) {
                    let _ = hsm.import_key_components("fuzz", c);
                }
            }
        }
        6 if may_write => {
            if let Ok(r) = pb::ImportKeyRequest::decode(body) {
                if let Ok(i) = cv::import_key(r) {
                    let _ = hsm.import_key("fuzz", i);
                }
            }
        }
        7 => {
            if let Ok(r) = pb::ExportKeyRequest::decode(body) {
                if let Ok(e) = cv::export_key(r) {
                    let _ = hsm.export_key("fuzz", e);
                }
            }
        }
        8 if may_write => {
            if let Ok(r) = pb::CreateTerminalRequest::decode(body) {
                if let Ok(c) = cv::create_terminal(r) {
                    let _ = hsm.create_terminal("fuzz", c);
                }
            }
        }
        9 => {
            if let Ok(r) = pb::KeyRef::decode(body) {
                if let Ok(k) = cv::key_ref(Some(&r), "key") {
                    let _ = hsm.get_key(&k);
                }
            }
        }
        _ => {
            if let Ok(r) = pb::ListKeysRequest::decode(body) {
                if let Ok(t) = cv::list_keys_type(r.key_type) {
                    let _ = hsm.list_keys(t, r.page_size as usize, &r.page_token);
                }
            }
        }
    }
}
