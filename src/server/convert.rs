//! Conversions between the generated proto types and the core's typed inputs.
//! Every proto value is parsed here into a core type, so the core never sees
//! an unchecked enum number or an empty reference.

use crate::crypto::pinblock::PinBlockFormat;
use crate::crypto::Algorithm;
use crate::hsm::{self, err, HsmError, KeyRef, Reason};
use crate::keys::KeyType;
use crate::proto as pb;
use crate::store::{audit::AuditRecord, KeyRecord, TerminalRecord};

pub fn key_type(v: i32) -> Result<KeyType, HsmError> {
    Ok(match pb::KeyType::try_from(v) {
        Ok(pb::KeyType::Tmk) => KeyType::Tmk,
        Ok(pb::KeyType::Zmk) => KeyType::Zmk,
        Ok(pb::KeyType::Kek) => KeyType::Kek,
        Ok(pb::KeyType::Tpk) => KeyType::Tpk,
        Ok(pb::KeyType::Zpk) => KeyType::Zpk,
        Ok(pb::KeyType::Tak) => KeyType::Tak,
        Ok(pb::KeyType::Zak) => KeyType::Zak,
        Ok(pb::KeyType::Tdk) => KeyType::Tdk,
        Ok(pb::KeyType::Zek) => KeyType::Zek,
        _ => {
            return Err(err(
                Reason::InvalidArgument,
                format!(
                    "key_type {v} is not a key type (TMK, ZMK, KEK, TPK, ZPK, TAK, ZAK, TDK, ZEK)"
                ),
            ))
        }
    })
}

pub fn key_type_to_pb(t: KeyType) -> pb::KeyType {
    match t {
        KeyType::Tmk => pb::KeyType::Tmk,
        KeyType::Zmk => pb::KeyType::Zmk,
        KeyType::Kek => pb::KeyType::Kek,
        KeyType::Tpk => pb::KeyType::Tpk,
        KeyType::Zpk => pb::KeyType::Zpk,
        KeyType::Tak => pb::KeyType::Tak,
        KeyType::Zak => pb::KeyType::Zak,
        KeyType::Tdk => pb::KeyType::Tdk,
        KeyType::Zek => pb::KeyType::Zek,
    }
}

/// `None` for KEY_ALGORITHM_UNSPECIFIED.
pub fn algorithm(v: i32) -> Result<Option<Algorithm>, HsmError> {
    Ok(Some(match pb::KeyAlgorithm::try_from(v) {
        Ok(pb::KeyAlgorithm::Unspecified) => return Ok(None),
        Ok(pb::KeyAlgorithm::Tdes2key) => Algorithm::Tdes2,
        Ok(pb::KeyAlgorithm::Tdes3key) => Algorithm::Tdes3,
        Ok(pb::KeyAlgorithm::Aes128) => Algorithm::Aes128,
        Ok(pb::KeyAlgorithm::Aes192) => Algorithm::Aes192,
        Ok(pb::KeyAlgorithm::Aes256) => Algorithm::Aes256,
        Ok(pb::KeyAlgorithm::Sm4) => Algorithm::Sm4,
        Ok(pb::KeyAlgorithm::Des) => Algorithm::Des,
        Err(_) => {
            return Err(err(
                Reason::InvalidArgument,
                format!("algorithm {v} is not a key algorithm"),
            ))
        }
    }))
}

pub fn algorithm_to_pb(a: Algorithm) -> pb::KeyAlgorithm {
    match a {
        Algorithm::Des => pb::KeyAlgorithm::Des,
        Algorithm::Tdes2 => pb::KeyAlgorithm::Tdes2key,
        Algorithm::Tdes3 => pb::KeyAlgorithm::Tdes3key,
        Algorithm::Aes128 => pb::KeyAlgorithm::Aes128,
        Algorithm::Aes192 => pb::KeyAlgorithm::Aes192,
        Algorithm::Aes256 => pb::KeyAlgorithm::Aes256,
        Algorithm::Sm4 => pb::KeyAlgorithm::Sm4,
    }
}

pub fn key_ref(r: Option<&pb::KeyRef>, what: &str) -> Result<KeyRef, HsmError> {
    into_key_ref(r.cloned(), what)
}

/// [`key_ref`] taking the request's field (per-transaction RPCs: nothing copied).
pub fn into_key_ref(r: Option<pb::KeyRef>, what: &str) -> Result<KeyRef, HsmError> {
    match r.and_then(|r| r.r#ref) {
        Some(pb::key_ref::Ref::KeyId(id)) if !id.is_empty() => Ok(KeyRef::Id(id)),
        Some(pb::key_ref::Ref::Alias(a)) if !a.is_empty() => Ok(KeyRef::Alias(a)),
        Some(pb::key_ref::Ref::KeyBlock(b)) if !b.is_empty() => Ok(KeyRef::Block(b)),
        _ => Err(err(
            Reason::InvalidArgument,
            format!("{what} is missing: give a key_id, an alias or a key_block"),
        )),
    }
}

pub fn pin_format(v: i32, default: PinBlockFormat) -> Result<PinBlockFormat, HsmError> {
    Ok(match pb::PinBlockFormat::try_from(v) {
        Ok(pb::PinBlockFormat::Unspecified) => default,
        Ok(pb::PinBlockFormat::Iso0) => PinBlockFormat::Iso0,
        Ok(pb::PinBlockFormat::Iso1) => PinBlockFormat::Iso1,
        Ok(pb::PinBlockFormat::Iso3) => PinBlockFormat::Iso3,
        Ok(pb::PinBlockFormat::Iso4) => PinBlockFormat::Iso4,
        Err(_) => {
            return Err(err(
                Reason::InvalidArgument,
                format!("PIN block format {v} is unknown"),
            ))
        }
    })
}

pub fn mac_algorithm(v: i32) -> Result<hsm::MacAlgorithm, HsmError> {
    Ok(match pb::MacAlgorithm::try_from(v) {
        Ok(pb::MacAlgorithm::Iso9797Alg1) => hsm::MacAlgorithm::Iso9797Alg1,
        Ok(pb::MacAlgorithm::Iso9797Alg3) => hsm::MacAlgorithm::Iso9797Alg3,
        Ok(pb::MacAlgorithm::UnionpayEcb) => hsm::MacAlgorithm::UnionpayEcb,
        Ok(pb::MacAlgorithm::Cmac) => hsm::MacAlgorithm::Cmac,
        _ => {
            return Err(err(
                Reason::InvalidArgument,
                "algorithm must be ISO9797_ALG1, ISO9797_ALG3, UNIONPAY_ECB or CMAC",
            ))
        }
    })
}

pub fn layout(v: i32) -> Result<Option<hsm::Field62Layout>, HsmError> {
    use hsm::Field62Layout as L;
    Ok(Some(match pb::Field62Layout::try_from(v) {
        Ok(pb::Field62Layout::Unspecified) => return Ok(None),
        Ok(pb::Field62Layout::Unionpay001) => L::Unionpay001,
        Ok(pb::Field62Layout::Unionpay003) => L::Unionpay003,
        Ok(pb::Field62Layout::Unionpay004) => L::Unionpay004,
        Ok(pb::Field62Layout::DoubleMak) => L::DoubleMak,
        Ok(pb::Field62Layout::Block16) => L::Block16,
        Err(_) => {
            return Err(err(
                Reason::InvalidArgument,
                format!("field-62 layout {v} is unknown"),
            ))
        }
    }))
}

pub fn layout_to_pb(l: hsm::Field62Layout) -> pb::Field62Layout {
    use hsm::Field62Layout as L;
    match l {
        L::Unionpay001 => pb::Field62Layout::Unionpay001,
        L::Unionpay003 => pb::Field62Layout::Unionpay003,
        L::Unionpay004 => pb::Field62Layout::Unionpay004,
        L::DoubleMak => pb::Field62Layout::DoubleMak,
        L::Block16 => pb::Field62Layout::Block16,
    }
}

pub fn key_info(r: KeyRecord) -> pb::KeyInfo {
    let kt = KeyType::parse(&r.key_type)
        .map(key_type_to_pb)
        .unwrap_or(pb::KeyType::Unspecified);
    let alg = crate::keys::types::parse_algorithm(&r.algorithm)
        .map(algorithm_to_pb)
        .unwrap_or(pb::KeyAlgorithm::Unspecified);
    pb::KeyInfo {
        key_id: r.key_id,
        alias: r.alias,
        key_type: kt as i32,
        algorithm: alg as i32,
        kcv: r.kcv,
        state: r.state,
        version: r.version,
        exportable: r.exportable,
        key_block: r.key_block,
        created_unix: r.created_unix,
    }
}

pub fn terminal_info(t: TerminalRecord) -> pb::TerminalInfo {
    pb::TerminalInfo {
        terminal_id: t.terminal_id,
        merchant_id: t.merchant_id,
        tmk_key_id: t.tmk_key_id,
        tmk_kcv: t.tmk_kcv,
        key_version: t.key_version,
        last_sign_in_unix: t.last_sign_in_unix,
        created_unix: t.created_unix,
        pending_tmk_key_id: t.pending_tmk_key_id,
    }
}

pub fn audit_event(r: AuditRecord) -> pb::AuditEvent {
    pb::AuditEvent {
        seq: r.seq,
        time_unix: r.time_unix,
        actor: r.actor,
        operation: r.operation,
        key_id: r.key_id,
        outcome: r.outcome,
        prev_hash: r.prev_hash.to_vec(),
        hash: r.hash.to_vec(),
        detail: r.detail,
    }
}

pub fn working_key(w: hsm::WorkingKeyOut) -> pb::WorkingKey {
    pb::WorkingKey {
        under_tmk: w.under_tmk,
        check_value: w.check_value,
        key_block: w.key_block,
        key_id: w.key_id,
        kcv: w.kcv,
    }
}

// ---- request conversions: one per RPC, shared by the services and the fuzzer ----

pub fn translate_pin(r: pb::TranslatePinRequest) -> Result<hsm::TranslatePin, HsmError> {
    let source = match r.source {
        Some(pb::translate_pin_request::Source::TerminalId(t)) => hsm::PinKeySource::Terminal(t),
        Some(pb::translate_pin_request::Source::SourceKey(k)) => {
            hsm::PinKeySource::Key(into_key_ref(Some(k), "source_key")?)
        }
        None => {
            return Err(err(
                Reason::InvalidArgument,
                "give terminal_id or source_key",
            ))
        }
    };
    let source_format = pin_format(r.source_format, PinBlockFormat::Iso0)?;
    Ok(hsm::TranslatePin {
        source,
        dest: into_key_ref(r.dest_key, "dest_key")?,
        pin_block: r.pin_block,
        pan: r.pan,
        source_format,
        dest_format: pin_format(r.dest_format, source_format)?,
    })
}

fn mac_source(
    terminal: Option<String>,
    key: Option<pb::KeyRef>,
) -> Result<hsm::MacKeySource, HsmError> {
    match (terminal, key) {
        (Some(t), _) => Ok(hsm::MacKeySource::Terminal(t)),
        (None, Some(k)) => Ok(hsm::MacKeySource::Key(into_key_ref(Some(k), "key")?)),
        (None, None) => Err(err(Reason::InvalidArgument, "give terminal_id or key")),
    }
}

/// Key source and algorithm of a GenerateMac request; the key source is taken
/// out of the request (the message stays in it).
pub fn generate_mac(
    r: &mut pb::GenerateMacRequest,
) -> Result<(hsm::MacKeySource, hsm::MacAlgorithm), HsmError> {
    let source = match r.key_source.take() {
        Some(pb::generate_mac_request::KeySource::TerminalId(t)) => mac_source(Some(t), None)?,
        Some(pb::generate_mac_request::KeySource::Key(k)) => mac_source(None, Some(k))?,
        None => mac_source(None, None)?,
    };
    Ok((source, mac_algorithm(r.algorithm)?))
}

/// Key source and algorithm of a VerifyMac request; the key source is taken
/// out of the request (message and MAC stay in it).
pub fn verify_mac(
    r: &mut pb::VerifyMacRequest,
) -> Result<(hsm::MacKeySource, hsm::MacAlgorithm), HsmError> {
    let source = match r.key_source.take() {
        Some(pb::verify_mac_request::KeySource::TerminalId(t)) => mac_source(Some(t), None)?,
        Some(pb::verify_mac_request::KeySource::Key(k)) => mac_source(None, Some(k))?,
        None => mac_source(None, None)?,
    };
    Ok((source, mac_algorithm(r.algorithm)?))
}

pub fn sign_in(r: &pb::SignInRequest) -> Result<hsm::SignIn, HsmError> {
    let source = match &r.tmk {
        Some(k) if k.r#ref.is_some() => hsm::SignInSource::Tmk {
            tmk: key_ref(Some(k), "tmk")?,
            terminal_id: r.terminal_id.clone(),
        },
        _ if r.use_pending_tmk => hsm::SignInSource::TerminalPendingTmk(r.terminal_id.clone()),
        _ => hsm::SignInSource::Terminal(r.terminal_id.clone()),
    };
    Ok(hsm::SignIn {
        source,
        algorithm: algorithm(r.algorithm)?,
        include_tdk: r.include_tdk,
        layout: layout(r.layout)?,
        check_value_length: r.check_value_length as usize,
    })
}

pub fn generate_key(r: pb::GenerateKeyRequest) -> Result<hsm::GenerateKey, HsmError> {
    Ok(hsm::GenerateKey {
        key_type: key_type(r.key_type)?,
        algorithm: algorithm(r.algorithm)?.unwrap_or(Algorithm::Tdes2),
        alias: r.alias,
        exportable: r.exportable,
    })
}

pub fn import_components(
    r: pb::ImportKeyComponentsRequest,
) -> Result<hsm::ImportComponents, HsmError> {
    Ok(hsm::ImportComponents {
        key_type: key_type(r.key_type)?,
        algorithm: algorithm(r.algorithm)?.unwrap_or(Algorithm::Tdes2),
        components: r
            .components
            .into_iter()
            .map(zeroize::Zeroizing::new)
            .collect(),
        component_kcvs: r.component_kcvs,
        alias: r.alias,
        exportable: r.exportable,
    })
}

pub fn import_key(r: pb::ImportKeyRequest) -> Result<hsm::ImportKey, HsmError> {
    let wrapped = match r.wrapped {
        Some(pb::import_key_request::Wrapped::Tr31KeyBlock(b)) => hsm::Wrapped::Tr31(b),
        Some(pb::import_key_request::Wrapped::X917Ecb(b)) => hsm::Wrapped::X917Ecb(b),
        None => {
            return Err(err(
                Reason::InvalidArgument,
                "give tr31_key_block or x917_ecb",
            ))
        }
    };
    Ok(hsm::ImportKey {
        key_type: key_type(r.key_type)?,
        algorithm: algorithm(r.algorithm)?,
        wrapping_key: key_ref(r.wrapping_key.as_ref(), "wrapping_key")?,
        wrapped,
        expected_kcv: r.expected_kcv,
        alias: r.alias,
        exportable: r.exportable,
    })
}

pub fn export_key(r: pb::ExportKeyRequest) -> Result<hsm::ExportKey, HsmError> {
    let format = match r.format.to_ascii_uppercase().as_str() {
        "" | "TR31" | "TR-31" => hsm::ExportFormat::Tr31,
        "X917_ECB" => hsm::ExportFormat::X917Ecb,
        other => {
            return Err(err(
                Reason::InvalidArgument,
                format!("format {other:?} is not TR31 or X917_ECB"),
            ))
        }
    };
    Ok(hsm::ExportKey {
        key: key_ref(r.key.as_ref(), "key")?,
        wrapping_key: key_ref(r.wrapping_key.as_ref(), "wrapping_key")?,
        format,
    })
}

pub fn create_terminal(r: pb::CreateTerminalRequest) -> Result<hsm::CreateTerminal, HsmError> {
    let tmk = match &r.tmk {
        Some(k) if k.r#ref.is_some() => Some(key_ref(Some(k), "tmk")?),
        _ => None,
    };
    Ok(hsm::CreateTerminal {
        terminal_id: r.terminal_id,
        merchant_id: r.merchant_id,
        tmk,
        tmk_algorithm: algorithm(r.tmk_algorithm)?,
    })
}

pub fn list_keys_type(v: i32) -> Result<Option<KeyType>, HsmError> {
    if v == 0 {
        Ok(None)
    } else {
        key_type(v).map(Some)
    }
}

pub fn data_mode(c: Option<&pb::DataCipher>) -> Result<hsm::DataMode, HsmError> {
    let Some(c) = c else {
        return Ok(hsm::DataMode::Ecb);
    };
    match pb::DataMode::try_from(c.mode) {
        Ok(pb::DataMode::Unspecified) | Ok(pb::DataMode::Ecb) => Ok(hsm::DataMode::Ecb),
        Ok(pb::DataMode::Cbc) => Ok(hsm::DataMode::Cbc(c.iv.clone())),
        Err(_) => Err(err(
            Reason::InvalidArgument,
            format!("data mode {} is not ECB or CBC", c.mode),
        )),
    }
}

pub fn translate_data_source(
    s: Option<&pb::translate_data_request::Source>,
) -> Result<hsm::DataKeySource, HsmError> {
    match s {
        Some(pb::translate_data_request::Source::TerminalId(t)) => {
            Ok(hsm::DataKeySource::Terminal(t.clone()))
        }
        Some(pb::translate_data_request::Source::SourceKey(k)) => {
            Ok(hsm::DataKeySource::Key(key_ref(Some(k), "source_key")?))
        }
        None => Err(err(
            Reason::InvalidArgument,
            "give terminal_id or source_key",
        )),
    }
}

pub fn decrypt_data_source(
    s: Option<&pb::decrypt_data_request::Source>,
) -> Result<hsm::DataKeySource, HsmError> {
    match s {
        Some(pb::decrypt_data_request::Source::TerminalId(t)) => {
            Ok(hsm::DataKeySource::Terminal(t.clone()))
        }
        Some(pb::decrypt_data_request::Source::SourceKey(k)) => {
            Ok(hsm::DataKeySource::Key(key_ref(Some(k), "source_key")?))
        }
        None => Err(err(
            Reason::InvalidArgument,
            "give terminal_id or source_key",
        )),
    }
}

pub fn lmk_status(s: hsm::LmkState) -> pb::LmkStatus {
    pb::LmkStatus {
        current_kcv: s.current_kcv,
        previous_kcv: s.previous_kcv,
        window_opened_unix: s.window_opened_unix,
        retired_kcvs: s.retired_kcvs,
    }
}

/// RotateLmk's passphrases: UTF-8, moved into zeroizing strings; the
/// request's buffers are wiped.
pub fn passphrases(mut raw: Vec<Vec<u8>>) -> Result<Vec<secrecy::SecretString>, HsmError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut bad = None;
    for (i, p) in raw.iter_mut().enumerate() {
        match std::str::from_utf8(p) {
            Ok(s) => out.push(secrecy::SecretString::from(s.to_string())),
            Err(_) => bad = bad.or(Some(i + 1)),
        }
        zeroize::Zeroize::zeroize(p);
    }
    match bad {
        Some(i) => Err(hsm::err(
            hsm::Reason::InvalidArgument,
            format!("custodian {i}'s passphrase is not UTF-8"),
        )),
        None => Ok(out),
    }
}
