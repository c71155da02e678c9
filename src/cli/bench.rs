//! `poshsm bench`: the load generator. It creates its own fixtures (a TMK
//! formed from components it knows, many terminals signed in, a ZPK/ZAK)
//! through the admin API, then drives tonic clients over mutual TLS: closed
//! loop by default, open loop with `--rate` (latency measured from each
//! request's scheduled time, so queueing is not hidden). One process can run
//! several RPCs in sequence on the same channels (`--rpc health,translate-pin`).

use super::client::{connect, connect_coalescing, ClientConfig};
use crate::crypto::pinblock::{self, Pan, Pin, PinBlockFormat};
use crate::crypto::{random_bytes, Algorithm, Cipher};
use crate::proto::{self as pb, crypto_client::CryptoClient, key_admin_client::KeyAdminClient};
use clap::{Args, ValueEnum};
use prost::bytes::{Buf, BufMut, Bytes};
use prost::Message;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::Status;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchRpc {
    Health,
    TranslatePin,
    VerifyMac,
    GenerateMac,
    SignIn,
    TranslatePinBatch,
    VerifyMacBatch,
    /// The core's translate_pin in this process, no network (per-thread rate).
    InprocessTranslatePin,
    /// The same through the terminal path (`--terminals` signed-in terminals,
    /// each call a different one): the per-terminal lookup and its cold data.
    InprocessTerminalPin,
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub addr: String,
    /// Data dir of the daemon (for DIR/certs/{ca,admin,posp}.*).
    #[arg(long, default_value = "./poshsm-data")]
    pub data_dir: PathBuf,
    /// RPCs to drive, in order, on the same channels (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "translate-pin")]
    pub rpc: Vec<BenchRpc>,
    /// TLS connections (HTTP/2 channels).
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Requests in flight (closed loop) / workers (open loop) / threads (in-process).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Measured seconds per RPC.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Warm-up seconds per RPC (not measured).
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Open loop: requests per second (batch RPCs: batches per second).
    #[arg(long)]
    pub rate: Option<u64>,
    /// Terminals to create (load is spread over them, below the per-terminal guard).
    #[arg(long, default_value_t = 5000)]
    pub terminals: usize,
    /// Items per batch call.
    #[arg(long, default_value_t = 100)]
    pub batch_size: usize,
    /// Bytes per MAC message.
    #[arg(long, default_value_t = 256)]
    pub message_size: usize,
    #[arg(long)]
    pub json: bool,
    /// Alternate the RPCs in this many slices of duration/N each, so background
    /// load on a shared machine hits every RPC alike (fair ratios).
    #[arg(long, default_value_t = 1)]
    pub interleave: u32,
    /// Also report CPU time per unit of work (µs) of the daemon with this
    /// process id and of the generator itself, measured around each slice
    /// (Linux `/proc`; network RPCs). Rates on a shared machine move with its
    /// load; CPU per call is the cost each side pays. Also reports how busy
    /// the whole machine was (all CPUs) and the hypervisor's steal.
    #[arg(long)]
    pub cpu_pid: Option<u32>,
}

/// One terminal's fixture: what its PIN pad would send.
#[derive(Clone)]
struct Fixture {
    terminal_id: String,
    pin_block: Vec<u8>,
    message: Vec<u8>,
    mac: Vec<u8>,
    /// The card's PAN (each terminal's own, so a mix-up of terminals or PAN
    /// bindings shows as a wrong answer).
    pan: String,
}

struct Fixtures {
    zpk_alias: String,
    zak_alias: String,
    terminals: Vec<Fixture>,
    /// The unary requests per terminal, protobuf-encoded once (see
    /// [`RawCodec`]), each RPC's side by side in one buffer in terminal order.
    translate_pin: Vec<Bytes>,
    verify_mac: Vec<Bytes>,
    /// The answer each terminal's TranslatePin must get, byte for byte: the
    /// PIN block under the ZPK (ISO 0 is deterministic) for that terminal's
    /// PAN, and the ZPK's check value, both computed here from the ZPK's
    /// components.
    translate_pin_answers: Vec<&'static [u8]>,
}

/// The i-th fixture card's PAN: 19 digits, UnionPay-like, Luhn-valid.
fn bench_pan(i: usize) -> String {
    let body = format!("622202{:012}", i % 1_000_000_000_000);
    let check = luhn_check_digit(&body);
    format!("{body}{check}")
}

/// The Luhn (ISO/IEC 7812-1 annex B) check digit for a string of digits:
/// from the right, every second digit starting with the last is doubled.
fn luhn_check_digit(body: &str) -> u32 {
    let sum: u32 = body
        .bytes()
        .rev()
        .enumerate()
        .map(|(k, b)| {
            let d = u32::from(b.wrapping_sub(b'0') % 10);
            if k % 2 == 0 {
                let x = 2 * d;
                x / 10 + x % 10
            } else {
                d
            }
        })
        .sum();
    (10 - sum % 10) % 10
}

/// The ISO 0 PIN block of [`BENCH_PIN`] for `pan` under `key`: what a
/// fixture's PIN pad sends, or what the network must receive.
fn bench_pin_block(key: &Cipher, pan: &str) -> Result<Vec<u8>, String> {
    let pin = Pin::parse(BENCH_PIN).map_err(|e| e.to_string())?;
    let pan = Pan::parse(pan).map_err(|e| e.to_string())?;
    let block = pinblock::encipher(PinBlockFormat::Iso0, key, &pin, Some(&pan))
        .map_err(|e| e.to_string())?;
    Ok(block.to_vec())
}

/// A batch answer must carry one result per item.
fn one_result_per_item(results: usize, batch: usize) -> Result<(), tonic::Status> {
    if results == batch {
        Ok(())
    } else {
        Err(tonic::Status::internal(format!(
            "{results} results for {batch} items"
        )))
    }
}

/// The PIN every fixture terminal's customer types.
const BENCH_PIN: &str = "123456";

/// `VerifyMacResponse { valid: true }` and `HealthCheckResponse { status:
/// SERVING }` both encode as field 1, varint 1.
const VALID_OR_SERVING: &[u8] = &[0x08, 0x01];

#[derive(Default)]
struct Outcome {
    ok: u64,
    errors: u64,
    /// Units of work per call (batch items), for the rate.
    units: u64,
    lat_us: Vec<u32>,
    /// Open loop: latency from the actual send (without the schedule lag).
    svc_us: Vec<u32>,
    first_error: Option<String>,
}

impl Outcome {
    fn merge(&mut self, o: Outcome) {
        self.ok += o.ok;
        self.errors += o.errors;
        self.units += o.units;
        self.lat_us.extend(o.lat_us);
        self.svc_us.extend(o.svc_us);
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }
}

/// The summary of one RPC's run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub rpc: String,
    pub rps: f64,
    pub ok: u64,
    pub errors: u64,
    pub p50_us: u32,
    pub p90_us: u32,
    pub p99_us: u32,
    pub p999_us: u32,
    /// Open loop only: p50/p99 from the actual send, i.e. without the time a
    /// request waited in the load generator after its scheduled start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_service_us: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_service_us: Option<u32>,
    /// With `--cpu-pid`: CPU time (user + system) per unit of work, in µs,
    /// of the daemon and of the generator, over the measured slices.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daemon_cpu_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generator_cpu_us: Option<f64>,
    /// With `--cpu-pid`: how busy the whole machine was over the measured
    /// slices (all CPUs, `/proc/stat`), and the share the hypervisor took
    /// (steal): at a fixed rate, how much room the two processes left each other.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_busy_pct: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_steal_pct: Option<f64>,
}

/// CPU time (user + system) a process has used, in seconds, from
/// `/proc/<pid>/stat`. None where there is no such file.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat_cpu_ticks(&stat)? as f64 / crate::sys::clock_ticks_per_second()? as f64)
}

/// Machine-wide CPU ticks (busy, steal, total) from the `cpu` line of
/// `/proc/stat`: busy is user + nice + system + irq + softirq, total adds
/// idle, iowait and steal (guest time is already inside user).
fn host_ticks(stat: &str) -> Option<[u64; 3]> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let [user, nice, system, idle, iowait, irq, softirq, steal] = v.try_into().ok()?;
    let busy = user + nice + system + irq + softirq;
    Some([busy, steal, busy + idle + iowait + steal])
}

fn host_ticks_now() -> Option<[u64; 3]> {
    host_ticks(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line, in clock
/// ticks. The command name (field 2, in parentheses) may hold spaces and
/// parentheses: fields are counted after its last ')'.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = stat.rsplit_once(')')?.1;
    let mut f = rest.split_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

pub(crate) fn pct(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

impl BenchRpc {
    fn in_process(self) -> bool {
        matches!(
            self,
            BenchRpc::InprocessTranslatePin | BenchRpc::InprocessTerminalPin
        )
    }
}

fn name(r: BenchRpc) -> String {
    r.to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default()
}

pub(crate) fn status_msg(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// A double-length TDES key of `key_type` formed (over the admin API) from
/// components the generator made, so it can compute what the key does; the
/// daemon's key info and the clear key.
async fn import_known(
    admin: &mut KeyAdminClient<Channel>,
    key_type: pb::KeyType,
    alias: String,
) -> Result<(pb::KeyInfo, zeroize::Zeroizing<Vec<u8>>), String> {
    let (parts, clear) = crate::pinpad::tdes_components();
    let info = admin
        .import_key_components(pb::ImportKeyComponentsRequest {
            key_type: key_type as i32,
            algorithm: pb::KeyAlgorithm::Tdes2key as i32,
            components: parts,
            alias,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("fixture {key_type:?}: {}", status_msg(&e)))?
        .into_inner();
    Ok((info, clear))
}

/// [`import_known`] through the core of an in-process module.
fn import_known_inprocess(
    hsm: &crate::hsm::Hsm,
    key_type: crate::keys::KeyType,
    alias: &str,
) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
    let (parts, clear) = crate::pinpad::tdes_components();
    hsm.import_key_components(
        "bench",
        crate::hsm::ImportComponents {
            key_type,
            algorithm: Algorithm::Tdes2,
            components: parts.into_iter().map(zeroize::Zeroizing::new).collect(),
            component_kcvs: vec![],
            alias: alias.into(),
            exportable: false,
        },
    )
    .map_err(|e| e.to_string())?;
    Ok(clear)
}

async fn make_fixtures(
    args: &BenchArgs,
    admin: &KeyAdminClient<Channel>,
    posp: &CryptoClient<Channel>,
    sign_in: bool,
) -> Result<Fixtures, String> {
    let mut suffix = [0u8; 3];
    random_bytes(&mut suffix);
    let suffix = hex::encode_upper(suffix);
    let mut admin = admin.clone();
    // A TMK formed from components the load generator knows, so it can play every PIN pad.
    let (tmk, tmk_clear) =
        import_known(&mut admin, pb::KeyType::Tmk, format!("bench-tmk-{suffix}")).await?;
    // The ZPK from components too: the generator knows every answer TranslatePin owes it.
    let (zpk, zpk_clear) =
        import_known(&mut admin, pb::KeyType::Zpk, format!("bench-zpk-{suffix}")).await?;
    let zpk_cipher = Cipher::new(Algorithm::Tdes2, &zpk_clear).map_err(|e| e.to_string())?;
    admin
        .generate_key(pb::GenerateKeyRequest {
            key_type: pb::KeyType::Zak as i32,
            algorithm: pb::KeyAlgorithm::Tdes2key as i32,
            alias: format!("bench-zak-{suffix}"),
            exportable: false,
        })
        .await
        .map_err(|e| format!("fixture zak: {}", status_msg(&e)))?;
    let n = args.terminals.max(1);
    eprintln!(
        "bench: creating {n} terminals{}",
        if sign_in { " and signing them in" } else { "" }
    );
    let tmk_cipher =
        Arc::new(Cipher::new(Algorithm::Tdes2, &tmk_clear).map_err(|e| e.to_string())?);
    let message: Vec<u8> = (0..args.message_size).map(|i| (i % 251) as u8).collect();
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::new();
    let bar = super::backup::progress_bar(
        n as u64,
        "fixtures",
        !std::io::IsTerminal::is_terminal(&std::io::stderr()),
    );
    for i in 0..n {
        let permit = sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        // A permit frees when a terminal is done: at most 64 behind the truth.
        bar.set_position(i.saturating_sub(64) as u64);
        let mut admin = admin.clone();
        let mut posp = posp.clone();
        let tmk_id = tmk.key_id.clone();
        let tid = format!("B{suffix}{i:06}");
        let tmk_cipher = tmk_cipher.clone();
        let pan = bench_pan(i);
        let message = message.clone();
        tasks.push(tokio::spawn(async move {
            let _p = permit;
            admin
                .create_terminal(pb::CreateTerminalRequest {
                    terminal_id: tid.clone(),
                    tmk: Some(pb::KeyRef {
                        r#ref: Some(pb::key_ref::Ref::KeyId(tmk_id)),
                    }),
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("create terminal: {}", status_msg(&e)))?;
            if !sign_in {
                return Ok(Fixture {
                    terminal_id: tid,
                    pin_block: vec![],
                    message,
                    mac: vec![],
                    pan,
                });
            }
            let r = posp
                .sign_in(pb::SignInRequest {
                    terminal_id: tid.clone(),
                    layout: pb::Field62Layout::DoubleMak as i32,
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("sign in: {}", status_msg(&e)))?
                .into_inner();
            // The PIN pad's side, computed independently of the daemon.
            let mut pad = crate::pinpad::PinPad::with_tmk(&tid, tmk_cipher);
            pad.load_field62(&r.field62, r.layout)?;
            let pin_block = pad.pin_block(BENCH_PIN, &pan)?;
            let mac = pad.mac(&message)?;
            Ok::<_, String>(Fixture {
                terminal_id: tid,
                pin_block,
                message,
                mac,
                pan,
            })
        }));
    }
    let mut terminals = Vec::with_capacity(n);
    for t in tasks {
        terminals.push(t.await.map_err(|e| e.to_string())??);
    }
    bar.finish_and_clear();
    let dest_kcv = crate::crypto::kcv::kcv_hex(&zpk_cipher, 3);
    if dest_kcv != zpk.kcv {
        return Err(format!(
            "the daemon formed a ZPK with check value {}, the generator {dest_kcv}",
            zpk.kcv
        ));
    }
    let answers = terminals
        .iter()
        .map(|t| {
            Ok(pb::TranslatePinResponse {
                pin_block: bench_pin_block(&zpk_cipher, &t.pan)?,
                dest_kcv: dest_kcv.clone(),
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let mut fx = Fixtures {
        zpk_alias: format!("bench-zpk-{suffix}"),
        zak_alias: format!("bench-zak-{suffix}"),
        terminals,
        translate_pin: Vec::new(),
        verify_mac: Vec::new(),
        translate_pin_answers: encoded_side_by_side(answers.into_iter()),
    };
    fx.translate_pin = side_by_side(fx.terminals.iter().map(|t| translate_req(&fx, t)));
    fx.verify_mac = side_by_side(fx.terminals.iter().map(verify_req));
    Ok(fx)
}

/// Kept for the life of the process (the generator exits after its runs):
/// a static `Bytes` clones without touching a reference count.
fn leak(v: Vec<u8>) -> &'static [u8] {
    Box::leak(v.into_boxed_slice())
}

/// The requests encoded into one buffer, in order: a run of calls over
/// neighbouring terminals reads neighbouring memory, as a POSP's own
/// per-request buffers would be warm, so the generator's side of a call does
/// not grow with the number of terminals.
fn side_by_side<M: Message>(reqs: impl Iterator<Item = M>) -> Vec<Bytes> {
    encoded_side_by_side(reqs)
        .into_iter()
        .map(Bytes::from_static)
        .collect()
}

/// The messages encoded into one buffer kept for the process's life, in order.
fn encoded_side_by_side<M: Message>(msgs: impl Iterator<Item = M>) -> Vec<&'static [u8]> {
    let mut buf = Vec::new();
    let mut ends = Vec::new();
    for m in msgs {
        m.encode(&mut buf).unwrap_or_default();
        ends.push(buf.len());
    }
    let all = leak(buf);
    let mut start = 0;
    ends.into_iter()
        .map(|end| {
            let b = all.get(start..end).unwrap_or_default();
            start = end;
            b
        })
        .collect()
}

/// The generator's codec for unary calls: it sends protobuf bytes encoded
/// once per fixture and returns the response's bytes for the caller to decode
/// and check. Every unary RPC, the empty health check included, goes through
/// it, so the client side of each call is the same transport work and the
/// ratio to the health check measures the daemon, not request building.
#[derive(Clone, Copy)]
struct RawCodec {
    /// The answer the call must get.
    expect: &'static [u8],
}

/// An answer: the expected bytes (compared where they arrived, nothing
/// copied or allocated), or what came instead (for the error message).
enum Answer {
    Expected,
    Other(Bytes),
}

/// Codec buffer per call: the requests and answers here are well under it
/// (tonic's default, 8 KiB, is a fresh allocation per call).
const RAW_BUFFER: usize = 1024;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Answer;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        *self
    }
    fn decoder(&mut self) -> RawCodec {
        *self
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(RAW_BUFFER, 32 * 1024)
    }
}

impl Decoder for RawCodec {
    type Item = Answer;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Answer>, Status> {
        let n = src.remaining();
        if n == self.expect.len() && src.chunk().get(..n) == Some(self.expect) {
            src.advance(n);
            return Ok(Some(Answer::Expected));
        }
        Ok(Some(Answer::Other(src.copy_to_bytes(n))))
    }
    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(RAW_BUFFER, 32 * 1024)
    }
}

/// One unary call of `path` with a pre-encoded request; the answer must be
/// `expect`, byte for byte. Otherwise the error says what came, decoded as `M`.
async fn unary<M: Message + Default + std::fmt::Debug>(
    grpc: &mut tonic::client::Grpc<Channel>,
    path: &'static str,
    request: Bytes,
    expect: &'static [u8],
    what: &str,
) -> Result<(), Status> {
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("channel not ready: {e}")))?;
    let answer = grpc
        .unary(
            tonic::Request::new(request),
            http::uri::PathAndQuery::from_static(path),
            RawCodec { expect },
        )
        .await?
        .into_inner();
    match answer {
        Answer::Expected => Ok(()),
        Answer::Other(b) => Err(Status::internal(match M::decode(b) {
            Ok(m) => format!("{path}: {what}; the answer was {m:?}"),
            Err(e) => format!("{path}: undecodable answer: {e}"),
        })),
    }
}

fn alias(a: &str) -> Option<pb::KeyRef> {
    Some(pb::KeyRef {
        r#ref: Some(pb::key_ref::Ref::Alias(a.to_string())),
    })
}

fn translate_req(fx: &Fixtures, t: &Fixture) -> pb::TranslatePinRequest {
    pb::TranslatePinRequest {
        source: Some(pb::translate_pin_request::Source::TerminalId(
            t.terminal_id.clone(),
        )),
        dest_key: alias(&fx.zpk_alias),
        pin_block: t.pin_block.clone(),
        pan: t.pan.clone(),
        source_format: 0,
        dest_format: 0,
    }
}

fn verify_req(t: &Fixture) -> pb::VerifyMacRequest {
    pb::VerifyMacRequest {
        key_source: Some(pb::verify_mac_request::KeySource::TerminalId(
            t.terminal_id.clone(),
        )),
        algorithm: pb::MacAlgorithm::UnionpayEcb as i32,
        message: t.message.clone(),
        mac: t.mac.clone(),
    }
}

/// One call of `rpc` for the i-th request; returns units of work done.
async fn call(
    rpc: BenchRpc,
    i: usize,
    fx: &Fixtures,
    crypto: &mut CryptoClient<Channel>,
    raw: &mut tonic::client::Grpc<Channel>,
    batch: usize,
) -> Result<u64, tonic::Status> {
    let n = fx.terminals.len();
    let t = &fx.terminals[i % n];
    match rpc {
        BenchRpc::Health => {
            // HealthCheckRequest { service: "" } encodes to no bytes.
            unary::<tonic_health::pb::HealthCheckResponse>(
                raw,
                "/grpc.health.v1.Health/Check",
                Bytes::new(),
                VALID_OR_SERVING,
                "the daemon is not serving",
            )
            .await?;
            Ok(1)
        }
        BenchRpc::TranslatePin => {
            unary::<pb::TranslatePinResponse>(
                raw,
                "/poshsm.v1.Crypto/TranslatePin",
                fx.translate_pin[i % n].clone(),
                fx.translate_pin_answers[i % n],
                "not the PIN block (or ZPK check value) the generator computed",
            )
            .await?;
            Ok(1)
        }
        BenchRpc::VerifyMac => {
            unary::<pb::VerifyMacResponse>(
                raw,
                "/poshsm.v1.Crypto/VerifyMac",
                fx.verify_mac[i % n].clone(),
                VALID_OR_SERVING,
                "the fixture MAC did not verify",
            )
            .await?;
            Ok(1)
        }
        BenchRpc::GenerateMac => {
            crypto
                .generate_mac(pb::GenerateMacRequest {
                    key_source: Some(pb::generate_mac_request::KeySource::Key(
                        alias(&fx.zak_alias).unwrap_or_default(),
                    )),
                    algorithm: pb::MacAlgorithm::Iso9797Alg3 as i32,
                    message: t.message.clone(),
                    mac_length: 8,
                })
                .await?;
            Ok(1)
        }
        BenchRpc::SignIn => {
            crypto
                .sign_in(pb::SignInRequest {
                    terminal_id: t.terminal_id.clone(),
                    layout: pb::Field62Layout::DoubleMak as i32,
                    ..Default::default()
                })
                .await?;
            Ok(1)
        }
        BenchRpc::TranslatePinBatch => {
            let items = (0..batch)
                .map(|k| translate_req(fx, &fx.terminals[(i * batch + k) % n]))
                .collect();
            let r = crypto
                .translate_pin_batch(pb::TranslatePinBatchRequest { items })
                .await?
                .into_inner();
            one_result_per_item(r.results.len(), batch)?;
            // Each item's answer is the translation its terminal owes (the
            // results come in the items' order).
            let ok = r
                .results
                .iter()
                .enumerate()
                .filter(|(k, x)| match &x.result {
                    Some(pb::translate_pin_result::Result::Ok(a)) => {
                        a.encode_to_vec() == fx.translate_pin_answers[(i * batch + k) % n]
                    }
                    _ => false,
                })
                .count();
            if ok != batch {
                return Err(tonic::Status::internal(format!(
                    "{} of {batch} batch items failed or were not the expected translation",
                    batch - ok
                )));
            }
            Ok(batch as u64)
        }
        BenchRpc::VerifyMacBatch => {
            let items = (0..batch)
                .map(|k| verify_req(&fx.terminals[(i * batch + k) % n]))
                .collect();
            let r = crypto
                .verify_mac_batch(pb::VerifyMacBatchRequest { items })
                .await?
                .into_inner();
            one_result_per_item(r.results.len(), batch)?;
            let ok = r
                .results
                .iter()
                .filter(|x| {
                    matches!(
                        x.result,
                        Some(pb::verify_mac_result::Result::Ok(pb::VerifyMacResponse {
                            valid: true
                        }))
                    )
                })
                .count();
            if ok != batch {
                return Err(tonic::Status::internal(format!(
                    "{} of {batch} batch items failed",
                    batch - ok
                )));
            }
            Ok(batch as u64)
        }
        BenchRpc::InprocessTranslatePin | BenchRpc::InprocessTerminalPin => {
            Err(tonic::Status::internal("in-process is not a network RPC"))
        }
    }
}

/// Sleeps until an instant with microsecond precision: a timerfd on the
/// runtime's own reactor (tokio's timer wheel has 1 ms granularity, which
/// would bunch requests; a pacing thread costs a cross-thread wake-up per slot).
#[cfg(target_os = "linux")]
struct Pacer(tokio::io::unix::AsyncFd<crate::sys::TimerFd>);

#[cfg(not(target_os = "linux"))]
struct Pacer;

#[cfg(not(target_os = "linux"))]
impl Pacer {
    fn new() -> std::io::Result<Pacer> {
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "the open loop needs Linux's timerfd",
        ))
    }

    async fn until(&self, _due: Instant) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(target_os = "linux")]
impl Pacer {
    fn new() -> std::io::Result<Pacer> {
        Ok(Pacer(crate::sys::TimerFd::new()?.register()?))
    }

    async fn until(&self, due: Instant) -> std::io::Result<()> {
        loop {
            let now = Instant::now();
            if now >= due {
                return Ok(());
            }
            self.0.get_ref().arm(due - now)?;
            let mut ready = self.0.readable().await?;
            if let Ok(r) = ready.try_io(|fd| fd.get_ref().consume()) {
                r?;
            }
        }
    }
}

/// Open loop: the pacer releases request slot `i` at `start + i / rate`; each
/// runs as its own task, at most `concurrency` at once. Latency counts from
/// the slot's scheduled time (no coordinated omission).
async fn drive_open(
    rpc: BenchRpc,
    args: &BenchArgs,
    fx: Arc<Fixtures>,
    channels: &[Channel],
    measure: Duration,
    rate: u64,
) -> Outcome {
    let pacer = match Pacer::new() {
        Ok(p) => p,
        Err(e) => {
            return Outcome {
                errors: 1,
                first_error: Some(format!("open-loop pacer: {e}")),
                ..Default::default()
            }
        }
    };
    let start = Instant::now() + Duration::from_millis(5);
    let total = (rate as f64 * measure.as_secs_f64()) as usize;
    let sem = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let out = Arc::new(std::sync::Mutex::new(Outcome::default()));
    let batch = args.batch_size.max(1);
    let slots = args.concurrency.max(1);
    for idx in 0..total {
        let due = start + Duration::from_secs_f64(idx as f64 / rate as f64);
        if let Err(e) = pacer.until(due).await {
            let mut o = out.lock().unwrap_or_else(|p| p.into_inner());
            o.errors += 1;
            o.first_error
                .get_or_insert_with(|| format!("open-loop pacer: {e}"));
            break;
        }
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break;
        };
        let ch = channels[idx % channels.len()].clone();
        let fx = fx.clone();
        let out = out.clone();
        // Detached: a finished task frees its memory at once (holding 100,000
        // join handles kept every finished task's allocation to the end).
        tokio::spawn(async move {
            let _p = permit;
            let mut crypto = CryptoClient::new(ch.clone());
            let mut raw = tonic::client::Grpc::new(ch);
            let sent = Instant::now();
            let r = call(rpc, idx, &fx, &mut crypto, &mut raw, batch).await;
            let done = Instant::now();
            let mut o = out.lock().unwrap_or_else(|p| p.into_inner());
            match r {
                Ok(units) => {
                    o.ok += 1;
                    o.units += units;
                    o.lat_us
                        .push(done.duration_since(due).as_micros().min(u32::MAX as u128) as u32);
                    o.svc_us
                        .push(done.duration_since(sent).as_micros().min(u32::MAX as u128) as u32);
                }
                Err(s) => {
                    o.errors += 1;
                    o.first_error.get_or_insert_with(|| status_msg(&s));
                }
            }
        });
    }
    // Every task holds a permit until it has recorded its call: all of them
    // back means all calls are in.
    let _ = sem
        .acquire_many(u32::try_from(slots).unwrap_or(u32::MAX))
        .await;
    let mut o = out.lock().unwrap_or_else(|p| p.into_inner());
    std::mem::take(&mut *o)
}

async fn drive(
    rpc: BenchRpc,
    args: &BenchArgs,
    fx: Arc<Fixtures>,
    channels: &[Channel],
    measure: Duration,
) -> Outcome {
    if let Some(rate) = args.rate.filter(|r| *r > 0) {
        return drive_open(rpc, args, fx, channels, measure, rate).await;
    }
    let start = Instant::now();
    let deadline = start + measure;
    let workers = args.concurrency.max(1);
    let mut tasks = Vec::new();
    for w in 0..workers {
        let ch = channels[w % channels.len()].clone();
        let fx = fx.clone();
        let batch = args.batch_size.max(1);
        tasks.push(tokio::spawn(async move {
            let mut crypto = CryptoClient::new(ch.clone());
            let mut raw = tonic::client::Grpc::new(ch);
            let mut out = Outcome::default();
            let mut k: u64 = 0;
            loop {
                // Each worker owns the terminals ≡ w (mod workers): no terminal
                // has two requests in flight (a sign-in conflict is the daemon's right).
                let per_worker = (fx.terminals.len() / workers).max(1) as u64;
                let idx = ((k % per_worker) as usize) * workers + w;
                let scheduled = Instant::now();
                if scheduled >= deadline {
                    break;
                }
                match call(rpc, idx, &fx, &mut crypto, &mut raw, batch).await {
                    Ok(units) => {
                        out.ok += 1;
                        out.units += units;
                        out.lat_us
                            .push(scheduled.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    }
                    Err(s) => {
                        out.errors += 1;
                        if out.first_error.is_none() {
                            out.first_error = Some(status_msg(&s));
                        }
                    }
                }
                k += 1;
            }
            out
        }));
    }
    let mut total = Outcome::default();
    for t in tasks {
        if let Ok(o) = t.await {
            total.merge(o);
        }
    }
    total
}

fn summarize(rpc: BenchRpc, mut o: Outcome, secs: f64) -> Summary {
    o.lat_us.sort_unstable();
    o.svc_us.sort_unstable();
    let svc = !o.svc_us.is_empty();
    Summary {
        rpc: name(rpc),
        rps: o.units as f64 / secs,
        ok: o.ok,
        errors: o.errors,
        p50_us: pct(&o.lat_us, 0.50),
        p90_us: pct(&o.lat_us, 0.90),
        p99_us: pct(&o.lat_us, 0.99),
        p999_us: pct(&o.lat_us, 0.999),
        p50_service_us: svc.then(|| pct(&o.svc_us, 0.50)),
        p99_service_us: svc.then(|| pct(&o.svc_us, 0.99)),
        daemon_cpu_us: None,
        generator_cpu_us: None,
        host_busy_pct: None,
        host_steal_pct: None,
    }
}

/// The core's PIN translation in this process: per-thread rate, no network.
fn inprocess(args: &BenchArgs, rpc: BenchRpc) -> Result<Summary, String> {
    use crate::hsm::{Hsm, HsmConfig, KeyRef, PinKeySource, TranslatePin};
    let config = HsmConfig {
        pin_guard: crate::hsm::guard::Limit {
            per_sec: 0.0,
            burst: 0.0,
        },
        ..Default::default()
    };
    let hsm = Arc::new(Hsm::new(
        crate::keys::Lmk::generate(),
        crate::store::Store::temporary().map_err(|e| e.to_string())?,
        config,
    ));
    let clear = import_known_inprocess(&hsm, crate::keys::KeyType::Tpk, "tpk")?;
    // The ZPK from components too, so every answer can be checked.
    let zpk_clear = import_known_inprocess(&hsm, crate::keys::KeyType::Zpk, "zpk")?;
    let tpk_id = hsm
        .get_key(&KeyRef::Alias("tpk".into()))
        .map_err(|e| e.to_string())?
        .key_id;
    let zpk_id = hsm
        .get_key(&KeyRef::Alias("zpk".into()))
        .map_err(|e| e.to_string())?
        .key_id;
    let pik = Cipher::new(Algorithm::Tdes2, &clear).map_err(|e| e.to_string())?;
    let pan_digits = bench_pan(0);
    let block = bench_pin_block(&pik, &pan_digits)?;
    let zpk = Cipher::new(Algorithm::Tdes2, &zpk_clear).map_err(|e| e.to_string())?;
    let expect = bench_pin_block(&zpk, &pan_digits)?;
    let req = TranslatePin {
        source: PinKeySource::Key(KeyRef::Id(tpk_id)),
        dest: KeyRef::Id(zpk_id.clone()),
        pin_block: block,
        pan: pan_digits,
        source_format: PinBlockFormat::Iso0,
        dest_format: PinBlockFormat::Iso0,
    };
    // Each request with the PIN block it must come back as (per terminal: its own PAN).
    let reqs: Arc<Vec<(TranslatePin, Vec<u8>)>> =
        Arc::new(if rpc == BenchRpc::InprocessTerminalPin {
            inprocess_terminals(&hsm, args.terminals.max(1), &req)?
                .into_iter()
                .map(|r| {
                    let want = bench_pin_block(&zpk, &r.pan)?;
                    Ok((r, want))
                })
                .collect::<Result<Vec<_>, String>>()?
        } else {
            vec![(req, expect)]
        });
    let threads = args.concurrency.clamp(1, 64);
    let measure = Duration::from_secs(args.duration);
    let warm = Instant::now() + Duration::from_secs(args.warmup);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let hsm = hsm.clone();
            let reqs = reqs.clone();
            std::thread::spawn(move || {
                // Each thread walks all requests from its own offset.
                let mut i = t * reqs.len() / threads;
                let mut next = || {
                    i = (i + 1) % reqs.len();
                    &reqs[i]
                };
                let mut out = Outcome::default();
                while Instant::now() < warm {
                    if let Err(e) = hsm.translate_pin(&next().0) {
                        out.errors += 1;
                        out.first_error.get_or_insert(e.message);
                    }
                }
                let start = Instant::now();
                let mut n = 0u64;
                // Latency sampled every 64 calls to keep the clock out of the loop.
                while start.elapsed() < measure {
                    let t0 = Instant::now();
                    for _ in 0..64 {
                        let (req, want) = next();
                        match hsm.translate_pin(req) {
                            Ok(a) if a.pin_block == *want => n += 1,
                            Ok(_) => {
                                out.errors += 1;
                                out.first_error.get_or_insert_with(|| {
                                    "not the PIN block the bench computed".into()
                                });
                            }
                            Err(e) => {
                                out.errors += 1;
                                out.first_error.get_or_insert(e.message);
                            }
                        }
                    }
                    out.lat_us
                        .push((t0.elapsed().as_nanos() / 64 / 1000) as u32);
                }
                out.ok = n;
                out.units = n;
                out
            })
        })
        .collect();
    let mut total = Outcome::default();
    for h in handles {
        total.merge(h.join().map_err(|_| "bench thread panicked".to_string())?);
    }
    Ok(summarize(rpc, total, args.duration as f64))
}

/// `n` terminals under one TMK the bench knows, signed in through the core;
/// one request per terminal (its PIN pad's PIN block) to the ZPK of `like`.
fn inprocess_terminals(
    hsm: &crate::hsm::Hsm,
    n: usize,
    like: &crate::hsm::TranslatePin,
) -> Result<Vec<crate::hsm::TranslatePin>, String> {
    use crate::hsm::{CreateTerminal, PinKeySource, SignIn, SignInSource};
    let tmk_clear = import_known_inprocess(hsm, crate::keys::KeyType::Tmk, "tmk")?;
    let tmk = Arc::new(Cipher::new(Algorithm::Tdes2, &tmk_clear).map_err(|e| e.to_string())?);
    eprintln!("bench: signing in {n} terminals in-process");
    (0..n)
        .map(|i| {
            let tid = format!("T{i:07}");
            hsm.create_terminal(
                "bench",
                CreateTerminal {
                    terminal_id: tid.clone(),
                    merchant_id: String::new(),
                    tmk: Some(crate::hsm::KeyRef::Alias("tmk".into())),
                    tmk_algorithm: None,
                },
            )
            .map_err(|e| e.message.clone())?;
            let out = hsm
                .sign_in_unflushed(
                    "bench",
                    SignIn {
                        source: SignInSource::Terminal(tid.clone()),
                        algorithm: None,
                        include_tdk: false,
                        layout: None,
                        check_value_length: 0,
                    },
                )
                .map_err(|e| e.message.clone())?;
            let mut pad = crate::pinpad::PinPad::with_tmk(&tid, tmk.clone());
            pad.load_field62(
                &out.field62,
                crate::server::convert::layout_to_pb(out.layout) as i32,
            )?;
            let pan = bench_pan(i);
            Ok(crate::hsm::TranslatePin {
                source: PinKeySource::Terminal(tid),
                pin_block: pad.pin_block(BENCH_PIN, &pan)?,
                pan,
                ..like.clone()
            })
        })
        .collect()
}

fn print_table(rows: &[Summary]) {
    println!(
        "{:<24} {:>11} {:>10} {:>7} {:>8} {:>8} {:>8} {:>8}",
        "rpc", "rps", "ok", "errors", "p50_us", "p90_us", "p99_us", "p999_us"
    );
    for r in rows {
        println!(
            "{:<24} {:>11.0} {:>10} {:>7} {:>8} {:>8} {:>8} {:>8}",
            r.rpc, r.rps, r.ok, r.errors, r.p50_us, r.p90_us, r.p99_us, r.p999_us
        );
    }
    for r in rows {
        if let (Some(d), Some(g)) = (r.daemon_cpu_us, r.generator_cpu_us) {
            println!(
                "{:<24} CPU per unit: daemon {d:.2} µs, generator {g:.2} µs",
                r.rpc
            );
        }
        if let (Some(b), Some(s)) = (r.host_busy_pct, r.host_steal_pct) {
            println!(
                "{:<24} machine busy {b:.1} % of all CPUs (hypervisor steal {s:.1} %)",
                r.rpc
            );
        }
    }
}

pub async fn run(args: BenchArgs) -> Result<(), String> {
    let mut rows = Vec::new();
    let network: Vec<BenchRpc> = args
        .rpc
        .iter()
        .copied()
        .filter(|r| !r.in_process())
        .collect();
    if args.cpu_pid.is_some() && network.is_empty() {
        return Err("--cpu-pid measures a daemon: give at least one network RPC".into());
    }
    if !network.is_empty() {
        let admin_ch = connect(&ClientConfig::from_data_dir(
            &args.addr,
            &args.data_dir,
            "admin",
        ))
        .await?;
        let posp_cfg = ClientConfig::from_data_dir(&args.addr, &args.data_dir, "posp");
        let mut channels = Vec::new();
        for _ in 0..args.connections.max(1) {
            channels.push(connect_coalescing(&posp_cfg).await?);
        }
        let needs_keys = network
            .iter()
            .any(|r| !matches!(r, BenchRpc::Health | BenchRpc::SignIn));
        let fx = Arc::new(
            make_fixtures(
                &args,
                &KeyAdminClient::new(admin_ch),
                &CryptoClient::new(channels[0].clone()),
                needs_keys,
            )
            .await?,
        );
        let slices = args.interleave.max(1);
        let slice = Duration::from_secs_f64(args.duration as f64 / slices as f64);
        for rpc in &network {
            eprintln!(
                "bench: {} — {}s warm-up, {}s measured in {slices} slice(s), {} connections, {} {}",
                name(*rpc),
                args.warmup,
                args.duration,
                channels.len(),
                args.concurrency,
                if args.rate.is_some() {
                    "workers (open loop)"
                } else {
                    "in flight (closed loop)"
                }
            );
            if args.warmup > 0 {
                let w = drive(
                    *rpc,
                    &args,
                    fx.clone(),
                    &channels,
                    Duration::from_secs(args.warmup),
                )
                .await;
                // Not measured, but a wrong answer during warm-up still fails the run.
                if let Some(e) = w.first_error {
                    return Err(format!(
                        "{}: {} errors during warm-up, first: {e}",
                        name(*rpc),
                        w.errors
                    ));
                }
            }
        }
        let mut totals: Vec<(Outcome, f64)> =
            network.iter().map(|_| (Outcome::default(), 0.0)).collect();
        // CPU seconds (daemon, generator) per RPC, when asked for.
        let daemon = args.cpu_pid.map(|p| p.to_string());
        let cpu_now = || {
            let d = daemon.as_deref().and_then(cpu_seconds)?;
            Some((d, cpu_seconds("self")?))
        };
        let unreadable = || {
            format!(
                "--cpu-pid: cannot read /proc/{}/stat (or /proc/self/stat)",
                daemon.as_deref().unwrap_or_default()
            )
        };
        if daemon.is_some() && cpu_now().is_none() {
            return Err(unreadable());
        }
        let mut cpu: Vec<(f64, f64)> = vec![(0.0, 0.0); network.len()];
        let mut host: Vec<[u64; 3]> = vec![[0; 3]; network.len()];
        for _ in 0..slices {
            for (i, rpc) in network.iter().enumerate() {
                let h0 = daemon.as_ref().and_then(|_| host_ticks_now());
                let c0 = cpu_now();
                let t0 = Instant::now();
                let o = drive(*rpc, &args, fx.clone(), &channels, slice).await;
                totals[i].1 += t0.elapsed().as_secs_f64().max(slice.as_secs_f64());
                if daemon.is_some() {
                    // A daemon gone (or its id reused) mid-run: no figure rather than a low one.
                    let (Some(a), Some(b)) = (c0, cpu_now()) else {
                        return Err(unreadable());
                    };
                    cpu[i].0 += b.0 - a.0;
                    cpu[i].1 += b.1 - a.1;
                    if let (Some(h0), Some(h1)) = (h0, host_ticks_now()) {
                        for (sum, (a, b)) in host[i].iter_mut().zip(h0.iter().zip(h1)) {
                            *sum += b.saturating_sub(*a);
                        }
                    }
                }
                totals[i].0.merge(o);
            }
        }
        for (((rpc, (o, secs)), (dc, gc)), [busy, steal, total]) in
            network.iter().zip(totals).zip(cpu).zip(host)
        {
            if let Some(e) = &o.first_error {
                eprintln!("bench: {}: first error: {e}", name(*rpc));
            }
            let units = o.units.max(1) as f64;
            let mut row = summarize(*rpc, o, secs);
            if daemon.is_some() {
                row.daemon_cpu_us = Some(dc * 1e6 / units);
                row.generator_cpu_us = Some(gc * 1e6 / units);
                if total > 0 {
                    row.host_busy_pct = Some(100.0 * busy as f64 / total as f64);
                    row.host_steal_pct = Some(100.0 * steal as f64 / total as f64);
                }
            }
            rows.push(row);
        }
    }
    for rpc in args.rpc.iter().copied().filter(|r| r.in_process()) {
        let a = args.clone();
        rows.push(
            tokio::task::spawn_blocking(move || inprocess(&a, rpc))
                .await
                .map_err(|e| e.to_string())??,
        );
    }
    print_table(&rows);
    if args.json {
        for r in &rows {
            println!("{}", serde_json::to_string(r).map_err(|e| e.to_string())?);
        }
    }
    if rows.iter().any(|r| r.errors > 0) {
        return Err("some requests failed (see the errors column)".into());
    }
    Ok(())
}

/// `poshsm populate`: fills a stopped daemon's store with `terminals`
/// signed-in terminals through the core (for key-store scaling benchmarks).
pub fn populate(
    data_dir: &std::path::Path,
    dev: bool,
    terminals: usize,
    threads: usize,
) -> Result<String, String> {
    use crate::hsm::{CreateTerminal, SignIn, SignInSource};
    let hsm = Arc::new(super::serve::open_hsm(
        data_dir,
        dev,
        crate::hsm::HsmConfig::default(),
    )?);
    if let Some(a) = hsm.alarm() {
        return Err(format!("module is in ALARM: {a}"));
    }
    let mut prefix = [0u8; 3];
    random_bytes(&mut prefix);
    let prefix = format!("P{}", hex::encode_upper(prefix));
    let start = Instant::now();
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let threads = threads.clamp(1, 16);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let hsm = hsm.clone();
            let prefix = prefix.clone();
            let done = done.clone();
            std::thread::spawn(move || -> Result<(), String> {
                let mut i = t;
                while i < terminals {
                    let tid = format!("{prefix}{i:07}");
                    hsm.create_terminal(
                        "populate",
                        CreateTerminal {
                            terminal_id: tid.clone(),
                            merchant_id: String::new(),
                            tmk: None,
                            tmk_algorithm: None,
                        },
                    )
                    .map_err(|e| e.message)?;
                    hsm.sign_in_unflushed(
                        "populate",
                        SignIn {
                            source: SignInSource::Terminal(tid),
                            algorithm: None,
                            include_tdk: true,
                            layout: None,
                            check_value_length: 0,
                        },
                    )
                    .map_err(|e| e.message)?;
                    let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                    if n % 50_000 == 0 {
                        eprintln!(
                            "populate: {n} terminals ({:.0}/s)",
                            n as f64 / start.elapsed().as_secs_f64()
                        );
                    }
                    i += threads;
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join()
            .map_err(|_| "populate thread panicked".to_string())??;
    }
    hsm.flush().map_err(|e| e.message)?;
    Ok(format!(
        "{terminals} terminals created and signed in under prefix {prefix} in {:.1} s",
        start.elapsed().as_secs_f64()
    ))
}

#[cfg(test)]
mod tests {
    use super::{bench_pan, luhn_check_digit, Pacer};
    use std::time::{Duration, Instant};

    /// The open-loop pacer never releases a slot early, finer than tokio's
    /// 1 ms timer, on a current-thread runtime as `bench --rate` uses.
    #[tokio::test(flavor = "current_thread")]
    async fn pacer_never_releases_a_slot_before_its_time() {
        let pacer = Pacer::new().unwrap();
        let start = Instant::now() + Duration::from_millis(1);
        for i in 0..200u32 {
            let due = start + Duration::from_micros(150) * i;
            tokio::time::timeout(Duration::from_secs(5), pacer.until(due))
                .await
                .unwrap_or_else(|_| panic!("slot {i} never released"))
                .unwrap();
            assert!(Instant::now() >= due, "slot {i} released early");
        }
        // A slot already due is released at once, without arming the timer.
        let past = Instant::now() - Duration::from_millis(5);
        tokio::time::timeout(Duration::from_secs(5), pacer.until(past))
            .await
            .expect("a due slot does not wait")
            .unwrap();
    }

    #[test]
    fn fixture_pans_are_luhn_valid_and_distinct() {
        // The worked example of the Luhn algorithm (ISO/IEC 7812-1 annex B;
        // also Wikipedia's "79927398713"): the check digit of 7992739871 is 3.
        assert_eq!(luhn_check_digit("7992739871"), 3);
        // A published test card number: 4111 1111 1111 1111 (Visa).
        assert_eq!(luhn_check_digit("411111111111111"), 1);
        // Checked with an independent Luhn routine (Python, this session).
        assert_eq!(bench_pan(0), "6222020000000000000");
        assert_eq!(bench_pan(1), "6222020000000000018");
        assert_eq!(bench_pan(19_999), "6222020000000199992");
        assert!(crate::crypto::pinblock::Pan::parse(&bench_pan(1)).is_ok());
    }

    #[test]
    fn cpu_ticks_are_read_after_the_command_name() {
        // /proc/<pid>/stat of a thread named "a) b (c": fields 14/15 (utime,
        // stime) are 11th and 12th after the name's last ')'.
        let line = "1234 (a) b (c) S 1 1234 1234 0 -1 4194560 100 0 0 0 \
                    250 75 0 0 20 0 3 0 1000 1000000 200";
        assert_eq!(super::stat_cpu_ticks(line), Some(325));
        assert_eq!(super::stat_cpu_ticks("1234 (x) S 1 2"), None);
        assert_eq!(super::stat_cpu_ticks("garbage"), None);
        // This process's own line parses, and a second reading is not lower.
        let a = super::cpu_seconds("self").expect("own /proc/self/stat");
        let b = super::cpu_seconds("self").expect("own /proc/self/stat");
        assert!(b >= a);
    }

    #[test]
    fn host_ticks_sum_the_cpu_line() {
        // proc(5): cpu user nice system idle iowait irq softirq steal guest guest_nice
        let stat = "cpu  100 5 30 800 10 2 8 45 7 0\ncpu0 50 2 15 400 5 1 4 20 0 0\nintr 1\n";
        // busy 100+5+30+2+8 = 145; total 145 + 800 + 10 + 45 = 1000
        assert_eq!(super::host_ticks(stat), Some([145, 45, 1000]));
        assert_eq!(super::host_ticks("cpu0 1 2 3 4 5 6 7 8\n"), None);
        assert_eq!(super::host_ticks("cpu  1 2 x 4 5 6 7 8\n"), None);
        assert_eq!(super::host_ticks("cpu  1 2 3\n"), None);
        assert!(
            super::host_ticks_now().is_some(),
            "this machine's /proc/stat"
        );
    }
}
