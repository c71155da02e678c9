#!/usr/bin/env bash
# Reproduces every throughput/latency figure of BENCHMARKS.md: builds the
# release binary, starts `poshsm serve --dev` on loopback in a scratch data
# dir, and runs `poshsm bench` RUNS times per figure (default 3); then prints
# the medians. The load generator and the daemon share this machine's cores.
# Usage: benches/run.sh [RUNS] [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
OUT=${2:-$(mktemp -d /tmp/poshsm-bench.XXXXXX)}
mkdir -p "$OUT"
cargo build --release --quiet
BIN=target/release/poshsm
DATA="$OUT/data"
ADDR=127.0.0.1:50071
"$BIN" serve --dev --data-dir "$DATA" --listen "$ADDR" --metrics-listen 127.0.0.1:9171 >"$OUT/serve.out" 2>"$OUT/serve.err" &
DAEMON=$!
trap 'kill $DAEMON 2>/dev/null || true' EXIT
for _ in $(seq 50); do grep -q "listening" "$OUT/serve.out" 2>/dev/null && break; sleep 0.2; done

bench() { "$BIN" bench --addr "$ADDR" --data-dir "$DATA" --json "$@" 2>>"$OUT/bench.err" | grep '^{' ; }

for r in $(seq "$RUNS"); do
  echo "run $r/$RUNS: unary and batch RPCs on the same channels" >&2
  bench --rpc health,translate-pin,verify-mac,generate-mac,translate-pin-batch,verify-mac-batch --interleave 20 \
        --connections 4 --concurrency 64 --duration 10 --warmup 2 --terminals 20000 --cpu-pid "$DAEMON" | sed "s/^/main $r /" >>"$OUT/results.txt"
  echo "run $r/$RUNS: open loop 10,000/s" >&2
  bench --rpc translate-pin --rate 10000 --connections 4 --concurrency 256 --duration 10 --warmup 1 --terminals 2000 --cpu-pid "$DAEMON" | sed "s/^/open $r /" >>"$OUT/results.txt"
  echo "run $r/$RUNS: durable sign-in" >&2
  bench --rpc sign-in --connections 4 --concurrency 128 --duration 10 --warmup 1 --terminals 5000 | sed "s/^/signin $r /" >>"$OUT/results.txt"
  echo "run $r/$RUNS: in-process core and the psec peer" >&2
  # alternate the two peers in 1-second slices so background load hits both alike
  for s in 1 2 3 4 5; do
    "$BIN" bench --rpc inprocess-translate-pin --concurrency 1 --duration 1 --warmup 0 --json 2>>"$OUT/bench.err" | grep '^{' | sed "s/^/slice-inproc $r /" >>"$OUT/results.txt"
    python3 benches/psec_translate.py 1 | sed "s/^/slice-inproc $r /" >>"$OUT/results.txt"
  done
  python3 benches/summarize.py --slices "$OUT/results.txt" "$r" >>"$OUT/results.txt"
  echo "run $r/$RUNS: in-process core through the terminal path, 20,000 terminals" >&2
  "$BIN" bench --rpc inprocess-terminal-pin --terminals 20000 --concurrency 1 --duration 3 --warmup 1 --json 2>>"$OUT/bench.err" | grep '^{' | sed "s/^/terminals $r /" >>"$OUT/results.txt"
  for size in 64 256 1024 8192; do
    echo "run $r/$RUNS: MAC over $size bytes" >&2
    bench --rpc generate-mac,verify-mac --message-size "$size" --connections 4 --concurrency 64 --duration 5 --warmup 1 --terminals 1000 | sed "s/^/mac$size $r /" >>"$OUT/results.txt"
  done
done
python3 benches/summarize.py "$OUT/results.txt"
echo "raw results: $OUT/results.txt" >&2
