#!/usr/bin/env bash
# Runs ON the device machine, from the repository copy, with the binaries of
# scripts/device-build.sh unpacked in $1 (default /tmp/d): the checks and figures of a change
# to the batched GPU path, in the order a short call must not miss: batched greedy vs alone,
# CPU-vs-GPU parity, aggregate decode over 1-128 sessions and pp512 / tg128 of both synthetic
# shapes, the kernel tests, the tiny models vs HF, then memcheck over the skinny kernels and a
# parity run. Logs under $OUT; the elapsed time after each part (t=...). QUICK=1: the parity
# tests of the greedy and graph paths and the 0.5B only, no 7B baseline or GEMM-tiles
# variant, no kernel tests or memcheck (a call short of device time); QUICK=2: and no 7B.
d="${1:-/tmp/d}"
log="${OUT:-/tmp}"
repo=$(pwd)
cd "$d" || exit 1
S=$(date +%s)
t() { echo "t=$(( $(date +%s) - S ))s"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
./llorch synth --preset qwen2-0.5b --seed 1 -o /tmp/q05.gguf >/dev/null 2>&1 &
[ "${QUICK:-}" = 2 ] || ./llorch synth --preset qwen2-7b --seed 1 -o /tmp/q7.gguf >/dev/null 2>&1 &
# The fused skinny products (LLORCH_CUDA_SKINNY_FUSED=1, off by default until measured) for
# the checks and the first figures; the default's batched figures after.
export LLORCH_CUDA_SKINNY_FUSED=${FUSED:-1}
echo "== cuda_batch (LLORCH_CUDA_SKINNY_FUSED=$LLORCH_CUDA_SKINNY_FUSED)"
timeout 120 ./cuda_batch --test-threads=1 --nocapture >"$log/batch.log" 2>&1; echo "rc=$?"
grep -E "sessions:|tokens equal;|test result|panicked" "$log/batch.log" | head -12
t
echo "== cuda_parity (LLORCH_CUDA_SKINNY_FUSED=$LLORCH_CUDA_SKINNY_FUSED)"
only=()
[ -n "${QUICK:-}" ] && only=(greedy_ graph_replay out_of_memory parity_qwen2)
timeout 150 ./cuda_parity --test-threads=1 --nocapture "${only[@]}" >"$log/parity.log" 2>&1; echo "rc=$?"
grep -E "logits \(|argmax|test result|panicked" "$log/parity.log" | head -20
t
echo "== engine_tiny gpu"
timeout 60 ./engine_tiny --test-threads=1 gpu >"$log/tiny.log" 2>&1; echo "rc=$?"
grep -E "test result|panicked" "$log/tiny.log"
t
wait
models="q05 q7"
[ "${QUICK:-}" = 2 ] && models=q05
for m in $models; do
  for f in $LLORCH_CUDA_SKINNY_FUSED 0; do
    echo "== $m --parallel (LLORCH_CUDA_SKINNY_FUSED=$f)"
    LLORCH_CUDA_SKINNY_FUSED=$f timeout 100 ./llorch bench -m /tmp/$m.gguf --device cuda:0 \
      --parallel 1,8,32,128 -p 32 -n 64 -r 1 2>&1 | tee "$log/par-$m-f$f.txt" | grep -E "^\| qwen|rror"
  done
  # A baseline CLI (scripts/device-build.sh with LLORCH_BASE_CLI) on the same card, fused off.
  if [ -x ./llorch-base ] && { [ -z "${QUICK:-}" ] || [ $m = q05 ]; }; then
    echo "== $m --parallel, baseline CLI (LLORCH_CUDA_SKINNY_FUSED=0)"
    LLORCH_CUDA_SKINNY_FUSED=0 timeout 100 ./llorch-base bench -m /tmp/$m.gguf --device cuda:0 \
      --parallel 1,8,32,128 -p 32 -n 64 -r 1 2>&1 | tee "$log/par-$m-base.txt" | grep -E "^\| qwen|rror"
  fi
  # Past 32 rows the GEMM tiles instead of the skinny kernel (which reads each weight tile
  # once per 32 inputs from L2): which serves 128 sessions better.
  if [ -z "${QUICK:-}" ]; then
    echo "== $m --parallel 128, LLORCH_CUDA_SKINNY_MAX=32 (FUSED=0)"
    LLORCH_CUDA_SKINNY_FUSED=0 LLORCH_CUDA_SKINNY_MAX=32 timeout 60 ./llorch bench -m /tmp/$m.gguf \
      --device cuda:0 --parallel 128 -p 32 -n 64 -r 1 2>&1 | grep -E "^\| qwen|rror"
  fi
  echo "== $m pp512 / tg128"
  timeout 60 ./llorch bench -m /tmp/$m.gguf --device cuda:0 -p 512 -n 128 -r 3 2>&1 \
    | tee "$log/pp-tg-$m.txt" | grep -E "^\|.*(pp|tg)|rror"
  echo "== $m tg128 with the greedy step ahead (LLORCH_CUDA_LOOKAHEAD=1)"
  LLORCH_CUDA_LOOKAHEAD=1 timeout 60 ./llorch bench -m /tmp/$m.gguf --device cuda:0 -p 0 -n 128 -r 3 \
    2>&1 | grep -E "^\|.*tg|rror"
done
t
[ -n "${QUICK:-}" ] && exit 0
echo "== cuda_kernels"
timeout 120 ./cuda_kernels --test-threads=1 >"$log/kernels.log" 2>&1; echo "rc=$?"
grep -E "^test |test result" "$log/kernels.log" | grep -v " ok$"
t
echo "== memcheck: skinny kernels, smollm parity"
timeout 60 compute-sanitizer --tool memcheck ./cuda_kernels --test-threads=1 skinny >"$log/mc-k.log" 2>&1
grep -E "ERROR SUMMARY|test result" "$log/mc-k.log" | head -3
timeout 90 compute-sanitizer --tool memcheck ./cuda_parity --test-threads=1 parity_smollm >"$log/mc-p.log" 2>&1
grep -E "ERROR SUMMARY|test result" "$log/mc-p.log" | head -3
t
