#!/usr/bin/env bash
# Runs ON the device machine (staged as .device/run-gpu-tests.sh by scripts/device-build.sh).
# Plain run first, then the same tests under compute-sanitizer memcheck when it is there.
cd "$(dirname "$0")"
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv,noheader
echo "== cuda_kernels"
timeout 240 ./cuda_kernels --test-threads=1 2>&1
rc=$?
echo "== rc=$rc"
if command -v compute-sanitizer >/dev/null; then
  echo "== compute-sanitizer memcheck (OOM test skipped: it allocates past the card on purpose)"
  timeout 240 compute-sanitizer --tool memcheck --leak-check full ./cuda_kernels --test-threads=1 \
    --skip budget_out_of_memory 2>&1 | grep -E "ERROR SUMMARY|LEAK SUMMARY|Invalid|test result|error" | head -40
fi
exit $rc
