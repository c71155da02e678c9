//! Crash safety of the real daemon: `poshsm serve --dev` as a child process, a
//! sign-in storm from several concurrent mutual-TLS clients over a few dozen
//! terminals, SIGKILL at a random moment, restart on the same data directory —
//! twenty times and more. After every restart:
//!
//! - no acknowledged sign-in is lost: each terminal's key version is at least
//!   the highest version ever acknowledged to a client, and never goes back;
//! - the working keys of the last acknowledged sign-in are still there (by key id,
//!   with that version, and their LMK key block still MACs) — unless a later sign-in,
//!   committed but killed before it answered, superseded them by two versions
//!   (the core keeps the current and the previous set and deletes older ones);
//! - the audit hash chain verifies and the module reports OK.

mod common;

use common::daemon::Daemon;
use poshsm::cli::client::{connect, ClientConfig};
use poshsm::proto::{self as pb, crypto_client::CryptoClient, key_admin_client::KeyAdminClient};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::Code;

const TERMINALS: usize = 24;
const CLIENTS: usize = 4;
const ROUNDS: usize = 20;

/// What a client was told by an acknowledged sign-in.
#[derive(Clone, Debug)]
struct Ack {
    version: u32,
    pik_id: String,
    mak_id: String,
    mak_block: String,
}

/// xorshift64*: a reproducible schedule from a printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn terminal(i: usize) -> String {
    format!("CRASH{i:03}")
}

async fn clients(
    dir: &Path,
    addr: &str,
) -> (
    KeyAdminClient<tonic::transport::Channel>,
    CryptoClient<tonic::transport::Channel>,
) {
    let admin = connect(&ClientConfig::from_data_dir(addr, dir, "admin"))
        .await
        .unwrap();
    let posp = connect(&ClientConfig::from_data_dir(addr, dir, "posp"))
        .await
        .unwrap();
    (KeyAdminClient::new(admin), CryptoClient::new(posp))
}

/// The checks after a restart. `floor` is the key version each terminal had at
/// the previous check (durable then), `acked` what clients were told since.
async fn check_after_restart(
    dir: &Path,
    addr: &str,
    acked: &HashMap<String, Ack>,
    floor: &mut HashMap<String, u32>,
) -> (usize, usize) {
    let (mut admin, mut posp) = clients(dir, addr).await;
    let st = admin
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.state, "OK", "{st:?}");
    assert_eq!(st.terminals, TERMINALS as u64);
    let chain = admin
        .verify_audit_log(pb::VerifyAuditLogRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(chain.valid, "audit chain after a crash: {chain:?}");
    let (mut exact, mut superseded) = (0, 0);
    for i in 0..TERMINALS {
        let tid = terminal(i);
        let t = admin
            .get_terminal(pb::GetTerminalRequest {
                terminal_id: tid.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let before = floor.get(&tid).copied().unwrap_or(0);
        assert!(
            t.key_version >= before,
            "{tid}: key version went back from {before} to {}",
            t.key_version
        );
        floor.insert(tid.clone(), t.key_version);
        let Some(ack) = acked.get(&tid) else {
            continue;
        };
        assert!(
            t.key_version >= ack.version,
            "{tid}: acknowledged sign-in {} lost (store has {})",
            ack.version,
            t.key_version
        );
        if t.key_version >= ack.version + 2 {
            // Superseded twice by committed sign-ins: the acknowledged set may be gone.
            superseded += 1;
            continue;
        }
        exact += 1;
        for id in [&ack.pik_id, &ack.mak_id] {
            let k = admin
                .get_key(pb::KeyRef {
                    r#ref: Some(pb::key_ref::Ref::KeyId(id.clone())),
                })
                .await
                .unwrap_or_else(|e| panic!("{tid}: acknowledged key {id} lost: {e:?}"))
                .into_inner();
            assert_eq!(k.version, ack.version, "{tid}: {k:?}");
            assert_eq!(k.state, "ACTIVE");
        }
        posp.generate_mac(pb::GenerateMacRequest {
            key_source: Some(pb::generate_mac_request::KeySource::Key(pb::KeyRef {
                r#ref: Some(pb::key_ref::Ref::KeyBlock(ack.mak_block.clone())),
            })),
            algorithm: pb::MacAlgorithm::UnionpayEcb as i32,
            message: b"0200 after the crash".to_vec(),
            mac_length: 0,
        })
        .await
        .unwrap_or_else(|e| panic!("{tid}: acknowledged MAK block refused: {e:?}"));
    }
    (exact, superseded)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_sign_in_is_lost_across_sigkill() {
    tokio::time::timeout(Duration::from_secs(60), crash_rounds())
        .await
        .expect("the crash test is bounded to 60 s");
}

async fn crash_rounds() {
    let t0 = Instant::now();
    let mut seed = [0u8; 8];
    poshsm::crypto::random_bytes(&mut seed);
    let seed = u64::from_le_bytes(seed) | 1;
    eprintln!("crash_safety seed {seed:#x}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();

    let daemon = tokio::task::block_in_place(|| Daemon::start(dir.path()));
    let (mut admin, _) = clients(dir.path(), &daemon.addr).await;
    for i in 0..TERMINALS {
        admin
            .create_terminal(pb::CreateTerminalRequest {
                terminal_id: terminal(i),
                merchant_id: "898000000000001".into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    drop(admin);
    let mut daemon = Some(daemon);

    let acked: Arc<Mutex<HashMap<String, Ack>>> = Arc::default();
    let mut floor: HashMap<String, u32> = HashMap::new();
    let total_acks = Arc::new(AtomicUsize::new(0));
    let (mut checked_exact, mut checked_superseded) = (0, 0);
    for round in 0..ROUNDS {
        let d = match daemon.take() {
            Some(d) => d,
            None => tokio::task::block_in_place(|| Daemon::start(dir.path())),
        };
        let snapshot = acked.lock().unwrap().clone();
        let (e, s) = check_after_restart(dir.path(), &d.addr, &snapshot, &mut floor).await;
        checked_exact += e;
        checked_superseded += s;

        // The storm: CLIENTS connections signing random terminals in.
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for c in 0..CLIENTS {
            let (_, mut posp) = clients(dir.path(), &d.addr).await;
            let acked = acked.clone();
            let stop = stop.clone();
            let total = total_acks.clone();
            let mut rng = Rng(seed ^ ((round * CLIENTS + c + 1) as u64).wrapping_mul(0x9E37_79B9));
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let tid = terminal(rng.below(TERMINALS as u64) as usize);
                    let r = posp
                        .sign_in(pb::SignInRequest {
                            terminal_id: tid.clone(),
                            ..Default::default()
                        })
                        .await;
                    match r {
                        Ok(resp) => {
                            let r = resp.into_inner();
                            let (pik, mak) = (r.pik.unwrap(), r.mak.unwrap());
                            let ack = Ack {
                                version: r.key_version,
                                pik_id: pik.key_id,
                                mak_id: mak.key_id,
                                mak_block: mak.key_block,
                            };
                            let mut a = acked.lock().unwrap();
                            if a.get(&tid).is_none_or(|old| old.version < ack.version) {
                                a.insert(tid, ack);
                            }
                            total.fetch_add(1, Ordering::Relaxed);
                        }
                        // Two clients on one terminal: the loser retries later.
                        Err(s) if s.code() == Code::Aborted => {}
                        // The daemon was killed under us.
                        Err(_) => {
                            if stop.load(Ordering::Relaxed) {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
            }));
        }
        let delay = 50 + rng.below(351);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        tokio::task::block_in_place(|| d.kill());
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("clients notice the dead daemon")
                .unwrap();
        }
    }
    // The last restart is checked too.
    let d = tokio::task::block_in_place(|| Daemon::start(dir.path()));
    let snapshot = acked.lock().unwrap().clone();
    let (e, s) = check_after_restart(dir.path(), &d.addr, &snapshot, &mut floor).await;
    checked_exact += e;
    checked_superseded += s;
    drop(d);
    let acks = total_acks.load(Ordering::Relaxed);
    eprintln!(
        "crash_safety: {ROUNDS} SIGKILLs, {acks} acknowledged sign-ins, \
         {checked_exact} acknowledged sets re-checked, {checked_superseded} superseded, {:?}",
        t0.elapsed()
    );
    assert!(
        acks >= ROUNDS,
        "the storm produced acknowledged sign-ins ({acks})"
    );
    assert!(checked_exact > 0);
}
