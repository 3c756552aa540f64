#!/usr/bin/env bash
# Build the GPU test binary here (no GPU needed) and stage it in <repo>/.device/ for the device
# machine, which has no Rust. Usage: scripts/device-build.sh [TARGET_REPO]  (default: this repo)
# Then, with the device tool: run(command=".device/run-gpu-tests.sh", carry=[".device"]).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
dest="${1:-$here}/.device"
if [ -z "${LLORCH_NVCC:-}" ]; then
  cand=(/work/.venv-cuda/lib/python3*/site-packages/nvidia/cu13/bin/nvcc)
  [ -x "${cand[0]}" ] && export LLORCH_NVCC="${cand[0]}"
fi
cd "$here"
exe=$(cargo test --release --features cuda --test cuda_kernels --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import sys, json
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "cuda_kernels":
        print(m["executable"])')
[ -n "$exe" ] || { echo "build failed: run cargo test --release --features cuda --test cuda_kernels --no-run"; exit 1; }
mkdir -p "$dest"
cp "$exe" "$dest/cuda_kernels"
cp "$here/scripts/device-test.sh" "$dest/run-gpu-tests.sh"
chmod +x "$dest/cuda_kernels" "$dest/run-gpu-tests.sh"
echo "staged $exe -> $dest/cuda_kernels"
