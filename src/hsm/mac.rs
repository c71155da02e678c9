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

/// A terminal's MAC keys and bucket (see `Hsm::terminal_mac_keys`).
struct MacKeys {
    key: CachedKey,
    prev: Option<CachedKey>,
    slot: Arc<Slot>,
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
    /// A terminal's MAK, its previous MAK inside the grace period, and its
    /// MAC-failure bucket (cloned: for long messages).
    fn terminal_mac_keys(&self, tid: &str) -> Result<MacKeys, HsmError> {
        let grace = self.config().mac_grace_secs as i64;
        let now = crate::now_unix();
        let (mak, prev, slot) = self.with_terminal_keys(tid, |tk| {
            (
                tk.mak.clone(),
                tk.prev_mak_within(now, grace).cloned(),
                tk.mac_slot.clone(),
            )
        })?;
        Ok(MacKeys {
            key: mak.ok_or_else(|| not_signed_in(tid))?,
            prev,
            slot,
        })
    }

    fn mac_key(&self, source: &MacKeySource) -> Result<CachedKey, HsmError> {
        match source {
            MacKeySource::Terminal(tid) => self
                .with_terminal_keys(tid, |tk| tk.mak.clone())?
                .ok_or_else(|| not_signed_in(tid)),
            MacKeySource::Key(r) => self.load_class(r, &[KeyClass::Mac], "for MACs"),
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
        let key = self.mac_key(&req.source)?;
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
        // The security trigger counts MAC failures per terminal (or terminal MAC
        // key); a terminal's bucket comes with its keys.
        match &req.source {
            MacKeySource::Terminal(tid) if req.message.len() <= MAC_UNDER_LOCK => {
                // Hot path: verified on the cached entry under its shard's read
                // lock (a few microseconds at this size), no reference count written.
                let (grace, now) = (self.config().mac_grace_secs as i64, crate::now_unix());
                let checked = self.with_terminal_keys(tid, |tk| {
                    let mak = tk.mak.as_ref()?;
                    tk.mac_slot.warm();
                    match (req.algorithm, mak.retail_mac()) {
                        (MacAlgorithm::Iso9797Alg3, Some(r)) => r.warm(),
                        _ => mak.cipher().warm(),
                    }
                    let prev = tk.prev_mak_within(now, grace);
                    Some(self.check_mac(req, mac, mak, prev, |take| {
                        self.mac_guard.decide(&tk.mac_slot, take)
                    }))
                })?;
                let checked = checked.ok_or_else(|| not_signed_in(tid))?;
                self.settle(checked, tid)
            }
            MacKeySource::Terminal(tid) => {
                let MacKeys { key, prev, slot } = self.terminal_mac_keys(tid)?;
                let checked = self.check_mac(req, mac, &key, prev.as_ref(), |take| {
                    self.mac_guard.decide(&slot, take)
                });
                self.settle(checked, tid)
            }
            MacKeySource::Key(r) => {
                let key = self.load_class(r, &[KeyClass::Mac], "for MACs")?;
                if key.key_type() != KeyType::Tak {
                    // Zone MAC keys are not a terminal's: no trigger.
                    return verify_with(req, mac, &key, None);
                }
                let subject = super::key_subject(&key, r);
                let checked = self.check_mac(req, mac, &key, None, |take| {
                    if take {
                        self.mac_guard.take(&subject)
                    } else {
                        self.mac_guard.check(&subject)
                    }
                });
                self.settle(checked, &subject)
            }
        }
    }

    /// One verification against a trigger (`guard(false)` checks, `guard(true)`
    /// counts a failure). Writes no audit record: the caller may hold a lock.
    fn check_mac(
        &self,
        req: &MacRequest<'_>,
        mac: &[u8],
        key: &CachedKey,
        prev: Option<&CachedKey>,
        guard: impl Fn(bool) -> Verdict,
    ) -> Checked {
        if let Verdict::Throttled { first } = guard(false) {
            return Checked::Refused { first };
        }
        match verify_with(req, mac, key, prev) {
            Ok(false) => match guard(true) {
                Verdict::Throttled { first: true } => Checked::FailedAndThrottled,
                _ => Checked::Done(Ok(false)),
            },
            other => Checked::Done(other),
        }
    }

    /// The answer for a [`Checked`], with the trigger's audit record if one is due.
    fn settle(&self, checked: Checked, subject: &str) -> Result<bool, HsmError> {
        match checked {
            Checked::Done(r) => r,
            Checked::Refused { first } => Err(self.throttled("VerifyMac", subject, first)),
            Checked::FailedAndThrottled => {
                // This failure is reported; the trigger holds the next calls back.
                let _ = self.throttled("VerifyMac", subject, true);
                Ok(false)
            }
        }
    }
}

/// Messages up to this size are verified under the terminal cache's read
/// lock; longer ones on cloned keys, so no shard waits on a long MAC.
const MAC_UNDER_LOCK: usize = 1024;

/// How a verification against the security trigger came out.
enum Checked {
    Done(Result<bool, HsmError>),
    /// Refused before checking; `first` of a throttling episode.
    Refused {
        first: bool,
    },
    /// A wrong MAC that started a throttling episode.
    FailedAndThrottled,
}

fn not_signed_in(tid: &str) -> HsmError {
    err(
        Reason::TerminalNotSignedIn,
        format!("terminal {tid} has not signed in: no MAK yet"),
    )
}

fn verify_with(
    req: &MacRequest<'_>,
    mac: &[u8],
    key: &CachedKey,
    prev: Option<&CachedKey>,
) -> Result<bool, HsmError> {
    let check = |k: &CachedKey| -> Result<bool, HsmError> {
        let full = compute(k, req.algorithm, req.message)?;
        if mac.len() < MIN_MAC_LEN || mac.len() > full.len() {
            return Err(err(
                Reason::InvalidMacLength,
                format!(
                    "a MAC of {} bytes is outside {MIN_MAC_LEN}..={} for this algorithm and key",
                    mac.len(),
                    full.len()
                ),
            ));
        }
        Ok(bool::from(full[..mac.len()].ct_eq(mac)))
    };
    if check(key)? {
        return Ok(true);
    }
    match prev {
        Some(p) => check(p),
        None => Ok(false),
    }
}
