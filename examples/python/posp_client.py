#!/usr/bin/env python3
"""A POSP talking to poshsm from Python over mutual TLS — and checking every
answer independently with psec.

It generates the gRPC stubs at run time from ../../proto with grpcio-tools (into
a temporary directory), then plays a terminal's morning and first purchase:

1. (admin certificate) forms a TMK from three components it knows and
   registers the terminal with it — unless the terminal already exists with
   that TMK; forms a ZPK from components too, as the network would hold it;
2. (posp certificate) signs the terminal in and decrypts field 62 under the
   TMK, checking every check value, like the PIN pad;
3. translates an ISO 0 PIN block from the terminal's PIK to the ZPK and
   decodes the result under the ZPK with psec;
4. verifies the request MAC (UnionPay ECB, computed here), checks that a
   corrupted MAC is refused, and checks a MAC the daemon generates.

Any mismatch exits 1. Needs: pip install grpcio grpcio-tools psec
Certificates: --data-dir D uses D/certs/ca.pem, posp.pem/key and admin.pem/key
(what `poshsm serve --dev --data-dir D` creates).

    python3 examples/python/posp_client.py --addr 127.0.0.1:50051 --data-dir ./poshsm-data
"""
import argparse
import atexit
import os
import secrets
import shutil
import sys
import tempfile
import warnings

warnings.filterwarnings("ignore")  # psec's TripleDES deprecation notice

try:
    import grpc
    import psec
    from grpc_tools import protoc
except ImportError as exc:  # pragma: no cover - the Rust test probes this first
    print(f"missing Python module: {exc.name} (pip install grpcio grpcio-tools psec)", file=sys.stderr)
    sys.exit(2)

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))

failures = []


def check(what, ok, detail=""):
    print(f"  {'ok  ' if ok else 'FAIL'} {what}{(' — ' + detail) if detail and not ok else ''}")
    if not ok:
        failures.append(what)
    return ok


def load_stubs(proto_dir):
    """Compiles poshsm/v1/*.proto into a temporary directory and imports them."""
    out = tempfile.mkdtemp(prefix="poshsm-stubs-")
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    wkt = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    files = [
        os.path.join("poshsm", "v1", f)
        for f in sorted(os.listdir(os.path.join(proto_dir, "poshsm", "v1")))
        if f.endswith(".proto")
    ]
    rc = protoc.main(
        ["grpc_tools.protoc", f"-I{proto_dir}", f"-I{wkt}", f"--python_out={out}", f"--grpc_python_out={out}"]
        + files
    )
    if rc != 0:
        raise SystemExit(f"protoc failed ({rc}) on {proto_dir}")
    sys.path.insert(0, out)
    from poshsm.v1 import admin_pb2, admin_pb2_grpc, common_pb2, crypto_pb2, crypto_pb2_grpc

    return common_pb2, crypto_pb2, crypto_pb2_grpc, admin_pb2, admin_pb2_grpc


def channel(addr, certs, role):
    def read(name):
        with open(os.path.join(certs, name), "rb") as f:
            return f.read()

    creds = grpc.ssl_channel_credentials(
        root_certificates=read("ca.pem"),
        private_key=read(f"{role}.key"),
        certificate_chain=read(f"{role}.pem"),
    )
    # The dev server certificate names localhost (and 127.0.0.1).
    return grpc.secure_channel(addr, creds, options=[("grpc.ssl_target_name_override", "localhost")])


def odd(key):
    return psec.des.adjust_key_parity(key)


def xor(*parts):
    out = bytes(len(parts[0]))
    for p in parts:
        out = bytes(a ^ b for a, b in zip(out, p))
    return out


def kcv(key):
    return psec.des.generate_kcv(key, 3).hex().upper()


def components_of(clear):
    """Three odd-parity components whose XOR is `clear` (odd ^ odd ^ odd = odd)."""
    c1, c2 = odd(secrets.token_bytes(16)), odd(secrets.token_bytes(16))
    return [c1, c2, xor(clear, c1, c2)]


def ecb(key, data, decrypt=False):
    # psec's TDES accepts 8-byte (single DES), 16- and 24-byte keys.
    return (psec.des.decrypt_tdes_ecb if decrypt else psec.des.encrypt_tdes_ecb)(key, data)


def unionpay_ecb_mac(mak, data):
    """UnionPay POS ECB MAC (API.md): XOR the zero-padded blocks, hex-expand,
    encrypt the first 8 chars, XOR with the last 8, encrypt, first 8 hex chars."""
    if len(data) % 8:
        data += bytes(8 - len(data) % 8)
    r = bytes(8)
    for i in range(0, len(data), 8):
        r = xor(r, data[i : i + 8])
    h = r.hex().upper().encode()
    t = xor(ecb(mak, h[:8]), h[8:])
    return ecb(mak, t).hex().upper()[:8].encode()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--addr", default="127.0.0.1:50051")
    ap.add_argument("--data-dir", default="./poshsm-data", help="its certs/ holds ca.pem, posp.*, admin.*")
    ap.add_argument("--terminal", default="PY" + secrets.token_hex(4).upper(), help="terminal id")
    ap.add_argument("--tmk", help="hex of the terminal's clear TMK (test keys only); default: a new one")
    ap.add_argument("--proto-dir", default=PROTO_DIR)
    args = ap.parse_args()

    common, crypto, crypto_grpc, admin_pb, admin_grpc = load_stubs(args.proto_dir)
    certs = os.path.join(args.data_dir, "certs")
    admin = admin_grpc.KeyAdminStub(channel(args.addr, certs, "admin"))
    posp = crypto_grpc.CryptoStub(channel(args.addr, certs, "posp"))
    tid = args.terminal
    print(f"poshsm at {args.addr}, terminal {tid}")

    st = admin.GetStatus(admin_pb.GetStatusRequest(), timeout=10)
    if not check("module is OK", st.state == "OK", f"{st.state}: {st.reason}"):
        return 1

    # 1. The terminal and its TMK; the network's ZPK. Clear values known here only.
    tmk = odd(bytes.fromhex(args.tmk)) if args.tmk else odd(secrets.token_bytes(16))
    try:
        t = admin.GetTerminal(admin_pb.GetTerminalRequest(terminal_id=tid), timeout=10)
        if not check("existing terminal holds our TMK", t.tmk_kcv == kcv(tmk), f"tmk_kcv {t.tmk_kcv}"):
            return 1
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.NOT_FOUND:
            raise
        parts = components_of(tmk)
        info = admin.ImportKeyComponents(
            admin_pb.ImportKeyComponentsRequest(
                key_type=common.TMK,
                algorithm=common.TDES_2KEY,
                components=parts,
                component_kcvs=[kcv(p) for p in parts],
            ),
            timeout=10,
        )
        check("TMK formed from components (KCV)", info.kcv == kcv(tmk), f"{info.kcv} != {kcv(tmk)}")
        admin.CreateTerminal(
            admin_pb.CreateTerminalRequest(
                terminal_id=tid, merchant_id="898110000000001", tmk=common.KeyRef(key_id=info.key_id)
            ),
            timeout=10,
        )
        print(f"  terminal {tid} created with TMK {info.key_id}")
    zpk = odd(secrets.token_bytes(16))
    zpk_alias = "py-zpk-" + secrets.token_hex(4)
    zinfo = admin.ImportKeyComponents(
        admin_pb.ImportKeyComponentsRequest(
            key_type=common.ZPK, algorithm=common.TDES_2KEY, components=components_of(zpk), alias=zpk_alias
        ),
        timeout=10,
    )
    check("ZPK formed from components (KCV)", zinfo.kcv == kcv(zpk))

    # 2. Sign-in: field 62 under the TMK, UNIONPAY_004 = PIK 16|CV|MAK 8+00*8|CV|TDK 16|CV.
    r = posp.SignIn(crypto.SignInRequest(terminal_id=tid, include_tdk=True), timeout=10)
    f62 = r.field62
    check("field 62 is UNIONPAY_004 (60 bytes)", r.layout == crypto.UNIONPAY_004 and len(f62) == 60)
    pik = ecb(tmk, f62[0:16], decrypt=True)
    mak = ecb(tmk, f62[20:28], decrypt=True)
    tdk = ecb(tmk, f62[40:56], decrypt=True)
    check("PIK check value", ecb(pik, bytes(8))[:4] == f62[16:20])
    check("MAK slot zero-padded", f62[28:36] == bytes(8))
    check("MAK check value", ecb(mak, bytes(8))[:4] == f62[36:40])
    check("TDK check value", ecb(tdk, bytes(8))[:4] == f62[56:60])
    check("WorkingKey.kcv of the PIK", r.pik.kcv == kcv(pik))

    # 3. PIN translation: ISO 0 under the PIK -> ZPK, decoded here with psec.
    pan, pin = "6222020200112233445", "123456"
    block = ecb(pik, psec.pinblock.encode_pinblock_iso_0(pin, pan))
    tr = posp.TranslatePin(
        crypto.TranslatePinRequest(
            terminal_id=tid, dest_key=common.KeyRef(alias=zpk_alias), pin_block=block, pan=pan
        ),
        timeout=10,
    )
    got = psec.pinblock.decode_pinblock_iso_0(ecb(zpk, tr.pin_block, decrypt=True), pan)
    check("translated PIN decodes under the ZPK to the PIN entered", got == pin)
    check("dest_kcv is the ZPK's", tr.dest_kcv == kcv(zpk))

    # 4. MACs: the terminal's request MAC verifies; a corrupted one does not;
    #    the daemon's response MAC matches ours.
    msg = f"0200|{tid}|000001|000000012345|{pan}".encode()
    mac = unionpay_ecb_mac(mak, msg)
    v = posp.VerifyMac(
        crypto.VerifyMacRequest(terminal_id=tid, algorithm=common.UNIONPAY_ECB, message=msg, mac=mac), timeout=10
    )
    check("request MAC verifies", v.valid)
    bad = mac[:-1] + (b"0" if mac[-1:] != b"0" else b"1")
    v = posp.VerifyMac(
        crypto.VerifyMacRequest(terminal_id=tid, algorithm=common.UNIONPAY_ECB, message=msg, mac=bad), timeout=10
    )
    check("corrupted MAC is refused (valid=false)", not v.valid)
    resp = f"0210|{tid}|000001|00".encode()
    g = posp.GenerateMac(
        crypto.GenerateMacRequest(terminal_id=tid, algorithm=common.UNIONPAY_ECB, message=resp), timeout=10
    )
    check("response MAC equals the terminal's own", g.mac == unionpay_ecb_mac(mak, resp), f"{g.mac!r}")

    if failures:
        print(f"MISMATCH: {len(failures)} check(s) failed: {', '.join(failures)}")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except grpc.RpcError as e:
        print(f"RPC failed: {e.code().name}: {e.details()}", file=sys.stderr)
        sys.exit(1)
