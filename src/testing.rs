//! A mock HSM for other services' tests (cargo feature `testing`): a real
//! poshsm server on 127.0.0.1:0 over mutual TLS with a temporary store, a
//! throw-away LMK and generated certificates, plus a [`TestTerminal`] that plays
//! the PIN pad (it knows its TMK, parses field 62, builds PIN blocks, computes
//! and checks MACs) and a [`TestNetwork`] that plays the card network (it knows
//! the ZPK and ZAK). Test keys only: nothing here is for production.
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() {
//! use poshsm::proto::{SignInRequest, TranslatePinRequest, VerifyMacRequest, KeyRef, key_ref};
//! use poshsm::proto::{translate_pin_request::Source, verify_mac_request::KeySource, MacAlgorithm};
//!
//! let mut mock = poshsm::testing::MockHsm::start().await.unwrap();
//! let mut posp = mock.posp.clone();
//! // Morning: the terminal signs in and loads its working keys from field 62.
//! let r = posp.sign_in(mock.terminal.sign_in_request()).await.unwrap().into_inner();
//! mock.terminal.load_field62(&r.field62, r.layout).unwrap();
//! // A purchase: the POSP verifies the request MAC and translates the PIN to the network.
//! let msg = b"0200 purchase".to_vec();
//! let ok = posp.verify_mac(VerifyMacRequest {
//!     key_source: Some(KeySource::TerminalId(mock.terminal.terminal_id.clone())),
//!     algorithm: MacAlgorithm::UnionpayEcb as i32, message: msg.clone(),
//!     mac: mock.terminal.mac(&msg).unwrap(),
//! }).await.unwrap().into_inner().valid;
//! assert!(ok);
//! let pan = "6222020200112233445";
//! let out = posp.translate_pin(TranslatePinRequest {
//!     source: Some(Source::TerminalId(mock.terminal.terminal_id.clone())),
//!     dest_key: Some(KeyRef { r#ref: Some(key_ref::Ref::Alias(mock.network.zpk_alias.clone())) }),
//!     pin_block: mock.terminal.pin_block("123456", pan).unwrap(), pan: pan.into(),
//!     source_format: 0, dest_format: 0,
//! }).await.unwrap().into_inner();
//! assert_eq!(mock.network.pin(&out.pin_block, pan).unwrap(), "123456");
//! mock.stop().await;
//! # }
//! ```

use crate::crypto::pinblock::{self, Pan, Pin, PinBlockFormat};
use crate::crypto::{deskey, kcv, mac, random_bytes, Algorithm, Cipher};
use crate::devcerts::{self, DevPki};
use crate::hsm::{Hsm, HsmConfig};
use crate::keys::Lmk;
use crate::proto::{self as pb, crypto_client::CryptoClient, key_admin_client::KeyAdminClient};
use crate::server::{self, AccessConfig, TlsMaterial};
use crate::store::Store;
use std::net::SocketAddr;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tonic::transport::Channel;
use zeroize::Zeroizing;

/// Random TDES key parts with odd parity; three of them XOR to an odd-parity key.
fn odd_parity_component() -> Vec<u8> {
    let mut c = vec![0u8; 16];
    random_bytes(&mut c);
    deskey::adjust_odd_parity(&mut c);
    c
}

/// The PIN pad of one terminal.
pub struct TestTerminal {
    pub terminal_id: String,
    tmk: Zeroizing<Vec<u8>>,
    pik: Option<Zeroizing<Vec<u8>>>,
    mak: Option<Zeroizing<Vec<u8>>>,
    tdk: Option<Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for TestTerminal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestTerminal")
            .field("terminal_id", &self.terminal_id)
            .finish_non_exhaustive()
    }
}

fn tdes_or_des(key: &[u8]) -> Result<Cipher, String> {
    let alg = if key.len() == 8 {
        Algorithm::Des
    } else {
        Algorithm::Tdes2
    };
    Cipher::new(alg, key).map_err(|e| e.to_string())
}

impl TestTerminal {
    /// A terminal that knows `tmk` (a double-length TDES key).
    pub fn new(terminal_id: &str, tmk: Vec<u8>) -> TestTerminal {
        TestTerminal {
            terminal_id: terminal_id.into(),
            tmk: Zeroizing::new(tmk),
            pik: None,
            mak: None,
            tdk: None,
        }
    }

    /// A sign-in request for this terminal with TDK (UNIONPAY_004).
    pub fn sign_in_request(&self) -> pb::SignInRequest {
        pb::SignInRequest {
            terminal_id: self.terminal_id.clone(),
            include_tdk: true,
            ..Default::default()
        }
    }

    /// Decrypts field 62 under the TMK and checks every check value, as a
    /// UnionPay terminal does (`layout` is the response's `Field62Layout`).
    pub fn load_field62(&mut self, field62: &[u8], layout: i32) -> Result<(), String> {
        let tmk = tdes_or_des(&self.tmk)?;
        let l =
            pb::Field62Layout::try_from(layout).map_err(|_| format!("unknown layout {layout}"))?;
        // (key length, slot length) of PIK, MAK[, TDK]
        let slots: Vec<(usize, usize)> = match l {
            pb::Field62Layout::Unionpay001 => vec![(8, 8), (8, 8)],
            pb::Field62Layout::Unionpay003 => vec![(16, 16), (8, 16)],
            pb::Field62Layout::Unionpay004 => vec![(16, 16), (8, 16), (16, 16)],
            pb::Field62Layout::DoubleMak if field62.len() == 60 => {
                vec![(16, 16), (16, 16), (16, 16)]
            }
            pb::Field62Layout::DoubleMak => vec![(16, 16), (16, 16)],
            other => {
                return Err(format!(
                    "TestTerminal plays a TDES PIN pad; layout {other:?} is not one"
                ))
            }
        };
        let mut pos = 0;
        let mut keys = Vec::new();
        for (klen, slot) in slots {
            let ct = field62
                .get(pos..pos + klen)
                .ok_or("field 62 is too short")?;
            let pad = field62
                .get(pos + klen..pos + slot)
                .ok_or("field 62 is too short")?;
            if pad.iter().any(|b| *b != 0) {
                return Err("field 62: the single-length MAK slot is not zero-padded".into());
            }
            pos += slot;
            let mut key = Zeroizing::new(ct.to_vec());
            tmk.ecb_decrypt(&mut key).map_err(|e| e.to_string())?;
            let cv = field62.get(pos..pos + 4).ok_or("field 62 is too short")?;
            pos += 4;
            let expect = kcv::encrypt_zeros(&tdes_or_des(&key)?);
            if expect[..4] != *cv {
                return Err("field 62: a check value does not match its key (wrong TMK?)".into());
            }
            keys.push(key);
        }
        if pos != field62.len() {
            return Err(format!(
                "field 62 has {} bytes; the layout uses {pos}",
                field62.len()
            ));
        }
        let mut it = keys.into_iter();
        self.pik = it.next();
        self.mak = it.next();
        self.tdk = it.next();
        Ok(())
    }

    /// An ISO 9564 format 0 PIN block under the PIK, as the PIN pad sends it.
    pub fn pin_block(&self, pin: &str, pan: &str) -> Result<Vec<u8>, String> {
        let pik = self.pik.as_ref().ok_or("the terminal has not signed in")?;
        let pin = Pin::parse(pin).map_err(|e| e.to_string())?;
        let pan = Pan::parse(pan).map_err(|e| e.to_string())?;
        pinblock::encipher(PinBlockFormat::Iso0, &tdes_or_des(pik)?, &pin, Some(&pan))
            .map_err(|e| e.to_string())
    }

    /// The UnionPay POS ECB MAC of a message under the MAK (8 ASCII hex bytes).
    pub fn mac(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        let mak = self.mak.as_ref().ok_or("the terminal has not signed in")?;
        Ok(mac::unionpay_ecb(&tdes_or_des(mak)?, message))
    }

    /// Checks a response MAC (UnionPay ECB) in constant time.
    pub fn check_mac(&self, message: &[u8], mac: &[u8]) -> bool {
        match self.mac(message) {
            Ok(m) => bool::from(m.as_slice().ct_eq(mac)),
            Err(_) => false,
        }
    }

    /// Track data encrypted under the TDK (ECB, zero-padded to 8 bytes).
    pub fn encrypt_track(&self, data: &[u8]) -> Result<Vec<u8>, String> {
        let tdk = self
            .tdk
            .as_ref()
            .ok_or("no TDK: sign in with include_tdk")?;
        let mut d = data.to_vec();
        d.resize(data.len().div_ceil(8) * 8, 0);
        tdes_or_des(tdk)?
            .ecb_encrypt(&mut d)
            .map_err(|e| e.to_string())?;
        Ok(d)
    }
}

/// The card network's side: it knows the ZPK and ZAK delivered to the mock.
pub struct TestNetwork {
    pub zpk_alias: String,
    pub zak_alias: String,
    zpk: Zeroizing<Vec<u8>>,
    zak: Zeroizing<Vec<u8>>,
}

impl TestNetwork {
    /// The PIN inside an ISO 0 block under the ZPK.
    pub fn pin(&self, block: &[u8], pan: &str) -> Result<String, String> {
        let pan = Pan::parse(pan).map_err(|e| e.to_string())?;
        let c = tdes_or_des(&self.zpk)?;
        let pin = pinblock::decipher(PinBlockFormat::Iso0, &c, block, Some(&pan))
            .map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(pin.expose_digits()).into_owned())
    }

    /// The X9.19 (ISO 9797-1 alg. 3) MAC under the ZAK.
    pub fn mac(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        Ok(mac::iso9797_alg3(&self.zak, message, mac::Padding::Method1)
            .map_err(|e| e.to_string())?
            .to_vec())
    }
}

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
            if let Err(e) =
                server::serve(listener, served, tls, AccessConfig::default(), None, stop).await
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
            let parts: Vec<Vec<u8>> = (0..3).map(|_| odd_parity_component()).collect();
            let clear: Vec<u8> = (0..16)
                .map(|i| parts[0][i] ^ parts[1][i] ^ parts[2][i])
                .collect();
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
            terminal: TestTerminal::new("MOCK0001", tmk_clear),
            network: TestNetwork {
                zpk_alias: "mock-zpk".into(),
                zak_alias: "mock-zak".into(),
                zpk: Zeroizing::new(zpk),
                zak: Zeroizing::new(zak),
            },
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
