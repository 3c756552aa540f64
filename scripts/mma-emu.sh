#!/usr/bin/env bash
# Run kernels/mma_matmul.cu on the CPU (tests/emu/mma_emu.cpp: one fiber per GPU thread,
# warp-wide ldmatrix/mma emulated by the PTX ISA's fragment layouts) under AddressSanitizer,
# for every weight type and tile against a reference. No GPU needed. Usage: scripts/mma-emu.sh [type]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
out="${TMPDIR:-/tmp}/mma_emu"
g++ -std=c++20 -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=undefined \
  -Wall -Wno-unknown-pragmas -I "$here/tests/emu" -I "$here/kernels" \
  "$here/tests/emu/mma_emu.cpp" -o "$out"
ASAN_OPTIONS=detect_stack_use_after_return=0 "$out" "${1:-all}" lazy
ASAN_OPTIONS=detect_stack_use_after_return=0 "$out" "${1:-all}" eager
