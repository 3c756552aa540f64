#!/usr/bin/env bash
# Runs ON the device machine: a decode mat-vec change against a baseline. bench/gpu/matvec_bound.cu
# (the kernels alone, with the previous lanes as variants), the GPU tests of the candidate, and
# `llorch bench` decode A/B of both synthetic shapes. Stage in DIR (default /tmp/d): ./llorch
# (candidate CLI), ./llorch-base (baseline CLI), ./cuda_kernels ./cuda_parity ./cuda_batch
# (the candidate's test binaries: scripts/device-build.sh), this script. From the repository
# root on the device: mkdir -p /work && ln -sfn $PWD /work/main (the tests find their fixtures
# there); bash DIR/device-matvec.sh (logs to $OUT).
R=$PWD
cd "${DIR:-/tmp/d}" || exit 1
S=$(date +%s); t() { echo "t=$(( $(date +%s) - S ))s"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
./llorch-base synth --preset qwen2-0.5b --seed 1 -o /tmp/q05.gguf >/dev/null 2>&1 &
./llorch-base synth --preset qwen2-7b --seed 1 -o /tmp/q7.gguf >/dev/null 2>&1 &
$NVCC -O3 -std=c++17 -arch=sm_90 -I "$R/kernels" -o /tmp/mvb "$R/bench/gpu/matvec_bound.cu" 2>&1 | grep -v -i "spill\|^$" | head
wait; t
timeout 90 /tmp/mvb 2>&1 | tee "${OUT:-/tmp}/matvec_bound.txt"; t
tg() { timeout 60 "$1" bench -m "/tmp/$2.gguf" --device cuda:0 -p 0 -n 128 -r 3 2>&1 | grep -E "tg128 greedy|rror" | awk -F'|' -v m="$2" -v c="$1" '{print m, c, $7, $8}'; }
for r in 1 2; do for m in q7 q05; do tg ./llorch-base $m; tg ./llorch $m; done; done; t
for b in ./llorch-base ./llorch; do g=$(timeout 30 $b run -m /tmp/q7.gguf --device cuda:0 -p "Once upon a time" -n 64 2>/dev/null | md5sum | cut -c1-12); echo "q7 greedy md5 $b $g"; done
for tst in cuda_kernels cuda_parity cuda_batch; do
  [ -x "./$tst" ] || continue
  echo "== $tst"; timeout 240 "./$tst" --test-threads=1 --nocapture >"${OUT:-/tmp}/$tst.log" 2>&1; echo "rc=$?"
  grep -E "test result|FAILED|panicked|sessions:|tokens equal;" "${OUT:-/tmp}/$tst.log" | head -12; t
done
echo "== ./llorch -p 512 -n 128 -r 3"
for m in q7 q05; do timeout 90 ./llorch bench -m "/tmp/$m.gguf" --device cuda:0 -p 512 -n 128 -r 3 2>&1 | grep -E "^\|.*(pp|tg)|rror"; done; t
