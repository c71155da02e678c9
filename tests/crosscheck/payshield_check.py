#!/usr/bin/env python3
"""Independent peer for tests/payshield.rs: the POSP's and the network's side of the
payShield port, computed with psec (knovichikhin/psec).

Reads one JSON request per line on stdin and answers one JSON line per request.
Binary values travel as upper-case hex. Test-only code: throwaway keys and PINs.
"""

import json
import sys
import warnings

warnings.filterwarnings("ignore")

import psec.des
import psec.mac
import psec.pinblock
import psec.tr31

h = bytes.fromhex


def hx(b: bytes) -> str:
    return b.hex().upper()


ENCODE = {
    "01": psec.pinblock.encode_pinblock_iso_0,
    "47": psec.pinblock.encode_pinblock_iso_3,
}
DECODE = {
    "01": psec.pinblock.decode_pinblock_iso_0,
    "47": psec.pinblock.decode_pinblock_iso_3,
}


def handle(req: dict) -> dict:
    op = req["op"]
    if op == "pin_block":
        # The PIN pad: a clear PIN block of `fmt` for the full PAN, under `key`.
        clear = ENCODE[req["fmt"]](req["pin"], req["pan"])
        return {"block": hx(psec.des.encrypt_tdes_ecb(h(req["key"]), clear))}
    if op == "pin":
        # The network: the PIN inside a block under `key`.
        clear = psec.des.decrypt_tdes_ecb(h(req["key"]), h(req["block"]))
        return {"pin": DECODE[req["fmt"]](clear, req["pan"])}
    if op == "mac":
        key, data, padding = h(req["key"]), h(req["data"]), req["padding"]
        if req["alg"] == 3:
            mac = psec.mac.generate_retail_mac(key[:8], key[8:16], data, padding)
        else:
            mac = psec.mac.generate_cbc_mac(key, data, padding)
        return {"mac": hx(mac)}
    if op == "wrap":
        return {"enc": hx(psec.des.encrypt_tdes_ecb(h(req["kek"]), h(req["key"])))}
    if op == "unwrap":
        clear = psec.des.decrypt_tdes_ecb(h(req["kek"]), h(req["enc"]))
        return {"key": hx(clear), "kcv": hx(psec.des.generate_kcv(clear, 8))}
    if op == "tr31_unwrap":
        header, key = psec.tr31.unwrap(h(req["kbpk"]), req["block"])
        return {"key": hx(key), "usage": header.key_usage, "kcv": hx(psec.des.generate_kcv(key, 8))}
    if op == "kcv":
        return {"kcv": hx(psec.des.generate_kcv(h(req["key"]), 8))}
    raise ValueError(f"unknown op {op}")


def main() -> int:
    for line in sys.stdin:
        line = line.strip()
        if line:
            print(json.dumps(handle(json.loads(line))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
