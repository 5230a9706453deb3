#!/usr/bin/env bash
# Builds quiver on the lent GPU machine (no package registry there): the
# Debian packages' files unpacked into .deps/root travel with the tree (see
# docs/BENCHMARKS.md for how they are made) and stand in for apt.
#   source bench/device/build.sh   -> sets QV_BUILD and LD_LIBRARY_PATH
set -e
QV_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
D=$QV_SRC/.deps/root
export LD_LIBRARY_PATH=$D/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PKG_CONFIG_PATH=$D/usr/lib/x86_64-linux-gnu/pkgconfig:$D/usr/share/pkgconfig
export PKG_CONFIG_SYSROOT_DIR=$D
export PATH=/usr/local/cuda/bin:$PATH
QV_BUILD=${QV_BUILD:-$QV_SRC/build-dev}
cmake -S "$QV_SRC" -B "$QV_BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQUIVER_BUILD_TESTS=ON \
  -DPKG_CONFIG_EXECUTABLE="$D/usr/bin/pkgconf" -DOPENSSL_ROOT_DIR="$D/usr" \
  -DOPENSSL_INCLUDE_DIR="$D/usr/include" -DOPENSSL_CRYPTO_LIBRARY="$D/usr/lib/x86_64-linux-gnu/libcrypto.so" \
  -DOPENSSL_SSL_LIBRARY="$D/usr/lib/x86_64-linux-gnu/libssl.so" >"$QV_BUILD.cmake.log" 2>&1 ||
  { tail -30 "$QV_BUILD.cmake.log"; exit 1; }
cmake --build "$QV_BUILD" -j"$(nproc)" >"$QV_BUILD.build.log" 2>&1 || { grep -E 'error|Error' "$QV_BUILD.build.log" | head -30; exit 1; }
echo "built $QV_BUILD ($(grep 'CUDA sink' "$QV_BUILD.cmake.log"))"
