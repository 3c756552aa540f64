#!/usr/bin/env bash
# Run kernels/mma_matmul.cu, kernels/gemm_f16.cu, the prompt attention kernels, the mat-vec and
# attention kernels of kernels/decode.cu, kernels/moe.cu and kernels/mmq.cu on the CPU
# (tests/emu: one fiber per GPU thread, warp-wide operations emulated by their PTX ISA
# definitions) under AddressSanitizer, against references. No GPU needed.
# Usage: scripts/mma-emu.sh [type]  (a type limits the mma_matmul.cu, decode.cu and mmq.cu runs
# to it; mmq.cu's alone take some 2 minutes a format and mode on 2 cores)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
out="${TMPDIR:-/tmp}"
flags=(-std=c++20 -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=undefined
  -Wall -Wno-unknown-pragmas -I "$here/tests/emu" -I "$here/kernels")
g++ "${flags[@]}" "$here/tests/emu/mma_emu.cpp" -o "$out/mma_emu"
g++ "${flags[@]}" "$here/tests/emu/attn_emu.cpp" -o "$out/attn_emu"
g++ "${flags[@]}" "$here/tests/emu/gemm_emu.cpp" -o "$out/gemm_emu"
g++ "${flags[@]}" "$here/tests/emu/decode_emu.cpp" -o "$out/decode_emu"
g++ "${flags[@]}" "$here/tests/emu/moe_emu.cpp" -o "$out/moe_emu"
g++ "${flags[@]}" -DMQ_STAGES=3 "$here/tests/emu/mmq_emu.cpp" -o "$out/mmq_emu"
export ASAN_OPTIONS=detect_stack_use_after_return=0
"$out/mma_emu" "${1:-all}" lazy   # cp.async copies land as late as allowed
"$out/mma_emu" "${1:-all}" eager  # ... and as early
"$out/attn_emu" lazy
"$out/attn_emu" eager
"$out/gemm_emu" lazy
"$out/gemm_emu" eager
"$out/decode_emu" lazy ${1:+"$1"}
"$out/decode_emu" eager ${1:+"$1"}
"$out/moe_emu"
"$out/mmq_emu" lazy ${1:+"$1"}
"$out/mmq_emu" eager ${1:+"$1"}
