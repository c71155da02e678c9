//! Development PKI: a local CA, a server certificate for `localhost` and
//! `127.0.0.1`, and client certificates whose subject CN is the role name
//! (`admin`, `posp`, `auditor`). Used by `serve --dev` and `MockHsm`; a
//! production deployment brings its own PKI.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use std::path::Path;

/// PEM strings of a generated PKI.
pub struct DevPki {
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    /// (name, certificate PEM, key PEM) per client.
    pub clients: Vec<(String, String, String)>,
}

impl DevPki {
    pub fn client(&self, name: &str) -> Option<(&str, &str)> {
        self.clients
            .iter()
            .find(|c| c.0 == name)
            .map(|c| (c.1.as_str(), c.2.as_str()))
    }
}

/// Generates a CA, a server certificate and one client certificate per name.
pub fn generate(ca_name: &str, client_names: &[&str]) -> Result<DevPki, rcgen::Error> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    ca_params
        .distinguished_name
        .push(DnType::OrganizationName, "poshsm");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let mut sp = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    sp.distinguished_name.push(DnType::CommonName, "localhost");
    sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate()?;
    let server_cert = sp.signed_by(&server_key, &ca)?;

    let mut clients = Vec::new();
    for name in client_names {
        let mut cp = CertificateParams::new(Vec::<String>::new())?;
        cp.distinguished_name.push(DnType::CommonName, *name);
        cp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate()?;
        let cert = cp.signed_by(&key, &ca)?;
        clients.push((name.to_string(), cert.pem(), key.serialize_pem()));
    }
    Ok(DevPki {
        ca_pem: ca.pem(),
        server_cert_pem: server_cert.pem(),
        server_key_pem: server_key.serialize_pem(),
        clients,
    })
}

fn write_private(path: &Path, data: &str) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        f.write_all(data.as_bytes())
    }
    #[cfg(not(unix))]
    {
        std::fs::write(path, data)
    }
}

/// Writes the PKI as `DIR/certs/{ca,server,<client>}.pem` and `.key` (keys 0600).
pub fn write(certs_dir: &Path, pki: &DevPki) -> std::io::Result<()> {
    std::fs::create_dir_all(certs_dir)?;
    std::fs::write(certs_dir.join("ca.pem"), &pki.ca_pem)?;
    std::fs::write(certs_dir.join("server.pem"), &pki.server_cert_pem)?;
    write_private(&certs_dir.join("server.key"), &pki.server_key_pem)?;
    for (name, cert, key) in &pki.clients {
        std::fs::write(certs_dir.join(format!("{name}.pem")), cert)?;
        write_private(&certs_dir.join(format!("{name}.key")), key)?;
    }
    Ok(())
}
