#!/usr/bin/env python3
"""Cross-check oracle for keyblocks: wraps and unwraps TR-31 key blocks with psec.

Reads one JSON object per line on stdin and answers one tab-separated line per
request on stdout (flushed after each), so a single process serves a whole test run.
Answers are TSV rather than JSON so the Rust side needs no JSON parser; every field
is printable ASCII, which never contains a tab or a newline.

  {"op": "wrap", "kbpk": HEX, "header": TEMPLATE, "key": HEX, "masked_key_len": N|null}
      -> ok<TAB>BLOCK
  {"op": "unwrap", "kbpk": HEX, "block": STR}
      -> ok<TAB>KEYHEX<TAB>VERSION<TAB>USAGE<TAB>ALG<TAB>MODE<TAB>VERSION_NUM
           <TAB>EXPORTABILITY<TAB>RESERVED[<TAB>ID=DATA ...]   (PB not listed)
  any failure -> error<TAB>MESSAGE

`--probe` exits 0 when psec is importable and 3 otherwise. Test keys only: this
script exists for the test suite and never sees a production key.
"""
import json
import sys
import warnings

warnings.simplefilter("ignore")


def _import_psec():
    # cryptography moved TripleDES to the "decrepit" module; older psec releases
    # still look for it in the primitives module.
    try:
        from cryptography.hazmat.primitives.ciphers import algorithms

        if not hasattr(algorithms, "TripleDES"):
            from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES

            algorithms.TripleDES = TripleDES
    except Exception:  # pragma: no cover - psec import below reports the real problem
        pass
    from psec import tr31  # noqa: E402

    return tr31


def main() -> int:
    try:
        tr31 = _import_psec()
    except Exception as exc:  # psec or cryptography missing
        if "--probe" in sys.argv:
            print(f"psec not importable: {exc}", file=sys.stderr)
            return 3
        raise
    if "--probe" in sys.argv:
        return 0

    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            req = json.loads(line)
            kbpk = bytes.fromhex(req["kbpk"])
            if req["op"] == "wrap":
                block = tr31.wrap(
                    kbpk,
                    req["header"],
                    bytes.fromhex(req["key"]),
                    req.get("masked_key_len"),
                )
                fields = ["ok", block]
            elif req["op"] == "unwrap":
                header, key = tr31.unwrap(kbpk, req["block"])
                fields = [
                    "ok",
                    key.hex().upper(),
                    header.version_id,
                    header.key_usage,
                    header.algorithm,
                    header.mode_of_use,
                    header.version_num,
                    header.exportability,
                    header.reserved,
                ] + [f"{i}={d}" for i, d in header.blocks.items()]
            else:
                fields = ["error", f"unknown op {req['op']!r}"]
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            fields = ["error", " ".join(message.split())]
        sys.stdout.write("\t".join(fields) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
