//! Keys: the domain key types and their usage rules, the LMK, the LMK key
//! blocks every key lives in, and the bounded cache of unwrapped keys.
//! Clear key bytes exist only inside [`LoadedKey`] (locked pages, zeroized on
//! drop) and transiently inside `crypto`; they never leave this module and
//! `crypto` in any other form.

pub mod cache;
pub mod lmk;
pub mod types;

use crate::crypto::{kcv, Algorithm, Cipher, CryptoError};
use keyblocks::{Exportability, Header, KeyUsage, Version};
use zeroize::Zeroize;

pub use cache::KeyCache;
pub use lmk::{Generation, Lmk, LmkError, LmkFile, LmkSet, SealedLmk};
pub use types::{KeyClass, KeyType};

/// Proprietary optional block carrying our key type inside LMK blocks.
pub const OB_KEY_TYPE: [u8; 2] = *b"01";
/// Proprietary optional block carrying the key id of a stored key.
pub const OB_KEY_ID: [u8; 2] = *b"02";
/// X9.143 optional block: KCV of the wrapping key (here: the LMK's identity).
pub const OB_KBPK_KCV: [u8; 2] = *b"KP";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("key block is not valid: {0}")]
    InvalidBlock(String),
    #[error("key block was wrapped under another LMK (LMK check value {found}); this module's LMK is {ours}")]
    WrongLmk { found: String, ours: String },
    #[error("key block was wrapped under LMK {kcv}, which has been retired: translate the module's current blocks (GetKey / SignIn) instead")]
    LmkRetired { kcv: String },
    #[error("key block header is inconsistent: {0}")]
    Inconsistent(String),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// What the header of an LMK key block says about the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyMeta {
    pub key_type: KeyType,
    pub algorithm: Algorithm,
    pub exportable: bool,
    pub key_id: Option<String>,
    /// The key's KCV, first 3 bytes, upper-case hex.
    pub kcv: String,
}

/// Inline key bytes (no heap), so a [`LoadedKey`] in a locked page holds them.
struct InlineKey {
    bytes: [u8; 32],
    len: usize,
}

impl Drop for InlineKey {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

/// A key unwrapped from its LMK block and ready to use: metadata, clear bytes
/// and the cipher's key schedule. `Debug` shows the metadata only.
pub struct LoadedKey {
    meta: KeyMeta,
    key: InlineKey,
    cipher: Cipher,
    /// X9.19 key schedules, precomputed for double/triple-length TDES MAC keys.
    retail: Option<crate::crypto::mac::RetailMac>,
}

impl std::fmt::Debug for LoadedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedKey")
            .field("meta", &self.meta)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl LoadedKey {
    pub fn new(meta_without_kcv: KeyMeta, clear: &[u8]) -> Result<LoadedKey, KeyError> {
        if clear.len() > 32 || clear.len() != meta_without_kcv.algorithm.key_len() {
            return Err(KeyError::Inconsistent(format!(
                "key length {} does not fit algorithm {}",
                clear.len(),
                types::algorithm_name(meta_without_kcv.algorithm)
            )));
        }
        let cipher = Cipher::new(meta_without_kcv.algorithm, clear)?;
        let mut key = InlineKey {
            bytes: [0u8; 32],
            len: clear.len(),
        };
        key.bytes[..clear.len()].copy_from_slice(clear);
        let mut meta = meta_without_kcv;
        meta.kcv = kcv::kcv_hex(&cipher, 3);
        let retail = match (meta.key_type.class(), meta.algorithm) {
            (KeyClass::Mac, Algorithm::Tdes2 | Algorithm::Tdes3) => {
                Some(crate::crypto::mac::RetailMac::new(clear)?)
            }
            _ => None,
        };
        Ok(LoadedKey {
            meta,
            key,
            cipher,
            retail,
        })
    }

    pub fn meta(&self) -> &KeyMeta {
        &self.meta
    }

    pub fn cipher(&self) -> &Cipher {
        &self.cipher
    }

    pub fn algorithm(&self) -> Algorithm {
        self.meta.algorithm
    }

    pub fn key_type(&self) -> KeyType {
        self.meta.key_type
    }

    /// Precomputed X9.19 (ISO 9797-1 alg 3) for TDES MAC keys.
    pub fn retail_mac(&self) -> Option<&crate::crypto::mac::RetailMac> {
        self.retail.as_ref()
    }

    /// The clear key bytes. Only for the core's wrapping and MAC code paths.
    pub(crate) fn clear(&self) -> &[u8] {
        &self.key.bytes[..self.key.len]
    }
}

/// The header this module gives a key of `meta` under `lmk`.
pub fn lmk_header(lmk: &Lmk, meta: &KeyMeta) -> Result<Header, KeyError> {
    let mut h = Header {
        version: Version::D,
        key_usage: meta.key_type.usage(meta.algorithm),
        algorithm: types::tr31_algorithm(meta.algorithm),
        mode_of_use: meta.key_type.mode_of_use(),
        key_version: *b"00",
        exportability: if meta.exportable {
            Exportability::Exportable
        } else {
            Exportability::NonExportable
        },
        key_context: b'0',
        optional_blocks: Vec::new(),
    };
    let bad = |e: keyblocks::Error| KeyError::InvalidBlock(e.to_string());
    h.set_optional(OB_KBPK_KCV, lmk.kp_block()).map_err(bad)?;
    h.set_optional(OB_KEY_TYPE, meta.key_type.name())
        .map_err(bad)?;
    if let Some(id) = &meta.key_id {
        h.set_optional(OB_KEY_ID, id).map_err(bad)?;
    }
    Ok(h)
}

/// Wraps a clear key under the LMK as a TR-31 version D block.
pub fn wrap_under_lmk(lmk: &Lmk, key: &LoadedKey) -> Result<String, KeyError> {
    let header = lmk_header(lmk, &key.meta)?;
    keyblocks::wrap(lmk.kbpk(), &header, key.clear(), None)
        .map_err(|e| KeyError::InvalidBlock(e.to_string()))
}

/// The LMK identity (`KP` optional block) a key block carries, if any.
pub fn block_lmk_identity(block: &str) -> Result<Option<String>, KeyError> {
    let header = Header::parse(block).map_err(|e| KeyError::InvalidBlock(e.to_string()))?;
    Ok(header.optional(&OB_KBPK_KCV).map(str::to_string))
}

/// Unwraps a key block under whichever of the set's LMKs it names: the
/// current one, or the previous one during its migration window. Returns the
/// key and the generation it was found under; a retired LMK's block is
/// refused with [`KeyError::LmkRetired`].
pub fn unwrap_from_set(set: &LmkSet, block: &str) -> Result<(LoadedKey, Generation), KeyError> {
    let kp = block_lmk_identity(block)?.ok_or_else(|| {
        KeyError::InvalidBlock(
            "key block carries no LMK identity (optional block KP): not an LMK block of this module".into(),
        )
    })?;
    let generation = set.generation(&kp);
    match set.lmk(&generation) {
        Some(lmk) => Ok((unwrap_from_lmk(lmk, block)?, generation)),
        None => match generation {
            Generation::Retired(kcv) => Err(KeyError::LmkRetired { kcv }),
            _ => Err(KeyError::WrongLmk {
                found: kp.get(2..).unwrap_or(&kp).to_string(),
                ours: set
                    .current
                    .kp_block()
                    .get(2..)
                    .unwrap_or_default()
                    .to_string(),
            }),
        },
    }
}

/// Unwraps an LMK key block: checks the LMK identity, the MAC (inside
/// `keyblocks`), and that the header's usage agrees with our key type.
pub fn unwrap_from_lmk(lmk: &Lmk, block: &str) -> Result<LoadedKey, KeyError> {
    let header = Header::parse(block).map_err(|e| KeyError::InvalidBlock(e.to_string()))?;
    if header.version != Version::D {
        return Err(KeyError::InvalidBlock(format!(
            "LMK key blocks are TR-31 version D, this one is version {:?}",
            header.version
        )));
    }
    match header.optional(&OB_KBPK_KCV) {
        Some(kp) if kp == lmk.kp_block() => {}
        Some(kp) => {
            return Err(KeyError::WrongLmk {
                found: kp.get(2..).unwrap_or(kp).to_string(),
                ours: lmk.kp_block().get(2..).unwrap_or_default().to_string(),
            })
        }
        None => {
            return Err(KeyError::InvalidBlock(
                "key block carries no LMK identity (optional block KP): not an LMK block of this module".into(),
            ))
        }
    }
    let unwrapped =
        keyblocks::unwrap(lmk.kbpk(), block).map_err(|e| KeyError::InvalidBlock(e.to_string()))?;
    let h = &unwrapped.header;
    let key_type = h
        .optional(&OB_KEY_TYPE)
        .and_then(KeyType::parse)
        .ok_or_else(|| KeyError::Inconsistent("no key type block (01) in an LMK block".into()))?;
    let algorithm =
        types::algorithm_from_tr31(h.algorithm, unwrapped.key.len()).ok_or_else(|| {
            KeyError::Inconsistent(format!(
                "algorithm code {:?} with a {}-byte key is not one this module uses",
                h.algorithm.0 as char,
                unwrapped.key.len()
            ))
        })?;
    let want: KeyUsage = key_type.usage(algorithm);
    if h.key_usage != want {
        return Err(KeyError::Inconsistent(format!(
            "key usage {} does not match key type {key_type}",
            String::from_utf8_lossy(&h.key_usage.0)
        )));
    }
    let meta = KeyMeta {
        key_type,
        algorithm,
        exportable: h.exportability == Exportability::Exportable,
        key_id: h.optional(&OB_KEY_ID).map(str::to_string),
        kcv: String::new(),
    };
    LoadedKey::new(meta, &unwrapped.key)
}
