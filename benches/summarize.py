#!/usr/bin/env python3
"""Medians (and per-run values) of benches/run.sh results, as Markdown tables,
with each RPC's ratio to the health check measured in the same run."""
import json
import statistics
import sys
from collections import defaultdict

if sys.argv[1] == "--slices":
    # Averages the 1-second slices of one run into one "inproc" record per peer.
    path, run = sys.argv[2], sys.argv[3]
    acc = defaultdict(list)
    for line in open(path):
        g, rr, payload = line.split(" ", 2)
        if g == "slice-inproc" and rr == run:
            rec = json.loads(payload)
            acc[rec["rpc"]].append(rec["rps"])
    for rpc, v in acc.items():
        print(f"inproc {run} " + json.dumps({"rpc": rpc, "rps": statistics.mean(v), "errors": 0}))
    sys.exit(0)

rows = defaultdict(list)  # (group, rpc) -> [record per run]
runs = defaultdict(dict)  # (group, run) -> {rpc: record}
for line in open(sys.argv[1]):
    group, run, payload = line.split(" ", 2)
    if group.startswith("slice-"):
        continue
    rec = json.loads(payload)
    rows[(group, rec["rpc"])].append(rec)
    runs[(group, run)][rec["rpc"]] = rec

def med(key, group, rpc):
    vals = [r[key] for r in rows[(group, rpc)] if key in r]
    return statistics.median(vals) if vals else None

print("| group | rpc | runs | rps (median) | rps per run | p50 µs | p99 µs | p99.9 µs | errors |")
print("|---|---|---|---|---|---|---|---|---|")
for (group, rpc), recs in sorted(rows.items()):
    per = ", ".join(f"{r['rps']:.0f}" for r in recs)
    p50, p99, p999 = (med(k, group, rpc) for k in ("p50_us", "p99_us", "p999_us"))
    if group == "inproc":
        p50 = p99 = p999 = None
    errs = sum(r.get("errors", 0) for r in recs)
    fmt = lambda v: "-" if v is None else f"{v:.0f}"
    print(f"| {group} | {rpc} | {len(recs)} | {recs and statistics.median(r['rps'] for r in recs):.0f} | {per} | {fmt(p50)} | {fmt(p99)} | {fmt(p999)} | {errs} |")

print()
print("Ratios measured in the same run (median over runs):")
for base_group, base, others in (("main", "health", ["translate-pin", "verify-mac", "generate-mac"]), ("inproc", "psec-translate-pin", ["inprocess-translate-pin"])):
    for o in others:
        ratios = [r[o]["rps"] / r[base]["rps"] for (g, _), r in runs.items() if g == base_group and o in r and base in r]
        if ratios:
            print(f"- {o} / {base}: {statistics.median(ratios):.3f} (runs: {', '.join(f'{x:.3f}' for x in ratios)})")
for (g, _), r in sorted(runs.items()):
    if g == "open" and "translate-pin" in r:
        x = r["translate-pin"]
        busy = f", machine {x['host_busy_pct']:.0f} % busy (steal {x['host_steal_pct']:.1f} %)" if "host_busy_pct" in x else ""
        print(f"- open loop {x['rps']:.0f}/s: p99 {x['p99_us']} µs from schedule, p99 {x.get('p99_service_us')} µs from send{busy}")
cpu = [(k, recs) for k, recs in sorted(rows.items()) if any("daemon_cpu_us" in r for r in recs)]
if cpu:
    print()
    print("CPU per unit of work (µs, user + system, over the measured slices; median over runs, then per run):")
    for (group, rpc), recs in cpu:
        d = [r["daemon_cpu_us"] for r in recs if "daemon_cpu_us" in r]
        g = [r["generator_cpu_us"] for r in recs if "generator_cpu_us" in r]
        print(f"- {group} {rpc}: daemon {statistics.median(d):.2f} ({', '.join(f'{x:.2f}' for x in d)}), "
              f"generator {statistics.median(g):.2f} ({', '.join(f'{x:.2f}' for x in g)})")
