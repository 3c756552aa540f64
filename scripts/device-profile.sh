#!/usr/bin/env bash
# Runs ON the device machine (staged as .device/run-profile.sh): per-kernel times of decode
# steps of the synthetic 0.5B and 7B shapes under Nsight Compute (graphs off, so each launch
# is profiled on its own), summarized per kernel and grid. Usage: run-profile.sh [presets...]
# BIN: the folder of the binaries (default: this script's).
cd "${BIN:-$(dirname "$0")}"
log="${OUT:-/tmp}"
presets="${*:-qwen2-0.5b qwen2-7b}"
# The card's DRAM bandwidth (GB/s, the data sheets' figures) for each kernel's share of it.
card=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
case "$card" in
  *H200*) peak=4800 ;;
  *H100*HBM3*) peak=3350 ;;
  *) peak=0 ;;
esac
echo "card: $card, peak ${peak} GB/s"
for p in $presets; do
  [ -f "/tmp/$p.gguf" ] || ./llorch synth --preset "$p" --seed 1 -o "/tmp/$p.gguf" >/dev/null
  echo "== $p: decode kernels (ncu: the bench's decode steps, graphs off)"
  LLORCH_CUDA_GRAPH=0 timeout 300 ncu --clock-control none --csv --print-units base \
    --metrics gpu__time_duration.sum,dram__bytes_read.sum,launch__registers_per_thread \
    ./llorch bench -m "/tmp/$p.gguf" --device cuda:0 -p 0 -n 1 -r 1 >"$log/ncu-$p.csv" 2>"$log/ncu-$p.err"
  python3 - "$log/ncu-$p.csv" "$peak" <<'PY'
import csv, sys, collections
peak = float(sys.argv[2])
rows = {}
lines = [l for l in open(sys.argv[1]) if l.startswith('"')]
for r in csv.DictReader(lines):
    k = rows.setdefault(r["ID"], {"name": r["Kernel Name"].split("(")[0], "grid": r["Grid Size"], "block": r["Block Size"]})
    v = r["Metric Value"].replace(",", "")
    try:
        k[r["Metric Name"]] = float(v)
    except ValueError:
        pass
agg = collections.OrderedDict()
# Decode steps profiled: one embedding lookup each. The f16 weight copies are made at load
# (dequant_f16_*): not a step's.
tokens = sum(1 for k in rows.values() if k["name"].startswith("embed"))
for k in rows.values():
    if k["name"].startswith("dequant_f16"):
        continue
    key = (k["name"], k["grid"])
    a = agg.setdefault(key, [0, 0.0, 0.0, k.get("launch__registers_per_thread", 0)])
    a[0] += 1
    a[1] += k.get("gpu__time_duration.sum", 0)
    a[2] += k.get("dram__bytes_read.sum", 0)
tot = sum(a[1] for a in agg.values())
print(f"| kernel | grid | per token | us/launch | us/token | MB/launch | GB/s | of peak | share |")
print("|---|---|---|---|---|---|---|---|---|")
for (n, g), (c, t, b, reg) in sorted(agg.items(), key=lambda x: -x[1][1]):
    unit = 1e-3  # ncu reports ns (gpu__time_duration in nsecond)
    us = t / c * unit
    gbs = b / t if t else 0
    ofp = f"{gbs / peak * 100:.1f}%" if peak else "-"
    print(f"| {n} | {g.replace(' ', '')} | {c / tokens:g} | {us:.2f} | {t * unit / tokens:.1f} | "
          f"{b / c / 1e6:.2f} | {gbs:.0f} | {ofp} | {t / tot * 100:.1f}% |")
byt = sum(a[2] for a in agg.values())
print(f"\n{tokens} decode steps; kernel time per token {tot * 1e-3 / tokens:.1f} us (each kernel alone, "
      f"caches flushed, no overlap); {byt / tokens / 1e6:.1f} MB read a token; all kernels "
      f"{byt / tot:.0f} GB/s")
PY
done
