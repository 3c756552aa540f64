#!/usr/bin/env bash
# Runs ON the device machine (binaries of scripts/device-build.sh in /tmp/d): the GPU defaults' checks
# (paged caches and their line, the greedy step ahead, fused skinny products up to 8 rows,
# the prefix cache's shared pages, the greedy pick, the attention kernels over pages),
# the batched and tiny-model tests, then --parallel and pp512/tg128 of both synthetic shapes
# (and of ./llorch-base, when staged, in the same run: an A/B on one card).
# Logs under $OUT. About four minutes.
cd /tmp/d || exit 1
S=$(date +%s); t() { echo "t=$(( $(date +%s) - S ))s"; }
nvidia-smi --query-gpu=name --format=csv,noheader
./llorch synth --preset qwen2-0.5b --seed 1 -o /tmp/q05.gguf >/dev/null 2>&1 &
./llorch synth --preset qwen2-7b --seed 1 -o /tmp/q7.gguf >/dev/null 2>&1 &
echo "== cuda_parity (defaults: pages, lookahead, fused <= 8 rows)"
timeout 150 ./cuda_parity --test-threads=1 --nocapture > $OUT/parity.log 2>&1; echo rc=$?
grep -E "^test |test result|panicked|bit-identical|served|busy:|generation:|argmax:|logits \(" $OUT/parity.log | head -30; t
echo "== cuda_batch"; timeout 60 ./cuda_batch --test-threads=1 --nocapture > $OUT/batch.log 2>&1; echo rc=$?
grep -E "sessions:|tokens equal;|test result|panicked" $OUT/batch.log | head -12; t
echo "== cuda_prefix"; timeout 90 ./cuda_prefix --test-threads=1 --nocapture > $OUT/prefix.log 2>&1; echo rc=$?
grep -E "prompt [0-9]:|prefix cache:|test result|panicked" $OUT/prefix.log | head -16; t
echo "== engine_tiny gpu"; timeout 60 ./engine_tiny --test-threads=1 gpu > $OUT/tiny.log 2>&1; echo rc=$?; grep -E "test result|panicked" $OUT/tiny.log; t
echo "== cuda_kernels"; timeout 120 ./cuda_kernels --test-threads=1 > $OUT/kernels.log 2>&1; echo rc=$?; grep -E "test result|panicked|FAILED" $OUT/kernels.log | head; t
wait
clis=./llorch; [ -x ./llorch-base ] && clis="./llorch ./llorch-base"
for m in q05 q7; do for cli in $clis; do par=1,8,32,128; [ $cli = ./llorch-base ] && par=1,8; echo "== $m $cli parallel $par"; timeout 60 $cli bench -m /tmp/$m.gguf --device cuda:0 --parallel $par -p 32 -n 64 -r 1 2>&1 | grep -E "^\| qwen|rror"
echo "== $m $cli pp512/tg128"; timeout 40 $cli bench -m /tmp/$m.gguf --device cuda:0 -p 512 -n 128 -r 3 2>&1 | grep -E "^\|.*(pp|tg)|rror"; done; done; t
