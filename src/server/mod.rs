//! The gRPC edge: `Crypto` and `KeyAdmin` over mutual TLS (rustls, ring), plus
//! `grpc.health.v1` and server reflection. Callers are identified by their
//! client certificate's subject CN and mapped to a role by the config. This
//! module never touches key bytes; `HsmError` becomes a `Status` in [`status`]
//! and nowhere else.

pub mod codec;
pub mod convert;
pub mod io;
pub mod metrics;
mod services;

use crate::hsm::{Category, Hsm, HsmError};
use serde::Deserialize;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, RwLock};
use tokio_stream::StreamExt;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

pub use services::{CryptoService, KeyAdminService};

/// Domain of the `google.rpc.ErrorInfo` attached to every error.
pub const ERROR_DOMAIN: &str = "poshsm";

/// What a client may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Data plane: sign-in, PIN translation, MACs.
    Posp,
    /// Control plane and data plane.
    Admin,
    /// Read-only control plane: keys, terminals, audit, status.
    Auditor,
    /// DecryptData to clear, and nothing else. No certificate has it unless the
    /// config's `[access]` grants it explicitly.
    DataDecrypt,
}

/// Certificate identity (subject CN) → role. Anything not listed is denied.
#[derive(Clone, Debug, Deserialize)]
#[serde(transparent)]
pub struct AccessConfig(pub HashMap<String, Role>);

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig(HashMap::from([
            ("admin".to_string(), Role::Admin),
            ("posp".to_string(), Role::Posp),
            ("auditor".to_string(), Role::Auditor),
        ]))
    }
}

/// Longest status message sent. The message travels in HTTP/2 headers (twice:
/// `grpc-message` and inside `grpc-status-details-bin`); an echoed 20,000-character
/// key id or alias would exceed the client's header limits and tear down the
/// whole connection (GOAWAY), failing every call multiplexed on it.
pub const MAX_STATUS_MESSAGE: usize = 1024;

fn bounded(mut message: String) -> String {
    if message.len() > MAX_STATUS_MESSAGE {
        let mut cut = MAX_STATUS_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push('…');
    }
    message
}

/// The one place an `HsmError` becomes a gRPC status: code by category,
/// `ErrorInfo{reason, domain}` attached, the message as is (it never holds keys)
/// up to [`MAX_STATUS_MESSAGE`] bytes.
pub fn status(e: HsmError) -> Status {
    let code = match e.category() {
        Category::InvalidArgument => Code::InvalidArgument,
        Category::NotFound => Code::NotFound,
        Category::AlreadyExists => Code::AlreadyExists,
        Category::FailedPrecondition => Code::FailedPrecondition,
        Category::PermissionDenied => Code::PermissionDenied,
        Category::ResourceExhausted => Code::ResourceExhausted,
        Category::Aborted => Code::Aborted,
        Category::Unavailable => Code::Unavailable,
        Category::Internal => Code::Internal,
    };
    let reason = e.code();
    Status::with_error_details(
        code,
        bounded(e.message),
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, HashMap::<String, String>::new()),
    )
}

/// Who is calling: certificate CN and role.
#[derive(Clone, Debug)]
pub struct Caller {
    pub identity: String,
    pub role: Role,
}

/// A connection's client certificate chain, as tonic hands it to each request.
type PeerCerts = Arc<Vec<rustls::pki_types::CertificateDer<'static>>>;

/// Resolves the caller of a request from its client certificate.
pub struct Authz {
    access: AccessConfig,
    /// Per connection: tonic shares one certificate chain (one `Arc`) among
    /// all the requests of a TLS connection, so the chain's address names the
    /// connection. The `Weak` kept here holds that allocation, so no later
    /// connection can reuse the address while the entry lives. The hot path
    /// is one read lock and an integer lookup — no DER hashed or compared.
    connections: RwLock<Peers>,
}

#[derive(Default)]
struct Peers {
    by_chain: HashMap<usize, Peer>,
    /// Prune closed connections when the map reaches this size (doubles with
    /// the live ones, so pruning stays amortised however many are open).
    prune_at: usize,
}

struct Peer {
    chain: std::sync::Weak<Vec<rustls::pki_types::CertificateDer<'static>>>,
    identity: String,
    role: Option<Role>,
}

impl Authz {
    pub fn new(access: AccessConfig) -> Authz {
        Authz {
            access,
            connections: RwLock::new(Peers {
                by_chain: HashMap::new(),
                prune_at: 4096,
            }),
        }
    }

    /// The caller's identity (CN) and role, parsed once per connection.
    fn peer<T, R>(
        &self,
        req: &tonic::Request<T>,
        then: impl FnOnce(&str, Option<Role>) -> R,
    ) -> Result<R, Status> {
        let certs: PeerCerts = req.peer_certs().ok_or_else(|| {
            Status::unauthenticated("no client certificate: poshsm accepts mutual TLS only")
        })?;
        let addr = Arc::as_ptr(&certs) as usize;
        if let Some(p) = self
            .connections
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .by_chain
            .get(&addr)
        {
            return Ok(then(&p.identity, p.role));
        }
        let leaf = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("empty client certificate chain"))?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
            .map_err(|_| Status::unauthenticated("client certificate does not parse"))?;
        let identity = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|c| c.as_str().ok())
            .unwrap_or_default()
            .to_string();
        let role = self.access.0.get(&identity).copied();
        let out = then(&identity, role);
        let mut conns = self.connections.write().unwrap_or_else(|p| p.into_inner());
        if conns.by_chain.len() >= conns.prune_at {
            // Closed connections: their chains are gone but for our Weak.
            conns.by_chain.retain(|_, p| p.chain.strong_count() > 0);
            conns.prune_at = (conns.by_chain.len() * 2).max(4096);
        }
        conns.by_chain.insert(
            addr,
            Peer {
                chain: Arc::downgrade(&certs),
                identity,
                role,
            },
        );
        Ok(out)
    }

    /// The caller's identity (the CN of their certificate).
    pub fn identity<T>(&self, req: &tonic::Request<T>) -> Result<String, Status> {
        self.peer(req, |identity, _| identity.to_string())
    }

    /// The caller if their role is among `allowed`, else PERMISSION_DENIED.
    pub fn check<T>(
        &self,
        req: &tonic::Request<T>,
        allowed: &[Role],
        what: &str,
    ) -> Result<Caller, Status> {
        self.peer(req, |identity, role| {
            admit(identity, role, allowed, what).map(|role| Caller {
                identity: identity.to_string(),
                role,
            })
        })?
    }

    /// [`check`](Self::check) for calls that do not record who called (the
    /// data plane's per-transaction RPCs): the same verdict, nothing copied.
    pub fn permit<T>(
        &self,
        req: &tonic::Request<T>,
        allowed: &[Role],
        what: &str,
    ) -> Result<(), Status> {
        self.peer(req, |identity, role| {
            admit(identity, role, allowed, what).map(|_| ())
        })?
    }
}

/// The caller's role if it is among `allowed`, else PERMISSION_DENIED naming them.
fn admit(identity: &str, role: Option<Role>, allowed: &[Role], what: &str) -> Result<Role, Status> {
    match role {
        Some(role) if allowed.contains(&role) => Ok(role),
        Some(role) => Err(deny(format!(
            "client {identity:?} has role {role:?}, which may not {what}"
        ))),
        None => Err(deny(format!(
            "client {identity:?} has no role in this module's access config"
        ))),
    }
}

fn deny(msg: String) -> Status {
    status(HsmError::new(crate::hsm::Reason::PermissionDenied, msg))
}

/// PEM material for the server side of mutual TLS.
pub struct TlsMaterial {
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl TlsMaterial {
    /// The CA certificates of `ca_pem` as a rustls trust store.
    pub fn roots(&self) -> Result<rustls::RootCertStore, String> {
        use rustls::pki_types::{pem::PemObject, CertificateDer};
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&self.ca_pem) {
            let c = c.map_err(|e| format!("CA certificate: {e}"))?;
            roots.add(c).map_err(|e| format!("CA certificate: {e}"))?;
        }
        Ok(roots)
    }

    /// Our certificate chain (`cert_pem`) and its private key (`key_pem`).
    #[allow(clippy::type_complexity)]
    pub fn identity(
        &self,
    ) -> Result<
        (
            Vec<rustls::pki_types::CertificateDer<'static>>,
            rustls::pki_types::PrivateKeyDer<'static>,
        ),
        String,
    > {
        use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
        let chain = CertificateDer::pem_slice_iter(&self.cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("certificate: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem).map_err(|e| format!("key: {e}"))?;
        Ok((chain, key))
    }
}

/// Installs rustls' ring provider as the process default (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Serves the gRPC API on `listener` until `shutdown` resolves; in-flight calls
/// finish, then the store is flushed. Both the binary and `MockHsm` call this.
///
/// `io_threads` 0 serves every connection on the calling runtime (work
/// stealing across its workers; `MockHsm` does this). N > 0 starts N I/O
/// threads, each with its own single-threaded runtime, and hands each new
/// connection to the one with the fewest open connections ([`io`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    hsm: Arc<Hsm>,
    tls: TlsMaterial,
    access: AccessConfig,
    metrics: Option<Arc<metrics::Metrics>>,
    io_threads: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    install_crypto_provider();
    let tls_config = ServerTlsConfig::new()
        .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem))
        .client_ca_root(Certificate::from_pem(&tls.ca_pem));
    let authz = Arc::new(Authz::new(access));

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<crate::proto::crypto_server::CryptoServer<CryptoService>>()
        .await;
    {
        // Health follows the alarm: NOT_SERVING as soon as the module is in ALARM.
        let watched = hsm.clone();
        let reporter = health_reporter.clone();
        let gauges = metrics.clone();
        tokio::spawn(async move {
            let mut last_ok = true;
            loop {
                let ok = watched.alarm().is_none();
                if let Some(m) = &gauges {
                    m.set_gauge(
                        "poshsm_alarm",
                        "1 while the module is in ALARM.",
                        if ok { 0.0 } else { 1.0 },
                    );
                    m.set_gauge(
                        "poshsm_locked_bytes",
                        "Bytes of key material pages locked in RAM.",
                        crate::sys::locked_bytes() as f64,
                    );
                    m.set_gauge(
                        "poshsm_mlock_failures_total",
                        "Key pages that could not be mlocked (raise RLIMIT_MEMLOCK).",
                        crate::sys::lock_failures() as f64,
                    );
                    m.set_gauge(
                        "poshsm_store_fsyncs_total",
                        "Store flushes performed (group commit).",
                        watched.store_fsyncs() as f64,
                    );
                    m.set_gauge(
                        "poshsm_store_commit_groups_total",
                        "Store transactions performed (each commits a group of operations).",
                        watched.store_commit_groups() as f64,
                    );
                }
                if ok != last_ok || !ok {
                    let st = if ok {
                        tonic_health::ServingStatus::Serving
                    } else {
                        tonic_health::ServingStatus::NotServing
                    };
                    reporter.set_service_status("", st).await;
                    reporter.set_service_status("poshsm.v1.Crypto", st).await;
                    last_ok = ok;
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        });
        if hsm.alarm().is_some() {
            health_reporter
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
        }
    }
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let crypto = crate::proto::crypto_server::CryptoServer::new(CryptoService::new(
        hsm.clone(),
        authz.clone(),
    ))
    .max_decoding_message_size(16 * 1024 * 1024);
    let admin = crate::proto::key_admin_server::KeyAdminServer::new(KeyAdminService::new(
        hsm.clone(),
        authz,
    ));
    let routes = tonic::service::Routes::new(health_service)
        .add_service(reflection)
        .add_service(crypto)
        .add_service(admin)
        .prepare();
    let metrics = metrics.unwrap_or_default();
    // A bad certificate or key fails here, at start, on either path.
    tonic::transport::Server::builder()
        .tls_config(tls_config.clone())
        .map_err(|e| format!("TLS configuration: {e}"))?;
    let served = if io_threads == 0 {
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        server_over(tls_config, metrics, routes, incoming, shutdown).await?;
        Ok(())
    } else {
        let stats = Arc::new(io::IoStats::new(io_threads));
        metrics.attach_io(stats.clone());
        let serve_one: io::ServeOne = Arc::new(move |conns, mut stop| {
            let incoming = tokio_stream::wrappers::UnboundedReceiverStream::new(conns)
                .map(io::Accepted::register);
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            Box::pin(server_over(
                tls_config.clone(),
                metrics.clone(),
                routes.clone(),
                incoming,
                stopped,
            ))
        });
        let threads = io::IoThreads::start(stats, serve_one)?;
        let accepted = accept_loop(&listener, &threads, shutdown).await;
        drop(listener);
        // In-flight calls finish; a client that never lets its stream end
        // (an audit-log stream it stopped reading) does not hold the store's
        // last flush back for ever.
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, threads.shutdown())
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "calls still running {}s after shutdown were abandoned",
                    SHUTDOWN_GRACE.as_secs()
                ))
            });
        if let Err(e) = &drained {
            tracing::error!(error = %e, "gRPC I/O threads");
        }
        drained.and(accepted)
    };
    // On both paths (for the I/O threads, whatever their connections did; a
    // plain tonic server that failed has returned above): the trigger's queued
    // audit records and the store reach disk before serve returns.
    let boxed = |e: HsmError| Box::new(e) as Box<dyn std::error::Error + Send + Sync>;
    hsm.write_deferred_audit().map_err(boxed)?;
    hsm.flush().map_err(boxed)?;
    Ok(served?)
}

/// How long shutdown waits for in-flight calls on the I/O threads.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// One tonic server (TLS, HTTP/2 settings, metrics, every service) over
/// `incoming` until `shutdown`.
async fn server_over<I, IO, IE>(
    tls_config: ServerTlsConfig,
    metrics: Arc<metrics::Metrics>,
    routes: tonic::service::Routes,
    incoming: I,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String>
where
    I: tokio_stream::Stream<Item = Result<IO, IE>>,
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tonic::transport::Server::builder()
        .tls_config(tls_config)
        .map_err(|e| format!("TLS configuration: {e}"))?
        .max_concurrent_streams(1024)
        .initial_connection_window_size(4 * 1024 * 1024)
        .initial_stream_window_size(1024 * 1024)
        .layer(metrics::MetricsLayer(metrics))
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| format!("gRPC server: {e}"))
}

/// Accepts until `shutdown`, handing each connection to an I/O thread.
async fn accept_loop(
    listener: &tokio::net::TcpListener,
    threads: &io::IoThreads,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, _)) => {
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(error = %e, "TCP_NODELAY not set");
                }
                threads.dispatch(stream)?;
            }
            Err(e) if io::exhausted(&e) => {
                tracing::warn!(error = %e, "gRPC accept: out of resources; pausing 50 ms");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => tracing::debug!(error = %e, "gRPC accept failed"),
        }
    }
}
