#!/usr/bin/env bash
# Runs ON the device machine (staged as run-batch-profile.sh): per-kernel GPU times of the
# batched decode steps of 8 sessions, 0.5B and 7B shapes, products as mat-vecs of several
# inputs (LLORCH_CUDA_MMQ=0) and on the tensor cores (=1), under Nsight Compute with graphs off.
# Prompts of one token, so that only the batched steps run the _r8 / mmq / *_batch kernels.
# Also cuda_batch (batched greedy vs alone, 3/8/24/65 sessions) unless BATCH_TEST=0. CONFIGS
# lists model:sessions:LLORCH_CUDA_MMQ triples (default q05:8:0 q05:8:1 q7:8:0 q7:8:1). Logs under $OUT.
# BIN: the folder of the binaries (default: this script's); KREGEX: the kernels to profile.
cd "${BIN:-$(dirname "$0")}"
log="${OUT:-/tmp}"
S=$(date +%s)
t() { echo "t=$(( $(date +%s) - S ))s"; }
# The synthetic models (kept from an earlier script of the same call, e.g. run-mmq.sh).
[ -f /tmp/q05.gguf ] || ./llorch synth --preset qwen2-0.5b --seed 1 -o /tmp/q05.gguf >/dev/null 2>"$log/synth-q05.err" &
a=$!
[ -f /tmp/q7.gguf ] || ./llorch synth --preset qwen2-7b --seed 1 -o /tmp/q7.gguf >/dev/null 2>"$log/synth-q7.err" &
b=$!
if [ "${BATCH_TEST:-1}" != 0 ]; then
  echo "== cuda_batch"
  timeout 100 ./cuda_batch --test-threads=1 --nocapture >"$log/batch.log" 2>&1; echo "rc=$?"
  grep -E "sessions:|tokens equal;|test result|panicked" "$log/batch.log" | head -12
  t
fi
wait $a $b 2>/dev/null
for cfg in ${CONFIGS:-q05:8:0 q05:8:1 q7:8:0 q7:8:1}; do
  IFS=: read -r m par on <<<"$cfg"
  echo "== $m $par sessions, LLORCH_CUDA_MMQ=$on"
  # Only the batched steps' kernels (the one-token prompts run the one-input ones).
  LLORCH_CUDA_MMQ=$on LLORCH_CUDA_GRAPH=0 timeout 150 ncu --clock-control none --csv --print-units base \
    -k "${KREGEX:-regex:gemm|dequant|f32_to_f16|mmq|_r[248]$|_batch|matmul}" \
    --metrics gpu__time_duration.sum,dram__bytes_read.sum \
    ./llorch bench -m /tmp/$m.gguf --device cuda:0 --parallel $par -p 1 -n ${NTOK:-3} -r 1 \
    >"$log/ncu-$m-$par-mmq$on.csv" 2>"$log/ncu-$m-$par-mmq$on.err"; echo "rc=$?"
    python3 - "$log/ncu-$m-$par-mmq$on.csv" <<'PY'
import csv, sys, collections
rows = {}
lines = [l for l in open(sys.argv[1]) if l.startswith('"')]
for r in csv.DictReader(lines):
  k = rows.setdefault(r["ID"], {"name": r["Kernel Name"].split("(")[0], "grid": r["Grid Size"]})
  try:
      k[r["Metric Name"]] = float(r["Metric Value"].replace(",", ""))
  except ValueError:
      pass
agg = collections.OrderedDict()
for k in rows.values():
  a = agg.setdefault((k["name"], k["grid"]), [0, 0.0, 0.0])
  a[0] += 1
  a[1] += k.get("gpu__time_duration.sum", 0)
  a[2] += k.get("dram__bytes_read.sum", 0)
tot = sum(a[1] for a in agg.values())
print(f"{'kernel':<34} {'grid':<16} {'n':>5} {'us/launch':>10} {'GB/s':>8} {'share':>6}")
for (n, g), (c, t, b) in sorted(agg.items(), key=lambda x: -x[1][1])[:22]:
  print(f"{n[:34]:<34} {g:<16} {c:>5} {t / c * 1e-3:>10.2f} {b / t if t else 0:>8.1f} {t / tot * 100:>5.1f}%")
print(f"kernels {sum(a[0] for a in agg.values())}, total {tot * 1e-3:.0f} us")
PY
  t
done
