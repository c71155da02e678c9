//! The core: one method per operation of API.md, typed inputs, and
//! `Result<_, HsmError>` with stable reason codes. It knows no transport:
//! gRPC, the CLI, the mock and the payShield port are adapters over it.
//! It must never return, log or put in an error a clear key or a clear PIN.

mod data;
mod error;
pub mod guard;
mod keyadmin;
mod lmkadmin;
mod mac;
mod pin;
pub mod selftest;
mod terminal;

pub use data::{DataKeySource, DataMode, MAX_DATA};
pub use error::{err, Category, HsmError, Reason};
pub use keyadmin::{
    ExportFormat, ExportKey, ExportedKey, GenerateKey, ImportComponents, ImportKey, Wrapped,
};
pub use lmkadmin::{
    next_path as lmk_next_path, reconcile_retired, recover_lmk_file, LmkChange, LmkFileSink,
    LmkRecovery, LmkState, TranslatedBlock,
};
pub use mac::{MacAlgorithm, MacKeySource, MacRequest};
pub use pin::{PinKeySource, TranslatePin, TranslatedPin};
pub use terminal::{
    CreateTerminal, Field62Layout, SignIn, SignInResult, SignInSource, TmkChange, WorkingKeyOut,
};

use crate::crypto::Algorithm;
use crate::keys::cache::CachedKey;
use crate::keys::{self, KeyCache, KeyMeta, KeyType, Lmk, LmkSet, LoadedKey};
use crate::store::{
    audit::AuditDraft, Batch, KeyRecord, Store, TerminalRecord, RECORD_FORMAT, STATE_ACTIVE,
    STATE_RETIRED,
};
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

/// Key information as stored and as returned by the admin API.
pub type KeyInfo = KeyRecord;
/// Terminal information as stored and as returned by the admin API.
pub type TerminalInfo = TerminalRecord;

/// How a caller names a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRef {
    Id(String),
    Alias(String),
    /// An LMK key block held by the caller (stateless mode).
    Block(String),
}

impl std::fmt::Display for KeyRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyRef::Id(id) => write!(f, "key {id}"),
            KeyRef::Alias(a) => write!(f, "alias {a:?}"),
            KeyRef::Block(b) => write!(f, "key block {}…", b.get(..16).unwrap_or(b)),
        }
    }
}

/// Policy knobs of the core (`[hsm]` in the daemon's config file).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HsmConfig {
    /// Single-DES keys and the UNIONPAY_001 layout (legacy terminals only).
    pub allow_single_des: bool,
    /// Translation *to* ISO 1 from a PAN-bound format (drops the PAN binding).
    pub allow_translate_to_iso1: bool,
    /// How long the previous MAK keeps verifying after a sign-in.
    pub mac_grace_secs: u64,
    /// Largest message accepted for MAC generation/verification.
    pub max_mac_message: usize,
    /// Unwrapped keys kept in locked memory (about 2 KiB each; also bounds the
    /// per-terminal cache, split over its 16 shards, at least one entry each).
    /// Size it to the working set: terminals × 2 keys.
    pub key_cache_capacity: usize,
    /// Per-terminal limit on PIN translations (the 安全触发 security trigger).
    pub pin_guard: guard::Limit,
    /// Per-terminal limit on MAC verification failures.
    pub mac_failure_guard: guard::Limit,
}

impl Default for HsmConfig {
    fn default() -> Self {
        HsmConfig {
            allow_single_des: false,
            allow_translate_to_iso1: false,
            mac_grace_secs: 300,
            max_mac_message: 64 * 1024,
            key_cache_capacity: 65_536,
            pin_guard: guard::Limit::default(),
            mac_failure_guard: guard::Limit::default(),
        }
    }
}

/// Module status (GetStatus).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub state: &'static str,
    pub reason: String,
    pub lmk_kcv: String,
    pub lmk: LmkState,
    pub version: &'static str,
    pub keys: u64,
    pub terminals: u64,
}

/// A terminal's working keys, resolved once and kept for the hot path.
/// `repr(C)`: the four handles the hot paths read come first, so in a
/// [`TerminalEntry`] they share the id's cache line.
#[derive(Clone)]
#[repr(C)]
pub(crate) struct TerminalKeys {
    pub pik: Option<CachedKey>,
    /// The terminal's security-trigger buckets (PIN translations, MAC
    /// failures): the guards' own, shared, so a new entry after a sign-in or
    /// an eviction continues the same count.
    pub pin_slot: Arc<guard::Slot>,
    pub mak: Option<CachedKey>,
    pub mac_slot: Arc<guard::Slot>,
    /// The previous MAK and the time its successor was issued.
    pub prev_mak: Option<(CachedKey, i64)>,
}

/// The security trigger's subject for a terminal key named directly
/// (stateless mode): its key id if it has one, otherwise its block.
pub(crate) fn key_subject<'a>(key: &CachedKey, r: &'a KeyRef) -> std::borrow::Cow<'a, str> {
    match (&key.meta().key_id, r) {
        (Some(id), _) => std::borrow::Cow::Owned(id.clone()),
        (None, KeyRef::Block(b)) => std::borrow::Cow::Borrowed(b.as_str()),
        (None, other) => std::borrow::Cow::Owned(other.to_string()),
    }
}

impl TerminalKeys {
    /// The previous MAK while its grace period (`grace` seconds after its
    /// successor was issued) lasts at `now`.
    pub(crate) fn prev_mak_within(&self, now: i64, grace: i64) -> Option<&CachedKey> {
        self.prev_mak
            .as_ref()
            .filter(|(_, since)| now - since <= grace)
            .map(|(k, _)| k)
    }
}

/// The HSM core. Cheap to share behind an `Arc`.
pub struct Hsm {
    /// Current (and, in a migration window, previous) LMK. Swapped whole by
    /// RotateLmk / RetirePreviousLmk; readers clone the `Arc`.
    lmks: RwLock<Arc<LmkSet>>,
    /// Where the sealed LMK set lives (none for in-memory modules and tests).
    lmk_file: Option<LmkFileSink>,
    /// Every store commit holds this shared; an LMK change holds it exclusive,
    /// so no commit straddles a change of LMK.
    commit_gate: RwLock<()>,
    /// Serialises LMK rotations and retirements.
    lmk_admin: Mutex<()>,
    store: Arc<Store>,
    cache: KeyCache,
    /// Cached terminal entries, sharded by terminal id so that calls on
    /// different cores rarely take the same lock.
    /// Entries are held inline (no `Arc` hop): the hot path reads them under
    /// the shard's read lock.
    terminals: Vec<RwLock<TerminalShard>>,
    terminal_shard_hash: crate::hash::FastState,
    config: HsmConfig,
    alarm: RwLock<Option<String>>,
    /// Set (never cleared) with `alarm`: the hot path reads this flag instead
    /// of taking the lock, so calls on two cores do not trade its cache line.
    alarmed: std::sync::atomic::AtomicBool,
    /// alias → key id, so the hot path does not read the store per call.
    aliases: RwLock<AliasCache>,
    pub(crate) pin_guard: guard::Guard,
    pub(crate) mac_guard: guard::Guard,
    /// Audit drafts of security-trigger refusals, not yet written: the refusal
    /// is answered on the caller's thread, which must not wait for the store
    /// (an I/O thread serves many connections). See [`Hsm::write_deferred_audit`].
    deferred_audit: Mutex<DeferredAudit>,
    /// Sequence number of the last queued draft (mirrors `DeferredAudit::queued`).
    audit_queued: std::sync::atomic::AtomicU64,
    /// Drafts up to this sequence number are committed and flushed.
    audit_durable: std::sync::atomic::AtomicU64,
    /// One writer of deferred drafts at a time: a caller that waits here waits
    /// for the other writer's fsync, which may cover its own draft.
    audit_writer: Mutex<()>,
}

#[derive(Default)]
struct DeferredAudit {
    drafts: Vec<AuditDraft>,
    queued: u64,
}

/// alias → key id. `epoch` counts binding changes (see [`Hsm::forget_key`]).
#[derive(Default)]
struct AliasCache {
    ids: HashMap<String, String, crate::hash::FastState>,
    epoch: u64,
}

impl std::fmt::Debug for Hsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hsm")
            .field("lmk", &self.lmks().current)
            .finish_non_exhaustive()
    }
}

pub(crate) fn validate_name(what: &str, s: &str, reason: Reason) -> Result<(), HsmError> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(err(
            reason,
            format!("{what} must be 1–64 characters of A–Z, a–z, 0–9, '-', '_' or '.'"),
        ))
    }
}

/// A new key id (25 characters): `k`, the Unix time in milliseconds (11 hex
/// digits), then 52 random bits (13 hex digits). Ids minted together sort
/// together, so the keys tree grows at its right edge (sled's hot pages)
/// instead of touching a random leaf per key, and a day's working keys,
/// deleted together at the next sign-in, sit together too. Two ids can only
/// meet if minted in the same millisecond (or the same millisecond again after
/// a clock step) with the same 52 random bits: at a 12,000-ids/s sign-in peak
/// that is ~10⁻¹⁴ per millisecond — far less than `k` + 64 random bits (the
/// old ids, which still parse), where every new id races every stored one.
pub(crate) fn new_key_id() -> String {
    let mut b = [0u8; 8];
    crate::crypto::random_bytes(&mut b);
    let random = u64::from_be_bytes(b) & ((1 << 52) - 1);
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
        .min((1 << 44) - 1) as u64;
    format!("k{ms:011x}{random:013x}")
}

impl Hsm {
    /// Builds the core and runs the power-on self-tests. A failed self-test
    /// does not fail construction: the module comes up in ALARM and refuses
    /// crypto with `MODULE_ALARM`, so an operator can see why.
    pub fn new(lmk: Lmk, store: Store, config: HsmConfig) -> Hsm {
        Hsm::with_lmks(LmkSet::single(lmk), None, store, config)
    }

    /// Builds the core over an LMK set and, for a daemon, the sealed file that
    /// LMK rotations rewrite.
    pub fn with_lmks(
        lmks: LmkSet,
        lmk_file: Option<LmkFileSink>,
        store: Store,
        config: HsmConfig,
    ) -> Hsm {
        let hsm = Hsm {
            cache: KeyCache::new(config.key_cache_capacity),
            aliases: RwLock::new(AliasCache::default()),
            pin_guard: guard::Guard::new(config.pin_guard),
            mac_guard: guard::Guard::new(config.mac_failure_guard),
            deferred_audit: Mutex::new(DeferredAudit::default()),
            audit_queued: std::sync::atomic::AtomicU64::new(0),
            audit_durable: std::sync::atomic::AtomicU64::new(0),
            audit_writer: Mutex::new(()),
            terminals: (0..16)
                .map(|_| RwLock::new(TerminalShard::default()))
                .collect(),
            terminal_shard_hash: crate::hash::FastState::default(),
            lmks: RwLock::new(Arc::new(lmks)),
            lmk_file,
            commit_gate: RwLock::new(()),
            lmk_admin: Mutex::new(()),
            store: Arc::new(store),
            config,
            alarm: RwLock::new(None),
            alarmed: std::sync::atomic::AtomicBool::new(false),
        };
        if let Err(reason) = selftest::run(&hsm) {
            tracing::error!(%reason, "self-test failed: module in ALARM");
            hsm.raise_alarm(reason);
        }
        hsm
    }

    pub fn config(&self) -> &HsmConfig {
        &self.config
    }

    /// The LMKs in force now (a snapshot: a rotation swaps the whole set).
    pub fn lmks(&self) -> Arc<LmkSet> {
        self.lmks.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Hex of the first `n` bytes of the current LMK's KCV.
    pub fn lmk_kcv(&self, n: usize) -> String {
        self.lmks().current.kcv_hex(n)
    }

    /// Store flushes performed so far (group commit), for metrics.
    pub fn store_fsyncs(&self) -> u64 {
        self.store.fsyncs()
    }

    /// Store transactions performed (each commits a group of operations).
    pub fn store_commit_groups(&self) -> u64 {
        self.store.commit_groups()
    }

    pub(crate) fn cache_ref(&self) -> &KeyCache {
        &self.cache
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// Puts the module in ALARM with `reason` (shown by GetStatus).
    pub fn raise_alarm(&self, reason: impl Into<String>) {
        let mut a = self.alarm.write().unwrap_or_else(|p| p.into_inner());
        if a.is_none() {
            *a = Some(reason.into());
        }
        self.alarmed
            .store(true, std::sync::atomic::Ordering::Release);
    }

    pub fn alarm(&self) -> Option<String> {
        self.alarm.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn check_ready(&self) -> Result<(), HsmError> {
        if !self.alarmed.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(());
        }
        match &*self.alarm.read().unwrap_or_else(|p| p.into_inner()) {
            None => Ok(()),
            Some(r) => Err(err(Reason::ModuleAlarm, format!("module is in ALARM: {r}"))),
        }
    }

    pub fn status(&self) -> Status {
        let (keys, terminals) = self.store.counts();
        let alarm = self.alarm();
        Status {
            state: if alarm.is_some() { "ALARM" } else { "OK" },
            reason: alarm.unwrap_or_default(),
            lmk_kcv: self.lmk_kcv(3),
            lmk: self.lmk_state(),
            version: env!("CARGO_PKG_VERSION"),
            keys,
            terminals,
        }
    }

    /// Flushes the store: called before answering any call that wrote.
    pub fn flush(&self) -> Result<(), HsmError> {
        self.store.flush().map_err(|e| {
            self.raise_alarm(format!("store flush failed: {e}"));
            HsmError::from(e)
        })
    }

    /// Async flush for the server: waiters hold no thread (group commit).
    pub async fn flush_async(&self) -> Result<(), HsmError> {
        self.store.flush_async().await.map_err(|e| {
            self.raise_alarm(format!("store flush failed: {e}"));
            HsmError::from(e)
        })
    }

    /// Commits a batch; a storage failure (not a logical conflict) raises the alarm.
    /// Key records whose block was wrapped before an LMK rotation (a call that
    /// raced it) are re-wrapped under the current LMK first, so the store never
    /// holds blocks of two LMKs. Returns the key records as committed: a
    /// caller that hands a block out takes it from here.
    pub(crate) fn commit(&self, mut batch: Batch) -> Result<Vec<KeyRecord>, HsmError> {
        // Only writes of key records conflict with a rotation's re-wrap: an
        // audit-only batch (denials, guards, failures — some written from
        // async threads) never waits for one.
        let writes_keys = !batch.put_keys.is_empty() || !batch.delete_keys.is_empty();
        let _gate = writes_keys.then(|| self.commit_gate.read().unwrap_or_else(|p| p.into_inner()));
        if !batch.put_keys.is_empty() {
            let set = self.lmks();
            for rec in &mut batch.put_keys {
                let kp = keys::block_lmk_identity(&rec.key_block)?;
                if kp.as_deref() != Some(set.current.kp_block()) {
                    let (k, _) = keys::unwrap_from_set(&set, &rec.key_block)?;
                    rec.key_block = keys::wrap_under_lmk(&set.current, &k)?;
                }
            }
        }
        let committed = batch.put_keys.clone();
        match self.store.commit(batch) {
            Ok(_) => Ok(committed),
            Err(e @ crate::store::StoreError::Io(_)) => {
                self.raise_alarm(format!("store write failed: {e}"));
                Err(e.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Appends audit events on their own (failures, denials).
    pub fn audit(&self, drafts: Vec<AuditDraft>) -> Result<(), HsmError> {
        self.commit(Batch {
            audit: drafts,
            ..Default::default()
        })?;
        self.flush()
    }

    /// True while a security-trigger refusal's audit record is not yet on
    /// disk. Two atomic loads: the ports check it after every guarded call.
    pub fn has_deferred_audit(&self) -> bool {
        use std::sync::atomic::Ordering::Acquire;
        self.audit_durable.load(Acquire) < self.audit_queued.load(Acquire)
    }

    /// Commits and flushes the audit records of every security-trigger refusal
    /// queued so far; returns once they are on disk (written by this call or
    /// by another writer's fsync). It blocks on the store: the gRPC and
    /// payShield ports call it from the blocking pool before a refusal leaves.
    /// Audit reads and the server's shutdown call it too. Drafts whose commit
    /// fails go back to the queue.
    pub fn write_deferred_audit(&self) -> Result<(), HsmError> {
        use std::sync::atomic::Ordering::{Acquire, Release};
        let want = self.audit_queued.load(Acquire);
        if self.audit_durable.load(Acquire) >= want {
            return Ok(());
        }
        let _writer = self.audit_writer.lock().unwrap_or_else(|p| p.into_inner());
        if self.audit_durable.load(Acquire) >= want {
            return Ok(());
        }
        let (drafts, upto) = {
            let mut q = self
                .deferred_audit
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            (std::mem::take(&mut q.drafts), q.queued)
        };
        if !drafts.is_empty() {
            let batch = Batch {
                audit: drafts.clone(),
                ..Default::default()
            };
            if let Err(e) = self.commit(batch) {
                let mut q = self
                    .deferred_audit
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                let newer = std::mem::replace(&mut q.drafts, drafts);
                q.drafts.extend(newer);
                return Err(e);
            }
        }
        self.flush()?;
        self.audit_durable.fetch_max(upto, Release);
        Ok(())
    }

    /// Audit events from `since` on, at most `limit`.
    pub fn audit_log(
        &self,
        since: u64,
        limit: usize,
    ) -> Result<Vec<crate::store::audit::AuditRecord>, HsmError> {
        self.write_deferred_audit()?;
        Ok(self.store.audit_since(since, limit)?)
    }

    /// Re-verifies the whole audit chain; a break raises the alarm.
    pub fn verify_audit_log(&self) -> Result<u64, HsmError> {
        self.write_deferred_audit()?;
        self.store.verify_audit_chain().map_err(|e| {
            self.raise_alarm(format!("audit chain: {e}"));
            HsmError::from(e)
        })
    }

    /// Refuses with TERMINAL_THROTTLED; audits the first refusal of an episode.
    pub(crate) fn throttled(&self, op: &str, subject: &str, first: bool) -> HsmError {
        let what = if op == "TranslatePin" {
            "PIN translations"
        } else {
            "MAC verification failures"
        };
        if first {
            tracing::warn!(subject, op, "security trigger: terminal throttled");
            let mut q = self
                .deferred_audit
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            q.drafts.push(AuditDraft {
                actor: "guard".into(),
                operation: op.into(),
                key_id: String::new(),
                outcome: "TERMINAL_THROTTLED".into(),
                detail: format!("subject={}", subject.get(..48).unwrap_or(subject)),
            });
            q.queued += 1;
            self.audit_queued
                .store(q.queued, std::sync::atomic::Ordering::Release);
        }
        err(
            Reason::TerminalThrottled,
            format!(
                "too many {what} for {}: the security trigger is holding it back",
                subject.get(..48).unwrap_or(subject)
            ),
        )
    }

    /// Resolves a key reference to a usable key (through the cache).
    pub(crate) fn load(&self, r: &KeyRef) -> Result<CachedKey, HsmError> {
        match r {
            KeyRef::Id(id) => self.load_by_id(id),
            KeyRef::Alias(alias) => {
                let (cached, epoch) = {
                    let a = self.aliases.read().unwrap_or_else(|p| p.into_inner());
                    match a.ids.get(alias.as_str()) {
                        // Hot path: the bound key is in the key cache; no id copy.
                        Some(id) => match self.cache.get(id) {
                            Some(k) => return Ok(k),
                            None => (Some(id.clone()), a.epoch),
                        },
                        None => (None, a.epoch),
                    }
                };
                if let Some(id) = cached {
                    return self.load_by_id(&id);
                }
                let id = self.store.key_id_for_alias(alias)?.ok_or_else(|| {
                    err(Reason::UnknownKey, format!("no key has alias {alias:?}"))
                })?;
                {
                    // Kept only if no binding changed since the read above: a
                    // rotation that moved the alias meanwhile bumped the epoch.
                    let mut a = self.aliases.write().unwrap_or_else(|p| p.into_inner());
                    if a.epoch == epoch {
                        if a.ids.len() >= self.config.key_cache_capacity {
                            a.ids.clear();
                        }
                        a.ids.insert(alias.clone(), id.clone());
                    }
                }
                self.load_by_id(&id)
            }
            KeyRef::Block(block) => {
                if let Some(k) = self.cache.get(block) {
                    return Ok(k);
                }
                if block.len() > 4096 {
                    return Err(err(
                        Reason::InvalidKeyBlock,
                        "key block is longer than 4096 characters",
                    ));
                }
                let (k, _) = keys::unwrap_from_set(&self.lmks(), block)?;
                if let Some(id) = &k.meta().key_id {
                    if let Some(rec) = self.store.get_key(id)? {
                        if rec.state == STATE_RETIRED {
                            return Err(err(Reason::KeyRetired, format!("key {id} is retired")));
                        }
                    }
                }
                let cached = self.cache.insert(block.clone(), k);
                // A retirement of the previous LMK may have cleared the cache
                // between the unwrap above and this insert: look again with
                // the set in force now (retirement swaps the set, then clears).
                let kp = keys::block_lmk_identity(block)?.unwrap_or_default();
                let set = self.lmks();
                match set.generation(&kp) {
                    keys::Generation::Current | keys::Generation::Previous => Ok(cached),
                    keys::Generation::Retired(kcv) => {
                        self.cache.remove(block);
                        Err(keys::KeyError::LmkRetired { kcv }.into())
                    }
                    keys::Generation::Unknown => {
                        self.cache.remove(block);
                        Err(err(
                            Reason::WrongLmk,
                            "key block is not under an LMK of this module",
                        ))
                    }
                }
            }
        }
    }

    fn load_by_id(&self, id: &str) -> Result<CachedKey, HsmError> {
        if let Some(k) = self.cache.get(id) {
            return Ok(k);
        }
        // The record may have been read just before a rotation or a
        // retirement swapped the set (a block under the previous LMK is
        // still good then); a block that does not unwrap is read once more
        // before it counts as damage.
        let mut attempt = 0;
        let k = loop {
            let rec = self
                .store
                .get_key(id)?
                .ok_or_else(|| err(Reason::UnknownKey, format!("no key with id {id:?}")))?;
            if rec.state == STATE_RETIRED {
                return Err(err(Reason::KeyRetired, format!("key {id} is retired")));
            }
            match keys::unwrap_from_set(&self.lmks(), &rec.key_block) {
                Ok((k, _)) => break k,
                Err(_) if attempt == 0 => attempt += 1,
                Err(e) => {
                    self.raise_alarm(format!("stored key {id} does not unwrap: {e}"));
                    return Err(HsmError::from(e));
                }
            }
        };
        if k.meta().key_id.as_deref() != Some(id) {
            self.raise_alarm(format!("stored key {id} carries another key's block"));
            return Err(err(
                Reason::InvalidKeyBlock,
                format!("stored key {id} carries another key's block"),
            ));
        }
        Ok(self.cache.insert(id.to_string(), k))
    }

    /// Loads a key and checks that it is of one of the `allowed` classes.
    pub(crate) fn load_class(
        &self,
        r: &KeyRef,
        allowed: &[keys::KeyClass],
        purpose: &str,
    ) -> Result<CachedKey, HsmError> {
        let k = self.load(r)?;
        if !allowed.contains(&k.key_type().class()) {
            return Err(err(
                Reason::KeyUsageMismatch,
                format!("{r} is a {} and cannot be used {purpose}", k.key_type()),
            ));
        }
        Ok(k)
    }

    /// Creates a stored key: wraps it under the LMK with its id and builds the record.
    pub(crate) fn new_record(
        &self,
        key_type: KeyType,
        algorithm: Algorithm,
        clear: &[u8],
        exportable: bool,
        alias: &str,
        version: u32,
    ) -> Result<(KeyRecord, LoadedKey), HsmError> {
        let key_id = new_key_id();
        let loaded = LoadedKey::new(
            KeyMeta {
                key_type,
                algorithm,
                exportable,
                key_id: Some(key_id.clone()),
                kcv: String::new(),
            },
            clear,
        )?;
        let key_block = keys::wrap_under_lmk(&self.lmks().current, &loaded)?;
        let rec = KeyRecord {
            v: RECORD_FORMAT,
            key_id,
            alias: alias.to_string(),
            key_type: key_type.name().to_string(),
            algorithm: keys::types::algorithm_name(algorithm).to_string(),
            kcv: loaded.meta().kcv.clone(),
            state: STATE_ACTIVE.to_string(),
            version,
            exportable,
            key_block,
            created_unix: crate::now_unix(),
            retired_unix: 0,
        };
        Ok((rec, loaded))
    }

    pub(crate) fn check_algorithm_allowed(
        &self,
        key_type: KeyType,
        alg: Algorithm,
    ) -> Result<(), HsmError> {
        if alg == Algorithm::Des && !self.config.allow_single_des {
            return Err(err(
                Reason::SingleDesDisabled,
                "single-DES keys are disabled: set allow_single_des = true in the config for legacy terminals",
            ));
        }
        if !key_type.allows(alg) {
            return Err(err(
                Reason::UnsupportedAlgorithm,
                format!(
                    "a {key_type} cannot be {}",
                    keys::types::algorithm_name(alg)
                ),
            ));
        }
        Ok(())
    }

    fn terminal_shard(&self, tid: &TidKey) -> &RwLock<TerminalShard> {
        let n = self.terminals.len() as u64;
        // Its own seed: the shard's set picks buckets from another hash of
        // the same id, so the ids of one shard do not share low bits there.
        let h = std::hash::BuildHasher::hash_one(&self.terminal_shard_hash, tid);
        &self.terminals[(h % n) as usize]
    }

    /// `f` applied to the terminal's cached entry, if there is one. `f` runs
    /// under the shard's read lock: it must not touch the terminal cache.
    pub(crate) fn terminal_cache_with<R>(
        &self,
        terminal_id: &str,
        f: impl FnOnce(&TerminalKeys) -> R,
    ) -> Option<R> {
        let tid = TidKey::new(terminal_id)?;
        self.terminal_shard(&tid)
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .get(&tid)
            .map(|e| f(&e.keys))
    }

    /// A cache entry for `terminal_id` with its keys and the guards' buckets.
    pub(crate) fn terminal_entry(
        &self,
        terminal_id: &str,
        pik: Option<CachedKey>,
        mak: Option<CachedKey>,
        prev_mak: Option<(CachedKey, i64)>,
    ) -> TerminalKeys {
        TerminalKeys {
            pik,
            mak,
            prev_mak,
            pin_slot: self.pin_guard.slot(terminal_id),
            mac_slot: self.mac_guard.slot(terminal_id),
        }
    }

    /// The generation of the terminal's shard: read it before reading the
    /// store on a cache miss, and hand it to [`Hsm::terminal_cache_fill`].
    pub(crate) fn terminal_cache_generation(&self, terminal_id: &str) -> u64 {
        // An id that cannot be cached (see `TidKey::new`) is never filled in.
        let Some(tid) = TidKey::new(terminal_id) else {
            return 0;
        };
        self.terminal_shard(&tid)
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .generation
    }

    /// Caches keys read from the store on a miss, unless the shard changed
    /// since `generation` was read (a sign-in, a key retirement or rotation,
    /// an LMK retirement): the keys read may then be the older ones.
    pub(crate) fn terminal_cache_fill(
        &self,
        terminal_id: &str,
        keys: TerminalKeys,
        generation: u64,
    ) {
        self.terminal_cache_insert(terminal_id, keys, Some(generation));
    }

    /// Caches the keys a sign-in just committed (they win over any miss in flight).
    pub(crate) fn terminal_cache_put(&self, terminal_id: &str, keys: TerminalKeys) {
        self.terminal_cache_insert(terminal_id, keys, None);
    }

    fn terminal_cache_insert(&self, terminal_id: &str, keys: TerminalKeys, seen: Option<u64>) {
        let Some(tid) = TidKey::new(terminal_id) else {
            // Not a valid terminal id (they are checked at creation): not cached.
            return;
        };
        let per_shard = self
            .config
            .key_cache_capacity
            .div_ceil(self.terminals.len())
            .max(1);
        let mut t = self
            .terminal_shard(&tid)
            .write()
            .unwrap_or_else(|p| p.into_inner());
        match seen {
            Some(g) if g != t.generation => return,
            Some(_) => {}
            None => t.generation += 1,
        }
        // Bounded like the key cache: a terminal's keys are re-read from the store on a miss.
        if t.map.len() >= per_shard && !t.map.contains(&tid) {
            if let Some(victim) = t.map.iter().next().map(|e| e.tid) {
                t.map.remove(&victim);
            }
        }
        t.map.replace(TerminalEntry { tid, keys });
    }

    /// Whether the terminal has an entry in the terminal cache (tests).
    #[doc(hidden)]
    pub fn terminal_cached(&self, terminal_id: &str) -> bool {
        self.terminal_cache_with(terminal_id, |_| ()).is_some()
    }

    /// Drops every cached terminal entry (their keys are re-read on the next call).
    pub(crate) fn terminal_cache_clear(&self) {
        for shard in &self.terminals {
            let mut t = shard.write().unwrap_or_else(|p| p.into_inner());
            t.generation += 1;
            t.map.clear();
        }
    }

    /// Drops `alias` from the alias cache (its binding changed).
    pub(crate) fn forget_alias(&self, alias: &str) {
        if alias.is_empty() {
            return;
        }
        let mut a = self.aliases.write().unwrap_or_else(|p| p.into_inner());
        a.epoch += 1;
        a.ids.remove(alias);
    }

    pub(crate) fn forget_key(&self, key_id: &str) {
        self.cache.invalidate_key_id(key_id);
        // Aliases of the key were unbound or moved: drop them from the alias
        // cache, and keep out any read of the store that began before.
        {
            let mut a = self.aliases.write().unwrap_or_else(|p| p.into_inner());
            a.epoch += 1;
            a.ids.retain(|_, id| id != key_id);
        }
        // Terminals holding the key (the previous MAK included) re-resolve on
        // their next call; a miss reading the store meanwhile does not cache.
        let is = |k: &CachedKey| k.meta().key_id.as_deref() == Some(key_id);
        for shard in &self.terminals {
            let mut t = shard.write().unwrap_or_else(|p| p.into_inner());
            t.generation += 1;
            t.map.retain(|TerminalEntry { keys: tk, .. }| {
                !(tk.pik.as_ref().is_some_and(is)
                    || tk.mak.as_ref().is_some_and(is)
                    || tk.prev_mak.as_ref().is_some_and(|(k, _)| is(k)))
            });
        }
    }
}

/// One shard of the terminal cache.
#[derive(Default)]
pub(crate) struct TerminalShard {
    map: HashSet<TerminalEntry, crate::hash::FastState>,
    /// Bumped by every change that makes keys read from the store before it
    /// stale (see [`Hsm::terminal_cache_fill`]).
    generation: u64,
}

/// A terminal's cache entry, laid out for the hot path: the id a lookup
/// compares and the four handles TranslatePin and VerifyMac read fill one
/// 64-byte line, and every entry starts on a line. A cold terminal costs that
/// one line (an `(id, keys)` pair of 88 bytes straddled two or three).
#[repr(C, align(64))]
pub(crate) struct TerminalEntry {
    tid: TidKey,
    keys: TerminalKeys,
}

const _: () = assert!(std::mem::offset_of!(TerminalEntry, keys) == 32);
const _: () = assert!(std::mem::offset_of!(TerminalKeys, prev_mak) == 32);

impl PartialEq for TerminalEntry {
    fn eq(&self, other: &Self) -> bool {
        self.tid == other.tid
    }
}

impl Eq for TerminalEntry {}

impl std::hash::Hash for TerminalEntry {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.tid.hash(h)
    }
}

impl std::borrow::Borrow<TidKey> for TerminalEntry {
    fn borrow(&self) -> &TidKey {
        &self.tid
    }
}

/// A terminal id held inline (ids are 1–32 characters, never NUL, so the
/// zero padding marks the end): a lookup compares 32 bytes where the entry
/// is, no pointer to follow and no UTF-8 to check.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct TidKey([u8; 32]);

impl TidKey {
    /// None for ids that cannot be terminal ids (empty, longer than 32 bytes,
    /// or holding NUL): they are never cached.
    fn new(id: &str) -> Option<TidKey> {
        if id.is_empty() || id.bytes().any(|b| b == 0) {
            return None;
        }
        let mut bytes = [0u8; 32];
        bytes.get_mut(..id.len())?.copy_from_slice(id.as_bytes());
        Some(TidKey(bytes))
    }
}

/// Parses a terminal id: 1–32 characters of A–Z, a–z, 0–9, '-', '_'.
/// (ISO 8583 field 41 is 8 characters; some acquirers prefix a merchant code.)
pub fn parse_terminal_id(s: &str) -> Result<String, HsmError> {
    let ok = !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(s.to_string())
    } else {
        Err(err(
            Reason::InvalidTerminalId,
            "terminal id must be 1–32 characters of A–Z, a–z, 0–9, '-' or '_'",
        ))
    }
}

#[cfg(test)]
mod id_tests {
    #[test]
    fn key_ids_are_unique_keep_their_format_and_sort_by_minting_time() {
        let ids: Vec<String> = (0..20_000).map(|_| super::new_key_id()).collect();
        let unique: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
        for id in &ids {
            // the CLI tells ids from aliases by this shape
            assert!(
                id.len() == 25
                    && id.starts_with('k')
                    && id[1..]
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{id}"
            );
        }
        // The time part is the Unix time in milliseconds, in minting order.
        let ms = |id: &str| u64::from_str_radix(&id[1..12], 16).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(ids.windows(2).all(|w| ms(&w[0]) <= ms(&w[1])));
        assert!(ms(ids.last().unwrap()) <= now && ms(&ids[0]) + 60_000 > now);
    }
}

#[cfg(test)]
mod terminal_cache_tests {
    use super::{Hsm, HsmConfig, TidKey};
    use std::collections::HashMap;

    #[test]
    fn a_miss_that_read_the_store_before_a_change_does_not_cache() {
        let hsm = Hsm::new(
            crate::keys::Lmk::generate(),
            crate::store::Store::temporary().unwrap(),
            HsmConfig::default(),
        );
        let keys = || hsm.terminal_entry("T1", None, None, None);
        // A miss reads the generation, then the store; a retirement lands in between.
        let seen = hsm.terminal_cache_generation("T1");
        hsm.forget_key("k-retired");
        hsm.terminal_cache_fill("T1", keys(), seen);
        assert!(!hsm.terminal_cached("T1"), "stale keys were cached");
        // The same with a sign-in landing in between: it bumps the generation.
        let seen = hsm.terminal_cache_generation("T1");
        hsm.terminal_cache_put("T1", keys());
        assert_ne!(hsm.terminal_cache_generation("T1"), seen);
        // Nothing in between: cached.
        let seen = hsm.terminal_cache_generation("T2");
        hsm.terminal_cache_fill("T2", keys(), seen);
        assert!(hsm.terminal_cached("T2"));
    }

    #[test]
    fn an_inline_id_is_found_by_its_own_bytes_and_only_by_them() {
        let mut m = HashMap::new();
        for id in ["T1", "MOCK0001", "A-32-character-terminal-id_xyz01"] {
            m.insert(TidKey::new(id).unwrap(), id.len());
        }
        let get = |id: &str| TidKey::new(id).and_then(|k| m.get(&k).copied());
        assert_eq!(get("MOCK0001"), Some(8));
        assert_eq!(get("A-32-character-terminal-id_xyz01"), Some(32));
        assert_eq!(get("T1"), Some(2));
        assert_eq!(get("T"), None);
        assert_eq!(get("T10"), None);
        assert!(
            TidKey::new("T1\0").is_none(),
            "NUL is the padding, never part of an id"
        );
        assert!(TidKey::new("").is_none());
        assert!(TidKey::new(&"X".repeat(33)).is_none());
    }
}

#[cfg(test)]
mod deferred_audit_tests {
    use super::{Hsm, HsmConfig};
    use crate::keys::Lmk;
    use crate::store::Store;
    use std::sync::Arc;

    /// Refusals on many threads at once, each followed by the port's write:
    /// when a thread's write returns, its own record is in the store, even
    /// if another thread's writer took its draft.
    #[test]
    fn each_refusals_record_is_stored_when_its_write_returns() {
        let hsm = Arc::new(Hsm::new(
            Lmk::generate(),
            Store::temporary().unwrap(),
            HsmConfig::default(),
        ));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let hsm = hsm.clone();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        let subject = format!("T{t}R{i}");
                        let e = hsm.throttled("TranslatePin", &subject, true);
                        assert_eq!(e.reason, super::Reason::TerminalThrottled);
                        hsm.write_deferred_audit().unwrap();
                        let stored = hsm.store.audit_since(0, 100_000).unwrap();
                        let want = format!("subject={subject}");
                        assert!(
                            stored.iter().any(|r| r.detail == want),
                            "{subject}'s record is not in the store after its write returned"
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(!hsm.has_deferred_audit());
        let stored = hsm.store.audit_since(0, 100_000).unwrap();
        let throttles = stored
            .iter()
            .filter(|r| r.outcome == "TERMINAL_THROTTLED")
            .count();
        assert_eq!(throttles, 200, "every record once");
    }
}
