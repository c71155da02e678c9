//! MAC generation and verification with a terminal's MAK or any MAC key:
//! ISO 9797-1 algorithms 1 and 3 (X9.9 / X9.19), the UnionPay POS ECB MAC and
//! CMAC. Verification compares in constant time; a wrong MAC is `false`, not
//! an error. Only MAC-class keys are accepted.

use super::guard::{Slot, Verdict};
use super::{err, Hsm, HsmError, KeyRef, Reason};
use crate::crypto::{mac, Algorithm};
use crate::keys::cache::CachedKey;
use crate::keys::{KeyClass, KeyType};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// What a MAC call works with (see `Hsm::mac_keys`).
struct MacKeys {
    key: CachedKey,
    prev: Option<CachedKey>,
    slot: Option<Arc<Slot>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MacAlgorithm {
    Iso9797Alg1,
    Iso9797Alg3,
    UnionpayEcb,
    Cmac,
}

#[derive(Clone, Debug)]
pub enum MacKeySource {
    /// The terminal's current MAK (and, for verification, the previous one
    /// during the grace window).
    Terminal(String),
    Key(KeyRef),
}

#[derive(Clone, Debug)]
pub struct MacRequest<'a> {
    pub source: MacKeySource,
    pub algorithm: MacAlgorithm,
    pub message: &'a [u8],
    /// Bytes; 0 = the algorithm's full output.
    pub mac_length: usize,
}

/// Shortest MAC accepted (ISO 9797-1 / X9.19 allow 32-bit MACs).
const MIN_MAC_LEN: usize = 4;

fn compute(key: &CachedKey, alg: MacAlgorithm, message: &[u8]) -> Result<Vec<u8>, HsmError> {
    Ok(match alg {
        MacAlgorithm::Iso9797Alg1 => {
            mac::iso9797_alg1(key.cipher(), message, mac::Padding::Method1)
        }
        MacAlgorithm::Iso9797Alg3 => {
            if !matches!(key.algorithm(), Algorithm::Tdes2 | Algorithm::Tdes3) {
                return Err(err(
                    Reason::UnsupportedAlgorithm,
                    "ISO 9797-1 algorithm 3 (X9.19) needs a double- or triple-length TDES key",
                ));
            }
            match key.retail_mac() {
                Some(r) => r.compute(message, mac::Padding::Method1).to_vec(),
                None => mac::iso9797_alg3(key.clear(), message, mac::Padding::Method1)?.to_vec(),
            }
        }
        MacAlgorithm::UnionpayEcb => mac::unionpay_ecb(key.cipher(), message),
        MacAlgorithm::Cmac => mac::cmac(key.cipher(), message),
    })
}

impl Hsm {
    /// The MAC key, the previous MAK inside its grace period, and for a
    /// terminal its MAC-failure bucket.
    fn mac_keys(&self, source: &MacKeySource) -> Result<MacKeys, HsmError> {
        match source {
            MacKeySource::Terminal(tid) => {
                let grace = self.config().mac_grace_secs as i64;
                let now = crate::now_unix();
                let (mak, prev, slot) = self.with_terminal_keys(tid, |tk| {
                    let prev = tk
                        .prev_mak
                        .as_ref()
                        .filter(|(_, since)| now - since <= grace)
                        .map(|(k, _)| k.clone());
                    (tk.mak.clone(), prev, tk.mac_slot.clone())
                })?;
                let mak = mak.ok_or_else(|| {
                    err(
                        Reason::TerminalNotSignedIn,
                        format!("terminal {tid} has not signed in: no MAK yet"),
                    )
                })?;
                Ok(MacKeys {
                    key: mak,
                    prev,
                    slot: Some(slot),
                })
            }
            MacKeySource::Key(r) => Ok(MacKeys {
                key: self.load_class(r, &[KeyClass::Mac], "for MACs")?,
                prev: None,
                slot: None,
            }),
        }
    }

    fn check_message(&self, message: &[u8]) -> Result<(), HsmError> {
        let max = self.config().max_mac_message;
        if message.len() > max {
            return Err(err(
                Reason::MessageTooLarge,
                format!(
                    "message of {} bytes exceeds the MAC limit of {max} bytes",
                    message.len()
                ),
            ));
        }
        Ok(())
    }

    pub fn generate_mac(&self, req: &MacRequest<'_>) -> Result<Vec<u8>, HsmError> {
        self.check_ready()?;
        self.check_message(req.message)?;
        let key = self.mac_keys(&req.source)?.key;
        let mut out = compute(&key, req.algorithm, req.message)?;
        let n = match req.mac_length {
            0 => out.len(),
            n if (MIN_MAC_LEN..=out.len()).contains(&n) => n,
            n => {
                return Err(err(
                    Reason::InvalidMacLength,
                    format!(
                        "mac_length {n} is outside {MIN_MAC_LEN}..={} for this algorithm and key",
                        out.len()
                    ),
                ))
            }
        };
        out.truncate(n);
        Ok(out)
    }

    /// `Ok(false)` for a wrong MAC; errors only for unusable requests.
    pub fn verify_mac(&self, req: &MacRequest<'_>, mac: &[u8]) -> Result<bool, HsmError> {
        self.check_ready()?;
        self.check_message(req.message)?;
        let MacKeys { key, prev, slot } = self.mac_keys(&req.source)?;
        // The security trigger counts MAC failures per terminal (or terminal MAC
        // key); a terminal's bucket comes with its keys.
        let guard = |subject: &str, take: bool| -> Verdict {
            match (&slot, take) {
                (Some(s), false) => self.mac_guard.check_slot(s),
                (Some(s), true) => self.mac_guard.take_slot(s),
                (None, false) => self.mac_guard.check(subject),
                (None, true) => self.mac_guard.take(subject),
            }
        };
        let subject = match &req.source {
            MacKeySource::Terminal(t) => Some(std::borrow::Cow::Borrowed(t.as_str())),
            MacKeySource::Key(r) if key.key_type() == KeyType::Tak => {
                Some(match (&key.meta().key_id, r) {
                    (Some(id), _) => std::borrow::Cow::Owned(id.clone()),
                    (None, KeyRef::Block(b)) => std::borrow::Cow::Borrowed(b.as_str()),
                    (None, other) => std::borrow::Cow::Owned(other.to_string()),
                })
            }
            MacKeySource::Key(_) => None,
        };
        if let Some(s) = &subject {
            if let Verdict::Throttled { first } = guard(s, false) {
                return Err(self.throttled("VerifyMac", s, first));
            }
        }
        let valid = self.verify_with(req, mac, &key, prev)?;
        if !valid {
            if let Some(s) = &subject {
                if let Verdict::Throttled { first } = guard(s, true) {
                    // This failure is reported; the trigger holds the next calls back.
                    if first {
                        let _ = self.throttled("VerifyMac", s, true);
                    }
                }
            }
        }
        Ok(valid)
    }

    fn verify_with(
        &self,
        req: &MacRequest<'_>,
        mac: &[u8],
        key: &CachedKey,
        prev: Option<CachedKey>,
    ) -> Result<bool, HsmError> {
        let check = |k: &CachedKey| -> Result<bool, HsmError> {
            let full = compute(k, req.algorithm, req.message)?;
            if mac.len() < MIN_MAC_LEN || mac.len() > full.len() {
                return Err(err(
                    Reason::InvalidMacLength,
                    format!("a MAC of {} bytes is outside {MIN_MAC_LEN}..={} for this algorithm and key", mac.len(), full.len()),
                ));
            }
            Ok(bool::from(full[..mac.len()].ct_eq(mac)))
        };
        if check(key)? {
            return Ok(true);
        }
        match prev {
            Some(p) => check(&p),
            None => Ok(false),
        }
    }
}
