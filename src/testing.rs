//! A mock HSM for other services' tests (cargo feature `testing`): a real
//! poshsm server on 127.0.0.1:0 over mutual TLS with a temporary store, a
//! throw-away LMK and generated certificates, plus a [`TestTerminal`] that plays
//! the PIN pad (it knows its TMK, parses field 62, builds PIN blocks, computes
//! and checks MACs) and a [`TestNetwork`] that plays the card network (it knows
//! the ZPK and ZAK). Test keys only: nothing here is for production.
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use poshsm::proto::{SignInRequest, TranslatePinRequest, VerifyMacRequest, KeyRef, key_ref};
//! use poshsm::proto::{translate_pin_request::Source, verify_mac_request::KeySource, MacAlgorithm};
//!
//! let mut mock = poshsm::testing::MockHsm::start().await?;
//! let mut posp = mock.posp.clone();
//! // Morning: the terminal signs in and loads its working keys from field 62.
//! let r = posp.sign_in(mock.terminal.sign_in_request()).await?.into_inner();
//! mock.terminal.load_field62(&r.field62, r.layout)?;
//! // A purchase: the POSP verifies the request MAC and translates the PIN to the network.
//! let msg = b"0200 purchase".to_vec();
//! let ok = posp.verify_mac(VerifyMacRequest {
//!     key_source: Some(KeySource::TerminalId(mock.terminal.terminal_id.clone())),
//!     algorithm: MacAlgorithm::UnionpayEcb as i32, message: msg.clone(),
//!     mac: mock.terminal.mac(&msg)?,
//! }).await?.into_inner().valid;
//! assert!(ok);
//! let pan = "6222020200112233445";
//! let out = posp.translate_pin(TranslatePinRequest {
//!     source: Some(Source::TerminalId(mock.terminal.terminal_id.clone())),
//!     dest_key: Some(KeyRef { r#ref: Some(key_ref::Ref::Alias(mock.network.zpk_alias.clone())) }),
//!     pin_block: mock.terminal.pin_block("123456", pan)?, pan: pan.into(),
//!     source_format: 0, dest_format: 0,
//! }).await?.into_inner();
//! assert_eq!(mock.network.pin(&out.pin_block, pan)?, "123456");
//! mock.stop().await;
//! # Ok(())
//! # }
//! ```

use crate::devcerts::{self, DevPki};
use crate::hsm::{Hsm, HsmConfig};
use crate::keys::Lmk;
use crate::proto::{self as pb, crypto_client::CryptoClient, key_admin_client::KeyAdminClient};
use crate::server::{self, AccessConfig, TlsMaterial};
use crate::store::Store;
use std::net::SocketAddr;
use std::sync::Arc;
use tonic::transport::Channel;

/// The PIN pad of the mock's terminal (see [`crate::pinpad::PinPad`]).
pub type TestTerminal = crate::pinpad::PinPad;
/// The card network's side (see [`crate::pinpad::NetworkPeer`]).
pub type TestNetwork = crate::pinpad::NetworkPeer;

/// A running in-process poshsm with ready clients.
pub struct MockHsm {
    pub addr: SocketAddr,
    /// Client with the `posp` certificate (data plane).
    pub posp: CryptoClient<Channel>,
    /// Client with the `admin` certificate (control plane).
    pub admin: KeyAdminClient<Channel>,
    pub terminal: TestTerminal,
    pub network: TestNetwork,
    pub hsm: Arc<Hsm>,
    pki: DevPki,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl MockHsm {
    /// Starts with the default policy.
    pub async fn start() -> Result<MockHsm, String> {
        MockHsm::start_with(HsmConfig::default()).await
    }

    pub async fn start_with(config: HsmConfig) -> Result<MockHsm, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let store = Store::open(&dir.path().join("db")).map_err(|e| e.to_string())?;
        let hsm = Arc::new(Hsm::new(Lmk::generate(), store, config));
        let pki = devcerts::generate("poshsm mock CA", &["admin", "posp", "auditor"])
            .map_err(|e| e.to_string())?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let tls = TlsMaterial {
            ca_pem: pki.ca_pem.clone().into_bytes(),
            cert_pem: pki.server_cert_pem.clone().into_bytes(),
            key_pem: pki.server_key_pem.clone().into_bytes(),
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let served = hsm.clone();
        let task = tokio::spawn(async move {
            let stop = async move {
                let _ = rx.await;
            };
            if let Err(e) = server::serve(
                listener,
                served,
                tls,
                AccessConfig::default(),
                None,
                0,
                stop,
            )
            .await
            {
                tracing::error!(error = %e, "mock server stopped");
            }
        });
        let chan = |role: &str| {
            let (c, k) = pki
                .client(role)
                .map(|(c, k)| (c.to_string(), k.to_string()))
                .unwrap_or_default();
            let ca = pki.ca_pem.clone();
            let a = addr.to_string();
            async move {
                crate::cli::client::connect_pem(&a, ca.as_bytes(), c.as_bytes(), k.as_bytes()).await
            }
        };
        let posp = CryptoClient::new(chan("posp").await?);
        let mut admin = KeyAdminClient::new(chan("admin").await?);

        // Keys with clear values known to the test parties, formed from components.
        let form = |t: pb::KeyType, alias: &'static str| {
            let (parts, clear) = crate::pinpad::tdes_components();
            let req = pb::ImportKeyComponentsRequest {
                key_type: t as i32,
                algorithm: pb::KeyAlgorithm::Tdes2key as i32,
                components: parts,
                alias: alias.into(),
                ..Default::default()
            };
            let mut admin = admin.clone();
            async move {
                let info = admin
                    .import_key_components(req)
                    .await
                    .map_err(|e| e.message().to_string())?
                    .into_inner();
                Ok::<_, String>((info, clear))
            }
        };
        let (tmk, tmk_clear) = form(pb::KeyType::Tmk, "mock-tmk").await?;
        let (_, zpk) = form(pb::KeyType::Zpk, "mock-zpk").await?;
        let (_, zak) = form(pb::KeyType::Zak, "mock-zak").await?;
        admin
            .create_terminal(pb::CreateTerminalRequest {
                terminal_id: "MOCK0001".into(),
                merchant_id: "898000000000001".into(),
                tmk: Some(pb::KeyRef {
                    r#ref: Some(pb::key_ref::Ref::KeyId(tmk.key_id)),
                }),
                tmk_algorithm: 0,
            })
            .await
            .map_err(|e| e.message().to_string())?;
        Ok(MockHsm {
            addr,
            posp,
            admin,
            terminal: TestTerminal::new("MOCK0001", &tmk_clear)?,
            network: TestNetwork::new("mock-zpk", "mock-zak", &zpk, &zak)?,
            hsm,
            pki,
            shutdown: Some(tx),
            task: Some(task),
            _dir: dir,
        })
    }

    /// A new channel with the certificate of `role` (`admin`, `posp`, `auditor`).
    pub async fn channel(&self, role: &str) -> Result<Channel, String> {
        let (c, k) = self
            .pki
            .client(role)
            .ok_or_else(|| format!("no certificate for {role}"))?;
        crate::cli::client::connect_pem(
            &self.addr.to_string(),
            self.pki.ca_pem.as_bytes(),
            c.as_bytes(),
            k.as_bytes(),
        )
        .await
    }

    /// Signs the test terminal in over gRPC (as its POSP would) and loads the
    /// working keys of field 62 into it; returns the 0810's answer.
    pub async fn sign_in_terminal(&mut self) -> Result<crate::proto::SignInResponse, String> {
        let r = self
            .posp
            .clone()
            .sign_in(self.terminal.sign_in_request())
            .await
            .map_err(|s| format!("sign-in: {}", s.message()))?
            .into_inner();
        self.terminal.load_field62(&r.field62, r.layout)?;
        Ok(r)
    }

    /// The mock's CA certificate (PEM), for clients built by the test.
    pub fn ca_pem(&self) -> &str {
        &self.pki.ca_pem
    }

    /// Stops the server (in-flight calls finish).
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}
