#!/usr/bin/env bash
# Key-store scaling for BENCHMARKS.md: for each N, a fresh data dir is filled
# offline with N signed-in terminals (`poshsm populate`), then the daemon is
# started and durable sign-in is measured RUNS times (fresh fixture terminals
# on top of the N), with the daemon's resident memory and the store's size.
# Usage: benches/keystore.sh "1000 10000 100000 1000000" [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${1:-"1000 10000 100000"}
RUNS=${2:-3}
cargo build --release --quiet
BIN=target/release/poshsm
ADDR=127.0.0.1:50081
echo "| terminals | populate s | sign-in/s per run | sign-in/s median | p99 µs median | daemon RSS MiB (idle → after) | store MiB |"
echo "|---|---|---|---|---|---|---|"
for N in $SIZES; do
  D=$(mktemp -d /tmp/poshsm-ks.XXXXXX)
  # first start creates the sealed dev LMK and certificates
  "$BIN" serve --dev --data-dir "$D" --listen "$ADDR" >"$D/s0.out" 2>/dev/null & P=$!
  for _ in $(seq 50); do grep -q listening "$D/s0.out" 2>/dev/null && break; sleep 0.2; done
  kill $P; wait $P 2>/dev/null || true
  t0=$(date +%s.%N)
  "$BIN" populate --data-dir "$D" --dev --terminals "$N" >/dev/null 2>"$D/populate.err"
  t1=$(date +%s.%N)
  "$BIN" serve --dev --data-dir "$D" --listen "$ADDR" >"$D/s1.out" 2>/dev/null & P=$!
  # the self-test unwraps every stored key: ~150 s at 1M terminals
  for _ in $(seq 3000); do grep -q listening "$D/s1.out" 2>/dev/null && break; sleep 0.2; done
  rss0=$(awk '/VmRSS/ {print int($2/1024)}' /proc/$P/status)
  rates=(); p99s=()
  for r in $(seq "$RUNS"); do
    line=$("$BIN" bench --addr "$ADDR" --data-dir "$D" --rpc sign-in --connections 4 --concurrency 128 \
           --duration 10 --warmup 1 --terminals 2000 --json 2>/dev/null | grep '^{')
    rates+=("$(python3 -c "import json,sys; print(round(json.loads(sys.argv[1])['rps']))" "$line")")
    p99s+=("$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['p99_us'])" "$line")")
  done
  rss1=$(awk '/VmRSS/ {print int($2/1024)}' /proc/$P/status)
  kill $P; wait $P 2>/dev/null || true
  store=$(du -sm "$D/db" | cut -f1)
  med() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
  printf '| %s | %.0f | %s | %s | %s | %s → %s | %s |\n' "$N" "$(echo "$t1 - $t0" | bc)" "${rates[*]}" "$(med "${rates[@]}")" "$(med "${p99s[@]}")" "$rss0" "$rss1" "$store"
  rm -rf "$D"
done
