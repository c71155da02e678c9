//! The Local Master Key: AES-256, root of the hierarchy. It exists in clear only
//! inside a [`Locked`] page of this process. At rest it is sealed with
//! AES-256-GCM under a key derived with Argon2id from the custodians'
//! passphrases. Every other key is a TR-31 version D block under it, stamped
//! with the LMK's identity (optional block `KP`). Nothing here prints the LMK.

use crate::crypto::{kcv, Algorithm, Cipher};
use crate::sys::Locked;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

/// Format tag of the sealed LMK file.
pub const SEALED_FORMAT: &str = "poshsm-sealed-lmk/1";
/// Fixed passphrase `serve --dev` seals its LMK with. Never for production.
pub const DEV_PASSPHRASE: &str = "poshsm-dev-insecure-passphrase";
/// Bytes of the LMK's KCV recorded in the sealed file (as payShield shows 16H).
const SEALED_KCV_BYTES: usize = 8;
/// Number of hex characters of the LMK KCV carried in each key block (5 bytes).
const KP_KCV_HEX: usize = 10;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LmkError {
    #[error("at least {min} custodian passphrases are required, got {got}")]
    TooFewCustodians { min: usize, got: usize },
    #[error("the sealed LMK needs {want} custodian passphrases, got {got}")]
    WrongCustodianCount { want: usize, got: usize },
    #[error("cannot unseal the LMK: wrong passphrases, wrong order, or a tampered sealed file")]
    UnsealFailed,
    #[error("the unsealed LMK's check value {got} does not match the sealed file's {want}")]
    KcvMismatch { want: String, got: String },
    #[error("sealed LMK file is malformed: {0}")]
    Malformed(String),
    #[error("key derivation failed: {0}")]
    Kdf(String),
}

/// Argon2id parameters recorded in the sealed file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    pub m_kib: u32,
    pub t: u32,
    pub p: u32,
}

impl KdfParams {
    /// OWASP-style production parameters: 64 MiB, 3 passes.
    pub const PRODUCTION: KdfParams = KdfParams {
        m_kib: 64 * 1024,
        t: 3,
        p: 1,
    };
    /// Light parameters for `--dev` and tests (the dev passphrase is public anyway).
    pub const DEV: KdfParams = KdfParams {
        m_kib: 8 * 1024,
        t: 1,
        p: 1,
    };
}

/// The sealed LMK as stored in `DIR/lmk.sealed` (JSON).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SealedLmk {
    pub format: String,
    pub kdf: String,
    pub kdf_params: KdfParams,
    pub custodians: u32,
    /// Hex of the first 8 bytes of the LMK's KCV (AES-CMAC over zeros); public.
    pub kcv: String,
    pub salt: String,
    pub nonce: String,
    pub ciphertext: String,
    pub created_unix: i64,
}

impl SealedLmk {
    fn aad(&self) -> String {
        format!(
            "{}|{}|{}:{}:{}|{}|{}|{}",
            self.format,
            self.kdf,
            self.kdf_params.m_kib,
            self.kdf_params.t,
            self.kdf_params.p,
            self.custodians,
            self.kcv,
            self.salt
        )
    }

    pub fn to_json(&self) -> String {
        // invariant: a struct of strings and integers always serializes
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    pub fn from_json(s: &str) -> Result<SealedLmk, LmkError> {
        let sealed: SealedLmk =
            serde_json::from_str(s).map_err(|e| LmkError::Malformed(e.to_string()))?;
        if sealed.format != SEALED_FORMAT {
            return Err(LmkError::Malformed(format!(
                "unknown format {:?}, expected {SEALED_FORMAT}",
                sealed.format
            )));
        }
        Ok(sealed)
    }
}

struct LmkInner {
    key: [u8; 32],
    kcv: [u8; 16],
}

impl Drop for LmkInner {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

/// The clear LMK, in locked memory. No `Clone`, no `Debug` of the key.
pub struct Lmk {
    inner: Locked<LmkInner>,
    kp: String,
}

impl std::fmt::Debug for Lmk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lmk(kcv={}, <redacted>)", self.kcv_hex(3))
    }
}

fn cmac_kcv(key: &[u8; 32]) -> Result<[u8; 16], crate::crypto::CryptoError> {
    let cipher = Cipher::new(Algorithm::Aes256, key)?;
    let block = kcv::kcv_block(&cipher);
    let mut out = [0u8; 16];
    let n = block.len().min(16);
    out[..n].copy_from_slice(&block[..n]);
    Ok(out)
}

impl Lmk {
    /// A fresh LMK from the OS RNG.
    pub fn generate() -> Lmk {
        let mut key = Zeroizing::new([0u8; 32]);
        crate::crypto::random_bytes(&mut key[..]);
        Lmk::from_bytes(&key)
    }

    /// An LMK from given bytes (unsealing, and tests that need two modules).
    pub fn from_bytes(key: &[u8; 32]) -> Lmk {
        // invariant: a 32-byte key is always a valid AES-256 key
        let kcv = cmac_kcv(key).unwrap_or([0u8; 16]);
        let inner = Locked::new(LmkInner { key: *key, kcv });
        let kp = format!("01{}", &hex::encode_upper(kcv)[..KP_KCV_HEX]);
        Lmk { inner, kp }
    }

    /// Upper-case hex of the first `n` bytes of the LMK's KCV (AES-CMAC over zeros).
    pub fn kcv_hex(&self, n: usize) -> String {
        hex::encode_upper(&self.inner.kcv[..n.min(16)])
    }

    /// The `KP` optional-block value that names this LMK inside key blocks.
    pub fn kp_block(&self) -> &str {
        &self.kp
    }

    pub(crate) fn kbpk(&self) -> &[u8; 32] {
        &self.inner.key
    }

    /// A second handle on the same LMK (for the previous slot at rotation).
    pub(crate) fn duplicate(&self) -> Lmk {
        Lmk::from_bytes(&self.inner.key)
    }

    /// AES-CMAC over `text` under a key derived from this LMK (NIST SP 800-108
    /// counter mode with AES-CMAC as the PRF, label "poshsm lmk-set"), so the
    /// LMK itself never MACs anything but key blocks.
    fn set_mac(&self, text: &str) -> Result<String, LmkError> {
        let fail = |_| LmkError::Kdf("AES-256 key schedule for the set MAC".into());
        let lmk = Cipher::new(Algorithm::Aes256, &self.inner.key).map_err(fail)?;
        let derive = |i: u8| -> Zeroizing<Vec<u8>> {
            let mut input = vec![i];
            input.extend_from_slice(b"poshsm lmk-set\0");
            input.extend_from_slice(&256u16.to_be_bytes());
            Zeroizing::new(crate::crypto::mac::cmac(&lmk, &input))
        };
        let (d1, d2) = (derive(1), derive(2));
        let mut k = Zeroizing::new([0u8; 32]);
        k[..16].copy_from_slice(&d1[..16]);
        k[16..].copy_from_slice(&d2[..16]);
        let c = Cipher::new(Algorithm::Aes256, &k[..]).map_err(fail)?;
        Ok(hex::encode_upper(crate::crypto::mac::cmac(
            &c,
            text.as_bytes(),
        )))
    }

    /// Seals the LMK under the custodians' passphrases (in custodian order).
    pub fn seal(
        &self,
        passphrases: &[SecretString],
        params: KdfParams,
    ) -> Result<SealedLmk, LmkError> {
        if passphrases.len() < 2 {
            return Err(LmkError::TooFewCustodians {
                min: 2,
                got: passphrases.len(),
            });
        }
        let mut salt = [0u8; 16];
        crate::crypto::random_bytes(&mut salt);
        let mut nonce = [0u8; 12];
        crate::crypto::random_bytes(&mut nonce);
        let mut sealed = SealedLmk {
            format: SEALED_FORMAT.to_string(),
            kdf: "argon2id-v19".to_string(),
            kdf_params: params,
            custodians: passphrases.len() as u32,
            kcv: self.kcv_hex(SEALED_KCV_BYTES),
            salt: hex::encode_upper(salt),
            nonce: hex::encode_upper(nonce),
            ciphertext: String::new(),
            created_unix: crate::now_unix(),
        };
        let kek = derive_kek(passphrases, &salt, params)?;
        let gcm = Aes256Gcm::new_from_slice(&kek[..]).map_err(|e| LmkError::Kdf(e.to_string()))?;
        let aad = sealed.aad();
        let ct = gcm
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &self.inner.key,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| LmkError::Kdf("AES-GCM seal failed".into()))?;
        sealed.ciphertext = hex::encode_upper(ct);
        Ok(sealed)
    }

    /// Unseals and checks the KCV recorded in the sealed file.
    pub fn unseal(sealed: &SealedLmk, passphrases: &[SecretString]) -> Result<Lmk, LmkError> {
        if passphrases.len() != sealed.custodians as usize {
            return Err(LmkError::WrongCustodianCount {
                want: sealed.custodians as usize,
                got: passphrases.len(),
            });
        }
        let bad = |what: &str| LmkError::Malformed(format!("{what} is not valid hex"));
        let salt = hex::decode(&sealed.salt).map_err(|_| bad("salt"))?;
        let nonce = hex::decode(&sealed.nonce).map_err(|_| bad("nonce"))?;
        let ct = hex::decode(&sealed.ciphertext).map_err(|_| bad("ciphertext"))?;
        if nonce.len() != 12 || salt.len() < 8 {
            return Err(LmkError::Malformed(
                "nonce or salt has the wrong length".into(),
            ));
        }
        let kek = derive_kek(passphrases, &salt, sealed.kdf_params)?;
        let gcm = Aes256Gcm::new_from_slice(&kek[..]).map_err(|e| LmkError::Kdf(e.to_string()))?;
        let aad = sealed.aad();
        let clear = Zeroizing::new(
            gcm.decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &ct,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| LmkError::UnsealFailed)?,
        );
        let key: Zeroizing<[u8; 32]> = Zeroizing::new(
            clear[..]
                .try_into()
                .map_err(|_| LmkError::Malformed("sealed LMK is not 32 bytes".into()))?,
        );
        let lmk = Lmk::from_bytes(&key);
        let got = lmk.kcv_hex(SEALED_KCV_BYTES);
        if got != sealed.kcv.to_ascii_uppercase() {
            return Err(LmkError::KcvMismatch {
                want: sealed.kcv.clone(),
                got,
            });
        }
        Ok(lmk)
    }
}

/// The `KP` optional-block value for an LMK of public KCV `kcv` (hex).
pub fn kp_for_kcv(kcv: &str) -> String {
    let k = kcv.to_ascii_uppercase();
    format!("01{}", k.get(..KP_KCV_HEX).unwrap_or(&k))
}

/// Format tag of the LMK set file: the current LMK, the previous one during
/// a rotation's migration window, and the identities of retired LMKs.
pub const SET_FORMAT: &str = "poshsm-lmk-set/1";

/// A retired LMK: only its public identity is kept, so its blocks can be
/// refused with a clear reason (`LMK_RETIRED`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiredLmk {
    /// Hex of the first 8 bytes of the LMK's KCV.
    pub kcv: String,
    pub retired_unix: i64,
}

/// `DIR/lmk.sealed`: one or two sealed LMKs and the retired identities. The
/// set's public fields are bound by `set_mac`, an AES-CMAC under a key
/// derived from the current LMK, so a retired LMK cannot be slipped back in
/// as "previous" by editing the file. A plain [`SealedLmk`] (the format
/// `lmk init` writes) reads as a set with no previous LMK.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LmkFile {
    pub format: String,
    pub current: SealedLmk,
    #[serde(default)]
    pub previous: Option<SealedLmk>,
    /// When the previous LMK's migration window opened (the rotation).
    #[serde(default)]
    pub previous_since_unix: i64,
    #[serde(default)]
    pub retired: Vec<RetiredLmk>,
    #[serde(default)]
    pub set_mac: String,
}

impl LmkFile {
    /// Parses either format: an LMK set, or a single sealed LMK.
    pub fn from_json(s: &str) -> Result<LmkFile, LmkError> {
        let probe: serde_json::Value =
            serde_json::from_str(s).map_err(|e| LmkError::Malformed(e.to_string()))?;
        match probe.get("format").and_then(|f| f.as_str()) {
            Some(SET_FORMAT) => {
                let file: LmkFile = serde_json::from_value(probe)
                    .map_err(|e| LmkError::Malformed(e.to_string()))?;
                let hex16 = |k: &str| k.len() == 16 && k.bytes().all(|b| b.is_ascii_hexdigit());
                if let Some(r) = file.retired.iter().find(|r| !hex16(&r.kcv)) {
                    return Err(LmkError::Malformed(format!(
                        "retired LMK check value {:?} is not 16 hex digits",
                        r.kcv
                    )));
                }
                Ok(file)
            }
            _ => Ok(LmkFile::single(SealedLmk::from_json(s)?)),
        }
    }

    pub fn single(current: SealedLmk) -> LmkFile {
        LmkFile {
            format: SET_FORMAT.to_string(),
            current,
            previous: None,
            previous_since_unix: 0,
            retired: Vec::new(),
            set_mac: String::new(),
        }
    }

    pub fn to_json(&self) -> String {
        // invariant: a struct of strings and integers always serializes
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The current LMK's public KCV (16 hex digits).
    pub fn kcv(&self) -> &str {
        &self.current.kcv
    }

    fn mac_input(&self) -> String {
        let mut s = format!(
            "{SET_FORMAT}|{}|{}|{}",
            self.current.kcv,
            self.previous
                .as_ref()
                .map(|p| p.kcv.as_str())
                .unwrap_or("-"),
            self.previous_since_unix
        );
        for r in &self.retired {
            s.push_str(&format!("|{}:{}", r.kcv, r.retired_unix));
        }
        s
    }

    /// Computes `set_mac` under `current` (which must be this file's current LMK).
    pub fn bind(&mut self, current: &Lmk) -> Result<(), LmkError> {
        self.set_mac = current.set_mac(&self.mac_input())?;
        Ok(())
    }

    /// Unseals the current LMK and, if present, the previous one (sealed under
    /// the same passphrases at rotation), and checks the set's binding.
    pub fn unseal(&self, passphrases: &[SecretString]) -> Result<LmkSet, LmkError> {
        let current = Lmk::unseal(&self.current, passphrases)?;
        let bound = self.previous.is_none() && self.retired.is_empty() && self.set_mac.is_empty();
        if !bound {
            let want = current.set_mac(&self.mac_input())?;
            let ok: bool =
                subtle::ConstantTimeEq::ct_eq(want.as_bytes(), self.set_mac.as_bytes()).into();
            if !ok {
                return Err(LmkError::Malformed(
                    "the LMK set's previous/retired entries were changed outside poshsm (set_mac does not verify)".into(),
                ));
            }
        }
        let previous = match &self.previous {
            Some(p) => Some(Lmk::unseal(p, passphrases)?),
            None => None,
        };
        Ok(LmkSet {
            current,
            previous,
            previous_since_unix: self.previous_since_unix,
            retired: self.retired.clone(),
        })
    }
}

/// Where a key block's LMK identity puts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Generation {
    Current,
    /// The previous LMK, inside its migration window.
    Previous,
    /// A retired LMK (its 16-hex KCV).
    Retired(String),
    /// No LMK this module has known.
    Unknown,
}

/// The LMKs a running module holds: the current one and, between
/// `RotateLmk` and `RetirePreviousLmk`, the previous one.
#[derive(Debug)]
pub struct LmkSet {
    pub current: Lmk,
    pub previous: Option<Lmk>,
    pub previous_since_unix: i64,
    pub retired: Vec<RetiredLmk>,
}

impl LmkSet {
    pub fn single(current: Lmk) -> LmkSet {
        LmkSet {
            current,
            previous: None,
            previous_since_unix: 0,
            retired: Vec::new(),
        }
    }

    /// Classifies a block's `KP` value (`01` + 10 hex digits of an LMK KCV).
    pub fn generation(&self, kp: &str) -> Generation {
        if kp == self.current.kp_block() {
            return Generation::Current;
        }
        if let Some(p) = &self.previous {
            if kp == p.kp_block() {
                return Generation::Previous;
            }
        }
        let id = kp.get(2..).unwrap_or_default();
        match self
            .retired
            .iter()
            .find(|r| id.len() == KP_KCV_HEX && r.kcv.to_ascii_uppercase().starts_with(id))
        {
            Some(r) => Generation::Retired(r.kcv.clone()),
            None => Generation::Unknown,
        }
    }

    /// The LMK of a generation (current or previous).
    pub fn lmk(&self, g: &Generation) -> Option<&Lmk> {
        match g {
            Generation::Current => Some(&self.current),
            Generation::Previous => self.previous.as_ref(),
            _ => None,
        }
    }

    /// Seals the set under `passphrases` (both LMKs) and binds it.
    pub fn seal(
        &self,
        passphrases: &[SecretString],
        params: KdfParams,
    ) -> Result<LmkFile, LmkError> {
        let mut file = LmkFile {
            format: SET_FORMAT.to_string(),
            current: self.current.seal(passphrases, params)?,
            previous: match &self.previous {
                Some(p) => Some(p.seal(passphrases, params)?),
                None => None,
            },
            previous_since_unix: self.previous_since_unix,
            retired: self.retired.clone(),
            set_mac: String::new(),
        };
        file.bind(&self.current)?;
        Ok(file)
    }
}

/// Writes `text` to `path` atomically and durably: a 0600 temporary file,
/// fsync, rename, fsync of the directory. A crash leaves the old or the new file.
pub fn write_file_atomic(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp)?;
    std::io::Write::write_all(&mut f, text.as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    sync_dir(path)
}

/// fsyncs the directory holding `path` (so a rename or unlink is durable).
pub fn sync_dir(path: &std::path::Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => std::path::Path::new("."),
        };
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn derive_kek(
    passphrases: &[SecretString],
    salt: &[u8],
    params: KdfParams,
) -> Result<Zeroizing<[u8; 32]>, LmkError> {
    // Each passphrase length-prefixed, in custodian order, so no two different
    // lists of passphrases give the same Argon2 input.
    let mut input = Zeroizing::new(Vec::new());
    for p in passphrases {
        let b = p.expose_secret().as_bytes();
        input.extend_from_slice(&(b.len() as u32).to_be_bytes());
        input.extend_from_slice(b);
    }
    let argon_params = argon2::Params::new(params.m_kib, params.t, params.p, Some(32))
        .map_err(|e| LmkError::Kdf(e.to_string()))?;
    let argon = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon_params,
    );
    let mut out = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(&input, salt, &mut out[..])
        .map_err(|e| LmkError::Kdf(e.to_string()))?;
    Ok(out)
}

/// Parses `POSHSM_LMK_PASSPHRASES`-style text: one passphrase per line.
pub fn passphrases_from_lines(text: &str) -> Vec<SecretString> {
    text.lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.is_empty())
        .map(|l| SecretString::from(l.to_string()))
        .collect()
}

/// The dev passphrases (`serve --dev`): two custodians, both the public dev phrase.
pub fn dev_passphrases() -> Vec<SecretString> {
    vec![
        SecretString::from(format!("{DEV_PASSPHRASE}-1")),
        SecretString::from(format!("{DEV_PASSPHRASE}-2")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pw(list: &[&str]) -> Vec<SecretString> {
        list.iter()
            .map(|s| SecretString::from(s.to_string()))
            .collect()
    }

    #[test]
    fn sealed_lmk_unseals_with_the_same_passphrases_and_keeps_its_kcv() {
        let lmk = Lmk::generate();
        let sealed = lmk
            .seal(&pw(&["alpha-one", "bravo-two"]), KdfParams::DEV)
            .unwrap();
        let json = sealed.to_json();
        assert!(!json.contains(&hex::encode_upper(lmk.kbpk())));
        let back = Lmk::unseal(
            &SealedLmk::from_json(&json).unwrap(),
            &pw(&["alpha-one", "bravo-two"]),
        )
        .unwrap();
        assert_eq!(back.kcv_hex(16), lmk.kcv_hex(16));
        assert_eq!(back.kbpk(), lmk.kbpk());
    }

    #[test]
    fn wrong_passphrase_or_order_does_not_unseal() {
        let lmk = Lmk::generate();
        let sealed = lmk
            .seal(&pw(&["alpha-one", "bravo-two"]), KdfParams::DEV)
            .unwrap();
        assert!(matches!(
            Lmk::unseal(&sealed, &pw(&["alpha-one", "bravo-TWO"])),
            Err(LmkError::UnsealFailed)
        ));
        assert!(matches!(
            Lmk::unseal(&sealed, &pw(&["bravo-two", "alpha-one"])),
            Err(LmkError::UnsealFailed)
        ));
        assert!(matches!(
            Lmk::unseal(&sealed, &pw(&["alpha-one"])),
            Err(LmkError::WrongCustodianCount { .. })
        ));
    }

    #[test]
    fn a_tampered_kcv_or_parameter_in_the_sealed_file_is_refused() {
        let lmk = Lmk::generate();
        let mut sealed = lmk
            .seal(&pw(&["alpha-one", "bravo-two"]), KdfParams::DEV)
            .unwrap();
        sealed.kcv = "00".repeat(8);
        assert!(Lmk::unseal(&sealed, &pw(&["alpha-one", "bravo-two"])).is_err());
    }

    #[test]
    fn one_custodian_is_not_enough() {
        let lmk = Lmk::generate();
        assert!(matches!(
            lmk.seal(&pw(&["alone"]), KdfParams::DEV),
            Err(LmkError::TooFewCustodians { .. })
        ));
    }

    #[test]
    fn a_set_file_round_trips_and_its_public_entries_cannot_be_edited() {
        let pwd = pw(&["alpha-one", "bravo-two"]);
        let set = LmkSet {
            current: Lmk::generate(),
            previous: Some(Lmk::generate()),
            previous_since_unix: 1_700_000_000,
            retired: vec![RetiredLmk {
                kcv: "0123456789ABCDEF".into(),
                retired_unix: 1_600_000_000,
            }],
        };
        let file = set.seal(&pwd, KdfParams::DEV).unwrap();
        let back = LmkFile::from_json(&file.to_json())
            .unwrap()
            .unseal(&pwd)
            .unwrap();
        assert_eq!(back.current.kcv_hex(16), set.current.kcv_hex(16));
        assert_eq!(
            back.previous.as_ref().unwrap().kcv_hex(16),
            set.previous.as_ref().unwrap().kcv_hex(16)
        );
        assert_eq!(back.retired, set.retired);
        assert_eq!(back.generation(set.current.kp_block()), Generation::Current);
        assert_eq!(
            back.generation(set.previous.as_ref().unwrap().kp_block()),
            Generation::Previous
        );
        assert_eq!(
            back.generation("010123456789"),
            Generation::Retired("0123456789ABCDEF".into())
        );
        assert_eq!(back.generation("01FFFFFFFFFF"), Generation::Unknown);
        // Dropping the retired entry, or moving the window, breaks the binding.
        let mut edited = file.clone();
        edited.retired.clear();
        assert!(matches!(edited.unseal(&pwd), Err(LmkError::Malformed(_))));
        let mut edited = file.clone();
        edited.previous_since_unix += 1;
        assert!(matches!(edited.unseal(&pwd), Err(LmkError::Malformed(_))));
    }

    #[test]
    fn a_single_sealed_lmk_file_reads_as_a_set_without_previous() {
        let lmk = Lmk::generate();
        let sealed = lmk
            .seal(&pw(&["alpha-one", "bravo-two"]), KdfParams::DEV)
            .unwrap();
        let file = LmkFile::from_json(&sealed.to_json()).unwrap();
        assert!(file.previous.is_none() && file.retired.is_empty());
        let set = file.unseal(&pw(&["alpha-one", "bravo-two"])).unwrap();
        assert_eq!(set.current.kcv_hex(8), lmk.kcv_hex(8));
        assert_eq!(kp_for_kcv(&lmk.kcv_hex(8)), lmk.kp_block());
    }

    #[test]
    fn debug_output_shows_no_key_bytes() {
        let lmk = Lmk::from_bytes(&[0x11; 32]);
        let dbg = format!("{lmk:?}");
        assert!(!dbg.contains("1111"), "{dbg}");
    }
}
