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
  echo "== $p: decode kernels (ncu, 2 tokens at positions 0 and 1)"
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
for k in rows.values():
    key = (k["name"], k["grid"])
    a = agg.setdefault(key, [0, 0.0, 0.0, k.get("launch__registers_per_thread", 0)])
    a[0] += 1
    a[1] += k.get("gpu__time_duration.sum", 0)
    a[2] += k.get("dram__bytes_read.sum", 0)
tot = sum(a[1] for a in agg.values())
print(f"{'kernel':<20} {'grid':<16} {'n':>4} {'us/launch':>10} {'GB/s':>8} {'of peak':>7} {'share':>6}")
for (n, g), (c, t, b, reg) in sorted(agg.items(), key=lambda x: -x[1][1]):
    unit = 1e-3  # ncu reports ns (gpu__time_duration in nsecond)
    us = t / c * unit
    gbs = b / t if t else 0
    ofp = f"{gbs / peak * 100:>6.1f}%" if peak else "      -"
    print(f"{n:<20} {g:<16} {c:>4} {us:>10.2f} {gbs:>8.1f} {ofp} {t / tot * 100:>5.1f}%")
byt = sum(a[2] for a in agg.values())
print(f"total kernel time per token: {tot * 1e-3 / 2:.1f} us (2 tokens); all kernels {byt / tot:.1f} GB/s")
PY
done
