#!/usr/bin/env python3
"""CA (translate a PIN block from TPK to ZPK) through poshsm's payShield port,
beside pythales (PyPI 0.74, a single-threaded Python Thales simulator) serving
the same command, in one run. Results: benches/payshield.md.

    pip install pythales==0.74 --no-deps && pip install pycryptodome tracetools pynblock
    cargo build --release
    python3 benches/payshield_bench.py [--secs 5] [--runs 3] [--json OUT]

What it does:
  1. starts `poshsm serve --dev --payshield-listen 127.0.0.1:0` (release build)
     with the per-TPK security trigger off (it would throttle a benchmark that
     replays one TPK), forms a ZMK from two known components with
     `poshsm admin key import-components`, then imports a TPK (A6, key type 002)
     and a ZPK (FA) under that ZMK over the payShield port itself: every key
     has a clear value known here;
  2. starts pythales on a free port with its default test LMK and the same
     clear TPK and ZPK as `U` keys under that LMK;
  3. checks one CA on each: poshsm's output must decrypt under the clear ZPK
     to the PIN (ISO 0). pythales 0.74 encrypts its output under the
     LMK-encrypted ZPK bytes instead of the clear ZPK (a bug): its output is
     checked against that key, so both are known to do the work;
  4. load: N connections, each with `depth` CA requests in flight, for
     `--secs` seconds, `--runs` times; reports the median CA/s.

The load client is Python with one process per 4 connections; each process
writes `depth` framed requests per connection in one send and reads the fixed
30-byte answers back. depth 1 is strict request/response (a POSP waiting for
each answer); depth > 1 pipelines on the connection, which the payShield
framing allows (answers come back in order, with the request's header).
pythales reads one message per recv(), so it is only driven at depth 1 and
one connection (it serves one client at a time).
"""

import argparse
import json
import multiprocessing as mp
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

from Crypto.Cipher import DES3

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "poshsm")
HEADER = b"0001"
PAN = "5413330089600010"
ACCOUNT = PAN[-13:-1]
PIN = "1234"
# pythales' default LMK (a public test value in pythales/hsm.py).
PYTHALES_LMK = bytes.fromhex("deafbeedeafbeedeafbeedeafbeedeaf")


def odd_parity(b: bytes) -> bytes:
    return bytes(x ^ 1 if bin(x).count("1") % 2 == 0 else x for x in b)


def rand_key() -> bytes:
    while True:
        k = odd_parity(os.urandom(16))
        if k[:8] != k[8:]:
            return k


def tdes(key: bytes):
    return DES3.new(key, DES3.MODE_ECB)


def iso0(pin: str, pan: str) -> bytes:
    pin_field = bytes.fromhex(("%02d" % len(pin) + pin).ljust(16, "F"))
    pan_field = bytes.fromhex("0000" + pan[-13:-1])
    return bytes(a ^ b for a, b in zip(pin_field, pan_field))


def frame(payload: bytes) -> bytes:
    return struct.pack(">H", len(payload)) + payload


def call(sock: socket.socket, cmd: bytes) -> bytes:
    sock.sendall(frame(HEADER + cmd))
    n = struct.unpack(">H", recv_exact(sock, 2))[0]
    return recv_exact(sock, n)[len(HEADER):]


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return bytes(buf)


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port: int, secs: float = 20) -> None:
    end = time.time() + secs
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} did not open")


# ---------------------------------------------------------------- servers --

def start_poshsm(tmp: str):
    cfg = os.path.join(tmp, "bench.toml")
    with open(cfg, "w") as f:
        # The security trigger counts translations per TPK; one replayed TPK would be throttled.
        f.write("[hsm]\npin_guard = { per_sec = 0.0, burst = 0.0 }\n")
    data = os.path.join(tmp, "data")
    proc = subprocess.Popen(
        [BIN, "serve", "--dev", "--data-dir", data, "--config", cfg,
         "--listen", "127.0.0.1:0", "--payshield-listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "POSHSM_LOG": "warn"})
    grpc = ps = None
    while grpc is None or ps is None:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("poshsm exited")
        if line.startswith("poshsm listening on "):
            grpc = line.split()[-1]
        elif line.startswith("poshsm payshield listening on "):
            ps = line.split()[-1]
    return proc, data, grpc, int(ps.rsplit(":", 1)[1])


def poshsm_keys(data: str, grpc: str, port: int, tpk: bytes, zpk: bytes) -> dict:
    zmk_parts = [rand_key(), rand_key(), rand_key()]
    zmk = bytes(a ^ b ^ c for a, b, c in zip(*zmk_parts))
    out = subprocess.run(
        [BIN, "admin", "--addr", grpc, "--data-dir", data, "--json",
         "key", "import-components", "--type", "ZMK"],
        env={**os.environ, "POSHSM_COMPONENTS": "\n".join(p.hex() for p in zmk_parts)},
        check=True, capture_output=True, text=True).stdout
    zmk_block = json.loads(out)["key_block"]
    s = socket.create_connection(("127.0.0.1", port))
    a6 = call(s, b"A6002S" + zmk_block.encode() + b"X" + tdes(zmk).encrypt(tpk).hex().upper().encode() + b"S")
    fa = call(s, b"FAS" + zmk_block.encode() + b"X" + tdes(zmk).encrypt(zpk).hex().upper().encode())
    s.close()
    assert a6[:4] == b"A700", a6[:8]
    assert fa[:4] == b"FB00", fa[:8]
    blk = lambda r: r[4:5 + int(r[6:10])]  # "S" + block (its length is in its header)
    return {"tpk": blk(a6), "zpk": blk(fa)}


def start_pythales(port: int):
    # tracetools >= 1.2x swapped trace()'s arguments, which crashes pythales 0.74 on its
    # first message: its hex-dump trace is replaced by a no-op (output goes to
    # /dev/null anyway, so this only saves pythales work).
    code = ("import pythales.hsm as h; h.trace = lambda *a, **k: None; "
            f"h.HSM(header='{HEADER.decode()}', port={port}).run()")
    proc = subprocess.Popen([sys.executable, "-c", code],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc


# ------------------------------------------------------------------- load --

# A small std-only Rust load client, compiled with rustc -O on first use: one thread
# per connection, `depth` requests written per round, the fixed-size answers read back.
RUST_CLIENT = r"""
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (addr, req_hex, conns, depth, secs, resp_len) = (a[1].clone(), &a[2], a[3].parse::<usize>().unwrap(),
        a[4].parse::<usize>().unwrap(), a[5].parse::<f64>().unwrap(), a[6].parse::<usize>().unwrap());
    let one: Vec<u8> = (0..req_hex.len()).step_by(2).map(|i| u8::from_str_radix(&req_hex[i..i + 2], 16).unwrap()).collect();
    let batch: Vec<u8> = one.iter().cycle().take(one.len() * depth).copied().collect();
    let start = std::sync::Arc::new(std::sync::Barrier::new(conns));
    let hs: Vec<_> = (0..conns).map(|_| {
        let (addr, batch, start) = (addr.clone(), batch.clone(), start.clone());
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.set_nodelay(true).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut buf = vec![0u8; resp_len * depth];
            start.wait();
            let t0 = Instant::now();
            let mut n = 0u64;
            while t0.elapsed().as_secs_f64() < secs {
                s.write_all(&batch).unwrap();
                s.read_exact(&mut buf).unwrap();
                n += depth as u64;
            }
            n as f64 / t0.elapsed().as_secs_f64()
        })
    }).collect();
    let rate: f64 = hs.into_iter().map(|h| h.join().unwrap()).sum();
    println!("{rate}");
}
"""


def rust_client() -> str:
    exe = os.path.join(ROOT, "target", "payshield_load")
    src = exe + ".rs"
    fresh = os.path.exists(exe) and os.path.exists(src) and open(src).read() == RUST_CLIENT
    if not fresh:
        with open(src, "w") as f:
            f.write(RUST_CLIENT)
        subprocess.run(["rustc", "-O", "--edition", "2021", "-o", exe, src], check=True)
    return exe


def load_rust(port, cmd, conns, depth, secs) -> float:
    req = frame(HEADER + cmd).hex()
    out = subprocess.run([rust_client(), f"127.0.0.1:{port}", req, str(conns), str(depth),
                          str(secs), str(2 + len(HEADER) + 24)],
                         check=True, capture_output=True, text=True).stdout
    return float(out.strip())


def worker(port, cmd, conns, depth, secs, q):
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(conns)]
    for s in socks:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.settimeout(10)
    req = frame(HEADER + cmd) * depth
    resp_len = 2 + len(HEADER) + 24  # length, header, CB 00, PIN length 2N, 16H, format 2N
    want = resp_len * depth
    done = 0
    t0 = time.perf_counter()
    end = t0 + secs
    while time.perf_counter() < end:
        for s in socks:
            s.sendall(req)
        for s in socks:
            got = 0
            while got < want:
                chunk = s.recv(want - got)
                if not chunk:
                    raise ConnectionError("closed")
                got += len(chunk)
        done += depth * conns
    elapsed = time.perf_counter() - t0
    for s in socks:
        s.close()
    q.put(done / elapsed)


def load(port, cmd, conns, depth, secs) -> float:
    per = 4
    groups = [min(per, conns - i) for i in range(0, conns, per)]
    q = mp.Queue()
    procs = [mp.Process(target=worker, args=(port, cmd, g, depth, secs, q)) for g in groups]
    for p in procs:
        p.start()
    rate = sum(q.get() for _ in procs)
    for p in procs:
        p.join()
    return rate


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--secs", type=float, default=5.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args()
    if not os.path.exists(BIN):
        sys.exit(f"{BIN} is missing: cargo build --release")

    tpk, zpk = rand_key(), rand_key()
    clear_pb = iso0(PIN, PAN)
    pb = tdes(tpk).encrypt(clear_pb).hex().upper().encode()

    tmp = tempfile.mkdtemp(prefix="psbench-")
    posh, data, grpc, posh_port = start_poshsm(tmp)
    py_port = free_port()
    pyth = start_pythales(py_port)
    try:
        k = poshsm_keys(data, grpc, posh_port, tpk, zpk)
        posh_cmd = b"CA" + k["tpk"] + k["zpk"] + b"12" + pb + b"0101" + ACCOUNT.encode()
        lmk = tdes(PYTHALES_LMK)
        # pythales checks for EVEN parity (pynblock's parityOf is inverted), so it gets
        # the same keys with every parity bit flipped: DES ignores those bits.
        flip = lambda k: bytes(x ^ 1 for x in k)
        tpk_u = b"U" + lmk.encrypt(flip(tpk)).hex().upper().encode()
        zpk_u = b"U" + lmk.encrypt(flip(zpk)).hex().upper().encode()
        py_cmd = b"CA" + tpk_u + zpk_u + b"12" + pb + b"0101" + ACCOUNT.encode()

        # Correctness, one CA each.
        s = socket.create_connection(("127.0.0.1", posh_port))
        r = call(s, posh_cmd)
        s.close()
        assert r[:6] == b"CB0004" and r[-2:] == b"01", r
        assert tdes(zpk).decrypt(bytes.fromhex(r[6:22].decode())) == clear_pb, "poshsm CA output"
        s = socket.create_connection(("127.0.0.1", py_port))
        r = call(s, py_cmd)
        s.close()
        assert r[:6] == b"CB0004", r
        # pythales 0.74 bug: the output is under the LMK-encrypted ZPK bytes, not the ZPK.
        buggy_key = lmk.encrypt(flip(zpk))
        assert tdes(buggy_key).decrypt(bytes.fromhex(r[6:22].decode())) == clear_pb, "pythales CA"
        print("correctness: poshsm CA decrypts under the ZPK to the PIN; pythales' under "
              "its LMK-encrypted ZPK (its known bug)", flush=True)

        py, rs = ("python", load), ("rust", load_rust)
        cases = [
            ("pythales 0.74", py_port, py_cmd, 1, 1, py),
            ("pythales 0.74", py_port, py_cmd, 1, 1, rs),
            ("poshsm", posh_port, posh_cmd, 1, 1, py),
            ("poshsm", posh_port, posh_cmd, 1, 1, rs),
            ("poshsm", posh_port, posh_cmd, 8, 1, py),
            ("poshsm", posh_port, posh_cmd, 8, 1, rs),
            ("poshsm", posh_port, posh_cmd, 8, 16, py),
            ("poshsm", posh_port, posh_cmd, 8, 16, rs),
        ]
        results = []
        for name, port, cmd, conns, depth, (client, fn) in cases:
            rates = [fn(port, cmd, conns, depth, args.secs) for _ in range(args.runs)]
            med = statistics.median(rates)
            results.append({"server": name, "client": client, "connections": conns, "depth": depth,
                            "runs": [round(x) for x in rates], "median_ca_per_s": round(med)})
            print(f"{name:14s} client={client:6s} conns={conns} depth={depth:2d}  "
                  f"CA/s runs={[round(x) for x in rates]}  median={med:,.0f}", flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2)
    finally:
        for p in (posh, pyth):
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
