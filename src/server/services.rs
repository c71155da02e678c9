//! The tonic service implementations: authorise, convert, call the core.
//! Calls that write (and flush) run on the blocking pool; the pure crypto
//! calls run inline — they take microseconds.

use super::convert as cv;
use super::{status, Authz, Role};
use crate::hsm::{self, Hsm, HsmError};
use crate::proto as pb;
use crate::store::audit::AuditDraft;
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request, Response, Status};

const DATA_PLANE: &[Role] = &[Role::Posp, Role::Admin];
const CONTROL: &[Role] = &[Role::Admin];
const READ_ONLY: &[Role] = &[Role::Admin, Role::Auditor];
/// Largest batch accepted by the batch RPCs.
pub const MAX_BATCH: usize = 10_000;
/// Messages longer than this (possible only when `max_mac_message` is raised
/// above its 64 KiB default) are MACed on the blocking pool: an I/O thread
/// serves other connections and must not stall for long.
const LONG_INPUT: usize = 64 * 1024;
/// A batch lets the I/O thread's other tasks run after this many items.
const BATCH_SLICE: usize = 256;

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, HsmError> + Send + 'static,
) -> Result<T, Status> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(status),
        Err(_) => Err(Status::internal("operation task failed")),
    }
}

pub struct CryptoService {
    hsm: Arc<Hsm>,
    authz: Arc<Authz>,
    /// Sign-ins in their CPU-and-commit phase at once (each holds a blocking
    /// thread). Enough of them for the store to combine their commits into
    /// one transaction per group (A/B on 2 cores: 4 slots 3.1k/s, 64 slots
    /// 4.7k/s); the rest wait here without a thread. The fsync that follows
    /// is shared by all of them (group commit).
    sign_in_slots: Arc<tokio::sync::Semaphore>,
}

impl CryptoService {
    pub fn new(hsm: Arc<Hsm>, authz: Arc<Authz>) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        CryptoService {
            hsm,
            authz,
            sign_in_slots: Arc::new(tokio::sync::Semaphore::new((cores * 32).min(256))),
        }
    }

    /// A security-trigger refusal (or a trip) leaves only after its audit
    /// record is on disk, as it did when the core wrote it inline; the write
    /// runs on the blocking pool, never on the connection's I/O thread. A
    /// failed write has raised the alarm; the answer stays the same.
    async fn trigger_audited(&self) {
        if self.hsm.has_deferred_audit() {
            let hsm = self.hsm.clone();
            let _ = blocking(move || hsm.write_deferred_audit()).await;
        }
    }
}

fn verify_one(hsm: &Hsm, mut r: pb::VerifyMacRequest) -> Result<bool, HsmError> {
    let (source, algorithm) = cv::verify_mac(&mut r)?;
    hsm.verify_mac(
        &hsm::MacRequest {
            source,
            algorithm,
            message: &r.message,
            mac_length: 0,
        },
        &r.mac,
    )
}

fn batch_error(e: HsmError) -> pb::BatchError {
    let s = status(e.clone());
    pb::BatchError {
        code: s.code() as u32,
        reason: e.code().to_string(),
        message: e.message,
    }
}

#[tonic::async_trait]
impl pb::crypto_server::Crypto for CryptoService {
    async fn sign_in(
        &self,
        req: Request<pb::SignInRequest>,
    ) -> Result<Response<pb::SignInResponse>, Status> {
        let caller = self.authz.check(&req, DATA_PLANE, "sign terminals in")?;
        let sreq = cv::sign_in(req.get_ref()).map_err(status)?;
        let hsm = self.hsm.clone();
        let out = {
            let _slot = self
                .sign_in_slots
                .acquire()
                .await
                .map_err(|_| Status::unavailable("shutting down"))?;
            blocking(move || hsm.sign_in_unflushed(&caller.identity, sreq)).await?
        };
        // Durable before reply: the group flush covers this commit.
        self.hsm.flush_async().await.map_err(status)?;
        Ok(Response::new(pb::SignInResponse {
            pik: Some(cv::working_key(out.pik)),
            mak: Some(cv::working_key(out.mak)),
            tdk: out.tdk.map(cv::working_key),
            field62: out.field62,
            key_version: out.key_version,
            layout: cv::layout_to_pb(out.layout) as i32,
        }))
    }

    async fn translate_pin(
        &self,
        req: Request<pb::TranslatePinRequest>,
    ) -> Result<Response<pb::TranslatePinResponse>, Status> {
        self.authz.permit(&req, DATA_PLANE, "translate PINs")?;
        let t = cv::translate_pin(req.into_inner()).map_err(status)?;
        let out = self.hsm.translate_pin(&t);
        self.trigger_audited().await;
        let out = out.map_err(status)?;
        Ok(Response::new(pb::TranslatePinResponse {
            pin_block: out.pin_block,
            dest_kcv: out.dest_kcv,
        }))
    }

    async fn generate_mac(
        &self,
        req: Request<pb::GenerateMacRequest>,
    ) -> Result<Response<pb::GenerateMacResponse>, Status> {
        self.authz.permit(&req, DATA_PLANE, "generate MACs")?;
        let mut r = req.into_inner();
        let (source, algorithm) = cv::generate_mac(&mut r).map_err(status)?;
        let long = r.message.len() > LONG_INPUT;
        let run = move |hsm: &Hsm| {
            hsm.generate_mac(&hsm::MacRequest {
                source,
                algorithm,
                message: &r.message,
                mac_length: r.mac_length as usize,
            })
        };
        let mac = if long {
            let hsm = self.hsm.clone();
            blocking(move || run(&hsm)).await?
        } else {
            run(&self.hsm).map_err(status)?
        };
        Ok(Response::new(pb::GenerateMacResponse { mac }))
    }

    async fn verify_mac(
        &self,
        req: Request<pb::VerifyMacRequest>,
    ) -> Result<Response<pb::VerifyMacResponse>, Status> {
        self.authz.permit(&req, DATA_PLANE, "verify MACs")?;
        let r = req.into_inner();
        let valid = if r.message.len() > LONG_INPUT {
            let hsm = self.hsm.clone();
            match tokio::task::spawn_blocking(move || verify_one(&hsm, r)).await {
                Ok(v) => v,
                Err(_) => return Err(Status::internal("operation task failed")),
            }
        } else {
            verify_one(&self.hsm, r)
        };
        self.trigger_audited().await;
        Ok(Response::new(pb::VerifyMacResponse {
            valid: valid.map_err(status)?,
        }))
    }

    async fn translate_pin_batch(
        &self,
        req: Request<pb::TranslatePinBatchRequest>,
    ) -> Result<Response<pb::TranslatePinBatchResponse>, Status> {
        self.authz.permit(&req, DATA_PLANE, "translate PINs")?;
        let items = req.into_inner().items;
        if items.len() > MAX_BATCH {
            return Err(status(hsm::err(
                hsm::Reason::InvalidArgument,
                format!(
                    "a batch holds at most {MAX_BATCH} items, got {}",
                    items.len()
                ),
            )));
        }
        let mut results = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            if i > 0 && i % BATCH_SLICE == 0 {
                tokio::task::yield_now().await;
            }
            let r = cv::translate_pin(item).and_then(|t| self.hsm.translate_pin(&t));
            results.push(pb::TranslatePinResult {
                result: Some(match r {
                    Ok(o) => pb::translate_pin_result::Result::Ok(pb::TranslatePinResponse {
                        pin_block: o.pin_block,
                        dest_kcv: o.dest_kcv,
                    }),
                    Err(e) => pb::translate_pin_result::Result::Error(batch_error(e)),
                }),
            });
        }
        self.trigger_audited().await;
        Ok(Response::new(pb::TranslatePinBatchResponse { results }))
    }

    async fn translate_key_block(
        &self,
        req: Request<pb::TranslateKeyBlockRequest>,
    ) -> Result<Response<pb::TranslateKeyBlockResponse>, Status> {
        let caller = self.authz.check(&req, DATA_PLANE, "translate key blocks")?;
        let block = req.into_inner().key_block;
        let hsm = self.hsm.clone();
        let t = blocking(move || hsm.translate_key_block(&caller.identity, &block)).await?;
        Ok(Response::new(pb::TranslateKeyBlockResponse {
            key_block: t.key_block,
            kcv: t.kcv,
            key_type: cv::key_type_to_pb(t.key_type) as i32,
            translated: t.translated,
            lmk_kcv: t.lmk_kcv,
        }))
    }

    async fn translate_data(
        &self,
        req: Request<pb::TranslateDataRequest>,
    ) -> Result<Response<pb::TranslateDataResponse>, Status> {
        self.authz.permit(&req, DATA_PLANE, "translate data")?;
        let r = req.into_inner();
        let source = cv::translate_data_source(r.source.as_ref()).map_err(status)?;
        let sm = cv::data_mode(r.source_cipher.as_ref()).map_err(status)?;
        let dm = cv::data_mode(r.dest_cipher.as_ref()).map_err(status)?;
        let dest = cv::key_ref(r.dest_key.as_ref(), "dest_key").map_err(status)?;
        let data = self
            .hsm
            .translate_data(&source, &sm, &dest, &dm, &r.data)
            .map_err(status)?;
        Ok(Response::new(pb::TranslateDataResponse { data }))
    }

    async fn decrypt_data(
        &self,
        req: Request<pb::DecryptDataRequest>,
    ) -> Result<Response<pb::DecryptDataResponse>, Status> {
        let caller = self
            .authz
            .check(&req, &[Role::DataDecrypt], "decrypt data to clear")?;
        let r = req.into_inner();
        let source = cv::decrypt_data_source(r.source.as_ref()).map_err(status)?;
        let mode = cv::data_mode(r.cipher.as_ref()).map_err(status)?;
        let hsm = self.hsm.clone();
        let clear =
            blocking(move || hsm.decrypt_data(&caller.identity, &source, &mode, &r.data)).await?;
        Ok(Response::new(pb::DecryptDataResponse {
            data: clear.to_vec(),
        }))
    }

    async fn change_terminal_tmk(
        &self,
        req: Request<pb::ChangeTerminalTmkRequest>,
    ) -> Result<Response<pb::ChangeTerminalTmkResponse>, Status> {
        let caller = self.authz.check(&req, DATA_PLANE, "change terminal TMKs")?;
        let tid = req.into_inner().terminal_id;
        let hsm = self.hsm.clone();
        let c = blocking(move || hsm.change_terminal_tmk(&caller.identity, &tid)).await?;
        Ok(Response::new(pb::ChangeTerminalTmkResponse {
            under_current_tmk: c.under_current_tmk,
            check_value: c.check_value,
            key_id: c.key_id,
            kcv: c.kcv,
        }))
    }

    async fn confirm_terminal_tmk(
        &self,
        req: Request<pb::ConfirmTerminalTmkRequest>,
    ) -> Result<Response<pb::TerminalInfo>, Status> {
        let caller = self
            .authz
            .check(&req, DATA_PLANE, "confirm terminal TMKs")?;
        let tid = req.into_inner().terminal_id;
        let hsm = self.hsm.clone();
        Ok(Response::new(cv::terminal_info(
            blocking(move || hsm.confirm_terminal_tmk(&caller.identity, &tid)).await?,
        )))
    }

    async fn verify_mac_batch(
        &self,
        req: Request<pb::VerifyMacBatchRequest>,
    ) -> Result<Response<pb::VerifyMacBatchResponse>, Status> {
        self.authz.permit(&req, DATA_PLANE, "verify MACs")?;
        let items = req.into_inner().items;
        if items.len() > MAX_BATCH {
            return Err(status(hsm::err(
                hsm::Reason::InvalidArgument,
                format!(
                    "a batch holds at most {MAX_BATCH} items, got {}",
                    items.len()
                ),
            )));
        }
        let mut results = Vec::with_capacity(items.len());
        let mut bytes = 0usize;
        for (i, item) in items.into_iter().enumerate() {
            // Yield every BATCH_SLICE items, or sooner when the messages are long.
            bytes += item.message.len();
            if i > 0 && (i % BATCH_SLICE == 0 || bytes > LONG_INPUT) {
                bytes = 0;
                tokio::task::yield_now().await;
            }
            results.push(pb::VerifyMacResult {
                result: Some(match verify_one(&self.hsm, item) {
                    Ok(valid) => pb::verify_mac_result::Result::Ok(pb::VerifyMacResponse { valid }),
                    Err(e) => pb::verify_mac_result::Result::Error(batch_error(e)),
                }),
            });
        }
        self.trigger_audited().await;
        Ok(Response::new(pb::VerifyMacBatchResponse { results }))
    }
}

pub struct KeyAdminService {
    hsm: Arc<Hsm>,
    authz: Arc<Authz>,
}

impl KeyAdminService {
    pub fn new(hsm: Arc<Hsm>, authz: Arc<Authz>) -> Self {
        KeyAdminService { hsm, authz }
    }

    /// Control-plane authorisation; a denial is itself audited (durably,
    /// on the blocking pool: the commit and fsync stay off the async workers).
    async fn admin<T>(
        &self,
        req: &Request<T>,
        allowed: &[Role],
        op: &str,
    ) -> Result<String, Status> {
        let (denied, actor) = match self.authz.check(req, allowed, op) {
            Ok(c) => return Ok(c.identity),
            Err(s) => (s, self.authz.identity(req).unwrap_or_default()),
        };
        let hsm = self.hsm.clone();
        let draft = AuditDraft {
            actor,
            operation: op.to_string(),
            outcome: "PERMISSION_DENIED".into(),
            ..Default::default()
        };
        let _ = tokio::task::spawn_blocking(move || hsm.audit(vec![draft])).await;
        Err(denied)
    }
}

type AuditStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::AuditEvent, Status>> + Send>>;

#[tonic::async_trait]
impl pb::key_admin_server::KeyAdmin for KeyAdminService {
    async fn generate_key(
        &self,
        req: Request<pb::GenerateKeyRequest>,
    ) -> Result<Response<pb::KeyInfo>, Status> {
        let actor = self.admin(&req, CONTROL, "GenerateKey").await?;
        let g = cv::generate_key(req.into_inner()).map_err(status)?;
        let hsm = self.hsm.clone();
        Ok(Response::new(cv::key_info(
            blocking(move || hsm.generate_key(&actor, g)).await?,
        )))
    }

    async fn import_key_components(
        &self,
        req: Request<pb::ImportKeyComponentsRequest>,
    ) -> Result<Response<pb::KeyInfo>, Status> {
        let actor = self.admin(&req, CONTROL, "ImportKeyComponents").await?;
        let c = cv::import_components(req.into_inner()).map_err(status)?;
        let hsm = self.hsm.clone();
        Ok(Response::new(cv::key_info(
            blocking(move || hsm.import_key_components(&actor, c)).await?,
        )))
    }

    async fn import_key(
        &self,
        req: Request<pb::ImportKeyRequest>,
    ) -> Result<Response<pb::KeyInfo>, Status> {
        let actor = self.admin(&req, CONTROL, "ImportKey").await?;
        let i = cv::import_key(req.into_inner()).map_err(status)?;
        let hsm = self.hsm.clone();
        Ok(Response::new(cv::key_info(
            blocking(move || hsm.import_key(&actor, i)).await?,
        )))
    }

    async fn export_key(
        &self,
        req: Request<pb::ExportKeyRequest>,
    ) -> Result<Response<pb::ExportKeyResponse>, Status> {
        let actor = self.admin(&req, CONTROL, "ExportKey").await?;
        let e = cv::export_key(req.into_inner()).map_err(status)?;
        let hsm = self.hsm.clone();
        let out = blocking(move || hsm.export_key(&actor, e)).await?;
        Ok(Response::new(pb::ExportKeyResponse {
            tr31_key_block: out.tr31_key_block,
            x917_ecb: out.x917_ecb,
            kcv: out.kcv,
        }))
    }

    async fn create_terminal(
        &self,
        req: Request<pb::CreateTerminalRequest>,
    ) -> Result<Response<pb::TerminalInfo>, Status> {
        let actor = self.admin(&req, CONTROL, "CreateTerminal").await?;
        let c = cv::create_terminal(req.into_inner()).map_err(status)?;
        let hsm = self.hsm.clone();
        Ok(Response::new(cv::terminal_info(
            blocking(move || hsm.create_terminal(&actor, c)).await?,
        )))
    }

    async fn get_key(&self, req: Request<pb::KeyRef>) -> Result<Response<pb::KeyInfo>, Status> {
        self.admin(&req, READ_ONLY, "GetKey").await?;
        let r = cv::key_ref(Some(req.get_ref()), "key").map_err(status)?;
        let hsm = self.hsm.clone();
        Ok(Response::new(cv::key_info(
            blocking(move || hsm.get_key(&r)).await?,
        )))
    }

    async fn list_keys(
        &self,
        req: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        self.admin(&req, READ_ONLY, "ListKeys").await?;
        let r = req.into_inner();
        let kt = cv::list_keys_type(r.key_type).map_err(status)?;
        let hsm = self.hsm.clone();
        let (keys, next) =
            blocking(move || hsm.list_keys(kt, r.page_size as usize, &r.page_token)).await?;
        Ok(Response::new(pb::ListKeysResponse {
            keys: keys.into_iter().map(cv::key_info).collect(),
            next_page_token: next,
        }))
    }

    async fn retire_key(&self, req: Request<pb::KeyRef>) -> Result<Response<pb::KeyInfo>, Status> {
        let actor = self.admin(&req, CONTROL, "RetireKey").await?;
        let r = cv::key_ref(Some(req.get_ref()), "key").map_err(status)?;
        let hsm = self.hsm.clone();
        Ok(Response::new(cv::key_info(
            blocking(move || hsm.retire_key(&actor, &r)).await?,
        )))
    }

    async fn rotate_key(&self, req: Request<pb::KeyRef>) -> Result<Response<pb::KeyInfo>, Status> {
        let actor = self.admin(&req, CONTROL, "RotateKey").await?;
        let r = cv::key_ref(Some(req.get_ref()), "key").map_err(status)?;
        let hsm = self.hsm.clone();
        Ok(Response::new(cv::key_info(
            blocking(move || hsm.rotate_key(&actor, &r)).await?,
        )))
    }

    async fn get_terminal(
        &self,
        req: Request<pb::GetTerminalRequest>,
    ) -> Result<Response<pb::TerminalInfo>, Status> {
        self.admin(&req, READ_ONLY, "GetTerminal").await?;
        let tid = req.into_inner().terminal_id;
        let hsm = self.hsm.clone();
        Ok(Response::new(cv::terminal_info(
            blocking(move || hsm.get_terminal(&tid)).await?,
        )))
    }

    async fn list_terminals(
        &self,
        req: Request<pb::ListTerminalsRequest>,
    ) -> Result<Response<pb::ListTerminalsResponse>, Status> {
        self.admin(&req, READ_ONLY, "ListTerminals").await?;
        let r = req.into_inner();
        let hsm = self.hsm.clone();
        let (list, next) =
            blocking(move || hsm.list_terminals(r.page_size as usize, &r.page_token)).await?;
        Ok(Response::new(pb::ListTerminalsResponse {
            terminals: list.into_iter().map(cv::terminal_info).collect(),
            next_page_token: next,
        }))
    }

    type GetAuditLogStream = AuditStream;

    async fn get_audit_log(
        &self,
        req: Request<pb::GetAuditLogRequest>,
    ) -> Result<Response<AuditStream>, Status> {
        self.admin(&req, READ_ONLY, "GetAuditLog").await?;
        let since = req.into_inner().since_seq;
        let hsm = self.hsm.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::task::spawn_blocking(move || {
            let mut next = since.max(1);
            loop {
                let page = match hsm.audit_log(next, 512) {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(status(e)));
                        return;
                    }
                };
                let Some(last) = page.last().map(|r| r.seq) else {
                    return;
                };
                for rec in page {
                    if tx.blocking_send(Ok(cv::audit_event(rec))).is_err() {
                        return;
                    }
                }
                next = last + 1;
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn verify_audit_log(
        &self,
        req: Request<pb::VerifyAuditLogRequest>,
    ) -> Result<Response<pb::VerifyAuditLogResponse>, Status> {
        self.admin(&req, READ_ONLY, "VerifyAuditLog").await?;
        let hsm = self.hsm.clone();
        let r = tokio::task::spawn_blocking(move || hsm.verify_audit_log())
            .await
            .map_err(|_| Status::internal("task failed"))?;
        Ok(Response::new(match r {
            Ok(n) => pb::VerifyAuditLogResponse {
                valid: true,
                events: n,
                problem: String::new(),
            },
            Err(e) => pb::VerifyAuditLogResponse {
                valid: false,
                events: 0,
                problem: e.message,
            },
        }))
    }

    async fn get_status(
        &self,
        req: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        self.admin(&req, READ_ONLY, "GetStatus").await?;
        // The key and terminal counts scan the store: off the I/O thread.
        let hsm = self.hsm.clone();
        let s = blocking(move || Ok(hsm.status())).await?;
        Ok(Response::new(pb::StatusResponse {
            state: s.state.to_string(),
            reason: s.reason,
            lmk_kcv: s.lmk_kcv,
            version: s.version.to_string(),
            keys: s.keys,
            terminals: s.terminals,
            lmk: Some(cv::lmk_status(s.lmk)),
        }))
    }

    async fn rotate_lmk(
        &self,
        req: Request<pb::RotateLmkRequest>,
    ) -> Result<Response<pb::LmkChangeResponse>, Status> {
        let actor = self.admin(&req, CONTROL, "RotateLmk").await?;
        let r = req.into_inner();
        let pw = cv::passphrases(r.passphrases).map_err(status)?;
        let adopt = Some(r.adopt_sealed_set).filter(|s| !s.is_empty());
        let hsm = self.hsm.clone();
        let c = blocking(move || hsm.rotate_lmk(&actor, pw, adopt.as_deref())).await?;
        Ok(Response::new(pb::LmkChangeResponse {
            lmk: Some(cv::lmk_status(c.state)),
            keys_rewrapped: c.keys_rewrapped,
        }))
    }

    async fn retire_previous_lmk(
        &self,
        req: Request<pb::RetirePreviousLmkRequest>,
    ) -> Result<Response<pb::LmkChangeResponse>, Status> {
        let actor = self.admin(&req, CONTROL, "RetirePreviousLmk").await?;
        let hsm = self.hsm.clone();
        let c = blocking(move || hsm.retire_previous_lmk(&actor)).await?;
        Ok(Response::new(pb::LmkChangeResponse {
            lmk: Some(cv::lmk_status(c.state)),
            keys_rewrapped: c.keys_rewrapped,
        }))
    }
}
