#!/usr/bin/env bash
# CI's run of the daemon swap benchmark with the host sink: prints the
# comparison of load_host swaps from the DRAM tier against this machine's
# memcpy bandwidth (bench/daemon_bench.c). Speed is not asserted here (the
# benchmarks in bench/ check speed); the test fails if the benchmark fails or
# a swap did not come from the DRAM tier.
set -euo pipefail
S=${QV_SCRATCH:?}
BUILD=$(cd "$(dirname "$QUIVER")/.." && pwd)
BENCH=$BUILD/bench/daemon_bench
QUIVERD=$BUILD/cli/quiverd
[ -x "$BENCH" ] || { echo "SKIP: $BENCH not built"; exit 77; }
rm -rf "$S" && mkdir -p "$S"
R=$S/root
"$QV_PYTHON" "$QV_SRC/python/tools/gen_model.py" "$S/m1" --shards 2 --hidden 1024 --layers 4 \
  --vocab 8192 >/dev/null
"$QV_PYTHON" "$QV_SRC/python/tools/gen_model.py" "$S/m2" --shards 2 --hidden 1024 --layers 4 \
  --vocab 8192 --mutate 0.5 >/dev/null
QUIVER_NO_DAEMON=1 "$QUIVER" --root "$R" publish bench/m "$S/m1" >/dev/null
QUIVER_NO_DAEMON=1 "$QUIVER" --root "$R" publish bench/m "$S/m2" >/dev/null
"$QUIVERD" --root "$R" --dram 1G --no-warm >"$S/quiverd.log" 2>&1 &
DPID=$!
trap 'kill $DPID 2>/dev/null; wait $DPID 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -S "$R/quiverd.sock" ] && break; sleep 0.1; done
"$BENCH" "$R" bench/m v1 v2 --reps 6 >"$S/out" 2>"$S/err"
cat "$S/out"
if [ -s "$S/err" ]; then
  echo "FAIL: the benchmark complained:"; cat "$S/err"; exit 1
fi
grep -q '^ratio (b)/(a): ' "$S/out" || { echo "FAIL: no ratio printed"; exit 1; }
echo "1 passed, 0 failed"
