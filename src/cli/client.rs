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
