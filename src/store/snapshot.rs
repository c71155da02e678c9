//! Backup snapshots of the store: every key record (LMK key blocks only),
//! alias, terminal, audit event and meta entry as versioned JSON lines, with
//! a header naming the LMK (its public KCV) and a trailer carrying the record
//! counts and a SHA-256 over everything before it, so truncation and
//! corruption are detected. A snapshot never contains a clear key.
//!
//! Consistency: [`export`] reads the trees of a store this process opened
//! exclusively (sled's file lock refuses a second opener, so the daemon must be
//! stopped): nothing changes while it iterates. [`restore`] verifies the whole
//! file first (hash, counts, LMK identity of every key block, the audit chain)
//! and only then writes it into a *fresh* database beside the target, which is
//! renamed into place at the end: a failed restore leaves nothing behind.
//!
//! ```text
//! {"t":"header","format":"poshsm-snapshot","version":1,"created_unix":…,"poshsm_version":"…","lmk_kcv":"16 hex"}
//! {"t":"key","r":{…KeyRecord…}}
//! {"t":"alias","alias":"zpk-cups","key_id":"k…"}
//! {"t":"terminal","r":{…TerminalRecord…}}
//! {"t":"audit","r":{…AuditRecord…}}
//! {"t":"meta","name":"…","value_hex":"…"}
//! {"t":"end","counts":{…},"sha256":"hex of every byte before this line"}
//! ```

use super::audit::{AuditDraft, AuditRecord, ChainVerifier};
use super::{Batch, KeyRecord, Store, StoreError, TerminalRecord};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

/// The `format` of a snapshot header.
pub const SNAPSHOT_FORMAT: &str = "poshsm-snapshot";
/// The snapshot format version this build writes and reads.
pub const SNAPSHOT_VERSION: u32 = 1;
/// Hex characters of the LMK KCV that a key block's `KP` optional block carries
/// (after its `01` prefix).
const KP_KCV_HEX: usize = 10;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    #[error("{0}")]
    Io(String),
    #[error("not a poshsm snapshot: {0}")]
    Format(String),
    #[error("the snapshot is truncated: {0} (copy it again from the backup medium)")]
    Truncated(String),
    #[error("the snapshot is corrupt: {0} (use another copy of the backup)")]
    Corrupt(String),
    #[error(
        "the snapshot was taken under another LMK (snapshot LMK KCV {snapshot}, this data dir's {ours}): \
         copy the source node's lmk.sealed into the data dir, or restore a snapshot of this LMK"
    )]
    WrongLmk { snapshot: String, ours: String },
    #[error(
        "the audit chain in the snapshot is broken: {0}; the backup may have been tampered with"
    )]
    AuditChain(String),
    #[error("{0}")]
    NotEmpty(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn io(what: &str, e: impl std::fmt::Display) -> SnapshotError {
    SnapshotError::Io(format!("{what}: {e}"))
}

/// Records per tree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub keys: u64,
    pub aliases: u64,
    pub terminals: u64,
    pub audit: u64,
    pub meta: u64,
}

impl Counts {
    pub fn total(&self) -> u64 {
        self.keys + self.aliases + self.terminals + self.audit + self.meta
    }
}

/// The first line of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub version: u32,
    pub created_unix: i64,
    pub poshsm_version: String,
    /// Hex of the first 8 bytes of the LMK's KCV, as in `lmk.sealed` (public).
    pub lmk_kcv: String,
}

/// One line of a snapshot. Records are kept as JSON values so that fields a
/// newer record format adds survive a backup/restore round trip unchanged.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case", deny_unknown_fields)]
enum Line {
    Header(Header),
    Key { r: serde_json::Value },
    Alias { alias: String, key_id: String },
    Terminal { r: serde_json::Value },
    Audit { r: serde_json::Value },
    Meta { name: String, value_hex: String },
    End { counts: Counts, sha256: String },
}

/// What a verified (or written) snapshot holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub header: Header,
    pub counts: Counts,
    /// Hex SHA-256 of the content (as in the trailer).
    pub sha256: String,
    /// Hash of the last audit event in the snapshot (hex; empty when none).
    pub audit_head: String,
}

/// Writes lines and hashes every byte it writes.
struct HashingWriter<W: Write> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> HashingWriter<W> {
    fn line(&mut self, l: &Line) -> Result<(), SnapshotError> {
        let mut bytes =
            serde_json::to_vec(l).map_err(|e| SnapshotError::Format(format!("encode: {e}")))?;
        bytes.push(b'\n');
        self.hash.update(&bytes);
        self.inner
            .write_all(&bytes)
            .map_err(|e| io("write the snapshot", e))
    }
}

fn tree_value(tree: &'static str, k: &[u8], v: &[u8]) -> Result<serde_json::Value, StoreError> {
    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt {
        tree,
        problem: format!(
            "record {:?} does not parse: {e}",
            String::from_utf8_lossy(k)
        ),
    })
}

/// Writes a snapshot of `store` to `out`. `lmk_kcv` is the 16-hex-digit KCV of
/// the sealed LMK (`lmk.sealed`'s `kcv`). The store must not change meanwhile
/// (open it exclusively: the daemon stopped). The audit chain is verified on
/// the way; a broken chain is not backed up. `progress` gets the number of
/// records written so far.
pub fn export(
    store: &Store,
    lmk_kcv: &str,
    out: impl Write,
    progress: &mut dyn FnMut(u64),
) -> Result<Summary, SnapshotError> {
    let header = Header {
        format: SNAPSHOT_FORMAT.into(),
        version: SNAPSHOT_VERSION,
        created_unix: crate::now_unix(),
        poshsm_version: env!("CARGO_PKG_VERSION").into(),
        lmk_kcv: lmk_kcv.to_ascii_uppercase(),
    };
    let mut w = HashingWriter {
        inner: out,
        hash: Sha256::new(),
    };
    w.line(&Line::Header(header.clone()))?;
    let mut counts = Counts::default();
    let mut done = 0u64;
    let mut tick = |done: &mut u64| {
        *done += 1;
        if *done % 256 == 0 {
            progress(*done);
        }
    };
    for item in store.keys_tree().iter() {
        let (k, v) = item.map_err(StoreError::from)?;
        let r = tree_value("keys", &k, &v)?;
        // A record that does not decode is corrupt: refuse rather than copy it.
        serde_json::from_value::<KeyRecord>(r.clone()).map_err(|e| StoreError::Corrupt {
            tree: "keys",
            problem: format!("key {:?}: {e}", String::from_utf8_lossy(&k)),
        })?;
        w.line(&Line::Key { r })?;
        counts.keys += 1;
        tick(&mut done);
    }
    for item in store.aliases.iter() {
        let (k, v) = item.map_err(StoreError::from)?;
        w.line(&Line::Alias {
            alias: String::from_utf8_lossy(&k).into_owned(),
            key_id: String::from_utf8_lossy(&v).into_owned(),
        })?;
        counts.aliases += 1;
        tick(&mut done);
    }
    for item in store.terminals.iter() {
        let (k, v) = item.map_err(StoreError::from)?;
        let r = tree_value("terminals", &k, &v)?;
        serde_json::from_value::<TerminalRecord>(r.clone()).map_err(|e| StoreError::Corrupt {
            tree: "terminals",
            problem: format!("terminal {:?}: {e}", String::from_utf8_lossy(&k)),
        })?;
        w.line(&Line::Terminal { r })?;
        counts.terminals += 1;
        tick(&mut done);
    }
    let mut chain = ChainVerifier::new();
    for item in store.audit.iter() {
        let (k, v) = item.map_err(StoreError::from)?;
        let r = tree_value("audit", &k, &v)?;
        let rec: AuditRecord =
            serde_json::from_value(r.clone()).map_err(|e| StoreError::Corrupt {
                tree: "audit",
                problem: format!("event does not parse: {e}"),
            })?;
        if k.as_ref() != rec.seq.to_be_bytes() {
            return Err(SnapshotError::AuditChain(format!(
                "event {} is stored under another sequence number",
                rec.seq
            )));
        }
        chain.push(&rec).map_err(SnapshotError::AuditChain)?;
        w.line(&Line::Audit { r })?;
        counts.audit += 1;
        tick(&mut done);
    }
    for item in store.meta.iter() {
        let (k, v) = item.map_err(StoreError::from)?;
        w.line(&Line::Meta {
            name: String::from_utf8_lossy(&k).into_owned(),
            value_hex: hex::encode(&v),
        })?;
        counts.meta += 1;
        tick(&mut done);
    }
    progress(done);
    let sha256 = hex::encode(w.hash.clone().finalize());
    let end = Line::End {
        counts,
        sha256: sha256.clone(),
    };
    let mut bytes = serde_json::to_vec(&end).map_err(|e| SnapshotError::Format(e.to_string()))?;
    bytes.push(b'\n');
    w.inner
        .write_all(&bytes)
        .and_then(|_| w.inner.flush())
        .map_err(|e| io("write the snapshot", e))?;
    let (_, head) = chain.head();
    Ok(Summary {
        header,
        counts,
        sha256,
        audit_head: if counts.audit == 0 {
            String::new()
        } else {
            hex::encode(head)
        },
    })
}

/// Reads a snapshot line by line, hashing everything before the trailer.
struct Reader<R: BufRead> {
    inner: R,
    hash: Sha256,
    line_no: u64,
    buf: Vec<u8>,
}

impl<R: BufRead> Reader<R> {
    fn new(inner: R) -> Self {
        Reader {
            inner,
            hash: Sha256::new(),
            line_no: 0,
            buf: Vec::new(),
        }
    }

    /// The next line, or None at the end of the file.
    fn next(&mut self) -> Result<Option<Line>, SnapshotError> {
        self.buf.clear();
        let n = self
            .inner
            .read_until(b'\n', &mut self.buf)
            .map_err(|e| io("read the snapshot", e))?;
        if n == 0 {
            return Ok(None);
        }
        self.line_no += 1;
        if self.buf.last() != Some(&b'\n') {
            return Err(SnapshotError::Truncated(format!(
                "line {} ends without a newline",
                self.line_no
            )));
        }
        let line: Line = serde_json::from_slice(&self.buf).map_err(|e| {
            if self.line_no == 1 {
                SnapshotError::Format(format!("the first line is not a snapshot header ({e})"))
            } else {
                SnapshotError::Corrupt(format!("line {} does not parse: {e}", self.line_no))
            }
        })?;
        if !matches!(line, Line::End { .. }) {
            self.hash.update(&self.buf);
        }
        Ok(Some(line))
    }
}

/// The LMK identity (`KP` optional block, without its `01` prefix) of an LMK key block.
fn block_lmk_identity(block: &str) -> Option<String> {
    let h = keyblocks::Header::parse(block).ok()?;
    h.optional(b"KP")
        .and_then(|kp| kp.get(2..))
        .map(str::to_string)
}

/// Verifies a whole snapshot without writing anything: header, every record,
/// the LMK identity of every key block against `lmk_kcv` (when given), aliases
/// pointing at keys in the snapshot, the audit chain, the counts and the hash.
pub fn verify(
    input: impl BufRead,
    lmk_kcv: Option<&str>,
    progress: &mut dyn FnMut(u64),
) -> Result<Summary, SnapshotError> {
    let mut rd = Reader::new(input);
    let header = match rd.next()? {
        Some(Line::Header(h)) => h,
        Some(_) => {
            return Err(SnapshotError::Format(
                "the first line is not a snapshot header".into(),
            ))
        }
        None => return Err(SnapshotError::Truncated("the file is empty".into())),
    };
    if header.format != SNAPSHOT_FORMAT {
        return Err(SnapshotError::Format(format!(
            "format {:?}, expected {SNAPSHOT_FORMAT:?}",
            header.format
        )));
    }
    if header.version != SNAPSHOT_VERSION {
        return Err(SnapshotError::Format(format!(
            "snapshot format version {} is not supported by this poshsm (it reads version {SNAPSHOT_VERSION}); \
             restore it with poshsm {}",
            header.version, header.poshsm_version
        )));
    }
    let snap_kcv = header.lmk_kcv.to_ascii_uppercase();
    if let Some(ours) = lmk_kcv {
        if !snap_kcv.eq_ignore_ascii_case(ours) {
            return Err(SnapshotError::WrongLmk {
                snapshot: snap_kcv,
                ours: ours.to_ascii_uppercase(),
            });
        }
    }
    let kp_want = snap_kcv.get(..KP_KCV_HEX).unwrap_or("").to_string();
    let mut counts = Counts::default();
    let mut key_ids: HashSet<String> = HashSet::new();
    let mut aliases: Vec<(String, String)> = Vec::new();
    let mut chain = ChainVerifier::new();
    let mut done = 0u64;
    loop {
        let line = match rd.next()? {
            Some(l) => l,
            None => {
                return Err(SnapshotError::Truncated(format!(
                    "no trailer after line {} (the file was cut short)",
                    rd.line_no
                )))
            }
        };
        match line {
            Line::Header(_) => {
                return Err(SnapshotError::Corrupt(format!(
                    "a second header at line {}",
                    rd.line_no
                )))
            }
            Line::Key { r } => {
                let k: KeyRecord = serde_json::from_value(r).map_err(|e| {
                    SnapshotError::Corrupt(format!("key record at line {}: {e}", rd.line_no))
                })?;
                match block_lmk_identity(&k.key_block) {
                    Some(kp) if kp.eq_ignore_ascii_case(&kp_want) => {}
                    Some(kp) => {
                        return Err(SnapshotError::WrongLmk {
                            snapshot: format!("{kp}… (key {})", k.key_id),
                            ours: format!("{kp_want}…"),
                        })
                    }
                    None => {
                        return Err(SnapshotError::Corrupt(format!(
                            "key {} has no LMK key block with an LMK identity (KP)",
                            k.key_id
                        )))
                    }
                }
                if !key_ids.insert(k.key_id.clone()) {
                    return Err(SnapshotError::Corrupt(format!(
                        "key {} appears twice",
                        k.key_id
                    )));
                }
                counts.keys += 1;
            }
            Line::Alias { alias, key_id } => {
                aliases.push((alias, key_id));
                counts.aliases += 1;
            }
            Line::Terminal { r } => {
                serde_json::from_value::<TerminalRecord>(r).map_err(|e| {
                    SnapshotError::Corrupt(format!("terminal record at line {}: {e}", rd.line_no))
                })?;
                counts.terminals += 1;
            }
            Line::Audit { r } => {
                let rec: AuditRecord = serde_json::from_value(r).map_err(|e| {
                    SnapshotError::Corrupt(format!("audit event at line {}: {e}", rd.line_no))
                })?;
                chain.push(&rec).map_err(SnapshotError::AuditChain)?;
                counts.audit += 1;
            }
            Line::Meta { value_hex, .. } => {
                hex::decode(&value_hex).map_err(|e| {
                    SnapshotError::Corrupt(format!("meta entry at line {}: {e}", rd.line_no))
                })?;
                counts.meta += 1;
            }
            Line::End {
                counts: want,
                sha256,
            } => {
                let got = hex::encode(rd.hash.clone().finalize());
                if !got.eq_ignore_ascii_case(&sha256) {
                    return Err(SnapshotError::Corrupt(
                        "the content does not match the trailer's SHA-256".into(),
                    ));
                }
                if want != counts {
                    return Err(SnapshotError::Truncated(format!(
                        "the trailer counts {want:?} but the file holds {counts:?}"
                    )));
                }
                if rd.next()?.is_some() {
                    return Err(SnapshotError::Corrupt(
                        "there is data after the trailer".into(),
                    ));
                }
                for (alias, id) in &aliases {
                    if !key_ids.contains(id) {
                        return Err(SnapshotError::Corrupt(format!(
                            "alias {alias:?} names key {id}, which is not in the snapshot"
                        )));
                    }
                }
                progress(done);
                let (_, head) = chain.head();
                return Ok(Summary {
                    header,
                    counts,
                    sha256: got,
                    audit_head: if counts.audit == 0 {
                        String::new()
                    } else {
                        hex::encode(head)
                    },
                });
            }
        }
        done += 1;
        if done % 256 == 0 {
            progress(done);
        }
    }
}

/// Records a snapshot of `store` will hold (for a progress bar; counts by iterating).
pub fn record_count(store: &Store) -> u64 {
    [
        &store.keys_tree(),
        &store.aliases,
        &store.terminals,
        &store.audit,
        &store.meta,
    ]
    .iter()
    .map(|t| t.len() as u64)
    .sum()
}

/// True when no tree of the store holds a record.
pub fn is_empty(store: &Store) -> bool {
    store.keys_tree().is_empty()
        && store.aliases.is_empty()
        && store.terminals.is_empty()
        && store.audit.is_empty()
        && store.meta.is_empty()
}

/// Writes a verified snapshot into a new, empty database at `dir`.
fn load_into(
    input: impl BufRead,
    dir: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<(), SnapshotError> {
    let db = sled::Config::new()
        .path(dir)
        .open()
        .map_err(StoreError::from)?;
    let trees = ["keys", "aliases", "terminals", "audit", "meta"]
        .map(|name| db.open_tree(name).map_err(StoreError::from));
    let [keys, aliases, terminals, audit, meta] = trees;
    let (keys, aliases, terminals, audit, meta) = (keys?, aliases?, terminals?, audit?, meta?);
    let mut rd = Reader::new(input);
    let enc = |v: &serde_json::Value| serde_json::to_vec(v).unwrap_or_default();
    // sled batches of a bounded size keep memory flat for large stores.
    const CHUNK: usize = 4096;
    let mut batches: [sled::Batch; 5] = Default::default();
    let mut pending = 0usize;
    let mut done = 0u64;
    let apply = |batches: &mut [sled::Batch; 5]| -> Result<(), SnapshotError> {
        for (tree, b) in [&keys, &aliases, &terminals, &audit, &meta]
            .into_iter()
            .zip(batches.iter_mut())
        {
            tree.apply_batch(std::mem::take(b))
                .map_err(StoreError::from)?;
        }
        Ok(())
    };
    while let Some(line) = rd.next()? {
        match line {
            Line::Header(_) => continue,
            Line::End { .. } => break,
            Line::Key { r } => {
                let id = r
                    .get("key_id")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string();
                batches[0].insert(id.as_bytes(), enc(&r));
            }
            Line::Alias { alias, key_id } => {
                batches[1].insert(alias.as_bytes(), key_id.as_bytes());
            }
            Line::Terminal { r } => {
                let id = r
                    .get("terminal_id")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string();
                batches[2].insert(id.as_bytes(), enc(&r));
            }
            Line::Audit { r } => {
                let seq = r.get("seq").and_then(|v| v.as_u64()).unwrap_or_default();
                batches[3].insert(&seq.to_be_bytes(), enc(&r));
            }
            Line::Meta { name, value_hex } => {
                let v =
                    hex::decode(&value_hex).map_err(|e| SnapshotError::Corrupt(e.to_string()))?;
                batches[4].insert(name.as_bytes(), v);
            }
        }
        pending += 1;
        done += 1;
        if pending >= CHUNK {
            apply(&mut batches)?;
            pending = 0;
            progress(done);
        }
    }
    apply(&mut batches)?;
    progress(done);
    db.flush().map_err(StoreError::from)?;
    Ok(())
}

/// Where a restore builds its database before renaming it into place.
fn staging_dir(db_dir: &Path) -> PathBuf {
    let name = db_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "db".into());
    db_dir.with_file_name(format!("{name}.restoring"))
}

/// Restores the snapshot at `path` into the store directory `db_dir` (e.g.
/// `DIR/db`), whose data dir holds the LMK with KCV `lmk_kcv`:
/// 1. refuses a non-empty store at `db_dir`;
/// 2. verifies the whole snapshot (see [`verify`]) against `lmk_kcv`;
/// 3. writes it into a fresh database `db_dir.restoring`, appends a `Restore`
///    audit event (actor `actor`) to the restored chain, flushes;
/// 4. renames it to `db_dir`.
///
/// `progress(phase, done)` reports records verified (`"verify"`) and loaded (`"load"`).
pub fn restore(
    path: &Path,
    db_dir: &Path,
    lmk_kcv: &str,
    actor: &str,
    progress: &mut dyn FnMut(&'static str, u64),
) -> Result<Summary, SnapshotError> {
    if db_dir.exists() {
        let store = Store::open(db_dir)?;
        if !is_empty(&store) {
            let (k, t) = store.counts();
            return Err(SnapshotError::NotEmpty(format!(
                "the store {} is not empty ({k} keys, {t} terminals): a restore never overwrites one; \
                 restore into a new data dir, or move {} away first",
                db_dir.display(),
                db_dir.display()
            )));
        }
    }
    let open = || {
        std::fs::File::open(path)
            .map(std::io::BufReader::new)
            .map_err(|e| io(&format!("cannot read {}", path.display()), e))
    };
    let summary = verify(open()?, Some(lmk_kcv), &mut |n| progress("verify", n))?;
    let staging = staging_dir(db_dir);
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .map_err(|e| io(&format!("remove the leftover {}", staging.display()), e))?;
    }
    let result = (|| {
        load_into(open()?, &staging, &mut |n| progress("load", n))?;
        let store = Store::open(&staging)?;
        store.commit(Batch {
            audit: vec![AuditDraft {
                actor: actor.to_string(),
                operation: "Restore".into(),
                key_id: String::new(),
                outcome: "OK".into(),
                detail: format!(
                    "snapshot_sha256={} created_unix={} keys={} terminals={} audit_events={}",
                    summary.sha256,
                    summary.header.created_unix,
                    summary.counts.keys,
                    summary.counts.terminals,
                    summary.counts.audit
                ),
            }],
            ..Default::default()
        })?;
        store.flush()?;
        let n = store.verify_audit_chain()?;
        if n != summary.counts.audit + 1 {
            return Err(SnapshotError::AuditChain(format!(
                "the restored chain has {n} events, expected {}",
                summary.counts.audit + 1
            )));
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    if db_dir.exists() {
        // Verified empty above; sled leaves its files behind even for an empty db.
        std::fs::remove_dir_all(db_dir)
            .map_err(|e| io(&format!("remove the empty {}", db_dir.display()), e))?;
    }
    std::fs::rename(&staging, db_dir).map_err(|e| {
        io(
            &format!("rename {} to {}", staging.display(), db_dir.display()),
            e,
        )
    })?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Algorithm;
    use crate::keys::{wrap_under_lmk, KeyMeta, KeyType, Lmk, LoadedKey};

    fn key(lmk: &Lmk, id: &str) -> KeyRecord {
        let lk = LoadedKey::new(
            KeyMeta {
                key_type: KeyType::Zpk,
                algorithm: Algorithm::Tdes2,
                exportable: false,
                key_id: Some(id.into()),
                kcv: String::new(),
            },
            &hex::decode("0123456789ABCDEFFEDCBA9876543210").unwrap(),
        )
        .unwrap();
        KeyRecord {
            v: super::super::RECORD_FORMAT,
            key_id: id.into(),
            alias: String::new(),
            key_type: "ZPK".into(),
            algorithm: "TDES_2KEY".into(),
            kcv: lk.meta().kcv.clone(),
            state: super::super::STATE_ACTIVE.into(),
            version: 1,
            exportable: false,
            key_block: wrap_under_lmk(lmk, &lk).unwrap(),
            created_unix: 1,
            retired_unix: 0,
        }
    }

    fn store_with(lmk: &Lmk, n: usize) -> Store {
        let s = Store::temporary().unwrap();
        for i in 0..n {
            s.commit(Batch {
                put_keys: vec![key(lmk, &format!("k{i}"))],
                bind_aliases: vec![(format!("a{i}"), format!("k{i}"))],
                audit: vec![AuditDraft {
                    actor: "t".into(),
                    operation: "GenerateKey".into(),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .unwrap();
        }
        s
    }

    fn snapshot(s: &Store, kcv: &str) -> Vec<u8> {
        let mut out = Vec::new();
        export(s, kcv, &mut out, &mut |_| {}).unwrap();
        out
    }

    #[test]
    fn an_exported_snapshot_verifies_and_counts_every_record() {
        let lmk = Lmk::generate();
        let kcv = lmk.kcv_hex(8);
        let snap = snapshot(&store_with(&lmk, 3), &kcv);
        let sum = verify(&snap[..], Some(&kcv), &mut |_| {}).unwrap();
        assert_eq!(
            (sum.counts.keys, sum.counts.aliases, sum.counts.audit),
            (3, 3, 3)
        );
    }

    #[test]
    fn a_cut_or_edited_snapshot_is_refused() {
        let lmk = Lmk::generate();
        let kcv = lmk.kcv_hex(8);
        let snap = snapshot(&store_with(&lmk, 2), &kcv);
        let text = String::from_utf8(snap.clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let cut = lines[..lines.len() - 1].join("\n") + "\n";
        assert!(matches!(
            verify(cut.as_bytes(), Some(&kcv), &mut |_| {}),
            Err(SnapshotError::Truncated(_))
        ));
        let edited = text.replacen("GenerateKey", "GenerateKex", 1);
        assert!(verify(edited.as_bytes(), Some(&kcv), &mut |_| {}).is_err());
        assert!(verify(&snap[..snap.len() / 2], Some(&kcv), &mut |_| {}).is_err());
    }

    #[test]
    fn a_snapshot_of_another_lmk_is_refused() {
        let lmk = Lmk::generate();
        let kcv = lmk.kcv_hex(8);
        let snap = snapshot(&store_with(&lmk, 1), &kcv);
        let other = Lmk::generate();
        assert!(matches!(
            verify(&snap[..], Some(&other.kcv_hex(8)), &mut |_| {}),
            Err(SnapshotError::WrongLmk { .. })
        ));
        // Key blocks of another LMK under a header that claims ours.
        let forged = snapshot(&store_with(&other, 1), &kcv);
        assert!(matches!(
            verify(&forged[..], Some(&kcv), &mut |_| {}),
            Err(SnapshotError::WrongLmk { .. })
        ));
    }
}
