#!/usr/bin/env bash
# Runs ON the device machine, binaries of scripts/device-build.sh unpacked in /tmp/d: the
# checks behind three GPU defaults (the greedy step ahead, fused skinny products up to 8
# rows, paged KV caches), for a call with only a few minutes (the
# full set is scripts/device-final.sh). The greedy step ahead: its parity test, then tg128
# with and without it; the fused skinny products: cuda_batch with them, then --parallel
# 1,8,128 with and without. Logs under $OUT.
d=/tmp/d; cd $d || exit 1
S=$(date +%s); t() { echo "t=$(( $(date +%s) - S ))s"; }
nvidia-smi --query-gpu=name --format=csv,noheader
./llorch synth --preset qwen2-0.5b --seed 1 -o /tmp/q05.gguf >/dev/null 2>&1 &
echo "== cuda_parity greedy_ (lookahead test + argmax), the paged caches and their line"
for f in greedy_ paged_cache gpu_fork out_of_memory gpu_cache_waits; do
timeout 40 ./cuda_parity --test-threads=1 --nocapture $f >> $OUT/parity.log 2>&1; echo "$f rc=$?"; done
grep -E "^test |test result|panicked|bit-identical|served|busy:" $OUT/parity.log | head -20; t
echo "== cuda_batch (FUSED=1)"
LLORCH_CUDA_SKINNY_FUSED=1 timeout 70 ./cuda_batch --test-threads=1 --nocapture > $OUT/batch.log 2>&1; echo rc=$?
grep -E "sessions:|tokens equal;|test result|panicked" $OUT/batch.log | head -8; t
wait
for f in 1 0; do echo "== q05 parallel 1,8,128 FUSED=$f"
LLORCH_CUDA_SKINNY_FUSED=$f timeout 40 ./llorch bench -m /tmp/q05.gguf --device cuda:0 --parallel 1,8,128 -p 32 -n 64 -r 1 2>&1 | grep -E "^\| qwen|rror"; done; t
for l in 0 1; do echo "== q05 tg128 LOOKAHEAD=$l"
LLORCH_CUDA_LOOKAHEAD=$l timeout 30 ./llorch bench -m /tmp/q05.gguf --device cuda:0 -p 0 -n 128 -r 3 2>&1 | grep -E "^\|.*tg|rror"; done; t
