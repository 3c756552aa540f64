#!/usr/bin/env bash
# Uses llorch as its users do, from outside the tree: `make install` to a temporary prefix,
# checks what was installed, then builds and runs against that copy only (tests/packaging/):
# C through pkg-config and through CMake, a scratch Go module that requires the binding
# through a replace to a read-only copy, and the npm pack tarball installed into a scratch
# Node project (TypeScript, strict). Model: $LLORCH_MODEL, else SmolLM2-135M.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MODEL=${LLORCH_MODEL:-$(scripts/fetch-model smollm2-135m)}
work=$(mktemp -d)
trap 'chmod -R u+w "$work"; rm -rf "$work"' EXIT
prefix=$work/prefix
lib=$prefix/lib
macro() { sed -n "s/^#define $1 \"*\\([^\"]*\\)\"*\$/\\1/p" include/llorch.h; }
VERSION=$(macro LLORCH_VERSION_STRING)
ABI=$(macro LLORCH_ABI_VERSION)
MAJOR_MINOR=$(macro LLORCH_VERSION_MAJOR).$(macro LLORCH_VERSION_MINOR)

step() { printf '\n== %s\n' "$*"; }
fail() { echo "test-packaging: $*" >&2; exit 1; }

step "make install PREFIX=$prefix"
make -s install PREFIX="$prefix" CARGO="cargo --quiet"

step "installed: libllorch.so.$VERSION stripped, SONAME libllorch.so.$ABI, links, debug info apart, header, .pc, CMake"
real=$lib/libllorch.so.$VERSION
[ -f "$real" ] && [ ! -L "$real" ] || fail "$real missing"
[ "$(readlink "$lib/libllorch.so.$ABI")" = "libllorch.so.$VERSION" ] || fail "libllorch.so.$ABI is not a link to the library"
[ "$(readlink "$lib/libllorch.so")" = "libllorch.so.$ABI" ] || fail "libllorch.so is not a link to the SONAME"
# Each tool's output taken whole before grep reads it: under pipefail, `tool | grep -q` fails
# when grep exits at its match before the tool has written everything (SIGPIPE).
dynamic=$(readelf -d "$real")
grep -q "Library soname: \[libllorch.so.$ABI\]" <<<"$dynamic" || fail "SONAME is not libllorch.so.$ABI"
sections=$(readelf -S "$real")
! grep -q '\.debug_' <<<"$sections" || fail "the installed library still has debug sections"
debug_sections=$(readelf -S "$lib/.debug/libllorch.so.$VERSION.debug")
grep -q '\.debug_line' <<<"$debug_sections" || fail "no debug info in lib/.debug"
debuglink=$(readelf --string-dump=.gnu_debuglink "$real")
grep -q "libllorch.so.$VERSION.debug" <<<"$debuglink" || fail "no debuglink"
cmp include/llorch.h "$prefix/include/llorch.h"
ls -l "$lib"
export PKG_CONFIG_PATH=$lib/pkgconfig
unset PKG_CONFIG_PATH_UNINSTALLED
[ "$(pkg-config --modversion llorch)" = "$VERSION" ] || fail "pkg-config --modversion llorch is not $VERSION"
# Run time: the temporary prefix is not among the loader's paths.
export LD_LIBRARY_PATH=$lib

step "C: the haiku example (C11 and C++17) and the consumer through pkg-config"
mkdir "$work/c" && cp examples/c/haiku.c tests/packaging/consumer.c "$work/c/"
(
    cd "$work/c"
    cc -std=c11 -Wall -Wextra -Werror -O2 -o haiku haiku.c $(pkg-config --cflags --libs llorch)
    c++ -x c++ -std=c++17 -Wall -Wextra -Werror -O2 -o haiku_cpp haiku.c $(pkg-config --cflags --libs llorch)
    cc -std=c11 -Wall -Wextra -Werror -O2 -o consumer consumer.c $(pkg-config --cflags --libs llorch)
    ldd consumer >ldd.txt
    grep -q "libllorch.so.$ABI => $lib/libllorch.so.$ABI" ldd.txt || fail "consumer does not load $lib/libllorch.so.$ABI"
    ./consumer "$MODEL"
)

step "C: a CMake project with find_package(llorch $MAJOR_MINOR)"
cp tests/packaging/CMakeLists.txt "$work/c/"
cmake -S "$work/c" -B "$work/cmake" -DCMAKE_PREFIX_PATH="$prefix" -DLLORCH_WANT="$MAJOR_MINOR" >/dev/null
cmake --build "$work/cmake" >/dev/null
"$work/cmake/consumer" "$MODEL"
# A release that is not compatible is refused (same major, and same minor while the major is 0).
newer=$(echo "$MAJOR_MINOR" | awk -F. '{ print ($1 == 0) ? "0." $2 + 1 : $1 + 1 ".0" }')
if cmake -S "$work/c" -B "$work/cmake-newer" -DCMAKE_PREFIX_PATH="$prefix" -DLLORCH_WANT="$newer" >/dev/null 2>&1; then
    fail "find_package(llorch $newer) accepted release $VERSION"
fi

step "Go: a scratch module requiring llorch.dev/llorch through a replace to a read-only copy"
cp -r bindings/go "$work/llorch-go"
rm -f "$work"/llorch-go/*.test
chmod -R a-w "$work/llorch-go"
mkdir "$work/goapp" && cp tests/packaging/go/main.go "$work/goapp/"
cat > "$work/goapp/go.mod" <<MOD
module example.com/app

go 1.19

require llorch.dev/llorch v0.0.0

replace llorch.dev/llorch => ../llorch-go
MOD
(
    cd "$work/goapp"
    export GOFLAGS=-mod=mod GOPROXY=off
    go vet ./...
    go build -o app .
    ./app "$MODEL"
    # The binding's own tests and example, run from the read-only copy.
    LLORCH_MODEL=$MODEL LLORCH_EMBED_FIXTURES=$ROOT/tests/fixtures/embed \
        go test -count=1 llorch.dev/llorch
)

step "Node: npm pack, install the tarball into a scratch project, compile a strict TypeScript consumer, run it"
tarball=$(cd bindings/node && npm pack --silent --pack-destination "$work")
listing=$(tar tzf "$work/$tarball" | sort | tr '\n' ' ')
[ "$listing" = "package/README.md package/index.d.ts package/index.js package/package.json " ] \
    || fail "unexpected files in $tarball: $listing"
mkdir "$work/nodeapp" && cp tests/packaging/node/consumer.ts tests/packaging/node/tsconfig.json "$work/nodeapp/"
(
    cd "$work/nodeapp"
    echo '{ "name": "nodeapp", "private": true }' > package.json
    npm install --silent --no-audit --no-fund "$work/$tarball" typescript@5 @types/node@20
    npx --no-install tsc -p .
    # Found through the loader's paths (LD_LIBRARY_PATH here), by its SONAME.
    node dist/consumer.js "$MODEL" | tee out.txt
    grep -q "from libllorch.so.$ABI:" out.txt || fail "not loaded by its SONAME"
    # Not found anywhere: the error names the paths tried.
    if LD_LIBRARY_PATH= node -e "require('llorch')" 2> err.txt; then fail "loaded with no library anywhere"; fi
    grep -q "node_modules/llorch/libllorch.so.$ABI: no such file" err.txt || { cat err.txt; fail "error lacks the paths tried"; }
    # Beside the package: found there first.
    cp "$lib/libllorch.so.$VERSION" node_modules/llorch/libllorch.so.$ABI
    LD_LIBRARY_PATH= node dist/consumer.js "$MODEL" >beside.txt
    grep -q "from $PWD/node_modules/llorch/libllorch.so.$ABI:" beside.txt \
        || fail "the library beside the package was not used"
)

step "packaging checks passed"
