#!/usr/bin/env bash
# Build the GPU test binaries and the llorch CLI here (no GPU needed; nvcc from
# scripts/install-nvcc) and stage them, stripped, in <repo>/.device/ for the device machine,
# which has no Rust. Usage: scripts/device-build.sh [TARGET_REPO]  (default: this repo)
# Then, with the device tool: run(command=".device/run-gpu-tests.sh", carry=[".device"]).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
dest="${1:-$here}/.device"
cd "$here"
tests=(cuda_kernels cuda_parity cuda_real engine_tiny cuda_batch cuda_prefix)
# A target folder of its own: the CUDA build does not evict the CPU build's artifacts.
export CARGO_TARGET_DIR="$here/target-cuda"
args=()
for t in "${tests[@]}"; do args+=(--test "$t"); done
json=$(cargo test --release --features cuda "${args[@]}" --no-run --message-format=json 2>/dev/null) \
  || { echo "build failed: cargo test --release --features cuda --no-run"; exit 1; }
cargo build --release --features cuda >/dev/null 2>&1 \
  || { echo "build failed: cargo build --release --features cuda"; exit 1; }
mkdir -p "$dest"
for t in "${tests[@]}"; do
  exe=$(printf '%s\n' "$json" | python3 -c 'import sys, json
want = sys.argv[1]
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == want:
        print(m["executable"])' "$t")
  [ -n "$exe" ] || { echo "build failed: cargo test --release --features cuda --test $t --no-run"; exit 1; }
  # Stripped: the working tree that travels to the device is limited to 64 MiB.
  strip -o "$dest/$t" "$exe"
done
strip -o "$dest/llorch" "$CARGO_TARGET_DIR/release/llorch"
# Under its SONAME (libllorch.so.<ABI>), the name the haiku program asks the loader for.
soname=$(readelf -d "$CARGO_TARGET_DIR/release/libllorch.so" | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')
strip -o "$dest/$soname" "$CARGO_TARGET_DIR/release/libllorch.so"
# The C haiku program, finding the library beside itself.
cc -std=c11 -Wall -Wextra -Werror -O2 -Iinclude -o "$dest/haiku" examples/c/haiku.c "$dest/$soname" -Wl,-rpath,'$ORIGIN'
mkdir -p "$dest/golden" && cp tests/golden/qwen25coder05b.json "$dest/golden/"
cp scripts/device-test.sh "$dest/run-gpu-tests.sh"
cp scripts/device-real.sh "$dest/run-real.sh"
cp scripts/device-profile.sh "$dest/run-profile.sh"
cp scripts/device-multirow.sh "$dest/run-multirow.sh"
cp scripts/device-mmq.sh "$dest/run-mmq.sh"
cp scripts/device-batch-profile.sh "$dest/run-batch-profile.sh"
# A baseline CLI for run-multirow.sh to compare with (e.g. main's), when LLORCH_BASE_CLI names one.
rm -f "$dest/llorch-base"
if [ -n "${LLORCH_BASE_CLI:-}" ]; then strip -o "$dest/llorch-base" "$LLORCH_BASE_CLI"; fi
chmod +x "$dest"/*
ls -l "$dest"
# The working tree that travels to the device is limited to 64 MiB and the test fixtures take
# about 35 of it: carry the binaries xz-packed (about a fifth of their size) instead of .device.
# On the device: run(command="mkdir -p /tmp/d && tar xJf .devpack/d.txz -C /tmp/d && ...",
# carry=[".devpack"]); engine_tiny finds its fixtures under its build path, so link the
# working tree there first (mkdir -p /work && ln -sfn "$PWD" /work/main for a build in /work/main).
mkdir -p "${1:-$here}/.devpack"
tar cJf "${1:-$here}/.devpack/d.txz" -C "$dest" .
ls -l "${1:-$here}/.devpack"
