#!/usr/bin/env bash
# One entry point for a fresh Debian machine:
#   ./dev.sh demo    install dependencies, build, run the demo
#   ./dev.sh test    install dependencies, build, run every test (plain build,
#                    then again under AddressSanitizer + UBSan)
#   ./dev.sh deps    only install the Debian packages
#   ./dev.sh build   only build (build/)
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD
JOBS=$(nproc 2>/dev/null || echo 2)

PACKAGES="build-essential cmake pkg-config git python3 ca-certificates
  liblmdb-dev lmdb-utils libssl-dev libzstd-dev liburing-dev libxxhash-dev libjansson-dev libinih-dev
  libcmocka-dev libmicrohttpd-dev fio bc prometheus python3-torch python3-numpy curl"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

deps() {
  local missing=""
  for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
  done
  # npm fetches the real-weights fixtures (tests only); any npm on PATH will do.
  command -v npm >/dev/null 2>&1 || missing="$missing npm"
  if [ -n "$missing" ]; then
    echo "== installing:$missing"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  fi
}

build() { # build DIR [cmake args...]
  local dir=$1; shift
  cmake -S "$ROOT" -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQUIVER_BUILD_TESTS=ON "$@" >/dev/null
  cmake --build "$dir" -j"$JOBS"
}

demo() {
  build build
  local Q=$ROOT/build/cli/quiver D=$ROOT/build/demo
  rm -rf "$D"; mkdir -p "$D"
  export QUIVER_ROOT=$D/store
  local gen="python3 $ROOT/python/tools/gen_model.py"
  set -x
  $gen "$D/llama-v1" --shards 2 --hidden 512 --layers 4 --vocab 8192 >/dev/null
  $gen "$D/llama-v2" --shards 2 --hidden 512 --layers 4 --vocab 8192 --mutate 0.34 >/dev/null
  $Q publish acme/llama "$D/llama-v1" --message "first release"
  $Q publish acme/llama "$D/llama-v2" --alias canary --message "retrained a third of the layers"
  $Q list
  $Q list acme/llama
  $Q rollback acme/llama
  $Q history acme/llama
  $Q export acme/llama "$D/export"
  diff -r "$D/llama-v1" "$D/export"
  $Q verify
  $Q load acme/llama --verify
  $Q show acme/llama@canary --json > "$D/show.json"
  head -n 20 "$D/show.json"
  { set +x; } 2>/dev/null
  echo "== demo ok: store in $D/store"
}

run_tests() { # DIR [cmake args...]
  local dir=$1; shift
  build "$dir" "$@"
  (cd "$dir" && ctest --output-on-failure -j1 --timeout 1800)
}

case "${1:-}" in
  deps) deps ;;
  build) deps; build build ;;
  demo) deps; demo ;;
  test)
    deps
    echo "== tests: plain build"
    run_tests build
    echo "== tests: AddressSanitizer + UBSan build"
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
      run_tests build-asan -DQUIVER_SANITIZE=ON
    ;;
  *) sed -n '2,8p' "$0"; exit 2 ;;
esac
