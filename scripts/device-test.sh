#!/usr/bin/env bash
# Runs ON the device machine (staged as .device/run-gpu-tests.sh by scripts/device-build.sh):
# kernel tests, CPU-vs-GPU parity and OOM tests, batched-vs-alone greedy tokens, the tiny
# models against HF, a decode/prefill and a batched-decode benchmark of synthetic models, then
# memcheck over the kernel tests and the smaller parity test (QUICK=1: over the fused decode
# and skinny kernels only, and no CPU bench). Logs go to $OUT.
cd "$(dirname "$0")"
log="${OUT:-/tmp}"
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv,noheader
rc=0
echo "== cuda_kernels"
timeout 120 ./cuda_kernels --test-threads=1 >"$log/kernels.log" 2>&1 || rc=1
grep -E "^test |test result" "$log/kernels.log" | grep -v " ok$"
echo "== cuda_parity"
timeout 240 ./cuda_parity --test-threads=1 --nocapture >"$log/parity.log" 2>&1 || rc=1
grep -vE "^\s+[0-9]+: |^\s+at " "$log/parity.log"
echo "== cuda_batch (batched greedy vs alone)"
timeout 120 ./cuda_batch --test-threads=1 --nocapture >"$log/batch.log" 2>&1 || rc=1
grep -E "sessions:|tokens equal;|test result|panicked" "$log/batch.log" | head -12
echo "== engine_tiny gpu (tiny models vs HF, stage by stage)"
timeout 90 ./engine_tiny --test-threads=1 gpu >"$log/engine-tiny-gpu.log" 2>&1 || rc=1
grep -E "^test |test result|panicked" "$log/engine-tiny-gpu.log" | head -12
echo "== bench (synthetic models, GPU)"
for p in qwen2-0.5b smollm2-135m qwen2-7b; do
  ./llorch synth --preset "$p" --seed 1 -o "/tmp/$p.gguf" >/dev/null || rc=1
  timeout 90 ./llorch bench -m "/tmp/$p.gguf" --device cuda:0 -p 512 -n 128 -r 3 2>&1 | grep -E "^\|.*(pp|tg)|rror" || rc=1
done
echo "== batched decode (aggregate tok/s of N sessions)"
for p in qwen2-0.5b qwen2-7b; do
  timeout 100 ./llorch bench -m "/tmp/$p.gguf" --device cuda:0 --parallel 1,8,32,128 -p 32 -n 64 -r 1 2>&1 \
    | tee "$log/parallel-$p.txt" | grep -E "^\| qwen|rror" || rc=1
done
echo "== bench qwen2-0.5b, GPU, CUDA graphs off (LLORCH_CUDA_GRAPH=0)"
LLORCH_CUDA_GRAPH=0 timeout 60 ./llorch bench -m /tmp/qwen2-0.5b.gguf --device cuda:0 -p 512 -n 128 -r 3 2>&1 | grep -E "^\|.*(pp|tg)|rror"
if [ -z "$QUICK" ]; then
  echo "== bench qwen2-0.5b, CPU ($(nproc) threads), for scale"
  timeout 60 ./llorch bench -m /tmp/qwen2-0.5b.gguf -p 256 -n 32 -r 1 2>&1 | grep -E "^\|.*(pp|tg)|rror"
fi
if [ -n "$QUICK" ]; then
  echo "== compute-sanitizer memcheck (fused decode and skinny kernels only)"
  timeout 100 compute-sanitizer --tool memcheck ./cuda_kernels --test-threads=1 fused rope_kv skinny \
    >"$log/memcheck-fused.log" 2>&1
  grep -E "ERROR SUMMARY|Invalid|test result" "$log/memcheck-fused.log" | head
  timeout 120 compute-sanitizer --tool memcheck ./cuda_parity --test-threads=1 parity_smollm \
    >"$log/memcheck-parity.log" 2>&1
  grep -E "ERROR SUMMARY|Invalid|test result" "$log/memcheck-parity.log" | head
elif command -v compute-sanitizer >/dev/null; then
  echo "== compute-sanitizer memcheck (kernel tests without the OOM-past-the-card test; smollm parity)"
  timeout 150 compute-sanitizer --tool memcheck --leak-check full ./cuda_kernels --test-threads=1 \
    --skip budget_out_of_memory >"$log/memcheck-kernels.log" 2>&1
  grep -E "ERROR SUMMARY|LEAK SUMMARY|test result" "$log/memcheck-kernels.log" | head
  timeout 150 compute-sanitizer --tool memcheck ./cuda_parity --test-threads=1 parity_smollm \
    >"$log/memcheck-parity.log" 2>&1
  grep -E "ERROR SUMMARY|Invalid|test result" "$log/memcheck-parity.log" | head
fi
echo "== rc=$rc"
exit $rc
