//! Key administration: generate, form from components, import under a KEK,
//! export under a KEK, get, list, retire, rotate. Every change is audited in
//! the same transaction that stores it, and flushed before the call returns.

use super::{err, validate_name, Hsm, HsmError, KeyInfo, KeyRef, Reason};
use crate::crypto::{deskey, kcv, Algorithm, Cipher, KeyMaterial};
use crate::keys::types::{algorithm_from_tr31, algorithm_name, strength_bits, tr31_algorithm};
use crate::keys::{KeyClass, KeyType};
use crate::store::{audit::AuditDraft, Batch, STATE_ACTIVE, STATE_RETIRED};
use keyblocks::{Exportability, Header, Version};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

pub struct GenerateKey {
    pub key_type: KeyType,
    pub algorithm: Algorithm,
    pub alias: String,
    pub exportable: bool,
}

pub struct ImportComponents {
    pub key_type: KeyType,
    pub algorithm: Algorithm,
    pub components: Vec<Zeroizing<Vec<u8>>>,
    /// Optional, checked 1:1 with `components` when present.
    pub component_kcvs: Vec<String>,
    pub alias: String,
    pub exportable: bool,
}

pub enum Wrapped {
    Tr31(String),
    X917Ecb(Vec<u8>),
}

pub struct ImportKey {
    pub key_type: KeyType,
    /// None: taken from the TR-31 header (required for X9.17).
    pub algorithm: Option<Algorithm>,
    pub wrapping_key: KeyRef,
    pub wrapped: Wrapped,
    pub expected_kcv: String,
    pub alias: String,
    pub exportable: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    Tr31,
    X917Ecb,
}

pub struct ExportKey {
    pub key: KeyRef,
    pub wrapping_key: KeyRef,
    pub format: ExportFormat,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportedKey {
    pub tr31_key_block: String,
    pub x917_ecb: Vec<u8>,
    pub kcv: String,
}

/// Most clear components one key is formed from (custodians enter two or three).
pub const MAX_COMPONENTS: usize = 16;

/// What a new stored key is: type, algorithm, alias, exportability.
struct KeySpec<'a> {
    key_type: KeyType,
    algorithm: Algorithm,
    alias: &'a str,
    exportable: bool,
}

fn audit(actor: &str, op: &str, key_id: &str, outcome: &str, detail: String) -> AuditDraft {
    AuditDraft {
        actor: actor.to_string(),
        operation: op.to_string(),
        key_id: key_id.to_string(),
        outcome: outcome.to_string(),
        detail,
    }
}

/// Compares a caller's expected KCV (4–16 hex chars) with the key's KCV block.
fn check_kcv(cipher: &Cipher, expected: &str, what: &str) -> Result<(), HsmError> {
    let expected = expected.trim().to_ascii_uppercase();
    if expected.len() < 4 || expected.len() > 32 || !expected.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(err(
            Reason::InvalidArgument,
            format!("{what} KCV must be 4–32 hex characters"),
        ));
    }
    let full = hex::encode_upper(kcv::kcv_block(cipher));
    let got = full.get(..expected.len()).unwrap_or(&full);
    if got.len() != expected.len() || got != expected {
        return Err(err(
            Reason::KcvMismatch,
            format!("{what} check value {got} does not match the expected {expected}"),
        ));
    }
    Ok(())
}

impl Hsm {
    fn check_alias(&self, alias: &str) -> Result<(), HsmError> {
        if alias.is_empty() {
            return Ok(());
        }
        validate_name("alias", alias, Reason::InvalidAlias)
    }

    /// Stores a new key with its audit event; returns its info.
    fn store_key(
        &self,
        actor: &str,
        op: &str,
        spec: KeySpec<'_>,
        clear: &[u8],
        detail: &str,
    ) -> Result<KeyInfo, HsmError> {
        let KeySpec {
            key_type,
            algorithm,
            alias,
            exportable,
        } = spec;
        let (rec, _) = self.new_record(key_type, algorithm, clear, exportable, alias, 1)?;
        let mut batch = Batch {
            audit: vec![audit(
                actor,
                op,
                &rec.key_id,
                "OK",
                format!(
                    "type={key_type} alg={} kcv={}{detail}",
                    algorithm_name(algorithm),
                    rec.kcv
                ),
            )],
            ..Default::default()
        };
        if !alias.is_empty() {
            batch
                .bind_aliases
                .push((alias.to_string(), rec.key_id.clone()));
        }
        batch.put_keys.push(rec.clone());
        let mut committed = self.commit(batch)?;
        self.flush()?;
        Ok(committed.pop().unwrap_or(rec))
    }

    pub fn generate_key(&self, actor: &str, req: GenerateKey) -> Result<KeyInfo, HsmError> {
        self.check_ready()?;
        self.check_alias(&req.alias)?;
        self.check_algorithm_allowed(req.key_type, req.algorithm)?;
        let key = KeyMaterial::generate(req.algorithm)?;
        let spec = KeySpec {
            key_type: req.key_type,
            algorithm: req.algorithm,
            alias: &req.alias,
            exportable: req.exportable,
        };
        self.store_key(actor, "GenerateKey", spec, key.expose(), "")
    }

    pub fn import_key_components(
        &self,
        actor: &str,
        req: ImportComponents,
    ) -> Result<KeyInfo, HsmError> {
        self.check_ready()?;
        self.check_alias(&req.alias)?;
        self.check_algorithm_allowed(req.key_type, req.algorithm)?;
        let alg = req.algorithm;
        let n = req.components.len();
        if n < 2 {
            return Err(err(
                Reason::TooFewComponents,
                format!("a key is formed from at least 2 components, got {n}"),
            ));
        }
        if n > MAX_COMPONENTS {
            // The pairwise duplicate check is quadratic: bound it.
            return Err(err(
                Reason::InvalidArgument,
                format!("a key is formed from at most {MAX_COMPONENTS} components, got {n}"),
            ));
        }
        if !req.component_kcvs.is_empty() && req.component_kcvs.len() != n {
            return Err(err(
                Reason::InvalidArgument,
                format!(
                    "{} component KCVs for {n} components: give one per component or none",
                    req.component_kcvs.len()
                ),
            ));
        }
        for (i, c) in req.components.iter().enumerate() {
            if c.len() != alg.key_len() {
                return Err(err(
                    Reason::InvalidKeyLength,
                    format!(
                        "component {} is {} bytes; {} needs {}",
                        i + 1,
                        c.len(),
                        algorithm_name(alg),
                        alg.key_len()
                    ),
                ));
            }
            if alg.is_des_family() && !deskey::has_odd_parity(c) {
                return Err(err(
                    Reason::BadParity,
                    format!("component {} does not have odd parity", i + 1),
                ));
            }
            for (j, other) in req.components.iter().enumerate().take(i) {
                if bool::from(c.as_slice().ct_eq(other.as_slice())) {
                    return Err(err(
                        Reason::DuplicateComponent,
                        format!(
                            "component {} equals component {} (their XOR would cancel)",
                            i + 1,
                            j + 1
                        ),
                    ));
                }
            }
            if let Some(expected) = req.component_kcvs.get(i) {
                if !expected.is_empty() {
                    let cipher = Cipher::new(alg, c)?;
                    check_kcv(&cipher, expected, &format!("component {}", i + 1))?;
                }
            }
        }
        let mut key = Zeroizing::new(vec![0u8; alg.key_len()]);
        for c in &req.components {
            for (k, b) in key.iter_mut().zip(c.iter()) {
                *k ^= b;
            }
        }
        if key.iter().all(|b| *b == 0) {
            return Err(err(
                Reason::WeakKey,
                "the components XOR to an all-zero key",
            ));
        }
        if alg.is_des_family() {
            deskey::adjust_odd_parity(&mut key);
            if deskey::has_weak_part(&key) {
                return Err(err(
                    Reason::WeakKey,
                    "the components form a weak or semi-weak DES key (or equal TDES halves)",
                ));
            }
        }
        let spec = KeySpec {
            key_type: req.key_type,
            algorithm: alg,
            alias: &req.alias,
            exportable: req.exportable,
        };
        self.store_key(
            actor,
            "ImportKeyComponents",
            spec,
            &key,
            &format!(" components={n}"),
        )
    }

    fn load_kek(&self, r: &KeyRef) -> Result<crate::keys::cache::CachedKey, HsmError> {
        self.load_class(
            r,
            &[KeyClass::KeyEncryption],
            "to wrap or unwrap keys (it is not a KEK, TMK or ZMK)",
        )
    }

    pub fn import_key(&self, actor: &str, req: ImportKey) -> Result<KeyInfo, HsmError> {
        self.check_ready()?;
        self.check_alias(&req.alias)?;
        let kek = self.load_kek(&req.wrapping_key)?;
        let (alg, clear, exportable) = match &req.wrapped {
            Wrapped::X917Ecb(ct) => {
                let alg = req.algorithm.ok_or_else(|| {
                    err(
                        Reason::InvalidArgument,
                        "an X9.17 import needs the key's algorithm",
                    )
                })?;
                if ct.len() != alg.key_len() {
                    return Err(err(
                        Reason::InvalidKeyLength,
                        format!(
                            "the wrapped key is {} bytes; {} needs {}",
                            ct.len(),
                            algorithm_name(alg),
                            alg.key_len()
                        ),
                    ));
                }
                if ct.len() % kek.cipher().block_len() != 0 {
                    return Err(err(
                        Reason::InvalidKeyLength,
                        format!(
                            "a {}-byte key cannot be ECB-wrapped under a {}-byte-block KEK",
                            ct.len(),
                            kek.cipher().block_len()
                        ),
                    ));
                }
                let mut clear = Zeroizing::new(ct.clone());
                kek.cipher().ecb_decrypt(&mut clear)?;
                if alg.is_des_family() && !deskey::has_odd_parity(&clear) {
                    return Err(err(
                        Reason::BadParity,
                        "the unwrapped key does not have odd parity (wrong KEK or corrupted key)",
                    ));
                }
                (alg, clear, req.exportable)
            }
            Wrapped::Tr31(block) => {
                if kek.algorithm() == Algorithm::Sm4 {
                    return Err(err(
                        Reason::UnsupportedAlgorithm,
                        "TR-31 defines no SM4 key block protection key",
                    ));
                }
                let header = Header::parse(block)
                    .map_err(|e| err(Reason::InvalidKeyBlock, e.to_string()))?;
                let version_ok = match header.version {
                    Version::D => !kek.algorithm().is_des_family(),
                    _ => kek.algorithm().is_des_family(),
                };
                if !version_ok {
                    return Err(err(
                        Reason::InvalidKeyBlock,
                        format!(
                            "a version {:?} key block cannot be unwrapped with a {} KEK",
                            header.version,
                            algorithm_name(kek.algorithm())
                        ),
                    ));
                }
                let unwrapped = keyblocks::unwrap(kek.clear(), block)
                    .map_err(|e| err(Reason::InvalidKeyBlock, e.to_string()))?;
                let h = &unwrapped.header;
                if !req.key_type.accepts_usage(h.key_usage) {
                    return Err(err(
                        Reason::KeyUsageMismatch,
                        format!(
                            "the key block's usage {} does not agree with the requested type {}",
                            String::from_utf8_lossy(&h.key_usage.0),
                            req.key_type
                        ),
                    ));
                }
                let alg =
                    algorithm_from_tr31(h.algorithm, unwrapped.key.len()).ok_or_else(|| {
                        err(
                            Reason::UnsupportedAlgorithm,
                            format!(
                                "algorithm {:?} with a {}-byte key is not supported",
                                h.algorithm.0 as char,
                                unwrapped.key.len()
                            ),
                        )
                    })?;
                if let Some(want) = req.algorithm {
                    if want != alg {
                        return Err(err(
                            Reason::KeyUsageMismatch,
                            format!(
                                "the key block holds a {} key, not {}",
                                algorithm_name(alg),
                                algorithm_name(want)
                            ),
                        ));
                    }
                }
                if alg.is_des_family() && !deskey::has_odd_parity(&unwrapped.key) {
                    return Err(err(
                        Reason::BadParity,
                        "the unwrapped key does not have odd parity",
                    ));
                }
                // The block's exportability wins over the request: never widen it.
                let exportable = req.exportable && h.exportability == Exportability::Exportable;
                (alg, Zeroizing::new(unwrapped.key.to_vec()), exportable)
            }
        };
        self.check_algorithm_allowed(req.key_type, alg)?;
        if alg.is_des_family() && deskey::has_weak_part(&clear) {
            return Err(err(
                Reason::WeakKey,
                "the imported key is a weak or semi-weak DES key",
            ));
        }
        let cipher = Cipher::new(alg, &clear)?;
        if !req.expected_kcv.is_empty() {
            check_kcv(&cipher, &req.expected_kcv, "the imported key's")?;
        }
        let spec = KeySpec {
            key_type: req.key_type,
            algorithm: alg,
            alias: &req.alias,
            exportable,
        };
        self.store_key(
            actor,
            "ImportKey",
            spec,
            &clear,
            &format!(" kek_kcv={}", kek.meta().kcv),
        )
    }

    pub fn export_key(&self, actor: &str, req: ExportKey) -> Result<ExportedKey, HsmError> {
        self.check_ready()?;
        let key = self.load(&req.key)?;
        let kek = self.load(&req.wrapping_key)?;
        let key_id = key.meta().key_id.clone().unwrap_or_default();
        let refuse = |reason: Reason, msg: String| -> Result<ExportedKey, HsmError> {
            let _ = self.audit(vec![audit(
                actor,
                "ExportKey",
                &key_id,
                reason.code(),
                msg.clone(),
            )]);
            Err(err(reason, msg))
        };
        if kek.key_type().class() != KeyClass::KeyEncryption {
            return refuse(
                Reason::KeyUsageMismatch,
                format!(
                    "{} is a {}: keys are exported only under a KEK, TMK or ZMK",
                    req.wrapping_key,
                    kek.key_type()
                ),
            );
        }
        if !key.meta().exportable {
            return refuse(
                Reason::NotExportable,
                format!("{} is not exportable", req.key),
            );
        }
        if bool::from(key.clear().ct_eq(kek.clear()))
            || (key.meta().key_id.is_some() && key.meta().key_id == kek.meta().key_id)
        {
            return refuse(
                Reason::KeyUsageMismatch,
                "a key cannot be exported under itself".to_string(),
            );
        }
        if strength_bits(kek.algorithm()) < strength_bits(key.algorithm()) {
            return refuse(
                Reason::WrappingKeyTooWeak,
                format!(
                    "a {} key cannot be exported under a weaker {} KEK",
                    algorithm_name(key.algorithm()),
                    algorithm_name(kek.algorithm())
                ),
            );
        }
        let mut out = ExportedKey {
            kcv: key.meta().kcv.clone(),
            ..Default::default()
        };
        match req.format {
            ExportFormat::X917Ecb => {
                let mut ct = Zeroizing::new(key.clear().to_vec());
                if ct.len() % kek.cipher().block_len() != 0 {
                    return refuse(
                        Reason::InvalidKeyLength,
                        format!(
                            "a {}-byte key cannot be ECB-wrapped under a {}-byte-block KEK",
                            ct.len(),
                            kek.cipher().block_len()
                        ),
                    );
                }
                kek.cipher().ecb_encrypt(&mut ct)?;
                out.x917_ecb = ct.to_vec();
            }
            ExportFormat::Tr31 => {
                if key.algorithm() == Algorithm::Sm4 || kek.algorithm() == Algorithm::Sm4 {
                    return refuse(
                        Reason::UnsupportedAlgorithm,
                        "TR-31 defines no code for SM4: export SM4 keys as X917_ECB under an SM4 KEK".to_string(),
                    );
                }
                let version = if kek.algorithm().is_des_family() {
                    Version::B
                } else {
                    Version::D
                };
                let header = Header {
                    version,
                    key_usage: key.key_type().usage(key.algorithm()),
                    algorithm: tr31_algorithm(key.algorithm()),
                    mode_of_use: key.key_type().mode_of_use(),
                    key_version: *b"00",
                    exportability: Exportability::NonExportable,
                    key_context: b'0',
                    optional_blocks: Vec::new(),
                };
                out.tr31_key_block = keyblocks::wrap(kek.clear(), &header, key.clear(), None)
                    .map_err(|e| err(Reason::Internal, e.to_string()))?;
            }
        }
        self.audit(vec![audit(
            actor,
            "ExportKey",
            &key_id,
            "OK",
            format!(
                "kcv={} under={} kek_kcv={} format={:?}",
                key.meta().kcv,
                kek.meta().key_id.as_deref().unwrap_or("block"),
                kek.meta().kcv,
                req.format
            ),
        )])?;
        Ok(out)
    }

    /// What a reference holds, without its bytes: type, algorithm and the upper-case
    /// hex of the first `kcv_bytes` bytes of its check value (E(K, 0…0); AES-CMAC
    /// for AES keys). Works for stateless key blocks too (the payShield port's BU).
    pub fn describe_key(
        &self,
        r: &KeyRef,
        kcv_bytes: usize,
    ) -> Result<(KeyType, Algorithm, String), HsmError> {
        self.check_ready()?;
        let k = self.load(r)?;
        Ok((
            k.key_type(),
            k.algorithm(),
            kcv::kcv_hex(k.cipher(), kcv_bytes),
        ))
    }

    /// The stored record behind a reference (for GetKey and friends).
    pub fn get_key(&self, r: &KeyRef) -> Result<KeyInfo, HsmError> {
        let id = match r {
            KeyRef::Id(id) => id.clone(),
            KeyRef::Alias(a) => self
                .store()
                .key_id_for_alias(a)?
                .ok_or_else(|| err(Reason::UnknownKey, format!("no key has alias {a:?}")))?,
            KeyRef::Block(_) => {
                let k = self.load(r)?;
                k.meta()
                    .key_id
                    .clone()
                    .ok_or_else(|| err(Reason::UnknownKey, "this key block names no stored key"))?
            }
        };
        self.store()
            .get_key(&id)?
            .ok_or_else(|| err(Reason::UnknownKey, format!("no key with id {id:?}")))
    }

    /// A page of keys, optionally of one type. Returns the next page token.
    pub fn list_keys(
        &self,
        key_type: Option<KeyType>,
        page_size: usize,
        page_token: &str,
    ) -> Result<(Vec<KeyInfo>, String), HsmError> {
        let page_size = if page_size == 0 {
            100
        } else {
            page_size.min(1000)
        };
        let mut out = Vec::new();
        let mut after = page_token.to_string();
        loop {
            let chunk = self.store().list_keys(&after, 256)?;
            let exhausted = chunk.len() < 256;
            for rec in chunk {
                after = rec.key_id.clone();
                if key_type.is_none_or(|t| t.name() == rec.key_type) {
                    out.push(rec);
                    if out.len() == page_size {
                        let more = !self.store().list_keys(&after, 1)?.is_empty();
                        return Ok((out, if more { after } else { String::new() }));
                    }
                }
            }
            if exhausted {
                return Ok((out, String::new()));
            }
        }
    }

    pub fn retire_key(&self, actor: &str, r: &KeyRef) -> Result<KeyInfo, HsmError> {
        self.check_ready()?;
        let mut rec = self.get_key(r)?;
        if rec.state == STATE_RETIRED {
            return Ok(rec);
        }
        rec.state = STATE_RETIRED.to_string();
        rec.retired_unix = crate::now_unix();
        let mut batch = Batch {
            audit: vec![audit(
                actor,
                "RetireKey",
                &rec.key_id,
                "OK",
                format!("type={} kcv={}", rec.key_type, rec.kcv),
            )],
            ..Default::default()
        };
        if !rec.alias.is_empty() {
            batch
                .unbind_aliases
                .push((rec.alias.clone(), rec.key_id.clone()));
        }
        batch.put_keys.push(rec.clone());
        let mut committed = self.commit(batch)?;
        // Before the flush: no call starts on the retired key once it is committed.
        self.forget_key(&rec.key_id);
        self.forget_alias(&rec.alias);
        self.flush()?;
        Ok(committed.pop().unwrap_or(rec))
    }

    /// Generates a successor of the same type and algorithm, moves the alias to
    /// it and retires the old key, in one transaction.
    pub fn rotate_key(&self, actor: &str, r: &KeyRef) -> Result<KeyInfo, HsmError> {
        self.check_ready()?;
        let mut old = self.get_key(r)?;
        if old.state != STATE_ACTIVE {
            return Err(err(
                Reason::KeyRetired,
                format!("key {} is retired", old.key_id),
            ));
        }
        let key_type = KeyType::parse(&old.key_type).ok_or_else(|| {
            err(
                Reason::Internal,
                format!("stored key {} has an unknown type", old.key_id),
            )
        })?;
        let alg = crate::keys::types::parse_algorithm(&old.algorithm).ok_or_else(|| {
            err(
                Reason::Internal,
                format!("stored key {} has an unknown algorithm", old.key_id),
            )
        })?;
        let fresh = KeyMaterial::generate(alg)?;
        let (new, _) = self.new_record(
            key_type,
            alg,
            fresh.expose(),
            old.exportable,
            &old.alias,
            old.version + 1,
        )?;
        old.state = STATE_RETIRED.to_string();
        old.retired_unix = crate::now_unix();
        let mut batch = Batch {
            audit: vec![audit(
                actor,
                "RotateKey",
                &new.key_id,
                "OK",
                format!(
                    "replaces={} old_kcv={} new_kcv={} version={}",
                    old.key_id, old.kcv, new.kcv, new.version
                ),
            )],
            ..Default::default()
        };
        if !old.alias.is_empty() {
            // Only if the alias still names the key read above: of two racing
            // rotations of one key, one gets CONFLICT (not a lost update).
            batch
                .unbind_aliases
                .push((old.alias.clone(), old.key_id.clone()));
            batch
                .bind_aliases
                .push((old.alias.clone(), new.key_id.clone()));
        }
        batch.put_keys.push(old.clone());
        batch.put_keys.push(new.clone());
        let mut committed = self.commit(batch)?;
        self.forget_key(&old.key_id);
        self.forget_alias(&old.alias);
        self.flush()?;
        Ok(committed.pop().unwrap_or(new))
    }
}
