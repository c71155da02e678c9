//! LMK lifecycle, as on a payShield: load a new LMK, translate every key to
//! it, retire the old one.
//!
//! - [`Hsm::rotate_lmk`] generates a new LMK, seals the new set (new current,
//!   old as previous) beside the sealed file as `lmk.sealed.next`, re-wraps
//!   every stored key into a new generation of the keys tree, flips the
//!   store's pointer to it (the commit point), and renames the new set over
//!   `lmk.sealed`. The store is the truth about which step was reached: at
//!   start, [`recover_lmk_file`] finishes a rotation whose keys generation was
//!   committed and abandons one whose was not.
//! - Between rotation and [`Hsm::retire_previous_lmk`], key blocks under the
//!   previous LMK (held by callers) still work, and [`Hsm::translate_key_block`]
//!   re-wraps them under the current one. After retirement they are refused
//!   with `LMK_RETIRED`.
//! - Every step is audited.

use super::{err, Hsm, HsmError, Reason};
use crate::keys::lmk::{self, KdfParams, RetiredLmk};
use crate::keys::{self, Generation, KeyType, Lmk, LmkFile, LmkSet};
use crate::store::{audit::AuditDraft, Store, StoreError, STATE_RETIRED};
use secrecy::{ExposeSecret, SecretString};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The sealed LMK set file a daemon's module rewrites when the LMK changes.
#[derive(Clone, Debug)]
pub struct LmkFileSink {
    /// `DIR/lmk.sealed`.
    pub path: PathBuf,
    /// Argon2id parameters for new seals (those of the file in use).
    pub kdf: KdfParams,
    /// A `--dev` daemon: a rotation without passphrases seals under the dev ones.
    pub dev: bool,
}

/// `DIR/lmk.sealed.next`: the new set while a rotation is under way.
pub fn next_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".next");
    path.with_file_name(name)
}

/// The LMK part of GetStatus.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LmkState {
    /// Hex of the first 8 bytes of the current LMK's KCV.
    pub current_kcv: String,
    /// The previous LMK's KCV while its migration window is open, else empty.
    pub previous_kcv: String,
    /// When the window opened (the rotation), 0 when none is open.
    pub window_opened_unix: i64,
    /// KCVs of retired LMKs, oldest first.
    pub retired_kcvs: Vec<String>,
}

/// The outcome of RotateLmk / RetirePreviousLmk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LmkChange {
    pub state: LmkState,
    /// Stored keys re-wrapped (rotation), 0 for a retirement.
    pub keys_rewrapped: u64,
}

/// A caller's key block, under the current LMK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TranslatedBlock {
    pub key_block: String,
    pub kcv: String,
    pub key_type: KeyType,
    /// False when the block was already under the current LMK (returned as is).
    pub translated: bool,
    /// The LMK the returned block is under (16 hex digits).
    pub lmk_kcv: String,
}

/// What start-up found of an interrupted rotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LmkRecovery {
    /// No rotation was under way.
    Clean,
    /// The keys had been re-wrapped: the new set was made current.
    Completed { current_kcv: String },
    /// The keys had not been re-wrapped: the new set was discarded.
    RolledBack { abandoned_kcv: String },
}

/// Crash-simulation points for the kill -9 tests (debug builds only).
fn failpoint(_name: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("POSHSM_FAILPOINT").as_deref() == Ok(_name) {
        eprintln!("poshsm: failpoint {_name}: aborting the process (crash simulation)");
        std::process::abort();
    }
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> HsmError {
    err(
        Reason::StoreError,
        format!("{what} {}: {e}", path.display()),
    )
}

fn draft(actor: &str, op: &str, outcome: &str, detail: String) -> AuditDraft {
    AuditDraft {
        actor: actor.to_string(),
        operation: op.to_string(),
        key_id: String::new(),
        outcome: outcome.to_string(),
        detail,
    }
}

/// How a rotation failed: before its commit point (nothing is live, clean
/// up) or at it (the outcome is on disk or not: leave it to the restart).
enum RotationError {
    BeforeCommit(HsmError),
    AtCommit(HsmError),
}

fn refused(e: &HsmError) -> String {
    let m = &e.message;
    format!("refused: {}", m.get(..200).unwrap_or(m))
}

/// Smallest passphrase a custodian may give a new LMK.
const MIN_PASSPHRASE_CHARS: usize = 12;

impl Hsm {
    /// The LMK part of GetStatus.
    pub fn lmk_state(&self) -> LmkState {
        let s = self.lmks();
        LmkState {
            current_kcv: s.current.kcv_hex(8),
            previous_kcv: s
                .previous
                .as_ref()
                .map(|p| p.kcv_hex(8))
                .unwrap_or_default(),
            window_opened_unix: if s.previous.is_some() {
                s.previous_since_unix
            } else {
                0
            },
            retired_kcvs: s.retired.iter().map(|r| r.kcv.clone()).collect(),
        }
    }

    fn rotation_passphrases(
        &self,
        given: Vec<SecretString>,
    ) -> Result<Vec<SecretString>, HsmError> {
        if given.is_empty() {
            return match &self.lmk_file {
                Some(f) if !f.dev => Err(err(
                    Reason::InvalidArgument,
                    "RotateLmk needs the custodians' passphrases for the new LMK (at least 2)",
                )),
                // A dev daemon, or a module with no sealed file: the public dev phrases.
                _ => Ok(lmk::dev_passphrases()),
            };
        }
        if given.len() < 2 {
            return Err(err(
                Reason::InvalidArgument,
                format!(
                    "the new LMK needs at least 2 custodians' passphrases, got {}",
                    given.len()
                ),
            ));
        }
        if given.len() > 16 {
            return Err(err(
                Reason::InvalidArgument,
                format!("at most 16 custodians, got {}", given.len()),
            ));
        }
        for (i, p) in given.iter().enumerate() {
            let text = p.expose_secret();
            // What cannot be typed at the start prompt or written one per line
            // in POSHSM_LMK_PASSPHRASES would lock the module out for good.
            if text.chars().any(char::is_control) || text.len() > 1024 {
                return Err(err(
                    Reason::InvalidArgument,
                    format!(
                        "custodian {}'s passphrase has a control character (newline, tab, NUL…) or is longer than 1024 bytes: it could not be entered at the next start",
                        i + 1
                    ),
                ));
            }
            if text.chars().count() < MIN_PASSPHRASE_CHARS {
                return Err(err(
                    Reason::InvalidArgument,
                    format!(
                        "custodian {}'s passphrase is shorter than {MIN_PASSPHRASE_CHARS} characters",
                        i + 1
                    ),
                ));
            }
        }
        Ok(given)
    }

    /// RotateLmk: a new LMK; every stored key re-wrapped under it in one
    /// durable step; the old LMK kept as *previous* for the migration window.
    /// Terminals, aliases, key ids and KCVs do not change.
    ///
    /// `adopt`: instead of generating an LMK, take the set another node of the
    /// cluster produced by its rotation (its `lmk.sealed`, unsealed with the
    /// same passphrases), so every node moves to the same new LMK.
    pub fn rotate_lmk(
        &self,
        actor: &str,
        passphrases: Vec<SecretString>,
        adopt: Option<&str>,
    ) -> Result<LmkChange, HsmError> {
        self.check_ready()?;
        let _admin = self.lmk_admin.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.lmks();
        let (new, sealed) = match self.prepare_rotation(&old, passphrases, adopt) {
            Ok(p) => p,
            Err(e) => {
                // Refusals are audited too (an adopt that does not unseal is a passphrase guess).
                let _ = self.audit(vec![draft(actor, "RotateLmk", e.code(), refused(&e))]);
                return Err(e);
            }
        };
        let (from, to) = (old.current.kcv_hex(8), new.current.kcv_hex(8));
        let how = if adopt.is_some() { " adopted" } else { "" };
        self.audit(vec![draft(
            actor,
            "RotateLmk",
            "STARTED",
            format!("from={from} to={to}{how}"),
        )])?;
        let gate = self.commit_gate.write().unwrap_or_else(|p| p.into_inner());
        match self.rotate_locked(&old.current, &new, sealed.as_ref()) {
            Ok((n, rename_problem)) => {
                // The set first, then the keys tree: a reader that sees a new
                // block has already the LMK set that opens it.
                *self.lmks.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
                if let Err(e) = self.store.use_key_generation(&to) {
                    self.raise_alarm(format!(
                        "LMK rotation to {to} committed, but the new keys tree does not open: {e}"
                    ));
                }
                drop(gate);
                if let Some(problem) = rename_problem {
                    // The keys are under the new LMK; a restart finishes the file.
                    self.raise_alarm(format!(
                        "LMK rotation to {to} committed, but the sealed file was not replaced ({problem}); restart to finish it"
                    ));
                }
                tracing::info!(from = %from, to = %to, keys = n, "LMK rotated");
                // The rotation took effect: a failure to audit it now is logged
                // (and has put the module in ALARM), not reported as a failed rotation.
                if let Err(e) = self.audit(vec![draft(
                    actor,
                    "RotateLmk",
                    "OK",
                    format!("from={from} to={to} keys_rewrapped={n}"),
                )]) {
                    tracing::error!(error = %e, "LMK rotated but its audit event was not written");
                }
                Ok(LmkChange {
                    state: self.lmk_state(),
                    keys_rewrapped: n,
                })
            }
            Err(RotationError::BeforeCommit(e)) => {
                // Nothing is live yet: drop the half-written keys generation
                // and the new set file.
                let _ = self.store.drop_old_key_generations();
                drop(gate);
                if let Some(f) = &self.lmk_file {
                    let next = next_path(&f.path);
                    if std::fs::remove_file(&next).is_ok() {
                        let _ = lmk::sync_dir(&next);
                    }
                }
                let _ = self.audit(vec![draft(
                    actor,
                    "RotateLmk",
                    e.code(),
                    format!("from={from} to={to} abandoned"),
                )]);
                Err(e)
            }
            Err(RotationError::AtCommit(e)) => {
                // The pointer write may or may not be on disk: touch nothing;
                // the module is in ALARM and the restart decides from the store.
                drop(gate);
                Err(err(
                    e.reason,
                    format!("{}; the rotation's outcome is decided at the next start (restart the daemon)", e.message),
                ))
            }
        }
    }

    /// Everything a rotation needs before it changes anything: the new set
    /// (generated, or adopted from another node) and its sealed file.
    fn prepare_rotation(
        &self,
        old: &LmkSet,
        passphrases: Vec<SecretString>,
        adopt: Option<&str>,
    ) -> Result<(LmkSet, Option<LmkFile>), HsmError> {
        if let Some(p) = &old.previous {
            return Err(err(
                Reason::PreviousLmkActive,
                format!(
                    "the previous LMK {} is still in its migration window: retire it first (`poshsm admin lmk retire-previous`)",
                    p.kcv_hex(8)
                ),
            ));
        }
        let passphrases = self.rotation_passphrases(passphrases)?;
        // Sealing (Argon2id, twice) is the slow part; it changes nothing yet.
        match adopt {
            None => {
                let new = LmkSet {
                    current: Lmk::generate(),
                    previous: Some(old.current.duplicate()),
                    previous_since_unix: crate::now_unix(),
                    retired: old.retired.clone(),
                };
                let sealed = match &self.lmk_file {
                    Some(f) => Some(new.seal(&passphrases, f.kdf)?),
                    None => None,
                };
                Ok((new, sealed))
            }
            Some(json) => {
                let bad = |m: String| err(Reason::InvalidArgument, m);
                let file = LmkFile::from_json(json)
                    .map_err(|e| bad(format!("the LMK set to adopt: {e}")))?;
                let set = file
                    .unseal(&passphrases)
                    .map_err(|e| bad(format!("cannot unseal the LMK set to adopt: {e}")))?;
                let ours = old.current.kcv_hex(8);
                match &set.previous {
                    Some(p) if p.kcv_hex(8) == ours => Ok((set, Some(file))),
                    other => Err(bad(format!(
                        "the LMK set to adopt was not rotated from this module's LMK {ours} (its previous LMK is {})",
                        other.as_ref().map(|p| p.kcv_hex(8)).unwrap_or_else(|| "none".into())
                    ))),
                }
            }
        }
    }

    /// The part of a rotation that runs with every commit held off. Returns
    /// the keys re-wrapped and, if only the final rename failed, why.
    fn rotate_locked(
        &self,
        old: &Lmk,
        new: &LmkSet,
        sealed: Option<&LmkFile>,
    ) -> Result<(u64, Option<String>), RotationError> {
        use RotationError::BeforeCommit;
        let generation = new.current.kcv_hex(8);
        // 1. The new set beside the current file: nothing depends on it yet.
        if let (Some(f), Some(file)) = (&self.lmk_file, sealed) {
            let next = next_path(&f.path);
            lmk::write_file_atomic(&next, &file.to_json())
                .map_err(|e| BeforeCommit(io_err("write", &next, e)))?;
        }
        failpoint("lmk-rotate-after-next-file");
        // 2. Every stored key under the new LMK, in a new generation of the
        //    keys tree beside the live one (streamed: memory stays flat).
        let n = self
            .store
            .write_key_generation(&generation, |mut rec| {
                let corrupt = |problem: String| StoreError::Corrupt {
                    tree: "keys",
                    problem: format!("key {}: {problem}", rec.key_id),
                };
                let k = keys::unwrap_from_lmk(old, &rec.key_block)
                    .map_err(|e| corrupt(e.to_string()))?;
                rec.key_block =
                    keys::wrap_under_lmk(&new.current, &k).map_err(|e| corrupt(e.to_string()))?;
                Ok(rec)
            })
            .map_err(|e| {
                if matches!(e, StoreError::Io(_)) {
                    self.raise_alarm(format!("store write failed during LMK rotation: {e}"));
                }
                BeforeCommit(HsmError::from(e))
            })?;
        failpoint("lmk-rotate-after-keys");
        // 3. The commit point: the new generation becomes the live one on disk.
        self.store.commit_key_generation(&generation).map_err(|e| {
            self.raise_alarm(format!(
                "store write failed at the commit point of an LMK rotation: {e}; restart to finish or abandon it"
            ));
            RotationError::AtCommit(HsmError::from(e))
        })?;
        failpoint("lmk-rotate-after-switch");
        // 4. The new set becomes the sealed file. The rotation is decided (the
        //    store says so); a failure here is finished at restart.
        let mut problem = None;
        if let Some(f) = &self.lmk_file {
            let next = next_path(&f.path);
            if let Err(e) = std::fs::rename(&next, &f.path).and_then(|_| lmk::sync_dir(&f.path)) {
                problem = Some(format!("rename {}: {e}", next.display()));
            }
        }
        failpoint("lmk-rotate-after-rename");
        Ok((n, problem))
    }

    /// RetirePreviousLmk: closes the migration window. Blocks under the
    /// previous LMK are refused with `LMK_RETIRED` from now on.
    pub fn retire_previous_lmk(&self, actor: &str) -> Result<LmkChange, HsmError> {
        self.check_ready()?;
        let _admin = self.lmk_admin.lock().unwrap_or_else(|p| p.into_inner());
        let (prev_kcv, cur_kcv) = match self.retire_locked() {
            Ok(kcvs) => kcvs,
            Err(e) => {
                let _ = self.audit(vec![draft(
                    actor,
                    "RetirePreviousLmk",
                    e.code(),
                    refused(&e),
                )]);
                return Err(e);
            }
        };
        // The keys tree of the previous LMK is no longer read by anyone.
        if let Err(e) = self.store.drop_old_key_generations() {
            tracing::warn!(error = %e, "could not drop the previous LMK's keys tree; the next start does");
        }
        // Blocks of the retired LMK may sit in the cache under their text.
        self.cache_ref().clear();
        self.terminal_cache_clear();
        tracing::info!(retired = %prev_kcv, current = %cur_kcv, "previous LMK retired");
        if let Err(e) = self.audit(vec![draft(
            actor,
            "RetirePreviousLmk",
            "OK",
            format!("retired={prev_kcv} current={cur_kcv}"),
        )]) {
            tracing::error!(error = %e, "previous LMK retired but its audit event was not written");
        }
        Ok(LmkChange {
            state: self.lmk_state(),
            keys_rewrapped: 0,
        })
    }

    /// The retirement proper, with every commit held off. Returns the
    /// retired and the current LMK's KCVs.
    fn retire_locked(&self) -> Result<(String, String), HsmError> {
        let old = self.lmks();
        let prev = old.previous.as_ref().ok_or_else(|| {
            err(
                Reason::NoPreviousLmk,
                "there is no previous LMK to retire: no rotation is in its migration window",
            )
        })?;
        let (prev_kcv, cur_kcv) = (prev.kcv_hex(8), old.current.kcv_hex(8));
        let _gate = self.commit_gate.write().unwrap_or_else(|p| p.into_inner());
        // Commits re-wrap stale blocks, so none can be left; check anyway.
        let mut stale = 0u64;
        self.store.for_each_key(|rec| {
            if keys::block_lmk_identity(&rec.key_block)
                .ok()
                .flatten()
                .as_deref()
                != Some(old.current.kp_block())
            {
                stale += 1;
            }
            Ok(())
        })?;
        if stale > 0 {
            return Err(err(
                Reason::Internal,
                format!("{stale} stored keys are not under the current LMK {cur_kcv}: the previous LMK is not retired"),
            ));
        }
        let mut retired = old.retired.clone();
        retired.push(RetiredLmk {
            kcv: prev_kcv.clone(),
            retired_unix: crate::now_unix(),
        });
        // 1. The store records the retirement first (durable): a copy of an
        //    older lmk.sealed put back later cannot bring the LMK back.
        record_retired(&self.store, &retired)?;
        // 2. The sealed file loses the previous LMK.
        if let Some(f) = &self.lmk_file {
            rewrite_without_previous(&f.path, &old.current, &retired)?;
        }
        *self.lmks.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(LmkSet {
            current: old.current.duplicate(),
            previous: None,
            previous_since_unix: 0,
            retired,
        });
        Ok((prev_kcv, cur_kcv))
    }

    /// TranslateKeyBlock: a caller's block under the previous LMK, re-wrapped
    /// under the current one (same key, KCV and attributes). A block already
    /// under the current LMK comes back unchanged, so a migration can be re-run.
    pub fn translate_key_block(
        &self,
        actor: &str,
        block: &str,
    ) -> Result<TranslatedBlock, HsmError> {
        self.check_ready()?;
        if block.len() > 4096 {
            return Err(err(
                Reason::InvalidKeyBlock,
                "key block is longer than 4096 characters",
            ));
        }
        let set = self.lmks();
        let (k, generation) = keys::unwrap_from_set(&set, block)?;
        let key_id = k.meta().key_id.clone().unwrap_or_default();
        if !key_id.is_empty() {
            if let Some(rec) = self.store.get_key(&key_id)? {
                if rec.state == STATE_RETIRED {
                    return Err(err(Reason::KeyRetired, format!("key {key_id} is retired")));
                }
            }
        }
        let (key_block, translated) = match generation {
            Generation::Current => (block.to_string(), false),
            _ => (keys::wrap_under_lmk(&set.current, &k)?, true),
        };
        let out = TranslatedBlock {
            key_block,
            kcv: k.meta().kcv.clone(),
            key_type: k.key_type(),
            translated,
            lmk_kcv: set.current.kcv_hex(8),
        };
        if translated {
            self.audit(vec![AuditDraft {
                actor: actor.to_string(),
                operation: "TranslateKeyBlock".into(),
                key_id,
                outcome: "OK".into(),
                detail: format!(
                    "type={} kcv={} to_lmk={}",
                    out.key_type,
                    out.kcv,
                    set.current.kcv_hex(8)
                ),
            }])?;
        }
        Ok(out)
    }

    /// Audits what start-up found: an interrupted rotation finished or
    /// abandoned, a retirement finished again (`re_retired`). Audited even in
    /// ALARM (an audit-only write), so the record exists whatever the self-test said.
    pub fn audit_lmk_recovery(
        &self,
        r: &LmkRecovery,
        re_retired: Option<&str>,
    ) -> Result<(), HsmError> {
        let mut drafts = Vec::new();
        match r {
            LmkRecovery::Clean => {}
            LmkRecovery::Completed { current_kcv } => drafts.push(draft(
                "startup",
                "RotateLmk",
                "COMPLETED_AT_START",
                format!("to={current_kcv}"),
            )),
            LmkRecovery::RolledBack { abandoned_kcv } => drafts.push(draft(
                "startup",
                "RotateLmk",
                "ROLLED_BACK_AT_START",
                format!("abandoned={abandoned_kcv}"),
            )),
        }
        if let Some(kcv) = re_retired {
            drafts.push(draft(
                "startup",
                "RetirePreviousLmk",
                "COMPLETED_AT_START",
                format!("retired={kcv} (lmk.sealed still held it)"),
            ));
        }
        if drafts.is_empty() {
            return Ok(());
        }
        self.audit(drafts)
    }
}

/// Store meta entry: the KCVs of every LMK retired on this module (JSON list).
const META_RETIRED: &str = "lmk.retired";

fn record_retired(store: &Store, retired: &[RetiredLmk]) -> Result<(), HsmError> {
    let kcvs: Vec<&str> = retired.iter().map(|r| r.kcv.as_str()).collect();
    // invariant: a list of strings always serializes
    let json = serde_json::to_vec(&kcvs).unwrap_or_default();
    store.put_meta(META_RETIRED, &json)?;
    Ok(store.flush()?)
}

/// The LMKs the store says were retired (16-hex KCVs).
fn stored_retired(store: &Store) -> Result<Vec<String>, String> {
    match store.get_meta(META_RETIRED).map_err(|e| e.to_string())? {
        None => Ok(Vec::new()),
        Some(v) => serde_json::from_slice(&v)
            .map_err(|e| format!("store meta {META_RETIRED} does not parse: {e}")),
    }
}

/// Rewrites `lmk.sealed` without its previous LMK and with `retired`, bound
/// under `current` (whose sealed entry is kept as it is: no passphrases).
fn rewrite_without_previous(
    path: &Path,
    current: &Lmk,
    retired: &[RetiredLmk],
) -> Result<(), HsmError> {
    let text = std::fs::read_to_string(path).map_err(|e| io_err("read", path, e))?;
    let mut file = LmkFile::from_json(&text)?;
    if !file.kcv().eq_ignore_ascii_case(&current.kcv_hex(8)) {
        return Err(err(
            Reason::Internal,
            format!(
                "{} holds LMK {}, not the current {}: not retiring (restart the daemon to finish an interrupted rotation)",
                path.display(),
                file.kcv(),
                current.kcv_hex(8)
            ),
        ));
    }
    file.previous = None;
    file.previous_since_unix = 0;
    file.retired = retired.to_vec();
    file.bind(current)?;
    lmk::write_file_atomic(path, &file.to_json()).map_err(|e| io_err("write", path, e))
}

/// At start, after unsealing: the store's record of retired LMKs wins over
/// the sealed file. A file whose previous LMK the store lists as retired (a
/// crash between the two writes of a retirement, or an older copy of the
/// file put back) has the retirement finished again. Returns the KCV whose
/// retirement was finished, if any.
pub fn reconcile_retired(
    path: &Path,
    set: &mut LmkSet,
    store: &Store,
) -> Result<Option<String>, String> {
    let stored = stored_retired(store)?;
    for kcv in &stored {
        if !set.retired.iter().any(|r| r.kcv.eq_ignore_ascii_case(kcv)) {
            set.retired.push(RetiredLmk {
                kcv: kcv.clone(),
                retired_unix: 0,
            });
        }
    }
    let prev_kcv = match &set.previous {
        Some(p) if stored.iter().any(|k| k.eq_ignore_ascii_case(&p.kcv_hex(8))) => p.kcv_hex(8),
        _ => return Ok(None),
    };
    set.previous = None;
    set.previous_since_unix = 0;
    rewrite_without_previous(path, &set.current, &set.retired).map_err(|e| e.message)?;
    tracing::warn!(lmk = %prev_kcv, "lmk.sealed still held an LMK the store lists as retired: retired it again");
    Ok(Some(prev_kcv))
}

/// Finishes or abandons a rotation a crash interrupted, before the LMK is
/// unsealed. The store decides: if its pointer to the live keys generation
/// names the new LMK's generation (the commit point was passed) the new set
/// replaces `lmk.sealed`, otherwise the new set is discarded; the blocks of
/// the live generation must all be under that LMK. Call it after `Store::open`, which has
/// already dropped any generation that never went live.
pub fn recover_lmk_file(path: &Path, store: &Store) -> Result<LmkRecovery, String> {
    let next = next_path(path);
    if !next.exists() {
        return Ok(LmkRecovery::Clean);
    }
    let read = |p: &Path| -> Result<LmkFile, String> {
        let text = std::fs::read_to_string(p).map_err(|e| format!("read {}: {e}", p.display()))?;
        LmkFile::from_json(&text).map_err(|e| format!("{}: {e}", p.display()))
    };
    let (cur, new) = (read(path)?, read(&next)?);
    let (cur_kp, new_kp) = (lmk::kp_for_kcv(cur.kcv()), lmk::kp_for_kcv(new.kcv()));
    let (mut under_cur, mut under_new, mut other) = (0u64, 0u64, 0u64);
    store
        .for_each_key(|rec| {
            match keys::block_lmk_identity(&rec.key_block).ok().flatten() {
                Some(kp) if kp == new_kp => under_new += 1,
                Some(kp) if kp == cur_kp => under_cur += 1,
                _ => other += 1,
            }
            Ok(())
        })
        .map_err(|e| format!("reading the store to recover an LMK rotation: {e}"))?;
    // The pointer to the live keys generation is the commit point; the
    // blocks must agree with it.
    let live = store
        .live_key_generation()
        .map_err(|e| format!("reading the store to recover an LMK rotation: {e}"))?;
    let committed = live.eq_ignore_ascii_case(&format!("keys@{}", new.kcv()));
    let agrees = other == 0
        && if committed {
            under_cur == 0
        } else {
            under_new == 0
        };
    if !agrees {
        return Err(format!(
            "an LMK rotation was interrupted and the store (live keys tree {live:?}) holds {under_cur} keys under LMK {}, {under_new} under LMK {} and {other} under neither: restore a backup (OPERATIONS.md)",
            cur.kcv(),
            new.kcv()
        ));
    }
    if committed {
        std::fs::rename(&next, path)
            .and_then(|_| lmk::sync_dir(path))
            .map_err(|e| format!("rename {} to {}: {e}", next.display(), path.display()))?;
        tracing::warn!(lmk = %new.kcv(), "an interrupted LMK rotation was completed at start");
        Ok(LmkRecovery::Completed {
            current_kcv: new.kcv().to_string(),
        })
    } else {
        std::fs::remove_file(&next)
            .and_then(|_| lmk::sync_dir(&next))
            .map_err(|e| format!("remove {}: {e}", next.display()))?;
        tracing::warn!(abandoned = %new.kcv(), "an interrupted LMK rotation was rolled back at start");
        Ok(LmkRecovery::RolledBack {
            abandoned_kcv: new.kcv().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Algorithm;
    use crate::hsm::HsmConfig;
    use crate::store::Batch;

    fn hsm_with_file(dir: &Path, dev: bool) -> Hsm {
        let path = dir.join("lmk.sealed");
        let lmk = Lmk::generate();
        let file = LmkFile::single(
            lmk.seal(&lmk::dev_passphrases(), KdfParams::DEV)
                .expect("seal"),
        );
        lmk::write_file_atomic(&path, &file.to_json()).expect("write");
        Hsm::with_lmks(
            LmkSet::single(lmk),
            Some(LmkFileSink {
                path,
                kdf: KdfParams::DEV,
                dev,
            }),
            Store::temporary().expect("store"),
            HsmConfig::default(),
        )
    }

    #[test]
    fn a_key_wrapped_before_a_rotation_and_committed_after_it_is_stored_under_the_new_lmk() {
        let dir = tempfile::tempdir().expect("dir");
        let hsm = hsm_with_file(dir.path(), true);
        let old_kp = hsm.lmks().current.kp_block().to_string();
        // A call wraps its new key, then a rotation runs before it commits.
        let (rec, _) = hsm
            .new_record(KeyType::Zpk, Algorithm::Tdes2, &[0x3Du8; 16], false, "", 1)
            .expect("record");
        assert_eq!(
            keys::block_lmk_identity(&rec.key_block).unwrap().unwrap(),
            old_kp
        );
        hsm.rotate_lmk("test", Vec::new(), None).expect("rotate");
        let id = rec.key_id.clone();
        hsm.commit(Batch {
            put_keys: vec![rec],
            ..Default::default()
        })
        .expect("commit");
        let stored = hsm.store().get_key(&id).unwrap().unwrap();
        let new_kp = hsm.lmks().current.kp_block().to_string();
        assert_ne!(new_kp, old_kp);
        assert_eq!(
            keys::block_lmk_identity(&stored.key_block)
                .unwrap()
                .unwrap(),
            new_kp
        );
        // And the retirement check finds nothing stale.
        hsm.retire_previous_lmk("test").expect("retire");
    }

    #[test]
    fn a_production_module_needs_two_real_passphrases_to_rotate() {
        let dir = tempfile::tempdir().expect("dir");
        let hsm = hsm_with_file(dir.path(), false);
        let kcv = hsm.lmk_kcv(8);
        let pw = |list: &[&str]| -> Vec<SecretString> {
            list.iter()
                .map(|s| SecretString::from(s.to_string()))
                .collect()
        };
        for (given, needle) in [
            (pw(&[]), "needs the custodians' passphrases"),
            (pw(&["only-one-custodian"]), "at least 2"),
            (
                pw(&["long-enough-phrase", "short"]),
                "custodian 2's passphrase is shorter",
            ),
            (
                pw(&["long-enough-phrase", "two-lines\nof-phrase"]),
                "custodian 2's passphrase has a control character",
            ),
        ] {
            let e = hsm.rotate_lmk("test", given, None).expect_err("refused");
            assert_eq!(e.reason, Reason::InvalidArgument);
            assert!(e.message.contains(needle), "{}", e.message);
            assert_eq!(hsm.lmk_kcv(8), kcv, "nothing changed");
        }
        let good = pw(&["custodian-one-phrase", "custodian-two-phrase"]);
        let c = hsm.rotate_lmk("test", good, None).expect("rotate");
        assert_eq!(c.state.previous_kcv, kcv);
        // The file on disk unseals with the new passphrases, both LMKs inside.
        let file =
            LmkFile::from_json(&std::fs::read_to_string(dir.path().join("lmk.sealed")).unwrap())
                .unwrap();
        let set = file
            .unseal(&pw(&["custodian-one-phrase", "custodian-two-phrase"]))
            .expect("unseal");
        assert_eq!(set.current.kcv_hex(8), c.state.current_kcv);
        assert_eq!(set.previous.expect("previous").kcv_hex(8), kcv);
        assert!(file.unseal(&lmk::dev_passphrases()).is_err());
    }

    #[test]
    fn recovery_refuses_a_store_whose_keys_belong_to_neither_lmk() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("lmk.sealed");
        let (a, b, c) = (Lmk::generate(), Lmk::generate(), Lmk::generate());
        let seal =
            |l: &Lmk| LmkFile::single(l.seal(&lmk::dev_passphrases(), KdfParams::DEV).unwrap());
        lmk::write_file_atomic(&path, &seal(&a).to_json()).unwrap();
        lmk::write_file_atomic(&next_path(&path), &seal(&b).to_json()).unwrap();
        // A store whose only key is under a third LMK.
        let foreign = Hsm::new(c, Store::temporary().unwrap(), HsmConfig::default());
        let (rec, _) = foreign
            .new_record(KeyType::Zpk, Algorithm::Tdes2, &[0x3Du8; 16], false, "", 1)
            .unwrap();
        foreign
            .commit(Batch {
                put_keys: vec![rec],
                ..Default::default()
            })
            .unwrap();
        let e = recover_lmk_file(&path, foreign.store()).expect_err("neither");
        assert!(e.contains("1 under neither"), "{e}");
        // An empty store: the unfinished rotation is abandoned.
        let empty = Store::temporary().unwrap();
        assert_eq!(
            recover_lmk_file(&path, &empty).unwrap(),
            LmkRecovery::RolledBack {
                abandoned_kcv: b.kcv_hex(8)
            }
        );
        assert!(!next_path(&path).exists());
        assert_eq!(recover_lmk_file(&path, &empty).unwrap(), LmkRecovery::Clean);
    }
}
