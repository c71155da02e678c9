//! Storage: sled trees `keys`, `aliases`, `terminals`, `audit`, `meta` under
//! `--data-dir` (DESIGN.md §4). Records are versioned JSON. Every multi-record
//! change, with its audit events, is one sled transaction; callers flush
//! before they answer. The store sees LMK key blocks only, never a clear key.
//!
//! The keys live in one *generation* of the keys tree: `keys` at first, then
//! `keys@<LMK KCV>` after each LMK rotation. A rotation writes the next
//! generation beside the live one and then flips one pointer (in sled's
//! default tree, which snapshots do not copy): the flip is the commit point,
//! so a crash leaves the old generation or the new one, whole.

pub mod audit;
pub mod snapshot;

use audit::{AuditDraft, AuditRecord, ChainVerifier};
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use std::path::Path;
use std::sync::{Mutex, RwLock};

/// Key in sled's default tree naming the live generation of the keys tree.
const KEYS_POINTER: &[u8] = b"poshsm.keys_tree";
/// The first generation's tree name.
const KEYS_FIRST: &str = "keys";

fn is_keys_generation(name: &[u8]) -> bool {
    name == KEYS_FIRST.as_bytes() || name.starts_with(b"keys@")
}

/// Format version of key and terminal records.
pub const RECORD_FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("storage error: {0}")]
    Io(String),
    #[error("corrupt record in tree {tree}: {problem}")]
    Corrupt { tree: &'static str, problem: String },
    #[error("alias {0:?} is already in use")]
    AliasExists(String),
    #[error("terminal {0:?} already exists")]
    TerminalExists(String),
    #[error("terminal {0:?} changed while this operation ran; retry")]
    Conflict(String),
    #[error("alias {0:?} was moved by another operation while this one ran; retry")]
    AliasMoved(String),
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Io(e.to_string())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub v: u32,
    pub key_id: String,
    #[serde(default)]
    pub alias: String,
    pub key_type: String,
    pub algorithm: String,
    pub kcv: String,
    pub state: String,
    pub version: u32,
    pub exportable: bool,
    pub key_block: String,
    pub created_unix: i64,
    #[serde(default)]
    pub retired_unix: i64,
}

pub const STATE_ACTIVE: &str = "ACTIVE";
pub const STATE_RETIRED: &str = "RETIRED";

/// One sign-in's working keys (ids into the `keys` tree).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkingSet {
    pub pik: String,
    pub mak: String,
    #[serde(default)]
    pub tdk: String,
    pub issued_unix: i64,
    pub key_version: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalRecord {
    pub v: u32,
    pub terminal_id: String,
    #[serde(default)]
    pub merchant_id: String,
    pub tmk_key_id: String,
    pub tmk_kcv: String,
    pub key_version: u32,
    pub last_sign_in_unix: i64,
    pub created_unix: i64,
    pub current: Option<WorkingSet>,
    pub previous: Option<WorkingSet>,
    /// A TMK sent to the terminal under its current TMK, not yet confirmed.
    #[serde(default)]
    pub pending_tmk_key_id: String,
}

/// All the writes of one operation, applied atomically with its audit events.
#[derive(Default, Debug)]
pub struct Batch {
    pub put_keys: Vec<KeyRecord>,
    pub delete_keys: Vec<String>,
    /// Aliases to bind: (alias, key id). Fails with AliasExists if bound to another key.
    pub bind_aliases: Vec<(String, String)>,
    /// Aliases to unbind: (alias, key id it must still name), else AliasMoved.
    pub unbind_aliases: Vec<(String, String)>,
    /// Terminals to insert; fails with TerminalExists if present.
    pub create_terminals: Vec<TerminalRecord>,
    /// Terminals to update: (record, expected key_version before) for optimistic concurrency.
    pub update_terminals: Vec<(TerminalRecord, u32)>,
    pub audit: Vec<AuditDraft>,
}

/// `next_seq` of an audit head whose last event did not decode.
const POISONED: u64 = u64::MAX;

/// The chain's head as the audit tree holds it now.
fn audit_head(audit: &sled::Tree) -> Result<AuditHead, StoreError> {
    Ok(match audit.last()? {
        // A corrupt last event must not stop the store from opening: the
        // self-test's chain verification then puts the module in ALARM, and
        // the poisoned head refuses any further append.
        Some((k, v)) => match decode::<AuditRecord>("audit", &k, &v) {
            Ok(rec) => AuditHead {
                next_seq: rec.seq + 1,
                last_hash: rec.hash,
            },
            Err(_) => AuditHead {
                next_seq: POISONED,
                last_hash: [0u8; 32],
            },
        },
        None => AuditHead {
            next_seq: 1,
            last_hash: [0u8; 32],
        },
    })
}

struct AuditHead {
    next_seq: u64,
    last_hash: [u8; 32],
}

/// The sled store. Open it once per process.
pub struct Store {
    db: sled::Db,
    /// The live generation of the keys tree (swapped by an LMK rotation).
    keys: RwLock<sled::Tree>,
    aliases: sled::Tree,
    terminals: sled::Tree,
    audit: sled::Tree,
    meta: sled::Tree,
    head: Mutex<AuditHead>,
    group: GroupCommit,
    commits: CommitQueue,
}

/// Batches waiting for [`Store::commit`]'s group leader, and their outcomes.
#[derive(Default)]
struct CommitQueue {
    state: Mutex<CommitState>,
    done: std::sync::Condvar,
}

#[derive(Default)]
struct CommitState {
    next_ticket: u64,
    pending: std::collections::VecDeque<(u64, Batch)>,
    results: std::collections::HashMap<u64, Result<Vec<AuditRecord>, StoreError>>,
    leading: bool,
    /// Transactions performed (for benchmarks and tests).
    groups: u64,
}

/// Group commit: concurrent callers of [`Store::flush`] share one fsync. A
/// caller returns only after a flush that *started after* its call began has
/// finished, so everything it wrote before calling is on disk.
struct GroupCommit {
    state: Mutex<GroupState>,
    done: std::sync::Condvar,
    /// Async waiters: the highest ticket made durable so far.
    flushed_tx: tokio::sync::watch::Sender<u64>,
}

impl Default for GroupCommit {
    fn default() -> Self {
        GroupCommit {
            state: Mutex::default(),
            done: std::sync::Condvar::new(),
            flushed_tx: tokio::sync::watch::channel(0).0,
        }
    }
}

#[derive(Default)]
struct GroupState {
    /// Tickets handed out (one per flush request).
    requested: u64,
    /// Every ticket up to this one is durable.
    flushed: u64,
    flushing: bool,
    /// Flushes actually performed (for benchmarks and tests).
    fsyncs: u64,
}

fn corrupt(tree: &'static str, problem: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        tree,
        problem: problem.into(),
    }
}

fn decode<T: for<'de> Deserialize<'de>>(
    tree: &'static str,
    key: &[u8],
    v: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(v).map_err(|e| {
        corrupt(
            tree,
            format!(
                "record {:?} does not parse: {e}",
                String::from_utf8_lossy(key)
            ),
        )
    })
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // invariant: our records are plain structs of strings and integers
    serde_json::to_vec(v).unwrap_or_default()
}

impl Store {
    /// Opens (creating if needed) the database in `dir`. Reads the audit head;
    /// does not verify records (the core's self-test does).
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        // A restarting process may still hold sled's file lock for a moment:
        // retry that one error briefly; a second live instance still fails.
        let mut tries = 0;
        let db = loop {
            match sled::Config::new()
                .path(dir)
                .flush_every_ms(Some(1000))
                .open()
            {
                Ok(db) => break db,
                Err(sled::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.to_string().contains("lock") =>
                {
                    tries += 1;
                    if tries > 30 {
                        return Err(StoreError::Io(format!(
                            "{e} (is another poshsm using this data dir?)"
                        )));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(e) => return Err(e.into()),
            }
        };
        Store::from_db(db)
    }

    /// A throw-away database for tests.
    pub fn temporary() -> Result<Store, StoreError> {
        let db = sled::Config::new().temporary(true).open()?;
        Store::from_db(db)
    }

    fn from_db(db: sled::Db) -> Result<Store, StoreError> {
        let live = match db.get(KEYS_POINTER)? {
            Some(v) => String::from_utf8_lossy(&v).into_owned(),
            None => KEYS_FIRST.to_string(),
        };
        if !is_keys_generation(live.as_bytes()) {
            return Err(corrupt(
                "keys",
                format!("the live keys tree is named {live:?}"),
            ));
        }
        // The live generation must exist: a pointer to a missing tree is
        // damage, never a reason to drop the trees that hold the keys.
        let names = db.tree_names();
        if live != KEYS_FIRST && !names.iter().any(|n| n.as_ref() == live.as_bytes()) {
            return Err(corrupt(
                "keys",
                format!("the live keys tree {live:?} does not exist; nothing was dropped"),
            ));
        }
        // Other generations are an abandoned rotation's or the one before the
        // last rotation: nothing reads them any more.
        for name in names {
            if is_keys_generation(&name) && name.as_ref() != live.as_bytes() {
                db.drop_tree(&name)?;
            }
        }
        let keys = db.open_tree(&live)?;
        let aliases = db.open_tree("aliases")?;
        let terminals = db.open_tree("terminals")?;
        let audit = db.open_tree("audit")?;
        let meta = db.open_tree("meta")?;
        let head = audit_head(&audit)?;
        Ok(Store {
            db,
            keys: RwLock::new(keys),
            aliases,
            terminals,
            audit,
            meta,
            head: Mutex::new(head),
            group: GroupCommit::default(),
            commits: CommitQueue::default(),
        })
    }

    /// Forces everything written so far to disk, sharing the fsync with
    /// concurrent callers (group commit).
    pub fn flush(&self) -> Result<(), StoreError> {
        let lock = || self.group.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut st = lock();
        st.requested += 1;
        let ticket = st.requested;
        loop {
            if st.flushed >= ticket {
                return Ok(());
            }
            if !st.flushing {
                // Lead a flush covering every ticket handed out so far.
                st.flushing = true;
                let covers = st.requested;
                drop(st);
                self.lead_flush(covers)?;
                st = lock();
                continue;
            }
            st = self.group.done.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Async group commit: like [`Store::flush`], but waiting callers hold no
    /// thread; one of them runs the fsync on the blocking pool for all.
    pub async fn flush_async(self: &std::sync::Arc<Self>) -> Result<(), StoreError> {
        let ticket = {
            let mut st = self.group.state.lock().unwrap_or_else(|p| p.into_inner());
            st.requested += 1;
            st.requested
        };
        let mut rx = self.group.flushed_tx.subscribe();
        loop {
            let lead = {
                let mut st = self.group.state.lock().unwrap_or_else(|p| p.into_inner());
                if st.flushed >= ticket {
                    return Ok(());
                }
                if st.flushing {
                    None
                } else {
                    st.flushing = true;
                    Some(st.requested)
                }
            };
            match lead {
                Some(covers) => {
                    // The fsync and the wake-ups run to the end on the blocking
                    // pool even if this future is dropped (a cancelled call):
                    // otherwise `flushing` would stay set and every later flush
                    // would wait for a leader that is gone.
                    let me = self.clone();
                    tokio::task::spawn_blocking(move || me.lead_flush(covers))
                        .await
                        .map_err(|e| StoreError::Io(format!("flush task: {e}")))??;
                }
                None => {
                    // Woken when any flush finishes; re-check our ticket.
                    let _ = rx.changed().await;
                }
            }
        }
    }

    /// The group leader's work: one fsync for every ticket up to `covers`,
    /// then the sync and async waiters are woken.
    fn lead_flush(&self, covers: u64) -> Result<(), StoreError> {
        let result = self.db.flush();
        {
            let mut st = self.group.state.lock().unwrap_or_else(|p| p.into_inner());
            st.flushing = false;
            st.fsyncs += 1;
            if result.is_ok() {
                st.flushed = st.flushed.max(covers);
            }
        }
        self.group.done.notify_all();
        let _ = self.group.flushed_tx.send(covers);
        result?;
        Ok(())
    }

    /// How many fsyncs group commit has performed.
    pub fn fsyncs(&self) -> u64 {
        self.group
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .fsyncs
    }

    /// The live keys tree (a cheap handle).
    pub(crate) fn keys_tree(&self) -> sled::Tree {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn get_key(&self, key_id: &str) -> Result<Option<KeyRecord>, StoreError> {
        match self.keys_tree().get(key_id.as_bytes())? {
            Some(v) => Ok(Some(decode("keys", key_id.as_bytes(), &v)?)),
            None => Ok(None),
        }
    }

    pub fn key_id_for_alias(&self, alias: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .aliases
            .get(alias.as_bytes())?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Up to `limit` keys after `after` (exclusive), in key-id order.
    pub fn list_keys(&self, after: &str, limit: usize) -> Result<Vec<KeyRecord>, StoreError> {
        let mut out = Vec::new();
        let keys = self.keys_tree();
        let range = if after.is_empty() {
            keys.range::<&[u8], _>(..)
        } else {
            keys.range::<&[u8], _>((
                std::ops::Bound::Excluded(after.as_bytes()),
                std::ops::Bound::Unbounded,
            ))
        };
        for item in range {
            let (k, v) = item?;
            out.push(decode("keys", &k, &v)?);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Calls `f` on every key record (self-test, LMK rotation, backup).
    pub fn for_each_key(
        &self,
        mut f: impl FnMut(KeyRecord) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        for item in self.keys_tree().iter() {
            let (k, v) = item?;
            f(decode("keys", &k, &v)?)?;
        }
        Ok(())
    }

    pub fn get_terminal(&self, terminal_id: &str) -> Result<Option<TerminalRecord>, StoreError> {
        match self.terminals.get(terminal_id.as_bytes())? {
            Some(v) => Ok(Some(decode("terminals", terminal_id.as_bytes(), &v)?)),
            None => Ok(None),
        }
    }

    pub fn list_terminals(
        &self,
        after: &str,
        limit: usize,
    ) -> Result<Vec<TerminalRecord>, StoreError> {
        let mut out = Vec::new();
        let range = if after.is_empty() {
            self.terminals.range::<&[u8], _>(..)
        } else {
            self.terminals.range::<&[u8], _>((
                std::ops::Bound::Excluded(after.as_bytes()),
                std::ops::Bound::Unbounded,
            ))
        };
        for item in range {
            let (k, v) = item?;
            out.push(decode("terminals", &k, &v)?);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    pub fn for_each_terminal(
        &self,
        mut f: impl FnMut(TerminalRecord) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        for item in self.terminals.iter() {
            let (k, v) = item?;
            f(decode("terminals", &k, &v)?)?;
        }
        Ok(())
    }

    pub fn counts(&self) -> (u64, u64) {
        (self.keys_tree().len() as u64, self.terminals.len() as u64)
    }

    /// Audit events with `seq >= since`, in order, at most `limit`.
    pub fn audit_since(&self, since: u64, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.audit.range(since.max(1).to_be_bytes()..) {
            let (k, v) = item?;
            out.push(decode("audit", &k, &v)?);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Verifies the whole audit chain; returns the number of events.
    pub fn verify_audit_chain(&self) -> Result<u64, StoreError> {
        let mut v = ChainVerifier::new();
        for item in self.audit.iter() {
            let (k, val) = item?;
            let rec: AuditRecord = decode("audit", &k, &val)?;
            if k.as_ref() != rec.seq.to_be_bytes() {
                return Err(corrupt(
                    "audit",
                    format!("event {} is stored under another sequence number", rec.seq),
                ));
            }
            v.push(&rec).map_err(|p| corrupt("audit", p))?;
        }
        Ok(v.count())
    }

    /// LMK rotation, step 1: writes generation `generation` of the keys tree
    /// beside the live one, every record passed through `f`, in bounded
    /// batches, and flushes. Nothing reads it until [`Store::commit_key_generation`].
    /// The caller keeps other writers of keys out meanwhile.
    pub fn write_key_generation(
        &self,
        generation: &str,
        mut f: impl FnMut(KeyRecord) -> Result<KeyRecord, StoreError>,
    ) -> Result<u64, StoreError> {
        let name = format!("keys@{generation}");
        let live = self.keys_tree();
        if live.name().as_ref() == name.as_bytes() {
            return Err(StoreError::Io(format!(
                "key generation {name} is already the live one"
            )));
        }
        let next = self.db.open_tree(&name)?;
        next.clear()?;
        let (mut n, mut batch, mut pending) = (0u64, sled::Batch::default(), 0usize);
        for item in live.iter() {
            let (k, v) = item?;
            let rec = f(decode("keys", &k, &v)?)?;
            batch.insert(k, encode(&rec));
            n += 1;
            pending += 1;
            if pending == 4096 {
                next.apply_batch(std::mem::take(&mut batch))?;
                pending = 0;
            }
        }
        next.apply_batch(batch)?;
        self.flush()?;
        Ok(n)
    }

    /// LMK rotation, step 2 — the commit point: makes `generation` the live
    /// keys tree on disk (one pointer write, flushed). In memory the switch
    /// happens in [`Store::use_key_generation`].
    pub fn commit_key_generation(&self, generation: &str) -> Result<(), StoreError> {
        let name = format!("keys@{generation}");
        self.db.insert(KEYS_POINTER, name.as_bytes())?;
        self.flush()
    }

    /// LMK rotation, step 3: readers move to the committed generation. The
    /// previous one stays on disk until [`Store::drop_old_key_generations`]
    /// (or the next start), so a reader holding it finishes undisturbed.
    pub fn use_key_generation(&self, generation: &str) -> Result<(), StoreError> {
        let next = self.db.open_tree(format!("keys@{generation}"))?;
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }

    /// The name of the live keys-tree generation on disk (`keys` or `keys@<KCV>`).
    pub fn live_key_generation(&self) -> Result<String, StoreError> {
        Ok(match self.db.get(KEYS_POINTER)? {
            Some(v) => String::from_utf8_lossy(&v).into_owned(),
            None => KEYS_FIRST.to_string(),
        })
    }

    /// Removes every generation of the keys tree but the live one (in memory
    /// and on disk alike; does nothing if they differ).
    pub fn drop_old_key_generations(&self) -> Result<(), StoreError> {
        if self.live_key_generation()?.as_bytes() != self.keys_tree().name().as_ref() {
            return Ok(());
        }
        let live = self.keys_tree().name();
        for name in self.db.tree_names() {
            if is_keys_generation(&name) && name != live {
                self.db.drop_tree(&name)?;
            }
        }
        Ok(())
    }

    pub fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.meta.get(name.as_bytes())?.map(|v| v.to_vec()))
    }

    pub fn put_meta(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        self.meta.insert(name.as_bytes(), value)?;
        Ok(())
    }

    /// Applies `batch` atomically and appends its audit events to the chain.
    /// Returns the sealed audit records. Does not flush.
    ///
    /// Transaction-level group commit: every sled transaction costs two log
    /// buffer writes (sled rolls its I/O buffer around the batch manifest), so
    /// concurrent callers are combined. The first caller to find no commit
    /// running leads: it applies every queued batch in one transaction, each
    /// batch checked against the state the earlier ones left (a batch that
    /// fails its checks is left out alone), then hands each caller its own
    /// outcome. A lone caller commits at once; nothing waits for company.
    pub fn commit(&self, batch: Batch) -> Result<Vec<AuditRecord>, StoreError> {
        let lock = || self.commits.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut st = lock();
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        st.pending.push_back((ticket, batch));
        loop {
            if let Some(r) = st.results.remove(&ticket) {
                return r;
            }
            if !st.leading {
                st.leading = true;
                let n = st.pending.len().min(MAX_GROUP);
                let group: Vec<(u64, Batch)> = st.pending.drain(..n).collect();
                let tickets: Vec<u64> = group.iter().map(|(t, _)| *t).collect();
                drop(st);
                let outcomes = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.commit_group(group.into_iter().map(|(_, b)| b).collect())
                }))
                .unwrap_or_else(|_| {
                    self.reload_audit_head();
                    tickets
                        .iter()
                        .map(|_| Err(StoreError::Io("the commit group failed".into())))
                        .collect()
                });
                st = lock();
                st.leading = false;
                st.groups += 1;
                st.results.extend(tickets.into_iter().zip(outcomes));
                self.commits.done.notify_all();
                continue;
            }
            st = self
                .commits
                .done
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Sled transactions performed by [`Store::commit`] (one per group).
    pub fn commit_groups(&self) -> u64 {
        self.commits
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .groups
    }

    /// One sled transaction for `group`; one outcome per batch, in order.
    fn commit_group(&self, group: Vec<Batch>) -> Vec<Result<Vec<AuditRecord>, StoreError>> {
        // Only the group's leader appends to the chain; the lock guards the
        // head against a reader that opens the store's state meanwhile.
        let mut head = self.head.lock().unwrap_or_else(|p| p.into_inner());
        if head.next_seq == POISONED {
            return group
                .iter()
                .map(|_| {
                    Err(corrupt(
                        "audit",
                        "the last audit event is corrupt: nothing more is appended",
                    ))
                })
                .collect();
        }
        let now = crate::now_unix();
        let encoded: Vec<Encoded> = group.iter().map(Encoded::of).collect();
        // The core's commit gate keeps an LMK rotation's generation switch out
        // while this runs, so the tree taken here stays the live one.
        let keys = self.keys_tree();
        let result = (&keys, &self.aliases, &self.terminals, &self.audit).transaction(
            |(keys, aliases, terminals, audit)| {
                let mut seq = head.next_seq;
                let mut prev = head.last_hash;
                let mut outcomes = Vec::with_capacity(group.len());
                for (batch, enc) in group.iter().zip(&encoded) {
                    if let Err(e) = preconditions(batch, aliases, terminals)? {
                        outcomes.push(Err(e));
                        continue;
                    }
                    for id in &batch.delete_keys {
                        keys.remove(id.as_bytes())?;
                    }
                    for (id, bytes) in &enc.keys {
                        keys.insert(id.as_bytes(), bytes.as_slice())?;
                    }
                    for (alias, _) in &batch.unbind_aliases {
                        aliases.remove(alias.as_bytes())?;
                    }
                    for (alias, id) in &batch.bind_aliases {
                        aliases.insert(alias.as_bytes(), id.as_bytes())?;
                    }
                    for (id, bytes) in &enc.terminals {
                        terminals.insert(id.as_bytes(), bytes.as_slice())?;
                    }
                    let mut records = Vec::with_capacity(batch.audit.len());
                    for d in &batch.audit {
                        let r = AuditRecord::seal(seq, now, d.clone(), prev);
                        audit.insert(&r.seq.to_be_bytes(), encode(&r))?;
                        seq += 1;
                        prev = r.hash;
                        records.push(r);
                    }
                    outcomes.push(Ok(records));
                }
                Ok::<_, ConflictableTransactionError<StoreError>>((outcomes, seq, prev))
            },
        );
        match result {
            Ok((outcomes, seq, prev)) => {
                head.next_seq = seq;
                head.last_hash = prev;
                outcomes
            }
            Err(TransactionError::Abort(e)) => {
                // never raised: a failed check leaves one batch out, not the group
                let msg = e.to_string();
                group
                    .iter()
                    .map(|_| Err(StoreError::Io(msg.clone())))
                    .collect()
            }
            Err(TransactionError::Storage(e)) => {
                // sled applies a transaction's trees one after another: a
                // failure part-way may have left some of this group's audit
                // events in. Continue the chain from what is there, never
                // over it (the module is in ALARM by now anyway).
                drop(head);
                self.reload_audit_head();
                let msg = e.to_string();
                group
                    .iter()
                    .map(|_| Err(StoreError::Io(msg.clone())))
                    .collect()
            }
        }
    }
}

impl Store {
    /// Re-reads the chain's head from the audit tree (after a failed group).
    fn reload_audit_head(&self) {
        let mut head = self.head.lock().unwrap_or_else(|p| p.into_inner());
        *head = audit_head(&self.audit).unwrap_or(AuditHead {
            next_seq: POISONED,
            last_hash: [0u8; 32],
        });
    }
}

/// Most batches one sled transaction takes.
const MAX_GROUP: usize = 256;

/// A batch's records, serialised outside the transaction (which may retry).
struct Encoded {
    keys: Vec<(String, Vec<u8>)>,
    terminals: Vec<(String, Vec<u8>)>,
}

impl Encoded {
    fn of(b: &Batch) -> Encoded {
        Encoded {
            keys: b
                .put_keys
                .iter()
                .map(|k| (k.key_id.clone(), encode(k)))
                .collect(),
            terminals: b
                .create_terminals
                .iter()
                .chain(b.update_terminals.iter().map(|(t, _)| t))
                .map(|t| (t.terminal_id.clone(), encode(t)))
                .collect(),
        }
    }
}

/// A batch's checks against the transaction's view (which includes the
/// writes of the batches before it in the group): `Ok(Err(_))` leaves this
/// batch out; `Err(_)` is sled's (conflict: retry, or storage).
fn preconditions(
    batch: &Batch,
    aliases: &sled::transaction::TransactionalTree,
    terminals: &sled::transaction::TransactionalTree,
) -> Result<Result<(), StoreError>, sled::transaction::UnabortableTransactionError> {
    for (alias, expected) in &batch.unbind_aliases {
        let current = aliases.get(alias.as_bytes())?;
        if current.as_deref() != Some(expected.as_bytes()) {
            return Ok(Err(StoreError::AliasMoved(alias.clone())));
        }
    }
    for (alias, id) in &batch.bind_aliases {
        if let Some(existing) = aliases.get(alias.as_bytes())? {
            if existing.as_ref() != id.as_bytes()
                && !batch.unbind_aliases.iter().any(|(a, _)| a == alias)
            {
                return Ok(Err(StoreError::AliasExists(alias.clone())));
            }
        }
    }
    for t in &batch.create_terminals {
        if terminals.get(t.terminal_id.as_bytes())?.is_some() {
            return Ok(Err(StoreError::TerminalExists(t.terminal_id.clone())));
        }
    }
    for (t, expected_version) in &batch.update_terminals {
        let ok = match terminals.get(t.terminal_id.as_bytes())? {
            Some(v) => serde_json::from_slice::<TerminalRecord>(&v)
                .map(|r| r.key_version == *expected_version)
                .unwrap_or(false),
            None => false,
        };
        if !ok {
            return Ok(Err(StoreError::Conflict(t.terminal_id.clone())));
        }
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn key(id: &str) -> KeyRecord {
        KeyRecord {
            v: RECORD_FORMAT,
            key_id: id.into(),
            alias: String::new(),
            key_type: "ZPK".into(),
            algorithm: "TDES_2KEY".into(),
            kcv: "ABCDEF".into(),
            state: STATE_ACTIVE.into(),
            version: 1,
            exportable: false,
            key_block: "D0000P0TB00N0000".into(),
            created_unix: 1,
            retired_unix: 0,
        }
    }

    /// A sign-in whose call is cancelled while it leads the group flush
    /// (dropped after it started the fsync) must not leave later flushes
    /// waiting for it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_flush_leader_does_not_stall_later_flushes() {
        let store = std::sync::Arc::new(Store::temporary().unwrap());
        for round in 0..20 {
            store
                .commit(Batch {
                    put_keys: vec![key(&format!("k{round}"))],
                    ..Default::default()
                })
                .unwrap();
            // Polled once (it becomes the leader and hands the fsync to the
            // blocking pool), then dropped.
            let _ = tokio::time::timeout(Duration::ZERO, store.flush_async()).await;
            tokio::time::timeout(Duration::from_secs(10), store.flush_async())
                .await
                .unwrap_or_else(|_| panic!("round {round}: a later flush waited forever"))
                .unwrap();
            let blocking = store.clone();
            tokio::time::timeout(
                Duration::from_secs(10),
                tokio::task::spawn_blocking(move || blocking.flush()),
            )
            .await
            .expect("a sync flush after it finishes")
            .unwrap()
            .unwrap();
        }
    }

    #[test]
    fn a_pointer_to_a_missing_keys_generation_drops_nothing() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .commit(Batch {
                    put_keys: vec![key("k1")],
                    ..Default::default()
                })
                .unwrap();
            // A pointer that names a tree that was never written (the damage a
            // rotation's failed commit could leave).
            store
                .db
                .insert(KEYS_POINTER, b"keys@MISSING".as_slice())
                .unwrap();
            store.flush().unwrap();
        }
        let e = Store::open(dir.path()).err().expect("refused");
        assert!(
            e.to_string()
                .contains("does not exist; nothing was dropped"),
            "{e}"
        );
        // Put the pointer back: the keys are all there.
        {
            let db = sled::Config::new().path(dir.path()).open().unwrap();
            db.remove(KEYS_POINTER).unwrap();
            db.flush().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert!(store.get_key("k1").unwrap().is_some());
    }

    #[test]
    fn a_new_keys_generation_goes_live_only_at_its_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .commit(Batch {
                put_keys: vec![key("k1"), key("k2")],
                ..Default::default()
            })
            .unwrap();
        let n = store
            .write_key_generation("G2", |mut r| {
                r.kcv = "123456".into();
                Ok(r)
            })
            .unwrap();
        assert_eq!(n, 2);
        // Written but not committed: a reopen keeps (and cleans up around) the old one.
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.get_key("k1").unwrap().unwrap().kcv, "ABCDEF");
        assert_eq!(store.live_key_generation().unwrap(), "keys");
        store
            .write_key_generation("G2", |mut r| {
                r.kcv = "123456".into();
                Ok(r)
            })
            .unwrap();
        store.commit_key_generation("G2").unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.live_key_generation().unwrap(), "keys@G2");
        assert_eq!(store.get_key("k2").unwrap().unwrap().kcv, "123456");
        assert!(!store.db.tree_names().iter().any(|n| n.as_ref() == b"keys"));
    }

    fn draft(op: &str) -> AuditDraft {
        AuditDraft {
            actor: "t".into(),
            operation: op.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_taken_alias_aborts_the_whole_batch() {
        let s = Store::temporary().unwrap();
        s.commit(Batch {
            put_keys: vec![key("k1")],
            bind_aliases: vec![("zpk".into(), "k1".into())],
            audit: vec![draft("a")],
            ..Default::default()
        })
        .unwrap();
        let err = s
            .commit(Batch {
                put_keys: vec![key("k2")],
                bind_aliases: vec![("zpk".into(), "k2".into())],
                audit: vec![draft("b")],
                ..Default::default()
            })
            .unwrap_err();
        assert!(matches!(err, StoreError::AliasExists(_)));
        assert!(s.get_key("k2").unwrap().is_none(), "nothing half-written");
        assert_eq!(
            s.verify_audit_chain().unwrap(),
            1,
            "no audit event for the aborted batch"
        );
    }

    #[test]
    fn records_and_chain_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            for i in 0..3 {
                s.commit(Batch {
                    put_keys: vec![key(&format!("k{i}"))],
                    audit: vec![draft("GenerateKey")],
                    ..Default::default()
                })
                .unwrap();
            }
            s.flush().unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.list_keys("", 10).unwrap().len(), 3);
        assert_eq!(s.verify_audit_chain().unwrap(), 3);
        s.commit(Batch {
            audit: vec![draft("after-reopen")],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.verify_audit_chain().unwrap(), 4);
    }

    #[test]
    fn concurrent_flushes_share_fsyncs_and_each_returns_after_its_own_write() {
        let dir = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(Store::open(dir.path()).unwrap());
        let threads: Vec<_> = (0..32)
            .map(|i| {
                let s = s.clone();
                std::thread::spawn(move || {
                    s.commit(Batch {
                        put_keys: vec![key(&format!("k{i}"))],
                        ..Default::default()
                    })
                    .unwrap();
                    s.flush().unwrap();
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(s.fsyncs() >= 1 && s.fsyncs() <= 32, "{}", s.fsyncs());
        assert_eq!(s.list_keys("", 100).unwrap().len(), 32);
    }

    fn terminal(id: &str, version: u32) -> TerminalRecord {
        TerminalRecord {
            v: RECORD_FORMAT,
            terminal_id: id.into(),
            merchant_id: String::new(),
            tmk_key_id: "tmk".into(),
            tmk_kcv: "ABCDEF".into(),
            key_version: version,
            last_sign_in_unix: 0,
            created_unix: 1,
            current: None,
            previous: None,
            pending_tmk_key_id: String::new(),
        }
    }

    #[test]
    fn a_group_leaves_out_only_the_batches_whose_checks_fail() {
        let s = Store::temporary().unwrap();
        let outcomes = s.commit_group(vec![
            Batch {
                create_terminals: vec![terminal("T1", 0)],
                audit: vec![draft("create T1")],
                ..Default::default()
            },
            // sees the first batch's write: T1 exists now
            Batch {
                put_keys: vec![key("lost1")],
                create_terminals: vec![terminal("T1", 0)],
                audit: vec![draft("create T1 again")],
                ..Default::default()
            },
            Batch {
                put_keys: vec![key("k1")],
                bind_aliases: vec![("zpk".into(), "k1".into())],
                audit: vec![draft("k1"), draft("zpk->k1")],
                ..Default::default()
            },
            Batch {
                put_keys: vec![key("lost2")],
                bind_aliases: vec![("zpk".into(), "lost2".into())],
                audit: vec![draft("zpk->lost2")],
                ..Default::default()
            },
            Batch {
                update_terminals: vec![(terminal("T1", 1), 0)],
                audit: vec![draft("sign-in v1")],
                ..Default::default()
            },
            // expects version 0, but the batch before moved T1 to 1
            Batch {
                put_keys: vec![key("lost3")],
                update_terminals: vec![(terminal("T1", 1), 0)],
                audit: vec![draft("stale sign-in")],
                ..Default::default()
            },
            // a rotation that read zpk -> lost2 (never bound): the alias moved
            Batch {
                put_keys: vec![key("lost4")],
                unbind_aliases: vec![("zpk".into(), "lost2".into())],
                bind_aliases: vec![("zpk".into(), "lost4".into())],
                audit: vec![draft("stale rotation")],
                ..Default::default()
            },
        ]);
        let kinds: Vec<String> = outcomes
            .iter()
            .map(|o| match o {
                Ok(r) => format!("ok{}", r.len()),
                Err(StoreError::TerminalExists(_)) => "exists".into(),
                Err(StoreError::AliasExists(_)) => "alias".into(),
                Err(StoreError::Conflict(_)) => "conflict".into(),
                Err(StoreError::AliasMoved(_)) => "moved".into(),
                Err(e) => format!("{e}"),
            })
            .collect();
        assert_eq!(
            kinds,
            ["ok1", "exists", "ok2", "alias", "ok1", "conflict", "moved"],
            "each batch gets its own outcome"
        );
        for lost in ["lost1", "lost2", "lost3", "lost4"] {
            assert!(s.get_key(lost).unwrap().is_none(), "{lost} half-written");
        }
        assert_eq!(s.key_id_for_alias("zpk").unwrap().as_deref(), Some("k1"));
        assert_eq!(s.get_terminal("T1").unwrap().unwrap().key_version, 1);
        // The chain numbers only the batches that went in, without gaps.
        let seqs: Vec<u64> = outcomes.iter().flatten().flatten().map(|r| r.seq).collect();
        assert_eq!(seqs, [1, 2, 3, 4]);
        assert_eq!(s.verify_audit_chain().unwrap(), 4);
        let ops: Vec<String> = s
            .audit_since(0, 10)
            .unwrap()
            .into_iter()
            .map(|r| r.operation)
            .collect();
        assert_eq!(ops, ["create T1", "k1", "zpk->k1", "sign-in v1"]);
    }

    #[test]
    fn concurrent_commits_share_transactions_and_each_gets_its_own_records() {
        let dir = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(Store::open(dir.path()).unwrap());
        const THREADS: usize = 8;
        const EACH: usize = 100;
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0..EACH {
                        let id = format!("k{t}-{i}");
                        let records = s
                            .commit(Batch {
                                put_keys: vec![key(&id)],
                                audit: vec![draft(&id)],
                                ..Default::default()
                            })
                            .unwrap();
                        assert_eq!(records.len(), 1);
                        assert_eq!(records[0].operation, id, "another caller's record");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let total = (THREADS * EACH) as u64;
        assert_eq!(s.verify_audit_chain().unwrap(), total);
        assert_eq!(s.list_keys("", 1000).unwrap().len(), THREADS * EACH);
        let groups = s.commit_groups();
        assert!(
            groups < total,
            "{total} commits from {THREADS} threads took {groups} transactions: none combined"
        );
    }

    #[test]
    fn pages_of_keys_continue_after_the_token() {
        let s = Store::temporary().unwrap();
        s.commit(Batch {
            put_keys: (0..5).map(|i| key(&format!("k{i}"))).collect(),
            ..Default::default()
        })
        .unwrap();
        let first = s.list_keys("", 2).unwrap();
        let second = s.list_keys(&first[1].key_id, 10).unwrap();
        assert_eq!(first.len() + second.len(), 5);
        assert_eq!(second[0].key_id, "k2");
    }
}
