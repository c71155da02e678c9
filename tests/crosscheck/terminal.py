#!/usr/bin/env python3
"""The terminal (PIN pad) side of a POS business day, computed independently of
poshsm with psec and pyca/cryptography. One JSON request per stdin line, one JSON
answer per stdout line. Keys and data are upper-case hex."""
import json
import sys

import psec
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


def tdes_or_des(key):
    # cryptography's TripleDES accepts 8 (single DES as K,K,K), 16 or 24 bytes
    return TripleDES(key)


def ecb(key, data, encrypt=True, alg="TDES"):
    algo = algorithms.SM4(key) if alg == "SM4" else (algorithms.AES(key) if alg == "AES" else tdes_or_des(key))
    c = Cipher(algo, modes.ECB())
    ctx = c.encryptor() if encrypt else c.decryptor()
    return ctx.update(data) + ctx.finalize()


def unionpay_ecb_mac(key, data, alg="TDES"):
    """UnionPay POS ECB MAC as written in API.md / VECTORS.md 2.1 (2.2 for 16-byte blocks)."""
    bs = 16 if alg in ("SM4", "AES") else 8
    if len(data) % bs:
        data = data + b"\x00" * (bs - len(data) % bs)
    r = bytes(bs)
    for i in range(0, len(data), bs):
        r = bytes(a ^ b for a, b in zip(r, data[i:i + bs]))
    h = r.hex().upper().encode()
    t = ecb(key, h[:bs], alg=alg)
    t = bytes(a ^ b for a, b in zip(t, h[bs:]))
    o = ecb(key, t, alg=alg)
    if bs == 8:
        return o.hex().upper()[:8].encode()
    return o[:8].hex().upper().encode()


def handle(req):
    op = req["op"]
    if op == "field62":
        tmk = bytes.fromhex(req["tmk"])
        f62 = bytes.fromhex(req["field62"])
        layout = req["layout"]
        cv = req.get("cv_len", 4)
        alg = req.get("alg", "TDES")
        out = {}
        pos = 0
        if layout == "UNIONPAY_001":
            slots = [("pik", 8, 8), ("mak", 8, 8)]
        elif layout in ("UNIONPAY_003", "UNIONPAY_004"):
            slots = [("pik", 16, 16), ("mak", 8, 16)]
            if layout == "UNIONPAY_004":
                slots.append(("tdk", 16, 16))
        else:
            slots = [("pik", 16, 16), ("mak", 16, 16)]
            if req.get("tdk"):
                slots.append(("tdk", 16, 16))
        ok = True
        for name, klen, slot in slots:
            ct = f62[pos:pos + klen]
            if slot > klen and f62[pos + klen:pos + slot] != bytes(slot - klen):
                ok = False
            pos += slot
            key = ecb(tmk, ct, encrypt=False, alg=alg)
            check = f62[pos:pos + cv]
            pos += cv
            zeros = bytes(16 if alg in ("SM4", "AES") else 8)
            if ecb(key, zeros, alg=alg)[:cv] != check:
                ok = False
            out[name] = key.hex().upper()
        out["cv_ok"] = ok and pos == len(f62)
        return out
    if op == "encipher_iso0":
        key = bytes.fromhex(req["key"])
        clear = psec.pinblock.encode_pinblock_iso_0(req["pin"], req["pan"])
        alg = req.get("alg", "TDES")
        if alg in ("SM4", "AES"):
            clear = clear + bytes(8)  # UnionPay SM4 form: zero-padded to 16 bytes
        return {"block": ecb(key, clear, alg=alg).hex().upper()}
    if op == "decipher_iso0":
        key = bytes.fromhex(req["key"])
        alg = req.get("alg", "TDES")
        clear = ecb(key, bytes.fromhex(req["block"]), encrypt=False, alg=alg)
        if alg in ("SM4", "AES"):
            if clear[8:] != bytes(8):
                return {"pin": None}
            clear = clear[:8]
        try:
            return {"pin": psec.pinblock.decode_pinblock_iso_0(clear, req["pan"])}
        except Exception as e:  # noqa: BLE001 - report, the Rust side asserts
            return {"pin": None, "error": str(e)}
    if op == "x919":
        key = bytes.fromhex(req["key"])
        mac = psec.mac.generate_retail_mac(key[:8], key[8:16], bytes.fromhex(req["data"]), 1)
        return {"mac": mac.hex().upper()}
    if op == "unionpay_ecb":
        key = bytes.fromhex(req["key"])
        return {"mac": unionpay_ecb_mac(key, bytes.fromhex(req["data"]), req.get("alg", "TDES")).hex().upper()}
    if op == "ecb":
        key = bytes.fromhex(req["key"])
        return {"data": ecb(key, bytes.fromhex(req["data"]), req.get("encrypt", True), req.get("alg", "TDES")).hex().upper()}
    if op == "cmac":
        from cryptography.hazmat.primitives import cmac as _cmac
        key = bytes.fromhex(req["key"])
        alg = req.get("alg", "TDES")
        algo = algorithms.SM4(key) if alg == "SM4" else (algorithms.AES(key) if alg == "AES" else tdes_or_des(key))
        c = _cmac.CMAC(algo)
        c.update(bytes.fromhex(req["data"]))
        return {"mac": c.finalize().hex().upper()}
    if op == "cbc_mac":
        # ISO 9797-1 MAC algorithm 1, padding method 1 (zeros only if needed; empty -> one block), IV 0
        key = bytes.fromhex(req["key"])
        alg = req.get("alg", "TDES")
        bs = 16 if alg in ("SM4", "AES") else 8
        data = bytes.fromhex(req["data"])
        if len(data) == 0 or len(data) % bs:
            data += bytes(bs - len(data) % bs if len(data) % bs else bs)
        algo = algorithms.SM4(key) if alg == "SM4" else (algorithms.AES(key) if alg == "AES" else tdes_or_des(key))
        enc = Cipher(algo, modes.CBC(bytes(bs))).encryptor()
        out = enc.update(data) + enc.finalize()
        return {"mac": out[-bs:].hex().upper()}
    if op == "decipher_iso4":
        # ISO 9564-1:2017 format 4, written from the standard: block = E(E(P) xor A)
        key = bytes.fromhex(req["key"])
        alg = req.get("alg", "AES")
        pan = req["pan"]
        t = ecb(key, bytes.fromhex(req["block"]), encrypt=False, alg=alg)
        m = len(pan) - 12
        a_nibbles = "%X" % m + pan + "0" * (32 - 1 - len(pan))
        a = bytes.fromhex(a_nibbles)
        p = ecb(key, bytes(x ^ y for x, y in zip(t, a)), encrypt=False, alg=alg)
        h = p.hex().upper()
        if h[0] != "4":
            return {"pin": None}
        n = int(h[1], 16)
        if not 4 <= n <= 12 or any(c != "A" for c in h[2 + n:16]):
            return {"pin": None}
        return {"pin": h[2:2 + n]}
    if op == "cbc":
        key = bytes.fromhex(req["key"])
        alg = req.get("alg", "TDES")
        algo = algorithms.SM4(key) if alg == "SM4" else (algorithms.AES(key) if alg == "AES" else tdes_or_des(key))
        c = Cipher(algo, modes.CBC(bytes.fromhex(req["iv"])))
        ctx = c.encryptor() if req.get("encrypt", True) else c.decryptor()
        return {"data": (ctx.update(bytes.fromhex(req["data"])) + ctx.finalize()).hex().upper()}
    if op == "kcv":
        key = bytes.fromhex(req["key"])
        alg = req.get("alg", "TDES")
        zeros = bytes(16 if alg in ("SM4", "AES") else 8)
        return {"kcv": ecb(key, zeros, alg=alg).hex().upper()}
    raise ValueError("unknown op " + op)


for line in sys.stdin:
    line = line.strip()
    if line:
        print(json.dumps(handle(json.loads(line))), flush=True)
