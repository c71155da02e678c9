//! A payShield-compatible host-command port (`serve --payshield-listen ADDR`),
//! so a POSP written for a Thales payShield 9000/10K can use poshsm unchanged
//! for the commands it needs.
//!
//! Framing: a 2-byte big-endian length, a header of `header_len` bytes
//! (echoed), a 2-character command code and its fields. The response code is
//! the command code with the second character advanced by one (CA→CB), then a
//! 2-digit error code (`00` = success), then the result fields.
//!
//! Keys travel as `S` + one of our LMK key blocks (TR-31 version D, exactly
//! the `key_block` of the gRPC API). Variant-LMK keys are refused: this module
//! has no variant LMK. Like `server`, this is an adapter over [`crate::hsm`]: it
//! never touches a key byte. Layouts, error codes and deviations:
//! docs/payshield.md.
//!
//! Robustness: every frame goes through [`frame`] (fuzzed); connections are
//! bounded in number and idle time; a frame whose length prefix exceeds
//! `max_frame` closes its connection (the stream cannot be resynchronised);
//! nothing a client sends stops the listener.

pub mod exec;
pub mod frame;
pub mod tls;

use crate::hsm::Hsm;
use crate::server::TlsMaterial;
use serde::Deserialize;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// payShield error codes this port answers with (docs/payshield.md).
pub mod code {
    pub const OK: &str = "00";
    pub const VERIFICATION_FAILURE: &str = "01";
    pub const INVALID_MODE_FLAG: &str = "02";
    pub const INVALID_INPUT_FORMAT: &str = "03";
    /// M6/M8: MAC size or algorithm. A0/A6/A8/BU: key type code.
    pub const INVALID_MAC_ALGORITHM: &str = "04";
    pub const INVALID_KEY_TYPE_CODE: &str = "04";
    /// M6/M8: key type field. BU: key length flag.
    pub const INVALID_KEY_TYPE_FIELD: &str = "05";
    pub const INVALID_KEY_LENGTH_FLAG: &str = "05";
    pub const INVALID_MESSAGE_LENGTH: &str = "06";
    pub const INVALID_PADDING: &str = "09";
    /// An imported key with a parity error, or weak.
    pub const KEY_PARITY: &str = "11";
    pub const INVALID_LMK_ID: &str = "13";
    pub const INVALID_INPUT: &str = "15";
    pub const INVALID_PIN_BLOCK: &str = "20";
    pub const INVALID_ACCOUNT: &str = "22";
    pub const INVALID_PIN_FORMAT: &str = "23";
    pub const PIN_LENGTH: &str = "24";
    pub const INVALID_KEY_SCHEME: &str = "26";
    pub const INCOMPATIBLE_KEY_LENGTH: &str = "27";
    pub const FUNCTION_NOT_PERMITTED: &str = "29";
    /// The security trigger (TERMINAL_THROTTLED).
    pub const THROTTLED: &str = "39";
    pub const INTERNAL: &str = "41";
    pub const UNKNOWN_COMMAND: &str = "67";
    pub const COMMAND_DISABLED: &str = "68";
    pub const PIN_FORMAT_DISABLED: &str = "69";
    pub const DATA_LENGTH: &str = "80";
    /// A variant-LMK key or key scheme: we have a key block LMK only.
    pub const VARIANT_KEY: &str = "A1";
    pub const WRONG_LMK: &str = "A3";
    pub const KEY_BLOCK_AUTH: &str = "A4";
    pub const WRAPPING_KEY_TOO_WEAK: &str = "A5";
    pub const INVALID_KEY_USAGE: &str = "A6";
    pub const INVALID_ALGORITHM: &str = "A7";
    pub const INVALID_EXPORT_FIELD: &str = "AA";
}

/// The commands enabled when `[payshield] commands` is not given: everything
/// implemented. A0/A6/A8/FA create or export keys; POSPs do that on payShield
/// (a ZPK/ZAK from the network under the ZMK, keys for terminals), so they are
/// on by default; remove them from the list to keep key creation on gRPC.
pub const DEFAULT_COMMANDS: [&str; 10] =
    ["NC", "A0", "BU", "CA", "CC", "M6", "M8", "FA", "A6", "A8"];

/// `[payshield]` in the daemon's config file.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PayshieldConfig {
    /// Serve the port (also switched on by `--payshield-listen`).
    pub enabled: bool,
    /// Where to listen; `--payshield-listen` wins.
    pub listen: String,
    /// Bytes of message header echoed in every response.
    pub header_len: usize,
    /// Enabled command codes; others answer error 68.
    pub commands: Vec<String>,
    pub max_connections: usize,
    /// A connection with no complete frame for this long is closed.
    pub idle_timeout_secs: u64,
    /// Largest frame (after the length prefix) accepted.
    pub max_frame: usize,
    /// TLS with client certificates on this port.
    pub tls: bool,
    /// TLS files; default to the daemon's `[tls]` ones (or DATA_DIR/certs).
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Client certificate CNs admitted over TLS; every one acts with the posp role.
    pub clients: Vec<String>,
}

impl Default for PayshieldConfig {
    fn default() -> Self {
        PayshieldConfig {
            enabled: false,
            listen: "127.0.0.1:1500".into(),
            header_len: 4,
            commands: DEFAULT_COMMANDS.iter().map(|s| s.to_string()).collect(),
            max_connections: 1024,
            idle_timeout_secs: 300,
            max_frame: 32 * 1024,
            tls: false,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            clients: vec!["posp".into()],
        }
    }
}

impl PayshieldConfig {
    /// Checks the values; the error names the problem.
    pub fn validate(&self) -> Result<(), String> {
        if self.header_len > 64 {
            return Err("[payshield] header_len must be 0–64".into());
        }
        if !(64..=usize::from(u16::MAX)).contains(&self.max_frame) {
            return Err("[payshield] max_frame must be 64–65535 bytes".into());
        }
        if self.max_connections == 0 || self.idle_timeout_secs == 0 {
            return Err(
                "[payshield] max_connections and idle_timeout_secs must be positive".into(),
            );
        }
        for c in &self.commands {
            if !frame::IMPLEMENTED.contains(&c.as_str()) {
                return Err(format!(
                    "[payshield] commands: {c:?} is not implemented (known: {})",
                    frame::IMPLEMENTED.join(", ")
                ));
            }
        }
        Ok(())
    }
}

/// What every connection shares.
struct Shared {
    hsm: Arc<Hsm>,
    header_len: usize,
    max_frame: usize,
    idle: Duration,
    enabled: Vec<[u8; 2]>,
    /// NC's firmware number (9A); the LMK check value (16H) before it is read per call.
    nc_fields: String,
    tls: Option<Arc<rustls::ServerConfig>>,
    clients: Vec<String>,
    /// Last time a refusal was logged (unix seconds), to keep floods out of the log.
    last_refusal_log: AtomicI64,
}

/// The 9-character firmware number NC reports.
pub fn firmware_number() -> String {
    let v: String = env!("CARGO_PKG_VERSION")
        .split('.')
        .map(|p| p.chars().last().unwrap_or('0'))
        .collect();
    format!("{:<9.9}", format!("POSHSM{v}"))
}

/// Whether `addr` is a loopback address.
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// Serves the port on `listener` until `shutdown` resolves. `tls` switches on
/// TLS with client certificates (admitted CNs: `config.clients`).
pub async fn serve(
    listener: TcpListener,
    hsm: Arc<Hsm>,
    config: PayshieldConfig,
    tls: Option<TlsMaterial>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), String> {
    config.validate()?;
    let tls = tls.as_ref().map(tls::server_config).transpose()?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    if tls.is_none() && !is_loopback(&local) {
        let line = "=".repeat(74);
        eprintln!("{line}");
        eprintln!(" WARNING: the payShield port listens on {local} WITHOUT TLS.");
        eprintln!(" Anyone who can reach it can translate PINs and use keys whose blocks");
        eprintln!(" they hold. Bind it to loopback, or set tls = true in [payshield].");
        eprintln!("{line}");
        tracing::warn!(%local, "payShield port bound beyond loopback without TLS");
    }
    let enabled = config
        .commands
        .iter()
        .filter_map(|c| <[u8; 2]>::try_from(c.as_bytes()).ok())
        .collect();
    let shared = Arc::new(Shared {
        nc_fields: firmware_number(),
        hsm,
        header_len: config.header_len,
        max_frame: config.max_frame,
        idle: Duration::from_secs(config.idle_timeout_secs),
        enabled,
        tls,
        clients: config.clients.clone(),
        last_refusal_log: AtomicI64::new(0),
    });
    let slots = Arc::new(tokio::sync::Semaphore::new(config.max_connections));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((sock, peer)) => match slots.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let shared = shared.clone();
                        tokio::spawn(async move {
                            connection(sock, peer, &shared).await;
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        shared.log_refusal(|| tracing::warn!(
                            %peer, max = config.max_connections,
                            "payShield port: connection limit reached, refusing"
                        ));
                        drop(sock);
                    }
                },
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    shared.log_refusal(|| tracing::warn!(error = %e, "payShield port: accept failed"));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
        }
    }
    Ok(())
}

impl Shared {
    fn log_refusal(&self, log: impl FnOnce()) {
        let now = crate::now_unix();
        if self.last_refusal_log.swap(now, Ordering::Relaxed) != now {
            log();
        }
    }

    /// Answers one frame payload into `out`.
    async fn answer(&self, payload: &[u8], actor: &Arc<str>, out: &mut Vec<u8>) {
        let req = frame::split_request(payload, self.header_len);
        let Some(cmd) = req.code else {
            frame::write_response(out, req.header, *b"ZZ", code::INVALID_INPUT, &[]);
            return;
        };
        let resp = frame::response_code(cmd);
        if !frame::IMPLEMENTED.iter().any(|c| c.as_bytes() == cmd) {
            frame::write_response(out, req.header, resp, code::UNKNOWN_COMMAND, &[]);
            return;
        }
        if !self.enabled.contains(&cmd) {
            frame::write_response(out, req.header, resp, code::COMMAND_DISABLED, &[]);
            return;
        }
        if exec::writes(cmd) {
            // Key creation and export write and flush the store: off the reactor.
            let hsm = self.hsm.clone();
            let actor = actor.clone();
            let header_len = self.header_len;
            let owned = payload.to_vec();
            let done = tokio::task::spawn_blocking(move || {
                let mut o = Vec::new();
                answer_sync(&hsm, &actor, "", header_len, &owned, &mut o);
                o
            })
            .await;
            match done {
                Ok(o) => out.extend_from_slice(&o),
                Err(_) => frame::write_response(out, req.header, resp, code::INTERNAL, &[]),
            }
        } else {
            answer_sync(
                &self.hsm,
                actor,
                &self.nc_fields,
                self.header_len,
                payload,
                out,
            );
            // A security-trigger refusal leaves after its audit record is on
            // disk, written off the reactor.
            if self.hsm.has_deferred_audit() {
                let hsm = self.hsm.clone();
                let _ = tokio::task::spawn_blocking(move || hsm.write_deferred_audit()).await;
            }
        }
    }
}

/// Parses and runs one frame payload whose command is implemented and enabled.
fn answer_sync(
    hsm: &Hsm,
    actor: &str,
    nc: &str,
    header_len: usize,
    payload: &[u8],
    out: &mut Vec<u8>,
) {
    let req = frame::split_request(payload, header_len);
    let Some(cmd) = req.code else {
        return frame::write_response(out, req.header, *b"ZZ", code::INVALID_INPUT, &[]);
    };
    let resp = frame::response_code(cmd);
    let result = frame::parse_command(cmd, req.body).and_then(|c| exec::execute(hsm, actor, nc, c));
    match result {
        Ok(fields) => frame::write_response(out, req.header, resp, code::OK, &fields),
        Err(e) => frame::write_response(out, req.header, resp, e, &[]),
    }
}

async fn connection(sock: TcpStream, peer: SocketAddr, shared: &Shared) {
    let _ = sock.set_nodelay(true);
    let mut actor = format!("payshield:{peer}");
    let mut t = match &shared.tls {
        None => tls::Transport::Plain(sock),
        Some(cfg) => {
            let hs = tokio::time::timeout(
                shared.idle.min(Duration::from_secs(30)),
                tls::TlsStream::accept(sock, cfg.clone()),
            )
            .await;
            let s = match hs {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "payShield port: TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "payShield port: TLS handshake timed out");
                    return;
                }
            };
            let cn = s.peer_cn().unwrap_or_default();
            if !shared.clients.contains(&cn) {
                shared.log_refusal(|| {
                    tracing::warn!(%peer, client = %cn, "payShield port: client certificate not admitted ([payshield] clients)")
                });
                return;
            }
            actor = format!("payshield:{cn}@{peer}");
            tls::Transport::Tls(Box::new(s))
        }
    };
    let actor: Arc<str> = Arc::from(actor);
    let mut inbuf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut out: Vec<u8> = Vec::with_capacity(4 * 1024);
    let mut deadline = Instant::now() + shared.idle;
    loop {
        let mut start = 0;
        loop {
            match frame::split_frame(&inbuf[start..], shared.max_frame) {
                frame::Split::Incomplete => break,
                frame::Split::TooLarge { len } => {
                    tracing::debug!(%peer, len, "payShield port: frame too large, closing");
                    if !out.is_empty() {
                        let _ = tokio::time::timeout(shared.idle, t.write_all(&out)).await;
                    }
                    return;
                }
                frame::Split::Frame { len } => {
                    let payload = &inbuf[start + 2..start + 2 + len];
                    shared.answer(payload, &actor, &mut out).await;
                    start += 2 + len;
                    deadline = Instant::now() + shared.idle;
                }
            }
        }
        inbuf.drain(..start);
        if !out.is_empty() {
            match tokio::time::timeout(shared.idle, t.write_all(&out)).await {
                Ok(Ok(())) => out.clear(),
                _ => return,
            }
        }
        match tokio::time::timeout_at(deadline, t.read_into(&mut inbuf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => {}
            Err(_) => {
                tracing::debug!(%peer, "payShield port: idle timeout, closing");
                return;
            }
        }
    }
}
