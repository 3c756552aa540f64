#!/usr/bin/env bash
# Runs ON the device machine: the multirow branch's figures. tg128 of both synthetic shapes
# with a baseline CLI (`llorch-base`, main's, beside the staged binaries if present) and this
# build; aggregate decode at 1-32 sessions with the baseline, and with this build for each
# crossover to the two-pass GEMM in $MRS (LLORCH_CUDA_MULTIROW: the most rows a batched step
# runs as mat-vecs of several rows); then the batch test, the fused-kernel tests and parity.
# Logs under $OUT. Usage (in the unpacked .device folder): ./run-multirow.sh
cd "$(dirname "$0")"
log="${OUT:-/tmp}"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
S=$(date +%s)
./llorch synth --preset qwen2-0.5b --seed 1 -o /tmp/q05.gguf >/dev/null &
./llorch synth --preset qwen2-7b --seed 1 -o /tmp/q7.gguf >/dev/null &
wait
bins=(llorch)
[ -x ./llorch-base ] && bins=(llorch-base llorch)
for m in q05 q7; do
  for b in "${bins[@]}"; do
    echo "== $m tg128 $b"
    timeout 40 ./$b bench -m /tmp/$m.gguf --device cuda:0 -p 512 -n 128 -r 3 2>&1 | grep -E "tg128|rror"
  done
  par=(--device cuda:0 --parallel 1,2,4,8,16,32 -p 32 -n 64 -r 1)
  if [ -x ./llorch-base ]; then
    echo "== $m parallel llorch-base"
    timeout 60 ./llorch-base bench -m /tmp/$m.gguf "${par[@]}" 2>&1 | tee "$log/par-$m-base.txt" | grep -E "^\| qwen|rror"
  fi
  for mr in ${MRS:-1 8 16 32}; do
    echo "== $m parallel llorch LLORCH_CUDA_MULTIROW=$mr"
    LLORCH_CUDA_MULTIROW=$mr timeout 60 ./llorch bench -m /tmp/$m.gguf "${par[@]}" 2>&1 | tee "$log/par-$m-$mr.txt" | grep -E "^\| qwen|rror"
  done
  echo "t=$(( $(date +%s) - S ))s"
done
echo "== cuda_batch"
timeout 90 ./cuda_batch --test-threads=1 --nocapture >"$log/batch.log" 2>&1; echo "rc=$?"
grep -E "sessions:|tokens equal;|test result|panicked" "$log/batch.log" | head -20
echo "== cuda_kernels fused"
timeout 40 ./cuda_kernels --test-threads=1 fused >"$log/kernels.log" 2>&1; echo "rc=$?"
grep -E "test result|panicked" "$log/kernels.log" | head
if [ -z "$QUICK" ]; then
  echo "== cuda_parity"
  timeout 90 ./cuda_parity --test-threads=1 >"$log/parity.log" 2>&1; echo "rc=$?"
  grep -E "test result|panicked" "$log/parity.log" | head
fi
echo "t=$(( $(date +%s) - S ))s"
