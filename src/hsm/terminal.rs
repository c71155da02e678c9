//! Terminals and sign-in (签到). A sign-in generates fresh PIK, MAK and
//! optionally TDK, returns them ECB-encrypted under the terminal's TMK with
//! check values (field 62 of the 0810) and wrapped under the LMK, and stores
//! them in one transaction with the terminal update and its audit event.
//! The previous set stays for the MAC grace window; the one before is deleted.

use super::{err, parse_terminal_id, Hsm, HsmError, KeyRef, Reason, TerminalInfo, TerminalKeys};
use crate::crypto::{kcv, Algorithm, KeyMaterial};
use crate::keys::cache::CachedKey;
use crate::keys::types::algorithm_name;
use crate::keys::{self, KeyMeta, KeyType, LoadedKey};
use crate::store::{
    audit::AuditDraft, Batch, KeyRecord, TerminalRecord, WorkingSet, RECORD_FORMAT,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field62Layout {
    /// 24 bytes: PIK 8‖CV‖MAK 8‖CV (single DES; needs allow_single_des).
    Unionpay001,
    /// 40 bytes: PIK 16‖CV‖MAK 8‖00×8‖CV (single-length MAK).
    Unionpay003,
    /// 60 bytes: the 003 layout ‖ TDK 16‖CV.
    Unionpay004,
    /// PIK 16‖CV‖MAK 16‖CV[‖TDK 16‖CV].
    DoubleMak,
    /// SM4/AES TMK: PIK 16‖CV‖MAK 16‖CV[‖TDK 16‖CV], every key the TMK's algorithm.
    Block16,
}

pub struct CreateTerminal {
    pub terminal_id: String,
    pub merchant_id: String,
    /// None: generate a TMK of `tmk_algorithm`.
    pub tmk: Option<KeyRef>,
    pub tmk_algorithm: Option<Algorithm>,
}

pub enum SignInSource {
    /// A stored terminal.
    Terminal(String),
    /// A stored terminal, signing in under its pending TMK (sent by
    /// `change_terminal_tmk`), which this sign-in makes current.
    TerminalPendingTmk(String),
    /// Stateless: the TMK given by reference; `terminal_id` is for the audit log only.
    Tmk { tmk: KeyRef, terminal_id: String },
}

pub struct SignIn {
    pub source: SignInSource,
    pub algorithm: Option<Algorithm>,
    pub include_tdk: bool,
    pub layout: Option<Field62Layout>,
    /// Bytes of each check value: 4 (default when 0) or 8.
    pub check_value_length: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkingKeyOut {
    pub under_tmk: Vec<u8>,
    pub check_value: Vec<u8>,
    pub key_block: String,
    pub key_id: String,
    pub kcv: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignInResult {
    pub pik: WorkingKeyOut,
    pub mak: WorkingKeyOut,
    pub tdk: Option<WorkingKeyOut>,
    pub field62: Vec<u8>,
    pub key_version: u32,
    pub layout: Field62Layout,
}

/// Key algorithms of (PIK, MAK, TDK) for a layout under a TMK of `tmk_alg`.
fn layout_algorithms(
    layout: Field62Layout,
    tmk_alg: Algorithm,
) -> (Algorithm, Algorithm, Algorithm) {
    match layout {
        Field62Layout::Unionpay001 => (Algorithm::Des, Algorithm::Des, Algorithm::Des),
        Field62Layout::Unionpay003 | Field62Layout::Unionpay004 => {
            (Algorithm::Tdes2, Algorithm::Des, Algorithm::Tdes2)
        }
        Field62Layout::DoubleMak => (Algorithm::Tdes2, Algorithm::Tdes2, Algorithm::Tdes2),
        Field62Layout::Block16 => {
            let a = if tmk_alg == Algorithm::Sm4 {
                Algorithm::Sm4
            } else {
                Algorithm::Aes128
            };
            (a, a, a)
        }
    }
}

impl Hsm {
    fn resolve_layout(
        &self,
        req: &SignIn,
        tmk_alg: Algorithm,
    ) -> Result<(Field62Layout, bool), HsmError> {
        let des_tmk = tmk_alg.is_des_family();
        let layout = match req.layout {
            Some(l) => l,
            None if tmk_alg == Algorithm::Des => Field62Layout::Unionpay001,
            None if des_tmk && req.include_tdk => Field62Layout::Unionpay004,
            None if des_tmk => Field62Layout::Unionpay003,
            None => Field62Layout::Block16,
        };
        let fits = match layout {
            Field62Layout::Block16 => !des_tmk,
            Field62Layout::Unionpay001 => des_tmk,
            _ => des_tmk && tmk_alg != Algorithm::Des,
        };
        if !fits {
            return Err(err(
                Reason::UnsupportedAlgorithm,
                format!(
                    "field-62 layout {layout:?} does not fit a {} TMK",
                    algorithm_name(tmk_alg)
                ),
            ));
        }
        if layout == Field62Layout::Unionpay001 && !self.config().allow_single_des {
            return Err(err(
                Reason::SingleDesDisabled,
                "the single-DES layout UNIONPAY_001 is disabled: set allow_single_des = true for legacy terminals",
            ));
        }
        let include_tdk = match layout {
            Field62Layout::Unionpay004 => true,
            Field62Layout::Unionpay001 | Field62Layout::Unionpay003 if req.include_tdk => {
                return Err(err(
                    Reason::InvalidArgument,
                    format!("layout {layout:?} carries no TDK: use UNIONPAY_004 or DOUBLE_MAK"),
                ))
            }
            Field62Layout::Unionpay001 | Field62Layout::Unionpay003 => false,
            Field62Layout::DoubleMak | Field62Layout::Block16 => req.include_tdk,
        };
        if let Some(want) = req.algorithm {
            let (pik_alg, _, _) = layout_algorithms(layout, tmk_alg);
            if want != pik_alg && want != tmk_alg {
                return Err(err(
                    Reason::UnsupportedAlgorithm,
                    format!(
                        "working keys of layout {layout:?} under a {} TMK are {}, not {}",
                        algorithm_name(tmk_alg),
                        algorithm_name(pik_alg),
                        algorithm_name(want)
                    ),
                ));
            }
        }
        Ok((layout, include_tdk))
    }

    pub fn create_terminal(
        &self,
        actor: &str,
        req: CreateTerminal,
    ) -> Result<TerminalInfo, HsmError> {
        self.check_ready()?;
        let terminal_id = parse_terminal_id(&req.terminal_id)?;
        if req.merchant_id.len() > 32
            || !req
                .merchant_id
                .bytes()
                .all(|b| b.is_ascii_graphic() || b == b' ')
        {
            return Err(err(
                Reason::InvalidArgument,
                "merchant id must be at most 32 printable characters",
            ));
        }
        if self.store().get_terminal(&terminal_id)?.is_some() {
            return Err(err(
                Reason::TerminalExists,
                format!("terminal {terminal_id} already exists"),
            ));
        }
        let mut batch = Batch::default();
        let (tmk_id, tmk_kcv) = match &req.tmk {
            Some(r) => {
                let k = self.load(r)?;
                if k.key_type() != KeyType::Tmk {
                    return Err(err(
                        Reason::KeyUsageMismatch,
                        format!("{r} is a {}, not a TMK", k.key_type()),
                    ));
                }
                match (
                    &k.meta().key_id,
                    self.store()
                        .get_key(k.meta().key_id.as_deref().unwrap_or(""))?,
                ) {
                    (Some(id), Some(_)) => (id.clone(), k.meta().kcv.clone()),
                    _ => {
                        // A TMK block not in this store: keep a stored copy under a new id.
                        let (rec, _) = self.new_record(
                            KeyType::Tmk,
                            k.algorithm(),
                            k.clear(),
                            k.meta().exportable,
                            "",
                            1,
                        )?;
                        let out = (rec.key_id.clone(), rec.kcv.clone());
                        batch.put_keys.push(rec);
                        out
                    }
                }
            }
            None => {
                let alg = req.tmk_algorithm.unwrap_or(Algorithm::Tdes2);
                self.check_algorithm_allowed(KeyType::Tmk, alg)?;
                let tmk = KeyMaterial::generate(alg)?;
                // Exportable: a generated TMK must reach the PIN pad through a KEK.
                let (rec, _) = self.new_record(KeyType::Tmk, alg, tmk.expose(), true, "", 1)?;
                let out = (rec.key_id.clone(), rec.kcv.clone());
                batch.put_keys.push(rec);
                out
            }
        };
        let now = crate::now_unix();
        let rec = TerminalRecord {
            v: RECORD_FORMAT,
            terminal_id: terminal_id.clone(),
            merchant_id: req.merchant_id.clone(),
            tmk_key_id: tmk_id.clone(),
            tmk_kcv: tmk_kcv.clone(),
            key_version: 0,
            last_sign_in_unix: 0,
            created_unix: now,
            current: None,
            previous: None,
            pending_tmk_key_id: String::new(),
        };
        batch.create_terminals.push(rec.clone());
        batch.audit.push(AuditDraft {
            actor: actor.to_string(),
            operation: "CreateTerminal".into(),
            key_id: tmk_id,
            outcome: "OK".into(),
            detail: format!(
                "terminal={terminal_id} merchant={} tmk_kcv={tmk_kcv}",
                req.merchant_id
            ),
        });
        self.commit(batch)?;
        self.flush()?;
        Ok(rec)
    }

    pub fn get_terminal(&self, terminal_id: &str) -> Result<TerminalInfo, HsmError> {
        let tid = parse_terminal_id(terminal_id)?;
        self.store().get_terminal(&tid)?.ok_or_else(|| {
            err(
                Reason::UnknownTerminal,
                format!("no terminal {tid}: create it with `poshsm admin terminal create {tid}`"),
            )
        })
    }

    pub fn list_terminals(
        &self,
        page_size: usize,
        page_token: &str,
    ) -> Result<(Vec<TerminalInfo>, String), HsmError> {
        let page_size = if page_size == 0 {
            100
        } else {
            page_size.min(1000)
        };
        let list = self.store().list_terminals(page_token, page_size + 1)?;
        let more = list.len() > page_size;
        let list: Vec<_> = list.into_iter().take(page_size).collect();
        let next = if more {
            list.last()
                .map(|t| t.terminal_id.clone())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok((list, next))
    }

    /// The terminal's TMK, or why it has none.
    fn terminal_tmk(&self, t: &TerminalRecord) -> Result<CachedKey, HsmError> {
        if t.tmk_key_id.is_empty() {
            return Err(err(
                Reason::TerminalHasNoTmk,
                format!("terminal {} has no TMK: load one with `poshsm admin terminal create {} --tmk …`", t.terminal_id, t.terminal_id),
            ));
        }
        match self.load(&KeyRef::Id(t.tmk_key_id.clone())) {
            Ok(k) => Ok(k),
            Err(e) if e.reason == Reason::KeyRetired || e.reason == Reason::UnknownKey => Err(err(
                Reason::TerminalHasNoTmk,
                format!(
                    "terminal {}'s TMK {} is no longer usable ({}): load a new TMK",
                    t.terminal_id, t.tmk_key_id, e.message
                ),
            )),
            Err(e) => Err(e),
        }
    }

    /// Signs a terminal in and flushes before returning.
    pub fn sign_in(&self, actor: &str, req: SignIn) -> Result<SignInResult, HsmError> {
        let out = self.sign_in_unflushed(actor, req)?;
        self.flush()?;
        Ok(out)
    }

    /// Signs a terminal in and commits, without waiting for the disk: the caller
    /// must flush (e.g. [`Hsm::flush_async`]) before it answers anyone.
    pub fn sign_in_unflushed(&self, actor: &str, req: SignIn) -> Result<SignInResult, HsmError> {
        self.check_ready()?;
        let cv_len = match req.check_value_length {
            0 | 4 => 4,
            8 => 8,
            n => {
                return Err(err(
                    Reason::InvalidArgument,
                    format!("check_value_length must be 4 or 8, got {n}"),
                ))
            }
        };
        let (terminal, tmk, audit_tid) = match &req.source {
            SignInSource::Terminal(tid) => {
                let t = self.get_terminal(tid)?;
                let tmk = self.terminal_tmk(&t)?;
                let tid = t.terminal_id.clone();
                (Some(t), tmk, tid)
            }
            SignInSource::TerminalPendingTmk(tid) => {
                let t = self.get_terminal(tid)?;
                if t.pending_tmk_key_id.is_empty() {
                    return Err(err(Reason::NoPendingTmk, format!("terminal {tid} has no pending TMK: send one with ChangeTerminalTmk first")));
                }
                let tmk = self.load(&KeyRef::Id(t.pending_tmk_key_id.clone()))?;
                let tid = t.terminal_id.clone();
                (Some(t), tmk, tid)
            }
            SignInSource::Tmk { tmk, terminal_id } => (None, self.load(tmk)?, terminal_id.clone()),
        };
        if tmk.key_type() != KeyType::Tmk {
            return Err(err(
                Reason::KeyUsageMismatch,
                format!("sign-in needs a TMK; the key given is a {}", tmk.key_type()),
            ));
        }
        let (layout, include_tdk) = self.resolve_layout(&req, tmk.algorithm())?;
        let (pik_alg, mak_alg, tdk_alg) = layout_algorithms(layout, tmk.algorithm());
        let stored = terminal.is_some();
        let version = terminal.as_ref().map(|t| t.key_version + 1).unwrap_or(1);

        let mut records: Vec<KeyRecord> = Vec::new();
        let mut loaded: Vec<LoadedKey> = Vec::new();
        let mut outs: Vec<WorkingKeyOut> = Vec::new();
        let mut field62 = Vec::with_capacity(64);
        let types: &[(KeyType, Algorithm)] = &[
            (KeyType::Tpk, pik_alg),
            (KeyType::Tak, mak_alg),
            (KeyType::Tdk, tdk_alg),
        ];
        for (i, (kt, alg)) in types.iter().enumerate() {
            if i == 2 && !include_tdk {
                break;
            }
            let fresh = KeyMaterial::generate(*alg)?;
            let (key_block, key_id, lk) = if stored {
                let (rec, lk) = self.new_record(*kt, *alg, fresh.expose(), false, "", version)?;
                let out = (rec.key_block.clone(), rec.key_id.clone(), lk);
                records.push(rec);
                out
            } else {
                let lk = LoadedKey::new(
                    KeyMeta {
                        key_type: *kt,
                        algorithm: *alg,
                        exportable: false,
                        key_id: None,
                        kcv: String::new(),
                    },
                    fresh.expose(),
                )?;
                (
                    keys::wrap_under_lmk(&self.lmks().current, &lk)?,
                    String::new(),
                    lk,
                )
            };
            let mut under_tmk = fresh.expose().to_vec();
            if under_tmk.len() % tmk.cipher().block_len() != 0 {
                return Err(err(
                    Reason::Internal,
                    "working key length does not fit the TMK's block",
                ));
            }
            tmk.cipher().ecb_encrypt(&mut under_tmk)?;
            let mut check_value = kcv::encrypt_zeros(lk.cipher());
            check_value.truncate(cv_len);
            field62.extend_from_slice(&under_tmk);
            if *kt == KeyType::Tak
                && matches!(
                    layout,
                    Field62Layout::Unionpay003 | Field62Layout::Unionpay004
                )
            {
                // single-length MAK in a 16-byte slot
                field62.extend_from_slice(&[0u8; 8]);
            }
            field62.extend_from_slice(&check_value);
            outs.push(WorkingKeyOut {
                under_tmk,
                check_value,
                key_block,
                key_id,
                kcv: lk.meta().kcv.clone(),
            });
            loaded.push(lk);
        }
        let kcvs: Vec<String> = outs.iter().map(|o| o.kcv.clone()).collect();
        let detail = format!(
            "terminal={audit_tid} version={version} layout={layout:?} tmk_kcv={} kcvs={}{}",
            tmk.meta().kcv,
            kcvs.join(","),
            if stored { "" } else { " stateless" }
        );
        let mut batch = Batch {
            audit: vec![AuditDraft {
                actor: actor.to_string(),
                operation: "SignIn".into(),
                key_id: tmk.meta().key_id.clone().unwrap_or_default(),
                outcome: "OK".into(),
                detail,
            }],
            ..Default::default()
        };
        let now = crate::now_unix();
        if let Some(t) = &terminal {
            let set = WorkingSet {
                pik: outs[0].key_id.clone(),
                mak: outs[1].key_id.clone(),
                tdk: outs.get(2).map(|o| o.key_id.clone()).unwrap_or_default(),
                issued_unix: now,
                key_version: version,
            };
            if let Some(old) = &t.previous {
                batch.delete_keys.extend([old.pik.clone(), old.mak.clone()]);
                if !old.tdk.is_empty() {
                    batch.delete_keys.push(old.tdk.clone());
                }
            }
            let mut updated = t.clone();
            if matches!(req.source, SignInSource::TerminalPendingTmk(_)) {
                // The terminal proved it holds the new TMK: it becomes current.
                updated.tmk_key_id = std::mem::take(&mut updated.pending_tmk_key_id);
                updated.tmk_kcv = tmk.meta().kcv.clone();
            }
            updated.previous = t.current.clone();
            updated.current = Some(set);
            updated.key_version = version;
            updated.last_sign_in_unix = now;
            batch.put_keys = records;
            batch.update_terminals.push((updated, t.key_version));
        }
        // A rotation between the wrap above and this commit re-wraps the
        // records: hand out the blocks as stored.
        for rec in self.commit(batch)? {
            if let Some(o) = outs.iter_mut().find(|o| o.key_id == rec.key_id) {
                o.key_block = rec.key_block;
            }
        }

        if let Some(t) = &terminal {
            // Hot path: the new keys are ready; the old MAK verifies during the grace window.
            let prev_mak = self
                .terminal_cache_with(&t.terminal_id, |tk| tk.mak.clone())
                .flatten()
                .map(|m| (m, now));
            let mut it = loaded.into_iter();
            let mut next_cached = |id: &str| it.next().map(|lk| self.cache_insert(id, lk));
            let pik = next_cached(&outs[0].key_id);
            let mak = next_cached(&outs[1].key_id);
            if let Some(o) = outs.get(2) {
                next_cached(&o.key_id);
            }
            self.terminal_cache_put(
                &t.terminal_id,
                self.terminal_entry(&t.terminal_id, pik, mak, prev_mak),
            );
        }
        let mut outs = outs.into_iter();
        let (Some(pik), Some(mak)) = (outs.next(), outs.next()) else {
            // invariant: the loop above always produces a PIK and a MAK
            return Err(err(Reason::Internal, "sign-in produced no PIK/MAK"));
        };
        Ok(SignInResult {
            pik,
            mak,
            tdk: outs.next(),
            field62,
            key_version: version,
            layout,
        })
    }

    fn cache_insert(&self, id: &str, lk: LoadedKey) -> CachedKey {
        self.cache_ref().insert(id.to_string(), lk)
    }

    /// The terminal's current working keys (hot path: cached after the first call).
    /// `f` applied to them: under the cache's read lock on the hot path, so
    /// `f` must not touch the terminal cache.
    pub(crate) fn with_terminal_keys<R>(
        &self,
        terminal_id: &str,
        f: impl Fn(&TerminalKeys) -> R,
    ) -> Result<R, HsmError> {
        if let Some(r) = self.terminal_cache_with(terminal_id, &f) {
            return Ok(r);
        }
        let generation = self.terminal_cache_generation(terminal_id);
        let t = self.get_terminal(terminal_id)?;
        let Some(cur) = &t.current else {
            return Ok(f(&self.terminal_entry(&t.terminal_id, None, None, None)));
        };
        // The terminal record is a side table: the key blocks' own types decide, so a
        // record with swapped ids cannot make the PIK a MAC key (an oracle) or vice versa.
        let working = |id: &str, want: KeyType| -> Result<CachedKey, HsmError> {
            let k = self.load(&KeyRef::Id(id.to_string()))?;
            if k.key_type() != want {
                let msg = format!(
                    "terminal {}'s record names key {id} as its {want}, but that key is a {}",
                    t.terminal_id,
                    k.key_type()
                );
                self.raise_alarm(msg.clone());
                return Err(err(Reason::KeyUsageMismatch, msg));
            }
            Ok(k)
        };
        let pik = Some(working(&cur.pik, KeyType::Tpk)?);
        let mak = Some(working(&cur.mak, KeyType::Tak)?);
        let prev_mak = match &t.previous {
            Some(p) => match working(&p.mak, KeyType::Tak) {
                Ok(k) => Some((k, cur.issued_unix)),
                Err(e) if e.reason == Reason::KeyUsageMismatch => return Err(e),
                Err(_) => None,
            },
            None => None,
        };
        let tk = self.terminal_entry(&t.terminal_id, pik, mak, prev_mak);
        let r = f(&tk);
        self.terminal_cache_fill(&t.terminal_id, tk, generation);
        Ok(r)
    }
}

/// A new TMK for a terminal, encrypted under its current TMK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TmkChange {
    /// The new TMK, ECB under the current TMK (the form terminals accept).
    pub under_current_tmk: Vec<u8>,
    /// First 4 bytes of E(new TMK, zeros).
    pub check_value: Vec<u8>,
    pub key_id: String,
    pub kcv: String,
}

impl Hsm {
    /// Remote TMK change (远程更新主密钥): generates a new TMK and returns it under
    /// the terminal's current TMK. It stays *pending* — the old TMK keeps
    /// working — until `confirm_terminal_tmk` or a sign-in under it, so a lost
    /// response never strands the terminal. A newer change replaces an older pending one.
    pub fn change_terminal_tmk(
        &self,
        actor: &str,
        terminal_id: &str,
    ) -> Result<TmkChange, HsmError> {
        self.check_ready()?;
        let t = self.get_terminal(terminal_id)?;
        let cur = self.terminal_tmk(&t)?;
        let alg = cur.algorithm();
        let fresh = KeyMaterial::generate(alg)?;
        let (rec, lk) = self.new_record(KeyType::Tmk, alg, fresh.expose(), false, "", 1)?;
        let mut under = fresh.expose().to_vec();
        cur.cipher().ecb_encrypt(&mut under)?;
        let mut check_value = kcv::encrypt_zeros(lk.cipher());
        check_value.truncate(4);
        let mut updated = t.clone();
        let mut batch = Batch::default();
        if !t.pending_tmk_key_id.is_empty() {
            batch.delete_keys.push(t.pending_tmk_key_id.clone());
        }
        updated.pending_tmk_key_id = rec.key_id.clone();
        batch.audit.push(AuditDraft {
            actor: actor.to_string(),
            operation: "ChangeTerminalTmk".into(),
            key_id: rec.key_id.clone(),
            outcome: "OK".into(),
            detail: format!(
                "terminal={} current_tmk_kcv={} pending_tmk_kcv={}",
                t.terminal_id,
                cur.meta().kcv,
                rec.kcv
            ),
        });
        let out = TmkChange {
            under_current_tmk: under,
            check_value,
            key_id: rec.key_id.clone(),
            kcv: rec.kcv.clone(),
        };
        batch.put_keys.push(rec);
        batch.update_terminals.push((updated, t.key_version));
        self.commit(batch)?;
        self.flush()?;
        Ok(out)
    }

    /// Makes the pending TMK current (the POSP saw the terminal accept it).
    pub fn confirm_terminal_tmk(
        &self,
        actor: &str,
        terminal_id: &str,
    ) -> Result<TerminalInfo, HsmError> {
        self.check_ready()?;
        let t = self.get_terminal(terminal_id)?;
        if t.pending_tmk_key_id.is_empty() {
            return Err(err(
                Reason::NoPendingTmk,
                format!("terminal {} has no pending TMK to confirm", t.terminal_id),
            ));
        }
        let new = self.load(&KeyRef::Id(t.pending_tmk_key_id.clone()))?;
        let mut updated = t.clone();
        updated.tmk_key_id = std::mem::take(&mut updated.pending_tmk_key_id);
        updated.tmk_kcv = new.meta().kcv.clone();
        self.commit(Batch {
            update_terminals: vec![(updated.clone(), t.key_version)],
            audit: vec![AuditDraft {
                actor: actor.to_string(),
                operation: "ConfirmTerminalTmk".into(),
                key_id: updated.tmk_key_id.clone(),
                outcome: "OK".into(),
                detail: format!(
                    "terminal={} old_tmk_kcv={} new_tmk_kcv={}",
                    t.terminal_id, t.tmk_kcv, updated.tmk_kcv
                ),
            }],
            ..Default::default()
        })?;
        self.flush()?;
        Ok(updated)
    }
}
