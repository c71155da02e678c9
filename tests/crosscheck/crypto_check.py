#!/usr/bin/env python3
"""Independent oracle for tests/crypto_crosscheck.rs.

Reads one JSON request per line on stdin and answers one JSON line per request on stdout,
computing with psec (knovichikhin/psec: PIN blocks, CBC/retail MACs, KCV) and Python
`cryptography` (raw TDES/AES/SM4 ECB and CBC, CMAC). The UnionPay ECB MAC and the SM4
zero-padded PIN block are built here from raw ECB, following VECTORS.md §2.1/§2.2/§3.
All binary values travel as upper-case hex.

The first line written is {"ready": ...} or, if a module is missing, {"skipped": reason}.
Test-only code: it handles throwaway random keys and PINs.
"""

import json
import sys
import warnings

warnings.filterwarnings("ignore")


def main() -> int:
    try:
        import cryptography
        import psec
        import psec.des
        import psec.mac
        import psec.pinblock
        from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
        from cryptography.hazmat.primitives import cmac as cmac_mod
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    except Exception as exc:  # noqa: BLE001 - any import failure means "skip"
        print(json.dumps({"skipped": f"python module not importable: {exc}"}), flush=True)
        return 0

    h = bytes.fromhex

    def hx(b: bytes) -> str:
        return b.hex().upper()

    def xor(a: bytes, b: bytes) -> bytes:
        return bytes(x ^ y for x, y in zip(a, b))

    def algo(alg: str, key: bytes):
        if alg in ("DES", "TDES2", "TDES3"):
            # Expand to a 24-byte EDE key: K -> KKK, K1K2 -> K1K2K1.
            if len(key) == 8:
                key = key * 3
            elif len(key) == 16:
                key = key + key[:8]
            return TripleDES(key), 8
        if alg.startswith("AES"):
            return algorithms.AES(key), 16
        if alg == "SM4":
            return algorithms.SM4(key), 16
        raise ValueError(f"unknown algorithm {alg}")

    def ecb(alg: str, key: bytes, data: bytes, decrypt: bool = False) -> bytes:
        a, _ = algo(alg, key)
        c = Cipher(a, modes.ECB())
        op = c.decryptor() if decrypt else c.encryptor()
        return op.update(data) + op.finalize()

    def cbc(alg: str, key: bytes, iv: bytes, data: bytes) -> bytes:
        a, _ = algo(alg, key)
        op = Cipher(a, modes.CBC(iv)).encryptor()
        return op.update(data) + op.finalize()

    block_lens = {"DES": 8, "TDES2": 8, "TDES3": 8, "AES128": 16, "AES192": 16, "AES256": 16, "SM4": 16}

    def block_len(alg: str) -> int:
        return block_lens[alg]

    pad = {1: psec.mac.pad_iso_1, 2: psec.mac.pad_iso_2, 3: psec.mac.pad_iso_3}

    def handle(req: dict) -> dict:
        op = req["op"]
        if op == "ecb":
            return {"enc": hx(ecb(req["alg"], h(req["key"]), h(req["data"])))}
        if op == "cbc":
            return {"enc": hx(cbc(req["alg"], h(req["key"]), h(req["iv"]), h(req["data"])))}
        if op == "cmac":
            a, _ = algo(req["alg"], h(req["key"]))
            c = cmac_mod.CMAC(a)
            c.update(h(req["data"]))
            return {"mac": hx(c.finalize())}
        if op == "kcv":
            alg, key = req["alg"], h(req["key"])
            if alg in ("DES", "TDES2", "TDES3"):
                return {"kcv": hx(psec.des.generate_kcv(key, 8))}
            if alg == "SM4":
                return {"kcv": hx(ecb(alg, key, b"\x00" * 16))}
            c = cmac_mod.CMAC(algorithms.AES(key))
            c.update(b"\x00" * 16)
            return {"kcv": hx(c.finalize())}
        if op == "iso0":
            pin, pan = req["pin"], req["pan"]
            return {
                "block": hx(psec.pinblock.encode_pinblock_iso_0(pin, pan)),
                "decoded_ours": psec.pinblock.decode_pinblock_iso_0(h(req["ours"]), pan),
            }
        if op == "iso3":
            pin, pan = req["pin"], req["pan"]
            return {
                "block": hx(psec.pinblock.encode_pinblock_iso_3(pin, pan)),
                "decoded_ours": psec.pinblock.decode_pinblock_iso_3(h(req["ours"]), pan),
            }
        if op == "iso4":
            key, pin, pan = h(req["key"]), req["pin"], req["pan"]
            return {
                "block": hx(psec.pinblock.encipher_pinblock_iso_4(key, pin, pan)),
                "decoded_ours": psec.pinblock.decipher_pinblock_iso_4(key, h(req["ours"]), pan),
            }
        if op == "pin_enc":
            # ISO 0/3 block, zero-padded to the cipher block (the UnionPay SM4 form), ECB.
            alg, key, pin, pan = req["alg"], h(req["key"]), req["pin"], req["pan"]
            bl = block_len(alg)
            enc = psec.pinblock.encode_pinblock_iso_0 if req["format"] == "iso0" else psec.pinblock.encode_pinblock_iso_3
            dec = psec.pinblock.decode_pinblock_iso_0 if req["format"] == "iso0" else psec.pinblock.decode_pinblock_iso_3
            mine = ecb(alg, key, enc(pin, pan).ljust(bl, b"\x00"))
            clear = ecb(alg, key, h(req["ours"]), decrypt=True)
            if clear[8:] != b"\x00" * (bl - 8):
                raise ValueError("non-zero padding in our block")
            return {"block": hx(mine), "decoded_ours": dec(clear[:8], pan)}
        if op == "cbc_mac":
            alg, key, data, padding = req["alg"], h(req["key"]), h(req["data"]), req["padding"]
            if alg in ("DES", "TDES2", "TDES3"):
                return {"mac": hx(psec.mac.generate_cbc_mac(key, data, padding))}
            if alg.startswith("AES"):
                return {"mac": hx(psec.mac.generate_cbc_mac(key, data, padding, algorithm=psec.mac.Algorithm.AES))}
            padded = pad[padding](data, 16)
            return {"mac": hx(cbc(alg, key, b"\x00" * 16, padded)[-16:])}
        if op == "retail_mac":
            key, data, padding = h(req["key"]), h(req["data"]), req["padding"]
            if len(key) == 16:
                return {"mac": hx(psec.mac.generate_retail_mac(key[:8], key[8:], data, padding))}
            # 3-key variant: DES-CBC under K1, final block through TDES EDE (K1, K2, K3).
            padded = pad[padding](data, 8)
            chained = cbc("DES", key[:8], b"\x00" * 8, padded)
            prev = chained[-16:-8] if len(chained) >= 16 else b"\x00" * 8
            return {"mac": hx(ecb("TDES3", key, xor(padded[-8:], prev)))}
        if op == "unionpay_ecb":
            alg, key, data = req["alg"], h(req["key"]), h(req["data"])
            bl = block_len(alg)
            data = data + b"\x00" * (-len(data) % bl)
            r = b"\x00" * bl
            for i in range(0, len(data), bl):
                r = xor(r, data[i : i + bl])
            hr = hx(r).encode()
            t = xor(ecb(alg, key, hr[:bl]), hr[bl:])
            o = ecb(alg, key, t)
            mac = hx(o)[:8] if bl == 8 else hx(o[:8])
            return {"mac": hx(mac.encode())}
        raise ValueError(f"unknown op {op}")

    print(
        json.dumps(
            {
                "ready": True,
                "cryptography": cryptography.__version__,
                "psec": getattr(psec, "__version__", "unknown"),
            }
        ),
        flush=True,
    )
    out = sys.stdout
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        req = json.loads(line)
        try:
            res = handle(req)
        except Exception as exc:  # noqa: BLE001 - reported back to the Rust side
            res = {"error": f"{type(exc).__name__}: {exc}"}
        res["id"] = req.get("id")
        out.write(json.dumps(res) + "\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
