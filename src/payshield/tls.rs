//! The payShield port's transports: plain TCP, or TLS with client certificates
//! (rustls driven by hand over a tokio `TcpStream`: the protocol is strictly
//! "read some, answer", so a small pump is all it needs).

use crate::server::TlsMaterial;
use std::io::{self, Read, Write};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Builds the server side of mutual TLS: our certificate, and client
/// certificates verified against `ca_pem`.
pub fn server_config(t: &TlsMaterial) -> Result<Arc<rustls::ServerConfig>, String> {
    crate::server::install_crypto_provider();
    let roots = t.roots().map_err(|e| format!("payshield TLS: {e}"))?;
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .map_err(|e| format!("payshield TLS: client verifier: {e}"))?;
    let (certs, key) = t
        .identity()
        .map_err(|e| format!("payshield TLS: server {e}"))?;
    let cfg = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| format!("payshield TLS: {e}"))?;
    Ok(Arc::new(cfg))
}

/// The subject CN of a DER certificate ("" when it has none).
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .unwrap_or_default()
        .to_string();
    Some(cn)
}

/// One TLS connection.
pub struct TlsStream {
    sock: TcpStream,
    conn: rustls::ServerConnection,
    buf: Vec<u8>,
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

impl TlsStream {
    /// Runs the handshake (the caller bounds it in time).
    pub async fn accept(sock: TcpStream, cfg: Arc<rustls::ServerConfig>) -> io::Result<TlsStream> {
        let conn = rustls::ServerConnection::new(cfg).map_err(invalid)?;
        let mut s = TlsStream {
            sock,
            conn,
            buf: vec![0u8; 16 * 1024],
        };
        while s.conn.is_handshaking() {
            s.flush().await?;
            if !s.conn.is_handshaking() {
                break;
            }
            if s.conn.wants_read() && s.feed(None).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        s.flush().await?;
        Ok(s)
    }

    /// The client's certificate CN.
    pub fn peer_cn(&self) -> Option<String> {
        let certs = self.conn.peer_certificates()?;
        common_name(certs.first()?.as_ref())
    }

    async fn flush(&mut self) -> io::Result<()> {
        let mut out = Vec::new();
        while self.conn.wants_write() {
            self.conn.write_tls(&mut out)?;
        }
        if !out.is_empty() {
            self.sock.write_all(&out).await?;
        }
        Ok(())
    }

    /// Reads once from the socket and processes the records, moving any
    /// plaintext to `out`. Returns the bytes read from the socket (0 = EOF).
    async fn feed(&mut self, mut out: Option<&mut Vec<u8>>) -> io::Result<usize> {
        let n = self.sock.read(&mut self.buf).await?;
        let mut rd = &self.buf[..n];
        while !rd.is_empty() {
            self.conn.read_tls(&mut rd)?;
            if let Err(e) = self.conn.process_new_packets() {
                let _ = self.flush().await;
                return Err(invalid(e));
            }
            if let Some(o) = out.as_deref_mut() {
                drain(&mut self.conn, o)?;
            }
        }
        Ok(n)
    }

    /// Appends plaintext to `out`; 0 at the end of the stream.
    pub async fn read_into(&mut self, out: &mut Vec<u8>) -> io::Result<usize> {
        loop {
            let before = out.len();
            let closed = drain(&mut self.conn, out)?;
            if out.len() > before {
                return Ok(out.len() - before);
            }
            if closed {
                return Ok(0);
            }
            self.flush().await?;
            if self.feed(Some(out)).await? == 0 {
                return Ok(out.len() - before);
            }
            self.flush().await?;
            if out.len() > before {
                return Ok(out.len() - before);
            }
        }
    }

    pub async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        for chunk in data.chunks(16 * 1024) {
            self.conn.writer().write_all(chunk)?;
            self.flush().await?;
        }
        Ok(())
    }
}

/// Moves the available plaintext to `out`; `true` once the peer closed.
fn drain(conn: &mut rustls::ServerConnection, out: &mut Vec<u8>) -> io::Result<bool> {
    loop {
        let start = out.len();
        out.resize(start + 4096, 0);
        match conn.reader().read(&mut out[start..]) {
            Ok(0) => {
                out.truncate(start);
                return Ok(true);
            }
            Ok(n) => out.truncate(start + n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                out.truncate(start);
                return Ok(false);
            }
            Err(e) => {
                out.truncate(start);
                return Err(e);
            }
        }
    }
}

/// A connection of the port, plain or TLS.
pub enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

impl Transport {
    /// Appends what arrives to `out`; 0 at the end of the stream.
    pub async fn read_into(&mut self, out: &mut Vec<u8>) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => {
                out.reserve(16 * 1024);
                s.read_buf(out).await
            }
            Transport::Tls(t) => t.read_into(out).await,
        }
    }

    pub async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.write_all(data).await,
            Transport::Tls(t) => t.write_all(data).await,
        }
    }
}
