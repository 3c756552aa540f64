#!/usr/bin/env bash
# Runs ON the device machine (the unpacked devpack of scripts/device-build.sh, as run-mmq.sh):
# the tensor-core batched products (kernels/mmq.cu), in order of what a short call must not
# miss: their GPU tests (cuda_kernels mmq: kernel vs the one-input mat-vec and f64, every
# format; the skinny f16 product; cuda_batch on the f16 copies: batched greedy vs alone) while both synthetic models
# are built; aggregate decode over 1-128 sessions without and with the f16 weight copies
# (LLORCH_CUDA_F16_WEIGHTS, src/backend/cuda/model/f16_weights.rs) and with mmq
# (LLORCH_CUDA_MMQ); pp512 without and with the copies; cuda_parity with the copies on;
# engine_tiny's GPU tests (tiny models stage by stage vs HF). Logs under $OUT. About 5
# minutes; the elapsed time is printed after each part (t=...).
# Usage (in the unpacked folder): ./run-mmq.sh   (MMQ_MIN=N sets LLORCH_CUDA_MMQ_MIN)
cd "$(dirname "$0")"
log="${OUT:-/tmp}"
S=$(date +%s)
t() { echo "t=$(( $(date +%s) - S ))s"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
# One synth per model, in the background while the tests run.
./llorch synth --preset qwen2-0.5b --seed 1 -o /tmp/q05.gguf >/dev/null 2>"$log/synth-q05.err" &
synth_q05=$!
./llorch synth --preset qwen2-7b --seed 1 -o /tmp/q7.gguf >/dev/null 2>"$log/synth-q7.err" &
synth_q7=$!
echo "== cuda_kernels mmq"
timeout 60 ./cuda_kernels --test-threads=1 --nocapture mmq >"$log/kernels-mmq.log" 2>&1; echo "rc=$?"
grep -E "mmq \[|test result|panicked" "$log/kernels-mmq.log" | tail -12
echo "== cuda_kernels skinny (f16 weights, few inputs)"
timeout 60 ./cuda_kernels --test-threads=1 --nocapture skinny >"$log/kernels-skinny.log" 2>&1; echo "rc=$?"
grep -E "skinny|test result|panicked" "$log/kernels-skinny.log" | tail -12
t
echo "== cuda_batch, batched steps on the f16 weight copies through the skinny kernel from 2 rows"
LLORCH_CUDA_F16_WEIGHTS=1 LLORCH_CUDA_MULTIROW=1 timeout 100 ./cuda_batch --test-threads=1 --nocapture >"$log/batch.log" 2>&1; echo "rc=$?"
grep -E "sessions:|tokens equal;|test result|panicked" "$log/batch.log" | head -12
t
export LLORCH_CUDA_MMQ_MIN="${MMQ_MIN:-8}"
par=(--device cuda:0 --parallel ${PAR:-1,8,32,128} -p 32 -n 64 -r 1)
# Configurations mmq:f16:multirow:skinny: the mat-vecs up to 8 rows, then the products
# dequantizing per step (f16 copies off) through the GEMM tiles (the last measured default);
# the same through the skinny kernel up to 128 rows; with the f16 copies (skinny past 8 rows,
# and from 2 rows: no mat-vecs of several rows); the copies and mmq from MMQ_MIN rows.
for m in q05 q7; do
  if [ $m = q05 ]; then wait $synth_q05; else wait $synth_q7; fi
  for cfg in ${PAR_CONFIGS:-0:0:8:0 0:0:8:128 0:1:8:128 0:1:1:128 1:1:8:128}; do
    IFS=: read -r on f16 mr sk <<<"$cfg"
    min=$LLORCH_CUDA_MMQ_MIN; [ "$mr" = 1 ] && [ "$on" = 1 ] && min=2
    echo "== $m parallel LLORCH_CUDA_MMQ=$on (min $min) LLORCH_CUDA_F16_WEIGHTS=$f16 LLORCH_CUDA_MULTIROW=$mr LLORCH_CUDA_SKINNY_MAX=$sk"
    LLORCH_CUDA_SKINNY_MAX=$sk LLORCH_CUDA_MMQ_MIN=$min LLORCH_CUDA_MULTIROW=$mr LLORCH_CUDA_MMQ=$on LLORCH_CUDA_F16_WEIGHTS=$f16 \
      timeout 100 ./llorch bench -m /tmp/$m.gguf "${par[@]}" 2>&1 \
      | tee "$log/par-$m-mmq$on-f16$f16-mr$mr-sk$sk.txt" | grep -E "^\| qwen|rror"
  done
  t
done
for m in q7 q05; do
  for f16 in 0 1; do
    echo "== $m pp512 LLORCH_CUDA_F16_WEIGHTS=$f16"
    LLORCH_CUDA_F16_WEIGHTS=$f16 timeout 40 ./llorch bench -m /tmp/$m.gguf --device cuda:0 -p 512 -n 0 -r 3 2>&1 \
      | tee "$log/pp512-$m-f16$f16.txt" | grep -E "pp512|rror"
  done
done
t
echo "== cuda_parity with the f16 weight copies (LLORCH_CUDA_F16_WEIGHTS=1; off by default)"
LLORCH_CUDA_F16_WEIGHTS=1 timeout 150 ./cuda_parity --test-threads=1 --nocapture >"$log/parity.log" 2>&1; echo "rc=$?"
grep -E "logits \(|argmax|test result|panicked" "$log/parity.log" | head -20
t
echo "== engine_tiny on the GPU (tiny models vs HF, stage by stage; mixtures' taps)"
timeout 90 ./engine_tiny --test-threads=1 gpu >"$log/engine-tiny-gpu.log" 2>&1; echo "rc=$?"
grep -E "^test |test result|panicked" "$log/engine-tiny-gpu.log" | head -12
t
