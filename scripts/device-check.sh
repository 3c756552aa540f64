#!/usr/bin/env bash
# Runs ON the device machine (binaries of scripts/device-build.sh in /tmp/d): the GPU defaults' checks
# (growing caches and their line, the greedy step ahead, fused skinny products up to 8 rows,
# the prefix cache's copies, the greedy pick),
# the batched and tiny-model tests, then --parallel and pp512/tg128 of both synthetic shapes.
# Logs under $OUT. About three minutes.
cd /tmp/d || exit 1
S=$(date +%s); t() { echo "t=$(( $(date +%s) - S ))s"; }
nvidia-smi --query-gpu=name --format=csv,noheader
./llorch synth --preset qwen2-0.5b --seed 1 -o /tmp/q05.gguf >/dev/null 2>&1 &
./llorch synth --preset qwen2-7b --seed 1 -o /tmp/q7.gguf >/dev/null 2>&1 &
echo "== cuda_parity (defaults: growth, lookahead, fused <= 8 rows)"
timeout 90 ./cuda_parity --test-threads=1 --nocapture out_of_memory gpu_cache_waits kv_growth greedy_ graph_replay parity_qwen2 parity_smollm > $OUT/parity.log 2>&1; echo rc=$?
grep -E "^test |test result|panicked|bit-identical|served|busy:|generation:|argmax:|logits \(" $OUT/parity.log | head -30; t
echo "== cuda_batch"; timeout 60 ./cuda_batch --test-threads=1 --nocapture > $OUT/batch.log 2>&1; echo rc=$?
grep -E "sessions:|tokens equal;|test result|panicked" $OUT/batch.log | head -12; t
echo "== cuda_prefix"; timeout 90 ./cuda_prefix --test-threads=1 --nocapture > $OUT/prefix.log 2>&1; echo rc=$?
grep -E "prompt [0-9]:|prefix cache:|test result|panicked" $OUT/prefix.log | head -16; t
echo "== engine_tiny gpu"; timeout 60 ./engine_tiny --test-threads=1 gpu > $OUT/tiny.log 2>&1; echo rc=$?; grep -E "test result|panicked" $OUT/tiny.log; t
echo "== cuda_kernels skinny"; timeout 40 ./cuda_kernels --test-threads=1 skinny argmax > $OUT/kernels.log 2>&1; echo rc=$?; grep -E "test result|panicked" $OUT/kernels.log; t
wait
for m in q05 q7; do echo "== $m parallel (defaults)"; timeout 60 ./llorch bench -m /tmp/$m.gguf --device cuda:0 --parallel 1,8,32,128 -p 32 -n 64 -r 1 2>&1 | grep -E "^\| qwen|rror"
echo "== $m pp512/tg128"; timeout 40 ./llorch bench -m /tmp/$m.gguf --device cuda:0 -p 512 -n 128 -r 3 2>&1 | grep -E "^\|.*(pp|tg)|rror"; done; t
