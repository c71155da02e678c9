//! Client side of mutual TLS for the CLI, the load generator and tests:
//! a tonic channel to the daemon with a client certificate.

use std::path::{Path, PathBuf};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Where a client finds the daemon and its certificates.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub addr: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ClientConfig {
    /// `DIR/certs/ca.pem` and `DIR/certs/<role>.{pem,key}`.
    pub fn from_data_dir(addr: &str, data_dir: &Path, role: &str) -> ClientConfig {
        let certs = data_dir.join("certs");
        ClientConfig {
            addr: addr.to_string(),
            ca: certs.join("ca.pem"),
            cert: certs.join(format!("{role}.pem")),
            key: certs.join(format!("{role}.key")),
        }
    }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| {
        format!("cannot read {what} {}: {e} (start the daemon with `poshsm serve --dev --data-dir DIR` to create dev certificates, or pass --ca/--cert/--key)", path.display())
    })
}

/// Connects with PEM material already in memory.
pub async fn connect_pem(
    addr: &str,
    ca_pem: &[u8],
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<Channel, String> {
    crate::server::install_crypto_provider();
    let uri = if addr.starts_with("https://") {
        addr.to_string()
    } else {
        format!("https://{addr}")
    };
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .identity(Identity::from_pem(cert_pem, key_pem))
        .domain_name("localhost");
    Endpoint::from_shared(uri)
        .map_err(|e| format!("bad address {addr:?}: {e}"))?
        .tls_config(tls)
        .map_err(|e| format!("TLS configuration: {e}"))?
        .tcp_nodelay(true)
        .initial_connection_window_size(4 * 1024 * 1024)
        .initial_stream_window_size(1024 * 1024)
        .connect()
        .await
        .map_err(|e| {
            format!("cannot connect to poshsm at {addr}: {e} (is `poshsm serve` running there?)")
        })
}

pub async fn connect(cfg: &ClientConfig) -> Result<Channel, String> {
    let ca = read(&cfg.ca, "CA certificate")?;
    let cert = read(&cfg.cert, "client certificate")?;
    let key = read(&cfg.key, "client key")?;
    connect_pem(&cfg.addr, &ca, &cert, &key).await
}

/// A TLS stream that tells h2 it cannot write vectored. h2 then copies DATA
/// payloads of up to 1 KiB into its write buffer, so the requests of concurrent
/// calls leave in one TLS record and one `send`; over a vectored stream it
/// writes every payload of 256 bytes or more on its own (h2's
/// `CHAIN_THRESHOLD`), one record and one system call per request. The load
/// generator uses it so that what it measures is the daemon, not that rule.
struct Coalescing(tokio_rustls::client::TlsStream<tokio::net::TcpStream>);

impl tokio::io::AsyncRead for Coalescing {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Coalescing {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
    // is_write_vectored: the default, false.
}

/// Opens TCP + mutual TLS to one address for a tonic channel.
#[derive(Clone)]
struct CoalescingConnector {
    addr: String,
    tls: tokio_rustls::TlsConnector,
}

type ConnectFuture = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = std::io::Result<hyper_util::rt::TokioIo<Coalescing>>>
            + Send,
    >,
>;

impl tower::Service<http::Uri> for CoalescingConnector {
    type Response = hyper_util::rt::TokioIo<Coalescing>;
    type Error = std::io::Error;
    type Future = ConnectFuture;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> ConnectFuture {
        let (addr, tls) = (self.addr.clone(), self.tls.clone());
        Box::pin(async move {
            let tcp = tokio::net::TcpStream::connect(&addr).await?;
            tcp.set_nodelay(true)?;
            let name = rustls::pki_types::ServerName::try_from("localhost")
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let tls = tls.connect(name, tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(Coalescing(tls)))
        })
    }
}

/// Like [`connect`], over the load generator's coalescing TLS stream
/// (see [`Coalescing`]); same certificates, windows and verification.
pub async fn connect_coalescing(cfg: &ClientConfig) -> Result<Channel, String> {
    crate::server::install_crypto_provider();
    let pem = crate::server::TlsMaterial {
        ca_pem: read(&cfg.ca, "CA certificate")?,
        cert_pem: read(&cfg.cert, "client certificate")?,
        key_pem: read(&cfg.key, "client key")?,
    };
    let roots = pem.roots()?;
    let (chain, key) = pem.identity().map_err(|e| format!("client {e}"))?;
    let mut tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("TLS configuration: {e}"))?;
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let addr = cfg
        .addr
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .to_string();
    let connector = CoalescingConnector {
        addr: addr.clone(),
        tls: tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls)),
    };
    Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("bad address {addr:?}: {e}"))?
        .initial_connection_window_size(4 * 1024 * 1024)
        .initial_stream_window_size(1024 * 1024)
        .connect_with_connector(connector)
        .await
        .map_err(|e| {
            format!("cannot connect to poshsm at {addr}: {e} (is `poshsm serve` running there?)")
        })
}
