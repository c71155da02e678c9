//! Track data (磁道加密): translate data encrypted under a terminal's TDK (or
//! any D0 key) to a ZEK without the clear data leaving the module, and — only
//! for callers with the separate `data-decrypt` role — decrypt it to clear.

use super::{err, Hsm, HsmError, KeyRef, Reason};
use crate::keys::cache::CachedKey;
use crate::keys::{KeyClass, KeyType};
use zeroize::Zeroizing;

/// ECB, or CBC with an IV of the cipher's block length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataMode {
    Ecb,
    Cbc(Vec<u8>),
}

#[derive(Clone, Debug)]
pub enum DataKeySource {
    /// The terminal's current TDK.
    Terminal(String),
    Key(KeyRef),
}

/// Largest data accepted (track 2/3 and a few tags fit easily).
pub const MAX_DATA: usize = 4096;

impl Hsm {
    fn data_key(&self, source: &DataKeySource) -> Result<CachedKey, HsmError> {
        match source {
            DataKeySource::Terminal(tid) => {
                let t = self.get_terminal(tid)?;
                let tdk = t
                    .current
                    .as_ref()
                    .map(|c| c.tdk.clone())
                    .filter(|id| !id.is_empty())
                    .ok_or_else(|| {
                        err(
                            Reason::TerminalNotSignedIn,
                            format!("terminal {tid} has no TDK: sign it in with include_tdk"),
                        )
                    })?;
                let k = self.load(&KeyRef::Id(tdk))?;
                if k.key_type() != KeyType::Tdk {
                    self.raise_alarm(format!(
                        "terminal {tid}'s record names a {} as its TDK",
                        k.key_type()
                    ));
                    return Err(err(
                        Reason::KeyUsageMismatch,
                        format!("terminal {tid}'s TDK is not a TDK"),
                    ));
                }
                Ok(k)
            }
            DataKeySource::Key(r) => self.load_class(r, &[KeyClass::Data], "for data encryption"),
        }
    }

    fn crypt(
        key: &CachedKey,
        mode: &DataMode,
        data: &mut [u8],
        encrypt: bool,
    ) -> Result<(), HsmError> {
        let bl = key.cipher().block_len();
        if data.is_empty() || data.len() % bl != 0 || data.len() > MAX_DATA {
            return Err(err(
                Reason::InvalidArgument,
                format!(
                    "data must be 1..={MAX_DATA} bytes in whole {bl}-byte blocks, got {}",
                    data.len()
                ),
            ));
        }
        match mode {
            DataMode::Ecb if encrypt => key.cipher().ecb_encrypt(data)?,
            DataMode::Ecb => key.cipher().ecb_decrypt(data)?,
            DataMode::Cbc(iv) if iv.len() != bl => {
                return Err(err(
                    Reason::InvalidArgument,
                    format!("the IV must be {bl} bytes, got {}", iv.len()),
                ))
            }
            DataMode::Cbc(iv) if encrypt => key.cipher().cbc_encrypt(iv, data)?,
            DataMode::Cbc(iv) => key.cipher().cbc_decrypt(iv, data)?,
        }
        Ok(())
    }

    /// Decrypts under the source data key and re-encrypts under a ZEK.
    pub fn translate_data(
        &self,
        source: &DataKeySource,
        source_mode: &DataMode,
        dest: &KeyRef,
        dest_mode: &DataMode,
        data: &[u8],
    ) -> Result<Vec<u8>, HsmError> {
        self.check_ready()?;
        let src = self.data_key(source)?;
        let dst = self.load_class(dest, &[KeyClass::Data], "for data encryption")?;
        if dst.key_type() != KeyType::Zek {
            return Err(err(
                Reason::KeyUsageMismatch,
                format!(
                    "data is translated to a ZEK; {dest} is a {}",
                    dst.key_type()
                ),
            ));
        }
        let mut clear = Zeroizing::new(data.to_vec());
        Self::crypt(&src, source_mode, &mut clear, false)?;
        if clear.len() % dst.cipher().block_len() != 0 {
            return Err(err(
                Reason::InvalidArgument,
                "the data does not fit the destination key's block length",
            ));
        }
        let mut out = clear.to_vec();
        Self::crypt(&dst, dest_mode, &mut out, true)?;
        Ok(out)
    }

    /// Decrypts data to clear. The server allows it only to the `data-decrypt` role.
    pub fn decrypt_data(
        &self,
        actor: &str,
        source: &DataKeySource,
        mode: &DataMode,
        data: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        self.check_ready()?;
        let key = self.data_key(source)?;
        let mut clear = Zeroizing::new(data.to_vec());
        Self::crypt(&key, mode, &mut clear, false)?;
        self.audit(vec![crate::store::audit::AuditDraft {
            actor: actor.to_string(),
            operation: "DecryptData".into(),
            key_id: key.meta().key_id.clone().unwrap_or_default(),
            outcome: "OK".into(),
            detail: format!("bytes={} kcv={}", data.len(), key.meta().kcv),
        }])?;
        Ok(clear)
    }
}
