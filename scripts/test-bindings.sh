#!/usr/bin/env bash
# Tests the C ABI from outside Rust against the library in the tree (target/release, built
# by `make` with its SONAME link and uninstalled llorch.pc): the C example (as C and C++),
# the misuse program under valgrind, the Go tests (-race) and the Node tests.
# scripts/test-packaging.sh does the same from an installed copy, outside the tree.
# Model: $LLORCH_MODEL, else SmolLM2-135M through scripts/fetch-model.
# The haiku check uses Qwen2.5-Coder-0.5B-Instruct ($LLORCH_HAIKU_MODEL overrides).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
make -s CARGO="cargo --quiet"
export LLORCH_MODEL=${LLORCH_MODEL:-$(scripts/fetch-model smollm2-135m)}
HAIKU_MODEL=${LLORCH_HAIKU_MODEL:-$(scripts/fetch-model qwen2.5-coder-0.5b)}

step() { printf '\n== %s\n' "$*"; }

step "C examples (C11 and C++17, -Werror)"
make -C examples/c -B all

step "haiku (M0 check, minute from the clock) under AddressSanitizer and LeakSanitizer"
make -C examples/c asan MODEL="$HAIKU_MODEL"

step "pull form (llorch_session_begin/next) under AddressSanitizer and LeakSanitizer"
make -C examples/c pull-asan MODEL="$LLORCH_MODEL"

step "logprobs, session state, tokenizer queries (state.c) under AddressSanitizer and LeakSanitizer"
make -C examples/c state-asan MODEL="$LLORCH_MODEL"

step "misuse under valgrind"
make -C examples/c valgrind MODEL="$LLORCH_MODEL"

step "Go (-race)"
# cgo finds the library through pkg-config: here the uninstalled llorch.pc of `make`.
export PKG_CONFIG_PATH=$ROOT/target/release/pkgconfig
(cd bindings/go && go vet ./... && go test -race -count=1 ./...)

step "Node"
(cd bindings/node && { [ -d node_modules/koffi ] || npm ci --ignore-scripts; } && node --test)

step "all binding tests passed"
