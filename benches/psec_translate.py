#!/usr/bin/env python3
"""psec's in-process PIN translation core, the Python peer of
`poshsm bench --rpc inprocess-translate-pin`: decrypt an ISO 0 block under a
TDES PIK, decode, re-encode, encrypt under a TDES ZPK (psec over OpenSSL via
pyca/cryptography). Prints one JSON line: {"rpc": "psec-translate-pin", "rps": …}."""
import json
import sys
import time
import warnings

warnings.filterwarnings("ignore")
import psec  # noqa: E402

seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
pik = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
zpk = bytes.fromhex("89ABCDEF0123456776543210FEDCBA98")
pan = "6222020200112233445"
block = psec.des.encrypt_tdes_ecb(pik, psec.pinblock.encode_pinblock_iso_0("123456", pan))

def translate():
    clear = psec.des.decrypt_tdes_ecb(pik, block)
    pin = psec.pinblock.decode_pinblock_iso_0(clear, pan)
    return psec.des.encrypt_tdes_ecb(zpk, psec.pinblock.encode_pinblock_iso_0(pin, pan))

# the peer must be correct before it is timed
assert psec.pinblock.decode_pinblock_iso_0(psec.des.decrypt_tdes_ecb(zpk, translate()), pan) == "123456"
end = time.perf_counter() + 1.0
while time.perf_counter() < end:
    translate()
n = 0
t0 = time.perf_counter()
end = t0 + seconds
while True:
    for _ in range(256):
        translate()
    n += 256
    if time.perf_counter() >= end:
        break
print(json.dumps({"rpc": "psec-translate-pin", "rps": n / (time.perf_counter() - t0)}))
