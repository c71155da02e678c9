//! The payShield-compatible port driven over TCP the way a POSP drives a
//! payShield: NC, CA, CC, M6, M8, A0, BU, FA, A6 and A8 against an in-process
//! listener next to an `Hsm`, with the PIN pad's and the network's side
//! computed independently by psec (tests/crosscheck/payshield_check.py).
//! Plus: malformed frames, limits, TLS with client certificates, and the real
//! binary's `serve --dev --payshield-listen`.

mod common;

use common::{hx, python, unhex};
use poshsm::crypto::Algorithm;
use poshsm::hsm::{Hsm, HsmConfig, ImportComponents, KeyInfo};
use poshsm::keys::{KeyType, Lmk};
use poshsm::payshield::{self, PayshieldConfig};
use poshsm::server::TlsMaterial;
use poshsm::store::Store;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroizing;

const LMK: [u8; 32] = [0x3C; 32];
const HEADER: &[u8] = b"0042";

/// An in-process port next to a fresh `Hsm`; stopped when dropped.
struct Port {
    addr: SocketAddr,
    hsm: Arc<Hsm>,
    _rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

fn start(config: PayshieldConfig, tls: Option<TlsMaterial>) -> Port {
    let dir = tempfile::tempdir().unwrap();
    let hsm = Arc::new(Hsm::new(
        Lmk::from_bytes(&LMK),
        Store::open(&dir.path().join("db")).unwrap(),
        HsmConfig::default(),
    ));
    assert_eq!(hsm.status().state, "OK");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let served = hsm.clone();
    rt.spawn(async move {
        payshield::serve(listener, served, config, tls, std::future::pending())
            .await
            .unwrap();
    });
    Port {
        addr,
        hsm,
        _rt: rt,
        _dir: dir,
    }
}

fn odd_parity_random(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut v)
        .unwrap();
    for b in &mut v {
        if b.count_ones() % 2 == 0 {
            *b ^= 1;
        }
    }
    v
}

/// A stored key formed from three known components: (info, clear key). The XOR of
/// three odd-parity components keeps odd parity, so the clear key is their XOR.
fn known_key(hsm: &Hsm, t: KeyType, exportable: bool) -> (KeyInfo, Vec<u8>) {
    let c: Vec<Vec<u8>> = (0..3).map(|_| odd_parity_random(16)).collect();
    let clear: Vec<u8> = (0..16).map(|i| c[0][i] ^ c[1][i] ^ c[2][i]).collect();
    let info = hsm
        .import_key_components(
            "test",
            ImportComponents {
                key_type: t,
                algorithm: Algorithm::Tdes2,
                components: c.into_iter().map(Zeroizing::new).collect(),
                component_kcvs: vec![],
                alias: String::new(),
                exportable,
            },
        )
        .unwrap();
    (info, clear)
}

/// A POSP's connection: framed commands with header `0042`.
struct Posp {
    s: TcpStream,
}

impl Posp {
    fn connect(addr: SocketAddr) -> Posp {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Posp { s }
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u16).to_be_bytes().to_vec();
        f.extend_from_slice(payload);
        f
    }

    /// Reads one response; returns (header, response code + error code + fields).
    fn recv(&mut self) -> (Vec<u8>, String) {
        let mut len = [0u8; 2];
        self.s.read_exact(&mut len).unwrap();
        let mut p = vec![0u8; u16::from_be_bytes(len) as usize];
        self.s.read_exact(&mut p).unwrap();
        let body = p.split_off(HEADER.len().min(p.len()));
        (p, String::from_utf8(body).unwrap())
    }

    /// Sends `cmd` (code + fields) and returns the response after the header.
    fn call(&mut self, cmd: &str) -> String {
        let mut payload = HEADER.to_vec();
        payload.extend_from_slice(cmd.as_bytes());
        self.send_raw(&Self::frame(&payload));
        let (h, body) = self.recv();
        assert_eq!(h, HEADER, "the header is echoed");
        body
    }

    /// True when the server closed the connection (EOF or reset).
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.s.read(&mut b), Ok(0) | Err(_))
    }

    /// Everything the server sends until it closes the connection.
    fn until_closed(&mut self) -> Vec<u8> {
        let mut all = Vec::new();
        let _ = self.s.read_to_end(&mut all);
        all
    }
}

/// The 12 rightmost PAN digits without the check digit (the 12N account field).
fn account(pan: &str) -> &str {
    &pan[pan.len() - 13..pan.len() - 1]
}

fn py(reqs: &[Value]) -> Option<Vec<Value>> {
    python("payshield_check.py", reqs)
}

fn s(v: &Value, k: &str) -> String {
    v[k].as_str().unwrap().to_string()
}

#[test]
fn a_posp_day_over_the_payshield_port_checked_by_psec() {
    let port = start(PayshieldConfig::default(), None);
    let hsm = &port.hsm;
    let (tpk, tpk_clear) = known_key(hsm, KeyType::Tpk, false);
    let (zpk, zpk_clear) = known_key(hsm, KeyType::Zpk, false);
    let (zpk2, zpk2_clear) = known_key(hsm, KeyType::Zpk, false);
    let (tak, tak_clear) = known_key(hsm, KeyType::Tak, false);
    let (zmk, zmk_clear) = known_key(hsm, KeyType::Zmk, false);
    let mut posp = Posp::connect(port.addr);

    // NC: diagnostics.
    let nc = posp.call("NC");
    assert_eq!(&nc[..4], "ND00");
    assert_eq!(&nc[4..20], hsm.lmk_kcv(8));
    assert_eq!(
        nc.len(),
        4 + 16 + 9,
        "LMK check value 16H + firmware 9A: {nc}"
    );

    let pan = "5413330089600010";
    let acct = account(pan);
    let Some(a) = py(&[
        json!({"op": "pin_block", "fmt": "01", "pin": "1234", "pan": pan, "key": hx(&tpk_clear)}),
        json!({"op": "pin_block", "fmt": "01", "pin": "987654321", "pan": pan, "key": hx(&zpk_clear)}),
    ]) else {
        return;
    };
    let pb = s(&a[0], "block");
    let pb_zpk = s(&a[1], "block");

    // CA: TPK → ZPK, ISO 0 → ISO 0, then ISO 0 → ISO 3.
    let ca = posp.call(&format!(
        "CAS{}S{}12{pb}0101{acct}",
        tpk.key_block, zpk.key_block
    ));
    assert_eq!(&ca[..6], "CB0004", "{ca}");
    assert_eq!(&ca[22..], "01");
    let out0 = ca[6..22].to_string();
    let ca3 = posp.call(&format!(
        "CAS{}S{}12{pb}0147{acct}",
        tpk.key_block, zpk.key_block
    ));
    assert_eq!(&ca3[..6], "CB0004", "{ca3}");
    assert_eq!(&ca3[22..], "47");
    // CC: ZPK → ZPK2, a 9-digit PIN; and a maximum PIN length it exceeds.
    let cc = posp.call(&format!(
        "CCS{}S{}12{pb_zpk}0101{acct}",
        zpk.key_block, zpk2.key_block
    ));
    assert_eq!(&cc[..6], "CD0009", "{cc}");
    let too_long = posp.call(&format!(
        "CCS{}S{}06{pb_zpk}0101{acct}",
        zpk.key_block, zpk2.key_block
    ));
    assert_eq!(too_long, "CD24");

    // M6/M8: X9.19 (alg 3) and full TDES CBC-MAC (alg 1, padding 2), text and hex input.
    let msg = b"0200\x1c4000001234562\x1c000000001000";
    let m6 = posp.call(&format!(
        "M602131003S{}{:04X}{}",
        tak.key_block,
        msg.len(),
        String::from_utf8_lossy(msg)
    ));
    assert_eq!(&m6[..4], "M700", "{m6}");
    let mac3 = m6[4..].to_string();
    assert_eq!(mac3.len(), 16);
    let m6b = posp.call(&format!(
        "M601012003S{}{:04X}{}",
        tak.key_block,
        msg.len() * 2,
        hx(msg)
    ));
    assert_eq!(&m6b[..4], "M700", "{m6b}");
    let mac1 = m6b[4..].to_string();
    assert_eq!(mac1.len(), 8);
    let m8 = posp.call(&format!(
        "M802131003S{}{:04X}{}{mac3}",
        tak.key_block,
        msg.len(),
        String::from_utf8_lossy(msg)
    ));
    assert_eq!(m8, "M900");
    let mut wrong = mac3.clone().into_bytes();
    wrong[0] = if wrong[0] == b'0' { b'1' } else { b'0' };
    let m8bad = posp.call(&format!(
        "M802131003S{}{:04X}{}{}",
        tak.key_block,
        msg.len(),
        String::from_utf8_lossy(msg),
        String::from_utf8(wrong).unwrap()
    ));
    assert_eq!(m8bad, "M901");

    // A0 mode 1: a new ZPK under the LMK and under the ZMK (X9.17, scheme X).
    let a0 = posp.call(&format!("A01001S;0S{}X", zmk.key_block));
    assert_eq!(&a0[..4], "A100", "{a0}");
    let rest = &a0[4..];
    assert!(rest.starts_with('S'));
    let blen: usize = rest[2..6].parse().unwrap();
    let new_block = rest[1..1 + blen].to_string();
    let under_zmk = &rest[1 + blen..];
    assert!(under_zmk.starts_with('X'));
    let x_hex = under_zmk[1..33].to_string();
    let a0_kcv = under_zmk[33..].to_string();
    assert_eq!(a0_kcv.len(), 6);
    // BU: its check value, 16H and 6H.
    let bu = posp.call(&format!("BUFFFS{new_block}"));
    assert_eq!(&bu[..4], "BV00", "{bu}");
    assert_eq!(&bu[4..10], a0_kcv);
    assert_eq!(bu.len(), 4 + 16);
    let bu6 = posp.call(&format!("BUFFFS{new_block};FFF;001"));
    assert_eq!(bu6, format!("BV00{a0_kcv}"));

    // FA: the network sends a ZPK under the ZMK; we store it and translate to it.
    let net_zpk = odd_parity_random(16);
    // A8: export the TAK… it is not exportable: refused.
    let a8_refused = posp.call(&format!("A8003S{}S{}X", zmk.key_block, tak.key_block));
    assert_eq!(a8_refused, "A929");

    let Some(b) = py(&[
        json!({"op": "unwrap", "kek": hx(&zmk_clear), "enc": x_hex}),
        json!({"op": "wrap", "kek": hx(&zmk_clear), "key": hx(&net_zpk)}),
        json!({"op": "pin", "fmt": "01", "key": hx(&zpk_clear), "block": out0, "pan": pan}),
        json!({"op": "pin", "fmt": "47", "key": hx(&zpk_clear), "block": &ca3[6..22], "pan": pan}),
        json!({"op": "pin", "fmt": "01", "key": hx(&zpk2_clear), "block": &cc[6..22], "pan": pan}),
        json!({"op": "mac", "alg": 3, "padding": 1, "key": hx(&tak_clear), "data": hx(msg)}),
        json!({"op": "mac", "alg": 1, "padding": 2, "key": hx(&tak_clear), "data": hx(msg)}),
        json!({"op": "kcv", "key": hx(&tak_clear)}),
    ]) else {
        return;
    };
    assert_eq!(
        &s(&b[0], "kcv")[..6],
        a0_kcv,
        "A0's key under the ZMK has A0's KCV"
    );
    assert_eq!(&s(&b[0], "kcv"), &bu[4..], "BU's 16H KCV is E(K, 0)");
    assert_eq!(s(&b[2], "pin"), "1234");
    assert_eq!(s(&b[3], "pin"), "1234");
    assert_eq!(s(&b[4], "pin"), "987654321");
    assert_eq!(s(&b[5], "mac"), mac3, "M6 alg 3 = psec retail MAC");
    assert_eq!(&s(&b[6], "mac")[..8], mac1, "M6 alg 1 pad 2 = psec CBC-MAC");

    let zpk_under_zmk = s(&b[1], "enc");
    let fa = posp.call(&format!("FAS{}X{zpk_under_zmk}", zmk.key_block));
    assert_eq!(&fa[..4], "FB00", "{fa}");
    let blen: usize = fa[6..10].parse().unwrap();
    let fa_block = fa[5..5 + blen].to_string();
    let fa_kcv = fa[5 + blen..].to_string();
    assert_eq!(fa_kcv.len(), 16);
    let fa6 = posp.call(&format!("FAS{}X{zpk_under_zmk};XS1", zmk.key_block));
    assert_eq!(&fa6[fa6.len() - 6..], &fa_kcv[..6]);
    let ca_net = posp.call(&format!("CAS{}S{fa_block}12{pb}0101{acct}", tpk.key_block));
    assert_eq!(&ca_net[..6], "CB0004", "{ca_net}");

    // A6: a TAK under the ZMK, exportable; A8 sends it back under the ZMK (X and TR-31).
    let tak2 = odd_parity_random(16);
    let Some(c) = py(&[
        json!({"op": "wrap", "kek": hx(&zmk_clear), "key": hx(&tak2)}),
        json!({"op": "pin", "fmt": "01", "key": hx(&net_zpk), "block": &ca_net[6..22], "pan": pan}),
        json!({"op": "kcv", "key": hx(&net_zpk)}),
    ]) else {
        return;
    };
    assert_eq!(s(&c[1], "pin"), "1234", "translated to the FA-imported ZPK");
    assert_eq!(s(&c[2], "kcv"), fa_kcv);
    let a6 = posp.call(&format!(
        "A6003S{}X{}S#M3T2C00E00",
        zmk.key_block,
        s(&c[0], "enc")
    ));
    assert_eq!(&a6[..4], "A700", "{a6}");
    let blen: usize = a6[6..10].parse().unwrap();
    let tak2_block = a6[5..5 + blen].to_string();
    let m6_tak2 = posp.call(&format!(
        "M602131003S{tak2_block}{:04X}{}",
        msg.len(),
        String::from_utf8_lossy(msg)
    ));
    assert_eq!(&m6_tak2[..4], "M700", "{m6_tak2}");
    let a8 = posp.call(&format!("A8003S{}S{tak2_block}X", zmk.key_block));
    assert_eq!(&a8[..4], "A900", "{a8}");
    let a8r = posp.call(&format!("A8003S{}S{tak2_block}R", zmk.key_block));
    assert_eq!(&a8r[..5], "A900R", "{a8r}");
    let tr31 = &a8r[5..a8r.len() - 6];
    let Some(d) = py(&[
        json!({"op": "unwrap", "kek": hx(&zmk_clear), "enc": &a8[5..37]}),
        json!({"op": "tr31_unwrap", "kbpk": hx(&zmk_clear), "block": tr31}),
        json!({"op": "mac", "alg": 3, "padding": 1, "key": hx(&tak2), "data": hx(msg)}),
    ]) else {
        return;
    };
    assert_eq!(unhex(&d[0]["key"]), tak2);
    assert_eq!(unhex(&d[1]["key"]), tak2);
    assert_eq!(d[1]["usage"].as_str().unwrap(), "M3");
    assert_eq!(&a8[37..], &s(&d[0], "kcv")[..6]);
    assert_eq!(
        s(&d[2], "mac"),
        m6_tak2[4..],
        "the A6-imported TAK MACs as psec's"
    );

    // NC follows an LMK rotation (the check value is read per call).
    let before = hsm.lmk_kcv(8);
    hsm.rotate_lmk("test", Vec::new(), None).unwrap();
    let nc = posp.call("NC");
    assert_ne!(hsm.lmk_kcv(8), before);
    assert_eq!(&nc[4..20], hsm.lmk_kcv(8));
}

#[test]
fn the_parser_reads_every_layout_of_the_corpus() {
    use poshsm::payshield::frame::{self, Command, Split};
    let dir = format!("{}/fuzz/corpus/payshield_frame", env!("CARGO_MANIFEST_DIR"));
    let parse = |name: &str| {
        let data = std::fs::read(format!("{dir}/{name}")).unwrap();
        let Split::Frame { len } = frame::split_frame(&data, 32 * 1024) else {
            panic!("{name}: not one frame");
        };
        let req = frame::split_request(&data[2..2 + len], 4);
        let cmd = req.code.unwrap();
        match frame::parse_command(cmd, req.body) {
            Ok(c) => !matches!(c, Command::Nc) || name == "nc",
            Err(e) => panic!("{name}: error {e}"),
        }
    };
    for ok in [
        "nc", "ca", "ca_aes", "cc", "m6_text", "m6_hex", "m8", "a0", "a0_zmk", "a6", "a6_tr31",
        "fa", "bu", "bu2", "a8",
    ] {
        assert!(parse(ok), "{ok}");
    }
    let data = std::fs::read(format!("{dir}/variant")).unwrap();
    let req = frame::split_request(&data[2..], 4);
    assert_eq!(frame::parse_command(*b"CA", req.body), Err("A1"));
    assert_eq!(
        frame::split_frame(
            &std::fs::read(format!("{dir}/lying_length")).unwrap(),
            32 * 1024
        ),
        Split::TooLarge { len: 0xFFFF }
    );
    assert_eq!(frame::response_code(*b"CA"), *b"CB");
    assert_eq!(frame::response_code(*b"M6"), *b"M7");
    assert_eq!(frame::response_code(*b"A0"), *b"A1");
    assert_eq!(frame::response_code(*b"BU"), *b"BV");
    assert_eq!(frame::parse_command(*b"M6", b"02111FFFS"), Err("15"));
}

#[test]
fn refusals_use_payshield_error_codes() {
    let mut cfg = PayshieldConfig::default();
    cfg.commands.retain(|c| c != "A0");
    let port = start(cfg, None);
    let (tpk, _) = known_key(&port.hsm, KeyType::Tpk, false);
    let (zpk, _) = known_key(&port.hsm, KeyType::Zpk, false);
    let mut posp = Posp::connect(port.addr);
    let acct = "400000123456";
    // Disabled and unknown commands.
    assert_eq!(posp.call("A00002S"), "A168");
    assert_eq!(posp.call("XX"), "XY67");
    assert_eq!(posp.call("\u{1}\u{2}"), "ZZ67");
    // Variant-LMK keys: no variant LMK here.
    assert_eq!(
        posp.call(&format!(
            "CAU{}S{}12{}0101{acct}",
            "0".repeat(32),
            zpk.key_block,
            "0".repeat(16)
        )),
        "CBA1"
    );
    assert_eq!(posp.call(&format!("BU021{}", "A".repeat(32))), "BVA1");
    // Wrong key for the job (a TPK as destination), unknown PIN format, bad PIN block.
    let pb = "0123456789ABCDEF";
    assert_eq!(
        posp.call(&format!(
            "CAS{}S{}12{pb}0101{acct}",
            tpk.key_block, tpk.key_block
        )),
        "CBA6"
    );
    assert_eq!(
        posp.call(&format!(
            "CAS{}S{}12{pb}0301{acct}",
            tpk.key_block, zpk.key_block
        )),
        "CB23"
    );
    assert_eq!(
        posp.call(&format!(
            "CAS{}S{}12{pb}0101{acct}",
            tpk.key_block, zpk.key_block
        )),
        "CB20"
    );
    // To ISO 1 from ISO 0 is disabled by policy (Clulow).
    assert_eq!(
        posp.call(&format!(
            "CAS{}S{}12{pb}0105{acct}",
            tpk.key_block, zpk.key_block
        )),
        "CB69"
    );
    // A tampered key block, and one from another LMK.
    let mut bad = tpk.key_block.clone().into_bytes();
    let last = bad.len() - 1;
    bad[last] = if bad[last] == b'0' { b'1' } else { b'0' };
    let bad = String::from_utf8(bad).unwrap();
    assert_eq!(
        posp.call(&format!("CAS{bad}S{}12{pb}0101{acct}", zpk.key_block)),
        "CBA4"
    );
    let other_dir = tempfile::tempdir().unwrap();
    let other = Hsm::new(
        Lmk::from_bytes(&[0x11; 32]),
        Store::open(other_dir.path()).unwrap(),
        HsmConfig::default(),
    );
    let (foreign, _) = known_key(&other, KeyType::Tpk, false);
    assert_eq!(
        posp.call(&format!(
            "CAS{}S{}12{pb}0101{acct}",
            foreign.key_block, zpk.key_block
        )),
        "CBA3"
    );
    // Truncated fields and trailing junk.
    assert_eq!(posp.call(&format!("CAS{}", tpk.key_block)), "CB15");
    assert_eq!(posp.call(&format!("BUFFFS{}junk", tpk.key_block)), "BV15");
    // M6: unsupported mode flag, bad message length.
    assert_eq!(posp.call("M61"), "M702");
    assert_eq!(
        posp.call(&format!("M602131003S{}00FFab", tpk.key_block)),
        "M780"
    );
    // The port still answers.
    assert_eq!(&posp.call("NC")[..4], "ND00");
    // A module in ALARM says so to the NC heartbeat and refuses crypto.
    port.hsm.raise_alarm("test: simulated self-test failure");
    assert_eq!(posp.call("NC"), "ND41");
    assert_eq!(
        posp.call(&format!(
            "CAS{}S{}12{pb}0101{acct}",
            tpk.key_block, zpk.key_block
        )),
        "CB41"
    );
}

#[test]
fn malformed_frames_and_slow_clients_leave_the_port_serving() {
    let cfg = PayshieldConfig {
        idle_timeout_secs: 1,
        max_connections: 3,
        ..Default::default()
    };
    let port = start(cfg, None);
    // A frame too short for a header and a command code: answered ZZ15, connection kept.
    let mut a = Posp::connect(port.addr);
    a.send_raw(&Posp::frame(b"00"));
    let (h, body) = a.recv();
    assert_eq!((h.as_slice(), body.as_str()), (&b"00ZZ"[..], "15"));
    a.send_raw(&Posp::frame(b"0042N"));
    assert_eq!(a.recv().1, "ZZ15");
    // Pipelined frames, sent in one write, answered in order.
    let mut two = Posp::frame(b"0042NC");
    two.extend(Posp::frame(b"0043XX"));
    a.send_raw(&two);
    let (h1, b1) = a.recv();
    let (h2, b2) = a.recv();
    assert_eq!((h1.as_slice(), &b1[..4]), (&b"0042"[..], "ND00"));
    assert_eq!((h2.as_slice(), b2.as_str()), (&b"0043"[..], "XY67"));
    // A lying length prefix beyond max_frame: the connection is closed.
    a.send_raw(&[0xFF, 0xFF, b'0']);
    assert!(a.closed());
    // Garbage: whatever it frames to is answered or the connection is dropped.
    let mut g = Posp::connect(port.addr);
    g.send_raw(&[0x00, 0x03, 0xFE, 0xFF, 0x00, 0x00, 0x01, 0x7F]);
    // A truncated frame, then silence: closed after the idle timeout.
    let mut slow = Posp::connect(port.addr);
    slow.send_raw(&[0x00, 0x20, b'0', b'0']);
    let t0 = std::time::Instant::now();
    assert!(slow.closed());
    assert!(t0.elapsed() < Duration::from_secs(5));
    drop(g);
    // The connection limit: a 4th concurrent connection is refused, the port lives on.
    std::thread::sleep(Duration::from_millis(200));
    let mut c1 = Posp::connect(port.addr);
    let mut c2 = Posp::connect(port.addr);
    let mut c3 = Posp::connect(port.addr);
    assert_eq!(&c1.call("NC")[..4], "ND00");
    assert_eq!(&c2.call("NC")[..4], "ND00");
    assert_eq!(&c3.call("NC")[..4], "ND00");
    let mut c4 = Posp::connect(port.addr);
    assert!(c4.closed());
    drop((c1, c2));
    std::thread::sleep(Duration::from_millis(200));
    let mut again = Posp::connect(port.addr);
    assert_eq!(&again.call("NC")[..4], "ND00");
    assert_eq!(&c3.call("NC")[..4], "ND00");
}

/// A rustls client over a std TcpStream with the given dev-PKI role.
fn tls_client(
    addr: SocketAddr,
    pki: &poshsm::devcerts::DevPki,
    role: &str,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    poshsm::server::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let (cert, key) = pki.client(role).unwrap();
    let certs = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .unwrap();
    let conn =
        rustls::ClientConnection::new(Arc::new(cfg), ServerName::try_from("localhost").unwrap())
            .unwrap();
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    rustls::StreamOwned::new(conn, sock)
}

fn tls_call(s: &mut impl ReadWrite, cmd: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut payload = HEADER.to_vec();
    payload.extend_from_slice(cmd);
    s.write_all(&Posp::frame(&payload))?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len)?;
    let mut p = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut p)?;
    Ok(p.split_off(HEADER.len()))
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

#[test]
fn tls_admits_only_the_listed_client_certificates() {
    let pki = poshsm::devcerts::generate("payshield test CA", &["posp", "admin"]).unwrap();
    let tls = TlsMaterial {
        ca_pem: pki.ca_pem.clone().into_bytes(),
        cert_pem: pki.server_cert_pem.clone().into_bytes(),
        key_pem: pki.server_key_pem.clone().into_bytes(),
    };
    let cfg = PayshieldConfig {
        tls: true,
        ..Default::default()
    };
    let port = start(cfg, Some(tls));
    let mut posp = tls_client(port.addr, &pki, "posp");
    let nc = tls_call(&mut posp, b"NC").unwrap();
    assert_eq!(&nc[..4], b"ND00");
    // Pipelined over TLS too.
    let nc2 = tls_call(&mut posp, b"NC").unwrap();
    assert_eq!(nc, nc2);
    // A certificate from the same CA but not in [payshield] clients: dropped.
    let mut admin = tls_client(port.addr, &pki, "admin");
    assert!(tls_call(&mut admin, b"NC").is_err());
    // Plain TCP to a TLS port: no answer.
    let mut plain = Posp::connect(port.addr);
    plain.send_raw(&Posp::frame(b"0042NC"));
    let answer = plain.until_closed();
    assert!(!answer.windows(4).any(|w| w == b"ND00"));
    let mut posp2 = tls_client(port.addr, &pki, "posp");
    assert_eq!(&tls_call(&mut posp2, b"NC").unwrap()[..4], b"ND00");
}

/// The daemon binary; killed when dropped.
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_binary_serves_payshield_next_to_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_poshsm"))
        .args(["serve", "--dev", "--listen", "127.0.0.1:0"])
        .args(["--payshield-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut d = Daemon(child);
    let stdout = d.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(a) = line.strip_prefix("poshsm payshield listening on ") {
                let _ = tx.send(a.to_string());
            }
        }
    });
    let addr: SocketAddr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("`poshsm payshield listening on ADDR` within 30 s")
        .parse()
        .unwrap();
    let mut posp = Posp::connect(addr);
    let nc = posp.call("NC");
    assert_eq!(&nc[..4], "ND00");
    assert_eq!(nc.len(), 29);
}

#[test]
fn the_payshield_config_section_parses_and_is_checked() {
    let cfg = poshsm::cli::serve::parse_config(
        "[payshield]\nenabled = true\nlisten = \"127.0.0.1:1501\"\nheader_len = 2\ncommands = [\"NC\", \"CA\"]\n",
    )
    .unwrap();
    assert!(cfg.payshield.enabled);
    assert_eq!(cfg.payshield.header_len, 2);
    cfg.payshield.validate().unwrap();
    let defaults = PayshieldConfig::default();
    assert_eq!(defaults.listen, "127.0.0.1:1500");
    assert_eq!(
        (
            defaults.header_len,
            defaults.max_connections,
            defaults.idle_timeout_secs,
            defaults.max_frame
        ),
        (4, 1024, 300, 32 * 1024)
    );
    assert_eq!(defaults.commands.len(), 10);
    let bad = poshsm::cli::serve::parse_config("[payshield]\ncommands = [\"KQ\"]\n").unwrap();
    assert!(bad.payshield.validate().unwrap_err().contains("KQ"));
    assert!(poshsm::cli::serve::parse_config("[payshield]\nlisten_on = \"x\"\n").is_err());
}
