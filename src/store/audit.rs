//! The audit hash chain: each event's hash is SHA-256 over its fields and the
//! previous event's hash, so any edit, deletion or reordering is detectable.
//! Events name keys by id and KCV, never by their bytes.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Format version of audit records.
pub const AUDIT_FORMAT: u32 = 1;

/// An audit event before it is placed in the chain.
#[derive(Clone, Debug, Default)]
pub struct AuditDraft {
    pub actor: String,
    pub operation: String,
    pub key_id: String,
    pub outcome: String,
    pub detail: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub v: u32,
    pub seq: u64,
    pub time_unix: i64,
    pub actor: String,
    pub operation: String,
    pub key_id: String,
    pub outcome: String,
    pub detail: String,
    #[serde(with = "hex32")]
    pub prev_hash: [u8; 32],
    #[serde(with = "hex32")]
    pub hash: [u8; 32],
}

/// The canonical hash of an event (documented in ARCHITECTURE.md):
/// SHA-256("poshsm-audit-v1" ‖ seq u64be ‖ time i64be ‖ lp(actor) ‖ lp(operation)
/// ‖ lp(key_id) ‖ lp(outcome) ‖ lp(detail) ‖ prev_hash), lp = u32be length ‖ bytes.
/// `fields` = [actor, operation, key_id, outcome, detail].
pub fn event_hash(seq: u64, time_unix: i64, fields: [&str; 5], prev_hash: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"poshsm-audit-v1");
    h.update(seq.to_be_bytes());
    h.update(time_unix.to_be_bytes());
    for field in fields {
        h.update((field.len() as u32).to_be_bytes());
        h.update(field.as_bytes());
    }
    h.update(prev_hash);
    h.finalize().into()
}

impl AuditRecord {
    pub fn seal(seq: u64, time_unix: i64, draft: AuditDraft, prev_hash: [u8; 32]) -> AuditRecord {
        let hash = event_hash(
            seq,
            time_unix,
            [
                &draft.actor,
                &draft.operation,
                &draft.key_id,
                &draft.outcome,
                &draft.detail,
            ],
            &prev_hash,
        );
        AuditRecord {
            v: AUDIT_FORMAT,
            seq,
            time_unix,
            actor: draft.actor,
            operation: draft.operation,
            key_id: draft.key_id,
            outcome: draft.outcome,
            detail: draft.detail,
            prev_hash,
            hash,
        }
    }

    pub fn recompute_hash(&self) -> [u8; 32] {
        event_hash(
            self.seq,
            self.time_unix,
            [
                &self.actor,
                &self.operation,
                &self.key_id,
                &self.outcome,
                &self.detail,
            ],
            &self.prev_hash,
        )
    }
}

/// Incremental verifier: feed events in sequence order.
#[derive(Default)]
pub struct ChainVerifier {
    expected_seq: u64,
    prev: [u8; 32],
    count: u64,
}

impl ChainVerifier {
    pub fn new() -> Self {
        ChainVerifier {
            expected_seq: 1,
            prev: [0u8; 32],
            count: 0,
        }
    }

    /// Checks one event; the error names the first break.
    pub fn push(&mut self, rec: &AuditRecord) -> Result<(), String> {
        if rec.seq != self.expected_seq {
            return Err(format!(
                "audit event {} found where {} was expected (a gap or reordering)",
                rec.seq, self.expected_seq
            ));
        }
        if rec.prev_hash != self.prev {
            return Err(format!(
                "audit event {} does not link to the event before it",
                rec.seq
            ));
        }
        if rec.recompute_hash() != rec.hash {
            return Err(format!(
                "audit event {} has been altered (hash mismatch)",
                rec.seq
            ));
        }
        self.prev = rec.hash;
        self.expected_seq += 1;
        self.count += 1;
        Ok(())
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn head(&self) -> (u64, [u8; 32]) {
        (self.expected_seq, self.prev)
    }
}

mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let v = hex::decode(s).map_err(serde::de::Error::custom)?;
        v.try_into()
            .map_err(|_| serde::de::Error::custom("hash must be 32 bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<AuditRecord> {
        let mut prev = [0u8; 32];
        (1..=n)
            .map(|seq| {
                let r = AuditRecord::seal(
                    seq,
                    1_700_000_000 + seq as i64,
                    AuditDraft {
                        actor: "admin".into(),
                        operation: "GenerateKey".into(),
                        key_id: format!("k{seq}"),
                        outcome: "OK".into(),
                        detail: "kcv=ABCDEF".into(),
                    },
                    prev,
                );
                prev = r.hash;
                r
            })
            .collect()
    }

    #[test]
    fn an_untouched_chain_verifies() {
        let mut v = ChainVerifier::new();
        for r in chain(5) {
            v.push(&r).unwrap();
        }
        assert_eq!(v.count(), 5);
    }

    #[test]
    fn an_edited_event_breaks_the_chain() {
        let mut c = chain(5);
        c[2].outcome = "DENIED".into();
        let mut v = ChainVerifier::new();
        let err = c.iter().try_for_each(|r| v.push(r)).unwrap_err();
        assert!(err.contains("event 3"), "{err}");
    }

    #[test]
    fn a_deleted_event_breaks_the_chain() {
        let mut c = chain(5);
        c.remove(1);
        let mut v = ChainVerifier::new();
        assert!(c.iter().try_for_each(|r| v.push(r)).is_err());
    }

    #[test]
    fn the_hash_is_sha256_of_the_documented_encoding() {
        // Independent recomputation of the canonical encoding, byte by byte.
        let r = &chain(1)[0];
        let mut buf = Vec::new();
        buf.extend_from_slice(b"poshsm-audit-v1");
        buf.extend_from_slice(&1u64.to_be_bytes());
        buf.extend_from_slice(&1_700_000_001i64.to_be_bytes());
        for f in ["admin", "GenerateKey", "k1", "OK", "kcv=ABCDEF"] {
            buf.extend_from_slice(&(f.len() as u32).to_be_bytes());
            buf.extend_from_slice(f.as_bytes());
        }
        buf.extend_from_slice(&[0u8; 32]);
        let want: [u8; 32] = Sha256::digest(&buf).into();
        assert_eq!(r.hash, want);
    }
}
