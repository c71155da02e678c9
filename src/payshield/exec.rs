//! Runs parsed payShield commands against the core. Keys arrive as LMK key
//! blocks and go to the core as `KeyRef::Block`; nothing here touches a key
//! byte. Each `HsmError` becomes a payShield error code in [`hsm_code`] and
//! nowhere else.

use super::code;
use super::frame::{
    self, CheckValue, Command, ExportKey, GenerateKey, ImportKey, KeyAttrs, Mac, MacAlg, PinFormat,
    TranslatePin, Wrapped, ZmkScheme,
};
use crate::crypto::pinblock::PinBlockFormat;
use crate::crypto::Algorithm;
use crate::hsm::{self, Hsm, HsmError, KeyRef, MacAlgorithm, MacKeySource, PinKeySource, Reason};
use crate::keys::{KeyClass, KeyType};

type R<T> = Result<T, &'static str>;

/// The one place a core error becomes a payShield error code (docs/payshield.md).
pub fn hsm_code(e: &HsmError) -> &'static str {
    use Reason::*;
    match e.reason {
        InvalidPinBlock => code::INVALID_PIN_BLOCK,
        InvalidPan => code::INVALID_ACCOUNT,
        InvalidPin => code::PIN_LENGTH,
        InvalidKeyBlock => code::KEY_BLOCK_AUTH,
        WrongLmk | LmkRetired => code::WRONG_LMK,
        InvalidKeyLength => code::INCOMPATIBLE_KEY_LENGTH,
        MessageTooLarge => code::DATA_LENGTH,
        UnsupportedAlgorithm | SingleDesDisabled => code::INVALID_ALGORITHM,
        BadParity | WeakKey => code::KEY_PARITY,
        KcvMismatch => code::VERIFICATION_FAILURE,
        KeyUsageMismatch => code::INVALID_KEY_USAGE,
        NotExportable | KeyRetired => code::FUNCTION_NOT_PERMITTED,
        WrappingKeyTooWeak => code::WRAPPING_KEY_TOO_WEAK,
        FormatTranslationRefused => code::PIN_FORMAT_DISABLED,
        TerminalThrottled => code::THROTTLED,
        ModuleAlarm | StoreError | Internal | Conflict => code::INTERNAL,
        _ => code::INVALID_INPUT,
    }
}

fn core<T>(r: Result<T, HsmError>) -> R<T> {
    r.map_err(|e| {
        tracing::debug!(reason = e.code(), message = %e.message, "payshield: refused by the core");
        hsm_code(&e)
    })
}

fn block(s: &str) -> KeyRef {
    KeyRef::Block(s.to_string())
}

fn pin_format(f: PinFormat) -> PinBlockFormat {
    match f {
        PinFormat::Iso0 => PinBlockFormat::Iso0,
        PinFormat::Iso1 => PinBlockFormat::Iso1,
        PinFormat::Iso3 => PinBlockFormat::Iso3,
    }
}

/// Whether a command writes to the store (and flushes): run it off the reactor.
pub fn writes(cmd: [u8; 2]) -> bool {
    matches!(&cmd, b"A0" | b"A6" | b"A8" | b"FA")
}

/// Runs one command. `Ok` holds the response fields after the `00` error code.
/// `firmware` is NC's firmware field; the LMK check value is read per call,
/// so NC follows an LMK rotation.
pub fn execute(hsm: &Hsm, actor: &str, firmware: &str, cmd: Command<'_>) -> R<Vec<u8>> {
    match cmd {
        // A POSP's heartbeat: a module in ALARM says so.
        Command::Nc if hsm.alarm().is_some() => Err(code::INTERNAL),
        Command::Nc => Ok(format!("{}{firmware}", hsm.lmk_kcv(8)).into_bytes()),
        Command::Ca(t) | Command::Cc(t) => translate_pin(hsm, t),
        Command::M6(m) => generate_mac(hsm, m),
        Command::M8(m) => verify_mac(hsm, m),
        Command::Bu(c) => check_value(hsm, c),
        Command::A0(g) => generate_key(hsm, actor, g),
        Command::A6(i) | Command::Fa(i) => import_key(hsm, actor, i),
        Command::A8(x) => export_key(hsm, actor, x),
    }
}

fn translate_pin(hsm: &Hsm, t: TranslatePin<'_>) -> R<Vec<u8>> {
    // The core wants a PAN; ISO 0/3 use its 12 rightmost digits before the check
    // digit, which is exactly the 12N account field: append a placeholder check digit.
    let mut pan = String::with_capacity(13);
    pan.push_str(t.account);
    pan.push('0');
    let req = hsm::TranslatePin {
        source: PinKeySource::Key(block(t.source)),
        dest: block(t.dest),
        pin_block: t.pin_block,
        pan,
        source_format: pin_format(t.source_format),
        dest_format: pin_format(t.dest_format),
    };
    let out = core(hsm.translate_pin(&req))?;
    if out.pin_len > t.max_pin_len {
        return Err(code::PIN_LENGTH);
    }
    let mut f = Vec::with_capacity(4 + 2 * out.pin_block.len());
    f.extend_from_slice(format!("{:02}", out.pin_len).as_bytes());
    f.extend_from_slice(hex::encode_upper(&out.pin_block).as_bytes());
    f.extend_from_slice(t.dest_format.code().as_bytes());
    Ok(f)
}

/// Applies ISO 9797-1 padding method 0, 2 or 3 here; method 1 is the core's own.
fn padded(m: &Mac<'_>) -> R<Vec<u8>> {
    let bs = frame::block_cipher_len(m.key);
    let mut msg = m.message.clone();
    match m.padding {
        0 if msg.is_empty() || msg.len() % bs != 0 => return Err(code::DATA_LENGTH),
        2 => {
            msg.push(0x80);
            msg.resize(msg.len().div_ceil(bs) * bs, 0);
        }
        3 => {
            let bits = (m.message.len() as u128).wrapping_mul(8).to_be_bytes();
            let mut out = bits[16 - bs..].to_vec();
            let data_len = msg.len().div_ceil(bs).max(1) * bs;
            msg.resize(data_len, 0);
            out.extend_from_slice(&msg);
            msg = out;
        }
        _ => {}
    }
    Ok(msg)
}

fn mac_request<'m>(m: &Mac<'_>, message: &'m [u8]) -> hsm::MacRequest<'m> {
    hsm::MacRequest {
        source: MacKeySource::Key(block(m.key)),
        algorithm: match m.algorithm {
            MacAlg::Alg1 => MacAlgorithm::Iso9797Alg1,
            MacAlg::Alg3 => MacAlgorithm::Iso9797Alg3,
        },
        message,
        mac_length: m.mac_len,
    }
}

fn generate_mac(hsm: &Hsm, m: Mac<'_>) -> R<Vec<u8>> {
    let msg = padded(&m)?;
    let mac = core(hsm.generate_mac(&mac_request(&m, &msg)))?;
    Ok(hex::encode_upper(mac).into_bytes())
}

fn verify_mac(hsm: &Hsm, m: Mac<'_>) -> R<Vec<u8>> {
    let msg = padded(&m)?;
    if core(hsm.verify_mac(&mac_request(&m, &msg), &m.mac))? {
        Ok(Vec::new())
    } else {
        Err(code::VERIFICATION_FAILURE)
    }
}

fn check_value(hsm: &Hsm, c: CheckValue<'_>) -> R<Vec<u8>> {
    let (_, _, kcv) = core(hsm.describe_key(&block(c.key), if c.short { 3 } else { 8 }))?;
    Ok(kcv.into_bytes())
}

/// The key type a key type code (and the `#` usage, if given) names.
fn resolve_type(type_code: &[u8; 3], attrs: Option<&KeyAttrs>) -> R<KeyType> {
    let usage = attrs.map(|a| keyblocks::KeyUsage(a.usage));
    let k0 = usage == Some(keyblocks::KeyUsage::K0);
    let t = match type_code {
        b"000" => KeyType::Zmk,
        b"001" => KeyType::Zpk,
        b"002" if k0 => KeyType::Tmk,
        b"002" => KeyType::Tpk,
        b"003" => KeyType::Tak,
        b"008" => KeyType::Zak,
        b"00A" => KeyType::Zek,
        b"00B" => KeyType::Tdk,
        b"FFF" => match attrs.map(|a| &a.usage) {
            Some(b"K0") => KeyType::Zmk,
            Some(b"P0") => KeyType::Zpk,
            Some(b"M0" | b"M1" | b"M3" | b"M6") => KeyType::Zak,
            Some(b"D0") => KeyType::Zek,
            Some(_) => return Err(code::INVALID_KEY_USAGE),
            None => return Err(code::INVALID_INPUT),
        },
        _ => return Err(code::INVALID_KEY_TYPE_CODE),
    };
    match usage {
        Some(u) if !t.accepts_usage(u) => Err(code::INVALID_KEY_USAGE),
        _ => Ok(t),
    }
}

/// Whether a stored key's type fits a key type code (A8).
fn type_fits(type_code: &[u8; 3], t: KeyType) -> bool {
    match type_code {
        b"000" => t == KeyType::Zmk,
        b"001" => t == KeyType::Zpk,
        b"002" => matches!(t, KeyType::Tpk | KeyType::Tmk),
        b"003" => t == KeyType::Tak,
        b"008" => t == KeyType::Zak,
        b"00A" => t == KeyType::Zek,
        b"00B" => t == KeyType::Tdk,
        _ => true,
    }
}

fn algorithm(attrs: Option<&KeyAttrs>) -> R<Option<Algorithm>> {
    Ok(match attrs.map(|a| &a.algorithm) {
        None => None,
        Some(b"T1") => Some(Algorithm::Des),
        Some(b"T2") => Some(Algorithm::Tdes2),
        Some(b"T3") => Some(Algorithm::Tdes3),
        Some(b"A1") => Some(Algorithm::Aes128),
        Some(b"A2") => Some(Algorithm::Aes192),
        Some(b"A3") => Some(Algorithm::Aes256),
        Some(_) => return Err(code::INVALID_ALGORITHM),
    })
}

fn exportable(attrs: Option<&KeyAttrs>) -> Option<bool> {
    attrs.map(|a| matches!(a.exportability, b'E' | b'S'))
}

/// Exports `key` under `zmk` in the scheme asked for; returns the field text.
fn export_under(hsm: &Hsm, actor: &str, key: &str, zmk: &str, scheme: ZmkScheme) -> R<String> {
    let format = match scheme {
        ZmkScheme::R => hsm::ExportFormat::Tr31,
        ZmkScheme::X | ZmkScheme::Y => hsm::ExportFormat::X917Ecb,
    };
    let out = core(hsm.export_key(
        actor,
        hsm::ExportKey {
            key: block(key),
            wrapping_key: block(zmk),
            format,
        },
    ))?;
    match (scheme, out.x917_ecb.len()) {
        (ZmkScheme::R, _) => Ok(format!("R{}", out.tr31_key_block)),
        (ZmkScheme::X, 16) => Ok(format!("X{}", hex::encode_upper(&out.x917_ecb))),
        (ZmkScheme::Y, 24) => Ok(format!("Y{}", hex::encode_upper(&out.x917_ecb))),
        _ => Err(code::INCOMPATIBLE_KEY_LENGTH),
    }
}

fn check_kek(hsm: &Hsm, zmk: &str) -> R<()> {
    let (t, _, _) = core(hsm.describe_key(&block(zmk), 0))?;
    if t.class() == KeyClass::KeyEncryption {
        Ok(())
    } else {
        Err(code::INVALID_KEY_USAGE)
    }
}

fn generate_key(hsm: &Hsm, actor: &str, g: GenerateKey<'_>) -> R<Vec<u8>> {
    let attrs = g.tail.attrs.as_ref();
    let key_type = resolve_type(&g.key_type, attrs)?;
    let algorithm = algorithm(attrs)?.unwrap_or(Algorithm::Tdes2);
    // Without `#` attributes a key generated to be sent under a ZMK must be exportable.
    let exportable = exportable(attrs).unwrap_or(g.under.is_some());
    if let Some((zmk, _)) = g.under {
        if !exportable {
            return Err(code::INVALID_EXPORT_FIELD);
        }
        check_kek(hsm, zmk)?;
    }
    let info = core(hsm.generate_key(
        actor,
        hsm::GenerateKey {
            key_type,
            algorithm,
            alias: String::new(),
            exportable,
        },
    ))?;
    let mut f = format!("S{}", info.key_block);
    if let Some((zmk, scheme)) = g.under {
        match export_under(hsm, actor, &info.key_block, zmk, scheme) {
            Ok(s) => f.push_str(&s),
            Err(e) => {
                // Do not leave an unannounced key behind.
                let _ = hsm.retire_key(actor, &KeyRef::Id(info.key_id.clone()));
                return Err(e);
            }
        }
    }
    f.push_str(&info.kcv);
    Ok(f.into_bytes())
}

fn import_key(hsm: &Hsm, actor: &str, i: ImportKey<'_>) -> R<Vec<u8>> {
    let attrs = i.tail.attrs.as_ref();
    let key_type = resolve_type(&i.key_type, attrs)?;
    let (wrapped, algorithm) = match i.key {
        Wrapped::X917(ct) => {
            let alg = match (algorithm(attrs)?, ct.len()) {
                (Some(a), _) => a,
                (None, 8) => Algorithm::Des,
                (None, 24) => Algorithm::Tdes3,
                (None, _) => Algorithm::Tdes2,
            };
            (hsm::Wrapped::X917Ecb(ct), Some(alg))
        }
        Wrapped::Tr31(b) => (hsm::Wrapped::Tr31(b.to_string()), algorithm(attrs)?),
    };
    let info = core(hsm.import_key(
        actor,
        hsm::ImportKey {
            key_type,
            algorithm,
            wrapping_key: block(i.zmk),
            wrapped,
            expected_kcv: String::new(),
            alias: String::new(),
            exportable: exportable(attrs).unwrap_or(false),
        },
    ))?;
    let kcv = if i.short_kcv {
        info.kcv.clone()
    } else {
        core(hsm.describe_key(&KeyRef::Id(info.key_id.clone()), 8))?.2
    };
    Ok(format!("S{}{}", info.key_block, kcv).into_bytes())
}

fn export_key(hsm: &Hsm, actor: &str, x: ExportKey<'_>) -> R<Vec<u8>> {
    let (t, _, kcv) = core(hsm.describe_key(&block(x.key), 3))?;
    if !type_fits(&x.key_type, t) {
        return Err(code::INVALID_KEY_USAGE);
    }
    let mut f = export_under(hsm, actor, x.key, x.zmk, x.scheme)?;
    f.push_str(&kcv);
    Ok(f.into_bytes())
}
