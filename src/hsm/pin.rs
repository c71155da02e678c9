//! PIN translation: decrypt a PIN block under the source PIN key and
//! re-encrypt it under the destination ZPK, optionally changing its ISO 9564
//! format, without the clear PIN ever leaving this function. Format changes
//! that would drop the PAN binding (anything → ISO 1) are refused by default.

use super::guard::Verdict;
use super::{err, Hsm, HsmError, KeyRef, Reason};
use crate::crypto::pinblock::{self, Pan, PinBlockFormat};
use crate::keys::cache::CachedKey;
use crate::keys::{KeyClass, KeyType};

#[derive(Clone, Debug)]
pub enum PinKeySource {
    /// The terminal's current PIK.
    Terminal(String),
    Key(KeyRef),
}

#[derive(Clone, Debug)]
pub struct TranslatePin {
    pub source: PinKeySource,
    pub dest: KeyRef,
    pub pin_block: Vec<u8>,
    pub pan: String,
    pub source_format: PinBlockFormat,
    pub dest_format: PinBlockFormat,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TranslatedPin {
    pub pin_block: Vec<u8>,
    pub dest_kcv: String,
    /// Number of PIN digits (4–12): payShield's CA/CC answer carries it.
    pub pin_len: usize,
}

impl Hsm {
    pub fn translate_pin(&self, req: &TranslatePin) -> Result<TranslatedPin, HsmError> {
        self.check_ready()?;
        match &req.source {
            PinKeySource::Terminal(tid) => {
                // Resolved before the terminal's lock (its own locks are hot),
                // but its refusal is answered only after the trigger has
                // taken a token: every translation counts, refused or not.
                let dst = self.pin_dest_key(req);
                // Hot path: the translation runs on the cached entry under its
                // shard's read lock (a microsecond), so no reference count of
                // the terminal's cold key or bucket is written per call.
                let r = self.with_terminal_keys(tid, |tk| {
                    let Some(pik) = &tk.pik else {
                        return Err(None);
                    };
                    // Fetch the cold bucket and PIK together, not one after the other.
                    tk.pin_slot.warm();
                    pik.cipher().warm();
                    // The security trigger counts translations per terminal.
                    if let Verdict::Throttled { first } = self.pin_guard.take_slot(&tk.pin_slot) {
                        return Err(Some(first));
                    }
                    Ok(match &dst {
                        Ok(d) => translate_with(pik, d, req),
                        Err(e) => Err(e.clone()),
                    })
                })?;
                match r {
                    Ok(out) => out,
                    Err(None) => Err(err(
                        Reason::TerminalNotSignedIn,
                        format!("terminal {tid} has not signed in: no PIK yet"),
                    )),
                    // Audited outside the lock (the first refusal commits a record).
                    Err(Some(first)) => Err(self.throttled("TranslatePin", tid, first)),
                }
            }
            PinKeySource::Key(r) => {
                let src = self.load_class(r, &[KeyClass::Pin], "for PIN blocks")?;
                // A terminal PIN key named directly is counted by its id (or block).
                if src.key_type() == KeyType::Tpk {
                    let subject = super::key_subject(&src, r);
                    if let Verdict::Throttled { first } = self.pin_guard.take(&subject) {
                        return Err(self.throttled("TranslatePin", &subject, first));
                    }
                }
                let dst = self.pin_dest_key(req)?;
                translate_with(&src, &dst, req)
            }
        }
    }

    /// The destination ZPK, and the format policy checked before any PIN is touched.
    fn pin_dest_key(&self, req: &TranslatePin) -> Result<CachedKey, HsmError> {
        let dst = self.load_class(&req.dest, &[KeyClass::Pin], "for PIN blocks")?;
        if dst.key_type() != KeyType::Zpk {
            return Err(err(
                Reason::KeyUsageMismatch,
                format!(
                    "PINs are translated to a ZPK; {} is a {}",
                    req.dest,
                    dst.key_type()
                ),
            ));
        }
        if req.dest_format == PinBlockFormat::Iso1
            && req.source_format != PinBlockFormat::Iso1
            && !self.config().allow_translate_to_iso1
        {
            return Err(err(
                Reason::FormatTranslationRefused,
                format!(
                    "translation from {:?} to ISO 1 would drop the PAN binding (ISO 9564-1; Clulow's attack) and is disabled",
                    req.source_format
                ),
            ));
        }
        Ok(dst)
    }
}

/// Decrypts under `src`, re-encrypts under `dst`; the clear PIN stays here.
fn translate_with(
    src: &CachedKey,
    dst: &CachedKey,
    req: &TranslatePin,
) -> Result<TranslatedPin, HsmError> {
    let pan = if req.source_format.needs_pan() || req.dest_format.needs_pan() {
        Some(Pan::parse(&req.pan)?)
    } else {
        None
    };
    let hide = |e| match HsmError::from(e) {
        // One message for every decode failure: which check failed (control
        // field, length, digit, fill, padding) would sharpen the PIN-block
        // oracle of Berkman & Ostrovsky's attacks.
        e if e.reason == Reason::InvalidPinBlock => err(
            Reason::InvalidPinBlock,
            "invalid PIN block: it does not decode under the source key with this PAN and format",
        ),
        e => e,
    };
    // ISO 0 to ISO 0 (the POS-to-network case): the same checks, and the
    // deciphered block enciphered as it is (see `pinblock::translate_iso0`).
    if let (PinBlockFormat::Iso0, PinBlockFormat::Iso0, Some(pan)) =
        (req.source_format, req.dest_format, &pan)
    {
        if src.cipher().block_len() == dst.cipher().block_len() {
            let (pin_block, pin_len) =
                pinblock::translate_iso0(src.cipher(), dst.cipher(), &req.pin_block, pan)
                    .map_err(hide)?;
            return Ok(TranslatedPin {
                pin_block,
                dest_kcv: dst.meta().kcv.clone(),
                pin_len,
            });
        }
    }
    let pin = pinblock::decipher(
        req.source_format,
        src.cipher(),
        &req.pin_block,
        pan.as_ref(),
    )
    .map_err(hide)?;
    let out = pinblock::encipher(req.dest_format, dst.cipher(), &pin, pan.as_ref())?;
    Ok(TranslatedPin {
        pin_block: out,
        dest_kcv: dst.meta().kcv.clone(),
        pin_len: pin.len(),
    })
}
