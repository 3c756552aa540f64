#!/usr/bin/env bash
# Runs ON the device machine (binaries of scripts/device-build.sh in BIN, default /tmp/d):
# where a prompt's time goes, for each staged CLI (./llorch and any ./llorch-* beside it):
# the GPU time of every kernel of `bench -p P -n 0 -r 0` (one prompt of P tokens, then the
# same prompt from the prefix cache in a fresh session) under Nsight Compute, summed per
# kernel name, side by side; then each CLI's wall-clock pp figures. A kernel sum that does not
# move while the pp figure does points at the host (allocations, copies, synchronizations).
# Usage: device-prompt-profile.sh [MODEL.gguf] [P]   (default /tmp/q05.gguf, 512). Logs: $OUT.
cd "${BIN:-/tmp/d}" || exit 1
log="${OUT:-/tmp}"
model="${1:-/tmp/q05.gguf}"
pp="${2:-512}"
[ -f "$model" ] || ./llorch synth --preset qwen2-0.5b --seed 1 -o "$model" >/dev/null
clis=$(ls -d ./llorch ./llorch-* 2>/dev/null)
for cli in $clis; do
  name=$(basename "$cli")
  timeout 200 ncu --clock-control none --csv --print-units base --metrics gpu__time_duration.sum \
    "$cli" bench -m "$model" --device cuda:0 -p "$pp" -n 0 -r 0 >"$log/ncu-pp-$name.csv" 2>"$log/ncu-pp-$name.err" \
    || { echo "ncu failed for $cli:"; tail -3 "$log/ncu-pp-$name.err"; }
done
python3 - "$log" $clis <<'PY'
import csv, sys, os, collections
log, clis = sys.argv[1], [os.path.basename(c) for c in sys.argv[2:]]
sums = {}
for c in clis:
    p = os.path.join(log, f"ncu-pp-{c}.csv")
    if not os.path.exists(p):
        continue
    agg = collections.defaultdict(lambda: [0, 0.0])
    lines = [l for l in open(p) if l.startswith('"')]
    for r in csv.DictReader(lines):
        if r["Metric Name"] != "gpu__time_duration.sum":
            continue
        k = agg[r["Kernel Name"].split("(")[0]]
        k[0] += 1
        k[1] += float(r["Metric Value"].replace(",", "")) / 1e3
    sums[c] = agg
names = sorted({k for a in sums.values() for k in a}, key=lambda k: -max(a.get(k, [0, 0])[1] for a in sums.values()))
print("| kernel | " + " | ".join(f"{c} launches | {c} us" for c in sums) + " |")
print("|---|" + "---|---|" * len(sums))
for k in names:
    cells = []
    for a in sums.values():
        n, us = a.get(k, [0, 0.0])
        cells += [str(n), f"{us:.1f}"]
    print(f"| {k} | " + " | ".join(cells) + " |")
print("| total | " + " | ".join(f"{sum(v[0] for v in a.values())} | {sum(v[1] for v in a.values()):.1f}" for a in sums.values()) + " |")
PY
for cli in $clis; do
  echo "== $cli pp$pp"
  timeout 60 "$cli" bench -m "$model" --device cuda:0 -p "$pp" -n 0 -r 5 2>&1 | grep -E "^\|.*pp|rror"
done
