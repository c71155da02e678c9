//! `poshsm simulate`: a POSP with N terminals running a business day against
//! poshsm over mutual TLS — a morning sign-in storm, purchases (verify the
//! request MAC → translate the PIN to the network's ZPK → MAC the network
//! message with the ZAK → MAC the response for the terminal), a mid-day
//! re-sign-in with in-flight MACs verified in the grace window, and some
//! wrong PINs, garbage PIN blocks and bad MACs that must fail the way a
//! payment HSM fails them.
//!
//! Every party computes independently of the daemon: each terminal knows its
//! TMK (formed from components the simulator generates), decrypts field 62 and
//! checks its check values, builds ISO 0 PIN blocks and UnionPay ECB MACs; the
//! network knows the clear ZPK and ZAK (delivered to the daemon under a ZMK
//! as X9.17) and checks the translated PIN and the network MAC itself.
//!
//! By default the daemon runs in this process (a temporary store, a throw-away
//! LMK, generated certificates: `server::serve` as the binary runs it), so the
//! command works with no setup; `--addr` (+ `--data-dir` for the certificates)
//! points it at a running daemon instead. Any unexpected outcome fails the run.

use super::backup::progress_bar;
use super::bench::{pct, status_msg};
use super::client::{connect, connect_pem, ClientConfig};
use crate::crypto::pinblock::{self, Pan, Pin, PinBlockFormat};
use crate::crypto::{kcv, random_bytes, Algorithm, Cipher};
use crate::proto::{self as pb, crypto_client::CryptoClient, key_admin_client::KeyAdminClient};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic_types::StatusExt;
use zeroize::Zeroizing;

#[derive(Args, Debug, Clone)]
pub struct SimulateArgs {
    /// Terminals (PIN pads) served by the simulated POSP.
    #[arg(long, default_value_t = 100)]
    pub terminals: usize,
    /// Length of the business day, in seconds (after the terminals are provisioned).
    #[arg(long, default_value_t = 30)]
    pub duration: u64,
    /// A running daemon (host:port). Default: start one in this process with a
    /// throw-away LMK and certificates.
    #[arg(long)]
    pub addr: Option<String>,
    /// With --addr: the daemon's data dir, for DIR/certs/{ca,admin,posp}.{pem,key}.
    #[arg(long, default_value = "./poshsm-data")]
    pub data_dir: PathBuf,
    /// TLS connections of the POSP.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Purchases per second one terminal starts, on average (each needs one PIN
    /// translation; the security trigger allows 20/s per terminal, at most 10 here).
    #[arg(long, default_value_t = 2.0)]
    pub terminal_tps: f64,
    /// Percent of purchases with an injected fault (wrong PIN, garbage PIN block, bad MAC).
    #[arg(long, default_value_t = 3.0)]
    pub failure_pct: f64,
    /// Print the summary as one JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

// ------------------------------------------------------------------ helpers

/// xorshift64*: the simulator's choices (cards, faults, think times); not for keys.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let mut b = [0u8; 8];
        random_bytes(&mut b);
        Rng(u64::from_le_bytes(b) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn reason(s: &tonic::Status) -> String {
    s.get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_else(|| format!("{:?}", s.code()))
}

fn key_ref_alias(a: &str) -> Option<pb::KeyRef> {
    Some(pb::KeyRef {
        r#ref: Some(pb::key_ref::Ref::Alias(a.to_string())),
    })
}

// ------------------------------------------------------------------ parties

/// One PIN pad (the shared, independently computed terminal side).
type Terminal = crate::pinpad::PinPad;

struct Card {
    pan: String,
    pin: String,
}

/// The card network and issuer: the clear ZPK and ZAK (via [`NetworkPeer`]), the cards' PINs.
struct Network {
    peer: crate::pinpad::NetworkPeer,
    zpk_kcv: String,
    zpk_alias: String,
    zak_alias: String,
    cards: Vec<Card>,
}

impl Network {
    /// The PIN inside a translated ISO 0 block, or why it is unreadable.
    fn pin(&self, block: &[u8], pan: &str) -> Result<Zeroizing<String>, String> {
        self.peer.pin(block, pan).map(Zeroizing::new)
    }

    fn check_mac(&self, msg: &[u8], m: &[u8]) -> bool {
        self.peer.check_mac(msg, m)
    }
}

// ------------------------------------------------------------------ statistics

const SIGN_IN: usize = 0;
const VERIFY_MAC: usize = 1;
const TRANSLATE_PIN: usize = 2;
const NETWORK_MAC: usize = 3;
const RESPONSE_MAC: usize = 4;
const PURCHASE: usize = 5;
const KINDS: [&str; 6] = [
    "sign-in",
    "verify MAC",
    "translate PIN",
    "network MAC",
    "response MAC",
    "purchase (4 RPCs)",
];

/// Expected outcomes of injected faults.
const WRONG_PIN: &str = "WRONG_PIN (issuer declined, 55)";
const GARBAGE_BLOCK: &str = "INVALID_PIN_BLOCK (garbage/wrong-key block)";
const BAD_MAC: &str = "BAD_MAC (request rejected, valid=false)";

#[derive(Default)]
struct Stats {
    sign_ins: u64,
    morning_sign_ins: u64,
    midday_sign_ins: u64,
    grace_verified: u64,
    purchases: u64,
    approved: u64,
    rpcs: u64,
    expected: BTreeMap<&'static str, u64>,
    unexpected: BTreeMap<String, u64>,
    samples: Vec<String>,
    lat_us: [Vec<u32>; 6],
}

impl Stats {
    fn merge(&mut self, o: Stats) {
        self.sign_ins += o.sign_ins;
        self.morning_sign_ins += o.morning_sign_ins;
        self.midday_sign_ins += o.midday_sign_ins;
        self.grace_verified += o.grace_verified;
        self.purchases += o.purchases;
        self.approved += o.approved;
        self.rpcs += o.rpcs;
        for (k, v) in o.expected {
            *self.expected.entry(k).or_default() += v;
        }
        for (k, v) in o.unexpected {
            *self.unexpected.entry(k).or_default() += v;
        }
        for s in o.samples {
            if self.samples.len() < 8 {
                self.samples.push(s);
            }
        }
        for (a, b) in self.lat_us.iter_mut().zip(o.lat_us) {
            a.extend(b);
        }
    }
}

/// Counters the progress bar reads while the day runs.
#[derive(Default)]
struct Live {
    sign_ins: AtomicU64,
    purchases: AtomicU64,
    approved: AtomicU64,
    expected: AtomicU64,
    unexpected: AtomicU64,
}

/// One terminal's view of the day, with its own statistics.
struct Actor {
    t: Terminal,
    rng: Rng,
    stats: Stats,
    live: Arc<Live>,
    crypto: CryptoClient<Channel>,
    net: Arc<Network>,
    stan: u32,
}

fn us(since: Instant) -> u32 {
    since.elapsed().as_micros().min(u32::MAX as u128) as u32
}

impl Actor {
    fn expected(&mut self, what: &'static str) {
        *self.stats.expected.entry(what).or_default() += 1;
        self.live.expected.fetch_add(1, Relaxed);
    }

    fn unexpected(&mut self, what: impl Into<String>, detail: String) {
        let what = what.into();
        if self.stats.samples.len() < 8 {
            self.stats
                .samples
                .push(format!("{} {what}: {detail}", self.t.terminal_id));
        }
        *self.stats.unexpected.entry(what).or_default() += 1;
        self.live.unexpected.fetch_add(1, Relaxed);
    }

    /// 0800/0810: fresh PIK/MAK/TDK under the TMK (UNIONPAY_004).
    async fn sign_in(&mut self) -> bool {
        let t0 = Instant::now();
        self.stats.rpcs += 1;
        let r = self
            .crypto
            .sign_in(pb::SignInRequest {
                terminal_id: self.t.terminal_id.clone(),
                include_tdk: true,
                ..Default::default()
            })
            .await;
        match r {
            Ok(r) => {
                self.stats.lat_us[SIGN_IN].push(us(t0));
                let r = r.into_inner();
                if let Err(e) = self.t.load_field62(&r.field62, r.layout) {
                    self.unexpected("FIELD62_REJECTED_BY_TERMINAL", e);
                    return false;
                }
                self.stats.sign_ins += 1;
                self.live.sign_ins.fetch_add(1, Relaxed);
                true
            }
            Err(s) => {
                self.unexpected(format!("SIGN_IN {}", reason(&s)), status_msg(&s));
                false
            }
        }
    }

    /// Mid-day: re-sign-in while a request MACed under the old MAK is in
    /// flight; the POSP verifies it after the keys rotated (grace window).
    async fn resign_in(&mut self, with_inflight: bool) -> bool {
        let pending = if with_inflight {
            let msg = format!("0200|{}|inflight|{}", self.t.terminal_id, self.stan).into_bytes();
            self.t.mac(&msg).ok().map(|m| (msg, m))
        } else {
            None
        };
        if !self.sign_in().await {
            return false;
        }
        if let Some((msg, m)) = pending {
            self.stats.rpcs += 1;
            match self.crypto.verify_mac(self.verify_req(msg, m)).await {
                Ok(v) if v.get_ref().valid => self.stats.grace_verified += 1,
                Ok(_) => self.unexpected(
                    "GRACE_WINDOW_MAC_REFUSED",
                    "a MAC under the previous MAK failed right after the sign-in".into(),
                ),
                Err(s) => self.unexpected(format!("VERIFY_MAC {}", reason(&s)), status_msg(&s)),
            }
        }
        true
    }

    fn verify_req(&self, message: Vec<u8>, mac: Vec<u8>) -> pb::VerifyMacRequest {
        pb::VerifyMacRequest {
            key_source: Some(pb::verify_mac_request::KeySource::TerminalId(
                self.t.terminal_id.clone(),
            )),
            algorithm: pb::MacAlgorithm::UnionpayEcb as i32,
            message,
            mac,
        }
    }

    /// One purchase, end to end. `fault` injects a failure the HSM must catch.
    async fn purchase(&mut self, failure_pct: f64) {
        #[derive(PartialEq)]
        enum Fault {
            None,
            WrongPin,
            Garbage,
            BadMac,
        }
        let fault = if self.rng.unit() * 100.0 < failure_pct {
            match self.rng.below(10) {
                0..=3 => Fault::WrongPin,
                4..=6 => Fault::Garbage,
                _ => Fault::BadMac,
            }
        } else {
            Fault::None
        };
        self.stats.purchases += 1;
        self.live.purchases.fetch_add(1, Relaxed);
        self.stan = self.stan.wrapping_add(1) % 1_000_000;
        let net = self.net.clone();
        let card = &net.cards[self.rng.below(net.cards.len() as u64) as usize];
        let amount = 100 + self.rng.below(99_900);
        let started = Instant::now();

        // The PIN pad: PIN block under the PIK, request MAC under the MAK.
        let entered = if fault == Fault::WrongPin {
            // A cardholder's typo: another PIN of the same length.
            let mut p: Vec<u8> = card.pin.bytes().collect();
            p[0] = b'0' + ((p[0] - b'0' + 1 + self.rng.below(9) as u8) % 10);
            Zeroizing::new(String::from_utf8_lossy(&p).into_owned())
        } else {
            Zeroizing::new(card.pin.clone())
        };
        let pin_block = if fault == Fault::Garbage {
            // Line noise, or a PIN pad that lost its keys: a block under a key
            // the daemon does not know. Either decodes to garbage.
            let mut b = vec![0u8; 8];
            random_bytes(&mut b);
            if self.rng.below(2) == 0 {
                let (_, wrong) = crate::pinpad::tdes_components();
                let wrong_key = Cipher::new(Algorithm::Tdes2, &wrong).map_err(|e| e.to_string());
                let block = wrong_key.and_then(|k| {
                    let pin = Pin::parse(&entered).map_err(|e| e.to_string())?;
                    let pan = Pan::parse(&card.pan).map_err(|e| e.to_string())?;
                    pinblock::encipher(PinBlockFormat::Iso0, &k, &pin, Some(&pan))
                        .map_err(|e| e.to_string())
                });
                if let Ok(x) = block {
                    b = x;
                }
            }
            b
        } else {
            match self.t.pin_block(&entered, &card.pan) {
                Ok(b) => b,
                Err(e) => return self.unexpected("TERMINAL_PIN_BLOCK", e),
            }
        };
        let request = format!(
            "0200|{}|{:06}|{:012}|{}|{}",
            self.t.terminal_id,
            self.stan,
            amount,
            card.pan,
            hex::encode_upper(&pin_block)
        )
        .into_bytes();
        let mut request_mac = match self.t.mac(&request) {
            Ok(m) => m,
            Err(e) => return self.unexpected("TERMINAL_MAC", e),
        };
        if fault == Fault::BadMac {
            // Line noise: one MAC character changed.
            let i = self.rng.below(request_mac.len() as u64) as usize;
            request_mac[i] = if request_mac[i] == b'0' { b'1' } else { b'0' };
        }

        // 1. The POSP verifies the request MAC.
        let t0 = Instant::now();
        self.stats.rpcs += 1;
        match self
            .crypto
            .verify_mac(self.verify_req(request.clone(), request_mac))
            .await
        {
            Ok(v) => {
                self.stats.lat_us[VERIFY_MAC].push(us(t0));
                match (v.get_ref().valid, fault == Fault::BadMac) {
                    (true, false) => {}
                    (false, true) => return self.expected(BAD_MAC),
                    (false, false) => {
                        return self
                            .unexpected("MAC_NOT_VALID", "an honest request MAC failed".into())
                    }
                    (true, true) => {
                        return self
                            .unexpected("BAD_MAC_ACCEPTED", "a corrupted MAC verified".into())
                    }
                }
            }
            Err(s) => return self.unexpected(format!("VERIFY_MAC {}", reason(&s)), status_msg(&s)),
        }

        // 2. PIN from the terminal's PIK to the network's ZPK.
        let t0 = Instant::now();
        self.stats.rpcs += 1;
        let translated = match self
            .crypto
            .translate_pin(pb::TranslatePinRequest {
                source: Some(pb::translate_pin_request::Source::TerminalId(
                    self.t.terminal_id.clone(),
                )),
                dest_key: key_ref_alias(&net.zpk_alias),
                pin_block,
                pan: card.pan.clone(),
                source_format: pb::PinBlockFormat::Iso0 as i32,
                dest_format: pb::PinBlockFormat::Iso0 as i32,
            })
            .await
        {
            Ok(r) => {
                self.stats.lat_us[TRANSLATE_PIN].push(us(t0));
                r.into_inner()
            }
            Err(s) => {
                let r = reason(&s);
                if fault == Fault::Garbage && r == "INVALID_PIN_BLOCK" {
                    return self.expected(GARBAGE_BLOCK);
                }
                return self.unexpected(format!("TRANSLATE_PIN {r}"), status_msg(&s));
            }
        };
        if translated.dest_kcv != net.zpk_kcv {
            return self.unexpected(
                "ZPK_KCV_MISMATCH",
                format!("dest_kcv {} is not the network's", translated.dest_kcv),
            );
        }

        // 3. The network 0200, MACed with the ZAK; the network checks both.
        let to_network = format!(
            "0200|ACQ|{}|{:06}|{:012}|{}|{}",
            self.t.terminal_id,
            self.stan,
            amount,
            card.pan,
            hex::encode_upper(&translated.pin_block)
        )
        .into_bytes();
        let t0 = Instant::now();
        self.stats.rpcs += 1;
        let network_mac = match self
            .crypto
            .generate_mac(pb::GenerateMacRequest {
                key_source: Some(pb::generate_mac_request::KeySource::Key(pb::KeyRef {
                    r#ref: Some(pb::key_ref::Ref::Alias(net.zak_alias.clone())),
                })),
                algorithm: pb::MacAlgorithm::Iso9797Alg3 as i32,
                message: to_network.clone(),
                mac_length: 8,
            })
            .await
        {
            Ok(r) => {
                self.stats.lat_us[NETWORK_MAC].push(us(t0));
                r.into_inner().mac
            }
            Err(s) => {
                return self.unexpected(format!("GENERATE_MAC {}", reason(&s)), status_msg(&s))
            }
        };
        if !net.check_mac(&to_network, &network_mac) {
            return self.unexpected(
                "NETWORK_MAC_MISMATCH",
                "the network's X9.19 MAC differs".into(),
            );
        }
        let response_code = match (net.pin(&translated.pin_block, &card.pan), &fault) {
            (Ok(p), Fault::None) if *p == card.pin => "00",
            (Ok(p), Fault::WrongPin) if *p == *entered && *p != card.pin => {
                self.expected(WRONG_PIN);
                "55"
            }
            // A garbage block that happened to decode: the issuer declines it.
            (_, Fault::Garbage) => {
                self.expected(GARBAGE_BLOCK);
                "55"
            }
            (Ok(_), _) => {
                return self.unexpected(
                    "PIN_CHANGED_IN_TRANSLATION",
                    "the network found another PIN than the terminal's".into(),
                )
            }
            (Err(e), _) => return self.unexpected("NETWORK_CANNOT_READ_PIN", e),
        };

        // 4. The 0210 back to the terminal, MACed with its MAK.
        let response = format!(
            "0210|{}|{:06}|{:012}|{response_code}",
            self.t.terminal_id, self.stan, amount
        )
        .into_bytes();
        let t0 = Instant::now();
        self.stats.rpcs += 1;
        match self
            .crypto
            .generate_mac(pb::GenerateMacRequest {
                key_source: Some(pb::generate_mac_request::KeySource::TerminalId(
                    self.t.terminal_id.clone(),
                )),
                algorithm: pb::MacAlgorithm::UnionpayEcb as i32,
                message: response.clone(),
                mac_length: 0,
            })
            .await
        {
            Ok(r) => {
                self.stats.lat_us[RESPONSE_MAC].push(us(t0));
                if !self.t.check_mac(&response, &r.into_inner().mac) {
                    return self.unexpected(
                        "RESPONSE_MAC_REJECTED_BY_TERMINAL",
                        "the terminal's own MAC of the 0210 differs".into(),
                    );
                }
            }
            Err(s) => {
                return self.unexpected(format!("GENERATE_MAC {}", reason(&s)), status_msg(&s))
            }
        }
        self.stats.lat_us[PURCHASE].push(us(started));
        if response_code == "00" {
            self.stats.approved += 1;
            self.live.approved.fetch_add(1, Relaxed);
        }
    }
}

// ------------------------------------------------------------------ the daemon

/// The daemon the POSP talks to: in this process, or at --addr.
struct Daemon {
    addr: String,
    in_process: bool,
    admin: Channel,
    posp: Vec<Channel>,
    stop: Option<(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
        tempfile::TempDir,
    )>,
}

impl Daemon {
    async fn start(args: &SimulateArgs) -> Result<Daemon, String> {
        let connections = args.connections.clamp(1, 64);
        if let Some(addr) = &args.addr {
            let admin =
                connect(&ClientConfig::from_data_dir(addr, &args.data_dir, "admin")).await?;
            let cfg = ClientConfig::from_data_dir(addr, &args.data_dir, "posp");
            let mut posp = Vec::new();
            for _ in 0..connections {
                posp.push(connect(&cfg).await?);
            }
            return Ok(Daemon {
                addr: addr.clone(),
                in_process: false,
                admin,
                posp,
                stop: None,
            });
        }
        use crate::server::{self, AccessConfig, TlsMaterial};
        let dir = tempfile::Builder::new()
            .prefix("poshsm-simulate-")
            .tempdir()
            .map_err(|e| format!("cannot create a temporary data dir: {e}"))?;
        let db = dir.path().join("db");
        let hsm = tokio::task::spawn_blocking(move || -> Result<_, String> {
            let store = crate::store::Store::open(&db).map_err(|e| e.to_string())?;
            Ok(crate::hsm::Hsm::new(
                crate::keys::Lmk::generate(),
                store,
                crate::hsm::HsmConfig::default(),
            ))
        })
        .await
        .map_err(|e| e.to_string())??;
        if let Some(a) = hsm.alarm() {
            return Err(format!("the in-process module is in ALARM: {a}"));
        }
        let hsm = Arc::new(hsm);
        let pki = crate::devcerts::generate("poshsm simulate CA", &["admin", "posp"])
            .map_err(|e| format!("dev certificates: {e}"))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("cannot listen on 127.0.0.1: {e}"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| e.to_string())?
            .to_string();
        let tls = TlsMaterial {
            ca_pem: pki.ca_pem.clone().into_bytes(),
            cert_pem: pki.server_cert_pem.clone().into_bytes(),
            key_pem: pki.server_key_pem.clone().into_bytes(),
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let stop = async move {
                let _ = rx.await;
            };
            if let Err(e) =
                server::serve(listener, hsm, tls, AccessConfig::default(), None, 0, stop).await
            {
                tracing::error!(error = %e, "in-process daemon stopped");
            }
        });
        let chan = |role: &str| {
            let (c, k) = pki.client(role).unwrap_or_default();
            (c.to_string(), k.to_string())
        };
        let (ac, ak) = chan("admin");
        let admin = connect_pem(&addr, pki.ca_pem.as_bytes(), ac.as_bytes(), ak.as_bytes()).await?;
        let (pc, pk) = chan("posp");
        let mut posp = Vec::new();
        for _ in 0..connections {
            posp.push(
                connect_pem(&addr, pki.ca_pem.as_bytes(), pc.as_bytes(), pk.as_bytes()).await?,
            );
        }
        Ok(Daemon {
            addr,
            in_process: true,
            admin,
            posp,
            stop: Some((tx, task, dir)),
        })
    }

    async fn shutdown(mut self) {
        if let Some((tx, task, dir)) = self.stop.take() {
            drop(self.posp);
            drop(self.admin);
            let _ = tx.send(());
            let mut task = task;
            if tokio::time::timeout(Duration::from_secs(10), &mut task)
                .await
                .is_err()
            {
                // Still draining: stop it, so the store is closed before its dir goes.
                task.abort();
                let _ = task.await;
            }
            drop(dir);
        }
    }
}

// ------------------------------------------------------------------ provisioning

struct Fleet {
    terminals: Vec<Terminal>,
    network: Arc<Network>,
    lmk_kcv: String,
}

async fn provision(args: &SimulateArgs, d: &Daemon, show: bool) -> Result<Fleet, String> {
    let mut admin = KeyAdminClient::new(d.admin.clone());
    let e = |what: &str, s: tonic::Status| {
        format!(
            "{what}: {} [{}]{}",
            s.message(),
            reason(&s),
            if s.code() == tonic::Code::PermissionDenied {
                " (simulate needs the admin certificate of DIR/certs for provisioning)"
            } else {
                ""
            }
        )
    };
    let status = admin
        .get_status(pb::GetStatusRequest {})
        .await
        .map_err(|s| e("GetStatus", s))?
        .into_inner();
    if status.state != "OK" {
        return Err(format!(
            "the module is in {}: {} (see OPERATIONS.md, \"Alarms\")",
            status.state, status.reason
        ));
    }
    let mut sfx = [0u8; 3];
    random_bytes(&mut sfx);
    let sfx = hex::encode_upper(sfx);

    // The network's key exchange: a ZMK from custodians' components, then the
    // ZPK and ZAK delivered under it (X9.17 ECB) with their KCVs.
    let (zmk_parts, zmk_clear) = crate::pinpad::tdes_components();
    let zmk = admin
        .import_key_components(pb::ImportKeyComponentsRequest {
            key_type: pb::KeyType::Zmk as i32,
            algorithm: pb::KeyAlgorithm::Tdes2key as i32,
            components: zmk_parts,
            alias: format!("sim-zmk-{sfx}"),
            ..Default::default()
        })
        .await
        .map_err(|s| e("form the ZMK", s))?
        .into_inner();
    let zmk_cipher = Cipher::new(Algorithm::Tdes2, &zmk_clear).map_err(|e| e.to_string())?;
    let deliver = |t: pb::KeyType, alias: String| {
        let (_, clear) = crate::pinpad::tdes_components();
        let mut under_zmk = clear.to_vec();
        let wrapped = zmk_cipher.ecb_encrypt(&mut under_zmk).map(|_| under_zmk);
        let mut admin = admin.clone();
        let zmk_id = zmk.key_id.clone();
        async move {
            let c = Cipher::new(Algorithm::Tdes2, &clear).map_err(|e| e.to_string())?;
            let kcv = kcv::kcv_hex(&c, 3);
            admin
                .import_key(pb::ImportKeyRequest {
                    key_type: t as i32,
                    algorithm: pb::KeyAlgorithm::Tdes2key as i32,
                    wrapping_key: Some(pb::KeyRef {
                        r#ref: Some(pb::key_ref::Ref::KeyId(zmk_id)),
                    }),
                    wrapped: Some(pb::import_key_request::Wrapped::X917Ecb(
                        wrapped.map_err(|e| e.to_string())?,
                    )),
                    expected_kcv: kcv.clone(),
                    alias: alias.clone(),
                    exportable: false,
                })
                .await
                .map_err(|s| format!("import {alias}: {} [{}]", s.message(), reason(&s)))?;
            Ok::<_, String>((c, clear, kcv))
        }
    };
    let zpk_alias = format!("sim-zpk-{sfx}");
    let zak_alias = format!("sim-zak-{sfx}");
    let (_, zpk, zpk_kcv) = deliver(pb::KeyType::Zpk, zpk_alias.clone()).await?;
    let (_, zak, _) = deliver(pb::KeyType::Zak, zak_alias.clone()).await?;
    let peer = crate::pinpad::NetworkPeer::new(&zpk_alias, &zak_alias, &zpk, &zak)?;
    let mut rng = Rng::new();
    let cards = (0..64)
        .map(|_| {
            let digits = |rng: &mut Rng, n: usize| -> String {
                (0..n)
                    .map(|_| (b'0' + rng.below(10) as u8) as char)
                    .collect()
            };
            let pin_len = 4 + rng.below(3) as usize;
            Card {
                pan: format!("622202{}", digits(&mut rng, 13)),
                pin: digits(&mut rng, pin_len),
            }
        })
        .collect();
    let network = Arc::new(Network {
        peer,
        zpk_kcv,
        zpk_alias,
        zak_alias,
        cards,
    });

    // Terminals: TMKs formed from components at the key-loading facility, one
    // per batch of 100 PIN pads, then every terminal registered with its TMK.
    let n = args.terminals.max(1);
    let batches = n.div_ceil(100);
    let pb = progress_bar((n + batches) as u64, "provision", !show);
    let mut tmks = Vec::with_capacity(batches);
    for b in 0..batches {
        let (parts, clear) = crate::pinpad::tdes_components();
        let info = admin
            .import_key_components(pb::ImportKeyComponentsRequest {
                key_type: pb::KeyType::Tmk as i32,
                algorithm: pb::KeyAlgorithm::Tdes2key as i32,
                components: parts,
                alias: format!("sim-tmk-{sfx}-{b}"),
                ..Default::default()
            })
            .await
            .map_err(|s| e("form a TMK", s))?
            .into_inner();
        let cipher = Arc::new(Cipher::new(Algorithm::Tdes2, &clear).map_err(|e| e.to_string())?);
        tmks.push((info.key_id, cipher));
        pb.inc(1);
    }
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permit = sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let mut admin = admin.clone();
        let (tmk_id, tmk) = tmks[i / 100].clone();
        let id = format!("S{sfx}{i:05}");
        let pb = pb.clone();
        tasks.push(tokio::spawn(async move {
            let _p = permit;
            admin
                .create_terminal(pb::CreateTerminalRequest {
                    terminal_id: id.clone(),
                    merchant_id: format!("898{:012}", i / 10),
                    tmk: Some(pb::KeyRef {
                        r#ref: Some(pb::key_ref::Ref::KeyId(tmk_id)),
                    }),
                    tmk_algorithm: 0,
                })
                .await
                .map_err(|s| format!("create terminal {id}: {} [{}]", s.message(), reason(&s)))?;
            pb.inc(1);
            Ok::<_, String>(Terminal::with_tmk(&id, tmk))
        }));
    }
    let mut terminals = Vec::with_capacity(n);
    for t in tasks {
        terminals.push(t.await.map_err(|e| e.to_string())??);
    }
    pb.finish_and_clear();
    Ok(Fleet {
        terminals,
        network,
        lmk_kcv: status.lmk_kcv,
    })
}

// ------------------------------------------------------------------ the day

/// The summary printed at the end (and with --json).
#[derive(Debug, Serialize)]
pub struct Report {
    pub daemon: String,
    pub terminals: usize,
    pub duration_s: f64,
    pub sign_ins: u64,
    pub morning_sign_ins: u64,
    pub midday_sign_ins: u64,
    pub grace_window_verified: u64,
    pub purchases: u64,
    pub approved: u64,
    pub purchases_per_s: f64,
    pub rpcs: u64,
    pub rpcs_per_s: f64,
    /// Per RPC kind: p50/p90/p99/p99.9/max in microseconds.
    pub latency_us: BTreeMap<String, BTreeMap<String, u32>>,
    pub expected_failures: BTreeMap<String, u64>,
    pub unexpected_failures: BTreeMap<String, u64>,
    pub unexpected_samples: Vec<String>,
    pub module_state: String,
    pub audit_events: u64,
    pub pass: bool,
}

fn phase_at(frac: f64) -> &'static str {
    match frac {
        f if f < 0.10 => "morning sign-in",
        f if f < 0.50 => "morning trade",
        f if f < 0.60 => "mid-day sign-in",
        f if f < 1.0 => "afternoon trade",
        _ => "closing",
    }
}

pub async fn run(args: SimulateArgs) -> Result<(), String> {
    if !(args.terminal_tps > 0.0 && args.terminal_tps <= 10.0) {
        return Err(format!(
            "--terminal-tps {} is outside (0, 10]: each purchase is a PIN translation and the \
             daemon's security trigger throttles a terminal above 20 translations/s",
            args.terminal_tps
        ));
    }
    if !(0.0..=50.0).contains(&args.failure_pct) {
        return Err("--failure-pct must be between 0 and 50".into());
    }
    if args.terminals == 0 || args.duration == 0 {
        return Err("--terminals and --duration must be at least 1".into());
    }
    let show = !args.json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let say = |m: String| {
        if !args.json {
            eprintln!("simulate: {m}");
        }
    };
    let daemon = Daemon::start(&args).await?;
    say(format!(
        "{} daemon at {}; provisioning {} terminals (TMKs, ZMK → ZPK/ZAK from the network)",
        if daemon.in_process {
            "in-process"
        } else {
            "running"
        },
        daemon.addr,
        args.terminals
    ));
    let t_prov = Instant::now();
    let fleet = match provision(&args, &daemon, show).await {
        Ok(f) => f,
        Err(e) => {
            daemon.shutdown().await;
            return Err(e);
        }
    };
    say(format!(
        "provisioned in {:.1} s; LMK KCV {}; the day runs {} s",
        t_prov.elapsed().as_secs_f64(),
        fleet.lmk_kcv,
        args.duration
    ));

    let day = Duration::from_secs(args.duration);
    let live = Arc::new(Live::default());
    let start = Instant::now();
    let storm = day.mul_f64(0.10).min(Duration::from_secs(5));
    let mut tasks = Vec::with_capacity(fleet.terminals.len());
    for (i, t) in fleet.terminals.into_iter().enumerate() {
        let mut actor = Actor {
            t,
            rng: Rng::new(),
            stats: Stats::default(),
            live: live.clone(),
            crypto: CryptoClient::new(daemon.posp[i % daemon.posp.len()].clone()),
            net: fleet.network.clone(),
            stan: 0,
        };
        let tps = args.terminal_tps;
        let failure_pct = args.failure_pct;
        tasks.push(tokio::spawn(async move {
            let at = |f: f64| start + day.mul_f64(f);
            // Morning: the storm — every terminal signs in within the first seconds.
            tokio::time::sleep_until((start + storm.mul_f64(actor.rng.unit())).into()).await;
            if !actor.sign_in().await {
                return actor.stats;
            }
            actor.stats.morning_sign_ins += 1;
            let resign = at(0.50 + 0.10 * actor.rng.unit());
            let inflight = actor.rng.below(5) == 0;
            let mut resigned = false;
            let end = at(1.0);
            loop {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                if !resigned && now >= resign {
                    resigned = true;
                    if !actor.resign_in(inflight).await {
                        break;
                    }
                    actor.stats.midday_sign_ins += 1;
                    continue;
                }
                actor.purchase(failure_pct).await;
                // Think time: uniform around 1/tps, never past the next event.
                let think = Duration::from_secs_f64((0.5 + actor.rng.unit()) / tps);
                let mut wake = Instant::now() + think;
                if !resigned {
                    wake = wake.min(resign);
                }
                tokio::time::sleep_until(wake.min(end).into()).await;
            }
            actor.stats
        }));
    }

    // The live view: a bar on a terminal, one line per phase otherwise.
    let bar = if show {
        let pb = ProgressBar::with_draw_target(
            Some(args.duration),
            indicatif::ProgressDrawTarget::stderr(),
        );
        if let Ok(s) = ProgressStyle::with_template(
            "{spinner} {prefix:<15} [{bar:24.cyan/blue}] {pos:>3}/{len}s  {msg}",
        ) {
            pb.set_style(s.progress_chars("=> "));
        }
        pb.enable_steady_tick(Duration::from_millis(200));
        pb
    } else {
        ProgressBar::hidden()
    };
    let ticker = {
        let live = live.clone();
        let bar = bar.clone();
        let json = args.json;
        tokio::spawn(async move {
            let mut phase = "";
            let mut last = (Instant::now(), 0u64);
            let mut tps = 0.0;
            loop {
                let el = start.elapsed();
                let frac = el.as_secs_f64() / day.as_secs_f64();
                let p = live.purchases.load(Relaxed);
                if last.0.elapsed() >= Duration::from_millis(900) {
                    tps = (p - last.1) as f64 / last.0.elapsed().as_secs_f64();
                    last = (Instant::now(), p);
                }
                let line = format!(
                    "sign-ins {}  purchases {} ({:.0}/s)  approved {}  expected failures {}  unexpected {}",
                    live.sign_ins.load(Relaxed),
                    p,
                    tps,
                    live.approved.load(Relaxed),
                    live.expected.load(Relaxed),
                    live.unexpected.load(Relaxed)
                );
                let ph = phase_at(frac);
                if ph != phase {
                    phase = ph;
                    bar.set_prefix(ph);
                    if !json {
                        bar.suspend(|| {
                            eprintln!("simulate: {:>5.1}s {ph:<16} {line}", el.as_secs_f64())
                        });
                    }
                }
                bar.set_position(el.as_secs().min(day.as_secs()));
                bar.set_message(line);
                if frac >= 1.0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let mut stats = Stats::default();
    for t in tasks {
        match t.await {
            Ok(s) => stats.merge(s),
            Err(e) => {
                *stats
                    .unexpected
                    .entry("SIMULATOR_TASK_FAILED".into())
                    .or_default() += 1;
                stats.samples.push(e.to_string());
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let _ = ticker.await;
    bar.finish_and_clear();

    // Closing: the module must still be OK and its audit chain intact.
    let mut admin = KeyAdminClient::new(daemon.admin.clone());
    let mut module_state = String::from("unknown");
    match admin.get_status(pb::GetStatusRequest {}).await {
        Ok(s) => {
            let s = s.into_inner();
            if s.state != "OK" {
                *stats
                    .unexpected
                    .entry(format!("MODULE_{}", s.state))
                    .or_default() += 1;
                stats.samples.push(format!("module: {}", s.reason));
            }
            module_state = s.state;
        }
        Err(s) => {
            *stats
                .unexpected
                .entry(format!("GET_STATUS {}", reason(&s)))
                .or_default() += 1;
        }
    }
    let mut audit_events = 0;
    match admin.verify_audit_log(pb::VerifyAuditLogRequest {}).await {
        Ok(v) => {
            let v = v.into_inner();
            audit_events = v.events;
            if !v.valid {
                *stats
                    .unexpected
                    .entry("AUDIT_CHAIN_BROKEN".into())
                    .or_default() += 1;
                stats.samples.push(format!("audit: {}", v.problem));
            }
        }
        Err(s) => {
            *stats
                .unexpected
                .entry(format!("VERIFY_AUDIT_LOG {}", reason(&s)))
                .or_default() += 1;
        }
    }
    drop(admin);
    let daemon_desc = if daemon.in_process {
        format!("in-process at {}", daemon.addr)
    } else {
        daemon.addr.clone()
    };
    daemon.shutdown().await;

    let mut latency_us = BTreeMap::new();
    for (k, v) in KINDS.iter().zip(stats.lat_us.iter_mut()) {
        v.sort_unstable();
        let mut m = BTreeMap::new();
        m.insert("n".to_string(), v.len().min(u32::MAX as usize) as u32);
        m.insert("p50".to_string(), pct(v, 0.50));
        m.insert("p90".to_string(), pct(v, 0.90));
        m.insert("p99".to_string(), pct(v, 0.99));
        m.insert("p999".to_string(), pct(v, 0.999));
        m.insert("max".to_string(), v.last().copied().unwrap_or(0));
        latency_us.insert(k.to_string(), m);
    }
    let unexpected_total: u64 = stats.unexpected.values().sum();
    let report = Report {
        daemon: daemon_desc,
        terminals: args.terminals,
        duration_s: elapsed,
        sign_ins: stats.sign_ins,
        morning_sign_ins: stats.morning_sign_ins,
        midday_sign_ins: stats.midday_sign_ins,
        grace_window_verified: stats.grace_verified,
        purchases: stats.purchases,
        approved: stats.approved,
        purchases_per_s: stats.purchases as f64 / elapsed,
        rpcs: stats.rpcs,
        rpcs_per_s: stats.rpcs as f64 / elapsed,
        latency_us,
        expected_failures: stats
            .expected
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
        unexpected_failures: stats.unexpected.clone(),
        unexpected_samples: stats.samples.clone(),
        module_state,
        audit_events,
        pass: unexpected_total == 0,
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
        );
    } else {
        print_report(&report);
    }
    if unexpected_total > 0 {
        return Err(format!(
            "{unexpected_total} unexpected failure(s) during the day (see the summary); \
             check `poshsm admin status` and the daemon's log"
        ));
    }
    Ok(())
}

fn print_report(r: &Report) {
    let ms = |us: u32| format!("{:.2}", us as f64 / 1000.0);
    println!();
    println!(
        "poshsm simulate: {} terminals, a {:.1} s business day against the daemon {}",
        r.terminals, r.duration_s, r.daemon
    );
    println!();
    println!(
        "  sign-ins      {:>9}   morning storm {}, mid-day {}; {} in-flight MACs verified in the grace window",
        r.sign_ins, r.morning_sign_ins, r.midday_sign_ins, r.grace_window_verified
    );
    println!(
        "  purchases     {:>9}   {:.1}/s; approved {}",
        r.purchases, r.purchases_per_s, r.approved
    );
    println!("  RPCs          {:>9}   {:.1}/s", r.rpcs, r.rpcs_per_s);
    println!();
    println!(
        "  {:<20} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "latency (ms)", "n", "p50", "p90", "p99", "p99.9", "max"
    );
    for k in KINDS {
        if let Some(m) = r.latency_us.get(k) {
            let g = |f: &str| m.get(f).copied().unwrap_or(0);
            println!(
                "  {:<20} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
                k,
                g("n"),
                ms(g("p50")),
                ms(g("p90")),
                ms(g("p99")),
                ms(g("p999")),
                ms(g("max"))
            );
        }
    }
    println!();
    println!("  failures");
    if r.expected_failures.is_empty() {
        println!("    expected    none");
    }
    for (k, v) in &r.expected_failures {
        println!("    expected    {k:<44} {v:>8}");
    }
    if r.unexpected_failures.is_empty() {
        println!("    unexpected  none");
    }
    for (k, v) in &r.unexpected_failures {
        println!("    UNEXPECTED  {k:<44} {v:>8}");
    }
    for s in &r.unexpected_samples {
        println!("      e.g. {s}");
    }
    println!();
    println!(
        "  module {}, audit chain of {} events verified",
        r.module_state, r.audit_events
    );
    println!(
        "result: {}",
        if r.pass {
            "PASS (every failure was one the day was meant to produce)"
        } else {
            "FAIL (unexpected failures above)"
        }
    );
}
