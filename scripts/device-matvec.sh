#!/usr/bin/env bash
# Runs ON the device machine: decode mat-vec changes against a baseline, in one call.
# Stage in DIR (default /tmp/d): ./llorch-base (baseline CLI) and one CLI a candidate,
# ./llorch<suffix> (CANDS: the suffixes, default "": ./llorch alone); the GPU test binaries of
# the candidate whose tests run (TESTED, default the last of CANDS) as ./cuda_kernels<suffix>,
# ./cuda_parity<suffix>, ./cuda_batch<suffix> (scripts/device-build.sh builds them);
# src/kernels and src/matvec_bound.cu + src/check.cuh (the candidate's kernels and
# bench/gpu/matvec_bound.cu: the kernels alone, the previous forms as variants); this script.
# From the repository root on the device: mkdir -p /work && ln -sfn $PWD /work/main (the tests
# find their fixtures there); bash DIR/device-matvec.sh (logs to $OUT). Order: what decides a
# merge first (tg128 greedy A/B of both synthetic shapes, two rounds; outputs' md5; the GPU
# tests), then the kernels alone, the bench's own rows and the batched test.
O=${OUT:-/tmp}
cd "${DIR:-/tmp/d}" || exit 1
read -r -a C <<<"${CANDS:-}"; [ ${#C[@]} -eq 0 ] && C=("")
TESTED=${TESTED-${C[-1]}}
S=$(date +%s); t() { echo "t=$(( $(date +%s) - S ))s"; }
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
./llorch-base synth --preset qwen2-0.5b --seed 1 -o /tmp/q05.gguf >/dev/null 2>&1 &
./llorch-base synth --preset qwen2-7b --seed 1 -o /tmp/q7.gguf >/dev/null 2>&1 &
$NVCC -O3 -std=c++17 -arch=sm_90 -I src/kernels -o /tmp/mvb src/matvec_bound.cu 2>&1 | grep -v -i "spill\|^$" | head -5 &
wait; t
tg() { timeout 60 "./llorch$1" bench -m "/tmp/$2.gguf" --device cuda:0 -p 0 -n 128 -r 3 2>&1 | grep -E "tg128 greedy|rror" | awk -F'|' -v m="$2" -v c="llorch$1" '{print m, c, $7, $8}'; }
for r in 1 2; do for m in q7 q05; do for b in -base "${C[@]}"; do tg "$b" $m; done; done; done; t
for b in -base "${C[@]}"; do
  g=$(timeout 30 ./llorch$b run -m /tmp/q7.gguf --device cuda:0 -p "Once upon a time" -n 64 2>/dev/null | md5sum | cut -c1-12)
  echo "q7 greedy md5 llorch$b $g"
done; t
tst() { [ -x "./$1" ] || return; echo "== $1"; timeout $2 "./$1" --test-threads=1 >"$O/$1.log" 2>&1; echo "rc=$?"; grep -E "test result|FAILED|panicked|sessions:|tokens equal;" "$O/$1.log" | head -8; t; }
tst "cuda_kernels$TESTED" 100
tst "cuda_parity$TESTED" 100
timeout 80 /tmp/mvb >"$O/matvec_bound.txt" 2>&1; grep -v "split" "$O/matvec_bound.txt"; t
echo "== -p 512 -n 128 -r 3 (llorch$TESTED)"
for m in q7 q05; do timeout 50 "./llorch$TESTED" bench -m "/tmp/$m.gguf" --device cuda:0 -p 512 -n 128 -r 3 2>&1 | grep -E "^\|.*(pp|tg)|rror"; done; t
tst "cuda_batch$TESTED" 90
echo "== --parallel 1,8,32,128 (llorch$TESTED)"
for m in q05 q7; do timeout 45 "./llorch$TESTED" bench -m "/tmp/$m.gguf" --device cuda:0 --parallel 1,8,32,128 -p 32 -n 64 -r 1 2>&1 | grep -E "^\||rror" | tail -6; done; t
