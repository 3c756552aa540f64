#!/usr/bin/env bash
# Runs ON the device machine after the real default model was assembled there from pieces
# at /tmp/qwen.gguf (docs/cuda.md): checks its sha256, compares the GPU's greedy
# continuations of the six golden prompts with the CPU's, and runs the C haiku program on
# the GPU with the minute from the clock.
cd "$(dirname "$0")"
model=/tmp/qwen.gguf
echo "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32  $model" | sha256sum -c - || exit 1
rc=0
echo "== cuda_real (GPU greedy vs CPU greedy, six golden prompts; GPU session save/restore/fork, logprobs)"
LLORCH_REAL_MODEL=$model LLORCH_GOLDEN_DIR=$PWD/golden timeout 300 ./cuda_real --nocapture 2>&1 \
  | grep -vE "^\s+[0-9]+: |^\s+at " || rc=1
echo "== haiku on the GPU (C program, minute from the clock)"
timeout 120 ./haiku "$model" --device cuda:0 || rc=1
echo "== bench, real model, GPU"
timeout 120 ./llorch bench -m "$model" --device cuda:0 -p 512 -n 128 -r 3 2>&1 | grep -E "^\|" || rc=1
echo "== rc=$rc"
exit $rc
